//! Shared helpers: the test database, an in-process proxy, clients, and a raw protocol frontend.

use std::{net::SocketAddr, time::Duration};

use strata_proxy::{BoundProxy, Proxy, ProxyBuilder, ShutdownHandle, Upstream};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_postgres::{types::FromSql, Client, NoTls};

/// The harness's PostgreSQL URL; panics with what to run when unset.
pub fn database_url() -> String {
    std::env::var("STRATA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| panic!("STRATA_TEST_DATABASE_URL is unset: run `cargo xtask test`"))
}

/// The harness's PostgreSQL host and port.
pub fn pg() -> Upstream {
    Upstream::parse(&database_url()).unwrap_or_else(|e| panic!("bad STRATA_TEST_DATABASE_URL: {e}"))
}

/// A proxy running in-process on a free port.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub http: Option<SocketAddr>,
    pub shutdown: ShutdownHandle,
    pub task: JoinHandle<Result<(), strata_proxy::Error>>,
}

impl TestProxy {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// Starts a proxy in front of the test database; `tweak` adjusts the builder.
pub async fn start_proxy(tweak: impl FnOnce(ProxyBuilder) -> ProxyBuilder) -> TestProxy {
    let pg = pg();
    let builder = Proxy::builder()
        .with_upstream(format!("postgres://{}:{}", pg.host(), pg.port()))
        .with_listen("127.0.0.1:0")
        .without_http();
    let bound: BoundProxy = tweak(builder).build().expect("proxy config").bind().await.expect("proxy bind");
    let addr = bound.local_addr();
    let http = bound.http_addr();
    let shutdown = bound.shutdown_handle();
    let task = tokio::spawn(bound.run());
    TestProxy { addr, http, shutdown, task }
}

/// Connection parameters for tokio-postgres.
pub fn conn_string(port: u16, user: &str, db: &str, password: Option<&str>) -> String {
    let host = pg().host().to_owned();
    let mut s = format!("host={host} port={port} user={user} dbname={db} connect_timeout=10");
    if let Some(p) = password {
        s.push_str(&format!(" password={p}"));
    }
    s
}

/// Connects with tokio-postgres (the connection runs on a spawned task).
pub async fn connect(
    port: u16,
    user: &str,
    db: &str,
    password: Option<&str>,
) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&conn_string(port, user, db, password), NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A superuser connection straight to the test database server.
pub async fn admin(db: &str) -> Client {
    connect(pg().port(), "postgres", db, None).await.expect("direct connection to the test database")
}

/// Creates (or recreates) a database for one test.
pub async fn fresh_database(name: &str) {
    let a = admin("postgres").await;
    a.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.expect("drop database");
    a.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create database");
}

/// A column value as its raw wire bytes, whatever its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw(pub Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(
        _ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }
    fn from_sql_null(
        _ty: &tokio_postgres::types::Type,
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_ty: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// A minimal frontend that speaks the protocol directly, for byte-level checks.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// One backend message: type byte and body.
pub type Msg = (u8, Vec<u8>);

impl RawClient {
    pub async fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        RawClient { stream, buf: Vec::new() }
    }

    /// Connects and completes a trust-authenticated startup; returns the startup messages.
    pub async fn startup(port: u16, user: &str, db: &str) -> (RawClient, Vec<Msg>) {
        let mut c = RawClient::connect(port).await;
        c.send(&startup_packet(user, db)).await;
        let msgs = c.read_until_ready().await;
        assert!(msgs.iter().any(|(t, _)| *t == b'R'), "no authentication message in {msgs:?}");
        (c, msgs)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads one message, or `None` at end of stream.
    pub async fn read_msg(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if self.buf.len() > len {
                    let msg: Vec<u8> = self.buf.drain(..=len).collect();
                    return Some((msg[0], msg[5..].to_vec()));
                }
            }
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk))
                .await
                .expect("read timed out")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads messages through ReadyForQuery (or end of stream).
    pub async fn read_until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.read_msg().await {
            let done = m.0 == b'Z';
            out.push(m);
            if done {
                break;
            }
        }
        out
    }

    /// Sends a simple Query and returns the response through ReadyForQuery.
    pub async fn query(&mut self, sql: &str) -> Vec<Msg> {
        self.send(&message(b'Q', &cstr(sql))).await;
        self.read_until_ready().await
    }
}

pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

pub fn startup_packet(user: &str, db: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for s in ["user", user, "database", db] {
        body.extend(cstr(s));
    }
    body.push(0);
    let mut v = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    v.extend(body);
    v
}

/// The SQLSTATE of an ErrorResponse body.
pub fn sqlstate(body: &[u8]) -> String {
    let mut i = 0;
    while i < body.len() && body[i] != 0 {
        let field = body[i];
        let end = body[i + 1..].iter().position(|&b| b == 0).map_or(body.len(), |p| i + 1 + p);
        if field == b'C' {
            return String::from_utf8_lossy(&body[i + 1..end]).into_owned();
        }
        i = end + 1;
    }
    String::new()
}

/// A port nothing listens on.
pub async fn dead_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

/// The error of a result that must have failed.
pub fn must_fail<T, E>(result: Result<T, E>, what: &str) -> E {
    match result {
        Ok(_) => panic!("{what}"),
        Err(e) => e,
    }
}

/// Parse (unnamed), Bind (unnamed portal, text parameters), Execute, for one statement.
pub fn parse_bind_execute(sql: &str, params: &[&str]) -> Vec<u8> {
    let mut parse = cstr("");
    parse.extend(cstr(sql));
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut bind = cstr("");
    bind.extend(cstr(""));
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        bind.extend_from_slice(&(p.len() as i32).to_be_bytes());
        bind.extend_from_slice(p.as_bytes());
    }
    bind.extend_from_slice(&0i16.to_be_bytes());
    let mut execute = cstr("");
    execute.extend_from_slice(&0i32.to_be_bytes());
    let mut out = message(b'P', &parse);
    out.extend(message(b'B', &bind));
    out.extend(message(b'E', &execute));
    out
}
