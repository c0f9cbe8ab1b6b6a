//! Builds Kafka v2 record batches for the load generator: records encoded
//! straight into a buffer (varints, no intermediate structs), the records
//! section compressed with the chosen codec, and the header's CRC32C filled in.

use anyhow::{bail, Result};
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    /// As `--compression` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }

    pub fn parse(name: &str) -> Result<Codec> {
        Ok(match name {
            "none" => Codec::None,
            "gzip" => Codec::Gzip,
            "snappy" => Codec::Snappy,
            "lz4" => Codec::Lz4,
            "zstd" => Codec::Zstd,
            other => bail!("unknown compression {other:?} (none, gzip, snappy, lz4, zstd)"),
        })
    }

    fn attribute(self) -> i16 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
        }
    }

    fn compress(self, raw: &[u8]) -> Result<Vec<u8>> {
        use std::io::Write;
        Ok(match self {
            Codec::None => raw.to_vec(),
            Codec::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(raw)?;
                e.finish()?
            }
            Codec::Snappy => snap::raw::Encoder::new().compress_vec(raw)?,
            Codec::Lz4 => {
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(raw)?;
                e.finish()?
            }
            Codec::Zstd => zstd::bulk::compress(raw, 1)?,
        })
    }
}

/// A v2 batch's header, before its records.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Most bytes a record adds beside its key and value: its length, attributes,
/// timestamp and offset deltas, key and value lengths (varints), header count.
pub const MAX_RECORD_OVERHEAD: usize = 5 + 1 + 10 + 5 + 5 + 5 + 1;

/// Record bytes (uncompressed) a batch may hold so that, header included and
/// compressed with `codec`, it stays within `max_message_bytes`. Compression
/// can grow incompressible data a little (zstd and lz4 by under 0.5%): 3% and
/// 1 KiB are kept for it.
pub fn record_budget(max_message_bytes: usize, codec: Codec) -> usize {
    let room = max_message_bytes.saturating_sub(BATCH_HEADER_BYTES);
    match codec {
        Codec::None => room,
        _ => room.saturating_sub(room / 32 + 1024),
    }
}

fn put_varint(buf: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    buf.put_u8(z as u8);
}

fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - z.max(1).leading_zeros() as usize).div_ceil(7)
}

/// Accumulates records for one batch. The buffer starts with room for the
/// batch header, so an uncompressed batch is finished in place: the records
/// are copied once, when pushed.
pub struct BatchBuilder {
    /// The header's room, then the records.
    buf: BytesMut,
    capacity_bytes: usize,
    count: i32,
    first_timestamp: i64,
    max_timestamp: i64,
}

impl BatchBuilder {
    pub fn new(capacity_bytes: usize) -> BatchBuilder {
        let mut builder =
            BatchBuilder { buf: BytesMut::new(), capacity_bytes, count: 0, first_timestamp: 0, max_timestamp: 0 };
        builder.reset();
        builder
    }

    /// Empties the builder; a fresh buffer when the last one was handed out.
    fn reset(&mut self) {
        self.buf.clear();
        self.buf.reserve(BATCH_HEADER_BYTES + self.capacity_bytes);
        self.buf.put_bytes(0, BATCH_HEADER_BYTES);
        self.count = 0;
        self.max_timestamp = 0;
    }

    pub fn len(&self) -> i32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Record bytes pushed (the header not counted).
    pub fn bytes(&self) -> usize {
        self.buf.len() - BATCH_HEADER_BYTES
    }

    /// Whether one more record with this key and value keeps the records
    /// within `cap` bytes. An empty batch takes any record: a batch holds at
    /// least one.
    pub fn fits(&self, key_bytes: usize, value_bytes: usize, cap: usize) -> bool {
        self.is_empty() || self.bytes() + key_bytes + value_bytes + MAX_RECORD_OVERHEAD <= cap
    }

    pub fn first_timestamp(&self) -> i64 {
        self.first_timestamp
    }

    /// Appends one record; `timestamp_ms` is its creation (or intended send) time.
    pub fn push(&mut self, timestamp_ms: i64, key: Option<&[u8]>, value: &[u8]) {
        if self.count == 0 {
            self.first_timestamp = timestamp_ms;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        let ts_delta = timestamp_ms - self.first_timestamp;
        let offset_delta = self.count as i64;
        let key_len = key.map_or(-1, |k| k.len() as i64);
        let body = 1
            + varint_len(ts_delta)
            + varint_len(offset_delta)
            + varint_len(key_len)
            + key.map_or(0, |k| k.len())
            + varint_len(value.len() as i64)
            + value.len()
            + 1;
        put_varint(&mut self.buf, body as i64);
        self.buf.put_u8(0); // attributes
        put_varint(&mut self.buf, ts_delta);
        put_varint(&mut self.buf, offset_delta);
        put_varint(&mut self.buf, key_len);
        if let Some(k) = key {
            self.buf.put_slice(k);
        }
        put_varint(&mut self.buf, value.len() as i64);
        self.buf.put_slice(value);
        put_varint(&mut self.buf, 0); // headers
        self.count += 1;
    }

    /// Finishes the batch (compressing the records) and resets the builder.
    pub fn finish(&mut self, codec: Codec) -> Result<Bytes> {
        assert!(self.count > 0, "a batch holds at least one record");
        let mut batch = match codec {
            Codec::None => self.buf.split(),
            _ => {
                let body = codec.compress(&self.buf[BATCH_HEADER_BYTES..])?;
                let mut b = BytesMut::with_capacity(BATCH_HEADER_BYTES + body.len());
                b.put_bytes(0, BATCH_HEADER_BYTES);
                b.put_slice(&body);
                b
            }
        };
        self.write_header(&mut batch, codec);
        self.reset();
        Ok(batch.freeze())
    }

    /// Fills in the header of `batch` (header room, then the records section).
    fn write_header(&self, batch: &mut BytesMut, codec: Codec) {
        let body_bytes = batch.len() - BATCH_HEADER_BYTES;
        let mut h = &mut batch[..BATCH_HEADER_BYTES];
        h.put_i64(0); // base offset: the broker assigns it
        h.put_i32((49 + body_bytes) as i32);
        h.put_i32(-1); // partition leader epoch
        h.put_i8(2); // magic
        h.put_u32(0); // crc, below
        h.put_i16(codec.attribute());
        h.put_i32(self.count - 1);
        h.put_i64(self.first_timestamp);
        h.put_i64(self.max_timestamp);
        h.put_i64(-1); // producer id
        h.put_i16(-1);
        h.put_i32(-1);
        h.put_i32(self.count);
        debug_assert!(h.is_empty());
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }
}

/// What a consumer learns from a batch without decompressing it, plus the
/// per-record timestamps of uncompressed batches.
pub struct BatchSummary {
    pub base_offset: i64,
    pub records: i32,
    pub total_bytes: usize,
    pub compressed: bool,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub last_offset_delta: i32,
}

/// Walks the batches in `data`, calling `visit` for each complete one.
pub fn for_each_batch(data: &[u8], mut visit: impl FnMut(&BatchSummary, &[u8])) {
    let mut at = 0;
    while data.len() - at >= 61 {
        let b = &data[at..];
        let len = i32::from_be_bytes(b[8..12].try_into().unwrap());
        if len < 49 || 12 + len as usize > b.len() {
            break;
        }
        let total = 12 + len as usize;
        let summary = BatchSummary {
            base_offset: i64::from_be_bytes(b[0..8].try_into().unwrap()),
            records: i32::from_be_bytes(b[57..61].try_into().unwrap()),
            total_bytes: total,
            compressed: i16::from_be_bytes([b[21], b[22]]) & 0x7 != 0,
            first_timestamp: i64::from_be_bytes(b[27..35].try_into().unwrap()),
            max_timestamp: i64::from_be_bytes(b[35..43].try_into().unwrap()),
            last_offset_delta: i32::from_be_bytes(b[23..27].try_into().unwrap()),
        };
        visit(&summary, &b[61..total]);
        at += total;
    }
}

/// Each record of an uncompressed batch: (timestamp delta, value).
pub fn for_each_record(records: &[u8], mut visit: impl FnMut(i64, &[u8])) {
    let mut at = 0;
    while at < records.len() {
        let Some((len, n)) = read_varint(&records[at..]) else {
            return;
        };
        let end = (at + n + len as usize).min(records.len());
        let mut p = at + n + 1; // past the attributes byte
        let mut field = || -> Option<i64> {
            let (v, used) = read_varint(records.get(p..end)?)?;
            p += used;
            Some(v)
        };
        let (Some(ts_delta), Some(_offset_delta), Some(key_len)) = (field(), field(), field()) else {
            return;
        };
        p += key_len.max(0) as usize;
        let Some((value_len, used)) = records.get(p..end).and_then(read_varint) else {
            return;
        };
        p += used;
        let value = records.get(p..p + value_len.max(0) as usize).unwrap_or(&[]);
        visit(ts_delta, value);
        at = end;
    }
}

fn read_varint(b: &[u8]) -> Option<(i64, usize)> {
    let mut z = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        z |= ((byte & 0x7f) as u64) << (7 * i);
        if byte < 0x80 {
            return Some((((z >> 1) as i64) ^ -((z & 1) as i64), i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn a_batch_filled_to_its_budget_fits_max_message_bytes() {
        const MAX: usize = 1 << 20;
        for codec in [Codec::None, Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let budget = record_budget(MAX, codec);
            let mut rng = 0x1234_5678_9abc_def1u64;
            let mut value = vec![0u8; 1000];
            let mut builder = BatchBuilder::new(budget);
            let key = b"key-12345";
            while builder.fits(key.len(), value.len(), budget) {
                // Incompressible: compression can only add bytes.
                for b in value.iter_mut() {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    *b = rng as u8;
                }
                builder.push(i64::MAX / 2, Some(key), &value);
                assert!(builder.bytes() <= budget, "{codec:?}");
            }
            let batch = builder.finish(codec).unwrap();
            assert!(batch.len() <= MAX, "{codec:?}: {} bytes", batch.len());
            assert!(batch.len() > MAX * 9 / 10, "{codec:?}: the batch is nearly full ({} bytes)", batch.len());
        }
    }

    #[test]
    fn every_codec_decodes_with_kafka_protocol() {
        for codec in [Codec::None, Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let mut builder = BatchBuilder::new(4096);
            builder.push(1000, Some(b"k1"), b"hello");
            builder.push(1003, None, &[7u8; 300]);
            let batch = builder.finish(codec).unwrap();
            let mut buf = batch.clone();
            let decoded = RecordBatchDecoder::decode(&mut buf).unwrap_or_else(|e| panic!("{codec:?}: {e}"));
            assert_eq!(decoded.records.len(), 2);
            assert_eq!(decoded.records[0].key.as_deref(), Some(&b"k1"[..]));
            assert_eq!(decoded.records[1].timestamp, 1003);
            assert_eq!(decoded.records[1].value.as_deref().unwrap().len(), 300);
            let mut seen = 0;
            for_each_batch(&batch, |s, records| {
                assert_eq!((s.records, s.compressed, s.first_timestamp), (2, codec != Codec::None, 1000));
                if !s.compressed {
                    let mut seen_records = Vec::new();
                    for_each_record(records, |d, v| seen_records.push((d, v.len())));
                    assert_eq!(seen_records, vec![(0, 5), (3, 300)]);
                }
                seen += 1;
            });
            assert_eq!(seen, 1);
        }
    }
}
