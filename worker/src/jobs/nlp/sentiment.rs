//! `imdb-sentiment`: the lab's IMDB classifiers (dense on multi-hot, SimpleRNN, LSTM) trained on
//! candle, one trial per configuration.
//!
//! Data: IMDB through [`super::imdb`] (cached tokens). The train split is shuffled with an RNG
//! derived from the seed alone and cut into train and validation (`val_split`, default 0.2);
//! `train_samples` / `test_samples` (0 = all) take seeded subsets for quick runs and tests.
//!
//! Each epoch shuffles the training rows with the trial RNG, runs mini-batches (`batch_size`)
//! through the model and the optimizer, then evaluates the validation rows. After the last epoch it
//! evaluates the test split (25,000 reviews by default).
//!
//! Steps are global batch counts, like Keras' or W&B's global step, so every metric shares one
//! axis: `batch_loss` every `log_every` batches; at the end of each epoch `loss` and `acc` (means
//! over that epoch's batches, as Keras prints them), `val_loss`, `val_acc` and `epoch`; at the end
//! `test_loss` and `test_acc`.
//!
//! Checkpoints: a boundary after every epoch, numbered by epoch (so `checkpoint_every` counts
//! epochs); the checkpoint's step is the global batch count. It holds every weight, the optimizer's
//! moments and step count, the epoch and the trial RNG's position, so a resumed trial produces the
//! same numbers as an uninterrupted one.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sweep_shared::checkpoint::Checkpoint;
use sweep_shared::params::{JobSchema, ParamKind, ParamSpec, ParamValue, Params};

use super::imdb::{self, ImdbTokens, Sequences};
use super::models::{bce_with_logits, correct, Arch, ModelDims, SentimentModel};
use super::optim::{Optimizer, OptimizerKind};
use crate::data::DataPaths;
use crate::jobs::rng::RngState;
use crate::jobs::snapshot::{put_optimizer, put_vars, restore_optimizer, restore_vars};
use crate::jobs::{admit_params, size_param, EnvFactory, Job, JobContext, JobEnv, JobError};

pub const KIND: &str = "imdb-sentiment";

/// Rows per evaluation batch (no gradients, so larger than training batches).
const EVAL_BATCH: usize = 500;

pub fn schema() -> JobSchema {
    JobSchema {
        kind: KIND,
        description: "IMDB sentiment (the lab's NLP part): dense on multi-hot, Embedding+SimpleRNN or Embedding+LSTM",
        params: vec![
            ParamSpec {
                name: "model",
                kind: ParamKind::Choice(Arch::NAMES),
                default: Some(ParamValue::Str("lstm".into())),
                help: "dense (16-16-1 on multi-hot), rnn (Embedding+SimpleRNN) or lstm (Embedding+LSTM)",
            },
            ParamSpec {
                name: "optimizer",
                kind: ParamKind::Choice(OptimizerKind::NAMES),
                default: Some(ParamValue::Str("rmsprop".into())),
                help: "rmsprop or adam, with Keras' defaults",
            },
            ParamSpec {
                name: "lr",
                kind: ParamKind::Float { min: 1e-7, max: 1.0 },
                default: Some(ParamValue::Float(1e-3)),
                help: "learning rate",
            },
            ParamSpec::int("epochs", 1, 1000, 10, "passes over the training rows"),
            ParamSpec::int("batch_size", 1, 65_536, 128, "reviews per training batch"),
            ParamSpec::int("embed", 1, 1024, 32, "embedding width (rnn, lstm)"),
            ParamSpec::int("hidden", 1, 1024, 32, "recurrent state size (rnn, lstm)"),
            ParamSpec::int("dense_units", 1, 4096, 16, "width of the dense model's two hidden layers"),
            ParamSpec::int("maxlen", 1, 10_000, 500, "ids per review for rnn/lstm: the last maxlen, zeros in front"),
            ParamSpec::int(
                "max_features",
                3,
                200_000,
                10_000,
                "vocabulary: the most frequent words, plus padding and OOV",
            ),
            ParamSpec {
                name: "val_split",
                kind: ParamKind::Float { min: 0.01, max: 0.9 },
                default: Some(ParamValue::Float(0.2)),
                help: "share of the train split held out for validation",
            },
            ParamSpec::int("train_samples", 0, 25_000, 0, "use this many train-split reviews (0: all 25,000)"),
            ParamSpec::int("test_samples", 0, 25_000, 0, "evaluate this many test reviews at the end (0: all 25,000)"),
            ParamSpec::int("log_every", 1, 1_000_000, 20, "batches between batch_loss points"),
            ParamSpec::int("checkpoint_every", 1, 1000, 1, "epochs between checkpoints"),
        ],
    }
}

/// The typed parameters of one trial.
#[derive(Debug, Clone, PartialEq)]
pub struct SentimentConfig {
    pub arch: Arch,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub epochs: u64,
    pub batch_size: usize,
    pub dims: ModelDims,
    pub maxlen: usize,
    pub val_split: f64,
    pub train_samples: usize,
    pub test_samples: usize,
    pub log_every: u64,
}

impl SentimentConfig {
    pub fn from_params(params: &Params) -> Result<Self, JobError> {
        admit_params(&schema(), params)?;
        let size = |name: &str| size_param(params, name);
        let model = params.str("model")?;
        let optimizer = params.str("optimizer")?;
        Ok(SentimentConfig {
            arch: Arch::parse(model).ok_or_else(|| JobError::InvalidParams(format!("model: unknown '{model}'")))?,
            optimizer: OptimizerKind::parse(optimizer)
                .ok_or_else(|| JobError::InvalidParams(format!("optimizer: unknown '{optimizer}'")))?,
            lr: params.f64("lr")?,
            epochs: params.u64("epochs")?,
            batch_size: size("batch_size")?,
            dims: ModelDims {
                max_features: size("max_features")?,
                embed: size("embed")?,
                hidden: size("hidden")?,
                dense_units: size("dense_units")?,
            },
            maxlen: size("maxlen")?,
            val_split: params.f64("val_split")?,
            train_samples: size("train_samples")?,
            test_samples: size("test_samples")?,
            log_every: params.u64("log_every")?,
        })
    }
}

/// The `imdb-sentiment` job kind.
pub fn factory(env: JobEnv) -> EnvFactory {
    EnvFactory::new(schema(), env, |params, seed, env| {
        let config = SentimentConfig::from_params(params)?;
        Ok(Box::new(SentimentJob::new(config, seed, env.paths.clone(), env.candle_device()?)?))
    })
}

/// What a checkpoint holds besides tensors.
#[derive(Debug, Serialize, Deserialize)]
struct SentimentHeader {
    epoch: u64,
    global_step: u64,
    optimizer_steps: u64,
    rng: RngState,
}

/// The rows one trial trains, validates and tests on.
pub struct TrialData {
    train: Sequences,
    val: Sequences,
    test: Sequences,
    /// Padded ids `(n, maxlen)` of each split, for the recurrent models.
    train_ids: Vec<u32>,
    val_ids: Vec<u32>,
    test_ids: Vec<u32>,
}

impl TrialData {
    /// Splits and subsets `tokens` for one trial; depends on the seed only, never on the trial RNG,
    /// so a resumed trial sees the same rows.
    pub fn new(tokens: &ImdbTokens, config: &SentimentConfig, seed: u64) -> Self {
        let mut split_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_DA7A);
        let mut rows: Vec<usize> = (0..tokens.train.len()).collect();
        rows.shuffle(&mut split_rng);
        if config.train_samples > 0 {
            rows.truncate(config.train_samples);
        }
        let val_len = ((rows.len() as f64) * config.val_split).round() as usize;
        let val_rows = rows.split_off(rows.len() - val_len.min(rows.len()));
        let mut test_rows: Vec<usize> = (0..tokens.test.len()).collect();
        if config.test_samples > 0 {
            test_rows.shuffle(&mut split_rng);
            test_rows.truncate(config.test_samples);
        }
        let train = tokens.train.select(&rows);
        let val = tokens.train.select(&val_rows);
        let test = tokens.test.select(&test_rows);
        let ids = |s: &Sequences| if config.arch.multi_hot() { Vec::new() } else { imdb::padded(s, config.maxlen) };
        TrialData { train_ids: ids(&train), val_ids: ids(&val), test_ids: ids(&test), train, val, test }
    }

    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.train.len(), self.val.len(), self.test.len())
    }
}

/// One IMDB training trial.
pub struct SentimentJob {
    config: SentimentConfig,
    seed: u64,
    paths: DataPaths,
    device: Device,
    model: SentimentModel,
    optimizer: Optimizer,
    rng: ChaCha8Rng,
    /// Epochs finished.
    epoch: u64,
    /// Training batches run.
    global_step: u64,
    /// Loaded on the first `run`; tests may hand it in.
    data: Option<TrialData>,
}

impl SentimentJob {
    pub fn new(config: SentimentConfig, seed: u64, paths: DataPaths, device: Device) -> Result<Self, JobError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let model = SentimentModel::new(config.arch, config.dims, &mut rng, &device).map_err(failed)?;
        let optimizer = Optimizer::new(config.optimizer, config.lr);
        Ok(SentimentJob { config, seed, paths, device, model, optimizer, rng, epoch: 0, global_step: 0, data: None })
    }

    /// Uses `data` instead of loading IMDB (tests with their own rows).
    pub fn with_data(mut self, data: TrialData) -> Self {
        self.data = Some(data);
        self
    }

    fn data(&mut self) -> Result<&TrialData, JobError> {
        if self.data.is_none() {
            let max_features = u32::try_from(self.config.dims.max_features)
                .map_err(|e| JobError::InvalidParams(format!("max_features: {e}")))?;
            let tokens = imdb::load(&self.paths, max_features).map_err(|e| JobError::Failed(e.to_string()))?;
            self.data = Some(TrialData::new(&tokens, &self.config, self.seed));
        }
        self.data.as_ref().ok_or_else(|| JobError::Failed("IMDB data did not load".into()))
    }

    /// The input tensor and 0/1 targets of `rows` of a split.
    fn batch(&self, seqs: &Sequences, ids: &[u32], rows: &[usize]) -> candle_core::Result<(Tensor, Tensor)> {
        let n = rows.len();
        let input = if self.config.arch.multi_hot() {
            let (ids, width) = imdb::distinct_ids(seqs, rows);
            Tensor::from_vec(ids, (n, width), &self.device)?
        } else {
            let len = self.config.maxlen;
            let mut out = Vec::with_capacity(n * len);
            for &r in rows {
                out.extend_from_slice(&ids[r * len..(r + 1) * len]);
            }
            Tensor::from_vec(out, (n, len), &self.device)?
        };
        let targets: Vec<f32> = rows.iter().map(|&r| f32::from(seqs.labels[r])).collect();
        Ok((input, Tensor::from_vec(targets, n, &self.device)?))
    }

    /// Mean loss and accuracy over a whole split, without gradients.
    fn evaluate(&self, seqs: &Sequences, ids: &[u32], ctx: &JobContext<'_>) -> Result<(f64, f64), JobError> {
        let rows: Vec<usize> = (0..seqs.len()).collect();
        let (mut loss_sum, mut hits) = (0f64, 0u64);
        for chunk in rows.chunks(EVAL_BATCH) {
            ctx.check_cancel()?;
            let (input, targets) = self.batch(seqs, ids, chunk).map_err(failed)?;
            let logits = self.model.forward(&input, false).map_err(failed)?.detach();
            let loss = bce_with_logits(&logits, &targets).and_then(|l| l.to_scalar::<f32>()).map_err(failed)?;
            loss_sum += f64::from(loss) * chunk.len() as f64;
            hits += correct(&logits, &targets).map_err(failed)?;
        }
        let n = seqs.len().max(1) as f64;
        Ok((loss_sum / n, hits as f64 / n))
    }

    fn train_epoch(&mut self, ctx: &mut JobContext<'_>) -> Result<(f64, f64), JobError> {
        let data = self.data.take().ok_or_else(|| JobError::Failed("data not loaded".into()))?;
        let result = self.train_epoch_on(&data, ctx);
        self.data = Some(data);
        result
    }

    fn train_epoch_on(&mut self, data: &TrialData, ctx: &mut JobContext<'_>) -> Result<(f64, f64), JobError> {
        let mut order: Vec<usize> = (0..data.train.len()).collect();
        order.shuffle(&mut self.rng);
        let (mut loss_sum, mut hits) = (0f64, 0u64);
        for chunk in order.chunks(self.config.batch_size) {
            ctx.check_cancel()?;
            let (input, targets) = self.batch(&data.train, &data.train_ids, chunk).map_err(failed)?;
            let logits = self.model.forward(&input, true).map_err(failed)?;
            let loss = bce_with_logits(&logits, &targets).map_err(failed)?;
            let grads = loss.backward().map_err(failed)?;
            self.optimizer.step(&self.model.vars, &grads).map_err(failed)?;
            let value = loss.to_scalar::<f32>().map_err(failed)?;
            if !value.is_finite() {
                return Err(JobError::Failed(format!("training loss is {value} at step {}", self.global_step + 1)));
            }
            self.global_step += 1;
            loss_sum += f64::from(value) * chunk.len() as f64;
            hits += correct(&logits.detach(), &targets).map_err(failed)?;
            if self.global_step.is_multiple_of(self.config.log_every) {
                ctx.report(self.global_step, "batch_loss", f64::from(value));
            }
        }
        let n = data.train.len().max(1) as f64;
        Ok((loss_sum / n, hits as f64 / n))
    }
}

fn failed(e: candle_core::Error) -> JobError {
    JobError::Failed(format!("candle: {e}"))
}

impl Job for SentimentJob {
    fn run(&mut self, ctx: &mut JobContext<'_>) -> Result<(), JobError> {
        let (train, val, test) = self.data()?.sizes();
        if train == 0 || val == 0 || test == 0 {
            return Err(JobError::InvalidParams(format!(
                "{train} training, {val} validation and {test} test reviews: every split needs at least one"
            )));
        }
        while self.epoch < self.config.epochs {
            let (loss, acc) = self.train_epoch(ctx)?;
            let data = self.data.take().ok_or_else(|| JobError::Failed("data not loaded".into()))?;
            let evaluated = self.evaluate(&data.val, &data.val_ids, ctx);
            self.data = Some(data);
            let (val_loss, val_acc) = evaluated?;
            self.epoch += 1;
            let step = self.global_step;
            ctx.report(step, "loss", loss);
            ctx.report(step, "acc", acc);
            ctx.report(step, "val_loss", val_loss);
            ctx.report(step, "val_acc", val_acc);
            ctx.report(step, "epoch", self.epoch as f64);
            ctx.boundary(self.epoch, || self.checkpoint())?;
        }
        let data = self.data.take().ok_or_else(|| JobError::Failed("data not loaded".into()))?;
        let evaluated = self.evaluate(&data.test, &data.test_ids, ctx);
        self.data = Some(data);
        let (test_loss, test_acc) = evaluated?;
        ctx.report(self.global_step, "test_loss", test_loss);
        ctx.report(self.global_step, "test_acc", test_acc);
        Ok(())
    }

    fn checkpoint(&self) -> Result<Checkpoint, JobError> {
        let header = SentimentHeader {
            epoch: self.epoch,
            global_step: self.global_step,
            optimizer_steps: self.optimizer.steps(),
            rng: RngState::of(&self.rng),
        };
        let checkpoint = Checkpoint::new(KIND, self.global_step, &header)?;
        put_optimizer(put_vars(checkpoint, "w", &self.model.vars)?, "opt", &self.optimizer)
    }

    fn restore(&mut self, checkpoint: &Checkpoint) -> Result<(), JobError> {
        let header: SentimentHeader = checkpoint.header(KIND)?;
        restore_vars(checkpoint, "w", &self.model.vars)?;
        restore_optimizer(checkpoint, "opt", &mut self.optimizer, header.optimizer_steps, &self.device)?;
        self.rng = header.rng.to_rng()?;
        self.epoch = header.epoch;
        self.global_step = header.global_step;
        Ok(())
    }
}

/// Named weights of a job, for tests comparing two runs.
pub fn weights_of(job: &SentimentJob) -> BTreeMap<String, Vec<f32>> {
    job.model.weights().unwrap_or_default().into_iter().map(|(n, _, d)| (n, d)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::testing::{run_to_end, Recorded, SaveAt};

    fn paths() -> DataPaths {
        crate::data::test_paths()
    }

    fn config(arch: Arch, epochs: u64) -> SentimentConfig {
        SentimentConfig {
            arch,
            optimizer: OptimizerKind::RmsProp,
            lr: 1e-3,
            epochs,
            batch_size: 32,
            dims: ModelDims { max_features: 10_000, embed: 16, hidden: 16, dense_units: 16 },
            maxlen: 200,
            val_split: 0.2,
            train_samples: 600,
            test_samples: 400,
            log_every: 5,
        }
    }

    fn run(job: &mut SentimentJob) -> (Recorded, SaveAt) {
        run_to_end(job, SaveAt::all())
    }

    fn last(points: &Recorded, name: &str) -> f64 {
        points.points.iter().rev().find(|p| p.1 == name).map(|p| p.2).unwrap_or_else(|| panic!("no {name}"))
    }

    /// A few hundred reviews and a few epochs already beat chance on reviews the model never saw.
    #[test]
    fn short_training_beats_chance() {
        // 400 test reviews: chance is 0.5 with a standard deviation of 0.025. SimpleRNN needs more
        // reviews than the others before it generalises (on 800 it memorises them), so it gets
        // 5,000 short ones.
        let dims = ModelDims { max_features: 10_000, embed: 32, hidden: 32, dense_units: 16 };
        let small = |arch, epochs, lr| SentimentConfig { lr, train_samples: 800, maxlen: 150, ..config(arch, epochs) };
        let runs = [
            (small(Arch::Dense, 4, 1e-3), 0.7),
            (small(Arch::Lstm, 5, 5e-3), 0.6),
            (SentimentConfig { train_samples: 5000, maxlen: 50, batch_size: 64, dims, ..config(Arch::Rnn, 2) }, 0.6),
        ];
        for (config, floor) in runs {
            let (arch, epochs) = (config.arch, config.epochs);
            let mut job = SentimentJob::new(config, 7, paths(), Device::Cpu).unwrap();
            let (points, kept) = run(&mut job);
            let test_acc = last(&points, "test_acc");
            println!("{arch:?}: test_acc {test_acc:.3}, val_acc {:.3}", last(&points, "val_acc"));
            assert!(test_acc > floor, "{arch:?}: test accuracy {test_acc} on 400 held-out reviews");
            assert_eq!(kept.saved.len() as u64, epochs, "one checkpoint per epoch");
            let epochs_seen = points.values("epoch");
            assert_eq!(epochs_seen, (1..=epochs).map(|e| e as f64).collect::<Vec<_>>());
        }
    }

    /// Save after epoch 1, restore into a fresh job, continue: the same numbers as never stopping.
    #[test]
    fn resume_from_a_checkpoint_gives_the_same_numbers() {
        for arch in [Arch::Dense, Arch::Lstm] {
            let mut whole = SentimentJob::new(config(arch, 3), 11, paths(), Device::Cpu).unwrap();
            let (all_points, kept) = run(&mut whole);
            let checkpoint = kept.decoded(0);
            let mut resumed = SentimentJob::new(config(arch, 3), 11, paths(), Device::Cpu).unwrap();
            resumed.restore(&checkpoint).unwrap();
            let (later, _) = run(&mut resumed);
            let after = all_points.after(checkpoint.step);
            assert!(!after.is_empty());
            assert_eq!(later.points, after, "{arch:?}: metrics after the checkpoint");
            assert_eq!(weights_of(&resumed), weights_of(&whole), "{arch:?}: final weights");
        }
    }

    #[test]
    fn a_checkpoint_of_another_model_is_refused() {
        let dense = SentimentJob::new(config(Arch::Dense, 1), 1, paths(), Device::Cpu).unwrap();
        let mut lstm = SentimentJob::new(config(Arch::Lstm, 1), 1, paths(), Device::Cpu).unwrap();
        let err = lstm.restore(&dense.checkpoint().unwrap()).unwrap_err().to_string();
        assert!(err.contains("w.embedding") || err.contains("missing"), "{err}");
    }
}
