//! A coordinator and two worker processes on a real TCP port run a Q-table sweep end to end.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use arrow_schema::DataType;
use common::*;

const EPISODES: usize = 300;

fn spec() -> String {
    format!(
        r#"
name: e2e-qtable
job:
  kind: cartpole-qtable
  episodes: {EPISODES}
  report_every: 100
method: grid
metric:
  name: mear
  goal: maximize
parameters:
  lr:
    values: [0.05, 0.1]
  tie_break:
    values: [random, left]
  epsilon:
    value: {{schedule: exponential, start: 1.0, decay: 0.99, min: 0.01}}
seeds: 2
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_run_an_eight_trial_sweep_into_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path(), &[]);
    let _a = Worker::start(&coordinator.url, dir.path(), "worker-a", &[]);
    let _b = Worker::start(&coordinator.url, dir.path(), "worker-b", &[]);
    let mut client = client(&coordinator.url).await;
    let sweep = submit(&mut client, &spec()).await;

    let status = wait_finished(&mut client, &sweep, Duration::from_secs(120)).await;
    assert_eq!((status.total, status.completed, status.failed), (8, 8, 0), "{status:?}");
    let trials = trials(&mut client, &sweep).await;
    assert!(trials.iter().all(|t| t.status == "completed" && t.attempts == 1 && t.objective.is_some()), "{trials:#?}");

    let (trials_path, metrics_dir, metric_rows) = export(&mut client, &sweep).await;

    // trials.parquet: 8 rows, one typed column per parameter.
    let batches = read_parquet(&trials_path);
    assert_eq!(column_len(&batches), 8);
    assert_eq!(column_type(&batches, "lr"), DataType::Float64);
    assert_eq!(column_type(&batches, "episodes"), DataType::Int64);
    assert_eq!(column_type(&batches, "tie_break"), DataType::Utf8);
    assert_eq!(column_type(&batches, "epsilon"), DataType::Utf8);
    assert_eq!(column_type(&batches, "objective"), DataType::Float64);
    let ids: HashSet<String> = strings(&batches, "trial_id").into_iter().collect();
    assert_eq!(ids, trials.iter().map(|t| t.trial_id.clone()).collect::<HashSet<_>>());
    assert!(strings(&batches, "status").iter().all(|s| s == "completed"));

    // metrics parts: exactly `episodes` reward rows per trial, none doubled, none missing.
    let rows = read_metrics(&metrics_dir);
    assert_eq!(rows.len() as u64, metric_rows);
    let counts = count_by_trial_and_name(&rows);
    for trial in &trials {
        let id = trial.trial_id.clone();
        assert_eq!(counts.get(&(id.clone(), "reward".into())), Some(&EPISODES), "reward rows of {id}");
        assert_eq!(counts.get(&(id.clone(), "epsilon".into())), Some(&EPISODES), "epsilon rows of {id}");
        assert_eq!(counts.get(&(id.clone(), "mear".into())), Some(&(EPISODES / 100)), "mear rows of {id}");
        let steps: Vec<i64> = rows.iter().filter(|r| r.trial_id == id && r.name == "reward").map(|r| r.step).collect();
        let unique: HashSet<i64> = steps.iter().copied().collect();
        assert_eq!(unique, (1..=EPISODES as i64).collect::<HashSet<_>>(), "reward steps of {id}");
    }
    assert_eq!(rows.len(), 8 * (2 * EPISODES + 2 * (EPISODES / 100)));

    // The objective is the last MEAR the trial reported.
    for trial in &trials {
        let last_mear = rows
            .iter()
            .filter(|r| r.trial_id == trial.trial_id && r.name == "mear")
            .max_by_key(|r| r.step)
            .map(|r| r.value);
        assert_eq!(trial.objective, last_mear, "objective of {}", trial.trial_id);
    }

    // Resubmitting the same spec is a no-op: no trial runs twice.
    let again = client
        .submit(sweep_shared::proto::SubmitRequest {
            spec_yaml: spec(),
            source_name: "test.yaml".into(),
            extend: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.existing);
    assert_eq!(status_after(&mut client, &sweep).await, 8);
}

async fn status_after(
    client: &mut sweep_shared::proto::sweep_service_client::SweepServiceClient<tonic::transport::Channel>,
    sweep: &str,
) -> u64 {
    status(client, sweep).await.completed
}

/// Same seed, same numbers: two sweeps with identical trials report identical metric values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_gives_identical_metrics_across_workers() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path(), &[]);
    let _a = Worker::start(&coordinator.url, dir.path(), "worker-a", &["--slots", "2"]);
    let mut client = client(&coordinator.url).await;
    let spec_a = spec().replace("name: e2e-qtable", "name: twin-a");
    let spec_b = spec().replace("name: e2e-qtable", "name: twin-b");
    let a = submit(&mut client, &spec_a).await;
    let b = submit(&mut client, &spec_b).await;
    wait_finished(&mut client, &a, Duration::from_secs(120)).await;
    wait_finished(&mut client, &b, Duration::from_secs(120)).await;
    let (_, dir_a, _) = export(&mut client, &a).await;
    let (_, dir_b, _) = export(&mut client, &b).await;
    let series = |dir: &std::path::Path, trials: &[sweep_shared::proto::TrialInfo]| {
        let rows = read_metrics(dir);
        let mut out: Vec<(String, u64, i64, String, u64)> = rows
            .iter()
            .map(|r| {
                let t = trials.iter().find(|t| t.trial_id == r.trial_id).unwrap();
                (t.params_json.clone(), t.seed, r.step, r.name.clone(), r.value.to_bits())
            })
            .collect();
        out.sort();
        out
    };
    let trials_a = trials(&mut client, &a).await;
    let trials_b = trials(&mut client, &b).await;
    assert_eq!(series(&dir_a, &trials_a), series(&dir_b, &trials_b));
}

/// Artifacts a job stores reach the coordinator over gRPC, land next to the sweep's output and
/// are listed with their trial; a later file of the same name would replace, not duplicate, one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_stored_and_listed_with_their_trial() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path(), &[]);
    let _w = Worker::start(&coordinator.url, dir.path(), "worker-a", &[]);
    let mut client = client(&coordinator.url).await;
    let spec = r#"
name: e2e-artifacts
job:
  kind: quadratic
  steps: 6
  artifact_every: 2
method: grid
metric:
  name: loss
  goal: minimize
parameters:
  x:
    values: [0.0, 1.0]
"#;
    let sweep = submit(&mut client, spec).await;
    let status = wait_finished(&mut client, &sweep, Duration::from_secs(60)).await;
    assert_eq!((status.completed, status.failed), (2, 0), "{status:?}");
    for trial in trials(&mut client, &sweep).await {
        let listed: Vec<(String, u64)> = trial.artifacts.iter().map(|a| (a.name.clone(), a.step)).collect();
        assert_eq!(listed, vec![("step-2.txt".into(), 2), ("step-4.txt".into(), 4), ("step-6.txt".into(), 6)]);
        for a in &trial.artifacts {
            let path = std::path::Path::new(&a.path);
            assert!(path.starts_with(&status.output_dir), "{} lies under {}", a.path, status.output_dir);
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.starts_with(&format!("step {} loss ", a.step)), "{text}");
            assert_eq!(a.bytes, text.len() as u64);
        }
    }
}
