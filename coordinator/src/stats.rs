//! Best-run statistics: trials grouped by configuration (everything but the seed), each group's
//! objective over its seeds summarized (n, mean, std, a 95% confidence interval, median, min, max,
//! and the share of seeds that reached the metric's target), and the groups ranked by a chosen
//! aggregate. Pure functions over trial rows; `tests/fixtures/stats_numpy.json` checks them against
//! numpy and scipy.
//!
//! The confidence interval is Student's t interval of the mean, `mean ± t(0.975, n-1) * std/sqrt(n)`,
//! with the sample standard deviation (n - 1). It needs two seeds; with one, both ends are the mean
//! itself and `n` says how little that is worth.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use sweep_shared::spec::{Goal, MetricSpec};

use crate::store::{TrialRow, TrialStatus};

/// One configuration's objective over its completed seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigStats {
    pub config_id: String,
    pub params_json: String,
    /// Trials of the configuration in any state.
    pub seeds_total: u64,
    pub objective: Aggregate,
    /// Seeds whose objective reached the metric's target; `None` when the metric has no target.
    pub reached: Option<u64>,
}

impl ConfigStats {
    /// The share of completed seeds that reached the target.
    pub fn reached_share(&self) -> Option<f64> {
        self.reached.map(|r| r as f64 / self.objective.n as f64)
    }
}

/// Summary statistics of a sample (one configuration's objectives over its seeds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregate {
    pub n: u64,
    pub mean: f64,
    /// Sample standard deviation (n - 1); 0 for a single value.
    pub std: f64,
    /// The 95% confidence interval of the mean (Student's t); the mean itself for a single value.
    pub ci_low: f64,
    pub ci_high: f64,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Aggregate {
    /// The statistics of `values`, which must be finite; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Aggregate> {
        if values.is_empty() {
            return None;
        }
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let std =
            if n > 1 { (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
        let half = if n > 1 { t_975(n as u64 - 1) * std / (n as f64).sqrt() } else { 0.0 };
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        Some(Aggregate {
            n: n as u64,
            mean,
            std,
            ci_low: mean - half,
            ci_high: mean + half,
            median,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }

    /// Best first: `Less` when `self` ranks above `other` by `by` under `goal`.
    pub fn rank_order(&self, other: &Aggregate, by: RankBy, goal: Goal) -> Ordering {
        let (a, b) = (self.rank_value(by, goal), other.rank_value(by, goal));
        match goal {
            Goal::Maximize => b.total_cmp(&a),
            Goal::Minimize => a.total_cmp(&b),
        }
    }

    /// The value `by` ranks on, for a metric with `goal`.
    pub fn rank_value(&self, by: RankBy, goal: Goal) -> f64 {
        match (by, goal) {
            (RankBy::Mean, _) => self.mean,
            (RankBy::Median, _) => self.median,
            (RankBy::Bound, Goal::Maximize) => self.ci_low,
            (RankBy::Bound, Goal::Minimize) => self.ci_high,
        }
    }
}

/// Which aggregate orders the configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RankBy {
    #[default]
    Mean,
    Median,
    /// The pessimistic end of the 95% confidence interval: the lower bound when maximizing, the
    /// upper when minimizing. It rewards configurations that are good on every seed, and ranks a
    /// single lucky seed (whose interval is undefined) by its value alone.
    Bound,
}

impl RankBy {
    pub const NAMES: &'static [&'static str] = &["mean", "median", "bound"];
}

impl fmt::Display for RankBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RankBy::Mean => "mean",
            RankBy::Median => "median",
            RankBy::Bound => "bound",
        })
    }
}

impl FromStr for RankBy {
    type Err = String;

    /// Parses a name of [`RankBy::NAMES`]; the empty string is the default, `mean`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "mean" => Ok(RankBy::Mean),
            "median" => Ok(RankBy::Median),
            "bound" => Ok(RankBy::Bound),
            other => Err(format!("unknown ranking '{other}' (expected one of {})", RankBy::NAMES.join(", "))),
        }
    }
}

/// Configurations with at least one completed objective, best first by `by`; ties keep config
/// id order.
pub fn summarize_configs(trials: &[TrialRow], metric: &MetricSpec, by: RankBy) -> Vec<ConfigStats> {
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
        .filter_map(|(config_id, (params_json, values, total))| {
            let objective = Aggregate::of(&values)?;
            let reached = metric
                .target
                .map(|_| values.iter().filter(|v| metric.reaches_target(**v) == Some(true)).count() as u64);
            Some(ConfigStats {
                config_id: config_id.to_string(),
                params_json: params_json.to_string(),
                seeds_total: total,
                objective,
                reached,
            })
        })
        .collect();
    out.sort_by(|a, b| a.objective.rank_order(&b.objective, by, metric.goal));
    out
}

/// The 0.975 quantile of Student's t distribution with `df` degrees of freedom (the factor of a
/// two-sided 95% interval). Up to 30 degrees of freedom from a table (`scipy.stats.t.ppf(0.975,
/// df)`, 9 decimals); above, the Cornish-Fisher expansion around the normal quantile to the 1/df^4
/// term (Abramowitz and Stegun 26.7.5), within 2e-7 of scipy there. Both are checked against scipy
/// in the tests.
pub fn t_975(df: u64) -> f64 {
    const TABLE: [f64; 30] = [
        12.706204736,
        4.302652730,
        3.182446305,
        2.776445105,
        2.570581836,
        2.446911851,
        2.364624252,
        2.306004135,
        2.262157163,
        2.228138852,
        2.200985160,
        2.178812830,
        2.160368656,
        2.144786688,
        2.131449546,
        2.119905299,
        2.109815578,
        2.100922040,
        2.093024054,
        2.085963447,
        2.079613845,
        2.073873068,
        2.068657610,
        2.063898562,
        2.059538553,
        2.055529439,
        2.051830516,
        2.048407142,
        2.045229642,
        2.042272456,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df as usize - 1],
        _ => {
            let z: f64 = 1.959_963_984_540_054;
            let d = df as f64;
            let g1 = (z.powi(3) + z) / 4.0;
            let g2 = (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / 96.0;
            let g3 = (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / 384.0;
            let g4 =
                (79.0 * z.powi(9) + 776.0 * z.powi(7) + 1482.0 * z.powi(5) - 1920.0 * z.powi(3) - 945.0 * z) / 92160.0;
            z + g1 / d + g2 / d.powi(2) + g3 / d.powi(3) + g4 / d.powi(4)
        }
    }
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

    fn metric(goal: Goal, target: Option<f64>) -> MetricSpec {
        MetricSpec { name: "r".into(), goal, summary: sweep_shared::spec::Summary::Last, target }
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
        let max = summarize_configs(&trials, &metric(Goal::Maximize, Some(2.0)), RankBy::Mean);
        assert_eq!(max.iter().map(|c| c.config_id.as_str()).collect::<Vec<_>>(), vec!["b", "a"]);
        let a = &max[1];
        let o = a.objective;
        assert_eq!((o.n, a.seeds_total, o.mean, o.min, o.max, o.median), (2, 3, 2.0, 1.0, 3.0, 2.0));
        assert!((o.std - 2f64.sqrt()).abs() < 1e-12);
        // t(0.975, 1) * sqrt(2) / sqrt(2) = 12.7062...
        assert!((o.ci_high - 2.0 - 12.706204736).abs() < 1e-9, "{o:?}");
        assert_eq!((a.reached, a.reached_share()), (Some(1), Some(0.5)));
        assert_eq!(max[0].objective.std, 0.0);
        assert_eq!((max[0].objective.ci_low, max[0].objective.ci_high), (5.0, 5.0));
        let min = summarize_configs(&trials, &metric(Goal::Minimize, None), RankBy::Mean);
        assert_eq!(min[0].config_id, "a");
        assert_eq!(min[0].reached, None);
    }

    #[test]
    fn rankings_differ_where_their_aggregates_do() {
        // a: one great seed and two poor ones; b: steady. Mean prefers a, median and bound prefer b.
        let mut trials = Vec::new();
        for v in [100.0, 10.0, 11.0] {
            trials.push(trial("a", TrialStatus::Completed, Some(v)));
        }
        for v in [38.0, 40.0, 42.0] {
            trials.push(trial("b", TrialStatus::Completed, Some(v)));
        }
        let order = |by| {
            summarize_configs(&trials, &metric(Goal::Maximize, None), by)
                .into_iter()
                .map(|c| c.config_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(order(RankBy::Mean), ["a", "b"]);
        assert_eq!(order(RankBy::Median), ["b", "a"]);
        assert_eq!(order(RankBy::Bound), ["b", "a"]);
        // Minimizing, the bound is the upper end: b's 42-ish beats a's wide interval.
        let min = summarize_configs(&trials, &metric(Goal::Minimize, None), RankBy::Bound);
        assert_eq!(min[0].config_id, "b");
        assert_eq!("bound".parse::<RankBy>(), Ok(RankBy::Bound));
        assert_eq!("".parse::<RankBy>(), Ok(RankBy::Mean));
        assert!("best".parse::<RankBy>().unwrap_err().contains("mean, median, bound"));
    }

    /// `tests/fixtures/stats_numpy.json`, made by `make_stats_fixture.py` (numpy + scipy).
    #[derive(serde::Deserialize)]
    struct Fixture {
        t_975: Vec<(u64, f64)>,
        samples: Vec<Sample>,
    }

    #[derive(serde::Deserialize)]
    struct Sample {
        values: Vec<f64>,
        mean: f64,
        std: f64,
        ci_low: f64,
        ci_high: f64,
        median: f64,
        min: f64,
        max: f64,
    }

    fn fixture() -> Fixture {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/stats_numpy.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn t_quantile_matches_scipy() {
        let fixture = fixture();
        assert!(fixture.t_975.len() > 40);
        for (df, want) in fixture.t_975 {
            let got = t_975(df);
            assert!((got - want).abs() < 2e-7 * want, "df {df}: {got} vs scipy {want}");
        }
    }

    #[test]
    fn aggregates_match_numpy_and_scipy() {
        let fixture = fixture();
        assert!(fixture.samples.len() >= 5);
        for s in fixture.samples {
            let a = Aggregate::of(&s.values).unwrap();
            let close = |got: f64, want: f64, what: &str| {
                assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "{what} of {:?}: {got} vs {want}", s.values)
            };
            assert_eq!(a.n, s.values.len() as u64);
            close(a.mean, s.mean, "mean");
            close(a.std, s.std, "std");
            close(a.ci_low, s.ci_low, "ci_low");
            close(a.ci_high, s.ci_high, "ci_high");
            close(a.median, s.median, "median");
            close(a.min, s.min, "min");
            close(a.max, s.max, "max");
        }
        assert_eq!(Aggregate::of(&[]), None);
    }
}
