//! Bounds on what crosses the wire, shared so that both sides agree on them.

/// Largest gRPC message either side decodes.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Most metric points in one batch.
pub const MAX_POINTS_PER_BATCH: usize = 100_000;
/// Longest metric name.
pub const MAX_METRIC_NAME: usize = 128;
/// Longest spec text.
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;
/// Most trials one sweep may expand to.
pub const MAX_TRIALS_PER_SWEEP: u64 = 1_000_000;
/// Most leases one acquire call hands out.
pub const MAX_LEASES_PER_ACQUIRE: u32 = 256;
/// Largest checkpoint the coordinator stores.
pub const MAX_CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Bytes per checkpoint chunk on the wire.
pub const CHECKPOINT_CHUNK_BYTES: usize = 1024 * 1024;
