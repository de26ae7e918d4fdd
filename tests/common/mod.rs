//! The one harness of the end-to-end tests: real `sweep` processes on real loopback ports.
//!
//! [`Coordinator::start`] runs `sweep coordinator --listen 127.0.0.1:0` and reads the port it
//! prints; [`Worker::start`] runs `sweep worker` against it. Both are killed when dropped, so a
//! failing test leaves no process behind. [`wait_until`] polls instead of sleeping.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::{Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sweep_shared::proto::sweep_service_client::SweepServiceClient;
use sweep_shared::proto::{ExportRequest, ListTrialsRequest, StatusRequest, SubmitRequest, SweepStatus, TrialInfo};
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
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("worker log");
        let child = Command::new(sweep_bin())
            .args(["worker", "--coordinator", url])
            .arg("--work-dir")
            .arg(dir.join(name))
            .args(extra)
            .env("SWEEP_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting sweep worker");
        Worker { child, log }
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
