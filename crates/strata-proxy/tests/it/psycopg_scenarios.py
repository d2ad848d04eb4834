"""What a psycopg 3 application does, through a caching Strata proxy, checked against PostgreSQL.

Run by `psycopg.rs` (`cargo xtask test` installs psycopg):

    python3 psycopg_scenarios.py setup DIRECT_DSN
    python3 psycopg_scenarios.py run PROXY_DSN DIRECT_DSN [pooled]

`pooled`: the proxy pools transactions, so two clients may share one server backend.

`setup` creates the schema straight on PostgreSQL before the proxy reads its catalog; `run` plays
every scenario, reports each, and exits non-zero if any failed. Each scenario repeats its reads so
that a second read is served from the cache where the statement is cacheable: a stale or foreign
answer shows as a difference from what PostgreSQL says.
"""

import decimal
import sys
import threading
import time
import traceback

import psycopg

SCHEMA = """
CREATE TABLE items (id int PRIMARY KEY, v text, n numeric);
INSERT INTO items SELECT g, 'v' || g, g * 1.5 FROM generate_series(1, 1000) g;
CREATE TABLE audit (id int PRIMARY KEY, n int);
INSERT INTO audit VALUES (1, 0);
CREATE FUNCTION audit_it() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN UPDATE audit SET n = n + 1 WHERE id = 1; RETURN NEW; END $$;
CREATE TRIGGER items_audit AFTER UPDATE ON items FOR EACH ROW EXECUTE FUNCTION audit_it();
CREATE FUNCTION bump(i int) RETURNS void LANGUAGE sql AS $$ UPDATE items SET n = n + 1 WHERE id = i $$;
CREATE PROCEDURE rename_item(i int) LANGUAGE plpgsql AS
  $$ BEGIN UPDATE items SET v = 'proc' WHERE id = i; COMMIT; END $$;
CREATE SEQUENCE seq;
CREATE TABLE serial_seq (id serial PRIMARY KEY);
CREATE TABLE accents (k text PRIMARY KEY, v int);
INSERT INTO accents VALUES ('é', 1), ('è', 2);
CREATE SCHEMA other;
CREATE TABLE other.items (id int, v text);
INSERT INTO other.items VALUES (5, 'other');
CREATE TABLE tenants (id int PRIMARY KEY, tenant text, v text);
INSERT INTO tenants VALUES (1, 'a', 'A1'), (2, 'b', 'B2');
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY by_tenant ON tenants USING (tenant = current_setting('app.tenant', true));
CREATE FUNCTION set_tenant(t text) RETURNS void LANGUAGE sql AS
  $$ SELECT set_config('app.tenant', t, false) $$;
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'strata_py_app') THEN CREATE ROLE strata_py_app; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'strata_py_nopriv') THEN CREATE ROLE strata_py_nopriv LOGIN; END IF;
END $$;
GRANT SELECT ON tenants TO strata_py_app;
CREATE TABLE secret (id int PRIMARY KEY, s text);
INSERT INTO secret VALUES (1, 'top');
REVOKE ALL ON secret FROM PUBLIC;
"""


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def scenarios(proxy, direct, pooled):
    def p(**kw):
        return psycopg.connect(proxy, **kw)

    def d(**kw):
        return psycopg.connect(direct, **kw)

    def repeated_reads_and_server_side_parameters():
        with p() as c:
            for _ in range(10):
                assert c.execute("SELECT v, n FROM items WHERE id = %s", (5,)).fetchall() == [
                    ("v5", decimal.Decimal("7.5"))
                ]

    def prepared_after_five_runs_sees_writes():
        # psycopg prepares a statement on its sixth run.
        with p(autocommit=True) as c, p(autocommit=True) as w:
            for i in range(12):
                got = one(c, "SELECT v FROM items WHERE id = %s", (7,))
                assert got == ("v7" if i < 6 else "x7"), (i, got)
                if i == 5:
                    w.execute("UPDATE items SET v = 'x7' WHERE id = 7")

    def binary_and_text_results_agree():
        with p() as c:
            for _ in range(3):
                sql = "SELECT id, v, n FROM items WHERE id BETWEEN %s AND %s ORDER BY id"
                text = c.execute(sql, (1, 3)).fetchall()
                binary = c.cursor(binary=True).execute(sql, (1, 3)).fetchall()
                assert text == binary and len(text) == 3, (text, binary)

    def named_cursors():
        with p() as c:
            for k in range(2):
                with c.cursor(name=f"cur{k}") as cur:
                    cur.execute("SELECT id FROM items ORDER BY id")
                    first, second = cur.fetchmany(10), cur.fetchmany(10)
                    assert [r[0] for r in first] == list(range(1, 11)) and second[0][0] == 11

    def copy_in_and_out():
        with p(autocommit=True) as c:
            c.execute("CREATE TABLE copied (a int, b text)")
            with c.cursor().copy("COPY copied FROM STDIN") as cp:
                for i in range(100):
                    cp.write_row((i, f"r{i}"))
            assert one(c, "SELECT count(*) FROM copied") == 100
            assert one(c, "SELECT count(*) FROM copied") == 100
            with c.cursor().copy("COPY copied FROM STDIN") as cp:
                cp.write_row((1000, "x"))
            assert one(c, "SELECT count(*) FROM copied") == 101
            with c.cursor().copy("COPY (SELECT * FROM copied ORDER BY a) TO STDOUT") as cp:
                assert len(list(cp.rows())) == 101

    def pipeline_mode():
        with p(autocommit=True) as c, d(autocommit=True) as t:
            truth = [one(t, "SELECT v FROM items WHERE id = %s", (i,)) for i in range(1, 20)]
            for _ in range(2):
                with c.pipeline():
                    curs = [c.execute("SELECT v FROM items WHERE id = %s", (i,)) for i in range(1, 20)]
                assert [cu.fetchone()[0] for cu in curs] == truth
            with c.pipeline():
                c.execute("UPDATE items SET v = 'piped' WHERE id = 1")
                cu = c.execute("SELECT v FROM items WHERE id = 1")
            assert cu.fetchone()[0] == "piped"

    def executemany_writes():
        with p(autocommit=True) as c:
            assert one(c, "SELECT n FROM items WHERE id = 110") == decimal.Decimal("165.0")
            c.cursor().executemany("UPDATE items SET n = %s WHERE id = %s", [(i, i) for i in range(100, 120)])
            assert one(c, "SELECT n FROM items WHERE id = 110") == 110

    def rollback_and_savepoints():
        with p() as c, p(autocommit=True) as other:
            assert one(c, "SELECT v FROM items WHERE id = 2") == "v2"
            c.execute("UPDATE items SET v = 'tx' WHERE id = 2")
            assert one(c, "SELECT v FROM items WHERE id = 2") == "tx"
            assert one(other, "SELECT v FROM items WHERE id = 2") == "v2"
            c.rollback()
            assert one(c, "SELECT v FROM items WHERE id = 2") == "v2"
            c.execute("UPDATE items SET v = 'sp1' WHERE id = 8")
            c.execute("SAVEPOINT s")
            c.execute("UPDATE items SET v = 'sp2' WHERE id = 8")
            assert one(c, "SELECT v FROM items WHERE id = 8") == "sp2"
            c.execute("ROLLBACK TO SAVEPOINT s")
            assert one(c, "SELECT v FROM items WHERE id = 8") == "sp1"
            assert one(other, "SELECT v FROM items WHERE id = 8") == "v8"
            c.commit()
            assert one(other, "SELECT v FROM items WHERE id = 8") == "sp1"

    def uncommitted_writes_stay_invisible_until_commit():
        with p() as w, p(autocommit=True) as r:
            assert one(r, "SELECT v FROM items WHERE id = 9") == "v9"
            w.execute("UPDATE items SET v = 'committed' WHERE id = 9")
            assert one(r, "SELECT v FROM items WHERE id = 9") == "v9"
            assert one(r, "SELECT v FROM items WHERE id = 9") == "v9"
            w.commit()
            assert one(r, "SELECT v FROM items WHERE id = 9") == "committed"

    def repeatable_read_keeps_its_snapshot():
        for begin, setup in [
            (["BEGIN ISOLATION LEVEL REPEATABLE READ"], None),
            (["BEGIN", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"], None),
            (["BEGIN"], "SET default_transaction_isolation = 'repeatable read'"),
            (["BEGIN"], "SELECT set_config('default_transaction_isolation', 'serializable', false)"),
        ]:
            with p(autocommit=True) as b, p(autocommit=True) as a, p(autocommit=True) as c:
                a.execute("UPDATE items SET v = 'old' WHERE id = 20")
                if setup:
                    b.execute(setup)
                for s in begin:
                    b.execute(s)
                assert one(b, "SELECT v FROM items WHERE id = 20") == "old"
                a.execute("UPDATE items SET v = 'new' WHERE id = 20")
                assert one(c, "SELECT v FROM items WHERE id = 20") == "new"
                assert one(c, "SELECT v FROM items WHERE id = 20") == "new"
                got = one(b, "SELECT v FROM items WHERE id = 20")
                b.execute("ROLLBACK")
                assert got == "old", (begin, setup, got)

    def server_code_writes_are_seen():
        with p(autocommit=True) as a, p(autocommit=True) as b:
            for _ in range(2):
                before = one(b, "SELECT n FROM audit WHERE id = 1")
            a.execute("UPDATE items SET v = v WHERE id = 5")
            assert one(b, "SELECT n FROM audit WHERE id = 1") == before + 1, "trigger"
            x = one(b, "SELECT n FROM items WHERE id = 9")
            a.execute("SELECT bump(9)")
            assert one(b, "SELECT n FROM items WHERE id = 9") == x + 1, "function"
            one(b, "SELECT v FROM items WHERE id = 6")
            a.execute("CALL rename_item(6)")
            assert one(b, "SELECT v FROM items WHERE id = 6") == "proc", "procedure"
            one(b, "SELECT v FROM items WHERE id = 7")
            a.execute("DO $$ BEGIN EXECUTE 'UPDATE items SET v = ''do'' WHERE id = 7'; END $$")
            assert one(b, "SELECT v FROM items WHERE id = 7") == "do", "DO"

    def sequences():
        # Through the proxy; a nextval made straight on PostgreSQL needs the catalog or the WAL
        # stream (`catalog.rs`, `wal_cases.rs`).
        with p(autocommit=True) as a, d(autocommit=True) as t:
            for sql in ["SELECT last_value FROM seq", "SELECT last_value, is_called FROM serial_seq_id_seq"]:
                for write in ["SELECT nextval('seq')", "SELECT setval('seq', 40)", "INSERT INTO serial_seq DEFAULT VALUES"]:
                    a.execute(sql)
                    a.execute(sql)
                    a.execute(write)
                    assert a.execute(sql).fetchone() == t.execute(sql).fetchone(), (sql, write)
            x = one(a, "SELECT nextval('seq')")
            assert one(a, "SELECT nextval('seq')") == x + 1
            assert one(a, "SELECT currval('seq')") == x + 1

    def session_state_keys():
        with p(autocommit=True) as a, p(autocommit=True) as b:
            if not pooled:
                assert one(a, "SELECT pg_backend_pid()") != one(b, "SELECT pg_backend_pid()")
            for setting, value, sql in [
                ("timezone", "Asia/Tokyo", "SELECT '2020-01-02 03:04:05+00'::timestamptz::text"),
                ("datestyle", "SQL, DMY", "SELECT '2020-01-02'::date::text"),
                ("intervalstyle", "sql_standard", "SELECT '1 day 2 hours'::interval::text"),
                ("bytea_output", "escape", "SELECT 'AB'::bytea::text"),
                ("extra_float_digits", "0", "SELECT (1 / 3::float8)::text"),
                ("standard_conforming_strings", "off", "SELECT 'a\\\\b'"),
                ("work_mem", "7MB", "SELECT current_setting('work_mem')"),
            ]:
                plain = one(b, sql)
                one(b, sql)
                a.execute(f"SET {setting} = '{value}'")
                with d(autocommit=True) as t:
                    t.execute(f"SET {setting} = '{value}'")
                    truth = one(t, sql)
                assert one(a, sql) == truth and one(a, sql) == truth, (setting, truth)
                assert one(b, sql) == plain, setting
                a.execute(f"RESET {setting}")
                assert one(a, sql) == plain, setting

    def search_path_and_temporary_tables():
        with p(autocommit=True) as a, p(autocommit=True) as b:
            assert one(a, "SELECT v FROM items WHERE id = 5") == "v5"
            a.execute("SET search_path = other, public")
            assert one(a, "SELECT v FROM items WHERE id = 5") == "other"
            assert one(b, "SELECT v FROM items WHERE id = 5") == "v5"
            a.execute("SELECT set_config('search_path', 'public', false)")
            assert one(a, "SELECT v FROM items WHERE id = 5") == "v5"
            a.execute("SET search_path = other, public")
            a.execute("DISCARD ALL")
            assert one(a, "SELECT v FROM items WHERE id = 5") == "v5"
            a.execute("CREATE TEMP TABLE items (id int, v text)")
            a.execute("INSERT INTO items VALUES (5, 'temp')")
            assert one(a, "SELECT v FROM items WHERE id = 5") == "temp"
            assert one(b, "SELECT v FROM items WHERE id = 5") == "v5"
            assert one(a, "SELECT v FROM items WHERE id = 5") == "temp"

    def row_level_security_by_a_setting_a_function_sets():
        with p(autocommit=True) as a, p(autocommit=True) as b:
            a.execute("SET ROLE strata_py_app")
            b.execute("SET ROLE strata_py_app")
            a.execute("SELECT set_tenant('a')")
            b.execute("SELECT set_tenant('b')")
            for _ in range(3):
                assert a.execute("SELECT v FROM tenants ORDER BY id").fetchall() == [("A1",)]
                assert b.execute("SELECT v FROM tenants ORDER BY id").fetchall() == [("B2",)]
            a.execute("SELECT set_tenant('b')")
            assert a.execute("SELECT v FROM tenants ORDER BY id").fetchall() == [("B2",)]

    def privileges_are_checked_for_every_role():
        with p(autocommit=True) as a:
            for _ in range(2):
                assert one(a, "SELECT s FROM secret WHERE id = 1") == "top"
        nopriv = proxy + " user=strata_py_nopriv"
        with psycopg.connect(nopriv, autocommit=True) as b:
            try:
                b.execute("SELECT s FROM secret WHERE id = 1").fetchone()
                raise AssertionError("a role without the privilege read the cached row")
            except psycopg.errors.InsufficientPrivilege:
                pass
        with p(autocommit=True) as a:
            a.execute("SET ROLE strata_py_nopriv")
            try:
                a.execute("SELECT s FROM secret WHERE id = 1").fetchone()
                raise AssertionError("SET ROLE kept the cached row readable")
            except psycopg.errors.InsufficientPrivilege:
                pass

    def client_encodings():
        for enc in ["LATIN1", "UTF8", "LATIN1", "WIN1252"]:
            with p(autocommit=True) as c:
                c.execute(f"SET client_encoding TO {enc}")
                for _ in range(2):
                    assert one(c, "SELECT v FROM accents WHERE k = 'é'") == 1
                    assert one(c, "SELECT v FROM accents WHERE k = 'è'") == 2
                    assert one(c, "SELECT k FROM accents WHERE v = 1") == "é"

    def volatile_and_time_dependent_results():
        with p() as c:
            assert one(c, "SELECT random()") != one(c, "SELECT random()")
            first = one(c, "SELECT now()")
            c.commit()
            time.sleep(0.05)
            assert one(c, "SELECT now()") != first
            c.commit()

    def errors_and_cancel():
        with p() as c:
            try:
                c.execute("SELECT * FROM no_such_table")
                raise AssertionError("no error")
            except psycopg.errors.UndefinedTable:
                c.rollback()
            try:
                c.execute("SELECT 1 / 0")
                raise AssertionError("no error")
            except psycopg.errors.DivisionByZero:
                c.rollback()
            timer = threading.Timer(0.5, c.cancel)
            timer.start()
            try:
                c.execute("SELECT pg_sleep(10)")
                raise AssertionError("the cancel did not arrive")
            except psycopg.errors.QueryCanceled:
                c.rollback()
            assert one(c, "SELECT 1") == 1

    def notifications():
        with p(autocommit=True) as listener, p(autocommit=True) as sender:
            listener.execute("LISTEN strata_channel")
            sender.execute("NOTIFY strata_channel, 'hello'")
            got = list(listener.notifies(timeout=10, stop_after=1))
            assert got and got[0].payload == "hello", got

    def large_results():
        with p() as c:
            for _ in range(2):
                assert len(one(c, "SELECT repeat('x', 3000000)")) == 3000000
            rows = c.execute("SELECT g, repeat('y', 100) FROM generate_series(1, 100000) g").fetchall()
            assert len(rows) == 100000 and rows[-1][0] == 100000

    def ddl_through_the_proxy_changes_cached_shapes():
        with p(autocommit=True) as c:
            c.execute("CREATE TABLE shaped (id int, v text)")
            c.execute("INSERT INTO shaped VALUES (1, 'x')")
            for _ in range(7):
                assert c.execute("SELECT * FROM shaped WHERE id = %s", (1,)).fetchall() == [(1, "x")]
            c.execute("ALTER TABLE shaped ADD COLUMN w int DEFAULT 5")
            assert c.execute("SELECT * FROM shaped WHERE id = %s", (1,)).fetchall() == [(1, "x", 5)]

    return [
        repeated_reads_and_server_side_parameters,
        prepared_after_five_runs_sees_writes,
        binary_and_text_results_agree,
        named_cursors,
        copy_in_and_out,
        pipeline_mode,
        executemany_writes,
        rollback_and_savepoints,
        uncommitted_writes_stay_invisible_until_commit,
        repeatable_read_keeps_its_snapshot,
        server_code_writes_are_seen,
        sequences,
        session_state_keys,
        search_path_and_temporary_tables,
        row_level_security_by_a_setting_a_function_sets,
        privileges_are_checked_for_every_role,
        client_encodings,
        volatile_and_time_dependent_results,
        errors_and_cancel,
        notifications,
        large_results,
        ddl_through_the_proxy_changes_cached_shapes,
    ]


def main(argv):
    if len(argv) == 3 and argv[1] == "setup":
        with psycopg.connect(argv[2], autocommit=True) as c:
            c.execute(SCHEMA)
        return 0
    if len(argv) not in (4, 5) or argv[1] != "run" or argv[4:] not in ([], ["pooled"]):
        print(__doc__, file=sys.stderr)
        return 2
    failed = []
    for scenario in scenarios(argv[2], argv[3], argv[4:] == ["pooled"]):
        try:
            scenario()
            print(f"ok     {scenario.__name__}")
        except Exception:  # noqa: BLE001 -- every failure is reported, then the run fails
            failed.append(scenario.__name__)
            print(f"FAILED {scenario.__name__}")
            traceback.print_exc(file=sys.stdout)
    print(f"psycopg {psycopg.__version__}: {len(failed)} failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
