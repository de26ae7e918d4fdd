//! The DQN's experience replay memory: a ring of CartPole transitions `(s, a, r, s', terminal)`
//! that drops the oldest once full, sampled in uniform batches without replacement (Python's
//! `random.sample(deque, k)` in gsurma/cartpole, on our seeded RNG).
//!
//! Stored column-wise in f32 (the network's precision), so a batch is gathered straight into the
//! rows of its input tensors, and the whole memory goes into a checkpoint as five tensors.

use rand::Rng;
use sweep_shared::checkpoint::{Checkpoint, TensorBlob};

use crate::jobs::JobError;

/// Observation width (CartPole: x, x_dot, theta, theta_dot).
pub const OBS: usize = 4;

/// One transition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    pub state: [f32; OBS],
    pub action: usize,
    pub reward: f32,
    pub next_state: [f32; OBS],
    /// The episode ended here, so the target does not bootstrap from `next_state`.
    pub terminal: bool,
}

/// A sampled batch, row `i` of each field belonging to one transition.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    /// `[len, OBS]` row-major.
    pub states: Vec<f32>,
    pub actions: Vec<usize>,
    pub rewards: Vec<f32>,
    /// `[len, OBS]` row-major.
    pub next_states: Vec<f32>,
    pub terminal: Vec<bool>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// A bounded FIFO memory of transitions.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayBuffer {
    capacity: usize,
    /// Where the next transition goes once the buffer is full (the oldest entry).
    head: usize,
    states: Vec<[f32; OBS]>,
    actions: Vec<u8>,
    rewards: Vec<f32>,
    next_states: Vec<[f32; OBS]>,
    terminal: Vec<bool>,
}

impl ReplayBuffer {
    /// An empty memory of at most `capacity` (>= 1) transitions; space grows as it fills.
    pub fn new(capacity: usize) -> Self {
        ReplayBuffer {
            capacity: capacity.max(1),
            head: 0,
            states: Vec::new(),
            actions: Vec::new(),
            rewards: Vec::new(),
            next_states: Vec::new(),
            terminal: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.actions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends a transition, replacing the oldest when full.
    pub fn push(&mut self, t: Transition) {
        let action = t.action as u8;
        if self.len() < self.capacity {
            self.states.push(t.state);
            self.actions.push(action);
            self.rewards.push(t.reward);
            self.next_states.push(t.next_state);
            self.terminal.push(t.terminal);
        } else {
            let i = self.head;
            self.states[i] = t.state;
            self.actions[i] = action;
            self.rewards[i] = t.reward;
            self.next_states[i] = t.next_state;
            self.terminal[i] = t.terminal;
            self.head = (self.head + 1) % self.capacity;
        }
    }

    /// The `i`-th transition in insertion order (0 = the oldest kept).
    pub fn get(&self, i: usize) -> Transition {
        let slot = self.slot(i);
        Transition {
            state: self.states[slot],
            action: usize::from(self.actions[slot]),
            reward: self.rewards[slot],
            next_state: self.next_states[slot],
            terminal: self.terminal[slot],
        }
    }

    /// Where the `i`-th transition in insertion order lives.
    fn slot(&self, i: usize) -> usize {
        if self.len() < self.capacity {
            i
        } else {
            (self.head + i) % self.capacity
        }
    }

    /// `size` distinct transitions drawn uniformly into `batch` (reused to spare allocations);
    /// `size` must not exceed [`ReplayBuffer::len`].
    pub fn sample_into(&self, size: usize, rng: &mut impl Rng, batch: &mut Batch) {
        batch.states.clear();
        batch.actions.clear();
        batch.rewards.clear();
        batch.next_states.clear();
        batch.terminal.clear();
        // Indices in insertion order, so a buffer restored from a checkpoint (stored oldest first)
        // draws the very same transitions as the one it was saved from.
        for i in rand::seq::index::sample(rng, self.len(), size) {
            let slot = self.slot(i);
            batch.states.extend_from_slice(&self.states[slot]);
            batch.actions.push(usize::from(self.actions[slot]));
            batch.rewards.push(self.rewards[slot]);
            batch.next_states.extend_from_slice(&self.next_states[slot]);
            batch.terminal.push(self.terminal[slot]);
        }
    }

    /// Adds the memory to `checkpoint` as `replay.*` tensors, oldest first.
    pub fn save(&self, checkpoint: Checkpoint) -> Checkpoint {
        let n = self.len();
        let (mut states, mut next_states) = (Vec::with_capacity(n * OBS), Vec::with_capacity(n * OBS));
        let (mut actions, mut rewards, mut terminal) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let t = self.get(i);
            states.extend_from_slice(&t.state);
            next_states.extend_from_slice(&t.next_state);
            actions.push(t.action as f32);
            rewards.push(t.reward);
            terminal.push(f32::from(u8::from(t.terminal)));
        }
        checkpoint
            .with_tensor("replay.states", TensorBlob::from_f32(vec![n, OBS], &states))
            .with_tensor("replay.next_states", TensorBlob::from_f32(vec![n, OBS], &next_states))
            .with_tensor("replay.actions", TensorBlob::from_f32(vec![n], &actions))
            .with_tensor("replay.rewards", TensorBlob::from_f32(vec![n], &rewards))
            .with_tensor("replay.terminal", TensorBlob::from_f32(vec![n], &terminal))
    }

    /// The memory [`ReplayBuffer::save`] stored, in a buffer of `capacity`; tensors of the wrong
    /// shape or type, or more transitions than `capacity`, are an error naming the tensor.
    pub fn load(checkpoint: &Checkpoint, capacity: usize) -> Result<ReplayBuffer, JobError> {
        let tensor = |name: &str, width: usize| -> Result<Vec<f32>, JobError> {
            let blob = checkpoint.tensor(name)?;
            let data = blob.to_f32().ok_or_else(|| JobError::Failed(format!("checkpoint tensor {name} is not f32")))?;
            let rows = blob.shape.first().copied().unwrap_or(0);
            let want: &[usize] = if width == 1 { &[rows] } else { &[rows, width] };
            if blob.shape != want || data.len() != rows * width {
                return Err(JobError::Failed(format!("checkpoint tensor {name} has shape {:?}", blob.shape)));
            }
            Ok(data)
        };
        let states = tensor("replay.states", OBS)?;
        let next_states = tensor("replay.next_states", OBS)?;
        let actions = tensor("replay.actions", 1)?;
        let rewards = tensor("replay.rewards", 1)?;
        let terminal = tensor("replay.terminal", 1)?;
        let n = actions.len();
        if states.len() != n * OBS || next_states.len() != n * OBS || rewards.len() != n || terminal.len() != n {
            return Err(JobError::Failed("checkpoint replay tensors disagree in length".into()));
        }
        if n > capacity {
            return Err(JobError::InvalidParams(format!(
                "checkpoint holds {n} replay transitions, buffer_size is {capacity}"
            )));
        }
        let mut buffer = ReplayBuffer::new(capacity);
        for i in 0..n {
            let row = |v: &[f32]| -> [f32; OBS] { [v[i * OBS], v[i * OBS + 1], v[i * OBS + 2], v[i * OBS + 3]] };
            let action = actions[i];
            if action != 0.0 && action != 1.0 {
                return Err(JobError::Failed(format!("checkpoint replay action {action} at {i} is not 0 or 1")));
            }
            buffer.push(Transition {
                state: row(&states),
                action: action as usize,
                reward: rewards[i],
                next_state: row(&next_states),
                terminal: terminal[i] != 0.0,
            });
        }
        Ok(buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn t(i: usize) -> Transition {
        let x = i as f32;
        Transition { state: [x; OBS], action: i % 2, reward: x, next_state: [x + 0.5; OBS], terminal: i % 3 == 0 }
    }

    #[test]
    fn full_buffer_drops_the_oldest_first() {
        let mut buffer = ReplayBuffer::new(3);
        for i in 0..5 {
            buffer.push(t(i));
        }
        assert_eq!(buffer.len(), 3);
        assert_eq!((0..3).map(|i| buffer.get(i).reward).collect::<Vec<_>>(), [2.0, 3.0, 4.0]);
    }

    #[test]
    fn samples_are_distinct_rows_of_whole_transitions() {
        let mut buffer = ReplayBuffer::new(100);
        for i in 0..50 {
            buffer.push(t(i));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut batch = Batch::default();
        buffer.sample_into(20, &mut rng, &mut batch);
        assert_eq!(batch.len(), 20);
        let mut seen: Vec<usize> = batch.rewards.iter().map(|r| *r as usize).collect();
        for (row, &i) in seen.iter().enumerate() {
            assert_eq!(batch.states[row * OBS..(row + 1) * OBS], [i as f32; OBS]);
            assert_eq!(batch.next_states[row * OBS], i as f32 + 0.5);
            assert_eq!((batch.actions[row], batch.terminal[row]), (i % 2, i % 3 == 0));
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 20, "sampled without replacement");
        // Every transition gets drawn over many batches.
        let mut hits = [0u32; 50];
        for _ in 0..200 {
            buffer.sample_into(20, &mut rng, &mut batch);
            for r in &batch.rewards {
                hits[*r as usize] += 1;
            }
        }
        assert!(hits.iter().all(|&h| h > 40), "{hits:?}");
    }

    #[test]
    fn save_and_load_keep_order_and_contents() {
        let mut buffer = ReplayBuffer::new(4);
        for i in 0..6 {
            buffer.push(t(i));
        }
        let checkpoint = buffer.save(Checkpoint::new("x", 1, &()).unwrap());
        let loaded = ReplayBuffer::load(&checkpoint, 4).unwrap();
        assert_eq!(
            (0..4).map(|i| loaded.get(i)).collect::<Vec<_>>(),
            (0..4).map(|i| buffer.get(i)).collect::<Vec<_>>()
        );
        // Same contents sample the same after a restore.
        let (mut a, mut b) = (Batch::default(), Batch::default());
        buffer.sample_into(3, &mut ChaCha8Rng::seed_from_u64(9), &mut a);
        loaded.sample_into(3, &mut ChaCha8Rng::seed_from_u64(9), &mut b);
        assert_eq!(a, b);
        let err = ReplayBuffer::load(&checkpoint, 2).unwrap_err().to_string();
        assert!(err.contains("4 replay transitions, buffer_size is 2"), "{err}");
    }
}
