//! Kafka's topic and broker configs as spate knows them: every standard
//! topic config (Kafka 4.0's list) with its type, validation and default;
//! the broker settings under their Kafka names; and where a value comes
//! from. A topic without its own value takes the broker's: this node's
//! dynamic config, else the cluster-wide dynamic default (resource ""),
//! else the static setting (file, environment, `--set`), else Kafka's
//! default. Dynamic broker configs live in the metadata log, so every node
//! applies a change at once and a restart keeps it.

use std::collections::BTreeMap;

use crate::config::Config;

/// DescribeConfigs' config types (v3+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

/// DescribeConfigs' config sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Topic = 1,
    DynamicBroker = 2,
    DynamicDefaultBroker = 3,
    StaticBroker = 4,
    Default = 5,
}

/// What values a config accepts (Kafka's validators).
#[derive(Debug, Clone, Copy)]
pub enum Check {
    Any,
    AtLeast(i64),
    Between(i64, i64),
    Ratio,
    OneOf(&'static [&'static str]),
    ListOf(&'static [&'static str]),
    /// -1, or 1..=9.
    GzipLevel,
    /// `*`, or `partition:broker` pairs.
    ThrottledReplicas,
}

/// What spate does with a topic config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Honoured,
    /// Accepted, validated, stored and described, without effect (why).
    NoEffect(&'static str),
}

pub struct TopicConfig {
    pub name: &'static str,
    pub kind: Kind,
    pub check: Check,
    /// The broker config it falls back to (dynamically alterable).
    pub broker_key: Option<&'static str>,
    pub effect: Effect,
}

const fn topic(
    name: &'static str,
    kind: Kind,
    check: Check,
    broker_key: Option<&'static str>,
    effect: Effect,
) -> TopicConfig {
    TopicConfig { name, kind, check, broker_key, effect }
}

use Effect::{Honoured, NoEffect};
use Kind::{Boolean, Double, Int, List, Long};

const COMPRESSION_TYPES: &[&str] = &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"];
const NO_TIERED_STORAGE: Effect = NoEffect("spate has no tiered storage");

/// Every topic config of Kafka 4.0, in Kafka's documentation order.
pub const TOPIC_CONFIGS: &[TopicConfig] = &[
    topic("cleanup.policy", List, Check::ListOf(&["compact", "delete"]), Some("log.cleanup.policy"), Honoured),
    topic(
        "compression.gzip.level",
        Int,
        Check::GzipLevel,
        Some("compression.gzip.level"),
        NoEffect("recompression uses each codec's default level"),
    ),
    topic(
        "compression.lz4.level",
        Int,
        Check::Between(1, 17),
        Some("compression.lz4.level"),
        NoEffect("recompression uses each codec's default level"),
    ),
    topic("compression.type", Kind::String, Check::OneOf(COMPRESSION_TYPES), Some("compression.type"), Honoured),
    topic(
        "compression.zstd.level",
        Int,
        Check::Between(-131072, 22),
        Some("compression.zstd.level"),
        NoEffect("recompression uses each codec's default level"),
    ),
    topic("delete.retention.ms", Long, Check::AtLeast(0), Some("log.cleaner.delete.retention.ms"), Honoured),
    topic(
        "file.delete.delay.ms",
        Long,
        Check::AtLeast(0),
        Some("log.segment.delete.delay.ms"),
        NoEffect("removed segments are deleted at once (readers hold their own descriptors)"),
    ),
    topic("flush.messages", Long, Check::AtLeast(1), Some("log.flush.interval.messages"), Honoured),
    topic("flush.ms", Long, Check::AtLeast(0), Some("log.flush.interval.ms"), Honoured),
    topic(
        "follower.replication.throttled.replicas",
        List,
        Check::ThrottledReplicas,
        None,
        NoEffect("replication is not throttled"),
    ),
    topic("index.interval.bytes", Int, Check::AtLeast(0), Some("log.index.interval.bytes"), Honoured),
    topic(
        "leader.replication.throttled.replicas",
        List,
        Check::ThrottledReplicas,
        None,
        NoEffect("replication is not throttled"),
    ),
    topic("local.retention.bytes", Long, Check::AtLeast(-2), Some("log.local.retention.bytes"), NO_TIERED_STORAGE),
    topic("local.retention.ms", Long, Check::AtLeast(-2), Some("log.local.retention.ms"), NO_TIERED_STORAGE),
    topic(
        "max.compaction.lag.ms",
        Long,
        Check::AtLeast(1),
        Some("log.cleaner.max.compaction.lag.ms"),
        NoEffect("the cleaner runs by dirty ratio only"),
    ),
    topic("max.message.bytes", Int, Check::AtLeast(0), Some("message.max.bytes"), Honoured),
    topic(
        "message.timestamp.after.max.ms",
        Long,
        Check::AtLeast(0),
        Some("log.message.timestamp.after.max.ms"),
        Honoured,
    ),
    topic(
        "message.timestamp.before.max.ms",
        Long,
        Check::AtLeast(0),
        Some("log.message.timestamp.before.max.ms"),
        Honoured,
    ),
    topic(
        "message.timestamp.type",
        Kind::String,
        Check::OneOf(&["CreateTime", "LogAppendTime"]),
        Some("log.message.timestamp.type"),
        Honoured,
    ),
    topic("min.cleanable.dirty.ratio", Double, Check::Ratio, Some("log.cleaner.min.cleanable.ratio"), Honoured),
    topic("min.compaction.lag.ms", Long, Check::AtLeast(0), Some("log.cleaner.min.compaction.lag.ms"), Honoured),
    topic("min.insync.replicas", Int, Check::AtLeast(1), Some("min.insync.replicas"), Honoured),
    topic(
        "preallocate",
        Boolean,
        Check::Any,
        Some("log.preallocate"),
        NoEffect("busy segments always grow ahead in preallocate_step_bytes steps"),
    ),
    topic("remote.log.copy.disable", Boolean, Check::Any, None, NO_TIERED_STORAGE),
    topic("remote.log.delete.on.disable", Boolean, Check::Any, None, NO_TIERED_STORAGE),
    topic("remote.storage.enable", Boolean, Check::Any, None, NO_TIERED_STORAGE),
    topic("retention.bytes", Long, Check::Any, Some("log.retention.bytes"), Honoured),
    topic("retention.ms", Long, Check::AtLeast(-1), Some("log.retention.ms"), Honoured),
    topic(
        "segment.bytes",
        Int,
        Check::Between(MIN_SEGMENT_BYTES, crate::storage::log::MAX_SEGMENT_BYTES as i64),
        Some("log.segment.bytes"),
        Honoured,
    ),
    topic(
        "segment.index.bytes",
        Int,
        Check::AtLeast(4),
        Some("log.index.size.max.bytes"),
        NoEffect("indexes are sparse and sized by index.interval.bytes"),
    ),
    topic("segment.jitter.ms", Long, Check::AtLeast(0), Some("log.roll.jitter.ms"), Honoured),
    topic("segment.ms", Long, Check::AtLeast(1), Some("log.roll.ms"), Honoured),
    topic("unclean.leader.election.enable", Boolean, Check::Any, Some("unclean.leader.election.enable"), Honoured),
];

/// spate's smallest segment (Kafka allows 14 bytes; spate's index and
/// write buffers want at least this).
pub const MIN_SEGMENT_BYTES: i64 = 1 << 14;

pub fn topic_config(name: &str) -> Option<&'static TopicConfig> {
    TOPIC_CONFIGS.iter().find(|c| c.name == name)
}

/// The topic config a dynamic broker key stands for.
pub fn topic_config_of_broker_key(broker_key: &str) -> Option<&'static TopicConfig> {
    TOPIC_CONFIGS.iter().find(|c| c.broker_key == Some(broker_key))
}

/// Kafka's ConfigException text for `value` of `key`, if it is invalid.
pub fn check_value(key: &str, kind: Kind, check: Check, value: &str) -> Result<(), String> {
    let invalid = |why: &str| Err(format!("Invalid value {value} for configuration {key}: {why}"));
    let number = match kind {
        Kind::Boolean => {
            // Kafka parses booleans ignoring case.
            let value = value.trim();
            return if value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false") {
                Ok(())
            } else {
                invalid("Expected value to be either true or false")
            };
        }
        Kind::Int => match value.trim().parse::<i32>() {
            Ok(n) => Some(n as f64),
            Err(_) => return invalid("Not a number of type INT"),
        },
        Kind::Long => match value.trim().parse::<i64>() {
            Ok(n) => Some(n as f64),
            Err(_) => return invalid("Not a number of type LONG"),
        },
        Kind::Double => match value.trim().parse::<f64>() {
            Ok(n) if n.is_finite() => Some(n),
            _ => return invalid("Not a number of type DOUBLE"),
        },
        Kind::String | Kind::List => None,
    };
    match (check, number) {
        (Check::AtLeast(min), Some(n)) if n < min as f64 => invalid(&format!("Value must be at least {min}")),
        (Check::Between(min, _), Some(n)) if n < min as f64 => invalid(&format!("Value must be at least {min}")),
        (Check::Between(_, max), Some(n)) if n > max as f64 => invalid(&format!("Value must be no more than {max}")),
        (Check::Ratio, Some(n)) if n < 0.0 => invalid("Value must be at least 0"),
        (Check::Ratio, Some(n)) if n > 1.0 => invalid("Value must be no more than 1"),
        (Check::GzipLevel, Some(n)) if n != -1.0 && !(1.0..=9.0).contains(&n) => {
            invalid("Value must be between 1 and 9 or equal to -1")
        }
        (Check::OneOf(allowed), _) if !allowed.contains(&value) => {
            invalid(&format!("String must be one of: {}", allowed.join(", ")))
        }
        (Check::ListOf(allowed), _) => match list_items(value).find(|item| !allowed.contains(item)) {
            Some(_) => invalid(&format!("String must be one of: {}", allowed.join(", "))),
            None => Ok(()),
        },
        (Check::ThrottledReplicas, _) if value.trim() != "*" && !list_items(value).all(is_throttled_replica) => {
            invalid("must be the literal '*' or a list of replicas in the following format: [partitionId]:[brokerId],[partitionId]:[brokerId],...")
        }
        _ => Ok(()),
    }
}

fn is_throttled_replica(item: &str) -> bool {
    item.split_once(':').is_some_and(|(p, b)| p.parse::<u32>().is_ok() && b.parse::<u32>().is_ok())
}

/// A list config's items (comma-separated, blanks dropped).
pub fn list_items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// min <= max of the compaction lags, where both are set (`names`: the
/// keys, for Kafka's message).
pub fn check_compaction_lags(min: Option<&String>, max: Option<&String>, names: (&str, &str)) -> Result<(), String> {
    let parse = |v: Option<&String>| v.and_then(|v| v.trim().parse::<i64>().ok());
    match (parse(min), parse(max)) {
        (Some(min), Some(max)) if min > max => {
            Err(format!("conflict topic config setting {} ({min}) > {} ({max})", names.0, names.1))
        }
        _ => Ok(()),
    }
}

/// Checks one topic config a client sets: known key, valid value.
pub fn check_topic_config(key: &str, value: &str) -> Result<(), String> {
    let config = topic_config(key).ok_or_else(|| format!("Unknown topic config name: {key}"))?;
    check_value(key, config.kind, config.check, value)?;
    if key == "remote.storage.enable" && value == "true" {
        return Err("Tiered Storage functionality is disabled in the broker. Topic cannot be configured with remote log storage.".into());
    }
    Ok(())
}

/// The static value (file, environment, `--set`, or default) of a broker
/// key that a topic config falls back to.
pub fn static_topic_default(broker_key: &str, config: &Config) -> String {
    let max = i64::MAX.to_string();
    match broker_key {
        "log.cleanup.policy" => "delete".into(),
        "compression.gzip.level" => "-1".into(),
        "compression.lz4.level" => "9".into(),
        "compression.type" => "producer".into(),
        "compression.zstd.level" => "3".into(),
        "log.cleaner.delete.retention.ms" => config.log_cleaner_delete_retention_ms.to_string(),
        "log.segment.delete.delay.ms" => "60000".into(),
        "log.flush.interval.messages" => max,
        // spate's periodic sync of acks=0/1 data (0: never).
        "log.flush.interval.ms" if config.flush_interval_ms == 0 => max,
        "log.flush.interval.ms" => config.flush_interval_ms.to_string(),
        "log.index.interval.bytes" => config.index_interval_bytes.to_string(),
        "log.local.retention.bytes" | "log.local.retention.ms" => "-2".into(),
        "log.cleaner.max.compaction.lag.ms" => max,
        "message.max.bytes" => config.max_message_bytes.to_string(),
        // Kafka 4.0's default: no timestamps more than an hour ahead.
        "log.message.timestamp.after.max.ms" => "3600000".into(),
        "log.message.timestamp.before.max.ms" => max,
        "log.message.timestamp.type" => "CreateTime".into(),
        "log.cleaner.min.cleanable.ratio" => config.log_cleaner_min_cleanable_ratio.to_string(),
        "log.cleaner.min.compaction.lag.ms" => config.log_cleaner_min_compaction_lag_ms.to_string(),
        "min.insync.replicas" => config.min_insync_replicas.to_string(),
        "log.preallocate" => "false".into(),
        "log.retention.bytes" => config.retention_bytes.to_string(),
        "log.retention.ms" => config.retention_ms.to_string(),
        "log.segment.bytes" => config.segment_bytes.to_string(),
        "log.index.size.max.bytes" => "10485760".into(),
        "log.roll.jitter.ms" => "0".into(),
        "log.roll.ms" => config.segment_ms.to_string(),
        "unclean.leader.election.enable" => "false".into(),
        other => {
            // Only dynamic keys reach here (callers check first); never a
            // panic on a client's key if one slips through.
            debug_assert!(false, "{other} is not a topic config's broker key");
            String::new()
        }
    }
}

/// A value with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub value: String,
    pub source: Source,
}

/// The broker's value of a dynamic broker key on node `node_id`, with its source.
pub fn resolve_broker_key(
    broker_key: &str,
    config: &Config,
    broker_configs: &BTreeMap<String, BTreeMap<String, String>>,
) -> Resolved {
    let node = config.node_id.to_string();
    let dynamic = |resource: &str| broker_configs.get(resource).and_then(|c| c.get(broker_key)).cloned();
    if let Some(value) = dynamic(&node) {
        return Resolved { value, source: Source::DynamicBroker };
    }
    if let Some(value) = dynamic("") {
        return Resolved { value, source: Source::DynamicDefaultBroker };
    }
    let value = static_topic_default(broker_key, config);
    let source = if value == static_topic_default(broker_key, &Config::default()) {
        Source::Default
    } else {
        Source::StaticBroker
    };
    Resolved { value, source }
}

/// A topic config's value for a topic with `overrides`, with its source.
pub fn resolve_topic_config(
    def: &TopicConfig,
    overrides: &BTreeMap<String, String>,
    config: &Config,
    broker_configs: &BTreeMap<String, BTreeMap<String, String>>,
) -> Resolved {
    if let Some(value) = overrides.get(def.name) {
        return Resolved { value: value.clone(), source: Source::Topic };
    }
    match def.broker_key {
        Some(key) => resolve_broker_key(key, config, broker_configs),
        None => Resolved { value: kafka_default_without_broker_key(def.name).into(), source: Source::Default },
    }
}

fn kafka_default_without_broker_key(name: &str) -> &'static str {
    match name {
        "follower.replication.throttled.replicas" | "leader.replication.throttled.replicas" => "",
        _ => "false",
    }
}

/// The dynamic broker values that topics without their own take, as topic
/// configs: laid under a topic's overrides before they are applied.
pub fn dynamic_topic_defaults(
    node_id: i32,
    broker_configs: &BTreeMap<String, BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for resource in [String::new(), node_id.to_string()] {
        for (key, value) in broker_configs.get(&resource).into_iter().flatten() {
            if let Some(def) = topic_config_of_broker_key(key) {
                out.insert(def.name.to_string(), value.clone());
            }
        }
    }
    out
}

/// A broker setting under its Kafka name, as DescribeConfigs lists it.
pub struct BrokerSetting {
    pub name: &'static str,
    pub kind: Kind,
    /// Its value from spate's configuration.
    pub value: fn(&Config) -> String,
}

macro_rules! setting {
    ($name:expr, $kind:expr, |$c:ident| $value:expr) => {
        BrokerSetting { name: $name, kind: $kind, value: |$c: &Config| $value.to_string() }
    };
}

/// spate's static settings under their Kafka names (read-only: a restart
/// with a new value changes them).
pub const STATIC_BROKER_SETTINGS: &[BrokerSetting] = &[
    setting!("advertised.listeners", List, |c| format!("PLAINTEXT://{}:{}", c.advertised_host(), c.advertised_port())),
    setting!("auto.create.topics.enable", Boolean, |c| c.auto_create_topics),
    setting!("broker.heartbeat.interval.ms", Int, |c| c.broker_heartbeat_interval_ms),
    setting!("broker.session.timeout.ms", Int, |c| c.broker_session_timeout_ms),
    setting!("connections.max.idle.ms", Long, |c| c.connections_max_idle_ms),
    setting!("controller.quorum.voters", List, |c| c.controller_quorum_voters),
    setting!("default.replication.factor", Int, |c| c.default_replication_factor),
    setting!("delete.topic.enable", Boolean, |_c| true),
    setting!("group.initial.rebalance.delay.ms", Int, |c| c.group_initial_rebalance_delay_ms),
    setting!("group.max.session.timeout.ms", Int, |c| c.group_max_session_timeout_ms),
    setting!("group.max.size", Int, |c| c.group_max_size),
    setting!("group.min.session.timeout.ms", Int, |c| c.group_min_session_timeout_ms),
    setting!("listeners", List, |c| format!("PLAINTEXT://{}", c.listen)),
    setting!("log.cleaner.backoff.ms", Long, |c| c.log_cleaner_backoff_ms),
    setting!("log.cleaner.dedupe.buffer.size", Long, |c| c.log_cleaner_dedupe_buffer_bytes),
    setting!("log.cleaner.enable", Boolean, |c| c.log_cleaner_enable),
    setting!("log.cleaner.io.buffer.size", Int, |c| c.log_cleaner_io_buffer_bytes),
    setting!("log.cleaner.io.max.bytes.per.second", Double, |c| c.log_cleaner_io_max_bytes_per_second),
    setting!("log.dirs", Kind::String, |c| c.data_dir.display()),
    setting!("log.flush.scheduler.interval.ms", Long, |c| c.flush_check_interval_ms),
    setting!("log.retention.check.interval.ms", Long, |c| c.retention_check_interval_ms),
    setting!("max.incremental.fetch.session.cache.slots", Int, |c| c.max_incremental_fetch_session_cache_slots),
    setting!("max.request.partition.size.limit", Int, |c| c.describe_topic_partitions_limit),
    setting!("node.id", Int, |c| c.node_id),
    setting!("num.partitions", Int, |c| c.default_partitions),
    setting!("offset.metadata.max.bytes", Int, |c| c.offset_metadata_max_bytes),
    setting!("offsets.retention.check.interval.ms", Long, |c| c.offsets_retention_check_interval_ms),
    setting!("offsets.retention.minutes", Int, |c| c.offsets_retention_minutes),
    setting!("offsets.topic.num.partitions", Int, |c| c.offsets_topic_num_partitions),
    setting!("offsets.topic.replication.factor", Kind::String, |c| c.offsets_topic_replication_factor),
    setting!("offsets.topic.segment.bytes", Int, |c| c.offsets_topic_segment_bytes),
    setting!("process.roles", List, |_c| "broker,controller"),
    setting!("queued.max.request.bytes", Long, |c| c.queued_max_request_bytes),
    setting!("replica.fetch.backoff.ms", Int, |c| c.replica_fetch_backoff_ms),
    setting!("replica.fetch.max.bytes", Int, |c| c.replica_fetch_max_bytes),
    setting!("replica.fetch.response.max.bytes", Int, |c| c.replica_fetch_response_max_bytes),
    setting!("replica.fetch.wait.max.ms", Int, |c| c.replica_fetch_wait_max_ms),
    setting!("replica.lag.time.max.ms", Long, |c| c.replica_lag_time_max_ms),
    setting!("socket.request.max.bytes", Int, |c| c.socket_request_max_bytes),
];

pub fn static_broker_setting(name: &str) -> Option<&'static BrokerSetting> {
    STATIC_BROKER_SETTINGS.iter().find(|s| s.name == name)
}

/// Whether `key` may be altered on a broker resource: the broker keys that
/// topic configs fall back to.
pub fn is_dynamic_broker_key(key: &str) -> bool {
    topic_config_of_broker_key(key).is_some()
}

/// Checks that `key` may be altered on a broker resource. Err: (it is a
/// static key, message).
pub fn check_broker_key(key: &str) -> Result<&'static TopicConfig, (bool, String)> {
    match topic_config_of_broker_key(key) {
        Some(def) => Ok(def),
        None if static_broker_setting(key).is_some() => {
            Err((true, format!("Cannot update these configs dynamically: Set({key})")))
        }
        None => Err((false, format!("Unknown broker config name: {key}"))),
    }
}

/// Checks one dynamic broker config a client sets. Err as [`check_broker_key`].
pub fn check_broker_config(key: &str, value: &str) -> Result<(), (bool, String)> {
    let def = check_broker_key(key)?;
    check_value(key, def.kind, def.check, value).map_err(|m| (false, m))
}

/// The kind of a broker key (dynamic or static), if spate has it.
pub fn broker_key_kind(key: &str) -> Option<Kind> {
    topic_config_of_broker_key(key).map(|d| d.kind).or_else(|| static_broker_setting(key).map(|s| s.kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_config_has_a_valid_default() {
        let config = Config::default();
        for def in TOPIC_CONFIGS {
            let resolved = resolve_topic_config(def, &BTreeMap::new(), &config, &BTreeMap::new());
            assert_eq!(resolved.source, Source::Default, "{}", def.name);
            check_topic_config(def.name, &resolved.value).unwrap_or_else(|e| panic!("{}: {e}", def.name));
        }
        assert_eq!(TOPIC_CONFIGS.len(), 33, "Kafka 4.0's topic configs");
    }

    #[test]
    fn values_are_checked_as_kafka_does() {
        assert!(check_topic_config("retention.ms", "-1").is_ok());
        let e = check_topic_config("retention.ms", "-2").unwrap_err();
        assert_eq!(e, "Invalid value -2 for configuration retention.ms: Value must be at least -1");
        assert!(check_topic_config("min.cleanable.dirty.ratio", "1.1").unwrap_err().contains("no more than 1"));
        assert!(check_topic_config("cleanup.policy", "compact,delete").is_ok());
        assert!(check_topic_config("cleanup.policy", "compact,nope").is_err());
        assert!(check_topic_config("compression.type", "brotli").unwrap_err().contains("String must be one of"));
        assert!(check_topic_config("compression.gzip.level", "0").is_err());
        assert!(check_topic_config("preallocate", "yes").is_err());
        assert!(check_topic_config("preallocate", "TRUE").is_ok(), "booleans ignore case, as Kafka");
        assert!(check_topic_config("max.message.bytes", "3000000000").unwrap_err().contains("type INT"));
        assert!(check_topic_config("leader.replication.throttled.replicas", "0:1,1:2").is_ok());
        assert!(check_topic_config("leader.replication.throttled.replicas", "0-1").is_err());
        assert_eq!(check_topic_config("nope", "1").unwrap_err(), "Unknown topic config name: nope");
        assert!(check_broker_config("log.dirs", "/x").unwrap_err().0, "static");
        assert!(check_broker_config("log.retention.ms", "1000").is_ok());
    }

    #[test]
    fn a_node_value_beats_the_cluster_default_which_beats_the_static_one() {
        let config = Config { segment_bytes: 1 << 20, ..Config::default() };
        let def = topic_config("segment.bytes").unwrap();
        let mut dynamic = BTreeMap::new();
        let resolve =
            |d: &BTreeMap<String, BTreeMap<String, String>>| resolve_topic_config(def, &BTreeMap::new(), &config, d);
        assert_eq!(resolve(&dynamic), Resolved { value: "1048576".into(), source: Source::StaticBroker });
        dynamic.insert(String::new(), BTreeMap::from([("log.segment.bytes".into(), "2097152".into())]));
        assert_eq!(resolve(&dynamic).source, Source::DynamicDefaultBroker);
        dynamic.insert("0".into(), BTreeMap::from([("log.segment.bytes".into(), "4194304".into())]));
        assert_eq!(resolve(&dynamic), Resolved { value: "4194304".into(), source: Source::DynamicBroker });
        assert_eq!(dynamic_topic_defaults(0, &dynamic).get("segment.bytes").map(String::as_str), Some("4194304"));
        assert_eq!(dynamic_topic_defaults(1, &dynamic).get("segment.bytes").map(String::as_str), Some("2097152"));
    }
}
