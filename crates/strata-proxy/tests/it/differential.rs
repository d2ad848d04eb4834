//! The same statements through the proxy and directly give identical results: psql (simple
//! protocol), tokio-postgres (extended protocol, binary results), pgbench in every query mode.

use std::process::Output;

use tokio::process::Command;
use tokio_postgres::{types::ToSql, Client};

use crate::support::{admin, connect, database_url, fresh_database, pg, start_proxy, Raw, RawClient};

pub(crate) const PSQL_SCRIPT: &str = r#"
\pset null '<null>'
DROP TABLE IF EXISTS items;
CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2), tags text[], at timestamptz,
                    data jsonb, raw bytea, f float8);
INSERT INTO items SELECT g, 'item ' || g, g * 1.5, ARRAY['a' || g, 'b'],
       '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour',
       jsonb_build_object('g', g, 'even', g % 2 = 0), decode(md5(g::text), 'hex'), g / 7.0
  FROM generate_series(1, 300) g;
SELECT * FROM items ORDER BY id LIMIT 25;
SELECT count(*), sum(price), avg(price), max(at) FROM items;
SELECT 1/0;
SELECT 'still working after an error' AS msg;
SELECT * FROM no_such_table;
BEGIN;
UPDATE items SET price = price + 1 WHERE id < 10;
SELECT sum(price) FROM items;
SELECT 1/0;
SELECT 'in failed transaction';
ROLLBACK;
SELECT sum(price) FROM items;
BEGIN;
UPDATE items SET name = upper(name) WHERE id = 1;
COMMIT;
SELECT name FROM items WHERE id = 1;
SET TimeZone = 'America/New_York';
SHOW TimeZone;
SELECT at FROM items WHERE id = 1;
SET DateStyle = 'German';
SELECT at FROM items WHERE id = 1;
SET extra_float_digits = 3;
SELECT f FROM items WHERE id = 3;
RESET ALL;
SELECT at, f FROM items WHERE id = 3;
DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$;
SELECT 1 AS a \; SELECT 2 AS b \; SELECT 'x;y' AS c;
COPY (SELECT id, name, tags FROM items WHERE id <= 5 ORDER BY id) TO STDOUT;
CREATE TEMP TABLE t2 (a int, b text);
COPY t2 FROM STDIN;
1	one
2	two
3	\N
\.
SELECT * FROM t2 ORDER BY a;
SELECT length(repeat('x', 300000)) AS len, md5(repeat('x', 300000)) AS sum;
SELECT repeat('abcdefghij', 20000) AS big;
SELECT string_agg(name, ',' ORDER BY id) FROM items;
PREPARE p(int) AS SELECT name, price FROM items WHERE id = $1;
EXECUTE p(3);
EXECUTE p(4);
DEALLOCATE p;
SELECT '';
;
DROP TABLE items;
"#;

pub(crate) async fn psql(port: u16, db: &str, script: &str) -> Output {
    let pg = pg();
    let mut child = Command::new("/usr/bin/psql")
        .args(["-X", "-h", &pg.host(), "-p", &port.to_string(), "-U", "postgres", "-d", db, "-f", "-"])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run /usr/bin/psql");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(script.as_bytes()).await.expect("write script");
    }
    child.wait_with_output().await.expect("psql output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_gives_identical_output_through_the_proxy() {
    let db = "strata_proxy_psql";
    fresh_database(db).await;
    let proxy = start_proxy(|b| b).await;
    let direct = psql(pg().port(), db, PSQL_SCRIPT).await;
    let proxied = psql(proxy.port(), db, PSQL_SCRIPT).await;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(text(&direct.stdout).contains("still working after an error"), "{}", text(&direct.stdout));
    assert!(text(&direct.stderr).contains("division by zero"));
    assert_eq!(text(&proxied.stdout), text(&direct.stdout));
    assert_eq!(text(&proxied.stderr), text(&direct.stderr));
    assert_eq!(proxied.status.code(), direct.status.code());
}

/// Rows as raw binary values plus column names and types, or the error's SQLSTATE and message.
type Outcome = Result<(Vec<(String, u32)>, Vec<Vec<Raw>>), (String, String)>;

async fn run(client: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Outcome {
    match client.query(sql, params).await {
        Ok(rows) => {
            let cols = rows
                .first()
                .map(|r| r.columns().iter().map(|c| (c.name().to_owned(), c.type_().oid())).collect())
                .unwrap_or_default();
            let values = rows.iter().map(|r| (0..r.len()).map(|i| r.get::<_, Raw>(i)).collect()).collect();
            Ok((cols, values))
        }
        Err(e) => {
            let db = e.as_db_error();
            Err((
                db.map(|d| d.code().code().to_owned()).unwrap_or_default(),
                db.map(|d| d.message().to_owned()).unwrap_or_else(|| e.to_string()),
            ))
        }
    }
}

pub(crate) async fn extended_workload(c: &Client) -> Vec<Outcome> {
    let mut out = Vec::new();
    c.batch_execute(
        "DROP TABLE IF EXISTS kv; CREATE TABLE kv (k int PRIMARY KEY, v text, n numeric, b bytea, t timestamptz);
         INSERT INTO kv SELECT g, 'v' || g, g * 0.25, decode(lpad(to_hex(g), 8, '0'), 'hex'),
                'epoch'::timestamptz + g * interval '1 day' FROM generate_series(1, 2000) g;",
    )
    .await
    .expect("setup");
    let big = "y".repeat(200_000);
    out.push(run(c, "SELECT * FROM kv WHERE k = $1", &[&7i32]).await);
    out.push(run(c, "SELECT * FROM kv WHERE k BETWEEN $1 AND $2 ORDER BY k", &[&1i32, &1500i32]).await);
    out.push(
        run(
            c,
            "SELECT $1::text AS t, $2::int8 AS i, $3::float8 AS f, $4::bool AS b, $5::bytea AS y",
            &[&"héllo", &-5i64, &1.5f64, &true, &vec![0u8, 1, 2, 255]],
        )
        .await,
    );
    out.push(run(c, "SELECT $1::text IS NULL AS isnull, $1::text AS v", &[&None::<String>]).await);
    out.push(run(c, "SELECT length($1::text), $1::text AS echo", &[&big]).await);
    out.push(run(c, "SELECT 1/0", &[]).await);
    out.push(run(c, "SELEC broken", &[]).await);
    out.push(
        run(c, "SELECT ARRAY[1,2,3] AS a, '{\"x\": 1}'::jsonb AS j, interval '1 day 2 hours' AS iv", &[])
            .await,
    );
    // One prepared statement executed several times.
    let stmt = c.prepare("SELECT v, n FROM kv WHERE k = $1").await.expect("prepare");
    for k in [1i32, 2, 3, 99_999] {
        let rows = c.query(&stmt, &[&k]).await.expect("execute prepared");
        out.push(Ok((vec![], rows.iter().map(|r| vec![r.get::<_, Raw>(0), r.get::<_, Raw>(1)]).collect())));
    }
    // Pipelining: tokio-postgres sends these before reading any response.
    let (a, b, d) = tokio::join!(
        run(c, "SELECT k FROM kv WHERE k < $1 ORDER BY k", &[&5i32]),
        run(c, "SELECT 1/0", &[]),
        run(c, "SELECT count(*) FROM kv", &[]),
    );
    out.extend([a, b, d]);
    // Writes and reads in one connection, autocommit.
    out.push(run(c, "UPDATE kv SET v = $1 WHERE k <= $2 RETURNING k, v", &[&"new", &3i32]).await);
    out.push(run(c, "SELECT k, v FROM kv WHERE k <= 4 ORDER BY k", &[]).await);
    out
}

pub(crate) async fn transaction_workload(c: &mut Client) -> Vec<Outcome> {
    let mut out = Vec::new();
    {
        let tx = c.transaction().await.expect("begin");
        tx.execute("UPDATE kv SET v = 'rolled back' WHERE k = 10", &[]).await.expect("update");
        let rows = tx.query("SELECT v FROM kv WHERE k = 10", &[]).await.expect("select in tx");
        out.push(Ok((vec![], rows.iter().map(|r| vec![r.get::<_, Raw>(0)]).collect())));
        // A portal read in chunks: Execute with a row limit.
        let stmt = tx.prepare("SELECT k FROM kv WHERE k <= 25 ORDER BY k").await.expect("prepare");
        let portal = tx.bind(&stmt, &[]).await.expect("bind");
        for _ in 0..3 {
            let rows = tx.query_portal(&portal, 10).await.expect("query_portal");
            out.push(Ok((vec![], rows.iter().map(|r| vec![r.get::<_, Raw>(0)]).collect())));
        }
        tx.rollback().await.expect("rollback");
    }
    out.push(run(c, "SELECT v FROM kv WHERE k = 10", &[]).await);
    {
        let tx = c.transaction().await.expect("begin");
        tx.execute("UPDATE kv SET v = 'committed' WHERE k = 11", &[]).await.expect("update");
        tx.commit().await.expect("commit");
    }
    out.push(run(c, "SELECT v FROM kv WHERE k = 11", &[]).await);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_extended_protocol_gives_identical_results() {
    let db = "strata_proxy_extended";
    fresh_database(db).await;
    let proxy = start_proxy(|b| b).await;
    let mut direct = connect(pg().port(), "postgres", db, None).await.expect("direct");
    let mut proxied = connect(proxy.port(), "postgres", db, None).await.expect("through proxy");
    let want = extended_workload(&direct).await;
    let got = extended_workload(&proxied).await;
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "statement {i} differs");
    }
    assert!(want.iter().any(|o| matches!(o, Err((code, _)) if code == "22012")));
    assert!(want.iter().any(|o| matches!(o, Ok((_, rows)) if rows.len() == 1500)));
    let want = transaction_workload(&mut direct).await;
    let got = transaction_workload(&mut proxied).await;
    assert_eq!(got, want);
    assert!(matches!(&want[1], Ok((_, rows)) if rows.len() == 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_protocol_responses_are_byte_identical_and_report_transaction_status() {
    let proxy = start_proxy(|b| b).await;
    let (mut direct, _) = RawClient::startup(pg().port(), "postgres", "postgres").await;
    let (mut proxied, startup) = RawClient::startup(proxy.port(), "postgres", "postgres").await;
    assert!(startup.iter().any(|(t, _)| *t == b'K'), "BackendKeyData relayed");
    assert!(startup.iter().any(|(t, _)| *t == b'S'), "ParameterStatus relayed");
    simple_answers_match(&mut direct, &mut proxied, &["SHOW server_version_num"]).await;
}

/// Sends a script of simple queries (a transaction, an error inside one, a multi-statement
/// text, an empty query, then `extra`) to PostgreSQL directly and through the proxy: every
/// response must be byte-identical, with the expected transaction status.
pub(crate) async fn simple_answers_match(direct: &mut RawClient, proxied: &mut RawClient, extra: &[&str]) {
    let script = [
        ("SELECT 1 AS one, 'two'::text AS two", b'I'),
        ("BEGIN", b'T'),
        ("SELECT generate_series(1, 3)", b'T'),
        ("SELECT 1/0", b'E'),
        ("SELECT 1", b'E'),
        ("ROLLBACK", b'I'),
        ("BEGIN; SELECT 1; COMMIT", b'I'),
        ("BEGIN; SELECT 1", b'T'),
        ("COMMIT", b'I'),
        ("", b'I'),
    ];
    let script = script.into_iter().chain(extra.iter().map(|sql| (*sql, b'I')));
    for (sql, status) in script {
        let want = direct.query(sql).await;
        let got = proxied.query(sql).await;
        assert_eq!(got, want, "response to {sql:?}");
        assert_eq!(
            got.last().map(|(t, b)| (*t, b.clone())),
            Some((b'Z', vec![status])),
            "status after {sql:?}"
        );
    }
}

fn pgbench_base(port: u16, db: &str) -> Command {
    let pg = pg();
    let mut cmd = Command::new("pgbench");
    cmd.args(["-h", &pg.host(), "-p", &port.to_string(), "-U", "postgres"]);
    cmd.env("PGDATABASE", db).env("PGCONNECT_TIMEOUT", "10");
    let _ = database_url();
    cmd
}

pub(crate) async fn pgbench(port: u16, db: &str, args: &[&str]) -> String {
    let out = pgbench_base(port, db).args(args).arg(db).output().await.expect("run pgbench");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_cleanly_through_the_proxy_in_every_query_mode() {
    let db = "strata_proxy_pgbench";
    fresh_database(db).await;
    pgbench(pg().port(), db, &["-i", "-s", "1", "-q"]).await;
    let proxy = start_proxy(|b| b).await;
    for mode in ["simple", "extended", "prepared"] {
        for script in [&["-S"][..], &[][..]] {
            let mut args = vec!["-M", mode, "-c", "2", "-j", "1", "-T", "2", "-n"];
            args.extend_from_slice(script);
            let text = pgbench(proxy.port(), db, &args).await;
            assert!(text.contains("number of failed transactions: 0"), "{text}");
            let processed = text
                .lines()
                .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
                .and_then(|n| n.split('/').next()?.trim().parse::<u64>().ok())
                .unwrap_or(0);
            assert!(processed > 0, "no transactions processed with {args:?}:\n{text}");
        }
    }
    // TPC-B keeps every balance consistent: each transaction adds the same delta to an account, a
    // teller, a branch and the history.
    let c = admin(db).await;
    let row = c
        .query_one(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts)::int8, (SELECT sum(tbalance) FROM pgbench_tellers)::int8,
                    (SELECT sum(bbalance) FROM pgbench_branches)::int8, (SELECT coalesce(sum(delta), 0) FROM pgbench_history)::int8,
                    (SELECT count(*) FROM pgbench_history)",
            &[],
        )
        .await
        .expect("balances");
    let (a, t, b, h, n): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert!(n > 0, "TPC-B wrote no history");
    assert_eq!((a, t, b), (h, h, h));
}
