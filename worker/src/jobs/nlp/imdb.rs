//! The IMDB review data set (Maas et al. 2011): the Hugging Face `stanfordnlp/imdb` Parquet files,
//! tokenized with the Keras rules of [`super::text`], cached on disk, and cut into batches.
//!
//! Files: `<data-dir>/imdb/plain_text/{train,test}-00000-of-00001.parquet`, columns `text` (raw,
//! with `<br />`) and `label` (0 negative, 1 positive); see [`crate::data`] for where they come
//! from. Loading checks what IMDB is: 25,000 reviews per split, 12,500 of each label.
//!
//! Tokenizing 50,000 reviews takes seconds, so the result is cached: ragged id sequences (unpadded
//! and untruncated, since the dense model's multi-hot vectors use whole reviews) for both splits in
//! `<cache-dir>/imdb/tokens-<key>.safetensors`, keyed by the sha256 of both source files,
//! `max_features` and [`CACHE_VERSION`]. Only the first trial of a sweep pays; a damaged cache
//! file is rebuilt, never trusted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow_array::{Array, Int64Array, LargeStringArray, StringArray};
use rand::seq::SliceRandom;
use rand::Rng;
use safetensors::tensor::{Dtype, TensorView};
use sha2::{Digest, Sha256};

use super::text::{pad_pre, Tokenizer};
use crate::data::{sha256_file, write_atomic, DataError, DataFile, DataPaths, Source};

/// Bump when tokenization changes, so old caches are not reused.
pub const CACHE_VERSION: u32 = 1;

pub const TRAIN: DataFile = DataFile {
    what: "IMDB train split",
    local: "imdb/plain_text/train-00000-of-00001.parquet",
    source: Source::HubDataset { repo: "stanfordnlp/imdb", path: "plain_text/train-00000-of-00001.parquet" },
    sha256: None,
};

pub const TEST: DataFile = DataFile {
    what: "IMDB test split",
    local: "imdb/plain_text/test-00000-of-00001.parquet",
    source: Source::HubDataset { repo: "stanfordnlp/imdb", path: "plain_text/test-00000-of-00001.parquet" },
    sha256: None,
};

/// Reviews per split and per label in each split.
pub const SPLIT_SIZE: usize = 25_000;
pub const PER_LABEL: usize = 12_500;

/// One split as ragged token sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequences {
    pub ids: Vec<u32>,
    /// `offsets[i]..offsets[i + 1]` are review `i`'s ids.
    pub offsets: Vec<u64>,
    pub labels: Vec<u8>,
}

impl Sequences {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn review(&self, i: usize) -> &[u32] {
        &self.ids[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    fn from_encoded(encoded: Vec<Vec<u32>>, labels: Vec<u8>) -> Self {
        let mut offsets = Vec::with_capacity(encoded.len() + 1);
        offsets.push(0);
        let mut ids = Vec::new();
        for seq in encoded {
            ids.extend_from_slice(&seq);
            offsets.push(ids.len() as u64);
        }
        Sequences { ids, offsets, labels }
    }

    /// The reviews at `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Sequences {
        Sequences::from_encoded(
            rows.iter().map(|&i| self.review(i).to_vec()).collect(),
            rows.iter().map(|&i| self.labels[i]).collect(),
        )
    }
}

/// Both splits, tokenized with a word index fitted on the train split.
#[derive(Debug, Clone, PartialEq)]
pub struct ImdbTokens {
    pub max_features: u32,
    /// Distinct words in the train split.
    pub vocabulary: u64,
    pub train: Sequences,
    pub test: Sequences,
}

/// Texts and labels of one split file, in file order.
pub fn read_reviews(path: &Path) -> Result<(Vec<String>, Vec<u8>), DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| DataError::invalid(path, format!("not a readable Parquet file: {e}")))?;
    let mut texts = Vec::new();
    let mut labels = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| DataError::invalid(path, format!("reading a row group: {e}")))?;
        let text = batch.column_by_name("text").ok_or_else(|| DataError::invalid(path, "no column 'text'"))?;
        let label = batch.column_by_name("label").ok_or_else(|| DataError::invalid(path, "no column 'label'"))?;
        let label = label
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| DataError::invalid(path, format!("column 'label' is {}, not int64", label.data_type())))?;
        let start = texts.len();
        if let Some(col) = text.as_any().downcast_ref::<StringArray>() {
            texts.extend(col.iter().map(|t| t.unwrap_or_default().to_string()));
        } else if let Some(col) = text.as_any().downcast_ref::<LargeStringArray>() {
            texts.extend(col.iter().map(|t| t.unwrap_or_default().to_string()));
        } else {
            return Err(DataError::invalid(path, format!("column 'text' is {}, not a string", text.data_type())));
        }
        for (i, l) in label.iter().enumerate() {
            match l {
                Some(0) => labels.push(0),
                Some(1) => labels.push(1),
                other => {
                    return Err(DataError::invalid(path, format!("row {}: label {other:?} is not 0 or 1", start + i)))
                }
            }
        }
    }
    Ok((texts, labels))
}

fn check_split(path: &Path, labels: &[u8]) -> Result<(), DataError> {
    let positive = labels.iter().filter(|&&l| l == 1).count();
    if labels.len() != SPLIT_SIZE || positive != PER_LABEL {
        return Err(DataError::invalid(
            path,
            format!(
                "{} reviews with {positive} positive; IMDB has {SPLIT_SIZE} with {PER_LABEL} of each label",
                labels.len()
            ),
        ));
    }
    Ok(())
}

/// Both splits tokenized with `max_features`, from the cache when it holds them.
pub fn load(paths: &DataPaths, max_features: u32) -> Result<ImdbTokens, DataError> {
    let train_path = paths.locate(&TRAIN)?;
    let test_path = paths.locate(&TEST)?;
    let key = cache_key(&train_path, &test_path, max_features)?;
    let cache = paths.cache("imdb")?.join(format!("tokens-{key}.safetensors"));
    if cache.is_file() {
        match read_cache(&cache, max_features) {
            Ok(tokens) => return Ok(tokens),
            Err(e) => tracing::warn!(error = %e, "IMDB token cache unreadable; rebuilding it"),
        }
    }
    let tokens = tokenize(&train_path, &test_path, max_features)?;
    write_cache(&cache, &tokens)?;
    Ok(tokens)
}

/// Tokenizes both files without touching the cache.
pub fn tokenize(train_path: &Path, test_path: &Path, max_features: u32) -> Result<ImdbTokens, DataError> {
    let (train_texts, train_labels) = read_reviews(train_path)?;
    check_split(train_path, &train_labels)?;
    let (test_texts, test_labels) = read_reviews(test_path)?;
    check_split(test_path, &test_labels)?;
    let tokenizer = Tokenizer::fit(train_texts.iter().map(String::as_str), max_features);
    let encode = |texts: &[String]| texts.iter().map(|t| tokenizer.encode(t)).collect::<Vec<_>>();
    Ok(ImdbTokens {
        max_features,
        vocabulary: tokenizer.vocabulary_size() as u64,
        train: Sequences::from_encoded(encode(&train_texts), train_labels),
        test: Sequences::from_encoded(encode(&test_texts), test_labels),
    })
}

fn cache_key(train: &Path, test: &Path, max_features: u32) -> Result<String, DataError> {
    let mut h = Sha256::new();
    h.update(format!("imdb-tokens v{CACHE_VERSION} max_features={max_features}\n"));
    h.update(sha256_file(train)?);
    h.update(sha256_file(test)?);
    Ok(hex::encode(h.finalize())[..16].to_string())
}

fn bytes_of<T: Copy>(values: &[T], to_le: impl Fn(T) -> Vec<u8>) -> Vec<u8> {
    values.iter().flat_map(|&v| to_le(v)).collect()
}

fn write_cache(path: &Path, t: &ImdbTokens) -> Result<(), DataError> {
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (split, s) in [("train", &t.train), ("test", &t.test)] {
        tensors.push((
            format!("{split}.ids"),
            Dtype::U32,
            vec![s.ids.len()],
            bytes_of(&s.ids, |v| v.to_le_bytes().to_vec()),
        ));
        tensors.push((
            format!("{split}.offsets"),
            Dtype::U64,
            vec![s.offsets.len()],
            bytes_of(&s.offsets, |v| v.to_le_bytes().to_vec()),
        ));
        tensors.push((format!("{split}.labels"), Dtype::U8, vec![s.labels.len()], s.labels.clone()));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| DataError::invalid(path, e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let metadata: HashMap<String, String> = [
        ("max_features".to_string(), t.max_features.to_string()),
        ("vocabulary".to_string(), t.vocabulary.to_string()),
        ("version".to_string(), CACHE_VERSION.to_string()),
    ]
    .into();
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| DataError::invalid(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

fn read_cache(path: &Path, max_features: u32) -> Result<ImdbTokens, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bad = |reason: String| DataError::invalid(path, reason);
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let number = |key: &str| -> Result<u64, DataError> {
        meta.get(key).and_then(|v| v.parse().ok()).ok_or_else(|| bad(format!("metadata '{key}' missing")))
    };
    if number("max_features")? != u64::from(max_features) || number("version")? != u64::from(CACHE_VERSION) {
        return Err(bad("cache was written for other settings".into()));
    }
    let raw = |name: &str, dtype: Dtype| -> Result<Vec<u8>, DataError> {
        let view = st.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
        if view.dtype() != dtype {
            return Err(bad(format!("{name}: dtype {:?}", view.dtype())));
        }
        Ok(view.data().to_vec())
    };
    let split = |name: &str| -> Result<Sequences, DataError> {
        let ids: Vec<u32> = raw(&format!("{name}.ids"), Dtype::U32)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let offsets: Vec<u64> = raw(&format!("{name}.offsets"), Dtype::U64)?
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        let labels = raw(&format!("{name}.labels"), Dtype::U8)?;
        let consistent = offsets.len() == labels.len() + 1
            && offsets.first() == Some(&0)
            && offsets.last() == Some(&(ids.len() as u64))
            && offsets.windows(2).all(|w| w[0] <= w[1])
            && ids.iter().all(|&i| i < max_features)
            && labels.iter().all(|&l| l <= 1);
        if !consistent {
            return Err(bad(format!("{name}: offsets, ids or labels are inconsistent")));
        }
        Ok(Sequences { ids, offsets, labels })
    };
    Ok(ImdbTokens { max_features, vocabulary: number("vocabulary")?, train: split("train")?, test: split("test")? })
}

/// Train rows and validation rows: a seeded shuffle of the train split, the last `val_fraction`
/// of it held out.
pub fn split_validation(n: usize, val_fraction: f64, rng: &mut impl Rng) -> (Vec<usize>, Vec<usize>) {
    let mut rows: Vec<usize> = (0..n).collect();
    rows.shuffle(rng);
    let val = ((n as f64) * val_fraction).round() as usize;
    let val_rows = rows.split_off(n - val.min(n));
    (rows, val_rows)
}

/// Reviews as fixed-length id rows `(n, maxlen)`, padded and truncated at the front.
pub fn padded(seqs: &Sequences, maxlen: usize) -> Vec<u32> {
    let mut out = vec![0u32; seqs.len() * maxlen];
    for (i, row) in out.chunks_exact_mut(maxlen).enumerate() {
        pad_pre(seqs.review(i), maxlen, row);
    }
    out
}

/// Each review's distinct ids (its multi-hot vector's ones), sorted, padded with 0 to the longest:
/// `(rows.len(), width)` row-major, and `width`.
pub fn distinct_ids(seqs: &Sequences, rows: &[usize]) -> (Vec<u32>, usize) {
    let sets: Vec<Vec<u32>> = rows
        .iter()
        .map(|&i| {
            let mut ids = seqs.review(i).to_vec();
            ids.sort_unstable();
            ids.dedup();
            ids
        })
        .collect();
    let width = sets.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut out = vec![0u32; rows.len() * width];
    for (row, ids) in out.chunks_exact_mut(width).zip(&sets) {
        row[..ids.len()].copy_from_slice(ids);
    }
    (out, width)
}

/// The IMDB files' directory under a data dir, for messages.
pub fn files_dir(paths: &DataPaths) -> PathBuf {
    paths.data_dir.join("imdb/plain_text")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The shared data with a cache of this test's own (it damages the cache on purpose).
    fn shared_paths() -> (DataPaths, tempfile::TempDir) {
        let mut paths = crate::data::test_paths();
        let cache = tempfile::tempdir().expect("temp dir");
        paths.cache_dir = cache.path().to_path_buf();
        (paths, cache)
    }

    #[test]
    fn real_imdb_matches_keras_facts_and_the_cache_round_trips() {
        let (paths, _cache) = shared_paths();
        let fixture: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/keras_tokenizer.json"))
                .expect("fixture"),
        )
        .expect("parse fixture");
        let facts = &fixture["imdb"];
        let tokens = load(&paths, 10_000).expect("load IMDB");
        assert_eq!(tokens.vocabulary, facts["distinct_words"].as_u64().expect("distinct_words"));
        let rows: Vec<Vec<u32>> = serde_json::from_value(facts["train_sequences_0_1_2"].clone()).expect("train seqs");
        for (i, expected) in rows.iter().enumerate() {
            assert_eq!(tokens.train.review(i), expected.as_slice(), "train review {i}");
        }
        let test0: Vec<u32> = serde_json::from_value(facts["test_sequence_0"].clone()).expect("test seq");
        assert_eq!(tokens.test.review(0), test0.as_slice());
        let lengths: Vec<usize> = serde_json::from_value(facts["train_lengths_0_99"].clone()).expect("lengths");
        let got: Vec<usize> = (0..lengths.len()).map(|i| tokens.train.review(i).len()).collect();
        assert_eq!(got, lengths);
        let pad: Vec<u32> = serde_json::from_value(facts["train_0_padded"].clone()).expect("padded");
        assert_eq!(padded(&tokens.train.select(&[0]), 500), pad);

        // The word index itself: the most frequent words, and the ranks around the 10,000 cut with
        // their tied counts in order of first appearance.
        let (texts, _) = read_reviews(&paths.locate(&TRAIN).unwrap()).unwrap();
        let tokenizer = Tokenizer::fit(texts.iter().map(String::as_str), 10_000);
        let index: Vec<(String, u32)> = tokenizer.word_index().map(|(w, i)| (w.to_string(), i)).collect();
        let first: Vec<(String, u32)> = serde_json::from_value(facts["first_50_word_index"].clone()).expect("first 50");
        assert_eq!(first[0], ("[UNK]".to_string(), 1));
        assert_eq!(&index[..49], &first[1..]);
        let around: Vec<(String, u32, u64)> = serde_json::from_value(facts["around_cut"].clone()).expect("cut");
        for (word, i, _count) in around {
            assert_eq!(index[i as usize - 2], (word.clone(), i), "rank of {word}");
            assert_eq!(tokenizer.lookup(&word), if i < 10_000 { i } else { super::super::text::OOV });
        }

        // The second load comes from the cache and is identical.
        let cached = load(&paths, 10_000).expect("load from cache");
        assert_eq!(cached, tokens);
        // A damaged cache is rebuilt, not trusted.
        let dir = paths.cache_dir.join("imdb");
        let file = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
        let mut bytes = std::fs::read(&file).unwrap();
        let n = bytes.len();
        bytes.truncate(n / 2);
        std::fs::write(&file, bytes).unwrap();
        assert_eq!(load(&paths, 10_000).expect("rebuild"), tokens);
    }

    #[test]
    fn a_wrong_file_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.parquet");
        std::fs::write(&path, b"not parquet at all").unwrap();
        let err = read_reviews(&path).unwrap_err().to_string();
        assert!(err.contains("train.parquet") && err.contains("Parquet"), "{err}");
    }

    #[test]
    fn validation_split_is_seeded_and_disjoint() {
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut b = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (train, val) = split_validation(100, 0.2, &mut a);
        assert_eq!((train.len(), val.len()), (80, 20));
        assert_eq!(split_validation(100, 0.2, &mut b), (train.clone(), val.clone()));
        let mut all: Vec<usize> = train.into_iter().chain(val).collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn distinct_ids_are_the_multi_hot_ones() {
        let seqs = Sequences::from_encoded(vec![vec![3, 2, 3], vec![1]], vec![1, 0]);
        assert_eq!(distinct_ids(&seqs, &[1, 0]), (vec![1, 0, 2, 3], 2));
    }
}
