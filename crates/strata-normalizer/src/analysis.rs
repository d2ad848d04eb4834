//! The result of analyzing SQL text: per-statement facts and their roll-up for the whole text.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use strata_core::{TableName, TypeOid};

use crate::hints::Hints;
use crate::restrict::{ColumnRestriction, WriteKeys};

/// What a statement does, as PostgreSQL's grammar classifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StatementKind {
    /// `SELECT`, `VALUES`, `TABLE t`, and set operations over them.
    Select,
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `MERGE`.
    Merge,
    /// `COPY ... FROM` (data flows into a table).
    CopyIn,
    /// `COPY ... TO` (data flows out to the client or a file).
    CopyOut,
    /// `TRUNCATE`.
    Truncate,
    /// Schema changes: `CREATE`, `ALTER`, `DROP`, `GRANT`, `COMMENT`, `REFRESH MATERIALIZED VIEW`, ...
    Ddl,
    /// `BEGIN`, `COMMIT`, `ROLLBACK`, `SAVEPOINT`, `PREPARE TRANSACTION`, ...
    Transaction,
    /// Session state: `SET`, `RESET`, `SET ROLE`, `SET SESSION AUTHORIZATION`, `DISCARD`.
    Session,
    /// Other utility statements: `SHOW`, `EXPLAIN`, `CALL`, `DO`, `PREPARE`, `EXECUTE`, `LISTEN`,
    /// `NOTIFY`, `VACUUM`, `LOCK`, cursors, ...
    Utility,
    /// Text that did not parse.
    Unknown,
}

impl StatementKind {
    /// A short lowercase name, stable for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Select => "select",
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
            StatementKind::Merge => "merge",
            StatementKind::CopyIn => "copy-in",
            StatementKind::CopyOut => "copy-out",
            StatementKind::Truncate => "truncate",
            StatementKind::Ddl => "ddl",
            StatementKind::Transaction => "transaction",
            StatementKind::Session => "session",
            StatementKind::Utility => "utility",
            StatementKind::Unknown => "unknown",
        }
    }
}

impl fmt::Display for StatementKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a literal was written, which decides its [`TypeOid`] and how its text is to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LiteralForm {
    /// An integer such as `42` or `0x2A`.
    Integer,
    /// A number with a fraction or exponent, or an integer too large for `bigint`.
    Numeric,
    /// A standard string `'...'`; the text is the decoded value.
    String,
    /// An escape string `E'...'`; the text is the literal exactly as written, including `E'` and `'`.
    EscapeString,
    /// A Unicode-escape string `U&'...'`; the text is the literal exactly as written.
    UnicodeString,
    /// A dollar-quoted string `$tag$...$tag$`; the text is the body between the tags.
    DollarString,
    /// A bit string `B'0101'`; the text is as written.
    BitString,
    /// A hexadecimal bit string `X'1F'`; the text is as written.
    HexString,
    /// `TRUE` or `FALSE`; the text is `true` or `false`.
    Boolean,
}

impl LiteralForm {
    pub(crate) fn tag(self) -> u8 {
        match self {
            LiteralForm::Integer => b'i',
            LiteralForm::Numeric => b'n',
            LiteralForm::String => b's',
            LiteralForm::EscapeString => b'e',
            LiteralForm::UnicodeString => b'u',
            LiteralForm::DollarString => b'd',
            LiteralForm::BitString => b'b',
            LiteralForm::HexString => b'x',
            LiteralForm::Boolean => b't',
        }
    }
}

/// A literal the normalizer lifted out of the statement text, in text order.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Parameter {
    pub(crate) ty: TypeOid,
    pub(crate) form: LiteralForm,
    pub(crate) text: Box<str>,
}

impl Parameter {
    /// The type the literal has as written: `INT4`/`INT8`/`NUMERIC` for numbers, `UNKNOWN` for
    /// untyped strings (PostgreSQL resolves them from context), `BOOL`, `BIT`.
    pub fn type_oid(&self) -> TypeOid {
        self.ty
    }

    /// How the literal was written.
    pub fn form(&self) -> LiteralForm {
        self.form
    }

    /// The literal's text (see [`LiteralForm`] for what exactly), to pass as a text-format value.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for Parameter {
    // Literals can hold secrets (passwords, tokens); print their shape, not their value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parameter")
            .field("type_oid", &self.ty.0)
            .field("form", &self.form)
            .field("text_len", &self.text.len())
            .finish()
    }
}

/// A statement's identity: 16 bytes (xxh3-128) over its normalized token stream, with literals
/// replaced by placeholders. Whitespace, comments, keyword case and literal values do not change
/// it, nor does the length of an `IN (...)`, `VALUES` or `ARRAY[...]` list of constants.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatementIdentity([u8; 16]);

impl StatementIdentity {
    pub(crate) fn from_u128(value: u128) -> Self {
        Self(value.to_le_bytes())
    }

    /// The identity as bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for StatementIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter().rev() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for StatementIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StatementIdentity({self})")
    }
}

/// Why a statement or text may not be served from cache. [`fmt::Display`] gives the readable reason
/// used in metrics and the explain view.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NotCacheable {
    /// The text did not parse (or could not be read as UTF-8 without NUL bytes).
    ParseError(Arc<str>),
    /// The text holds no statement.
    Empty,
    /// The statement is not a read.
    NotARead(StatementKind),
    /// A `WITH` clause holds an `INSERT`/`UPDATE`/`DELETE`/`MERGE`.
    DataModifyingCte,
    /// `SELECT ... INTO` creates a table.
    SelectInto,
    /// `FOR UPDATE`/`FOR SHARE` and friends take row locks.
    LockingClause,
    /// A function that is volatile or time dependent.
    VolatileFunction(Arc<str>),
    /// A function not known to be immutable or stable-and-safe.
    UnknownFunction(Arc<str>),
    /// A SQL value function such as `current_timestamp` or `current_user`.
    SqlValueFunction(&'static str),
    /// A literal such as `'now'` whose meaning depends on the time.
    TimeLiteral(Arc<str>),
    /// A system catalog is read (configurable).
    SystemCatalog(TableName),
    /// `TABLESAMPLE` without `REPEATABLE` returns random rows.
    TableSampleWithoutRepeatable,
    /// A temporary table (schema `pg_temp`) is read.
    TemporaryTable(TableName),
    /// A construct this normalizer does not analyze, so it cannot vouch for it.
    Unsupported(Arc<str>),
    /// The hint `cache=off`.
    HintCacheOff,
    /// The text is longer than the normalizer analyzes (see
    /// [`NormalizerConfigBuilder::with_max_analyzed_bytes`](crate::NormalizerConfigBuilder::with_max_analyzed_bytes)),
    /// so it was neither scanned nor parsed.
    TooLarge {
        /// The text's length.
        bytes: usize,
        /// The limit in force.
        limit: usize,
    },
}

impl fmt::Display for NotCacheable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotCacheable::ParseError(m) => write!(f, "parse error: {m}"),
            NotCacheable::Empty => f.write_str("empty statement"),
            NotCacheable::NotARead(kind) => write!(f, "{kind} statement is not a read"),
            NotCacheable::DataModifyingCte => f.write_str("data-modifying WITH clause"),
            NotCacheable::SelectInto => f.write_str("SELECT INTO creates a table"),
            NotCacheable::LockingClause => f.write_str("FOR UPDATE/SHARE takes row locks"),
            NotCacheable::VolatileFunction(name) => write!(f, "volatile function {name}()"),
            NotCacheable::UnknownFunction(name) => {
                write!(f, "function {name}() is not known to be immutable or stable")
            }
            NotCacheable::SqlValueFunction(name) => write!(f, "time- or session-dependent {name}"),
            NotCacheable::TimeLiteral(lit) => write!(f, "time-dependent literal '{lit}'"),
            NotCacheable::SystemCatalog(t) => write!(f, "reads system catalog {t}"),
            NotCacheable::TableSampleWithoutRepeatable => f.write_str("TABLESAMPLE without REPEATABLE"),
            NotCacheable::TemporaryTable(t) => write!(f, "reads temporary table {t}"),
            NotCacheable::Unsupported(what) => write!(f, "unsupported construct {what}"),
            NotCacheable::HintCacheOff => f.write_str("hint cache=off"),
            NotCacheable::TooLarge { bytes, limit } => {
                write!(f, "text of {bytes} bytes exceeds the analysis limit of {limit} bytes")
            }
        }
    }
}

/// The cacheability verdict.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Cacheability {
    /// The result may be cached and served.
    Cacheable,
    /// The result must not be cached, with the reason.
    NotCacheable(NotCacheable),
}

impl Cacheability {
    /// Whether the verdict is [`Cacheability::Cacheable`].
    pub fn is_cacheable(&self) -> bool {
        matches!(self, Cacheability::Cacheable)
    }

    /// The reason it is not cacheable, if it is not.
    pub fn reason(&self) -> Option<&NotCacheable> {
        match self {
            Cacheability::Cacheable => None,
            Cacheability::NotCacheable(r) => Some(r),
        }
    }
}

impl fmt::Display for Cacheability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cacheability::Cacheable => f.write_str("cacheable"),
            Cacheability::NotCacheable(r) => write!(f, "not cacheable: {r}"),
        }
    }
}

/// The tables a statement makes stale.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WriteEffect {
    /// Nothing cached becomes stale.
    Nothing,
    /// These tables change (schema-qualified when written so).
    Tables(Vec<TableName>),
    /// The effect cannot be known from the text (`CALL`, `DO`, `EXECUTE`, a function that may write,
    /// unparsable text, text too large to analyze, most DDL on non-table objects): invalidate
    /// everything.
    Unknown,
}

impl WriteEffect {
    /// Adds what `other` makes stale: `Unknown` wins, tables are united without repeats.
    pub fn merge(&mut self, other: &WriteEffect) {
        match (&mut *self, other) {
            (WriteEffect::Unknown, _) | (_, WriteEffect::Nothing) => {}
            (_, WriteEffect::Unknown) => *self = WriteEffect::Unknown,
            (WriteEffect::Nothing, WriteEffect::Tables(t)) => *self = WriteEffect::Tables(t.clone()),
            (WriteEffect::Tables(mine), WriteEffect::Tables(t)) => {
                for table in t {
                    if !mine.contains(table) {
                        mine.push(table.clone());
                    }
                }
            }
        }
    }
}

/// What a statement may do to its session's state beyond its own result: settings, role,
/// prepared statements, listens, temporary objects, and code the text does not show.
///
/// Read from PostgreSQL's parse tree, so a word in a string literal, a comment or a
/// dollar-quoted body never counts. Only what runs counts: the statement of `EXPLAIN ANALYZE`
/// and the query of `DECLARE` do, the statement of `PREPARE` and the body of
/// `CREATE FUNCTION`/`CREATE PROCEDURE` do not. Plain `EXPLAIN` runs only what the planner
/// evaluates, which may be a call of any function that is not a known builtin (reported as
/// [`SessionEffect::ServerCode`]). DDL changes the schema, not the session, and has no effect
/// except creating a temporary object or evaluating an expression written in it right away
/// (`ALTER TABLE ... ADD COLUMN ... DEFAULT`, `... TYPE ... USING`, a validated `CHECK`,
/// partition bounds, `ALTER DOMAIN ... ADD CHECK`), whose function calls count. Transaction
/// control, `SHOW`, `NOTIFY`, `VACUUM`, `ANALYZE`, `LOCK`, `CHECKPOINT`, cursor `FETCH`/`CLOSE`
/// and `COPY` to or from the client have none. See [`Analysis::leaves_session_alone`] for what
/// the text cannot show.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionEffect {
    /// `SET [SESSION] name ...`, including the spellings the grammar turns into a setting:
    /// `SET TIME ZONE` (`timezone`), `SET NAMES` (`client_encoding`), `SET SCHEMA`
    /// (`search_path`), `SET XML OPTION` (`xmloption`), `SET ... TO DEFAULT` and
    /// `SET ... FROM CURRENT`. `SET TRANSACTION ...` reports the settings it assigns
    /// (`transaction_isolation`, `transaction_read_only`, `transaction_deferrable`),
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION ...` their `default_` counterparts, and
    /// `SET TRANSACTION SNAPSHOT` the name `transaction snapshot`. The name is lowercased, as
    /// PostgreSQL compares setting names.
    Set {
        /// The setting's name.
        name: Arc<str>,
    },
    /// `SET LOCAL name ...` (also `SET LOCAL ROLE`, with the name `role`, and
    /// `SET LOCAL SESSION AUTHORIZATION`, with the name `session_authorization`): lasts until
    /// the end of the transaction.
    SetLocal {
        /// The setting's name.
        name: Arc<str>,
    },
    /// `RESET name` (`RESET TIME ZONE` is `timezone`, `RESET TRANSACTION ISOLATION LEVEL` is
    /// `transaction_isolation`).
    Reset {
        /// The setting's name.
        name: Arc<str>,
    },
    /// `RESET ALL`.
    ResetAll,
    /// `SET [SESSION] ROLE ...` or `RESET ROLE`.
    Role,
    /// `SET [SESSION] SESSION AUTHORIZATION ...` or `RESET SESSION AUTHORIZATION`.
    SessionAuthorization,
    /// `DISCARD ALL|PLANS|SEQUENCES|TEMP`.
    Discard(DiscardTarget),
    /// SQL `PREPARE name AS ...`. The prepared statement does not run at `PREPARE` time, so
    /// its own effects are not reported (an `EXECUTE` of it is [`SessionEffect::ServerCode`]).
    Prepare(Arc<str>),
    /// SQL `DEALLOCATE [PREPARE] name`; `None` for `DEALLOCATE ALL`.
    Deallocate(Option<Arc<str>>),
    /// `LISTEN` or `UNLISTEN`.
    Listen,
    /// Creates a temporary object: `CREATE TEMP TABLE/VIEW/SEQUENCE`, `CREATE TEMP TABLE ... AS`,
    /// `SELECT ... INTO TEMP`, or a relation, type or function created in schema `pg_temp`
    /// (`CREATE TABLE pg_temp.x`). Its unqualified name may shadow a table (or type) for the
    /// session's later statements.
    TemporaryObject,
    /// A call of `set_config` (bare or `pg_catalog.`-qualified, in any case the parser folds,
    /// anywhere in the statement that runs).
    SetConfig,
    /// Another change of session state, named: `cursor WITH HOLD` (`DECLARE ... WITH HOLD`,
    /// a cursor that outlives the transaction), `LOAD`, `setseed` (the session's random
    /// seed), `pg_reload_conf` (settings from the configuration file change),
    /// `pg_replication_origin_session_setup` and `pg_replication_origin_session_reset`.
    Other(&'static str),
    /// Code runs on the server that the text does not show, so anything may have changed:
    /// `DO`, `CALL`, `EXECUTE` of a SQL-prepared statement, `COPY ... PROGRAM`, a call of a
    /// function that is not a builtin known to leave the session alone, a construct the
    /// normalizer does not analyze, text that does not parse, and text too large to analyze. The
    /// string says why (for example `DO block`, `function app.set_tenant` or
    /// `text too large to analyze`).
    ///
    /// A function is a known builtin when it is on the normalizer's own builtin allow list,
    /// among the volatile builtins it knows (`now`, `random`, `nextval`, `current_setting`,
    /// ...), a `pg_*` or `txid_*` function, or (qualified with `pg_catalog`) one the grammar
    /// calls for SQL syntax such as `LIKE ... ESCAPE`; and it is written bare or qualified with
    /// `pg_catalog`, never another schema. Casts and operators are not function calls here.
    /// A function added with
    /// [`NormalizerConfigBuilder::with_allowed_function`](crate::NormalizerConfigBuilder::with_allowed_function)
    /// or `with_function_volatility` still counts here: the allow list vouches for its result,
    /// not for what it does to the session.
    ServerCode(Arc<str>),
}

impl fmt::Display for SessionEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEffect::Set { name } => write!(f, "SET {name}"),
            SessionEffect::SetLocal { name } => write!(f, "SET LOCAL {name}"),
            SessionEffect::Reset { name } => write!(f, "RESET {name}"),
            SessionEffect::ResetAll => f.write_str("RESET ALL"),
            SessionEffect::Role => f.write_str("SET ROLE"),
            SessionEffect::SessionAuthorization => f.write_str("SET SESSION AUTHORIZATION"),
            SessionEffect::Discard(t) => write!(f, "DISCARD {}", t.as_str()),
            SessionEffect::Prepare(name) => write!(f, "PREPARE {name}"),
            SessionEffect::Deallocate(Some(name)) => write!(f, "DEALLOCATE {name}"),
            SessionEffect::Deallocate(None) => f.write_str("DEALLOCATE ALL"),
            SessionEffect::Listen => f.write_str("LISTEN"),
            SessionEffect::TemporaryObject => f.write_str("creates a temporary object"),
            SessionEffect::SetConfig => f.write_str("set_config()"),
            SessionEffect::Other(what) => f.write_str(what),
            SessionEffect::ServerCode(why) => write!(f, "runs server code: {why}"),
        }
    }
}

/// What `DISCARD` drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiscardTarget {
    /// `DISCARD ALL`: all of the below, plus settings, prepared statements, cursors, listens
    /// and advisory locks.
    All,
    /// `DISCARD PLANS`: cached query plans.
    Plans,
    /// `DISCARD SEQUENCES`: cached sequence state (`currval`, `lastval`).
    Sequences,
    /// `DISCARD TEMP`: the session's temporary objects.
    Temp,
}

impl DiscardTarget {
    /// The keyword as written after `DISCARD`.
    pub fn as_str(self) -> &'static str {
        match self {
            DiscardTarget::All => "ALL",
            DiscardTarget::Plans => "PLANS",
            DiscardTarget::Sequences => "SEQUENCES",
            DiscardTarget::Temp => "TEMP",
        }
    }
}

/// Everything known about one statement of the text.
#[derive(Clone)]
pub struct StatementAnalysis {
    pub(crate) kind: StatementKind,
    pub(crate) range: Range<usize>,
    pub(crate) normalized: Box<str>,
    pub(crate) identity: StatementIdentity,
    pub(crate) key_bytes: Box<[u8]>,
    pub(crate) params: Vec<Parameter>,
    pub(crate) client_param_count: u32,
    pub(crate) reads: Vec<TableName>,
    pub(crate) writes: WriteEffect,
    pub(crate) functions: Vec<Arc<str>>,
    pub(crate) operators: Vec<Arc<str>>,
    pub(crate) temp_created: Vec<TableName>,
    pub(crate) session_effects: Vec<SessionEffect>,
    pub(crate) cacheability: Cacheability,
    /// Shared, so that an analysis the shape memo answers with copies no restriction.
    pub(crate) read_restrictions: Arc<[ColumnRestriction]>,
    pub(crate) write_keys: Option<Arc<WriteKeys>>,
}

impl StatementAnalysis {
    /// What the statement does.
    pub fn kind(&self) -> StatementKind {
        self.kind
    }

    /// The byte range of the statement in the analyzed text.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The normalized text: tokens separated by single spaces, keywords and unquoted identifiers in
    /// lower case, comments dropped, literals replaced by `$n` placeholders numbered after the
    /// client's own `$1..$k`, and constant lists collapsed to their first item plus `/*, ... */`.
    pub fn normalized(&self) -> &str {
        &self.normalized
    }

    /// The statement identity (see [`StatementIdentity`]).
    pub fn identity(&self) -> StatementIdentity {
        self.identity
    }

    /// The statement bytes for `strata_core::CacheKey::builder`: the identity followed by how each
    /// lifted literal was written and the length of each collapsed list. Two statements whose
    /// key bytes and parameters match return the same rows.
    pub fn key_bytes(&self) -> &[u8] {
        &self.key_bytes
    }

    /// The literals lifted out of the text, in order.
    pub fn params(&self) -> &[Parameter] {
        &self.params
    }

    /// How many client parameters (`$1..$n` written in the text) the statement expects: the
    /// highest `$n` seen.
    pub fn client_param_count(&self) -> u32 {
        self.client_param_count
    }

    /// The tables (and views) read, deduplicated, in order of appearance. CTE names are not tables.
    pub fn reads(&self) -> &[TableName] {
        &self.reads
    }

    /// The tables made stale.
    pub fn writes(&self) -> &WriteEffect {
        &self.writes
    }

    /// The functions called, as written (schema-qualified when written so), deduplicated.
    pub fn functions(&self) -> &[Arc<str>] {
        &self.functions
    }

    /// The operators PostgreSQL ships that the statement names unqualified, as `operator =`
    /// (`BETWEEN` as `operator >=` and `operator <=`), deduplicated. A user operator of the same
    /// name for other argument types is what runs where the operands have those types.
    pub fn operators(&self) -> &[Arc<str>] {
        &self.operators
    }

    /// Whether the statement's result may be cached, and why not.
    pub fn cacheability(&self) -> &Cacheability {
        &self.cacheability
    }

    /// Temporary tables this statement creates (`CREATE TEMP TABLE`, `SELECT ... INTO TEMP`).
    /// Later statements of the session may read them without the `pg_temp.` prefix, which the
    /// text alone cannot reveal; a caller should stop caching reads of these names (or the
    /// session) once it sees one.
    pub fn temporary_tables_created(&self) -> &[TableName] {
        &self.temp_created
    }

    /// What the statement may do to its session's state, deduplicated, in the order written.
    /// Empty when the text shows nothing (see [`Analysis::leaves_session_alone`] for what the
    /// text cannot show).
    pub fn session_effects(&self) -> &[SessionEffect] {
        &self.session_effects
    }

    /// Restrictions a `SELECT` puts on the columns of the tables it reads: for a later layer
    /// that knows each table's key column, which rows of a table the result can depend on.
    /// Empty for other statements and when nothing is certain.
    ///
    /// # Eligibility
    /// A restriction on column `c` of a range-table entry of table `t` is listed only when all
    /// of these hold:
    /// - the condition is a top-level `AND` term of the `WHERE` clause of the `SELECT` level
    ///   whose `FROM` holds the entry (not under `OR`/`NOT`/`CASE`, not in `HAVING`, not in a
    ///   `JOIN ... ON`, not in a subquery of another level);
    /// - one side is a bare column reference (no cast, function, arithmetic, `COLLATE` or
    ///   subscript) that certainly resolves to that entry: qualified by the entry's alias (or,
    ///   without alias, its table name, optionally with the schema) when no other entry of the
    ///   level answers to that qualifier, or unqualified when the entry is its level's only one;
    /// - the entry is a plain table reference: not a CTE, subquery, function or `TABLESAMPLE`,
    ///   not inside an aliased join, without a column alias list;
    /// - the operator is `=`, `<`, `<=`, `>`, `>=` (either operand order; bare or
    ///   `OPERATOR(pg_catalog.op)`), `IN (list)`, `= ANY (array value)`, `= ANY (ARRAY[list])`,
    ///   or `BETWEEN` (not `NOT BETWEEN`, not `BETWEEN SYMMETRIC`);
    /// - the other side is a lifted literal or a client parameter with at most one explicit
    ///   cast to a type without modifiers ([`ValueRef`](crate::ValueRef)); a list item may be
    ///   `NULL`; a negative number outside a collapsed list (`c = -5`), which PostgreSQL folds
    ///   into one constant while the literal lifted is `5`, is not used;
    /// - a range has both a lower and an upper bound (open ranges are not listed);
    /// - the contract below holds for the table and column.
    ///
    /// When one reference has several eligible terms on one column, each alone is a valid
    /// restriction; the one listed is the shortest explicit list of points, else an array
    /// value, else a `BETWEEN`, else the first lower with the first upper bound.
    ///
    /// # Contract
    /// Relations are grouped by their name without schema (the text after the last dot of the
    /// [`TableName`], so `t`, `public.t` and `other.t` are one group, as `strata` keys versions).
    /// If the list holds a restriction on column `c` of a table of group `g`, then **every**
    /// reference to a relation of group `g` anywhere in the statement (each `FROM` entry, in
    /// every CTE body, subquery and set-operation branch, and every CTE reference of that name)
    /// carries a restriction on `c`, and each is in the list, once per reference (a self-join
    /// restricted on both sides gives two). The result then depends only on the rows of those
    /// relations whose `c` is in the union of the listed values. If any reference is not
    /// restricted on `c`, nothing on `c` is listed for the group, so a table whose key column
    /// has no restriction here must be treated as read whole.
    ///
    /// # Why a restriction holds
    /// A restriction comes from a top-level `AND` term of the `WHERE` clause of the `SELECT`
    /// level whose `FROM` holds the table's entry, comparing a bare column of that entry with
    /// a literal or parameter under `=`, `<`, `<=`, `>`, `>=`, `IN (...)`, `= ANY (...)` or
    /// `BETWEEN`. PostgreSQL applies such a term to every row of the entry before grouping,
    /// aggregates, windows, `DISTINCT`, `ORDER BY` and `LIMIT`, and to every row the joins of
    /// that level produce, so a row of the table outside the values contributes nothing to
    /// the level's result, whatever else it holds; the level's result is all an outer level
    /// sees of it. These operators are strict (a `NULL` operand gives `NULL`, which `WHERE`
    /// rejects), so the entry may also be on the nullable side of an outer join: the rows
    /// the join extends with `NULL`s fail the term, and the rows it does produce from the
    /// table are ones whose column is in the values. The term in a `JOIN ... ON` clause, under
    /// `OR`, `NOT` or `CASE`, in `HAVING`, or at another level (a correlated subquery naming the
    /// outer table) is not used: there a row outside the values can still change the result.
    /// An unqualified column is attributed only when its level has a single `FROM` entry; if
    /// the table has no such column the name refers to an outer level, but then the column is
    /// not the table's key either, so a layer that only uses restrictions on the key column
    /// is never misled.
    ///
    /// References are the ones the text shows. A relation the statement reaches through
    /// another one (a view's base tables, the children of an inheritance or partition parent,
    /// tables a rule or a function reads) is read whole as far as this list knows: a later
    /// layer that expands reads through the catalog must treat such a table as read whole,
    /// even when the text also reads it directly with a restriction.
    ///
    /// Whether the comparison means what the key's units assume (the column's type, the cast,
    /// the literal's type, the operator resolving to the built-in one, the collation) is the
    /// later layer's to check with the catalog; so is whether the relation is a table at all
    /// (a view, for instance, has no key).
    pub fn read_restrictions(&self) -> &[ColumnRestriction] {
        &self.read_restrictions
    }

    /// What an `INSERT`, `UPDATE` or `DELETE` says about the rows it writes (see
    /// [`WriteKeys`]); `None` for other statements, and for writes whose rows the text cannot
    /// tell (several tables written, a data-modifying `WITH`, `UPDATE ... FROM`,
    /// `DELETE ... USING`, a function that may write).
    pub fn write_keys(&self) -> Option<&WriteKeys> {
        self.write_keys.as_deref()
    }
}

impl fmt::Debug for StatementAnalysis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatementAnalysis")
            .field("kind", &self.kind)
            .field("identity", &self.identity)
            .field("params", &self.params.len())
            .field("client_param_count", &self.client_param_count)
            .field("reads", &self.reads)
            .field("writes", &self.writes)
            .field("cacheability", &self.cacheability)
            .field("session_effects", &self.session_effects)
            .field("read_restrictions", &self.read_restrictions)
            .field("write_keys", &self.write_keys)
            .finish_non_exhaustive()
    }
}

/// Everything known about a SQL text: its statements and their roll-up.
#[derive(Clone)]
pub struct Analysis {
    pub(crate) statements: Vec<StatementAnalysis>,
    pub(crate) hints: Hints,
    pub(crate) identity: StatementIdentity,
    pub(crate) key_bytes: Box<[u8]>,
    pub(crate) reads: Vec<TableName>,
    pub(crate) writes: WriteEffect,
    pub(crate) cacheability: Cacheability,
    pub(crate) client_param_count: u32,
    /// The effect of text that did not parse or was too large to analyze
    /// ([`SessionEffect::ServerCode`]); `None` otherwise.
    pub(crate) unparsed: Option<SessionEffect>,
}

impl Analysis {
    /// The statements, in text order. Empty when the text did not parse, was too large to
    /// analyze or holds no statement.
    pub fn statements(&self) -> &[StatementAnalysis] {
        &self.statements
    }

    /// The kind of a single-statement text; `None` for zero or several statements (so also for
    /// text that did not parse or was too large to analyze).
    pub fn kind(&self) -> Option<StatementKind> {
        match self.statements.as_slice() {
            [one] => Some(one.kind),
            _ => None,
        }
    }

    /// Whether the text parsed.
    pub fn is_parse_error(&self) -> bool {
        matches!(self.cacheability, Cacheability::NotCacheable(NotCacheable::ParseError(_)))
    }

    /// The hints read from the text's comments.
    pub fn hints(&self) -> &Hints {
        &self.hints
    }

    /// The identity of the whole text (all statements in order).
    pub fn identity(&self) -> StatementIdentity {
        self.identity
    }

    /// The statement bytes for `strata_core::CacheKey::builder` for the whole text (see
    /// [`StatementAnalysis::key_bytes`]).
    pub fn key_bytes(&self) -> &[u8] {
        &self.key_bytes
    }

    /// All lifted literals of all statements, in order.
    pub fn params(&self) -> impl Iterator<Item = &Parameter> + '_ {
        self.statements.iter().flat_map(|s| s.params.iter())
    }

    /// The highest client parameter `$n` of any statement.
    pub fn client_param_count(&self) -> u32 {
        self.client_param_count
    }

    /// Tables read by any statement, deduplicated.
    pub fn reads(&self) -> &[TableName] {
        &self.reads
    }

    /// The tables a cached result of this text depends on: [`Analysis::reads`] plus the tables
    /// declared by a `tables=` hint.
    pub fn dependencies(&self) -> Vec<TableName> {
        let mut deps = self.reads.clone();
        for t in self.hints.tables() {
            if !deps.contains(t) {
                deps.push(t.clone());
            }
        }
        deps
    }

    /// Temporary tables created by any statement (see
    /// [`StatementAnalysis::temporary_tables_created`]).
    pub fn temporary_tables_created(&self) -> impl Iterator<Item = &TableName> + '_ {
        self.statements.iter().flat_map(|s| s.temp_created.iter())
    }

    /// The union of the statements' write effects ([`WriteEffect::Unknown`] for unparsable text
    /// and text too large to analyze).
    pub fn writes(&self) -> &WriteEffect {
        &self.writes
    }

    /// Whether the whole text's result may be cached: every statement is cacheable, there is at
    /// least one, and no `cache=off` hint.
    pub fn cacheability(&self) -> &Cacheability {
        &self.cacheability
    }

    /// The session effects of every statement, statement by statement (see
    /// [`StatementAnalysis::session_effects`]; an effect appears once per statement that has
    /// it). Text that did not parse or was too large to analyze yields one
    /// [`SessionEffect::ServerCode`].
    pub fn session_effects(&self) -> impl Iterator<Item = &SessionEffect> + '_ {
        self.unparsed.iter().chain(self.statements.iter().flat_map(|s| s.session_effects.iter()))
    }

    /// Whether the text, as written, leaves its session's state alone: no statement has a
    /// [`SessionEffect`]. Text that did not parse or was too large to analyze does not
    /// (anything may run); empty text, blanks, comments and lone semicolons do.
    ///
    /// This is judged from the text alone. Code the text does not show may still run when a
    /// statement does and change the session: triggers, rules, views, row-level security
    /// policies, column defaults, check constraints, user-defined operators and casts, and
    /// type input functions can call user functions, and a `search_path` set earlier can make
    /// a bare builtin name resolve to a user function of the same name. Only the catalog shows
    /// those; checking it is the caller's job.
    pub fn leaves_session_alone(&self) -> bool {
        self.session_effects().next().is_none()
    }
}

impl fmt::Debug for Analysis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Analysis")
            .field("statements", &self.statements)
            .field("hints", &self.hints)
            .field("identity", &self.identity)
            .field("writes", &self.writes)
            .field("cacheability", &self.cacheability)
            .field("unparsed", &self.unparsed)
            .finish_non_exhaustive()
    }
}
