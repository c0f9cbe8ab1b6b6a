//! Metadata changes, run on the controller shard (0): create and delete
//! topics, add partitions, alter topic configs.
//!
//! Changes are group-committed: every change that arrives while a commit is
//! running waits in the controller's queue, and the next commit applies all
//! of them in arrival order to one copy of the metadata, persists
//! `topics.json` once and installs the snapshot on every shard once. A
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

use super::metadata::{
    self, deleted_dir_name, is_partition_dir_name, random_topic_id, valid_topic_name, ClusterMeta, TopicMeta,
    DELETED_DIR_SUFFIX,
};
use super::{Broker, ShardMsg};
use crate::fsutil;

/// The controller shard.
pub const CONTROLLER_SHARD: usize = 0;
const META_FILE: &str = "topics.json";
/// Holds the first producer id not yet handed to any shard.
const PRODUCER_ID_FILE: &str = "producer-id-block";
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

#[derive(Debug, Clone)]
pub enum ConfigChange {
    Set(String, String),
    Delete(String),
}

#[derive(Debug)]
pub enum AdminOp {
    CreateTopic {
        name: String,
        partitions: i32,
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

#[derive(Debug, Clone, PartialEq)]
pub struct AdminError {
    pub code: i16,
    pub message: String,
}

pub type AdminResult = Result<(), AdminError>;

/// The topic named, or UNKNOWN_TOPIC_OR_PARTITION.
fn existing_topic<'a>(meta: &'a ClusterMeta, name: &str) -> Result<&'a Arc<TopicMeta>, AdminError> {
    meta.topic(name).ok_or_else(|| AdminError {
        code: ResponseError::UnknownTopicOrPartition.code(),
        message: format!("no topic {name:?}"),
    })
}

fn fail(error: ResponseError, message: impl Into<String>) -> AdminResult {
    Err(AdminError { code: error.code(), message: message.into() })
}

impl Broker {
    /// Runs a metadata change on the controller, from any shard.
    pub async fn admin(self: &Rc<Self>, op: AdminOp) -> AdminResult {
        if self.shard_id == CONTROLLER_SHARD {
            return self.run_admin(op).await;
        }
        self.mailbox
            .call(CONTROLLER_SHARD, |reply| ShardMsg::Admin { op, reply })
            .await
            .unwrap_or_else(|e| fail(ResponseError::UnknownServerError, e.to_string()))
    }

    /// Controller: queues `op` for the next commit and waits for its answer.
    pub(super) async fn run_admin(self: &Rc<Self>, op: AdminOp) -> AdminResult {
        assert_eq!(self.shard_id, CONTROLLER_SHARD, "metadata changes run on the controller");
        let (reply, answer) = oneshot::channel();
        QUEUE.with(|queue| queue.borrow_mut().push(Queued { op, reply }));
        if !COMMITTER_RUNNING.replace(true) {
            let broker = self.clone();
            glommio::spawn_local(async move { broker.commit_queued().await }).detach();
        }
        answer.await.unwrap_or_else(|_| fail(ResponseError::UnknownServerError, "the controller dropped the change"))
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

    /// Applies `group` in order to one copy of the metadata, then persists
    /// and installs it once; answers each change.
    async fn commit(self: &Rc<Self>, group: Vec<Queued>) {
        let mut meta = (*self.meta()).clone();
        let mut answers = Vec::with_capacity(group.len());
        for Queued { op, reply } in group {
            let result = self.apply(&mut meta, op);
            answers.push((reply, result));
        }
        let changes = answers.iter().filter(|(_, r)| matches!(r, Ok(true))).count();
        if changes > 0 {
            if let Err(e) = self.persist(&meta).await {
                let error = AdminError { code: ResponseError::KafkaStorageError.code(), message: e.to_string() };
                for (_, result) in answers.iter_mut().filter(|(_, r)| matches!(r, Ok(true))) {
                    *result = Err(error.clone());
                }
            } else {
                info!(changes, topics = meta.topics.len(), "metadata committed");
                self.install_everywhere(Arc::new(meta)).await;
            }
        }
        for (reply, result) in answers {
            let _ = reply.send(result.map(|_changed| ()));
        }
    }

    /// Applies `op` to `meta` unless it is validate-only; returns whether
    /// `meta` changed. A failed op leaves `meta` as it was.
    fn apply(&self, meta: &mut ClusterMeta, op: AdminOp) -> Result<bool, AdminError> {
        let limit = self.config.max_partitions_per_topic;
        match op {
            AdminOp::CreateTopic { name, partitions, configs, validate_only } => {
                if !valid_topic_name(&name) {
                    fail(ResponseError::InvalidTopicException, format!("invalid topic name {name:?}"))?;
                }
                if meta.topic(&name).is_some() {
                    fail(ResponseError::TopicAlreadyExists, format!("topic {name:?} already exists"))?;
                }
                if partitions < 1 || partitions > limit {
                    fail(ResponseError::InvalidPartitions, format!("partitions must be 1..={limit}"))?;
                }
                if let Err(message) = metadata::check_user_configs(&self.config.log_defaults(), &configs) {
                    fail(ResponseError::InvalidConfig, message)?;
                }
                if validate_only {
                    return Ok(false);
                }
                info!(topic = %name, partitions, "creating topic");
                meta.put_topic(TopicMeta { name, id: random_topic_id(), partitions, configs, leader_epoch: 0 });
                Ok(true)
            }
            AdminOp::AutoCreateTopics { names, partitions } => Ok(auto_create(meta, names, partitions) > 0),
            AdminOp::EnsureOffsetsTopic { partitions, configs } => {
                let name = crate::group::OFFSETS_TOPIC.to_string();
                if meta.topic(&name).is_some() {
                    return Ok(false);
                }
                info!(topic = %name, partitions, "creating the consumer offsets topic");
                meta.put_topic(TopicMeta { name, id: random_topic_id(), partitions, configs, leader_epoch: 0 });
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
                if validate_only {
                    return Ok(false);
                }
                info!(topic = %name, from = topic.partitions, to = count, "adding partitions");
                let mut grown = (**topic).clone();
                grown.partitions = count;
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
                for change in changes {
                    match change {
                        ConfigChange::Set(key, value) => altered.configs.insert(key, value),
                        ConfigChange::Delete(key) => altered.configs.remove(&key),
                    };
                }
                if let Err(message) = metadata::check_user_configs(&self.config.log_defaults(), &altered.configs) {
                    fail(ResponseError::InvalidConfig, message)?;
                }
                if validate_only {
                    return Ok(false);
                }
                info!(topic = %name, configs = ?altered.configs, "topic configs changed");
                meta.put_topic(altered);
                Ok(true)
            }
        }
    }

    async fn persist(&self, meta: &ClusterMeta) -> std::io::Result<()> {
        let path = self.config.data_dir.join(META_FILE);
        let json = meta.to_json();
        glommio::executor().spawn_blocking(move || fsutil::write_atomic(&path, &json)).await
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
    /// taking a new block from the controller when it runs out.
    pub async fn next_producer_id(&self) -> Result<i64, AdminError> {
        let (next, end) = self.producer_ids.get();
        if next < end {
            self.producer_ids.set((next + 1, end));
            return Ok(next);
        }
        let start = if self.shard_id == CONTROLLER_SHARD {
            self.allocate_producer_id_block().await?
        } else {
            self.mailbox.call(CONTROLLER_SHARD, |reply| ShardMsg::AllocateProducerIds { reply }).await.unwrap_or_else(
                |e| Err(AdminError { code: ResponseError::UnknownServerError.code(), message: e.to_string() }),
            )?
        };
        self.producer_ids.set((start + 1, start + PRODUCER_ID_BLOCK));
        Ok(start)
    }

    /// Controller: reserves the next block of producer ids, persisted before
    /// it is handed out so that no id is ever given twice, across restarts too.
    pub(super) async fn allocate_producer_id_block(&self) -> Result<i64, AdminError> {
        assert_eq!(self.shard_id, CONTROLLER_SHARD, "producer ids come from the controller");
        let storage_error =
            |e: std::io::Error| AdminError { code: ResponseError::KafkaStorageError.code(), message: e.to_string() };
        let _permit =
            self.admin_lock.acquire_permit(1).await.map_err(|e| AdminError { code: -1, message: e.to_string() })?;
        let start = self.next_producer_id_block.get();
        let path = self.config.data_dir.join(PRODUCER_ID_FILE);
        let next = start + PRODUCER_ID_BLOCK;
        glommio::executor()
            .spawn_blocking(move || fsutil::write_atomic(&path, next.to_string().as_bytes()))
            .await
            .map_err(storage_error)?;
        self.next_producer_id_block.set(next);
        Ok(start)
    }

    /// Controller start-up: loads `topics.json` (if any), gives ids to topics
    /// stored without, removes what deletions left behind, and installs the
    /// metadata everywhere.
    pub async fn load_metadata(self: &Rc<Self>) -> anyhow::Result<()> {
        let path = self.config.data_dir.join(META_FILE);
        let bytes = glommio::executor().spawn_blocking(move || std::fs::read(path)).await;
        let meta = match bytes {
            Ok(bytes) => {
                let (meta, ids_assigned) = ClusterMeta::from_json(self.config.node_id, self.shard_count, &bytes)?;
                if ids_assigned > 0 {
                    info!(topics = ids_assigned, "gave topic ids to topics stored without");
                    self.persist(&meta).await?;
                }
                self.remove_leftover_dirs(&meta).await?;
                meta
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ClusterMeta::new(self.config.node_id, self.shard_count, Vec::new())
            }
            Err(e) => return Err(e.into()),
        };
        let id_path = self.config.data_dir.join(PRODUCER_ID_FILE);
        let next_block = glommio::executor().spawn_blocking(move || std::fs::read_to_string(id_path)).await;
        self.next_producer_id_block.set(next_block.ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0));
        info!(topics = meta.topics.len(), "loaded metadata");
        self.install_everywhere(Arc::new(meta)).await;
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
    async fn remove_leftover_dirs(&self, meta: &ClusterMeta) -> std::io::Result<()> {
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
fn auto_create(meta: &mut ClusterMeta, names: Vec<String>, partitions: i32) -> usize {
    let mut created = 0;
    for name in names {
        if !valid_topic_name(&name) || meta.topic(&name).is_some() {
            continue;
        }
        debug!(topic = %name, partitions, "auto-creating topic");
        meta.put_topic(TopicMeta {
            name,
            id: random_topic_id(),
            partitions,
            configs: BTreeMap::new(),
            leader_epoch: 0,
        });
        created += 1;
    }
    if created > 0 {
        info!(topics = created, partitions, "auto-created topics");
    }
    created
}

/// Removes deleted partitions' directories: `(directory, its -delete name)`.
/// Each is first renamed to its `-delete` name and the renames made durable,
/// so that a crash halfway through a removal never leaves a partly removed
/// directory under a name a topic could open; only then are the files removed.
/// A directory that is already gone is skipped. Blocking.
pub(super) fn remove_partition_dirs(dirs: &[(PathBuf, String)]) -> std::io::Result<()> {
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
    for dir in &doomed {
        remove_renamed_dir(dir);
    }
    Ok(())
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
    remove_partition_dirs(&orphans)?;
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
}
