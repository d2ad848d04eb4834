//! Tests of the pgoutput decoder: hand-built payloads, key rules, malformed and random input,
//! and the bytes a real PostgreSQL sends.

use super::*;

/// A payload written field by field, in the order the protocol documentation lists them.
struct Payload(Vec<u8>);

impl Payload {
    fn new(tag: u8) -> Self {
        Self(vec![tag])
    }

    fn u8(mut self, value: u8) -> Self {
        self.0.push(value);
        self
    }

    fn u16(mut self, value: u16) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    fn u32(mut self, value: u32) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    fn i32(mut self, value: i32) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    fn u64(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }

    fn string(mut self, text: &str) -> Self {
        self.0.extend_from_slice(text.as_bytes());
        self.0.push(0);
        self
    }

    fn bytes(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    fn tuple(mut self, values: &[Value]) -> Self {
        self = self.u16(u16::try_from(values.len()).unwrap());
        for value in values {
            self = match value {
                Value::Null => self.u8(b'n'),
                Value::UnchangedToast => self.u8(b'u'),
                Value::Text(bytes) => self.u8(b't').u32(bytes.len() as u32).bytes(bytes),
                Value::Binary(bytes) => self.u8(b'b').u32(bytes.len() as u32).bytes(bytes),
            };
        }
        self
    }
}

/// The encoder the decoder inverts, for the round-trip property of the random inputs.
fn encode(message: &Message) -> Vec<u8> {
    let payload = match message {
        Message::Begin(m) => Payload::new(b'B').u64(m.final_lsn.0).u64(m.commit_time.0 as u64).u32(m.xid),
        Message::Commit(m) => {
            Payload::new(b'C').u8(m.flags).u64(m.commit_lsn.0).u64(m.end_lsn.0).u64(m.commit_time.0 as u64)
        }
        Message::Origin(m) => Payload::new(b'O').u64(m.commit_lsn.0).string(&m.name),
        Message::Relation(m) => {
            let identity = match m.replica_identity {
                ReplicaIdentity::Default => b'd',
                ReplicaIdentity::Nothing => b'n',
                ReplicaIdentity::Full => b'f',
                ReplicaIdentity::Index => b'i',
            };
            let mut p = Payload::new(b'R')
                .u32(m.oid)
                .string(&m.namespace)
                .string(&m.name)
                .u8(identity)
                .u16(m.columns.len() as u16);
            for c in &m.columns {
                p = p.u8(c.flags).string(&c.name).u32(c.type_oid).i32(c.type_modifier);
            }
            p
        }
        Message::Type(m) => Payload::new(b'Y').u32(m.oid).string(&m.namespace).string(&m.name),
        Message::Insert(m) => Payload::new(b'I').u32(m.relation).u8(b'N').tuple(&m.new),
        Message::Update(m) => {
            let p = Payload::new(b'U').u32(m.relation);
            let p = match &m.old {
                None => p,
                Some(OldRow::Key(values)) => p.u8(b'K').tuple(values),
                Some(OldRow::Full(values)) => p.u8(b'O').tuple(values),
            };
            p.u8(b'N').tuple(&m.new)
        }
        Message::Delete(m) => match &m.old {
            OldRow::Key(values) => Payload::new(b'D').u32(m.relation).u8(b'K').tuple(values),
            OldRow::Full(values) => Payload::new(b'D').u32(m.relation).u8(b'O').tuple(values),
        },
        Message::Truncate(m) => {
            let p = Payload::new(b'T').u32(m.relations.len() as u32).u8(m.options);
            m.relations.iter().fold(p, |p, oid| p.u32(*oid))
        }
        Message::Logical(m) => Payload::new(b'M')
            .u8(m.flags)
            .u64(m.lsn.0)
            .string(&m.prefix)
            .u32(m.content.len() as u32)
            .bytes(&m.content),
    };
    payload.0
}

fn text(value: &str) -> Value {
    Value::Text(Bytes::copy_from_slice(value.as_bytes()))
}

fn key(values: &[&str]) -> Option<Key> {
    Some(Key(values.iter().map(|v| KeyValue::Text(Bytes::copy_from_slice(v.as_bytes()))).collect()))
}

fn decoded(payload: Payload) -> Message {
    decode(&payload.0).unwrap_or_else(|e| panic!("{e}"))
}

fn error_of(payload: &[u8]) -> String {
    match decode(payload) {
        Ok(message) => panic!("decoded {payload:?} as {message:?}"),
        Err(e) => e.to_string(),
    }
}

/// `acc(aid int PRIMARY KEY, bid int, note text)` as PostgreSQL describes it.
fn acc() -> Relation {
    let column = |flags, name: &str, type_oid| RelationColumn {
        flags,
        name: name.to_owned(),
        type_oid,
        type_modifier: -1,
    };
    Relation {
        oid: 16384,
        namespace: "public".to_owned(),
        name: "acc".to_owned(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![column(1, "aid", 23), column(0, "bid", 23), column(0, "note", 25)],
    }
}

fn acc_payload() -> Payload {
    Payload::new(b'R')
        .u32(16384)
        .string("public")
        .string("acc")
        .u8(b'd')
        .u16(3)
        .u8(1)
        .string("aid")
        .u32(23)
        .i32(-1)
        .u8(0)
        .string("bid")
        .u32(23)
        .i32(-1)
        .u8(0)
        .string("note")
        .u32(25)
        .i32(-1)
}

/// One valid payload of every message type, with what it decodes to.
fn samples() -> Vec<(Payload, Message)> {
    let ts = 789_000_000_000_000;
    vec![
        (
            Payload::new(b'B').u64(0x16_B374_D848).u64(ts).u32(735),
            Message::Begin(Begin {
                final_lsn: Lsn(0x16_B374_D848),
                commit_time: PgTimestamp(ts as i64),
                xid: 735,
            }),
        ),
        (
            Payload::new(b'C').u8(0).u64(0x16_B374_D848).u64(0x16_B374_D878).u64(ts),
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(0x16_B374_D848),
                end_lsn: Lsn(0x16_B374_D878),
                commit_time: PgTimestamp(ts as i64),
            }),
        ),
        (
            Payload::new(b'O').u64(42).string("node_b"),
            Message::Origin(Origin { commit_lsn: Lsn(42), name: "node_b".to_owned() }),
        ),
        (acc_payload(), Message::Relation(acc())),
        (
            Payload::new(b'Y').u32(16390).string("public").string("mood"),
            Message::Type(TypeInfo { oid: 16390, namespace: "public".to_owned(), name: "mood".to_owned() }),
        ),
        (
            Payload::new(b'I').u32(16384).u8(b'N').tuple(&[text("201"), Value::Null, text("")]),
            Message::Insert(Insert { relation: 16384, new: vec![text("201"), Value::Null, text("")] }),
        ),
        (
            Payload::new(b'U').u32(16384).u8(b'N').tuple(&[text("8"), text("99"), Value::UnchangedToast]),
            Message::Update(Update {
                relation: 16384,
                old: None,
                new: vec![text("8"), text("99"), Value::UnchangedToast],
            }),
        ),
        (
            Payload::new(b'U')
                .u32(16384)
                .u8(b'K')
                .tuple(&[text("6"), Value::Null, Value::Null])
                .u8(b'N')
                .tuple(&[text("101"), text("6"), Value::Binary(Bytes::from_static(&[0, 1]))]),
            Message::Update(Update {
                relation: 16384,
                old: Some(OldRow::Key(vec![text("6"), Value::Null, Value::Null])),
                new: vec![text("101"), text("6"), Value::Binary(Bytes::from_static(&[0, 1]))],
            }),
        ),
        (
            Payload::new(b'U')
                .u32(16384)
                .u8(b'O')
                .tuple(&[text("6"), text("1"), text("a")])
                .u8(b'N')
                .tuple(&[text("6"), text("2"), text("a")]),
            Message::Update(Update {
                relation: 16384,
                old: Some(OldRow::Full(vec![text("6"), text("1"), text("a")])),
                new: vec![text("6"), text("2"), text("a")],
            }),
        ),
        (
            Payload::new(b'D').u32(16384).u8(b'K').tuple(&[text("7"), Value::Null, Value::Null]),
            Message::Delete(Delete {
                relation: 16384,
                old: OldRow::Key(vec![text("7"), Value::Null, Value::Null]),
            }),
        ),
        (
            Payload::new(b'D').u32(16384).u8(b'O').tuple(&[text("7"), text("1"), text("b")]),
            Message::Delete(Delete {
                relation: 16384,
                old: OldRow::Full(vec![text("7"), text("1"), text("b")]),
            }),
        ),
        (
            Payload::new(b'T').u32(2).u8(3).u32(16384).u32(16400),
            Message::Truncate(Truncate { options: 3, relations: vec![16384, 16400] }),
        ),
        (
            Payload::new(b'M').u8(0).u64(0x1_0000_0010).string("strata_hb").u32(3).bytes(b"123"),
            Message::Logical(LogicalMessage {
                flags: 0,
                lsn: Lsn(0x1_0000_0010),
                prefix: "strata_hb".to_owned(),
                content: Bytes::from_static(b"123"),
            }),
        ),
    ]
}

#[test]
fn every_message_type_decodes_field_by_field() {
    for (payload, expected) in samples() {
        assert_eq!(decode(&payload.0).as_ref(), Ok(&expected), "{payload:?}", payload = payload.0);
        assert_eq!(encode(&expected), payload.0, "the test encoder writes {expected:?} back");
    }
}

#[test]
fn message_flags_and_times_read_as_postgres_means_them() {
    let Message::Truncate(truncate) = decoded(Payload::new(b'T').u32(1).u8(2).u32(5)) else { panic!() };
    assert!(!truncate.cascade() && truncate.restart_identity());
    let message = Payload::new(b'M').u8(1).u64(9).string("strata_ddl").u32(0);
    let Message::Logical(message) = decoded(message) else { panic!() };
    assert!(message.is_transactional() && message.content.is_empty());

    assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
    assert_eq!(PgTimestamp(0).to_system_time(), Some(UNIX_EPOCH + Duration::from_secs(946_684_800)));
    assert_eq!(PgTimestamp(-1_000_000).to_system_time(), Some(UNIX_EPOCH + Duration::from_secs(946_684_799)));
    assert_eq!(PgTimestamp(i64::MAX).to_system_time(), None, "infinity");
    assert_eq!(PgTimestamp(i64::MIN).to_system_time(), None, "-infinity");
}

#[test]
fn long_values_print_by_their_start_and_length() {
    assert_eq!(format!("{:?}", text("7")), r#"Text(b"7")"#);
    let long = format!("{:?}", text(&"x".repeat(10_000)));
    assert!(long.ends_with(".. (10000 bytes))") && long.len() < 80, "{long}");
}

/// The keys of a row change, as a stream with these relations reads them.
fn keys(relations: &RelationMap, payload: Payload) -> Result<RowKeys, UnknownRelation> {
    match decoded(payload) {
        Message::Insert(m) => relations.insert_keys(&m),
        Message::Update(m) => relations.update_keys(&m),
        Message::Delete(m) => relations.delete_keys(&m),
        other => panic!("not a row change: {other:?}"),
    }
}

#[test]
fn keys_follow_what_each_change_carries() {
    let mut relations = RelationMap::default();
    relations.remember(acc());
    let row = |values: &[Value]| Payload::new(b'U').u32(16384).u8(b'N').tuple(values);

    // INSERT: the key columns of N.
    let insert = Payload::new(b'I').u32(16384).u8(b'N').tuple(&[text("201"), text("1"), text("")]);
    assert_eq!(keys(&relations, insert), Ok(RowKeys::Insert { new: key(&["201"]) }));
    // UPDATE without K: the key did not change, and N has it.
    let unchanged = row(&[text("8"), text("99"), Value::UnchangedToast]);
    assert_eq!(keys(&relations, unchanged), Ok(RowKeys::Update { old: key(&["8"]), new: key(&["8"]) }));
    // UPDATE with K: the old key from K, the new from N.
    let changed = Payload::new(b'U')
        .u32(16384)
        .u8(b'K')
        .tuple(&[text("6"), Value::Null, Value::Null])
        .u8(b'N')
        .tuple(&[text("101"), text("6"), text("")]);
    assert_eq!(keys(&relations, changed), Ok(RowKeys::Update { old: key(&["6"]), new: key(&["101"]) }));
    // DELETE: K's key columns.
    let delete = Payload::new(b'D').u32(16384).u8(b'K').tuple(&[text("7"), Value::Null, Value::Null]);
    assert_eq!(keys(&relations, delete), Ok(RowKeys::Delete { old: key(&["7"]) }));

    // A key column left as unchanged TOAST is unknown, never NULL: in N, it makes both keys
    // of a K-less UPDATE unknown; in K, only the old one.
    assert_eq!(
        keys(&relations, row(&[Value::UnchangedToast, text("1"), text("")])),
        Ok(RowKeys::Update { old: None, new: None })
    );
    let toasted_old = Payload::new(b'U')
        .u32(16384)
        .u8(b'K')
        .tuple(&[Value::UnchangedToast, Value::Null, Value::Null])
        .u8(b'N')
        .tuple(&[text("9"), text("1"), text("")]);
    assert_eq!(keys(&relations, toasted_old), Ok(RowKeys::Update { old: None, new: key(&["9"]) }));
    // A tuple narrower or wider than the relation: positions cannot be trusted.
    assert_eq!(keys(&relations, row(&[text("8"), text("1")])), Ok(RowKeys::Update { old: None, new: None }));
    let wide =
        Payload::new(b'D').u32(16384).u8(b'K').tuple(&[text("7"), Value::Null, Value::Null, Value::Null]);
    assert_eq!(keys(&relations, wide), Ok(RowKeys::Delete { old: None }));
    // A change before its relation's `R`.
    let stranger = Payload::new(b'I').u32(99).u8(b'N').tuple(&[text("1")]);
    assert_eq!(keys(&relations, stranger), Err(UnknownRelation(99)));
    assert_eq!(
        UnknownRelation(99).to_string(),
        "pgoutput change for relation 99 before its relation message"
    );

    // REPLICA IDENTITY FULL flags every column; O carries the old row, NULLs included.
    let mut full = acc();
    full.replica_identity = ReplicaIdentity::Full;
    full.columns.iter_mut().for_each(|c| c.flags = 1);
    relations.remember(full);
    assert_eq!(relations.get(16384).map(|r| r.key_columns().count()), Some(3), "R replaces R");
    let update = Payload::new(b'U')
        .u32(16384)
        .u8(b'O')
        .tuple(&[text("6"), Value::Null, text("a")])
        .u8(b'N')
        .tuple(&[text("6"), text("2"), text("a")]);
    let old = Key(vec![KeyValue::Text("6".into()), KeyValue::Null, KeyValue::Text("a".into())]);
    assert_eq!(keys(&relations, update), Ok(RowKeys::Update { old: Some(old), new: key(&["6", "2", "a"]) }));

    // A relation without key columns (REPLICA IDENTITY NOTHING) names no row.
    let mut nothing = acc();
    nothing.replica_identity = ReplicaIdentity::Nothing;
    nothing.columns.iter_mut().for_each(|c| c.flags = 0);
    relations.remember(nothing);
    let insert = Payload::new(b'I').u32(16384).u8(b'N').tuple(&[text("1"), text("1"), text("")]);
    assert_eq!(keys(&relations, insert), Ok(RowKeys::Insert { new: None }));
}

#[test]
fn touched_keys_are_distinct_and_unknown_wins() {
    let (a, b) = (key(&["1"]), key(&["2"]));
    let touched = |keys: RowKeys| keys.touched().map(|k| k.into_iter().cloned().collect::<Vec<_>>());
    assert_eq!(touched(RowKeys::Insert { new: a.clone() }), Some(vec![a.clone().unwrap()]));
    assert_eq!(touched(RowKeys::Update { old: a.clone(), new: a.clone() }), Some(vec![a.clone().unwrap()]));
    assert_eq!(
        touched(RowKeys::Update { old: a.clone(), new: b.clone() }),
        Some(vec![a.clone().unwrap(), b.clone().unwrap()])
    );
    assert_eq!(touched(RowKeys::Update { old: a.clone(), new: None }), None);
    assert_eq!(touched(RowKeys::Delete { old: None }), None);
}

#[test]
fn malformed_payloads_are_errors_that_say_what_is_wrong() {
    let cases: [(&[u8], &str); 12] = [
        (b"", "pgoutput empty message: no message type byte"),
        (b"Z", "pgoutput unknown message: message type 'Z' is not one of protocol version 1"),
        (b"\x00", "pgoutput unknown message: message type 0x00 is not one of protocol version 1"),
        (b"B\x00\x00", "pgoutput begin message: truncated: final lsn needs 8 bytes at offset 1, 2 left"),
        (
            &Payload::new(b'I').u32(1).u8(b'K').tuple(&[]).0,
            "pgoutput insert message: new tuple: expected 'N', found 'K'",
        ),
        (
            &Payload::new(b'U').u32(1).u8(b'K').tuple(&[]).0,
            "pgoutput update message: truncated: new tuple needs 1 bytes at offset 8, 0 left",
        ),
        (&Payload::new(b'U').u32(1).u8(b'X').0, "pgoutput update message: tuple type 'X' is not K, O or N"),
        (
            &Payload::new(b'D').u32(1).u8(b'N').tuple(&[]).0,
            "pgoutput delete message: tuple type 'N' is not K or O",
        ),
        (
            &Payload::new(b'I').u32(1).u8(b'N').u16(1).u8(b'x').0,
            "pgoutput insert message: column kind 'x' is not n, u, t or b",
        ),
        (
            &Payload::new(b'I').u32(1).u8(b'N').u16(1).u8(b't').u32(u32::MAX).0,
            "pgoutput insert message: truncated: value needs 4294967295 bytes at offset 13, 0 left",
        ),
        (
            &Payload::new(b'T').u32(u32::MAX).u8(0).u32(1).0,
            "pgoutput truncate message: truncated: relation count is 4294967295, but 4 bytes hold at most 1",
        ),
        (
            &Payload::new(b'Y').u32(1).bytes(b"\xff\0").string("t").0,
            "pgoutput type message: namespace is not UTF-8",
        ),
    ];
    for (payload, expected) in cases {
        assert_eq!(error_of(payload), expected);
    }
    let bad_identity = Payload::new(b'R').u32(1).string("public").string("t").u8(b'x').u16(0);
    assert_eq!(
        error_of(&bad_identity.0),
        "pgoutput relation message: replica identity 'x' is not d, n, f or i"
    );
    let unterminated = Payload::new(b'O').u64(1).bytes(b"node");
    assert_eq!(
        error_of(&unterminated.0),
        "pgoutput origin message: truncated: origin name has no terminating NUL"
    );
    let trailing = Payload::new(b'M').u8(0).u64(1).string("p").u32(1).bytes(b"ab");
    assert_eq!(error_of(&trailing.0), "pgoutput logical message: 1 bytes after the end of the message");
}

#[test]
fn every_truncation_and_extension_of_a_valid_message_is_an_error() {
    for (payload, _) in samples() {
        let payload = payload.0;
        for end in 0..payload.len() {
            assert!(decode(&payload[..end]).is_err(), "{:?} cut at {end} decoded", payload);
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert!(decode(&longer).is_err(), "{payload:?} with a trailing byte decoded");
    }
}

/// SplitMix64: a deterministic stream, so a failure reproduces.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// 100,000 inputs: random bytes after a valid type byte, and valid messages with bytes
/// overwritten, inserted or removed. None may panic, and whatever decodes must be exactly
/// what the protocol would write for it (nothing skipped, nothing invented).
#[test]
fn arbitrary_bytes_never_panic_and_what_decodes_round_trips() {
    let samples: Vec<Vec<u8>> = samples().into_iter().map(|(payload, _)| payload.0).collect();
    let tags = b"BCORYIUDTMKNxZ\0";
    let mut random = Random(0x5EED);
    let mut decoded = 0;
    for round in 0..100_000 {
        let input: Vec<u8> = if round % 2 == 0 {
            let len = random.below(64);
            let mut bytes: Vec<u8> = (0..len).map(|_| random.next() as u8).collect();
            if let Some(first) = bytes.first_mut() {
                *first = tags[random.below(tags.len())];
            }
            bytes
        } else {
            let mut bytes = samples[random.below(samples.len())].clone();
            for _ in 0..=random.below(3) {
                let at = random.below(bytes.len() + 1);
                match random.below(4) {
                    0 if at < bytes.len() => bytes[at] = random.next() as u8,
                    1 if at < bytes.len() => bytes[at] ^= 1 << random.below(8),
                    2 => bytes.insert(at, random.next() as u8),
                    _ if at < bytes.len() => drop(bytes.remove(at)),
                    _ => {}
                }
            }
            bytes
        };
        let outcome = std::panic::catch_unwind(|| decode(&input));
        match outcome {
            Err(_) => panic!("decoding {input:?} panicked"),
            Ok(Ok(message)) => {
                decoded += 1;
                assert_eq!(encode(&message), input, "{message:?} is not what the input said");
            }
            Ok(Err(error)) => assert!(error.to_string().starts_with("pgoutput "), "{error}"),
        }
    }
    assert!(decoded > 1_000, "only {decoded} inputs decoded: the mutations are too destructive to test much");
}

/// A value as the real-server test reads it: the text, NULL, `u` for unchanged TOAST, and a
/// long run of one character as `k×2500` (so the whole value is checked).
fn show_bytes(bytes: &[u8]) -> String {
    match (bytes.first(), std::str::from_utf8(bytes)) {
        (Some(&first), Ok(_)) if bytes.len() > 16 && bytes.iter().all(|&b| b == first) => {
            format!("{}×{}", char::from(first), bytes.len())
        }
        (_, Ok(text)) if bytes.len() <= 16 => text.to_owned(),
        _ => format!("{bytes:?}"),
    }
}

fn show_values(values: &[Value]) -> String {
    let shown: Vec<String> = values
        .iter()
        .map(|value| match value {
            Value::Null => "NULL".to_owned(),
            Value::UnchangedToast => "u".to_owned(),
            Value::Text(bytes) => show_bytes(bytes),
            Value::Binary(bytes) => format!("b:{}", show_bytes(bytes)),
        })
        .collect();
    format!("({})", shown.join(","))
}

fn show_key(key: &Option<Key>) -> String {
    let Some(key) = key else { return "?".to_owned() };
    let shown: Vec<String> = key
        .values()
        .iter()
        .map(|value| match value {
            KeyValue::Null => "NULL".to_owned(),
            KeyValue::Text(bytes) => show_bytes(bytes),
            KeyValue::Binary(bytes) => format!("b:{}", show_bytes(bytes)),
        })
        .collect();
    format!("({})", shown.join(","))
}

fn show_old(old: &OldRow) -> String {
    match old {
        OldRow::Key(values) => format!("K{}", show_values(values)),
        OldRow::Full(values) => format!("O{}", show_values(values)),
    }
}

/// Reads a decoded stream the way the invalidator will: remembers `R` (and `Y`) messages and
/// renders each change with the keys it names, one line per message. Relation and type names
/// lose the test's suffix; an `R` that repeats what is known is left out (PostgreSQL resends
/// one after a relation's cache entry is invalidated, which this test does not pin).
#[derive(Default)]
struct Reading {
    relations: RelationMap,
    types: HashMap<Oid, String>,
    lines: Vec<String>,
}

impl Reading {
    fn read(&mut self, message: &Message, suffix: &str) {
        let name = |relations: &RelationMap, oid| {
            relations.get(oid).map_or(format!("?{oid}"), |r| r.name.trim_end_matches(suffix).to_owned())
        };
        let line = match message {
            Message::Begin(_) => "begin".to_owned(),
            Message::Commit(_) => "commit".to_owned(),
            Message::Type(m) => {
                self.types.insert(m.oid, m.name.trim_end_matches(suffix).to_owned());
                format!("type {}.{}", m.namespace, m.name.trim_end_matches(suffix))
            }
            Message::Relation(m) if self.relations.get(m.oid) == Some(m) => return,
            Message::Relation(m) => {
                let columns: Vec<String> = m
                    .columns
                    .iter()
                    .map(|c| {
                        let key = if c.is_key() { "*" } else { "" };
                        let ty = self.types.get(&c.type_oid).cloned().unwrap_or(c.type_oid.to_string());
                        format!("{}{key}:{ty}", c.name)
                    })
                    .collect();
                self.relations.remember(m.clone());
                format!(
                    "relation {}.{} {:?} ({})",
                    m.namespace,
                    name(&self.relations, m.oid),
                    m.replica_identity,
                    columns.join(",")
                )
            }
            Message::Insert(m) => match self.relations.insert_keys(m) {
                Ok(RowKeys::Insert { new }) => {
                    let table = name(&self.relations, m.relation);
                    format!("insert {table} N{} => new {}", show_values(&m.new), show_key(&new))
                }
                other => panic!("{other:?}"),
            },
            Message::Update(m) => match self.relations.update_keys(m) {
                Ok(RowKeys::Update { old, new }) => format!(
                    "update {} {}N{} => old {} new {}",
                    name(&self.relations, m.relation),
                    m.old.as_ref().map_or(String::new(), |old| show_old(old) + " "),
                    show_values(&m.new),
                    show_key(&old),
                    show_key(&new)
                ),
                other => panic!("{other:?}"),
            },
            Message::Delete(m) => match self.relations.delete_keys(m) {
                Ok(RowKeys::Delete { old }) => {
                    let table = name(&self.relations, m.relation);
                    format!("delete {table} {} => old {}", show_old(&m.old), show_key(&old))
                }
                other => panic!("{other:?}"),
            },
            Message::Truncate(m) => {
                let tables: Vec<String> = m.relations.iter().map(|&oid| name(&self.relations, oid)).collect();
                format!("truncate {} options={}", tables.join(","), m.options)
            }
            Message::Logical(m) => format!(
                "message {} {} transactional={}",
                m.prefix,
                show_bytes(&m.content),
                m.is_transactional()
            ),
            Message::Origin(m) => format!("origin {}", m.name),
        };
        self.lines.push(line);
    }
}

/// What research §2.2 found PostgreSQL 15 sends, for the statements of the real-server test.
const EXPECTED: &str = "\
begin
relation public.acc Default (aid*:23,bal:23)
insert acc N(1,10) => new (1)
insert acc N(2,20) => new (2)
commit
begin
update acc N(1,11) => old (1) new (1)
commit
begin
update acc K(2,NULL) N(3,20) => old (2) new (3)
commit
begin
delete acc K(1,NULL) => old (1)
commit
begin
relation public.acc2 Default (tenant*:23,code*:25,note:25,v:23)
insert acc2 N(7,a,x×10000,1) => new (7,a)
insert acc2 N(7,k×2500,n,1) => new (7,k×2500)
commit
begin
update acc2 N(7,a,u,2) => old (7,a) new (7,a)
commit
begin
update acc2 K(7,a,NULL,NULL) N(7,b,u,2) => old (7,a) new (7,b)
commit
begin
update acc2 K(7,k×2500,NULL,NULL) N(7,u,n,3) => old (7,k×2500) new ?
commit
begin
type public.mood
relation public.full Full (id*:23,feeling*:mood)
insert full N(1,ok) => new (1,ok)
insert full N(2,NULL) => new (2,NULL)
commit
begin
update full O(1,ok) N(1,sad) => old (1,ok) new (1,sad)
commit
begin
delete full O(2,NULL) => old (2,NULL)
commit
message strata_hb 123 transactional=false
begin
truncate acc2 options=0
commit";

/// The harness's PostgreSQL, through a temporary pgoutput slot: INSERT, UPDATE (key kept,
/// key changed, a toasted column left alone, a toasted key left alone), DELETE, REPLICA
/// IDENTITY FULL, TRUNCATE and a heartbeat message, decoded and read for keys.
#[tokio::test]
async fn decodes_what_postgres_sends_through_a_pgoutput_slot() {
    let url = std::env::var("STRATA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| panic!("STRATA_TEST_DATABASE_URL is unset: run `cargo xtask test`"));
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await.unwrap().get(0);
    assert_eq!(wal_level, "logical", "the server must decode its WAL: run `cargo xtask test`");

    // Names of this process's own, so parallel test binaries never meet. One connection
    // throughout: a temporary slot lives as long as its session.
    let suffix = format!("_{}", std::process::id());
    let (acc, acc2, full) = (format!("acc{suffix}"), format!("acc2{suffix}"), format!("full{suffix}"));
    let (mood, publication) = (format!("mood{suffix}"), format!("strata_decode_test{suffix}"));
    let slot = publication.clone();
    // Decoding stops at the flushed end of the WAL, and the harness commits asynchronously:
    // flush at each commit. A non-transactional message is not flushed by itself (before
    // PostgreSQL 17), so a commit follows the heartbeat.
    client
        .batch_execute(&format!(
            "SET synchronous_commit = on;
             DROP PUBLICATION IF EXISTS {publication};
             DROP TABLE IF EXISTS {acc}, {acc2}, {full};
             DROP TYPE IF EXISTS {mood};
             CREATE TABLE {acc} (aid int PRIMARY KEY, bal int NOT NULL);
             CREATE TABLE {acc2} (tenant int, code text, note text, v int, PRIMARY KEY (tenant, code));
             -- Out of line and uncompressed: an UPDATE that leaves them alone sends `u`.
             ALTER TABLE {acc2} ALTER code SET STORAGE EXTERNAL, ALTER note SET STORAGE EXTERNAL;
             CREATE TYPE {mood} AS ENUM ('ok', 'sad');
             CREATE TABLE {full} (id int, feeling {mood});
             ALTER TABLE {full} REPLICA IDENTITY FULL;
             CREATE PUBLICATION {publication} FOR TABLE {acc}, {acc2}, {full};"
        ))
        .await
        .unwrap();
    client
        .query_one("SELECT pg_create_logical_replication_slot($1, 'pgoutput', temporary => true)", &[&slot])
        .await
        .unwrap();
    let started = SystemTime::now();
    for statement in [
        format!("INSERT INTO {acc} VALUES (1, 10), (2, 20)"),
        format!("UPDATE {acc} SET bal = 11 WHERE aid = 1"),
        format!("UPDATE {acc} SET aid = 3 WHERE aid = 2"),
        format!("DELETE FROM {acc} WHERE aid = 1"),
        format!("INSERT INTO {acc2} VALUES (7, 'a', repeat('x', 10000), 1), (7, repeat('k', 2500), 'n', 1)"),
        format!("UPDATE {acc2} SET v = 2 WHERE tenant = 7 AND code = 'a'"),
        format!("UPDATE {acc2} SET code = 'b' WHERE tenant = 7 AND code = 'a'"),
        format!("UPDATE {acc2} SET v = 3 WHERE tenant = 7 AND code = repeat('k', 2500)"),
        format!("INSERT INTO {full} VALUES (1, 'ok'), (2, NULL)"),
        format!("UPDATE {full} SET feeling = 'sad' WHERE id = 1"),
        format!("DELETE FROM {full} WHERE id = 2"),
        "SELECT pg_logical_emit_message(false, 'strata_hb', '123')".to_owned(),
        format!("TRUNCATE {acc2}"),
    ] {
        client.batch_execute(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let rows = client
        .query(
            "SELECT lsn::text, xid::text, data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', $2, 'messages', 'true')",
            &[&slot, &publication],
        )
        .await
        .unwrap();
    let finished = SystemTime::now();
    client
        .batch_execute(&format!(
            "SELECT pg_drop_replication_slot('{slot}'); DROP PUBLICATION {publication};
             DROP TABLE {acc}, {acc2}, {full}; DROP TYPE {mood};"
        ))
        .await
        .unwrap();

    let mut reading = Reading::default();
    let mut begin: Option<Begin> = None;
    for row in &rows {
        let (lsn, xid, data): (String, String, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
        let message = decode(&data).unwrap_or_else(|e| panic!("{e}: {data:?}"));
        match &message {
            // Other tests' heartbeats may pass through the slot too.
            Message::Logical(m) if (m.prefix.as_str(), &m.content[..]) != ("strata_hb", b"123") => continue,
            Message::Logical(m) => assert_eq!(m.lsn.to_string(), lsn, "a message's LSN is its row's"),
            Message::Begin(m) => {
                assert_eq!(m.xid.to_string(), xid, "the transaction id of {m:?}");
                begin = Some(m.clone());
            }
            Message::Commit(m) => {
                let begin = begin.take().unwrap_or_else(|| panic!("{m:?} without a begin"));
                assert_eq!((m.commit_lsn, m.commit_time), (begin.final_lsn, begin.commit_time));
                assert!(m.end_lsn > m.commit_lsn, "{m:?}");
                let time = m.commit_time.to_system_time().unwrap();
                let slack = Duration::from_secs(5);
                assert!(time + slack >= started && time <= finished + slack, "commit time {time:?}");
            }
            _ => {}
        }
        reading.read(&message, &suffix);
    }
    let rendered = reading.lines.join("\n");
    assert_eq!(rendered, EXPECTED, "\n--- decoded ---\n{rendered}\n--- expected ---\n{EXPECTED}");
}
