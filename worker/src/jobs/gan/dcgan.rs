//! `mnist-dcgan`: the TensorFlow DCGAN tutorial on MNIST as a sweepable job.
//!
//! Each epoch shuffles the training images with the trial RNG and runs the tutorial's
//! `train_step` on every batch (the last one may be short, as `tf.data`'s `batch`):
//!
//! 1. noise `z ~ N(0, 1)`, `fake = G(z)` in training mode (BatchNorm on batch statistics);
//! 2. `D(real)` and `D(fake)` with dropout on, each once;
//! 3. `gen_loss = BCE(D(fake), 1)`, `disc_loss = BCE(D(real), 1) + BCE(D(fake), 0)` from logits;
//! 4. both gradients from that one forward pass, then one Adam step per network.
//!
//! For step 4 the fake images enter D as a leaf: `disc_loss`'s backward gives D's gradients,
//! `gen_loss`'s gives the gradient at the fake images, which is then pushed through G alone.
//!
//! Per epoch, at the global batch count: `gen_loss` and `disc_loss` (means over the epoch's batches),
//! `epoch_seconds`, `epoch`, and a 4x4 grid of `G(fixed noise)` in inference mode, as the tutorial's
//! `generate_and_save_images`, stored as the artifact `grid_epoch_NNNN.png`. Every `score_every`
//! epochs (and once before training) the [`quality`](super::quality) scores of `score_samples`
//! generated images: `frechet` (the sweep's natural objective, minimise), `class_entropy`,
//! `confidence`.
//!
//! Checkpoints: a boundary after every epoch, numbered by epoch (`checkpoint_every`, default 15 as
//! the tutorial); they hold both networks, the BatchNorm running statistics, both optimizers, the
//! epoch, the global step and the RNG, so a resumed trial produces the same numbers.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use sweep_shared::checkpoint::Checkpoint;
use sweep_shared::params::{JobSchema, ParamSpec, Params};

use super::grid::{png_grid, GridLayout};
use super::mnist::{self, ROWS};
use super::model::{Discriminator, GanDims, Generator};
use super::quality::{Classifier, Gaussian, Quality, TrainConfig};
use crate::data::DataPaths;
use crate::jobs::nlp::models::{bce_with_logits, host_weights};
use crate::jobs::nlp::optim::Optimizer;
use crate::jobs::rng::RngState;
use crate::jobs::snapshot::{get_tensor, put_optimizer, put_tensor, put_vars, restore_optimizer, restore_vars};
use crate::jobs::{admit_params, size_param, EnvFactory, Job, JobContext, JobEnv, JobError};

pub const KIND: &str = "mnist-dcgan";

/// Images per generator call when scoring (no gradients).
const EVAL_BATCH: usize = 500;
/// Images in the per-epoch grid (4x4, as the tutorial).
const GRID_IMAGES: usize = 16;

pub fn schema() -> JobSchema {
    JobSchema {
        kind: KIND,
        description: "DCGAN on MNIST (the lab's GAN part, the TensorFlow tutorial): sample grids and a Frechet score",
        params: vec![
            ParamSpec::float("gen_lr", 1e-7, 1.0, 1e-4, "the generator's Adam learning rate"),
            ParamSpec::float("disc_lr", 1e-7, 1.0, 1e-4, "the discriminator's Adam learning rate"),
            ParamSpec::float("beta1", 0.0, 0.999, 0.9, "Adam's first-moment decay, both networks (Keras' default 0.9)"),
            ParamSpec::int("batch_size", 1, 60_000, 256, "images per training batch"),
            ParamSpec::int("noise_dim", 1, 4096, 100, "size of the generator's input noise"),
            ParamSpec::int("epochs", 1, 10_000, 50, "passes over the training images"),
            ParamSpec::float("slope", 0.0, 1.0, 0.3, "LeakyReLU slope for negative inputs (Keras' default 0.3)"),
            ParamSpec::float("dropout", 0.0, 0.95, 0.3, "the discriminator's dropout rate"),
            ParamSpec::int("train_samples", 0, 60_000, 0, "train on the first this many images (0: all 60,000)"),
            ParamSpec::int("score_every", 0, 10_000, 1, "epochs between quality scores (0: never)"),
            ParamSpec::int("score_samples", 10, 100_000, 2_000, "generated images per quality score"),
            ParamSpec::int("reference_samples", 10, 10_000, 10_000, "real test images the score compares against"),
            ParamSpec::int("checkpoint_every", 1, 10_000, 15, "epochs between checkpoints"),
        ],
    }
}

/// The typed parameters of one trial.
#[derive(Debug, Clone, PartialEq)]
pub struct DcganConfig {
    pub gen_lr: f64,
    pub disc_lr: f64,
    pub beta1: f64,
    pub batch_size: usize,
    pub dims: GanDims,
    pub epochs: u64,
    pub train_samples: usize,
    pub score_every: u64,
    pub score_samples: usize,
    pub reference_samples: usize,
}

impl DcganConfig {
    pub fn from_params(params: &Params) -> Result<Self, JobError> {
        admit_params(&schema(), params)?;
        let size = |name: &str| size_param(params, name);
        Ok(DcganConfig {
            gen_lr: params.f64("gen_lr")?,
            disc_lr: params.f64("disc_lr")?,
            beta1: params.f64("beta1")?,
            batch_size: size("batch_size")?,
            dims: GanDims { noise: size("noise_dim")?, slope: params.f64("slope")?, dropout: params.f64("dropout")? },
            epochs: params.u64("epochs")?,
            train_samples: size("train_samples")?,
            score_every: params.u64("score_every")?,
            score_samples: size("score_samples")?,
            reference_samples: size("reference_samples")?,
        })
    }

    /// The tutorial's settings with the schema's defaults.
    pub fn defaults() -> Result<Self, JobError> {
        let defaults = schema().params.into_iter().filter_map(|p| Some((p.name.to_string(), p.default?))).collect();
        Self::from_params(&Params(defaults))
    }
}

/// The `mnist-dcgan` job kind.
pub fn factory(env: JobEnv) -> EnvFactory {
    EnvFactory::new(schema(), env, |params, seed, env| {
        let config = DcganConfig::from_params(params)?;
        Ok(Box::new(DcganJob::new(config, seed, env.paths.clone(), env.candle_device()?)?))
    })
}

/// What a checkpoint holds besides tensors.
#[derive(Debug, Serialize, Deserialize)]
struct DcganHeader {
    epoch: u64,
    global_step: u64,
    gen_optimizer_steps: u64,
    disc_optimizer_steps: u64,
    rng: RngState,
}

/// What the job reads once: training images and the scorer with its real reference.
pub struct DcganData {
    /// Training images, `(n, 1, 28, 28)` values in [-1, 1], flat.
    pub train: Vec<f32>,
    pub scorer: Option<(Classifier, Gaussian)>,
}

impl DcganData {
    /// MNIST (the first `train_samples` training images) and, when scores are on, the cached
    /// classifier (trained here if no cache has it; `cancelled` stops that) with the real test
    /// images' reference statistics.
    pub fn load(
        paths: &DataPaths,
        config: &DcganConfig,
        device: &Device,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, JobError> {
        let data = mnist::load(paths).map_err(|e| JobError::Failed(e.to_string()))?;
        let n = if config.train_samples == 0 { data.train.len() } else { config.train_samples.min(data.train.len()) };
        let train = mnist::to_unit_range(&data.train.images[..n * ROWS * ROWS]);
        let scorer = if config.score_every > 0 {
            let (classifier, origin) =
                Classifier::load_or_train_with(paths, &data, device, &TrainConfig::standard(), cancelled)?;
            tracing::info!(
                ?origin,
                test_accuracy = classifier.test_accuracy(),
                "MNIST classifier for the quality score"
            );
            let reference = classifier.reference(&data, config.reference_samples).map_err(failed)?;
            Some((classifier, reference))
        } else {
            None
        };
        Ok(DcganData { train, scorer })
    }

    fn images(&self) -> usize {
        self.train.len() / (ROWS * ROWS)
    }
}

/// One DCGAN training trial.
pub struct DcganJob {
    config: DcganConfig,
    seed: u64,
    paths: DataPaths,
    device: Device,
    gen: Generator,
    disc: Discriminator,
    gen_opt: Optimizer,
    disc_opt: Optimizer,
    rng: ChaCha8Rng,
    /// The grid's noise: fixed by the seed, the same every epoch.
    grid_noise: Tensor,
    epoch: u64,
    global_step: u64,
    data: Option<DcganData>,
}

impl DcganJob {
    pub fn new(config: DcganConfig, seed: u64, paths: DataPaths, device: Device) -> Result<Self, JobError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let gen = Generator::new(config.dims, &mut rng, &device).map_err(failed)?;
        let disc = Discriminator::new(config.dims, &mut rng, &device).map_err(failed)?;
        let grid_noise =
            normal(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x6121_D5EE), GRID_IMAGES, config.dims.noise, &device)
                .map_err(failed)?;
        Ok(DcganJob {
            gen_opt: Optimizer::adam(config.gen_lr, config.beta1),
            disc_opt: Optimizer::adam(config.disc_lr, config.beta1),
            config,
            seed,
            paths,
            device,
            gen,
            disc,
            rng,
            grid_noise,
            epoch: 0,
            global_step: 0,
            data: None,
        })
    }

    /// Uses `data` instead of loading MNIST (tests share one load).
    pub fn with_data(mut self, data: DcganData) -> Self {
        self.data = Some(data);
        self
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn ensure_data(&mut self, ctx: &JobContext<'_>) -> Result<(), JobError> {
        if self.data.is_none() {
            let cancelled = || ctx.is_cancelled();
            self.data = Some(DcganData::load(&self.paths, &self.config, &self.device, &cancelled)?);
        }
        Ok(())
    }

    /// One `train_step` on `real (B, 1, 28, 28)`: returns (gen_loss, disc_loss).
    pub fn train_step(&mut self, real: &Tensor) -> candle_core::Result<(f32, f32)> {
        let b = real.dim(0)?;
        let z = normal(&mut self.rng, b, self.config.dims.noise, &self.device)?;
        let fake = self.gen.forward(&z, true)?;
        let fake_leaf = Var::from_tensor(&fake.detach())?;
        let real_logits = self.disc.forward(real, Some(&mut self.rng))?;
        let fake_logits = self.disc.forward(fake_leaf.as_tensor(), Some(&mut self.rng))?;
        let ones = Tensor::ones(b, candle_core::DType::F32, &self.device)?;
        let zeros = Tensor::zeros(b, candle_core::DType::F32, &self.device)?;
        let gen_loss = bce_with_logits(&fake_logits, &ones)?;
        let disc_loss = (bce_with_logits(&real_logits, &ones)? + bce_with_logits(&fake_logits, &zeros)?)?;

        let disc_grads = disc_loss.backward()?;
        let at_fake = gen_loss.backward()?;
        let upstream = at_fake
            .get(fake_leaf.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg("no gradient reached the fake images".into()))?
            .detach();
        let gen_grads = (fake * upstream)?.sum_all()?.backward()?;
        self.disc_opt.step(&self.disc.vars, &disc_grads)?;
        self.gen_opt.step(&self.gen.vars, &gen_grads)?;
        Ok((gen_loss.to_scalar::<f32>()?, disc_loss.to_scalar::<f32>()?))
    }

    /// The images of `rows` as a `(B, 1, 28, 28)` tensor.
    fn batch(&self, train: &[f32], rows: &[usize]) -> candle_core::Result<Tensor> {
        let px = ROWS * ROWS;
        let mut out = Vec::with_capacity(rows.len() * px);
        for &r in rows {
            out.extend_from_slice(&train[r * px..(r + 1) * px]);
        }
        Tensor::from_vec(out, (rows.len(), 1, ROWS, ROWS), &self.device)
    }

    fn train_epoch(&mut self, data: &DcganData, ctx: &mut JobContext<'_>) -> Result<(f64, f64), JobError> {
        let mut order: Vec<usize> = (0..data.images()).collect();
        order.shuffle(&mut self.rng);
        let (mut gen_sum, mut disc_sum, mut batches) = (0f64, 0f64, 0usize);
        for rows in order.chunks(self.config.batch_size) {
            ctx.check_cancel()?;
            let real = self.batch(&data.train, rows).map_err(failed)?;
            let (gen_loss, disc_loss) = self.train_step(&real).map_err(failed)?;
            if !gen_loss.is_finite() || !disc_loss.is_finite() {
                return Err(JobError::Failed(format!(
                    "losses are {gen_loss} (generator) and {disc_loss} (discriminator) at step {}",
                    self.global_step + 1
                )));
            }
            self.global_step += 1;
            gen_sum += f64::from(gen_loss);
            disc_sum += f64::from(disc_loss);
            batches += 1;
        }
        let n = batches.max(1) as f64;
        Ok((gen_sum / n, disc_sum / n))
    }

    /// `n` images from fresh noise, in inference mode (running BatchNorm statistics), drawn
    /// from a generator of their own seeded by the epoch: scoring never moves the trial RNG.
    pub fn generate(&self, n: usize) -> candle_core::Result<Tensor> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x5C0_E000 ^ self.epoch.wrapping_mul(0x9E37_79B9));
        let mut parts = Vec::new();
        let mut left = n;
        while left > 0 {
            let b = left.min(EVAL_BATCH);
            let z = normal(&mut rng, b, self.config.dims.noise, &self.device)?;
            parts.push(self.gen.forward(&z, false)?.detach());
            left -= b;
        }
        Tensor::cat(&parts, 0)
    }

    /// The quality of `score_samples` generated images against the real reference.
    pub fn score(&self, data: &DcganData) -> Result<Option<Quality>, JobError> {
        let Some((classifier, reference)) = &data.scorer else { return Ok(None) };
        let images = self.generate(self.config.score_samples).map_err(failed)?;
        Ok(Some(classifier.quality(&images, reference).map_err(failed)?))
    }

    fn report_score(&self, data: &DcganData, ctx: &mut JobContext<'_>) -> Result<(), JobError> {
        if let Some(q) = self.score(data)? {
            ctx.report(self.global_step, "frechet", q.frechet);
            ctx.report(self.global_step, "class_entropy", q.class_entropy);
            ctx.report(self.global_step, "confidence", q.confidence);
        }
        Ok(())
    }

    /// The tutorial's per-epoch picture: `G(fixed noise)` in inference mode as a 4x4 PNG.
    pub fn grid_png(&self) -> Result<Vec<u8>, JobError> {
        let images = self.gen.forward(&self.grid_noise, false).map_err(failed)?;
        let pixels = images.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(failed)?;
        png_grid(&pixels, GRID_IMAGES, ROWS, ROWS, GridLayout::default()).map_err(|e| JobError::Failed(e.to_string()))
    }

    /// Named weights of both networks (tests compare runs with them).
    pub fn weights(&self) -> Result<BTreeMap<String, Vec<f32>>, JobError> {
        let mut out = BTreeMap::new();
        for (prefix, vars) in [("g", &self.gen.vars), ("d", &self.disc.vars)] {
            for (name, _, data) in host_weights(vars).map_err(failed)? {
                out.insert(format!("{prefix}.{name}"), data);
            }
        }
        Ok(out)
    }

    fn run_epochs(&mut self, data: &DcganData, ctx: &mut JobContext<'_>) -> Result<(), JobError> {
        if self.epoch == 0 && self.config.score_every > 0 {
            self.report_score(data, ctx)?;
        }
        while self.epoch < self.config.epochs {
            let started = Instant::now();
            let (gen_loss, disc_loss) = self.train_epoch(data, ctx)?;
            let seconds = started.elapsed().as_secs_f64();
            self.epoch += 1;
            let step = self.global_step;
            ctx.report(step, "gen_loss", gen_loss);
            ctx.report(step, "disc_loss", disc_loss);
            ctx.report(step, "epoch_seconds", seconds);
            ctx.report(step, "epoch", self.epoch as f64);
            ctx.artifact(step, &format!("grid_epoch_{:04}.png", self.epoch), self.grid_png()?);
            if self.config.score_every > 0 && self.epoch.is_multiple_of(self.config.score_every) {
                self.report_score(data, ctx)?;
            }
            ctx.boundary(self.epoch, || self.checkpoint())?;
        }
        Ok(())
    }
}

/// `(n, dim)` standard normal values from `rng`.
fn normal(rng: &mut ChaCha8Rng, n: usize, dim: usize, device: &Device) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = (0..n * dim).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_vec(values, (n, dim), device)
}

fn failed(e: candle_core::Error) -> JobError {
    JobError::Failed(format!("candle: {e}"))
}

impl Job for DcganJob {
    fn run(&mut self, ctx: &mut JobContext<'_>) -> Result<(), JobError> {
        self.ensure_data(ctx)?;
        let data = self.data.take().ok_or_else(|| JobError::Failed("MNIST did not load".into()))?;
        if data.images() == 0 {
            self.data = Some(data);
            return Err(JobError::InvalidParams("no training images".into()));
        }
        let result = self.run_epochs(&data, ctx);
        self.data = Some(data);
        result
    }

    fn checkpoint(&self) -> Result<Checkpoint, JobError> {
        let header = DcganHeader {
            epoch: self.epoch,
            global_step: self.global_step,
            gen_optimizer_steps: self.gen_opt.steps(),
            disc_optimizer_steps: self.disc_opt.steps(),
            rng: RngState::of(&self.rng),
        };
        let mut checkpoint = Checkpoint::new(KIND, self.global_step, &header)?;
        checkpoint = put_vars(checkpoint, "g", &self.gen.vars)?;
        checkpoint = put_vars(checkpoint, "d", &self.disc.vars)?;
        for (i, norm) in self.gen.norms.iter().enumerate() {
            let (mean, var) = norm.running();
            checkpoint = put_tensor(checkpoint, &format!("bn{i}.running_mean"), &mean)?;
            checkpoint = put_tensor(checkpoint, &format!("bn{i}.running_var"), &var)?;
        }
        checkpoint = put_optimizer(checkpoint, "gopt", &self.gen_opt)?;
        put_optimizer(checkpoint, "dopt", &self.disc_opt)
    }

    fn restore(&mut self, checkpoint: &Checkpoint) -> Result<(), JobError> {
        let header: DcganHeader = checkpoint.header(KIND)?;
        restore_vars(checkpoint, "g", &self.gen.vars)?;
        restore_vars(checkpoint, "d", &self.disc.vars)?;
        for (i, norm) in self.gen.norms.iter().enumerate() {
            let mean = get_tensor(checkpoint, &format!("bn{i}.running_mean"), &self.device)?;
            let var = get_tensor(checkpoint, &format!("bn{i}.running_var"), &self.device)?;
            norm.set_running(&mean, &var).map_err(failed)?;
        }
        restore_optimizer(checkpoint, "gopt", &mut self.gen_opt, header.gen_optimizer_steps, &self.device)?;
        restore_optimizer(checkpoint, "dopt", &mut self.disc_opt, header.disc_optimizer_steps, &self.device)?;
        self.rng = header.rng.to_rng()?;
        self.epoch = header.epoch;
        self.global_step = header.global_step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::testing::{run_to_end, SaveAt};

    fn config(epochs: u64, train_samples: usize) -> DcganConfig {
        DcganConfig {
            epochs,
            train_samples,
            batch_size: 32,
            score_every: 0,
            score_samples: 500,
            reference_samples: 1_000,
            ..DcganConfig::defaults().unwrap()
        }
    }

    fn job(config: DcganConfig, seed: u64) -> DcganJob {
        let paths = crate::data::test_paths();
        let data = DcganData::load(&paths, &config, &Device::Cpu, &|| false).unwrap();
        DcganJob::new(config, seed, paths, Device::Cpu).unwrap().with_data(data)
    }

    #[test]
    fn defaults_are_the_tutorials() {
        let c = DcganConfig::defaults().unwrap();
        assert_eq!((c.gen_lr, c.disc_lr, c.beta1, c.batch_size, c.epochs), (1e-4, 1e-4, 0.9, 256, 50));
        assert_eq!(c.dims, GanDims { noise: 100, slope: 0.3, dropout: 0.3 });
    }

    /// Every epoch reports both losses, its time and a 4x4 grid PNG; checkpoints come at the
    /// epochs asked for.
    #[test]
    fn an_epoch_reports_losses_time_and_a_grid() {
        let mut job = job(config(2, 96), 3);
        let (recorded, kept) = run_to_end(&mut job, SaveAt::boundaries(&[2]));
        for name in ["gen_loss", "disc_loss", "epoch_seconds"] {
            let values = recorded.values(name);
            assert_eq!(values.len(), 2, "{name}");
            assert!(values.iter().all(|v| v.is_finite() && *v > 0.0), "{name}: {values:?}");
        }
        assert_eq!(recorded.values("epoch"), vec![1.0, 2.0]);
        let steps: Vec<u64> = recorded.points.iter().filter(|p| p.1 == "epoch").map(|p| p.0).collect();
        assert_eq!(steps, vec![3, 6], "three batches of 32 per epoch on the global step axis");
        let names: Vec<&str> = recorded.artifacts.iter().map(|a| a.1.as_str()).collect();
        assert_eq!(names, vec!["grid_epoch_0001.png", "grid_epoch_0002.png"]);
        let png = &recorded.artifacts[0].2;
        assert_eq!(&png[1..4], b"PNG");
        assert_eq!(kept.saved.len(), 1);
        assert_eq!(kept.decoded(0).step, 6);
    }

    /// Save after epoch 1, restore into a fresh job, continue: the same numbers as never stopping,
    /// BatchNorm running statistics and both optimizers included (the grids compare them).
    #[test]
    fn resume_from_a_checkpoint_gives_the_same_numbers() {
        let mut whole = job(config(2, 64), 5);
        let (all, kept) = run_to_end(&mut whole, SaveAt::boundaries(&[1]));
        let checkpoint = kept.decoded(0);
        let mut resumed = job(config(2, 64), 5);
        resumed.restore(&checkpoint).unwrap();
        let (later, _) = run_to_end(&mut resumed, SaveAt::default());
        let strip_time = |p: Vec<(u64, String, f64)>| -> Vec<(u64, String, f64)> {
            p.into_iter().filter(|p| p.1 != "epoch_seconds").collect()
        };
        let expected = strip_time(all.after(checkpoint.step));
        assert!(!expected.is_empty());
        assert_eq!(strip_time(later.points), expected, "metrics after the checkpoint");
        assert_eq!(resumed.weights().unwrap(), whole.weights().unwrap(), "final weights");
        assert_eq!(later.artifacts.last().map(|a| &a.2), all.artifacts.last().map(|a| &a.2), "the last grid");
    }

    /// One epoch on 1,000 images already moves the generator's samples toward MNIST: the
    /// Frechet score falls from the untrained generator's.
    #[test]
    fn one_epoch_on_1000_images_lowers_the_frechet_score() {
        // Batches of 8: 125 steps, enough for BatchNorm's running statistics (momentum 0.01),
        // which inference mode uses, to move most of the way from their start (0 and 1).
        let config = DcganConfig { score_every: 1, batch_size: 8, ..config(1, 1_000) };
        let mut job = job(config, 7);
        let (recorded, _) = run_to_end(&mut job, SaveAt::default());
        let frechet = recorded.values("frechet");
        assert_eq!(frechet.len(), 2, "before training and after epoch 1");
        println!("frechet {frechet:?}, class entropy {:?}", recorded.values("class_entropy"));
        assert!(frechet[1] < 0.8 * frechet[0], "Frechet score {} -> {}", frechet[0], frechet[1]);
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// Where a train step's time goes at batch 256:
    /// `cargo test --release -p sweep-worker dcgan::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn step_phases() {
        let config = DcganConfig { score_every: 0, ..DcganConfig::defaults().unwrap() };
        let mut job = DcganJob::new(config, 0, crate::data::test_paths(), Device::Cpu).unwrap();
        let real = Tensor::rand(-1f32, 1f32, (256, 1, 28, 28), &Device::Cpu).unwrap();
        for _ in 0..3 {
            let mut t = Instant::now();
            let mut lap = |name: &str| {
                print!("{name} {:.0} ", t.elapsed().as_secs_f64() * 1e3);
                t = Instant::now();
            };
            let z = normal(&mut job.rng, 256, 100, &Device::Cpu).unwrap();
            lap("noise");
            let fake = job.gen.forward(&z, true).unwrap();
            lap("G fwd");
            let leaf = Var::from_tensor(&fake.detach()).unwrap();
            let rl = job.disc.forward(&real, Some(&mut job.rng)).unwrap();
            let fl = job.disc.forward(leaf.as_tensor(), Some(&mut job.rng)).unwrap();
            lap("D fwd x2");
            let ones = Tensor::ones(256, candle_core::DType::F32, &Device::Cpu).unwrap();
            let zeros = Tensor::zeros(256, candle_core::DType::F32, &Device::Cpu).unwrap();
            let gl = bce_with_logits(&fl, &ones).unwrap();
            let dl = (bce_with_logits(&rl, &ones).unwrap() + bce_with_logits(&fl, &zeros).unwrap()).unwrap();
            lap("losses");
            let dg = dl.backward().unwrap();
            lap("D bwd (disc)");
            let at = gl.backward().unwrap();
            lap("D bwd (gen)");
            let up = at.get(leaf.as_tensor()).unwrap().detach();
            let gg = (fake * up).unwrap().sum_all().unwrap().backward().unwrap();
            lap("G bwd");
            job.disc_opt.step(&job.disc.vars, &dg).unwrap();
            lap("D adam");
            job.gen_opt.step(&job.gen.vars, &gg).unwrap();
            lap("G adam");
            println!();
        }
    }
}
