//! RMSprop and Adam with Keras' defaults, whose state can be checkpointed.
//!
//! candle-nn has no RMSprop, and its AdamW keeps its moments private (a checkpoint could not hold
//! them) with PyTorch's eps. Both rules here follow Keras 2 (`tf.keras.optimizers`), which the
//! lab's reference numbers come from:
//!
//! - RMSprop: `v = rho v + (1 - rho) g^2; w -= lr g / (sqrt(v) + eps)`, rho 0.9, eps 1e-7;
//! - Adam: `m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//!   w -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`, b1 0.9, b2 0.999, eps 1e-7.
//!
//! Variables are addressed by name (a `BTreeMap`), so the state is stored and restored per name.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    RmsProp,
    Adam,
}

impl OptimizerKind {
    pub const NAMES: &'static [&'static str] = &["rmsprop", "adam"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "rmsprop" => Some(OptimizerKind::RmsProp),
            "adam" => Some(OptimizerKind::Adam),
            _ => None,
        }
    }
}

const RHO: f64 = 0.9;
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-7;

/// An optimizer over named variables.
pub struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    /// Adam's first-moment decay (Keras' default 0.9; the DCGAN literature often uses 0.5).
    beta1: f64,
    /// Updates applied so far (Adam's `t`).
    steps: u64,
    /// First moment per variable (Adam only).
    m: BTreeMap<String, Tensor>,
    /// Second moment per variable.
    v: BTreeMap<String, Tensor>,
}

impl Optimizer {
    pub fn new(kind: OptimizerKind, lr: f64) -> Self {
        Optimizer { kind, lr, beta1: BETA1, steps: 0, m: BTreeMap::new(), v: BTreeMap::new() }
    }

    /// Adam with its first-moment decay `beta1` (the other settings as Keras).
    pub fn adam(lr: f64, beta1: f64) -> Self {
        Optimizer { beta1, ..Optimizer::new(OptimizerKind::Adam, lr) }
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update of every variable that has a gradient.
    pub fn step(&mut self, vars: &BTreeMap<String, Var>, grads: &GradStore) -> candle_core::Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        for (name, var) in vars {
            // Detached: a gradient made by a matmul's backward still tracks the activations it
            // came from, and moments built on it would keep every step's graph alive.
            let Some(g) = grads.get(var.as_tensor()).map(Tensor::detach) else { continue };
            let g = &g;
            let v_old = match self.v.get(name) {
                Some(v) => v.clone(),
                None => g.zeros_like()?,
            };
            let v = ((v_old
                * match self.kind {
                    OptimizerKind::RmsProp => RHO,
                    OptimizerKind::Adam => BETA2,
                })?
                + (g.sqr()?
                    * match self.kind {
                        OptimizerKind::RmsProp => 1.0 - RHO,
                        OptimizerKind::Adam => 1.0 - BETA2,
                    })?)?;
            let denom = (v.sqrt()? + EPS)?;
            let update = match self.kind {
                OptimizerKind::RmsProp => ((g / &denom)? * self.lr)?,
                OptimizerKind::Adam => {
                    let m_old = match self.m.get(name) {
                        Some(m) => m.clone(),
                        None => g.zeros_like()?,
                    };
                    let m = ((m_old * self.beta1)? + (g * (1.0 - self.beta1))?)?;
                    let alpha = self.lr * (1.0 - BETA2.powi(t)).sqrt() / (1.0 - self.beta1.powi(t));
                    let update = ((&m / &denom)? * alpha)?;
                    self.m.insert(name.clone(), m);
                    update
                }
            };
            var.set(&var.as_tensor().sub(&update)?)?;
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }

    /// The state as named tensors (`m.<var>`, `v.<var>`) plus the step count.
    pub fn state(&self) -> (u64, Vec<(String, Tensor)>) {
        let mut out: Vec<(String, Tensor)> = self.v.iter().map(|(k, t)| (format!("v.{k}"), t.clone())).collect();
        out.extend(self.m.iter().map(|(k, t)| (format!("m.{k}"), t.clone())));
        (self.steps, out)
    }

    /// Restores what [`Optimizer::state`] returned.
    pub fn restore(&mut self, steps: u64, tensors: Vec<(String, Tensor)>) {
        self.steps = steps;
        self.m.clear();
        self.v.clear();
        for (name, t) in tensors {
            if let Some(var) = name.strip_prefix("v.") {
                self.v.insert(var.to_string(), t);
            } else if let Some(var) = name.strip_prefix("m.") {
                self.m.insert(var.to_string(), t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Minimises (w - 3)^2 and checks the first updates against the rules written out by hand.
    #[test]
    fn first_updates_follow_the_keras_rules() {
        for kind in [OptimizerKind::RmsProp, OptimizerKind::Adam] {
            let w = Var::new(&[0f64], &Device::Cpu).unwrap();
            let vars = BTreeMap::from([("w".to_string(), w.clone())]);
            let mut opt = Optimizer::new(kind, 0.1);
            let (mut m, mut v, mut x) = (0f64, 0f64, 0f64);
            for t in 1..=5 {
                let loss = w.as_tensor().affine(1.0, -3.0).unwrap().sqr().unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                opt.step(&vars, &grads).unwrap();
                let g = 2.0 * (x - 3.0);
                x -= match kind {
                    OptimizerKind::RmsProp => {
                        v = RHO * v + (1.0 - RHO) * g * g;
                        0.1 * g / (v.sqrt() + EPS)
                    }
                    OptimizerKind::Adam => {
                        m = BETA1 * m + (1.0 - BETA1) * g;
                        v = BETA2 * v + (1.0 - BETA2) * g * g;
                        0.1 * (1.0 - BETA2.powi(t)).sqrt() / (1.0 - BETA1.powi(t)) * m / (v.sqrt() + EPS)
                    }
                };
                let got = w.as_tensor().to_vec1::<f64>().unwrap()[0];
                assert!((got - x).abs() < 1e-12, "{kind:?} step {t}: {got} vs {x}");
            }
            assert!(x > 0.3, "{kind:?} moved toward the minimum");
        }
    }

    /// A gradient a matmul's backward makes still tracks the activations it came from; moments
    /// built on it must not, or every step's graph stays alive (a leak of a whole step's
    /// activations per step, as the DCGAN job once had).
    #[test]
    fn moments_hold_no_graph() {
        let dev = Device::Cpu;
        let w1 = Var::new(&[[0.5f64, -0.2], [0.1, 0.3]], &dev).unwrap();
        let w2 = Var::new(&[[1.0f64], [-1.0]], &dev).unwrap();
        let vars = BTreeMap::from([("w1".to_string(), w1.clone()), ("w2".to_string(), w2.clone())]);
        let x = Tensor::new(&[[1.0f64, 2.0]], &dev).unwrap();
        for kind in [OptimizerKind::RmsProp, OptimizerKind::Adam] {
            let mut opt = Optimizer::new(kind, 0.01);
            for _ in 0..2 {
                let h = x.matmul(w1.as_tensor()).unwrap();
                let loss = h.matmul(w2.as_tensor()).unwrap().sqr().unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                assert!(grads.get(w2.as_tensor()).unwrap().track_op(), "the raw gradient tracks h");
                opt.step(&vars, &grads).unwrap();
            }
            for (name, t) in opt.state().1 {
                assert!(!t.track_op(), "{kind:?}: {name} keeps a graph");
            }
        }
    }
}
