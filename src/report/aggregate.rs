//! The numbers behind the figures: seeds folded into one line and band per configuration,
//! long series averaged over windows, configurations ranked by their objective over seeds.
//!
//! Pure functions over [`Series`] and [`Trial`] values; the figures and the table only draw what
//! these return.
//!
//! A configuration's curve at a step is the mean over the seeds that have a finite value there;
//! its band spans the lowest and highest of those values (min..max, not a standard deviation:
//! with the 2 to 5 seeds of a typical sweep, min..max shows every seed and claims no distribution).

use std::collections::{BTreeMap, HashMap};

use sweep_coordinator::stats::{Aggregate, RankBy};
use sweep_shared::spec::Goal;

use super::data::{Series, Trial};

/// Fixed-width windows of steps: a step falls in window `(step - origin) / width`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub origin: i64,
    pub width: i64,
}

impl Window {
    /// Windows that leave at most `max_points` points of the longest of `series`, or `None` when
    /// no series is longer than that. Windows start at the lowest step of any series.
    pub fn fitting(series: &[&Series], max_points: usize) -> Option<Window> {
        let longest = series.iter().map(|s| s.len()).max()?;
        if longest <= max_points.max(1) {
            return None;
        }
        let first = series.iter().filter_map(|s| s.steps.first()).copied().min()?;
        let last = series.iter().filter_map(|s| s.steps.last()).copied().max()?;
        let span = last - first + 1;
        let width = (span + max_points as i64 - 1) / max_points as i64;
        Some(Window { origin: first, width: width.max(1) })
    }

    /// The last step of the window holding `step`: where the window's mean is drawn.
    fn end_of(&self, step: i64) -> i64 {
        let index = (step - self.origin).div_euclid(self.width);
        self.origin + (index + 1) * self.width - 1
    }

    /// The mean of the finite values in each window, at the window's last step.
    pub fn apply(&self, series: &Series) -> Series {
        let mut sums: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
        for (step, value) in series.points().filter(|(_, v)| v.is_finite()) {
            let entry = sums.entry(self.end_of(step)).or_insert((0.0, 0));
            entry.0 += value;
            entry.1 += 1;
        }
        Series::new(sums.into_iter().map(|(step, (sum, n))| (step, sum / n as f64)))
    }
}

/// A configuration's curve: at each step, the mean and the range over its seeds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Band {
    pub steps: Vec<i64>,
    pub mean: Vec<f64>,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
    /// Seeds with a value at the step.
    pub n: Vec<usize>,
}

impl Band {
    /// Folds the seeds' series of one configuration: every step any seed has, with the mean,
    /// min and max of the finite values there (non-finite values are left out; a step where
    /// none is finite is left out).
    pub fn over_seeds(seeds: &[&Series]) -> Band {
        let mut at: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for series in seeds {
            for (step, value) in series.points().filter(|(_, v)| v.is_finite()) {
                at.entry(step).or_default().push(value);
            }
        }
        let mut band = Band::default();
        for (step, values) in at {
            let n = values.len();
            band.steps.push(step);
            band.mean.push(values.iter().sum::<f64>() / n as f64);
            band.min.push(values.iter().copied().fold(f64::INFINITY, f64::min));
            band.max.push(values.iter().copied().fold(f64::NEG_INFINITY, f64::max));
            band.n.push(n);
        }
        band
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The lowest and highest value the band reaches (its min and max), if it has points.
    pub fn value_range(&self) -> Option<(f64, f64)> {
        let lo = self.min.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self.max.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo.is_finite() && hi.is_finite()).then_some((lo, hi))
    }
}

/// One configuration (the trials sharing a `config_id`, one per seed) and its objective.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub config_id: String,
    /// Indexes into the sweep's trials, in trial order.
    pub trials: Vec<usize>,
    /// Over the completed trials with a finite objective; `None` when there are none.
    pub objective: Option<Aggregate>,
}

/// The sweep's configurations, best first by the objective's aggregate `by` (mean, median or the
/// pessimistic end of the 95% interval) under `goal`; configurations without an objective last, in
/// the order their first trial appears. The rules and statistics of `sweep best`: only completed
/// trials count.
pub fn rank_configs(trials: &[Trial], goal: Goal, by: RankBy) -> Vec<Config> {
    let mut order: Vec<&str> = Vec::new();
    let mut members: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, trial) in trials.iter().enumerate() {
        let entry = members.entry(trial.config_id.as_str()).or_default();
        if entry.is_empty() {
            order.push(trial.config_id.as_str());
        }
        entry.push(i);
    }
    let mut configs: Vec<Config> = order
        .into_iter()
        .map(|config_id| {
            let indexes = members.remove(config_id).unwrap_or_default();
            let objectives: Vec<f64> = indexes
                .iter()
                .filter(|&&i| trials[i].completed())
                .filter_map(|&i| trials[i].objective)
                .filter(|v| v.is_finite())
                .collect();
            Config { config_id: config_id.to_string(), trials: indexes, objective: Aggregate::of(&objectives) }
        })
        .collect();
    // A stable sort: ties keep the order of appearance.
    configs.sort_by(|a, b| match (&a.objective, &b.objective) {
        (Some(a), Some(b)) => a.rank_order(b, by, goal),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    configs
}

/// The best completed trial by objective under `goal`.
pub fn best_trial(trials: &[Trial], goal: Goal) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, trial) in trials.iter().enumerate().filter(|(_, t)| t.completed()) {
        if let Some(value) = trial.objective {
            if best.is_none_or(|(_, b)| goal.better(value, b)) {
                best = Some((i, value));
            }
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::data::ParamValue;

    fn series(points: &[(i64, f64)]) -> Series {
        Series::new(points.iter().copied())
    }

    #[test]
    fn seeds_fold_into_mean_and_min_max_at_each_step() {
        // Three seeds; the third lacks step 2 and has a NaN at step 3.
        let a = series(&[(1, 1.0), (2, 4.0), (3, 10.0)]);
        let b = series(&[(1, 3.0), (2, 8.0), (3, 20.0)]);
        let c = series(&[(1, 8.0), (3, f64::NAN), (4, 5.0)]);
        let band = Band::over_seeds(&[&a, &b, &c]);
        assert_eq!(band.steps, vec![1, 2, 3, 4]);
        assert_eq!(band.mean, vec![4.0, 6.0, 15.0, 5.0]);
        assert_eq!(band.min, vec![1.0, 4.0, 10.0, 5.0]);
        assert_eq!(band.max, vec![8.0, 8.0, 20.0, 5.0]);
        assert_eq!(band.n, vec![3, 2, 2, 1]);
        assert_eq!(band.value_range(), Some((1.0, 20.0)));
    }

    #[test]
    fn a_single_seed_is_its_own_band() {
        let a = series(&[(10, 0.5), (20, 0.25)]);
        let band = Band::over_seeds(&[&a]);
        assert_eq!(
            (band.mean.clone(), band.min.clone(), band.max.clone()),
            (a.values.clone(), a.values.clone(), a.values)
        );
        assert!(Band::over_seeds(&[]).is_empty());
    }

    #[test]
    fn long_series_average_over_windows_ending_at_their_last_step() {
        // Steps 1..=10 with value = step; at most 4 points: width ceil(10 / 4) = 3.
        let long = Series::new((1..=10).map(|s| (s, s as f64)));
        let short = series(&[(1, 0.0), (5, 0.0)]);
        let window = Window::fitting(&[&long, &short], 4).expect("10 points need windows");
        assert_eq!(window, Window { origin: 1, width: 3 });
        let windowed = window.apply(&long);
        // Windows [1,3], [4,6], [7,9], [10,12]: means 2, 5, 8, 10 at steps 3, 6, 9, 12.
        assert_eq!(windowed, series(&[(3, 2.0), (6, 5.0), (9, 8.0), (12, 10.0)]));
        assert_eq!(Window::fitting(&[&short], 4), None, "short series are drawn as they are");
    }

    #[test]
    fn windows_then_seeds_give_the_mean_of_window_means() {
        let window = Window { origin: 1, width: 2 };
        let a = window.apply(&series(&[(1, 1.0), (2, 3.0), (3, 5.0), (4, 7.0)]));
        let b = window.apply(&series(&[(1, 0.0), (2, 0.0), (3, 1.0), (4, f64::INFINITY)]));
        // a: 2 at step 2, 6 at step 4; b: 0 at step 2, 1 at step 4 (the infinity left out).
        let band = Band::over_seeds(&[&a, &b]);
        assert_eq!(band.steps, vec![2, 4]);
        assert_eq!(band.mean, vec![1.0, 3.5]);
        assert_eq!(band.min, vec![0.0, 1.0]);
        assert_eq!(band.max, vec![2.0, 6.0]);
    }

    fn trial(id: &str, config: &str, status: &str, objective: Option<f64>) -> Trial {
        Trial {
            trial_id: id.into(),
            config_id: config.into(),
            seed: 0,
            status: status.into(),
            objective,
            best: None,
            last: None,
            params: vec![ParamValue::Missing],
        }
    }

    #[test]
    fn configurations_rank_by_mean_objective_over_completed_seeds() {
        let trials = vec![
            trial("a1", "a", "completed", Some(1.0)),
            trial("b1", "b", "completed", Some(4.0)),
            trial("a2", "a", "completed", Some(3.0)),
            trial("b2", "b", "failed", Some(100.0)),
            trial("c1", "c", "failed", None),
            trial("b3", "b", "completed", Some(2.0)),
        ];
        let ranked = rank_configs(&trials, Goal::Maximize, RankBy::Mean);
        let ids: Vec<&str> = ranked.iter().map(|c| c.config_id.as_str()).collect();
        assert_eq!(ids, vec!["b", "a", "c"]);
        let b = ranked[0].objective.expect("b has objectives");
        assert_eq!((b.n, b.mean, b.min, b.max), (2, 3.0, 2.0, 4.0));
        assert!((b.std - 2f64.sqrt()).abs() < 1e-12, "sample std of 2 and 4 is sqrt(2): {}", b.std);
        assert_eq!(ranked[0].trials, vec![1, 3, 5]);
        assert_eq!(ranked[2].objective, None);

        let ids: Vec<String> =
            rank_configs(&trials, Goal::Minimize, RankBy::Mean).into_iter().map(|c| c.config_id).collect();
        assert_eq!(ids, vec!["a", "b", "c"], "a's mean 2 beats b's 3 when minimizing");
        assert_eq!(best_trial(&trials, Goal::Maximize), Some(1));
        assert_eq!(best_trial(&trials, Goal::Minimize), Some(0));
    }

    #[test]
    fn configurations_rank_by_median_or_bound_when_asked() {
        // steady: 5, 5, 5 (mean 5, median 5, interval 5..5).
        // lucky: 0, 1, 20 (mean 7, median 1, a wide interval whose lower end is below 0).
        let trials = vec![
            trial("s1", "steady", "completed", Some(5.0)),
            trial("s2", "steady", "completed", Some(5.0)),
            trial("s3", "steady", "completed", Some(5.0)),
            trial("l1", "lucky", "completed", Some(0.0)),
            trial("l2", "lucky", "completed", Some(1.0)),
            trial("l3", "lucky", "completed", Some(20.0)),
            trial("n1", "nan", "completed", Some(f64::NAN)),
        ];
        let order =
            |goal, by| -> Vec<String> { rank_configs(&trials, goal, by).into_iter().map(|c| c.config_id).collect() };
        assert_eq!(order(Goal::Maximize, RankBy::Mean), vec!["lucky", "steady", "nan"]);
        assert_eq!(order(Goal::Maximize, RankBy::Median), vec!["steady", "lucky", "nan"]);
        assert_eq!(order(Goal::Maximize, RankBy::Bound), vec!["steady", "lucky", "nan"]);
        // Minimizing: the median favours lucky (1 < 5), the upper bound steady.
        assert_eq!(order(Goal::Minimize, RankBy::Median), vec!["lucky", "steady", "nan"]);
        assert_eq!(order(Goal::Minimize, RankBy::Bound), vec!["steady", "lucky", "nan"]);
        let lucky = rank_configs(&trials, Goal::Maximize, RankBy::Mean)[0].objective.expect("lucky has objectives");
        assert_eq!((lucky.median, lucky.min, lucky.max), (1.0, 0.0, 20.0));
        assert!(lucky.ci_low < 0.0 && lucky.ci_high > 20.0, "t(2) = 4.30 widens the interval: {lucky:?}");
        assert_eq!(rank_configs(&trials, Goal::Maximize, RankBy::Mean)[2].objective, None, "NaN is no objective");
    }
}
