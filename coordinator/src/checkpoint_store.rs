//! Where checkpoint files live: a directory under the state dir by default.
//!
//! The coordinator streams an upload into a temp file under [`CheckpointStore::incoming_dir`]
//! (checking size and sha256 as it goes), then hands the finished file to [`CheckpointStore::put`];
//! a fetch asks [`CheckpointStore::local_path`] for a readable file. An object store implements the
//! same three calls (upload the finished file; download to a cache), so nothing else changes.
//! Bookkeeping (which checkpoints a trial has, which are bad) lives in the SQLite store, not here.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{CoordinatorError, Result};

pub trait CheckpointStore: Send + Sync {
    /// A directory for uploads in progress (on the same filesystem as the store, for `rename`).
    fn incoming_dir(&self) -> &Path;
    /// Takes a finished, verified file and stores it under `key`, atomically.
    fn put(&self, key: &str, finished: &Path) -> Result<()>;
    /// A local file holding the checkpoint stored under `key`.
    fn local_path(&self, key: &str) -> Result<PathBuf>;
    fn delete(&self, key: &str) -> Result<()>;
}

/// Checkpoints as files in a directory: `<root>/<trial_id>/step-<step>.safetensors`.
pub struct DirCheckpointStore {
    root: PathBuf,
    incoming: PathBuf,
}

impl DirCheckpointStore {
    pub fn open(root: PathBuf) -> Result<Self> {
        let incoming = root.join(".incoming");
        std::fs::create_dir_all(&incoming).map_err(|e| CoordinatorError::io(&incoming, e))?;
        // Uploads cut short by a crash leave temp files behind; nothing refers to them.
        if let Ok(entries) = std::fs::read_dir(&incoming) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(DirCheckpointStore { root, incoming })
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        // Keys are built by the core from validated ids; refuse anything that could escape the root.
        if key.is_empty() || key.contains("..") || key.starts_with('/') || key.contains('\\') {
            return Err(CoordinatorError::InvalidRequest(format!("bad checkpoint key '{key}'")));
        }
        Ok(self.root.join(key))
    }
}

/// The store key of a trial's checkpoint at `step`.
pub fn checkpoint_key(trial_id: &str, step: u64) -> String {
    format!("{trial_id}/step-{step:012}.safetensors")
}

impl CheckpointStore for DirCheckpointStore {
    fn incoming_dir(&self) -> &Path {
        &self.incoming
    }

    fn put(&self, key: &str, finished: &Path) -> Result<()> {
        let dest = self.path(key)?;
        let dir = dest.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(|e| CoordinatorError::io(dir, e))?;
        File::open(finished).and_then(|f| f.sync_all()).map_err(|e| CoordinatorError::io(finished, e))?;
        std::fs::rename(finished, &dest).map_err(|e| CoordinatorError::io(&dest, e))?;
        File::open(dir).and_then(|f| f.sync_all()).map_err(|e| CoordinatorError::io(dir, e))?;
        Ok(())
    }

    fn local_path(&self, key: &str) -> Result<PathBuf> {
        let path = self.path(key)?;
        if !path.exists() {
            // The key, not the path: the message goes to workers, which need not know our disk.
            return Err(CoordinatorError::NotFound(format!("checkpoint file {key}")));
        }
        Ok(path)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CoordinatorError::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_fetch_delete_and_refuse_escaping_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirCheckpointStore::open(dir.path().join("ckpt")).unwrap();
        let tmp = store.incoming_dir().join("upload");
        std::fs::write(&tmp, b"bytes").unwrap();
        let key = checkpoint_key("t1", 5);
        store.put(&key, &tmp).unwrap();
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(store.local_path(&key).unwrap()).unwrap(), b"bytes");
        store.delete(&key).unwrap();
        store.delete(&key).unwrap();
        assert!(store.local_path(&key).is_err());
        assert!(store.local_path("../../etc/passwd").is_err());
    }
}
