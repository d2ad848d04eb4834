//! The `Embedder` trait and the built-in local embedder (hashed words and character n-grams).

use std::borrow::Cow;
use std::fmt;

use async_trait::async_trait;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::guard::words;
use crate::Error;

/// Turns texts into vectors. Held as `Arc<dyn Embedder>` by the tier.
///
/// Vectors need not be normalized (the tier normalizes them) but must have
/// [`dimension`](Embedder::dimension) numbers; a wrong length, a zero vector or a non-finite
/// number makes the tier treat the call as failed. The tier bounds every call by its own
/// deadline and turns failures into misses, so implementations may simply return errors.
#[async_trait]
pub trait Embedder: Send + Sync + fmt::Debug {
    /// The length of every vector this embedder returns.
    fn dimension(&self) -> usize;

    /// One vector per text, in the order of `texts`.
    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error>;
}

/// An embedder that needs no model and no network: lowercased words (lightly stemmed, minus
/// filler words), word bigrams and character trigrams, hashed with signs into a fixed number of
/// dimensions. It is lexical: it recognizes reordered, re-punctuated and lightly reworded
/// questions, not synonyms it has never seen. Use [`HttpEmbedder`](crate::HttpEmbedder) with a
/// real model for paraphrases that share few words.
///
/// Never returns a zero vector: text without any feature (empty, only punctuation) gets one
/// feature of its own.
#[derive(Clone, Debug)]
pub struct LocalEmbedder {
    dimension: usize,
}

impl Default for LocalEmbedder {
    fn default() -> Self {
        Self { dimension: Self::DEFAULT_DIMENSION }
    }
}

/// Seeds that keep the feature families apart in the hash space.
const SEED_WORD: u64 = 0x5157_4f52_4400_0001;
const SEED_BIGRAM: u64 = 0x5157_4f52_4400_0002;
const SEED_TRIGRAM: u64 = 0x5157_4f52_4400_0003;
const SEED_EMPTY: u64 = 0x5157_4f52_4400_0004;

const WORD_WEIGHT: f32 = 1.0;
const BIGRAM_WEIGHT: f32 = 0.5;
const TRIGRAM_WEIGHT: f32 = 0.3;

/// Words that carry no meaning in a question to a database.
const FILLER: &[&str] = &[
    "a",
    "an",
    "the",
    "of",
    "for",
    "to",
    "in",
    "on",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "me",
    "my",
    "i",
    "you",
    "your",
    "we",
    "our",
    "us",
    "please",
    "show",
    "list",
    "give",
    "get",
    "find",
    "display",
    "return",
    "tell",
    "what",
    "which",
    "whose",
    "all",
    "every",
    "each",
    "do",
    "does",
    "did",
    "can",
    "could",
    "would",
    "will",
    "there",
    "that",
    "this",
    "these",
    "those",
    "with",
    "by",
    "from",
    "have",
    "has",
    "had",
    "it",
    "its",
    "let",
    "know",
    "see",
    "want",
    "need",
    "some",
    "any",
    "currently",
    "exactly",
    "just",
];

/// Small canonical forms for words that ask the same thing.
const CANONICAL: &[(&str, &str)] = &[
    ("how", "count"),
    ("many", "count"),
    ("number", "count"),
    ("counts", "count"),
    ("sum", "total"),
    ("average", "avg"),
    ("mean", "avg"),
    ("client", "customer"),
    ("clients", "customer"),
    ("cost", "price"),
    ("costs", "price"),
    ("bought", "purchase"),
    ("buy", "purchase"),
    ("placed", "place"),
];

impl LocalEmbedder {
    /// The default dimension, 128: on the labeled set it separates paraphrases from near-misses
    /// as well as 256 did, at half the cost of every scan, graph build and lookup.
    pub const DEFAULT_DIMENSION: usize = 128;

    /// A local embedder of `dimension` (16..=4096).
    pub fn new(dimension: usize) -> Result<Self, Error> {
        if !(16..=4096).contains(&dimension) {
            return Err(Error::config(format!(
                "local embedder dimension must be within 16..=4096, got {dimension}"
            )));
        }
        Ok(Self { dimension })
    }

    /// Embeds one text, synchronously (it is pure CPU work: a few microseconds).
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; self.dimension];
        let terms: Vec<String> = words(text)
            .into_iter()
            .filter(|w| !FILLER.contains(&w.as_str()))
            .map(|w| stem(canonical(&w)).into_owned())
            .collect();
        for term in &terms {
            self.add(&mut v, SEED_WORD, term.as_bytes(), WORD_WEIGHT);
            let padded: Vec<char> =
                std::iter::once('<').chain(term.chars()).chain(std::iter::once('>')).collect();
            let mut buf = String::new();
            for tri in padded.windows(3) {
                buf.clear();
                buf.extend(tri);
                self.add(&mut v, SEED_TRIGRAM, buf.as_bytes(), TRIGRAM_WEIGHT);
            }
        }
        for pair in terms.windows(2) {
            let joined = format!("{} {}", pair[0], pair[1]);
            self.add(&mut v, SEED_BIGRAM, joined.as_bytes(), BIGRAM_WEIGHT);
        }
        if v.iter().all(|x| *x == 0.0) {
            // No features, or features that cancelled out: give the text a direction of its own
            // so it is never the all-zero vector an HNSW index treats as matching everything.
            let h = xxh3_64_with_seed(text.as_bytes(), SEED_EMPTY);
            v[(h % self.dimension as u64) as usize] = 1.0;
        }
        v
    }

    fn add(&self, v: &mut [f32], seed: u64, feature: &[u8], weight: f32) {
        let h = xxh3_64_with_seed(feature, seed);
        let slot = (h % self.dimension as u64) as usize;
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        v[slot] += sign * weight;
    }
}

fn canonical(word: &str) -> &str {
    CANONICAL.iter().find(|(from, _)| *from == word).map_or(word, |(_, to)| to)
}

/// Singular form, roughly: `cities` → `city`, `orders` → `order`; leaves `address`, `status`.
fn stem(word: &str) -> Cow<'_, str> {
    if word.len() > 4 && word.ends_with("ies") {
        return Cow::Owned(format!("{}y", &word[..word.len() - 3]));
    }
    if word.len() > 3 && word.ends_with('s') && !word.ends_with("ss") && !word.ends_with("us") {
        return Cow::Borrowed(&word[..word.len() - 1]);
    }
    Cow::Borrowed(word)
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn dimension(&self) -> usize {
        self.dimension
    }

    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
        Ok(texts.iter().map(|t| self.embed_one(t)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::similarity::{dot, normalize};

    fn sim(e: &LocalEmbedder, a: &str, b: &str) -> f32 {
        let (mut x, mut y) = (e.embed_one(a), e.embed_one(b));
        assert!(normalize(&mut x) && normalize(&mut y));
        dot(&x, &y)
    }

    #[test]
    fn never_returns_a_zero_vector() {
        let e = LocalEmbedder::default();
        for text in ["", "   ", "?!", "the of a", "ü"] {
            let v = e.embed_one(text);
            assert_eq!(v.len(), LocalEmbedder::DEFAULT_DIMENSION);
            assert!(v.iter().any(|x| *x != 0.0), "{text:?}");
        }
    }

    #[test]
    fn reworded_questions_are_closer_than_different_ones() {
        let e = LocalEmbedder::default();
        let same = sim(&e, "How many orders did Alice place?", "number of orders placed by Alice");
        let other = sim(&e, "How many orders did Alice place?", "average price of products");
        assert!(same > 0.6, "{same}");
        assert!(other < 0.3, "{other}");
        assert!((sim(&e, "List all users", "list all users") - 1.0).abs() < 1e-5);
    }

    #[test]
    fn dimension_is_validated() {
        assert!(LocalEmbedder::new(8).is_err());
        assert!(LocalEmbedder::new(128).is_ok());
    }
}
