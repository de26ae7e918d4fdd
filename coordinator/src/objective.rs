//! A trial's objective: the sweep metric's points folded into last / max / min / mean of last k.
//!
//! Pure logic. The core folds each stored batch into the trial's [`ObjectiveState`] (kept in
//! SQLite as JSON, updated in the batch's transaction) and takes the summary at completion.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use sweep_shared::spec::{Goal, Summary};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveState {
    /// The point with the highest step seen.
    pub last: Option<(u64, f64)>,
    /// The best point under the sweep's goal, and its step.
    pub best: Option<(u64, f64)>,
    pub max: Option<f64>,
    pub min: Option<f64>,
    /// The last `k` values by arrival, for `mean_last`; empty for other summaries.
    pub window: VecDeque<f64>,
}

impl ObjectiveState {
    pub fn observe(&mut self, step: u64, value: f64, goal: Goal, summary: &Summary) {
        if !value.is_finite() {
            return;
        }
        if self.last.is_none_or(|(s, _)| step >= s) {
            self.last = Some((step, value));
        }
        if self.best.is_none_or(|(_, b)| goal.better(value, b)) {
            self.best = Some((step, value));
        }
        self.max = Some(self.max.map_or(value, |m| m.max(value)));
        self.min = Some(self.min.map_or(value, |m| m.min(value)));
        if let Summary::MeanLast(k) = summary {
            self.window.push_back(value);
            while self.window.len() > *k as usize {
                self.window.pop_front();
            }
        }
    }

    /// The trial's objective under `summary`; `None` while no point of the metric arrived.
    pub fn value(&self, summary: &Summary) -> Option<f64> {
        match summary {
            Summary::Last => self.last.map(|(_, v)| v),
            Summary::Max => self.max,
            Summary::Min => self.min,
            Summary::MeanLast(_) => {
                if self.window.is_empty() {
                    None
                } else {
                    Some(self.window.iter().sum::<f64>() / self.window.len() as f64)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_over_a_short_series() {
        let summary = Summary::MeanLast(2);
        let mut state = ObjectiveState::default();
        for (step, v) in [(1, 3.0), (2, 9.0), (3, 5.0), (4, 7.0)] {
            state.observe(step, v, Goal::Maximize, &summary);
        }
        assert_eq!(state.value(&Summary::Last), Some(7.0));
        assert_eq!(state.value(&Summary::Max), Some(9.0));
        assert_eq!(state.value(&Summary::Min), Some(3.0));
        assert_eq!(state.value(&summary), Some(6.0));
        assert_eq!(state.best, Some((2, 9.0)));
    }

    #[test]
    fn minimize_tracks_the_lowest_as_best_and_ignores_nan() {
        let mut state = ObjectiveState::default();
        for (step, v) in [(1, 3.0), (2, f64::NAN), (3, 1.0)] {
            state.observe(step, v, Goal::Minimize, &Summary::Last);
        }
        assert_eq!(state.best, Some((3, 1.0)));
        assert_eq!(state.value(&Summary::Last), Some(1.0));
        assert_eq!(ObjectiveState::default().value(&Summary::Last), None);
    }
}
