//! The one harness of the end-to-end tests: real `sweep` processes on real loopback ports.
//!
//! [`Coordinator::start`] runs `sweep coordinator --listen 127.0.0.1:0` and reads the port it
//! prints; [`Worker::start`] runs `sweep worker` against it. Both are killed when dropped, so a
//! failing test leaves no process behind. [`wait_until`] polls instead of sleeping.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use arrow_array::{Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sweep_shared::auth::{ClientAuth, ConnectOptions};
use sweep_shared::proto::sweep_service_client::SweepServiceClient;
use sweep_shared::proto::{ExportRequest, ListTrialsRequest, StatusRequest, SubmitRequest, SweepStatus, TrialInfo};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub fn sweep_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sweep")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `sweep coordinator` process.
pub struct Coordinator {
    pub child: Child,
    pub url: String,
    pub state_dir: PathBuf,
    pub out_dir: PathBuf,
}

impl Coordinator {
    /// Starts a coordinator on a free port with its state and output under `dir`.
    pub fn start(dir: &Path, extra: &[&str]) -> Coordinator {
        Self::start_on(dir, "127.0.0.1:0", extra)
    }

    pub fn start_on(dir: &Path, listen: &str, extra: &[&str]) -> Coordinator {
        let state_dir = dir.join("state");
        let out_dir = dir.join("out");
        let log = std::fs::File::create(dir.join("coordinator.log")).expect("coordinator log");
        let mut child = Command::new(sweep_bin())
            .args(["coordinator", "--listen", listen])
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--out")
            .arg(&out_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting sweep coordinator");
        let stdout = child.stdout.take().expect("coordinator stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("reading the coordinator's first line");
        let addr = line
            .trim()
            .strip_prefix("coordinator listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        Coordinator { child, url: format!("http://{addr}"), state_dir, out_dir }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The `127.0.0.1:PORT` it listens on.
    pub fn addr(&self) -> &str {
        self.url.strip_prefix("http://").unwrap_or(&self.url)
    }

    pub fn port(&self) -> u16 {
        self.addr().rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port in the coordinator's address")
    }

    /// The directory the coordinator was started in (state, output and logs live under it).
    pub fn dir(&self) -> PathBuf {
        self.state_dir.parent().expect("the state dir has a parent").to_path_buf()
    }

    /// Kills the coordinator with SIGKILL if it still runs (nothing is flushed), then starts it
    /// again on the same port with the same state and output dirs. The previous run's log is kept
    /// as `coordinator.<n>.log`; [`Coordinator::log_text`] reads them all.
    pub fn restart(&mut self, extra: &[&str]) {
        self.kill();
        let dir = self.dir();
        let runs = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().to_string();
                        name.starts_with("coordinator.") && name.ends_with(".log") && name != "coordinator.log"
                    })
                    .count()
            })
            .unwrap_or(0);
        std::fs::rename(dir.join("coordinator.log"), dir.join(format!("coordinator.{}.log", runs + 1)))
            .expect("keeping the coordinator's log");
        let listen = self.addr().to_string();
        // Assigning drops the old handle, which kills an already dead process: a no-op.
        *self = Coordinator::start_on(&dir, &listen, extra);
    }

    /// The logs of every run of this coordinator, oldest first, without terminal colours.
    pub fn log_text(&self) -> String {
        let dir = self.dir();
        let mut older: Vec<PathBuf> =
            std::fs::read_dir(&dir).map(|entries| entries.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        older.retain(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            name.starts_with("coordinator.") && name.ends_with(".log") && name != "coordinator.log"
        });
        older.sort_by_key(|p| {
            p.file_name()
                .and_then(|n| n.to_string_lossy().split('.').nth(1).and_then(|n| n.parse::<u32>().ok()))
                .unwrap_or(0)
        });
        older.push(dir.join("coordinator.log"));
        older.iter().map(|p| strip_ansi(&std::fs::read_to_string(p).unwrap_or_default())).collect()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a child we spawned.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// The trial's checkpoint files in the coordinator's store, by step, oldest first.
    pub fn checkpoint_files(&self, trial_id: &str) -> Vec<(u64, PathBuf)> {
        let dir = self.state_dir.join("checkpoints").join(trial_id);
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|path| {
                let name = path.file_name()?.to_string_lossy().to_string();
                let step = name.strip_prefix("step-")?.strip_suffix(".safetensors")?.parse().ok()?;
                Some((step, path))
            })
            .collect();
        files.sort();
        files
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `sweep worker` process.
pub struct Worker {
    pub child: Child,
    pub log: PathBuf,
}

impl Worker {
    pub fn start(url: &str, dir: &Path, name: &str, extra: &[&str]) -> Worker {
        Self::start_with_env(url, dir, name, extra, &[])
    }

    /// [`Worker::start`] with extra environment variables (`SWEEP_TOKEN`, ...).
    pub fn start_with_env(url: &str, dir: &Path, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Worker {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("worker log");
        let child = Command::new(sweep_bin())
            .args(["worker", "--coordinator", url])
            .args(extra)
            .env("SWEEP_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting sweep worker");
        Worker { child, log }
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The log without terminal colours, so that `field=value` reads as written.
    pub fn plain_log(&self) -> String {
        strip_ansi(&self.log_text())
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a child we spawned.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes terminal colour sequences (`ESC [ ... m`) from a log.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How many times each trial ended with `end=Completed` in these worker logs.
pub fn completions_in_logs(workers: &[&Worker]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for worker in workers {
        for line in worker.plain_log().lines().filter(|l| l.contains("trial ended") && l.contains("end=Completed")) {
            if let Some(trial) = line.split_whitespace().find_map(|w| w.strip_prefix("trial=")) {
                *counts.entry(trial.to_string()).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// A channel to the coordinator built from `options` (TLS for https:// URLs), once it accepts.
pub async fn channel_with(options: &ConnectOptions) -> Channel {
    let endpoint = options.endpoint().expect("coordinator endpoint");
    wait_until(Duration::from_secs(20), "the coordinator to accept connections", || {
        let endpoint = endpoint.clone();
        async move { endpoint.connect().await.ok() }
    })
    .await
}

/// A client over [`channel_with`]; it sends no token.
pub async fn client_with(options: &ConnectOptions) -> SweepServiceClient<Channel> {
    SweepServiceClient::new(channel_with(options).await)
}

/// A client that sends the token of its options with every call, as the CLI does.
pub type AuthedClient = SweepServiceClient<InterceptedService<Channel, ClientAuth>>;

pub async fn authed_client(options: &ConnectOptions) -> AuthedClient {
    SweepServiceClient::with_interceptor(channel_with(options).await, options.auth().expect("token header"))
}

pub async fn client(url: &str) -> SweepServiceClient<Channel> {
    wait_until(Duration::from_secs(20), "the coordinator to accept connections", || async {
        SweepServiceClient::connect(url.to_string()).await.ok()
    })
    .await
}

pub async fn submit(client: &mut SweepServiceClient<Channel>, spec: &str) -> String {
    client
        .submit(SubmitRequest { spec_yaml: spec.to_string(), source_name: "test.yaml".into(), extend: false })
        .await
        .expect("submit")
        .into_inner()
        .sweep_id
}

pub async fn status(client: &mut SweepServiceClient<Channel>, sweep: &str) -> SweepStatus {
    client.status(StatusRequest { sweep_id: sweep.into() }).await.expect("status").into_inner()
}

pub async fn trials(client: &mut SweepServiceClient<Channel>, sweep: &str) -> Vec<TrialInfo> {
    client.list_trials(ListTrialsRequest { sweep_id: sweep.into() }).await.expect("list trials").into_inner().trials
}

pub async fn wait_finished(client: &mut SweepServiceClient<Channel>, sweep: &str, timeout: Duration) -> SweepStatus {
    let started = Instant::now();
    loop {
        let s = status(client, sweep).await;
        if s.finished {
            return s;
        }
        assert!(started.elapsed() < timeout, "sweep {sweep} did not finish in {timeout:?}: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn export(client: &mut SweepServiceClient<Channel>, sweep: &str) -> (PathBuf, PathBuf, u64) {
    let out = client.export(ExportRequest { sweep_id: sweep.into() }).await.expect("export").into_inner();
    (PathBuf::from(out.trials_path), PathBuf::from(out.metrics_dir), out.metric_rows)
}

pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet footer")
        .build()
        .expect("parquet reader")
        .map(|b| b.expect("record batch"))
        .collect()
}

/// Every metric row of a sweep, read back from its part files.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub trial_id: String,
    pub attempt: i32,
    pub step: i64,
    pub name: String,
    pub value: f64,
}

pub fn read_metrics(dir: &Path) -> Vec<MetricRow> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    parts.sort();
    let mut rows = Vec::new();
    for part in parts {
        for batch in read_parquet(&part) {
            let col = |name: &str| batch.column_by_name(name).unwrap_or_else(|| panic!("column {name}")).clone();
            let trial = col("trial_id");
            let trial = trial.as_any().downcast_ref::<StringArray>().expect("trial_id utf8");
            let attempt = col("attempt");
            let attempt = attempt.as_any().downcast_ref::<Int32Array>().expect("attempt int32");
            let step = col("step");
            let step = step.as_any().downcast_ref::<Int64Array>().expect("step int64");
            let name = col("name");
            let name = name.as_any().downcast_ref::<StringArray>().expect("name utf8");
            let value = col("value");
            let value = value.as_any().downcast_ref::<Float64Array>().expect("value float64");
            for i in 0..batch.num_rows() {
                rows.push(MetricRow {
                    trial_id: trial.value(i).to_string(),
                    attempt: attempt.value(i),
                    step: step.value(i),
                    name: name.value(i).to_string(),
                    value: value.value(i),
                });
            }
        }
    }
    rows
}

/// Rows per (trial, metric name).
pub fn count_by_trial_and_name(rows: &[MetricRow]) -> HashMap<(String, String), usize> {
    let mut counts = HashMap::new();
    for r in rows {
        *counts.entry((r.trial_id.clone(), r.name.clone())).or_insert(0) += 1;
    }
    counts
}

pub fn column_len(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

pub fn column_type(batches: &[RecordBatch], name: &str) -> arrow_schema::DataType {
    batches[0].schema().field_with_name(name).unwrap_or_else(|_| panic!("column {name}")).data_type().clone()
}

pub fn strings(batches: &[RecordBatch], name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let col = b.column_by_name(name).unwrap_or_else(|| panic!("column {name}"));
        let col = col.as_any().downcast_ref::<StringArray>().unwrap_or_else(|| panic!("{name} is utf8"));
        out.extend((0..col.len()).map(|i| col.value(i).to_string()));
    }
    out
}

/// One metric value keyed by what determines it: (params_json, seed, step, name, value bits).
/// Two sweeps of the same spec under different names give equal lists when their numbers agree
/// bit for bit.
pub type ValueByConfig = (String, u64, i64, String, u64);

pub fn values_by_config(trials: &[TrialInfo], rows: &[MetricRow]) -> Vec<ValueByConfig> {
    let by_id: HashMap<&str, &TrialInfo> = trials.iter().map(|t| (t.trial_id.as_str(), t)).collect();
    let mut out: Vec<ValueByConfig> = rows
        .iter()
        .map(|r| {
            let t = by_id.get(r.trial_id.as_str()).unwrap_or_else(|| panic!("a row of unknown trial {}", r.trial_id));
            (t.params_json.clone(), t.seed, r.step, r.name.clone(), r.value.to_bits())
        })
        .collect();
    out.sort();
    out
}

/// Each trial's objective keyed by (params_json, seed), as bits.
pub fn objectives_by_config(trials: &[TrialInfo]) -> Vec<(String, u64, Option<u64>)> {
    let mut out: Vec<_> =
        trials.iter().map(|t| (t.params_json.clone(), t.seed, t.objective.map(f64::to_bits))).collect();
    out.sort();
    out
}

/// Checks that `rows` hold exactly one value per (trial, step, name) for steps `1..=steps` of
/// every name in `names`, for every one of `trials`.
pub fn assert_each_point_once(trials: &[TrialInfo], rows: &[MetricRow], names: &[&str], steps: i64) {
    let mut seen: HashMap<(&str, i64, &str), usize> = HashMap::new();
    for r in rows {
        *seen.entry((r.trial_id.as_str(), r.step, r.name.as_str())).or_insert(0) += 1;
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "metric points stored more than once: {doubled:?}");
    for t in trials {
        for name in names {
            let missing: Vec<i64> =
                (1..=steps).filter(|s| !seen.contains_key(&(t.trial_id.as_str(), *s, *name))).collect();
            assert!(missing.is_empty(), "trial {} lacks {name} at steps {missing:?}", t.trial_id);
        }
    }
    let expected = trials.len() * names.len() * steps as usize;
    assert_eq!(rows.len(), expected, "rows beyond steps 1..={steps} of {names:?}");
}

/// After a resume, every point past the resume step comes from the trial's last attempt, and
/// every point up to it from an earlier one.
pub fn assert_resumed_rows_come_from_the_right_attempts(trial: &TrialInfo, rows: &[MetricRow]) {
    for r in rows.iter().filter(|r| r.trial_id == trial.trial_id) {
        if r.step as u64 > trial.resumed_from {
            assert_eq!(
                r.attempt as u32, trial.attempts,
                "step {} of trial {} (resumed from {}) comes from attempt {}, not the last one",
                r.step, trial.trial_id, trial.resumed_from, r.attempt
            );
        } else {
            assert!(
                (r.attempt as u32) < trial.attempts,
                "step {} of trial {} is at or before its resume step {} yet comes from the last attempt {}",
                r.step,
                trial.trial_id,
                trial.resumed_from,
                r.attempt
            );
        }
    }
}

/// Asserts two lists from [`values_by_config`] (or any sorted lists) are equal, naming the first
/// difference instead of printing both lists whole.
pub fn assert_same_values<T: PartialEq + std::fmt::Debug>(run: &[T], control: &[T], what: &str) {
    if let Some(i) = (0..run.len().min(control.len())).find(|i| run[*i] != control[*i]) {
        panic!("{what}: entry {i} differs:\n  run:     {:?}\n  control: {:?}", run[i], control[i]);
    }
    assert_eq!(run.len(), control.len(), "{what}: {} entries in the run, {} in the control", run.len(), control.len());
}
