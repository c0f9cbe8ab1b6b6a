//! CreatePartitions: grows a topic's partition count (never shrinks it).

use std::rc::Rc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use super::{decode_body, FrameError};
use crate::broker::admin::AdminOp;
use crate::broker::Broker;
use crate::protocol::{encode, str_bytes, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: CreatePartitionsRequest = decode_body(request)?;
    let mut response = CreatePartitionsResponse::default();
    for topic in &body.topics {
        let mut out = CreatePartitionsTopicResult::default();
        out.name = topic.name.clone();
        let op = AdminOp::CreatePartitions {
            name: topic.name.0.to_string(),
            count: topic.count,
            validate_only: body.validate_only,
        };
        if let Err(e) = broker.admin(op).await {
            out.error_code = e.code;
            out.error_message = Some(str_bytes(&e.message));
        }
        response.results.push(out);
    }
    Ok(encode(request, &response))
}
