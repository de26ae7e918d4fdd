//! What the jobs' tests share: sinks that record what a job reports and keep the checkpoints it
//! offers, and a way to run a job to its end with them.

use sweep_shared::checkpoint::Checkpoint;
use sweep_shared::params::{ParamValue, Params};

use super::{CancelFlag, CheckpointSink, Job, JobContext, JobError, MetricSink};

/// Every metric point and artifact a job reported, in order.
#[derive(Default)]
pub struct Recorded {
    pub points: Vec<(u64, String, f64)>,
    pub artifacts: Vec<(u64, String, Vec<u8>)>,
}

impl Recorded {
    /// The values of one metric, in report order.
    pub fn values(&self, name: &str) -> Vec<f64> {
        self.points.iter().filter(|p| p.1 == name).map(|p| p.2).collect()
    }

    /// The points after `step`.
    pub fn after(&self, step: u64) -> Vec<(u64, String, f64)> {
        self.points.iter().filter(|p| p.0 > step).cloned().collect()
    }
}

impl MetricSink for Recorded {
    fn report(&mut self, step: u64, name: &str, value: f64) {
        self.points.push((step, name.to_string(), value));
    }

    fn artifact(&mut self, step: u64, name: &str, bytes: Vec<u8>) {
        self.artifacts.push((step, name.to_string(), bytes));
    }
}

/// Keeps the checkpoints of chosen boundaries (all of them with [`SaveAt::all`]), encoded as the
/// worker would upload them.
#[derive(Default)]
pub struct SaveAt {
    at: Option<Vec<u64>>,
    pub saved: Vec<Vec<u8>>,
}

impl SaveAt {
    pub fn boundaries(at: &[u64]) -> Self {
        SaveAt { at: Some(at.to_vec()), saved: Vec::new() }
    }

    pub fn all() -> Self {
        SaveAt { at: None, saved: Vec::new() }
    }

    /// The `i`-th kept checkpoint, decoded as the worker would on a resume.
    pub fn decoded(&self, i: usize) -> Checkpoint {
        Checkpoint::decode(&self.saved[i]).expect("a kept checkpoint decodes")
    }
}

impl CheckpointSink for SaveAt {
    fn wants(&self, step: u64) -> bool {
        self.at.as_ref().is_none_or(|at| at.contains(&step))
    }

    fn save(&mut self, checkpoint: Checkpoint) -> Result<(), JobError> {
        self.saved.push(checkpoint.encode()?);
        Ok(())
    }
}

/// Runs `job` to its end, recording into fresh sinks; panics if it fails.
pub fn run_to_end(job: &mut dyn Job, checkpoints: SaveAt) -> (Recorded, SaveAt) {
    let (mut recorded, mut kept) = (Recorded::default(), checkpoints);
    let mut ctx = JobContext { seed: 0, metrics: &mut recorded, checkpoints: &mut kept, cancel: CancelFlag::default() };
    job.run(&mut ctx).expect("the job runs to its end");
    (recorded, kept)
}

/// A job's parameters: every default of `schema`, with `overrides` on top.
pub fn params_with(schema: &sweep_shared::params::JobSchema, overrides: &[(&str, ParamValue)]) -> Params {
    let mut params = Params(
        schema
            .params
            .iter()
            .map(|spec| (spec.name.to_string(), spec.default.clone().expect("every test job param has a default")))
            .collect(),
    );
    for (name, value) in overrides {
        params.0.insert(name.to_string(), value.clone());
    }
    params
}

/// The (step, value) points of one metric.
pub fn metric(points: &[(u64, String, f64)], name: &str) -> Vec<(u64, f64)> {
    points.iter().filter(|(_, n, _)| n == name).map(|(step, _, value)| (*step, *value)).collect()
}
