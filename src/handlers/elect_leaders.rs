//! ElectLeaders (KIP-460): moves each named partition's leadership to its
//! preferred replica (the first listed) when that replica is live and in
//! sync, or, for an unclean election, gives a leaderless partition any live
//! replica. The controller makes all the changes in one commit; each
//! partition is then answered from the metadata it installed.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse};

use super::{decode_body, FrameError};
use crate::broker::admin::AdminOp;
use crate::broker::metadata::NO_LEADER;
use crate::broker::{Broker, ClusterMeta};
use crate::protocol::{encode, str_bytes, Reply, Request};

/// ElectionType 1: unclean (0 is preferred).
const UNCLEAN: i8 = 1;

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: ElectLeadersRequest = decode_body(request)?;
    let unclean = request.version() >= 1 && body.election_type == UNCLEAN;
    let before = broker.meta();
    // Null: every partition (Kafka: every partition with a preferred leader to elect).
    let named: Vec<(String, i32)> = match &body.topic_partitions {
        Some(topics) => {
            topics.iter().flat_map(|t| t.partitions.iter().map(move |p| (t.topic.0.to_string(), *p))).collect()
        }
        None => before.topics.values().flat_map(|t| (0..t.partitions).map(move |p| (t.name.clone(), p))).collect(),
    };
    let wanted: Vec<(String, i32)> =
        named.iter().filter(|(t, p)| precheck(&before, t, *p, unclean).is_ok()).cloned().collect();
    let mut top_error = 0;
    if !wanted.is_empty() {
        if let Err(e) = broker.admin(AdminOp::ElectLeaders { partitions: wanted.clone(), unclean }).await {
            top_error = e.code;
        }
    }
    let after = broker.meta();
    let mut response = ElectLeadersResponse::default();
    for (topic, partition) in &named {
        let (code, message) = match precheck(&before, topic, *partition, unclean) {
            Err(refused) => refused,
            Ok(()) if top_error != 0 => (top_error, "the controller did not make the change".to_string()),
            Ok(()) => outcome(&after, topic, *partition, unclean),
        };
        let mut result = PartitionResult::default();
        result.partition_id = *partition;
        result.error_code = code;
        result.error_message = (code != 0).then(|| str_bytes(&message));
        match response.replica_election_results.iter_mut().find(|r| r.topic.0.as_str() == topic) {
            Some(r) => r.partition_result.push(result),
            None => {
                let mut r = ReplicaElectionResult::default();
                r.topic = kafka_protocol::messages::TopicName(str_bytes(topic));
                r.partition_result.push(result);
                response.replica_election_results.push(r);
            }
        }
    }
    Ok(encode(request, &response))
}

/// Whether an election of `topic`-`partition` is wanted: Err carries the
/// answer when it is not (unknown, already led as asked, no candidate).
fn precheck(meta: &ClusterMeta, topic: &str, partition: i32, unclean: bool) -> Result<(), (i16, String)> {
    let Some(t) = meta.topic(topic).filter(|t| partition >= 0 && partition < t.partitions) else {
        return Err((ResponseError::UnknownTopicOrPartition.code(), format!("no partition {topic}-{partition}")));
    };
    let state = t.partition(partition);
    let live = |n: &i32| meta.brokers.get(n).is_some_and(|b| !b.fenced);
    let not_needed = (ResponseError::ElectionNotNeeded.code(), "the partition is led as asked".to_string());
    if unclean {
        if state.leader != NO_LEADER {
            return Err(not_needed);
        }
        if !state.replicas.iter().any(live) {
            return Err((ResponseError::EligibleLeadersNotAvailable.code(), "no live replica".to_string()));
        }
        return Ok(());
    }
    let preferred = state.replicas[0];
    if state.leader == preferred {
        return Err(not_needed);
    }
    if !live(&preferred) || !state.isr.contains(&preferred) {
        return Err((
            ResponseError::PreferredLeaderNotAvailable.code(),
            format!("preferred replica {preferred} is not live and in sync"),
        ));
    }
    Ok(())
}

/// The answer once the controller has committed the elections.
fn outcome(meta: &ClusterMeta, topic: &str, partition: i32, unclean: bool) -> (i16, String) {
    let Some(state) = meta.topic(topic).filter(|t| partition < t.partitions).map(|t| t.partition(partition)) else {
        return (ResponseError::UnknownTopicOrPartition.code(), "deleted meanwhile".to_string());
    };
    let elected = if unclean { state.leader != NO_LEADER } else { state.leader == state.replicas[0] };
    if elected {
        (0, String::new())
    } else {
        (ResponseError::PreferredLeaderNotAvailable.code(), "the replica could not be elected".to_string())
    }
}
