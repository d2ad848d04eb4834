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

use strata_core::TableName;

use crate::relations::KeyKind;

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

/// The table-wide unit: bumped by writes whose keys are unknown, read by every key-level reader.
pub(crate) fn wide_unit(table: &TableName) -> TableName {
    TableName::new(format!("{}\0w", table.as_str()))
}

fn slot_unit(table: &TableName, slot: u64) -> TableName {
    TableName::new(format!("{}\0s\0{slot}", table.as_str()))
}

fn bucket_unit(table: &TableName, bucket: i64) -> TableName {
    TableName::new(format!("{}\0b\0{bucket}", table.as_str()))
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
pub(crate) fn read_units(table: &TableName, keys: &ReadKeys) -> Option<Vec<TableName>> {
    let mut units = vec![wide_unit(table)];
    match keys {
        ReadKeys::Points(values) => {
            if values.is_empty() || values.len() > MAX_POINTS {
                return None;
            }
            units.extend(values.iter().map(|v| slot_unit(table, v.slot())));
        }
        ReadKeys::Range(low, high) => {
            if low > high {
                // Empty: no row can match, but keep it simple and safe.
                return None;
            }
            let (first, last) = (low.div_euclid(BUCKET_WIDTH), high.div_euclid(BUCKET_WIDTH));
            if last.checked_sub(first)? >= MAX_BUCKETS {
                return None;
            }
            units.extend((first..=last).map(|b| bucket_unit(table, b)));
        }
    }
    units.sort();
    units.dedup();
    Some(units)
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
    fn units_of_different_tables_and_kinds_never_collide() {
        let a = write_units(&TableName::new("a"), Some(&[KeyValue::Int(1)]));
        let b = write_units(&TableName::new("b"), Some(&[KeyValue::Int(1)]));
        assert!(a.iter().all(|u| !b.contains(u)));
        let wide = wide_unit(&TableName::new("a"));
        assert!(!a.contains(&wide) && write_units(&TableName::new("a"), None).contains(&wide));
    }
}
