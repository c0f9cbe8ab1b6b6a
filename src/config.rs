//! Broker configuration: defaults that work out of the box, overridden in turn
//! by a TOML file (`--config`), `SPATE_<KEY>` environment variables, and
//! `--set key=value` flags. Every bound the broker enforces is a field here.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::storage::LogConfig;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address every shard listens on (SO_REUSEPORT).
    pub listen: String,
    /// Host clients are told to connect to; defaults to the listen host, or
    /// "localhost" when listening on a wildcard address.
    pub advertised_host: Option<String>,
    /// Port clients are told to connect to; defaults to the listen port (set
    /// it when clients reach the broker through a proxy or a port mapping).
    pub advertised_port: Option<u16>,
    pub data_dir: PathBuf,
    pub node_id: i32,
    /// This node's controller endpoint (HOST:PORT) for Raft traffic and
    /// brokers' requests; "" on a node with no other voters.
    pub controller_listen: String,
    /// The controller quorum, `1@host:port,2@host:port,3@host:port` (Kafka's
    /// `controller.quorum.voters`); "" makes this node a quorum of itself.
    pub controller_quorum_voters: String,
    /// The controller's Raft clock: elections time out after 10 ticks,
    /// leaders heartbeat every 2.
    pub controller_tick_ms: u64,
    /// A broker not heard from for this long is fenced: it leads nothing
    /// until it heartbeats again.
    pub broker_session_timeout_ms: u64,
    pub broker_heartbeat_interval_ms: u64,
    /// The metadata log is snapshotted, and the entries before the snapshot
    /// dropped, once this many entries follow the last snapshot.
    pub metadata_snapshot_interval_entries: usize,
    /// acks=all produces need this many in-sync replicas, unless the topic
    /// sets its own (Kafka's `min.insync.replicas`).
    pub min_insync_replicas: usize,
    /// Replicas of a topic created without a replication factor (Kafka's
    /// `default.replication.factor`).
    pub default_replication_factor: i16,
    /// A follower that has not caught up with its leader's log end for this
    /// long leaves the ISR (Kafka's `replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// Bytes a follower asks per partition in one fetch (`replica.fetch.max.bytes`).
    pub replica_fetch_max_bytes: usize,
    /// Bytes a follower asks in one fetch, all partitions together
    /// (`replica.fetch.response.max.bytes`).
    pub replica_fetch_response_max_bytes: usize,
    /// How long a follower's fetch waits at the leader for new data (`replica.fetch.wait.max.ms`).
    pub replica_fetch_wait_max_ms: u64,
    /// Pause after a failed fetch before the next (`replica.fetch.backoff.ms`).
    pub replica_fetch_backoff_ms: u64,
    /// Shards (executors); 0 = one per core.
    pub shards: usize,
    /// io_uring registered memory per shard (counts against RLIMIT_MEMLOCK).
    pub io_memory_bytes: usize,
    /// Queued messages per ordered pair of shards.
    pub mailbox_capacity: usize,
    pub pin_shards: bool,
    /// Busy-poll this long before an idle shard sleeps (lower wake-up latency, more CPU).
    pub spin_before_park_us: u64,
    /// HTTP endpoint for /metrics, /v1/health, /v1/ready, /v1/status and
    /// /v1/log-level (Redpanda's admin port); "" turns it off.
    pub admin_listen: String,
    /// `text` (colour only on a terminal) or `json` (one object per line).
    pub log_format: crate::logging::LogFormat,
    /// Requests slower than this (read to response written) are logged at WARN.
    pub slow_request_ms: u64,

    pub auto_create_topics: bool,
    pub default_partitions: i32,
    /// Bound on partitions per topic.
    pub max_partitions_per_topic: i32,

    /// socket.request.max.bytes: larger frames close the connection.
    pub socket_request_max_bytes: usize,
    /// Requests read ahead per connection while earlier ones are answered.
    pub max_inflight_requests: usize,
    /// Bytes of those requests a connection may hold at once, until answered.
    pub max_inflight_request_bytes: usize,
    /// Bytes of requests a shard holds in memory, from their first byte read
    /// until their response is written (Kafka's queued.max.request.bytes).
    /// When spent, the shard stops reading sockets; one read step may overdraw
    /// it, so that no request ever waits for more than the whole budget.
    pub queued_max_request_bytes: usize,
    /// Bytes of answered but unsent responses per connection above which the
    /// connection reads no new request (a client that does not read its
    /// responses stops being served; requests already in flight still finish).
    pub max_unsent_response_bytes: usize,
    /// connections.max.idle.ms: a connection with no request and no response
    /// for this long is closed.
    pub connections_max_idle_ms: u64,
    /// A frame whose body has not fully arrived this long after its header
    /// closes the connection (waiting for the shard's request budget counts
    /// too, so that half-sent frames holding all of it cannot wedge a shard).
    pub socket_request_read_timeout_ms: u64,
    /// On SIGTERM, how long open connections may take to finish their
    /// in-flight requests before the partitions are closed anyway.
    pub shutdown_drain_timeout_ms: u64,
    /// Connections per shard; more are refused.
    pub max_connections_per_shard: usize,
    /// A shard that accepts a connection while another serves fewer hands
    /// it over, so that a few connections do not all land on one core.
    pub balance_connections: bool,
    /// Upper bound on a fetch's max_wait_ms.
    pub fetch_max_wait_cap_ms: u64,
    /// Incremental fetch sessions (KIP-227) each shard keeps
    /// (`max.incremental.fetch.session.cache.slots`); past it, fetches go
    /// on without a session.
    pub max_incremental_fetch_session_cache_slots: usize,
    /// Partitions all of a shard's fetch sessions may hold together (about
    /// 100 bytes each): a bound on the cache's memory.
    pub max_incremental_fetch_session_partitions: usize,
    /// Partitions one DescribeTopicPartitions answer lists at most; the
    /// client pages on with the cursor (`max.request.partition.size.limit`).
    pub describe_topic_partitions_limit: i32,

    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: usize,
    pub index_interval_bytes: u64,
    pub write_buffer_bytes: usize,
    /// Writes of one partition in flight at once: full write buffers go to
    /// the disk as they fill, while earlier writes (and fdatasyncs) are
    /// still running.
    pub max_writes_in_flight_per_partition: usize,
    /// Bytes a shard's partitions may hold appended but not yet written
    /// (in write buffers, queued or in flight). Past it, an append waits for
    /// its partition's writes, unless that partition holds less than one
    /// write buffer.
    pub write_memory_bytes_per_shard: u64,
    /// Busy segments are grown ahead of the writes in steps of this size (0: off).
    pub preallocate_step_bytes: u64,
    /// Tail cache per shard, shared out over its partitions.
    pub cache_bytes_per_shard: usize,
    /// Sealed segment files a shard keeps open for reads, the least recently
    /// used closed first (active segments hold their own, one per partition).
    pub max_open_segment_files_per_shard: usize,
    /// Data of acks=0/1 produces is synced once unsynced this long (acks=all
    /// is synced before its answer); 0: never, as Kafka's default. The
    /// default of topics' `flush.ms` (Kafka's `log.flush.interval.ms`).
    pub flush_interval_ms: u64,
    /// Bytes a produced batch may expand to when a topic's compression.type
    /// makes the broker recompress it; larger batches are refused.
    pub max_recompressed_batch_bytes: usize,
    /// How often each shard looks for partitions due a sync by `flush.ms`
    /// (Kafka's `log.flush.scheduler.interval.ms`).
    pub flush_check_interval_ms: u64,
    pub retention_check_interval_ms: u64,
    /// Partitions of `__consumer_offsets` when it is created (Kafka's
    /// `offsets.topic.num.partitions`); a group's coordinator is the shard
    /// owning partition `abs(hash(group id)) % this`.
    pub offsets_topic_num_partitions: i32,
    /// Replicas of each `__consumer_offsets` partition, or every live broker
    /// when fewer are registered when it is created (`offsets.topic.replication.factor`).
    pub offsets_topic_replication_factor: usize,
    pub offsets_topic_segment_bytes: u64,
    /// Committed offsets of a group empty this long are deleted.
    pub offsets_retention_minutes: i64,
    pub offsets_retention_check_interval_ms: u64,
    /// An offsets partition that grew by this much since its last
    /// checkpoint is checkpointed: its live state written again and
    /// everything older deleted (bounds `__consumer_offsets` without a cleaner).
    pub offsets_checkpoint_bytes: u64,
    /// Longest commit metadata string (OFFSET_METADATA_TOO_LARGE beyond).
    pub offset_metadata_max_bytes: usize,
    /// A rebalance of an empty group waits this long for more members (and
    /// again while they keep coming, up to the rebalance timeout).
    pub group_initial_rebalance_delay_ms: u64,
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    /// Members per group (GROUP_MAX_SIZE_REACHED beyond).
    pub group_max_size: usize,
    /// Protocol names and metadata one member may send in a JoinGroup.
    pub group_max_member_metadata_bytes: usize,

    /// Run the log cleaner (compaction of `cleanup.policy=compact` topics).
    pub log_cleaner_enable: bool,
    /// Each shard's cleaner looks for dirty compacted partitions this often.
    pub log_cleaner_backoff_ms: u64,
    /// Memory for one clean's key map, per shard (about 64 bytes per key).
    pub log_cleaner_dedupe_buffer_bytes: usize,
    /// Bytes per cleaner read or write (a multiple of 4096).
    pub log_cleaner_io_buffer_bytes: usize,
    /// Bytes read plus written per second by one shard's cleaner.
    pub log_cleaner_io_max_bytes_per_second: u64,
    /// A batch whose records decompress past this is kept whole by the cleaner.
    pub log_cleaner_max_batch_decompressed_bytes: usize,
    /// Defaults of the topic configs delete.retention.ms,
    /// min.compaction.lag.ms and min.cleanable.dirty.ratio.
    pub log_cleaner_delete_retention_ms: i64,
    pub log_cleaner_min_compaction_lag_ms: i64,
    pub log_cleaner_min_cleanable_ratio: f64,
}

impl Default for Config {
    fn default() -> Self {
        let log = LogConfig::default();
        Config {
            listen: "0.0.0.0:9092".into(),
            advertised_host: None,
            advertised_port: None,
            data_dir: PathBuf::from("./data"),
            node_id: 0,
            controller_listen: String::new(),
            controller_quorum_voters: String::new(),
            controller_tick_ms: 100,
            broker_session_timeout_ms: 1000,
            broker_heartbeat_interval_ms: 200,
            metadata_snapshot_interval_entries: 1000,
            min_insync_replicas: 1,
            default_replication_factor: 1,
            replica_lag_time_max_ms: 10_000,
            replica_fetch_max_bytes: 1 << 20,
            replica_fetch_response_max_bytes: 10 << 20,
            replica_fetch_wait_max_ms: 500,
            replica_fetch_backoff_ms: 100,
            shards: 0,
            io_memory_bytes: 1 << 20,
            mailbox_capacity: 1024,
            pin_shards: true,
            spin_before_park_us: 0,
            admin_listen: "0.0.0.0:9644".into(),
            log_format: crate::logging::LogFormat::Text,
            slow_request_ms: 1000,
            auto_create_topics: true,
            default_partitions: 1,
            max_partitions_per_topic: 10_000,
            socket_request_max_bytes: 100 << 20,
            max_inflight_requests: 128,
            max_inflight_request_bytes: 256 << 20,
            queued_max_request_bytes: 256 << 20,
            max_unsent_response_bytes: 64 << 20,
            connections_max_idle_ms: 600_000,
            socket_request_read_timeout_ms: 30_000,
            shutdown_drain_timeout_ms: 10_000,
            max_connections_per_shard: 10_000,
            balance_connections: true,
            fetch_max_wait_cap_ms: 30_000,
            max_incremental_fetch_session_cache_slots: 1000,
            max_incremental_fetch_session_partitions: 200_000,
            describe_topic_partitions_limit: 2000,
            segment_bytes: log.segment_bytes,
            segment_ms: log.segment_ms,
            retention_ms: log.retention_ms,
            retention_bytes: log.retention_bytes,
            max_message_bytes: log.max_message_bytes,
            index_interval_bytes: log.index_interval_bytes,
            write_buffer_bytes: log.write_buffer_bytes,
            max_writes_in_flight_per_partition: log.max_writes_in_flight,
            write_memory_bytes_per_shard: crate::storage::write_budget::DEFAULT_WRITE_MEMORY_BYTES_PER_SHARD,
            preallocate_step_bytes: log.preallocate_step_bytes,
            cache_bytes_per_shard: 64 << 20,
            max_open_segment_files_per_shard: crate::storage::open_files::DEFAULT_MAX_OPEN_SEGMENT_FILES,
            flush_interval_ms: 500,
            flush_check_interval_ms: 100,
            max_recompressed_batch_bytes: 64 << 20,
            retention_check_interval_ms: 30_000,
            offsets_topic_num_partitions: 50,
            offsets_topic_replication_factor: 3,
            offsets_topic_segment_bytes: 100 << 20,
            offsets_retention_minutes: 7 * 24 * 60,
            offsets_retention_check_interval_ms: 600_000,
            offset_metadata_max_bytes: 4096,
            offsets_checkpoint_bytes: 64 << 20,
            group_initial_rebalance_delay_ms: 3000,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            group_max_size: 10_000,
            group_max_member_metadata_bytes: 1 << 20,
            log_cleaner_enable: true,
            log_cleaner_backoff_ms: 15_000,
            log_cleaner_dedupe_buffer_bytes: 16 << 20,
            log_cleaner_io_buffer_bytes: 1 << 20,
            log_cleaner_io_max_bytes_per_second: 100 << 20,
            log_cleaner_max_batch_decompressed_bytes: 64 << 20,
            log_cleaner_delete_retention_ms: log.delete_retention_ms,
            log_cleaner_min_compaction_lag_ms: log.min_compaction_lag_ms,
            log_cleaner_min_cleanable_ratio: log.min_cleanable_dirty_ratio,
        }
    }
}

impl Config {
    /// Defaults, then the file, then SPATE_* variables, then `--set` pairs.
    pub fn load(file: Option<&PathBuf>, sets: &[String]) -> Result<Config> {
        let mut table = toml::Table::try_from(Config::default())?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let from_file: toml::Table = text.parse().with_context(|| format!("parsing {}", path.display()))?;
            table.extend(from_file);
        }
        for (key, value) in std::env::vars() {
            if let Some(name) = key.strip_prefix("SPATE_") {
                let name = name.to_ascii_lowercase();
                if table.contains_key(&name) || name == "advertised_host" || name == "advertised_port" {
                    table.insert(name, parse_value(&value));
                }
            }
        }
        for pair in sets {
            let Some((key, value)) = pair.split_once('=') else { bail!("--set wants key=value, got {pair:?}") };
            table.insert(key.trim().replace('-', "_"), parse_value(value.trim()));
        }
        let config: Config = table.try_into().context("invalid configuration")?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        if self.default_replication_factor < 1 {
            bail!("default_replication_factor must be at least 1");
        }
        if self.replica_lag_time_max_ms == 0 || self.replica_fetch_max_bytes == 0 || self.replica_fetch_wait_max_ms == 0
        {
            bail!("replica_lag_time_max_ms, replica_fetch_max_bytes and replica_fetch_wait_max_ms must be positive");
        }
        if self.replica_fetch_response_max_bytes < self.replica_fetch_max_bytes
            || self.replica_fetch_response_max_bytes > 64 << 20
        {
            bail!("replica_fetch_response_max_bytes must be between replica_fetch_max_bytes and 64 MiB");
        }
        if self.write_buffer_bytes == 0 || !self.write_buffer_bytes.is_multiple_of(4096) {
            bail!("write_buffer_bytes must be a positive multiple of 4096");
        }
        if self.default_partitions < 1 || self.default_partitions > self.max_partitions_per_topic {
            bail!("default_partitions must be between 1 and max_partitions_per_topic");
        }
        if self.segment_bytes < 1 << 14 || self.segment_bytes > crate::storage::log::MAX_SEGMENT_BYTES {
            bail!("segment_bytes must be between 16 KiB and 2 GiB (index positions are 32-bit)");
        }
        if self.max_inflight_requests == 0 || self.mailbox_capacity == 0 || self.max_inflight_request_bytes == 0 {
            bail!("max_inflight_requests, max_inflight_request_bytes and mailbox_capacity must be positive");
        }
        if self.queued_max_request_bytes == 0 || self.max_unsent_response_bytes == 0 {
            bail!("queued_max_request_bytes and max_unsent_response_bytes must be positive");
        }
        if self.max_writes_in_flight_per_partition == 0 || self.max_writes_in_flight_per_partition > 64 {
            bail!("max_writes_in_flight_per_partition must be 1 to 64");
        }
        if self.write_memory_bytes_per_shard < self.write_buffer_bytes as u64 {
            bail!("write_memory_bytes_per_shard must be at least write_buffer_bytes");
        }
        if self.max_open_segment_files_per_shard == 0 {
            bail!("max_open_segment_files_per_shard must be positive");
        }
        if self.flush_check_interval_ms == 0 {
            bail!("flush_check_interval_ms must be positive");
        }
        if self.describe_topic_partitions_limit < 1 {
            bail!("describe_topic_partitions_limit must be positive");
        }
        if self.offsets_topic_replication_factor < 1 {
            bail!("offsets_topic_replication_factor must be at least 1");
        }
        if self.offsets_topic_num_partitions < 1 || self.offsets_topic_num_partitions > self.max_partitions_per_topic {
            bail!("offsets_topic_num_partitions must be between 1 and max_partitions_per_topic");
        }
        // A session timeout becomes a deadline: it must be positive.
        if self.group_max_size == 0
            || self.group_min_session_timeout_ms < 1
            || self.group_min_session_timeout_ms > self.group_max_session_timeout_ms
        {
            bail!("group_max_size and group_min_session_timeout_ms must be positive, the minimum at most group_max_session_timeout_ms");
        }
        if self.log_cleaner_io_buffer_bytes == 0 || !self.log_cleaner_io_buffer_bytes.is_multiple_of(4096) {
            bail!("log_cleaner_io_buffer_bytes must be a positive multiple of 4096");
        }
        if self.log_cleaner_io_max_bytes_per_second == 0
            || self.log_cleaner_dedupe_buffer_bytes < crate::storage::cleaner::MAP_ENTRY_BYTES
            || self.log_cleaner_backoff_ms == 0
        {
            bail!("log_cleaner_io_max_bytes_per_second and log_cleaner_backoff_ms must be positive, log_cleaner_dedupe_buffer_bytes at least 64");
        }
        if !(0.0..=1.0).contains(&self.log_cleaner_min_cleanable_ratio) {
            bail!("log_cleaner_min_cleanable_ratio must be between 0 and 1");
        }
        if self.connections_max_idle_ms == 0 || self.socket_request_read_timeout_ms == 0 {
            bail!("connections_max_idle_ms and socket_request_read_timeout_ms must be positive");
        }
        Ok(())
    }

    /// `key=value` for every setting that differs from its default, for the start-up line.
    pub fn non_default_settings(&self) -> String {
        let (Ok(mine), Ok(defaults)) = (toml::Table::try_from(self), toml::Table::try_from(Config::default())) else {
            return String::new();
        };
        let changed = mine.iter().filter(|(key, value)| defaults.get(key.as_str()) != Some(*value));
        changed.map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(" ")
    }

    pub fn advertised_host(&self) -> String {
        if let Some(host) = &self.advertised_host {
            return host.clone();
        }
        let host = self.listen.rsplit_once(':').map_or(self.listen.as_str(), |(h, _)| h);
        match host {
            "" | "0.0.0.0" | "[::]" | "::" => "localhost".into(),
            h => h.trim_start_matches('[').trim_end_matches(']').into(),
        }
    }

    pub fn advertised_port(&self) -> i32 {
        if let Some(port) = self.advertised_port {
            return port as i32;
        }
        self.listen.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(9092)
    }

    /// The broker-wide log defaults, before per-topic overrides.
    pub fn log_defaults(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            max_message_bytes: self.max_message_bytes,
            index_interval_bytes: self.index_interval_bytes,
            log_append_time: false,
            write_buffer_bytes: self.write_buffer_bytes,
            max_writes_in_flight: self.max_writes_in_flight_per_partition,
            cache_bytes: self.cache_bytes_per_shard,
            preallocate_step_bytes: self.preallocate_step_bytes,
            compact: false,
            delete_retention_ms: self.log_cleaner_delete_retention_ms,
            min_compaction_lag_ms: self.log_cleaner_min_compaction_lag_ms,
            min_cleanable_dirty_ratio: self.log_cleaner_min_cleanable_ratio,
            min_insync_replicas: self.min_insync_replicas,
            flush_ms: if self.flush_interval_ms == 0 { i64::MAX } else { self.flush_interval_ms as i64 },
            max_recompressed_batch_bytes: self.max_recompressed_batch_bytes,
            ..LogConfig::default()
        }
    }

    /// The limits of each shard's log cleaner.
    pub fn cleaner(&self) -> crate::storage::cleaner::CleanerConfig {
        crate::storage::cleaner::CleanerConfig {
            dedupe_buffer_bytes: self.log_cleaner_dedupe_buffer_bytes,
            io_buffer_bytes: self.log_cleaner_io_buffer_bytes,
            io_max_bytes_per_second: self.log_cleaner_io_max_bytes_per_second,
            max_batch_decompressed_bytes: self.log_cleaner_max_batch_decompressed_bytes,
        }
    }
}

/// Every setting with its default, as a commented TOML file: the comments
/// are the fields' doc comments, read from this file's source (compiled in),
/// so the reference cannot drift from the code.
pub fn defaults_toml() -> String {
    let defaults = toml::Table::try_from(Config::default()).expect("the defaults serialise");
    let mut out = String::from(
        "# spate configuration: every setting with its default.\n\
         # Any key may also be set as SPATE_<KEY> in the environment or with --set key=value.\n",
    );
    for (key, docs) in field_docs(include_str!("config.rs")) {
        out.push('\n');
        for line in docs {
            out.push_str(&format!("# {line}\n").replace("# \n", "#\n"));
        }
        match defaults.get(&key) {
            Some(value) => out.push_str(&format!("{key} = {value}\n")),
            None => out.push_str(&format!("# {key} = (unset)\n")),
        }
    }
    out
}

/// (field, doc comment lines) of `struct Config`, in order, from its source.
fn field_docs(source: &str) -> Vec<(String, Vec<String>)> {
    let body = source.split("pub struct Config {").nth(1).and_then(|rest| rest.split("\n}").next()).unwrap_or("");
    let mut fields = Vec::new();
    let mut docs = Vec::new();
    for line in body.lines().map(str::trim) {
        if let Some(doc) = line.strip_prefix("///") {
            docs.push(doc.trim().to_string());
        } else if let Some((name, _)) = line.strip_prefix("pub ").and_then(|field| field.split_once(':')) {
            fields.push((name.trim().to_string(), std::mem::take(&mut docs)));
        } else {
            docs.clear();
        }
    }
    fields
}

/// Reads an override as a TOML value: integer, float, boolean, else string.
fn parse_value(text: &str) -> toml::Value {
    if let Ok(i) = text.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = text.parse::<bool>() {
        toml::Value::Boolean(b)
    } else if let Ok(f) = text.parse::<f64>() {
        toml::Value::Float(f)
    } else {
        toml::Value::String(text.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_defaults_cover_every_key_and_load_back() {
        let printed = defaults_toml();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for key in defaults.keys() {
            assert!(printed.contains(&format!("\n{key} = ")), "{key} missing from the printed defaults");
        }
        assert!(printed.contains("# Address every shard listens on"), "doc comments become comments");
        let loaded: Config = toml::from_str(&printed).expect("the printed defaults are a valid config");
        assert_eq!(toml::Table::try_from(loaded).unwrap(), defaults);
    }

    #[test]
    fn layers_override_defaults() {
        let dir = std::env::temp_dir().join(format!("spate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("spate.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:19092\"\ndefault_partitions = 3\n").unwrap();
        let config =
            Config::load(Some(&file), &["default_partitions=5".into(), "auto-create-topics=false".into()]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:19092");
        assert_eq!(config.default_partitions, 5);
        assert!(!config.auto_create_topics);
        assert_eq!(config.advertised_host(), "127.0.0.1");
        assert_eq!(config.advertised_port(), 19092);
        assert!(Config::load(None, &["no_such_key=1".into()]).is_err());
        assert!(Config::load(None, &["write_buffer_bytes=1000".into()]).is_err());
        assert!(Config::load(None, &["segment_bytes=8589934592".into()]).is_err(), "index positions are 32-bit");
        assert!(
            Config::load(None, &["group_min_session_timeout_ms=0".into()]).is_err(),
            "deadlines need a positive timeout"
        );
    }
}
