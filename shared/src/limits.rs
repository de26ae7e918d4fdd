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
/// Largest artifact (a sample grid, a plot) one upload carries.
pub const MAX_ARTIFACT_BYTES: usize = 8 * 1024 * 1024;
/// Longest artifact file name.
pub const MAX_ARTIFACT_NAME: usize = 128;

/// Whether `name` may name an artifact file: 1..=[`MAX_ARTIFACT_NAME`] letters, digits, '.', '_'
/// and '-', not starting with '.' (so no hidden files, no path separators, no "..").
pub fn valid_artifact_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ARTIFACT_NAME
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_names_are_plain_file_names() {
        for good in ["grid_epoch_0001.png", "step-2.txt", "a"] {
            assert!(valid_artifact_name(good), "{good}");
        }
        let long = "x".repeat(MAX_ARTIFACT_NAME + 1);
        for bad in ["", ".hidden", "../up.png", "a/b.png", "a\\b", "..", "sp ace.png", "é.png", long.as_str()] {
            assert!(!valid_artifact_name(bad), "{bad}");
        }
    }
}
