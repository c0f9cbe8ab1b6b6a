//! Heartbeat: keeps a member's session alive; REBALANCE_IN_PROGRESS tells it to rejoin.

use std::rc::Rc;

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use super::{decode_body, FrameError};
use crate::broker::Broker;
use crate::group::{GroupOp, GroupReply};
use crate::protocol::{encode, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: HeartbeatRequest = decode_body(request)?;
    let op = GroupOp::Heartbeat {
        group_id: body.group_id.0.to_string(),
        generation: body.generation_id,
        member_id: body.member_id.to_string(),
        instance_id: body.group_instance_id.map(|i| i.to_string()),
    };
    let mut response = HeartbeatResponse::default();
    response.error_code = match broker.on_group(op).await {
        Ok(GroupReply::Code(code)) => code,
        Ok(_) => unreachable!("a heartbeat is answered with a code"),
        Err(code) => code,
    };
    Ok(encode(request, &response))
}
