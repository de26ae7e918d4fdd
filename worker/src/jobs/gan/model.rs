//! The TensorFlow DCGAN tutorial's two networks, NCHW, on the fast CPU layers of this module.
//!
//! Generator: `Dense(noise -> 7*7*256, no bias) BN LeakyReLU -> (256, 7, 7)
//! -> ConvT 128 k5 s1 BN LeakyReLU -> ConvT 64 k5 s2 BN LeakyReLU -> ConvT 1 k5 s2 tanh`
//! (7 -> 7 -> 14 -> 28; the transposed convolutions have no bias, as in the tutorial).
//!
//! Discriminator: `Conv 64 k5 s2 LeakyReLU Dropout -> Conv 128 k5 s2 LeakyReLU Dropout -> Dense 1`
//! (28 -> 14 -> 7), giving logits.
//!
//! TF's 'same' padding is PyTorch padding 2 here (plus output padding 1 for the stride-2
//! transposed convolutions): the shapes are the tutorial's, the image sits one pixel differently
//! (../shared/CANDLE-NOTES.md). Weights start as Keras' glorot_uniform (drawn from the trial RNG,
//! so a seed fixes them), biases at 0, BatchNorm at gamma 1 / beta 0 with eps 1e-3 and Keras
//! momentum 0.99 (0.01 in the PyTorch convention [`BatchNorm`] uses). Dropout masks are drawn from
//! the trial RNG too, so a seed fixes a whole run.
//!
//! Variables are addressed by name in one map per network (the optimizers and checkpoints use the
//! names); BatchNorm running statistics live in the [`BatchNorm`]s, outside those maps.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::Rng;

use super::conv::{conv2d, conv_transpose2d};
use super::layers::{bias_add, bias_leaky_dropout, leaky_relu, BatchNorm};

/// BatchNorm settings of the tutorial (Keras defaults).
pub const BN_EPS: f64 = 1e-3;
pub const BN_MOMENTUM: f64 = 0.01;

/// The swept sizes and rates of both networks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GanDims {
    pub noise: usize,
    /// LeakyReLU's slope for negative inputs (Keras' default alpha 0.3 in the tutorial).
    pub slope: f64,
    /// The discriminator's dropout rate.
    pub dropout: f64,
}

/// Keras' glorot_uniform for a layer with these fans.
fn glorot(rng: &mut impl Rng, n: usize, fan_in: usize, fan_out: usize) -> Vec<f32> {
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
    (0..n).map(|_| rng.random_range(-limit..limit) as f32).collect()
}

fn add_var(
    vars: &mut BTreeMap<String, Var>,
    name: &str,
    data: Vec<f32>,
    shape: &[usize],
    device: &Device,
) -> candle_core::Result<()> {
    vars.insert(name.to_string(), Var::from_tensor(&Tensor::from_vec(data, shape, device)?)?);
    Ok(())
}

fn var<'a>(vars: &'a BTreeMap<String, Var>, name: &str) -> candle_core::Result<&'a Tensor> {
    vars.get(name).map(Var::as_tensor).ok_or_else(|| candle_core::Error::Msg(format!("no variable {name}")))
}

/// The BatchNorm layers' gamma and beta, moved from their VarMap into the network's map.
fn take_varmap(map: &VarMap, vars: &mut BTreeMap<String, Var>) -> candle_core::Result<()> {
    let data = map.data().lock().map_err(|_| candle_core::Error::Msg("BatchNorm variables are poisoned".into()))?;
    vars.extend(data.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(())
}

/// The generator: noise `(B, noise)` to images `(B, 1, 28, 28)` in [-1, 1].
pub struct Generator {
    pub dims: GanDims,
    pub vars: BTreeMap<String, Var>,
    pub norms: [BatchNorm; 3],
}

impl Generator {
    pub fn new(dims: GanDims, rng: &mut impl Rng, device: &Device) -> candle_core::Result<Self> {
        let mut vars = BTreeMap::new();
        let n0 = 7 * 7 * 256;
        add_var(&mut vars, "dense.w", glorot(rng, dims.noise * n0, dims.noise, n0), &[dims.noise, n0], device)?;
        for (name, c_in, c_out) in [("convt1.w", 256, 128), ("convt2.w", 128, 64), ("convt3.w", 64, 1)] {
            let data = glorot(rng, c_in * c_out * 25, c_in * 25, c_out * 25);
            add_var(&mut vars, name, data, &[c_in, c_out, 5, 5], device)?;
        }
        let bn_map = VarMap::new();
        let vb = VarBuilder::from_varmap(&bn_map, DType::F32, device);
        let norms = [
            BatchNorm::new(n0, BN_EPS, BN_MOMENTUM, vb.pp("bn0"))?,
            BatchNorm::new(128, BN_EPS, BN_MOMENTUM, vb.pp("bn1"))?,
            BatchNorm::new(64, BN_EPS, BN_MOMENTUM, vb.pp("bn2"))?,
        ];
        take_varmap(&bn_map, &mut vars)?;
        Ok(Generator { dims, vars, norms })
    }

    /// Images from noise; `train` normalises with batch statistics and updates the running ones.
    pub fn forward(&self, z: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let slope = self.dims.slope;
        let h = z.matmul(var(&self.vars, "dense.w")?)?;
        let h = self.norms[0].forward_leaky_t(&h, train, slope)?;
        let h = h.reshape((z.dim(0)?, 256, 7, 7))?;
        let h = conv_transpose2d(&h, var(&self.vars, "convt1.w")?, 1, 2, 0)?;
        let h = self.norms[1].forward_leaky_t(&h, train, slope)?;
        let h = conv_transpose2d(&h, var(&self.vars, "convt2.w")?, 2, 2, 1)?;
        let h = self.norms[2].forward_leaky_t(&h, train, slope)?;
        conv_transpose2d(&h, var(&self.vars, "convt3.w")?, 2, 2, 1)?.tanh()
    }
}

/// The discriminator: images `(B, 1, 28, 28)` to logits `(B,)`.
pub struct Discriminator {
    pub dims: GanDims,
    pub vars: BTreeMap<String, Var>,
}

impl Discriminator {
    pub fn new(dims: GanDims, rng: &mut impl Rng, device: &Device) -> candle_core::Result<Self> {
        let mut vars = BTreeMap::new();
        for (name, c_in, c_out) in [("conv1", 1, 64), ("conv2", 64, 128)] {
            let data = glorot(rng, c_in * c_out * 25, c_in * 25, c_out * 25);
            add_var(&mut vars, &format!("{name}.w"), data, &[c_out, c_in, 5, 5], device)?;
            add_var(&mut vars, &format!("{name}.b"), vec![0.0; c_out], &[c_out], device)?;
        }
        let flat = 128 * 7 * 7;
        add_var(&mut vars, "dense.w", glorot(rng, flat, flat, 1), &[flat, 1], device)?;
        add_var(&mut vars, "dense.b", vec![0.0], &[1], device)?;
        Ok(Discriminator { dims, vars })
    }

    /// Logits of `images`; with `dropout_rng` the dropout layers are on (training), their masks
    /// drawn from it.
    pub fn forward(
        &self,
        images: &Tensor,
        mut dropout_rng: Option<&mut dyn rand::RngCore>,
    ) -> candle_core::Result<Tensor> {
        let mut h = images.clone();
        for name in ["conv1", "conv2"] {
            let z = conv2d(&h, var(&self.vars, &format!("{name}.w"))?, 2, 2)?;
            let bias = var(&self.vars, &format!("{name}.b"))?;
            h = match dropout_rng.as_deref_mut() {
                Some(rng) => bias_leaky_dropout(&z, bias, self.dims.slope, &dropout_mask(&z, self.dims.dropout, rng)?)?,
                None => leaky_relu(&bias_add(&z, bias)?, self.dims.slope)?,
            };
        }
        let h = h.flatten_from(1)?;
        h.matmul(var(&self.vars, "dense.w")?)?.broadcast_add(var(&self.vars, "dense.b")?)?.squeeze(1)
    }
}

/// An inverted-dropout mask shaped like `x`, drawn from `rng`: each value is 0 with probability
/// `rate` (to 1/65,536), else `1 / (1 - rate)`.
pub fn dropout_mask(x: &Tensor, rate: f64, rng: &mut dyn rand::RngCore) -> candle_core::Result<Tensor> {
    let n = x.elem_count();
    if rate <= 0.0 {
        return Tensor::ones(x.shape(), x.dtype(), x.device());
    }
    let keep = 1.0 - rate;
    let scale = (1.0 / keep) as f32;
    // Four 16-bit draws from each 64-bit one; a value is kept when its draw is below keep * 2^16.
    let threshold = (keep * 65_536.0).round() as u64;
    let mut mask = Vec::with_capacity(n);
    while mask.len() < n {
        let word = rng.next_u64();
        for k in 0..4.min(n - mask.len()) {
            mask.push(if (word >> (16 * k)) & 0xFFFF < threshold { scale } else { 0.0 });
        }
    }
    Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const DIMS: GanDims = GanDims { noise: 100, slope: 0.3, dropout: 0.3 };

    #[test]
    fn shapes_through_both_networks() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let dev = Device::Cpu;
        let g = Generator::new(DIMS, &mut rng, &dev).unwrap();
        let d = Discriminator::new(DIMS, &mut rng, &dev).unwrap();
        let z = Tensor::randn(0f32, 1.0, (3, 100), &dev).unwrap();
        for train in [true, false] {
            let images = g.forward(&z, train).unwrap();
            assert_eq!(images.dims(), &[3, 1, 28, 28]);
            let values = images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)), "tanh output in [-1, 1]");
            assert_eq!(d.forward(&images, Some(&mut rng)).unwrap().dims(), &[3]);
            assert_eq!(d.forward(&images, None).unwrap().dims(), &[3]);
        }
        let count = |vars: &BTreeMap<String, Var>| vars.values().map(|v| v.elem_count()).sum::<usize>();
        // The tutorial's model.summary(): 2,330,944 generator parameters of which 2*(12544+128+64)
        // are BatchNorm's gamma/beta (TF also counts the running stats: 25,472 non-trainable);
        // 212,865 discriminator parameters.
        assert_eq!(count(&g.vars), 2_330_944 - 25_472);
        assert_eq!(count(&d.vars), 212_865);
    }

    #[test]
    fn dropout_keeps_the_expected_share_and_scale() {
        let x = Tensor::ones(10_001, DType::F32, &Device::Cpu).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let y = dropout_mask(&x, 0.3, &mut rng).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y.len(), 10_001);
        let kept = y.iter().filter(|&&v| v > 0.0).count();
        assert!((6_700..7_300).contains(&kept), "{kept} of 10,001 kept");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
        let again = dropout_mask(&x, 0.3, &mut ChaCha8Rng::seed_from_u64(2)).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y, again, "the same RNG state gives the same mask");
        let none = dropout_mask(&x, 0.0, &mut rng).unwrap().to_vec1::<f32>().unwrap();
        assert!(none.iter().all(|&v| v == 1.0));
    }
}
