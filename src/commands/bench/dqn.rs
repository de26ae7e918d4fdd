//! `sweep bench dqn`: `cartpole-dqn` episodes on candle next to the same agent in PyTorch CPU
//! (`bench/python/dqn_torch_bench.py`), in one run, with the ratios.
//!
//! Both sides run gsurma's agent with the batched replay update (network 4-24-24-2, Adam, batch
//! 20, epsilon 1.0 x 0.995 per replay) for the same number of episodes from a fresh network, on the
//! same thread count; each times everything from the first reset to the last step. Episode lengths
//! depend on how each side's run happens to learn, so the work per episode differs between the two;
//! environment steps per second (each step is one action choice plus one replay update) is the
//! like-for-like rate, and episodes per second is printed beside it.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use sweep_shared::params::ParamValue;
use sweep_worker::jobs::rl::dqn::{self, DqnConfig, DqnJob};
use sweep_worker::jobs::{CancelFlag, JobContext, MetricSink, NoCheckpoints};

use super::{json_f64, json_u64, run_torch_script, Comparison, Measurement, Report};

#[derive(Args)]
pub struct DqnArgs {
    /// Episodes per side.
    #[arg(long, default_value_t = 100)]
    pub episodes: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads on both sides (candle's and PyTorch's); the network is too small to gain from more.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Python interpreter with torch and gymnasium (see bench/setup-python.sh).
    #[arg(long, default_value = "bench/.venv/bin/python")]
    pub python: PathBuf,
    #[arg(long, default_value = "bench/python/dqn_torch_bench.py")]
    pub script: PathBuf,
    /// Time our side only.
    #[arg(long)]
    pub no_python: bool,
}

/// Sums the episode scores (= environment steps) a job reports.
#[derive(Default)]
struct StepCounter {
    steps: f64,
    last_scores: Vec<f64>,
}

impl MetricSink for StepCounter {
    fn report(&mut self, _step: u64, name: &str, value: f64) {
        if name == "score" {
            self.steps += value;
            self.last_scores.push(value);
        }
    }
}

/// Seconds, environment steps and the mean of the last 20 scores of `episodes` episodes on candle.
fn candle_run(args: &DqnArgs) -> anyhow::Result<(f64, f64, f64)> {
    let schema = dqn::schema();
    let mut params = sweep_shared::params::Params(
        schema.params.iter().filter_map(|p| Some((p.name.to_string(), p.default.clone()?))).collect(),
    );
    params.0.insert("max_episodes".into(), ParamValue::Int(args.episodes as i64));
    params.0.insert("stop_on_solve".into(), ParamValue::Bool(false));
    let mut job = DqnJob::new(DqnConfig::from_params(&params)?, args.seed, &candle_core::Device::Cpu)?;
    let mut counter = StepCounter::default();
    let mut ctx = JobContext {
        seed: args.seed,
        metrics: &mut counter,
        checkpoints: &mut NoCheckpoints,
        cancel: CancelFlag::default(),
    };
    let start = Instant::now();
    sweep_worker::jobs::Job::run(&mut job, &mut ctx)?;
    let seconds = start.elapsed().as_secs_f64();
    let tail = &counter.last_scores[counter.last_scores.len().saturating_sub(20)..];
    Ok((seconds, counter.steps, tail.iter().sum::<f64>() / tail.len().max(1) as f64))
}

pub async fn dqn(args: &DqnArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.episodes > 0, "--episodes must be at least 1");
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    let (seconds, steps, tail) = tokio::task::block_in_place(|| candle_run(args))?;
    let episodes = args.episodes as f64;
    let mut notes = vec![format!(
        "{} episodes from seed {}, {} thread(s); candle: {steps} steps in {seconds:.2} s, last-20 mean score {tail:.1}",
        args.episodes, args.seed, args.threads
    )];
    if args.no_python {
        let measurements = vec![
            Measurement::new("DQN episodes", "episodes", args.episodes, seconds),
            Measurement::new("DQN env steps (act + replay)", "steps", steps as u64, seconds),
        ];
        return Ok(Report { bench: "dqn", measurements, comparisons: Vec::new(), notes });
    }
    let flags = [
        ("--threads", args.threads.to_string()),
        ("--episodes", args.episodes.to_string()),
        ("--seed", args.seed.to_string()),
    ];
    let torch = run_torch_script(&args.python, &args.script, &flags).await?;
    let their_seconds = json_f64(&torch, "seconds")?;
    let their_steps = json_u64(&torch, "steps")? as f64;
    notes.push(format!(
        "PyTorch {}: {their_steps} steps in {their_seconds:.2} s, last-20 mean score {:.1}; 1-minute load average {:.2} when it started",
        torch["torch"].as_str().unwrap_or("?"),
        torch["mean_score_last_20"].as_f64().unwrap_or(f64::NAN),
        torch["loadavg_1m"].as_f64().unwrap_or(f64::NAN)
    ));
    let comparisons = vec![
        Comparison {
            name: "DQN env steps (act + replay)".into(),
            unit: "steps",
            ours: steps / seconds,
            python: their_steps / their_seconds,
            goal: 1.0,
        },
        Comparison {
            name: "DQN episodes (lengths differ per run)".into(),
            unit: "episodes",
            ours: episodes / seconds,
            python: episodes / their_seconds,
            goal: 1.0,
        },
    ];
    Ok(Report { bench: "dqn", measurements: Vec::new(), comparisons, notes })
}
