//! What the candle jobs' checkpoints share: named variables and optimizer moments as f32 tensors
//! under a key prefix (`w.<var>`, `opt.m.<var>`...), and the way back.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};
use sweep_shared::checkpoint::{Checkpoint, TensorBlob};

use super::nlp::models::{host_weights, set_weight};
use super::nlp::optim::Optimizer;
use super::JobError;

fn failed(e: candle_core::Error) -> JobError {
    JobError::Failed(format!("candle: {e}"))
}

/// One tensor under `name`, as f32.
pub fn put_tensor(checkpoint: Checkpoint, name: &str, tensor: &Tensor) -> Result<Checkpoint, JobError> {
    let data = tensor.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(failed)?;
    Ok(checkpoint.with_tensor(name, TensorBlob::from_f32(tensor.dims().to_vec(), &data)))
}

/// The f32 tensor stored under `name`, on `device`; a missing or non-f32 one is named.
pub fn get_tensor(checkpoint: &Checkpoint, name: &str, device: &Device) -> Result<Tensor, JobError> {
    let blob = checkpoint.tensor(name)?;
    let data = blob.to_f32().ok_or_else(|| JobError::Failed(format!("checkpoint tensor {name} is not f32")))?;
    Tensor::from_vec(data, blob.shape.as_slice(), device).map_err(failed)
}

/// Every variable under `<prefix>.<name>`.
pub fn put_vars(
    mut checkpoint: Checkpoint,
    prefix: &str,
    vars: &BTreeMap<String, Var>,
) -> Result<Checkpoint, JobError> {
    for (name, shape, data) in host_weights(vars).map_err(failed)? {
        checkpoint = checkpoint.with_tensor(&format!("{prefix}.{name}"), TensorBlob::from_f32(shape, &data));
    }
    Ok(checkpoint)
}

/// Sets every variable from `<prefix>.<name>`; a missing tensor or another shape is an error that
/// names it (a checkpoint of another model).
pub fn restore_vars(checkpoint: &Checkpoint, prefix: &str, vars: &BTreeMap<String, Var>) -> Result<(), JobError> {
    for name in vars.keys() {
        let key = format!("{prefix}.{name}");
        let blob = checkpoint.tensor(&key)?;
        let data = blob.to_f32().ok_or_else(|| JobError::Failed(format!("checkpoint tensor {key} is not f32")))?;
        set_weight(vars, name, &blob.shape, data).map_err(failed)?;
    }
    Ok(())
}

/// The optimizer's moments under `<prefix>.<moment name>` (its step count, `Optimizer::steps`,
/// belongs in the job's header).
pub fn put_optimizer(mut checkpoint: Checkpoint, prefix: &str, optimizer: &Optimizer) -> Result<Checkpoint, JobError> {
    for (name, tensor) in optimizer.state().1 {
        checkpoint = put_tensor(checkpoint, &format!("{prefix}.{name}"), &tensor)?;
    }
    Ok(checkpoint)
}

/// Restores what [`put_optimizer`] stored, with the step count from the header.
pub fn restore_optimizer(
    checkpoint: &Checkpoint,
    prefix: &str,
    optimizer: &mut Optimizer,
    steps: u64,
    device: &Device,
) -> Result<(), JobError> {
    let mut moments = Vec::new();
    for key in checkpoint.tensors.keys() {
        if let Some(name) = key.strip_prefix(prefix).and_then(|k| k.strip_prefix('.')) {
            moments.push((name.to_string(), get_tensor(checkpoint, key, device)?));
        }
    }
    optimizer.restore(steps, moments);
    Ok(())
}
