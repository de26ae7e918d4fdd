//! `sweep bench gan`: one DCGAN train step on candle next to the same step in PyTorch CPU, in one
//! run, with the ratio.
//!
//! A train step is what `mnist-dcgan` does per batch (`DcganJob::train_step`): noise, G forward in
//! training mode, D on the real and the fake batch, both losses, the gradients of both networks
//! and both Adam updates. The PyTorch side (`bench/python/dcgan_torch_bench.py`, torch from
//! `bench/setup-python.sh`) runs the same networks, shapes, losses and optimizers with the same
//! thread count; it also times single layers, which are printed as notes. Real images are random
//! values in [-1, 1] on both sides: speed does not depend on them.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use clap::Args;
use sweep_worker::data::DataPaths;
use sweep_worker::jobs::gan::dcgan::{DcganConfig, DcganJob};

use super::{json_f64, median_step_ms, run_torch_script, Comparison, Measurement, Report};

#[derive(Args)]
pub struct GanArgs {
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    #[arg(long, default_value_t = 100)]
    pub noise: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Threads on both sides (candle's and PyTorch's).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Python interpreter with torch (see bench/setup-python.sh).
    #[arg(long, default_value = "bench/.venv/bin/python")]
    pub python: PathBuf,
    #[arg(long, default_value = "bench/python/dcgan_torch_bench.py")]
    pub script: PathBuf,
    /// Time our side only.
    #[arg(long)]
    pub no_python: bool,
}

/// Median and fastest milliseconds of one DCGAN train step on candle.
fn candle_step_ms(args: &GanArgs) -> anyhow::Result<(f64, f64)> {
    let device = Device::Cpu;
    let mut config = DcganConfig::defaults()?;
    config.dims.noise = args.noise;
    config.batch_size = args.batch;
    config.score_every = 0;
    let mut job = DcganJob::new(config, 0, DataPaths::from_env(), device.clone())?;
    let real = Tensor::rand(-1f32, 1f32, (args.batch, 1, 28, 28), &device)?;
    median_step_ms(args.warmup, args.steps, || {
        job.train_step(&real)?;
        Ok(())
    })
}

pub async fn gan(args: &GanArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.steps > 0, "--steps must be at least 1");
    // candle reads its thread count from RAYON_NUM_THREADS, before its pool starts.
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    let (median, min) = tokio::task::block_in_place(|| candle_step_ms(args))?;
    let shape = format!(
        "batch {}, noise {}, Adam on both networks, {} threads, median of {} steps (fastest {min:.0} ms)",
        args.batch, args.noise, args.threads, args.steps
    );
    if args.no_python {
        let measurements = vec![Measurement::new("DCGAN train step", "steps", 1, median / 1e3)];
        return Ok(Report { bench: "gan", measurements, comparisons: Vec::new(), notes: vec![shape] });
    }
    let flags = [
        ("--threads", args.threads.to_string()),
        ("--steps", args.steps.to_string()),
        ("--warmup", args.warmup.to_string()),
        ("--batch", args.batch.to_string()),
        ("--noise", args.noise.to_string()),
    ];
    let torch = run_torch_script(&args.python, &args.script, &flags).await?;
    let theirs = json_f64(&torch["results"]["dcgan_step"], "median_ms")?;
    let comparisons = vec![Comparison {
        name: "DCGAN train step".into(),
        unit: "steps",
        ours: 1e3 / median,
        python: 1e3 / theirs,
        goal: 1.0,
    }];
    let mut notes = vec![shape];
    notes.push(format!(
        "PyTorch {}: {median:.0} ms per step here, {theirs:.0} ms there; the 1-minute load average was {:.2} when PyTorch started",
        torch["torch"].as_str().unwrap_or("?"),
        torch["loadavg_1m"].as_f64().unwrap_or(f64::NAN)
    ));
    if let Some(layers) = torch["results"].as_object() {
        let per_layer: Vec<String> = layers
            .iter()
            .filter(|(name, _)| name.as_str() != "dcgan_step")
            .map(|(name, r)| {
                let ms = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
                format!("{name} {:.1}/{:.1}", ms("fwd_ms"), ms("bwd_ms"))
            })
            .collect();
        notes.push(format!("PyTorch per layer, forward/backward ms: {}", per_layer.join(", ")));
    }
    Ok(Report { bench: "gan", measurements: Vec::new(), comparisons, notes })
}
