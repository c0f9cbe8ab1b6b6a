//! rpk-style commands: `spate topic ...`, `spate produce`, `spate consume`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use anyhow::{bail, Result};
use bytes::Bytes;
use clap::{Args, Subcommand};
use kafka_protocol::messages::*;

use crate::client::{check, compression_by_name, str_bytes, Client};

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(short, long, default_value_t = -1)]
        partitions: i32,
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

#[derive(Args, Debug)]
pub struct ProduceArgs {
    pub topic: String,
    #[arg(short, long, default_value_t = 0)]
    pub partition: i32,
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
    #[arg(short, long)]
    pub follow: bool,
}

/// Metadata of `topics` (all if None). Looking never creates a topic, even
/// on a broker that auto-creates them.
pub fn metadata(client: &mut Client, topics: Option<Vec<&str>>) -> Result<MetadataResponse> {
    let mut req = MetadataRequest::default();
    req.allow_auto_topic_creation = false;
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

pub fn topic(brokers: &str, command: TopicCommand) -> Result<()> {
    let mut client = Client::connect(brokers)?;
    match command {
        TopicCommand::Create { name, partitions, configs } => {
            let configs: Vec<(String, String)> = pairs(&configs)?.into_iter().collect();
            let created = client.create_topic(&name, partitions, &configs)?;
            println!("created topic {name} with {created} partitions");
        }
        TopicCommand::List => {
            let resp = metadata(&mut client, None)?;
            println!("{:<40} {:>10}", "NAME", "PARTITIONS");
            for t in resp.topics {
                println!("{:<40} {:>10}", t.name.map(|n| n.0.to_string()).unwrap_or_default(), t.partitions.len());
            }
        }
        TopicCommand::Describe { name } => describe(&mut client, &name)?,
        TopicCommand::Delete { name } => {
            let mut req = DeleteTopicsRequest::default();
            req.topic_names = vec![TopicName(str_bytes(&name))];
            req.timeout_ms = 30_000;
            let resp: DeleteTopicsResponse = client.call(ApiKey::DeleteTopics, 4, &req)?;
            for r in resp.responses {
                check(r.error_code, &format!("delete {name}"))?;
            }
            println!("deleted topic {name}");
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
            println!("altered configs of {name}");
        }
    }
    Ok(())
}

fn describe(client: &mut Client, name: &str) -> Result<()> {
    let resp = metadata(client, Some(vec![name]))?;
    let Some(topic) = resp.topics.into_iter().next() else { bail!("no metadata for {name}") };
    check(topic.error_code, &format!("describe {name}"))?;
    println!("topic {name}: {} partitions", topic.partitions.len());
    println!("{:>9} {:>7} {:>7} {:>14} {:>14}", "PARTITION", "LEADER", "EPOCH", "LOG-START", "HIGH-WATERMARK");
    for p in &topic.partitions {
        let start = client.list_offset(name, p.partition_index, -2)?;
        let end = client.list_offset(name, p.partition_index, -1)?;
        println!("{:>9} {:>7} {:>7} {:>14} {:>14}", p.partition_index, p.leader_id.0, p.leader_epoch, start, end);
    }
    let mut resource = describe_configs_request::DescribeConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = str_bytes(name);
    resource.configuration_keys = None;
    let mut req = DescribeConfigsRequest::default();
    req.resources = vec![resource];
    let resp: DescribeConfigsResponse = client.call(ApiKey::DescribeConfigs, 4, &req)?;
    println!("configs:");
    for result in resp.results {
        check(result.error_code, "describe configs")?;
        for c in result.configs {
            let source = if c.config_source == 1 { "topic" } else { "default" };
            println!("  {:<24} {:<20} ({source})", c.name.as_str(), c.value.as_deref().unwrap_or(""));
        }
    }
    Ok(())
}

pub fn produce(brokers: &str, args: ProduceArgs) -> Result<()> {
    let mut client = Client::connect(brokers)?;
    let compression = compression_by_name(&args.compression)?;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut sent = 0usize;
    loop {
        let mut records = Vec::with_capacity(args.batch);
        for line in lines.by_ref().take(args.batch.max(1)) {
            let line = line?;
            records.push(match args.key_separator.as_deref().and_then(|sep| line.split_once(sep)) {
                Some((k, v)) => (Some(Bytes::copy_from_slice(k.as_bytes())), Bytes::copy_from_slice(v.as_bytes())),
                None => (None, Bytes::copy_from_slice(line.as_bytes())),
            });
        }
        if records.is_empty() {
            break;
        }
        client.produce(&args.topic, args.partition, &records, args.acks, compression)?;
        sent += records.len();
    }
    eprintln!("produced {sent} records to {}/{}", args.topic, args.partition);
    Ok(())
}

pub fn consume(brokers: &str, args: ConsumeArgs) -> Result<()> {
    let mut client = Client::connect(brokers)?;
    let mut offset = match (args.timestamp, args.offset.as_str()) {
        (Some(ts), _) => client.list_offset(&args.topic, args.partition, ts)?,
        (None, "beginning") => client.list_offset(&args.topic, args.partition, -2)?,
        (None, "end") => client.list_offset(&args.topic, args.partition, -1)?,
        (None, n) => n.parse()?,
    };
    if offset < 0 {
        return Ok(()); // no record at or after that time
    }
    let mut printed = 0usize;
    let out = std::io::stdout();
    let mut out = out.lock();
    loop {
        let max_wait_ms = if args.follow { 1000 } else { 100 };
        let (records, high_watermark) = client.fetch(&args.topic, args.partition, offset, max_wait_ms)?;
        for record in records {
            let key = record.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            let value = record.value.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            writeln!(out, "{}\t{}\t{}", record.offset, key, value)?;
            offset = record.offset + 1;
            printed += 1;
            if args.count.is_some_and(|n| printed >= n) {
                return Ok(());
            }
        }
        if !args.follow && offset >= high_watermark {
            return Ok(());
        }
    }
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
