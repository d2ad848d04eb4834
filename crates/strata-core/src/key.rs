//! Cache keys: a canonical encoding of everything that identifies a result, and its stable digest.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_128;

/// Version of the canonical key encoding. Changing the encoding must change this byte so that
/// keys written by an older build into a shared store are never confused with new ones.
const ENCODING_VERSION: u8 = 1;

/// A 128-bit digest of a key's canonical encoding (xxh3-128).
///
/// Stable across builds, processes and machines, so keys can be shared through Redis.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyDigest(u128);

impl KeyDigest {
    /// The digest as a number.
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// The digest as 16 big-endian bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Rebuilds a digest from [`to_bytes`](Self::to_bytes) output.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(u128::from_be_bytes(bytes))
    }

    /// The digest of arbitrary bytes, with the same hash keys use.
    pub fn of(bytes: &[u8]) -> Self {
        Self(xxh3_128(bytes))
    }
}

impl fmt::Display for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest({self})")
    }
}

/// A digest of the session settings that change results or their text form
/// (`search_path`, `TimeZone`, `DateStyle`, custom settings used by row-level security, ...).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct SettingsDigest(KeyDigest);

impl SettingsDigest {
    /// The digest of a set of `(name, value)` settings. Order does not matter; names are
    /// compared as given, so callers pass them in one case (PostgreSQL folds them to lower case).
    pub fn of<'a>(settings: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut pairs: Vec<(&str, &str)> = settings.into_iter().collect();
        pairs.sort_unstable();
        let mut buf = Vec::with_capacity(pairs.len() * 32);
        for (name, value) in pairs {
            push_len_prefixed(&mut buf, name.as_bytes());
            push_len_prefixed(&mut buf, value.as_bytes());
        }
        Self(KeyDigest::of(&buf))
    }

    /// The underlying digest.
    pub fn digest(self) -> KeyDigest {
        self.0
    }
}

impl Default for KeyDigest {
    fn default() -> Self {
        KeyDigest::of(&[])
    }
}

/// Who is asking and under which settings: results are never shared across scopes.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct KeyScope {
    database: Arc<str>,
    role: Arc<str>,
    settings: SettingsDigest,
}

impl KeyScope {
    /// A scope for `database`, the role in effect, and the digest of result-changing settings.
    pub fn new(database: impl Into<Arc<str>>, role: impl Into<Arc<str>>, settings: SettingsDigest) -> Self {
        Self { database: database.into(), role: role.into(), settings }
    }

    /// The database name.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The role in effect.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The digest of result-changing session settings.
    pub fn settings(&self) -> SettingsDigest {
        self.settings
    }
}

/// A PostgreSQL type OID, as carried by parameters; `0` means unspecified.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TypeOid(pub u32);

impl TypeOid {
    /// Unspecified: the server infers the type.
    pub const UNSPECIFIED: TypeOid = TypeOid(0);
    /// `boolean`.
    pub const BOOL: TypeOid = TypeOid(16);
    /// `bigint`.
    pub const INT8: TypeOid = TypeOid(20);
    /// `integer`.
    pub const INT4: TypeOid = TypeOid(23);
    /// `text`.
    pub const TEXT: TypeOid = TypeOid(25);
    /// `double precision`.
    pub const FLOAT8: TypeOid = TypeOid(701);
    /// `unknown`: the type of an untyped string literal.
    pub const UNKNOWN: TypeOid = TypeOid(705);
    /// `bit`.
    pub const BIT: TypeOid = TypeOid(1560);
    /// `numeric`.
    pub const NUMERIC: TypeOid = TypeOid(1700);
}

/// The wire format of a parameter or result column.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Format {
    /// Text format (code 0).
    Text,
    /// Binary format (code 1).
    Binary,
}

impl Format {
    /// The protocol's format code.
    pub fn code(self) -> u16 {
        match self {
            Format::Text => 0,
            Format::Binary => 1,
        }
    }

    /// The format for a protocol format code; `None` for codes PostgreSQL does not define.
    pub fn from_code(code: i16) -> Option<Self> {
        match code {
            0 => Some(Format::Text),
            1 => Some(Format::Binary),
            _ => None,
        }
    }
}

/// Record tags of the canonical encoding. Each record is `tag, u32 length, bytes`, so no
/// two different sequences of components can encode to the same bytes.
mod tag {
    pub(super) const DATABASE: u8 = b'D';
    pub(super) const ROLE: u8 = b'R';
    pub(super) const SETTINGS: u8 = b'S';
    pub(super) const STATEMENT: u8 = b'Q';
    pub(super) const PARAM: u8 = b'P';
    pub(super) const NULL_PARAM: u8 = b'N';
    pub(super) const RESULT_FORMATS: u8 = b'F';
    pub(super) const TABLE_VERSION: u8 = b'V';
    pub(super) const VARIANT: u8 = b'X';
}

/// The key of one cached result: a digest for lookup, and the canonical encoding it was computed
/// from so that tiers can reject a digest collision instead of serving another key's result.
///
/// Equal keys have equal canonical bytes; `Hash` feeds only the digest, which is already a hash
/// of them, so a map of keys never hashes a whole statement again.
#[derive(Clone, PartialEq, Eq)]
pub struct CacheKey {
    digest: KeyDigest,
    canonical: Bytes,
}

impl std::hash::Hash for CacheKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(self.digest.0);
    }
}

impl CacheKey {
    /// Starts a key for `statement` (a stable statement identity, such as the normalizer's) in `scope`.
    pub fn builder(scope: &KeyScope, statement: &[u8]) -> KeyBuilder {
        let mut buf = Vec::with_capacity(64 + statement.len() + scope.database.len() + scope.role.len());
        buf.push(ENCODING_VERSION);
        push_record(&mut buf, tag::DATABASE, scope.database.as_bytes());
        push_record(&mut buf, tag::ROLE, scope.role.as_bytes());
        push_record(&mut buf, tag::SETTINGS, &scope.settings.0.to_bytes());
        push_record(&mut buf, tag::STATEMENT, statement);
        KeyBuilder { buf }
    }

    /// Starts a key in a buffer the caller reuses (it is cleared first), so that a lookup which
    /// only needs the digest and the canonical bytes allocates nothing; see
    /// [`KeyBuilder::digest`], [`KeyBuilder::canonical`] and [`KeyBuilder::into_buffer`].
    pub fn builder_in(mut buf: Vec<u8>, scope: &KeyScope, statement: &[u8]) -> KeyBuilder {
        buf.clear();
        buf.reserve(64 + statement.len() + scope.database.len() + scope.role.len());
        buf.push(ENCODING_VERSION);
        push_record(&mut buf, tag::DATABASE, scope.database.as_bytes());
        push_record(&mut buf, tag::ROLE, scope.role.as_bytes());
        push_record(&mut buf, tag::SETTINGS, &scope.settings.0.to_bytes());
        push_record(&mut buf, tag::STATEMENT, statement);
        KeyBuilder { buf }
    }

    /// Rebuilds a key from its canonical encoding, as stored by a tier; the digest is recomputed.
    pub fn from_canonical(canonical: Bytes) -> Self {
        Self { digest: KeyDigest::of(&canonical), canonical }
    }

    /// The 128-bit digest used for lookups.
    #[inline]
    pub fn digest(&self) -> KeyDigest {
        self.digest
    }

    /// The canonical encoding the digest was computed from.
    #[inline]
    pub fn canonical(&self) -> &Bytes {
        &self.canonical
    }
}

impl fmt::Debug for CacheKey {
    // The canonical form holds parameter values, which may be private: only the digest is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheKey")
            .field("digest", &self.digest)
            .field("canonical_len", &self.canonical.len())
            .finish()
    }
}

/// Builds a [`CacheKey`] component by component; the order of calls is part of the key.
#[derive(Clone)]
pub struct KeyBuilder {
    buf: Vec<u8>,
}

impl KeyBuilder {
    /// Reserves room for `additional` more bytes of components, so a key whose size the caller
    /// can estimate is built with one allocation.
    #[must_use]
    pub fn with_reserved(mut self, additional: usize) -> Self {
        self.buf.reserve(additional);
        self
    }

    /// Adds a parameter value with its type and wire format.
    #[must_use]
    pub fn param(mut self, ty: TypeOid, format: Format, value: &[u8]) -> Self {
        self.push_param(tag::PARAM, ty, format, value);
        self
    }

    /// Adds a SQL `NULL` parameter, distinct from any value, including the empty one.
    #[must_use]
    pub fn null_param(mut self, ty: TypeOid, format: Format) -> Self {
        self.push_param(tag::NULL_PARAM, ty, format, &[]);
        self
    }

    /// Adds the result column formats the client asked for.
    #[must_use]
    pub fn result_formats(mut self, formats: &[Format]) -> Self {
        self.buf.push(tag::RESULT_FORMATS);
        push_u32(&mut self.buf, formats.len());
        self.buf.extend(formats.iter().map(|f| f.code() as u8));
        self
    }

    /// Adds the version of a table the result depends on, so that a write (which bumps the
    /// version) makes every key built with the old version unreachable.
    #[must_use]
    pub fn table_version(mut self, table: &str, version: u64) -> Self {
        self.buf.push(tag::TABLE_VERSION);
        push_u32(&mut self.buf, 4 + table.len() + 8);
        push_len_prefixed(&mut self.buf, table.as_bytes());
        self.buf.extend_from_slice(&version.to_le_bytes());
        self
    }

    /// Adds bytes that select among different answers to the same statement, such as which
    /// protocol messages asked for it (a proxy replays exactly the bytes the server sent, and
    /// those depend on whether the client asked for a description, a parse, ...).
    #[must_use]
    pub fn variant(mut self, bytes: &[u8]) -> Self {
        self.buf.push(tag::VARIANT);
        push_len_prefixed(&mut self.buf, bytes);
        self
    }

    /// The digest of the key built so far (what [`build`](Self::build) would give).
    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of(&self.buf)
    }

    /// The canonical bytes built so far.
    pub fn canonical(&self) -> &[u8] {
        &self.buf
    }

    /// The key built so far, copied out (the builder keeps its buffer for reuse).
    pub fn to_key(&self) -> CacheKey {
        CacheKey::from_canonical(Bytes::copy_from_slice(&self.buf))
    }

    /// Gives the buffer back for reuse, without building a key.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// Finishes the key.
    pub fn build(self) -> CacheKey {
        CacheKey::from_canonical(Bytes::from(self.buf))
    }

    fn push_param(&mut self, record: u8, ty: TypeOid, format: Format, value: &[u8]) {
        self.buf.push(record);
        push_u32(&mut self.buf, 4 + 1 + value.len());
        self.buf.extend_from_slice(&ty.0.to_le_bytes());
        self.buf.push(format.code() as u8);
        self.buf.extend_from_slice(value);
    }
}

impl fmt::Debug for KeyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBuilder").field("len", &self.buf.len()).finish()
    }
}

fn push_record(buf: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    buf.push(tag);
    push_len_prefixed(buf, bytes);
}

fn push_len_prefixed(buf: &mut Vec<u8>, bytes: &[u8]) {
    push_u32(buf, bytes.len());
    buf.extend_from_slice(bytes);
}

fn push_u32(buf: &mut Vec<u8>, len: usize) {
    // Lengths above 4 GiB cannot occur in a PostgreSQL message (its own limit is 1 GiB);
    // saturating keeps the encoding total rather than panicking.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn scope() -> KeyScope {
        KeyScope::new("app", "alice", SettingsDigest::of([("search_path", "public"), ("timezone", "UTC")]))
    }

    fn base() -> KeyBuilder {
        CacheKey::builder(&scope(), b"SELECT * FROM users WHERE id = $1")
    }

    #[test]
    fn digest_is_stable_across_builds() {
        // A snapshot: if this changes, keys shared through Redis by an older build no longer match,
        // so the encoding version must be bumped along with it.
        let key = base().param(TypeOid::INT4, Format::Text, b"42").result_formats(&[Format::Text]).build();
        expect!["7bb83685c614bc4688759a540a4fffd2"].assert_eq(&key.digest().to_string());
        let settings = SettingsDigest::of([("timezone", "UTC"), ("search_path", "public")]);
        expect!["a52945e1c8e8acd70e42b8319e894bcc"].assert_eq(&settings.digest().to_string());
    }

    #[test]
    fn every_part_of_the_key_changes_the_digest() {
        let reference = base().param(TypeOid::INT4, Format::Text, b"42").build();
        let scoped = |database: &str, role: &str, settings: SettingsDigest| {
            CacheKey::builder(&KeyScope::new(database, role, settings), b"SELECT * FROM users WHERE id = $1")
                .param(TypeOid::INT4, Format::Text, b"42")
                .build()
        };
        let settings = scope().settings();
        let variants = [
            ("database", scoped("other", "alice", settings)),
            ("role", scoped("app", "bob", settings)),
            ("settings", scoped("app", "alice", SettingsDigest::of([("search_path", "tenant_a")]))),
            (
                "statement",
                CacheKey::builder(&scope(), b"SELECT * FROM orders WHERE id = $1")
                    .param(TypeOid::INT4, Format::Text, b"42")
                    .build(),
            ),
            ("param value", base().param(TypeOid::INT4, Format::Text, b"43").build()),
            ("param type", base().param(TypeOid::INT8, Format::Text, b"42").build()),
            ("param format", base().param(TypeOid::INT4, Format::Binary, b"42").build()),
            ("null param", base().null_param(TypeOid::INT4, Format::Text).build()),
            (
                "result format",
                base().param(TypeOid::INT4, Format::Text, b"42").result_formats(&[Format::Binary]).build(),
            ),
            (
                "table version",
                base().param(TypeOid::INT4, Format::Text, b"42").table_version("users", 2).build(),
            ),
        ];
        for (what, key) in &variants {
            assert_ne!(key.digest(), reference.digest(), "{what} did not change the digest");
            assert_ne!(key.canonical(), reference.canonical(), "{what} did not change the canonical form");
        }
        // An empty value is not NULL, and two params are not one param holding both values.
        assert_ne!(
            base().param(TypeOid::TEXT, Format::Text, b"").build(),
            base().null_param(TypeOid::TEXT, Format::Text).build()
        );
        assert_ne!(
            base().param(TypeOid::TEXT, Format::Text, b"ab").param(TypeOid::TEXT, Format::Text, b"c").build(),
            base().param(TypeOid::TEXT, Format::Text, b"a").param(TypeOid::TEXT, Format::Text, b"bc").build()
        );
    }

    #[test]
    fn equal_inputs_give_equal_keys_and_settings_order_does_not_matter() {
        let a = base().param(TypeOid::INT4, Format::Text, b"42").build();
        let b = base().param(TypeOid::INT4, Format::Text, b"42").build();
        assert_eq!(a, b);
        assert_eq!(
            SettingsDigest::of([("a", "1"), ("b", "2")]),
            SettingsDigest::of([("b", "2"), ("a", "1")])
        );
        assert_ne!(SettingsDigest::of([("a", "1b")]), SettingsDigest::of([("a1", "b")]));
        assert_eq!(CacheKey::from_canonical(a.canonical().clone()), a);
    }

    #[test]
    fn a_key_built_in_a_reused_buffer_is_the_same_key() {
        let owned = base().param(TypeOid::INT4, Format::Text, b"42").build();
        let dirty = b"left over from another key".to_vec();
        let reused = CacheKey::builder_in(dirty, &scope(), b"SELECT * FROM users WHERE id = $1").param(
            TypeOid::INT4,
            Format::Text,
            b"42",
        );
        assert_eq!(reused.digest(), owned.digest());
        assert_eq!(reused.canonical(), &owned.canonical()[..]);
        assert_eq!(reused.build(), owned);
    }

    #[test]
    fn debug_never_shows_parameter_values() {
        let key = base().param(TypeOid::TEXT, Format::Text, b"secret-token").build();
        let shown = format!("{key:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains(&key.digest().to_string()));
    }
}
