//! The DQN and best-run statistics as a user meets them: a small `cartpole-dqn` sweep through
//! `sweep run` (real worker processes), then `sweep best --state-dir` (table, JSON and CSV, each
//! ranking), `configs.parquet` and `sweep report`, all checked against the trials' own objectives
//! read back from `trials.parquet`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use arrow_array::{Array, Float64Array, Int64Array};
use common::*;

const SPEC: &str = "\
name: dqn-stats
job:
  kind: cartpole-dqn
  max_episodes: 30
  checkpoint_every: 10
method: grid
metric:
  name: mean100
  goal: maximize
  summary: last
  target: 14
parameters:
  lr:
    values: [0.001, 0.01]
seeds: 3
";

fn sweep(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(sweep_bin()).current_dir(dir).args(args).output().expect("running sweep");
    assert!(
        out.status.success(),
        "sweep {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn floats(batches: &[arrow_array::RecordBatch], name: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for b in batches {
        let col = b.column_by_name(name).unwrap_or_else(|| panic!("column {name}"));
        let col = col.as_any().downcast_ref::<Float64Array>().unwrap_or_else(|| panic!("{name} is float64"));
        out.extend((0..col.len()).map(|i| col.value(i)));
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[test]
fn dqn_sweep_ranks_configurations_over_seeds_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dqn.yaml"), SPEC).unwrap();
    sweep(dir.path(), &["run", "dqn.yaml", "--workers", "2"]);
    let results = dir.path().join("sweep-results/dqn-stats");

    // Every trial played its 30 episodes and reported each metric once per episode.
    let metrics = read_metrics(&results.join("metrics"));
    let counts = count_by_trial_and_name(&metrics);
    let trials = read_parquet(&results.join("trials.parquet"));
    let ids = strings(&trials, "trial_id");
    assert_eq!(ids.len(), 6);
    for id in &ids {
        for name in ["score", "mean100", "epsilon"] {
            assert_eq!(counts.get(&(id.clone(), name.to_string())), Some(&30), "{id} {name}");
        }
    }

    // The objectives by configuration, from the trials themselves.
    let configs = strings(&trials, "config_id");
    let objectives = floats(&trials, "objective");
    let mut by_config: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (config, objective) in configs.iter().zip(&objectives) {
        by_config.entry(config.clone()).or_default().push(*objective);
    }
    assert_eq!(by_config.len(), 2);

    // sweep best --json --by median agrees with them and ranks by the median.
    let out = sweep(dir.path(), &["best", "dqn-stats", "--state-dir", "sweep-state", "--json", "--by", "median"]);
    let best: serde_json::Value = serde_json::from_slice(&out.stdout).expect("best --json prints JSON");
    assert_eq!((best["metric"].as_str(), best["rank_by"].as_str()), (Some("mean100"), Some("median")));
    assert_eq!(best["target"].as_f64(), Some(14.0));
    let ranked = best["configs"].as_array().expect("configs");
    assert_eq!(ranked.len(), 2);
    for c in ranked {
        let values = &by_config[c["config_id"].as_str().unwrap()];
        let mean = values.iter().sum::<f64>() / 3.0;
        assert_eq!(c["n"].as_u64(), Some(3));
        assert!((c["mean"].as_f64().unwrap() - mean).abs() < 1e-9, "{c}");
        assert_eq!(c["median"].as_f64(), Some(median(values.clone())));
        let reached = values.iter().filter(|v| **v >= 14.0).count() as u64;
        assert_eq!(c["reached"].as_u64(), Some(reached), "{c}");
        assert!(c["ci_low"].as_f64().unwrap() <= mean && mean <= c["ci_high"].as_f64().unwrap());
    }
    assert!(ranked[0]["median"].as_f64() >= ranked[1]["median"].as_f64());

    // The table and the CSV show the same configurations.
    let table =
        String::from_utf8(sweep(dir.path(), &["best", "dqn-stats", "--state-dir", "sweep-state"]).stdout).unwrap();
    assert!(table.contains("95% CI") && table.contains("reached 14"), "{table}");
    let csv =
        String::from_utf8(sweep(dir.path(), &["best", "dqn-stats", "--state-dir", "sweep-state", "--csv"]).stdout)
            .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[0].starts_with("rank,config_id,")
            && lines[0].contains(",lr,")
            && lines[0].ends_with("reached,reached_share")
    );

    // configs.parquet holds the same statistics, ranked by the mean.
    let table = read_parquet(&results.join("configs.parquet"));
    let means = floats(&table, "mean");
    assert!(means[0] >= means[1]);
    for (config, mean) in strings(&table, "config_id").iter().zip(&means) {
        let values = &by_config[config];
        assert!((mean - values.iter().sum::<f64>() / 3.0).abs() < 1e-9);
    }
    let n = table[0].column_by_name("n").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec();
    assert_eq!(n, [3, 3]);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("sweep.json")).unwrap()).unwrap();
    assert_eq!((meta["job_kind"].as_str(), meta["metric"]["goal"].as_str()), (Some("cartpole-dqn"), Some("maximize")));

    // The report draws the DQN curves.
    sweep(dir.path(), &["report", "dqn-stats"]);
    let report = results.join("report");
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    for png in ["dqn_score.png", "objective_vs_lr.png"] {
        let bytes = std::fs::read(report.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(bytes.len() > 1000 && bytes.starts_with(b"\x89PNG"), "{png}");
        assert!(html.contains(&format!("src=\"{png}\"")), "the page shows {png}");
    }

    // A wrong ranking name is refused by name.
    let out = Command::new(sweep_bin())
        .current_dir(dir.path())
        .args(["best", "dqn-stats", "--state-dir", "sweep-state", "--by", "best"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mean, median, bound"));
}
