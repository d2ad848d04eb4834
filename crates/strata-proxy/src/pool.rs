//! Transaction pooling: client sessions share a few server connections, one pool per database,
//! user and startup parameters, each client linked to a server connection for one transaction
//! (or one request outside a transaction) at a time.
//!
//! The proxy authenticates clients itself (`auth.rs`) and logs in to PostgreSQL with the pool's
//! credential. A client session runs the ordinary relay (`relay.rs`, with its cache) over an
//! in-process pipe; `link.rs`, at the pipe's other end, checks a server connection out when a
//! request needs one and back in when the server is idle outside a transaction with nothing in
//! flight. Cache hits never write to the pipe, so they never check a server connection out.
//!
//! Sharing is sound only if the next client finds the state a fresh connection would have. A
//! connection's state is read once when it opens; after a transaction whose text may have
//! changed it ([`strata::StateWatch`]), or that made the server report a parameter, it is read
//! again and compared. A client whose session kept state (a setting, a role, a temporary table,
//! `LISTEN`, a session advisory lock, a SQL `PREPARE`, a cursor `WITH HOLD`) stays pinned to its
//! connection until that state is undone.

mod link;

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{timeout, Instant},
};
use tracing::{debug, warn};

pub(crate) use self::link::run_link;
use crate::{
    auth::{login_upstream, AuthType, Credential, UserList},
    config::ProxyConfig,
    metrics::PoolMetrics,
    protocol::{frame, Reader, StartupParams, PROTOCOL_3_0},
    transport::{connect_upstream, send, ReadHalf, WriteHalf},
};

/// How client sessions get their server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolMode {
    /// Each client session has its own server connection for its whole life (no pooling).
    #[default]
    Session,
    /// Clients share server connections, linked for one transaction at a time.
    Transaction,
}

impl FromStr for PoolMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "session" => Ok(Self::Session),
            "transaction" => Ok(Self::Transaction),
            other => Err(format!("pool mode must be session or transaction, not {other:?}")),
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Session => "session",
            Self::Transaction => "transaction",
        })
    }
}

/// Transaction pooling's settings.
#[derive(Debug, Clone)]
pub(crate) struct PoolSettings {
    /// Server connections per pool at most.
    pub(crate) size: usize,
    /// Idle server connections kept open per pool (once a client has logged in to it).
    pub(crate) min_idle: usize,
    /// How long a request waits for a server connection before it fails.
    pub(crate) timeout: Duration,
    /// Clients connected at most; more are refused.
    pub(crate) max_client_conn: usize,
    /// An idle server connection unused this long is closed.
    pub(crate) server_idle_timeout: Duration,
    /// A server connection this old is closed when it next comes back idle.
    pub(crate) server_lifetime: Duration,
    pub(crate) auth_type: AuthType,
    pub(crate) users: Option<Arc<UserList>>,
    /// Protocol-level prepared statements kept per server connection (least recently used go).
    pub(crate) max_prepared_statements: usize,
}

/// Name and value pairs: a pool's startup parameters, a server's reported ones.
type Parameters = Vec<(String, String)>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every pool of one proxy.
pub(crate) struct Pools {
    pub(crate) settings: PoolSettings,
    pools: Mutex<HashMap<Parameters, Arc<Pool>>>,
    clients: AtomicUsize,
    /// The server connection each client is linked to now, by the cancel key the client got.
    links: Mutex<HashMap<(u32, u32), Arc<LinkCancel>>>,
    pub(crate) watch: strata::StateWatch,
    next_client: AtomicU64,
    metrics: PoolMetrics,
}

impl fmt::Debug for Pools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pools").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// Where a cancel request of a client goes: the server connection it is linked to, if any.
#[derive(Debug, Default)]
pub(crate) struct LinkCancel {
    server: Mutex<Option<(u32, u32)>>,
}

impl LinkCancel {
    /// The backend key of the server connection the client is linked to now.
    pub(crate) fn server_key(&self) -> Option<(u32, u32)> {
        *lock(&self.server)
    }
}

/// A client counted against `max_client_conn` until dropped.
pub(crate) struct ClientSlot {
    pools: Arc<Pools>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.pools.clients.fetch_sub(1, Ordering::AcqRel);
        self.pools.metrics.clients.dec();
    }
}

impl Pools {
    pub(crate) fn new(settings: PoolSettings, metrics: PoolMetrics) -> Self {
        Self {
            settings,
            pools: Mutex::new(HashMap::new()),
            clients: AtomicUsize::new(0),
            links: Mutex::new(HashMap::new()),
            watch: strata::StateWatch::new(),
            next_client: AtomicU64::new(1),
            metrics,
        }
    }

    pub(crate) fn metrics(&self) -> &PoolMetrics {
        &self.metrics
    }

    /// Counts a new client, or refuses it when `max_client_conn` are connected.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<ClientSlot> {
        let n = self.clients.fetch_add(1, Ordering::AcqRel);
        if n >= self.settings.max_client_conn {
            self.clients.fetch_sub(1, Ordering::AcqRel);
            self.metrics.clients_refused.inc();
            return None;
        }
        self.metrics.clients.inc();
        Some(ClientSlot { pools: self.clone() })
    }

    /// The pool serving a client with these startup parameters; the credential the client's
    /// authentication gave (if any) becomes the pool's login.
    /// The pool of the client's database, user and startup parameters, except an
    /// `application_name` the server would take as it is (printable ASCII, at most 63 bytes):
    /// clients that differ only in it share a pool, and the link sets it as one of the client's
    /// settings. Returns it then.
    pub(crate) fn pool_for(
        &self,
        params: &StartupParams,
        credential: Credential,
    ) -> (Arc<Pool>, Option<String>) {
        let user = params.get("user").unwrap_or_default().to_owned();
        let database = params.get("database").filter(|d| !d.is_empty()).unwrap_or(&user).to_owned();
        let application_name = params
            .get("application_name")
            .filter(|n| n.len() < 64 && n.bytes().all(|b| (0x20..0x7f).contains(&b)))
            .map(str::to_owned);
        let mut rest: Vec<(String, String)> = params
            .params
            .iter()
            .filter(|(k, _)| {
                k != "user" && k != "database" && !(k == "application_name" && application_name.is_some())
            })
            .cloned()
            .collect();
        rest.sort();
        let mut key = vec![("user".to_owned(), user.clone()), ("database".to_owned(), database)];
        key.extend(rest);
        let mut pools = lock(&self.pools);
        let pool = pools
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Pool {
                    startup: startup_packet(&key),
                    user,
                    credential: Mutex::new(Credential::None),
                    permits: Arc::new(Semaphore::new(self.settings.size)),
                    idle: Mutex::new(Vec::new()),
                    parameters: Mutex::new(None),
                    open: AtomicUsize::new(0),
                    parsed: Mutex::new(std::collections::HashSet::new()),
                })
            })
            .clone();
        drop(pools);
        if !matches!(credential, Credential::None) {
            *lock(&pool.credential) = credential;
        }
        (pool, application_name)
    }

    /// Registers a new client's cancel route; returns the key the client is given.
    pub(crate) fn register_link(&self) -> ((u32, u32), Arc<LinkCancel>, u64) {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let route = Arc::new(LinkCancel::default());
        let mut links = lock(&self.links);
        loop {
            let mut bytes = [0u8; 8];
            // A secret nobody can guess: a cancel request carrying it reaches the client's query.
            if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
                bytes = (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5bd1_e995).to_be_bytes();
            }
            let pid = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & 0x7fff_ffff;
            let key = (pid.max(1), u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]));
            if let std::collections::hash_map::Entry::Vacant(v) = links.entry(key) {
                v.insert(route.clone());
                return (key, route, id);
            }
        }
    }

    pub(crate) fn unregister_link(&self, key: (u32, u32)) {
        lock(&self.links).remove(&key);
    }

    /// Where a cancel request with this client key goes: `None` when the key is not one of ours,
    /// `Some(None)` when the client holds no server connection now (the cancel is dropped: it
    /// would reach another client's query).
    pub(crate) fn cancel_route(&self, key: (u32, u32)) -> Option<Option<(u32, u32)>> {
        lock(&self.links).get(&key).map(|r| r.server_key())
    }

    /// Closes idle server connections past their idle timeout or lifetime, and opens
    /// connections up to the minimum idle count of each pool that has a login.
    pub(crate) async fn maintain(&self, config: &ProxyConfig) {
        let pools: Vec<Arc<Pool>> = lock(&self.pools).values().cloned().collect();
        for pool in pools {
            let expired: Vec<Server> = {
                let mut idle = lock(&pool.idle);
                let (keep, old): (Vec<Server>, Vec<Server>) =
                    idle.drain(..).partition(|s| !self.expired(s, Instant::now()));
                *idle = keep;
                old
            };
            for server in expired {
                self.metrics.servers_idle.dec();
                pool.close(server, "idle_timeout", &self.metrics);
            }
            let has_login = !matches!(*lock(&pool.credential), Credential::None)
                || self.settings.auth_type == AuthType::Trust;
            while has_login
                && lock(&pool.idle).len() < self.settings.min_idle
                && pool.open.load(Ordering::Acquire) < self.settings.size
            {
                let Ok(permit) = pool.permits.clone().try_acquire_owned() else { break };
                match pool.open_server(config, self).await {
                    Ok(server) => {
                        self.metrics.servers_active.inc();
                        Checkout { server: Some(server), permit: Some(permit), pool: pool.clone() }
                            .release(self);
                    }
                    Err(e) => {
                        debug!(error = %e, "could not open an idle server connection");
                        break;
                    }
                }
            }
        }
    }

    fn expired(&self, server: &Server, now: Instant) -> bool {
        now.duration_since(server.idle_since) >= self.settings.server_idle_timeout
            || now.duration_since(server.created) >= self.settings.server_lifetime
    }
}

/// The server connections of one database, user and set of startup parameters.
pub(crate) struct Pool {
    /// The startup message every connection of the pool logs in with.
    startup: Bytes,
    user: String,
    credential: Mutex<Credential>,
    /// One permit per server connection that may be linked at once.
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Server>>,
    /// What the server reported at login (ParameterStatus), given to each new client.
    parameters: Mutex<Option<Arc<Parameters>>>,
    open: AtomicUsize,
    /// Parse contents (text and parameter types) a server connection of this pool accepted.
    parsed: Mutex<std::collections::HashSet<Bytes>>,
}

/// Why no server connection could be had.
#[derive(Debug)]
pub(crate) enum CheckoutError {
    /// None came free within the pool timeout.
    Timeout(Duration),
    /// Connecting or logging in failed: SQLSTATE and message.
    Failed(String, String),
}

impl CheckoutError {
    /// The SQLSTATE and message a client is given.
    pub(crate) fn describe(&self, pool_size: usize) -> (String, String) {
        match self {
            Self::Timeout(d) => (
                "53300".to_owned(),
                format!(
                    "strata-proxy: no server connection came free within the pool timeout ({} ms; pool size {pool_size})",
                    d.as_millis()
                ),
            ),
            Self::Failed(code, message) => (code.clone(), message.clone()),
        }
    }
}

impl fmt::Display for CheckoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (code, message) = self.describe(0);
        write!(f, "{code}: {message}")
    }
}

/// One pooled server connection.
pub(crate) struct Server {
    pub(crate) rd: ReadHalf,
    pub(crate) wr: WriteHalf,
    /// Bytes read from the server and not yet taken as messages.
    pub(crate) rbuf: BytesMut,
    /// BackendKeyData: where cancel requests for its queries go.
    pub(crate) key: (u32, u32),
    created: Instant,
    idle_since: Instant,
    /// The session state read when the connection opened.
    pub(crate) baseline: Vec<Vec<Option<Bytes>>>,
    /// Protocol-level statements prepared on it, by name, with when each was last used.
    pub(crate) prepared: HashMap<String, u64>,
    pub(crate) tick: u64,
    /// Whose unnamed statement it holds now: (client, that client's Parse generation).
    pub(crate) unnamed: Option<(u64, u64)>,
    /// The settings and role it holds away from its opening state, as last read or replayed.
    pub(crate) applied: Arc<strata::SessionSettings>,
}

/// A server connection linked to a client, with the pool permit it holds.
pub(crate) struct Checkout {
    server: Option<Server>,
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<Pool>,
}

impl Checkout {
    pub(crate) fn server(&mut self) -> &mut Server {
        // Present from checkout until release or close, which consume the checkout.
        self.server.as_mut().unwrap_or_else(|| unreachable!("a checkout holds its server until released"))
    }

    /// Gives the connection back to its pool for another client.
    pub(crate) fn release(mut self, pools: &Pools) {
        if let Some(mut server) = self.server.take() {
            server.idle_since = Instant::now();
            pools.metrics.servers_active.dec();
            if pools.expired(&server, server.idle_since) {
                self.pool.close(server, "lifetime", &pools.metrics);
            } else {
                pools.metrics.servers_idle.inc();
                lock(&self.pool.idle).push(server);
            }
        }
        drop(self.permit.take());
    }

    /// Closes the connection (its session ends; PostgreSQL rolls back what it had open).
    pub(crate) fn close(mut self, reason: &'static str, pools: &Pools) {
        if let Some(server) = self.server.take() {
            pools.metrics.servers_active.dec();
            self.pool.close(server, reason, &pools.metrics);
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        // A checkout dropped without release or close (a task ended abruptly): the connection
        // may be mid-transaction, so it goes.
        if let Some(server) = self.server.take() {
            self.pool.open.fetch_sub(1, Ordering::AcqRel);
            drop(server);
        }
    }
}

/// Parse contents remembered per pool at most (then it starts over).
const MAX_KNOWN_PARSES: usize = 10_000;

impl Pool {
    pub(crate) fn learn_parse(&self, key: Bytes) {
        let mut parsed = lock(&self.parsed);
        if parsed.len() >= MAX_KNOWN_PARSES {
            parsed.clear();
        }
        parsed.insert(key);
    }

    pub(crate) fn knows_parse(&self, key: &[u8]) -> bool {
        lock(&self.parsed).contains(key)
    }

    fn close(&self, server: Server, reason: &'static str, metrics: &PoolMetrics) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        metrics.servers_closed.with_label_values(&[reason]).inc();
        // Terminate, then the sockets close; PostgreSQL needs nothing more.
        let Server { rd, mut wr, .. } = server;
        drop(rd);
        tokio::spawn(async move {
            let _ = timeout(Duration::from_secs(1), send(&mut wr, &frame(b'X', &[]))).await;
        });
    }

    /// The parameters a new client is told at login, from a server connection of this pool.
    pub(crate) async fn parameters(
        self: &Arc<Self>,
        config: &ProxyConfig,
        pools: &Pools,
    ) -> Result<Arc<Parameters>, CheckoutError> {
        if let Some(p) = lock(&self.parameters).clone() {
            return Ok(p);
        }
        let checkout = self.checkout(config, pools, &strata::SessionSettings::default()).await?;
        checkout.release(pools);
        lock(&self.parameters).clone().ok_or_else(|| {
            CheckoutError::Failed(
                "08006".to_owned(),
                "strata-proxy: the server reported no parameters".to_owned(),
            )
        })
    }

    /// Links a server connection: an idle one of this pool that is still alive (the most
    /// recently used one already holding `wanted` settings, else the most recently used), else a
    /// new one while the pool has room, else the first to come free within the pool timeout.
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        config: &ProxyConfig,
        pools: &Pools,
        wanted: &strata::SessionSettings,
    ) -> Result<Checkout, CheckoutError> {
        let wait = pools.settings.timeout;
        // A free permit needs no timer.
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => match timeout(wait, self.permits.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) | Err(_) => {
                    pools.metrics.wait_timeouts.inc();
                    return Err(CheckoutError::Timeout(wait));
                }
            },
        };
        pools.metrics.checkouts.inc();
        loop {
            let candidate = {
                let mut idle = lock(&self.idle);
                match idle.iter().rposition(|s| *s.applied == *wanted) {
                    Some(i) => Some(idle.remove(i)),
                    None => idle.pop(),
                }
            };
            let Some(mut server) = candidate else { break };
            pools.metrics.servers_idle.dec();
            if pools.expired(&server, Instant::now()) {
                self.close(server, "idle_timeout", &pools.metrics);
                continue;
            }
            if !alive(&mut server).await {
                self.close(server, "broken", &pools.metrics);
                continue;
            }
            pools.metrics.servers_active.inc();
            return Ok(Checkout { server: Some(server), permit: Some(permit), pool: self.clone() });
        }
        let server = self.open_server(config, pools).await?;
        pools.metrics.servers_active.inc();
        Ok(Checkout { server: Some(server), permit: Some(permit), pool: self.clone() })
    }

    /// Connects and logs in with the pool's credential, then reads the session state a fresh
    /// connection has.
    async fn open_server(&self, config: &ProxyConfig, pools: &Pools) -> Result<Server, CheckoutError> {
        let failed = |code: &str, message: String| CheckoutError::Failed(code.to_owned(), message);
        let mut stream = connect_upstream(config).await.map_err(|e| {
            failed(
                "08001",
                format!("strata-proxy could not connect to upstream server {}: {}", config.upstream, e.0),
            )
        })?;
        let credential = lock(&self.credential).clone();
        let login = timeout(
            config.connect_timeout,
            login_upstream(&mut stream, &self.startup, &self.user, &credential),
        )
        .await
        .map_err(|_| failed("08001", "strata-proxy: logging in to the upstream timed out".to_owned()))?
        .map_err(|e| {
            warn!(user = %self.user, error = %e, "pooled login to the upstream failed");
            failed(e.code(), e.to_string())
        })?;
        let baseline = timeout(config.connect_timeout, read_state(&mut stream, &pools.watch.opening_query()))
            .await
            .map_err(|_| {
                failed("08001", "strata-proxy: reading a new connection's state timed out".to_owned())
            })?
            .map_err(|e| {
                failed("08006", format!("strata-proxy: reading a new connection's state failed: {e}"))
            })?;
        // The setting names in the database's functions, policies and views: later reads cover them.
        pools.watch.learn_code(&baseline);
        *lock(&self.parameters) = Some(Arc::new(login.parameters.clone()));
        self.open.fetch_add(1, Ordering::AcqRel);
        let (rd, wr) = stream.into_split();
        let now = Instant::now();
        Ok(Server {
            rd,
            wr,
            rbuf: BytesMut::with_capacity(8192),
            key: login.backend_key,
            created: now,
            idle_since: now,
            baseline,
            prepared: HashMap::new(),
            tick: 0,
            unnamed: None,
            applied: Arc::default(),
        })
    }
}

/// Whether an idle connection is still open and silent (a server that ended it sent an error
/// and closed; anything to read on an idle connection means it is unusable). One poll, no wait.
/// (A zero timeout would wait for the timer's next tick, about a millisecond, on every checkout.)
async fn alive(server: &mut Server) -> bool {
    let mut probe = [0u8; 1];
    std::future::poll_fn(|cx| {
        let mut buf = tokio::io::ReadBuf::new(&mut probe);
        // Pending: nothing to read, the connection is open. Anything else (bytes, end of
        // stream, an error) makes it unusable.
        std::task::Poll::Ready(std::pin::Pin::new(&mut server.rd).poll_read(cx, &mut buf).is_pending())
    })
    .await
}

/// A StartupMessage for protocol 3.0 with these parameters.
fn startup_packet(params: &[(String, String)]) -> Bytes {
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = Vec::with_capacity(body.len() + 4);
    packet.extend_from_slice(&u32::try_from(body.len() + 4).unwrap_or(u32::MAX).to_be_bytes());
    packet.extend_from_slice(&body);
    Bytes::from(packet)
}

/// The largest server message the pool reads whole outside a client's request.
const MAX_STATE_MESSAGE: usize = 16 << 20;

/// Takes one whole message (tag, the whole frame) off the front of `buf`, if there is one.
pub(crate) fn take_message(buf: &mut BytesMut, max: usize) -> Result<Option<(u8, Bytes)>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 || len > max {
        return Err(format!("invalid message length {len}"));
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    let tag = buf[0];
    Ok(Some((tag, buf.split_to(len + 1).freeze())))
}

/// The values of a DataRow message (whole frame).
pub(crate) fn data_row(frame: &[u8]) -> Result<Vec<Option<Bytes>>, String> {
    let mut r = Reader::new(frame.get(5..).unwrap_or_default(), "DataRow");
    let n = r.i16().map_err(|m| m.0)?;
    let mut row = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        let len = r.i32().map_err(|m| m.0)?;
        if len < 0 {
            row.push(None);
        } else {
            let len = usize::try_from(len).map_err(|_| "bad length".to_owned())?;
            row.push(Some(Bytes::copy_from_slice(r.take(len).map_err(|m| m.0)?)));
        }
    }
    Ok(row)
}

/// Runs the state query on a connection at rest and returns its rows.
async fn read_state<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    sql: &str,
) -> Result<Vec<Vec<Option<Bytes>>>, String> {
    let mut body = Vec::with_capacity(sql.len() + 1);
    body.extend_from_slice(sql.as_bytes());
    body.push(0);
    send(stream, &frame(b'Q', &body)).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(8192);
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let message = take_message(&mut buf, MAX_STATE_MESSAGE)?;
        let Some((tag, frame)) = message else {
            if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("the server closed the connection".to_owned());
            }
            continue;
        };
        match tag {
            b'D' => rows.push(data_row(&frame)?),
            b'E' => {
                let (code, _) = crate::protocol::error_fields(&frame[5..]);
                let message = crate::protocol::error_message(&frame[5..]);
                error = Some(format!("{}: {}", code.unwrap_or_default(), message.unwrap_or_default()));
            }
            b'Z' => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(rows),
    }
}

/// A pooled client's registration: its slot under `max_client_conn` and its cancel route, both
/// given back when dropped.
pub(crate) struct PooledClient {
    pools: Arc<Pools>,
    key: (u32, u32),
    _slot: ClientSlot,
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        self.pools.unregister_link(self.key);
    }
}

/// Admits and authenticates a client for transaction pooling, and starts its link. Returns the
/// pipe the relay uses as its upstream, or `None` when the client was refused (and told why).
pub(crate) async fn start_client(
    shared: &Arc<crate::relay::Shared>,
    pools: &Arc<Pools>,
    params: &StartupParams,
    stream: &mut crate::transport::Stream,
) -> Option<(crate::transport::Stream, PooledClient)> {
    use crate::protocol::{error_response, Severity};
    let fatal = |code: &str, message: &str| error_response(Severity::Fatal, code, message);
    let Some(slot) = pools.admit() else {
        let _ = send(stream, &fatal("53300", "sorry, too many clients already")).await;
        return None;
    };
    if params.get("replication").is_some_and(|r| !r.eq_ignore_ascii_case("false") && r != "0") {
        let _ = send(stream, &fatal("08P01", "strata-proxy does not pool replication connections")).await;
        return None;
    }
    let user = params.get("user").unwrap_or_default().to_owned();
    let secret = pools.settings.users.as_ref().and_then(|u| u.get(&user));
    let auth = match crate::auth::authenticate_client(stream, pools.settings.auth_type, &user, secret).await {
        Ok(a) => a,
        Err(failure) => {
            if let Some((code, message)) = failure.to_client() {
                debug!(user = %user, "client authentication failed");
                let _ = send(stream, &fatal(code, &message)).await;
            }
            return None;
        }
    };
    let credential = Credential::from_auth(secret, &auth);
    let (pool, application_name) = pools.pool_for(params, credential);
    let (key, route, client) = pools.register_link();
    let (near, far) = tokio::io::duplex(64 * 1024);
    let new = link::NewClient { id: client, key, cancel: route, application_name };
    tokio::spawn(run_link(shared.clone(), pools.clone(), pool, new, far));
    Some((crate::transport::Stream::Pipe(near), PooledClient { pools: pools.clone(), key, _slot: slot }))
}
