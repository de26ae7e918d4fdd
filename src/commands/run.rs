//! `sweep run SPEC`: a whole sweep on this machine in one command.
//!
//! 1. check the spec locally (errors name key and line; nothing is stored);
//! 2. serve an embedded coordinator on a free loopback port;
//! 3. submit the spec and start N worker processes (`sweep worker`), their logs in the state dir;
//! 4. draw a progress bar (done / running / best so far) until every trial ended;
//! 5. stop the workers, write the Parquet files, print the best configurations and the paths.
//!
//! Ctrl-C stops the workers (they hand their trials back) and keeps everything stored so far.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sweep_shared::params::JobCatalog;
use sweep_shared::proto::{BestRequest, ExportRequest, StatusRequest, SubmitRequest, SweepStatus};
use sweep_worker::JobRegistry;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use super::client::{check_spec, connect, read_spec, refused, source_name, SweepClient};
use crate::{display, signals, StoreArgs};
use sweep_shared::auth::ConnectOptions;

#[derive(Args)]
pub struct RunArgs {
    /// The spec file (YAML).
    pub spec: PathBuf,
    #[command(flatten)]
    pub local: LocalArgs,
}

#[derive(Args)]
pub struct ResumeArgs {
    /// The sweep to continue (its spec is in the state dir).
    pub sweep: String,
    /// A changed spec for the sweep: refused unless --extend.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Add the changed spec's new trials to the sweep; finished trials are kept.
    #[arg(long, requires = "spec")]
    pub extend: bool,
    #[command(flatten)]
    pub local: LocalArgs,
}

/// An embedded coordinator and its local workers.
#[derive(Args)]
pub struct LocalArgs {
    /// Local worker processes to start.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Trials each worker runs at once.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Configurations shown at the end.
    #[arg(long, default_value_t = 10)]
    pub top: u32,
    /// Port of the embedded coordinator (0: any free port); other machines' workers may join it.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Address the embedded coordinator binds.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub data: super::serve::DataArgs,
}

/// A coordinator serving in this process until [`Embedded::stop`].
struct Embedded {
    options: ConnectOptions,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<sweep_coordinator::Result<()>>,
}

impl Embedded {
    /// Serves the state dir; `resume` hands back trials left running by a stopped run first.
    async fn start(local: &LocalArgs, resume: bool) -> anyhow::Result<Embedded> {
        if local.workers == 0 {
            bail!("--workers must be at least 1");
        }
        if local.store.tls_cert.is_some() {
            bail!("this command serves plain HTTP/2; for TLS start `sweep coordinator --tls-cert ... --tls-key ...` and workers");
        }
        let mut config = local.store.config()?;
        config.requeue_running_at_start = resume;
        let token = config.token.clone();
        let listener = TcpListener::bind((local.bind.as_str(), local.port))
            .await
            .with_context(|| format!("binding {}:{}", local.bind, local.port))?;
        let addr = listener.local_addr()?;
        let host = if local.bind == "0.0.0.0" { "127.0.0.1" } else { local.bind.as_str() };
        let url = format!("http://{host}:{}", addr.port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let catalog: Arc<dyn JobCatalog> = Arc::new(JobRegistry::builtin());
        let server = tokio::spawn(sweep_coordinator::run(listener, config, catalog, async move {
            let _ = stopped.await;
        }));
        Ok(Embedded { options: ConnectOptions { url, token, ..Default::default() }, stop, server })
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.await.context("coordinator task")?.context("coordinator")?;
        Ok(())
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let text = read_spec(&args.spec)?;
    let (spec, trials) = check_spec(&text, &source_name(&args.spec))?;
    let embedded = Embedded::start(&args.local, false).await?;
    let outcome = async {
        let mut client = connect(&embedded.options).await?;
        let submitted = client
            .submit(SubmitRequest { spec_yaml: text.clone(), source_name: source_name(&args.spec), extend: false })
            .await
            .map_err(|status| {
                if status.code() == tonic::Code::AlreadyExists {
                    anyhow::anyhow!(
                        "{}\n(to continue the stored sweep: sweep resume {} --spec {} --extend)",
                        status.message(),
                        spec.name,
                        args.spec.display()
                    )
                } else {
                    refused(status)
                }
            })?
            .into_inner();
        eprintln!(
            "sweep {} ({trials} trials{}) on {} workers; coordinator {}",
            spec.name,
            if submitted.existing { ", resubmitted: finished trials are kept" } else { "" },
            args.local.workers,
            embedded.options.url
        );
        watch(&args.local, &embedded.options, &mut client, &submitted.sweep_id).await
    }
    .await;
    embedded.stop().await?;
    outcome
}

/// `sweep resume SWEEP`: continues a stopped sweep from its state dir. Interrupted trials resume
/// from their checkpoints, pending ones start, completed ones never run again.
pub async fn resume(args: ResumeArgs) -> anyhow::Result<()> {
    let changed_spec = match &args.spec {
        Some(path) => {
            let text = read_spec(path)?;
            let (spec, _) = check_spec(&text, &source_name(path))?;
            if spec.name.as_str() != args.sweep {
                bail!("{} describes sweep '{}', not '{}'", path.display(), spec.name, args.sweep);
            }
            Some((path, text))
        }
        None => None,
    };
    if !args.local.store.state_dir.join("sweep.db").exists() {
        bail!("no sweep state in {} (pass --state-dir)", args.local.store.state_dir.display());
    }
    let embedded = Embedded::start(&args.local, true).await?;
    let outcome = async {
        let mut client = connect(&embedded.options).await?;
        let status = client.status(StatusRequest { sweep_id: args.sweep.clone() }).await.map_err(refused)?.into_inner();
        if let Some((path, text)) = changed_spec {
            let submitted = client
                .submit(SubmitRequest { spec_yaml: text, source_name: source_name(path), extend: args.extend })
                .await
                .map_err(refused)?
                .into_inner();
            if submitted.added > 0 {
                eprintln!("extended sweep {}: {} new trials", args.sweep, submitted.added);
            }
        }
        eprintln!(
            "resuming sweep {}: {} completed, {} to run, on {} workers; coordinator {}",
            args.sweep,
            status.completed,
            status.pending + status.running,
            args.local.workers,
            embedded.options.url
        );
        watch(&args.local, &embedded.options, &mut client, &args.sweep).await
    }
    .await;
    embedded.stop().await?;
    outcome
}

/// Starts the workers, draws the progress bar until the sweep finished (or Ctrl-C), stops the
/// workers and prints the report.
async fn watch(
    local: &LocalArgs,
    options: &ConnectOptions,
    client: &mut SweepClient,
    sweep_id: &str,
) -> anyhow::Result<()> {
    let sweep_id = sweep_id.to_string();
    let log_dir = local.store.state_dir.join("logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let mut workers = Vec::new();
    for i in 0..local.workers {
        workers.push(spawn_worker(options, i, local.slots, &log_dir, "info", &local.data.to_env()?)?);
    }

    let interrupted = signals::on_terminate()?;
    let status = client.status(StatusRequest { sweep_id: sweep_id.clone() }).await.map_err(refused)?.into_inner();
    let bar = ProgressBar::new(status.total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} trials  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let finished = loop {
        let status = client.status(StatusRequest { sweep_id: sweep_id.clone() }).await.map_err(refused)?.into_inner();
        show(&bar, &status);
        if status.finished {
            break true;
        }
        tokio::select! {
            _ = interrupted.cancelled() => break false,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        for (i, worker) in workers.iter_mut().enumerate() {
            if let Ok(Some(exit)) = worker.try_wait() {
                bar.suspend(|| {
                    eprintln!("worker {i} exited ({exit}); see {}", log_dir.join(format!("worker-{i}.log")).display())
                });
            }
        }
        workers.retain_mut(|w| matches!(w.try_wait(), Ok(None)));
        if workers.is_empty() {
            bar.abandon_with_message("every worker exited");
            bail!("every worker exited before the sweep finished; logs in {}", log_dir.display());
        }
    };
    bar.finish();

    for worker in &workers {
        signals::terminate(worker);
    }
    for mut worker in workers {
        let _ = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await;
        let _ = worker.start_kill();
    }
    report(client, &sweep_id, local.top).await?;
    if !finished {
        eprintln!(
            "interrupted: continue with `sweep resume {sweep_id} --state-dir {}`",
            local.store.state_dir.display()
        );
    }
    Ok(())
}

/// Starts `sweep worker` number `index` against `options`, logging to `log_dir/worker-<index>.log`
/// at `log_level` (unless SWEEP_LOG says otherwise). Also used by `sweep bench`.
pub(crate) fn spawn_worker(
    options: &ConnectOptions,
    index: u32,
    slots: u32,
    log_dir: &std::path::Path,
    log_level: &str,
    env: &[(&'static str, std::ffi::OsString)],
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("locating the sweep binary")?;
    let log_path = log_dir.join(format!("worker-{index}.log"));
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = Command::new(exe);
    // The token travels in the environment, not on a command line that `ps` shows.
    if let Some(token) = &options.token {
        command.env("SWEEP_TOKEN", token);
    }
    command.envs(env.iter().map(|(k, v)| (*k, v)));
    let child = command
        .arg("worker")
        .arg("--coordinator")
        .arg(&options.url)
        .arg("--slots")
        .arg(slots.to_string())
        .arg("--connect-timeout")
        .arg("30s")
        .env("SWEEP_LOG", std::env::var("SWEEP_LOG").unwrap_or_else(|_| log_level.to_string()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting a worker process")?;
    Ok(child)
}

fn show(bar: &ProgressBar, status: &SweepStatus) {
    bar.set_length(status.total);
    bar.set_position(status.completed + status.failed + status.cancelled);
    let best = status.best_objective.map(|b| format!("{b:.4}")).unwrap_or_else(|| "-".into());
    let failed = if status.failed > 0 { format!("  failed {}", status.failed) } else { String::new() };
    bar.set_message(format!("running {}{failed}  best {} {best}", status.running, status.metric));
}

async fn report(client: &mut SweepClient, sweep_id: &str, top: u32) -> anyhow::Result<()> {
    let exported = client.export(ExportRequest { sweep_id: sweep_id.to_string() }).await.map_err(refused)?.into_inner();
    let best = client
        .best(BestRequest { sweep_id: sweep_id.to_string(), top, rank_by: String::new() })
        .await
        .map_err(refused)?
        .into_inner();
    let status = client.status(StatusRequest { sweep_id: sweep_id.to_string() }).await.map_err(refused)?.into_inner();
    println!(
        "\n{}: {} completed, {} failed, {} cancelled of {}",
        sweep_id, status.completed, status.failed, status.cancelled, status.total
    );
    if best.configs.is_empty() {
        println!("no completed trial reported '{}'", best.metric);
    } else {
        println!("top configurations by {} ({}), over seeds:", best.metric, best.goal);
        println!("{}", display::best_table(&best));
    }
    println!("trials:  {}", exported.trials_path);
    println!("metrics: {}/part-*.parquet ({} rows)", exported.metrics_dir, exported.metric_rows);
    Ok(())
}
