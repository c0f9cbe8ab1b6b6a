//! AlterPartitionReassignments (KIP-455): moves partitions to new replica
//! sets while clients keep running, or cancels a move (null replicas). The
//! controller records the move; new replicas follow the leader, and once
//! they are all in sync the old ones are dropped (see `broker::admin`).

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse};

use super::{decode_body, FrameError};
use crate::broker::admin::AdminOp;
use crate::broker::Broker;
use crate::protocol::{encode, str_bytes, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: AlterPartitionReassignmentsRequest = decode_body(request)?;
    // v1 (KIP-860) may forbid changing the number of replicas.
    let same_factor_only = request.version() >= 1 && !body.allow_replication_factor_change;
    let meta = broker.meta();
    let moves = body.topics.iter().flat_map(|t| t.partitions.iter().map(move |p| (t, p))).map(|(t, p)| {
        let topic = t.name.0.to_string();
        let target: Option<Vec<i32>> = p.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect());
        let current = meta.topic(&topic).filter(|t| p.partition_index >= 0 && p.partition_index < t.partitions);
        let factor_changes = match (&target, current) {
            (Some(target), Some(t)) => target.len() != t.partition(p.partition_index).target_replicas().len(),
            _ => false,
        };
        let op = AdminOp::Reassign { topic, partition: p.partition_index, target };
        async move {
            if same_factor_only && factor_changes {
                return Err((
                    ResponseError::InvalidReplicationFactor.code(),
                    "the replication factor would change".into(),
                ));
            }
            broker.admin(op).await.map_err(|e| (e.code, e.message))
        }
    });
    let mut results = futures::future::join_all(moves).await.into_iter();
    let mut response = AlterPartitionReassignmentsResponse::default();
    response.allow_replication_factor_change = !same_factor_only;
    for topic in &body.topics {
        let mut out = ReassignableTopicResponse::default();
        out.name = topic.name.clone();
        for p in &topic.partitions {
            let mut result = ReassignablePartitionResponse::default();
            result.partition_index = p.partition_index;
            if let Err((code, message)) = results.next().expect("one result per partition") {
                result.error_code = code;
                result.error_message = Some(str_bytes(&message));
            }
            out.partitions.push(result);
        }
        response.responses.push(out);
    }
    Ok(encode(request, &response))
}
