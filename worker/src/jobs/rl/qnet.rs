//! The DQN's Q network on candle: an MLP from the 4 CartPole observations through ReLU hidden
//! layers (gsurma/cartpole: 24, 24) to one Q value per action, as Keras' `Dense` layers.
//!
//! Shapes: input `[B, 4]`; layer `i` has kernel `l{i}.w` `[in, out]` (Keras' layout, so a forward is
//! `x.matmul(w) + b` with no transpose) and bias `l{i}.b` `[out]`; output `[B, 2]`. Kernels start as
//! glorot_uniform drawn from the trial RNG, biases at zero (Keras' defaults).
//!
//! [`QNet::train_step`] is the replay update of gsurma's `experience_replay`, batched: for each
//! sampled transition the target is `r` when terminal, else `r + gamma * max_a' Q_target(s', a')`;
//! the other action's target is the network's own output, so the loss (Keras' MSE, a mean over
//! the batch and both outputs) is `sum_i (Q(s_i, a_i) - y_i)^2 / (2 B)`. The original fits the 20
//! samples one after another; here they are one forward/backward and one optimizer step.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var, D};
use rand::Rng;

use super::replay::{Batch, OBS};
use crate::jobs::nlp::models::glorot;
use crate::jobs::nlp::optim::Optimizer;

/// Actions of CartPole: push left, push right.
pub const ACTIONS: usize = 2;

/// A Q network: its layers' variables by name.
pub struct QNet {
    pub vars: BTreeMap<String, Var>,
    /// `(kernel, bias)` per layer, input to output (clones of the entries of `vars`).
    layers: Vec<(Var, Var)>,
    device: Device,
}

impl QNet {
    /// A fresh network with `hidden` units per hidden layer, drawn from `rng`.
    pub fn new(hidden: &[usize], rng: &mut impl Rng, device: &Device) -> candle_core::Result<QNet> {
        let mut sizes = vec![OBS];
        sizes.extend_from_slice(hidden);
        sizes.push(ACTIONS);
        let mut vars = BTreeMap::new();
        let mut layers = Vec::new();
        for (i, pair) in sizes.windows(2).enumerate() {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let w = Var::from_tensor(&Tensor::from_vec(glorot(rng, fan_in, fan_out), (fan_in, fan_out), device)?)?;
            let b = Var::from_tensor(&Tensor::zeros(fan_out, DType::F32, device)?)?;
            vars.insert(format!("l{i}.w"), w.clone());
            vars.insert(format!("l{i}.b"), b.clone());
            layers.push((w, b));
        }
        Ok(QNet { vars, layers, device: device.clone() })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Q values `[B, ACTIONS]` of states `[B, OBS]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let last = self.layers.len() - 1;
        let mut h = x.clone();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
            if i < last {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    /// The Q values of one state.
    pub fn q_values(&self, state: &[f32; OBS]) -> candle_core::Result<[f32; ACTIONS]> {
        let x = Tensor::from_slice(state, (1, OBS), &self.device)?;
        let q = self.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
        Ok([q[0], q[1]])
    }

    /// The greedy action in `state`: the larger Q value, action 0 on a tie (numpy's argmax).
    pub fn greedy(&self, state: &[f32; OBS]) -> candle_core::Result<usize> {
        let q = self.q_values(state)?;
        Ok(usize::from(q[1] > q[0]))
    }

    /// One replay update on `batch` (see the module header) with targets from `target` (the
    /// network itself when `None`); returns the loss before the update.
    pub fn train_step(
        &self,
        batch: &Batch,
        gamma: f64,
        target: Option<&QNet>,
        optimizer: &mut Optimizer,
    ) -> candle_core::Result<f32> {
        let n = batch.len();
        let states = Tensor::from_slice(&batch.states, (n, OBS), &self.device)?;
        let next_states = Tensor::from_slice(&batch.next_states, (n, OBS), &self.device)?;
        let next_q = target.unwrap_or(self).forward(&next_states)?.detach().max(D::Minus1)?.to_vec1::<f32>()?;
        let gamma = gamma as f32;
        let y: Vec<f32> = (0..n)
            .map(|i| if batch.terminal[i] { batch.rewards[i] } else { batch.rewards[i] + gamma * next_q[i] })
            .collect();
        let mut mask = vec![0f32; n * ACTIONS];
        for (i, &a) in batch.actions.iter().enumerate() {
            mask[i * ACTIONS + a] = 1.0;
        }
        let mask = Tensor::from_vec(mask, (n, ACTIONS), &self.device)?;
        let y = Tensor::from_vec(y, n, &self.device)?;
        let taken = (self.forward(&states)? * mask)?.sum(D::Minus1)?;
        let loss = ((taken - y)?.sqr()?.sum_all()? / (2 * n) as f64)?;
        let grads = loss.backward()?;
        optimizer.step(&self.vars, &grads)?;
        loss.to_scalar::<f32>()
    }

    /// Copies every weight from `other` (a target network's periodic update).
    pub fn copy_from(&self, other: &QNet) -> candle_core::Result<()> {
        for (name, var) in &self.vars {
            let source =
                other.vars.get(name).ok_or_else(|| candle_core::Error::Msg(format!("no variable {name} to copy")))?;
            var.set(&source.as_tensor().copy()?)?;
        }
        Ok(())
    }

    /// An independent network with the same weights.
    pub fn duplicate(&self) -> candle_core::Result<QNet> {
        let mut vars = BTreeMap::new();
        let mut layers = Vec::new();
        for i in 0..self.layers.len() {
            let w = Var::from_tensor(&self.layers[i].0.as_tensor().copy()?)?;
            let b = Var::from_tensor(&self.layers[i].1.as_tensor().copy()?)?;
            vars.insert(format!("l{i}.w"), w.clone());
            vars.insert(format!("l{i}.b"), b.clone());
            layers.push((w, b));
        }
        Ok(QNet { vars, layers, device: self.device.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::nlp::optim::OptimizerKind;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn net() -> QNet {
        QNet::new(&[24, 24], &mut ChaCha8Rng::seed_from_u64(3), &Device::Cpu).unwrap()
    }

    #[test]
    fn shapes_and_parameter_count_match_the_keras_model() {
        let q = net();
        // Keras summary of gsurma's model: 120 + 600 + 50 = 770 parameters.
        let count: usize = q.vars.values().map(|v| v.elem_count()).sum();
        assert_eq!(count, 770);
        assert_eq!(q.vars["l0.w"].dims(), [4, 24]);
        assert_eq!(q.vars["l2.w"].dims(), [24, 2]);
        let x = Tensor::zeros((7, OBS), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(q.forward(&x).unwrap().dims(), [7, ACTIONS]);
    }

    #[test]
    fn loss_and_gradient_are_the_per_sample_targets_of_the_original() {
        let q = net();
        let batch = Batch {
            states: vec![0.1, -0.2, 0.03, 0.4, -0.5, 0.6, -0.07, 0.8],
            actions: vec![1, 0],
            rewards: vec![1.0, -1.0],
            next_states: vec![0.2, 0.1, -0.1, 0.0, 0.3, 0.3, 0.3, 0.3],
            terminal: vec![false, true],
        };
        // By hand: the target of row 0 bootstraps, row 1's is the reward alone.
        let q0 = q.q_values(&[0.1, -0.2, 0.03, 0.4]).unwrap();
        let q1 = q.q_values(&[-0.5, 0.6, -0.07, 0.8]).unwrap();
        let next0 = q.q_values(&[0.2, 0.1, -0.1, 0.0]).unwrap();
        let y0 = 1.0 + 0.95 * next0[0].max(next0[1]);
        let want = ((q0[1] - y0).powi(2) + (q1[0] + 1.0).powi(2)) / 4.0;
        // lr 0 leaves the weights, so the loss is that of the same network twice.
        let mut frozen = Optimizer::new(OptimizerKind::Adam, 0.0);
        let loss = q.train_step(&batch, 0.95, None, &mut frozen).unwrap();
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
        // Steps lower the loss on a fixed batch (a fixed target network keeps targets still).
        let target = q.duplicate().unwrap();
        let mut adam = Optimizer::new(OptimizerKind::Adam, 0.01);
        let first = q.train_step(&batch, 0.95, Some(&target), &mut adam).unwrap();
        let mut last = first;
        for _ in 0..50 {
            last = q.train_step(&batch, 0.95, Some(&target), &mut adam).unwrap();
        }
        assert!(last < first * 0.1, "{first} -> {last}");
        // The target network did not move; copying brings the trained weights over.
        assert_eq!(target.q_values(&[0.2, 0.1, -0.1, 0.0]).unwrap(), next0);
        target.copy_from(&q).unwrap();
        assert_eq!(target.q_values(&[0.2, 0.1, -0.1, 0.0]).unwrap(), q.q_values(&[0.2, 0.1, -0.1, 0.0]).unwrap());
    }
}
