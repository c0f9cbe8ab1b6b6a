//! rpk-style commands: `spate topic ...`, `spate produce`, `spate consume`.
//! Commands that only look (describe, list, consume) never create or change
//! anything; mistakes (a missing topic or partition, an offset outside the
//! log, a port that is not Kafka's) are told in words with what to do.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use clap::{Args, Subcommand};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::records::Record;

use crate::client::{check, compression_by_name, new_record, partition_for_key, str_bytes, Client};

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(short, long, default_value_t = -1)]
        partitions: i32,
        /// Replicas of each partition (-1: the broker's default_replication_factor).
        #[arg(short, long, default_value_t = -1)]
        replicas: i16,
        /// Topic config, key=value (repeatable).
        #[arg(short, long = "config")]
        configs: Vec<String>,
    },
    /// List topics and their partition counts.
    List,
    /// Show a topic's partitions, offsets and configs.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
    /// Set (key=value) or delete (key) topic configs.
    AlterConfig {
        name: String,
        #[arg(long)]
        set: Vec<String>,
        #[arg(long)]
        delete: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// The live brokers, the active controller, and partitions that are
    /// offline (no leader) or under-replicated (ISR smaller than replicas).
    Status,
}

/// `spate cluster ...`.
pub fn cluster(brokers: &str, command: ClusterCommand) -> Result<()> {
    let mut client = Client::connect_kafka(brokers)?;
    let mut out = std::io::stdout().lock();
    match command {
        ClusterCommand::Status => {
            let resp = metadata(&mut client, None)?;
            writeln!(out, "controller: {}", resp.controller_id.0)?;
            writeln!(out, "{:>6}  {:<30}", "NODE", "ENDPOINT")?;
            for b in &resp.brokers {
                let role = if b.node_id == resp.controller_id { "  (controller)" } else { "" };
                writeln!(out, "{:>6}  {}:{}{role}", b.node_id.0, b.host.as_str(), b.port)?;
            }
            let (mut offline, mut under) = (Vec::new(), Vec::new());
            for t in &resp.topics {
                let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
                for p in &t.partitions {
                    if p.leader_id.0 < 0 {
                        offline.push(format!("{name}/{}", p.partition_index));
                    } else if p.isr_nodes.len() < p.replica_nodes.len() {
                        under.push(format!("{name}/{}", p.partition_index));
                    }
                }
            }
            writeln!(out, "offline partitions: {}{}", offline.len(), listed(&offline))?;
            writeln!(out, "under-replicated partitions: {}{}", under.len(), listed(&under))?;
        }
    }
    Ok(())
}

/// ": a, b, c" for up to 20 names, then "...".
fn listed(names: &[String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = names.iter().take(20).map(String::as_str).collect();
    format!(": {}{}", shown.join(", "), if names.len() > 20 { ", ..." } else { "" })
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
    pub topic: String,
    /// Partition of every record. Without it a keyed record goes where Kafka's
    /// default partitioner puts it (murmur2 of the key, as the Java client),
    /// and a record without a key to partition 0.
    #[arg(short, long)]
    pub partition: Option<i32>,
    /// Split each line at the first SEP into key and value.
    #[arg(short = 'k', long)]
    pub key_separator: Option<String>,
    #[arg(long, default_value_t = -1)]
    pub acks: i16,
    /// none, gzip, snappy, lz4, zstd
    #[arg(short = 'z', long, default_value = "none")]
    pub compression: String,
    /// Lines per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// A header on every record, key=value (repeatable).
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// Timestamp of every record, ms since the epoch [default: now].
    #[arg(long, value_name = "MS")]
    pub timestamp: Option<i64>,
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    pub topic: String,
    #[arg(short, long, default_value_t = 0)]
    pub partition: i32,
    /// Start offset: a number, "beginning" or "end".
    #[arg(short, long, default_value = "beginning")]
    pub offset: String,
    /// Start at the first record at or after this time (ms since epoch).
    #[arg(long)]
    pub timestamp: Option<i64>,
    /// Stop after this many records.
    #[arg(short = 'n', long)]
    pub count: Option<usize>,
    /// Keep waiting for new records instead of stopping at the end.
    #[arg(short = 'F', long)]
    pub follow: bool,
    /// Output format, as kcat's -f: %t topic, %p partition, %o offset, %k key,
    /// %s value, %K key length, %S value length (-1: null), %T timestamp (ms),
    /// %h headers (k=v,k2=v2), %% a percent sign; \n \t \r \\ escapes.
    #[arg(short = 'f', long, default_value = "%o\\t%k\\t%s\\n")]
    pub format: String,
}

/// Metadata of `topics` (all if None). Looking never creates a topic, even
/// on a broker that auto-creates them.
pub fn metadata(client: &mut Client, topics: Option<Vec<&str>>) -> Result<MetadataResponse> {
    metadata_request(client, topics, false)
}

fn metadata_request(client: &mut Client, topics: Option<Vec<&str>>, auto_create: bool) -> Result<MetadataResponse> {
    let mut req = MetadataRequest::default();
    req.allow_auto_topic_creation = auto_create;
    req.topics = topics.map(|t| {
        t.iter()
            .map(|n| {
                let mut topic = metadata_request::MetadataRequestTopic::default();
                topic.name = Some(TopicName(str_bytes(n)));
                topic
            })
            .collect()
    });
    client.call(ApiKey::Metadata, 12, &req)
}

/// The partition count of `topic`; an error in words if it does not exist.
/// Only a producer (`auto_create`) lets a broker that auto-creates topics
/// create it, as any Kafka producer does.
pub fn partition_count(client: &mut Client, topic: &str, auto_create: bool) -> Result<i32> {
    // A topic just auto-created may have no leader for a moment.
    for _ in 0..50 {
        let resp = metadata_request(client, Some(vec![topic]), auto_create)?;
        let Some(t) = resp.topics.into_iter().next() else { bail!("no metadata for topic {topic}") };
        match t.error_code {
            0 => return Ok(t.partitions.len() as i32),
            c if c == ResponseError::UnknownTopicOrPartition.code() => return Err(missing_topic(client, topic)),
            c if c == ResponseError::LeaderNotAvailable.code() => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            c => check(c, &format!("topic {topic}"))?,
        }
    }
    bail!("topic {topic} has no leader yet: try again in a moment")
}

/// "topic X does not exist", with the nearest existing name if one is close.
fn missing_topic(client: &mut Client, topic: &str) -> anyhow::Error {
    let names: Vec<String> = metadata(client, None)
        .map(|r| r.topics.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect())
        .unwrap_or_default();
    let nearest = names.iter().map(|n| (edit_distance(n, topic), n)).filter(|(d, _)| *d <= 2).min();
    match nearest {
        Some((_, name)) => anyhow!("topic {topic} does not exist; did you mean {name}?"),
        None => anyhow!("topic {topic} does not exist; `spate topic list` shows the topics there are"),
    }
}

/// Levenshtein distance, counting a swap of two neighbours as one edit
/// (the commonest typo: "ordres").
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![(0..=b.len()).collect::<Vec<usize>>()];
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (rows[i - 1][j] + 1).min(row[j - 1] + 1).min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(rows[i - 2][j - 2] + 1);
            }
        }
        rows.push(row);
    }
    rows[a.len()][b.len()]
}

/// An error unless `partition` is one of `topic`'s `count` partitions.
pub fn check_partition(topic: &str, partition: i32, count: i32) -> Result<()> {
    if (0..count).contains(&partition) {
        return Ok(());
    }
    match count {
        1 => bail!("partition {partition} does not exist: {topic} has only partition 0"),
        n => bail!("partition {partition} does not exist: {topic} has partitions 0–{}", n - 1),
    }
}

/// The error for `offset` outside `topic/partition`'s log [start, end].
fn out_of_range(topic: &str, partition: i32, offset: i64, start: i64, end: i64) -> anyhow::Error {
    if start >= end {
        anyhow!("offset {offset} is out of range: {topic}/{partition} holds no records; the next one will be {end}")
    } else {
        anyhow!("offset {offset} is out of range: {topic}/{partition} holds {start}–{}", end - 1)
    }
}

pub fn topic(brokers: &str, command: TopicCommand) -> Result<()> {
    let mut client = Client::connect_kafka(brokers)?;
    let mut out = std::io::stdout().lock();
    match command {
        TopicCommand::Create { name, partitions, replicas, configs } => {
            let configs: Vec<(String, String)> = pairs(&configs)?.into_iter().collect();
            let created = client.create_replicated_topic(&name, partitions, replicas, &configs)?;
            writeln!(out, "created topic {name} with {created} partitions")?;
        }
        TopicCommand::List => {
            let resp = metadata(&mut client, None)?;
            writeln!(out, "{:<40} {:>10}", "NAME", "PARTITIONS")?;
            for t in resp.topics {
                let name = t.name.map(|n| n.0.to_string()).unwrap_or_default();
                writeln!(out, "{:<40} {:>10}", name, t.partitions.len())?;
            }
        }
        TopicCommand::Describe { name } => describe(&mut client, &name, &mut out)?,
        TopicCommand::Delete { name } => {
            let mut req = DeleteTopicsRequest::default();
            req.topic_names = vec![TopicName(str_bytes(&name))];
            req.timeout_ms = 30_000;
            let resp: DeleteTopicsResponse = client.call(ApiKey::DeleteTopics, 4, &req)?;
            for r in resp.responses {
                check(r.error_code, &format!("delete {name}"))?;
            }
            writeln!(out, "deleted topic {name}")?;
        }
        TopicCommand::AlterConfig { name, set, delete } => {
            let mut resource = incremental_alter_configs_request::AlterConfigsResource::default();
            resource.resource_type = 2;
            resource.resource_name = str_bytes(&name);
            for pair in &set {
                let Some((k, v)) = pair.split_once('=') else { bail!("--set wants key=value, got {pair:?}") };
                let mut c = incremental_alter_configs_request::AlterableConfig::default();
                c.name = str_bytes(k);
                c.value = Some(str_bytes(v));
                c.config_operation = 0;
                resource.configs.push(c);
            }
            for key in &delete {
                let mut c = incremental_alter_configs_request::AlterableConfig::default();
                c.name = str_bytes(key);
                c.config_operation = 1;
                resource.configs.push(c);
            }
            let mut req = IncrementalAlterConfigsRequest::default();
            req.resources = vec![resource];
            let resp: IncrementalAlterConfigsResponse = client.call(ApiKey::IncrementalAlterConfigs, 1, &req)?;
            for r in resp.responses {
                check(r.error_code, &format!("alter {name}: {}", r.error_message.as_deref().unwrap_or("")))?;
            }
            writeln!(out, "altered configs of {name}")?;
        }
    }
    Ok(())
}

fn describe(client: &mut Client, name: &str, out: &mut impl Write) -> Result<()> {
    let count = partition_count(client, name, false)?;
    writeln!(out, "topic {name}: {count} partitions")?;
    let resp = metadata(client, Some(vec![name]))?;
    let brokers: BTreeMap<i32, String> =
        resp.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port))).collect();
    let partitions = resp.topics.into_iter().next().map(|t| t.partitions).unwrap_or_default();
    let mut leaders: BTreeMap<i32, Client> = BTreeMap::new();
    writeln!(
        out,
        "{:>9} {:>7} {:>7} {:>10} {:>10} {:>14} {:>14}",
        "PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR", "LOG-START", "HIGH-WATERMARK"
    )?;
    for p in &partitions {
        let ids = |nodes: &[kafka_protocol::messages::BrokerId]| {
            nodes.iter().map(|n| n.0.to_string()).collect::<Vec<_>>().join(",")
        };
        // Offsets come from the partition's leader, wherever it is.
        let leader = p.leader_id.0;
        let (start, end) = match brokers.get(&leader) {
            Some(addr) => {
                let c = match leaders.entry(leader) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => e.insert(Client::connect_kafka(addr)?),
                };
                (
                    c.list_offset(name, p.partition_index, -2)?.to_string(),
                    c.list_offset(name, p.partition_index, -1)?.to_string(),
                )
            }
            None => ("-".to_string(), "-".to_string()),
        };
        writeln!(
            out,
            "{:>9} {:>7} {:>7} {:>10} {:>10} {:>14} {:>14}",
            p.partition_index,
            leader,
            p.leader_epoch,
            ids(&p.replica_nodes),
            ids(&p.isr_nodes),
            start,
            end
        )?;
    }
    let mut resource = describe_configs_request::DescribeConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = str_bytes(name);
    resource.configuration_keys = None;
    let mut req = DescribeConfigsRequest::default();
    req.resources = vec![resource];
    let resp: DescribeConfigsResponse = client.call(ApiKey::DescribeConfigs, 4, &req)?;
    writeln!(out, "configs:")?;
    for result in resp.results {
        check(result.error_code, "describe configs")?;
        for c in result.configs {
            let source = if c.config_source == 1 { "topic" } else { "default" };
            writeln!(out, "  {:<24} {:<20} ({source})", c.name.as_str(), c.value.as_deref().unwrap_or(""))?;
        }
    }
    Ok(())
}

pub fn produce(brokers: &str, args: ProduceArgs) -> Result<()> {
    let mut client = Client::connect_kafka(brokers)?;
    let compression = compression_by_name(&args.compression)?;
    let count = partition_count(&mut client, &args.topic, true)?;
    if let Some(p) = args.partition {
        check_partition(&args.topic, p, count)?;
    }
    let headers = pairs(&args.headers)?;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut sent: BTreeMap<i32, usize> = BTreeMap::new();
    loop {
        let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
        for line in lines.by_ref().take(args.batch.max(1)) {
            let (key, value) = split_line(&line?, args.key_separator.as_deref());
            let partition = match (args.partition, &key) {
                (Some(p), _) => p,
                (None, Some(key)) => partition_for_key(key, count),
                (None, None) => 0,
            };
            let batch = by_partition.entry(partition).or_default();
            batch.push(record(batch.len() as i64, key, value, args.timestamp, &headers));
        }
        if by_partition.is_empty() {
            break;
        }
        for (partition, records) in by_partition {
            client.produce_records(&args.topic, partition, &records, args.acks, compression)?;
            *sent.entry(partition).or_default() += records.len();
        }
    }
    let total: usize = sent.values().sum();
    let spread: Vec<String> = sent.iter().map(|(p, n)| format!("{p}: {n}")).collect();
    eprintln!("produced {total} records to {} (partition: records {})", args.topic, spread.join(", "));
    Ok(())
}

/// A line as (key, value): split at the first `separator` if there is one.
fn split_line(line: &str, separator: Option<&str>) -> (Option<Bytes>, Bytes) {
    match separator.and_then(|sep| line.split_once(sep)) {
        Some((k, v)) => (Some(Bytes::copy_from_slice(k.as_bytes())), Bytes::copy_from_slice(v.as_bytes())),
        None => (None, Bytes::copy_from_slice(line.as_bytes())),
    }
}

fn record(
    offset: i64,
    key: Option<Bytes>,
    value: Bytes,
    timestamp: Option<i64>,
    headers: &BTreeMap<String, String>,
) -> Record {
    let mut record = new_record(offset, timestamp.unwrap_or_else(crate::storage::now_ms), key, value);
    for (k, v) in headers {
        record.headers.insert(str_bytes(k), Some(Bytes::copy_from_slice(v.as_bytes())));
    }
    record
}

pub fn consume(brokers: &str, args: ConsumeArgs) -> Result<()> {
    let format = Format::parse(&args.format)?;
    let mut client = Client::connect_kafka(brokers)?;
    let count = partition_count(&mut client, &args.topic, false)?;
    check_partition(&args.topic, args.partition, count)?;
    let Some(offset) = start_offset(&mut client, &args)? else {
        eprintln!("no record at or after that time in {}/{}", args.topic, args.partition);
        return Ok(());
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match print_records(&mut client, &args, &format, offset, &mut out).and_then(|_| Ok(out.flush()?)) {
        // The reader went away (`| head`): nothing more to do, nothing to say.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// Where `consume` starts: None if no record reaches `--timestamp`.
fn start_offset(client: &mut Client, args: &ConsumeArgs) -> Result<Option<i64>> {
    let (topic, partition) = (args.topic.as_str(), args.partition);
    if let Some(ts) = args.timestamp {
        if ts < 0 {
            bail!("--timestamp wants milliseconds since the epoch, got {ts}");
        }
        let found = client.list_offset(topic, partition, ts)?;
        return Ok((found >= 0).then_some(found));
    }
    let start = client.list_offset(topic, partition, -2)?;
    let end = client.list_offset(topic, partition, -1)?;
    let offset = match args.offset.as_str() {
        "beginning" => start,
        "end" => end,
        n => n.parse().map_err(|_| anyhow!("--offset wants a number, \"beginning\" or \"end\", got {n:?}"))?,
    };
    if offset < start || offset > end {
        return Err(out_of_range(topic, partition, offset, start, end));
    }
    Ok(Some(offset))
}

fn print_records(
    client: &mut Client,
    args: &ConsumeArgs,
    format: &Format,
    mut offset: i64,
    out: &mut impl Write,
) -> Result<()> {
    let (topic, partition) = (args.topic.as_str(), args.partition);
    // A broker that answers a time lookup with a batch's first offset (not
    // Kafka's exact record) would start before the time asked: skip up to
    // the first record that reaches it.
    let mut skip_before = args.timestamp;
    let mut printed = 0usize;
    loop {
        let max_wait_ms = if args.follow { 1000 } else { 100 };
        let (records, high_watermark) = match client.fetch(topic, partition, offset, max_wait_ms) {
            Ok(fetched) => fetched,
            Err(e) => return Err(explain_fetch_error(client, topic, partition, offset, e)),
        };
        for record in records {
            offset = record.offset + 1;
            if skip_before.is_some_and(|ts| record.timestamp < ts) {
                continue;
            }
            skip_before = None;
            format.write(out, topic, partition, &record)?;
            printed += 1;
            if args.count.is_some_and(|n| printed >= n) {
                return Ok(());
            }
        }
        out.flush()?;
        if !args.follow && offset >= high_watermark {
            return Ok(());
        }
    }
}

/// A fetch refused because the log moved (retention, DeleteRecords) says
/// where the log is now.
fn explain_fetch_error(
    client: &mut Client,
    topic: &str,
    partition: i32,
    offset: i64,
    e: anyhow::Error,
) -> anyhow::Error {
    let start = client.list_offset(topic, partition, -2);
    let end = client.list_offset(topic, partition, -1);
    match (start, end) {
        (Ok(start), Ok(end)) if offset < start || offset > end => out_of_range(topic, partition, offset, start, end),
        _ => e,
    }
}

/// Whether `e` comes from writing to a pipe whose reader has gone.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Parses repeated key=value pairs.
pub fn pairs(items: &[String]) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => bail!("expected key=value, got {pair:?}"),
        })
        .collect()
}

/// One piece of a `consume -f` format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    KeyLength,
    ValueLength,
    Timestamp,
    Headers,
}

/// A kcat-style output format (`-f`), parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format(Vec<Piece>);

impl Format {
    pub fn parse(text: &str) -> Result<Format> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            let piece = match c {
                '%' => match chars.next() {
                    Some('%') => {
                        literal.push('%');
                        None
                    }
                    Some(d) => Some(directive(d)?),
                    None => bail!("-f ends with a lone %: write %% for a percent sign"),
                },
                '\\' => {
                    literal.push(match chars.next() {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some('\\') => '\\',
                        Some(other) => bail!("unknown escape \\{other} in -f: use \\n, \\t, \\r or \\\\"),
                        None => bail!("-f ends with a lone \\"),
                    });
                    None
                }
                c => {
                    literal.push(c);
                    None
                }
            };
            if let Some(piece) = piece {
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(piece);
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Format(pieces))
    }

    /// Writes `record` of `topic/partition` in this format.
    pub fn write(&self, out: &mut impl Write, topic: &str, partition: i32, record: &Record) -> std::io::Result<()> {
        let len = |b: &Option<Bytes>| b.as_ref().map_or(-1, |b| b.len() as i64);
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.write_all(text.as_bytes())?,
                Piece::Topic => out.write_all(topic.as_bytes())?,
                Piece::Partition => write!(out, "{partition}")?,
                Piece::Offset => write!(out, "{}", record.offset)?,
                Piece::Key => out.write_all(record.key.as_deref().unwrap_or_default())?,
                Piece::Value => out.write_all(record.value.as_deref().unwrap_or_default())?,
                Piece::KeyLength => write!(out, "{}", len(&record.key))?,
                Piece::ValueLength => write!(out, "{}", len(&record.value))?,
                Piece::Timestamp => write!(out, "{}", record.timestamp)?,
                Piece::Headers => write_headers(out, record)?,
            }
        }
        Ok(())
    }
}

fn directive(d: char) -> Result<Piece> {
    Ok(match d {
        't' => Piece::Topic,
        'p' => Piece::Partition,
        'o' => Piece::Offset,
        'k' => Piece::Key,
        's' => Piece::Value,
        'K' => Piece::KeyLength,
        'S' => Piece::ValueLength,
        'T' => Piece::Timestamp,
        'h' => Piece::Headers,
        other => bail!("unknown directive %{other} in -f: use %t %p %o %k %s %K %S %T %h or %%"),
    })
}

/// Headers as kcat prints them: `k=v,k2=v2` (a null value: `k`).
fn write_headers(out: &mut impl Write, record: &Record) -> std::io::Result<()> {
    for (i, (key, value)) in record.headers.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        out.write_all(key.as_bytes())?;
        if let Some(value) = value {
            out.write_all(b"=")?;
            out.write_all(value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print() {
        let mut record = new_record(7, 1234, Some(Bytes::from_static(b"k")), Bytes::from_static(b"v"));
        record.headers.insert(str_bytes("a"), Some(Bytes::from_static(b"1")));
        record.headers.insert(str_bytes("b"), None);
        let format = Format::parse("%t/%p@%o %k=%s %K %S %T [%h] 100%%\\t\\n").unwrap();
        let mut out = Vec::new();
        format.write(&mut out, "orders", 3, &record).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "orders/3@7 k=v 1 1 1234 [a=1,b] 100%\t\n");
        assert!(Format::parse("%x").is_err());
        assert!(Format::parse("50%").is_err());
        assert!(Format::parse("\\q").is_err());
    }

    #[test]
    fn typos_are_near() {
        assert_eq!(edit_distance("ordres", "orders"), 1);
        assert_eq!(edit_distance("orders", "orders"), 0);
        assert_eq!(edit_distance("events", "orders"), 5);
    }
}
