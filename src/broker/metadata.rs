//! Cluster metadata: topics, their configs, and the placement table saying
//! which node, shard and leader epoch own each partition.
//!
//! The metadata is the state the controller's Raft log builds (see
//! `crate::controller`): every node applies the log on its shard 0 and sends
//! every shard an immutable snapshot. Other shards only read their own.
//! `topics.json` is the format of data directories from before the log; it
//! is read once, to start the log.

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
    /// Kafka's topic UUID, fixed at creation. A `topics.json` written before
    /// ids existed reads as [`NO_TOPIC_ID`] and gets one on load.
    #[serde(default, with = "hex_id")]
    pub id: [u8; 16],
    pub partitions: i32,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    /// The leader epoch of every partition in data directories from before
    /// per-partition state; [`ClusterMeta::put_topic`] moves it into `assignment`.
    #[serde(default, rename = "leader_epoch", skip_serializing)]
    pub legacy_leader_epoch: i32,
    /// Each partition's replicas, leader and ISR, indexed by partition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assignment: Vec<PartitionState>,
}

/// A partition's placement over the cluster, as the controller decided it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartitionState {
    /// Every node holding a replica; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// The node leading, or [`NO_LEADER`] while no replica can.
    pub leader: NodeId,
    /// Bumped on every change of leader.
    pub leader_epoch: i32,
    /// The in-sync replicas (the leader among them).
    pub isr: Vec<NodeId>,
    /// A reassignment under way: replicas being added (in `replicas`, not
    /// yet in sync) and replicas to remove once they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adding: Vec<NodeId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing: Vec<NodeId>,
}

/// `leader` of a partition that no live replica can lead.
pub const NO_LEADER: NodeId = -1;

impl PartitionState {
    pub fn led_by(node: NodeId, replicas: Vec<NodeId>, leader_epoch: i32) -> PartitionState {
        PartitionState {
            isr: replicas.clone(),
            replicas,
            leader: node,
            leader_epoch,
            adding: Vec::new(),
            removing: Vec::new(),
        }
    }

    /// The replicas a reassignment under way moves to (the current ones if none).
    pub fn target_replicas(&self) -> Vec<NodeId> {
        self.replicas.iter().copied().filter(|n| !self.removing.contains(n)).collect()
    }
}

/// A broker as the controller knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BrokerRegistration {
    pub node_id: NodeId,
    /// The endpoint clients are told (advertised host and port).
    pub host: String,
    pub port: i32,
    /// Silent for longer than the session timeout: leads nothing, listed nowhere.
    pub fenced: bool,
}

impl TopicMeta {
    /// `__consumer_offsets`: written, sized and configured by the broker only.
    pub fn is_internal(&self) -> bool {
        self.name == crate::group::OFFSETS_TOPIC
    }

    /// The state of `partition` (which exists).
    pub fn partition(&self, partition: i32) -> &PartitionState {
        &self.assignment[partition as usize]
    }

    pub fn tp(&self, partition: i32) -> TopicPartition {
        TopicPartition { topic_id: self.id, partition }
    }

    /// Partition directory name: `<topic>-<partition>`, as Kafka lays it out.
    pub fn dir_name(&self, partition: i32) -> String {
        format!("{}-{}", self.name, partition)
    }

    /// The name a deleted partition's directory is renamed to before its
    /// files are removed: `<topic>-<partition>.<topic id>-delete`, as Kafka
    /// does. Unique per topic incarnation, and never a live partition's name.
    pub fn deleted_dir_name(&self, partition: i32) -> String {
        deleted_dir_name(&self.name, &partition.to_string(), &self.id)
    }
}

/// Kafka's null topic id ("no id").
pub const NO_TOPIC_ID: [u8; 16] = [0; 16];

/// Ends the name of a directory whose partition was deleted (see
/// [`TopicMeta::deleted_dir_name`]): removed at start if a crash left it.
pub const DELETED_DIR_SUFFIX: &str = "-delete";

/// Whether a data-directory entry named `name` is named as a partition
/// directory, `<valid topic name>-<partition>`. `-delete` directories and
/// the metadata files are not; a probe file like `.iopoll-probe-0` is (topic
/// names may start with '.'), so callers also check it is a directory.
pub fn is_partition_dir_name(name: &str) -> bool {
    match name.rsplit_once('-') {
        Some((topic, partition)) => {
            valid_topic_name(topic) && !partition.is_empty() && partition.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// Longest file name Linux filesystems take (NAME_MAX).
const MAX_FILE_NAME_BYTES: usize = 255;

/// `<topic>-<partition>.<id>-delete`: where a partition directory goes to be
/// removed. As Kafka does, the topic is cut short if the name would pass
/// NAME_MAX (a 249-byte topic name leaves no room for the suffix); the
/// partition and id keep it unique.
pub fn deleted_dir_name(topic: &str, partition: &str, id: &[u8; 16]) -> String {
    let suffix = format!("-{partition}.{}{DELETED_DIR_SUFFIX}", hex(id));
    // Topic names are ASCII: any byte length is a char boundary.
    let kept = topic.len().min(MAX_FILE_NAME_BYTES.saturating_sub(suffix.len()));
    format!("{}{suffix}", &topic[..kept])
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// One immutable snapshot of the cluster's metadata.
#[derive(Clone, Debug)]
pub struct ClusterMeta {
    /// This node (not replicated).
    pub node_id: NodeId,
    pub topics: BTreeMap<String, Arc<TopicMeta>>,
    /// Where each partition is: its leader, and the shard on this node owning
    /// it if this node holds a replica (derived from `topics`).
    pub placement: PlacementTable<TopicPartition>,
    pub brokers: BTreeMap<NodeId, BrokerRegistration>,
    /// The first producer id no shard of any node has been given.
    pub next_producer_id: i64,
    /// Dynamic broker configs by resource: "" for the cluster-wide default,
    /// a node id for one broker (Kafka's names, e.g. `log.retention.ms`).
    pub broker_configs: BTreeMap<String, BTreeMap<String, String>>,
    /// The active controller as this node last knew it (-1: none known; not replicated).
    pub controller: NodeId,
    /// The Raft index of the last record applied (not replicated).
    pub applied_index: u64,
}

#[derive(Serialize, Deserialize)]
struct MetaFile {
    topics: Vec<TopicMeta>,
}

impl ClusterMeta {
    pub fn new(node_id: NodeId, shard_count: usize, topics: Vec<TopicMeta>) -> ClusterMeta {
        let mut meta = ClusterMeta {
            node_id,
            topics: BTreeMap::new(),
            placement: PlacementTable::new(shard_count),
            brokers: BTreeMap::new(),
            next_producer_id: 0,
            broker_configs: BTreeMap::new(),
            controller: -1,
            applied_index: 0,
        };
        for topic in topics {
            meta.put_topic(topic);
        }
        meta
    }

    /// Adds or replaces a topic and places each of its partitions. A topic
    /// without partition states (from `topics.json`) is led by this node.
    pub fn put_topic(&mut self, mut topic: TopicMeta) {
        if let Some(old) = self.topics.get(&topic.name).cloned() {
            for p in topic.partitions..old.partitions {
                self.placement.remove(&old.tp(p));
            }
        }
        let legacy_epoch = topic.legacy_leader_epoch;
        let node = self.node_id;
        topic
            .assignment
            .resize_with(topic.partitions as usize, || PartitionState::led_by(node, vec![node], legacy_epoch));
        let spread = topic_hash(&topic.name);
        for (p, state) in topic.assignment.iter().enumerate() {
            let tp = topic.tp(p as i32);
            self.placement.place_replicas(
                tp,
                state.leader,
                state.leader_epoch,
                &state.replicas,
                spread.wrapping_add(p as u64),
            );
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

    /// Whether this node holds a replica of `tp`.
    pub fn hosts(&self, tp: &TopicPartition) -> bool {
        self.placement(tp).is_some_and(|pl| pl.replicas.contains(&self.node_id))
    }

    /// Brokers clients may use: registered and not fenced.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerRegistration> {
        self.brokers.values().filter(|b| !b.fenced)
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

    /// Reads `topics.json`. Topics stored without an id get a fresh one; the
    /// count of those is returned so that the caller persists them at once
    /// (an id must never change once a client may have seen it).
    pub fn from_json(node_id: NodeId, shard_count: usize, bytes: &[u8]) -> anyhow::Result<(ClusterMeta, usize)> {
        let mut file: MetaFile = serde_json::from_slice(bytes)?;
        let mut assigned = 0;
        for topic in file.topics.iter_mut().filter(|t| t.id == NO_TOPIC_ID) {
            topic.id = random_topic_id();
            assigned += 1;
        }
        Ok((ClusterMeta::new(node_id, shard_count, file.topics), assigned))
    }

    /// The directory names of every partition this node holds a replica of.
    pub fn partition_dir_names(&self) -> std::collections::HashSet<String> {
        self.topics
            .values()
            .flat_map(|t| (0..t.partitions).filter(|p| self.hosts(&t.tp(*p))).map(|p| t.dir_name(p)))
            .collect()
    }
}

/// FNV-1a: a stable spread of topics over shards across restarts.
pub fn topic_hash(name: &str) -> u64 {
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

/// A random (version 4) UUID, as Kafka's `Uuid.randomUuid`: never the null
/// id, and never one whose base64 form starts with '-' (Kafka's tools would
/// read it as a flag).
pub fn random_topic_id() -> [u8; 16] {
    loop {
        let mut id = [0u8; 16];
        // SAFETY: getrandom writes at most id.len() bytes into id.
        let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
        assert_eq!(n, 16, "getrandom failed");
        id[6] = (id[6] & 0x0f) | 0x40;
        id[8] = (id[8] & 0x3f) | 0x80;
        // Base64 digit 62 is '-' in the URL-safe alphabet Kafka prints ids in.
        if id[0] >> 2 != 62 {
            return id;
        }
    }
}

/// Checks topic configs a client sets: known keys, valid values (Kafka's
/// messages), and what holds between them.
pub fn check_user_configs(configs: &BTreeMap<String, String>) -> Result<(), String> {
    for (key, value) in configs {
        super::configs::check_topic_config(key, value)?;
    }
    super::configs::check_compaction_lags(
        configs.get("min.compaction.lag.ms"),
        configs.get("max.compaction.lag.ms"),
        ("min.compaction.lag.ms", "max.compaction.lag.ms"),
    )
}

/// Applies topic configs over the broker defaults. Never fails: values are
/// checked when set, but what is stored may predate a stricter check (or
/// come from a newer node), and a topic must never lose its other configs
/// (say, `cleanup.policy=compact`) over one value. A value that does not
/// parse is skipped with an error log; numbers are brought into range.
pub fn log_config(defaults: &LogConfig, configs: &BTreeMap<String, String>) -> LogConfig {
    let mut log = defaults.clone();
    let mut delete = true;
    for (key, value) in configs {
        if let Err(why) = apply_config(&mut log, &mut delete, key, value.trim()) {
            tracing::error!(key = %key, value = %value, "topic config ignored: {why}");
        }
    }
    if !delete {
        // Compacted only: never deleted by time or size; the cleaner keeps
        // the latest record per key.
        log.retention_ms = -1;
        log.retention_bytes = -1;
    }
    log
}

/// Applies one topic config (spate's own keys; others have no effect).
fn apply_config(log: &mut LogConfig, delete: &mut bool, key: &str, value: &str) -> Result<(), String> {
    let int = || value.parse::<i64>().map_err(|_| "not a number".to_string());
    let size = |n: i64| usize::try_from(n.max(0)).unwrap_or(usize::MAX);
    match key {
        "cleanup.policy" => (log.compact, *delete) = cleanup_policy(value),
        "compression.type" => log.compression = codec_of(value),
        "delete.retention.ms" => log.delete_retention_ms = int()?.max(0),
        "flush.messages" => log.flush_messages = int()?.max(1),
        "flush.ms" => log.flush_ms = int()?.max(0),
        "index.interval.bytes" => log.index_interval_bytes = int()?.max(0) as u64,
        "max.message.bytes" => log.max_message_bytes = size(int()?),
        "message.timestamp.after.max.ms" => log.timestamp_after_max_ms = int()?.max(0),
        "message.timestamp.before.max.ms" => log.timestamp_before_max_ms = int()?.max(0),
        "message.timestamp.type" => log.log_append_time = value == "LogAppendTime",
        "min.cleanable.dirty.ratio" => {
            let ratio = value.parse::<f64>().ok().filter(|r| r.is_finite()).ok_or("not a number")?;
            log.min_cleanable_dirty_ratio = ratio.clamp(0.0, 1.0);
        }
        "min.compaction.lag.ms" => log.min_compaction_lag_ms = int()?.max(0),
        "min.insync.replicas" => log.min_insync_replicas = size(int()?).max(1),
        "retention.bytes" => log.retention_bytes = int()?,
        // Any negative value keeps forever (older spate accepted any).
        "retention.ms" => log.retention_ms = int()?.max(-1),
        "segment.bytes" => {
            let max = crate::storage::log::MAX_SEGMENT_BYTES as i64;
            log.segment_bytes = int()?.clamp(super::configs::MIN_SEGMENT_BYTES, max) as u64;
        }
        "segment.jitter.ms" => log.segment_jitter_ms = int()?.max(0),
        "segment.ms" => log.segment_ms = int()?.max(1),
        _ => {} // accepted without effect (see configs::TOPIC_CONFIGS)
    }
    Ok(())
}

/// compression.type's codec id; None for `producer` (stored as produced).
fn codec_of(compression_type: &str) -> Option<u8> {
    match compression_type {
        "uncompressed" => Some(0),
        "gzip" => Some(1),
        "snappy" => Some(2),
        "lz4" => Some(3),
        "zstd" => Some(4),
        _ => None,
    }
}

/// cleanup.policy as (compact, delete). An empty list, as Kafka allows,
/// neither compacts nor deletes; unknown items are ignored.
fn cleanup_policy(value: &str) -> (bool, bool) {
    let items: Vec<&str> = super::configs::list_items(value).collect();
    (items.contains(&"compact"), items.contains(&"delete"))
}

pub mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(id))
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
        let log = log_config(&defaults, &configs);
        assert_eq!((log.retention_ms, log.log_append_time), (1000, true));
        assert!(check_user_configs(&configs).is_ok());
        configs.insert("retention.ms".to_string(), "soon".to_string());
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        assert!(check_user_configs(&configs).is_err());
        let log = log_config(&defaults, &configs);
        assert!(log.compact && log.log_append_time, "one bad value costs the topic nothing else");
        configs.insert("retention.ms".to_string(), "-2".to_string()); // stored by an older spate
        configs.insert("cleanup.policy".to_string(), "delete".to_string());
        assert_eq!(log_config(&defaults, &configs).retention_ms, -1, "negative: forever");

        let topic = TopicMeta {
            name: "t".into(),
            id: random_topic_id(),
            partitions: 4,
            configs: BTreeMap::new(),
            legacy_leader_epoch: 0,
            assignment: Vec::new(),
        };
        let meta = ClusterMeta::new(0, 2, vec![topic.clone()]);
        let (back, assigned) = ClusterMeta::from_json(0, 2, &meta.to_json()).unwrap();
        assert_eq!(**back.topic("t").unwrap(), **meta.topic("t").unwrap());
        assert_eq!(back.topic("t").unwrap().partition(3), &PartitionState::led_by(0, vec![0], 0));
        assert_eq!(assigned, 0);
        let shards: Vec<usize> = (0..4).map(|p| back.placement(&topic.tp(p)).unwrap().shard).collect();
        assert_eq!(shards.iter().filter(|&&s| s == 0).count(), 2, "partitions spread over both shards");
    }

    #[test]
    fn topics_stored_without_ids_get_ids() {
        let old = br#"{"topics":[{"name":"a","partitions":1},{"name":"b","partitions":2}]}"#;
        let (meta, assigned) = ClusterMeta::from_json(0, 2, old).unwrap();
        assert_eq!(assigned, 2);
        let (a, b) = (meta.topic("a").unwrap().id, meta.topic("b").unwrap().id);
        assert!(a != NO_TOPIC_ID && b != NO_TOPIC_ID && a != b);
        assert_eq!(uuid::Uuid::from_bytes(a).get_version_num(), 4);
        let (again, assigned) = ClusterMeta::from_json(0, 2, &meta.to_json()).unwrap();
        assert_eq!((again.topic("a").unwrap().id, assigned), (a, 0), "ids are kept once stored");
    }

    #[test]
    fn partition_and_deleted_dir_names() {
        let topic = TopicMeta {
            name: "a-b".into(),
            id: [0xab; 16],
            partitions: 1,
            configs: BTreeMap::new(),
            legacy_leader_epoch: 0,
            assignment: Vec::new(),
        };
        assert!(is_partition_dir_name(&topic.dir_name(12)));
        let deleted = topic.deleted_dir_name(12);
        assert_eq!(deleted, format!("a-b-12.{}-delete", "ab".repeat(16)));
        assert!(!is_partition_dir_name(&deleted) && deleted.ends_with(DELETED_DIR_SUFFIX));
        let long = TopicMeta { name: "x".repeat(249), ..topic };
        let (a, b) = (long.deleted_dir_name(0), long.deleted_dir_name(1));
        assert!(a.len() <= 255 && b.len() <= 255 && a != b && a.ends_with(DELETED_DIR_SUFFIX), "{a}");
        for other in ["topics.json", "producer-id-block", "a-", "-3", "bad name-1"] {
            assert!(!is_partition_dir_name(other), "{other}");
        }
    }
}
