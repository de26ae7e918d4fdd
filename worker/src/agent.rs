//! The worker agent: registers, takes leases while it has free slots, runs each trial, and
//! heartbeats every lease it holds.
//!
//! Tasks:
//! - the acquire loop (this function): asks for up to `free slots` trials, waiting on the
//!   coordinator (long poll) when there is no work, and spawns one runner per lease;
//! - the heartbeat loop: every interval, extends all held leases; a lease the coordinator revoked
//!   is cancelled and its trial dropped;
//! - one runner per trial ([`crate::runner`]).
//!
//! Shutdown (`stop` fires, e.g. on SIGTERM): no new leases; running trials are cancelled and
//! handed back (or, with `finish_on_term`, run to the end); then the agent returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sweep_shared::ids::{TrialId, WorkerId};
use sweep_shared::params::JobCatalog;
use sweep_shared::proto::{AcquireRequest, HeartbeatRequest, LeaseRef, RegisterRequest};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::{connect, Backoff, Client};
use crate::config::WorkerConfig;
use crate::error::{Result, WorkerError};
use crate::jobs::JobRegistry;
use crate::runner::{run_trial, TrialControl, TrialEnd};

/// Trials this worker holds, by id: their lease epoch and their controls. A std mutex: it is
/// held only to copy or change an entry, never across an await.
type Held = Arc<Mutex<HashMap<TrialId, (u64, TrialControl)>>>;

/// What the agent did before it stopped.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AgentSummary {
    pub completed: u64,
    pub failed: u64,
    pub handed_back: u64,
    pub dropped: u64,
}

struct Registration {
    worker_id: WorkerId,
    heartbeat_every: Duration,
}

async fn register(
    client: &mut Client,
    config: &WorkerConfig,
    kinds: &[String],
    stop: &CancellationToken,
) -> Result<Registration> {
    let mut backoff = Backoff::new(config.max_backoff);
    loop {
        let request = RegisterRequest {
            hostname: hostname(),
            job_kinds: kinds.to_vec(),
            devices: vec![config.device.to_string()],
            slots: config.slots,
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        match client.register(request).await {
            Ok(response) => {
                let response = response.into_inner();
                info!(worker = %response.worker_id, slots = config.slots, device = %config.device, "registered");
                return Ok(Registration {
                    worker_id: WorkerId(response.worker_id),
                    heartbeat_every: Duration::from_millis(response.heartbeat_interval_ms.max(100)),
                });
            }
            Err(status) if matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::Unauthenticated) => {
                return Err(status.into())
            }
            Err(status) => {
                let delay = backoff.next_delay();
                warn!(%status, retry_in_ms = delay.as_millis() as u64, "register failed");
                tokio::select! {
                    _ = stop.cancelled() => return Err(WorkerError::Stopped),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs the agent until `stop` fires (or, with `idle_exit`, until no work came for that long).
pub async fn run(config: WorkerConfig, registry: Arc<JobRegistry>, stop: CancellationToken) -> Result<AgentSummary> {
    if config.slots == 0 {
        return Err(WorkerError::Config("slots must be at least 1".into()));
    }
    let offered: Vec<String> = registry.kinds().into_iter().map(str::to_string).collect();
    let kinds: Vec<String> = if config.job_kinds.is_empty() {
        offered
    } else {
        for kind in &config.job_kinds {
            if !offered.contains(kind) {
                return Err(WorkerError::Config(format!(
                    "unknown job kind '{kind}'; this worker runs {}",
                    offered.join(", ")
                )));
            }
        }
        config.job_kinds.clone()
    };
    let config = Arc::new(config);
    let mut client = connect(&config.coordinator, config.max_backoff, config.connect_timeout, &stop).await?;
    let registration = register(&mut client, &config, &kinds, &stop).await?;
    let worker_id = Arc::new(Mutex::new(registration.worker_id.clone()));

    let held: Held = Arc::default();
    // Runners stop on their own token so that shutdown can hand trials back before they end.
    let runners_stop = CancellationToken::new();
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat_loop(
        client.clone(),
        worker_id.clone(),
        held.clone(),
        registration.heartbeat_every,
        heartbeat_stop.clone(),
    ));

    let mut running: JoinSet<TrialEnd> = JoinSet::new();
    let mut summary = AgentSummary::default();
    let mut idle_since = tokio::time::Instant::now();
    let mut backoff = Backoff::new(config.max_backoff);
    while !stop.is_cancelled() {
        while let Some(done) = running.try_join_next() {
            tally(&mut summary, done);
        }
        let free = config.slots as usize - running.len();
        if free == 0 {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(done) = running.join_next() => tally(&mut summary, done),
            }
            continue;
        }
        let id = worker_id.lock().map(|w| w.to_string()).unwrap_or_default();
        let request =
            AcquireRequest { worker_id: id, max_trials: free as u32, wait_ms: config.acquire_wait.as_millis() as u64 };
        let acquired = tokio::select! {
            _ = stop.cancelled() => break,
            acquired = client.acquire_trials(request) => acquired,
        };
        let leases = match acquired {
            Ok(response) => {
                backoff.reset();
                response.into_inner().leases
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                warn!("coordinator does not know this worker; registering again");
                let again = register(&mut client, &config, &kinds, &stop).await?;
                if let Ok(mut w) = worker_id.lock() {
                    *w = again.worker_id;
                }
                continue;
            }
            Err(status) => {
                let delay = backoff.next_delay();
                warn!(%status, retry_in_ms = delay.as_millis() as u64, "acquire failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        if leases.is_empty() {
            if config.idle_exit.is_some_and(|idle| running.is_empty() && idle_since.elapsed() >= idle) {
                info!("no work for a while; exiting");
                break;
            }
            continue;
        }
        idle_since = tokio::time::Instant::now();
        for lease in leases {
            let control = TrialControl::default();
            if let Ok(mut held) = held.lock() {
                held.insert(TrialId(lease.trial_id.clone()), (lease.epoch, control.clone()));
            }
            let held = held.clone();
            let (client, registry, config, stop) =
                (client.clone(), registry.clone(), config.clone(), runners_stop.clone());
            running.spawn(async move {
                let trial_id = TrialId(lease.trial_id.clone());
                let end = run_trial(client, registry, config, lease, control, stop).await;
                if let Ok(mut held) = held.lock() {
                    held.remove(&trial_id);
                }
                end
            });
        }
    }

    // Shutdown: hand running trials back unless asked to finish them.
    if !running.is_empty() {
        if config.finish_on_term {
            info!(trials = running.len(), "finishing running trials before exit");
        } else {
            info!(trials = running.len(), "handing running trials back");
            if let Ok(held) = held.lock() {
                for (_, control) in held.values() {
                    control.cancel.cancel();
                }
            }
        }
    }
    while let Some(done) = running.join_next().await {
        tally(&mut summary, done);
    }
    runners_stop.cancel();
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
    info!(?summary, "worker stopped");
    Ok(summary)
}

fn tally(summary: &mut AgentSummary, done: std::result::Result<TrialEnd, tokio::task::JoinError>) {
    match done {
        Ok(TrialEnd::Completed) => summary.completed += 1,
        Ok(TrialEnd::Failed { .. }) => summary.failed += 1,
        Ok(TrialEnd::HandedBack) => summary.handed_back += 1,
        Ok(TrialEnd::Dropped) | Err(_) => summary.dropped += 1,
    }
}

async fn heartbeat_loop(
    mut client: Client,
    worker_id: Arc<Mutex<WorkerId>>,
    held: Held,
    every: Duration,
    stop: CancellationToken,
) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let leases: Vec<LeaseRef> = match held.lock() {
            Ok(held) => {
                held.iter().map(|(t, (epoch, _))| LeaseRef { trial_id: t.to_string(), epoch: *epoch }).collect()
            }
            Err(_) => continue,
        };
        let id = worker_id.lock().map(|w| w.to_string()).unwrap_or_default();
        match client.heartbeat(HeartbeatRequest { worker_id: id, leases }).await {
            Ok(response) => {
                let response = response.into_inner();
                if !response.known {
                    warn!("coordinator does not know this worker; its leases are void");
                }
                if let Ok(held) = held.lock() {
                    for revoked in response.revoked {
                        if let Some((epoch, control)) = held.get(&TrialId(revoked.trial_id.clone())) {
                            if *epoch == revoked.epoch {
                                warn!(trial = %revoked.trial_id, epoch = revoked.epoch, "lease revoked; dropping trial");
                                control.revoked.store(true, std::sync::atomic::Ordering::Relaxed);
                                control.cancel.cancel();
                            }
                        }
                    }
                }
            }
            Err(status) => warn!(%status, "heartbeat failed"),
        }
    }
}
