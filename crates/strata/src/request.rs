//! What a caller asks the cache about: SQL text, its bound parameters, result formats and scope.

use strata_core::{Format, KeyScope, TypeOid};

/// A parameter bound by the client (extended protocol), by reference.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    ty: TypeOid,
    format: Format,
    value: Option<&'a [u8]>,
}

impl<'a> Param<'a> {
    /// A value in text format.
    pub fn text(ty: TypeOid, value: &'a [u8]) -> Self {
        Self { ty, format: Format::Text, value: Some(value) }
    }

    /// A value in binary format.
    pub fn binary(ty: TypeOid, value: &'a [u8]) -> Self {
        Self { ty, format: Format::Binary, value: Some(value) }
    }

    /// SQL `NULL`.
    pub fn null(ty: TypeOid, format: Format) -> Self {
        Self { ty, format, value: None }
    }

    /// The parameter's type.
    pub fn type_oid(&self) -> TypeOid {
        self.ty
    }

    /// The parameter's wire format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The value; `None` is SQL `NULL`.
    pub fn value(&self) -> Option<&'a [u8]> {
        self.value
    }
}

impl std::fmt::Debug for Param<'_> {
    // Parameter values are user data: only their size is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Param")
            .field("ty", &self.ty)
            .field("format", &self.format)
            .field("value_bytes", &self.value.map(<[u8]>::len))
            .finish()
    }
}

/// One statement to look up: SQL text in a scope, with bound parameters and result formats.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub(crate) scope: &'a KeyScope,
    pub(crate) sql: &'a str,
    pub(crate) params: &'a [Param<'a>],
    pub(crate) result_formats: &'a [Format],
    pub(crate) variant: &'a [u8],
    pub(crate) params_per_statement: bool,
}

impl<'a> Request<'a> {
    /// A request for `sql` in `scope`, with no bound parameters and text results.
    pub fn new(scope: &'a KeyScope, sql: &'a str) -> Self {
        Self { scope, sql, params: &[], result_formats: &[], variant: &[], params_per_statement: false }
    }

    /// The parameters the client bound to `$1..$n`.
    #[must_use]
    pub fn with_params(mut self, params: &'a [Param<'a>]) -> Self {
        self.params = params;
        self
    }

    /// The result formats the client asked for (the protocol's Bind result-format codes).
    #[must_use]
    pub fn with_result_formats(mut self, formats: &'a [Format]) -> Self {
        self.result_formats = formats;
        self
    }

    /// Bytes that select among different answers to the same statement and parameters (for a
    /// proxy: the shape of the protocol exchange whose bytes it replays). Part of the key.
    #[must_use]
    pub fn with_variant(mut self, variant: &'a [u8]) -> Self {
        self.variant = variant;
        self
    }

    /// Marks the text as several statements that each bind their own `$1..$n` (a pipelined
    /// batch of the extended protocol), with [`with_params`](Self::with_params) holding their
    /// parameters one statement after the other. The count of parameters is then not checked
    /// against the highest `$n`; each statement's text fixes its own share, so the key stays
    /// unambiguous.
    #[must_use]
    pub fn as_batch(mut self) -> Self {
        self.params_per_statement = true;
        self
    }

    /// The SQL text.
    pub fn sql(&self) -> &'a str {
        self.sql
    }

    /// The scope.
    pub fn scope(&self) -> &'a KeyScope {
        self.scope
    }
}
