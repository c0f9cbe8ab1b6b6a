//! Metadata changes, run on shard 0 of the active controller: create and
//! delete topics, add partitions, alter topic configs, register and fence
//! brokers (electing new partition leaders), hand out producer ids. Other
//! shards send their changes to shard 0; other nodes forward them to the
//! active controller (`crate::controller`).
//!
//! Changes are group-committed: every change that arrives while a commit is
//! running waits in the controller's queue, and the next commit applies all
//! of them in arrival order to one copy of the metadata, proposes the
//! difference as one entry of the metadata log, and answers once every
//! shard has installed it. A
//! Metadata request auto-creating 2,000 topics is one change, not 2,000
//! rewrites of a 2,000-topic file and 2,000 installs (which held every other
//! admin request for seconds). Commits run in a task of their own, so a
//! client that disconnects never cancels one halfway (persisted, not
//! installed) nor loses the answers of the changes merged with its own.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;
use kafka_protocol::error::ResponseError;
use tracing::{debug, info, warn};

use serde::{Deserialize, Serialize};
use shards::NodeId;

use super::metadata::{
    self, deleted_dir_name, is_partition_dir_name, random_topic_id, valid_topic_name, BrokerRegistration, ClusterMeta,
    PartitionState, TopicMeta, DELETED_DIR_SUFFIX, NO_LEADER,
};
use super::{configs, Broker, ShardMsg};
use crate::config::Config;
use crate::fsutil;

/// The controller shard.
pub const CONTROLLER_SHARD: usize = 0;
/// Topics of a data directory from before the metadata log (read once, to start it).
pub const LEGACY_META_FILE: &str = "topics.json";
/// The first producer id not yet handed out, from before the metadata log.
pub const LEGACY_PRODUCER_ID_FILE: &str = "producer-id-block";
/// Producer ids a shard takes from the controller at a time.
pub const PRODUCER_ID_BLOCK: i64 = 1000;
/// Most changes applied by one commit: bounds the time one commit holds the
/// changes queued behind it.
const MAX_OPS_PER_COMMIT: usize = 1024;

/// A change waiting for the controller's next commit, and where its answer goes.
struct Queued {
    op: AdminOp,
    reply: oneshot::Sender<AdminResult>,
}

thread_local! {
    /// The controller's changes waiting for the next commit. Per thread
    /// because the controller is one shard, and a shard is one thread with
    /// one `Broker`.
    static QUEUE: RefCell<Vec<Queued>> = const { RefCell::new(Vec::new()) };
    /// Whether a committer task is running (it drains the queue until empty).
    static COMMITTER_RUNNING: Cell<bool> = const { Cell::new(false) };
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ConfigChange {
    Set(String, String),
    Delete(String),
    /// IncrementalAlterConfigs' APPEND and SUBTRACT, on list configs only.
    Append(String, String),
    Subtract(String, String),
}

impl ConfigChange {
    pub fn key(&self) -> &str {
        match self {
            ConfigChange::Set(k, _) | ConfigChange::Delete(k) | ConfigChange::Append(k, _) => k,
            ConfigChange::Subtract(k, _) => k,
        }
    }
}

/// Applies `changes` to `configs` in order. `base`: a list config's value
/// when unset (Kafka's default, not the broker's). Err: the key of an
/// APPEND or SUBTRACT on a config that is not a list, and the operation.
fn apply_config_changes(
    configs: &mut BTreeMap<String, String>,
    changes: Vec<ConfigChange>,
    is_list: impl Fn(&str) -> bool,
    base: impl Fn(&str) -> String,
) -> Result<(), (String, &'static str)> {
    for change in changes {
        let (key, items, append) = match change {
            ConfigChange::Set(key, value) => {
                configs.insert(key, value);
                continue;
            }
            ConfigChange::Delete(key) => {
                configs.remove(&key);
                continue;
            }
            ConfigChange::Append(key, items) => (key, items, true),
            ConfigChange::Subtract(key, items) => (key, items, false),
        };
        if !is_list(&key) {
            return Err((key, if append { "APPEND" } else { "SUBTRACT" }));
        }
        let current = configs.get(&key).cloned().unwrap_or_else(|| base(&key));
        let mut list: Vec<String> = super::configs::list_items(&current).map(String::from).collect();
        for item in super::configs::list_items(&items) {
            let at = list.iter().position(|x| x == item);
            match (append, at) {
                (true, None) => list.push(item.to_string()),
                (false, Some(at)) => drop(list.remove(at)),
                _ => {}
            }
        }
        configs.insert(key, list.join(","));
    }
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
pub enum AdminOp {
    CreateTopic {
        name: String,
        partitions: i32,
        /// Each partition's replicas as the client assigned them; empty:
        /// spread `partitions` over the live brokers.
        assignment: Vec<Vec<NodeId>>,
        /// Replicas per partition when spread.
        replication_factor: usize,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        count: i32,
        validate_only: bool,
    },
    /// `replace`: AlterConfigs semantics (unnamed keys revert to defaults).
    AlterConfigs {
        name: String,
        changes: Vec<ConfigChange>,
        replace: bool,
        validate_only: bool,
    },
    /// Dynamic broker configs of `resource` ("" for the cluster default,
    /// or a node id); `replace` as in AlterConfigs.
    AlterBrokerConfigs {
        resource: String,
        changes: Vec<ConfigChange>,
        replace: bool,
        validate_only: bool,
    },
    /// Metadata's auto-create: every valid name not yet a topic becomes one
    /// with `partitions`; names that are invalid or exist are skipped (the
    /// Metadata answer tells the client), so only a storage error fails it.
    AutoCreateTopics {
        names: Vec<String>,
        partitions: i32,
    },
    /// Creates `__consumer_offsets` unless it exists (on the first group request).
    EnsureOffsetsTopic {
        partitions: i32,
        configs: BTreeMap<String, String>,
    },
    /// A broker heartbeating while not registered live at its endpoint:
    /// registered (again) and unfenced; it leads again what it alone can lead.
    RegisterBroker {
        registration: BrokerRegistration,
    },
    /// A broker silent past its session: fenced, its partitions led by
    /// another in-sync replica (or none).
    FenceBroker {
        node: NodeId,
    },
    /// Reserves the next block of producer ids; answers its first id.
    AllocateProducerIds,
    /// A partition's leader changes its ISR (Kafka's AlterPartition): only
    /// the current leader, in its current epoch, may.
    AlterPartition {
        topic: String,
        partition: i32,
        leader: NodeId,
        leader_epoch: i32,
        isr: Vec<NodeId>,
    },
    /// ElectLeaders: each partition's preferred replica leads if it is live
    /// and in sync (`unclean`: a leaderless partition gets any live replica).
    ElectLeaders {
        partitions: Vec<(String, i32)>,
        unclean: bool,
    },
    /// AlterPartitionReassignments: moves a partition to `target` replicas
    /// (None cancels a reassignment under way). New replicas join as
    /// followers; once all are in sync, the old ones are dropped.
    Reassign {
        topic: String,
        partition: i32,
        target: Option<Vec<NodeId>>,
    },
}

impl AdminOp {
    /// The topic this op deletes, if it is a deletion.
    fn deleted_topic(&self) -> Option<&str> {
        match self {
            AdminOp::DeleteTopic { name } => Some(name),
            _ => None,
        }
    }

    /// The topics this op may create.
    fn created_topics(&self) -> Vec<&str> {
        match self {
            AdminOp::CreateTopic { name, .. } => vec![name.as_str()],
            AdminOp::AutoCreateTopics { names, .. } => names.iter().map(String::as_str).collect(),
            AdminOp::EnsureOffsetsTopic { .. } => vec![crate::group::OFFSETS_TOPIC],
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminError {
    pub code: i16,
    pub message: String,
}

/// Ok: the op's value (the first producer id of a block; 0 for other ops).
pub type AdminResult = Result<i64, AdminError>;

/// The topic named, or UNKNOWN_TOPIC_OR_PARTITION.
fn existing_topic<'a>(meta: &'a ClusterMeta, name: &str) -> Result<&'a Arc<TopicMeta>, AdminError> {
    meta.topic(name).ok_or_else(|| AdminError {
        code: ResponseError::UnknownTopicOrPartition.code(),
        message: format!("no topic {name:?}"),
    })
}

fn fail(error: ResponseError, message: impl Into<String>) -> Result<(), AdminError> {
    Err(AdminError { code: error.code(), message: message.into() })
}

impl Broker {
    /// Runs a metadata change on the active controller, from any shard of any node.
    pub async fn admin(self: &Rc<Self>, op: AdminOp) -> AdminResult {
        if self.shard_id == CONTROLLER_SHARD {
            return self.admin_here(op).await;
        }
        self.mailbox.call(CONTROLLER_SHARD, |reply| ShardMsg::Admin { op, reply }).await.unwrap_or_else(|e| {
            Err(AdminError { code: ResponseError::UnknownServerError.code(), message: e.to_string() })
        })
    }

    /// Shard 0: runs `op` here if this node is the active controller, else forwards it.
    pub(super) async fn admin_here(self: &Rc<Self>, op: AdminOp) -> AdminResult {
        let controller = self.controller();
        if controller.is_leader() {
            self.run_admin(op).await
        } else {
            controller.forward(op).await
        }
    }

    /// Active controller: queues `op` for the next commit and waits for its answer.
    pub(crate) async fn run_admin(self: &Rc<Self>, op: AdminOp) -> AdminResult {
        assert_eq!(self.shard_id, CONTROLLER_SHARD, "metadata changes run on the controller");
        let (reply, answer) = oneshot::channel();
        QUEUE.with(|queue| queue.borrow_mut().push(Queued { op, reply }));
        if !COMMITTER_RUNNING.replace(true) {
            let broker = self.clone();
            glommio::spawn_local(async move { broker.commit_queued().await }).detach();
        }
        answer.await.unwrap_or_else(|_| {
            Err(AdminError {
                code: ResponseError::UnknownServerError.code(),
                message: "the controller dropped the change".into(),
            })
        })
    }

    /// The committer task: commits the queued changes, group by group, until
    /// the queue is empty.
    async fn commit_queued(self: &Rc<Self>) {
        loop {
            // Let changes already delivered to this shard join this commit.
            glommio::executor().yield_now().await;
            let permit = self.admin_lock.acquire_permit(1).await;
            let batch = QUEUE.with(|queue| {
                let mut queue = queue.borrow_mut();
                let n = queue.len().min(MAX_OPS_PER_COMMIT);
                queue.drain(..n).collect::<Vec<_>>()
            });
            if batch.is_empty() {
                COMMITTER_RUNNING.set(false);
                return;
            }
            match permit {
                Ok(_permit) => {
                    for group in commit_groups(batch) {
                        self.commit(group).await;
                    }
                }
                Err(e) => batch.into_iter().for_each(|q| {
                    let _ = q.reply.send(Err(AdminError { code: -1, message: e.to_string() }));
                }),
            }
        }
    }

    /// Applies `group` in order to one copy of the metadata, then commits
    /// the difference to the metadata log once (which installs it on every
    /// shard); answers each change.
    async fn commit(self: &Rc<Self>, group: Vec<Queued>) {
        // The controller's image, not this shard's installed snapshot: it may
        // hold committed entries not installed yet, which a change computed
        // against an older image would undo.
        let old = Arc::new(self.controller().image());
        let mut meta = (*old).clone();
        let mut answers = Vec::with_capacity(group.len());
        for Queued { op, reply } in group {
            let result = self.apply(&mut meta, op);
            answers.push((reply, result));
        }
        let records = crate::controller::records::diff(&old, &meta);
        if !records.is_empty() {
            match self.controller().propose(&records).await {
                Ok(index) => info!(records = records.len(), index, topics = meta.topics.len(), "metadata committed"),
                Err(error) => {
                    for (_, result) in answers.iter_mut().filter(|(_, r)| matches!(r, Ok((true, _)))) {
                        *result = Err(error.clone());
                    }
                }
            }
        }
        for (reply, result) in answers {
            let _ = reply.send(result.map(|(_changed, value)| value));
        }
    }

    /// Applies `op` to `meta` unless it is validate-only; returns whether
    /// `meta` changed and the op's value. A failed op leaves `meta` as it was.
    fn apply(&self, meta: &mut ClusterMeta, op: AdminOp) -> Result<(bool, i64), AdminError> {
        match op {
            AdminOp::RegisterBroker { registration } => {
                info!(node = registration.node_id, host = %registration.host, port = registration.port, "broker registered");
                let node = registration.node_id;
                meta.brokers.insert(node, registration);
                reelect(meta, node, false);
                Ok((true, 0))
            }
            AdminOp::FenceBroker { node } => {
                let Some(broker) = meta.brokers.get_mut(&node).filter(|b| !b.fenced) else { return Ok((false, 0)) };
                broker.fenced = true;
                reelect(meta, node, true);
                Ok((true, 0))
            }
            AdminOp::AllocateProducerIds => {
                let start = meta.next_producer_id;
                meta.next_producer_id = start + PRODUCER_ID_BLOCK;
                Ok((true, start))
            }
            AdminOp::AlterPartition { topic, partition, leader, leader_epoch, isr } => {
                alter_partition(meta, &topic, partition, leader, leader_epoch, isr).map(|changed| (changed, 0))
            }
            AdminOp::ElectLeaders { partitions, unclean } => Ok((elect_leaders(meta, &partitions, unclean) > 0, 0)),
            AdminOp::Reassign { topic, partition, target } => {
                reassign(meta, &topic, partition, target).map(|changed| (changed, 0))
            }
            op => self.apply_topic_op(meta, op).map(|changed| (changed, 0)),
        }
    }

    fn apply_topic_op(&self, meta: &mut ClusterMeta, op: AdminOp) -> Result<bool, AdminError> {
        let limit = self.config.max_partitions_per_topic;
        match op {
            AdminOp::RegisterBroker { .. }
            | AdminOp::FenceBroker { .. }
            | AdminOp::AllocateProducerIds
            | AdminOp::AlterPartition { .. }
            | AdminOp::ElectLeaders { .. }
            | AdminOp::Reassign { .. } => unreachable!("handled by apply"),
            AdminOp::CreateTopic { name, partitions, replication_factor, assignment, configs, validate_only } => {
                if !valid_topic_name(&name) {
                    fail(ResponseError::InvalidTopicException, format!("invalid topic name {name:?}"))?;
                }
                if meta.topic(&name).is_some() {
                    fail(ResponseError::TopicAlreadyExists, format!("topic {name:?} already exists"))?;
                }
                if partitions < 1 || partitions > limit {
                    fail(ResponseError::InvalidPartitions, format!("partitions must be 1..={limit}"))?;
                }
                if let Err(message) = metadata::check_user_configs(&configs) {
                    fail(ResponseError::InvalidConfig, message)?;
                }
                let states = if assignment.is_empty() {
                    spread(meta, &name, 0, partitions, replication_factor)?
                } else {
                    explicit_assignment(meta, assignment)?
                };
                if validate_only {
                    return Ok(false);
                }
                info!(topic = %name, partitions, "creating topic");
                meta.put_topic(new_topic(name, configs, states));
                Ok(true)
            }
            AdminOp::AutoCreateTopics { names, partitions } => {
                let factor = self.config.default_replication_factor as usize;
                Ok(auto_create(meta, names, partitions, factor)? > 0)
            }
            AdminOp::EnsureOffsetsTopic { partitions, configs } => {
                let name = crate::group::OFFSETS_TOPIC.to_string();
                if meta.topic(&name).is_some() {
                    return Ok(false);
                }
                info!(topic = %name, partitions, "creating the consumer offsets topic");
                let live = meta.live_brokers().count();
                let factor = self.config.offsets_topic_replication_factor.min(live.max(1));
                let states = spread(meta, &name, 0, partitions, factor)?;
                meta.put_topic(new_topic(name, configs, states));
                Ok(true)
            }
            AdminOp::DeleteTopic { name } => {
                if meta.topic(&name).is_some_and(|t| t.is_internal()) {
                    fail(
                        ResponseError::InvalidTopicException,
                        format!("{name} is internal: its groups would be lost"),
                    )?;
                }
                if meta.remove_topic(&name).is_none() {
                    fail(ResponseError::UnknownTopicOrPartition, format!("no topic {name:?}"))?;
                }
                info!(topic = %name, "deleting topic");
                Ok(true)
            }
            AdminOp::CreatePartitions { name, count, validate_only } => {
                let topic = existing_topic(meta, &name)?;
                if topic.is_internal() {
                    fail(
                        ResponseError::InvalidRequest,
                        format!("{name} is internal: groups are placed by its partition count"),
                    )?;
                }
                if count <= topic.partitions {
                    fail(
                        ResponseError::InvalidPartitions,
                        format!("topic has {} partitions; the count can only grow", topic.partitions),
                    )?;
                }
                if count > limit {
                    fail(ResponseError::InvalidPartitions, format!("partitions must be at most {limit}"))?;
                }
                let factor = topic.assignment.first().map_or(1, |p| p.replicas.len());
                let added = spread(meta, &name, topic.partitions, count - topic.partitions, factor)?;
                if validate_only {
                    return Ok(false);
                }
                info!(topic = %name, from = topic.partitions, to = count, "adding partitions");
                let mut grown = (**topic).clone();
                grown.partitions = count;
                grown.assignment.extend(added);
                meta.put_topic(grown);
                Ok(true)
            }
            AdminOp::AlterConfigs { name, changes, replace, validate_only } => {
                let topic = existing_topic(meta, &name)?;
                if topic.is_internal() {
                    fail(ResponseError::InvalidRequest, format!("{name} is internal: its configs are the broker's"))?;
                }
                let mut altered = (**topic).clone();
                if replace {
                    altered.configs.clear();
                }
                let keys: HashSet<String> = changes.iter().map(|c| c.key().to_string()).collect();
                let is_list = |key: &str| configs::topic_config(key).is_some_and(|c| c.kind == configs::Kind::List);
                let base = |key: &str| {
                    let def = configs::topic_config(key).expect("a list config");
                    configs::resolve_topic_config(def, &BTreeMap::new(), &Config::default(), &BTreeMap::new()).value
                };
                if let Err((key, op)) = apply_config_changes(&mut altered.configs, changes, is_list, base) {
                    fail(
                        ResponseError::InvalidConfig,
                        format!("Can't {op} to key {key} because its type is not LIST."),
                    )?;
                }
                // The keys changed, as they end up (what was stored before
                // is kept as it is, even if a later check would refuse it).
                let changed: BTreeMap<String, String> = altered
                    .configs
                    .iter()
                    .filter(|(k, _)| replace || keys.contains(k.as_str()) || k.contains("compaction.lag"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if let Err(message) = metadata::check_user_configs(&changed) {
                    fail(ResponseError::InvalidConfig, message)?;
                }
                if validate_only {
                    return Ok(false);
                }
                info!(topic = %name, configs = ?altered.configs, "topic configs changed");
                meta.put_topic(altered);
                Ok(true)
            }
            AdminOp::AlterBrokerConfigs { resource, changes, replace, validate_only } => {
                let mut altered = if replace {
                    BTreeMap::new()
                } else {
                    meta.broker_configs.get(&resource).cloned().unwrap_or_default()
                };
                for change in &changes {
                    if let Err((is_static, message)) = configs::check_broker_key(change.key()) {
                        let error =
                            if is_static { ResponseError::InvalidRequest } else { ResponseError::InvalidConfig };
                        fail(error, message)?;
                    }
                }
                let is_list = |key: &str| configs::broker_key_kind(key) == Some(configs::Kind::List);
                let base = |key: &str| configs::static_topic_default(key, &Config::default());
                if let Err((key, op)) = apply_config_changes(&mut altered, changes, is_list, base) {
                    let op = op.to_lowercase();
                    fail(
                        ResponseError::InvalidConfig,
                        format!("Config value {op} is not allowed for config key: {key}"),
                    )?;
                }
                for (key, value) in &altered {
                    if let Err((_, message)) = configs::check_broker_config(key, value) {
                        // Kafka answers a broker config's bad value so (KAFKA-13609).
                        fail(ResponseError::InvalidRequest, message)?;
                    }
                }
                let lag = |key: &str| altered.get(key);
                let (min, max) = (lag("log.cleaner.min.compaction.lag.ms"), lag("log.cleaner.max.compaction.lag.ms"));
                let names = ("log.cleaner.min.compaction.lag.ms", "log.cleaner.max.compaction.lag.ms");
                if let Err(message) = configs::check_compaction_lags(min, max, names) {
                    fail(ResponseError::InvalidRequest, message)?;
                }
                if validate_only {
                    return Ok(false);
                }
                info!(resource = %resource, configs = ?altered, "broker configs changed");
                if altered.is_empty() {
                    meta.broker_configs.remove(&resource);
                } else {
                    meta.broker_configs.insert(resource, altered);
                }
                Ok(true)
            }
        }
    }

    /// Sends the snapshot to every shard (this one included) and waits for all.
    pub async fn install_everywhere(self: &Rc<Self>, meta: Arc<ClusterMeta>) {
        let installs = (0..self.shard_count).map(|shard| {
            let meta = meta.clone();
            Box::pin(async move {
                if shard == self.shard_id {
                    self.install(meta).await;
                } else {
                    let _ = self.mailbox.call(shard, |reply| ShardMsg::Install { meta, reply }).await;
                }
            })
        });
        futures::future::join_all(installs).await;
    }

    /// A fresh producer id for an idempotent producer, from this shard's block,
    /// taking a new block from the controller when it runs out (the block is
    /// committed to the metadata log first: no id is ever given twice).
    pub async fn next_producer_id(self: &Rc<Self>) -> Result<i64, AdminError> {
        let (next, end) = self.producer_ids.get();
        if next < end {
            self.producer_ids.set((next + 1, end));
            return Ok(next);
        }
        let start = self.admin(AdminOp::AllocateProducerIds).await?;
        self.producer_ids.set((start + 1, start + PRODUCER_ID_BLOCK));
        Ok(start)
    }

    /// Shard 0 at start-up: opens the metadata log (and with it every
    /// shard's partitions), registers this node with the active controller,
    /// and lets the shards serve once this node has caught up with the
    /// quorum and is registered.
    pub async fn load_metadata(self: &Rc<Self>) -> anyhow::Result<()> {
        let controller = crate::controller::Controller::start(self).await?;
        *self.controller.borrow_mut() = Some(controller.clone());
        glommio::spawn_local(controller.clone().heartbeat_loop()).detach();
        let mut waited_ms = 0u64;
        while !(controller.caught_up() && controller.registered()) {
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            waited_ms += 10;
            if waited_ms.is_multiple_of(5000) {
                info!(controller = controller.leader(), "waiting for the controller quorum to register this node");
            }
        }
        info!(topics = self.meta().topics.len(), index = controller.applied_index(), "metadata loaded");
        // Only now may any shard serve: a request on one shard can route to
        // partitions of every other.
        self.ready.set(true);
        for shard in (0..self.shard_count).filter(|&s| s != self.shard_id) {
            self.mailbox
                .send(shard, ShardMsg::Start)
                .await
                .map_err(|e| anyhow::anyhow!("starting shard {shard}: {e}"))?;
        }
        Ok(())
    }

    /// Start-up, before any partition is opened: removes directories renamed
    /// `*-delete` by a deletion that a crash interrupted, and the partition
    /// directories of topics `topics.json` no longer has (a crash after the
    /// deletion was persisted, before its directories were renamed). So a
    /// topic created again under a deleted one's name always starts empty.
    pub(crate) async fn remove_leftover_dirs(&self, meta: &ClusterMeta) -> std::io::Result<()> {
        let data_dir = self.config.data_dir.clone();
        let live = meta.partition_dir_names();
        let removed = glommio::executor().spawn_blocking(move || remove_leftover_dirs(&data_dir, &live)).await?;
        if removed > 0 {
            warn!(directories = removed, "removed the data of partitions deleted before a crash");
        }
        Ok(())
    }
}

/// The ops of a batch in commit groups, in order. A group ends before an op
/// creating a topic that an earlier op of the group deletes: one install
/// would open the new topic's partitions (by name) before the old ones'
/// directories are renamed away, and the new topic would start with the old
/// records.
fn commit_groups(batch: Vec<Queued>) -> Vec<Vec<Queued>> {
    let mut groups: Vec<Vec<Queued>> = vec![Vec::new()];
    let mut deleted: HashSet<String> = HashSet::new();
    for queued in batch {
        if queued.op.created_topics().iter().any(|name| deleted.contains(*name)) {
            groups.push(Vec::new());
            deleted.clear();
        }
        if let Some(name) = queued.op.deleted_topic() {
            deleted.insert(name.to_string());
        }
        groups.last_mut().expect("at least one group").push(queued);
    }
    groups
}

/// Creates each valid name of `names` that is not a topic yet; returns how many.
fn auto_create(
    meta: &mut ClusterMeta,
    names: Vec<String>,
    partitions: i32,
    factor: usize,
) -> Result<usize, AdminError> {
    let mut created = 0;
    for name in names {
        if !valid_topic_name(&name) || meta.topic(&name).is_some() {
            continue;
        }
        debug!(topic = %name, partitions, "auto-creating topic");
        let states = spread(meta, &name, 0, partitions, factor)?;
        meta.put_topic(new_topic(name, BTreeMap::new(), states));
        created += 1;
    }
    if created > 0 {
        info!(topics = created, partitions, "auto-created topics");
    }
    Ok(created)
}

fn new_topic(name: String, configs: BTreeMap<String, String>, assignment: Vec<PartitionState>) -> TopicMeta {
    let partitions = assignment.len() as i32;
    TopicMeta { name, id: random_topic_id(), partitions, configs, legacy_leader_epoch: 0, assignment }
}

/// Partitions `first..first + count` of topic `name`, `factor` replicas
/// each, spread round-robin over the live brokers from a point the name
/// picks (so that one-partition topics do not all land on the lowest node
/// id): partition p's replicas are the `factor` brokers from its start on,
/// so leaders (the first replica) and followers are both spread evenly.
fn spread(
    meta: &ClusterMeta,
    name: &str,
    first: i32,
    count: i32,
    factor: usize,
) -> Result<Vec<PartitionState>, AdminError> {
    let live: Vec<NodeId> = meta.live_brokers().map(|b| b.node_id).collect();
    if live.is_empty() {
        return Err(AdminError {
            code: ResponseError::BrokerNotAvailable.code(),
            message: "no live broker to place partitions on".into(),
        });
    }
    if factor < 1 || factor > live.len() {
        return Err(AdminError {
            code: ResponseError::InvalidReplicationFactor.code(),
            message: format!("replication factor {factor} needs as many live brokers; {} are live", live.len()),
        });
    }
    let start = metadata::topic_hash(name) as usize;
    Ok((first..first + count)
        .map(|p| {
            let replicas: Vec<NodeId> = (0..factor).map(|k| live[(start + p as usize + k) % live.len()]).collect();
            PartitionState::led_by(replicas[0], replicas, 0)
        })
        .collect())
}

/// Elects the preferred (or, `unclean`, any live) replica of each named
/// partition where that changes its leader; returns how many changed.
fn elect_leaders(meta: &mut ClusterMeta, partitions: &[(String, i32)], unclean: bool) -> usize {
    let mut elected = 0;
    for (topic, partition) in partitions {
        let Some(existing) = meta.topic(topic).filter(|t| *partition >= 0 && *partition < t.partitions).cloned() else {
            continue;
        };
        let state = existing.partition(*partition);
        let live = |b: &NodeId| meta.brokers.get(b).is_some_and(|r| !r.fenced);
        let candidate = if unclean {
            state.replicas.iter().copied().find(|b| live(b)).filter(|_| state.leader == NO_LEADER)
        } else {
            Some(state.replicas[0]).filter(|p| *p != state.leader && live(p) && state.isr.contains(p))
        };
        let Some(leader) = candidate else { continue };
        let mut changed = (*existing).clone();
        let state = &mut changed.assignment[*partition as usize];
        info!(topic, partition, from = state.leader, to = leader, unclean, "electing a leader");
        state.leader = leader;
        state.leader_epoch += 1;
        if !state.isr.contains(&leader) {
            state.isr = vec![leader]; // unclean: only it is known in sync
        }
        meta.put_topic(changed);
        elected += 1;
    }
    elected
}

/// AlterPartition: the leader in its epoch sets the ISR; it must be made of
/// the partition's replicas, hold the leader, and add only live brokers.
fn alter_partition(
    meta: &mut ClusterMeta,
    topic: &str,
    partition: i32,
    leader: NodeId,
    leader_epoch: i32,
    isr: Vec<NodeId>,
) -> Result<bool, AdminError> {
    let existing = existing_topic(meta, topic)?.clone();
    if partition < 0 || partition >= existing.partitions {
        fail(ResponseError::UnknownTopicOrPartition, format!("no partition {topic}-{partition}"))?;
    }
    let state = existing.partition(partition);
    if state.leader != leader || state.leader_epoch != leader_epoch {
        fail(
            ResponseError::FencedLeaderEpoch,
            format!("{topic}-{partition} is led by {} in epoch {}", state.leader, state.leader_epoch),
        )?;
    }
    let live = |b: &NodeId| meta.brokers.get(b).is_some_and(|r| !r.fenced);
    let valid = isr.contains(&leader)
        && isr.iter().all(|n| state.replicas.contains(n))
        && isr.iter().filter(|n| !state.isr.contains(n)).all(live);
    if !valid {
        fail(
            ResponseError::InvalidRequest,
            format!("ISR {isr:?} of {topic}-{partition} is not a set of live replicas"),
        )?;
    }
    if isr == state.isr {
        return Ok(false);
    }
    info!(topic, partition, from = ?state.isr, to = ?isr, "ISR changed");
    let mut changed = (*existing).clone();
    let state = &mut changed.assignment[partition as usize];
    state.isr = isr;
    if !state.adding.is_empty() && state.adding.iter().all(|n| state.isr.contains(n)) {
        let target = state.target_replicas();
        finish_reassignment(meta, topic, partition, state, target);
    }
    meta.put_topic(changed);
    Ok(true)
}

/// Starts (or cancels) moving a partition's replicas. With nothing to add
/// it completes at once; otherwise when the last added replica joins the ISR.
fn reassign(
    meta: &mut ClusterMeta,
    topic: &str,
    partition: i32,
    target: Option<Vec<NodeId>>,
) -> Result<bool, AdminError> {
    let existing = existing_topic(meta, topic)?.clone();
    if partition < 0 || partition >= existing.partitions {
        fail(ResponseError::UnknownTopicOrPartition, format!("no partition {topic}-{partition}"))?;
    }
    let mut changed = (*existing).clone();
    let state = &mut changed.assignment[partition as usize];
    let original: Vec<NodeId> = state.replicas.iter().copied().filter(|n| !state.adding.contains(n)).collect();
    let target = match target {
        Some(target) => {
            check_replicas(meta, &target)?;
            target
        }
        None if state.adding.is_empty() && state.removing.is_empty() => {
            return Err(AdminError {
                code: ResponseError::NoReassignmentInProgress.code(),
                message: format!("{topic}-{partition} is not being reassigned"),
            });
        }
        None => original.clone(),
    };
    if target == state.replicas && state.adding.is_empty() && state.removing.is_empty() {
        return Ok(false);
    }
    state.adding = target.iter().copied().filter(|n| !original.contains(n)).collect();
    state.removing = original.iter().copied().filter(|n| !target.contains(n)).collect();
    state.replicas = target.iter().chain(&state.removing).copied().collect();
    info!(topic, partition, ?target, adding = ?state.adding, removing = ?state.removing, "reassigning partition");
    if state.adding.iter().all(|n| state.isr.contains(n)) {
        finish_reassignment(meta, topic, partition, state, target);
    }
    meta.put_topic(changed);
    Ok(true)
}

/// The replicas a client names: some, none twice, all registered brokers.
fn check_replicas(meta: &ClusterMeta, replicas: &[NodeId]) -> Result<(), AdminError> {
    let distinct: HashSet<NodeId> = replicas.iter().copied().collect();
    let invalid = |message: String| AdminError { code: ResponseError::InvalidReplicaAssignment.code(), message };
    if replicas.is_empty() || distinct.len() != replicas.len() {
        return Err(invalid(format!("replicas {replicas:?} are empty or repeat a broker")));
    }
    match replicas.iter().find(|b| !meta.brokers.contains_key(b)) {
        Some(unknown) => Err(invalid(format!("broker {unknown} is not registered"))),
        None => Ok(()),
    }
}

/// Every added replica is in sync: the partition keeps only `target`; a
/// leader that is no longer a replica hands over to the first live in-sync
/// one of the new set (a new epoch).
fn finish_reassignment(
    meta: &ClusterMeta,
    topic: &str,
    partition: i32,
    state: &mut PartitionState,
    target: Vec<NodeId>,
) {
    let live = |b: &NodeId| meta.brokers.get(b).is_some_and(|r| !r.fenced);
    state.isr.retain(|n| target.contains(n));
    state.replicas = target;
    state.adding.clear();
    state.removing.clear();
    if !state.replicas.contains(&state.leader) {
        let next = state.replicas.iter().copied().find(|n| state.isr.contains(n) && live(n));
        state.leader = next.unwrap_or(NO_LEADER);
        state.leader_epoch += 1;
    }
    info!(topic, partition, replicas = ?state.replicas, leader = state.leader, "reassignment complete");
}

/// A client's explicit assignment: every replica a registered broker, none twice.
fn explicit_assignment(meta: &ClusterMeta, assignment: Vec<Vec<NodeId>>) -> Result<Vec<PartitionState>, AdminError> {
    let mut states = Vec::with_capacity(assignment.len());
    for (p, replicas) in assignment.into_iter().enumerate() {
        check_replicas(meta, &replicas)
            .map_err(|e| AdminError { code: e.code, message: format!("partition {p}: {}", e.message) })?;
        let leader = replicas.iter().copied().find(|b| meta.brokers[b].fenced.then_some(()).is_none());
        states.push(PartitionState {
            isr: replicas.clone(),
            leader: leader.unwrap_or(NO_LEADER),
            leader_epoch: 0,
            replicas,
            adding: Vec::new(),
            removing: Vec::new(),
        });
    }
    Ok(states)
}

/// After `node` was fenced (`fenced`) or registered again: every partition
/// it led gets a new leader from the rest of its ISR (none: no leader, the
/// partition is offline until one returns); every leaderless partition
/// whose ISR has `node` is led by it again. Each change bumps the epoch.
fn reelect(meta: &mut ClusterMeta, node: NodeId, fenced: bool) {
    let live = |meta: &ClusterMeta, b: NodeId| meta.brokers.get(&b).is_some_and(|r| !r.fenced);
    let topics: Vec<Arc<TopicMeta>> = meta.topics.values().cloned().collect();
    const UNCLEAN: &str = "unclean.leader.election.enable";
    // The topic's own value, else the cluster-wide dynamic default.
    let is_true = |v: &String| v.trim().eq_ignore_ascii_case("true");
    let cluster_unclean = meta.broker_configs.get("").and_then(|c| c.get(UNCLEAN)).is_some_and(is_true);
    for topic in topics {
        let mut changed = (*topic).clone();
        let unclean = changed.configs.get(UNCLEAN).map_or(cluster_unclean, is_true);
        let mut touched = false;
        for state in &mut changed.assignment {
            if fenced && state.isr.len() > 1 && state.isr.contains(&node) && state.leader != node {
                // A fenced follower is out of sync (KRaft drops it from every ISR).
                state.isr.retain(|b| *b != node);
                touched = true;
                continue;
            }
            if fenced && state.leader == node {
                let next = state.isr.iter().copied().find(|b| *b != node && live(meta, *b));
                // Unclean election, where the topic allows it: any live replica.
                let next = next.or_else(|| {
                    unclean.then(|| state.replicas.iter().copied().find(|b| *b != node && live(meta, *b))).flatten()
                });
                state.leader = next.unwrap_or(NO_LEADER);
                if let Some(next) = next.filter(|n| !state.isr.contains(n)) {
                    state.isr = vec![next]; // unclean: it alone is in sync now
                } else if state.isr.len() > 1 {
                    state.isr.retain(|b| *b != node);
                }
            } else if !fenced && state.leader == NO_LEADER && state.isr.contains(&node) {
                state.leader = node;
            } else {
                continue;
            }
            state.leader_epoch += 1;
            touched = true;
        }
        if touched {
            info!(topic = %changed.name, node, fenced, "partition leaders changed");
            meta.put_topic(changed);
        }
    }
}

/// Renames deleted partitions' directories, `(directory, its -delete name)`,
/// and makes the renames durable, so that a crash halfway through a removal
/// never leaves a partly removed directory under a name a topic could open;
/// the files are removed afterwards ([`remove_renamed_dirs`]). A directory
/// that is already gone is skipped. Returns the new paths. Blocking.
pub(super) fn rename_partition_dirs(dirs: &[(PathBuf, String)]) -> std::io::Result<Vec<PathBuf>> {
    let mut doomed = Vec::with_capacity(dirs.len());
    for (dir, deleted_name) in dirs {
        let target = dir.with_file_name(deleted_name);
        match std::fs::rename(dir, &target) {
            Ok(()) => doomed.push(target),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    // One sync per parent directory covers all the renames into it.
    let parents: HashSet<&Path> = doomed.iter().filter_map(|d| d.parent()).collect();
    for parent in parents {
        fsutil::sync_dir(parent)?;
    }
    Ok(doomed)
}

/// Removes directories renamed by [`rename_partition_dirs`]. Blocking, and
/// slow for large partitions: nothing waits for it.
pub(super) fn remove_renamed_dirs(doomed: &[PathBuf]) {
    for dir in doomed {
        remove_renamed_dir(dir);
    }
}

/// Removes a directory already renamed to a `-delete` name. A failure is
/// only logged: no topic can open it under that name, and the next start
/// tries again.
fn remove_renamed_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        warn!(dir = %dir.display(), "cannot remove deleted partition data (retried at next start): {e}");
    }
}

/// See [`Broker::remove_leftover_dirs`]; `live` holds the partition directory
/// names of the topics that exist. Only directories are considered: the data
/// directory belongs to spate, but files in it (metadata, probe and lock
/// files) are never partitions. Returns how many directories were removed.
/// Blocking.
fn remove_leftover_dirs(data_dir: &Path, live: &HashSet<String>) -> std::io::Result<usize> {
    let mut deleted = Vec::new();
    let mut orphans = Vec::new();
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let Ok(name) = entry.file_name().into_string() else { continue };
        if name.ends_with(DELETED_DIR_SUFFIX) {
            deleted.push(entry.path());
        } else if is_partition_dir_name(&name) && !live.contains(&name) {
            debug!(dir = %name, "removing the directory of a partition deleted before a crash");
            let (topic, partition) = name.rsplit_once('-').expect("a partition directory name");
            orphans.push((entry.path(), deleted_dir_name(topic, partition, &random_topic_id())));
        }
    }
    for dir in &deleted {
        remove_renamed_dir(dir);
    }
    remove_renamed_dirs(&rename_partition_dirs(&orphans)?);
    Ok(deleted.len() + orphans.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(op: AdminOp) -> Queued {
        Queued { op, reply: oneshot::channel().0 }
    }

    fn create(name: &str) -> Queued {
        queued(AdminOp::CreateTopic {
            name: name.into(),
            partitions: 1,
            replication_factor: 1,
            assignment: Vec::new(),
            configs: BTreeMap::new(),
            validate_only: false,
        })
    }

    fn delete(name: &str) -> Queued {
        queued(AdminOp::DeleteTopic { name: name.into() })
    }

    #[test]
    fn a_create_after_a_delete_of_its_name_starts_a_new_group() {
        let auto = queued(AdminOp::AutoCreateTopics { names: vec!["c".into(), "a".into()], partitions: 1 });
        let batch = vec![create("a"), delete("a"), create("b"), auto, delete("b"), create("b"), create("d")];
        let sizes: Vec<usize> = commit_groups(batch).iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 2, 2]);
        assert_eq!(commit_groups(vec![create("x"), create("y"), delete("z")]).len(), 1);
    }

    fn broker(node: NodeId) -> BrokerRegistration {
        BrokerRegistration { node_id: node, host: "h".into(), port: 9000 + node, fenced: false }
    }

    #[test]
    fn fencing_moves_leadership_within_the_isr_and_registration_brings_it_back() {
        let mut meta = ClusterMeta::new(1, 1, Vec::new());
        for node in 1..=3 {
            meta.brokers.insert(node, broker(node));
        }
        let states = vec![
            PartitionState::led_by(1, vec![1, 2, 3], 4), // replicated: moves to 2
            PartitionState::led_by(1, vec![1], 0),       // alone: offline
            PartitionState::led_by(2, vec![2, 1], 0),    // not led by 1: untouched
        ];
        meta.put_topic(new_topic("t".into(), BTreeMap::new(), states));
        meta.brokers.get_mut(&1).unwrap().fenced = true;
        reelect(&mut meta, 1, true);
        let t = meta.topic("t").unwrap().clone();
        assert_eq!(
            (t.partition(0).leader, t.partition(0).leader_epoch, t.partition(0).isr.clone()),
            (2, 5, vec![2, 3])
        );
        assert_eq!((t.partition(1).leader, t.partition(1).leader_epoch), (NO_LEADER, 1));
        assert_eq!((t.partition(2).leader, t.partition(2).leader_epoch), (2, 0));
        assert_eq!(meta.placement(&t.tp(1)).unwrap().leader, NO_LEADER);

        meta.brokers.insert(1, broker(1));
        reelect(&mut meta, 1, false);
        let t = meta.topic("t").unwrap().clone();
        assert_eq!((t.partition(1).leader, t.partition(1).leader_epoch), (1, 2), "back as the only ISR member");
        assert_eq!(t.partition(0).leader, 2, "a live leader keeps leading");
    }

    #[test]
    fn only_the_leader_in_its_epoch_alters_the_isr() {
        let mut meta = ClusterMeta::new(1, 1, Vec::new());
        for node in 1..=3 {
            meta.brokers.insert(node, broker(node));
        }
        let states = spread(&meta, "t", 0, 1, 3).unwrap();
        let leader = states[0].leader;
        meta.put_topic(new_topic("t".into(), BTreeMap::new(), states));
        let others: Vec<NodeId> = (1..=3).filter(|n| *n != leader).collect();
        assert!(alter_partition(&mut meta, "t", 0, others[0], 0, vec![others[0]]).is_err(), "not the leader");
        assert!(alter_partition(&mut meta, "t", 0, leader, 1, vec![leader]).is_err(), "stale epoch");
        assert!(alter_partition(&mut meta, "t", 0, leader, 0, vec![others[0]]).is_err(), "ISR without its leader");
        assert!(alter_partition(&mut meta, "t", 0, leader, 0, vec![leader, 7]).is_err(), "not a replica");
        assert!(alter_partition(&mut meta, "t", 0, leader, 0, vec![leader, others[0]]).unwrap());
        assert_eq!(meta.topic("t").unwrap().partition(0).isr, vec![leader, others[0]]);
        meta.brokers.get_mut(&others[1]).unwrap().fenced = true;
        let back = vec![leader, others[0], others[1]];
        assert!(alter_partition(&mut meta, "t", 0, leader, 0, back).is_err(), "a fenced broker cannot rejoin");
        // Fencing a follower drops it from the ISR without a new epoch.
        meta.brokers.get_mut(&others[0]).unwrap().fenced = true;
        reelect(&mut meta, others[0], true);
        let state = meta.topic("t").unwrap().partition(0).clone();
        assert_eq!((state.isr, state.leader, state.leader_epoch), (vec![leader], leader, 0));
    }

    #[test]
    fn partitions_spread_over_live_brokers_only() {
        let mut meta = ClusterMeta::new(1, 1, Vec::new());
        for node in 1..=3 {
            meta.brokers.insert(node, broker(node));
        }
        meta.brokers.get_mut(&2).unwrap().fenced = true;
        let states = spread(&meta, "t", 0, 6, 1).unwrap();
        let leaders: HashSet<NodeId> = states.iter().map(|s| s.leader).collect();
        assert_eq!(leaders, HashSet::from([1, 3]));
        let replicated = spread(&meta, "t", 0, 4, 2).unwrap();
        for state in &replicated {
            assert_eq!(state.replicas.len(), 2);
            assert_eq!(state.isr, state.replicas);
            assert_eq!(state.leader, state.replicas[0]);
        }
        let leaders: Vec<NodeId> = replicated.iter().map(|s| s.leader).collect();
        assert_eq!(leaders.iter().filter(|l| **l == 1).count(), 2, "leaders alternate: {leaders:?}");
        assert!(spread(&meta, "t", 0, 1, 3).is_err(), "only two brokers are live");
        assert!(explicit_assignment(&meta, vec![vec![4]]).is_err(), "unknown broker");
        assert!(explicit_assignment(&meta, vec![vec![1, 1]]).is_err(), "repeated broker");
        assert_eq!(
            explicit_assignment(&meta, vec![vec![2, 3]]).unwrap()[0].leader,
            3,
            "a fenced replica does not lead"
        );
    }
}
