//! The binary value format: a versioned, checksummed header with the result's metadata and canonical key, then the payload.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! magic "SL2V" (4) | version u8 | flags u8 | reserved u16 = 0 | checksum u64 (xxh3-64 of the body)
//! body: created_at_ns u64 | ttl_ns u64 | fill_cost_ns u64 | row_count u64
//!       | key_len u32, canonical key | dep_count u32, (name_len u32, name, version u64)*
//!       | payload_len u32 (decoded length) | payload (lz4 block when flag 1 is set)
//! ```
//!
//! Every length is checked against what is left before it is used, so a truncated or forged value
//! is an error, never a panic or a huge allocation.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use strata_core::{CacheKey, CachedResult, TableName};
use xxhash_rust::xxh3::xxh3_64;

/// The four bytes every Strata L2 value starts with.
pub(crate) const MAGIC: [u8; 4] = *b"SL2V";
/// The format version this build writes and reads. Bump it when the layout changes: values of
/// other versions are then misses (and are deleted), never misread.
pub(crate) const VERSION: u8 = 1;
const FLAG_LZ4: u8 = 1;
const KNOWN_FLAGS: u8 = FLAG_LZ4;
pub(crate) const HEADER_LEN: usize = 16;

/// Why a stored value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Shorter than its header or its own lengths say.
    Truncated,
    /// Not a Strata L2 value.
    ForeignMagic,
    /// A Strata L2 value of another format version.
    UnsupportedVersion(u8),
    /// Flags this build does not know.
    UnknownFlags(u8),
    /// The body does not match its checksum.
    Checksum,
    /// Lengths or fields that cannot be right (trailing bytes, a payload larger than allowed, ...).
    Malformed(&'static str),
    /// The compressed payload does not decompress to its recorded length.
    Decompress,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("truncated value"),
            DecodeError::ForeignMagic => f.write_str("not a strata l2 value"),
            DecodeError::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            DecodeError::UnknownFlags(flags) => write!(f, "unknown flags {flags:#04x}"),
            DecodeError::Checksum => f.write_str("checksum mismatch"),
            DecodeError::Malformed(what) => write!(f, "malformed value: {what}"),
            DecodeError::Decompress => f.write_str("payload does not decompress"),
        }
    }
}

/// A decoded value: the canonical key it was stored under, and the result.
pub(crate) struct Decoded {
    pub(crate) canonical: Bytes,
    pub(crate) result: CachedResult,
}

/// Encoding settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Codec {
    /// Payloads of at least this many bytes are lz4-compressed (kept raw if that does not shrink them).
    pub(crate) compress_above_bytes: usize,
    /// The largest decoded payload accepted; also bounds what decoding allocates.
    pub(crate) max_payload_bytes: usize,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn push_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    // Callers bound every length below u32::MAX (payloads by max_payload_bytes, keys and names
    // by PostgreSQL's own limits); saturating keeps the encoder total regardless.
    buf.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    buf.extend_from_slice(bytes);
}

impl Codec {
    /// Encodes a result stored under `key`. `None` if the payload exceeds `max_payload_bytes`.
    pub(crate) fn encode(&self, key: &CacheKey, result: &CachedResult) -> Option<Vec<u8>> {
        self.encode_canonical(key.canonical(), result)
    }

    /// Encodes a result stored under the key whose canonical bytes are `canonical`.
    pub(crate) fn encode_canonical(&self, canonical: &[u8], result: &CachedResult) -> Option<Vec<u8>> {
        let payload = result.payload();
        if payload.len() > self.max_payload_bytes || u32::try_from(payload.len()).is_err() {
            return None;
        }
        let compressed = (payload.len() >= self.compress_above_bytes)
            .then(|| lz4_flex::block::compress(payload))
            .filter(|c| c.len() < payload.len());
        let stored: &[u8] = compressed.as_deref().unwrap_or(payload);
        let deps: usize = result.dependencies().iter().map(|d| 12 + d.table.as_str().len()).sum();
        let mut buf = Vec::with_capacity(HEADER_LEN + 48 + canonical.len() + deps + stored.len());
        buf.extend_from_slice(&MAGIC);
        buf.push(VERSION);
        buf.push(if compressed.is_some() { FLAG_LZ4 } else { 0 });
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&[0; 8]); // checksum, filled in below
        let created = result.created_at().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        buf.extend_from_slice(&nanos(created).to_le_bytes());
        buf.extend_from_slice(&nanos(result.ttl()).to_le_bytes());
        buf.extend_from_slice(&nanos(result.fill_cost()).to_le_bytes());
        buf.extend_from_slice(&result.row_count().to_le_bytes());
        push_bytes(&mut buf, canonical);
        buf.extend_from_slice(&u32::try_from(result.dependencies().len()).unwrap_or(u32::MAX).to_le_bytes());
        for dep in result.dependencies() {
            push_bytes(&mut buf, dep.table.as_str().as_bytes());
            buf.extend_from_slice(&dep.version.to_le_bytes());
        }
        buf.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_le_bytes());
        buf.extend_from_slice(stored);
        let checksum = xxh3_64(&buf[HEADER_LEN..]);
        buf[8..HEADER_LEN].copy_from_slice(&checksum.to_le_bytes());
        Some(buf)
    }

    /// Decodes a stored value. Never panics; every refusal is a [`DecodeError`].
    pub(crate) fn decode(&self, value: &Bytes) -> Result<Decoded, DecodeError> {
        if value.len() < MAGIC.len() {
            return Err(if MAGIC.starts_with(value) {
                DecodeError::Truncated
            } else {
                DecodeError::ForeignMagic
            });
        }
        if value[..4] != MAGIC {
            return Err(DecodeError::ForeignMagic);
        }
        if value.len() < HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        if value[4] != VERSION {
            return Err(DecodeError::UnsupportedVersion(value[4]));
        }
        let flags = value[5];
        if flags & !KNOWN_FLAGS != 0 || value[6..8] != [0, 0] {
            return Err(DecodeError::UnknownFlags(flags));
        }
        let mut checksum = [0u8; 8];
        checksum.copy_from_slice(&value[8..HEADER_LEN]);
        if xxh3_64(&value[HEADER_LEN..]) != u64::from_le_bytes(checksum) {
            // A truncated value almost always lands here; report it as what it most likely is
            // only when the body is too short to hold even the fixed fields.
            return Err(if value.len() < HEADER_LEN + 40 {
                DecodeError::Truncated
            } else {
                DecodeError::Checksum
            });
        }
        let mut r = Reader { buf: value, pos: HEADER_LEN };
        let created_ns = r.u64()?;
        let ttl_ns = r.u64()?;
        let fill_ns = r.u64()?;
        let row_count = r.u64()?;
        let canonical = r.bytes()?;
        let dep_count = r.u32()?;
        // Each dependency takes at least 12 bytes: refuse counts the rest cannot hold before looping.
        if u64::from(dep_count) * 12 > r.remaining() as u64 {
            return Err(DecodeError::Truncated);
        }
        let mut deps = Vec::with_capacity(dep_count as usize);
        for _ in 0..dep_count {
            let name = r.bytes()?;
            let version = r.u64()?;
            let name =
                std::str::from_utf8(&name).map_err(|_| DecodeError::Malformed("table name is not utf-8"))?;
            deps.push((TableName::new(name), version));
        }
        let payload_len = r.u32()? as usize;
        if payload_len > self.max_payload_bytes {
            return Err(DecodeError::Malformed("payload larger than allowed"));
        }
        let stored = value.slice(r.pos..);
        let payload = if flags & FLAG_LZ4 != 0 {
            let out =
                lz4_flex::block::decompress(&stored, payload_len).map_err(|_| DecodeError::Decompress)?;
            if out.len() != payload_len {
                return Err(DecodeError::Decompress);
            }
            Bytes::from(out)
        } else {
            if stored.len() != payload_len {
                return Err(DecodeError::Malformed("payload length mismatch"));
            }
            stored
        };
        let mut builder = CachedResult::builder(payload)
            .with_row_count(row_count)
            .with_created_at(UNIX_EPOCH + Duration::from_nanos(created_ns))
            .with_ttl(Duration::from_nanos(ttl_ns))
            .with_fill_cost(Duration::from_nanos(fill_ns));
        for (table, version) in deps {
            builder = builder.with_dependency(table, version);
        }
        Ok(Decoded { canonical, result: builder.build() })
    }
}

/// Reads fields from a value, refusing to read past its end.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end =
            self.pos.checked_add(n).filter(|&end| end <= self.buf.len()).ok_or(DecodeError::Truncated)?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u32()? as usize;
        let start = self.pos;
        self.take(len)?;
        Ok(self.buf.slice(start..start + len))
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{expect, Expect};
    use strata_core::{KeyScope, SettingsDigest};

    use super::*;

    const CODEC: Codec = Codec { compress_above_bytes: 64, max_payload_bytes: 1 << 20 };

    fn key() -> CacheKey {
        CacheKey::builder(&KeyScope::new("shop", "app", SettingsDigest::default()), b"SELECT $1").build()
    }

    fn result(payload: Vec<u8>) -> CachedResult {
        CachedResult::builder(Bytes::from(payload))
            .with_row_count(3)
            .with_dependency(TableName::new("public.users"), 7)
            .with_dependency(TableName::new("orders"), 1)
            .with_created_at(UNIX_EPOCH + Duration::from_nanos(1_767_225_600_123_456_789))
            .with_ttl(Duration::from_millis(30_500))
            .with_fill_cost(Duration::from_micros(1234))
            .build()
    }

    fn encoded(payload: Vec<u8>) -> Bytes {
        Bytes::from(CODEC.encode(&key(), &result(payload)).unwrap_or_default())
    }

    #[test]
    fn round_trip_keeps_payload_metadata_and_key() {
        for payload in
            [Vec::new(), b"short".to_vec(), vec![b'x'; 10_000], (0..=255u8).cycle().take(5000).collect()]
        {
            let original = result(payload);
            let bytes = Bytes::from(CODEC.encode(&key(), &original).unwrap_or_default());
            let decoded = CODEC.decode(&bytes).map_err(|e| e.to_string());
            let decoded = decoded.as_ref().map(|d| (&d.canonical, &d.result));
            assert_eq!(decoded, Ok((key().canonical(), &original)));
        }
    }

    #[test]
    fn compresses_only_large_compressible_payloads() {
        assert_eq!(encoded(vec![b'x'; 63])[5], 0, "below the threshold");
        let big = encoded(vec![b'x'; 10_000]);
        assert_eq!(big[5], FLAG_LZ4);
        assert!(big.len() < 1000, "{}", big.len());
        // Incompressible bytes are stored raw even above the threshold.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(encoded(noise)[5], 0);
    }

    #[test]
    fn refuses_payloads_over_the_limit_both_ways() {
        let small = Codec { compress_above_bytes: 64, max_payload_bytes: 100 };
        assert!(small.encode(&key(), &result(vec![0; 101])).is_none());
        let err = small.decode(&encoded(vec![b'x'; 200])).err();
        assert_eq!(err, Some(DecodeError::Malformed("payload larger than allowed")));
    }

    fn check(value: &[u8], expect: Expect) {
        let got = match CODEC.decode(&Bytes::copy_from_slice(value)) {
            Ok(d) => format!("ok: {} payload bytes", d.result.payload().len()),
            Err(e) => format!("err: {e}"),
        };
        expect.assert_eq(&got);
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        let good = encoded(b"hello".to_vec());
        check(&good, expect!["ok: 5 payload bytes"]);
        check(b"", expect!["err: truncated value"]);
        check(b"SL", expect!["err: truncated value"]);
        check(b"SL2Vx", expect!["err: truncated value"]);
        check(&good[..good.len() - 1], expect!["err: checksum mismatch"]);
        check(&good[..HEADER_LEN + 10], expect!["err: truncated value"]);
        check(b"{\"json\":1}", expect!["err: not a strata l2 value"]);
        check(b"hello world, this is not ours", expect!["err: not a strata l2 value"]);
        let mut old = good.to_vec();
        old[4] = 0;
        check(&old, expect!["err: unsupported format version 0"]);
        let mut flags = good.to_vec();
        flags[5] = 0x80;
        check(&flags, expect!["err: unknown flags 0x80"]);
        let mut flipped = good.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        check(&flipped, expect!["err: checksum mismatch"]);
    }

    /// A forged value with a valid checksum but lying lengths must still be refused cleanly.
    #[test]
    fn forged_lengths_with_valid_checksum_are_refused() {
        let reseal = |mut v: Vec<u8>| {
            let sum = xxh3_64(&v[HEADER_LEN..]);
            v[8..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
            v
        };
        let good = encoded(vec![b'x'; 10_000]).to_vec();
        // The canonical key length field sits right after the four u64 fields.
        let mut huge_key = good.clone();
        huge_key[HEADER_LEN + 32..HEADER_LEN + 36].copy_from_slice(&u32::MAX.to_le_bytes());
        check(&reseal(huge_key), expect!["err: truncated value"]);
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"junk");
        check(&reseal(trailing), expect!["err: payload does not decompress"]);
        let raw = encoded(b"hello".to_vec()).to_vec();
        let mut trailing = raw.clone();
        trailing.push(0);
        check(&reseal(trailing), expect!["err: malformed value: payload length mismatch"]);
    }

    #[test]
    fn every_truncation_and_every_bit_flip_is_refused_without_panic() {
        let good = encoded((0..2000u32).map(|i| (i % 7) as u8).collect());
        for len in 0..good.len() {
            assert!(CODEC.decode(&good.slice(..len)).is_err(), "truncated to {len}");
        }
        for i in 0..good.len() {
            let mut v = good.to_vec();
            v[i] ^= 0x10;
            assert!(CODEC.decode(&Bytes::from(v)).is_err(), "flipped byte {i}");
        }
    }
}
