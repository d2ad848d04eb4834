//! Session effects read from the parse tree: every SQL construct that changes a session's state
//! is reported (settings, role, `DISCARD`, prepared statements, listens, temporary objects,
//! `set_config` however it is spelled or nested, server code the text does not show), and texts
//! that only read or write data leave the session alone. (The regression corpus and the shape
//! memo are checked in `corpus.rs` and `shapes.rs`.)
//! Review changes with `UPDATE_EXPECT=1 cargo test -p strata-normalizer --test session_effects`.

use std::fmt::Write as _;
use std::sync::Arc;

use expect_test::{expect, Expect};
use strata_normalizer::{
    analyze, Analysis, DiscardTarget, Normalizer, NormalizerConfig, SessionEffect, Volatility,
};

/// One line per statement with its effects, then whether the text leaves the session alone.
fn render(a: &Analysis) -> String {
    let mut out = String::new();
    for s in a.statements() {
        let effects: Vec<String> = s.session_effects().iter().map(|e| format!("{e:?}")).collect();
        let _ = write!(
            out,
            "[{}] {} / ",
            s.kind(),
            if effects.is_empty() { "-".to_owned() } else { effects.join(", ") }
        );
    }
    if a.statements().is_empty() {
        let effects: Vec<String> = a.session_effects().map(|e| format!("{e:?}")).collect();
        let _ = write!(
            out,
            "no statement: {} / ",
            if effects.is_empty() { "-".to_owned() } else { effects.join(", ") }
        );
    }
    let _ = write!(out, "{}", if a.leaves_session_alone() { "alone" } else { "CHANGES SESSION" });
    out
}

fn check(cases: &[&str], expect: Expect) {
    check_with(&Normalizer::default(), cases, expect);
}

fn check_with(normalizer: &Normalizer, cases: &[&str], expect: Expect) {
    let shown = |sql: &str| {
        // Blank texts are shown quoted, so the table shows what they hold.
        if sql.trim().is_empty() || sql.contains(['\n', '\t']) {
            format!("{sql:?}")
        } else {
            sql.to_owned()
        }
    };
    let out: Vec<String> =
        cases.iter().map(|sql| format!("{}\n  {}", shown(sql), render(&normalizer.analyze(sql)))).collect();
    expect.assert_eq(&(out.join("\n") + "\n"));
}

#[test]
fn settings() {
    check(
        &[
            "SET search_path = other",
            "SET SESSION search_path TO a, b",
            "SET LOCAL search_path = a",
            "set \"Search_Path\" = a",
            "SET TIME ZONE 'UTC'",
            "SET TIME ZONE LOCAL",
            "SET NAMES 'LATIN1'",
            "SET SCHEMA 'x'",
            "SET XML OPTION DOCUMENT",
            "SET work_mem FROM CURRENT",
            "SET statement_timeout TO DEFAULT",
            "SET myapp.tenant = '42'",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
            "SET LOCAL TRANSACTION READ WRITE",
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
            "RESET search_path",
            "RESET TIME ZONE",
            "RESET TRANSACTION ISOLATION LEVEL",
            "RESET ALL",
        ],
        expect![[r#"
            SET search_path = other
              [session] Set { name: "search_path" } / CHANGES SESSION
            SET SESSION search_path TO a, b
              [session] Set { name: "search_path" } / CHANGES SESSION
            SET LOCAL search_path = a
              [session] SetLocal { name: "search_path" } / CHANGES SESSION
            set "Search_Path" = a
              [session] Set { name: "search_path" } / CHANGES SESSION
            SET TIME ZONE 'UTC'
              [session] Set { name: "timezone" } / CHANGES SESSION
            SET TIME ZONE LOCAL
              [session] Set { name: "timezone" } / CHANGES SESSION
            SET NAMES 'LATIN1'
              [session] Set { name: "client_encoding" } / CHANGES SESSION
            SET SCHEMA 'x'
              [session] Set { name: "search_path" } / CHANGES SESSION
            SET XML OPTION DOCUMENT
              [session] Set { name: "xmloption" } / CHANGES SESSION
            SET work_mem FROM CURRENT
              [session] Set { name: "work_mem" } / CHANGES SESSION
            SET statement_timeout TO DEFAULT
              [session] Set { name: "statement_timeout" } / CHANGES SESSION
            SET myapp.tenant = '42'
              [session] Set { name: "myapp.tenant" } / CHANGES SESSION
            SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE
              [session] Set { name: "transaction_isolation" }, Set { name: "transaction_read_only" }, Set { name: "transaction_deferrable" } / CHANGES SESSION
            SET LOCAL TRANSACTION READ WRITE
              [session] SetLocal { name: "transaction_read_only" } / CHANGES SESSION
            SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ
              [session] Set { name: "default_transaction_isolation" } / CHANGES SESSION
            SET TRANSACTION SNAPSHOT '00000003-0000001B-1'
              [session] Set { name: "transaction snapshot" } / CHANGES SESSION
            RESET search_path
              [session] Reset { name: "search_path" } / CHANGES SESSION
            RESET TIME ZONE
              [session] Reset { name: "timezone" } / CHANGES SESSION
            RESET TRANSACTION ISOLATION LEVEL
              [session] Reset { name: "transaction_isolation" } / CHANGES SESSION
            RESET ALL
              [session] ResetAll / CHANGES SESSION
        "#]],
    );
}

#[test]
fn role_and_session_authorization() {
    check(
        &[
            "SET ROLE bob",
            "SET SESSION ROLE bob",
            "SET ROLE NONE",
            "SET LOCAL ROLE bob",
            "RESET ROLE",
            "SET SESSION AUTHORIZATION bob",
            "SET SESSION AUTHORIZATION DEFAULT",
            "SET LOCAL SESSION AUTHORIZATION bob",
            "RESET SESSION AUTHORIZATION",
        ],
        expect![[r#"
            SET ROLE bob
              [session] Role / CHANGES SESSION
            SET SESSION ROLE bob
              [session] Role / CHANGES SESSION
            SET ROLE NONE
              [session] Role / CHANGES SESSION
            SET LOCAL ROLE bob
              [session] SetLocal { name: "role" } / CHANGES SESSION
            RESET ROLE
              [session] Role / CHANGES SESSION
            SET SESSION AUTHORIZATION bob
              [session] SessionAuthorization / CHANGES SESSION
            SET SESSION AUTHORIZATION DEFAULT
              [session] SessionAuthorization / CHANGES SESSION
            SET LOCAL SESSION AUTHORIZATION bob
              [session] SetLocal { name: "session_authorization" } / CHANGES SESSION
            RESET SESSION AUTHORIZATION
              [session] SessionAuthorization / CHANGES SESSION
        "#]],
    );
}

#[test]
fn discard_prepare_listen_cursors_and_load() {
    check(
        &[
            "DISCARD ALL",
            "DISCARD PLANS",
            "DISCARD SEQUENCES",
            "DISCARD TEMP",
            "PREPARE p AS SELECT 1",
            "PREPARE q (text) AS SELECT set_config('role', $1, false)",
            "EXECUTE p",
            "DEALLOCATE p",
            "DEALLOCATE PREPARE p",
            "DEALLOCATE ALL",
            "LISTEN c",
            "UNLISTEN c",
            "UNLISTEN *",
            "LOAD 'auto_explain'",
            "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t",
            "DECLARE c CURSOR WITH HOLD FOR SELECT set_config('a', 'b', false)",
            "DECLARE c CURSOR FOR SELECT * FROM t",
            "FETCH 10 FROM c",
            "CLOSE c",
        ],
        expect![[r#"
            DISCARD ALL
              [session] Discard(All) / CHANGES SESSION
            DISCARD PLANS
              [session] Discard(Plans) / CHANGES SESSION
            DISCARD SEQUENCES
              [session] Discard(Sequences) / CHANGES SESSION
            DISCARD TEMP
              [session] Discard(Temp) / CHANGES SESSION
            PREPARE p AS SELECT 1
              [utility] Prepare("p") / CHANGES SESSION
            PREPARE q (text) AS SELECT set_config('role', $1, false)
              [utility] Prepare("q") / CHANGES SESSION
            EXECUTE p
              [utility] ServerCode("EXECUTE of a prepared statement") / CHANGES SESSION
            DEALLOCATE p
              [utility] Deallocate(Some("p")) / CHANGES SESSION
            DEALLOCATE PREPARE p
              [utility] Deallocate(Some("p")) / CHANGES SESSION
            DEALLOCATE ALL
              [utility] Deallocate(None) / CHANGES SESSION
            LISTEN c
              [utility] Listen / CHANGES SESSION
            UNLISTEN c
              [utility] Listen / CHANGES SESSION
            UNLISTEN *
              [utility] Listen / CHANGES SESSION
            LOAD 'auto_explain'
              [utility] Other("LOAD") / CHANGES SESSION
            DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t
              [utility] Other("cursor WITH HOLD") / CHANGES SESSION
            DECLARE c CURSOR WITH HOLD FOR SELECT set_config('a', 'b', false)
              [utility] Other("cursor WITH HOLD"), SetConfig / CHANGES SESSION
            DECLARE c CURSOR FOR SELECT * FROM t
              [utility] - / alone
            FETCH 10 FROM c
              [utility] - / alone
            CLOSE c
              [utility] - / alone
        "#]],
    );
}

#[test]
fn temporary_objects() {
    check(
        &[
            "CREATE TEMP TABLE x(a int)",
            "CREATE TEMPORARY TABLE IF NOT EXISTS x(a int) ON COMMIT DROP",
            "CREATE TEMPORARY VIEW v AS SELECT 1",
            "CREATE TEMP SEQUENCE s",
            "SELECT 1 INTO TEMP x",
            "SELECT * INTO TEMPORARY TABLE x FROM t",
            "SELECT 1 INTO TEMP x UNION SELECT 2",
            "CREATE TEMP TABLE x AS SELECT * FROM t",
            "CREATE TABLE pg_temp.x(a int)",
            "CREATE VIEW pg_temp.v AS SELECT 1",
            "CREATE TYPE pg_temp.pair AS (a int, b int)",
            "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE TABLE x(a int)",
            "CREATE UNLOGGED TABLE x(a int)",
            "SELECT 1 INTO x",
            "CREATE TABLE x AS SELECT 1",
            "INSERT INTO pg_temp.x VALUES (1)",
        ],
        expect![[r#"
            CREATE TEMP TABLE x(a int)
              [ddl] TemporaryObject / CHANGES SESSION
            CREATE TEMPORARY TABLE IF NOT EXISTS x(a int) ON COMMIT DROP
              [ddl] TemporaryObject / CHANGES SESSION
            CREATE TEMPORARY VIEW v AS SELECT 1
              [ddl] TemporaryObject / CHANGES SESSION
            CREATE TEMP SEQUENCE s
              [ddl] TemporaryObject / CHANGES SESSION
            SELECT 1 INTO TEMP x
              [select] TemporaryObject / CHANGES SESSION
            SELECT * INTO TEMPORARY TABLE x FROM t
              [select] TemporaryObject / CHANGES SESSION
            SELECT 1 INTO TEMP x UNION SELECT 2
              [select] TemporaryObject / CHANGES SESSION
            CREATE TEMP TABLE x AS SELECT * FROM t
              [ddl] TemporaryObject / CHANGES SESSION
            CREATE TABLE pg_temp.x(a int)
              [ddl] TemporaryObject / CHANGES SESSION
            CREATE VIEW pg_temp.v AS SELECT 1
              [ddl] TemporaryObject / CHANGES SESSION
            CREATE TYPE pg_temp.pair AS (a int, b int)
              [ddl] TemporaryObject / CHANGES SESSION
            CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'
              [ddl] TemporaryObject / CHANGES SESSION
            CREATE TABLE x(a int)
              [ddl] - / alone
            CREATE UNLOGGED TABLE x(a int)
              [ddl] - / alone
            SELECT 1 INTO x
              [select] - / alone
            CREATE TABLE x AS SELECT 1
              [ddl] - / alone
            INSERT INTO pg_temp.x VALUES (1)
              [insert] - / alone
        "#]],
    );
}

#[test]
fn set_config_however_spelled_and_wherever_nested() {
    check(
        &[
            "SELECT set_config('search_path', 'other', false)",
            "select/**/set_config('a','b',false)",
            "SELECT \"set_config\"('a','b',false)",
            "SELECT PG_CATALOG.SET_CONFIG('a', 'b', false)",
            "SELECT \"pg_catalog\".\"set_config\"('a', 'b', true)",
            "SELECT * FROM t WHERE x = (SELECT set_config('role','bob',false))",
            "WITH c AS (SELECT set_config('a', 'b', false)) SELECT 1",
            "SELECT * FROM set_config('a', 'b', false)",
            "SELECT * FROM t, LATERAL (SELECT set_config('a', t.x, false)) s",
            "SELECT * FROM (VALUES (set_config('a', 'b', false))) v",
            "SELECT lower(set_config('a', 'b', false))",
            "SELECT count(*) FILTER (WHERE set_config('a', 'b', false) = '') FROM t",
            "SELECT * FROM t ORDER BY set_config('a', x, false)",
            "SELECT CASE WHEN x THEN set_config('a', 'b', false) END FROM t",
            "INSERT INTO t VALUES (set_config('a', 'b', false))",
            "INSERT INTO t SELECT set_config('a', 'b', false)",
            "INSERT INTO t (a[set_config('a', 'b', false)::int]) VALUES (1)",
            "INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = set_config('a', 'b', false)",
            "UPDATE t SET a = 1 RETURNING set_config('a', 'b', false)",
            "UPDATE t SET a = set_config('a', 'b', false)",
            "DELETE FROM t WHERE a = set_config('a', 'b', false)",
            "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN UPDATE SET b = set_config('a', 'b', false)",
            "WITH w AS (UPDATE t SET a = 1 RETURNING set_config('a', 'b', false)) SELECT * FROM w",
            "COPY (SELECT set_config('a', 'b', false)) TO STDOUT",
            "SELECT set_config('a', 'b', false), set_config('c', 'd', true)",
        ],
        expect![[r#"
            SELECT set_config('search_path', 'other', false)
              [select] SetConfig / CHANGES SESSION
            select/**/set_config('a','b',false)
              [select] SetConfig / CHANGES SESSION
            SELECT "set_config"('a','b',false)
              [select] SetConfig / CHANGES SESSION
            SELECT PG_CATALOG.SET_CONFIG('a', 'b', false)
              [select] SetConfig / CHANGES SESSION
            SELECT "pg_catalog"."set_config"('a', 'b', true)
              [select] SetConfig / CHANGES SESSION
            SELECT * FROM t WHERE x = (SELECT set_config('role','bob',false))
              [select] SetConfig / CHANGES SESSION
            WITH c AS (SELECT set_config('a', 'b', false)) SELECT 1
              [select] SetConfig / CHANGES SESSION
            SELECT * FROM set_config('a', 'b', false)
              [select] SetConfig / CHANGES SESSION
            SELECT * FROM t, LATERAL (SELECT set_config('a', t.x, false)) s
              [select] SetConfig / CHANGES SESSION
            SELECT * FROM (VALUES (set_config('a', 'b', false))) v
              [select] SetConfig / CHANGES SESSION
            SELECT lower(set_config('a', 'b', false))
              [select] SetConfig / CHANGES SESSION
            SELECT count(*) FILTER (WHERE set_config('a', 'b', false) = '') FROM t
              [select] SetConfig / CHANGES SESSION
            SELECT * FROM t ORDER BY set_config('a', x, false)
              [select] SetConfig / CHANGES SESSION
            SELECT CASE WHEN x THEN set_config('a', 'b', false) END FROM t
              [select] SetConfig / CHANGES SESSION
            INSERT INTO t VALUES (set_config('a', 'b', false))
              [insert] SetConfig / CHANGES SESSION
            INSERT INTO t SELECT set_config('a', 'b', false)
              [insert] SetConfig / CHANGES SESSION
            INSERT INTO t (a[set_config('a', 'b', false)::int]) VALUES (1)
              [insert] SetConfig / CHANGES SESSION
            INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = set_config('a', 'b', false)
              [insert] SetConfig / CHANGES SESSION
            UPDATE t SET a = 1 RETURNING set_config('a', 'b', false)
              [update] SetConfig / CHANGES SESSION
            UPDATE t SET a = set_config('a', 'b', false)
              [update] SetConfig / CHANGES SESSION
            DELETE FROM t WHERE a = set_config('a', 'b', false)
              [delete] SetConfig / CHANGES SESSION
            MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN UPDATE SET b = set_config('a', 'b', false)
              [merge] SetConfig / CHANGES SESSION
            WITH w AS (UPDATE t SET a = 1 RETURNING set_config('a', 'b', false)) SELECT * FROM w
              [select] SetConfig / CHANGES SESSION
            COPY (SELECT set_config('a', 'b', false)) TO STDOUT
              [copy-out] SetConfig / CHANGES SESSION
            SELECT set_config('a', 'b', false), set_config('c', 'd', true)
              [select] SetConfig / CHANGES SESSION
        "#]],
    );
}

#[test]
fn function_calls_are_neutral_only_when_known_builtins() {
    check(
        &[
            "SELECT lower('x')",
            "SELECT count(*) FROM t",
            "SELECT sum(a), avg(a), string_agg(b, ',') FROM t GROUP BY c",
            "SELECT row_number() OVER (PARTITION BY a ORDER BY b), lag(a) OVER w FROM t WINDOW w AS (ORDER BY a)",
            "SELECT int4range(1, 10) @> 5",
            "SELECT now(), random(), nextval('s'), current_setting('search_path')",
            "SELECT pg_sleep(1), pg_catalog.pg_backend_pid(), txid_current()",
            "SELECT extract(year FROM now()), substring('abc' FROM 2), trim(both 'x' FROM 'xax')",
            "SELECT a FROM t WHERE b LIKE 'x%' ESCAPE '!' AND c SIMILAR TO 'y' AND d IS NORMALIZED",
            "SELECT CAST(a AS text), a::int, a + 1, coalesce(a, 0), greatest(a, b) FROM t",
            "SELECT app.set_tenant(1)",
            "SELECT set_tenant(1)",
            "SELECT * FROM app.tenants()",
            "SELECT \"Lower\"('x')",
            "SELECT \"pg_catalog.lower\"('x')",
            "SELECT app.lower('x')",
            "SELECT pg_catalog.format_type(1, 2)",
            "SELECT setseed(0.5)",
            "SELECT pg_reload_conf()",
            "SELECT set_config('a', 'b', false), app.f() FROM app.g() WHERE app.f() > 0",
        ],
        expect![[r#"
            SELECT lower('x')
              [select] - / alone
            SELECT count(*) FROM t
              [select] - / alone
            SELECT sum(a), avg(a), string_agg(b, ',') FROM t GROUP BY c
              [select] - / alone
            SELECT row_number() OVER (PARTITION BY a ORDER BY b), lag(a) OVER w FROM t WINDOW w AS (ORDER BY a)
              [select] - / alone
            SELECT int4range(1, 10) @> 5
              [select] - / alone
            SELECT now(), random(), nextval('s'), current_setting('search_path')
              [select] - / alone
            SELECT pg_sleep(1), pg_catalog.pg_backend_pid(), txid_current()
              [select] - / alone
            SELECT extract(year FROM now()), substring('abc' FROM 2), trim(both 'x' FROM 'xax')
              [select] - / alone
            SELECT a FROM t WHERE b LIKE 'x%' ESCAPE '!' AND c SIMILAR TO 'y' AND d IS NORMALIZED
              [select] - / alone
            SELECT CAST(a AS text), a::int, a + 1, coalesce(a, 0), greatest(a, b) FROM t
              [select] - / alone
            SELECT app.set_tenant(1)
              [select] ServerCode("function app.set_tenant") / CHANGES SESSION
            SELECT set_tenant(1)
              [select] ServerCode("function set_tenant") / CHANGES SESSION
            SELECT * FROM app.tenants()
              [select] ServerCode("function app.tenants") / CHANGES SESSION
            SELECT "Lower"('x')
              [select] ServerCode("function Lower") / CHANGES SESSION
            SELECT "pg_catalog.lower"('x')
              [select] ServerCode("function pg_catalog.lower") / CHANGES SESSION
            SELECT app.lower('x')
              [select] ServerCode("function app.lower") / CHANGES SESSION
            SELECT pg_catalog.format_type(1, 2)
              [select] ServerCode("function pg_catalog.format_type") / CHANGES SESSION
            SELECT setseed(0.5)
              [select] Other("setseed") / CHANGES SESSION
            SELECT pg_reload_conf()
              [select] Other("pg_reload_conf") / CHANGES SESSION
            SELECT set_config('a', 'b', false), app.f() FROM app.g() WHERE app.f() > 0
              [select] SetConfig, ServerCode("function app.f"), ServerCode("function app.g") / CHANGES SESSION
        "#]],
    );
}

#[test]
fn server_code_the_text_does_not_show() {
    check(
        &[
            "DO $$BEGIN EXECUTE 'SET ROLE x'; END$$",
            "DO LANGUAGE plpgsql $$BEGIN NULL; END$$",
            "CALL p()",
            "CALL app.refresh(1, 'x')",
            "COPY t FROM PROGRAM 'gunzip < /tmp/t.gz'",
            "COPY t TO PROGRAM 'cat'",
            "COPY t FROM STDIN",
            "COPY t TO STDOUT",
            "SELECT * FROM JSON_TABLE('[]'::jsonb, '$[*]' COLUMNS (a int PATH '$.a')) j",
            "EXPLAIN ANALYZE EXECUTE p",
        ],
        expect![[r#"
            DO $$BEGIN EXECUTE 'SET ROLE x'; END$$
              [utility] ServerCode("DO block") / CHANGES SESSION
            DO LANGUAGE plpgsql $$BEGIN NULL; END$$
              [utility] ServerCode("DO block") / CHANGES SESSION
            CALL p()
              [utility] ServerCode("CALL p") / CHANGES SESSION
            CALL app.refresh(1, 'x')
              [utility] ServerCode("CALL app.refresh") / CHANGES SESSION
            COPY t FROM PROGRAM 'gunzip < /tmp/t.gz'
              [copy-in] ServerCode("COPY ... PROGRAM") / CHANGES SESSION
            COPY t TO PROGRAM 'cat'
              [copy-out] ServerCode("COPY ... PROGRAM") / CHANGES SESSION
            COPY t FROM STDIN
              [copy-in] - / alone
            COPY t TO STDOUT
              [copy-out] - / alone
            SELECT * FROM JSON_TABLE('[]'::jsonb, '$[*]' COLUMNS (a int PATH '$.a')) j
              [select] ServerCode("unsupported construct JsonTable") / CHANGES SESSION
            EXPLAIN ANALYZE EXECUTE p
              [utility] ServerCode("EXECUTE of a prepared statement") / CHANGES SESSION
        "#]],
    );
}

#[test]
fn explain_counts_what_runs() {
    check(
        &[
            "EXPLAIN ANALYZE SELECT set_config('a', 'b', false)",
            "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = set_config('a', 'b', false)",
            "EXPLAIN ANALYZE CREATE TEMP TABLE x AS SELECT 1",
            "EXPLAIN SELECT set_config('a', 'b', false)",
            "EXPLAIN CREATE TEMP TABLE x AS SELECT 1",
            "EXPLAIN SELECT lower(a) FROM t",
            // The planner folds immutable (and for estimates stable) calls with constant
            // arguments, so a user function may run even without ANALYZE.
            "EXPLAIN SELECT * FROM t WHERE a = app.f(1)",
        ],
        expect![[r#"
            EXPLAIN ANALYZE SELECT set_config('a', 'b', false)
              [utility] SetConfig / CHANGES SESSION
            EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = set_config('a', 'b', false)
              [utility] SetConfig / CHANGES SESSION
            EXPLAIN ANALYZE CREATE TEMP TABLE x AS SELECT 1
              [utility] TemporaryObject / CHANGES SESSION
            EXPLAIN SELECT set_config('a', 'b', false)
              [utility] - / alone
            EXPLAIN CREATE TEMP TABLE x AS SELECT 1
              [utility] - / alone
            EXPLAIN SELECT lower(a) FROM t
              [utility] - / alone
            EXPLAIN SELECT * FROM t WHERE a = app.f(1)
              [utility] ServerCode("function app.f") / CHANGES SESSION
        "#]],
    );
}

#[test]
fn ddl_is_not_session_state_unless_it_runs_what_it_shows() {
    check(
        &[
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ SET ROLE x; SELECT set_config('a', 'b', false) $$",
            "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$BEGIN PERFORM set_config('a', 'b', false); END$$",
            "CREATE FUNCTION f() RETURNS text BEGIN ATOMIC SELECT set_config('a', 'b', false); END",
            "CREATE TABLE t (a int DEFAULT app.f() CHECK (app.g(a)))",
            "CREATE VIEW v AS SELECT set_config('a', 'b', false)",
            "CREATE INDEX ON t (lower(a))",
            "ALTER TABLE t ADD COLUMN c int",
            "ALTER TABLE t ALTER COLUMN c SET DEFAULT app.f()",
            "ALTER TABLE t ADD CONSTRAINT k CHECK (app.f(a)) NOT VALID",
            "ALTER TABLE t ADD COLUMN c text DEFAULT set_config('a', 'b', false)",
            "ALTER TABLE t ALTER COLUMN c TYPE int USING app.to_int(c)",
            "ALTER TABLE t ADD CONSTRAINT k CHECK (app.f(a))",
            "ALTER DOMAIN d ADD CONSTRAINT k CHECK (app.f(VALUE))",
            "CREATE TABLE t1 PARTITION OF t FOR VALUES FROM (app.low()) TO (10)",
            "ALTER SYSTEM SET work_mem = '1GB'",
            "ALTER ROLE bob SET search_path = a",
            "GRANT SELECT ON t TO bob",
            "DROP TABLE t",
        ],
        expect![[r#"
            CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ SET ROLE x; SELECT set_config('a', 'b', false) $$
              [ddl] - / alone
            CREATE PROCEDURE p() LANGUAGE plpgsql AS $$BEGIN PERFORM set_config('a', 'b', false); END$$
              [ddl] - / alone
            CREATE FUNCTION f() RETURNS text BEGIN ATOMIC SELECT set_config('a', 'b', false); END
              [ddl] - / alone
            CREATE TABLE t (a int DEFAULT app.f() CHECK (app.g(a)))
              [ddl] - / alone
            CREATE VIEW v AS SELECT set_config('a', 'b', false)
              [ddl] - / alone
            CREATE INDEX ON t (lower(a))
              [ddl] - / alone
            ALTER TABLE t ADD COLUMN c int
              [ddl] - / alone
            ALTER TABLE t ALTER COLUMN c SET DEFAULT app.f()
              [ddl] - / alone
            ALTER TABLE t ADD CONSTRAINT k CHECK (app.f(a)) NOT VALID
              [ddl] - / alone
            ALTER TABLE t ADD COLUMN c text DEFAULT set_config('a', 'b', false)
              [ddl] SetConfig / CHANGES SESSION
            ALTER TABLE t ALTER COLUMN c TYPE int USING app.to_int(c)
              [ddl] ServerCode("function app.to_int") / CHANGES SESSION
            ALTER TABLE t ADD CONSTRAINT k CHECK (app.f(a))
              [ddl] ServerCode("function app.f") / CHANGES SESSION
            ALTER DOMAIN d ADD CONSTRAINT k CHECK (app.f(VALUE))
              [ddl] ServerCode("function app.f") / CHANGES SESSION
            CREATE TABLE t1 PARTITION OF t FOR VALUES FROM (app.low()) TO (10)
              [ddl] ServerCode("function app.low") / CHANGES SESSION
            ALTER SYSTEM SET work_mem = '1GB'
              [ddl] - / alone
            ALTER ROLE bob SET search_path = a
              [ddl] - / alone
            GRANT SELECT ON t TO bob
              [ddl] - / alone
            DROP TABLE t
              [ddl] - / alone
        "#]],
    );
}

#[test]
fn reads_writes_and_neutral_utilities_leave_the_session_alone() {
    check(
        &[
            "SELECT * FROM users WHERE id = 42",
            "SELECT 'SET search_path = x'",
            "SELECT $$SET ROLE admin; SELECT set_config('a', 'b', false)$$",
            "SELECT 1 -- SET ROLE admin",
            "SELECT 1 /* ; SET ROLE admin; */",
            "SELECT \"set_config\" FROM t",
            "INSERT INTO t (a) VALUES (1) RETURNING id",
            "UPDATE t SET a = lower(b) WHERE id = 1",
            "DELETE FROM t WHERE id = 1",
            "TRUNCATE t",
            "BEGIN",
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SAVEPOINT s",
            "RELEASE SAVEPOINT s",
            "ROLLBACK TO SAVEPOINT s",
            "COMMIT",
            "ROLLBACK",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
            "ROLLBACK PREPARED 'x'",
            "SHOW search_path",
            "NOTIFY c, 'payload'",
            "VACUUM t",
            "ANALYZE t",
            "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
            "SET CONSTRAINTS ALL DEFERRED",
            "CHECKPOINT",
        ],
        expect![[r#"
            SELECT * FROM users WHERE id = 42
              [select] - / alone
            SELECT 'SET search_path = x'
              [select] - / alone
            SELECT $$SET ROLE admin; SELECT set_config('a', 'b', false)$$
              [select] - / alone
            SELECT 1 -- SET ROLE admin
              [select] - / alone
            SELECT 1 /* ; SET ROLE admin; */
              [select] - / alone
            SELECT "set_config" FROM t
              [select] - / alone
            INSERT INTO t (a) VALUES (1) RETURNING id
              [insert] - / alone
            UPDATE t SET a = lower(b) WHERE id = 1
              [update] - / alone
            DELETE FROM t WHERE id = 1
              [delete] - / alone
            TRUNCATE t
              [truncate] - / alone
            BEGIN
              [transaction] - / alone
            START TRANSACTION ISOLATION LEVEL SERIALIZABLE
              [transaction] - / alone
            SAVEPOINT s
              [transaction] - / alone
            RELEASE SAVEPOINT s
              [transaction] - / alone
            ROLLBACK TO SAVEPOINT s
              [transaction] - / alone
            COMMIT
              [transaction] - / alone
            ROLLBACK
              [transaction] - / alone
            PREPARE TRANSACTION 'x'
              [transaction] - / alone
            COMMIT PREPARED 'x'
              [transaction] - / alone
            ROLLBACK PREPARED 'x'
              [transaction] - / alone
            SHOW search_path
              [utility] - / alone
            NOTIFY c, 'payload'
              [utility] - / alone
            VACUUM t
              [utility] - / alone
            ANALYZE t
              [utility] - / alone
            LOCK TABLE t IN ACCESS EXCLUSIVE MODE
              [utility] - / alone
            SET CONSTRAINTS ALL DEFERRED
              [utility] - / alone
            CHECKPOINT
              [utility] - / alone
        "#]],
    );
}

#[test]
fn several_statements_and_texts_without_one() {
    check(
        &[
            "SELECT E'\\''; SET search_path = other; SELECT ';'",
            "BEGIN; SET LOCAL role = 'bob'; SELECT * FROM t; COMMIT",
            "SELECT 1; SELECT app.f(); SELECT app.f()",
            "",
            "   \n\t",
            "-- SET ROLE admin",
            "/* SET ROLE admin */",
            ";",
            "SELECT (",
            "SET ROLE",
            "SELECT 'unterminated",
        ],
        expect![[r#"
            SELECT E'\''; SET search_path = other; SELECT ';'
              [select] - / [session] Set { name: "search_path" } / [select] - / CHANGES SESSION
            BEGIN; SET LOCAL role = 'bob'; SELECT * FROM t; COMMIT
              [transaction] - / [session] SetLocal { name: "role" } / [select] - / [transaction] - / CHANGES SESSION
            SELECT 1; SELECT app.f(); SELECT app.f()
              [select] - / [select] ServerCode("function app.f") / [select] ServerCode("function app.f") / CHANGES SESSION
            ""
              no statement: - / alone
            "   \n\t"
              no statement: - / alone
            -- SET ROLE admin
              no statement: - / alone
            /* SET ROLE admin */
              no statement: - / alone
            ;
              no statement: - / alone
            SELECT (
              no statement: ServerCode("text that did not parse") / CHANGES SESSION
            SET ROLE
              no statement: ServerCode("text that did not parse") / CHANGES SESSION
            SELECT 'unterminated
              no statement: ServerCode("text that did not parse") / CHANGES SESSION
        "#]],
    );
    let n = Normalizer::default();
    for bad in [&b"SELECT 1\0"[..], b"SELECT '\xff'"] {
        let a = n.analyze_bytes(bad);
        assert!(a.is_parse_error());
        assert!(!a.leaves_session_alone(), "{bad:?}");
    }
    let twice = analyze("SELECT app.f(); SELECT app.f()");
    assert_eq!(twice.session_effects().count(), 2, "an effect appears once per statement that has it");
}

#[test]
fn the_allow_list_vouches_for_results_not_for_session_state() {
    let config = NormalizerConfig::builder()
        .with_allowed_function("app.set_tenant")
        .with_allowed_function("my_func")
        .with_function_volatility("set_config", Volatility::Stable)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let n = Normalizer::new(config);
    let a = n.analyze("SELECT app.set_tenant(1)");
    assert!(a.cacheability().is_cacheable(), "{}", a.cacheability());
    check_with(
        &n,
        &["SELECT app.set_tenant(1)", "SELECT my_func()", "SELECT set_config('a', 'b', false)"],
        expect![[r#"
            SELECT app.set_tenant(1)
              [select] ServerCode("function app.set_tenant") / CHANGES SESSION
            SELECT my_func()
              [select] ServerCode("function my_func") / CHANGES SESSION
            SELECT set_config('a', 'b', false)
              [select] SetConfig / CHANGES SESSION
        "#]],
    );
    // Without the builtin allow list nothing is cacheable, but builtins still leave the session alone.
    let bare =
        NormalizerConfig::builder().without_builtin_allow_list().build().unwrap_or_else(|e| panic!("{e}"));
    let a = Normalizer::new(bare).analyze("SELECT lower(a), count(*) FROM t GROUP BY 1");
    assert!(!a.cacheability().is_cacheable());
    assert!(a.leaves_session_alone());
}

#[test]
fn effects_read_well() {
    let shown: Vec<String> = [
        SessionEffect::Set { name: Arc::from("search_path") },
        SessionEffect::SetLocal { name: Arc::from("role") },
        SessionEffect::Reset { name: Arc::from("timezone") },
        SessionEffect::ResetAll,
        SessionEffect::Role,
        SessionEffect::SessionAuthorization,
        SessionEffect::Discard(DiscardTarget::Temp),
        SessionEffect::Prepare(Arc::from("p")),
        SessionEffect::Deallocate(None),
        SessionEffect::Listen,
        SessionEffect::TemporaryObject,
        SessionEffect::SetConfig,
        SessionEffect::Other("LOAD"),
        SessionEffect::ServerCode(Arc::from("DO block")),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    expect![[r#"
        [
            "SET search_path",
            "SET LOCAL role",
            "RESET timezone",
            "RESET ALL",
            "SET ROLE",
            "SET SESSION AUTHORIZATION",
            "DISCARD TEMP",
            "PREPARE p",
            "DEALLOCATE ALL",
            "LISTEN",
            "creates a temporary object",
            "set_config()",
            "LOAD",
            "runs server code: DO block",
        ]
    "#]]
    .assert_debug_eq(&shown);
}
