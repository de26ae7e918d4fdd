//! Keras-equivalent text preprocessing: the legacy `keras.preprocessing.text.Tokenizer` with an
//! out-of-vocabulary token, and `pad_sequences(padding="pre", truncating="pre")`.
//!
//! The rules, as Keras applies them (tests compare against fixtures made with `keras_preprocessing`
//! 1.1.2, see `tests/fixtures/make_keras_tokenizer_fixture.py`):
//!
//! 1. `<br />` becomes a space (IMDB's line breaks; Keras itself would keep a word `br`);
//! 2. the text is lowercased (full Unicode lowercase, like Python's `str.lower`);
//! 3. each character of [`FILTERS`] becomes a space; the apostrophe is not among them, so `don't`
//!    stays one word;
//! 4. words are split on the space character only (a tab or newline is filtered in step 3; a
//!    non-breaking space is not, and stays inside a word);
//! 5. the word index ranks words by their count over the training texts, most frequent first, ties
//!    in order of first appearance; index [`PAD`] is padding, [`OOV`] the out-of-vocabulary token,
//!    the most frequent word gets 2;
//! 6. encoding keeps indices below `num_words` (`max_features`) and maps every other or unseen word
//!    to [`OOV`].

use std::collections::HashMap;

/// Padding index.
pub const PAD: u32 = 0;
/// Out-of-vocabulary index.
pub const OOV: u32 = 1;

/// Keras' default `filters`: each becomes a word break.
pub const FILTERS: &str = "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n";

/// The normalised text whose space-separated pieces are the words.
pub fn normalize(text: &str) -> String {
    let lowered = text.replace("<br />", " ").to_lowercase();
    lowered.chars().map(|c| if FILTERS.contains(c) { ' ' } else { c }).collect()
}

/// The words of `normalized` (the output of [`normalize`]), in order.
pub fn words(normalized: &str) -> impl Iterator<Item = &str> {
    normalized.split(' ').filter(|w| !w.is_empty())
}

/// A word index fitted on training texts, keeping `num_words` indices (padding and OOV included).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    num_words: u32,
    /// Words in index order: `vocab[0]` has index 2.
    vocab: Vec<String>,
    index: HashMap<String, u32>,
}

impl Tokenizer {
    /// Fits the word index on `texts`, as `Tokenizer(num_words, oov_token=...).fit_on_texts`.
    pub fn fit<'a>(texts: impl IntoIterator<Item = &'a str>, num_words: u32) -> Self {
        // word -> (count, first appearance)
        let mut counts: HashMap<String, (u64, usize)> = HashMap::new();
        for text in texts {
            let normalized = normalize(text);
            for word in words(&normalized) {
                let next = counts.len();
                counts.entry(word.to_string()).or_insert((0, next)).0 += 1;
            }
        }
        let mut ranked: Vec<(String, (u64, usize))> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.1 .1.cmp(&b.1 .1)));
        let vocab: Vec<String> = ranked.into_iter().map(|(w, _)| w).collect();
        let index = vocab.iter().enumerate().map(|(i, w)| (w.clone(), i as u32 + 2)).collect();
        Tokenizer { num_words, vocab, index }
    }

    /// Distinct words seen in training.
    pub fn vocabulary_size(&self) -> usize {
        self.vocab.len()
    }

    /// The full word index (OOV first), in index order: `(word, index)`.
    pub fn word_index(&self) -> impl Iterator<Item = (&str, u32)> {
        self.vocab.iter().enumerate().map(|(i, w)| (w.as_str(), i as u32 + 2))
    }

    /// The index a word gets when encoded.
    pub fn lookup(&self, word: &str) -> u32 {
        match self.index.get(word) {
            Some(&i) if i < self.num_words => i,
            _ => OOV,
        }
    }

    /// `texts_to_sequences` for one text: every word, unpadded.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let normalized = normalize(text);
        words(&normalized).map(|w| self.lookup(w)).collect()
    }
}

/// `pad_sequences(..., maxlen, padding="pre", truncating="pre", value=0)` for one sequence: the
/// last `maxlen` ids, zeros in front when shorter.
pub fn pad_pre(sequence: &[u32], maxlen: usize, out: &mut [u32]) {
    debug_assert_eq!(out.len(), maxlen);
    let kept = &sequence[sequence.len().saturating_sub(maxlen)..];
    let pad = maxlen - kept.len();
    out[..pad].fill(PAD);
    out[pad..].copy_from_slice(kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/keras_tokenizer.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("read keras fixture")).expect("parse fixture")
    }

    fn strings(v: &serde_json::Value) -> Vec<String> {
        serde_json::from_value(v.clone()).expect("strings")
    }

    fn sequences(v: &serde_json::Value) -> Vec<Vec<u32>> {
        serde_json::from_value(v.clone()).expect("sequences")
    }

    #[test]
    fn matches_keras_on_the_handwritten_corpus() {
        let f = fixture();
        let train = strings(&f["train_texts"]);
        let test = strings(&f["test_texts"]);
        let num_words = f["num_words"].as_u64().expect("num_words") as u32;
        let maxlen = f["maxlen"].as_u64().expect("maxlen") as usize;
        let tok = Tokenizer::fit(train.iter().map(String::as_str), num_words);

        let expected_index: Vec<(String, u32)> = serde_json::from_value(f["word_index"].clone()).expect("word_index");
        let mut got_index: Vec<(String, u32)> = vec![("[UNK]".to_string(), OOV)];
        got_index.extend(tok.word_index().map(|(w, i)| (w.to_string(), i)));
        assert_eq!(got_index, expected_index, "word index (order and ties)");

        for (texts, seq_key, pad_key) in
            [(&train, "train_sequences", "train_padded"), (&test, "test_sequences", "test_padded")]
        {
            let got: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t)).collect();
            assert_eq!(got, sequences(&f[seq_key]), "{seq_key}");
            let padded: Vec<Vec<u32>> = got
                .iter()
                .map(|s| {
                    let mut out = vec![0; maxlen];
                    pad_pre(s, maxlen, &mut out);
                    out
                })
                .collect();
            assert_eq!(padded, sequences(&f[pad_key]), "{pad_key}");
        }
    }

    #[test]
    fn padding_and_truncation_are_pre() {
        let mut out = vec![9; 4];
        pad_pre(&[5, 6], 4, &mut out);
        assert_eq!(out, [0, 0, 5, 6]);
        pad_pre(&[1, 2, 3, 4, 5, 6], 4, &mut out);
        assert_eq!(out, [3, 4, 5, 6]);
        pad_pre(&[], 4, &mut out);
        assert_eq!(out, [0, 0, 0, 0]);
    }

    #[test]
    fn filters_break_words_but_apostrophes_do_not() {
        let n = normalize("Don't<br />STOP!Now\tor-never.");
        assert_eq!(words(&n).collect::<Vec<_>>(), ["don't", "stop", "now", "or", "never"]);
    }
}
