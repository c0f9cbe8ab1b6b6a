//! The log cleaner: compaction of partitions whose topic has
//! `cleanup.policy=compact` (or `compact,delete`), `__consumer_offsets`
//! included. Each shard cleans its own partitions, one at a time, in a
//! background task queue of low priority, within a memory bound (the key
//! map) and an I/O rate.
//!
//! A clean of one partition:
//! 1. maps each key to its latest offset, reading the *dirty* sealed
//!    segments (holding offsets at or past the cleaner's checkpoint) until the
//!    map is full; `end` is one past the last record mapped;
//! 2. rewrites the sealed segments from the log start up to `end`, in groups
//!    that fit one segment: a record before `end` is kept unless the map
//!    holds a later offset for its key, or it is a tombstone older than
//!    `delete.retention.ms`. Batches keep their base and last offsets, their
//!    producer fields and their codec (this is the one place the broker
//!    decompresses); a batch left empty is dropped, one left whole is copied
//!    byte for byte;
//! 3. swaps each cleaned group in (below), then moves the checkpoint to `end`.
//!
//! The active segment, and every segment with a record newer than
//! `min.compaction.lag.ms`, are never cleaned. A log is cleaned once its dirty
//! bytes reach `min.cleanable.dirty.ratio` of its cleanable bytes.
//!
//! **The swap is crash-safe.** A group `[B, E)` (E: the next segment's base)
//! is written to `B.log.cleaned` and fdatasync'd; renaming it to `B-E.swap`
//! (then syncing the directory) commits the clean. Then the old segments'
//! index files and logs other than `B.log` go, and the swap file is renamed
//! over `B.log`. Recovery deletes any `.cleaned` file (an unfinished clean:
//! the old segments are whole) and finishes any `.swap` (the same steps, which
//! are idempotent), so a crash at any point leaves either the old segments or
//! the cleaned one, never both and never neither. Readers that planned a read
//! against the old segments plan again (`Partition::bump_layout`).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
use tracing::{debug, warn};

use super::batch::{self, BatchInfo};
use super::faults::{self, Op};
use super::log::{first_batch_bytes, LogConfig, SealedSegment, MAX_RELATIVE_OFFSET};
use super::partition::Partition;
use super::records::{self, Records};
use super::segment::{fdatasync, index_path, log_path, read_at, time_index_path, write_whole, Segment, BLOCK_BYTES};

/// Where a partition's cleaner checkpoint is kept: offsets below it are clean.
pub const CHECKPOINT_FILE: &str = "cleaner-offset-checkpoint";
const CLEANED_SUFFIX: &str = ".log.cleaned";
const SWAP_SUFFIX: &str = ".swap";
/// Bytes one key map entry is counted as: a 128-bit key hash, an offset, and
/// the hash table's slack (it keeps at most 7/8 of a power of two in use).
pub const MAP_ENTRY_BYTES: usize = 64;

/// The shard cleaner's limits (broker configs `log_cleaner_*`).
#[derive(Clone, Debug)]
pub struct CleanerConfig {
    /// Memory for the key map of one clean; more keys than fit are left to
    /// the next clean.
    pub dedupe_buffer_bytes: usize,
    /// Bytes read or written per I/O.
    pub io_buffer_bytes: usize,
    /// Read plus written bytes per second, at most.
    pub io_max_bytes_per_second: u64,
    /// A batch whose records expand past this is kept whole, uncleaned.
    pub max_batch_decompressed_bytes: usize,
}

/// What one clean did.
#[derive(Debug, Default, Clone)]
pub struct CleanStats {
    pub segments_rewritten: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    pub batches_removed: u64,
    /// The new checkpoint.
    pub cleaned_to: i64,
}

/// Cleans `partition` if it is compacted and dirty enough. Returns None if
/// there was nothing to do.
pub async fn clean(partition: &Rc<Partition>, config: &CleanerConfig, now_ms: i64) -> io::Result<Option<CleanStats>> {
    if !partition.may_clean() {
        return Ok(None);
    }
    let (cleanable, checkpoint, log_config, dir) = {
        let log = partition.log.borrow();
        if !log.config.compact {
            return Ok(None);
        }
        (log.cleanable(now_ms), log.cleaned_to.max(log.log_start_offset()), log.config.clone(), log.dir.clone())
    };
    let total_bytes: u64 = cleanable.segments.iter().map(|s| s.size_bytes).sum();
    let dirty_bytes: u64 = cleanable.segments.iter().filter(|s| s.next_offset > checkpoint).map(|s| s.size_bytes).sum();
    if dirty_bytes == 0 || (dirty_bytes as f64) < log_config.min_cleanable_dirty_ratio * total_bytes as f64 {
        return Ok(None);
    }
    let mut run = Run {
        config,
        log_config: &log_config,
        io: Throttle::new(config.io_max_bytes_per_second),
        stats: CleanStats::default(),
        now_ms,
    };
    let map = run.build_map(&cleanable.segments, checkpoint).await?;
    if map.end <= checkpoint {
        return Ok(None);
    }
    for (group, end_offset) in groups(&cleanable.segments, map.end, cleanable.end_offset, log_config.segment_bytes) {
        let cleaned = run.rewrite(&dir, group, end_offset, &map).await?;
        let replaced: Vec<(i64, u64)> = group.iter().map(|s| (s.base_offset, s.size_bytes)).collect();
        if !install(partition, replaced, cleaned, end_offset).await? {
            debug!(dir = %dir.display(), "log changed under the cleaner; cleaning again later");
            return Ok(None);
        }
        run.stats.segments_rewritten += group.len();
    }
    save_checkpoint(&dir, map.end).await?;
    partition.log.borrow_mut().cleaned_to = map.end;
    run.stats.cleaned_to = map.end;
    Ok(Some(run.stats))
}

/// Consecutive segments starting before `map_end`, grouped so that each
/// group fits one segment (bytes and 32-bit relative offsets), each with the
/// base offset of the segment after it.
fn groups(
    segments: &[SealedSegment],
    map_end: i64,
    end_offset: i64,
    segment_bytes: u64,
) -> Vec<(&[SealedSegment], i64)> {
    let cleanable = segments.partition_point(|s| s.base_offset < map_end);
    let mut out = Vec::new();
    let mut start = 0;
    while start < cleanable {
        let mut end = start + 1;
        let mut bytes = segments[start].size_bytes;
        while end < cleanable
            && bytes + segments[end].size_bytes <= segment_bytes
            && segments[end].next_offset - segments[start].base_offset <= MAX_RELATIVE_OFFSET
        {
            bytes += segments[end].size_bytes;
            end += 1;
        }
        let next_base = segments.get(end).map_or(end_offset, |s| s.base_offset);
        out.push((&segments[start..end], next_base));
        start = end;
    }
    out
}

/// Each key's latest offset among the records mapped: those from the
/// checkpoint up to `end`.
struct KeyMap {
    latest: HashMap<u128, i64>,
    capacity: usize,
    end: i64,
}

impl KeyMap {
    /// Records `offset` as the latest for `key`; false if the map is full.
    fn insert(&mut self, key: &[u8], offset: i64) -> bool {
        let hash = key_hash(key);
        if self.latest.len() >= self.capacity && !self.latest.contains_key(&hash) {
            return false;
        }
        self.latest.insert(hash, offset);
        true
    }

    fn latest(&self, key: &[u8]) -> Option<i64> {
        self.latest.get(&key_hash(key)).copied()
    }
}

/// 128 bits of SipHash: two keys colliding (which would drop the older one's
/// record wrongly) is as unlikely as with Kafka's MD5.
fn key_hash(key: &[u8]) -> u128 {
    let mut high = DefaultHasher::new();
    high.write(key);
    let mut low = DefaultHasher::new();
    low.write_u8(0x5c);
    low.write(key);
    (u128::from(high.finish()) << 64) | u128::from(low.finish())
}

/// One clean's settings, I/O budget and counts.
struct Run<'a> {
    config: &'a CleanerConfig,
    log_config: &'a LogConfig,
    io: Throttle,
    stats: CleanStats,
    now_ms: i64,
}

/// What becomes of one stored batch.
enum Verdict {
    Keep,
    Drop { records: u64 },
    Rebuilt { bytes: Vec<u8>, removed: u64 },
}

impl Run<'_> {
    async fn build_map(&mut self, segments: &[SealedSegment], checkpoint: i64) -> io::Result<KeyMap> {
        let capacity = (self.config.dedupe_buffer_bytes / MAP_ENTRY_BYTES).max(1);
        let mut map = KeyMap { latest: HashMap::with_capacity(capacity.min(1 << 16)), capacity, end: checkpoint };
        for segment in segments.iter().filter(|s| s.next_offset > checkpoint) {
            let mut reader = SegmentReader::open(segment, self.config.io_buffer_bytes, self.max_batch_bytes()).await?;
            while let Some((whole, info)) = reader.next_batch(&mut self.io, &mut self.stats).await? {
                if info.last_offset() < checkpoint {
                    continue;
                }
                let Ok(records) = records::read(&whole, self.config.max_batch_decompressed_bytes) else {
                    // Its keys stay unknown: older records of them are kept.
                    map.end = info.last_offset() + 1;
                    continue;
                };
                for record in &records.refs {
                    let offset = info.base_offset + i64::from(record.offset_delta);
                    if offset < checkpoint {
                        continue;
                    }
                    if let Some(key) = records.key(record) {
                        if !map.insert(key, offset) {
                            return Ok(map); // full: the rest waits for the next clean
                        }
                    }
                    map.end = offset + 1;
                }
                map.end = map.end.max(info.last_offset() + 1);
                glommio::yield_if_needed().await;
            }
        }
        Ok(map)
    }

    /// Writes the cleaned contents of `group` to `B.log.cleaned`, synced.
    /// Returns the segment as it will be once swapped in.
    async fn rewrite(
        &mut self,
        dir: &Path,
        group: &[SealedSegment],
        end_offset: i64,
        map: &KeyMap,
    ) -> io::Result<Segment> {
        let base = group[0].base_offset;
        let path = cleaned_path(dir, base);
        let mut segment = Segment::cleaned(dir, base, swap_path(dir, base, end_offset));
        let mut out = CleanedWriter::create(&path, self.config.io_buffer_bytes).await?;
        let written = self.copy_group(group, map, &mut segment, &mut out).await;
        let finished = match written {
            Ok(()) => out.finish(&mut self.io).await,
            Err(e) => Err(e),
        };
        if let Err(e) = finished {
            remove_quietly(path).await;
            return Err(e);
        }
        segment.flushed_bytes = segment.size_bytes;
        self.stats.bytes_written += segment.size_bytes;
        Ok(segment)
    }

    async fn copy_group(
        &mut self,
        group: &[SealedSegment],
        map: &KeyMap,
        segment: &mut Segment,
        out: &mut CleanedWriter,
    ) -> io::Result<()> {
        for old in group {
            let mut reader = SegmentReader::open(old, self.config.io_buffer_bytes, self.max_batch_bytes()).await?;
            while let Some((whole, info)) = reader.next_batch(&mut self.io, &mut self.stats).await? {
                let rebuilt;
                let bytes: &[u8] = match self.verdict(&whole, &info, map) {
                    Verdict::Keep => &whole,
                    Verdict::Drop { records } => {
                        self.stats.records_removed += records;
                        self.stats.batches_removed += 1;
                        continue;
                    }
                    Verdict::Rebuilt { bytes, removed } => {
                        self.stats.records_removed += removed;
                        rebuilt = bytes;
                        &rebuilt
                    }
                };
                let position = segment.size_bytes;
                let interval = self.log_config.index_interval_bytes;
                let max_timestamp = batch::peek(bytes).map_or(info.max_timestamp, |b| b.max_timestamp);
                segment.track(
                    position,
                    info.base_offset,
                    info.last_offset() + 1,
                    max_timestamp,
                    bytes.len() as u64,
                    interval,
                );
                out.push(bytes, &mut self.io).await?;
                glommio::yield_if_needed().await;
            }
        }
        Ok(())
    }

    /// Which records of a stored batch a clean keeps.
    fn verdict(&self, whole: &Bytes, info: &BatchInfo, map: &KeyMap) -> Verdict {
        if info.base_offset >= map.end {
            return Verdict::Keep;
        }
        let records = match records::read(whole, self.config.max_batch_decompressed_bytes) {
            Ok(records) => records,
            Err(e) => {
                warn!(offset = info.base_offset, "cleaner keeps a batch it cannot read: {e:?}");
                return Verdict::Keep;
            }
        };
        let keep: Vec<usize> = (0..records.refs.len()).filter(|&i| self.keeps(whole, info, &records, i, map)).collect();
        let removed = (records.refs.len() - keep.len()) as u64;
        if removed == 0 {
            return Verdict::Keep;
        }
        if keep.is_empty() {
            return Verdict::Drop { records: removed };
        }
        match records::rebuild(whole, &records, &keep) {
            Ok(bytes) => Verdict::Rebuilt { bytes, removed },
            Err(e) => {
                warn!(offset = info.base_offset, "cleaner keeps a batch it cannot rebuild: {e:?}");
                Verdict::Keep
            }
        }
    }

    fn keeps(&self, whole: &[u8], info: &BatchInfo, records: &Records, i: usize, map: &KeyMap) -> bool {
        let record = &records.refs[i];
        let offset = info.base_offset + i64::from(record.offset_delta);
        let Some(key) = records.key(record) else {
            return true; // a keyless record has nothing to be superseded by
        };
        if offset >= map.end {
            return true;
        }
        if map.latest(key).is_some_and(|latest| latest > offset) {
            return false;
        }
        let expired =
            records::timestamp(whole, record).saturating_add(self.log_config.delete_retention_ms) < self.now_ms;
        !(record.tombstone && expired)
    }

    /// Largest batch the reader accepts (as recovery's scan): stored batches
    /// were validated on append; this only guards against damaged lengths.
    fn max_batch_bytes(&self) -> usize {
        self.log_config.max_message_bytes.max(1 << 20) * 16
    }
}

/// Swaps `cleaned` in for the segments `replaced` ([`module docs`](self)).
/// Holds the partition's meta lock, in a task of its own. Returns false (and
/// deletes the cleaned file) if the log changed meanwhile.
async fn install(partition: &Rc<Partition>, replaced: Vec<(i64, u64)>, cleaned: Segment, end: i64) -> io::Result<bool> {
    partition
        .run_locked(move |partition| async move {
            let (dir, base) = (cleaned.dir.clone(), cleaned.base_offset);
            let (from, swap) = (cleaned_path(&dir, base), swap_path(&dir, base, end));
            let unchanged = partition.may_clean() && partition.log.borrow().has_segments(&replaced);
            if !unchanged {
                remove_quietly(from).await;
                return Ok(false);
            }
            let committed = blocking(move || {
                faults::fail(Op::Rename, &from)?;
                crate::fsutil::rename_durable(&from, &swap)
            })
            .await;
            if let Err(e) = committed {
                remove_quietly(cleaned_path(&dir, base)).await;
                return Err(e);
            }
            let index = (cleaned.index.encode_offsets(), cleaned.index.encode_times());
            let old_paths = partition.log.borrow_mut().replace_segments(&replaced, cleaned);
            let old_paths = old_paths.expect("the segments were checked under the meta lock");
            partition.bump_layout();
            for path in &old_paths {
                super::open_files::forget(path);
            }
            let dir_owned = dir.clone();
            blocking(move || finish_swap(&dir_owned, base, end)).await?;
            if let Some(swap) = partition.log.borrow_mut().finish_segment_rename(base) {
                partition.bump_layout();
                super::open_files::forget(&swap);
            }
            // The index is an optimisation: recovery rebuilds a missing one.
            let written = blocking(move || {
                crate::fsutil::write_atomic(&index_path(&dir, base), &index.0)?;
                crate::fsutil::write_atomic(&time_index_path(&dir, base), &index.1)
            })
            .await;
            if let Err(e) = written {
                warn!("writing a cleaned segment's index: {e}");
            }
            Ok(true)
        })
        .await
}

/// Finishes the swap of `B-E.swap` (B = `base`, E = `end`): removes the
/// index files of segments in [B, E) and the logs in (B, E), then renames
/// the swap file over `B.log`. Idempotent: recovery runs it again after a
/// crash at any step.
fn finish_swap(dir: &Path, base: i64, end: i64) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some((stem, ext)) = name.split_once('.') else { continue };
        let Ok(offset) = stem.parse::<i64>() else { continue };
        let doomed = match ext {
            "index" | "timeindex" => offset >= base && offset < end,
            "log" => offset > base && offset < end,
            _ => false,
        };
        if doomed {
            std::fs::remove_file(dir.join(&name))?;
        }
    }
    let swap = swap_path(dir, base, end);
    faults::fail(Op::Rename, &swap)?;
    std::fs::rename(&swap, log_path(dir, base))?;
    crate::fsutil::sync_dir(dir)
}

/// At start, before segments are listed: deletes unfinished cleans and
/// finishes committed swaps. Blocking.
pub fn recover(dir: &Path) -> io::Result<()> {
    let mut swaps = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(CLEANED_SUFFIX) {
            warn!(dir = %dir.display(), file = name, "removing an unfinished clean");
            std::fs::remove_file(dir.join(&name))?;
        } else if let Some((base, end)) = parse_swap_name(&name) {
            swaps.push((base, end));
        }
    }
    swaps.sort_unstable();
    for (base, end) in swaps {
        warn!(dir = %dir.display(), base, end, "finishing a cleaned segment's swap");
        finish_swap(dir, base, end)?;
    }
    Ok(())
}

/// The checkpoint saved in `dir`, or 0.
pub fn read_checkpoint(dir: &Path) -> i64 {
    std::fs::read_to_string(dir.join(CHECKPOINT_FILE)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

async fn save_checkpoint(dir: &Path, offset: i64) -> io::Result<()> {
    let path = dir.join(CHECKPOINT_FILE);
    blocking(move || crate::fsutil::write_atomic(&path, offset.to_string().as_bytes())).await
}

fn cleaned_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}{CLEANED_SUFFIX}"))
}

fn swap_path(dir: &Path, base: i64, end: i64) -> PathBuf {
    dir.join(format!("{base:020}-{end:020}{SWAP_SUFFIX}"))
}

fn parse_swap_name(name: &str) -> Option<(i64, i64)> {
    let (base, end) = name.strip_suffix(SWAP_SUFFIX)?.split_once('-')?;
    Some((base.parse().ok()?, end.parse().ok()?))
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    glommio::executor().spawn_blocking(work).await
}

async fn remove_quietly(path: PathBuf) {
    let _ = blocking(move || std::fs::remove_file(path)).await;
}

/// Paces I/O to a rate: after each step, sleeps until the bytes so far are
/// within `bytes_per_second` of the time since the clean began.
struct Throttle {
    bytes_per_second: u64,
    started: Instant,
    bytes: u64,
}

impl Throttle {
    fn new(bytes_per_second: u64) -> Throttle {
        assert!(bytes_per_second > 0, "the cleaner's I/O rate is positive");
        Throttle { bytes_per_second, started: Instant::now(), bytes: 0 }
    }

    async fn pace(&mut self, bytes: u64) {
        self.bytes += bytes;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_second as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            glommio::timer::sleep(wait).await;
        }
    }
}

/// Reads a sealed segment's batches in order, `chunk_bytes` at a time,
/// checking each batch's CRC (a damaged batch stops the clean: copying it
/// would hide the damage under a fresh CRC).
struct SegmentReader {
    file: Rc<DmaFile>,
    size_bytes: u64,
    /// File position of `chunk[0]`.
    chunk_position: u64,
    chunk: Bytes,
    at: usize,
    chunk_bytes: usize,
    max_batch_bytes: usize,
}

impl SegmentReader {
    async fn open(segment: &SealedSegment, chunk_bytes: usize, max_batch_bytes: usize) -> io::Result<SegmentReader> {
        Ok(SegmentReader {
            file: segment.file.open().await?,
            size_bytes: segment.size_bytes,
            chunk_position: 0,
            chunk: Bytes::new(),
            at: 0,
            chunk_bytes,
            max_batch_bytes,
        })
    }

    async fn next_batch(
        &mut self,
        io: &mut Throttle,
        stats: &mut CleanStats,
    ) -> io::Result<Option<(Bytes, BatchInfo)>> {
        loop {
            let rest = &self.chunk[self.at..];
            let wanted = first_batch_bytes(rest);
            if let Some(len) = wanted.filter(|&len| len <= rest.len()) {
                let whole = self.chunk.slice(self.at..self.at + len);
                let info = batch::check_stored(&whole, self.max_batch_bytes).map_err(|e| self.damaged(e))?;
                self.at += len;
                return Ok(Some((whole, info)));
            }
            let position = self.chunk_position + self.at as u64;
            if position >= self.size_bytes {
                return Ok(None);
            }
            let left = (self.size_bytes - position) as usize;
            let want = wanted.unwrap_or(0).max(self.chunk_bytes).min(left);
            if wanted.is_some_and(|len| len > left || len > self.max_batch_bytes) || want < batch::HEADER_BYTES {
                return Err(self.damaged(batch::BatchError::Truncated));
            }
            self.chunk = read_at(&self.file, position, want).await?;
            self.chunk_position = position;
            self.at = 0;
            stats.bytes_read += want as u64;
            io.pace(want as u64).await;
        }
    }

    fn damaged(&self, e: batch::BatchError) -> io::Error {
        let at = self.chunk_position + self.at as u64;
        io::Error::new(io::ErrorKind::InvalidData, format!("damaged batch at byte {at} of a sealed segment: {e:?}"))
    }
}

/// Writes a cleaned segment file in aligned O_DIRECT writes of one buffer.
struct CleanedWriter {
    file: DmaFile,
    path: PathBuf,
    buffer: DmaBuffer,
    filled: usize,
    /// File position of the buffer (aligned).
    position: u64,
}

impl CleanedWriter {
    async fn create(path: &Path, buffer_bytes: usize) -> io::Result<CleanedWriter> {
        assert!((buffer_bytes as u64).is_multiple_of(BLOCK_BYTES), "the cleaner's buffer is whole blocks");
        faults::fail(Op::Open, path)?;
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).dma_open(path).await?;
        let buffer = file.alloc_dma_buffer(buffer_bytes);
        Ok(CleanedWriter { file, path: path.to_path_buf(), buffer, filled: 0, position: 0 })
    }

    async fn push(&mut self, mut bytes: &[u8], io: &mut Throttle) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = (self.buffer.len() - self.filled).min(bytes.len());
            self.buffer.as_bytes_mut()[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == self.buffer.len() {
                let full = std::mem::replace(&mut self.buffer, self.file.alloc_dma_buffer(self.filled));
                write_whole(&self.file, &self.path, full, self.position).await?;
                self.position += self.filled as u64;
                io.pace(self.filled as u64).await;
                self.filled = 0;
            }
        }
        Ok(())
    }

    /// Writes the last partial block zero-padded, cuts the padding, syncs.
    async fn finish(self, io: &mut Throttle) -> io::Result<()> {
        let size = self.position + self.filled as u64;
        if self.filled > 0 {
            let padded = (self.filled as u64).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
            let mut last = self.file.alloc_dma_buffer(padded as usize);
            last.as_bytes_mut()[..self.filled].copy_from_slice(&self.buffer.as_bytes()[..self.filled]);
            last.as_bytes_mut()[self.filled..].fill(0);
            write_whole(&self.file, &self.path, last, self.position).await?;
            io.pace(padded).await;
        }
        self.file.truncate(size).await?;
        fdatasync(&self.file, &self.path).await?;
        self.file.close().await.map_err(super::segment::os_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_names_round_trip() {
        let dir = Path::new("/d");
        let name = swap_path(dir, 42, 1000).file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(parse_swap_name(&name), Some((42, 1000)));
        assert_eq!(parse_swap_name("00000000000000000042.log"), None);
    }

    #[test]
    fn recovery_finishes_a_committed_swap_and_drops_an_unfinished_clean() {
        let dir = std::env::temp_dir().join(format!("spate-cleaner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for base in [0i64, 10, 20, 30] {
            std::fs::write(log_path(&dir, base), format!("old {base}")).unwrap();
            std::fs::write(index_path(&dir, base), b"i").unwrap();
            std::fs::write(time_index_path(&dir, base), b"t").unwrap();
        }
        std::fs::write(swap_path(&dir, 0, 20), b"cleaned 0..20").unwrap();
        std::fs::write(cleaned_path(&dir, 20), b"half").unwrap();
        recover(&dir).unwrap();
        let mut names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        let expected = [
            "00000000000000000000.log",
            "00000000000000000020.index",
            "00000000000000000020.log",
            "00000000000000000020.timeindex",
            "00000000000000000030.index",
            "00000000000000000030.log",
            "00000000000000000030.timeindex",
        ];
        assert_eq!(names, expected);
        assert_eq!(std::fs::read(log_path(&dir, 0)).unwrap(), b"cleaned 0..20");
        recover(&dir).unwrap(); // idempotent
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn groups_fit_one_segment_and_end_at_the_next_base() {
        let seg = |base: i64, next: i64, size: u64| SealedSegment {
            base_offset: base,
            next_offset: next,
            size_bytes: size,
            max_timestamp: 0,
            file: super::super::open_files::SegmentFile::Sealed(PathBuf::from("/x")),
        };
        let segments = vec![seg(0, 10, 60), seg(10, 20, 60), seg(20, 30, 30), seg(30, 40, 10)];
        let grouped = groups(&segments, 25, 40, 100);
        let shape: Vec<(Vec<i64>, i64)> =
            grouped.iter().map(|(g, end)| (g.iter().map(|s| s.base_offset).collect(), *end)).collect();
        assert_eq!(shape, vec![(vec![0], 10), (vec![10, 20], 30)]);
    }
}
