//! Runs one leased trial from start to its report: build the job, run it on a blocking thread
//! while its metrics stream to the coordinator, then complete, fail or hand back the trial.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sweep_shared::ids::{LeaseEpoch, TrialId};
use sweep_shared::params::Params;
use sweep_shared::proto::{CompleteRequest, FailRequest, ReleaseRequest, TrialLease};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::{info, warn};

use crate::checkpoints::{restore_from_lease, RemoteCheckpoints};
use crate::client::{Backoff, Client};
use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::jobs::{CancelFlag, JobContext, JobError, JobRegistry};
use crate::metrics::{stream_trial_metrics, ChannelSink, StreamEnd, StreamSettings};

/// Points buffered between a job thread and its metric stream.
const POINT_CHANNEL_CAPACITY: usize = 8192;
/// How long a report keeps retrying while the coordinator is unreachable.
const REPORT_RETRY_FOR: Duration = Duration::from_secs(120);

/// The agent's view of a running trial: how to stop it, and why it was stopped.
#[derive(Clone, Default)]
pub struct TrialControl {
    pub cancel: CancelFlag,
    /// Set when the coordinator revoked the lease: the trial is dropped without a report.
    pub revoked: Arc<AtomicBool>,
}

/// How a trial ended on this worker.
#[derive(Debug, Clone, PartialEq)]
pub enum TrialEnd {
    Completed,
    Failed {
        error: String,
        permanent: bool,
    },
    HandedBack,
    /// The lease was no longer ours; nothing was reported.
    Dropped,
}

pub async fn run_trial(
    client: Client,
    registry: Arc<JobRegistry>,
    config: Arc<WorkerConfig>,
    lease: TrialLease,
    control: TrialControl,
    stop: CancellationToken,
) -> TrialEnd {
    let trial_id = TrialId(lease.trial_id.clone());
    let epoch = LeaseEpoch(lease.epoch);
    let started = Instant::now();
    info!(trial = %trial_id, kind = %lease.job_kind, attempt = lease.attempt, "trial started");

    let outcome = execute(client.clone(), registry, &config, &lease, &control, stop.clone()).await;
    let end = match outcome {
        Ok(StreamEnd { batches, tail }) => {
            let req = CompleteRequest {
                points: tail,
                trial_id: trial_id.to_string(),
                epoch: epoch.0,
                batches,
                wall_seconds: started.elapsed().as_secs_f64(),
            };
            report(&stop, || {
                let mut c = client.clone();
                let req = req.clone();
                async move { c.complete_trial(req).await.map(|_| ()) }
            })
            .await
            .map_or(TrialEnd::Dropped, |_| TrialEnd::Completed)
        }
        Err(Outcome::Revoked) => TrialEnd::Dropped,
        Err(Outcome::HandBack) => {
            let req = ReleaseRequest {
                trial_id: trial_id.to_string(),
                epoch: epoch.0,
                reason: "worker shutting down".into(),
            };
            report(&stop, || {
                let mut c = client.clone();
                let req = req.clone();
                async move { c.release_trial(req).await.map(|_| ()) }
            })
            .await
            .map_or(TrialEnd::Dropped, |_| TrialEnd::HandedBack)
        }
        Err(Outcome::Failed { error, permanent }) => {
            let req = FailRequest { trial_id: trial_id.to_string(), epoch: epoch.0, error: error.clone(), permanent };
            report(&stop, || {
                let mut c = client.clone();
                let req = req.clone();
                async move { c.fail_trial(req).await.map(|_| ()) }
            })
            .await
            .map_or(TrialEnd::Dropped, |_| TrialEnd::Failed { error, permanent })
        }
    };
    info!(trial = %trial_id, end = ?end, seconds = started.elapsed().as_secs_f64(), "trial ended");
    end
}

enum Outcome {
    Revoked,
    HandBack,
    Failed { error: String, permanent: bool },
}

/// Runs the job and streams its metrics; returns how the metric stream ended.
async fn execute(
    client: Client,
    registry: Arc<JobRegistry>,
    config: &WorkerConfig,
    lease: &TrialLease,
    control: &TrialControl,
    stop: CancellationToken,
) -> Result<StreamEnd, Outcome> {
    let params: Params = serde_json::from_str(&lease.params_json)
        .map_err(|e| Outcome::Failed { error: format!("params do not parse: {e}"), permanent: true })?;
    let Some(factory) = registry.factory(&lease.job_kind) else {
        return Err(Outcome::Failed {
            error: format!("this worker cannot run job kind '{}'", lease.job_kind),
            permanent: true,
        });
    };
    let mut restore_client = client.clone();
    let build = || factory.create(&params, lease.seed);
    let (mut job, resumed_after) = match restore_from_lease(&mut restore_client, lease, build).await {
        Ok(Ok(restored)) => restored,
        Ok(Err(e)) => return Err(Outcome::Failed { error: e.to_string(), permanent: true }),
        Err(WorkerError::StaleLease(_)) => return Err(Outcome::Revoked),
        Err(e) => return Err(Outcome::Failed { error: format!("restoring the checkpoint: {e}"), permanent: false }),
    };
    if resumed_after > 0 {
        info!(trial = %lease.trial_id, step = resumed_after, "continuing after checkpoint");
    }
    let checkpoint_every = params.u64("checkpoint_every").unwrap_or(0);

    let (mut sink, outbox, items) = ChannelSink::new(POINT_CHANNEL_CAPACITY);
    let mut checkpoints = RemoteCheckpoints::new(outbox, checkpoint_every);
    let stream_stop = stop.child_token();
    let settings = StreamSettings {
        trial_id: TrialId(lease.trial_id.clone()),
        epoch: LeaseEpoch(lease.epoch),
        attempt: lease.attempt,
        batch_points: config.batch_points,
        batch_interval: config.batch_interval,
        max_backoff: config.max_backoff,
    };
    let streamer = tokio::spawn(stream_trial_metrics(client, settings, items, stream_stop.clone()));

    let cancel = control.cancel.clone();
    let seed = lease.seed;
    let job_result = tokio::task::spawn_blocking(move || {
        let mut ctx = JobContext { seed, metrics: &mut sink, checkpoints: &mut checkpoints, cancel };
        let result = job.run(&mut ctx);
        // Dropping the sink and the checkpoint sender closes the outbox: the stream sees the end.
        drop(ctx);
        drop(sink);
        drop(checkpoints);
        result
    })
    .await;

    let revoked = || control.revoked.load(Ordering::Relaxed);
    match job_result {
        Ok(Ok(())) => {}
        Ok(Err(JobError::Cancelled)) => {
            stream_stop.cancel();
            let _ = streamer.await;
            return Err(if revoked() { Outcome::Revoked } else { Outcome::HandBack });
        }
        Ok(Err(err)) => {
            // Deliver what the job reported before it failed, then report the failure.
            let _ = streamer.await;
            let permanent = !matches!(err, JobError::Checkpoint(_));
            return Err(Outcome::Failed { error: err.to_string(), permanent });
        }
        Err(join_error) => {
            stream_stop.cancel();
            let _ = streamer.await;
            return Err(Outcome::Failed { error: format!("job panicked: {join_error}"), permanent: false });
        }
    }
    match streamer.await {
        Ok(Ok(end)) => Ok(end),
        Ok(Err(WorkerError::StaleLease(_))) => Err(Outcome::Revoked),
        Ok(Err(WorkerError::Stopped)) => Err(if revoked() { Outcome::Revoked } else { Outcome::HandBack }),
        Ok(Err(err)) => Err(Outcome::Failed { error: err.to_string(), permanent: false }),
        Err(join_error) => {
            Err(Outcome::Failed { error: format!("metric stream panicked: {join_error}"), permanent: false })
        }
    }
}

/// Sends a report, retrying while the coordinator is unreachable. `None` when the coordinator
/// refused it for good (stale lease) or it could not be delivered in time.
async fn report<F, Fut>(stop: &CancellationToken, mut send: F) -> Option<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_secs(5));
    loop {
        match send().await {
            Ok(()) => return Some(()),
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
                ) && started.elapsed() < REPORT_RETRY_FOR =>
            {
                let delay = backoff.next_delay();
                warn!(%status, retry_in_ms = delay.as_millis() as u64, "report not delivered; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(status) => {
                warn!(code = ?status.code(), message = status.message(), "report refused; dropping the trial");
                return None;
            }
        }
    }
}
