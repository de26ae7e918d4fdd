//! The lab's NLP jobs on candle: IMDB sentiment with a dense, a SimpleRNN and an LSTM model.
//!
//! - [`text`]: Keras' tokenizer rules and `pad_sequences`;
//! - [`imdb`]: the data set's loader, its token cache, batches;
//! - [`recurrent`]: SimpleRNN and LSTM as one fused candle op with its own backward;
//! - [`models`]: the three classifiers and their loss;
//! - [`optim`]: RMSprop and Adam with checkpointable state;
//! - [`sentiment`]: the `imdb-sentiment` job.

pub mod imdb;
pub mod models;
pub mod optim;
pub mod recurrent;
pub mod sentiment;
pub mod text;
