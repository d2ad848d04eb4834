//! Command-line arguments of the `strata-proxy` binary, merged over the TOML config file.

use std::{path::PathBuf, time::Duration};

use clap::Parser;

use crate::{
    config::{FileConfig, ProxyBuilder, DEFAULT_UPSTREAM},
    error::Error,
    server::Proxy,
    strata_cache::CacheSettings,
};

/// A caching PostgreSQL proxy: point clients at it instead of PostgreSQL.
///
/// Each option can also come from its environment variable or from the config file; the command
/// line wins over the environment, which wins over the file.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "strata-proxy", version, about)]
pub struct Args {
    /// Upstream PostgreSQL server (user, database and password come from each client)
    /// [default: postgres://127.0.0.1:5432].
    #[arg(long, env = "STRATA_UPSTREAM")]
    pub upstream: Option<String>,
    /// Address clients connect to [default: 127.0.0.1:6432].
    #[arg(long, env = "STRATA_LISTEN")]
    pub listen: Option<String>,
    /// Address serving /health and /metrics; "off" disables it [default: 127.0.0.1:9187].
    #[arg(long, env = "STRATA_HTTP")]
    pub http: Option<String>,
    /// Redis URL shared by every proxy of a deployment (redis://host:port/): the L2 cache and the
    /// table versions live there, so a write through one proxy invalidates all of them. Without
    /// it the cache uses its embedded in-memory L2 and versions local to this process.
    #[arg(long, env = "STRATA_REDIS")]
    pub redis: Option<String>,
    /// "off" turns caching off: the proxy only relays [default: on].
    #[arg(long, env = "STRATA_CACHE")]
    pub cache: Option<String>,
    /// TOML config file (see `FileConfig`).
    #[arg(long, env = "STRATA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log filter, e.g. "info" or "strata_proxy=debug" [default: info].
    #[arg(long, env = "STRATA_LOG")]
    pub log: Option<String>,
}

impl Args {
    /// The query cache's settings: the config file's `[cache]` table, the Redis URL, on or off.
    pub fn cache_settings(&self) -> Result<CacheSettings, Error> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let enabled = match self.cache.as_deref() {
            None | Some("on" | "true" | "1") => true,
            Some("off" | "false" | "0") => false,
            Some(other) => return Err(Error::config(format!("--cache takes on or off, not {other:?}"))),
        };
        Ok(CacheSettings { table: file.cache, redis: self.redis.clone().or(file.redis), enabled })
    }

    /// Reads the config file (if any) and merges it under the arguments.
    pub fn resolve(&self) -> Result<(ProxyBuilder, String), Error> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let mut b = Proxy::builder();
        b = b.with_upstream(
            self.upstream.clone().or(file.upstream).unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned()),
        );
        if let Some(l) = self.listen.clone().or(file.listen) {
            b = b.with_listen(l);
        }
        match self.http.clone().or(file.http).as_deref() {
            Some("" | "off" | "none") => b = b.without_http(),
            Some(h) => b = b.with_http(h),
            None => {}
        }
        if let Some(r) = self.redis.clone().or(file.redis) {
            b = b.with_redis(r);
        }
        if let Some(n) = file.max_message_bytes {
            b = b.with_max_message_bytes(n);
        }
        if let Some(n) = file.max_result_bytes {
            b = b.with_max_result_bytes(n);
        }
        if let Some(ms) = file.connect_timeout_ms {
            b = b.with_connect_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = file.shutdown_grace_ms {
            b = b.with_shutdown_grace(Duration::from_millis(ms));
        }
        let log = self.log.clone().or(file.log).unwrap_or_else(|| "info".to_owned());
        Ok((b, log))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn arguments_override_the_file_and_defaults_fill_the_rest() {
        let path = std::env::temp_dir().join(format!("strata-proxy-cli-{}.toml", std::process::id()));
        let written = std::fs::write(
            &path,
            "upstream = \"postgres://db.internal:5433\"\nlisten = \"127.0.0.1:7000\"\nhttp = \"off\"\nlog = \"debug\"\n",
        );
        assert!(written.is_ok());
        let args = Args::try_parse_from([
            "strata-proxy",
            "--config",
            &path.to_string_lossy(),
            "--listen",
            "0.0.0.0:6543",
        ]);
        let (builder, log) = args
            .map_err(|e| e.to_string())
            .and_then(|a| a.resolve().map_err(|e| e.to_string()))
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_file(&path);
        let shown = format!("{builder:?}");
        assert!(shown.contains("upstream: Some(\"postgres://db.internal:5433\")"), "{shown}");
        assert!(shown.contains("listen: \"0.0.0.0:6543\""), "{shown}");
        assert!(shown.contains("http: None"), "{shown}");
        assert_eq!(log, "debug");

        let (builder, log) = Args::default().resolve().unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{builder:?}");
        assert!(shown.contains("upstream: Some(\"postgres://127.0.0.1:5432\")"), "{shown}");
        assert!(shown.contains("listen: \"127.0.0.1:6432\""), "{shown}");
        assert_eq!(log, "info");
        assert!(Args { config: Some("/nonexistent/strata.toml".into()), ..Args::default() }
            .resolve()
            .is_err());
    }
}
