//! What the SQL text of a statement does not show: views over tables, cascades, triggers.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use strata_core::TableName;

use crate::versions::version_unit;
use strata_normalizer::StatementAnalysis;

/// The names by which `statement` may run a built-in or a user's overload of it: the functions
/// it calls unqualified, then the shipped operators it names unqualified (as `operator =`). A
/// qualified name needs no check: outside `pg_catalog` the analysis already takes it for user
/// code, and in it for the built-in it names.
pub(crate) fn bare_names(statement: &StatementAnalysis) -> impl Iterator<Item = &str> {
    statement.functions().iter().chain(statement.operators()).map(|f| &**f).filter(|f| !f.contains('.'))
}

/// The first of [`bare_names`] that `names` (of user functions and operators that are not
/// immutable) holds: the statement may run that user code where its text seems to run a built-in.
pub(crate) fn shadowed_name<'a>(
    statement: &'a StatementAnalysis,
    names: &HashSet<String>,
) -> Option<&'a str> {
    bare_names(statement).find(|f| names.contains(*f))
}

/// Dependencies between relations that a statement's text does not show, usually read from the
/// database's catalog: a view reads its base tables; a write to a table may change others (foreign
/// keys with cascade actions, inheritance and partition trees); a table with triggers or rules may
/// change anything. Names are relation names without schema, as versions are kept.
///
/// Cheap to clone. Install with [`QueryCache::set_relations`](crate::QueryCache::set_relations).
#[derive(Clone, Default)]
pub struct Relations(Arc<Closures>);

#[derive(Default)]
struct Closures {
    /// For a relation, every relation reading it also reads (transitively), itself excluded.
    reads: HashMap<TableName, Vec<TableName>>,
    /// For a table, every table a write to it may also change (transitively), itself excluded.
    writes: HashMap<TableName, Vec<TableName>>,
    /// Tables whose writes may change anything.
    unknown: HashSet<TableName>,
    /// Relations whose reads or writes run user code (triggers, rules, views or policies calling
    /// user functions, defaults or checks calling user functions).
    code: HashSet<TableName>,
    /// Relations whose reads run a volatile user function, and sequences: what reading them
    /// returns changes without a write naming them.
    volatile: HashSet<TableName>,
    /// Each table's key column, when every table of that name agrees on it.
    keys: HashMap<TableName, KeyColumn>,
    /// Where each table's key column is, as PostgreSQL names it in a `RowDescription`: the
    /// table's OID and the column's number, for each table of that name.
    sources: HashMap<TableName, Vec<KeySource>>,
    /// Tables a write to another table may change (cascades, inheritance and partition trees)
    /// and relations reading others (views, parents): their rows change in ways no key of
    /// theirs describes, so they are never key-level.
    entangled: HashSet<TableName>,
    /// The names of user functions (outside `pg_catalog`) that are not immutable.
    functions: HashSet<String>,
}

/// What a table's key column is: its name and the kind of its type, which decides how values
/// are compared (see `ARCHITECTURE.md`, key-level invalidation).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyColumn {
    /// The column's name.
    pub name: String,
    /// The kind of its type.
    pub kind: KeyKind,
}

/// A table column as PostgreSQL identifies it in a `RowDescription`: the table's OID and the
/// column's attribute number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeySource {
    /// The table's OID.
    pub table_oid: u32,
    /// The column's attribute number.
    pub column: i16,
}

/// The types whose equality is byte equality of a canonical form, so that a key's version unit
/// can be computed from a literal or a bound parameter: everything else stays table-level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyKind {
    /// `int2`, `int4`, `int8`, read as an `i64`: point slots and range buckets.
    Int,
    /// `uuid`, read as 16 bytes: point slots.
    Uuid,
    /// `text` or `varchar` with a deterministic collation, as its bytes: point slots.
    Text,
}

impl KeyKind {
    /// The catalog's name for the kind; `None` for `other`.
    #[cfg_attr(not(feature = "catalog"), allow(dead_code))]
    pub(crate) fn parse(kind: &str) -> Option<Self> {
        match kind {
            "int" => Some(KeyKind::Int),
            "uuid" => Some(KeyKind::Uuid),
            "text" => Some(KeyKind::Text),
            _ => None,
        }
    }
}

impl Relations {
    /// Starts an empty set of dependencies.
    pub fn builder() -> RelationsBuilder {
        RelationsBuilder::default()
    }

    /// What reading `relation` also reads.
    pub(crate) fn reads_through(&self, relation: &TableName) -> &[TableName] {
        self.0.reads.get(relation).map_or(&[], Vec::as_slice)
    }

    /// What a write to `table` may also change.
    pub(crate) fn writes_also(&self, table: &TableName) -> &[TableName] {
        self.0.writes.get(table).map_or(&[], Vec::as_slice)
    }

    /// Whether a write to `table` may change anything.
    pub(crate) fn writes_unknown(&self, table: &TableName) -> bool {
        self.0.unknown.contains(table)
    }

    /// Whether reading or writing any of `relations` (or what they read through or also write)
    /// may run user code, which could change the session's state.
    pub(crate) fn runs_user_code(&self, relations: &[TableName]) -> bool {
        let code = &self.0.code;
        !code.is_empty()
            && relations.iter().map(version_unit).any(|r| {
                code.contains(&r)
                    || self.reads_through(&r).iter().any(|t| code.contains(t))
                    || self.writes_also(&r).iter().any(|t| code.contains(t))
            })
    }

    /// The first name `statement` calls or names that may run a user function: see
    /// [`shadowed_name`].
    pub(crate) fn user_function_in<'a>(&self, statement: &'a StatementAnalysis) -> Option<&'a str> {
        if self.0.functions.is_empty() {
            return None;
        }
        shadowed_name(statement, &self.0.functions)
    }

    /// Whether reading `relation` runs a volatile user function or reads a sequence.
    pub(crate) fn is_volatile(&self, relation: &TableName) -> bool {
        self.0.volatile.contains(relation)
    }

    /// The key column of the tables named `table` (a version unit), when they all agree on one
    /// and the table may be read key-level: nothing writes it through another table, and it
    /// reads no other relation.
    pub(crate) fn key_column(&self, table: &TableName) -> Option<&KeyColumn> {
        if self.0.entangled.contains(table) {
            return None;
        }
        self.0.keys.get(table)
    }

    /// Where the key columns of the tables named `table` (a version unit) are, for reading keys
    /// from the rows a write returns; empty when unknown.
    pub(crate) fn key_sources(&self, table: &TableName) -> &[KeySource] {
        self.0.sources.get(table).map_or(&[], Vec::as_slice)
    }

    /// Whether there are no dependencies at all.
    pub fn is_empty(&self) -> bool {
        self.0.reads.is_empty()
            && self.0.writes.is_empty()
            && self.0.unknown.is_empty()
            && self.0.code.is_empty()
            && self.0.volatile.is_empty()
            && self.0.keys.is_empty()
            && self.0.functions.is_empty()
    }
}

impl fmt::Debug for Relations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relations")
            .field("reads_through", &self.0.reads.len())
            .field("writes_also", &self.0.writes.len())
            .field("writes_unknown", &self.0.unknown.len())
            .field("runs_user_code", &self.0.code.len())
            .finish()
    }
}

/// Builds [`Relations`]; closures are computed once, in [`build`](Self::build).
#[derive(Debug, Clone, Default)]
pub struct RelationsBuilder {
    reads: Vec<(TableName, TableName)>,
    writes: Vec<(TableName, TableName)>,
    unknown: Vec<TableName>,
    code: Vec<TableName>,
    volatile: Vec<TableName>,
    keys: Vec<(TableName, Option<KeyColumn>)>,
    sources: Vec<(TableName, KeySource)>,
    functions: Vec<String>,
}

fn unit(name: &str) -> TableName {
    version_unit(&TableName::new(name))
}

impl RelationsBuilder {
    /// Reading `relation` (a view, a materialized view, an inheritance or partition parent) also
    /// reads `base`.
    #[must_use]
    pub fn reads_through(mut self, relation: &str, base: &str) -> Self {
        self.reads.push((unit(relation), unit(base)));
        self
    }

    /// A write to `table` may also change `other` (a foreign key's cascade action, an inheritance
    /// or partition tree).
    #[must_use]
    pub fn writes_also(mut self, table: &str, other: &str) -> Self {
        self.writes.push((unit(table), unit(other)));
        self
    }

    /// A write to `table` may change anything (user triggers, rules): it invalidates everything.
    #[must_use]
    pub fn writes_unknown(mut self, table: &str) -> Self {
        self.unknown.push(unit(table));
        self
    }

    /// Reading or writing `relation` runs user code (a trigger, a rule, a view or a policy calling
    /// a user function, a default or a check calling one), which may change the session's
    /// settings: a session that reaches it must have its state read back.
    #[must_use]
    pub fn runs_user_code(mut self, relation: &str) -> Self {
        self.code.push(unit(relation));
        self
    }

    /// Reading `relation` runs a volatile user function (a view or a policy calling one): its
    /// reads are never cached, and it runs user code.
    #[must_use]
    pub fn reads_volatile(mut self, relation: &str) -> Self {
        self.volatile.push(unit(relation));
        self.code.push(unit(relation));
        self
    }

    /// `relation` is a sequence: `nextval` changes it without a write naming it (also through a
    /// column default, on an insert into another table), so its reads are never cached. Reading
    /// it runs no user code.
    #[must_use]
    pub fn sequence(mut self, relation: &str) -> Self {
        self.volatile.push(unit(relation));
        self
    }

    /// The key column of `table` (the leading column of its replica identity index). Tables of
    /// the same name in several schemas must agree, or none of them has a key column.
    #[must_use]
    pub fn key_column(mut self, table: &str, column: &str, kind: KeyKind) -> Self {
        self.keys.push((unit(table), Some(KeyColumn { name: column.to_owned(), kind })));
        self
    }

    /// Where `table`'s key column is (see [`KeySource`]): the rows a write returns with
    /// `RETURNING` say which keys it changed when one of their fields comes from there.
    #[must_use]
    pub fn key_source(mut self, table: &str, source: KeySource) -> Self {
        self.sources.push((unit(table), source));
        self
    }

    /// `table` has a key whose type is not eligible (or none): it stays table-level even when a
    /// table of the same name in another schema has an eligible key.
    #[must_use]
    pub fn keyless(mut self, table: &str) -> Self {
        self.keys.push((unit(table), None));
        self
    }

    /// A user function (outside `pg_catalog`) that is not immutable is named `name`: where a
    /// built-in has that name too, a call may run the user's function (an overload for other argument types wins
    /// whatever the `search_path`), which the text cannot show.
    #[must_use]
    pub fn user_function(mut self, name: &str) -> Self {
        self.functions.push(name.to_owned());
        self
    }

    /// Computes the transitive closures.
    pub fn build(self) -> Relations {
        let mut keys: HashMap<TableName, Option<KeyColumn>> = HashMap::new();
        for (table, key) in self.keys {
            keys.entry(table)
                .and_modify(|k| {
                    if *k != key {
                        *k = None;
                    }
                })
                .or_insert(key);
        }
        let entangled = self
            .writes
            .iter()
            .map(|(_, to)| to.clone())
            .chain(self.reads.iter().map(|(from, _)| from.clone()))
            .collect();
        Relations(Arc::new(Closures {
            entangled,
            keys: keys.into_iter().filter_map(|(t, k)| Some((t, k?))).collect(),
            sources: self.sources.into_iter().fold(HashMap::new(), |mut m: HashMap<_, Vec<_>>, (t, s)| {
                m.entry(t).or_default().push(s);
                m
            }),
            reads: closure(&self.reads),
            writes: closure(&self.writes),
            unknown: self.unknown.into_iter().collect(),
            code: self.code.into_iter().collect(),
            volatile: self.volatile.into_iter().collect(),
            functions: self.functions.into_iter().collect(),
        }))
    }
}

/// For every node with edges, everything reachable from it (itself excluded), sorted.
fn closure(edges: &[(TableName, TableName)]) -> HashMap<TableName, Vec<TableName>> {
    let mut direct: HashMap<&TableName, Vec<&TableName>> = HashMap::new();
    for (from, to) in edges {
        direct.entry(from).or_default().push(to);
    }
    let mut result = HashMap::new();
    for start in direct.keys() {
        let mut seen: HashSet<&TableName> = HashSet::new();
        let mut stack: Vec<&TableName> = direct[start].clone();
        while let Some(next) = stack.pop() {
            if next != *start && seen.insert(next) {
                stack.extend(direct.get(next).into_iter().flatten());
            }
        }
        let mut reached: Vec<TableName> = seen.into_iter().cloned().collect();
        reached.sort();
        result.insert((*start).clone(), reached);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[TableName]) -> Vec<&str> {
        list.iter().map(TableName::as_str).collect()
    }

    #[test]
    fn closures_are_transitive_unqualified_and_survive_cycles() {
        let r = Relations::builder()
            .reads_through("public.report", "summary")
            .reads_through("summary", "orders")
            .reads_through("summary", "customers")
            .writes_also("customers", "orders")
            .writes_also("orders", "order_lines")
            .writes_also("order_lines", "customers")
            .writes_unknown("audited")
            .build();
        assert_eq!(names(r.reads_through(&TableName::new("report"))), ["customers", "orders", "summary"]);
        assert_eq!(names(r.writes_also(&TableName::new("customers"))), ["order_lines", "orders"]);
        assert!(r.writes_also(&TableName::new("unrelated")).is_empty());
        assert!(r.writes_unknown(&TableName::new("audited")));
        assert!(!Relations::default().writes_unknown(&TableName::new("audited")));
        assert!(Relations::default().is_empty() && !r.is_empty());
    }

    #[test]
    fn key_columns_need_every_table_of_a_name_to_agree() {
        let r = Relations::builder()
            .key_column("public.accounts", "aid", KeyKind::Int)
            .key_column("archive.accounts", "aid", KeyKind::Int)
            .key_column("a.users", "id", KeyKind::Int)
            .key_column("b.users", "id", KeyKind::Uuid)
            .key_column("a.items", "id", KeyKind::Int)
            .keyless("b.items")
            .build();
        let key = |t: &str| r.key_column(&TableName::new(t)).map(|k| (k.name.as_str(), k.kind));
        assert_eq!(key("accounts"), Some(("aid", KeyKind::Int)));
        assert_eq!(key("users"), None, "two types");
        assert_eq!(key("items"), None, "one of them has no eligible key");
        assert_eq!(key("unknown"), None);
        let tree = Relations::builder()
            .key_column("parent", "id", KeyKind::Int)
            .key_column("child", "id", KeyKind::Int)
            .key_column("referenced", "id", KeyKind::Int)
            .reads_through("parent", "child")
            .writes_also("referenced", "child")
            .build();
        let key = |t: &str| tree.key_column(&TableName::new(t)).is_some();
        assert!(!key("parent") && !key("child"), "a parent reads its child; a cascade writes the child");
        assert!(key("referenced"));
    }
}
