//! Redis Cluster topology: key slots (CRC16 with hash tags), the slot-to-primary map from `CLUSTER SLOTS`, and its refresh.

use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::Value;
use tokio::sync::Notify;

use crate::NodeId;

/// Slots in a Redis Cluster.
pub(crate) const SLOTS: usize = 16384;
/// The owner index of a slot no known primary serves.
const NO_NODE: u16 = u16::MAX;
/// The least time between two refreshes, so a burst of errors asks the cluster once.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster hashes keys with.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)])
}

/// The cluster slot of a full Redis key: CRC16 of the key, or of its hash tag (the bytes between
/// the first `{` and the next `}`, if not empty), modulo 16384.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|&b| b == b'}').map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty());
    crc16(tagged.unwrap_or(key)) % SLOTS as u16
}

/// Which primary serves each slot.
#[derive(Debug)]
pub(crate) struct SlotMap {
    nodes: Vec<NodeId>,
    /// Indexes into `nodes`, one per slot; [`NO_NODE`] when unknown. Empty until first loaded.
    owner: Vec<u16>,
}

impl SlotMap {
    pub(crate) fn empty() -> Self {
        Self { nodes: Vec::new(), owner: Vec::new() }
    }

    pub(crate) fn node_of_slot(&self, slot: u16) -> Option<&NodeId> {
        let owner = *self.owner.get(usize::from(slot))?;
        self.nodes.get(usize::from(owner))
    }

    /// The map in a `CLUSTER SLOTS` reply; `None` if the reply is not one.
    /// Entries are `[start, end, [host, port, id, ...], replicas...]`.
    pub(crate) fn from_cluster_slots(reply: &Value) -> Option<Self> {
        let Value::Array(ranges) = reply else { return None };
        let mut map = Self { nodes: Vec::new(), owner: vec![NO_NODE; SLOTS] };
        for range in ranges {
            let Value::Array(fields) = range else { return None };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            let host = match primary.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => return None,
            };
            let Some(Value::Int(port)) = primary.get(1) else { return None };
            // An unknown endpoint ("?" or empty): those slots stay unknown.
            if host.is_empty() || host == "?" {
                continue;
            }
            let node = NodeId::new(format!("{host}:{port}"));
            let index = match map.nodes.iter().position(|n| *n == node) {
                Some(i) => i,
                None => {
                    map.nodes.push(node);
                    map.nodes.len() - 1
                }
            };
            let index = u16::try_from(index).ok().filter(|&i| i != NO_NODE)?;
            let (Ok(start), Ok(end)) = (usize::try_from(*start), usize::try_from(*end)) else { return None };
            for slot in map.owner.iter_mut().take(end.saturating_add(1)).skip(start) {
                *slot = index;
            }
        }
        Some(map)
    }
}

/// The slot map of a cluster storage, kept fresh by a background task.
#[derive(Debug)]
pub(crate) struct Topology {
    map: Arc<RwLock<Arc<SlotMap>>>,
    wake: Arc<Notify>,
}

impl Topology {
    /// Starts the refresh task (inside a tokio runtime): it loads the map at once, then every
    /// `interval`, and soon after [`request_refresh`](Self::request_refresh). It stops when the
    /// topology is dropped.
    pub(crate) fn start(conn: ClusterConnection, interval: Duration, attempt_timeout: Duration) -> Self {
        let map = Arc::new(RwLock::new(Arc::new(SlotMap::empty())));
        let wake = Arc::new(Notify::new());
        tokio::spawn(refresh_loop(Arc::downgrade(&map), wake.clone(), conn, interval, attempt_timeout));
        Self { map, wake }
    }

    /// The primary that serves `slot`, if known.
    pub(crate) fn node_of_slot(&self, slot: u16) -> Option<NodeId> {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        map.node_of_slot(slot).cloned()
    }

    /// Asks the refresh task to reload the map soon (at most once per 100 ms).
    pub(crate) fn request_refresh(&self) {
        self.wake.notify_one();
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Wake the task so it sees the map is gone and ends.
        self.wake.notify_one();
    }
}

async fn refresh_loop(
    map: Weak<RwLock<Arc<SlotMap>>>,
    wake: Arc<Notify>,
    conn: ClusterConnection,
    interval: Duration,
    attempt_timeout: Duration,
) {
    loop {
        let Some(shared) = map.upgrade() else { return };
        let known: Vec<NodeId> = shared.read().unwrap_or_else(PoisonError::into_inner).nodes.clone();
        // Not holding the map while waiting on the network, so a dropped storage ends the task.
        drop(shared);
        if let Some(fresh) = fetch(&conn, &known, attempt_timeout).await {
            let Some(shared) = map.upgrade() else { return };
            *shared.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        }
        tokio::time::sleep(MIN_REFRESH_GAP).await;
        let _ = tokio::time::timeout(interval, wake.notified()).await;
    }
}

/// Asks a random node for `CLUSTER SLOTS`, then each known node in turn, until one answers.
async fn fetch(conn: &ClusterConnection, known: &[NodeId], attempt_timeout: Duration) -> Option<SlotMap> {
    let by_address = known.iter().filter_map(|node| {
        let (host, port) = node.as_str().rsplit_once(':')?;
        Some(SingleNodeRoutingInfo::ByAddress { host: host.to_owned(), port: port.parse().ok()? })
    });
    let routes = [SingleNodeRoutingInfo::Random, SingleNodeRoutingInfo::Random].into_iter().chain(by_address);
    for route in routes {
        let cmd = redis::cmd("CLUSTER").arg("SLOTS").clone();
        let reply = tokio::time::timeout(
            attempt_timeout,
            conn.clone().route_command(cmd, RoutingInfo::SingleNode(route)),
        )
        .await;
        if let Ok(Ok(reply)) = reply {
            if let Some(map) = SlotMap::from_cluster_slots(&reply) {
                return Some(map);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::Slot;

    use super::*;

    #[test]
    fn slots_match_redis_and_honor_hash_tags() {
        // Known values: CRC16/XMODEM("123456789") = 0x31c3; `CLUSTER KEYSLOT foo` = 12182.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"{user1000}.followers"));
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        // An empty tag hashes the whole key; only the first `{` counts.
        assert_eq!(slot_of(b"a{}b"), crc16(b"a{}b") % 16384);
        assert_eq!(slot_of(b"x{{a}}"), slot_of(b"{a"));
        for n in 0..2000u32 {
            let key = format!("strata:l2:{n:032x}{}", if n % 7 == 0 { "{tag}" } else { "" });
            assert_eq!(Slot::new(slot_of(key.as_bytes())), Some(Slot::for_key(&key)), "{key}");
        }
    }

    #[test]
    fn cluster_slots_replies_map_slots_to_primaries() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.into()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.9", 7009),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node("10.0.0.2", 7001)]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node("10.0.0.1", 7000)]),
        ]);
        let map = SlotMap::from_cluster_slots(&reply).expect("a valid reply");
        let at = |slot| map.node_of_slot(slot).map(NodeId::as_str);
        assert_eq!(
            (at(0), at(5460), at(5461), at(10922)),
            (Some("10.0.0.1:7000"), Some("10.0.0.1:7000"), Some("10.0.0.2:7001"), Some("10.0.0.2:7001"))
        );
        assert_eq!(at(16383), Some("10.0.0.1:7000"));
        assert_eq!(map.nodes.len(), 2);
        // Garbage and out-of-range numbers are refused or ignored, never a panic.
        assert!(SlotMap::from_cluster_slots(&Value::Int(3)).is_none());
        assert!(SlotMap::from_cluster_slots(&Value::Array(vec![Value::Int(1)])).is_none());
        let wild = Value::Array(vec![Value::Array(vec![Value::Int(-5), Value::Int(i64::MAX), node("h", 1)])]);
        assert!(SlotMap::from_cluster_slots(&wild).is_none());
        let huge =
            Value::Array(vec![Value::Array(vec![Value::Int(16000), Value::Int(i64::MAX), node("h", 1)])]);
        assert_eq!(
            SlotMap::from_cluster_slots(&huge).expect("clamped").node_of_slot(16383).map(NodeId::as_str),
            Some("h:1")
        );
        assert!(SlotMap::empty().node_of_slot(0).is_none());
    }
}
