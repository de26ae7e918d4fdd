//! Runs an [`EpsilonSchedule`] episode by episode: the exploration rate of an epsilon-greedy agent.
//!
//! The schedule itself is a trial parameter (shared with the coordinator); this module owns only
//! the position in it: how many episodes have ended and, for the adaptive rule, the current epsilon
//! and the reward window. That position is [`EpsilonState`], which a job stores in its checkpoint
//! header and hands back to [`EpsilonRunner::with_state`] on restore. The schedule is never stored
//! in the checkpoint: it comes from the trial's params, so a restored runner follows the very same
//! numbers.

use serde::{Deserialize, Serialize};
use sweep_shared::params::EpsilonSchedule;

/// Where a schedule stands. Floats are stored as exact decimal strings (see [`exact_f64`]), so a
/// checkpoint round trip changes no bit and a resumed run repeats the uninterrupted one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpsilonState {
    /// Episodes ended so far: the position of linear and exponential schedules.
    pub episodes_done: u64,
    /// The adaptive rule's current epsilon; 0 and unused for the other kinds.
    #[serde(with = "exact_f64")]
    pub adaptive_epsilon: f64,
    /// Sum of the rewards of the adaptive window being filled.
    #[serde(with = "exact_f64")]
    pub window_reward_sum: f64,
    /// Episodes in the adaptive window being filled.
    pub window_episodes: u64,
    /// Best window mean so far; `-inf` before the first window closes, so the first window always
    /// counts as an improvement.
    #[serde(with = "exact_f64")]
    pub best_window_mean: f64,
}

/// An epsilon schedule in progress.
///
/// Use: read [`EpsilonRunner::value`] for the episode about to run, then call
/// [`EpsilonRunner::end_episode`] with that episode's accumulated reward.
///
/// The adaptive rule, per [`EpsilonSchedule::Adaptive`]:
/// 1. Add each episode's reward to the current window.
/// 2. When the window holds `window` episodes, take its mean reward.
/// 3. If the mean beats the best window mean so far, it becomes the best and epsilon is multiplied
///    by `factor`; otherwise, if it is below `collapse` times the best, epsilon is divided by `factor`.
/// 4. Clamp epsilon to [`min`, `max`] and start an empty window.
#[derive(Debug, Clone, PartialEq)]
pub struct EpsilonRunner {
    schedule: EpsilonSchedule,
    state: EpsilonState,
}

impl EpsilonRunner {
    /// A runner at the start of `schedule`.
    pub fn new(schedule: &EpsilonSchedule) -> Self {
        let adaptive_epsilon = match *schedule {
            EpsilonSchedule::Adaptive { start, .. } => start,
            _ => 0.0,
        };
        let state = EpsilonState {
            episodes_done: 0,
            adaptive_epsilon,
            window_reward_sum: 0.0,
            window_episodes: 0,
            best_window_mean: f64::NEG_INFINITY,
        };
        EpsilonRunner { schedule: schedule.clone(), state }
    }

    /// A runner on `schedule` at a position saved by [`EpsilonRunner::state`].
    pub fn with_state(schedule: &EpsilonSchedule, state: EpsilonState) -> Self {
        EpsilonRunner { schedule: schedule.clone(), state }
    }

    /// The position to save in a checkpoint.
    pub fn state(&self) -> &EpsilonState {
        &self.state
    }

    /// Epsilon for the current episode.
    pub fn value(&self) -> f64 {
        let episodes_done = self.state.episodes_done;
        match self.schedule {
            EpsilonSchedule::Constant { value } => value,
            EpsilonSchedule::Linear { start, end, episodes } => {
                if episodes_done >= episodes {
                    end
                } else {
                    start + (end - start) * (episodes_done as f64 / episodes as f64)
                }
            }
            EpsilonSchedule::Exponential { start, decay, min } => (start * decay.powf(episodes_done as f64)).max(min),
            EpsilonSchedule::Adaptive { .. } => self.state.adaptive_epsilon,
        }
    }

    /// Ends the current episode, which earned `reward`, and moves to the next.
    pub fn end_episode(&mut self, reward: f64) {
        self.state.episodes_done += 1;
        let EpsilonSchedule::Adaptive { min, max, factor, window, collapse, .. } = self.schedule else {
            return;
        };
        let state = &mut self.state;
        state.window_reward_sum += reward;
        state.window_episodes += 1;
        if state.window_episodes < window {
            return;
        }
        let window_mean = state.window_reward_sum / window as f64;
        if window_mean > state.best_window_mean {
            state.best_window_mean = window_mean;
            state.adaptive_epsilon *= factor;
        } else if window_mean < collapse * state.best_window_mean {
            state.adaptive_epsilon /= factor;
        }
        state.adaptive_epsilon = state.adaptive_epsilon.clamp(min, max);
        state.window_reward_sum = 0.0;
        state.window_episodes = 0;
    }
}

/// Serde for an f64 as the shortest decimal string that parses back to the same bits (`inf`,
/// `-inf` and `NaN` included). serde_json's default float parser may miss by one ulp, which would
/// make a resumed run drift from the uninterrupted one.
pub mod exact_f64 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|e| D::Error::custom(format!("'{text}' is not an f64: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The epsilons of `rewards.len() + 1` consecutive episodes, ending one per reward.
    fn trace(schedule: &EpsilonSchedule, rewards: &[f64]) -> Vec<f64> {
        let mut runner = EpsilonRunner::new(schedule);
        let mut values = vec![runner.value()];
        for &reward in rewards {
            runner.end_episode(reward);
            values.push(runner.value());
        }
        values
    }

    fn adaptive(start: f64, window: u64) -> EpsilonSchedule {
        EpsilonSchedule::Adaptive { start, min: 0.02, max: 0.15, factor: 0.5, window, collapse: 0.5 }
    }

    #[test]
    fn constant_never_moves() {
        assert_eq!(trace(&EpsilonSchedule::Constant { value: 0.3 }, &[1.0, 50.0, 2.0]), vec![0.3; 4]);
    }

    #[test]
    fn exponential_decays_to_its_floor() {
        let schedule = EpsilonSchedule::Exponential { start: 1.0, decay: 0.5, min: 0.1 };
        assert_eq!(trace(&schedule, &[0.0; 6]), vec![1.0, 0.5, 0.25, 0.125, 0.1, 0.1, 0.1]);
    }

    #[test]
    fn linear_reaches_its_end_and_stays() {
        let schedule = EpsilonSchedule::Linear { start: 1.0, end: 0.25, episodes: 3 };
        assert_eq!(trace(&schedule, &[0.0; 5]), vec![1.0, 0.75, 0.5, 0.25, 0.25, 0.25]);
    }

    #[test]
    fn adaptive_moves_only_at_window_ends() {
        let values = trace(&adaptive(0.1, 3), &[10.0, 10.0, 10.0, 10.0]);
        assert_eq!(values, vec![0.1, 0.1, 0.1, 0.05, 0.05]);
    }

    #[test]
    fn adaptive_lowers_on_improvement() {
        // First window sets the best (an improvement over none), the second beats it.
        let values = trace(&adaptive(0.12, 2), &[10.0, 10.0, 30.0, 30.0]);
        assert_eq!(values[2], 0.06);
        assert_eq!(values[4], 0.03);
    }

    #[test]
    fn adaptive_holds_when_neither_better_nor_collapsed() {
        let values = trace(&adaptive(0.12, 2), &[20.0, 20.0, 15.0, 15.0]);
        assert_eq!(values[2], 0.06);
        assert_eq!(values[4], 0.06, "mean 15 is neither above the best 20 nor below 0.5 * 20");
    }

    #[test]
    fn adaptive_raises_on_collapse() {
        let values = trace(&adaptive(0.12, 2), &[20.0, 20.0, 4.0, 4.0]);
        assert_eq!(values[2], 0.06);
        assert_eq!(values[4], 0.12, "mean 4 is below 0.5 * best 20");
    }

    #[test]
    fn adaptive_is_clamped_to_its_bounds() {
        let improving: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(*trace(&adaptive(0.1, 1), &improving).last().unwrap(), 0.02);

        let mut collapsing = vec![100.0];
        collapsing.extend(std::iter::repeat_n(1.0, 10));
        let values = trace(&adaptive(0.1, 1), &collapsing);
        assert_eq!(values[1], 0.05);
        assert_eq!(*values.last().unwrap(), 0.15);
        assert!(values.iter().all(|v| (0.02..=0.15).contains(v)));
    }

    #[test]
    fn state_survives_a_json_round_trip_bit_for_bit() {
        let schedule =
            EpsilonSchedule::Adaptive { start: 0.1, min: 0.0, max: 1.0, factor: 0.9, window: 3, collapse: 0.3 };
        let mut runner = EpsilonRunner::new(&schedule);
        for reward in [11.0, 23.0, 47.0, 9.0, 500.0, 13.0, 3.0] {
            runner.end_episode(reward);
        }
        let json = serde_json::to_string(&serde_json::to_value(runner.state()).unwrap()).unwrap();
        let state: EpsilonState = serde_json::from_value(serde_json::from_str(&json).unwrap()).unwrap();
        let mut restored = EpsilonRunner::with_state(&schedule, state);
        assert_eq!(restored.value().to_bits(), runner.value().to_bits());
        for reward in [40.0, 41.0, 42.0] {
            runner.end_episode(reward);
            restored.end_episode(reward);
        }
        assert_eq!(restored.value().to_bits(), runner.value().to_bits());
        assert_eq!(restored, runner);
    }

    #[test]
    fn fresh_state_round_trips_infinity() {
        let runner = EpsilonRunner::new(&EpsilonSchedule::LAB_ADAPTIVE);
        let json = serde_json::to_string(runner.state()).unwrap();
        assert!(json.contains("\"-inf\""), "{json}");
        let state: EpsilonState = serde_json::from_str(&json).unwrap();
        assert_eq!(state.best_window_mean, f64::NEG_INFINITY);
    }
}
