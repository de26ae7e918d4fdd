//! A frozen sentence encoder: all-MiniLM-L6-v2 with mean pooling, as sentence-transformers runs it.
//!
//! Architecture: WordPiece tokens `[CLS] ... [SEP]` -> candle-transformers' `BertModel` (6 layers,
//! 12 heads, hidden 384, 512 positions) -> hidden states `(B, T, 384)` -> the mean over each row's
//! real tokens (attention-mask weighted) -> sentence vectors `(B, 384)`. Reference: Reimers and
//! Gurevych, "Sentence-BERT" (2019), and the model card of `sentence-transformers/all-MiniLM-L6-v2`.
//! sentence-transformers L2-normalises after pooling; this encoder does not (cosine similarity is the
//! same either way, and a classifier trained on the vectors keeps their scale).
//!
//! The encoder is frozen: candle's `BertModel` has no backward (its LayerNorm and softmax cut the
//! gradient without an error), so jobs train heads on its outputs, never the encoder itself.
//!
//! Files: `config.json`, `tokenizer.json` and `model.safetensors` (no `bert.` prefix) under
//! `<models-dir>/all-MiniLM-L6-v2/`, else from the Hugging Face Hub (see [`crate::data`]); the
//! weights are checked against their sha256 on download. The shipped `tokenizer.json` fixes
//! truncation and padding at 128 tokens; loading replaces both: truncation at the model's 512
//! positions and no padding. [`SentenceEncoder::embed_batch`] truncates each row to its `max_tokens`
//! (keeping `[SEP]` last, as the tokenizer's own truncation does) and pads a batch to its longest
//! row with a zero attention mask, so padding never changes a sentence's vector.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, DTYPE};
use tokenizers::{Tokenizer, TruncationParams};

use crate::data::{DataError, DataFile, DataPaths, Source};

/// The Hub repository the encoder's files come from.
pub const REPO: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// sha256 of the published `model.safetensors`.
pub const WEIGHTS_SHA256: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

pub const CONFIG: DataFile = DataFile {
    what: "all-MiniLM-L6-v2 config",
    local: "all-MiniLM-L6-v2/config.json",
    source: Source::HubModel { repo: REPO, path: "config.json" },
    sha256: None,
};

pub const TOKENIZER: DataFile = DataFile {
    what: "all-MiniLM-L6-v2 tokenizer",
    local: "all-MiniLM-L6-v2/tokenizer.json",
    source: Source::HubModel { repo: REPO, path: "tokenizer.json" },
    sha256: None,
};

pub const WEIGHTS: DataFile = DataFile {
    what: "all-MiniLM-L6-v2 weights",
    local: "all-MiniLM-L6-v2/model.safetensors",
    source: Source::HubModel { repo: REPO, path: "model.safetensors" },
    sha256: Some(WEIGHTS_SHA256),
};

/// Why the encoder could not load or run.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("max_tokens {found} is outside 2..={max} (the model's positions)")]
    MaxTokens { found: usize, max: usize },
    /// The job that asked for embeddings was cancelled while they were computed or awaited.
    #[error("cancelled")]
    Cancelled,
}

/// One WordPiece token: its text (`[CLS]`, `learning`, `##s`, ...) and vocabulary id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub text: String,
    pub id: u32,
}

/// A text's tokens and the encoder's last hidden state for each.
#[derive(Debug, Clone)]
pub struct TokenVectors {
    pub tokens: Vec<Token>,
    /// `(tokens.len(), hidden_size)`, f32.
    pub vectors: Tensor,
}

/// The tokenizer and frozen BERT encoder of all-MiniLM-L6-v2.
pub struct SentenceEncoder {
    model: BertModel,
    /// Truncates at `max_positions`, never pads: batches are padded here, with their own mask.
    tokenizer: Tokenizer,
    hidden_size: usize,
    /// The model's position embeddings: the longest row it can read.
    max_positions: usize,
    sep_id: u32,
    pad_id: u32,
    /// The three files, for cache keys: config, tokenizer, weights.
    files: [PathBuf; 3],
    device: Device,
}

impl SentenceEncoder {
    /// Locates the three files (local models directory first, else the Hub) and loads them onto
    /// `device`.
    pub fn load(paths: &DataPaths, device: &Device) -> Result<Self, EncoderError> {
        let config_path = paths.locate(&CONFIG)?;
        let text = std::fs::read_to_string(&config_path).map_err(|e| DataError::io(&config_path, e))?;
        let config: Config = serde_json::from_str(&text)
            .map_err(|e| DataError::invalid(&config_path, format!("not a BERT config: {e}")))?;

        let tokenizer_path = paths.locate(&TOKENIZER)?;
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| DataError::invalid(&tokenizer_path, format!("not a tokenizer.json: {e}")))?;
        let truncation = TruncationParams { max_length: config.max_position_embeddings, ..Default::default() };
        tokenizer.with_truncation(Some(truncation)).map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        let special = |token: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| DataError::invalid(&tokenizer_path, format!("no {token} token")))
        };
        let (sep_id, pad_id) = (special("[SEP]")?, special("[PAD]")?);

        let weights_path = paths.locate(&WEIGHTS)?;
        let bytes = std::fs::read(&weights_path).map_err(|e| DataError::io(&weights_path, e))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DTYPE, device)
            .map_err(|e| DataError::invalid(&weights_path, format!("not a safetensors file: {e}")))?;
        let model = BertModel::load(vb, &config)
            .map_err(|e| DataError::invalid(&weights_path, format!("does not hold {REPO}'s tensors: {e}")))?;
        Ok(SentenceEncoder {
            model,
            tokenizer,
            hidden_size: config.hidden_size,
            max_positions: config.max_position_embeddings,
            sep_id,
            pad_id,
            files: [config_path, tokenizer_path, weights_path],
            device: device.clone(),
        })
    }

    /// Width of every token and sentence vector (384).
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// The longest row, in tokens, the model reads (512).
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The files in use, for cache keys: `config.json`, `tokenizer.json`, `model.safetensors`.
    pub fn files(&self) -> [&Path; 3] {
        [&self.files[0], &self.files[1], &self.files[2]]
    }

    /// `text` as tokens, `[CLS]` first and `[SEP]` last, truncated at the model's positions.
    pub fn tokens(&self, text: &str) -> Result<Vec<Token>, EncoderError> {
        let encoding = self.tokenizer.encode(text, true).map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        Ok(encoding
            .get_tokens()
            .iter()
            .zip(encoding.get_ids())
            .map(|(text, &id)| Token { text: text.clone(), id })
            .collect())
    }

    /// Token ids of `text`, at most `max_tokens` of them with `[SEP]` kept last.
    pub fn token_ids(&self, text: &str, max_tokens: usize) -> Result<Vec<u32>, EncoderError> {
        self.check_max_tokens(max_tokens)?;
        let encoding = self.tokenizer.encode(text, true).map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.len() > max_tokens {
            ids.truncate(max_tokens - 1);
            ids.push(self.sep_id);
        }
        Ok(ids)
    }

    /// The last hidden state of every token of `text` (for feature extraction).
    pub fn token_vectors(&self, text: &str) -> Result<TokenVectors, EncoderError> {
        let tokens = self.tokens(text)?;
        let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        let input = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let vectors = self.model.forward(&input, &input.zeros_like()?, None)?.squeeze(0)?;
        Ok(TokenVectors { tokens, vectors })
    }

    /// Mean-pooled sentence vectors `(texts.len(), hidden_size)` of `texts`, each truncated to
    /// `max_tokens`, run as one padded batch.
    pub fn embed_batch(&self, texts: &[&str], max_tokens: usize) -> Result<Tensor, EncoderError> {
        let rows = texts.iter().map(|t| self.token_ids(t, max_tokens)).collect::<Result<Vec<_>, _>>()?;
        self.embed_ids(&rows)
    }

    /// Mean-pooled sentence vectors of already tokenized rows (from [`Self::token_ids`]), padded to
    /// the longest row; `(rows.len(), hidden_size)`.
    pub fn embed_ids(&self, rows: &[Vec<u32>]) -> Result<Tensor, EncoderError> {
        let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
        if longest == 0 {
            return Ok(Tensor::zeros((rows.len(), self.hidden_size), DType::F32, &self.device)?);
        }
        self.check_max_tokens(longest)?;
        let mut ids = vec![self.pad_id; rows.len() * longest];
        let mut mask = vec![0u32; rows.len() * longest];
        for (r, row) in rows.iter().enumerate() {
            ids[r * longest..r * longest + row.len()].copy_from_slice(row);
            mask[r * longest..r * longest + row.len()].fill(1);
        }
        let shape = (rows.len(), longest);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let hidden = self.model.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
        let weights = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&weights)?.sum(1)?;
        let counts = weights.sum(1)?.clamp(1f32, f32::MAX)?;
        Ok(summed.broadcast_div(&counts)?)
    }

    /// Whether the model can read rows of `max_tokens` (2 for `[CLS] [SEP]` up to its positions).
    pub fn check_max_tokens(&self, max_tokens: usize) -> Result<(), EncoderError> {
        if !(2..=self.max_positions).contains(&max_tokens) {
            return Err(EncoderError::MaxTokens { found: max_tokens, max: self.max_positions });
        }
        Ok(())
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(f32::MIN_POSITIVE)
}

/// The shared test paths ([`crate::data::test_paths`]) with a fresh cache directory, removed when
/// the returned guard drops: these tests count what they embed and reuse.
#[cfg(test)]
pub(crate) fn fresh_test_paths() -> (DataPaths, tempfile::TempDir) {
    let mut paths = crate::data::test_paths();
    let cache = tempfile::tempdir().expect("temp dir");
    paths.cache_dir = cache.path().to_path_buf();
    assert!(
        paths.models_dir.join(WEIGHTS.local).is_file(),
        "all-MiniLM-L6-v2 not found under {}: set SWEEP_MODELS_DIR",
        paths.models_dir.display()
    );
    (paths, cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder() -> SentenceEncoder {
        SentenceEncoder::load(&fresh_test_paths().0, &Device::Cpu).expect("load all-MiniLM-L6-v2")
    }

    fn rows(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2::<f32>().expect("f32 rows")
    }

    #[test]
    fn cosines_match_the_published_facts() {
        let encoder = encoder();
        let texts = [
            "The new movie is awesome",
            "The new movie is so great",
            "The cat sits outside",
            "The cat plays in the garden",
        ];
        let v = rows(&encoder.embed_batch(&texts, 128).unwrap());
        assert_eq!(v[0].len(), 384);
        let movie = cosine(&v[0], &v[1]);
        let cat = cosine(&v[2], &v[3]);
        assert!((movie - 0.89).abs() <= 0.02, "movie cosine {movie}");
        assert!((cat - 0.68).abs() <= 0.02, "cat cosine {cat}");
    }

    #[test]
    fn tokens_are_framed_by_cls_and_sep() {
        let encoder = encoder();
        let tokens = encoder.tokens("Learning requires patience").unwrap();
        let texts: Vec<&str> = tokens.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts.first(), Some(&"[CLS]"));
        assert_eq!(texts.last(), Some(&"[SEP]"));
        assert_eq!(&texts[1..texts.len() - 1], ["learning", "requires", "patience"]);
        assert_eq!((tokens[0].id, tokens[tokens.len() - 1].id), (101, 102));

        let vectors = encoder.token_vectors("Learning requires patience").unwrap();
        assert_eq!(vectors.vectors.dims(), [tokens.len(), 384]);
        // The sentence vector is the mean of the token vectors.
        let mean = vectors.vectors.mean(0).unwrap().to_vec1::<f32>().unwrap();
        let pooled = rows(&encoder.embed_batch(&["Learning requires patience"], 128).unwrap()).remove(0);
        assert!(mean.iter().zip(&pooled).all(|(a, b)| (a - b).abs() < 1e-5));

        // Truncation keeps [SEP] last; the shipped 128-token limit and padding are gone.
        let long = "word ".repeat(300);
        let ids = encoder.token_ids(&long, 16).unwrap();
        assert_eq!((ids.len(), ids[0], ids[15]), (16, 101, 102));
        assert_eq!(encoder.tokens(&long).unwrap().len(), 302);
        assert_eq!(encoder.tokens("hi").unwrap().len(), 3);
        assert!(matches!(encoder.token_ids("hi", 1), Err(EncoderError::MaxTokens { .. })));
        assert!(matches!(encoder.token_ids("hi", 513), Err(EncoderError::MaxTokens { .. })));
    }

    #[test]
    fn padding_in_a_batch_leaves_a_sentence_alone() {
        let encoder = encoder();
        let short = "A short one.";
        let long = "A much longer sentence that forces the short one to be padded with many extra positions.";
        let alone = rows(&encoder.embed_batch(&[short], 128).unwrap()).remove(0);
        let batched = rows(&encoder.embed_batch(&[long, short, long], 128).unwrap());
        let worst = alone.iter().zip(&batched[1]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-5, "padding moved a value by {worst}");
        assert_eq!(batched[0], batched[2]);
    }
}
