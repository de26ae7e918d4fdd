//! The trial store: sweeps, trials, leases, workers and staged metric points in SQLite.
//!
//! One [`Store`] owns the one connection; only the core's owner thread holds it, so SQLite sees a
//! single writer. WAL mode with `synchronous=NORMAL`: a committed transaction survives a process
//! crash (the failure sweep guards against); an OS crash may lose the last few commits.
//! Every method that changes more than one row takes a transaction from the caller, so a request
//! lands whole or not at all.
//!
//! Metric points are staged here (`metric_staging`) the moment they are acknowledged and moved to
//! Parquet parts later by the metrics sink: staging makes an ack durable without holding points in
//! memory.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use sweep_shared::ids::{LeaseEpoch, SweepId, TrialId, WorkerId};

use crate::error::{CoordinatorError, Result};

/// Where a trial is in its life. `Running` covers "leased": a lease is a running trial's license.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl TrialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TrialStatus::Pending => "pending",
            TrialStatus::Running => "running",
            TrialStatus::Completed => "completed",
            TrialStatus::Failed => "failed",
            TrialStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => TrialStatus::Pending,
            "running" => TrialStatus::Running,
            "completed" => TrialStatus::Completed,
            "failed" => TrialStatus::Failed,
            "cancelled" => TrialStatus::Cancelled,
            other => return Err(CoordinatorError::Corrupt(format!("unknown trial status '{other}'"))),
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TrialStatus::Completed | TrialStatus::Failed | TrialStatus::Cancelled)
    }
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS sweeps (
    sweep_id     TEXT PRIMARY KEY,
    spec_yaml    TEXT NOT NULL,
    spec_json    TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    job_kind     TEXT NOT NULL,
    total        INTEGER NOT NULL,
    created_ms   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    trial_id     TEXT PRIMARY KEY,
    sweep_id     TEXT NOT NULL REFERENCES sweeps(sweep_id),
    ordinal      INTEGER NOT NULL,
    config_id    TEXT NOT NULL,
    seed         INTEGER NOT NULL,
    params_json  TEXT NOT NULL,
    job_kind     TEXT NOT NULL,
    status       TEXT NOT NULL,
    -- leases granted so far; the current (or last) attempt's number
    attempt      INTEGER NOT NULL DEFAULT 0,
    epoch        INTEGER NOT NULL DEFAULT 0,
    worker_id    TEXT,
    device       TEXT,
    deadline_ms  INTEGER,
    -- the last metric batch stored for the current attempt
    batch_seq    INTEGER NOT NULL DEFAULT 0,
    obj_state    TEXT,
    objective    REAL,
    started_ms   INTEGER,
    finished_ms  INTEGER,
    wall_seconds REAL,
    error        TEXT,
    -- leases handed back by stopping workers; not counted against max_attempts
    handbacks    INTEGER NOT NULL DEFAULT 0,
    -- the checkpoint step the current attempt resumed from (-1: none)
    resumed_from INTEGER NOT NULL DEFAULT -1
);
CREATE INDEX IF NOT EXISTS trials_by_status ON trials(status, ordinal);
CREATE INDEX IF NOT EXISTS trials_by_sweep ON trials(sweep_id, status);
CREATE TABLE IF NOT EXISTS workers (
    worker_id     TEXT PRIMARY KEY,
    hostname      TEXT NOT NULL,
    job_kinds     TEXT NOT NULL,
    devices       TEXT NOT NULL,
    slots         INTEGER NOT NULL,
    registered_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
-- AUTOINCREMENT: ids are never reused, even after every staged row was moved to a part; part
-- file names carry id ranges, so a reused id would overwrite a part or be taken for written.
CREATE TABLE IF NOT EXISTS metric_staging (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep_id     TEXT NOT NULL,
    trial_id     TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    step         INTEGER NOT NULL,
    wall_time_us INTEGER NOT NULL,
    name         TEXT NOT NULL,
    -- NULL stands for NaN: SQLite stores NaN as NULL
    value        REAL,
    staged_ms    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS staging_by_sweep ON metric_staging(sweep_id, id);
CREATE TABLE IF NOT EXISTS checkpoints (
    trial_id   TEXT NOT NULL,
    step       INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    bytes      INTEGER NOT NULL,
    store_key  TEXT NOT NULL,
    -- the trial's objective state when the checkpoint was stored (all points up to `step`)
    obj_state  TEXT,
    created_ms INTEGER NOT NULL,
    bad_reason TEXT,
    PRIMARY KEY (trial_id, step)
);
-- Rows of attempts before `below_attempt` with step > `after_step` are superseded by a resume.
CREATE TABLE IF NOT EXISTS supersessions (
    trial_id      TEXT NOT NULL,
    sweep_id      TEXT NOT NULL,
    below_attempt INTEGER NOT NULL,
    after_step    INTEGER NOT NULL,
    applied       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (trial_id, below_attempt)
);
CREATE TABLE IF NOT EXISTS part_trials (
    sweep_id  TEXT NOT NULL,
    file_name TEXT NOT NULL,
    trial_id  TEXT NOT NULL,
    PRIMARY KEY (sweep_id, file_name, trial_id)
);
CREATE TABLE IF NOT EXISTS events (
    id       INTEGER PRIMARY KEY,
    at_ms    INTEGER NOT NULL,
    trial_id TEXT,
    kind     TEXT NOT NULL,
    message  TEXT NOT NULL
);
-- Files trials produced (sample grids...); the file lives at `path`, one row per trial and name.
CREATE TABLE IF NOT EXISTS artifacts (
    trial_id   TEXT NOT NULL,
    name       TEXT NOT NULL,
    step       INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    path       TEXT NOT NULL,
    bytes      INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (trial_id, name)
);
CREATE TABLE IF NOT EXISTS metric_parts (
    sweep_id   TEXT NOT NULL,
    file_name  TEXT NOT NULL,
    first_id   INTEGER NOT NULL,
    last_id    INTEGER NOT NULL,
    rows       INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (sweep_id, file_name)
);
"#;

/// A sweep as stored.
#[derive(Debug, Clone)]
pub struct SweepRow {
    pub sweep_id: SweepId,
    pub spec_yaml: String,
    pub spec_json: String,
    pub fingerprint: String,
    pub job_kind: String,
    pub total: u64,
    pub created_ms: i64,
}

/// A trial as stored.
#[derive(Debug, Clone)]
pub struct TrialRow {
    pub trial_id: TrialId,
    pub sweep_id: SweepId,
    pub ordinal: u64,
    pub config_id: String,
    pub seed: u64,
    pub params_json: String,
    pub job_kind: String,
    pub status: TrialStatus,
    pub attempt: u32,
    pub epoch: LeaseEpoch,
    pub worker_id: Option<String>,
    pub device: Option<String>,
    pub deadline_ms: Option<i64>,
    pub batch_seq: u64,
    pub obj_state: Option<String>,
    pub objective: Option<f64>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub wall_seconds: Option<f64>,
    pub error: Option<String>,
    /// Leases handed back by stopping workers, not counted against max_attempts.
    pub handbacks: u32,
    /// The checkpoint step the current attempt resumed from; `None` when it started fresh.
    pub resumed_from: Option<u64>,
}

impl TrialRow {
    /// Attempts that count against max_attempts.
    pub fn charged_attempts(&self) -> u32 {
        self.attempt.saturating_sub(self.handbacks)
    }
}

const TRIAL_COLUMNS: &str = "trial_id, sweep_id, ordinal, config_id, seed, params_json, job_kind, status, attempt, \
     epoch, worker_id, device, deadline_ms, batch_seq, obj_state, objective, started_ms, finished_ms, wall_seconds, error, \
     handbacks, resumed_from";

fn trial_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(TrialRow, String)> {
    let status: String = row.get(7)?;
    Ok((
        TrialRow {
            trial_id: TrialId(row.get(0)?),
            sweep_id: SweepId(row.get(1)?),
            ordinal: row.get::<_, i64>(2)? as u64,
            config_id: row.get(3)?,
            seed: row.get::<_, i64>(4)? as u64,
            params_json: row.get(5)?,
            job_kind: row.get(6)?,
            status: TrialStatus::Pending,
            attempt: row.get::<_, i64>(8)? as u32,
            epoch: LeaseEpoch(row.get::<_, i64>(9)? as u64),
            worker_id: row.get(10)?,
            device: row.get(11)?,
            deadline_ms: row.get(12)?,
            batch_seq: row.get::<_, i64>(13)? as u64,
            obj_state: row.get(14)?,
            objective: row.get(15)?,
            started_ms: row.get(16)?,
            finished_ms: row.get(17)?,
            wall_seconds: row.get(18)?,
            error: row.get(19)?,
            handbacks: row.get::<_, i64>(20)? as u32,
            resumed_from: u64::try_from(row.get::<_, i64>(21)?).ok(),
        },
        status,
    ))
}

fn finish_trial((mut trial, status): (TrialRow, String)) -> Result<TrialRow> {
    trial.status = TrialStatus::parse(&status)?;
    Ok(trial)
}

/// A pending trial the scheduler may hand out.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingTrial {
    pub trial_id: TrialId,
    pub sweep_id: SweepId,
    pub job_kind: String,
    pub ordinal: u64,
    pub attempt: u32,
}

/// One staged metric point, as read back for a Parquet part.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedPoint {
    pub id: i64,
    pub trial_id: String,
    pub attempt: u32,
    pub step: u64,
    pub wall_time_us: i64,
    pub name: String,
    pub value: f64,
}

/// A metric point to stage.
pub struct NewPoint<'a> {
    pub step: u64,
    pub wall_time_us: i64,
    pub name: &'a str,
    pub value: f64,
}

/// Counts of a sweep's trials by status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusCounts {
    pub pending: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl StatusCounts {
    pub fn total(&self) -> u64 {
        self.pending + self.running + self.completed + self.failed + self.cancelled
    }
    pub fn unfinished(&self) -> u64 {
        self.pending + self.running
    }
}

pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('next_epoch', 1)", [])?;
        Ok(Store { conn })
    }

    /// Opens an existing store for reading only (while a coordinator may be writing it): no
    /// schema change, no write; a missing file is an error, not a new store.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Store { conn })
    }

    /// Runs `f` in one transaction: committed if it returns `Ok`, rolled back otherwise.
    pub fn transaction<T>(&mut self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let tx = self.conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}

// The queries below take a `&Connection` so that they run inside or outside a transaction alike
// (`Transaction` derefs to `Connection`).

pub fn insert_sweep(conn: &Connection, sweep: &SweepRow) -> Result<()> {
    conn.execute(
        "INSERT INTO sweeps(sweep_id, spec_yaml, spec_json, fingerprint, job_kind, total, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            sweep.sweep_id.as_str(),
            sweep.spec_yaml,
            sweep.spec_json,
            sweep.fingerprint,
            sweep.job_kind,
            sweep.total as i64,
            sweep.created_ms
        ],
    )?;
    Ok(())
}

fn sweep_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SweepRow> {
    Ok(SweepRow {
        sweep_id: SweepId(row.get(0)?),
        spec_yaml: row.get(1)?,
        spec_json: row.get(2)?,
        fingerprint: row.get(3)?,
        job_kind: row.get(4)?,
        total: row.get::<_, i64>(5)? as u64,
        created_ms: row.get(6)?,
    })
}

pub fn sweep(conn: &Connection, sweep_id: &SweepId) -> Result<Option<SweepRow>> {
    Ok(conn
        .query_row(
            "SELECT sweep_id, spec_yaml, spec_json, fingerprint, job_kind, total, created_ms FROM sweeps WHERE sweep_id = ?1",
            [sweep_id.as_str()],
            sweep_from_row,
        )
        .optional()?)
}

pub fn sweeps(conn: &Connection) -> Result<Vec<SweepRow>> {
    let mut stmt = conn.prepare(
        "SELECT sweep_id, spec_yaml, spec_json, fingerprint, job_kind, total, created_ms FROM sweeps ORDER BY created_ms",
    )?;
    let rows = stmt.query_map([], sweep_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

pub struct NewTrial<'a> {
    pub trial_id: &'a TrialId,
    pub sweep_id: &'a SweepId,
    pub ordinal: u64,
    pub config_id: &'a str,
    pub seed: u64,
    pub params_json: &'a str,
    pub job_kind: &'a str,
}

pub fn insert_trial(conn: &Connection, trial: &NewTrial<'_>) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO trials(trial_id, sweep_id, ordinal, config_id, seed, params_json, job_kind, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending')",
    )?
    .execute(params![
        trial.trial_id.as_str(),
        trial.sweep_id.as_str(),
        trial.ordinal as i64,
        trial.config_id,
        trial.seed as i64,
        trial.params_json,
        trial.job_kind
    ])?;
    Ok(())
}

pub fn trial(conn: &Connection, trial_id: &TrialId) -> Result<Option<TrialRow>> {
    let sql = format!("SELECT {TRIAL_COLUMNS} FROM trials WHERE trial_id = ?1");
    let row = conn.prepare_cached(&sql)?.query_row([trial_id.as_str()], trial_from_row).optional()?;
    row.map(finish_trial).transpose()
}

pub fn trials_of_sweep(conn: &Connection, sweep_id: &SweepId) -> Result<Vec<TrialRow>> {
    let sql = format!("SELECT {TRIAL_COLUMNS} FROM trials WHERE sweep_id = ?1 ORDER BY ordinal");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([sweep_id.as_str()], trial_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(finish_trial).collect()
}

/// The oldest pending trials (by ordinal), at most `limit`, for the scheduler to choose from.
pub fn pending_trials(conn: &Connection, limit: usize) -> Result<Vec<PendingTrial>> {
    let mut stmt = conn.prepare_cached(
        "SELECT trial_id, sweep_id, job_kind, ordinal, attempt FROM trials
         WHERE status = 'pending' ORDER BY ordinal, trial_id LIMIT ?1",
    )?;
    let rows = stmt
        .query_map([limit as i64], |row| {
            Ok(PendingTrial {
                trial_id: TrialId(row.get(0)?),
                sweep_id: SweepId(row.get(1)?),
                job_kind: row.get(2)?,
                ordinal: row.get::<_, i64>(3)? as u64,
                attempt: row.get::<_, i64>(4)? as u32,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Takes the next lease epoch: larger than every epoch handed out before, across restarts.
pub fn next_epoch(conn: &Connection) -> Result<LeaseEpoch> {
    let epoch: i64 =
        conn.query_row("UPDATE meta SET value = value + 1 WHERE key = 'next_epoch' RETURNING value - 1", [], |r| {
            r.get(0)
        })?;
    Ok(LeaseEpoch(epoch as u64))
}

/// Marks a pending trial running under a new lease: attempt + 1, fresh batch count.
pub fn grant_lease(
    conn: &Connection,
    trial_id: &TrialId,
    worker_id: &WorkerId,
    device: &str,
    epoch: LeaseEpoch,
    deadline_ms: i64,
    now_ms: i64,
) -> Result<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE trials SET status = 'running', attempt = attempt + 1, epoch = ?2, worker_id = ?3, device = ?4,
             deadline_ms = ?5, batch_seq = 0, started_ms = COALESCE(started_ms, ?6)
             WHERE trial_id = ?1 AND status = 'pending'",
        )?
        .execute(params![trial_id.as_str(), epoch.0 as i64, worker_id.as_str(), device, deadline_ms, now_ms])?;
    Ok(changed == 1)
}

pub fn extend_lease(conn: &Connection, trial_id: &TrialId, epoch: LeaseEpoch, deadline_ms: i64) -> Result<bool> {
    let changed = conn
        .prepare_cached("UPDATE trials SET deadline_ms = ?3 WHERE trial_id = ?1 AND epoch = ?2 AND status = 'running'")?
        .execute(params![trial_id.as_str(), epoch.0 as i64, deadline_ms])?;
    Ok(changed == 1)
}

/// Running trials whose lease deadline passed before `now_ms`.
pub fn expired_leases(conn: &Connection, now_ms: i64) -> Result<Vec<TrialRow>> {
    let sql = format!("SELECT {TRIAL_COLUMNS} FROM trials WHERE status = 'running' AND deadline_ms < ?1");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([now_ms], trial_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(finish_trial).collect()
}

/// Ends a running trial's lease and puts it back to pending (another attempt follows).
pub fn requeue(conn: &Connection, trial_id: &TrialId, error: Option<&str>) -> Result<()> {
    conn.prepare_cached(
        "UPDATE trials SET status = 'pending', worker_id = NULL, deadline_ms = NULL, error = COALESCE(?2, error)
         WHERE trial_id = ?1",
    )?
    .execute(params![trial_id.as_str(), error])?;
    Ok(())
}

/// Puts a released trial back to pending without counting the attempt against it.
pub fn hand_back(conn: &Connection, trial_id: &TrialId) -> Result<()> {
    conn.prepare_cached(
        "UPDATE trials SET status = 'pending', handbacks = handbacks + 1, worker_id = NULL, deadline_ms = NULL
         WHERE trial_id = ?1",
    )?
    .execute([trial_id.as_str()])?;
    Ok(())
}

pub fn finish(
    conn: &Connection,
    trial_id: &TrialId,
    status: TrialStatus,
    objective: Option<f64>,
    wall_seconds: Option<f64>,
    error: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE trials SET status = ?2, objective = COALESCE(?3, objective), wall_seconds = COALESCE(?4, wall_seconds),
         error = COALESCE(?5, error), finished_ms = ?6, deadline_ms = NULL WHERE trial_id = ?1",
    )?
    .execute(params![trial_id.as_str(), status.as_str(), objective, wall_seconds, error, now_ms])?;
    Ok(())
}

/// Cancels every unfinished trial of a sweep; returns how many.
pub fn cancel_sweep(conn: &Connection, sweep_id: &SweepId, now_ms: i64) -> Result<u64> {
    let n = conn.execute(
        "UPDATE trials SET status = 'cancelled', finished_ms = ?2, deadline_ms = NULL
         WHERE sweep_id = ?1 AND status IN ('pending', 'running')",
        params![sweep_id.as_str(), now_ms],
    )?;
    Ok(n as u64)
}

/// Whether any trial of the sweep is still pending or running (an index probe, not a count).
pub fn has_unfinished(conn: &Connection, sweep_id: &SweepId) -> Result<bool> {
    let found: i64 = conn
        .prepare_cached("SELECT EXISTS(SELECT 1 FROM trials WHERE sweep_id = ?1 AND status IN ('pending', 'running'))")?
        .query_row([sweep_id.as_str()], |r| r.get(0))?;
    Ok(found == 1)
}

pub fn status_counts(conn: &Connection, sweep_id: &SweepId) -> Result<StatusCounts> {
    let mut stmt = conn.prepare_cached("SELECT status, COUNT(*) FROM trials WHERE sweep_id = ?1 GROUP BY status")?;
    let mut counts = StatusCounts::default();
    let rows = stmt.query_map([sweep_id.as_str()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
    for row in rows {
        let (status, n) = row?;
        match TrialStatus::parse(&status)? {
            TrialStatus::Pending => counts.pending = n,
            TrialStatus::Running => counts.running = n,
            TrialStatus::Completed => counts.completed = n,
            TrialStatus::Failed => counts.failed = n,
            TrialStatus::Cancelled => counts.cancelled = n,
        }
    }
    Ok(counts)
}

/// Stages one batch's points and records the batch as stored, with the trial's new objective state.
pub fn stage_batch(
    conn: &Connection,
    trial: &TrialRow,
    seq: u64,
    points: &[NewPoint<'_>],
    obj_state: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    let (sweep_id, trial_id, attempt) = (&trial.sweep_id, &trial.trial_id, trial.attempt);
    let mut insert = conn.prepare_cached(
        "INSERT INTO metric_staging(sweep_id, trial_id, attempt, step, wall_time_us, name, value, staged_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for p in points {
        insert.execute(params![
            sweep_id.as_str(),
            trial_id.as_str(),
            attempt,
            p.step as i64,
            p.wall_time_us,
            p.name,
            p.value,
            now_ms
        ])?;
    }
    conn.prepare_cached("UPDATE trials SET batch_seq = ?2, obj_state = COALESCE(?3, obj_state) WHERE trial_id = ?1")?
        .execute(params![trial_id.as_str(), seq as i64, obj_state])?;
    Ok(())
}

/// Sweeps that have staged points, with their count and the staging time of the oldest.
pub fn staged_sweeps(conn: &Connection) -> Result<Vec<(SweepId, u64, i64)>> {
    let mut stmt =
        conn.prepare_cached("SELECT sweep_id, COUNT(*), MIN(staged_ms) FROM metric_staging GROUP BY sweep_id")?;
    let rows = stmt
        .query_map([], |r| Ok((SweepId(r.get(0)?), r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Reads a sweep's staged points with id > `after_id`, oldest first, at most `limit`.
pub fn staged_points(conn: &Connection, sweep_id: &SweepId, after_id: i64, limit: usize) -> Result<Vec<StagedPoint>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, trial_id, attempt, step, wall_time_us, name, value FROM metric_staging
         WHERE sweep_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![sweep_id.as_str(), after_id, limit as i64], |r| {
            Ok(StagedPoint {
                id: r.get(0)?,
                trial_id: r.get(1)?,
                attempt: r.get::<_, i64>(2)? as u32,
                step: r.get::<_, i64>(3)? as u64,
                wall_time_us: r.get(4)?,
                name: r.get(5)?,
                value: r.get::<_, Option<f64>>(6)?.unwrap_or(f64::NAN),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Records a written part and drops the staged points it holds.
pub fn commit_part(
    conn: &Connection,
    sweep_id: &SweepId,
    file_name: &str,
    first_id: i64,
    last_id: i64,
    rows: u64,
    now_ms: i64,
) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO metric_parts(sweep_id, file_name, first_id, last_id, rows, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![sweep_id.as_str(), file_name, first_id, last_id, rows as i64, now_ms],
    )?;
    conn.execute("DELETE FROM metric_staging WHERE sweep_id = ?1 AND id <= ?2", params![sweep_id.as_str(), last_id])?;
    Ok(())
}

/// Rows written to Parquet parts so far for a sweep.
pub fn part_rows(conn: &Connection, sweep_id: &SweepId) -> Result<u64> {
    let n: i64 = conn.query_row(
        "SELECT COALESCE(SUM(rows), 0) FROM metric_parts WHERE sweep_id = ?1",
        [sweep_id.as_str()],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

/// A stored checkpoint of a trial.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointRow {
    pub trial_id: TrialId,
    pub step: u64,
    pub attempt: u32,
    pub sha256: String,
    pub bytes: u64,
    pub store_key: String,
    pub obj_state: Option<String>,
}

fn checkpoint_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CheckpointRow> {
    Ok(CheckpointRow {
        trial_id: TrialId(r.get(0)?),
        step: r.get::<_, i64>(1)? as u64,
        attempt: r.get::<_, i64>(2)? as u32,
        sha256: r.get(3)?,
        bytes: r.get::<_, i64>(4)? as u64,
        store_key: r.get(5)?,
        obj_state: r.get(6)?,
    })
}

const CHECKPOINT_COLUMNS: &str = "trial_id, step, attempt, sha256, bytes, store_key, obj_state";

pub fn insert_checkpoint(conn: &Connection, ckpt: &CheckpointRow, now_ms: i64) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO checkpoints(trial_id, step, attempt, sha256, bytes, store_key, obj_state, created_ms, bad_reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL)",
        params![
            ckpt.trial_id.as_str(),
            ckpt.step as i64,
            ckpt.attempt,
            ckpt.sha256,
            ckpt.bytes as i64,
            ckpt.store_key,
            ckpt.obj_state,
            now_ms
        ],
    )?;
    Ok(())
}

/// The trial's good checkpoints, newest (highest step) first.
pub fn good_checkpoints(conn: &Connection, trial_id: &TrialId) -> Result<Vec<CheckpointRow>> {
    let sql = format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE trial_id = ?1 AND bad_reason IS NULL ORDER BY step DESC"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([trial_id.as_str()], checkpoint_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

pub fn checkpoint(conn: &Connection, trial_id: &TrialId, step: u64) -> Result<Option<CheckpointRow>> {
    let sql = format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE trial_id = ?1 AND step = ?2");
    Ok(conn.query_row(&sql, params![trial_id.as_str(), step as i64], checkpoint_from_row).optional()?)
}

pub fn mark_checkpoint_bad(conn: &Connection, trial_id: &TrialId, step: u64, reason: &str) -> Result<()> {
    conn.execute(
        "UPDATE checkpoints SET bad_reason = ?3 WHERE trial_id = ?1 AND step = ?2",
        params![trial_id.as_str(), step as i64, reason],
    )?;
    Ok(())
}

/// Drops all but the newest `keep` checkpoints of a trial (bad ones included); returns the store
/// keys of the dropped ones, for the caller to delete.
pub fn prune_checkpoints(conn: &Connection, trial_id: &TrialId, keep: usize) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT step, store_key FROM checkpoints WHERE trial_id = ?1 ORDER BY step DESC LIMIT -1 OFFSET ?2",
    )?;
    let old: Vec<(i64, String)> = stmt
        .query_map(params![trial_id.as_str(), keep as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (step, _) in &old {
        conn.execute("DELETE FROM checkpoints WHERE trial_id = ?1 AND step = ?2", params![trial_id.as_str(), step])?;
    }
    Ok(old.into_iter().map(|(_, key)| key).collect())
}

/// Every checkpoint of a trial, for deletion once it ended.
pub fn drop_checkpoints(conn: &Connection, trial_id: &TrialId) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT store_key FROM checkpoints WHERE trial_id = ?1")?;
    let keys = stmt.query_map([trial_id.as_str()], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
    conn.execute("DELETE FROM checkpoints WHERE trial_id = ?1", [trial_id.as_str()])?;
    Ok(keys)
}

/// Sets what a new attempt resumes from: its checkpoint step (or none) and the objective state
/// that goes with it.
pub fn set_resume_point(
    conn: &Connection,
    trial_id: &TrialId,
    step: Option<u64>,
    obj_state: Option<&str>,
) -> Result<()> {
    conn.prepare_cached("UPDATE trials SET resumed_from = ?2, obj_state = ?3 WHERE trial_id = ?1")?
        .execute(params![trial_id.as_str(), step.map_or(-1, |s| s as i64), obj_state])?;
    Ok(())
}

/// Records that attempts before `below_attempt` are superseded after `after_step` (-1: entirely),
/// and drops their staged points past that step.
pub fn supersede(conn: &Connection, trial: &TrialRow, below_attempt: u32, after_step: i64) -> Result<u64> {
    conn.execute(
        "INSERT OR REPLACE INTO supersessions(trial_id, sweep_id, below_attempt, after_step, applied)
         VALUES (?1, ?2, ?3, ?4, 0)",
        params![trial.trial_id.as_str(), trial.sweep_id.as_str(), below_attempt, after_step],
    )?;
    let dropped = conn.execute(
        "DELETE FROM metric_staging WHERE trial_id = ?1 AND attempt < ?2 AND step > ?3",
        params![trial.trial_id.as_str(), below_attempt, after_step],
    )?;
    Ok(dropped as u64)
}

/// A supersession still to apply to a sweep's Parquet parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Supersession {
    pub trial_id: String,
    pub below_attempt: u32,
    pub after_step: i64,
}

pub fn pending_supersessions(conn: &Connection, sweep_id: &SweepId) -> Result<Vec<Supersession>> {
    let mut stmt = conn.prepare_cached(
        "SELECT trial_id, below_attempt, after_step FROM supersessions WHERE sweep_id = ?1 AND applied = 0",
    )?;
    let rows = stmt
        .query_map([sweep_id.as_str()], |r| {
            Ok(Supersession { trial_id: r.get(0)?, below_attempt: r.get::<_, i64>(1)? as u32, after_step: r.get(2)? })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

pub fn mark_supersessions_applied(conn: &Connection, sweep_id: &SweepId) -> Result<()> {
    conn.execute("UPDATE supersessions SET applied = 1 WHERE sweep_id = ?1", [sweep_id.as_str()])?;
    Ok(())
}

/// Parts of a sweep that hold points of any of `trials`.
pub fn parts_with_trials(conn: &Connection, sweep_id: &SweepId, trials: &[String]) -> Result<Vec<String>> {
    let mut parts = std::collections::BTreeSet::new();
    let mut stmt = conn.prepare_cached("SELECT file_name FROM part_trials WHERE sweep_id = ?1 AND trial_id = ?2")?;
    for trial in trials {
        for name in stmt.query_map(params![sweep_id.as_str(), trial], |r| r.get::<_, String>(0))? {
            parts.insert(name?);
        }
    }
    Ok(parts.into_iter().collect())
}

pub fn record_part_trials(conn: &Connection, sweep_id: &SweepId, file_name: &str, trials: &[String]) -> Result<()> {
    let mut stmt =
        conn.prepare_cached("INSERT OR IGNORE INTO part_trials(sweep_id, file_name, trial_id) VALUES (?1, ?2, ?3)")?;
    for trial in trials {
        stmt.execute(params![sweep_id.as_str(), file_name, trial])?;
    }
    Ok(())
}

/// Updates a rewritten part's row count.
pub fn set_part_rows(conn: &Connection, sweep_id: &SweepId, file_name: &str, rows: u64) -> Result<()> {
    conn.execute(
        "UPDATE metric_parts SET rows = ?3 WHERE sweep_id = ?1 AND file_name = ?2",
        params![sweep_id.as_str(), file_name, rows as i64],
    )?;
    Ok(())
}

/// Records something a user may ask about later (a corrupt checkpoint, a fallback).
pub fn record_event(
    conn: &Connection,
    trial_id: Option<&TrialId>,
    kind: &str,
    message: &str,
    now_ms: i64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO events(at_ms, trial_id, kind, message) VALUES (?1, ?2, ?3, ?4)",
        params![now_ms, trial_id.map(|t| t.as_str()), kind, message],
    )?;
    Ok(())
}

/// Events of every trial of a sweep, oldest first: (trial, "kind: message").
pub fn sweep_events(conn: &Connection, sweep_id: &SweepId) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.trial_id, e.kind || ': ' || e.message FROM events e JOIN trials t USING (trial_id)
         WHERE t.sweep_id = ?1 ORDER BY e.id",
    )?;
    let rows =
        stmt.query_map([sweep_id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// A stored artifact of a trial.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactRow {
    pub trial_id: TrialId,
    pub name: String,
    pub step: u64,
    pub attempt: u32,
    pub path: String,
    pub bytes: u64,
}

/// Records (or replaces: same trial and name) an artifact whose file is already in place.
pub fn upsert_artifact(conn: &Connection, artifact: &ArtifactRow, now_ms: i64) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO artifacts(trial_id, name, step, attempt, path, bytes, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            artifact.trial_id.as_str(),
            artifact.name,
            artifact.step as i64,
            artifact.attempt,
            artifact.path,
            artifact.bytes as i64,
            now_ms
        ],
    )?;
    Ok(())
}

/// Every artifact of a sweep's trials, by trial, in step then name order.
pub fn sweep_artifacts(conn: &Connection, sweep_id: &SweepId) -> Result<Vec<ArtifactRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.trial_id, a.name, a.step, a.attempt, a.path, a.bytes FROM artifacts a JOIN trials t USING (trial_id)
         WHERE t.sweep_id = ?1 ORDER BY a.trial_id, a.step, a.name",
    )?;
    let rows = stmt
        .query_map([sweep_id.as_str()], |r| {
            Ok(ArtifactRow {
                trial_id: TrialId(r.get(0)?),
                name: r.get(1)?,
                step: r.get::<_, i64>(2)? as u64,
                attempt: r.get(3)?,
                path: r.get(4)?,
                bytes: r.get::<_, i64>(5)? as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// After a restart: running leases get until `deadline_ms` for their workers to check in.
pub fn extend_running_leases(conn: &Connection, deadline_ms: i64) -> Result<u64> {
    let n = conn.execute(
        "UPDATE trials SET deadline_ms = MAX(COALESCE(deadline_ms, 0), ?1) WHERE status = 'running'",
        [deadline_ms],
    )?;
    Ok(n as u64)
}

/// Running trials, for `sweep resume`, which hands them all back at start.
pub fn running_trials(conn: &Connection) -> Result<Vec<TrialRow>> {
    let sql = format!("SELECT {TRIAL_COLUMNS} FROM trials WHERE status = 'running'");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([], trial_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(finish_trial).collect()
}

pub fn update_sweep_spec(conn: &Connection, sweep: &SweepRow) -> Result<()> {
    conn.execute(
        "UPDATE sweeps SET spec_yaml = ?2, spec_json = ?3, fingerprint = ?4, total = ?5 WHERE sweep_id = ?1",
        params![sweep.sweep_id.as_str(), sweep.spec_yaml, sweep.spec_json, sweep.fingerprint, sweep.total as i64],
    )?;
    Ok(())
}

pub fn trial_exists(conn: &Connection, trial_id: &TrialId) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM trials WHERE trial_id = ?1")?
        .query_row([trial_id.as_str()], |_| Ok(()))
        .optional()?
        .is_some())
}

pub fn trial_count(conn: &Connection, sweep_id: &SweepId) -> Result<u64> {
    let n: i64 =
        conn.query_row("SELECT COUNT(*) FROM trials WHERE sweep_id = ?1", [sweep_id.as_str()], |r| r.get(0))?;
    Ok(n as u64)
}

pub struct WorkerRow<'a> {
    pub worker_id: &'a WorkerId,
    pub hostname: &'a str,
    pub job_kinds: &'a [String],
    pub devices: &'a [String],
    pub slots: u32,
}

pub fn upsert_worker(conn: &Connection, worker: &WorkerRow<'_>, now_ms: i64) -> Result<()> {
    let kinds = serde_json::to_string(worker.job_kinds).unwrap_or_default();
    let devices = serde_json::to_string(worker.devices).unwrap_or_default();
    conn.execute(
        "INSERT INTO workers(worker_id, hostname, job_kinds, devices, slots, registered_ms, last_seen_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
         ON CONFLICT(worker_id) DO UPDATE SET last_seen_ms = ?6",
        params![worker.worker_id.as_str(), worker.hostname, kinds, devices, worker.slots, now_ms],
    )?;
    Ok(())
}

pub fn touch_worker(conn: &Connection, worker_id: &WorkerId, now_ms: i64) -> Result<bool> {
    let n = conn
        .prepare_cached("UPDATE workers SET last_seen_ms = ?2 WHERE worker_id = ?1")?
        .execute(params![worker_id.as_str(), now_ms])?;
    Ok(n == 1)
}

/// Workers seen since `since_ms`.
pub fn live_workers(conn: &Connection, since_ms: i64) -> Result<u64> {
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM workers WHERE last_seen_ms >= ?1", [since_ms], |r| r.get(0))?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("sweep.db")).unwrap();
        (dir, store)
    }

    fn add_sweep(conn: &Connection, id: &str, trials: u64) {
        let sweep_id = SweepId::from(id);
        insert_sweep(
            conn,
            &SweepRow {
                sweep_id: sweep_id.clone(),
                spec_yaml: String::new(),
                spec_json: "{}".into(),
                fingerprint: "f".into(),
                job_kind: "quadratic".into(),
                total: trials,
                created_ms: 0,
            },
        )
        .unwrap();
        for i in 0..trials {
            let trial_id = TrialId(format!("{id}-{i}"));
            insert_trial(
                conn,
                &NewTrial {
                    trial_id: &trial_id,
                    sweep_id: &sweep_id,
                    ordinal: i,
                    config_id: "c",
                    seed: i,
                    params_json: "{}",
                    job_kind: "quadratic",
                },
            )
            .unwrap();
        }
    }

    #[test]
    fn staging_ids_are_never_reused_after_a_part_takes_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.db");
        let mut store = Store::open(&path).unwrap();
        add_sweep(store.conn(), "s", 1);
        let sweep_id = SweepId::from("s");
        let row = trial(store.conn(), &TrialId::from("s-0")).unwrap().unwrap();
        let points = [NewPoint { step: 1, wall_time_us: 0, name: "loss", value: 1.0 }];
        store.transaction(|tx| stage_batch(tx, &row, 1, &points, None, 0)).unwrap();
        let first = staged_points(store.conn(), &sweep_id, 0, 10).unwrap()[0].id;
        commit_part(store.conn(), &sweep_id, "part-a", first, first, 1, 0).unwrap();
        drop(store);
        let mut store = Store::open(&path).unwrap();
        store.transaction(|tx| stage_batch(tx, &row, 2, &points, None, 0)).unwrap();
        let next = staged_points(store.conn(), &sweep_id, 0, 10).unwrap()[0].id;
        assert!(next > first, "staging id {next} reused after {first}");
    }

    #[test]
    fn epochs_rise_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.db");
        let first = next_epoch(Store::open(&path).unwrap().conn()).unwrap();
        let store = Store::open(&path).unwrap();
        let second = next_epoch(store.conn()).unwrap();
        assert!(second > first, "{second} after {first}");
    }

    #[test]
    fn lease_grant_extend_expire_cycle() {
        let (_dir, mut store) = store();
        add_sweep(store.conn(), "s", 2);
        let trial_id = TrialId::from("s-0");
        let worker = WorkerId::from("w");
        let epoch = store
            .transaction(|tx| {
                let epoch = next_epoch(tx)?;
                assert!(grant_lease(tx, &trial_id, &worker, "cpu", epoch, 1_000, 0)?);
                assert!(!grant_lease(tx, &trial_id, &worker, "cpu", epoch, 1_000, 0)?, "granted twice");
                Ok(epoch)
            })
            .unwrap();
        assert!(extend_lease(store.conn(), &trial_id, epoch, 2_000).unwrap());
        assert!(!extend_lease(store.conn(), &trial_id, LeaseEpoch(epoch.0 + 7), 9_000).unwrap());
        assert!(expired_leases(store.conn(), 1_500).unwrap().is_empty());
        let expired = expired_leases(store.conn(), 2_500).unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].attempt, 1);
        requeue(store.conn(), &trial_id, Some("lease expired")).unwrap();
        let counts = status_counts(store.conn(), &SweepId::from("s")).unwrap();
        assert_eq!(counts, StatusCounts { pending: 2, ..Default::default() });
    }

    #[test]
    fn staged_points_move_to_parts_by_id() {
        let (_dir, mut store) = store();
        add_sweep(store.conn(), "s", 1);
        let sweep_id = SweepId::from("s");
        let trial_id = TrialId::from("s-0");
        let points: Vec<NewPoint<'_>> =
            (0..5).map(|i| NewPoint { step: i, wall_time_us: 0, name: "loss", value: i as f64 }).collect();
        let row = trial(store.conn(), &trial_id).unwrap().unwrap();
        store.transaction(|tx| stage_batch(tx, &row, 1, &points, None, 10)).unwrap();
        let staged = staged_points(store.conn(), &sweep_id, 0, 3).unwrap();
        assert_eq!(staged.len(), 3);
        let last = staged[2].id;
        commit_part(store.conn(), &sweep_id, "part-a", staged[0].id, last, 3, 11).unwrap();
        let rest = staged_points(store.conn(), &sweep_id, 0, 100).unwrap();
        assert_eq!(rest.iter().map(|p| p.step).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(part_rows(store.conn(), &sweep_id).unwrap(), 3);
        assert_eq!(trial(store.conn(), &trial_id).unwrap().unwrap().batch_seq, 1);
    }
}
