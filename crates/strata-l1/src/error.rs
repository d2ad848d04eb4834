//! The hot tier's error type: only configuration can fail.

/// What kind of error occurred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value is invalid.
    Config,
}

/// An error building a [`HotTier`](crate::HotTier).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Config, message: message.into() }
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl From<Error> for strata_core::Error {
    fn from(err: Error) -> Self {
        let kind = match err.kind {
            ErrorKind::Config => strata_core::ErrorKind::Config,
        };
        strata_core::Error::new(kind, err.message.clone()).with_source(err)
    }
}
