//! Choosing the backend and the tier's settings at run time, from a serde-deserializable config.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use strata_core::{Clock, SystemClock};

use crate::redis_storage::redact;
use crate::{Error, MemoryStorage, RedisStorage, Storage, WarmTier};

/// Which storage backs the tier, as written in a config file (`backend = "memory" | "redis" | "redis_cluster"`).
///
/// ```
/// let config: strata_l2::StorageConfig = toml::from_str(r#"
///     backend = "redis"
///     url = "redis://:secret@127.0.0.1:6379/2"
///     key_prefix = "shop:l2:"
/// "#)?;
/// assert!(!format!("{config:?}").contains("secret"));
/// # Ok::<(), toml::de::Error>(())
/// ```
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum StorageConfig {
    /// The embedded in-process store.
    Memory {
        /// The most bytes held. Default: 256 MiB.
        #[serde(default = "default_memory_capacity")]
        capacity_bytes: u64,
    },
    /// One Redis server.
    Redis {
        /// `redis://[user][:password@]host[:port][/db]` (or `rediss://` with the `tls` feature).
        url: String,
        /// The prefix of every key. Default: `strata:l2:`.
        #[serde(default = "default_prefix")]
        key_prefix: String,
    },
    /// A Redis Cluster.
    RedisCluster {
        /// URLs of some of the cluster's nodes.
        nodes: Vec<String>,
        /// The prefix of every key. Default: `strata:l2:`.
        #[serde(default = "default_prefix")]
        key_prefix: String,
    },
}

fn default_memory_capacity() -> u64 {
    256 << 20
}

fn default_prefix() -> String {
    "strata:l2:".to_owned()
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig::Memory { capacity_bytes: default_memory_capacity() }
    }
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageConfig::Memory { capacity_bytes } => {
                f.debug_struct("Memory").field("capacity_bytes", capacity_bytes).finish()
            }
            StorageConfig::Redis { url, key_prefix } => {
                f.debug_struct("Redis").field("url", &redact(url)).field("key_prefix", key_prefix).finish()
            }
            StorageConfig::RedisCluster { nodes, key_prefix } => f
                .debug_struct("RedisCluster")
                .field("nodes", &nodes.iter().map(|n| redact(n)).collect::<Vec<_>>())
                .field("key_prefix", key_prefix)
                .finish(),
        }
    }
}

impl StorageConfig {
    /// Builds the storage. Redis backends must be built inside a tokio runtime; they connect in
    /// the background, so a Redis that is down at start-up is not an error.
    pub fn build(&self) -> Result<Arc<dyn Storage>, Error> {
        self.build_with_clock(Arc::new(SystemClock))
    }

    /// Builds the storage, reading time (the memory backend's TTLs) from `clock`.
    pub fn build_with_clock(&self, clock: Arc<dyn Clock>) -> Result<Arc<dyn Storage>, Error> {
        Ok(match self {
            StorageConfig::Memory { capacity_bytes } => Arc::new(
                MemoryStorage::builder().with_capacity_bytes(*capacity_bytes).with_clock(clock).build()?,
            ),
            StorageConfig::Redis { url, key_prefix } => {
                Arc::new(RedisStorage::standalone(url.clone()).with_key_prefix(key_prefix.clone()).build()?)
            }
            StorageConfig::RedisCluster { nodes, key_prefix } => {
                Arc::new(RedisStorage::cluster(nodes.clone()).with_key_prefix(key_prefix.clone()).build()?)
            }
        })
    }
}

/// The warm tier's settings as written in a config file; every field has a default.
///
/// ```
/// let config: strata_l2::WarmTierConfig = toml::from_str(r#"
///     deadline_ms = 3
///     [storage]
///     backend = "memory"
///     capacity_bytes = 1048576
/// "#)?;
/// assert_eq!(config.deadline_ms, 3);
/// # Ok::<(), toml::de::Error>(())
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WarmTierConfig {
    /// The backend. Default: memory, 256 MiB.
    pub storage: StorageConfig,
    /// The most one lookup or write may take, in milliseconds. Default: 5.
    pub deadline_ms: u64,
    /// Consecutive failures that open the circuit breaker. Default: 5.
    pub breaker_failure_threshold: u32,
    /// How long the breaker stays open before a probe, in milliseconds. Default: 1000.
    pub breaker_cooldown_ms: u64,
    /// Payloads of at least this many bytes are lz4-compressed. Default: 4096.
    pub compress_above_bytes: usize,
    /// The largest payload stored or accepted. Default: 16 MiB.
    pub max_payload_bytes: usize,
}

impl Default for WarmTierConfig {
    fn default() -> Self {
        Self {
            storage: StorageConfig::default(),
            deadline_ms: 5,
            breaker_failure_threshold: 5,
            breaker_cooldown_ms: 1000,
            compress_above_bytes: 4096,
            max_payload_bytes: 16 << 20,
        }
    }
}

impl WarmTierConfig {
    /// Builds the storage and the tier over it, validating every setting.
    pub fn build(&self) -> Result<WarmTier, Error> {
        self.build_with_clock(Arc::new(SystemClock))
    }

    /// Builds the storage and the tier over it, both reading time from `clock` (a cheap clock
    /// matters: the in-memory backend's hit reads it once).
    pub fn build_with_clock(&self, clock: Arc<dyn Clock>) -> Result<WarmTier, Error> {
        WarmTier::builder(self.storage.build_with_clock(clock.clone())?)
            .with_clock(clock)
            .with_deadline(Duration::from_millis(self.deadline_ms))
            .with_breaker_failure_threshold(self.breaker_failure_threshold)
            .with_breaker_cooldown(Duration::from_millis(self.breaker_cooldown_ms))
            .with_compress_above_bytes(self.compress_above_bytes)
            .with_max_payload_bytes(self.max_payload_bytes)
            .build()
    }
}
