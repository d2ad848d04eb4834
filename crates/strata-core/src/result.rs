//! Cached results: an opaque payload plus what a tier needs to decide whether it may serve it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// A table name as the normalizer resolved it (`public.users`, `users`, `"Mixed"`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName(Arc<str>);

impl TableName {
    /// A table name.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A table a result depends on, with the table's version observed before the query ran.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TableVersion {
    /// The table.
    pub table: TableName,
    /// Its version when the result was filled.
    pub version: u64,
}

/// Bytes a result costs beyond its payload and table names: the metadata, reference counts and
/// the tier's bookkeeping. An estimate, so that many tiny results cannot overrun a byte bound.
const FIXED_OVERHEAD_BYTES: u64 = 128;

#[derive(PartialEq, Eq)]
struct Inner {
    payload: Bytes,
    row_count: u64,
    dependencies: Vec<TableVersion>,
    created_at: SystemTime,
    ttl: Duration,
    expires_at: SystemTime,
    fill_cost: Duration,
    weight_bytes: u64,
}

/// One cached query result.
///
/// Cloning is one reference-count increment (payload and metadata share one allocation), so a
/// hit hands out a clone; callers write the payload out by reference. `Debug` never prints the
/// payload, which holds user data.
#[derive(Clone, PartialEq, Eq)]
pub struct CachedResult {
    inner: Arc<Inner>,
}

impl CachedResult {
    /// Starts a result around `payload` (for the proxy, the PostgreSQL wire frames of the answer).
    pub fn builder(payload: Bytes) -> CachedResultBuilder {
        CachedResultBuilder {
            payload,
            row_count: 0,
            dependencies: Vec::new(),
            created_at: SystemTime::UNIX_EPOCH,
            ttl: Duration::from_secs(60),
            fill_cost: Duration::ZERO,
        }
    }

    /// The payload.
    #[inline]
    pub fn payload(&self) -> &Bytes {
        &self.inner.payload
    }

    /// How many rows the result holds.
    pub fn row_count(&self) -> u64 {
        self.inner.row_count
    }

    /// The tables the result depends on, with the versions seen when it was filled.
    pub fn dependencies(&self) -> &[TableVersion] {
        &self.inner.dependencies
    }

    /// When the result was filled (wall clock, comparable across processes).
    pub fn created_at(&self) -> SystemTime {
        self.inner.created_at
    }

    /// How long after [`created_at`](Self::created_at) the result may be served.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// When the result stops being servable.
    #[inline]
    pub fn expires_at(&self) -> SystemTime {
        self.inner.expires_at
    }

    /// Whether the result has expired at `now`.
    #[inline]
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.expires_at()
    }

    /// The time left to live at `now`; zero once expired.
    pub fn remaining_ttl(&self, now: SystemTime) -> Duration {
        self.expires_at().duration_since(now).unwrap_or(Duration::ZERO)
    }

    /// How old the result is at `now`; zero if `now` is before its creation (clock skew).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.inner.created_at).unwrap_or(Duration::ZERO)
    }

    /// How long the database took to produce it: what a hit saves.
    pub fn fill_cost(&self) -> Duration {
        self.inner.fill_cost
    }

    /// What the result costs a byte-bounded tier: payload, table names and a fixed overhead.
    #[inline]
    pub fn weight_bytes(&self) -> u64 {
        self.inner.weight_bytes
    }
}

impl fmt::Debug for CachedResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedResult")
            .field("payload_bytes", &self.inner.payload.len())
            .field("row_count", &self.inner.row_count)
            .field("dependencies", &self.inner.dependencies)
            .field("created_at", &self.inner.created_at)
            .field("ttl", &self.inner.ttl)
            .field("fill_cost", &self.inner.fill_cost)
            .field("weight_bytes", &self.inner.weight_bytes)
            .finish()
    }
}

/// Builds a [`CachedResult`].
#[derive(Clone)]
pub struct CachedResultBuilder {
    payload: Bytes,
    row_count: u64,
    dependencies: Vec<TableVersion>,
    created_at: SystemTime,
    ttl: Duration,
    fill_cost: Duration,
}

impl CachedResultBuilder {
    /// Rows in the result. Default: 0.
    #[must_use]
    pub fn with_row_count(mut self, rows: u64) -> Self {
        self.row_count = rows;
        self
    }

    /// Adds a table the result depends on, with the version observed before the query ran.
    #[must_use]
    pub fn with_dependency(mut self, table: TableName, version: u64) -> Self {
        self.dependencies.push(TableVersion { table, version });
        self
    }

    /// When the result was filled. Default: the Unix epoch, so always set it from a [`Clock`](crate::Clock).
    #[must_use]
    pub fn with_created_at(mut self, at: SystemTime) -> Self {
        self.created_at = at;
        self
    }

    /// How long the result may be served. Default: 60 s.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long the database took to produce the result. Default: zero.
    #[must_use]
    pub fn with_fill_cost(mut self, cost: Duration) -> Self {
        self.fill_cost = cost;
        self
    }

    /// Finishes the result.
    pub fn build(self) -> CachedResult {
        let names: u64 = self.dependencies.iter().map(|d| d.table.as_str().len() as u64 + 16).sum();
        let weight_bytes = self.payload.len() as u64 + names + FIXED_OVERHEAD_BYTES;
        CachedResult {
            inner: Arc::new(Inner {
                payload: self.payload,
                row_count: self.row_count,
                dependencies: self.dependencies,
                created_at: self.created_at,
                ttl: self.ttl,
                // A TTL too large to add to the creation time saturates far in the future rather
                // than expiring the result at once.
                expires_at: self.created_at.checked_add(self.ttl).unwrap_or_else(far_future),
                fill_cost: self.fill_cost,
                weight_bytes,
            }),
        }
    }
}

impl fmt::Debug for CachedResultBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedResultBuilder").field("payload_bytes", &self.payload.len()).finish()
    }
}

fn far_future() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> CachedResult {
        CachedResult::builder(Bytes::from_static(b"row: alice@example.com"))
            .with_row_count(1)
            .with_dependency(TableName::new("public.users"), 7)
            .with_created_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1000))
            .with_ttl(Duration::from_secs(30))
            .with_fill_cost(Duration::from_millis(3))
            .build()
    }

    #[test]
    fn debug_never_prints_the_payload() {
        let shown = format!("{:?}", result());
        assert!(!shown.contains("alice"), "{shown}");
        assert!(shown.contains("payload_bytes: 22"), "{shown}");
        assert!(shown.contains("public.users"), "{shown}");
    }

    #[test]
    fn expiry_age_and_remaining_ttl_follow_created_at_and_ttl() {
        let r = result();
        let created = r.created_at();
        assert!(!r.is_expired_at(created + Duration::from_secs(29)));
        assert!(r.is_expired_at(created + Duration::from_secs(30)));
        assert_eq!(r.remaining_ttl(created + Duration::from_secs(10)), Duration::from_secs(20));
        assert_eq!(r.remaining_ttl(created + Duration::from_secs(31)), Duration::ZERO);
        assert_eq!(r.age(created + Duration::from_secs(5)), Duration::from_secs(5));
        assert_eq!(r.age(created - Duration::from_secs(5)), Duration::ZERO);
    }

    #[test]
    fn weight_counts_payload_names_and_overhead() {
        let r = result();
        assert_eq!(r.weight_bytes(), 22 + ("public.users".len() as u64 + 16) + FIXED_OVERHEAD_BYTES);
        let clone = r.clone();
        assert_eq!(clone, r);
        assert_eq!(clone.payload().as_ptr(), r.payload().as_ptr(), "a clone shares the payload");
    }
}
