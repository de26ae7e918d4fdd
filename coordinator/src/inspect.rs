//! Reading a coordinator's state dir without a coordinator: what `sweep best --state-dir` shows
//! after `sweep run` has finished (its embedded coordinator is gone, its SQLite store stays).
//!
//! The store is opened read-only, so this is safe beside a live coordinator on the same dir; the
//! numbers are the ones the `Best` call would give, from the same [`crate::stats`] functions.

use std::path::Path;

use sweep_shared::ids::SweepId;
use sweep_shared::spec::{MetricSpec, SweepSpec};

use crate::error::{CoordinatorError, Result};
use crate::stats::{summarize_configs, ConfigStats, RankBy};
use crate::store::{self, Store};

/// The SQLite file of a state dir.
pub fn store_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("sweep.db")
}

/// A stored sweep's metric and its configurations ranked by `by` (the first `top`; 0: all).
pub fn best(state_dir: &Path, sweep_id: &SweepId, top: usize, by: RankBy) -> Result<(MetricSpec, Vec<ConfigStats>)> {
    let path = store_path(state_dir);
    if !path.is_file() {
        return Err(CoordinatorError::NotFound(format!(
            "coordinator store {} (the --state-dir of `sweep run` or `sweep coordinator`)",
            path.display()
        )));
    }
    let store = Store::open_read_only(&path)?;
    let sweep = store::sweeps(store.conn())?
        .into_iter()
        .find(|s| &s.sweep_id == sweep_id)
        .ok_or_else(|| CoordinatorError::NotFound(format!("sweep '{sweep_id}' in {}", path.display())))?;
    let spec: SweepSpec = serde_json::from_str(&sweep.spec_json)
        .map_err(|e| CoordinatorError::Corrupt(format!("stored spec of sweep {sweep_id}: {e}")))?;
    let trials = store::trials_of_sweep(store.conn(), sweep_id)?;
    let mut configs = summarize_configs(&trials, &spec.metric, by);
    if top > 0 {
        configs.truncate(top);
    }
    Ok((spec.metric, configs))
}
