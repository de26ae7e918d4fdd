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
    let mut header = vec!["rank".to_string()];
    header.extend(keys.iter().cloned());
    header.push(format!("{} ({}) mean ± std", best.metric, best.goal));
    header.extend(["95% CI", "median", "min", "max", "n"].map(String::from));
    if let Some(target) = best.target {
        header.push(format!("reached {target}"));
    }
    let mut t = table(header.iter().map(String::as_str).collect());
    let right = |text: String| Cell::new(text).set_alignment(CellAlignment::Right);
    for (i, (config, params)) in best.configs.iter().zip(&sets).enumerate() {
        let mut row = vec![Cell::new(i + 1)];
        for key in &keys {
            row.push(Cell::new(params.get(key).map(value_text).unwrap_or_default()));
        }
        row.push(right(format!("{} ± {}", number(config.mean), number(config.std))));
        row.push(right(if config.n > 1 {
            format!("[{}, {}]", number(config.ci_low), number(config.ci_high))
        } else {
            "-".into()
        }));
        row.push(right(number(config.median)));
        row.push(right(number(config.min)));
        row.push(right(number(config.max)));
        row.push(Cell::new(format!("{}/{}", config.n, config.seeds_total)));
        if best.target.is_some() {
            let reached = config.reached.unwrap_or(0);
            row.push(right(format!(
                "{reached}/{} ({:.0}%)",
                config.n,
                100.0 * reached as f64 / config.n.max(1) as f64
            )));
        }
        t.add_row(row);
    }
    t
}

/// The same rows as [`best_table`], as CSV with every parameter in its own column.
pub fn best_csv(best: &BestResponse) -> String {
    let sets: Vec<_> = best.configs.iter().map(|c| params_of(&c.params_json)).collect();
    let keys: Vec<String> = sets.iter().flat_map(|s| s.keys().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
    let field = |text: String| {
        if text.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text
        }
    };
    let mut header = vec!["rank".to_string(), "config_id".to_string()];
    header.extend(keys.iter().cloned());
    header.extend(
        ["n", "seeds_total", "mean", "std", "ci_low", "ci_high", "median", "min", "max", "reached", "reached_share"]
            .map(String::from),
    );
    let mut out = header.into_iter().map(field).collect::<Vec<_>>().join(",") + "\n";
    for (i, (c, params)) in best.configs.iter().zip(&sets).enumerate() {
        let mut row = vec![(i + 1).to_string(), c.config_id.clone()];
        row.extend(keys.iter().map(|k| params.get(k).map(value_text).unwrap_or_default()));
        row.extend([c.n.to_string(), c.seeds_total.to_string()]);
        row.extend([c.mean, c.std, c.ci_low, c.ci_high, c.median, c.min, c.max].map(|v| v.to_string()));
        row.push(c.reached.map(|r| r.to_string()).unwrap_or_default());
        row.push(c.reached.map(|r| (r as f64 / c.n.max(1) as f64).to_string()).unwrap_or_default());
        out += &(row.into_iter().map(field).collect::<Vec<_>>().join(",") + "\n");
    }
    out
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
