//! `sweep report SWEEP`: the command edge of [`crate::report`]. Parses the flags, finds the
//! sweep's results directory, renders on a blocking thread and prints the page's path.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use sweep_coordinator::stats::RankBy;
use sweep_shared::spec::Goal;

use crate::report::{write_report, ReportRequest};

#[derive(Args)]
pub struct ReportArgs {
    /// The sweep to report (its results are in <out>/<sweep>/).
    pub sweep: String,
    /// Directory of the Parquet output, as given to `sweep run` / `sweep coordinator`.
    #[arg(long, env = "SWEEP_OUT_DIR", default_value = "sweep-results")]
    pub out: PathBuf,
    /// Where to write index.html and the PNGs [default: <out>/<sweep>/report]. PNGs an earlier
    /// report wrote there (lab_*, metric_*, objective_vs_*, ...) are replaced; other files stay.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Configurations drawn in the curve figures: the best by `--by`.
    #[arg(long, default_value_t = 8)]
    pub top: usize,
    /// The aggregate over seeds that ranks configurations, as in `sweep best`: mean, median, or
    /// bound (the pessimistic end of the 95% confidence interval).
    #[arg(long = "by", default_value = "mean", value_parser = clap::builder::PossibleValuesParser::new(RankBy::NAMES))]
    pub rank_by: String,
    /// The objective's goal, when the data does not tell it (it is inferred otherwise).
    #[arg(long, value_enum)]
    pub goal: Option<GoalArg>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum GoalArg {
    Maximize,
    Minimize,
}

pub async fn report(args: ReportArgs) -> anyhow::Result<()> {
    let sweep_dir = args.out.join(&args.sweep);
    let request = ReportRequest {
        sweep_id: args.sweep.clone(),
        output_dir: args.output.clone().unwrap_or_else(|| sweep_dir.join("report")),
        sweep_dir,
        top: args.top,
        rank_by: args.rank_by.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        goal: args.goal.map(|g| match g {
            GoalArg::Maximize => Goal::Maximize,
            GoalArg::Minimize => Goal::Minimize,
        }),
    };
    let started = Instant::now();
    let outcome = tokio::task::spawn_blocking(move || write_report(&request))
        .await
        .context("report thread")?
        .with_context(|| format!("writing the report of sweep {}", args.sweep))?;
    tracing::info!(
        sweep = %args.sweep,
        trials = outcome.trials,
        metric_rows = outcome.metric_rows,
        images = outcome.images.len(),
        seconds = started.elapsed().as_secs_f64(),
        "report written"
    );
    println!("{}", outcome.index.display());
    Ok(())
}
