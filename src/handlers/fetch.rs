//! Fetch: reads each partition on its owning shard, long-polls until
//! `min_bytes` arrive or `max_wait_ms` passes, and answers with a response
//! encoded by hand so that stored batches are sent by reference, not copied.
//!
//! Byte limits follow KIP-74: `partition_max_bytes` per partition and a
//! response budget of the request's `max_bytes` capped by the broker's
//! [`FETCH_MAX_BYTES`], except that the first partition with data always
//! returns at least one whole batch — once per response, not per partition.
//!
//! A partition named more than once is answered once, as Kafka does (its
//! request is read into a map keyed by topic-partition): at the position of
//! its first mention, with the fetch offset and limits of its last.
//!
//! Fetch sessions (KIP-227, [`crate::broker::fetch_sessions`]): epoch 0
//! creates one holding the request's partitions; a later epoch names only
//! what changed, fetches every partition the session holds, and answers
//! only those with records, a moved high watermark or log start, or an error.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, FetchRequest};

use super::{check_leader_epoch, decode_body, error_code, FrameError};
use crate::broker::fetch_sessions::{Found, Wanted, FINAL_EPOCH, INITIAL_EPOCH};
use crate::broker::{Broker, PartitionOk, PartitionOp, TopicMeta, TopicPartition};
use crate::protocol::{PartsWriter, Reply, Request};

/// The broker's cap on a response's record bytes, whatever the request's
/// `max_bytes` (Kafka's `fetch.max.bytes`, default 55 MiB). It should become
/// a config value; it is a constant until config.rs grows `fetch_max_bytes`.
pub const FETCH_MAX_BYTES: usize = 55 << 20;

/// Partitions read at once while the budget is spent and no data has been
/// found yet: each may return one whole batch (KIP-74), so this bounds the
/// memory such a read can take to this many batches.
const ZERO_BUDGET_READS_AT_ONCE: usize = 16;

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
    // A follower replica (replica id = its node id) reads everything written
    // and waits for writes; a consumer reads and waits for the high watermark.
    let follower = (body.replica_id.0 >= 0).then_some(body.replica_id.0);
    let (session, wanted) = match open_session(broker, &body) {
        Ok(opened) => opened,
        Err(code) => return Ok(encode(request, code, 0, &[], &[])),
    };
    let wait_ms = (body.max_wait_ms.max(0) as u64).min(broker.config.fetch_max_wait_cap_ms);
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let min_bytes = usize::try_from(body.min_bytes).unwrap_or(0);
    let budget_bytes = response_budget_bytes(body.max_bytes);
    let meta = broker.meta();
    let mut slots: Vec<Slot> = wanted.iter().map(|w| new_slot(meta.topic(&w.topic), w)).collect();
    drop(meta);

    loop {
        read_all(broker, &mut slots, budget_bytes, follower).await;
        let total: usize = slots.iter().map(Slot::bytes).sum();
        let now = Instant::now();
        let any_error = slots.iter().any(|s| s.error != 0);
        if total >= min_bytes || now >= deadline || any_error || slots.is_empty() {
            break;
        }
        let waits = slots
            .iter()
            .filter_map(|s| Some((s.tp?, if follower.is_some() { s.fetch_offset } else { s.high_watermark })))
            .collect();
        broker.wait_for_data(waits, deadline - now, follower.is_some()).await;
    }
    apply_response_limit(&mut slots, budget_bytes);
    let (session_id, carried) = close_session(broker, session, follower.is_some(), &wanted, &slots);
    let names: Vec<&str> = wanted.iter().map(|w| &*w.topic).collect();
    let Some(carried) = carried else {
        return Ok(encode(request, 0, session_id, &group_topics(&names), &slots));
    };
    // An incremental answer: only the partitions with news.
    let (names, slots): (Vec<&str>, Vec<Slot>) =
        names.into_iter().zip(slots).zip(carried).filter(|(_, carry)| *carry).map(|(x, _)| x).unzip();
    Ok(encode(request, 0, session_id, &group_topics(&names), &slots))
}

/// What a fetch does with its session (KIP-227).
enum SessionUse {
    /// Epoch -1: none; every partition is answered.
    None,
    /// Epoch 0: every partition is answered, and a session is created for them.
    Create,
    /// A later epoch of this session: only partitions with news are answered.
    Continue(i32),
}

/// The request's session and the partitions to fetch: the request's own,
/// or with a session, the session's after the request's changes. Err: the
/// top-level error of a request naming an unknown session or a wrong epoch.
fn open_session(broker: &Broker, body: &FetchRequest) -> Result<(SessionUse, Vec<Wanted>), i16> {
    let asked = asked_partitions(body);
    let mut sessions = broker.fetch_sessions.borrow_mut();
    match body.session_epoch {
        FINAL_EPOCH | INITIAL_EPOCH => {
            if body.session_id != 0 {
                sessions.close(body.session_id);
            }
            let session = if body.session_epoch == INITIAL_EPOCH { SessionUse::Create } else { SessionUse::None };
            Ok((session, asked))
        }
        epoch => {
            let forgotten = body
                .forgotten_topics_data
                .iter()
                .flat_map(|t| {
                    let topic: Arc<str> = Arc::from(t.topic.0.as_str());
                    t.partitions.iter().map(move |&p| (topic.clone(), p))
                })
                .collect();
            let wanted = sessions.incremental(body.session_id, epoch, asked, forgotten, Instant::now())?;
            // An incremental fetch that emptied its session closed it: answered sessionless.
            let session = if wanted.is_empty() { SessionUse::None } else { SessionUse::Continue(body.session_id) };
            Ok((session, wanted))
        }
    }
}

/// The response's session id and, for an incremental fetch, whether the
/// response carries each slot (None: it carries them all).
fn close_session(
    broker: &Broker,
    session: SessionUse,
    follower: bool,
    wanted: &[Wanted],
    slots: &[Slot],
) -> (i32, Option<Vec<bool>>) {
    let found = slots.iter().map(|s| Found {
        high_watermark: s.high_watermark,
        log_start_offset: s.log_start_offset,
        has_records: !s.parts.is_empty(),
        error: s.error,
    });
    let mut sessions = broker.fetch_sessions.borrow_mut();
    match session {
        SessionUse::None => (0, None),
        SessionUse::Create => {
            let id = sessions.create(follower, wanted.iter().cloned().zip(found).collect(), Instant::now());
            (id, None)
        }
        SessionUse::Continue(id) => {
            let results: Vec<_> = wanted.iter().map(|w| (w.topic.clone(), w.partition)).zip(found).collect();
            (id, Some(sessions.respond(id, &results)))
        }
    }
}

/// The request's partitions, each once: a partition named more than once
/// keeps the position of its first mention and the fields of its last, as
/// Kafka's map does.
fn asked_partitions(body: &FetchRequest) -> Vec<Wanted> {
    let mut index: HashMap<(&str, i32), usize> = HashMap::new();
    let mut wanted: Vec<Wanted> = Vec::new();
    for topic in &body.topics {
        let name = topic.topic.0.as_str();
        let shared: Arc<str> = Arc::from(name);
        for p in &topic.partitions {
            let w = Wanted {
                topic: shared.clone(),
                partition: p.partition,
                fetch_offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes,
                current_leader_epoch: p.current_leader_epoch,
            };
            match index.entry((name, p.partition)) {
                Entry::Occupied(at) => wanted[*at.get()] = w,
                Entry::Vacant(at) => {
                    at.insert(wanted.len());
                    wanted.push(w);
                }
            }
        }
    }
    wanted
}

/// The response's record-byte budget: the request's `max_bytes` within the
/// broker's cap. Zero or negative means zero, as in Kafka: only the one
/// batch KIP-74 always allows.
pub fn response_budget_bytes(request_max_bytes: i32) -> usize {
    usize::try_from(request_max_bytes).unwrap_or(0).min(FETCH_MAX_BYTES)
}

/// Runs of equal consecutive names: a topic named again after another one
/// gets a second entry, as Kafka's response does.
fn group_topics(slot_topics: &[&str]) -> Vec<(String, usize)> {
    let mut topics: Vec<(String, usize)> = Vec::new();
    for name in slot_topics {
        match topics.last_mut() {
            Some((last, n)) if last == name => *n += 1,
            _ => topics.push((name.to_string(), 1)),
        }
    }
    topics
}

fn new_slot(known: Option<&Arc<TopicMeta>>, p: &Wanted) -> Slot {
    let mut slot = Slot {
        partition: p.partition,
        tp: None,
        fetch_offset: p.fetch_offset,
        max_bytes: usize::try_from(p.max_bytes).unwrap_or(0),
        error: 0,
        high_watermark: -1,
        log_start_offset: -1,
        parts: Vec::new(),
    };
    match known.filter(|t| p.partition >= 0 && p.partition < t.partitions) {
        None => slot.error = ResponseError::UnknownTopicOrPartition.code(),
        Some(t) => match check_leader_epoch(p.current_leader_epoch, t.partition(p.partition).leader_epoch) {
            Ok(()) => slot.tp = Some(t.tp(p.partition)),
            Err(code) => slot.error = code,
        },
    }
    slot
}

/// Reads every healthy slot within `budget_bytes`, in waves: the slots of a
/// wave are read concurrently (across shards), each granted its share of
/// what is left, so that what is held in memory stays near the budget
/// instead of every partition's `partition_max_bytes`. Once the budget is
/// spent and some data found, the rest only learn their offsets.
async fn read_all(broker: &Rc<Broker>, slots: &mut [Slot], budget_bytes: usize, follower: Option<i32>) {
    let mut remaining_bytes = budget_bytes;
    let mut have_data = false;
    let mut start = 0;
    while start < slots.len() {
        if remaining_bytes == 0 && have_data {
            read_offsets(broker, &mut slots[start..], follower.is_some()).await;
            return;
        }
        let grants = wave_grants(&slots[start..], remaining_bytes);
        let wave = &mut slots[start..start + grants.len()];
        read_wave(broker, wave, &grants, follower).await;
        let got_bytes: usize = wave.iter().map(Slot::bytes).sum();
        have_data |= got_bytes > 0;
        remaining_bytes = remaining_bytes.saturating_sub(got_bytes);
        start += grants.len();
    }
}

/// The byte grants of the next wave, one per slot from the first of `slots`:
/// each slot gets its `max_bytes` within what is left of `remaining_bytes`;
/// the wave ends where the budget does, and holds at most
/// [`ZERO_BUDGET_READS_AT_ONCE`] slots granted nothing (each of those may
/// still return one batch). Never empty if `slots` is not.
fn wave_grants(slots: &[Slot], mut remaining_bytes: usize) -> Vec<usize> {
    let mut grants = Vec::new();
    let mut zero_grants = 0;
    for slot in slots {
        let grant = slot.max_bytes.min(remaining_bytes);
        if grant == 0 {
            if zero_grants == ZERO_BUDGET_READS_AT_ONCE {
                break;
            }
            zero_grants += 1;
        }
        grants.push(grant);
        remaining_bytes -= grant;
        if remaining_bytes == 0 && grant > 0 {
            break; // the budget is planned out: what is read next depends on what this wave finds
        }
    }
    grants
}

/// Reads the healthy slots of one wave concurrently, each within its grant.
async fn read_wave(broker: &Rc<Broker>, slots: &mut [Slot], grants: &[usize], follower: Option<i32>) {
    let reads = slots.iter().zip(grants).map(|(slot, &max_bytes)| async move {
        let tp = slot.tp.filter(|_| slot.error == 0)?;
        let op = PartitionOp::Read { offset: slot.fetch_offset, max_bytes, follower };
        Some(broker.on_partition(tp, op).await)
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

/// For slots past the spent budget: their offsets (and whether the fetch
/// offset is in range, by the same rule as a read), without reading data.
async fn read_offsets(broker: &Rc<Broker>, slots: &mut [Slot], follower: bool) {
    let reads = slots.iter().map(|slot| async move {
        let tp = slot.tp.filter(|_| slot.error == 0)?;
        Some(broker.on_partition(tp, PartitionOp::Offsets).await)
    });
    let results = futures::future::join_all(reads).await;
    for (slot, result) in slots.iter_mut().zip(results) {
        slot.parts.clear();
        match result {
            None => {}
            Some(Ok(PartitionOk::Offsets { log_start_offset, high_watermark })) => {
                slot.high_watermark = high_watermark;
                slot.log_start_offset = log_start_offset;
                // PartitionLog::plan_read's rule: the log end itself is readable (empty).
                // (A follower may be past the high watermark: the next fetch checks it.)
                if slot.fetch_offset < log_start_offset || (slot.fetch_offset > high_watermark && !follower) {
                    slot.error = ResponseError::OffsetOutOfRange.code();
                }
            }
            Some(Ok(other)) => unreachable!("offsets answered with {other:?}"),
            Some(Err(e)) => slot.error = error_code(e),
        }
    }
}

/// Drops data past the response's `max_bytes`, keeping the first non-empty
/// partition whole (KIP-74): the only slot that may pass the budget.
fn apply_response_limit(slots: &mut [Slot], max_bytes: usize) {
    let mut total = 0usize;
    for slot in slots.iter_mut() {
        let bytes = slot.bytes();
        if bytes == 0 {
            continue;
        }
        if total > 0 && total.saturating_add(bytes) > max_bytes {
            slot.parts.clear();
            continue;
        }
        total = total.saturating_add(bytes);
    }
}

/// Encodes the response; one whose frame would not fit the i32 length field
/// closes the connection instead of sending a negative length. (Unreachable
/// with the budget capped at [`FETCH_MAX_BYTES`]; checked all the same.)
fn encode(request: &Request, top_error: i16, session_id: i32, topics: &[(String, usize)], slots: &[Slot]) -> Reply {
    crate::metrics::with(|m| {
        let errors = std::iter::once(top_error).chain(slots.iter().map(|slot| slot.error));
        errors.filter(|code| *code != 0).for_each(|code| m.error(ApiKey::Fetch, code));
    });
    let parts = encode_response(request.version(), request.header.correlation_id, top_error, session_id, topics, slots);
    let frame_bytes = parts.iter().fold(0usize, |sum, p| sum.saturating_add(p.len()));
    if i32::try_from(frame_bytes.saturating_sub(4)).is_err() {
        return Reply::Close(format!("Fetch response of {frame_bytes} bytes does not fit a Kafka frame"));
    }
    Reply::Send(parts)
}

/// The records field's length if it fits the wire: an i32, or a compact
/// length (u32 varint of length + 1) kept within i32 as Kafka's is.
fn records_len(bytes: usize) -> Option<i32> {
    i32::try_from(bytes).ok().filter(|&n| n < i32::MAX)
}

/// Encodes a Fetch response (v4..=v12) with the records as shared parts:
/// `topics` names each topic and how many of `slots`, in order, are its.
pub fn encode_response(
    version: i16,
    correlation_id: i32,
    top_error: i16,
    session_id: i32,
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
        w.buf().put_i32(session_id);
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
    // Records too long for the length field are left out rather than sent
    // with a wrapped length (the response budget keeps this from happening).
    let len = records_len(slot.bytes());
    if len.is_none() {
        tracing::warn!(partition = slot.partition, bytes = slot.bytes(), "fetched records too long for a response");
    }
    let len = len.unwrap_or(0);
    if flexible {
        w.put_unsigned_varint(len.unsigned_abs() + 1);
    } else {
        w.buf().put_i32(len);
    }
    if len > 0 {
        for part in &slot.parts {
            w.put_shared(part.clone());
        }
    }
    if flexible {
        w.put_no_tags();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(max_bytes: usize, data_bytes: usize) -> Slot {
        Slot {
            partition: 0,
            tp: None,
            fetch_offset: 0,
            max_bytes,
            error: 0,
            high_watermark: 0,
            log_start_offset: 0,
            parts: if data_bytes > 0 { vec![Bytes::from(vec![0u8; data_bytes])] } else { Vec::new() },
        }
    }

    #[test]
    fn budget_is_capped_and_never_negative() {
        assert_eq!(response_budget_bytes(i32::MAX), FETCH_MAX_BYTES);
        assert_eq!(response_budget_bytes(1000), 1000);
        assert_eq!(response_budget_bytes(0), 0);
        assert_eq!(response_budget_bytes(-5), 0);
    }

    #[test]
    fn waves_share_out_the_budget() {
        let slots: Vec<Slot> = [400, 400, 400, 400].iter().map(|&m| slot(m, 0)).collect();
        assert_eq!(wave_grants(&slots, 1000), [400, 400, 200], "the wave ends where the budget does");
        assert_eq!(wave_grants(&slots[3..], 1000), [400]);
        let many: Vec<Slot> = (0..40).map(|_| slot(1 << 20, 0)).collect();
        assert_eq!(wave_grants(&many, 0), vec![0; ZERO_BUDGET_READS_AT_ONCE], "bounded reads of one batch each");
        let zero_max: Vec<Slot> = (0..40).map(|_| slot(0, 0)).collect();
        assert_eq!(wave_grants(&zero_max, 1000).len(), ZERO_BUDGET_READS_AT_ONCE);
    }

    #[test]
    fn only_the_first_partition_with_data_may_pass_the_budget() {
        let mut slots = vec![slot(0, 0), slot(0, 5000), slot(0, 10), slot(0, 0)];
        apply_response_limit(&mut slots, 1000);
        let kept: Vec<usize> = slots.iter().map(Slot::bytes).collect();
        assert_eq!(kept, [0, 5000, 0, 0]);
        let mut slots = vec![slot(0, 300), slot(0, 600), slot(0, 200)];
        apply_response_limit(&mut slots, 1000);
        assert_eq!(slots.iter().map(Slot::bytes).collect::<Vec<_>>(), [300, 600, 0]);
    }

    #[test]
    fn topics_group_consecutive_slots() {
        assert_eq!(
            group_topics(&["a", "a", "b", "a"]),
            [("a".to_string(), 2), ("b".to_string(), 1), ("a".to_string(), 1)]
        );
        assert!(group_topics(&[]).is_empty());
    }

    #[test]
    fn records_lengths_fit_i32() {
        assert_eq!(records_len(0), Some(0));
        assert_eq!(records_len(i32::MAX as usize - 1), Some(i32::MAX - 1));
        assert_eq!(records_len(i32::MAX as usize), None, "compact length + 1 would pass i32");
        assert_eq!(records_len(3 << 30), None);
    }
}
