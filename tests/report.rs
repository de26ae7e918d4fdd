//! `sweep report` as a user runs it: a real small sweep through `sweep run`, then the report of
//! its Parquet output; a hand-made results directory with NLP and unknown metric names and a GAN-like
//! artifact (the generic path); and the errors for a missing or corrupt input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow_array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{Field, Schema};
use common::*;
use parquet::arrow::ArrowWriter;

fn sweep(dir: &Path, args: &[&str]) -> Output {
    Command::new(sweep_bin()).current_dir(dir).args(args).output().expect("running sweep")
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
}

/// Decodes `path` as a PNG; returns its size.
fn png_size(path: &Path) -> (u32, u32) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
    let mut pixels = vec![0; reader.output_buffer_size()];
    reader.next_frame(&mut pixels).unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()));
    assert!(pixels.iter().any(|&p| p < 128), "{} is blank", path.display());
    (reader.info().width, reader.info().height)
}

/// The `src="..."` of every image in the page.
fn image_sources(html: &str) -> Vec<String> {
    html.split("<img src=\"").skip(1).filter_map(|rest| rest.split('"').next()).map(str::to_string).collect()
}

/// Checks that `dir` holds exactly the PNGs `expected` (all valid) and that the page shows each.
fn assert_report_files(dir: &Path, expected: &[&str]) -> String {
    let html = std::fs::read_to_string(dir.join("index.html")).expect("index.html");
    let mut pngs: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".png"))
        .collect();
    pngs.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(pngs, want, "the report's images");
    let sources = image_sources(&html);
    for png in &pngs {
        let size = png_size(&dir.join(png));
        assert!(size.0 > 0 && size.1 > 0, "{png} has no pixels");
        assert!(sources.contains(png), "index.html does not show {png}");
    }
    for source in &sources {
        assert!(dir.join(source).is_file(), "index.html shows {source}, which is not in {}", dir.display());
    }
    assert!(!html.contains("http://") && !html.contains("https://"), "the page loads nothing from elsewhere");
    html
}

#[test]
fn a_small_qtable_sweep_gets_the_lab_figure_curves_and_objective_plots() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("small.yaml"),
        r#"
name: small
job: {kind: cartpole-qtable, episodes: 600, report_every: 100}
method: grid
metric: {name: mear, goal: maximize}
parameters:
  lr: {values: [0.05, 0.1]}
  tie_break: {values: [left]}
seeds: 2
"#,
    )
    .unwrap();
    let out = sweep(dir.path(), &["run", "small.yaml", "--workers", "2"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "sweep run failed:\n{stdout}\n{stderr}");

    let out = sweep(dir.path(), &["report", "small"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "sweep report failed:\n{stdout}\n{stderr}");
    let report_dir = dir.path().join("sweep-results/small/report");
    assert_eq!(stdout.trim(), report_dir.join("index.html").strip_prefix(dir.path()).unwrap().to_str().unwrap());
    let html = assert_report_files(
        &report_dir,
        &["lab_mear_rgr.png", "metric_epsilon.png", "metric_reward.png", "objective_vs_lr.png"],
    );
    assert!(html.contains("objective: mear, maximize (declared in sweep.json)"), "the objective is found: {html}");
    assert!(html.contains("4 trials (4 completed) in 2 configurations"), "{html}");
    // Two ranked rows with their lr; tie_break does not vary, so it is no column.
    assert!(html.contains("<th>lr</th>") && !html.contains("<th>tie_break</th>"), "{html}");
    assert_eq!(html.matches("<td class=\"num\"><span class=\"swatch\"").count(), 2, "{html}");
    assert!(html.contains("2/2"), "n of 2 seeds: {html}");
    // Two panels (MEAR, RGR) make the lab figure taller than a one-panel figure.
    let (_, lab_height) = png_size(&report_dir.join("lab_mear_rgr.png"));
    let (_, reward_height) = png_size(&report_dir.join("metric_reward.png"));
    assert!(lab_height > reward_height, "lab figure {lab_height} px, reward {reward_height} px");

    // --output elsewhere, --top 1: one configuration in the legends, said on the page.
    // An earlier report's figure is replaced there; the user's own files stay.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("metric_gone.png"), b"an earlier report's figure").unwrap();
    std::fs::write(elsewhere.join("notes.txt"), b"mine").unwrap();
    let out = sweep(dir.path(), &["report", "small", "--output", elsewhere.to_str().unwrap(), "--top", "1"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let html = assert_report_files(
        &elsewhere,
        &["lab_mear_rgr.png", "metric_epsilon.png", "metric_reward.png", "objective_vs_lr.png"],
    );
    assert!(elsewhere.join("notes.txt").is_file(), "a file the report did not write was removed");
    assert!(html.contains("show the top 1 configurations"), "{html}");
    assert_eq!(html.matches("<span class=\"swatch\"").count(), 1, "{html}");
}

const TRIALS: &[(&str, &str, i64, &str, f64)] = &[
    // trial, config, seed, model, objective (max val_acc)
    ("t-dense-1", "c-dense", 1, "dense", 0.80),
    ("t-dense-2", "c-dense", 2, "dense", 0.84),
    ("t-lstm-1", "c-lstm", 1, "lstm", 0.86),
    ("t-lstm-2", "c-lstm", 2, "lstm", 0.90),
];

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let fields: Vec<Field> = columns.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns.into_iter().map(|(_, a)| a).collect()).unwrap();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn strings(values: impl IntoIterator<Item = String>) -> ArrayRef {
    Arc::new(StringArray::from(values.into_iter().collect::<Vec<_>>()))
}

/// A results directory as an NLP sweep leaves it (3 epochs of 10 batches), plus a metric no
/// figure knows (`grad_norm`) and a PNG artifact: what the report's generic path must handle.
fn hand_made_results(out: &Path) -> PathBuf {
    let dir = out.join("mixed");
    std::fs::create_dir_all(dir.join("metrics")).unwrap();
    let n = TRIALS.len();
    let best_steps: Vec<i64> = TRIALS.iter().map(|_| 30).collect();
    write_parquet(
        &dir.join("trials.parquet"),
        vec![
            ("trial_id", strings(TRIALS.iter().map(|t| t.0.to_string()))),
            ("sweep_id", strings(TRIALS.iter().map(|_| "mixed".to_string()))),
            ("config_id", strings(TRIALS.iter().map(|t| t.1.to_string()))),
            ("ordinal", Arc::new(Int64Array::from((0..n as i64).collect::<Vec<_>>()))),
            ("seed", Arc::new(Int64Array::from(TRIALS.iter().map(|t| t.2).collect::<Vec<_>>()))),
            ("model", strings(TRIALS.iter().map(|t| t.3.to_string()))),
            ("lr", Arc::new(Float64Array::from(vec![0.001; n]))),
            ("status", strings(TRIALS.iter().map(|_| "completed".to_string()))),
            ("attempts", Arc::new(Int64Array::from(vec![1; n]))),
            ("objective", Arc::new(Float64Array::from(TRIALS.iter().map(|t| t.4).collect::<Vec<_>>()))),
            ("best_value", Arc::new(Float64Array::from(TRIALS.iter().map(|t| t.4).collect::<Vec<_>>()))),
            ("best_step", Arc::new(Int64Array::from(best_steps.clone()))),
            ("last_value", Arc::new(Float64Array::from(TRIALS.iter().map(|t| t.4).collect::<Vec<_>>()))),
            ("last_step", Arc::new(Int64Array::from(best_steps))),
        ],
    );
    let mut rows: Vec<(String, i64, String, f64)> = Vec::new();
    for &(trial, _, seed, _, objective) in TRIALS {
        let s = seed as f64 * 0.01;
        for step in 1..=30i64 {
            rows.push((trial.into(), step, "batch_loss".into(), 0.7 - step as f64 * 0.01 + s));
            rows.push((trial.into(), step, "grad_norm".into(), 1.0 + s));
        }
        for epoch in 1..=3i64 {
            let step = epoch * 10;
            let e = epoch as f64;
            rows.push((trial.into(), step, "epoch".into(), e));
            rows.push((trial.into(), step, "loss".into(), 0.6 - 0.1 * e + s));
            rows.push((trial.into(), step, "val_loss".into(), 0.65 - 0.08 * e + s));
            rows.push((trial.into(), step, "acc".into(), 0.6 + 0.1 * e));
            // val_acc rises to the objective at the last epoch.
            rows.push((trial.into(), step, "val_acc".into(), objective - 0.05 * (3.0 - e)));
        }
        rows.push((trial.into(), 30, "test_acc".into(), objective - 0.02));
    }
    let n = rows.len();
    write_parquet(
        &dir.join("metrics/part-1-1000.parquet"),
        vec![
            ("trial_id", strings(rows.iter().map(|r| r.0.clone()))),
            ("attempt", Arc::new(Int32Array::from(vec![1; n]))),
            ("step", Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>()))),
            ("wall_time", Arc::new(TimestampMicrosecondArray::from(vec![0; n]).with_timezone("UTC"))),
            ("name", strings(rows.iter().map(|r| r.2.clone()))),
            ("value", Arc::new(Float64Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>()))),
        ],
    );
    // The best trial (t-lstm-2) has a sample grid; another trial's must not be copied.
    for (trial, name) in [("t-lstm-2", "grid_epoch_0001.png"), ("t-dense-1", "grid_epoch_0001.png")] {
        let artifacts = dir.join("artifacts").join(trial);
        std::fs::create_dir_all(&artifacts).unwrap();
        let file = std::fs::File::create(artifacts.join(name)).unwrap();
        let mut encoder = png::Encoder::new(file, 8, 8);
        encoder.set_color(png::ColorType::Grayscale);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[0u8; 64]).unwrap();
    }
    dir
}

#[test]
fn nlp_and_unknown_metrics_take_the_generic_path() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    hand_made_results(&results);
    let out = sweep(dir.path(), &["report", "mixed", "--out", "results"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "sweep report failed:\n{stdout}\n{stderr}");
    let html = assert_report_files(
        &results.join("mixed/report"),
        &[
            "nlp_loss_accuracy.png",
            "metric_batch_loss.png",
            "metric_grad_norm.png",
            "objective_vs_model.png",
            "artifact_grid_epoch_0001.png",
        ],
    );
    assert!(html.contains("objective: val_acc, maximize (goal inferred"), "{html}");
    // lstm first: mean 0.88 ± 0.0283 over seeds 0.86 and 0.90; test_acc a column of its own.
    let lstm = html.find("<td>lstm</td>").expect("an lstm row");
    let dense = html.find("<td>dense</td>").expect("a dense row");
    assert!(lstm < dense, "lstm (mean 0.88) ranks above dense (0.82)");
    assert!(html.contains("0.88 ± 0.0283"), "{html}");
    assert!(html.contains("<th>test_acc mean ± std</th>") && html.contains("0.86 ± 0.0283"), "{html}");
    assert!(html.contains("best trial, t-lstm-2"), "the best trial's samples: {html}");
    assert!(html.contains("epoch 1"), "{html}");
    assert!(html.contains("<th>median</th>") && html.contains("<th>95% CI of the mean</th>"), "{html}");
    assert!(html.contains("ranked by the mean of the objective"), "{html}");

    // --by as in `sweep best`: the page says which aggregate ranked it; a typo is refused by name.
    let out = sweep(dir.path(), &["report", "mixed", "--out", "results", "--by", "bound"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "sweep report --by bound failed:\n{stdout}\n{stderr}");
    let html = std::fs::read_to_string(results.join("mixed/report/index.html")).unwrap();
    assert!(html.contains("ranked by the lower end of the 95% interval"), "{html}");
    let out = sweep(dir.path(), &["report", "mixed", "--out", "results", "--by", "best"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("mean, median, bound"), "{}", text(&out).1);
}

#[test]
fn missing_and_corrupt_inputs_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = sweep(dir.path(), &["report", "nothing"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("no results of the sweep at sweep-results/nothing"), "{stderr}");

    let sweep_dir = dir.path().join("sweep-results/broken");
    std::fs::create_dir_all(&sweep_dir).unwrap();
    let out = sweep(dir.path(), &["report", "broken"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("sweep-results/broken/trials.parquet does not exist"), "{stderr}");

    std::fs::write(sweep_dir.join("trials.parquet"), b"PAR1 this is not parquet").unwrap();
    let out = sweep(dir.path(), &["report", "broken"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("reading sweep-results/broken/trials.parquet"), "{stderr}");

    // A good trials file and a corrupt metrics part: the part is named.
    let results = dir.path().join("results");
    let mixed = hand_made_results(&results);
    let part = mixed.join("metrics/part-1-1000.parquet");
    let bytes = std::fs::read(&part).unwrap();
    std::fs::write(&part, &bytes[..bytes.len() / 2]).unwrap();
    let out = sweep(dir.path(), &["report", "mixed", "--out", "results"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("reading results/mixed/metrics/part-1-1000.parquet"), "{stderr}");
}
