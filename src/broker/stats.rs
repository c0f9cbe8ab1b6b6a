//! A shard's figures for a metrics scrape, and the scrape itself: the shard
//! serving it asks every other shard for its snapshot by actor message.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::{Broker, ShardMsg};
use crate::metrics::{self, PartitionSnapshot, Scrape, ShardSnapshot};
use crate::storage::Partition;

impl Broker {
    /// This shard's counters, partitions and committed offsets.
    pub fn metrics_snapshot(&self) -> ShardSnapshot {
        let mut snapshot = metrics::with(|m| m.snapshot(self.shard_id));
        let count = self.partitions.borrow().len();
        snapshot.partitions.reserve(count);
        for lines in &mut snapshot.partition_lines {
            lines.reserve(count * 64);
        }
        snapshot.connections = self.connections.get() as u64;
        let sessions = self.fetch_sessions.borrow();
        (snapshot.fetch_sessions, snapshot.fetch_session_partitions) =
            (sessions.len() as u64, sessions.partitions() as u64);
        drop(sessions);
        let meta = self.meta();
        let names: HashMap<[u8; 16], Arc<str>> =
            meta.topics.values().map(|t| (t.id, Arc::from(t.name.as_str()))).collect();
        // Three passes, each loop small: with 10,000 partitions the time goes
        // to cache misses (each partition and its segment list live apart on
        // the heap), and a small loop body lets the CPU have several
        // partitions' misses in flight at once.
        let partitions = self.partitions.borrow();
        let owned: Vec<(&Arc<str>, i32, &Partition)> =
            partitions.iter().filter_map(|(tp, p)| Some((names.get(&tp.topic_id)?, tp.partition, &**p))).collect();
        for &(topic, index, partition) in &owned {
            let log = partition.log.borrow();
            let counters = &partition.counters;
            snapshot.cache_bytes += log.cache_bytes() as u64;
            snapshot.partitions.push(PartitionSnapshot {
                topic: topic.clone(),
                partition: index,
                high_watermark: log.high_watermark(),
                log_start_offset: log.log_start_offset(),
                size_bytes: log.size_bytes(),
                segments: log.segment_count() as u64,
                bytes_in: counters.bytes_in.get(),
                records_in: counters.records_in.get(),
                bytes_out: counters.bytes_out.get(),
                records_out: counters.records_out.get(),
            });
        }
        for partition in &snapshot.partitions {
            metrics::render_partition(&mut snapshot.partition_lines, partition);
        }
        snapshot.committed = self.groups.committed_snapshot();
        snapshot
    }

    /// Every shard's snapshot (a shard that does not answer is left out),
    /// the other shards building theirs while this one builds its own.
    pub async fn scrape(self: &Rc<Self>) -> Scrape {
        let others = (0..self.shard_count).filter(|s| *s != self.shard_id).map(|shard| {
            let (reply, answer) = futures::channel::oneshot::channel();
            // Sent now when the link has room, so that shard works while this one does.
            let unsent = self.mailbox.try_send(shard, ShardMsg::Metrics { reply }).err();
            async move {
                match unsent {
                    None => {}
                    Some(Some(msg)) => self.mailbox.send(shard, msg).await.ok()?,
                    Some(None) => return None, // that shard is gone
                }
                answer.await.ok()
            }
        });
        let others: Vec<_> = others.collect();
        let mut shards = vec![self.metrics_snapshot()];
        shards.extend(futures::future::join_all(others).await.into_iter().flatten());
        shards.sort_by_key(|s| s.shard);
        Scrape { shards, ..Scrape::default() }
    }
}
