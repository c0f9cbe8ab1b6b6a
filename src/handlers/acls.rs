//! CreateAcls, DescribeAcls, DeleteAcls: spate has no authorizer yet, so
//! each is answered as Kafka answers it without one: SECURITY_DISABLED.
//! Every request is allowed (see `metadata::TOPIC_OPERATIONS`).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::DeleteAclsFilterResult;
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse, DescribeAclsRequest,
    DescribeAclsResponse,
};

use super::{decode_body, FrameError};
use crate::protocol::{encode, str_bytes, Reply, Request};

/// Kafka's messages when no authorizer is configured.
const NO_AUTHORIZER: &str = "No Authorizer is configured.";
const NO_AUTHORIZER_ON_BROKER: &str = "No Authorizer is configured on the broker";

pub fn handle_describe(request: &Request) -> Result<Reply, FrameError> {
    let _: DescribeAclsRequest = decode_body(request)?;
    let mut response = DescribeAclsResponse::default();
    response.error_code = ResponseError::SecurityDisabled.code();
    response.error_message = Some(str_bytes(NO_AUTHORIZER_ON_BROKER));
    Ok(encode(request, &response))
}

pub fn handle_create(request: &Request) -> Result<Reply, FrameError> {
    let body: CreateAclsRequest = decode_body(request)?;
    let mut response = CreateAclsResponse::default();
    let (code, message) = security_disabled();
    response.results = vec![AclCreationResult::default(); body.creations.len()];
    for result in &mut response.results {
        (result.error_code, result.error_message) = (code, message.clone());
    }
    Ok(encode(request, &response))
}

pub fn handle_delete(request: &Request) -> Result<Reply, FrameError> {
    let body: DeleteAclsRequest = decode_body(request)?;
    let mut response = DeleteAclsResponse::default();
    let (code, message) = security_disabled();
    response.filter_results = vec![DeleteAclsFilterResult::default(); body.filters.len()];
    for result in &mut response.filter_results {
        (result.error_code, result.error_message) = (code, message.clone());
    }
    Ok(encode(request, &response))
}

/// Each creation's and deletion's answer.
fn security_disabled() -> (i16, Option<kafka_protocol::protocol::StrBytes>) {
    (ResponseError::SecurityDisabled.code(), Some(str_bytes(NO_AUTHORIZER)))
}
