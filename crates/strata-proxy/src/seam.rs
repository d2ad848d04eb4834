//! The caching seam: requests as the proxy groups them, the server's response to each, and the
//! [`RequestCache`] trait a cache implements to answer requests or learn from responses.

use std::{any::Any, fmt, sync::Arc};

use async_trait::async_trait;
use bytes::Bytes;

use crate::session::SessionView;

/// A statement prepared by the client (a protocol-level `Parse`, named or unnamed).
#[derive(Clone, PartialEq, Eq)]
pub struct PreparedStatement {
    name: String,
    sql: Arc<str>,
    param_types: Vec<u32>,
    exact: bool,
    /// The parameter types the server settled on, from its `ParameterDescription` when the
    /// client described the statement.
    server_types: std::sync::OnceLock<Vec<u32>>,
    /// Set once running the text was found to drop no prepared statement (which depends on the
    /// text only), so that later executions need not ask the cache again.
    drops_nothing: std::sync::OnceLock<()>,
}

impl PreparedStatement {
    pub(crate) fn new(name: String, sql: Arc<str>, param_types: Vec<u32>) -> Self {
        Self {
            name,
            sql,
            param_types,
            exact: true,
            server_types: std::sync::OnceLock::new(),
            drops_nothing: std::sync::OnceLock::new(),
        }
    }

    /// A statement whose text the proxy could not read exactly (not UTF-8, or in a client
    /// encoding whose bytes the parser cannot split): it is never keyed, and running it counts
    /// as an unknown write.
    pub(crate) fn inexact(name: String, sql: Arc<str>, param_types: Vec<u32>) -> Self {
        Self {
            name,
            sql,
            param_types,
            exact: false,
            server_types: std::sync::OnceLock::new(),
            drops_nothing: std::sync::OnceLock::new(),
        }
    }

    /// Whether [`sql`](Self::sql) is exactly the text the client sent; otherwise it is a lossy
    /// rendering for logs only.
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// The statement's name (`""` for the unnamed statement).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The statement's SQL text as the client sent it.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// [`sql`](Self::sql), shared.
    pub(crate) fn sql_shared(&self) -> &Arc<str> {
        &self.sql
    }

    /// The parameter type OIDs the client specified (0 = let the server infer).
    pub fn param_types(&self) -> &[u32] {
        &self.param_types
    }

    /// The parameter types the server uses, as its `ParameterDescription` said when the
    /// statement was described through the proxy; otherwise those the client specified. A
    /// binary parameter is read as this type.
    pub fn server_param_types(&self) -> &[u32] {
        self.server_types.get().map_or(&self.param_types, Vec::as_slice)
    }

    /// Whether running the text was already found to drop no prepared statement.
    pub(crate) fn drops_nothing(&self) -> bool {
        self.drops_nothing.get().is_some()
    }

    /// Records that running the text drops no prepared statement.
    pub(crate) fn found_to_drop_nothing(&self) {
        let _ = self.drops_nothing.set(());
    }

    /// Records the server's `ParameterDescription` of the statement (the first one counts: a
    /// statement's types never change while it exists).
    pub(crate) fn described(&self, types: Vec<u32>) {
        if types.len() >= self.param_types.len() {
            let _ = self.server_types.set(types);
        }
    }
}

impl fmt::Debug for PreparedStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedStatement")
            .field("name", &self.name)
            .field("sql_len", &self.sql.len())
            .field("param_types", &self.param_types)
            .finish()
    }
}

/// The format code of a parameter or result column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Text format (code 0).
    Text,
    /// Binary format (code 1).
    Binary,
}

impl Format {
    pub(crate) fn from_code(code: i16) -> Option<Self> {
        match code {
            0 => Some(Self::Text),
            1 => Some(Self::Binary),
            _ => None,
        }
    }
}

/// A `Bind`: a portal made of a statement and parameter values.
#[derive(Clone, PartialEq, Eq)]
pub struct Bind {
    pub(crate) portal: String,
    pub(crate) statement_name: String,
    pub(crate) statement: Option<Arc<PreparedStatement>>,
    pub(crate) param_formats: Vec<Format>,
    pub(crate) params: Vec<Option<Bytes>>,
    pub(crate) result_formats: Vec<Format>,
}

impl Bind {
    /// The destination portal (`""` for the unnamed portal).
    pub fn portal(&self) -> &str {
        &self.portal
    }
    /// The name of the statement bound.
    pub fn statement_name(&self) -> &str {
        &self.statement_name
    }
    /// The statement bound, if the proxy saw it being prepared in this session.
    pub fn statement(&self) -> Option<&PreparedStatement> {
        self.statement.as_deref()
    }
    /// Parameter format codes as sent: empty = all text, one = applies to all, else one per parameter.
    pub fn param_formats(&self) -> &[Format] {
        &self.param_formats
    }
    /// Parameter values (`None` = SQL NULL), in the formats given by [`Bind::param_formats`].
    pub fn params(&self) -> &[Option<Bytes>] {
        &self.params
    }
    /// Result format codes as sent: empty = all text, one = applies to all, else one per column.
    pub fn result_formats(&self) -> &[Format] {
        &self.result_formats
    }
}

impl fmt::Debug for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Parameter values are user data: only their count is shown.
        f.debug_struct("Bind")
            .field("portal", &self.portal)
            .field("statement_name", &self.statement_name)
            .field("params", &self.params.len())
            .field("param_formats", &self.param_formats)
            .field("result_formats", &self.result_formats)
            .finish()
    }
}

/// What a `Describe` or `Close` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A prepared statement by name; with the statement if the proxy knows it.
    Statement(String, Option<Arc<PreparedStatement>>),
    /// A portal by name.
    Portal(String),
}

/// One message of an extended-protocol batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtendedMessage {
    /// `Parse`: prepares a statement.
    Parse(Arc<PreparedStatement>),
    /// `Bind`: creates a portal.
    Bind(Bind),
    /// `Describe` of a statement or portal.
    Describe(Target),
    /// `Execute` of a portal; `max_rows` 0 = all rows. `statement` is the portal's statement if known.
    Execute {
        /// The portal executed.
        portal: String,
        /// The row limit (0 = no limit); a request with a limit is never offered to the cache.
        max_rows: u32,
        /// The statement the portal was bound to, if known.
        statement: Option<Arc<PreparedStatement>>,
    },
    /// `Close` of a statement or portal.
    Close(Target),
    /// `Flush`: the client asked for output before `Sync`; such a batch is never held for lookup.
    Flush,
    /// `Sync`: ends the batch.
    Sync,
}

/// A unit the server answers with exactly one `ReadyForQuery`.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    pub(crate) kind: RequestKind,
    pub(crate) wire: Bytes,
    pub(crate) replayable: bool,
}

/// What a [`Request`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestKind {
    /// A simple-protocol `Query` (possibly several statements separated by `;`).
    Simple {
        /// The query text.
        sql: String,
    },
    /// Extended-protocol messages up to and including `Sync`.
    Extended {
        /// The messages in order.
        messages: Vec<ExtendedMessage>,
    },
    /// A `FunctionCall` (fast-path); never cacheable.
    FunctionCall,
    /// A `Query` whose text the proxy could not read exactly (not UTF-8, bytes after its
    /// terminator, or a client encoding whose bytes the parser cannot split): never cacheable,
    /// and counted as a write of unknown effect.
    Undecodable,
}

impl Request {
    /// What the request is.
    pub fn kind(&self) -> &RequestKind {
        &self.kind
    }

    /// The exact client bytes of the request (all its messages).
    pub fn wire_bytes(&self) -> &Bytes {
        &self.wire
    }

    /// Whether a replay of recorded bytes could stand in for the server: a simple query, or an
    /// extended batch without `Flush`, without an `Execute` row limit, and whose statements are all
    /// known to the proxy.
    pub fn is_replayable(&self) -> bool {
        self.replayable
    }

    pub(crate) fn new(kind: RequestKind, wire: Bytes) -> Self {
        let replayable = Self::replayable_kind(&kind);
        Self { kind, wire, replayable }
    }

    fn replayable_kind(kind: &RequestKind) -> bool {
        match kind {
            RequestKind::Simple { .. } => true,
            RequestKind::FunctionCall | RequestKind::Undecodable => false,
            RequestKind::Extended { messages } => messages.iter().all(|m| match m {
                ExtendedMessage::Flush => false,
                ExtendedMessage::Parse(s) => s.is_exact(),
                ExtendedMessage::Execute { max_rows, statement, .. } => {
                    *max_rows == 0 && statement.as_ref().is_some_and(|s| s.is_exact())
                }
                ExtendedMessage::Bind(b) => b.statement.as_ref().is_some_and(|s| s.is_exact()),
                ExtendedMessage::Describe(Target::Statement(_, s)) => {
                    s.as_ref().is_some_and(|s| s.is_exact())
                }
                _ => true,
            }),
        }
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Request");
        match &self.kind {
            RequestKind::Simple { sql } => d.field("simple_sql_len", &sql.len()),
            RequestKind::Extended { messages } => d.field("extended", messages),
            RequestKind::FunctionCall => d.field("function_call", &true),
            RequestKind::Undecodable => d.field("undecodable", &true),
        };
        d.field("wire_len", &self.wire.len()).finish()
    }
}

/// Whether the proxy consults the cache at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Never hold a batch, never open a [`RequestSession`].
    PassThrough,
    /// Offer eligible requests to [`RequestSession::lookup`] and report every upstream request
    /// to [`RequestSession::complete`].
    Active,
}

/// An opaque value a cache hands out on a miss and gets back with the response (a fill ticket).
pub struct Fill(Box<dyn Any + Send + Sync>);

impl Fill {
    /// Wraps any value.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Self(Box::new(value))
    }

    /// Takes the value back, or returns the ticket unchanged if it holds another type.
    pub fn downcast<T: Any + Send + Sync>(self) -> Result<Box<T>, Self> {
        self.0.downcast::<T>().map_err(Self)
    }
}

impl fmt::Debug for Fill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fill(..)")
    }
}

/// The answer of [`RequestSession::lookup`].
#[derive(Debug)]
pub enum Lookup {
    /// Replay these exact server bytes to the client instead of going upstream. They must end with
    /// a `ReadyForQuery` of status idle.
    Hit(Bytes),
    /// Go upstream and record the response; it comes back to [`RequestSession::complete`] with this ticket.
    Miss(Fill),
    /// Go upstream without recording.
    Bypass,
    /// Before it can answer, the cache needs the session's state: run this query as a simple
    /// `Query` on the session's own connection (idle, outside a transaction), hide every message
    /// of its answer from the client, hand the rows to [`RequestSession::verified`], and ask again.
    Verify(String),
}

/// Which prepared statements a SQL text drops (`DEALLOCATE`, `DISCARD ALL`): SQL `PREPARE` and
/// protocol-level `Parse` share one namespace on the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Dropped {
    /// None.
    #[default]
    Nothing,
    /// These names.
    Named(Vec<String>),
    /// Every prepared statement.
    All,
}

/// Why a response cannot be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotCacheable {
    /// The response was not recorded (no ticket, or the request was not replayable).
    NotRecorded,
    /// It contains an ErrorResponse.
    Error,
    /// It contains a NoticeResponse.
    Notice,
    /// It contains a NotificationResponse.
    Notification,
    /// It contains a ParameterStatus (a setting changed).
    ParameterChange,
    /// It started a COPY.
    Copy,
    /// An `Execute` row limit was hit (PortalSuspended).
    PortalSuspended,
    /// It exceeds the configured maximum result size.
    TooLarge,
    /// Recording it would exceed the bytes all sessions may hold in responses being recorded.
    RecordingBudget,
    /// The session ended up in a transaction (or a failed one).
    InTransaction,
    /// It contains a message the proxy does not replay (e.g. a function-call result).
    Unexpected,
}

/// Transaction status from `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TransactionStatus {
    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(Self::Idle),
            b'T' => Some(Self::InTransaction),
            b'E' => Some(Self::Failed),
            _ => None,
        }
    }
}

/// What the proxy saw of the server's response to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseSummary {
    pub(crate) command_tags: Vec<String>,
    pub(crate) error_code: Option<String>,
    pub(crate) not_cacheable: Option<NotCacheable>,
    pub(crate) transaction_status: TransactionStatus,
    pub(crate) rows: u64,
    pub(crate) response_bytes: u64,
}

impl ResponseSummary {
    /// The CommandComplete tags in order (`SELECT 3`, `INSERT 0 1`, `COMMIT`, ...).
    pub fn command_tags(&self) -> &[String] {
        &self.command_tags
    }
    /// The SQLSTATE of the first ErrorResponse, if any.
    pub fn error_code(&self) -> Option<&str> {
        self.error_code.as_deref()
    }
    /// Why the response cannot be stored (the first reason found), or `None` if it can.
    pub fn not_cacheable(&self) -> Option<NotCacheable> {
        self.not_cacheable
    }
    /// The transaction status of the closing `ReadyForQuery`.
    pub fn transaction_status(&self) -> TransactionStatus {
        self.transaction_status
    }
    /// The number of DataRow messages.
    pub fn rows(&self) -> u64 {
        self.rows
    }
    /// The size of the whole response in bytes, `ReadyForQuery` included.
    pub fn response_bytes(&self) -> u64 {
        self.response_bytes
    }
}

/// A table column as a `RowDescription` identifies a field's origin: the table's OID and the
/// column's attribute number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ColumnOrigin {
    /// The table's OID.
    pub table_oid: u32,
    /// The column's attribute number.
    pub column: i16,
}

/// What [`RequestSession::capture`] asks the proxy to keep of a response: the values of the first
/// field that comes from one of these columns, in every row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The columns a field may come from.
    pub origins: Vec<ColumnOrigin>,
}

/// One field of every row of a response, kept as [`RequestSession::capture`] asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub(crate) origin: ColumnOrigin,
    pub(crate) type_oid: u32,
    pub(crate) format: Format,
    pub(crate) values: Vec<Option<Bytes>>,
}

impl Captured {
    /// The column the field comes from.
    pub fn origin(&self) -> ColumnOrigin {
        self.origin
    }
    /// The field's type.
    pub fn type_oid(&self) -> u32 {
        self.type_oid
    }
    /// The field's format.
    pub fn format(&self) -> Format {
        self.format
    }
    /// The field's value in each row, in order (`None` for NULL).
    pub fn values(&self) -> &[Option<Bytes>] {
        &self.values
    }
}

/// The most rows a capture keeps; a response with more keeps none.
pub(crate) const MAX_CAPTURED_ROWS: usize = 256;

/// The server's complete response to one request, as handed to [`RequestSession::complete`].
#[derive(Clone)]
pub struct Response {
    pub(crate) summary: ResponseSummary,
    pub(crate) bytes: Option<Bytes>,
    pub(crate) captured: Option<Captured>,
}

impl Response {
    /// What the proxy saw.
    pub fn summary(&self) -> &ResponseSummary {
        &self.summary
    }

    /// The field [`RequestSession::capture`] asked for, when the response had one row
    /// description with such a field and at most a few hundred rows, all seen whole.
    pub fn captured(&self) -> Option<&Captured> {
        self.captured.as_ref()
    }

    /// The exact server bytes (from the first response message through `ReadyForQuery`) when the
    /// response was recorded and may be stored; replaying them answers the same request.
    pub fn cacheable_bytes(&self) -> Option<&Bytes> {
        match self.summary.not_cacheable {
            None => self.bytes.as_ref(),
            Some(_) => None,
        }
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("summary", &self.summary)
            .field("recorded_bytes", &self.bytes.as_ref().map(Bytes::len))
            .finish()
    }
}

/// A command of the admin console (the virtual database `strata`) that the cache answers.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConsoleCommand {
    /// `SHOW QUERIES`: statistics per query shape.
    ShowQueries,
    /// `SHOW TABLES`: versions and invalidations per table.
    ShowTables,
    /// `SHOW CONFIG`: the cache's settings in force.
    ShowConfig,
    /// `FLUSH` (everything) or `FLUSH table`.
    Flush(Option<String>),
    /// `EXPLAIN [FOR USER u] [DATABASE d] sql`.
    Explain {
        /// Whose scope.
        user: String,
        /// Which database.
        database: String,
        /// The statement.
        sql: String,
    },
    /// `RELOAD`: the configuration file's `[cache]` table, read again (`None` when the file has
    /// none).
    Reload(Option<toml::Table>),
}

/// Rows for the admin console or `EXPLAIN LAST STATEMENT`: text columns, the command tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleReply {
    /// Column names; none for a command that returns no rows.
    pub columns: Vec<String>,
    /// Rows of text values (`None` is NULL).
    pub rows: Vec<Vec<Option<String>>>,
    /// The CommandComplete tag.
    pub tag: String,
}

impl ConsoleReply {
    /// Rows under `columns`, tagged `SHOW`.
    pub fn table(columns: &[&str], rows: Vec<Vec<Option<String>>>) -> Self {
        Self { columns: columns.iter().map(|c| (*c).to_owned()).collect(), rows, tag: "SHOW".to_owned() }
    }

    /// No rows, just a tag.
    pub fn done(tag: &str) -> Self {
        Self { columns: Vec::new(), rows: Vec::new(), tag: tag.to_owned() }
    }
}

/// A cache the proxy consults: the seam between the wire protocol and `strata`. It opens one
/// [`RequestSession`] per client session; what a session's statements mean for the cache (its
/// scope, its transactions, invalidation) lives there, not in the proxy.
#[async_trait]
pub trait RequestCache: Send + Sync + fmt::Debug + 'static {
    /// Whether the proxy consults this cache.
    fn mode(&self) -> CacheMode;

    /// Opens the cache's side of a new client session (after its startup message). `None` when
    /// the cache takes no part. Dropping it ends the session: PostgreSQL rolls back whatever
    /// transaction it had open.
    fn open_session(&self, session: &SessionView) -> Option<Box<dyn RequestSession>>;

    /// Answers an admin console command, or says why it cannot. Default: no cache to ask.
    async fn console(&self, command: &ConsoleCommand) -> Result<ConsoleReply, String> {
        let _ = command;
        Err("this proxy runs without a cache".to_owned())
    }
}

/// One client session's side of the cache.
///
/// The proxy calls [`lookup`](RequestSession::lookup) only for a request that is complete (a
/// `Query`, or an extended batch through `Sync`), [replayable](Request::is_replayable), in a
/// session that is idle outside a transaction with nothing else in flight. It calls
/// [`complete`](RequestSession::complete) for every request that went upstream, after the server's
/// `ReadyForQuery` arrived and before the client sees it, so the cache can invalidate on writes
/// before the client can issue its next statement.
#[async_trait]
pub trait RequestSession: Send + Sync + fmt::Debug {
    /// Answers a request from cache, says whether to record the upstream response, or asks for
    /// the session's state first ([`Lookup::Verify`]).
    async fn lookup(&self, request: &Request) -> Lookup;

    /// The rows of the query a [`Lookup::Verify`] asked for (column values as the server sent
    /// them in text format, `None` for NULL), or why it failed (an error, a timeout).
    fn verified(&self, rows: Result<&[Vec<Option<Bytes>>], &str>);

    /// Receives the response to a request that went upstream; `fill` is the ticket from
    /// [`Lookup::Miss`].
    async fn complete(&self, request: &Request, response: &Response, fill: Option<Fill>);

    /// A request went upstream and its answer never arrived (the client left and the server's
    /// answer could not be awaited, the upstream connection was lost): it may have committed.
    /// `None` when the proxy did not see the whole request. The cache must treat it as a write of
    /// unknown outcome.
    async fn abandoned(&self, request: Option<&Request>);

    /// Which prepared statements a SQL text the client sends drops, for the proxy's map of them.
    fn drops_statements(&self, sql: &str) -> Dropped;

    /// The server reported a parameter change (`ParameterStatus`) after startup.
    fn parameter_changed(&self);

    /// For one statement about to go upstream (a simple `Query`'s text, or an `Execute`'s
    /// prepared statement): which field of the rows it returns to keep for
    /// [`Response::captured`] (a write's `RETURNING` key, say). A request with more statements
    /// captures nothing. Called on the relay's thread: it must not block. Default: nothing.
    fn capture(&self, sql: &str) -> Option<Capture> {
        let _ = sql;
        None
    }

    /// What became of the session's last statement, for `EXPLAIN LAST STATEMENT`. Default: a
    /// row saying the cache keeps no record.
    fn last_statement(&self) -> ConsoleReply {
        ConsoleReply::table(&["statement", "destination", "outcome", "reason"], Vec::new())
    }
}

/// The cache used until `strata::QueryCache` is plugged in: every request goes upstream.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassThrough;

impl RequestCache for PassThrough {
    fn mode(&self) -> CacheMode {
        CacheMode::PassThrough
    }

    fn open_session(&self, _session: &SessionView) -> Option<Box<dyn RequestSession>> {
        None
    }
}
