//! AlterConfigs (replace a resource's configs) and IncrementalAlterConfigs
//! (SET, DELETE, APPEND, SUBTRACT single keys), for topics and for brokers:
//! a broker resource is this node's id (its own dynamic configs) or ""
//! (the cluster-wide defaults). Each resource is one metadata change:
//! either all of its changes take effect or none.

use std::collections::HashSet;
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::{decode_body, FrameError};
use crate::broker::admin::{AdminError, AdminOp, ConfigChange};
use crate::broker::Broker;
use crate::protocol::{encode, str_bytes, Reply, Request};

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

fn error(error: ResponseError, message: String) -> AdminError {
    AdminError { code: error.code(), message }
}

async fn alter(
    broker: &Rc<Broker>,
    resource_type: i8,
    name: &StrBytes,
    changes: Result<Vec<ConfigChange>, AdminError>,
    replace: bool,
    validate_only: bool,
) -> Result<(), AdminError> {
    let changes = changes?;
    let mut keys = HashSet::new();
    if !changes.iter().all(|c| keys.insert(c.key())) {
        return Err(error(ResponseError::InvalidRequest, "Error due to duplicate config keys".into()));
    }
    let name = name.to_string();
    let op = match resource_type {
        RESOURCE_TOPIC if name.is_empty() => {
            return Err(error(ResponseError::InvalidRequest, "Default topic resources are not allowed.".into()));
        }
        RESOURCE_TOPIC => AdminOp::AlterConfigs { name, changes, replace, validate_only },
        RESOURCE_BROKER => {
            let node = broker.config.node_id;
            if !name.is_empty() && name != node.to_string() {
                let message = format!("Unexpected broker id, expected {node}, but received {name}");
                return Err(error(ResponseError::InvalidRequest, message));
            }
            AdminOp::AlterBrokerConfigs { resource: name, changes, replace, validate_only }
        }
        other => return Err(error(ResponseError::InvalidRequest, format!("Unknown resource type {other}"))),
    };
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
                Some(v) => Ok(ConfigChange::Set(c.name.to_string(), v.to_string())),
                None => Err(null_value(resource.resource_type, c.name.as_str())),
            })
            .collect();
        let mut out = AlterConfigsResourceResponse::default();
        out.resource_type = resource.resource_type;
        out.resource_name = resource.resource_name.clone();
        if let Err(e) =
            alter(broker, resource.resource_type, &resource.resource_name, changes, true, body.validate_only).await
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
            .map(|c| {
                let key = c.name.to_string();
                match (c.config_operation, &c.value) {
                    (OP_DELETE, _) => Ok(ConfigChange::Delete(key)),
                    (OP_SET | OP_APPEND | OP_SUBTRACT, None) => Err(null_value(resource.resource_type, &key)),
                    (OP_SET, Some(v)) => Ok(ConfigChange::Set(key, v.to_string())),
                    (OP_APPEND, Some(v)) => Ok(ConfigChange::Append(key, v.to_string())),
                    (OP_SUBTRACT, Some(v)) => Ok(ConfigChange::Subtract(key, v.to_string())),
                    (op, _) => Err(error(ResponseError::InvalidRequest, format!("Unknown operation {op} for {key}"))),
                }
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

fn null_value(resource_type: i8, key: &str) -> AdminError {
    if resource_type == RESOURCE_TOPIC {
        error(ResponseError::InvalidConfig, format!("Null value not supported for topic configs: {key}"))
    } else {
        error(ResponseError::InvalidRequest, format!("Null value not supported for : {key}"))
    }
}
