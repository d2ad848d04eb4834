//! The shape memo's fast path gives exactly the analysis a full parse gives (session effects
//! included): for every statement of the PostgreSQL regression corpus and ORM-style queries,
//! with their literals replaced by other values of the same class and of other classes.

use std::fmt::Write as _;

use proptest::prelude::*;
use strata_normalizer::{Analysis, Normalizer, NormalizerConfig, WriteEffect};

mod support;

use support::{corpus_files, sql_of_psql_script, statements_of};

/// Everything observable through the public API, parameter values included.
fn observe(a: &Analysis) -> String {
    let mut out = String::new();
    let writes = |w: &WriteEffect| format!("{w:?}");
    let _ = writeln!(
        out,
        "identity={} key={:?} cpc={} kind={:?} parse_error={} cacheability={:?} writes={} reads={:?} deps={:?} hints={:?} temp={:?} session_alone={} session={:?}",
        a.identity(),
        a.key_bytes(),
        a.client_param_count(),
        a.kind(),
        a.is_parse_error(),
        a.cacheability(),
        writes(a.writes()),
        a.reads(),
        a.dependencies(),
        a.hints(),
        a.temporary_tables_created().collect::<Vec<_>>(),
        a.leaves_session_alone(),
        a.session_effects().collect::<Vec<_>>(),
    );
    let h = a.hints();
    let _ = writeln!(
        out,
        "hints ttl={:?} capped={} intent={:?} ignored={:?}",
        h.ttl(),
        h.ttl_was_capped(),
        h.intent(),
        h.ignored()
    );
    for p in a.params() {
        let _ = writeln!(out, "param {:?} {:?} {:?}", p.type_oid(), p.form(), p.text());
    }
    for s in a.statements() {
        let _ = writeln!(
            out,
            "stmt kind={:?} range={:?} normalized={:?} identity={} key={:?} cpc={} reads={:?} writes={} functions={:?} temp={:?} session={:?} cacheability={:?}",
            s.kind(),
            s.range(),
            s.normalized(),
            s.identity(),
            s.key_bytes(),
            s.client_param_count(),
            s.reads(),
            writes(s.writes()),
            s.functions(),
            s.temporary_tables_created(),
            s.session_effects(),
            s.cacheability(),
        );
        for p in s.params() {
            let _ = writeln!(out, "  param {:?} {:?} {:?}", p.type_oid(), p.form(), p.text());
        }
        // Restrictions hold parameter indices, not values: a memoized analysis keeps them.
        let _ = writeln!(out, "  read restrictions {:?}", s.read_restrictions());
        let _ = writeln!(out, "  write keys {:?}", s.write_keys());
    }
    out
}

/// A normalizer whose text memo and shape memo hold this many entries (0: no memo).
fn with_memos(texts: usize, shapes: usize) -> Normalizer {
    let config = NormalizerConfig::builder()
        .with_memo_capacity(texts)
        .with_shape_memo_capacity(shapes)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    Normalizer::new(config)
}

fn with_shapes() -> Normalizer {
    with_memos(0, 1_000_000)
}

/// Analyzes a text twice: a shape is recorded the second time its key is seen.
fn learn(n: &Normalizer, text: &str) {
    n.analyze(text);
    n.analyze(text);
}

fn without_memos() -> Normalizer {
    with_memos(0, 0)
}

/// Replacement values for a literal token, by its scanner kind: first values of the same
/// class, then values of other classes.
fn replacements(kind: i32, text: &str) -> (&'static [&'static str], &'static [&'static str]) {
    use pg_query::protobuf::Token;
    let k = Token::try_from(kind).ok();
    match k {
        Some(Token::Iconst) => (
            &["0", "7", "48213", "2147483647", "0x7FFF", "1_000"],
            &["2147483648", "1.5", "99999999999999999999", "'7'", "1e5"],
        ),
        Some(Token::Fconst) if text.bytes().all(|b| b.is_ascii_digit()) => {
            (&["2147483648", "9223372036854775807"], &["9223372036854775808", "5", "2.5"])
        }
        Some(Token::Fconst) => {
            (&["3.25", "1e10", ".5", "0.0", "1.5E-3", "99999999999999999999.9"], &["42", "'x'"])
        }
        Some(Token::Sconst) if text.starts_with('\'') => (
            &["'x'", "''", "'it''s'", "'a;b -- c /* d'", "'1'", "'2024-01-01'", "'now'", "' Today '", "'\\'"],
            &["$$x$$", "E'x'", "5", "B'1'", "2.5"],
        ),
        Some(Token::Sconst) if text.starts_with('$') => (&["$$y$$", "$q$a$b$q$", "$$now$$"], &["'y'", "5"]),
        Some(Token::Sconst) => (&["E'q'", "e'it''s'"], &["'q'", "E'\\n'"]),
        Some(Token::Bconst) => (&["B'1'", "b'0110'"], &["X'1F'", "'1'"]),
        Some(Token::Xconst) => (&["X'AB'", "x'0'"], &["B'1'", "1"]),
        _ => (&[], &[]),
    }
}

fn is_literal(kind: i32) -> bool {
    use pg_query::protobuf::Token;
    [Token::Iconst, Token::Fconst, Token::Sconst, Token::Bconst, Token::Xconst]
        .iter()
        .any(|t| *t as i32 == kind)
}

/// Texts of `sql` with its literals replaced: all of them by same-class values (one text per
/// round), and each of the first few by one value of another class.
fn variants(sql: &str) -> Vec<String> {
    let Ok(tokens) = pg_query::scan_tokens(sql) else { return Vec::new() };
    let literals: Vec<(usize, usize, i32)> = tokens
        .iter()
        .filter(|t| is_literal(t.token))
        .filter_map(|t| Some((usize::try_from(t.start).ok()?, usize::try_from(t.end).ok()?, t.token)))
        .collect();
    if literals.is_empty() {
        return Vec::new();
    }
    let replace = |choose: &dyn Fn(usize, i32, &str) -> Option<&'static str>| -> String {
        let mut out = String::with_capacity(sql.len() + 16);
        let mut at = 0;
        for (n, (s, e, k)) in literals.iter().enumerate() {
            out.push_str(&sql[at..*s]);
            out.push_str(choose(n, *k, &sql[*s..*e]).unwrap_or(&sql[*s..*e]));
            at = *e;
        }
        out.push_str(&sql[at..]);
        out
    };
    let mut out = Vec::new();
    for round in 0..3 {
        out.push(replace(&|n, k, t| {
            let same = replacements(k, t).0;
            (!same.is_empty()).then(|| same[(n + round * 3) % same.len()])
        }));
    }
    for target in 0..literals.len().min(3) {
        out.push(replace(&|n, k, t| {
            let other = replacements(k, t).1;
            (n == target && !other.is_empty()).then(|| other[n % other.len()])
        }));
    }
    out
}

#[derive(Default)]
struct Tally {
    compared: usize,
    fast: usize,
    mismatches: Vec<String>,
}

impl Tally {
    fn check(&mut self, shapes: &Normalizer, full: &Normalizer, text: &str) {
        let before = shapes.shape_hits();
        let got = observe(&shapes.analyze(text));
        let fast = shapes.shape_hits() > before;
        let want = observe(&full.analyze(text));
        self.compared += 1;
        if fast {
            self.fast += 1;
        }
        if got != want && self.mismatches.len() < 20 {
            self.mismatches.push(format!("TEXT {text:?}\nFAST {got}\nFULL {want}"));
        }
    }
}

#[test]
fn fast_path_equals_full_analysis_on_the_regression_corpus() {
    let shapes = with_shapes();
    let full = without_memos();
    let mut tally = Tally::default();
    for file in corpus_files() {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let sql = sql_of_psql_script(&String::from_utf8_lossy(&bytes));
        let (parts, _) = statements_of(&sql);
        for part in parts {
            if part.trim().is_empty() {
                continue;
            }
            // The original text first (twice: that records the shape), then its variants.
            shapes.analyze(part);
            tally.check(&shapes, &full, part);
            for v in variants(part) {
                tally.check(&shapes, &full, &v);
            }
        }
    }
    assert!(
        tally.mismatches.is_empty(),
        "{} mismatches:\n{}",
        tally.mismatches.len(),
        tally.mismatches.join("\n")
    );
    // The comparison must exercise the fast path, or it proves nothing.
    assert!(tally.fast > 20_000, "only {} of {} texts took the fast path", tally.fast, tally.compared);
    eprintln!("compared {} texts, {} on the fast path", tally.compared, tally.fast);
}

#[test]
fn fast_path_answers_pgbench_select_without_a_parse() {
    let shapes = with_shapes();
    let full = without_memos();
    learn(&shapes, "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;");
    for aid in [1, 99_999, 2_147_483_647] {
        let text = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
        let before = shapes.shape_hits();
        let a = shapes.analyze(&text);
        assert_eq!(shapes.shape_hits(), before + 1, "{text}");
        assert_eq!(observe(&a), observe(&full.analyze(&text)));
        assert_eq!(a.params().next().map(|p| p.text()), Some(aid.to_string().as_str()));
    }
    // Another class of literal (bigint) takes the full path and still gets its own type.
    let big = "SELECT abalance FROM pgbench_accounts WHERE aid = 2147483648;";
    let before = shapes.shape_hits();
    assert_eq!(observe(&shapes.analyze(big)), observe(&full.analyze(big)));
    assert_eq!(shapes.shape_hits(), before);
    // A time-dependent literal never reuses a cacheable shape.
    learn(&shapes, "SELECT * FROM events WHERE at < '2024-01-01'::timestamp");
    let now = "SELECT * FROM events WHERE at < 'now'::timestamp";
    let a = shapes.analyze(now);
    assert!(!a.cacheability().is_cacheable());
    assert_eq!(observe(&a), observe(&full.analyze(now)));
}

#[test]
fn behind_a_callers_memo_a_shaped_text_is_answered_alike_and_not_memoized_by_text() {
    let n = with_memos(1000, 1000);
    let full = without_memos();
    let text = |aid: u32| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
    // Parsed texts are memoized by text, as by `analyze`; the second records the shape.
    for aid in [1, 2] {
        assert_eq!(observe(&n.analyze_behind_memo(&text(aid))), observe(&full.analyze(&text(aid))));
    }
    assert_eq!((n.memo_len(), n.shape_memo_len()), (2, 1));
    // Answered from the shape: the same analysis, and the text memo does not grow.
    for aid in [3, 4, 5] {
        let before = n.shape_hits();
        assert_eq!(observe(&n.analyze_behind_memo(&text(aid))), observe(&full.analyze(&text(aid))));
        assert_eq!(n.shape_hits(), before + 1);
    }
    assert_eq!(n.memo_len(), 2);
    // `analyze` memoizes the same text.
    n.analyze(&text(6));
    assert_eq!(n.memo_len(), 3);
}

#[test]
fn the_shape_memo_answers_with_the_same_effects() {
    let n = with_memos(0, 64);
    for (template, alone) in [
        ("SELECT set_config('app.tenant', '{}', false) FROM t WHERE id = {}", false),
        ("SELECT app.f({}) FROM t WHERE id = {}", false),
        ("SELECT {} INTO TEMP x FROM t WHERE id = {}", false),
        ("SELECT lower('{}') FROM t WHERE id = {}", true),
    ] {
        let text =
            |k: u32| template.replacen("{}", &k.to_string(), 1).replacen("{}", &(k * 7).to_string(), 1);
        n.analyze(&text(1));
        n.analyze(&text(2));
        let before = n.shape_hits();
        let fast = n.analyze(&text(3));
        assert_eq!(n.shape_hits(), before + 1, "{template} was not answered from its shape");
        let full = without_memos().analyze(&text(3));
        assert_eq!(fast.leaves_session_alone(), alone, "{template}");
        assert_eq!(fast.session_effects().collect::<Vec<_>>(), full.session_effects().collect::<Vec<_>>());
    }
}

#[test]
fn literals_the_grammar_checks_do_not_vary() {
    let shapes = with_shapes();
    let full = without_memos();
    learn(&shapes, "SELECT x::float(10) FROM t WHERE id = 1");
    // float(p) must have 1 <= p <= 53: the grammar rejects float(60) even though float(10) parsed.
    for text in ["SELECT x::float(60) FROM t WHERE id = 2", "SELECT x::float(0) FROM t WHERE id = 3"] {
        let a = shapes.analyze(text);
        assert!(a.is_parse_error(), "{text}");
        assert_eq!(observe(&a), observe(&full.analyze(text)));
    }
    let before = shapes.shape_hits();
    let same = "SELECT x::float(10) FROM t WHERE id = 4";
    assert_eq!(observe(&shapes.analyze(same)), observe(&full.analyze(same)));
    assert_eq!(shapes.shape_hits(), before + 1);
}

#[test]
fn shape_memo_is_bounded_and_records_a_shape_on_its_second_sighting() {
    let n = with_memos(0, 16);
    n.analyze("SELECT * FROM t WHERE id = 1");
    assert_eq!(n.shape_memo_len(), 0, "a one-off text records no shape");
    n.analyze("SELECT * FROM t WHERE id = 2");
    assert_eq!(n.shape_memo_len(), 1);
    n.analyze("SELECT * FROM t WHERE id = 3");
    assert_eq!(n.shape_hits(), 1);
    for k in 0..2000 {
        let text = format!("SELECT * FROM t{k} WHERE id = {k}");
        learn(&n, &text);
    }
    assert!(n.shape_memo_len() <= 32, "shape memo grew to {}", n.shape_memo_len());
}

const ORM: &[&str] = &[
    r#"SELECT "auth_user"."id", "auth_user"."username" FROM "auth_user" WHERE "auth_user"."id" = {i} LIMIT {i}"#,
    r#"SELECT "blog_post"."id" FROM "blog_post" WHERE "blog_post"."id" IN ({i}, {i}, {i}) AND "blog_post"."title" = {s}"#,
    "select o1_0.id from orders o1_0 where o1_0.customer_id={i} and o1_0.total > {f} order by o1_0.created_at desc offset {i} rows fetch first {i} rows only",
    "SELECT id, data->>{s} FROM documents WHERE data @> {s} AND tenant_id = {i} ORDER BY id LIMIT {i} /* strata: ttl=30s */",
    r#"INSERT INTO "events" ("name","payload","n") VALUES ({s}, {s}, {i}), ({s}, {s}, -{i}) ON CONFLICT DO NOTHING RETURNING "id""#,
    r#"UPDATE "users" SET "name" = {s}, "score" = {f} WHERE "users"."id" = {i}"#,
    "DELETE FROM sessions WHERE expires_at < {s}::timestamptz AND user_id = ANY(ARRAY[{i}, -{i}])",
    "SELECT count(*) FROM t WHERE a BETWEEN {i} AND {i} AND b = {s} -- strata: tier=l1\n",
    "SELECT x::float({p}), y::numeric({p}, {p}) FROM t WHERE z = {i}",
    "SELECT 1; SELECT * FROM t WHERE id = {i};",
];

fn fill(template: &str, ints: &[i64], floats: &[f64], strings: &[String], precisions: &[u8]) -> String {
    let mut out = String::new();
    let mut rest = template;
    let (mut i, mut f, mut s, mut p) = (0, 0, 0, 0);
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let hole = &rest[at..at + 3];
        match hole {
            "{i}" => {
                out.push_str(&ints[i % ints.len()].unsigned_abs().to_string());
                i += 1;
            }
            "{f}" => {
                out.push_str(&format!("{:?}", floats[f % floats.len()].abs()));
                f += 1;
            }
            "{s}" => {
                out.push_str(&format!("'{}'", strings[s % strings.len()].replace('\'', "''")));
                s += 1;
            }
            _ => {
                out.push_str(&precisions[p % precisions.len()].to_string());
                p += 1;
            }
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_literals_in_orm_queries_match_the_full_path(
        q in 0..ORM.len(),
        first in (prop::collection::vec(any::<i64>(), 1..6), prop::collection::vec(any::<f64>(), 1..3)),
        second in (prop::collection::vec(any::<i64>(), 1..6), prop::collection::vec(any::<f64>(), 1..3)),
        strings in prop::collection::vec("[a-zA-Z0-9 ',;$/*\\\\-]{0,12}|now|today", 1..4),
        precisions in (prop::collection::vec(0u8..70, 1..3), prop::collection::vec(0u8..70, 1..3)),
    ) {
        let shapes = with_shapes();
        let full = without_memos();
        let fl = |v: &[f64]| v.iter().map(|x| if x.is_finite() { *x } else { 1.5 }).collect::<Vec<_>>();
        let a = fill(ORM[q], &first.0, &fl(&first.1), &strings, &precisions.0);
        let b = fill(ORM[q], &second.0, &fl(&second.1), &strings.iter().rev().cloned().collect::<Vec<_>>(), &precisions.1);
        learn(&shapes, &a);
        let got = observe(&shapes.analyze(&b));
        prop_assert_eq!(got, observe(&full.analyze(&b)), "{} after {}", b, a);
    }

    #[test]
    fn random_sql_like_text_matches_the_full_path_after_its_digits_change(
        parts in prop::collection::vec(prop::sample::select(FRAGMENTS), 1..24),
        shift in 1u8..10,
    ) {
        let text: String = parts.concat();
        let variant = rotate_digits(&text, shift);
        let shapes = with_shapes();
        let full = without_memos();
        learn(&shapes, &text);
        prop_assert_eq!(observe(&shapes.analyze(&variant)), observe(&full.analyze(&variant)), "{:?} after {:?}", variant, text);
    }
}

/// Lexically tricky literals (and things that look like literals), for the holes of [`HOLES`].
const LITERALS: &[&str] = &[
    "12",
    "7",
    "0",
    "007",
    "2147483647",
    "2147483648",
    "9223372036854775807",
    "99999999999999999999",
    "1.5",
    ".5",
    "5.",
    "1e5",
    "1E+05",
    "1.5e-3",
    "0x1F",
    "0X7fffffff",
    "0x80000000",
    "0o17",
    "0b101",
    "1_000",
    "1_000.000_1",
    "'x'",
    "'it''s'",
    "'now'",
    "'a\\'",
    "''",
    "'1;2'",
    "'-- no'",
    "'/* no'",
    "E'x'",
    "e'it''s'",
    "B'101'",
    "b''",
    "X'1F'",
    "x'ab'",
    "$$z$$",
    "$$ now $$",
    "$q$1$q$",
    "$a$$b$a$",
    "TRUE",
    "false",
    "NULL",
    "-1",
    "- 2",
    "+3",
    "$1",
    "'2024-01-01'::date",
    "interval '1 day'",
    "int4 '5'",
    "'x' 'y'",
    "'a'\n'b'",
    "'a' -- c\n'b'",
    "x'1g'",
    "1_",
    "0x_1",
];

/// Queries with holes (`#`) for [`LITERALS`].
const HOLES: &[&str] = &[
    "SELECT # FROM t WHERE id = # AND b IN (#, #) ORDER BY 1 LIMIT #",
    "select a from t where a = any(array[#, #, #]) /* strata: ttl=5s */ and b <> #",
    "INSERT INTO t (a, b) VALUES (#, #), (#, #) RETURNING a",
    "UPDATE t SET a = # WHERE b = # -- note\n AND c = #",
    "DELETE FROM t WHERE a < # OR a > #;",
    "SELECT x::float(#), x::numeric(#, #) FROM t WHERE a = #",
    "SELECT * FROM t WHERE a IS # AND b IS NOT # AND c = #",
    "SELECT #; SELECT # FROM t WHERE a=#",
    "VALUES (#), (#)",
    "SELECT * FROM t WHERE a = #::int8 AND b LIKE # ESCAPE #",
    "/* lead */ SELECT # ;  -- between\r\n SELECT a FROM t WHERE a = # ;\t/* strata: cache=off */ ",
    "SELECT a FROM t WHERE a = ANY('{#}'::int[]) AND b = $1 AND c = #",
];

#[test]
fn tricky_literals_in_query_holes_match_the_full_path_after_their_digits_change() {
    let shapes = with_shapes();
    let full = without_memos();
    let mut tally = Tally::default();
    // A fixed xorshift sequence, so a failure reproduces.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    for _ in 0..6000 {
        let template = HOLES[next(HOLES.len())];
        let text: String =
            template
                .split('#')
                .enumerate()
                .map(|(k, piece)| {
                    if k == 0 {
                        piece.to_owned()
                    } else {
                        format!("{}{piece}", LITERALS[next(LITERALS.len())])
                    }
                })
                .collect();
        learn(&shapes, &text);
        for shift in [1, 5] {
            tally.check(&shapes, &full, &rotate_digits(&text, shift));
        }
    }
    assert!(
        tally.mismatches.is_empty(),
        "{} mismatches:\n{}",
        tally.mismatches.len(),
        tally.mismatches.join("\n")
    );
    assert!(tally.fast > 2_000, "only {} of {} texts took the fast path", tally.fast, tally.compared);
    eprintln!("compared {} texts, {} on the fast path", tally.compared, tally.fast);
}

/// Pieces of SQL, lexically tricky ones included, that random texts are made of.
const FRAGMENTS: &[&str] = &[
    "SELECT ",
    "select ",
    "* ",
    "a ",
    "b",
    ", ",
    "FROM ",
    "t ",
    "WHERE ",
    "id ",
    "= ",
    "=",
    "-",
    "+",
    "<",
    "<=",
    ">",
    "::int",
    "::float(",
    ")",
    "(",
    "[",
    "]",
    " IN (",
    "ARRAY[",
    "VALUES (",
    "LIMIT ",
    "AND ",
    "OR ",
    "IS ",
    "NOT ",
    "TRUE ",
    "FALSE ",
    "NULL ",
    "12",
    "7",
    "0",
    "2147483647",
    "9223372036854775807",
    "99999999999999999999",
    "1.5",
    ".5",
    "1e5",
    "1e",
    "0x1F",
    "0o17",
    "0b101",
    "0x",
    "1_000",
    "1__0",
    "5x",
    "1..2",
    "'x'",
    "'it''s'",
    "'now'",
    "'a\\'",
    "''",
    "'",
    "E'x'",
    "E'\\n'",
    "e'y'",
    "B'101'",
    "X'1F'",
    "N'x'",
    "U&'x'",
    "$$",
    "$$z$$",
    "$q$1$q$",
    "$1",
    "$2",
    "$1x",
    "\"Q\"",
    "\"\"",
    "-- c\n",
    "--",
    "/* c */",
    "/*",
    "*/",
    "/* strata: ttl=5s */",
    "\n",
    " ",
    "\t",
    "\r\n",
    ";",
    "; ",
    "INSERT INTO t VALUES (",
    "UPDATE t SET a = ",
    "DELETE FROM t WHERE b > ",
    "é",
    "\u{b}",
    "float(",
    "FLOAT (",
    "ORDER BY ",
    "1",
    "2",
    "OFFSET ",
    ".",
    "..",
    ":",
    "interval '1 day'",
];

/// Changes every ASCII digit (number and string values change, and so may a number's class).
fn rotate_digits(text: &str, shift: u8) -> String {
    text.chars()
        .map(|c| if c.is_ascii_digit() { char::from(b'0' + (c as u8 - b'0' + shift) % 10) } else { c })
        .collect()
}

#[test]
fn a_sequence_call_is_never_answered_from_another_sequences_shape() {
    let shapes = with_shapes();
    let full = without_memos();
    for text in ["SELECT nextval('orders_id_seq')", "SELECT setval('orders_id_seq', 5)"] {
        learn(&shapes, text);
        let other = text.replace("orders_id_seq", "users_id_seq");
        let before = shapes.shape_hits();
        let got = shapes.analyze(&other);
        assert_eq!(shapes.shape_hits(), before, "{other} took the fast path");
        assert_eq!(observe(&got), observe(&full.analyze(&other)));
        assert!(matches!(got.writes(), WriteEffect::Tables(t) if t[0].as_str() == "users_id_seq"), "{other}");
    }
}
