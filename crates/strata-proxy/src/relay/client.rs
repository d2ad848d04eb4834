//! Client → upstream: frames grouped into requests (a `Query`, an extended batch through `Sync`,
//! a `FunctionCall`), lookups and replays, the statement maps that keep the upstream able to run
//! what was answered from cache, and the cache's verification query sent on the session's
//! connection.

use super::capture::Capturing;
use super::*;

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
    /// The cache's answer to the batch as it stood at its last `Execute` (plus a `Sync`), and
    /// how many messages it had then: replayed if the `Sync` comes next.
    probe_hit: Option<(Bytes, usize)>,
    /// The batch went upstream at an `Execute` with a fill ticket for it as it stood then (plus a
    /// `Sync`): recorded if the `Sync` comes next.
    fill_at: Option<usize>,
    /// An `Execute` is held that the cache has not been asked about: PostgreSQL would run it as
    /// soon as it arrived, so it is held no longer than the client's pipelined bytes last.
    unprobed: bool,
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

/// Prepared statements or portals by name. The names are the client's own, and a session's maps
/// hold only what it created, so a fast hash does here.
type ByName<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Initial capacity of a batch's copy of its client bytes.
const WIRE_START_BYTES: usize = 256;

pub(super) struct ClientSide {
    session: Arc<Session>,
    rd: ReadHalf,
    up: WriteHalf,
    buf: BytesMut,
    out: BytesMut,
    active: bool,
    /// Prepared statements as the client sees them.
    statements: ByName<Arc<PreparedStatement>>,
    /// Prepared statements as the upstream server has them (differ after cache replays).
    upstream_statements: ByName<Arc<PreparedStatement>>,
    portals: ByName<Option<Arc<PreparedStatement>>>,
    open: Option<OpenBatch>,
    /// Statements the client closed in replayed batches that the server still has; closed
    /// upstream at the start of the next forwarded extended batch.
    orphans: Vec<String>,
    /// Cached once the server's first ReadyForQuery has been seen.
    ready: bool,
    /// SCRAM channel binding cannot hold end to end on this session (see `screen_auth`).
    binding_mismatch: bool,
}

enum Flow {
    Continue,
    Terminate,
}

impl ClientSide {
    pub(super) fn new(
        session: Arc<Session>,
        rd: ReadHalf,
        up: WriteHalf,
        active: bool,
        binding_mismatch: bool,
    ) -> Self {
        Self {
            session,
            rd,
            up,
            buf: BytesMut::with_capacity(16 * 1024),
            out: BytesMut::with_capacity(16 * 1024),
            active,
            statements: ByName::default(),
            upstream_statements: ByName::default(),
            portals: ByName::default(),
            open: None,
            orphans: Vec::new(),
            ready: false,
            binding_mismatch,
        }
    }

    pub(super) async fn run(mut self) -> ClientEnd {
        match self.pump().await {
            Ok(end) => end,
            Err(end) => {
                if matches!(end, ClientEnd::Malformed(_)) {
                    // Tell the server we are leaving rather than dropping the socket mid-protocol.
                    let _ = send(&mut self.up, &frame(b'X', &[])).await;
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
            // The client sent all it had: an Execute still held is decided on now rather than
            // waiting for a Sync that a pipelining client may never send.
            if self.open.as_ref().is_some_and(|o| o.unprobed && !o.forwarding) {
                if let Some(open) = self.open.take() {
                    self.probe_held(open).await?;
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
            send(&mut self.up, &self.out).await.map_err(ClientEnd::UpstreamWrite)?;
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
            if self.binding_mismatch && tag == b'p' {
                screen_auth(&msg)?;
            }
            self.out.extend_from_slice(&msg);
            if tag == b'X' {
                self.session.terminated.store(true, Ordering::Release);
                return Ok(Now::Done(Flow::Terminate));
            }
            return Ok(Now::Done(Flow::Continue));
        }
        if !self.active {
            check_shape(tag, &msg[5..]).map_err(ClientEnd::Malformed)?;
            return Ok(Now::Done(self.pass_through(tag, &msg)));
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
                self.session.terminated.store(true, Ordering::Release);
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

    /// Without a cache, a message goes upstream as it came: nothing is decoded (its shape was
    /// checked by `check_shape`), only where requests begin and end is kept (a Query, a
    /// FunctionCall, an extended batch through its Sync each wait for one ReadyForQuery), so
    /// the session's idle and in-flight tracking stays exact.
    fn pass_through(&mut self, tag: u8, msg: &[u8]) -> Flow {
        let metrics = &self.session.shared.metrics;
        let mut flow = Flow::Continue;
        match tag {
            b'Q' => {
                metrics.requests_simple.inc();
                // Inside an unfinished extended batch, one ReadyForQuery answers both.
                if self.open.take().is_none() {
                    self.push_closed_opt(None, None);
                }
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' if self.open.is_none() => {
                self.open = Some(OpenBatch { forwarding: true, ..OpenBatch::default() });
                self.push_closed_opt(None, None);
            }
            b'S' => {
                metrics.requests_extended.inc();
                if self.open.take().is_none() {
                    self.push_closed_opt(None, None);
                }
            }
            b'F' => {
                metrics.requests_function.inc();
                self.push_closed_opt(None, None);
            }
            b'X' => {
                self.session.terminated.store(true, Ordering::Release);
                flow = Flow::Terminate;
            }
            // CopyData, CopyDone, CopyFail and anything else belong to the request in flight.
            _ => {}
        }
        self.out.extend_from_slice(msg);
        flow
    }

    async fn on_query(&mut self, msg: Bytes) -> Result<(), ClientEnd> {
        let mut reader = Reader::new(&msg[5..], "Query");
        let bytes = reader.cbytes().map_err(ClientEnd::Malformed)?;
        self.session.shared.metrics.requests_simple.inc();
        // Bytes after the terminator make PostgreSQL refuse the message: it is relayed for the
        // server to answer, never keyed on the part before them.
        let sql = if reader.is_empty() && self.active {
            exact_text(bytes, self.reads_exactly(bytes))
        } else {
            None
        };
        if let (Some(text), Some(cache)) = (&sql, self.session.cache.as_deref()) {
            // PostgreSQL refuses this text, so answering it here breaks no client; only when
            // nothing is in flight, so the answer comes in order.
            if crate::console::is_explain_last(text) && self.nothing_pending() {
                let mut out = crate::console::encode(&cache.last_statement());
                let status = self.session.state().view.transaction_status();
                out.extend_from_slice(&crate::console::ready(status));
                let mut client = self.session.client_out.lock().await;
                return send(&mut client.w, &out).await.map_err(|_| ClientEnd::ClientWrite);
            }
        }
        let dropped = match &sql {
            Some(sql) => self.dropped(sql),
            // Which statements an unreadable text drops is unknown: forget them all (the proxy
            // then relays what uses them without replaying or preparing).
            None if self.active => Dropped::All,
            None => Dropped::Nothing,
        };
        apply_dropped(&dropped, &mut self.statements);
        // A simple Query destroys the unnamed statement.
        self.statements.remove("");
        let request = self.active.then(|| {
            let kind = match sql {
                Some(sql) => RequestKind::Simple { sql },
                None => RequestKind::Undecodable,
            };
            Request::new(kind, msg.clone())
        });
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
            let capture = match (&request, self.session.cache.as_deref()) {
                (Some(Request { kind: RequestKind::Simple { sql }, .. }), Some(cache)) => cache.capture(sql),
                _ => None,
            };
            self.push_closed_opt(request, fill);
            if let Some(capture) = capture {
                if let Some(entry) = self.session.state().in_flight.back_mut() {
                    entry.capture = Some(Capturing::new(capture, &[]));
                }
            }
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

    /// Whether `text` can be read exactly as PostgreSQL will read it, by the settings the server
    /// last reported: a client encoding that [`encoding_reads_exactly`], and no backslash while
    /// `standard_conforming_strings` is off (PostgreSQL then reads `\'` in a string as a quote,
    /// the parser here as the string's end, so the two would see other statements in the text).
    ///
    /// A text with a backslash is read only when nothing runs before it that could turn the
    /// setting off first: no request in flight and no `Execute` in the batch being built (the
    /// server's report of a new value would come too late).
    fn reads_exactly(&self, text: &[u8]) -> bool {
        let st = self.session.state();
        if !encoding_reads_exactly(st.view.server_parameter("client_encoding")) {
            return false;
        }
        if !text.contains(&b'\\') {
            return true;
        }
        let executes_first = self
            .open
            .as_ref()
            .is_some_and(|o| o.messages.iter().any(|m| matches!(m, ExtendedMessage::Execute { .. })));
        st.view.server_parameter("standard_conforming_strings") != Some("off")
            && st.in_flight.is_empty()
            && !executes_first
    }

    /// Whether nothing is in flight and every response is written.
    fn nothing_pending(&self) -> bool {
        let st = self.session.state();
        st.in_flight.is_empty() && !st.response_unwritten && self.open.is_none()
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
        send(&mut out.w, &bytes).await.map_err(|_| ClientEnd::ClientWrite)
    }

    fn push_closed(&mut self, request: Request, fill: Option<Fill>) {
        self.push_closed_opt(self.active.then_some(request), fill);
    }

    fn push_closed_opt(&mut self, request: Option<Request>, fill: Option<Fill>) {
        self.set_busy();
        let mut st = self.session.state();
        let recording = fill.as_ref().map(|_| Recording::new(self.session.shared.recording_budget.clone()));
        st.in_flight.push_back(InFlight { request, fill, recording, ..InFlight::default() });
    }

    /// Sends a held batch upstream now (a Flush, a non-extended message, or too much held).
    fn release_open(&mut self) {
        self.release_open_with(None);
    }

    /// Sends a held batch upstream now; its answer is recorded for `fill` if the batch turns out
    /// to be the one the ticket was taken for.
    fn release_open_with(&mut self, fill: Option<Fill>) {
        let Some(mut open) = self.open.take() else { return };
        if !open.forwarding {
            open.forwarding = true;
            self.set_busy();
            let recording =
                fill.as_ref().map(|_| Recording::new(self.session.shared.recording_budget.clone()));
            self.session.state().in_flight.push_back(InFlight { fill, recording, ..InFlight::default() });
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
        let mut open = match self.open.take() {
            Some(open) => open,
            None => {
                let mut open = OpenBatch::default();
                // Nothing is held back where no lookup can follow: in a transaction, or behind
                // requests still running (PostgreSQL would run these messages as they come).
                if self.active {
                    let st = self.session.state();
                    open.forwarding =
                        !(st.in_flight.is_empty() && st.view.transaction_status() == TransactionStatus::Idle);
                    if open.forwarding {
                        drop(st);
                        self.set_busy();
                        self.session.state().in_flight.push_back(InFlight::default());
                    }
                }
                open
            }
        };
        let (decoded, fresh) = self.decode_extended(tag, &msg, &mut open).map_err(ClientEnd::Malformed)?;
        let stmt = match &decoded {
            ExtendedMessage::Parse(s) => Some(s.clone()),
            ExtendedMessage::Bind(b) => b.statement.clone(),
            ExtendedMessage::Describe(Target::Statement(_, s)) => s.clone(),
            ExtendedMessage::Execute { statement, .. } => statement.clone(),
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
                // Recorded only if it is the batch the fill ticket was taken for: the Sync came
                // right after the Execute that went upstream with it.
                let recorded =
                    open.fill_at.is_some_and(|at| at + 1 == open.messages.len()) && !open.duplicate_parse;
                let request = self.active.then(|| {
                    Request::new(RequestKind::Extended { messages: open.messages }, open.wire.freeze())
                });
                let mut st = self.session.state();
                if let Some(entry) = st.in_flight.back_mut() {
                    entry.request = request.map(|mut r| {
                        r.replayable &= recorded;
                        r
                    });
                }
            } else {
                self.open = Some(open);
            }
            return Ok(None);
        }
        // Held until the cache has decided: an Execute asks it at once.
        let is_execute = matches!(open.messages.last(), Some(ExtendedMessage::Execute { .. }));
        open.held_bytes += msg.len();
        open.held.push((msg, stmt, fresh));
        if is_sync {
            return Ok(Some(HeldBatch(open)));
        }
        open.unprobed |= is_execute;
        self.open = Some(open);
        if is_flush || self.open.as_ref().is_some_and(|o| o.held_bytes > MAX_HELD_BYTES) {
            self.release_open();
        }
        Ok(None)
    }

    /// Asks the cache about a held batch: at an Execute, whether it could answer the batch if a
    /// Sync came next (else the batch goes upstream now); at the Sync, replays a hit or sends the
    /// batch upstream.
    async fn finish_held(&mut self, held: HeldBatch) -> Result<(), ClientEnd> {
        let HeldBatch(mut open) = held;
        self.session.shared.metrics.requests_extended.inc();
        if let Some((bytes, at)) = open.probe_hit.take() {
            if at + 1 == open.messages.len() {
                // Only the Sync came after the Execute the cache answered: that answer stands.
                let messages = std::mem::take(&mut open.messages);
                return self.replay_batch(&messages, bytes).await;
            }
        }
        let request = Request::new(
            RequestKind::Extended { messages: std::mem::take(&mut open.messages) },
            std::mem::take(&mut open.wire).freeze(),
        );
        let request = if !open.duplicate_parse { request } else { Request { replayable: false, ..request } };
        let mut fill = None;
        match self.lookup(&request).await? {
            Some(Lookup::Hit(bytes)) => {
                let messages = match request.kind {
                    RequestKind::Extended { messages } => messages,
                    _ => Vec::new(),
                };
                return self.replay_batch(&messages, bytes).await;
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

    /// Replays the answer to a held batch; statements it closed stay on the server until the next
    /// batch that goes upstream closes them there.
    async fn replay_batch(&mut self, messages: &[ExtendedMessage], bytes: Bytes) -> Result<(), ClientEnd> {
        for m in messages {
            if let ExtendedMessage::Close(Target::Statement(name, _)) = m {
                if self.upstream_statements.remove(name).is_some() && !name.is_empty() {
                    self.orphans.push(name.clone());
                }
            }
        }
        self.replay(bytes).await
    }

    /// When the client has sent all it had and a held batch has an Execute the cache was not asked
    /// about: if the cache could answer the batch with a Sync next, keep holding (PostgreSQL
    /// would not send a successful answer before a Sync or Flush either); otherwise send
    /// everything held upstream now, with the fill ticket when there is one.
    async fn probe_held(&mut self, mut open: OpenBatch) -> Result<(), ClientEnd> {
        open.unprobed = false;
        // The probe borrows the batch's messages (plus a Sync) and gives them back: no copy.
        let mut messages = std::mem::take(&mut open.messages);
        messages.push(ExtendedMessage::Sync);
        let probe = Request::new(RequestKind::Extended { messages }, Bytes::new());
        let probe = if open.duplicate_parse { Request { replayable: false, ..probe } } else { probe };
        let found = self.lookup(&probe).await;
        if let RequestKind::Extended { mut messages } = probe.kind {
            messages.pop();
            open.messages = messages;
        }
        let found = found?;
        match found {
            Some(Lookup::Hit(bytes)) => {
                open.probe_hit = Some((bytes, open.messages.len()));
                self.open = Some(open);
            }
            Some(Lookup::Miss(fill)) => {
                open.fill_at = Some(open.messages.len());
                self.open = Some(open);
                self.release_open_with(Some(fill));
            }
            Some(Lookup::Bypass | Lookup::Verify(_)) | None => {
                self.open = Some(open);
                self.release_open();
            }
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
                let text = r.cbytes()?;
                let n = r.count()?;
                let mut types = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    types.push(r.u32()?);
                }
                let stmt = match exact_text(text, self.reads_exactly(text)) {
                    Some(sql) => PreparedStatement::new(name.clone(), Arc::from(sql), types),
                    None => {
                        let lossy = String::from_utf8_lossy(text);
                        PreparedStatement::inexact(name.clone(), Arc::from(lossy.as_ref()), types)
                    }
                };
                let stmt = Arc::new(stmt);
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
                // A format code the server refuses: the Bind is relayed for the server to answer,
                // and nothing is keyed on its portal.
                let known = param_formats.is_some() && result_formats.is_some();
                let statement = self.statements.get(&statement_name).cloned().filter(|_| known);
                self.portals.insert(portal.clone(), statement.clone());
                ExtendedMessage::Bind(Bind {
                    portal,
                    statement_name,
                    statement,
                    param_formats: param_formats.unwrap_or_default(),
                    params,
                    result_formats: result_formats.unwrap_or_default(),
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
                    let dropped = if !s.is_exact() {
                        Dropped::All
                    } else if s.drops_nothing() {
                        Dropped::Nothing
                    } else {
                        let dropped = self.dropped(s.sql());
                        if dropped == Dropped::Nothing {
                            s.found_to_drop_nothing();
                        }
                        dropped
                    };
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
                if let (b'D', Some(stmt)) = (tag, &stmt) {
                    // Before its bytes go: the server's answer cannot come first.
                    if let Some(entry) = self.session.state().in_flight.back_mut() {
                        entry.describing.push_back(stmt.clone());
                    }
                }
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
                self.capture_execute(open, stmt.as_deref());
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

impl ClientSide {
    /// An Execute going upstream (before its bytes do, so no answer can precede this): the first
    /// of its request may keep a field of its rows for the cache; a second one ends that.
    fn capture_execute(&mut self, open: &OpenBatch, statement: Option<&PreparedStatement>) {
        let Some(cache) = self.session.cache.as_deref().filter(|_| self.active) else { return };
        let mut st = self.session.state();
        let Some(entry) = st.in_flight.back_mut() else { return };
        entry.executes += 1;
        if entry.executes != 1 {
            entry.capture = None;
            return;
        }
        // The batch's messages: still in the open batch, or already in the request (a held batch
        // sent at its Sync). The Bind of the portal executed says how its rows come.
        let messages = match (&entry.request, open.messages.is_empty()) {
            (Some(Request { kind: RequestKind::Extended { messages }, .. }), true) => messages.as_slice(),
            _ => open.messages.as_slice(),
        };
        let mut bind = None;
        for m in messages {
            match m {
                ExtendedMessage::Bind(b) => bind = Some(b),
                ExtendedMessage::Execute { portal, .. } => {
                    bind = bind.filter(|b| b.portal() == portal);
                    break;
                }
                _ => {}
            }
        }
        entry.capture = bind
            .zip(statement.filter(|s| s.is_exact()))
            .and_then(|(b, s)| Some(Capturing::new(cache.capture(s.sql())?, b.result_formats())));
    }
}

fn close_statement(name: &str) -> Bytes {
    let mut body = Vec::with_capacity(name.len() + 2);
    body.push(b'S');
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    frame(b'C', &body)
}

/// Format codes; `None` when one is neither text nor binary (PostgreSQL answers such a Bind with
/// an error and the session goes on: the proxy relays it without keying it).
fn read_formats(r: &mut Reader<'_>) -> Result<Option<Vec<Format>>, Malformed> {
    let n = r.count()?;
    let mut out = Vec::with_capacity(n.min(1024));
    let mut known = true;
    for _ in 0..n {
        match Format::from_code(r.i16()?) {
            Some(f) => out.push(f),
            None => known = false,
        }
    }
    Ok(known.then_some(out))
}

/// Checks, without decoding into anything, that a message the relay passes through has the
/// shape the decoder (`decode_extended`, `on_query`) would accept: a malformed one ends the
/// session with 08P01 whether or not a cache runs.
fn check_shape(tag: u8, body: &[u8]) -> Result<(), Malformed> {
    let mut r = Reader::new(body, "message");
    match tag {
        b'Q' => {
            r.cbytes()?;
        }
        b'P' => {
            r.cbytes()?;
            r.cbytes()?;
            let n = r.count()?;
            r.take(n * 4)?;
        }
        b'B' => {
            r.cbytes()?;
            r.cbytes()?;
            let n = r.count()?;
            r.take(n * 2)?;
            for _ in 0..r.count()? {
                let len = r.i32()?;
                if len > 0 {
                    r.take(len as usize)?;
                }
            }
            let n = r.count()?;
            r.take(n * 2)?;
        }
        b'D' | b'C' => {
            if !matches!(r.u8()?, b'S' | b'P') {
                return Err(Malformed::new("invalid DESCRIBE/CLOSE message subtype"));
            }
            r.cbytes()?;
        }
        b'E' => {
            r.cbytes()?;
            r.u32()?;
        }
        _ => {}
    }
    Ok(())
}

/// SQL-level statements that drop protocol-level prepared statements.
fn apply_dropped(dropped: &Dropped, statements: &mut ByName<Arc<PreparedStatement>>) {
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

/// On a session where the client's TLS ends at the proxy and the upstream's is under another
/// certificate, refuses a SASLInitialResponse that uses SCRAM channel binding (`-PLUS`) or says
/// the client could (gs2 flag `y`): the binding the client computes names the proxy's certificate,
/// so PostgreSQL would fail it, and nothing the proxy rewrites can fix that without breaking the
/// proof. Other authentication (and SCRAM without channel binding) passes.
fn screen_auth(msg: &[u8]) -> Result<(), ClientEnd> {
    let mut reader = Reader::new(msg.get(5..).unwrap_or_default(), "SASLInitialResponse");
    let (Ok(mechanism), Ok(len)) = (reader.cstr(), reader.i32()) else {
        // A password message, or a later SASL response.
        return Ok(());
    };
    let flag = if len > 0 { reader.take(1).ok().and_then(|b| b.first().copied()) } else { None };
    if mechanism.ends_with("-PLUS") || flag == Some(b'y') {
        return Err(ClientEnd::Refused(
            "strata-proxy cannot relay SCRAM channel binding: the client's TLS session ends at the proxy, \
             whose certificate is not the upstream server's. Connect with channel_binding=disable, give \
             the proxy the upstream's certificate and key (--tls-cert, --tls-key), or use \
             --upstream-sslmode disable on a trusted network"
                .to_owned(),
        ));
    }
    Ok(())
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
