//! OffsetForLeaderEpoch: the end offset of a leader epoch, which clients use
//! to detect log truncation after a leader change.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use super::{check_leader_epoch, decode_body, error_code, FrameError};
use crate::broker::{Broker, PartitionOk, PartitionOp};
use crate::protocol::{encode, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: OffsetForLeaderEpochRequest = decode_body(request)?;
    let meta = broker.meta();
    let mut response = OffsetForLeaderEpochResponse::default();
    for topic in &body.topics {
        let known = meta.topic(topic.topic.0.as_str());
        let mut out = OffsetForLeaderTopicResult::default();
        out.topic = topic.topic.clone();
        for p in &topic.partitions {
            let mut result = EpochEndOffset::default();
            result.partition = p.partition;
            result.leader_epoch = -1;
            result.end_offset = -1;
            match known.filter(|t| p.partition >= 0 && p.partition < t.partitions) {
                None => result.error_code = ResponseError::UnknownTopicOrPartition.code(),
                Some(t) => match check_leader_epoch(p.current_leader_epoch, t.partition(p.partition).leader_epoch) {
                    Err(code) => result.error_code = code,
                    Ok(()) => match broker
                        .on_partition(t.tp(p.partition), PartitionOp::EndOffsetForEpoch { epoch: p.leader_epoch })
                        .await
                    {
                        Ok(PartitionOk::EpochEnd { found: Some((epoch, end)) }) => {
                            result.leader_epoch = epoch;
                            result.end_offset = end;
                        }
                        Ok(_) => {}
                        Err(e) => result.error_code = error_code(e),
                    },
                },
            }
            out.partitions.push(result);
        }
        response.topics.push(out);
    }
    Ok(encode(request, &response))
}
