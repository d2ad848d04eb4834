//! One client session: startup, the authentication relay, and the two relay directions with the
//! request grouping that feeds the caching seam.
//!
//! Client → upstream and upstream → client run as two tasks so that neither direction can block the
//! other (a pipelining client may write while the server writes). They share the session state
//! behind a short-held `std::sync::Mutex`; the client socket's write half sits behind a
//! `tokio::sync::Mutex` so that cache replays and proxy errors never interleave with a frame.

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
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
    sync::{oneshot, watch, Notify, OwnedMutexGuard},
    time::{timeout, Instant},
};
use tracing::{debug, info, warn};

use crate::{
    config::ProxyConfig,
    metrics::Metrics,
    protocol::{
        error_fields, error_response, frame, parse_message, parse_startup, Malformed, Reader, Severity,
        StartupParams, CANCEL_REQUEST, GSSENC_REQUEST, MAX_STARTUP_BYTES, SSL_REQUEST,
    },
    seam::{
        Bind, CacheMode, Dropped, ExtendedMessage, Fill, Format, Lookup, NotCacheable, PreparedStatement,
        Request, RequestCache, RequestKind, RequestSession, Response, ResponseSummary, Target,
        TransactionStatus,
    },
    session::SessionView,
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
    /// BackendKeyData of live sessions; a CancelRequest is forwarded only for these.
    pub(crate) cancel_keys: Mutex<HashSet<(u32, u32)>>,
    pub(crate) next_session_id: AtomicU64,
    pub(crate) shutdown: watch::Receiver<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a task panicked mid-update; the state is still the best we have.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves one accepted client connection to its end.
pub(crate) async fn serve_client(shared: Arc<Shared>, stream: TcpStream) {
    shared.metrics.connections.inc();
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let outcome = timeout(shared.config.startup_timeout, read_startup(&shared, &mut rd, &mut wr)).await;
    let (params, raw) = match outcome {
        Err(_) => {
            debug!("client did not complete startup in time");
            return;
        }
        Ok(Startup::Session(params, raw)) => (params, raw),
        Ok(Startup::Done) => return,
        Ok(Startup::Malformed(m)) => {
            shared.metrics.protocol_violations.inc();
            info!(error = %m.0, "protocol violation in startup");
            let _ = wr.write_all(&error_response(Severity::Fatal, "08P01", &m.0)).await;
            let _ = wr.shutdown().await;
            return;
        }
    };
    shared.metrics.sessions_active.inc();
    run_session(&shared, params, raw, rd, wr).await;
    shared.metrics.sessions_active.dec();
}

enum Startup {
    Session(StartupParams, Bytes),
    Done,
    Malformed(Malformed),
}

async fn read_startup(shared: &Shared, rd: &mut OwnedReadHalf, wr: &mut OwnedWriteHalf) -> Startup {
    loop {
        let mut len = [0u8; 4];
        if rd.read_exact(&mut len).await.is_err() {
            return Startup::Done;
        }
        let len = u32::from_be_bytes(len) as usize;
        if !(8..=MAX_STARTUP_BYTES).contains(&len) {
            return Startup::Malformed(Malformed::new("invalid length of startup packet"));
        }
        let mut packet = vec![0u8; len];
        packet[..4].copy_from_slice(&(len as u32).to_be_bytes());
        if rd.read_exact(&mut packet[4..]).await.is_err() {
            return Startup::Done;
        }
        let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                if len != 8 {
                    return Startup::Malformed(Malformed::new("invalid length of encryption request"));
                }
                // TLS and GSS encryption are not offered; the client goes on in plain text or gives up.
                if wr.write_all(b"N").await.is_err() {
                    return Startup::Done;
                }
            }
            CANCEL_REQUEST => {
                if len != 16 {
                    return Startup::Malformed(Malformed::new("invalid length of cancel request"));
                }
                forward_cancel(shared, Bytes::from(packet)).await;
                return Startup::Done;
            }
            version if version >> 16 == 3 => {
                return match parse_startup(version, &packet[8..]) {
                    Ok(params) => Startup::Session(params, Bytes::from(packet)),
                    Err(m) => Startup::Malformed(m),
                };
            }
            version => {
                return Startup::Malformed(Malformed(format!(
                    "unsupported frontend protocol {}.{}",
                    version >> 16,
                    version & 0xffff
                )));
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
    shared.metrics.cancel_requests.inc();
    let upstream = &shared.config.upstream;
    match timeout(shared.config.connect_timeout, TcpStream::connect((upstream.host(), upstream.port()))).await
    {
        Ok(Ok(mut s)) => {
            if let Err(e) = s.write_all(&packet).await {
                warn!(error = %e, "cannot forward cancel request");
            }
            // The server closes the connection once it has read the request.
            let mut sink = [0u8; 16];
            let _ = timeout(shared.config.connect_timeout, s.read(&mut sink)).await;
        }
        Ok(Err(e)) => warn!(error = %e, "cannot connect upstream to forward a cancel request"),
        Err(_) => warn!("timeout connecting upstream to forward a cancel request"),
    }
}

/// The client socket's write half and whether a frame is half written.
struct ClientOut {
    w: OwnedWriteHalf,
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
    recording: Option<BytesMut>,
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
}

impl InFlight {
    fn mark(&mut self, reason: NotCacheable) {
        self.not_cacheable.get_or_insert(reason);
    }

    fn record(&mut self, bytes: &[u8], max: usize) {
        self.response_bytes += bytes.len() as u64;
        if let Some(rec) = &mut self.recording {
            if rec.len() + bytes.len() > max {
                self.recording = None;
                self.mark(NotCacheable::TooLarge);
            } else {
                rec.extend_from_slice(bytes);
            }
        }
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
}

impl Session {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    async fn write_client_fatal(&self, code: &str, message: &str) {
        let mut out = self.client_out.lock().await;
        if !out.mid_frame {
            let _ = out.w.write_all(&error_response(Severity::Fatal, code, message)).await;
        }
        let _ = out.w.shutdown().await;
    }
}

enum ClientEnd {
    Closed,
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
    client_rd: OwnedReadHalf,
    mut client_wr: OwnedWriteHalf,
) {
    let upstream = &shared.config.upstream;
    let connect =
        timeout(shared.config.connect_timeout, TcpStream::connect((upstream.host(), upstream.port())));
    let mut up = match connect.await {
        Ok(Ok(s)) => s,
        failure => {
            let why = match failure {
                Ok(Err(e)) => e.to_string(),
                _ => "timeout".to_owned(),
            };
            shared.metrics.upstream_connect_errors.inc();
            warn!(upstream = %upstream, error = %why, "cannot connect to upstream");
            let msg = format!("strata-proxy could not connect to upstream server {upstream}: {why}");
            let _ = client_wr.write_all(&error_response(Severity::Fatal, "08001", &msg)).await;
            let _ = client_wr.shutdown().await;
            return;
        }
    };
    let _ = up.set_nodelay(true);
    if let Err(e) = up.write_all(&raw_startup).await {
        shared.metrics.upstream_lost.inc();
        let msg = format!("strata-proxy lost the upstream connection during startup: {e}");
        let _ = client_wr.write_all(&error_response(Severity::Fatal, "08006", &msg)).await;
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
    });
    let active = session.cache.is_some();
    let client_side = ClientSide {
        session: session.clone(),
        rd: client_rd,
        up: up_wr,
        buf: BytesMut::with_capacity(16 * 1024),
        out: BytesMut::with_capacity(16 * 1024),
        active,
        statements: HashMap::new(),
        upstream_statements: HashMap::new(),
        portals: HashMap::new(),
        open: None,
        orphans: Vec::new(),
        ready: false,
    };
    let server_side = ServerSide {
        session: session.clone(),
        rd: up_rd,
        buf: BytesMut::with_capacity(64 * 1024),
        out: BytesMut::with_capacity(64 * 1024),
        active,
        fatal_seen: false,
        stream_left: 0,
    };
    let mut c2s = tokio::spawn(client_side.run());
    let mut s2c = tokio::spawn(server_side.run());

    let mut shutdown = shared.shutdown.clone();
    let mut deadline: Option<Instant> =
        (*shutdown.borrow()).then(|| Instant::now() + shared.config.shutdown_grace);
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
            changed = shutdown.changed(), if deadline.is_none() => {
                if changed.is_err() || *shutdown.borrow() {
                    deadline = Some(Instant::now() + shared.config.shutdown_grace);
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
                Some(ClientEnd::Malformed(m)) => {
                    s2c.abort();
                    let _ = (&mut s2c).await;
                    shared.metrics.protocol_violations.inc();
                    info!(session = session_id, error = %m.0, "protocol violation; closing the session");
                    session.write_client_fatal("08P01", &m.0).await;
                }
                Some(ClientEnd::Closed | ClientEnd::Terminated | ClientEnd::ClientWrite) | None => {
                    s2c.abort();
                }
            }
        }
        Ended::Server(end) => {
            c2s.abort();
            let _ = (&mut c2s).await;
            match &end {
                Some((ServerEnd::ClientWrite, _)) => {}
                Some((ServerEnd::Closed | ServerEnd::Read(_), fatal_seen)) => {
                    let fatal_seen = *fatal_seen;
                    if let Some((ServerEnd::Read(e), _)) = &end {
                        debug!(session = session_id, error = %e, "upstream read failed");
                    }
                    shared.metrics.upstream_lost.inc();
                    if fatal_seen {
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
            s2c.abort();
            let _ = (&mut c2s).await;
            let _ = (&mut s2c).await;
            session.write_client_fatal("57P01", "terminating connection due to strata-proxy shutdown").await;
        }
    }
    let key = session.state().backend_key;
    if let Some(key) = key {
        lock(&shared.cancel_keys).remove(&key);
    }
}

/// An extended-protocol batch being received (up to Sync).
#[derive(Default)]
struct OpenBatch {
    messages: Vec<ExtendedMessage>,
    /// Frames held back for a lookup, with the statement each uses and whether a Parse is fresh.
    held: Vec<(Bytes, Option<Arc<PreparedStatement>>, bool)>,
    held_bytes: usize,
    /// A Parse reused an existing name (the server will refuse it).
    duplicate_parse: bool,
    /// An InFlight entry exists and frames go upstream as they arrive.
    forwarding: bool,
    parse_sent: u64,
    close_sent: u64,
    /// Prepared statements the batch's executed statements drop (`DEALLOCATE`, `DISCARD ALL`).
    dropped: Vec<Dropped>,
    wire: BytesMut,
}

/// An extended batch held through its Sync, to be looked up.
struct HeldBatch(OpenBatch);

/// What [`ClientSide::on_frame_now`] leaves to the async path.
enum Now {
    Done(Flow),
    Query(Bytes),
    Lookup(HeldBatch),
}

/// Initial capacity of a batch's copy of its client bytes.
const WIRE_START_BYTES: usize = 256;

struct ClientSide {
    session: Arc<Session>,
    rd: OwnedReadHalf,
    up: OwnedWriteHalf,
    buf: BytesMut,
    out: BytesMut,
    active: bool,
    /// Prepared statements as the client sees them.
    statements: HashMap<String, Arc<PreparedStatement>>,
    /// Prepared statements as the upstream server has them (differ after cache replays).
    upstream_statements: HashMap<String, Arc<PreparedStatement>>,
    portals: HashMap<String, Option<Arc<PreparedStatement>>>,
    open: Option<OpenBatch>,
    /// Statements the client closed in replayed batches that the server still has; closed
    /// upstream at the start of the next forwarded extended batch.
    orphans: Vec<String>,
    /// Cached once the server's first ReadyForQuery has been seen.
    ready: bool,
}

enum Flow {
    Continue,
    Terminate,
}

impl ClientSide {
    async fn run(mut self) -> ClientEnd {
        match self.pump().await {
            Ok(end) => end,
            Err(end) => {
                if matches!(end, ClientEnd::Malformed(_)) {
                    // Tell the server we are leaving rather than dropping the socket mid-protocol.
                    let _ = self.up.write_all(&frame(b'X', &[])).await;
                }
                end
            }
        }
    }

    async fn pump(&mut self) -> Result<ClientEnd, ClientEnd> {
        let max = self.session.shared.config.max_message_bytes;
        loop {
            while let Some((tag, msg)) =
                next_client_frame(&mut self.buf, max).map_err(ClientEnd::Malformed)?
            {
                // Extended-protocol messages other than a held batch's Sync need no await: keep
                // them out of the async path, whose future is large to build for every frame.
                let flow = match self.on_frame_now(tag, msg)? {
                    Now::Done(flow) => flow,
                    Now::Query(msg) => {
                        self.on_query(msg).await?;
                        Flow::Continue
                    }
                    Now::Lookup(held) => {
                        self.finish_held(held).await?;
                        Flow::Continue
                    }
                };
                if let Flow::Terminate = flow {
                    self.flush_upstream().await?;
                    return Ok(ClientEnd::Terminated);
                }
            }
            self.flush_upstream().await?;
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            match self.rd.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Ok(ClientEnd::Closed),
                Ok(_) => {}
            }
        }
    }

    async fn flush_upstream(&mut self) -> Result<(), ClientEnd> {
        if !self.out.is_empty() {
            self.session.shared.metrics.bytes_to_upstream.inc_by(self.out.len() as u64);
            self.up.write_all(&self.out).await.map_err(ClientEnd::UpstreamWrite)?;
            self.out.clear();
        }
        Ok(())
    }

    fn set_busy(&self) {
        self.session.idle.store(false, Ordering::Release);
    }

    /// Handles a frame without awaiting, or says what remains to be done that awaits.
    fn on_frame_now(&mut self, tag: u8, msg: Bytes) -> Result<Now, ClientEnd> {
        if !self.ready {
            self.ready = self.session.state().ready;
        }
        if !self.ready {
            // Authentication messages (and anything before the first ReadyForQuery) pass unchanged.
            self.out.extend_from_slice(&msg);
            return Ok(Now::Done(Flow::Continue));
        }
        match tag {
            b'Q' => return Ok(Now::Query(msg)),
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'S' => {
                if let Some(held) = self.on_extended(tag, msg)? {
                    return Ok(Now::Lookup(held));
                }
            }
            b'F' => {
                self.release_open();
                self.session.shared.metrics.requests_function.inc();
                self.push_closed(Request::new(RequestKind::FunctionCall, msg.clone()), None);
                self.out.extend_from_slice(&msg);
            }
            b'X' => {
                self.release_open();
                self.out.extend_from_slice(&msg);
                return Ok(Now::Done(Flow::Terminate));
            }
            _ => {
                // CopyData, CopyDone, CopyFail and anything else belong to the request in flight.
                self.release_open();
                self.out.extend_from_slice(&msg);
            }
        }
        Ok(Now::Done(Flow::Continue))
    }

    async fn on_query(&mut self, msg: Bytes) -> Result<(), ClientEnd> {
        let sql = Reader::new(&msg[5..], "Query").cstr().map_err(ClientEnd::Malformed)?;
        self.session.shared.metrics.requests_simple.inc();
        let dropped = self.dropped(&sql);
        apply_dropped(&dropped, &mut self.statements);
        // A simple Query destroys the unnamed statement.
        self.statements.remove("");
        let request = self.active.then(|| Request::new(RequestKind::Simple { sql }, msg.clone()));
        if self.open.is_some() {
            // A Query inside an unfinished extended batch: the server answers both with one
            // ReadyForQuery, so they form one request that is never replayed.
            self.release_open();
            self.open = None;
            let mut st = self.session.state();
            if let Some(entry) = st.in_flight.back_mut() {
                entry.request = request.map(|mut r| {
                    r.replayable = false;
                    r
                });
            }
        } else {
            let mut fill = None;
            if let Some(request) = &request {
                match self.lookup(request).await? {
                    Some(Lookup::Hit(bytes)) => return self.replay(bytes).await,
                    Some(Lookup::Miss(f)) => fill = Some(f),
                    Some(Lookup::Bypass | Lookup::Verify(_)) | None => {}
                }
            }
            self.push_closed_opt(request, fill);
        }
        apply_dropped(&dropped, &mut self.upstream_statements);
        self.upstream_statements.remove("");
        self.out.extend_from_slice(&msg);
        Ok(())
    }

    /// Which prepared statements a text drops, by the cache's reading of it (the proxy reads no
    /// SQL); without a cache nothing is replayed, so the maps need no care.
    fn dropped(&self, sql: &str) -> Dropped {
        match &self.session.cache {
            Some(cache) => cache.drops_statements(sql),
            None => Dropped::Nothing,
        }
    }

    /// Whether nothing stands between a lookup and the server: nothing in flight, every response
    /// written, idle outside a transaction.
    fn lookup_eligible(&self) -> bool {
        let st = self.session.state();
        st.in_flight.is_empty()
            && !st.response_unwritten
            && st.view.transaction_status() == TransactionStatus::Idle
    }

    /// Asks the cache when the request may be answered from it; `None` when not eligible. When
    /// the cache first needs the session's state, reads it on the session's own connection.
    async fn lookup(&mut self, request: &Request) -> Result<Option<Lookup>, ClientEnd> {
        if !request.is_replayable() {
            return Ok(None);
        }
        if !self.lookup_eligible() {
            // The client may send its next request as soon as it read the last answer, before
            // the task writing that answer has marked it written: wait for that, briefly.
            let written = self.session.response_written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            let only_unwritten = {
                let st = self.session.state();
                st.response_unwritten
                    && st.in_flight.is_empty()
                    && st.view.transaction_status() == TransactionStatus::Idle
            };
            if !only_unwritten {
                return Ok(None);
            }
            let _ = timeout(Duration::from_millis(20), written).await;
            if !self.lookup_eligible() {
                return Ok(None);
            }
        }
        let session = self.session.clone();
        let Some(cache) = session.cache.as_deref() else { return Ok(None) };
        // Anything already decoded goes out first so the cache's latency never delays it.
        self.flush_upstream().await?;
        // A verification can learn of names it must read as well (role defaults, function
        // bodies): a few rounds at most, then the request goes upstream uncached.
        for _ in 0..3 {
            match cache.lookup(request).await {
                Lookup::Verify(sql) => {
                    let answer = self.verify(&sql).await?;
                    cache.verified(answer.as_deref().map_err(String::as_str));
                    if !self.lookup_eligible() {
                        return Ok(None);
                    }
                }
                found => return Ok(Some(found)),
            }
        }
        Ok(None)
    }

    /// Runs the cache's verification query on the session's connection, hiding its answer from
    /// the client (the session is idle: the query is its own implicit transaction and leaves the
    /// transaction status as it was).
    async fn verify(&mut self, sql: &str) -> Result<VerifyAnswer, ClientEnd> {
        let (tx, rx) = oneshot::channel();
        self.set_busy();
        self.session.state().in_flight.push_back(InFlight { verify: Some(tx), ..InFlight::default() });
        let mut body = Vec::with_capacity(sql.len() + 1);
        body.extend_from_slice(sql.as_bytes());
        body.push(0);
        self.out.extend_from_slice(&frame(b'Q', &body));
        self.flush_upstream().await?;
        // A simple Query destroys the server's unnamed statement; it is prepared again if used.
        self.upstream_statements.remove("");
        Ok(match timeout(self.session.shared.config.connect_timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("the upstream connection ended".to_owned()),
            Err(_) => Err("timed out".to_owned()),
        })
    }

    async fn replay(&mut self, bytes: Bytes) -> Result<(), ClientEnd> {
        self.session.shared.metrics.replays.inc();
        self.session.shared.metrics.bytes_to_client.inc_by(bytes.len() as u64);
        let mut out = self.session.client_out.lock().await;
        out.w.write_all(&bytes).await.map_err(|_| ClientEnd::ClientWrite)
    }

    fn push_closed(&mut self, request: Request, fill: Option<Fill>) {
        self.push_closed_opt(self.active.then_some(request), fill);
    }

    fn push_closed_opt(&mut self, request: Option<Request>, fill: Option<Fill>) {
        self.set_busy();
        let mut st = self.session.state();
        let recording = fill.as_ref().map(|_| BytesMut::new());
        st.in_flight.push_back(InFlight { request, fill, recording, ..InFlight::default() });
    }

    /// Sends a held batch upstream now (a Flush, a non-extended message, or too much held).
    fn release_open(&mut self) {
        let Some(mut open) = self.open.take() else { return };
        if !open.forwarding {
            open.forwarding = true;
            self.set_busy();
            self.session.state().in_flight.push_back(InFlight::default());
            self.close_orphans(&mut open);
            for (msg, stmt, fresh) in std::mem::take(&mut open.held) {
                self.forward_extended(&mut open, msg, stmt, fresh);
            }
            open.held_bytes = 0;
        }
        self.open = Some(open);
    }

    /// Decodes and forwards (or holds) one extended message; at the Sync of a held batch, returns
    /// it for [`ClientSide::finish_held`].
    fn on_extended(&mut self, tag: u8, msg: Bytes) -> Result<Option<HeldBatch>, ClientEnd> {
        let mut open = self.open.take().unwrap_or_default();
        let (decoded, fresh) = self.decode_extended(tag, &msg, &mut open).map_err(ClientEnd::Malformed)?;
        let stmt = match &decoded {
            ExtendedMessage::Parse(s) => Some(s.clone()),
            ExtendedMessage::Bind(b) => b.statement.clone(),
            ExtendedMessage::Describe(Target::Statement(_, s)) => s.clone(),
            _ => None,
        };
        let is_sync = matches!(decoded, ExtendedMessage::Sync);
        let is_flush = matches!(decoded, ExtendedMessage::Flush);
        if self.active {
            if open.wire.capacity() == 0 {
                // One allocation for a typical batch instead of regrowing per message.
                open.wire.reserve(msg.len().max(WIRE_START_BYTES));
            }
            open.wire.extend_from_slice(&msg);
            open.messages.push(decoded);
        } else {
            open.messages.clear();
        }
        if open.forwarding || !self.active {
            if !open.forwarding {
                self.open = Some(open);
                self.release_open();
                open = self.open.take().unwrap_or_default();
            }
            self.forward_extended(&mut open, msg, stmt, fresh);
            if is_sync {
                self.session.shared.metrics.requests_extended.inc();
                let request = self.active.then(|| {
                    Request::new(RequestKind::Extended { messages: open.messages }, open.wire.freeze())
                });
                let mut st = self.session.state();
                if let Some(entry) = st.in_flight.back_mut() {
                    entry.request = request.map(|mut r| {
                        r.replayable = false;
                        r
                    });
                }
            } else {
                self.open = Some(open);
            }
            return Ok(None);
        }
        // Holding for a lookup at Sync.
        open.held_bytes += msg.len();
        open.held.push((msg, stmt, fresh));
        if !is_sync {
            self.open = Some(open);
            if is_flush || self.open.as_ref().is_some_and(|o| o.held_bytes > MAX_HELD_BYTES) {
                self.release_open();
            }
            return Ok(None);
        }
        Ok(Some(HeldBatch(open)))
    }

    /// Looks a held batch up at its Sync: replays a hit, else sends the batch upstream.
    async fn finish_held(&mut self, held: HeldBatch) -> Result<(), ClientEnd> {
        let HeldBatch(mut open) = held;
        self.session.shared.metrics.requests_extended.inc();
        let request = Request::new(
            RequestKind::Extended { messages: std::mem::take(&mut open.messages) },
            std::mem::take(&mut open.wire).freeze(),
        );
        let request = if !open.duplicate_parse { request } else { Request { replayable: false, ..request } };
        let mut fill = None;
        match self.lookup(&request).await? {
            Some(Lookup::Hit(bytes)) => {
                if let RequestKind::Extended { messages } = request.kind() {
                    for m in messages {
                        if let ExtendedMessage::Close(Target::Statement(name, _)) = m {
                            if self.upstream_statements.remove(name).is_some() && !name.is_empty() {
                                self.orphans.push(name.clone());
                            }
                        }
                    }
                }
                return self.replay(bytes).await;
            }
            Some(Lookup::Miss(f)) => fill = Some(f),
            Some(Lookup::Bypass | Lookup::Verify(_)) | None => {}
        }
        self.push_closed_opt(Some(request), fill);
        self.close_orphans(&mut open);
        for (msg, stmt, fresh) in std::mem::take(&mut open.held) {
            self.forward_extended(&mut open, msg, stmt, fresh);
        }
        Ok(())
    }

    fn close_orphans(&mut self, open: &mut OpenBatch) {
        if self.orphans.is_empty() {
            return;
        }
        let mut drops = Vec::new();
        for name in std::mem::take(&mut self.orphans) {
            if self.upstream_statements.contains_key(&name) {
                continue;
            }
            self.out.extend_from_slice(&close_statement(&name));
            open.close_sent += 1;
            drops.push(open.close_sent);
        }
        let mut st = self.session.state();
        if let Some(entry) = st.in_flight.back_mut() {
            entry.drop_close.extend(drops);
        }
    }

    /// Decodes an extended-protocol message and updates the client's view of statements/portals.
    fn decode_extended(
        &mut self,
        tag: u8,
        msg: &[u8],
        open: &mut OpenBatch,
    ) -> Result<(ExtendedMessage, bool), Malformed> {
        let body = &msg[5..];
        let mut fresh = false;
        let decoded = match tag {
            b'P' => {
                let mut r = Reader::new(body, "Parse");
                let name = r.cstr()?;
                let sql = r.cstr()?;
                let n = r.count()?;
                let mut types = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    types.push(r.u32()?);
                }
                let stmt = Arc::new(PreparedStatement::new(name.clone(), Arc::from(sql), types));
                if !name.is_empty() && self.statements.contains_key(&name) {
                    open.duplicate_parse = true;
                } else {
                    fresh = true;
                    self.statements.insert(name, stmt.clone());
                }
                ExtendedMessage::Parse(stmt)
            }
            b'B' => {
                let mut r = Reader::new(body, "Bind");
                let portal = r.cstr()?;
                let statement_name = r.cstr()?;
                let param_formats = read_formats(&mut r)?;
                let n = r.count()?;
                let mut params = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let len = r.i32()?;
                    if len < 0 {
                        params.push(None);
                    } else {
                        let value = r.take(len as usize)?;
                        // Parameter values are only kept when a cache may key on them.
                        params.push(Some(if self.active {
                            Bytes::copy_from_slice(value)
                        } else {
                            Bytes::new()
                        }));
                    }
                }
                let result_formats = read_formats(&mut r)?;
                let statement = self.statements.get(&statement_name).cloned();
                self.portals.insert(portal.clone(), statement.clone());
                ExtendedMessage::Bind(Bind {
                    portal,
                    statement_name,
                    statement,
                    param_formats,
                    params,
                    result_formats,
                })
            }
            b'D' | b'C' => {
                let mut r = Reader::new(body, if tag == b'D' { "Describe" } else { "Close" });
                let kind = r.u8()?;
                let name = r.cstr()?;
                let target = match kind {
                    b'S' => {
                        let stmt = self.statements.get(&name).cloned();
                        if tag == b'C' {
                            self.statements.remove(&name);
                        }
                        Target::Statement(name, stmt)
                    }
                    b'P' => {
                        if tag == b'C' {
                            self.portals.remove(&name);
                        }
                        Target::Portal(name)
                    }
                    _ => return Err(Malformed::new("invalid DESCRIBE/CLOSE message subtype")),
                };
                if tag == b'D' {
                    ExtendedMessage::Describe(target)
                } else {
                    ExtendedMessage::Close(target)
                }
            }
            b'E' => {
                let mut r = Reader::new(body, "Execute");
                let portal = r.cstr()?;
                let max_rows = r.u32()?;
                let statement = self.portals.get(&portal).cloned().flatten();
                if let Some(s) = &statement {
                    let dropped = self.dropped(s.sql());
                    if dropped != Dropped::Nothing {
                        apply_dropped(&dropped, &mut self.statements);
                        open.dropped.push(dropped);
                    }
                }
                ExtendedMessage::Execute { portal, max_rows, statement }
            }
            b'H' => ExtendedMessage::Flush,
            _ => ExtendedMessage::Sync,
        };
        Ok((decoded, fresh))
    }

    /// Writes one extended message upstream, first preparing there any statement it uses that the
    /// server does not have (because the client prepared it in a batch answered from cache).
    fn forward_extended(
        &mut self,
        open: &mut OpenBatch,
        msg: Bytes,
        stmt: Option<Arc<PreparedStatement>>,
        fresh_parse: bool,
    ) {
        let tag = msg[0];
        let mut drop_parse = Vec::new();
        let mut drop_close = Vec::new();
        match tag {
            b'P' => {
                if let (true, Some(stmt)) = (fresh_parse, stmt) {
                    let name = stmt.name().to_owned();
                    if !name.is_empty() && self.upstream_statements.contains_key(&name) {
                        // The client closed it in a replayed batch; the server still has it.
                        self.out.extend_from_slice(&close_statement(&name));
                        open.close_sent += 1;
                        drop_close.push(open.close_sent);
                    }
                    self.upstream_statements.insert(name, stmt);
                }
                open.parse_sent += 1;
            }
            b'B' | b'D' => {
                if let Some(stmt) = stmt {
                    let name = stmt.name();
                    let on_server = self.upstream_statements.get(name);
                    if !on_server.is_some_and(|s| Arc::ptr_eq(s, &stmt)) {
                        if !name.is_empty() && on_server.is_some() {
                            self.out.extend_from_slice(&close_statement(name));
                            open.close_sent += 1;
                            drop_close.push(open.close_sent);
                        }
                        self.out.extend_from_slice(&parse_message(name, stmt.sql(), stmt.param_types()));
                        open.parse_sent += 1;
                        drop_parse.push(open.parse_sent);
                        self.upstream_statements.insert(name.to_owned(), stmt);
                    }
                }
            }
            b'C' => {
                let mut r = Reader::new(&msg[5..], "Close");
                if let (Ok(b'S'), Ok(name)) = (r.u8(), r.cstr()) {
                    self.upstream_statements.remove(&name);
                }
                open.close_sent += 1;
            }
            b'E' => {
                for dropped in &open.dropped {
                    apply_dropped(dropped, &mut self.upstream_statements);
                }
            }
            _ => {}
        }
        if !drop_parse.is_empty() || !drop_close.is_empty() {
            let mut st = self.session.state();
            if let Some(entry) = st.in_flight.back_mut() {
                entry.drop_parse.extend(drop_parse);
                entry.drop_close.extend(drop_close);
            }
        }
        self.out.extend_from_slice(&msg);
    }
}

fn close_statement(name: &str) -> Bytes {
    let mut body = Vec::with_capacity(name.len() + 2);
    body.push(b'S');
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    frame(b'C', &body)
}

fn read_formats(r: &mut Reader<'_>) -> Result<Vec<Format>, Malformed> {
    let n = r.count()?;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        out.push(Format::from_code(r.i16()?).ok_or_else(|| Malformed::new("invalid format code"))?);
    }
    Ok(out)
}

/// SQL-level statements that drop protocol-level prepared statements.
fn apply_dropped(dropped: &Dropped, statements: &mut HashMap<String, Arc<PreparedStatement>>) {
    match dropped {
        Dropped::Nothing => {}
        Dropped::All => statements.clear(),
        Dropped::Named(names) => {
            for name in names {
                statements.remove(name);
            }
        }
    }
}

/// Splits the next complete client message off `buf`; `Ok(None)` when more bytes are needed.
fn next_client_frame(buf: &mut BytesMut, max: usize) -> Result<Option<(u8, Bytes)>, Malformed> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(Malformed(format!("invalid message length {len}")));
    }
    if len > max {
        return Err(Malformed(format!("message of {len} bytes exceeds the limit of {max} bytes")));
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    Ok(Some((tag, buf.split_to(len + 1).freeze())))
}

struct ServerSide {
    session: Arc<Session>,
    rd: OwnedReadHalf,
    buf: BytesMut,
    out: BytesMut,
    active: bool,
    fatal_seen: bool,
    /// Bytes left of a large frame being streamed through.
    stream_left: usize,
}

impl ServerSide {
    async fn run(mut self) -> (ServerEnd, bool) {
        let end = self.pump().await;
        (end, self.fatal_seen)
    }

    async fn pump(&mut self) -> ServerEnd {
        let mut guard: Option<OwnedMutexGuard<ClientOut>> = None;
        let max_result = self.session.shared.config.max_result_bytes;
        loop {
            // Complete messages at the front of `buf` that go to the client unchanged: they are
            // written straight from `buf` rather than split off and copied one by one.
            let mut fwd = 0;
            loop {
                if self.stream_left > 0 {
                    if fwd > 0 {
                        self.out.extend_from_slice(&self.buf[..fwd]);
                        self.buf.advance(fwd);
                        fwd = 0;
                    }
                    if self.buf.is_empty() {
                        break;
                    }
                    let n = self.stream_left.min(self.buf.len());
                    let chunk = self.buf.split_to(n);
                    if let Some(e) = self.session.state().in_flight.front_mut() {
                        e.record(&chunk, max_result);
                    }
                    self.out.extend_from_slice(&chunk);
                    self.stream_left -= n;
                    continue;
                }
                let rest = &self.buf[fwd..];
                if rest.len() < 5 {
                    break;
                }
                let tag = rest[0];
                let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                if len < 4 {
                    return ServerEnd::Protocol(format!("invalid message length {len}"));
                }
                let total = len + 1;
                if rest.len() >= total {
                    let mut completed = None;
                    let forward = on_message(
                        &self.session,
                        &mut self.fatal_seen,
                        tag,
                        &rest[..total],
                        max_result,
                        &mut completed,
                    );
                    if let Some((entry, status)) = completed {
                        if self.active {
                            // Reported before this ReadyForQuery is written to the client below.
                            self.complete(entry, status).await;
                        }
                    }
                    if forward {
                        fwd += total;
                    } else {
                        self.out.extend_from_slice(&self.buf[..fwd]);
                        self.buf.advance(fwd + total);
                        fwd = 0;
                    }
                    continue;
                }
                if total >= STREAM_THRESHOLD
                    && !matches!(tag, b'Z' | b'C' | b'E' | b'N' | b'S' | b'K' | b'1' | b'3')
                    && self.session.state().in_flight.front().is_none_or(|e| e.verify.is_none())
                {
                    if let Some(e) = self.session.state().in_flight.front_mut() {
                        match tag {
                            b'D' => e.rows += 1,
                            b'A' => e.mark(NotCacheable::Notification),
                            b'G' | b'H' | b'W' | b'd' => e.mark(NotCacheable::Copy),
                            _ => {}
                        }
                    }
                    self.stream_left = total;
                    continue;
                }
                self.buf.reserve(total - rest.len());
                break;
            }
            if fwd > 0 || !self.out.is_empty() {
                let mut g = match guard.take() {
                    Some(g) => g,
                    None => self.session.client_out.clone().lock_owned().await,
                };
                let written = if self.out.is_empty() {
                    self.session.shared.metrics.bytes_to_client.inc_by(fwd as u64);
                    g.w.write_all(&self.buf[..fwd]).await
                } else {
                    self.out.extend_from_slice(&self.buf[..fwd]);
                    self.session.shared.metrics.bytes_to_client.inc_by(self.out.len() as u64);
                    g.w.write_all(&self.out).await
                };
                if written.is_err() {
                    return ServerEnd::ClientWrite;
                }
                self.buf.advance(fwd);
                self.out.clear();
                if self.active {
                    self.session.state().response_unwritten = false;
                    self.session.response_written.notify_waiters();
                }
                g.mid_frame = self.stream_left > 0;
                if g.mid_frame {
                    // Keep the writer until the frame is complete so nothing can interleave.
                    guard = Some(g);
                }
            }
            if self.buf.capacity() - self.buf.len() < 8192 {
                self.buf.reserve(64 * 1024);
            }
            match self.rd.read_buf(&mut self.buf).await {
                Ok(0) => return ServerEnd::Closed,
                Ok(_) => {}
                Err(e) => return ServerEnd::Read(e),
            }
        }
    }

    async fn complete(&self, mut entry: InFlight, status: TransactionStatus) {
        let (Some(request), Some(cache)) = (entry.request.take(), self.session.cache.as_deref()) else {
            return;
        };
        let mut not_cacheable = entry.not_cacheable;
        if not_cacheable.is_none() && status != TransactionStatus::Idle {
            not_cacheable = Some(NotCacheable::InTransaction);
        }
        if not_cacheable.is_none() && (entry.recording.is_none() || !request.is_replayable()) {
            not_cacheable = Some(NotCacheable::NotRecorded);
        }
        let response = Response {
            summary: ResponseSummary {
                command_tags: entry.tags,
                error_code: entry.error_code,
                not_cacheable,
                transaction_status: status,
                rows: entry.rows,
                response_bytes: entry.response_bytes,
            },
            bytes: entry.recording.map(BytesMut::freeze),
        };
        cache.complete(&request, &response, entry.fill).await;
    }
}

/// Tracks one complete server message and says whether it goes to the client; for the
/// ReadyForQuery ending a request, puts the finished request in `completed` (an out parameter,
/// so the large entry is not copied through a return value for every message).
fn on_message(
    session: &Session,
    fatal_seen: &mut bool,
    tag: u8,
    msg: &[u8],
    max_result: usize,
    completed: &mut Option<(InFlight, TransactionStatus)>,
) -> bool {
    let body = &msg[5..];
    let mut forward = true;
    {
        let mut st = session.state();
        let st = &mut *st;
        if st.ready && st.in_flight.front().is_some_and(|e| e.verify.is_some()) {
            return on_verify_message(st, fatal_seen, tag, msg);
        }
        match tag {
            b'Z' => {
                let status = body.first().copied().and_then(TransactionStatus::from_byte);
                if !st.ready {
                    st.ready = true;
                } else if let Some(mut entry) = st.in_flight.pop_front() {
                    st.response_unwritten = true;
                    entry.record(msg, max_result);
                    let status = status.unwrap_or(TransactionStatus::Failed);
                    *completed = Some((entry, status));
                }
                if let Some(status) = status {
                    st.view.set_transaction_status(status);
                }
                let idle = st.in_flight.is_empty() && status == Some(TransactionStatus::Idle);
                if idle {
                    if !session.idle.swap(true, Ordering::AcqRel) {
                        session.became_idle.notify_one();
                    }
                } else {
                    session.idle.store(false, Ordering::Release);
                }
            }
            b'S' => {
                let mut r = Reader::new(body, "ParameterStatus");
                if let (Ok(name), Ok(value)) = (r.cstr(), r.cstr()) {
                    st.view.set_server_parameter(name, value);
                }
                if st.ready {
                    if let Some(cache) = &session.cache {
                        cache.parameter_changed();
                    }
                }
                if let Some(e) = st.in_flight.front_mut() {
                    e.mark(NotCacheable::ParameterChange);
                }
            }
            b'K' => {
                let mut r = Reader::new(body, "BackendKeyData");
                if let (Ok(pid), Ok(secret)) = (r.u32(), r.u32()) {
                    if let Some(old) = st.backend_key.replace((pid, secret)) {
                        lock(&session.shared.cancel_keys).remove(&old);
                    }
                    lock(&session.shared.cancel_keys).insert((pid, secret));
                }
            }
            b'E' => {
                let (code, severity) = error_fields(body);
                if matches!(severity.as_deref(), Some("FATAL" | "PANIC")) {
                    *fatal_seen = true;
                }
                if let Some(e) = st.in_flight.front_mut() {
                    e.mark(NotCacheable::Error);
                    if e.error_code.is_none() {
                        e.error_code = code;
                    }
                }
            }
            _ => {
                if let Some(e) = st.in_flight.front_mut() {
                    match tag {
                        b'C' => {
                            let tag_text = Reader::new(body, "CommandComplete").cstr().unwrap_or_default();
                            e.tags.push(tag_text);
                        }
                        b'D' => e.rows += 1,
                        b'N' => e.mark(NotCacheable::Notice),
                        b'A' => e.mark(NotCacheable::Notification),
                        b'G' | b'H' | b'W' | b'd' | b'c' => e.mark(NotCacheable::Copy),
                        b's' => e.mark(NotCacheable::PortalSuspended),
                        b'1' => {
                            e.parse_seen += 1;
                            forward = !e.drop_parse.contains(&e.parse_seen);
                        }
                        b'3' => {
                            e.close_seen += 1;
                            forward = !e.drop_close.contains(&e.close_seen);
                        }
                        b'2' | b'T' | b'n' | b't' | b'I' => {}
                        _ => e.mark(NotCacheable::Unexpected),
                    }
                }
            }
        }
        if forward && tag != b'Z' {
            if let Some(e) = st.in_flight.front_mut() {
                e.record(msg, max_result);
            }
        }
    }
    forward
}

/// A message answering the cache's verification query: kept from the client, except what is
/// the client's whatever it answers (an asynchronous notification or parameter report, a fatal
/// error before the server closes).
fn on_verify_message(st: &mut State, fatal_seen: &mut bool, tag: u8, msg: &[u8]) -> bool {
    let body = &msg[5..];
    let Some(entry) = st.in_flight.front_mut() else { return true };
    match tag {
        b'D' => match data_row(body) {
            Some(row) => entry.verify_rows.push(row),
            None => {
                entry.verify_error.get_or_insert_with(|| "malformed DataRow".to_owned());
            }
        },
        b'E' => {
            let (code, severity) = error_fields(body);
            let fatal = matches!(severity.as_deref(), Some("FATAL" | "PANIC"));
            entry.verify_error.get_or_insert_with(|| format!("error {}", code.unwrap_or_default()));
            if fatal {
                *fatal_seen = true;
                return true;
            }
        }
        b'Z' => {
            if let Some(mut entry) = st.in_flight.pop_front() {
                let answer = match entry.verify_error.take() {
                    Some(why) => Err(why),
                    None => Ok(std::mem::take(&mut entry.verify_rows)),
                };
                if let Some(tx) = entry.verify.take() {
                    let _ = tx.send(answer);
                }
            }
            if let Some(status) = body.first().copied().and_then(TransactionStatus::from_byte) {
                st.view.set_transaction_status(status);
            }
        }
        b'A' | b'S' => return true,
        _ => {}
    }
    false
}

/// The column values of a DataRow body (`None` for NULL).
fn data_row(body: &[u8]) -> Option<Vec<Option<Bytes>>> {
    let mut r = Reader::new(body, "DataRow");
    let n = r.i16().ok()?;
    let mut row = Vec::with_capacity(usize::try_from(n).ok()?.min(64));
    for _ in 0..n {
        let len = r.i32().ok()?;
        if len < 0 {
            row.push(None);
        } else {
            row.push(Some(Bytes::copy_from_slice(r.take(usize::try_from(len).ok()?).ok()?)));
        }
    }
    Some(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_are_bounded_and_checked() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x09abcd\0Q\0\0"[..]);
        let (tag, msg) = next_client_frame(&mut buf, 1024).ok().flatten().unwrap_or((0, Bytes::new()));
        assert_eq!((tag, &msg[..]), (b'Q', &b"Q\0\0\0\x09abcd\0"[..]));
        assert!(matches!(next_client_frame(&mut buf, 1024), Ok(None)));
        let mut short = BytesMut::from(&b"Q\0\0\0\x02"[..]);
        assert!(next_client_frame(&mut short, 1024).is_err());
        let mut big = BytesMut::from(&b"d\0\x10\0\0"[..]);
        assert!(next_client_frame(&mut big, 1024).is_err());
    }
}
