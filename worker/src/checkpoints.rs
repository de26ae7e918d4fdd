//! Local checkpoints: the worker keeps the last few checkpoints of each running trial on disk.
//!
//! Files are `<dir>/<trial_id>/step-<step>.safetensors`, written to a temp file and renamed, so a
//! crash never leaves a half-written checkpoint under a final name. Only the newest `keep` stay.

use std::path::{Path, PathBuf};

use sweep_shared::checkpoint::Checkpoint;
use tracing::debug;

use crate::jobs::{CheckpointSink, JobError};

pub struct LocalCheckpoints {
    dir: PathBuf,
    every: u64,
    keep: usize,
}

impl LocalCheckpoints {
    /// Checkpoints every `every` steps (0: never) into `<root>/<trial_id>/`.
    pub fn new(root: &Path, trial_id: &str, every: u64) -> Self {
        LocalCheckpoints { dir: root.join(trial_id), every, keep: 2 }
    }

    /// Paths of the stored checkpoints, oldest first.
    pub fn stored(&self) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut found: Vec<(u64, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let step = name.strip_prefix("step-")?.strip_suffix(".safetensors")?.parse().ok()?;
                Some((step, e.path()))
            })
            .collect();
        found.sort();
        found
    }

    /// Deletes the trial's checkpoints (after it ended).
    pub fn clear(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl CheckpointSink for LocalCheckpoints {
    fn wants(&self, step: u64) -> bool {
        self.every > 0 && step > 0 && step.is_multiple_of(self.every)
    }

    fn save(&mut self, checkpoint: Checkpoint) -> Result<(), JobError> {
        let io = |e: std::io::Error| JobError::Failed(format!("writing checkpoint to {}: {e}", self.dir.display()));
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let bytes = checkpoint.encode()?;
        let tmp = self.dir.join(format!(".step-{}.tmp", checkpoint.step));
        let dest = self.dir.join(format!("step-{}.safetensors", checkpoint.step));
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, &dest).map_err(io)?;
        debug!(path = %dest.display(), bytes = bytes.len(), "checkpoint saved");
        let stored = self.stored();
        for (_, old) in stored.iter().take(stored.len().saturating_sub(self.keep)) {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_two() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = LocalCheckpoints::new(dir.path(), "t1", 5);
        assert!(!sink.wants(3) && sink.wants(10) && !sink.wants(0));
        for step in [5, 10, 15] {
            sink.save(Checkpoint::new("quadratic", step, &step).unwrap()).unwrap();
        }
        let steps: Vec<u64> = sink.stored().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![10, 15]);
        let back = Checkpoint::decode(&std::fs::read(&sink.stored()[1].1).unwrap()).unwrap();
        assert_eq!(back.step, 15);
        sink.clear();
        assert!(sink.stored().is_empty());
    }
}
