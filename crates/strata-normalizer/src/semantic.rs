//! What a semantic match must keep equal besides the text it embeds.
//!
//! A similar question may reuse an answer only when the answer fits the question asked: the same
//! columns (a client that asked for `active, count(*)` must never get a one-column answer), and
//! each literal in the same place (`price = 56 AND qty = 4` is not `price = 4 AND qty = 56`,
//! though the literals are the same multiset). Without an intent the embedded text is the
//! statement itself, and two statements with the same tables and literals can still differ in
//! what they compute (`count(DISTINCT qty)` against `count(qty)`, `price = qty` against
//! `price = id`), so the whole statement must be the same up to how it is written.
//!
//! [`semantic_form`] reads a text into a [`SemanticForm`] with PostgreSQL's parser and
//! deparser: spacing, case, comments and optional keywords disappear in the deparsed text, the
//! operands of `=` and `<>` are put in one order, `<`/`>` comparisons turned one way, the terms
//! of the top-level `AND` sorted, and a one-value `IN` read as `=`. Nothing else is assumed
//! equal: two statements that differ in any other way never match, whatever their similarity.

use pg_query::protobuf::{self, AExprKind, BoolExprType, ResTarget, SelectStmt};
use pg_query::{Node, NodeEnum, NodeRef};

/// What a stored answer and a semantic lookup must agree on (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemanticForm {
    shape: String,
    canonical: String,
    bindings: Vec<Binding>,
}

/// A literal or parameter and its place in the statement: `3 price =` with `56` (compared with
/// `price`, three levels down the parse tree), `2 LIMIT` with `10`, `4 round(#1)` with `2`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Binding {
    /// The depth in the parse tree, then the expression and operator, as deparsed (`price =`,
    /// `lower(name) <`, `id IN`), the function and argument (`round(#1)`), or `LIMIT`/`OFFSET`.
    pub context: String,
    /// The value it is compared with.
    pub value: BoundValue,
}

/// A value in a [`Binding`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BoundValue {
    /// A literal, as deparsed (`56`, `'refunds'`, `'5'::int4`).
    Literal(String),
    /// The client's parameter `$n`: its bound value is the literal.
    Param(u32),
}

impl SemanticForm {
    /// The answer's columns: the `SELECT` list (and `DISTINCT`) deparsed, or the whole
    /// canonical statement for a set operation or `VALUES`.
    pub fn shape(&self) -> &str {
        &self.shape
    }

    /// The whole statement in canonical form (not SQL: the statement without its `WHERE`, then
    /// the sorted terms of the `WHERE`), written literals included; the client's parameters
    /// stay `$n`, so a match also needs equal bound values.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Each literal and parameter with its place (what it is compared with, the function it is
    /// passed to, `LIMIT` or `OFFSET`, and how deep in the statement), sorted.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
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
    let mut bindings = Vec::new();
    let mut rest = select.clone();
    if plain {
        if let Some(where_clause) = rest.where_clause.take() {
            let mut terms = Vec::new();
            conjuncts(&where_clause, &mut terms);
            for term in terms {
                conditions.push(condition(select, term, &mut Vec::new())?);
            }
        }
    }
    conditions.sort_unstable();
    // Every comparison with a literal, wherever it is (a subquery, HAVING, a join), every
    // LIMIT and OFFSET, and every literal argument of a function, each with its place: the
    // depth in the tree, what it is compared with or passed to.
    for (node, depth, _, _) in parsed.protobuf.nodes() {
        let start = bindings.len();
        match node {
            NodeRef::AExpr(e) => {
                let term = Node { node: Some(NodeEnum::AExpr(Box::new(e.clone()))) };
                condition(select, &term, &mut bindings)?;
            }
            NodeRef::SelectStmt(s) => {
                for (word, n) in [("LIMIT", &s.limit_count), ("OFFSET", &s.limit_offset)] {
                    if let Some(value) = n.as_deref().and_then(|n| bound_value(select, n)) {
                        bindings.push(Binding { context: word.to_owned(), value });
                    }
                }
            }
            NodeRef::FuncCall(f) => {
                let name: Vec<&str> = f
                    .funcname
                    .iter()
                    .filter_map(|n| match n.node.as_ref() {
                        Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                        _ => None,
                    })
                    .collect();
                for (i, arg) in f.args.iter().enumerate() {
                    if let Some(value) = bound_value(select, arg) {
                        bindings.push(Binding { context: format!("{}(#{i})", name.join(".")), value });
                    }
                }
            }
            _ => {}
        }
        for b in &mut bindings[start..] {
            b.context = format!("{depth} {}", b.context);
        }
    }
    bindings.sort_unstable();
    let mut canonical = deparse(&rest)?;
    if !conditions.is_empty() {
        // After a character no deparsed statement holds, so no other statement reads the same.
        canonical.push_str(" \u{1}WHERE ");
        canonical.push_str(&conditions.join(" AND "));
    }
    let shape = if plain {
        let mut columns = emptied(select);
        columns.target_list = select.target_list.clone();
        columns.distinct_clause = select.distinct_clause.clone();
        deparse(&columns)?
    } else {
        canonical.clone()
    };
    Some(SemanticForm { shape, canonical, bindings })
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

/// A literal or a client parameter (possibly cast), as a [`BoundValue`].
fn bound_value(base: &SelectStmt, node: &Node) -> Option<BoundValue> {
    match node.node.as_ref()? {
        NodeEnum::ParamRef(p) => u32::try_from(p.number).ok().map(BoundValue::Param),
        NodeEnum::AConst(_) => expression(base, node).map(BoundValue::Literal),
        NodeEnum::TypeCast(c)
            if matches!(c.arg.as_deref().and_then(|a| a.node.as_ref()), Some(NodeEnum::AConst(_))) =>
        {
            expression(base, node).map(BoundValue::Literal)
        }
        _ => None,
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

/// An expression in canonical form (a term of the top-level `AND`), recording its bindings.
fn condition(base: &SelectStmt, term: &Node, bindings: &mut Vec<Binding>) -> Option<String> {
    let Some(NodeEnum::AExpr(e)) = term.node.as_ref() else { return expression(base, term) };
    let (Some(lexpr), Some(rexpr)) = (e.lexpr.as_deref(), e.rexpr.as_deref()) else {
        return expression(base, term);
    };
    match (e.kind(), operator(e)) {
        (AExprKind::AexprOp, Some(op)) if flipped(op).is_some() => {
            let op = if op == "!=" { "<>" } else { op };
            let (l, r) = (expression(base, lexpr)?, expression(base, rexpr)?);
            let other = flipped(op)?;
            // One order for both ways of writing it: the smaller text first.
            let (first, op, second, first_node, second_node) =
                if l <= r { (l, op, r, lexpr, rexpr) } else { (r, other, l, rexpr, lexpr) };
            match (bound_value(base, first_node), bound_value(base, second_node)) {
                (None, Some(value)) => bindings.push(Binding { context: format!("{first} {op}"), value }),
                (Some(value), None) => {
                    bindings.push(Binding { context: format!("{second} {}", flipped(op)?), value })
                }
                _ => {}
            }
            Some(format!("{first} {op} {second}"))
        }
        (AExprKind::AexprIn, Some(op @ ("=" | "<>"))) => {
            let Some(NodeEnum::List(list)) = rexpr.node.as_ref() else { return expression(base, term) };
            let subject = expression(base, lexpr)?;
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
                return condition(base, &term, bindings);
            }
            let mut items = list.items.iter().map(|i| expression(base, i)).collect::<Option<Vec<_>>>()?;
            let context = if op == "=" { format!("{subject} IN") } else { format!("{subject} NOT IN") };
            for item in &list.items {
                if let Some(value) = bound_value(base, item) {
                    bindings.push(Binding { context: context.clone(), value });
                }
            }
            items.sort_unstable();
            items.dedup();
            Some(format!("{context} ({})", items.join(", ")))
        }
        (AExprKind::AexprBetween | AExprKind::AexprNotBetween, _) => {
            let Some(NodeEnum::List(list)) = rexpr.node.as_ref() else { return expression(base, term) };
            let subject = expression(base, lexpr)?;
            let word = if e.kind() == AExprKind::AexprBetween { "BETWEEN" } else { "NOT BETWEEN" };
            for (bound, item) in ["low", "high"].iter().zip(&list.items) {
                if let Some(value) = bound_value(base, item) {
                    bindings.push(Binding { context: format!("{subject} {word} {bound}"), value });
                }
            }
            expression(base, term)
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
        let a = form("SELECT answer FROM faq WHERE topic = 'refunds' AND id > 2 ORDER BY id");
        for same in [
            "select answer\n  from FAQ where 'refunds' = topic and 2 < id order by id",
            "/* strata: semantic */ SELECT answer FROM faq WHERE (id > 2) AND topic IN ('refunds') ORDER BY id",
        ] {
            assert_eq!(form(same), a, "{same}");
        }
        assert_eq!(a.shape(), "SELECT answer");
        assert_eq!(
            a.bindings(),
            [
                Binding { context: "3 id >".into(), value: BoundValue::Literal("2".into()) },
                Binding { context: "3 topic =".into(), value: BoundValue::Literal("'refunds'".into()) },
            ]
        );
        let p = form("SELECT answer FROM faq WHERE $1 = topic");
        assert_eq!(p.bindings(), [Binding { context: "2 topic =".into(), value: BoundValue::Param(1) }]);
        assert_eq!(p, form("SELECT answer FROM faq WHERE topic = $1"));
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
            ("SELECT a, b FROM t", "SELECT b, a FROM t"),
            ("SELECT a FROM t WHERE x = 1 OR y = 2", "SELECT a FROM t WHERE x = 1 AND y = 2"),
            ("SELECT a FROM t ORDER BY a", "SELECT a FROM t ORDER BY a DESC"),
            ("SELECT a FROM t WHERE x IN (1, 2)", "SELECT a FROM t WHERE x NOT IN (1, 2)"),
            ("SELECT a FROM t WHERE x BETWEEN 1 AND 3", "SELECT a FROM t WHERE x BETWEEN 3 AND 1"),
        ];
        for (a, b) in pairs {
            assert_ne!(form(a).canonical(), form(b).canonical(), "{a} / {b}");
        }
        // The same literals in other places: other bindings.
        let (a, b) = (
            form("SELECT count(*) FROM prod WHERE price = 56 AND qty = 4"),
            form("SELECT count(*) FROM prod WHERE price = 4 AND qty = 56"),
        );
        assert_eq!(a.shape(), b.shape());
        assert_ne!(a.bindings(), b.bindings());
        // Elsewhere too: LIMIT and OFFSET, function arguments, subqueries, HAVING.
        for (a, b) in [
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
        ] {
            assert_ne!(form(a).bindings(), form(b).bindings(), "{a} / {b}");
        }
        // Other columns: another shape.
        assert_ne!(
            form("SELECT name FROM users WHERE id = 1").shape(),
            form("SELECT email FROM users WHERE id = 1").shape()
        );
        assert_ne!(form("SELECT count(*) FROM t").shape(), form("SELECT count(*) AS n FROM t").shape());
    }

    #[test]
    fn only_single_selects_have_a_form() {
        for sql in ["SELECT 1; SELECT 2", "UPDATE t SET a = 1", "SELEC 1", "", "VALUES (1)"] {
            let f = semantic_form(sql);
            if sql == "VALUES (1)" {
                // A VALUES list is a SELECT: its shape is the whole statement.
                let f = f.unwrap_or_else(|| panic!("{sql}"));
                assert_eq!(f.shape(), f.canonical());
            } else {
                assert!(f.is_none(), "{sql}: {f:?}");
            }
        }
        let u = form("SELECT a FROM t UNION SELECT b FROM u");
        assert_eq!(u.shape(), u.canonical());
    }
}
