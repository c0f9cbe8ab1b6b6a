//! Fetch: reads each partition on its owning shard, long-polls until
//! `min_bytes` arrive or `max_wait_ms` passes, and answers with a response
//! encoded by hand so that stored batches are sent by reference, not copied.
//!
//! Byte limits follow KIP-74: `partition_max_bytes` per partition and
//! `max_bytes` for the response, except that the first partition with data
//! always returns at least one whole batch.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::FetchRequest;

use super::{check_leader_epoch, decode_body, error_code, FrameError};
use crate::broker::{Broker, PartitionOk, PartitionOp, TopicPartition};
use crate::protocol::{PartsWriter, Reply, Request};

/// One requested partition and what was read for it.
pub struct Slot {
    pub partition: i32,
    pub tp: Option<TopicPartition>,
    pub fetch_offset: i64,
    pub max_bytes: usize,
    pub error: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// The stored batches, sent as they are.
    pub parts: Vec<Bytes>,
}

impl Slot {
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }
}

pub async fn handle(broker: &Rc<Broker>, request: &Request) -> Result<Reply, FrameError> {
    let body: FetchRequest = decode_body(request)?;
    if body.session_id != 0 {
        // spate never hands out fetch sessions, so a client cannot hold one.
        return Ok(encode(request, ResponseError::FetchSessionIdNotFound.code(), &[], &[]));
    }
    let wait_ms = (body.max_wait_ms.max(0) as u64).min(broker.config.fetch_max_wait_cap_ms);
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let min_bytes = body.min_bytes.max(0) as usize;
    let response_max_bytes = if body.max_bytes <= 0 { usize::MAX } else { body.max_bytes as usize };

    let meta = broker.meta();
    let mut topics = Vec::with_capacity(body.topics.len());
    let mut slots = Vec::new();
    for topic in &body.topics {
        let known = meta.topic(topic.topic.0.as_str());
        topics.push((topic.topic.0.to_string(), topic.partitions.len()));
        for p in &topic.partitions {
            let mut slot = Slot {
                partition: p.partition,
                tp: None,
                fetch_offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                error: 0,
                high_watermark: -1,
                log_start_offset: -1,
                parts: Vec::new(),
            };
            match known.filter(|t| p.partition >= 0 && p.partition < t.partitions) {
                None => slot.error = ResponseError::UnknownTopicOrPartition.code(),
                Some(t) => match check_leader_epoch(p.current_leader_epoch, t.leader_epoch) {
                    Ok(()) => slot.tp = Some(t.tp(p.partition)),
                    Err(code) => slot.error = code,
                },
            }
            slots.push(slot);
        }
    }

    loop {
        read_all(broker, &mut slots).await;
        let total: usize = slots.iter().map(Slot::bytes).sum();
        let now = Instant::now();
        let any_error = slots.iter().any(|s| s.error != 0);
        if total >= min_bytes || now >= deadline || any_error || slots.is_empty() {
            break;
        }
        let waits = slots.iter().filter_map(|s| Some((s.tp?, s.high_watermark))).collect();
        broker.wait_for_data(waits, deadline - now).await;
    }
    apply_response_limit(&mut slots, response_max_bytes);
    Ok(encode(request, 0, &topics, &slots))
}

/// Reads every healthy slot, concurrently across shards.
async fn read_all(broker: &Broker, slots: &mut [Slot]) {
    let reads = slots.iter().map(|slot| async move {
        let tp = slot.tp.filter(|_| slot.error == 0)?;
        Some(broker.on_partition(tp, PartitionOp::Read { offset: slot.fetch_offset, max_bytes: slot.max_bytes }).await)
    });
    let results = futures::future::join_all(reads).await;
    for (slot, result) in slots.iter_mut().zip(results) {
        match result {
            None => {}
            Some(Ok(PartitionOk::Read { parts, high_watermark, log_start_offset })) => {
                slot.parts = parts;
                slot.high_watermark = high_watermark;
                slot.log_start_offset = log_start_offset;
            }
            Some(Ok(other)) => unreachable!("read answered with {other:?}"),
            Some(Err(e)) => slot.error = error_code(e),
        }
        if slot.error != 0 {
            slot.parts.clear();
        }
    }
}

/// Drops data past the response's `max_bytes`, keeping the first non-empty
/// partition whole (KIP-74).
fn apply_response_limit(slots: &mut [Slot], max_bytes: usize) {
    let mut total = 0usize;
    for slot in slots.iter_mut() {
        let bytes = slot.bytes();
        if bytes == 0 {
            continue;
        }
        if total > 0 && total + bytes > max_bytes {
            slot.parts.clear();
            continue;
        }
        total += bytes;
    }
}

fn encode(request: &Request, top_error: i16, topics: &[(String, usize)], slots: &[Slot]) -> Reply {
    Reply::Send(encode_response(request.version(), request.header.correlation_id, top_error, topics, slots))
}

/// Encodes a Fetch response (v4..=v12) with the records as shared parts:
/// `topics` names each topic and how many of `slots`, in order, are its.
pub fn encode_response(
    version: i16,
    correlation_id: i32,
    top_error: i16,
    topics: &[(String, usize)],
    slots: &[Slot],
) -> Vec<Bytes> {
    let flexible = version >= 12;
    let mut w = PartsWriter::new();
    w.buf().put_i32(correlation_id);
    if flexible {
        w.put_no_tags();
    }
    w.buf().put_i32(0); // throttle_time_ms
    if version >= 7 {
        w.buf().put_i16(top_error);
        w.buf().put_i32(0); // session_id: no session
    }
    w.put_array_len(topics.len(), flexible);
    let mut slots = slots.iter();
    for (name, partitions) in topics {
        w.put_string(name, flexible);
        w.put_array_len(*partitions, flexible);
        for slot in slots.by_ref().take(*partitions) {
            put_partition(&mut w, slot, version, flexible);
        }
        if flexible {
            w.put_no_tags();
        }
    }
    if flexible {
        w.put_no_tags();
    }
    w.finish()
}

fn put_partition(w: &mut PartsWriter, slot: &Slot, version: i16, flexible: bool) {
    let buf = w.buf();
    buf.put_i32(slot.partition);
    buf.put_i16(slot.error);
    buf.put_i64(slot.high_watermark);
    buf.put_i64(slot.high_watermark); // last_stable_offset: no transactions
    if version >= 5 {
        buf.put_i64(slot.log_start_offset);
    }
    // aborted_transactions: null
    if flexible {
        w.put_unsigned_varint(0);
    } else {
        w.buf().put_i32(-1);
    }
    if version >= 11 {
        w.buf().put_i32(-1); // preferred_read_replica
    }
    let bytes = slot.bytes();
    if flexible {
        w.put_unsigned_varint(bytes as u32 + 1);
    } else {
        w.buf().put_i32(bytes as i32);
    }
    for part in &slot.parts {
        w.put_shared(part.clone());
    }
    if flexible {
        w.put_no_tags();
    }
}
