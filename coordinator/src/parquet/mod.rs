//! Parquet output of a sweep, what users open with pandas, polars or DuckDB.
//!
//! - [`metrics`]: staged metric points -> `<out>/<sweep>/metrics/part-<first>-<last>.parquet`
//!   (long format), written in bounded chunks and renamed into place whole.
//! - [`trials`]: `<out>/<sweep>/trials.parquet`, one row per trial, one typed column per parameter.

pub mod metrics;
pub mod trials;

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{CoordinatorError, Result};

/// The directory of one sweep's output.
pub fn sweep_dir(out_dir: &Path, sweep: &str) -> PathBuf {
    out_dir.join(sweep)
}

/// Moves a finished temp file into place: fsync the file, rename, fsync the directory.
fn publish(tmp: &Path, dest: &Path) -> Result<()> {
    File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| CoordinatorError::io(tmp, e))?;
    std::fs::rename(tmp, dest).map_err(|e| CoordinatorError::io(dest, e))?;
    if let Some(dir) = dest.parent() {
        File::open(dir).and_then(|f| f.sync_all()).map_err(|e| CoordinatorError::io(dir, e))?;
    }
    Ok(())
}
