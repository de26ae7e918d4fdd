//! The DCGAN job's objective: a small MNIST classifier, trained once per machine and cached, that
//! scores generated digits by the Frechet distance of its features and by class coverage.
//!
//! Architecture (input `(N, 1, 28, 28)` f32 in [-1, 1], the tutorial's pixel scaling):
//! Conv2d(1, 32, k5, s2, p2) -> ReLU -> `(N, 32, 14, 14)` -> Conv2d(32, 64, k5, s2, p2) -> ReLU ->
//! `(N, 64, 7, 7)` -> flatten `(N, 3136)` -> Dense(128) -> ReLU = the features `(N, 128)` ->
//! Dense(10) = the class logits. Convolutions go through [`super::conv::conv2d`].
//!
//! The score follows the FID of Heusel et al. (2017, "GANs trained by a two time-scale update
//! rule"), with this classifier in place of Inception: each image set is summarised by the mean and
//! covariance of its features ([`Gaussian`]), and two sets are compared by
//! `||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})` ([`frechet_distance`]). Class coverage is the
//! entropy (natural log, at most ln 10) of the histogram of predicted classes and the mean
//! max-softmax confidence ([`Quality`]).
//!
//! The classifier's cache ([`Classifier::load_or_train`]):
//!
//! 1. The cache file is `<cache-dir>/gan-quality/classifier-<key>.safetensors`, where `key` hashes
//!    the MNIST bytes (checked against the published sha256 by [`mnist::load`]),
//!    [`CLASSIFIER_VERSION`] and the training settings, seed included. Weights are f32 tensors; the
//!    metadata holds the key, the test accuracy measured when it was trained and the sha256 of the
//!    weights.
//! 2. A file that does not parse, was written for another key, has a wrong shape or fails its
//!    checksum is removed and the classifier retrained, never trusted.
//! 3. Training runs under `classifier-<key>.lock` beside the file (created exclusively, touched
//!    after every batch, removed on drop), so trials that start together in separate processes
//!    train once: the others wait for the file. A lock untouched for [`STALE_LOCK`] belonged to a
//!    process that died, and is taken over. (The same protocol as `nlp::imdb_embed`'s chunks.)
//! 4. Training is deterministic given the seed: He-uniform weights and the batch order come from
//!    ChaCha8 seeded with [`TrainConfig::seed`]; Adam (Keras' rule, `nlp::optim`), cross-entropy.
//!    [`TrainConfig::standard`] (2 epochs of the 60,000 images, batches of 128, lr 1e-3) reaches
//!    0.987 test accuracy in about 2 minutes on two busy CPU cores (one epoch stops near 0.979).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, Var, D};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use sha2::{Digest, Sha256};

use super::conv::conv2d;
use super::mnist::{self, Mnist, Split, COLS, ROWS};
use crate::data::{write_atomic, DataError, DataPaths, FileLock};
use crate::jobs::nlp::optim::{Optimizer, OptimizerKind};
use crate::jobs::JobError;

/// Bump when the architecture or the training changes, so old caches are not reused.
pub const CLASSIFIER_VERSION: u32 = 1;

/// A training lock older than this was left by a process that died (training touches it after
/// every batch, a fraction of a second apart).
pub use crate::data::STALE_LOCK;

/// How often a load waiting for another process's training looks again.
const POLL: Duration = Duration::from_millis(500);

/// Channels and kernel sizes of the two convolutions (both stride 2, "same" padding).
const CONV1: usize = 32;
const KERNEL1: usize = 5;
const CONV2: usize = 64;
const KERNEL2: usize = 5;
/// Flattened output of the second convolution: 64 x 7 x 7.
const FLAT: usize = CONV2 * 7 * 7;
/// Width of the penultimate layer, whose activations are the features.
pub const FEATURES: usize = 128;
pub const CLASSES: usize = 10;
const PIXELS: usize = ROWS * COLS;

/// Images per forward pass when scoring (bounded memory, about 25 MB of activations).
const EVAL_BATCH: usize = 500;

/// Every weight of the classifier with its shape, in the order the checksum covers them.
const PARAMS: [(&str, &[usize]); 8] = [
    ("conv1.weight", &[CONV1, 1, KERNEL1, KERNEL1]),
    ("conv1.bias", &[CONV1]),
    ("conv2.weight", &[CONV2, CONV1, KERNEL2, KERNEL2]),
    ("conv2.bias", &[CONV2]),
    ("fc1.weight", &[FEATURES, FLAT]),
    ("fc1.bias", &[FEATURES]),
    ("fc2.weight", &[CLASSES, FEATURES]),
    ("fc2.bias", &[CLASSES]),
];

/// How the classifier is trained; every field is part of the cache key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// The first this many training images (all 60,000 for the real classifier; tests use fewer).
    pub train_images: usize,
}

impl TrainConfig {
    /// The classifier the GAN job scores with.
    pub fn standard() -> Self {
        TrainConfig { seed: 0x6A4_0C1A, epochs: 2, batch_size: 128, learning_rate: 1e-3, train_images: 60_000 }
    }
}

/// Whether [`Classifier::load_or_train_with`] read the cache or trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Cached,
    Trained,
}

/// The classifier's weights, on the device they run on.
struct Net {
    conv1_weight: Tensor,
    conv1_bias: Tensor,
    conv2_weight: Tensor,
    conv2_bias: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Tensor,
    fc2_weight: Tensor,
    fc2_bias: Tensor,
}

impl Net {
    /// From tensors named as in [`PARAMS`].
    fn from_named(named: &BTreeMap<String, Tensor>) -> candle_core::Result<Net> {
        let get = |name: &str| {
            named.get(name).cloned().ok_or_else(|| candle_core::Error::Msg(format!("classifier: no weight {name}")))
        };
        Ok(Net {
            conv1_weight: get("conv1.weight")?,
            conv1_bias: get("conv1.bias")?.reshape((1, CONV1, 1, 1))?,
            conv2_weight: get("conv2.weight")?,
            conv2_bias: get("conv2.bias")?.reshape((1, CONV2, 1, 1))?,
            fc1_weight: get("fc1.weight")?,
            fc1_bias: get("fc1.bias")?,
            fc2_weight: get("fc2.weight")?,
            fc2_bias: get("fc2.bias")?,
        })
    }

    /// Features `(B, 128)` and logits `(B, 10)` of images `(B, 1, 28, 28)`.
    fn forward(&self, images: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let batch = images.dim(0)?;
        let h = conv2d(images, &self.conv1_weight, 2, KERNEL1 / 2)?.broadcast_add(&self.conv1_bias)?.relu()?;
        let h = conv2d(&h, &self.conv2_weight, 2, KERNEL2 / 2)?.broadcast_add(&self.conv2_bias)?.relu()?;
        let h = h.reshape((batch, FLAT))?;
        let features = h.matmul(&self.fc1_weight.t()?)?.broadcast_add(&self.fc1_bias)?.relu()?;
        let logits = features.matmul(&self.fc2_weight.t()?)?.broadcast_add(&self.fc2_bias)?;
        Ok((features, logits))
    }
}

/// The trained MNIST classifier that scores generated images.
pub struct Classifier {
    net: Net,
    /// Fraction of the 10,000 test images classified correctly, measured once after training.
    test_accuracy: f64,
}

impl Classifier {
    /// The cached classifier from `paths.cache_dir`, trained and written there (atomically, under a
    /// lock) when absent or damaged. Loads MNIST itself; a job that has it already calls
    /// [`Classifier::load_or_train_with`].
    pub fn load_or_train(paths: &DataPaths, device: &Device) -> Result<Classifier, JobError> {
        let mnist = mnist::load(paths).map_err(|e| JobError::Failed(e.to_string()))?;
        let (classifier, _) = Self::load_or_train_with(paths, &mnist, device, &TrainConfig::standard(), &|| false)?;
        Ok(classifier)
    }

    /// [`Classifier::load_or_train`] with the data at hand, a training configuration and a cancel
    /// signal (polled between batches and while another process trains). See the module header.
    pub fn load_or_train_with(
        paths: &DataPaths,
        mnist: &Mnist,
        device: &Device,
        config: &TrainConfig,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(Classifier, Origin), JobError> {
        if config.train_images == 0 || config.train_images > mnist.train.len() || config.batch_size == 0 {
            return Err(JobError::InvalidParams(format!(
                "classifier training: {} images in batches of {} (the split has {})",
                config.train_images,
                config.batch_size,
                mnist.train.len()
            )));
        }
        let key = cache_key(mnist, config);
        let dir = paths.cache("gan-quality").map_err(data_failed)?;
        let path = dir.join(format!("classifier-{}.safetensors", &key[..16]));
        loop {
            if let Some(classifier) = read_cache(&path, &key, device)? {
                return Ok((classifier, Origin::Cached));
            }
            let Some(lock) = FileLock::acquire(&path, "classifier training").map_err(data_failed)? else {
                if cancelled() {
                    return Err(JobError::Cancelled);
                }
                std::thread::sleep(POLL);
                continue;
            };
            // Another process may have finished between the read and the lock.
            if let Some(classifier) = read_cache(&path, &key, device)? {
                return Ok((classifier, Origin::Cached));
            }
            let start = Instant::now();
            let vars = train(mnist, config, device, &lock, cancelled)?;
            let named: BTreeMap<String, Tensor> =
                vars.iter().map(|(name, var)| (name.clone(), var.as_tensor().detach())).collect();
            let net = Net::from_named(&named).map_err(candle_failed)?;
            let test_accuracy = accuracy(&net, &mnist.test, device).map_err(candle_failed)?;
            let seconds = start.elapsed().as_secs_f64();
            write_cache(&path, &key, &named, test_accuracy, seconds)?;
            drop(lock);
            tracing::info!(seconds, test_accuracy, path = %path.display(), "trained the MNIST quality classifier");
            return Ok((Classifier { net, test_accuracy }, Origin::Trained));
        }
    }

    /// Penultimate-layer features `(N, 128)` and class probabilities `(N, 10)` (f32, on the
    /// classifier's device) of images `(N, 1, 28, 28)` in [-1, 1]; batched internally.
    pub fn features_and_probs(&self, images: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (n, channels, rows, cols) = images.dims4()?;
        if (channels, rows, cols) != (1, ROWS, COLS) {
            candle_core::bail!("classifier: images must be (N, 1, {ROWS}, {COLS}), got {:?}", images.dims());
        }
        let device = self.net.fc2_bias.device();
        if n == 0 {
            return Ok((
                Tensor::zeros((0, FEATURES), DType::F32, device)?,
                Tensor::zeros((0, CLASSES), DType::F32, device)?,
            ));
        }
        let images = images.to_device(device)?.to_dtype(DType::F32)?;
        let mut features = Vec::with_capacity(n.div_ceil(EVAL_BATCH));
        let mut probs = Vec::with_capacity(n.div_ceil(EVAL_BATCH));
        for start in (0..n).step_by(EVAL_BATCH) {
            let batch = images.narrow(0, start, EVAL_BATCH.min(n - start))?;
            let (f, logits) = self.net.forward(&batch)?;
            features.push(f);
            probs.push(candle_nn::ops::softmax_last_dim(&logits)?);
        }
        Ok((Tensor::cat(&features, 0)?, Tensor::cat(&probs, 0)?))
    }

    /// Fraction of the 10,000 MNIST test images classified correctly, measured at training time.
    pub fn test_accuracy(&self) -> f64 {
        self.test_accuracy
    }

    /// The real reference: features of the first `n` MNIST test images.
    pub fn reference(&self, mnist: &Mnist, n: usize) -> candle_core::Result<Gaussian> {
        if n > mnist.test.len() {
            candle_core::bail!("reference: {n} images asked for, the MNIST test split has {}", mnist.test.len());
        }
        let images = unit_images(&mnist.test, 0..n, self.net.fc2_bias.device())?;
        Gaussian::fit(&self.features_and_probs(&images)?.0)
    }

    /// Frechet distance of `generated` (`(N, 1, 28, 28)` in [-1, 1], N >= 2) to `reference`, and its
    /// class coverage.
    pub fn quality(&self, generated: &Tensor, reference: &Gaussian) -> candle_core::Result<Quality> {
        let (features, probs) = self.features_and_probs(generated)?;
        let frechet = frechet_distance(&Gaussian::fit(&features)?, reference);
        let (class_entropy, confidence) = class_coverage(&probs)?;
        Ok(Quality { frechet, class_entropy, confidence })
    }
}

/// How good a set of generated images is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// Frechet distance of the classifier's features to the real reference (lower is better).
    pub frechet: f64,
    /// Entropy (nats) of the histogram of predicted classes: ln 10 = 2.303 when every digit is
    /// generated equally often, 0 when all are one digit.
    pub class_entropy: f64,
    /// Mean max-softmax probability: how sure the classifier is that each image is some digit.
    pub confidence: f64,
}

/// Entropy of the predicted-class histogram and mean max probability of `probs (N, 10)`.
pub fn class_coverage(probs: &Tensor) -> candle_core::Result<(f64, f64)> {
    let rows = probs.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    if rows.is_empty() {
        return Ok((0.0, 0.0));
    }
    let mut counts = [0usize; CLASSES];
    let mut confidence = 0.0;
    for row in &rows {
        let (class, p) =
            row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &p)| if p > best.1 { (i, p) } else { best });
        counts[class.min(CLASSES - 1)] += 1;
        confidence += f64::from(p);
    }
    let n = rows.len() as f64;
    let entropy = counts.iter().filter(|&&c| c > 0).map(|&c| c as f64 / n).map(|p| -p * p.ln()).sum::<f64>();
    Ok((entropy.max(0.0), confidence / n))
}

/// Mean and covariance (f64, the unbiased `n - 1` estimate, as numpy's `cov` and pytorch-fid) of a
/// feature set.
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    mean: Vec<f64>,
    /// `(dim, dim)` row-major.
    cov: Vec<f64>,
}

impl Gaussian {
    /// From features `(N, D)`, N >= 2.
    pub fn fit(features: &Tensor) -> candle_core::Result<Gaussian> {
        let (n, dim) = features.dims2()?;
        if n < 2 {
            candle_core::bail!("a Gaussian needs at least 2 samples, got {n}");
        }
        let x = features.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
        let mean = x.mean_keepdim(0)?;
        let centered = x.broadcast_sub(&mean)?;
        let cov = (centered.t()?.matmul(&centered)? / (n - 1) as f64)?;
        let cov = cov.flatten_all()?.to_vec1::<f64>()?;
        let mean = mean.flatten_all()?.to_vec1::<f64>()?;
        debug_assert_eq!(cov.len(), dim * dim);
        Ok(Gaussian { mean, cov })
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// `(dim, dim)` row-major.
    pub fn cov(&self) -> &[f64] {
        &self.cov
    }
}

/// `||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`: the trace of the square root is the sum of
/// the square roots of the eigenvalues of the symmetric `sqrt(S1) S2 sqrt(S1)` (which has those of
/// `S1 S2`), with rounding's tiny negatives clamped to 0; both square roots come from a Jacobi
/// eigendecomposition. NaN when the dimensions differ.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> f64 {
    let n = a.dim();
    if b.dim() != n || a.cov.len() != n * n || b.cov.len() != n * n {
        return f64::NAN;
    }
    let mean_term: f64 = a.mean.iter().zip(&b.mean).map(|(x, y)| (x - y) * (x - y)).sum();
    let trace = |m: &[f64]| (0..n).map(|i| m[i * n + i]).sum::<f64>();
    let (values, vectors) = symmetric_eigen(&a.cov, n);
    // sqrt(S1) = V diag(sqrt(max(l, 0))) V^T
    let roots: Vec<f64> = values.iter().map(|&l| l.max(0.0).sqrt()).collect();
    let mut root = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            root[i * n + j] = (0..n).map(|k| vectors[i * n + k] * roots[k] * vectors[j * n + k]).sum();
        }
    }
    let mut product = matmul(&matmul(&root, &b.cov, n), &root, n);
    // Symmetric up to rounding; make it exactly so for Jacobi.
    for i in 0..n {
        for j in i + 1..n {
            let mean = 0.5 * (product[i * n + j] + product[j * n + i]);
            product[i * n + j] = mean;
            product[j * n + i] = mean;
        }
    }
    let (values, _) = symmetric_eigen(&product, n);
    let trace_sqrt: f64 = values.iter().map(|&l| l.max(0.0).sqrt()).sum();
    (mean_term + trace(&a.cov) + trace(&b.cov) - 2.0 * trace_sqrt).max(0.0)
}

/// `(n, n)` row-major product.
fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            if aik == 0.0 {
                continue;
            }
            let row = &b[k * n..(k + 1) * n];
            for (o, &bkj) in out[i * n..(i + 1) * n].iter_mut().zip(row) {
                *o += aik * bkj;
            }
        }
    }
    out
}

/// Eigenvalues and eigenvectors (the columns of the row-major `(n, n)` result) of the symmetric
/// row-major `a`, by cyclic Jacobi rotations (accurate to rounding for symmetric matrices, and fast
/// enough at n = 128: about ten sweeps of n^2 / 2 rotations of O(n) each).
fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        if off <= total * 1e-30 || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation that zeroes a[p][q] (Numerical Recipes' `jacobi`).
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// Images `range` of `split` as `(len, 1, 28, 28)` f32 in [-1, 1].
pub fn unit_images(split: &Split, range: std::ops::Range<usize>, device: &Device) -> candle_core::Result<Tensor> {
    if range.end > split.len() || range.start > range.end {
        candle_core::bail!("images {range:?} of a split of {}", split.len());
    }
    let pixels = mnist::to_unit_range(&split.images[range.start * PIXELS..range.end * PIXELS]);
    Tensor::from_vec(pixels, (range.len(), 1, ROWS, COLS), device)
}

fn data_failed(e: DataError) -> JobError {
    JobError::Failed(e.to_string())
}

fn candle_failed(e: candle_core::Error) -> JobError {
    JobError::Failed(format!("candle: {e}"))
}

/// Hashes the MNIST bytes, the version and the training settings.
fn cache_key(mnist: &Mnist, config: &TrainConfig) -> String {
    let mut h = Sha256::new();
    h.update(format!("gan-quality classifier v{CLASSIFIER_VERSION} {config:?}\n"));
    for part in [&mnist.train.images, &mnist.train.labels, &mnist.test.images, &mnist.test.labels] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

/// Uniform in `±sqrt(6 / fan_in)` (He et al. for ReLU layers).
fn he_uniform(rng: &mut impl Rng, n: usize, fan_in: usize) -> Vec<f32> {
    let limit = (6.0 / fan_in as f64).sqrt();
    (0..n).map(|_| rng.random_range(-limit..limit) as f32).collect()
}

/// Trains a fresh classifier: see the module header, step 4.
fn train(
    mnist: &Mnist,
    config: &TrainConfig,
    device: &Device,
    lock: &FileLock,
    cancelled: &dyn Fn() -> bool,
) -> Result<BTreeMap<String, Var>, JobError> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut vars = BTreeMap::new();
    for (name, shape) in PARAMS {
        let count: usize = shape.iter().product();
        let data = if name.ends_with(".bias") {
            vec![0.0; count]
        } else {
            he_uniform(&mut rng, count, shape[1..].iter().product())
        };
        let var =
            Var::from_tensor(&Tensor::from_vec(data, shape, device).map_err(candle_failed)?).map_err(candle_failed)?;
        vars.insert(name.to_string(), var);
    }
    let mut optimizer = Optimizer::new(OptimizerKind::Adam, config.learning_rate);
    let mut order: Vec<usize> = (0..config.train_images).collect();
    let mut pixels = Vec::with_capacity(config.batch_size * PIXELS);
    for epoch in 0..config.epochs {
        order.shuffle(&mut rng);
        for (step, batch) in order.chunks(config.batch_size).enumerate() {
            if cancelled() {
                return Err(JobError::Cancelled);
            }
            pixels.clear();
            for &i in batch {
                pixels.extend(mnist.train.image(i).iter().map(|&p| (f32::from(p) - 127.5) / 127.5));
            }
            let labels: Vec<u32> = batch.iter().map(|&i| u32::from(mnist.train.labels[i])).collect();
            let loss = (|| {
                let images = Tensor::from_slice(&pixels, (batch.len(), 1, ROWS, COLS), device)?;
                let labels = Tensor::new(labels.as_slice(), device)?;
                let named = vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
                let (_, logits) = Net::from_named(&named)?.forward(&images)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
                optimizer.step(&vars, &loss.backward()?)?;
                loss.to_scalar::<f32>()
            })()
            .map_err(candle_failed)?;
            if !loss.is_finite() {
                return Err(JobError::Failed(format!("classifier loss is {loss} at epoch {epoch} step {step}")));
            }
            lock.touch();
        }
    }
    Ok(vars)
}

/// Fraction of `split` classified correctly.
fn accuracy(net: &Net, split: &Split, device: &Device) -> candle_core::Result<f64> {
    let mut correct = 0usize;
    for start in (0..split.len()).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(split.len());
        let (_, logits) = net.forward(&unit_images(split, start..end, device)?)?;
        let predicted = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        correct += predicted.iter().zip(&split.labels[start..end]).filter(|(p, l)| **p == u32::from(**l)).count();
    }
    Ok(correct as f64 / split.len().max(1) as f64)
}

/// sha256 of the weights' little-endian bytes in [`PARAMS`] order.
fn weights_sha256(named: &BTreeMap<String, Vec<u8>>) -> String {
    let mut h = Sha256::new();
    for (name, _) in PARAMS {
        h.update(name.as_bytes());
        if let Some(bytes) = named.get(name) {
            h.update(bytes);
        }
    }
    hex::encode(h.finalize())
}

fn write_cache(
    path: &Path,
    key: &str,
    named: &BTreeMap<String, Tensor>,
    test_accuracy: f64,
    seconds: f64,
) -> Result<(), JobError> {
    let mut bytes: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (name, _) in PARAMS {
        let tensor = named.get(name).ok_or_else(|| JobError::Failed(format!("classifier: no weight {name}")))?;
        let values = tensor.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(candle_failed)?;
        bytes.insert(name.to_string(), values.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    let metadata: HashMap<String, String> = [
        ("version".to_string(), CLASSIFIER_VERSION.to_string()),
        ("key".to_string(), key.to_string()),
        ("test_accuracy".to_string(), format!("{test_accuracy:?}")),
        ("train_seconds".to_string(), format!("{seconds:.1}")),
        ("sha256".to_string(), weights_sha256(&bytes)),
    ]
    .into();
    let invalid =
        |e: safetensors::SafeTensorError| JobError::Failed(DataError::invalid(path, e.to_string()).to_string());
    let views = PARAMS
        .iter()
        .map(|(name, shape)| {
            let data = bytes.get(*name).map(Vec::as_slice).unwrap_or_default();
            TensorView::new(Dtype::F32, shape.to_vec(), data).map(|view| (name.to_string(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let file = safetensors::serialize(views, Some(metadata)).map_err(invalid)?;
    write_atomic(path, &file).map_err(data_failed)
}

/// The cached classifier at `path`, or `None` when the file is missing or not to be trusted (then
/// removed).
fn read_cache(path: &Path, key: &str, device: &Device) -> Result<Option<Classifier>, JobError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "quality classifier cache unreadable; retraining");
            return Ok(None);
        }
    };
    match parse_cache(&bytes, key) {
        Ok((weights, test_accuracy)) => {
            let mut named = BTreeMap::new();
            for (name, shape) in PARAMS {
                let values = weights.get(name).cloned().unwrap_or_default();
                named.insert(name.to_string(), Tensor::from_vec(values, shape, device).map_err(candle_failed)?);
            }
            let net = Net::from_named(&named).map_err(candle_failed)?;
            Ok(Some(Classifier { net, test_accuracy }))
        }
        Err(reason) => {
            tracing::warn!(path = %path.display(), reason, "quality classifier cache damaged; retraining");
            let _ = std::fs::remove_file(path);
            Ok(None)
        }
    }
}

/// A cache file's weights and test accuracy after every check, or why it is not to be trusted.
fn parse_cache(bytes: &[u8], key: &str) -> Result<(BTreeMap<&'static str, Vec<f32>>, f64), String> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let tensors = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let setting = |name: &str| meta.get(name).cloned().unwrap_or_default();
    if setting("version") != CLASSIFIER_VERSION.to_string() || setting("key") != key {
        return Err("written for another version, data or training setting".into());
    }
    let test_accuracy: f64 = setting("test_accuracy").parse().map_err(|e| format!("test_accuracy: {e}"))?;
    if !(0.0..=1.0).contains(&test_accuracy) {
        return Err(format!("test accuracy {test_accuracy}"));
    }
    let mut raw: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut weights = BTreeMap::new();
    for (name, shape) in PARAMS {
        let view = tensors.tensor(name).map_err(|e| format!("{name}: {e}"))?;
        if view.dtype() != Dtype::F32 || view.shape() != shape {
            return Err(format!("{name} is {:?} {:?}, expected F32 {shape:?}", view.dtype(), view.shape()));
        }
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if !values.iter().all(|v| v.is_finite()) {
            return Err(format!("{name} has non-finite values"));
        }
        raw.insert(name.to_string(), view.data().to_vec());
        weights.insert(name, values);
    }
    if weights_sha256(&raw) != setting("sha256") {
        return Err("checksum mismatch".into());
    }
    Ok((weights, test_accuracy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::SystemTime;

    const NEVER: &dyn Fn() -> bool = &|| false;

    #[derive(serde::Deserialize)]
    struct Fixed {
        shape: Vec<usize>,
        data: Vec<f64>,
    }

    fn fixture() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/frechet_numpy.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("read frechet fixture")).expect("parse fixture")
    }

    fn fixed(case: &serde_json::Value, name: &str) -> Fixed {
        serde_json::from_value(case[name].clone()).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
    }

    #[test]
    fn frechet_distance_matches_numpy() {
        let all = fixture();
        let cases = all["cases"].as_object().expect("cases");
        assert_eq!(cases.len(), 5);
        for (name, case) in cases {
            let fit = |key: &str| {
                let f = fixed(case, key);
                Gaussian::fit(&Tensor::from_vec(f.data, f.shape.as_slice(), &Device::Cpu).unwrap()).unwrap()
            };
            let (a, b) = (fit("a"), fit("b"));
            assert!(close(a.mean(), &fixed(case, "mu_a").data, 1e-12), "{name} mean");
            assert!(close(a.cov(), &fixed(case, "cov_a").data, 1e-12), "{name} cov");
            assert!(close(b.cov(), &fixed(case, "cov_b").data, 1e-12), "{name} cov b");
            let expected = case["frechet"].as_f64().unwrap();
            let scale = 1.0
                + a.cov().iter().step_by(a.dim() + 1).sum::<f64>()
                + b.cov().iter().step_by(b.dim() + 1).sum::<f64>();
            let (ab, ba) = (frechet_distance(&a, &b), frechet_distance(&b, &a));
            assert!((ab - expected).abs() <= 1e-9 * scale, "{name}: {ab} vs numpy {expected}");
            assert!((ab - ba).abs() <= 1e-7 * scale, "{name} is not symmetric: {ab} vs {ba}");
            assert!(frechet_distance(&a, &a).abs() <= 1e-9 * scale, "{name}: a vs a {}", frechet_distance(&a, &a));
            assert!(frechet_distance(&b, &b).abs() <= 1e-9 * scale, "{name}: b vs b");
        }
        // The "same" case is 0 up to rounding; the others are not.
        assert!(cases["same"]["frechet"].as_f64().unwrap() < 1e-9);
        assert!(cases["full"]["frechet"].as_f64().unwrap() > 1.0);
    }

    #[test]
    fn jacobi_recovers_a_known_decomposition() {
        // Q diag(4, 1, 0, -2) Q^T for a rotation Q: eigenvalues back, A v = l v.
        let n = 4;
        let (c, s) = (0.6f64, 0.8f64);
        let q = [c, -s, 0.0, 0.0, s, c, 0.0, 0.0, 0.0, 0.0, c, s, 0.0, 0.0, -s, c];
        let d = [4.0, 1.0, 0.0, -2.0];
        let mut a = vec![0.0; 16];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| q[i * n + k] * d[k] * q[j * n + k]).sum();
            }
        }
        let (values, vectors) = symmetric_eigen(&a, n);
        let mut sorted = values.clone();
        sorted.sort_by(|x, y| y.total_cmp(x));
        assert!(close(&sorted, &d, 1e-12), "{sorted:?}");
        for k in 0..n {
            for i in 0..n {
                let av: f64 = (0..n).map(|j| a[i * n + j] * vectors[j * n + k]).sum();
                assert!((av - values[k] * vectors[i * n + k]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn class_coverage_counts_predicted_classes() {
        let uniform: Vec<f32> =
            (0..20).flat_map(|i| (0..10).map(move |c| if c == i % 10 { 0.9 } else { 0.01 })).collect();
        let probs = Tensor::from_vec(uniform, (20, 10), &Device::Cpu).unwrap();
        let (entropy, confidence) = class_coverage(&probs).unwrap();
        assert!((entropy - 10f64.ln()).abs() < 1e-12, "{entropy}");
        assert!((confidence - 0.9).abs() < 1e-6);
        let one: Vec<f32> = (0..20).flat_map(|_| (0..10).map(|c| if c == 3 { 0.5 } else { 0.5 / 9.0 })).collect();
        let (entropy, confidence) = class_coverage(&Tensor::from_vec(one, (20, 10), &Device::Cpu).unwrap()).unwrap();
        assert_eq!(entropy, 0.0);
        assert!((confidence - 0.5).abs() < 1e-6);
    }

    /// MNIST, loaded once per test process.
    fn mnist_data() -> &'static Mnist {
        static DATA: OnceLock<Mnist> = OnceLock::new();
        DATA.get_or_init(|| mnist::load(&crate::data::test_paths()).expect("MNIST: set SWEEP_DATA_DIR"))
    }

    /// MNIST and the standard classifier, trained into the shared test cache on first use.
    fn trained() -> (&'static Mnist, &'static Classifier) {
        static TRAINED: OnceLock<Classifier> = OnceLock::new();
        let mnist = mnist_data();
        let classifier = TRAINED.get_or_init(|| {
            let start = Instant::now();
            let (classifier, origin) = Classifier::load_or_train_with(
                &crate::data::test_paths(),
                mnist,
                &Device::Cpu,
                &TrainConfig::standard(),
                NEVER,
            )
            .expect("train the classifier");
            eprintln!(
                "classifier {origin:?} in {:.1} s, test accuracy {:.4}",
                start.elapsed().as_secs_f64(),
                classifier.test_accuracy()
            );
            classifier
        });
        (mnist, classifier)
    }

    /// The job moves the classifier into its training thread.
    #[test]
    fn the_classifier_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Classifier>();
        check::<Gaussian>();
    }

    #[test]
    fn the_classifier_reaches_98_percent() {
        let (mnist, classifier) = trained();
        assert!(classifier.test_accuracy() >= 0.98, "test accuracy {}", classifier.test_accuracy());
        // The stored accuracy is the classifier's own (recomputed here from the loaded weights).
        let again = accuracy(&classifier.net, &mnist.test, &Device::Cpu).unwrap();
        assert!((again - classifier.test_accuracy()).abs() < 1e-3, "{again} vs {}", classifier.test_accuracy());
    }

    #[test]
    fn real_digits_score_well_and_noise_badly() {
        let (mnist, classifier) = trained();
        let device = Device::Cpu;
        let reference = classifier.reference(mnist, 10_000).unwrap();
        assert_eq!(reference.dim(), FEATURES);

        let train = unit_images(&mnist.train, 0..10_000, &device).unwrap();
        let real = classifier.quality(&train, &reference).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let noise: Vec<f32> = (0..2_000 * PIXELS).map(|_| rng.random_range(-1.0f32..=1.0)).collect();
        let noise =
            classifier.quality(&Tensor::from_vec(noise, (2_000, 1, ROWS, COLS), &device).unwrap(), &reference).unwrap();
        let test_set = classifier.quality(&unit_images(&mnist.test, 0..10_000, &device).unwrap(), &reference).unwrap();
        eprintln!("real train vs test {real:?}\nnoise vs test {noise:?}\ntest vs itself {test_set:?}");

        assert!(test_set.frechet < 1e-6, "the reference against itself: {}", test_set.frechet);
        assert!(real.frechet > 0.0 && noise.frechet > 20.0 * real.frechet, "real {real:?} noise {noise:?}");
        assert!((test_set.class_entropy - 10f64.ln()).abs() < 0.01, "{test_set:?}");
        assert!((real.class_entropy - 10f64.ln()).abs() < 0.01, "{real:?}");
        assert!(real.confidence > 0.95 && test_set.confidence > 0.95, "{real:?} {test_set:?}");

        // Only ones: the histogram has one class (nearly).
        let ones: Vec<usize> = (0..mnist.test.len()).filter(|&i| mnist.test.labels[i] == 1).collect();
        let pixels: Vec<f32> = ones.iter().flat_map(|&i| mnist::to_unit_range(mnist.test.image(i))).collect();
        let ones = Tensor::from_vec(pixels, (ones.len(), 1, ROWS, COLS), &device).unwrap();
        let only_ones = classifier.quality(&ones, &reference).unwrap();
        eprintln!("only ones vs test {only_ones:?}");
        assert!(only_ones.class_entropy < 0.1, "{only_ones:?}");
        assert!(only_ones.frechet > 5.0 * real.frechet, "one digit is far from all ten: {only_ones:?}");
        // One image repeated: a single class, and no spread at all.
        let repeated = unit_images(&mnist.test, 0..1, &device).unwrap().repeat((64, 1, 1, 1)).unwrap();
        let repeated = classifier.quality(&repeated, &reference).unwrap();
        assert_eq!(repeated.class_entropy, 0.0);
    }

    #[test]
    fn features_and_probs_are_batched_and_shaped() {
        let (mnist, classifier) = trained();
        let images = unit_images(&mnist.test, 0..EVAL_BATCH + 7, &Device::Cpu).unwrap();
        let (features, probs) = classifier.features_and_probs(&images).unwrap();
        assert_eq!(features.dims(), [EVAL_BATCH + 7, FEATURES]);
        assert_eq!(probs.dims(), [EVAL_BATCH + 7, CLASSES]);
        // Batching does not change a row.
        let (alone, _) = classifier.features_and_probs(&images.narrow(0, EVAL_BATCH + 3, 1).unwrap()).unwrap();
        let row = features.narrow(0, EVAL_BATCH + 3, 1).unwrap();
        let diff = (alone - row).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{diff}");
        let sums = probs.sum(1).unwrap().to_vec1::<f32>().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
        assert!(classifier
            .features_and_probs(&Tensor::zeros((2, 1, 27, 28), DType::F32, &Device::Cpu).unwrap())
            .is_err());
    }

    /// A classifier small enough to train in a few seconds.
    fn tiny() -> TrainConfig {
        TrainConfig { train_images: 512, batch_size: 64, ..TrainConfig::standard() }
    }

    fn fresh_paths() -> (DataPaths, tempfile::TempDir) {
        let mut paths = crate::data::test_paths();
        let cache = tempfile::tempdir().expect("temp dir");
        paths.cache_dir = cache.path().to_path_buf();
        (paths, cache)
    }

    #[test]
    fn a_damaged_cache_is_rebuilt() {
        let (paths, _cache) = fresh_paths();
        let mnist = mnist_data();
        let load = || Classifier::load_or_train_with(&paths, mnist, &Device::Cpu, &tiny(), NEVER).unwrap();
        let (first, origin) = load();
        assert_eq!(origin, Origin::Trained);
        let (cached, origin) = load();
        assert_eq!(origin, Origin::Cached);
        assert_eq!(cached.test_accuracy(), first.test_accuracy());
        let probe = unit_images(&mnist.test, 0..8, &Device::Cpu).unwrap();
        let probs = |c: &Classifier| c.features_and_probs(&probe).unwrap().1.to_vec2::<f32>().unwrap();
        assert_eq!(probs(&cached), probs(&first));

        let dir = paths.cache_dir.join("gan-quality");
        let files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|f| f.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let file = &files[0];
        let key = cache_key(mnist, &tiny());
        let pristine = std::fs::read(file).unwrap();

        // A flipped weight byte, a cut file, a file for another key: each is retrained, the same.
        let mut flipped = pristine.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x01;
        let mut other_key = pristine.clone();
        let at = other_key.windows(5).position(|w| w == b"\"key\"").expect("key in the header") + 7;
        other_key[at] = if other_key[at] == b'0' { b'1' } else { b'0' };
        for (what, bytes) in
            [("flipped", flipped), ("cut", pristine[..pristine.len() / 2].to_vec()), ("other key", other_key)]
        {
            std::fs::write(file, &bytes).unwrap();
            let (rebuilt, origin) = load();
            assert_eq!(origin, Origin::Trained, "{what}");
            assert!(parse_cache(&std::fs::read(file).unwrap(), &key).is_ok(), "{what}: rewritten");
            assert_eq!(probs(&rebuilt), probs(&first), "{what}: training is deterministic");
        }
        assert!(!file.with_extension("lock").exists());
        // Another seed is another cache file.
        let (_, origin) =
            Classifier::load_or_train_with(&paths, mnist, &Device::Cpu, &TrainConfig { seed: 1, ..tiny() }, NEVER)
                .unwrap();
        assert_eq!(origin, Origin::Trained);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
    }

    #[test]
    fn a_locked_cache_is_awaited_and_a_stale_lock_taken_over() {
        let (paths, _cache) = fresh_paths();
        let mnist = mnist_data();
        let dir = paths.cache("gan-quality").unwrap();
        let key = cache_key(mnist, &tiny());
        let lock = dir.join(format!("classifier-{}.lock", &key[..16]));
        std::fs::write(&lock, b"").unwrap();
        std::thread::scope(|scope| {
            let loading = scope.spawn(|| Classifier::load_or_train_with(&paths, mnist, &Device::Cpu, &tiny(), NEVER));
            std::thread::sleep(POLL * 3);
            assert!(!loading.is_finished(), "the load must wait for a live lock");
            // The holder goes away without writing the file: the load trains itself.
            std::fs::remove_file(&lock).unwrap();
            let (_, origin) = loading.join().unwrap().unwrap();
            assert_eq!(origin, Origin::Trained);
        });
        assert!(!lock.exists());

        // A cancelled load waiting on a lock stops.
        let seeded = TrainConfig { seed: 2, ..tiny() };
        let lock = dir.join(format!("classifier-{}.lock", &cache_key(mnist, &seeded)[..16]));
        std::fs::write(&lock, b"").unwrap();
        let err = Classifier::load_or_train_with(&paths, mnist, &Device::Cpu, &seeded, &|| true).err();
        assert!(matches!(err, Some(JobError::Cancelled)), "{err:?}");
        // The same lock, left by a dead process, is taken over.
        File::options().write(true).open(&lock).unwrap().set_modified(SystemTime::now() - STALE_LOCK * 2).unwrap();
        let (_, origin) = Classifier::load_or_train_with(&paths, mnist, &Device::Cpu, &seeded, NEVER).unwrap();
        assert_eq!(origin, Origin::Trained);
        assert!(!lock.exists());
    }
}
