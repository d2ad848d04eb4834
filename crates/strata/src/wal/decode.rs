//! A decoder for pgoutput protocol version 1 (the payload of each `XLogData` on a logical
//! replication stream) into Strata's own types, and the replica-identity keys of row changes.
//!
//! Every read is bounds-checked: malformed input is a [`DecodeError`] naming the message and the
//! field, never a panic. Column values stay bytes: in text format they are in the walsender's
//! `client_encoding`, and nothing here interprets them.
//!
//! Which key a change names follows what PostgreSQL sends (research, capabilities.md §2.2):
//! - INSERT: the key columns of the new tuple (`N`).
//! - UPDATE: `N` always comes; `K` (key columns only) comes only when a key column changed, and
//!   `O` (the whole old row) instead of `K` under REPLICA IDENTITY FULL. The old key is `K`/`O`'s
//!   if present, else `N`'s; the new key is `N`'s.
//! - DELETE: `K` (or `O`).
//!
//! A key column that arrives as unchanged TOAST (`u`), or a tuple whose width is not the
//! relation's, makes the key unknown (`None`), which callers must treat as "any row of the table".
//! It is never read as NULL.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// A PostgreSQL object identifier (of a relation or a type).
pub(crate) type Oid = u32;

/// A position in the write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Lsn(pub(crate) u64);

impl fmt::Display for Lsn {
    /// PostgreSQL's `pg_lsn` spelling: `16/B374D848`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A time as pgoutput sends it: microseconds since 2000-01-01 00:00:00 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PgTimestamp(pub(crate) i64);

impl PgTimestamp {
    /// Seconds from the Unix epoch to PostgreSQL's.
    const POSTGRES_EPOCH_SECS: u64 = 946_684_800;

    /// The time, or `None` for `infinity`, `-infinity` and times `SystemTime` cannot hold.
    pub(crate) fn to_system_time(self) -> Option<SystemTime> {
        if self.0 == i64::MAX || self.0 == i64::MIN {
            return None;
        }
        let epoch = UNIX_EPOCH.checked_add(Duration::from_secs(Self::POSTGRES_EPOCH_SECS))?;
        let offset = Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            epoch.checked_add(offset)
        } else {
            epoch.checked_sub(offset)
        }
    }
}

/// One pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeInfo),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Logical(LogicalMessage),
}

/// `B`: a transaction starts; its changes follow, then a [`Commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Begin {
    /// The LSN of the transaction's commit record.
    pub(crate) final_lsn: Lsn,
    pub(crate) commit_time: PgTimestamp,
    pub(crate) xid: u32,
}

/// `C`: the transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Commit {
    /// Unused by PostgreSQL so far (0).
    pub(crate) flags: u8,
    /// The LSN of the commit record (the [`Begin::final_lsn`]).
    pub(crate) commit_lsn: Lsn,
    /// Where the transaction's WAL ends: what a stream acknowledges once the commit is applied.
    pub(crate) end_lsn: Lsn,
    pub(crate) commit_time: PgTimestamp,
}

/// `O`: the transaction came from another node through a replication origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The commit's LSN on the origin server.
    pub(crate) commit_lsn: Lsn,
    pub(crate) name: String,
}

/// `R`: a relation's shape, sent before its first change in a stream and again after it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relation {
    pub(crate) oid: Oid,
    /// Empty for `pg_catalog`.
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) replica_identity: ReplicaIdentity,
    pub(crate) columns: Vec<RelationColumn>,
}

impl Relation {
    /// The replica-identity columns, with their positions in a tuple.
    pub(crate) fn key_columns(&self) -> impl Iterator<Item = (usize, &RelationColumn)> {
        self.columns.iter().enumerate().filter(|(_, column)| column.is_key())
    }
}

/// `REPLICA IDENTITY`: which old values an UPDATE or DELETE carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplicaIdentity {
    /// The primary key (`d`).
    Default,
    /// No old values (`n`); UPDATE and DELETE cannot be published.
    Nothing,
    /// The whole old row (`f`); every column is flagged as key.
    Full,
    /// The columns of a chosen unique index (`i`).
    Index,
}

/// A column of an `R` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelationColumn {
    /// Bit 1: the column is part of the replica identity.
    pub(crate) flags: u8,
    pub(crate) name: String,
    pub(crate) type_oid: Oid,
    /// `atttypmod`: -1 when the type has none.
    pub(crate) type_modifier: i32,
}

impl RelationColumn {
    pub(crate) fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// `Y`: a non-built-in type used by a relation that follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypeInfo {
    pub(crate) oid: Oid,
    /// Empty for `pg_catalog`.
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// `I`: a row was inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Insert {
    pub(crate) relation: Oid,
    pub(crate) new: Vec<Value>,
}

/// `U`: a row was updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Update {
    pub(crate) relation: Oid,
    /// Present when a key column changed (`K`) or under REPLICA IDENTITY FULL (`O`).
    pub(crate) old: Option<OldRow>,
    pub(crate) new: Vec<Value>,
}

/// `D`: a row was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delete {
    pub(crate) relation: Oid,
    pub(crate) old: OldRow,
}

/// The old values of an UPDATE or DELETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OldRow {
    /// `K`: the replica-identity columns; the others are sent as NULL.
    Key(Vec<Value>),
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full(Vec<Value>),
}

impl OldRow {
    pub(crate) fn values(&self) -> &[Value] {
        match self {
            Self::Key(values) | Self::Full(values) => values,
        }
    }
}

/// `T`: every row of these relations went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Truncate {
    /// Bit 1: `CASCADE`; bit 2: `RESTART IDENTITY`.
    pub(crate) options: u8,
    pub(crate) relations: Vec<Oid>,
}

impl Truncate {
    pub(crate) fn cascade(&self) -> bool {
        self.options & 1 != 0
    }

    pub(crate) fn restart_identity(&self) -> bool {
        self.options & 2 != 0
    }
}

/// `M`: a message written by `pg_logical_emit_message` (Strata's heartbeat, DDL notices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogicalMessage {
    /// Bit 1: transactional (sent inside its transaction, at commit); otherwise sent at once.
    pub(crate) flags: u8,
    pub(crate) lsn: Lsn,
    pub(crate) prefix: String,
    pub(crate) content: Bytes,
}

impl LogicalMessage {
    pub(crate) fn is_transactional(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// One column of a tuple.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// `n`
    Null,
    /// `u`: an out-of-line TOAST value the change left alone; PostgreSQL does not send it.
    UnchangedToast,
    /// `t`: the text form.
    Text(Bytes),
    /// `b`: the binary (`send`) form, with the `binary` option.
    Binary(Bytes),
}

impl fmt::Debug for Value {
    /// Short values in full, long ones (a toasted document) by their start and length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 32;
        let (kind, bytes) = match self {
            Self::Null => return f.write_str("Null"),
            Self::UnchangedToast => return f.write_str("UnchangedToast"),
            Self::Text(bytes) => ("Text", bytes),
            Self::Binary(bytes) => ("Binary", bytes),
        };
        if bytes.len() <= SHOWN {
            write!(f, "{kind}({bytes:?})")
        } else {
            write!(f, "{kind}({:?}.. ({} bytes))", bytes.slice(..SHOWN), bytes.len())
        }
    }
}

/// Why a payload is not a pgoutput version 1 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput {message} message: {problem}")]
pub(crate) struct DecodeError {
    message: &'static str,
    problem: String,
}

/// Decodes one pgoutput protocol version 1 message.
pub(crate) fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
    let Some((&tag, body)) = payload.split_first() else {
        return Err(DecodeError { message: "empty", problem: "no message type byte".to_owned() });
    };
    let name = match tag {
        b'B' => "begin",
        b'C' => "commit",
        b'O' => "origin",
        b'R' => "relation",
        b'Y' => "type",
        b'I' => "insert",
        b'U' => "update",
        b'D' => "delete",
        b'T' => "truncate",
        b'M' => "logical",
        other => {
            return Err(DecodeError {
                message: "unknown",
                problem: format!("message type {} is not one of protocol version 1", show(other)),
            })
        }
    };
    let mut r = Reader { buf: body, pos: 0, message: name };
    let message = match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: r.lsn("final lsn")?,
            commit_time: r.timestamp("commit time")?,
            xid: r.u32("xid")?,
        }),
        b'C' => Message::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit lsn")?,
            end_lsn: r.lsn("end lsn")?,
            commit_time: r.timestamp("commit time")?,
        }),
        b'O' => Message::Origin(Origin { commit_lsn: r.lsn("commit lsn")?, name: r.string("origin name")? }),
        b'R' => Message::Relation(r.relation()?),
        b'Y' => Message::Type(TypeInfo {
            oid: r.u32("type oid")?,
            namespace: r.string("namespace")?,
            name: r.string("type name")?,
        }),
        b'I' => {
            let relation = r.u32("relation oid")?;
            r.expect_tag(b'N', "new tuple")?;
            Message::Insert(Insert { relation, new: r.tuple()? })
        }
        b'U' => {
            let relation = r.u32("relation oid")?;
            let (old, new) = match r.u8("tuple type")? {
                b'N' => (None, r.tuple()?),
                b'K' => (Some(OldRow::Key(r.tuple()?)), r.new_tuple_after_old()?),
                b'O' => (Some(OldRow::Full(r.tuple()?)), r.new_tuple_after_old()?),
                other => return Err(r.error(format!("tuple type {} is not K, O or N", show(other)))),
            };
            Message::Update(Update { relation, old, new })
        }
        b'D' => {
            let relation = r.u32("relation oid")?;
            let old = match r.u8("tuple type")? {
                b'K' => OldRow::Key(r.tuple()?),
                b'O' => OldRow::Full(r.tuple()?),
                other => return Err(r.error(format!("tuple type {} is not K or O", show(other)))),
            };
            Message::Delete(Delete { relation, old })
        }
        b'T' => {
            let count = r.u32("relation count")?;
            let options = r.u8("options")?;
            let relations = r.list(count, 4, "relation count", |r| r.u32("relation oid"))?;
            Message::Truncate(Truncate { options, relations })
        }
        // `M`, the one type left.
        _ => {
            let flags = r.u8("flags")?;
            let lsn = r.lsn("lsn")?;
            let prefix = r.string("prefix")?;
            let length = r.u32("content length")?;
            let content = Bytes::copy_from_slice(r.take(length, "content")?);
            Message::Logical(LogicalMessage { flags, lsn, prefix, content })
        }
    };
    r.finish()?;
    Ok(message)
}

/// A byte for an error message: the character when it is printable ASCII.
fn show(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("'{}'", char::from(byte))
    } else {
        format!("0x{byte:02x}")
    }
}

/// A cursor over one message's body; every read checks what is left.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn error(&self, problem: impl Into<String>) -> DecodeError {
        DecodeError { message: self.message, problem: problem.into() }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, len: impl TryInto<usize>, field: &str) -> Result<&'a [u8], DecodeError> {
        let len = len.try_into().map_err(|_| self.error(format!("{field} is too long")))?;
        let end = self.pos.checked_add(len);
        let Some(bytes) = end.and_then(|end| self.buf.get(self.pos..end)) else {
            return Err(self.error(format!(
                "truncated: {field} needs {len} bytes at offset {}, {} left",
                self.pos + 1,
                self.remaining()
            )));
        };
        self.pos += len;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        bytes.try_into().map_err(|_| self.error(format!("{field} is not {N} bytes")))
    }

    fn u8(&mut self, field: &str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_be_bytes)
    }

    fn u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn lsn(&mut self, field: &str) -> Result<Lsn, DecodeError> {
        self.array(field).map(u64::from_be_bytes).map(Lsn)
    }

    fn timestamp(&mut self, field: &str) -> Result<PgTimestamp, DecodeError> {
        self.array(field).map(i64::from_be_bytes).map(PgTimestamp)
    }

    /// A NUL-terminated string; names arrive in `client_encoding`, which Strata pins to UTF-8.
    fn string(&mut self, field: &str) -> Result<String, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(self.error(format!("truncated: {field} has no terminating NUL")));
        };
        let text = std::str::from_utf8(rest.get(..nul).unwrap_or_default())
            .map_err(|_| self.error(format!("{field} is not UTF-8")))?
            .to_owned();
        self.pos += nul + 1;
        Ok(text)
    }

    fn expect_tag(&mut self, tag: u8, field: &str) -> Result<(), DecodeError> {
        match self.u8(field)? {
            found if found == tag => Ok(()),
            found => Err(self.error(format!("{field}: expected {}, found {}", show(tag), show(found)))),
        }
    }

    fn new_tuple_after_old(&mut self) -> Result<Vec<Value>, DecodeError> {
        self.expect_tag(b'N', "new tuple")?;
        self.tuple()
    }

    /// `count` items of at least `min_len` bytes each; the count cannot reserve more memory
    /// than the input could fill.
    fn list<T>(
        &mut self,
        count: impl Into<u64>,
        min_len: usize,
        field: &str,
        mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let count = count.into();
        let fits = u64::try_from(self.remaining() / min_len.max(1)).unwrap_or(u64::MAX);
        if count > fits {
            return Err(self.error(format!(
                "truncated: {field} is {count}, but {} bytes hold at most {fits}",
                self.remaining()
            )));
        }
        // `count <= fits`, which came from a `usize`.
        let mut items = Vec::with_capacity(usize::try_from(count).unwrap_or_default());
        for _ in 0..count {
            items.push(item(self)?);
        }
        Ok(items)
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let oid = self.u32("relation oid")?;
        let namespace = self.string("namespace")?;
        let name = self.string("relation name")?;
        let replica_identity = match self.u8("replica identity")? {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            other => return Err(self.error(format!("replica identity {} is not d, n, f or i", show(other)))),
        };
        let count = self.u16("column count")?;
        // A column is at least its flags, an empty name's NUL, a type OID and a modifier.
        let columns = self.list(count, 10, "column count", |r| {
            Ok(RelationColumn {
                flags: r.u8("column flags")?,
                name: r.string("column name")?,
                type_oid: r.u32("column type oid")?,
                type_modifier: r.array("column type modifier").map(i32::from_be_bytes)?,
            })
        })?;
        Ok(Relation { oid, namespace, name, replica_identity, columns })
    }

    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let count = self.u16("tuple column count")?;
        self.list(count, 1, "tuple column count", |r| match r.u8("column kind")? {
            b'n' => Ok(Value::Null),
            b'u' => Ok(Value::UnchangedToast),
            b't' => Ok(Value::Text(r.value()?)),
            b'b' => Ok(Value::Binary(r.value()?)),
            other => Err(r.error(format!("column kind {} is not n, u, t or b", show(other)))),
        })
    }

    fn value(&mut self) -> Result<Bytes, DecodeError> {
        let length = self.u32("value length")?;
        Ok(Bytes::copy_from_slice(self.take(length, "value")?))
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            left => Err(self.error(format!("{left} bytes after the end of the message"))),
        }
    }
}

/// A row's replica-identity values, in the order of its relation's key columns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key(Vec<KeyValue>);

impl Key {
    pub(crate) fn values(&self) -> &[KeyValue] {
        &self.0
    }
}

/// One value of a [`Key`]: a NULL is possible only under REPLICA IDENTITY FULL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum KeyValue {
    Null,
    Text(Bytes),
    Binary(Bytes),
}

/// The keys a row change names; `None` is a key that cannot be known from the change (see the
/// module docs), so the change may have touched any row of its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RowKeys {
    Insert { new: Option<Key> },
    Update { old: Option<Key>, new: Option<Key> },
    Delete { old: Option<Key> },
}

impl RowKeys {
    /// Every distinct key the change touched, or `None` when one of them is unknown.
    pub(crate) fn touched(&self) -> Option<Vec<&Key>> {
        match self {
            Self::Insert { new: key } | Self::Delete { old: key } => Some(vec![key.as_ref()?]),
            Self::Update { old, new } => {
                let (old, new) = (old.as_ref()?, new.as_ref()?);
                Some(if old == new { vec![old] } else { vec![old, new] })
            }
        }
    }
}

/// A row change for a relation whose `R` message has not been seen. PostgreSQL sends `R` before a
/// relation's first change on a stream, so this means a lost message: treat the change as
/// touching everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput change for relation {0} before its relation message")]
pub(crate) struct UnknownRelation(pub(crate) Oid);

/// The relations a stream described, by OID, for reading the keys of their changes.
#[derive(Debug, Default)]
pub(crate) struct RelationMap {
    by_oid: HashMap<Oid, Relation>,
}

impl RelationMap {
    /// Remembers an `R` message, replacing what an earlier one said about the same relation
    /// (PostgreSQL sends a new one after the relation changes shape).
    pub(crate) fn remember(&mut self, relation: Relation) {
        self.by_oid.insert(relation.oid, relation);
    }

    pub(crate) fn get(&self, oid: Oid) -> Option<&Relation> {
        self.by_oid.get(&oid)
    }

    pub(crate) fn insert_keys(&self, insert: &Insert) -> Result<RowKeys, UnknownRelation> {
        let relation = self.relation(insert.relation)?;
        Ok(RowKeys::Insert { new: key_of(relation, &insert.new) })
    }

    pub(crate) fn update_keys(&self, update: &Update) -> Result<RowKeys, UnknownRelation> {
        let relation = self.relation(update.relation)?;
        let new = key_of(relation, &update.new);
        let old = match &update.old {
            Some(old) => key_of(relation, old.values()),
            None => new.clone(),
        };
        Ok(RowKeys::Update { old, new })
    }

    pub(crate) fn delete_keys(&self, delete: &Delete) -> Result<RowKeys, UnknownRelation> {
        let relation = self.relation(delete.relation)?;
        Ok(RowKeys::Delete { old: key_of(relation, delete.old.values()) })
    }

    fn relation(&self, oid: Oid) -> Result<&Relation, UnknownRelation> {
        self.by_oid.get(&oid).ok_or(UnknownRelation(oid))
    }
}

/// The key columns of a tuple, or `None` when one is unchanged TOAST, the tuple is not as wide as
/// the relation (so positions cannot be trusted), or the relation has no key columns.
fn key_of(relation: &Relation, values: &[Value]) -> Option<Key> {
    if values.len() != relation.columns.len() {
        return None;
    }
    let mut key = Vec::new();
    for (position, _) in relation.key_columns() {
        key.push(match values.get(position)? {
            Value::Null => KeyValue::Null,
            Value::Text(bytes) => KeyValue::Text(bytes.clone()),
            Value::Binary(bytes) => KeyValue::Binary(bytes.clone()),
            Value::UnchangedToast => return None,
        });
    }
    (!key.is_empty()).then_some(Key(key))
}

#[cfg(test)]
mod tests;
