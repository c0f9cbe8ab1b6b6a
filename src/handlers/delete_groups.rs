//! DeleteGroups: removes empty groups and their committed offsets
//! (tombstones in `__consumer_offsets`); a group with members is refused.

use std::rc::Rc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use super::{decode_body, FrameError};
use crate::broker::Broker;
use crate::group::{GroupOp, GroupReply};
use crate::protocol::{encode, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: DeleteGroupsRequest = decode_body(request)?;
    let mut response = DeleteGroupsResponse::default();
    for group_id in body.groups_names {
        let op = GroupOp::Delete { group_id: group_id.0.to_string() };
        let mut result = DeletableGroupResult::default();
        result.error_code = match broker.on_group(op).await {
            Ok(GroupReply::Code(code)) => code,
            Ok(_) => unreachable!("a delete is answered with a code"),
            Err(code) => code,
        };
        result.group_id = group_id;
        response.results.push(result);
    }
    Ok(encode(request, &response))
}
