//! OffsetCommit: a group's (or a simple consumer's) committed offsets,
//! appended to its `__consumer_offsets` partition and answered once durable.
//! Like a Produce, the commit takes effect (the connection's next request
//! may go) once it has its place in the log: when its coordinator queues it.

use std::rc::Rc;

use bytes::{BufMut, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequestTopic;
use kafka_protocol::messages::OffsetCommitRequest;
use shards::ShardId;

use super::{decode_body, Applied, AppliedWait, FrameError};
use crate::broker::{Broker, CommitSubmitted};
use crate::group::records::OffsetValue;
use crate::group::{CommitArgs, GroupReply};
use crate::protocol::{Reply, Request};

/// `previous`: the connection's previous request (an OffsetCommit too) when
/// the connection did not wait for it; this one takes effect after it.
///
/// This future is a task of its own per commit: what it holds across its
/// awaits is kept small (the request's topics, the commit's arguments), as
/// a task's future is allocated and moved whole.
pub async fn handle(
    broker: Rc<Broker>,
    request: Request,
    applied: Applied,
    previous: Option<AppliedWait>,
) -> Result<Reply, FrameError> {
    let body: OffsetCommitRequest = decode_body(&request)?;
    let route = broker.group_route(&body.group_id);
    let (topics, args, sequenced) = commit_args(body, applied);
    let count = args.offsets.len();
    if let Some(previous) = previous {
        // Behind a commit sent to the same remote coordinator, the link's
        // order is enough; otherwise the previous one must have taken effect.
        let link = route.ok().map(|(_, shard)| shard).filter(|&shard| shard != broker.shard_id);
        previous.ordered_before(link).await;
    }
    let unavailable = ResponseError::CoordinatorNotAvailable.code();
    let answer = match route.map(|route| broker.submit_commit(route, args)) {
        Err(code) => Err(code),
        Ok(CommitSubmitted::Gone) => Err(unavailable),
        Ok(CommitSubmitted::Sent(link, answer)) => {
            link.map(sequenced);
            answer.await.unwrap_or(Err(unavailable))
        }
        Ok(CommitSubmitted::Full(shard, msg, answer)) => {
            if Box::pin(broker.send_when_room(shard, *msg)).await {
                sequenced(shard);
                answer.await.unwrap_or(Err(unavailable))
            } else {
                Err(unavailable)
            }
        }
    };
    let codes = match answer {
        Ok(GroupReply::Codes(_, codes)) => codes,
        Ok(_) => unreachable!("a commit is answered with codes"),
        Err(code) => vec![code; count],
    };
    Ok(encode_response(&request, &topics, &codes))
}

/// The commit a request asks for: the request's topics (for the response),
/// the coordinator's arguments, and the signal that it is sequenced on a link.
fn commit_args(
    body: OffsetCommitRequest,
    applied: Applied,
) -> (Vec<OffsetCommitRequestTopic>, CommitArgs, impl FnOnce(ShardId)) {
    let now_ms = crate::storage::now_ms();
    let offsets: Vec<(String, i32, OffsetValue)> = body
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| {
                let value = OffsetValue {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_deref().unwrap_or("").to_string(),
                    commit_timestamp_ms: now_ms,
                };
                (t.name.0.to_string(), p.partition_index, value)
            })
        })
        .collect();
    let (appended, sequenced) = applied.into_parts();
    let args = CommitArgs {
        group_id: body.group_id.0.to_string(),
        generation: body.generation_id_or_member_epoch,
        member_id: body.member_id.to_string(),
        instance_id: body.group_instance_id.as_deref().map(str::to_string),
        offsets,
        appended,
    };
    (body.topics, args, sequenced)
}

/// Bytes a response takes, besides its topic names.
const RESPONSE_FIXED_BYTES: usize = 16;
/// Bytes a response takes per topic and per partition, at most.
const RESPONSE_TOPIC_BYTES: usize = 8;
const RESPONSE_PARTITION_BYTES: usize = 7;

/// The response, written by hand into one buffer (kafka-protocol's encoder
/// builds a response struct of vectors first): per topic of the request, its
/// partitions with `codes` in request order.
fn encode_response(request: &Request, topics: &[OffsetCommitRequestTopic], codes: &[i16]) -> Reply {
    let version = request.version();
    let flexible = version >= 8;
    let partitions: usize = topics.iter().map(|t| t.partitions.len()).sum();
    let names: usize = topics.iter().map(|t| t.name.len()).sum();
    let capacity =
        RESPONSE_FIXED_BYTES + names + topics.len() * RESPONSE_TOPIC_BYTES + partitions * RESPONSE_PARTITION_BYTES;
    let mut out = BytesMut::with_capacity(capacity);
    out.put_i32(0); // frame length, below
    out.put_i32(request.header.correlation_id);
    if request.api_key.response_header_version(version) >= 1 {
        put_uvarint(&mut out, 0); // header tagged fields
    }
    if version >= 3 {
        out.put_i32(0); // throttle time
    }
    put_array_len(&mut out, topics.len(), flexible);
    let mut codes = codes.iter().copied();
    for topic in topics {
        put_string(&mut out, &topic.name, flexible);
        put_array_len(&mut out, topic.partitions.len(), flexible);
        for p in &topic.partitions {
            out.put_i32(p.partition_index);
            out.put_i16(codes.next().unwrap_or(0));
            put_tags(&mut out, flexible);
        }
        put_tags(&mut out, flexible);
    }
    put_tags(&mut out, flexible);
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Reply::Send(vec![out.freeze()])
}

/// A string: compact (varint length + 1) in flexible versions, else i16 length.
fn put_string(out: &mut BytesMut, s: &str, flexible: bool) {
    if flexible {
        put_uvarint(out, s.len() as u32 + 1);
    } else {
        out.put_i16(s.len() as i16);
    }
    out.put_slice(s.as_bytes());
}

/// An array length: compact (varint n + 1) in flexible versions, else i32.
fn put_array_len(out: &mut BytesMut, n: usize, flexible: bool) {
    if flexible {
        put_uvarint(out, n as u32 + 1);
    } else {
        out.put_i32(n as i32);
    }
}

/// An empty tagged-field section, in flexible versions.
fn put_tags(out: &mut BytesMut, flexible: bool) {
    if flexible {
        put_uvarint(out, 0);
    }
}

fn put_uvarint(out: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::offset_commit_request::OffsetCommitRequestPartition;
    use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
    use kafka_protocol::messages::{ApiKey, OffsetCommitResponse, RequestHeader, TopicName};
    use kafka_protocol::protocol::StrBytes;

    #[test]
    fn responses_match_kafkas_encoder_at_every_version() {
        let mut body = OffsetCommitRequest::default();
        for (name, partitions) in [("orders", 3), ("t", 1), (&*"x".repeat(200), 2)] {
            let mut topic = OffsetCommitRequestTopic::default();
            topic.name = TopicName(StrBytes::from_string(name.to_string()));
            topic.partitions = (0..partitions)
                .map(|i| {
                    let mut p = OffsetCommitRequestPartition::default();
                    p.partition_index = i * 7;
                    p
                })
                .collect();
            body.topics.push(topic);
        }
        let codes: Vec<i16> = (0..6).map(|i| i * 3).collect();
        for version in 2..=8 {
            let mut header = RequestHeader::default();
            header.request_api_key = ApiKey::OffsetCommit as i16;
            header.request_api_version = version;
            header.correlation_id = 77;
            let request = Request { api_key: ApiKey::OffsetCommit, header, body: Default::default(), peer: None };
            let mut expected = OffsetCommitResponse::default();
            let mut code = codes.iter().copied();
            expected.topics = body
                .topics
                .iter()
                .map(|t| {
                    let mut out = OffsetCommitResponseTopic::default();
                    out.name = t.name.clone();
                    out.partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            let mut r = OffsetCommitResponsePartition::default();
                            r.partition_index = p.partition_index;
                            r.error_code = code.next().unwrap();
                            r
                        })
                        .collect();
                    out
                })
                .collect();
            let (Reply::Send(want), Reply::Send(got)) =
                (crate::protocol::encode(&request, &expected), encode_response(&request, &body.topics, &codes))
            else {
                panic!("both encode");
            };
            assert_eq!(got, want, "v{version}");
        }
    }
}
