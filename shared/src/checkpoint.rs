//! A trial checkpoint: tensors plus a typed header, stored as one safetensors file.
//!
//! The header (step, counters, RNG state, schedule position...) is the job's own serde type; it
//! travels as JSON in the safetensors `__metadata__` under `sweep.header`, next to `sweep.step` and
//! `sweep.job`. Any safetensors reader (candle, Python) can open the file; [`Checkpoint::decode`]
//! refuses one whose bytes were cut or changed, naming what it found wrong.

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, TensorView};
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorDtype {
    F64,
    F32,
    I64,
    U32,
    U8,
}

impl TensorDtype {
    fn to_safetensors(self) -> Dtype {
        match self {
            TensorDtype::F64 => Dtype::F64,
            TensorDtype::F32 => Dtype::F32,
            TensorDtype::I64 => Dtype::I64,
            TensorDtype::U32 => Dtype::U32,
            TensorDtype::U8 => Dtype::U8,
        }
    }

    fn from_safetensors(dtype: Dtype) -> Option<Self> {
        Some(match dtype {
            Dtype::F64 => TensorDtype::F64,
            Dtype::F32 => TensorDtype::F32,
            Dtype::I64 => TensorDtype::I64,
            Dtype::U32 => TensorDtype::U32,
            Dtype::U8 => TensorDtype::U8,
            _ => return None,
        })
    }
}

/// One tensor's raw little-endian bytes and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorBlob {
    pub dtype: TensorDtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl TensorBlob {
    pub fn from_f64(shape: Vec<usize>, values: &[f64]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        TensorBlob { dtype: TensorDtype::F64, shape, data }
    }

    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        TensorBlob { dtype: TensorDtype::F32, shape, data }
    }

    /// The values of an F32 tensor; `None` for any other dtype.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        if self.dtype != TensorDtype::F32 {
            return None;
        }
        Some(self.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4]))).collect())
    }

    /// The values of an F64 tensor; `None` for any other dtype.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        if self.dtype != TensorDtype::F64 {
            return None;
        }
        Some(self.data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
    }
}

/// Why a checkpoint could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint is not a valid safetensors file: {0}")]
    Format(String),
    #[error("checkpoint lacks metadata key '{0}'")]
    MissingMetadata(&'static str),
    #[error("checkpoint header does not parse: {0}")]
    Header(#[from] serde_json::Error),
    #[error("checkpoint belongs to job '{found}', not '{expected}'")]
    WrongJob { expected: String, found: String },
    #[error("checkpoint tensor '{0}' is missing")]
    MissingTensor(String),
    #[error("checkpoint tensor '{name}' has dtype {dtype}, which sweep does not store")]
    UnsupportedDtype { name: String, dtype: String },
}

/// A job's state at one boundary (an episode or epoch count).
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Job kind that wrote it; restore refuses another kind's checkpoint.
    pub job: String,
    /// The step (episode, epoch) the state belongs to: running resumes at `step`.
    pub step: u64,
    /// The job's typed header, as JSON.
    pub header: serde_json::Value,
    pub tensors: BTreeMap<String, TensorBlob>,
}

impl Checkpoint {
    pub fn new<H: Serialize>(job: &str, step: u64, header: &H) -> Result<Self, CheckpointError> {
        Ok(Checkpoint { job: job.to_string(), step, header: serde_json::to_value(header)?, tensors: BTreeMap::new() })
    }

    pub fn with_tensor(mut self, name: &str, blob: TensorBlob) -> Self {
        self.tensors.insert(name.to_string(), blob);
        self
    }

    /// The typed header, checked to belong to job `kind`.
    pub fn header<H: DeserializeOwned>(&self, kind: &str) -> Result<H, CheckpointError> {
        if self.job != kind {
            return Err(CheckpointError::WrongJob { expected: kind.to_string(), found: self.job.clone() });
        }
        Ok(serde_json::from_value(self.header.clone())?)
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorBlob, CheckpointError> {
        self.tensors.get(name).ok_or_else(|| CheckpointError::MissingTensor(name.to_string()))
    }

    /// Serializes to safetensors bytes.
    pub fn encode(&self) -> Result<Vec<u8>, CheckpointError> {
        let mut metadata = HashMap::new();
        metadata.insert("sweep.job".to_string(), self.job.clone());
        metadata.insert("sweep.step".to_string(), self.step.to_string());
        metadata.insert("sweep.header".to_string(), serde_json::to_string(&self.header)?);
        let mut views = Vec::with_capacity(self.tensors.len());
        for (name, blob) in &self.tensors {
            let view = TensorView::new(blob.dtype.to_safetensors(), blob.shape.clone(), &blob.data)
                .map_err(|e| CheckpointError::Format(format!("tensor '{name}': {e}")))?;
            views.push((name.clone(), view));
        }
        safetensors::serialize(views, Some(metadata)).map_err(|e| CheckpointError::Format(e.to_string()))
    }

    /// Parses safetensors bytes written by [`Checkpoint::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| CheckpointError::Format(e.to_string()))?;
        let tensors =
            safetensors::SafeTensors::deserialize(bytes).map_err(|e| CheckpointError::Format(e.to_string()))?;
        let md = meta.metadata().as_ref().ok_or(CheckpointError::MissingMetadata("__metadata__"))?;
        let job = md.get("sweep.job").ok_or(CheckpointError::MissingMetadata("sweep.job"))?.clone();
        let step = md
            .get("sweep.step")
            .ok_or(CheckpointError::MissingMetadata("sweep.step"))?
            .parse::<u64>()
            .map_err(|e| CheckpointError::Format(format!("sweep.step: {e}")))?;
        let header =
            serde_json::from_str(md.get("sweep.header").ok_or(CheckpointError::MissingMetadata("sweep.header"))?)?;
        let mut out = BTreeMap::new();
        for (name, view) in tensors.tensors() {
            let dtype = TensorDtype::from_safetensors(view.dtype()).ok_or_else(|| {
                CheckpointError::UnsupportedDtype { name: name.clone(), dtype: format!("{:?}", view.dtype()) }
            })?;
            out.insert(name, TensorBlob { dtype, shape: view.shape().to_vec(), data: view.data().to_vec() });
        }
        Ok(Checkpoint { job, step, header, tensors: out })
    }
}

/// Hex sha256 of bytes: the checksum recorded with every stored checkpoint.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Header {
        episode: u64,
        note: String,
    }

    #[test]
    fn encode_decode_round_trip() {
        let ckpt = Checkpoint::new("qtable", 42, &Header { episode: 42, note: "x".into() })
            .unwrap()
            .with_tensor("q", TensorBlob::from_f64(vec![2, 2], &[1.0, -2.0, 3.5, 0.0]));
        let bytes = ckpt.encode().unwrap();
        let back = Checkpoint::decode(&bytes).unwrap();
        assert_eq!(back, ckpt);
        assert_eq!(back.header::<Header>("qtable").unwrap().episode, 42);
        assert_eq!(back.tensor("q").unwrap().to_f64().unwrap(), vec![1.0, -2.0, 3.5, 0.0]);
        assert!(matches!(back.header::<Header>("dqn"), Err(CheckpointError::WrongJob { .. })));
    }

    #[test]
    fn truncated_bytes_are_refused() {
        let ckpt = Checkpoint::new("qtable", 1, &Header { episode: 1, note: String::new() })
            .unwrap()
            .with_tensor("q", TensorBlob::from_f64(vec![3], &[1.0, 2.0, 3.0]));
        let bytes = ckpt.encode().unwrap();
        assert!(Checkpoint::decode(&bytes[..bytes.len() - 5]).is_err());
        assert!(Checkpoint::decode(&bytes[..4]).is_err());
    }
}
