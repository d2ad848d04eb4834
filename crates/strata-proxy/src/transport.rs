//! What a session's bytes travel over: TCP, a Unix domain socket, or TLS over TCP, on either leg.
//! A connection splits into a read half and a write half that the two relay directions own.
//!
//! A TLS write may leave bytes in the TLS layer when the socket is full, so every writer flushes
//! after a message (a no-op on plain sockets).

use std::{
    io,
    path::PathBuf,
    pin::Pin,
    task::{Context, Poll},
};

#[cfg(unix)]
use tokio::net::{unix, UnixStream};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{tcp, TcpStream},
    time::timeout,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use crate::{
    config::{ProxyConfig, Upstream},
    protocol::SSL_REQUEST,
    tls::SslMode,
};

/// One connection, either leg.
pub(crate) enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
    /// A client's TLS session, terminated here.
    Accepted(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS to the upstream server.
    Connected(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// An in-process pipe to a pooled client's link (`pool::run_link`), standing in for the
    /// upstream in transaction pooling.
    Pipe(tokio::io::DuplexStream),
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Self::Tcp($s) => $e,
            #[cfg(unix)]
            Self::Unix($s) => $e,
            Self::Accepted($s) => $e,
            Self::Connected($s) => $e,
            Self::Pipe($s) => $e,
        }
    };
}

impl Stream {
    /// Whether the bytes are encrypted.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Self::Accepted(_) | Self::Connected(_))
    }

    /// The upstream's leaf certificate, on a TLS upstream connection.
    pub(crate) fn peer_leaf(&self) -> Option<CertificateDer<'static>> {
        match self {
            Self::Connected(s) => s.get_ref().1.peer_certificates()?.first().map(|c| c.clone().into_owned()),
            _ => None,
        }
    }

    /// The two halves; plain sockets split without a lock, TLS behind tokio's split.
    pub(crate) fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Self::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            #[cfg(unix)]
            Self::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
            tls => {
                let (r, w) = tokio::io::split(tls);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

/// The read half of a [`Stream`].
pub(crate) enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    #[cfg(unix)]
    Unix(unix::OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Stream>),
}

/// The write half of a [`Stream`].
pub(crate) enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    #[cfg(unix)]
    Unix(unix::OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Stream>),
}

macro_rules! each_half {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Self::Tcp($s) => $e,
            #[cfg(unix)]
            Self::Unix($s) => $e,
            Self::Tls($s) => $e,
        }
    };
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        each_half!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each_half!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_half!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_half!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Writes a whole message and flushes it (TLS may hold bytes otherwise).
pub(crate) async fn send<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// Why the upstream could not be reached.
#[derive(Debug)]
pub(crate) struct ConnectError(pub(crate) String);

/// The Unix socket path PostgreSQL listens on in `dir` for `port` (libpq's naming).
pub(crate) fn socket_path(dir: &std::path::Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// Connects to the upstream and negotiates TLS as its `sslmode` says (Unix sockets never use
/// TLS, as with libpq). Bounded by the connect timeout as a whole.
pub(crate) async fn connect_upstream(config: &ProxyConfig) -> Result<Stream, ConnectError> {
    match timeout(config.connect_timeout, connect(config)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError("timeout".to_owned())),
    }
}

async fn connect(config: &ProxyConfig) -> Result<Stream, ConnectError> {
    let upstream = &config.upstream;
    let (host, port) = match upstream {
        #[cfg(unix)]
        Upstream::Unix { dir, port } => {
            let path = socket_path(dir, *port);
            return UnixStream::connect(&path)
                .await
                .map(Stream::Unix)
                .map_err(|e| ConnectError(format!("{}: {e}", path.display())));
        }
        #[cfg(not(unix))]
        Upstream::Unix { .. } => return Err(ConnectError("unix sockets are not supported here".to_owned())),
        Upstream::Tcp { host, port } => (host.as_str(), *port),
    };
    let mut tcp = TcpStream::connect((host, port)).await.map_err(|e| ConnectError(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let tls = &config.upstream_tls;
    let Some(connector) = &tls.connector else { return Ok(Stream::Tcp(tcp)) };
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8u32.to_be_bytes());
    request[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
    tcp.write_all(&request).await.map_err(|e| ConnectError(format!("sending SSLRequest: {e}")))?;
    // Exactly one byte: anything the server (or a man in the middle) sent after it goes into the
    // TLS handshake, never into the protocol (the CVE-2021-23222 class).
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|e| ConnectError(format!("reading the SSLRequest answer: {e}")))?;
    match answer[0] {
        b'S' => {}
        b'N' if tls.mode == SslMode::Prefer => return Ok(Stream::Tcp(tcp)),
        b'N' => {
            return Err(ConnectError(format!(
                "the server does not support SSL, but upstream sslmode is {}",
                tls.mode
            )))
        }
        other => {
            return Err(ConnectError(format!("the server answered SSLRequest with {:?}", char::from(other))))
        }
    }
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| ConnectError(format!("{host:?} is not a valid TLS server name: {e}")))?;
    match connector.connect(name, tcp).await {
        Ok(s) => Ok(Stream::Connected(Box::new(s))),
        Err(e) => Err(ConnectError(format!("TLS handshake with the upstream failed: {e}"))),
    }
}
