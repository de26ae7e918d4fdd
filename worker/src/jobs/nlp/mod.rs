//! The lab's NLP jobs on candle: IMDB sentiment with a dense, a SimpleRNN and an LSTM model, and
//! with a head on frozen BERT sentence vectors.
//!
//! - [`text`]: Keras' tokenizer rules and `pad_sequences`;
//! - [`imdb`]: the data set's loader, its token cache, batches;
//! - [`recurrent`]: SimpleRNN and LSTM as one fused candle op with its own backward;
//! - [`bag`]: the dense model's multi-hot layer as a sum of weight rows;
//! - [`models`]: the three classifiers and their loss;
//! - [`optim`]: RMSprop and Adam with checkpointable state;
//! - [`sentiment`]: the `imdb-sentiment` job;
//! - [`bert`]: the frozen sentence encoder (all-MiniLM-L6-v2, mean pooling) and its tokenizer;
//! - [`imdb_embed`]: IMDB reviews as sentence vectors, cached per machine in chunks;
//! - [`bert_sentiment`]: the `imdb-bert` job, a logistic or one-hidden-layer head on those vectors.

pub mod bag;
pub mod bert;
pub mod bert_sentiment;
pub mod imdb;
pub mod imdb_embed;
pub mod models;
pub mod optim;
pub mod recurrent;
pub mod sentiment;
pub mod text;
