//! Version units finer than a table, for key-level invalidation (see `ARCHITECTURE.md`).
//!
//! Per table `t` (its version unit name):
//! - `t`: every write to `t` bumps it; table-level readers read it;
//! - `t\0w`: writes whose keys are unknown bump it; every key-level reader reads it;
//! - `t\0s\0<slot>`: writes of a key bump the slot of its value; point and IN-list readers
//!   read the slots of their values;
//! - `t\0b\0<bucket>`: writes of an integer key bump the bucket of its value; range readers read
//!   the buckets their closed range covers.
//!
//! PostgreSQL identifiers cannot contain NUL, so no table's unit can collide with these. One
//! function maps a write to its units ([`write_units`]) for every path: the proxy's writes, their
//! `RETURNING` rows and the WAL's row keys.

use strata_core::{Format, TableName, TypeOid};
use strata_normalizer::{
    Analysis, LiteralForm, OnConflict, RestrictedValues, StatementAnalysis, ValueRef, WriteKeys,
};

use crate::relations::{KeyColumn, KeyKind, KeySource, Relations};
use crate::request::Param;
use crate::versions::version_unit;

/// Point slots per table: a key's slot is a hash of its canonical bytes modulo this.
pub(crate) const SLOTS: u64 = 1 << 16;
/// Consecutive integer keys per range bucket.
pub(crate) const BUCKET_WIDTH: i64 = 1024;
/// The most values a point or IN-list read may name and stay key-level.
pub(crate) const MAX_POINTS: usize = 64;
/// The most buckets a range read may cover and stay key-level.
pub(crate) const MAX_BUCKETS: i64 = 16;

/// A key value in its canonical form: equal in PostgreSQL exactly when equal here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum KeyValue {
    /// `int2`, `int4`, `int8`.
    Int(i64),
    /// `uuid` (16 bytes) or `text` (its bytes, under a deterministic collation).
    Bytes(Vec<u8>),
}

impl KeyValue {
    /// Reads a value in PostgreSQL's text form for a key of `kind`; `None` when it is not a
    /// value this code can canonicalize (the caller then stays table-level or table-wide).
    pub(crate) fn from_text(kind: KeyKind, text: &str) -> Option<Self> {
        match kind {
            KeyKind::Int => parse_int(text).map(KeyValue::Int),
            KeyKind::Uuid => parse_uuid(text).map(KeyValue::Bytes),
            KeyKind::Text => Some(KeyValue::Bytes(text.as_bytes().to_vec())),
        }
    }

    /// Reads a binary-format parameter whose declared type is `type_oid`.
    pub(crate) fn from_binary(kind: KeyKind, type_oid: u32, bytes: &[u8]) -> Option<Self> {
        match (kind, type_oid, bytes.len()) {
            (KeyKind::Int, 21, 2) => Some(KeyValue::Int(i64::from(i16::from_be_bytes([bytes[0], bytes[1]])))),
            (KeyKind::Int, 23, 4) => {
                Some(KeyValue::Int(i64::from(i32::from_be_bytes(bytes.try_into().ok()?))))
            }
            (KeyKind::Int, 20, 8) => Some(KeyValue::Int(i64::from_be_bytes(bytes.try_into().ok()?))),
            (KeyKind::Uuid, 2950, 16) => Some(KeyValue::Bytes(bytes.to_vec())),
            (KeyKind::Text, 25 | 1043, _) => Some(KeyValue::Bytes(bytes.to_vec())),
            _ => None,
        }
    }

    fn slot(&self) -> u64 {
        let hash = match self {
            KeyValue::Int(v) => stable_hash(&v.to_le_bytes(), b'i'),
            KeyValue::Bytes(b) => stable_hash(b, b'b'),
        };
        hash % SLOTS
    }
}

/// FNV-1a: stable across processes and versions (slots are shared through Redis), unlike a
/// randomly seeded hasher.
fn stable_hash(bytes: &[u8], tag: u8) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&tag).chain(bytes) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `int8in`'s grammar without its extensions: optional blanks, an optional sign, decimal digits,
/// optional blanks.
fn parse_int(text: &str) -> Option<i64> {
    let t = text.trim_matches(|c: char| c == ' ' || ('\t'..='\r').contains(&c));
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse::<i64>().ok()
}

/// `uuid_in`'s grammar: 32 hexadecimal digits, optionally in braces, with a hyphen allowed after
/// any group of four digits.
fn parse_uuid(text: &str) -> Option<Vec<u8>> {
    let inner = match text.strip_prefix('{') {
        Some(rest) => rest.strip_suffix('}')?,
        None => text,
    };
    let mut out = Vec::with_capacity(16);
    let mut nibbles = 0u32;
    let mut byte = 0u8;
    let bytes = inner.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'-' {
            // Only after a complete group of four digits, never first, last or doubled.
            if nibbles == 0 || !nibbles.is_multiple_of(4) || i + 1 == bytes.len() || bytes[i + 1] == b'-' {
                return None;
            }
            i += 1;
            continue;
        }
        let v = (b as char).to_digit(16)? as u8;
        byte = (byte << 4) | v;
        nibbles += 1;
        if nibbles.is_multiple_of(2) {
            out.push(byte);
            byte = 0;
        }
        i += 1;
    }
    (nibbles == 32).then_some(out)
}

/// A unit's name for people: `t`, `t/wide`, `t/slot/<n>`, `t/bucket/<n>`.
pub(crate) fn display_unit(unit: &TableName) -> String {
    let mut parts = unit.as_str().split('\0');
    let table = parts.next().unwrap_or_default();
    match (parts.next(), parts.next()) {
        (Some("w"), None) => format!("{table}/wide"),
        (Some("s"), Some(n)) => format!("{table}/slot/{n}"),
        (Some("b"), Some(n)) => format!("{table}/bucket/{n}"),
        _ => unit.as_str().replace('\0', "/"),
    }
}

/// The table-wide unit: bumped by writes whose keys are unknown, read by every key-level reader.
pub(crate) fn wide_unit(table: &TableName) -> TableName {
    unit_name(table, "\0w", None)
}

fn slot_unit(table: &TableName, slot: u64) -> TableName {
    unit_name(table, "\0s\0", Some((false, slot)))
}

fn bucket_unit(table: &TableName, bucket: i64) -> TableName {
    unit_name(table, "\0b\0", Some((bucket < 0, bucket.unsigned_abs())))
}

/// `table`, `tag`, then the number (sign, magnitude) in decimal if any, as one name, built with
/// one allocation and no formatting machinery: every key-level lookup names a few of these.
fn unit_name(table: &TableName, tag: &str, number: Option<(bool, u64)>) -> TableName {
    let mut digits = [0u8; 21];
    let mut at = digits.len();
    if let Some((negative, mut n)) = number {
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if negative {
            at -= 1;
            digits[at] = b'-';
        }
    }
    let number = &digits[at..];
    let len = table.as_str().len() + tag.len() + number.len();
    let mut name = [0u8; 160];
    if len > name.len() {
        let mut long = String::with_capacity(len);
        long.push_str(table.as_str());
        long.push_str(tag);
        long.extend(number.iter().map(|&b| char::from(b)));
        return TableName::new(long);
    }
    let (t, rest) = name.split_at_mut(table.as_str().len());
    t.copy_from_slice(table.as_str().as_bytes());
    rest[..tag.len()].copy_from_slice(tag.as_bytes());
    rest[tag.len()..tag.len() + number.len()].copy_from_slice(number);
    // ASCII appended to a str: still UTF-8.
    match std::str::from_utf8(&name[..len]) {
        Ok(text) => TableName::new(text),
        Err(_) => TableName::new(String::from_utf8_lossy(&name[..len]).into_owned()),
    }
}

/// The units a committed write to `table` bumps: with its keys known (old and new values of
/// every row it changed), the table's unit and each key's slot and bucket; otherwise the table's
/// unit and the table-wide unit.
pub(crate) fn write_units(table: &TableName, keys: Option<&[KeyValue]>) -> Vec<TableName> {
    let mut units = vec![table.clone()];
    match keys {
        None => units.push(wide_unit(table)),
        Some(keys) => {
            for key in keys {
                units.push(slot_unit(table, key.slot()));
                if let KeyValue::Int(v) = key {
                    units.push(bucket_unit(table, v.div_euclid(BUCKET_WIDTH)));
                }
            }
        }
    }
    units.sort();
    units.dedup();
    units
}

/// What a key-level read of a table restricts its key to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadKeys {
    /// A point or an IN list.
    Points(Vec<KeyValue>),
    /// A closed integer range, both ends included.
    Range(i64, i64),
}

/// The units a key-level read of `table` reads, or `None` when it must stay table-level (too
/// many values or buckets, a range over a non-integer key).
#[cfg(test)]
pub(crate) fn read_units(table: &TableName, keys: &ReadKeys) -> Option<Vec<TableName>> {
    let mut units = Vec::new();
    push_read_units(table, &wide_unit(table), keys, &mut units).then(|| {
        units.sort();
        units.dedup();
        units
    })
}

/// Appends the units of [`read_units`] to `units` (unsorted; `wide` is the table's
/// [`wide_unit`], which a plan names once), or appends nothing and says `false` where the read
/// must stay table-level.
fn push_read_units(table: &TableName, wide: &TableName, keys: &ReadKeys, units: &mut Vec<TableName>) -> bool {
    match keys {
        ReadKeys::Points(values) => {
            if values.is_empty() || values.len() > MAX_POINTS {
                return false;
            }
            units.push(wide.clone());
            units.extend(values.iter().map(|v| slot_unit(table, v.slot())));
        }
        ReadKeys::Range(low, high) => {
            if low > high {
                // Empty: no row can match, but keep it simple and safe.
                return false;
            }
            let (first, last) = (low.div_euclid(BUCKET_WIDTH), high.div_euclid(BUCKET_WIDTH));
            if last.checked_sub(first).is_none_or(|n| n >= MAX_BUCKETS) {
                return false;
            }
            units.push(wide.clone());
            units.extend((first..=last).map(|b| bucket_unit(table, b)));
        }
    }
    true
}

/// The keys writes are known to have changed, by table version unit; a written table missing
/// here changed at unknown keys.
pub(crate) type WrittenKeys = std::collections::HashMap<TableName, Vec<KeyValue>>;

/// The keys a session's writes changed since its last commit: a table is keyed only while
/// every write to it said which keys it changed.
#[derive(Debug, Default)]
pub(crate) struct KeyLedger {
    known: WrittenKeys,
    wide: std::collections::HashSet<TableName>,
}

impl KeyLedger {
    /// Records one text's writes: `written` the tables it wrote, `keys` those whose keys it knows.
    pub(crate) fn record(&mut self, written: &[TableName], mut keys: WrittenKeys) {
        for unit in written.iter().map(version_unit) {
            match keys.remove(&unit) {
                Some(values) => self.known.entry(unit).or_default().extend(values),
                None => {
                    self.wide.insert(unit);
                }
            }
        }
    }

    pub(crate) fn merge(&mut self, other: KeyLedger) {
        for (unit, values) in other.known {
            self.known.entry(unit).or_default().extend(values);
        }
        self.wide.extend(other.wide);
    }

    /// The keys of every table all of whose writes were keyed.
    pub(crate) fn into_keys(mut self) -> WrittenKeys {
        for unit in &self.wide {
            self.known.remove(unit);
        }
        self.known
    }
}

/// A table a cacheable read restricts to some values of its key: planned once per text, its
/// units are computed for each execution from the values bound.
#[derive(Debug, Clone)]
pub(crate) struct KeyedRead {
    /// The table's version unit.
    pub(crate) unit: TableName,
    /// Its table-wide unit ([`wide_unit`]).
    pub(crate) wide: TableName,
    pub(crate) kind: KeyKind,
    /// One restriction per reference to the table; together they cover every row it reads.
    pub(crate) restrictions: Vec<RestrictedValues>,
}

/// The tables of a one-statement read that can be key-level: every reference to the table is
/// restricted on its key column (the normalizer's contract), the catalog knows the key and
/// nothing else reaches the table (`through`: relations read through views and parents).
/// Integer and uuid keys only: a text key's bytes depend on the client's encoding.
pub(crate) fn keyed_reads(
    analysis: &Analysis,
    relations: &Relations,
    through: &[TableName],
) -> Vec<KeyedRead> {
    let [statement] = analysis.statements() else { return Vec::new() };
    let mut keyed: Vec<KeyedRead> = Vec::new();
    for table in statement.reads() {
        let unit = version_unit(table);
        if through.contains(&unit) || keyed.iter().any(|k| k.unit == unit) {
            continue;
        }
        let Some(key) = relations.key_column(&unit) else { continue };
        if !matches!(key.kind, KeyKind::Int | KeyKind::Uuid) {
            continue;
        }
        let restrictions: Vec<RestrictedValues> = statement
            .read_restrictions()
            .iter()
            .filter(|r| version_unit(r.table()) == unit && r.column() == key.name)
            .map(|r| r.values().clone())
            .collect();
        if !restrictions.is_empty() {
            keyed.push(KeyedRead { wide: wide_unit(&unit), unit, kind: key.kind, restrictions });
        }
    }
    keyed
}

/// Whether a cast written on a value keeps it a value of a key of `kind`.
fn cast_allowed(kind: KeyKind, cast: Option<&str>) -> bool {
    let Some(cast) = cast else { return true };
    let name = cast.strip_prefix("pg_catalog.").unwrap_or(cast);
    match kind {
        KeyKind::Int => matches!(name, "int2" | "int4" | "int8"),
        KeyKind::Uuid => name == "uuid",
        KeyKind::Text => matches!(name, "text" | "varchar"),
    }
}

/// Where a statement's values are, for one execution.
pub(crate) struct Values<'a> {
    pub(crate) statement: &'a StatementAnalysis,
    /// The client's bound parameters; `None` where they are not known.
    pub(crate) params: Option<&'a [Param<'a>]>,
    /// The key field of the rows a write returned (`RETURNING`), when the caller read it.
    pub(crate) returned: Option<&'a Returned<'a>>,
}

/// What a value reference resolves to.
enum Resolved {
    Value(KeyValue),
    /// Matches no row (`NULL` in a list, a NULL parameter).
    Nothing,
}

impl Values<'_> {
    fn resolve(&self, kind: KeyKind, value: &ValueRef) -> Option<Resolved> {
        match value {
            ValueRef::Null => Some(Resolved::Nothing),
            ValueRef::Literal { index, cast } => {
                if !cast_allowed(kind, cast.as_deref()) {
                    return None;
                }
                let literal = self.statement.params().get(usize::try_from(*index).ok()?)?;
                let typed = match (kind, literal.form()) {
                    (KeyKind::Int, LiteralForm::Integer) => {
                        matches!(literal.type_oid(), TypeOid::INT4 | TypeOid::INT8)
                    }
                    // An untyped string takes the column's type: read as PostgreSQL reads it.
                    (_, LiteralForm::String) => literal.type_oid() == TypeOid::UNKNOWN || cast.is_some(),
                    _ => false,
                };
                typed.then(|| KeyValue::from_text(kind, literal.text()).map(Resolved::Value))?
            }
            ValueRef::Client { number, cast } => {
                if !cast_allowed(kind, cast.as_deref()) {
                    return None;
                }
                let param = self.params?.get(usize::try_from(*number).ok()?.checked_sub(1)?)?;
                let ty = param.type_oid().0;
                let Some(bytes) = param.value() else { return Some(Resolved::Nothing) };
                let declared_ok = match kind {
                    KeyKind::Int => matches!(ty, 0 | 20 | 21 | 23 | 705),
                    KeyKind::Uuid => matches!(ty, 0 | 2950 | 705),
                    KeyKind::Text => false,
                };
                if !declared_ok {
                    return None;
                }
                match param.format() {
                    Format::Binary => KeyValue::from_binary(kind, ty, bytes).map(Resolved::Value),
                    Format::Text => {
                        KeyValue::from_text(kind, std::str::from_utf8(bytes).ok()?).map(Resolved::Value)
                    }
                }
            }
            _ => None,
        }
    }

    /// The key values of a points or array restriction; `None` when one cannot be read.
    fn points(&self, kind: KeyKind, restriction: &RestrictedValues) -> Option<Vec<KeyValue>> {
        match restriction {
            RestrictedValues::Points(values) => {
                let mut out = Vec::with_capacity(values.len());
                for value in values {
                    if let Resolved::Value(v) = self.resolve(kind, value)? {
                        out.push(v);
                    }
                }
                Some(out)
            }
            RestrictedValues::Elements(value) => self.elements(kind, value),
            _ => None,
        }
    }

    /// The elements of an array the client bound (`c = ANY ($1)`); NULL elements and a NULL
    /// array match nothing. Literal arrays are not read: they stay table-level.
    fn elements(&self, kind: KeyKind, value: &ValueRef) -> Option<Vec<KeyValue>> {
        let ValueRef::Client { number, cast: None } = value else { return None };
        let param = self.params?.get(usize::try_from(*number).ok()?.checked_sub(1)?)?;
        let Some(bytes) = param.value() else { return Some(Vec::new()) };
        let element_types: &[u32] = match kind {
            KeyKind::Int => &[21, 23, 20],
            KeyKind::Uuid => &[2950],
            KeyKind::Text => return None,
        };
        let array_ok = match kind {
            KeyKind::Int => matches!(param.type_oid().0, 0 | 1005 | 1007 | 1016),
            _ => matches!(param.type_oid().0, 0 | 2951),
        };
        if !array_ok {
            return None;
        }
        let values = match param.format() {
            Format::Text => text_array(std::str::from_utf8(bytes).ok()?)?
                .into_iter()
                .flatten()
                .map(|e| KeyValue::from_text(kind, e))
                .collect::<Option<Vec<_>>>()?,
            Format::Binary => {
                let (element_type, elements) = binary_array(bytes)?;
                if !element_types.contains(&element_type) {
                    return None;
                }
                elements
                    .into_iter()
                    .flatten()
                    .map(|e| KeyValue::from_binary(kind, element_type, e))
                    .collect::<Option<Vec<_>>>()?
            }
        };
        Some(values)
    }

    /// What one restriction lets a read see of its table's keys.
    fn read_keys(&self, kind: KeyKind, restriction: &RestrictedValues) -> Option<ReadKeys> {
        match restriction {
            RestrictedValues::Points(_) | RestrictedValues::Elements(_) => {
                self.points(kind, restriction).map(ReadKeys::Points)
            }
            RestrictedValues::Range { low, low_inclusive, high, high_inclusive } => {
                if kind != KeyKind::Int {
                    return None;
                }
                let (Resolved::Value(KeyValue::Int(low)), Resolved::Value(KeyValue::Int(high))) =
                    (self.resolve(kind, low)?, self.resolve(kind, high)?)
                else {
                    // A NULL bound matches no row; keep it simple and table-level.
                    return None;
                };
                let low = if *low_inclusive { low } else { low.checked_add(1)? };
                let high = if *high_inclusive { high } else { high.checked_sub(1)? };
                Some(ReadKeys::Range(low, high))
            }
            _ => None,
        }
    }
}

/// The elements of a one-dimensional array in PostgreSQL's text form (`{1,2,NULL}`), `None`
/// for NULL; `None` overall for anything else (more dimensions, bounds, quoting with escapes).
fn text_array(text: &str) -> Option<Vec<Option<&str>>> {
    let inner = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    if inner.trim().is_empty() {
        return Some(Vec::new());
    }
    inner
        .split(',')
        .map(|e| {
            let e = e.trim();
            if e.contains(['{', '}', '\\']) {
                return None;
            }
            match e.strip_prefix('"') {
                Some(quoted) => {
                    let quoted = quoted.strip_suffix('"')?;
                    (!quoted.contains('"')).then_some(Some(quoted))
                }
                None if e.eq_ignore_ascii_case("null") => Some(None),
                None => (!e.is_empty() && !e.contains('"')).then_some(Some(e)),
            }
        })
        .collect()
}

/// A one-dimensional array in PostgreSQL's binary form: its element type and elements (`None`
/// for NULL). `None` for anything malformed or of more dimensions.
fn binary_array(bytes: &[u8]) -> Option<(u32, Vec<Option<&[u8]>>)> {
    let word =
        |at: usize| -> Option<i32> { Some(i32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?)) };
    let dimensions = word(0)?;
    let element_type = u32::from_be_bytes(bytes.get(8..12)?.try_into().ok()?);
    if dimensions == 0 {
        return Some((element_type, Vec::new()));
    }
    if dimensions != 1 {
        return None;
    }
    let count = usize::try_from(word(12)?).ok()?;
    let mut at = 20;
    let mut out = Vec::with_capacity(count.min(MAX_POINTS + 1));
    for _ in 0..count {
        let len = word(at)?;
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = usize::try_from(len).ok()?;
        out.push(Some(bytes.get(at..at.checked_add(len)?)?));
        at += len;
        if out.len() > MAX_POINTS {
            // Too many to stay key-level anyway.
            return None;
        }
    }
    (at == bytes.len()).then_some((element_type, out))
}

/// The units of a key-level read for one execution: `base` (the plan's units) with each keyed
/// table's unit replaced by the units of the keys bound, where they can all be read; a table
/// whose values cannot be read keeps its table unit.
/// Also says how many keyed tables stayed table-level.
pub(crate) fn request_units(
    base: &[TableName],
    keyed: &[KeyedRead],
    values: &Values<'_>,
) -> (Vec<TableName>, usize) {
    // Every lookup of a key-level text comes here: one vector for all the units, filled in place.
    let mut units: Vec<TableName> = Vec::with_capacity(base.len() + 2 * keyed.len() + 2);
    units.extend_from_slice(base);
    let mut table_level = 0;
    for read in keyed {
        let mark = units.len();
        let all = read.restrictions.iter().all(|r| {
            values
                .read_keys(read.kind, r)
                .is_some_and(|keys| push_read_units(&read.unit, &read.wide, &keys, &mut units))
        });
        if all {
            // The units of its keys stand for the table's unit.
            units.retain(|u| *u != read.unit);
        } else {
            units.truncate(mark);
            table_level += 1;
        }
    }
    units.sort_unstable();
    units.dedup();
    (units, table_level)
}

/// The most keys one write may name and stay keyed: beyond, it bumps the table-wide unit
/// instead of one unit per key.
pub(crate) const MAX_WRITE_KEYS: usize = 256;

/// The key field of the rows a write returned (`RETURNING`), as the server sent them: where the
/// field comes from (PostgreSQL's `RowDescription` says), its type and format, and its values.
#[derive(Debug, Clone, Copy)]
pub struct Returned<'a> {
    source: KeySource,
    type_oid: u32,
    format: Format,
    values: &'a [Option<bytes::Bytes>],
}

impl<'a> Returned<'a> {
    /// The values of the field of every row returned, in the server's `format`; `source` and
    /// `type_oid` as the `RowDescription` gave them.
    pub fn new(source: KeySource, type_oid: u32, format: Format, values: &'a [Option<bytes::Bytes>]) -> Self {
        Self { source, type_oid, format, values }
    }
}

/// The keys a write statement changes in its target table, from its text and (where known)
/// its parameters, or else from the rows it returned: `Some((table unit, keys))` when every row
/// it changes, before and after, has one of those keys; `None` when they cannot be known (the
/// write is then table-wide).
pub(crate) fn written_keys(values: &Values<'_>, relations: &Relations) -> Option<(TableName, Vec<KeyValue>)> {
    let statement = values.statement;
    let write = statement.write_keys()?;
    let unit = version_unit(write.table());
    let key = relations.key_column(&unit)?;
    if !matches!(key.kind, KeyKind::Int | KeyKind::Uuid) || relations.writes_unknown(&unit) {
        return None;
    }
    let keys = match keys_from_text(values, write, key) {
        Some(keys) => keys,
        None => keys_returned(values, write, key, relations.key_sources(&unit))?,
    };
    (keys.len() <= MAX_WRITE_KEYS).then_some((unit, keys))
}

/// Where the key column of the table a write statement changes is, when the rows it returns
/// could tell its keys ([`keys_returned`]); empty otherwise.
pub(crate) fn returning_sources(statement: &StatementAnalysis, relations: &Relations) -> Vec<KeySource> {
    // Whether rows come back, and which field is the key, the RowDescription tells: the
    // normalizer lists `RETURNING` columns of inserts only.
    let Some(write) = statement.write_keys() else { return Vec::new() };
    let unit = version_unit(write.table());
    let Some(key) = relations.key_column(&unit) else { return Vec::new() };
    if !matches!(key.kind, KeyKind::Int | KeyKind::Uuid)
        || relations.writes_unknown(&unit)
        || write.assignments().iter().any(|a| a.column() == key.name)
    {
        return Vec::new();
    }
    relations.key_sources(&unit).to_vec()
}

/// The keys a write's text and parameters give: its restriction on the key (before) and its
/// assignment of the key (after).
fn keys_from_text(values: &Values<'_>, write: &WriteKeys, key: &KeyColumn) -> Option<Vec<KeyValue>> {
    let restriction = write.restrictions().iter().find(|r| r.column() == key.name)?;
    let mut keys = values.points(key.kind, restriction.values())?;
    match write.on_conflict() {
        None | Some(OnConflict::DoNothing) => {}
        // The row updated has the proposed key only when the key is the conflict target.
        Some(OnConflict::DoUpdate { conflict_columns }) => {
            if !conflict_columns.as_ref().is_some_and(|c| c.iter().any(|c| **c == *key.name)) {
                return None;
            }
        }
        Some(_) => return None,
    }
    for assignment in write.assignments().iter().filter(|a| a.column() == key.name) {
        // A changed key: its new value too, when it is known.
        match values.resolve(key.kind, assignment.value()?)? {
            Resolved::Value(v) => keys.push(v),
            Resolved::Nothing => {}
        }
    }
    Some(keys)
}

/// The keys of the rows a write returned: every row an `INSERT`, `UPDATE` or `DELETE` changes is
/// returned (an error rolls the statement back), with its key after the change, which is its key
/// before too unless the statement assigns the key. The field must come from the key column of
/// a table of the written name (PostgreSQL's `RowDescription` says where each field comes from, so
/// an alias or an expression is never mistaken for the key).
fn keys_returned(
    values: &Values<'_>,
    write: &WriteKeys,
    key: &KeyColumn,
    sources: &[KeySource],
) -> Option<Vec<KeyValue>> {
    let returned = values.returned?;
    if !sources.contains(&returned.source)
        || write.assignments().iter().any(|a| a.column() == key.name)
        || returned.values.len() > MAX_WRITE_KEYS
    {
        return None;
    }
    returned
        .values
        .iter()
        .flatten()
        .map(|v| match returned.format {
            Format::Text => KeyValue::from_text(key.kind, std::str::from_utf8(v).ok()?),
            Format::Binary => KeyValue::from_binary(key.kind, returned.type_oid, v),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> TableName {
        TableName::new("accounts")
    }

    #[test]
    fn integers_read_as_postgres_reads_them() {
        for (text, want) in [("42", Some(42)), (" -7 ", Some(-7)), ("+3", Some(3)), ("0042", Some(42))] {
            assert_eq!(parse_int(text), want, "{text:?}");
        }
        for text in ["", "-", "4 2", "1e3", "0x10", "1_000", "4.0", "99999999999999999999"] {
            assert_eq!(parse_int(text), None, "{text:?}");
        }
        assert_eq!(KeyValue::from_binary(KeyKind::Int, 23, &7i32.to_be_bytes()), Some(KeyValue::Int(7)));
        assert_eq!(KeyValue::from_binary(KeyKind::Int, 20, &(-7i64).to_be_bytes()), Some(KeyValue::Int(-7)));
        assert_eq!(KeyValue::from_binary(KeyKind::Int, 1700, &[0; 8]), None, "numeric is not an int");
    }

    #[test]
    fn uuids_in_every_accepted_spelling_are_one_value() {
        let canonical = parse_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert!(canonical.is_some());
        for spelling in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        ] {
            assert_eq!(parse_uuid(spelling), canonical, "{spelling}");
        }
        for bad in [
            "a0eebc99",
            "-a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0eebc99--9c0b4ef8bb6d6bb9bd380a11",
            "{a0eebc999c0b4ef8bb6d6bb9bd380a11",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_keyed_write_meets_the_reads_of_its_key_and_a_wide_write_meets_every_key_level_read() {
        let key = |v| KeyValue::Int(v);
        let wrote = write_units(&t(), Some(&[key(42), key(5000)]));
        let meets = |read: &ReadKeys| {
            let units = read_units(&t(), read).unwrap_or_else(|| panic!("key-level"));
            units.iter().any(|u| wrote.contains(u))
        };
        assert!(meets(&ReadKeys::Points(vec![key(42)])));
        assert!(meets(&ReadKeys::Points(vec![key(1), key(5000)])));
        assert!(meets(&ReadKeys::Range(0, 100)));
        assert!(meets(&ReadKeys::Range(4096, 6000)));
        assert!(wrote.contains(&t()), "table-level readers see every write");
        let wide = write_units(&t(), None);
        for read in [ReadKeys::Points(vec![key(7)]), ReadKeys::Range(-5000, -4000)] {
            let units = read_units(&t(), &read).unwrap_or_else(|| panic!("key-level"));
            assert!(units.iter().any(|u| wide.contains(u)), "{read:?}");
        }
        // Caps: too many points or buckets stay table-level.
        assert!(read_units(&t(), &ReadKeys::Points((0..65).map(key).collect())).is_none());
        assert!(read_units(&t(), &ReadKeys::Range(0, MAX_BUCKETS * BUCKET_WIDTH)).is_none());
        assert!(read_units(&t(), &ReadKeys::Range(i64::MIN, i64::MAX)).is_none());
        assert!(read_units(&t(), &ReadKeys::Range(0, MAX_BUCKETS * BUCKET_WIDTH - 1)).is_some());
    }

    #[test]
    fn unit_names_are_the_table_a_tag_and_a_decimal_number() {
        let t = TableName::new("public.t");
        assert_eq!(wide_unit(&t).as_str(), "public.t\x00w");
        assert_eq!(slot_unit(&t, 0).as_str(), "public.t\x00s\x000");
        assert_eq!(slot_unit(&t, u64::MAX).as_str(), format!("public.t\x00s\x00{}", u64::MAX));
        assert_eq!(bucket_unit(&t, -1).as_str(), "public.t\x00b\x00-1");
        assert_eq!(bucket_unit(&t, i64::MIN).as_str(), format!("public.t\x00b\x00{}", i64::MIN));
        assert_eq!(bucket_unit(&t, 1234).as_str(), "public.t\x00b\x001234");
        // Longer than the stack buffer, and not ASCII.
        let long = TableName::new(format!("public.\"{}\"", "é".repeat(100)));
        assert_eq!(slot_unit(&long, 42).as_str(), format!("{}\x00s\x0042", long.as_str()));
        assert_eq!(bucket_unit(&long, -7).as_str(), format!("{}\x00b\x00-7", long.as_str()));
        assert_eq!(wide_unit(&long).as_str(), format!("{}\x00w", long.as_str()));
    }

    #[test]
    fn units_of_different_tables_and_kinds_never_collide() {
        let a = write_units(&TableName::new("a"), Some(&[KeyValue::Int(1)]));
        let b = write_units(&TableName::new("b"), Some(&[KeyValue::Int(1)]));
        assert!(a.iter().all(|u| !b.contains(u)));
        let wide = wide_unit(&TableName::new("a"));
        assert!(!a.contains(&wide) && write_units(&TableName::new("a"), None).contains(&wide));
    }
}
