//! The lab's three IMDB classifiers (Chollet, "Deep Learning with Python", chapters 3 and 6):
//!
//! - `dense`: multi-hot `(B, max_features)` -> Dense(16, relu) -> Dense(16, relu) -> Dense(1);
//!   the first layer reads each review's distinct ids instead of a 10,000-wide vector of mostly
//!   zeros: `multi_hot(ids) W = sum of W's rows at ids`, the same numbers (an EmbeddingBag), with
//!   a gather and a scatter-add for the gradient instead of two dense 10,000-deep matmuls;
//! - `rnn`: ids `(B, maxlen)` -> Embedding(max_features, embed) -> SimpleRNN(hidden) -> Dense(1);
//! - `lstm`: the same with LSTM(hidden).
//!
//! The output is one logit per review; the loss is binary cross-entropy in the stable form
//! `relu(x) - x t + log(1 + exp(-|x|))` (candle's own returns NaN past |x| ~ 17).
//!
//! Initialisation is Keras': embeddings uniform(-0.05, 0.05); dense and input kernels Glorot
//! uniform; recurrent kernels orthogonal; biases zero, except the LSTM forget gate's at 1
//! (`unit_forget_bias`). Every random number comes from the trial's RNG, so a seed fixes the weights.
//!
//! Variables are named (`embedding`, `rnn.w_ih`, `rnn.w_hh`, `rnn.bias`, `out.w`, `out.b`,
//! `dense1.kernel`, ...) so checkpoints and the optimizer address them by name. Linear weights are
//! `(out, in)` as in PyTorch, except `dense1.kernel`, `(max_features, units)` as in Keras, whose
//! rows the first dense layer gathers.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use super::bag::bag_sum;
use super::recurrent::{CellKind, Recurrent};

/// Variables copied to the host: `(name, shape, values)`.
pub type NamedWeights = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Which model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Dense,
    Rnn,
    Lstm,
}

impl Arch {
    pub const NAMES: &'static [&'static str] = &["dense", "rnn", "lstm"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "dense" => Some(Arch::Dense),
            "rnn" => Some(Arch::Rnn),
            "lstm" => Some(Arch::Lstm),
            _ => None,
        }
    }

    /// Whether the model reads multi-hot vectors, given as each review's distinct ids padded with
    /// 0 (else padded id sequences).
    pub fn multi_hot(self) -> bool {
        self == Arch::Dense
    }
}

/// Sizes of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelDims {
    pub max_features: usize,
    pub embed: usize,
    pub hidden: usize,
    /// Width of the dense model's two hidden layers.
    pub dense_units: usize,
}

/// One model's named variables and how to run them.
pub struct SentimentModel {
    pub arch: Arch,
    pub dims: ModelDims,
    pub vars: BTreeMap<String, Var>,
}

fn uniform(rng: &mut impl Rng, n: usize, limit: f64) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-limit..limit) as f32).collect()
}

/// Keras' glorot_uniform: `fan_in * fan_out` draws from U(-l, l), l = sqrt(6 / (fan_in + fan_out)).
pub(crate) fn glorot(rng: &mut impl Rng, fan_in: usize, fan_out: usize) -> Vec<f32> {
    uniform(rng, fan_in * fan_out, (6.0 / (fan_in + fan_out) as f64).sqrt())
}

/// A `(rows, cols)` matrix with orthonormal columns (rows >= cols) or rows, as Keras' Orthogonal:
/// Gram-Schmidt on a standard normal matrix, which gives the Q of its QR with a positive diagonal.
pub fn orthogonal(rng: &mut impl Rng, rows: usize, cols: usize) -> Vec<f32> {
    let (long, short) = (rows.max(cols), rows.min(cols));
    // `short` vectors of length `long`, orthonormalised.
    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(short);
    while basis.len() < short {
        let mut v: Vec<f64> = (0..long).map(|_| StandardNormal.sample(rng)).collect();
        for b in &basis {
            let dot: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
            v.iter_mut().zip(b).for_each(|(x, y)| *x -= dot * y);
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 1e-6 {
            basis.push(v.into_iter().map(|x| x / norm).collect());
        }
    }
    let mut out = vec![0f32; rows * cols];
    for (k, b) in basis.iter().enumerate() {
        for (i, &x) in b.iter().enumerate() {
            // Basis vectors are the columns when rows >= cols, else the rows.
            let at = if rows >= cols { i * cols + k } else { k * cols + i };
            out[at] = x as f32;
        }
    }
    out
}

impl SentimentModel {
    /// A freshly initialised model; draws its weights from `rng`.
    pub fn new(arch: Arch, dims: ModelDims, rng: &mut impl Rng, device: &Device) -> candle_core::Result<Self> {
        let mut vars = BTreeMap::new();
        let mut add = |name: &str, data: Vec<f32>, shape: &[usize]| -> candle_core::Result<()> {
            let t = Tensor::from_vec(data, shape, device)?;
            vars.insert(name.to_string(), Var::from_tensor(&t)?);
            Ok(())
        };
        match arch {
            Arch::Dense => {
                let (v, u) = (dims.max_features, dims.dense_units);
                add("dense1.kernel", glorot(rng, v, u), &[v, u])?;
                add("dense1.b", vec![0.0; u], &[u])?;
                add("dense2.w", glorot(rng, u, u), &[u, u])?;
                add("dense2.b", vec![0.0; u], &[u])?;
                add("out.w", glorot(rng, u, 1), &[1, u])?;
                add("out.b", vec![0.0], &[1])?;
            }
            Arch::Rnn | Arch::Lstm => {
                let kind = if arch == Arch::Rnn { CellKind::Rnn } else { CellKind::Lstm };
                let (e, h) = (dims.embed, dims.hidden);
                let g = kind.gates() * h;
                add("embedding", uniform(rng, dims.max_features * e, 0.05), &[dims.max_features, e])?;
                // Keras draws the kernel (E, G*H) and the recurrent kernel (H, G*H); stored transposed.
                let kernel = glorot(rng, e, g);
                add("rnn.w_ih", transpose(&kernel, e, g), &[g, e])?;
                let recurrent = orthogonal(rng, h, g);
                add("rnn.w_hh", transpose(&recurrent, h, g), &[g, h])?;
                let mut bias = vec![0.0; g];
                if kind == CellKind::Lstm {
                    bias[h..2 * h].fill(1.0);
                }
                add("rnn.bias", bias, &[g])?;
                add("out.w", glorot(rng, h, 1), &[1, h])?;
                add("out.b", vec![0.0], &[1])?;
            }
        }
        Ok(SentimentModel { arch, dims, vars })
    }

    fn var(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.vars.get(name).map(|v| v.as_tensor()).ok_or_else(|| candle_core::Error::Msg(format!("no variable {name}")))
    }

    fn linear(&self, x: &Tensor, name: &str) -> candle_core::Result<Tensor> {
        x.matmul(&self.var(&format!("{name}.w"))?.t()?)?.broadcast_add(self.var(&format!("{name}.b"))?)
    }

    /// Logits `(B,)` for a batch of ids `(B, L)` u32: for `dense` each review's distinct ids padded
    /// with 0 (the multi-hot vector's ones), otherwise the padded sequence. `train` keeps what
    /// backward needs.
    pub fn forward(&self, input: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let features = match self.arch {
            Arch::Dense => {
                let summed = bag_sum(self.var("dense1.kernel")?, input)?;
                let h = summed.broadcast_add(self.var("dense1.b")?)?.relu()?;
                self.linear(&h, "dense2")?.relu()?
            }
            Arch::Rnn | Arch::Lstm => {
                let kind = if self.arch == Arch::Rnn { CellKind::Rnn } else { CellKind::Lstm };
                let (b, t) = input.dims2()?;
                let embedded = self.var("embedding")?.index_select(&input.flatten_all()?, 0)?;
                let layer = Recurrent::new(
                    kind,
                    self.var("rnn.w_ih")?.clone(),
                    self.var("rnn.w_hh")?.clone(),
                    self.var("rnn.bias")?.clone(),
                )?;
                layer.last(&embedded.reshape((b, t, self.dims.embed))?, train)?
            }
        };
        self.linear(&features, "out")?.squeeze(1)
    }

    /// Weights as host f32 vectors by name, for checkpoints.
    pub fn weights(&self) -> candle_core::Result<NamedWeights> {
        host_weights(&self.vars)
    }

    /// Replaces one variable's values; the shape must match.
    pub fn set(&self, name: &str, shape: &[usize], data: Vec<f32>) -> candle_core::Result<()> {
        set_weight(&self.vars, name, shape, data)
    }
}

/// Named variables as host f32 vectors, for checkpoints.
pub fn host_weights(vars: &BTreeMap<String, Var>) -> candle_core::Result<NamedWeights> {
    vars.iter()
        .map(|(name, var)| Ok((name.clone(), var.dims().to_vec(), var.as_tensor().flatten_all()?.to_vec1::<f32>()?)))
        .collect()
}

/// Replaces one named variable's values; the shape must match.
pub fn set_weight(
    vars: &BTreeMap<String, Var>,
    name: &str,
    shape: &[usize],
    data: Vec<f32>,
) -> candle_core::Result<()> {
    let var = vars.get(name).ok_or_else(|| candle_core::Error::Msg(format!("no variable {name}")))?;
    if var.dims() != shape {
        candle_core::bail!("variable {name}: checkpoint shape {shape:?}, model shape {:?}", var.dims());
    }
    var.set(&Tensor::from_vec(data, shape, var.device())?)
}

fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// Mean binary cross-entropy of `logits` against 0/1 `targets` (both `(B,)`, f32), stable form.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let loss = (logits.relu()? - (logits * targets)?)? + logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    loss?.mean_all()
}

/// Correct predictions (logit > 0 means positive) in a batch.
pub fn correct(logits: &Tensor, targets: &Tensor) -> candle_core::Result<u64> {
    let predicted = logits.gt(0.0)?.to_dtype(DType::F32)?;
    Ok(predicted.eq(targets)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn orthogonal_columns_are_orthonormal() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for (rows, cols) in [(8, 3), (3, 8), (5, 5)] {
            let m = orthogonal(&mut rng, rows, cols);
            let (long, short) = (rows.max(cols), rows.min(cols));
            let at = |i: usize, k: usize| if rows >= cols { m[i * cols + k] } else { m[k * cols + i] } as f64;
            for a in 0..short {
                for b in 0..short {
                    let dot: f64 = (0..long).map(|i| at(i, a) * at(i, b)).sum();
                    let want = if a == b { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-5, "{rows}x{cols} ({a},{b}): {dot}");
                }
            }
        }
    }

    #[test]
    fn stable_bce_is_finite_and_right_for_large_logits() {
        let logits = Tensor::new(&[40f32, -40.0, 0.0], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[1f32, 1.0, 0.0], &Device::Cpu).unwrap();
        let loss = bce_with_logits(&logits, &targets).unwrap().to_scalar::<f32>().unwrap();
        // (0 + 40 + ln 2) / 3
        assert!((loss - (40.0 + std::f32::consts::LN_2) / 3.0).abs() < 1e-4, "{loss}");
    }

    #[test]
    fn a_seed_fixes_the_weights() {
        let dims = ModelDims { max_features: 50, embed: 4, hidden: 3, dense_units: 5 };
        for arch in [Arch::Dense, Arch::Rnn, Arch::Lstm] {
            let w = |seed| {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                SentimentModel::new(arch, dims, &mut rng, &Device::Cpu).unwrap().weights().unwrap()
            };
            assert_eq!(w(1), w(1));
            assert_ne!(w(1), w(2));
        }
    }
}
