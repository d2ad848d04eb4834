//! One pooled client's link to the server connections: the far end of the pipe its relay writes
//! to as if it were PostgreSQL. It answers the startup itself, checks a server connection out
//! for each transaction, renames protocol-level prepared statements so clients sharing a
//! connection never collide (and prepares them again on whichever connection runs them), reads
//! the session state back before a connection is shared again, and keeps a client whose session
//! kept state on its own connection.

use std::{collections::HashMap, collections::VecDeque, future::Future, sync::Arc, task::Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf as PipeRead, WriteHalf as PipeWrite};
use tracing::{debug, info};

use super::{data_row, take_message, Checkout, CheckoutError, LinkCancel, Pool, Pools};
use crate::{
    protocol::{error_fields, error_response, frame, Reader, Severity},
    relay::Shared,
};

/// Buffered bytes in either direction past which the link stops reading more.
const HIGH_WATER: usize = 256 * 1024;

/// A client statement and the name it has on server connections.
struct Statement {
    server_name: String,
    /// The Parse message under the server name, sent again on a connection that lacks it.
    parse: Bytes,
    /// Whether running it may change the session's state.
    may_change: bool,
    /// Whether running it drops every prepared statement (`DISCARD ALL`, `DEALLOCATE ALL`).
    drops_all: bool,
    /// Its result's shape (column names and types) when a server first described it: where it
    /// is prepared again, the new preparation must give the same, as PostgreSQL's own check
    /// of a prepared statement's result type would ("cached plan must not change result type").
    shape: Option<Bytes>,
    /// A later preparation gave another shape: every Bind of it fails as PostgreSQL's would.
    stale: bool,
}

impl Statement {
    fn new(server_name: String, parse: Bytes, may_change: bool, drops_all: bool) -> Self {
        Self { server_name, parse, may_change, drops_all, shape: None, stale: false }
    }
}

/// What the server owes for a message sent, in order.
enum Expect {
    /// A ParseComplete; `injected` ones are the link's own and never reach the client.
    Parse { name: Option<String>, injected: bool, key: Option<Bytes> },
    /// A CloseComplete.
    Close { injected: bool },
    /// ParameterDescription then RowDescription or NoData of the link's own Describe of a
    /// client statement: its shape is recorded, or (`verify`) compared with the one recorded.
    Describe { statement: Vec<u8>, verify: bool },
    /// A ReadyForQuery; `check` for the link's own state read.
    Sync { check: bool },
}

struct Link {
    shared: Arc<Shared>,
    pools: Arc<Pools>,
    pool: Arc<Pool>,
    client: u64,
    cancel: Arc<LinkCancel>,
    linked: Option<Checkout>,
    /// Why the client keeps its connection, while it does.
    pinned: Option<strata::StateDifference>,
    statements: HashMap<Vec<u8>, Statement>,
    unnamed: Option<Statement>,
    unnamed_generation: u64,
    next_statement: u64,
    expect: VecDeque<Expect>,
    /// Query, Sync and FunctionCall messages sent and not yet answered by ReadyForQuery.
    pending_syncs: usize,
    /// Extended-protocol messages sent since the last Sync (their statement is mid-flight).
    since_sync: bool,
    /// The server's transaction status at its last ReadyForQuery.
    status: u8,
    /// The session's state must be read before the connection is shared again.
    needs_check: bool,
    /// Rows of the state read in flight.
    check_rows: Vec<Vec<Option<Bytes>>>,
    check_failed: bool,
    /// The server's message for the first error of the read in flight.
    check_error: Option<String>,
    /// The connection must not be shared again (a statement's plan went stale after DDL).
    close_after: bool,
    from_client: BytesMut,
    to_client: BytesMut,
    to_server: BytesMut,
    /// After a failed checkout: the error the current request gets at its Sync.
    refusing: Option<Bytes>,
    /// A Bind of a statement dropping every prepared statement is being sent.
    forget_prepared_on_server: bool,
    /// The settings and role this client's session holds away from a fresh connection's: any
    /// connection it is linked to is brought to them first.
    wanted: Arc<strata::SessionSettings>,
    /// The settings the linked connection is being brought to; the client's messages wait.
    replaying: Option<Arc<strata::SessionSettings>>,
    /// The client message that caused the checkout, sent once the replay is confirmed.
    held: Option<(u8, Bytes)>,
    /// Why the client's session cannot go on (a replay failed).
    fatal: Option<String>,
    /// A statement prepared again is being described before the client's Bind goes out.
    verifying: bool,
    /// Answers the link made itself wait for the server's first answer, to go out with it in
    /// one write (a Parse answered before the connection was linked, then its Bind and Sync).
    hold_local: bool,
    /// Binds of stale statements sent as Binds of a missing statement: their errors become
    /// "cached plan must not change result type".
    stale_errors: usize,
}

enum Event {
    ClientRead(std::io::Result<usize>),
    ServerRead(std::io::Result<usize>),
    ServerWrote(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
}

enum End {
    /// The client left (Terminate or closed pipe).
    Client,
    /// The server connection failed; the client was told.
    Server,
}

/// Who a new pooled client is to its link.
pub(crate) struct NewClient {
    pub(crate) id: u64,
    /// The cancel key the proxy gives it.
    pub(crate) key: (u32, u32),
    pub(crate) cancel: Arc<LinkCancel>,
    /// Its `application_name`, when its pool's connections log in without it.
    pub(crate) application_name: Option<String>,
}

/// Serves one pooled client until it leaves.
pub(crate) async fn run_link(
    shared: Arc<Shared>,
    pools: Arc<Pools>,
    pool: Arc<Pool>,
    new: NewClient,
    pipe: DuplexStream,
) {
    let NewClient { id: client, key: client_key, cancel, application_name } = new;
    let (mut rd, mut wr) = tokio::io::split(pipe);
    // The relay sends the client's startup message first: the pool has its own.
    let mut len = [0u8; 4];
    if rd.read_exact(&mut len).await.is_err() {
        return;
    }
    let len = u32::from_be_bytes(len) as usize;
    let mut rest = vec![0u8; len.saturating_sub(4)];
    if rd.read_exact(&mut rest).await.is_err() {
        return;
    }
    let parameters = match pool.parameters(&shared.config, &pools).await {
        Ok(p) => p,
        Err(e) => {
            let (code, message) = e.describe(pools.settings.size);
            let _ = wr.write_all(&error_response(Severity::Fatal, &code, &message)).await;
            let _ = wr.shutdown().await;
            return;
        }
    };
    // The client's application_name is its own setting on the pool's connections (they log in
    // without one): it is told its own, and connections are brought to it like any setting.
    let mut wanted = strata::SessionSettings::default();
    let mut hello = BytesMut::with_capacity(512);
    hello.extend_from_slice(&frame(b'R', &0i32.to_be_bytes()));
    for (name, value) in parameters.iter() {
        let own = application_name.as_deref().filter(|_| name == "application_name");
        if let Some(own) = own.filter(|own| *own != value.as_str()) {
            wanted = strata::SessionSettings::with_setting("application_name", own);
        }
        let value = own.unwrap_or(value.as_str());
        let mut body = Vec::with_capacity(name.len() + value.len() + 2);
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
        hello.extend_from_slice(&frame(b'S', &body));
    }
    let mut key = Vec::with_capacity(8);
    key.extend_from_slice(&client_key.0.to_be_bytes());
    key.extend_from_slice(&client_key.1.to_be_bytes());
    hello.extend_from_slice(&frame(b'K', &key));
    hello.extend_from_slice(&frame(b'Z', b"I"));
    if wr.write_all(&hello).await.is_err() {
        return;
    }
    let mut link = Link {
        shared,
        pools,
        pool,
        client,
        cancel,
        linked: None,
        pinned: None,
        statements: HashMap::new(),
        unnamed: None,
        unnamed_generation: 0,
        next_statement: 0,
        expect: VecDeque::new(),
        pending_syncs: 0,
        since_sync: false,
        status: b'I',
        needs_check: false,
        check_rows: Vec::new(),
        check_failed: false,
        check_error: None,
        close_after: false,
        from_client: BytesMut::with_capacity(8192),
        to_client: BytesMut::with_capacity(8192),
        to_server: BytesMut::with_capacity(8192),
        refusing: None,
        forget_prepared_on_server: false,
        wanted: Arc::new(wanted),
        replaying: None,
        held: None,
        fatal: None,
        verifying: false,
        hold_local: false,
        stale_errors: 0,
    };
    let end = link.run(&mut rd, &mut wr).await;
    link.finish(end, &mut wr).await;
}

impl Link {
    async fn run(&mut self, rd: &mut PipeRead<DuplexStream>, wr: &mut PipeWrite<DuplexStream>) -> End {
        let max = self.shared.config.max_message_bytes + 5;
        loop {
            // Whole client messages first: each may need a server connection. While a
            // connection is being brought to the session's settings, they wait.
            loop {
                if self.waiting() {
                    break;
                }
                if let Some((tag, message)) = self.held.take() {
                    self.client_message(tag, message);
                    continue;
                }
                let message = match take_message(&mut self.from_client, max) {
                    Ok(m) => m,
                    Err(e) => {
                        debug!(error = %e, "bad message from the relay");
                        return End::Client;
                    }
                };
                let Some((tag, message)) = message else { break };
                if tag == b'X' {
                    return End::Client;
                }
                if self.refusing.is_some() {
                    self.refuse(tag);
                    continue;
                }
                if self.linked.is_none() && self.answer_locally(tag, &message) {
                    continue;
                }
                if self.linked.is_none() {
                    let checkout = {
                        let mut checkout = std::pin::pin!(self.pool.checkout(
                            &self.shared.config,
                            &self.pools,
                            &self.wanted
                        ));
                        match std::future::poll_fn(|cx| Poll::Ready(checkout.as_mut().poll(cx))).await {
                            Poll::Ready(c) => {
                                self.hold_local = !self.to_client.is_empty();
                                c
                            }
                            Poll::Pending => {
                                // Answers already made go out before waiting for a connection
                                // (with one at hand, they go with the server's, in one write).
                                if wr.write_all(&self.to_client).await.is_err() {
                                    return End::Client;
                                }
                                self.to_client.clear();
                                checkout.await
                            }
                        }
                    };
                    match checkout {
                        Ok(c) => self.link(c),
                        Err(e) => {
                            self.refused(&e);
                            self.refuse(tag);
                            continue;
                        }
                    }
                }
                if self.waiting() {
                    self.held = Some((tag, message));
                    break;
                }
                self.client_message(tag, message);
            }
            if self.hold_local && self.pending_syncs == 0 {
                // Nothing sent is sure to be answered: the answers go now.
                self.hold_local = false;
            }
            if self.settle() {
                continue;
            }
            let event = {
                let replaying = self.waiting();
                let hold = self.hold_local;
                let Link { linked, from_client, to_client, to_server, .. } = self;
                match linked {
                    Some(checkout) => {
                        let server = checkout.server();
                        tokio::select! {
                            // A message larger than the high-water mark is read whole before it goes on.
                            r = rd.read_buf(from_client), if to_server.len() < HIGH_WATER && !replaying => Event::ClientRead(r),
                            r = server.rd.read_buf(&mut server.rbuf), if to_client.len() < HIGH_WATER => Event::ServerRead(r),
                            r = server.wr.write(to_server), if !to_server.is_empty() => Event::ServerWrote(r),
                            r = wr.write(to_client), if !to_client.is_empty() && !hold => Event::ClientWrote(r),
                        }
                    }
                    None => {
                        tokio::select! {
                            r = rd.read_buf(from_client) => Event::ClientRead(r),
                            r = wr.write(to_client), if !to_client.is_empty() => Event::ClientWrote(r),
                        }
                    }
                }
            };
            match event {
                Event::ClientRead(Ok(0) | Err(_)) => return End::Client,
                Event::ClientRead(Ok(_)) => {}
                Event::ClientWrote(Ok(n)) if n > 0 => {
                    let _ = self.to_client.split_to(n);
                }
                Event::ClientWrote(_) => return End::Client,
                Event::ServerWrote(Ok(n)) if n > 0 => {
                    let _ = self.to_server.split_to(n);
                    if self.to_server.is_empty() {
                        if let Some(c) = &mut self.linked {
                            // TLS may hold the bytes otherwise.
                            if c.server().wr.flush().await.is_err() {
                                return self.server_lost("strata-proxy lost the server connection");
                            }
                        }
                    }
                }
                Event::ServerWrote(_) => return self.server_lost("strata-proxy lost the server connection"),
                Event::ServerRead(Ok(0) | Err(_)) => {
                    return self.server_lost("strata-proxy lost the server connection unexpectedly")
                }
                Event::ServerRead(Ok(_)) => {
                    self.hold_local = false;
                    if let Err(e) = self.server_messages() {
                        if let Some(message) = self.fatal.take() {
                            return self.server_failed(&message, "replay_failed");
                        }
                        return self.server_lost(&format!("strata-proxy: server protocol error: {e}"));
                    }
                }
            }
        }
    }

    /// Whether the client's messages wait for the link's own exchange with the server.
    fn waiting(&self) -> bool {
        self.replaying.is_some() || self.verifying
    }

    /// Takes a checked-out connection; one holding other settings than the client's session
    /// is brought to them first (one round trip, confirmed by reading the state back before any
    /// message of the client goes out).
    fn link(&mut self, mut checkout: Checkout) {
        let server = checkout.server();
        *super::lock(&self.cancel.server) = Some(server.key);
        if *server.applied != *self.wanted {
            let sql = self.pools.watch.replay_query(&self.wanted);
            let mut body = Vec::with_capacity(sql.len() + 1);
            body.extend_from_slice(sql.as_bytes());
            body.push(0);
            self.to_server.extend_from_slice(&frame(b'Q', &body));
            self.expect.push_back(Expect::Sync { check: true });
            self.check_rows.clear();
            self.check_failed = false;
            self.check_error = None;
            // A simple query replaces the unnamed statement.
            server.unnamed = None;
            self.replaying = Some(self.wanted.clone());
        }
        self.status = b'I';
        self.linked = Some(checkout);
    }

    fn unlink(&mut self) -> Option<Checkout> {
        self.hold_local = false;
        *super::lock(&self.cancel.server) = None;
        self.linked.take()
    }

    /// Records why a checkout failed: the current request gets this error at its end.
    fn refused(&mut self, e: &CheckoutError) {
        let (code, message) = e.describe(self.pools.settings.size);
        info!(client = self.client, error = %message, "request refused: no server connection");
        self.refusing = Some(error_response(Severity::Error, &code, &message));
    }

    /// Drops a message of a refused request; its Query or Sync gets the error and ReadyForQuery.
    fn refuse(&mut self, tag: u8) {
        if matches!(tag, b'Q' | b'S' | b'F') {
            if let Some(error) = self.refusing.take() {
                self.to_client.extend_from_slice(&error);
            }
            self.to_client.extend_from_slice(&frame(b'Z', b"I"));
        }
    }

    /// Releases, checks or keeps the linked connection when the server is at rest. Returns
    /// whether it did something that calls for another turn before waiting.
    fn settle(&mut self) -> bool {
        let at_rest = self.linked.is_some()
            && self.pending_syncs == 0
            && !self.since_sync
            && self.status == b'I'
            && self.expect.is_empty()
            && self.to_server.is_empty();
        if !at_rest {
            return false;
        }
        if self.needs_check {
            self.needs_check = false;
            self.check_rows.clear();
            self.check_failed = false;
            self.check_error = None;
            let sql = self.pools.watch.state_query();
            let mut body = Vec::with_capacity(sql.len() + 1);
            body.extend_from_slice(sql.as_bytes());
            body.push(0);
            self.to_server.extend_from_slice(&frame(b'Q', &body));
            self.expect.push_back(Expect::Sync { check: true });
            if let Some(c) = &mut self.linked {
                c.server().unnamed = None;
            }
            return false;
        }
        if self.pinned.is_some() {
            return false;
        }
        if let Some(checkout) = self.unlink() {
            if self.close_after {
                self.close_after = false;
                checkout.close("stale_plan", &self.pools);
            } else {
                checkout.release(&self.pools);
            }
        }
        false
    }

    fn server_lost(&mut self, message: &str) -> End {
        self.server_failed(message, "lost")
    }

    /// Ends the client's session with a FATAL error and closes its connection.
    fn server_failed(&mut self, message: &str, reason: &'static str) -> End {
        self.to_client.extend_from_slice(&error_response(Severity::Fatal, "08006", message));
        if let Some(c) = self.unlink() {
            c.close(reason, &self.pools);
        }
        End::Server
    }

    async fn finish(&mut self, end: End, wr: &mut PipeWrite<DuplexStream>) {
        if let End::Server = end {
            let _ = wr.write_all(&self.to_client).await;
            let _ = wr.shutdown().await;
            return;
        }
        let clean = self.pending_syncs == 0
            && !self.since_sync
            && self.status == b'I'
            && self.expect.is_empty()
            && !self.needs_check
            && self.pinned.is_none();
        if let Some(checkout) = self.unlink() {
            if clean && !self.close_after {
                checkout.release(&self.pools);
            } else {
                // Mid-transaction, or its state not shareable: closing rolls it back and
                // takes the state with it.
                checkout.close("client_left", &self.pools);
            }
        }
        let _ = wr.shutdown().await;
    }

    /// Answers, without a server connection, what needs none outside a transaction: a Parse of
    /// a text with parameter types this pool's server connections already accepted (it is
    /// prepared on whichever connection later runs it; an error it would now give comes with
    /// that Bind), a Close of a statement, a Flush, and a Sync with nothing before it. Drivers
    /// that prepare synchronously (pgbench `-M prepared` runs many clients on one thread)
    /// would otherwise wait for a connection another of their own clients holds.
    fn answer_locally(&mut self, tag: u8, message: &Bytes) -> bool {
        match tag {
            b'S' => {
                self.to_client.extend_from_slice(&frame(b'Z', b"I"));
                true
            }
            b'H' => true,
            b'Q' if !self.statements.is_empty() => {
                let judged = self.pools.watch.judge(cstr_body(message));
                match self.deallocate(judged.deallocates.as_deref(), true) {
                    Deallocate::Local => {
                        self.to_client.extend_from_slice(&frame(b'C', b"DEALLOCATE\0"));
                        self.to_client.extend_from_slice(&frame(b'Z', b"I"));
                        true
                    }
                    _ => false,
                }
            }
            b'C' => {
                let mut r = Reader::new(&message[5..], "Close");
                if let (Ok(b'S'), Ok(name)) = (r.u8(), r.cbytes()) {
                    if name.is_empty() {
                        self.unnamed = None;
                    } else {
                        self.statements.remove(name);
                    }
                }
                // Portals do not outlive a transaction; closing a missing name is no error.
                self.to_client.extend_from_slice(&frame(b'3', &[]));
                true
            }
            b'P' => {
                let mut r = Reader::new(&message[5..], "Parse");
                let (Ok(name), Ok(sql)) = (r.cbytes(), r.cbytes()) else { return false };
                let rest_at = message.len() - r.remaining();
                let key = message.slice(rest_at - sql.len() - 1..);
                if self.statements.contains_key(name) || !self.pool.knows_parse(&key) {
                    return false;
                }
                let judged = self.pools.watch.judge(sql);
                let (may_change, drops_all) = (judged.may_change_session, judged.drops_all_prepared);
                if name.is_empty() {
                    self.unnamed_generation += 1;
                    self.unnamed =
                        Some(Statement::new(String::new(), message.clone(), may_change, drops_all));
                } else {
                    let server_name = format!("strata_{}_{}", self.client, self.next_statement);
                    self.next_statement += 1;
                    let parse = rename_parse(message, &server_name, rest_at, sql);
                    self.statements
                        .insert(name.to_vec(), Statement::new(server_name, parse, may_change, drops_all));
                }
                self.to_client.extend_from_slice(&frame(b'1', &[]));
                true
            }
            _ => false,
        }
    }

    /// Sends one client message to the linked server, renaming statements as needed.
    fn client_message(&mut self, tag: u8, message: Bytes) {
        match tag {
            b'Q' => {
                let judged = self.pools.watch.judge(cstr_body(&message));
                match self.deallocate(judged.deallocates.as_deref(), true) {
                    Deallocate::NotOurs => {}
                    Deallocate::Local => {
                        self.to_client.extend_from_slice(&frame(b'C', b"DEALLOCATE\0"));
                        self.to_client.extend_from_slice(&frame(b'Z', &[self.status]));
                        return;
                    }
                    Deallocate::Rewritten(renamed) => {
                        // The statement under the name the server knows it by.
                        self.pending_syncs += 1;
                        self.since_sync = false;
                        self.expect.push_back(Expect::Sync { check: false });
                        if let Some(c) = &mut self.linked {
                            c.server().unnamed = None;
                        }
                        self.to_server.extend_from_slice(&frame(b'Q', &renamed));
                        return;
                    }
                }
                self.needs_check |= judged.may_change_session;
                if judged.drops_all_prepared {
                    // The client's statements go, and so does everything prepared on this
                    // connection (other clients' too: they are prepared again where needed).
                    self.statements.clear();
                    self.unnamed = None;
                    if let Some(c) = &mut self.linked {
                        c.server().prepared.clear();
                    }
                }
                self.pending_syncs += 1;
                self.since_sync = false;
                self.expect.push_back(Expect::Sync { check: false });
                if let Some(c) = &mut self.linked {
                    // A simple query replaces the unnamed statement.
                    c.server().unnamed = None;
                }
                self.to_server.extend_from_slice(&message);
            }
            b'S' => {
                self.pending_syncs += 1;
                self.since_sync = false;
                self.expect.push_back(Expect::Sync { check: false });
                self.to_server.extend_from_slice(&message);
            }
            b'F' => {
                self.needs_check = true;
                self.pending_syncs += 1;
                self.since_sync = false;
                self.expect.push_back(Expect::Sync { check: false });
                self.to_server.extend_from_slice(&message);
            }
            b'P' => {
                self.since_sync = true;
                self.parse(message);
            }
            b'B' | b'D' => {
                self.since_sync = true;
                self.bind_or_describe(tag, message);
            }
            b'C' => {
                self.since_sync = true;
                self.close(message);
            }
            b'E' | b'H' => {
                self.since_sync = true;
                self.to_server.extend_from_slice(&message);
            }
            // COPY data belongs to the request already counted; anything else the server judges.
            _ => self.to_server.extend_from_slice(&message),
        }
    }

    fn parse(&mut self, message: Bytes) {
        let mut r = Reader::new(&message[5..], "Parse");
        let (Ok(name), Ok(sql)) = (r.cbytes(), r.cbytes()) else {
            // Malformed: the server says so.
            self.expect.push_back(Expect::Parse { name: None, injected: false, key: None });
            self.to_server.extend_from_slice(&message);
            return;
        };
        let rest_at = message.len() - r.remaining();
        let judged = self.pools.watch.judge(sql);
        let (may_change, drops_all) = (judged.may_change_session, judged.drops_all_prepared);
        if name.is_empty() {
            if let Deallocate::Rewritten(renamed) = self.deallocate(judged.deallocates.as_deref(), false) {
                // `DEALLOCATE name` as an unnamed statement: under the name the server knows.
                let mut body = Vec::with_capacity(message.len() + 32);
                body.push(0);
                body.extend_from_slice(&renamed);
                body.extend_from_slice(&message[rest_at..]);
                let message = frame(b'P', &body);
                let sql_len = renamed.len() - 1;
                return self.parse_unnamed(message, 5 + 1 + sql_len + 1, sql_len, false, false);
            }
            let sql_len = sql.len();
            return self.parse_unnamed(message, rest_at, sql_len, may_change, drops_all);
        }
        if let Some(existing) = self.statements.get(name) {
            // PostgreSQL refuses a second Parse of a name in use: make sure the server has the
            // first, so that it does.
            let server_name = existing.server_name.clone();
            self.ensure_prepared(name, false);
            let renamed = rename_parse(&message, &server_name, rest_at, sql);
            self.expect.push_back(Expect::Parse { name: None, injected: false, key: None });
            self.to_server.extend_from_slice(&renamed);
            return;
        }
        let server_name = format!("strata_{}_{}", self.client, self.next_statement);
        self.next_statement += 1;
        let renamed = rename_parse(&message, &server_name, rest_at, sql);
        if let Some(c) = &mut self.linked {
            let server = c.server();
            server.tick += 1;
            server.prepared.insert(server_name.clone(), server.tick);
        }
        self.expect.push_back(Expect::Parse {
            name: Some(server_name.clone()),
            injected: false,
            key: Some(message.slice(rest_at - sql.len() - 1..)),
        });
        self.to_server.extend_from_slice(&renamed);
        self.describe(name.to_vec(), &server_name, false);
        self.statements.insert(name.to_vec(), Statement::new(server_name, renamed, may_change, drops_all));
        self.evict();
    }

    /// Sends a Parse of the unnamed statement (`rest_at`: where the parameter types start in the
    /// message; `sql_len`: the text's length before it).
    fn parse_unnamed(
        &mut self,
        message: Bytes,
        rest_at: usize,
        sql_len: usize,
        may_change: bool,
        drops_all: bool,
    ) {
        self.unnamed_generation += 1;
        self.unnamed = Some(Statement::new(String::new(), message.clone(), may_change, drops_all));
        let (client, generation) = (self.client, self.unnamed_generation);
        if let Some(c) = &mut self.linked {
            c.server().unnamed = Some((client, generation));
        }
        let key = message.slice(rest_at - sql_len - 1..);
        self.expect.push_back(Expect::Parse { name: None, injected: false, key: Some(key) });
        self.to_server.extend_from_slice(&message);
    }

    /// A text of one `DEALLOCATE name` (`name`, as judged) naming one of the client's
    /// protocol-level statements:
    /// the server knows it under the link's name. Rewritten to that name when the linked server
    /// has it (or, in the extended protocol, once it is prepared there again); answered by the
    /// link when no server has to be asked (no connection, or nothing in flight on it);
    /// otherwise left to the server.
    fn deallocate(&mut self, name: Option<&str>, simple: bool) -> Deallocate {
        let Some(name) = name else { return Deallocate::NotOurs };
        let Some(statement) = self.statements.get(name.as_bytes()) else { return Deallocate::NotOurs };
        let server_name = statement.server_name.clone();
        let at_rest = self.expect.is_empty() && self.to_server.is_empty() && self.status != b'E';
        let on_server = self.linked.as_mut().map(|c| c.server().prepared.contains_key(&server_name));
        let outcome = match on_server {
            Some(true) => Deallocate::Rewritten(deallocate_text(&server_name)),
            Some(false) if !simple => {
                self.ensure_prepared(name.as_bytes(), false);
                Deallocate::Rewritten(deallocate_text(&server_name))
            }
            Some(false) if at_rest => Deallocate::Local,
            None => Deallocate::Local,
            Some(false) => return Deallocate::NotOurs,
        };
        self.statements.remove(name.as_bytes());
        if let Some(c) = &mut self.linked {
            c.server().prepared.remove(&server_name);
        }
        outcome
    }

    /// Prepares a client statement on the linked server if it lacks it (the ParseComplete goes
    /// nowhere), and describes it there: the first time to record its result's shape, later
    /// (when `verify`) to compare the new preparation's shape with it before the client's
    /// message goes out ([`waiting`](Link::waiting) until the answer is in).
    fn ensure_prepared(&mut self, name: &[u8], verify: bool) {
        let Some(statement) = self.statements.get(name) else { return };
        let recorded = statement.shape.is_some();
        let Some(c) = &mut self.linked else { return };
        let server = c.server();
        server.tick += 1;
        let tick = server.tick;
        if let Some(used) = server.prepared.get_mut(&statement.server_name) {
            *used = tick;
            return;
        }
        server.prepared.insert(statement.server_name.clone(), tick);
        let server_name = statement.server_name.clone();
        self.expect.push_back(Expect::Parse { name: Some(server_name.clone()), injected: true, key: None });
        self.to_server.extend_from_slice(&statement.parse);
        if !recorded || verify {
            self.describe(name.to_vec(), &server_name, recorded);
        }
        self.evict();
    }

    /// Describes a client statement right after its Parse (the answers go nowhere): records its
    /// shape, or with `verify` compares it and holds the client's messages until then.
    fn describe(&mut self, statement: Vec<u8>, server_name: &str, verify: bool) {
        let mut body = Vec::with_capacity(server_name.len() + 2);
        body.push(b'S');
        body.extend_from_slice(server_name.as_bytes());
        body.push(0);
        self.to_server.extend_from_slice(&frame(b'D', &body));
        self.expect.push_back(Expect::Describe { statement, verify });
        if verify {
            // The answer now, not at the client's Sync.
            self.to_server.extend_from_slice(&frame(b'H', &[]));
            self.verifying = true;
        }
    }

    /// Closes the least recently used statements of the linked server past the limit.
    fn evict(&mut self) {
        let limit = self.pools.settings.max_prepared_statements.max(1);
        let Some(c) = &mut self.linked else { return };
        let server = c.server();
        while server.prepared.len() > limit {
            let Some(oldest) = server.prepared.iter().min_by_key(|(_, t)| **t).map(|(n, _)| n.clone()) else {
                break;
            };
            server.prepared.remove(&oldest);
            let mut body = Vec::with_capacity(oldest.len() + 2);
            body.push(b'S');
            body.extend_from_slice(oldest.as_bytes());
            body.push(0);
            self.to_server.extend_from_slice(&frame(b'C', &body));
            self.expect.push_back(Expect::Close { injected: true });
        }
    }

    fn bind_or_describe(&mut self, tag: u8, message: Bytes) {
        let mut r = Reader::new(&message[5..], "Bind");
        let statement = if tag == b'B' {
            let (Ok(_portal), Ok(statement)) = (r.cbytes(), r.cbytes()) else {
                self.to_server.extend_from_slice(&message);
                return;
            };
            statement
        } else {
            match (r.u8(), r.cbytes()) {
                (Ok(b'S'), Ok(statement)) => statement,
                _ => {
                    self.to_server.extend_from_slice(&message);
                    return;
                }
            }
        };
        if statement.is_empty() {
            let generation = (self.client, self.unnamed_generation);
            if let Some(unnamed) = &self.unnamed {
                if tag == b'B' {
                    self.needs_check |= unnamed.may_change;
                    if unnamed.drops_all {
                        self.forget_prepared_on_server = true;
                    }
                }
                if let Some(c) = &mut self.linked {
                    let server = c.server();
                    if server.unnamed != Some(generation) {
                        server.unnamed = Some(generation);
                        self.expect.push_back(Expect::Parse { name: None, injected: true, key: None });
                        self.to_server.extend_from_slice(&unnamed.parse);
                    }
                }
            } else if tag == b'B' {
                self.needs_check = true;
            }
            self.to_server.extend_from_slice(&message);
            self.forget_if_dropped();
            return;
        }
        let Some(known) = self.statements.get(statement) else {
            // Unknown to us (the server says so), or SQL-level prepared (that pins anyway).
            self.needs_check |= tag == b'B';
            self.to_server.extend_from_slice(&message);
            return;
        };
        if tag == b'B' && known.stale {
            // As PostgreSQL answers a Bind of a statement whose result type changed: the Bind of
            // a statement that does not exist fails and skips to the Sync, and its error is
            // replaced on the way back.
            let mut body = Vec::with_capacity(message.len());
            let statement_end = message.len() - r.remaining();
            let statement_start = statement_end - statement.len() - 1;
            body.extend_from_slice(&message[5..statement_start]);
            body.extend_from_slice(STALE_STATEMENT.as_bytes());
            body.push(0);
            body.extend_from_slice(&message[statement_end..]);
            self.to_server.extend_from_slice(&frame(tag, &body));
            self.stale_errors += 1;
            return;
        }
        if tag == b'B' {
            self.needs_check |= known.may_change;
            if known.drops_all {
                self.forget_prepared_on_server = true;
            }
        }
        let server_name = known.server_name.clone();
        self.ensure_prepared(statement, true);
        if self.verifying {
            // Sent once the new preparation is found to have the statement's shape.
            self.held = Some((tag, message));
            return;
        }
        let statement_end = message.len() - r.remaining();
        let statement_start = statement_end - statement.len() - 1;
        let mut body = Vec::with_capacity(message.len() + 16);
        body.extend_from_slice(&message[5..statement_start]);
        body.extend_from_slice(server_name.as_bytes());
        body.push(0);
        body.extend_from_slice(&message[statement_end..]);
        self.to_server.extend_from_slice(&frame(tag, &body));
        self.forget_if_dropped();
    }

    /// After a Bind of `DISCARD ALL` or `DEALLOCATE ALL` went out: nothing prepared on this
    /// connection can be counted on (the client's own statements stay known to the link, which
    /// prepares them again where needed).
    fn forget_if_dropped(&mut self) {
        if std::mem::take(&mut self.forget_prepared_on_server) {
            if let Some(c) = &mut self.linked {
                let server = c.server();
                server.prepared.clear();
                server.unnamed = None;
            }
        }
    }

    fn close(&mut self, message: Bytes) {
        let mut r = Reader::new(&message[5..], "Close");
        self.expect.push_back(Expect::Close { injected: false });
        match (r.u8(), r.cbytes()) {
            (Ok(b'S'), Ok(name)) if !name.is_empty() => {
                let Some(statement) = self.statements.remove(name) else {
                    self.to_server.extend_from_slice(&message);
                    return;
                };
                if let Some(c) = &mut self.linked {
                    c.server().prepared.remove(&statement.server_name);
                }
                let mut body = Vec::with_capacity(statement.server_name.len() + 2);
                body.push(b'S');
                body.extend_from_slice(statement.server_name.as_bytes());
                body.push(0);
                self.to_server.extend_from_slice(&frame(b'C', &body));
            }
            (Ok(b'S'), Ok(_)) => {
                self.unnamed = None;
                if let Some(c) = &mut self.linked {
                    c.server().unnamed = None;
                }
                self.to_server.extend_from_slice(&message);
            }
            _ => self.to_server.extend_from_slice(&message),
        }
    }

    /// Handles the whole messages the server sent.
    fn server_messages(&mut self) -> Result<(), String> {
        loop {
            let Some(c) = &mut self.linked else { return Ok(()) };
            let Some((tag, message)) = take_message(&mut c.server().rbuf, usize::MAX >> 2)? else {
                return Ok(());
            };
            if matches!(self.expect.front(), Some(Expect::Sync { check: true })) {
                self.check_message(tag, &message)?;
                continue;
            }
            if matches!(self.expect.front(), Some(Expect::Describe { .. })) {
                match tag {
                    b't' => continue,
                    b'T' | b'n' => {
                        if let Some(Expect::Describe { statement, verify }) = self.expect.pop_front() {
                            self.described(&statement, verify, shape_of(tag, &message)?);
                        }
                        continue;
                    }
                    _ => {}
                }
            }
            if tag == b'E'
                && self.verifying
                && matches!(
                    self.expect.front(),
                    Some(Expect::Describe { .. } | Expect::Parse { injected: true, .. })
                )
            {
                // The new preparation (or a message before it) failed: the server skips to
                // the client's Sync, so nothing is left to wait for.
                self.verifying = false;
            }
            match tag {
                b'1' => match self.expect.pop_front() {
                    Some(Expect::Parse { injected, key, .. }) => {
                        if let Some(key) = key {
                            self.pool.learn_parse(key);
                        }
                        if !injected {
                            self.to_client.extend_from_slice(&message);
                        }
                    }
                    _ => return Err("an unexpected ParseComplete".to_owned()),
                },
                b'3' => match self.expect.pop_front() {
                    Some(Expect::Close { injected }) => {
                        if !injected {
                            self.to_client.extend_from_slice(&message);
                        }
                    }
                    _ => return Err("an unexpected CloseComplete".to_owned()),
                },
                b'Z' => {
                    self.ready(&message)?;
                    self.to_client.extend_from_slice(&message);
                }
                b'S' => {
                    // A reported setting changed: the session's state is read before sharing.
                    self.needs_check = true;
                    self.to_client.extend_from_slice(&message);
                }
                b'E' if self.stale_errors > 0
                    && error_fields(&message[5..]).0.as_deref() == Some("26000") =>
                {
                    self.stale_errors -= 1;
                    self.to_client.extend_from_slice(&error_response(
                        Severity::Error,
                        "0A000",
                        "cached plan must not change result type",
                    ));
                }
                b'E' => {
                    let (code, text) = error_fields(&message[5..]);
                    if code.as_deref() == Some("0A000")
                        && text
                            .as_deref()
                            .is_some_and(|t| t.contains("cached plan must not change result type"))
                    {
                        // Statements prepared before a schema change: this connection's go.
                        self.close_after = true;
                    }
                    self.to_client.extend_from_slice(&message);
                }
                _ => self.to_client.extend_from_slice(&message),
            }
        }
    }

    /// A ReadyForQuery: what was owed up to the Sync is settled (messages skipped after an
    /// error owe nothing, and statements they would have prepared do not exist).
    fn ready(&mut self, message: &[u8]) -> Result<(), String> {
        let status = *message.get(5).ok_or("a short ReadyForQuery")?;
        loop {
            match self.expect.pop_front() {
                Some(Expect::Sync { .. }) => break,
                Some(Expect::Parse { name, .. }) => {
                    if let Some(c) = &mut self.linked {
                        let server = c.server();
                        match name {
                            Some(n) => {
                                server.prepared.remove(&n);
                            }
                            None => server.unnamed = None,
                        }
                    }
                }
                Some(Expect::Close { .. }) => {}
                Some(Expect::Describe { verify, .. }) => {
                    if verify {
                        self.verifying = false;
                    }
                }
                None => return Err("an unexpected ReadyForQuery".to_owned()),
            }
        }
        self.pending_syncs = self.pending_syncs.saturating_sub(1);
        self.status = status;
        Ok(())
    }

    /// The link's own Describe of a client statement was answered with `shape`.
    fn described(&mut self, statement: &[u8], verify: bool, shape: Bytes) {
        if verify {
            self.verifying = false;
        }
        let client = self.client;
        let Some(known) = self.statements.get_mut(statement) else { return };
        match &known.shape {
            None => known.shape = Some(shape),
            Some(recorded) if *recorded != shape => {
                info!(client, "a statement prepared again has another result shape: its Binds fail as PostgreSQL's would");
                known.stale = true;
            }
            Some(_) => {}
        }
    }

    /// A message answering the link's own state read.
    fn check_message(&mut self, tag: u8, message: &[u8]) -> Result<(), String> {
        match tag {
            // A replay's set_config results come before the state read's rows.
            b'T' => self.check_rows.clear(),
            b'D' => self.check_rows.push(data_row(message)?),
            b'E' => {
                if self.check_error.is_none() {
                    self.check_error = crate::protocol::error_message(&message[5..]);
                }
                self.check_failed = true;
            }
            b'Z' => {
                self.expect.pop_front();
                self.status = *message.get(5).ok_or("a short ReadyForQuery")?;
                let rows = std::mem::take(&mut self.check_rows);
                let outcome = match &mut self.linked {
                    Some(c) if !self.check_failed => {
                        self.pools.watch.settings_between(&c.server().baseline, &rows)
                    }
                    _ => Err(strata::StateDifference::Unreadable),
                };
                let error = self.check_error.take();
                let metrics = self.pools.metrics();
                if let Some(target) = self.replaying.take() {
                    return match outcome {
                        Ok(got) if got == *target && self.status == b'I' => {
                            metrics.replays.with_label_values(&["ok"]).inc();
                            if let Some(c) = &mut self.linked {
                                c.server().applied = target;
                            }
                            Ok(())
                        }
                        _ => {
                            metrics.replays.with_label_values(&["failed"]).inc();
                            self.pools.watch.refuse_replay(&target);
                            let names = target.names().join(", ");
                            let why = error.unwrap_or_else(|| "the settings read back differ".to_owned());
                            info!(client = self.client, settings = %names, error = %why, "session settings could not be replayed");
                            self.fatal = Some(format!(
                                "strata-proxy could not bring a pooled server connection to this session's settings ({names}): {why}"
                            ));
                            Err("replay failed".to_owned())
                        }
                    };
                }
                match outcome {
                    Ok(wanted) => {
                        metrics
                            .state_checks
                            .with_label_values(&[if wanted.is_empty() { "same" } else { "replayable" }])
                            .inc();
                        if *self.wanted != wanted {
                            self.wanted = Arc::new(wanted);
                        }
                        if let Some(c) = &mut self.linked {
                            c.server().applied = self.wanted.clone();
                        }
                        if self.pinned.take().is_some() {
                            debug!(
                                client = self.client,
                                "session state undone: the client is no longer pinned"
                            );
                        }
                    }
                    Err(difference) => {
                        metrics.state_checks.with_label_values(&["differs"]).inc();
                        if self.pinned.is_none() {
                            metrics.pinned.with_label_values(&[difference.as_str()]).inc();
                            debug!(
                                client = self.client,
                                reason = difference.as_str(),
                                "client pinned to its server connection"
                            );
                        }
                        self.pinned = Some(difference);
                    }
                }
            }
            // A notification is the listening client's, whenever it comes (the server delivers
            // one that committed while the read ran before the read's ReadyForQuery).
            b'A' => self.to_client.extend_from_slice(message),
            // Row descriptions, command tags, notices and parameter reports of the read itself.
            _ => {}
        }
        Ok(())
    }
}

/// A statement name the link never prepares: a Bind of it fails with 26000.
const STALE_STATEMENT: &str = "strata_stale_statement";

/// What PostgreSQL compares when it revalidates a prepared statement's result: each column's
/// name, type, length and modifier, in order (RowDescription without the source table, column
/// number and format), or no result (NoData).
fn shape_of(tag: u8, message: &[u8]) -> Result<Bytes, String> {
    if tag == b'n' {
        return Ok(Bytes::from_static(b"n"));
    }
    let mut r = Reader::new(message.get(5..).unwrap_or_default(), "RowDescription");
    let fields = r.i16().map_err(|e| e.0)?;
    let mut shape = Vec::with_capacity(message.len());
    shape.push(b'T');
    for _ in 0..fields {
        let name = r.cbytes().map_err(|e| e.0)?;
        shape.extend_from_slice(name);
        shape.push(0);
        let (_table, _column) = (r.i32().map_err(|e| e.0)?, r.i16().map_err(|e| e.0)?);
        let ty = r.i32().map_err(|e| e.0)?;
        let len = r.i16().map_err(|e| e.0)?;
        let modifier = r.i32().map_err(|e| e.0)?;
        let _format = r.i16().map_err(|e| e.0)?;
        shape.extend_from_slice(&ty.to_be_bytes());
        shape.extend_from_slice(&len.to_be_bytes());
        shape.extend_from_slice(&modifier.to_be_bytes());
    }
    Ok(Bytes::from(shape))
}

/// What becomes of a client's `DEALLOCATE name`.
enum Deallocate {
    /// Not one of the client's protocol-level statements (or it must go as it is).
    NotOurs,
    /// The link answers it.
    Local,
    /// This text (NUL-terminated) goes to the server instead.
    Rewritten(Vec<u8>),
}

/// `DEALLOCATE "name"` for a name the link made (letters, digits, underscores), NUL-terminated.
fn deallocate_text(server_name: &str) -> Vec<u8> {
    format!("DEALLOCATE \"{server_name}\"\0").into_bytes()
}

/// The text of a message whose body is one C string (Query).
fn cstr_body(message: &[u8]) -> &[u8] {
    let body = message.get(5..).unwrap_or_default();
    body.split(|b| *b == 0).next().unwrap_or_default()
}

/// A Parse message with another statement name.
fn rename_parse(message: &[u8], name: &str, rest_at: usize, sql: &[u8]) -> Bytes {
    let mut body = Vec::with_capacity(message.len() + name.len());
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(sql);
    body.push(0);
    body.extend_from_slice(&message[rest_at..]);
    frame(b'P', &body)
}
