//! Tables for people: sweep status, trials, and the best configurations.

use std::collections::{BTreeMap, BTreeSet};

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use serde_json::Value;
use sweep_shared::params::ParamValue;
use sweep_shared::proto::{BestResponse, SweepStatus, TrialInfo};

fn table(header: Vec<&str>) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header);
    t
}

fn number(x: f64) -> String {
    if x.abs() >= 1e5 || (x != 0.0 && x.abs() < 1e-3) {
        format!("{x:.4e}")
    } else {
        format!("{x:.4}")
    }
}

fn params_of(json: &str) -> BTreeMap<String, Value> {
    serde_json::from_str(json).unwrap_or_default()
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(_) => match serde_json::from_value::<ParamValue>(v.clone()) {
            Ok(value) => value.to_string(),
            Err(_) => v.to_string(),
        },
        other => other.to_string(),
    }
}

/// The parameter names whose values differ between the given parameter sets (all of them when
/// there is only one set).
fn varying_keys(sets: &[BTreeMap<String, Value>]) -> Vec<String> {
    let all: BTreeSet<&String> = sets.iter().flat_map(|s| s.keys()).collect();
    if sets.len() < 2 {
        return all.into_iter().cloned().collect();
    }
    all.into_iter().filter(|k| sets.iter().any(|s| s.get(*k) != sets[0].get(*k))).cloned().collect()
}

pub fn best_table(best: &BestResponse) -> Table {
    let sets: Vec<_> = best.configs.iter().map(|c| params_of(&c.params_json)).collect();
    let keys = varying_keys(&sets);
    let mut header = vec!["rank"];
    header.extend(keys.iter().map(String::as_str));
    let objective = format!("{} ({}) mean ± std", best.metric, best.goal);
    header.extend([objective.as_str(), "n", "min", "max"]);
    let mut t = table(header);
    for (i, (config, params)) in best.configs.iter().zip(&sets).enumerate() {
        let mut row = vec![Cell::new(i + 1)];
        for key in &keys {
            row.push(Cell::new(params.get(key).map(value_text).unwrap_or_default()));
        }
        row.push(
            Cell::new(format!("{} ± {}", number(config.mean), number(config.std))).set_alignment(CellAlignment::Right),
        );
        row.push(Cell::new(format!("{}/{}", config.n, config.seeds_total)));
        row.push(Cell::new(number(config.min)));
        row.push(Cell::new(number(config.max)));
        t.add_row(row);
    }
    t
}

pub fn status_table(sweeps: &[SweepStatus]) -> Table {
    let mut t = table(vec!["sweep", "job", "metric", "done", "running", "pending", "failed", "best", "output"]);
    for s in sweeps {
        t.add_row(vec![
            s.sweep_id.clone(),
            s.job_kind.clone(),
            format!("{} ({})", s.metric, s.goal),
            format!("{}/{}", s.completed, s.total),
            s.running.to_string(),
            s.pending.to_string(),
            s.failed.to_string(),
            s.best_objective.map(number).unwrap_or_else(|| "-".into()),
            s.output_dir.clone(),
        ]);
    }
    t
}

pub fn trials_table(trials: &[TrialInfo]) -> Table {
    let sets: Vec<_> = trials.iter().map(|t| params_of(&t.params_json)).collect();
    let keys = varying_keys(&sets);
    let mut header = vec!["trial"];
    header.extend(keys.iter().map(String::as_str));
    header.extend(["seed", "status", "attempts", "resumed at", "objective", "seconds", "error / last event"]);
    let with_artifacts = trials.iter().any(|t| !t.artifacts.is_empty());
    if with_artifacts {
        header.push("latest artifact");
    }
    let mut t = table(header);
    for (trial, params) in trials.iter().zip(&sets) {
        let mut row = vec![trial.trial_id.clone()];
        row.extend(keys.iter().map(|k| params.get(k).map(value_text).unwrap_or_default()));
        row.extend([
            trial.seed.to_string(),
            trial.status.clone(),
            trial.attempts.to_string(),
            if trial.resumed_from > 0 { trial.resumed_from.to_string() } else { "-".into() },
            trial.objective.map(number).unwrap_or_else(|| "-".into()),
            format!("{:.1}", trial.wall_seconds),
            if trial.error.is_empty() { trial.events.last().cloned().unwrap_or_default() } else { trial.error.clone() }
                .chars()
                .take(80)
                .collect(),
        ]);
        if with_artifacts {
            // The newest by step (ties: the last name), e.g. the last epoch's sample grid.
            let latest = trial.artifacts.iter().max_by_key(|a| a.step);
            row.push(latest.map(|a| a.path.clone()).unwrap_or_else(|| "-".into()));
        }
        t.add_row(row);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_varying_parameters_become_columns() {
        let a = params_of(r#"{"lr":0.1,"gamma":0.99,"epsilon":{"schedule":"constant","value":0.1}}"#);
        let b = params_of(r#"{"lr":0.2,"gamma":0.99,"epsilon":{"schedule":"constant","value":0.1}}"#);
        assert_eq!(varying_keys(&[a.clone(), b]), vec!["lr".to_string()]);
        assert_eq!(varying_keys(std::slice::from_ref(&a)).len(), 3);
        assert_eq!(value_text(&a["epsilon"]), "constant(0.1)");
    }
}
