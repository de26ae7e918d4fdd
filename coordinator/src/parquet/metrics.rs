//! The metrics sink: moves staged points from SQLite into Parquet parts.
//!
//! Points are durable in SQLite's staging table from the moment they are acked; this sink turns
//! them into `metrics/part-<first_id>-<last_id>.parquet` when a sweep has `flush_rows` staged,
//! when the oldest is `flush_interval` old, or on demand (export, sweep end, shutdown). A part is
//! written to a temp file in chunks of [`CHUNK_ROWS`] (one row group each, so memory stays bounded
//! whatever the sweep's size), fsynced and renamed into place; then one transaction records the
//! part and deletes its staged rows. The part's name carries its staging id range, so after a crash
//! between the rename and that transaction, [`MetricsSink::recover`] finds the part and drops the
//! rows it already holds: a point is never in two parts, and never lost.
//!
//! Schema (long format): trial_id utf8, attempt int32, step int64,
//! wall_time timestamp[us, UTC], name utf8, value float64.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sweep_shared::ids::SweepId;
use tracing::{debug, info, warn};

use super::{publish, sweep_dir};
use crate::error::{CoordinatorError, Result};
use crate::store::{self, StagedPoint, Store};

/// Rows per read from staging and per Parquet row group.
pub const CHUNK_ROWS: usize = 65_536;

pub fn metrics_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("trial_id", DataType::Utf8, false),
        Field::new("attempt", DataType::Int32, false),
        Field::new("step", DataType::Int64, false),
        Field::new("wall_time", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("name", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
    ]))
}

pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(CHUNK_ROWS))
        .build()
}

pub struct MetricsSink {
    out_dir: PathBuf,
    flush_rows: u64,
    flush_interval_ms: i64,
}

impl MetricsSink {
    pub fn new(out_dir: PathBuf, flush_rows: usize, flush_interval: std::time::Duration) -> Self {
        MetricsSink { out_dir, flush_rows: flush_rows as u64, flush_interval_ms: flush_interval.as_millis() as i64 }
    }

    pub fn metrics_dir(&self, sweep: &SweepId) -> PathBuf {
        sweep_dir(&self.out_dir, sweep.as_str()).join("metrics")
    }

    /// After a restart: removes half-written temp files and drops staged rows that a published
    /// part already holds.
    pub fn recover(&self, store: &mut Store) -> Result<()> {
        for sweep in store::sweeps(store.conn())? {
            let dir = self.metrics_dir(&sweep.sweep_id);
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.ends_with(".tmp") {
                    warn!(file = %name, "removing half-written metrics part");
                    let _ = std::fs::remove_file(entry.path());
                } else if let Some((first, last)) = parse_part_name(&name) {
                    let rows = store::staged_points(store.conn(), &sweep.sweep_id, first - 1, 1)?;
                    if rows.first().is_some_and(|p| p.id <= last) {
                        info!(sweep = %sweep.sweep_id, part = %name, "part was published before a crash; dropping its staged rows");
                        let n = parquet_rows(&entry.path())?;
                        let now = crate::clock::now_ms();
                        store.transaction(|tx| store::commit_part(tx, &sweep.sweep_id, &name, first, last, n, now))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes a part for every sweep whose staged points are due; returns the sweeps written.
    pub fn flush_due(&self, store: &mut Store, now_ms: i64) -> Result<Vec<SweepId>> {
        let mut flushed = Vec::new();
        for (sweep, rows, oldest_ms) in store::staged_sweeps(store.conn())? {
            if rows >= self.flush_rows || now_ms - oldest_ms >= self.flush_interval_ms {
                self.flush_sweep(store, &sweep)?;
                flushed.push(sweep);
            }
        }
        Ok(flushed)
    }

    /// Writes every staged point of `sweep` into one new part; returns the rows written.
    pub fn flush_sweep(&self, store: &mut Store, sweep: &SweepId) -> Result<u64> {
        let first_chunk = store::staged_points(store.conn(), sweep, 0, CHUNK_ROWS)?;
        let Some(first) = first_chunk.first() else { return Ok(0) };
        let first_id = first.id;
        let dir = self.metrics_dir(sweep);
        std::fs::create_dir_all(&dir).map_err(|e| CoordinatorError::io(&dir, e))?;
        let tmp = dir.join(format!(".part-{first_id:012}.parquet.tmp"));
        let file = std::fs::File::create(&tmp).map_err(|e| CoordinatorError::io(&tmp, e))?;
        let schema = metrics_schema();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(writer_properties()))?;

        let mut rows = 0u64;
        let mut last_id = first_id;
        let mut chunk = first_chunk;
        let mut trials: BTreeSet<String> = BTreeSet::new();
        loop {
            last_id = chunk.last().map_or(last_id, |p| p.id);
            rows += chunk.len() as u64;
            for p in &chunk {
                if !trials.contains(&p.trial_id) {
                    trials.insert(p.trial_id.clone());
                }
            }
            writer.write(&to_batch(&schema, &chunk)?)?;
            writer.flush()?;
            if chunk.len() < CHUNK_ROWS {
                break;
            }
            chunk = store::staged_points(store.conn(), sweep, last_id, CHUNK_ROWS)?;
            if chunk.is_empty() {
                break;
            }
        }
        writer.close()?;
        let name = part_name(first_id, last_id);
        publish(&tmp, &dir.join(&name))?;
        let now = crate::clock::now_ms();
        let trials: Vec<String> = trials.into_iter().collect();
        store.transaction(|tx| {
            store::commit_part(tx, sweep, &name, first_id, last_id, rows, now)?;
            store::record_part_trials(tx, sweep, &name, &trials)
        })?;
        debug!(sweep = %sweep, part = %name, rows, "metrics part written");
        Ok(rows)
    }

    /// Rewrites the sweep's parts that hold points superseded by a resume, so that Parquet keeps
    /// exactly one value per (trial, step, name). Idempotent: a crash midway repeats it.
    pub fn apply_supersessions(&self, store: &mut Store, sweep: &SweepId) -> Result<u64> {
        let pending = store::pending_supersessions(store.conn(), sweep)?;
        if pending.is_empty() {
            return Ok(0);
        }
        let trials: Vec<String> = pending.iter().map(|s| s.trial_id.clone()).collect();
        let parts = store::parts_with_trials(store.conn(), sweep, &trials)?;
        let superseded = |trial: &str, attempt: i32, step: i64| {
            pending.iter().any(|s| s.trial_id == trial && (attempt as u32) < s.below_attempt && step > s.after_step)
        };
        let dir = self.metrics_dir(sweep);
        let mut dropped = 0u64;
        for name in parts {
            let path = dir.join(&name);
            let file = std::fs::File::open(&path).map_err(|e| CoordinatorError::io(&path, e))?;
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
            let tmp = dir.join(format!(".{name}.rewrite.tmp"));
            let out = std::fs::File::create(&tmp).map_err(|e| CoordinatorError::io(&tmp, e))?;
            let schema = metrics_schema();
            let mut writer = ArrowWriter::try_new(out, schema.clone(), Some(writer_properties()))?;
            let mut kept_rows = 0u64;
            for batch in reader {
                let batch = batch?;
                let keep = keep_mask(&batch, &superseded)?;
                let filtered = arrow_select::filter::filter_record_batch(&batch, &keep)?;
                dropped += (batch.num_rows() - filtered.num_rows()) as u64;
                kept_rows += filtered.num_rows() as u64;
                writer.write(&filtered)?;
            }
            writer.close()?;
            publish(&tmp, &path)?;
            store::set_part_rows(store.conn(), sweep, &name, kept_rows)?;
        }
        store::mark_supersessions_applied(store.conn(), sweep)?;
        if dropped > 0 {
            info!(sweep = %sweep, rows = dropped, "superseded metric rows removed from parts");
        }
        Ok(dropped)
    }
}

fn keep_mask(batch: &RecordBatch, superseded: &dyn Fn(&str, i32, i64) -> bool) -> Result<BooleanArray> {
    let corrupt = |what: &str| CoordinatorError::Corrupt(format!("metrics part column {what} has the wrong type"));
    let trial = batch.column(0).as_any().downcast_ref::<StringArray>().ok_or_else(|| corrupt("trial_id"))?;
    let attempt = batch.column(1).as_any().downcast_ref::<Int32Array>().ok_or_else(|| corrupt("attempt"))?;
    let step = batch.column(2).as_any().downcast_ref::<Int64Array>().ok_or_else(|| corrupt("step"))?;
    Ok((0..batch.num_rows()).map(|i| Some(!superseded(trial.value(i), attempt.value(i), step.value(i)))).collect())
}

fn part_name(first_id: i64, last_id: i64) -> String {
    format!("part-{first_id:012}-{last_id:012}.parquet")
}

fn parse_part_name(name: &str) -> Option<(i64, i64)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let (first, last) = rest.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

fn parquet_rows(path: &Path) -> Result<u64> {
    let file = std::fs::File::open(path).map_err(|e| CoordinatorError::io(path, e))?;
    let reader = parquet::file::serialized_reader::SerializedFileReader::new(file)?;
    use parquet::file::reader::FileReader;
    Ok(reader.metadata().file_metadata().num_rows() as u64)
}

fn to_batch(schema: &SchemaRef, points: &[StagedPoint]) -> Result<RecordBatch> {
    let n = points.len();
    let mut trial = StringBuilder::with_capacity(n, n * 17);
    let mut attempt = Int32Builder::with_capacity(n);
    let mut step = Int64Builder::with_capacity(n);
    let mut wall = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut name = StringBuilder::with_capacity(n, n * 8);
    let mut value = Float64Builder::with_capacity(n);
    for p in points {
        trial.append_value(&p.trial_id);
        attempt.append_value(p.attempt as i32);
        step.append_value(p.step as i64);
        wall.append_value(p.wall_time_us);
        name.append_value(&p.name);
        value.append_value(p.value);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(trial.finish()),
        Arc::new(attempt.finish()),
        Arc::new(step.finish()),
        Arc::new(wall.finish()),
        Arc::new(name.finish()),
        Arc::new(value.finish()),
    ];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_round_trip() {
        assert_eq!(parse_part_name(&part_name(1, 65_536)), Some((1, 65_536)));
        assert_eq!(parse_part_name(".part-000000000001.parquet.tmp"), None);
    }
}
