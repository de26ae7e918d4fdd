//! CartPole: a port of gymnasium's `classic_control/cartpole.py` together with the `TimeLimit`
//! wrapper that `gymnasium.make` adds.
//!
//! Reference: Barto, Sutton and Anderson (1983), "Neuronlike adaptive elements that can solve
//! difficult learning control problems", as implemented in gymnasium 1.x
//! (<https://github.com/Farama-Foundation/Gymnasium/blob/main/gymnasium/envs/classic_control/cartpole.py>).
//!
//! Shapes: the state and every observation are `[x, x_dot, theta, theta_dot]`; an action is `0`
//! (push left) or `1` (push right). Like gymnasium, the state is kept in f64 and the observation is
//! the state rounded to f32 (returned here widened back to f64), so the same float arithmetic in the
//! same order reproduces gymnasium's trajectories; the test replays one recorded by
//! `tests/fixtures/make_cartpole_fixture.py`. The reset distribution matches gymnasium's (uniform
//! in [-0.05, 0.05]) but draws from the caller's RNG, not numpy's.
//!
//! The environment owns only the physical state and the step counter; the agent, its RNG and the
//! episode loop belong to the job.

use rand::Rng;
use sweep_shared::params::{ParamKind, ParamSpec, ParamValue};

/// Gravity, m/s^2.
const GRAVITY: f64 = 9.8;
/// Mass of the cart, kg.
const MASS_CART: f64 = 1.0;
/// Mass of the pole, kg.
const MASS_POLE: f64 = 0.1;
/// gymnasium computes `masspole + masscart`; kept in that order.
const TOTAL_MASS: f64 = MASS_POLE + MASS_CART;
/// Half the pole's length, m.
const LENGTH: f64 = 0.5;
const POLE_MASS_LENGTH: f64 = MASS_POLE * LENGTH;
/// Magnitude of the push on the cart, N.
const FORCE_MAG: f64 = 10.0;
/// Seconds between state updates (explicit Euler, gymnasium's default `kinematics_integrator`).
const TAU: f64 = 0.02;
/// The episode terminates once |theta| exceeds 12 degrees.
const THETA_THRESHOLD_RADIANS: f64 = 12.0 * 2.0 * std::f64::consts::PI / 360.0;
/// The episode terminates once |x| exceeds this, m.
const X_THRESHOLD: f64 = 2.4;
/// Bounds of the uniform reset distribution, on all four components.
const RESET_LOW: f64 = -0.05;
const RESET_HIGH: f64 = 0.05;

/// Which registered CartPole: the versions differ only in their time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CartPoleVersion {
    /// `CartPole-v0`: truncated after 200 steps.
    V0,
    /// `CartPole-v1`: truncated after 500 steps.
    V1,
}

impl CartPoleVersion {
    /// The gymnasium id, e.g. `"CartPole-v1"`.
    pub fn name(self) -> &'static str {
        match self {
            CartPoleVersion::V0 => "CartPole-v0",
            CartPoleVersion::V1 => "CartPole-v1",
        }
    }

    /// The `env` parameter of the CartPole jobs: a gymnasium id, CartPole-v1 by default.
    pub fn param() -> ParamSpec {
        ParamSpec {
            name: "env",
            kind: ParamKind::Choice(&["CartPole-v1", "CartPole-v0"]),
            default: Some(ParamValue::Str("CartPole-v1".into())),
            help: "which CartPole: v1 stops episodes at 500 steps, v0 at 200",
        }
    }

    /// Parses a gymnasium id.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "CartPole-v0" => Some(CartPoleVersion::V0),
            "CartPole-v1" => Some(CartPoleVersion::V1),
            _ => None,
        }
    }

    /// `max_episode_steps` of the version's registration.
    pub fn max_episode_steps(self) -> u32 {
        match self {
            CartPoleVersion::V0 => 200,
            CartPoleVersion::V1 => 500,
        }
    }
}

/// What one step returns (gymnasium's tuple without `info`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepResult {
    /// The new state rounded to f32, as gymnasium's float32 observation.
    pub obs: [f64; 4],
    /// 1.0 per step, the terminating step included; 0.0 for steps taken after termination.
    pub reward: f64,
    /// The pole fell past 12 degrees or the cart left [-2.4, 2.4].
    pub terminated: bool,
    /// The time limit of the version was reached.
    pub truncated: bool,
}

/// One CartPole environment. Call [`CartPole::reset`] or [`CartPole::reset_to`] before stepping;
/// a new environment starts upright at rest.
#[derive(Debug, Clone)]
pub struct CartPole {
    version: CartPoleVersion,
    /// `[x, x_dot, theta, theta_dot]` in f64, as gymnasium's `self.state`.
    state: [f64; 4],
    /// Steps since the last reset: the `TimeLimit` wrapper's `_elapsed_steps`.
    elapsed_steps: u32,
    /// Whether a step already reported termination; gymnasium then rewards 0.0 (its
    /// `steps_beyond_terminated`).
    terminated: bool,
}

impl CartPole {
    pub fn new(version: CartPoleVersion) -> Self {
        CartPole { version, state: [0.0; 4], elapsed_steps: 0, terminated: false }
    }

    pub fn version(&self) -> CartPoleVersion {
        self.version
    }

    /// The exact f64 state (not rounded like an observation).
    pub fn state(&self) -> [f64; 4] {
        self.state
    }

    /// Starts an episode from a state drawn uniformly in [-0.05, 0.05] per component, in the
    /// order x, x_dot, theta, theta_dot; returns the first observation.
    pub fn reset(&mut self, rng: &mut impl Rng) -> [f64; 4] {
        let mut state = [0.0; 4];
        for component in &mut state {
            // numpy's `uniform(low, high)`: low + (high - low) * U[0, 1).
            *component = RESET_LOW + (RESET_HIGH - RESET_LOW) * rng.random::<f64>();
        }
        self.reset_to(state)
    }

    /// Starts an episode from `state`; returns the first observation.
    pub fn reset_to(&mut self, state: [f64; 4]) -> [f64; 4] {
        self.state = state;
        self.elapsed_steps = 0;
        self.terminated = false;
        observation(&self.state)
    }

    /// Pushes the cart left (`action == 0`) or right (`action == 1`) for one time step.
    pub fn step(&mut self, action: usize) -> StepResult {
        debug_assert!(action < 2, "cartpole action must be 0 or 1, got {action}");
        let [x, x_dot, theta, theta_dot] = self.state;
        let force = if action == 1 { FORCE_MAG } else { -FORCE_MAG };
        let costheta = theta.cos();
        let sintheta = theta.sin();

        // Same expressions, same evaluation order as gymnasium, so the f64 results agree bit for bit.
        let temp = (force + POLE_MASS_LENGTH * (theta_dot * theta_dot) * sintheta) / TOTAL_MASS;
        let thetaacc = (GRAVITY * sintheta - costheta * temp)
            / (LENGTH * (4.0 / 3.0 - MASS_POLE * (costheta * costheta) / TOTAL_MASS));
        let xacc = temp - POLE_MASS_LENGTH * thetaacc * costheta / TOTAL_MASS;

        let x = x + TAU * x_dot;
        let x_dot = x_dot + TAU * xacc;
        let theta = theta + TAU * theta_dot;
        let theta_dot = theta_dot + TAU * thetaacc;
        self.state = [x, x_dot, theta, theta_dot];

        // Written as gymnasium writes it: a NaN state does not terminate there either.
        #[allow(clippy::manual_range_contains)]
        let terminated =
            x < -X_THRESHOLD || x > X_THRESHOLD || theta < -THETA_THRESHOLD_RADIANS || theta > THETA_THRESHOLD_RADIANS;
        let reward = if self.terminated { 0.0 } else { 1.0 };
        self.terminated |= terminated;

        self.elapsed_steps = self.elapsed_steps.saturating_add(1);
        let truncated = self.elapsed_steps >= self.version.max_episode_steps();

        StepResult { obs: observation(&self.state), reward, terminated, truncated }
    }
}

/// gymnasium's `np.array(self.state, dtype=np.float32)`, widened back to f64.
fn observation(state: &[f64; 4]) -> [f64; 4] {
    state.map(|v| f64::from(v as f32))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Fixture {
        env: String,
        episodes: Vec<FixtureEpisode>,
    }

    #[derive(Deserialize)]
    struct FixtureEpisode {
        /// f64 reprs as strings: Rust's parser is correctly rounded, serde_json's default is not.
        initial_state: Vec<String>,
        actions: Vec<usize>,
        observations: Vec<[f64; 4]>,
        rewards: Vec<f64>,
        terminated: Vec<bool>,
        truncated: Vec<bool>,
    }

    fn load_fixture() -> Fixture {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/cartpole_gym_trajectory.json");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        serde_json::from_str(&text).expect("parsing the cartpole fixture")
    }

    /// A controller that keeps the pole up for well over 500 steps from any reset state.
    fn balance(obs: &[f64; 4]) -> usize {
        usize::from(obs[2] + 0.5 * obs[3] > 0.0)
    }

    #[test]
    fn matches_gymnasium_trajectory() {
        let fixture = load_fixture();
        let version = CartPoleVersion::from_name(&fixture.env).expect("fixture env is a cartpole");
        let mut env = CartPole::new(version);
        let mut steps_checked = 0;
        for (episode_index, episode) in fixture.episodes.iter().enumerate() {
            let parsed: Vec<f64> = episode.initial_state.iter().map(|s| s.parse().expect("f64 repr")).collect();
            let initial_state: [f64; 4] = parsed.try_into().expect("four state components");
            env.reset_to(initial_state);
            for (step_index, &action) in episode.actions.iter().enumerate() {
                let step = env.step(action);
                let expected = episode.observations[step_index];
                for (component, (&got, &want)) in step.obs.iter().zip(expected.iter()).enumerate() {
                    assert!(
                        (got - want).abs() <= 1e-6,
                        "episode {episode_index} step {step_index} component {component}: got {got}, gymnasium {want}"
                    );
                }
                assert_eq!(
                    step.reward, episode.rewards[step_index],
                    "reward, episode {episode_index} step {step_index}"
                );
                assert_eq!(
                    step.terminated, episode.terminated[step_index],
                    "terminated, episode {episode_index} step {step_index}"
                );
                assert_eq!(
                    step.truncated, episode.truncated[step_index],
                    "truncated, episode {episode_index} step {step_index}"
                );
                steps_checked += 1;
            }
        }
        assert!(steps_checked >= 500, "fixture too short: {steps_checked} steps");
        assert!(fixture.episodes.iter().any(|e| e.truncated.last() == Some(&true)), "fixture covers truncation");
    }

    fn steps_until_done(version: CartPoleVersion, seed: u64) -> (u32, StepResult) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut env = CartPole::new(version);
        let mut obs = env.reset(&mut rng);
        let mut steps = 0;
        loop {
            let step = env.step(balance(&obs));
            steps += 1;
            if step.terminated || step.truncated {
                return (steps, step);
            }
            obs = step.obs;
        }
    }

    #[test]
    fn v1_truncates_at_500_steps() {
        for seed in 0..5 {
            let (steps, last) = steps_until_done(CartPoleVersion::V1, seed);
            assert_eq!(steps, 500, "seed {seed}");
            assert!(last.truncated && !last.terminated);
        }
    }

    #[test]
    fn v0_truncates_at_200_steps() {
        for seed in 0..5 {
            let (steps, last) = steps_until_done(CartPoleVersion::V0, seed);
            assert_eq!(steps, 200, "seed {seed}");
            assert!(last.truncated && !last.terminated);
        }
    }

    #[test]
    fn reset_draws_within_bounds_and_depends_on_the_rng() {
        let mut env = CartPole::new(CartPoleVersion::V1);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let first = env.reset(&mut rng);
        let second = env.reset(&mut rng);
        assert_ne!(first, second);
        for obs in [first, second] {
            assert!(obs.iter().all(|v| (-0.05..0.05).contains(v)), "{obs:?}");
        }
        let mut again = ChaCha8Rng::seed_from_u64(7);
        assert_eq!(env.reset(&mut again), first);
    }

    #[test]
    fn steps_after_termination_reward_zero() {
        let mut env = CartPole::new(CartPoleVersion::V1);
        env.reset_to([0.0, 0.0, 0.2, 1.0]);
        let first = env.step(1);
        assert!(first.terminated);
        assert_eq!(first.reward, 1.0);
        let after = env.step(1);
        assert!(after.terminated);
        assert_eq!(after.reward, 0.0);
    }
}
