//! A validated spec expanded into the trials to run.
//!
//! Pure and deterministic: the same spec and schema always give the same trials, in the same order,
//! with the same ids, so a resubmitted or resumed sweep finds its finished trials again. Storing the
//! plan and handing trials out is the coordinator's job.
//!
//! Expansion, for both methods:
//! 1. Every configuration starts from the job's defaults, overridden by the spec's fixed settings,
//!    overridden by the searched values, so each holds every parameter of the schema.
//! 2. Grid: the cartesian product of the `values` lists, parameters in sorted key order, the last
//!    one varying fastest. Random: configurations drawn from a `ChaCha8Rng` seeded with
//!    `random_seed`, as many as `max_trials` needs (`max_trials / seeds`, rounded up). A drawn
//!    configuration equal to an earlier one is drawn again, since it would repeat trial ids; a
//!    discrete space smaller than the request yields all of its configurations.
//! 3. Each configuration runs once per seed, configuration-major (config 0 with every seed, then
//!    config 1, ...), and the list is cut at `max_trials`.

use std::collections::HashSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::ids::{ConfigId, TrialId};
use crate::params::{JobSchema, ParamValue, Params};
use crate::spec::{Method, ParamSearch, SweepSpec};

/// One trial of a sweep, as planned before anything runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialPlan {
    /// Position in the plan, from 0; the order trials are handed out in.
    pub ordinal: u64,
    pub trial_id: TrialId,
    /// Shared by the trials of one configuration, one per seed.
    pub config_id: ConfigId,
    pub seed: u64,
    /// Every parameter of the job.
    pub params: Params,
}

/// Expands `spec` into its trials. `schema` must be the schema of `spec.job_kind`, the one the
/// spec was validated against.
pub fn expand(spec: &SweepSpec, schema: &JobSchema) -> Vec<TrialPlan> {
    let base = base_params(spec, schema);
    let seeds_per_config = spec.seeds.len().max(1) as u64;
    let configs_wanted = spec.max_trials.map(|max_trials| max_trials.div_ceil(seeds_per_config));
    let configs = match spec.method {
        Method::Grid => grid_configs(spec, &base, configs_wanted),
        // Validation requires max_trials for random search; without it, draw one configuration.
        Method::Random => random_configs(spec, &base, configs_wanted.unwrap_or(1)),
    };
    let trial_cap = spec.max_trials.unwrap_or(u64::MAX);
    let mut plans = Vec::new();
    for params in configs {
        let config_id = ConfigId::derive(&spec.name, &params);
        for &seed in &spec.seeds {
            if plans.len() as u64 >= trial_cap {
                return plans;
            }
            plans.push(TrialPlan {
                ordinal: plans.len() as u64,
                trial_id: TrialId::derive(&spec.name, &params, seed),
                config_id: config_id.clone(),
                seed,
                params: params.clone(),
            });
        }
    }
    plans
}

/// The number of configurations in the spec's discrete space: the product of the `values` list
/// lengths (a searched parameter with an `int_uniform` range counts its integers), seeds not
/// counted. `None` when a parameter has a continuous distribution or the product overflows.
pub fn grid_size(spec: &SweepSpec) -> Option<u64> {
    spec.parameters.values().try_fold(1u64, |size, search| {
        let choices = match search {
            ParamSearch::Values(values) => values.len() as u64,
            ParamSearch::IntUniform { min, max } => max.abs_diff(*min).checked_add(1)?,
            ParamSearch::Uniform { .. } | ParamSearch::LogUniform { .. } => return None,
        };
        size.checked_mul(choices)
    })
}

/// Schema defaults overridden by the spec's fixed settings.
fn base_params(spec: &SweepSpec, schema: &JobSchema) -> Params {
    let mut params = Params::default();
    for param in &schema.params {
        if let Some(default) = &param.default {
            params.0.insert(param.name.to_string(), default.clone());
        }
    }
    for (name, value) in &spec.fixed {
        params.0.insert(name.clone(), value.clone());
    }
    params
}

/// The first `wanted` configurations of the grid (all of them without a cap), in grid order.
fn grid_configs(spec: &SweepSpec, base: &Params, wanted: Option<u64>) -> Vec<Params> {
    let lists: Vec<(&String, &[ParamValue])> = spec
        .parameters
        .iter()
        .filter_map(|(name, search)| match search {
            ParamSearch::Values(values) => Some((name, values.as_slice())),
            // Validation refuses distributions in a grid.
            _ => None,
        })
        .collect();
    let size = lists.iter().try_fold(1u64, |size, (_, values)| size.checked_mul(values.len() as u64));
    let count = match (size, wanted) {
        (Some(size), Some(wanted)) => size.min(wanted),
        (Some(size), None) => size,
        (None, Some(wanted)) => wanted,
        (None, None) => 0,
    };
    (0..count)
        .map(|index| {
            // Read `index` as a mixed-radix number whose last digit is the last parameter's.
            let mut rest = index;
            let mut params = base.clone();
            for (name, values) in lists.iter().rev() {
                let len = values.len() as u64;
                params.0.insert((*name).clone(), values[(rest % len) as usize].clone());
                rest /= len;
            }
            params
        })
        .collect()
}

/// `wanted` distinct configurations drawn at random, fewer if the space has fewer.
fn random_configs(spec: &SweepSpec, base: &Params, wanted: u64) -> Vec<Params> {
    let wanted = grid_size(spec).map_or(wanted, |size| size.min(wanted));
    // Drawing all of a discrete space takes about n ln n draws; past this budget, stop short.
    let draw_budget = wanted.saturating_mul(100).saturating_add(1000);
    let mut rng = ChaCha8Rng::seed_from_u64(spec.random_seed);
    let mut seen = HashSet::new();
    let mut configs = Vec::new();
    let mut draws = 0u64;
    while (configs.len() as u64) < wanted && draws < draw_budget {
        draws += 1;
        let mut params = base.clone();
        for (name, search) in &spec.parameters {
            params.0.insert(name.clone(), draw(&mut rng, search));
        }
        if seen.insert(params.canonical_json()) {
            configs.push(params);
        }
    }
    configs
}

fn draw(rng: &mut ChaCha8Rng, search: &ParamSearch) -> ParamValue {
    match *search {
        ParamSearch::Values(ref values) => values[rng.random_range(0..values.len())].clone(),
        ParamSearch::Uniform { min, max } => ParamValue::Float(rng.random_range(min..=max)),
        ParamSearch::LogUniform { min, max } => {
            let exponent = rng.random_range(min.ln()..=max.ln());
            // exp(ln(x)) can land an ulp outside the bounds the schema admitted.
            ParamValue::Float(exponent.exp().clamp(min, max))
        }
        ParamSearch::IntUniform { min, max } => ParamValue::Int(rng.random_range(min..=max)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SweepId;
    use crate::params::{EpsilonSchedule, JobCatalog};
    use crate::spec::tests::{parse, test_catalog};

    fn plan(text: &str) -> Vec<TrialPlan> {
        let spec = parse(text).unwrap();
        let catalog = test_catalog();
        expand(&spec, catalog.schema(&spec.job_kind).unwrap())
    }

    const GRID: &str = "\
name: toy-grid
job:
  kind: toy
  episodes: 500
method: grid
metric: {name: reward, goal: maximize}
parameters:
  optimizer: {values: [adam, sgd]}
  lr: {values: [0.01, 0.02, 0.03]}
seeds: [1, 7]
";

    fn lr_and_optimizer(trial: &TrialPlan) -> (f64, String) {
        (trial.params.f64("lr").unwrap(), trial.params.str("optimizer").unwrap().to_string())
    }

    #[test]
    fn grid_is_config_major_in_sorted_key_order() {
        let trials = plan(GRID);
        assert_eq!(trials.len(), 12);
        let configs: Vec<(f64, String)> = trials.iter().step_by(2).map(lr_and_optimizer).collect();
        let expected: Vec<(f64, String)> =
            [0.01, 0.02, 0.03].into_iter().flat_map(|lr| [(lr, "adam".to_string()), (lr, "sgd".to_string())]).collect();
        assert_eq!(configs, expected, "lr (first key) varies slowest, optimizer fastest");
        for (index, trial) in trials.iter().enumerate() {
            assert_eq!(trial.ordinal, index as u64);
            assert_eq!(trial.seed, [1, 7][index % 2]);
            assert_eq!(lr_and_optimizer(trial), expected[index / 2]);
        }
    }

    #[test]
    fn grid_ids_are_stable_and_shared_per_config() {
        let trials = plan(GRID);
        assert_eq!(trials, plan(GRID), "expansion is deterministic");
        let sweep = SweepId::from("toy-grid");
        for pair in trials.chunks(2) {
            assert_eq!(pair[0].config_id, pair[1].config_id);
            assert_ne!(pair[0].trial_id, pair[1].trial_id);
            assert_eq!(pair[0].trial_id, TrialId::derive(&sweep, &pair[0].params, pair[0].seed));
            assert_eq!(pair[0].config_id, ConfigId::derive(&sweep, &pair[0].params));
        }
        let distinct: HashSet<&TrialId> = trials.iter().map(|trial| &trial.trial_id).collect();
        assert_eq!(distinct.len(), trials.len());
        // The YAML's key order does not matter, only the content.
        let reordered = GRID.replace(
            "  optimizer: {values: [adam, sgd]}\n  lr: {values: [0.01, 0.02, 0.03]}\n",
            "  lr: {values: [0.01, 0.02, 0.03]}\n  optimizer: {values: [adam, sgd]}\n",
        );
        assert_eq!(plan(&reordered), trials);
    }

    #[test]
    fn grid_is_cut_at_max_trials() {
        let trials = plan(&format!("{GRID}max_trials: 5\n"));
        assert_eq!(trials.len(), 5);
        assert_eq!(trials[..], plan(GRID)[..5]);
    }

    #[test]
    fn every_schema_param_is_filled_from_defaults_fixed_and_searched() {
        let trials = plan(GRID);
        let params = &trials[0].params;
        let names: Vec<&str> = params.0.keys().map(String::as_str).collect();
        assert_eq!(names, ["double", "episodes", "epsilon", "gamma", "lr", "optimizer"]);
        assert_eq!(params.i64("episodes").unwrap(), 500, "fixed setting overrides the default");
        assert_eq!(params.f64("gamma").unwrap(), 0.99, "default");
        assert!(!params.bool("double").unwrap());
        assert_eq!(params.schedule("epsilon").unwrap(), &EpsilonSchedule::LAB_ADAPTIVE);
        assert_eq!(params.f64("lr").unwrap(), 0.01, "searched value overrides the default");
    }

    #[test]
    fn grid_size_counts_configurations() {
        assert_eq!(grid_size(&parse(GRID).unwrap()), Some(6));
        let random = RANDOM.replace("max_trials: 41", "max_trials: 4");
        assert_eq!(grid_size(&parse(&random).unwrap()), None, "a continuous distribution has no size");
    }

    const RANDOM: &str = "\
name: toy-random
job: {kind: toy}
method: random
metric: {name: reward, goal: maximize}
parameters:
  lr: {distribution: log_uniform, min: 0.0001, max: 0.1}
  gamma: {distribution: uniform, min: 0.9, max: 0.999}
  episodes: {distribution: int_uniform, min: 1, max: 3}
  optimizer: {values: [adam, sgd]}
seeds: 2
max_trials: 41
";

    #[test]
    fn random_is_deterministic_and_within_bounds() {
        let trials = plan(RANDOM);
        assert_eq!(trials.len(), 41, "21 configs of 2 seeds, cut at 41");
        assert_eq!(trials, plan(RANDOM));
        assert_ne!(trials, plan(&format!("{RANDOM}random_seed: 1\n")));
        let mut episodes_seen = HashSet::new();
        for trial in &trials {
            let lr = trial.params.f64("lr").unwrap();
            assert!((0.0001..=0.1).contains(&lr), "lr {lr}");
            let gamma = trial.params.f64("gamma").unwrap();
            assert!((0.9..=0.999).contains(&gamma), "gamma {gamma}");
            episodes_seen.insert(trial.params.i64("episodes").unwrap());
        }
        assert_eq!(episodes_seen, HashSet::from([1, 2, 3]), "int_uniform includes both bounds");
        // log_uniform spreads over decades rather than crowding near the top.
        assert!(trials.iter().any(|trial| trial.params.f64("lr").unwrap() < 0.01));
        let configs: HashSet<&ConfigId> = trials.iter().map(|trial| &trial.config_id).collect();
        assert_eq!(configs.len(), 21);
        assert_eq!(trials[0].config_id, trials[1].config_id);
        assert_eq!((trials[0].seed, trials[1].seed), (0, 1));
    }

    #[test]
    fn random_never_repeats_a_config_of_a_small_space() {
        let text = "\
name: toy-small
job: {kind: toy}
method: random
metric: {name: reward, goal: maximize}
parameters:
  optimizer: {values: [adam, sgd]}
  double: {values: [true, false]}
max_trials: 100
";
        let trials = plan(text);
        assert_eq!(trials.len(), 4, "the whole space, each config once");
        let configs: HashSet<&ConfigId> = trials.iter().map(|trial| &trial.config_id).collect();
        assert_eq!(configs.len(), 4);
    }
}
