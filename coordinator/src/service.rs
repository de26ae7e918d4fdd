//! The gRPC edge: turns wire messages into calls on the [`CoordinatorHandle`] and results back
//! into wire messages. It validates shapes (ids present, sizes bounded) and decides nothing else.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use sha2::{Digest, Sha256};
use sweep_shared::ids::{LeaseEpoch, SweepId, TrialId, WorkerId};
use sweep_shared::limits;
use sweep_shared::proto::{
    self, metric_ack, sweep_service_server::SweepService, worker_service_server::WorkerService, AcquireRequest,
    AcquireResponse, ArtifactInfo, ArtifactReceipt, ArtifactUpload, BadCheckpointRequest, BadCheckpointResponse,
    BestRequest, BestResponse, CancelRequest, CancelResponse, CheckpointChunk, CheckpointInfo, CheckpointReceipt,
    CompleteRequest, CompleteResponse, ExportRequest, ExportResponse, FailRequest, FailResponse,
    FetchCheckpointRequest, HeartbeatRequest, HeartbeatResponse, LeaseRef, ListSweepsRequest, ListSweepsResponse,
    ListTrialsRequest, ListTrialsResponse, MetricAck, MetricBatch, RegisterRequest, RegisterResponse, ReleaseRequest,
    ReleaseResponse, StatusRequest, SubmitRequest, SubmitResponse, SweepStatus, TrialInfo, TrialLease,
};
use sweep_shared::spec::MetricSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::core::{BatchOutcome, IncomingBatch, IncomingPoint, StoredCheckpoint, SweepProgress, TrialDetail};
use crate::error::CoordinatorError;
use crate::handle::CoordinatorHandle;
use crate::stats::{ConfigStats, RankBy};
use crate::store::{ArtifactRow, CheckpointRow};

/// Longest an acquire call waits for work.
const MAX_ACQUIRE_WAIT: Duration = Duration::from_secs(30);
const MAX_ID_LEN: usize = 128;

#[derive(Clone)]
pub struct Service {
    handle: CoordinatorHandle,
}

impl Service {
    pub fn new(handle: CoordinatorHandle) -> Self {
        Service { handle }
    }
}

fn id_field(value: &str, field: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is empty")));
    }
    if value.len() > MAX_ID_LEN || !value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(Status::invalid_argument(format!("{field} is not a valid id")));
    }
    Ok(())
}

/// A free-text field from the wire, cut to `max` characters with control characters replaced.
fn printable(text: &str, max: usize) -> String {
    text.chars().take(max).map(|c| if c.is_control() { '?' } else { c }).collect()
}

fn lease_to_wire(lease: crate::core::Lease) -> TrialLease {
    let t = lease.trial;
    TrialLease {
        trial_id: t.trial_id.0,
        sweep_id: t.sweep_id.0,
        job_kind: t.job_kind,
        params_json: t.params_json,
        seed: t.seed,
        attempt: t.attempt,
        epoch: t.epoch.0,
        device: t.device.unwrap_or_default(),
        deadline_unix_ms: lease.deadline_ms.max(0) as u64,
        checkpoint: lease.checkpoint.as_ref().map(checkpoint_info),
    }
}

fn checkpoint_info(c: &CheckpointRow) -> CheckpointInfo {
    CheckpointInfo { step: c.step, sha256: c.sha256.clone(), bytes: c.bytes, attempt: c.attempt }
}

/// Deletes an upload's temp file unless it was handed to the store.
struct TempUpload(Option<PathBuf>);

impl Drop for TempUpload {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn progress_to_wire(p: SweepProgress) -> SweepStatus {
    SweepStatus {
        sweep_id: p.sweep.sweep_id.0,
        job_kind: p.sweep.job_kind,
        metric: p.metric.name,
        goal: p.metric.goal.to_string(),
        total: p.counts.total(),
        pending: p.counts.pending,
        running: p.counts.running,
        completed: p.counts.completed,
        failed: p.counts.failed,
        cancelled: p.counts.cancelled,
        best_objective: p.best.as_ref().map(|(_, v)| *v),
        best_trial_id: p.best.map(|(t, _)| t.0).unwrap_or_default(),
        output_dir: p.output_dir.display().to_string(),
        finished: p.counts.unfinished() == 0,
        workers: p.live_workers,
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<MetricAck, Status>> + Send + 'static>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<CheckpointChunk, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl WorkerService for Service {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let req = request.into_inner();
        if req.hostname.is_empty() || req.hostname.len() > 255 || req.hostname.chars().any(char::is_control) {
            return Err(Status::invalid_argument("hostname must be 1..=255 printable characters"));
        }
        if req.job_kinds.len() > 64 || req.devices.len() > 64 || req.version.len() > 64 {
            return Err(Status::invalid_argument("register request is too large"));
        }
        for kind in &req.job_kinds {
            id_field(kind, "job kind")?;
        }
        for device in &req.devices {
            if device.is_empty() || device.len() > 32 || !device.chars().all(|c| c.is_ascii_alphanumeric() || c == ':')
            {
                return Err(Status::invalid_argument("a device is cpu or cuda:N"));
            }
        }
        let worker_id =
            self.handle.call(move |core| core.register(&req.hostname, req.job_kinds, req.devices, req.slots)).await?;
        let config = self.handle.call(|core| Ok(core.config().clone())).await?;
        Ok(Response::new(RegisterResponse {
            worker_id: worker_id.0,
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
            lease_ttl_ms: config.lease_ttl.as_millis() as u64,
        }))
    }

    async fn acquire_trials(&self, request: Request<AcquireRequest>) -> Result<Response<AcquireResponse>, Status> {
        let req = request.into_inner();
        id_field(&req.worker_id, "worker_id")?;
        let worker_id = WorkerId(req.worker_id);
        let wait = Duration::from_millis(req.wait_ms).min(MAX_ACQUIRE_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Listen before looking, so a wake-up between the look and the wait is not lost.
            let notified = self.handle.work_available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let worker = worker_id.clone();
            let max = req.max_trials;
            let leases = self.handle.call(move |core| core.acquire(&worker, max)).await?;
            if !leases.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(Response::new(AcquireResponse { leases: leases.into_iter().map(lease_to_wire).collect() }));
            }
            // Also look again now and then: a lease may expire without anyone notifying.
            let _ =
                tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + Duration::from_secs(1)), notified)
                    .await;
        }
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let req = request.into_inner();
        id_field(&req.worker_id, "worker_id")?;
        if req.leases.len() > 4096 {
            return Err(Status::invalid_argument("heartbeat names too many leases"));
        }
        let mut held = Vec::with_capacity(req.leases.len());
        for lease in req.leases {
            id_field(&lease.trial_id, "lease.trial_id")?;
            held.push((TrialId(lease.trial_id), LeaseEpoch(lease.epoch)));
        }
        let worker_id = WorkerId(req.worker_id);
        let (revoked, known) = self.handle.call(move |core| core.heartbeat(&worker_id, &held)).await?;
        Ok(Response::new(HeartbeatResponse {
            revoked: revoked.into_iter().map(|(t, e)| LeaseRef { trial_id: t.0, epoch: e.0 }).collect(),
            known,
        }))
    }

    type StreamMetricsStream = AckStream;

    async fn stream_metrics(
        &self,
        request: Request<Streaming<MetricBatch>>,
    ) -> Result<Response<Self::StreamMetricsStream>, Status> {
        let mut batches = request.into_inner();
        let (acks, ack_stream) = mpsc::channel(64);
        let handle = self.handle.clone();
        tokio::spawn(async move {
            while let Some(next) = batches.next().await {
                let batch = match next {
                    Ok(batch) => batch,
                    Err(status) => {
                        // Tell the worker why (an oversized or undecodable batch), then stop.
                        debug!(%status, "metric stream ended with an error");
                        let _ = acks.send(Err(status)).await;
                        break;
                    }
                };
                let ack = store_batch(&handle, batch).await;
                if acks.send(Ok(ack)).await.is_err() {
                    // The worker hung up; it resends whatever was not acknowledged.
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(ack_stream)) as AckStream))
    }

    async fn complete_trial(&self, request: Request<CompleteRequest>) -> Result<Response<CompleteResponse>, Status> {
        let req = request.into_inner();
        id_field(&req.trial_id, "trial_id")?;
        let trial_id = TrialId(req.trial_id);
        let tail = incoming_points(req.points);
        self.handle
            .call(move |core| core.complete(&trial_id, LeaseEpoch(req.epoch), req.batches, req.wall_seconds, tail))
            .await?;
        Ok(Response::new(CompleteResponse {}))
    }

    async fn fail_trial(&self, request: Request<FailRequest>) -> Result<Response<FailResponse>, Status> {
        let req = request.into_inner();
        id_field(&req.trial_id, "trial_id")?;
        let trial_id = TrialId(req.trial_id);
        let will_retry = self
            .handle
            .call(move |core| core.fail(&trial_id, LeaseEpoch(req.epoch), &printable(&req.error, 4096), req.permanent))
            .await?;
        Ok(Response::new(FailResponse { will_retry }))
    }

    async fn upload_checkpoint(
        &self,
        request: Request<Streaming<CheckpointChunk>>,
    ) -> Result<Response<CheckpointReceipt>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks.message().await?.ok_or_else(|| Status::invalid_argument("empty checkpoint upload"))?;
        id_field(&first.trial_id, "trial_id")?;
        let info =
            first.info.clone().ok_or_else(|| Status::invalid_argument("the first checkpoint chunk lacks info"))?;
        if info.sha256.len() != 64 || !info.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument("checkpoint sha256 must be 64 hex digits"));
        }
        if info.bytes > limits::MAX_CHECKPOINT_BYTES {
            return Err(Status::invalid_argument(format!(
                "checkpoint of {} bytes exceeds the limit of {}",
                info.bytes,
                limits::MAX_CHECKPOINT_BYTES
            )));
        }
        if info.step > i64::MAX as u64 {
            return Err(Status::invalid_argument("checkpoint step is too large"));
        }
        let trial_id = TrialId(first.trial_id.clone());
        let epoch = LeaseEpoch(first.epoch);
        let fenced = trial_id.clone();
        let attempt = self.handle.call(move |core| core.lease_attempt(&fenced, epoch)).await?;
        if attempt != first.attempt {
            return Err(Status::failed_precondition(format!(
                "checkpoint names attempt {}, the lease is attempt {attempt}",
                first.attempt
            )));
        }
        let store = self.handle.call(|core| Ok(core.checkpoint_store())).await?;
        let tmp_path = store.incoming_dir().join(format!("{}.upload", uuid::Uuid::new_v4()));
        let mut tmp = TempUpload(Some(tmp_path.clone()));
        let mut file = tokio::fs::File::create(&tmp_path)
            .await
            .map_err(|e| Status::internal(format!("creating {}: {e}", tmp_path.display())))?;
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        let mut next = Some(first);
        while let Some(chunk) = next {
            received += chunk.data.len() as u64;
            if received > info.bytes {
                return Err(Status::invalid_argument(format!(
                    "checkpoint is longer than the announced {} bytes",
                    info.bytes
                )));
            }
            hasher.update(&chunk.data);
            file.write_all(&chunk.data).await.map_err(|e| Status::internal(format!("writing checkpoint: {e}")))?;
            next = chunks.message().await?;
        }
        if received != info.bytes {
            return Err(Status::invalid_argument(format!(
                "checkpoint upload cut short: {received} of {} bytes",
                info.bytes
            )));
        }
        let digest = hex::encode(hasher.finalize());
        if !digest.eq_ignore_ascii_case(&info.sha256) {
            return Err(Status::invalid_argument(format!(
                "checkpoint checksum mismatch: announced {}, received {digest}",
                info.sha256
            )));
        }
        file.sync_all().await.map_err(|e| Status::internal(format!("syncing checkpoint: {e}")))?;
        drop(file);
        let key = crate::core::key_for(&trial_id, info.step);
        let put_key = key.clone();
        tokio::task::spawn_blocking(move || store.put(&put_key, &tmp_path))
            .await
            .map_err(|e| Status::internal(format!("storing checkpoint: {e}")))??;
        tmp.0 = None;
        let upload = StoredCheckpoint {
            trial_id,
            epoch,
            attempt,
            step: info.step,
            sha256: digest,
            bytes: received,
            store_key: key,
        };
        let kept = self.handle.call(move |core| core.record_checkpoint(upload)).await?;
        Ok(Response::new(CheckpointReceipt { step: info.step, kept }))
    }

    async fn upload_artifact(&self, request: Request<ArtifactUpload>) -> Result<Response<ArtifactReceipt>, Status> {
        let req = request.into_inner();
        id_field(&req.trial_id, "trial_id")?;
        if req.data.len() > limits::MAX_ARTIFACT_BYTES {
            return Err(Status::invalid_argument(format!(
                "artifact '{}' of {} bytes exceeds the limit of {}",
                printable(&req.name, 200),
                req.data.len(),
                limits::MAX_ARTIFACT_BYTES
            )));
        }
        if req.step > i64::MAX as u64 {
            return Err(Status::invalid_argument("artifact step is too large"));
        }
        let trial_id = TrialId(req.trial_id.clone());
        let epoch = LeaseEpoch(req.epoch);
        let (fenced, name) = (trial_id.clone(), req.name.clone());
        let (path, attempt) = self.handle.call(move |core| core.artifact_path(&fenced, epoch, &name)).await?;
        if attempt != req.attempt {
            return Err(Status::failed_precondition(format!(
                "artifact names attempt {}, the lease is attempt {attempt}",
                req.attempt
            )));
        }
        let bytes = req.data.len() as u64;
        let dest = path.clone();
        tokio::task::spawn_blocking(move || write_file_atomically(&dest, &req.data))
            .await
            .map_err(|e| Status::internal(format!("storing artifact: {e}")))?
            .map_err(|e| Status::internal(format!("storing artifact {}: {e}", path.display())))?;
        let row =
            ArtifactRow { trial_id, name: req.name, step: req.step, attempt, path: path.display().to_string(), bytes };
        self.handle.call(move |core| core.record_artifact(epoch, row)).await?;
        Ok(Response::new(ArtifactReceipt { path: path.display().to_string() }))
    }

    type FetchCheckpointStream = ChunkStream;

    async fn fetch_checkpoint(
        &self,
        request: Request<FetchCheckpointRequest>,
    ) -> Result<Response<Self::FetchCheckpointStream>, Status> {
        let req = request.into_inner();
        id_field(&req.trial_id, "trial_id")?;
        let trial_id = TrialId(req.trial_id.clone());
        let epoch = LeaseEpoch(req.epoch);
        let (row, store) = self
            .handle
            .call(move |core| Ok((core.checkpoint_to_fetch(&trial_id, epoch, req.step)?, core.checkpoint_store())))
            .await?;
        let key = row.store_key.clone();
        let path = tokio::task::spawn_blocking(move || store.local_path(&key))
            .await
            .map_err(|e| Status::internal(format!("locating checkpoint: {e}")))??;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Status::internal(format!("opening {}: {e}", path.display())))?;
        let (chunks, stream) = mpsc::channel(4);
        let info = checkpoint_info(&row);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let mut data = vec![0u8; limits::CHECKPOINT_CHUNK_BYTES];
                let n = match file.read(&mut data).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = chunks.send(Err(Status::internal(format!("reading checkpoint: {e}")))).await;
                        return;
                    }
                };
                if n == 0 && !first {
                    return;
                }
                data.truncate(n);
                let chunk = CheckpointChunk {
                    trial_id: if first { req.trial_id.clone() } else { String::new() },
                    epoch: req.epoch,
                    attempt: 0,
                    info: first.then(|| info.clone()),
                    data,
                };
                first = false;
                // The worker hung up: stop reading.
                if chunks.send(Ok(chunk)).await.is_err() || n == 0 {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream)) as ChunkStream))
    }

    async fn report_bad_checkpoint(
        &self,
        request: Request<BadCheckpointRequest>,
    ) -> Result<Response<BadCheckpointResponse>, Status> {
        let req = request.into_inner();
        id_field(&req.trial_id, "trial_id")?;
        let trial_id = TrialId(req.trial_id);
        let fallback = self
            .handle
            .call(move |core| {
                core.bad_checkpoint(&trial_id, LeaseEpoch(req.epoch), req.step, &printable(&req.reason, 1024))
            })
            .await?;
        Ok(Response::new(BadCheckpointResponse { fallback: fallback.as_ref().map(checkpoint_info) }))
    }

    async fn release_trial(&self, request: Request<ReleaseRequest>) -> Result<Response<ReleaseResponse>, Status> {
        let req = request.into_inner();
        id_field(&req.trial_id, "trial_id")?;
        let trial_id = TrialId(req.trial_id);
        let reason = printable(&req.reason, 512);
        self.handle.call(move |core| core.release(&trial_id, LeaseEpoch(req.epoch), &reason)).await?;
        Ok(Response::new(ReleaseResponse {}))
    }
}

fn incoming_points(points: Vec<proto::MetricPoint>) -> Vec<IncomingPoint> {
    points
        .into_iter()
        .map(|p| IncomingPoint { step: p.step, name: p.name, value: p.value, wall_time_us: p.wall_time_us })
        .collect()
}

async fn store_batch(handle: &CoordinatorHandle, batch: MetricBatch) -> MetricAck {
    let trial_id = batch.trial_id.clone();
    let seq = batch.seq;
    let ack = |status: metric_ack::Status, expected_seq: u64, message: String| MetricAck {
        trial_id: trial_id.clone(),
        seq,
        status: status as i32,
        expected_seq,
        message,
    };
    if let Err(status) = id_field(&batch.trial_id, "trial_id") {
        return ack(metric_ack::Status::Rejected, 0, status.message().to_string());
    }
    let incoming = IncomingBatch {
        trial_id: TrialId(batch.trial_id),
        epoch: LeaseEpoch(batch.epoch),
        attempt: batch.attempt,
        seq: batch.seq,
        points: incoming_points(batch.points),
    };
    match handle.call(move |core| core.append_metrics(incoming)).await {
        Ok(BatchOutcome::Stored) | Ok(BatchOutcome::Duplicate) => {
            ack(metric_ack::Status::Stored, seq + 1, String::new())
        }
        Ok(BatchOutcome::Gap { expected_seq }) => {
            ack(metric_ack::Status::Gap, expected_seq, format!("expected batch {expected_seq}"))
        }
        Err(err @ CoordinatorError::StaleEpoch { .. }) => ack(metric_ack::Status::StaleEpoch, 0, err.to_string()),
        Err(err) => ack(metric_ack::Status::Rejected, 0, err.to_string()),
    }
}

#[tonic::async_trait]
impl SweepService for Service {
    async fn submit(&self, request: Request<SubmitRequest>) -> Result<Response<SubmitResponse>, Status> {
        let req = request.into_inner();
        let source: String = req.source_name.chars().filter(|c| !c.is_control()).take(256).collect();
        let source = if source.is_empty() { "spec".to_string() } else { source };
        let outcome = self.handle.call(move |core| core.submit(&req.spec_yaml, &source, req.extend)).await?;
        Ok(Response::new(SubmitResponse {
            sweep_id: outcome.sweep_id.0,
            trials: outcome.trials,
            existing: outcome.existing,
            added: outcome.added,
        }))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<SweepStatus>, Status> {
        let req = request.into_inner();
        id_field(&req.sweep_id, "sweep_id")?;
        let sweep_id = SweepId(req.sweep_id);
        let progress = self.handle.call(move |core| core.progress(&sweep_id)).await?;
        Ok(Response::new(progress_to_wire(progress)))
    }

    async fn list_sweeps(&self, _request: Request<ListSweepsRequest>) -> Result<Response<ListSweepsResponse>, Status> {
        let sweeps = self.handle.call(|core| core.list_sweeps()).await?;
        Ok(Response::new(ListSweepsResponse { sweeps: sweeps.into_iter().map(progress_to_wire).collect() }))
    }

    async fn list_trials(&self, request: Request<ListTrialsRequest>) -> Result<Response<ListTrialsResponse>, Status> {
        let req = request.into_inner();
        id_field(&req.sweep_id, "sweep_id")?;
        let sweep_id = SweepId(req.sweep_id);
        let trials = self.handle.call(move |core| core.trial_details(&sweep_id)).await?;
        Ok(Response::new(ListTrialsResponse {
            trials: trials
                .into_iter()
                .map(|TrialDetail { row: t, events, artifacts }| TrialInfo {
                    trial_id: t.trial_id.0,
                    config_id: t.config_id,
                    params_json: t.params_json,
                    seed: t.seed,
                    status: t.status.as_str().to_string(),
                    attempts: t.attempt,
                    objective: t.objective,
                    worker_id: t.worker_id.unwrap_or_default(),
                    error: t.error.unwrap_or_default(),
                    wall_seconds: t.wall_seconds.unwrap_or(0.0),
                    handbacks: t.handbacks,
                    resumed_from: t.resumed_from.unwrap_or(0),
                    events,
                    artifacts: artifacts
                        .into_iter()
                        .map(|a| ArtifactInfo { name: a.name, step: a.step, path: a.path, bytes: a.bytes })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn best(&self, request: Request<BestRequest>) -> Result<Response<BestResponse>, Status> {
        let req = request.into_inner();
        id_field(&req.sweep_id, "sweep_id")?;
        let sweep_id = SweepId(req.sweep_id);
        let top = req.top as usize;
        let by: RankBy = req.rank_by.parse().map_err(|e: String| Status::invalid_argument(format!("rank_by: {e}")))?;
        let (metric, configs) = self.handle.call(move |core| core.best(&sweep_id, top, by)).await?;
        Ok(Response::new(best_response(metric, by, configs)))
    }

    async fn cancel(&self, request: Request<CancelRequest>) -> Result<Response<CancelResponse>, Status> {
        let req = request.into_inner();
        id_field(&req.sweep_id, "sweep_id")?;
        let sweep_id = SweepId(req.sweep_id);
        let cancelled = self.handle.call(move |core| core.cancel(&sweep_id)).await?;
        Ok(Response::new(CancelResponse { cancelled }))
    }

    async fn export(&self, request: Request<ExportRequest>) -> Result<Response<ExportResponse>, Status> {
        let req = request.into_inner();
        id_field(&req.sweep_id, "sweep_id")?;
        let sweep_id = SweepId(req.sweep_id);
        let out = self.handle.call(move |core| core.export(&sweep_id)).await?;
        Ok(Response::new(ExportResponse {
            trials_path: out.trials_path.display().to_string(),
            metrics_dir: out.metrics_dir.display().to_string(),
            metric_rows: out.metric_rows,
        }))
    }
}

/// Writes `data` to `path` through a temp file in the same directory and a rename, so a reader
/// sees the old file or the new one, never a part.
fn write_file_atomically(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("artifact path has no directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
    let written = std::fs::write(&tmp, data).and_then(|_| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The wire form of ranked configurations (also what `sweep best --state-dir` prints).
pub fn best_response(metric: MetricSpec, by: RankBy, configs: Vec<ConfigStats>) -> BestResponse {
    BestResponse {
        metric: metric.name,
        goal: metric.goal.to_string(),
        rank_by: by.to_string(),
        target: metric.target,
        configs: configs
            .into_iter()
            .map(|c| {
                let o = c.objective;
                proto::ConfigSummary {
                    config_id: c.config_id,
                    params_json: c.params_json,
                    n: o.n,
                    mean: o.mean,
                    std: o.std,
                    min: o.min,
                    max: o.max,
                    seeds_total: c.seeds_total,
                    median: o.median,
                    ci_low: o.ci_low,
                    ci_high: o.ci_high,
                    reached: c.reached,
                }
            })
            .collect(),
    }
}
