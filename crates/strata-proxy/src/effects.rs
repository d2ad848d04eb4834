//! A lexical reading of SQL text for the session-state effects the proxy tracks (`SET`, `RESET`,
//! `SET ROLE`, `SET SESSION AUTHORIZATION`, `DISCARD`) and for state it cannot follow.

/// One statement's effect on session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// `SET [SESSION] name = value` (name lowercased; value as written, trimmed).
    Set { name: String, value: String },
    /// `SET LOCAL ...`: lasts until the end of the transaction only.
    SetLocal,
    /// `RESET name`.
    Reset { name: String },
    /// `RESET ALL`.
    ResetAll,
    /// `SET ROLE x` (`None` = `SET ROLE NONE` / `RESET ROLE`).
    Role(Option<String>),
    /// `SET SESSION AUTHORIZATION x` (`None` = `DEFAULT` / `RESET SESSION AUTHORIZATION`).
    SessionAuthorization(Option<String>),
    /// `DISCARD ALL`: settings, role and prepared statements reset.
    DiscardAll,
    /// `DEALLOCATE name` (`None` = `DEALLOCATE ALL`): drops SQL-level and protocol-level statements.
    Deallocate(Option<String>),
    /// State the proxy cannot follow (e.g. `set_config()`, temporary tables); caching turns off.
    Untrackable(&'static str),
}

/// Splits SQL text into statements at top-level semicolons, respecting quotes, dollar quotes and
/// comments. Empty statements are dropped.
pub(crate) fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut start) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while i < b.len() && depth > 0 {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' => {
                // A dollar-quote tag: $$ or $tag$ where tag is an identifier.
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if j < b.len() && b[j] == b'$' && !b[i + 1..j].first().is_some_and(u8::is_ascii_digit) {
                    let tag = &b[i..=j];
                    let body = j + 1;
                    match b[body..].windows(tag.len()).position(|w| w == tag) {
                        Some(p) => i = body + p + tag.len(),
                        None => i = b.len(),
                    }
                } else {
                    i += 1;
                }
            }
            b';' => {
                push_stmt(&mut out, &sql[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    push_stmt(&mut out, &sql[start.min(sql.len())..]);
    out
}

fn push_stmt<'a>(out: &mut Vec<&'a str>, s: &'a str) {
    if !strip_leading(s).is_empty() {
        out.push(s);
    }
}

/// Removes leading whitespace and comments.
fn strip_leading(mut s: &str) -> &str {
    loop {
        let t = s.trim_start();
        if let Some(rest) = t.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = t.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return t;
        }
    }
}

/// Words of a statement: identifiers/keywords lowercased, quoted identifiers kept, other
/// characters as single tokens.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = strip_leading(s).char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        if c.is_alphanumeric() || c == '_' {
            let mut w = c.to_lowercase().to_string();
            while let Some(&(_, d)) = chars.peek() {
                if d.is_alphanumeric() || d == '_' || d == '.' || d == '$' {
                    w.extend(d.to_lowercase());
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(w);
        } else {
            out.push(c.to_string());
        }
        if out.len() > 8 {
            break;
        }
    }
    out
}

/// The effects of one SQL text (one or several statements).
pub(crate) fn effects_of(sql: &str) -> Vec<Effect> {
    let mut effects = Vec::new();
    if contains_ignore_ascii_case(sql.as_bytes(), b"set_config") {
        effects.push(Effect::Untrackable("set_config() call"));
    }
    for stmt in split_statements(sql) {
        if let Some(e) = statement_effect(stmt) {
            effects.push(e);
        }
    }
    effects
}

/// Whether `needle` (lowercase ASCII) occurs in `haystack`, ASCII case ignored.
fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether a statement starts with a keyword [`statement_effect`] reads; checked without
/// allocating, since nearly every statement a client sends starts with another one.
fn may_have_effect(stmt: &str) -> bool {
    let s = strip_leading(stmt);
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.' || c == '$')).unwrap_or(s.len());
    // A word that is not ASCII never lowercases to one of these keywords.
    let first = &s.as_bytes()[..end];
    ["set", "reset", "discard", "create", "deallocate"]
        .iter()
        .any(|k| first.eq_ignore_ascii_case(k.as_bytes()))
}

fn statement_effect(stmt: &str) -> Option<Effect> {
    if !may_have_effect(stmt) {
        return None;
    }
    let w = words(stmt);
    let first = w.first()?.as_str();
    match first {
        "set" => Some(set_effect(stmt, &w[1..])),
        "reset" => Some(match w.get(1).map(String::as_str) {
            Some("all") => Effect::ResetAll,
            Some("role") => Effect::Role(None),
            Some("session") if w.get(2).map(String::as_str) == Some("authorization") => {
                Effect::SessionAuthorization(None)
            }
            Some("time") if w.get(2).map(String::as_str) == Some("zone") => {
                Effect::Reset { name: "timezone".into() }
            }
            Some(name) => Effect::Reset { name: unquote(name) },
            None => Effect::Untrackable("unreadable RESET"),
        }),
        "discard" => match w.get(1).map(String::as_str) {
            Some("all") => Some(Effect::DiscardAll),
            Some("temp" | "temporary") => None,
            Some("plans" | "sequences") => None,
            _ => Some(Effect::Untrackable("unreadable DISCARD")),
        },
        "create" => {
            let temp = w.iter().skip(1).take(3).any(|x| x == "temp" || x == "temporary");
            temp.then_some(Effect::Untrackable("temporary table"))
        }
        "deallocate" => {
            let rest: Vec<&String> = w.iter().skip(1).filter(|x| x.as_str() != "prepare").collect();
            Some(match rest.first().map(|x| x.as_str()) {
                Some("all") | None => Effect::Deallocate(None),
                Some(name) => Effect::Deallocate(Some(unquote(name))),
            })
        }
        _ => None,
    }
}

fn set_effect(stmt: &str, rest: &[String]) -> Effect {
    let (local, rest) = match rest.first().map(String::as_str) {
        Some("local") => (true, &rest[1..]),
        Some("session") if rest.get(1).map(String::as_str) != Some("authorization") => (false, &rest[1..]),
        _ => (false, rest),
    };
    match rest.first().map(String::as_str) {
        // SET TRANSACTION / SET CONSTRAINTS only affect the current transaction.
        Some("transaction" | "constraints") => return Effect::SetLocal,
        _ if local => return Effect::SetLocal,
        _ => {}
    }
    let value_after = |n: usize| value_text(stmt, n);
    match rest.first().map(String::as_str) {
        Some("role") => {
            let v = value_after(1);
            if v.eq_ignore_ascii_case("none") {
                Effect::Role(None)
            } else {
                Effect::Role(Some(unquote(&v)))
            }
        }
        Some("session") => {
            // SET SESSION AUTHORIZATION x
            let v = value_after(2);
            if v.eq_ignore_ascii_case("default") {
                Effect::SessionAuthorization(None)
            } else {
                Effect::SessionAuthorization(Some(unquote(&v)))
            }
        }
        Some("time") if rest.get(1).map(String::as_str) == Some("zone") => {
            Effect::Set { name: "timezone".into(), value: value_after(2) }
        }
        Some("names") => Effect::Set { name: "client_encoding".into(), value: value_after(1) },
        Some(name) => {
            let v = value_after(1);
            let v = v.strip_prefix('=').map(str::trim).map(str::to_owned).unwrap_or_else(|| {
                let lower = v.to_ascii_lowercase();
                if lower.starts_with("to ") || lower.starts_with("to\t") || lower.starts_with("to\n") {
                    v[3..].trim().to_owned()
                } else {
                    v.clone()
                }
            });
            if v.eq_ignore_ascii_case("default") {
                Effect::Reset { name: unquote(name) }
            } else {
                Effect::Set { name: unquote(name), value: v }
            }
        }
        None => Effect::Untrackable("unreadable SET"),
    }
}

/// The statement text after skipping `SET`, an optional `SESSION`/`LOCAL`, and `n` more words.
fn value_text(stmt: &str, n: usize) -> String {
    let mut s = strip_leading(stmt);
    // Skip "set".
    s = s.get(3..).unwrap_or("").trim_start();
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("session ") && !lower["session ".len()..].trim_start().starts_with("authorization") {
        s = s["session ".len()..].trim_start();
    }
    for _ in 0..n {
        s = skip_word(s);
    }
    s.trim().trim_end_matches(';').trim().to_owned()
}

fn skip_word(s: &str) -> &str {
    let s = s.trim_start();
    if let Some(rest) = s.strip_prefix('"') {
        return rest.split_once('"').map_or("", |(_, r)| r).trim_start();
    }
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.' || c == '$')).unwrap_or(s.len());
    let end = if end == 0 { s.chars().next().map_or(0, char::len_utf8) } else { end };
    s[end..].trim_start()
}

fn unquote(s: &str) -> String {
    let t = s.trim();
    if t.len() >= 2
        && ((t.starts_with('\'') && t.ends_with('\'')) || (t.starts_with('"') && t.ends_with('"')))
    {
        t[1..t.len() - 1].to_owned()
    } else {
        t.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sql: &str) -> String {
        format!("{:?}", effects_of(sql))
    }

    #[test]
    fn effects_table() {
        let cases = [
            ("SET search_path TO app, public", r#"[Set { name: "search_path", value: "app, public" }]"#),
            ("set TimeZone = 'UTC';", r#"[Set { name: "timezone", value: "'UTC'" }]"#),
            ("SET SESSION DateStyle TO ISO", r#"[Set { name: "datestyle", value: "ISO" }]"#),
            ("SET TIME ZONE 'Europe/Paris'", r#"[Set { name: "timezone", value: "'Europe/Paris'" }]"#),
            ("SET LOCAL work_mem = '1MB'", "[SetLocal]"),
            ("SET app.tenant_id = '42'", r#"[Set { name: "app.tenant_id", value: "'42'" }]"#),
            ("SET extra_float_digits TO DEFAULT", r#"[Reset { name: "extra_float_digits" }]"#),
            ("RESET ALL", "[ResetAll]"),
            ("reset search_path", r#"[Reset { name: "search_path" }]"#),
            ("SET ROLE alice", r#"[Role(Some("alice"))]"#),
            ("SET ROLE NONE", "[Role(None)]"),
            ("RESET ROLE", "[Role(None)]"),
            ("SET SESSION AUTHORIZATION bob", r#"[SessionAuthorization(Some("bob"))]"#),
            ("SET SESSION AUTHORIZATION DEFAULT", "[SessionAuthorization(None)]"),
            ("DISCARD ALL", "[DiscardAll]"),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "[SetLocal]"),
            ("SELECT set_config('a.b', '1', false)", r#"[Untrackable("set_config() call")]"#),
            ("CREATE TEMP TABLE t (a int)", r#"[Untrackable("temporary table")]"#),
            ("SELECT 'SET x = 1'; SET a = 1", r#"[Set { name: "a", value: "1" }]"#),
            ("/* c */ -- d\n SET a = 1", r#"[Set { name: "a", value: "1" }]"#),
            ("SELECT $$;SET a=1;$$", "[]"),
            ("SELECT 1", "[]"),
            ("DEALLOCATE s1", r#"[Deallocate(Some("s1"))]"#),
            ("DEALLOCATE PREPARE ALL", "[Deallocate(None)]"),
        ];
        for (sql, want) in cases {
            assert_eq!(check(sql), want, "{sql}");
        }
    }

    #[test]
    fn split_never_panics_on_odd_text() {
        for s in ["'", "\"", "$", "$a", "$a$", "/*", "--", "é;ü", "$1$", ";;;", "$é$x$é$"] {
            let _ = split_statements(s);
            let _ = effects_of(s);
        }
        assert_eq!(split_statements("select 1; select ';'; "), vec!["select 1", " select ';'"]);
    }
}
