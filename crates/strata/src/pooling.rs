//! What a statement's text tells a connection pool: whether running it may leave its session's
//! state changed, so that the pool must read the state back before another client shares the
//! server connection.

use std::collections::BTreeMap;

use bytes::Bytes;
use strata_normalizer::{DiscardTarget, Normalizer, NormalizerConfig, SessionEffect, WriteEffect};

use crate::session::{is_setting_name, SettingNames};

/// Judges statements for a transaction pool, from PostgreSQL's own parser (memoized), and
/// says how to read a server connection's session state and when two states are the same.
///
/// The verdict is a promise in one direction only: `false` from
/// [`may_change_session`](StateWatch::may_change_session) means the text shows no session effect
/// (no `SET`, `RESET`, role change, `set_config`, `PREPARE`, `LISTEN`, temporary object, cursor
/// `WITH HOLD`, session advisory lock, `DO`, `CALL`, call of a function outside the known
/// builtins, ...) and writes nothing (a write may fire a trigger that runs any code). Code the
/// text does not show and that runs on a read (a view or a row-level security policy calling a
/// user function that changes a setting for the session) is not seen.
#[derive(Default)]
pub struct StateWatch {
    normalizer: Normalizer,
    /// Custom setting names (`app.tenant`) seen in any statement: the state read covers them.
    names: SettingNames,
}

impl std::fmt::Debug for StateWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateWatch").field("custom_settings", &self.names.snapshot().1.len()).finish()
    }
}

/// How a server connection's state read after a client's transaction differs from the state it
/// had when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateDifference {
    /// `current_user` or `session_user`.
    Role,
    /// A setting shown in `pg_settings`, or a custom setting.
    Setting,
    /// A temporary relation exists.
    TemporaryObject,
    /// A SQL-level prepared statement (`PREPARE`).
    SqlPrepared,
    /// A cursor `WITH HOLD`.
    HoldableCursor,
    /// `LISTEN` on a channel.
    Listen,
    /// A session-level advisory lock.
    AdvisoryLock,
    /// The answer could not be read.
    Unreadable,
}

impl StateDifference {
    /// A short name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Role => "role",
            Self::Setting => "setting",
            Self::TemporaryObject => "temporary_object",
            Self::SqlPrepared => "sql_prepare",
            Self::HoldableCursor => "cursor_with_hold",
            Self::Listen => "listen",
            Self::AdvisoryLock => "advisory_lock",
            Self::Unreadable => "unreadable",
        }
    }
}

impl StateWatch {
    /// A watch with the normalizer's default configuration.
    pub fn new() -> Self {
        Self { normalizer: Normalizer::new(NormalizerConfig::default()), names: SettingNames::default() }
    }

    /// Whether running `sql` (as the client sent it) may leave the session's state changed.
    /// Text that does not parse, is not UTF-8 or is too large to analyze may. Custom setting
    /// names in the text are remembered for [`state_query`](StateWatch::state_query).
    pub fn may_change_session(&self, sql: &[u8]) -> bool {
        let analysis = self.normalizer.analyze_bytes(sql);
        let may = !analysis.leaves_session_alone()
            || !matches!(analysis.writes(), WriteEffect::Nothing)
            || analysis
                .statements()
                .iter()
                .flat_map(|s| s.functions())
                .any(|f| holds_past_the_transaction(f));
        if may {
            self.names.learn_from_text(&String::from_utf8_lossy(sql));
        }
        may
    }

    /// Whether `sql` drops every prepared statement of the session, protocol-level ones
    /// included (`DISCARD ALL`, `DEALLOCATE ALL`), so a pool must forget what it prepared there.
    pub fn drops_all_prepared(&self, sql: &[u8]) -> bool {
        self.normalizer.analyze_bytes(sql).session_effects().any(|e| {
            matches!(e, SessionEffect::Discard(DiscardTarget::All) | SessionEffect::Deallocate(None))
        })
    }

    /// The query reading a session's state: role and session user, every setting `pg_settings`
    /// shows away from its built-in default, each custom setting name seen so far, temporary
    /// relations, SQL-level prepared statements, holdable cursors, channels listened to and
    /// session advisory locks. Every name is qualified, so no `search_path` can redirect it.
    pub fn state_query(&self) -> String {
        let mut sql = String::from(
            "SELECT 'r'::text, pg_catalog.current_user()::text, pg_catalog.session_user()::text \
             UNION ALL SELECT 's', s.name, s.setting FROM pg_catalog.pg_settings s \
               WHERE s.source OPERATOR(pg_catalog.<>) 'default' OR s.setting IS DISTINCT FROM s.boot_val \
             UNION ALL SELECT 't', NULL, pg_catalog.count(*)::text FROM pg_catalog.pg_class t \
               WHERE t.relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema() \
             UNION ALL SELECT 'p', p.name, NULL FROM pg_catalog.pg_prepared_statements p WHERE p.from_sql \
             UNION ALL SELECT 'h', c.name, NULL FROM pg_catalog.pg_cursors c WHERE c.is_holdable \
             UNION ALL SELECT 'l', l, NULL FROM pg_catalog.pg_listening_channels() l \
             UNION ALL SELECT 'a', k.classid::text OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) k.objid::text \
               OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) k.objsubid::text, k.mode FROM pg_catalog.pg_locks k \
               WHERE k.locktype OPERATOR(pg_catalog.=) 'advisory' AND k.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()",
        );
        let (_, names) = self.names.snapshot();
        let list: Vec<&str> = names.iter().filter(|n| is_setting_name(n)).map(String::as_str).collect();
        if !list.is_empty() {
            sql.push_str(
                " UNION ALL SELECT 'c', n, pg_catalog.current_setting(n, true) FROM pg_catalog.unnest('{",
            );
            sql.push_str(&list.join(","));
            sql.push_str("}'::text[]) n");
        }
        sql
    }

    /// Compares a state read after a client's transaction with the one read when the server
    /// connection was opened (rows of [`state_query`](StateWatch::state_query), three text
    /// columns each). A custom setting that is empty or absent counts as unset: a placeholder
    /// left by `SET LOCAL` reads as an empty string for the rest of the connection's life, and no
    /// statement can remove it (every pooler shares such connections; the difference is only
    /// visible to `current_setting(name, true)`, as `''` instead of `NULL`).
    pub fn same_state(
        &self,
        opened: &[Vec<Option<Bytes>>],
        now: &[Vec<Option<Bytes>>],
    ) -> Result<(), StateDifference> {
        let (a, b) = (state_map(opened)?, state_map(now)?);
        for key in a.keys().chain(b.keys()) {
            let (mine, theirs) = (a.get(key), b.get(key));
            let custom = key.0 == b'c';
            let unset =
                |v: Option<&Option<Bytes>>| v.is_none_or(|v| v.as_deref().is_none_or(<[u8]>::is_empty));
            if custom && unset(mine) && unset(theirs) {
                continue;
            }
            if mine != theirs {
                return Err(match key.0 {
                    b'r' => StateDifference::Role,
                    b's' | b'c' => StateDifference::Setting,
                    b't' => StateDifference::TemporaryObject,
                    b'p' => StateDifference::SqlPrepared,
                    b'h' => StateDifference::HoldableCursor,
                    b'l' => StateDifference::Listen,
                    b'a' => StateDifference::AdvisoryLock,
                    _ => StateDifference::Unreadable,
                });
            }
        }
        Ok(())
    }
}

type StateKey = (u8, Option<Bytes>);

fn state_map(rows: &[Vec<Option<Bytes>>]) -> Result<BTreeMap<StateKey, Option<Bytes>>, StateDifference> {
    let mut map = BTreeMap::new();
    for row in rows {
        let [kind, name, value] = row.as_slice() else { return Err(StateDifference::Unreadable) };
        let kind = match kind.as_deref() {
            Some([k]) => *k,
            _ => return Err(StateDifference::Unreadable),
        };
        map.insert((kind, name.clone()), value.clone());
    }
    if !map.keys().any(|(k, _)| *k == b'r') {
        return Err(StateDifference::Unreadable);
    }
    Ok(map)
}

/// Builtins the normalizer counts as leaving the session alone (their result does not depend
/// on it) but that take something the session keeps after its transaction: session-level
/// advisory locks (the `_xact_` ones end with the transaction).
fn holds_past_the_transaction(function: &str) -> bool {
    let bare = function.rsplit('.').next().unwrap_or(function).trim_matches('"').to_ascii_lowercase();
    bare.contains("advisory") && !bare.contains("_xact_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_reads_leave_the_session_alone_and_the_rest_may_not() {
        let watch = StateWatch::new();
        for sql in [
            "SELECT 1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "BEGIN",
            "COMMIT",
            "",
            "SELECT pg_advisory_xact_lock(1)",
        ] {
            assert!(!watch.may_change_session(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SET search_path = app",
            "SET LOCAL app.tenant = '1'",
            "SELECT set_config('app.tenant', '1', false)",
            "RESET ALL",
            "SET ROLE other",
            "LISTEN ch",
            "PREPARE p AS SELECT 1",
            "CREATE TEMP TABLE t (a int)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_try_advisory_lock_shared(1)",
            "SELECT app.any_function()",
            "DO $$ BEGIN END $$",
            "UPDATE t SET a = 1",
            "INSERT INTO t VALUES (1)",
            "SELEC broken",
        ] {
            assert!(watch.may_change_session(sql.as_bytes()), "{sql}");
        }
        assert!(watch.may_change_session(b"SELECT '\xe9'"), "not UTF-8");
        assert!(watch.drops_all_prepared(b"DISCARD ALL"));
        assert!(watch.drops_all_prepared(b"DEALLOCATE ALL"));
        assert!(!watch.drops_all_prepared(b"DEALLOCATE p"));
        assert!(!watch.drops_all_prepared(b"DISCARD TEMP"));
    }
}
