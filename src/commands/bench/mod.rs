//! `sweep bench`: throughput numbers, printed as a table (or JSON with `--json`).
//!
//! - `trials`: trivial `quadratic` trials per second through the whole gRPC path: an embedded
//!   coordinator (the very `sweep_coordinator::run` that `sweep run` serves) and N real worker
//!   processes, timed from submit until the sweep is finished. A second row runs the same trials
//!   through the coordinator's core alone, in-process, to show what the network and workers add.
//! - `metrics`: metric points per second from `quadratic` jobs with many steps into Parquet, timed
//!   from submit until the sweep is finished and exported; the core-alone row again beside it.
//! - `qtable`: `cartpole-qtable` episodes (and CartPole steps) per second on one core, the job run
//!   in-process with a counting metric sink and no checkpoints.
//! - `checkpoints`: checkpoint upload/fetch throughput and dead-worker failover time
//!   ([`checkpoints`]).
//! - `compare`: `trials` against Optuna on SQLite and `qtable` against gymnasium + numpy, through
//!   the scripts in `bench/python/` (set up by `bench/setup-python.sh`), with the ratios.
//!
//! Every gRPC bench works in a fresh directory (under `--dir`, else the system temp dir) that is
//! removed afterwards unless `--keep` is given or the bench failed. Before the clock starts, a
//! warm-up sweep runs to its end, so worker start-up and registration are not timed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use serde_json::{json, Value};
use sweep_coordinator::core::{Core, IncomingBatch, IncomingPoint};
use sweep_coordinator::CoordinatorConfig;
use sweep_shared::auth::ConnectOptions;
use sweep_shared::params::{EpsilonSchedule, JobCatalog, JobSchema, ParamValue, Params};
use sweep_shared::proto::{ExportRequest, StatusRequest, SubmitRequest, SweepStatus};
use sweep_worker::jobs::{CancelFlag, JobContext, MetricSink, NoCheckpoints};
use sweep_worker::JobRegistry;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::Notify;

mod checkpoints;
mod dqn;
mod gan;
mod nlp;

use super::client::{connect, refused, SweepClient};
use super::run::spawn_worker;
use crate::signals;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub bench: BenchCommand,
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Trivial trials per second through the whole gRPC path (embedded coordinator, worker processes).
    Trials(TrialsArgs),
    /// Metric points per second from jobs into Parquet, end to end.
    Metrics(MetricsArgs),
    /// Q-table (cartpole-qtable) episodes per second on one core, in-process.
    Qtable(QtableArgs),
    /// `trials` against Optuna and `qtable` against gymnasium + numpy, with the ratios.
    Compare(CompareArgs),
    /// Checkpoint upload and fetch throughput, and the time for a dead worker's trial to move on.
    Checkpoints(checkpoints::CheckpointsArgs),
    /// IMDB model train steps (dense, SimpleRNN, LSTM) on candle against the same PyTorch models.
    Nlp(nlp::NlpArgs),
    /// DCGAN train steps on candle against the same PyTorch step.
    Gan(gan::GanArgs),
    /// DQN (cartpole-dqn) episodes on candle against the same agent in PyTorch.
    Dqn(dqn::DqnArgs),
}

/// Where a gRPC bench keeps its coordinator state, output and worker logs.
#[derive(Args, Clone)]
pub struct WorkspaceArgs {
    /// Directory under which a fresh bench directory is made (default: the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the bench directory (store, Parquet files, worker logs) afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// The local cluster a gRPC bench runs on.
#[derive(Args, Clone)]
pub struct ClusterArgs {
    /// Worker processes to start.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Trials each worker runs at once.
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
    #[command(flatten)]
    pub workspace: WorkspaceArgs,
}

#[derive(Args, Clone)]
pub struct TrialsArgs {
    /// Trials in the timed sweep.
    #[arg(long, default_value_t = 10_000)]
    pub trials: u64,
    /// Skip the core-only row.
    #[arg(long)]
    pub no_core: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args, Clone)]
pub struct MetricsArgs {
    /// Metric points in all (trials x steps).
    #[arg(long, default_value_t = 2_000_000)]
    pub points: u64,
    /// Trials the points are split over.
    #[arg(long, default_value_t = 4)]
    pub trials: u64,
    /// Worker processes to start.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Trials each worker runs at once.
    #[arg(long, default_value_t = 2)]
    pub slots: u32,
    /// Skip the core-only row.
    #[arg(long)]
    pub no_core: bool,
    #[command(flatten)]
    pub workspace: WorkspaceArgs,
}

#[derive(Args, Clone)]
pub struct QtableArgs {
    /// Episodes to train.
    #[arg(long, default_value_t = 10_000)]
    pub episodes: u64,
    /// The trial seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Repeat the run (same seed, same work) until this many seconds have passed; the rates are
    /// over all runs, so a short run is not one noisy sample.
    #[arg(long, default_value_t = 1.0)]
    pub min_seconds: f64,
}

#[derive(Args)]
pub struct CompareArgs {
    /// Python interpreter with optuna, gymnasium and numpy (see bench/setup-python.sh).
    #[arg(long, default_value = "bench/.venv/bin/python")]
    pub python: PathBuf,
    /// Directory of optuna_trivial.py and qtable_gym.py.
    #[arg(long, default_value = "bench/python")]
    pub scripts: PathBuf,
    /// Trivial trials on each side.
    #[arg(long, default_value_t = 1000)]
    pub trials: u64,
    /// Q-table episodes on each side.
    #[arg(long, default_value_t = 2000)]
    pub episodes: u64,
    /// Worker processes of our side.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Trials each of our workers runs at once.
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
    /// Which Optuna SQLite setup to run: Optuna's default (a rollback journal synced to disk at
    /// every commit), WAL with synchronous=NORMAL (the durability of our store), or both.
    #[arg(long, value_enum, default_value_t = OptunaSqlite::Both)]
    pub optuna_sqlite: OptunaSqlite,
    #[command(flatten)]
    pub workspace: WorkspaceArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OptunaSqlite {
    Default,
    Wal,
    Both,
}

impl OptunaSqlite {
    fn journals(self) -> Vec<OptunaJournal> {
        match self {
            OptunaSqlite::Default => vec![OptunaJournal::Default],
            OptunaSqlite::Wal => vec![OptunaJournal::Wal],
            OptunaSqlite::Both => vec![OptunaJournal::Default, OptunaJournal::Wal],
        }
    }
}

/// One Optuna SQLite setup that `compare` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OptunaJournal {
    Default,
    Wal,
}

impl OptunaJournal {
    fn name(self) -> &'static str {
        match self {
            OptunaJournal::Default => "default",
            OptunaJournal::Wal => "wal",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            OptunaJournal::Default => "default (syncs each commit)",
            OptunaJournal::Wal => "WAL, synchronous=NORMAL (as ours)",
        }
    }
}

pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let report = match args.bench {
        BenchCommand::Trials(bench) => trials(&bench).await?,
        BenchCommand::Metrics(bench) => metrics(&bench).await?,
        BenchCommand::Qtable(bench) => qtable(&bench).await?.report(),
        BenchCommand::Compare(bench) => compare(&bench).await?,
        BenchCommand::Checkpoints(bench) => checkpoints::checkpoints(&bench).await?,
        BenchCommand::Nlp(bench) => nlp::nlp(&bench).await?,
        BenchCommand::Gan(bench) => gan::gan(&bench).await?,
        BenchCommand::Dqn(bench) => dqn::dqn(&bench).await?,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        println!("{}", report.table());
        for note in &report.notes {
            println!("{note}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------- report

/// One timed run: `count` things of kind `unit` in `seconds`.
#[derive(Debug, Clone)]
struct Measurement {
    name: String,
    unit: &'static str,
    count: u64,
    seconds: f64,
}

impl Measurement {
    fn new(name: impl Into<String>, unit: &'static str, count: u64, seconds: f64) -> Self {
        Measurement { name: name.into(), unit, count, seconds }
    }

    fn per_second(&self) -> f64 {
        self.count as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }
}

/// How many times the Python reference's rate ours should reach.
const TARGET_RATIO: f64 = 100.0;

/// Ours against the Python reference, for one rate.
#[derive(Debug, Clone)]
struct Comparison {
    name: String,
    unit: &'static str,
    ours: f64,
    python: f64,
    /// The ratio ours / python this comparison should reach.
    goal: f64,
}

impl Comparison {
    fn ratio(&self) -> f64 {
        self.ours / self.python.max(f64::MIN_POSITIVE)
    }
}

/// What a bench prints: measurements, comparisons, or both, and notes under the table.
#[derive(Debug, Default)]
struct Report {
    bench: &'static str,
    measurements: Vec<Measurement>,
    comparisons: Vec<Comparison>,
    notes: Vec<String>,
}

impl Report {
    fn table(&self) -> Table {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        if self.comparisons.is_empty() {
            t.set_header(vec!["measurement", "count", "seconds", "rate"]);
            for m in &self.measurements {
                t.add_row(vec![
                    Cell::new(&m.name),
                    Cell::new(format!("{} {}", m.count, m.unit)).set_alignment(CellAlignment::Right),
                    Cell::new(format!("{:.3}", m.seconds)).set_alignment(CellAlignment::Right),
                    Cell::new(format!("{} {}/s", rate(m.per_second()), m.unit)).set_alignment(CellAlignment::Right),
                ]);
            }
        } else {
            t.set_header(vec!["comparison", "ours", "python", "ours / python", "goal"]);
            for c in &self.comparisons {
                t.add_row(vec![
                    Cell::new(&c.name),
                    Cell::new(format!("{} {}/s", rate(c.ours), c.unit)).set_alignment(CellAlignment::Right),
                    Cell::new(format!("{} {}/s", rate(c.python), c.unit)).set_alignment(CellAlignment::Right),
                    Cell::new(format!("{:.1}x", c.ratio())).set_alignment(CellAlignment::Right),
                    Cell::new(format!("{}x {}", c.goal, if c.ratio() >= c.goal { "met" } else { "short" })),
                ]);
            }
        }
        t
    }

    fn json(&self) -> Value {
        let measurements: Vec<Value> = self
            .measurements
            .iter()
            .map(|m| {
                json!({"name": m.name, "unit": m.unit, "count": m.count, "seconds": m.seconds,
                       "per_second": m.per_second()})
            })
            .collect();
        let comparisons: Vec<Value> = self
            .comparisons
            .iter()
            .map(|c| {
                json!({"name": c.name, "unit": c.unit, "ours": c.ours, "python": c.python, "ratio": c.ratio(),
                       "goal": c.goal})
            })
            .collect();
        json!({"bench": self.bench, "measurements": measurements, "comparisons": comparisons, "notes": self.notes})
    }
}

/// A rate for people: thousands separated, no decimals above 100.
fn rate(x: f64) -> String {
    if x >= 100.0 {
        let digits = format!("{:.0}", x);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{x:.1}")
    }
}

// ---------------------------------------------------------------------------------------- trials

/// The timed sweep of `bench trials`: `trials` random (x, y) points of `quadratic`, one step each.
fn trials_spec(name: &str, trials: u64) -> String {
    metrics_spec(name, trials, 1)
}

/// The timed sweep of `bench metrics`: `trials` trials of `steps` loss points, no checkpoints.
fn metrics_spec(name: &str, trials: u64, steps: u64) -> String {
    format!(
        "name: {name}
job:
  kind: quadratic
  steps: {steps}
  checkpoint_every: {MAX_QUADRATIC_STEPS}
method: random
max_trials: {trials}
metric:
  name: loss
  goal: minimize
parameters:
  x: {{distribution: uniform, min: -1.0, max: 1.0}}
  y: {{distribution: uniform, min: -1.0, max: 1.0}}
"
    )
}

/// The `quadratic` job's limit on `steps` (and `checkpoint_every`).
const MAX_QUADRATIC_STEPS: u64 = 1_000_000;

async fn trials(args: &TrialsArgs) -> anyhow::Result<Report> {
    ensure!(args.trials > 0, "--trials must be at least 1");
    let cluster = &args.cluster;
    let workspace = Workspace::create(&cluster.workspace, "trials")?;
    let outcome = async {
        let grpc = grpc_trials(&workspace, args.trials, cluster.workers, cluster.slots).await?;
        if args.no_core {
            return Ok((grpc, None));
        }
        let core = core_only(&workspace.path.join("core"), &trials_spec("bench-trials-core", args.trials), 1).await?;
        ensure!(core.completed == args.trials, "core-only run completed {} of {} trials", core.completed, args.trials);
        Ok((grpc, Some(core)))
    }
    .await;
    let (grpc, core) = workspace.finish(outcome)?;
    let mut report = Report {
        bench: "trials",
        measurements: vec![grpc],
        comparisons: Vec::new(),
        notes: vec!["trivial quadratic trials (1 metric point each); gRPC row timed from submit until status says \
                     finished (polled every 2% of the time so far); core row in-process, no gRPC"
            .to_string()],
    };
    if let Some(core) = core {
        report.measurements.push(Measurement::new(
            "core only: submit, acquire 1, 1-point batch, complete",
            "trials",
            args.trials,
            core.seconds,
        ));
        report.notes.push(core.describe());
    }
    Ok(report)
}

/// Runs `trials` trivial trials through a local cluster; checks that every one completed.
async fn grpc_trials(workspace: &Workspace, trials: u64, workers: u32, slots: u32) -> anyhow::Result<Measurement> {
    let cluster = LocalCluster::start(workspace, workers, slots).await?;
    let outcome = async {
        let mut client = cluster.connect().await?;
        cluster.warm_up(&mut client).await?;
        let run = cluster.run_sweep(&mut client, &trials_spec("bench-trials", trials), false).await?;
        if run.status.completed != trials || run.status.failed > 0 {
            bail!(
                "the trials bench completed {} of {} trials ({} failed, {} cancelled); worker logs in {}",
                run.status.completed,
                trials,
                run.status.failed,
                run.status.cancelled,
                cluster.log_dir.display()
            );
        }
        Ok(Measurement::new(
            format!("gRPC path: {workers} worker processes x {slots} slots"),
            "trials",
            trials,
            run.seconds,
        ))
    }
    .await;
    cluster.stop().await?;
    outcome
}

// --------------------------------------------------------------------------------------- metrics

async fn metrics(args: &MetricsArgs) -> anyhow::Result<Report> {
    ensure!(args.trials > 0 && args.points > 0, "--points and --trials must be at least 1");
    let steps = args.points.div_ceil(args.trials);
    ensure!(
        steps <= MAX_QUADRATIC_STEPS,
        "{} points over {} trials is {steps} steps per trial; the quadratic job takes at most {MAX_QUADRATIC_STEPS} (raise --trials)",
        args.points,
        args.trials
    );
    let points = steps * args.trials;
    let workspace = Workspace::create(&args.workspace, "metrics")?;
    let outcome = async {
        let cluster = LocalCluster::start(&workspace, args.workers, args.slots).await?;
        let grpc = async {
            let mut client = cluster.connect().await?;
            cluster.warm_up(&mut client).await?;
            let spec = metrics_spec("bench-metrics", args.trials, steps);
            let run = cluster.run_sweep(&mut client, &spec, true).await?;
            let rows = run.metric_rows.unwrap_or(0);
            if run.status.completed != args.trials || rows != points {
                bail!(
                    "the metrics bench completed {} of {} trials and exported {rows} of {points} points; worker logs in {}",
                    run.status.completed,
                    args.trials,
                    cluster.log_dir.display()
                );
            }
            Ok(run.seconds)
        }
        .await;
        cluster.stop().await?;
        let grpc = grpc?;
        if args.no_core {
            return Ok((grpc, None));
        }
        let core = core_only(&workspace.path.join("core"), &metrics_spec("bench-metrics-core", args.trials, steps), steps)
            .await?;
        ensure!(core.metric_rows == points, "core-only run exported {} of {points} points", core.metric_rows);
        Ok((grpc, Some(core)))
    }
    .await;
    let (grpc, core) = workspace.finish(outcome)?;
    let mut report = Report {
        bench: "metrics",
        measurements: vec![Measurement::new(
            format!(
                "gRPC path: {} trials x {steps} steps, {} workers x {} slots",
                args.trials, args.workers, args.slots
            ),
            "points",
            points,
            grpc,
        )],
        comparisons: Vec::new(),
        notes: vec![
            "timed from submit until finished and exported; Parquet metric rows checked against trials x steps".into(),
        ],
    };
    if let Some(core) = core {
        report.measurements.push(Measurement::new(
            format!("core only: {WORKER_BATCH_POINTS}-point batches, no gRPC"),
            "points",
            points,
            core.seconds,
        ));
        report.notes.push(core.describe());
    }
    Ok(report)
}

// ------------------------------------------------------------------------------------- core only

/// The batch size the worker sends by default (`sweep worker --batch-points`).
const WORKER_BATCH_POINTS: usize = 1024;

struct CoreRun {
    seconds: f64,
    completed: u64,
    /// Metric batches appended.
    batches: u64,
    metric_rows: u64,
    /// Time spent in each core call, summed over the run: where a trial's cost goes.
    phases: CorePhases,
}

#[derive(Debug, Default)]
struct CorePhases {
    submit: Duration,
    acquire: Duration,
    append_metrics: Duration,
    complete: Duration,
    export: Duration,
}

impl CoreRun {
    /// One line: the mean of each call (complete includes the sweep's final Parquet flush, when
    /// that is due at the last completion), and the submit and export totals.
    fn describe(&self) -> String {
        let mean = |total: Duration, calls: u64| total / u32::try_from(calls.max(1)).unwrap_or(u32::MAX);
        format!(
            "core only, mean per call: acquire {:.1?}, append_metrics {:.1?} ({} batches), complete {:.1?}; \
             in all: submit {:.1?}, export {:.1?}",
            mean(self.phases.acquire, self.completed),
            mean(self.phases.append_metrics, self.batches),
            self.batches,
            mean(self.phases.complete, self.completed),
            self.phases.submit,
            self.phases.export
        )
    }
}

/// Runs a `quadratic` sweep through the coordinator's core alone: submit, then per trial one
/// acquire of one lease, `steps` loss points in batches of [`WORKER_BATCH_POINTS`], complete; then
/// export. What one worker slot asks of the core, without gRPC, processes or a job.
async fn core_only(dir: &Path, spec_yaml: &str, steps: u64) -> anyhow::Result<CoreRun> {
    let config = CoordinatorConfig::new(dir.join("state"), dir.join("out"));
    let spec_yaml = spec_yaml.to_string();
    tokio::task::spawn_blocking(move || -> anyhow::Result<CoreRun> {
        let catalog: Arc<dyn JobCatalog> = Arc::new(JobRegistry::builtin());
        let mut core = Core::open(config, catalog, Arc::new(Notify::new())).context("opening the core")?;
        let worker = core.register("bench", vec!["quadratic".into()], vec!["cpu".into()], 1)?;
        let mut phases = CorePhases::default();
        let started = Instant::now();
        let sweep_id = timed(&mut phases.submit, || core.submit(&spec_yaml, "bench", false))?.sweep_id;
        let (mut completed, mut batches) = (0, 0);
        loop {
            let leases = timed(&mut phases.acquire, || core.acquire(&worker, 1))?;
            if leases.is_empty() {
                break;
            }
            for lease in leases {
                let trial = lease.trial;
                let mut seq = 0;
                let mut step = 0;
                while step < steps {
                    let batch_end = (step + WORKER_BATCH_POINTS as u64).min(steps);
                    let wall_time_us = now_us();
                    let points = (step + 1..=batch_end)
                        .map(|s| IncomingPoint { step: s, name: "loss".into(), value: 0.5, wall_time_us })
                        .collect();
                    seq += 1;
                    let batch = IncomingBatch {
                        trial_id: trial.trial_id.clone(),
                        epoch: trial.epoch,
                        attempt: trial.attempt,
                        seq,
                        points,
                    };
                    timed(&mut phases.append_metrics, || core.append_metrics(batch))?;
                    step = batch_end;
                }
                timed(&mut phases.complete, || core.complete(&trial.trial_id, trial.epoch, seq, 0.0, Vec::new()))?;
                completed += 1;
                batches += seq;
            }
        }
        let exported = timed(&mut phases.export, || core.export(&sweep_id))?;
        Ok(CoreRun {
            seconds: started.elapsed().as_secs_f64(),
            completed,
            batches,
            metric_rows: exported.metric_rows,
            phases,
        })
    })
    .await
    .context("core-only bench thread")?
}

/// Runs `f`, adding its duration to `total`.
fn timed<T>(total: &mut Duration, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    *total += started.elapsed();
    out
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------- qtable

/// What in-process `cartpole-qtable` runs of one configuration did, summed over the runs.
#[derive(Debug, Clone, Default)]
struct QtableRun {
    runs: u64,
    /// Episodes of each run.
    episodes_per_run: u64,
    /// CartPole steps of each run (every run repeats the first exactly).
    env_steps_per_run: u64,
    seconds: f64,
    /// `mear` of the last full window, to see that the run learned like the Python one.
    mear_last_window: Option<f64>,
}

impl QtableRun {
    fn episodes_per_second(&self) -> f64 {
        (self.runs * self.episodes_per_run) as f64 / self.seconds
    }

    fn env_steps_per_second(&self) -> f64 {
        (self.runs * self.env_steps_per_run) as f64 / self.seconds
    }
}

impl QtableRun {
    fn report(&self) -> Report {
        Report {
            bench: "qtable",
            measurements: vec![
                Measurement::new(
                    "cartpole-qtable episodes, one core",
                    "episodes",
                    self.runs * self.episodes_per_run,
                    self.seconds,
                ),
                Measurement::new(
                    "CartPole env steps, one core",
                    "steps",
                    self.runs * self.env_steps_per_run,
                    self.seconds,
                ),
            ],
            comparisons: Vec::new(),
            notes: vec![format!(
                "{} runs of {} episodes ({} env steps each), seed fixed; config: {QTABLE_CONFIG_TEXT}; \
                 mear of the last window: {}",
                self.runs,
                self.episodes_per_run,
                self.env_steps_per_run,
                self.mear_last_window.map_or("-".into(), |m| format!("{m:.1}"))
            )],
        }
    }
}

/// The known-good configuration, as `bench/python/qtable_gym.py` runs it by default.
const QTABLE_CONFIG_TEXT: &str =
    "lr 0.1, gamma 0.99, epsilon exponential(1.0 * 0.999^n, min 0.01), tie_break random, 10 bins";

fn qtable_overrides(episodes: u64) -> anyhow::Result<Vec<(&'static str, ParamValue)>> {
    let episodes = i64::try_from(episodes).context("--episodes is too large")?;
    Ok(vec![
        ("episodes", ParamValue::Int(episodes)),
        ("discrete_steps", ParamValue::Int(10)),
        ("lr", ParamValue::Float(0.1)),
        ("gamma", ParamValue::Float(0.99)),
        ("epsilon", ParamValue::Schedule(EpsilonSchedule::Exponential { start: 1.0, decay: 0.999, min: 0.01 })),
        ("tie_break", ParamValue::Str("random".into())),
    ])
}

/// A job's params: the schema's defaults with `overrides` on top, each admitted by the schema.
fn params_with(schema: &JobSchema, overrides: &[(&str, ParamValue)]) -> anyhow::Result<Params> {
    let mut params: BTreeMap<String, ParamValue> = BTreeMap::new();
    for spec in &schema.params {
        if let Some(default) = &spec.default {
            params.insert(spec.name.to_string(), default.clone());
        }
    }
    for (name, value) in overrides {
        let spec = schema.param(name).with_context(|| format!("{} has no parameter '{name}'", schema.kind))?;
        let value = spec.kind.admit(value.clone()).map_err(|reason| anyhow::anyhow!("{name}: {reason}"))?;
        params.insert(name.to_string(), value);
    }
    if let Some(missing) = schema.params.iter().find(|spec| !params.contains_key(spec.name)) {
        bail!("{}: parameter '{}' has no default and no value", schema.kind, missing.name);
    }
    Ok(Params(params))
}

/// Counts what a job reports instead of sending it anywhere.
#[derive(Debug, Default)]
struct CountingSink {
    points: u64,
    /// Sum of `reward` points: CartPole pays 1 per step, so this is the env steps taken.
    reward_sum: f64,
    last_mear: Option<f64>,
}

impl MetricSink for CountingSink {
    fn report(&mut self, _step: u64, name: &str, value: f64) {
        self.points += 1;
        match name {
            "reward" => self.reward_sum += value,
            "mear" => self.last_mear = Some(value),
            _ => {}
        }
    }
}

async fn qtable(args: &QtableArgs) -> anyhow::Result<QtableRun> {
    ensure!(args.episodes > 0, "--episodes must be at least 1");
    ensure!(args.min_seconds.is_finite() && args.min_seconds >= 0.0, "--min-seconds must be a number of seconds");
    let (episodes, seed, min_seconds) = (args.episodes, args.seed, args.min_seconds);
    tokio::task::spawn_blocking(move || {
        let mut total = QtableRun { episodes_per_run: episodes, ..QtableRun::default() };
        while total.runs == 0 || total.seconds < min_seconds {
            let run = run_qtable(episodes, seed)?;
            total.runs += 1;
            total.env_steps_per_run = run.env_steps_per_run;
            total.seconds += run.seconds;
            total.mear_last_window = run.mear_last_window;
        }
        Ok(total)
    })
    .await
    .context("Q-table bench thread")?
}

/// Builds `cartpole-qtable` through the registry like a worker does, and runs it on this thread.
fn run_qtable(episodes: u64, seed: u64) -> anyhow::Result<QtableRun> {
    let registry = JobRegistry::builtin();
    let factory = registry.factory("cartpole-qtable").context("this build has no cartpole-qtable job")?;
    let params = params_with(factory.schema(), &qtable_overrides(episodes)?)?;
    let mut job = factory.create(&params, seed).context("building the Q-table job")?;
    let mut sink = CountingSink::default();
    let mut ctx =
        JobContext { seed, metrics: &mut sink, checkpoints: &mut NoCheckpoints, cancel: CancelFlag::default() };
    let started = Instant::now();
    job.run(&mut ctx).context("running the Q-table job")?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(QtableRun {
        runs: 1,
        episodes_per_run: episodes,
        env_steps_per_run: sink.reward_sum as u64,
        seconds,
        mear_last_window: sink.last_mear,
    })
}

// --------------------------------------------------------------------------------------- compare

async fn compare(args: &CompareArgs) -> anyhow::Result<Report> {
    for (path, what) in [(&args.python, "python interpreter"), (&args.scripts, "scripts directory")] {
        ensure!(
            path.exists(),
            "{what} {} not found; run `bash bench/setup-python.sh` from the repository root, or pass --python/--scripts",
            path.display()
        );
    }
    ensure!(args.trials > 0 && args.episodes > 0, "--trials and --episodes must be at least 1");

    let workspace = Workspace::create(&args.workspace, "compare")?;
    let outcome = async {
        let ours_trials = grpc_trials(&workspace, args.trials, args.workers, args.slots).await?;
        let mut optuna_runs = Vec::new();
        for journal in args.optuna_sqlite.journals() {
            let db = absolute(&workspace.path.join(format!("optuna-{}.db", journal.name())))?;
            let mut script_args = vec![
                "--trials".into(),
                args.trials.to_string(),
                "--storage".into(),
                format!("sqlite:///{}", db.display()),
            ];
            if journal == OptunaJournal::Wal {
                script_args.push("--sqlite-wal".into());
            }
            let optuna = run_python(&args.python, &args.scripts.join("optuna_trivial.py"), &script_args).await?;
            let completed = json_u64(&optuna, "trials")?;
            ensure!(completed == args.trials, "Optuna completed {completed} of {} trials", args.trials);
            optuna_runs.push((journal, optuna));
        }
        Ok((ours_trials, optuna_runs))
    }
    .await;
    let (ours_trials, optuna_runs) = workspace.finish(outcome)?;

    let ours_qtable = qtable(&QtableArgs { episodes: args.episodes, seed: 0, min_seconds: 1.0 }).await?;
    let gym = run_python(
        &args.python,
        &args.scripts.join("qtable_gym.py"),
        &["--episodes".into(), args.episodes.to_string()],
    )
    .await?;
    let gym_seconds = json_f64(&gym, "seconds")?;
    let gym_steps = json_u64(&gym, "env_steps")?;

    let mut comparisons = Vec::new();
    let mut notes = Vec::new();
    for (journal, optuna) in &optuna_runs {
        comparisons.push(Comparison {
            name: format!(
                "trivial trials: gRPC, {}x{} slots vs Optuna n_jobs=1, SQLite {}",
                args.workers,
                args.slots,
                journal.describe()
            ),
            unit: "trials",
            ours: ours_trials.per_second(),
            python: json_f64(optuna, "trials_per_sec")?,
            goal: TARGET_RATIO,
        });
        notes.push(format!(
            "{} trials each; ours {:.3} s from submit to finished, Optuna ({}) {:.3} s in study.optimize",
            args.trials,
            ours_trials.seconds,
            journal.name(),
            json_f64(optuna, "seconds")?
        ));
    }
    comparisons.extend([
        Comparison {
            name: "Q-table episodes: Rust job vs gymnasium + numpy".into(),
            unit: "episodes",
            ours: ours_qtable.episodes_per_second(),
            python: json_f64(&gym, "episodes_per_sec")?,
            goal: TARGET_RATIO,
        },
        Comparison {
            name: "Q-table env steps: Rust job vs gymnasium + numpy".into(),
            unit: "steps",
            ours: ours_qtable.env_steps_per_second(),
            python: gym_steps as f64 / gym_seconds,
            goal: TARGET_RATIO,
        },
    ]);
    notes.push(format!(
        "{} episodes each ({QTABLE_CONFIG_TEXT}); env steps ours {} vs python {gym_steps}; mear of the last window \
             ours {} vs python {:.1}",
        args.episodes,
        ours_qtable.env_steps_per_run,
        ours_qtable.mear_last_window.map_or("-".into(), |m| format!("{m:.1}")),
        json_f64(&gym, "mear_last_window")?
    ));
    Ok(Report { bench: "compare", measurements: Vec::new(), comparisons, notes })
}

/// Runs a bench script and parses the JSON object on its last line of output.
async fn run_python(python: &Path, script: &Path, script_args: &[String]) -> anyhow::Result<Value> {
    let output = Command::new(python)
        .arg(script)
        .args(script_args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "{} {} failed ({}):\n{}",
            python.display(),
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("{} printed no JSON line: {line:?}", script.display()))
}

/// Median and fastest milliseconds of `steps` calls of `step`, after `warmup` untimed ones.
fn median_step_ms(
    warmup: usize,
    steps: usize,
    mut step: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    ensure!(steps > 0, "--steps must be at least 1");
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let start = Instant::now();
        step()?;
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0]))
}

/// Runs a PyTorch bench script with `--flag value` pairs; its interpreter comes from
/// `bench/setup-python.sh` (or `--python`), and a missing one says how to get it.
async fn run_torch_script(python: &Path, script: &Path, flags: &[(&str, String)]) -> anyhow::Result<Value> {
    ensure!(
        python.exists(),
        "python interpreter {} not found; run `bash bench/setup-python.sh` (it installs torch), pass --python, or --no-python",
        python.display()
    );
    let args: Vec<String> = flags.iter().flat_map(|(k, v)| [k.to_string(), v.clone()]).collect();
    run_python(python, script, &args).await
}

fn json_f64(value: &Value, key: &str) -> anyhow::Result<f64> {
    value.get(key).and_then(Value::as_f64).with_context(|| format!("no number '{key}' in {value}"))
}

fn json_u64(value: &Value, key: &str) -> anyhow::Result<u64> {
    value.get(key).and_then(Value::as_u64).with_context(|| format!("no count '{key}' in {value}"))
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) })
}

// ------------------------------------------------------------------------------- local cluster

/// How often a bench asks whether its sweep has finished: a fiftieth of the time so far, within
/// these bounds, so the timing is within 2% (or 5 ms) and the status calls (each a query over the
/// sweep's trials on the core's thread) cost the run little.
const STATUS_POLL_MIN: Duration = Duration::from_millis(5);
const STATUS_POLL_MAX: Duration = Duration::from_millis(100);
/// Longest a bench waits for one sweep.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(1800);

/// A fresh directory for one bench, removed at the end unless kept.
struct Workspace {
    path: PathBuf,
    keep: bool,
}

impl Workspace {
    fn create(args: &WorkspaceArgs, bench: &str) -> anyhow::Result<Self> {
        let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let path = absolute(&parent.join(format!("sweep-bench-{bench}-{}-{stamp}", std::process::id())))?;
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Workspace { path, keep: args.keep })
    }

    /// Removes the directory after a success (unless kept); after a failure, keeps it and says so.
    fn finish<T>(self, outcome: anyhow::Result<T>) -> anyhow::Result<T> {
        match outcome {
            Ok(value) => {
                if self.keep {
                    eprintln!("bench files kept in {}", self.path.display());
                } else if let Err(err) = std::fs::remove_dir_all(&self.path) {
                    eprintln!("could not remove {}: {err}", self.path.display());
                }
                Ok(value)
            }
            Err(err) => Err(err.context(format!("bench files kept in {}", self.path.display()))),
        }
    }
}

/// An embedded coordinator on a free loopback port and N `sweep worker` processes.
struct LocalCluster {
    url: String,
    log_dir: PathBuf,
    workers: Vec<Child>,
    /// Sending (or dropping) stops the coordinator, which then flushes and returns.
    stop_server: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<sweep_coordinator::Result<()>>,
    /// Warm-up trials: one per slot, so every worker has run one before the clock starts.
    slots_total: u64,
}

/// A timed sweep's end.
struct SweepRun {
    seconds: f64,
    status: SweepStatus,
    metric_rows: Option<u64>,
}

impl LocalCluster {
    async fn start(workspace: &Workspace, workers: u32, slots: u32) -> anyhow::Result<Self> {
        ensure!(workers > 0 && slots > 0, "--workers and --slots must be at least 1");
        let state_dir = workspace.path.join("state");
        let log_dir = workspace.path.join("logs");
        std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.context("binding 127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let config = CoordinatorConfig::new(state_dir.clone(), workspace.path.join("out"));
        let catalog: Arc<dyn JobCatalog> = Arc::new(JobRegistry::builtin());
        let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(sweep_coordinator::run(listener, config, catalog, async move {
            let _ = server_stopped.await;
        }));
        let mut children = Vec::new();
        for index in 0..workers {
            // Per-trial info lines would be part of what is timed.
            let options = ConnectOptions { url: url.clone(), ..ConnectOptions::default() };
            children.push(spawn_worker(&options, index, slots, &log_dir, "warn", &[])?);
        }
        Ok(LocalCluster {
            url,
            log_dir,
            workers: children,
            stop_server,
            server,
            slots_total: u64::from(workers) * u64::from(slots),
        })
    }

    /// A client of the embedded coordinator (no token, no TLS: it listens on loopback only).
    async fn connect(&self) -> anyhow::Result<SweepClient> {
        connect(&ConnectOptions { url: self.url.clone(), ..ConnectOptions::default() }).await
    }

    /// Runs a small sweep to its end: the workers are up, registered and connected afterwards.
    async fn warm_up(&self, client: &mut SweepClient) -> anyhow::Result<()> {
        let run = self.run_sweep(client, &trials_spec("bench-warm-up", self.slots_total * 4), false).await?;
        ensure!(
            run.status.failed == 0,
            "{} warm-up trials failed; logs in {}",
            run.status.failed,
            self.log_dir.display()
        );
        Ok(())
    }

    /// Submits `spec_yaml` and waits until the sweep finished (and, with `export`, is exported);
    /// the seconds count from the submit call.
    async fn run_sweep(&self, client: &mut SweepClient, spec_yaml: &str, export: bool) -> anyhow::Result<SweepRun> {
        let started = Instant::now();
        let submitted = client
            .submit(SubmitRequest { spec_yaml: spec_yaml.to_string(), source_name: "bench".into(), extend: false })
            .await
            .map_err(refused)?
            .into_inner();
        ensure!(!submitted.existing, "sweep {} already existed in a fresh store", submitted.sweep_id);
        let sweep_id = submitted.sweep_id;
        let status = loop {
            let status =
                client.status(StatusRequest { sweep_id: sweep_id.clone() }).await.map_err(refused)?.into_inner();
            if status.finished {
                break status;
            }
            if started.elapsed() > SWEEP_TIMEOUT {
                bail!(
                    "sweep {sweep_id} not finished after {SWEEP_TIMEOUT:?}: {} of {} done; logs in {}",
                    status.completed,
                    status.total,
                    self.log_dir.display()
                );
            }
            self.check_workers()?;
            tokio::time::sleep((started.elapsed() / 50).clamp(STATUS_POLL_MIN, STATUS_POLL_MAX)).await;
        };
        let metric_rows = if export {
            let exported = client.export(ExportRequest { sweep_id }).await.map_err(refused)?.into_inner();
            Some(exported.metric_rows)
        } else {
            None
        };
        Ok(SweepRun { seconds: started.elapsed().as_secs_f64(), status, metric_rows })
    }

    /// Fails once any worker process has exited: the numbers would not mean what they say.
    fn check_workers(&self) -> anyhow::Result<()> {
        for (index, worker) in self.workers.iter().enumerate() {
            if let Some(pid) = worker.id() {
                // SAFETY: kill(2) with signal 0 only checks that the process exists.
                let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
                if !alive {
                    bail!("worker {index} exited; see {}", self.log_dir.join(format!("worker-{index}.log")).display());
                }
            }
        }
        Ok(())
    }

    /// Stops the workers (SIGTERM, then kill after a grace period) and then the coordinator.
    async fn stop(mut self) -> anyhow::Result<()> {
        for worker in &self.workers {
            signals::terminate(worker);
        }
        for worker in &mut self.workers {
            if tokio::time::timeout(Duration::from_secs(10), worker.wait()).await.is_err() {
                let _ = worker.start_kill();
                let _ = worker.wait().await;
            }
        }
        let _ = self.stop_server.send(());
        self.server.await.context("coordinator task")?.context("coordinator")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_specs_expand_to_the_asked_trials() {
        let registry = JobRegistry::builtin();
        for (text, trials) in [(trials_spec("t", 37), 37), (metrics_spec("m", 3, 1000), 3)] {
            let spec = sweep_shared::spec::parse_spec(&text, "bench", &registry).unwrap();
            let schema = registry.schema(&spec.job_kind).unwrap();
            assert_eq!(sweep_shared::space::expand(&spec, schema).len(), trials, "{text}");
        }
    }

    #[test]
    fn params_take_defaults_and_refuse_bad_overrides() {
        let registry = JobRegistry::builtin();
        let schema = registry.schema("cartpole-qtable").unwrap();
        let params = params_with(schema, &qtable_overrides(5).unwrap()).unwrap();
        assert_eq!(params.f64("lr").unwrap(), 0.1);
        assert_eq!(params.u64("report_every").unwrap(), 1000, "a default");
        let err = params_with(schema, &[("lr", ParamValue::Float(2.0))]).unwrap_err();
        assert!(err.to_string().contains("lr"), "{err}");
        assert!(params_with(schema, &[("nope", ParamValue::Int(1))]).is_err());
    }

    #[test]
    fn qtable_run_counts_episodes_and_steps() {
        let run = run_qtable(20, 1).unwrap();
        assert_eq!(run.episodes_per_run, 20);
        let steps = run.env_steps_per_run;
        assert!(steps >= 20 * 8, "a CartPole episode lasts at least 8 steps: {steps}");
        assert!(run.mear_last_window.is_none(), "no 1,000-episode window closed");
    }

    #[test]
    fn rates_read_well() {
        assert_eq!(rate(1234567.8), "1,234,568");
        assert_eq!(rate(100.0), "100");
        assert_eq!(rate(51.04), "51.0");
    }

    #[tokio::test]
    async fn core_only_runs_every_trial_and_point() {
        let dir = tempfile::tempdir().unwrap();
        let run = core_only(dir.path(), &metrics_spec("m", 3, 2500), 2500).await.unwrap();
        assert_eq!(run.completed, 3);
        assert_eq!(run.metric_rows, 7500);
    }
}
