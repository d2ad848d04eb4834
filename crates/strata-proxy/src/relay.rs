//! One client session: startup, the authentication relay, and the two relay directions with the
//! request grouping that feeds the caching seam.
//!
//! Client → upstream and upstream → client run as two tasks so that neither direction can block the
//! other (a pipelining client may write while the server writes). They share the session state
//! behind a short-held `std::sync::Mutex`; the client socket's write half sits behind a
//! `tokio::sync::Mutex` so that cache replays and proxy errors never interleave with a frame.
//!
//! This file holds the session's life (startup, the two tasks, how it ends) and the state both
//! directions share; `client.rs` groups client messages into requests and asks the cache;
//! `server.rs` follows the server's answers, records them and reports them to the cache.

mod capture;
mod client;
mod server;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{oneshot, watch, Notify, OwnedMutexGuard},
    time::{timeout, Instant},
};
use tracing::{debug, info, warn};

use crate::{
    config::ProxyConfig,
    metrics::Metrics,
    protocol::{
        encoding_reads_exactly, error_fields, error_response, exact_text, frame, parse_message,
        parse_startup, Malformed, Reader, Severity, StartupParams, CANCEL_REQUEST, GSSENC_REQUEST,
        MAX_STARTUP_BYTES, SSL_REQUEST,
    },
    seam::{
        Bind, CacheMode, Dropped, ExtendedMessage, Fill, Format, Lookup, NotCacheable, PreparedStatement,
        Request, RequestCache, RequestKind, RequestSession, Response, ResponseSummary, Target,
        TransactionStatus,
    },
    server::ShutdownLevel,
    session::SessionView,
    transport::{connect_upstream, send, ConnectError, ReadHalf, Stream, WriteHalf},
};

/// Frames of at least this size whose content the proxy does not need are streamed through as
/// they arrive instead of being buffered whole.
const STREAM_THRESHOLD: usize = 64 * 1024;
/// An extended batch held for a cache lookup is released upstream once it grows past this.
const MAX_HELD_BYTES: usize = 1 << 20;

/// State shared by all sessions of one proxy.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    pub(crate) cache: Arc<dyn RequestCache>,
    pub(crate) metrics: Metrics,
    /// Bytes held by responses being recorded, in every session.
    pub(crate) recording_budget: Arc<RecordingBudget>,
    /// BackendKeyData of live sessions; a CancelRequest is forwarded only for these.
    pub(crate) cancel_keys: Mutex<HashSet<(u32, u32)>>,
    pub(crate) next_session_id: AtomicU64,
    pub(crate) shutdown: watch::Receiver<ShutdownLevel>,
    /// The pools, in transaction pooling mode.
    pub(crate) pools: Option<Arc<crate::pool::Pools>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a task panicked mid-update; the state is still the best we have.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves one accepted client connection to its end.
pub(crate) async fn serve_client(shared: Arc<Shared>, stream: Stream) {
    shared.metrics.connections.inc();
    let outcome = timeout(shared.config.startup_timeout, read_startup(&shared, stream)).await;
    let (params, raw, stream) = match outcome {
        Err(_) => {
            debug!("client did not complete startup in time");
            return;
        }
        Ok(Startup::Session(params, raw, stream)) => (params, raw, stream),
        Ok(Startup::Done) => return,
        Ok(Startup::Refused(mut stream, code, message)) => {
            let _ = send(&mut stream, &error_response(Severity::Fatal, code, &message)).await;
            let _ = stream.shutdown().await;
            return;
        }
        Ok(Startup::Unsupported(mut stream, message)) => {
            shared.metrics.protocol_violations.inc();
            let _ = send(&mut stream, &error_response(Severity::Fatal, "0A000", &message)).await;
            let _ = stream.shutdown().await;
            return;
        }
        Ok(Startup::Malformed(mut stream, m)) => {
            shared.metrics.protocol_violations.inc();
            info!(error = %m.0, "protocol violation in startup");
            let _ = send(&mut stream, &error_response(Severity::Fatal, "08P01", &m.0)).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    let client_tls = stream.is_tls();
    let console = params.get("database") == Some(crate::console::CONSOLE_DATABASE)
        && !shared.config.admin_users.is_empty();
    let mut stream = stream;
    let pooled = match &shared.pools {
        Some(pools) if !console => {
            match crate::pool::start_client(&shared, pools, &params, &mut stream).await {
                Some(p) => Some(p),
                None => return,
            }
        }
        _ => None,
    };
    let (rd, wr) = stream.into_split();
    if console {
        crate::console::serve(shared, params, client_tls, rd, wr).await;
        return;
    }
    shared.metrics.sessions_active.inc();
    let (upstream, client) = match pooled {
        Some((pipe, client)) => (Some(pipe), Some(client)),
        None => (None, None),
    };
    run_session(&shared, params, raw, client_tls, rd, wr, upstream).await;
    drop(client);
    shared.metrics.sessions_active.dec();
}

enum Startup {
    Session(StartupParams, Bytes, Stream),
    Done,
    Malformed(Stream, Malformed),
    /// A request PostgreSQL refuses as an unsupported protocol (SQLSTATE 0A000).
    Unsupported(Stream, String),
    /// Refused by policy (TLS required) with this SQLSTATE and message.
    Refused(Stream, &'static str, String),
}

/// The first byte of a TLS handshake record: a client using PostgreSQL 17's direct TLS.
const TLS_HANDSHAKE: u8 = 0x16;

async fn read_startup(shared: &Shared, mut stream: Stream) -> Startup {
    // Direct TLS: a ClientHello first, no SSLRequest. Peeking consumes nothing.
    if let (Some(tls), Stream::Tcp(tcp)) = (&shared.config.tls, &stream) {
        let mut first = [0u8; 1];
        match tcp.peek(&mut first).await {
            Ok(1) if first[0] == TLS_HANDSHAKE => {
                let Stream::Tcp(tcp) = stream else { unreachable!("matched above") };
                match tls.acceptor().accept(tcp).await {
                    Ok(s) => {
                        // PostgreSQL refuses direct TLS without ALPN `postgresql`: a generic TLS
                        // client must not be taken for a PostgreSQL one.
                        if s.get_ref().1.alpn_protocol() != Some(crate::tls::ALPN_POSTGRESQL) {
                            shared.metrics.tls_handshakes.with_label_values(&["direct", "no_alpn"]).inc();
                            debug!("direct TLS without ALPN postgresql refused");
                            return Startup::Done;
                        }
                        shared.metrics.tls_handshakes.with_label_values(&["direct", "ok"]).inc();
                        stream = Stream::Accepted(Box::new(s));
                    }
                    Err(e) => {
                        shared.metrics.tls_handshakes.with_label_values(&["direct", "failed"]).inc();
                        debug!(error = %e, "direct TLS handshake failed");
                        return Startup::Done;
                    }
                }
            }
            Ok(_) => {}
            Err(_) => return Startup::Done,
        }
    }
    // PostgreSQL answers one SSLRequest and one GSSENCRequest; a second of either is an unknown
    // protocol to it.
    let (mut ssl_done, mut gss_done) = (stream.is_tls(), false);
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).await.is_err() {
            return Startup::Done;
        }
        let len = u32::from_be_bytes(len) as usize;
        if !(8..=MAX_STARTUP_BYTES).contains(&len) {
            return Startup::Malformed(stream, Malformed::new("invalid length of startup packet"));
        }
        let mut packet = vec![0u8; len];
        packet[..4].copy_from_slice(&(len as u32).to_be_bytes());
        if stream.read_exact(&mut packet[4..]).await.is_err() {
            return Startup::Done;
        }
        let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                if len != 8 {
                    return Startup::Malformed(
                        stream,
                        Malformed::new("invalid length of encryption request"),
                    );
                }
                let done = if code == SSL_REQUEST { &mut ssl_done } else { &mut gss_done };
                if std::mem::replace(done, true) {
                    return Startup::Unsupported(
                        stream,
                        format!(
                            "unsupported frontend protocol {}.{}: server supports 3.0 to 3.0",
                            code >> 16,
                            code & 0xffff
                        ),
                    );
                }
                match (&shared.config.tls, stream) {
                    (Some(tls), Stream::Tcp(tcp)) if code == SSL_REQUEST => {
                        // Nothing past the 8 bytes was read: whatever the client sent after
                        // the request goes into the handshake, never into the protocol (plaintext
                        // injected there is the CVE-2021-23214 class).
                        let mut tcp = tcp;
                        if tcp.write_all(b"S").await.is_err() {
                            return Startup::Done;
                        }
                        match tls.acceptor().accept(tcp).await {
                            Ok(s) => {
                                shared.metrics.tls_handshakes.with_label_values(&["negotiated", "ok"]).inc();
                                stream = Stream::Accepted(Box::new(s));
                            }
                            Err(e) => {
                                shared
                                    .metrics
                                    .tls_handshakes
                                    .with_label_values(&["negotiated", "failed"])
                                    .inc();
                                debug!(error = %e, "TLS handshake failed");
                                return Startup::Done;
                            }
                        }
                    }
                    (_, mut other) => {
                        // Not offered here (no certificate, a Unix socket, GSS): the client goes
                        // on in plain text or gives up.
                        if send(&mut other, b"N").await.is_err() {
                            return Startup::Done;
                        }
                        stream = other;
                    }
                }
            }
            CANCEL_REQUEST => {
                if len != 16 {
                    return Startup::Malformed(stream, Malformed::new("invalid length of cancel request"));
                }
                forward_cancel(shared, Bytes::from(packet)).await;
                return Startup::Done;
            }
            version if version >> 16 == 3 => {
                if shared.config.tls_required && matches!(stream, Stream::Tcp(_)) {
                    shared.metrics.tls_handshakes.with_label_values(&["plaintext", "refused"]).inc();
                    return Startup::Refused(
                        stream,
                        "28000",
                        "strata-proxy requires TLS: connect with sslmode=require or stronger".to_owned(),
                    );
                }
                return match parse_startup(version, &packet[8..]) {
                    Ok(params) => Startup::Session(params, Bytes::from(packet), stream),
                    Err(m) => Startup::Malformed(stream, m),
                };
            }
            version => {
                return Startup::Malformed(
                    stream,
                    Malformed(format!(
                        "unsupported frontend protocol {}.{}",
                        version >> 16,
                        version & 0xffff
                    )),
                );
            }
        }
    }
}

async fn forward_cancel(shared: &Shared, packet: Bytes) {
    let key = (
        u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
        u32::from_be_bytes([packet[12], packet[13], packet[14], packet[15]]),
    );
    if !lock(&shared.cancel_keys).contains(&key) {
        debug!(pid = key.0, "cancel request for an unknown backend ignored");
        return;
    }
    let mut packet = packet;
    if let Some(pools) = &shared.pools {
        // A pooled client's key is the proxy's: the cancel goes to the server connection the
        // client holds now, and nowhere when it holds none (another client's query runs there).
        match pools.cancel_route(key) {
            Some(Some((pid, secret))) => {
                let mut p = packet.to_vec();
                p[8..12].copy_from_slice(&pid.to_be_bytes());
                p[12..16].copy_from_slice(&secret.to_be_bytes());
                packet = Bytes::from(p);
            }
            Some(None) => {
                debug!("cancel request for a pooled client holding no server connection dropped");
                return;
            }
            None => {}
        }
    }
    shared.metrics.cancel_requests.inc();
    // The same way a session connects, TLS mode included: a server accepting only TLS refuses a
    // plain cancel.
    match connect_upstream(&shared.config).await {
        Ok(mut s) => {
            if let Err(e) = send(&mut s, &packet).await {
                warn!(error = %e, "cannot forward cancel request");
            }
            // The server closes the connection once it has read the request.
            let mut sink = [0u8; 16];
            let _ = timeout(shared.config.connect_timeout, s.read(&mut sink)).await;
        }
        Err(e) => warn!(error = %e.0, "cannot connect upstream to forward a cancel request"),
    }
}

/// The client socket's write half and whether a frame is half written.
struct ClientOut {
    w: WriteHalf,
    mid_frame: bool,
}

/// The answer to a verification query: its rows, or why there are none.
type VerifyAnswer = Result<Vec<Vec<Option<Bytes>>>, String>;

/// One request sent upstream and not yet answered by ReadyForQuery.
#[derive(Default)]
struct InFlight {
    /// The request once complete (only built when the cache is active).
    request: Option<Request>,
    /// For the cache's own query reading the session state back: where its answer goes. None
    /// of its messages reach the client.
    verify: Option<oneshot::Sender<VerifyAnswer>>,
    verify_rows: Vec<Vec<Option<Bytes>>>,
    verify_error: Option<String>,
    fill: Option<Fill>,
    recording: Option<Recording>,
    not_cacheable: Option<NotCacheable>,
    tags: Vec<String>,
    error_code: Option<String>,
    rows: u64,
    response_bytes: u64,
    /// Ordinals (1-based) of ParseComplete / CloseComplete answering messages the proxy injected.
    drop_parse: Vec<u64>,
    drop_close: Vec<u64>,
    parse_seen: u64,
    close_seen: u64,
    /// The field of the rows kept for the cache (`RequestSession::capture`).
    capture: Option<capture::Capturing>,
    /// Executes sent upstream in this request: a capture holds for one statement only.
    executes: u32,
    /// Statements described (Describe of a statement) in this request, in order: each
    /// ParameterDescription the server sends belongs to the first one left.
    describing: VecDeque<Arc<PreparedStatement>>,
}

impl InFlight {
    fn mark(&mut self, reason: NotCacheable) {
        self.not_cacheable.get_or_insert(reason);
        // Known not to be stored: the fill ticket goes now, so that clients waiting for this
        // fill go to the database instead of waiting for the response to end.
        self.fill = None;
        self.recording = None;
    }

    fn record(&mut self, bytes: &[u8], max: usize) {
        self.response_bytes += bytes.len() as u64;
        if let Some(rec) = &mut self.recording {
            if let Err(reason) = rec.extend(bytes, max) {
                self.mark(reason);
            }
        }
    }
}

/// Bytes held by every response being recorded for the cache, against a process-wide budget.
#[derive(Debug)]
pub(crate) struct RecordingBudget {
    used: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl RecordingBudget {
    pub(crate) fn new(max: usize) -> Self {
        Self { used: std::sync::atomic::AtomicUsize::new(0), max }
    }
}

/// The first capacity of a [`Recording`].
const RECORDING_START: usize = 256;

/// A response being recorded; its bytes count against the [`RecordingBudget`] until it is taken
/// or dropped.
pub(crate) struct Recording {
    buf: BytesMut,
    budget: Arc<RecordingBudget>,
}

impl Recording {
    pub(crate) fn new(budget: Arc<RecordingBudget>) -> Self {
        // Room for a typical short answer (descriptions, a few rows, the tags), so that recording
        // it does not regrow the buffer message by message.
        Self { buf: BytesMut::with_capacity(RECORDING_START), budget }
    }

    fn extend(&mut self, bytes: &[u8], max: usize) -> Result<(), NotCacheable> {
        if self.buf.len() + bytes.len() > max {
            return Err(NotCacheable::TooLarge);
        }
        let used = self.budget.used.fetch_add(bytes.len(), Ordering::AcqRel) + bytes.len();
        if used > self.budget.max {
            self.budget.used.fetch_sub(bytes.len(), Ordering::AcqRel);
            return Err(NotCacheable::RecordingBudget);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    pub(crate) fn take(mut self) -> Bytes {
        let buf = std::mem::take(&mut self.buf);
        self.budget.used.fetch_sub(buf.len(), Ordering::AcqRel);
        // A cache keeps these bytes and weighs them by their length: an answer much shorter than
        // its buffer is copied out, so no cached entry holds memory it is not counted for.
        if buf.capacity() > 2 * buf.len() {
            return Bytes::copy_from_slice(&buf);
        }
        buf.freeze()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.buf.len(), Ordering::AcqRel);
    }
}

struct State {
    view: SessionView,
    /// Whether the startup ReadyForQuery has been seen (authentication is over).
    ready: bool,
    in_flight: VecDeque<InFlight>,
    backend_key: Option<(u32, u32)>,
    /// A request was answered (popped) but its last bytes are not yet written to the client; a
    /// replay must wait so that responses reach the client in request order.
    response_unwritten: bool,
}

struct Session {
    shared: Arc<Shared>,
    /// The cache's side of this session, when a cache takes part.
    cache: Option<Box<dyn RequestSession>>,
    state: Mutex<State>,
    client_out: Arc<tokio::sync::Mutex<ClientOut>>,
    /// Whether nothing is in flight and the session is outside a transaction (a shutdown may end
    /// it now). A plain flag, written on every request, and a `Notify` poked only when it turns
    /// true: a shutdown waiting for it re-reads the flag, so the hot path pays no channel.
    idle: AtomicBool,
    became_idle: Notify,
    /// Poked when the last bytes of an answered request reach the client.
    response_written: Notify,
    /// The client left (or shutdown ended the session): answers still read go nowhere.
    client_gone: AtomicBool,
    /// The client sent Terminate: the server closing the connection is expected.
    terminated: AtomicBool,
    /// Requests answered whose report to the cache has not finished yet.
    completing: std::sync::atomic::AtomicUsize,
    /// Poked after each answered request was reported to the cache.
    request_done: Notify,
}

impl Session {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    async fn write_client_fatal(&self, code: &str, message: &str) {
        let mut out = self.client_out.lock().await;
        if !out.mid_frame {
            let _ = send(&mut out.w, &error_response(Severity::Fatal, code, message)).await;
        }
        let _ = out.w.shutdown().await;
    }
}

enum ClientEnd {
    Closed,
    /// Refused during authentication, with this message.
    Refused(String),
    Terminated,
    Malformed(Malformed),
    UpstreamWrite(io::Error),
    ClientWrite,
}

enum ServerEnd {
    Closed,
    Read(io::Error),
    Protocol(String),
    ClientWrite,
}

async fn run_session(
    shared: &Arc<Shared>,
    params: StartupParams,
    raw_startup: Bytes,
    client_tls: bool,
    client_rd: ReadHalf,
    mut client_wr: WriteHalf,
    pooled: Option<Stream>,
) {
    let upstream = &shared.config.upstream;
    let connected = match pooled {
        Some(pipe) => Ok(pipe),
        None => connect_upstream(&shared.config).await,
    };
    let mut up = match connected {
        Ok(s) => s,
        Err(ConnectError(why)) => {
            shared.metrics.upstream_connect_errors.inc();
            warn!(upstream = %upstream, error = %why, "cannot connect to upstream");
            let msg = format!("strata-proxy could not connect to upstream server {upstream}: {why}");
            let _ = send(&mut client_wr, &error_response(Severity::Fatal, "08001", &msg)).await;
            let _ = client_wr.shutdown().await;
            return;
        }
    };
    // The client's TLS ends here and the upstream's is another, under a certificate that is not
    // ours: SCRAM channel binding cannot hold end to end, and a client asking for it is refused
    // (`client::ClientSide::screen_auth`) rather than relayed into a failure or a downgrade.
    let upstream_tls = up.is_tls();
    let binding_mismatch = client_tls
        && shared.config.tls.as_ref().is_some_and(|t| up.peer_leaf().is_some_and(|leaf| leaf != t.leaf()));
    if let Err(e) = send(&mut up, &raw_startup).await {
        shared.metrics.upstream_lost.inc();
        let msg = format!("strata-proxy lost the upstream connection during startup: {e}");
        let _ = send(&mut client_wr, &error_response(Severity::Fatal, "08006", &msg)).await;
        return;
    }
    let session_id = shared.next_session_id.fetch_add(1, Ordering::Relaxed);
    let (up_rd, up_wr) = up.into_split();
    let view = SessionView::new(session_id, &params);
    let cache = match shared.cache.mode() {
        CacheMode::Active => shared.cache.open_session(&view),
        CacheMode::PassThrough => None,
    };
    let session = Arc::new(Session {
        shared: shared.clone(),
        cache,
        state: Mutex::new(State {
            view,
            ready: false,
            in_flight: VecDeque::new(),
            backend_key: None,
            response_unwritten: false,
        }),
        client_out: Arc::new(tokio::sync::Mutex::new(ClientOut { w: client_wr, mid_frame: false })),
        idle: AtomicBool::new(false),
        became_idle: Notify::new(),
        response_written: Notify::new(),
        client_gone: AtomicBool::new(false),
        terminated: AtomicBool::new(false),
        completing: std::sync::atomic::AtomicUsize::new(0),
        request_done: Notify::new(),
    });
    let active = session.cache.is_some();
    let client_side = client::ClientSide::new(session.clone(), client_rd, up_wr, active, binding_mismatch);
    let server_side = server::ServerSide::new(session.clone(), up_rd, active, !client_tls && upstream_tls);
    let mut c2s = tokio::spawn(client_side.run());
    let mut s2c = tokio::spawn(server_side.run());

    let mut shutdown = shared.shutdown.clone();
    let deadline_for = |level: ShutdownLevel| match level {
        ShutdownLevel::Running => None,
        ShutdownLevel::Graceful => Some(Instant::now() + shared.config.shutdown_grace),
        ShutdownLevel::Immediate => Some(Instant::now()),
    };
    let mut deadline: Option<Instant> = deadline_for(*shutdown.borrow());
    enum Ended {
        Client(Option<ClientEnd>),
        Server(Option<(ServerEnd, bool)>),
        Shutdown,
    }
    let ended = loop {
        if deadline.is_some() && session.idle.load(Ordering::Acquire) {
            break Ended::Shutdown;
        }
        tokio::select! {
            r = &mut c2s => break Ended::Client(r.ok()),
            r = &mut s2c => break Ended::Server(r.ok()),
            changed = shutdown.changed() => {
                let level = if changed.is_err() { ShutdownLevel::Graceful } else { *shutdown.borrow() };
                // A second request (a second signal) cuts the grace short; a first starts it.
                if let Some(at) = deadline_for(level) {
                    deadline = Some(deadline.map_or(at, |d| d.min(at)));
                }
                if changed.is_err() {
                    // The proxy is gone: nothing will change again.
                    shutdown = watch::channel(ShutdownLevel::Graceful).1;
                }
            }
            // A permit stored by `notify_one` before this wait began wakes it at once; the loop
            // then re-reads the flag.
            _ = session.became_idle.notified(), if deadline.is_some() => {}
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                break Ended::Shutdown
            }
        }
    };
    // Requests still running upstream when the session ends may write: their answers are read
    // (and reported to the cache) for as long as the server may still commit them.
    let drain = shared.config.drain_timeout;
    match ended {
        Ended::Client(end) => {
            match end {
                Some(ClientEnd::UpstreamWrite(e)) => {
                    // The server side usually has the reason (a FATAL message) or sees the end soon.
                    debug!(error = %e, "upstream write failed");
                    let fatal_seen = match timeout(Duration::from_secs(2), &mut s2c).await {
                        Ok(Ok((_, fatal))) => fatal,
                        _ => {
                            s2c.abort();
                            false
                        }
                    };
                    shared.metrics.upstream_lost.inc();
                    if fatal_seen {
                        let _ = session.client_out.lock().await.w.shutdown().await;
                    } else {
                        session
                            .write_client_fatal("08006", "strata-proxy lost the upstream connection")
                            .await;
                    }
                }
                Some(ClientEnd::Refused(message)) => {
                    shared.metrics.channel_binding_refused.inc();
                    session.client_gone.store(true, Ordering::Release);
                    info!(session = session_id, "{message}");
                    session.write_client_fatal("28000", &message).await;
                    s2c.abort();
                }
                Some(ClientEnd::Malformed(m)) => {
                    session.client_gone.store(true, Ordering::Release);
                    shared.metrics.protocol_violations.inc();
                    info!(session = session_id, error = %m.0, "protocol violation; closing the session");
                    session.write_client_fatal("08P01", &m.0).await;
                    finish_in_flight(&session, &s2c, drain).await;
                    s2c.abort();
                }
                Some(ClientEnd::Terminated) => {
                    // The Terminate went upstream after everything the client sent: PostgreSQL
                    // answers what came before it, then closes. Those answers still reach the
                    // client (one that pipelined a query and its goodbye reads them, as it would
                    // from PostgreSQL), for as long as the drain timeout.
                    if timeout(drain, &mut s2c).await.is_err() {
                        session.client_gone.store(true, Ordering::Release);
                        finish_in_flight(&session, &s2c, drain).await;
                        s2c.abort();
                    }
                }
                Some(ClientEnd::Closed | ClientEnd::ClientWrite) | None => {
                    session.client_gone.store(true, Ordering::Release);
                    finish_in_flight(&session, &s2c, drain).await;
                    s2c.abort();
                }
            }
        }
        Ended::Server(end) => {
            c2s.abort();
            let _ = (&mut c2s).await;
            match &end {
                Some((ServerEnd::ClientWrite, _)) => {
                    session.client_gone.store(true, Ordering::Release);
                }
                Some((ServerEnd::Closed | ServerEnd::Read(_), fatal_seen)) => {
                    let fatal_seen = *fatal_seen;
                    if let Some((ServerEnd::Read(e), _)) = &end {
                        debug!(session = session_id, error = %e, "upstream read failed");
                    }
                    let terminated = session.terminated.load(Ordering::Acquire);
                    if !terminated {
                        shared.metrics.upstream_lost.inc();
                    }
                    // After the client's Terminate the server closing is the expected end.
                    if fatal_seen || terminated {
                        let _ = session.client_out.lock().await.w.shutdown().await;
                    } else {
                        session
                            .write_client_fatal(
                                "08006",
                                "strata-proxy lost the upstream connection unexpectedly",
                            )
                            .await;
                    }
                }
                Some((ServerEnd::Protocol(m), _)) => {
                    warn!(session = session_id, error = %m, "upstream protocol error");
                    session
                        .write_client_fatal("08006", &format!("strata-proxy: upstream protocol error: {m}"))
                        .await;
                }
                None => session.write_client_fatal("XX000", "strata-proxy internal error").await,
            }
        }
        Ended::Shutdown => {
            c2s.abort();
            let _ = (&mut c2s).await;
            // Whatever still runs is cancelled, as PostgreSQL's own fast shutdown would; its
            // answer (an error, or a commit that won the race) is read before the session ends.
            session.client_gone.store(true, Ordering::Release);
            finish_in_flight(&session, &s2c, Duration::ZERO).await;
            s2c.abort();
            let _ = (&mut s2c).await;
            session.write_client_fatal("57P01", "terminating connection due to strata-proxy shutdown").await;
        }
    }
    // The upstream is gone or no longer read: requests it never answered may have committed.
    abandon_in_flight(&session).await;
    let key = session.state().backend_key;
    if let Some(key) = key {
        lock(&shared.cancel_keys).remove(&key);
    }
}

/// Whether a request of the client (not the cache's own verification) is running upstream or
/// its answer is still being reported.
fn requests_in_flight(session: &Session) -> bool {
    session.completing.load(Ordering::Acquire) > 0
        || session.state().in_flight.iter().any(|e| e.verify.is_none())
}

/// After the client left: reads the answers of requests still running upstream until they are
/// all reported to the cache, the upstream ends, or `patience` passes; then cancels what still
/// runs and waits a little more for its answer.
async fn finish_in_flight(
    session: &Session,
    s2c: &tokio::task::JoinHandle<(ServerEnd, bool)>,
    patience: Duration,
) {
    if session.cache.is_none() || !requests_in_flight(session) {
        return;
    }
    if wait_in_flight(session, s2c, patience).await {
        return;
    }
    let key = session.state().backend_key;
    if let Some((pid, secret)) = key {
        let mut packet = Vec::with_capacity(16);
        packet.extend_from_slice(&16u32.to_be_bytes());
        packet.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
        packet.extend_from_slice(&pid.to_be_bytes());
        packet.extend_from_slice(&secret.to_be_bytes());
        forward_cancel(&session.shared, Bytes::from(packet)).await;
    }
    wait_in_flight(session, s2c, CANCELLED_ANSWER_WAIT).await;
}

/// How long an answer to a cancelled request is waited for.
const CANCELLED_ANSWER_WAIT: Duration = Duration::from_secs(5);

/// Waits until no request is in flight (true), or the upstream ended or `limit` passed (false).
async fn wait_in_flight(
    session: &Session,
    s2c: &tokio::task::JoinHandle<(ServerEnd, bool)>,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let done = session.request_done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if !requests_in_flight(session) {
            return true;
        }
        if s2c.is_finished() || Instant::now() >= deadline {
            return false;
        }
        // The upstream ending is noticed by the periodic check.
        let _ = tokio::time::timeout_at(deadline.min(Instant::now() + Duration::from_millis(50)), done).await;
    }
}

/// Requests the upstream never answered: each may have committed (the client's COMMIT, an
/// autocommit write), so the cache invalidates what they may have written.
async fn abandon_in_flight(session: &Session) {
    let Some(cache) = &session.cache else { return };
    let entries: Vec<InFlight> = session.state().in_flight.drain(..).collect();
    for entry in entries.into_iter().filter(|e| e.verify.is_none()) {
        cache.abandoned(entry.request.as_ref()).await;
    }
}
