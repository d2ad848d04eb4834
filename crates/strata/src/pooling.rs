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
    /// Custom setting names (`app.tenant`) seen in any statement, and in the bodies of user
    /// functions, policies and views: the state read covers them.
    names: SettingNames,
    /// Setting names (and `role`) a replay failed on: a session holding them is pinned.
    refused: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Functions called by texts that may change the session, by bare name: `false` until a
    /// state read brought their bodies (whose setting names the reads then cover).
    functions: std::sync::Mutex<BTreeMap<String, bool>>,
}

/// The most function names [`StateWatch`] keeps; past it, a new one is not read (its body's
/// setting names are still learnt from the catalog read at each connection's opening).
const MAX_FUNCTIONS: usize = 4096;

/// The most function bodies one state read asks for.
const FUNCTIONS_PER_READ: usize = 64;

/// Rows `('f', name, text)` holding every user function's body and settings, every row-level
/// security policy's expressions and every view's definition in the connection's database:
/// text whose setting names the state reads must cover (`set_config('app.tenant', ...)` inside
/// a function makes a session setting no statement of the client names).
const CODE_TEXTS_SQL: &str = " \
UNION ALL SELECT 'f', NULL, p.prosrc FROM pg_catalog.pg_proc p \
  WHERE p.pronamespace OPERATOR(pg_catalog.<>) 'pg_catalog'::pg_catalog.regnamespace \
    AND p.pronamespace OPERATOR(pg_catalog.<>) 'information_schema'::pg_catalog.regnamespace \
    AND p.prolang OPERATOR(pg_catalog.<>) 12 AND p.prolang OPERATOR(pg_catalog.<>) 13 \
UNION ALL SELECT 'f', NULL, pg_catalog.array_to_string(p.proconfig, ' ') FROM pg_catalog.pg_proc p \
  WHERE p.proconfig IS NOT NULL \
UNION ALL SELECT 'f', NULL, pg_catalog.concat(pg_catalog.pg_get_expr(p.polqual, p.polrelid), ' ', \
  pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)) FROM pg_catalog.pg_policy p \
UNION ALL SELECT 'f', NULL, pg_catalog.pg_get_viewdef(v.oid) FROM pg_catalog.pg_class v \
  WHERE v.relkind OPERATOR(pg_catalog.=) ANY ('{v,m}') \
    AND v.relnamespace OPERATOR(pg_catalog.<>) 'pg_catalog'::pg_catalog.regnamespace \
    AND v.relnamespace OPERATOR(pg_catalog.<>) 'information_schema'::pg_catalog.regnamespace";

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
        Self {
            normalizer: Normalizer::new(NormalizerConfig::default()),
            names: SettingNames::default(),
            refused: Default::default(),
            functions: Default::default(),
        }
    }

    /// What `sql` (as the client sent it) tells a pool, from one analysis of the text.
    /// Custom setting names in a text that may change the session are remembered for
    /// [`state_query`](StateWatch::state_query).
    pub fn judge(&self, sql: &[u8]) -> Judgement {
        let analysis = self.normalizer.analyze_bytes(sql);
        let may_change_session = !analysis.leaves_session_alone()
            || !matches!(analysis.writes(), WriteEffect::Nothing)
            || analysis
                .statements()
                .iter()
                .flat_map(|s| s.functions())
                .any(|f| holds_past_the_transaction(f));
        if may_change_session {
            self.names.learn_from_text(&String::from_utf8_lossy(sql));
            let called =
                analysis.statements().iter().flat_map(|s| s.functions()).filter_map(|f| bare_function(f));
            let mut functions = self.functions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for name in called {
                if functions.len() < MAX_FUNCTIONS && !functions.contains_key(&name) {
                    functions.insert(name, false);
                }
            }
        }
        let drops_all_prepared = analysis.session_effects().any(|e| {
            matches!(e, SessionEffect::Discard(DiscardTarget::All) | SessionEffect::Deallocate(None))
        });
        let deallocates = if analysis.statements().len() == 1 {
            let mut effects = analysis.session_effects();
            match (effects.next(), effects.next()) {
                (Some(SessionEffect::Deallocate(Some(name))), None) => Some(name.to_string()),
                _ => None,
            }
        } else {
            None
        };
        Judgement { may_change_session, drops_all_prepared, deallocates }
    }

    /// Whether running `sql` may leave the session's state changed ([`Judgement`]).
    pub fn may_change_session(&self, sql: &[u8]) -> bool {
        self.judge(sql).may_change_session
    }

    /// Whether `sql` drops every prepared statement of the session ([`Judgement`]).
    pub fn drops_all_prepared(&self, sql: &[u8]) -> bool {
        self.judge(sql).drops_all_prepared
    }

    /// The statement name a text of one `DEALLOCATE name` drops ([`Judgement`]).
    pub fn deallocates(&self, sql: &[u8]) -> Option<String> {
        self.judge(sql).deallocates
    }

    /// The query reading a session's state: role and session user, every setting `pg_settings`
    /// shows away from its built-in default that a session can set (not the `transaction_*`
    /// ones, which each transaction takes from the `default_transaction_*` settings and which
    /// cannot be set once a transaction has read anything), each custom setting name seen so far, temporary
    /// relations, SQL-level prepared statements, holdable cursors, channels listened to and
    /// session advisory locks. Every name is qualified, so no `search_path` can redirect it.
    ///
    /// It also brings the bodies of functions a client called that no read brought yet (rows
    /// `('f', name, body)`): their setting names are learnt, and a read that learnt a name it did
    /// not cover is a difference ([`settings_between`](StateWatch::settings_between)).
    pub fn state_query(&self) -> String {
        let mut sql = self.settings_query();
        let unread: Vec<String> = {
            let functions = self.functions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            functions
                .iter()
                .filter(|(_, read)| !**read)
                .map(|(f, _)| f.clone())
                .take(FUNCTIONS_PER_READ)
                .collect()
        };
        if !unread.is_empty() {
            sql.push_str(
                " UNION ALL SELECT 'f', p.proname::text, pg_catalog.concat(p.prosrc, ' ', \
                 pg_catalog.array_to_string(p.proconfig, ' ')) FROM pg_catalog.pg_proc p \
                 WHERE p.proname OPERATOR(pg_catalog.=) ANY ('{",
            );
            sql.push_str(&unread.join(","));
            sql.push_str("}'::name[])");
        }
        sql
    }

    /// The state read of a server connection just opened: [`state_query`](StateWatch::state_query)
    /// and the text of the database's user functions, policies and views, whose setting names
    /// [`learn_code`](StateWatch::learn_code) takes from the rows, so that later reads cover a
    /// setting only a function sets.
    pub fn opening_query(&self) -> String {
        let mut sql = self.state_query();
        sql.push_str(CODE_TEXTS_SQL);
        sql
    }

    /// Learns the setting names in the code text rows of a state read (`('f', ...)`), marking
    /// the functions named in them as read. Returns whether a name was learnt that the read
    /// itself did not cover.
    pub fn learn_code(&self, rows: &[Vec<Option<Bytes>>]) -> bool {
        let generation = self.names.snapshot().0;
        let mut read = Vec::new();
        for row in rows {
            if let [Some(kind), name, Some(text)] = row.as_slice() {
                if kind.as_ref() == b"f" {
                    self.names.learn_from_text(&String::from_utf8_lossy(text));
                    if let Some(name) = name.as_deref().and_then(|n| std::str::from_utf8(n).ok()) {
                        read.push(name.to_owned());
                    }
                }
            }
        }
        if !read.is_empty() {
            let mut functions = self.functions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for name in read {
                if let Some(done) = functions.get_mut(&name) {
                    *done = true;
                }
            }
        }
        let (now, names) = self.names.snapshot();
        now != generation
            && names.iter().filter(|n| is_setting_name(n)).any(|n| {
                !rows.iter().any(|row| {
                    matches!(row.as_slice(), [Some(k), Some(name), _] if k.as_ref() == b"c" && name.as_ref() == n.as_bytes())
                })
            })
    }

    /// The settings part of [`state_query`](StateWatch::state_query), without function bodies.
    fn settings_query(&self) -> String {
        let mut sql = String::from(
            "SELECT 'r'::text, pg_catalog.current_user()::text, pg_catalog.session_user()::text \
             UNION ALL SELECT 's', s.name, s.setting FROM pg_catalog.pg_settings s \
               WHERE (s.source OPERATOR(pg_catalog.<>) 'default' OR s.setting IS DISTINCT FROM s.boot_val) \
               AND s.context OPERATOR(pg_catalog.=) ANY ('{user,superuser}') \
               AND s.name OPERATOR(pg_catalog.<>) ALL ('{transaction_isolation,transaction_read_only,transaction_deferrable}') \
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
    /// columns each) and returns the settings and role the client's session holds away from a
    /// fresh connection's: what another connection must be brought to before it runs this
    /// client's next transaction ([`replay_query`](StateWatch::replay_query)). Anything else that
    /// differs (temporary relations, SQL prepared statements, holdable cursors, channels,
    /// advisory locks, another session user), and settings that cannot be replayed faithfully
    /// (a value or name outside ASCII, whose bytes depend on the client encoding in force; a
    /// setting reset to a value only a fresh session has; a name a replay failed on before),
    /// is the error: the client keeps its connection.
    ///
    /// A custom setting that is empty or absent counts as unset: a placeholder left by
    /// `SET LOCAL` reads as an empty string for the rest of the connection's life, and no
    /// statement can remove it (every pooler shares such connections; the difference is only
    /// visible to `current_setting(name, true)`, as `''` instead of `NULL`).
    pub fn settings_between(
        &self,
        opened: &[Vec<Option<Bytes>>],
        now: &[Vec<Option<Bytes>>],
    ) -> Result<SessionSettings, StateDifference> {
        if self.learn_code(now) {
            // A function the client called sets a setting this read did not cover: the
            // session's state is not known, so it keeps its connection (the next read covers it).
            return Err(StateDifference::Setting);
        }
        let (a, b) = (state_map(opened)?, state_map(now)?);
        let role = |m: &BTreeMap<StateKey, Option<Bytes>>| {
            m.iter().find(|(k, _)| k.0 == b'r').map(|(k, v)| (k.1.clone(), v.clone()))
        };
        let (Some((user_then, session_then)), Some((user_now, session_now))) = (role(&a), role(&b)) else {
            return Err(StateDifference::Unreadable);
        };
        if session_then != session_now {
            return Err(StateDifference::Role);
        }
        let refused = self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let replayable = |name: &str, value: &str| {
            name.is_ascii()
                && value.is_ascii()
                && !refused.contains(name)
                && !name.eq_ignore_ascii_case("role")
        };
        let mut wanted = SessionSettings::default();
        if user_then != user_now {
            let user = user_now.as_deref().and_then(|u| std::str::from_utf8(u).ok());
            match user {
                Some(user) if user.is_ascii() => wanted.role = Some(user.to_owned()),
                _ => return Err(StateDifference::Role),
            }
        }
        for key in a.keys().chain(b.keys()) {
            if key.0 == b'r' {
                continue;
            }
            let (mine, theirs) = (a.get(key), b.get(key));
            let custom = key.0 == b'c';
            let unset =
                |v: Option<&Option<Bytes>>| v.is_none_or(|v| v.as_deref().is_none_or(<[u8]>::is_empty));
            if (custom && unset(mine) && unset(theirs)) || mine == theirs {
                continue;
            }
            let difference = match key.0 {
                b's' | b'c' => StateDifference::Setting,
                b't' => return Err(StateDifference::TemporaryObject),
                b'p' => return Err(StateDifference::SqlPrepared),
                b'h' => return Err(StateDifference::HoldableCursor),
                b'l' => return Err(StateDifference::Listen),
                b'a' => return Err(StateDifference::AdvisoryLock),
                _ => return Err(StateDifference::Unreadable),
            };
            // Only a value the session has now can be set again; a custom setting emptied
            // counts as unset and needs no value.
            let name = key.1.as_deref().and_then(|n| std::str::from_utf8(n).ok());
            let value = theirs.and_then(|v| v.as_deref()).and_then(|v| std::str::from_utf8(v).ok());
            match (name, value) {
                (Some(name), Some(value)) if replayable(name, value) && !(custom && value.is_empty()) => {
                    wanted.settings.insert(name.to_owned(), value.to_owned());
                }
                _ => return Err(difference),
            }
        }
        Ok(wanted)
    }

    /// Compares two state reads as [`settings_between`](StateWatch::settings_between) does and
    /// succeeds only when nothing differs.
    pub fn same_state(
        &self,
        opened: &[Vec<Option<Bytes>>],
        now: &[Vec<Option<Bytes>>],
    ) -> Result<(), StateDifference> {
        let wanted = self.settings_between(opened, now)?;
        match (wanted.role.is_some(), wanted.settings.is_empty()) {
            (false, true) => Ok(()),
            (true, _) => Err(StateDifference::Role),
            (false, false) => Err(StateDifference::Setting),
        }
    }

    /// One simple-query text that brings a server connection from any replayable state to
    /// `wanted` and reads its state back, for [`settings_between`](StateWatch::settings_between)
    /// against the connection's opening state to confirm: the role reset, every setting reset
    /// to the session's defaults (what the login and the role's and database's defaults gave),
    /// each wanted setting set for the session, the wanted role set last (a setting only the
    /// session user may change is set before it), then the state query. Values are
    /// dollar-quoted, so no `standard_conforming_strings` changes their meaning. The result
    /// sets before the state read's own come from `set_config`.
    pub fn replay_query(&self, wanted: &SessionSettings) -> String {
        let mut sql = String::from("RESET ROLE; RESET ALL; ");
        if !wanted.settings.is_empty() {
            sql.push_str("SELECT pg_catalog.set_config(w.n, w.v, false) FROM (VALUES ");
            for (i, (name, value)) in wanted.settings.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push('(');
                sql.push_str(&dollar_quoted(name));
                sql.push_str(", ");
                sql.push_str(&dollar_quoted(value));
                sql.push(')');
            }
            sql.push_str(") AS w(n, v); ");
        }
        if let Some(role) = &wanted.role {
            sql.push_str("SELECT pg_catalog.set_config('role', ");
            sql.push_str(&dollar_quoted(role));
            sql.push_str(", false); ");
        }
        sql.push_str(&self.settings_query());
        sql
    }

    /// Remembers that bringing a connection to these settings failed or did not give them, so
    /// a session holding any of them keeps its own connection from now on. The role is not
    /// remembered: setting a role fails for that role (dropped, membership revoked), not for
    /// every role.
    pub fn refuse_replay(&self, wanted: &SessionSettings) {
        let mut refused = self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        refused.extend(wanted.settings.keys().cloned());
    }
}

/// What a statement's text tells a pool ([`StateWatch::judge`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judgement {
    /// Running it may leave the session's state changed. `false` means the text shows no
    /// session effect (no `SET`, `RESET`, role change, `set_config`, `PREPARE`, `LISTEN`,
    /// temporary object, cursor `WITH HOLD`, session advisory lock, `DO`, `CALL`, call of a
    /// function outside the known builtins, ...) and writes nothing (a write may fire a trigger
    /// that runs any code). Text that does not parse, is not UTF-8 or is too large to analyze
    /// may.
    pub may_change_session: bool,
    /// It drops every prepared statement of the session, protocol-level ones included
    /// (`DISCARD ALL`, `DEALLOCATE ALL`), so a pool must forget what it prepared there.
    pub drops_all_prepared: bool,
    /// The statement name a text made of one `DEALLOCATE [PREPARE] name` drops (as the server
    /// reads it: an unquoted name folded to lower case): a pool that renames protocol-level
    /// statements rewrites it to the name it gave the statement.
    pub deallocates: Option<String>,
}

/// The settings and role a client's session holds away from a fresh server connection of its
/// pool ([`StateWatch::settings_between`]); empty for a session that changed neither.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSettings {
    settings: BTreeMap<String, String>,
    role: Option<String>,
}

impl SessionSettings {
    /// A session that differs from a fresh connection's in one setting, as read back (the
    /// value must be the one `pg_settings` shows once set).
    pub fn with_setting(name: &str, value: &str) -> Self {
        let mut settings = BTreeMap::new();
        settings.insert(name.to_owned(), value.to_owned());
        Self { settings, role: None }
    }

    /// Whether the session is as a fresh connection's.
    pub fn is_empty(&self) -> bool {
        self.settings.is_empty() && self.role.is_none()
    }

    /// The setting names, then `role` when the role was changed: for logs.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.settings.keys().map(String::as_str).collect();
        if self.role.is_some() {
            names.push("role");
        }
        names
    }
}

/// `text` as a dollar-quoted literal whose tag does not occur in it.
fn dollar_quoted(text: &str) -> String {
    let mut tag = String::from("$s$");
    let mut n = 0u32;
    // The first occurrence of the tag after the opening one must be the closing one.
    while format!("{text}{tag}").find(&tag) != Some(text.len()) {
        n += 1;
        tag = format!("$s{n}$");
    }
    format!("{tag}{text}{tag}")
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
        if kind == b'f' {
            // Code text (`learn_code`), not state.
            continue;
        }
        map.insert((kind, name.clone()), value.clone());
    }
    if map.keys().filter(|(k, _)| *k == b'r').count() != 1 {
        return Err(StateDifference::Unreadable);
    }
    Ok(map)
}

/// A called function's name as `pg_proc.proname` holds it (the parser already folded it), when
/// it is a plain identifier: the last part of a qualified name. Builtins (`pg_*`) are left out.
fn bare_function(function: &str) -> Option<String> {
    let bare = function.rsplit('.').next().unwrap_or(function);
    let plain = !bare.is_empty()
        && bare.len() <= 63
        && !bare.starts_with("pg_")
        && bare.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
    plain.then(|| bare.to_owned())
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
        assert_eq!(watch.deallocates(b"DEALLOCATE _pg3_0").as_deref(), Some("_pg3_0"));
        assert_eq!(watch.deallocates(b"deallocate prepare \"S_1\"").as_deref(), Some("S_1"));
        assert_eq!(watch.deallocates(b"DEALLOCATE Foo").as_deref(), Some("foo"));
        assert_eq!(watch.deallocates(b"DEALLOCATE ALL"), None);
        assert_eq!(watch.deallocates(b"DEALLOCATE a; DEALLOCATE b"), None);
        assert_eq!(watch.deallocates(b"SELECT 1"), None);
    }

    fn rows(rows: &[(&str, Option<&str>, Option<&str>)]) -> Vec<Vec<Option<Bytes>>> {
        rows.iter()
            .map(|(k, n, v)| {
                vec![
                    Some(Bytes::copy_from_slice(k.as_bytes())),
                    n.map(|n| Bytes::copy_from_slice(n.as_bytes())),
                    v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
                ]
            })
            .collect()
    }

    #[test]
    fn a_setting_a_called_function_sets_is_read_back_and_a_read_that_learns_one_pins() {
        let watch = StateWatch::new();
        assert!(!watch.state_query().contains("pg_proc"), "no function was called");
        assert!(watch.opening_query().contains("pg_get_viewdef"), "a new connection reads every code text");
        assert!(watch.may_change_session(b"SELECT app.enter('a'), pg_sleep(0)"));
        let query = watch.state_query();
        assert!(query.ends_with("ANY ('{enter}'::name[])"), "{query}");
        let opened = rows(&[("r", Some("app"), Some("app")), ("t", None, Some("0"))]);
        let body = "SELECT set_config('app.tenant', t, false)";
        let now = rows(&[
            ("r", Some("app"), Some("app")),
            ("t", None, Some("0")),
            ("f", Some("enter"), Some(body)),
        ]);
        // The read did not ask for app.tenant: what it holds is unknown, so the client stays.
        assert_eq!(watch.settings_between(&opened, &now), Err(StateDifference::Setting));
        let query = watch.state_query();
        assert!(!query.contains("pg_proc"), "the body was read: {query}");
        assert!(query.contains("app.tenant"), "{query}");
        let now = rows(&[
            ("r", Some("app"), Some("app")),
            ("t", None, Some("0")),
            ("c", Some("app.tenant"), Some("a")),
        ]);
        let wanted = watch.settings_between(&opened, &now).expect("replayable");
        assert_eq!(wanted, SessionSettings::with_setting("app.tenant", "a"));
        // A replay never reads bodies (a name learnt there would fail it).
        assert!(watch.may_change_session(b"SELECT other_function()"));
        assert!(!watch.replay_query(&wanted).contains("pg_proc"));
        // Code text read at a connection's opening teaches names without pinning anyone.
        let opening = rows(&[
            ("r", Some("app"), Some("app")),
            ("f", None, Some("CREATE POLICY p USING (region = current_setting('app.region'))")),
        ]);
        watch.learn_code(&opening);
        assert!(watch.state_query().contains("app.region"));
    }

    #[test]
    fn settings_and_role_are_replayed_and_the_rest_pins() {
        let watch = StateWatch::new();
        let opened = rows(&[
            ("r", Some("app"), Some("app")),
            ("s", Some("DateStyle"), Some("ISO, MDY")),
            ("t", None, Some("0")),
            ("c", Some("app.tenant"), None),
        ]);
        assert_eq!(watch.settings_between(&opened, &opened), Ok(SessionSettings::default()));
        let now = rows(&[
            ("r", Some("reader"), Some("app")),
            ("s", Some("DateStyle"), Some("German, DMY")),
            ("s", Some("work_mem"), Some("8192")),
            ("t", None, Some("0")),
            ("c", Some("app.tenant"), Some("7")),
            ("c", Some("app.other"), Some("")),
        ]);
        let wanted = watch.settings_between(&opened, &now).expect("replayable");
        assert_eq!(wanted.names(), ["DateStyle", "app.tenant", "work_mem", "role"]);
        let sql = watch.replay_query(&wanted);
        assert!(sql.starts_with("RESET ROLE; RESET ALL; SELECT pg_catalog.set_config(w.n, w.v, false) FROM (VALUES ($s$DateStyle$s$, $s$German, DMY$s$), "), "{sql}");
        assert!(
            sql.contains("SELECT pg_catalog.set_config('role', $s$reader$s$, false); SELECT 'r'"),
            "{sql}"
        );
        assert_eq!(watch.same_state(&opened, &now), Err(StateDifference::Role));

        let other_session = rows(&[("r", Some("app"), Some("admin")), ("t", None, Some("0"))]);
        assert_eq!(watch.settings_between(&opened, &other_session), Err(StateDifference::Role));
        let temp = rows(&[
            ("r", Some("app"), Some("app")),
            ("s", Some("DateStyle"), Some("ISO, MDY")),
            ("t", None, Some("1")),
        ]);
        assert_eq!(watch.settings_between(&opened, &temp), Err(StateDifference::TemporaryObject));
        let latin = rows(&[
            ("r", Some("app"), Some("app")),
            ("s", Some("DateStyle"), Some("ISO, MDY")),
            ("t", None, Some("0")),
            ("s", Some("application_name"), Some("caf\u{e9}")),
        ]);
        assert_eq!(watch.settings_between(&opened, &latin), Err(StateDifference::Setting));
        let gone = rows(&[("r", Some("app"), Some("app")), ("t", None, Some("0"))]);
        assert_eq!(watch.settings_between(&opened, &gone), Err(StateDifference::Setting));

        watch.refuse_replay(&wanted);
        assert_eq!(watch.settings_between(&opened, &now), Err(StateDifference::Setting));
        assert!(watch
            .settings_between(
                &opened,
                &rows(&[
                    ("r", Some("app"), Some("app")),
                    ("s", Some("DateStyle"), Some("ISO, MDY")),
                    ("t", None, Some("0")),
                    ("s", Some("statement_timeout"), Some("5"))
                ])
            )
            .is_ok());
        assert_eq!(watch.settings_between(&rows(&[]), &opened), Err(StateDifference::Unreadable));
    }

    #[test]
    fn dollar_quotes_never_end_early() {
        for text in ["", "plain", "$s$", "a$s", "$s1$ and $s$", "ends with $", "$"] {
            let quoted = dollar_quoted(text);
            let tag_end = quoted[1..].find('$').expect("tag") + 2;
            let tag = &quoted[..tag_end];
            assert!(quoted.ends_with(tag), "{quoted}");
            let inner = &quoted[tag_end..quoted.len() - tag.len()];
            assert_eq!(inner, text);
            assert!(!format!("{inner}{tag}")[..inner.len() + tag.len() - 1].contains(tag), "{quoted}");
        }
    }
}
