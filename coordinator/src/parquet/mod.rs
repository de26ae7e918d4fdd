//! Parquet output of a sweep, what users open with pandas, polars or DuckDB.
//!
//! - [`metrics`]: staged metric points -> `<out>/<sweep>/metrics/part-<first>-<last>.parquet`
//!   (long format), written in bounded chunks and renamed into place whole.
//! - [`trials`]: `<out>/<sweep>/trials.parquet`, one row per trial, one typed column per parameter.
//! - [`configs`]: `<out>/<sweep>/configs.parquet`, one row per configuration: its objective's
//!   statistics over seeds, ranked (what `sweep best` shows).
//! - [`write_sweep_meta`]: `<out>/<sweep>/sweep.json`, what the Parquet files do not say: the job
//!   kind and the objective's metric (name, goal, summary, target), for readers such as `sweep report`.

pub mod configs;
pub mod metrics;
pub mod trials;

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;

use crate::error::{CoordinatorError, Result};

/// The directory of one sweep's output.
pub fn sweep_dir(out_dir: &Path, sweep: &str) -> PathBuf {
    out_dir.join(sweep)
}

/// What `sweep.json` holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SweepMeta {
    pub sweep: String,
    pub job_kind: String,
    pub metric: sweep_shared::spec::MetricSpec,
}

/// Writes `<out>/<sweep>/sweep.json` whole (temp file, then [`publish`]); returns its path.
pub fn write_sweep_meta(out_dir: &Path, meta: &SweepMeta) -> Result<PathBuf> {
    let dir = sweep_dir(out_dir, &meta.sweep);
    std::fs::create_dir_all(&dir).map_err(|e| CoordinatorError::io(&dir, e))?;
    let dest = dir.join("sweep.json");
    let tmp = dir.join(".sweep.json.tmp");
    let text = serde_json::to_string_pretty(meta).map_err(|e| CoordinatorError::Corrupt(format!("sweep.json: {e}")))?;
    std::fs::write(&tmp, text + "\n").map_err(|e| CoordinatorError::io(&tmp, e))?;
    publish(&tmp, &dest)?;
    Ok(dest)
}

/// Writes `batch` as the whole Parquet file `dest` (through a temp file and [`publish`], so a reader
/// never sees half of it); returns `dest`.
fn write_whole(dest: &Path, batch: &RecordBatch) -> Result<PathBuf> {
    let dir = dest.parent().ok_or_else(|| CoordinatorError::Corrupt(format!("{} has no directory", dest.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| CoordinatorError::io(dir, e))?;
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let file = File::create(&tmp).map_err(|e| CoordinatorError::io(&tmp, e))?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(metrics::writer_properties()))?;
    writer.write(batch)?;
    writer.close()?;
    publish(&tmp, dest)?;
    Ok(dest.to_path_buf())
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
