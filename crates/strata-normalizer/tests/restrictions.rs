//! Key restrictions: which rows of a table a read's result can depend on and which rows a write
//! changes, as the text proves them (`read_restrictions`, `write_keys`).

use expect_test::{expect, Expect};
use strata_normalizer::{
    analyze, Analysis, Normalizer, NormalizerConfig, OnConflict, RestrictedValues, StatementAnalysis,
    StatementKind, ValueRef, WriteEffect,
};

mod support;

use support::{corpus_files, sql_of_psql_script, statements_of};

fn value(s: &StatementAnalysis, v: &ValueRef) -> String {
    let cast = v.cast().map(|c| format!("::{c}")).unwrap_or_default();
    match v {
        ValueRef::Client { number, .. } => format!("${number}{cast}"),
        ValueRef::Literal { index, .. } => {
            let text = s.params().get(*index as usize).map_or("OUT OF RANGE", |p| p.text());
            format!("#{index}({text}){cast}")
        }
        ValueRef::Null => "NULL".to_owned(),
        _ => "?".to_owned(),
    }
}

fn values(s: &StatementAnalysis, v: &RestrictedValues) -> String {
    match v {
        RestrictedValues::Points(p) => {
            format!("in {{{}}}", p.iter().map(|v| value(s, v)).collect::<Vec<_>>().join(", "))
        }
        RestrictedValues::Elements(a) => format!("in elements of {}", value(s, a)),
        RestrictedValues::Range { low, low_inclusive, high, high_inclusive } => format!(
            "in {}{}, {}{}",
            if *low_inclusive { "[" } else { "(" },
            value(s, low),
            value(s, high),
            if *high_inclusive { "]" } else { ")" }
        ),
        _ => "?".to_owned(),
    }
}

/// One line per statement: its read restrictions, or its write keys.
fn render(sql: &str) -> String {
    render_analysis(&analyze(sql))
}

fn render_analysis(a: &Analysis) -> String {
    let mut out = Vec::new();
    for s in a.statements() {
        let reads: Vec<String> = s
            .read_restrictions()
            .iter()
            .map(|r| format!("{}.{} {}", r.table(), r.column(), values(s, r.values())))
            .collect();
        if !reads.is_empty() {
            out.push(reads.join("; "));
        }
        if let Some(w) = s.write_keys() {
            let mut parts = vec![format!("write {}", w.table())];
            for r in w.restrictions() {
                parts.push(format!("{} {}", r.column(), values(s, r.values())));
            }
            if !w.assignments().is_empty() {
                let set: Vec<String> = w
                    .assignments()
                    .iter()
                    .map(|a| format!("{}={}", a.column(), a.value().map_or("?".to_owned(), |v| value(s, v))))
                    .collect();
                parts.push(format!("set {}", set.join(",")));
            }
            match w.on_conflict() {
                Some(OnConflict::DoNothing) => parts.push("on conflict do nothing".to_owned()),
                Some(OnConflict::DoUpdate { conflict_columns }) => {
                    parts.push(format!("on conflict {conflict_columns:?} do update"))
                }
                _ => {}
            }
            if !w.returning().is_empty() || w.returns_all_columns() {
                let star = if w.returns_all_columns() { " *" } else { "" };
                parts.push(format!("returning {:?}{star}", w.returning()));
            }
            out.push(parts.join(" | "));
        }
    }
    if out.is_empty() {
        "-".to_owned()
    } else {
        out.join(" || ")
    }
}

fn check(cases: &[&str], expect: Expect) {
    let out: Vec<String> = cases.iter().map(|sql| format!("{sql}\n  {}", render(sql))).collect();
    expect.assert_eq(&(out.join("\n") + "\n"));
}

#[test]
fn reads_points_lists_arrays_and_closed_ranges() {
    check(
        &[
            "SELECT * FROM t WHERE id = 5",
            "SELECT * FROM t WHERE 5 = id",
            "SELECT * FROM t WHERE id = $1",
            "SELECT * FROM t WHERE id IN (1, 2, 3)",
            "SELECT * FROM t WHERE id IN ($1, $2)",
            "SELECT * FROM t WHERE id IN (-1, 2)",
            "SELECT * FROM t WHERE id IN (1, NULL)",
            "SELECT \"users\".* FROM \"users\" WHERE \"users\".\"id\" = $1 LIMIT $2",
            "SELECT * FROM t WHERE id = ANY($1)",
            "SELECT * FROM t WHERE id = ANY($1::int8[])",
            "SELECT * FROM t WHERE id = ANY('{1,2}')",
            "SELECT * FROM t WHERE id = ANY(ARRAY[1, 2])",
            "SELECT * FROM t WHERE id = ANY(ARRAY[$1, $2])",
            "SELECT * FROM t WHERE id BETWEEN 1 AND 10",
            "SELECT * FROM t WHERE id >= $1 AND id < $2",
            "SELECT * FROM t WHERE 10 > id AND 1 <= id",
            "SELECT * FROM t WHERE id > 1 AND id <= 10 AND id > 2",
            "SELECT * FROM t WHERE id OPERATOR(pg_catalog.=) 5",
            "SELECT * FROM t WHERE id OPERATOR(pg_catalog.<) 5 AND id OPERATOR(pg_catalog.>=) 1",
            "SELECT * FROM t WHERE id BETWEEN 1 AND 9 AND id = 4",
            "SELECT * FROM t WHERE id IN (1, 2, 3) AND id = 4",
            "SELECT * FROM t WHERE (id = 1 AND x = 'a') AND y = true",
            "SELECT * FROM t WHERE id = 1 AND tenant = $1",
        ],
        expect![[r#"
            SELECT * FROM t WHERE id = 5
              t.id in {#0(5)}
            SELECT * FROM t WHERE 5 = id
              t.id in {#0(5)}
            SELECT * FROM t WHERE id = $1
              t.id in {$1}
            SELECT * FROM t WHERE id IN (1, 2, 3)
              t.id in {#0(1), #1(2), #2(3)}
            SELECT * FROM t WHERE id IN ($1, $2)
              t.id in {$1, $2}
            SELECT * FROM t WHERE id IN (-1, 2)
              t.id in {#0(-1), #1(2)}
            SELECT * FROM t WHERE id IN (1, NULL)
              t.id in {#0(1), NULL}
            SELECT "users".* FROM "users" WHERE "users"."id" = $1 LIMIT $2
              users.id in {$1}
            SELECT * FROM t WHERE id = ANY($1)
              t.id in elements of $1
            SELECT * FROM t WHERE id = ANY($1::int8[])
              t.id in elements of $1::int8[]
            SELECT * FROM t WHERE id = ANY('{1,2}')
              t.id in elements of #0({1,2})
            SELECT * FROM t WHERE id = ANY(ARRAY[1, 2])
              t.id in {#0(1), #1(2)}
            SELECT * FROM t WHERE id = ANY(ARRAY[$1, $2])
              t.id in {$1, $2}
            SELECT * FROM t WHERE id BETWEEN 1 AND 10
              t.id in [#0(1), #1(10)]
            SELECT * FROM t WHERE id >= $1 AND id < $2
              t.id in [$1, $2)
            SELECT * FROM t WHERE 10 > id AND 1 <= id
              t.id in [#1(1), #0(10))
            SELECT * FROM t WHERE id > 1 AND id <= 10 AND id > 2
              t.id in (#0(1), #1(10)]
            SELECT * FROM t WHERE id OPERATOR(pg_catalog.=) 5
              t.id in {#0(5)}
            SELECT * FROM t WHERE id OPERATOR(pg_catalog.<) 5 AND id OPERATOR(pg_catalog.>=) 1
              t.id in [#1(1), #0(5))
            SELECT * FROM t WHERE id BETWEEN 1 AND 9 AND id = 4
              t.id in {#2(4)}
            SELECT * FROM t WHERE id IN (1, 2, 3) AND id = 4
              t.id in {#3(4)}
            SELECT * FROM t WHERE (id = 1 AND x = 'a') AND y = true
              t.id in {#0(1)}; t.x in {#1(a)}; t.y in {#2(true)}
            SELECT * FROM t WHERE id = 1 AND tenant = $1
              t.id in {#0(1)}; t.tenant in {$1}
        "#]],
    );
}

#[test]
fn reads_keep_casts_for_the_later_type_check() {
    check(
        &[
            "SELECT * FROM t WHERE id = '5'::bigint",
            "SELECT * FROM t WHERE id = CAST($1 AS uuid)",
            "SELECT * FROM t WHERE id = int8 '5'",
            "SELECT * FROM t WHERE id = '1'::numeric",
            "SELECT * FROM t WHERE id = 4.0",
            "SELECT * FROM t WHERE id = '5'::public.myint",
            "SELECT * FROM t WHERE id IN ('a'::text, 'b')",
            "SELECT * FROM t WHERE id BETWEEN '2024-01-01'::date AND $1::date",
        ],
        expect![[r#"
            SELECT * FROM t WHERE id = '5'::bigint
              t.id in {#0(5)::pg_catalog.int8}
            SELECT * FROM t WHERE id = CAST($1 AS uuid)
              t.id in {$1::uuid}
            SELECT * FROM t WHERE id = int8 '5'
              t.id in {#0(5)::int8}
            SELECT * FROM t WHERE id = '1'::numeric
              t.id in {#0(1)::pg_catalog.numeric}
            SELECT * FROM t WHERE id = 4.0
              t.id in {#0(4.0)}
            SELECT * FROM t WHERE id = '5'::public.myint
              t.id in {#0(5)::public.myint}
            SELECT * FROM t WHERE id IN ('a'::text, 'b')
              t.id in {#0(a)::text, #1(b)}
            SELECT * FROM t WHERE id BETWEEN '2024-01-01'::date AND $1::date
              t.id in [#0(2024-01-01)::date, $1::date]
        "#]],
    );
}

#[test]
fn reads_resolve_columns_to_one_entry() {
    check(
        &[
            "SELECT * FROM t WHERE t.id = 5",
            "SELECT * FROM public.t WHERE public.t.id = 5",
            "SELECT * FROM public.t WHERE t.id = 5",
            "SELECT * FROM t AS x WHERE x.id = 5",
            // The alias hides the table name, and the unqualified name has one candidate.
            "SELECT * FROM t AS x WHERE t.id = 5",
            "SELECT * FROM t AS x WHERE id = 5",
            // Only the restricted table of a join is restricted.
            "SELECT a.abalance, b.bbalance FROM pgbench_accounts a JOIN pgbench_branches b ON b.bid = a.bid WHERE a.aid BETWEEN 1 AND 5000",
            "SELECT * FROM t, u WHERE t.id = 1 AND u.id = 2",
            "SELECT * FROM t, generate_series(1, 3) AS g WHERE t.id = 1 AND g = 2",
            "SELECT * FROM t, LATERAL (SELECT * FROM u WHERE u.tid = t.id) s WHERE t.id = 1",
            // The preserved side of an outer join, and the nullable side with the term in WHERE
            // (strict operators drop the rows extended with NULLs).
            "SELECT * FROM t LEFT JOIN u ON u.tid = t.id WHERE t.id = 1",
            "SELECT * FROM t LEFT JOIN u ON u.tid = t.id WHERE u.id = 1",
            "SELECT * FROM t FULL JOIN u ON u.tid = t.id WHERE u.id = 1 AND t.id = 2",
            "SELECT * FROM t JOIN u USING (k) WHERE t.id = 1",
            // A self-join restricted on both sides: one restriction per reference.
            "SELECT * FROM t a JOIN t b ON a.parent = b.id WHERE a.id = 1 AND b.id = 2",
        ],
        expect![[r#"
            SELECT * FROM t WHERE t.id = 5
              t.id in {#0(5)}
            SELECT * FROM public.t WHERE public.t.id = 5
              public.t.id in {#0(5)}
            SELECT * FROM public.t WHERE t.id = 5
              public.t.id in {#0(5)}
            SELECT * FROM t AS x WHERE x.id = 5
              t.id in {#0(5)}
            SELECT * FROM t AS x WHERE t.id = 5
              -
            SELECT * FROM t AS x WHERE id = 5
              t.id in {#0(5)}
            SELECT a.abalance, b.bbalance FROM pgbench_accounts a JOIN pgbench_branches b ON b.bid = a.bid WHERE a.aid BETWEEN 1 AND 5000
              pgbench_accounts.aid in [#0(1), #1(5000)]
            SELECT * FROM t, u WHERE t.id = 1 AND u.id = 2
              t.id in {#0(1)}; u.id in {#1(2)}
            SELECT * FROM t, generate_series(1, 3) AS g WHERE t.id = 1 AND g = 2
              t.id in {#2(1)}
            SELECT * FROM t, LATERAL (SELECT * FROM u WHERE u.tid = t.id) s WHERE t.id = 1
              t.id in {#0(1)}
            SELECT * FROM t LEFT JOIN u ON u.tid = t.id WHERE t.id = 1
              t.id in {#0(1)}
            SELECT * FROM t LEFT JOIN u ON u.tid = t.id WHERE u.id = 1
              u.id in {#0(1)}
            SELECT * FROM t FULL JOIN u ON u.tid = t.id WHERE u.id = 1 AND t.id = 2
              u.id in {#0(1)}; t.id in {#1(2)}
            SELECT * FROM t JOIN u USING (k) WHERE t.id = 1
              t.id in {#0(1)}
            SELECT * FROM t a JOIN t b ON a.parent = b.id WHERE a.id = 1 AND b.id = 2
              t.id in {#0(1)}; t.id in {#1(2)}
        "#]],
    );
}

#[test]
fn reads_restrict_before_grouping_ordering_limits_and_windows() {
    check(
        &[
            "SELECT count(*) FROM t WHERE id IN (1, 2) GROUP BY x HAVING count(*) > 1 ORDER BY 1 LIMIT 5 OFFSET 1",
            "SELECT DISTINCT ON (x) x, row_number() OVER (ORDER BY y) FROM t WHERE id = 1",
            "SELECT DISTINCT x FROM t WHERE id = $1 ORDER BY x FETCH FIRST 1 ROWS WITH TIES",
            "SELECT x, sum(y) FROM t WHERE id BETWEEN $1 AND $2 GROUP BY ROLLUP (x)",
        ],
        expect![[r#"
            SELECT count(*) FROM t WHERE id IN (1, 2) GROUP BY x HAVING count(*) > 1 ORDER BY 1 LIMIT 5 OFFSET 1
              t.id in {#0(1), #1(2)}
            SELECT DISTINCT ON (x) x, row_number() OVER (ORDER BY y) FROM t WHERE id = 1
              t.id in {#0(1)}
            SELECT DISTINCT x FROM t WHERE id = $1 ORDER BY x FETCH FIRST 1 ROWS WITH TIES
              t.id in {$1}
            SELECT x, sum(y) FROM t WHERE id BETWEEN $1 AND $2 GROUP BY ROLLUP (x)
              t.id in [$1, $2]
        "#]],
    );
}

#[test]
fn reads_analyze_each_select_level_on_its_own() {
    check(
        &[
            "WITH c AS (SELECT * FROM t WHERE id = 1) SELECT * FROM c JOIN u ON u.id = c.uid",
            "WITH c AS MATERIALIZED (SELECT * FROM t WHERE id = 1) SELECT * FROM c WHERE c.id = 2",
            "SELECT * FROM (SELECT * FROM t WHERE id = $1) s WHERE s.x = 2",
            "SELECT (SELECT name FROM u WHERE u.id = 3) FROM t WHERE t.id = 1",
            "SELECT * FROM t WHERE id = 1 AND x IN (SELECT x FROM u WHERE u.id = 2)",
            // A subquery's own level restricts its table, whatever surrounds the subquery.
            "SELECT * FROM u WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.id = 5 AND t.x = u.x)",
            "SELECT * FROM u WHERE u.a = 1 OR EXISTS (SELECT 1 FROM t WHERE t.id = $1)",
            "WITH RECURSIVE r AS (SELECT id FROM t WHERE id = 1 UNION ALL SELECT r.id + 1 FROM r WHERE r.id < 9) SELECT * FROM r",
            "SELECT x FROM t WHERE id = 1 UNION SELECT x FROM t WHERE id = 2",
            "SELECT x FROM t WHERE id = 1 UNION ALL SELECT x FROM u",
            "SELECT x FROM t WHERE id = 1 INTERSECT SELECT x FROM t WHERE id BETWEEN 1 AND 3 ORDER BY 1 LIMIT 1",
            "SELECT * FROM t WHERE id = 1; SELECT * FROM t WHERE id = 2",
            // Every spelling of the relation is restricted.
            "SELECT * FROM t WHERE id = 1 UNION ALL SELECT * FROM public.t WHERE public.t.id = 1 AND x = 2",
        ],
        expect![[r#"
            WITH c AS (SELECT * FROM t WHERE id = 1) SELECT * FROM c JOIN u ON u.id = c.uid
              t.id in {#0(1)}
            WITH c AS MATERIALIZED (SELECT * FROM t WHERE id = 1) SELECT * FROM c WHERE c.id = 2
              t.id in {#0(1)}
            SELECT * FROM (SELECT * FROM t WHERE id = $1) s WHERE s.x = 2
              t.id in {$1}
            SELECT (SELECT name FROM u WHERE u.id = 3) FROM t WHERE t.id = 1
              t.id in {#1(1)}; u.id in {#0(3)}
            SELECT * FROM t WHERE id = 1 AND x IN (SELECT x FROM u WHERE u.id = 2)
              t.id in {#0(1)}; u.id in {#1(2)}
            SELECT * FROM u WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.id = 5 AND t.x = u.x)
              t.id in {#1(5)}
            SELECT * FROM u WHERE u.a = 1 OR EXISTS (SELECT 1 FROM t WHERE t.id = $1)
              t.id in {$1}
            WITH RECURSIVE r AS (SELECT id FROM t WHERE id = 1 UNION ALL SELECT r.id + 1 FROM r WHERE r.id < 9) SELECT * FROM r
              t.id in {#0(1)}
            SELECT x FROM t WHERE id = 1 UNION SELECT x FROM t WHERE id = 2
              t.id in {#0(1)}; t.id in {#1(2)}
            SELECT x FROM t WHERE id = 1 UNION ALL SELECT x FROM u
              t.id in {#0(1)}
            SELECT x FROM t WHERE id = 1 INTERSECT SELECT x FROM t WHERE id BETWEEN 1 AND 3 ORDER BY 1 LIMIT 1
              t.id in {#0(1)}; t.id in [#1(1), #2(3)]
            SELECT * FROM t WHERE id = 1; SELECT * FROM t WHERE id = 2
              t.id in {#0(1)} || t.id in {#0(2)}
            SELECT * FROM t WHERE id = 1 UNION ALL SELECT * FROM public.t WHERE public.t.id = 1 AND x = 2
              t.id in {#0(1)}; public.t.id in {#1(1)}
        "#]],
    );
}

#[test]
fn reads_refuse_conditions_that_do_not_bound_the_rows() {
    check(
        &[
            "SELECT * FROM t WHERE id = 1 OR id = 2",
            "SELECT * FROM t WHERE NOT (id = 1)",
            "SELECT * FROM t WHERE NOT id <> 1",
            "SELECT * FROM t WHERE CASE WHEN id = 1 THEN true ELSE false END",
            "SELECT * FROM t WHERE (id = 1) IS TRUE",
            "SELECT * FROM t WHERE abs(id) = 1",
            "SELECT * FROM t WHERE id::text = '1'",
            "SELECT * FROM t WHERE id + 0 = 1",
            "SELECT * FROM t WHERE id = 1 + 1",
            "SELECT * FROM t WHERE id = -5",
            "SELECT * FROM t WHERE id = - $1",
            "SELECT * FROM t WHERE id = '1'::varchar(3)",
            "SELECT * FROM t WHERE id = '1'::text::int",
            "SELECT * FROM t WHERE id = 'a' COLLATE \"C\"",
            "SELECT * FROM t WHERE id = NULL",
            "SELECT * FROM t WHERE id IS NULL",
            "SELECT * FROM t WHERE id IS NOT DISTINCT FROM 1",
            "SELECT * FROM t WHERE id <> 1",
            "SELECT * FROM t WHERE id LIKE 'a%'",
            "SELECT * FROM t WHERE id >= 1",
            "SELECT * FROM t WHERE id < $1",
            "SELECT * FROM t WHERE id > 1 AND x < 5",
            "SELECT * FROM t WHERE id BETWEEN SYMMETRIC 1 AND 2",
            "SELECT * FROM t WHERE id NOT BETWEEN 1 AND 2",
            "SELECT * FROM t WHERE id NOT IN (1, 2)",
            "SELECT * FROM t WHERE id IN (SELECT id FROM u)",
            "SELECT * FROM t WHERE id = ANY(SELECT id FROM u)",
            "SELECT * FROM t WHERE id = ALL(ARRAY[1])",
            "SELECT * FROM t WHERE id = ANY(ARRAY[1, 2]::int8[])",
            "SELECT * FROM t WHERE id = ANY($1[1:2])",
            "SELECT * FROM t WHERE id = $1[1]",
            "SELECT * FROM t WHERE id = x",
            "SELECT * FROM t WHERE id = t.x",
            "SELECT * FROM t WHERE (id, x) = (1, 2)",
            "SELECT * FROM t WHERE t.* = ROW(1)",
            "SELECT * FROM t WHERE id IN (1, x)",
            "SELECT id FROM t GROUP BY id HAVING id = 1",
        ],
        expect![[r#"
            SELECT * FROM t WHERE id = 1 OR id = 2
              -
            SELECT * FROM t WHERE NOT (id = 1)
              -
            SELECT * FROM t WHERE NOT id <> 1
              -
            SELECT * FROM t WHERE CASE WHEN id = 1 THEN true ELSE false END
              -
            SELECT * FROM t WHERE (id = 1) IS TRUE
              -
            SELECT * FROM t WHERE abs(id) = 1
              -
            SELECT * FROM t WHERE id::text = '1'
              -
            SELECT * FROM t WHERE id + 0 = 1
              -
            SELECT * FROM t WHERE id = 1 + 1
              -
            SELECT * FROM t WHERE id = -5
              -
            SELECT * FROM t WHERE id = - $1
              -
            SELECT * FROM t WHERE id = '1'::varchar(3)
              -
            SELECT * FROM t WHERE id = '1'::text::int
              -
            SELECT * FROM t WHERE id = 'a' COLLATE "C"
              -
            SELECT * FROM t WHERE id = NULL
              -
            SELECT * FROM t WHERE id IS NULL
              -
            SELECT * FROM t WHERE id IS NOT DISTINCT FROM 1
              -
            SELECT * FROM t WHERE id <> 1
              -
            SELECT * FROM t WHERE id LIKE 'a%'
              -
            SELECT * FROM t WHERE id >= 1
              -
            SELECT * FROM t WHERE id < $1
              -
            SELECT * FROM t WHERE id > 1 AND x < 5
              -
            SELECT * FROM t WHERE id BETWEEN SYMMETRIC 1 AND 2
              -
            SELECT * FROM t WHERE id NOT BETWEEN 1 AND 2
              -
            SELECT * FROM t WHERE id NOT IN (1, 2)
              -
            SELECT * FROM t WHERE id IN (SELECT id FROM u)
              -
            SELECT * FROM t WHERE id = ANY(SELECT id FROM u)
              -
            SELECT * FROM t WHERE id = ALL(ARRAY[1])
              -
            SELECT * FROM t WHERE id = ANY(ARRAY[1, 2]::int8[])
              -
            SELECT * FROM t WHERE id = ANY($1[1:2])
              -
            SELECT * FROM t WHERE id = $1[1]
              -
            SELECT * FROM t WHERE id = x
              -
            SELECT * FROM t WHERE id = t.x
              -
            SELECT * FROM t WHERE (id, x) = (1, 2)
              -
            SELECT * FROM t WHERE t.* = ROW(1)
              -
            SELECT * FROM t WHERE id IN (1, x)
              -
            SELECT id FROM t GROUP BY id HAVING id = 1
              -
        "#]],
    );
}

#[test]
fn reads_refuse_what_is_not_certain_about_the_entry() {
    check(
        &[
            // Ambiguous: two entries could have the column.
            "SELECT * FROM t JOIN u ON u.tid = t.id WHERE id = 1",
            "SELECT * FROM t, u WHERE id = 1",
            "SELECT * FROM t JOIN u USING (id) WHERE id = 1",
            // A join's ON clause: a preserved row outside the values still appears.
            "SELECT * FROM t LEFT JOIN u ON u.tid = t.id AND u.id = 1",
            "SELECT * FROM t LEFT JOIN u ON u.tid = t.id AND t.id = 1",
            "SELECT * FROM t JOIN u ON u.tid = t.id AND t.id = 1",
            // A self-join restricted on one side only, or on different columns.
            "SELECT * FROM t a JOIN t b ON a.parent = b.id WHERE a.id = 1",
            "SELECT * FROM t a JOIN t b ON a.parent = b.id WHERE a.id = 1 AND b.x = 2",
            // A second reference anywhere: a UNION branch, a subquery, a CTE, another spelling.
            "SELECT x FROM t WHERE id = 1 UNION SELECT x FROM t",
            "SELECT * FROM t WHERE id = 1 AND EXISTS (SELECT 1 FROM t t2 WHERE t2.x = t.x)",
            "SELECT *, (SELECT max(id) FROM t) FROM t WHERE id = 1",
            "WITH c AS (SELECT * FROM t) SELECT * FROM t WHERE id = 1",
            "SELECT * FROM t WHERE id = 1 UNION ALL SELECT * FROM public.t WHERE x = 2",
            "SELECT * FROM s1.t WHERE id = 1 UNION ALL SELECT * FROM s2.t",
            "WITH RECURSIVE r AS (SELECT * FROM t WHERE id = 1 UNION ALL SELECT t.* FROM t JOIN r ON t.parent = r.id) SELECT * FROM r",
            // A condition at another level: the correlated subquery restricts the outer table.
            "SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE t.id = 5)",
            "SELECT * FROM t WHERE EXISTS (SELECT 1 FROM t t2 WHERE t.id = 5 AND t2.id = 5)",
            // A condition outside a subquery does not reach into it (here past its LIMIT).
            "SELECT * FROM (SELECT * FROM t ORDER BY x LIMIT 10) s WHERE s.id = 1",
            "WITH c AS (SELECT * FROM t) SELECT * FROM c WHERE c.id = 1",
            // Not a plain table entry.
            "WITH t AS (SELECT * FROM u) SELECT * FROM t WHERE id = 1",
            "SELECT * FROM t AS x(a, b) WHERE x.a = 1",
            "SELECT * FROM (t JOIN u ON u.tid = t.id) AS j WHERE j.id = 1",
            "SELECT * FROM (t JOIN u ON u.tid = t.id) AS j WHERE t.id = 1",
            "SELECT * FROM t TABLESAMPLE SYSTEM (10) REPEATABLE (1) WHERE id = 1",
            "SELECT * FROM generate_series(1, 3) AS g(id) WHERE id = 1",
            // Not a SELECT.
            "EXPLAIN SELECT * FROM t WHERE id = 1",
            "DECLARE c CURSOR FOR SELECT * FROM t WHERE id = 1",
            "CREATE VIEW v AS SELECT * FROM t WHERE id = 1",
        ],
        expect![[r#"
            SELECT * FROM t JOIN u ON u.tid = t.id WHERE id = 1
              -
            SELECT * FROM t, u WHERE id = 1
              -
            SELECT * FROM t JOIN u USING (id) WHERE id = 1
              -
            SELECT * FROM t LEFT JOIN u ON u.tid = t.id AND u.id = 1
              -
            SELECT * FROM t LEFT JOIN u ON u.tid = t.id AND t.id = 1
              -
            SELECT * FROM t JOIN u ON u.tid = t.id AND t.id = 1
              -
            SELECT * FROM t a JOIN t b ON a.parent = b.id WHERE a.id = 1
              -
            SELECT * FROM t a JOIN t b ON a.parent = b.id WHERE a.id = 1 AND b.x = 2
              -
            SELECT x FROM t WHERE id = 1 UNION SELECT x FROM t
              -
            SELECT * FROM t WHERE id = 1 AND EXISTS (SELECT 1 FROM t t2 WHERE t2.x = t.x)
              -
            SELECT *, (SELECT max(id) FROM t) FROM t WHERE id = 1
              -
            WITH c AS (SELECT * FROM t) SELECT * FROM t WHERE id = 1
              -
            SELECT * FROM t WHERE id = 1 UNION ALL SELECT * FROM public.t WHERE x = 2
              -
            SELECT * FROM s1.t WHERE id = 1 UNION ALL SELECT * FROM s2.t
              -
            WITH RECURSIVE r AS (SELECT * FROM t WHERE id = 1 UNION ALL SELECT t.* FROM t JOIN r ON t.parent = r.id) SELECT * FROM r
              -
            SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE t.id = 5)
              -
            SELECT * FROM t WHERE EXISTS (SELECT 1 FROM t t2 WHERE t.id = 5 AND t2.id = 5)
              -
            SELECT * FROM (SELECT * FROM t ORDER BY x LIMIT 10) s WHERE s.id = 1
              -
            WITH c AS (SELECT * FROM t) SELECT * FROM c WHERE c.id = 1
              -
            WITH t AS (SELECT * FROM u) SELECT * FROM t WHERE id = 1
              -
            SELECT * FROM t AS x(a, b) WHERE x.a = 1
              -
            SELECT * FROM (t JOIN u ON u.tid = t.id) AS j WHERE j.id = 1
              -
            SELECT * FROM (t JOIN u ON u.tid = t.id) AS j WHERE t.id = 1
              -
            SELECT * FROM t TABLESAMPLE SYSTEM (10) REPEATABLE (1) WHERE id = 1
              -
            SELECT * FROM generate_series(1, 3) AS g(id) WHERE id = 1
              -
            EXPLAIN SELECT * FROM t WHERE id = 1
              -
            DECLARE c CURSOR FOR SELECT * FROM t WHERE id = 1
              -
            CREATE VIEW v AS SELECT * FROM t WHERE id = 1
              -
        "#]],
    );
}

#[test]
fn writes_report_keys_assignments_conflicts_and_returning() {
    check(
        &[
            "UPDATE t SET x = 1 WHERE id = 5",
            "UPDATE t SET x = x + 1 WHERE id IN (1, 2) AND y > 3",
            "UPDATE t SET id = 7, x = DEFAULT WHERE id = 5",
            "UPDATE t AS a SET x = $1::int8 WHERE a.id = $2",
            "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 42",
            "UPDATE t SET (a, b) = (1, 2) WHERE id = 1",
            "UPDATE t SET a[1] = 2 WHERE id = ANY($1)",
            "UPDATE ONLY t SET a = NULL WHERE id = 1 AND tenant = 2",
            "DELETE FROM t WHERE id = $1",
            "DELETE FROM t WHERE id = ANY(ARRAY[1, 2, 3])",
            "INSERT INTO t (id, name) VALUES (1, 'a'), (2, 'b')",
            "INSERT INTO t (id, name) VALUES ($1, $2) RETURNING id",
            "INSERT INTO t (name) VALUES ('a') RETURNING id, t.created, name || 'x'",
            "INSERT INTO t AS x (name) VALUES ('a') RETURNING x.*",
            "INSERT INTO t (id, n) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET n = excluded.n",
            "INSERT INTO t (id) VALUES (1) ON CONFLICT DO NOTHING",
            "INSERT INTO t (id) VALUES (1) ON CONFLICT ON CONSTRAINT t_pkey DO UPDATE SET id = 2",
            "INSERT INTO t (id) VALUES (1) ON CONFLICT (lower(k)) DO UPDATE SET k = 'x'",
            "INSERT INTO t (id, n) VALUES (DEFAULT, 1), (2, 3)",
            "INSERT INTO t (id) VALUES ('5'::int8)",
            "INSERT INTO t (id) OVERRIDING SYSTEM VALUE VALUES (5)",
            "INSERT INTO t (id, id2) VALUES (1, 1 + 1)",
            "WITH v AS (SELECT 1) INSERT INTO t (id) VALUES (1)",
        ],
        expect![[r#"
            UPDATE t SET x = 1 WHERE id = 5
              write t | id in {#1(5)} | set x=#0(1)
            UPDATE t SET x = x + 1 WHERE id IN (1, 2) AND y > 3
              write t | id in {#1(1), #2(2)} | set x=?
            UPDATE t SET id = 7, x = DEFAULT WHERE id = 5
              write t | id in {#1(5)} | set id=#0(7),x=?
            UPDATE t AS a SET x = $1::int8 WHERE a.id = $2
              write t | id in {$2} | set x=$1::int8
            UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 42
              write pgbench_accounts | aid in {#1(42)} | set abalance=?
            UPDATE t SET (a, b) = (1, 2) WHERE id = 1
              write t | id in {#2(1)} | set a=?,b=?
            UPDATE t SET a[1] = 2 WHERE id = ANY($1)
              write t | id in elements of $1 | set a=?
            UPDATE ONLY t SET a = NULL WHERE id = 1 AND tenant = 2
              write t | id in {#0(1)} | tenant in {#1(2)} | set a=NULL
            DELETE FROM t WHERE id = $1
              write t | id in {$1}
            DELETE FROM t WHERE id = ANY(ARRAY[1, 2, 3])
              write t | id in {#0(1), #1(2), #2(3)}
            INSERT INTO t (id, name) VALUES (1, 'a'), (2, 'b')
              write t | id in {#0(1), #2(2)} | name in {#1(a), #3(b)}
            INSERT INTO t (id, name) VALUES ($1, $2) RETURNING id
              write t | id in {$1} | name in {$2} | returning ["id"]
            INSERT INTO t (name) VALUES ('a') RETURNING id, t.created, name || 'x'
              write t | name in {#0(a)} | returning ["id", "created"]
            INSERT INTO t AS x (name) VALUES ('a') RETURNING x.*
              write t | name in {#0(a)} | returning [] *
            INSERT INTO t (id, n) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET n = excluded.n
              write t | id in {#0(1)} | n in {#1(2)} | set n=? | on conflict Some(["id"]) do update
            INSERT INTO t (id) VALUES (1) ON CONFLICT DO NOTHING
              write t | id in {#0(1)} | on conflict do nothing
            INSERT INTO t (id) VALUES (1) ON CONFLICT ON CONSTRAINT t_pkey DO UPDATE SET id = 2
              write t | id in {#0(1)} | set id=#1(2) | on conflict None do update
            INSERT INTO t (id) VALUES (1) ON CONFLICT (lower(k)) DO UPDATE SET k = 'x'
              write t | id in {#0(1)} | set k=#1(x) | on conflict None do update
            INSERT INTO t (id, n) VALUES (DEFAULT, 1), (2, 3)
              write t | n in {#0(1), #2(3)}
            INSERT INTO t (id) VALUES ('5'::int8)
              write t | id in {#0(5)::int8}
            INSERT INTO t (id) OVERRIDING SYSTEM VALUE VALUES (5)
              write t | id in {#0(5)}
            INSERT INTO t (id, id2) VALUES (1, 1 + 1)
              write t | id in {#0(1)}
            WITH v AS (SELECT 1) INSERT INTO t (id) VALUES (1)
              write t | id in {#1(1)}
        "#]],
    );
}

#[test]
fn writes_without_known_keys() {
    check(
        &[
            // The rows are not pinned: the write is reported with no restriction.
            "UPDATE t SET x = 1 WHERE id = 1 OR id = 2",
            "UPDATE t SET x = 1 WHERE id > 5",
            "UPDATE t SET x = 1 WHERE id BETWEEN 1 AND 2",
            "UPDATE t SET x = 1 WHERE id = -1",
            "UPDATE t SET x = 1",
            "DELETE FROM t WHERE id IN (SELECT id FROM u)",
            "DELETE FROM t WHERE CURRENT OF c",
            "INSERT INTO t (id) SELECT 5",
            "INSERT INTO t (id) SELECT id FROM u RETURNING id",
            "INSERT INTO t VALUES (1, 2)",
            "INSERT INTO t (id) OVERRIDING USER VALUE VALUES (5) RETURNING id",
            "INSERT INTO t DEFAULT VALUES RETURNING id",
            // The rows written cannot be told from the text: nothing is reported.
            "UPDATE t SET x = 1 FROM u WHERE t.id = u.id AND t.id = 1",
            "DELETE FROM t USING u WHERE t.id = u.id AND t.id = 1",
            "WITH d AS (DELETE FROM u RETURNING id) UPDATE t SET x = 1 WHERE id = 1",
            "WITH d AS (DELETE FROM t WHERE id = 2) INSERT INTO t (id) VALUES (1)",
            "UPDATE t SET x = my_function() WHERE id = 1",
            "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
            "TRUNCATE t",
            "COPY t FROM STDIN",
        ],
        expect![[r#"
            UPDATE t SET x = 1 WHERE id = 1 OR id = 2
              write t | set x=#0(1)
            UPDATE t SET x = 1 WHERE id > 5
              write t | set x=#0(1)
            UPDATE t SET x = 1 WHERE id BETWEEN 1 AND 2
              write t | set x=#0(1)
            UPDATE t SET x = 1 WHERE id = -1
              write t | set x=#0(1)
            UPDATE t SET x = 1
              write t | set x=#0(1)
            DELETE FROM t WHERE id IN (SELECT id FROM u)
              write t
            DELETE FROM t WHERE CURRENT OF c
              write t
            INSERT INTO t (id) SELECT 5
              write t
            INSERT INTO t (id) SELECT id FROM u RETURNING id
              write t | returning ["id"]
            INSERT INTO t VALUES (1, 2)
              write t
            INSERT INTO t (id) OVERRIDING USER VALUE VALUES (5) RETURNING id
              write t | returning ["id"]
            INSERT INTO t DEFAULT VALUES RETURNING id
              write t | returning ["id"]
            UPDATE t SET x = 1 FROM u WHERE t.id = u.id AND t.id = 1
              -
            DELETE FROM t USING u WHERE t.id = u.id AND t.id = 1
              -
            WITH d AS (DELETE FROM u RETURNING id) UPDATE t SET x = 1 WHERE id = 1
              -
            WITH d AS (DELETE FROM t WHERE id = 2) INSERT INTO t (id) VALUES (1)
              -
            UPDATE t SET x = my_function() WHERE id = 1
              -
            MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE
              -
            TRUNCATE t
              -
            COPY t FROM STDIN
              -
        "#]],
    );
}

#[test]
fn a_memoized_analysis_has_the_restrictions_of_a_fresh_one() {
    let config = NormalizerConfig::builder()
        .with_memo_capacity(0)
        .with_shape_memo_capacity(64)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let shapes = Normalizer::new(config);
    let cases = [
        ("SELECT * FROM t WHERE id = 5", "SELECT * FROM t WHERE id = 6"),
        ("SELECT * FROM t WHERE id IN (1, -2, 3) AND x = $1", "SELECT * FROM t WHERE id IN (4, -5, 6) AND x = $1"),
        ("SELECT * FROM t WHERE id BETWEEN 1 AND 10 AND x = 'a'", "SELECT * FROM t WHERE id BETWEEN 7 AND 9 AND x = 'b'"),
        (
            "SELECT a.abalance FROM pgbench_accounts a JOIN pgbench_branches b ON b.bid = a.bid WHERE a.aid BETWEEN 1 AND 5000",
            "SELECT a.abalance FROM pgbench_accounts a JOIN pgbench_branches b ON b.bid = a.bid WHERE a.aid BETWEEN 5001 AND 10000",
        ),
        ("UPDATE t SET x = 1 WHERE id = 2", "UPDATE t SET x = 3 WHERE id = 4"),
        ("INSERT INTO t (id, name) VALUES (1, 'a'), (2, 'b')", "INSERT INTO t (id, name) VALUES (3, 'c'), (4, 'd')"),
        ("SELECT * FROM t WHERE id = 1; DELETE FROM t WHERE id = 2", "SELECT * FROM t WHERE id = 3; DELETE FROM t WHERE id = 4"),
    ];
    for (first, later) in cases {
        shapes.analyze(first);
        shapes.analyze(first);
        let before = shapes.shape_hits();
        let memo = shapes.analyze(later);
        assert_eq!(shapes.shape_hits(), before + 1, "{later} was not answered from its shape");
        let fresh = analyze(later);
        let rendered = render_analysis(&memo);
        assert_ne!(rendered, "-", "{later} has no restrictions");
        // The same references, resolving to the later text's own literals.
        assert_eq!(rendered, render_analysis(&fresh), "{later}");
        assert_ne!(rendered, render(first), "{later}");
        for (m, f) in memo.statements().iter().zip(fresh.statements()) {
            assert_eq!(m.read_restrictions(), f.read_restrictions(), "{later}");
            assert_eq!(m.write_keys(), f.write_keys(), "{later}");
        }
    }
}

/// Every value reference of a restriction is a parameter the statement has.
fn check_values<'a>(
    s: &StatementAnalysis,
    values: impl IntoIterator<Item = &'a ValueRef>,
) -> Result<(), String> {
    for v in values {
        match v {
            ValueRef::Literal { index, .. } if (*index as usize) < s.params().len() => {}
            ValueRef::Client { number, .. } if (1..=s.client_param_count()).contains(number) => {}
            ValueRef::Null => {}
            other => return Err(format!("{other:?} is out of range")),
        }
    }
    Ok(())
}

fn check_statement(s: &StatementAnalysis) -> Result<(), String> {
    if !s.read_restrictions().is_empty() && s.kind() != StatementKind::Select {
        return Err(format!("read restrictions on a {} statement", s.kind()));
    }
    for r in s.read_restrictions() {
        check_values(s, r.values().values())?;
        if !s.reads().contains(r.table()) {
            return Err(format!("restriction on {} which is not read", r.table()));
        }
        if let RestrictedValues::Points(p) = r.values() {
            if p.is_empty() {
                return Err("an empty list of points".to_owned());
            }
        }
    }
    if let Some(w) = s.write_keys() {
        if !matches!(s.writes(), WriteEffect::Tables(t) if t.as_slice() == std::slice::from_ref(w.table())) {
            return Err(format!("write keys for {} but writes {:?}", w.table(), s.writes()));
        }
        for r in w.restrictions() {
            check_values(s, r.values().values())?;
            if matches!(r.values(), RestrictedValues::Range { .. }) || r.table() != w.table() {
                return Err(format!("write restriction {r:?}"));
            }
        }
        check_values(s, w.assignments().iter().filter_map(|a| a.value()))?;
    }
    Ok(())
}

#[test]
fn regression_corpus_restrictions_refer_to_parameters_in_range() {
    let normalizer = Normalizer::new(
        NormalizerConfig::builder().with_memo_capacity(0).build().unwrap_or_else(|e| panic!("{e}")),
    );
    let (mut reads, mut writes, mut wrong) = (0usize, 0usize, Vec::new());
    for file in corpus_files() {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let sql = sql_of_psql_script(&String::from_utf8_lossy(&bytes));
        for part in statements_of(&sql).0 {
            if part.trim().is_empty() {
                continue;
            }
            let a = normalizer.analyze(part);
            for s in a.statements() {
                reads += usize::from(!s.read_restrictions().is_empty());
                writes += usize::from(s.write_keys().is_some_and(|w| !w.restrictions().is_empty()));
                if let Err(e) = check_statement(s) {
                    wrong.push(format!("{e}: {part}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    // The checks must have something to check.
    assert!(reads > 500, "only {reads} statements with read restrictions");
    assert!(writes > 500, "only {writes} writes with known keys");
    eprintln!("{reads} statements with read restrictions, {writes} writes with known keys");
}
