//! Hints in SQL comments: `/* strata: cache=off, ttl=30s */` and `-- strata: tier=l1`.

use std::fmt;
use std::time::Duration;

use strata_core::TableName;

/// Which tier a `tier=` hint restricts caching to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TierHint {
    /// Only the in-process tier.
    L1,
    /// Only the shared tier.
    L2,
}

/// A hint that was read but not applied, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IgnoredHint {
    text: Box<str>,
    reason: Box<str>,
}

impl IgnoredHint {
    /// The hint item as written (at most 64 characters of it).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Why it was ignored.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Whether a hint asked to skip caching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum CacheHint {
    /// No `cache=` hint, or `cache=on`.
    #[default]
    Default,
    /// `cache=off`: neither serve from nor fill the cache.
    Off,
}

/// The hints of one SQL text. Later hints override earlier ones for the same key.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Hints {
    cache: CacheHint,
    ttl: Option<Duration>,
    ttl_capped: bool,
    tier: Option<TierHint>,
    semantic: bool,
    intent: Option<Box<str>>,
    tables: Vec<TableName>,
    ignored: Vec<IgnoredHint>,
}

impl Hints {
    /// `cache=off` or the default.
    pub fn cache(&self) -> CacheHint {
        self.cache
    }

    /// The TTL asked for with `ttl=`, already capped by the configuration.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// Whether the `ttl=` value was above the cap and was lowered to it.
    pub fn ttl_was_capped(&self) -> bool {
        self.ttl_capped
    }

    /// The tier restriction asked for with `tier=`.
    pub fn tier(&self) -> Option<TierHint> {
        self.tier
    }

    /// Whether `semantic` opted in to the semantic tier.
    pub fn semantic(&self) -> bool {
        self.semantic
    }

    /// The natural-language text the semantic tier should match on (`intent="..."`).
    pub fn intent(&self) -> Option<&str> {
        self.intent.as_deref()
    }

    /// Tables declared with `tables=a,b`, for dependencies the parser cannot see.
    pub fn tables(&self) -> &[TableName] {
        &self.tables
    }

    /// Hint items that were not understood, with reasons.
    pub fn ignored(&self) -> &[IgnoredHint] {
        &self.ignored
    }

    /// Whether no hint was given at all (nothing applied, nothing ignored).
    pub fn is_empty(&self) -> bool {
        *self == Hints::default()
    }

    fn ignore(&mut self, text: &str, reason: impl Into<Box<str>>) {
        // Bound what we keep from hostile input: at most 16 ignored items of 64 chars each.
        if self.ignored.len() < 16 {
            let text: String = text.chars().take(64).collect();
            self.ignored.push(IgnoredHint { text: text.into(), reason: reason.into() });
        }
    }

    /// Reads one comment token's text (with its `/*`/`*/` or `--` delimiters). Comments that do
    /// not start with `strata:` are not hints and are skipped silently.
    pub(crate) fn read_comment(&mut self, comment: &str, ttl_cap: Duration) {
        let body = if let Some(rest) = comment.strip_prefix("/*") {
            rest.strip_suffix("*/").unwrap_or(rest)
        } else if let Some(rest) = comment.strip_prefix("--") {
            rest
        } else {
            comment
        };
        let body = body.trim();
        let Some(prefix) = body.get(..7) else { return };
        if !prefix.eq_ignore_ascii_case("strata:") {
            return;
        }
        let mut in_tables = false;
        for item in split_items(&body[7..]) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            let key_lower = key.to_ascii_lowercase();
            if value.is_none() && in_tables && key_lower != "semantic" {
                self.push_table(item);
                continue;
            }
            in_tables = false;
            match (key_lower.as_str(), value) {
                ("cache", Some(v)) if v.eq_ignore_ascii_case("off") => self.cache = CacheHint::Off,
                ("cache", Some(v)) if v.eq_ignore_ascii_case("on") => self.cache = CacheHint::Default,
                ("cache", _) => self.ignore(item, "cache expects off or on"),
                ("ttl", Some(v)) => match parse_duration(v) {
                    Ok(d) if d > ttl_cap => {
                        self.ttl = Some(ttl_cap);
                        self.ttl_capped = true;
                    }
                    Ok(d) => {
                        self.ttl = Some(d);
                        self.ttl_capped = false;
                    }
                    Err(reason) => self.ignore(item, reason),
                },
                ("tier", Some(v)) if v.eq_ignore_ascii_case("l1") => self.tier = Some(TierHint::L1),
                ("tier", Some(v)) if v.eq_ignore_ascii_case("l2") => self.tier = Some(TierHint::L2),
                ("tier", _) => self.ignore(item, "tier expects l1 or l2"),
                ("semantic", None) => self.semantic = true,
                ("semantic", Some(_)) => self.ignore(item, "semantic takes no value"),
                ("intent", Some(v)) => match unquote(v) {
                    Some(text) if !text.trim().is_empty() && text.len() <= 4096 => {
                        self.intent = Some(text.into());
                    }
                    Some(_) => self.ignore(item, "intent must be 1 to 4096 bytes"),
                    None => self.ignore(item, "intent expects a double-quoted text"),
                },
                ("tables", Some(v)) => {
                    in_tables = true;
                    self.push_table(v);
                }
                _ => self.ignore(item, "unknown hint"),
            }
        }
    }

    fn push_table(&mut self, raw: &str) {
        let raw = raw.trim();
        if raw.is_empty() {
            return;
        }
        let valid = raw.len() <= 127
            && raw.split('.').count() <= 2
            && raw
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '$'));
        if !valid {
            self.ignore(raw, "tables expects names like schema.table");
        } else if self.tables.len() >= 64 {
            self.ignore(raw, "at most 64 tables");
        } else {
            // Unquoted names fold to lower case, as PostgreSQL does.
            let name = TableName::new(raw.to_ascii_lowercase());
            if !self.tables.contains(&name) {
                self.tables.push(name);
            }
        }
    }
}

impl fmt::Debug for Hints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hints")
            .field("cache", &self.cache)
            .field("ttl", &self.ttl)
            .field("tier", &self.tier)
            .field("semantic", &self.semantic)
            .field("intent_len", &self.intent.as_ref().map(|i| i.len()))
            .field("tables", &self.tables)
            .field("ignored", &self.ignored.len())
            .finish()
    }
}

/// Splits on commas outside double quotes.
fn split_items(s: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&s[start..]);
    items
}

fn unquote(v: &str) -> Option<String> {
    let inner = v.strip_prefix('"')?.strip_suffix('"')?;
    // `""` inside stands for one `"`.
    Some(inner.replace("\"\"", "\""))
}

/// Parses `30s`, `500ms`, `5m`, `2h`, `1d`, or a bare number of seconds.
fn parse_duration(v: &str) -> Result<Duration, &'static str> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    if digits.is_empty() || digits.len() > 12 {
        return Err("ttl expects a number with a unit, like 30s");
    }
    let n: u64 = digits.parse().map_err(|_| "ttl expects a number with a unit, like 30s")?;
    let d = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" => Duration::from_millis(n),
        "" | "s" | "sec" | "secs" => Duration::from_secs(n),
        "m" | "min" | "mins" => Duration::from_secs(n.saturating_mul(60)),
        "h" | "hr" | "hrs" => Duration::from_secs(n.saturating_mul(3600)),
        "d" | "day" | "days" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return Err("ttl unit must be ms, s, m, h or d"),
    };
    if d.is_zero() {
        return Err("ttl must be positive");
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(comment: &str) -> Hints {
        let mut h = Hints::default();
        h.read_comment(comment, Duration::from_secs(600));
        h
    }

    #[test]
    fn durations_parse_with_units_and_cap() {
        assert_eq!(read("/* strata: ttl=30s */").ttl(), Some(Duration::from_secs(30)));
        assert_eq!(read("-- strata: ttl=500ms").ttl(), Some(Duration::from_millis(500)));
        assert_eq!(read("-- strata: ttl=5m").ttl(), Some(Duration::from_secs(300)));
        let capped = read("-- strata: ttl=99999999999d");
        assert_eq!(capped.ttl(), Some(Duration::from_secs(600)));
        assert!(capped.ttl_was_capped());
        assert_eq!(read("-- strata: ttl=0s").ttl(), None);
        assert_eq!(read("-- strata: ttl=0s").ignored()[0].reason(), "ttl must be positive");
        assert_eq!(read("-- strata: ttl=3 weeks").ignored().len(), 1);
        assert_eq!(read("-- strata: ttl=").ignored().len(), 1);
    }

    #[test]
    fn tables_accept_comma_lists_followed_by_other_keys() {
        let h = read("/* strata: tables=orders, Public.Items ,semantic, ttl=1s */");
        let names: Vec<&str> = h.tables().iter().map(|t| t.as_str()).collect();
        assert_eq!(names, ["orders", "public.items"]);
        assert!(h.semantic());
        assert_eq!(h.ttl(), Some(Duration::from_secs(1)));
        assert!(h.ignored().is_empty(), "{:?}", h.ignored());
    }

    #[test]
    fn intent_keeps_commas_inside_quotes() {
        let h = read(r#"/* strata: semantic, intent="top sellers, this week", tier=l2 */"#);
        assert_eq!(h.intent(), Some("top sellers, this week"));
        assert_eq!(h.tier(), Some(TierHint::L2));
    }

    #[test]
    fn non_hint_comments_and_unknown_keys() {
        assert!(read("/* just a comment with cache=off */").is_empty());
        let h = read("/* STRATA: cache=OFF, colour=blue, tier=l3 */");
        assert_eq!(h.cache(), CacheHint::Off);
        let reasons: Vec<&str> = h.ignored().iter().map(|i| i.reason()).collect();
        assert_eq!(reasons, ["unknown hint", "tier expects l1 or l2"]);
    }
}
