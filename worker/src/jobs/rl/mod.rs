//! Reinforcement-learning jobs on CartPole.
//!
//! # Layout
//! - [`cartpole`]: the CartPole environment, a port of gymnasium's `cartpole.py` (v0 and v1).
//! - [`epsilon`]: runs an epsilon schedule episode by episode; its position goes into checkpoints.
//! - [`qtable`]: `cartpole-qtable`, the lab's tabular Q-learning job (RL0).
//! - [`dqn`]: `cartpole-dqn`, the lab's deep Q-network (gsurma/cartpole), with its network
//!   ([`qnet`], candle) and replay memory ([`replay`]).

pub mod cartpole;
pub mod dqn;
pub mod epsilon;
pub mod qnet;
pub mod qtable;
pub mod replay;
