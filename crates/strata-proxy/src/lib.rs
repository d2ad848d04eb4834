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
//!   A cache opens one [`RequestSession`] per client session; when it needs the session's
//!   state it asks the proxy to read it back on the session's own connection
//!   ([`Lookup::Verify`]), hidden from the client.
//! - [`SessionView`]: the wire facts of a session (database, user, startup and server
//!   parameters, transaction status). The proxy reads no SQL: what statements mean for the cache
//!   is `strata`'s business.
//! - [`StrataCache`]: `strata::SessionCache` behind the seam. How a committed write becomes
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

mod auth;
mod cli;
mod config;
mod console;
mod error;
mod http;
mod metrics;
mod pool;
mod protocol;
mod relay;
mod seam;
mod server;
mod session;
mod strata_cache;
mod strata_console;
mod threads;
mod tls;
mod transport;

pub use crate::{
    auth::AuthType,
    cli::Args,
    config::{
        FileConfig, PoolFileConfig, ProxyBuilder, SemanticFileConfig, Upstream, DEFAULT_HTTP, DEFAULT_LISTEN,
        DEFAULT_UPSTREAM,
    },
    error::{Error, ErrorKind},
    pool::PoolMode,
    seam::{
        Bind, CacheMode, Capture, Captured, ColumnOrigin, ConsoleCommand, ConsoleReply, Dropped,
        ExtendedMessage, Fill, Format, Lookup, NotCacheable, PassThrough, PreparedStatement, Request,
        RequestCache, RequestKind, RequestSession, Response, ResponseSummary, Target, TransactionStatus,
    },
    server::{BoundProxy, Proxy, ShutdownHandle},
    session::SessionView,
    strata_cache::{
        build_query_cache, CacheSettings, EmbedderChoice, SemanticSettings, StrataCache, StrataCacheBuilder,
    },
    tls::{SslMode, TlsFiles},
};
pub use strata::{CatalogConfig, CatalogConfigBuilder, Invalidation, TestOnlySessionTrust};
