//! DeleteRecords: moves a partition's log start forward; whole segments
//! below it are deleted. Offset -1 means the high watermark.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use super::{decode_body, error_code, FrameError};
use crate::broker::{Broker, PartitionOk, PartitionOp};
use crate::protocol::{encode, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: DeleteRecordsRequest = decode_body(request)?;
    let meta = broker.meta();
    let mut response = DeleteRecordsResponse::default();
    for topic in &body.topics {
        let known = meta.topic(topic.name.0.as_str());
        let mut out = DeleteRecordsTopicResult::default();
        out.name = topic.name.clone();
        for p in &topic.partitions {
            let mut result = DeleteRecordsPartitionResult::default();
            result.partition_index = p.partition_index;
            result.low_watermark = -1;
            match known.filter(|t| p.partition_index >= 0 && p.partition_index < t.partitions) {
                None => result.error_code = ResponseError::UnknownTopicOrPartition.code(),
                Some(t) if t.is_internal() => result.error_code = ResponseError::InvalidTopicException.code(),
                Some(t) => {
                    let tp = t.tp(p.partition_index);
                    let offset = if p.offset == -1 { high_watermark(broker, tp).await } else { Ok(p.offset) };
                    let deleted = match offset {
                        Ok(offset) => broker.on_partition(tp, PartitionOp::DeleteRecords { offset }).await,
                        Err(e) => Err(e),
                    };
                    match deleted {
                        Ok(PartitionOk::Deleted { low_watermark }) => result.low_watermark = low_watermark,
                        Ok(other) => unreachable!("delete records answered with {other:?}"),
                        Err(e) => result.error_code = error_code(e),
                    }
                }
            }
            out.partitions.push(result);
        }
        response.topics.push(out);
    }
    Ok(encode(request, &response))
}

async fn high_watermark(
    broker: &Rc<Broker>,
    tp: crate::broker::TopicPartition,
) -> Result<i64, crate::broker::PartitionError> {
    match broker.on_partition(tp, PartitionOp::Offsets).await? {
        PartitionOk::Offsets { high_watermark, .. } => Ok(high_watermark),
        other => unreachable!("offsets answered with {other:?}"),
    }
}
