//! Strata's PostgreSQL proxy: a transparent wire-protocol relay with a seam for the query cache.
//!
//! Point a client at the proxy instead of PostgreSQL. Each client session gets its own upstream
//! connection; the startup message and every authentication exchange (trust, password, md5,
//! SCRAM-SHA-256) are relayed unchanged, SSL and GSS encryption requests are declined (`N`), and
//! CancelRequests reach the backend whose key the client holds. Bytes are relayed as they arrive;
//! only the messages the proxy acts on are decoded.
//!
//! # Parts
//! - [`Proxy`] (built by [`ProxyBuilder`]) binds into a [`BoundProxy`] that serves until a
//!   [`ShutdownHandle`] or a signal asks it to stop, letting in-flight work finish.
//! - The caching seam: the proxy groups client messages into [`Request`]s (a simple `Query`, an
//!   extended batch through `Sync`, a `FunctionCall`) and the server's answer into a
//!   [`Response`]; a [`RequestCache`] may answer a request with recorded bytes
//!   ([`Lookup::Hit`]) or receive the response to record ([`Lookup::Miss`] → `complete`).
//!   [`PassThrough`] is the cache used until `strata::QueryCache` is plugged in.
//! - [`SessionView`]: what the proxy tracked of a session (database, user, server parameters,
//!   transaction status, `SET`/`RESET`/`SET ROLE`/`SET SESSION AUTHORIZATION`/`DISCARD`).
//! - [`StrataCache`]: `strata::QueryCache` behind the seam. How a committed write becomes
//!   invalidations is its [`Invalidation`]: everything (the default), only the tables the SQL
//!   names, or those expanded through the upstream's catalog ([`CatalogConfig`]).
//! - `/health` and `/metrics` (Prometheus text) on a small HTTP port.
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), strata_proxy::Error> {
//! let proxy = strata_proxy::Proxy::builder()
//!     .with_upstream("postgres://127.0.0.1:5432")
//!     .with_listen("127.0.0.1:6432")
//!     .build()?;
//! proxy.bind().await?.run_until_signal().await
//! # }
//! ```

mod catalog;
mod cli;
mod config;
mod effects;
mod error;
mod http;
mod metrics;
mod protocol;
mod relay;
mod seam;
mod server;
mod session;
mod strata_cache;

pub use crate::{
    catalog::{CatalogConfig, CatalogConfigBuilder},
    cli::Args,
    config::{FileConfig, ProxyBuilder, Upstream, DEFAULT_HTTP, DEFAULT_LISTEN, DEFAULT_UPSTREAM},
    error::{Error, ErrorKind},
    seam::{
        Bind, CacheMode, ExtendedMessage, Fill, Format, Lookup, NotCacheable, PassThrough, PreparedStatement,
        Request, RequestCache, RequestKind, Response, ResponseSummary, Target, TransactionStatus,
    },
    server::{BoundProxy, Proxy, ShutdownHandle},
    session::{SessionView, Tracking},
    strata_cache::{build_query_cache, CacheSettings, Invalidation, StrataCache, StrataCacheBuilder},
};
