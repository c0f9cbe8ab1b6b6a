//! OffsetFetch: a group's committed offsets (all of them when no topics are
//! named); several groups in one request from v8. With `require_stable`, a
//! partition whose commit is still being written answers UNSTABLE_OFFSET_COMMIT.

use std::rc::Rc;

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};

use super::{decode_body, FrameError};
use crate::broker::Broker;
use crate::group::{FetchedOffset, GroupOp, GroupReply};
use crate::protocol::{encode, str_bytes, Reply, Request};

/// One group's answer: its error code and offsets in request order.
type GroupOffsets = (i16, Vec<FetchedOffset>);

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: OffsetFetchRequest = decode_body(request)?;
    let version = request.version();
    let mut response = OffsetFetchResponse::default();
    if version >= 8 {
        for group in body.groups {
            let wanted = group.topics.map(|topics| {
                topics.iter().flat_map(|t| t.partition_indexes.iter().map(|p| (t.name.0.to_string(), *p))).collect()
            });
            let (code, offsets) = fetch(broker, group.group_id.0.to_string(), wanted, body.require_stable).await;
            let mut out = OffsetFetchResponseGroup::default();
            out.group_id = group.group_id;
            out.error_code = code;
            out.topics = by_topic(offsets, |name, partitions| {
                let mut t = OffsetFetchResponseTopics::default();
                t.name = name;
                t.partitions = partitions
                    .into_iter()
                    .map(|o| {
                        let mut p = OffsetFetchResponsePartitions::default();
                        p.partition_index = o.partition;
                        p.committed_offset = o.offset;
                        p.committed_leader_epoch = o.leader_epoch;
                        p.metadata = Some(str_bytes(&o.metadata));
                        p.error_code = o.error_code;
                        p
                    })
                    .collect();
                t
            });
            response.groups.push(out);
        }
        return Ok(encode(request, &response));
    }
    let wanted = body.topics.map(|topics| {
        topics.iter().flat_map(|t| t.partition_indexes.iter().map(|p| (t.name.0.to_string(), *p))).collect()
    });
    let (code, offsets) = fetch(broker, body.group_id.0.to_string(), wanted, version >= 7 && body.require_stable).await;
    response.error_code = if version >= 2 { code } else { 0 };
    response.topics = by_topic(offsets, |name, partitions| {
        let mut t = OffsetFetchResponseTopic::default();
        t.name = name;
        t.partitions = partitions
            .into_iter()
            .map(|o| {
                let mut p = OffsetFetchResponsePartition::default();
                p.partition_index = o.partition;
                p.committed_offset = o.offset;
                p.committed_leader_epoch = if version >= 5 { o.leader_epoch } else { -1 };
                p.metadata = Some(str_bytes(&o.metadata));
                // v1 has no group-level error: each partition carries it.
                p.error_code = if version < 2 && code != 0 { code } else { o.error_code };
                p
            })
            .collect();
        t
    });
    Ok(encode(request, &response))
}

/// Asks the group's coordinator; a routing error answers every partition.
async fn fetch(
    broker: &Rc<Broker>,
    group_id: String,
    wanted: Option<Vec<(String, i32)>>,
    require_stable: bool,
) -> GroupOffsets {
    let op = GroupOp::FetchOffsets { group_id: group_id.clone(), partitions: wanted.clone(), require_stable };
    match broker.on_group(op).await {
        Ok(GroupReply::Offsets(offsets)) => (0, offsets),
        Ok(_) => unreachable!("an offset fetch is answered with offsets"),
        Err(code) => {
            let failed = wanted
                .unwrap_or_default()
                .into_iter()
                .map(|(topic, partition)| FetchedOffset {
                    topic,
                    partition,
                    offset: -1,
                    leader_epoch: -1,
                    metadata: String::new(),
                    error_code: code,
                })
                .collect();
            (code, failed)
        }
    }
}

/// Groups offsets by topic (in first-seen order) and builds each topic entry.
fn by_topic<T>(offsets: Vec<FetchedOffset>, mut make: impl FnMut(TopicName, Vec<FetchedOffset>) -> T) -> Vec<T> {
    let mut topics: Vec<(String, Vec<FetchedOffset>)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for o in offsets {
        match index.get(&o.topic) {
            Some(&i) => topics[i].1.push(o),
            None => {
                index.insert(o.topic.clone(), topics.len());
                topics.push((o.topic.clone(), vec![o]));
            }
        }
    }
    topics.into_iter().map(|(name, list)| make(TopicName(str_bytes(&name)), list)).collect()
}
