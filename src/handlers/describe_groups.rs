//! DescribeGroups: state, protocol and members (with their metadata and
//! assignment once Stable) of each group named; an unknown group is "Dead".

use std::rc::Rc;

use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use super::metadata::{GROUP_OPERATIONS, OPERATIONS_NOT_REQUESTED};
use super::{decode_body, FrameError};
use crate::broker::Broker;
use crate::group::{GroupOp, GroupReply};
use crate::protocol::{encode, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: DescribeGroupsRequest = decode_body(request)?;
    let version = request.version();
    let mut response = DescribeGroupsResponse::default();
    for group_id in body.groups {
        let op = GroupOp::Describe { group_id: group_id.0.to_string() };
        let mut described = match broker.on_group(op).await {
            Ok(GroupReply::Described(d)) => d,
            Ok(_) => unreachable!("a describe is answered with a description"),
            Err(code) => {
                let mut d = DescribedGroup::default();
                d.error_code = code;
                d.group_id = group_id;
                d.authorized_operations = OPERATIONS_NOT_REQUESTED;
                d
            }
        };
        if version >= 3 && body.include_authorized_operations && described.error_code == 0 {
            described.authorized_operations = GROUP_OPERATIONS;
        }
        if version < 3 {
            described.authorized_operations = OPERATIONS_NOT_REQUESTED;
        }
        if version < 4 {
            described.members.iter_mut().for_each(|m| m.group_instance_id = None);
        }
        described.error_message = None;
        response.groups.push(described);
    }
    Ok(encode(request, &response))
}
