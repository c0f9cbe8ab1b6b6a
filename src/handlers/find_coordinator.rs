//! FindCoordinator: every group's coordinator is this node (the leader of
//! its `__consumer_offsets` partition); the topic is created on first use.
//! v4 batches keys. Transactions have no coordinator yet.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};

use super::{decode_body, FrameError};
use crate::broker::admin::AdminOp;
use crate::broker::Broker;
use crate::group::OFFSETS_TOPIC;
use crate::protocol::{encode, str_bytes, Reply, Request};

const GROUP_KEY_TYPE: i8 = 0;
const TRANSACTION_KEY_TYPE: i8 = 1;

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: FindCoordinatorRequest = decode_body(request)?;
    let version = request.version();
    let keys = if version >= 4 { body.coordinator_keys } else { vec![body.key] };
    let found: Result<(), (i16, String)> = match body.key_type {
        GROUP_KEY_TYPE => ensure_offsets_topic(broker).await,
        TRANSACTION_KEY_TYPE => {
            Err((ResponseError::CoordinatorNotAvailable.code(), "transactions are not supported yet".into()))
        }
        other => Err((ResponseError::InvalidRequest.code(), format!("unknown coordinator key type {other}"))),
    };
    let coordinators: Vec<Coordinator> = keys
        .into_iter()
        .map(|key| {
            let mut c = Coordinator::default();
            c.key = key;
            match &found {
                Ok(()) => {
                    c.node_id = BrokerId(broker.config.node_id);
                    c.host = str_bytes(&broker.config.advertised_host());
                    c.port = broker.config.advertised_port();
                }
                Err((code, message)) => {
                    c.node_id = BrokerId(-1);
                    c.port = -1;
                    c.error_code = *code;
                    c.error_message = Some(str_bytes(message));
                }
            }
            c
        })
        .collect();
    let mut response = FindCoordinatorResponse::default();
    if version >= 4 {
        response.coordinators = coordinators;
    } else if let Some(c) = coordinators.into_iter().next() {
        response.error_code = c.error_code;
        response.error_message = if version >= 1 { c.error_message } else { None };
        response.node_id = c.node_id;
        response.host = c.host;
        response.port = c.port;
    }
    Ok(encode(request, &response))
}

/// Creates `__consumer_offsets` (compacted) unless it exists.
pub async fn ensure_offsets_topic(broker: &Rc<Broker>) -> Result<(), (i16, String)> {
    if broker.meta().topic(OFFSETS_TOPIC).is_some() {
        return Ok(());
    }
    let configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), broker.config.offsets_topic_segment_bytes.to_string()),
    ]);
    let op = AdminOp::EnsureOffsetsTopic { partitions: broker.config.offsets_topic_num_partitions, configs };
    broker.admin(op).await.map_err(|e| {
        tracing::warn!("creating {OFFSETS_TOPIC}: {}", e.message);
        (ResponseError::CoordinatorNotAvailable.code(), e.message)
    })
}
