//! `trials.parquet`: one row per trial, one typed column per hyperparameter.
//!
//! Rewritten whole (temp file + rename) when a sweep's trials changed: it is small (one row per
//! trial) and a reader never sees a half-written file. Parameter columns take their type from the
//! values (float64, int64, utf8, bool; an epsilon schedule as its readable utf8 form); a parameter
//! whose name clashes with a fixed column is written as `param_<name>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use sweep_shared::params::ParamValue;

use super::{sweep_dir, write_whole};
use crate::error::{CoordinatorError, Result};
use crate::objective::ObjectiveState;
use crate::store::TrialRow;

/// The columns that are not parameters; a parameter named like one is written as `param_<name>`.
pub const FIXED_COLUMNS: &[&str] = &[
    "trial_id",
    "sweep_id",
    "config_id",
    "ordinal",
    "seed",
    "status",
    "attempts",
    "objective",
    "best_value",
    "best_step",
    "last_value",
    "last_step",
    "wall_seconds",
    "worker_id",
    "device",
    "error",
    "started_at",
    "finished_at",
];

pub fn trials_path(out_dir: &Path, sweep: &str) -> PathBuf {
    sweep_dir(out_dir, sweep).join("trials.parquet")
}

#[derive(Clone, Copy, PartialEq)]
enum ColumnType {
    Float,
    Int,
    Bool,
    Text,
}

fn column_type(value: &ParamValue) -> ColumnType {
    match value {
        ParamValue::Float(_) => ColumnType::Float,
        ParamValue::Int(_) => ColumnType::Int,
        ParamValue::Bool(_) => ColumnType::Bool,
        ParamValue::Str(_) | ParamValue::Schedule(_) => ColumnType::Text,
    }
}

/// Writes the sweep's `trials.parquet` from its trial rows; returns its path.
pub fn write_trials(out_dir: &Path, sweep: &str, trials: &[TrialRow]) -> Result<PathBuf> {
    let params: Vec<BTreeMap<String, ParamValue>> =
        trials.iter().map(|t| parse_params(&t.params_json, &format!("trial {}", t.trial_id))).collect::<Result<_>>()?;
    let n = trials.len();
    let mut fields = vec![
        Field::new("trial_id", DataType::Utf8, false),
        Field::new("sweep_id", DataType::Utf8, false),
        Field::new("config_id", DataType::Utf8, false),
        Field::new("ordinal", DataType::Int64, false),
        Field::new("seed", DataType::Int64, false),
    ];
    let mut columns: Vec<ArrayRef> = Vec::new();
    let strings = |f: &dyn Fn(&TrialRow) -> Option<String>| {
        let mut b = StringBuilder::with_capacity(n, n * 16);
        for t in trials {
            b.append_option(f(t));
        }
        Arc::new(b.finish()) as ArrayRef
    };
    let ints = |f: &dyn Fn(&TrialRow) -> Option<i64>| {
        let mut b = Int64Builder::with_capacity(n);
        for t in trials {
            b.append_option(f(t));
        }
        Arc::new(b.finish()) as ArrayRef
    };
    let floats = |f: &dyn Fn(usize, &TrialRow) -> Option<f64>| {
        let mut b = Float64Builder::with_capacity(n);
        for (i, t) in trials.iter().enumerate() {
            b.append_option(f(i, t));
        }
        Arc::new(b.finish()) as ArrayRef
    };
    columns.push(strings(&|t| Some(t.trial_id.to_string())));
    columns.push(strings(&|t| Some(t.sweep_id.to_string())));
    columns.push(strings(&|t| Some(t.config_id.clone())));
    columns.push(ints(&|t| Some(t.ordinal as i64)));
    columns.push(ints(&|t| Some(t.seed as i64)));

    let (param_fields, param_arrays) = parameter_columns(&params, FIXED_COLUMNS);
    fields.extend(param_fields);
    columns.extend(param_arrays);

    let objective_states: Vec<ObjectiveState> = trials
        .iter()
        .map(|t| t.obj_state.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default())
        .collect();
    fields.extend([
        Field::new("status", DataType::Utf8, false),
        Field::new("attempts", DataType::Int64, false),
        Field::new("objective", DataType::Float64, true),
        Field::new("best_value", DataType::Float64, true),
        Field::new("best_step", DataType::Int64, true),
        Field::new("last_value", DataType::Float64, true),
        Field::new("last_step", DataType::Int64, true),
        Field::new("wall_seconds", DataType::Float64, true),
        Field::new("worker_id", DataType::Utf8, true),
        Field::new("device", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("started_at", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
        Field::new("finished_at", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
    ]);
    columns.push(strings(&|t| Some(t.status.as_str().to_string())));
    columns.push(ints(&|t| Some(t.attempt as i64)));
    columns.push(floats(&|_, t| t.objective));
    columns.push(floats(&|i, _| objective_states[i].best.map(|(_, v)| v)));
    let mut best_step = Int64Builder::with_capacity(n);
    let mut last_step = Int64Builder::with_capacity(n);
    for state in &objective_states {
        best_step.append_option(state.best.map(|(s, _)| s as i64));
        last_step.append_option(state.last.map(|(s, _)| s as i64));
    }
    columns.push(Arc::new(best_step.finish()));
    columns.push(floats(&|i, _| objective_states[i].last.map(|(_, v)| v)));
    columns.push(Arc::new(last_step.finish()));
    columns.push(floats(&|_, t| t.wall_seconds));
    columns.push(strings(&|t| t.worker_id.clone()));
    columns.push(strings(&|t| t.device.clone()));
    columns.push(strings(&|t| t.error.clone()));
    for f in [|t: &TrialRow| t.started_ms, |t: &TrialRow| t.finished_ms] {
        let mut b = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
        for t in trials {
            b.append_option(f(t));
        }
        columns.push(Arc::new(b.finish()));
    }

    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    write_whole(&trials_path(out_dir, sweep), &batch)
}

/// The parameter set stored as JSON with `whose` (a trial, a configuration).
pub(super) fn parse_params(json: &str, whose: &str) -> Result<BTreeMap<String, ParamValue>> {
    serde_json::from_str(json).map_err(|e| CoordinatorError::Corrupt(format!("params of {whose}: {e}")))
}

/// One typed column per parameter over rows of parameter sets (see the module header); a name in
/// `reserved` is written as `param_<name>`.
pub(super) fn parameter_columns(
    params: &[BTreeMap<String, ParamValue>],
    reserved: &[&str],
) -> (Vec<Field>, Vec<ArrayRef>) {
    let mut param_columns: BTreeMap<String, ColumnType> = BTreeMap::new();
    for map in params {
        for (name, value) in map {
            let ty = column_type(value);
            let entry = param_columns.entry(name.clone()).or_insert(ty);
            if *entry != ty {
                // Mixed types (an int and a float grid value): widen to float, else to text.
                *entry = if matches!(
                    (*entry, ty),
                    (ColumnType::Int, ColumnType::Float) | (ColumnType::Float, ColumnType::Int)
                ) {
                    ColumnType::Float
                } else {
                    ColumnType::Text
                };
            }
        }
    }

    let n = params.len();
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (name, ty) in &param_columns {
        let column_name = if reserved.contains(&name.as_str()) { format!("param_{name}") } else { name.clone() };
        let value_of = |i: usize| params[i].get(name);
        let (data_type, array): (DataType, ArrayRef) = match ty {
            ColumnType::Float => (DataType::Float64, {
                let mut b = Float64Builder::with_capacity(n);
                for i in 0..n {
                    b.append_option(match value_of(i) {
                        Some(ParamValue::Float(x)) => Some(*x),
                        Some(ParamValue::Int(x)) => Some(*x as f64),
                        _ => None,
                    });
                }
                Arc::new(b.finish()) as ArrayRef
            }),
            ColumnType::Int => {
                let mut b = Int64Builder::with_capacity(n);
                for i in 0..n {
                    b.append_option(match value_of(i) {
                        Some(ParamValue::Int(x)) => Some(*x),
                        _ => None,
                    });
                }
                (DataType::Int64, Arc::new(b.finish()) as ArrayRef)
            }
            ColumnType::Bool => {
                let mut b = BooleanBuilder::with_capacity(n);
                for i in 0..n {
                    b.append_option(match value_of(i) {
                        Some(ParamValue::Bool(x)) => Some(*x),
                        _ => None,
                    });
                }
                (DataType::Boolean, Arc::new(b.finish()) as ArrayRef)
            }
            ColumnType::Text => {
                let mut b = StringBuilder::with_capacity(n, n * 16);
                for i in 0..n {
                    b.append_option(value_of(i).map(|v| v.to_string()));
                }
                (DataType::Utf8, Arc::new(b.finish()) as ArrayRef)
            }
        };
        fields.push(Field::new(column_name, data_type, true));
        columns.push(array);
    }

    (fields, columns)
}
