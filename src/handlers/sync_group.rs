//! SyncGroup: the leader hands in the assignment, every member gets its share.

use std::rc::Rc;

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

use super::{decode_body, FrameError};
use crate::broker::Broker;
use crate::group::{GroupOp, GroupReply};
use crate::protocol::{encode, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: SyncGroupRequest = decode_body(request)?;
    let op = GroupOp::Sync {
        group_id: body.group_id.0.to_string(),
        generation: body.generation_id,
        member_id: body.member_id.to_string(),
        instance_id: body.group_instance_id.map(|i| i.to_string()),
        protocol_type: body.protocol_type.map(|p| p.to_string()),
        protocol_name: body.protocol_name.map(|p| p.to_string()),
        assignments: body.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect(),
    };
    let mut response = match broker.on_group(op).await {
        Ok(GroupReply::Sync(r)) => r,
        Ok(_) => unreachable!("a sync is answered with a sync"),
        Err(code) => {
            let mut r = SyncGroupResponse::default();
            r.error_code = code;
            r
        }
    };
    if request.version() < 5 {
        response.protocol_type = None;
        response.protocol_name = None;
    }
    Ok(encode(request, &response))
}
