//! The records of `__consumer_offsets`, in Kafka's own key and value schemas,
//! so that Kafka's tools can read the topic: offset commits (key v1, value
//! v3) and group metadata (key v2, value v3). A null value is a tombstone.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

const OFFSET_KEY_VERSION: i16 = 1;
const GROUP_KEY_VERSION: i16 = 2;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;

/// One committed offset, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// A member as stored in its group's metadata record.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// A group's membership after a rebalance, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp_ms: i64,
    pub members: Vec<StoredMember>,
}

/// A decoded `__consumer_offsets` record.
#[derive(Debug, PartialEq)]
pub enum GroupRecord {
    Offset { group: String, topic: String, partition: i32, value: Option<OffsetValue> },
    Group { group: String, value: Option<GroupValue> },
}

pub fn offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut out = BytesMut::with_capacity(10 + group.len() + topic.len());
    out.put_i16(OFFSET_KEY_VERSION);
    put_str(&mut out, group);
    put_str(&mut out, topic);
    out.put_i32(partition);
    out.freeze()
}

pub fn group_key(group: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + group.len());
    out.put_i16(GROUP_KEY_VERSION);
    put_str(&mut out, group);
    out.freeze()
}

pub fn offset_value(value: &OffsetValue) -> Bytes {
    let mut out = BytesMut::with_capacity(24 + value.metadata.len());
    out.put_i16(OFFSET_VALUE_VERSION);
    out.put_i64(value.offset);
    out.put_i32(value.leader_epoch);
    put_str(&mut out, &value.metadata);
    out.put_i64(value.commit_timestamp_ms);
    out.freeze()
}

pub fn group_value(value: &GroupValue) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_i16(GROUP_VALUE_VERSION);
    put_str(&mut out, &value.protocol_type);
    out.put_i32(value.generation);
    put_nullable_str(&mut out, value.protocol.as_deref());
    put_nullable_str(&mut out, value.leader.as_deref());
    out.put_i64(value.state_timestamp_ms);
    out.put_i32(value.members.len() as i32);
    for m in &value.members {
        put_str(&mut out, &m.member_id);
        put_nullable_str(&mut out, m.instance_id.as_deref());
        put_str(&mut out, &m.client_id);
        put_str(&mut out, &m.client_host);
        out.put_i32(m.rebalance_timeout_ms);
        out.put_i32(m.session_timeout_ms);
        put_bytes(&mut out, &m.subscription);
        put_bytes(&mut out, &m.assignment);
    }
    out.freeze()
}

/// Encodes (key, value) pairs as one uncompressed v2 batch (offsets from 0;
/// the partition assigns the real ones).
pub fn batch(records: Vec<(Bytes, Option<Bytes>)>, now_ms: i64) -> Bytes {
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32 - 1,
            timestamp: now_ms,
            key: Some(key),
            value,
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut out = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut out, records.iter(), &options).expect("an uncompressed batch always encodes");
    out.freeze()
}

/// Decodes one record's key and value; None for a key this broker does not know.
pub fn decode(key: &Bytes, value: Option<&Bytes>) -> Option<GroupRecord> {
    let mut k = key.clone();
    let version = get_i16(&mut k)?;
    match version {
        0 | 1 => {
            let group = get_str(&mut k)?;
            let topic = get_str(&mut k)?;
            let partition = get_i32(&mut k)?;
            let value = match value {
                None => None,
                Some(v) => Some(decode_offset_value(&mut v.clone())?),
            };
            Some(GroupRecord::Offset { group, topic, partition, value })
        }
        2 => {
            let group = get_str(&mut k)?;
            let value = match value {
                None => None,
                Some(v) => Some(decode_group_value(&mut v.clone())?),
            };
            Some(GroupRecord::Group { group, value })
        }
        _ => None,
    }
}

fn decode_offset_value(v: &mut Bytes) -> Option<OffsetValue> {
    let version = get_i16(v)?;
    let offset = get_i64(v)?;
    let leader_epoch = if version >= 3 { get_i32(v)? } else { -1 };
    let metadata = get_str(v)?;
    let commit_timestamp_ms = get_i64(v)?;
    Some(OffsetValue { offset, leader_epoch, metadata, commit_timestamp_ms })
}

fn decode_group_value(v: &mut Bytes) -> Option<GroupValue> {
    let version = get_i16(v)?;
    if version != GROUP_VALUE_VERSION {
        return None;
    }
    let protocol_type = get_str(v)?;
    let generation = get_i32(v)?;
    let protocol = get_nullable_str(v)?;
    let leader = get_nullable_str(v)?;
    let state_timestamp_ms = get_i64(v)?;
    let count = get_i32(v)?;
    let mut members = Vec::new();
    for _ in 0..count.max(0) {
        members.push(StoredMember {
            member_id: get_str(v)?,
            instance_id: get_nullable_str(v)?,
            client_id: get_str(v)?,
            client_host: get_str(v)?,
            rebalance_timeout_ms: get_i32(v)?,
            session_timeout_ms: get_i32(v)?,
            subscription: get_bytes(v)?,
            assignment: get_bytes(v)?,
        });
    }
    Some(GroupValue { protocol_type, generation, protocol, leader, state_timestamp_ms, members })
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_i16(s.len() as i16);
    out.put_slice(s.as_bytes());
}

fn put_nullable_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(out, s),
        None => out.put_i16(-1),
    }
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_i32(b.len() as i32);
    out.put_slice(b);
}

fn get_i16(b: &mut Bytes) -> Option<i16> {
    (b.remaining() >= 2).then(|| b.get_i16())
}

fn get_i32(b: &mut Bytes) -> Option<i32> {
    (b.remaining() >= 4).then(|| b.get_i32())
}

fn get_i64(b: &mut Bytes) -> Option<i64> {
    (b.remaining() >= 8).then(|| b.get_i64())
}

fn get_nullable_str(b: &mut Bytes) -> Option<Option<String>> {
    let len = get_i16(b)?;
    if len < 0 {
        return Some(None);
    }
    let len = len as usize;
    if b.remaining() < len {
        return None;
    }
    let s = String::from_utf8(b.split_to(len).to_vec()).ok()?;
    Some(Some(s))
}

fn get_str(b: &mut Bytes) -> Option<String> {
    get_nullable_str(b)?
}

fn get_bytes(b: &mut Bytes) -> Option<Bytes> {
    let len = get_i32(b)?;
    if len < 0 {
        return Some(Bytes::new());
    }
    let len = len as usize;
    (b.remaining() >= len).then(|| b.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_records_round_trip() {
        let value = OffsetValue { offset: 42, leader_epoch: 3, metadata: "m".into(), commit_timestamp_ms: 7 };
        let decoded = decode(&offset_key("g", "t", 5), Some(&offset_value(&value)));
        let expected = GroupRecord::Offset { group: "g".into(), topic: "t".into(), partition: 5, value: Some(value) };
        assert_eq!(decoded, Some(expected));
        let tombstone = decode(&offset_key("g", "t", 5), None);
        assert!(matches!(tombstone, Some(GroupRecord::Offset { value: None, .. })));
    }

    #[test]
    fn group_records_round_trip() {
        let member = StoredMember {
            member_id: "m-1".into(),
            instance_id: Some("i".into()),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            rebalance_timeout_ms: 300_000,
            session_timeout_ms: 10_000,
            subscription: Bytes::from_static(b"sub"),
            assignment: Bytes::from_static(b"asg"),
        };
        let value = GroupValue {
            protocol_type: "consumer".into(),
            generation: 4,
            protocol: Some("range".into()),
            leader: Some("m-1".into()),
            state_timestamp_ms: 9,
            members: vec![member],
        };
        let decoded = decode(&group_key("g"), Some(&group_value(&value)));
        assert_eq!(decoded, Some(GroupRecord::Group { group: "g".into(), value: Some(value) }));
        assert_eq!(decode(&Bytes::from_static(&[0, 2, 0, 9]), None), None, "a truncated key is not trusted");
    }
}
