//! The DCGAN job through real processes: a coordinator and a worker reading MNIST from the shared
//! directory; sample grids come back as artifacts and the quality score lands in Parquet.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// `SWEEP_DATA_DIR`, else `../shared/data` beside the project (as in CI).
fn data_dir() -> PathBuf {
    std::env::var_os("SWEEP_DATA_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/data"))
}

/// Two epochs on 128 images in batches of 32, scored on small samples: seconds a trial.
const SMALL: &str = r#"
name: dcgan-small
job:
  kind: mnist-dcgan
  epochs: 2
  batch_size: 32
  train_samples: 128
  score_every: 1
  score_samples: 200
  reference_samples: 500
  checkpoint_every: 1
method: grid
metric:
  name: frechet
  goal: minimize
  summary: min
parameters:
  beta1:
    values: [0.5, 0.9]
seeds: 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_dcgan_sweep_stores_grids_and_scores() {
    let data = data_dir();
    assert!(data.join("mnist").is_dir(), "MNIST not at {}: set SWEEP_DATA_DIR", data.display());
    let dir = tempfile::tempdir().unwrap();
    // The classifier behind the score is trained once per cache directory: share the unit tests'.
    let cache = std::env::temp_dir().join("sweep-test-cache");
    let coordinator = Coordinator::start(dir.path(), &[]);
    let _w = Worker::start(
        &coordinator.url,
        dir.path(),
        "gan",
        &["--data-dir", data.to_str().unwrap(), "--cache-dir", cache.to_str().unwrap(), "--offline"],
    );
    let mut client = client(&coordinator.url).await;
    submit(&mut client, SMALL).await;
    let status = wait_finished(&mut client, "dcgan-small", Duration::from_secs(600)).await;
    assert_eq!((status.completed, status.failed), (2, 0), "{status:?}");

    let trials = trials(&mut client, "dcgan-small").await;
    let (_, metrics_dir, _) = export(&mut client, "dcgan-small").await;
    let rows = read_metrics(&metrics_dir);
    let counts = count_by_trial_and_name(&rows);
    for t in &trials {
        // Scores before training and after each epoch; the rest once an epoch.
        for (name, n) in [("frechet", 3), ("class_entropy", 3), ("gen_loss", 2), ("disc_loss", 2), ("epoch", 2)] {
            assert_eq!(counts.get(&(t.trial_id.clone(), name.to_string())), Some(&n), "{name} of {}", t.trial_id);
        }
        let frechet: Vec<f64> =
            rows.iter().filter(|r| r.trial_id == t.trial_id && r.name == "frechet").map(|r| r.value).collect();
        assert_eq!(t.objective, frechet.iter().copied().reduce(f64::min), "the objective is the lowest score");
        let grids: Vec<(&str, u64)> = t.artifacts.iter().map(|a| (a.name.as_str(), a.step)).collect();
        assert_eq!(grids, vec![("grid_epoch_0001.png", 4), ("grid_epoch_0002.png", 8)]);
        for a in &t.artifacts {
            let bytes = std::fs::read(&a.path).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{} is a PNG", a.path);
        }
    }
}
