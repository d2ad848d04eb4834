//! Upstream → client: server messages forwarded as they come, tracked per request in flight,
//! recorded for the cache, reported to it before `ReadyForQuery` reaches the client; the answer
//! of the cache's verification query kept from the client.

use super::*;

pub(super) struct ServerSide {
    session: Arc<Session>,
    rd: ReadHalf,
    buf: BytesMut,
    out: BytesMut,
    active: bool,
    fatal_seen: bool,
    /// Bytes left of a large frame being streamed through.
    stream_left: usize,
    /// The client leg is plain and the upstream's TLS: SCRAM-SHA-256-PLUS is taken out of the
    /// server's offer (see `protocol::without_plus`).
    strip_plus: bool,
}

impl ServerSide {
    pub(super) fn new(session: Arc<Session>, rd: ReadHalf, active: bool, strip_plus: bool) -> Self {
        Self {
            strip_plus,
            session,
            rd,
            buf: BytesMut::with_capacity(64 * 1024),
            out: BytesMut::with_capacity(64 * 1024),
            active,
            fatal_seen: false,
            stream_left: 0,
        }
    }

    pub(super) async fn run(mut self) -> (ServerEnd, bool) {
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
                if rest.len() >= total && self.strip_plus && tag == b'R' {
                    if let Some(offer) = crate::protocol::without_plus(&rest[..total]) {
                        self.out.extend_from_slice(&self.buf[..fwd]);
                        self.out.extend_from_slice(&offer);
                        self.buf.advance(fwd + total);
                        fwd = 0;
                        continue;
                    }
                }
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
                        self.session.completing.fetch_sub(1, Ordering::AcqRel);
                        self.session.request_done.notify_waiters();
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
                        if let Some(c) = &mut e.capture {
                            // Not held whole: its values cannot be read.
                            c.fail();
                        }
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
            if (fwd > 0 || !self.out.is_empty()) && self.session.client_gone.load(Ordering::Acquire) {
                // The client left; its requests' answers are still read (and reported to the
                // cache, so writes committing now are invalidated), but go nowhere.
                self.buf.advance(fwd);
                self.out.clear();
                guard = None;
                if self.active {
                    self.session.state().response_unwritten = false;
                }
            } else if fwd > 0 || !self.out.is_empty() {
                let mut g = match guard.take() {
                    Some(g) => g,
                    None => self.session.client_out.clone().lock_owned().await,
                };
                let written = if self.out.is_empty() {
                    self.session.shared.metrics.bytes_to_client.inc_by(fwd as u64);
                    send(&mut g.w, &self.buf[..fwd]).await
                } else {
                    self.out.extend_from_slice(&self.buf[..fwd]);
                    self.session.shared.metrics.bytes_to_client.inc_by(self.out.len() as u64);
                    send(&mut g.w, &self.out).await
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
            bytes: entry.recording.map(Recording::take),
            captured: entry.capture.and_then(super::capture::Capturing::finish),
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
                    session.completing.fetch_add(1, Ordering::AcqRel);
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
                    if let Some(c) = &mut e.capture {
                        match tag {
                            b'T' => c.described(body),
                            b'D' => c.row(body),
                            _ => {}
                        }
                    }
                    match tag {
                        // Only a cache reads the tags (`complete`).
                        b'C' if session.cache.is_some() => {
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
                        b't' => {
                            if let Some(statement) = e.describing.pop_front() {
                                if let Some(types) = parameter_description(body) {
                                    statement.described(types);
                                }
                            }
                        }
                        b'C' | b'2' | b'T' | b'n' | b'I' => {}
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

/// The type OIDs of a ParameterDescription body.
fn parameter_description(body: &[u8]) -> Option<Vec<u32>> {
    let mut r = Reader::new(body, "ParameterDescription");
    let count = usize::try_from(r.i16().ok()?).ok()?;
    let types = (0..count).map(|_| r.u32().ok()).collect::<Option<Vec<u32>>>()?;
    r.is_empty().then_some(types)
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
