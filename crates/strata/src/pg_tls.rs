//! TLS for Strata's own PostgreSQL connections (the catalog reader): tokio-postgres over rustls,
//! with the certificate verification the caller's `ClientConfig` does, and SCRAM channel binding
//! (`tls-server-end-point`, RFC 5929) so that a server on TLS that offers SCRAM-SHA-256-PLUS is
//! answered with it.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::rustls::{pki_types::ServerName, ClientConfig};

/// How Strata's own connections use TLS: the client configuration (what it verifies) and
/// whether TLS is required (libpq's `require` and stronger) or only preferred.
#[derive(Clone)]
pub struct PgTls {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) required: bool,
}

impl PgTls {
    /// TLS with `config`; `required` refuses a server that does not offer it.
    pub fn new(config: Arc<ClientConfig>, required: bool) -> Self {
        Self { config, required }
    }
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls").field("required", &self.required).finish_non_exhaustive()
    }
}

/// A tokio-postgres TLS connector over rustls: verification is the `ClientConfig`'s, and the
/// stream reports SCRAM's `tls-server-end-point` for the server's certificate.
#[derive(Clone)]
pub struct MakeRustls(pub Arc<ClientConfig>);

impl std::fmt::Debug for MakeRustls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MakeRustls").finish_non_exhaustive()
    }
}

/// One connection's TLS handshake (see [`MakeRustls`]).
pub struct RustlsConnect(Arc<ClientConfig>, String);

/// A TLS stream made by [`MakeRustls`].
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S> std::fmt::Debug for RustlsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RustlsStream").finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MakeTlsConnect<S> for MakeRustls {
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;
    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        Ok(RustlsConnect(self.0.clone(), domain.to_owned()))
    }
}

impl std::fmt::Debug for RustlsConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RustlsConnect").field("server", &self.1).finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for RustlsConnect {
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;
    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = ServerName::try_from(self.1).map_err(|e| io::Error::other(e.to_string()))?;
            let s = tokio_rustls::TlsConnector::from(self.0).connect(name, stream).await?;
            Ok(RustlsStream(Box::new(s)))
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| server_end_point(leaf.as_ref()))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// `tls-server-end-point` of a certificate (RFC 5929 §4.1): its hash with the hash of its
/// signature algorithm, MD5 and SHA-1 replaced by SHA-256. `None` for algorithms with no defined
/// hash (Ed25519, Ed448, RSASSA-PSS here), where PostgreSQL offers no binding either.
pub(crate) fn server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    use ring::digest::{digest, SHA256, SHA384, SHA512};
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, .. }, .. }
    let (outer, _) = der_element(der, 0x30)?;
    let (_, after_tbs) = der_element(outer, 0x30)?;
    let (algorithm, _) = der_element(after_tbs, 0x30)?;
    let (oid, _) = der_element(algorithm, 0x06)?;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let algorithm = match oid {
        [rsa @ .., last] if rsa == RSA => match last {
            0x04 | 0x05 | 0x0b => &SHA256,
            0x0c => &SHA384,
            0x0d => &SHA512,
            _ => return None,
        },
        [ecdsa @ .., last] if ecdsa == ECDSA_SHA2 => match last {
            0x02 => &SHA256,
            0x03 => &SHA384,
            0x04 => &SHA512,
            _ => return None,
        },
        o if o == ECDSA_SHA1 => &SHA256,
        _ => return None,
    };
    Some(digest(algorithm, der).as_ref().to_vec())
}

/// The contents of the DER element with `tag` at the start of `input`, and what follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 < 0x80 {
        (usize::from(len0), rest)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_and_unknown_algorithms_never_panic() {
        assert_eq!(der_element(&[0x30, 0x01, 0xaa, 0xbb], 0x30), Some((&[0xaa][..], &[0xbb][..])));
        assert_eq!(der_element(&[0x30, 0x81, 0x01, 0xaa], 0x30), Some((&[0xaa][..], &[][..])));
        assert_eq!(der_element(&[0x30, 0x05, 0xaa], 0x30), None);
        assert_eq!(der_element(&[0x31, 0x00], 0x30), None);
        assert_eq!(server_end_point(&[]), None);
        assert_eq!(server_end_point(&[0x30, 0x82, 0xff]), None);
    }

    fn der(pem: &str) -> Vec<u8> {
        use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
        CertificateDer::from_pem_slice(pem.as_bytes()).map(|c| c.to_vec()).unwrap_or_default()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Certificates made with openssl; the expected hashes are `openssl dgst` of their DER.
    #[test]
    fn the_end_point_hash_follows_the_signature_algorithm() {
        let p256 = der(P256_SHA256);
        let p384 = der(P384_SHA384);
        assert!(!p256.is_empty() && !p384.is_empty());
        assert_eq!(
            server_end_point(&p256).map(|h| hex(&h)).as_deref(),
            Some("f64ccab3fdf3ded041b563d1f56c8e6f0ebfff3e9027047169ecb83094ee45f5")
        );
        assert_eq!(
            server_end_point(&p384).map(|h| hex(&h)).as_deref(),
            Some("33984c26ee0678c01f942f573e66ce60e3c01cdb579d91f26d67f435305e856aad903720ee466a8a5f89a925e2763cd5")
        );
        // Ed25519 has no defined hash: no binding (PostgreSQL offers none with such a certificate).
        let ed = der(ED25519);
        assert!(!ed.is_empty());
        assert_eq!(server_end_point(&ed), None);
    }

    const P256_SHA256: &str = "-----BEGIN CERTIFICATE-----
MIIBbDCCAROgAwIBAgIUKC8DSdWibZI3GOqz9D3qISSKBOowCgYIKoZIzj0EAwIw
DDEKMAgGA1UEAwwBYTAeFw0yNjEyMDUxMzI1MDlaFw0zNjEyMDIxMzI1MDlaMAwx
CjAIBgNVBAMMAWEwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQ7iqUVr33ObTfJ
4SqFOQqoWFG3pWwYf1xuW/XG/XB3IMpLN5oA7ua3bh9YlCyUcNlbXXtbUFFm9Cru
UZJd8cLio1MwUTAdBgNVHQ4EFgQUjtp4mFWX4i/MkGR/MLBuMNviX+QwHwYDVR0j
BBgwFoAUjtp4mFWX4i/MkGR/MLBuMNviX+QwDwYDVR0TAQH/BAUwAwEB/zAKBggq
hkjOPQQDAgNHADBEAiASCAa0zttG0D7SQ5O/rZUeNrB97ucw40qIbAqmWWWtRwIg
FfRwziPMxGw2IvREvZIfzwcxV5QPA97qqozFAi1yCqg=
-----END CERTIFICATE-----";
    const P384_SHA384: &str = "-----BEGIN CERTIFICATE-----
MIIBqjCCATCgAwIBAgIUI9lQ4vVHP04arsVXLGKdmujt5TAwCgYIKoZIzj0EAwMw
DDEKMAgGA1UEAwwBYjAeFw0yNjEyMDUxMzI1MDlaFw0zNjEyMDIxMzI1MDlaMAwx
CjAIBgNVBAMMAWIwdjAQBgcqhkjOPQIBBgUrgQQAIgNiAARj8GXER9D0bJbhO/Au
OB6mKPDHIBoEeEj1MBs3ePmGmeQaWQkhldHuOjgxYi25HBvrZa4SELrKD9NMEkhc
ZQff/xTOY5gpWRGHB/l1xOhEwclqYIL+9jMTV45Ppj7Rb5CjUzBRMB0GA1UdDgQW
BBSZ2gx7z+g2sUz39ddRySBW+eINezAfBgNVHSMEGDAWgBSZ2gx7z+g2sUz39ddR
ySBW+eINezAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMDA2gAMGUCMQCzZ0Kv
xJmHf7e6iJ7aVP1j1gMG3OdGuLaXk3ktOQfjgG+6quzdXg3uWDvW6DStYeMCMCnI
qaj1AhDT8Fed8GyHR2yLVLbW5aacBzt5hxzILCFDUlGlpIfFNkFM/wxbExwh0A==
-----END CERTIFICATE-----";
    const ED25519: &str = "-----BEGIN CERTIFICATE-----
MIIBLDCB36ADAgECAhR6GIA+9/seQY1Nb6tgq8g9R6PcwDAFBgMrZXAwDDEKMAgG
A1UEAwwBYzAeFw0yNjEyMDUxMzI1MDlaFw0zNjEyMDIxMzI1MDlaMAwxCjAIBgNV
BAMMAWMwKjAFBgMrZXADIQAuaEKx6nSc/Z0vNi9b1fd1su/p89q3/o4oeTjtbLod
JqNTMFEwHQYDVR0OBBYEFA1q++zMnf0J19sTwIg1cDf3F5jHMB8GA1UdIwQYMBaA
FA1q++zMnf0J19sTwIg1cDf3F5jHMA8GA1UdEwEB/wQFMAMBAf8wBQYDK2VwA0EA
DhZnRPQaXnevtaRd71AwaSCe8eNQxa27dQM4ZlCOgvWCQisFJ2Iy04FeMNHFW9kD
LAVol1AseJo3OKBmrbaaAg==
-----END CERTIFICATE-----";
}
