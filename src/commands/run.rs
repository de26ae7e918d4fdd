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

#[derive(Args)]
pub struct RunArgs {
    /// The spec file (YAML).
    pub spec: PathBuf,
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
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let text = read_spec(&args.spec)?;
    let (spec, trials) = check_spec(&text, &source_name(&args.spec))?;
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }

    let listener = TcpListener::bind((args.bind.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.bind, args.port))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{}:{}", if args.bind == "0.0.0.0" { "127.0.0.1" } else { &args.bind }, addr.port());
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let catalog: Arc<dyn JobCatalog> = Arc::new(JobRegistry::builtin());
    let server = tokio::spawn(sweep_coordinator::run(listener, args.store.config(), catalog, async move {
        let _ = server_stopped.await;
    }));

    let outcome = drive(&args, &text, &url, trials as u64, spec.name.as_str()).await;
    let _ = stop_server.send(());
    server.await.context("coordinator task")?.context("coordinator")?;
    outcome
}

async fn drive(args: &RunArgs, text: &str, url: &str, trials: u64, sweep: &str) -> anyhow::Result<()> {
    let mut client = connect(url).await?;
    let submitted = client
        .submit(SubmitRequest { spec_yaml: text.to_string(), source_name: source_name(&args.spec), extend: false })
        .await
        .map_err(refused)?
        .into_inner();
    let sweep_id = submitted.sweep_id;
    eprintln!(
        "sweep {sweep} ({trials} trials{}) on {} workers; coordinator {url}",
        if submitted.existing { ", resubmitted: finished trials are kept" } else { "" },
        args.workers
    );

    let log_dir = args.store.state_dir.join("logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let mut workers = Vec::new();
    for i in 0..args.workers {
        workers.push(spawn_worker(url, i, args.slots, &args.store.state_dir, &log_dir)?);
    }

    let interrupted = signals::on_terminate()?;
    let bar = ProgressBar::new(trials);
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
    report(&mut client, &sweep_id, args.top).await?;
    if !finished {
        eprintln!("interrupted: unfinished trials stay pending in {}", args.store.state_dir.display());
    }
    Ok(())
}

fn spawn_worker(
    url: &str,
    index: u32,
    slots: u32,
    state_dir: &std::path::Path,
    log_dir: &std::path::Path,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("locating the sweep binary")?;
    let log_path = log_dir.join(format!("worker-{index}.log"));
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let child = Command::new(exe)
        .arg("worker")
        .arg("--coordinator")
        .arg(url)
        .arg("--slots")
        .arg(slots.to_string())
        .arg("--work-dir")
        .arg(state_dir.join(format!("worker-{index}")))
        .arg("--connect-timeout")
        .arg("30s")
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
    let best = client.best(BestRequest { sweep_id: sweep_id.to_string(), top }).await.map_err(refused)?.into_inner();
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
