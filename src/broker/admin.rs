//! Metadata changes, run on the controller shard (0): create and delete
//! topics, add partitions, alter topic configs. Each change is validated,
//! persisted to `topics.json`, then installed on every shard before the answer.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use tracing::info;

use super::metadata::{self, random_topic_id, valid_topic_name, ClusterMeta, TopicMeta};
use super::{Broker, ShardMsg};

/// The controller shard.
pub const CONTROLLER_SHARD: usize = 0;
const META_FILE: &str = "topics.json";
/// Holds the first producer id not yet handed to any shard.
const PRODUCER_ID_FILE: &str = "producer-id-block";
/// Producer ids a shard takes from the controller at a time.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

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
    pub async fn admin(&self, op: AdminOp) -> AdminResult {
        if self.shard_id == CONTROLLER_SHARD {
            return self.run_admin(op).await;
        }
        self.mailbox
            .call(CONTROLLER_SHARD, |reply| ShardMsg::Admin { op, reply })
            .await
            .unwrap_or_else(|e| fail(ResponseError::UnknownServerError, e.to_string()))
    }

    pub(super) async fn run_admin(&self, op: AdminOp) -> AdminResult {
        assert_eq!(self.shard_id, CONTROLLER_SHARD, "metadata changes run on the controller");
        let _permit =
            self.admin_lock.acquire_permit(1).await.map_err(|e| AdminError { code: -1, message: e.to_string() })?;
        let mut meta = (*self.meta()).clone();
        let validate_only = self.apply(&mut meta, op)?;
        if validate_only {
            return Ok(());
        }
        self.persist(&meta)
            .await
            .map_err(|e| AdminError { code: ResponseError::KafkaStorageError.code(), message: e.to_string() })?;
        self.install_everywhere(Arc::new(meta)).await;
        Ok(())
    }

    /// Applies `op` to `meta`; returns whether it was validate-only.
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
                if let Err(message) = metadata::log_config(&self.config.log_defaults(), &configs) {
                    fail(ResponseError::InvalidConfig, message)?;
                }
                if !validate_only {
                    info!(topic = %name, partitions, "creating topic");
                }
                meta.put_topic(TopicMeta { name, id: random_topic_id(), partitions, configs, leader_epoch: 0 });
                Ok(validate_only)
            }
            AdminOp::DeleteTopic { name } => {
                if meta.remove_topic(&name).is_none() {
                    fail(ResponseError::UnknownTopicOrPartition, format!("no topic {name:?}"))?;
                }
                info!(topic = %name, "deleting topic");
                Ok(false)
            }
            AdminOp::CreatePartitions { name, count, validate_only } => {
                let topic = existing_topic(meta, &name)?;
                if count <= topic.partitions {
                    fail(
                        ResponseError::InvalidPartitions,
                        format!("topic has {} partitions; the count can only grow", topic.partitions),
                    )?;
                }
                if count > limit {
                    fail(ResponseError::InvalidPartitions, format!("partitions must be at most {limit}"))?;
                }
                let mut grown = (**topic).clone();
                grown.partitions = count;
                meta.put_topic(grown);
                Ok(validate_only)
            }
            AdminOp::AlterConfigs { name, changes, replace, validate_only } => {
                let topic = existing_topic(meta, &name)?;
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
                if let Err(message) = metadata::log_config(&self.config.log_defaults(), &altered.configs) {
                    fail(ResponseError::InvalidConfig, message)?;
                }
                meta.put_topic(altered);
                Ok(validate_only)
            }
        }
    }

    async fn persist(&self, meta: &ClusterMeta) -> std::io::Result<()> {
        let path = self.config.data_dir.join(META_FILE);
        let json = meta.to_json();
        glommio::executor().spawn_blocking(move || write_durably(&path, &json)).await
    }

    /// Sends the snapshot to every shard (this one included) and waits for all.
    pub async fn install_everywhere(&self, meta: Arc<ClusterMeta>) {
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
            .spawn_blocking(move || write_durably(&path, next.to_string().as_bytes()))
            .await
            .map_err(storage_error)?;
        self.next_producer_id_block.set(next);
        Ok(start)
    }

    /// Controller start-up: loads `topics.json` (if any) and installs it everywhere.
    pub async fn load_metadata(self: &Rc<Self>) -> anyhow::Result<()> {
        let path = self.config.data_dir.join(META_FILE);
        let bytes = glommio::executor().spawn_blocking(move || std::fs::read(path)).await;
        let meta = match bytes {
            Ok(bytes) => ClusterMeta::from_json(self.config.node_id, self.shard_count, &bytes)?,
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
}

/// Replaces `path` atomically and durably: temp file, fsync, rename, fsync dir.
fn write_durably(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("a file inside the data directory");
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
