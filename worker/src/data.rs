//! Where jobs find data sets, pretrained models and their own caches.
//!
//! A file is looked up in a local directory first (`--data-dir` / `SWEEP_DATA_DIR` for data sets,
//! `--models-dir` / `SWEEP_MODELS_DIR` for models); tests and CI point these at `../shared`. When it
//! is not there and downloads are allowed (`SWEEP_OFFLINE` and `HF_HUB_OFFLINE` unset), the same
//! file comes from the Hugging Face Hub or a public mirror into `<cache-dir>/hub`, and is checked
//! against its sha256 where one is known (MNIST checks its own, on the decompressed bytes). Otherwise the error names the directory it looked in, the flag and variable
//! that move it, and the download that was refused or failed.
//!
//! Derived data (tokenized text, embeddings) goes to `--cache-dir` / `SWEEP_CACHE_DIR`, never next
//! to the source files, which may be read-only.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Directories a worker's jobs read from and cache into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPaths {
    pub data_dir: PathBuf,
    pub models_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// Never download (also set by `HF_HUB_OFFLINE=1`).
    pub offline: bool,
}

/// Why a data file could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Neither the local file nor a download: the message names the directory looked in, the
    /// flag and variable that move it, and why the download did not happen.
    #[error("{0}")]
    Missing(String),
    #[error("{path}: sha256 is {found}, expected {expected}: the file is damaged or not the one sweep knows")]
    Checksum { path: PathBuf, expected: &'static str, found: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl DataError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io { path: path.to_path_buf(), source }
    }

    pub fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Invalid { path: path.to_path_buf(), reason: reason.into() }
    }
}

/// Where a missing file can be downloaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A file of a Hugging Face Hub dataset repository.
    HubDataset { repo: &'static str, path: &'static str },
    /// A file of a Hugging Face Hub model repository (kept under the models directory).
    HubModel { repo: &'static str, path: &'static str },
    /// A plain HTTPS address (a public mirror).
    Url(&'static str),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::HubDataset { repo, .. } | Source::HubModel { repo, .. } => {
                format!("the Hugging Face Hub ({repo})")
            }
            Source::Url(url) => (*url).to_string(),
        }
    }
}

/// A file a job needs: where it sits locally and where the same file can be downloaded.
#[derive(Debug, Clone, Copy)]
pub struct DataFile {
    /// What it is, for messages ("IMDB train split").
    pub what: &'static str,
    /// Path under the data or models directory.
    pub local: &'static str,
    pub source: Source,
    /// Checked on download when known.
    pub sha256: Option<&'static str>,
}

impl DataPaths {
    /// From `SWEEP_DATA_DIR`, `SWEEP_MODELS_DIR`, `SWEEP_CACHE_DIR`, `SWEEP_OFFLINE` and
    /// `HF_HUB_OFFLINE`, with defaults `data`, `models` and `sweep-cache` under the working directory.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let flag = |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
        DataPaths {
            data_dir: var("SWEEP_DATA_DIR").unwrap_or_else(|| PathBuf::from("data")),
            models_dir: var("SWEEP_MODELS_DIR").unwrap_or_else(|| PathBuf::from("models")),
            cache_dir: var("SWEEP_CACHE_DIR").unwrap_or_else(|| PathBuf::from("sweep-cache")),
            offline: flag("SWEEP_OFFLINE") || flag("HF_HUB_OFFLINE"),
        }
    }

    /// A cache subdirectory, created if needed.
    pub fn cache(&self, name: &str) -> Result<PathBuf, DataError> {
        let dir = self.cache_dir.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        Ok(dir)
    }

    /// The local path of `file`, downloading it first when it is missing and downloads are allowed.
    pub fn locate(&self, file: &DataFile) -> Result<PathBuf, DataError> {
        let (root, flag, env) = match file.source {
            Source::HubModel { .. } => (&self.models_dir, "--models-dir", "SWEEP_MODELS_DIR"),
            Source::HubDataset { .. } | Source::Url(_) => (&self.data_dir, "--data-dir", "SWEEP_DATA_DIR"),
        };
        let local = root.join(file.local);
        if local.is_file() {
            return Ok(local);
        }
        let download = if self.offline {
            Err("downloads are off (SWEEP_OFFLINE or HF_HUB_OFFLINE is set)".to_string())
        } else {
            self.download(file)
        };
        match download {
            Ok(path) => Ok(path),
            Err(download) => Err(DataError::Missing(format!(
                "{} not found at {}; point {flag} (or {env}) at a directory that holds {}, or allow the download \
                 from {}: {download}",
                file.what,
                local.display(),
                file.local,
                file.source.describe()
            ))),
        }
    }

    fn download(&self, file: &DataFile) -> Result<PathBuf, String> {
        let hub = self.cache("hub").map_err(|e| e.to_string())?;
        tracing::info!(file = file.local, from = %file.source.describe(), "downloading");
        let path = match file.source {
            Source::HubDataset { repo, path } | Source::HubModel { repo, path } => {
                let api = hf_hub::api::sync::ApiBuilder::new()
                    .with_cache_dir(hub)
                    .with_progress(false)
                    .build()
                    .map_err(|e| format!("cannot set up the Hub client: {e}"))?;
                let kind = if matches!(file.source, Source::HubModel { .. }) {
                    hf_hub::RepoType::Model
                } else {
                    hf_hub::RepoType::Dataset
                };
                api.repo(hf_hub::Repo::new(repo.to_string(), kind))
                    .get(path)
                    .map_err(|e| format!("download of {path} failed: {e}"))?
            }
            Source::Url(url) => {
                let target = hub.join(file.local);
                if let Some(dir) = target.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e).to_string())?;
                }
                let response = ureq::get(url).call().map_err(|e| format!("download of {url} failed: {e}"))?;
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut response.into_reader(), &mut bytes)
                    .map_err(|e| format!("download of {url} broke off: {e}"))?;
                write_atomic(&target, &bytes).map_err(|e| e.to_string())?;
                target
            }
        };
        if let Some(expected) = file.sha256 {
            let found = sha256_file(&path).map_err(|e| e.to_string())?;
            if found != expected {
                return Err(DataError::Checksum { path, expected, found }.to_string());
            }
        }
        Ok(path)
    }
}

/// Hex sha256 of a file's bytes, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> Result<String, DataError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| DataError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

/// A lock untouched this long belonged to a process that died, and is taken over.
pub const STALE_LOCK: std::time::Duration = std::time::Duration::from_secs(120);

/// An exclusive claim on making one cache file: `<file>.lock`, created with `create_new` (atomic
/// on local file systems), touched while the work goes on, removed on drop. Concurrent trials (in
/// other processes too) that find it wait for the file instead of making it twice.
pub struct FileLock {
    path: PathBuf,
    file: std::fs::File,
}

impl FileLock {
    /// Takes the lock of the file at `target`, or `None` while a live process holds it; `what`
    /// names the work in the log when a stale lock is taken over.
    pub fn acquire(target: &Path, what: &str) -> Result<Option<FileLock>, DataError> {
        let path = target.with_extension("lock");
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok(Some(FileLock { path, file })),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = std::fs::metadata(&path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
                    match age {
                        Some(age) if age > STALE_LOCK => {
                            tracing::warn!(path = %path.display(), "taking over a stale {what} lock");
                            let _ = std::fs::remove_file(&path);
                        }
                        _ => return Ok(None),
                    }
                }
                Err(e) => return Err(DataError::io(&path, e)),
            }
        }
        Ok(None)
    }

    /// Tells waiting processes the owner is alive.
    pub fn touch(&self) {
        let _ = self.file.set_modified(std::time::SystemTime::now());
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The data and models the tests use: `SWEEP_DATA_DIR` / `SWEEP_MODELS_DIR` when set, else
/// `../shared/data` and `../shared/models` beside the project (as in CI); downloads off; a cache
/// in the system temp dir shared by test runs (its entries are keyed and checked like any cache).
#[cfg(test)]
pub(crate) fn test_paths() -> DataPaths {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    DataPaths {
        data_dir: var("SWEEP_DATA_DIR").unwrap_or_else(|| shared.join("data")),
        models_dir: var("SWEEP_MODELS_DIR").unwrap_or_else(|| shared.join("models")),
        cache_dir: std::env::temp_dir().join("sweep-test-cache"),
        offline: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MISSING: DataFile = DataFile {
        what: "test file",
        local: "nothing/here.parquet",
        source: Source::HubDataset { repo: "someone/nothing", path: "here.parquet" },
        sha256: None,
    };

    #[test]
    fn a_missing_file_offline_names_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let paths = DataPaths {
            data_dir: dir.path().join("data"),
            models_dir: dir.path().join("models"),
            cache_dir: dir.path().join("cache"),
            offline: true,
        };
        let err = paths.locate(&MISSING).unwrap_err().to_string();
        assert!(err.contains("nothing/here.parquet"), "{err}");
        assert!(err.contains("--data-dir") && err.contains("SWEEP_DATA_DIR"), "{err}");
        assert!(err.contains("someone/nothing") && err.contains("downloads are off"), "{err}");
    }

    #[test]
    fn a_local_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("nothing");
        std::fs::create_dir_all(&local).unwrap();
        std::fs::write(local.join("here.parquet"), b"x").unwrap();
        let paths = DataPaths {
            data_dir: dir.path().to_path_buf(),
            models_dir: dir.path().to_path_buf(),
            cache_dir: dir.path().join("cache"),
            offline: true,
        };
        assert_eq!(paths.locate(&MISSING).unwrap(), local.join("here.parquet"));
    }
}
