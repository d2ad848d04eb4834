//! What an `INSERT`, `UPDATE` or `DELETE` says about the rows it writes.

use std::sync::Arc;

use pg_query::protobuf::{self, OnConflictAction, OverridingKind, SetOperation};
use pg_query::{Node, NodeEnum};
use strata_core::TableName;

use super::{
    qualified, restrict_entries, Assignment, ColumnRestriction, Entry, Forms, Literals, NullValue,
    OnConflict, RestrictedValues, WriteKeys,
};
use crate::analysis::WriteEffect;

/// What an `INSERT`, `UPDATE` or `DELETE` says about the rows it writes (see [`WriteKeys`]).
pub(crate) fn write_keys(stmt: &NodeEnum, lit: &Literals<'_>, writes: &WriteEffect) -> Option<WriteKeys> {
    let (rv, with) = match stmt {
        NodeEnum::InsertStmt(s) => (s.relation.as_ref()?, &s.with_clause),
        NodeEnum::UpdateStmt(s) if s.from_clause.is_empty() => (s.relation.as_ref()?, &s.with_clause),
        NodeEnum::DeleteStmt(s) if s.using_clause.is_empty() => (s.relation.as_ref()?, &s.with_clause),
        _ => return None,
    };
    let table = qualified(rv);
    // Exactly the target is written: no data-modifying WITH, no function that may write.
    if !matches!(writes, WriteEffect::Tables(t) if t.as_slice() == std::slice::from_ref(&table)) {
        return None;
    }
    if with.as_ref().is_some_and(modifies_data) {
        return None;
    }
    let refname = rv.alias.as_ref().map_or(rv.relname.as_str(), |a| a.aliasname.as_str());
    let mut keys = WriteKeys {
        table: table.clone(),
        restrictions: Vec::new(),
        assignments: Vec::new(),
        on_conflict: None,
        returning: Vec::new(),
        returns_all_columns: false,
    };
    let entries = [Entry { refname: Some(refname), table: Some(rv) }];
    let from_where = |w: Option<&Node>| -> Vec<ColumnRestriction> {
        restrict_entries(lit, &entries, w, Forms::Points)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, column, values)| ColumnRestriction { table: table.clone(), column, values })
            .collect()
    };
    match stmt {
        NodeEnum::InsertStmt(s) => {
            // `OVERRIDING USER VALUE` replaces the values given for identity columns with ones
            // from their sequences.
            if s.r#override != OverridingKind::OverridingUserValue as i32 {
                keys.restrictions = inserted(lit, &table, &s.cols, s.select_stmt.as_deref());
            }
            if let Some(oc) = &s.on_conflict_clause {
                keys.on_conflict = match OnConflictAction::try_from(oc.action).ok()? {
                    OnConflictAction::OnconflictNothing => Some(OnConflict::DoNothing),
                    OnConflictAction::OnconflictUpdate => {
                        keys.assignments = assignments(lit, &oc.target_list);
                        Some(OnConflict::DoUpdate { conflict_columns: conflict_columns(oc.infer.as_deref()) })
                    }
                    _ => None,
                };
            }
            if let Some(r) = &s.returning_clause {
                returning(&mut keys, refname, &r.exprs);
            }
        }
        NodeEnum::UpdateStmt(s) => {
            keys.restrictions = from_where(s.where_clause.as_deref());
            keys.assignments = assignments(lit, &s.target_list);
        }
        NodeEnum::DeleteStmt(s) => keys.restrictions = from_where(s.where_clause.as_deref()),
        _ => return None,
    }
    Some(keys)
}

fn modifies_data(w: &protobuf::WithClause) -> bool {
    w.ctes.iter().any(|c| match c.node.as_ref() {
        Some(NodeEnum::CommonTableExpr(cte)) => {
            !matches!(cte.ctequery.as_deref().and_then(|q| q.node.as_ref()), Some(NodeEnum::SelectStmt(_)))
        }
        _ => true,
    })
}

/// The values every row of `INSERT ... VALUES` gives each listed column.
fn inserted(
    lit: &Literals<'_>,
    table: &TableName,
    cols: &[Node],
    source: Option<&Node>,
) -> Vec<ColumnRestriction> {
    let Some(NodeEnum::SelectStmt(s)) = source.and_then(|n| n.node.as_ref()) else { return Vec::new() };
    if s.values_lists.is_empty() || s.op != SetOperation::SetopNone as i32 {
        return Vec::new();
    }
    let mut rows = Vec::with_capacity(s.values_lists.len());
    for row in &s.values_lists {
        match row.node.as_ref() {
            Some(NodeEnum::List(l)) if l.items.len() == cols.len() => rows.push(&l.items),
            _ => return Vec::new(),
        }
    }
    let mut out = Vec::new();
    for (i, col) in cols.iter().enumerate() {
        let Some(NodeEnum::ResTarget(r)) = col.node.as_ref() else { continue };
        if !r.indirection.is_empty() || out.iter().any(|c: &ColumnRestriction| *c.column == *r.name) {
            continue;
        }
        let values =
            rows.iter().map(|row| lit.scalar(&row[i], NullValue::Allowed)).collect::<Option<Vec<_>>>();
        if let Some(values) = values {
            out.push(ColumnRestriction {
                table: table.clone(),
                column: Arc::from(r.name.as_str()),
                values: RestrictedValues::Points(values),
            });
        }
    }
    out
}

/// The columns a `SET` list assigns, with the value when it is a literal or parameter.
fn assignments(lit: &Literals<'_>, targets: &[Node]) -> Vec<Assignment> {
    targets
        .iter()
        .filter_map(|t| match t.node.as_ref() {
            Some(NodeEnum::ResTarget(r)) => {
                let value = match r.val.as_deref() {
                    Some(v) if r.indirection.is_empty() => lit.scalar(v, NullValue::Allowed),
                    _ => None,
                };
                Some(Assignment { column: Arc::from(r.name.as_str()), value })
            }
            _ => None,
        })
        .collect()
}

fn conflict_columns(infer: Option<&protobuf::InferClause>) -> Option<Vec<Arc<str>>> {
    let infer = infer?;
    if !infer.conname.is_empty() || infer.index_elems.is_empty() {
        return None;
    }
    infer
        .index_elems
        .iter()
        .map(|e| match e.node.as_ref() {
            Some(NodeEnum::IndexElem(i)) if i.expr.is_none() && !i.name.is_empty() => {
                Some(Arc::from(i.name.as_str()))
            }
            _ => None,
        })
        .collect()
}

fn returning(keys: &mut WriteKeys, refname: &str, exprs: &[Node]) {
    for e in exprs {
        let Some(NodeEnum::ResTarget(r)) = e.node.as_ref() else { continue };
        let Some(NodeEnum::ColumnRef(c)) = r.val.as_deref().and_then(|v| v.node.as_ref()) else { continue };
        let star = c.fields.last().is_some_and(|f| matches!(f.node, Some(NodeEnum::AStar(_))));
        let qualifier_ok = match c.fields.len() {
            1 => true,
            2 => matches!(c.fields[0].node.as_ref(), Some(NodeEnum::String(s)) if s.sval == refname),
            _ => false,
        };
        if !qualifier_ok {
            continue;
        }
        if star {
            keys.returns_all_columns = true;
        } else if let Some(NodeEnum::String(s)) = c.fields.last().and_then(|f| f.node.as_ref()) {
            keys.returning.push(Arc::from(s.sval.as_str()));
        }
    }
}
