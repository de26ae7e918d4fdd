//! Reading a finished sweep's Parquet output into trials and per-trial metric series.
//!
//! Reads `<sweep>/trials.parquet` (one row per trial: ids, one column per parameter, status,
//! objective and the objective metric's best and last points) and every
//! `<sweep>/metrics/part-*.parquet` (long format: trial_id, attempt, step, name, value). Only
//! the columns a report needs are decoded; `wall_time` is never read. A point stored by more than
//! one attempt of a trial keeps the latest attempt's value, as the coordinator's own supersede rule
//! does. Metric rows of trials that `trials.parquet` does not list are skipped.
//!
//! Every error names the file it came from.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use sweep_coordinator::parquet::trials::FIXED_COLUMNS;
use sweep_coordinator::parquet::SweepMeta;

use super::{ReportError, Result};

/// One hyperparameter value of a trial, typed as its `trials.parquet` column.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Float(f64),
    Int(i64),
    Text(String),
    Bool(bool),
    Missing,
}

impl ParamValue {
    /// The value on a numeric axis, for float and int parameters.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            ParamValue::Float(x) => Some(*x),
            ParamValue::Int(x) => Some(*x as f64),
            _ => None,
        }
    }
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Int(x) => write!(f, "{x}"),
            ParamValue::Text(s) => f.write_str(s),
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Missing => f.write_str("-"),
        }
    }
}

/// One row of `trials.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    pub trial_id: String,
    pub config_id: String,
    pub seed: i64,
    /// pending, running, completed, failed or cancelled.
    pub status: String,
    pub objective: Option<f64>,
    /// The objective metric's best point under the sweep's goal: (step, value).
    pub best: Option<(i64, f64)>,
    /// The objective metric's point with the highest step: (step, value).
    pub last: Option<(i64, f64)>,
    /// Aligned with [`SweepData::param_names`].
    pub params: Vec<ParamValue>,
}

impl Trial {
    pub fn completed(&self) -> bool {
        self.status == "completed"
    }
}

/// One trial's points of one metric, ascending by step, one value per step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub steps: Vec<i64>,
    pub values: Vec<f64>,
}

impl Series {
    pub fn new(points: impl IntoIterator<Item = (i64, f64)>) -> Series {
        let (steps, values) = points.into_iter().unzip();
        Series { steps, values }
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn points(&self) -> impl Iterator<Item = (i64, f64)> + '_ {
        self.steps.iter().copied().zip(self.values.iter().copied())
    }

    /// The value at `step`, if the series has one.
    pub fn at(&self, step: i64) -> Option<f64> {
        self.steps.binary_search(&step).ok().map(|i| self.values[i])
    }
}

/// Every metric series of a sweep, by (trial index, metric name).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Every metric name with at least one point, sorted.
    pub names: Vec<String>,
    series: HashMap<(usize, String), Series>,
}

impl Metrics {
    pub fn from_series(series: HashMap<(usize, String), Series>) -> Metrics {
        let mut names: Vec<String> = series.keys().map(|(_, name)| name.clone()).collect();
        names.sort();
        names.dedup();
        Metrics { names, series }
    }

    pub fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// The series of `name` of the trial at index `trial`.
    pub fn get(&self, trial: usize, name: &str) -> Option<&Series> {
        self.series.get(&(trial, name.to_string()))
    }

    /// The most points any one trial has of `name`.
    pub fn max_len(&self, name: &str) -> usize {
        self.series.iter().filter(|((_, n), _)| n == name).map(|(_, s)| s.len()).max().unwrap_or(0)
    }
}

/// A finished sweep's results as read from its output directory.
#[derive(Debug)]
pub struct SweepData {
    pub sweep_id: String,
    /// `<results>/<sweep>`.
    pub dir: PathBuf,
    /// Parameter columns of `trials.parquet`, in file order.
    pub param_names: Vec<String>,
    pub trials: Vec<Trial>,
    pub metrics: Metrics,
    /// Metric part files read.
    pub metric_files: usize,
    /// Metric rows read (before dropping superseded attempts).
    pub metric_rows: usize,
    /// `sweep.json`: the job kind and the objective's metric, as the coordinator declared them
    /// (absent in results written before it existed).
    pub meta: Option<SweepMeta>,
}

impl SweepData {
    /// Reads `dir/trials.parquet` and `dir/metrics/part-*.parquet`. A missing metrics directory
    /// gives a sweep without metrics (its report has the table and the objective plots only).
    pub fn load(dir: &Path, sweep_id: &str) -> Result<SweepData> {
        if !dir.is_dir() {
            return Err(ReportError::MissingSweep(dir.to_path_buf()));
        }
        let trials_path = dir.join("trials.parquet");
        if !trials_path.is_file() {
            return Err(ReportError::MissingTrials(trials_path));
        }
        let (param_names, trials) = read_trials(&trials_path)?;
        let index: HashMap<&str, usize> = trials.iter().enumerate().map(|(i, t)| (t.trial_id.as_str(), i)).collect();
        let parts = metric_parts(&dir.join("metrics"))?;
        let mut points = PointsByTrialAndName::default();
        let mut metric_rows = 0;
        for part in &parts {
            metric_rows += read_metric_part(part, &index, &mut points)?;
        }
        let series = points
            .points
            .into_iter()
            .map(|((trial, name), mut raw)| {
                // By step, then attempt: the last of each step is its latest attempt's value.
                raw.sort_by_key(|&(step, attempt, _)| (step, attempt));
                let mut series = Series::default();
                for (step, _, value) in raw {
                    if series.steps.last() == Some(&step) {
                        if let Some(last) = series.values.last_mut() {
                            *last = value;
                        }
                    } else {
                        series.steps.push(step);
                        series.values.push(value);
                    }
                }
                ((trial, points.names[name].clone()), series)
            })
            .collect();
        let meta_path = dir.join("sweep.json");
        let meta = match std::fs::read_to_string(&meta_path) {
            Ok(text) => Some(
                serde_json::from_str(&text)
                    .map_err(|e| ReportError::Meta { path: meta_path, reason: e.to_string() })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(ReportError::Io { path: meta_path, source }),
        };
        Ok(SweepData {
            meta,
            sweep_id: sweep_id.to_string(),
            dir: dir.to_path_buf(),
            param_names,
            trials,
            metrics: Metrics::from_series(series),
            metric_files: parts.len(),
            metric_rows,
        })
    }
}

fn parquet_error(path: &Path, err: impl std::fmt::Display) -> ReportError {
    ReportError::Parquet { path: path.to_path_buf(), reason: err.to_string() }
}

fn open_reader(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|source| ReportError::Io { path: path.to_path_buf(), source })?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(path, e))
}

fn read_batches(builder: ParquetRecordBatchReaderBuilder<File>, path: &Path) -> Result<Vec<RecordBatch>> {
    let reader = builder.build().map_err(|e| parquet_error(path, e))?;
    reader.map(|batch| batch.map_err(|e| parquet_error(path, e))).collect()
}

fn column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| parquet_error(path, format!("no column '{name}'")))
}

fn downcast<'a, T: 'static>(array: &'a ArrayRef, name: &str, path: &Path) -> Result<&'a T> {
    array.as_any().downcast_ref::<T>().ok_or_else(|| {
        parquet_error(path, format!("column '{name}' has type {}, not the one sweep writes", array.data_type()))
    })
}

fn strings(batch: &RecordBatch, name: &str, path: &Path) -> Result<Vec<Option<String>>> {
    let array = downcast::<StringArray>(column(batch, name, path)?, name, path)?;
    Ok((0..array.len()).map(|i| array.is_valid(i).then(|| array.value(i).to_string())).collect())
}

fn ints(batch: &RecordBatch, name: &str, path: &Path) -> Result<Vec<Option<i64>>> {
    let array = column(batch, name, path)?;
    if let Some(a) = array.as_any().downcast_ref::<Int32Array>() {
        return Ok((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i) as i64)).collect());
    }
    let a = downcast::<Int64Array>(array, name, path)?;
    Ok((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))).collect())
}

fn floats(batch: &RecordBatch, name: &str, path: &Path) -> Result<Vec<Option<f64>>> {
    let array = column(batch, name, path)?;
    if let Some(a) = array.as_any().downcast_ref::<Float32Array>() {
        return Ok((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i) as f64)).collect());
    }
    let a = downcast::<Float64Array>(array, name, path)?;
    Ok((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))).collect())
}

/// A parameter column's values; `None` for a column type sweep does not write.
fn param_values(array: &ArrayRef) -> Option<Vec<ParamValue>> {
    let n = array.len();
    let any = array.as_any();
    let values = match array.data_type() {
        DataType::Float64 => {
            let a = any.downcast_ref::<Float64Array>()?;
            (0..n).map(|i| if a.is_valid(i) { ParamValue::Float(a.value(i)) } else { ParamValue::Missing }).collect()
        }
        DataType::Int64 => {
            let a = any.downcast_ref::<Int64Array>()?;
            (0..n).map(|i| if a.is_valid(i) { ParamValue::Int(a.value(i)) } else { ParamValue::Missing }).collect()
        }
        DataType::Boolean => {
            let a = any.downcast_ref::<BooleanArray>()?;
            (0..n).map(|i| if a.is_valid(i) { ParamValue::Bool(a.value(i)) } else { ParamValue::Missing }).collect()
        }
        DataType::Utf8 => {
            let a = any.downcast_ref::<StringArray>()?;
            (0..n)
                .map(|i| if a.is_valid(i) { ParamValue::Text(a.value(i).to_string()) } else { ParamValue::Missing })
                .collect()
        }
        _ => return None,
    };
    Some(values)
}

fn read_trials(path: &Path) -> Result<(Vec<String>, Vec<Trial>)> {
    let builder = open_reader(path)?;
    let param_names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|name| !FIXED_COLUMNS.contains(&name.as_str()) && name != "job_kind")
        .collect();
    let mut trials = Vec::new();
    for batch in read_batches(builder, path)? {
        let trial_ids = strings(&batch, "trial_id", path)?;
        let config_ids = strings(&batch, "config_id", path)?;
        let seeds = ints(&batch, "seed", path)?;
        let statuses = strings(&batch, "status", path)?;
        let objectives = floats(&batch, "objective", path)?;
        let best_values = floats(&batch, "best_value", path)?;
        let best_steps = ints(&batch, "best_step", path)?;
        let last_values = floats(&batch, "last_value", path)?;
        let last_steps = ints(&batch, "last_step", path)?;
        let mut params: Vec<Vec<ParamValue>> = Vec::with_capacity(param_names.len());
        for name in &param_names {
            let array = column(&batch, name, path)?;
            params.push(param_values(array).unwrap_or_else(|| {
                tracing::warn!(file = %path.display(), column = %name, "parameter column of an unknown type shown as missing");
                vec![ParamValue::Missing; batch.num_rows()]
            }));
        }
        for i in 0..batch.num_rows() {
            let trial_id = trial_ids[i].clone().ok_or_else(|| parquet_error(path, "a trial without trial_id"))?;
            trials.push(Trial {
                config_id: config_ids[i].clone().unwrap_or_else(|| trial_id.clone()),
                trial_id,
                seed: seeds[i].unwrap_or(0),
                status: statuses[i].clone().unwrap_or_default(),
                objective: objectives[i].filter(|v| v.is_finite()),
                best: best_steps[i].zip(best_values[i]),
                last: last_steps[i].zip(last_values[i]),
                params: params.iter().map(|column| column[i].clone()).collect(),
            });
        }
    }
    Ok((param_names, trials))
}

/// The sweep's metric part files, sorted by name; none when the directory does not exist.
fn metric_parts(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ReportError::Io { path: dir.to_path_buf(), source }),
    };
    let mut parts: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|name| name.starts_with("part-") && name.ends_with(".parquet"))
        })
        .collect();
    parts.sort();
    Ok(parts)
}

/// One stored point before superseded attempts are dropped: (step, attempt, value).
type RawPoint = (i64, i32, f64);

/// Raw points while the parts are read, by (trial index, name index).
#[derive(Default)]
struct PointsByTrialAndName {
    names: Vec<String>,
    points: HashMap<(usize, usize), Vec<RawPoint>>,
}

impl PointsByTrialAndName {
    fn name_index(&mut self, name: &str) -> usize {
        match self.names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                self.names.push(name.to_string());
                self.names.len() - 1
            }
        }
    }
}

/// Appends one part's points to `points`; returns the rows read.
fn read_metric_part(
    path: &Path,
    trial_index: &HashMap<&str, usize>,
    points: &mut PointsByTrialAndName,
) -> Result<usize> {
    let builder = open_reader(path)?;
    let wanted = ["trial_id", "attempt", "step", "name", "value"];
    let mut roots = Vec::new();
    for name in wanted {
        let index = builder
            .schema()
            .index_of(name)
            .map_err(|_| parquet_error(path, format!("no column '{name}' (not a sweep metrics part?)")))?;
        roots.push(index);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder.with_projection(mask).build().map_err(|e| parquet_error(path, e))?;
    let mut rows = 0;
    for batch in reader {
        let batch = batch.map_err(|e| parquet_error(path, e))?;
        let trial_ids = downcast::<StringArray>(column(&batch, "trial_id", path)?, "trial_id", path)?;
        let attempts = downcast::<Int32Array>(column(&batch, "attempt", path)?, "attempt", path)?;
        let steps = downcast::<Int64Array>(column(&batch, "step", path)?, "step", path)?;
        let names = downcast::<StringArray>(column(&batch, "name", path)?, "name", path)?;
        let values = downcast::<Float64Array>(column(&batch, "value", path)?, "value", path)?;
        rows += batch.num_rows();
        // Rows come grouped by trial and name: reuse the previous row's lookups.
        let mut previous_trial: Option<(&str, Option<usize>)> = None;
        let mut previous_name: Option<(&str, usize)> = None;
        for i in 0..batch.num_rows() {
            let trial_id = trial_ids.value(i);
            let trial = match previous_trial {
                Some((t, index)) if t == trial_id => index,
                _ => trial_index.get(trial_id).copied(),
            };
            previous_trial = Some((trial_id, trial));
            let Some(trial) = trial else { continue };
            let name = names.value(i);
            let name_index = match previous_name {
                Some((n, index)) if n == name => index,
                _ => points.name_index(name),
            };
            previous_name = Some((name, name_index));
            points.points.entry((trial, name_index)).or_default().push((
                steps.value(i),
                attempts.value(i),
                values.value(i),
            ));
        }
    }
    Ok(rows)
}
