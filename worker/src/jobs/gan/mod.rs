//! The lab's GAN job on candle: the TensorFlow DCGAN tutorial on MNIST.
//!
//! - [`mnist`]: the MNIST loader (idx files, checksums, pixels to [-1, 1]);
//! - [`conv`]: Conv2d and ConvTranspose2d through im2col + gemm, with their own backward;
//! - [`grid`]: sample grids as PNG.

pub mod conv;
pub mod grid;
pub mod mnist;
