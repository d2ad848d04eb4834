//! The shape memo's fast path: a text that differs from an already analyzed text only in the
//! values of its literals gets that text's analysis with its own literals, without a parse.
//!
//! A small lexer of PostgreSQL's lexical grammar turns a text into a *shape key*: every token
//! except literals verbatim, with the kind of whitespace between tokens (none, blanks, a line
//! break), and each literal replaced by its class (scanner token kind, [`LiteralForm`], type).
//! Two texts with the same key differ only in the values of same-class literals and in which
//! blanks separate tokens. The lexer refuses (and the caller takes the full path) whenever it is
//! not sure to split a text exactly as PostgreSQL's scanner does: non-ASCII outside quotes,
//! backslashes in `E''` strings, `U&` and `N''` literals, string continuation over a line
//! break, numbers with trailing junk, unterminated quotes or comments, and so on.
//!
//! A shape is recorded only after a full analysis, and only when that analysis shows it does
//! not depend on literal values:
//! - every statement is a `SELECT`, `INSERT`, `UPDATE`, `DELETE` or `MERGE` (the grammar checks
//!   a few literal values in utility statements, such as `ALTER TABLE ... ALTER COLUMN 3`);
//! - the one value check the grammar makes inside expressions, the precision of `float(p)`, is
//!   avoided by keeping that literal verbatim in the key;
//! - the lexer's literals and comments sit exactly where PostgreSQL's scanner put its literal
//!   and comment tokens, with the same token kinds, and each lifted parameter of the analysis is
//!   explained by one of them (so parameters, their types and their order are reproduced);
//! - no literal is a time-dependent string such as `'now'` (a variant with one takes the full
//!   path too);
//! - no statement calls `nextval` or `setval`, whose write effect is the sequence a literal
//!   names;
//! - statement boundaries fall on token boundaries.
//!
//! Everything else the analysis holds (identity, key bytes, tables, functions, verdict, write
//! effect, session effects, hints) comes from the token kinds, the identifiers and the comments, which the key
//! holds verbatim, and from the parse tree, whose shape literal values of the same class do not
//! change once the checks above hold.

use std::sync::Arc;

use pg_query::protobuf::{ScanToken, Token};
use strata_core::TypeOid;

use crate::analysis::{Analysis, LiteralForm, Parameter, StatementAnalysis, StatementKind};
use crate::tokens;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A keyword or unquoted identifier.
    Word,
    /// A quoted identifier.
    Quoted,
    /// Punctuation or an operator.
    Other,
    /// A client parameter `$n`.
    Param,
    /// A `--` or `/* */` comment.
    Comment,
    /// A literal whose value may vary.
    Slot,
    /// A literal kept verbatim in the key.
    Pinned,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::Word => 1,
            Kind::Quoted => 2,
            Kind::Other => 3,
            Kind::Param => 4,
            Kind::Comment => 5,
            Kind::Slot => 6,
            Kind::Pinned => 7,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Tok {
    start: usize,
    end: usize,
    kind: Kind,
    /// The scanner token kind of a literal (`Token::Iconst as i32`, ...); 0 otherwise.
    literal: i32,
}

/// A text split into tokens, with its shape key and the parameters of its varying literals.
pub(crate) struct Lexed {
    key: Vec<u8>,
    toks: Vec<Tok>,
    /// One per [`Kind::Slot`] token, in text order: the token index and the lifted literal.
    slots: Vec<(usize, Lifted)>,
}

/// A lifted literal: its form, its type and its parameter text.
type Lifted = (LiteralForm, TypeOid, Box<str>);

impl Lexed {
    /// The shape key.
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    /// Whether any literal may vary (a text without one gains nothing from a shape).
    pub(crate) fn has_slots(&self) -> bool {
        !self.slots.is_empty()
    }

    pub(crate) fn into_key(self) -> Box<[u8]> {
        self.key.into_boxed_slice()
    }
}

fn is_op_char(c: u8) -> bool {
    matches!(
        c,
        b'~' | b'!'
            | b'@'
            | b'#'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
            | b'+'
            | b'-'
            | b'*'
            | b'/'
            | b'%'
            | b'<'
            | b'>'
            | b'='
    )
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_ident_cont(c: u8) -> bool {
    IDENT_CONT[usize::from(c)]
}

/// `[A-Za-z0-9_$]`, by byte: the lexer's innermost loop runs over every identifier's bytes.
static IDENT_CONT: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric() || b == b'_' || b == b'$';
        c += 1;
    }
    table
};

/// Whether a byte right after a number, parameter or string could glue onto it in a way this
/// lexer does not model (trailing junk, `1..2`, a non-ASCII identifier).
fn glues(c: Option<&u8>) -> bool {
    matches!(c, Some(c) if is_ident_cont(*c) || *c == b'.' || *c == b'\'' || *c >= 0x80)
}

/// Skips blanks; returns 0 (none), 1 (blanks only) or 2 (a line break), and `None` for
/// whitespace this lexer does not model (form feed, vertical tab).
fn skip_blanks(b: &[u8], i: &mut usize) -> Option<u8> {
    let mut gap = 0;
    while let Some(&c) = b.get(*i) {
        match c {
            b' ' | b'\t' => gap = gap.max(1),
            b'\n' | b'\r' => gap = 2,
            0x0b | 0x0c => return None,
            _ => break,
        }
        *i += 1;
    }
    Some(gap)
}

/// `/* ... */`, nested as PostgreSQL nests them. `i` is at `/*`.
fn block_comment_end(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Some(i);
            }
        } else {
            i += 1;
        }
    }
    None
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    /// `'...'` (standard_conforming_strings is on: a backslash is an ordinary character).
    Standard,
    /// `E'...'` without backslashes.
    Escape,
    /// `B'...'`.
    Bit,
    /// `X'...'`.
    Hex,
}

/// The end of a quoted literal whose opening quote is at `i`.
fn quoted_end(b: &[u8], i: usize, quote: Quote) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let c = *b.get(j)?;
        if c == b'\'' {
            if matches!(quote, Quote::Standard | Quote::Escape) && b.get(j + 1) == Some(&b'\'') {
                j += 2;
                continue;
            }
            j += 1;
            break;
        }
        let ok = match quote {
            Quote::Standard => true,
            Quote::Escape => c != b'\\',
            Quote::Bit => c == b'0' || c == b'1',
            Quote::Hex => c.is_ascii_hexdigit(),
        };
        if !ok {
            return None;
        }
        j += 1;
    }
    if glues(b.get(j)) {
        return None;
    }
    // A quote after blanks holding a line break (and `--` comments) continues the literal;
    // refuse rather than model it.
    let mut k = j;
    let mut line_break = false;
    while let Some(&c) = b.get(k) {
        match c {
            b' ' | b'\t' | 0x0b | 0x0c => k += 1,
            b'\n' | b'\r' => {
                line_break = true;
                k += 1;
            }
            b'-' if b.get(k + 1) == Some(&b'-') => {
                while k < b.len() && b[k] != b'\n' && b[k] != b'\r' {
                    k += 1;
                }
            }
            b'\'' if line_break => return None,
            _ => break,
        }
    }
    Some(j)
}

/// Decimal digits with single underscores between them, from `i` (a digit).
fn decimal_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        let underscore = b[i] == b'_'
            && i > 0
            && b[i - 1].is_ascii_digit()
            && b.get(i + 1).is_some_and(u8::is_ascii_digit);
        if !(b[i].is_ascii_digit() || underscore) {
            break;
        }
        i += 1;
    }
    i
}

/// A numeric literal at `i`: its end and the scanner's token kind (ICONST when an integer fits
/// int4, FCONST otherwise), as PostgreSQL 16+ scans it.
fn number(b: &[u8], i: usize) -> Option<(usize, i32)> {
    let radix = match (b[i], b.get(i + 1)) {
        (b'0', Some(b'x' | b'X')) => 16,
        (b'0', Some(b'o' | b'O')) => 8,
        (b'0', Some(b'b' | b'B')) => 2,
        _ => 10,
    };
    if radix != 10 {
        let mut j = i + 2;
        while b.get(j).is_some_and(|c| c.is_ascii_hexdigit() && (*c as char).is_digit(radix)) {
            j += 1;
        }
        if j == i + 2 || glues(b.get(j)) {
            return None;
        }
        let digits = std::str::from_utf8(&b[i + 2..j]).ok()?;
        let kind = match u64::from_str_radix(digits, radix) {
            Ok(v) if v <= i32::MAX as u64 => Token::Iconst,
            _ => Token::Fconst,
        };
        return Some((j, kind as i32));
    }
    let mut integer = true;
    let mut j = i;
    if b[j].is_ascii_digit() {
        j = decimal_end(b, j);
        if b.get(j) == Some(&b'.') {
            if b.get(j + 1) == Some(&b'.') {
                return None;
            }
            integer = false;
            j += 1;
            if b.get(j).is_some_and(u8::is_ascii_digit) {
                j = decimal_end(b, j);
            }
        }
    } else {
        // `.5`
        integer = false;
        j = decimal_end(b, j + 1);
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        integer = false;
        let mut k = j + 1;
        if matches!(b.get(k), Some(b'+' | b'-')) {
            k += 1;
        }
        if !b.get(k).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        j = decimal_end(b, k);
    }
    if glues(b.get(j)) {
        return None;
    }
    let kind = if integer {
        // Decimal digits and separating underscores only (checked above), read without a copy.
        let mut value: Option<u64> = Some(0);
        for &c in &b[i..j] {
            if c != b'_' {
                value =
                    value.and_then(|v| v.checked_mul(10)).and_then(|v| v.checked_add(u64::from(c - b'0')));
            }
        }
        match value {
            Some(v) if v <= i32::MAX as u64 => Token::Iconst,
            _ => Token::Fconst,
        }
    } else {
        Token::Fconst
    };
    Some((j, kind as i32))
}

/// `$tag$ ... $tag$` at `i`.
fn dollar_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if b.get(j) != Some(&b'$') {
        if !b.get(j).is_some_and(|c| is_ident_start(*c)) {
            return None;
        }
        while b.get(j).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') {
            j += 1;
        }
        if b.get(j) != Some(&b'$') {
            return None;
        }
    }
    let delim = &b[i..=j];
    let body = j + 1;
    let at = b.get(body..)?.windows(delim.len()).position(|w| w == delim)?;
    let end = body + at + delim.len();
    if glues(b.get(end)) || b.get(end) == Some(&b'$') {
        return None;
    }
    Some(end)
}

/// Appends `v` in LEB128 (one byte below 128), so a key stays close to its text's length.
fn varint(key: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        key.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    key.push(v as u8);
}

/// The index of the last token before `n` that is not a comment.
fn prev_significant(toks: &[Tok], n: usize) -> Option<usize> {
    toks[..n].iter().rposition(|t| t.kind != Kind::Comment)
}

/// Splits a text into tokens and builds its shape key, or `None` when the text holds anything
/// this lexer does not model exactly.
pub(crate) fn lex(sql: &str) -> Option<Lexed> {
    let b = sql.as_bytes();
    let mut lx =
        Lexed { key: Vec::with_capacity(b.len() + 64), toks: Vec::with_capacity(32), slots: Vec::new() };
    let mut i = 0;
    loop {
        let gap = skip_blanks(b, &mut i)?;
        let Some(&c) = b.get(i) else {
            lx.key.push(gap);
            lx.key.push(0xff);
            return Some(lx);
        };
        let start = i;
        let mut literal = 0;
        let kind = match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
                Kind::Comment
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = block_comment_end(b, i)?;
                Kind::Comment
            }
            b'\'' => {
                i = quoted_end(b, i, Quote::Standard)?;
                literal = Token::Sconst as i32;
                Kind::Slot
            }
            b'"' => {
                let mut j = i + 1;
                loop {
                    match b.get(j)? {
                        b'"' if b.get(j + 1) == Some(&b'"') => j += 2,
                        b'"' => break,
                        _ => j += 1,
                    }
                }
                if j == i + 1 {
                    return None;
                }
                i = j + 1;
                Kind::Quoted
            }
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let mut j = i + 1;
                while b.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                if glues(b.get(j)) {
                    return None;
                }
                i = j;
                Kind::Param
            }
            b'$' => {
                i = dollar_end(b, i)?;
                literal = Token::Sconst as i32;
                Kind::Slot
            }
            b'0'..=b'9' => {
                let (end, kind) = number(b, i)?;
                i = end;
                literal = kind;
                Kind::Slot
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let (end, kind) = number(b, i)?;
                i = end;
                literal = kind;
                Kind::Slot
            }
            b'.' => {
                i += if b.get(i + 1) == Some(&b'.') { 2 } else { 1 };
                Kind::Other
            }
            c if is_ident_start(c) => {
                let j = i + 1 + b[i + 1..].iter().position(|c| !is_ident_cont(*c)).unwrap_or(b.len() - i - 1);
                if b.get(j).is_some_and(|c| *c >= 0x80) {
                    return None;
                }
                let one = j == i + 1;
                match (one, c.to_ascii_lowercase(), b.get(j)) {
                    (true, b'e', Some(b'\'')) => {
                        i = quoted_end(b, j, Quote::Escape)?;
                        literal = Token::Sconst as i32;
                        Kind::Slot
                    }
                    (true, b'b', Some(b'\'')) => {
                        i = quoted_end(b, j, Quote::Bit)?;
                        literal = Token::Bconst as i32;
                        Kind::Slot
                    }
                    (true, b'x', Some(b'\'')) => {
                        i = quoted_end(b, j, Quote::Hex)?;
                        literal = Token::Xconst as i32;
                        Kind::Slot
                    }
                    // N'...' (national character) and U&'...' / U&"..." (Unicode escapes).
                    (true, b'n', Some(b'\'')) | (true, b'u', Some(b'&')) => return None,
                    _ => {
                        i = j;
                        Kind::Word
                    }
                }
            }
            b',' | b'(' | b')' | b'[' | b']' | b';' | b':' => {
                i += 1;
                Kind::Other
            }
            c if is_op_char(c) => {
                while i < b.len()
                    && is_op_char(b[i])
                    && !(b[i] == b'-' && b.get(i + 1) == Some(&b'-'))
                    && !(b[i] == b'/' && b.get(i + 1) == Some(&b'*'))
                {
                    i += 1;
                }
                Kind::Other
            }
            _ => return None,
        };
        let mut kind = kind;
        if kind == Kind::Slot && (literal == Token::Iconst as i32 || literal == Token::Fconst as i32) {
            // `float(p)`: the grammar turns p into float4 or float8 and rejects p outside 1..=53,
            // so that literal must not vary.
            let n = lx.toks.len();
            let paren = prev_significant(&lx.toks, n);
            let name = paren.and_then(|p| prev_significant(&lx.toks, p));
            if let (Some(p), Some(w)) = (paren, name) {
                let (p, w) = (lx.toks[p], lx.toks[w]);
                if &sql[p.start..p.end] == "("
                    && w.kind == Kind::Word
                    && sql[w.start..w.end].eq_ignore_ascii_case("float")
                {
                    kind = Kind::Pinned;
                }
            }
        }
        let text = sql.get(start..i)?;
        lx.key.push(gap << 4 | kind.tag());
        if kind == Kind::Slot {
            let lit = tokens::literal(literal, text, None)?;
            varint(&mut lx.key, u64::try_from(literal).ok()?);
            lx.key.push(lit.0.tag());
            varint(&mut lx.key, u64::from(lit.1 .0));
            lx.slots.push((lx.toks.len(), lit));
        } else {
            varint(&mut lx.key, text.len() as u64);
            lx.key.extend_from_slice(text.as_bytes());
        }
        lx.toks.push(Tok { start, end: i, kind, literal });
    }
}

/// Where a statement boundary lies, relative to the tokens.
#[derive(Clone, Copy, Debug)]
enum Anchor {
    TextStart,
    TextEnd,
    TokenStart(usize),
    TokenEnd(usize),
}

impl Anchor {
    fn of(pos: usize, sql: &str, toks: &[Tok]) -> Option<Anchor> {
        if pos == 0 {
            return Some(Anchor::TextStart);
        }
        if pos == sql.len() {
            return Some(Anchor::TextEnd);
        }
        if let Some(k) = toks.iter().position(|t| t.start == pos) {
            return Some(Anchor::TokenStart(k));
        }
        toks.iter().position(|t| t.end == pos).map(Anchor::TokenEnd)
    }

    fn resolve(self, sql: &str, toks: &[Tok]) -> Option<usize> {
        match self {
            Anchor::TextStart => Some(0),
            Anchor::TextEnd => Some(sql.len()),
            Anchor::TokenStart(k) => toks.get(k).map(|t| t.start),
            Anchor::TokenEnd(k) => toks.get(k).map(|t| t.end),
        }
    }
}

/// Where a parameter of the shape's analysis comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// The same in every text of the shape (a pinned literal, `TRUE`/`FALSE`).
    Fixed,
    /// The `slot`-th varying literal, after the sign a collapsed list gives it.
    Slot { slot: usize, sign: Sign },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sign {
    None,
    Minus,
    Plus,
}

struct StatementShape {
    range: (Anchor, Anchor),
    params: Vec<Source>,
}

/// An analysis that holds for every text with the same shape key, and how to adapt it.
pub(crate) struct Shape {
    template: Arc<Analysis>,
    statements: Vec<StatementShape>,
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shape").field("statements", &self.statements.len()).finish_non_exhaustive()
    }
}

fn literal_token(kind: i32) -> bool {
    [Token::Iconst, Token::Fconst, Token::Sconst, Token::Usconst, Token::Bconst, Token::Xconst]
        .iter()
        .any(|t| *t as i32 == kind)
}

impl Shape {
    /// Records the shape of `sql`, fully analyzed as `analysis` from the scanner tokens `scanned`,
    /// when every check of the module documentation holds.
    pub(crate) fn build(
        sql: &str,
        lexed: &Lexed,
        analysis: &Arc<Analysis>,
        scanned: &[ScanToken],
    ) -> Option<Shape> {
        let dml = |k: StatementKind| {
            matches!(
                k,
                StatementKind::Select
                    | StatementKind::Insert
                    | StatementKind::Update
                    | StatementKind::Delete
                    | StatementKind::Merge
            )
        };
        if analysis.statements.is_empty() || !analysis.statements.iter().all(|s| dml(s.kind)) {
            return None;
        }
        // The sequence `nextval('s')` writes is a literal's value.
        let names_a_sequence =
            |f: &Arc<str>| matches!(f.strip_prefix("pg_catalog.").unwrap_or(f), "nextval" | "setval");
        if analysis.statements.iter().flat_map(|s| s.functions()).any(names_a_sequence) {
            return None;
        }
        // The lexer's literals and comments are exactly the scanner's.
        let mine = lexed.toks.iter().filter(|t| matches!(t.kind, Kind::Slot | Kind::Pinned | Kind::Comment));
        let theirs = scanned.iter().filter(|t| literal_token(t.token) || tokens::is_comment(t.token));
        if mine.clone().count() != theirs.clone().count() {
            return None;
        }
        for (m, t) in mine.zip(theirs) {
            let same_kind =
                if m.kind == Kind::Comment { tokens::is_comment(t.token) } else { m.literal == t.token };
            if !same_kind
                || i64::try_from(m.start).ok()? != i64::from(t.start)
                || i64::try_from(m.end).ok()? != i64::from(t.end)
            {
                return None;
            }
        }
        let mut statements: Vec<StatementShape> = Vec::with_capacity(analysis.statements.len());
        for s in &analysis.statements {
            let range =
                (Anchor::of(s.range.start, sql, &lexed.toks)?, Anchor::of(s.range.end, sql, &lexed.toks)?);
            statements.push(StatementShape { range, params: Vec::with_capacity(s.params.len()) });
        }
        // Explain every lifted parameter by a token of its statement, in order.
        let mut slot = 0;
        for (n, t) in lexed.toks.iter().enumerate() {
            let text = &sql[t.start..t.end];
            let expected = match t.kind {
                Kind::Slot | Kind::Pinned => Some(tokens::literal(t.literal, text, None)?),
                Kind::Word if text.eq_ignore_ascii_case("true") || text.eq_ignore_ascii_case("false") => {
                    // `x IS TRUE` and `NOT FALSE` are tests, not lifted values (see tokens.rs).
                    let test = prev_significant(&lexed.toks, n).is_some_and(|p| {
                        let p = lexed.toks[p];
                        let w = &sql[p.start..p.end];
                        p.kind == Kind::Word
                            && (w.eq_ignore_ascii_case("is") || w.eq_ignore_ascii_case("not"))
                    });
                    (!test).then(|| (LiteralForm::Boolean, TypeOid::BOOL, text.to_ascii_lowercase().into()))
                }
                _ => None,
            };
            let Some(expected) = expected else { continue };
            let si = analysis.statements.iter().position(|s| s.range.contains(&t.start))?;
            let param = analysis.statements[si].params.get(statements[si].params.len())?;
            if param.form != expected.0 || param.ty != expected.1 {
                return None;
            }
            let sign = match param.text.strip_suffix(&*expected.2) {
                Some("") => Sign::None,
                Some("-") => Sign::Minus,
                Some("+") => Sign::Plus,
                _ => return None,
            };
            let source = if t.kind == Kind::Slot {
                if tokens::time_dependent(expected.0, &expected.2).is_some() {
                    return None;
                }
                debug_assert_eq!(lexed.slots.get(slot).map(|s| s.0), Some(n));
                slot += 1;
                Source::Slot { slot: slot - 1, sign }
            } else {
                Source::Fixed
            };
            statements[si].params.push(source);
        }
        if slot != lexed.slots.len()
            || statements.iter().zip(&analysis.statements).any(|(s, a)| s.params.len() != a.params.len())
        {
            return None;
        }
        Some(Shape { template: Arc::clone(analysis), statements })
    }

    /// The analysis of `sql`, whose shape key is this shape's, or `None` when one of its
    /// literals makes it differ (a time-dependent string).
    pub(crate) fn apply(&self, sql: &str, lexed: &Lexed) -> Option<Analysis> {
        if lexed.slots.iter().any(|(_, p)| tokens::time_dependent(p.0, &p.2).is_some()) {
            return None;
        }
        let t = &*self.template;
        let mut statements = Vec::with_capacity(t.statements.len());
        for (shape, s) in self.statements.iter().zip(&t.statements) {
            let start = shape.range.0.resolve(sql, &lexed.toks)?;
            let end = shape.range.1.resolve(sql, &lexed.toks)?;
            let mut params = Vec::with_capacity(s.params.len());
            for (source, fixed) in shape.params.iter().zip(&s.params) {
                params.push(match *source {
                    Source::Fixed => fixed.clone(),
                    Source::Slot { slot, sign } => {
                        let (form, ty, text) = &lexed.slots.get(slot)?.1;
                        let text: Box<str> = match sign {
                            Sign::None => text.clone(),
                            Sign::Minus => format!("-{text}").into(),
                            Sign::Plus => format!("+{text}").into(),
                        };
                        Parameter { ty: *ty, form: *form, text }
                    }
                });
            }
            statements.push(StatementAnalysis {
                kind: s.kind,
                range: start..end,
                normalized: s.normalized.clone(),
                identity: s.identity,
                key_bytes: s.key_bytes.clone(),
                params,
                client_param_count: s.client_param_count,
                reads: s.reads.clone(),
                writes: s.writes.clone(),
                functions: s.functions.clone(),
                operators: s.operators.clone(),
                temp_created: s.temp_created.clone(),
                session_effects: s.session_effects.clone(),
                cacheability: s.cacheability.clone(),
                // Restrictions refer to parameters by index, not by value, and the checks above
                // keep every parameter's index.
                read_restrictions: s.read_restrictions.clone(),
                write_keys: s.write_keys.clone(),
            });
        }
        Some(Analysis {
            statements,
            hints: t.hints.clone(),
            identity: t.identity,
            key_bytes: t.key_bytes.clone(),
            reads: t.reads.clone(),
            writes: t.writes.clone(),
            cacheability: t.cacheability.clone(),
            client_param_count: t.client_param_count,
            unparsed: t.unparsed.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(sql: &str) -> Option<Vec<(&str, Kind)>> {
        lex(sql).map(|l| l.toks.iter().map(|t| (&sql[t.start..t.end], t.kind)).collect())
    }

    #[test]
    fn the_identifier_table_is_the_identifier_bytes() {
        for c in 0..=u8::MAX {
            assert_eq!(is_ident_cont(c), c.is_ascii_alphanumeric() || c == b'_' || c == b'$', "byte {c}");
        }
        // An identifier at the very end of the text, and one cut by each kind of byte.
        assert_eq!(spans("select a_1$"), Some(vec![("select", Kind::Word), ("a_1$", Kind::Word)]));
        assert_eq!(spans("select ab,c").map(|s| s.len()), Some(4));
    }

    #[test]
    fn literals_match_the_scanner() {
        let texts = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            "select 1e5, .5, 1.5e-3, 0x1F, 0o17, 0b101, 1_000, 2147483648, 99999999999999999999, 1.",
            "select 'it''s', E'a''b', $$x$y$$, $q$ $a$ $q$, B'0101', X'1F', -- c\n 'x' /* a /* b */ c */",
            "select a<-5, b=-5.5, c::int, \"Q\"\"x\", $1, t.c from t where x in (1, -2, +3)",
            "select 'a\\' from t",
        ];
        for sql in texts {
            let lx = lex(sql).unwrap_or_else(|| panic!("lexer refused {sql}"));
            let scanned = pg_query::scan_tokens(sql).unwrap_or_else(|e| panic!("{e}"));
            let mine: Vec<(usize, usize, i32)> = lx
                .toks
                .iter()
                .filter(|t| matches!(t.kind, Kind::Slot | Kind::Pinned))
                .map(|t| (t.start, t.end, t.literal))
                .collect();
            let theirs: Vec<(usize, usize, i32)> = scanned
                .iter()
                .filter(|t| literal_token(t.token))
                .map(|t| (t.start as usize, t.end as usize, t.token))
                .collect();
            assert_eq!(mine, theirs, "{sql}");
        }
    }

    #[test]
    fn refuses_what_it_does_not_model() {
        for sql in [
            "select E'\\n'",
            "select U&'\\0041'",
            "select N'x'",
            "select 'a'\n'b'",
            "select 'a' -- c\n 'b'",
            "select 5x",
            "select 1..2",
            "select 0x",
            "select 1e",
            "select $1abc",
            "select 'unterminated",
            "select /* open",
            "select \"\"",
            "select é",
            "select 1\x0b",
            "select $a",
        ] {
            assert!(spans(sql).is_none(), "{sql:?} should be refused");
        }
    }

    #[test]
    fn float_precision_is_pinned() {
        let s = spans("select x::float(10), y::numeric(10)").unwrap_or_default();
        assert_eq!(s.iter().filter(|t| t.1 == Kind::Pinned).count(), 1);
        assert_eq!(s.iter().filter(|t| t.1 == Kind::Slot).count(), 1);
    }

    #[test]
    fn keys_hold_classes_and_spacing() {
        let key = |s: &str| lex(s).map(|l| l.key).unwrap_or_default();
        assert_eq!(key("select 1 from t where a<=5"), key("select 7 from t where a<=9"));
        assert_ne!(key("select 1 from t where a<=5"), key("select 1 from t where a< =5"));
        assert_ne!(key("select 1"), key("select 2147483648"));
        assert_ne!(key("select 1"), key("select 1.5"));
        assert_ne!(key("select 'a'"), key("select $$a$$"));
        assert_ne!(key("select 1 /* a */"), key("select 1 /* b */"));
    }
}
