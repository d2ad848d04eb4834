//! Restrictions on columns that a statement's text proves: which rows of a table a read's result
//! can depend on, and which rows a write changes. A later layer that knows each table's key
//! column turns them into version units finer than a table.
//!
//! The normalizer does not know which column is a table's key, nor any column's type: it
//! reports every eligible restriction on a plain column reference with the column's name, the
//! values as references into the statement's parameters ([`ValueRef`]), and any explicit cast
//! written on a value, and leaves type checks to the layer that has the catalog.
//!
//! The rules for reads, and why they are sound, are documented on
//! [`StatementAnalysis::read_restrictions`](crate::StatementAnalysis::read_restrictions); those
//! for writes on [`WriteKeys`]. `reads.rs` walks a `SELECT` level by level; `writes.rs` reads
//! the one target of a write. Both share the reading of conditions and values here.

use std::sync::Arc;

use pg_query::protobuf::{AExprKind, BoolExprType, RangeVar, TypeName};
use pg_query::{Node, NodeEnum};
use strata_core::TableName;

mod reads;
mod writes;

pub(crate) use reads::read_restrictions;
pub(crate) use writes::write_keys;

/// Deeper nesting than this is not analyzed for restrictions (none are reported).
const MAX_DEPTH: u32 = 200;

/// A value of a restriction: where a later layer finds it for one execution of the statement.
///
/// Values are references, not values, so one analysis serves every execution of a statement
/// (and every text the shape memo answers with it):
/// - [`ValueRef::Literal`] `{ index: i }` is the literal lifted out of the text at
///   [`StatementAnalysis::params`](crate::StatementAnalysis::params)`()[i]` of the statement
///   that reports the restriction: its text (to be read as its
///   [`LiteralForm`](crate::LiteralForm) says: `E'...'` strings are kept as written, a number
///   from a collapsed list carries its sign) and its [`TypeOid`](strata_core::TypeOid)
///   (`UNKNOWN` for a string, which PostgreSQL reads as the other operand's type). In
///   [`Analysis::params`](crate::Analysis::params), which runs over all statements of a text,
///   it comes after the parameters of the statements before it.
/// - [`ValueRef::Client`] `{ number: n }` is the client's own `$n` as written (1-based): the
///   `n`-th value of the Bind message, with the type the client declared or PostgreSQL
///   inferred.
///
/// The index is not the placeholder number of the normalized text: there the client's
/// parameters are `$1..$k` and lifted literals are numbered from `$k+1` on, but a collapsed
/// `IN`/`VALUES`/`ARRAY` list shows a single placeholder for all of its literals, so the numbers
/// after one no longer match `k + 1 + index`.
///
/// `cast` is the type of an explicit cast written on the value (`'5'::int8`, `CAST($1 AS
/// uuid)`, `int4 '5'`): the type name as the parser spells it, with the schema when there is
/// one. Keyword types come out as the parser resolves them (`int`, `integer` →
/// `pg_catalog.int4`, `bigint` → `pg_catalog.int8`, `numeric` → `pg_catalog.numeric`), other
/// names as written (`uuid`, `text`, `public.mytype`); an array type ends in `[]` per
/// dimension. A comparison across types (`key = 4.0`, `key = '1'::numeric`) may not mean byte
/// equality of the key; the later layer must check the cast and the literal's type against the
/// column's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ValueRef {
    /// The client's parameter `$number` (1-based, as written in the text).
    Client {
        /// The parameter's number.
        number: u32,
        /// The explicit cast written on it, if any.
        cast: Option<Arc<str>>,
    },
    /// The literal lifted out of the text at this index of the statement's parameters.
    Literal {
        /// The index into [`StatementAnalysis::params`](crate::StatementAnalysis::params).
        index: u32,
        /// The explicit cast written on it, if any.
        cast: Option<Arc<str>>,
    },
    /// A `NULL` constant (only as an item of an `IN` list or `ARRAY[...]`): it matches no row.
    Null,
}

impl ValueRef {
    /// The explicit cast written on the value, if any.
    pub fn cast(&self) -> Option<&str> {
        match self {
            ValueRef::Client { cast, .. } | ValueRef::Literal { cast, .. } => cast.as_deref(),
            ValueRef::Null => None,
        }
    }
}

/// The values a restricted column can take in the rows that matter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RestrictedValues {
    /// One of these values: `c = v`, `c IN (v1, ...)`, `c = ANY (ARRAY[v1, ...])`.
    Points(Vec<ValueRef>),
    /// One of the elements of this array value: `c = ANY ($1)`, `c = ANY ('{1,2}'::int[])`.
    /// The value is an array; a `NULL` array or element matches nothing.
    Elements(ValueRef),
    /// A closed range: `c BETWEEN low AND high`, or `c >= low AND c < high` (any pair of a lower
    /// and an upper bound among the top-level conditions). `low > high` means no row.
    Range {
        /// The lower bound.
        low: ValueRef,
        /// Whether the lower bound itself is in the range (`>=`, `BETWEEN`).
        low_inclusive: bool,
        /// The upper bound.
        high: ValueRef,
        /// Whether the upper bound itself is in the range (`<=`, `BETWEEN`).
        high_inclusive: bool,
    },
}

impl RestrictedValues {
    /// Every value reference, in order.
    pub fn values(&self) -> Vec<&ValueRef> {
        match self {
            RestrictedValues::Points(v) => v.iter().collect(),
            RestrictedValues::Elements(v) => vec![v],
            RestrictedValues::Range { low, high, .. } => vec![low, high],
        }
    }
}

/// A restriction on one column of one reference to a table: the rows that matter have the
/// column's value among [`ColumnRestriction::values`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ColumnRestriction {
    table: TableName,
    column: Arc<str>,
    values: RestrictedValues,
}

impl ColumnRestriction {
    /// The table, named as [`StatementAnalysis::reads`](crate::StatementAnalysis::reads) (or
    /// the write's target) names it: schema-qualified when written so.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The column's name as the parser reads it: folded to lower case unless quoted.
    pub fn column(&self) -> &str {
        &self.column
    }

    /// The values the column takes in the rows that matter.
    pub fn values(&self) -> &RestrictedValues {
        &self.values
    }
}

/// A column an `UPDATE` (or `INSERT ... ON CONFLICT DO UPDATE`) assigns.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Assignment {
    column: Arc<str>,
    value: Option<ValueRef>,
}

impl Assignment {
    /// The column assigned (for `SET a[1] = ...` or `SET c.f = ...`, the column `a` or `c`).
    pub fn column(&self) -> &str {
        &self.column
    }

    /// The value assigned when it is a lifted literal, a client parameter or `NULL` (with at most
    /// a cast); `None` for `DEFAULT`, an expression, or a multi-column `SET (a, b) = ...`.
    pub fn value(&self) -> Option<&ValueRef> {
        self.value.as_ref()
    }
}

/// What an `INSERT ... ON CONFLICT` does with a conflicting row.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OnConflict {
    /// `DO NOTHING`: rows that conflict are not inserted, and nothing is updated.
    DoNothing,
    /// `DO UPDATE SET ...` (the assignments are [`WriteKeys::assignments`]): the existing row
    /// that conflicts with a proposed row on the arbiter index is updated. It has the proposed
    /// row's values in the arbiter's columns, but not necessarily in any other column.
    DoUpdate {
        /// The arbiter's columns when the text names them all as plain columns
        /// (`ON CONFLICT (a, b)`); `None` for `ON CONSTRAINT name`, an expression or no target.
        conflict_columns: Option<Vec<Arc<str>>>,
    },
}

/// What an `INSERT`, `UPDATE` or `DELETE` text says about the rows it writes in its one target
/// table.
///
/// Reported only when the statement writes exactly one table (its target, as
/// [`StatementAnalysis::writes`](crate::StatementAnalysis::writes) says), has no data-modifying
/// `WITH`, and for `UPDATE` no `FROM`, for `DELETE` no `USING`. It describes the statement as
/// written: triggers, rules, foreign key cascades and inheritance children or partitions of
/// the target can write other rows and tables (and a `BEFORE` trigger can change the key of a
/// row it inserts or updates); only the catalog shows those. Values are as written: PostgreSQL
/// converts them to the column's type by its assignment rules (`1.5` into an integer column is
/// `2`, trailing blanks beyond a `varchar(n)` are cut), which the later layer must reproduce
/// for the types it accepts, or refuse.
///
/// - `UPDATE`/`DELETE`: [`WriteKeys::restrictions`] are taken from the top-level `AND` terms of
///   `WHERE` of the forms `c = v`, `c IN (...)`, `c = ANY (...)` (no ranges): every row the
///   statement changes or deletes had, before, its value of `c` among the values. An `UPDATE`
///   that does not assign `c` leaves it so; one that does ([`WriteKeys::assignments`]) gives the
///   changed rows the assigned value when it is known.
/// - `INSERT ... VALUES`: a restriction for each column of the column list that every row gives
///   as a literal, parameter or `NULL`: every inserted row has one of the values (`DEFAULT`,
///   expressions and `INSERT ... SELECT` give none). With `ON CONFLICT DO UPDATE` an existing
///   row is updated instead, see [`OnConflict::DoUpdate`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WriteKeys {
    table: TableName,
    restrictions: Vec<ColumnRestriction>,
    assignments: Vec<Assignment>,
    on_conflict: Option<OnConflict>,
    returning: Vec<Arc<str>>,
    returns_all_columns: bool,
}

impl WriteKeys {
    /// The target table, schema-qualified when written so.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The columns whose values the written rows are known to have, at most one per column
    /// ([`RestrictedValues::Points`] or [`RestrictedValues::Elements`] only).
    pub fn restrictions(&self) -> &[ColumnRestriction] {
        &self.restrictions
    }

    /// The columns `UPDATE ... SET` or `ON CONFLICT DO UPDATE SET` assigns, in order.
    pub fn assignments(&self) -> &[Assignment] {
        &self.assignments
    }

    /// The `ON CONFLICT` clause of an `INSERT`.
    pub fn on_conflict(&self) -> Option<&OnConflict> {
        self.on_conflict.as_ref()
    }

    /// The target's columns an `INSERT ... RETURNING` names as bare (or target-qualified)
    /// column references, in order. A hint: the rows relayed say which columns they hold.
    pub fn returning(&self) -> &[Arc<str>] {
        &self.returning
    }

    /// Whether an `INSERT ... RETURNING` returns `*` (or `target.*`).
    pub fn returns_all_columns(&self) -> bool {
        self.returns_all_columns
    }
}

/// How to turn parse tree constants into parameter references: the text offsets of the
/// statement's lifted literals, in order.
pub(crate) struct Literals<'a> {
    pub(crate) starts: &'a [i32],
}

impl Literals<'_> {
    fn at(&self, location: i32) -> Option<u32> {
        let i = self.starts.binary_search(&location).ok()?;
        u32::try_from(i).ok()
    }

    /// A scalar value: a lifted literal, a client parameter, or `NULL` (only when `null_ok`),
    /// with at most one cast to a plain scalar type.
    fn scalar(&self, node: &Node, null: NullValue) -> Option<ValueRef> {
        match node.node.as_ref()? {
            NodeEnum::TypeCast(c) => {
                let cast = type_name(c.type_name.as_ref()?, Dimensions::Scalar)?;
                self.bare(c.arg.as_deref()?, Some(cast), null)
            }
            _ => self.bare(node, None, null),
        }
    }

    /// An array value for `= ANY (...)`: a client parameter or a lifted string literal, with at
    /// most one cast to an array type.
    fn array(&self, node: &Node) -> Option<ValueRef> {
        match node.node.as_ref()? {
            NodeEnum::TypeCast(c) => {
                let cast = type_name(c.type_name.as_ref()?, Dimensions::Array)?;
                self.bare(c.arg.as_deref()?, Some(cast), NullValue::Refused)
            }
            _ => self.bare(node, None, NullValue::Refused),
        }
    }

    fn bare(&self, node: &Node, cast: Option<Arc<str>>, null: NullValue) -> Option<ValueRef> {
        match node.node.as_ref()? {
            NodeEnum::AConst(c) if c.isnull => (null == NullValue::Allowed).then_some(ValueRef::Null),
            // A constant PostgreSQL folded out of what the text spells differently (`-5` is one
            // constant at the minus sign, but the literal lifted is `5`) has no parameter at
            // its location.
            NodeEnum::AConst(c) => Some(ValueRef::Literal { index: self.at(c.location)?, cast }),
            NodeEnum::ParamRef(p) if p.number >= 1 => {
                Some(ValueRef::Client { number: u32::try_from(p.number).ok()?, cast })
            }
            _ => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NullValue {
    Allowed,
    Refused,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dimensions {
    Scalar,
    Array,
}

/// A cast's type name, when it is a plain name: no `SETOF`, `%TYPE` or type modifiers (which
/// can change a value: `'abcd'::varchar(3)` is `'abc'`), and array dimensions only for arrays.
fn type_name(t: &TypeName, dims: Dimensions) -> Option<Arc<str>> {
    if t.setof || t.pct_type || !t.typmods.is_empty() {
        return None;
    }
    let is_array = !t.array_bounds.is_empty();
    if is_array != (dims == Dimensions::Array) {
        return None;
    }
    let mut name = strings(&t.names)?.join(".");
    for _ in &t.array_bounds {
        name.push_str("[]");
    }
    Some(Arc::from(name))
}

/// The strings of a list of `String` nodes, or `None` when one is something else.
fn strings(nodes: &[Node]) -> Option<Vec<&str>> {
    nodes
        .iter()
        .map(|n| match n.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect()
}

/// The operator of an expression: bare or qualified with `pg_catalog`.
fn operator(name: &[Node]) -> Option<&str> {
    match strings(name)?.as_slice() {
        [op] | ["pg_catalog", op] => Some(op),
        _ => None,
    }
}

/// The fields of a bare column reference (`c`, `t.c`, `s.t.c`), without casts, subscripts,
/// `COLLATE` or `*`.
fn column_fields(node: &Node) -> Option<Vec<&str>> {
    match node.node.as_ref()? {
        NodeEnum::ColumnRef(c) => {
            let fields = strings(&c.fields)?;
            (1..=3).contains(&fields.len()).then_some(fields)
        }
        _ => None,
    }
}

/// What one top-level condition says about one column.
enum Bound {
    Points(Vec<ValueRef>),
    Elements(ValueRef),
    Lower(ValueRef, bool),
    Upper(ValueRef, bool),
    Between(ValueRef, ValueRef),
}

/// Which conditions to read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Forms {
    /// Points, arrays and ranges (reads).
    All,
    /// Points and arrays (writes).
    Points,
}

/// Reads one top-level condition as a bound on a column, with the column reference's fields.
fn condition<'n>(lit: &Literals<'_>, node: &'n Node, forms: Forms) -> Option<(Vec<&'n str>, Bound)> {
    let NodeEnum::AExpr(e) = node.node.as_ref()? else { return None };
    let kind = AExprKind::try_from(e.kind).ok()?;
    let op = operator(&e.name)?;
    let (lexpr, rexpr) = (e.lexpr.as_deref()?, e.rexpr.as_deref()?);
    match kind {
        AExprKind::AexprOp => {
            // `c op v` or `v op c`; the operator turns around with its operands.
            let (fields, value, op) = match (column_fields(lexpr), column_fields(rexpr)) {
                (Some(f), None) => (f, rexpr, op),
                (None, Some(f)) => (f, lexpr, flip(op)?),
                _ => return None,
            };
            // `c = NULL` is `c IS NULL` under `transform_null_equals`: no NULL here.
            let v = lit.scalar(value, NullValue::Refused)?;
            let bound = match op {
                "=" => Bound::Points(vec![v]),
                "<" => Bound::Upper(v, false),
                "<=" => Bound::Upper(v, true),
                ">" => Bound::Lower(v, false),
                ">=" => Bound::Lower(v, true),
                _ => return None,
            };
            if forms == Forms::Points && !matches!(bound, Bound::Points(_)) {
                return None;
            }
            Some((fields, bound))
        }
        AExprKind::AexprIn if op == "=" => {
            let NodeEnum::List(l) = rexpr.node.as_ref()? else { return None };
            let values =
                l.items.iter().map(|i| lit.scalar(i, NullValue::Allowed)).collect::<Option<Vec<_>>>()?;
            Some((column_fields(lexpr)?, Bound::Points(values)))
        }
        AExprKind::AexprOpAny if op == "=" => {
            let bound = match rexpr.node.as_ref()? {
                NodeEnum::AArrayExpr(a) => Bound::Points(
                    a.elements
                        .iter()
                        .map(|i| lit.scalar(i, NullValue::Allowed))
                        .collect::<Option<Vec<_>>>()?,
                ),
                _ => Bound::Elements(lit.array(rexpr)?),
            };
            Some((column_fields(lexpr)?, bound))
        }
        AExprKind::AexprBetween if forms == Forms::All => {
            let NodeEnum::List(l) = rexpr.node.as_ref()? else { return None };
            let [low, high] = l.items.as_slice() else { return None };
            let low = lit.scalar(low, NullValue::Refused)?;
            let high = lit.scalar(high, NullValue::Refused)?;
            Some((column_fields(lexpr)?, Bound::Between(low, high)))
        }
        _ => None,
    }
}

/// The operator that holds with the operands swapped.
fn flip(op: &str) -> Option<&'static str> {
    Some(match op {
        "=" => "=",
        "<" => ">",
        "<=" => ">=",
        ">" => "<",
        ">=" => "<=",
        _ => return None,
    })
}

/// The top-level `AND` terms of a condition.
fn conjuncts<'n>(node: &'n Node, out: &mut Vec<&'n Node>, depth: u32) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match node.node.as_ref() {
        Some(NodeEnum::BoolExpr(b)) if b.boolop == BoolExprType::AndExpr as i32 => {
            b.args.iter().all(|a| conjuncts(a, out, depth + 1))
        }
        _ => {
            out.push(node);
            true
        }
    }
}

/// The bounds found on one column of one entry, and the one reported.
#[derive(Default)]
struct ColumnBounds {
    points: Option<Vec<ValueRef>>,
    elements: Option<ValueRef>,
    between: Option<(ValueRef, ValueRef)>,
    lower: Option<(ValueRef, bool)>,
    upper: Option<(ValueRef, bool)>,
}

impl ColumnBounds {
    fn add(&mut self, bound: Bound) {
        match bound {
            // Each condition alone covers the rows; keep the narrowest of each kind.
            Bound::Points(p) => {
                if self.points.as_ref().is_none_or(|q| p.len() < q.len()) {
                    self.points = Some(p);
                }
            }
            Bound::Elements(v) => {
                self.elements.get_or_insert(v);
            }
            Bound::Between(l, h) => {
                self.between.get_or_insert((l, h));
            }
            Bound::Lower(v, inclusive) => {
                self.lower.get_or_insert((v, inclusive));
            }
            Bound::Upper(v, inclusive) => {
                self.upper.get_or_insert((v, inclusive));
            }
        }
    }

    /// The restriction reported: explicit points before an array, before a range.
    fn into_values(self) -> Option<RestrictedValues> {
        if let Some(p) = self.points {
            return Some(RestrictedValues::Points(p));
        }
        if let Some(v) = self.elements {
            return Some(RestrictedValues::Elements(v));
        }
        if let Some((low, high)) = self.between {
            return Some(RestrictedValues::Range { low, low_inclusive: true, high, high_inclusive: true });
        }
        match (self.lower, self.upper) {
            (Some((low, low_inclusive)), Some((high, high_inclusive))) => {
                Some(RestrictedValues::Range { low, low_inclusive, high, high_inclusive })
            }
            _ => None,
        }
    }
}

/// A `FROM` item of one `SELECT` level (or the target of a write), as column references see it.
struct Entry<'a> {
    /// The name a qualified column reference uses (the alias, else the relation or function
    /// name); `None` when not known, which then answers to any qualifier.
    refname: Option<&'a str>,
    /// The table this entry reads, when restrictions on it may be reported.
    table: Option<&'a RangeVar>,
}

/// The entry a column reference resolves to at its level, when that is certain: `Some(index)`
/// for a table entry, `None` when the reference is ambiguous, belongs to an entry restrictions
/// are not reported for, or to another level.
fn resolve(entries: &[Entry<'_>], fields: &[&str]) -> Option<usize> {
    let candidates: Vec<usize> = match fields {
        [_] => (0..entries.len()).collect(),
        [q, _] => (0..entries.len()).filter(|&i| entries[i].refname.is_none_or(|r| r == *q)).collect(),
        [s, q, _] => (0..entries.len())
            .filter(|&i| {
                let e = &entries[i];
                e.refname.is_none()
                    || e.table.is_some_and(|rv| {
                        rv.alias.is_none()
                            && rv.relname == *q
                            && (rv.schemaname.is_empty() || rv.schemaname == *s)
                    })
            })
            .collect(),
        _ => return None,
    };
    match candidates.as_slice() {
        [one] if entries[*one].table.is_some() => Some(*one),
        _ => None,
    }
}

/// The restrictions of one conjunction over `entries`, per entry and column, in order.
fn restrict_entries(
    lit: &Literals<'_>,
    entries: &[Entry<'_>],
    where_clause: Option<&Node>,
    forms: Forms,
) -> Option<Vec<(usize, Arc<str>, RestrictedValues)>> {
    let mut terms = Vec::new();
    if let Some(w) = where_clause {
        if !conjuncts(w, &mut terms, 0) {
            return None;
        }
    }
    let mut found: Vec<(usize, &str, ColumnBounds)> = Vec::new();
    for term in terms {
        let Some((fields, bound)) = condition(lit, term, forms) else { continue };
        let Some(entry) = resolve(entries, &fields) else { continue };
        let Some(column) = fields.last().copied() else { continue };
        match found.iter_mut().find(|(e, c, _)| *e == entry && *c == column) {
            Some((_, _, b)) => b.add(bound),
            None => {
                let mut b = ColumnBounds::default();
                b.add(bound);
                found.push((entry, column, b));
            }
        }
    }
    Some(found.into_iter().filter_map(|(e, c, b)| Some((e, Arc::from(c), b.into_values()?))).collect())
}

fn qualified(rv: &RangeVar) -> TableName {
    if rv.schemaname.is_empty() {
        TableName::new(rv.relname.as_str())
    } else {
        TableName::new(format!("{}.{}", rv.schemaname, rv.relname))
    }
}
