//! The proxy itself: binding, the accept loop, graceful shutdown and signal handling.

use std::{
    collections::HashSet,
    fmt,
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tracing::{info, warn};

use crate::{
    config::{ProxyBuilder, ProxyConfig, Upstream},
    error::Error,
    http,
    metrics::Metrics,
    relay::{serve_client, Shared},
    seam::RequestCache,
    threads::{Handoff, SessionThreads},
    transport::Stream,
};

/// A configured, not yet listening PostgreSQL proxy.
pub struct Proxy {
    config: ProxyConfig,
    cache: Arc<dyn RequestCache>,
    registry: prometheus::Registry,
    metrics: Metrics,
}

impl Proxy {
    /// Starts configuring a proxy.
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::default()
    }

    pub(crate) fn new(
        config: ProxyConfig,
        cache: Arc<dyn RequestCache>,
        registry: prometheus::Registry,
    ) -> Result<Self, Error> {
        let metrics = Metrics::new(&registry)?;
        Ok(Self { config, cache, registry, metrics })
    }

    /// The metrics registry served on `/metrics`.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// The upstream server.
    pub fn upstream(&self) -> &Upstream {
        &self.config.upstream
    }

    /// The Redis URL given for the shared L2, if any (used when the cache is configured).
    pub fn redis_url(&self) -> Option<&str> {
        self.config.redis.as_deref()
    }

    /// Binds the client and HTTP sockets.
    pub async fn bind(self) -> Result<BoundProxy, Error> {
        let listener = TcpListener::bind(self.config.listen)
            .await
            .map_err(|e| Error::io(format!("cannot listen on {}", self.config.listen), e))?;
        let local_addr = listener.local_addr().map_err(|e| Error::io("cannot read the listen address", e))?;
        let http = match self.config.http {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|e| Error::io(format!("cannot listen for http on {addr}"), e))?;
                Some(l)
            }
            None => None,
        };
        let http_addr = match &http {
            Some(l) => Some(l.local_addr().map_err(|e| Error::io("cannot read the http address", e))?),
            None => None,
        };
        let unix = match &self.config.unix_socket_dir {
            Some(dir) => Some(bind_unix(dir, local_addr.port())?),
            None => None,
        };
        check_channel_binding(&self.config).await;
        let (shutdown_tx, shutdown_rx) = watch::channel(ShutdownLevel::Running);
        let recording_budget = Arc::new(crate::relay::RecordingBudget::new(self.config.max_recording_bytes));
        let pools = self
            .config
            .pooling
            .clone()
            .map(|settings| Arc::new(crate::pool::Pools::new(settings, self.metrics.pool.clone())));
        let shared = Arc::new(Shared {
            pools,
            config: self.config,
            cache: self.cache,
            metrics: self.metrics,
            recording_budget,
            cancel_keys: Mutex::new(HashSet::new()),
            next_session_id: AtomicU64::new(1),
            shutdown: shutdown_rx,
        });
        Ok(BoundProxy {
            listener,
            unix,
            http,
            local_addr,
            http_addr,
            shared,
            registry: self.registry,
            shutdown: ShutdownHandle(Arc::new(shutdown_tx)),
        })
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("upstream", &self.config.upstream)
            .field("listen", &self.config.listen)
            .field("http", &self.config.http)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// A proxy with its sockets bound; [`run`](BoundProxy::run) serves until shutdown.
pub struct BoundProxy {
    listener: TcpListener,
    unix: Option<UnixSocket>,
    http: Option<TcpListener>,
    local_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    registry: prometheus::Registry,
    shutdown: ShutdownHandle,
}

impl fmt::Debug for BoundProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundProxy")
            .field("local_addr", &self.local_addr)
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

/// How far a shutdown has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ShutdownLevel {
    /// Serving.
    Running,
    /// Not accepting; sessions finish their current request or transaction within the grace.
    Graceful,
    /// Sessions end now (what still runs is cancelled and its answer awaited briefly).
    Immediate,
}

/// Requests a graceful shutdown: stop accepting, let each session finish its current request or
/// transaction (up to the grace period), then close.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<ShutdownLevel>>);

impl ShutdownHandle {
    /// Starts the shutdown (idempotent).
    pub fn shutdown(&self) {
        self.0.send_if_modified(|level| {
            let was = *level;
            *level = was.max(ShutdownLevel::Graceful);
            *level != was
        });
    }

    /// Ends every session now, without waiting for the grace period (what a second SIGTERM or
    /// SIGINT asks for).
    pub fn shutdown_now(&self) {
        self.0.send_replace(ShutdownLevel::Immediate);
    }
}

impl BoundProxy {
    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The Unix socket clients may connect to, if any (`DIR/.s.PGSQL.<port>`).
    pub fn unix_socket(&self) -> Option<&std::path::Path> {
        self.unix.as_ref().map(|u| u.path.as_path())
    }

    /// The address of `/health` and `/metrics`, if served.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// A handle that shuts this proxy down.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Serves clients until SIGINT or SIGTERM (or a [`ShutdownHandle`]), then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<(), Error> {
        let handle = self.shutdown_handle();
        let signals = tokio::spawn(async move {
            wait_for_signal().await;
            info!("signal received; shutting down (a second signal ends every session now)");
            handle.shutdown();
            wait_for_signal().await;
            info!("second signal received; ending every session now");
            handle.shutdown_now();
        });
        let result = self.run().await;
        signals.abort();
        result
    }

    /// Serves clients until shutdown is requested, then waits for the sessions to end (each
    /// bounded by the grace period).
    pub async fn run(self) -> Result<(), Error> {
        let BoundProxy { listener, unix, http, local_addr, shared, registry, shutdown, .. } = self;
        let tls = match &shared.config.tls {
            Some(t) if shared.config.tls_required => format!("required ({})", t.files().cert.display()),
            Some(t) => format!("offered ({})", t.files().cert.display()),
            None => "off".to_owned(),
        };
        info!(
            listen = %local_addr,
            unix_socket = %unix.as_ref().map_or_else(|| "none".to_owned(), |u| u.path.display().to_string()),
            upstream = %shared.config.upstream,
            client_tls = %tls,
            upstream_sslmode = %shared.config.upstream_tls.mode,
            "strata-proxy serving"
        );
        if matches!(
            shared.config.upstream_tls.mode,
            crate::tls::SslMode::Prefer | crate::tls::SslMode::Require
        ) && matches!(shared.config.upstream, Upstream::Tcp { .. })
        {
            info!(mode = %shared.config.upstream_tls.mode, "upstream TLS verifies no certificate in this mode: use verify-full with --upstream-sslrootcert where the network is not trusted");
        }
        let reload = shared.config.tls.clone().map(|tls| tokio::spawn(reload_on_sighup(tls)));
        let maintain = shared.pools.as_ref().map(|pools| {
            info!(
                pool_size = pools.settings.size,
                auth_type = %pools.settings.auth_type,
                "transaction pooling: clients share server connections; the proxy authenticates them"
            );
            let (pools, shared) = (pools.clone(), shared.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    pools.maintain(&shared.config).await;
                }
            })
        });
        let threads = match shared.config.session_threads {
            0 => None,
            n => {
                Some(SessionThreads::start(n).map_err(|e| Error::io("cannot start the session threads", e))?)
            }
        };
        if let Some(t) = &threads {
            info!(threads = t.len(), "sessions run on their own threads, one runtime each");
        }
        let mut rx = shutdown.0.subscribe();
        let http_task = http.map(|l| tokio::spawn(http::serve(l, registry, rx.clone())));
        let mut sessions = JoinSet::new();
        while *rx.borrow() == ShutdownLevel::Running {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        let _ = stream.set_nodelay(true);
                        spawn_session(&mut sessions, threads.as_ref(), &shared, Stream::Tcp(stream));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                accepted = accept_unix(unix.as_ref()) => match accepted {
                    Ok(stream) => spawn_session(&mut sessions, threads.as_ref(), &shared, stream),
                    Err(e) => {
                        warn!(error = %e, "accept on the unix socket failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                changed = rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        drop(listener);
        drop(unix);
        if let Some(r) = reload {
            r.abort();
        }
        if let Some(m) = maintain {
            m.abort();
        }
        info!(sessions = sessions.len(), "shutting down; waiting for sessions to finish");
        while sessions.join_next().await.is_some() {}
        drop(threads);
        if let Some(t) = http_task {
            t.abort();
        }
        info!("strata-proxy stopped");
        Ok(())
    }
}

/// Starts serving an accepted client: on the session thread serving the fewest sessions, or
/// on this runtime without session threads.
fn spawn_session(
    sessions: &mut JoinSet<()>,
    threads: Option<&SessionThreads>,
    shared: &Arc<Shared>,
    stream: Stream,
) {
    let shared = shared.clone();
    let Some(threads) = threads else {
        sessions.spawn(serve_client(shared, stream));
        return;
    };
    let handoff = match Handoff::take(stream) {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, "cannot hand an accepted connection to a session thread");
            return;
        }
    };
    let (thread, placed) = threads.place();
    sessions.spawn_on(
        async move {
            let _placed = placed;
            match handoff.arrive() {
                Ok(stream) => serve_client(shared, stream).await,
                Err(e) => warn!(error = %e, "cannot register an accepted connection on its session thread"),
            }
        },
        thread,
    );
}

/// A Unix socket being listened on; the file goes when it is dropped.
struct UnixSocket {
    #[cfg(unix)]
    listener: tokio::net::UnixListener,
    path: std::path::PathBuf,
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(unix)]
fn bind_unix(dir: &std::path::Path, port: u16) -> Result<UnixSocket, Error> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let path = crate::transport::socket_path(dir, port);
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        // A socket left by a process that is gone is replaced; one still answering is not.
        if !meta.file_type().is_socket() {
            return Err(Error::config(format!("{} exists and is not a socket", path.display())));
        }
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(Error::config(format!("{} is in use by another server", path.display())));
        }
        let _ = std::fs::remove_file(&path);
    }
    let listener = tokio::net::UnixListener::bind(&path)
        .map_err(|e| Error::io(format!("cannot listen on {}", path.display()), e))?;
    // As PostgreSQL's default unix_socket_permissions: who may connect is up to authentication.
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
    Ok(UnixSocket { listener, path })
}

#[cfg(not(unix))]
fn bind_unix(_dir: &std::path::Path, _port: u16) -> Result<UnixSocket, Error> {
    Err(Error::config("unix sockets are not supported on this platform"))
}

#[cfg(unix)]
async fn accept_unix(unix: Option<&UnixSocket>) -> std::io::Result<Stream> {
    match unix {
        Some(u) => u.listener.accept().await.map(|(s, _)| Stream::Unix(s)),
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn accept_unix(_unix: Option<&UnixSocket>) -> std::io::Result<Stream> {
    std::future::pending().await
}

/// With client TLS and a TLS upstream under another certificate, SCRAM channel binding cannot
/// hold end to end: say at startup what clients will meet (each such client is refused with a
/// message saying what to change; others pass).
async fn check_channel_binding(config: &ProxyConfig) {
    let Some(tls) = &config.tls else { return };
    if config.upstream_tls.connector.is_none() || !matches!(config.upstream, Upstream::Tcp { .. }) {
        return;
    }
    match crate::transport::connect_upstream(config).await {
        Ok(up) => match up.peer_leaf() {
            Some(leaf) if leaf == tls.leaf() => {
                info!("the upstream presents the proxy's own certificate: SCRAM channel binding works end to end")
            }
            Some(_) => warn!(
                "the upstream's TLS certificate is not the proxy's: clients on TLS that use SCRAM channel binding (libpq's default channel_binding=prefer) are refused with a message; they connect with channel_binding=disable, or give the proxy the upstream's certificate and key, or use --upstream-sslmode disable on a trusted network"
            ),
            None => info!("the upstream does not use TLS: SCRAM from TLS clients works without channel binding"),
        },
        Err(e) => warn!(error = %e.0, "cannot reach the upstream to compare TLS certificates; sessions check it as they connect"),
    }
}

/// Reloads the client TLS certificate and key on SIGHUP; a failed reload keeps the old ones.
async fn reload_on_sighup(tls: Arc<crate::tls::ClientTls>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => info!(cert = %tls.files().cert.display(), "TLS certificate reloaded"),
                Err(e) => warn!(error = %e, "TLS certificate reload failed; the previous one stays in force"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tls;
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
