//! The lab's GAN job on candle: the TensorFlow DCGAN tutorial on MNIST.
//!
//! - [`conv`]: Conv2d and ConvTranspose2d through im2col + gemm, with their own backward.

pub mod conv;
