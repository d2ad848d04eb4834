//! Cold `analyze` against raw `pg_query::parse` of the same statements, memoized `analyze`, and
//! the shape memo's fast path (fresh literal values in a known query) against the full path.
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
    Normalizer::new(
        NormalizerConfig::builder()
            .with_memo_capacity(0)
            .with_shape_memo_capacity(0)
            .build()
            .expect("valid config"),
    )
}

/// No text memo, so every text below is new to it; only the shape memo helps.
fn shapes_only() -> Normalizer {
    Normalizer::new(NormalizerConfig::builder().with_memo_capacity(0).build().expect("valid config"))
}

/// `pgbench -S`'s statement with a different literal every time.
fn pgbench_select(n: usize) -> Vec<String> {
    (0..n)
        .map(|k| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {};", 1 + (k * 7919) % 1_000_000))
        .collect()
}

/// A Django point lookup (quoted identifiers, two literals) with a different id every time.
fn django_lookup(n: usize) -> Vec<String> {
    (0..n)
        .map(|k| {
            format!(
                r#"SELECT "auth_user"."id", "auth_user"."username", "auth_user"."email" FROM "auth_user" WHERE "auth_user"."id" = {k} LIMIT 21"#
            )
        })
        .collect()
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
    let variants = pgbench_select(4096);
    let fast = shapes_only();
    for v in &variants[..2] {
        fast.analyze(v);
    }
    let mut k = 0;
    g.bench_function("analyze_pgbench_select_shape_memo", |b| {
        b.iter(|| {
            k = (k + 1) % variants.len();
            black_box(fast.analyze(black_box(&variants[k])))
        })
    });
    let full = cold();
    g.bench_function("analyze_pgbench_select_full", |b| {
        b.iter(|| {
            k = (k + 1) % variants.len();
            black_box(full.analyze(black_box(&variants[k])))
        })
    });
    g.finish();
    assert!(fast.shape_hits() > 0, "the shape memo was never used");
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

/// Median time per text of `f` over `texts`, in several interleaved rounds.
fn per_text(rounds: usize, texts: &[String], mut f: impl FnMut(&str)) -> Duration {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for t in texts {
            f(black_box(t));
        }
        samples.push(start.elapsed() / texts.len() as u32);
    }
    samples.sort();
    samples[rounds / 2]
}

fn print_shape_ratio(name: &str, variants: &[String]) {
    let fast = shapes_only();
    let full = cold();
    fast.analyze(&variants[0]);
    fast.analyze(&variants[1]);
    let hits_before = fast.shape_hits();
    let mut fast_t = Vec::new();
    let mut full_t = Vec::new();
    for _ in 0..5 {
        fast_t.push(per_text(3, variants, |s| {
            black_box(fast.analyze(s));
        }));
        full_t.push(per_text(1, &variants[..2000], |s| {
            black_box(full.analyze(s));
        }));
    }
    fast_t.sort();
    full_t.sort();
    let (f, c) = (fast_t[2], full_t[2]);
    let hits = fast.shape_hits() - hits_before;
    println!(
        "RATIO normalizer {name} full / shape_memo = {:.1}x (shape memo {:.0} ns, full {:.0} ns per text with a new \
         literal; {hits} shape hits of {} texts; goal <= 2000 ns)",
        c.as_secs_f64() / f.as_secs_f64(),
        f.as_nanos() as f64,
        c.as_nanos() as f64,
        5 * 3 * variants.len(),
    );
}

/// The cost the shape memo adds to texts it cannot help: each text below is a new shape, so
/// it is lexed, fully analyzed, and its shape recorded.
fn print_shape_overhead() {
    let texts: Vec<String> =
        (0..4000).map(|k| format!("SELECT abalance FROM pgbench_accounts_{k} WHERE aid = {k};")).collect();
    let mut with_t = Vec::new();
    let mut without_t = Vec::new();
    for _ in 0..5 {
        // A fresh normalizer each round, so every text is a new shape again.
        let with = shapes_only();
        with_t.push(per_text(1, &texts, |s| {
            black_box(with.analyze(s));
        }));
        let without = cold();
        without_t.push(per_text(1, &texts, |s| {
            black_box(without.analyze(s));
        }));
    }
    with_t.sort();
    without_t.sort();
    let (w, o) = (with_t[2], without_t[2]);
    println!(
        "RATIO normalizer analyze_new_shape with shape memo / without = {:.2}x (with {:.0} ns, without {:.0} ns per text)",
        w.as_secs_f64() / o.as_secs_f64(),
        w.as_nanos() as f64,
        o.as_nanos() as f64,
    );
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
        println!();
        print_shape_ratio("analyze_pgbench_select", &pgbench_select(20_000));
        print_shape_ratio("analyze_django_lookup", &django_lookup(20_000));
        print_shape_overhead();
    }
}
