//! Settings of one coordinator: where it keeps state and output, and its timing.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Holds `sweep.db` (SQLite) and, later, the checkpoint store.
    pub state_dir: PathBuf,
    /// Parquet output: `<out_dir>/<sweep>/trials.parquet` and `<out_dir>/<sweep>/metrics/`.
    pub out_dir: PathBuf,
    /// A lease lives this long without a heartbeat.
    pub lease_ttl: Duration,
    /// What workers are told to heartbeat at; a third of the TTL leaves room for two misses.
    pub heartbeat_interval: Duration,
    /// How often the reconcile loop expires leases and flushes metrics.
    pub reconcile_interval: Duration,
    /// Staged metric points older than this are written to a Parquet part.
    pub flush_interval: Duration,
    /// A sweep's staged points are written to a part once there are this many.
    pub flush_rows: usize,
    /// Leases granted per trial before it fails for good (hand-backs by stopping workers excluded).
    pub max_attempts: u32,
    /// Checkpoints kept per trial; older ones are deleted.
    pub keep_checkpoints: usize,
    /// Where checkpoint files go (default `<state_dir>/checkpoints`).
    pub checkpoint_dir: PathBuf,
    /// After a restart, running leases get this long for their workers to check back in.
    pub restart_grace: Duration,
    /// At start, hand every running trial back to pending at once (`sweep resume`: the workers
    /// that held them are gone).
    pub requeue_running_at_start: bool,
    /// Shared secret workers and clients must present; `None` accepts anyone.
    pub token: Option<String>,
    /// PEM certificate and key: serve TLS (rustls) instead of plain HTTP/2.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl CoordinatorConfig {
    pub fn new(state_dir: PathBuf, out_dir: PathBuf) -> Self {
        CoordinatorConfig {
            checkpoint_dir: state_dir.join("checkpoints"),
            state_dir,
            out_dir,
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            reconcile_interval: Duration::from_millis(500),
            flush_interval: Duration::from_secs(5),
            flush_rows: 250_000,
            max_attempts: 3,
            keep_checkpoints: 2,
            restart_grace: Duration::from_secs(30),
            requeue_running_at_start: false,
            token: None,
            tls: None,
        }
    }

    /// Sets the lease TTL and the heartbeat interval that goes with it.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self.restart_grace = ttl;
        self.heartbeat_interval = ttl / 3;
        self.reconcile_interval = self.reconcile_interval.min(ttl / 4);
        self
    }
}
