//! Sums the shards' snapshots and writes them in the Prometheus text format
//! (0.0.4) through the `prometheus-client` crate's encoder. Runs on the shard
//! serving the scrape, off every hot path.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Error;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ApiKey;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{HistogramSnapshot, PartitionSnapshot, ShardSnapshot};

/// What one scrape reports: every shard's snapshot and the process's figures.
#[derive(Debug, Default)]
pub struct Scrape {
    pub shards: Vec<ShardSnapshot>,
    pub uptime_seconds: f64,
    pub version: &'static str,
    pub commit: &'static str,
}

/// The scrape as Prometheus text. The per-partition families, the bulk
/// of it (four lines a partition), were rendered by each shard for its own
/// partitions, in parallel: here they are only put after their headers.
pub fn encode(mut scrape: Scrape) -> String {
    let rendered: Vec<[String; 4]> = scrape.shards.iter_mut().map(|s| std::mem::take(&mut s.partition_lines)).collect();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let bulk: usize = rendered.iter().flatten().map(String::len).sum();
    let mut out = String::with_capacity(bulk + (64 << 10));
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    for (i, (name, help, _)) in PARTITION_FIGURES.iter().enumerate() {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for lines in &rendered {
            out.push_str(&lines[i]);
        }
    }
    out
}

type Figure = fn(&PartitionSnapshot) -> i64;

/// The per-partition gauges: name, help, value.
const PARTITION_FIGURES: [(&str, &str, Figure); 4] = [
    ("spate_partition_high_watermark", "Offset after the last readable record.", |p| p.high_watermark),
    ("spate_partition_log_start_offset", "First offset still held.", |p| p.log_start_offset),
    ("spate_partition_size_bytes", "Bytes of the partition's segment files.", |p| p.size_bytes as i64),
    ("spate_partition_segments", "Segment files of the partition.", |p| p.segments as i64),
];

/// Appends a partition's line to each per-partition family's text (`lines`
/// in [`PARTITION_FIGURES`] order). Topic names need no escaping: Kafka's
/// rule allows only `[a-zA-Z0-9._-]`.
pub fn render_partition(lines: &mut [String; 4], p: &PartitionSnapshot) {
    debug_assert!(p.topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
    let mut number = itoa::Buffer::new();
    for (out, (name, _, figure)) in lines.iter_mut().zip(&PARTITION_FIGURES) {
        out.push_str(name);
        out.push_str("{topic=\"");
        out.push_str(&p.topic);
        out.push_str("\",partition=\"");
        out.push_str(number.format(p.partition));
        out.push_str("\"} ");
        out.push_str(number.format(figure(p)));
        out.push('\n');
    }
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), Error> {
        let info = [("version", self.version), ("commit", self.commit)];
        gauges(&mut e, "spate_build_info", "Version and git commit of this broker (always 1).", [(info, 1u64)])?;
        gauge(&mut e, "spate_uptime_seconds", "Seconds since the broker started.", self.uptime_seconds)?;
        self.encode_requests(&mut e)?;
        self.encode_topics(&mut e)?;
        self.encode_partitions(&mut e)?;
        self.encode_storage(&mut e)?;
        self.encode_shards(&mut e)?;
        self.encode_groups(&mut e)
    }
}

impl Scrape {
    fn encode_requests(&self, e: &mut DescriptorEncoder) -> Result<(), Error> {
        let mut requests: BTreeMap<(i16, i16), u64> = BTreeMap::new();
        let mut errors: BTreeMap<(i16, i16), u64> = BTreeMap::new();
        let mut latency: BTreeMap<(i16, &'static str), HistogramSnapshot> = BTreeMap::new();
        for shard in &self.shards {
            for &(api, version, n) in &shard.requests {
                *requests.entry((api, version)).or_default() += n;
            }
            for &(api, code, n) in &shard.errors {
                *errors.entry((api, code)).or_default() += n;
            }
            for (api, stage, h) in &shard.latency {
                latency.entry((*api, stage.label())).or_default().add(h);
            }
        }
        let rows = requests
            .iter()
            .map(|(&(api, version), &n)| ([("api", api_name(api)), ("version", version.to_string())], n));
        counters(e, "spate_requests", "Requests served, by API and version.", rows)?;
        let rows = errors.iter().map(|(&(api, code), &n)| ([("api", api_name(api)), ("error", error_name(code))], n));
        counters(e, "spate_request_errors", "Responses carrying an error (partition-level for Produce and Fetch), and requests that closed their connection (error=\"connection_closed\").", rows)?;
        let help = "Request latency by API and stage: queue (behind the connection's earlier requests), storage (in the handler: storage, other shards), network (writing the response).";
        let mut m = e.encode_descriptor("spate_request_latency_seconds", help, None, MetricType::Histogram)?;
        for ((api, stage), h) in &latency {
            let labels = [("api", api_name(*api)), ("stage", stage.to_string())];
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets(), None)?;
        }
        let slow = self.shards.iter().map(|s| (shard_label(s), s.slow_requests));
        counters(e, "spate_slow_requests", "Requests slower than slow_request_ms.", slow)
    }

    fn encode_topics(&self, e: &mut DescriptorEncoder) -> Result<(), Error> {
        let mut topics: BTreeMap<&str, [u64; 4]> = BTreeMap::new();
        for p in self.partitions() {
            let t = topics.entry(&p.topic).or_default();
            for (sum, n) in t.iter_mut().zip([p.bytes_in, p.records_in, p.bytes_out, p.records_out]) {
                *sum += n;
            }
        }
        let names = [
            ("spate_topic_bytes_in", "Record batch bytes appended, by topic."),
            ("spate_topic_records_in", "Records appended, by topic."),
            ("spate_topic_bytes_out", "Record batch bytes sent to fetchers, by topic."),
            ("spate_topic_records_out", "Records sent to fetchers, by topic."),
        ];
        for (i, (name, help)) in names.into_iter().enumerate() {
            counters(e, name, help, topics.iter().map(|(topic, sums)| ([("topic", *topic)], sums[i])))?;
        }
        Ok(())
    }

    fn encode_partitions(&self, e: &mut DescriptorEncoder) -> Result<(), Error> {
        let count = self.partitions().count() as u64;
        gauge(e, "spate_partitions", "Partitions this broker holds.", count as f64)
    }

    fn encode_storage(&self, e: &mut DescriptorEncoder) -> Result<(), Error> {
        let mut write = HistogramSnapshot::default();
        let mut sync = HistogramSnapshot::default();
        for shard in &self.shards {
            write.add(&shard.write_latency);
            sync.add(&shard.fdatasync_latency);
        }
        histogram(e, "spate_storage_write_latency_seconds", "Latency of segment writes (O_DIRECT, io_uring).", &write)?;
        histogram(e, "spate_storage_fdatasync_latency_seconds", "Latency of fdatasync calls.", &sync)
    }

    fn encode_shards(&self, e: &mut DescriptorEncoder) -> Result<(), Error> {
        type Count = fn(&ShardSnapshot) -> u64;
        let shard_counters: [(&str, &str, Count); 7] = [
            ("spate_cache_hits", "Reads served from the tail cache.", |s| s.cache_hits),
            ("spate_cache_misses", "Reads that went to disk.", |s| s.cache_misses),
            ("spate_cross_shard_messages", "Actor messages received from other shards.", |s| s.cross_shard_messages),
            ("spate_connections_accepted", "Connections accepted.", |s| s.connections_accepted),
            ("spate_connections_handed_over", "Accepted connections handed to a shard serving fewer.", |s| {
                s.connections_handed_over
            }),
            ("spate_connections_refused", "Connections refused at max_connections_per_shard.", |s| {
                s.connections_refused
            }),
            ("spate_shard_tasks_executed", "Tasks the shard's executor ran.", |s| s.tasks_executed),
        ];
        for (name, help, count) in shard_counters {
            counters(e, name, help, self.shards.iter().map(|s| (shard_label(s), count(s))))?;
        }
        let busy = self.shards.iter().map(|s| (shard_label(s), s.busy_seconds));
        counters(
            e,
            "spate_shard_busy_seconds",
            "Time the shard's executor ran tasks or polled I/O; its rate is the busy fraction.",
            busy,
        )?;
        type Gauge = fn(&ShardSnapshot) -> f64;
        let shard_gauges: [(&str, &str, Gauge); 8] = [
            ("spate_shard_busy_ratio", "Busy fraction of the shard over the last second.", |s| s.busy_ratio),
            ("spate_connections", "Open client connections.", |s| s.connections as f64),
            (
                "spate_shard_requests_in_flight",
                "Requests read and not yet answered (the shard's request queue).",
                |s| s.requests_in_flight as f64,
            ),
            (
                "spate_request_buffer_bytes",
                "Bytes of requests held until answered (bounded by queued_max_request_bytes).",
                |s| s.request_buffer_bytes as f64,
            ),
            ("spate_cache_bytes", "Bytes in the shard's tail caches.", |s| s.cache_bytes as f64),
            ("spate_shard_partitions", "Partitions the shard owns.", |s| s.partitions.len() as f64),
            ("spate_fetch_sessions", "Incremental fetch sessions (KIP-227) the shard holds.", |s| {
                s.fetch_sessions as f64
            }),
            (
                "spate_fetch_session_partitions",
                "Partitions held by the shard's fetch sessions (bounded by max_incremental_fetch_session_partitions).",
                |s| s.fetch_session_partitions as f64,
            ),
        ];
        for (name, help, gauge) in shard_gauges {
            gauges(e, name, help, self.shards.iter().map(|s| (shard_label(s), gauge(s))))?;
        }
        Ok(())
    }

    fn encode_groups(&self, e: &mut DescriptorEncoder) -> Result<(), Error> {
        let committed = self.shards.iter().flat_map(|s| &s.committed);
        let any_committed = committed.clone().next().is_some();
        let ends: HashMap<(&str, i32), i64> = match any_committed {
            true => self.partitions().map(|p| ((&*p.topic, p.partition), p.high_watermark)).collect(),
            false => HashMap::new(),
        };
        let mut m = e.encode_descriptor(
            "spate_consumer_group_committed_offset",
            "A group's committed offset of a partition.",
            None,
            MetricType::Gauge,
        )?;
        for c in committed.clone() {
            let partition = c.partition.to_string();
            let labels = [("group", c.group.as_str()), ("topic", c.topic.as_str()), ("partition", partition.as_str())];
            m.encode_family(&labels)?.encode_gauge(&c.offset)?;
        }
        let help = "Records a group has yet to consume: high watermark minus committed offset.";
        let mut m = e.encode_descriptor("spate_consumer_group_lag", help, None, MetricType::Gauge)?;
        for c in committed {
            let Some(end) = ends.get(&(c.topic.as_str(), c.partition)) else { continue };
            let partition = c.partition.to_string();
            let labels = [("group", c.group.as_str()), ("topic", c.topic.as_str()), ("partition", partition.as_str())];
            m.encode_family(&labels)?.encode_gauge(&(end - c.offset).max(0))?;
        }
        Ok(())
    }

    fn partitions(&self) -> impl Iterator<Item = &PartitionSnapshot> + Clone {
        self.shards.iter().flat_map(|s| &s.partitions)
    }
}

fn shard_label(shard: &ShardSnapshot) -> [(&'static str, String); 1] {
    [("shard", shard.shard.to_string())]
}

fn api_name(api: i16) -> String {
    ApiKey::try_from(api).map_or_else(|_| api.to_string(), |key| format!("{key:?}"))
}

fn error_name(code: i16) -> String {
    if code == CONNECTION_CLOSED {
        return "connection_closed".into();
    }
    match ResponseError::try_from_code(code) {
        Some(error) => format!("{error:?}"),
        None => code.to_string(),
    }
}

/// The error "code" counted for a request whose answer was closing the connection.
pub const CONNECTION_CLOSED: i16 = i16::MIN;

fn counters<L: EncodeLabelSet, V: EncodeCounterValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, V)>,
) -> Result<(), Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        m.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, V)>,
) -> Result<(), Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        m.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> Result<(), Error> {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&value)
}

fn histogram(e: &mut DescriptorEncoder, name: &str, help: &str, h: &HistogramSnapshot) -> Result<(), Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets(), None)
}
