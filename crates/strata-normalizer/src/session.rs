//! Session effects: what a statement may do to its session's state (settings, role, prepared
//! statements, listens, temporary objects, code the text does not show), read from the parse
//! tree while the walk of `walk.rs` goes over it.
//!
//! The rules err towards an effect: a statement is reported as leaving the session alone only
//! when every piece of it that runs is known. A function call is neutral only when it is a
//! builtin the normalizer knows (its own allow list, not a configuration's: a user's allow list
//! vouches for a function's result, not for what it does); any other call, any construct the
//! walk does not know, and text that does not parse may run code, which is
//! [`SessionEffect::ServerCode`].

use std::collections::HashMap;
use std::sync::Arc;

use pg_query::protobuf::{self, DiscardMode, RangeVar, VariableSetKind, VariableSetStmt};
use pg_query::{Node, NodeEnum};

use crate::analysis::{DiscardTarget, SessionEffect, StatementKind};
use crate::config::{is_shipped_allowed, KNOWN_VOLATILE_READONLY};
use crate::walk::{explain_analyzes, variant_name, Walk};

/// `CURSOR_OPT_HOLD` in PostgreSQL's `parsenodes.h`.
const CURSOR_OPT_HOLD: i32 = 0x0020;

/// Builtins that change the session's state although the walk knows them as read-only.
const SESSION_CHANGING_BUILTINS: &[&str] = &[
    "setseed",
    "pg_reload_conf",
    "pg_replication_origin_session_setup",
    "pg_replication_origin_session_reset",
];

/// Functions PostgreSQL's grammar calls for SQL syntax (`LIKE ... ESCAPE`, `SIMILAR TO`,
/// `OVERLAPS`, `IS NORMALIZED`, `XMLEXISTS`, `SYSTEM_USER`, ...), always qualified with
/// `pg_catalog` (`SystemFuncName` in `gram.y`). Those not on the allow list are read-only
/// builtins all the same.
const GRAMMAR_FUNCTIONS: &[&str] = &[
    "btrim",
    "extract",
    "is_normalized",
    "json_object",
    "like_escape",
    "ltrim",
    "normalize",
    "overlaps",
    "overlay",
    "pg_collation_for",
    "position",
    "rtrim",
    "similar_to_escape",
    "substring",
    "system_user",
    "timezone",
    "xmlexists",
];

/// Where an effect of a statement as a whole sorts: before the effects of what it holds.
const STATEMENT: i32 = i32::MIN;

/// Where an effect found without a position of its own sorts: after everything written.
pub(crate) const NO_POSITION: i32 = i32::MAX;

/// The effects found in one statement, each at the earliest byte offset it is written at, so
/// they come out deduplicated and in text order whatever order the walk met them in.
#[derive(Default)]
pub(crate) struct Effects {
    found: Vec<(i32, SessionEffect)>,
    index: HashMap<SessionEffect, usize>,
}

impl Effects {
    pub(crate) fn push(&mut self, at: i32, effect: SessionEffect) {
        match self.index.get(&effect) {
            Some(&i) => {
                if let Some(slot) = self.found.get_mut(i) {
                    slot.0 = slot.0.min(at);
                }
            }
            None => {
                self.index.insert(effect.clone(), self.found.len());
                self.found.push((at, effect));
            }
        }
    }

    fn absorb(&mut self, other: Effects, keep: impl Fn(&SessionEffect) -> bool) {
        for (at, effect) in other.found {
            if keep(&effect) {
                self.push(at, effect);
            }
        }
    }

    pub(crate) fn into_vec(mut self) -> Vec<SessionEffect> {
        // A stable sort: effects at the same offset keep the order the walk met them in.
        self.found.sort_by_key(|(at, _)| *at);
        self.found.into_iter().map(|(_, e)| e).collect()
    }
}

/// The name parts of a function call (`["pg_catalog", "set_config"]`), or `None` when a part is
/// not a plain name.
pub(crate) fn name_parts(items: &[Node]) -> Option<Vec<&str>> {
    items
        .iter()
        .map(|item| match item.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect()
}

/// The effect of calling the function named by `parts`, or `None` for a builtin known to leave
/// the session alone.
pub(crate) fn of_function(parts: &[&str]) -> Option<SessionEffect> {
    let server_code = || Some(SessionEffect::ServerCode(Arc::from(format!("function {}", parts.join(".")))));
    let (qualified, bare) = match parts {
        [bare] => (false, *bare),
        ["pg_catalog", bare] => (true, *bare),
        _ => return server_code(),
    };
    // A quoted name may hold a dot (`"pg_catalog.lower"`): that is some user's function.
    if bare.contains('.') {
        return server_code();
    }
    if bare == "set_config" {
        return Some(SessionEffect::SetConfig);
    }
    if let Some(name) = SESSION_CHANGING_BUILTINS.iter().find(|n| **n == bare) {
        return Some(SessionEffect::Other(name));
    }
    let builtin = is_shipped_allowed(bare)
        || KNOWN_VOLATILE_READONLY.contains(&bare)
        || bare.starts_with("pg_")
        || bare.starts_with("txid_")
        || (qualified && GRAMMAR_FUNCTIONS.contains(&bare));
    if builtin {
        None
    } else {
        server_code()
    }
}

fn name(s: &str) -> Arc<str> {
    Arc::from(s.to_ascii_lowercase())
}

/// `SET`/`SET LOCAL` of one setting, with the role and session authorization spelled out.
fn set(setting: &str, local: bool) -> SessionEffect {
    let setting = setting.to_ascii_lowercase();
    match (setting.as_str(), local) {
        (_, true) => SessionEffect::SetLocal { name: Arc::from(setting) },
        ("role", false) => SessionEffect::Role,
        ("session_authorization", false) => SessionEffect::SessionAuthorization,
        (_, false) => SessionEffect::Set { name: Arc::from(setting) },
    }
}

/// The effects of `SET`, `RESET` and their special spellings.
fn variable_set(v: &VariableSetStmt) -> Vec<SessionEffect> {
    let kind = VariableSetKind::try_from(v.kind).unwrap_or(VariableSetKind::Undefined);
    match kind {
        VariableSetKind::VarResetAll => vec![SessionEffect::ResetAll],
        VariableSetKind::VarReset => vec![match v.name.to_ascii_lowercase().as_str() {
            "role" => SessionEffect::Role,
            "session_authorization" => SessionEffect::SessionAuthorization,
            _ => SessionEffect::Reset { name: name(&v.name) },
        }],
        VariableSetKind::VarSetMulti => {
            // `SET TRANSACTION` assigns one setting per mode; `SET SESSION CHARACTERISTICS AS
            // TRANSACTION` the session defaults of the same (as ExecSetVariableStmt does).
            let prefix = match v.name.as_str() {
                "TRANSACTION" => Some(""),
                "SESSION CHARACTERISTICS" => Some("default_"),
                _ => None,
            };
            let modes: Vec<SessionEffect> = prefix
                .map(|prefix| {
                    v.args
                        .iter()
                        .filter_map(|a| match a.node.as_ref() {
                            Some(NodeEnum::DefElem(d)) => {
                                Some(set(&format!("{prefix}{}", d.defname), v.is_local))
                            }
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            if modes.is_empty() {
                vec![set(&v.name, v.is_local)]
            } else {
                modes
            }
        }
        VariableSetKind::VarSetValue | VariableSetKind::VarSetDefault | VariableSetKind::VarSetCurrent => {
            vec![set(&v.name, v.is_local)]
        }
        VariableSetKind::Undefined => vec![SessionEffect::ServerCode(Arc::from("SET of an unknown kind"))],
    }
}

fn is_temp_schema(schema: &str) -> bool {
    schema == "pg_temp" || schema.starts_with("pg_temp_")
}

/// Whether a created relation is temporary: `TEMP` (`relpersistence` is `t` only where a
/// relation is created) or written in schema `pg_temp`.
fn temporary_relation(rv: &RangeVar) -> bool {
    rv.relpersistence == "t" || is_temp_schema(&rv.schemaname)
}

/// Whether a qualified name (`pg_temp.x`) names an object in the temporary schema.
fn temporary_name(items: &[Node]) -> bool {
    match name_parts(items).as_deref() {
        Some([schema, _]) => is_temp_schema(schema),
        Some([_catalog, schema, _]) => is_temp_schema(schema),
        _ => false,
    }
}

/// Expressions that DDL evaluates right away (so the function calls in them run): a new
/// column's default, generation and check expressions, `ALTER ... TYPE ... USING`, a validated
/// `CHECK`, partition bounds.
fn evaluated_by_ddl(node: &NodeEnum) -> Vec<&Node> {
    fn column<'a>(c: &'a protobuf::ColumnDef, out: &mut Vec<&'a Node>) {
        out.extend(c.raw_default.as_deref());
        for k in &c.constraints {
            if let Some(NodeEnum::Constraint(k)) = k.node.as_ref() {
                out.extend(k.raw_expr.as_deref());
            }
        }
    }
    fn bound<'a>(b: &'a protobuf::PartitionBoundSpec, out: &mut Vec<&'a Node>) {
        out.extend(b.listdatums.iter().chain(&b.lowerdatums).chain(&b.upperdatums));
    }
    fn definition<'a>(def: Option<&'a Node>, out: &mut Vec<&'a Node>) {
        match def.and_then(|d| d.node.as_ref()) {
            Some(NodeEnum::ColumnDef(c)) => column(c, out),
            Some(NodeEnum::Constraint(k)) if !k.skip_validation => out.extend(k.raw_expr.as_deref()),
            Some(NodeEnum::PartitionCmd(p)) => {
                if let Some(b) = &p.bound {
                    bound(b, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    match node {
        NodeEnum::AlterTableStmt(a) => {
            for cmd in &a.cmds {
                if let Some(NodeEnum::AlterTableCmd(cmd)) = cmd.node.as_ref() {
                    definition(cmd.def.as_deref(), &mut out);
                }
            }
        }
        NodeEnum::AlterDomainStmt(a) => definition(a.def.as_deref(), &mut out),
        NodeEnum::CreateStmt(c) => {
            if let Some(b) = &c.partbound {
                bound(b, &mut out);
            }
        }
        _ => {}
    }
    out
}

impl Walk<'_> {
    /// Records the effects a top-level statement has by itself; the walk records those of the
    /// expressions in it (function calls, constructs it does not know) as it meets them.
    pub(crate) fn statement_effects(&mut self, node: &NodeEnum, kind: StatementKind) {
        let here = STATEMENT;
        match node {
            NodeEnum::VariableSetStmt(v) => {
                for e in variable_set(v) {
                    self.effects.push(here, e);
                }
            }
            NodeEnum::DiscardStmt(d) => {
                let target = match DiscardMode::try_from(d.target) {
                    Ok(DiscardMode::DiscardAll) => DiscardTarget::All,
                    Ok(DiscardMode::DiscardPlans) => DiscardTarget::Plans,
                    Ok(DiscardMode::DiscardSequences) => DiscardTarget::Sequences,
                    Ok(DiscardMode::DiscardTemp) => DiscardTarget::Temp,
                    Ok(DiscardMode::Undefined) | Err(_) => {
                        self.effects
                            .push(here, SessionEffect::ServerCode(Arc::from("DISCARD of an unknown kind")));
                        return;
                    }
                };
                self.effects.push(here, SessionEffect::Discard(target));
            }
            NodeEnum::PrepareStmt(p) => {
                self.effects.push(here, SessionEffect::Prepare(Arc::from(p.name.as_str())))
            }
            NodeEnum::DeallocateStmt(d) => {
                let which = (!d.isall && !d.name.is_empty()).then(|| Arc::from(d.name.as_str()));
                self.effects.push(here, SessionEffect::Deallocate(which));
            }
            NodeEnum::ListenStmt(_) | NodeEnum::UnlistenStmt(_) => {
                self.effects.push(here, SessionEffect::Listen)
            }
            NodeEnum::LoadStmt(_) => self.effects.push(here, SessionEffect::Other("LOAD")),
            NodeEnum::DeclareCursorStmt(d) => {
                if d.options & CURSOR_OPT_HOLD != 0 {
                    self.effects.push(here, SessionEffect::Other("cursor WITH HOLD"));
                }
            }
            NodeEnum::DoStmt(_) => self.effects.push(here, SessionEffect::ServerCode(Arc::from("DO block"))),
            NodeEnum::CallStmt(c) => {
                let procedure =
                    c.funccall.as_ref().and_then(|f| name_parts(&f.funcname)).map(|p| p.join("."));
                let why = match procedure {
                    Some(p) => format!("CALL {p}"),
                    None => "CALL".to_owned(),
                };
                self.effects.push(here, SessionEffect::ServerCode(Arc::from(why)));
            }
            NodeEnum::ExecuteStmt(_) => {
                self.effects
                    .push(here, SessionEffect::ServerCode(Arc::from("EXECUTE of a prepared statement")));
            }
            NodeEnum::CopyStmt(c) => {
                if c.is_program {
                    self.effects.push(here, SessionEffect::ServerCode(Arc::from("COPY ... PROGRAM")));
                }
            }
            NodeEnum::ExplainStmt(e) if !explain_analyzes(e) => {
                // The statement does not run, but the planner evaluates calls of immutable (and,
                // for its estimates, stable) functions with constant arguments: a function that
                // is not a known builtin may still run.
                if let Some(inner) = e.query.as_ref().and_then(|q| q.node.as_ref()) {
                    let mut plan = Walk::new(self.config);
                    plan.statement(inner);
                    let found = std::mem::take(&mut plan.effects);
                    self.effects.absorb(found, |e| matches!(e, SessionEffect::ServerCode(_)));
                }
            }
            NodeEnum::CreateTableAsStmt(c) => {
                if let Some(rv) = c.into.as_ref().and_then(|i| i.rel.as_ref()) {
                    self.temporary_relation(rv);
                }
            }
            NodeEnum::CreateStmt(c) => {
                if let Some(rv) = &c.relation {
                    self.temporary_relation(rv);
                }
                self.ddl_expressions(node);
            }
            NodeEnum::ViewStmt(v) => {
                if let Some(rv) = &v.view {
                    self.temporary_relation(rv);
                }
            }
            NodeEnum::CreateSeqStmt(s) => {
                if let Some(rv) = &s.sequence {
                    self.temporary_relation(rv);
                }
            }
            NodeEnum::CompositeTypeStmt(c) => {
                if let Some(rv) = &c.typevar {
                    self.temporary_relation(rv);
                }
            }
            NodeEnum::CreateFunctionStmt(f) => self.temporary_name(&f.funcname),
            NodeEnum::CreateEnumStmt(c) => self.temporary_name(&c.type_name),
            NodeEnum::CreateRangeStmt(c) => self.temporary_name(&c.type_name),
            NodeEnum::CreateDomainStmt(c) => self.temporary_name(&c.domainname),
            NodeEnum::DefineStmt(d) => self.temporary_name(&d.defnames),
            NodeEnum::AlterTableStmt(_) | NodeEnum::AlterDomainStmt(_) => self.ddl_expressions(node),
            // Reads, writes and utilities that leave the session alone (the walk reports the
            // function calls in them), and DDL: its effect on the schema is not session state.
            NodeEnum::ExplainStmt(_)
            | NodeEnum::SelectStmt(_)
            | NodeEnum::InsertStmt(_)
            | NodeEnum::UpdateStmt(_)
            | NodeEnum::DeleteStmt(_)
            | NodeEnum::MergeStmt(_)
            | NodeEnum::TruncateStmt(_)
            | NodeEnum::TransactionStmt(_)
            | NodeEnum::VariableShowStmt(_)
            | NodeEnum::NotifyStmt(_)
            | NodeEnum::VacuumStmt(_)
            | NodeEnum::LockStmt(_)
            | NodeEnum::CheckPointStmt(_)
            | NodeEnum::ClosePortalStmt(_)
            | NodeEnum::FetchStmt(_)
            | NodeEnum::ConstraintsSetStmt(_)
            | NodeEnum::ClusterStmt(_)
            | NodeEnum::ReindexStmt(_) => {}
            _ if kind == StatementKind::Ddl => {}
            other => {
                let why = format!("statement {}", variant_name(other));
                self.effects.push(here, SessionEffect::ServerCode(Arc::from(why)));
            }
        }
    }

    /// Records a temporary object when the relation a statement creates is temporary. (The
    /// walk calls it for `SELECT ... INTO`, whose target the grammar puts on the leftmost
    /// `SELECT` of a set operation.)
    pub(crate) fn temporary_relation(&mut self, rv: &RangeVar) {
        if temporary_relation(rv) {
            self.effects.push(rv.location, SessionEffect::TemporaryObject);
        }
    }

    fn temporary_name(&mut self, items: &[Node]) {
        if temporary_name(items) {
            self.effects.push(STATEMENT, SessionEffect::TemporaryObject);
        }
    }

    /// The effects of the function calls in expressions DDL evaluates right away (the walk does
    /// not go into DDL, so a separate walk reads them and only its effects are kept).
    fn ddl_expressions(&mut self, node: &NodeEnum) {
        let exprs = evaluated_by_ddl(node);
        if exprs.is_empty() {
            return;
        }
        let mut side = Walk::new(self.config);
        for e in exprs {
            side.expression(e);
        }
        let found = std::mem::take(&mut side.effects);
        self.effects.absorb(found, |_| true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_told_from_user_functions_by_name_alone() {
        let neutral = [
            &["lower"][..],
            &["pg_catalog", "lower"],
            &["count"],
            &["now"],
            &["nextval"],
            &["pg_sleep"],
            &["pg_catalog", "pg_sleep"],
            &["txid_current"],
            &["pg_catalog", "like_escape"],
            &["int4range"],
        ];
        for parts in neutral {
            assert_eq!(of_function(parts), None, "{parts:?}");
        }
        let code = |s: &str| Some(SessionEffect::ServerCode(Arc::from(s)));
        assert_eq!(of_function(&["app", "lower"]), code("function app.lower"));
        assert_eq!(of_function(&["pg_catalog.lower"]), code("function pg_catalog.lower"));
        assert_eq!(of_function(&["like_escape"]), code("function like_escape"));
        assert_eq!(of_function(&["db", "pg_catalog", "lower"]), code("function db.pg_catalog.lower"));
        assert_eq!(of_function(&["Lower"]), code("function Lower"));
        assert_eq!(of_function(&["pg_catalog", "set_config"]), Some(SessionEffect::SetConfig));
        assert_eq!(of_function(&["setseed"]), Some(SessionEffect::Other("setseed")));
    }

    #[test]
    fn effects_come_out_once_each_in_text_order() {
        let mut e = Effects::default();
        e.push(30, SessionEffect::SetConfig);
        e.push(NO_POSITION, SessionEffect::ServerCode(Arc::from("x")));
        e.push(10, SessionEffect::Listen);
        e.push(5, SessionEffect::SetConfig);
        assert_eq!(
            e.into_vec(),
            [SessionEffect::SetConfig, SessionEffect::Listen, SessionEffect::ServerCode(Arc::from("x"))]
        );
    }
}
