//! CreateTopics: validated and applied by the controller shard, then
//! installed on every shard before the answer.

use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};

use super::{decode_body, FrameError};
use crate::broker::admin::AdminOp;
use crate::broker::Broker;
use crate::protocol::{encode, str_bytes, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: CreateTopicsRequest = decode_body(request)?;
    let mut seen = HashSet::new();
    let duplicated: HashSet<String> =
        body.topics.iter().filter(|t| !seen.insert(t.name.0.to_string())).map(|t| t.name.0.to_string()).collect();
    // All at once, so that the controller creates them in one commit.
    let creations = body.topics.iter().map(|topic| create(broker, topic, &duplicated, body.validate_only));
    let results = futures::future::join_all(creations).await;
    let meta = broker.meta();
    let mut response = CreateTopicsResponse::default();
    for (topic, result) in body.topics.iter().zip(results) {
        let mut out = CreatableTopicResult::default();
        out.name = topic.name.clone();
        match result {
            Ok((partitions, factor)) => {
                out.num_partitions = partitions;
                out.replication_factor = factor;
                if let Some(t) = meta.topic(topic.name.0.as_str()) {
                    out.topic_id = uuid::Uuid::from_bytes(t.id);
                }
            }
            Err((code, message)) => {
                out.error_code = code;
                out.error_message = Some(str_bytes(&message));
                out.num_partitions = -1;
                out.replication_factor = -1;
            }
        }
        response.topics.push(out);
    }
    Ok(encode(request, &response))
}

/// Checks and creates one topic; returns its partition count and replication factor.
async fn create(
    broker: &Rc<Broker>,
    topic: &CreatableTopic,
    duplicated: &HashSet<String>,
    validate_only: bool,
) -> Result<(i32, i16), (i16, String)> {
    let name = topic.name.0.to_string();
    if duplicated.contains(&name) {
        return Err((ResponseError::InvalidRequest.code(), format!("topic {name:?} appears more than once")));
    }
    let factor = match topic.replication_factor {
        -1 => broker.config.default_replication_factor,
        n if n >= 1 => n,
        n => {
            return Err((
                ResponseError::InvalidReplicationFactor.code(),
                format!("replication factor must be at least 1 (or -1 for the default), not {n}"),
            ))
        }
    };
    let mut assignments = topic.assignments.clone();
    assignments.sort_by_key(|a| a.partition_index);
    if assignments.iter().enumerate().any(|(i, a)| a.partition_index != i as i32) {
        return Err((
            ResponseError::InvalidReplicaAssignment.code(),
            "assignments must name partitions 0, 1, 2, ... once each".to_string(),
        ));
    }
    let assignment: Vec<Vec<i32>> = assignments.iter().map(|a| a.broker_ids.iter().map(|b| b.0).collect()).collect();
    let partitions = match (topic.assignments.len(), topic.num_partitions) {
        (0, -1) => broker.config.default_partitions,
        (0, n) => n,
        (n, _) => n as i32,
    };
    let configs: BTreeMap<String, String> =
        topic.configs.iter().filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string()))).collect();
    let factor = assignment.first().map_or(factor, |replicas| replicas.len() as i16);
    let replication_factor = factor as usize;
    let op = AdminOp::CreateTopic { name, partitions, replication_factor, assignment, configs, validate_only };
    broker.admin(op).await.map_err(|e| (e.code, e.message))?;
    Ok((partitions, factor))
}
