//! The `sweep` binary as a user meets it: the quick start, spec errors, `--help`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn sweep(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(sweep_bin()).current_dir(dir).args(args).output().expect("running sweep")
}

#[test]
fn run_executes_a_small_sweep_and_prints_the_best_configurations() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("small.yaml");
    std::fs::write(
        &spec,
        r#"
name: small
job: {kind: cartpole-qtable, episodes: 200, report_every: 100}
method: grid
metric: {name: mear, goal: maximize}
parameters:
  lr: {values: [0.05, 0.1]}
seeds: 2
"#,
    )
    .unwrap();
    let out = sweep(dir.path(), &["run", "small.yaml", "--workers", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("4 completed, 0 failed"), "{stdout}");
    assert!(stdout.contains("top configurations by mear"), "{stdout}");
    assert!(stdout.contains("2/2"), "n over seeds shown: {stdout}");
    let trials = dir.path().join("sweep-results/small/trials.parquet");
    assert_eq!(column_len(&read_parquet(&trials)), 4);
    let rows = read_metrics(&dir.path().join("sweep-results/small/metrics"));
    assert_eq!(rows.iter().filter(|r| r.name == "reward").count(), 4 * 200);
}

#[test]
fn an_invalid_spec_names_key_and_line_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "name: bad\njob: {kind: cartpole-qtable}\nmethod: grid\nmetric: {name: mear, goal: maximize}\nparameters:\n  lr:\n    values: []\n  colour:\n    values: [red]\n",
    )
    .unwrap();
    for command in ["validate", "run"] {
        let out = sweep(dir.path(), &[command, "bad.yaml"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command} accepted a bad spec");
        assert!(stderr.contains("bad.yaml line 7: parameters.lr.values"), "{command}: {stderr}");
        assert!(stderr.contains("line 8: parameters.colour"), "{command}: {stderr}");
    }
    assert!(!dir.path().join("sweep-state").exists(), "run stored state for an invalid spec");

    let out = sweep(dir.path(), &["validate", "missing.yaml"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading spec missing.yaml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_refuses_a_bad_spec_and_keeps_what_it_had() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path(), &[]);
    let mut client = client(&coordinator.url).await;
    let good = "name: good\njob: {kind: quadratic}\nmethod: grid\nmetric: {name: loss, goal: minimize}\nparameters:\n  x: {values: [1.0, 2.0]}\n";
    submit(&mut client, good).await;
    for bad in [
        "name: good\njob: {kind: quadratic}\nmethod: grid\nmetric: {name: loss, goal: minimize}\nparameters:\n  x: {values: [3.0]}\n",
        "name: other\njob: {kind: no-such-job}\nmethod: grid\nmetric: {name: loss, goal: minimize}\n",
        "\u{0}\u{1}garbage: [",
    ] {
        let err = client
            .submit(sweep_shared::proto::SubmitRequest { spec_yaml: bad.into(), source_name: "bad.yaml".into(), extend: false })
            .await
            .expect_err("accepted a bad spec");
        assert!(matches!(err.code(), tonic::Code::InvalidArgument | tonic::Code::AlreadyExists), "{err:?}");
    }
    let sweeps = client.list_sweeps(sweep_shared::proto::ListSweepsRequest {}).await.unwrap().into_inner().sweeps;
    assert_eq!(sweeps.len(), 1);
    assert_eq!((sweeps[0].sweep_id.as_str(), sweeps[0].total), ("good", 2));
    let _ = Duration::from_secs(0);
}

#[test]
fn every_subcommand_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for sub in [
        "run",
        "resume",
        "coordinator",
        "worker",
        "submit",
        "status",
        "best",
        "cancel",
        "export",
        "validate",
        "bench",
        "report",
    ] {
        let out = sweep(dir.path(), &[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help failed");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: sweep"), "{sub} --help");
    }
}
