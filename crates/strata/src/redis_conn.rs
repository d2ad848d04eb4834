//! One async Redis connection for the state proxies share (table versions, the WAL lease): a
//! single node or a Redis Cluster, connecting lazily and reconnecting by itself.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

/// Where the shared state lives: one Redis node, or a Redis Cluster given by some of its nodes.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum RedisTarget {
    Node(String),
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// The node URLs a subscriber may connect to (any node of a cluster receives every
    /// `PUBLISH`: the cluster bus forwards it).
    pub(crate) fn urls(&self) -> &[String] {
        match self {
            RedisTarget::Node(url) => std::slice::from_ref(url),
            RedisTarget::Cluster(nodes) => nodes,
        }
    }

    /// The target with passwords masked, for logs and `Debug`.
    pub(crate) fn masked(&self) -> String {
        match self {
            RedisTarget::Node(url) => mask_url(url),
            RedisTarget::Cluster(nodes) => {
                format!("cluster [{}]", nodes.iter().map(|n| mask_url(n)).collect::<Vec<_>>().join(", "))
            }
        }
    }

    /// A key that must share a cluster slot with the other keys made from `prefix`: on a
    /// cluster, the prefix becomes the hash tag unless it has one (`{strata:}versions`).
    pub(crate) fn key(&self, prefix: &str, name: &str) -> String {
        match self {
            RedisTarget::Cluster(_) if !has_hash_tag(prefix) => format!("{{{prefix}}}{name}"),
            _ => format!("{prefix}{name}"),
        }
    }
}

/// Whether `key` has a non-empty hash tag (`{...}`), which Redis Cluster hashes instead of the key.
fn has_hash_tag(key: &str) -> bool {
    key.find('{').is_some_and(|open| key[open + 1..].find('}').is_some_and(|close| close > 0))
}

/// A lazily connected, self-reconnecting connection to a [`RedisTarget`]; cheap to clone.
#[derive(Clone)]
pub(crate) enum RedisConn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Opens without connecting: the first command connects. `timeout` bounds connecting and
    /// each response; reconnection waits between `min_delay` and `max_delay`.
    pub(crate) fn open(
        target: &RedisTarget,
        timeout: Duration,
        min_delay: Duration,
        max_delay: Duration,
    ) -> RedisResult<Self> {
        match target {
            RedisTarget::Node(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(min_delay)
                    .set_max_delay(max_delay);
                Ok(RedisConn::Node(ConnectionManager::new_lazy_with_config(client, config)?))
            }
            RedisTarget::Cluster(nodes) => {
                let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
                let client = redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1)
                    .min_retry_wait(millis(min_delay))
                    .max_retry_wait(millis(max_delay))
                    .build()?;
                Ok(RedisConn::Cluster(
                    client.get_pending_async_connection_with_config(redis::cluster::ClusterConfig::new()),
                ))
            }
        }
    }

    /// Runs one command (routed by its first key on a cluster).
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        cmd.query_async(&mut self.clone()).await
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Node(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Node(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Masks the password of a Redis URL (`redis://user:***@host/`, `?password=***`).
pub(crate) fn mask_url(url: &str) -> String {
    let mut masked = url.to_owned();
    if let Some(scheme_end) = url.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end =
            url[authority_start..].find(['/', '?', '#']).map_or(url.len(), |i| authority_start + i);
        if let Some(at) = url[authority_start..authority_end].rfind('@') {
            let userinfo = &url[authority_start..authority_start + at];
            let shown = match userinfo.find(':') {
                Some(colon) => format!("{}:***", &userinfo[..colon]),
                None => "***".to_owned(),
            };
            masked = format!("{}{}{}", &url[..authority_start], shown, &url[authority_start + at..]);
        }
    }
    if let Some(query_start) = masked.find('?') {
        let (head, query) = masked.split_at(query_start + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if matches!(key.to_ascii_lowercase().as_str(), "pass" | "password") => {
                    format!("{key}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        masked = format!("{head}{}", query.join("&"));
    }
    masked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_keys_of_one_prefix_share_a_hash_tag() {
        let cluster = RedisTarget::Cluster(vec!["redis://a:7000".to_owned()]);
        assert_eq!(cluster.key("strata:versions:", "seq"), "{strata:versions:}seq");
        // A prefix with its own tag keeps it.
        assert_eq!(cluster.key("app:{s}:", "seq"), "app:{s}:seq");
        // An empty tag is no tag (Redis hashes the whole key).
        assert_eq!(cluster.key("a{}:", "seq"), "{a{}:}seq");
        let node = RedisTarget::Node("redis://a:6379".to_owned());
        assert_eq!(node.key("strata:versions:", "seq"), "strata:versions:seq");
        assert_eq!(node.urls(), ["redis://a:6379"]);
    }
}
