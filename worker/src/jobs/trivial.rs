//! The `quadratic` job: a known objective with no training, for benchmarks and tests.
//!
//! loss(step) = (x - 0.3)^2 + (y + 0.1)^2 + noise * N(0,1)-ish seeded jitter, reported `steps`
//! times, optionally sleeping `sleep_ms` per step so tests can catch a trial mid-run. It exercises
//! the whole gRPC path (lease, metrics, checkpoints, artifacts, completion) at negligible cost per
//! trial. With `artifact_every` it also stores a small text artifact `step-<n>.txt` every so many
//! steps, holding the step and the loss reported there.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sweep_shared::checkpoint::Checkpoint;
use sweep_shared::params::{JobSchema, ParamKind, ParamSpec, ParamValue, Params};

use super::{Job, JobContext, JobError, JobFactory};

pub const KIND: &str = "quadratic";

pub struct TrivialFactory {
    schema: JobSchema,
}

impl TrivialFactory {
    pub fn new() -> Self {
        let float = |name, default, help| ParamSpec {
            name,
            kind: ParamKind::Float { min: -1e6, max: 1e6 },
            default: Some(ParamValue::Float(default)),
            help,
        };
        let int = |name, min, max, default, help| ParamSpec {
            name,
            kind: ParamKind::Int { min, max },
            default: Some(ParamValue::Int(default)),
            help,
        };
        TrivialFactory {
            schema: JobSchema {
                kind: KIND,
                description: "a quadratic bowl with seeded noise; no training (benchmarks, tests)",
                params: vec![
                    float("x", 0.0, "first coordinate"),
                    float("y", 0.0, "second coordinate"),
                    float("noise", 0.0, "amplitude of the seeded jitter added to the loss"),
                    int("steps", 1, 1_000_000, 1, "how many loss points to report"),
                    int("sleep_ms", 0, 60_000, 0, "sleep per step, to keep a trial running"),
                    int("checkpoint_every", 1, 1_000_000, 10, "steps between checkpoints"),
                    int("artifact_every", 0, 1_000_000, 0, "steps between text artifacts (0: none)"),
                ],
            },
        }
    }
}

impl Default for TrivialFactory {
    fn default() -> Self {
        Self::new()
    }
}

impl JobFactory for TrivialFactory {
    fn schema(&self) -> &JobSchema {
        &self.schema
    }

    fn create(&self, params: &Params, seed: u64) -> Result<Box<dyn Job>, JobError> {
        Ok(Box::new(Quadratic {
            x: params.f64("x")?,
            y: params.f64("y")?,
            noise: params.f64("noise")?,
            steps: params.u64("steps")?,
            sleep: Duration::from_millis(params.u64("sleep_ms")?),
            artifact_every: params.u64("artifact_every")?,
            state: State { step: 0, rng: ChaCha8Rng::seed_from_u64(seed) },
        }))
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct State {
    /// Steps done so far.
    step: u64,
    rng: ChaCha8Rng,
}

struct Quadratic {
    x: f64,
    y: f64,
    noise: f64,
    steps: u64,
    sleep: Duration,
    artifact_every: u64,
    state: State,
}

impl Job for Quadratic {
    fn run(&mut self, ctx: &mut JobContext<'_>) -> Result<(), JobError> {
        let base = (self.x - 0.3).powi(2) + (self.y + 0.1).powi(2);
        while self.state.step < self.steps {
            ctx.check_cancel()?;
            if !self.sleep.is_zero() {
                std::thread::sleep(self.sleep);
            }
            let jitter: f64 = self.state.rng.random_range(-1.0..1.0);
            self.state.step += 1;
            let (step, loss) = (self.state.step, base + self.noise * jitter);
            ctx.report(step, "loss", loss);
            if self.artifact_every > 0 && step.is_multiple_of(self.artifact_every) {
                ctx.artifact(step, &format!("step-{step}.txt"), format!("step {step} loss {loss}\n").into_bytes());
            }
            ctx.boundary(step, || self.checkpoint())?;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<Checkpoint, JobError> {
        Ok(Checkpoint::new(KIND, self.state.step, &self.state)?)
    }

    fn restore(&mut self, checkpoint: &Checkpoint) -> Result<(), JobError> {
        self.state = checkpoint.header(KIND)?;
        Ok(())
    }
}
