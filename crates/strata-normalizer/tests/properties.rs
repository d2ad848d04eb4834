//! Properties of statement identity: unchanged by layout, comments, keyword case, literal values
//! and IN-list length; changed by another table, schema, column, operator or quoted-name case.

use proptest::prelude::*;
use strata_normalizer::analyze;

const TABLES: &[&str] = &["users", "orders", "line_items", "\"Users\"", "\"ORDERS\""];
const SCHEMAS: &[Option<&str>] = &[None, Some("public"), Some("sales"), Some("\"Sales\"")];
const COLUMNS: &[&str] = &["id", "customer_id", "total", "\"Total\""];
const OPS: &[&str] = &["=", "<", ">=", "<>"];
const SEPARATORS: &[&str] = &[" ", "\n", "\t ", "  /* note */ ", " -- note\n", "\r\n  "];

#[derive(Clone, Debug, PartialEq)]
struct Shape {
    schema: Option<&'static str>,
    table: &'static str,
    column: &'static str,
    op: &'static str,
}

#[derive(Clone, Debug)]
struct Style {
    seps: Vec<usize>,
    upper: Vec<bool>,
    number: i64,
    text: String,
    in_list: Vec<i32>,
    limit: u16,
}

fn shape() -> impl Strategy<Value = Shape> {
    (0..SCHEMAS.len(), 0..TABLES.len(), 0..COLUMNS.len(), 0..OPS.len()).prop_map(|(s, t, c, o)| Shape {
        schema: SCHEMAS[s],
        table: TABLES[t],
        column: COLUMNS[c],
        op: OPS[o],
    })
}

fn style() -> impl Strategy<Value = Style> {
    (
        prop::collection::vec(0..SEPARATORS.len(), 40),
        prop::collection::vec(any::<bool>(), 40),
        any::<i64>(),
        "[a-zA-Z0-9 ',;/*-]{0,20}",
        prop::collection::vec(any::<i32>(), 1..30),
        any::<u16>(),
    )
        .prop_map(|(seps, upper, number, text, in_list, limit)| Style {
            seps,
            upper,
            number,
            text,
            in_list,
            limit,
        })
}

/// Unquoted words may change case freely; quoted identifiers and literals keep theirs.
fn case(word: &str, upper: bool) -> String {
    let mut quoted = false;
    word.chars()
        .map(|c| {
            if c == '"' {
                quoted = !quoted;
            }
            match (quoted, upper) {
                (true, _) => c,
                (false, true) => c.to_ascii_uppercase(),
                (false, false) => c.to_ascii_lowercase(),
            }
        })
        .collect()
}

fn render(s: &Shape, st: &Style) -> String {
    let relation = match s.schema {
        Some(schema) => format!("{schema}.{}", s.table),
        None => s.table.to_owned(),
    };
    let list: Vec<String> = st.in_list.iter().map(|v| v.to_string()).collect();
    let words: Vec<String> = vec![
        "select".into(),
        "id,".into(),
        "name".into(),
        "from".into(),
        relation,
        "where".into(),
        s.column.into(),
        s.op.into(),
        // Negative numbers are an operator and a literal; keep the literal positive.
        st.number.unsigned_abs().to_string(),
        "and".into(),
        "status".into(),
        "in".into(),
        format!("({})", list.join(", ")),
        "and".into(),
        "name".into(),
        "=".into(),
        format!("'{}'", st.text.replace('\'', "''")),
        "order".into(),
        "by".into(),
        "id".into(),
        "limit".into(),
        st.limit.to_string(),
    ];
    let mut out = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            out.push_str(SEPARATORS[st.seps[i % st.seps.len()]]);
        }
        let literal = w.starts_with('\'') || w.starts_with('(') || w.chars().all(|c| c.is_ascii_digit());
        out.push_str(&if literal { w.clone() } else { case(w, st.upper[i % st.upper.len()]) });
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn identity_survives_layout_comments_case_literals_and_list_length(s in shape(), a in style(), b in style()) {
        let x = analyze(&render(&s, &a));
        let y = analyze(&render(&s, &b));
        prop_assert!(x.cacheability().is_cacheable(), "{}", x.cacheability());
        prop_assert_eq!(x.identity(), y.identity());
        prop_assert_eq!(x.reads(), y.reads());
    }

    #[test]
    fn identity_differs_for_another_table_schema_column_or_operator(
        s in shape(), t in shape(), st in style()
    ) {
        prop_assume!(s != t);
        let x = analyze(&render(&s, &st));
        let y = analyze(&render(&t, &st));
        prop_assert_ne!(x.identity(), y.identity(), "{:?} vs {:?}", s, t);
    }

    #[test]
    fn quoted_identifier_case_matters(upper in prop::collection::vec(any::<bool>(), 5), st in style()) {
        let name: String = "users".chars().zip(&upper).map(|(c, u)| if *u { c.to_ascii_uppercase() } else { c }).collect();
        prop_assume!(name != "users");
        let base = Shape { schema: None, table: "\"users\"", column: "id", op: "=" };
        let quoted = format!("\"{name}\"");
        let other = Shape { table: Box::leak(quoted.into_boxed_str()), ..base.clone() };
        let x = analyze(&render(&base, &st));
        let y = analyze(&render(&other, &st));
        prop_assert_ne!(x.identity(), y.identity());
        prop_assert_ne!(x.reads(), y.reads());
    }

    #[test]
    fn analyze_never_panics_on_arbitrary_text(text in ".{0,200}") {
        let a = analyze(&text);
        if a.is_parse_error() {
            prop_assert_eq!(a.writes(), &strata_normalizer::WriteEffect::Unknown);
        }
    }
}
