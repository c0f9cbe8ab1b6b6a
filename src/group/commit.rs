//! Appending to an offsets partition: OffsetCommit's fast path, and the
//! per-partition queue every append of the coordinator goes through.
//!
//! An append takes its place in the log when it joins its partition's queue,
//! synchronously: the queue is appended in order, so its order is the log's.
//! That is when an OffsetCommit has taken effect (the connection's next
//! request may go). One flusher task per partition then takes what queued up
//! meanwhile — the commits that arrived together, from one pipelining
//! connection or many — and appends it as ONE record batch (group commit);
//! a settle task per batch waits for its fdatasync, applies the commits to
//! memory and answers them. Both tasks belong to the coordinator, not to a
//! request: a client that disconnects cancels nothing once its commit is
//! queued (the cancellation rule), and a commit needs no task of its own.
//!
//! Checkpoints and expiry append directly under the partition's append lock,
//! which the flusher takes for each batch too; queued commits count as
//! pending (`pending_commits`) from the moment they queue, and as unapplied
//! (`unapplied`) from their append until memory has them.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::error::ResponseError;

use super::records::{self, BatchWriter, OffsetValue};
use super::state::Group;
use super::{offsets_partition_log, store_error, Applying, Coordinator, GroupReply, GroupResult};
use crate::broker::{Broker, PartitionError};
use crate::storage::log::AppendInfo;
use crate::storage::{self, Partition};

/// Largest batch the flusher appends, in bytes (under the log's message
/// limit too): ~600 commits of a short group and topic name. An append
/// larger than this alone goes alone.
const MAX_BATCH_BYTES: usize = 64 << 10;
/// Emptied batch vectors kept for reuse per shard: a batch of many commits
/// needs a large one, and allocating that each time is slow.
const MAX_SPARE_BATCHES: usize = 8;

/// One OffsetCommit, as its coordinator takes it.
pub struct CommitArgs {
    pub group_id: String,
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    /// (topic, partition, value), in request order.
    pub offsets: Vec<(String, i32, OffsetValue)>,
    /// Dropped once the commit has its place in the log (or failed).
    pub appended: oneshot::Sender<()>,
}

/// Appends waiting for their place in one offsets partition, in arrival order.
/// Bounded by the requests in flight: each entry is one request's.
#[derive(Default)]
pub(super) struct AppendQueue {
    entries: VecDeque<Queued>,
    /// A flusher task runs for this partition (it clears this when it finds
    /// the queue empty, in the same synchronous step).
    flushing: bool,
}

/// An append of records, once durable: the first record's offset or why
/// not, and the count of appends whose records are not yet in memory.
pub(super) type Appended = (Result<i64, PartitionError>, Applying);

/// An append waiting in its partition's queue.
pub(super) enum Queued {
    Commit(QueuedCommit),
    /// Records whose caller waits on `done` and applies them itself.
    Records {
        records: Vec<(Bytes, Option<Bytes>)>,
        done: oneshot::Sender<Appended>,
    },
}

/// An OffsetCommit, applied and answered by the settle task.
pub(super) struct QueuedCommit {
    group: String,
    /// (topic, partition, value), in request order; those whose code is 0
    /// are accepted: stored, in this order.
    offsets: Vec<(String, i32, OffsetValue)>,
    /// The answer, one code per requested partition.
    codes: Vec<i16>,
    /// How many codes are 0.
    accepted: usize,
    reply: oneshot::Sender<GroupResult>,
}

impl QueuedCommit {
    fn accepted(&self) -> impl Iterator<Item = &(String, i32, OffsetValue)> {
        self.offsets.iter().zip(&self.codes).filter(|(_, code)| **code == 0).map(|(offset, _)| offset)
    }
}

impl Queued {
    fn records(&self) -> usize {
        match self {
            Queued::Commit(c) => c.accepted,
            Queued::Records { records, .. } => records.len(),
        }
    }

    /// At most how many bytes its records take in a batch.
    fn bytes(&self) -> usize {
        match self {
            Queued::Commit(c) => {
                c.accepted().map(|(topic, _, value)| records::offset_record_bytes(&c.group, topic, value)).sum()
            }
            Queued::Records { records, .. } => {
                records.iter().map(|(k, v)| records::record_bytes(k.len(), v.as_ref().map(Bytes::len))).sum()
            }
        }
    }

    fn write(&self, batch: &mut BatchWriter) {
        match self {
            Queued::Commit(c) => {
                for (topic, partition, value) in c.accepted() {
                    batch.push_offset(&c.group, topic, *partition, value);
                }
            }
            Queued::Records { records, .. } => {
                for (key, value) in records {
                    batch.push(key, value.as_deref());
                }
            }
        }
    }
}

impl Coordinator {
    /// Takes an OffsetCommit for a group of offsets partition `partition`
    /// (owned here), synchronously: checks it, queues what is accepted and
    /// fires `args.appended`. `reply` gets the per-partition codes once the
    /// commit is durable (at once if nothing was accepted).
    pub fn commit(&self, broker: &Rc<Broker>, partition: i32, args: CommitArgs, reply: oneshot::Sender<GroupResult>) {
        let CommitArgs { group_id, generation, member_id, instance_id, offsets, appended } = args;
        if let Err(code) = self.admit(partition, &group_id) {
            let _ = reply.send(Err(code));
            return;
        }
        let member = (generation, member_id.as_str(), instance_id.as_deref());
        let (codes, accepted) = self.accept_commit(broker, &group_id, member, &offsets);
        if accepted > 0 {
            let commit = QueuedCommit { group: group_id, offsets, codes, accepted, reply };
            self.enqueue(broker, partition, Queued::Commit(commit));
        } else {
            self.forget_if_unused(&group_id);
            let _ = reply.send(Ok(GroupReply::Codes(0, codes)));
        }
        drop(appended); // queued: it has its place in the log
    }

    /// Checks a commit against its group and each partition against the
    /// metadata, and counts the accepted ones as pending. Returns a code per
    /// partition (0: accepted) and how many are accepted.
    fn accept_commit(
        &self,
        broker: &Broker,
        id: &str,
        member: (i32, &str, Option<&str>),
        offsets: &[(String, i32, OffsetValue)],
    ) -> (Vec<i16>, usize) {
        let (generation, member_id, instance_id) = member;
        let mut groups = self.groups.borrow_mut();
        let checked = match groups.get_mut(id) {
            Some(g) => g.check_commit(generation, member_id, instance_id, Instant::now()),
            None if generation < 0 => {
                groups.insert(id.to_string(), Group::new(id.to_string(), storage::now_ms()));
                Ok(())
            }
            None => Err(ResponseError::IllegalGeneration),
        };
        if let Err(e) = checked {
            return (vec![e.code(); offsets.len()], 0);
        }
        let meta = broker.meta();
        let max_metadata = broker.config.offset_metadata_max_bytes;
        let codes: Vec<i16> = offsets
            .iter()
            .map(|(topic, p, value)| {
                if !meta.topic(topic).is_some_and(|t| (0..t.partitions).contains(p)) {
                    ResponseError::UnknownTopicOrPartition.code()
                } else if value.metadata.len() > max_metadata {
                    ResponseError::OffsetMetadataTooLarge.code()
                } else {
                    0
                }
            })
            .collect();
        let g = groups.get_mut(id).expect("checked or created above");
        let mut accepted = 0;
        for ((topic, p, _), _) in offsets.iter().zip(&codes).filter(|(_, code)| **code == 0) {
            *g.pending_commits.entry((topic.clone(), *p)).or_default() += 1;
            accepted += 1;
        }
        (codes, accepted)
    }

    /// Appends records to offsets partition `partition` (after everything
    /// queued before them) and waits until they are durable.
    pub(super) async fn append(
        &self,
        broker: &Rc<Broker>,
        partition: i32,
        records: Vec<(Bytes, Option<Bytes>)>,
    ) -> Appended {
        let (done, appended) = oneshot::channel();
        self.enqueue(broker, partition, Queued::Records { records, done });
        appended.await.unwrap_or((Err(PartitionError::NotAvailable), Applying(None)))
    }

    /// Queues an append: its place in the log is now fixed.
    fn enqueue(&self, broker: &Rc<Broker>, partition: i32, entry: Queued) {
        assert!(entry.records() > 0, "an append holds records: a batch is never empty");
        let start_flusher = {
            let mut queues = self.queues.borrow_mut();
            let queue = queues.entry(partition).or_default();
            queue.entries.push_back(entry);
            !std::mem::replace(&mut queue.flushing, true)
        };
        if start_flusher {
            let me = self.me.upgrade().expect("the coordinator outlives its calls");
            glommio::spawn_local(me.flush(broker.clone(), partition)).detach();
        }
    }

    /// The flusher of `partition`: appends what is queued, a batch at a
    /// time, until the queue is empty. It owns every step that touches
    /// storage, so no request can cancel one.
    async fn flush(self: Rc<Self>, broker: Rc<Broker>, partition: i32) {
        loop {
            // Let the requests already runnable queue their commits first:
            // those that arrive together are appended together.
            glommio::executor().yield_now().await;
            let lock = self.append_lock(partition);
            let permit = lock.acquire_permit(1).await;
            let log = offsets_partition_log(&broker, partition);
            let max_bytes = log.as_ref().map_or(MAX_BATCH_BYTES, |l| l.log.borrow().config.max_message_bytes);
            let entries = self.take_batch(partition, max_bytes.min(MAX_BATCH_BYTES));
            if entries.is_empty() {
                return; // `flushing` was cleared with the queue seen empty
            }
            let Some(log) = log.filter(|_| permit.is_ok()) else {
                let error = PartitionError::NotAvailable; // the partition left this shard
                entries.into_iter().for_each(|e| self.finish(e, Err(error), Applying(None)));
                continue;
            };
            let now_ms = storage::now_ms();
            let mut batch = BatchWriter::new(entries.iter().map(Queued::bytes).sum(), now_ms);
            entries.iter().for_each(|e| e.write(&mut batch));
            match log.append(batch.finish(), now_ms).await {
                Ok(info) => {
                    // Counted before the lock is released: a checkpoint that
                    // takes it next waits until memory has these records.
                    let unapplied = self.count_unapplied(partition, entries.len());
                    drop(permit);
                    let me = self.clone();
                    glommio::spawn_local(async move { me.settle(log, info, entries, unapplied).await }).detach();
                }
                Err(e) => {
                    drop(permit);
                    let error = PartitionError::from(e);
                    entries.into_iter().for_each(|e| self.finish(e, Err(error), Applying(None)));
                }
            }
        }
    }

    /// The next batch's appends: the oldest, and those after it while they
    /// fit in `max_bytes`. Empty (and the flusher done) if nothing is queued.
    fn take_batch(&self, partition: i32, max_bytes: usize) -> Vec<Queued> {
        let mut queues = self.queues.borrow_mut();
        let queue = queues.get_mut(&partition).expect("a flusher's partition has a queue");
        let mut taken = self.spare_batches.borrow_mut().pop().unwrap_or_default();
        taken.reserve(queue.entries.len());
        let mut bytes = 0;
        while let Some(next) = queue.entries.front() {
            let next_bytes = next.bytes();
            if !taken.is_empty() && bytes + next_bytes > max_bytes {
                break;
            }
            bytes += next_bytes;
            taken.push(queue.entries.pop_front().expect("a front entry"));
        }
        if taken.is_empty() {
            queue.flushing = false;
        }
        taken
    }

    /// Waits for a batch's fdatasync, then finishes each of its appends;
    /// `unapplied` counts them (one each) until memory has them.
    async fn settle(
        self: Rc<Self>,
        log: Rc<Partition>,
        info: AppendInfo,
        mut entries: Vec<Queued>,
        unapplied: Rc<Cell<u32>>,
    ) {
        let durable = log.wait_committed(&info).await.map_err(PartitionError::from);
        let mut next = info.base_offset;
        for entry in entries.drain(..) {
            let first = next;
            next += entry.records() as i64;
            self.finish(entry, durable.map(|()| first), Applying(Some(unapplied.clone())));
        }
        assert_eq!(next, info.last_offset + 1, "a batch's appends hold all its records");
        let mut spare = self.spare_batches.borrow_mut();
        if spare.len() < MAX_SPARE_BATCHES {
            spare.push(entries);
        }
    }

    /// Finishes a queued append: `stored` is its first record's offset once
    /// durable, or why it failed.
    fn finish(&self, entry: Queued, stored: Result<i64, PartitionError>, applying: Applying) {
        match entry {
            Queued::Records { done, .. } => {
                let _ = done.send((stored, applying)); // dropped with a gone waiter: counted off
            }
            Queued::Commit(commit) => {
                let (reply, codes) = self.apply_commit(commit, stored);
                drop(applying); // applied: a checkpoint may go on
                let _ = reply.send(Ok(GroupReply::Codes(0, codes)));
            }
        }
    }

    /// Applies a commit to memory (a later record wins, whatever order
    /// batches settle in) and returns its reply slot and codes.
    fn apply_commit(
        &self,
        commit: QueuedCommit,
        stored: Result<i64, PartitionError>,
    ) -> (oneshot::Sender<GroupResult>, Vec<i16>) {
        let QueuedCommit { group, offsets, mut codes, reply, .. } = commit;
        let failed = stored.err().map(|e| store_error(e).code());
        self.with_group(&group, |g| {
            let accepted = offsets.into_iter().zip(&codes).filter(|(_, code)| **code == 0).map(|(offset, _)| offset);
            for (i, (topic, p, value)) in accepted.enumerate() {
                let key = (topic, p);
                if let Some(n) = g.pending_commits.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        g.pending_commits.remove(&key);
                    }
                }
                if let Ok(base) = stored {
                    g.apply_offset(key.0, key.1, Some(value), base + i as i64);
                }
            }
        });
        if let Some(code) = failed {
            codes.iter_mut().filter(|c| **c == 0).for_each(|c| *c = code);
        }
        self.forget_if_unused(&group);
        (reply, codes)
    }
}
