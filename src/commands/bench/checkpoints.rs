//! `sweep bench checkpoints`: checkpoint upload and fetch throughput over gRPC, and the time from
//! a worker's last heartbeat to its trial's lease going to another worker.
//!
//! No worker processes: the bench plays the worker itself against an embedded coordinator. It
//! takes a lease, uploads `--mb` MiB of random bytes as a checkpoint `--rounds` times (each a new
//! step, so the store keeps, prunes and deletes as in a sweep), fetches the newest back
//! `--rounds` times and checks its sha256. Then it stops heartbeating and asks, as a second
//! worker, for work: the lease expires after `--lease-ttl`, the reconcile pass puts the trial back,
//! and the long-polling acquire hands it over. That interval, minus nothing, is what a dead worker
//! costs before its trial runs again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;
use rand::{RngCore, SeedableRng};
use sweep_coordinator::CoordinatorConfig;
use sweep_shared::auth::ConnectOptions;
use sweep_shared::checkpoint::sha256_hex;
use sweep_shared::params::JobCatalog;
use sweep_shared::proto::{
    AcquireRequest, FetchCheckpointRequest, HeartbeatRequest, LeaseRef, RegisterRequest, SubmitRequest, TrialLease,
};
use sweep_worker::checkpoints::upload_chunks;
use sweep_worker::client::{connect, Client};
use sweep_worker::JobRegistry;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Measurement, Report, Workspace, WorkspaceArgs};

#[derive(Args, Clone)]
pub struct CheckpointsArgs {
    /// Size of each checkpoint, MiB.
    #[arg(long, default_value_t = 64)]
    pub mb: u64,
    /// Uploads, and fetches, to time.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Lease TTL of the embedded coordinator, for the failover row.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    #[command(flatten)]
    pub workspace: WorkspaceArgs,
}

const SPEC: &str = "name: bench-checkpoints\njob: {kind: quadratic}\nmethod: grid\n\
                    metric: {name: loss, goal: minimize}\nparameters:\n  x: {values: [0.0]}\n";

pub async fn checkpoints(args: &CheckpointsArgs) -> anyhow::Result<Report> {
    let workspace = Workspace::create(&args.workspace, "checkpoints")?;
    let outcome = run(args, &workspace).await;
    workspace.finish(outcome)
}

async fn register(client: &mut Client, name: &str) -> anyhow::Result<String> {
    let request = RegisterRequest {
        hostname: name.into(),
        job_kinds: vec!["quadratic".into()],
        devices: vec!["cpu".into()],
        slots: 1,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    Ok(client.register(request).await?.into_inner().worker_id)
}

async fn run(args: &CheckpointsArgs, workspace: &Workspace) -> anyhow::Result<Report> {
    ensure!(args.mb > 0 && args.rounds > 0, "--mb and --rounds must be at least 1");
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.context("binding 127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let config =
        CoordinatorConfig::new(workspace.path.join("state"), workspace.path.join("out")).with_lease_ttl(args.lease_ttl);
    let catalog: Arc<dyn JobCatalog> = Arc::new(JobRegistry::builtin());
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sweep_coordinator::run(listener, config, catalog, async move {
        let _ = server_stopped.await;
    }));
    let outcome = measure(args, &url).await;
    let _ = stop_server.send(());
    server.await.context("coordinator task")?.context("coordinator")?;
    outcome
}

async fn measure(args: &CheckpointsArgs, url: &str) -> anyhow::Result<Report> {
    let options = ConnectOptions { url: url.to_string(), ..ConnectOptions::default() };
    let stop = CancellationToken::new();
    let mut worker = connect(&options, Duration::from_secs(1), Some(Duration::from_secs(10)), &stop).await?;
    let mut users = super::super::client::connect(&options).await?;
    users
        .submit(SubmitRequest { spec_yaml: SPEC.into(), source_name: "bench".into(), extend: false })
        .await
        .map_err(super::super::client::refused)?;
    let first = register(&mut worker, "bench-a").await?;
    let lease: TrialLease = worker
        .acquire_trials(AcquireRequest { worker_id: first.clone(), max_trials: 1, wait_ms: 5_000 })
        .await?
        .into_inner()
        .leases
        .pop()
        .context("the coordinator leased no trial")?;

    let mut bytes = vec![0u8; (args.mb * 1024 * 1024) as usize];
    rand_chacha::ChaCha8Rng::seed_from_u64(7).fill_bytes(&mut bytes);
    let sha = sha256_hex(&bytes);
    let started = Instant::now();
    for round in 1..=u64::from(args.rounds) {
        let chunks = upload_chunks(&lease.trial_id, lease.epoch, lease.attempt, round, &bytes);
        worker.upload_checkpoint(tokio_stream::iter(chunks)).await.context("uploading a checkpoint")?;
    }
    let upload_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    for _ in 0..args.rounds {
        let request = FetchCheckpointRequest {
            trial_id: lease.trial_id.clone(),
            epoch: lease.epoch,
            step: u64::from(args.rounds),
        };
        let mut stream = worker.fetch_checkpoint(request).await?.into_inner();
        let mut fetched = Vec::with_capacity(bytes.len());
        while let Some(chunk) = stream.next().await {
            fetched.extend_from_slice(&chunk?.data);
        }
        ensure!(sha256_hex(&fetched) == sha, "a fetched checkpoint differs from the uploaded one");
    }
    let fetch_seconds = started.elapsed().as_secs_f64();

    // The first worker heartbeats once more, then falls silent; a second asks for work and waits.
    let second = register(&mut worker, "bench-b").await?;
    let held = vec![LeaseRef { trial_id: lease.trial_id.clone(), epoch: lease.epoch }];
    let heartbeat = worker.heartbeat(HeartbeatRequest { worker_id: first.clone(), leases: held }).await?.into_inner();
    ensure!(heartbeat.revoked.is_empty(), "the lease expired during the transfers; raise --lease-ttl");
    let silent_since = Instant::now();
    let deadline = Duration::from_secs(30) + args.lease_ttl * 3;
    let mut taken_over = None;
    while silent_since.elapsed() < deadline {
        let request = AcquireRequest { worker_id: second.clone(), max_trials: 1, wait_ms: 10_000 };
        let leases = worker.acquire_trials(request).await?.into_inner().leases;
        if let Some(again) = leases.into_iter().find(|l| l.trial_id == lease.trial_id) {
            ensure!(
                again.epoch > lease.epoch && again.attempt == lease.attempt + 1,
                "the re-lease is not a new attempt"
            );
            ensure!(
                again.checkpoint.as_ref().map(|c| c.step) == Some(u64::from(args.rounds)),
                "no checkpoint to resume"
            );
            taken_over = Some(silent_since.elapsed().as_secs_f64());
            break;
        }
    }
    let failover = taken_over.context("the trial was not re-leased")?;

    let bytes_total = args.mb * u64::from(args.rounds);
    Ok(Report {
        bench: "checkpoints",
        measurements: vec![
            Measurement::new(format!("checkpoint upload, {} x {} MiB, sha256 checked", args.rounds, args.mb), "MiB", bytes_total, upload_seconds),
            Measurement::new(format!("checkpoint fetch, {} x {} MiB, sha256 checked", args.rounds, args.mb), "MiB", bytes_total, fetch_seconds),
            Measurement::new(format!("worker silent -> trial re-leased (lease TTL {:?})", args.lease_ttl), "failover", 1, failover),
        ],
        comparisons: Vec::new(),
        notes: vec![format!(
            "one coordinator and one gRPC client in this process over loopback; the store keeps 2 checkpoints per trial; \
             failover = {failover:.2} s from the dead worker's last heartbeat to the acquire that hands its trial, with \
             its checkpoint, to another worker (lease TTL + up to one reconcile pass)"
        )],
    })
}
