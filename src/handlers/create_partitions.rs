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
    // All at once, so that the controller applies them in one commit.
    let changes = body.topics.iter().map(|topic| {
        broker.admin(AdminOp::CreatePartitions {
            name: topic.name.0.to_string(),
            count: topic.count,
            validate_only: body.validate_only,
        })
    });
    let results = futures::future::join_all(changes).await;
    let mut response = CreatePartitionsResponse::default();
    for (topic, result) in body.topics.iter().zip(results) {
        let mut out = CreatePartitionsTopicResult::default();
        out.name = topic.name.clone();
        if let Err(e) = result {
            out.error_code = e.code;
            out.error_message = Some(str_bytes(&e.message));
        }
        response.results.push(out);
    }
    Ok(encode(request, &response))
}
