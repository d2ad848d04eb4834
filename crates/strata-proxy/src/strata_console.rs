//! What [`StrataCache`] answers to the admin console's commands (`console.rs` speaks the
//! protocol): statistics per query shape and table, explain, flush, reload, settings.

use std::time::{Duration, SystemTime};

use strata::{KeyScope, QueryCacheConfig, Request, SettingsDigest};

use crate::seam::{ConsoleCommand, ConsoleReply};
use crate::strata_cache::StrataCache;

/// How long ago, for people: `12.3 s ago`; `never` for none.
fn ago(when: Option<SystemTime>) -> Option<String> {
    Some(match when {
        None => "never".to_owned(),
        Some(t) => {
            let secs = SystemTime::now().duration_since(t).unwrap_or(Duration::ZERO).as_secs_f64();
            format!("{secs:.1} s ago")
        }
    })
}

fn ms(d: Duration) -> Option<String> {
    Some(format!("{:.3}", d.as_secs_f64() * 1e3))
}

fn counts(list: &[(String, u64)]) -> Option<String> {
    Some(list.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(", "))
}

fn text(value: impl ToString) -> Option<String> {
    Some(value.to_string())
}

impl StrataCache {
    pub(crate) async fn answer(&self, command: &ConsoleCommand) -> Result<ConsoleReply, String> {
        let cache = self.query_cache();
        match command {
            ConsoleCommand::ShowQueries => Ok(ConsoleReply::table(
                &[
                    "query",
                    "calls",
                    "hits",
                    "hits_by_tier",
                    "misses",
                    "bypasses",
                    "fills",
                    "mean_fill_ms",
                    "time_saved_ms",
                    "bytes_stored",
                    "last_invalidation",
                    "tables",
                ],
                cache
                    .query_stats()
                    .into_iter()
                    .map(|q| {
                        vec![
                            Some(q.normalized.clone()),
                            text(q.calls),
                            text(q.hits.iter().map(|(_, n)| n).sum::<u64>()),
                            counts(&q.hits),
                            text(q.misses),
                            counts(&q.bypasses),
                            text(q.fills),
                            ms(q.mean_fill_cost),
                            ms(q.time_saved),
                            text(q.bytes_stored),
                            ago(q.last_invalidation),
                            Some(q.tables.join(", ")),
                        ]
                    })
                    .collect(),
            )),
            ConsoleCommand::ShowTables => Ok(ConsoleReply::table(
                &["table", "version", "invalidations", "last_invalidation", "entries"],
                cache
                    .table_stats()
                    .into_iter()
                    .map(|t| {
                        vec![
                            Some(t.table.clone()),
                            text(t.version),
                            text(t.invalidations),
                            ago(t.last_invalidation),
                            text(t.entries),
                        ]
                    })
                    .collect(),
            )),
            ConsoleCommand::Flush(table) => {
                match table {
                    None => cache.flush().await,
                    Some(t) => cache.invalidate_table(t).await,
                }
                .map_err(|e| format!("flush failed: {e}"))?;
                Ok(ConsoleReply::done("FLUSH"))
            }
            ConsoleCommand::Explain { user, database, sql } => {
                Ok(self.explain_for(user, database, sql).await)
            }
            ConsoleCommand::Reload(table) => {
                let config = match table {
                    Some(t) => QueryCacheConfig::from_toml(&t.to_string()).map_err(|e| e.to_string())?,
                    None => QueryCacheConfig::default(),
                };
                let named = |keep: fn(&strata::TableConfig) -> bool| -> Vec<String> {
                    config.tables.iter().filter(|(_, c)| keep(c)).map(|(t, _)| t.clone()).collect()
                };
                cache.set_table_rules(&strata::TableRuleSet {
                    default_ttl: Duration::from_millis(config.default_ttl_ms),
                    ttls: config
                        .tables
                        .iter()
                        .filter_map(|(t, c)| Some((t.clone(), Duration::from_millis(c.ttl_ms?))))
                        .collect(),
                    excluded: named(|c| !c.cache),
                    semantic: named(|c| c.semantic),
                });
                let mut reply = self.settings();
                reply.rows.push(vec![
                    text("note"),
                    text("RELOAD applied default_ttl_ms and [cache.tables]; other settings need a restart"),
                ]);
                Ok(reply)
            }
            ConsoleCommand::ShowConfig => Ok(self.settings()),
        }
    }

    /// The cache's settings in force, as `setting, value` rows.
    fn settings(&self) -> ConsoleReply {
        let cache = self.query_cache();
        let strata::TableRuleSet { default_ttl, ttls, excluded, semantic } = cache.table_rules();
        let tiers: Vec<String> = cache.tier_stats().into_iter().map(|(name, _)| name).collect();
        let rows = vec![
            vec![text("cache.tiers"), Some(tiers.join(", "))],
            vec![text("cache.default_ttl_ms"), text(default_ttl.as_millis())],
            vec![
                text("cache.table_ttls_ms"),
                Some(
                    ttls.iter().map(|(t, d)| format!("{t}={}", d.as_millis())).collect::<Vec<_>>().join(", "),
                ),
            ],
            vec![text("cache.excluded_tables"), Some(excluded.join(", "))],
            vec![text("cache.semantic_tables"), Some(semantic.join(", "))],
            vec![text("cache.custom_settings"), Some(self.sessions().custom_settings().join(", "))],
        ];
        ConsoleReply::table(&["setting", "value"], rows)
    }

    /// `EXPLAIN` as a session of `user` on `database` would run `sql`: with the scope such a
    /// session last verified, else the server's defaults.
    async fn explain_for(&self, user: &str, database: &str, sql: &str) -> ConsoleReply {
        let (scope, scope_note) = match self.sessions().recent_scope(database, user) {
            Some(scope) => (scope, "the settings a session of this user and database last verified"),
            None => (
                KeyScope::new(database, user, SettingsDigest::of(std::iter::empty::<(&str, &str)>())),
                "no session of this user and database verified yet: the server's defaults",
            ),
        };
        let cache = self.query_cache();
        // As a simple Query sends it (an extended request's key also has its protocol shape).
        let req = Request::new(&scope, sql).with_variant(b"Q");
        let explanation = cache.explain(&req);
        let cached_in = if explanation.verdict.is_ok() { cache.cached_in(&req).await } else { None };
        let mut rows = vec![
            vec![text("statement"), text(&explanation.kind)],
            vec![
                text("cacheable"),
                Some(match &explanation.verdict {
                    Ok(()) => "yes".to_owned(),
                    Err(why) => format!("no: {why}"),
                }),
            ],
            vec![
                text("depends on"),
                Some(
                    explanation.tables.iter().map(|(t, v)| format!("{t}@{v}")).collect::<Vec<_>>().join(", "),
                ),
            ],
            vec![text("ttl_ms"), text(explanation.ttl.as_millis())],
            vec![text("tiers"), Some(explanation.tiers.join(", "))],
            vec![text("cached now (simple query)"), Some(cached_in.unwrap_or_else(|| "no".to_owned()))],
            vec![
                text("scope"),
                Some(format!("database {database}, role {}; {scope_note}", explanation.role)),
            ],
        ];
        if let Some(key) = &explanation.key_digest {
            rows.push(vec![text("key"), Some(key.clone())]);
        }
        for hint in &explanation.ignored_hints {
            rows.push(vec![text("ignored hint"), Some(hint.clone())]);
        }
        ConsoleReply { tag: "EXPLAIN".to_owned(), ..ConsoleReply::table(&["property", "value"], rows) }
    }
}
