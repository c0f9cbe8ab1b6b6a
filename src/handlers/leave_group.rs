//! LeaveGroup: members leave at once instead of timing out; one member
//! (v0–v2) or several, by member id or static instance id (v3+).

use std::rc::Rc;

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use super::{decode_body, FrameError};
use crate::broker::Broker;
use crate::group::{GroupOp, GroupReply};
use crate::protocol::{encode, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: LeaveGroupRequest = decode_body(request)?;
    let version = request.version();
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        body.members
            .iter()
            .map(|m| (m.member_id.to_string(), m.group_instance_id.as_ref().map(|i| i.to_string())))
            .collect()
    } else {
        vec![(body.member_id.to_string(), None)]
    };
    let count = members.len();
    let op = GroupOp::Leave { group_id: body.group_id.0.to_string(), members };
    let (top, codes) = match broker.on_group(op).await {
        Ok(GroupReply::Codes(top, codes)) => (top, codes),
        Ok(_) => unreachable!("a leave is answered with codes"),
        Err(code) => (code, vec![code; count]),
    };
    let mut response = LeaveGroupResponse::default();
    if version >= 3 {
        response.error_code = top;
        response.members = body
            .members
            .into_iter()
            .zip(codes)
            .map(|(m, code)| {
                let mut r = MemberResponse::default();
                r.member_id = m.member_id;
                r.group_instance_id = m.group_instance_id;
                r.error_code = code;
                r
            })
            .collect();
    } else {
        response.error_code = if top != 0 { top } else { codes.first().copied().unwrap_or(0) };
    }
    Ok(encode(request, &response))
}
