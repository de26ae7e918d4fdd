//! IMDB reviews as sentence vectors of [`super::bert::SentenceEncoder`], computed once per machine
//! and shared by every trial through an on-disk cache.
//!
//! Embedding is the slow part of `imdb-bert` (on two CPU cores about 24 reviews a second at 128
//! tokens, 13 at 256, 8 at 512), so:
//!
//! 1. Each split's reviews are taken in one fixed order, a shuffle with a constant seed (never the
//!    trial's), so a subset of `n` reviews is always the first `n` of that order and a cache built
//!    for a larger subset serves every smaller one.
//! 2. The order is cut into chunks of [`CHUNK`] reviews. A chunk is embedded whole (`<br />` read as
//!    a space; rows sorted by length into batches of about [`BATCH_TOKENS`] tokens, so little of a
//!    batch is padding) and written atomically as one safetensors file,
//!    `<cache-dir>/imdb-bert/<weights sha256, 16 hex>/<split>-t<max_tokens>-<key>/chunk-NNNNN.safetensors`,
//!    where `key` hashes the config's, tokenizer's and split file's sha256, the order, the chunk
//!    size and [`CACHE_VERSION`].
//! 3. A load reads the chunks that cover its `n` reviews and embeds the missing ones itself. While
//!    a chunk is being embedded a lock file sits beside it (created exclusively, touched after every
//!    batch): other trials move on to the next missing chunk and come back for the locked one, so
//!    trials that start together split the work instead of repeating it. A lock untouched for
//!    [`STALE_LOCK`] belonged to a process that died, and is taken over.
//! 4. A chunk file that does not parse, has the wrong shape or settings, or fails its checksum is
//!    rebuilt, never trusted.
//!
//! Labels are not cached: they come from the split file, which is read anyway for the texts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use sha2::{Digest, Sha256};

use super::bert::{EncoderError, SentenceEncoder};
use super::imdb::{self, read_reviews};
use crate::data::{sha256_file, write_atomic, DataError, DataFile, DataPaths, FileLock};

/// Bump when embedding changes (text cleaning, pooling), so old caches are not reused.
pub const CACHE_VERSION: u32 = 1;

/// Reviews per cache file: 100 chunks per split, 10 to 40 s of embedding each on two cores.
pub const CHUNK: usize = 250;

/// Tokens (rows x longest row) per encoder batch: 16 rows at 128 tokens, 4 at 512. On two cores
/// this beat 512 and 8,192 at 256 and 512 tokens (the attention scores of larger batches fall out
/// of cache).
pub const BATCH_TOKENS: usize = 2048;

/// Seed of the fixed review order; part of every cache key through the order itself.
const ORDER_SEED: u64 = 0x1DB_0B0E;

/// A chunk lock older than this was left by a process that died.
pub use crate::data::STALE_LOCK;

/// How often a load waiting for another process's chunk looks again.
const POLL: Duration = Duration::from_millis(500);

/// One IMDB split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }

    fn file(self) -> &'static DataFile {
        match self {
            Split::Train => &imdb::TRAIN,
            Split::Test => &imdb::TEST,
        }
    }
}

/// The first `len()` reviews of a split's fixed order, embedded.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub dim: usize,
    /// `(len, dim)` row-major.
    pub vectors: Vec<f32>,
    /// 0 negative, 1 positive.
    pub labels: Vec<u8>,
}

impl Embedded {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }
}

/// What one load did, counted in reviews.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CacheStats {
    /// Reviews this load embedded (whole chunks, so possibly more than it asked for).
    pub embedded: usize,
    /// Reviews read from chunk files.
    pub reused: usize,
    /// Seconds spent embedding.
    pub embed_seconds: f64,
}

/// The embedding cache of one encoder.
pub struct EmbeddingCache<'a> {
    encoder: &'a SentenceEncoder,
    /// `<cache-dir>/imdb-bert/<weights sha256 prefix>`.
    root: PathBuf,
    /// sha256 of the encoder's config and tokenizer, which change vectors as much as the weights.
    model_key: String,
    chunk: usize,
}

impl<'a> EmbeddingCache<'a> {
    /// Hashes the encoder's files (a fraction of a second) to find its cache directory.
    pub fn new(paths: &DataPaths, encoder: &'a SentenceEncoder) -> Result<Self, EncoderError> {
        let [config, tokenizer, weights] = encoder.files();
        let weights_sha = sha256_file(weights)?;
        let model_key = format!("{} {}", sha256_file(config)?, sha256_file(tokenizer)?);
        let root = paths.cache("imdb-bert")?.join(&weights_sha[..16]);
        Ok(EmbeddingCache { encoder, root, model_key, chunk: CHUNK })
    }

    /// Uses chunks of `chunk` reviews (tests use small ones).
    pub fn with_chunk(mut self, chunk: usize) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    /// The first `n` reviews of `split`'s fixed order embedded at `max_tokens`, from the cache
    /// where it has them; polls `cancelled` between batches and while waiting for other processes.
    pub fn load(
        &self,
        paths: &DataPaths,
        split: Split,
        n: usize,
        max_tokens: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(Embedded, CacheStats), EncoderError> {
        self.encoder.check_max_tokens(max_tokens)?;
        let file = paths.locate(split.file())?;
        let (texts, labels) = read_reviews(&file)?;
        if n > texts.len() {
            return Err(
                DataError::invalid(&file, format!("{n} reviews asked for; the split has {}", texts.len())).into()
            );
        }
        let order = fixed_order(texts.len());
        let dir = self.root.join(format!("{}-t{max_tokens}-{}", split.name(), self.key(&file, &order)?));
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;

        let chunks = n.div_ceil(self.chunk);
        let mut done: Vec<Option<Vec<f32>>> = vec![None; chunks];
        let mut stats = CacheStats::default();
        loop {
            let mut waiting = false;
            for (c, slot) in done.iter_mut().enumerate() {
                if slot.is_some() {
                    continue;
                }
                let rows = &order[c * self.chunk..((c + 1) * self.chunk).min(order.len())];
                let path = dir.join(format!("chunk-{c:05}.safetensors"));
                if let Some(vectors) = self.read_chunk(&path, rows.len(), max_tokens) {
                    stats.reused += rows.len();
                    *slot = Some(vectors);
                    continue;
                }
                let Some(lock) = FileLock::acquire(&path, "embedding")? else {
                    waiting = true;
                    continue;
                };
                // Another process may have finished the chunk between the read and the lock.
                if let Some(vectors) = self.read_chunk(&path, rows.len(), max_tokens) {
                    stats.reused += rows.len();
                    *slot = Some(vectors);
                    continue;
                }
                let start = Instant::now();
                let vectors = self.embed_chunk(rows, &texts, max_tokens, &lock, cancelled)?;
                write_chunk(&path, &vectors, rows.len(), self.encoder.hidden_size(), max_tokens)?;
                drop(lock);
                let seconds = start.elapsed().as_secs_f64();
                stats.embedded += rows.len();
                stats.embed_seconds += seconds;
                tracing::info!(
                    split = split.name(),
                    chunk = c + 1,
                    of = chunks,
                    max_tokens,
                    reviews_per_s = rows.len() as f64 / seconds.max(1e-9),
                    "embedded IMDB reviews"
                );
                *slot = Some(vectors);
            }
            if !waiting {
                break;
            }
            if cancelled() {
                return Err(EncoderError::Cancelled);
            }
            std::thread::sleep(POLL);
        }

        let dim = self.encoder.hidden_size();
        let mut vectors: Vec<f32> = done.into_iter().flatten().flatten().collect();
        vectors.truncate(n * dim);
        let labels = order[..n].iter().map(|&r| labels[r]).collect();
        Ok((Embedded { dim, vectors, labels }, stats))
    }

    /// The part of a chunk directory's name that changes with anything that changes the vectors.
    fn key(&self, file: &Path, order: &[usize]) -> Result<String, EncoderError> {
        let mut h = Sha256::new();
        h.update(format!("imdb-bert v{CACHE_VERSION} chunk={} {}\n", self.chunk, self.model_key));
        h.update(sha256_file(file)?);
        for &r in order {
            h.update((r as u32).to_le_bytes());
        }
        Ok(hex::encode(h.finalize())[..16].to_string())
    }

    /// A chunk's vectors, or `None` when its file is missing or not to be trusted (then removed).
    fn read_chunk(&self, path: &Path, rows: usize, max_tokens: usize) -> Option<Vec<f32>> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "embedding cache chunk unreadable; rebuilding it");
                return None;
            }
        };
        match parse_chunk(&bytes, rows, self.encoder.hidden_size(), max_tokens) {
            Ok(vectors) => Some(vectors),
            Err(reason) => {
                tracing::warn!(path = %path.display(), reason, "embedding cache chunk damaged; rebuilding it");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    fn embed_chunk(
        &self,
        rows: &[usize],
        texts: &[String],
        max_tokens: usize,
        lock: &FileLock,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<f32>, EncoderError> {
        let ids = rows
            .iter()
            .map(|&r| self.encoder.token_ids(&texts[r].replace("<br />", " "), max_tokens))
            .collect::<Result<Vec<_>, _>>()?;
        let mut by_length: Vec<usize> = (0..ids.len()).collect();
        by_length.sort_by_key(|&i| ids[i].len());
        let dim = self.encoder.hidden_size();
        let mut out = vec![0f32; rows.len() * dim];
        let mut rest = by_length.as_slice();
        while !rest.is_empty() {
            if cancelled() {
                return Err(EncoderError::Cancelled);
            }
            // Sorted by length, so a batch's last row is its longest.
            let mut take = 1;
            while take < rest.len() && (take + 1) * ids[rest[take]].len() <= BATCH_TOKENS {
                take += 1;
            }
            let (batch, tail) = rest.split_at(take);
            rest = tail;
            let batch_ids: Vec<Vec<u32>> = batch.iter().map(|&i| ids[i].clone()).collect();
            let vectors = self.encoder.embed_ids(&batch_ids)?.to_vec2::<f32>()?;
            for (&i, vector) in batch.iter().zip(vectors) {
                out[i * dim..(i + 1) * dim].copy_from_slice(&vector);
            }
            lock.touch();
        }
        Ok(out)
    }
}

/// Row indices `0..len` in the fixed order every trial and cache shares.
pub fn fixed_order(len: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(ORDER_SEED));
    order
}

fn write_chunk(path: &Path, vectors: &[f32], rows: usize, dim: usize, max_tokens: usize) -> Result<(), DataError> {
    let data: Vec<u8> = vectors.iter().flat_map(|v| v.to_le_bytes()).collect();
    let metadata: HashMap<String, String> = [
        ("version".to_string(), CACHE_VERSION.to_string()),
        ("max_tokens".to_string(), max_tokens.to_string()),
        ("sha256".to_string(), hex::encode(Sha256::digest(&data))),
    ]
    .into();
    let view =
        TensorView::new(Dtype::F32, vec![rows, dim], &data).map_err(|e| DataError::invalid(path, e.to_string()))?;
    let bytes = safetensors::serialize([("embeddings", view)], Some(metadata))
        .map_err(|e| DataError::invalid(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// A chunk file's vectors after every check, or why it is not to be trusted.
fn parse_chunk(bytes: &[u8], rows: usize, dim: usize, max_tokens: usize) -> Result<Vec<f32>, String> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let tensors = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let setting = |key: &str| meta.get(key).cloned().unwrap_or_default();
    if setting("version") != CACHE_VERSION.to_string() || setting("max_tokens") != max_tokens.to_string() {
        return Err("written for other settings".into());
    }
    let view = tensors.tensor("embeddings").map_err(|e| e.to_string())?;
    if view.dtype() != Dtype::F32 || view.shape() != [rows, dim] {
        return Err(format!("{:?} {:?}, expected F32 [{rows}, {dim}]", view.dtype(), view.shape()));
    }
    if hex::encode(Sha256::digest(view.data())) != setting("sha256") {
        return Err("checksum mismatch".into());
    }
    let vectors: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    if !vectors.iter().all(|v| v.is_finite()) {
        return Err("non-finite values".into());
    }
    Ok(vectors)
}

#[cfg(test)]
mod tests {
    use super::super::bert::fresh_test_paths;
    use super::*;
    use candle_core::Device;
    use std::fs::File;
    use std::time::SystemTime;

    const NEVER: &dyn Fn() -> bool = &|| false;

    /// The chunk files of the only cache directory under `paths`.
    fn chunk_dir(paths: &DataPaths) -> PathBuf {
        let root = paths.cache_dir.join("imdb-bert");
        let model = std::fs::read_dir(&root).unwrap().next().unwrap().unwrap().path();
        std::fs::read_dir(model).unwrap().next().unwrap().unwrap().path()
    }

    #[test]
    fn a_larger_subset_reuses_the_cache_and_a_damaged_chunk_is_rebuilt() {
        let (paths, _cache) = fresh_test_paths();
        let encoder = SentenceEncoder::load(&paths, &Device::Cpu).unwrap();
        let cache = EmbeddingCache::new(&paths, &encoder).unwrap().with_chunk(4);

        let (six, stats) = cache.load(&paths, Split::Test, 6, 32, NEVER).unwrap();
        assert_eq!((six.len(), six.dim, six.vectors.len()), (6, 384, 6 * 384));
        assert_eq!((stats.embedded, stats.reused), (8, 0), "whole chunks are embedded");

        let (ten, stats) = cache.load(&paths, Split::Test, 10, 32, NEVER).unwrap();
        assert_eq!((stats.embedded, stats.reused), (4, 8));
        assert_eq!(&ten.vectors[..six.vectors.len()], six.vectors.as_slice());
        assert_eq!(&ten.labels[..6], six.labels.as_slice());

        // The rows are the fixed order's, with their labels and their own vectors.
        let order = fixed_order(imdb::SPLIT_SIZE);
        let (texts, labels) = read_reviews(&paths.locate(&imdb::TEST).unwrap()).unwrap();
        assert_eq!(ten.labels, order[..10].iter().map(|&r| labels[r]).collect::<Vec<_>>());
        let text = texts[order[7]].replace("<br />", " ");
        let alone = encoder.embed_batch(&[&text], 32).unwrap().to_vec2::<f32>().unwrap().remove(0);
        assert!(alone.iter().zip(ten.row(7)).all(|(a, b)| (a - b).abs() < 1e-5));

        // Another max_tokens is another cache.
        let (_, stats) = cache.load(&paths, Split::Test, 3, 16, NEVER).unwrap();
        assert_eq!((stats.embedded, stats.reused), (4, 0));

        // Cut one file, flip a byte in another: both are rebuilt, with the same values.
        let dir = paths.cache_dir.join("imdb-bert");
        let mut files: Vec<PathBuf> = Vec::new();
        for model in std::fs::read_dir(&dir).unwrap() {
            for split in std::fs::read_dir(model.unwrap().path()).unwrap() {
                let split = split.unwrap().path();
                if split.to_string_lossy().contains("-t32-") {
                    files.extend(std::fs::read_dir(&split).unwrap().map(|f| f.unwrap().path()));
                }
            }
        }
        files.sort();
        assert_eq!(files.len(), 3, "{files:?}");
        let bytes = std::fs::read(&files[0]).unwrap();
        std::fs::write(&files[0], &bytes[..bytes.len() / 2]).unwrap();
        let mut bytes = std::fs::read(&files[1]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&files[1], bytes).unwrap();
        let (again, stats) = cache.load(&paths, Split::Test, 10, 32, NEVER).unwrap();
        assert_eq!((stats.embedded, stats.reused), (8, 4));
        assert_eq!(again, ten);
    }

    #[test]
    fn a_locked_chunk_is_awaited_and_a_stale_lock_taken_over() {
        let (paths, _cache) = fresh_test_paths();
        let encoder = SentenceEncoder::load(&paths, &Device::Cpu).unwrap();
        let cache = EmbeddingCache::new(&paths, &encoder).unwrap().with_chunk(2);
        // Creates the directory; chunk 0 is cached.
        cache.load(&paths, Split::Train, 2, 16, NEVER).unwrap();
        let dir = chunk_dir(&paths);
        // Chunk 1 is held by a live process, chunk 2 by a dead one.
        let live = dir.join("chunk-00001.lock");
        std::fs::write(&live, b"").unwrap();
        let dead = File::create(dir.join("chunk-00002.lock")).unwrap();
        dead.set_modified(SystemTime::now() - STALE_LOCK * 2).unwrap();

        std::thread::scope(|scope| {
            let loading = scope.spawn(|| cache.load(&paths, Split::Train, 6, 16, NEVER));
            // The stale lock's chunk gets embedded while the live one is awaited.
            let chunk2 = dir.join("chunk-00002.safetensors");
            let deadline = Instant::now() + Duration::from_secs(60);
            while !chunk2.is_file() {
                assert!(Instant::now() < deadline, "chunk 2 was never embedded");
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(!loading.is_finished(), "the load must wait for the locked chunk");
            assert!(!dir.join("chunk-00001.safetensors").exists());
            // The live process goes away without writing its chunk: the load embeds it itself.
            std::fs::remove_file(&live).unwrap();
            let (embedded, stats) = loading.join().unwrap().unwrap();
            assert_eq!(embedded.len(), 6);
            assert_eq!((stats.embedded, stats.reused), (4, 2));
        });
        assert!(!dir.join("chunk-00002.lock").exists());

        // A cancelled load that waits on a lock stops.
        std::fs::write(dir.join("chunk-00003.lock"), b"").unwrap();
        let err = cache.load(&paths, Split::Train, 8, 16, &|| true).unwrap_err();
        assert!(matches!(err, EncoderError::Cancelled), "{err}");
    }
}
