//! Checkpoints between a job and the coordinator's checkpoint store.
//!
//! Saving: at a boundary the job hands its [`Checkpoint`] to [`RemoteCheckpoints`], which encodes
//! it and queues it on the trial's outbox *behind* the metric points reported before it. The metric
//! streamer ([`crate::metrics`]) uploads it only once all those points are stored, so a stored
//! checkpoint at step s always comes with every point up to s: resuming from it loses nothing.
//!
//! Restoring: [`restore_from_lease`] fetches the checkpoint a lease names, checks its size and
//! sha256 against what the coordinator recorded, decodes and restores it. A checkpoint that fails
//! any of that is reported bad; the coordinator answers with the previous good one (or none: step
//! 0), and the worker tries that instead. It never crashes on a bad checkpoint.

use sweep_shared::checkpoint::{sha256_hex, Checkpoint};
use sweep_shared::limits::CHECKPOINT_CHUNK_BYTES;
use sweep_shared::proto::{BadCheckpointRequest, CheckpointChunk, CheckpointInfo, FetchCheckpointRequest, TrialLease};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tracing::{info, warn};

use crate::client::Client;
use crate::error::{Result, WorkerError};
use crate::jobs::{CheckpointSink, Job, JobError};
use crate::metrics::OutboxItem;

/// The job thread's checkpoint sink: every `every` steps, queue the encoded checkpoint.
pub struct RemoteCheckpoints {
    outbox: mpsc::Sender<OutboxItem>,
    every: u64,
}

impl RemoteCheckpoints {
    /// Checkpoints every `every` steps (0: never).
    pub fn new(outbox: mpsc::Sender<OutboxItem>, every: u64) -> Self {
        RemoteCheckpoints { outbox, every }
    }
}

impl CheckpointSink for RemoteCheckpoints {
    fn wants(&self, step: u64) -> bool {
        self.every > 0 && step > 0 && step.is_multiple_of(self.every)
    }

    fn save(&mut self, checkpoint: Checkpoint) -> std::result::Result<(), JobError> {
        let bytes = checkpoint.encode()?;
        // A closed outbox means the trial is being dropped: nothing to save it for.
        let _ = self.outbox.blocking_send(OutboxItem::Checkpoint { step: checkpoint.step, bytes });
        Ok(())
    }
}

/// The chunks of an upload: the first names the checkpoint.
pub fn upload_chunks(trial_id: &str, epoch: u64, attempt: u32, step: u64, bytes: &[u8]) -> Vec<CheckpointChunk> {
    let info = CheckpointInfo { step, sha256: sha256_hex(bytes), bytes: bytes.len() as u64, attempt };
    let mut chunks: Vec<CheckpointChunk> = bytes
        .chunks(CHECKPOINT_CHUNK_BYTES)
        .map(|data| CheckpointChunk { data: data.to_vec(), ..Default::default() })
        .collect();
    if chunks.is_empty() {
        chunks.push(CheckpointChunk::default());
    }
    chunks[0].trial_id = trial_id.to_string();
    chunks[0].epoch = epoch;
    chunks[0].attempt = attempt;
    chunks[0].info = Some(info);
    chunks
}

/// Fetches a checkpoint and checks it against what the coordinator recorded.
async fn fetch(
    client: &mut Client,
    lease: &TrialLease,
    info: &CheckpointInfo,
) -> Result<std::result::Result<Checkpoint, String>> {
    let request = FetchCheckpointRequest { trial_id: lease.trial_id.clone(), epoch: lease.epoch, step: info.step };
    // The coordinator lost or cannot read the file: as bad as a corrupt one, so fall back. A stale
    // lease or an unreachable coordinator are errors of their own.
    let unreadable = |status: tonic::Status| match status.code() {
        tonic::Code::NotFound | tonic::Code::Internal | tonic::Code::DataLoss => Ok(Err(status.message().to_string())),
        _ => Err(WorkerError::from(status)),
    };
    let mut stream = match client.fetch_checkpoint(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return unreadable(status),
    };
    let mut bytes = Vec::with_capacity(info.bytes.min(1 << 30) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(status) => return unreadable(status),
        };
        if bytes.len() as u64 + chunk.data.len() as u64 > info.bytes {
            return Ok(Err(format!("longer than the recorded {} bytes", info.bytes)));
        }
        bytes.extend_from_slice(&chunk.data);
    }
    if bytes.len() as u64 != info.bytes {
        return Ok(Err(format!("{} of the recorded {} bytes", bytes.len(), info.bytes)));
    }
    let digest = sha256_hex(&bytes);
    if digest != info.sha256 {
        return Ok(Err(format!("sha256 {digest} does not match the recorded {}", info.sha256)));
    }
    Ok(Checkpoint::decode(&bytes).map_err(|e| e.to_string()))
}

/// Restores `job` from the lease's checkpoint, falling back past bad ones. `build` makes a fresh
/// job (a failed restore may have left the old one half-changed). Returns the job to run and the
/// step it resumes after (0 for a fresh start).
pub async fn restore_from_lease(
    client: &mut Client,
    lease: &TrialLease,
    mut build: impl FnMut() -> std::result::Result<Box<dyn Job>, JobError>,
) -> Result<std::result::Result<(Box<dyn Job>, u64), JobError>> {
    let mut next = lease.checkpoint.clone();
    while let Some(info) = next.take() {
        let problem = match fetch(client, lease, &info).await? {
            Ok(checkpoint) => {
                let mut job = match build() {
                    Ok(job) => job,
                    Err(e) => return Ok(Err(e)),
                };
                match job.restore(&checkpoint) {
                    Ok(()) => {
                        info!(trial = %lease.trial_id, step = info.step, "resumed from checkpoint");
                        return Ok(Ok((job, info.step)));
                    }
                    Err(e) => format!("does not restore: {e}"),
                }
            }
            Err(problem) => problem,
        };
        warn!(trial = %lease.trial_id, step = info.step, %problem, "bad checkpoint; asking for the previous one");
        let report = BadCheckpointRequest {
            trial_id: lease.trial_id.clone(),
            epoch: lease.epoch,
            step: info.step,
            reason: problem,
        };
        next = match client.report_bad_checkpoint(report).await {
            Ok(response) => response.into_inner().fallback,
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                return Err(WorkerError::StaleLease(lease.trial_id.clone()))
            }
            Err(status) => return Err(status.into()),
        };
    }
    Ok(build().map(|job| (job, 0)))
}
