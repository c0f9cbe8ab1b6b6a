//! Partition replication, Kafka's way: followers fetch from leaders with the
//! Fetch API over the ordinary listener and append the leader's batches as
//! they are; the leader tracks each follower's log end, moves the high
//! watermark to the lowest one in the ISR, and asks the controller to shrink
//! or grow the ISR (AlterPartition). One [`Replication`] per shard holds the
//! roles of that shard's partitions and its fetchers (one per leader node).
//!
//! Role changes come only from metadata installs: a partition this node now
//! leads stops being fetched, records its new epoch and starts tracking its
//! followers; a partition it now follows fails its acks=all waiters and is
//! fetched from the new leader after truncating a divergent tail.

pub mod conn;
mod fetcher;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use tracing::{info, warn};

use crate::broker::admin::AdminOp;
use crate::broker::metadata::NO_LEADER;
use crate::broker::{Broker, TopicMeta, TopicPartition};
use crate::group::OFFSETS_TOPIC;
use crate::storage::replica_set::ReplicaSet;
use crate::storage::{now_ms, Partition};
use fetcher::Fetcher;
use shards::NodeId;

/// The shard's replication state.
#[derive(Default)]
pub struct Replication {
    /// (leader, leader epoch) of each local partition as last installed.
    roles: RefCell<HashMap<TopicPartition, (NodeId, i32)>>,
    /// One fetcher per leader node this shard follows partitions of.
    fetchers: RefCell<HashMap<NodeId, Rc<Fetcher>>>,
}

impl Replication {
    /// The partition is gone from this shard: it is fetched no more.
    pub fn forget(&self, tp: &TopicPartition) {
        self.roles.borrow_mut().remove(tp);
        self.stop_fetching(tp);
    }

    /// The next install applies the partition's role afresh (it was reopened).
    pub fn reset_role(&self, tp: &TopicPartition) {
        self.roles.borrow_mut().remove(tp);
    }

    fn stop_fetching(&self, tp: &TopicPartition) {
        for fetcher in self.fetchers.borrow().values() {
            fetcher.remove(tp);
        }
    }

    /// Stops every fetcher (shutdown).
    pub fn stop(&self) {
        for fetcher in self.fetchers.borrow().values() {
            fetcher.stop();
        }
    }
}

/// Applies the installed metadata to local partition `p` of `topic`: leads
/// it, follows it, or waits for a leader.
pub async fn install_partition(broker: &Rc<Broker>, topic: &TopicMeta, p: i32, partition: &Rc<Partition>) {
    let state = topic.partition(p);
    let tp = topic.tp(p);
    let me = broker.config.node_id;
    let role = (state.leader, state.leader_epoch);
    let previous = broker.replication.roles.borrow_mut().insert(tp, role);
    if state.leader == me {
        // A reassignment may take a partition this node leads from one
        // replica to several, or back, in the same epoch.
        let reshaped = partition.replicas.borrow().is_some() != (state.replicas.len() > 1);
        if previous != Some(role) {
            broker.replication.stop_fetching(&tp);
            lead(partition, state.leader_epoch, &state.replicas, &state.isr, me, false).await;
            info!(topic = %topic.name, partition = p, epoch = state.leader_epoch, "leading partition");
            if topic.name == OFFSETS_TOPIC {
                // The coordinator of its groups is its leader: load them.
                broker.groups.start_loading(broker, p, partition.clone());
            }
        } else if reshaped {
            lead(partition, state.leader_epoch, &state.replicas, &state.isr, me, true).await;
            info!(topic = %topic.name, partition = p, replicas = ?state.replicas, "leading partition with new replicas");
        } else if let Some(set) = partition.replicas.borrow_mut().as_mut() {
            if set.pending_isr.as_ref() == Some(&state.isr) {
                set.pending_isr = None;
            }
            set.isr = state.isr.clone();
            set.set_replicas(&state.replicas, now_ms());
        }
        partition.update_high_watermark();
        return;
    }
    partition.stop_leading();
    // A follower's high watermark is what its leader said; until then,
    // nothing past the log start.
    bound_high_watermark(partition);
    if previous == Some(role) {
        return;
    }
    broker.replication.stop_fetching(&tp);
    if topic.name == OFFSETS_TOPIC {
        broker.groups.unload(p, topic.partitions);
    }
    if state.leader != NO_LEADER {
        info!(topic = %topic.name, partition = p, leader = state.leader, epoch = state.leader_epoch, "following partition");
        fetcher_for(broker, state.leader).add(tp, topic.name.clone(), p, state.leader_epoch);
    }
}

/// Starts leading at `epoch`: the epoch cache names it from the log end, and
/// a replicated partition tracks its followers from scratch. Until it does,
/// appends are refused (`Leadership::None`): none may be answered as if
/// this node held the partition alone. `continuing`: it led the partition
/// alone until now, and what was visible stays visible.
async fn lead(
    partition: &Rc<Partition>,
    epoch: i32,
    replicas: &[NodeId],
    isr: &[NodeId],
    me: NodeId,
    continuing: bool,
) {
    if replicas.len() > 1 {
        partition.stop_leading();
        if continuing {
            let visible = partition.log.borrow().high_watermark();
            partition.log.borrow_mut().set_replica_hw(visible);
        } else {
            bound_high_watermark(partition);
        }
    }
    let (mut epochs, end) = {
        let log = partition.log.borrow();
        (log.epochs.clone(), log.end_offset())
    };
    if epochs.assign(epoch, end) {
        if let Err(e) = partition.write_epochs(&epochs).await {
            warn!(dir = %partition.log.borrow().dir.display(), "writing the leader epoch cache: {e:?}");
        }
    }
    if replicas.len() <= 1 {
        partition.stop_leading();
        partition.log.borrow_mut().set_replica_hw(i64::MAX);
        return;
    }
    let set = ReplicaSet::new(me, epoch, replicas, isr, end, now_ms());
    partition.replicas.replace(Some(set));
}

/// A partition that had no replicated high watermark starts from its log
/// start: a new leader's must never pass what the other in-sync replicas
/// have, and it only moves up from there as they report their log ends.
fn bound_high_watermark(partition: &Partition) {
    let mut log = partition.log.borrow_mut();
    if log.replica_hw() == i64::MAX {
        let start = log.log_start_offset();
        log.set_replica_hw(start);
    }
}

fn fetcher_for(broker: &Rc<Broker>, leader: NodeId) -> Rc<Fetcher> {
    if let Some(fetcher) = broker.replication.fetchers.borrow().get(&leader) {
        return fetcher.clone();
    }
    let fetcher = Fetcher::start(broker, leader);
    broker.replication.fetchers.borrow_mut().insert(leader, fetcher.clone());
    fetcher
}

/// A follower's fetch reached the leader: its progress moves the high
/// watermark, and a follower back in step rejoins the ISR.
pub fn on_follower_fetch(broker: &Rc<Broker>, tp: TopicPartition, partition: &Partition, node: NodeId, offset: i64) {
    let end = partition.log.borrow().flushed_offset();
    let known = partition.replicas.borrow_mut().as_mut().is_some_and(|set| set.on_fetch(node, offset, end, now_ms()));
    if !known {
        return;
    }
    partition.update_high_watermark();
    let hw = partition.log.borrow().high_watermark();
    let change = {
        let replicas = partition.replicas.borrow();
        let set = replicas.as_ref().expect("checked above");
        let joining = set.caught_up(hw);
        (set.pending_isr.is_none() && !joining.is_empty()).then(|| {
            let mut isr = set.isr.clone();
            isr.extend(joining);
            isr.sort_unstable();
            isr
        })
    };
    if let Some(isr) = change {
        propose_isr(broker, tp, partition, isr);
    }
}

/// Periodic, on every shard: in-sync followers that stopped catching up
/// for `replica_lag_time_max_ms` leave the ISR.
pub fn shrink_lagging(broker: &Rc<Broker>) {
    let lag_max_ms = broker.config.replica_lag_time_max_ms as i64;
    let now = now_ms();
    for (tp, partition) in broker.local_partitions_by_tp() {
        let change = {
            let replicas = partition.replicas.borrow();
            let Some(set) = replicas.as_ref().filter(|s| s.pending_isr.is_none()) else { continue };
            let lagging = set.lagging(now, lag_max_ms);
            (!lagging.is_empty()).then(|| {
                info!(dir = %partition.log.borrow().dir.display(), ?lagging, "followers left behind: shrinking the ISR");
                set.isr.iter().copied().filter(|n| !lagging.contains(n)).collect::<Vec<_>>()
            })
        };
        if let Some(isr) = change {
            propose_isr(broker, tp, &partition, isr);
        }
    }
}

/// Asks the controller to make `isr` the partition's ISR (AlterPartition);
/// until it is committed, the high watermark counts the members it adds.
fn propose_isr(broker: &Rc<Broker>, tp: TopicPartition, partition: &Partition, isr: Vec<NodeId>) {
    let meta = broker.meta();
    let Some(topic) = meta.topics.values().find(|t| t.id == tp.topic_id).cloned() else { return };
    let epoch = {
        let mut replicas = partition.replicas.borrow_mut();
        let Some(set) = replicas.as_mut() else { return };
        set.pending_isr = Some(isr.clone());
        set.leader_epoch
    };
    let op = AdminOp::AlterPartition {
        topic: topic.name.clone(),
        partition: tp.partition,
        leader: broker.config.node_id,
        leader_epoch: epoch,
        isr: isr.clone(),
    };
    let broker = broker.clone();
    glommio::spawn_local(async move {
        let result = broker.admin(op).await;
        if let Err(e) = &result {
            warn!(topic = %topic.name, partition = tp.partition, ?isr, "ISR change refused: {}", e.message);
        }
        if let Some(partition) = broker.local_partition(&tp) {
            if let Some(set) = partition.replicas.borrow_mut().as_mut() {
                if set.pending_isr.as_ref() == Some(&isr) {
                    set.pending_isr = None;
                }
            }
        }
    })
    .detach();
}
