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
    // After the resume, exactly one value per (trial, step, name): the killed attempt's points
    // past its checkpoint are superseded, the ones before it kept.
    let keys: HashSet<(String, i64, String)> =
        rows.iter().map(|r| (r.trial_id.clone(), r.step, r.name.clone())).collect();
    assert_eq!(keys.len(), rows.len(), "a metric value is stored twice");
    for t in &trials {
        let steps: HashSet<i64> = rows.iter().filter(|r| r.trial_id == t.trial_id).map(|r| r.step).collect();
        assert_eq!(steps, (1..=40).collect::<HashSet<_>>(), "steps of {}", t.trial_id);
    }
    assert!(victim_info.resumed_from > 0, "the rerun did not resume from a checkpoint: {victim_info:?}");
    let from_first: Vec<&MetricRow> = rows.iter().filter(|r| r.trial_id == victim && r.attempt == 1).collect();
    assert_eq!(from_first.len() as u64, victim_info.resumed_from, "points kept from the killed attempt");

    // The same trials run without interruption give the same numbers, bit for bit.
    submit(&mut client, &SPEC.replace("name: crash", "name: control")).await;
    wait_finished(&mut client, "control", Duration::from_secs(90)).await;
    let (_, control_dir, _) = export(&mut client, "control").await;
    let control_trials = common::trials(&mut client, "control").await;
    let by_config = |trials: &[sweep_shared::proto::TrialInfo], rows: &[MetricRow]| {
        let mut out: Vec<(String, u64, i64, u64)> = rows
            .iter()
            .map(|r| {
                let t = trials.iter().find(|t| t.trial_id == r.trial_id).unwrap();
                (t.params_json.clone(), t.seed, r.step, r.value.to_bits())
            })
            .collect();
        out.sort();
        out
    };
    assert_eq!(by_config(&trials, &rows), by_config(&control_trials, &read_metrics(&control_dir)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_running_trials_back_without_spending_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    // One attempt allowed: only a hand-back that does not count lets the trial run again.
    let coordinator = Coordinator::start(dir.path(), &["--lease-ttl", "30s", "--max-attempts", "1"]);
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
    assert_eq!((trial.attempts, trial.handbacks), (1, 1), "{trial:?}");

    let _other = Worker::start(&coordinator.url, dir.path(), "other", &["--slots", "2"]);
    let status = wait_finished(&mut client, "crash", Duration::from_secs(60)).await;
    assert_eq!((status.completed, status.failed), (4, 0), "{status:?}");
}
