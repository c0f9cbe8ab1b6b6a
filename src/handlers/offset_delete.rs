//! OffsetDelete: removes a group's committed offsets for some partitions,
//! unless the group's members subscribe to their topic.

use std::rc::Rc;

use kafka_protocol::messages::offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use super::{decode_body, FrameError};
use crate::broker::Broker;
use crate::group::{GroupOp, GroupReply};
use crate::protocol::{encode, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: OffsetDeleteRequest = decode_body(request)?;
    let partitions: Vec<(String, i32)> = body
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), p.partition_index)))
        .collect();
    let count = partitions.len();
    let op = GroupOp::DeleteOffsets { group_id: body.group_id.0.to_string(), partitions };
    let (top, codes) = match broker.on_group(op).await {
        Ok(GroupReply::Codes(top, codes)) => (top, codes),
        Ok(_) => unreachable!("an offset delete is answered with codes"),
        Err(code) => (code, vec![0; count]),
    };
    let mut response = OffsetDeleteResponse::default();
    response.error_code = top;
    if top == 0 {
        let mut codes = codes.into_iter();
        response.topics = body
            .topics
            .into_iter()
            .map(|t| {
                let mut out = OffsetDeleteResponseTopic::default();
                out.name = t.name;
                out.partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut r = OffsetDeleteResponsePartition::default();
                        r.partition_index = p.partition_index;
                        r.error_code = codes.next().unwrap_or(0);
                        r
                    })
                    .collect();
                out
            })
            .collect();
    }
    Ok(encode(request, &response))
}
