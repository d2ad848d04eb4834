//! The analysis driver: scan, parse, walk each statement, roll up, and memoize by text.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use pg_query::protobuf::ScanToken;

use quick_cache::sync::Cache;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64, Xxh3};

use crate::analysis::{
    Analysis, Cacheability, NotCacheable, SessionEffect, StatementAnalysis, StatementIdentity, StatementKind,
    WriteEffect,
};
use crate::config::NormalizerConfig;
use crate::hints::Hints;
use crate::restrict::{self, Literals};
use crate::shape::{self, Shape};
use crate::tokens;
use crate::walk::Walk;

/// Analyzes SQL text with the default configuration and no memo. Pure and thread-safe; never
/// panics: text that does not parse gives an [`Analysis`] that is not cacheable with a parse error
/// and an unknown write effect. Text longer than the default
/// [`NormalizerConfigBuilder::with_max_analyzed_bytes`](crate::NormalizerConfigBuilder::with_max_analyzed_bytes)
/// (256 KiB) is not analyzed ([`NotCacheable::TooLarge`]).
pub fn analyze(sql: &str) -> Analysis {
    static DEFAULT: OnceLock<NormalizerConfig> = OnceLock::new();
    analyze_with(sql, DEFAULT.get_or_init(NormalizerConfig::default))
}

/// Reads only the hints of a SQL text (from real comment tokens), with `ttl=` capped at
/// `ttl_cap`. Text the scanner rejects has no hints.
pub fn read_hints(sql: &str, ttl_cap: std::time::Duration) -> Hints {
    let mut hints = Hints::default();
    if sql.contains('\0') {
        return hints;
    }
    let Ok(toks) = catch_unwind(|| tokens::scan(sql)) else { return hints };
    let Ok(toks) = toks else { return hints };
    for t in toks.iter().filter(|t| tokens::is_comment(t.token)) {
        if let Some(text) =
            usize::try_from(t.start).ok().zip(usize::try_from(t.end).ok()).and_then(|(s, e)| sql.get(s..e))
        {
            hints.read_comment(text, ttl_cap);
        }
    }
    hints
}

fn failed(sql: &str, hints: Hints, message: &str) -> Analysis {
    let identity = StatementIdentity::from_u128(xxh3_128(sql.as_bytes()));
    let message: String = message.chars().take(200).collect();
    Analysis {
        statements: Vec::new(),
        hints,
        identity,
        key_bytes: identity.as_bytes().to_vec().into_boxed_slice(),
        reads: Vec::new(),
        writes: WriteEffect::Unknown,
        cacheability: Cacheability::NotCacheable(NotCacheable::ParseError(Arc::from(message))),
        client_param_count: 0,
        // Whatever the text was meant to do, the server may run something of it.
        unparsed: Some(SessionEffect::ServerCode(Arc::from("text that did not parse"))),
    }
}

/// The analysis of a text longer than the configured limit: neither scanned nor parsed. It costs
/// one hash over the text (its identity, as for text that did not parse) and copies nothing of it:
/// whatever the text was meant to do, the server may run something of it, so it writes
/// [`WriteEffect::Unknown`] and has one [`SessionEffect::ServerCode`].
fn too_large(sql: &[u8], limit: usize) -> Analysis {
    let identity = StatementIdentity::from_u128(xxh3_128(sql));
    Analysis {
        statements: Vec::new(),
        hints: Hints::default(),
        identity,
        key_bytes: identity.as_bytes().to_vec().into_boxed_slice(),
        reads: Vec::new(),
        writes: WriteEffect::Unknown,
        cacheability: Cacheability::NotCacheable(NotCacheable::TooLarge { bytes: sql.len(), limit }),
        client_param_count: 0,
        unparsed: Some(SessionEffect::ServerCode(Arc::from("text too large to analyze"))),
    }
}

/// Analyzes SQL text with the given configuration, without memoization.
pub(crate) fn analyze_with(sql: &str, config: &NormalizerConfig) -> Analysis {
    analyze_scanned(sql, config).0
}

/// Analyzes SQL text and also returns the scanner's tokens when the text parsed.
fn analyze_scanned(sql: &str, config: &NormalizerConfig) -> (Analysis, Option<Vec<ScanToken>>) {
    // Checked before anything reads the text: the parse tree takes over a hundred times its size.
    if sql.len() > config.max_analyzed_bytes {
        return (too_large(sql.as_bytes(), config.max_analyzed_bytes), None);
    }
    if sql.contains('\0') {
        return (failed(sql, Hints::default(), "text contains a NUL byte"), None);
    }
    // pg_query's own Rust code indexes into the trees it builds; a bug there must not take the
    // proxy down, so it is contained here as a parse error.
    match catch_unwind(AssertUnwindSafe(|| analyze_inner(sql, config))) {
        Ok((a, toks)) if !a.is_parse_error() => (a, Some(toks)),
        Ok((a, _)) => (a, None),
        Err(_) => (failed(sql, Hints::default(), "internal error in the SQL parser"), None),
    }
}

fn analyze_inner(sql: &str, config: &NormalizerConfig) -> (Analysis, Vec<ScanToken>) {
    let toks = match tokens::scan(sql) {
        Ok(t) => t,
        Err(e) => return (failed(sql, Hints::default(), &e), Vec::new()),
    };
    if toks.is_empty() {
        return (roll_up(Vec::new(), Hints::default()), toks);
    }
    let mut hints = Hints::default();
    for t in toks.iter().filter(|t| tokens::is_comment(t.token)) {
        if let Some(text) =
            usize::try_from(t.start).ok().zip(usize::try_from(t.end).ok()).and_then(|(s, e)| sql.get(s..e))
        {
            hints.read_comment(text, config.hint_ttl_cap);
        }
    }
    let parsed = match pg_query::parse(sql, 0) {
        Ok(p) => p,
        Err(e) => return (failed(sql, hints, &e.to_string()), toks),
    };
    let mut statements = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let start = usize::try_from(raw.stmt_location).unwrap_or(0).min(sql.len());
        let end = match usize::try_from(raw.stmt_len) {
            Ok(0) | Err(_) => sql.len(),
            Ok(len) => start.saturating_add(len).min(sql.len()),
        };
        let first = toks.partition_point(|t| (t.start as i64) < start as i64);
        let last = toks.partition_point(|t| (t.start as i64) < end as i64);
        let Some(norm) = tokens::normalize(sql, &toks[first..last.max(first)]) else {
            return (failed(sql, hints, "token offsets out of range"), toks);
        };
        let mut walk = Walk::new(config);
        let node = raw.stmt.as_ref().and_then(|s| s.node.as_ref());
        let kind = match node {
            Some(node) => walk.statement(node),
            None => StatementKind::Unknown,
        };
        let mut reason = walk.reason.take();
        if reason.is_none() {
            reason = norm.time_literal.clone().map(NotCacheable::TimeLiteral);
        }
        if kind == StatementKind::Unknown {
            reason = Some(NotCacheable::Unsupported(Arc::from("empty statement node")));
        }
        let writes = if kind == StatementKind::Unknown { WriteEffect::Unknown } else { walk.write_effect() };
        let literals = Literals { starts: &norm.param_starts };
        let (read_restrictions, write_keys) = match node {
            // Only a walk that saw the whole statement knows every reference to a table.
            Some(node) if walk.complete => (
                Arc::from(restrict::read_restrictions(node, &literals, &walk.relation_refs)),
                restrict::write_keys(node, &literals, &writes).map(Arc::new),
            ),
            _ => (Arc::from([]), None),
        };
        let session_effects = if kind == StatementKind::Unknown {
            vec![SessionEffect::ServerCode(Arc::from("empty statement node"))]
        } else {
            std::mem::take(&mut walk.effects).into_vec()
        };
        statements.push(StatementAnalysis {
            kind,
            range: start..end,
            normalized: norm.normalized.into_boxed_str(),
            identity: norm.identity,
            key_bytes: norm.key_bytes.into_boxed_slice(),
            params: norm.params,
            client_param_count: norm.client_param_count,
            reads: std::mem::take(&mut walk.reads),
            writes,
            functions: std::mem::take(&mut walk.functions),
            operators: std::mem::take(&mut walk.operators),
            temp_created: std::mem::take(&mut walk.temp_created),
            session_effects,
            cacheability: match reason {
                None => Cacheability::Cacheable,
                Some(r) => Cacheability::NotCacheable(r),
            },
            read_restrictions,
            write_keys,
        });
    }
    (roll_up(statements, hints), toks)
}

fn roll_up(statements: Vec<StatementAnalysis>, hints: Hints) -> Analysis {
    let (identity, key_bytes) = match statements.as_slice() {
        [one] => (one.identity, one.key_bytes.clone()),
        many => {
            let mut h = Xxh3::new();
            let mut key = Vec::new();
            h.update(&(many.len() as u64).to_le_bytes());
            for s in many {
                h.update(s.identity.as_bytes());
            }
            let identity = StatementIdentity::from_u128(h.digest128());
            key.extend_from_slice(identity.as_bytes());
            for s in many {
                key.extend_from_slice(&(s.key_bytes.len() as u32).to_le_bytes());
                key.extend_from_slice(&s.key_bytes);
            }
            (identity, key.into_boxed_slice())
        }
    };
    let mut reads = Vec::new();
    let mut writes = WriteEffect::Nothing;
    let mut cacheability = if statements.is_empty() {
        Cacheability::NotCacheable(NotCacheable::Empty)
    } else {
        Cacheability::Cacheable
    };
    let mut client_param_count = 0;
    for s in &statements {
        for t in &s.reads {
            if !reads.contains(t) {
                reads.push(t.clone());
            }
        }
        writes.merge(&s.writes);
        if cacheability.is_cacheable() {
            cacheability = s.cacheability.clone();
        }
        client_param_count = client_param_count.max(s.client_param_count);
    }
    if hints.cache() == crate::hints::CacheHint::Off {
        cacheability = Cacheability::NotCacheable(NotCacheable::HintCacheOff);
    }
    Analysis {
        statements,
        hints,
        identity,
        key_bytes,
        reads,
        writes,
        cacheability,
        client_param_count,
        unparsed: None,
    }
}

/// Analyzes SQL text with a configuration and two bounded memos, so a repeated text costs one
/// hash lookup and a text that differs from an analyzed one only in its literal values (the same
/// query with another id) costs one pass of a small lexer instead of a parse. Cheap to share:
/// `Send + Sync`, use it from many threads.
pub struct Normalizer {
    config: NormalizerConfig,
    memo: Option<Cache<String, Arc<Analysis>>>,
    shapes: Option<Cache<Box<[u8]>, Arc<Shape>>>,
    /// Hashes of shape keys seen once: a shape is recorded the second time its key shows up, so
    /// one-off texts neither pay for recording nor push useful shapes out.
    seen: Option<Cache<u64, ()>>,
    shape_hits: AtomicU64,
}

impl Normalizer {
    /// A normalizer with this configuration.
    pub fn new(config: NormalizerConfig) -> Self {
        let memo = (config.memo_capacity > 0).then(|| Cache::new(config.memo_capacity));
        let shapes = (config.shape_memo_capacity > 0).then(|| Cache::new(config.shape_memo_capacity));
        let seen = (config.shape_memo_capacity > 0)
            .then(|| Cache::new(config.shape_memo_capacity.saturating_mul(4)));
        Self { config, memo, shapes, seen, shape_hits: AtomicU64::new(0) }
    }

    /// The configuration in use.
    pub fn config(&self) -> &NormalizerConfig {
        &self.config
    }

    /// Analyzes SQL text, answering from the memo when the same text was analyzed before, and
    /// from the shape memo when a text differing only in literal values was. The answer is the
    /// same either way. Never panics (see [`analyze`]).
    ///
    /// A text longer than [`NormalizerConfig::max_analyzed_bytes`] is answered at once with
    /// [`NotCacheable::TooLarge`]: no memo, no shape lexer, no parse.
    pub fn analyze(&self, sql: &str) -> Arc<Analysis> {
        self.analyze_memoizing(sql, true)
    }

    /// [`Normalizer::analyze`] for a caller that memoizes by text itself (as `strata` memoizes
    /// its plans): the same answer, but a text answered from the shape memo is not added to the
    /// text memo. Such a text costs one lexer pass to answer again, and while the caller holds
    /// it the memo entry would only be a second copy. A text that needed a parse is memoized as
    /// by `analyze`.
    pub fn analyze_behind_memo(&self, sql: &str) -> Arc<Analysis> {
        self.analyze_memoizing(sql, false)
    }

    fn analyze_memoizing(&self, sql: &str, memoize_shaped: bool) -> Arc<Analysis> {
        let limit = self.config.max_analyzed_bytes;
        if sql.len() > limit {
            // Before the memos too: neither their lexer nor a copy of the text as a key.
            return Arc::new(too_large(sql.as_bytes(), limit));
        }
        let small = sql.len() <= self.config.memo_max_text_bytes;
        let memo = self.memo.as_ref().filter(|_| small);
        if let Some(memo) = memo {
            if let Some(hit) = memo.get(sql) {
                return hit;
            }
        }
        let shapes = self.shapes.as_ref().filter(|_| small && !sql.contains('\0'));
        let lexed = shapes.and_then(|_| shape::lex(sql)).filter(shape::Lexed::has_slots);
        if let (Some(shapes), Some(lexed)) = (shapes, &lexed) {
            if let Some(analysis) = shapes.get(lexed.key()).and_then(|s| s.apply(sql, lexed)) {
                self.shape_hits.fetch_add(1, Ordering::Relaxed);
                let analysis = Arc::new(analysis);
                if let Some(memo) = memo.filter(|_| memoize_shaped) {
                    memo.insert(sql.to_owned(), Arc::clone(&analysis));
                }
                return analysis;
            }
        }
        let (analysis, scanned) = analyze_scanned(sql, &self.config);
        let analysis = Arc::new(analysis);
        if let (Some(shapes), Some(seen), Some(lexed), Some(scanned)) = (shapes, &self.seen, lexed, scanned) {
            let hash = xxh3_64(lexed.key());
            if seen.get(&hash).is_none() {
                seen.insert(hash, ());
            } else if let Some(shape) = Shape::build(sql, &lexed, &analysis, &scanned) {
                shapes.insert(lexed.into_key(), Arc::new(shape));
            }
        }
        if let Some(memo) = memo {
            memo.insert(sql.to_owned(), Arc::clone(&analysis));
        }
        analysis
    }

    /// Analyzes raw bytes as they arrive from the wire: text that is not UTF-8 is a parse error,
    /// bytes longer than [`NormalizerConfig::max_analyzed_bytes`] are not analyzed (see
    /// [`Normalizer::analyze`]).
    pub fn analyze_bytes(&self, sql: &[u8]) -> Arc<Analysis> {
        let limit = self.config.max_analyzed_bytes;
        if sql.len() > limit {
            return Arc::new(too_large(sql, limit));
        }
        match std::str::from_utf8(sql) {
            Ok(text) => self.analyze(text),
            Err(_) => {
                let lossy = String::from_utf8_lossy(sql);
                Arc::new(failed(&lossy, Hints::default(), "text is not valid UTF-8"))
            }
        }
    }

    /// How many analyses the memo holds now.
    pub fn memo_len(&self) -> usize {
        self.memo.as_ref().map_or(0, |m| m.len())
    }

    /// How many shapes the shape memo holds now.
    pub fn shape_memo_len(&self) -> usize {
        self.shapes.as_ref().map_or(0, |m| m.len())
    }

    /// How many analyses were answered from the shape memo (without a parse) so far.
    pub fn shape_hits(&self) -> u64 {
        self.shape_hits.load(Ordering::Relaxed)
    }
}

impl Default for Normalizer {
    fn default() -> Self {
        Self::new(NormalizerConfig::default())
    }
}

impl std::fmt::Debug for Normalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Normalizer")
            .field("config", &self.config)
            .field("memo_len", &self.memo_len())
            .field("shape_memo_len", &self.shape_memo_len())
            .field("shape_hits", &self.shape_hits())
            .finish()
    }
}
