//! The proxy's Prometheus metrics, registered in the registry it serves on `/metrics`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::error::Error;

/// Counters and gauges of the proxy (cheap clones share the same series).
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) connections: IntCounter,
    pub(crate) sessions_active: IntGauge,
    pub(crate) requests_simple: IntCounter,
    pub(crate) requests_extended: IntCounter,
    pub(crate) requests_function: IntCounter,
    pub(crate) replays: IntCounter,
    pub(crate) protocol_violations: IntCounter,
    pub(crate) upstream_connect_errors: IntCounter,
    pub(crate) upstream_lost: IntCounter,
    pub(crate) cancel_requests: IntCounter,
    pub(crate) console_sessions: IntCounter,
    pub(crate) console_refused: IntCounter,
    pub(crate) bytes_to_upstream: IntCounter,
    pub(crate) bytes_to_client: IntCounter,
    /// Client TLS by how it began (`negotiated` after SSLRequest, `direct`, `plaintext`) and its
    /// outcome (`ok`, `failed`, `no_alpn`, `refused`).
    pub(crate) tls_handshakes: IntCounterVec,
    pub(crate) channel_binding_refused: IntCounter,
    pub(crate) pool: PoolMetrics,
}

/// Transaction pooling's series.
#[derive(Debug, Clone)]
pub(crate) struct PoolMetrics {
    /// Clients connected in transaction mode.
    pub(crate) clients: IntGauge,
    /// Clients refused because `max_client_conn` were connected.
    pub(crate) clients_refused: IntCounter,
    /// Server connections idle in a pool and linked to a client.
    pub(crate) servers_idle: IntGauge,
    pub(crate) servers_active: IntGauge,
    /// Server connections a client was linked to (one per transaction or request).
    pub(crate) checkouts: IntCounter,
    /// Requests refused because no server connection came free within the pool timeout.
    pub(crate) wait_timeouts: IntCounter,
    /// Clients pinned to their server connection, by what their session kept.
    pub(crate) pinned: IntCounterVec,
    /// Session states read back before a server connection was shared again, by outcome.
    pub(crate) state_checks: IntCounterVec,
    /// Server connections brought to a client's settings and role before its transaction, by
    /// outcome (`ok`, `failed`: the client's session ended).
    pub(crate) replays: IntCounterVec,
    /// Server connections closed, by why.
    pub(crate) servers_closed: IntCounterVec,
}

fn vec<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: T,
    name: &str,
) -> Result<T, Error> {
    registry
        .register(Box::new(metric.clone()))
        .map_err(|e| Error::config(format!("cannot register {name}")).with_source(e))?;
    Ok(metric)
}

impl PoolMetrics {
    fn new(registry: &Registry) -> Result<Self, Error> {
        let bad = |e: prometheus::Error| Error::config("bad metric").with_source(e);
        let servers = vec(
            registry,
            IntGaugeVec::new(
                Opts::new("strata_proxy_pool_servers", "Pooled server connections by state (idle, active)"),
                &["state"],
            )
            .map_err(bad)?,
            "strata_proxy_pool_servers",
        )?;
        let clients = vec(
            registry,
            IntGauge::new("strata_proxy_pool_clients", "Clients connected in transaction pooling mode")
                .map_err(bad)?,
            "strata_proxy_pool_clients",
        )?;
        Ok(Self {
            clients,
            clients_refused: counter(
                registry,
                "strata_proxy_pool_clients_refused_total",
                "Clients refused because max_client_conn clients were connected",
            )?,
            servers_idle: servers.with_label_values(&["idle"]),
            servers_active: servers.with_label_values(&["active"]),
            checkouts: counter(
                registry,
                "strata_proxy_pool_checkouts_total",
                "Server connections linked to a client for a transaction or request",
            )?,
            wait_timeouts: counter(
                registry,
                "strata_proxy_pool_wait_timeouts_total",
                "Requests refused because no server connection came free within the pool timeout",
            )?,
            pinned: vec(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "strata_proxy_pool_pinned_total",
                        "Clients pinned to one server connection, by the session state they kept",
                    ),
                    &["reason"],
                )
                .map_err(bad)?,
                "strata_proxy_pool_pinned_total",
            )?,
            state_checks: vec(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "strata_proxy_pool_state_checks_total",
                        "Session states read back before a server connection was shared again, by outcome",
                    ),
                    &["outcome"],
                )
                .map_err(bad)?,
                "strata_proxy_pool_state_checks_total",
            )?,
            replays: vec(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "strata_proxy_pool_state_replays_total",
                        "Server connections brought to a client's settings and role before its transaction, by outcome",
                    ),
                    &["outcome"],
                )
                .map_err(bad)?,
                "strata_proxy_pool_state_replays_total",
            )?,
            servers_closed: vec(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "strata_proxy_pool_servers_closed_total",
                        "Pooled server connections closed, by why",
                    ),
                    &["reason"],
                )
                .map_err(bad)?,
                "strata_proxy_pool_servers_closed_total",
            )?,
        })
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, Error> {
    let c = IntCounter::new(name, help).map_err(|e| Error::config("bad metric").with_source(e))?;
    registry
        .register(Box::new(c.clone()))
        .map_err(|e| Error::config(format!("cannot register {name}")).with_source(e))?;
    Ok(c)
}

impl Metrics {
    pub(crate) fn new(registry: &Registry) -> Result<Self, Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "strata_proxy_requests_total",
                "Requests (Query, extended batch, FunctionCall) by protocol",
            ),
            &["protocol"],
        )
        .map_err(|e| Error::config("bad metric").with_source(e))?;
        registry
            .register(Box::new(requests.clone()))
            .map_err(|e| Error::config("cannot register strata_proxy_requests_total").with_source(e))?;
        let bytes = IntCounterVec::new(
            Opts::new("strata_proxy_bytes_total", "Bytes relayed, by direction"),
            &["direction"],
        )
        .map_err(|e| Error::config("bad metric").with_source(e))?;
        registry
            .register(Box::new(bytes.clone()))
            .map_err(|e| Error::config("cannot register strata_proxy_bytes_total").with_source(e))?;
        let sessions_active = IntGauge::new("strata_proxy_sessions_active", "Client sessions open")
            .map_err(|e| Error::config("bad metric").with_source(e))?;
        registry
            .register(Box::new(sessions_active.clone()))
            .map_err(|e| Error::config("cannot register strata_proxy_sessions_active").with_source(e))?;
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "strata_proxy_tls_handshakes_total",
                "Client TLS handshakes by mode (negotiated, direct) and outcome; plaintext/refused counts clients refused for not using TLS",
            ),
            &["mode", "outcome"],
        )
        .map_err(|e| Error::config("bad metric").with_source(e))?;
        registry
            .register(Box::new(tls_handshakes.clone()))
            .map_err(|e| Error::config("cannot register strata_proxy_tls_handshakes_total").with_source(e))?;
        Ok(Self {
            pool: PoolMetrics::new(registry)?,
            tls_handshakes,
            channel_binding_refused: counter(
                registry,
                "strata_proxy_channel_binding_refused_total",
                "Clients refused for asking SCRAM channel binding that cannot hold through the proxy",
            )?,
            connections: counter(registry, "strata_proxy_connections_total", "Client connections accepted")?,
            sessions_active,
            requests_simple: requests.with_label_values(&["simple"]),
            requests_extended: requests.with_label_values(&["extended"]),
            requests_function: requests.with_label_values(&["function_call"]),
            replays: counter(
                registry,
                "strata_proxy_replays_total",
                "Requests answered by replaying cached bytes",
            )?,
            protocol_violations: counter(
                registry,
                "strata_proxy_protocol_violations_total",
                "Client connections closed for a malformed or oversized message",
            )?,
            upstream_connect_errors: counter(
                registry,
                "strata_proxy_upstream_connect_errors_total",
                "Failed connections to the upstream server",
            )?,
            upstream_lost: counter(
                registry,
                "strata_proxy_upstream_lost_total",
                "Sessions whose upstream connection ended unexpectedly",
            )?,
            cancel_requests: counter(
                registry,
                "strata_proxy_cancel_requests_total",
                "CancelRequests forwarded",
            )?,
            console_sessions: counter(
                registry,
                "strata_proxy_console_sessions_total",
                "Admin console sessions that authenticated",
            )?,
            console_refused: counter(
                registry,
                "strata_proxy_console_refused_total",
                "Admin console connections refused: the user is not an admin",
            )?,
            bytes_to_upstream: bytes.with_label_values(&["to_upstream"]),
            bytes_to_client: bytes.with_label_values(&["to_client"]),
        })
    }
}
