//! Metric points from a job thread to the coordinator, in batches, each stored exactly once.
//!
//! 1. The job thread reports into a [`ChannelSink`]: a bounded channel, so a job that outruns
//!    the network waits instead of filling memory.
//! 2. [`stream_trial_metrics`] cuts the points into batches (at `batch_points` points, or when the
//!    oldest is `batch_interval` old), numbers them 1, 2, 3... and sends them on a
//!    `StreamMetrics` call, opened when the first batch is due, keeping each batch until the
//!    coordinator acknowledges it. A trial that ends before any batch was due sends its few
//!    points with `CompleteTrial` instead (see [`StreamEnd::tail`]).
//! 3. On an ack gap it resends from the batch the coordinator expects; if the stream breaks it
//!    reconnects with back-off and resends every unacknowledged batch. The coordinator stores a
//!    batch it already holds once, so resending is always safe.
//! 4. A stale-epoch ack means the lease is gone: the stream stops and the trial is dropped.
//! 5. A checkpoint queued behind points waits until every batch before it is stored, then is
//!    uploaded (see [`crate::checkpoints`]); points after it wait for the upload.
//! 6. An artifact (a sample grid) is uploaded when it arrives; a refused one is logged and
//!    skipped, the trial goes on.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sweep_shared::ids::{LeaseEpoch, TrialId};
use sweep_shared::proto::{metric_ack, ArtifactUpload, MetricAck, MetricBatch, MetricPoint};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming};
use tracing::{debug, warn};

use crate::checkpoints::upload_chunks;
use crate::client::{Backoff, Client};
use crate::error::{Result, WorkerError};
use crate::jobs::MetricSink;

/// Unacknowledged batches kept before the streamer stops taking new points. While the
/// coordinator is away the job keeps training until this many batches (and the channel behind
/// them) are full.
const MAX_UNACKED_BATCHES: usize = 256;

/// What a job thread sends to its trial's streamer, in order.
#[derive(Debug)]
pub enum OutboxItem {
    Point(MetricPoint),
    Checkpoint {
        step: u64,
        bytes: Vec<u8>,
    },
    /// A file the job produced (see [`MetricSink::artifact`]), uploaded as soon as it arrives.
    Artifact {
        step: u64,
        name: String,
        bytes: Vec<u8>,
    },
}

/// The job thread's end: each report goes into a bounded channel.
pub struct ChannelSink {
    outbox: mpsc::Sender<OutboxItem>,
}

impl ChannelSink {
    /// The sink, a sender for checkpoints to share its order, and the streamer's receiver.
    pub fn new(capacity: usize) -> (ChannelSink, mpsc::Sender<OutboxItem>, mpsc::Receiver<OutboxItem>) {
        let (outbox, receiver) = mpsc::channel(capacity);
        (ChannelSink { outbox: outbox.clone() }, outbox, receiver)
    }
}

impl MetricSink for ChannelSink {
    fn report(&mut self, step: u64, name: &str, value: f64) {
        let wall_time_us = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
        // A closed channel means the trial is being dropped (lease lost): nothing to deliver to.
        let _ = self.outbox.blocking_send(OutboxItem::Point(MetricPoint {
            step,
            name: name.to_string(),
            value,
            wall_time_us,
        }));
    }

    fn artifact(&mut self, step: u64, name: &str, bytes: Vec<u8>) {
        // A closed channel means the trial is being dropped: nothing to deliver to.
        let _ = self.outbox.blocking_send(OutboxItem::Artifact { step, name: name.to_string(), bytes });
    }
}

/// Which trial attempt the stream reports for, and how to batch.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub trial_id: TrialId,
    pub epoch: LeaseEpoch,
    pub attempt: u32,
    pub batch_points: usize,
    pub batch_interval: Duration,
    pub max_backoff: Duration,
}

type Outbox = mpsc::Sender<MetricBatch>;

async fn open_stream(client: &mut Client) -> Result<(Outbox, Streaming<MetricAck>)> {
    let (outbox, requests) = mpsc::channel(MAX_UNACKED_BATCHES + 1);
    let acks = client.stream_metrics(ReceiverStream::new(requests)).await?.into_inner();
    Ok((outbox, acks))
}

/// How a trial's metric stream ended.
#[derive(Debug, Default)]
pub struct StreamEnd {
    /// Batches stored (what `CompleteTrial` reports).
    pub batches: u64,
    /// Points of a trial so short that no batch was ever due: they go with `CompleteTrial`
    /// instead, which saves a stream per tiny trial.
    pub tail: Vec<MetricPoint>,
}

/// Streams every point from `items` until the channel closes and all batches are stored. The
/// stream is opened only when the first batch is due.
pub async fn stream_trial_metrics(
    mut client: Client,
    settings: StreamSettings,
    mut items: mpsc::Receiver<OutboxItem>,
    stop: CancellationToken,
) -> Result<StreamEnd> {
    let mut unacked: VecDeque<MetricBatch> = VecDeque::new();
    let mut next_seq = 1u64;
    let mut buffer: Vec<MetricPoint> = Vec::new();
    let mut oldest: Option<Instant> = None;
    let mut input_done = false;
    // A checkpoint waiting for the batches before it to be stored.
    let mut checkpoint: Option<(u64, Vec<u8>)> = None;
    let mut backoff = Backoff::new(settings.max_backoff);
    let mut stream: Option<(Outbox, Streaming<MetricAck>)> = None;

    loop {
        if buffer.is_empty() && unacked.is_empty() {
            if let Some((step, bytes)) = checkpoint.take() {
                upload_checkpoint(&mut client, &settings, step, &bytes, &stop).await?;
                continue;
            }
            if input_done {
                return Ok(StreamEnd { batches: next_seq - 1, tail: Vec::new() });
            }
        }
        let flush_due = oldest.map(|t| t + settings.batch_interval);
        let mut flush = false;
        tokio::select! {
            item = items.recv(), if !input_done && checkpoint.is_none() && unacked.len() < MAX_UNACKED_BATCHES => match item {
                Some(OutboxItem::Point(point)) => {
                    oldest.get_or_insert_with(Instant::now);
                    buffer.push(point);
                    flush = buffer.len() >= settings.batch_points;
                }
                Some(OutboxItem::Checkpoint { step, bytes }) => {
                    checkpoint = Some((step, bytes));
                    flush = !buffer.is_empty();
                }
                Some(OutboxItem::Artifact { step, name, bytes }) => {
                    upload_artifact(&mut client, &settings, step, &name, bytes, &stop).await?;
                }
                None => {
                    input_done = true;
                    flush = !buffer.is_empty();
                }
            },
            _ = sleep_until_opt(flush_due) => flush = true,
            ack = next_ack(&mut stream) => match ack {
                Ok(Some(ack)) => {
                    backoff.reset();
                    match metric_ack::Status::try_from(ack.status).unwrap_or(metric_ack::Status::Unspecified) {
                        metric_ack::Status::Stored => unacked.retain(|b| b.seq > ack.seq),
                        metric_ack::Status::Gap => {
                            debug!(trial = %settings.trial_id, expected = ack.expected_seq, "metric gap; resending");
                            if let Some((outbox, _)) = &stream {
                                for batch in unacked.iter().filter(|b| b.seq >= ack.expected_seq) {
                                    let _ = outbox.send(batch.clone()).await;
                                }
                            }
                        }
                        metric_ack::Status::StaleEpoch => return Err(WorkerError::StaleLease(settings.trial_id.to_string())),
                        metric_ack::Status::Rejected | metric_ack::Status::Unspecified => {
                            return Err(WorkerError::Rejected(ack.message))
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    warn!(trial = %settings.trial_id, unacked = unacked.len(), "metric stream broke; reconnecting");
                    let (outbox, acks) = reconnect(&mut client, &mut backoff, &stop).await?;
                    for batch in &unacked {
                        let _ = outbox.send(batch.clone()).await;
                    }
                    stream = Some((outbox, acks));
                }
            },
            _ = stop.cancelled() => return Err(WorkerError::Stopped),
        }
        if flush && !buffer.is_empty() {
            if stream.is_none() && input_done && next_seq == 1 {
                return Ok(StreamEnd { batches: 0, tail: std::mem::take(&mut buffer) });
            }
            let batch = MetricBatch {
                trial_id: settings.trial_id.to_string(),
                epoch: settings.epoch.0,
                attempt: settings.attempt,
                seq: next_seq,
                points: std::mem::take(&mut buffer),
            };
            next_seq += 1;
            oldest = None;
            if stream.is_none() {
                stream = Some(reconnect(&mut client, &mut backoff, &stop).await?);
            }
            if let Some((outbox, _)) = &stream {
                // A failed send shows up as a broken ack stream, which resends `unacked`.
                let _ = outbox.send(batch.clone()).await;
            }
            unacked.push_back(batch);
        }
    }
}

/// The next ack of an open stream; never resolves while no stream is open.
async fn next_ack(
    stream: &mut Option<(Outbox, Streaming<MetricAck>)>,
) -> std::result::Result<Option<MetricAck>, tonic::Status> {
    match stream {
        Some((_, acks)) => acks.message().await,
        None => std::future::pending().await,
    }
}

/// Uploads a checkpoint, retrying while the coordinator is unreachable. A checkpoint the
/// coordinator refuses (too large, malformed) is skipped with a warning: the trial goes on.
async fn upload_checkpoint(
    client: &mut Client,
    settings: &StreamSettings,
    step: u64,
    bytes: &[u8],
    stop: &CancellationToken,
) -> Result<()> {
    let mut backoff = Backoff::new(settings.max_backoff);
    loop {
        let chunks = upload_chunks(settings.trial_id.as_str(), settings.epoch.0, settings.attempt, step, bytes);
        match client.upload_checkpoint(tokio_stream::iter(chunks)).await {
            Ok(receipt) => {
                debug!(trial = %settings.trial_id, step, bytes = bytes.len(), kept = receipt.into_inner().kept, "checkpoint stored");
                return Ok(());
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                return Err(WorkerError::StaleLease(settings.trial_id.to_string()))
            }
            Err(status) if matches!(status.code(), Code::InvalidArgument | Code::NotFound) => {
                warn!(trial = %settings.trial_id, step, %status, "checkpoint refused; continuing without it");
                return Ok(());
            }
            Err(status) => {
                let delay = backoff.next_delay();
                warn!(trial = %settings.trial_id, step, %status, retry_in_ms = delay.as_millis() as u64, "checkpoint upload failed");
                tokio::select! {
                    _ = stop.cancelled() => return Err(WorkerError::Stopped),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Uploads an artifact, retrying while the coordinator is unreachable; one it refuses (too large,
/// a bad name) is skipped with a warning.
async fn upload_artifact(
    client: &mut Client,
    settings: &StreamSettings,
    step: u64,
    name: &str,
    data: Vec<u8>,
    stop: &CancellationToken,
) -> Result<()> {
    let mut backoff = Backoff::new(settings.max_backoff);
    let upload = ArtifactUpload {
        trial_id: settings.trial_id.to_string(),
        epoch: settings.epoch.0,
        attempt: settings.attempt,
        step,
        name: name.to_string(),
        data,
    };
    loop {
        match client.upload_artifact(upload.clone()).await {
            Ok(receipt) => {
                debug!(trial = %settings.trial_id, step, name, path = %receipt.into_inner().path, "artifact stored");
                return Ok(());
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                return Err(WorkerError::StaleLease(settings.trial_id.to_string()))
            }
            Err(status) if matches!(status.code(), Code::InvalidArgument | Code::NotFound) => {
                warn!(trial = %settings.trial_id, step, name, %status, "artifact refused; continuing without it");
                return Ok(());
            }
            Err(status) => {
                let delay = backoff.next_delay();
                warn!(trial = %settings.trial_id, step, name, %status, retry_in_ms = delay.as_millis() as u64, "artifact upload failed");
                tokio::select! {
                    _ = stop.cancelled() => return Err(WorkerError::Stopped),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn reconnect(
    client: &mut Client,
    backoff: &mut Backoff,
    stop: &CancellationToken,
) -> Result<(Outbox, Streaming<MetricAck>)> {
    loop {
        match open_stream(client).await {
            Ok(stream) => return Ok(stream),
            Err(err) => {
                let delay = backoff.next_delay();
                warn!(%err, retry_in_ms = delay.as_millis() as u64, "cannot open metric stream");
                tokio::select! {
                    _ = stop.cancelled() => return Err(WorkerError::Stopped),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
