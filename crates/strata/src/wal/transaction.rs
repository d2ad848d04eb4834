//! What one transaction of the stream wrote: the relations its changes named, and the keys of
//! its changed rows (kept for key-level invalidation; not used yet).

use std::collections::{BTreeMap, HashSet};

use strata_core::TableName;
use strata_normalizer::WriteEffect;

use super::decode::{Key, Message, Oid, RelationMap, RowKeys};
use super::MAX_KEYS_PER_TABLE;

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

/// The rows of one table a transaction changed. Kept for key-level invalidation, not used yet.
#[derive(Debug)]
pub(super) enum TableKeys {
    Keys(HashSet<Key>),
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
        let entry =
            self.tables.entry(relation.name.clone()).or_insert_with(|| TableKeys::Keys(HashSet::new()));
        let TableKeys::Keys(set) = entry else { return };
        match keys.touched() {
            Some(touched) => {
                set.extend(touched.into_iter().cloned());
                if set.len() > MAX_KEYS_PER_TABLE {
                    *entry = TableKeys::TableWide;
                }
            }
            None => *entry = TableKeys::TableWide,
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

    /// What the commit invalidates.
    pub(super) fn effect(self) -> WriteEffect {
        if self.unknown {
            WriteEffect::Unknown
        } else if self.tables.is_empty() {
            WriteEffect::Nothing
        } else {
            WriteEffect::Tables(self.tables.into_keys().map(TableName::new).collect())
        }
    }
}
