//! TLS on both legs, with rustls and the ring provider: the certificate clients see (reloadable
//! without a restart), and the upstream connection's libpq-style `sslmode`.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, RwLock},
};

use tokio_rustls::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    client::WebPkiServerVerifier,
    crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::WebPkiClientVerifier,
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::error::Error;

/// The ALPN protocol PostgreSQL 17 requires on a direct TLS connection.
pub(crate) const ALPN_POSTGRESQL: &[u8] = b"postgresql";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Where the certificate clients see comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate that chains to one of these roots (PEM).
    pub client_ca: Option<PathBuf>,
}

/// The server side of client TLS: the loaded configuration, swapped whole by [`reload`](Self::reload)
/// (new handshakes use the new one; sessions already running keep theirs).
pub(crate) struct ClientTls {
    files: TlsFiles,
    current: RwLock<Loaded>,
}

#[derive(Clone)]
struct Loaded {
    config: Arc<ServerConfig>,
    /// The leaf certificate, compared with the upstream's for SCRAM channel binding.
    leaf: CertificateDer<'static>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Loads the files; any problem is a configuration error naming the file.
    pub(crate) fn load(files: TlsFiles) -> Result<Self, Error> {
        let loaded = load_server(&files)?;
        Ok(Self { files, current: RwLock::new(loaded) })
    }

    /// Reads the files again; on failure the certificate in force stays and the error is returned.
    pub(crate) fn reload(&self) -> Result<(), Error> {
        let loaded = load_server(&self.files)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = loaded;
        Ok(())
    }

    /// The acceptor for a new handshake.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).config.clone();
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// The leaf certificate in force.
    pub(crate) fn leaf(&self) -> CertificateDer<'static> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).leaf.clone()
    }

    /// The files it was loaded from.
    pub(crate) fn files(&self) -> &TlsFiles {
        &self.files
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::config(format!("cannot read the {what} {}", path.display())).with_source(e))
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::config(format!("the {what} {} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::config(format!("the {what} {} holds no CERTIFICATE block", path.display())));
    }
    Ok(certs)
}

fn roots(path: &Path, what: &str) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, what)? {
        roots.add(cert).map_err(|e| {
            Error::config(format!(
                "a certificate in the {what} {} cannot be a trust anchor: {e}",
                path.display()
            ))
        })?;
    }
    Ok(roots)
}

fn load_server(files: &TlsFiles) -> Result<Loaded, Error> {
    let chain = certificates(&files.cert, "TLS certificate")?;
    let key_pem = read(&files.key, "TLS key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        Error::config(format!("the TLS key {} holds no usable private key: {e}", files.key.display()))
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS setup failed: {e}")))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca, "client CA file")?),
                provider(),
            )
            .build()
            .map_err(|e| Error::config(format!("the client CA file {} is unusable: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let leaf = chain[0].clone();
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        Error::config(format!(
            "the TLS certificate {} and key {} do not make a usable pair: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    // A client that offers ALPN must offer `postgresql`; one that offers none is accepted (libpq
    // before 17 sends none on the SSLRequest path). Direct TLS checks that ALPN was used.
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Loaded { config: Arc::new(config), leaf })
}

/// libpq's `sslmode` for the upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, plain TCP when it does not; the certificate is not checked.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS with a certificate chaining to the root certificate; its name is not checked.
    VerifyCa,
    /// TLS with a certificate chaining to the root certificate and naming the upstream host.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(Error::config(format!(
                "upstream sslmode must be disable, prefer, require, verify-ca or verify-full, not {other:?} (allow is not offered: it never protects anything)"
            )))
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        })
    }
}

/// The upstream leg's TLS: the mode and, unless it is `disable`, the client configuration.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    pub(crate) mode: SslMode,
    pub(crate) connector: Option<tokio_rustls::TlsConnector>,
    /// The same configuration, for the catalog reader's own connections.
    pub(crate) client_config: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// The configuration for `mode`; `root_cert` is a PEM file of roots, or `system` for the
    /// Mozilla roots (libpq's `sslrootcert=system`). The verifying modes need one.
    pub(crate) fn new(mode: SslMode, root_cert: Option<&Path>) -> Result<Self, Error> {
        if mode == SslMode::Disable {
            return Ok(Self { mode, connector: None, client_config: None });
        }
        let roots = match root_cert {
            Some(p) if p == Path::new("system") => {
                RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }
            }
            Some(p) => roots(p, "upstream root certificate file")?,
            None if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
                return Err(Error::config(format!(
                    "upstream sslmode {mode} needs the root certificate to verify against (--upstream-sslrootcert FILE, or system)"
                )))
            }
            None => RootCertStore::empty(),
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config(format!("TLS setup failed: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = match mode {
            SslMode::Disable => unreachable!("returned above"),
            SslMode::Prefer | SslMode::Require => Arc::new(Unverified(provider())),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| {
                        Error::config(format!("the upstream root certificates are unusable: {e}"))
                    })?;
                if mode == SslMode::VerifyCa {
                    Arc::new(ChainOnly(webpki))
                } else {
                    webpki
                }
            }
        };
        let mut config = builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        let config = Arc::new(config);
        Ok(Self {
            mode,
            connector: Some(tokio_rustls::TlsConnector::from(config.clone())),
            client_config: Some(config),
        })
    }
}

/// `prefer` and `require`: the certificate is not checked (as libpq), but the handshake's
/// signatures are, so the session keys belong to whoever holds the certificate's key.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain, validity and usage are checked; a name that does not match is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
