//! Restrictions of a `SELECT`: each level's `FROM` entries, the top-level terms of its `WHERE`,
//! and the check that every reference to a relation is covered.

use std::collections::{HashMap, HashSet};

use pg_query::protobuf::{self, SelectStmt, SetOperation};
use pg_query::{Node, NodeEnum};

use super::{qualified, restrict_entries, strings, ColumnRestriction, Entry, Forms, Literals, MAX_DEPTH};

/// The name version units group a relation under: the text after the last dot of its
/// [`TableName`], so `s.t`, `t` and `other.t` count as one relation (as `strata` keys versions).
fn unit(relname: &str) -> &str {
    relname.rsplit_once('.').map_or(relname, |(_, n)| n)
}

/// A reported restriction before the check that every reference of its relation is covered.
struct Candidate {
    relname: String,
    location: i32,
    restriction: ColumnRestriction,
}

/// Finds the restrictions of every `SELECT` level of a statement.
struct ReadWalk<'l> {
    lit: &'l Literals<'l>,
    ctes: Vec<String>,
    candidates: Vec<Candidate>,
    depth: u32,
    too_deep: bool,
}

impl ReadWalk<'_> {
    fn enter(&mut self) -> bool {
        if self.depth >= MAX_DEPTH {
            self.too_deep = true;
            return false;
        }
        self.depth += 1;
        true
    }

    fn select(&mut self, s: &SelectStmt) {
        if !self.enter() {
            return;
        }
        let mark = self.ctes.len();
        if let Some(w) = &s.with_clause {
            self.with(w);
        }
        let setop = s.op != SetOperation::SetopNone as i32 && s.op != SetOperation::Undefined as i32;
        if setop {
            for branch in [&s.larg, &s.rarg].into_iter().flatten() {
                self.select(branch);
            }
        } else {
            self.level(s);
        }
        // Subqueries anywhere else in this level are levels of their own.
        for n in s.target_list.iter().chain(&s.group_clause).chain(&s.sort_clause).chain(&s.distinct_clause) {
            self.expr(n);
        }
        for n in s.window_clause.iter().chain(&s.values_lists) {
            self.expr(n);
        }
        for n in [&s.where_clause, &s.having_clause, &s.limit_offset, &s.limit_count].into_iter().flatten() {
            self.expr(n);
        }
        self.ctes.truncate(mark);
        self.depth -= 1;
    }

    fn with(&mut self, w: &protobuf::WithClause) {
        let ctes = w.ctes.iter().filter_map(|c| match c.node.as_ref() {
            Some(NodeEnum::CommonTableExpr(cte)) => Some(cte),
            _ => None,
        });
        if w.recursive {
            self.ctes.extend(ctes.clone().map(|c| c.ctename.clone()));
        }
        for cte in ctes {
            if let Some(q) = cte.ctequery.as_deref() {
                self.expr(q);
            }
            if !w.recursive {
                self.ctes.push(cte.ctename.clone());
            }
        }
    }

    /// One `SELECT` level: its `FROM` entries and the restrictions its `WHERE` puts on them.
    fn level(&mut self, s: &SelectStmt) {
        let mut entries = Vec::new();
        for item in &s.from_clause {
            self.range_item(item, &mut entries, Visibility::Visible);
        }
        let Some(found) = restrict_entries(self.lit, &entries, s.where_clause.as_deref(), Forms::All) else {
            self.too_deep = true;
            return;
        };
        for (e, column, values) in found {
            let Some(rv) = entries[e].table else { continue };
            self.candidates.push(Candidate {
                relname: rv.relname.clone(),
                location: rv.location,
                restriction: ColumnRestriction { table: qualified(rv), column, values },
            });
        }
    }

    fn range_item<'a>(&mut self, item: &'a Node, entries: &mut Vec<Entry<'a>>, vis: Visibility) {
        let Some(node) = item.node.as_ref() else { return };
        let alias = |a: &'a Option<protobuf::Alias>| a.as_ref().map(|a| a.aliasname.as_str());
        let entry = match node {
            NodeEnum::RangeVar(rv) => {
                let cte = rv.schemaname.is_empty() && self.ctes.contains(&rv.relname);
                // A column alias list renames the table's columns in an order only the catalog
                // knows; a location the walk cannot tell apart from another is never reported.
                let renamed = rv.alias.as_ref().is_some_and(|a| !a.colnames.is_empty());
                let plain = !cte && !renamed && rv.location >= 0 && vis == Visibility::Visible;
                Entry {
                    refname: Some(alias(&rv.alias).unwrap_or(rv.relname.as_str())),
                    table: plain.then_some(rv),
                }
            }
            NodeEnum::JoinExpr(j) => {
                // An aliased join hides the names inside it; its columns answer to the alias.
                let inner = if j.alias.is_some() { Visibility::Hidden } else { vis };
                let mut hidden = Vec::new();
                let target = if inner == Visibility::Hidden { &mut hidden } else { &mut *entries };
                for side in [&j.larg, &j.rarg].into_iter().flatten() {
                    self.range_item(side, target, inner);
                }
                if let Some(q) = j.quals.as_deref() {
                    self.expr(q);
                }
                if let Some(a) = &j.join_using_alias {
                    entries.push(Entry { refname: Some(a.aliasname.as_str()), table: None });
                }
                match &j.alias {
                    Some(a) => Entry { refname: Some(a.aliasname.as_str()), table: None },
                    None => return,
                }
            }
            NodeEnum::RangeSubselect(r) => {
                if let Some(q) = r.subquery.as_deref() {
                    self.expr(q);
                }
                Entry { refname: alias(&r.alias), table: None }
            }
            NodeEnum::RangeFunction(f) => {
                for item in &f.functions {
                    self.expr(item);
                }
                let name = match f.functions.as_slice() {
                    [only] if !f.is_rowsfrom => function_name(only),
                    _ => None,
                };
                Entry { refname: alias(&f.alias).or(name), table: None }
            }
            NodeEnum::RangeTableSample(r) => {
                let refname = match r.relation.as_deref().and_then(|n| n.node.as_ref()) {
                    Some(NodeEnum::RangeVar(rv)) => Some(alias(&rv.alias).unwrap_or(rv.relname.as_str())),
                    _ => None,
                };
                Entry { refname, table: None }
            }
            _ => Entry { refname: None, table: None },
        };
        entries.push(entry);
    }

    /// Looks for subqueries in an expression (each is a level of its own). What it does not
    /// look into only loses restrictions: the references there still count.
    fn expr(&mut self, node: &Node) {
        let Some(n) = node.node.as_ref() else { return };
        if !self.enter() {
            return;
        }
        match n {
            NodeEnum::SelectStmt(s) => self.select(s),
            NodeEnum::SubLink(s) => {
                self.opt(s.testexpr.as_deref());
                self.opt(s.subselect.as_deref());
            }
            NodeEnum::AExpr(e) => {
                self.opt(e.lexpr.as_deref());
                self.opt(e.rexpr.as_deref());
            }
            NodeEnum::BoolExpr(e) => self.list(&e.args),
            NodeEnum::FuncCall(f) => {
                self.list(&f.args);
                self.opt(f.agg_filter.as_deref());
            }
            NodeEnum::List(l) => self.list(&l.items),
            NodeEnum::ResTarget(r) => self.opt(r.val.as_deref()),
            NodeEnum::SortBy(s) => self.opt(s.node.as_deref()),
            NodeEnum::TypeCast(t) => self.opt(t.arg.as_deref()),
            NodeEnum::CaseExpr(c) => {
                self.opt(c.arg.as_deref());
                self.list(&c.args);
                self.opt(c.defresult.as_deref());
            }
            NodeEnum::CaseWhen(c) => {
                self.opt(c.expr.as_deref());
                self.opt(c.result.as_deref());
            }
            NodeEnum::CoalesceExpr(c) => self.list(&c.args),
            NodeEnum::NullTest(t) => self.opt(t.arg.as_deref()),
            NodeEnum::RowExpr(r) => self.list(&r.args),
            NodeEnum::AArrayExpr(a) => self.list(&a.elements),
            _ => {}
        }
        self.depth -= 1;
    }

    fn opt(&mut self, node: Option<&Node>) {
        if let Some(n) = node {
            self.expr(n);
        }
    }

    fn list(&mut self, nodes: &[Node]) {
        for n in nodes {
            self.expr(n);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Visibility {
    Visible,
    Hidden,
}

/// The name of the single function of a `FROM` function item, which names the item when it
/// has no alias.
fn function_name(item: &Node) -> Option<&str> {
    let call = match item.node.as_ref()? {
        NodeEnum::List(l) => l.items.first()?,
        _ => item,
    };
    match call.node.as_ref()? {
        NodeEnum::FuncCall(f) => strings(&f.funcname)?.last().copied(),
        _ => None,
    }
}

/// The restrictions of a `SELECT` statement that cover every reference to their relation.
///
/// `refs` are all relation references the statement's walk met (name and location), CTE
/// references included. A restriction on column `c` of relation `r` is kept only when every
/// reference to a relation with `r`'s unit name carries a restriction on `c`.
pub(crate) fn read_restrictions(
    stmt: &NodeEnum,
    lit: &Literals<'_>,
    refs: &[(String, i32)],
) -> Vec<ColumnRestriction> {
    let NodeEnum::SelectStmt(s) = stmt else { return Vec::new() };
    let mut walk = ReadWalk { lit, ctes: Vec::new(), candidates: Vec::new(), depth: 0, too_deep: false };
    walk.select(s);
    if walk.too_deep {
        return Vec::new();
    }
    let candidates = walk.candidates;
    // Which (relation, location, column) triples are restricted, and where each relation is
    // referenced.
    let restricted: HashSet<(&str, i32, &str)> =
        candidates.iter().map(|c| (unit(&c.relname), c.location, &*c.restriction.column)).collect();
    let mut references: HashMap<&str, Vec<i32>> = HashMap::new();
    for (name, location) in refs {
        references.entry(unit(name)).or_default().push(*location);
    }
    let mut verdicts: HashMap<(&str, &str), bool> = HashMap::new();
    let mut keep = Vec::with_capacity(candidates.len());
    for c in &candidates {
        let key = (unit(&c.relname), &*c.restriction.column);
        let covered = *verdicts.entry(key).or_insert_with(|| {
            references
                .get(key.0)
                .is_some_and(|locations| locations.iter().all(|l| restricted.contains(&(key.0, *l, key.1))))
        });
        keep.push(covered);
    }
    candidates.into_iter().zip(keep).filter(|(_, k)| *k).map(|(c, _)| c.restriction).collect()
}
