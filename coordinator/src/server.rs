//! Serving: binds the gRPC services to a listener and runs until told to stop.
//!
//! [`run`] is what the `sweep coordinator` binary and the tests call alike: it opens the core,
//! starts the reconcile loop (lease expiry, metric flushes) on a named interval, serves both
//! services on the given listener, and on shutdown stops accepting, lets the core flush, and
//! returns once everything is written.

use std::future::Future;
use std::sync::Arc;

use sweep_shared::limits::MAX_MESSAGE_BYTES;
use sweep_shared::params::JobCatalog;
use sweep_shared::proto::sweep_service_server::SweepServiceServer;
use sweep_shared::proto::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, ServerTlsConfig};
use tracing::{info, warn};

use crate::auth::RequireToken;
use crate::config::CoordinatorConfig;
use crate::core::Core;
use crate::error::{CoordinatorError, Result};
use crate::handle::CoordinatorHandle;
use crate::service::Service;

/// Serves a coordinator on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: CoordinatorConfig,
    catalog: Arc<dyn JobCatalog>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let work_available = Arc::new(Notify::new());
    let reconcile_interval = config.reconcile_interval;
    let gate = RequireToken::new(config.token.as_deref());
    let gate_on = config.token.is_some();
    let tls = config.tls.clone();
    let core = Core::open(config, catalog, work_available.clone())?;
    let (handle, core_thread) = CoordinatorHandle::spawn(core, work_available);

    let stop = CancellationToken::new();
    let reconcile = tokio::spawn(reconcile_loop(handle.clone(), reconcile_interval, stop.clone()));

    let addr = listener.local_addr().map_err(|e| CoordinatorError::Io { path: "listener".into(), source: e })?;
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = &tls {
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| CoordinatorError::io(p, e));
        let identity = Identity::from_pem(read(cert)?, read(key)?);
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .map_err(|e| CoordinatorError::InvalidRequest(format!("TLS certificate or key: {e}")))?;
    }
    info!(%addr, tls = tls.is_some(), token = gate_on, "coordinator serving");
    let service = Service::new(handle);
    let served = builder
        .add_service(InterceptedService::new(
            WorkerServiceServer::new(service.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            gate.clone(),
        ))
        .add_service(InterceptedService::new(
            SweepServiceServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            gate,
        ))
        // Small request/response pairs: without TCP_NODELAY, Nagle plus delayed ACKs add ~40 ms
        // to every call (tonic does not set it for an incoming stream it did not bind).
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await;
    stop.cancel();
    let _ = reconcile.await;
    // The server and the reconcile loop held the last handles: the core now flushes and exits.
    let _ = tokio::task::spawn_blocking(move || core_thread.join()).await;
    info!("coordinator stopped");
    served.map_err(|e| CoordinatorError::FailedPrecondition(format!("serving failed: {e}")))
}

async fn reconcile_loop(handle: CoordinatorHandle, every: std::time::Duration, stop: CancellationToken) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {
                if let Err(err) = handle.call(|core| core.reconcile()).await {
                    warn!(%err, "reconcile pass failed");
                }
            }
        }
    }
}
