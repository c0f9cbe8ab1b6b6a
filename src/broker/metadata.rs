//! Cluster metadata: topics, their configs, and the placement table saying
//! which node, shard and leader epoch own each partition.
//!
//! Shard 0 acts as the controller: it alone changes metadata, persists it to
//! `<data_dir>/topics.json`, and sends every shard an immutable snapshot.
//! Other shards only read their own snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shards::{NodeId, Placement, PlacementTable};

use crate::storage::LogConfig;

/// A partition, keyed by topic id so that lookups do not clone names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic_id: [u8; 16],
    pub partition: i32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TopicMeta {
    pub name: String,
    #[serde(with = "hex_id")]
    pub id: [u8; 16],
    pub partitions: i32,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    #[serde(default)]
    pub leader_epoch: i32,
}

impl TopicMeta {
    pub fn tp(&self, partition: i32) -> TopicPartition {
        TopicPartition { topic_id: self.id, partition }
    }

    /// Partition directory name: `<topic>-<partition>`, as Kafka lays it out.
    pub fn dir_name(&self, partition: i32) -> String {
        format!("{}-{}", self.name, partition)
    }
}

/// One immutable snapshot of the cluster's metadata.
#[derive(Clone, Debug)]
pub struct ClusterMeta {
    pub node_id: NodeId,
    pub topics: BTreeMap<String, Arc<TopicMeta>>,
    pub placement: PlacementTable<TopicPartition>,
}

#[derive(Serialize, Deserialize)]
struct MetaFile {
    topics: Vec<TopicMeta>,
}

impl ClusterMeta {
    pub fn new(node_id: NodeId, shard_count: usize, topics: Vec<TopicMeta>) -> ClusterMeta {
        let mut meta = ClusterMeta { node_id, topics: BTreeMap::new(), placement: PlacementTable::new(shard_count) };
        for topic in topics {
            meta.put_topic(topic);
        }
        meta
    }

    /// Adds or replaces a topic and places each of its partitions.
    pub fn put_topic(&mut self, topic: TopicMeta) {
        let spread = topic_hash(&topic.name);
        for p in 0..topic.partitions {
            self.placement.place(topic.tp(p), self.node_id, topic.leader_epoch, spread.wrapping_add(p as u64));
        }
        self.topics.insert(topic.name.clone(), Arc::new(topic));
    }

    pub fn remove_topic(&mut self, name: &str) -> Option<Arc<TopicMeta>> {
        let topic = self.topics.remove(name)?;
        for p in 0..topic.partitions {
            self.placement.remove(&topic.tp(p));
        }
        Some(topic)
    }

    pub fn topic(&self, name: &str) -> Option<&Arc<TopicMeta>> {
        self.topics.get(name)
    }

    pub fn placement(&self, tp: &TopicPartition) -> Option<&Placement> {
        self.placement.get(tp)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let file = MetaFile { topics: self.topics.values().map(|t| (**t).clone()).collect() };
        serde_json::to_vec_pretty(&file).expect("metadata serialises")
    }

    pub fn from_json(node_id: NodeId, shard_count: usize, bytes: &[u8]) -> anyhow::Result<ClusterMeta> {
        let file: MetaFile = serde_json::from_slice(bytes)?;
        Ok(ClusterMeta::new(node_id, shard_count, file.topics))
    }
}

/// FNV-1a: a stable spread of topics over shards across restarts.
fn topic_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// Kafka's rule: 1 to 249 of `[a-zA-Z0-9._-]`, and not "." or "..".
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

pub fn random_topic_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    // SAFETY: getrandom writes at most id.len() bytes into id.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    assert_eq!(n, 16, "getrandom failed");
    id
}

/// The topic configs spate understands, with their broker-wide defaults.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "cleanup.policy",
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "max.message.bytes",
    "message.timestamp.type",
    "index.interval.bytes",
];

/// The default value of a topic config, as DescribeConfigs shows it.
pub fn default_config_value(key: &str, defaults: &LogConfig) -> Option<String> {
    Some(match key {
        "cleanup.policy" => "delete".into(),
        "retention.ms" => defaults.retention_ms.to_string(),
        "retention.bytes" => defaults.retention_bytes.to_string(),
        "segment.bytes" => defaults.segment_bytes.to_string(),
        "segment.ms" => defaults.segment_ms.to_string(),
        "max.message.bytes" => defaults.max_message_bytes.to_string(),
        "message.timestamp.type" => "CreateTime".into(),
        "index.interval.bytes" => defaults.index_interval_bytes.to_string(),
        _ => return None,
    })
}

/// Applies topic configs over the broker defaults; the error names the bad key.
pub fn log_config(defaults: &LogConfig, configs: &BTreeMap<String, String>) -> Result<LogConfig, String> {
    let mut log = defaults.clone();
    for (key, value) in configs {
        let bad = || format!("invalid value {value:?} for {key}");
        let int = || value.parse::<i64>().map_err(|_| bad());
        match key.as_str() {
            "cleanup.policy" if value == "delete" => {}
            "cleanup.policy" => return Err(format!("cleanup.policy {value:?} is not supported (only \"delete\")")),
            "retention.ms" => log.retention_ms = int()?,
            "retention.bytes" => log.retention_bytes = int()?,
            "segment.bytes" if (1 << 14..=crate::storage::log::MAX_SEGMENT_BYTES as i64).contains(&int()?) => {
                log.segment_bytes = int()? as u64
            }
            "segment.ms" if int()? >= 1 => log.segment_ms = int()?,
            "max.message.bytes" if int()? >= 0 => log.max_message_bytes = int()? as usize,
            "index.interval.bytes" if int()? >= 0 => log.index_interval_bytes = int()? as u64,
            "message.timestamp.type" if value == "CreateTime" || value == "LogAppendTime" => {
                log.log_append_time = value == "LogAppendTime"
            }
            k if TOPIC_CONFIG_KEYS.contains(&k) => return Err(bad()),
            _ => return Err(format!("unknown topic config {key:?}")),
        }
    }
    Ok(log)
}

mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        let text = String::deserialize(d)?;
        let mut id = [0u8; 16];
        if text.len() != 32 {
            return Err(serde::de::Error::custom("topic id is 32 hex digits"));
        }
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(serde::de::Error::custom)?;
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_configs_and_round_trip() {
        assert!(valid_topic_name("orders.v1_x-2"));
        assert!(!valid_topic_name("bad name") && !valid_topic_name("..") && !valid_topic_name(&"a".repeat(250)));
        let defaults = LogConfig::default();
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_string(), "1000".to_string());
        configs.insert("message.timestamp.type".to_string(), "LogAppendTime".to_string());
        let log = log_config(&defaults, &configs).unwrap();
        assert_eq!((log.retention_ms, log.log_append_time), (1000, true));
        configs.insert("retention.ms".to_string(), "soon".to_string());
        assert!(log_config(&defaults, &configs).is_err());

        let topic = TopicMeta {
            name: "t".into(),
            id: random_topic_id(),
            partitions: 4,
            configs: BTreeMap::new(),
            leader_epoch: 0,
        };
        let meta = ClusterMeta::new(0, 2, vec![topic.clone()]);
        let back = ClusterMeta::from_json(0, 2, &meta.to_json()).unwrap();
        assert_eq!(**back.topic("t").unwrap(), topic);
        let shards: Vec<usize> = (0..4).map(|p| back.placement(&topic.tp(p)).unwrap().shard).collect();
        assert_eq!(shards.iter().filter(|&&s| s == 0).count(), 2, "partitions spread over both shards");
    }
}
