//! JoinGroup: a member joins (or rejoins) its group and waits for the
//! rebalance to complete; from v4 a new member first gets MEMBER_ID_REQUIRED
//! and its id, and joins again with it.

use std::rc::Rc;

use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::protocol::StrBytes;

use super::{decode_body, FrameError};
use crate::broker::Broker;
use crate::group::state::JoinArgs;
use crate::group::{GroupOp, GroupReply};
use crate::protocol::{encode, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: JoinGroupRequest = decode_body(request)?;
    let version = request.version();
    let args = JoinArgs {
        group_id: body.group_id.0.to_string(),
        member_id: body.member_id.to_string(),
        instance_id: body.group_instance_id.map(|i| i.to_string()),
        client_id: request.client_id(),
        client_host: request.client_host(),
        session_timeout_ms: body.session_timeout_ms,
        // v0 has no rebalance timeout: the session timeout serves.
        rebalance_timeout_ms: if version >= 1 { body.rebalance_timeout_ms } else { body.session_timeout_ms },
        protocol_type: body.protocol_type.to_string(),
        protocols: body.protocols.into_iter().map(|p| (p.name.to_string(), p.metadata)).collect(),
        require_known_member_id: version >= 4,
    };
    let member_id = args.member_id.clone();
    let mut response = match broker.on_group(GroupOp::Join(args)).await {
        Ok(GroupReply::Join(r)) => r,
        Ok(_) => unreachable!("a join is answered with a join"),
        Err(code) => {
            let mut r = JoinGroupResponse::default();
            r.error_code = code;
            r.generation_id = -1;
            r.member_id = StrBytes::from_string(member_id);
            r
        }
    };
    fit_to_version(&mut response, version);
    Ok(encode(request, &response))
}

/// Drops what `version` cannot carry.
fn fit_to_version(r: &mut JoinGroupResponse, version: i16) {
    if version < 7 {
        r.protocol_type = None;
        if r.protocol_name.is_none() {
            r.protocol_name = Some(StrBytes::default());
        }
    }
    if version < 5 {
        r.members.iter_mut().for_each(|m| m.group_instance_id = None);
    }
    r.skip_assignment = false;
}
