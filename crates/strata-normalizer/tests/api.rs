//! Behaviour of `analyze` a user of the crate relies on: identity, parameters, tables, verdicts,
//! write effects, hints, bad input, memoization and configuration.

use std::sync::Arc;
use std::time::Duration;

use expect_test::{expect, Expect};
use strata_core::TypeOid;
use strata_normalizer::{
    analyze, read_hints, CacheHint, CatalogPolicy, ErrorKind, LiteralForm, Normalizer, NormalizerConfig,
    NotCacheable, StatementKind, TierHint, Volatility, WriteEffect,
};

fn summary(sql: &str) -> String {
    let a = analyze(sql);
    let writes = match a.writes() {
        WriteEffect::Nothing => "-".to_owned(),
        WriteEffect::Unknown => "UNKNOWN".to_owned(),
        WriteEffect::Tables(t) => t.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(","),
    };
    let reads: Vec<&str> = a.reads().iter().map(|t| t.as_str()).collect();
    let kinds: Vec<&str> = a.statements().iter().map(|s| s.kind().as_str()).collect();
    format!("{} | kinds={kinds:?} reads={reads:?} writes={writes}", a.cacheability())
}

fn check(cases: &[&str], expect: Expect) {
    let out: Vec<String> = cases.iter().map(|sql| format!("{sql}\n  {}", summary(sql))).collect();
    expect.assert_eq(&(out.join("\n") + "\n"));
}

fn same_identity(a: &str, b: &str) -> bool {
    analyze(a).identity() == analyze(b).identity()
}

#[test]
fn identity_ignores_layout_comments_case_and_literal_values() {
    let base = "SELECT name FROM users WHERE id = 42";
    for other in [
        "select name from users where id = 42",
        "SELECT name\n\tFROM   users -- trailing comment\nWHERE id = 7",
        "SELECT /* c */ name FROM USERS WHERE ID = 1000000",
        "SELECT name FROM \"users\" WHERE id = 1",
    ] {
        assert!(same_identity(base, other), "{other}");
    }
    assert!(same_identity("SELECT * FROM t WHERE a IN (1)", "SELECT * FROM t WHERE a IN (1, 2, 3, 4)"));
    assert!(same_identity("INSERT INTO t VALUES (1, 'a')", "INSERT INTO t VALUES (2, 'b'), (3, 'c')"));
}

#[test]
fn identity_differs_when_results_can_differ() {
    let base = "SELECT * FROM users WHERE id = 42";
    for other in [
        "SELECT * FROM public.users WHERE id = 42",
        "SELECT * FROM other.users WHERE id = 42",
        "SELECT * FROM \"Users\" WHERE id = 42",
        "SELECT * FROM customers WHERE id = 42",
        "SELECT * FROM users WHERE uid = 42",
        "SELECT * FROM users WHERE id > 42",
        "SELECT * FROM users u WHERE id = 42 ORDER BY 1",
        "SELECT * FROM users WHERE id = $1",
        "SELECT * FROM users WHERE id = '42'",
    ] {
        assert!(!same_identity(base, other), "{other}");
    }
    // pg_query's fingerprint would call these equal; the identity must not.
    let fp = |s: &str| pg_query::fingerprint(s, 0, 0).map(|f| f.value).ok();
    assert_eq!(fp(base), fp("SELECT * FROM public.users WHERE id = 42"));
}

#[test]
fn literals_are_lifted_in_order_with_types() {
    let a = analyze(
        "SELECT 1, 3000000000, 99999999999999999999, 1.5, 'it''s', E'x\\n', $q$d$q$, true, B'01', X'0F'",
    );
    let got: Vec<(u32, LiteralForm, &str)> =
        a.params().map(|p| (p.type_oid().0, p.form(), p.text())).collect();
    assert_eq!(
        got,
        [
            (TypeOid::INT4.0, LiteralForm::Integer, "1"),
            (TypeOid::INT8.0, LiteralForm::Integer, "3000000000"),
            (TypeOid::NUMERIC.0, LiteralForm::Numeric, "99999999999999999999"),
            (TypeOid::NUMERIC.0, LiteralForm::Numeric, "1.5"),
            (TypeOid::UNKNOWN.0, LiteralForm::String, "it's"),
            (TypeOid::UNKNOWN.0, LiteralForm::EscapeString, "E'x\\n'"),
            (TypeOid::UNKNOWN.0, LiteralForm::DollarString, "d"),
            (TypeOid::BOOL.0, LiteralForm::Boolean, "true"),
            (TypeOid::BIT.0, LiteralForm::BitString, "B'01'"),
            (TypeOid::BIT.0, LiteralForm::HexString, "X'0F'"),
        ]
    );
    // Different values, same identity, different parameters: different cache keys.
    let one = analyze("SELECT * FROM t WHERE id = 1");
    let two = analyze("SELECT * FROM t WHERE id = 2");
    assert_eq!(one.identity(), two.identity());
    assert_eq!(one.key_bytes(), two.key_bytes());
    assert_ne!(one.params().next().map(|p| p.text()), two.params().next().map(|p| p.text()));
}

#[test]
fn key_bytes_tell_collapsed_lists_apart() {
    let a = analyze("SELECT * FROM t WHERE a IN (1, 2) AND b IN (3)");
    let b = analyze("SELECT * FROM t WHERE a IN (1) AND b IN (2, 3)");
    assert_eq!(a.identity(), b.identity());
    let pa: Vec<&str> = a.params().map(|p| p.text()).collect();
    let pb: Vec<&str> = b.params().map(|p| p.text()).collect();
    assert_eq!(pa, pb);
    assert_ne!(a.key_bytes(), b.key_bytes(), "same params and identity must still differ in key");
    // A standard string that spells an escape string is not the escape string.
    let s = analyze("SELECT * FROM t WHERE a = 'E''x'''");
    let e = analyze("SELECT * FROM t WHERE a = E'x'");
    assert_eq!(s.params().next().map(|p| p.text()), e.params().next().map(|p| p.text()));
    assert_ne!(s.key_bytes(), e.key_bytes());
}

#[test]
fn client_placeholders_stay_distinct_from_lifted_literals() {
    let a = analyze("SELECT * FROM t WHERE a = $1 AND b = 5");
    let b = analyze("SELECT * FROM t WHERE a = $1 AND b = $2");
    assert_eq!(a.client_param_count(), 1);
    assert_eq!(b.client_param_count(), 2);
    assert_eq!(a.statements()[0].normalized(), "select * from t where a = $1 and b = $2");
    assert_eq!(b.statements()[0].normalized(), "select * from t where a = $1 and b = $2");
    assert_ne!(a.identity(), b.identity());
    assert_eq!(a.params().count(), 1);
    assert_eq!(b.params().count(), 0);
    assert_eq!(analyze("SELECT $3, $1").client_param_count(), 3);
}

#[test]
fn kinds_tables_and_write_effects() {
    check(
        &[
            "SELECT * FROM a JOIN s.b ON a.id = b.id, c",
            "WITH c AS (SELECT * FROM real_c) SELECT * FROM c, d",
            "INSERT INTO t SELECT * FROM u",
            "UPDATE t SET x = 1 FROM u WHERE u.id = t.id",
            "DELETE FROM ONLY t",
            "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
            "COPY t FROM STDIN",
            "COPY t TO STDOUT",
            "TRUNCATE t, \"Mixed\".\"Case\"",
            "ALTER TABLE t RENAME TO t2",
            "REFRESH MATERIALIZED VIEW mv",
            "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
            "DO $$ BEGIN END $$",
            "CALL p(1)",
            "EXECUTE stmt",
            "BEGIN",
            "SET ROLE admin",
            "DISCARD ALL",
            "SHOW work_mem",
            "LISTEN ch",
            "SELECT f(1)",
        ],
        expect![[r#"
            SELECT * FROM a JOIN s.b ON a.id = b.id, c
              cacheable | kinds=["select"] reads=["a", "s.b", "c"] writes=-
            WITH c AS (SELECT * FROM real_c) SELECT * FROM c, d
              cacheable | kinds=["select"] reads=["real_c", "d"] writes=-
            INSERT INTO t SELECT * FROM u
              not cacheable: insert statement is not a read | kinds=["insert"] reads=["u"] writes=t
            UPDATE t SET x = 1 FROM u WHERE u.id = t.id
              not cacheable: update statement is not a read | kinds=["update"] reads=["u"] writes=t
            DELETE FROM ONLY t
              not cacheable: delete statement is not a read | kinds=["delete"] reads=[] writes=t
            MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE
              not cacheable: merge statement is not a read | kinds=["merge"] reads=["u"] writes=t
            COPY t FROM STDIN
              not cacheable: copy-in statement is not a read | kinds=["copy-in"] reads=[] writes=t
            COPY t TO STDOUT
              not cacheable: copy-out statement is not a read | kinds=["copy-out"] reads=["t"] writes=-
            TRUNCATE t, "Mixed"."Case"
              not cacheable: truncate statement is not a read | kinds=["truncate"] reads=[] writes=t,Mixed.Case
            ALTER TABLE t RENAME TO t2
              not cacheable: ddl statement is not a read | kinds=["ddl"] reads=[] writes=t,t2
            REFRESH MATERIALIZED VIEW mv
              not cacheable: ddl statement is not a read | kinds=["ddl"] reads=[] writes=mv
            CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql
              not cacheable: ddl statement is not a read | kinds=["ddl"] reads=[] writes=UNKNOWN
            DO $$ BEGIN END $$
              not cacheable: utility statement is not a read | kinds=["utility"] reads=[] writes=UNKNOWN
            CALL p(1)
              not cacheable: utility statement is not a read | kinds=["utility"] reads=[] writes=UNKNOWN
            EXECUTE stmt
              not cacheable: utility statement is not a read | kinds=["utility"] reads=[] writes=UNKNOWN
            BEGIN
              not cacheable: transaction statement is not a read | kinds=["transaction"] reads=[] writes=-
            SET ROLE admin
              not cacheable: session statement is not a read | kinds=["session"] reads=[] writes=-
            DISCARD ALL
              not cacheable: session statement is not a read | kinds=["session"] reads=[] writes=-
            SHOW work_mem
              not cacheable: utility statement is not a read | kinds=["utility"] reads=[] writes=-
            LISTEN ch
              not cacheable: utility statement is not a read | kinds=["utility"] reads=[] writes=-
            SELECT f(1)
              not cacheable: function f() is not known to be immutable or stable | kinds=["select"] reads=[] writes=UNKNOWN
        "#]],
    );
}

#[test]
fn nextval_and_setval_write_the_sequence_they_name() {
    check(
        &[
            "SELECT nextval('s')",
            "SELECT pg_catalog.nextval('App.Seq_1'::regclass)",
            "SELECT setval(' \"My \"\"Seq\"\" \" . x ', 5, true)",
            "SELECT nextval('\"a.b\"'), nextval('t_id_seq')",
            "SELECT nextval($1)",
            "SELECT nextval('s' || 'x')",
            "SELECT nextval('d.s.x')",
            "SELECT nextval('')",
            "SELECT nextval('\"open')",
            "SELECT app.nextval('s')",
        ],
        expect![[r#"
            SELECT nextval('s')
              not cacheable: volatile function nextval() | kinds=["select"] reads=[] writes=s
            SELECT pg_catalog.nextval('App.Seq_1'::regclass)
              not cacheable: volatile function pg_catalog.nextval() | kinds=["select"] reads=[] writes=app.seq_1
            SELECT setval(' "My ""Seq"" " . x ', 5, true)
              not cacheable: volatile function setval() | kinds=["select"] reads=[] writes=My "Seq" .x
            SELECT nextval('"a.b"'), nextval('t_id_seq')
              not cacheable: volatile function nextval() | kinds=["select"] reads=[] writes=a.b,t_id_seq
            SELECT nextval($1)
              not cacheable: volatile function nextval() | kinds=["select"] reads=[] writes=UNKNOWN
            SELECT nextval('s' || 'x')
              not cacheable: volatile function nextval() | kinds=["select"] reads=[] writes=UNKNOWN
            SELECT nextval('d.s.x')
              not cacheable: volatile function nextval() | kinds=["select"] reads=[] writes=UNKNOWN
            SELECT nextval('')
              not cacheable: volatile function nextval() | kinds=["select"] reads=[] writes=UNKNOWN
            SELECT nextval('"open')
              not cacheable: volatile function nextval() | kinds=["select"] reads=[] writes=UNKNOWN
            SELECT app.nextval('s')
              not cacheable: function app.nextval() is not known to be immutable or stable | kinds=["select"] reads=[] writes=UNKNOWN
        "#]],
    );
}

#[test]
fn cacheability_reasons() {
    check(
        &[
            "WITH d AS (DELETE FROM q RETURNING *) SELECT * FROM d",
            "SELECT * INTO t2 FROM t",
            "SELECT * FROM t FOR SHARE",
            "SELECT nextval('s')",
            "SELECT CURRENT_TIMESTAMP",
            "SELECT * FROM t WHERE d > 'tomorrow'::date",
            "SELECT * FROM pg_catalog.pg_proc",
            "SELECT * FROM t TABLESAMPLE SYSTEM (5)",
            "SELECT * FROM t TABLESAMPLE SYSTEM (5) REPEATABLE (1)",
            "SELECT * FROM pg_temp.scratch",
            "SELECT lower(name), count(*) FROM t GROUP BY 1",
            "SELECT x FROM t WHERE s = 'today is a day'",
            "SELECT * FROM t WHERE at > 'tomorrow 10:00'::timestamp",
            "SELECT * FROM t WHERE at > ' Now'::timestamptz",
            "SELECT * FROM t WHERE at > E'now'::timestamptz",
            "SELECT * FROM t WHERE at > E'\\x6eow'::timestamptz",
            "SELECT * FROM t WHERE s = 'nowhere'",
        ],
        expect![[r#"
            WITH d AS (DELETE FROM q RETURNING *) SELECT * FROM d
              not cacheable: data-modifying WITH clause | kinds=["select"] reads=[] writes=q
            SELECT * INTO t2 FROM t
              not cacheable: SELECT INTO creates a table | kinds=["select"] reads=["t"] writes=t2
            SELECT * FROM t FOR SHARE
              not cacheable: FOR UPDATE/SHARE takes row locks | kinds=["select"] reads=["t"] writes=-
            SELECT nextval('s')
              not cacheable: volatile function nextval() | kinds=["select"] reads=[] writes=s
            SELECT CURRENT_TIMESTAMP
              not cacheable: time- or session-dependent current_timestamp | kinds=["select"] reads=[] writes=-
            SELECT * FROM t WHERE d > 'tomorrow'::date
              not cacheable: time-dependent literal 'tomorrow' | kinds=["select"] reads=["t"] writes=-
            SELECT * FROM pg_catalog.pg_proc
              not cacheable: reads system catalog pg_catalog.pg_proc | kinds=["select"] reads=["pg_catalog.pg_proc"] writes=-
            SELECT * FROM t TABLESAMPLE SYSTEM (5)
              not cacheable: TABLESAMPLE without REPEATABLE | kinds=["select"] reads=["t"] writes=-
            SELECT * FROM t TABLESAMPLE SYSTEM (5) REPEATABLE (1)
              cacheable | kinds=["select"] reads=["t"] writes=-
            SELECT * FROM pg_temp.scratch
              not cacheable: reads temporary table pg_temp.scratch | kinds=["select"] reads=["pg_temp.scratch"] writes=-
            SELECT lower(name), count(*) FROM t GROUP BY 1
              cacheable | kinds=["select"] reads=["t"] writes=-
            SELECT x FROM t WHERE s = 'today is a day'
              not cacheable: time-dependent literal 'today is a day' | kinds=["select"] reads=["t"] writes=-
            SELECT * FROM t WHERE at > 'tomorrow 10:00'::timestamp
              not cacheable: time-dependent literal 'tomorrow 10:00' | kinds=["select"] reads=["t"] writes=-
            SELECT * FROM t WHERE at > ' Now'::timestamptz
              not cacheable: time-dependent literal 'now' | kinds=["select"] reads=["t"] writes=-
            SELECT * FROM t WHERE at > E'now'::timestamptz
              not cacheable: time-dependent literal 'e'now'' | kinds=["select"] reads=["t"] writes=-
            SELECT * FROM t WHERE at > E'\x6eow'::timestamptz
              not cacheable: time-dependent literal 'e'\x6eow'' | kinds=["select"] reads=["t"] writes=-
            SELECT * FROM t WHERE s = 'nowhere'
              cacheable | kinds=["select"] reads=["t"] writes=-
        "#]],
    );
}

#[test]
fn bad_input_is_a_parse_error_never_a_panic() {
    let n = Normalizer::default();
    let deep = format!("SELECT {}1{}", "(".repeat(100_000), ")".repeat(100_000));
    let long = format!("SELECT * FROM t WHERE a IN ({})", vec!["1"; 200_000].join(","));
    let inputs: Vec<Vec<u8>> = vec![
        b"SELECT * FROM".to_vec(),
        b"SELECT 'unterminated".to_vec(),
        b"SELECT 1 /* open comment".to_vec(),
        b"SELECT '\x00' FROM t".to_vec(),
        b"SELECT '\xff\xfe' FROM t".to_vec(),
        b"\xc3\x28".to_vec(),
        deep.into_bytes(),
        b"".to_vec(),
        b"   -- only a comment".to_vec(),
        b";;;".to_vec(),
    ];
    for input in &inputs {
        let a = n.analyze_bytes(input);
        assert!(
            !a.cacheability().is_cacheable(),
            "{:?}",
            String::from_utf8_lossy(&input[..input.len().min(40)])
        );
        if a.is_parse_error() {
            assert_eq!(a.writes(), &WriteEffect::Unknown);
        } else {
            assert_eq!(a.cacheability().reason(), Some(&NotCacheable::Empty));
        }
    }
    // A megabyte-long statement still parses under a limit that admits it, with its list
    // collapsed (the default limit refuses it: see tests/limits.rs).
    let roomy = NormalizerConfig::builder().with_max_analyzed_bytes(2 << 20).build().unwrap();
    let a = Normalizer::new(roomy).analyze(&long);
    assert!(a.cacheability().is_cacheable());
    assert_eq!(a.params().count(), 200_000);
    assert_eq!(a.statements()[0].normalized(), "select * from t where a in ($1 /*, ... */)");
    assert!(matches!(
        analyze("SELECT * FROM").cacheability().reason(),
        Some(NotCacheable::ParseError(m)) if m.contains("syntax error")
    ));
}

#[test]
fn hints_come_only_from_comment_tokens() {
    let a = analyze("SELECT '/* strata: cache=off */', '-- strata: ttl=1s' FROM t");
    assert!(a.hints().is_empty());
    assert!(a.cacheability().is_cacheable());
    let a = analyze("/* strata: cache=off */ SELECT 1");
    assert_eq!(a.hints().cache(), CacheHint::Off);
    assert_eq!(a.cacheability().reason(), Some(&NotCacheable::HintCacheOff));
    let a = analyze(
        "SELECT * FROM report -- strata: ttl=2h, tier=l1, semantic, intent=\"sales, by week\", tables=orders,items, bogus=1",
    );
    let h = a.hints();
    assert_eq!(h.ttl(), Some(Duration::from_secs(3600)), "capped by the default one hour");
    assert!(h.ttl_was_capped());
    assert_eq!(h.tier(), Some(TierHint::L1));
    assert!(h.semantic());
    assert_eq!(h.intent(), Some("sales, by week"));
    let deps = a.dependencies();
    let deps: Vec<&str> = deps.iter().map(|t| t.as_str()).collect();
    assert_eq!(deps, ["report", "orders", "items"]);
    assert_eq!(h.ignored().len(), 1);
    assert_eq!(h.ignored()[0].reason(), "unknown hint");
    let h = read_hints("select 1 /* strata: ttl=90s */", Duration::from_secs(60));
    assert_eq!(h.ttl(), Some(Duration::from_secs(60)));
}

#[test]
fn memo_returns_the_same_analysis_and_stays_bounded() {
    let n = Normalizer::new(NormalizerConfig::builder().with_memo_capacity(100).build().unwrap());
    let a = n.analyze("SELECT * FROM t WHERE id = 1");
    let b = n.analyze("SELECT * FROM t WHERE id = 1");
    assert!(Arc::ptr_eq(&a, &b));
    for i in 0..2_000 {
        n.analyze(&format!("SELECT {i} FROM t"));
    }
    assert!(n.memo_len() <= 110, "memo grew to {}", n.memo_len());
    let off = Normalizer::new(NormalizerConfig::builder().with_memo_capacity(0).build().unwrap());
    let c = off.analyze("SELECT 1");
    let d = off.analyze("SELECT 1");
    assert!(!Arc::ptr_eq(&c, &d));
    assert_eq!(off.memo_len(), 0);
}

#[test]
fn memo_is_shared_across_threads() {
    let n = Arc::new(Normalizer::default());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let n = Arc::clone(&n);
            std::thread::spawn(move || {
                for i in 0..200 {
                    let a = n.analyze(&format!("SELECT * FROM t{} WHERE id = {i}", i % 10));
                    assert_eq!(a.reads()[0].as_str(), format!("t{}", i % 10));
                    assert_eq!(a.kind(), Some(StatementKind::Select), "thread {t}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn configuration_changes_verdicts() {
    let config = NormalizerConfig::builder()
        .with_allowed_function("app.slugify")
        .with_function_volatility("lower", Volatility::Volatile)
        .with_function_volatility("f_stable", Volatility::Stable)
        .with_catalog_policy(CatalogPolicy::Allow)
        .build()
        .unwrap();
    let n = Normalizer::new(config);
    assert!(n.analyze("SELECT app.slugify(title) FROM posts").cacheability().is_cacheable());
    assert!(n.analyze("SELECT f_stable(1)").cacheability().is_cacheable());
    assert!(n.analyze("SELECT * FROM pg_class").cacheability().is_cacheable());
    let lower = n.analyze("SELECT lower(x) FROM t");
    assert_eq!(lower.cacheability().to_string(), "not cacheable: volatile function lower()");
    assert_eq!(lower.writes(), &WriteEffect::Unknown);
    let strict = Normalizer::new(NormalizerConfig::builder().without_builtin_allow_list().build().unwrap());
    assert!(!strict.analyze("SELECT count(*) FROM t").cacheability().is_cacheable());
}

#[test]
fn configuration_is_validated() {
    let errors = [
        NormalizerConfig::builder().with_hint_ttl_cap(Duration::ZERO).build(),
        NormalizerConfig::builder().with_hint_ttl_cap(Duration::from_secs(365 * 86_400)).build(),
        NormalizerConfig::builder().with_memo_capacity(usize::MAX).build(),
        NormalizerConfig::builder().with_memo_max_text_bytes(1).build(),
        NormalizerConfig::builder().with_allowed_function("bad name;").build(),
        NormalizerConfig::builder().with_allowed_function("").build(),
    ];
    for e in errors {
        let e = e.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().starts_with("config error: "), "{e}");
    }
    let c = NormalizerConfig::builder().with_hint_ttl_cap(Duration::from_secs(5)).build().unwrap();
    assert_eq!(c.hint_ttl_cap(), Duration::from_secs(5));
    assert_eq!(c.function_volatility("pg_catalog.lower"), Some(Volatility::Stable));
    assert_eq!(c.function_volatility("random"), None);
    let again = c.to_builder().with_function_volatility("random", Volatility::Volatile).build().unwrap();
    assert_eq!(again.function_volatility("random"), Some(Volatility::Volatile));
}

#[test]
fn multi_statement_text_rolls_up() {
    let a = analyze("SELECT * FROM a; UPDATE b SET x = 1; SELECT * FROM c");
    assert_eq!(a.statements().len(), 3);
    assert_eq!(a.kind(), None);
    assert_eq!(a.cacheability().to_string(), "not cacheable: update statement is not a read");
    assert_eq!(a.writes(), &WriteEffect::Tables(vec![strata_core::TableName::new("b")]));
    let ranges: Vec<_> = a.statements().iter().map(|s| s.range()).collect();
    assert_eq!(ranges, [0..15, 17..35, 37..52]);
    let reads = analyze("SELECT * FROM a; SELECT * FROM c");
    assert!(reads.cacheability().is_cacheable());
    assert_ne!(reads.identity(), analyze("SELECT * FROM a").identity());
}

#[test]
fn temporary_tables_created_are_reported() {
    let names = |sql: &str| -> Vec<String> {
        analyze(sql).temporary_tables_created().map(|t| t.as_str().to_owned()).collect()
    };
    assert_eq!(names("CREATE TEMP TABLE scratch (id int)"), ["scratch"]);
    assert_eq!(names("CREATE TEMPORARY TABLE s2 AS SELECT * FROM t"), ["s2"]);
    assert_eq!(names("SELECT * INTO TEMP s3 FROM t"), ["s3"]);
    assert!(names("CREATE TABLE kept (id int)").is_empty());
    assert!(names("SELECT * FROM t").is_empty());
}

/// An operator PostgreSQL does not ship runs a user function the text does not name; the
/// shipped ones, the keyword forms (`BETWEEN`, `IS DISTINCT FROM`, `LIKE`, `IN`) and `pg_catalog`'s
/// qualified ones are what they look like.
#[test]
fn operators_postgres_does_not_ship_are_user_code() {
    for sql in [
        "SELECT 1 ### 2",
        "SELECT * FROM t WHERE a === b",
        "SELECT * FROM t WHERE a OPERATOR(public.=) b",
        "SELECT * FROM t WHERE a OPERATOR(pg_catalog.###) 1",
        "SELECT @#@ a FROM t",
        "SELECT 1 ### ANY (SELECT 2)",
        "SELECT * FROM t WHERE a ### ALL (SELECT b FROM u)",
        "SELECT * FROM t ORDER BY a USING ###",
    ] {
        let a = analyze(sql);
        assert!(
            matches!(a.cacheability().reason(), Some(NotCacheable::UnknownFunction(_))),
            "{sql}: {}",
            a.cacheability()
        );
        assert_eq!(*a.writes(), WriteEffect::Unknown, "{sql}");
        assert!(!a.leaves_session_alone(), "{sql}");
    }
    for sql in [
        "SELECT * FROM t WHERE a = 1 AND b <> 2 AND c != 3 AND d >= 4 AND e ~~ 'x%' AND f !~* 'y'",
        "SELECT * FROM t WHERE a BETWEEN 1 AND 2 AND b NOT BETWEEN SYMMETRIC 3 AND 4",
        "SELECT * FROM t WHERE a IS DISTINCT FROM b AND c IN (1, 2) AND d NOT IN (3) AND e LIKE 'x' AND f ILIKE 'y'",
        "SELECT -a, a || b, j -> 'k', j ->> 'k', arr @> ARRAY[1], NULLIF(a, b) FROM t",
        "SELECT * FROM t WHERE a OPERATOR(pg_catalog.=) 1 AND b = ANY(ARRAY[1, 2])",
    ] {
        assert!(analyze(sql).cacheability().is_cacheable(), "{sql}: {}", analyze(sql).cacheability());
    }
}

/// A shipped operator named unqualified may run a user operator of that name for other argument
/// types, so the statement lists it (as `operator =`); one qualified with `pg_catalog` is the
/// built-in and is not listed.
#[test]
fn shipped_operators_named_unqualified_are_listed() {
    let operators = |sql: &str| -> Vec<String> {
        let a = analyze(sql);
        a.statements().iter().flat_map(|s| s.operators()).map(|o| o.to_string()).collect()
    };
    assert_eq!(
        operators(
            "SELECT * FROM t WHERE a = 1 AND b BETWEEN 1 AND 2 AND c LIKE 'x' AND d = 2 AND e IN (1, 2)"
        ),
        ["operator =", "operator >=", "operator <=", "operator ~~"]
    );
    assert_eq!(operators("SELECT -a, a || b FROM t"), ["operator -", "operator ||"]);
    assert!(operators("SELECT * FROM t WHERE a OPERATOR(pg_catalog.=) 1").is_empty());
    assert!(operators("SELECT count(*) FROM t").is_empty());
    assert_eq!(operators("SELECT * FROM t WHERE a IN (SELECT b FROM u)"), ["operator ="]);
    assert_eq!(operators("SELECT * FROM t WHERE a < ALL (SELECT b FROM u)"), ["operator <"]);
    assert_eq!(operators("SELECT * FROM t ORDER BY a USING >"), ["operator >"]);
    assert!(operators("SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u)").is_empty());
}
