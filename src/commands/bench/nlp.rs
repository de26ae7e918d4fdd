//! `sweep bench nlp`: one train step of each IMDB model on candle next to the same PyTorch CPU
//! model, in one run, with the ratio.
//!
//! A train step is what `imdb-sentiment` does per batch: forward, stable BCE on logits, backward,
//! an RMSprop update. Both sides use the same shapes (batch x maxlen ids into Embedding(max_features,
//! embed) and a recurrent layer of `hidden` units, or multi-hot vectors into the 16-16-1 dense
//! model; ours reads the multi-hot vectors' ones as ids, see `models.rs`), random ids and labels, the same thread count, a few warm-up steps, then the median of
//! `--steps` timed steps. The PyTorch side is `bench/python/imdb_torch_bench.py` (torch installed
//! by `bench/setup-python.sh`); without it, `--no-python` prints our side alone.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::{Device, Tensor};
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sweep_worker::jobs::nlp::models::{bce_with_logits, Arch, ModelDims, SentimentModel};
use sweep_worker::jobs::nlp::optim::{Optimizer, OptimizerKind};

use super::{json_f64, median_step_ms, run_torch_script, Comparison, Measurement, Report};

#[derive(Args)]
pub struct NlpArgs {
    /// Models to time: dense, rnn, lstm.
    #[arg(long, value_delimiter = ',', default_value = "dense,rnn,lstm")]
    pub models: Vec<String>,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[arg(long, default_value_t = 500)]
    pub maxlen: usize,
    #[arg(long, default_value_t = 10_000)]
    pub max_features: usize,
    #[arg(long, default_value_t = 32)]
    pub embed: usize,
    #[arg(long, default_value_t = 32)]
    pub hidden: usize,
    /// Timed steps per model (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Threads on both sides (candle's and PyTorch's).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Python interpreter with torch (see bench/setup-python.sh).
    #[arg(long, default_value = "bench/.venv/bin/python")]
    pub python: PathBuf,
    #[arg(long, default_value = "bench/python/imdb_torch_bench.py")]
    pub script: PathBuf,
    /// Time our side only.
    #[arg(long)]
    pub no_python: bool,
}

/// Median milliseconds of one train step of `arch` on candle.
fn candle_step_ms(arch: Arch, args: &NlpArgs) -> anyhow::Result<(f64, f64)> {
    let device = Device::Cpu;
    let dims = ModelDims { max_features: args.max_features, embed: args.embed, hidden: args.hidden, dense_units: 16 };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let model = SentimentModel::new(arch, dims, &mut rng, &device)?;
    let mut optimizer = Optimizer::new(OptimizerKind::RmsProp, 1e-3);
    let (b, t, v) = (args.batch, args.maxlen, args.max_features);
    let ids: Vec<u32> = (0..b * t).map(|_| rng.random_range(1..v as u32)).collect();
    let input = if arch.multi_hot() {
        // The multi-hot vectors' ones, as each row's distinct ids padded with 0.
        let sets: Vec<Vec<u32>> = ids
            .chunks(t)
            .map(|row| {
                let mut row = row.to_vec();
                row.sort_unstable();
                row.dedup();
                row
            })
            .collect();
        let width = sets.iter().map(Vec::len).max().unwrap_or(1);
        let mut padded = vec![0u32; b * width];
        for (out, set) in padded.chunks_exact_mut(width).zip(&sets) {
            out[..set.len()].copy_from_slice(set);
        }
        Tensor::from_vec(padded, (b, width), &device)?
    } else {
        Tensor::from_vec(ids, (b, t), &device)?
    };
    let targets: Vec<f32> = (0..b).map(|_| f32::from(rng.random_range(0u8..2))).collect();
    let targets = Tensor::from_vec(targets, b, &device)?;
    median_step_ms(args.warmup, args.steps, || {
        let logits = model.forward(&input, true)?;
        let loss = bce_with_logits(&logits, &targets)?;
        let grads = loss.backward()?;
        optimizer.step(&model.vars, &grads)?;
        loss.to_scalar::<f32>()?;
        Ok(())
    })
}

pub async fn nlp(args: &NlpArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.steps > 0, "--steps must be at least 1");
    // candle reads its thread count from RAYON_NUM_THREADS, before its pool starts.
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    let mut archs = Vec::new();
    for name in &args.models {
        archs.push(Arch::parse(name).with_context(|| format!("unknown model '{name}': dense, rnn or lstm"))?);
    }
    let mut ours = Vec::new();
    for &arch in &archs {
        let (median, min) = tokio::task::block_in_place(|| candle_step_ms(arch, args))?;
        ours.push((arch, median, min));
    }
    let name = |arch: Arch| Arch::NAMES[arch as usize].to_string();
    let shape = format!(
        "batch {} x maxlen {}, max_features {}, embed {}, hidden {}, RMSprop, {} threads, median of {} steps",
        args.batch, args.maxlen, args.max_features, args.embed, args.hidden, args.threads, args.steps
    );
    if args.no_python {
        let measurements = ours
            .iter()
            .map(|&(arch, median, _)| Measurement::new(format!("{} train step", name(arch)), "steps", 1, median / 1e3))
            .collect();
        return Ok(Report { bench: "nlp", measurements, comparisons: Vec::new(), notes: vec![shape] });
    }
    let flags = [
        ("--threads", args.threads.to_string()),
        ("--steps", args.steps.to_string()),
        ("--warmup", args.warmup.to_string()),
        ("--batch", args.batch.to_string()),
        ("--maxlen", args.maxlen.to_string()),
        ("--max-features", args.max_features.to_string()),
        ("--embed", args.embed.to_string()),
        ("--hidden", args.hidden.to_string()),
        ("--models", args.models.join(",")),
    ];
    let torch = run_torch_script(&args.python, &args.script, &flags).await?;
    let mut comparisons = Vec::new();
    for &(arch, median, _) in &ours {
        let theirs = json_f64(&torch["results"][name(arch)], "median_ms")?;
        comparisons.push(Comparison {
            name: format!("{} train step", name(arch)),
            unit: "steps",
            ours: 1e3 / median,
            python: 1e3 / theirs,
            goal: 1.0,
        });
    }
    let mut notes = vec![shape];
    notes.push(format!(
        "PyTorch {} on the same shapes; ms per step ours / PyTorch: {}",
        torch["torch"].as_str().unwrap_or("?"),
        ours.iter()
            .map(|&(arch, median, _)| {
                let theirs = torch["results"][name(arch)]["median_ms"].as_f64().unwrap_or(f64::NAN);
                format!("{} {median:.1} / {theirs:.1}", name(arch))
            })
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(Report { bench: "nlp", measurements: Vec::new(), comparisons, notes })
}
