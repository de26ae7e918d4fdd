//! The IMDB sentiment job through real processes: a coordinator, workers reading the shared data
//! set, Parquet out; and a worker killed mid-trial whose LSTM resumes from its epoch checkpoint.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// `SWEEP_DATA_DIR`, else `../shared/data` beside the project (as in CI).
fn data_dir() -> PathBuf {
    std::env::var_os("SWEEP_DATA_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/data"))
}

/// A worker reading IMDB from the shared directory, caching its tokens under `dir`.
fn nlp_worker(url: &str, dir: &Path, name: &str) -> Worker {
    let data = data_dir();
    assert!(data.join("imdb/plain_text").is_dir(), "IMDB not at {}: set SWEEP_DATA_DIR", data.display());
    let cache = dir.join("cache");
    Worker::start(
        url,
        dir,
        name,
        &["--data-dir", data.to_str().unwrap(), "--cache-dir", cache.to_str().unwrap(), "--offline"],
    )
}

/// Two small models on a few hundred reviews: seconds per trial.
const SMALL: &str = r#"
name: imdb-small
job:
  kind: imdb-sentiment
  epochs: 3
  batch_size: 32
  maxlen: 100
  embed: 16
  hidden: 16
  train_samples: 600
  test_samples: 300
  log_every: 5
method: grid
metric:
  name: val_acc
  goal: maximize
  summary: max
parameters:
  model:
    values: [dense, lstm]
seeds: 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_imdb_sweep_runs_on_two_workers_into_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path(), &[]);
    let _a = nlp_worker(&coordinator.url, dir.path(), "a");
    let _b = nlp_worker(&coordinator.url, dir.path(), "b");
    let mut client = client(&coordinator.url).await;
    submit(&mut client, SMALL).await;
    let status = wait_finished(&mut client, "imdb-small", Duration::from_secs(300)).await;
    assert_eq!((status.completed, status.failed), (2, 0), "{status:?}");

    let trials = trials(&mut client, "imdb-small").await;
    let (_, metrics_dir, _) = export(&mut client, "imdb-small").await;
    let rows = read_metrics(&metrics_dir);
    let counts = count_by_trial_and_name(&rows);
    // 480 training reviews in batches of 32: 15 batches an epoch, 45 in all, batch_loss every 5.
    for t in &trials {
        for (name, n) in [
            ("loss", 3),
            ("acc", 3),
            ("val_loss", 3),
            ("val_acc", 3),
            ("epoch", 3),
            ("test_acc", 1),
            ("test_loss", 1),
            ("batch_loss", 9),
        ] {
            assert_eq!(counts.get(&(t.trial_id.clone(), name.to_string())), Some(&n), "{name} of {}", t.params_json);
        }
        let val: Vec<f64> =
            rows.iter().filter(|r| r.trial_id == t.trial_id && r.name == "val_acc").map(|r| r.value).collect();
        let best = val.iter().cloned().fold(f64::MIN, f64::max);
        assert_eq!(t.objective, Some(best), "the objective is the best val_acc");
        let epoch_steps: Vec<i64> =
            rows.iter().filter(|r| r.trial_id == t.trial_id && r.name == "epoch").map(|r| r.step).collect();
        assert_eq!(epoch_steps.iter().copied().max(), Some(45), "epochs end at global batch steps");
        let test_acc = rows.iter().find(|r| r.trial_id == t.trial_id && r.name == "test_acc").unwrap().value;
        assert!((0.0..=1.0).contains(&test_acc));
    }
}

/// One LSTM trial long enough (several seconds an epoch) to be killed between checkpoints.
const LONG: &str = r#"
name: imdb-kill
job:
  kind: imdb-sentiment
  model: lstm
  epochs: 4
  batch_size: 64
  maxlen: 200
  embed: 16
  hidden: 16
  train_samples: 5000
  test_samples: 500
  log_every: 10
method: grid
metric:
  name: val_acc
  goal: maximize
  summary: last
parameters:
  lr:
    values: [0.002]
seeds: 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lstm_trial_resumes_from_its_epoch_checkpoint_with_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path(), &["--lease-ttl", "2s"]);
    let doomed = nlp_worker(&coordinator.url, dir.path(), "doomed");
    let mut client = client(&coordinator.url).await;
    submit(&mut client, LONG).await;
    let trial = wait_until(Duration::from_secs(120), "the trial's first epoch checkpoint", || {
        let mut client = client.clone();
        let coordinator = &coordinator;
        async move {
            let all = trials(&mut client, "imdb-kill").await;
            let t = all.into_iter().find(|t| t.status == "running")?;
            (!coordinator.checkpoint_files(&t.trial_id).is_empty()).then_some(t.trial_id)
        }
    })
    .await;
    doomed.signal(libc::SIGKILL);
    let _survivor = nlp_worker(&coordinator.url, dir.path(), "survivor");
    let status = wait_finished(&mut client, "imdb-kill", Duration::from_secs(300)).await;
    assert_eq!((status.completed, status.failed), (1, 0), "{status:?}");
    let run_trials = trials(&mut client, "imdb-kill").await;
    let info = run_trials.iter().find(|t| t.trial_id == trial).unwrap();
    assert_eq!(info.attempts, 2, "{info:?}");
    assert!(info.resumed_from > 0, "the second attempt started over instead of resuming: {info:?}");
    let (_, metrics_dir, _) = export(&mut client, "imdb-kill").await;
    let rows = read_metrics(&metrics_dir);
    assert_resumed_rows_come_from_the_right_attempts(info, &rows);
    let mut per_key: HashMap<(i64, String), usize> = HashMap::new();
    for r in &rows {
        *per_key.entry((r.step, r.name.clone())).or_default() += 1;
    }
    assert!(per_key.values().all(|&n| n == 1), "a point is stored twice");

    // The same trial without interruption: the same numbers, bit for bit.
    submit(&mut client, &LONG.replace("name: imdb-kill", "name: imdb-control")).await;
    wait_finished(&mut client, "imdb-control", Duration::from_secs(300)).await;
    let control_trials = trials(&mut client, "imdb-control").await;
    let (_, control_dir, _) = export(&mut client, "imdb-control").await;
    assert_same_values(
        &values_by_config(&run_trials, &rows),
        &values_by_config(&control_trials, &read_metrics(&control_dir)),
        "metrics of the resumed trial against the uninterrupted one",
    );
}
