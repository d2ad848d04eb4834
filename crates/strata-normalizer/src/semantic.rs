//! What a semantic match must keep equal besides the text it embeds.
//!
//! A similar question may reuse an answer only when the answer is the one the statement asked
//! would get, and similarity cannot tell: with the same tables and literals, `count(DISTINCT qty)`
//! is not `count(qty)`, `price = qty` not `price = id`, `ORDER BY price DESC` not `ASC`, `NOT
//! active` not `active`, `price = 56 AND qty = 4` not `price = 4 AND qty = 56`, and an intent
//! ("top products by price", "bottom products by price") does not say which one the statement
//! computes. So a semantic match needs the same statement up to how it is written, with or
//! without an intent.
//!
//! [`semantic_form`] reads a text into a [`SemanticForm`] with PostgreSQL's parser and
//! deparser: spacing, case, comments and optional keywords disappear in the deparsed text, the
//! operands of `=` and `<>` are put in one order, `<`/`>` comparisons turned one way, the terms
//! of the top-level `AND` sorted, and a one-value `IN` read as `=`. Nothing else is assumed
//! equal: two statements that differ in any other way never match, whatever their similarity.

use pg_query::protobuf::{self, AExprKind, BoolExprType, ResTarget, SelectStmt};
use pg_query::{Node, NodeEnum};

/// What a stored answer and a semantic lookup must agree on (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemanticForm {
    canonical: String,
}

impl SemanticForm {
    /// The whole statement in canonical form (not SQL: the statement without its `WHERE`, then
    /// the sorted terms of the `WHERE`), written literals included; the client's parameters
    /// stay `$n`, so a match also needs equal bound values.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }
}

/// Reads a text's [`SemanticForm`]: `None` unless it is one `SELECT` that parses and deparses
/// (a caller then does not consult a semantic tier for it at all).
pub fn semantic_form(sql: &str) -> Option<SemanticForm> {
    let parsed = pg_query::parse(sql, 0).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else { return None };
    let Some(NodeEnum::SelectStmt(select)) = raw.stmt.as_ref()?.node.as_ref() else { return None };
    let select: &SelectStmt = select;
    let plain = select.op() == protobuf::SetOperation::SetopNone && select.values_lists.is_empty();
    let mut conditions = Vec::new();
    let mut rest = select.clone();
    if plain {
        if let Some(where_clause) = rest.where_clause.take() {
            let mut terms = Vec::new();
            conjuncts(&where_clause, &mut terms);
            for term in terms {
                conditions.push(condition(select, term)?);
            }
        }
    }
    conditions.sort_unstable();
    let mut canonical = deparse(&rest)?;
    if !conditions.is_empty() {
        // After a character no deparsed statement holds, so no other statement reads the same.
        canonical.push_str(" \u{1}WHERE ");
        canonical.push_str(&conditions.join(" AND "));
    }
    Some(SemanticForm { canonical })
}

/// A copy of `select` with every clause removed (its enum fields kept valid).
fn emptied(select: &SelectStmt) -> SelectStmt {
    SelectStmt { op: select.op, limit_option: select.limit_option, ..SelectStmt::default() }
}

fn deparse(select: &SelectStmt) -> Option<String> {
    let node = Node { node: Some(NodeEnum::SelectStmt(Box::new(select.clone()))) };
    node.deparse(pg_query::DeparseOptions::default()).ok()
}

/// An expression deparsed alone (as the one column of a `SELECT` without `FROM`).
fn expression(base: &SelectStmt, node: &Node) -> Option<String> {
    let mut select = emptied(base);
    select.target_list = vec![Node {
        node: Some(NodeEnum::ResTarget(Box::new(ResTarget {
            val: Some(Box::new(node.clone())),
            ..ResTarget::default()
        }))),
    }];
    deparse(&select)?.strip_prefix("SELECT ").map(str::to_owned)
}

/// The terms of a top-level `AND`, nested `AND`s flattened.
fn conjuncts<'a>(node: &'a Node, out: &mut Vec<&'a Node>) {
    match node.node.as_ref() {
        Some(NodeEnum::BoolExpr(b)) if b.boolop() == BoolExprType::AndExpr => {
            for arg in &b.args {
                conjuncts(arg, out);
            }
        }
        _ => out.push(node),
    }
}

/// The operator of a binary `A_Expr` when it is a single unqualified name.
fn operator(e: &protobuf::AExpr) -> Option<&str> {
    match e.name.as_slice() {
        [n] => match n.node.as_ref()? {
            NodeEnum::String(s) => Some(s.sval.as_str()),
            _ => None,
        },
        _ => None,
    }
}

/// The operator read from the other side (`a < b` is `b > a`); `None` when it has none.
fn flipped(op: &str) -> Option<&'static str> {
    Some(match op {
        "=" => "=",
        "<>" | "!=" => "<>",
        "<" => ">",
        ">" => "<",
        "<=" => ">=",
        ">=" => "<=",
        _ => return None,
    })
}

/// A term of the top-level `AND` in canonical form.
fn condition(base: &SelectStmt, term: &Node) -> Option<String> {
    let Some(NodeEnum::AExpr(e)) = term.node.as_ref() else { return expression(base, term) };
    let (Some(lexpr), Some(rexpr)) = (e.lexpr.as_deref(), e.rexpr.as_deref()) else {
        return expression(base, term);
    };
    match (e.kind(), operator(e)) {
        (AExprKind::AexprOp, Some(op)) if flipped(op).is_some() => {
            let op = if op == "!=" { "<>" } else { op };
            let (l, r) = (expression(base, lexpr)?, expression(base, rexpr)?);
            // One order for both ways of writing it: the smaller text first.
            Some(if l <= r { format!("{l} {op} {r}") } else { format!("{r} {} {l}", flipped(op)?) })
        }
        (AExprKind::AexprIn, Some(op @ ("=" | "<>"))) => {
            let Some(NodeEnum::List(list)) = rexpr.node.as_ref() else { return expression(base, term) };
            if let ([item], "=") = (list.items.as_slice(), op) {
                // `x IN (v)` is `x = v`: read it as that.
                let term = Node {
                    node: Some(NodeEnum::AExpr(Box::new(protobuf::AExpr {
                        kind: AExprKind::AexprOp as i32,
                        name: e.name.clone(),
                        lexpr: e.lexpr.clone(),
                        rexpr: Some(Box::new(item.clone())),
                        ..protobuf::AExpr::default()
                    }))),
                };
                return condition(base, &term);
            }
            let subject = expression(base, lexpr)?;
            let mut items = list.items.iter().map(|i| expression(base, i)).collect::<Option<Vec<_>>>()?;
            items.sort_unstable();
            items.dedup();
            let word = if op == "=" { "IN" } else { "NOT IN" };
            Some(format!("{subject} {word} ({})", items.join(", ")))
        }
        _ => expression(base, term),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(sql: &str) -> SemanticForm {
        semantic_form(sql).unwrap_or_else(|| panic!("no semantic form for {sql}"))
    }

    #[test]
    fn ways_of_writing_one_statement_share_a_form() {
        let a = form("SELECT answer FROM faq WHERE topic = 'refunds' AND id > 2 AND x IN (3, 1) ORDER BY id");
        for same in [
            "select answer\n  from FAQ where 'refunds' = topic and 2 < id and x in (1, 3, 1) order by id",
            "/* strata: semantic */ SELECT answer FROM faq WHERE x IN (1, 3) AND (id > 2) AND topic IN ('refunds') ORDER BY id",
        ] {
            assert_eq!(form(same), a, "{same}");
        }
        assert_eq!(
            form("SELECT answer FROM faq WHERE $1 = topic"),
            form("SELECT answer FROM faq WHERE topic = $1")
        );
    }

    #[test]
    fn statements_that_compute_something_else_differ() {
        let pairs = [
            ("SELECT count(DISTINCT qty) FROM prod", "SELECT count(qty) FROM prod"),
            (
                "SELECT cat, count(*) FROM prod GROUP BY cat",
                "SELECT active, count(*) FROM prod GROUP BY active",
            ),
            ("SELECT count(*) FROM prod WHERE price = qty", "SELECT count(*) FROM prod WHERE price = id"),
            (
                "SELECT count(*) FROM prod WHERE cat = 'a'",
                "SELECT count(*) FROM prod WHERE cat = 'a' IS FALSE",
            ),
            ("SELECT count(*) FROM prod WHERE price > qty", "SELECT count(*) FROM prod WHERE qty > price"),
            ("SELECT count(*) FROM prod WHERE active", "SELECT count(*) FROM prod WHERE NOT active"),
            ("SELECT a, b FROM t", "SELECT b, a FROM t"),
            ("SELECT name FROM users WHERE id = 1", "SELECT email FROM users WHERE id = 1"),
            ("SELECT count(*) FROM t", "SELECT count(*) AS n FROM t"),
            ("SELECT a FROM t WHERE x = 1 OR y = 2", "SELECT a FROM t WHERE x = 1 AND y = 2"),
            ("SELECT a FROM t ORDER BY a LIMIT 3", "SELECT a FROM t ORDER BY a DESC LIMIT 3"),
            ("SELECT a FROM t WHERE x IN (1, 2)", "SELECT a FROM t WHERE x NOT IN (1, 2)"),
            ("SELECT a FROM t WHERE x BETWEEN 1 AND 3", "SELECT a FROM t WHERE x BETWEEN 3 AND 1"),
            (
                "SELECT count(*) FROM prod WHERE price = 56 AND qty = 4",
                "SELECT count(*) FROM prod WHERE price = 4 AND qty = 56",
            ),
            ("SELECT a FROM t ORDER BY a LIMIT 5 OFFSET 10", "SELECT a FROM t ORDER BY a LIMIT 10 OFFSET 5"),
            ("SELECT substr(name, 1, 3) FROM t", "SELECT substr(name, 3, 1) FROM t"),
            (
                "SELECT a FROM t WHERE b = 1 AND c IN (SELECT c FROM u WHERE d = 2)",
                "SELECT a FROM t WHERE b = 2 AND c IN (SELECT c FROM u WHERE d = 1)",
            ),
            (
                "SELECT g FROM t GROUP BY g HAVING count(*) > 3 AND sum(x) < 7",
                "SELECT g FROM t GROUP BY g HAVING count(*) > 7 AND sum(x) < 3",
            ),
            ("SELECT a FROM t WHERE b = $1 AND c = $2", "SELECT a FROM t WHERE b = $2 AND c = $1"),
        ];
        for (a, b) in pairs {
            assert_ne!(form(a), form(b), "{a} / {b}");
        }
    }

    #[test]
    fn only_single_selects_have_a_form() {
        for sql in ["SELECT 1; SELECT 2", "UPDATE t SET a = 1", "SELEC 1", ""] {
            assert!(semantic_form(sql).is_none(), "{sql}");
        }
        for sql in ["VALUES (1)", "SELECT a FROM t UNION SELECT b FROM u", "TABLE t"] {
            assert!(semantic_form(sql).is_some(), "{sql}");
        }
    }
}
