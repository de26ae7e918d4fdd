//! Types both sides of sweep agree on.
//!
//! # Layout
//! - [`auth`]: the bearer token (client interceptor, constant-time check) and TLS client settings.
//! - [`proto`]: the generated gRPC code of `proto/sweep.proto` (package `sweep.v1`).
//! - [`ids`]: wire ids as newtypes; deterministic trial and config ids.
//! - [`params`]: typed hyperparameter values, epsilon schedules, the parameter schema of a job.
//! - [`spec`]: the YAML sweep spec, parsed and validated with line numbers.
//! - [`space`]: a validated spec expanded into trials (grid or random search).
//! - [`checkpoint`]: a trial checkpoint as safetensors plus a typed header.
//! - [`limits`]: sizes the coordinator accepts from the wire.

pub mod auth;
pub mod checkpoint;
pub mod ids;
pub mod limits;
pub mod params;
pub mod space;
pub mod spec;

/// Generated code of `proto/sweep.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sweep.v1");
}
