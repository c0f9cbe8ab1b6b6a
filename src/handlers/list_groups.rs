//! ListGroups: every group of every shard's coordinator, filtered by state (v4+).

use std::rc::Rc;

use kafka_protocol::messages::{ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use super::{decode_body, FrameError};
use crate::broker::Broker;
use crate::protocol::{encode, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: ListGroupsRequest = decode_body(request)?;
    let version = request.version();
    let states: Vec<String> = body.states_filter.iter().map(|s| s.to_string()).collect();
    let mut response = ListGroupsResponse::default();
    let mut groups = match broker.list_groups(states).await {
        Ok(groups) => groups,
        Err(code) => {
            response.error_code = code;
            return Ok(encode(request, &response));
        }
    };
    groups.sort_by(|a, b| a.group_id.0.cmp(&b.group_id.0));
    for g in &mut groups {
        if version < 4 {
            g.group_state = StrBytes::default();
        }
        g.group_type = StrBytes::default();
    }
    response.groups = groups;
    Ok(encode(request, &response))
}
