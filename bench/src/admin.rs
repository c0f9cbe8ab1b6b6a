//! The bench's own topic and what it needs to know of the broker: create
//! (a unique name unless `--topic`), look up partitions and
//! `max.message.bytes`, list offsets, read the broker's configuration
//! (best effort), delete afterwards.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    create_topics_request, describe_configs_request, list_offsets_request, metadata_request, ApiKey, BrokerId,
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::conn::{check, Conn};

/// Kafka's default `max.message.bytes` (1 MiB + the 12-byte log overhead),
/// used when the broker does not say.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

/// The topic a run writes to.
#[derive(Debug, Clone)]
pub struct Topic {
    pub name: String,
    pub partitions: i32,
    /// Created by this run (deleted at its end unless named with --topic).
    pub created: bool,
    pub max_message_bytes: usize,
}

/// A topic name no earlier run used: the time and the process id.
pub fn unique_topic_name() -> String {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("spate-bench-{millis}-{}", std::process::id())
}

/// Creates `name` with `partitions` and `replicas` replicas of each (-1:
/// the broker's default); an existing topic is used as it is unless
/// `must_create` (a unique name that exists is someone else's).
pub async fn prepare_topic(addr: &str, name: &str, partitions: i32, replicas: i16, must_create: bool) -> Result<Topic> {
    let conn = Conn::connect(addr).await?;
    let created = create_topic(&conn, name, partitions, replicas, must_create).await?;
    if !created && must_create {
        bail!("topic {name} already exists");
    }
    let partitions = if created { partitions } else { partition_count(&conn, name).await? };
    let max_message_bytes = max_message_bytes(&conn, name).await;
    Ok(Topic { name: name.to_string(), partitions, created, max_message_bytes })
}

/// How long admin requests are retried while the cluster elects a
/// controller (NOT_CONTROLLER), as Kafka's admin client does.
const CONTROLLER_PATIENCE: Duration = Duration::from_secs(30);

/// True if created, false if it already existed. `unique`: the name is
/// this run's own, so if it exists after a retry, the earlier attempt made it.
async fn create_topic(conn: &Conn, name: &str, partitions: i32, replicas: i16, unique: bool) -> Result<bool> {
    let mut topic = create_topics_request::CreatableTopic::default();
    topic.name = TopicName(s(name));
    topic.num_partitions = partitions;
    topic.replication_factor = replicas;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![topic];
    req.timeout_ms = 60_000;
    let deadline = Instant::now() + CONTROLLER_PATIENCE;
    let mut retried = false;
    loop {
        let resp: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, 5, &req).await?;
        let code = resp.topics.first().map_or(0, |t| t.error_code);
        if code == ResponseError::NotController.code() && Instant::now() < deadline {
            retried = true;
            glommio::timer::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if code == ResponseError::TopicAlreadyExists.code() {
            return Ok(retried && unique);
        }
        check(code, &format!("creating topic {name}"))?;
        return Ok(true);
    }
}

async fn metadata(conn: &Conn, topic: Option<&str>) -> Result<MetadataResponse> {
    let mut req = MetadataRequest::default();
    req.topics = topic.map(|name| {
        let mut t = metadata_request::MetadataRequestTopic::default();
        t.name = Some(TopicName(s(name)));
        vec![t]
    });
    req.allow_auto_topic_creation = false;
    conn.call(ApiKey::Metadata, 4, &req).await
}

async fn partition_count(conn: &Conn, name: &str) -> Result<i32> {
    let resp = metadata(conn, Some(name)).await?;
    let topic = resp.topics.first().context("empty metadata response")?;
    check(topic.error_code, &format!("metadata of {name}"))?;
    Ok(topic.partitions.len() as i32)
}

async fn describe(
    conn: &Conn,
    resource_type: i8,
    name: &str,
    keys: Option<&[&str]>,
) -> Result<BTreeMap<String, String>> {
    let mut resource = describe_configs_request::DescribeConfigsResource::default();
    resource.resource_type = resource_type;
    resource.resource_name = s(name);
    resource.configuration_keys = keys.map(|keys| keys.iter().map(|k| s(k)).collect());
    let mut req = DescribeConfigsRequest::default();
    req.resources = vec![resource];
    let resp: DescribeConfigsResponse = conn.call(ApiKey::DescribeConfigs, 1, &req).await?;
    let result = resp.results.first().context("empty DescribeConfigs response")?;
    check(result.error_code, &format!("describe configs of {name}"))?;
    Ok(result
        .configs
        .iter()
        .map(|c| (c.name.to_string(), c.value.as_ref().map_or_else(String::new, |v| v.to_string())))
        .collect())
}

/// The topic's `max.message.bytes`, else the broker's `message.max.bytes`,
/// else Kafka's default.
async fn max_message_bytes(conn: &Conn, topic: &str) -> usize {
    let parse = |configs: Result<BTreeMap<String, String>>, key: &str| {
        configs.ok().and_then(|c| c.get(key).and_then(|v| v.parse::<usize>().ok()))
    };
    if let Some(n) =
        parse(describe(conn, RESOURCE_TOPIC, topic, Some(&["max.message.bytes"])).await, "max.message.bytes")
    {
        return n;
    }
    let broker = broker_id(conn).await.unwrap_or(0);
    let configs = describe(conn, RESOURCE_BROKER, &broker.to_string(), Some(&["message.max.bytes"])).await;
    parse(configs, "message.max.bytes").unwrap_or(DEFAULT_MAX_MESSAGE_BYTES)
}

/// The node id of the broker we talk to (the controller, or the first listed).
async fn broker_id(conn: &Conn) -> Result<i32> {
    let resp = metadata(conn, None).await?;
    let controller = resp.controller_id.0;
    if resp.brokers.iter().any(|b| b.node_id.0 == controller) {
        return Ok(controller);
    }
    Ok(resp.brokers.first().context("no brokers in metadata")?.node_id.0)
}

/// The broker's configuration as DescribeConfigs shows it; an error in
/// words if it does not answer (the report records either).
pub async fn broker_config(addr: &str) -> serde_json::Value {
    let described = async {
        let conn = Conn::connect(addr).await?;
        let id = broker_id(&conn).await?;
        describe(&conn, RESOURCE_BROKER, &id.to_string(), None).await
    };
    match described.await {
        Ok(configs) => serde_json::json!(configs),
        Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
    }
}

pub async fn delete_topic(addr: &str, name: &str) -> Result<()> {
    let conn = Conn::connect(addr).await?;
    let mut req = DeleteTopicsRequest::default();
    req.topic_names = vec![TopicName(s(name))];
    req.timeout_ms = 60_000;
    let deadline = Instant::now() + CONTROLLER_PATIENCE;
    let mut retried = false;
    loop {
        let resp: DeleteTopicsResponse = conn.call(ApiKey::DeleteTopics, 4, &req).await?;
        let code = resp.responses.iter().map(|r| r.error_code).find(|&c| c != 0).unwrap_or(0);
        if code == ResponseError::NotController.code() && Instant::now() < deadline {
            retried = true;
            glommio::timer::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if retried && code == ResponseError::UnknownTopicOrPartition.code() {
            return Ok(()); // the earlier attempt deleted it
        }
        return check(code, &format!("deleting topic {name}"));
    }
}

/// Latest (-1) or earliest (-2) offsets of partitions 0..`partitions`.
pub async fn offsets(addr: &str, topic: &str, partitions: i32, which: i64) -> Result<Vec<(i32, i64)>> {
    let conn = Conn::connect(addr).await?;
    let mut t = list_offsets_request::ListOffsetsTopic::default();
    t.name = TopicName(s(topic));
    t.partitions = (0..partitions)
        .map(|p| {
            let mut part = list_offsets_request::ListOffsetsPartition::default();
            part.partition_index = p;
            part.timestamp = which;
            part.current_leader_epoch = -1;
            part
        })
        .collect();
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.topics = vec![t];
    let resp: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, 7, &req).await?;
    let mut out = Vec::new();
    for t in resp.topics {
        for p in t.partitions {
            check(p.error_code, "list offsets")?;
            out.push((p.partition_index, p.offset));
        }
    }
    out.sort_unstable();
    Ok(out)
}
