//! DeleteTopics: removed from metadata by the controller (in one commit for
//! the whole request); each owning shard closes the partitions and deletes
//! their files.

use std::rc::Rc;

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};

use super::{decode_body, FrameError};
use crate::broker::admin::AdminOp;
use crate::broker::Broker;
use crate::protocol::{encode, str_bytes, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: DeleteTopicsRequest = decode_body(request)?;
    // All at once, so that the controller deletes them in one commit.
    let deletions = body.topic_names.iter().map(|name| broker.admin(AdminOp::DeleteTopic { name: name.0.to_string() }));
    let results = futures::future::join_all(deletions).await;
    let mut response = DeleteTopicsResponse::default();
    for (name, result) in body.topic_names.iter().zip(results) {
        let mut out = DeletableTopicResult::default();
        out.name = Some(name.clone());
        if let Err(e) = result {
            out.error_code = e.code;
            out.error_message = Some(str_bytes(&e.message));
        }
        response.responses.push(out);
    }
    Ok(encode(request, &response))
}
