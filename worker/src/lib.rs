//! The sweep worker agent and the jobs it runs.
//!
//! # Layout
//! - [`agent`]: register, acquire leases while slots are free, heartbeat, shut down cleanly.
//! - [`runner`]: one trial from lease to report (complete, fail, hand back).
//! - [`metrics`]: job metric points -> batched, exactly-once `StreamMetrics` to the coordinator.
//! - [`checkpoints`]: a job's checkpoints to the coordinator (in order with its metrics), and
//!   fetch, verify and restore with fallback.
//! - [`client`]: connecting with retry and back-off.
//! - [`jobs`]: the job trait and registry; one module per job family (`rl`, `nlp`, ...).
//! - [`data`]: where jobs find data sets and models (local directory, else the Hugging Face Hub)
//!   and where they cache derived data.
//! - [`config`], [`error`].

pub mod agent;
pub mod checkpoints;
pub mod client;
pub mod config;
pub mod data;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod runner;

pub use agent::{run, AgentSummary};
pub use config::{Device, WorkerConfig};
pub use data::DataPaths;
pub use error::{Result, WorkerError};
pub use jobs::{JobEnv, JobRegistry};
