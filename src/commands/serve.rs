//! `sweep coordinator` and `sweep worker`: the two long-running processes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sweep_shared::params::JobCatalog;
use sweep_worker::{DataPaths, Device, JobEnv, JobRegistry, WorkerConfig};
use tokio::net::TcpListener;

use crate::{signals, CoordinatorUrl, StoreArgs};

#[derive(Args)]
pub struct CoordinatorArgs {
    /// Address to listen on; port 0 picks a free port (printed at start).
    #[arg(long, default_value = "0.0.0.0:7070")]
    pub listen: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Serves until SIGTERM or SIGINT, then flushes everything and exits.
pub async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    // Scripts and tests read this line to find the port.
    println!("coordinator listening on {addr}");
    let stop = signals::on_terminate()?;
    let catalog: Arc<dyn JobCatalog> = Arc::new(JobRegistry::builtin());
    sweep_coordinator::run(listener, args.store.config()?, catalog, async move { stop.cancelled().await })
        .await
        .context("coordinator")?;
    Ok(())
}

/// Where jobs read data sets and models, and cache what they derive from them.
#[derive(Args, Clone, Debug)]
pub struct DataArgs {
    /// Data sets directory (holding imdb/plain_text/*.parquet, mnist/*.gz); missing files are
    /// downloaded unless --offline (IMDB from the Hugging Face Hub, MNIST from a public mirror).
    #[arg(long, env = "SWEEP_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Pretrained models directory (holding all-MiniLM-L6-v2/).
    #[arg(long, env = "SWEEP_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Where jobs cache tokenized data and embeddings.
    #[arg(long, env = "SWEEP_CACHE_DIR", default_value = "sweep-cache")]
    pub cache_dir: PathBuf,
    /// Never download data or models (also HF_HUB_OFFLINE=1). The variable takes 1/0 as well as
    /// true/false: `to_env` hands it to child workers as 1.
    #[arg(long, env = "SWEEP_OFFLINE", value_parser = clap::builder::BoolishValueParser::new())]
    pub offline: bool,
}

impl DataArgs {
    pub fn paths(&self) -> DataPaths {
        DataPaths {
            data_dir: self.data_dir.clone(),
            models_dir: self.models_dir.clone(),
            cache_dir: self.cache_dir.clone(),
            offline: self.offline || DataPaths::from_env().offline,
        }
    }

    /// The same settings for a child `sweep worker`, as its environment; relative paths are made
    /// absolute so they mean the same in the child.
    pub fn to_env(&self) -> anyhow::Result<Vec<(&'static str, std::ffi::OsString)>> {
        let cwd = std::env::current_dir()?;
        let abs = |p: &PathBuf| cwd.join(p).into_os_string();
        let mut env = vec![
            ("SWEEP_DATA_DIR", abs(&self.data_dir)),
            ("SWEEP_MODELS_DIR", abs(&self.models_dir)),
            ("SWEEP_CACHE_DIR", abs(&self.cache_dir)),
        ];
        if self.offline {
            env.push(("SWEEP_OFFLINE", "1".into()));
        }
        Ok(env)
    }
}

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub coordinator: CoordinatorUrl,
    /// Trials to run at once.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Device for candle jobs: cpu or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Offer only these job kinds (repeatable); by default every kind this build runs.
    #[arg(long = "job-kind")]
    pub job_kinds: Vec<String>,
    /// On SIGTERM, finish running trials instead of handing them back.
    #[arg(long)]
    pub finish_on_term: bool,
    /// Exit after this long without work (e.g. `30s`); by default wait forever.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_exit: Option<Duration>,
    /// Give up if the coordinator cannot be reached for this long; by default keep trying.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Send a metric batch after this many points...
    #[arg(long, default_value_t = 1024)]
    pub batch_points: usize,
    /// ...or when its oldest point is this old.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub batch_interval: Duration,
    #[command(flatten)]
    pub data: DataArgs,
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let device = Device::parse(&args.device).map_err(anyhow::Error::msg)?;
    let registry = JobRegistry::with_env(JobEnv { paths: args.data.paths(), device: device.clone() });
    let mut config = WorkerConfig::new(args.coordinator.options()?);
    config.slots = args.slots;
    config.device = device;
    config.job_kinds = args.job_kinds;
    config.finish_on_term = args.finish_on_term;
    config.idle_exit = args.idle_exit;
    config.connect_timeout = args.connect_timeout;
    config.batch_points = args.batch_points.max(1);
    config.batch_interval = args.batch_interval;
    let stop = signals::on_terminate()?;
    let summary = sweep_worker::run(config, Arc::new(registry), stop).await.context("worker")?;
    eprintln!(
        "worker done: {} completed, {} failed, {} handed back, {} dropped",
        summary.completed, summary.failed, summary.handed_back, summary.dropped
    );
    Ok(())
}
