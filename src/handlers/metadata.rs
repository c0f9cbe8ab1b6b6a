//! Metadata: the live brokers, the active controller, and topics with their
//! partitions' leaders, epochs, replicas, ISR and offline replicas. Unknown topics are auto-created when
//! the broker and the request both allow it.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};

use super::{decode_body, FrameError};
use crate::broker::admin::AdminOp;
use crate::broker::metadata::{valid_topic_name, NO_LEADER};
use crate::broker::{Broker, ClusterMeta, TopicMeta};
use crate::protocol::{encode, str_bytes, Reply, Request};

/// Kafka's "authorized operations not requested" marker.
pub const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;
/// With no authorizer everything is allowed: the operations Kafka supports
/// on each resource type, as bits of Kafka's AclOperation codes.
const READ: i32 = 1 << 3;
const WRITE: i32 = 1 << 4;
const CREATE: i32 = 1 << 5;
const DELETE: i32 = 1 << 6;
const ALTER: i32 = 1 << 7;
const DESCRIBE: i32 = 1 << 8;
const CLUSTER_ACTION: i32 = 1 << 9;
const DESCRIBE_CONFIGS: i32 = 1 << 10;
const ALTER_CONFIGS: i32 = 1 << 11;
const IDEMPOTENT_WRITE: i32 = 1 << 12;
pub const TOPIC_OPERATIONS: i32 = READ | WRITE | CREATE | DELETE | ALTER | DESCRIBE | DESCRIBE_CONFIGS | ALTER_CONFIGS;
pub const CLUSTER_OPERATIONS: i32 =
    CREATE | ALTER | DESCRIBE | CLUSTER_ACTION | DESCRIBE_CONFIGS | ALTER_CONFIGS | IDEMPOTENT_WRITE;
pub const GROUP_OPERATIONS: i32 = READ | DESCRIBE | DELETE;
pub const CLUSTER_ID: &str = "spate-cluster";

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: MetadataRequest = decode_body(request)?;
    let version = request.version();
    // v0: an empty list means all topics; v1+: null means all topics.
    let wanted: Option<Vec<String>> = match body.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect()),
    };
    let auto_create = broker.config.auto_create_topics && (version < 4 || body.allow_auto_topic_creation);
    if let (Some(names), true) = (&wanted, auto_create) {
        auto_create_topics(broker, names).await;
    }
    let meta = broker.meta();
    let mut response = MetadataResponse::default();
    response.brokers = meta
        .live_brokers()
        .map(|b| {
            let mut node = MetadataResponseBroker::default();
            node.node_id = BrokerId(b.node_id);
            node.host = str_bytes(&b.host);
            node.port = b.port;
            node
        })
        .collect();
    response.cluster_id = Some(str_bytes(CLUSTER_ID));
    response.controller_id = BrokerId(meta.controller);
    // Cluster operations exist in v8..=10 only.
    response.cluster_authorized_operations =
        if body.include_cluster_authorized_operations { CLUSTER_OPERATIONS } else { OPERATIONS_NOT_REQUESTED };
    let topic_operations =
        if body.include_topic_authorized_operations { TOPIC_OPERATIONS } else { OPERATIONS_NOT_REQUESTED };
    response.topics = match wanted {
        None => meta.topics.values().map(|t| describe_topic(&meta, t, topic_operations)).collect(),
        Some(names) => names
            .iter()
            .map(|name| match meta.topic(name) {
                Some(topic) => describe_topic(&meta, topic, topic_operations),
                None => missing_topic(name),
            })
            .collect(),
    };
    Ok(encode(request, &response))
}

/// Creates the valid unknown topics among `names`, all in one metadata change.
async fn auto_create_topics(broker: &Rc<Broker>, names: &[String]) {
    let meta = broker.meta();
    let mut unknown: Vec<String> =
        names.iter().filter(|name| meta.topic(name).is_none() && auto_creatable(name)).cloned().collect();
    if unknown.is_empty() {
        return;
    }
    unknown.sort_unstable();
    unknown.dedup();
    let op = AdminOp::AutoCreateTopics { names: unknown, partitions: broker.config.default_partitions };
    if let Err(e) = broker.admin(op).await {
        // The topic list of the answer tells the client which topics exist.
        tracing::warn!("auto-creating topics: {}", e.message);
    }
}

fn describe_topic(meta: &ClusterMeta, topic: &TopicMeta, operations: i32) -> MetadataResponseTopic {
    let mut out = MetadataResponseTopic::default();
    out.name = Some(TopicName(str_bytes(&topic.name)));
    out.topic_id = uuid::Uuid::from_bytes(topic.id);
    out.topic_authorized_operations = operations;
    out.is_internal = topic.is_internal();
    out.partitions = (0..topic.partitions)
        .map(|p| {
            let state = PartitionView::of(meta, topic, p);
            let mut part = MetadataResponsePartition::default();
            part.partition_index = p;
            (part.error_code, part.leader_id, part.leader_epoch) = (state.error_code, state.leader, state.leader_epoch);
            (part.replica_nodes, part.isr_nodes, part.offline_replicas) = (state.replicas, state.isr, state.offline);
            part
        })
        .collect();
    out
}

/// A partition as Metadata and DescribeTopicPartitions show it.
pub struct PartitionView {
    /// LEADER_NOT_AVAILABLE when leaderless.
    pub error_code: i16,
    pub leader: BrokerId,
    pub leader_epoch: i32,
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
    /// Replicas on brokers that are fenced or gone.
    pub offline: Vec<BrokerId>,
}

impl PartitionView {
    pub fn of(meta: &ClusterMeta, topic: &TopicMeta, partition: i32) -> PartitionView {
        let state = topic.partition(partition);
        let live = |node: &i32| meta.brokers.get(node).is_some_and(|b| !b.fenced);
        let ids = |nodes: &mut dyn Iterator<Item = &i32>| nodes.map(|n| BrokerId(*n)).collect::<Vec<_>>();
        let leaderless = state.leader == NO_LEADER;
        PartitionView {
            error_code: if leaderless { ResponseError::LeaderNotAvailable.code() } else { 0 },
            leader: BrokerId(state.leader),
            leader_epoch: state.leader_epoch,
            replicas: ids(&mut state.replicas.iter()),
            isr: ids(&mut state.isr.iter()),
            offline: ids(&mut state.replicas.iter().filter(|n| !live(n))),
        }
    }
}

/// The error for a topic that does not exist: unknown, or an invalid name.
pub fn missing_topic_error(name: &str) -> i16 {
    if valid_topic_name(name) {
        ResponseError::UnknownTopicOrPartition.code()
    } else {
        ResponseError::InvalidTopicException.code()
    }
}

/// Internal topics are made by the broker itself, with their own configs.
fn auto_creatable(name: &str) -> bool {
    valid_topic_name(name) && name != crate::group::OFFSETS_TOPIC
}

fn missing_topic(name: &str) -> MetadataResponseTopic {
    let mut out = MetadataResponseTopic::default();
    out.name = Some(TopicName(str_bytes(name)));
    out.error_code = missing_topic_error(name);
    out.topic_authorized_operations = OPERATIONS_NOT_REQUESTED;
    out
}
