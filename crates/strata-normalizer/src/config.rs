//! Configuration: the function allow list, catalog policy, hint TTL cap, analysis size cap and
//! memo sizes.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use crate::error::Error;

/// A function's volatility, as `pg_proc.provolatile` records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Volatility {
    /// `i`: the same arguments always give the same result.
    Immutable,
    /// `s`: the same result within one statement for the same arguments; safe to cache because the
    /// key covers the session settings it may depend on.
    Stable,
    /// `v`: may change between calls or have side effects (including writes).
    Volatile,
}

/// Whether reading a system catalog makes a statement uncacheable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CatalogPolicy {
    /// Statements reading `pg_catalog`, `information_schema` or `pg_*` relations are not cacheable
    /// (catalog changes are not seen as writes).
    Exclude,
    /// Catalog reads are cacheable like any table.
    Allow,
}

/// Builtins known to be immutable, or stable and safe to cache under a key that covers the
/// session's settings. Names are matched after removing a `pg_catalog.` prefix.
const DEFAULT_ALLOWED_FUNCTIONS: &[&str] = &[
    // Aggregates.
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_slope",
    "regr_intercept",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "xmlagg",
    "any_value",
    // Window functions.
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    // Strings.
    "lower",
    "upper",
    "initcap",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "bit_length",
    "substring",
    "substr",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "replace",
    "concat",
    "concat_ws",
    "position",
    "strpos",
    "left",
    "right",
    "lpad",
    "rpad",
    "reverse",
    "repeat",
    "split_part",
    "translate",
    "ascii",
    "chr",
    "format",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "regexp_replace",
    "regexp_match",
    "regexp_matches",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "regexp_like",
    "regexp_count",
    "regexp_substr",
    "regexp_instr",
    "starts_with",
    "md5",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "encode",
    "decode",
    "to_hex",
    "overlay",
    "string_to_array",
    "array_to_string",
    "unaccent",
    "similarity",
    "word_similarity",
    "normalize",
    "casefold",
    // Numbers.
    "abs",
    "round",
    "floor",
    "ceil",
    "ceiling",
    "trunc",
    "mod",
    "power",
    "pow",
    "sqrt",
    "cbrt",
    "exp",
    "ln",
    "log",
    "log10",
    "sign",
    "pi",
    "degrees",
    "radians",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "atan2",
    "div",
    "gcd",
    "lcm",
    "width_bucket",
    "scale",
    "to_number",
    "greatest",
    "least",
    "numeric",
    "float8",
    "int4",
    "int8",
    "text",
    // Dates and times (stable ones depend on TimeZone/DateStyle, which the key's settings cover).
    "date_trunc",
    "date_part",
    "extract",
    "date_bin",
    "to_char",
    "to_date",
    "to_timestamp",
    "make_date",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "make_interval",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "isfinite",
    "timezone",
    // JSON.
    "to_json",
    "to_jsonb",
    "row_to_json",
    "array_to_json",
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "json_object",
    "jsonb_object",
    "json_array_elements",
    "jsonb_array_elements",
    "json_array_elements_text",
    "jsonb_array_elements_text",
    "json_each",
    "jsonb_each",
    "json_each_text",
    "jsonb_each_text",
    "json_object_keys",
    "jsonb_object_keys",
    "json_extract_path",
    "jsonb_extract_path",
    "json_extract_path_text",
    "jsonb_extract_path_text",
    "json_typeof",
    "jsonb_typeof",
    "json_array_length",
    "jsonb_array_length",
    "jsonb_set",
    "jsonb_set_lax",
    "jsonb_insert",
    "jsonb_strip_nulls",
    "json_strip_nulls",
    "jsonb_pretty",
    "jsonb_path_query",
    "jsonb_path_query_array",
    "jsonb_path_query_first",
    "jsonb_path_exists",
    "jsonb_path_match",
    "jsonb_exists",
    "jsonb_contains",
    "json_populate_record",
    "jsonb_populate_record",
    "json_to_record",
    "jsonb_to_record",
    "json_to_recordset",
    "jsonb_to_recordset",
    // Arrays and sets.
    "array_length",
    "array_lower",
    "array_upper",
    "array_ndims",
    "array_dims",
    "array_position",
    "array_positions",
    "array_remove",
    "array_replace",
    "array_append",
    "array_prepend",
    "array_cat",
    "cardinality",
    "unnest",
    "generate_series",
    "generate_subscripts",
    "array_fill",
    "trim_array",
    "array_reverse",
    "array_sort",
    // Full text search.
    "to_tsvector",
    "to_tsquery",
    "plainto_tsquery",
    "phraseto_tsquery",
    "websearch_to_tsquery",
    "ts_rank",
    "ts_rank_cd",
    "ts_headline",
    "setweight",
    "strip",
    "numnode",
    "querytree",
    // Misc.
    "coalesce",
    "nullif",
    "pg_typeof",
    "num_nulls",
    "num_nonnulls",
    "host",
    "family",
    "masklen",
    "network",
    "netmask",
    "broadcast",
    "inet_same_family",
    "lower_inf",
    "upper_inf",
    "isempty",
    "range_merge",
    "int4range",
    "int8range",
    "numrange",
    "tsrange",
    "tstzrange",
    "daterange",
    "point",
    "box",
    "circle",
    "area",
    "st_distance",
    "st_dwithin",
    "st_contains",
    "st_intersects",
    "st_makepoint",
    "st_setsrid",
    "st_astext",
    "st_asgeojson",
];

/// Builtins that are volatile or time dependent but never write tables: a statement calling them
/// is not cacheable, yet its write effect stays known (`nextval` and `setval` write the sequence
/// they name, which the walk records).
pub(crate) const KNOWN_VOLATILE_READONLY: &[&str] = &[
    "random",
    "random_normal",
    "setseed",
    "now",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "age",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v4",
    "uuidv4",
    "uuidv7",
    "nextval",
    "currval",
    "lastval",
    "setval",
    "current_setting",
    "set_config",
    "inet_client_addr",
    "inet_client_port",
    "inet_server_addr",
    "inet_server_port",
    "version",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_user",
    "session_user",
    "current_role",
    "current_query",
    "gen_random_bytes",
    "crypt",
    "gen_salt",
];

/// Whether a bare function name is on the builtin allow list the normalizer ships (not the
/// names a configuration adds: those vouch for a result, not for what a function does).
pub(crate) fn is_shipped_allowed(bare: &str) -> bool {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| DEFAULT_ALLOWED_FUNCTIONS.iter().copied().collect()).contains(bare)
}

/// The default of [`NormalizerConfigBuilder::with_max_analyzed_bytes`]: 256 KiB. PostgreSQL's
/// parse tree, converted to protobuf by `pg_query`, takes over a hundred times the text's size in
/// memory (a 256 KiB `IN` or `VALUES` list takes tens of megabytes and tens of milliseconds to
/// analyze); hand-written and ORM-generated queries are far shorter, and only bulk lists of
/// values reach it.
const DEFAULT_MAX_ANALYZED_BYTES: usize = 256 * 1024;

/// The smallest [`NormalizerConfigBuilder::with_max_analyzed_bytes`] accepted: below it ordinary
/// queries would go unanalyzed.
const MIN_MAX_ANALYZED_BYTES: usize = 1024;

/// Normalizer settings. Build with [`NormalizerConfig::builder`].
#[derive(Clone)]
pub struct NormalizerConfig {
    pub(crate) allowed: HashMap<Box<str>, Volatility>,
    pub(crate) catalogs: CatalogPolicy,
    pub(crate) hint_ttl_cap: Duration,
    pub(crate) memo_capacity: usize,
    pub(crate) memo_max_text_bytes: usize,
    pub(crate) shape_memo_capacity: usize,
    pub(crate) max_analyzed_bytes: usize,
    extra_count: usize,
}

impl NormalizerConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> NormalizerConfigBuilder {
        NormalizerConfigBuilder::default()
    }

    /// A builder starting from this configuration, for example to feed volatility from `pg_proc`
    /// into a running system and build a fresh `Normalizer`.
    pub fn to_builder(&self) -> NormalizerConfigBuilder {
        NormalizerConfigBuilder { config: self.clone(), error: None }
    }

    /// The volatility the configuration assigns to a function name (bare or schema-qualified),
    /// or `None` when the name is not known.
    pub fn function_volatility(&self, name: &str) -> Option<Volatility> {
        if let Some(v) = self.allowed.get(name) {
            return Some(*v);
        }
        let bare = name.strip_prefix("pg_catalog.").unwrap_or(name);
        self.allowed.get(bare).copied()
    }

    /// Whether system catalog reads are excluded from caching.
    pub fn catalog_policy(&self) -> CatalogPolicy {
        self.catalogs
    }

    /// The largest TTL a `ttl=` hint may ask for.
    pub fn hint_ttl_cap(&self) -> Duration {
        self.hint_ttl_cap
    }

    /// How many analyses the memo keeps.
    pub fn memo_capacity(&self) -> usize {
        self.memo_capacity
    }

    /// Texts longer than this are analyzed but not memoized.
    pub fn memo_max_text_bytes(&self) -> usize {
        self.memo_max_text_bytes
    }

    /// How many query shapes (texts with their literal values left out) the shape memo keeps.
    pub fn shape_memo_capacity(&self) -> usize {
        self.shape_memo_capacity
    }

    /// Texts longer than this many bytes are not analyzed (see
    /// [`NormalizerConfigBuilder::with_max_analyzed_bytes`]).
    pub fn max_analyzed_bytes(&self) -> usize {
        self.max_analyzed_bytes
    }
}

impl Default for NormalizerConfig {
    fn default() -> Self {
        let allowed = DEFAULT_ALLOWED_FUNCTIONS.iter().map(|n| (Box::from(*n), Volatility::Stable)).collect();
        Self {
            allowed,
            catalogs: CatalogPolicy::Exclude,
            hint_ttl_cap: Duration::from_secs(3600),
            memo_capacity: 10_000,
            memo_max_text_bytes: 16 * 1024,
            shape_memo_capacity: 4096,
            max_analyzed_bytes: DEFAULT_MAX_ANALYZED_BYTES,
            extra_count: 0,
        }
    }
}

impl fmt::Debug for NormalizerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NormalizerConfig")
            .field("known_functions", &self.allowed.len())
            .field("extra_functions", &self.extra_count)
            .field("catalogs", &self.catalogs)
            .field("hint_ttl_cap", &self.hint_ttl_cap)
            .field("memo_capacity", &self.memo_capacity)
            .field("memo_max_text_bytes", &self.memo_max_text_bytes)
            .field("shape_memo_capacity", &self.shape_memo_capacity)
            .field("max_analyzed_bytes", &self.max_analyzed_bytes)
            .finish()
    }
}

/// Builds a [`NormalizerConfig`]; every setter documents its default.
#[derive(Debug, Default)]
pub struct NormalizerConfigBuilder {
    config: NormalizerConfig,
    error: Option<String>,
}

fn valid_function_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 127
        && name
            .split('.')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '$'))
}

impl NormalizerConfigBuilder {
    /// Allows one more function (name as PostgreSQL resolves it: lower case unless it was quoted,
    /// schema-qualified or bare). Default: the builtin allow list only.
    #[must_use]
    pub fn with_allowed_function(self, name: &str) -> Self {
        self.with_function_volatility(name, Volatility::Stable)
    }

    /// Allows several more functions (see [`NormalizerConfigBuilder::with_allowed_function`]).
    #[must_use]
    pub fn with_allowed_functions<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        for name in names {
            self = self.with_allowed_function(name);
        }
        self
    }

    /// Records a function's volatility, typically read from `pg_proc.provolatile`. Immutable and
    /// stable functions are cacheable; a volatile one makes a statement uncacheable and its write
    /// effect unknown. Overrides the builtin lists. Default: none recorded.
    #[must_use]
    pub fn with_function_volatility(mut self, name: &str, volatility: Volatility) -> Self {
        if !valid_function_name(name) {
            self.error.get_or_insert_with(|| format!("invalid function name {name:?}"));
            return self;
        }
        self.config.extra_count += 1;
        self.config.allowed.insert(Box::from(name), volatility);
        self
    }

    /// Empties the builtin allow list, so only functions added afterwards are cacheable.
    /// Default: the builtin list is used.
    #[must_use]
    pub fn without_builtin_allow_list(mut self) -> Self {
        self.config.allowed.clear();
        self.config.extra_count = 0;
        self
    }

    /// Whether catalog reads may be cached. Default: [`CatalogPolicy::Exclude`].
    #[must_use]
    pub fn with_catalog_policy(mut self, policy: CatalogPolicy) -> Self {
        self.config.catalogs = policy;
        self
    }

    /// The largest TTL a `ttl=` hint may ask for; larger requests are capped. Must be at least one
    /// second and at most 30 days. Default: one hour.
    #[must_use]
    pub fn with_hint_ttl_cap(mut self, cap: Duration) -> Self {
        self.config.hint_ttl_cap = cap;
        self
    }

    /// How many analyses the memo keeps; 0 turns memoization off. At most 10 million.
    /// Default: 10 000.
    #[must_use]
    pub fn with_memo_capacity(mut self, entries: usize) -> Self {
        self.config.memo_capacity = entries;
        self
    }

    /// Texts longer than this many bytes are not memoized, so a few huge statements cannot hold a
    /// lot of memory. Applies to the shape memo too. Must be at least 64. Default: 16 KiB.
    #[must_use]
    pub fn with_memo_max_text_bytes(mut self, bytes: usize) -> Self {
        self.config.memo_max_text_bytes = bytes;
        self
    }

    /// How many query shapes the shape memo keeps: a text that differs from an analyzed one only
    /// in its literal values (numbers, strings) is then analyzed without a parse, with the same
    /// result. 0 turns it off. At most 10 million. Default: 4096.
    #[must_use]
    pub fn with_shape_memo_capacity(mut self, entries: usize) -> Self {
        self.config.shape_memo_capacity = entries;
        self
    }

    /// Texts longer than this many bytes are not analyzed at all: neither scanned nor parsed,
    /// they cost one pass of a hash over the text (for [`Analysis::identity`](crate::Analysis::identity))
    /// and no copy of it. Their [`Analysis`](crate::Analysis) is not cacheable
    /// ([`NotCacheable::TooLarge`](crate::NotCacheable::TooLarge)), writes
    /// [`WriteEffect::Unknown`](crate::WriteEffect::Unknown) (invalidate everything), holds no
    /// statement, and has one session effect,
    /// [`SessionEffect::ServerCode`](crate::SessionEffect::ServerCode), as text that did not
    /// parse has. This bounds the memory and time one text can take: PostgreSQL's parse tree, as
    /// `pg_query` hands it over, takes over a hundred times the text's size. A text of exactly
    /// this many bytes is analyzed. Must be at least 1 KiB. Default: 256 KiB.
    #[must_use]
    pub fn with_max_analyzed_bytes(mut self, bytes: usize) -> Self {
        self.config.max_analyzed_bytes = bytes;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<NormalizerConfig, Error> {
        if let Some(message) = self.error {
            return Err(Error::config(message));
        }
        let c = self.config;
        if c.hint_ttl_cap < Duration::from_secs(1) || c.hint_ttl_cap > Duration::from_secs(30 * 86_400) {
            return Err(Error::config(format!(
                "hint ttl cap must be between 1s and 30 days, got {:?}",
                c.hint_ttl_cap
            )));
        }
        if c.memo_capacity > 10_000_000 {
            return Err(Error::config(format!("memo capacity {} is above 10000000", c.memo_capacity)));
        }
        if c.shape_memo_capacity > 10_000_000 {
            return Err(Error::config(format!(
                "shape memo capacity {} is above 10000000",
                c.shape_memo_capacity
            )));
        }
        if c.memo_max_text_bytes < 64 {
            return Err(Error::config(format!(
                "memo max text bytes must be at least 64, got {}",
                c.memo_max_text_bytes
            )));
        }
        if c.max_analyzed_bytes < MIN_MAX_ANALYZED_BYTES {
            return Err(Error::config(format!(
                "max analyzed bytes must be at least {MIN_MAX_ANALYZED_BYTES}, got {}",
                c.max_analyzed_bytes
            )));
        }
        Ok(c)
    }
}
