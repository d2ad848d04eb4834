//! The admin console: a client connecting to the virtual database `strata` as one of the users
//! `--admin-users` lists talks to the proxy itself, PgBouncer-style, in the simple protocol.
//!
//! PostgreSQL checks the password: the proxy relays the client's authentication to the upstream
//! server for the same user on the auth database (`--admin-auth-database`, default `postgres`),
//! and closes that connection once it has said yes. Then every `Query` is a console command:
//! `SHOW QUERIES`, `SHOW TABLES`, `SHOW CONFIG`, `EXPLAIN [FOR USER u] [DATABASE d] sql`,
//! `FLUSH [table]`, `RELOAD`, `SHOW HELP`. This file also encodes the rows of
//! `EXPLAIN LAST STATEMENT`, which any session may send.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tracing::{info, warn};

use crate::protocol::{error_response, frame, Reader, Severity, StartupParams};
use crate::relay::Shared;
use crate::seam::{ConsoleCommand, ConsoleReply, TransactionStatus};
use crate::transport::{connect_upstream, send, ReadHalf, WriteHalf};

/// The virtual database of the admin console.
pub(crate) const CONSOLE_DATABASE: &str = "strata";

/// The commands, for `SHOW HELP` and errors.
const HELP: [(&str, &str); 8] = [
    ("SHOW QUERIES", "per query shape: calls, hits by tier, misses, bypasses by reason, time saved"),
    ("SHOW TABLES", "per table: version, invalidations, entries filled since the last one"),
    ("SHOW CONFIG", "the settings in force"),
    ("EXPLAIN [FOR USER u] [DATABASE d] <sql>", "whether and how <sql> is cached, and where it is now"),
    ("FLUSH", "make every cached result unreachable and empty this proxy's in-process tier"),
    ("FLUSH <table>", "make the results that read <table> unreachable"),
    ("RELOAD", "read the config file again and apply its table rules and default TTL"),
    ("SHOW HELP", "this list"),
];

/// Whether a text is `EXPLAIN LAST STATEMENT` (any case and spacing, an optional `;`).
pub(crate) fn is_explain_last(sql: &str) -> bool {
    let mut words = sql.trim().trim_end_matches(';').split_whitespace();
    // Asked of every simple query: no allocation, and most texts are told apart by the first word.
    words.next().is_some_and(|w| w.eq_ignore_ascii_case("explain"))
        && words.next().is_some_and(|w| w.eq_ignore_ascii_case("last"))
        && words.next().is_some_and(|w| w.eq_ignore_ascii_case("statement"))
        && words.next().is_none()
}

/// A console command as typed.
#[derive(Debug, PartialEq)]
enum Command {
    Cache(ConsoleCommand),
    Reload,
    Help,
}

/// Reads a command; `user` and `database` are the console's own, for `EXPLAIN`.
fn parse(text: &str, user: &str, database: &str) -> Result<Command, String> {
    let text = text.trim().trim_end_matches(';').trim();
    let mut words = text.split_whitespace();
    let first = words.next().unwrap_or_default().to_ascii_uppercase();
    let second = words.next().map(str::to_ascii_uppercase);
    let unknown = || {
        let list: Vec<&str> = HELP.iter().map(|(c, _)| *c).collect();
        Err(format!("unknown admin console command {text:?}; the commands are: {}", list.join(", ")))
    };
    match (first.as_str(), second.as_deref()) {
        ("SHOW", Some("QUERIES")) if words.next().is_none() => {
            Ok(Command::Cache(ConsoleCommand::ShowQueries))
        }
        ("SHOW", Some("TABLES")) if words.next().is_none() => Ok(Command::Cache(ConsoleCommand::ShowTables)),
        ("SHOW", Some("CONFIG")) if words.next().is_none() => Ok(Command::Cache(ConsoleCommand::ShowConfig)),
        ("SHOW", Some("HELP")) if words.next().is_none() => Ok(Command::Help),
        ("RELOAD", None) => Ok(Command::Reload),
        ("FLUSH", None) => Ok(Command::Cache(ConsoleCommand::Flush(None))),
        ("FLUSH", Some(_)) => {
            let table = text["FLUSH".len()..].trim();
            let table = table
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .map_or_else(|| table.to_ascii_lowercase(), str::to_owned);
            // The version unit is the name without its schema.
            let table = table.rsplit('.').next().unwrap_or_default().to_owned();
            Ok(Command::Cache(ConsoleCommand::Flush(Some(table))))
        }
        ("EXPLAIN", Some(_)) => {
            let mut rest = text["EXPLAIN".len()..].trim_start();
            let (mut user, mut database) = (user.to_owned(), database.to_owned());
            let take = |rest: &mut &str, words: &[&str]| -> Option<String> {
                let mut r = *rest;
                for w in words {
                    let (head, tail) = r.split_once(char::is_whitespace)?;
                    if !head.eq_ignore_ascii_case(w) {
                        return None;
                    }
                    r = tail.trim_start();
                }
                let (value, tail) = r.split_once(char::is_whitespace)?;
                *rest = tail.trim_start();
                Some(value.to_owned())
            };
            if let Some(u) = take(&mut rest, &["FOR", "USER"]) {
                user = u;
            }
            if let Some(d) = take(&mut rest, &["DATABASE"]) {
                database = d;
            }
            if rest.is_empty() {
                return Err("EXPLAIN needs a statement".to_owned());
            }
            Ok(Command::Cache(ConsoleCommand::Explain { user, database, sql: rest.to_owned() }))
        }
        _ => unknown(),
    }
}

/// Encodes rows as RowDescription, DataRows and CommandComplete (no ReadyForQuery).
pub(crate) fn encode(reply: &ConsoleReply) -> BytesMut {
    let mut out = BytesMut::new();
    if !reply.columns.is_empty() {
        let mut body = BytesMut::new();
        body.put_i16(i16::try_from(reply.columns.len()).unwrap_or(i16::MAX));
        for name in &reply.columns {
            body.put_slice(name.replace('\0', "").as_bytes());
            body.put_u8(0);
            body.put_u32(0); // no table
            body.put_i16(0); // no column
            body.put_u32(25); // text
            body.put_i16(-1);
            body.put_i32(-1);
            body.put_i16(0); // text format
        }
        out.put_slice(&frame(b'T', &body));
        for row in &reply.rows {
            let mut body = BytesMut::new();
            body.put_i16(i16::try_from(reply.columns.len()).unwrap_or(i16::MAX));
            for i in 0..reply.columns.len() {
                match row.get(i).and_then(Option::as_deref) {
                    Some(v) => {
                        body.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                        body.put_slice(v.as_bytes());
                    }
                    None => body.put_i32(-1),
                }
            }
            out.put_slice(&frame(b'D', &body));
        }
    }
    let tag = if reply.columns.is_empty() {
        reply.tag.clone()
    } else {
        format!("{} {}", reply.tag, reply.rows.len())
    };
    let mut body = BytesMut::new();
    body.put_slice(tag.as_bytes());
    body.put_u8(0);
    out.put_slice(&frame(b'C', &body));
    out
}

/// An ErrorResponse of severity ERROR (the session goes on).
pub(crate) fn error(code: &str, message: &str) -> Bytes {
    let mut body = BytesMut::new();
    for (field, value) in [(b'S', "ERROR"), (b'V', "ERROR"), (b'C', code), (b'M', message)] {
        body.put_u8(field);
        body.put_slice(value.replace('\0', "").as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    frame(b'E', &body)
}

/// ReadyForQuery with a transaction status.
pub(crate) fn ready(status: TransactionStatus) -> Bytes {
    let byte = match status {
        TransactionStatus::Idle => b'I',
        TransactionStatus::InTransaction => b'T',
        TransactionStatus::Failed => b'E',
    };
    frame(b'Z', &[byte])
}

/// Serves an admin console session to its end.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    params: StartupParams,
    client_tls: bool,
    mut rd: ReadHalf,
    mut wr: WriteHalf,
) {
    let user = params.get("user").unwrap_or_default().to_owned();
    if !shared.config.admin_users.contains(&user) {
        shared.metrics.console_refused.inc();
        info!(user = %user, "admin console refused");
        let msg = format!("strata-proxy: user \"{user}\" may not use the admin console (see --admin-users)");
        let _ = send(&mut wr, &error_response(Severity::Fatal, "28000", &msg)).await;
        let _ = wr.shutdown().await;
        return;
    }
    if let Err(why) = authenticate(&shared, &params, client_tls, &mut rd, &mut wr).await {
        info!(user = %user, error = %why, "admin console authentication ended");
        let _ = wr.shutdown().await;
        return;
    }
    shared.metrics.console_sessions.inc();
    let database = shared.config.admin_auth_database.clone();
    let mut buf = BytesMut::new();
    loop {
        let (tag, body) = match read_message(&mut rd, &mut buf, shared.config.max_message_bytes).await {
            Some(m) => m,
            None => return,
        };
        let out: BytesMut = match tag {
            b'X' => return,
            b'Q' => {
                let text = Reader::new(&body, "Query").cstr().unwrap_or_default();
                let mut out = match parse(&text, &user, &database) {
                    Ok(command) => match run(&shared, command).await {
                        Ok(reply) => encode(&reply),
                        Err(why) => BytesMut::from(&error("XX000", &why)[..]),
                    },
                    Err(why) => BytesMut::from(&error("42601", &why)[..]),
                };
                out.put_slice(&ready(TransactionStatus::Idle));
                out
            }
            // Extended protocol: refused once per Sync.
            b'S' => {
                let mut out = BytesMut::from(
                    &error("0A000", "the strata admin console speaks the simple query protocol only")[..],
                );
                out.put_slice(&ready(TransactionStatus::Idle));
                out
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => continue,
            _ => {
                let _ = send(&mut wr, &error_response(Severity::Fatal, "08P01", "unexpected message")).await;
                return;
            }
        };
        if send(&mut wr, &out).await.is_err() {
            return;
        }
    }
}

async fn run(shared: &Shared, command: Command) -> Result<ConsoleReply, String> {
    match command {
        Command::Help => Ok(ConsoleReply::table(
            &["command", "what it does"],
            HELP.iter().map(|(c, d)| vec![Some((*c).to_owned()), Some((*d).to_owned())]).collect(),
        )),
        Command::Reload => {
            let Some(path) = &shared.config.config_file else {
                return Err(
                    "the proxy was started without a config file (--config): nothing to reload".to_owned()
                );
            };
            let file = crate::config::FileConfig::load(path).map_err(|e| e.to_string())?;
            let reply = shared.cache.console(&ConsoleCommand::Reload(file.cache)).await?;
            info!(path = %path.display(), "configuration reloaded from the admin console");
            Ok(reply)
        }
        Command::Cache(ConsoleCommand::ShowConfig) => {
            let c = &shared.config;
            let mut rows: Vec<Vec<Option<String>>> = [
                ("upstream", c.upstream.to_string()),
                ("listen", c.listen.to_string()),
                ("http", c.http.map_or_else(|| "off".to_owned(), |h| h.to_string())),
                (
                    "redis",
                    match (&c.redis, c.redis_cluster.len()) {
                        (Some(_), _) => "set".to_owned(),
                        (None, 0) => "none (embedded)".to_owned(),
                        (None, n) => format!("cluster ({n} node urls)"),
                    },
                ),
                ("max_message_bytes", c.max_message_bytes.to_string()),
                ("max_result_bytes", c.max_result_bytes.to_string()),
                ("connect_timeout_ms", c.connect_timeout.as_millis().to_string()),
                ("shutdown_grace_ms", c.shutdown_grace.as_millis().to_string()),
                ("drain_timeout_ms", c.drain_timeout.as_millis().to_string()),
                ("max_recording_bytes", c.max_recording_bytes.to_string()),
                ("admin_users", c.admin_users.join(",")),
                ("admin_auth_database", c.admin_auth_database.clone()),
                (
                    "config",
                    c.config_file.as_ref().map_or_else(|| "none".to_owned(), |p| p.display().to_string()),
                ),
            ]
            .into_iter()
            .map(|(k, v)| vec![Some(k.to_owned()), Some(v)])
            .collect();
            if let Ok(cache) = shared.cache.console(&ConsoleCommand::ShowConfig).await {
                rows.extend(cache.rows);
            }
            Ok(ConsoleReply::table(&["setting", "value"], rows))
        }
        Command::Cache(command) => shared.cache.console(&command).await,
    }
}

/// Relays the client's authentication to the upstream server for the same user on the auth
/// database, until the server says yes (its ReadyForQuery is relayed) or no (its error is).
async fn authenticate(
    shared: &Shared,
    params: &StartupParams,
    client_tls: bool,
    rd: &mut ReadHalf,
    wr: &mut WriteHalf,
) -> Result<(), String> {
    let upstream = &shared.config.upstream;
    let mut up = match connect_upstream(&shared.config).await {
        Ok(s) => s,
        Err(_) => {
            let msg = format!("strata-proxy could not connect to upstream server {upstream} to authenticate");
            let _ = send(wr, &error_response(Severity::Fatal, "08001", &msg)).await;
            return Err(msg);
        }
    };
    let mut body = BytesMut::new();
    body.put_u32(params.version);
    for (k, v) in &params.params {
        let v = if k == "database" { shared.config.admin_auth_database.as_str() } else { v.as_str() };
        if k == "options" || k == "replication" {
            continue;
        }
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    if !params.params.iter().any(|(k, _)| k == "database") {
        body.put_slice(b"database\0");
        body.put_slice(shared.config.admin_auth_database.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut startup = BytesMut::new();
    startup.put_u32(u32::try_from(body.len() + 4).unwrap_or(u32::MAX));
    startup.put_slice(&body);
    send(&mut up, &startup).await.map_err(|e| e.to_string())?;
    // As in a session: a plain client cannot bind to the upstream's TLS channel.
    let strip_plus = !client_tls && up.is_tls();
    let (mut up_rd, mut up_wr) = up.into_split();
    let (mut up_buf, mut client_buf) = (BytesMut::new(), BytesMut::new());
    let limit = shared.config.max_message_bytes;
    let deadline = shared.config.startup_timeout;
    let result = timeout(deadline, async {
        loop {
            let (tag, body) = read_message(&mut up_rd, &mut up_buf, limit).await.ok_or("upstream closed")?;
            match tag {
                // BackendKeyData would let the client cancel a connection about to close.
                b'K' => continue,
                b'E' => {
                    send(wr, &frame(b'E', &body)).await.map_err(|_| "client gone")?;
                    return Err("refused by the server");
                }
                b'Z' => {
                    send(wr, &ready(TransactionStatus::Idle)).await.map_err(|_| "client gone")?;
                    return Ok(());
                }
                b'R' => {
                    let message = frame(b'R', &body);
                    let offer = if strip_plus { crate::protocol::without_plus(&message) } else { None };
                    send(wr, offer.as_deref().unwrap_or(&message)).await.map_err(|_| "client gone")?;
                    let code = body.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    // 0 = ok, 12 = SASL final: nothing to answer.
                    if code != 0 && code != 12 {
                        let (tag, answer) =
                            read_message(rd, &mut client_buf, limit).await.ok_or("client gone")?;
                        if tag != b'p' {
                            return Err("unexpected message during authentication");
                        }
                        send(&mut up_wr, &frame(b'p', &answer)).await.map_err(|_| "upstream closed")?;
                    }
                }
                _ => {
                    send(wr, &frame(tag, &body)).await.map_err(|_| "client gone")?;
                }
            }
        }
    })
    .await;
    let _ = send(&mut up_wr, &frame(b'X', &[])).await;
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(why.to_owned()),
        Err(_) => {
            warn!("admin console authentication timed out");
            Err("timeout".to_owned())
        }
    }
}

/// Reads one message (type byte, body) of at most `limit` bytes; `None` when the peer closed or
/// sent something malformed.
async fn read_message<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    limit: usize,
) -> Option<(u8, Bytes)> {
    loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if !(4..=limit).contains(&len) {
                return None;
            }
            if buf.len() > len {
                let mut msg = buf.split_to(len + 1);
                let tag = msg[0];
                let _ = msg.split_to(5);
                return Some((tag, msg.freeze()));
            }
        }
        if rd.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_in_any_case_with_an_optional_semicolon() {
        let p = |t: &str| parse(t, "admin", "postgres");
        assert_eq!(p("show queries;"), Ok(Command::Cache(ConsoleCommand::ShowQueries)));
        assert_eq!(p("  SHOW   TABLES "), Ok(Command::Cache(ConsoleCommand::ShowTables)));
        assert_eq!(p("flush"), Ok(Command::Cache(ConsoleCommand::Flush(None))));
        assert_eq!(
            p("FLUSH public.Orders"),
            Ok(Command::Cache(ConsoleCommand::Flush(Some("orders".into()))))
        );
        assert_eq!(p("FLUSH \"Mixed\""), Ok(Command::Cache(ConsoleCommand::Flush(Some("Mixed".into())))));
        assert_eq!(p("reload"), Ok(Command::Reload));
        assert_eq!(
            p("EXPLAIN SELECT 1"),
            Ok(Command::Cache(ConsoleCommand::Explain {
                user: "admin".into(),
                database: "postgres".into(),
                sql: "SELECT 1".into()
            }))
        );
        assert_eq!(
            p("explain for user app database shop SELECT * FROM t WHERE id = 1"),
            Ok(Command::Cache(ConsoleCommand::Explain {
                user: "app".into(),
                database: "shop".into(),
                sql: "SELECT * FROM t WHERE id = 1".into()
            }))
        );
        assert!(p("SHOW POOLS").is_err_and(|e| e.contains("SHOW QUERIES")));
        assert!(p("EXPLAIN").is_err());
        assert!(p("SHOW QUERIES extra").is_err());
        assert!(is_explain_last(" explain  LAST statement ; "));
        assert!(!is_explain_last("EXPLAIN SELECT 1"));
        assert!(!is_explain_last("explain last"));
        assert!(!is_explain_last("explain last statement now"));
        assert!(is_explain_last("explain\tlast\nstatement;"));
    }

    #[test]
    fn rows_encode_as_postgres_sends_them() {
        let reply = ConsoleReply::table(&["a", "b"], vec![vec![Some("1".into()), None]]);
        let out = encode(&reply);
        assert_eq!(out[0], b'T');
        let tags: Vec<u8> = {
            let mut tags = Vec::new();
            let mut at = 0;
            while at < out.len() {
                tags.push(out[at]);
                at += 1 + u32::from_be_bytes([out[at + 1], out[at + 2], out[at + 3], out[at + 4]]) as usize;
            }
            tags
        };
        assert_eq!(tags, b"TDC");
        assert!(out.ends_with(b"SHOW 1\0"));
        assert_eq!(&encode(&ConsoleReply::done("FLUSH"))[..], &frame(b'C', b"FLUSH\0")[..]);
    }
}
