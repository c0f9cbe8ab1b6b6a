//! DescribeTopicPartitions (KIP-966): topics and their partitions, paged by
//! a cursor, as newer Java admin clients describe topics. Topics come in
//! name order; at most `response_partition_limit` partitions (capped by
//! `describe_topic_partitions_limit`) per answer, and `next_cursor` says
//! where the next page starts.

use std::rc::Rc;

use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::{DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, TopicName};

use super::metadata::{missing_topic_error, PartitionView, TOPIC_OPERATIONS};
use super::{decode_body, FrameError};
use crate::broker::{Broker, ClusterMeta, TopicMeta};
use crate::protocol::{encode, str_bytes, Reply, Request};

pub fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: DescribeTopicPartitionsRequest = decode_body(request)?;
    let meta = broker.meta();
    // Empty asks for every topic.
    let mut names: Vec<String> = if body.topics.is_empty() {
        meta.topics.keys().cloned().collect()
    } else {
        body.topics.iter().map(|t| t.name.0.to_string()).collect()
    };
    names.sort_unstable();
    names.dedup();
    let (start_topic, start_partition) = match &body.cursor {
        Some(cursor) => (cursor.topic_name.0.to_string(), cursor.partition_index),
        None => (String::new(), 0),
    };
    // As Kafka: a cursor must name a listed topic and a valid partition;
    // otherwise every listed topic is answered INVALID_REQUEST.
    let listed = body.topics.is_empty() || names.contains(&start_topic);
    if body.cursor.is_some() && (!listed || start_partition < 0) {
        let mut response = DescribeTopicPartitionsResponse::default();
        response.topics = body.topics.iter().map(|t| invalid_request(t.name.0.as_str())).collect();
        return Ok(encode(request, &response));
    }
    let limit = body.response_partition_limit.clamp(1, broker.config.describe_topic_partitions_limit);
    let mut budget = limit as usize;
    let mut response = DescribeTopicPartitionsResponse::default();
    for name in names.iter().filter(|n| **n >= start_topic) {
        let Some(topic) = meta.topic(name) else {
            response.topics.push(missing_topic(name));
            continue;
        };
        if budget == 0 {
            response.next_cursor = Some(cursor(name, 0));
            break;
        }
        let first = if *name == start_topic { start_partition } else { 0 };
        let end = topic.partitions.min(first.saturating_add(budget as i32));
        response.topics.push(describe_topic(&meta, topic, first, end));
        budget -= (end - first).max(0) as usize;
        if end < topic.partitions {
            response.next_cursor = Some(cursor(name, end));
            break;
        }
    }
    Ok(encode(request, &response))
}

fn cursor(topic: &str, partition: i32) -> Cursor {
    let mut cursor = Cursor::default();
    cursor.topic_name = TopicName(str_bytes(topic));
    cursor.partition_index = partition;
    cursor
}

/// Partitions `first..end` of `topic`.
fn describe_topic(meta: &ClusterMeta, topic: &TopicMeta, first: i32, end: i32) -> DescribeTopicPartitionsResponseTopic {
    let mut out = DescribeTopicPartitionsResponseTopic::default();
    out.name = Some(TopicName(str_bytes(&topic.name)));
    out.topic_id = uuid::Uuid::from_bytes(topic.id);
    out.is_internal = topic.is_internal();
    out.topic_authorized_operations = TOPIC_OPERATIONS;
    out.partitions = (first..end)
        .map(|p| {
            let state = PartitionView::of(meta, topic, p);
            let mut part = DescribeTopicPartitionsResponsePartition::default();
            part.partition_index = p;
            (part.error_code, part.leader_id, part.leader_epoch) = (state.error_code, state.leader, state.leader_epoch);
            (part.replica_nodes, part.isr_nodes, part.offline_replicas) = (state.replicas, state.isr, state.offline);
            // No eligible leader replicas (KIP-966 ELR is not kept).
            part.eligible_leader_replicas = Some(Vec::new());
            part.last_known_elr = Some(Vec::new());
            part
        })
        .collect();
    out
}

fn invalid_request(name: &str) -> DescribeTopicPartitionsResponseTopic {
    let mut out = DescribeTopicPartitionsResponseTopic::default();
    out.name = Some(TopicName(str_bytes(name)));
    out.error_code = kafka_protocol::error::ResponseError::InvalidRequest.code();
    out
}

fn missing_topic(name: &str) -> DescribeTopicPartitionsResponseTopic {
    let mut out = DescribeTopicPartitionsResponseTopic::default();
    out.name = Some(TopicName(str_bytes(name)));
    out.error_code = missing_topic_error(name);
    out
}
