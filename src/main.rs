//! `sweep`: the one binary. Parses flags, sets up logging, and hands off to a command module.
//!
//! # Layout
//! - [`commands::run`]: `sweep run SPEC` and `sweep resume SWEEP`: embedded coordinator + local
//!   worker processes.
//! - [`commands::serve`]: `sweep coordinator`, `sweep worker`: the long-running processes.
//! - [`commands::client`]: `submit`, `status`, `best`, `cancel`, `export`: calls to a coordinator.
//! - [`commands::bench`]: `sweep bench`: throughput measurements printed as a table.
//! - [`commands::embed`]: `sweep embed TEXT`: the sentence encoder's tokens and vectors.
//! - [`commands::report`]: `sweep report SWEEP`: flags and output of [`report`].
//! - [`display`]: tables for people.
//! - [`report`]: a finished sweep's Parquet results as an HTML page with PNG figures.

mod commands;
mod display;
mod report;
mod signals;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "sweep",
    version,
    about = "Distributed hyperparameter sweeps: a coordinator hands trials to workers; metrics land in Parquet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a sweep on this machine: an embedded coordinator plus N local worker processes.
    Run(commands::run::RunArgs),
    /// Continue a stopped sweep from its state dir: interrupted trials resume from their checkpoints.
    Resume(commands::run::ResumeArgs),
    /// Serve a coordinator that workers on any machine can join.
    Coordinator(commands::serve::CoordinatorArgs),
    /// Run a worker agent that takes trials from a coordinator.
    Worker(commands::serve::WorkerArgs),
    /// Submit a spec to a running coordinator.
    Submit(commands::client::SubmitArgs),
    /// Show the progress of one sweep, or list all sweeps.
    Status(commands::client::StatusArgs),
    /// Rank a sweep's configurations by their objective over seeds.
    Best(commands::client::BestArgs),
    /// Cancel a sweep's unfinished trials.
    Cancel(commands::client::CancelArgs),
    /// Write a sweep's Parquet files now (and optionally CSV copies).
    Export(commands::client::ExportArgs),
    /// Check a spec file without submitting it.
    Validate(commands::client::ValidateArgs),
    /// Measure throughput: the gRPC trial path, metric points into Parquet, Q-table episodes.
    Bench(commands::bench::BenchArgs),
    /// Show a text's tokens and vectors from the sentence encoder of `imdb-bert` (all-MiniLM-L6-v2).
    Embed(commands::embed::EmbedArgs),
    /// Write an HTML page with PNG figures of a finished sweep's results (reads its Parquet files).
    Report(commands::report::ReportArgs),
}

/// Where a client or worker finds the coordinator, and how it proves who it is.
#[derive(Args, Clone)]
pub struct CoordinatorUrl {
    /// The coordinator's URL (https:// for a coordinator serving TLS).
    #[arg(long = "coordinator", env = "SWEEP_COORDINATOR", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    #[command(flatten)]
    pub token: TokenArgs,
    /// PEM certificate of the CA that signed the coordinator's certificate (or the certificate itself).
    #[arg(long, env = "SWEEP_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The name in the coordinator's certificate, when it is not the URL's host.
    #[arg(long)]
    pub tls_domain: Option<String>,
}

impl CoordinatorUrl {
    pub fn options(&self) -> anyhow::Result<sweep_shared::auth::ConnectOptions> {
        Ok(sweep_shared::auth::ConnectOptions {
            url: self.url.clone(),
            token: self.token.load()?,
            tls_ca: self.tls_ca.clone(),
            tls_domain: self.tls_domain.clone(),
        })
    }
}

/// The shared secret of a coordinator and its workers and clients.
#[derive(Args, Clone)]
pub struct TokenArgs {
    /// The token (prefer SWEEP_TOKEN or --token-file: flags show in `ps`).
    #[arg(long, env = "SWEEP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the token.
    #[arg(long, env = "SWEEP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl TokenArgs {
    pub fn load(&self) -> anyhow::Result<Option<String>> {
        sweep_shared::auth::load_token(self.token.as_deref(), self.token_file.as_deref()).map_err(anyhow::Error::msg)
    }
}

/// Where a coordinator keeps its state and output.
#[derive(Args, Clone)]
pub struct StoreArgs {
    /// Directory of the coordinator's SQLite store.
    #[arg(long, env = "SWEEP_STATE_DIR", default_value = "sweep-state")]
    pub state_dir: PathBuf,
    /// Directory of the Parquet output (`<out>/<sweep>/trials.parquet`, `<out>/<sweep>/metrics/`).
    #[arg(long, env = "SWEEP_OUT_DIR", default_value = "sweep-results")]
    pub out: PathBuf,
    /// How long a lease lives without a heartbeat.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// Leases granted per trial before it fails (hand-backs by stopping workers do not count).
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Checkpoints kept per trial.
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Require this token from workers and clients.
    #[command(flatten)]
    pub token: TokenArgs,
    /// Serve TLS with this PEM certificate (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl StoreArgs {
    pub fn config(&self) -> anyhow::Result<sweep_coordinator::CoordinatorConfig> {
        let mut config = sweep_coordinator::CoordinatorConfig::new(self.state_dir.clone(), self.out.clone())
            .with_lease_ttl(self.lease_ttl);
        config.max_attempts = self.max_attempts;
        config.keep_checkpoints = self.keep_checkpoints.max(1);
        config.token = self.token.load()?;
        config.tls = self.tls_cert.clone().zip(self.tls_key.clone());
        Ok(config)
    }
}

fn init_tracing(default: &str) {
    let filter = EnvFilter::try_from_env("SWEEP_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

/// How long candle's idle worker threads spin before they sleep. candle's default (25,000 spins)
/// keeps a core busy between tensor ops; on a machine where trials, their recurrent kernels and
/// other processes share few cores that spinning costs more than waking a sleeping thread
/// (`sweep bench nlp` on 2 cores: the dense train step 5.5 ms with the default, 2.1 ms with 100).
const CANDLE_SPIN_LIMIT: &str = "100";

/// Keeps freed tensor buffers in the heap for the next train step instead of returning them to
/// the kernel: glibc maps every large allocation afresh and unmaps it on free, and each touch of a
/// fresh page is a page fault (`sweep bench nlp`: more than half of the dense model's step time).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Fixes candle's thread count for the process. Without `RAYON_NUM_THREADS`, candle asks
/// `num_cpus` on every matmul, which reads /proc/cpuinfo each time: for the DQN's tiny network that
/// was 90% of a worker's time (a 200-episode trial 14.6 s in a worker against 1.6 s in process).
fn fix_candle_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", cores.to_string());
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    // Before any thread exists: candle reads these when its thread pool starts.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", CANDLE_SPIN_LIMIT);
    }
    fix_candle_threads();
    let cli = Cli::parse();
    // `run` draws a progress bar: keep its logs to warnings unless asked.
    init_tracing(match cli.command {
        Command::Run(_)
        | Command::Resume(_)
        | Command::Bench(_)
        | Command::Validate(_)
        | Command::Embed(_)
        | Command::Report(_) => "warn",
        _ => "info",
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => commands::run::run(args).await,
            Command::Resume(args) => commands::run::resume(args).await,
            Command::Coordinator(args) => commands::serve::coordinator(args).await,
            Command::Worker(args) => commands::serve::worker(args).await,
            Command::Submit(args) => commands::client::submit(args).await,
            Command::Status(args) => commands::client::status(args).await,
            Command::Best(args) => commands::client::best(args).await,
            Command::Cancel(args) => commands::client::cancel(args).await,
            Command::Export(args) => commands::client::export(args).await,
            Command::Validate(args) => commands::client::validate(args),
            Command::Bench(args) => commands::bench::bench(args).await,
            Command::Embed(args) => commands::embed::embed(args).await,
            Command::Report(args) => commands::report::report(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
