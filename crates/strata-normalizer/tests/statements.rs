//! Snapshot of the analysis of 250+ real ORM-style statements (Django, Rails, Hibernate, Prisma,
//! SQLAlchemy shapes; joins, CTEs, windows, JSON, arrays, upserts, COPY, DDL, utility).
//! Review changes with `UPDATE_EXPECT=1 cargo test -p strata-normalizer --test statements`.

use std::fmt::Write as _;

use expect_test::expect_file;
use strata_normalizer::{Analysis, Normalizer, WriteEffect};

fn writes(w: &WriteEffect) -> String {
    match w {
        WriteEffect::Nothing => "-".to_owned(),
        WriteEffect::Unknown => "UNKNOWN".to_owned(),
        WriteEffect::Tables(t) => t.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(","),
    }
}

fn render(out: &mut String, sql: &str, a: &Analysis) {
    let one_line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let _ = writeln!(out, "SQL  {one_line}");
    let _ = writeln!(out, "  => {} | writes: {}", a.cacheability(), writes(a.writes()));
    let h = a.hints();
    if !h.is_empty() {
        let tables: Vec<&str> = h.tables().iter().map(|t| t.as_str()).collect();
        let ignored: Vec<String> =
            h.ignored().iter().map(|i| format!("{} ({})", i.text(), i.reason())).collect();
        let _ = writeln!(
            out,
            "  hints: cache={:?} ttl={:?} tier={:?} semantic={} intent={:?} tables={tables:?} ignored={ignored:?}",
            h.cache(),
            h.ttl(),
            h.tier(),
            h.semantic(),
            h.intent()
        );
    }
    for s in a.statements() {
        let reads: Vec<&str> = s.reads().iter().map(|t| t.as_str()).collect();
        let params: Vec<String> =
            s.params().iter().map(|p| format!("{}:{}", p.type_oid().0, p.text())).collect();
        let _ = writeln!(out, "  [{}] {}", s.kind(), s.normalized());
        let _ = writeln!(
            out,
            "    reads={reads:?} writes={} fns={:?} client_params={} params={params:?}",
            writes(s.writes()),
            s.functions(),
            s.client_param_count()
        );
        if a.statements().len() > 1 {
            let _ = writeln!(out, "    verdict: {}", s.cacheability());
        }
    }
}

#[test]
fn orm_statements_snapshot() {
    let text = include_str!("data/orm_statements.sql");
    let normalizer = Normalizer::default();
    let mut out = String::new();
    let mut count = 0;
    for block in text.split("\n\n") {
        let mut sql_lines = Vec::new();
        for line in block.lines() {
            // Section titles are comments on their own line that are not hints.
            if line.starts_with("-- ") && !line.contains("strata:") && sql_lines.is_empty() {
                let _ = writeln!(out, "\n=== {}", &line[3..]);
            } else {
                sql_lines.push(line);
            }
        }
        let sql = sql_lines.join("\n");
        if sql.trim().is_empty() {
            continue;
        }
        count += 1;
        render(&mut out, &sql, &normalizer.analyze(&sql));
    }
    assert!(count >= 200, "only {count} statements");
    let _ = writeln!(out, "\n{count} statements");
    expect_file!["snapshots/orm_statements.txt"].assert_eq(&out);
}
