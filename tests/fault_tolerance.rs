//! Faults a sweep must survive without changing a number: workers killed at random points, a
//! coordinator killed and restarted on its state dir, a frozen worker that wakes up after losing
//! its lease, and checkpoint files damaged on disk. Each run is compared, bit for bit, with an
//! uninterrupted control sweep of the same spec under another name.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sweep_shared::proto::sweep_service_client::SweepServiceClient;
use sweep_shared::proto::TrialInfo;
use tonic::transport::Channel;

/// A quadratic sweep: `seeds` seeds of x in {0.0, 0.5}, `steps` steps of `sleep_ms` each, a
/// checkpoint every `checkpoint_every` steps, objective the minimum loss (so that an objective
/// state lost at a resume shows).
fn quadratic_spec(name: &str, seeds: u32, steps: u32, sleep_ms: u32, checkpoint_every: u32) -> String {
    format!(
        r#"
name: {name}
job:
  kind: quadratic
  steps: {steps}
  sleep_ms: {sleep_ms}
  noise: 1.0
  checkpoint_every: {checkpoint_every}
method: grid
metric:
  name: loss
  goal: minimize
  summary: min
parameters:
  x:
    values: [0.0, 0.5]
seeds: {seeds}
"#
    )
}

/// Runs `spec` renamed to `control` on the coordinator with a fresh worker and returns its trials
/// and metric rows.
async fn control_run(
    client: &mut SweepServiceClient<Channel>,
    coordinator: &Coordinator,
    spec: &str,
    from: &str,
    slots: &str,
) -> (Vec<TrialInfo>, Vec<MetricRow>) {
    let _worker = Worker::start(&coordinator.url, &coordinator.dir(), "control-worker", &["--slots", slots]);
    let spec = spec.replace(&format!("name: {from}"), "name: control");
    submit(client, &spec).await;
    let status = wait_finished(client, "control", Duration::from_secs(60)).await;
    assert_eq!((status.completed, status.failed), (status.total, 0), "control sweep: {status:?}");
    let control_trials = trials(client, "control").await;
    assert!(control_trials.iter().all(|t| t.attempts == 1), "the control ran uninterrupted: {control_trials:#?}");
    let (_, dir, _) = export(client, "control").await;
    (control_trials, read_metrics(&dir))
}

/// The run's metric values and objectives equal the control's, bit for bit, configuration by
/// configuration.
fn assert_matches_control(run: &[TrialInfo], rows: &[MetricRow], control: &[TrialInfo], control_rows: &[MetricRow]) {
    assert_same_values(&values_by_config(run, rows), &values_by_config(control, control_rows), "metric values");
    assert_same_values(&objectives_by_config(run), &objectives_by_config(control), "objectives");
}

/// Waits until every trial of the sweep is pending (the leases of a killed worker expired).
async fn wait_all_pending(client: &mut SweepServiceClient<Channel>, sweep: &str) {
    wait_until(Duration::from_secs(20), "the killed worker's leases to expire", || {
        let mut client = client.clone();
        async move { trials(&mut client, sweep).await.iter().all(|t| t.status == "pending").then_some(()) }
    })
    .await
}

async fn trial_info(client: &mut SweepServiceClient<Channel>, sweep: &str, trial_id: &str) -> TrialInfo {
    trials(client, sweep).await.into_iter().find(|t| t.trial_id == trial_id).expect("the trial")
}

/// Waits until `trial_id` has `count` checkpoints in the store, the newest at `min_step` or later.
async fn wait_for_checkpoints(coordinator: &Coordinator, trial_id: &str, count: usize, min_step: u64) {
    wait_until(Duration::from_secs(20), "checkpoints of the trial", || {
        let files = coordinator.checkpoint_files(trial_id);
        let ready = files.len() >= count && files.last().is_some_and(|(step, _)| *step >= min_step);
        async move { ready.then_some(()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_at_seeded_random_points_change_no_final_number() {
    const STEPS: i64 = 30;
    let dir = tempfile::tempdir().unwrap();
    let spec = quadratic_spec("killed", 5, STEPS as u32, 30, 5);
    // Attempts are spent by every kill: allow many, so that only a real fault fails a trial.
    let coordinator = Coordinator::start(dir.path(), &["--lease-ttl", "2s", "--max-attempts", "50"]);
    let mut client = client(&coordinator.url).await;
    submit(&mut client, &spec).await;

    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_f00d);
    let mut killed = Vec::new();
    for round in 0..8 {
        // Short batches: a killed attempt leaves points past its last checkpoint, which the
        // resumed attempt must supersede.
        let worker = Worker::start(
            &coordinator.url,
            dir.path(),
            &format!("doomed-{round}"),
            &["--slots", "2", "--batch-interval", "40ms"],
        );
        let delay = rng.random_range(200..1500);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        worker.signal(libc::SIGKILL);
        killed.push(worker);
        // Move what the killed attempts stored into Parquet parts: resumes must rewrite them.
        export(&mut client, "killed").await;
    }
    let survivors = [
        Worker::start(&coordinator.url, dir.path(), "survivor-a", &["--slots", "2"]),
        Worker::start(&coordinator.url, dir.path(), "survivor-b", &["--slots", "2"]),
    ];

    let status = wait_finished(&mut client, "killed", Duration::from_secs(90)).await;
    assert_eq!((status.total, status.completed, status.failed), (10, 10, 0), "{status:?}");
    let killed_trials = trials(&mut client, "killed").await;
    assert!(
        killed_trials.iter().any(|t| t.attempts > 1),
        "no kill interrupted a trial; the test proved nothing: {killed_trials:#?}"
    );
    assert!(
        killed_trials.iter().any(|t| t.resumed_from > 0),
        "no interrupted trial resumed from a checkpoint: {killed_trials:#?}"
    );
    let (_, metrics_dir, _) = export(&mut client, "killed").await;
    let rows = read_metrics(&metrics_dir);
    assert_each_point_once(&killed_trials, &rows, &["loss"], STEPS);
    for trial in &killed_trials {
        assert_resumed_rows_come_from_the_right_attempts(trial, &rows);
    }
    // Nothing completed twice: no worker log names a trial completed more than once. (At most
    // once, not exactly once: a worker killed after the coordinator acknowledged a completion but
    // before it wrote its log line leaves a completed trial that no log names; the status above
    // already counts every trial completed.)
    let completions = completions_in_logs(&killed.iter().chain(&survivors).collect::<Vec<_>>());
    for t in &killed_trials {
        let logged = completions.get(&t.trial_id).copied().unwrap_or(0);
        assert!(logged <= 1, "{} completed {logged} times in the worker logs", t.trial_id);
    }
    assert!(completions.values().sum::<usize>() >= 5, "the logs name few completions: {completions:?}");

    drop(survivors);
    let (control_trials, control_rows) = control_run(&mut client, &coordinator, &spec, "killed", "4").await;
    assert_matches_control(&killed_trials, &rows, &control_trials, &control_rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cartpole_trial_killed_after_a_checkpoint_resumes_to_the_same_objective() {
    const EPISODES: i64 = 3000;
    let spec = format!(
        r#"
name: cartpole-killed
job: {{kind: cartpole-qtable, episodes: {EPISODES}, checkpoint_every: 500, report_every: 500}}
method: grid
metric: {{name: mear, goal: maximize}}
parameters:
  lr: {{values: [0.1]}}
  tie_break: {{values: [random, left]}}
seeds: 2
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path(), &["--lease-ttl", "2s", "--max-attempts", "50"]);
    let mut client = client(&coordinator.url).await;
    submit(&mut client, &spec).await;
    let trial_ids: Vec<String> = trials(&mut client, "cartpole-killed").await.into_iter().map(|t| t.trial_id).collect();

    // A trial trains in a fraction of a second: kill the worker a seeded moment after a
    // checkpoint at a seeded step shows up in the coordinator's store, until a kill has left a
    // trial unfinished with a checkpoint to resume from and points stored past it (which the
    // resumed attempt must supersede).
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut interrupted = HashSet::new();
    for round in 0..10 {
        let at_step = 500 * rng.random_range(1..=4u64);
        let linger = Duration::from_millis(rng.random_range(5..40));
        let worker = Worker::start(
            &coordinator.url,
            dir.path(),
            &format!("doomed-{round}"),
            &["--slots", "2", "--batch-points", "50", "--batch-interval", "10ms"],
        );
        // Files left by an earlier round's victim do not count: wait for one this worker wrote.
        let earlier: HashSet<_> = trial_ids.iter().flat_map(|t| coordinator.checkpoint_files(t)).collect();
        let started = std::time::Instant::now();
        let mut polls = 0u64;
        loop {
            let reached = trial_ids
                .iter()
                .flat_map(|t| coordinator.checkpoint_files(t))
                .any(|file| file.0 >= at_step && !earlier.contains(&file));
            if reached {
                break;
            }
            polls += 1;
            if polls.is_multiple_of(50) {
                let s = status(&mut client, "cartpole-killed").await;
                assert!(!s.finished, "every trial finished before a kill caught one after a checkpoint: {s:?}");
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no checkpoint at step {at_step} appeared");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(linger).await;
        worker.signal(libc::SIGKILL);
        drop(worker);
        let (_, metrics_dir, _) = export(&mut client, "cartpole-killed").await;
        let stored = read_metrics(&metrics_dir);
        // Checkpoints are deleted when a trial ends: files left mean an unfinished trial.
        interrupted.extend(
            trial_ids
                .iter()
                .filter(|t| {
                    coordinator.checkpoint_files(t).last().is_some_and(|(checkpoint, _)| {
                        stored.iter().any(|r| &r.trial_id == *t && r.step as u64 > *checkpoint)
                    })
                })
                .cloned(),
        );
        if !interrupted.is_empty() {
            break;
        }
    }
    assert!(!interrupted.is_empty(), "no kill left a trial with a checkpoint and points past it");
    let _survivor = Worker::start(&coordinator.url, dir.path(), "survivor", &["--slots", "2"]);
    let status = wait_finished(&mut client, "cartpole-killed", Duration::from_secs(60)).await;
    assert_eq!((status.completed, status.failed), (4, 0), "{status:?}");
    let killed_trials = trials(&mut client, "cartpole-killed").await;
    for id in &interrupted {
        let t = killed_trials.iter().find(|t| &t.trial_id == id).unwrap();
        assert!(t.attempts > 1 && t.resumed_from > 0, "the interrupted trial did not resume: {t:?}");
    }
    let (_, metrics_dir, _) = export(&mut client, "cartpole-killed").await;
    let rows = read_metrics(&metrics_dir);
    let per_episode: Vec<MetricRow> =
        rows.iter().filter(|r| r.name == "reward" || r.name == "epsilon").cloned().collect();
    assert_each_point_once(&killed_trials, &per_episode, &["reward", "epsilon"], EPISODES);
    for trial in &killed_trials {
        assert_resumed_rows_come_from_the_right_attempts(trial, &rows);
    }

    let (control_trials, control_rows) = control_run(&mut client, &coordinator, &spec, "cartpole-killed", "2").await;
    assert_matches_control(&killed_trials, &rows, &control_trials, &control_rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_and_restarted_on_the_same_state_dir_finishes_the_sweep() {
    const STEPS: i64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let spec = quadratic_spec("restarted", 4, STEPS as u32, 50, 10);
    let args = ["--lease-ttl", "2s"];
    let mut coordinator = Coordinator::start(dir.path(), &args);
    let workers = [
        Worker::start(&coordinator.url, dir.path(), "worker-a", &[]),
        Worker::start(&coordinator.url, dir.path(), "worker-b", &[]),
    ];
    let mut client = client(&coordinator.url).await;
    submit(&mut client, &spec).await;
    // Mid-sweep: some trials done, two running with points and checkpoints stored.
    wait_until(Duration::from_secs(30), "two completed trials and two running past a checkpoint", || {
        let mut client = client.clone();
        let coordinator = &coordinator;
        async move {
            let all = trials(&mut client, "restarted").await;
            let completed = all.iter().filter(|t| t.status == "completed").count();
            let running: Vec<&TrialInfo> = all.iter().filter(|t| t.status == "running").collect();
            let checkpointed = running.iter().all(|t| !coordinator.checkpoint_files(&t.trial_id).is_empty());
            (completed >= 2 && running.len() == 2 && checkpointed).then_some(())
        }
    })
    .await;

    // Down for longer than a lease lives: every running lease is past its deadline when the
    // coordinator comes back, and only the restart grace lets the workers keep them.
    coordinator.kill();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    coordinator.restart(&args);
    let mut client = common::client(&coordinator.url).await;

    let status = wait_finished(&mut client, "restarted", Duration::from_secs(60)).await;
    assert_eq!((status.total, status.completed, status.failed), (8, 8, 0), "{status:?}");
    let restarted_trials = trials(&mut client, "restarted").await;
    // The workers came back within the restart grace: no lease was lost, no attempt repeated.
    assert!(
        restarted_trials.iter().all(|t| t.status == "completed" && t.attempts == 1 && t.handbacks == 0),
        "{restarted_trials:#?}\n{}",
        coordinator.log_text()
    );
    let completions = completions_in_logs(&workers.iter().collect::<Vec<_>>());
    for t in &restarted_trials {
        assert_eq!(completions.get(&t.trial_id), Some(&1), "completions of {} in the worker logs", t.trial_id);
    }
    let (_, metrics_dir, _) = export(&mut client, "restarted").await;
    let rows = read_metrics(&metrics_dir);
    assert_each_point_once(&restarted_trials, &rows, &["loss"], STEPS);

    drop(workers);
    let (control_trials, control_rows) = control_run(&mut client, &coordinator, &spec, "restarted", "8").await;
    assert_matches_control(&restarted_trials, &rows, &control_trials, &control_rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_acknowledged_after_an_export_survive_a_coordinator_restart() {
    const STEPS: i64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let spec = quadratic_spec("exported", 1, STEPS as u32, 50, 10).replace("values: [0.0, 0.5]", "values: [0.0]");
    let args = ["--lease-ttl", "2s"];
    let mut coordinator = Coordinator::start(dir.path(), &args);
    let _worker = Worker::start(&coordinator.url, dir.path(), "worker", &[]);
    let mut client = client(&coordinator.url).await;
    submit(&mut client, &spec).await;
    let trial_id = trials(&mut client, "exported").await.remove(0).trial_id;
    // Points up to step 10 go to a Parquet part; the points acknowledged after that (up to step
    // 20 at least) are staged when the coordinator dies.
    wait_for_checkpoints(&coordinator, &trial_id, 1, 10).await;
    export(&mut client, "exported").await;
    let exported_through = coordinator.checkpoint_files(&trial_id).last().map_or(0, |(step, _)| *step);
    wait_for_checkpoints(&coordinator, &trial_id, 1, exported_through + 10).await;
    coordinator.kill();
    coordinator.restart(&args);
    let mut client = common::client(&coordinator.url).await;

    let status = wait_finished(&mut client, "exported", Duration::from_secs(30)).await;
    assert_eq!((status.completed, status.failed), (1, 0), "{status:?}");
    let exported_trials = trials(&mut client, "exported").await;
    let (_, metrics_dir, _) = export(&mut client, "exported").await;
    let rows = read_metrics(&metrics_dir);
    assert_each_point_once(&exported_trials, &rows, &["loss"], STEPS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_is_fenced_off_after_its_lease_expires() {
    const STEPS: i64 = 60;
    let dir = tempfile::tempdir().unwrap();
    let spec = quadratic_spec("frozen", 1, STEPS as u32, 50, 10).replace("values: [0.0, 0.5]", "values: [0.0]");
    let coordinator = Coordinator::start(dir.path(), &["--lease-ttl", "2s"]);
    let frozen = Worker::start(&coordinator.url, dir.path(), "frozen", &["--batch-interval", "40ms"]);
    let mut client = client(&coordinator.url).await;
    submit(&mut client, &spec).await;
    let trial_id = trials(&mut client, "frozen").await.remove(0).trial_id;
    wait_for_checkpoints(&coordinator, &trial_id, 1, 10).await;
    // Freeze the worker once it has stored points past its newest checkpoint, and put them in a
    // Parquet part (export): the next attempt must remove them from the part.
    let mut frozen_at = None;
    for _ in 0..20 {
        let checkpoint = coordinator.checkpoint_files(&trial_id).last().map_or(0, |(step, _)| *step);
        let (_, metrics_dir, _) = export(&mut client, "frozen").await;
        if read_metrics(&metrics_dir).iter().any(|r| r.step as u64 > checkpoint) {
            frozen.signal(libc::SIGSTOP);
            let checkpoint = coordinator.checkpoint_files(&trial_id).last().map_or(0, |(step, _)| *step);
            let (_, metrics_dir, _) = export(&mut client, "frozen").await;
            let stored_through = read_metrics(&metrics_dir).iter().map(|r| r.step as u64).max().unwrap_or(0);
            if stored_through > checkpoint {
                frozen_at = Some(stored_through);
                break;
            }
            frozen.signal(libc::SIGCONT);
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let frozen_at = frozen_at.expect("the worker never stored points past its newest checkpoint");
    let taker = Worker::start(&coordinator.url, dir.path(), "taker", &[]);
    let taken = wait_until(Duration::from_secs(20), "the trial's second attempt", || {
        let mut client = client.clone();
        let trial_id = trial_id.clone();
        async move {
            let t = trial_info(&mut client, "frozen", &trial_id).await;
            (t.status == "running" && t.attempts == 2).then_some(t)
        }
    })
    .await;
    assert!(
        taken.resumed_from >= 10 && taken.resumed_from < frozen_at,
        "the second attempt resumes from the frozen one's checkpoint, before its last point {frozen_at}: {taken:?}"
    );
    frozen.signal(libc::SIGCONT);

    // The woken worker reports with its old epoch: refused, it drops the trial.
    wait_until(Duration::from_secs(20), "the frozen worker to drop its trial", || {
        let dropped = frozen.plain_log().contains("end=Dropped");
        async move { dropped.then_some(()) }
    })
    .await;
    let frozen_log = frozen.plain_log();
    assert!(
        frozen_log.contains("lease revoked") || frozen_log.contains("stale lease epoch"),
        "the frozen worker was not told its lease is gone:\n{frozen_log}"
    );
    assert!(!frozen_log.contains("end=Completed"), "the frozen worker completed the trial:\n{frozen_log}");

    let status = wait_finished(&mut client, "frozen", Duration::from_secs(30)).await;
    assert_eq!((status.completed, status.failed), (1, 0), "{status:?}");
    let trial = trial_info(&mut client, "frozen", &trial_id).await;
    assert_eq!(trial.attempts, 2, "{trial:?}");
    assert_eq!(completions_in_logs(&[&taker]).get(&trial_id), Some(&1), "the taker completed the trial");
    let (_, metrics_dir, _) = export(&mut client, "frozen").await;
    let rows = read_metrics(&metrics_dir);
    let frozen_trials = vec![trial.clone()];
    assert_each_point_once(&frozen_trials, &rows, &["loss"], STEPS);
    assert_resumed_rows_come_from_the_right_attempts(&trial, &rows);

    drop(taker);
    let (control_trials, control_rows) = control_run(&mut client, &coordinator, &spec, "frozen", "1").await;
    assert_matches_control(&frozen_trials, &rows, &control_trials, &control_rows);
}

/// What the test does to a trial's stored checkpoints before its next attempt.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Flip bytes in the middle of the newest file, keeping its length.
    FlipNewest,
    /// Cut the newest file in half.
    TruncateNewest,
    /// Both: flip the newest, truncate the older one.
    Both,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_checkpoint_falls_back_and_the_trial_completes() {
    const STEPS: i64 = 40;
    let dir = tempfile::tempdir().unwrap();
    // Three trials, one per kind of damage.
    let spec =
        quadratic_spec("corrupt", 1, STEPS as u32, 50, 5).replace("values: [0.0, 0.5]", "values: [0.0, 0.5, 1.0]");
    let coordinator = Coordinator::start(dir.path(), &["--lease-ttl", "2s", "--keep-checkpoints", "2"]);
    let first = Worker::start(&coordinator.url, dir.path(), "first", &["--slots", "3", "--batch-interval", "40ms"]);
    let mut client = client(&coordinator.url).await;
    submit(&mut client, &spec).await;
    let trial_ids: Vec<String> = trials(&mut client, "corrupt").await.into_iter().map(|t| t.trial_id).collect();
    for trial_id in &trial_ids {
        wait_for_checkpoints(&coordinator, trial_id, 2, 10).await;
    }
    first.signal(libc::SIGKILL);
    drop(first);
    // Once the leases expired, no upload of the killed worker can still land.
    wait_all_pending(&mut client, "corrupt").await;

    // The killed attempt's points go to a Parquet part; those past the checkpoint a trial falls
    // back to must be removed from it.
    let (_, metrics_dir, _) = export(&mut client, "corrupt").await;
    let first_rows = read_metrics(&metrics_dir);

    let damages = [Damage::FlipNewest, Damage::TruncateNewest, Damage::Both];
    let mut expected_resume = Vec::new();
    for (trial_id, damage) in trial_ids.iter().zip(damages) {
        let files = coordinator.checkpoint_files(trial_id);
        assert_eq!(files.len(), 2, "two checkpoints kept for {trial_id}: {files:?}");
        let (older_step, older) = files[0].clone();
        let (newest_step, newest) = files[1].clone();
        let stored_through = first_rows.iter().filter(|r| &r.trial_id == trial_id).map(|r| r.step as u64).max();
        assert!(stored_through >= Some(newest_step), "{trial_id}: points up to the newest checkpoint are stored");
        let mut bytes = std::fs::read(&newest).unwrap();
        match damage {
            Damage::FlipNewest | Damage::Both => {
                let middle = bytes.len() / 2;
                for b in &mut bytes[middle - 4..middle + 4] {
                    *b ^= 0xa5;
                }
            }
            Damage::TruncateNewest => bytes.truncate(bytes.len() / 2),
        }
        std::fs::write(&newest, &bytes).unwrap();
        if let Damage::Both = damage {
            let older_bytes = std::fs::read(&older).unwrap();
            std::fs::write(&older, &older_bytes[..older_bytes.len() / 2]).unwrap();
            expected_resume.push((trial_id.clone(), 0));
        } else {
            expected_resume.push((trial_id.clone(), older_step));
        }
    }

    let mut second = Worker::start(&coordinator.url, dir.path(), "second", &["--slots", "3"]);
    let status = wait_finished(&mut client, "corrupt", Duration::from_secs(60)).await;
    assert_eq!((status.completed, status.failed), (3, 0), "{status:?}\n{}", second.plain_log());
    assert!(second.exited().is_none(), "the worker died on a bad checkpoint:\n{}", second.plain_log());
    let second_log = second.plain_log();
    assert!(!second_log.contains("panicked"), "{second_log}");
    let corrupt_trials = trials(&mut client, "corrupt").await;
    for (trial_id, resumed) in &expected_resume {
        let t = corrupt_trials.iter().find(|t| &t.trial_id == trial_id).unwrap();
        assert_eq!((t.attempts, t.resumed_from), (2, *resumed), "fallback of {trial_id}: {t:?}");
    }
    // The coordinator records each damaged file it was told about: one per trial, two for the
    // trial whose both checkpoints were damaged.
    let coordinator_log = coordinator.log_text();
    for (trial_id, damage) in trial_ids.iter().zip(damages) {
        let reported = coordinator_log
            .lines()
            .filter(|l| l.contains("bad checkpoint") && l.contains(&format!("trial={trial_id}")))
            .count();
        let damaged = if let Damage::Both = damage { 2 } else { 1 };
        assert_eq!(reported, damaged, "bad checkpoints of {trial_id} ({damage:?}) in the log:\n{coordinator_log}");
    }
    assert!(second_log.contains("bad checkpoint; asking for the previous one"), "{second_log}");

    let (_, metrics_dir, _) = export(&mut client, "corrupt").await;
    let rows = read_metrics(&metrics_dir);
    assert_each_point_once(&corrupt_trials, &rows, &["loss"], STEPS);
    for trial in &corrupt_trials {
        assert_resumed_rows_come_from_the_right_attempts(trial, &rows);
    }
    drop(second);
    let (control_trials, control_rows) = control_run(&mut client, &coordinator, &spec, "corrupt", "3").await;
    assert_matches_control(&corrupt_trials, &rows, &control_trials, &control_rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_file_missing_from_the_store_falls_back_like_a_corrupted_one() {
    const STEPS: i64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let spec = quadratic_spec("missing", 1, STEPS as u32, 50, 5).replace("values: [0.0, 0.5]", "values: [0.0]");
    let coordinator = Coordinator::start(dir.path(), &["--lease-ttl", "2s", "--max-attempts", "3"]);
    let first = Worker::start(&coordinator.url, dir.path(), "first", &[]);
    let mut client = client(&coordinator.url).await;
    submit(&mut client, &spec).await;
    let trial_id = trials(&mut client, "missing").await.remove(0).trial_id;
    wait_for_checkpoints(&coordinator, &trial_id, 2, 10).await;
    first.signal(libc::SIGKILL);
    drop(first);
    wait_all_pending(&mut client, "missing").await;
    let files = coordinator.checkpoint_files(&trial_id);
    assert_eq!(files.len(), 2, "{files:?}");
    // The newest file vanishes from the store (a disk cleanup, a lost object).
    std::fs::remove_file(&files[1].1).unwrap();

    let second = Worker::start(&coordinator.url, dir.path(), "second", &[]);
    let status = wait_finished(&mut client, "missing", Duration::from_secs(40)).await;
    let trial = trial_info(&mut client, "missing", &trial_id).await;
    assert_eq!(
        (status.completed, status.failed),
        (1, 0),
        "a missing checkpoint file failed the trial instead of falling back: {trial:?}\n{}",
        second.plain_log()
    );
    assert_eq!(trial.resumed_from, files[0].0, "{trial:?}");
}
