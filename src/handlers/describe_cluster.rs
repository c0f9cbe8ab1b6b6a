//! DescribeCluster (KIP-700): the cluster id, the active controller and the
//! live brokers (every registered one, fenced included, when asked), as
//! newer admin clients learn the cluster.

use std::rc::Rc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::metadata::{CLUSTER_ID, CLUSTER_OPERATIONS, OPERATIONS_NOT_REQUESTED};
use super::{decode_body, FrameError};
use crate::broker::Broker;
use crate::protocol::{encode, str_bytes, Reply, Request};

/// Endpoint type 1: brokers (2, controllers, is not served).
const ENDPOINT_BROKERS: i8 = 1;

pub fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: DescribeClusterRequest = decode_body(request)?;
    let meta = broker.meta();
    let mut response = DescribeClusterResponse::default();
    if body.endpoint_type != ENDPOINT_BROKERS && request.version() >= 1 {
        response.error_code = kafka_protocol::error::ResponseError::UnsupportedEndpointType.code();
        response.error_message = Some(str_bytes("only broker endpoints are described"));
        return Ok(encode(request, &response));
    }
    response.endpoint_type = ENDPOINT_BROKERS;
    response.cluster_id = str_bytes(CLUSTER_ID);
    response.controller_id = BrokerId(meta.controller);
    response.cluster_authorized_operations =
        if body.include_cluster_authorized_operations { CLUSTER_OPERATIONS } else { OPERATIONS_NOT_REQUESTED };
    response.brokers = meta
        .brokers
        .values()
        .filter(|b| !b.fenced || body.include_fenced_brokers)
        .map(|b| {
            let mut out = DescribeClusterBroker::default();
            out.broker_id = BrokerId(b.node_id);
            out.host = str_bytes(&b.host);
            out.port = b.port;
            out.is_fenced = b.fenced;
            out
        })
        .collect();
    Ok(encode(request, &response))
}
