//! OffsetCommit: a group's (or a simple consumer's) committed offsets,
//! appended to its `__consumer_offsets` partition and answered once durable.
//! Like a Produce, the commit takes effect (the connection's next request
//! may go) once it has its place in the log.

use std::rc::Rc;

use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use super::{decode_body, Applied, FrameError};
use crate::broker::Broker;
use crate::group::records::OffsetValue;
use crate::group::{GroupOp, GroupReply};
use crate::protocol::{encode, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request, applied: Applied) -> Result<Reply, FrameError> {
    let body: OffsetCommitRequest = decode_body(request)?;
    let now_ms = crate::storage::now_ms();
    let offsets: Vec<(String, i32, OffsetValue)> = body
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| {
                let value = OffsetValue {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_deref().unwrap_or("").to_string(),
                    commit_timestamp_ms: now_ms,
                };
                (t.name.0.to_string(), p.partition_index, value)
            })
        })
        .collect();
    let count = offsets.len();
    let op = GroupOp::Commit {
        group_id: body.group_id.0.to_string(),
        generation: body.generation_id_or_member_epoch,
        member_id: body.member_id.to_string(),
        instance_id: body.group_instance_id.map(|i| i.to_string()),
        offsets,
        appended: applied.into_sender(),
    };
    let codes = match broker.on_group(op).await {
        Ok(GroupReply::Codes(_, codes)) => codes,
        Ok(_) => unreachable!("a commit is answered with codes"),
        Err(code) => vec![code; count],
    };
    let mut codes = codes.into_iter();
    let mut response = OffsetCommitResponse::default();
    response.topics = body
        .topics
        .into_iter()
        .map(|t| {
            let mut out = OffsetCommitResponseTopic::default();
            out.name = t.name;
            out.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = OffsetCommitResponsePartition::default();
                    r.partition_index = p.partition_index;
                    r.error_code = codes.next().unwrap_or(0);
                    r
                })
                .collect();
            out
        })
        .collect();
    Ok(encode(request, &response))
}
