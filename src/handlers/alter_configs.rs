//! AlterConfigs (replace a topic's overrides) and IncrementalAlterConfigs
//! (set or delete single keys). Only topic resources can be altered; broker
//! settings are static.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::describe_configs::RESOURCE_TOPIC;
use super::{decode_body, FrameError};
use crate::broker::admin::{AdminError, AdminOp, ConfigChange};
use crate::broker::Broker;
use crate::protocol::{encode, str_bytes, Reply, Request};

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

async fn alter(
    broker: &Rc<Broker>,
    resource_type: i8,
    name: &StrBytes,
    changes: Result<Vec<ConfigChange>, AdminError>,
    replace: bool,
    validate_only: bool,
) -> Result<(), AdminError> {
    if resource_type != RESOURCE_TOPIC {
        return Err(AdminError {
            code: ResponseError::InvalidRequest.code(),
            message: "only topic configs can be altered".into(),
        });
    }
    let op = AdminOp::AlterConfigs { name: name.to_string(), changes: changes?, replace, validate_only };
    broker.admin(op).await.map(|_| ())
}

pub async fn handle_alter(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: AlterConfigsRequest = decode_body(request)?;
    let mut response = AlterConfigsResponse::default();
    for resource in &body.resources {
        let changes = resource
            .configs
            .iter()
            .map(|c| match &c.value {
                Some(v) => ConfigChange::Set(c.name.to_string(), v.to_string()),
                None => ConfigChange::Delete(c.name.to_string()),
            })
            .collect();
        let mut out = AlterConfigsResourceResponse::default();
        out.resource_type = resource.resource_type;
        out.resource_name = resource.resource_name.clone();
        if let Err(e) =
            alter(broker, resource.resource_type, &resource.resource_name, Ok(changes), true, body.validate_only).await
        {
            out.error_code = e.code;
            out.error_message = Some(str_bytes(&e.message));
        }
        response.responses.push(out);
    }
    Ok(encode(request, &response))
}

pub async fn handle_incremental(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: IncrementalAlterConfigsRequest = decode_body(request)?;
    let mut response = IncrementalAlterConfigsResponse::default();
    for resource in &body.resources {
        let changes = resource
            .configs
            .iter()
            .map(|c| match (c.config_operation, &c.value) {
                (OP_SET, Some(v)) => Ok(ConfigChange::Set(c.name.to_string(), v.to_string())),
                (OP_DELETE, _) => Ok(ConfigChange::Delete(c.name.to_string())),
                (op, _) => Err(AdminError {
                    code: ResponseError::InvalidConfig.code(),
                    message: format!("operation {op} is not supported for {}", c.name.as_str()),
                }),
            })
            .collect();
        let mut out = IncrementalResult::default();
        out.resource_type = resource.resource_type;
        out.resource_name = resource.resource_name.clone();
        if let Err(e) =
            alter(broker, resource.resource_type, &resource.resource_name, changes, false, body.validate_only).await
        {
            out.error_code = e.code;
            out.error_message = Some(str_bytes(&e.message));
        }
        response.responses.push(out);
    }
    Ok(encode(request, &response))
}
