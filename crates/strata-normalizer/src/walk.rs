//! A walk over pg_query's parse tree: statement kind, tables read and written, functions called,
//! and every reason a statement may not be cached.
//!
//! The walk knows the node types that occur in queries. When it meets one it does not know
//! inside a statement, it does not guess: the statement becomes "not cacheable: unsupported
//! construct", its write effect unknown and its session effects include server code, so a
//! missed table can never serve stale data. It also collects the statement's session effects
//! (see `session.rs`).

use std::fmt::{self, Write as _};
use std::sync::Arc;

use pg_query::protobuf::{self, DropBehavior, ObjectType, RangeVar, SelectStmt, SetOperation, WithClause};
use pg_query::{Node, NodeEnum};
use strata_core::TableName;

use crate::analysis::{NotCacheable, SessionEffect, StatementKind, WriteEffect};
use crate::config::{CatalogPolicy, NormalizerConfig, Volatility, KNOWN_VOLATILE_READONLY};
use crate::session::{self, Effects, NO_POSITION};

/// The operator names PostgreSQL 15 ships in `pg_catalog` (`SELECT DISTINCT oprname FROM
/// pg_operator WHERE oprnamespace = 'pg_catalog'::regnamespace`).
const BUILTIN_OPERATORS: &[&str] = &[
    "!!", "!~", "!~*", "!~~", "!~~*", "#", "##", "#-", "#>", "#>>", "%", "&", "&&", "&<", "&<|", "&>", "*",
    "*<", "*<=", "*<>", "*=", "*>", "*>=", "+", "-", "->", "->>", "-|-", "/", "<", "<->", "<<", "<<=", "<<|",
    "<=", "<>", "<@", "<^", "=", ">", ">=", ">>", ">>=", ">^", "?", "?#", "?&", "?-", "?-|", "?|", "?||",
    "@", "@-@", "@>", "@?", "@@", "@@@", "^", "^@", "|", "|&>", "|/", "|>>", "||", "||/", "~", "~*", "~<=~",
    "~<~", "~=", "~>=~", "~>~", "~~", "~~*", "!=",
];

/// The names the parser gives the `A_Expr` of `BETWEEN` and its variants.
const OPERATOR_KEYWORDS: &[&str] = &["BETWEEN", "NOT BETWEEN", "BETWEEN SYMMETRIC", "NOT BETWEEN SYMMETRIC"];

/// Deeper trees than this are refused rather than walked.
const MAX_DEPTH: u32 = 400;

pub(crate) struct Walk<'c> {
    pub(crate) config: &'c NormalizerConfig,
    pub(crate) reads: Vec<TableName>,
    writes: Vec<TableName>,
    writes_unknown: bool,
    pub(crate) functions: Vec<Arc<str>>,
    pub(crate) operators: Vec<Arc<str>>,
    pub(crate) reason: Option<NotCacheable>,
    pub(crate) temp_created: Vec<TableName>,
    pub(crate) effects: Effects,
    /// Every relation the statement names where one is read or written, CTE references
    /// included: its name without schema and its location in the text. Key restrictions
    /// (`restrict.rs`) are reported for a table only when they cover every one of these.
    pub(crate) relation_refs: Vec<(String, i32)>,
    /// Whether the walk saw the whole statement (no unsupported construct, not too deep).
    pub(crate) complete: bool,
    ctes: Vec<String>,
    depth: u32,
}

/// The name of a node variant, e.g. `JsonTable`, without formatting the whole node.
pub(crate) fn variant_name(node: &NodeEnum) -> String {
    struct Bounded(String);
    impl fmt::Write for Bounded {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for c in s.chars() {
                if !(c.is_alphanumeric() || c == '_') || self.0.len() >= 48 {
                    return Err(fmt::Error);
                }
                self.0.push(c);
            }
            Ok(())
        }
    }
    let mut b = Bounded(String::new());
    let _ = write!(b, "{node:?}");
    b.0
}

/// Whether an `EXPLAIN` runs its statement (`ANALYZE`).
pub(crate) fn explain_analyzes(e: &protobuf::ExplainStmt) -> bool {
    e.options.iter().any(|o| {
        matches!(o.node.as_ref(), Some(NodeEnum::DefElem(d)) if d.defname == "analyze" || d.defname == "analyse")
    })
}

fn qualified(rv: &RangeVar) -> TableName {
    if rv.schemaname.is_empty() {
        TableName::new(rv.relname.as_str())
    } else {
        TableName::new(format!("{}.{}", rv.schemaname, rv.relname))
    }
}

/// The relation a `regclass` string names, as [`qualified`] writes a parsed one: identifiers
/// separated by dots, unquoted ones folded to lower case (ASCII, as PostgreSQL folds them),
/// quoted ones kept with `""` read as `"`. `None` for anything else (more than two parts, an
/// empty identifier, a bad quote), which the caller takes as any relation.
pub(crate) fn regclass_name(text: &str) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' || c.is_whitespace() || c == '"' {
                    break;
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => {
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
            }
            Some(_) => return None,
        }
    }
    match parts.as_slice() {
        [name] => Some(name.clone()),
        [schema, name] => Some(format!("{schema}.{name}")),
        _ => None,
    }
}

fn string_list(items: &[Node]) -> Option<String> {
    let mut out = String::new();
    for item in items {
        match item.node.as_ref() {
            Some(NodeEnum::String(s)) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&s.sval);
            }
            _ => return None,
        }
    }
    Some(out)
}

impl<'c> Walk<'c> {
    pub(crate) fn new(config: &'c NormalizerConfig) -> Self {
        Self {
            config,
            reads: Vec::new(),
            writes: Vec::new(),
            writes_unknown: false,
            functions: Vec::new(),
            operators: Vec::new(),
            reason: None,
            temp_created: Vec::new(),
            effects: Effects::default(),
            relation_refs: Vec::new(),
            complete: true,
            ctes: Vec::new(),
            depth: 0,
        }
    }

    pub(crate) fn write_effect(&self) -> WriteEffect {
        if self.writes_unknown {
            WriteEffect::Unknown
        } else if self.writes.is_empty() {
            WriteEffect::Nothing
        } else {
            WriteEffect::Tables(self.writes.clone())
        }
    }

    fn deny(&mut self, reason: NotCacheable) {
        if self.reason.is_none() {
            self.reason = Some(reason);
        }
    }

    fn unsupported(&mut self, what: &str) {
        self.complete = false;
        self.deny(NotCacheable::Unsupported(Arc::from(what)));
        self.writes_unknown = true;
        let why = format!("unsupported construct {what}");
        self.effects.push(NO_POSITION, SessionEffect::ServerCode(Arc::from(why)));
    }

    fn write(&mut self, rv: &RangeVar) {
        self.relation_refs.push((rv.relname.clone(), rv.location));
        let t = qualified(rv);
        // `relpersistence` is `t` only where a relation is created: CREATE TEMP TABLE,
        // CREATE TEMP TABLE ... AS, SELECT ... INTO TEMP.
        if rv.relpersistence == "t" && !self.temp_created.contains(&t) {
            self.temp_created.push(t.clone());
        }
        if !self.writes.contains(&t) {
            self.writes.push(t);
        }
    }

    fn write_name(&mut self, name: String) {
        let t = TableName::new(name);
        if !self.writes.contains(&t) {
            self.writes.push(t);
        }
    }

    /// `nextval` and `setval` change the sequence their first argument names, a `regclass`
    /// written as a string: no table is written, yet a read of that sequence is stale after
    /// them. A name the text does not spell out (a parameter, an expression) may be any
    /// sequence.
    fn sequence_write(&mut self, arg: Option<&Node>) {
        let literal = |node: &Node| match node.node.as_ref() {
            Some(NodeEnum::AConst(c)) => match &c.val {
                Some(protobuf::a_const::Val::Sval(s)) => Some(s.sval.clone()),
                _ => None,
            },
            _ => None,
        };
        let text = arg.and_then(|a| match a.node.as_ref() {
            Some(NodeEnum::TypeCast(t)) => t.arg.as_deref().and_then(literal),
            _ => literal(a),
        });
        match text.as_deref().and_then(regclass_name) {
            Some(name) => self.write_name(name),
            None => self.writes_unknown = true,
        }
    }

    fn read(&mut self, rv: &RangeVar) {
        self.relation_refs.push((rv.relname.clone(), rv.location));
        if rv.schemaname.is_empty() && self.ctes.contains(&rv.relname) {
            return;
        }
        let t = qualified(rv);
        if rv.schemaname == "pg_temp" || rv.schemaname.starts_with("pg_temp_") {
            self.deny(NotCacheable::TemporaryTable(t.clone()));
        } else if self.config.catalogs == CatalogPolicy::Exclude
            && (rv.schemaname == "pg_catalog"
                || rv.schemaname == "information_schema"
                || (rv.schemaname.is_empty() && rv.relname.starts_with("pg_")))
        {
            self.deny(NotCacheable::SystemCatalog(t.clone()));
        }
        if !self.reads.contains(&t) {
            self.reads.push(t);
        }
    }

    fn function(&mut self, name: &str) {
        let bare = name.strip_prefix("pg_catalog.").unwrap_or(name);
        if !self.functions.iter().any(|f| **f == *name) {
            self.functions.push(Arc::from(name));
        }
        match self.config.function_volatility(name) {
            Some(Volatility::Immutable | Volatility::Stable) => {}
            Some(Volatility::Volatile) => {
                self.deny(NotCacheable::VolatileFunction(Arc::from(name)));
                self.writes_unknown = true;
            }
            None if KNOWN_VOLATILE_READONLY.contains(&bare)
                || bare.starts_with("txid_")
                || (bare.starts_with("pg_") && !name.contains('.'))
                || name.starts_with("pg_catalog.pg_") =>
            {
                self.deny(NotCacheable::VolatileFunction(Arc::from(name)));
            }
            None => {
                self.deny(NotCacheable::UnknownFunction(Arc::from(name)));
                self.writes_unknown = true;
            }
        }
    }

    /// An operator PostgreSQL does not ship (`a ### b`, or one qualified with a schema other than
    /// `pg_catalog`) runs a user function the text does not name: the statement is not cached,
    /// may write anything and may change the session, like a call of an unknown function.
    fn operator(&mut self, name: &[protobuf::Node], location: i32) {
        let parts = session::name_parts(name);
        let shipped = match parts.as_deref() {
            Some([op] | ["pg_catalog", op]) => {
                BUILTIN_OPERATORS.contains(op)
                    || OPERATOR_KEYWORDS.contains(&op.to_ascii_uppercase().as_str())
            }
            _ => false,
        };
        if let Some([op]) = parts.as_deref().filter(|_| shipped) {
            // Unqualified: a user operator of that name may be what runs (a `pg_catalog.`
            // qualified one is the built-in).
            let named: &[&str] = if OPERATOR_KEYWORDS.contains(&op.to_ascii_uppercase().as_str()) {
                &[">=", "<="]
            } else {
                std::slice::from_ref(op)
            };
            for op in named {
                let name = format!("operator {op}");
                if !self.operators.iter().any(|o| **o == *name) {
                    self.operators.push(Arc::from(name));
                }
            }
        }
        if !shipped {
            let name = format!("operator {}", parts.map_or_else(|| "?".to_owned(), |p| p.join(".")));
            self.deny(NotCacheable::UnknownFunction(Arc::from(name.as_str())));
            self.writes_unknown = true;
            self.effects.push(location, SessionEffect::ServerCode(Arc::from(name)));
        }
    }

    /// The operator of `x op ANY (SELECT ...)`, `x op ALL (...)`, `(a, b) op (SELECT ...)`, or
    /// `x IN (SELECT ...)` (no name: `=`).
    fn sublink_operator(&mut self, s: &protobuf::SubLink) {
        use protobuf::SubLinkType;
        let compares = [SubLinkType::AnySublink, SubLinkType::AllSublink, SubLinkType::RowcompareSublink]
            .iter()
            .any(|t| *t as i32 == s.sub_link_type);
        if !compares {
            return;
        }
        if s.oper_name.is_empty() {
            let name = "operator =";
            if !self.operators.iter().any(|o| **o == *name) {
                self.operators.push(Arc::from(name));
            }
        } else {
            self.operator(&s.oper_name, s.location);
        }
    }

    /// Walks one top-level statement and returns its kind.
    pub(crate) fn statement(&mut self, node: &NodeEnum) -> StatementKind {
        let kind = self.statement_kind(node);
        if kind != StatementKind::Select {
            self.deny(NotCacheable::NotARead(kind));
        }
        self.statement_effects(node, kind);
        match node {
            NodeEnum::SelectStmt(s) => self.select(s),
            NodeEnum::InsertStmt(_)
            | NodeEnum::UpdateStmt(_)
            | NodeEnum::DeleteStmt(_)
            | NodeEnum::MergeStmt(_) => self.dml(node),
            NodeEnum::CopyStmt(c) => {
                if let Some(rv) = &c.relation {
                    if c.is_from {
                        self.write(rv);
                    } else {
                        self.read(rv);
                    }
                }
                self.opt(c.query.as_deref());
                self.opt(c.where_clause.as_deref());
            }
            NodeEnum::TruncateStmt(t) => {
                if t.behavior == DropBehavior::DropCascade as i32 {
                    // CASCADE empties every table with a foreign key to these, which the text does not name.
                    self.writes_unknown = true;
                }
                for r in &t.relations {
                    match r.node.as_ref() {
                        Some(NodeEnum::RangeVar(rv)) => self.write(rv),
                        _ => self.writes_unknown = true,
                    }
                }
            }
            NodeEnum::ExplainStmt(e) => {
                if explain_analyzes(e) {
                    // EXPLAIN ANALYZE runs the statement, writes included.
                    if let Some(inner) = e.query.as_ref().and_then(|q| q.node.as_ref()) {
                        self.statement(inner);
                    }
                }
            }
            NodeEnum::DeclareCursorStmt(d) => self.opt(d.query.as_deref()),
            NodeEnum::CreateTableAsStmt(c) => {
                self.opt(c.query.as_deref());
                if let Some(rv) = c.into.as_ref().and_then(|i| i.rel.as_ref()) {
                    self.write(rv);
                }
            }
            NodeEnum::CreateStmt(c) => {
                if let Some(rv) = &c.relation {
                    self.write(rv);
                }
                for parent in &c.inh_relations {
                    if let Some(NodeEnum::RangeVar(rv)) = parent.node.as_ref() {
                        self.write(rv);
                    }
                }
            }
            NodeEnum::AlterTableStmt(a) => {
                if let Some(rv) = &a.relation {
                    self.write(rv);
                }
                let cascade = a.cmds.iter().any(|c| {
                    matches!(c.node.as_ref(), Some(NodeEnum::AlterTableCmd(cmd)) if cmd.behavior == DropBehavior::DropCascade as i32)
                });
                if cascade {
                    self.writes_unknown = true;
                }
            }
            NodeEnum::IndexStmt(i) => {
                if let Some(rv) = &i.relation {
                    self.write(rv);
                }
            }
            NodeEnum::ViewStmt(v) => {
                if let Some(rv) = &v.view {
                    self.write(rv);
                }
            }
            NodeEnum::RefreshMatViewStmt(r) => {
                if let Some(rv) = &r.relation {
                    self.write(rv);
                }
            }
            NodeEnum::CreateSeqStmt(s) => {
                if let Some(rv) = &s.sequence {
                    self.write(rv);
                }
            }
            NodeEnum::AlterSeqStmt(s) => {
                if let Some(rv) = &s.sequence {
                    self.write(rv);
                }
            }
            NodeEnum::DropStmt(d) => self.drop(d),
            NodeEnum::RenameStmt(r) => self.rename(r),
            NodeEnum::VariableSetStmt(_)
            | NodeEnum::VariableShowStmt(_)
            | NodeEnum::DiscardStmt(_)
            | NodeEnum::TransactionStmt(_)
            | NodeEnum::ListenStmt(_)
            | NodeEnum::UnlistenStmt(_)
            | NodeEnum::NotifyStmt(_)
            | NodeEnum::PrepareStmt(_)
            | NodeEnum::DeallocateStmt(_)
            | NodeEnum::VacuumStmt(_)
            | NodeEnum::LockStmt(_)
            | NodeEnum::CheckPointStmt(_)
            | NodeEnum::ClosePortalStmt(_)
            | NodeEnum::FetchStmt(_)
            | NodeEnum::ConstraintsSetStmt(_)
            | NodeEnum::LoadStmt(_)
            | NodeEnum::ClusterStmt(_)
            | NodeEnum::ReindexStmt(_) => {}
            // CALL, DO, EXECUTE, and DDL on objects other than tables: the effect on tables
            // cannot be known from the text.
            _ => self.writes_unknown = true,
        }
        kind
    }

    fn statement_kind(&self, node: &NodeEnum) -> StatementKind {
        match node {
            NodeEnum::SelectStmt(_) => StatementKind::Select,
            NodeEnum::InsertStmt(_) => StatementKind::Insert,
            NodeEnum::UpdateStmt(_) => StatementKind::Update,
            NodeEnum::DeleteStmt(_) => StatementKind::Delete,
            NodeEnum::MergeStmt(_) => StatementKind::Merge,
            NodeEnum::CopyStmt(c) if c.is_from => StatementKind::CopyIn,
            NodeEnum::CopyStmt(_) => StatementKind::CopyOut,
            NodeEnum::TruncateStmt(_) => StatementKind::Truncate,
            NodeEnum::TransactionStmt(_) => StatementKind::Transaction,
            NodeEnum::VariableSetStmt(_) | NodeEnum::DiscardStmt(_) => StatementKind::Session,
            NodeEnum::RefreshMatViewStmt(_)
            | NodeEnum::RenameStmt(_)
            | NodeEnum::IndexStmt(_)
            | NodeEnum::ViewStmt(_)
            | NodeEnum::CreateTableAsStmt(_)
            | NodeEnum::RuleStmt(_)
            | NodeEnum::CommentStmt(_)
            | NodeEnum::GrantStmt(_)
            | NodeEnum::GrantRoleStmt(_) => StatementKind::Ddl,
            other => {
                let name = variant_name(other);
                let ddl = [
                    "Create",
                    "Alter",
                    "Drop",
                    "Define",
                    "Comment",
                    "SecLabel",
                    "Import",
                    "Reassign",
                    "CompositeType",
                ]
                .iter()
                .any(|p| name.starts_with(p));
                if ddl {
                    StatementKind::Ddl
                } else {
                    StatementKind::Utility
                }
            }
        }
    }

    fn drop(&mut self, d: &protobuf::DropStmt) {
        let tables = [
            ObjectType::ObjectTable,
            ObjectType::ObjectView,
            ObjectType::ObjectMatview,
            ObjectType::ObjectForeignTable,
            ObjectType::ObjectSequence,
            ObjectType::ObjectIndex,
        ];
        let is_table = tables.iter().any(|t| *t as i32 == d.remove_type);
        if !is_table || d.behavior == DropBehavior::DropCascade as i32 {
            self.writes_unknown = true;
            return;
        }
        for o in &d.objects {
            match o.node.as_ref() {
                Some(NodeEnum::List(l)) => match string_list(&l.items) {
                    Some(name) => self.write_name(name),
                    None => self.writes_unknown = true,
                },
                _ => self.writes_unknown = true,
            }
        }
    }

    fn rename(&mut self, r: &protobuf::RenameStmt) {
        let renames_relation = [
            ObjectType::ObjectTable,
            ObjectType::ObjectView,
            ObjectType::ObjectMatview,
            ObjectType::ObjectForeignTable,
            ObjectType::ObjectSequence,
        ]
        .iter()
        .any(|t| *t as i32 == r.rename_type);
        let on_relation = renames_relation
            || [ObjectType::ObjectColumn, ObjectType::ObjectTabconstraint, ObjectType::ObjectIndex]
                .iter()
                .any(|t| *t as i32 == r.rename_type);
        match (&r.relation, on_relation) {
            (Some(rv), true) => {
                self.write(rv);
                if renames_relation {
                    let new = if rv.schemaname.is_empty() {
                        r.newname.clone()
                    } else {
                        format!("{}.{}", rv.schemaname, r.newname)
                    };
                    self.write_name(new);
                }
            }
            _ => self.writes_unknown = true,
        }
    }

    fn with(&mut self, w: &WithClause) {
        if w.recursive {
            for c in &w.ctes {
                if let Some(NodeEnum::CommonTableExpr(cte)) = c.node.as_ref() {
                    self.ctes.push(cte.ctename.clone());
                }
            }
        }
        for c in &w.ctes {
            match c.node.as_ref() {
                Some(NodeEnum::CommonTableExpr(cte)) => {
                    if let Some(q) = cte.ctequery.as_ref().and_then(|q| q.node.as_ref()) {
                        match q {
                            NodeEnum::InsertStmt(_)
                            | NodeEnum::UpdateStmt(_)
                            | NodeEnum::DeleteStmt(_)
                            | NodeEnum::MergeStmt(_) => {
                                self.deny(NotCacheable::DataModifyingCte);
                                self.dml(q);
                            }
                            other => self.node_enum(other),
                        }
                    }
                    if !w.recursive {
                        // A non-recursive CTE is visible only to the ones after it and the body.
                        self.ctes.push(cte.ctename.clone());
                    }
                }
                Some(other) => self.unsupported(&variant_name(other)),
                None => {}
            }
        }
    }

    fn select(&mut self, s: &SelectStmt) {
        if self.enter() {
            return;
        }
        let mark = self.ctes.len();
        if let Some(w) = &s.with_clause {
            self.with(w);
        }
        if s.op != SetOperation::SetopNone as i32 && s.op != SetOperation::Undefined as i32 {
            if let Some(l) = &s.larg {
                self.select(l);
            }
            if let Some(r) = &s.rarg {
                self.select(r);
            }
        }
        self.list(&s.from_clause);
        self.list(&s.distinct_clause);
        self.list(&s.target_list);
        self.opt(s.where_clause.as_deref());
        self.list(&s.group_clause);
        self.opt(s.having_clause.as_deref());
        self.list(&s.window_clause);
        self.list(&s.values_lists);
        self.list(&s.sort_clause);
        self.opt(s.limit_offset.as_deref());
        self.opt(s.limit_count.as_deref());
        if !s.locking_clause.is_empty() {
            self.deny(NotCacheable::LockingClause);
        }
        if let Some(into) = &s.into_clause {
            self.deny(NotCacheable::SelectInto);
            if let Some(rv) = &into.rel {
                self.write(rv);
                self.temporary_relation(rv);
            }
        }
        self.ctes.truncate(mark);
        self.depth -= 1;
    }

    fn dml(&mut self, node: &NodeEnum) {
        if self.enter() {
            return;
        }
        let mark = self.ctes.len();
        match node {
            NodeEnum::InsertStmt(s) => {
                if let Some(w) = &s.with_clause {
                    self.with(w);
                }
                if let Some(rv) = &s.relation {
                    self.write(rv);
                }
                // Subscripts in the column list (`INSERT INTO t (a[f()]) ...`) are expressions.
                self.list(&s.cols);
                self.opt(s.select_stmt.as_deref());
                if let Some(oc) = &s.on_conflict_clause {
                    if let Some(infer) = &oc.infer {
                        self.list(&infer.index_elems);
                        self.opt(infer.where_clause.as_deref());
                    }
                    self.list(&oc.target_list);
                    self.opt(oc.where_clause.as_deref());
                }
                if let Some(r) = &s.returning_clause {
                    self.list(&r.exprs);
                }
            }
            NodeEnum::UpdateStmt(s) => {
                if let Some(w) = &s.with_clause {
                    self.with(w);
                }
                if let Some(rv) = &s.relation {
                    self.write(rv);
                }
                self.list(&s.target_list);
                self.list(&s.from_clause);
                self.opt(s.where_clause.as_deref());
                if let Some(r) = &s.returning_clause {
                    self.list(&r.exprs);
                }
            }
            NodeEnum::DeleteStmt(s) => {
                if let Some(w) = &s.with_clause {
                    self.with(w);
                }
                if let Some(rv) = &s.relation {
                    self.write(rv);
                }
                self.list(&s.using_clause);
                self.opt(s.where_clause.as_deref());
                if let Some(r) = &s.returning_clause {
                    self.list(&r.exprs);
                }
            }
            NodeEnum::MergeStmt(s) => {
                if let Some(w) = &s.with_clause {
                    self.with(w);
                }
                if let Some(rv) = &s.relation {
                    self.write(rv);
                }
                self.opt(s.source_relation.as_deref());
                self.opt(s.join_condition.as_deref());
                for c in &s.merge_when_clauses {
                    match c.node.as_ref() {
                        Some(NodeEnum::MergeWhenClause(m)) => {
                            self.opt(m.condition.as_deref());
                            self.list(&m.target_list);
                            self.list(&m.values);
                        }
                        Some(other) => self.unsupported(&variant_name(other)),
                        None => {}
                    }
                }
                if let Some(r) = &s.returning_clause {
                    self.list(&r.exprs);
                }
            }
            other => self.unsupported(&variant_name(other)),
        }
        self.ctes.truncate(mark);
        self.depth -= 1;
    }

    /// Returns true when the tree is too deep to walk (and records why).
    fn enter(&mut self) -> bool {
        if self.depth >= MAX_DEPTH {
            self.unsupported("nesting deeper than 400 levels");
            return true;
        }
        self.depth += 1;
        false
    }

    fn list(&mut self, nodes: &[Node]) {
        for n in nodes {
            self.node(n);
        }
    }

    fn opt(&mut self, node: Option<&Node>) {
        if let Some(n) = node {
            self.node(n);
        }
    }

    /// Walks an expression outside a statement (one that DDL evaluates).
    pub(crate) fn expression(&mut self, node: &Node) {
        self.node(node);
    }

    fn node(&mut self, node: &Node) {
        if let Some(n) = node.node.as_ref() {
            self.node_enum(n);
        }
    }

    fn node_enum(&mut self, node: &NodeEnum) {
        if self.enter() {
            return;
        }
        self.node_inner(node);
        self.depth -= 1;
    }

    fn node_inner(&mut self, node: &NodeEnum) {
        match node {
            // Leaves.
            NodeEnum::AConst(_)
            | NodeEnum::ParamRef(_)
            | NodeEnum::ColumnRef(_)
            | NodeEnum::AStar(_)
            | NodeEnum::String(_)
            | NodeEnum::Integer(_)
            | NodeEnum::Float(_)
            | NodeEnum::Boolean(_)
            | NodeEnum::BitString(_)
            | NodeEnum::TypeName(_)
            | NodeEnum::SetToDefault(_)
            | NodeEnum::Alias(_)
            | NodeEnum::CurrentOfExpr(_) => {}
            NodeEnum::DefElem(d) => self.opt(d.arg.as_deref()),
            NodeEnum::RangeVar(rv) => self.read(rv),
            NodeEnum::SelectStmt(s) => self.select(s),
            NodeEnum::InsertStmt(_)
            | NodeEnum::UpdateStmt(_)
            | NodeEnum::DeleteStmt(_)
            | NodeEnum::MergeStmt(_) => {
                self.deny(NotCacheable::DataModifyingCte);
                self.dml(node);
            }
            NodeEnum::FuncCall(f) => {
                match string_list(&f.funcname) {
                    Some(name) => self.function(&name),
                    None => self.unsupported("function name"),
                }
                if matches!(
                    session::name_parts(&f.funcname).as_deref(),
                    Some(["nextval" | "setval"] | ["pg_catalog", "nextval" | "setval"])
                ) {
                    self.sequence_write(f.args.first());
                }
                if let Some(effect) = session::name_parts(&f.funcname).and_then(|p| session::of_function(&p))
                {
                    self.effects.push(f.location, effect);
                }
                self.list(&f.args);
                self.list(&f.agg_order);
                self.opt(f.agg_filter.as_deref());
                if let Some(w) = &f.over {
                    self.window(w);
                }
            }
            NodeEnum::SqlvalueFunction(v) => {
                let name = match v.op {
                    1 => "current_date",
                    2 | 3 => "current_time",
                    4 | 5 => "current_timestamp",
                    6 | 7 => "localtime",
                    8 | 9 => "localtimestamp",
                    10 => "current_role",
                    11 => "current_user",
                    12 => "user",
                    13 => "session_user",
                    14 => "current_catalog",
                    15 => "current_schema",
                    _ => "sql value function",
                };
                self.deny(NotCacheable::SqlValueFunction(name));
            }
            NodeEnum::AExpr(e) => {
                self.operator(&e.name, e.location);
                self.opt(e.lexpr.as_deref());
                self.opt(e.rexpr.as_deref());
            }
            NodeEnum::BoolExpr(e) => self.list(&e.args),
            NodeEnum::SubLink(s) => {
                self.sublink_operator(s);
                self.opt(s.testexpr.as_deref());
                self.opt(s.subselect.as_deref());
            }
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
            NodeEnum::MinMaxExpr(m) => self.list(&m.args),
            NodeEnum::NullTest(n) => self.opt(n.arg.as_deref()),
            NodeEnum::BooleanTest(b) => self.opt(b.arg.as_deref()),
            NodeEnum::TypeCast(t) => self.opt(t.arg.as_deref()),
            NodeEnum::CollateClause(c) => self.opt(c.arg.as_deref()),
            NodeEnum::ResTarget(r) => {
                self.list(&r.indirection);
                self.opt(r.val.as_deref());
            }
            NodeEnum::MultiAssignRef(m) => self.opt(m.source.as_deref()),
            NodeEnum::SortBy(s) => {
                // `ORDER BY x USING op`.
                if !s.use_op.is_empty() {
                    self.operator(&s.use_op, s.location);
                }
                self.opt(s.node.as_deref());
            }
            NodeEnum::WindowDef(w) => self.window(w),
            NodeEnum::AIndirection(a) => {
                self.opt(a.arg.as_deref());
                self.list(&a.indirection);
            }
            NodeEnum::AIndices(a) => {
                self.opt(a.lidx.as_deref());
                self.opt(a.uidx.as_deref());
            }
            NodeEnum::AArrayExpr(a) => self.list(&a.elements),
            NodeEnum::RowExpr(r) => self.list(&r.args),
            NodeEnum::List(l) => self.list(&l.items),
            NodeEnum::GroupingSet(g) => self.list(&g.content),
            NodeEnum::GroupingFunc(g) => self.list(&g.args),
            NodeEnum::NamedArgExpr(n) => self.opt(n.arg.as_deref()),
            NodeEnum::IndexElem(i) => self.opt(i.expr.as_deref()),
            NodeEnum::XmlExpr(x) => {
                self.list(&x.named_args);
                self.list(&x.args);
            }
            NodeEnum::RangeSubselect(r) => self.opt(r.subquery.as_deref()),
            NodeEnum::RangeFunction(r) => {
                // Each item is a list of [function call, column definitions].
                for f in &r.functions {
                    match f.node.as_ref() {
                        Some(NodeEnum::List(l)) => {
                            if let Some(first) = l.items.first() {
                                self.node(first);
                            }
                        }
                        Some(other) => self.node_enum(other),
                        None => {}
                    }
                }
            }
            NodeEnum::JoinExpr(j) => {
                self.opt(j.larg.as_deref());
                self.opt(j.rarg.as_deref());
                self.opt(j.quals.as_deref());
            }
            NodeEnum::RangeTableSample(r) => {
                self.opt(r.relation.as_deref());
                self.list(&r.args);
                match &r.repeatable {
                    Some(rep) => self.node(rep),
                    None => self.deny(NotCacheable::TableSampleWithoutRepeatable),
                }
            }
            other => self.unsupported(&variant_name(other)),
        }
    }

    fn window(&mut self, w: &protobuf::WindowDef) {
        self.list(&w.partition_clause);
        self.list(&w.order_clause);
        self.opt(w.start_offset.as_deref());
        self.opt(w.end_offset.as_deref());
    }
}
