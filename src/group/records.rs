//! The records of `__consumer_offsets`, in Kafka's own key and value schemas,
//! so that Kafka's tools can read the topic: offset commits (key v1, value
//! v3) and group metadata (key v2, value v3). A null value is a tombstone.

use bytes::{Buf, BufMut, Bytes, BytesMut};

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
    let mut out = BytesMut::with_capacity(offset_key_len(group, topic));
    put_offset_key(&mut out, group, topic, partition);
    out.freeze()
}

fn offset_key_len(group: &str, topic: &str) -> usize {
    10 + group.len() + topic.len()
}

fn put_offset_key(out: &mut BytesMut, group: &str, topic: &str, partition: i32) {
    out.put_i16(OFFSET_KEY_VERSION);
    put_str(out, group);
    put_str(out, topic);
    out.put_i32(partition);
}

pub fn group_key(group: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + group.len());
    out.put_i16(GROUP_KEY_VERSION);
    put_str(&mut out, group);
    out.freeze()
}

pub fn offset_value(value: &OffsetValue) -> Bytes {
    let mut out = BytesMut::with_capacity(offset_value_len(value));
    put_offset_value(&mut out, value);
    out.freeze()
}

fn offset_value_len(value: &OffsetValue) -> usize {
    24 + value.metadata.len()
}

fn put_offset_value(out: &mut BytesMut, value: &OffsetValue) {
    out.put_i16(OFFSET_VALUE_VERSION);
    out.put_i64(value.offset);
    out.put_i32(value.leader_epoch);
    put_str(out, &value.metadata);
    out.put_i64(value.commit_timestamp_ms);
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
    let bytes = records.iter().map(|(k, v)| record_bytes(k.len(), v.as_ref().map(Bytes::len))).sum();
    let mut out = BatchWriter::new(bytes, now_ms);
    for (key, value) in &records {
        out.push(key, value.as_deref());
    }
    out.finish()
}

/// Bytes of a v2 batch before its first record.
const BATCH_HEADER_BYTES: usize = 61;
/// Where the part of a v2 batch its CRC covers starts (the attributes).
const CRC_FROM: usize = 21;
/// Longest varint of an int32 (zigzag, 7 bits a byte).
const MAX_VARINT_BYTES: usize = 5;

/// At most how many bytes a record with this key and value takes in a batch.
pub fn record_bytes(key_len: usize, value_len: Option<usize>) -> usize {
    // length, attributes, timestamp delta, offset delta, key length, value length, header count
    key_len + value_len.unwrap_or(0) + 4 * MAX_VARINT_BYTES + 3
}

/// At most how many bytes an offset commit record takes in a batch.
pub fn offset_record_bytes(group: &str, topic: &str, value: &OffsetValue) -> usize {
    record_bytes(offset_key_len(group, topic), Some(offset_value_len(value)))
}

/// Builds one uncompressed v2 batch in place, a record at a time, as
/// Kafka's encoder would (no producer id, CreateTime `now_ms`, offsets from
/// 0: the partition assigns the real ones). Keys and values are written
/// straight into the batch, so a record costs no allocation of its own.
pub struct BatchWriter {
    out: BytesMut,
    records: i32,
    now_ms: i64,
}

impl BatchWriter {
    /// `record_bytes`: about how many bytes the records will take (a hint).
    pub fn new(record_bytes: usize, now_ms: i64) -> BatchWriter {
        let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + record_bytes);
        out.put_bytes(0, BATCH_HEADER_BYTES); // filled in by `finish`
        BatchWriter { out, records: 0, now_ms }
    }

    /// Records so far.
    pub fn len(&self) -> usize {
        self.records as usize
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.push_with(
            key.len(),
            |out| out.put_slice(key),
            value.map(<[u8]>::len),
            |out| value.into_iter().for_each(|v| out.put_slice(v)),
        );
    }

    /// An offset commit record (key v1, value v3), written in place.
    pub fn push_offset(&mut self, group: &str, topic: &str, partition: i32, value: &OffsetValue) {
        let key = |out: &mut BytesMut| put_offset_key(out, group, topic, partition);
        let value_len = Some(offset_value_len(value));
        self.push_with(offset_key_len(group, topic), key, value_len, |out| put_offset_value(out, value));
    }

    /// A record whose key and value (None: a tombstone) `key` and `value`
    /// write: exactly `key_len` and `value_len` bytes.
    fn push_with(
        &mut self,
        key_len: usize,
        key: impl FnOnce(&mut BytesMut),
        value_len: Option<usize>,
        value: impl FnOnce(&mut BytesMut),
    ) {
        let offset_delta = self.records;
        let value_len_field = value_len.map_or(-1, |n| n as i32);
        let body = 1 // attributes
            + varint_len(0) // timestamp delta
            + varint_len(offset_delta)
            + varint_len(key_len as i32)
            + key_len
            + varint_len(value_len_field)
            + value_len.unwrap_or(0)
            + varint_len(0); // headers
        put_varint(&mut self.out, body as i32);
        let start = self.out.len();
        self.out.put_i8(0);
        put_varint(&mut self.out, 0);
        put_varint(&mut self.out, offset_delta);
        put_varint(&mut self.out, key_len as i32);
        let key_at = self.out.len();
        key(&mut self.out);
        assert_eq!(self.out.len() - key_at, key_len, "a record key is as long as announced");
        put_varint(&mut self.out, value_len_field);
        let value_at = self.out.len();
        value(&mut self.out);
        assert_eq!(self.out.len() - value_at, value_len.unwrap_or(0), "a record value is as long as announced");
        put_varint(&mut self.out, 0);
        assert_eq!(self.out.len() - start, body, "a record is as long as its length says");
        self.records += 1;
    }

    /// The batch: header filled in, CRC32C over attributes onward.
    pub fn finish(mut self) -> Bytes {
        assert!(self.records > 0, "a batch holds at least one record");
        let total = self.out.len();
        let mut header = &mut self.out[..BATCH_HEADER_BYTES];
        header.put_i64(0); // base offset: assigned by the partition
        header.put_i32((total - 12) as i32); // batch length: after this field
        header.put_i32(-1); // partition leader epoch: patched by the partition
        header.put_i8(2); // magic
        header.put_u32(0); // CRC, below
        header.put_i16(0); // attributes: no compression, CreateTime, not transactional
        header.put_i32(self.records - 1); // last offset delta
        header.put_i64(self.now_ms); // base timestamp
        header.put_i64(self.now_ms); // max timestamp
        header.put_i64(-1); // producer id
        header.put_i16(-1); // producer epoch
        header.put_i32(-1); // base sequence
        header.put_i32(self.records);
        let crc = crc32c::crc32c(&self.out[CRC_FROM..]);
        self.out[CRC_FROM - 4..CRC_FROM].copy_from_slice(&crc.to_be_bytes());
        self.out.freeze()
    }
}

fn varint_len(n: i32) -> usize {
    let z = ((n << 1) ^ (n >> 31)) as u32;
    (32 - z.leading_zeros() as usize).div_ceil(7).max(1)
}

fn put_varint(out: &mut BytesMut, n: i32) {
    let mut z = ((n << 1) ^ (n >> 31)) as u32;
    while z >= 0x80 {
        out.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    out.put_u8(z as u8);
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

    /// The batch kafka-protocol's encoder makes of the same records.
    fn reference_batch(records: &[(Bytes, Option<Bytes>)], now_ms: i64) -> Bytes {
        use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
        let records: Vec<Record> = records
            .iter()
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
                key: Some(key.clone()),
                value: value.clone(),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let mut out = BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        RecordBatchEncoder::encode(&mut out, records.iter(), &options).unwrap();
        out.freeze()
    }

    #[test]
    fn batches_match_kafkas_encoder() {
        let long = "x".repeat(300); // lengths past one varint byte
        let value = OffsetValue { offset: 1 << 40, leader_epoch: -1, metadata: long.clone(), commit_timestamp_ms: 7 };
        for n in [1usize, 2, 70, 200] {
            let records: Vec<(Bytes, Option<Bytes>)> = (0..n)
                .map(|i| match i % 3 {
                    0 => (offset_key("g", &long, i as i32), Some(offset_value(&value))),
                    1 => (offset_key("group", "t", i as i32), None),
                    _ => (group_key("g"), Some(Bytes::from(vec![7u8; i]))),
                })
                .collect();
            let expected = reference_batch(&records, 1_700_000_000_000);
            assert_eq!(batch(records.clone(), 1_700_000_000_000), expected, "{n} records");
            let mut writer = BatchWriter::new(0, 1_700_000_000_000);
            for (i, (key, stored)) in records.iter().enumerate() {
                match i % 3 {
                    0 => writer.push_offset("g", &long, i as i32, &value),
                    _ => writer.push(key, stored.as_deref()),
                }
            }
            assert_eq!(writer.finish(), expected, "{n} records written in place");
            let bytes: usize = records.iter().map(|(k, v)| record_bytes(k.len(), v.as_ref().map(Bytes::len))).sum();
            assert!(expected.len() <= BATCH_HEADER_BYTES + bytes, "record_bytes is an upper bound");
        }
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
