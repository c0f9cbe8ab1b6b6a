//! InitProducerId: gives an idempotent producer its id and epoch. Ids come
//! in blocks from the controller. A producer re-initialising with its id
//! (v3+) gets the next epoch. Transactions are not supported yet, so a
//! request with a transactional id is refused.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::{decode_body, FrameError};
use crate::broker::Broker;
use crate::protocol::{encode, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: InitProducerIdRequest = decode_body(request)?;
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    // An empty id is what some clients send for "none".
    if body.transactional_id.as_ref().is_some_and(|id| !id.0.is_empty()) {
        tracing::warn!("refusing InitProducerId with a transactional id: transactions are not supported yet");
        response.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
        return Ok(encode(request, &response));
    }
    let (id, epoch) = (body.producer_id.0, body.producer_epoch);
    if id >= 0 && (0..i16::MAX - 1).contains(&epoch) {
        response.producer_id = ProducerId(id);
        response.producer_epoch = epoch + 1;
        return Ok(encode(request, &response));
    }
    match broker.next_producer_id().await {
        Ok(id) => {
            response.producer_id = ProducerId(id);
            response.producer_epoch = 0;
        }
        // The quorum has no leader just now: clients retry this one.
        Err(e) if e.code == ResponseError::NotController.code() || e.code == ResponseError::RequestTimedOut.code() => {
            response.error_code = ResponseError::CoordinatorLoadInProgress.code()
        }
        Err(e) => response.error_code = e.code,
    }
    Ok(encode(request, &response))
}
