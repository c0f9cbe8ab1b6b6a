//! The bench's own topic and what it needs to know of the broker: create
//! (a unique name unless `--topic`), look up partitions and
//! `max.message.bytes`, find each partition's leader, list offsets (from
//! each partition's leader), read the broker's configuration (best effort),
//! delete afterwards.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::future::{select, Either};
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

/// The first of `addresses` that connects and answers a Metadata request
/// within a few seconds: the one the admin requests go to.
pub async fn first_answering(addresses: &[String]) -> Result<String> {
    const PATIENCE: Duration = Duration::from_secs(5);
    let mut failures = Vec::new();
    for addr in addresses {
        let answer = async {
            let conn = Conn::connect(addr).await?;
            metadata(&conn, None).await
        };
        let outcome = match select(Box::pin(answer), Box::pin(glommio::timer::sleep(PATIENCE))).await {
            Either::Left((answer, _)) => answer.map(|_| ()),
            Either::Right(_) => Err(anyhow!("no answer within {} s", PATIENCE.as_secs())),
        };
        match outcome {
            Ok(()) => return Ok(addr.clone()),
            Err(e) => failures.push(format!("{addr}: {e:#}")),
        }
    }
    bail!("no broker answered: {}", failures.join("; "))
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

/// Where the topic's partitions are led, and how to reach their leaders.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Node id to host:port, as Metadata lists the brokers; when it lists
    /// only one, the address the run was given (so that a single broker is
    /// reached exactly as before, whatever it advertises).
    pub nodes: BTreeMap<i32, String>,
    /// The leader's node id of each partition (indexed by partition).
    pub leaders: Vec<i32>,
    /// Replicas of the partition with the fewest.
    pub replication_factor: usize,
}

impl Layout {
    /// The address of `partition`'s leader.
    pub fn leader_addr(&self, partition: i32) -> &str {
        &self.nodes[&self.leaders[partition as usize]]
    }

    /// Each partition's leader address, indexed by partition.
    pub fn leader_addrs(&self) -> Vec<String> {
        (0..self.leaders.len() as i32).map(|p| self.leader_addr(p).to_string()).collect()
    }

    /// The nodes that lead partitions, in node id order, with the
    /// partitions each leads (ascending).
    pub fn by_leader(&self) -> Vec<(i32, String, Vec<i32>)> {
        let mut led: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for (p, node) in self.leaders.iter().enumerate() {
            led.entry(*node).or_default().push(p as i32);
        }
        led.into_iter().map(|(node, partitions)| (node, self.nodes[&node].clone(), partitions)).collect()
    }
}

/// How long a new topic may take until every partition has a leader that
/// answers for it.
const LEADERS_PATIENCE: Duration = Duration::from_secs(30);

/// The topic's layout once every partition has a leader that answers for
/// it (asked through `addr`; a ListOffsets to each leader checks that it
/// knows itself leader), retrying while a new topic settles.
pub async fn layout(addr: &str, topic: &str, partitions: i32) -> Result<Layout> {
    let conn = Conn::connect(addr).await?;
    let deadline = Instant::now() + LEADERS_PATIENCE;
    loop {
        let attempt = async {
            let layout = try_layout(&conn, addr, topic, partitions).await?;
            offsets(&layout, topic, -1).await?;
            Ok::<_, anyhow::Error>(layout)
        };
        match attempt.await {
            Ok(layout) => return Ok(layout),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "waiting {} s for every partition of {topic} to have a leader",
                    LEADERS_PATIENCE.as_secs()
                )))
            }
            Err(_) => glommio::timer::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The layout as Metadata shows it now; an error while a partition has no
/// (live) leader.
async fn try_layout(conn: &Conn, addr: &str, name: &str, partitions: i32) -> Result<Layout> {
    let resp = metadata(conn, Some(name)).await?;
    let mut nodes: BTreeMap<i32, String> =
        resp.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port))).collect();
    if nodes.len() == 1 {
        nodes.values_mut().for_each(|a| *a = addr.to_string());
    }
    let topic = resp.topics.first().context("empty metadata response")?;
    check(topic.error_code, &format!("metadata of {name}"))?;
    let mut leaders = vec![-1; partitions as usize];
    let mut replication_factor = usize::MAX;
    for p in &topic.partitions {
        check(p.error_code, &format!("metadata of {name} partition {}", p.partition_index))?;
        if let Some(slot) = usize::try_from(p.partition_index).ok().and_then(|i| leaders.get_mut(i)) {
            *slot = p.leader_id.0;
            replication_factor = replication_factor.min(p.replica_nodes.len());
        }
    }
    if let Some(p) = leaders.iter().position(|l| !nodes.contains_key(l)) {
        bail!("partition {p} of {name} has no live leader (leader {})", leaders[p]);
    }
    Ok(Layout { nodes, leaders, replication_factor })
}

/// Latest (-1) or earliest (-2) offsets of every partition, each asked of
/// its leader.
pub async fn offsets(layout: &Layout, topic: &str, which: i64) -> Result<Vec<(i32, i64)>> {
    let mut out = Vec::new();
    for (_, addr, partitions) in layout.by_leader() {
        out.extend(offsets_at(&addr, topic, &partitions, which).await?);
    }
    out.sort_unstable();
    Ok(out)
}

/// Latest (-1) or earliest (-2) offsets of `partitions`, asked of `addr`.
async fn offsets_at(addr: &str, topic: &str, partitions: &[i32], which: i64) -> Result<Vec<(i32, i64)>> {
    let conn = Conn::connect(addr).await?;
    let mut t = list_offsets_request::ListOffsetsTopic::default();
    t.name = TopicName(s(topic));
    t.partitions = partitions
        .iter()
        .map(|&p| {
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
            check(p.error_code, &format!("list offsets of partition {} at {addr}", p.partition_index))?;
            out.push((p.partition_index, p.offset));
        }
    }
    Ok(out)
}
