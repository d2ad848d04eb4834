//! Unit tests of the WAL invalidator: its configuration and what a transaction invalidates.

use bytes::Bytes;
use strata_core::TableName;
use strata_normalizer::WriteEffect;

use super::decode::{
    Delete, Insert, Message, Oid, OldRow, Relation, RelationColumn, RelationMap, ReplicaIdentity, Truncate,
    Update, Value,
};
use super::transaction::{TableKeys, Transaction};
use super::*;

#[test]
fn config_validates_and_never_shows_the_password() {
    let config = WalConfig::builder()
        .with_upstream("db", 5433)
        .with_user("strata")
        .with_password("hunter2")
        .with_database("app")
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.publication(), DEFAULT_PUBLICATION);
    assert_eq!(config.lag_bound(), Duration::from_secs(1));
    assert_eq!(config.heartbeat_interval(), Duration::from_millis(250));
    let shown = format!("{config:?} {:?}", WalConfig::builder().with_password("hunter2"));
    assert!(!shown.contains("hunter2") && shown.contains("<set>"), "{shown}");
    let base = || WalConfig::builder().with_upstream("h", 5432).with_user("u").with_database("d");
    assert!(base().build().is_ok());
    assert!(WalConfig::builder().with_user("u").with_database("d").build().is_err(), "no upstream");
    assert!(base().with_publication("Bad-Name").build().is_err());
    assert!(base().with_slot_prefix("x; DROP").build().is_err());
    assert!(base().with_lag_bound(Duration::from_millis(100)).build().is_err(), "bound under the interval");
    assert!(base().with_connect_timeout(Duration::ZERO).build().is_err());
}

#[test]
fn public_types_are_debug_send_sync() {
    fn check<T: fmt::Debug + Send + Sync>() {}
    check::<WalConfig>();
    check::<WalConfigBuilder>();
    check::<WalInvalidator>();
}

fn relation(oid: Oid, name: &str) -> Relation {
    let column =
        |name: &str, flags| RelationColumn { flags, name: name.to_owned(), type_oid: 23, type_modifier: -1 };
    Relation {
        oid,
        namespace: "public".to_owned(),
        name: name.to_owned(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![column("id", 1), column("v", 0)],
    }
}

fn row(id: &'static str) -> Vec<Value> {
    vec![Value::Text(Bytes::from_static(id.as_bytes())), Value::Null]
}

fn effect_of(relations: &RelationMap, messages: &[Message]) -> WriteEffect {
    let mut t = Transaction::default();
    for m in messages {
        t.apply(relations, m);
    }
    t.effect(&crate::Relations::builder().build()).0
}

#[test]
fn a_transaction_invalidates_the_tables_it_wrote() {
    let mut relations = RelationMap::default();
    relations.remember(relation(1, "orders"));
    relations.remember(relation(2, "Items"));
    let tables = |names: &[&str]| WriteEffect::Tables(names.iter().map(|n| TableName::new(*n)).collect());

    assert_eq!(effect_of(&relations, &[]), WriteEffect::Nothing, "a heartbeat's transaction");
    let insert = Message::Insert(Insert { relation: 1, new: row("1") });
    let update = Message::Update(Update { relation: 2, old: None, new: row("2") });
    let delete = Message::Delete(Delete { relation: 1, old: OldRow::Key(row("3")) });
    assert_eq!(effect_of(&relations, &[insert.clone(), update, delete]), tables(&["Items", "orders"]));
    let truncate = Message::Truncate(Truncate { options: 0, relations: vec![2] });
    assert_eq!(effect_of(&relations, &[truncate]), tables(&["Items"]));
    let unknown = Message::Insert(Insert { relation: 9, new: row("1") });
    assert_eq!(effect_of(&relations, &[insert, unknown]), WriteEffect::Unknown, "no R message for 9");
    let unknown = Message::Truncate(Truncate { options: 0, relations: vec![1, 9] });
    assert_eq!(effect_of(&relations, &[unknown]), WriteEffect::Unknown);
}

#[test]
fn keys_are_kept_until_a_table_is_written_wide() {
    let mut relations = RelationMap::default();
    relations.remember(relation(1, "orders"));
    let mut t = Transaction::default();
    t.apply(&relations, &Message::Insert(Insert { relation: 1, new: row("1") }));
    t.apply(&relations, &Message::Insert(Insert { relation: 1, new: row("1") }));
    assert!(matches!(t.tables.get("orders"), Some(TableKeys::Keys { keys, .. }) if keys.len() == 1));
    // A key in unchanged TOAST cannot be known.
    let toast = vec![Value::UnchangedToast, Value::Null];
    t.apply(&relations, &Message::Update(Update { relation: 1, old: None, new: toast }));
    assert!(matches!(t.tables.get("orders"), Some(TableKeys::TableWide)));

    let mut t = Transaction::default();
    for i in 0..=MAX_KEYS_PER_TABLE {
        let new = vec![Value::Text(Bytes::from(i.to_string())), Value::Null];
        t.apply(&relations, &Message::Insert(Insert { relation: 1, new }));
    }
    assert!(matches!(t.tables.get("orders"), Some(TableKeys::TableWide)));
}

#[test]
fn the_catalog_key_column_of_changed_rows_becomes_their_written_keys() {
    use crate::keys::KeyValue as Canonical;
    let mut map = RelationMap::default();
    map.remember(relation(1, "orders"));
    map.remember(relation(2, "items"));
    let mut t = Transaction::default();
    t.apply(&map, &Message::Insert(Insert { relation: 1, new: row("7") }));
    // A key change: the old and the new key.
    let old = OldRow::Key(row("8"));
    t.apply(&map, &Message::Update(Update { relation: 1, old: Some(old), new: row("9") }));
    t.apply(&map, &Message::Insert(Insert { relation: 2, new: row("1") }));
    let relations = crate::Relations::builder()
        .key_column("orders", "id", crate::KeyKind::Int)
        // The catalog names another key column for items than the stream's identity: unknown.
        .key_column("items", "v", crate::KeyKind::Int)
        .build();
    let (effect, keys) = t.effect(&relations);
    assert!(matches!(effect, WriteEffect::Tables(ref t) if t.len() == 2), "{effect:?}");
    let mut orders = keys.get(&TableName::new("orders")).cloned().unwrap_or_default();
    orders.sort_by_key(|k| format!("{k:?}"));
    assert_eq!(orders, vec![Canonical::Int(7), Canonical::Int(8), Canonical::Int(9)]);
    assert!(!keys.contains_key(&TableName::new("items")), "{keys:?}");
    // A value the key's type cannot read: table-wide.
    let mut t = Transaction::default();
    t.apply(&map, &Message::Insert(Insert { relation: 1, new: row("x") }));
    assert!(t.effect(&relations).1.is_empty());
}
