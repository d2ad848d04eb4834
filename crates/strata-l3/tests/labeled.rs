//! The labeled set: paraphrases that must hit and near-misses that must not, with false-hit rates.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use expect_test::expect;
use strata_core::{CacheKey, CachedResult, KeyScope, ManualClock, PutOutcome, SettingsDigest, TableName};
use strata_l3::{
    CosineSimilarity, Embedder, Guards, Indexing, Literal, LocalEmbedder, SemanticRequest, SemanticTier,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Category {
    Paraphrase,
    /// Paraphrases that share few words with the stored question: meaning, not spelling.
    Reworded,
    OtherNumber,
    OtherName,
    GtVsGe,
    Negation,
    OtherTable,
    OtherTenant,
}

impl Category {
    /// Whether a hit is right (a paraphrase) rather than false (a near-miss).
    fn is_paraphrase(self) -> bool {
        matches!(self, Category::Paraphrase | Category::Reworded)
    }
}

struct Case {
    category: Category,
    stored: &'static str,
    asked: &'static str,
    stored_tables: &'static [&'static str],
    asked_tables: &'static [&'static str],
}

/// Literals the way a caller would extract them: numbers, quoted strings, and capitalized
/// words after the first word of a sentence (names). A small test-local tokenizer.
fn literals(text: &str) -> Vec<Literal> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut word_index = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' {
            let end = chars[i + 1..].iter().position(|&d| d == c).map(|p| i + 1 + p);
            if let Some(end) = end {
                let s: String = chars[i + 1..end].iter().collect();
                out.push(Literal::string(&s));
                i = end + 1;
                continue;
            }
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let s: String = chars[start..i].iter().collect();
            out.push(Literal::number(s.trim_end_matches('.')));
            word_index += 1;
            continue;
        }
        if c.is_alphabetic() {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let w: String = chars[start..i].iter().collect();
            let sentence_start =
                word_index == 0 || chars[..start].iter().rev().find(|c| !c.is_whitespace()) == Some(&'.');
            let common = COMMON_WORDS.contains(&w.as_str());
            if !(sentence_start && common) && c.is_uppercase() && w.chars().skip(1).any(char::is_lowercase) {
                out.push(Literal::identifier(&w));
            }
            word_index += 1;
            continue;
        }
        i += 1;
    }
    out
}

/// Capitalized words that start sentences without being names.
const COMMON_WORDS: &[&str] = &[
    "How",
    "What",
    "Which",
    "Who",
    "Show",
    "List",
    "Number",
    "Top",
    "Products",
    "Customers",
    "Orders",
    "Employees",
    "Invoices",
    "Revenue",
    "Cancelled",
    "Overdue",
    "Email",
    "Daily",
    "Average",
    "Total",
    "Select",
];

const O: &[&str] = &["orders"];
const C: &[&str] = &["customers"];
const P: &[&str] = &["products"];
const OC: &[&str] = &["orders", "customers"];
const E: &[&str] = &["employees"];
const I: &[&str] = &["invoices"];

macro_rules! case {
    ($cat:ident, $tables:expr, $stored:expr, $asked:expr) => {
        Case {
            category: Category::$cat,
            stored: $stored,
            asked: $asked,
            stored_tables: $tables,
            asked_tables: $tables,
        }
    };
    ($cat:ident, $st:expr, $at:expr, $stored:expr, $asked:expr) => {
        Case {
            category: Category::$cat,
            stored: $stored,
            asked: $asked,
            stored_tables: $st,
            asked_tables: $at,
        }
    };
}

fn cases() -> Vec<Case> {
    vec![
        // Paraphrases: reworded, reordered, re-punctuated, filler words, plurals, synonyms the
        // local embedder knows (how many / number of / count, sum / total, average / mean).
        case!(Paraphrase, O, "How many orders did Alice place?", "number of orders placed by Alice"),
        case!(Paraphrase, O, "How many orders were placed in 2024?", "Number of orders placed in 2024"),
        case!(
            Paraphrase,
            O,
            "total revenue of orders in March 2024",
            "What is the total revenue of orders in March 2024?"
        ),
        case!(Paraphrase, O, "Show me the orders over 100 dollars", "orders over 100 dollars"),
        case!(Paraphrase, C, "list all customers in Berlin", "Show all the customers in Berlin."),
        case!(Paraphrase, C, "customers in Berlin", "Berlin customers"),
        case!(
            Paraphrase,
            C,
            "How many customers signed up last month?",
            "number of customers who signed up last month"
        ),
        case!(
            Paraphrase,
            P,
            "average price of products in category 7",
            "mean price of products in category 7"
        ),
        case!(Paraphrase, P, "What is the average price of our products?", "average product price"),
        case!(Paraphrase, P, "products that cost more than 50", "Which products cost more than 50?"),
        case!(Paraphrase, P, "top 10 products by revenue", "Top 10 products by revenue, please"),
        case!(Paraphrase, P, "list products out of stock", "show products out of stock"),
        case!(Paraphrase, E, "employees hired in 2023", "Which employees were hired in 2023?"),
        case!(Paraphrase, E, "How many employees work in Sales?", "number of employees that work in Sales"),
        case!(Paraphrase, E, "salary of each employee in Marketing", "Marketing employee salaries"),
        case!(Paraphrase, I, "unpaid invoices for Acme", "Show me unpaid invoices for Acme"),
        case!(Paraphrase, I, "total amount of unpaid invoices", "sum of the unpaid invoice amounts"),
        case!(Paraphrase, I, "invoices due before 2025-01-01", "Which invoices are due before 2025-01-01?"),
        case!(Paraphrase, OC, "orders of customers from Paris", "Paris customers' orders"),
        case!(
            Paraphrase,
            OC,
            "How many orders did each customer place?",
            "number of orders placed by each customer"
        ),
        case!(Paraphrase, O, "orders shipped to Canada in 2022", "orders in 2022 shipped to Canada"),
        case!(Paraphrase, O, "cancelled orders last week", "Show cancelled orders from last week"),
        case!(Paraphrase, O, "average order value in 2024", "What was the average order value in 2024?"),
        case!(Paraphrase, O, "largest order of Bob", "Bob's largest order"),
        case!(Paraphrase, C, "customers without any orders", "Customers without orders"),
        case!(Paraphrase, C, "customers who never ordered", "which customers never ordered?"),
        case!(Paraphrase, P, "products not in stock", "Products that are not in stock"),
        case!(Paraphrase, P, "products with at least 5 reviews", "Which products have at least 5 reviews?"),
        case!(Paraphrase, P, "products priced under 20", "list products priced under 20"),
        case!(Paraphrase, E, "employees with a salary above 90000", "Employees with salary above 90000"),
        case!(Paraphrase, E, "the oldest employee in Finance", "oldest employee in Finance"),
        case!(Paraphrase, I, "invoices issued in May", "Show invoices issued in May"),
        case!(Paraphrase, I, "How many invoices did Acme receive?", "number of invoices Acme received"),
        case!(Paraphrase, O, "revenue per month in 2023", "Revenue per month, 2023"),
        case!(Paraphrase, O, "daily orders count for June", "count of daily orders for June"),
        case!(Paraphrase, C, "email addresses of customers in Spain", "customers in Spain: email addresses"),
        case!(
            Paraphrase,
            P,
            "cheapest product in category 3",
            "Which is the cheapest product in category 3?"
        ),
        case!(Paraphrase, E, "number of employees per department", "How many employees per department?"),
        case!(Paraphrase, I, "invoices above 1000 from 2021", "Invoices above 1000 from 2021."),
        case!(Paraphrase, O, "orders placed by Carol since 2020", "Show orders Carol placed since 2020"),
        case!(
            Paraphrase,
            O,
            "SELECT count(*) FROM orders WHERE status = $1",
            "select COUNT(*) from orders where status = $1"
        ),
        case!(
            Paraphrase,
            O,
            "SELECT id FROM orders WHERE total > $1",
            "SELECT id FROM orders WHERE total > $1;"
        ),
        case!(
            Paraphrase,
            C,
            "SELECT name FROM customers WHERE city = $1",
            "select name from customers where city = $1"
        ),
        case!(Paraphrase, P, "products ordered by price", "products, ordered by price"),
        case!(Paraphrase, E, "List employees in London", "employees in London"),
        case!(Paraphrase, C, "how many customers are in Ohio", "How many customers are in Ohio?"),
        case!(Paraphrase, P, "the 5 most expensive products", "5 most expensive products"),
        case!(Paraphrase, I, "show overdue invoices for Globex", "overdue invoices for Globex"),
        case!(Paraphrase, O, "orders with more than 3 items", "Orders with more than 3 items."),
        case!(Paraphrase, E, "Who manages the Sales team?", "who manages Sales team"),
        // Reworded: the same question in other words (same names and numbers, no comparison or
        // negation word changed), which character n-grams cannot see and a sentence model should.
        case!(
            Reworded,
            O,
            "How many orders did Alice place?",
            "What is the count of purchases made by Alice?"
        ),
        case!(
            Reworded,
            C,
            "customers who signed up last month",
            "new clients registered during the previous month"
        ),
        case!(Reworded, P, "What is the average price of our products?", "typical cost of the items we sell"),
        case!(Reworded, E, "How many employees work in Sales?", "headcount of the Sales department"),
        case!(Reworded, I, "unpaid invoices for Acme", "bills Acme still owes us"),
        case!(
            Reworded,
            O,
            "cancelled orders last week",
            "purchases that were called off in the previous week"
        ),
        case!(Reworded, P, "products out of stock", "items that are sold out"),
        case!(Reworded, C, "customers in Berlin", "clients located in Berlin"),
        case!(Reworded, E, "employees hired in 2023", "staff who joined the company in 2023"),
        case!(Reworded, O, "revenue per month in 2023", "monthly sales income for 2023"),
        case!(Reworded, I, "invoices issued in May", "bills sent out in May"),
        case!(Reworded, P, "cheapest product in category 3", "lowest priced item in category 3"),
        case!(Reworded, O, "largest order of Bob", "Bob's biggest purchase"),
        case!(Reworded, E, "Who manages the Sales team?", "Who is the head of the Sales team?"),
        case!(
            Reworded,
            C,
            "email addresses of customers in Spain",
            "contact emails for clients based in Spain"
        ),
        case!(Reworded, O, "daily orders count for June", "how many purchases per day in June"),
        // Near-misses: a different number.
        case!(OtherNumber, O, "How many orders were placed in 2024?", "How many orders were placed in 2023?"),
        case!(OtherNumber, O, "Show me the orders over 100 dollars", "Show me the orders over 1000 dollars"),
        case!(
            OtherNumber,
            P,
            "average price of products in category 7",
            "average price of products in category 8"
        ),
        case!(OtherNumber, P, "top 10 products by revenue", "top 5 products by revenue"),
        case!(OtherNumber, E, "employees hired in 2023", "employees hired in 2022"),
        case!(OtherNumber, P, "products with at least 5 reviews", "products with at least 50 reviews"),
        case!(OtherNumber, E, "employees with a salary above 90000", "employees with a salary above 9000"),
        case!(OtherNumber, I, "invoices above 1000 from 2021", "invoices above 1000 from 2020"),
        case!(OtherNumber, O, "orders with more than 3 items", "orders with more than 4 items"),
        case!(OtherNumber, P, "cheapest product in category 3", "cheapest product in category 30"),
        case!(OtherNumber, O, "revenue per month in 2023", "revenue per month in 2032"),
        case!(OtherNumber, I, "invoices due before 2025-01-01", "invoices due before 2025-01-02"),
        case!(
            OtherNumber,
            O,
            "SELECT id FROM orders WHERE total > 100",
            "SELECT id FROM orders WHERE total > 101"
        ),
        // Near-misses: a different name.
        case!(OtherName, O, "How many orders did Alice place?", "How many orders did Alicia place?"),
        case!(OtherName, C, "list all customers in Berlin", "list all customers in Bern"),
        case!(OtherName, E, "How many employees work in Sales?", "How many employees work in Support?"),
        case!(OtherName, I, "unpaid invoices for Acme", "unpaid invoices for Acme Corp"),
        case!(OtherName, OC, "orders of customers from Paris", "orders of customers from Paris Texas"),
        case!(OtherName, O, "orders shipped to Canada in 2022", "orders shipped to Cuba in 2022"),
        case!(OtherName, O, "largest order of Bob", "largest order of Rob"),
        case!(OtherName, E, "the oldest employee in Finance", "the oldest employee in Legal"),
        case!(
            OtherName,
            C,
            "email addresses of customers in Spain",
            "email addresses of customers in Spain and Portugal"
        ),
        case!(OtherName, E, "List employees in London", "List employees in Londonderry"),
        case!(OtherName, I, "show overdue invoices for Globex", "show overdue invoices for Initech"),
        case!(
            OtherName,
            C,
            "SELECT name FROM customers WHERE city = 'Oslo'",
            "SELECT name FROM customers WHERE city = 'Osaka'"
        ),
        // Near-misses: > versus >= (and their words).
        case!(GtVsGe, O, "orders over 100 dollars", "orders of at least 100 dollars"),
        case!(GtVsGe, P, "products that cost more than 50", "products that cost 50 or more"),
        case!(
            GtVsGe,
            O,
            "SELECT id FROM orders WHERE total > 100",
            "SELECT id FROM orders WHERE total >= 100"
        ),
        case!(GtVsGe, E, "employees with a salary above 90000", "employees with a salary of at least 90000"),
        case!(GtVsGe, P, "products with at least 5 reviews", "products with more than 5 reviews"),
        case!(GtVsGe, P, "products priced under 20", "products priced at most 20"),
        case!(GtVsGe, O, "SELECT id FROM orders WHERE total < 10", "SELECT id FROM orders WHERE total <= 10"),
        case!(GtVsGe, I, "invoices above 1000 from 2021", "invoices of 1000 or more from 2021"),
        case!(GtVsGe, O, "orders with more than 3 items", "orders with no more than 3 items"),
        case!(GtVsGe, O, "orders placed by Carol since 2020", "orders placed by Carol after 2020"),
        // Near-misses: negation.
        case!(Negation, P, "products in stock", "products not in stock"),
        case!(Negation, C, "customers with orders", "customers without orders"),
        case!(Negation, C, "customers who ordered", "customers who never ordered"),
        case!(Negation, I, "invoices that were paid", "invoices that weren't paid"),
        case!(Negation, E, "employees in Sales", "employees not in Sales"),
        case!(
            Negation,
            O,
            "SELECT id FROM orders WHERE shipped_at IS NULL",
            "SELECT id FROM orders WHERE shipped_at IS NOT NULL"
        ),
        case!(Negation, P, "products that have reviews", "products that have no reviews"),
        case!(Negation, O, "orders with a coupon", "orders except those with a coupon"),
        case!(Negation, E, "employees who are managers", "employees who are not managers"),
        // Near-misses: another table (same words, different relations read).
        case!(OtherTable, O, &["orders_archive"], "count of orders in 2024", "count of orders in 2024"),
        case!(OtherTable, C, &["leads"], "customers in Berlin", "customers in Berlin"),
        case!(OtherTable, P, &["products", "suppliers"], "products in category 7", "products in category 7"),
        case!(OtherTable, E, &["contractors"], "people hired in 2023", "people hired in 2023"),
        case!(OtherTable, I, &["credit_notes"], "documents issued in May", "documents issued in May"),
        case!(
            OtherTable,
            O,
            &["returns"],
            "SELECT count(*) FROM t WHERE day = $1",
            "SELECT count(*) FROM t WHERE day = $1"
        ),
        case!(OtherTable, OC, O, "orders of customers from Paris", "orders of customers from Paris"),
        // Near-misses: another tenant (handled below: same text, another role or database).
        case!(OtherTenant, O, "How many orders did Alice place?", "How many orders did Alice place?"),
        case!(OtherTenant, C, "list all customers in Berlin", "list all customers in Berlin"),
        case!(OtherTenant, P, "average product price", "average product price"),
        case!(OtherTenant, E, "salary of each employee in Marketing", "salary of each employee in Marketing"),
        case!(OtherTenant, I, "unpaid invoices for Acme", "unpaid invoices for Acme"),
        case!(OtherTenant, O, "SELECT count(*) FROM orders", "SELECT count(*) FROM orders"),
    ]
}

/// Per category: cases, hits, and (similarity, stored, asked) of each hit.
type Row = (Category, usize, usize, Vec<(f32, &'static str, &'static str)>);

fn tables(names: &[&str]) -> Vec<TableName> {
    names.iter().map(|n| TableName::new(*n)).collect()
}

/// Runs every case on a fresh tier with `guards`, `embedder` and `threshold`; returns, per
/// category, (cases, hits, the similarity and texts of each hit).
fn run(guards: Guards, embedder: Arc<dyn Embedder>, threshold: CosineSimilarity) -> Vec<Row> {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap_or_else(|e| panic!("{e}"));
    let clock = Arc::new(ManualClock::fixed());
    let mut rows: Vec<Row> = Vec::new();
    for case in cases() {
        let tier = SemanticTier::builder()
            .with_guards(guards)
            .with_embedder(embedder.clone())
            .with_threshold(threshold)
            .with_clock(clock.clone())
            .with_indexing(Indexing::Manual)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let owner = KeyScope::new("shop", "analyst", SettingsDigest::default());
        let other = KeyScope::new("shop", "intern", SettingsDigest::default());
        let asking = if case.category == Category::OtherTenant { &other } else { &owner };
        let (st, at) = (tables(case.stored_tables), tables(case.asked_tables));
        let (sl, al) = (literals(case.stored), literals(case.asked));
        let hit = rt.block_on(async {
            let key = CacheKey::builder(&owner, case.stored.as_bytes()).build();
            let value = CachedResult::builder(Bytes::from_static(b"answer"))
                .with_created_at(strata_core::Clock::now(&*clock))
                .with_ttl(Duration::from_secs(60))
                .build();
            let stored = SemanticRequest::new(&owner, case.stored).with_tables(&st).with_literals(&sl);
            assert_eq!(tier.insert(&stored, key, value).await, PutOutcome::Stored);
            let asked = SemanticRequest::new(asking, case.asked).with_tables(&at).with_literals(&al);
            tier.lookup(&asked).await
        });
        let row = match rows.iter_mut().find(|r| r.0 == case.category) {
            Some(row) => row,
            None => {
                rows.push((case.category, 0, 0, Vec::new()));
                let last = rows.len() - 1;
                &mut rows[last]
            }
        };
        row.1 += 1;
        if hit.is_none() && case.category.is_paraphrase() {
            println!("paraphrase missed: {:?} / {:?}", case.stored, case.asked);
        }
        if let Some(hit) = hit {
            row.2 += 1;
            row.3.push((hit.similarity().get(), case.stored, case.asked));
        }
    }
    rows.sort_by_key(|r| r.0);
    rows
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from("category     cases  hits  rate\n");
    for (cat, n, hits, _) in rows {
        out.push_str(&format!(
            "{:<12} {:>5} {:>5}  {:.3}\n",
            format!("{cat:?}"),
            n,
            hits,
            *hits as f64 / *n as f64
        ));
    }
    let near: (usize, usize) =
        rows.iter().filter(|r| !r.0.is_paraphrase()).fold((0, 0), |acc, r| (acc.0 + r.1, acc.1 + r.2));
    out.push_str(&format!(
        "false-hit rate on near-misses: {}/{} = {:.3}\n",
        near.1,
        near.0,
        near.1 as f64 / near.0 as f64
    ));
    out
}

#[test]
fn labeled_set_has_at_least_100_pairs() {
    assert!(cases().len() >= 100, "{}", cases().len());
}

#[test]
fn default_guards_serve_no_false_hit_and_most_paraphrases() {
    let rows = run(Guards::all(), Arc::new(LocalEmbedder::default()), CosineSimilarity::DEFAULT_THRESHOLD);
    let shown = table(&rows);
    println!("{shown}");
    for (cat, _, hits, sims) in &rows {
        if !cat.is_paraphrase() {
            assert_eq!(*hits, 0, "false hits in {cat:?}: {sims:?}");
        }
    }
    expect![[r#"
        category     cases  hits  rate
        Paraphrase      50    49  0.980
        Reworded        16     0  0.000
        OtherNumber     13     0  0.000
        OtherName       12     0  0.000
        GtVsGe          10     0  0.000
        Negation         9     0  0.000
        OtherTable       7     0  0.000
        OtherTenant      6     0  0.000
        false-hit rate on near-misses: 0/57 = 0.000
    "#]]
    .assert_eq(&shown);
}

#[test]
fn without_guards_similarity_alone_serves_false_hits() {
    // Not a target: shows what the guards prevent. Scope is never optional, so tenants stay apart.
    let rows = run(Guards::none(), Arc::new(LocalEmbedder::default()), CosineSimilarity::DEFAULT_THRESHOLD);
    let shown = table(&rows);
    println!("{shown}");
    let tenant = rows.iter().find(|r| r.0 == Category::OtherTenant).map_or(1, |r| r.2);
    assert_eq!(tenant, 0, "scope is enforced even without optional guards");
    expect![[r#"
        category     cases  hits  rate
        Paraphrase      50    49  0.980
        Reworded        16     0  0.000
        OtherNumber     13     4  0.308
        OtherName       12     6  0.500
        GtVsGe          10     3  0.300
        Negation         9     4  0.444
        OtherTable       7     7  1.000
        OtherTenant      6     0  0.000
        false-hit rate on near-misses: 24/57 = 0.421
    "#]]
    .assert_eq(&shown);
}

#[cfg(feature = "minilm")]
mod common;

/// The hit rate of `category` in a run.
#[cfg(feature = "minilm")]
fn rate(rows: &[Row], category: Category) -> f64 {
    let row = rows.iter().find(|r| r.0 == category).unwrap_or_else(|| panic!("no {category:?}"));
    row.2 as f64 / row.1 as f64
}

#[cfg(feature = "minilm")]
#[test]
fn the_model_serves_more_paraphrases_than_ngrams_and_no_false_hit() {
    use strata_l3::MiniLmEmbedder;
    let ngrams = run(Guards::all(), Arc::new(LocalEmbedder::default()), CosineSimilarity::DEFAULT_THRESHOLD);
    let model: Arc<dyn Embedder> = Arc::new(common::minilm().clone());
    let rows = run(Guards::all(), model, MiniLmEmbedder::RECOMMENDED_THRESHOLD);
    let shown = table(&rows);
    println!("{shown}");
    for (cat, _, hits, sims) in &rows {
        if !cat.is_paraphrase() {
            assert_eq!(*hits, 0, "false hits in {cat:?}: {sims:?}");
        }
    }
    println!("with n-grams:\n{}", table(&ngrams));
    for category in [Category::Paraphrase, Category::Reworded] {
        let (model, ngram) = (rate(&rows, category), rate(&ngrams, category));
        println!("{category:?} hit rate: model {model:.3}, n-grams {ngram:.3}");
        assert!(model >= ngram, "{category:?}: model {model:.3} is below n-grams {ngram:.3}");
    }
    // Reworded questions are what the model is for.
    let (model, ngram) = (rate(&rows, Category::Reworded), rate(&ngrams, Category::Reworded));
    assert!(model >= ngram + 0.25, "reworded: model {model:.3}, n-grams {ngram:.3}");
}

/// Every case's similarity under the model, without guards (scope aside), sorted; for choosing
/// `MiniLmEmbedder::RECOMMENDED_THRESHOLD`.
#[cfg(feature = "minilm")]
#[test]
fn model_similarities_by_category() {
    let model: Arc<dyn Embedder> = Arc::new(common::minilm().clone());
    let everything = CosineSimilarity::new(0.0).unwrap_or_else(|e| panic!("{e}"));
    let rows = run(Guards::none(), model, everything);
    for (cat, _, _, sims) in &rows {
        let mut sims = sims.clone();
        sims.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (sim, stored, asked) in sims {
            println!("{cat:?} {sim:.4} {stored:?} / {asked:?}");
        }
    }
}
