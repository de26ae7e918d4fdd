//! The lab's GAN job on candle: the TensorFlow DCGAN tutorial on MNIST.
//!
//! - [`dcgan`]: the `mnist-dcgan` job (training loop, metrics, grids, checkpoints);
//! - [`model`]: the tutorial's generator and discriminator;
//! - [`conv`]: Conv2d and ConvTranspose2d through im2col + gemm, with their own backward;
//! - [`layers`]: BatchNorm and LeakyReLU as custom ops with their own backward;
//! - [`mnist`]: the MNIST loader (idx files, checksums, pixels to [-1, 1]);
//! - [`quality`]: the job's objective: a cached MNIST classifier, the Frechet distance of its
//!   features and class coverage;
//! - [`grid`]: sample grids as PNG.

pub mod conv;
pub mod dcgan;
pub mod grid;
pub mod layers;
pub mod mnist;
pub mod model;
pub mod quality;
