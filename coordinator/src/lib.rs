//! The sweep coordinator: hands trials to workers, keeps their state, writes their metrics.
//!
//! Requests flow down one layer at a time:
//! gRPC [`service`] -> [`handle`] (one owner of state) -> [`core`] -> pure rules ([`scheduler`],
//! [`leases`], [`objective`], [`stats`]) and storage ([`store`] in SQLite, [`parquet`] output).
//!
//! # Layout
//! - [`server`]: `run(listener, config, catalog, shutdown)`, used by the binary and the tests.
//! - [`service`]: WorkerService and SweepService; wire types in and out, no decisions.
//! - [`handle`]: the cloneable handle that sends requests to the core's thread.
//! - [`core`]: the state owner; each request is one SQLite transaction.
//! - [`scheduler`]: which pending trial goes to which worker (pure).
//! - [`leases`]: deadlines, expiry outcomes and epoch fencing (pure).
//! - [`objective`]: a trial's metric series folded into its objective (pure).
//! - [`stats`]: trials grouped by configuration, ranked over seeds (pure).
//! - [`store`]: SQLite schema and queries: sweeps, trials, workers, staged metric points.
//! - [`parquet`]: `trials.parquet`, `configs.parquet` and the metrics part files.
//! - [`checkpoint_store`]: where checkpoint files live (a directory; an object store fits the trait).
//! - [`auth`]: the bearer-token gate on every call.
//! - [`inspect`]: a state dir read without a coordinator (`sweep best --state-dir`).
//! - [`config`], [`error`], [`clock`].

pub mod auth;
pub mod checkpoint_store;
pub mod clock;
pub mod config;
pub mod core;
pub mod error;
pub mod handle;
pub mod inspect;
pub mod leases;
pub mod objective;
pub mod parquet;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod stats;
pub mod store;

pub use config::CoordinatorConfig;
pub use error::{CoordinatorError, Result};
pub use server::run;
