//! PostgreSQL v3 wire-protocol framing and the few message decoders and encoders the proxy needs.
//!
//! Only the messages the proxy acts on are decoded; everything else is relayed as opaque frames.

use bytes::{BufMut, Bytes, BytesMut};

/// Protocol version 3.0 as sent in a startup message.
pub(crate) const PROTOCOL_3_0: u32 = 196_608;
/// The request code of an SSLRequest.
pub(crate) const SSL_REQUEST: u32 = 80_877_103;
/// The request code of a GSSENCRequest.
pub(crate) const GSSENC_REQUEST: u32 = 80_877_104;
/// The request code of a CancelRequest.
pub(crate) const CANCEL_REQUEST: u32 = 80_877_102;
/// PostgreSQL's own limit on the length of a startup packet.
pub(crate) const MAX_STARTUP_BYTES: usize = 10_000;

/// A decoding failure of a client message; the session answers it with SQLSTATE 08P01.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

impl Malformed {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// A cursor over a message body that never panics.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    fn short(&self) -> Malformed {
        Malformed(format!("invalid {} message: truncated", self.what))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Malformed> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.short())?;
        self.buf = rest;
        Ok(b)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, Malformed> {
        let bytes = self.take(2)?;
        Ok(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, Malformed> {
        let bytes = self.take(4)?;
        Ok(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Malformed> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated string, decoded as UTF-8 (lossily: names and SQL are compared as text).
    pub(crate) fn cstr(&mut self) -> Result<String, Malformed> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| Malformed(format!("invalid {} message: unterminated string", self.what)))?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A NUL-terminated string as the bytes sent.
    pub(crate) fn cbytes(&mut self) -> Result<&'a [u8], Malformed> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| Malformed(format!("invalid {} message: unterminated string", self.what)))?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub(crate) fn count(&mut self) -> Result<usize, Malformed> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| Malformed(format!("invalid {} message: negative count", self.what)))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
}

/// Client encodings whose multibyte characters may hold bytes that look like ASCII (a quote, a
/// backslash) to a parser reading UTF-8: a text in them cannot be split into tokens exactly.
const ASCII_UNSAFE_ENCODINGS: &[&str] = &["SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "UHC", "GB18030", "JOHAB"];

/// Whether SQL text the client sends in `client_encoding` can be read exactly as UTF-8 when its
/// bytes are valid UTF-8: every encoding but those whose multibyte characters contain ASCII bytes.
pub(crate) fn encoding_reads_exactly(client_encoding: Option<&str>) -> bool {
    client_encoding.is_none_or(|e| !ASCII_UNSAFE_ENCODINGS.iter().any(|u| u.eq_ignore_ascii_case(e)))
}

/// SQL text exactly as sent, or `None` when it is not valid UTF-8 (a Latin-1 `é`, say) or the
/// encoding cannot be read exactly ([`encoding_reads_exactly`]): such a text is relayed untouched
/// but never keyed or analyzed.
pub(crate) fn exact_text(bytes: &[u8], encoding_reads_exactly: bool) -> Option<String> {
    if !encoding_reads_exactly {
        return None;
    }
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// The parameters of a startup message (protocol 3.x).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StartupParams {
    pub(crate) version: u32,
    pub(crate) params: Vec<(String, String)>,
}

impl StartupParams {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Decodes the body (after the length and version) of a startup message.
pub(crate) fn parse_startup(version: u32, body: &[u8]) -> Result<StartupParams, Malformed> {
    let mut r = Reader::new(body, "startup");
    let mut params = Vec::new();
    loop {
        let key = r.cstr()?;
        if key.is_empty() {
            break;
        }
        let value = r.cstr()?;
        params.push((key, value));
    }
    if !r.is_empty() {
        return Err(Malformed::new("invalid startup packet layout: trailing bytes"));
    }
    if !params.iter().any(|(k, _)| k == "user") {
        return Err(Malformed::new("no PostgreSQL user name specified in startup packet"));
    }
    Ok(StartupParams { version, params })
}

/// Severity of an ErrorResponse the proxy generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Severity {
    /// The session ends after this error.
    Fatal,
    /// The request fails; the session goes on.
    Error,
}

/// Encodes an ErrorResponse with the given severity, SQLSTATE and message.
pub(crate) fn error_response(severity: Severity, code: &str, message: &str) -> Bytes {
    let sev = match severity {
        Severity::Fatal => "FATAL",
        Severity::Error => "ERROR",
    };
    let mut body = BytesMut::new();
    for (field, value) in [(b'S', sev), (b'V', sev), (b'C', code), (b'M', message)] {
        body.put_u8(field);
        // NUL bytes inside a value would end the field early; the messages are ours, but be safe.
        body.put_slice(value.replace('\0', "").as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    frame(b'E', &body)
}

/// Encodes a message with a type byte.
pub(crate) fn frame(tag: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(tag);
    out.put_u32(frame_len(body.len()));
    out.put_slice(body);
    out.freeze()
}

fn frame_len(body_len: usize) -> u32 {
    // Bodies the proxy encodes come from bounded client messages, far below 4 GiB.
    u32::try_from(body_len + 4).unwrap_or(u32::MAX)
}

/// Encodes a Parse message (used to prepare upstream a statement first answered from cache).
pub(crate) fn parse_message(name: &str, sql: &str, param_types: &[u32]) -> Bytes {
    let mut body = BytesMut::new();
    body.put_slice(name.as_bytes());
    body.put_u8(0);
    body.put_slice(sql.as_bytes());
    body.put_u8(0);
    body.put_i16(i16::try_from(param_types.len()).unwrap_or(i16::MAX));
    for &t in param_types {
        body.put_u32(t);
    }
    frame(b'P', &body)
}

/// Extracts the SQLSTATE and severity of an ErrorResponse/NoticeResponse body.
pub(crate) fn error_fields(body: &[u8]) -> (Option<String>, Option<String>) {
    let mut r = Reader::new(body, "error");
    let (mut code, mut severity) = (None, None);
    while let Ok(field) = r.u8() {
        if field == 0 {
            break;
        }
        let Ok(value) = r.cstr() else { break };
        match field {
            b'C' => code = Some(value),
            b'V' => severity = Some(value),
            b'S' if severity.is_none() => severity = Some(value),
            _ => {}
        }
    }
    (code, severity)
}

/// The message (`M` field) of an ErrorResponse/NoticeResponse body.
pub(crate) fn error_message(body: &[u8]) -> Option<String> {
    let mut r = Reader::new(body, "error");
    while let Ok(field) = r.u8() {
        if field == 0 {
            break;
        }
        let Ok(value) = r.cstr() else { break };
        if field == b'M' {
            return Some(value);
        }
    }
    None
}

/// An AuthenticationSASL offer without `SCRAM-SHA-256-PLUS`, or `None` for any other message.
///
/// A client on a plain connection to the proxy cannot bind to a TLS channel, and libpq takes a
/// `-PLUS` offer over a connection that is not TLS for a man in the middle and gives up. Without
/// it the client sends the gs2 flag `n`, which PostgreSQL accepts on TLS. A client on TLS gets
/// the offer unchanged: taking it away would make it answer `y`, which PostgreSQL on TLS refuses
/// as a downgrade.
pub(crate) fn without_plus(msg: &[u8]) -> Option<Vec<u8>> {
    const SASL: u32 = 10;
    let code = msg.get(5..9).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))?;
    if code != SASL {
        return None;
    }
    let mut body = SASL.to_be_bytes().to_vec();
    let mechanisms = msg.get(9..)?;
    for name in mechanisms.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name != b"SCRAM-SHA-256-PLUS" {
            body.extend_from_slice(name);
            body.push(0);
        }
    }
    body.push(0);
    Some(frame(b'R', &body).to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_layout() {
        let e = error_response(Severity::Fatal, "08P01", "bad");
        assert_eq!(&e[..], b"E\0\0\0\x1fSFATAL\0VFATAL\0C08P01\0Mbad\0\0");
        assert_eq!(error_fields(&e[5..]), (Some("08P01".into()), Some("FATAL".into())));
    }

    #[test]
    fn startup_requires_user_and_terminators() {
        assert!(parse_startup(PROTOCOL_3_0, b"user\0u\0database\0d\0\0").is_ok());
        assert!(parse_startup(PROTOCOL_3_0, b"database\0d\0\0").is_err());
        assert!(parse_startup(PROTOCOL_3_0, b"user\0u").is_err());
        assert!(parse_startup(PROTOCOL_3_0, b"user\0u\0\0junk").is_err());
    }

    #[test]
    fn reader_never_panics_on_short_input() {
        let mut r = Reader::new(b"\x01", "x");
        assert!(r.i32().is_err());
        assert!(r.i16().is_err());
        assert_eq!(r.u8(), Ok(1));
        assert!(r.u8().is_err());
        assert!(r.cstr().is_err());
    }

    #[test]
    fn plus_is_taken_out_of_a_sasl_offer_only() {
        let offer = frame(b'R', b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let plain = frame(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0");
        assert_eq!(without_plus(&offer).as_deref(), Some(&plain[..]));
        assert_eq!(without_plus(&plain).as_deref(), Some(&plain[..]));
        // AuthenticationOk, SASLContinue: untouched.
        assert_eq!(without_plus(&frame(b'R', b"\0\0\0\0")), None);
        assert_eq!(without_plus(&frame(b'R', b"\0\0\0\x0br=abc")), None);
    }
}
