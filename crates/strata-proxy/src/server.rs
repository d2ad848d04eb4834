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
        let (shutdown_tx, shutdown_rx) = watch::channel(ShutdownLevel::Running);
        let recording_budget = Arc::new(crate::relay::RecordingBudget::new(self.config.max_recording_bytes));
        let shared = Arc::new(Shared {
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
        let BoundProxy { listener, http, local_addr, shared, registry, shutdown, .. } = self;
        info!(listen = %local_addr, upstream = %shared.config.upstream, "strata-proxy serving");
        let mut rx = shutdown.0.subscribe();
        let http_task = http.map(|l| tokio::spawn(http::serve(l, registry, rx.clone())));
        let mut sessions = JoinSet::new();
        while *rx.borrow() == ShutdownLevel::Running {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        sessions.spawn(serve_client(shared.clone(), stream));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
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
        info!(sessions = sessions.len(), "shutting down; waiting for sessions to finish");
        while sessions.join_next().await.is_some() {}
        if let Some(t) = http_task {
            t.abort();
        }
        info!("strata-proxy stopped");
        Ok(())
    }
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
