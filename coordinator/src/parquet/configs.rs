//! `configs.parquet`: one row per configuration (the seeds of one parameter set), its objective's
//! statistics over seeds as [`crate::stats`] computes them, best first by the mean.
//!
//! Columns: `rank`, `config_id`, one typed column per parameter (as in `trials.parquet`), `n`
//! (completed seeds), `seeds_total`, `mean`, `std`, `ci_low`, `ci_high` (the 95% interval of the
//! mean), `median`, `min`, `max`, and `reached` / `reached_share` (seeds whose objective reached the
//! metric's `target`; null without a target). Rewritten whole with `trials.parquet`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};

use super::trials::{parameter_columns, parse_params};
use super::{sweep_dir, write_whole};
use crate::error::Result;
use crate::stats::ConfigStats;

const FIXED_COLUMNS: &[&str] = &[
    "rank",
    "config_id",
    "n",
    "seeds_total",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "median",
    "min",
    "max",
    "reached",
    "reached_share",
];

pub fn configs_path(out_dir: &Path, sweep: &str) -> PathBuf {
    sweep_dir(out_dir, sweep).join("configs.parquet")
}

/// Writes the sweep's `configs.parquet` from its ranked configurations; returns its path.
pub fn write_configs(out_dir: &Path, sweep: &str, configs: &[ConfigStats]) -> Result<PathBuf> {
    let params = configs
        .iter()
        .map(|c| parse_params(&c.params_json, &format!("configuration {}", c.config_id)))
        .collect::<Result<Vec<_>>>()?;
    let n = configs.len();
    let ints = |f: &dyn Fn(usize, &ConfigStats) -> Option<i64>| {
        let mut b = Int64Builder::with_capacity(n);
        for (i, c) in configs.iter().enumerate() {
            b.append_option(f(i, c));
        }
        Arc::new(b.finish()) as ArrayRef
    };
    let floats = |f: &dyn Fn(&ConfigStats) -> Option<f64>| {
        let mut b = Float64Builder::with_capacity(n);
        for c in configs {
            b.append_option(f(c));
        }
        Arc::new(b.finish()) as ArrayRef
    };
    let mut ids = StringBuilder::with_capacity(n, n * 16);
    for c in configs {
        ids.append_value(&c.config_id);
    }

    let mut fields = vec![Field::new("rank", DataType::Int64, false), Field::new("config_id", DataType::Utf8, false)];
    let mut columns: Vec<ArrayRef> = vec![ints(&|i, _| Some(i as i64 + 1)), Arc::new(ids.finish())];
    let (param_fields, param_arrays) = parameter_columns(&params, FIXED_COLUMNS);
    fields.extend(param_fields);
    columns.extend(param_arrays);
    for name in ["n", "seeds_total"] {
        fields.push(Field::new(name, DataType::Int64, false));
    }
    columns.push(ints(&|_, c| Some(c.objective.n as i64)));
    columns.push(ints(&|_, c| Some(c.seeds_total as i64)));
    for name in ["mean", "std", "ci_low", "ci_high", "median", "min", "max"] {
        fields.push(Field::new(name, DataType::Float64, false));
    }
    columns.extend([
        floats(&|c| Some(c.objective.mean)),
        floats(&|c| Some(c.objective.std)),
        floats(&|c| Some(c.objective.ci_low)),
        floats(&|c| Some(c.objective.ci_high)),
        floats(&|c| Some(c.objective.median)),
        floats(&|c| Some(c.objective.min)),
        floats(&|c| Some(c.objective.max)),
    ]);
    fields.push(Field::new("reached", DataType::Int64, true));
    columns.push(ints(&|_, c| c.reached.map(|r| r as i64)));
    fields.push(Field::new("reached_share", DataType::Float64, true));
    columns.push(floats(&|c| c.reached_share()));

    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    write_whole(&configs_path(out_dir, sweep), &batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Aggregate;
    use arrow_array::{Array, Float64Array, Int64Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn config(id: &str, lr: f64, values: &[f64], reached: Option<u64>) -> ConfigStats {
        ConfigStats {
            config_id: id.into(),
            params_json: format!(r#"{{"lr":{lr:?},"rank":3}}"#),
            seeds_total: values.len() as u64 + 1,
            objective: Aggregate::of(values).unwrap(),
            reached,
        }
    }

    #[test]
    fn rows_hold_the_statistics_in_rank_order_with_typed_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let configs = [config("b", 0.1, &[5.0, 7.0], Some(1)), config("a", 0.01, &[1.0], Some(0))];
        let path = write_configs(dir.path(), "s", &configs).unwrap();
        assert_eq!(path, dir.path().join("s/configs.parquet"));
        let file = std::fs::File::open(&path).unwrap();
        let batch = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap().next().unwrap().unwrap();
        let column = |name: &str| batch.column_by_name(name).unwrap_or_else(|| panic!("no column {name}")).clone();
        let ints = |name: &str| column(name).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec();
        let floats = |name: &str| column(name).as_any().downcast_ref::<Float64Array>().unwrap().clone();
        assert_eq!(ints("rank"), [1, 2]);
        let ids = column("config_id");
        let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((ids.value(0), ids.value(1)), ("b", "a"));
        assert_eq!(floats("lr").values().to_vec(), [0.1, 0.01]);
        // A parameter named like a fixed column is renamed.
        assert_eq!(ints("param_rank"), [3, 3]);
        assert_eq!(ints("n"), [2, 1]);
        assert_eq!(ints("seeds_total"), [3, 2]);
        assert_eq!(floats("mean").values().to_vec(), [6.0, 1.0]);
        assert_eq!(floats("median").values().to_vec(), [6.0, 1.0]);
        assert!((floats("ci_high").value(0) - (6.0 + 12.706204736)).abs() < 1e-9);
        assert_eq!(ints("reached"), [1, 0]);
        assert_eq!(floats("reached_share").values().to_vec(), [0.5, 0.0]);
        // Without a target the reached columns are null.
        write_configs(dir.path(), "s", &[config("c", 0.5, &[2.0], None)]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let batch = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap().next().unwrap().unwrap();
        assert!(batch.column_by_name("reached").unwrap().is_null(0));
        assert!(batch.column_by_name("reached_share").unwrap().is_null(0));
    }
}
