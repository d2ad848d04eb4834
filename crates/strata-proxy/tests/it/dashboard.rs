//! What the repository ships next to the proxy: the Grafana dashboard
//! (`deploy/grafana/strata-dashboard.json`) queries only metrics a running proxy exports, and
//! `strata.example.toml` loads, states the built-in defaults, and shows every option.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde::de::{DeserializeOwned, Visitor};
use strata::{L1Config, QueryCacheConfig, TableConfig};
use strata_l2::WarmTierConfig;
use strata_proxy::{Args, FileConfig, PoolFileConfig, SemanticFileConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{admin, connect, dead_port, fresh_database, pg};

/// The bound of every wait in this file: the proxy starts, reads the catalog and connects its
/// WAL stream before it answers from the cache, on a machine running other tests.
const BOUND: Duration = Duration::from_secs(60);

const DASHBOARD: &str = "deploy/grafana/strata-dashboard.json";
const EXAMPLE: &str = "strata.example.toml";

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_metrics_a_running_proxy_exports() {
    let dashboard = Json::parse(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"));
    check_datasources(&dashboard);
    let queries = dashboard.strings_under(&["expr", "query", "definition"]);
    assert!(queries.len() >= 20, "only {} queries found in {DASHBOARD}", queries.len());
    let mut used = BTreeSet::new();
    for query in &queries {
        let names = metric_names(query);
        assert!(!names.is_empty(), "a query of {DASHBOARD} names no strata metric: {query}");
        used.extend(names);
    }

    // A proxy configured as a member of a fleet, so that every metric family exists: the example
    // config, a Redis of its own for L2, the table versions and the WAL lease, a catalog user and
    // the WAL stream.
    let db = "strata_proxy_dashboard";
    fresh_database(db).await;
    admin(db)
        .await
        .batch_execute(
            "CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv VALUES (1, 'a'), (2, 'b')",
        )
        .await
        .expect("table");
    let redis = OwnRedis::start();
    let proxy = ProxyProcess::start(db, &redis.url()).await;
    let c = connect(proxy.port, "postgres", db, None).await.expect("connect through the proxy");

    // A miss, then a hit: lookups bypass until the WAL stream is up, so read until one hits.
    let started = Instant::now();
    loop {
        c.query_one("SELECT v FROM kv WHERE k = 1", &[]).await.expect("read");
        if sample_sum(&proxy.metrics().await, "strata_tier_hits_total") > 0.0 {
            break;
        }
        assert!(started.elapsed() < BOUND, "no read hit within {BOUND:?}; proxy log:\n{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A write, a statement never cached, and a session change that makes the proxy read the
    // session's state back before its next lookup.
    c.execute("UPDATE kv SET v = 'c' WHERE k = 1", &[]).await.expect("write");
    c.simple_query("SELECT random()").await.expect("volatile read");
    c.batch_execute("SET search_path TO public").await.expect("set");
    c.query_one("SELECT v FROM kv WHERE k = 2", &[]).await.expect("read");

    // Some series appear only once something happened (a fill lands in the background): wait
    // a little for every name before failing.
    let started = Instant::now();
    loop {
        let exported = exported_names(&proxy.metrics().await);
        let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
        if missing.is_empty() {
            let unused: Vec<&String> = exported.iter().filter(|n| !used.contains(*n)).collect();
            println!("exported but not on the dashboard: {unused:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{DASHBOARD} queries metrics the proxy does not export: {missing:?}\nexported: {exported:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The dashboard imports into any Grafana: its Prometheus is the `DS_PROMETHEUS` input, and no
/// panel or query names a datasource of the machine it was drawn on.
fn check_datasources(dashboard: &Json) {
    let inputs = dashboard.get("__inputs").map(Json::items).unwrap_or_default();
    assert!(
        inputs.iter().any(|i| i.get("name").and_then(Json::as_str) == Some("DS_PROMETHEUS")
            && i.get("pluginId").and_then(Json::as_str) == Some("prometheus")),
        "{DASHBOARD} has no DS_PROMETHEUS datasource input"
    );
    let mut datasources = Vec::new();
    dashboard.visit(&mut |key, value| {
        if key == "datasource" {
            datasources.push(value.get("uid").and_then(Json::as_str).map(str::to_owned));
        }
    });
    assert!(datasources.len() > 20, "only {} datasource references in {DASHBOARD}", datasources.len());
    for uid in datasources {
        assert!(
            matches!(uid.as_deref(), Some("${DS_PROMETHEUS}" | "-- Grafana --")),
            "a datasource of {DASHBOARD} has uid {uid:?}, not the ${{DS_PROMETHEUS}} input"
        );
    }
}

/// The `strata_*` metric names a PromQL expression reads (`_bucket`, `_sum` and `_count` kept:
/// they are the sample names Prometheus stores, and are checked as such).
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("strata_"))
        .map(str::to_owned)
        .collect()
}

/// The sample names of a Prometheus text exposition.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The sum of every sample of `name` (all label sets).
fn sample_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A redis-server of this test's own: the proxy's L2, table versions and WAL lease use fixed key
/// prefixes, which must not meet those of other tests on the harness's Redis.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let binary = std::env::var("STRATA_TEST_REDIS_SERVER")
            .unwrap_or_else(|_| panic!("STRATA_TEST_REDIS_SERVER is unset: run `cargo xtask test`"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = OwnRedis { child, port };
        let started = Instant::now();
        while !redis.answers_ping() {
            assert!(started.elapsed() < BOUND, "redis-server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let mut reply = [0u8; 7];
        s.set_read_timeout(Some(Duration::from_secs(1))).is_ok()
            && s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `strata-proxy` binary this crate builds, run as a user would, killed when dropped.
struct ProxyProcess {
    child: Child,
    port: u16,
    http: SocketAddr,
    log: PathBuf,
}

impl ProxyProcess {
    async fn start(db: &str, redis: &str) -> ProxyProcess {
        let pg = pg();
        let port = dead_port().await;
        let mut http = dead_port().await;
        while http == port {
            http = dead_port().await;
        }
        let http = SocketAddr::from(([127, 0, 0, 1], http));
        let log = std::env::temp_dir().join(format!("strata-proxy-dashboard-{}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_strata-proxy"));
        // The developer's own STRATA_* settings must not reach it; the harness's are not read.
        for (name, _) in std::env::vars() {
            if name.starts_with("STRATA_") && !name.starts_with("STRATA_TEST_") {
                command.env_remove(name);
            }
        }
        let example = repo_file(EXAMPLE);
        command
            .arg("--config")
            .arg(&example)
            .args(["--upstream", &format!("postgres://{}:{}", pg.host(), pg.port())])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--http", &http.to_string()])
            .args(["--redis", redis, "--log", "warn"])
            .args(["--catalog-user", "postgres", "--catalog-databases", db])
            .args(["--replication-user", "postgres", "--replication-database", db])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = command.spawn().expect("start strata-proxy");
        let mut proxy = ProxyProcess { child, port, http, log };
        let started = Instant::now();
        while get(http, "/health").await.is_none_or(|r| !r.starts_with("HTTP/1.1 200")) {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("strata-proxy exited ({status}) while starting; its log:\n{}", proxy.log());
            }
            assert!(started.elapsed() < BOUND, "strata-proxy did not start; its log:\n{}", proxy.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        proxy
    }

    /// The body of `/metrics`.
    async fn metrics(&self) -> String {
        let response = get(self.http, "/metrics").await.unwrap_or_default();
        assert!(response.starts_with("HTTP/1.1 200"), "GET /metrics: {response}\nlog:\n{}", self.log());
        response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// One HTTP/1.1 GET; `None` when nothing answers.
async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: strata\r\n\r\n").as_bytes()).await.ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await.ok()?.ok()?;
    Some(out)
}

/// A JSON value, read by [`Json::parse`]: enough JSON for the dashboard without a dependency.
#[derive(Debug)]
enum Json {
    Scalar,
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Result<Json, String> {
        let mut reader = JsonReader { text: text.as_bytes(), at: 0 };
        let value = reader.value()?;
        reader.space();
        if reader.at != text.len() {
            return Err(reader.error("text after the value"));
        }
        Ok(value)
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    fn items(&self) -> Vec<&Json> {
        match self {
            Json::Array(items) => items.iter().collect(),
            _ => Vec::new(),
        }
    }

    /// Calls `f` with every member of every object, depth first.
    fn visit(&self, f: &mut impl FnMut(&str, &Json)) {
        match self {
            Json::Object(members) => {
                for (key, value) in members {
                    f(key, value);
                    value.visit(f);
                }
            }
            Json::Array(items) => items.iter().for_each(|i| i.visit(f)),
            Json::Scalar | Json::String(_) => {}
        }
    }

    /// Every string that is the value of a member named one of `keys`, anywhere.
    fn strings_under(&self, keys: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        self.visit(&mut |key, value| {
            if let (true, Some(s)) = (keys.contains(&key), value.as_str()) {
                out.push(s.to_owned());
            }
        });
        out
    }
}

struct JsonReader<'a> {
    text: &'a [u8],
    at: usize,
}

impl JsonReader<'_> {
    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.at)
    }

    fn space(&mut self) {
        while matches!(self.text.get(self.at), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.at += 1;
        }
    }

    fn next_is(&mut self, byte: u8) -> bool {
        self.space();
        let found = self.text.get(self.at) == Some(&byte);
        if found {
            self.at += 1;
        }
        found
    }

    fn value(&mut self) -> Result<Json, String> {
        self.space();
        match self.text.get(self.at) {
            Some(b'{') => {
                self.at += 1;
                let mut members = Vec::new();
                if self.next_is(b'}') {
                    return Ok(Json::Object(members));
                }
                loop {
                    self.space();
                    let key = self.string()?;
                    if !self.next_is(b':') {
                        return Err(self.error("expected ':'"));
                    }
                    members.push((key, self.value()?));
                    if self.next_is(b'}') {
                        return Ok(Json::Object(members));
                    }
                    if !self.next_is(b',') {
                        return Err(self.error("expected ',' or '}'"));
                    }
                }
            }
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                if self.next_is(b']') {
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    if self.next_is(b']') {
                        return Ok(Json::Array(items));
                    }
                    if !self.next_is(b',') {
                        return Err(self.error("expected ',' or ']'"));
                    }
                }
            }
            Some(b'"') => self.string().map(Json::String),
            Some(b't' | b'f' | b'n') => {
                let word = ["true", "false", "null"]
                    .into_iter()
                    .find(|w| self.text[self.at..].starts_with(w.as_bytes()))
                    .ok_or_else(|| self.error("expected a value"))?;
                self.at += word.len();
                Ok(Json::Scalar)
            }
            Some(b'-' | b'0'..=b'9') => {
                let start = self.at;
                while matches!(self.text.get(self.at), Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')) {
                    self.at += 1;
                }
                let number = std::str::from_utf8(&self.text[start..self.at]).unwrap_or_default();
                number.parse::<f64>().map(|_| Json::Scalar).map_err(|_| self.error("bad number"))
            }
            _ => Err(self.error("expected a value")),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if self.text.get(self.at) != Some(&b'"') {
            return Err(self.error("expected a string"));
        }
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let byte = *self.text.get(self.at).ok_or_else(|| self.error("unterminated string"))?;
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let escaped = *self.text.get(self.at).ok_or_else(|| self.error("unterminated escape"))?;
                    self.at += 1;
                    let simple = match escaped {
                        b'"' | b'\\' | b'/' => Some(escaped),
                        b'b' => Some(8),
                        b'f' => Some(12),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        _ => None,
                    };
                    if let Some(b) = simple {
                        out.push(b);
                    } else if escaped == b'u' {
                        let hex =
                            self.text.get(self.at..self.at + 4).ok_or_else(|| self.error("short \\u"))?;
                        let code =
                            std::str::from_utf8(hex).ok().and_then(|h| u32::from_str_radix(h, 16).ok());
                        // Surrogate pairs are not needed by the dashboard: they are refused.
                        let c = code.and_then(char::from_u32).ok_or_else(|| self.error("bad \\u escape"))?;
                        self.at += 4;
                        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    } else {
                        return Err(self.error("bad escape"));
                    }
                }
                b if b < 0x20 => return Err(self.error("control character in a string")),
                b => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("invalid UTF-8 in a string"))
    }
}

#[test]
fn the_example_config_loads_and_states_the_built_in_defaults() {
    let path = repo_file(EXAMPLE);
    let file = FileConfig::load(&path).unwrap_or_else(|e| panic!("{EXAMPLE}: {e}"));
    let table = file.cache.clone().unwrap_or_else(|| panic!("{EXAMPLE} has no [cache] table"));
    let cache = QueryCacheConfig::from_toml(&table.to_string()).unwrap_or_else(|e| panic!("[cache]: {e}"));
    assert_eq!(cache, QueryCacheConfig::default(), "the [cache] table of {EXAMPLE} is not the default");

    // The rest of the file as the binary reads it, against no file at all: the settings of the
    // cache, the invalidation (with and without a catalog user) and the WAL stream. The proxy's
    // own settings are compared in `config.rs`, where the builder's fields can be read.
    let with_file = |args: Args| Args { config: Some(path.clone()), ..args };
    let shown = |args: &Args| {
        let settings =
            args.cache_settings().map(|s| (s.redis, s.enabled, s.custom_settings, s.key_level, s.semantic));
        format!(
            "{:?}\n{:?}\n{:?}",
            settings.map_err(|e| e.to_string()),
            args.invalidation().map_err(|e| e.to_string()),
            args.wal().map_err(|e| e.to_string())
        )
    };
    let users = Args {
        catalog_user: Some("strata_catalog".to_owned()),
        replication_user: Some("strata_wal".to_owned()),
        ..Args::default()
    };
    for args in [Args::default(), users] {
        let builtin = shown(&args);
        assert!(!builtin.contains("Err("), "{builtin}");
        assert_eq!(shown(&with_file(args)), builtin, "{EXAMPLE} does not state the defaults");
    }
}

#[test]
fn the_example_config_shows_every_option() {
    let text = read(EXAMPLE);
    let example = Example::read(&text);
    // Each section's options, from the types themselves: serde hands a derived struct's field
    // names to the deserializer, so a field added to any of these types is missing here until
    // the example shows it (the storage backends are one tagged enum, whose fields serde does
    // not hand over: those are listed by hand).
    let storage: BTreeSet<&str> = ["backend", "capacity_bytes", "url", "key_prefix", "nodes"].into();
    let sections = [
        ("", fields_of::<FileConfig>()),
        ("cache", fields_of::<QueryCacheConfig>()),
        ("cache.l1", fields_of::<L1Config>()),
        ("cache.l2", fields_of::<WarmTierConfig>()),
        ("cache.l2.storage", storage),
        ("cache.tables.*", fields_of::<TableConfig>()),
        ("semantic", fields_of::<SemanticFileConfig>()),
        ("pool", fields_of::<PoolFileConfig>()),
    ];
    let mut problems = Vec::new();
    for (section, fields) in &sections {
        assert!(!fields.is_empty(), "no field names read for [{section}]");
        let shown = example.mentioned(section);
        for missing in fields.iter().filter(|f| !shown.contains(**f)) {
            problems.push(format!("[{section}] {missing} is not shown"));
        }
        for unknown in shown.iter().filter(|k| !fields.contains(k.as_str())) {
            problems.push(format!("[{section}] {unknown} is not an option"));
        }
    }
    for section in example.sections.keys() {
        if !sections.iter().any(|(s, _)| s == section) {
            problems.push(format!("[{section}] is not a section of the config"));
        }
    }
    // Commented-out examples are valid when uncommented: each run of them parses on its own.
    for block in &example.commented {
        let header = if block.section.is_empty() { String::new() } else { format!("[{}]\n", block.section) };
        let doc = format!("{header}{}\n", block.lines.join("\n"));
        let parsed = FileConfig::parse(&doc).map_err(|e| e.to_string()).and_then(|f| match f.cache {
            Some(cache) => {
                QueryCacheConfig::from_toml(&cache.to_string()).map(drop).map_err(|e| e.to_string())
            }
            None => Ok(()),
        });
        if let Err(e) = parsed {
            problems.push(format!("line {}: uncommented, {doc:?} does not load: {e}", block.first_line));
        }
    }
    assert!(problems.is_empty(), "{EXAMPLE}:\n{}", problems.join("\n"));
}

/// The options and sections of the example file, active or commented out.
#[derive(Debug, Default)]
struct Example {
    /// Keys by section (`cache.tables.<name>` sections are merged as `cache.tables.*`).
    sections: BTreeMap<String, BTreeSet<String>>,
    /// Runs of consecutive commented-out `key = value` lines.
    commented: Vec<Block>,
}

#[derive(Debug)]
struct Block {
    section: String,
    first_line: usize,
    lines: Vec<String>,
}

impl Example {
    fn read(text: &str) -> Example {
        let plain = |s: &str, dots: bool| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || (dots && c == '.'))
        };
        let mut example = Example::default();
        let mut section = String::new();
        let mut last_commented = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            let (commented, body) = match line.strip_prefix('#') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            // A commented-out header opens a commented-out section (the per-table examples).
            if let Some((name, _)) = body.strip_prefix('[').and_then(|h| h.split_once(']')) {
                if plain(name, true) {
                    section = name.to_owned();
                    let merged = merged_section(&section);
                    example.sections.entry(merged).or_default();
                    continue;
                }
            }
            let Some(key) = body.split_once('=').map(|(k, _)| k.trim()).filter(|k| plain(k, false)) else {
                continue;
            };
            example.sections.entry(merged_section(&section)).or_default().insert(key.to_owned());
            if commented {
                match example.commented.last_mut() {
                    Some(block) if last_commented.is_some_and(|l| l + 1 == i) && block.section == section => {
                        block.lines.push(body.to_owned());
                    }
                    _ => example.commented.push(Block {
                        section: section.clone(),
                        first_line: i + 1,
                        lines: vec![body.to_owned()],
                    }),
                }
                last_commented = Some(i);
            }
        }
        example
    }

    /// The options a section shows: its keys, and the names of its subsections.
    fn mentioned(&self, section: &str) -> BTreeSet<String> {
        let mut shown = self.sections.get(section).cloned().unwrap_or_default();
        for other in self.sections.keys() {
            let child = match section {
                "" => Some(other.as_str()),
                _ => other.strip_prefix(section).and_then(|rest| rest.strip_prefix('.')),
            };
            if let Some(name) = child.and_then(|c| c.split('.').next()).filter(|n| !n.is_empty()) {
                shown.insert(name.to_owned());
            }
        }
        shown
    }
}

fn merged_section(section: &str) -> String {
    match section.strip_prefix("cache.tables.") {
        Some(_) => "cache.tables.*".to_owned(),
        None => section.to_owned(),
    }
}

/// The field names of a `#[derive(Deserialize)]` struct.
fn fields_of<T: DeserializeOwned>() -> BTreeSet<&'static str> {
    match T::deserialize(FieldNames) {
        Err(FieldsSeen(fields)) => fields.iter().copied().collect(),
        Ok(_) => BTreeSet::new(),
    }
}

/// A deserializer that records the field names serde hands to `deserialize_struct`, then stops.
struct FieldNames;

#[derive(Debug)]
struct FieldsSeen(&'static [&'static str]);

impl fmt::Display for FieldsSeen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fields {:?}", self.0)
    }
}

impl std::error::Error for FieldsSeen {}

impl serde::de::Error for FieldsSeen {
    fn custom<T: fmt::Display>(_: T) -> Self {
        FieldsSeen(&[])
    }
}

impl<'de> serde::Deserializer<'de> for FieldNames {
    type Error = FieldsSeen;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, FieldsSeen> {
        Err(FieldsSeen(&[]))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, FieldsSeen> {
        Err(FieldsSeen(fields))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}
