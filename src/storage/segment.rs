//! One segment file of a partition log, named by its base offset, written with
//! O_DIRECT through io_uring (glommio `DmaFile`) and read back the same way.
//!
//! Appends are copied once, into an aligned write buffer. `flush` writes the
//! buffers out in large aligned writes; the last, partial block is written
//! zero-padded and kept in memory, so the next flush rewrites just that block.
//! The file's logical length (`size_bytes`) is what recovery and readers trust;
//! sealing truncates the padding away.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

use super::faults::{self, Fault, Op};
use super::index::SegmentIndex;
use super::open_files::{self, SegmentFile};

/// Alignment of O_DIRECT writes.
pub const BLOCK_BYTES: u64 = 4096;

pub fn log_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}
pub fn index_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.index"))
}
pub fn time_index_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{base_offset:020}.timeindex"))
}

fn align_down(v: u64) -> u64 {
    v & !(BLOCK_BYTES - 1)
}
fn align_up(v: u64) -> u64 {
    align_down(v + BLOCK_BYTES - 1)
}

fn align_up_to(v: u64, step: u64) -> u64 {
    v.div_ceil(step) * step
}

/// Aligned buffers not yet written, in file order.
struct Appender {
    buffer_bytes: usize,
    /// Full buffers waiting for the next flush: (file position, buffer).
    sealed: Vec<(u64, DmaBuffer)>,
    /// The buffer being filled, starting at the aligned file position `current_pos`.
    current: DmaBuffer,
    current_pos: u64,
    current_len: usize,
    /// The file's size as allocated ahead of the writes.
    allocated_bytes: u64,
    /// See `LogConfig::preallocate_step_bytes`; 0 turns preallocation off.
    preallocate_step_bytes: u64,
    /// The partial last block as of the last successful flush: (its aligned
    /// file position, its bytes). A failed write rolls the buffers back to it.
    written_tail: (u64, Vec<u8>),
}

impl Appender {
    fn pending_bytes(&self) -> usize {
        self.sealed.len() * self.buffer_bytes + self.current_len
    }
}

pub struct Segment {
    pub base_offset: i64,
    pub dir: PathBuf,
    /// Held while the segment is active (or being recovered); a sealed
    /// segment's file is opened through the shard's bounded set instead.
    file: Option<Rc<DmaFile>>,
    /// Logical bytes: everything appended, flushed or not.
    pub size_bytes: u64,
    /// Bytes known written to the file (readable from disk).
    pub flushed_bytes: u64,
    /// Bytes handed to flush jobs (written, or being written).
    dispatched_bytes: u64,
    /// One past the last offset stored here.
    pub next_offset: i64,
    pub max_timestamp: i64,
    /// Wall-clock time of the first append, for segment.ms rolls.
    pub first_append_ms: Option<i64>,
    pub index: SegmentIndex,
    bytes_since_index: u64,
    appender: Option<Appender>,
    /// Where the file is when not at its usual name: a cleaned segment
    /// between its swap-in and the rename that finishes it.
    path_override: Option<PathBuf>,
}

impl Segment {
    async fn open_file(path: &Path) -> std::io::Result<DmaFile> {
        faults::fail(Op::Open, path)?;
        let file = OpenOptions::new().read(true).write(true).create(true).dma_open(path).await?;
        Ok(file)
    }

    /// Creates a new, empty, writable segment.
    pub async fn create(
        dir: &Path,
        base_offset: i64,
        buffer_bytes: usize,
        preallocate_step_bytes: u64,
    ) -> std::io::Result<Segment> {
        let file = Self::open_file(&log_path(dir, base_offset)).await?;
        file.truncate(0).await?;
        let mut segment = Segment::with_file(dir, base_offset, file);
        segment.start_appending(buffer_bytes, preallocate_step_bytes, Vec::new());
        Ok(segment)
    }

    /// Opens an existing segment read-only in spirit; recovery fills in the rest.
    pub async fn open(dir: &Path, base_offset: i64) -> std::io::Result<Segment> {
        let file = Self::open_file(&log_path(dir, base_offset)).await?;
        let mut segment = Segment::with_file(dir, base_offset, file);
        segment.size_bytes = segment.own_file().file_size().await?;
        segment.flushed_bytes = segment.size_bytes;
        segment.dispatched_bytes = segment.size_bytes;
        Ok(segment)
    }

    fn with_file(dir: &Path, base_offset: i64, file: DmaFile) -> Segment {
        Segment::empty(dir, base_offset, Some(Rc::new(file)), None)
    }

    /// A sealed segment being written by the log cleaner at `path`: no
    /// handle of its own; [`Segment::track`] builds its index.
    pub fn cleaned(dir: &Path, base_offset: i64, path: PathBuf) -> Segment {
        Segment::empty(dir, base_offset, None, Some(path))
    }

    fn empty(dir: &Path, base_offset: i64, file: Option<Rc<DmaFile>>, path_override: Option<PathBuf>) -> Segment {
        Segment {
            base_offset,
            dir: dir.to_path_buf(),
            file,
            size_bytes: 0,
            flushed_bytes: 0,
            dispatched_bytes: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            first_append_ms: None,
            index: SegmentIndex::default(),
            bytes_since_index: 0,
            appender: None,
            path_override,
        }
    }

    /// The cleaner renamed this segment's file to its usual name.
    pub fn clear_path_override(&mut self) -> Option<PathBuf> {
        self.path_override.take()
    }

    /// Makes a recovered segment writable at its logical end: cuts the file to
    /// `size_bytes` and reloads the partial last block into the write buffer.
    pub async fn resume_appending(&mut self, buffer_bytes: usize, preallocate_step_bytes: u64) -> std::io::Result<()> {
        let file = self.own_file();
        file.truncate(self.size_bytes).await?;
        let block_start = align_down(self.size_bytes);
        let partial = (self.size_bytes - block_start) as usize;
        let head = if partial > 0 { read_at(&file, block_start, partial).await?.to_vec() } else { Vec::new() };
        self.start_appending(buffer_bytes, preallocate_step_bytes, head);
        Ok(())
    }

    fn start_appending(&mut self, buffer_bytes: usize, preallocate_step_bytes: u64, head: Vec<u8>) {
        assert!((buffer_bytes as u64).is_multiple_of(BLOCK_BYTES) && buffer_bytes > 0, "write buffer is whole blocks");
        let mut current = self.own_file().alloc_dma_buffer(buffer_bytes);
        current.as_bytes_mut()[..head.len()].copy_from_slice(&head);
        let current_pos = align_down(self.size_bytes);
        assert_eq!(self.flushed_bytes, self.size_bytes, "a segment resumes appending where its file ends");
        self.dispatched_bytes = self.size_bytes;
        self.appender = Some(Appender {
            buffer_bytes,
            sealed: Vec::new(),
            current,
            current_pos,
            current_len: head.len(),
            allocated_bytes: self.size_bytes,
            preallocate_step_bytes,
            written_tail: (current_pos, head),
        });
    }

    pub fn is_writable(&self) -> bool {
        self.appender.is_some()
    }

    /// Appended bytes not yet handed to the disk.
    pub fn pending_bytes(&self) -> usize {
        self.appender.as_ref().map_or(0, Appender::pending_bytes)
    }

    /// Appended bytes not yet known written: pending, or in flight.
    pub fn unwritten_bytes(&self) -> u64 {
        self.size_bytes - self.flushed_bytes
    }

    /// Appended bytes not yet handed to a flush job.
    pub fn undispatched_bytes(&self) -> u64 {
        self.size_bytes - self.dispatched_bytes
    }

    /// Whether a whole write buffer waits to be written.
    pub fn has_full_buffers(&self) -> bool {
        self.appender.as_ref().is_some_and(|a| !a.sealed.is_empty())
    }

    /// Copies one batch (given as parts) to the end of the segment and indexes it.
    pub fn append(
        &mut self,
        parts: &[&[u8]],
        first_offset: i64,
        next_offset: i64,
        max_timestamp: i64,
        now_ms: i64,
        index_interval_bytes: u64,
    ) {
        let position = self.size_bytes;
        let batch_bytes: usize = parts.iter().map(|p| p.len()).sum();
        let appender = self.appender.as_mut().expect("append to a sealed segment");
        let file = self.file.as_ref().expect("an appending segment holds its file");
        for part in parts {
            let mut rest: &[u8] = part;
            while !rest.is_empty() {
                let room = appender.buffer_bytes - appender.current_len;
                let n = room.min(rest.len());
                appender.current.as_bytes_mut()[appender.current_len..appender.current_len + n]
                    .copy_from_slice(&rest[..n]);
                appender.current_len += n;
                rest = &rest[n..];
                if appender.current_len == appender.buffer_bytes {
                    let full = std::mem::replace(&mut appender.current, file.alloc_dma_buffer(appender.buffer_bytes));
                    appender.sealed.push((appender.current_pos, full));
                    appender.current_pos += appender.buffer_bytes as u64;
                    appender.current_len = 0;
                }
            }
        }
        self.track(position, first_offset, next_offset, max_timestamp, batch_bytes as u64, index_interval_bytes);
        self.first_append_ms.get_or_insert(now_ms);
    }

    /// Accounts for a batch now at `position` (appended, or found by recovery):
    /// size, next offset, max timestamp, and a sparse index entry every
    /// `index_interval_bytes`.
    pub fn track(
        &mut self,
        position: u64,
        first_offset: i64,
        next_offset: i64,
        max_timestamp: i64,
        batch_bytes: u64,
        index_interval_bytes: u64,
    ) {
        let relative = (first_offset - self.base_offset) as u32;
        self.max_timestamp = self.max_timestamp.max(max_timestamp);
        let indexed = self.index.last_relative().is_some_and(|last| relative <= last);
        if !indexed && (self.index.is_empty() || self.bytes_since_index >= index_interval_bytes) {
            self.index.add(relative, position as u32, self.max_timestamp);
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += batch_bytes;
        self.size_bytes = position + batch_bytes;
        self.next_offset = next_offset;
    }

    /// Starts recovery bookkeeping from a loaded index (tail scan follows).
    pub fn set_index(&mut self, index: SegmentIndex) {
        self.max_timestamp = index.max_timestamp().unwrap_or(-1);
        self.index = index;
        self.bytes_since_index = 0;
    }

    /// Takes every pending buffer for writing. Several jobs may be in flight;
    /// callers call [`Segment::finish_flush`] with their results in the order
    /// the jobs were taken, and start a job's first write only once the job
    /// before has finished if that one wrote the same partial block
    /// ([`FlushJob::partial_block_at`]).
    pub fn begin_flush(&mut self) -> Option<FlushJob> {
        let appender = self.appender.as_mut()?;
        if self.size_bytes == self.dispatched_bytes {
            return None;
        }
        let mut writes = std::mem::take(&mut appender.sealed);
        if appender.current_len > 0 {
            let file = self.file.as_ref().expect("an appending segment holds its file");
            let len = appender.current_len;
            let keep_from = align_down(len as u64) as usize;
            // From half full on, the buffer itself is written (a copy of it
            // costs more CPU than allocating another), and a fresh one takes
            // over with just the partial last block. Not below: a job holds
            // its buffer's whole allocation, so this keeps the memory of jobs
            // in flight within twice the bytes they write (which
            // `write_memory_bytes_per_shard` bounds).
            let mut out = if len >= appender.buffer_bytes / 2 {
                let mut fresh = file.alloc_dma_buffer(appender.buffer_bytes);
                fresh.as_bytes_mut()[..len - keep_from].copy_from_slice(&appender.current.as_bytes()[keep_from..len]);
                let mut out = std::mem::replace(&mut appender.current, fresh);
                out.trim_to_size(align_up(len as u64) as usize);
                out
            } else {
                // Little to write: a copy of it, and the buffer stays.
                let mut out = file.alloc_dma_buffer(align_up(len as u64) as usize);
                out.as_bytes_mut()[..len].copy_from_slice(&appender.current.as_bytes()[..len]);
                appender.current.as_bytes_mut().copy_within(keep_from..len, 0);
                out
            };
            out.as_bytes_mut()[len..].fill(0); // the padding of the partial block
            writes.push((appender.current_pos, out));
            appender.current_pos += keep_from as u64;
            appender.current_len = len - keep_from;
        }
        let write_end = writes.iter().map(|(pos, buf)| pos + buf.len() as u64).max().unwrap_or(0);
        let step = appender.preallocate_step_bytes;
        let busy = step > 0 && write_end >= step;
        let allocate_to = (busy && write_end > appender.allocated_bytes).then(|| align_up_to(write_end + step, step));
        if let Some(size) = allocate_to {
            appender.allocated_bytes = size;
        }
        let tail = (appender.current_pos, appender.current.as_bytes()[..appender.current_len].to_vec());
        debug_assert_eq!(tail.0 + tail.1.len() as u64, self.size_bytes, "the buffer ends at the logical size");
        let first_write_at = writes.first().map_or(tail.0, |(pos, _)| *pos);
        assert!(first_write_at == align_down(self.dispatched_bytes), "a job starts where the last one ended");
        self.dispatched_bytes = self.size_bytes;
        Some(FlushJob {
            first_write_at,
            file: self.own_file(),
            path: self.path(),
            writes,
            flushed_to: self.size_bytes,
            allocate_to,
            tail,
        })
    }

    /// Records a completed flush job: its bytes are on the device.
    pub fn finish_flush(&mut self, flushed_to: u64, tail: (u64, Vec<u8>)) {
        assert!(flushed_to >= self.flushed_bytes, "flushes complete in order");
        self.flushed_bytes = flushed_to;
        if let Some(appender) = self.appender.as_mut() {
            appender.written_tail = tail;
        }
    }

    /// Forgets everything appended since the last successful flush (a write
    /// failed): the segment ends at `flushed_bytes` again, at `next_offset`,
    /// and the write buffer holds just the last written partial block.
    pub fn roll_back_unwritten(&mut self, next_offset: i64) {
        let appender = self.appender.as_mut().expect("only the active segment is rolled back");
        let (tail_pos, tail) = appender.written_tail.clone();
        assert_eq!(tail_pos + tail.len() as u64, self.flushed_bytes, "the written tail ends at the flushed size");
        appender.sealed.clear();
        appender.current.as_bytes_mut()[..tail.len()].copy_from_slice(&tail);
        appender.current_pos = tail_pos;
        appender.current_len = tail.len();
        // The failed writes may have reached part of the file past this point:
        // whatever is there is cut off (see `FlushJob::run`'s caller) or
        // overwritten, and recovery would stop at it by CRC.
        appender.allocated_bytes = appender.allocated_bytes.min(self.flushed_bytes);
        self.size_bytes = self.flushed_bytes;
        self.dispatched_bytes = self.flushed_bytes;
        self.next_offset = next_offset;
        self.index.truncate_from_position(self.flushed_bytes as u32);
    }

    pub fn path(&self) -> PathBuf {
        self.path_override.clone().unwrap_or_else(|| log_path(&self.dir, self.base_offset))
    }

    /// Ends appending (after a final flush); the segment is read-only from here.
    pub fn stop_appending(&mut self) {
        debug_assert_eq!(self.pending_bytes(), 0, "stop appending only once flushed");
        self.appender = None;
    }

    /// The segment's own handle: the active segment and one being recovered
    /// hold one (writable); a sealed segment does not.
    pub fn own_file(&self) -> Rc<DmaFile> {
        self.file.clone().expect("only an active or recovering segment holds its file")
    }

    /// Where reads find this segment's bytes.
    pub fn file(&self) -> SegmentFile {
        match &self.file {
            Some(file) => SegmentFile::Own(file.clone()),
            None => SegmentFile::Sealed(self.path()),
        }
    }

    /// Gives up the segment's own handle (it is sealed): the shard's set of
    /// open sealed files keeps it for readers, within its bound.
    pub fn release_file(&mut self) {
        if let Some(file) = self.file.take() {
            open_files::keep(self.path(), file);
        }
    }

    /// What sealing must persist: the logical size and the encoded indexes.
    pub fn seal_job(&self) -> SealJob {
        SealJob {
            file: self.own_file(),
            path: self.path(),
            size_bytes: self.size_bytes,
            index: (index_path(&self.dir, self.base_offset), self.index.encode_offsets()),
            time_index: (time_index_path(&self.dir, self.base_offset), self.index.encode_times()),
        }
    }

    /// Deletes the segment's files.
    pub async fn remove(self) -> std::io::Result<()> {
        let (dir, base, path) = (self.dir.clone(), self.base_offset, self.path());
        open_files::forget(&path);
        if let Some(Ok(file)) = self.file.map(Rc::try_unwrap) {
            let _ = file.close().await;
        }
        glommio::executor()
            .spawn_blocking(move || {
                // The log first: an index without its log is ignored at start.
                for path in [path, log_path(&dir, base), index_path(&dir, base), time_index_path(&dir, base)] {
                    let _ = std::fs::remove_file(path);
                }
                let _ = std::fs::remove_file(super::producers::snapshot_path(&dir, base));
            })
            .await;
        Ok(())
    }
}

/// Makes glommio learn, on this thread, whether the data directory's device
/// supports io_uring IOPOLL, by opening a file that has data in it.
///
/// glommio probes IOPOLL with a read at offset 0 of the first file opened on
/// a device and caches the answer per thread. On an empty file that read ends
/// at EOF and "succeeds", so the device is wrongly taken as pollable and every
/// later read fails with EOPNOTSUPP on devices without poll queues (virtio).
pub async fn probe_device(dir: &Path, shard: usize) -> std::io::Result<()> {
    // Kept between runs: a broker must start on a full disk, where a new
    // probe file could not be written.
    let path = dir.join(format!(".iopoll-probe-{shard}"));
    let probe_path = path.clone();
    glommio::executor()
        .spawn_blocking(move || -> std::io::Result<()> {
            if std::fs::metadata(&probe_path).is_ok_and(|m| m.len() >= BLOCK_BYTES) {
                return Ok(());
            }
            std::fs::write(&probe_path, vec![0u8; BLOCK_BYTES as usize])
        })
        .await?;
    let file = DmaFile::open(&path).await?;
    let read = file.read_at(0, BLOCK_BYTES as usize).await.map(|_| ());
    let _ = file.close().await;
    read.map_err(|e| std::io::Error::other(format!("cannot read {} with O_DIRECT: {e}", path.display())))
}

/// Pending aligned writes of one segment, run without holding the log.
pub struct FlushJob {
    /// File position of the first write: the block the job before left
    /// partial, if it did.
    first_write_at: u64,
    file: Rc<DmaFile>,
    path: PathBuf,
    writes: Vec<(u64, DmaBuffer)>,
    flushed_to: u64,
    /// Grow the file to this size before writing.
    allocate_to: Option<u64>,
    /// The partial last block these writes leave: see `Appender::written_tail`.
    tail: (u64, Vec<u8>),
}

/// What a completed flush job makes readable.
pub struct Flushed {
    pub flushed_to: u64,
    pub tail: (u64, Vec<u8>),
}

impl FlushJob {
    /// Where the next job's first write would rewrite a block this job
    /// writes partially (zero-padded): that write must wait for this job,
    /// since two O_DIRECT writes of one block in flight land in any order.
    pub fn partial_block_at(&self) -> Option<u64> {
        (!self.tail.1.is_empty()).then_some(self.tail.0)
    }

    pub fn first_write_at(&self) -> u64 {
        self.first_write_at
    }

    /// Issues all writes at once (io_uring queues them), the first only once
    /// `first_write_after` is ready, and waits for all of them, even after
    /// one fails, so no write of this job is still in flight when the caller
    /// acts on the result. A short write is an error.
    pub async fn run(self, first_write_after: impl std::future::Future<Output = ()>) -> std::io::Result<Flushed> {
        let file = &self.file;
        if let Some(size) = self.allocate_to {
            // Only an optimisation (writes inside the file complete inline);
            // near a full disk the writes themselves may still fit.
            let allocated = match faults::fail(Op::Fallocate, &self.path) {
                Ok(()) => file.pre_allocate(size, false).await.map_err(os_error),
                Err(e) => Err(e),
            };
            if let Err(e) = allocated {
                tracing::debug!(path = %self.path.display(), "preallocation failed: {e}");
            }
        }
        let path = &self.path;
        let mut writes = self.writes.into_iter();
        let first = writes.next();
        let first = async move {
            first_write_after.await;
            match first {
                Some((pos, buf)) => write_whole(file, path, buf, pos).await,
                None => Ok(()),
            }
        };
        let rest = futures::future::join_all(writes.map(|(pos, buf)| write_whole(file, path, buf, pos)));
        let (first, rest) = futures::join!(first, rest);
        let mut first_error = None;
        for result in std::iter::once(first).chain(rest) {
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(Flushed { flushed_to: self.flushed_to, tail: self.tail }),
        }
    }
}

/// Writes `buf` at `pos`; fewer bytes written than asked is an error.
pub(super) async fn write_whole(file: &DmaFile, path: &Path, buf: DmaBuffer, pos: u64) -> std::io::Result<()> {
    let want = buf.len();
    let written = match faults::check(Op::Write, path) {
        None => {
            let started = std::time::Instant::now();
            let written = file.write_at(buf, pos).await.map_err(os_error)?;
            crate::metrics::with(|m| m.write_latency.observe(started.elapsed()));
            written
        }
        Some(Fault::Errno(errno)) => return Err(faults::injected(errno)),
        Some(Fault::Abort) => unreachable!("faults::check aborts the process"),
        Some(Fault::Short) => {
            let half = align_down(want as u64 / 2).max(BLOCK_BYTES.min(want as u64)) as usize;
            let mut short = file.alloc_dma_buffer(half);
            short.as_bytes_mut().copy_from_slice(&buf.as_bytes()[..half]);
            file.write_at(short, pos).await.map_err(os_error)?.min(want.saturating_sub(1))
        }
    };
    if written != want {
        return Err(std::io::Error::other(format!("short write: {written} of {want} bytes at {pos}")));
    }
    Ok(())
}

/// fdatasync through io_uring, with fault injection.
pub async fn fdatasync(file: &DmaFile, path: &Path) -> std::io::Result<()> {
    faults::fail(Op::Fdatasync, path)?;
    let started = std::time::Instant::now();
    let synced = file.fdatasync().await.map_err(os_error);
    crate::metrics::with(|m| m.fdatasync_latency.observe(started.elapsed()));
    synced
}

/// glommio's error as an `io::Error` that keeps the OS errno (glommio's own
/// conversion folds it into the message, and the writer decides by errno
/// whether a failure takes the partition offline).
pub fn os_error<T>(e: glommio::GlommioError<T>) -> std::io::Error {
    match e {
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => other.into(),
    }
}

/// What sealing a flushed segment persists.
pub struct SealJob {
    file: Rc<DmaFile>,
    path: PathBuf,
    size_bytes: u64,
    index: (PathBuf, Vec<u8>),
    time_index: (PathBuf, Vec<u8>),
}

impl SealJob {
    /// Cuts the block padding, syncs the data and writes the index files
    /// (each written whole and renamed into place: a crash leaves the old
    /// file or the new one, and recovery rebuilds a missing one).
    pub async fn run(self) -> std::io::Result<()> {
        self.file.truncate(self.size_bytes).await?;
        fdatasync(&self.file, &self.path).await?;
        let (index, time_index) = (self.index, self.time_index);
        glommio::executor()
            .spawn_blocking(move || -> std::io::Result<()> {
                crate::fsutil::write_atomic(&index.0, &index.1)?;
                crate::fsutil::write_atomic(&time_index.0, &time_index.1)
            })
            .await
    }
}

/// Reads `len` bytes at `position` through io_uring (unaligned is fine).
pub async fn read_at(file: &DmaFile, position: u64, len: usize) -> std::io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let result = file.read_at(position, len).await?;
    Ok(Bytes::copy_from_slice(&result[..]))
}
