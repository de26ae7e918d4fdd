//! The coordinator's state owner: every decision about sweeps, trials and leases happens here.
//!
//! [`Core`] owns the [`Store`] (the single SQLite writer) and the [`MetricsSink`], and runs on one
//! dedicated thread behind [`crate::handle::CoordinatorHandle`]: requests arrive one at a time, so
//! no two requests race on a trial, and SQLite's blocking calls never stall the async runtime.
//! Each request is one transaction; a failed request leaves the store as it was.
//!
//! It never talks to the network: the gRPC service turns wire messages into calls on the handle.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use sweep_shared::ids::{LeaseEpoch, SweepId, TrialId, WorkerId};
use sweep_shared::limits;
use sweep_shared::params::JobCatalog;
use sweep_shared::space;
use sweep_shared::spec::{parse_spec, Goal, MetricSpec, SweepSpec};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::checkpoint_store::{checkpoint_key, CheckpointStore, DirCheckpointStore};
use crate::clock::now_ms;
use crate::config::CoordinatorConfig;
use crate::error::{CoordinatorError, Result};
use crate::leases::{check_fence, Expiry, LeasePolicy};
use crate::objective::ObjectiveState;
use crate::parquet::configs::write_configs;
use crate::parquet::metrics::MetricsSink;
use crate::parquet::trials::{trials_path, write_trials};
use crate::parquet::{write_sweep_meta, SweepMeta};
use crate::scheduler::{trials_to_assign, WorkerCapacity};
use crate::stats::{summarize_configs, ConfigStats, RankBy};
use crate::store::{
    self, ArtifactRow, CheckpointRow, NewPoint, NewTrial, StatusCounts, Store, SweepRow, TrialRow, TrialStatus,
    WorkerRow,
};

/// How many pending trials the scheduler looks at per lease asked for (at least 64): enough for
/// sweeps to take turns, few enough that an acquire stays cheap.
const CANDIDATES_PER_LEASE: usize = 8;

/// A registered worker, as the scheduler needs it.
#[derive(Debug, Clone)]
struct WorkerInfo {
    job_kinds: Vec<String>,
    devices: Vec<String>,
}

/// A lease just granted.
#[derive(Debug, Clone)]
pub struct Lease {
    pub trial: TrialRow,
    pub deadline_ms: i64,
    /// The checkpoint the attempt resumes from.
    pub checkpoint: Option<CheckpointRow>,
}

/// One metric batch as received from a worker.
#[derive(Debug, Clone)]
pub struct IncomingBatch {
    pub trial_id: TrialId,
    pub epoch: LeaseEpoch,
    pub attempt: u32,
    pub seq: u64,
    pub points: Vec<IncomingPoint>,
}

#[derive(Debug, Clone)]
pub struct IncomingPoint {
    pub step: u64,
    pub name: String,
    pub value: f64,
    pub wall_time_us: i64,
}

/// What happened to a metric batch.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchOutcome {
    Stored,
    Duplicate,
    Gap { expected_seq: u64 },
}

pub struct SubmitOutcome {
    pub sweep_id: SweepId,
    pub trials: u64,
    pub existing: bool,
    pub added: u64,
}

/// A checkpoint upload, verified by the service (size and sha256) and put in the store.
#[derive(Debug, Clone)]
pub struct StoredCheckpoint {
    pub trial_id: TrialId,
    pub epoch: LeaseEpoch,
    pub attempt: u32,
    pub step: u64,
    pub sha256: String,
    pub bytes: u64,
    pub store_key: String,
}

/// A trial as `ListTrials` shows it: its row, what happened to it, the files it produced.
pub struct TrialDetail {
    pub row: TrialRow,
    pub events: Vec<String>,
    pub artifacts: Vec<ArtifactRow>,
}

/// A sweep's progress.
pub struct SweepProgress {
    pub sweep: SweepRow,
    pub metric: MetricSpec,
    pub counts: StatusCounts,
    pub best: Option<(TrialId, f64)>,
    pub output_dir: PathBuf,
    pub live_workers: u64,
}

pub struct ExportOutcome {
    pub trials_path: PathBuf,
    pub metrics_dir: PathBuf,
    pub metric_rows: u64,
}

pub struct Core {
    store: Store,
    sink: MetricsSink,
    config: CoordinatorConfig,
    policy: LeasePolicy,
    catalog: Arc<dyn JobCatalog>,
    /// Registered workers; reloaded from the store at start so a restart does not orphan them.
    workers: HashMap<WorkerId, WorkerInfo>,
    /// Each sweep's metric spec, parsed once from the stored spec.
    metrics: HashMap<SweepId, MetricSpec>,
    /// Sweeps whose trials changed since their trials.parquet was last written.
    dirty_sweeps: HashSet<SweepId>,
    last_trials_write_ms: i64,
    /// Wakes acquire calls that wait for work when trials become pending.
    work_available: Arc<Notify>,
    checkpoints: Arc<dyn CheckpointStore>,
}

impl Core {
    /// Opens the store under `config.state_dir` and recovers the Parquet sink.
    pub fn open(config: CoordinatorConfig, catalog: Arc<dyn JobCatalog>, work_available: Arc<Notify>) -> Result<Core> {
        std::fs::create_dir_all(&config.state_dir).map_err(|e| CoordinatorError::io(&config.state_dir, e))?;
        std::fs::create_dir_all(&config.out_dir).map_err(|e| CoordinatorError::io(&config.out_dir, e))?;
        let mut store = Store::open(&config.state_dir.join("sweep.db"))?;
        let sink = MetricsSink::new(config.out_dir.clone(), config.flush_rows, config.flush_interval);
        sink.recover(&mut store)?;
        let checkpoints: Arc<dyn CheckpointStore> = Arc::new(DirCheckpointStore::open(config.checkpoint_dir.clone())?);
        let now = now_ms();
        if config.requeue_running_at_start {
            let running = store::running_trials(store.conn())?;
            store.transaction(|tx| {
                for trial in &running {
                    store::hand_back(tx, &trial.trial_id)?;
                    store::record_event(tx, Some(&trial.trial_id), "interrupted", "handed back at resume", now)?;
                }
                Ok(())
            })?;
            if !running.is_empty() {
                info!(trials = running.len(), "interrupted trials handed back for resume");
            }
        } else {
            let n = store::extend_running_leases(store.conn(), now + config.restart_grace.as_millis() as i64)?;
            if n > 0 {
                info!(
                    trials = n,
                    grace_ms = config.restart_grace.as_millis() as u64,
                    "running leases wait for their workers"
                );
            }
        }
        let mut workers = HashMap::new();
        {
            let mut stmt = store.conn().prepare("SELECT worker_id, job_kinds, devices FROM workers")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
            for row in rows {
                let (id, kinds, devices) = row?;
                workers.insert(
                    WorkerId(id),
                    WorkerInfo {
                        job_kinds: serde_json::from_str(&kinds).unwrap_or_default(),
                        devices: serde_json::from_str(&devices).unwrap_or_default(),
                    },
                );
            }
        }
        let mut metrics = HashMap::new();
        for sweep in store::sweeps(store.conn())? {
            let spec: SweepSpec = serde_json::from_str(&sweep.spec_json)
                .map_err(|e| CoordinatorError::Corrupt(format!("stored spec of sweep {}: {e}", sweep.sweep_id)))?;
            metrics.insert(sweep.sweep_id.clone(), spec.metric);
        }
        let policy = LeasePolicy { ttl: config.lease_ttl, max_attempts: config.max_attempts };
        Ok(Core {
            store,
            sink,
            config,
            policy,
            catalog,
            workers,
            metrics,
            dirty_sweeps: HashSet::new(),
            last_trials_write_ms: 0,
            work_available,
            checkpoints,
        })
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    // ------------------------------------------------------------------ user side

    /// Validates a spec, expands it and stores the sweep with all its trials in one transaction.
    /// The same spec submitted again is a no-op; a different spec under an existing name is refused.
    pub fn submit(&mut self, spec_yaml: &str, source_name: &str, extend: bool) -> Result<SubmitOutcome> {
        if spec_yaml.len() > limits::MAX_SPEC_BYTES {
            return Err(CoordinatorError::InvalidRequest(format!(
                "spec is {} bytes; the limit is {}",
                spec_yaml.len(),
                limits::MAX_SPEC_BYTES
            )));
        }
        let spec = parse_spec(spec_yaml, source_name, self.catalog.as_ref())
            .map_err(|e| CoordinatorError::InvalidSpec(e.to_string()))?;
        let schema = self
            .catalog
            .schema(&spec.job_kind)
            .ok_or_else(|| CoordinatorError::InvalidSpec(format!("unknown job kind '{}'", spec.job_kind)))?;
        let fingerprint = spec.fingerprint();
        let existing = store::sweep(self.store.conn(), &spec.name)?;
        if let Some(existing) = &existing {
            if existing.fingerprint == fingerprint {
                return Ok(SubmitOutcome {
                    sweep_id: existing.sweep_id.clone(),
                    trials: existing.total,
                    existing: true,
                    added: 0,
                });
            }
            if !extend {
                return Err(CoordinatorError::AlreadyExists(format!(
                    "sweep '{}' exists with a different spec; resubmit with --extend to add the new spec's trials, \
                     or give it another name",
                    spec.name
                )));
            }
            let stored: SweepSpec = serde_json::from_str(&existing.spec_json)
                .map_err(|e| CoordinatorError::Corrupt(format!("stored spec of sweep {}: {e}", existing.sweep_id)))?;
            if stored.job_kind != spec.job_kind || stored.metric != spec.metric {
                return Err(CoordinatorError::InvalidSpec(format!(
                    "--extend keeps a sweep's job kind and metric; sweep '{}' runs {} for {} ({})",
                    spec.name, stored.job_kind, stored.metric.name, stored.metric.goal
                )));
            }
        }
        let plans = space::expand(&spec, schema);
        if plans.is_empty() {
            return Err(CoordinatorError::InvalidSpec(format!("sweep '{}' expands to no trials", spec.name)));
        }
        if plans.len() as u64 > limits::MAX_TRIALS_PER_SWEEP {
            return Err(CoordinatorError::InvalidSpec(format!(
                "sweep '{}' expands to {} trials; the limit is {} (set max_trials)",
                spec.name,
                plans.len(),
                limits::MAX_TRIALS_PER_SWEEP
            )));
        }
        let spec_json = serde_json::to_string(&spec).map_err(|e| CoordinatorError::InvalidSpec(e.to_string()))?;
        let mut sweep = SweepRow {
            sweep_id: spec.name.clone(),
            spec_yaml: spec_yaml.to_string(),
            spec_json,
            fingerprint,
            job_kind: spec.job_kind.clone(),
            total: plans.len() as u64,
            created_ms: existing.as_ref().map_or_else(now_ms, |e| e.created_ms),
        };
        let added = self.store.transaction(|tx| {
            if existing.is_some() {
                // Extend: keep every stored trial, add the new spec's trials that are not there yet.
                let mut added = 0u64;
                let first_ordinal = store::trial_count(tx, &sweep.sweep_id)?;
                for plan in &plans {
                    if store::trial_exists(tx, &plan.trial_id)? {
                        continue;
                    }
                    store::insert_trial(
                        tx,
                        &NewTrial {
                            trial_id: &plan.trial_id,
                            sweep_id: &sweep.sweep_id,
                            ordinal: first_ordinal + added,
                            config_id: plan.config_id.as_str(),
                            seed: plan.seed,
                            params_json: &plan.params.canonical_json(),
                            job_kind: &sweep.job_kind,
                        },
                    )?;
                    added += 1;
                }
                sweep.total = store::trial_count(tx, &sweep.sweep_id)?;
                store::update_sweep_spec(tx, &sweep)?;
                return Ok(added);
            }
            store::insert_sweep(tx, &sweep)?;
            for plan in &plans {
                store::insert_trial(
                    tx,
                    &NewTrial {
                        trial_id: &plan.trial_id,
                        sweep_id: &sweep.sweep_id,
                        ordinal: plan.ordinal,
                        config_id: plan.config_id.as_str(),
                        seed: plan.seed,
                        params_json: &plan.params.canonical_json(),
                        job_kind: &sweep.job_kind,
                    },
                )?;
            }
            Ok(plans.len() as u64)
        })?;
        info!(sweep = %sweep.sweep_id, trials = sweep.total, added, extended = existing.is_some(), "sweep submitted");
        self.metrics.insert(sweep.sweep_id.clone(), spec.metric);
        self.dirty_sweeps.insert(sweep.sweep_id.clone());
        self.work_available.notify_waiters();
        Ok(SubmitOutcome { sweep_id: sweep.sweep_id, trials: sweep.total, existing: false, added })
    }

    fn sweep_row(&self, sweep_id: &SweepId) -> Result<SweepRow> {
        store::sweep(self.store.conn(), sweep_id)?
            .ok_or_else(|| CoordinatorError::NotFound(format!("sweep '{sweep_id}'")))
    }

    fn metric_of(&self, sweep_id: &SweepId) -> Result<MetricSpec> {
        self.metrics.get(sweep_id).cloned().ok_or_else(|| CoordinatorError::NotFound(format!("sweep '{sweep_id}'")))
    }

    pub fn progress(&self, sweep_id: &SweepId) -> Result<SweepProgress> {
        let sweep = self.sweep_row(sweep_id)?;
        let metric = self.metric_of(sweep_id)?;
        let counts = store::status_counts(self.store.conn(), sweep_id)?;
        let order = if metric.goal == Goal::Maximize { "DESC" } else { "ASC" };
        let best = self
            .store
            .conn()
            .query_row(
                &format!(
                    "SELECT trial_id, objective FROM trials WHERE sweep_id = ?1 AND objective IS NOT NULL
                     ORDER BY objective {order} LIMIT 1"
                ),
                [sweep_id.as_str()],
                |r| Ok((TrialId(r.get(0)?), r.get::<_, f64>(1)?)),
            )
            .ok();
        let since = now_ms() - 3 * self.config.lease_ttl.as_millis() as i64;
        Ok(SweepProgress {
            output_dir: crate::parquet::sweep_dir(&self.config.out_dir, sweep_id.as_str()),
            live_workers: store::live_workers(self.store.conn(), since)?,
            sweep,
            metric,
            counts,
            best,
        })
    }

    pub fn list_sweeps(&self) -> Result<Vec<SweepProgress>> {
        store::sweeps(self.store.conn())?.iter().map(|s| self.progress(&s.sweep_id)).collect()
    }

    pub fn trials(&self, sweep_id: &SweepId) -> Result<Vec<TrialRow>> {
        self.sweep_row(sweep_id)?;
        store::trials_of_sweep(self.store.conn(), sweep_id)
    }

    /// The sweep's trials with their recorded events and artifacts.
    pub fn trial_details(&self, sweep_id: &SweepId) -> Result<Vec<TrialDetail>> {
        let trials = self.trials(sweep_id)?;
        let mut events: HashMap<String, Vec<String>> = HashMap::new();
        for (trial, event) in store::sweep_events(self.store.conn(), sweep_id)? {
            events.entry(trial).or_default().push(event);
        }
        let mut artifacts: HashMap<String, Vec<ArtifactRow>> = HashMap::new();
        for artifact in store::sweep_artifacts(self.store.conn(), sweep_id)? {
            artifacts.entry(artifact.trial_id.0.clone()).or_default().push(artifact);
        }
        Ok(trials
            .into_iter()
            .map(|row| TrialDetail {
                events: events.remove(row.trial_id.as_str()).unwrap_or_default(),
                artifacts: artifacts.remove(row.trial_id.as_str()).unwrap_or_default(),
                row,
            })
            .collect())
    }

    /// Configurations ranked by an aggregate of their objective over seeds (completed trials only).
    pub fn best(&self, sweep_id: &SweepId, top: usize, by: RankBy) -> Result<(MetricSpec, Vec<ConfigStats>)> {
        let metric = self.metric_of(sweep_id)?;
        let trials = self.trials(sweep_id)?;
        let mut configs = summarize_configs(&trials, &metric, by);
        if top > 0 {
            configs.truncate(top);
        }
        Ok((metric, configs))
    }

    pub fn cancel(&mut self, sweep_id: &SweepId) -> Result<u64> {
        self.sweep_row(sweep_id)?;
        let n = store::cancel_sweep(self.store.conn(), sweep_id, now_ms())?;
        info!(sweep = %sweep_id, cancelled = n, "sweep cancelled");
        self.finalize(sweep_id)?;
        Ok(n)
    }

    /// Writes the sweep's staged metrics and trials.parquet now.
    pub fn export(&mut self, sweep_id: &SweepId) -> Result<ExportOutcome> {
        self.sweep_row(sweep_id)?;
        self.finalize(sweep_id)?;
        Ok(ExportOutcome {
            trials_path: trials_path(&self.config.out_dir, sweep_id.as_str()),
            metrics_dir: self.sink.metrics_dir(sweep_id),
            metric_rows: store::part_rows(self.store.conn(), sweep_id)?,
        })
    }

    fn finalize(&mut self, sweep_id: &SweepId) -> Result<()> {
        self.sink.flush_sweep(&mut self.store, sweep_id)?;
        self.sink.apply_supersessions(&mut self.store, sweep_id)?;
        self.write_trials_file(sweep_id)
    }

    /// Rewrites the sweep's `trials.parquet` and `configs.parquet` (configurations ranked by mean).
    fn write_trials_file(&mut self, sweep_id: &SweepId) -> Result<()> {
        let trials = store::trials_of_sweep(self.store.conn(), sweep_id)?;
        write_trials(&self.config.out_dir, sweep_id.as_str(), &trials)?;
        let metric = self.metric_of(sweep_id)?;
        let configs = summarize_configs(&trials, &metric, RankBy::Mean);
        write_configs(&self.config.out_dir, sweep_id.as_str(), &configs)?;
        let job_kind = self.sweep_row(sweep_id)?.job_kind;
        write_sweep_meta(&self.config.out_dir, &SweepMeta { sweep: sweep_id.to_string(), job_kind, metric })?;
        self.dirty_sweeps.remove(sweep_id);
        Ok(())
    }

    // ------------------------------------------------------------------ worker side

    pub fn register(
        &mut self,
        hostname: &str,
        job_kinds: Vec<String>,
        devices: Vec<String>,
        slots: u32,
    ) -> Result<WorkerId> {
        if job_kinds.is_empty() {
            return Err(CoordinatorError::InvalidRequest("a worker must offer at least one job kind".into()));
        }
        if slots == 0 || slots > 1024 {
            return Err(CoordinatorError::InvalidRequest(format!("slots must be within 1..=1024, got {slots}")));
        }
        let worker_id = WorkerId(uuid::Uuid::new_v4().to_string());
        store::upsert_worker(
            self.store.conn(),
            &WorkerRow { worker_id: &worker_id, hostname, job_kinds: &job_kinds, devices: &devices, slots },
            now_ms(),
        )?;
        info!(worker = %worker_id, hostname, slots, kinds = ?job_kinds, "worker registered");
        self.workers.insert(worker_id.clone(), WorkerInfo { job_kinds, devices });
        Ok(worker_id)
    }

    fn worker(&self, worker_id: &WorkerId) -> Result<&WorkerInfo> {
        self.workers
            .get(worker_id)
            .ok_or_else(|| CoordinatorError::NotFound(format!("worker '{worker_id}' (register again)")))
    }

    /// Leases up to `max` pending trials to the worker.
    pub fn acquire(&mut self, worker_id: &WorkerId, max: u32) -> Result<Vec<Lease>> {
        let worker = self.worker(worker_id)?.clone();
        let max = max.min(limits::MAX_LEASES_PER_ACQUIRE) as usize;
        if max == 0 {
            return Ok(Vec::new());
        }
        let pending = store::pending_trials(self.store.conn(), (max * CANDIDATES_PER_LEASE).max(64))?;
        let chosen = trials_to_assign(&pending, &WorkerCapacity { job_kinds: &worker.job_kinds, free_slots: max });
        let now = now_ms();
        store::touch_worker(self.store.conn(), worker_id, now)?;
        if chosen.is_empty() {
            return Ok(Vec::new());
        }
        let device = worker.devices.first().cloned().unwrap_or_else(|| "cpu".into());
        let deadline_ms = self.policy.deadline_ms(now);
        let leases = self.store.transaction(|tx| {
            let mut leases = Vec::with_capacity(chosen.len());
            for trial_id in &chosen {
                let epoch = store::next_epoch(tx)?;
                if !store::grant_lease(tx, trial_id, worker_id, &device, epoch, deadline_ms, now)? {
                    continue;
                }
                let Some(trial) = store::trial(tx, trial_id)? else { continue };
                if trial.attempt <= 1 {
                    // A first lease: nothing to resume from, and the row already says so.
                    leases.push(Lease { trial, deadline_ms, checkpoint: None });
                    continue;
                }
                let checkpoint = resume_point(tx, &trial)?;
                let Some(trial) = store::trial(tx, trial_id)? else { continue };
                leases.push(Lease { trial, deadline_ms, checkpoint });
            }
            Ok(leases)
        })?;
        for lease in &leases {
            self.dirty_sweeps.insert(lease.trial.sweep_id.clone());
        }
        Ok(leases)
    }

    /// Extends the worker's current leases; returns the ones it no longer holds, and whether the
    /// worker is known.
    pub fn heartbeat(
        &mut self,
        worker_id: &WorkerId,
        held: &[(TrialId, LeaseEpoch)],
    ) -> Result<(Vec<(TrialId, LeaseEpoch)>, bool)> {
        let now = now_ms();
        if !self.workers.contains_key(worker_id) || !store::touch_worker(self.store.conn(), worker_id, now)? {
            return Ok((held.to_vec(), false));
        }
        let deadline_ms = self.policy.deadline_ms(now);
        let revoked = self.store.transaction(|tx| {
            let mut revoked = Vec::new();
            for (trial_id, epoch) in held {
                if !store::extend_lease(tx, trial_id, *epoch, deadline_ms)? {
                    revoked.push((trial_id.clone(), *epoch));
                }
            }
            Ok(revoked)
        })?;
        Ok((revoked, true))
    }

    fn fenced_trial(&self, trial_id: &TrialId, epoch: LeaseEpoch) -> Result<TrialRow> {
        let trial = store::trial(self.store.conn(), trial_id)?
            .ok_or_else(|| CoordinatorError::NotFound(format!("trial '{trial_id}'")))?;
        check_fence(&trial, epoch)?;
        Ok(trial)
    }

    /// Stores a metric batch exactly once: a resent batch is a duplicate, a skipped one a gap.
    pub fn append_metrics(&mut self, batch: IncomingBatch) -> Result<BatchOutcome> {
        validate_batch(&batch)?;
        let trial = self.fenced_trial(&batch.trial_id, batch.epoch)?;
        if batch.attempt != trial.attempt {
            return Err(CoordinatorError::InvalidRequest(format!(
                "batch for trial {} names attempt {}, the lease is attempt {}",
                trial.trial_id, batch.attempt, trial.attempt
            )));
        }
        if batch.seq <= trial.batch_seq {
            return Ok(BatchOutcome::Duplicate);
        }
        if batch.seq > trial.batch_seq + 1 {
            return Ok(BatchOutcome::Gap { expected_seq: trial.batch_seq + 1 });
        }
        let metric = self.metric_of(&trial.sweep_id)?;
        let mut state: Option<ObjectiveState> = None;
        for p in batch.points.iter().filter(|p| p.name == metric.name) {
            let s = state.get_or_insert_with(|| {
                trial.obj_state.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default()
            });
            s.observe(p.step, p.value, metric.goal, &metric.summary);
        }
        let state_json = state.map(|s| serde_json::to_string(&s).unwrap_or_default());
        let points: Vec<NewPoint<'_>> = batch
            .points
            .iter()
            .map(|p| NewPoint { step: p.step, wall_time_us: p.wall_time_us, name: &p.name, value: p.value })
            .collect();
        let now = now_ms();
        self.store.transaction(|tx| store::stage_batch(tx, &trial, batch.seq, &points, state_json.as_deref(), now))?;
        Ok(BatchOutcome::Stored)
    }

    /// Completes a trial once every metric batch of its attempt is stored; `tail` holds points
    /// sent with the completion instead of in a batch, stored in the same transaction.
    pub fn complete(
        &mut self,
        trial_id: &TrialId,
        epoch: LeaseEpoch,
        batches: u64,
        wall_seconds: f64,
        tail: Vec<IncomingPoint>,
    ) -> Result<()> {
        validate_points(&tail)?;
        let trial = self.fenced_trial(trial_id, epoch)?;
        if batches != trial.batch_seq {
            return Err(CoordinatorError::FailedPrecondition(format!(
                "trial {trial_id}: the worker sent {batches} metric batches, the coordinator holds {}; resend the rest first",
                trial.batch_seq
            )));
        }
        let metric = self.metric_of(&trial.sweep_id)?;
        let mut state: ObjectiveState =
            trial.obj_state.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default();
        for p in tail.iter().filter(|p| p.name == metric.name) {
            state.observe(p.step, p.value, metric.goal, &metric.summary);
        }
        let objective = state.value(&metric.summary);
        let wall = wall_seconds.is_finite().then_some(wall_seconds);
        let now = now_ms();
        self.store.transaction(|tx| {
            if !tail.is_empty() {
                let points: Vec<NewPoint<'_>> = tail
                    .iter()
                    .map(|p| NewPoint { step: p.step, wall_time_us: p.wall_time_us, name: &p.name, value: p.value })
                    .collect();
                let state_json = serde_json::to_string(&state).ok();
                store::stage_batch(tx, &trial, trial.batch_seq, &points, state_json.as_deref(), now)?;
            }
            store::finish(tx, trial_id, TrialStatus::Completed, objective, wall, None, now)
        })?;
        self.trial_ended(trial_id, &trial.sweep_id)
    }

    /// A failed attempt: retried unless the failure is the job's own or attempts ran out.
    pub fn fail(&mut self, trial_id: &TrialId, epoch: LeaseEpoch, error: &str, permanent: bool) -> Result<bool> {
        let trial = self.fenced_trial(trial_id, epoch)?;
        let error: String = error.chars().take(4096).collect();
        let retry = !permanent && trial.charged_attempts() < self.policy.max_attempts;
        if retry {
            warn!(trial = %trial_id, attempt = trial.attempt, error = %error, "trial attempt failed; retrying");
            store::requeue(self.store.conn(), trial_id, Some(&error))?;
            self.dirty_sweeps.insert(trial.sweep_id.clone());
            self.work_available.notify_waiters();
        } else {
            warn!(trial = %trial_id, attempt = trial.attempt, error = %error, "trial failed");
            store::finish(self.store.conn(), trial_id, TrialStatus::Failed, None, None, Some(&error), now_ms())?;
            self.trial_ended(&trial.trial_id, &trial.sweep_id)?;
        }
        Ok(retry)
    }

    /// The worker gives the trial back unfinished: pending again, the attempt not counted.
    pub fn release(&mut self, trial_id: &TrialId, epoch: LeaseEpoch, reason: &str) -> Result<()> {
        let trial = self.fenced_trial(trial_id, epoch)?;
        info!(trial = %trial_id, reason, "trial handed back");
        store::hand_back(self.store.conn(), trial_id)?;
        self.dirty_sweeps.insert(trial.sweep_id);
        self.work_available.notify_waiters();
        Ok(())
    }

    fn trial_ended(&mut self, trial_id: &TrialId, sweep_id: &SweepId) -> Result<()> {
        let keys = store::drop_checkpoints(self.store.conn(), trial_id)?;
        self.delete_checkpoint_files(&keys);
        self.dirty_sweeps.insert(sweep_id.clone());
        if !store::has_unfinished(self.store.conn(), sweep_id)? {
            let counts = store::status_counts(self.store.conn(), sweep_id)?;
            info!(sweep = %sweep_id, completed = counts.completed, failed = counts.failed, "sweep finished");
            self.finalize(sweep_id)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ checkpoints

    /// The attempt of the trial's current lease, if `epoch` is it (checked before an upload).
    pub fn lease_attempt(&self, trial_id: &TrialId, epoch: LeaseEpoch) -> Result<u32> {
        Ok(self.fenced_trial(trial_id, epoch)?.attempt)
    }

    /// Where an artifact of a leased trial goes: `<out>/<sweep>/artifacts/<trial>/<name>`, and the
    /// lease's attempt (the upload must name it).
    pub fn artifact_path(&self, trial_id: &TrialId, epoch: LeaseEpoch, name: &str) -> Result<(PathBuf, u32)> {
        if !limits::valid_artifact_name(name) {
            return Err(CoordinatorError::InvalidRequest(format!(
                "artifact name '{}' is not a plain file name (letters, digits, '.', '_', '-'; at most {} characters)",
                name.escape_debug(),
                limits::MAX_ARTIFACT_NAME
            )));
        }
        let trial = self.fenced_trial(trial_id, epoch)?;
        let dir = crate::parquet::sweep_dir(&self.config.out_dir, trial.sweep_id.as_str()).join("artifacts");
        Ok((dir.join(trial_id.as_str()).join(name), trial.attempt))
    }

    /// Records an artifact whose file the service has put in place (still under the same lease).
    pub fn record_artifact(&mut self, epoch: LeaseEpoch, artifact: ArtifactRow) -> Result<()> {
        let trial = self.fenced_trial(&artifact.trial_id, epoch)?;
        if artifact.attempt != trial.attempt {
            return Err(CoordinatorError::InvalidRequest(format!(
                "artifact of trial {} names attempt {}, the lease is attempt {}",
                trial.trial_id, artifact.attempt, trial.attempt
            )));
        }
        store::upsert_artifact(self.store.conn(), &artifact, now_ms())
    }

    pub fn checkpoint_store(&self) -> Arc<dyn CheckpointStore> {
        self.checkpoints.clone()
    }

    /// Records an uploaded checkpoint with the trial's objective state (every metric point up to
    /// its step is stored before the worker uploads), and prunes the trial's older checkpoints.
    pub fn record_checkpoint(&mut self, upload: StoredCheckpoint) -> Result<u32> {
        let trial = self.fenced_trial(&upload.trial_id, upload.epoch)?;
        if upload.attempt != trial.attempt {
            return Err(CoordinatorError::InvalidRequest(format!(
                "checkpoint of trial {} names attempt {}, the lease is attempt {}",
                trial.trial_id, upload.attempt, trial.attempt
            )));
        }
        let row = CheckpointRow {
            trial_id: trial.trial_id.clone(),
            step: upload.step,
            attempt: upload.attempt,
            sha256: upload.sha256,
            bytes: upload.bytes,
            store_key: upload.store_key,
            obj_state: trial.obj_state.clone(),
        };
        let keep = self.config.keep_checkpoints.max(1);
        let now = now_ms();
        let dropped = self.store.transaction(|tx| {
            store::insert_checkpoint(tx, &row, now)?;
            store::prune_checkpoints(tx, &row.trial_id, keep)
        })?;
        self.delete_checkpoint_files(&dropped);
        Ok(store::good_checkpoints(self.store.conn(), &row.trial_id)?.len() as u32)
    }

    /// The checkpoint a lease holder may fetch: the one at `step`, if it is stored and not bad.
    pub fn checkpoint_to_fetch(&self, trial_id: &TrialId, epoch: LeaseEpoch, step: u64) -> Result<CheckpointRow> {
        self.fenced_trial(trial_id, epoch)?;
        store::good_checkpoints(self.store.conn(), trial_id)?
            .into_iter()
            .find(|c| c.step == step)
            .ok_or_else(|| CoordinatorError::NotFound(format!("checkpoint of trial {trial_id} at step {step}")))
    }

    /// A fetched checkpoint did not verify or restore: mark it bad, record the event, and move the
    /// attempt's resume point to the previous good checkpoint (or step 0), which is returned.
    pub fn bad_checkpoint(
        &mut self,
        trial_id: &TrialId,
        epoch: LeaseEpoch,
        step: u64,
        reason: &str,
    ) -> Result<Option<CheckpointRow>> {
        let trial = self.fenced_trial(trial_id, epoch)?;
        let reason: String = reason.chars().take(1024).collect();
        let now = now_ms();
        let fallback = self.store.transaction(|tx| {
            if store::checkpoint(tx, trial_id, step)?.is_none() {
                return Err(CoordinatorError::NotFound(format!("checkpoint of trial {trial_id} at step {step}")));
            }
            store::mark_checkpoint_bad(tx, trial_id, step, &reason)?;
            let fallback = store::good_checkpoints(tx, trial_id)?.into_iter().find(|c| c.step < step);
            let message = match &fallback {
                Some(c) => format!("checkpoint at step {step} is bad ({reason}); falling back to step {}", c.step),
                None => format!("checkpoint at step {step} is bad ({reason}); starting from step 0"),
            };
            store::record_event(tx, Some(trial_id), "bad_checkpoint", &message, now)?;
            warn!(trial = %trial_id, %message, "bad checkpoint");
            set_resume(tx, &trial, fallback.as_ref())?;
            Ok(fallback)
        })?;
        Ok(fallback)
    }

    fn delete_checkpoint_files(&self, keys: &[String]) {
        for key in keys {
            if let Err(err) = self.checkpoints.delete(key) {
                warn!(%err, key, "deleting an old checkpoint failed");
            }
        }
    }

    // ------------------------------------------------------------------ reconcile

    /// The periodic pass: expires leases, writes due metric parts and stale trials files.
    pub fn reconcile(&mut self) -> Result<()> {
        let now = now_ms();
        let expired = store::expired_leases(self.store.conn(), now)?;
        let mut requeued = false;
        for trial in &expired {
            match self.policy.on_expiry(trial.charged_attempts()) {
                Expiry::Requeue => {
                    warn!(trial = %trial.trial_id, attempt = trial.attempt, worker = ?trial.worker_id, "lease expired; trial back to pending");
                    store::requeue(self.store.conn(), &trial.trial_id, Some("lease expired"))?;
                    self.dirty_sweeps.insert(trial.sweep_id.clone());
                    requeued = true;
                }
                Expiry::Fail(message) => {
                    warn!(trial = %trial.trial_id, %message, "trial failed");
                    store::finish(
                        self.store.conn(),
                        &trial.trial_id,
                        TrialStatus::Failed,
                        None,
                        None,
                        Some(&message),
                        now,
                    )?;
                    self.trial_ended(&trial.trial_id, &trial.sweep_id)?;
                }
            }
        }
        if requeued {
            self.work_available.notify_waiters();
        }
        self.sink.flush_due(&mut self.store, now)?;
        if now - self.last_trials_write_ms >= self.config.flush_interval.as_millis() as i64 {
            let dirty: Vec<SweepId> = self.dirty_sweeps.iter().cloned().collect();
            for sweep in dirty {
                self.write_trials_file(&sweep)?;
            }
            self.last_trials_write_ms = now;
        }
        Ok(())
    }

    /// Writes everything staged before the coordinator stops.
    pub fn shutdown(&mut self) -> Result<()> {
        for sweep in store::sweeps(self.store.conn())? {
            self.sink.flush_sweep(&mut self.store, &sweep.sweep_id)?;
            if self.dirty_sweeps.contains(&sweep.sweep_id) {
                self.write_trials_file(&sweep.sweep_id)?;
            }
        }
        Ok(())
    }
}

/// Where a retried attempt starts: at its latest good checkpoint, the older attempts' points
/// after that step superseded (all of them when there is no checkpoint).
fn resume_point(tx: &rusqlite::Connection, trial: &TrialRow) -> Result<Option<CheckpointRow>> {
    let checkpoint = store::good_checkpoints(tx, &trial.trial_id)?.into_iter().next();
    set_resume(tx, trial, checkpoint.as_ref())?;
    Ok(checkpoint)
}

fn set_resume(tx: &rusqlite::Connection, trial: &TrialRow, checkpoint: Option<&CheckpointRow>) -> Result<()> {
    store::set_resume_point(
        tx,
        &trial.trial_id,
        checkpoint.map(|c| c.step),
        checkpoint.and_then(|c| c.obj_state.as_deref()),
    )?;
    store::supersede(tx, trial, trial.attempt, checkpoint.map_or(-1, |c| c.step as i64))?;
    Ok(())
}

/// The store key for a trial's checkpoint; exposed for the service, which writes the file.
pub fn key_for(trial_id: &TrialId, step: u64) -> String {
    checkpoint_key(trial_id.as_str(), step)
}

fn validate_batch(batch: &IncomingBatch) -> Result<()> {
    if batch.seq == 0 {
        return Err(CoordinatorError::InvalidRequest("metric batch seq starts at 1".into()));
    }
    validate_points(&batch.points)
}

fn validate_points(points: &[IncomingPoint]) -> Result<()> {
    if points.len() > limits::MAX_POINTS_PER_BATCH {
        return Err(CoordinatorError::InvalidRequest(format!(
            "metric batch has {} points; the limit is {}",
            points.len(),
            limits::MAX_POINTS_PER_BATCH
        )));
    }
    for p in points {
        if p.name.is_empty() || p.name.len() > limits::MAX_METRIC_NAME {
            return Err(CoordinatorError::InvalidRequest(format!(
                "metric name must be 1..={} bytes, got {}",
                limits::MAX_METRIC_NAME,
                p.name.len()
            )));
        }
        if p.step > i64::MAX as u64 {
            return Err(CoordinatorError::InvalidRequest(format!("metric step {} is too large", p.step)));
        }
    }
    Ok(())
}
