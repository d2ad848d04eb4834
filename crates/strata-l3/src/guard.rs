//! Guards: the equality conditions a stored entry must meet before its similarity counts.
//!
//! Guards are equalities (same scope, same tables, same literals, same comparison and negation
//! words), so the tier does not filter candidates by them at all: it hashes them into a
//! *partition key* and keeps one index per partition. A lookup searches only the index of its
//! own partition, so an entry of another tenant, another table set or other literal values is
//! never a candidate, during or after the search.

use std::fmt;
use std::sync::Arc;

use strata_core::{KeyScope, TableName};
use xxhash_rust::xxh3::Xxh3;

/// What a literal is; literals of different kinds never compare equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LiteralKind {
    /// A number (`42`, `3.50`).
    Number,
    /// A string constant (`'alice'`).
    String,
    /// An identifier or a name the caller treats as a value (`"Acme"`, `Paris`).
    Identifier,
}

/// A literal value the caller extracted from a statement or an intent (the normalizer's
/// constants, or names in an intent). With [`Guard::Literals`] on, an entry matches only a
/// query with the same multiset of literals.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Literal {
    kind: LiteralKind,
    text: Arc<str>,
}

impl Literal {
    /// A number, compared in canonical form: a leading `+`, leading zeros of the integer part
    /// and trailing zeros of the fraction do not matter (`+007.50` equals `7.5`).
    pub fn number(text: &str) -> Self {
        Self { kind: LiteralKind::Number, text: canonical_number(text.trim()).into() }
    }

    /// A string constant, compared exactly.
    pub fn string(text: &str) -> Self {
        Self { kind: LiteralKind::String, text: text.into() }
    }

    /// An identifier or name, compared exactly (fold case before, if your dialect does).
    pub fn identifier(text: &str) -> Self {
        Self { kind: LiteralKind::Identifier, text: text.into() }
    }

    /// The kind of literal.
    pub fn kind(&self) -> LiteralKind {
        self.kind
    }

    /// The literal's text (canonical form for numbers).
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for Literal {
    // Literals are query values and may be private: show the kind and length only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Literal").field("kind", &self.kind).field("len", &self.text.len()).finish()
    }
}

fn canonical_number(text: &str) -> String {
    let (sign, body) = match text.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", text.strip_prefix('+').unwrap_or(text)),
    };
    if body.is_empty()
        || !body.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        || body.matches('.').count() > 1
    {
        // Not a plain decimal (exponent, hex, garbage): compare as written.
        return text.to_owned();
    }
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let sign = if int == "0" && frac.is_empty() { "" } else { sign };
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

/// A guard that can be turned off. Scope (database, role, settings) is not among them: it is
/// always enforced, because serving another tenant's answer is never acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Guard {
    /// A match must read the same set of tables.
    Tables,
    /// A match must carry the same multiset of literal values.
    Literals,
    /// A match must use the same comparison and negation words (`>` vs `>=`, `over` vs
    /// `at least`, `not`, `without`, ...), read from the embedded text.
    Operators,
}

/// The set of enabled guards. Default: all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Guards {
    tables: bool,
    literals: bool,
    operators: bool,
}

impl Default for Guards {
    fn default() -> Self {
        Self::all()
    }
}

impl Guards {
    /// Every guard on: the default.
    pub fn all() -> Self {
        Self { tables: true, literals: true, operators: true }
    }

    /// No optional guard: only scope and similarity decide. For measuring, not for production.
    pub fn none() -> Self {
        Self { tables: false, literals: false, operators: false }
    }

    /// This set without `guard`.
    #[must_use]
    pub fn without(mut self, guard: Guard) -> Self {
        *self.flag(guard) = false;
        self
    }

    /// This set with `guard`.
    #[must_use]
    pub fn with(mut self, guard: Guard) -> Self {
        *self.flag(guard) = true;
        self
    }

    /// Whether `guard` is on.
    pub fn contains(self, guard: Guard) -> bool {
        match guard {
            Guard::Tables => self.tables,
            Guard::Literals => self.literals,
            Guard::Operators => self.operators,
        }
    }

    fn flag(&mut self, guard: Guard) -> &mut bool {
        match guard {
            Guard::Tables => &mut self.tables,
            Guard::Literals => &mut self.literals,
            Guard::Operators => &mut self.operators,
        }
    }

    /// The partition a request belongs to: a digest of its scope, the caller's exact bytes and
    /// what the enabled guards compare.
    pub(crate) fn partition(
        self,
        scope: &KeyScope,
        exact: &[u8],
        tables: &[TableName],
        literals: &[Literal],
        text: &str,
    ) -> u128 {
        let mut h = Xxh3::new();
        let mut field = |tag: u8, bytes: &[u8]| {
            h.update(&[tag]);
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(b'D', scope.database().as_bytes());
        field(b'R', scope.role().as_bytes());
        field(b'S', &scope.settings().digest().to_bytes());
        field(b'X', exact);
        if self.tables {
            let mut names: Vec<&str> = tables.iter().map(TableName::as_str).collect();
            names.sort_unstable();
            names.dedup();
            for name in names {
                field(b'T', name.as_bytes());
            }
        }
        if self.literals {
            let mut sorted: Vec<&Literal> = literals.iter().collect();
            sorted.sort_unstable();
            for lit in sorted {
                field(b'L', &[lit.kind as u8]);
                field(b'l', lit.text.as_bytes());
            }
        }
        if self.operators {
            field(b'O', &operator_signature(text));
        }
        h.digest128()
    }
}

/// Classes of comparison and negation words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Op {
    Gt = 1,
    Ge,
    Lt,
    Le,
    Ne,
    Not,
    Most,
    Least,
}

/// Phrases and their classes, longest first so `no more than` wins over `no` and `more than`.
const PHRASES: &[(&[&str], Op)] = &[
    (&["no", "more", "than"], Op::Le),
    (&["not", "more", "than"], Op::Le),
    (&["no", "less", "than"], Op::Ge),
    (&["not", "less", "than"], Op::Ge),
    (&["no", "fewer", "than"], Op::Ge),
    (&["not", "equal", "to"], Op::Ne),
    (&["other", "than"], Op::Ne),
    (&["different", "from"], Op::Ne),
    (&["more", "than"], Op::Gt),
    (&["greater", "than"], Op::Gt),
    (&["higher", "than"], Op::Gt),
    (&["larger", "than"], Op::Gt),
    (&["bigger", "than"], Op::Gt),
    (&["at", "least"], Op::Ge),
    (&["or", "more"], Op::Ge),
    (&["or", "above"], Op::Ge),
    (&["or", "greater"], Op::Ge),
    (&["less", "than"], Op::Lt),
    (&["fewer", "than"], Op::Lt),
    (&["lower", "than"], Op::Lt),
    (&["smaller", "than"], Op::Lt),
    (&["at", "most"], Op::Le),
    (&["or", "less"], Op::Le),
    (&["or", "fewer"], Op::Le),
    (&["or", "below"], Op::Le),
    (&["up", "to"], Op::Le),
    (&[">="], Op::Ge),
    (&["<="], Op::Le),
    (&["<>"], Op::Ne),
    (&["!="], Op::Ne),
    (&[">"], Op::Gt),
    (&["<"], Op::Lt),
    (&["over"], Op::Gt),
    (&["above"], Op::Gt),
    (&["exceeds"], Op::Gt),
    (&["exceeding"], Op::Gt),
    (&["exceed"], Op::Gt),
    (&["after"], Op::Gt),
    (&["since"], Op::Ge),
    (&["minimum"], Op::Ge),
    (&["under"], Op::Lt),
    (&["below"], Op::Lt),
    (&["before"], Op::Lt),
    (&["maximum"], Op::Le),
    (&["not"], Op::Not),
    (&["no"], Op::Not),
    (&["never"], Op::Not),
    (&["without"], Op::Not),
    (&["none"], Op::Not),
    (&["neither"], Op::Not),
    (&["nor"], Op::Not),
    (&["n't"], Op::Not),
    (&["excluding"], Op::Not),
    (&["except"], Op::Not),
    (&["exclude"], Op::Not),
    (&["lacking"], Op::Not),
    (&["missing"], Op::Not),
    (&["most"], Op::Most),
    (&["highest"], Op::Most),
    (&["largest"], Op::Most),
    (&["biggest"], Op::Most),
    (&["max"], Op::Most),
    (&["desc"], Op::Most),
    (&["descending"], Op::Most),
    (&["latest"], Op::Most),
    (&["newest"], Op::Most),
    (&["least"], Op::Least),
    (&["lowest"], Op::Least),
    (&["smallest"], Op::Least),
    (&["fewest"], Op::Least),
    (&["min"], Op::Least),
    (&["asc"], Op::Least),
    (&["ascending"], Op::Least),
    (&["earliest"], Op::Least),
    (&["oldest"], Op::Least),
    (&["cheapest"], Op::Least),
];

/// Splits text into lowercase words and runs of comparison symbols; `didn't` gives `did`, `n't`.
pub(crate) fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut symbols = String::new();
    let flush = |buf: &mut String, out: &mut Vec<String>| {
        if !buf.is_empty() {
            out.push(std::mem::take(buf));
        }
    };
    for ch in text.chars() {
        if ch.is_alphanumeric() || ch == '_' || ch == '\'' || ch == '’' {
            flush(&mut symbols, &mut out);
            word.extend(ch.to_lowercase());
        } else if matches!(ch, '<' | '>' | '=' | '!') {
            flush(&mut word, &mut out);
            symbols.push(ch);
        } else {
            flush(&mut word, &mut out);
            flush(&mut symbols, &mut out);
        }
    }
    flush(&mut word, &mut out);
    flush(&mut symbols, &mut out);
    let mut split = Vec::with_capacity(out.len());
    for w in out {
        let w = w.replace('’', "'");
        if let Some(stem) = w.strip_suffix("n't") {
            if !stem.is_empty() {
                split.push(stem.to_owned());
            }
            split.push("n't".to_owned());
        } else {
            let w = w.strip_suffix("'s").unwrap_or(&w);
            let trimmed = w.trim_matches('\'');
            if !trimmed.is_empty() {
                split.push(trimmed.to_owned());
            }
        }
    }
    split
}

/// The sorted multiset of comparison and negation classes in `text`. A lone `=` is no class:
/// equality is what a query without a comparison word means.
pub(crate) fn operator_signature(text: &str) -> Vec<u8> {
    let words = words(text);
    let mut ops = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let hit = PHRASES.iter().find(|(phrase, _)| {
            words.len() - i >= phrase.len() && phrase.iter().zip(&words[i..]).all(|(p, w)| p == w)
        });
        match hit {
            Some((phrase, op)) => {
                ops.push(*op as u8);
                i += phrase.len();
            }
            None => i += 1,
        }
    }
    ops.sort_unstable();
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn check(text: &str, expect: Expect) {
        let ops: Vec<String> = operator_signature(text)
            .into_iter()
            .map(|b| {
                let op = [Op::Gt, Op::Ge, Op::Lt, Op::Le, Op::Ne, Op::Not, Op::Most, Op::Least]
                    .into_iter()
                    .find(|op| *op as u8 == b);
                op.map_or_else(|| "?".to_owned(), |op| format!("{op:?}"))
            })
            .collect();
        expect.assert_eq(&ops.join(" "));
    }

    #[test]
    fn operator_signatures() {
        check("orders over 100", expect!["Gt"]);
        check("orders with total > 100", expect!["Gt"]);
        check("orders with total >= 100", expect!["Ge"]);
        check("orders of at least 100", expect!["Ge"]);
        check("no more than 5 items", expect!["Le"]);
        check("customers who didn't order", expect!["Not"]);
        check("SELECT * FROM t WHERE a <> $1 AND b IS NOT NULL", expect!["Ne Not"]);
        check("the cheapest product", expect!["Least"]);
        check("list all users", expect![[""]]);
    }

    #[test]
    fn numbers_compare_in_canonical_form() {
        assert_eq!(Literal::number("+007.50"), Literal::number("7.5"));
        assert_eq!(Literal::number("100"), Literal::number("100.0"));
        assert_eq!(Literal::number("-0"), Literal::number("0"));
        assert_ne!(Literal::number("100"), Literal::number("1000"));
        assert_ne!(Literal::number("1e3"), Literal::number("1000"));
        assert_ne!(Literal::number("5"), Literal::string("5"));
    }
}
