//! Best-run statistics: trials grouped by configuration (everything but the seed), ranked by
//! their mean objective over seeds. Pure functions over trial rows.

use std::collections::BTreeMap;

use sweep_shared::spec::Goal;

use crate::store::{TrialRow, TrialStatus};

/// One configuration's objective over its completed seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigStats {
    pub config_id: String,
    pub params_json: String,
    /// Completed trials with an objective.
    pub n: u64,
    /// Trials of the configuration in any state.
    pub seeds_total: u64,
    pub mean: f64,
    /// Sample standard deviation (n - 1); 0 for a single trial.
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

/// Configurations with at least one completed objective, best mean first.
pub fn summarize_configs(trials: &[TrialRow], goal: Goal) -> Vec<ConfigStats> {
    let mut groups: BTreeMap<&str, (&str, Vec<f64>, u64)> = BTreeMap::new();
    for t in trials {
        let entry = groups.entry(t.config_id.as_str()).or_insert((t.params_json.as_str(), Vec::new(), 0));
        entry.2 += 1;
        if t.status == TrialStatus::Completed {
            if let Some(v) = t.objective.filter(|v| v.is_finite()) {
                entry.1.push(v);
            }
        }
    }
    let mut out: Vec<ConfigStats> = groups
        .into_iter()
        .filter(|(_, (_, values, _))| !values.is_empty())
        .map(|(config_id, (params_json, values, total))| {
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let std = if values.len() > 1 {
                (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
            } else {
                0.0
            };
            ConfigStats {
                config_id: config_id.to_string(),
                params_json: params_json.to_string(),
                n: values.len() as u64,
                seeds_total: total,
                mean,
                std,
                min: values.iter().copied().fold(f64::INFINITY, f64::min),
                max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        let order = a.mean.total_cmp(&b.mean);
        match goal {
            Goal::Maximize => order.reverse(),
            Goal::Minimize => order,
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sweep_shared::ids::{LeaseEpoch, SweepId, TrialId};

    fn trial(config: &str, status: TrialStatus, objective: Option<f64>) -> TrialRow {
        TrialRow {
            trial_id: TrialId::from("t"),
            sweep_id: SweepId::from("s"),
            ordinal: 0,
            config_id: config.into(),
            seed: 0,
            params_json: format!("{{\"c\":\"{config}\"}}"),
            job_kind: "q".into(),
            status,
            attempt: 1,
            epoch: LeaseEpoch(1),
            worker_id: None,
            device: None,
            deadline_ms: None,
            batch_seq: 0,
            obj_state: None,
            objective,
            started_ms: None,
            finished_ms: None,
            wall_seconds: None,
            error: None,
            handbacks: 0,
            resumed_from: None,
        }
    }

    #[test]
    fn mean_std_and_ranking_match_hand_numbers() {
        let trials = vec![
            trial("a", TrialStatus::Completed, Some(1.0)),
            trial("a", TrialStatus::Completed, Some(3.0)),
            trial("a", TrialStatus::Failed, None),
            trial("b", TrialStatus::Completed, Some(5.0)),
            trial("c", TrialStatus::Pending, None),
        ];
        let max = summarize_configs(&trials, Goal::Maximize);
        assert_eq!(max.iter().map(|c| c.config_id.as_str()).collect::<Vec<_>>(), vec!["b", "a"]);
        let a = &max[1];
        assert_eq!((a.n, a.seeds_total, a.mean, a.min, a.max), (2, 3, 2.0, 1.0, 3.0));
        assert!((a.std - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(max[0].std, 0.0);
        let min = summarize_configs(&trials, Goal::Minimize);
        assert_eq!(min[0].config_id, "a");
    }
}
