//! The job interface and the registry of job kinds this worker can run.
//!
//! A job family lives in its own module (`rl`, `nlp`, `gan`); each job kind implements
//! [`JobFactory`] (schema + constructor) and [`Job`] (run, checkpoint, restore). The registry is
//! the only list of kinds: the worker advertises it at registration and the `sweep` binary passes
//! it to the coordinator as its [`JobCatalog`], so adding a job family touches no coordinator code.
//!
//! A job runs on its own thread (never on the async runtime). It reports metrics through
//! [`JobContext::report`], checks [`JobContext::is_cancelled`] at least once per step, and offers a
//! checkpoint at each natural boundary through [`JobContext::boundary`].

pub mod gan;
pub(crate) mod gemm;
pub mod nlp;
pub mod rl;
pub(crate) mod rng;
pub(crate) mod snapshot;
#[cfg(test)]
pub(crate) mod testing;
pub mod trivial;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sweep_shared::checkpoint::{Checkpoint, CheckpointError};

use crate::config::Device;
use crate::data::DataPaths;
use sweep_shared::params::{JobCatalog, JobSchema, ParamError, Params};

/// Why a job stopped without finishing.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The worker asked the job to stop (shutdown, lease lost, sweep cancelled).
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The job's own failure (NaN loss, diverged training): the trial fails without retry.
    #[error("{0}")]
    Failed(String),
}

/// Where a job's metric points go. The worker batches them for the coordinator.
pub trait MetricSink: Send {
    fn report(&mut self, step: u64, name: &str, value: f64);
    /// A file the job produced at `step` (a sample grid), stored with the trial under `name`.
    /// Sinks that keep no files (benchmarks, most tests) drop it.
    fn artifact(&mut self, _step: u64, _name: &str, _bytes: Vec<u8>) {}
}

/// Where a job's checkpoints go, and how often it wants them.
pub trait CheckpointSink: Send {
    /// Whether the boundary at `step` should be saved.
    fn wants(&self, step: u64) -> bool;
    fn save(&mut self, checkpoint: Checkpoint) -> Result<(), JobError>;
}

/// A checkpoint sink that keeps nothing: for runs that need no resume (benchmarks, tests).
pub struct NoCheckpoints;

impl CheckpointSink for NoCheckpoints {
    fn wants(&self, _step: u64) -> bool {
        false
    }
    fn save(&mut self, _checkpoint: Checkpoint) -> Result<(), JobError> {
        Ok(())
    }
}

/// A cancel signal shared between the worker (sets it) and a job thread (polls it).
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a running job can reach: its seed, a metric sink, a checkpoint sink and the cancel flag.
pub struct JobContext<'a> {
    pub seed: u64,
    pub metrics: &'a mut dyn MetricSink,
    pub checkpoints: &'a mut dyn CheckpointSink,
    pub cancel: CancelFlag,
}

impl JobContext<'_> {
    pub fn report(&mut self, step: u64, name: &str, value: f64) {
        self.metrics.report(step, name, value);
    }

    /// Stores a file the job produced at `step` with the trial (see [`MetricSink::artifact`]).
    pub fn artifact(&mut self, step: u64, name: &str, bytes: Vec<u8>) {
        self.metrics.artifact(step, name, bytes);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Returns `Err(Cancelled)` once the worker asked the job to stop.
    pub fn check_cancel(&self) -> Result<(), JobError> {
        if self.cancel.is_cancelled() {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// A checkpoint boundary at `step`: builds and saves a checkpoint if the sink wants one here.
    pub fn boundary(&mut self, step: u64, save: impl FnOnce() -> Result<Checkpoint, JobError>) -> Result<(), JobError> {
        if self.checkpoints.wants(step) {
            let checkpoint = save()?;
            self.checkpoints.save(checkpoint)?;
        }
        Ok(())
    }
}

/// One trial's job, built from its params and seed.
pub trait Job: Send {
    /// Runs from the current state (fresh, or restored) to the end, or until cancelled.
    fn run(&mut self, ctx: &mut JobContext<'_>) -> Result<(), JobError>;
    /// The state at the current boundary.
    fn checkpoint(&self) -> Result<Checkpoint, JobError>;
    /// Replaces the state with a checkpoint's, before `run`.
    fn restore(&mut self, checkpoint: &Checkpoint) -> Result<(), JobError>;
}

/// Checks every parameter of `schema` in `params` against its kind (range, choices); the error
/// names the parameter.
pub(crate) fn admit_params(schema: &JobSchema, params: &Params) -> Result<(), JobError> {
    for spec in &schema.params {
        spec.kind
            .admit(params.get(spec.name)?.clone())
            .map_err(|reason| JobError::InvalidParams(format!("{}: {reason}", spec.name)))?;
    }
    Ok(())
}

/// An integer parameter as a size.
pub(crate) fn size_param(params: &Params, name: &str) -> Result<usize, JobError> {
    usize::try_from(params.u64(name)?).map_err(|e| JobError::InvalidParams(format!("{name}: {e}")))
}

/// The factory of a job kind that needs the worker's [`JobEnv`] (data paths, device): its schema,
/// and a function building one trial's job from its params, seed and the env.
pub struct EnvFactory {
    schema: JobSchema,
    env: JobEnv,
    build: BuildJob,
}

/// Builds one trial's job from its params, seed and the worker's env.
pub type BuildJob = fn(&Params, u64, &JobEnv) -> Result<Box<dyn Job>, JobError>;

impl EnvFactory {
    pub fn new(schema: JobSchema, env: JobEnv, build: BuildJob) -> Self {
        EnvFactory { schema, env, build }
    }
}

impl JobFactory for EnvFactory {
    fn schema(&self) -> &JobSchema {
        &self.schema
    }

    fn create(&self, params: &Params, seed: u64) -> Result<Box<dyn Job>, JobError> {
        (self.build)(params, seed, &self.env)
    }
}

/// A job kind: its parameter schema and a constructor.
pub trait JobFactory: Send + Sync {
    fn schema(&self) -> &JobSchema;
    /// Builds the job for one trial; `params` holds every parameter of the schema.
    fn create(&self, params: &Params, seed: u64) -> Result<Box<dyn Job>, JobError>;
}

/// What jobs get from the worker that runs them: where data lives and which device to use.
#[derive(Debug, Clone)]
pub struct JobEnv {
    pub paths: DataPaths,
    pub device: Device,
}

impl JobEnv {
    /// Paths from the environment (see [`DataPaths::from_env`]) on the CPU.
    pub fn from_env() -> Self {
        JobEnv { paths: DataPaths::from_env(), device: Device::Cpu }
    }

    /// The candle device for tensors.
    pub fn candle_device(&self) -> Result<candle_core::Device, JobError> {
        match self.device {
            Device::Cpu => Ok(candle_core::Device::Cpu),
            Device::Cuda(i) => {
                candle_core::Device::new_cuda(i).map_err(|e| JobError::Failed(format!("cuda:{i} is not usable: {e}")))
            }
        }
    }
}

/// Every job kind this build of the worker runs.
pub struct JobRegistry {
    factories: Vec<Box<dyn JobFactory>>,
}

impl JobRegistry {
    /// The registry with all built-in jobs, data paths from the environment, on the CPU.
    pub fn builtin() -> Self {
        Self::with_env(JobEnv::from_env())
    }

    /// The registry with all built-in jobs, reading data and placing tensors as `env` says.
    pub fn with_env(env: JobEnv) -> Self {
        JobRegistry {
            factories: vec![
                Box::new(rl::qtable::QTableFactory::new()),
                Box::new(rl::dqn::factory(env.clone())),
                Box::new(nlp::sentiment::factory(env.clone())),
                Box::new(nlp::bert_sentiment::factory(env.clone())),
                Box::new(gan::dcgan::factory(env.clone())),
                Box::new(trivial::TrivialFactory::new()),
            ],
        }
    }

    pub fn factory(&self, kind: &str) -> Option<&dyn JobFactory> {
        self.factories.iter().find(|f| f.schema().kind == kind).map(|f| f.as_ref())
    }
}

impl JobCatalog for JobRegistry {
    fn schema(&self, kind: &str) -> Option<&JobSchema> {
        self.factory(kind).map(|f| f.schema())
    }

    fn kinds(&self) -> Vec<&'static str> {
        self.factories.iter().map(|f| f.schema().kind).collect()
    }
}
