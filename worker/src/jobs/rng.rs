//! A seeded RNG's exact position, for checkpoints: restoring it continues the same stream.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::jobs::JobError;

/// A ChaCha8 RNG's position through its public API (seed, stream, word position).
#[derive(Debug, Serialize, Deserialize)]
pub struct RngState {
    seed: [u8; 32],
    stream: u64,
    /// A u128 in decimal: JSON numbers stop at 64 bits.
    word_pos: String,
}

impl RngState {
    pub fn of(rng: &ChaCha8Rng) -> Self {
        RngState { seed: rng.get_seed(), stream: rng.get_stream(), word_pos: rng.get_word_pos().to_string() }
    }

    pub fn to_rng(&self) -> Result<ChaCha8Rng, JobError> {
        let word_pos: u128 = self
            .word_pos
            .parse()
            .map_err(|e| JobError::InvalidParams(format!("checkpoint rng word_pos '{}': {e}", self.word_pos)))?;
        let mut rng = ChaCha8Rng::from_seed(self.seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(word_pos);
        Ok(rng)
    }
}
