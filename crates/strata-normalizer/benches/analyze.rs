//! Cold `analyze` against raw `pg_query::parse` of the same statements, and memoized `analyze`.
//! After criterion's own report, prints the ratios measured side by side in this run.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use strata_normalizer::{Normalizer, NormalizerConfig};

/// Representative application statements (ORM shapes: point lookups, joins, IN-lists,
/// aggregates, CTEs, JSON, upserts, updates).
const STATEMENTS: &[&str] = &[
    r#"SELECT "auth_user"."id", "auth_user"."username", "auth_user"."email" FROM "auth_user" WHERE "auth_user"."id" = 42 LIMIT 21"#,
    r#"SELECT "users".* FROM "users" WHERE "users"."email" = $1 LIMIT $2"#,
    "select o1_0.id,o1_0.customer_id,o1_0.total from orders o1_0 where o1_0.customer_id=$1 order by o1_0.created_at desc offset $2 rows fetch first $3 rows only",
    r#"SELECT "blog_post"."id", "blog_post"."title", "auth_user"."id", "auth_user"."username" FROM "blog_post" INNER JOIN "auth_user" ON ("blog_post"."author_id" = "auth_user"."id") WHERE "blog_post"."id" IN (1, 2, 3, 4, 5, 6, 7, 8)"#,
    r#"SELECT "shop_order"."status", COUNT("shop_order"."id") AS "n", SUM("shop_order"."total") AS "revenue" FROM "shop_order" WHERE "shop_order"."created_at" >= '2024-01-01' GROUP BY "shop_order"."status" HAVING COUNT("shop_order"."id") > 5 ORDER BY "revenue" DESC"#,
    "WITH recent AS (SELECT * FROM orders WHERE created_at > '2024-01-01') SELECT customer_id, count(*) FROM recent GROUP BY customer_id",
    "SELECT id, data->>'name' FROM documents WHERE data @> '{\"type\":\"invoice\"}' AND tenant_id = 7 ORDER BY id LIMIT 50",
    r#"INSERT INTO "events" ("name","payload","created_at") VALUES ('signup', '{"plan":"pro"}', '2024-01-01 00:00:00') ON CONFLICT DO NOTHING RETURNING "id""#,
    r#"UPDATE "users" SET "name" = $1, "updated_at" = $2 WHERE "users"."id" = $3"#,
    "SELECT users.name, row_number() OVER (PARTITION BY users.dept ORDER BY users.salary DESC) AS rn FROM users WHERE users.active = true",
    r#"SELECT "public"."User"."id", "public"."User"."email", "public"."User"."name" FROM "public"."User" WHERE "public"."User"."id" = $1 LIMIT $2 OFFSET $3"#,
    "SELECT p.name, sum(l.qty) FROM products p JOIN order_lines l ON l.product_id = p.id WHERE p.category_id IN (3, 4, 9) GROUP BY p.name ORDER BY 2 DESC LIMIT 10",
];

fn cold() -> Normalizer {
    Normalizer::new(NormalizerConfig::builder().with_memo_capacity(0).build().expect("valid config"))
}

fn warm() -> Normalizer {
    let n = Normalizer::default();
    for s in STATEMENTS {
        n.analyze(s);
    }
    n
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalizer");
    g.bench_function("pg_query_parse", |b| {
        b.iter(|| {
            for s in STATEMENTS {
                black_box(pg_query::parse(black_box(s), 0).is_ok());
            }
        })
    });
    let n = cold();
    g.bench_function("analyze_cold", |b| {
        b.iter(|| {
            for s in STATEMENTS {
                black_box(n.analyze(black_box(s)));
            }
        })
    });
    let n = warm();
    g.bench_function("analyze_memoized", |b| {
        b.iter(|| {
            for s in STATEMENTS {
                black_box(n.analyze(black_box(s)));
            }
        })
    });
    g.finish();
}

/// Median time per statement of `f` over several rounds.
fn per_statement(rounds: usize, iters: usize, mut f: impl FnMut(&str)) -> Duration {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..iters {
            for s in STATEMENTS {
                f(black_box(s));
            }
        }
        samples.push(start.elapsed() / (iters * STATEMENTS.len()) as u32);
    }
    samples.sort();
    samples[rounds / 2]
}

fn print_ratios() {
    let cold_n = cold();
    let warm_n = warm();
    // Interleave the three measurements so machine noise hits them alike.
    let mut parse = Vec::new();
    let mut cold_t = Vec::new();
    let mut memo = Vec::new();
    for _ in 0..5 {
        parse.push(per_statement(3, 100, |s| {
            black_box(pg_query::parse(s, 0).is_ok());
        }));
        cold_t.push(per_statement(3, 100, |s| {
            black_box(cold_n.analyze(s));
        }));
        memo.push(per_statement(3, 20_000, |s| {
            black_box(warm_n.analyze(s));
        }));
    }
    for v in [&mut parse, &mut cold_t, &mut memo] {
        v.sort();
    }
    let (p, c, m) = (parse[2], cold_t[2], memo[2]);
    println!();
    println!("== strata-normalizer ratios ({} statements, median per statement) ==", STATEMENTS.len());
    println!("pg_query::parse          {:>10.0} ns", p.as_nanos() as f64);
    println!("analyze (cold, no memo)  {:>10.0} ns", c.as_nanos() as f64);
    println!("analyze (memoized)       {:>10.0} ns", m.as_nanos() as f64);
    println!("cold analyze / pg_query::parse = {:.2}x (goal <= 1.3x)", c.as_secs_f64() / p.as_secs_f64());
    println!("memoized analyze = {} ns (goal <= 500 ns)", m.as_nanos());
    println!("pg_query::parse / memoized analyze = {:.0}x", p.as_secs_f64() / m.as_secs_f64());
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    // `cargo test --benches` runs benches once as a smoke test; skip the timing loop then.
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        print_ratios();
    }
}
