//! FindCoordinator: a group's coordinator is the leader of its
//! `__consumer_offsets` partition; the topic is created on first use.
//! v4 batches keys. Transactions have no coordinator yet.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};

use super::{decode_body, FrameError};
use crate::broker::admin::AdminOp;
use crate::broker::metadata::BrokerRegistration;
use crate::broker::Broker;
use crate::group::{offsets_partition, OFFSETS_TOPIC};
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
            match found.clone().and_then(|()| coordinator_of(broker, &c.key)) {
                Ok(leader) => {
                    c.node_id = BrokerId(leader.node_id);
                    c.host = str_bytes(&leader.host);
                    c.port = leader.port;
                }
                Err((code, message)) => {
                    c.node_id = BrokerId(-1);
                    c.port = -1;
                    c.error_code = code;
                    c.error_message = Some(str_bytes(&message));
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

/// The live broker leading the offsets partition of group `key`.
fn coordinator_of(broker: &Broker, key: &str) -> Result<BrokerRegistration, (i16, String)> {
    let unavailable = |m: &str| (ResponseError::CoordinatorNotAvailable.code(), m.to_string());
    let meta = broker.meta();
    let topic = meta.topic(OFFSETS_TOPIC).ok_or_else(|| unavailable("no offsets topic"))?;
    let state = topic.partition(offsets_partition(key, topic.partitions));
    meta.brokers
        .get(&state.leader)
        .filter(|b| !b.fenced)
        .cloned()
        .ok_or_else(|| unavailable("the group's offsets partition has no live leader"))
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
    broker.admin(op).await.map(|_| ()).map_err(|e| {
        tracing::warn!("creating {OFFSETS_TOPIC}: {}", e.message);
        (ResponseError::CoordinatorNotAvailable.code(), e.message)
    })
}
