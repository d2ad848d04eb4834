//! Building a hot tier: capacity, the per-entry limit, and the shard layout that keeps it honest.

use std::fmt;
use std::sync::Arc;

use strata_core::Clock;

use crate::{Error, HotTier};

/// The share of a shard's capacity quick_cache admits for one item (its hot-queue target);
/// heavier items are dropped by quick_cache without notice, so the tier refuses them first.
pub(crate) const QUICK_CACHE_HOT_SHARE: f64 = 0.97;

/// Builds a [`HotTier`]. Every setter documents its default.
#[derive(Clone)]
pub struct HotTierBuilder {
    pub(crate) capacity_bytes: u64,
    pub(crate) max_entry_bytes: Option<u64>,
    pub(crate) estimated_entry_bytes: u64,
    pub(crate) max_shards: Option<usize>,
    pub(crate) clock: Option<Arc<dyn Clock>>,
    pub(crate) name: String,
}

impl Default for HotTierBuilder {
    fn default() -> Self {
        Self {
            capacity_bytes: 64 << 20,
            max_entry_bytes: None,
            estimated_entry_bytes: 2048,
            max_shards: None,
            clock: None,
            name: "l1".to_owned(),
        }
    }
}

impl HotTierBuilder {
    /// The most bytes the tier holds (payloads, keys and overhead, as weighed by
    /// [`CachedResult::weight_bytes`](strata_core::CachedResult::weight_bytes)). Default: 64 MiB.
    #[must_use]
    pub fn with_capacity_bytes(mut self, bytes: u64) -> Self {
        self.capacity_bytes = bytes;
        self
    }

    /// The heaviest entry the tier accepts; heavier ones are refused and counted.
    /// Default: 1/16 of the capacity. It may not exceed what one shard can hold, so a large limit
    /// means fewer shards (more contention); see [`with_max_shards`](Self::with_max_shards).
    #[must_use]
    pub fn with_max_entry_bytes(mut self, bytes: u64) -> Self {
        self.max_entry_bytes = Some(bytes);
        self
    }

    /// A guess of the average entry weight, used to size internal tables. Default: 2 KiB.
    #[must_use]
    pub fn with_estimated_entry_bytes(mut self, bytes: u64) -> Self {
        self.estimated_entry_bytes = bytes;
        self
    }

    /// The most shards (independently locked parts). Default: 4 per available core, fewer when
    /// the per-entry limit requires larger shards.
    #[must_use]
    pub fn with_max_shards(mut self, shards: usize) -> Self {
        self.max_shards = Some(shards);
        self
    }

    /// The clock used for TTLs. Default: [`CoarseClock`](crate::CoarseClock), the system clock refreshed every millisecond.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The tier's name in stats and metrics. Default: `l1`.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Validates the settings and builds the tier.
    pub fn build(self) -> Result<HotTier, Error> {
        if self.capacity_bytes < 1024 {
            return Err(Error::config(format!(
                "l1 capacity must be at least 1024 bytes, got {}",
                self.capacity_bytes
            )));
        }
        let max_entry_bytes = self.max_entry_bytes.unwrap_or(self.capacity_bytes / 16);
        let admissible = (self.capacity_bytes as f64 * QUICK_CACHE_HOT_SHARE) as u64;
        if max_entry_bytes == 0 || max_entry_bytes > admissible {
            return Err(Error::config(format!(
                "l1 max entry size must be between 1 and {admissible} bytes (97% of capacity), got {max_entry_bytes}"
            )));
        }
        if self.estimated_entry_bytes == 0 {
            return Err(Error::config("l1 estimated entry size must be at least 1 byte"));
        }
        if self.max_shards == Some(0) {
            return Err(Error::config("l1 needs at least one shard"));
        }
        Ok(HotTier::from_builder(self, max_entry_bytes))
    }
}

impl fmt::Debug for HotTierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotTierBuilder")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .field("estimated_entry_bytes", &self.estimated_entry_bytes)
            .field("max_shards", &self.max_shards)
            .field("clock", &self.clock)
            .field("name", &self.name)
            .finish()
    }
}

/// The number of shards: the largest power of two that is at most `max_shards` and leaves every
/// shard room for an entry of `max_entry_bytes` (quick_cache admits at most 97% of a shard).
pub(crate) fn shard_count(capacity_bytes: u64, max_entry_bytes: u64, max_shards: usize) -> usize {
    let by_entry = (capacity_bytes as f64 * QUICK_CACHE_HOT_SHARE / max_entry_bytes as f64) as u64;
    let limit = by_entry.min(max_shards as u64).max(1);
    // Largest power of two <= limit.
    1usize << (63 - limit.leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_are_refused_with_a_reason() {
        let err = HotTier::builder().with_capacity_bytes(10).build().err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("l1 capacity must be at least 1024 bytes, got 10"));
        let err = HotTier::builder()
            .with_capacity_bytes(1 << 20)
            .with_max_entry_bytes(1 << 20)
            .build()
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("l1 max entry size must be between 1 and 1017118 bytes (97% of capacity), got 1048576")
        );
        assert!(HotTier::builder().with_max_shards(0).build().is_err());
    }

    #[test]
    fn shard_count_leaves_room_for_the_largest_entry() {
        assert_eq!(shard_count(64 << 20, 4 << 20, 64), 8);
        assert_eq!(shard_count(64 << 20, 64, 8), 8);
        assert_eq!(shard_count(1 << 20, 1 << 19, 64), 1);
        assert_eq!(shard_count(1000, 1, 3), 2);
    }
}
