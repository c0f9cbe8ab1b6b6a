//! A partition as its owning shard sees it: the log behind a `RefCell`, and
//! the partition's own writer task, which alone touches its files: writes,
//! fdatasyncs, segment rolls, and rolling back after a failed write.
//!
//! Requests append synchronously (copy into the write buffer, assign offsets)
//! and then only *wait* for the writer: a request future dropped at any await
//! (its connection closed, its task cancelled) never cancels storage work, so
//! no other producer's bytes can be lost with it. Borrows of the log never
//! span an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use glommio::io::DmaFile;
use glommio::sync::Semaphore;
use tracing::{error, warn};

use super::batch::BatchError;
use super::log::{cut_batches, AppendInfo, PartitionLog, ReadPlan, LOG_START_FILE};
use super::open_files::SegmentFile;
use super::replica_set::ReplicaSet;
use super::segment::{fdatasync, read_at, Flushed, Segment};
use super::write_budget;
use crate::metrics;

#[derive(Debug)]
pub enum StorageError {
    Batch(BatchError),
    OffsetOutOfRange,
    /// An idempotent producer skipped sequences numbers.
    OutOfOrderSequence,
    /// An idempotent producer's epoch is older than one already seen.
    InvalidProducerEpoch,
    /// This node stopped leading the partition before the wait was over.
    NotLeader,
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

/// What the writer tells a waiter: done, or the failure that undid its batch.
type Outcome = Result<(), Rc<std::io::Error>>;

/// Requests waiting for offsets to be written or synced, oldest offset first
/// (they register right after their append, so the queues stay sorted).
#[derive(Default)]
struct Waiters {
    written: VecDeque<(i64, oneshot::Sender<Outcome>)>,
    synced: VecDeque<(i64, oneshot::Sender<Outcome>)>,
    rolled: Vec<oneshot::Sender<Outcome>>,
    /// acks=all on a replicated partition: waiting for the high watermark
    /// to pass the offset (true), or for leadership to end (false). Kept
    /// sorted by offset like the others.
    replicated: VecDeque<(i64, oneshot::Sender<bool>)>,
}

impl Waiters {
    fn complete(queue: &mut VecDeque<(i64, oneshot::Sender<Outcome>)>, below: i64) {
        while queue.front().is_some_and(|(offset, _)| *offset < below) {
            let (_, waiter) = queue.pop_front().expect("checked non-empty");
            let _ = waiter.send(Ok(()));
        }
    }

    fn fail(queue: &mut VecDeque<(i64, oneshot::Sender<Outcome>)>, from: i64, error: &Rc<std::io::Error>) {
        while queue.back().is_some_and(|(offset, _)| *offset >= from) {
            let (_, waiter) = queue.pop_back().expect("checked non-empty");
            let _ = waiter.send(Err(error.clone()));
        }
    }
}

/// A flush job running in its own task (several may run at once).
struct InFlight {
    /// The log end its writes make written.
    offset: i64,
    /// The block it writes partially; the next job's first write, which
    /// rewrites that block, starts only once this job is done.
    partial_block_at: Option<u64>,
    done: Rc<JobDone>,
}

/// A flush job's result, and the wake-up of the job waiting to rewrite its
/// partial block.
#[derive(Default)]
struct JobDone {
    result: RefCell<Option<std::io::Result<Flushed>>>,
    finished: Signal,
}

/// A wake-up for one waiting task; notifications before the wait are kept.
#[derive(Default)]
struct Signal {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.set.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    async fn wait(&self) {
        futures::future::poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// How the writer task should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Clean shutdown: write, sync, cut the block padding, snapshot producers.
    Close,
    /// The partition is deleted: end as soon as the work in flight is done.
    Discard,
}

/// What a node is to a partition, as appends see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// The only replica: an append is answered once durable here.
    Sole,
    /// The leader of a replicated partition in this epoch: acks=all waits
    /// for the high watermark.
    Replicated { leader_epoch: i32 },
    /// A follower, or a leader not yet set up: appends are refused.
    None,
}

pub struct Partition {
    pub log: RefCell<PartitionLog>,
    waiters: RefCell<Waiters>,
    /// Wakes the write loop: new appends, or a roll wanted.
    write_signal: Signal,
    /// Wakes the sync loop: sync waiters whose offsets are written.
    sync_signal: Signal,
    /// A roll is wanted or under way; appends wait for it.
    rolling: Cell<bool>,
    /// Why the partition refuses appends (a failed fdatasync or device error).
    offline: RefCell<Option<Rc<std::io::Error>>>,
    stop: Cell<Option<Stop>>,
    /// Fetches waiting for data past the high watermark; only live ones are
    /// kept, so the list is bounded by the fetches in flight.
    data_waiters: RefCell<Vec<oneshot::Sender<()>>>,
    /// Flush jobs in flight, oldest first: their results are applied in
    /// this order, at most `LogConfig::max_writes_in_flight` of them.
    in_flight: RefCell<VecDeque<InFlight>>,
    /// Unwritten bytes last reported to the shard's write budget.
    budget_bytes: Cell<u64>,
    /// Serialises log-start checkpoints and segment deletions.
    meta_lock: Semaphore,
    writer_running: Cell<bool>,
    /// Bumped whenever the log cleaner changes which file holds which
    /// offsets: a read that opened a file by name after a bump may have
    /// opened the new file with the old plan's positions, so it plans again.
    layout_version: Cell<u64>,
    /// Seals (index files being written) in flight: the cleaner waits for
    /// them, since a late seal would write an index over a cleaned segment's.
    seals_in_flight: Rc<Cell<usize>>,
    /// Bytes and records in and out, for the metrics.
    pub counters: metrics::PartitionCounters,
    /// Set while this node leads the partition and it has other replicas:
    /// the followers' progress, from which the high watermark moves.
    pub replicas: RefCell<Option<ReplicaSet>>,
    /// When the flush.ms policy last synced this partition (ms since epoch).
    last_policy_flush_ms: Cell<i64>,
}

impl Partition {
    /// Wraps a recovered log and starts its writer task on this shard.
    pub fn start(log: PartitionLog) -> Rc<Partition> {
        let partition = Rc::new(Partition {
            log: RefCell::new(log),
            waiters: RefCell::default(),
            write_signal: Signal::default(),
            sync_signal: Signal::default(),
            rolling: Cell::new(false),
            offline: RefCell::new(None),
            stop: Cell::new(None),
            data_waiters: RefCell::new(Vec::new()),
            in_flight: RefCell::new(VecDeque::new()),
            budget_bytes: Cell::new(0),
            last_policy_flush_ms: Cell::new(now_ms()),
            meta_lock: Semaphore::new(1),
            writer_running: Cell::new(true),
            layout_version: Cell::new(0),
            seals_in_flight: Rc::new(Cell::new(0)),
            counters: metrics::PartitionCounters::default(),
            replicas: RefCell::new(None),
        });
        let writer = partition.clone();
        glommio::spawn_local(async move { writer.run_writer().await }).detach();
        partition
    }

    /// Validates, stores, and waits for `durability`.
    pub async fn produce(
        &self,
        records: Bytes,
        durability: Durability,
        now_ms: i64,
    ) -> Result<AppendInfo, StorageError> {
        let info = self.append(records, now_ms).await?;
        self.wait_durable(info.last_offset, durability).await?;
        Ok(info)
    }

    /// Validates and appends `records`, once no roll is under way and the
    /// unwritten bytes are within bound: the batch has its offsets when this
    /// returns, but is not yet written (see [`Partition::wait_durable`]).
    pub async fn append(&self, records: Bytes, now_ms: i64) -> Result<AppendInfo, StorageError> {
        self.append_checked(records, now_ms, false).await
    }

    /// [`Partition::append`] of a producer's batches: their timestamps are
    /// also checked against the topic's message.timestamp.*.max.ms (what
    /// the broker writes itself, group commits and expiry, is not).
    pub async fn append_produced(&self, records: Bytes, now_ms: i64) -> Result<AppendInfo, StorageError> {
        self.append_checked(records, now_ms, true).await
    }

    async fn append_checked(&self, records: Bytes, now_ms: i64, produced: bool) -> Result<AppendInfo, StorageError> {
        let clock = produced.then_some(now_ms);
        let offsets = self.log.borrow().validate(&records, clock).map_err(StorageError::Batch)?;
        self.wait_for_room(records.len(), offsets, now_ms).await?;
        // Synchronous from the checks above: no roll and no role change can
        // come in between. Who must have the batch before an acks=all answer
        // is decided here, when it gets its offsets, not when it is answered:
        // by then this node may have stopped leading.
        let replicated_in_epoch = match self.leadership() {
            Leadership::Sole => None,
            Leadership::Replicated { leader_epoch } => Some(leader_epoch),
            Leadership::None => return Err(StorageError::NotLeader),
        };
        let mut info = self.log.borrow_mut().append(&records, now_ms)?;
        info.replicated_in_epoch = replicated_in_epoch;
        self.appended(&records, &info);
        Ok(info)
    }

    /// What this node is to the partition now, for an append.
    pub fn leadership(&self) -> Leadership {
        if let Some(set) = self.replicas.borrow().as_ref() {
            return Leadership::Replicated { leader_epoch: set.leader_epoch };
        }
        if self.log.borrow().replica_hw() == i64::MAX {
            Leadership::Sole
        } else {
            Leadership::None
        }
    }

    /// A follower's append of batches fetched from its leader, stored as
    /// they are (offsets, epochs, timestamps). A batch of a leader epoch new
    /// to this log is appended only once the epoch cache naming it is on disk.
    pub async fn append_replica(&self, records: Bytes, now_ms: i64) -> Result<AppendInfo, StorageError> {
        self.check_online()?;
        self.log.borrow().validate_replica(&records).map_err(StorageError::Batch)?;
        let (epochs, changed) = {
            let log = self.log.borrow();
            let mut epochs = log.epochs.clone();
            let mut changed = false;
            let mut at = 0;
            while let Ok(info) = super::batch::peek(&records[at..]) {
                changed |= epochs.assign(info.leader_epoch, info.base_offset);
                at += info.total_bytes;
            }
            (epochs, changed)
        };
        if changed {
            self.write_epochs(&epochs).await?;
        }
        let end = self.log.borrow().end_offset();
        let last = super::batch::last_offset_of(&records).unwrap_or(end - 1);
        self.wait_for_room(records.len(), (last + 1 - end).max(1), now_ms).await?;
        if self.log.borrow().end_offset() != end {
            return Err(StorageError::Io(std::io::Error::other("the log moved under a replica append")));
        }
        let info = self.log.borrow_mut().append_replica(&records, now_ms);
        self.appended(&records, &info);
        Ok(info)
    }

    /// Makes the epoch cache `epochs` durable, then the log's.
    pub async fn write_epochs(&self, epochs: &super::epochs::EpochCache) -> Result<(), StorageError> {
        let path = self.log.borrow().dir.join(super::epochs::EPOCH_FILE);
        let text = epochs.encode();
        let written = run_owned(async move {
            glommio::executor().spawn_blocking(move || crate::fsutil::write_atomic(&path, text.as_bytes())).await
        });
        written.await?;
        self.log.borrow_mut().epochs = epochs.clone();
        Ok(())
    }

    fn appended(&self, records: &Bytes, info: &AppendInfo) {
        self.update_budget();
        self.write_signal.notify();
        metrics::bump(&self.counters.bytes_in, records.len() as u64);
        metrics::bump(&self.counters.records_in, (info.last_offset - info.base_offset + 1) as u64);
    }

    /// Reports this partition's unwritten bytes to the shard's write budget.
    fn update_budget(&self) {
        let unwritten = self.log.borrow().unwritten_bytes();
        write_budget::update(self.budget_bytes.replace(unwritten), unwritten);
    }

    /// Waits until `bytes` taking `offsets` may be appended: no roll under
    /// way or needed, and the shard's write memory within its bound (a
    /// partition holding less than one write buffer may always append, so
    /// that one busy partition cannot stop the others).
    async fn wait_for_room(&self, bytes: usize, offsets: i64, now_ms: i64) -> Result<(), StorageError> {
        loop {
            self.check_online()?;
            if self.rolling.get() || self.log.borrow().needs_roll(bytes, offsets, now_ms) {
                self.roll().await?;
                continue;
            }
            let (unwritten, buffer_bytes, end) = {
                let log = self.log.borrow();
                (log.unwritten_bytes(), log.config.write_buffer_bytes as u64, log.end_offset())
            };
            if unwritten >= buffer_bytes && write_budget::would_exceed(bytes as u64) {
                // Back-pressure: wait for the writer; a failed write is seen by the next pass.
                let _ = self.wait_for(end - 1, false).await;
                continue;
            }
            return Ok(());
        }
    }

    /// Waits until the batch ending at `last_offset` is as durable as asked.
    pub async fn wait_durable(&self, last_offset: i64, durability: Durability) -> Result<(), StorageError> {
        match durability {
            Durability::Buffered => Ok(()),
            Durability::Written => self.wait_for(last_offset, false).await,
            Durability::Synced => self.wait_for(last_offset, true).await,
        }
    }

    /// Waits until an append is durable here and, on a replicated
    /// partition, on every in-sync replica (what the group coordinator waits
    /// for before it answers a commit).
    pub async fn wait_committed(&self, appended: &AppendInfo) -> Result<(), StorageError> {
        self.wait_durable(appended.last_offset, Durability::Synced).await?;
        self.wait_replicated(appended).await
    }

    fn check_online(&self) -> Result<(), StorageError> {
        if self.stop.get().is_some() {
            return Err(StorageError::Io(std::io::Error::other("partition is closing")));
        }
        match &*self.offline.borrow() {
            Some(e) => Err(StorageError::Io(std::io::Error::new(e.kind(), format!("partition offline: {e}")))),
            None => Ok(()),
        }
    }

    /// Returns once `offset` is written (and synced if `sync`), or fails if
    /// the write that held it failed. The writer does the work; dropping this
    /// future only drops the wait.
    pub async fn wait_for(&self, offset: i64, sync: bool) -> Result<(), StorageError> {
        let done = {
            let log = self.log.borrow();
            offset < if sync { log.synced_offset() } else { log.flushed_offset() }
        };
        if done {
            return Ok(());
        }
        self.check_online()?;
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = self.waiters.borrow_mut();
            let queue = if sync { &mut waiters.synced } else { &mut waiters.written };
            debug_assert!(queue.back().is_none_or(|(last, _)| *last <= offset), "waiters stay sorted");
            queue.push_back((offset, tx));
        }
        self.write_signal.notify();
        if sync {
            self.sync_signal.notify(); // acks=1 waits leave the sync loop asleep
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StorageError::Io(std::io::Error::new(e.kind(), e.to_string()))),
            Err(_) => Err(StorageError::Io(std::io::Error::other("partition closed"))),
        }
    }

    /// Asks the writer to roll the active segment and waits until it has.
    async fn roll(&self) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().rolled.push(tx);
        self.rolling.set(true);
        self.write_signal.notify();
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StorageError::Io(std::io::Error::new(e.kind(), e.to_string()))),
            Err(_) => Err(StorageError::Io(std::io::Error::other("partition closed"))),
        }
    }

    /// The writer task: a write loop and a sync loop, so an fdatasync in
    /// flight never holds up writes. Ends when the partition is stopped and
    /// no write is in flight.
    async fn run_writer(self: Rc<Self>) {
        futures::join!(self.write_loop(), self.sync_loop());
        if self.stop.get() == Some(Stop::Close) {
            if let Err(e) = self.finish_close().await {
                error!(dir = %self.log.borrow().dir.display(), "closing partition: {e}");
            }
        }
        for waiter in std::mem::take(&mut self.waiters.borrow_mut().rolled) {
            let _ = waiter.send(Err(Rc::new(std::io::Error::other("partition closed"))));
        }
        self.waiters.replace(Waiters::default());
        write_budget::update(self.budget_bytes.replace(0), 0);
        // Closed, moved or deleted: the shard keeps no handle of its files
        // (a deleted file's space is freed only once no descriptor is open).
        super::open_files::forget_dir(&self.log.borrow().dir);
        self.writer_running.set(false);
    }

    /// Starts flush jobs as batches are appended (several in flight) and
    /// applies their results in order; rolls segments when asked.
    async fn write_loop(self: &Rc<Self>) {
        loop {
            if self.rolling.get() {
                let result = self.roll_segment().await;
                self.finish_roll(result);
                continue;
            }
            let reaped = self.reap_writes().await;
            let started = self.start_writes();
            if reaped || started {
                continue;
            }
            if self.stop.get().is_some() && self.in_flight.borrow().is_empty() {
                self.sync_signal.notify(); // let the sync loop see the stop
                return;
            }
            self.write_signal.wait().await;
        }
    }

    /// Starts what may be started; offline, drops what was appended since
    /// the failure once nothing is in flight.
    fn start_writes(self: &Rc<Self>) -> bool {
        if self.offline.borrow().is_some() {
            if self.in_flight.borrow().is_empty() {
                self.drop_unwritten_while_offline();
                self.update_budget();
            }
            return false;
        }
        self.dispatch_writes()
    }

    /// Starts flush jobs for what is appended, each in a task of its own, up
    /// to the partition's bound of writes in flight; true if it started any.
    fn dispatch_writes(self: &Rc<Self>) -> bool {
        let mut started = false;
        loop {
            let limit = self.log.borrow().config.max_writes_in_flight;
            if self.in_flight.borrow().len() >= limit || self.log.borrow().undispatched_bytes() == 0 {
                return started;
            }
            let previous = self.in_flight.borrow().back().map(|w| (w.partial_block_at, w.done.clone()));
            // Only a partial block to write, and the job before is writing
            // it: wait for that job, so that one write then carries all
            // that was appended meanwhile instead of one write per batch.
            if previous.as_ref().is_some_and(|(partial, _)| partial.is_some()) && !self.log.borrow().has_full_buffers()
            {
                return started;
            }
            let (job, offset) = self.log.borrow_mut().begin_flush();
            let Some(job) = job else { return started };
            let after = previous.filter(|(partial, _)| *partial == Some(job.first_write_at())).map(|(_, done)| done);
            let done = Rc::new(JobDone::default());
            let partial_block_at = job.partial_block_at();
            self.in_flight.borrow_mut().push_back(InFlight { offset, partial_block_at, done: done.clone() });
            let partition = self.clone();
            // Owned by the partition (detached): never cancelled, and always
            // awaited (reaped) before a roll-back, a roll or the writer's end.
            glommio::spawn_local(async move {
                let first_write_after = async {
                    if let Some(before) = after {
                        before.finished.wait().await;
                    }
                };
                let result = job.run(first_write_after).await;
                done.result.replace(Some(result));
                done.finished.notify();
                partition.write_signal.notify();
            })
            .detach();
            started = true;
        }
    }

    /// Applies finished flush jobs in the order they were started; true if
    /// any was. After a failed one, waits for every job still in flight and
    /// rolls the log back to the last batch written before the failure.
    async fn reap_writes(&self) -> bool {
        let mut reaped = false;
        loop {
            let result = match self.in_flight.borrow().front() {
                Some(job) => job.done.result.borrow_mut().take(),
                None => None,
            };
            let Some(result) = result else { return reaped };
            let job = self.in_flight.borrow_mut().pop_front().expect("checked non-empty");
            reaped = true;
            match result {
                Ok(flushed) => {
                    self.log.borrow_mut().finish_flush(flushed, job.offset);
                    self.update_budget();
                    self.written_up_to(job.offset);
                }
                Err(e) => {
                    self.drain_in_flight().await;
                    self.write_failed(e).await;
                    self.update_budget();
                }
            }
        }
    }

    /// Waits until every flush job in flight has finished, and forgets them:
    /// a write before theirs failed, so what they wrote is cut off.
    async fn drain_in_flight(&self) {
        while self.in_flight.borrow().iter().any(|job| job.done.result.borrow().is_none()) {
            self.write_signal.wait().await;
        }
        self.in_flight.borrow_mut().clear();
    }

    /// Offsets below `offset` are on disk: answer their waiters, wake fetches.
    fn written_up_to(&self, offset: i64) {
        let sync_wanted = {
            let mut waiters = self.waiters.borrow_mut();
            Waiters::complete(&mut waiters.written, offset);
            !waiters.synced.is_empty()
        };
        self.wake_readers();
        self.update_high_watermark();
        if sync_wanted {
            self.sync_signal.notify();
        }
    }

    fn wake_readers(&self) {
        for waiter in self.data_waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Leader of a replicated partition: moves the high watermark to the
    /// lowest log end in the ISR (never back, never past what is written
    /// here), answers acks=all waiters below it and wakes consumers.
    pub fn update_high_watermark(&self) {
        let candidate = {
            let replicas = self.replicas.borrow();
            let Some(set) = replicas.as_ref() else { return };
            set.high_watermark(self.log.borrow().flushed_offset())
        };
        let moved = {
            let mut log = self.log.borrow_mut();
            let moved = candidate > log.replica_hw();
            if moved {
                log.set_replica_hw(candidate);
            }
            moved
        };
        if moved {
            self.complete_replicated(candidate);
            self.wake_readers();
        }
    }

    /// A follower: the leader's high watermark, within what is written here.
    pub fn follow_high_watermark(&self, leader_hw: i64) {
        let moved = {
            let mut log = self.log.borrow_mut();
            let hw = leader_hw.min(log.flushed_offset());
            let moved = hw != log.replica_hw();
            log.set_replica_hw(hw);
            moved
        };
        if moved {
            self.wake_readers();
        }
    }

    fn complete_replicated(&self, below: i64) {
        let mut waiters = self.waiters.borrow_mut();
        while waiters.replicated.front().is_some_and(|(offset, _)| *offset < below) {
            let (_, waiter) = waiters.replicated.pop_front().expect("checked non-empty");
            let _ = waiter.send(true);
        }
    }

    /// Leadership ended (or the partition lost its other replicas): every
    /// acks=all waiter is told, and the high watermark is the follower's.
    pub fn stop_leading(&self) {
        self.replicas.replace(None);
        for (_, waiter) in std::mem::take(&mut self.waiters.borrow_mut().replicated) {
            let _ = waiter.send(false);
        }
    }

    /// acks=all: waits until the high watermark of the leader epoch that
    /// took the append passes it (at once for a partition this node alone
    /// holds). NotLeader if that epoch's leadership ends first: the batch
    /// may then be missing from the new leader, and must not be answered.
    pub async fn wait_replicated(&self, appended: &AppendInfo) -> Result<(), StorageError> {
        let Some(epoch) = appended.replicated_in_epoch else { return Ok(()) };
        let offset = appended.last_offset;
        if self.replicas.borrow().as_ref().is_none_or(|set| set.leader_epoch != epoch) {
            return Err(StorageError::NotLeader);
        }
        if offset < self.log.borrow().high_watermark() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = self.waiters.borrow_mut();
            // Waiters arrive in offset order, except a retry answered as a duplicate.
            let at = waiters.replicated.partition_point(|(o, _)| *o <= offset);
            waiters.replicated.insert(at, (offset, tx));
        }
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(StorageError::NotLeader),
        }
    }

    /// A write failed: undo every unwritten append (none was acknowledged as
    /// written or visible), fail their waiters, and cut whatever the failed
    /// writes left past the log's end, so a crash cannot revive them. Errors
    /// that say the device itself failed take the partition offline.
    async fn write_failed(&self, e: std::io::Error) {
        let dir = self.log.borrow().dir.clone();
        let end = self.log.borrow_mut().roll_back_unwritten();
        error!(dir = %dir.display(), rolled_back_to = end, "write failed: {e}; unwritten batches refused");
        let error = Rc::new(e);
        {
            let mut waiters = self.waiters.borrow_mut();
            Waiters::fail(&mut waiters.written, end, &error);
            Waiters::fail(&mut waiters.synced, end, &error);
        }
        let (file, size) = self.log.borrow().active_file_and_size();
        if let Err(cut) = file.truncate(size).await {
            let cut = super::segment::os_error(cut);
            self.go_offline(std::io::Error::new(cut.kind(), format!("cannot cut a failed write: {cut}")));
        } else if is_device_failure(&error) {
            self.go_offline(std::io::Error::new(error.kind(), error.to_string()));
        }
    }

    fn go_offline(&self, e: std::io::Error) {
        error!(dir = %self.log.borrow().dir.display(), "partition offline: {e}");
        let error = Rc::new(e);
        self.offline.replace(Some(error.clone()));
        {
            let mut waiters = self.waiters.borrow_mut();
            Waiters::fail(&mut waiters.written, i64::MIN, &error);
            Waiters::fail(&mut waiters.synced, i64::MIN, &error);
        }
        // Appends may have landed while the failure was handled: the write
        // loop (the only one that may touch the buffers) drops them.
        self.write_signal.notify();
    }

    /// Offline: batches appended but never written are dropped (their
    /// producers were answered with the failure, or were acks=0), so the log
    /// ends at the high watermark again. Runs only in the write loop.
    fn drop_unwritten_while_offline(&self) {
        let unwritten = {
            let log = self.log.borrow();
            log.end_offset() > log.flushed_offset()
        };
        if unwritten {
            let end = self.log.borrow_mut().roll_back_unwritten();
            warn!(dir = %self.log.borrow().dir.display(), end, "offline: dropped batches appended after the failure");
        }
    }

    /// Seals the active segment and starts the next one. Appends wait
    /// (`rolling`) from the request to the swap, which is one synchronous
    /// step: no append can land in a segment being sealed. A failure leaves
    /// the old segment active.
    async fn roll_segment(self: &Rc<Self>) -> std::io::Result<()> {
        self.write_all_appended().await?;
        let (dir, end, buffer_bytes, step) = {
            let log = self.log.borrow();
            (log.dir.clone(), log.end_offset(), log.config.write_buffer_bytes, log.config.preallocate_step_bytes)
        };
        if self.log.borrow().active_is_empty() {
            return Ok(()); // nothing to seal: a size or age roll already happened
        }
        let next = Segment::create(&dir, end, buffer_bytes, step).await?;
        self.write_all_appended().await?;
        if self.log.borrow().end_offset() != end {
            return Err(std::io::Error::other("log moved during a roll")); // rolled back meanwhile
        }
        let (seal, snapshot) = {
            let mut log = self.log.borrow_mut();
            let snapshot = log.producer_snapshot();
            (log.swap_active(next), snapshot)
        };
        tracing::debug!(dir = %dir.display(), base_offset = end, "rolled to a new segment");
        // Sealing touches only the old file (and small files beside it): it
        // runs beside the writes to the new segment, owned by its own task.
        let seals = self.seals_in_flight.clone();
        seals.set(seals.get() + 1);
        glommio::spawn_local(async move {
            if let Err(e) = seal.run().await {
                warn!(dir = %dir.display(), "sealing segment: {e}; recovery will rebuild its index");
            }
            seals.set(seals.get() - 1);
            write_producer_snapshot(dir, end, snapshot).await;
        })
        .detach();
        Ok(())
    }

    /// Writes until everything appended is on disk (appends are held off).
    async fn write_all_appended(self: &Rc<Self>) -> std::io::Result<()> {
        loop {
            if let Some(e) = &*self.offline.borrow() {
                return Err(std::io::Error::new(e.kind(), e.to_string()));
            }
            let reaped = self.reap_writes().await;
            if self.offline.borrow().is_some() {
                continue; // a device failure while reaping: refused above
            }
            let written = {
                let log = self.log.borrow();
                log.flushed_offset() == log.end_offset()
            };
            if written && self.in_flight.borrow().is_empty() {
                return Ok(());
            }
            if !self.dispatch_writes() && !reaped {
                if self.in_flight.borrow().is_empty() {
                    // Unwritten offsets yet nothing to write: a broken invariant, never a spin.
                    return Err(std::io::Error::other("log end ahead of its pending bytes"));
                }
                self.write_signal.wait().await;
            }
        }
    }

    fn finish_roll(&self, result: std::io::Result<()>) {
        if let Err(e) = &result {
            error!(dir = %self.log.borrow().dir.display(), "segment roll failed: {e}; the old segment stays active");
        }
        let outcome: Outcome = result.map_err(Rc::new);
        self.rolling.set(false);
        for waiter in std::mem::take(&mut self.waiters.borrow_mut().rolled) {
            let _ = waiter.send(outcome.clone());
        }
    }

    async fn sync_loop(&self) {
        loop {
            if self.sync_wanted() {
                self.sync_round().await;
            } else if self.stop.get().is_some()
                && (self.offline.borrow().is_some()
                    || self.log.borrow().flushed_offset() == self.log.borrow().end_offset())
            {
                return;
            } else {
                self.sync_signal.wait().await;
            }
        }
    }

    /// Whether a sync would answer someone: the oldest sync waiter's offset is written.
    fn sync_wanted(&self) -> bool {
        if self.offline.borrow().is_some() {
            return false;
        }
        let written = self.log.borrow().flushed_offset();
        self.waiters.borrow().synced.front().is_some_and(|(offset, _)| *offset < written)
    }

    /// fdatasyncs every file holding written, unsynced data; concurrent
    /// waiters share it (group commit).
    async fn sync_round(&self) {
        let (target, files) = self.log.borrow().begin_sync();
        let sealed = files.len() - 1;
        let results = futures::future::join_all(files.iter().map(|(file, path)| fdatasync(file, path))).await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            let device_failed = is_device_failure(&e);
            error!(dir = %self.log.borrow().dir.display(), "fdatasync failed: {e}");
            let error = Rc::new(e);
            Waiters::fail(&mut self.waiters.borrow_mut().synced, i64::MIN, &error);
            if device_failed {
                self.go_offline(std::io::Error::new(error.kind(), error.to_string()));
            }
            return;
        }
        self.log.borrow_mut().finish_sync(target, sealed);
        Waiters::complete(&mut self.waiters.borrow_mut().synced, target);
    }

    /// Clean shutdown, after the loops drained: cut the active segment's
    /// block padding so the file ends at its last batch, sync, and snapshot
    /// the producers' state.
    async fn finish_close(&self) -> std::io::Result<()> {
        if self.offline.borrow().is_some() {
            return Ok(());
        }
        let (file, size) = self.log.borrow().active_file_and_size();
        let (dir, end, snapshot, path) = {
            let log = self.log.borrow();
            let path = super::segment::log_path(&log.dir, log.active_base_offset());
            (log.dir.clone(), log.end_offset(), log.producer_snapshot(), path)
        };
        file.truncate(size).await?;
        fdatasync(&file, &path).await?;
        write_producer_snapshot(dir, end, snapshot).await;
        Ok(())
    }

    /// Reads from `offset`: up to `max_bytes`, at least one whole batch, of
    /// what consumers may see (`replica`: of everything written, for a
    /// follower's fetch). Returns the parts to send, in order.
    pub async fn read(&self, offset: i64, max_bytes: usize, replica: bool) -> Result<Vec<Bytes>, StorageError> {
        let parts = self.read_parts(offset, max_bytes, replica).await?;
        self.counters.count_out(&parts);
        Ok(parts)
    }

    /// The end of what a reader may see: the high watermark, or for a
    /// follower replica everything written.
    pub fn visible_end(&self, replica: bool) -> i64 {
        let log = self.log.borrow();
        if replica {
            log.flushed_offset()
        } else {
            log.high_watermark()
        }
    }

    async fn read_parts(&self, offset: i64, max_bytes: usize, replica: bool) -> Result<Vec<Bytes>, StorageError> {
        let mut from = offset;
        let mut replans = 0;
        // Each pass either replans (bounded by REPLANS_MAX) or moves `from`
        // past a whole sealed segment (bounded by the segment count).
        loop {
            let layout = self.layout_version.get();
            let plan = self.log.borrow().plan_read(from, max_bytes, self.visible_end(replica));
            let (file, position, len, readable, sealed_end, visible_end) = match plan {
                ReadPlan::OutOfRange => return Err(StorageError::OffsetOutOfRange),
                ReadPlan::Cached(parts) => {
                    if !parts.is_empty() {
                        metrics::with(|m| metrics::bump(&m.cache_hits, 1));
                    }
                    return Ok(parts);
                }
                ReadPlan::Disk { file, position, len, readable, sealed_end, visible_end, .. } => {
                    metrics::with(|m| metrics::bump(&m.cache_misses, 1));
                    (file, position, len, readable, sealed_end, visible_end)
                }
            };
            let opened = self.open_planned(&file).await?.filter(|_| self.layout_version.get() == layout);
            let Some(file) = opened else {
                replans += 1;
                if replans == REPLANS_MAX {
                    return Err(StorageError::Io(std::io::Error::other("segments kept vanishing under a read")));
                }
                continue;
            };
            let kept = read_disk(&file, position, len, readable, from, max_bytes).await?;
            // Written but not yet replicated batches stay invisible to consumers.
            let kept = if visible_end < self.log.borrow().flushed_offset() {
                super::log::cut_below(kept, visible_end)
            } else {
                kept
            };
            if !kept.is_empty() {
                return Ok(vec![kept]);
            }
            // Compaction removed every record of this sealed segment from
            // `from` on: the next record is in a later segment.
            match sealed_end {
                Some(end) if end > from => from = end,
                _ => return Ok(Vec::new()),
            }
        }
    }

    /// Opens a planned segment file; None if it was removed since the plan
    /// (retention, DeleteRecords): plan again, the log has moved on. A
    /// stopped (deleted) partition's files are gone for good: an error.
    async fn open_planned(&self, file: &SegmentFile) -> std::io::Result<Option<Rc<DmaFile>>> {
        match file.open().await {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.stop.get().is_none() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits until what a reader may see (see [`Partition::visible_end`])
    /// grows past `end_offset`, or `timeout` passes.
    pub async fn wait_for_data(&self, end_offset: i64, timeout: Duration, replica: bool) {
        if self.visible_end(replica) > end_offset {
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

    /// The first record at or past the log start whose timestamp is at least
    /// `timestamp`: (its timestamp, its offset), as Kafka answers ListOffsets.
    /// The time index finds the batch; only that batch is decompressed.
    pub async fn offset_for_time(&self, timestamp: i64) -> std::io::Result<Option<(i64, i64)>> {
        let mut plan = None;
        for _ in 0..REPLANS_MAX {
            let layout = self.layout_version.get();
            let Some((file, position, readable)) = self.log.borrow().plan_time_lookup(timestamp) else { break };
            if let Some(file) = self.open_planned(&file).await?.filter(|_| self.layout_version.get() == layout) {
                plan = Some((file, position, readable));
                break;
            }
        }
        let min_offset = self.log.borrow().log_start_offset();
        if let Some((file, position, readable)) = plan {
            if let Some(found) = scan_for_time(&file, position, readable, timestamp, min_offset).await? {
                return Ok(Some(found));
            }
        }
        let log = self.log.borrow();
        let found =
            log.cached_batches_reaching(timestamp, min_offset).find_map(|b| record_for_time(&b, timestamp, min_offset));
        Ok(found)
    }

    /// DeleteRecords: moves the log start to `offset`, durably before
    /// answering (a crash never moves it back), then deletes whole segments
    /// below it. Runs in a task of its own: the request only waits.
    pub async fn delete_records(self: &Rc<Self>, offset: i64) -> Result<i64, StorageError> {
        let partition = self.clone();
        run_owned(async move { partition.delete_records_owned(offset).await }).await
    }

    async fn delete_records_owned(&self, offset: i64) -> Result<i64, StorageError> {
        let _meta = acquire(&self.meta_lock).await?;
        let (start, dir) = {
            let log = self.log.borrow();
            if offset > log.high_watermark() || offset < 0 {
                return Err(StorageError::OffsetOutOfRange);
            }
            (offset.max(log.log_start_offset()), log.dir.clone())
        };
        glommio::executor()
            .spawn_blocking(move || {
                crate::fsutil::write_atomic(&dir.join(LOG_START_FILE), start.to_string().as_bytes())
            })
            .await?;
        let start = self.log.borrow_mut().advance_start(start);
        self.remove_expired(now_ms()).await?;
        Ok(start)
    }

    /// Deletes segments past retention or below the log start.
    pub async fn enforce_retention(self: &Rc<Self>, now_ms: i64) -> std::io::Result<()> {
        let partition = self.clone();
        run_owned(async move {
            let _meta = acquire(&partition.meta_lock).await?;
            partition.remove_expired(now_ms).await
        })
        .await
    }

    /// The caller holds the meta lock.
    async fn remove_expired(&self, now_ms: i64) -> std::io::Result<()> {
        let expired = self.log.borrow_mut().take_expired_segments(now_ms);
        for segment in expired {
            segment.remove().await?;
        }
        Ok(())
    }

    /// Runs `work` holding the meta lock (no retention, DeleteRecords or
    /// other clean moves files meanwhile), in a task of its own: dropping the
    /// wait leaves it running to completion.
    pub(super) async fn run_locked<T: 'static, F>(
        self: &Rc<Self>,
        work: impl FnOnce(Rc<Partition>) -> F + 'static,
    ) -> std::io::Result<T>
    where
        F: Future<Output = std::io::Result<T>> + 'static,
    {
        let partition = self.clone();
        run_owned(async move {
            let _meta = acquire(&partition.meta_lock).await?;
            work(partition.clone()).await
        })
        .await
    }

    /// Whether the cleaner may start on this partition: every seal done,
    /// online, not stopping.
    pub(super) fn may_clean(&self) -> bool {
        self.seals_in_flight.get() == 0 && self.offline.borrow().is_none() && self.stop.get().is_none()
    }

    /// Which file holds which offsets changed: reads in flight plan again.
    pub(super) fn bump_layout(&self) {
        self.layout_version.set(self.layout_version.get() + 1);
    }

    /// Whether the flush.ms policy wants unsynced data synced now; if so,
    /// the policy's clock restarts (the caller syncs).
    pub fn policy_flush_due(&self, now_ms: i64) -> bool {
        let log = self.log.borrow();
        let dirty = log.synced_offset() < log.end_offset() && !self.is_stopping();
        let due = now_ms.saturating_sub(self.last_policy_flush_ms.get()) >= log.config.flush_ms;
        if dirty && due {
            self.last_policy_flush_ms.set(now_ms);
        }
        dirty && due
    }

    /// Whether flush.messages records are unsynced (an append then waits
    /// for the sync, as Kafka's append flushes).
    pub fn flush_messages_reached(&self) -> bool {
        let log = self.log.borrow();
        log.end_offset() - log.synced_offset() >= log.config.flush_messages
    }

    /// Writes and syncs everything appended so far.
    pub async fn flush_all(&self) -> Result<(), StorageError> {
        let end = self.log.borrow().end_offset();
        if end > 0 {
            self.wait_for(end - 1, true).await?;
        }
        Ok(())
    }

    /// Clean shutdown: the writer writes and syncs everything, cuts the
    /// block padding, snapshots producer state, and ends.
    pub async fn close(&self) -> Result<(), StorageError> {
        let flushed = self.flush_all().await;
        self.stop(Stop::Close);
        self.stopped().await;
        flushed
    }

    /// A device error took it offline until restart.
    pub fn is_offline(&self) -> bool {
        self.offline.borrow().is_some()
    }

    /// Closing or deleted: it takes no more appends.
    pub fn is_stopping(&self) -> bool {
        self.stop.get().is_some()
    }

    /// The partition is being deleted: its writer ends once work in flight is done.
    pub fn discard(&self) {
        self.stop(Stop::Discard);
    }

    fn stop(&self, how: Stop) {
        if self.stop.get().is_none() {
            self.stop.set(Some(how));
        }
        self.write_signal.notify();
        self.sync_signal.notify();
    }

    /// Waits until the writer task has ended (after `close` or `discard`).
    pub async fn stopped(&self) {
        while self.writer_running.get() {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Reads plan again when a planned segment was removed meanwhile; more than
/// this many removals under one read is an error.
const REPLANS_MAX: usize = 4;

/// Bound on a batch decompressed for a timestamp lookup: the cleaner's
/// default. A batch inflating past it is answered at batch precision.
const TIME_LOOKUP_MAX_DECOMPRESSED_BYTES: usize = 64 << 20;

/// Scans the batches of a segment file from `position` (a batch boundary)
/// to `readable` for the first record reaching `timestamp`.
async fn scan_for_time(
    file: &DmaFile,
    mut position: u64,
    readable: u64,
    timestamp: i64,
    min_offset: i64,
) -> std::io::Result<Option<(i64, i64)>> {
    const CHUNK_BYTES: usize = 1 << 20;
    let mut want = CHUNK_BYTES;
    while position < readable {
        let chunk = read_at(file, position, (readable - position).min(want as u64) as usize).await?;
        let mut at = 0;
        while let Ok(info) = super::batch::peek(&chunk[at..]) {
            let whole = &chunk[at..at + info.total_bytes];
            if info.max_timestamp >= timestamp && info.last_offset() >= min_offset {
                if let Some(found) = record_for_time(whole, timestamp, min_offset) {
                    return Ok(Some(found));
                }
            }
            at += info.total_bytes;
        }
        if at == 0 {
            // A batch larger than the chunk: read it whole, once.
            match super::log::first_batch_bytes(&chunk) {
                Some(bytes) if bytes > want && (bytes as u64) <= readable - position => want = bytes,
                _ => break,
            }
            continue;
        }
        want = CHUNK_BYTES;
        position += at as u64;
    }
    Ok(None)
}

/// The first record of the batch `whole` reaching `timestamp` at or past
/// `min_offset`. A batch that cannot be decompressed (past the bound, or an
/// unknown codec) is answered as a whole: its max timestamp and first offset.
fn record_for_time(whole: &[u8], timestamp: i64, min_offset: i64) -> Option<(i64, i64)> {
    match super::records::first_at_or_after(whole, timestamp, min_offset, TIME_LOOKUP_MAX_DECOMPRESSED_BYTES) {
        Ok(found) => found,
        Err(e) => {
            warn!(?e, "timestamp lookup: batch not readable record by record, answering its first offset");
            let info = super::batch::peek(whole).ok()?;
            (info.max_timestamp >= timestamp).then_some((info.max_timestamp, info.base_offset.max(min_offset)))
        }
    }
}

/// Runs `work` in a task of its own and waits for it: dropping the wait
/// leaves the work running to completion.
async fn run_owned<T: 'static>(work: impl Future<Output = T> + 'static) -> T {
    glommio::spawn_local(work).detach().await.expect("an owned storage task is never cancelled")
}

/// Errors that say the device failed (EIO and the like), not that it is
/// full or that we ran out of something: the partition then goes offline, as
/// Kafka takes a failed log directory offline. The rest refuse the batches
/// they hit and leave the partition appending. Storage keeps the errno of
/// glommio's errors (`segment::os_error`), so it is read here directly.
fn is_device_failure(e: &std::io::Error) -> bool {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN) => false,
        Some(_) => true,
        None => false, // ours, e.g. a short write: refuse the batches, keep going
    }
}

/// Writes the producer-state snapshot as of `offset` and removes older ones;
/// a failure only costs start-up time (recovery scans further back).
async fn write_producer_snapshot(dir: std::path::PathBuf, offset: i64, snapshot: Vec<u8>) {
    let result = glommio::executor()
        .spawn_blocking(move || -> std::io::Result<()> {
            crate::fsutil::write_atomic(&super::producers::snapshot_path(&dir, offset), &snapshot)?;
            for old in super::producers::list_snapshots(&dir)?.into_iter().filter(|&o| o < offset) {
                let _ = std::fs::remove_file(super::producers::snapshot_path(&dir, old));
            }
            Ok(())
        })
        .await;
    if let Err(e) = result {
        warn!("writing producer snapshot at offset {offset}: {e}");
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
            let partition = Partition::start(log);
            for _ in 0..1000 {
                partition.wait_for_data(0, Duration::from_micros(1), false).await;
            }
            assert!(data_waiter_count(&partition) <= 1, "timed-out waiters are pruned");
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
