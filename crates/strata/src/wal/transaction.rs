//! What one transaction of the stream wrote: the relations its changes named, and the keys of
//! its changed rows, which bump only those keys' units (key-level invalidation, `crate::keys`).

use std::collections::{BTreeMap, HashSet};

use strata_core::TableName;
use strata_normalizer::WriteEffect;

use super::decode::{Key, KeyValue as WalValue, Message, Oid, RelationMap, RowKeys};
use super::MAX_KEYS_PER_TABLE;
use crate::keys::WrittenKeys;
use crate::relations::Relations;
use crate::versions::version_unit;

/// What one transaction wrote, between `B` and `C`.
#[derive(Debug, Default)]
pub(super) struct Transaction {
    /// Written relations (unqualified names), with the keys of their changed rows.
    pub(super) tables: BTreeMap<String, TableKeys>,
    /// A change named a relation the stream never described, or could not be decoded.
    pub(super) unknown: bool,
    /// The DDL trigger's message: the transaction ran DDL.
    pub(super) ddl: bool,
}

/// The rows of one table a transaction changed.
#[derive(Debug)]
pub(super) enum TableKeys {
    /// The replica-identity values of every changed row (old and new), with the names of those
    /// columns in order.
    Keys { columns: Vec<String>, keys: HashSet<Key> },
    /// TRUNCATE, a key that cannot be known, or more than [`MAX_KEYS_PER_TABLE`] keys.
    TableWide,
}

impl Transaction {
    pub(super) fn apply(&mut self, relations: &RelationMap, message: &Message) {
        let keys = match message {
            Message::Insert(insert) => relations.insert_keys(insert),
            Message::Update(update) => relations.update_keys(update),
            Message::Delete(delete) => relations.delete_keys(delete),
            Message::Truncate(truncate) => {
                for oid in &truncate.relations {
                    self.table_wide(relations, *oid);
                }
                return;
            }
            _ => return,
        };
        let oid = match message {
            Message::Insert(m) => m.relation,
            Message::Update(m) => m.relation,
            Message::Delete(m) => m.relation,
            _ => return,
        };
        match keys {
            Ok(keys) => self.touch(relations, oid, &keys),
            Err(_) => self.unknown = true,
        }
    }

    fn touch(&mut self, relations: &RelationMap, oid: Oid, keys: &RowKeys) {
        let Some(relation) = relations.get(oid) else {
            self.unknown = true;
            return;
        };
        let columns: Vec<String> = relation.key_columns().map(|(_, c)| c.name.clone()).collect();
        let entry = self
            .tables
            .entry(relation.name.clone())
            .or_insert_with(|| TableKeys::Keys { columns: columns.clone(), keys: HashSet::new() });
        let TableKeys::Keys { columns: known, keys: set } = entry else { return };
        match keys.touched() {
            // The same columns as the table's earlier changes in this transaction.
            Some(touched) if *known == columns => {
                set.extend(touched.into_iter().cloned());
                if set.len() > MAX_KEYS_PER_TABLE {
                    *entry = TableKeys::TableWide;
                }
            }
            _ => *entry = TableKeys::TableWide,
        }
    }

    fn table_wide(&mut self, relations: &RelationMap, oid: Oid) {
        match relations.get(oid) {
            Some(relation) => {
                self.tables.insert(relation.name.clone(), TableKeys::TableWide);
            }
            None => self.unknown = true,
        }
    }

    /// What the commit invalidates: the tables written, and the keys of the changed rows of
    /// those whose key column (`relations`) the stream gave in every change, by version unit.
    pub(super) fn effect(self, relations: &Relations) -> (WriteEffect, WrittenKeys) {
        if self.unknown {
            return (WriteEffect::Unknown, WrittenKeys::new());
        }
        if self.tables.is_empty() {
            return (WriteEffect::Nothing, WrittenKeys::new());
        }
        let mut written = WrittenKeys::new();
        let mut tables = Vec::with_capacity(self.tables.len());
        for (name, keys) in self.tables {
            let table = TableName::new(name);
            if let TableKeys::Keys { columns, keys } = keys {
                if let Some(values) = key_values(relations, &table, &columns, &keys) {
                    written.insert(version_unit(&table), values);
                }
            }
            tables.push(table);
        }
        (WriteEffect::Tables(tables), written)
    }
}

/// The values of `table`'s key column (the catalog's, in `relations`) in the changed rows'
/// replica-identity values, in the canonical form key-level units are computed from; `None`
/// when the column is not among them or a value cannot be read (the table is then table-wide).
fn key_values(
    relations: &Relations,
    table: &TableName,
    columns: &[String],
    keys: &HashSet<Key>,
) -> Option<Vec<crate::keys::KeyValue>> {
    let key = relations.key_column(&version_unit(table))?;
    let position = columns.iter().position(|c| *c == key.name)?;
    let mut values = Vec::with_capacity(keys.len());
    for row in keys {
        match row.values().get(position)? {
            // No row has a NULL key column: nothing to bump.
            WalValue::Null => {}
            WalValue::Text(text) => {
                values.push(crate::keys::KeyValue::from_text(key.kind, std::str::from_utf8(text).ok()?)?)
            }
            WalValue::Binary(_) => return None,
        }
    }
    Some(values)
}
