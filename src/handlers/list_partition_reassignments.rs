//! ListPartitionReassignments (KIP-455): the partitions being moved, with
//! their replicas and the replicas being added and removed.

use std::rc::Rc;

use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{BrokerId, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse};

use super::{decode_body, FrameError};
use crate::broker::{Broker, TopicMeta};
use crate::protocol::{encode, Reply, Request};

pub fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: ListPartitionReassignmentsRequest = decode_body(request)?;
    let meta = broker.meta();
    let mut response = ListPartitionReassignmentsResponse::default();
    let wanted: Vec<(&TopicMeta, Vec<i32>)> = match &body.topics {
        None => meta.topics.values().map(|t| (&**t, (0..t.partitions).collect())).collect(),
        Some(topics) => topics
            .iter()
            .filter_map(|t| Some((&**meta.topic(t.name.0.as_str())?, t.partition_indexes.clone())))
            .collect(),
    };
    for (topic, partitions) in wanted {
        let ids = |nodes: &[i32]| nodes.iter().map(|n| BrokerId(*n)).collect::<Vec<_>>();
        let ongoing: Vec<OngoingPartitionReassignment> = partitions
            .into_iter()
            .filter(|p| *p >= 0 && *p < topic.partitions)
            .map(|p| (p, topic.partition(p)))
            .filter(|(_, state)| !state.adding.is_empty() || !state.removing.is_empty())
            .map(|(p, state)| {
                let mut out = OngoingPartitionReassignment::default();
                out.partition_index = p;
                out.replicas = ids(&state.replicas);
                out.adding_replicas = ids(&state.adding);
                out.removing_replicas = ids(&state.removing);
                out
            })
            .collect();
        if !ongoing.is_empty() {
            let mut out = OngoingTopicReassignment::default();
            out.name = kafka_protocol::messages::TopicName(crate::protocol::str_bytes(&topic.name));
            out.partitions = ongoing;
            response.topics.push(out);
        }
    }
    Ok(encode(request, &response))
}
