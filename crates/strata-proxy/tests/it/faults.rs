//! Faults: upstream unreachable or gone, backends terminated, malformed client bytes.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::support::{
    admin, connect, cstr, dead_port, message, must_fail, pg, sqlstate, start_proxy, startup_packet, RawClient,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_gives_08001() {
    let port = dead_port().await;
    let proxy = start_proxy(|b| b.with_upstream(format!("postgres://127.0.0.1:{port}"))).await;
    let err = must_fail(connect(proxy.port(), "postgres", "postgres", None).await, "must fail");
    let db = err.as_db_error().unwrap_or_else(|| panic!("expected an ErrorResponse, got {err}"));
    assert_eq!(db.code().code(), "08001");
    assert!(db.message().contains("could not connect to upstream"), "{}", db.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backend_errors_only_its_own_session() {
    let proxy = start_proxy(|b| b).await;
    let victim = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    let other = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    let pid: i32 = victim.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
    let killed: bool = admin("postgres")
        .await
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("kill")
        .get(0);
    assert!(killed);
    let err = must_fail(victim.simple_query("SELECT 1").await, "the killed session must fail");
    let msg = err.to_string();
    assert!(
        err.as_db_error().is_some_and(|d| d.code().code() == "57P01") || err.is_closed(),
        "unexpected error: {msg}"
    );
    other.simple_query("SELECT 1").await.expect("other session unaffected");
    let fresh = connect(proxy.port(), "postgres", "postgres", None).await.expect("new session");
    fresh.simple_query("SELECT 1").await.expect("new session works");
}

/// An upstream that authenticates the client, then drops the connection without a word at the
/// first query: the proxy must say 08006 rather than just closing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_vanishing_mid_session_gives_08006() {
    let fake = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = fake.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        let (mut s, _) = fake.accept().await.expect("accept");
        let mut buf = vec![0u8; 1024];
        let _ = s.read(&mut buf).await.expect("startup");
        let mut hello = message(b'R', &0u32.to_be_bytes());
        hello.extend(message(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
        hello.extend(message(b'Z', b"I"));
        s.write_all(&hello).await.expect("hello");
        let _ = s.read(&mut buf).await;
        drop(s);
    });
    // The fake server speaks no TLS negotiation.
    let proxy = start_proxy(|b| {
        b.with_upstream(format!("postgres://127.0.0.1:{port}"))
            .with_upstream_sslmode(strata_proxy::SslMode::Disable)
    })
    .await;
    let (mut c, _) = RawClient::startup(proxy.port(), "postgres", "postgres").await;
    let msgs = c.query("SELECT 1").await;
    let (tag, body) = msgs.first().cloned().expect("an error message");
    assert_eq!(tag, b'E', "{msgs:?}");
    assert_eq!(sqlstate(&body), "08006");
    assert!(c.read_msg().await.is_none(), "connection closed after the error");
    server.await.expect("fake server");
}

async fn expect_protocol_violation(c: &mut RawClient) {
    let (tag, body) = c.read_msg().await.expect("an ErrorResponse before close");
    assert_eq!(tag, b'E');
    assert_eq!(sqlstate(&body), "08P01", "{}", String::from_utf8_lossy(&body));
    assert!(c.read_msg().await.is_none(), "connection closed after the protocol violation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_client_bytes_get_08p01_and_leave_other_sessions_alone() {
    let proxy = start_proxy(|b| b.with_max_message_bytes(1 << 20)).await;
    let bystander = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    bystander.simple_query("BEGIN; SELECT 1").await.expect("bystander in a transaction");

    // Startup packets: too short, absurdly long (an HTTP request), unknown protocol, no user.
    let bad_startups: Vec<Vec<u8>> = vec![
        vec![0, 0, 0, 3],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        [&[0, 0, 0, 8][..], &(2u32 << 16).to_be_bytes()].concat(),
        {
            let mut body = 196_608u32.to_be_bytes().to_vec();
            body.extend(cstr("database"));
            body.extend(cstr("postgres"));
            body.push(0);
            [((body.len() + 4) as u32).to_be_bytes().to_vec(), body].concat()
        },
    ];
    for bytes in bad_startups {
        let mut c = RawClient::connect(proxy.port()).await;
        c.send(&bytes).await;
        expect_protocol_violation(&mut c).await;
    }

    // After a good startup: a length below 4, an oversized message, a truncated Bind, a bad
    // Describe subtype.
    let bad_messages: Vec<Vec<u8>> = vec![
        vec![b'Q', 0, 0, 0, 2],
        [&[b'Q'][..], &(2u32 << 20).to_be_bytes()].concat(),
        message(b'B', b"\0\0\0\x01\0"),
        message(b'D', b"Xname\0"),
        message(b'Q', b"no terminator"),
    ];
    for bytes in bad_messages {
        let (mut c, _) = RawClient::startup(proxy.port(), "postgres", "postgres").await;
        c.send(&bytes).await;
        expect_protocol_violation(&mut c).await;
    }

    let rows = bystander.simple_query("SELECT 2; COMMIT").await.expect("bystander unaffected");
    assert!(!rows.is_empty());
    let fresh = connect(proxy.port(), "postgres", "postgres", None).await.expect("new session");
    fresh.simple_query("SELECT 1").await.expect("new session works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gss_requests_are_declined_then_plain_startup_proceeds() {
    let proxy = start_proxy(|b| b).await;
    for code in [80_877_103u32, 80_877_104] {
        let mut c = RawClient::connect(proxy.port()).await;
        c.send(&[&8u32.to_be_bytes()[..], &code.to_be_bytes()].concat()).await;
        let mut answer = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), c.stream.read_exact(&mut answer))
            .await
            .expect("answer in time")
            .expect("answer");
        assert_eq!(&answer, b"N");
        c.send(&startup_packet("postgres", "postgres")).await;
        let msgs = c.read_until_ready().await;
        assert_eq!(msgs.last().map(|m| m.0), Some(b'Z'), "{msgs:?}");
        let rows = c.query("SELECT 41 + 1").await;
        assert!(rows.iter().any(|(t, b)| *t == b'D' && b.ends_with(b"42")), "{rows:?}");
    }
    let _ = pg();
}

/// A tiny deterministic generator (xorshift64*), so failures reproduce without extra dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random, well-framed messages of the types the proxy decodes, with bodies that are sometimes
/// plausible and sometimes garbage.
fn random_message(rng: &mut Rng) -> Vec<u8> {
    const TAGS: &[u8] = b"QPBDECSHFdcfXp!";
    let tag = TAGS[rng.below(TAGS.len() as u64) as usize];
    let mut body = Vec::new();
    match rng.below(3) {
        0 => {
            for _ in 0..rng.below(40) {
                body.push(rng.next() as u8);
            }
        }
        1 => {
            // Strings, counts and lengths in roughly the right places.
            body.extend(cstr(if rng.below(2) == 0 { "" } else { "s1" }));
            body.extend(cstr("SELECT $1::int"));
            let count = (rng.below(5) as i16 - 1).to_be_bytes();
            body.extend(count);
            for _ in 0..rng.below(4) {
                body.extend((rng.below(20) as i32 - 2).to_be_bytes());
                body.push(rng.next() as u8);
            }
        }
        _ => {
            body.push(if rng.below(2) == 0 { b'S' } else { b'P' });
            body.extend(cstr("s1"));
            body.extend((rng.next() as u32).to_be_bytes());
        }
    }
    message(tag, &body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_client_messages_never_crash_the_proxy() {
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        default_hook(info);
    }));
    let proxy = start_proxy(|b| b.with_max_message_bytes(64 * 1024)).await;
    let bystander = connect(proxy.port(), "postgres", "postgres", None).await.expect("connect");
    let mut rng = Rng(0x05EE_D0F5_7A7A);
    for _ in 0..200 {
        let (mut c, _) = RawClient::startup(proxy.port(), "postgres", "postgres").await;
        let mut bytes = Vec::new();
        for _ in 0..1 + rng.below(6) {
            bytes.extend(random_message(&mut rng));
        }
        bytes.extend(message(b'S', b""));
        c.send(&bytes).await;
        // Whatever the server or the proxy answers, the session ends or reaches ReadyForQuery.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some((tag, _)) = c.read_msg().await {
                if tag == b'Z' {
                    break;
                }
            }
        })
        .await;
    }
    bystander.simple_query("SELECT 1").await.expect("bystander unaffected");
    assert!(!proxy.task.is_finished(), "the proxy keeps serving");
    assert_eq!(PANICS.load(std::sync::atomic::Ordering::SeqCst), 0, "a task panicked");
}
