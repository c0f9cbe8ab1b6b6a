//! DescribeProducers: the active idempotent producers of partitions this
//! node leads (id, epoch, last sequence, last timestamp), as the Java admin
//! client's `describeProducers` and kafka-python's `describe_producers` ask.

use std::rc::Rc;

use kafka_protocol::messages::describe_producers_response::{PartitionResponse, ProducerState, TopicResponse};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};

use super::{decode_body, error_code, FrameError};
use crate::broker::{Broker, PartitionError, PartitionOk, PartitionOp};
use crate::protocol::{encode, Reply, Request};

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: DescribeProducersRequest = decode_body(request)?;
    let meta = broker.meta();
    let mut response = DescribeProducersResponse::default();
    for topic in &body.topics {
        let known = meta.topic(topic.name.0.as_str());
        let lookups = topic.partition_indexes.iter().map(|&index| async move {
            let result = match known.filter(|t| index >= 0 && index < t.partitions) {
                Some(t) => broker.on_partition(t.tp(index), PartitionOp::Producers).await,
                None => Err(PartitionError::UnknownTopicOrPartition),
            };
            describe(index, result)
        });
        let mut out = TopicResponse::default();
        out.name = topic.name.clone();
        out.partitions = futures::future::join_all(lookups).await;
        response.topics.push(out);
    }
    Ok(encode(request, &response))
}

fn describe(index: i32, result: crate::broker::PartitionResult) -> PartitionResponse {
    let mut out = PartitionResponse::default();
    out.partition_index = index;
    match result {
        Ok(PartitionOk::Producers { producers }) => {
            out.active_producers = producers
                .iter()
                .map(|p| {
                    let mut state = ProducerState::default();
                    state.producer_id = ProducerId(p.producer_id);
                    state.producer_epoch = p.producer_epoch as i32;
                    state.last_sequence = p.last_sequence;
                    state.last_timestamp = p.last_timestamp;
                    // No transactions yet: no coordinator, no open transaction.
                    state.coordinator_epoch = -1;
                    state.current_txn_start_offset = -1;
                    state
                })
                .collect();
        }
        Ok(other) => unreachable!("producers answered with {other:?}"),
        Err(e) => out.error_code = error_code(e),
    }
    out
}
