//! A partition as its owning shard sees it: the log behind a `RefCell`, plus
//! the async steps around it — group-committed flushes and syncs, segment
//! rolls, disk reads, and waking long-polling fetches when data arrives.
//!
//! Borrows of the log never span an `.await`: each step borrows, takes a job,
//! releases, awaits the job, and borrows again to record the result.

use std::cell::RefCell;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use glommio::sync::Semaphore;

use super::batch::BatchError;
use super::log::{cut_batches, AppendInfo, PartitionLog, ReadPlan, LOG_START_FILE};
use super::segment::{read_at, Segment};

#[derive(Debug)]
pub enum StorageError {
    Batch(BatchError),
    OffsetOutOfRange,
    /// An idempotent producer skipped sequence numbers.
    OutOfOrderSequence,
    /// An idempotent producer's epoch is older than one already seen.
    InvalidProducerEpoch,
    Io(std::io::Error),
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError::Io(e)
    }
}

/// How long a produce waits before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// acks=0: in the write buffer.
    Buffered,
    /// acks=1: written to the segment file.
    Written,
    /// acks=all: written and fdatasync'd.
    Synced,
}

pub struct Partition {
    pub log: RefCell<PartitionLog>,
    /// Serialises writes and rolls: one disk write stream per partition.
    write_lock: Semaphore,
    /// Serialises fdatasyncs (each covers everything written before it).
    sync_lock: Semaphore,
    /// Fetches waiting for data past the end; only live ones are kept, so the
    /// list is bounded by the fetches in flight.
    data_waiters: RefCell<Vec<oneshot::Sender<()>>>,
    /// Pending bytes past which an append first waits for a flush.
    max_pending_bytes: usize,
}

impl Partition {
    pub fn new(log: PartitionLog) -> Partition {
        let max_pending_bytes = log.config.write_buffer_bytes * 4;
        Partition {
            log: RefCell::new(log),
            write_lock: Semaphore::new(1),
            sync_lock: Semaphore::new(1),
            data_waiters: RefCell::new(Vec::new()),
            max_pending_bytes,
        }
    }

    /// Validates, stores, and waits for `durability`.
    pub async fn produce(
        &self,
        records: Bytes,
        durability: Durability,
        now_ms: i64,
    ) -> Result<AppendInfo, StorageError> {
        let offsets = self.log.borrow().validate(&records).map_err(StorageError::Batch)?;
        if self.log.borrow().needs_roll(records.len(), offsets, now_ms) {
            self.roll(records.len(), offsets, now_ms).await?;
        }
        if self.log.borrow().pending_bytes() > self.max_pending_bytes {
            self.flush(false).await?;
        }
        let info = self.log.borrow_mut().append(&records, now_ms)?;
        for waiter in self.data_waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
        match durability {
            Durability::Buffered => {}
            Durability::Written => self.wait_durable(info.last_offset, false).await?,
            Durability::Synced => self.wait_durable(info.last_offset, true).await?,
        }
        Ok(info)
    }

    /// Returns once `offset` is written (and synced if `sync`). Concurrent
    /// waiters queue on the locks; the first one through writes (or syncs)
    /// everything appended so far, so the rest usually find their offset
    /// already covered: group commit.
    pub async fn wait_durable(&self, offset: i64, sync: bool) -> std::io::Result<()> {
        loop {
            let done = {
                let log = self.log.borrow();
                if sync {
                    log.synced_offset() > offset
                } else {
                    log.flushed_offset() > offset
                }
            };
            if done {
                return Ok(());
            }
            self.flush(sync).await?;
        }
    }

    /// Writes the active segment's pending buffers, then fdatasyncs if `sync`.
    /// The sync runs outside the write lock: a slow fdatasync never holds up
    /// acks=1 producers, who need only the write.
    pub async fn flush(&self, sync: bool) -> std::io::Result<()> {
        {
            let _write = acquire(&self.write_lock).await?;
            self.write_pending().await?;
        }
        if sync {
            self.sync_written().await?;
        }
        Ok(())
    }

    /// Writes pending buffers. The caller holds the write lock.
    async fn write_pending(&self) -> std::io::Result<()> {
        let (job, offset) = self.log.borrow_mut().begin_flush();
        if let Some(job) = job {
            let flushed_to = job.run().await?;
            self.log.borrow_mut().finish_flush(flushed_to, offset);
        }
        Ok(())
    }

    /// fdatasyncs everything written so far; concurrent callers share one sync.
    async fn sync_written(&self) -> std::io::Result<()> {
        let _sync = acquire(&self.sync_lock).await?;
        let (target, file) = {
            let log = self.log.borrow();
            (log.flushed_offset(), log.active_file())
        };
        if self.log.borrow().synced_offset() >= target {
            return Ok(());
        }
        // Offsets written before a roll are in the sealed segment, which the
        // roll synced before making a new active file.
        file.fdatasync().await?;
        self.log.borrow_mut().finish_sync(target);
        Ok(())
    }

    /// Seals the active segment and starts a new one, if still needed.
    async fn roll(&self, bytes: usize, offsets: i64, now_ms: i64) -> std::io::Result<()> {
        let _write = acquire(&self.write_lock).await?;
        if !self.log.borrow().needs_roll(bytes, offsets, now_ms) {
            return Ok(());
        }
        self.write_pending().await?;
        let end = self.log.borrow().end_offset();
        let seal = self.log.borrow_mut().seal_active();
        seal.run().await?; // truncates, fdatasyncs, writes the indexes
        self.log.borrow_mut().finish_sync(end);
        let (dir, buffer_bytes, step) = {
            let log = self.log.borrow();
            (log.dir.clone(), log.config.write_buffer_bytes, log.config.preallocate_step_bytes)
        };
        let segment = Segment::create(&dir, end, buffer_bytes, step).await?;
        self.log.borrow_mut().push_segment(segment);
        Ok(())
    }

    /// Reads from `offset`: up to `max_bytes`, at least one whole batch.
    /// Returns the parts to send, in order.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<Vec<Bytes>, StorageError> {
        let plan = self.log.borrow().plan_read(offset, max_bytes);
        match plan {
            ReadPlan::OutOfRange => Err(StorageError::OffsetOutOfRange),
            ReadPlan::Cached(parts) => Ok(parts),
            ReadPlan::Disk { file, position, len, readable, offset, max_bytes } => {
                let kept = read_disk(&file, position, len, readable, offset, max_bytes).await?;
                Ok(if kept.is_empty() { Vec::new() } else { vec![kept] })
            }
        }
    }

    /// Waits until the log grows past `end_offset`, or `timeout` passes.
    pub async fn wait_for_data(&self, end_offset: i64, timeout: Duration) {
        if self.log.borrow().end_offset() > end_offset {
            return;
        }
        let (tx, rx) = oneshot::channel();
        {
            // Fetches that timed out left their senders behind; drop those, so
            // an idle partition polled for hours holds only live waiters.
            let mut waiters = self.data_waiters.borrow_mut();
            waiters.retain(|w| !w.is_canceled());
            waiters.push(tx);
        }
        let _ = glommio::timer::timeout(timeout, async move {
            let _ = rx.await;
            Ok(())
        })
        .await;
    }

    /// First batch whose max timestamp is at least `timestamp`:
    /// (that timestamp, its base offset).
    pub async fn offset_for_time(&self, timestamp: i64) -> std::io::Result<Option<(i64, i64)>> {
        let plan = self.log.borrow().plan_time_lookup(timestamp);
        if let Some((file, mut position, readable)) = plan {
            while position < readable {
                let chunk = read_at(&file, position, (readable - position).min(1 << 20) as usize).await?;
                let mut at = 0;
                while let Ok(info) = super::batch::peek(&chunk[at..]) {
                    if info.max_timestamp >= timestamp {
                        return Ok(Some((info.max_timestamp, info.base_offset)));
                    }
                    at += info.total_bytes;
                }
                if at == 0 {
                    break;
                }
                position += at as u64;
            }
        }
        Ok(self.log.borrow().cached_time_lookup(timestamp))
    }

    /// DeleteRecords: moves the log start to `offset` and persists it.
    pub async fn delete_records(&self, offset: i64) -> Result<i64, StorageError> {
        let (start, dir) = {
            let mut log = self.log.borrow_mut();
            if offset > log.end_offset() || offset < 0 {
                return Err(StorageError::OffsetOutOfRange);
            }
            (log.advance_start(offset), log.dir.clone())
        };
        glommio::executor().spawn_blocking(move || std::fs::write(dir.join(LOG_START_FILE), start.to_string())).await?;
        self.enforce_retention(now_ms()).await?;
        Ok(start)
    }

    /// Deletes segments past retention or below the log start.
    pub async fn enforce_retention(&self, now_ms: i64) -> std::io::Result<()> {
        let expired = self.log.borrow_mut().take_expired_segments(now_ms);
        for segment in expired {
            segment.remove().await?;
        }
        Ok(())
    }

    /// Flushes and syncs everything; used by the periodic flusher.
    pub async fn flush_all(&self) -> std::io::Result<()> {
        self.flush(true).await
    }

    /// Clean shutdown: flush, sync, and cut the active segment's block
    /// padding so the file ends at its last batch.
    pub async fn close(&self) -> std::io::Result<()> {
        let _write = acquire(&self.write_lock).await?;
        self.write_pending().await?;
        self.sync_written().await?;
        let (file, size) = self.log.borrow().active_file_and_size();
        file.truncate(size).await?;
        file.fdatasync().await?;
        Ok(())
    }
}

async fn acquire(lock: &Semaphore) -> std::io::Result<glommio::sync::Permit<'_>> {
    lock.acquire_permit(1).await.map_err(|e| std::io::Error::other(e.to_string()))
}

/// Reads whole batches from a segment file, starting the search at `position`
/// (a batch boundary at or before `offset`) and never past `readable`.
/// Steps forward over batches before `offset`, and widens the read when the
/// wanted batch is larger than `len`; every pass either advances or widens,
/// and a batch claiming to run past `readable` is reported as corrupt.
async fn read_disk(
    file: &glommio::io::DmaFile,
    mut position: u64,
    mut len: usize,
    readable: u64,
    offset: i64,
    max_bytes: usize,
) -> std::io::Result<Bytes> {
    while position < readable {
        len = len.min((readable - position) as usize);
        let data = read_at(file, position, len).await?;
        let kept = cut_batches(data.clone(), offset, max_bytes);
        if !kept.is_empty() {
            return Ok(kept);
        }
        let skip = skip_to(&data, offset);
        let Some(whole) = super::log::first_batch_bytes(&data[skip..]) else { break };
        let at = position + skip as u64;
        if at + whole as u64 > readable {
            // Every stored batch ends within the segment: this length is damaged.
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("corrupt batch at byte {at}: claims {whole} bytes, segment holds {}", readable - at),
            ));
        }
        if skip == 0 && whole <= data.len() {
            break; // a whole batch is here, yet none ends at or after `offset`
        }
        position = at;
        len = len.max(whole);
    }
    Ok(Bytes::new())
}

/// Offset within `data` of the first batch ending at or after `offset`.
fn skip_to(data: &[u8], offset: i64) -> usize {
    let mut at = 0;
    while let Ok(info) = super::batch::peek(&data[at..]) {
        if info.last_offset() >= offset {
            break;
        }
        at += info.total_bytes;
    }
    at
}

/// Live waiters on `partition`'s data.
#[cfg(test)]
fn data_waiter_count(partition: &Partition) -> usize {
    partition.data_waiters.borrow().len()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_out_fetch_waiters_do_not_pile_up() {
        let dir = std::env::temp_dir().join(format!("spate-waiters-{}", std::process::id()));
        let executor = glommio::LocalExecutorBuilder::default().io_memory(1 << 20).make().unwrap();
        executor.run(async {
            let log = crate::storage::open_log(&dir, crate::storage::LogConfig::default(), 0).await.unwrap();
            let partition = Partition::new(log);
            for _ in 0..1000 {
                partition.wait_for_data(0, Duration::from_micros(1)).await;
            }
            assert!(data_waiter_count(&partition) <= 1, "timed-out waiters are pruned");
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
