//! `cartpole-qtable`: the lab's RL0 job, tabular Q-learning on CartPole.
//!
//! Architecture: each of the 4 observations is cut into `discrete_steps` equal bins over
//! [`OBSERVATION_BOUNDS`] (values outside are clamped into the end bins), giving
//! `discrete_steps^4` states; the Q table holds one value per state and action, starts at zero, and
//! is updated after every step with Watkins' Q-learning rule (Sutton and Barto, "Reinforcement
//! Learning: An Introduction", 2nd ed., section 6.5):
//!
//! `Q[s, a] += lr * (r + gamma * max_a' Q[s', a'] * (1 - terminated) - Q[s, a])`
//!
//! A truncated episode (time limit) still bootstraps from `s'`: only termination ends the return.
//! Actions are epsilon-greedy with epsilon from the `epsilon` schedule; ties between equal Q values
//! go to a uniformly random action (`tie_break: random`) or always to action 0 (`left`, the lab's
//! `useRandom=False`).
//!
//! Shapes: observation `[4]` -> state index in `[0, discrete_steps^4)`; Q table
//! `[discrete_steps, discrete_steps, discrete_steps, discrete_steps, 2]`, stored row-major with the
//! action last, which is also the checkpoint tensor `q`.
//!
//! Metrics (step = episode number, from 1): `reward` and `epsilon` every episode; every
//! `report_every` episodes `mear` (mean accumulated reward of those episodes) and `rgr` (the share
//! of them with reward >= `good_reward`).
//!
//! Checkpoints: the job offers one after every episode; the worker's checkpoint sink keeps those at
//! multiples of the trial's `checkpoint_every` param (the job itself never reads it). A checkpoint
//! holds the Q table, the RNG position, the epsilon schedule's position and the open metric window,
//! so a restored job continues with exactly the numbers an uninterrupted one would produce.
//!
//! Everything random (reset states, exploration, tie breaks) draws from one ChaCha8 RNG seeded with
//! the trial seed given to [`JobFactory::create`].

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sweep_shared::checkpoint::{Checkpoint, TensorBlob, TensorDtype};
use sweep_shared::params::{EpsilonSchedule, JobSchema, ParamKind, ParamSpec, ParamValue, Params};

use super::cartpole::{CartPole, CartPoleVersion};
use super::epsilon::{EpsilonRunner, EpsilonState};
use crate::jobs::rng::RngState;
use crate::jobs::{admit_params, size_param, Job, JobContext, JobError, JobFactory};

/// The job kind, as specs name it.
pub const KIND: &str = "cartpole-qtable";

/// Binning range of each observation, in the order x, x_dot, theta, theta_dot: the track, the
/// velocities CartPole reaches before failing, and just past the 12-degree termination angle.
pub const OBSERVATION_BOUNDS: [(f64, f64); 4] = [(-2.4, 2.4), (-3.0, 3.0), (-0.21, 0.21), (-3.5, 3.5)];

const ACTIONS: usize = 2;
const TIE_BREAK_NAMES: &[&str] = &["random", "left"];

/// The job's parameters: every name a spec may set for `cartpole-qtable`.
pub fn schema() -> JobSchema {
    JobSchema {
        kind: KIND,
        description: "Tabular Q-learning on CartPole (the lab's RL0): observations binned into discrete_steps^4 states",
        params: vec![
            CartPoleVersion::param(),
            ParamSpec {
                name: "episodes",
                kind: ParamKind::Int { min: 1, max: 10_000_000 },
                default: Some(ParamValue::Int(10_000)),
                help: "episodes to train",
            },
            ParamSpec {
                name: "discrete_steps",
                kind: ParamKind::Int { min: 2, max: 50 },
                default: Some(ParamValue::Int(10)),
                help: "bins per observation; the table has discrete_steps^4 states",
            },
            ParamSpec {
                name: "lr",
                kind: ParamKind::Float { min: 1e-6, max: 1.0 },
                default: Some(ParamValue::Float(0.01)),
                help: "learning rate of the Q-learning update",
            },
            ParamSpec {
                name: "gamma",
                kind: ParamKind::Float { min: 0.0, max: 1.0 },
                default: Some(ParamValue::Float(0.99)),
                help: "discount factor",
            },
            ParamSpec {
                name: "epsilon",
                kind: ParamKind::Schedule,
                default: Some(ParamValue::Schedule(EpsilonSchedule::LAB_ADAPTIVE)),
                help: "exploration rate per episode",
            },
            ParamSpec {
                name: "tie_break",
                kind: ParamKind::Choice(TIE_BREAK_NAMES),
                default: Some(ParamValue::Str("random".into())),
                help: "action on equal Q values: random, or left (always action 0)",
            },
            ParamSpec {
                name: "report_every",
                kind: ParamKind::Int { min: 1, max: 1_000_000 },
                default: Some(ParamValue::Int(1000)),
                help: "episodes per mear/rgr window",
            },
            ParamSpec {
                name: "good_reward",
                kind: ParamKind::Float { min: 0.0, max: 500.0 },
                default: Some(ParamValue::Float(180.0)),
                help: "an episode with at least this reward counts as good in rgr",
            },
            ParamSpec {
                name: "checkpoint_every",
                kind: ParamKind::Int { min: 1, max: 10_000_000 },
                default: Some(ParamValue::Int(1000)),
                help: "episodes between checkpoints",
            },
        ],
    }
}

/// How greedy action selection breaks a tie between equal Q values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TieBreak {
    /// Uniformly among the maximal actions.
    Random,
    /// Always action 0 (push left).
    Left,
}

/// The typed parameters of one trial.
#[derive(Debug, Clone, PartialEq)]
pub struct QTableConfig {
    pub env: CartPoleVersion,
    pub episodes: u64,
    pub discrete_steps: usize,
    pub lr: f64,
    pub gamma: f64,
    pub epsilon: EpsilonSchedule,
    pub tie_break: TieBreak,
    pub report_every: u64,
    pub good_reward: f64,
    pub checkpoint_every: u64,
}

impl QTableConfig {
    /// Reads the params, checking each against [`schema`] again (the coordinator already did).
    pub fn from_params(params: &Params) -> Result<Self, JobError> {
        admit_params(&schema(), params)?;
        let env = params.str("env")?;
        let env =
            CartPoleVersion::from_name(env).ok_or_else(|| JobError::InvalidParams(format!("env: unknown '{env}'")))?;
        let tie_break = match params.str("tie_break")? {
            "left" => TieBreak::Left,
            _ => TieBreak::Random,
        };
        let discrete_steps = size_param(params, "discrete_steps")?;
        Ok(QTableConfig {
            env,
            episodes: params.u64("episodes")?,
            discrete_steps,
            lr: params.f64("lr")?,
            gamma: params.f64("gamma")?,
            epsilon: params.schedule("epsilon")?.clone(),
            tie_break,
            report_every: params.u64("report_every")?,
            good_reward: params.f64("good_reward")?,
            checkpoint_every: params.u64("checkpoint_every")?,
        })
    }

    /// Shape of the Q table: four observation bins, then the action.
    pub fn q_shape(&self) -> Vec<usize> {
        let steps = self.discrete_steps;
        vec![steps, steps, steps, steps, ACTIONS]
    }
}

/// Builds `cartpole-qtable` jobs.
pub struct QTableFactory {
    schema: JobSchema,
}

impl QTableFactory {
    pub fn new() -> Self {
        QTableFactory { schema: schema() }
    }
}

impl Default for QTableFactory {
    fn default() -> Self {
        Self::new()
    }
}

impl JobFactory for QTableFactory {
    fn schema(&self) -> &JobSchema {
        &self.schema
    }

    fn create(&self, params: &Params, seed: u64) -> Result<Box<dyn Job>, JobError> {
        Ok(Box::new(QTableJob::new(QTableConfig::from_params(params)?, seed)))
    }
}

/// One trial of tabular Q-learning, between episodes.
///
/// Each episode:
/// 1. Reset the environment to a random start state and bin the observation.
/// 2. Until the episode terminates or is truncated: pick an action epsilon-greedily, step, and
///    apply the Q-learning update to the state-action pair just left.
/// 3. Advance the epsilon schedule with the episode's reward, report the metrics, and offer a
///    checkpoint.
pub struct QTableJob {
    config: QTableConfig,
    /// Reset at every episode start, so it carries nothing across a checkpoint.
    env: CartPole,
    /// `Q[state * 2 + action]`, see the module doc for the shape.
    q: Vec<f64>,
    /// The only source of randomness, so a seed fixes the whole run.
    rng: ChaCha8Rng,
    epsilon: EpsilonRunner,
    /// Episodes finished; the next one is `episodes_done + 1`.
    episodes_done: u64,
    /// Rewards of the current `report_every` window, for `mear` and `rgr`.
    window_rewards: Vec<f64>,
}

/// Everything besides the tensors that a checkpoint needs to resume exactly.
#[derive(Debug, Serialize, Deserialize)]
struct QTableHeader {
    /// Episodes finished.
    episode: u64,
    rng: RngState,
    epsilon: EpsilonState,
}

impl QTableJob {
    /// A fresh job: zero Q table, RNG seeded with `seed`.
    pub fn new(config: QTableConfig, seed: u64) -> Self {
        let states = config.discrete_steps.pow(4);
        QTableJob {
            env: CartPole::new(config.env),
            q: vec![0.0; states * ACTIONS],
            rng: ChaCha8Rng::seed_from_u64(seed),
            epsilon: EpsilonRunner::new(&config.epsilon),
            episodes_done: 0,
            window_rewards: Vec::with_capacity(config.report_every.min(1 << 16) as usize),
            config,
        }
    }

    pub fn config(&self) -> &QTableConfig {
        &self.config
    }

    pub fn episodes_done(&self) -> u64 {
        self.episodes_done
    }

    /// Plays one episode with exploration rate `epsilon`, learning as it goes; returns its reward.
    fn run_episode(&mut self, epsilon: f64) -> f64 {
        let QTableConfig { discrete_steps, lr, gamma, tie_break, .. } = self.config;
        let mut state = state_index(&self.env.reset(&mut self.rng), discrete_steps);
        let mut accumulated_reward = 0.0;
        loop {
            let action = if self.rng.random::<f64>() < epsilon {
                self.rng.random_range(0..ACTIONS)
            } else {
                self.greedy_action(state, tie_break)
            };
            let step = self.env.step(action);
            accumulated_reward += step.reward;
            let next_state = state_index(&step.obs, discrete_steps);
            let bootstrap = if step.terminated { 0.0 } else { gamma * self.max_q(next_state) };
            let q = &mut self.q[state * ACTIONS + action];
            *q += lr * (step.reward + bootstrap - *q);
            if step.terminated || step.truncated {
                return accumulated_reward;
            }
            state = next_state;
        }
    }

    fn greedy_action(&mut self, state: usize, tie_break: TieBreak) -> usize {
        let (left, right) = (self.q[state * ACTIONS], self.q[state * ACTIONS + 1]);
        if left > right {
            0
        } else if right > left {
            1
        } else {
            match tie_break {
                TieBreak::Random => usize::from(self.rng.random::<bool>()),
                TieBreak::Left => 0,
            }
        }
    }

    fn max_q(&self, state: usize) -> f64 {
        self.q[state * ACTIONS].max(self.q[state * ACTIONS + 1])
    }

    /// Reports `mear` and `rgr` for the window that ends at `episode`, then empties it.
    fn close_window(&mut self, ctx: &mut JobContext<'_>, episode: u64) {
        let window = self.window_rewards.len() as f64;
        let mear = self.window_rewards.iter().sum::<f64>() / window;
        let good = self.window_rewards.iter().filter(|&&reward| reward >= self.config.good_reward).count();
        ctx.report(episode, "mear", mear);
        ctx.report(episode, "rgr", good as f64 / window);
        self.window_rewards.clear();
    }
}

impl Job for QTableJob {
    fn run(&mut self, ctx: &mut JobContext<'_>) -> Result<(), JobError> {
        while self.episodes_done < self.config.episodes {
            ctx.check_cancel()?;
            let episode = self.episodes_done + 1;
            let epsilon = self.epsilon.value();
            let reward = self.run_episode(epsilon);
            self.epsilon.end_episode(reward);
            self.episodes_done = episode;
            self.window_rewards.push(reward);

            ctx.report(episode, "reward", reward);
            ctx.report(episode, "epsilon", epsilon);
            if self.window_rewards.len() as u64 == self.config.report_every {
                self.close_window(ctx, episode);
            }
            ctx.boundary(episode, || self.checkpoint())?;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<Checkpoint, JobError> {
        let header = QTableHeader {
            episode: self.episodes_done,
            rng: RngState::of(&self.rng),
            epsilon: self.epsilon.state().clone(),
        };
        let window = TensorBlob::from_f64(vec![self.window_rewards.len()], &self.window_rewards);
        Ok(Checkpoint::new(KIND, self.episodes_done, &header)?
            .with_tensor("q", TensorBlob::from_f64(self.config.q_shape(), &self.q))
            .with_tensor("window_rewards", window))
    }

    fn restore(&mut self, checkpoint: &Checkpoint) -> Result<(), JobError> {
        let header: QTableHeader = checkpoint.header(KIND)?;
        if header.episode != checkpoint.step || header.episode > self.config.episodes {
            return Err(JobError::InvalidParams(format!(
                "checkpoint at episode {} (step {}) does not fit a run of {} episodes",
                header.episode, checkpoint.step, self.config.episodes
            )));
        }
        let q = f64_tensor(checkpoint, "q", &self.config.q_shape())?;
        let window_rewards = checkpoint
            .tensor("window_rewards")?
            .to_f64()
            .ok_or_else(|| JobError::InvalidParams("checkpoint tensor 'window_rewards' is not f64".into()))?;
        if window_rewards.len() as u64 >= self.config.report_every {
            return Err(JobError::InvalidParams(format!(
                "checkpoint holds a window of {} rewards, report_every is {}",
                window_rewards.len(),
                self.config.report_every
            )));
        }
        self.rng = header.rng.to_rng()?;
        self.q = q;
        self.epsilon = EpsilonRunner::with_state(&self.config.epsilon, header.epsilon);
        self.episodes_done = header.episode;
        self.window_rewards = window_rewards;
        Ok(())
    }
}

/// The values of an F64 tensor of exactly `shape`.
fn f64_tensor(checkpoint: &Checkpoint, name: &str, shape: &[usize]) -> Result<Vec<f64>, JobError> {
    let blob = checkpoint.tensor(name)?;
    if blob.dtype != TensorDtype::F64 || blob.shape != shape {
        return Err(JobError::InvalidParams(format!(
            "checkpoint tensor '{name}' is {:?} {:?}, these params need F64 {shape:?}",
            blob.dtype, blob.shape
        )));
    }
    blob.to_f64().ok_or_else(|| JobError::InvalidParams(format!("checkpoint tensor '{name}' is not f64")))
}

/// The bin of `value` among `steps` equal bins over `[low, high]`; outside values go to the end bins.
fn bin(value: f64, (low, high): (f64, f64), steps: usize) -> usize {
    let scaled = (value - low) / (high - low) * steps as f64;
    // `as` truncates toward zero and saturates (NaN -> 0); negatives were clamped to 0 first.
    (scaled.max(0.0) as usize).min(steps - 1)
}

/// The table row of an observation: its four bins as digits in base `steps`.
fn state_index(obs: &[f64; 4], steps: usize) -> usize {
    obs.iter().zip(OBSERVATION_BOUNDS).fold(0, |index, (&value, bounds)| index * steps + bin(value, bounds, steps))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::jobs::testing::{metric, params_with, Recorded, SaveAt};
    use crate::jobs::{CancelFlag, CheckpointSink, NoCheckpoints};

    fn params(overrides: &[(&str, ParamValue)]) -> Params {
        params_with(&schema(), overrides)
    }

    fn run_with(
        job: &mut dyn Job,
        seed: u64,
        checkpoints: &mut dyn CheckpointSink,
    ) -> Result<Vec<(u64, String, f64)>, JobError> {
        let mut metrics = Recorded::default();
        let mut ctx = JobContext { seed, metrics: &mut metrics, checkpoints, cancel: CancelFlag::default() };
        job.run(&mut ctx)?;
        Ok(metrics.points)
    }

    fn run(params: &Params, seed: u64) -> Vec<(u64, String, f64)> {
        let mut job = QTableFactory::new().create(params, seed).unwrap();
        run_with(job.as_mut(), seed, &mut NoCheckpoints).unwrap()
    }

    fn short_run() -> Params {
        params(&[("episodes", ParamValue::Int(300)), ("report_every", ParamValue::Int(100))])
    }

    /// A configuration that learns clearly within 10,000 episodes.
    fn known_good() -> Params {
        params(&[
            ("lr", ParamValue::Float(0.1)),
            ("gamma", ParamValue::Float(0.99)),
            ("epsilon", ParamValue::Schedule(EpsilonSchedule::Exponential { start: 1.0, decay: 0.999, min: 0.01 })),
        ])
    }

    #[test]
    fn defaults_are_admitted_by_the_schema() {
        let schema = schema();
        for spec in &schema.params {
            let default = spec.default.clone().unwrap();
            assert_eq!(spec.kind.admit(default.clone()), Ok(default), "{}", spec.name);
        }
        assert!(QTableConfig::from_params(&params_with(&schema, &[])).is_ok());
    }

    #[test]
    fn schema_rejects_bad_values() {
        let schema = schema();
        let bad = [
            ("env", ParamValue::Str("CartPole-v2".into())),
            ("episodes", ParamValue::Int(0)),
            ("discrete_steps", ParamValue::Int(1)),
            ("discrete_steps", ParamValue::Int(51)),
            ("discrete_steps", ParamValue::Float(10.0)),
            ("lr", ParamValue::Float(0.0)),
            ("lr", ParamValue::Float(f64::NAN)),
            ("gamma", ParamValue::Float(1.5)),
            ("epsilon", ParamValue::Float(0.1)),
            ("epsilon", ParamValue::Schedule(EpsilonSchedule::Exponential { start: 0.1, decay: 0.9, min: 0.5 })),
            ("tie_break", ParamValue::Str("right".into())),
            ("report_every", ParamValue::Int(0)),
            ("good_reward", ParamValue::Str("high".into())),
            ("checkpoint_every", ParamValue::Int(-1)),
        ];
        for (name, value) in bad {
            let spec = schema.param(name).unwrap();
            assert!(spec.kind.admit(value.clone()).is_err(), "{name} = {value} was admitted");
            let err = QTableConfig::from_params(&params(&[(name, value.clone())])).unwrap_err();
            assert!(err.to_string().contains(name), "{name} = {value}: {err}");
        }
        let mut missing = params_with(&schema, &[]);
        missing.0.remove("lr");
        assert!(QTableConfig::from_params(&missing).unwrap_err().to_string().contains("lr"));
    }

    #[test]
    fn bins_cover_bounds_and_clamp_outside() {
        assert_eq!(bin(-2.4, OBSERVATION_BOUNDS[0], 10), 0);
        assert_eq!(bin(-100.0, OBSERVATION_BOUNDS[0], 10), 0);
        assert_eq!(bin(-0.01, OBSERVATION_BOUNDS[0], 10), 4);
        assert_eq!(bin(0.01, OBSERVATION_BOUNDS[0], 10), 5);
        assert_eq!(bin(2.4, OBSERVATION_BOUNDS[0], 10), 9);
        assert_eq!(bin(100.0, OBSERVATION_BOUNDS[0], 10), 9);
        assert_eq!(bin(f64::NAN, OBSERVATION_BOUNDS[0], 10), 0);
        assert_eq!(state_index(&[-9.0, -9.0, -9.0, -9.0], 10), 0);
        assert_eq!(state_index(&[9.0, 9.0, 9.0, 9.0], 10), 9999);
        assert_eq!(state_index(&[9.0, -9.0, 0.01, -9.0], 10), 9050);
    }

    #[test]
    fn same_seed_gives_identical_metrics() {
        let first = run(&short_run(), 42);
        let second = run(&short_run(), 42);
        assert_eq!(first.len(), 300 * 2 + 3 * 2);
        let bits = |points: &[(u64, String, f64)]| -> Vec<(u64, String, u64)> {
            points.iter().map(|(s, n, v)| (*s, n.clone(), v.to_bits())).collect()
        };
        assert_eq!(bits(&first), bits(&second));
    }

    #[test]
    fn different_seeds_give_different_rewards() {
        let first = metric(&run(&short_run(), 1), "reward");
        let second = metric(&run(&short_run(), 2), "reward");
        assert_ne!(first, second);
    }

    #[test]
    fn metrics_follow_the_reporting_contract() {
        let points = run(&short_run(), 3);
        let rewards = metric(&points, "reward");
        assert_eq!(rewards.iter().map(|(step, _)| *step).collect::<Vec<_>>(), (1..=300).collect::<Vec<_>>());
        let epsilons = metric(&points, "epsilon");
        assert_eq!(epsilons.len(), 300);
        assert!(epsilons.iter().all(|(_, e)| (0.02..=0.15).contains(e)), "lab adaptive epsilon stays in bounds");
        let mear = metric(&points, "mear");
        assert_eq!(mear.iter().map(|(step, _)| *step).collect::<Vec<_>>(), vec![100, 200, 300]);
        let expected_first: f64 = rewards[..100].iter().map(|(_, r)| r).sum::<f64>() / 100.0;
        assert_eq!(mear[0].1, expected_first);
        let rgr = metric(&points, "rgr");
        let good_first = rewards[..100].iter().filter(|(_, r)| *r >= 180.0).count() as f64 / 100.0;
        assert_eq!(rgr[0], (100, good_first));
    }

    #[test]
    fn left_tie_break_pushes_left_while_q_ties() {
        let p = params(&[
            ("episodes", ParamValue::Int(1)),
            ("tie_break", ParamValue::Str("left".into())),
            ("epsilon", ParamValue::Schedule(EpsilonSchedule::Constant { value: 0.0 })),
        ]);
        let reward = metric(&run(&p, 9), "reward")[0].1;
        // Pushing left raises Q[s, left] above 0 and leaves Q[s, right] at 0: every step goes left.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut env = CartPole::new(CartPoleVersion::V1);
        env.reset(&mut rng);
        let mut always_left = 1.0;
        while !env.step(0).terminated {
            always_left += 1.0;
        }
        assert_eq!(reward, always_left);
    }

    #[test]
    fn cancelled_job_stops_before_the_next_episode() {
        let mut job = QTableFactory::new().create(&short_run(), 5).unwrap();
        let mut metrics = Recorded::default();
        let cancel = CancelFlag::default();
        cancel.cancel();
        let mut ctx = JobContext { seed: 5, metrics: &mut metrics, checkpoints: &mut NoCheckpoints, cancel };
        assert!(matches!(job.run(&mut ctx), Err(JobError::Cancelled)));
        assert!(metrics.points.is_empty());
    }

    #[test]
    fn restored_run_repeats_the_uninterrupted_one() {
        // report_every is 100: 200 closes a window (an empty one is saved), 250 is inside one.
        let p = params(&[
            ("episodes", ParamValue::Int(600)),
            ("report_every", ParamValue::Int(100)),
            ("lr", ParamValue::Float(0.1)),
            (
                "epsilon",
                ParamValue::Schedule(EpsilonSchedule::Adaptive {
                    start: 0.1,
                    min: 0.02,
                    max: 0.15,
                    factor: 0.9,
                    window: 30,
                    collapse: 0.9,
                }),
            ),
        ]);
        let factory = QTableFactory::new();
        let mut uninterrupted = factory.create(&p, 11).unwrap();
        let mut sink = SaveAt::boundaries(&[200, 250]);
        let full = run_with(uninterrupted.as_mut(), 11, &mut sink).unwrap();
        assert_eq!(sink.saved.len(), 2);
        let epsilons: Vec<f64> = metric(&full, "epsilon").iter().map(|(_, e)| *e).collect();
        assert!(epsilons.windows(2).any(|w| w[0] != w[1]), "the adaptive schedule moved, so its state is exercised");

        let bits = |points: &[(u64, String, f64)]| -> Vec<(u64, String, u64)> {
            points.iter().map(|(s, n, v)| (*s, n.clone(), v.to_bits())).collect()
        };
        for (bytes, episode) in sink.saved.iter().zip([200, 250]) {
            let checkpoint = Checkpoint::decode(bytes).unwrap();
            assert_eq!(checkpoint.step, episode);
            let mut resumed = factory.create(&p, 11).unwrap();
            resumed.restore(&checkpoint).unwrap();
            let rest = run_with(resumed.as_mut(), 11, &mut NoCheckpoints).unwrap();
            let after: Vec<_> = full.iter().filter(|(step, _, _)| *step > episode).cloned().collect();
            assert_eq!(rest.len(), after.len(), "resumed from {episode}");
            assert_eq!(bits(&rest), bits(&after), "resumed from {episode}");
        }
    }

    #[test]
    fn restore_refuses_a_checkpoint_of_another_shape() {
        let small = params(&[("episodes", ParamValue::Int(5)), ("discrete_steps", ParamValue::Int(6))]);
        let mut job = QTableFactory::new().create(&small, 1).unwrap();
        run_with(job.as_mut(), 1, &mut NoCheckpoints).unwrap();
        let checkpoint = job.checkpoint().unwrap();

        let mut other = QTableFactory::new().create(&params(&[("episodes", ParamValue::Int(5))]), 1).unwrap();
        let err = other.restore(&checkpoint).unwrap_err();
        assert!(err.to_string().contains("'q'"), "{err}");

        let mut wrong_kind = checkpoint.clone();
        wrong_kind.job = "dqn".into();
        let mut same = QTableFactory::new().create(&small, 1).unwrap();
        assert!(matches!(same.restore(&wrong_kind), Err(JobError::Checkpoint(_))));
    }

    #[test]
    fn known_good_config_learns() {
        let started = Instant::now();
        let points = run(&known_good(), 2024);
        let mear = metric(&points, "mear");
        assert_eq!(mear.len(), 10);
        let (first, last) = (mear[0].1, mear[9].1);
        eprintln!("known-good mear by window: {mear:?}; took {:?}", started.elapsed());
        assert!(last >= 2.0 * first, "mear of the last 1,000 episodes {last} vs the first {first}");
        assert!(last >= 100.0, "mear of the last 1,000 episodes {last}");
    }
}
