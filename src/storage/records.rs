//! The records inside a v2 batch, for the log cleaner and exact timestamp
//! lookups (ListOffsets): decompressing a stored batch (with a bound on the
//! bytes it may expand to), walking its records' keys and timestamps, and
//! rebuilding the batch from a subset of them with the same header, offsets
//! and codec. The produce and fetch paths never come here: they treat batches
//! as opaque bytes (see [`super::batch`]).

use std::io::Read;

use super::batch::{
    self, ATTRIBUTES_AT, BASE_TIMESTAMP_AT, CODEC_MASK, CRC_AT, HEADER_BYTES, LOG_OVERHEAD_BYTES, MAX_TIMESTAMP_AT,
    RECORD_COUNT_AT, TIMESTAMP_TYPE_BIT,
};
/// xerial snappy-java's stream header, which Java clients (and kafka-python)
/// put before snappy blocks; librdkafka may send raw snappy instead.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;

/// Why a batch's records could not be read. The cleaner then keeps the batch
/// whole: it never drops what it cannot understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordsError {
    /// A codec id outside 0..=4.
    UnknownCodec(u8),
    /// The decompressor failed, or the records do not parse.
    Corrupt,
    /// The records expand past the cleaner's bound.
    TooLarge,
}

/// One record's place and what the cleaner needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef {
    /// Byte range of the whole record (length prefix included) in the records.
    pub start: usize,
    pub end: usize,
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    /// Byte range of the key; None for a null key.
    pub key: Option<(usize, usize)>,
    /// A null value: a tombstone.
    pub tombstone: bool,
}

/// A batch's records, decompressed.
pub struct Records {
    pub bytes: Vec<u8>,
    pub refs: Vec<RecordRef>,
}

impl Records {
    pub fn key(&self, record: &RecordRef) -> Option<&[u8]> {
        record.key.map(|(from, to)| &self.bytes[from..to])
    }
}

/// Decompresses the batch `whole` (header included) and walks its records;
/// the records may take at most `max_bytes` once decompressed.
pub fn read(whole: &[u8], max_bytes: usize) -> Result<Records, RecordsError> {
    let info = batch::peek(whole).map_err(|_| RecordsError::Corrupt)?;
    let body = &whole[HEADER_BYTES..info.total_bytes];
    let bytes = decompress(info.codec, body, max_bytes)?;
    let count = usize::try_from(info.record_count).map_err(|_| RecordsError::Corrupt)?;
    if count > bytes.len() / batch::MIN_RECORD_BYTES + 1 {
        return Err(RecordsError::Corrupt);
    }
    let mut refs = Vec::with_capacity(count);
    let mut at = 0;
    for _ in 0..count {
        let record = parse_record(&bytes, at).ok_or(RecordsError::Corrupt)?;
        at = record.end;
        refs.push(record);
    }
    if at != bytes.len() {
        return Err(RecordsError::Corrupt);
    }
    Ok(Records { bytes, refs })
}

/// The timestamp of `record` in the batch `whole`: LogAppendTime batches
/// carry it in the header, CreateTime ones as a delta from the base.
pub fn timestamp(whole: &[u8], record: &RecordRef) -> i64 {
    if attributes(whole) & TIMESTAMP_TYPE_BIT != 0 {
        be_i64(whole, MAX_TIMESTAMP_AT)
    } else {
        be_i64(whole, BASE_TIMESTAMP_AT).saturating_add(record.timestamp_delta)
    }
}

/// The first record of the batch `whole` at or past `min_offset` whose
/// timestamp reaches `target`: (its timestamp, its offset), as Kafka answers
/// ListOffsets by time. None if no record qualifies (a batch whose header
/// claims a later max timestamp than its records carry, or records below the
/// log start).
pub fn first_at_or_after(
    whole: &[u8],
    target: i64,
    min_offset: i64,
    max_bytes: usize,
) -> Result<Option<(i64, i64)>, RecordsError> {
    let info = batch::peek(whole).map_err(|_| RecordsError::Corrupt)?;
    let records = read(whole, max_bytes)?;
    Ok(records.refs.iter().find_map(|record| {
        let offset = info.base_offset + i64::from(record.offset_delta);
        let ts = timestamp(whole, record);
        (ts >= target && offset >= min_offset).then_some((ts, offset))
    }))
}

/// Rebuilds the batch `whole` holding only the records `keep` (in order):
/// same base offset, last offset delta, producer fields and codec; count,
/// length, max timestamp (CreateTime) and CRC recomputed.
pub fn rebuild(whole: &[u8], records: &Records, keep: &[usize]) -> Result<Vec<u8>, RecordsError> {
    let info = batch::peek(whole).map_err(|_| RecordsError::Corrupt)?;
    let mut raw = Vec::with_capacity(keep.iter().map(|&i| records.refs[i].end - records.refs[i].start).sum());
    for &i in keep {
        let r = &records.refs[i];
        raw.extend_from_slice(&records.bytes[r.start..r.end]);
    }
    let body = compress(info.codec, &raw, &whole[HEADER_BYTES..info.total_bytes])?;
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&whole[..HEADER_BYTES]);
    out.extend_from_slice(&body);
    let length = i32::try_from(out.len() - LOG_OVERHEAD_BYTES).map_err(|_| RecordsError::TooLarge)?;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    out[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&(keep.len() as i32).to_be_bytes());
    if attributes(whole) & TIMESTAMP_TYPE_BIT == 0 {
        let max = keep.iter().map(|&i| timestamp(whole, &records.refs[i])).max();
        let max = max.unwrap_or_else(|| be_i64(whole, BASE_TIMESTAMP_AT));
        out[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&max.to_be_bytes());
    }
    let crc = crc32c::crc32c(&out[ATTRIBUTES_AT..]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    debug_assert!(batch::check_stored(&out, usize::MAX).is_ok(), "a rebuilt batch is well formed");
    Ok(out)
}

/// The batch `whole` with its records compressed with `codec` instead
/// (compression.type): the records themselves are unchanged byte for byte;
/// attributes, length and CRC are rewritten. The records may take at most
/// `max_bytes` decompressed, and must parse as the count says.
pub fn recompress(whole: &[u8], codec: u8, max_bytes: usize) -> Result<Vec<u8>, RecordsError> {
    let records = read(whole, max_bytes)?;
    // Java clients frame snappy as snappy-java streams; librdkafka reads both.
    const XERIAL_STREAM_HEADER: &[u8; XERIAL_HEADER_BYTES] = b"\x82SNAPPY\x00\0\0\0\x01\0\0\0\x01";
    let body = compress(codec, &records.bytes, XERIAL_STREAM_HEADER)?;
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&whole[..HEADER_BYTES]);
    out.extend_from_slice(&body);
    let length = i32::try_from(out.len() - LOG_OVERHEAD_BYTES).map_err(|_| RecordsError::TooLarge)?;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    let attributes = (attributes(whole) & !CODEC_MASK) | codec as i16;
    out[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTRIBUTES_AT..]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    debug_assert!(batch::check_stored(&out, usize::MAX).is_ok(), "a recompressed batch is well formed");
    Ok(out)
}

fn attributes(whole: &[u8]) -> i16 {
    i16::from_be_bytes([whole[ATTRIBUTES_AT], whole[ATTRIBUTES_AT + 1]])
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads one record at `at`: its length prefix, attributes, timestamp and
/// offset deltas, key and value lengths (headers are skipped by the length).
fn parse_record(bytes: &[u8], at: usize) -> Option<RecordRef> {
    let (length, n) = varint(bytes.get(at..)?)?;
    let body_start = at + n;
    let end = body_start.checked_add(usize::try_from(length).ok()?)?;
    let body = bytes.get(body_start..end)?;
    let mut p = 1; // attributes
    let (timestamp_delta, n) = varint(body.get(p..)?)?;
    p += n;
    let (offset_delta, n) = varint(body.get(p..)?)?;
    p += n;
    let (key_len, n) = varint(body.get(p..)?)?;
    p += n;
    let key = if key_len < 0 {
        None
    } else {
        let to = p.checked_add(usize::try_from(key_len).ok()?)?;
        body.get(p..to)?;
        let key = (body_start + p, body_start + to);
        p = to;
        Some(key)
    };
    let (value_len, _) = varint(body.get(p..)?)?;
    Some(RecordRef {
        start: at,
        end,
        offset_delta: i32::try_from(offset_delta).ok()?,
        timestamp_delta,
        key,
        tombstone: value_len < 0,
    })
}

/// A zigzag varint (up to 64 bits): (value, bytes used).
fn varint(bytes: &[u8]) -> Option<(i64, usize)> {
    let mut raw = 0u64;
    for (i, &byte) in bytes.iter().take(10).enumerate() {
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((((raw >> 1) as i64) ^ -((raw & 1) as i64), i + 1));
        }
    }
    None
}

fn decompress(codec: u8, body: &[u8], max_bytes: usize) -> Result<Vec<u8>, RecordsError> {
    match codec {
        0 if body.len() > max_bytes => Err(RecordsError::TooLarge),
        0 => Ok(body.to_vec()),
        1 => read_bounded(flate2::read::GzDecoder::new(body), max_bytes),
        2 => snappy_decompress(body, max_bytes),
        3 => read_bounded(lz4_flex::frame::FrameDecoder::new(body), max_bytes),
        4 => read_bounded(zstd::stream::read::Decoder::new(body).map_err(|_| RecordsError::Corrupt)?, max_bytes),
        other => Err(RecordsError::UnknownCodec(other)),
    }
}

/// Reads a decompressing stream to its end, refusing more than `max_bytes`
/// (a small batch may expand enormously).
fn read_bounded(reader: impl Read, max_bytes: usize) -> Result<Vec<u8>, RecordsError> {
    let mut out = Vec::new();
    reader.take(max_bytes as u64 + 1).read_to_end(&mut out).map_err(|_| RecordsError::Corrupt)?;
    if out.len() > max_bytes {
        return Err(RecordsError::TooLarge);
    }
    Ok(out)
}

fn snappy_decompress(body: &[u8], max_bytes: usize) -> Result<Vec<u8>, RecordsError> {
    if !body.starts_with(XERIAL_MAGIC) {
        return snappy_block(body, max_bytes, Vec::new());
    }
    let mut out = Vec::new();
    let mut rest = body.get(XERIAL_HEADER_BYTES..).ok_or(RecordsError::Corrupt)?;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest.get(..4).ok_or(RecordsError::Corrupt)?.try_into().expect("4 bytes"));
        let block = rest.get(4..4 + len as usize).ok_or(RecordsError::Corrupt)?;
        out = snappy_block(block, max_bytes, out)?;
        rest = &rest[4 + len as usize..];
    }
    Ok(out)
}

/// Appends one raw snappy block's contents to `out`, within `max_bytes` in all.
fn snappy_block(block: &[u8], max_bytes: usize, mut out: Vec<u8>) -> Result<Vec<u8>, RecordsError> {
    let len = snap::raw::decompress_len(block).map_err(|_| RecordsError::Corrupt)?;
    if out.len() + len > max_bytes {
        return Err(RecordsError::TooLarge);
    }
    let from = out.len();
    out.resize(from + len, 0);
    snap::raw::Decoder::new().decompress(block, &mut out[from..]).map_err(|_| RecordsError::Corrupt)?;
    Ok(out)
}

/// Compresses `raw` with `codec`; snappy keeps the framing of `original`.
fn compress(codec: u8, raw: &[u8], original: &[u8]) -> Result<Vec<u8>, RecordsError> {
    use std::io::Write;
    let failed = |_| RecordsError::Corrupt;
    Ok(match codec {
        0 => raw.to_vec(),
        1 => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(raw).map_err(failed)?;
            encoder.finish().map_err(failed)?
        }
        2 if original.starts_with(XERIAL_MAGIC) => {
            let mut out = original[..XERIAL_HEADER_BYTES].to_vec();
            for chunk in raw.chunks(SNAPPY_BLOCK_BYTES) {
                let block = snap::raw::Encoder::new().compress_vec(chunk).map_err(|_| RecordsError::Corrupt)?;
                out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                out.extend_from_slice(&block);
            }
            out
        }
        2 => snap::raw::Encoder::new().compress_vec(raw).map_err(|_| RecordsError::Corrupt)?,
        3 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder.write_all(raw).map_err(failed)?;
            encoder.finish().map_err(|_| RecordsError::Corrupt)?
        }
        4 => zstd::bulk::compress(raw, ZSTD_LEVEL).map_err(failed)?,
        other => return Err(RecordsError::UnknownCodec(other)),
    })
}

/// snappy-java's block size for framed streams.
const SNAPPY_BLOCK_BYTES: usize = 32 * 1024;
/// zstd's default level, as Kafka's producer uses.
const ZSTD_LEVEL: i32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    fn put_varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }

    /// A test record: (key, value), either may be null.
    type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

    /// A batch of (key, value) records at offsets base.., timestamps 1000+i.
    fn batch_of(codec: u8, base: i64, records: &[KeyValue]) -> Vec<u8> {
        let mut raw = Vec::new();
        for (i, (key, value)) in records.iter().enumerate() {
            let mut body = vec![0u8];
            put_varint(&mut body, i as i64);
            put_varint(&mut body, i as i64);
            for field in [key, value] {
                match field {
                    Some(b) => {
                        put_varint(&mut body, b.len() as i64);
                        body.extend_from_slice(b);
                    }
                    None => put_varint(&mut body, -1),
                }
            }
            put_varint(&mut body, 0);
            put_varint(&mut raw, body.len() as i64);
            raw.extend_from_slice(&body);
        }
        let mut whole = vec![0u8; HEADER_BYTES];
        whole[..8].copy_from_slice(&base.to_be_bytes());
        whole[16] = 2;
        whole[ATTRIBUTES_AT + 1] = codec;
        whole[23..27].copy_from_slice(&(records.len() as i32 - 1).to_be_bytes());
        whole[BASE_TIMESTAMP_AT..BASE_TIMESTAMP_AT + 8].copy_from_slice(&1000i64.to_be_bytes());
        whole[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        whole[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&(records.len() as i32).to_be_bytes());
        let body = compress(codec, &raw, b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01").unwrap();
        whole.extend_from_slice(&body);
        let length = (whole.len() - LOG_OVERHEAD_BYTES) as i32;
        whole[8..12].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&whole[ATTRIBUTES_AT..]);
        whole[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        whole
    }

    #[test]
    fn every_codec_round_trips_a_subset_with_offsets_kept() {
        let input: Vec<KeyValue> =
            vec![(Some(b"a"), Some(b"1")), (None, Some(b"x")), (Some(b"b"), None), (Some(b"a"), Some(b"2"))];
        for codec in 0..=4u8 {
            let whole = batch_of(codec, 100, &input);
            let records = read(&whole, 1 << 20).unwrap();
            assert_eq!(records.refs.len(), 4);
            assert_eq!(records.key(&records.refs[0]), Some(&b"a"[..]));
            assert_eq!(records.key(&records.refs[1]), None);
            assert!(records.refs[2].tombstone && !records.refs[3].tombstone);
            let rebuilt = rebuild(&whole, &records, &[2, 3]).unwrap();
            let info = batch::check_stored(&rebuilt, usize::MAX).unwrap();
            assert_eq!((info.base_offset, info.last_offset(), info.record_count, info.codec), (100, 103, 2, codec));
            assert_eq!(info.max_timestamp, 1003);
            let again = read(&rebuilt, 1 << 20).unwrap();
            let deltas: Vec<i32> = again.refs.iter().map(|r| r.offset_delta).collect();
            assert_eq!(deltas, vec![2, 3]);
            assert_eq!(timestamp(&rebuilt, &again.refs[1]), 1003);
        }
    }

    #[test]
    fn time_lookup_finds_the_first_record_reaching_the_target() {
        let input: Vec<KeyValue> = vec![(None, Some(b"a")), (None, Some(b"b")), (None, Some(b"c"))];
        for codec in 0..=4u8 {
            // Timestamps 1000, 1001, 1002 at offsets 50, 51, 52.
            let whole = batch_of(codec, 50, &input);
            let find = |target, min| first_at_or_after(&whole, target, min, 1 << 20).unwrap();
            assert_eq!(find(0, 0), Some((1000, 50)));
            assert_eq!(find(1001, 0), Some((1001, 51)));
            assert_eq!(find(1002, 0), Some((1002, 52)));
            assert_eq!(find(1003, 0), None);
            assert_eq!(find(1000, 52), Some((1002, 52)), "records below the log start are skipped");
        }
        // LogAppendTime: every record carries the batch's max timestamp.
        let mut whole = batch_of(3, 50, &input);
        whole[ATTRIBUTES_AT + 1] |= TIMESTAMP_TYPE_BIT as u8;
        whole[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&5000i64.to_be_bytes());
        assert_eq!(first_at_or_after(&whole, 4000, 0, 1 << 20).unwrap(), Some((5000, 50)));
    }

    #[test]
    fn bounds_and_garbage_are_errors_not_panics() {
        let big = vec![7u8; 100_000];
        let whole = batch_of(4, 0, &[(Some(b"k"), Some(&big))]);
        assert_eq!(read(&whole, 1000).err(), Some(RecordsError::TooLarge));
        let mut bad = batch_of(1, 0, &[(Some(b"k"), Some(b"v"))]);
        let n = bad.len();
        bad[n - 5] ^= 0xff;
        assert!(read(&bad, 1 << 20).is_err());
        let mut odd = batch_of(0, 0, &[(Some(b"k"), Some(b"v"))]);
        odd[ATTRIBUTES_AT + 1] = 6;
        assert_eq!(read(&odd, 1 << 20).err(), Some(RecordsError::UnknownCodec(6)));
    }
}
