//! The one error type of the semantic tier, with a kind callers can match on.

use std::borrow::Cow;
use std::fmt;

/// What went wrong, in a form a caller can match on.
///
/// Lookups never return these: an embedder failure or timeout is a miss. Errors come from
/// building a configuration and from calling an [`Embedder`](crate::Embedder) directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value is invalid.
    Config,
    /// The embedder could not be reached, refused the call or answered something unusable.
    Embedder,
    /// The call did not finish within its deadline.
    Timeout,
    /// A TLS handshake failed: the server's certificate did not verify (unknown issuer, a name
    /// other than the URL's host, expired) or no protocol version could be agreed.
    Tls,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Config => "config",
            ErrorKind::Embedder => "embedder",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Tls => "tls",
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from the semantic tier or one of its embedders.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    #[source]
    source: Option<BoxError>,
}

impl Error {
    /// An error of `kind` with a message (lowercase, no final period).
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// Attaches the underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    pub(crate) fn embedder(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Embedder, message)
    }
}

impl From<Error> for strata_core::Error {
    fn from(err: Error) -> Self {
        let kind = match err.kind {
            ErrorKind::Config => strata_core::ErrorKind::Config,
            ErrorKind::Embedder | ErrorKind::Tls => strata_core::ErrorKind::Unavailable,
            ErrorKind::Timeout => strata_core::ErrorKind::Timeout,
        };
        strata_core::Error::new(kind, err.message.clone()).with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_the_core_error_with_a_matching_kind() {
        let err = Error::new(ErrorKind::Timeout, "embedder did not answer within 50ms");
        assert_eq!(err.to_string(), "timeout: embedder did not answer within 50ms");
        let core: strata_core::Error = err.into();
        assert_eq!(core.kind(), strata_core::ErrorKind::Timeout);
        assert!(std::error::Error::source(&core).is_some());
    }
}
