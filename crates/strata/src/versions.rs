//! Table versions in this process, and the mapping from table names to version units.

use std::collections::HashMap;
use std::sync::RwLock;

use strata_core::{async_trait, Error, TableName, VersionHealth, VersionStore, VersionView};

/// The version unit every key includes, bumped by writes whose effect is unknown ("everything").
/// PostgreSQL identifiers cannot contain NUL, so no table can share this name.
pub(crate) const EVERYTHING: &str = "\0everything";

/// The shared schema epoch: a unit no key includes, bumped when DDL commits (through Strata, or
/// seen in the WAL); every catalog follower sharing the versions reads its catalogs again when it
/// moves.
#[cfg_attr(not(feature = "catalog"), allow(dead_code))]
pub(crate) const SCHEMA: &str = "\0schema";

/// The unit a table's version is kept under: its relation name without the schema.
///
/// A write to `tenant_a.users` therefore also invalidates `tenant_b.users`: over-invalidation, never
/// under-invalidation. The schema a bare name resolves to depends on `search_path`, which the cache
/// cannot see for writes, so keying versions by schema could miss a write. The normalizer joins
/// schema and name with a dot; taking the text after the last dot gives the same unit whether or
/// not a name was qualified, also for quoted names that contain dots.
pub(crate) fn version_unit(table: &TableName) -> TableName {
    match table.as_str().rsplit_once('.') {
        Some((_, name)) => TableName::new(name),
        None => table.clone(),
    }
}

/// Versions kept in this process only: for a cache whose tiers no other process shares.
#[derive(Debug, Default)]
pub struct LocalVersions {
    versions: RwLock<HashMap<TableName, u64, foldhash::fast::RandomState>>,
}

impl LocalVersions {
    /// An empty store: every table at version 0.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl VersionStore for LocalVersions {
    fn read(&self, tables: &[TableName], out: &mut Vec<u64>) -> VersionView {
        out.clear();
        // A poisoned lock only means a writer panicked between two plain integer updates; the
        // map itself is intact, so keep serving from it.
        let versions = self.versions.read().unwrap_or_else(|e| e.into_inner());
        out.extend(tables.iter().map(|t| versions.get(t).copied().unwrap_or(0)));
        VersionView::Current
    }

    async fn bump(&self, tables: &[TableName]) -> Result<(), Error> {
        let mut versions = self.versions.write().unwrap_or_else(|e| e.into_inner());
        for table in tables {
            *versions.entry(table.clone()).or_insert(0) += 1;
        }
        Ok(())
    }

    fn health(&self) -> VersionHealth {
        VersionHealth::Local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_and_bare_names_share_a_unit() {
        let unit = |s: &str| version_unit(&TableName::new(s)).as_str().to_owned();
        assert_eq!(unit("public.users"), "users");
        assert_eq!(unit("users"), "users");
        assert_eq!(unit("s.\"x.y\""), unit("\"x.y\""));
        assert_eq!(unit("Mixed"), "Mixed");
    }

    #[tokio::test]
    async fn bumps_are_seen_by_the_next_read_and_only_grow() {
        let store = LocalVersions::new();
        let tables = [TableName::new("a"), TableName::new("b")];
        let mut out = Vec::new();
        assert_eq!(store.read(&tables, &mut out), VersionView::Current);
        assert_eq!(out, [0, 0]);
        store.bump(&tables[..1]).await.unwrap();
        store.bump(&tables[..1]).await.unwrap();
        store.read(&tables, &mut out);
        assert_eq!(out, [2, 0]);
    }
}
