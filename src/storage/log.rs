//! A partition's log: an ordered run of segments, the last one active, plus a
//! bounded cache of the newest batches. Knows nothing of the Kafka wire.
//!
//! All methods here are synchronous; anything that waits for the disk is
//! returned as a job for [`super::partition::Partition`] to run without holding
//! the log borrowed.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use glommio::io::DmaFile;

use super::batch::{self, BatchError, BatchInfo};
use super::epochs::EpochCache;
use super::open_files::SegmentFile;
use super::partition::StorageError;
use super::producers::{ProducerStates, SequenceCheck};
use super::segment::{FlushJob, Flushed, SealJob, Segment};

/// Per-partition log settings (Kafka topic configs where one exists).
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub segment_ms: i64,
    /// -1: keep forever.
    pub retention_ms: i64,
    /// -1: no size limit.
    pub retention_bytes: i64,
    pub max_message_bytes: usize,
    pub index_interval_bytes: u64,
    pub log_append_time: bool,
    /// Aligned write buffer per active segment.
    pub write_buffer_bytes: usize,
    /// Writes of this partition in flight at once.
    pub max_writes_in_flight: usize,
    /// Bound on the tail cache of this partition (unflushed batches always stay).
    pub cache_bytes: usize,
    /// Once a segment holds this many bytes, grow its file ahead of the writes
    /// in steps of this size (0: never). Writes that extend a file cannot
    /// complete inline in io_uring and go to a kernel worker thread instead.
    /// The unwritten tail reads as zeros and is cut off by sealing, clean
    /// shutdown, or recovery.
    pub preallocate_step_bytes: u64,
    /// cleanup.policy includes `compact`: the log cleaner keeps the latest
    /// record per key in sealed segments.
    pub compact: bool,
    /// A tombstone (null value) this much older than now may be removed by
    /// a clean once it is the latest record of its key (delete.retention.ms).
    pub delete_retention_ms: i64,
    /// Segments holding a record newer than this are not cleaned yet
    /// (min.compaction.lag.ms).
    pub min_compaction_lag_ms: i64,
    /// A log is cleaned once this share of its cleanable bytes has not been
    /// cleaned yet (min.cleanable.dirty.ratio).
    pub min_cleanable_dirty_ratio: f64,
    /// acks=all needs at least this many in-sync replicas (min.insync.replicas).
    pub min_insync_replicas: usize,
    /// Sync once this many records are unsynced (flush.messages; i64::MAX: never).
    pub flush_messages: i64,
    /// Sync data unsynced for this long (flush.ms; i64::MAX: never).
    pub flush_ms: i64,
    /// Segments roll up to this much before `segment_ms`, by segment
    /// (segment.jitter.ms), so that partitions created together do not all
    /// roll at once.
    pub segment_jitter_ms: i64,
    /// CreateTime batches may be at most this much older than the broker's
    /// clock (message.timestamp.before.max.ms) ...
    pub timestamp_before_max_ms: i64,
    /// ... and at most this much ahead of it (message.timestamp.after.max.ms).
    pub timestamp_after_max_ms: i64,
    /// compression.type as a codec id (0 none, 1 gzip, 2 snappy, 3 lz4,
    /// 4 zstd): batches are stored with it, recompressed on the way in when
    /// the producer used another; None (`producer`): as produced.
    pub compression: Option<u8>,
    /// Bytes a batch may expand to when recompressed.
    pub max_recompressed_batch_bytes: usize,
}

/// How much earlier than `segment.ms` the segment at `base_offset` of the
/// partition in `dir` rolls: fixed per segment, spread over
/// [0, segment.jitter.ms) across segments and partitions (Kafka draws it at
/// random), and always less than `segment.ms`.
fn roll_jitter_ms(dir: &Path, base_offset: i64, config: &LogConfig) -> i64 {
    let jitter = config.segment_jitter_ms.min(config.segment_ms - 1);
    if jitter <= 0 {
        return 0;
    }
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (dir, base_offset).hash(&mut hasher);
    (hasher.finish() % jitter as u64) as i64
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            index_interval_bytes: 4096,
            log_append_time: false,
            write_buffer_bytes: 1 << 20,
            max_writes_in_flight: 4,
            cache_bytes: 8 << 20,
            preallocate_step_bytes: 8 << 20,
            compact: false,
            delete_retention_ms: 24 * 3600 * 1000,
            min_compaction_lag_ms: 0,
            min_cleanable_dirty_ratio: 0.5,
            min_insync_replicas: 1,
            flush_messages: i64::MAX,
            flush_ms: i64::MAX,
            segment_jitter_ms: 0,
            timestamp_before_max_ms: i64::MAX,
            timestamp_after_max_ms: 3_600_000,
            compression: None,
            max_recompressed_batch_bytes: 64 << 20,
        }
    }
}

/// A stored batch held in memory: its 16-byte patched prefix and the rest,
/// which may still point into the producer's request buffer.
#[derive(Clone, Debug)]
pub struct CachedBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub prefix: Bytes,
    pub body: Bytes,
}

impl CachedBatch {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.prefix.len() + self.body.len()
    }
}

/// Where the bytes of a fetch come from.
pub enum ReadPlan {
    /// Offset not in [log start, log end].
    OutOfRange,
    /// Whole batches from the cache, as write segments.
    Cached(Vec<Bytes>),
    /// Read `len` bytes at `position` of a segment file, then keep batches
    /// ending at or after `offset`, cut to the byte budget. `sealed_end` is
    /// the sealed segment's next offset (None for the active one): a sealed
    /// segment that compaction emptied past `offset` sends the read on there.
    Disk {
        file: SegmentFile,
        position: u64,
        len: usize,
        readable: u64,
        offset: i64,
        max_bytes: usize,
        sealed_end: Option<i64>,
        /// Batches ending at or past it are not returned.
        visible_end: i64,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The broker time written into the batches, for LogAppendTime topics.
    pub log_append_time_ms: i64,
    /// The leader epoch in which a replicated partition took the append
    /// (its acks=all waits for the high watermark in that epoch only);
    /// None where this node alone holds the partition, and for a
    /// follower's appends. Set by [`super::Partition::append`].
    pub replicated_in_epoch: Option<i32>,
}

pub struct PartitionLog {
    pub dir: PathBuf,
    pub config: LogConfig,
    pub leader_epoch: i32,
    segments: Vec<Segment>,
    log_start_offset: i64,
    /// Offsets below this are written to the segment files.
    flushed_offset: i64,
    /// Offsets below this have been fdatasync'd.
    synced_offset: i64,
    /// Sealed segments written but not yet fdatasync'd (the next sync covers them).
    unsynced_sealed: Vec<(Rc<DmaFile>, PathBuf)>,
    cache: VecDeque<CachedBatch>,
    cache_bytes: usize,
    producers: ProducerStates,
    /// Offsets below this have been compacted (the cleaner's checkpoint).
    pub cleaned_to: i64,
    /// Which leader epoch wrote from which offset.
    pub epochs: EpochCache,
    /// The replicated high watermark: offsets below it are on every in-sync
    /// replica. `i64::MAX` for a partition with no other replica, whose
    /// high watermark is simply what is written.
    replica_hw: i64,
}

/// A sealed segment as the log cleaner sees it.
#[derive(Clone)]
pub struct SealedSegment {
    pub base_offset: i64,
    pub next_offset: i64,
    pub size_bytes: u64,
    pub max_timestamp: i64,
    pub file: SegmentFile,
}

/// What the cleaner may clean now: sealed segments from the log start up to
/// the first one too new to clean (min.compaction.lag.ms), and the base
/// offset of the segment after the last of them.
pub struct Cleanable {
    pub segments: Vec<SealedSegment>,
    pub end_offset: i64,
}

pub const LOG_START_FILE: &str = "log-start-offset";
/// Offsets one segment may span: index entries store them relative, in 32 bits.
pub const MAX_RELATIVE_OFFSET: i64 = i32::MAX as i64;
/// Largest segment: index entries store byte positions in 32 bits.
pub const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;
/// A replica accepts the leader's batches up to this size even where its
/// own `max.message.bytes` is smaller (the topic config may have changed).
pub const MAX_REPLICA_BATCH_BYTES: usize = 64 << 20;

impl PartitionLog {
    /// Wraps recovered segments (oldest first, last writable).
    pub fn new(
        dir: &Path,
        config: LogConfig,
        leader_epoch: i32,
        segments: Vec<Segment>,
        log_start_offset: i64,
        producers: ProducerStates,
    ) -> Self {
        assert!(segments.last().is_some_and(Segment::is_writable), "a log has a writable active segment");
        let end = segments.last().map_or(0, |s| s.next_offset);
        let first_base = segments.first().map_or(0, |s| s.base_offset);
        PartitionLog {
            dir: dir.to_path_buf(),
            config,
            leader_epoch,
            segments,
            log_start_offset: log_start_offset.max(first_base).min(end),
            flushed_offset: end,
            synced_offset: end,
            unsynced_sealed: Vec::new(),
            cache: VecDeque::new(),
            cache_bytes: 0,
            producers,
            cleaned_to: 0,
            epochs: EpochCache::default(),
            replica_hw: i64::MAX,
        }
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// One past the last appended offset (the log end; may be ahead of what
    /// is on disk).
    pub fn end_offset(&self) -> i64 {
        self.active().next_offset
    }

    /// What consumers may see: offsets written to the segment files (never
    /// bytes that are not on disk; appended batches past it may still be
    /// rolled back by a failed write) and, when the partition is replicated,
    /// on every in-sync replica too.
    pub fn high_watermark(&self) -> i64 {
        self.flushed_offset.min(self.replica_hw)
    }

    /// Sets the replicated high watermark (`i64::MAX`: not replicated).
    pub fn set_replica_hw(&mut self, hw: i64) {
        self.replica_hw = hw;
    }

    pub fn replica_hw(&self) -> i64 {
        self.replica_hw
    }

    pub fn flushed_offset(&self) -> i64 {
        self.flushed_offset
    }

    pub fn synced_offset(&self) -> i64 {
        self.synced_offset
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes of batches in the tail cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size_bytes).sum()
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("log has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.last_mut().expect("log has an active segment")
    }

    pub fn active_is_empty(&self) -> bool {
        self.active().size_bytes == 0
    }

    pub fn active_base_offset(&self) -> i64 {
        self.active().base_offset
    }

    /// Appended bytes not yet known written (only the active segment has any).
    pub fn unwritten_bytes(&self) -> u64 {
        self.active().unwritten_bytes()
    }

    /// Appended bytes not yet handed to a flush job.
    pub fn undispatched_bytes(&self) -> u64 {
        self.active().undispatched_bytes()
    }

    /// Whether a whole write buffer waits to be written.
    pub fn has_full_buffers(&self) -> bool {
        self.active().has_full_buffers()
    }

    /// Checks every batch of a produce payload without storing anything;
    /// `producer_clock`: a producer's payload, whose timestamps are checked
    /// against this time. Returns how many offsets the payload takes.
    pub fn validate(&self, records: &[u8], producer_clock: Option<i64>) -> Result<i64, BatchError> {
        let mut at = 0;
        let mut batches = 0;
        let mut offsets = 0i64;
        let mut idempotent = false;
        while at < records.len() {
            let info = batch::validate(&records[at..], self.config.max_message_bytes)?;
            if info.transactional {
                return Err(BatchError::Unsupported);
            }
            if let Some(now_ms) = producer_clock {
                self.check_timestamps(&info, now_ms)?;
            }
            idempotent |= info.producer_id >= 0;
            offsets += info.last_offset_delta as i64 + 1;
            at += info.total_bytes;
            batches += 1;
        }
        // Counts are the producer's word (records are not decompressed); a
        // payload must still fit one segment's 32-bit relative offsets.
        if offsets > MAX_RELATIVE_OFFSET {
            return Err(BatchError::BadCount);
        }
        if batches == 0 {
            return Err(BatchError::BadCount);
        }
        if idempotent && batches > 1 {
            return Err(BatchError::Unsupported); // as Kafka: one batch per partition
        }
        Ok(offsets)
    }

    /// The produce payload as it is to be stored: with compression.type
    /// set, each batch not already in that codec is checked whole and
    /// recompressed (the one place the broker decompresses on produce).
    pub fn recompress(&self, records: &Bytes) -> Result<Bytes, BatchError> {
        let Some(codec) = self.config.compression else { return Ok(records.clone()) };
        let mut at = 0;
        let mut out: Option<Vec<u8>> = None;
        while at < records.len() {
            let info = batch::validate(&records[at..], self.config.max_message_bytes)?;
            let whole = &records[at..at + info.total_bytes];
            if info.codec == codec {
                if let Some(out) = out.as_mut() {
                    out.extend_from_slice(whole);
                }
            } else {
                let recompressed = super::records::recompress(whole, codec, self.config.max_recompressed_batch_bytes)
                    .map_err(|e| match e {
                    super::records::RecordsError::TooLarge => BatchError::TooLarge { batch_bytes: usize::MAX },
                    _ => BatchError::Truncated,
                })?;
                out.get_or_insert_with(|| records[..at].to_vec()).extend_from_slice(&recompressed);
            }
            at += info.total_bytes;
        }
        Ok(out.map_or_else(|| records.clone(), Bytes::from))
    }

    /// A producer's CreateTime batch: its first timestamp may be at most
    /// `timestamp_before_max_ms` old, its largest at most
    /// `timestamp_after_max_ms` ahead. The header bounds the records (their
    /// deltas from the first are not negative in batches Kafka clients
    /// build), so nothing is decompressed. No timestamp (-1) passes.
    fn check_timestamps(&self, info: &BatchInfo, now_ms: i64) -> Result<(), BatchError> {
        if self.config.log_append_time {
            return Ok(()); // the broker stamps the batch
        }
        let oldest = now_ms.saturating_sub(self.config.timestamp_before_max_ms);
        let newest = now_ms.saturating_add(self.config.timestamp_after_max_ms);
        if info.base_timestamp >= 0 && info.base_timestamp < oldest {
            return Err(BatchError::InvalidTimestamp { timestamp: info.base_timestamp });
        }
        if info.max_timestamp > newest {
            return Err(BatchError::InvalidTimestamp { timestamp: info.max_timestamp });
        }
        Ok(())
    }

    /// Whether appending `bytes` taking `offsets` more needs a new segment first:
    /// by size, by age, or because the segment's relative offsets would overflow.
    pub fn needs_roll(&self, bytes: usize, offsets: i64, now_ms: i64) -> bool {
        let active = self.active();
        if !active.is_writable() {
            return true;
        }
        let empty = active.size_bytes == 0;
        let full = !empty && active.size_bytes + bytes as u64 > self.config.segment_bytes;
        let jitter_ms = roll_jitter_ms(&self.dir, active.base_offset, &self.config);
        let roll_after_ms = self.config.segment_ms - jitter_ms;
        let old = !empty && active.first_append_ms.is_some_and(|t| now_ms - t >= roll_after_ms);
        let offsets_overflow = !empty && active.next_offset + offsets - active.base_offset > MAX_RELATIVE_OFFSET;
        full || old || offsets_overflow
    }

    /// Appends a validated produce payload: assigns offsets, copies it into the
    /// active segment's write buffer, and caches it. Never decompresses.
    /// An idempotent producer's retry of a stored batch is answered with the
    /// original offsets and stores nothing.
    pub fn append(&mut self, records: &Bytes, now_ms: i64) -> Result<AppendInfo, StorageError> {
        let head = batch::peek(records).expect("payload was validated");
        if let Some(producer) = head.producer_batch() {
            match self.producers.check(&producer) {
                SequenceCheck::Append => {}
                SequenceCheck::Duplicate { base_offset } => {
                    let last_offset = base_offset + head.last_offset_delta as i64;
                    return Ok(AppendInfo {
                        base_offset,
                        last_offset,
                        log_append_time_ms: -1,
                        replicated_in_epoch: None,
                    });
                }
                SequenceCheck::OutOfOrder => return Err(StorageError::OutOfOrderSequence),
                SequenceCheck::Fenced => return Err(StorageError::InvalidProducerEpoch),
            }
        }
        let first = self.end_offset();
        let mut at = 0;
        while at < records.len() {
            let info = batch::peek(&records[at..]).expect("payload was validated");
            let whole = records.slice(at..at + info.total_bytes);
            let base_offset = self.end_offset();
            self.append_batch(whole, &info, now_ms);
            if let Some(producer) = info.producer_batch() {
                self.producers.record(&producer, base_offset);
            }
            at += info.total_bytes;
        }
        let log_append_time_ms = if self.config.log_append_time { now_ms } else { -1 };
        Ok(AppendInfo {
            base_offset: first,
            last_offset: self.end_offset() - 1,
            log_append_time_ms,
            replicated_in_epoch: None,
        })
    }

    fn append_batch(&mut self, whole: Bytes, info: &BatchInfo, now_ms: i64) {
        let base_offset = self.end_offset();
        let next_offset = base_offset + info.last_offset_delta as i64 + 1;
        let (prefix, body, max_timestamp) = if self.config.log_append_time {
            let mut copy = BytesMut::from(&whole[..]);
            batch::set_log_append_time(&mut copy, now_ms);
            copy[..16].copy_from_slice(&batch::patched_prefix(&whole, base_offset, self.leader_epoch));
            let copy = copy.freeze();
            (copy.slice(..16), copy.slice(16..), now_ms)
        } else {
            let prefix = batch::patched_prefix(&whole, base_offset, self.leader_epoch);
            (Bytes::copy_from_slice(&prefix), whole.slice(16..), info.max_timestamp)
        };
        let interval = self.config.index_interval_bytes;
        self.active_mut().append(&[&prefix, &body], base_offset, next_offset, max_timestamp, now_ms, interval);
        self.cache_bytes += prefix.len() + body.len();
        self.cache.push_back(CachedBatch { base_offset, last_offset: next_offset - 1, max_timestamp, prefix, body });
        self.trim_cache();
    }

    /// Drops the oldest cached batches beyond the bound, never unflushed ones.
    fn trim_cache(&mut self) {
        while self.cache_bytes > self.config.cache_bytes {
            match self.cache.front() {
                Some(front) if front.last_offset < self.flushed_offset => {
                    self.cache_bytes -= front.len();
                    self.cache.pop_front();
                }
                _ => break,
            }
        }
    }

    /// Takes the active segment's pending writes, and the offset they cover.
    pub fn begin_flush(&mut self) -> (Option<FlushJob>, i64) {
        let end = self.end_offset();
        (self.active_mut().begin_flush(), end)
    }

    /// Records a completed flush of the active segment, covering `offset`.
    pub fn finish_flush(&mut self, flushed: Flushed, offset: i64) {
        assert!(offset >= self.flushed_offset && offset <= self.end_offset(), "flushes complete in order");
        self.active_mut().finish_flush(flushed.flushed_to, flushed.tail);
        self.flushed_offset = offset;
        self.trim_cache();
    }

    /// A write failed: forget every batch appended since the last successful
    /// flush (none of them was acknowledged as written, nor visible to
    /// readers). Returns the new log end.
    pub fn roll_back_unwritten(&mut self) -> i64 {
        let end = self.flushed_offset;
        self.active_mut().roll_back_unwritten(end);
        while self.cache.back().is_some_and(|b| b.base_offset >= end) {
            let back = self.cache.pop_back().expect("checked non-empty");
            self.cache_bytes -= back.len();
        }
        self.producers.truncate_from(end);
        end
    }

    pub fn finish_sync(&mut self, offset: i64, synced_sealed: usize) {
        assert!(offset <= self.flushed_offset, "only written offsets are synced");
        self.synced_offset = self.synced_offset.max(offset);
        self.unsynced_sealed.drain(..synced_sealed);
    }

    /// What an fdatasync now must cover: (offset it makes durable, files to
    /// sync: sealed segments not yet synced, then the active segment).
    pub fn begin_sync(&self) -> (i64, Vec<(Rc<DmaFile>, PathBuf)>) {
        let mut files = self.unsynced_sealed.clone();
        let active = self.active();
        files.push((active.own_file(), super::segment::log_path(&self.dir, active.base_offset)));
        (self.flushed_offset, files)
    }

    pub fn unsynced_sealed_count(&self) -> usize {
        self.unsynced_sealed.len()
    }

    pub fn producer_snapshot(&self) -> Vec<u8> {
        self.producers.encode()
    }

    pub fn active_file_and_size(&self) -> (Rc<DmaFile>, u64) {
        (self.active().own_file(), self.active().size_bytes)
    }

    /// Makes `next` the active segment: the old one, fully written, becomes
    /// read-only in the same step, so no append can land in it afterwards.
    /// Returns what sealing the old one must persist.
    pub fn swap_active(&mut self, next: Segment) -> SealJob {
        assert_eq!(next.base_offset, self.end_offset(), "segments are contiguous");
        assert_eq!(self.flushed_offset, self.end_offset(), "a segment is sealed only once written");
        let dir = self.dir.clone();
        let old = self.active_mut();
        old.stop_appending();
        let seal = old.seal_job();
        let old_file = (old.own_file(), super::segment::log_path(&dir, old.base_offset));
        old.release_file();
        self.unsynced_sealed.push(old_file);
        self.segments.push(next);
        seal
    }

    /// Plans a read of up to `max_bytes` (at least one whole batch) from
    /// `offset`, of batches ending below `visible_end` (the high watermark
    /// for consumers, the written end for a follower replica).
    pub fn plan_read(&self, offset: i64, max_bytes: usize, visible_end: i64) -> ReadPlan {
        if offset < self.log_start_offset || offset > self.end_offset() {
            return ReadPlan::OutOfRange;
        }
        let visible_end = visible_end.min(self.flushed_offset);
        if offset >= visible_end {
            return ReadPlan::Cached(Vec::new());
        }
        if self.cache.front().is_some_and(|b| b.base_offset <= offset) {
            return ReadPlan::Cached(self.read_cache(offset, max_bytes, visible_end));
        }
        self.plan_disk_read(offset, max_bytes, visible_end)
    }

    fn read_cache(&self, offset: i64, max_bytes: usize, visible_end: i64) -> Vec<Bytes> {
        let start = self.cache.partition_point(|b| b.last_offset < offset);
        let mut parts = Vec::new();
        let mut bytes = 0;
        for cached in self.cache.range(start..) {
            if cached.last_offset >= visible_end {
                break; // not on disk (or not replicated) yet: invisible
            }
            if bytes > 0 && bytes + cached.len() > max_bytes {
                break;
            }
            bytes += cached.len();
            parts.push(cached.prefix.clone());
            parts.push(cached.body.clone());
        }
        parts
    }

    fn plan_disk_read(&self, offset: i64, max_bytes: usize, visible_end: i64) -> ReadPlan {
        let i = self.segments.partition_point(|s| s.base_offset <= offset).saturating_sub(1);
        let Some(j) = self.segments[i..].iter().position(|s| s.next_offset > offset) else {
            return ReadPlan::Cached(Vec::new());
        };
        let segment = &self.segments[i + j];
        let sealed_end = (i + j + 1 < self.segments.len()).then_some(segment.next_offset);
        let relative = (offset.max(segment.base_offset) - segment.base_offset) as u32;
        let position = segment.index.position_for(relative) as u64;
        let readable = segment.flushed_bytes.min(segment.size_bytes);
        // Read past the budget by one index interval: the start may precede `offset`.
        let want = max_bytes as u64 + self.config.index_interval_bytes + batch::HEADER_BYTES as u64;
        let len = want.min(readable.saturating_sub(position)) as usize;
        ReadPlan::Disk { file: segment.file(), position, len, readable, offset, max_bytes, sealed_end, visible_end }
    }

    /// Segments from the one holding the first batch whose max timestamp is at
    /// least `timestamp`: (file, scan start, readable bytes), or None.
    pub fn plan_time_lookup(&self, timestamp: i64) -> Option<(SegmentFile, u64, u64)> {
        let segment =
            self.segments.iter().find(|s| s.max_timestamp >= timestamp && s.next_offset > self.log_start_offset)?;
        let relative = segment.index.scan_start_for_time(timestamp);
        let position = segment.index.position_for(relative) as u64;
        Some((segment.file(), position, segment.flushed_bytes.min(segment.size_bytes)))
    }

    /// Visible cached batches past `min_offset` whose max timestamp reaches
    /// `timestamp`, whole (prefix and body joined), oldest first.
    pub fn cached_batches_reaching(&self, timestamp: i64, min_offset: i64) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.cache
            .iter()
            .take_while(|b| b.last_offset < self.high_watermark())
            .filter(move |b| b.max_timestamp >= timestamp && b.last_offset >= min_offset)
            .map(|b| [&b.prefix[..], &b.body[..]].concat())
    }

    /// The idempotent producers this partition remembers.
    pub fn active_producers(&self) -> Vec<super::producers::ActiveProducer> {
        self.producers.active()
    }

    /// The batch with the greatest timestamp: (timestamp, its last offset).
    pub fn max_timestamp_offset(&self) -> Option<(i64, i64)> {
        let segment = self.segments.iter().filter(|s| s.next_offset > s.base_offset).max_by_key(|s| s.max_timestamp)?;
        Some((segment.max_timestamp, segment.next_offset - 1))
    }

    /// Advances the log start (DeleteRecords); returns the new start.
    pub fn advance_start(&mut self, offset: i64) -> i64 {
        self.log_start_offset = self.log_start_offset.max(offset.min(self.high_watermark()));
        while self
            .cache
            .front()
            .is_some_and(|b| b.last_offset < self.log_start_offset && b.last_offset < self.flushed_offset)
        {
            let front = self.cache.pop_front().expect("checked non-empty");
            self.cache_bytes -= front.len();
        }
        self.log_start_offset
    }

    /// Removes sealed segments wholly below the log start, or expired by
    /// retention.ms / retention.bytes. Returns them for the caller to delete.
    pub fn take_expired_segments(&mut self, now_ms: i64) -> Vec<Segment> {
        let mut total = self.size_bytes() as i64;
        let mut expired = 0;
        // Empty sealed segments (cleaned away) go only with a later expired
        // one: removing the first segment moves the log start, and a
        // compacted log's start must not move under its readers.
        let mut empty_run = 0;
        for segment in &self.segments[..self.segments.len() - 1] {
            if segment.size_bytes == 0 {
                empty_run += 1;
                continue;
            }
            let below_start = segment.next_offset <= self.log_start_offset;
            let too_old = self.config.retention_ms >= 0
                && segment.max_timestamp >= 0
                && now_ms - segment.max_timestamp > self.config.retention_ms;
            let too_big =
                self.config.retention_bytes >= 0 && total - segment.size_bytes as i64 >= self.config.retention_bytes;
            if !(below_start || too_old || too_big) {
                break;
            }
            total -= segment.size_bytes as i64;
            expired += 1 + empty_run;
            empty_run = 0;
        }
        let removed: Vec<Segment> = self.segments.drain(..expired).collect();
        if let Some(first) = self.segments.first() {
            self.advance_start(first.base_offset);
        }
        removed
    }

    /// Sealed segments the cleaner may rewrite (see [`Cleanable`]).
    pub fn cleanable(&self, now_ms: i64) -> Cleanable {
        let sealed = &self.segments[..self.segments.len() - 1];
        let lag = self.config.min_compaction_lag_ms;
        let too_new = sealed.iter().position(|s| lag > 0 && s.max_timestamp > now_ms.saturating_sub(lag));
        let sealed = &sealed[..too_new.unwrap_or(sealed.len())];
        let end_offset = self.segments[sealed.len()].base_offset;
        let segments = sealed
            .iter()
            .filter(|s| s.next_offset > self.log_start_offset)
            .map(|s| SealedSegment {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                size_bytes: s.size_bytes,
                max_timestamp: s.max_timestamp,
                file: s.file(),
            })
            .collect();
        Cleanable { segments, end_offset }
    }

    /// Whether the sealed segments `replaced` (base offset and size of each,
    /// in order) are all still in the log, unchanged.
    pub fn has_segments(&self, replaced: &[(i64, u64)]) -> bool {
        self.find_segments(replaced).is_some()
    }

    fn find_segments(&self, replaced: &[(i64, u64)]) -> Option<std::ops::Range<usize>> {
        let first_base = replaced.first()?.0;
        let first = self.segments.iter().position(|s| s.base_offset == first_base)?;
        let last = first + replaced.len();
        if last >= self.segments.len() {
            return None; // the active segment is never replaced
        }
        let same = self.segments[first..last]
            .iter()
            .zip(replaced)
            .all(|(s, &(base, size))| s.base_offset == base && s.size_bytes == size && !s.is_writable());
        same.then_some(first..last)
    }

    /// Puts a cleaned segment in place of the sealed segments `replaced`
    /// (base offset and size of each, in order), if they are all still
    /// there unchanged. Returns their file paths.
    pub fn replace_segments(&mut self, replaced: &[(i64, u64)], cleaned: Segment) -> Option<Vec<PathBuf>> {
        let std::ops::Range { start: first, end: last } = self.find_segments(replaced)?;
        assert_eq!(cleaned.base_offset, replaced[0].0, "a cleaned segment keeps its first base offset");
        assert!(cleaned.next_offset <= self.segments[last].base_offset, "cleaning keeps offsets");
        let next_base = self.segments[last].base_offset;
        let old: Vec<Segment> = self.segments.splice(first..last, [cleaned]).collect();
        // Cached batches of the replaced segments would serve what the clean
        // removed; they are all written (sealed), so dropping them is safe.
        while self.cache.front().is_some_and(|b| b.base_offset < next_base) {
            let front = self.cache.pop_front().expect("checked non-empty");
            assert!(front.last_offset < self.flushed_offset, "sealed batches are written");
            self.cache_bytes -= front.len();
        }
        Some(old.iter().map(Segment::path).collect())
    }

    /// The cleaned segment at `base_offset` now has its usual file name;
    /// returns the name it had.
    pub fn finish_segment_rename(&mut self, base_offset: i64) -> Option<PathBuf> {
        self.segments.iter_mut().find(|s| s.base_offset == base_offset)?.clear_path_override()
    }

    /// OffsetForLeaderEpoch: the end of `epoch` in this log (see [`EpochCache::end_offset_for`]).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        self.epochs.end_offset_for(epoch, self.end_offset())
    }

    /// Checks batches fetched from the leader (framing, CRC, limits) and
    /// that they follow this log's end: (offsets they take, the newest leader
    /// epoch among them).
    pub fn validate_replica(&self, records: &[u8]) -> Result<Option<i32>, BatchError> {
        let mut at = 0;
        let mut next = self.end_offset();
        let mut newest_epoch = None;
        while at < records.len() {
            let info = batch::check_stored(&records[at..], self.config.max_message_bytes.max(MAX_REPLICA_BATCH_BYTES))?;
            if info.base_offset < next || info.last_offset_delta < 0 {
                return Err(BatchError::BadCount);
            }
            next = info.last_offset() + 1;
            newest_epoch = Some(info.leader_epoch);
            at += info.total_bytes;
        }
        Ok(newest_epoch)
    }

    /// Appends batches fetched from the leader as they are: their offsets,
    /// leader epochs and timestamps were set by the leader. Producer state
    /// and the epoch cache follow them, so a follower that becomes leader
    /// still knows every idempotent producer and where each epoch began.
    pub fn append_replica(&mut self, records: &Bytes, now_ms: i64) -> AppendInfo {
        let first = self.end_offset();
        let mut at = 0;
        while at < records.len() {
            let info = batch::peek(&records[at..]).expect("replica batches were validated");
            let whole = records.slice(at..at + info.total_bytes);
            let base_offset = info.base_offset;
            self.epochs.assign(info.leader_epoch, base_offset);
            let interval = self.config.index_interval_bytes;
            let next_offset = info.last_offset() + 1;
            let (prefix, body) = (whole.slice(..16), whole.slice(16..));
            self.active_mut().append(&[&prefix, &body], base_offset, next_offset, info.max_timestamp, now_ms, interval);
            self.cache_bytes += whole.len();
            self.cache.push_back(CachedBatch {
                base_offset,
                last_offset: next_offset - 1,
                max_timestamp: info.max_timestamp,
                prefix,
                body,
            });
            if let Some(producer) = info.producer_batch() {
                self.producers.record(&producer, base_offset);
            }
            at += info.total_bytes;
        }
        self.trim_cache();
        AppendInfo {
            base_offset: first,
            last_offset: self.end_offset() - 1,
            log_append_time_ms: -1,
            replicated_in_epoch: None,
        }
    }
}

/// Keeps whole batches from `data` (read from disk at a batch boundary) that
/// end at or after `offset`, within `max_bytes` but at least one.
pub fn cut_batches(data: Bytes, offset: i64, max_bytes: usize) -> Bytes {
    let mut start = None;
    let mut at = 0;
    while let Ok(info) = batch::peek(&data[at..]) {
        if info.last_offset() < offset {
            at += info.total_bytes;
            continue;
        }
        let first = *start.get_or_insert(at);
        if at > first && at + info.total_bytes - first > max_bytes {
            break;
        }
        at += info.total_bytes;
    }
    match start {
        Some(first) => data.slice(first..at),
        None => Bytes::new(),
    }
}

/// Keeps the whole batches of `data` (batches from a batch boundary) that
/// end below `end`: a disk read never returns what is not yet visible.
pub fn cut_below(data: Bytes, end: i64) -> Bytes {
    let mut at = 0;
    while let Ok(info) = batch::peek(&data[at..]) {
        if info.last_offset() >= end {
            break;
        }
        at += info.total_bytes;
    }
    if at == data.len() {
        data
    } else {
        data.slice(..at)
    }
}

/// The length of the first batch in `data`, if its header is there.
pub fn first_batch_bytes(data: &[u8]) -> Option<usize> {
    if data.len() < batch::HEADER_BYTES {
        return None;
    }
    let length = i32::from_be_bytes(data[8..12].try_into().expect("4 bytes"));
    (length > 0).then(|| length as usize + batch::LOG_OVERHEAD_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roll_jitter_is_fixed_per_segment_spread_and_below_segment_ms() {
        let config = LogConfig { segment_ms: 60_000, segment_jitter_ms: 10_000, ..LogConfig::default() };
        let dir = Path::new("/data/t-0");
        let jitters: Vec<i64> = (0..200).map(|base| roll_jitter_ms(dir, base * 1000, &config)).collect();
        assert!(jitters.iter().all(|j| (0..10_000).contains(j)));
        assert_eq!(jitters[7], roll_jitter_ms(dir, 7000, &config), "the same segment, the same jitter");
        let distinct: std::collections::HashSet<i64> = jitters.iter().copied().collect();
        assert!(distinct.len() > 150, "spread: {} distinct of 200", distinct.len());
        let other = roll_jitter_ms(Path::new("/data/t-1"), 0, &config);
        assert!(other != jitters[0] || roll_jitter_ms(Path::new("/data/t-2"), 0, &config) != jitters[0]);
        let none = LogConfig { segment_jitter_ms: 0, ..config.clone() };
        assert_eq!(roll_jitter_ms(dir, 5, &none), 0);
        let huge = LogConfig { segment_ms: 100, segment_jitter_ms: i64::MAX, ..config };
        assert!((0..100).contains(&roll_jitter_ms(dir, 5, &huge)), "less than segment.ms");
    }
}
