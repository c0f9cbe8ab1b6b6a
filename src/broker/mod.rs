//! One shard's share of the broker: the partitions it owns, its snapshot of
//! the cluster metadata, and the routing that sends work on other shards'
//! partitions to them as actor messages (the only way shards talk).

pub mod admin;
pub mod configs;
pub mod fetch_sessions;
pub mod messages;
pub mod metadata;
mod stats;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::sync::Semaphore;
use shards::{Mailbox, ShardId};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::group::{offsets_partition, CommitArgs, Coordinator, GroupOp, GroupResult, OFFSETS_TOPIC};
use crate::storage::{self, Durability, Partition, StorageError};
use kafka_protocol::messages::list_groups_response::ListedGroup;
pub use messages::{LocalReplica, PartitionError, PartitionOk, PartitionOp, PartitionResult, ShardMsg};
pub use metadata::{ClusterMeta, TopicMeta, TopicPartition};

/// Smallest share of the shard's tail cache a partition gets.
const MIN_PARTITION_CACHE_BYTES: usize = 64 << 10;
/// Write buffer of a `__consumer_offsets` partition: its records are small,
/// and there are 50 of them.
const OFFSETS_WRITE_BUFFER_BYTES: usize = 64 << 10;

/// Where [`Broker::submit_commit`] put an OffsetCommit; its answer comes on the receiver.
pub enum CommitSubmitted {
    /// Queued on this shard (None), or on the link to that shard.
    Sent(Option<ShardId>, futures::channel::oneshot::Receiver<GroupResult>),
    /// The link to that shard is full: the message is to be sent when it has room.
    Full(ShardId, Box<ShardMsg>, futures::channel::oneshot::Receiver<GroupResult>),
    /// The coordinator's shard is gone.
    Gone,
}

pub struct Broker {
    pub shard_id: ShardId,
    pub shard_count: usize,
    pub config: Arc<Config>,
    pub mailbox: Rc<Mailbox<ShardMsg>>,
    meta: RefCell<Arc<ClusterMeta>>,
    partitions: RefCell<HashMap<TopicPartition, Rc<Partition>>>,
    /// Serialises metadata changes (used on the controller shard).
    admin_lock: Semaphore,
    /// Set once every shard has installed the first metadata snapshot.
    ready: Cell<bool>,
    pub connections: Cell<usize>,
    /// Deleted partition directories being removed in the blocking pool:
    /// shutdown waits for them (a shard gone before them leaves the pool's
    /// answer nowhere to go, and glommio's pool thread then panics).
    removals_in_flight: Rc<Cell<usize>>,
    /// Where connections handed over by other shards go: the server's
    /// queue for them, while this shard serves clients.
    pub handed_over: RefCell<Option<glommio::channels::local_channel::LocalSender<std::os::fd::OwnedFd>>>,
    /// This shard's unused producer ids: [next, end).
    producer_ids: Cell<(i64, i64)>,
    /// Shard 0: this node's controller (a voter of the quorum).
    controller: RefCell<Option<Rc<crate::controller::Controller>>>,
    /// The consumer groups of the offsets partitions this shard owns.
    pub groups: Rc<Coordinator>,
    /// Roles of this shard's replicated partitions and its fetchers.
    pub replication: crate::replication::Replication,
    /// Incremental fetch sessions of the connections this shard serves.
    pub fetch_sessions: RefCell<fetch_sessions::FetchSessionCache>,
}

impl Broker {
    pub fn new(shard_id: ShardId, shard_count: usize, config: Arc<Config>, mailbox: Rc<Mailbox<ShardMsg>>) -> Broker {
        let meta = Arc::new(ClusterMeta::new(config.node_id, shard_count, Vec::new()));
        Broker {
            shard_id,
            shard_count,
            config: config.clone(),
            mailbox,
            meta: RefCell::new(meta),
            partitions: RefCell::new(HashMap::new()),
            admin_lock: Semaphore::new(1),
            ready: Cell::new(false),
            connections: Cell::new(0),
            removals_in_flight: Rc::new(Cell::new(0)),
            handed_over: RefCell::new(None),
            producer_ids: Cell::new((0, 0)),
            controller: RefCell::new(None),
            groups: Coordinator::new(&config),
            replication: Default::default(),
            fetch_sessions: RefCell::new(fetch_sessions::FetchSessionCache::new(
                config.max_incremental_fetch_session_cache_slots,
                config.max_incremental_fetch_session_partitions,
            )),
        }
    }

    /// Shard 0: this node's controller (set at start, before any request).
    pub fn controller(&self) -> Rc<crate::controller::Controller> {
        assert_eq!(self.shard_id, admin::CONTROLLER_SHARD, "the controller lives on shard 0");
        self.controller.borrow().clone().expect("the controller starts before any request")
    }

    /// The current metadata snapshot (cheap: an `Arc` clone).
    pub fn meta(&self) -> Arc<ClusterMeta> {
        self.meta.borrow().clone()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.get()
    }

    /// Handles a message from another shard. Work that may wait runs in its
    /// own task; an OffsetCommit needs none (its coordinator queues it at once).
    pub fn on_message(self: &Rc<Self>, msg: ShardMsg) {
        crate::metrics::with(|m| crate::metrics::bump(&m.cross_shard_messages, 1));
        let msg = match msg {
            ShardMsg::Group { partition, op: GroupOp::Commit(args), reply } => {
                return self.groups.commit(self, partition, args, reply);
            }
            ShardMsg::Connection { socket } => {
                // Unbounded: only a shard serving fewer connections than the
                // one that accepted it (under max_connections_per_shard) is
                // sent one. No queue (stopping): closed, its count left to
                // the process's end.
                if let Some(queue) = self.handed_over.borrow().as_ref() {
                    let _ = queue.try_send(socket);
                }
                return;
            }
            msg => msg,
        };
        let broker = self.clone();
        glommio::spawn_local(async move {
            match msg {
                ShardMsg::Partition { tp, op, reply } => {
                    let _ = reply.send(broker.run_local(tp, op).await);
                }
                ShardMsg::WaitForData { waits, timeout, replica, reply } => {
                    broker.wait_local(&waits, timeout, replica).await;
                    let _ = reply.send(());
                }
                ShardMsg::Admin { op, reply } => {
                    let _ = reply.send(broker.admin_here(op).await);
                }
                ShardMsg::Install { meta, reply } => {
                    broker.install(meta).await;
                    let _ = reply.send(());
                }
                ShardMsg::Start => broker.ready.set(true),
                ShardMsg::Connection { .. } => {} // taken above, without a task
                ShardMsg::Group { partition, op, reply } => {
                    let _ = reply.send(broker.groups.run(&broker, partition, op).await);
                }
                ShardMsg::ListGroups { states, reply } => {
                    let _ = reply.send(broker.groups.list(&states));
                }
                ShardMsg::Metrics { reply } => {
                    let _ = reply.send(broker.metrics_snapshot());
                }
                ShardMsg::LocalReplicas { reply } => {
                    let _ = reply.send(broker.local_replicas());
                }
            }
        })
        .detach();
    }

    /// Runs `op` on partition `tp`, wherever it lives: here directly, on
    /// another shard through its mailbox.
    pub async fn on_partition(self: &Rc<Self>, tp: TopicPartition, op: PartitionOp) -> PartitionResult {
        let owner = match self.meta.borrow().placement(&tp) {
            Some(placement) if placement.leader == self.config.node_id => placement.shard,
            // NOT_LEADER_OR_FOLLOWER: the client refreshes its metadata.
            Some(_) => return Err(PartitionError::NotAvailable),
            None => return Err(PartitionError::UnknownTopicOrPartition),
        };
        if owner == self.shard_id {
            return self.run_local(tp, op).await;
        }
        self.mailbox
            .call(owner, |reply| ShardMsg::Partition { tp, op, reply })
            .await
            .unwrap_or(Err(PartitionError::NotAvailable))
    }

    /// The offsets partition a group belongs to and the shard coordinating
    /// it: the shard owning that `__consumer_offsets` partition (the group
    /// id's hash decides, as Kafka). Err: a Kafka error code.
    pub fn group_route(&self, group_id: &str) -> Result<(i32, ShardId), i16> {
        let unavailable = kafka_protocol::error::ResponseError::CoordinatorNotAvailable.code();
        let meta = self.meta.borrow();
        let topic = meta.topic(OFFSETS_TOPIC).ok_or(unavailable)?;
        let partition = offsets_partition(group_id, topic.partitions);
        let placement = meta.placement(&topic.tp(partition)).ok_or(unavailable)?;
        if placement.leader != self.config.node_id {
            return Err(kafka_protocol::error::ResponseError::NotCoordinator.code());
        }
        Ok((partition, placement.shard))
    }

    /// Runs a group request on the group's coordinator. The work runs in a
    /// task of its own there, so a caller that goes away cuts nothing short.
    pub async fn on_group(self: &Rc<Self>, op: GroupOp) -> GroupResult {
        let (partition, shard) = self.group_route(op.group_id())?;
        let unavailable = kafka_protocol::error::ResponseError::CoordinatorNotAvailable.code();
        if shard != self.shard_id {
            return self
                .mailbox
                .call(shard, |reply| ShardMsg::Group { partition, op, reply })
                .await
                .unwrap_or(Err(unavailable));
        }
        let (reply, answer) = futures::channel::oneshot::channel();
        match op {
            GroupOp::Commit(args) => self.groups.commit(self, partition, args, reply),
            op => {
                let broker = self.clone();
                glommio::spawn_local(async move {
                    let _ = reply.send(broker.groups.run(&broker, partition, op).await);
                })
                .detach();
            }
        }
        answer.await.unwrap_or(Err(unavailable))
    }
    /// Hands an OffsetCommit to its coordinator at `route` (from
    /// [`Broker::group_route`]), synchronously: queued there if it is this
    /// shard, else put on the link to it. It needs no task of its own: its
    /// coordinator's tasks own it once queued.
    pub fn submit_commit(self: &Rc<Self>, route: (i32, ShardId), args: CommitArgs) -> CommitSubmitted {
        let (partition, shard) = route;
        let (reply, answer) = futures::channel::oneshot::channel();
        if shard == self.shard_id {
            self.groups.commit(self, partition, args, reply);
            return CommitSubmitted::Sent(None, answer);
        }
        let msg = ShardMsg::Group { partition, op: GroupOp::Commit(args), reply };
        match self.mailbox.try_send(shard, msg) {
            Ok(()) => CommitSubmitted::Sent(Some(shard), answer),
            Err(Some(msg)) => CommitSubmitted::Full(shard, Box::new(msg), answer),
            Err(None) => CommitSubmitted::Gone,
        }
    }

    /// Sends a message to `shard` once its mailbox has room; false if it is gone.
    pub async fn send_when_room(&self, shard: ShardId, msg: ShardMsg) -> bool {
        self.mailbox.send(shard, msg).await.is_ok()
    }

    /// The groups every shard coordinates, for ListGroups.
    /// Err: a Kafka error code (a coordinator still loading its groups).
    pub async fn list_groups(&self, states: Vec<String>) -> Result<Vec<ListedGroup>, i16> {
        let mut all = self.groups.list(&states)?;
        for shard in (0..self.shard_count).filter(|s| *s != self.shard_id) {
            let states = states.clone();
            if let Ok(groups) = self.mailbox.call(shard, |reply| ShardMsg::ListGroups { states, reply }).await {
                all.extend(groups?);
            }
        }
        Ok(all)
    }

    /// The replicas this shard holds.
    fn local_replicas(&self) -> Vec<LocalReplica> {
        let partitions = self.partitions.borrow();
        partitions
            .iter()
            .map(|(tp, partition)| {
                let log = partition.log.borrow();
                let offset_lag = (log.high_watermark().min(i64::MAX - 1) - log.end_offset()).max(0);
                LocalReplica { tp: *tp, size_bytes: log.size_bytes(), offset_lag }
            })
            .collect()
    }

    /// The replicas every shard of this node holds (a shard that does not
    /// answer is left out).
    pub async fn all_local_replicas(&self) -> Vec<LocalReplica> {
        let mut all = self.local_replicas();
        for shard in (0..self.shard_count).filter(|s| *s != self.shard_id) {
            if let Ok(replicas) = self.mailbox.call(shard, |reply| ShardMsg::LocalReplicas { reply }).await {
                all.extend(replicas);
            }
        }
        all
    }

    pub(crate) fn local_partition(&self, tp: &TopicPartition) -> Option<Rc<Partition>> {
        self.partitions.borrow().get(tp).cloned()
    }

    async fn run_local(self: &Rc<Self>, tp: TopicPartition, op: PartitionOp) -> PartitionResult {
        let Some(partition) = self.local_partition(&tp) else {
            return Err(PartitionError::UnknownTopicOrPartition);
        };
        let log_start = || partition.log.borrow().log_start_offset();
        match op {
            PartitionOp::Produce { records, durability, appended, timeout_ms } => {
                let all = durability == Durability::Synced;
                if all && in_sync_replicas(&partition) < partition.log.borrow().config.min_insync_replicas {
                    return Err(PartitionError::NotEnoughReplicas);
                }
                // compression.type: recompressed here, before the append
                // validates (a no-op by default: the batches as sent).
                let records = partition.log.borrow().recompress(&records).map_err(StorageError::Batch)?;
                let appended_info = partition.append_produced(records, storage::now_ms()).await;
                drop(appended); // took effect: the request's connection may dispatch its next one
                let info = appended_info.map_err(PartitionError::from)?;
                // flush.messages: the append that reaches it waits for the sync.
                let durability = if partition.flush_messages_reached() { Durability::Synced } else { durability };
                partition.wait_durable(info.last_offset, durability).await.map_err(PartitionError::from)?;
                // Only a replicated partition waits for others (no timer otherwise: hot path).
                if all && info.replicated_in_epoch.is_some() {
                    let timeout = Duration::from_millis(timeout_ms);
                    let replicated = partition.wait_replicated(&info);
                    match glommio::timer::timeout(timeout, async { Ok(replicated.await) }).await {
                        Ok(result) => result.map_err(PartitionError::from)?,
                        Err(_) => return Err(PartitionError::RequestTimedOut),
                    }
                }
                Ok(PartitionOk::Produced {
                    base_offset: info.base_offset,
                    log_append_time_ms: info.log_append_time_ms,
                    log_start_offset: log_start(),
                })
            }
            PartitionOp::Read { offset, max_bytes, follower } => {
                if let Some(node) = follower {
                    if partition.replicas.borrow().as_ref().is_none_or(|set| !set.followers.contains_key(&node)) {
                        return Err(PartitionError::NotFollower);
                    }
                    // A fetch offset past the log end is a divergent follower's:
                    // refused before it could count towards the high watermark.
                    if offset > partition.log.borrow().end_offset() || offset < log_start() {
                        return Err(PartitionError::OffsetOutOfRange);
                    }
                    crate::replication::on_follower_fetch(self, tp, &partition, node, offset);
                }
                let parts =
                    partition.read(offset, max_bytes, follower.is_some()).await.map_err(PartitionError::from)?;
                let log = partition.log.borrow();
                Ok(PartitionOk::Read {
                    parts,
                    high_watermark: log.high_watermark(),
                    log_start_offset: log.log_start_offset(),
                })
            }
            PartitionOp::Offsets => {
                let log = partition.log.borrow();
                Ok(PartitionOk::Offsets {
                    log_start_offset: log.log_start_offset(),
                    high_watermark: log.high_watermark(),
                })
            }
            PartitionOp::OffsetForTime { timestamp } => {
                let found = offset_for_time(&partition, timestamp).await?;
                Ok(PartitionOk::Timestamped { found })
            }
            PartitionOp::MaxTimestamp => {
                // KIP-734: the first record carrying the log's largest
                // timestamp, which is the first record reaching it.
                let max_timestamp = partition.log.borrow().max_timestamp_offset().map(|(t, _)| t);
                let found = match max_timestamp {
                    Some(timestamp) => offset_for_time(&partition, timestamp).await?,
                    None => None,
                };
                Ok(PartitionOk::Timestamped { found })
            }
            PartitionOp::Producers => {
                Ok(PartitionOk::Producers { producers: partition.log.borrow().active_producers() })
            }
            PartitionOp::DeleteRecords { offset } => {
                let low_watermark = partition.delete_records(offset).await.map_err(PartitionError::from)?;
                Ok(PartitionOk::Deleted { low_watermark })
            }
            PartitionOp::EndOffsetForEpoch { epoch } => {
                let log = partition.log.borrow();
                Ok(PartitionOk::EpochEnd { found: log.end_offset_for_epoch(epoch) })
            }
        }
    }

    /// Waits until any of `waits` (partition, end offset seen) grows, or
    /// `timeout` (`replica`: a follower's fetch, waiting for written data).
    /// Partitions on other shards are waited for through their mailboxes.
    pub async fn wait_for_data(&self, waits: Vec<(TopicPartition, i64)>, timeout: Duration, replica: bool) {
        let mut by_shard: HashMap<ShardId, Vec<(TopicPartition, i64)>> = HashMap::new();
        {
            let meta = self.meta.borrow();
            for (tp, end) in waits {
                if let Some(placement) = meta.placement(&tp) {
                    by_shard.entry(placement.shard).or_default().push((tp, end));
                }
            }
        }
        let waiters = by_shard.into_iter().map(|(shard, waits)| {
            Box::pin(async move {
                if shard == self.shard_id {
                    self.wait_local(&waits, timeout, replica).await;
                } else {
                    let call = |reply| ShardMsg::WaitForData { waits, timeout, replica, reply };
                    let _ = self.mailbox.call(shard, call).await;
                }
            })
        });
        let all: Vec<_> = waiters.collect();
        if all.is_empty() {
            glommio::timer::sleep(timeout).await;
        } else {
            futures::future::select_all(all).await;
        }
    }

    async fn wait_local(&self, waits: &[(TopicPartition, i64)], timeout: Duration, replica: bool) {
        let parts: Vec<_> = waits.iter().filter_map(|(tp, end)| Some((self.local_partition(tp)?, *end))).collect();
        let futures: Vec<_> = parts.iter().map(|(p, end)| Box::pin(p.wait_for_data(*end, timeout, replica))).collect();
        if futures.is_empty() {
            glommio::timer::sleep(timeout).await;
        } else {
            futures::future::select_all(futures).await;
        }
    }

    /// Installs a metadata snapshot: opens partitions newly placed here, closes
    /// and deletes those gone, and applies changed topic configs.
    pub async fn install(self: &Rc<Self>, meta: Arc<ClusterMeta>) {
        let old = self.meta.replace(meta.clone());
        let mut mine = Vec::new();
        for topic in meta.topics.values() {
            for p in 0..topic.partitions {
                let tp = topic.tp(p);
                if meta.hosts(&tp) && meta.placement(&tp).is_some_and(|pl| pl.shard == self.shard_id) {
                    mine.push((topic.clone(), p));
                }
            }
        }
        // The shard's cache budget split evenly; unflushed batches stay cached
        // regardless (reads need them), so a small share is always safe.
        let cache_bytes = (self.config.cache_bytes_per_shard / mine.len().max(1)).max(MIN_PARTITION_CACHE_BYTES);
        // Dynamic broker configs apply to every topic without its own value.
        let dynamic = configs::dynamic_topic_defaults(self.config.node_id, &meta.broker_configs);
        for (topic, p) in &mine {
            let tp = topic.tp(*p);
            let merged;
            let configs = if dynamic.is_empty() {
                &topic.configs
            } else {
                merged = dynamic.iter().chain(&topic.configs).map(|(k, v)| (k.clone(), v.clone())).collect();
                &merged
            };
            let mut log_config = metadata::log_config(&self.config.log_defaults(), configs);
            log_config.cache_bytes = cache_bytes;
            if topic.name == OFFSETS_TOPIC {
                // On every install, not only at open: a later install
                // replacing the config must not give it 1 MiB again.
                log_config.write_buffer_bytes = OFFSETS_WRITE_BUFFER_BYTES;
            }
            let leader_epoch = topic.partition(*p).leader_epoch;
            if let Some(existing) = self.local_partition(&tp) {
                {
                    let mut log = existing.log.borrow_mut();
                    log.config = log_config;
                    log.leader_epoch = leader_epoch;
                }
                crate::replication::install_partition(self, topic, *p, &existing).await;
                continue;
            }
            let dir = self.config.data_dir.join(topic.dir_name(*p));
            match storage::open_log(&dir, log_config, leader_epoch).await {
                Ok(log) => {
                    let partition = Partition::start(log);
                    self.partitions.borrow_mut().insert(tp, partition.clone());
                    crate::replication::install_partition(self, topic, *p, &partition).await;
                }
                Err(e) => error!(dir = %dir.display(), "cannot open partition: {e}"),
            }
        }
        let gone: Vec<(TopicPartition, Rc<Partition>)> = self
            .partitions
            .borrow()
            .iter()
            .filter(|(tp, _)| !meta.hosts(tp) || meta.placement(tp).is_none_or(|pl| pl.shard != self.shard_id))
            .map(|(tp, p)| (*tp, p.clone()))
            .collect();
        // A deleted topic's directories are renamed to unique `-delete` names
        // (durably) before their files go, so neither a crash nor a new topic
        // of the same name can see the old records; leftovers go at start.
        let live_ids: std::collections::HashSet<[u8; 16]> = meta.topics.values().map(|t| t.id).collect();
        let mut doomed = Vec::new();
        for (_, partition) in &gone {
            partition.discard(); // writers end together; each is awaited below
        }
        for (tp, partition) in gone {
            self.partitions.borrow_mut().remove(&tp);
            self.replication.forget(&tp);
            partition.stop_leading();
            if let Some(offsets) = old.topics.values().find(|t| t.id == tp.topic_id && t.name == OFFSETS_TOPIC) {
                self.groups.unload(tp.partition, offsets.partitions);
            }
            partition.stopped().await;
            let Some(topic) = old.topics.values().find(|t| t.id == tp.topic_id) else { continue };
            let dir = partition.log.borrow().dir.clone();
            if !live_ids.contains(&topic.id) {
                info!(topic = %topic.name, partition = tp.partition, "deleting partition data");
                doomed.push((dir, topic.deleted_dir_name(tp.partition)));
            } else if !meta.hosts(&tp) {
                // Reassigned away from this node: its replica goes, as a
                // restart would remove it. (A replica moved back later
                // starts empty and fetches from the leader.) Each removal
                // gets its own name: the replica may come and go again
                // while an earlier copy is still being removed.
                info!(topic = %topic.name, partition = tp.partition, "replica moved off this node: deleting its data");
                let name =
                    metadata::deleted_dir_name(&topic.name, &tp.partition.to_string(), &metadata::random_topic_id());
                doomed.push((dir, name));
            }
        }
        if !doomed.is_empty() {
            // The renames are durable before the install is done (no new topic
            // of the same name can see the old records); removing the files
            // may take seconds for large partitions, and the metadata log
            // (whose driver awaits installs) must not wait for it.
            match glommio::executor().spawn_blocking(move || admin::rename_partition_dirs(&doomed)).await {
                Ok(renamed) => {
                    let removal = glommio::executor().spawn_blocking(move || admin::remove_renamed_dirs(&renamed));
                    let removals = self.removals_in_flight.clone();
                    removals.set(removals.get() + 1);
                    glommio::spawn_local(async move {
                        removal.await;
                        removals.set(removals.get() - 1);
                    })
                    .detach();
                }
                Err(e) => error!("deleting partition data: {e}"),
            }
        }
    }

    /// Every local partition, for the periodic tasks and shutdown.
    pub fn local_partitions(&self) -> Vec<Rc<Partition>> {
        self.partitions.borrow().values().cloned().collect()
    }

    pub fn local_partitions_by_tp(&self) -> Vec<(TopicPartition, Rc<Partition>)> {
        self.partitions.borrow().iter().map(|(tp, p)| (*tp, p.clone())).collect()
    }

    /// A follower's log diverged from its leader's: closes the partition,
    /// cuts its files at `offset` (`restart`: removes them all and starts
    /// the log at `offset`, for a follower behind the leader's log start),
    /// and opens it again through recovery.
    pub async fn truncate_partition(
        self: &Rc<Self>,
        tp: TopicPartition,
        offset: i64,
        restart: bool,
    ) -> std::io::Result<()> {
        let Some(partition) = self.local_partition(&tp) else { return Ok(()) };
        let (dir, config, epoch, hw) = {
            let log = partition.log.borrow();
            (log.dir.clone(), log.config.clone(), log.leader_epoch, log.replica_hw())
        };
        partition.stop_leading();
        if let Err(e) = partition.close().await {
            warn!(dir = %dir.display(), "closing before truncation: {e:?}");
        }
        let cut_dir = dir.clone();
        glommio::executor()
            .spawn_blocking(move || {
                if restart {
                    storage::truncate::restart_at(&cut_dir, offset)
                } else {
                    storage::truncate::truncate_dir(&cut_dir, offset)
                }
            })
            .await?;
        let log = storage::open_log(&dir, config, epoch).await?;
        let reopened = Partition::start(log);
        {
            let mut log = reopened.log.borrow_mut();
            let end = log.end_offset();
            log.set_replica_hw(hw.min(end));
        }
        let still_ours = self.local_partition(&tp).is_some_and(|p| Rc::ptr_eq(&p, &partition));
        if !still_ours {
            // Deleted or moved while it was cut: the reopened copy is not wanted.
            reopened.discard();
            return Ok(());
        }
        self.partitions.borrow_mut().insert(tp, reopened.clone());
        // Its role may have changed while it was cut (the old partition got
        // it): apply the current one to the partition now in place.
        let meta = self.meta();
        if let Some(topic) = meta.topics.values().find(|t| t.id == tp.topic_id) {
            self.replication.reset_role(&tp);
            crate::replication::install_partition(self, topic, tp.partition, &reopened).await;
        }
        Ok(())
    }

    /// Syncs every partition whose flush.ms has passed with data unsynced.
    pub async fn flush_due(&self) {
        let now = storage::now_ms();
        for partition in self.local_partitions() {
            if partition.policy_flush_due(now) {
                if let Err(e) = partition.flush_all().await {
                    error!(dir = %partition.log.borrow().dir.display(), "flush failed: {e:?}");
                }
            }
        }
    }

    /// Clean shutdown of every local partition.
    pub async fn close_all(&self) {
        self.replication.stop();
        for partition in self.local_partitions() {
            if let Err(e) = partition.close().await {
                error!(dir = %partition.log.borrow().dir.display(), "close failed: {e:?}");
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_millis(self.config.shutdown_drain_timeout_ms);
        while self.removals_in_flight.get() > 0 && std::time::Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn enforce_retention(&self) {
        if self.shard_id == admin::CONTROLLER_SHARD {
            // Space freed since the disk filled: take the metadata reserve back.
            let _ = glommio::executor().spawn_blocking(crate::fsutil::ensure_reserve).await;
        }
        let now = storage::now_ms();
        for partition in self.local_partitions() {
            if let Err(e) = partition.enforce_retention(now).await {
                error!(dir = %partition.log.borrow().dir.display(), "retention failed: {e}");
            }
        }
    }
}

impl Broker {
    /// One pass of the shard's log cleaner over its compacted partitions.
    pub async fn clean_logs(&self) {
        let config = self.config.cleaner();
        for partition in self.local_partitions() {
            if !partition.log.borrow().config.compact {
                continue;
            }
            let dir = partition.log.borrow().dir.clone();
            match storage::cleaner::clean(&partition, &config, storage::now_ms()).await {
                Ok(Some(stats)) => info!(
                    dir = %dir.display(),
                    segments = stats.segments_rewritten,
                    bytes_read = stats.bytes_read,
                    bytes_written = stats.bytes_written,
                    records_removed = stats.records_removed,
                    cleaned_to = stats.cleaned_to,
                    "log cleaned"
                ),
                Ok(None) => {}
                Err(e) => error!(dir = %dir.display(), "log cleaner: {e}"),
            }
        }
    }
}

impl From<StorageError> for PartitionError {
    fn from(e: StorageError) -> Self {
        use crate::storage::batch::BatchError;
        match e {
            StorageError::Batch(BatchError::Truncated | BatchError::BadCrc) => PartitionError::CorruptMessage,
            StorageError::Batch(BatchError::OldMagic(_) | BatchError::BadCount | BatchError::Unsupported) => {
                PartitionError::InvalidRecord
            }
            StorageError::Batch(BatchError::TooLarge { .. }) => PartitionError::MessageTooLarge,
            StorageError::Batch(BatchError::InvalidTimestamp { .. }) => PartitionError::InvalidTimestamp,
            StorageError::OffsetOutOfRange => PartitionError::OffsetOutOfRange,
            StorageError::OutOfOrderSequence => PartitionError::OutOfOrderSequence,
            StorageError::InvalidProducerEpoch => PartitionError::InvalidProducerEpoch,
            StorageError::NotLeader => PartitionError::NotAvailable,
            StorageError::Io(e) => {
                error!("storage error: {e}");
                PartitionError::StorageError
            }
        }
    }
}

/// The committed ISR's size of a partition this node leads (1 when it has
/// no other replica).
fn in_sync_replicas(partition: &Partition) -> usize {
    partition.replicas.borrow().as_ref().map_or(1, |set| set.isr.len())
}

/// How a produce's acks map to storage durability.
pub fn durability_for_acks(acks: i16) -> Durability {
    match acks {
        0 => Durability::Buffered,
        1 => Durability::Written,
        _ => Durability::Synced,
    }
}

/// The first record at or after `timestamp` below the high watermark, as
/// (its timestamp, its offset): Kafka hides what consumers cannot read yet.
async fn offset_for_time(partition: &Partition, timestamp: i64) -> Result<Option<(i64, i64)>, PartitionError> {
    let found = partition.offset_for_time(timestamp).await.map_err(|e| PartitionError::from(StorageError::Io(e)))?;
    let high_watermark = partition.log.borrow().high_watermark();
    Ok(found.filter(|&(_, offset)| offset < high_watermark))
}
