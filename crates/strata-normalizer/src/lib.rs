//! Understands SQL with PostgreSQL's own parser (`pg_query`, libpg_query): which key a statement
//! gets, whether it may be cached, which tables it reads, which tables a write makes stale, and
//! what the application asked for in a hint.
//!
//! # Parts
//! - [`analyze`] and [`Normalizer::analyze`] turn SQL text into an [`Analysis`]: per statement
//!   ([`StatementAnalysis`]) its [`StatementKind`], normalized text and [`StatementIdentity`],
//!   lifted literals ([`Parameter`]) with their types, client `$n` count, tables read, functions
//!   called, [`Cacheability`] verdict with a readable [`NotCacheable`] reason, and
//!   [`WriteEffect`]; and the same rolled up for the whole text, with its [`Hints`].
//! - [`SessionEffect`]: what each statement may do to its session's state (`SET`, `RESET`,
//!   role, `DISCARD`, `PREPARE`, `LISTEN`, temporary objects, `set_config`, server code the
//!   text does not show), and [`Analysis::leaves_session_alone`] for the whole text.
//! - Key restrictions, for invalidation finer than a table:
//!   [`StatementAnalysis::read_restrictions`] lists the point, list and closed-range conditions
//!   on a column that bound which rows of a table a `SELECT`'s result can depend on
//!   ([`ColumnRestriction`], values as [`ValueRef`]s into the parameters), and
//!   [`StatementAnalysis::write_keys`] what an `INSERT`/`UPDATE`/`DELETE` says about the rows
//!   it writes ([`WriteKeys`]).
//! - [`NormalizerConfig`]: the function allow list (and volatility fed from `pg_proc`), catalog
//!   policy, hint TTL cap, analysis size cap, memo size and shape memo size.
//! - [`read_hints`]: only the hints of a text.
//!
//! # Size limit
//! PostgreSQL's parse tree, as `pg_query` hands it over (protobuf), takes over a hundred times
//! the text's size in memory, and parsing time grows with it. A text longer than
//! [`NormalizerConfig::max_analyzed_bytes`] (default 256 KiB) is therefore not analyzed at all:
//! its [`Analysis`] says [`NotCacheable::TooLarge`], writes [`WriteEffect::Unknown`] and has one
//! [`SessionEffect::ServerCode`], at the cost of one hash over the text.
//!
//! # Memos
//! [`Normalizer`] answers a text it analyzed before from a memo keyed by the text. It also keeps
//! a *shape memo* for the common case of one query sent with different literal values
//! (`pgbench -S`, ORM point lookups): a small lexer of PostgreSQL's lexical grammar reduces the
//! text to its tokens with each literal replaced by its class (scanner token, form, type). A
//! shape is recorded the second time its key is seen; later texts with that key are answered
//! from its analysis with their own parameters, without a parse (about a microsecond instead of
//! tens). The answer is always the one a full analysis gives: shapes are recorded only for
//! `SELECT`/`INSERT`/`UPDATE`/`DELETE`/`MERGE` texts whose analysis cannot depend on literal
//! values, and any text the lexer is not sure about (non-ASCII outside quotes, escapes in `E''`,
//! `U&''`, string continuation, ...) takes the full path. [`Normalizer::shape_hits`] counts the
//! texts answered that way.
//!
//! Identity is computed over PostgreSQL's scanner tokens, not pg_query's fingerprint (which
//! ignores schema names and aliases): keywords and unquoted identifiers are case-folded,
//! comments and whitespace dropped, literals lifted out, constant `IN`/`VALUES`/`ARRAY` lists
//! collapsed. Tables, kinds and cacheability come from the parse tree.
//!
//! # Example
//! ```
//! use strata_core::{CacheKey, Format, KeyScope, SettingsDigest, TypeOid};
//! use strata_normalizer::{Normalizer, RestrictedValues, ValueRef, WriteEffect};
//!
//! let normalizer = Normalizer::default();
//! let a = normalizer.analyze("SELECT name FROM users WHERE id = 42 /* strata: ttl=30s */");
//! let b = normalizer.analyze("select name\n  from USERS where id = 7");
//! assert_eq!(a.identity(), b.identity());
//! assert!(a.cacheability().is_cacheable());
//! assert_eq!(a.reads()[0].as_str(), "users");
//! assert_eq!(a.hints().ttl(), Some(std::time::Duration::from_secs(30)));
//!
//! let scope = KeyScope::new("shop", "app", SettingsDigest::of([]));
//! let mut key = CacheKey::builder(&scope, a.key_bytes());
//! for p in a.params() {
//!     assert_eq!(p.type_oid(), TypeOid::INT4);
//!     key = key.param(p.type_oid(), Format::Text, p.text().as_bytes());
//! }
//! let _key = key.table_version("users", 1).build();
//!
//! // The same query with other literals: the shape is recorded the second time it is seen, and
//! // from then on answered without a parse, with the analysis a parse would give.
//! normalizer.analyze("SELECT name FROM users WHERE id = 8");
//! normalizer.analyze("SELECT name FROM users WHERE id = 9");
//! let c = normalizer.analyze("SELECT name FROM users WHERE id = 10");
//! assert_eq!(c.identity(), a.identity());
//! assert_eq!(c.params().next().map(|p| p.text()), Some("10"));
//! assert_eq!(normalizer.shape_hits(), 1);
//!
//! // Which rows of `users` the result depends on, for a layer that knows `id` is its key:
//! // those whose `id` is the first lifted literal.
//! let r = &a.statements()[0].read_restrictions()[0];
//! assert_eq!((r.table().as_str(), r.column()), ("users", "id"));
//! assert_eq!(r.values(), &RestrictedValues::Points(vec![ValueRef::Literal { index: 0, cast: None }]));
//!
//! let w = normalizer.analyze("UPDATE users SET name = 'x' WHERE id = 1");
//! assert!(!w.cacheability().is_cacheable());
//! assert!(matches!(w.writes(), WriteEffect::Tables(t) if t[0].as_str() == "users"));
//! ```

mod analysis;
mod config;
mod error;
mod hints;
mod normalizer;
mod restrict;
mod semantic;
mod session;
mod shape;
mod tokens;
mod walk;

pub use crate::{
    analysis::{
        Analysis, Cacheability, DiscardTarget, LiteralForm, NotCacheable, Parameter, SessionEffect,
        StatementAnalysis, StatementIdentity, StatementKind, WriteEffect,
    },
    config::{CatalogPolicy, NormalizerConfig, NormalizerConfigBuilder, Volatility},
    error::{Error, ErrorKind},
    hints::{CacheHint, Hints, IgnoredHint, TierHint},
    normalizer::{analyze, read_hints, Normalizer},
    restrict::{Assignment, ColumnRestriction, OnConflict, RestrictedValues, ValueRef, WriteKeys},
    semantic::{semantic_form, SemanticForm},
    tokens::is_time_dependent_input,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_debug<T: Send + Sync + std::fmt::Debug>() {}

    #[test]
    fn public_types_are_send_sync_and_debug() {
        assert_send_sync_debug::<Analysis>();
        assert_send_sync_debug::<Cacheability>();
        assert_send_sync_debug::<LiteralForm>();
        assert_send_sync_debug::<NotCacheable>();
        assert_send_sync_debug::<Parameter>();
        assert_send_sync_debug::<StatementAnalysis>();
        assert_send_sync_debug::<StatementIdentity>();
        assert_send_sync_debug::<StatementKind>();
        assert_send_sync_debug::<WriteEffect>();
        assert_send_sync_debug::<SessionEffect>();
        assert_send_sync_debug::<DiscardTarget>();
        assert_send_sync_debug::<CatalogPolicy>();
        assert_send_sync_debug::<NormalizerConfig>();
        assert_send_sync_debug::<NormalizerConfigBuilder>();
        assert_send_sync_debug::<Volatility>();
        assert_send_sync_debug::<Error>();
        assert_send_sync_debug::<ErrorKind>();
        assert_send_sync_debug::<CacheHint>();
        assert_send_sync_debug::<Hints>();
        assert_send_sync_debug::<IgnoredHint>();
        assert_send_sync_debug::<TierHint>();
        assert_send_sync_debug::<Normalizer>();
        assert_send_sync_debug::<ColumnRestriction>();
        assert_send_sync_debug::<RestrictedValues>();
        assert_send_sync_debug::<ValueRef>();
        assert_send_sync_debug::<WriteKeys>();
        assert_send_sync_debug::<Assignment>();
        assert_send_sync_debug::<OnConflict>();
        assert_send_sync_debug::<std::sync::Arc<Analysis>>();
    }
}
