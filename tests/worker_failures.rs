//! Workers that die or are told to stop: their trials run again elsewhere, nothing is doubled.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

/// Four trials of 40 steps at 50 ms each (about 2 s per trial).
const SPEC: &str = r#"
name: crash
job:
  kind: quadratic
  steps: 40
  sleep_ms: 50
  noise: 1.0
method: grid
metric:
  name: loss
  goal: minimize
parameters:
  x:
    values: [0.0, 0.5]
seeds: 2
"#;

async fn running_trial(
    client: &mut sweep_shared::proto::sweep_service_client::SweepServiceClient<tonic::transport::Channel>,
) -> String {
    wait_until(Duration::from_secs(30), "a running trial", || {
        let mut client = client.clone();
        async move {
            let all = trials(&mut client, "crash").await;
            all.into_iter().find(|t| t.status == "running").map(|t| t.trial_id)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_worker_loses_its_lease_and_the_trial_completes_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path(), &["--lease-ttl", "2s"]);
    let doomed = Worker::start(&coordinator.url, dir.path(), "doomed", &[]);
    let mut client = client(&coordinator.url).await;
    submit(&mut client, SPEC).await;
    let victim = running_trial(&mut client).await;
    // Let it report some points, then kill it without warning.
    tokio::time::sleep(Duration::from_millis(700)).await;
    doomed.signal(libc::SIGKILL);
    let _survivor = Worker::start(&coordinator.url, dir.path(), "survivor", &[]);

    let status = wait_finished(&mut client, "crash", Duration::from_secs(90)).await;
    assert_eq!((status.completed, status.failed), (4, 0), "{status:?}");
    let trials = trials(&mut client, "crash").await;
    let victim_info = trials.iter().find(|t| t.trial_id == victim).unwrap();
    assert_eq!(victim_info.attempts, 2, "the killed trial ran again: {victim_info:?}");

    let (_, metrics_dir, _) = export(&mut client, "crash").await;
    let rows = read_metrics(&metrics_dir);
    // No row is doubled within an attempt.
    let keys: HashSet<(String, i32, i64, String)> =
        rows.iter().map(|r| (r.trial_id.clone(), r.attempt, r.step, r.name.clone())).collect();
    assert_eq!(keys.len(), rows.len(), "a metric row was stored twice");
    // The final attempt of every trial holds all 40 steps.
    for t in &trials {
        let last: Vec<&MetricRow> =
            rows.iter().filter(|r| r.trial_id == t.trial_id && r.attempt == t.attempts as i32).collect();
        assert_eq!(last.len(), 40, "rows of the last attempt of {}", t.trial_id);
    }
    // The killed attempt reported some steps before dying; the rerun from scratch repeats them
    // with the same seed, so the same values.
    let first: Vec<&MetricRow> = rows.iter().filter(|r| r.trial_id == victim && r.attempt == 1).collect();
    assert!(!first.is_empty(), "the killed attempt stored no points");
    for row in first {
        let again = rows.iter().find(|r| r.trial_id == victim && r.attempt == 2 && r.step == row.step).unwrap();
        assert_eq!(again.value.to_bits(), row.value.to_bits(), "step {} differs after the rerun", row.step);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_running_trials_back_without_spending_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path(), &["--lease-ttl", "30s"]);
    let mut leaving = Worker::start(&coordinator.url, dir.path(), "leaving", &[]);
    let mut client = client(&coordinator.url).await;
    submit(&mut client, SPEC).await;
    let handed = running_trial(&mut client).await;
    leaving.signal(libc::SIGTERM);
    let exit = wait_until(Duration::from_secs(20), "the worker to exit", || {
        let status = leaving.child.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    assert!(exit.success(), "worker exit: {exit:?}\n{}", leaving.log_text());
    // With a 30 s lease, only a hand-back makes the trial pending this fast.
    let after = trials(&mut client, "crash").await;
    let trial = after.iter().find(|t| t.trial_id == handed).unwrap();
    assert_eq!(trial.status, "pending", "{trial:?}");
    assert_eq!(trial.attempts, 0, "a hand-back must not count as an attempt: {trial:?}");

    let _other = Worker::start(&coordinator.url, dir.path(), "other", &["--slots", "2"]);
    let status = wait_finished(&mut client, "crash", Duration::from_secs(60)).await;
    assert_eq!(status.completed, 4, "{status:?}");
}
