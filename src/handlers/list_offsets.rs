//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3), or the first
//! record whose timestamp reaches a given time, as Kafka answers it: the time
//! index finds the batch, and only that batch is read (and decompressed) to
//! find the record and its own timestamp.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::{check_leader_epoch, decode_body, error_code, FrameError};
use crate::broker::{Broker, PartitionOk, PartitionOp, TopicMeta};
use crate::protocol::{encode, Reply, Request};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: ListOffsetsRequest = decode_body(request)?;
    let meta = broker.meta();
    let mut response = ListOffsetsResponse::default();
    for topic in &body.topics {
        let known = meta.topic(topic.name.0.as_str());
        let lookups = topic
            .partitions
            .iter()
            .map(|p| lookup(broker, known, p.partition_index, p.current_leader_epoch, p.timestamp, request.version()));
        let mut out = ListOffsetsTopicResponse::default();
        out.name = topic.name.clone();
        out.partitions = futures::future::join_all(lookups).await;
        response.topics.push(out);
    }
    Ok(encode(request, &response))
}

async fn lookup(
    broker: &Rc<Broker>,
    topic: Option<&std::sync::Arc<TopicMeta>>,
    partition: i32,
    client_epoch: i32,
    timestamp: i64,
    version: i16,
) -> ListOffsetsPartitionResponse {
    // leader_epoch exists from v4; older versions must leave it at -1.
    let leader_epoch = |epoch: i32| if version >= 4 { epoch } else { -1 };
    let mut out = ListOffsetsPartitionResponse::default();
    out.partition_index = partition;
    out.timestamp = -1;
    out.offset = -1;
    out.leader_epoch = -1;
    let Some(topic) = topic.filter(|t| partition >= 0 && partition < t.partitions) else {
        out.error_code = ResponseError::UnknownTopicOrPartition.code();
        return out;
    };
    let epoch = topic.partition(partition).leader_epoch;
    if let Err(code) = check_leader_epoch(client_epoch, epoch) {
        out.error_code = code;
        return out;
    }
    let tp = topic.tp(partition);
    let op = match timestamp {
        LATEST | EARLIEST => PartitionOp::Offsets,
        MAX_TIMESTAMP => PartitionOp::MaxTimestamp,
        t if t >= 0 => PartitionOp::OffsetForTime { timestamp: t },
        _ => {
            out.error_code = ResponseError::InvalidRequest.code();
            return out;
        }
    };
    match broker.on_partition(tp, op).await {
        Ok(PartitionOk::Offsets { log_start_offset, high_watermark }) => {
            out.offset = if timestamp == EARLIEST { log_start_offset } else { high_watermark };
            out.leader_epoch = leader_epoch(epoch);
        }
        Ok(PartitionOk::Timestamped { found }) => {
            if let Some((ts, offset)) = found {
                out.timestamp = ts;
                out.offset = offset;
                out.leader_epoch = leader_epoch(epoch);
            }
        }
        Ok(other) => unreachable!("list offsets answered with {other:?}"),
        Err(e) => out.error_code = error_code(e),
    }
    out
}
