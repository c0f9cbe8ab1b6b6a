//! Kafka v2 record batches as opaque bytes: header parsing, validation and the
//! in-place patches the broker is allowed to make. Records are never decoded.
//!
//! Header layout (big-endian):
//! `baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 | crc u32 |
//!  attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
//!  producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32`.
//! The CRC32C covers `attributes` to the end, so baseOffset and
//! partitionLeaderEpoch can be rewritten without recomputing it.

/// Bytes in a v2 batch header.
pub const HEADER_BYTES: usize = 61;
/// Bytes before the batchLength-counted part (baseOffset + batchLength).
pub const LOG_OVERHEAD_BYTES: usize = 12;
const LENGTH_AT: usize = 8;
const EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
pub(super) const CRC_AT: usize = 17;
pub(super) const ATTRIBUTES_AT: usize = 21;
const LAST_DELTA_AT: usize = 23;
/// The first record's timestamp; the records' deltas count from it.
pub(super) const BASE_TIMESTAMP_AT: usize = 27;
pub(super) const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
pub(super) const RECORD_COUNT_AT: usize = 57;
const TRANSACTIONAL_BIT: i16 = 1 << 4;
const CONTROL_BIT: i16 = 1 << 5;
pub(super) const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
/// Attributes bits 0..3: the compression codec, 0 for none.
pub(super) const CODEC_MASK: i16 = 0b111;
/// Smallest uncompressed record: a 1-byte length, then attributes,
/// timestampDelta, offsetDelta, key length, value length and header count,
/// one byte each.
pub const MIN_RECORD_BYTES: usize = 7;
/// Smallest record body (what a record's length prefix counts).
const MIN_RECORD_BODY_BYTES: i64 = MIN_RECORD_BYTES as i64 - 1;

/// Why a batch was refused. Each maps to one Kafka error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchError {
    /// Truncated header, a length that runs past the data, or records that do
    /// not fill the batch as its record count claims (CORRUPT_MESSAGE).
    Truncated,
    /// Magic other than 2: the pre-0.11 message formats (INVALID_RECORD).
    OldMagic(i8),
    /// CRC32C does not match (CORRUPT_MESSAGE).
    BadCrc,
    /// Record count or lastOffsetDelta impossible (INVALID_RECORD).
    BadCount,
    /// Larger than max.message.bytes (MESSAGE_TOO_LARGE).
    TooLarge { batch_bytes: usize },
    /// An idempotent payload of more than one batch, or a transactional batch
    /// (spate has no transactions yet) (INVALID_RECORD).
    Unsupported,
    /// A CreateTime timestamp outside the topic's
    /// message.timestamp.before/after.max.ms of the broker's clock (INVALID_TIMESTAMP).
    InvalidTimestamp { timestamp: i64 },
}

/// What the broker reads from a batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    pub base_offset: i64,
    /// Whole batch, header included.
    pub total_bytes: usize,
    pub leader_epoch: i32,
    pub last_offset_delta: i32,
    /// The first record's timestamp (the records' deltas count from it).
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub record_count: i32,
    /// -1 unless the producer is idempotent.
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    /// Transactional or control batch: spate does not support transactions yet.
    pub transactional: bool,
    /// Compression codec id (attributes bits 0..3); 0 is uncompressed.
    pub codec: u8,
}

impl BatchInfo {
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// The idempotence identity of the batch, if its producer has one.
    pub fn producer_batch(&self) -> Option<super::producers::ProducerBatch> {
        (self.producer_id >= 0).then(|| super::producers::ProducerBatch {
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            first_sequence: self.base_sequence,
            // Sequences wrap from i32::MAX to 0.
            last_sequence: ((self.base_sequence as i64 + self.last_offset_delta as i64) % (i32::MAX as i64 + 1)) as i32,
            max_timestamp: self.max_timestamp,
        })
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the header at the start of `bytes` without checking the CRC.
/// Fails if the header or the batch it announces is not wholly present.
pub fn peek(bytes: &[u8]) -> Result<BatchInfo, BatchError> {
    if bytes.len() < HEADER_BYTES {
        return Err(BatchError::Truncated);
    }
    let length = be_i32(bytes, LENGTH_AT);
    if length < (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32 {
        return Err(BatchError::Truncated);
    }
    let total_bytes = length as usize + LOG_OVERHEAD_BYTES;
    if total_bytes > bytes.len() {
        return Err(BatchError::Truncated);
    }
    let magic = bytes[MAGIC_AT] as i8;
    if magic != 2 {
        return Err(BatchError::OldMagic(magic));
    }
    Ok(BatchInfo {
        base_offset: be_i64(bytes, 0),
        total_bytes,
        leader_epoch: be_i32(bytes, EPOCH_AT),
        last_offset_delta: be_i32(bytes, LAST_DELTA_AT),
        base_timestamp: be_i64(bytes, BASE_TIMESTAMP_AT),
        max_timestamp: be_i64(bytes, MAX_TIMESTAMP_AT),
        record_count: be_i32(bytes, RECORD_COUNT_AT),
        producer_id: be_i64(bytes, PRODUCER_ID_AT),
        producer_epoch: be_i16(bytes, PRODUCER_EPOCH_AT),
        base_sequence: be_i32(bytes, BASE_SEQUENCE_AT),
        transactional: be_i16(bytes, ATTRIBUTES_AT) & (TRANSACTIONAL_BIT | CONTROL_BIT) != 0,
        codec: (be_i16(bytes, ATTRIBUTES_AT) & CODEC_MASK) as u8,
    })
}

/// The last offset of the last whole batch in `bytes`, if any.
pub fn last_offset_of(bytes: &[u8]) -> Option<i64> {
    let mut at = 0;
    let mut last = None;
    while let Ok(info) = peek(&bytes[at..]) {
        last = Some(info.last_offset());
        at += info.total_bytes;
    }
    last
}

/// Recovery's check of a stored batch: framing, magic, size and CRC32C,
/// nothing stricter. What a producer's batch must also satisfy may grow over
/// versions; a batch already stored (and acknowledged) is kept.
pub fn check_stored(bytes: &[u8], max_batch_bytes: usize) -> Result<BatchInfo, BatchError> {
    let info = peek(bytes)?;
    if info.total_bytes > max_batch_bytes {
        return Err(BatchError::TooLarge { batch_bytes: info.total_bytes });
    }
    let stored_crc = be_i32(bytes, CRC_AT) as u32;
    if crc32c::crc32c(&bytes[ATTRIBUTES_AT..info.total_bytes]) != stored_crc {
        return Err(BatchError::BadCrc);
    }
    Ok(info)
}

/// Full check of the batch at the start of `bytes`: framing, magic, CRC32C,
/// size against `max_batch_bytes`, and the record count against the bytes
/// (see [`check_record_count`]).
pub fn validate(bytes: &[u8], max_batch_bytes: usize) -> Result<BatchInfo, BatchError> {
    let info = check_stored(bytes, max_batch_bytes)?;
    // Kafka refuses magic-2 batches whose offset range and count disagree.
    if info.record_count < 1 || info.last_offset_delta != info.record_count - 1 {
        return Err(BatchError::BadCount);
    }
    check_record_count(&info, &bytes[HEADER_BYTES..info.total_bytes], max_batch_bytes)?;
    Ok(info)
}

/// Checks the claimed record count against the record bytes without
/// decompressing: a false count would make the broker hand out offsets (and
/// roll segments) for records that do not exist.
///
/// - Uncompressed: the records are walked by their length prefixes; exactly
///   `record_count` records must fill the batch to its last byte.
/// - Compressed: the records cannot be counted without decompressing, and a
///   compressor can squeeze a run of identical records to well under a byte
///   each, so no bound from the compressed size is sound. The bound used is
///   one record per byte of `max_batch_bytes`: an uncompressed record takes
///   at least [`MIN_RECORD_BYTES`], so a producer's batch (built uncompressed
///   up to its batch size, itself meant to fit max.message.bytes) holds at
///   most a seventh of that. It stops claims of 2^31 - 1 records from a few
///   bytes (default max.message.bytes: about a million records at most).
///
/// A count the bytes cannot hold is refused as [`BatchError::Truncated`]
/// (CORRUPT_MESSAGE).
fn check_record_count(info: &BatchInfo, records: &[u8], max_batch_bytes: usize) -> Result<(), BatchError> {
    let count = usize::try_from(info.record_count).map_err(|_| BatchError::BadCount)?;
    if info.codec != 0 {
        return if count <= max_batch_bytes { Ok(()) } else { Err(BatchError::Truncated) };
    }
    // Cheap refusal before the walk: each record takes at least 7 bytes.
    if count > records.len() / MIN_RECORD_BYTES {
        return Err(BatchError::Truncated);
    }
    let mut at = 0usize;
    for _ in 0..count {
        let (body_bytes, prefix_bytes) = read_zigzag_varint(&records[at..]).ok_or(BatchError::Truncated)?;
        if body_bytes < MIN_RECORD_BODY_BYTES {
            return Err(BatchError::Truncated);
        }
        // body_bytes fits in i32, so the sum cannot overflow usize.
        at += prefix_bytes + body_bytes as usize;
        if at > records.len() {
            return Err(BatchError::Truncated);
        }
    }
    if at == records.len() {
        Ok(())
    } else {
        Err(BatchError::Truncated)
    }
}

/// Reads a zigzag-encoded varint of at most 5 bytes (an i32) from the start
/// of `bytes`: (value, bytes used), or None if cut short or too long.
fn read_zigzag_varint(bytes: &[u8]) -> Option<(i64, usize)> {
    let mut raw = 0u32;
    for (i, &byte) in bytes.iter().take(5).enumerate() {
        if i == 4 && byte > 0x0f {
            return None; // more than 32 bits
        }
        raw |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let value = ((raw >> 1) as i32) ^ -((raw & 1) as i32);
            return Some((i64::from(value), i + 1));
        }
    }
    None
}

/// The 16-byte prefix a stored batch carries: its assigned base offset, its
/// length, and the leader epoch that appended it.
pub fn patched_prefix(original: &[u8], base_offset: i64, leader_epoch: i32) -> [u8; 16] {
    let mut prefix = [0u8; 16];
    prefix[..8].copy_from_slice(&base_offset.to_be_bytes());
    prefix[8..12].copy_from_slice(&original[LENGTH_AT..LENGTH_AT + 4]);
    prefix[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    prefix
}

/// Rewrites a batch for a LogAppendTime topic: timestamp type bit set,
/// maxTimestamp = `now_ms`, CRC recomputed. The records stay compressed.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attributes = be_i16(batch, ATTRIBUTES_AT) | TIMESTAMP_TYPE_BIT;
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A minimal valid uncompressed batch holding `count` empty-valued records.
    pub fn sample_batch(count: i32, max_timestamp: i64) -> Vec<u8> {
        let mut records = Vec::new();
        for i in 0..count {
            // length, attributes, timestampDelta, offsetDelta(i), keyLen -1, valueLen 0, headers 0
            let body = [0u8, 0, (i as u8) << 1, 1, 0, 0];
            records.push((body.len() as u8) << 1);
            records.extend_from_slice(&body);
        }
        let mut b = vec![0u8; HEADER_BYTES];
        b.extend_from_slice(&records);
        let len = (b.len() - LOG_OVERHEAD_BYTES) as i32;
        b[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&len.to_be_bytes());
        b[MAGIC_AT] = 2;
        b[LAST_DELTA_AT..LAST_DELTA_AT + 4].copy_from_slice(&(count - 1).to_be_bytes());
        b[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&max_timestamp.to_be_bytes());
        b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        b[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&count.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_AT..]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn validates_and_patches_without_touching_crc() {
        let batch = sample_batch(3, 1_000);
        let info = validate(&batch, 1 << 20).unwrap();
        assert_eq!((info.record_count, info.last_offset_delta, info.total_bytes), (3, 2, batch.len()));
        let mut stored = batch.clone();
        stored[..16].copy_from_slice(&patched_prefix(&batch, 42, 7));
        let info = validate(&stored, 1 << 20).unwrap();
        assert_eq!((info.base_offset, info.leader_epoch, info.last_offset()), (42, 7, 44));
    }

    #[test]
    fn rejects_bad_input() {
        let batch = sample_batch(2, 5);
        assert_eq!(validate(&batch[..40], 1 << 20), Err(BatchError::Truncated));
        assert_eq!(validate(&batch[..batch.len() - 1], 1 << 20), Err(BatchError::Truncated));
        let mut bad_crc = batch.clone();
        *bad_crc.last_mut().unwrap() ^= 0xff;
        assert_eq!(validate(&bad_crc, 1 << 20), Err(BatchError::BadCrc));
        let mut old = batch.clone();
        old[MAGIC_AT] = 1;
        assert_eq!(validate(&old, 1 << 20), Err(BatchError::OldMagic(1)));
        assert_eq!(validate(&batch, 10), Err(BatchError::TooLarge { batch_bytes: batch.len() }));
    }

    /// Rewrites the header's count, lastOffsetDelta and attributes of
    /// `batch`, then fixes its CRC: only the record bytes can tell the lie.
    fn relabel(mut batch: Vec<u8>, count: i32, last_delta: i32, attributes: i16) -> Vec<u8> {
        batch[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&count.to_be_bytes());
        batch[LAST_DELTA_AT..LAST_DELTA_AT + 4].copy_from_slice(&last_delta.to_be_bytes());
        batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
        let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
        batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        batch
    }

    #[test]
    fn uncompressed_record_count_must_match_the_records() {
        let three = sample_batch(3, 5);
        assert!(validate(&relabel(three.clone(), 3, 2, 0), 1 << 20).is_ok(), "relabel keeps a true batch valid");
        let more = relabel(three.clone(), 4, 3, 0);
        assert_eq!(validate(&more, 1 << 20), Err(BatchError::Truncated), "claims more records than present");
        let fewer = relabel(three.clone(), 2, 1, 0);
        assert_eq!(validate(&fewer, 1 << 20), Err(BatchError::Truncated), "bytes left after the claimed records");
        let huge = relabel(three.clone(), i32::MAX, i32::MAX - 1, 0);
        assert_eq!(validate(&huge, 1 << 20), Err(BatchError::Truncated), "2^31 - 1 records in 21 bytes");
        let inconsistent = relabel(three, 3, 5, 0);
        assert_eq!(validate(&inconsistent, 1 << 20), Err(BatchError::BadCount), "lastOffsetDelta != count - 1");
    }

    #[test]
    fn record_lengths_are_checked() {
        let mut negative = sample_batch(2, 5);
        negative[HEADER_BYTES] = 0x01; // zigzag -1
        let negative = relabel(negative, 2, 1, 0);
        assert_eq!(validate(&negative, 1 << 20), Err(BatchError::Truncated));
        let mut past_end = sample_batch(2, 5);
        past_end[HEADER_BYTES + 7] = 0x7e; // second record claims 63 bytes
        let past_end = relabel(past_end, 2, 1, 0);
        assert_eq!(validate(&past_end, 1 << 20), Err(BatchError::Truncated));
    }

    #[test]
    fn compressed_counts_are_bounded_by_max_batch_bytes() {
        // A gzip-flagged batch: its bytes are not decompressed, only bounded.
        let batch = sample_batch(1, 5);
        let plausible = relabel(batch.clone(), 1000, 999, 1);
        assert_eq!(validate(&plausible, 1 << 20).map(|i| i.record_count), Ok(1000));
        let huge = relabel(batch.clone(), i32::MAX, i32::MAX - 1, 1);
        assert_eq!(validate(&huge, 1 << 20), Err(BatchError::Truncated));
        let just_over = relabel(batch, (1 << 20) + 1, 1 << 20, 4);
        assert_eq!(validate(&just_over, 1 << 20), Err(BatchError::Truncated));
    }

    #[test]
    fn zigzag_varints() {
        assert_eq!(read_zigzag_varint(&[0x0c]), Some((6, 1)));
        assert_eq!(read_zigzag_varint(&[0x01]), Some((-1, 1)));
        assert_eq!(read_zigzag_varint(&[0xfe, 0xff, 0xff, 0xff, 0x0f]), Some((i32::MAX as i64, 5)));
        assert_eq!(read_zigzag_varint(&[0xff, 0xff, 0xff, 0xff, 0x0f]), Some((i32::MIN as i64, 5)));
        assert_eq!(read_zigzag_varint(&[0x80, 0x80]), None, "cut short");
        assert_eq!(read_zigzag_varint(&[0xff, 0xff, 0xff, 0xff, 0x1f]), None, "more than 32 bits");
        assert_eq!(read_zigzag_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]), None, "more than 5 bytes");
    }

    #[test]
    fn log_append_time_keeps_batch_valid() {
        let mut batch = sample_batch(1, 5);
        set_log_append_time(&mut batch, 99);
        let info = validate(&batch, 1 << 20).unwrap();
        assert_eq!(info.max_timestamp, 99);
        assert_ne!(be_i16(&batch, ATTRIBUTES_AT) & TIMESTAMP_TYPE_BIT, 0);
    }
}
