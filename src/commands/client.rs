//! Commands that talk to a running coordinator: submit, status, best, cancel, export; and
//! `validate`, which checks a spec locally.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use sweep_coordinator::inspect;
use sweep_coordinator::service::best_response;
use sweep_coordinator::stats::RankBy;
use sweep_shared::auth::{ClientAuth, ConnectOptions};
use sweep_shared::ids::SweepId;
use sweep_shared::limits::MAX_MESSAGE_BYTES;
use sweep_shared::proto::sweep_service_client::SweepServiceClient;
use sweep_shared::proto::{
    BestRequest, CancelRequest, ExportRequest, ListSweepsRequest, ListTrialsRequest, StatusRequest, SubmitRequest,
};
use sweep_worker::JobRegistry;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::{display, CoordinatorUrl};

pub type SweepClient = SweepServiceClient<InterceptedService<Channel, ClientAuth>>;

pub async fn connect(options: &ConnectOptions) -> anyhow::Result<SweepClient> {
    let url = &options.url;
    let channel = options
        .endpoint()
        .map_err(anyhow::Error::msg)?
        .connect()
        .await
        .with_context(|| format!("connecting to the coordinator at {url}"))?;
    Ok(SweepServiceClient::with_interceptor(channel, options.auth().map_err(anyhow::Error::msg)?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// A coordinator's refusal, as a person should read it.
pub fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

pub fn read_spec(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading spec {}", path.display()))
}

pub fn source_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "spec".into())
}

#[derive(Args)]
pub struct SubmitArgs {
    /// The spec file (YAML).
    pub spec: PathBuf,
    /// The sweep exists with a different spec: add the new spec's trials (finished ones are kept).
    #[arg(long)]
    pub extend: bool,
    #[command(flatten)]
    pub coordinator: CoordinatorUrl,
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let spec_yaml = read_spec(&args.spec)?;
    let mut client = connect(&args.coordinator.options()?).await?;
    let response = client
        .submit(SubmitRequest { spec_yaml, source_name: source_name(&args.spec), extend: args.extend })
        .await
        .map_err(refused)?
        .into_inner();
    if response.existing {
        println!(
            "sweep {} already exists with this spec ({} trials); nothing new submitted",
            response.sweep_id, response.trials
        );
    } else {
        println!("submitted sweep {} with {} trials", response.sweep_id, response.trials);
    }
    Ok(())
}

#[derive(Args)]
pub struct StatusArgs {
    /// The sweep; all sweeps when left out.
    pub sweep: Option<String>,
    /// List every trial of the sweep.
    #[arg(long)]
    pub trials: bool,
    #[command(flatten)]
    pub coordinator: CoordinatorUrl,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.coordinator.options()?).await?;
    let Some(sweep_id) = args.sweep else {
        let sweeps = client.list_sweeps(ListSweepsRequest {}).await.map_err(refused)?.into_inner().sweeps;
        if sweeps.is_empty() {
            println!("no sweeps");
        } else {
            println!("{}", display::status_table(&sweeps));
        }
        return Ok(());
    };
    let status = client.status(StatusRequest { sweep_id: sweep_id.clone() }).await.map_err(refused)?.into_inner();
    println!("{}", display::status_table(std::slice::from_ref(&status)));
    if args.trials {
        let trials = client.list_trials(ListTrialsRequest { sweep_id }).await.map_err(refused)?.into_inner().trials;
        println!("{}", display::trials_table(&trials));
    }
    Ok(())
}

#[derive(Args)]
pub struct BestArgs {
    pub sweep: String,
    /// How many configurations to show (0: all).
    #[arg(long, default_value_t = 10)]
    pub top: u32,
    /// The aggregate over seeds that ranks configurations: mean, median, or bound (the
    /// pessimistic end of the 95% confidence interval: lower when maximizing, upper when minimizing).
    #[arg(long = "by", default_value = "mean", value_parser = clap::builder::PossibleValuesParser::new(RankBy::NAMES))]
    pub rank_by: String,
    /// Print JSON instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV (one column per parameter) instead of a table.
    #[arg(long)]
    pub csv: bool,
    /// Read a coordinator's state dir (read-only) instead of asking a running coordinator: for a
    /// sweep that `sweep run` finished (its state dir is `sweep-state` unless given).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub coordinator: CoordinatorUrl,
}

pub async fn best(args: BestArgs) -> anyhow::Result<()> {
    let best = match &args.state_dir {
        Some(dir) => {
            let by: RankBy = args.rank_by.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let (metric, configs) = inspect::best(dir, &SweepId(args.sweep.clone()), args.top as usize, by)?;
            best_response(metric, by, configs)
        }
        None => {
            let mut client = connect(&args.coordinator.options()?).await?;
            let request = BestRequest { sweep_id: args.sweep.clone(), top: args.top, rank_by: args.rank_by.clone() };
            client.best(request).await.map_err(refused)?.into_inner()
        }
    };
    if args.json {
        let configs: Vec<serde_json::Value> = best
            .configs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                serde_json::json!({
                    "rank": i + 1,
                    "config_id": c.config_id,
                    "params": serde_json::from_str::<serde_json::Value>(&c.params_json).unwrap_or_default(),
                    "n": c.n, "seeds_total": c.seeds_total, "mean": c.mean, "std": c.std,
                    "ci_low": c.ci_low, "ci_high": c.ci_high, "median": c.median, "min": c.min, "max": c.max,
                    "reached": c.reached,
                    "reached_share": c.reached.map(|r| r as f64 / c.n.max(1) as f64),
                })
            })
            .collect();
        let out = serde_json::json!({
            "metric": best.metric, "goal": best.goal, "rank_by": best.rank_by, "target": best.target, "configs": configs,
        });
        println!("{out}");
    } else if args.csv {
        print!("{}", display::best_csv(&best));
    } else if best.configs.is_empty() {
        println!("no completed trial with a '{}' value yet", best.metric);
    } else {
        println!("ranked by the {} of {} over seeds", best.rank_by, best.metric);
        println!("{}", display::best_table(&best));
    }
    Ok(())
}

#[derive(Args)]
pub struct CancelArgs {
    pub sweep: String,
    #[command(flatten)]
    pub coordinator: CoordinatorUrl,
}

pub async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.coordinator.options()?).await?;
    let response = client.cancel(CancelRequest { sweep_id: args.sweep.clone() }).await.map_err(refused)?.into_inner();
    println!("cancelled {} unfinished trials of {}", response.cancelled, args.sweep);
    Ok(())
}

#[derive(Args)]
pub struct ExportArgs {
    pub sweep: String,
    /// Also write CSV copies (trials.csv, metrics.csv) into this directory.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    #[command(flatten)]
    pub coordinator: CoordinatorUrl,
}

pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.coordinator.options()?).await?;
    let out = client.export(ExportRequest { sweep_id: args.sweep }).await.map_err(refused)?.into_inner();
    println!("trials:  {}", out.trials_path);
    println!("metrics: {} ({} rows)", out.metrics_dir, out.metric_rows);
    if let Some(dir) = args.csv {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let trials_csv = dir.join("trials.csv");
        parquet_to_csv(&[PathBuf::from(&out.trials_path)], &trials_csv)?;
        let mut parts: Vec<PathBuf> = std::fs::read_dir(&out.metrics_dir)
            .with_context(|| format!("listing {}", out.metrics_dir))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        parts.sort();
        let metrics_csv = dir.join("metrics.csv");
        parquet_to_csv(&parts, &metrics_csv)?;
        println!("csv:     {} {}", trials_csv.display(), metrics_csv.display());
    }
    Ok(())
}

/// Concatenates Parquet files with one schema into a CSV file.
fn parquet_to_csv(inputs: &[PathBuf], output: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let mut writer = arrow_csv::WriterBuilder::new().with_header(true).build(file);
    for input in inputs {
        let file = std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
        for batch in reader {
            writer.write(&batch?)?;
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct ValidateArgs {
    /// The spec file (YAML).
    pub spec: PathBuf,
}

/// Checks a spec against the job kinds this build knows; prints the trial count.
pub fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    let text = read_spec(&args.spec)?;
    let (spec, trials) = check_spec(&text, &source_name(&args.spec))?;
    println!("{}: sweep {} of {} ({} trials)", args.spec.display(), spec.name, spec.job_kind, trials);
    Ok(())
}

/// Parses and expands a spec locally, as the coordinator will.
pub fn check_spec(text: &str, source: &str) -> anyhow::Result<(sweep_shared::spec::SweepSpec, usize)> {
    let registry = JobRegistry::builtin();
    let spec = match sweep_shared::spec::parse_spec(text, source, &registry) {
        Ok(spec) => spec,
        Err(errors) => bail!("invalid spec:\n{errors}"),
    };
    let Some(schema) = sweep_shared::params::JobCatalog::schema(&registry, &spec.job_kind) else {
        bail!("unknown job kind '{}'", spec.job_kind);
    };
    let trials = sweep_shared::space::expand(&spec, schema).len();
    Ok((spec, trials))
}
