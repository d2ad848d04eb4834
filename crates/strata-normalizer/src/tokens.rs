//! Statement identity and literal extraction over PostgreSQL's own scanner tokens.
//!
//! Working on tokens rather than the parse tree keeps analysis to one extra pass over a flat
//! array, and tokens already separate what matters: comments (dropped), keywords and unquoted
//! identifiers (case-folded), quoted identifiers (kept exactly), literals (lifted out as
//! parameters) and the client's own `$n` placeholders (kept).

use std::sync::Arc;

use pg_query::protobuf::{KeywordKind, ScanToken, Token};
use strata_core::TypeOid;
use xxhash_rust::xxh3::Xxh3;

use crate::analysis::{LiteralForm, Parameter, StatementIdentity};

/// What the token pass produced for one statement.
pub(crate) struct Normalized {
    pub(crate) normalized: String,
    pub(crate) identity: StatementIdentity,
    pub(crate) key_bytes: Vec<u8>,
    pub(crate) params: Vec<Parameter>,
    /// Where each parameter's literal starts in the text (the byte offset PostgreSQL's parse
    /// tree reports as the constant's location): its token, or the sign before a number in a
    /// collapsed list, whose parameter text includes the sign.
    pub(crate) param_starts: Vec<i32>,
    pub(crate) client_param_count: u32,
    pub(crate) time_literal: Option<Arc<str>>,
}

const LPAREN: i32 = 40;
const RPAREN: i32 = 41;
const COMMA: i32 = 44;
const DOT: i32 = 46;
const LBRACKET: i32 = 91;
const RBRACKET: i32 = 93;

/// Scans text into tokens. Text of nothing but whitespace has no tokens and is not handed to the
/// scanner: pg_query builds a slice from the scanner's null token array in that case, which is
/// undefined behaviour (and an abort in debug builds).
pub(crate) fn scan(sql: &str) -> Result<Vec<ScanToken>, String> {
    if sql.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)) {
        return Ok(Vec::new());
    }
    pg_query::scan_tokens(sql).map_err(|e| e.to_string())
}

pub(crate) fn is_comment(kind: i32) -> bool {
    kind == Token::SqlComment as i32 || kind == Token::CComment as i32
}

/// The literal a token stands for, if it is one: its form, its type and its parameter text.
pub(crate) fn literal(kind: i32, text: &str, prev: Option<i32>) -> Option<(LiteralForm, TypeOid, Box<str>)> {
    let k = Token::try_from(kind).ok()?;
    Some(match k {
        Token::Iconst => {
            let (ty, form) = integer_type(text);
            (form, ty, text.into())
        }
        // The scanner hands integers beyond int4 over as FCONST; PostgreSQL then types them
        // bigint when they fit, numeric otherwise.
        Token::Fconst if text.bytes().all(|b| b.is_ascii_digit() || b == b'_') => {
            let (ty, form) = integer_type(text);
            (form, ty, text.into())
        }
        Token::Fconst => (LiteralForm::Numeric, TypeOid::NUMERIC, text.into()),
        Token::Sconst => {
            if text.starts_with('\'') {
                (LiteralForm::String, TypeOid::UNKNOWN, decode_standard(text).into())
            } else if text.starts_with('$') {
                (LiteralForm::DollarString, TypeOid::UNKNOWN, dollar_body(text).into())
            } else {
                // E'...' and N'...': kept as written, prefix included, so values stay distinct.
                (LiteralForm::EscapeString, TypeOid::UNKNOWN, text.into())
            }
        }
        Token::Usconst => (LiteralForm::UnicodeString, TypeOid::UNKNOWN, text.into()),
        Token::Bconst => (LiteralForm::BitString, TypeOid::BIT, text.into()),
        Token::Xconst => (LiteralForm::HexString, TypeOid::BIT, text.into()),
        Token::TrueP | Token::FalseP => {
            // `x IS TRUE` / `IS NOT FALSE` are tests, not values.
            if matches!(prev, Some(p) if p == Token::Is as i32 || p == Token::Not as i32) {
                return None;
            }
            let v = if k == Token::TrueP { "true" } else { "false" };
            (LiteralForm::Boolean, TypeOid::BOOL, v.into())
        }
        _ => return None,
    })
}

/// The special date/time input a literal spells, if its value depends on when it is read
/// (`'now'`, `'today'`, ...): lower-cased and trimmed.
pub(crate) fn time_dependent(form: LiteralForm, text: &str) -> Option<String> {
    // Only strings are read as date/time input: a number, a boolean or a bit string is never
    // lower-cased into a copy to be looked at.
    if !matches!(
        form,
        LiteralForm::String
            | LiteralForm::DollarString
            | LiteralForm::EscapeString
            | LiteralForm::UnicodeString
    ) {
        return None;
    }
    let v = text.trim().to_ascii_lowercase();
    match form {
        LiteralForm::String | LiteralForm::DollarString => is_time_dependent_input(&v).then_some(v),
        // E'' and U&'' are kept as written; an escape could spell any word, so a literal with
        // one is treated as time-dependent too.
        LiteralForm::EscapeString | LiteralForm::UnicodeString => {
            let body = v.split_once('\'').map_or(v.as_str(), |(_, rest)| rest);
            let escaped = body.contains('\\') || v.contains("uescape");
            (escaped || is_time_dependent_input(body)).then_some(v)
        }
        _ => None,
    }
}

/// Whether a value, read as date/time input, depends on when it is read: it contains one of the
/// words `now`, `today`, `tomorrow`, `yesterday` (case-insensitive), which PostgreSQL accepts
/// anywhere in such input (`'tomorrow 10:00'`, `' Now'`). Errs on the side of yes (`'today is
/// a day'` counts): a false alarm only costs a cache miss, a miss the other way serves a stale
/// answer.
///
/// ```
/// use strata_normalizer::is_time_dependent_input;
/// assert!(is_time_dependent_input("tomorrow 10:00"));
/// assert!(is_time_dependent_input(" NOW"));
/// assert!(!is_time_dependent_input("2024-01-01 10:00"));
/// assert!(!is_time_dependent_input("nowhere"));
/// ```
pub fn is_time_dependent_input(value: &str) -> bool {
    const WORDS: [&str; 4] = ["now", "today", "tomorrow", "yesterday"];
    // Each word is letters: a value without one, such as a number, names none of them.
    if !value.bytes().any(|b| b.is_ascii_alphabetic()) {
        return false;
    }
    value.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| WORDS.iter().any(|t| w.eq_ignore_ascii_case(t)))
}

fn integer_type(text: &str) -> (TypeOid, LiteralForm) {
    // The usual case, plain decimal digits, needs no cleaned copy.
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<i64>() {
            Ok(v) if i32::try_from(v).is_ok() => (TypeOid::INT4, LiteralForm::Integer),
            Ok(_) => (TypeOid::INT8, LiteralForm::Integer),
            Err(_) => (TypeOid::NUMERIC, LiteralForm::Numeric),
        };
    }
    let clean: String = text.chars().filter(|c| *c != '_').collect();
    let lower = clean.to_ascii_lowercase();
    let parsed = if let Some(h) = lower.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()
    } else if let Some(o) = lower.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()
    } else if let Some(b) = lower.strip_prefix("0b") {
        i64::from_str_radix(b, 2).ok()
    } else {
        lower.parse::<i64>().ok()
    };
    match parsed {
        Some(v) if i32::try_from(v).is_ok() => (TypeOid::INT4, LiteralForm::Integer),
        Some(_) => (TypeOid::INT8, LiteralForm::Integer),
        // PostgreSQL reads integers beyond bigint as numeric.
        None => (TypeOid::NUMERIC, LiteralForm::Numeric),
    }
}

/// Decodes `'it''s'`, including continuation segments (`'a'` newline `'b'` is `ab`).
fn decode_standard(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut inside = false;
    while let Some(c) = chars.next() {
        if c == '\'' {
            if inside && chars.peek() == Some(&'\'') {
                out.push('\'');
                chars.next();
            } else {
                inside = !inside;
            }
        } else if inside {
            out.push(c);
        }
    }
    out
}

fn dollar_body(text: &str) -> &str {
    let Some(close) = text.get(1..).and_then(|rest| rest.find('$')) else { return text };
    let tag_len = close + 2;
    if text.len() >= 2 * tag_len {
        text.get(tag_len..text.len() - tag_len).unwrap_or(text)
    } else {
        text
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ListKind {
    In = 1,
    Values,
    Array,
}

struct Sig<'a> {
    kind: i32,
    keyword: i32,
    start: i32,
    text: &'a str,
}

const PLUS: i32 = 43;
const MINUS: i32 = 45;

fn is_sign(kind: i32) -> bool {
    kind == PLUS || kind == MINUS
}

fn is_number(kind: i32) -> bool {
    kind == Token::Iconst as i32 || kind == Token::Fconst as i32
}

/// Reads one list item at `k`: a literal, or a sign followed by a number. Returns the index of
/// the literal token.
fn const_item(sig: &[Sig<'_>], k: usize) -> Option<usize> {
    let s = sig.get(k)?;
    if is_sign(s.kind) {
        let n = sig.get(k + 1)?;
        return is_number(n.kind).then_some(k + 1);
    }
    let prev = k.checked_sub(1).and_then(|p| sig.get(p)).map(|p| p.kind);
    literal(s.kind, s.text, prev).map(|_| k)
}

/// Tries to read a constant list starting at `i` (the opening bracket). Returns the index after
/// the closing bracket and the number of items.
fn const_items(sig: &[Sig<'_>], i: usize, close: i32) -> Option<(usize, usize)> {
    let mut items = 0;
    let mut k = i + 1;
    loop {
        let last = const_item(sig, k)?;
        items += 1;
        let next = sig.get(last + 1)?;
        if next.kind == close {
            return Some((last + 2, items));
        }
        if next.kind != COMMA {
            return None;
        }
        k = last + 2;
    }
}

/// Recognizes a collapsible list at `i`: returns (end index, first-row end index, item count,
/// row count).
fn collapsible(sig: &[Sig<'_>], i: usize) -> Option<(ListKind, usize, usize, usize)> {
    let k = sig.get(i)?.kind;
    let open = sig.get(i + 1)?.kind;
    if k == Token::InP as i32 && open == LPAREN {
        let (end, n) = const_items(sig, i + 1, RPAREN)?;
        return Some((ListKind::In, end, n, 1));
    }
    if k == Token::Array as i32 && open == LBRACKET {
        let (end, n) = const_items(sig, i + 1, RBRACKET)?;
        return Some((ListKind::Array, end, n, 1));
    }
    if k == Token::Values as i32 && open == LPAREN {
        let (mut end, arity) = const_items(sig, i + 1, RPAREN)?;
        let mut rows = 1;
        while sig.get(end).map(|s| s.kind) == Some(COMMA) && sig.get(end + 1).map(|s| s.kind) == Some(LPAREN)
        {
            let (next_end, n) = const_items(sig, end + 1, RPAREN)?;
            if n != arity {
                return None;
            }
            end = next_end;
            rows += 1;
        }
        return Some((ListKind::Values, end, arity * rows, rows));
    }
    None
}

struct Writer {
    out: String,
    hash: Xxh3,
    prev: Option<i32>,
    prev_glues: bool,
}

impl Writer {
    /// Appends a token to the normalized text and `hashed` to the identity hash.
    fn token(&mut self, kind: i32, keyword: i32, rendered: &str, hashed: &[u8]) {
        let glue_before = matches!(kind, COMMA | RPAREN | RBRACKET | DOT | LBRACKET)
            || kind == Token::Typecast as i32
            || (kind == LPAREN
                && matches!(self.prev, Some(p) if p == Token::Ident as i32 || p == Token::Uident as i32 || p == -1));
        if !self.out.is_empty() && !glue_before && !self.prev_glues {
            self.out.push(' ');
        }
        self.out.push_str(rendered);
        self.prev_glues = matches!(kind, LPAREN | LBRACKET | DOT) || kind == Token::Typecast as i32;
        // A non-reserved keyword before `(` is a function-like name (`coalesce(`, `varchar(`).
        let function_like = keyword != KeywordKind::NoKeyword as i32
            && keyword != KeywordKind::ReservedKeyword as i32
            && kind != Token::Values as i32;
        self.prev = if function_like { Some(-1) } else { Some(kind) };
        self.hash.update(&kind.to_le_bytes());
        self.hash.update(hashed);
        self.hash.update(&[0xff]);
    }

    fn placeholder(&mut self, n: &mut u64, form_tag: u8) {
        let ph = format!("${n}");
        *n += 1;
        // The hash must not depend on the placeholder number, only on the literal's form.
        self.token(Token::Param as i32, 0, &ph, &[b'P', form_tag]);
    }

    fn marker(&mut self) {
        self.out.push_str(" /*, ... */");
        self.prev_glues = false;
    }
}

/// The content of a quoted identifier that needs no quotes (lower case letters, digits, `_`),
/// so it means the same as the unquoted spelling.
fn plain_quoted<'a>(s: &Sig<'a>) -> Option<&'a str> {
    if s.kind != Token::Ident as i32 {
        return None;
    }
    let inner = s.text.strip_prefix('"')?.strip_suffix('"')?;
    let mut chars = inner.chars();
    let first = chars.next()?;
    let plain = (first.is_ascii_lowercase() || first == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    plain.then_some(inner)
}

/// Normalizes the tokens of one statement.
pub(crate) fn normalize(sql: &str, tokens: &[ScanToken]) -> Option<Normalized> {
    let mut sig = Vec::with_capacity(tokens.len());
    for t in tokens {
        if is_comment(t.token) {
            continue;
        }
        let text = sql.get(usize::try_from(t.start).ok()?..usize::try_from(t.end).ok()?)?;
        sig.push(Sig { kind: t.token, keyword: t.keyword_kind, start: t.start, text });
    }
    let mut client_param_count = 0u32;
    for s in &sig {
        if s.kind == Token::Param as i32 {
            if let Some(Ok(n)) = s.text.get(1..).map(str::parse::<u32>) {
                client_param_count = client_param_count.max(n);
            }
        }
    }
    let mut w =
        Writer { out: String::with_capacity(sql.len()), hash: Xxh3::new(), prev: None, prev_glues: false };
    let mut params: Vec<Parameter> = Vec::new();
    let mut param_starts: Vec<i32> = Vec::new();
    let mut lists: Vec<u32> = Vec::new();
    let mut next_placeholder = u64::from(client_param_count) + 1;
    let mut time_literal = None;
    let mut lowered = String::new();
    let mut push_param = |p: (LiteralForm, TypeOid, Box<str>), params: &mut Vec<Parameter>| {
        if time_literal.is_none() {
            time_literal = time_dependent(p.0, &p.2).map(Arc::from);
        }
        params.push(Parameter { ty: p.1, form: p.0, text: p.2 });
    };
    let mut i = 0;
    while i < sig.len() {
        if let Some((list, end, items, rows)) = collapsible(&sig, i) {
            // Items per row: the columns of a VALUES row; one for IN and ARRAY lists.
            let arity = if list == ListKind::Values { items / rows } else { 1 };
            let mut flavors = 0u32;
            for j in i + 2..end {
                let prev = sig.get(j - 1).map(|p| p.kind);
                if let Some(mut lit) = literal(sig[j].kind, sig[j].text, prev) {
                    // Inside a collapsed list a sign belongs to its number.
                    if prev.is_some_and(is_sign) && is_number(sig[j].kind) {
                        lit.2 = format!("{}{}", sig[j - 1].text, lit.2).into();
                        param_starts.push(sig[j - 1].start);
                    } else {
                        param_starts.push(sig[j].start);
                    }
                    flavors |= 1 << (lit.0.tag() - b'a');
                    push_param(lit, &mut params);
                }
            }
            let kw = sig[i].text.to_ascii_lowercase();
            w.token(sig[i].kind, sig[i].keyword, &kw, kw.as_bytes());
            w.token(sig[i + 1].kind, 0, sig[i + 1].text, sig[i + 1].text.as_bytes());
            let shown = if list == ListKind::Values { arity } else { 1 };
            for c in 0..shown {
                if c > 0 {
                    w.token(COMMA, 0, ",", b",");
                }
                w.placeholder(&mut next_placeholder, b'l');
            }
            if list != ListKind::Values {
                w.marker();
            }
            w.token(sig[end - 1].kind, 0, sig[end - 1].text, sig[end - 1].text.as_bytes());
            if list == ListKind::Values {
                w.marker();
            }
            w.hash.update(&[b'L', list as u8]);
            w.hash.update(&(arity as u32).to_le_bytes());
            w.hash.update(&flavors.to_le_bytes());
            lists.push(u32::try_from(rows.max(items)).unwrap_or(u32::MAX));
            i = end;
            continue;
        }
        let s = &sig[i];
        let prev = if i > 0 { Some(sig[i - 1].kind) } else { None };
        if let Some(lit) = literal(s.kind, s.text, prev) {
            w.placeholder(&mut next_placeholder, lit.0.tag());
            push_param(lit, &mut params);
            param_starts.push(s.start);
        } else if let Some(plain) = plain_quoted(s) {
            // `"users"` names the same relation as `users`: render and hash them alike.
            w.token(s.kind, s.keyword, plain, plain.as_bytes());
        } else if s.keyword != KeywordKind::NoKeyword as i32
            || (s.kind == Token::Ident as i32 && !s.text.starts_with('"'))
        {
            lowered.clear();
            lowered.push_str(s.text);
            lowered.make_ascii_lowercase();
            w.token(s.kind, s.keyword, &lowered, lowered.as_bytes());
        } else {
            w.token(s.kind, s.keyword, s.text, s.text.as_bytes());
        }
        i += 1;
    }
    w.hash.update(&client_param_count.to_le_bytes());
    let identity = StatementIdentity::from_u128(w.hash.digest128());
    let mut key_bytes = Vec::with_capacity(16 + params.len() + 4 * lists.len() + 8);
    key_bytes.extend_from_slice(identity.as_bytes());
    key_bytes.extend_from_slice(&(params.len() as u32).to_le_bytes());
    key_bytes.extend(params.iter().map(|p| p.form.tag()));
    for n in &lists {
        key_bytes.extend_from_slice(&n.to_le_bytes());
    }
    Some(Normalized {
        normalized: w.out,
        identity,
        key_bytes,
        params,
        param_starts,
        client_param_count,
        time_literal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(sql: &str) -> String {
        let toks = scan(sql).unwrap_or_default();
        normalize(sql, &toks).map(|n| n.normalized).unwrap_or_default()
    }

    #[test]
    fn decodes_strings() {
        assert_eq!(decode_standard("'it''s'"), "it's");
        assert_eq!(decode_standard("'a'\n  'b'"), "ab");
        assert_eq!(dollar_body("$q$x$y$q$"), "x$y");
        assert_eq!(dollar_body("$$abc$$"), "abc");
    }

    #[test]
    fn renders_normalized_text() {
        assert_eq!(
            norm("SELECT  count(*) FROM \"Users\" u WHERE u.id IN (1,2,3) AND name = 'x' -- c"),
            "select count(*) from \"Users\" u where u.id in ($1 /*, ... */) and name = $2"
        );
        assert_eq!(
            norm("insert into t (a, b) values (1, 'a'), (2, 'b') returning id"),
            "insert into t(a, b) values ($1, $2) /*, ... */ returning id"
        );
        assert_eq!(norm("select * from t where a = $1 and b = 5"), "select * from t where a = $1 and b = $2");
        assert_eq!(
            norm("select x::int from t where flag is true"),
            "select x::int from t where flag is true"
        );
    }
}
