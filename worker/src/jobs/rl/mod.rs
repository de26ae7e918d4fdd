//! Reinforcement-learning jobs on CartPole.
//!
//! # Layout
//! - [`cartpole`]: the CartPole environment, a port of gymnasium's `cartpole.py` (v0 and v1).
//! - [`epsilon`]: runs an epsilon schedule episode by episode; its position goes into checkpoints.
//! - [`qtable`]: `cartpole-qtable`, the lab's tabular Q-learning job (RL0).

pub mod cartpole;
pub mod epsilon;
pub mod qtable;
