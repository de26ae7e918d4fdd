//! `imdb-bert`: IMDB sentiment from frozen all-MiniLM-L6-v2 sentence vectors with a small trained
//! head, one trial per configuration.
//!
//! Model: review -> [`super::bert::SentenceEncoder`] (the first `max_tokens` tokens, mean pooling,
//! frozen) -> 384 features -> the head: `hidden` = 0 is logistic regression (Dense(1)), `hidden` > 0
//! is Dense(hidden, relu) -> Dense(1). Glorot-uniform kernels and zero biases, as Keras; stable
//! binary cross-entropy on the logit ([`super::models::bce_with_logits`]); RMSprop or Adam
//! ([`super::optim`]). The features go in as the encoder gives them: standardising them per feature
//! cost about a point of test accuracy (it lifts low-variance, noisy features the head then
//! overfits).
//!
//! Data: the embedded reviews come from [`super::imdb_embed`], which caches them per machine, so a
//! sweep's first trial pays for embedding and the others read vectors. `train_samples` /
//! `test_samples` (0 = all 25,000) take the first reviews of each split's fixed order, the same rows
//! for every trial, so a larger cache serves a smaller subset. The train rows are shuffled with an
//! RNG derived from the seed alone and cut into train and validation (`val_split`).
//!
//! Defaults: 2,000 train and 1,000 test reviews at 512 tokens, logistic regression, Adam at 1e-3
//! for 40 epochs. On two CPU cores the first such trial spends 6 minutes embedding those 3,000
//! reviews; later trials read the cache and finish in about a second. Test accuracy is 0.81 on
//! those 1,000 reviews. Fewer tokens are cheaper and weaker: 256 embed about 1.5 times as fast for
//! about 0.79, 128 about 3 times as fast for about 0.75.
//!
//! Each epoch shuffles the training rows with the trial RNG, runs mini-batches (`batch_size`)
//! through the head and the optimizer, then evaluates the validation rows. After the last epoch it
//! evaluates the test rows. Steps are global batch counts, as in `imdb-sentiment`: at the end of each
//! epoch `loss` and `acc` (means over that epoch's batches), `val_loss`, `val_acc` and `epoch`; at
//! the end `test_loss` and `test_acc`.
//!
//! Checkpoints: a boundary after every epoch, numbered by epoch (so `checkpoint_every` counts
//! epochs); the checkpoint's step is the global batch count. It holds the head's weights, the
//! optimizer's moments and step count, the epoch and the trial RNG's position, so a resumed trial
//! produces the same numbers as an uninterrupted one.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sweep_shared::checkpoint::Checkpoint;
use sweep_shared::params::{JobSchema, ParamKind, ParamSpec, ParamValue, Params};

use super::bert::{EncoderError, SentenceEncoder};
use super::imdb;
use super::imdb_embed::{Embedded, EmbeddingCache, Split};
use super::models::{bce_with_logits, correct, host_weights, set_weight, NamedWeights};
use super::optim::{Optimizer, OptimizerKind};
use crate::data::DataPaths;
use crate::jobs::rng::RngState;
use crate::jobs::snapshot::{put_optimizer, put_vars, restore_optimizer, restore_vars};
use crate::jobs::{admit_params, size_param, EnvFactory, Job, JobContext, JobEnv, JobError};

pub const KIND: &str = "imdb-bert";

/// Rows per evaluation batch (no gradients, so larger than training batches).
const EVAL_BATCH: usize = 1000;

pub fn schema() -> JobSchema {
    JobSchema {
        kind: KIND,
        description: "IMDB sentiment from frozen all-MiniLM-L6-v2 sentence vectors (mean pooling) with a trained head",
        params: vec![
            ParamSpec {
                name: "optimizer",
                kind: ParamKind::Choice(OptimizerKind::NAMES),
                default: Some(ParamValue::Str("adam".into())),
                help: "rmsprop or adam, with Keras' defaults",
            },
            ParamSpec {
                name: "lr",
                kind: ParamKind::Float { min: 1e-7, max: 1.0 },
                default: Some(ParamValue::Float(1e-3)),
                help: "learning rate",
            },
            ParamSpec::int("epochs", 1, 1000, 40, "passes over the training rows"),
            ParamSpec::int("batch_size", 1, 65_536, 32, "reviews per training batch"),
            ParamSpec::int("hidden", 0, 4096, 0, "0: logistic regression; > 0: one hidden ReLU layer of this width"),
            ParamSpec::int(
                "max_tokens",
                2,
                512,
                512,
                "tokens of each review the encoder reads, [CLS] and [SEP] included",
            ),
            ParamSpec {
                name: "val_split",
                kind: ParamKind::Float { min: 0.01, max: 0.9 },
                default: Some(ParamValue::Float(0.2)),
                help: "share of the train reviews held out for validation",
            },
            ParamSpec::int(
                "train_samples",
                0,
                25_000,
                2_000,
                "embed and use this many train-split reviews (0: all 25,000)",
            ),
            ParamSpec::int(
                "test_samples",
                0,
                25_000,
                1_000,
                "embed and evaluate this many test reviews (0: all 25,000)",
            ),
            ParamSpec::int("checkpoint_every", 1, 1000, 1, "epochs between checkpoints"),
        ],
    }
}

/// The typed parameters of one trial.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub epochs: u64,
    pub batch_size: usize,
    pub hidden: usize,
    pub max_tokens: usize,
    pub val_split: f64,
    /// Reviews of each split; 0 in the params means the whole split.
    pub train_samples: usize,
    pub test_samples: usize,
}

impl BertConfig {
    pub fn from_params(params: &Params) -> Result<Self, JobError> {
        admit_params(&schema(), params)?;
        let size = |name: &str| size_param(params, name);
        let samples = |name: &str| -> Result<usize, JobError> {
            Ok(match size(name)? {
                0 => imdb::SPLIT_SIZE,
                n => n,
            })
        };
        let optimizer = params.str("optimizer")?;
        Ok(BertConfig {
            optimizer: OptimizerKind::parse(optimizer)
                .ok_or_else(|| JobError::InvalidParams(format!("optimizer: unknown '{optimizer}'")))?,
            lr: params.f64("lr")?,
            epochs: params.u64("epochs")?,
            batch_size: size("batch_size")?,
            hidden: size("hidden")?,
            max_tokens: size("max_tokens")?,
            val_split: params.f64("val_split")?,
            train_samples: samples("train_samples")?,
            test_samples: samples("test_samples")?,
        })
    }
}

/// The `imdb-bert` job kind.
pub fn factory(env: JobEnv) -> EnvFactory {
    EnvFactory::new(schema(), env, |params, seed, env| {
        let config = BertConfig::from_params(params)?;
        Ok(Box::new(BertSentimentJob::new(config, seed, env.paths.clone(), env.candle_device()?)?))
    })
}

/// What a checkpoint holds besides tensors.
#[derive(Debug, Serialize, Deserialize)]
struct BertHeader {
    epoch: u64,
    global_step: u64,
    optimizer_steps: u64,
    rng: RngState,
}

/// One split's sentence vectors `(n, dim)` and 0/1 targets `(n,)`.
pub struct Rows {
    features: Tensor,
    targets: Tensor,
}

impl Rows {
    /// The rows `rows` of `source`, in that order.
    fn new(source: &Embedded, rows: &[usize], device: &Device) -> candle_core::Result<Self> {
        let mut features = Vec::with_capacity(rows.len() * source.dim);
        for &r in rows {
            features.extend_from_slice(source.row(r));
        }
        let targets: Vec<f32> = rows.iter().map(|&r| f32::from(source.labels[r])).collect();
        Ok(Rows {
            features: Tensor::from_vec(features, (rows.len(), source.dim), device)?,
            targets: Tensor::from_vec(targets, rows.len(), device)?,
        })
    }

    pub fn len(&self) -> usize {
        self.targets.dims().first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Features and targets of `rows`.
    fn select(&self, rows: &[usize]) -> candle_core::Result<(Tensor, Tensor)> {
        let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let ids = Tensor::from_vec(ids, rows.len(), self.features.device())?;
        Ok((self.features.index_select(&ids, 0)?, self.targets.index_select(&ids, 0)?))
    }
}

/// The rows one trial trains, validates and tests on.
pub struct TrialData {
    train: Rows,
    val: Rows,
    test: Rows,
}

impl TrialData {
    /// Splits `train` into train and validation rows with an RNG derived from the seed alone, so a
    /// resumed trial sees the same rows.
    pub fn new(
        train: &Embedded,
        test: &Embedded,
        val_split: f64,
        seed: u64,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let mut split_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_DA7A);
        let mut rows: Vec<usize> = (0..train.len()).collect();
        rows.shuffle(&mut split_rng);
        let val_len = ((rows.len() as f64) * val_split).round() as usize;
        let val_rows = rows.split_off(rows.len() - val_len.min(rows.len()));
        let test_rows: Vec<usize> = (0..test.len()).collect();
        Ok(TrialData {
            train: Rows::new(train, &rows, device)?,
            val: Rows::new(train, &val_rows, device)?,
            test: Rows::new(test, &test_rows, device)?,
        })
    }

    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.train.len(), self.val.len(), self.test.len())
    }
}

/// The trained head: named variables (`out.w`, `out.b`, and `fc.w`, `fc.b` with a hidden layer);
/// linear weights `(out, in)` as in PyTorch.
pub struct Head {
    hidden: usize,
    pub vars: BTreeMap<String, Var>,
}

impl Head {
    /// A freshly initialised head on `dim` features; draws its weights from `rng`.
    pub fn new(dim: usize, hidden: usize, rng: &mut impl Rng, device: &Device) -> candle_core::Result<Self> {
        let mut vars = BTreeMap::new();
        let mut dense = |name: &str, fan_in: usize, fan_out: usize| -> candle_core::Result<()> {
            let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
            let w: Vec<f32> = (0..fan_in * fan_out).map(|_| rng.random_range(-limit..limit) as f32).collect();
            vars.insert(format!("{name}.w"), Var::from_tensor(&Tensor::from_vec(w, (fan_out, fan_in), device)?)?);
            vars.insert(format!("{name}.b"), Var::zeros(fan_out, DType::F32, device)?);
            Ok(())
        };
        if hidden > 0 {
            dense("fc", dim, hidden)?;
            dense("out", hidden, 1)?;
        } else {
            dense("out", dim, 1)?;
        }
        Ok(Head { hidden, vars })
    }

    fn linear(&self, x: &Tensor, name: &str) -> candle_core::Result<Tensor> {
        let var = |suffix: &str| {
            let key = format!("{name}.{suffix}");
            self.vars
                .get(&key)
                .map(|v| v.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg(format!("no variable {key}")))
        };
        x.matmul(&var("w")?.t()?)?.broadcast_add(var("b")?)
    }

    /// Logits `(B,)` of features `(B, dim)`.
    pub fn forward(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        let x = if self.hidden > 0 { self.linear(features, "fc")?.relu()? } else { features.clone() };
        self.linear(&x, "out")?.squeeze(1)
    }

    /// Weights as host f32 vectors by name, for checkpoints.
    pub fn weights(&self) -> candle_core::Result<NamedWeights> {
        host_weights(&self.vars)
    }

    /// Replaces one variable's values; the shape must match.
    pub fn set(&self, name: &str, shape: &[usize], data: Vec<f32>) -> candle_core::Result<()> {
        set_weight(&self.vars, name, shape, data)
    }
}

/// One `imdb-bert` trial.
pub struct BertSentimentJob {
    config: BertConfig,
    seed: u64,
    paths: DataPaths,
    device: Device,
    head: Head,
    optimizer: Optimizer,
    rng: ChaCha8Rng,
    /// Epochs finished.
    epoch: u64,
    /// Training batches run.
    global_step: u64,
    /// Embedded on the first `run` (or read from the cache); tests may hand it in.
    data: Option<TrialData>,
}

/// Width of all-MiniLM-L6-v2's vectors: the head is built before the encoder loads.
const DIM: usize = 384;

impl BertSentimentJob {
    pub fn new(config: BertConfig, seed: u64, paths: DataPaths, device: Device) -> Result<Self, JobError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let head = Head::new(DIM, config.hidden, &mut rng, &device).map_err(failed)?;
        let optimizer = Optimizer::new(config.optimizer, config.lr);
        Ok(BertSentimentJob { config, seed, paths, device, head, optimizer, rng, epoch: 0, global_step: 0, data: None })
    }

    /// Uses `data` instead of embedding IMDB (tests with their own rows).
    pub fn with_data(mut self, data: TrialData) -> Self {
        self.data = Some(data);
        self
    }

    /// Loads the encoder, embeds (or reads from the cache) both splits' subsets, and splits them.
    fn load_data(&mut self, ctx: &JobContext<'_>) -> Result<(), JobError> {
        if self.data.is_some() {
            return Ok(());
        }
        let encoder = SentenceEncoder::load(&self.paths, &self.device).map_err(encoder_failed)?;
        if encoder.hidden_size() != DIM {
            return Err(JobError::Failed(format!(
                "the encoder's vectors have {} values, not {DIM}",
                encoder.hidden_size()
            )));
        }
        let cache = EmbeddingCache::new(&self.paths, &encoder).map_err(encoder_failed)?;
        let cancel = ctx.cancel.clone();
        let cancelled = move || cancel.is_cancelled();
        let load = |split, n| {
            let (embedded, stats) =
                cache.load(&self.paths, split, n, self.config.max_tokens, &cancelled).map_err(encoder_failed)?;
            tracing::info!(
                split = split.name(),
                reviews = n,
                embedded = stats.embedded,
                reused = stats.reused,
                embed_seconds = stats.embed_seconds,
                "IMDB review vectors ready"
            );
            Ok::<_, JobError>(embedded)
        };
        let train = load(Split::Train, self.config.train_samples)?;
        let test = load(Split::Test, self.config.test_samples)?;
        self.data =
            Some(TrialData::new(&train, &test, self.config.val_split, self.seed, &self.device).map_err(failed)?);
        Ok(())
    }

    /// Mean loss and accuracy over a whole split, without gradients.
    fn evaluate(&self, rows: &Rows, ctx: &JobContext<'_>) -> Result<(f64, f64), JobError> {
        let all: Vec<usize> = (0..rows.len()).collect();
        let (mut loss_sum, mut hits) = (0f64, 0u64);
        for chunk in all.chunks(EVAL_BATCH) {
            ctx.check_cancel()?;
            let (features, targets) = rows.select(chunk).map_err(failed)?;
            let logits = self.head.forward(&features).map_err(failed)?.detach();
            let loss = bce_with_logits(&logits, &targets).and_then(|l| l.to_scalar::<f32>()).map_err(failed)?;
            loss_sum += f64::from(loss) * chunk.len() as f64;
            hits += correct(&logits, &targets).map_err(failed)?;
        }
        let n = rows.len().max(1) as f64;
        Ok((loss_sum / n, hits as f64 / n))
    }

    fn train_epoch(&mut self, train: &Rows, ctx: &mut JobContext<'_>) -> Result<(f64, f64), JobError> {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut self.rng);
        let (mut loss_sum, mut hits) = (0f64, 0u64);
        for chunk in order.chunks(self.config.batch_size) {
            ctx.check_cancel()?;
            let (features, targets) = train.select(chunk).map_err(failed)?;
            let logits = self.head.forward(&features).map_err(failed)?;
            let loss = bce_with_logits(&logits, &targets).map_err(failed)?;
            let grads = loss.backward().map_err(failed)?;
            self.optimizer.step(&self.head.vars, &grads).map_err(failed)?;
            let value = loss.to_scalar::<f32>().map_err(failed)?;
            if !value.is_finite() {
                return Err(JobError::Failed(format!("training loss is {value} at step {}", self.global_step + 1)));
            }
            self.global_step += 1;
            loss_sum += f64::from(value) * chunk.len() as f64;
            hits += correct(&logits.detach(), &targets).map_err(failed)?;
        }
        let n = train.len().max(1) as f64;
        Ok((loss_sum / n, hits as f64 / n))
    }

    fn run_loaded(&mut self, data: &TrialData, ctx: &mut JobContext<'_>) -> Result<(), JobError> {
        let (train, val, test) = data.sizes();
        if train == 0 || val == 0 || test == 0 {
            return Err(JobError::InvalidParams(format!(
                "{train} training, {val} validation and {test} test reviews: every split needs at least one"
            )));
        }
        while self.epoch < self.config.epochs {
            let (loss, acc) = self.train_epoch(&data.train, ctx)?;
            let (val_loss, val_acc) = self.evaluate(&data.val, ctx)?;
            self.epoch += 1;
            let step = self.global_step;
            ctx.report(step, "loss", loss);
            ctx.report(step, "acc", acc);
            ctx.report(step, "val_loss", val_loss);
            ctx.report(step, "val_acc", val_acc);
            ctx.report(step, "epoch", self.epoch as f64);
            ctx.boundary(self.epoch, || self.checkpoint())?;
        }
        let (test_loss, test_acc) = self.evaluate(&data.test, ctx)?;
        ctx.report(self.global_step, "test_loss", test_loss);
        ctx.report(self.global_step, "test_acc", test_acc);
        Ok(())
    }
}

fn failed(e: candle_core::Error) -> JobError {
    JobError::Failed(format!("candle: {e}"))
}

fn encoder_failed(e: EncoderError) -> JobError {
    match e {
        EncoderError::Cancelled => JobError::Cancelled,
        EncoderError::MaxTokens { .. } => JobError::InvalidParams(e.to_string()),
        other => JobError::Failed(other.to_string()),
    }
}

impl Job for BertSentimentJob {
    fn run(&mut self, ctx: &mut JobContext<'_>) -> Result<(), JobError> {
        self.load_data(ctx)?;
        let data = self.data.take().ok_or_else(|| JobError::Failed("IMDB vectors did not load".into()))?;
        let result = self.run_loaded(&data, ctx);
        self.data = Some(data);
        result
    }

    fn checkpoint(&self) -> Result<Checkpoint, JobError> {
        let header = BertHeader {
            epoch: self.epoch,
            global_step: self.global_step,
            optimizer_steps: self.optimizer.steps(),
            rng: RngState::of(&self.rng),
        };
        let checkpoint = Checkpoint::new(KIND, self.global_step, &header)?;
        put_optimizer(put_vars(checkpoint, "w", &self.head.vars)?, "opt", &self.optimizer)
    }

    fn restore(&mut self, checkpoint: &Checkpoint) -> Result<(), JobError> {
        let header: BertHeader = checkpoint.header(KIND)?;
        restore_vars(checkpoint, "w", &self.head.vars)?;
        restore_optimizer(checkpoint, "opt", &mut self.optimizer, header.optimizer_steps, &self.device)?;
        self.rng = header.rng.to_rng()?;
        self.epoch = header.epoch;
        self.global_step = header.global_step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::bert::fresh_test_paths;
    use super::*;
    use crate::jobs::testing::{metric, params_with, Recorded, SaveAt};
    use crate::jobs::{CancelFlag, CheckpointSink, JobFactory, NoCheckpoints};

    fn params(overrides: &[(&str, ParamValue)]) -> Params {
        params_with(&schema(), overrides)
    }

    fn run_with(job: &mut dyn Job, checkpoints: &mut dyn CheckpointSink) -> Result<Vec<(u64, String, f64)>, JobError> {
        let mut metrics = Recorded::default();
        let mut ctx = JobContext { seed: 0, metrics: &mut metrics, checkpoints, cancel: CancelFlag::default() };
        job.run(&mut ctx)?;
        Ok(metrics.points)
    }

    /// A job on the first reviews of each split, embedded through a cache with small chunks.
    fn job_on_subset(config: &BertConfig, seed: u64, paths: &DataPaths) -> BertSentimentJob {
        let encoder = SentenceEncoder::load(paths, &Device::Cpu).unwrap();
        let cache = EmbeddingCache::new(paths, &encoder).unwrap().with_chunk(50);
        let never = || false;
        let (train, _) = cache.load(paths, Split::Train, config.train_samples, config.max_tokens, &never).unwrap();
        let (test, _) = cache.load(paths, Split::Test, config.test_samples, config.max_tokens, &never).unwrap();
        let data = TrialData::new(&train, &test, config.val_split, seed, &Device::Cpu).unwrap();
        BertSentimentJob::new(config.clone(), seed, paths.clone(), Device::Cpu).unwrap().with_data(data)
    }

    #[test]
    fn defaults_are_admitted_and_bad_values_named() {
        let config = BertConfig::from_params(&params(&[])).unwrap();
        assert_eq!(
            (config.hidden, config.max_tokens, config.train_samples, config.test_samples),
            (0, 512, 2_000, 1_000)
        );
        let all = BertConfig::from_params(&params(&[("train_samples", ParamValue::Int(0))])).unwrap();
        assert_eq!(all.train_samples, imdb::SPLIT_SIZE);
        for (name, value) in [
            ("optimizer", ParamValue::Str("sgd".into())),
            ("max_tokens", ParamValue::Int(1)),
            ("max_tokens", ParamValue::Int(513)),
            ("hidden", ParamValue::Int(-1)),
            ("train_samples", ParamValue::Int(25_001)),
            ("lr", ParamValue::Float(0.0)),
        ] {
            let err = BertConfig::from_params(&params(&[(name, value.clone())])).unwrap_err();
            assert!(err.to_string().contains(name), "{name} = {value}: {err}");
        }
    }

    #[test]
    fn restored_run_repeats_the_uninterrupted_one() {
        let (paths, _cache) = fresh_test_paths();
        let p = params(&[
            ("train_samples", ParamValue::Int(50)),
            ("test_samples", ParamValue::Int(20)),
            ("max_tokens", ParamValue::Int(32)),
            ("epochs", ParamValue::Int(4)),
            ("batch_size", ParamValue::Int(8)),
            ("hidden", ParamValue::Int(8)),
        ]);
        let config = BertConfig::from_params(&p).unwrap();
        let mut sink = SaveAt::boundaries(&[1, 3]);
        let full = run_with(&mut job_on_subset(&config, 7, &paths), &mut sink).unwrap();
        assert_eq!(sink.saved.len(), 2);
        assert_eq!(metric(&full, "epoch").len(), 4);
        // 40 training rows in batches of 8: 5 steps an epoch.
        assert_eq!(metric(&full, "test_acc")[0].0, 20);

        let bits = |points: &[(u64, String, f64)]| -> Vec<(u64, String, u64)> {
            points.iter().map(|(s, n, v)| (*s, n.clone(), v.to_bits())).collect()
        };
        for (bytes, epoch) in sink.saved.iter().zip([1u64, 3]) {
            let checkpoint = Checkpoint::decode(bytes).unwrap();
            assert_eq!(checkpoint.step, epoch * 5);
            let mut resumed = job_on_subset(&config, 7, &paths);
            resumed.restore(&checkpoint).unwrap();
            let rest = run_with(&mut resumed, &mut NoCheckpoints).unwrap();
            let after: Vec<_> = full.iter().filter(|(step, _, _)| *step > epoch * 5).cloned().collect();
            assert_eq!(bits(&rest), bits(&after), "resumed from epoch {epoch}");
        }

        // A checkpoint of another head shape is refused.
        let other = BertConfig { hidden: 0, ..config.clone() };
        let mut job = BertSentimentJob::new(other, 7, paths.clone(), Device::Cpu).unwrap();
        assert!(job.restore(&Checkpoint::decode(&sink.saved[0]).unwrap()).is_err());
    }

    #[test]
    fn a_short_run_beats_chance_on_held_out_reviews() {
        let (paths, _cache) = fresh_test_paths();
        let p = params(&[
            ("train_samples", ParamValue::Int(300)),
            ("test_samples", ParamValue::Int(200)),
            ("max_tokens", ParamValue::Int(128)),
        ]);
        let config = BertConfig::from_params(&p).unwrap();
        let points = run_with(&mut job_on_subset(&config, 1, &paths), &mut NoCheckpoints).unwrap();
        let test_acc = metric(&points, "test_acc")[0].1;
        let val_acc = metric(&points, "val_acc").last().unwrap().1;
        assert!(test_acc > 0.65, "test accuracy {test_acc} (validation {val_acc})");
        let losses: Vec<f64> = metric(&points, "loss").iter().map(|&(_, l)| l).collect();
        assert!(losses.last() < losses.first(), "training loss fell: {losses:?}");
    }

    #[test]
    fn the_factory_runs_a_trial_end_to_end_and_caches_its_vectors() {
        let (paths, _cache) = fresh_test_paths();
        let factory = factory(JobEnv { paths: paths.clone(), device: crate::config::Device::Cpu });
        let p = params(&[
            ("train_samples", ParamValue::Int(10)),
            ("test_samples", ParamValue::Int(5)),
            ("max_tokens", ParamValue::Int(8)),
            ("epochs", ParamValue::Int(2)),
        ]);
        let points = run_with(factory.create(&p, 3).unwrap().as_mut(), &mut NoCheckpoints).unwrap();
        let names: Vec<&str> = points.iter().map(|(_, n, _)| n.as_str()).collect();
        assert_eq!(&names[..5], ["loss", "acc", "val_loss", "val_acc", "epoch"]);
        assert_eq!(&names[names.len() - 2..], ["test_loss", "test_acc"]);
        // One chunk per split, cached for the next trial.
        let model_dir = std::fs::read_dir(paths.cache_dir.join("imdb-bert")).unwrap().next().unwrap().unwrap().path();
        assert_eq!(std::fs::read_dir(model_dir).unwrap().count(), 2);
        let again = run_with(factory.create(&p, 3).unwrap().as_mut(), &mut NoCheckpoints).unwrap();
        assert_eq!(again, points);
    }
}
