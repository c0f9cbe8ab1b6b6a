//! Produce: each partition's record batches go, still encoded and uncopied,
//! to the shard owning the partition; results are gathered in request order.
//! acks=0 requests get no response, and on error the connection is closed.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse};

use super::{decode_body, error_code, Applied, FrameError};
use crate::broker::{durability_for_acks, Broker, ClusterMeta, PartitionError, PartitionOk, PartitionOp};
use crate::protocol::{encode, Reply, Request};

/// `applied` is dropped once every partition's batch has its offsets (or
/// failed), before the waits for durability; with acks=0, once answered.
pub async fn handle(broker: &Rc<Broker>, request: &Request, applied: Applied) -> Result<Reply, FrameError> {
    let body: ProduceRequest = decode_body(request)?;
    let acks = body.acks;
    let body = &body;
    let meta = broker.meta();
    let mut pending = Vec::new();
    let mut appends = Vec::new();
    for topic in &body.topic_data {
        let known = meta.topic(topic.name.0.as_str());
        for partition in &topic.partition_data {
            let (appended, append_done) = futures::channel::oneshot::channel();
            appends.push(append_done);
            let outcome = async move {
                let Some(topic) = known.filter(|t| partition.index >= 0 && partition.index < t.partitions) else {
                    return Err(PartitionError::UnknownTopicOrPartition);
                };
                if topic.is_internal() {
                    return Err(PartitionError::InternalTopic); // as Kafka: only the broker writes there
                }
                let Some(records) = partition.records.clone() else {
                    return Err(PartitionError::InvalidRecord);
                };
                if !matches!(acks, -1..=1) {
                    return Ok(None);
                }
                let timeout_ms = body.timeout_ms.max(0) as u64;
                let op = PartitionOp::Produce { records, durability: durability_for_acks(acks), appended, timeout_ms };
                broker.on_partition(topic.tp(partition.index), op).await.map(Some)
            };
            pending.push(outcome);
        }
    }
    // acks=0: a failure's only answer is closing the connection, so nothing
    // after this request may take effect before its results are known.
    let (applied_at_append, _applied_at_end) = if acks == 0 { (None, Some(applied)) } else { (Some(applied), None) };
    let took_effect = async move {
        futures::future::join_all(appends).await;
        drop(applied_at_append);
    };
    let (_, results) = futures::join!(took_effect, futures::future::join_all(pending));
    let mut results = results.into_iter();

    let mut response = ProduceResponse::default();
    let mut failed = None;
    let mut leaders = Vec::new();
    for topic in &body.topic_data {
        let mut topic_out = TopicProduceResponse::default();
        topic_out.name = topic.name.clone();
        for partition in &topic.partition_data {
            let mut out = PartitionProduceResponse::default();
            out.index = partition.index;
            out.base_offset = -1;
            out.log_append_time_ms = -1;
            out.log_start_offset = -1;
            match results.next().expect("one result per partition") {
                Ok(Some(PartitionOk::Produced { base_offset, log_append_time_ms, log_start_offset })) => {
                    out.base_offset = base_offset;
                    out.log_append_time_ms = log_append_time_ms;
                    out.log_start_offset = log_start_offset;
                }
                Ok(Some(other)) => unreachable!("produce answered with {other:?}"),
                Ok(None) => out.error_code = ResponseError::InvalidRequiredAcks.code(),
                Err(e) => {
                    out.error_code = error_code(e);
                    crate::metrics::with(|m| m.error(request.api_key, out.error_code));
                    if e == PartitionError::NotAvailable {
                        // KIP-951: where the partition went, so the client moves at once.
                        out.current_leader = current_leader(&meta, topic.name.0.as_str(), partition.index);
                        leaders.push(out.current_leader.leader_id.0);
                    }
                    failed = Some(e);
                }
            }
            topic_out.partition_responses.push(out);
        }
        response.responses.push(topic_out);
    }
    response.node_endpoints = node_endpoints(&meta, leaders);
    if acks == 0 {
        return Ok(match failed {
            Some(e) => Reply::Close(format!("acks=0 produce failed: {e:?}")),
            None => Reply::Nothing,
        });
    }
    Ok(encode(request, &response))
}

/// The partition's leader and epoch as this node knows them (-1: unknown).
fn current_leader(meta: &ClusterMeta, topic: &str, partition: i32) -> LeaderIdAndEpoch {
    let mut leader = LeaderIdAndEpoch::default();
    leader.leader_id = BrokerId(-1);
    leader.leader_epoch = -1;
    if let Some(state) =
        meta.topic(topic).filter(|t| partition >= 0 && partition < t.partitions).map(|t| t.partition(partition))
    {
        leader.leader_id = BrokerId(state.leader);
        leader.leader_epoch = state.leader_epoch;
    }
    leader
}

/// The endpoints of the leaders named in NOT_LEADER_OR_FOLLOWER answers (KIP-951).
fn node_endpoints(meta: &ClusterMeta, mut leaders: Vec<i32>) -> Vec<NodeEndpoint> {
    leaders.sort_unstable();
    leaders.dedup();
    leaders
        .into_iter()
        .filter_map(|id| meta.brokers.get(&id).filter(|b| !b.fenced))
        .map(|b| {
            let mut endpoint = NodeEndpoint::default();
            endpoint.node_id = BrokerId(b.node_id);
            endpoint.host = crate::protocol::str_bytes(&b.host);
            endpoint.port = b.port;
            endpoint
        })
        .collect()
}
