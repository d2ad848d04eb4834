//! TLS for the HTTP embedder: rustls with the ring provider, the Mozilla roots plus the application's.

use std::fmt;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::{Error, ErrorKind};

/// A TLS client for one host: verifies the server's certificate chain against the roots and
/// its name against the URL's host (also sent as SNI when it is a DNS name).
pub(crate) struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    extra_roots: usize,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .field("roots", &"webpki-roots")
            .field("extra_roots", &self.extra_roots)
            .finish()
    }
}

impl TlsClient {
    /// A client for `host` (a DNS name or an IP address, without brackets) trusting the Mozilla
    /// roots and every certificate in `extra_roots_pem` (each a PEM text with one or more
    /// `CERTIFICATE` blocks).
    pub(crate) fn new(host: &str, extra_roots_pem: &[Vec<u8>]) -> Result<Self, Error> {
        let server_name = ServerName::try_from(host.to_owned()).map_err(|e| {
            Error::config(format!("embedder url host {host:?} is not a valid tls server name")).with_source(e)
        })?;
        let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let mut extra = 0;
        for (i, pem) in extra_roots_pem.iter().enumerate() {
            let mut found = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| {
                    Error::config(format!("root certificate pem #{} is not valid pem: {e}", i + 1))
                })?;
                roots.add(cert).map_err(|e| {
                    Error::config(format!("root certificate #{} cannot be a trust anchor: {e}", i + 1))
                        .with_source(e)
                })?;
                found += 1;
            }
            if found == 0 {
                return Err(Error::config(format!(
                    "root certificate pem #{} holds no CERTIFICATE block",
                    i + 1
                )));
            }
            extra += found;
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config(format!("tls setup failed: {e}")).with_source(e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // The embedder speaks HTTP/1.1 only; say so, so a server never picks h2.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { connector: TlsConnector::from(Arc::new(config)), server_name, extra_roots: extra })
    }

    /// Runs the handshake over `tcp`. A certificate that does not verify is an error of kind
    /// [`ErrorKind::Tls`] naming rustls's reason.
    pub(crate) async fn connect(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, Error> {
        self.connector.connect(self.server_name.clone(), tcp).await.map_err(|e| {
            let tls = e.get_ref().and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>());
            let host = self.server_name.to_str();
            match tls {
                Some(err @ tokio_rustls::rustls::Error::InvalidCertificate(_)) => Error::new(
                    ErrorKind::Tls,
                    format!("embedder certificate for {host} did not verify: {err}"),
                ),
                Some(err) => {
                    Error::new(ErrorKind::Tls, format!("tls handshake with embedder {host} failed: {err}"))
                }
                None => Error::embedder(format!(
                    "embedder connection to {host} failed during the tls handshake: {e}"
                )),
            }
            .with_source(e)
        })
    }
}
