//! A minimal HTTP/1.1 responder for `/health` and `/metrics` (Prometheus text format).

use std::time::Duration;

use prometheus::{Encoder, TextEncoder};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    time::timeout,
};
use tracing::debug;

use crate::server::ShutdownLevel;

pub(crate) async fn serve(
    listener: TcpListener,
    registry: prometheus::Registry,
    shutdown: watch::Receiver<ShutdownLevel>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let registry = registry.clone();
        let shutting_down = *shutdown.borrow() != ShutdownLevel::Running;
        tokio::spawn(async move {
            if let Err(e) = timeout(Duration::from_secs(5), respond(stream, &registry, shutting_down)).await {
                debug!(error = %e, "http request timed out");
            }
        });
    }
}

async fn respond(mut stream: TcpStream, registry: &prometheus::Registry, shutting_down: bool) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 8192 {
            break;
        }
    }
    let line = String::from_utf8_lossy(buf.split(|&b| b == b'\n').next().unwrap_or_default()).into_owned();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/health") if shutting_down => {
            ("503 Service Unavailable", "text/plain", b"shutting down\n".to_vec())
        }
        ("GET" | "HEAD", "/health") => ("200 OK", "text/plain", b"ok\n".to_vec()),
        ("GET" | "HEAD", "/metrics") => {
            let encoder = TextEncoder::new();
            let mut out = Vec::new();
            match encoder.encode(&registry.gather(), &mut out) {
                Ok(()) => ("200 OK", "text/plain; version=0.0.4", out),
                Err(e) => ("500 Internal Server Error", "text/plain", format!("{e}\n").into_bytes()),
            }
        }
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
        _ => ("405 Method Not Allowed", "text/plain", b"method not allowed\n".to_vec()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    if method != "HEAD" {
        let _ = stream.write_all(&body).await;
    }
    let _ = stream.shutdown().await;
}
