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
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;
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
    response.cluster_authorized_operations = OPERATIONS_NOT_REQUESTED;
    response.topics = match wanted {
        None => meta.topics.values().map(|t| describe_topic(&meta, t)).collect(),
        Some(names) => names
            .iter()
            .map(|name| match meta.topic(name) {
                Some(topic) => describe_topic(&meta, topic),
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

fn describe_topic(meta: &ClusterMeta, topic: &TopicMeta) -> MetadataResponseTopic {
    let live = |node: &i32| meta.brokers.get(node).is_some_and(|b| !b.fenced);
    let ids = |nodes: &[i32]| nodes.iter().map(|n| BrokerId(*n)).collect::<Vec<_>>();
    let mut out = MetadataResponseTopic::default();
    out.name = Some(TopicName(str_bytes(&topic.name)));
    out.topic_id = uuid::Uuid::from_bytes(topic.id);
    out.topic_authorized_operations = OPERATIONS_NOT_REQUESTED;
    out.is_internal = topic.name == crate::group::OFFSETS_TOPIC;
    out.partitions = topic
        .assignment
        .iter()
        .enumerate()
        .map(|(p, state)| {
            let mut part = MetadataResponsePartition::default();
            part.partition_index = p as i32;
            part.leader_id = BrokerId(state.leader);
            if state.leader == NO_LEADER {
                part.error_code = ResponseError::LeaderNotAvailable.code();
            }
            part.leader_epoch = state.leader_epoch;
            part.replica_nodes = ids(&state.replicas);
            part.isr_nodes = ids(&state.isr);
            let offline: Vec<i32> = state.replicas.iter().copied().filter(|n| !live(n)).collect();
            part.offline_replicas = ids(&offline);
            part
        })
        .collect();
    out
}

/// Internal topics are made by the broker itself, with their own configs.
fn auto_creatable(name: &str) -> bool {
    valid_topic_name(name) && name != crate::group::OFFSETS_TOPIC
}

fn missing_topic(name: &str) -> MetadataResponseTopic {
    let mut out = MetadataResponseTopic::default();
    out.name = Some(TopicName(str_bytes(name)));
    out.error_code = if valid_topic_name(name) {
        ResponseError::UnknownTopicOrPartition.code()
    } else {
        ResponseError::InvalidTopicException.code()
    };
    out.topic_authorized_operations = OPERATIONS_NOT_REQUESTED;
    out
}
