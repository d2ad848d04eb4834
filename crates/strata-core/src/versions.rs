//! Table versions: how a write makes every cached result that read the table unreachable.

use std::fmt;

use async_trait::async_trait;

use crate::{Error, TableName};

/// Whether a [`VersionStore`] can vouch for the versions it just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionView {
    /// The versions are current: every bump that completed before the read is reflected.
    Current,
    /// The store may have missed bumps (its change channel is down, or it is resynchronizing):
    /// callers must not serve cached results keyed by these versions.
    Unsynchronized,
}

/// The state of a store's view, for metrics and health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VersionHealth {
    /// Versions are local to this process: always current.
    Local,
    /// Shared versions, with the change channel connected and in sequence.
    Synchronized,
    /// Shared versions whose change channel is down or out of sequence; resynchronizing.
    Unsynchronized,
}

/// A counter per table, bumped by every write to it.
///
/// Cache keys include the versions of the tables a statement reads, read *before* the query
/// runs, so a result filled before a write is keyed by the old version and becomes unreachable
/// once the write's bump completes: invalidation costs O(tables), never O(keys), and a slow fill
/// that lands after a write cannot be served. Versions only grow.
///
/// A store shared between processes (say, through Redis) keeps a local mirror so that
/// [`read`](Self::read) stays synchronous; when it cannot be sure the mirror is complete it says
/// [`VersionView::Unsynchronized`], and lost invalidations never turn into silent staleness.
#[async_trait]
pub trait VersionStore: Send + Sync + fmt::Debug {
    /// Writes the current version of each table into `out` (cleared first, same order as `tables`).
    /// A table never bumped reads as the store's starting version: 0 for a local store; a shared
    /// store may start higher (for example after its backing data was lost, so that versions
    /// never repeat).
    fn read(&self, tables: &[TableName], out: &mut Vec<u64>) -> VersionView;

    /// Bumps the versions of `tables`. Returns once a following [`read`](Self::read) in this
    /// process sees the new versions; other processes see them within the store's propagation bound.
    /// Call it only after the write is committed, so no reader can fill an old answer under
    /// the new version.
    async fn bump(&self, tables: &[TableName]) -> Result<(), Error>;

    /// The state of the store's view.
    fn health(&self) -> VersionHealth;
}
