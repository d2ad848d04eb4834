//! Strata's semantic tier (L3): results found by the meaning of a question, never across tenants.
//!
//! An assistant or a text-to-SQL agent asks the same question in different words. L3 stores each
//! result with an embedding of its question (the application's `intent` text, else the
//! normalized statement) and answers a new question with the most similar stored one, if the
//! similarity reaches a threshold *and* every guard agrees. Serving the answer to a different
//! question is the failure that matters here, so the guards are on by default.
//!
//! # Parts
//! - [`SemanticTier`]: implements [`strata_core::CacheTier`] for exact keys, plus
//!   [`SemanticTier::lookup`] / [`SemanticTier::insert`] for similarity, returning a
//!   [`SemanticHit`] with the score and the matched text.
//! - Guards ([`Guards`], [`Guard`], [`Literal`]): a match must be in the same scope (database,
//!   role, settings digest: always), read the same tables, carry the same literal values, and use
//!   the same comparison and negation words. They are equalities, so each combination gets its
//!   own index (a *partition*): other tenants' entries are never candidates.
//! - [`CosineSimilarity`]: the validated threshold type, settable per request.
//! - [`Embedder`]: an object-safe async trait. [`LocalEmbedder`] (the default) hashes words and
//!   character n-grams, with no model and no network; [`HttpEmbedder`] calls an OpenAI-compatible
//!   `/v1/embeddings` or Ollama `/api/embed` endpoint, over `http://` or `https://`, with a
//!   timeout, batching and a cache. `MiniLmEmbedder` (feature `minilm`) runs the
//!   all-MiniLM-L6-v2 sentence-embedding model in process, on the CPU, from local files.
//!   An embedder failure or a missed deadline is a miss, never an error.
//! - [`VectorIndex`] / [`IndexConfig`]: the hybrid index of each partition: an exact scan below a
//!   size, an HNSW graph above it. Graphs are built with hnsw_rs (cosine over unit vectors) by a
//!   background thread; an insert only appends to a store, and vectors not yet in the graph are
//!   scanned exactly. Lookups search a flat copy of the graph's adjacency (refreshed by the
//!   indexer), because hnsw_rs's own search allocates per visited node and descends the upper
//!   layers one hop per layer; hnsw_rs's own filtered search (`FilterT`) remains the fallback
//!   before the first copy exists. hnsw_rs cannot delete, so evicted, expired and invalidated
//!   entries are tombstoned and skipped during the search (traversed, never returned), and the
//!   partition is rebuilt in the background and swapped atomically when tombstones pass a share.
//!
//! # Example
//! ```
//! use std::time::{Duration, SystemTime};
//! use bytes::Bytes;
//! use strata_core::{CacheKey, CachedResult, KeyScope, PutOutcome, SettingsDigest, TableName};
//! use strata_l3::{Literal, SemanticRequest, SemanticTier};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let tier = SemanticTier::builder().build()?;
//! let scope = KeyScope::new("shop", "analyst", SettingsDigest::default());
//! let tables = [TableName::new("orders")];
//! let literals = [Literal::string("Alice")];
//!
//! let asked = SemanticRequest::new(&scope, "How many orders did Alice place?")
//!     .with_tables(&tables)
//!     .with_literals(&literals);
//! let key = CacheKey::builder(&scope, b"SELECT count(*) FROM orders WHERE customer = $1").build();
//! let result = CachedResult::builder(Bytes::from_static(b"42"))
//!     .with_created_at(SystemTime::now())
//!     .with_ttl(Duration::from_secs(60))
//!     .build();
//! assert_eq!(tier.insert(&asked, key, result).await, PutOutcome::Stored);
//!
//! let again = SemanticRequest::new(&scope, "number of orders placed by Alice")
//!     .with_tables(&tables)
//!     .with_literals(&literals);
//! let hit = tier.lookup(&again).await.expect("a reworded question hits");
//! assert_eq!(hit.matched_text(), "How many orders did Alice place?");
//! assert!(hit.similarity().get() >= 0.8);
//!
//! let other_name = [Literal::string("Bob")];
//! let bob = SemanticRequest::new(&scope, "How many orders did Bob place?")
//!     .with_tables(&tables)
//!     .with_literals(&other_name);
//! assert!(tier.lookup(&bob).await.is_none(), "different literal values never match");
//! # Ok::<(), strata_l3::Error>(())
//! # }).unwrap();
//! ```
//!
//! # Feature flags
//! - `https` (on by default): `https://` URLs for [`HttpEmbedder`], with rustls (ring provider,
//!   no C toolchain beyond what ring needs, no cmake) trusting the Mozilla roots from
//!   webpki-roots plus the roots given to `HttpEmbedderBuilder::with_root_certificate_pem`.
//!   Without it the crate has no TLS dependency and an `https://` URL is a configuration error;
//!   a local `http://` Ollama works either way.
//! - `minilm` (off by default): `MiniLmEmbedder`, a BERT forward pass written here on plain
//!   `f32` slices (no ML framework; the `multiversion` crate picks AVX2/FMA or NEON kernels at run
//!   time) with its own WordPiece tokenizer (`unicode-normalization`, `unicode_categories`).
//!   It reads `config.json`, `tokenizer.json` and `model.safetensors` from a directory the
//!   application provides; nothing is downloaded.

mod embed;
mod error;
mod flat;
mod guard;
mod http;
mod index;
#[cfg(feature = "minilm")]
mod minilm;
mod similarity;
mod tier;
#[cfg(feature = "https")]
mod tls;

pub use crate::{
    embed::{Embedder, LocalEmbedder},
    error::{Error, ErrorKind},
    guard::{Guard, Guards, Literal, LiteralKind},
    http::{EmbeddingApi, HttpEmbedder, HttpEmbedderBuilder},
    index::{IndexConfig, VectorIndex},
    similarity::CosineSimilarity,
    tier::{
        Indexing, Maintenance, SemanticHit, SemanticRequest, SemanticStats, SemanticTier, SemanticTierBuilder,
    },
};

#[cfg(feature = "minilm")]
pub use crate::minilm::MiniLmEmbedder;

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_debug<T: Send + Sync + std::fmt::Debug>() {}

    #[test]
    fn public_types_are_send_sync_and_debug() {
        assert_send_sync_debug::<SemanticTier>();
        assert_send_sync_debug::<SemanticTierBuilder>();
        assert_send_sync_debug::<SemanticRequest<'static>>();
        assert_send_sync_debug::<SemanticHit>();
        assert_send_sync_debug::<SemanticStats>();
        assert_send_sync_debug::<Maintenance>();
        assert_send_sync_debug::<Indexing>();
        assert_send_sync_debug::<CosineSimilarity>();
        assert_send_sync_debug::<Guards>();
        assert_send_sync_debug::<Guard>();
        assert_send_sync_debug::<Literal>();
        assert_send_sync_debug::<LiteralKind>();
        assert_send_sync_debug::<LocalEmbedder>();
        assert_send_sync_debug::<HttpEmbedder>();
        assert_send_sync_debug::<HttpEmbedderBuilder>();
        assert_send_sync_debug::<EmbeddingApi>();
        assert_send_sync_debug::<VectorIndex>();
        assert_send_sync_debug::<IndexConfig>();
        assert_send_sync_debug::<Error>();
        assert_send_sync_debug::<ErrorKind>();
        assert_send_sync_debug::<std::sync::Arc<dyn Embedder>>();
        #[cfg(feature = "minilm")]
        assert_send_sync_debug::<MiniLmEmbedder>();
    }
}
