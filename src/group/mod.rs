//! The group coordinator. A group belongs to the `__consumer_offsets`
//! partition its id hashes to (Kafka's rule), and the shard owning that
//! partition owns the group: its membership, its rebalances and its committed
//! offsets. Every group request is routed there as a `ShardMsg::Group`; with
//! replication, the coordinator is simply that partition's leader.
//!
//! State changes are synchronous steps on [`state::Group`]; what must last
//! (commits, assignments, deletions) is appended to the group's partition
//! with the durability of acks=all before it is answered, and read back when
//! the partition opens (requests meanwhile get COORDINATOR_LOAD_IN_PROGRESS).
//! Each operation runs in a task of its own, so a client that goes away never
//! cuts a write short.

mod commit;
pub mod records;
pub mod state;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, JoinGroupResponse, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;
use tracing::{error, info, warn};

use crate::broker::{Broker, PartitionError};
use crate::storage::{self, Partition, StorageError};
use commit::AppendQueue;
pub use commit::CommitArgs;
use records::GroupRecord;
use state::{Group, GroupLimits, GroupState, JoinArgs, Joined, Synced};

/// The internal topic holding committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// How often group timers (sessions, joins, syncs) are checked.
pub const GROUP_TICK_MS: u64 = 100;
/// Longest string a `__consumer_offsets` record holds (int16 length).
pub const MAX_STORED_STRING_BYTES: usize = i16::MAX as usize;
/// Longest wait of an OffsetFetch or DeleteGroups for commits being written.
const SETTLE_COMMITS_MAX: Duration = Duration::from_secs(10);
/// Bytes of records per batch a checkpoint appends (under the topic's message limit).
const CHECKPOINT_BATCH_BYTES: usize = 256 << 10;
/// Bytes read per step while loading a partition of `__consumer_offsets`.
const LOAD_READ_BYTES: usize = 1 << 20;

/// Kafka's placement rule: `abs(hashCode(group id)) % partitions`, with
/// Java's String hash over UTF-16 units and `Utils.abs` (MIN_VALUE → 0).
pub fn offsets_partition(group_id: &str, partitions: i32) -> i32 {
    assert!(partitions > 0, "the offsets topic has partitions");
    let hash = group_id.encode_utf16().fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(unit as i32));
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions
}

/// A group request, routed to the group's coordinator shard.
pub enum GroupOp {
    Join(JoinArgs),
    Sync {
        group_id: String,
        generation: i32,
        member_id: String,
        instance_id: Option<String>,
        protocol_type: Option<String>,
        protocol_name: Option<String>,
        assignments: Vec<(String, Bytes)>,
    },
    Heartbeat {
        group_id: String,
        generation: i32,
        member_id: String,
        instance_id: Option<String>,
    },
    /// (member id, instance id) per member leaving.
    Leave {
        group_id: String,
        members: Vec<(String, Option<String>)>,
    },
    /// Taken synchronously by [`Coordinator::commit`], without a task of its own.
    Commit(CommitArgs),
    /// None: every committed offset of the group.
    FetchOffsets {
        group_id: String,
        partitions: Option<Vec<(String, i32)>>,
        require_stable: bool,
    },
    Describe {
        group_id: String,
    },
    Delete {
        group_id: String,
    },
    DeleteOffsets {
        group_id: String,
        partitions: Vec<(String, i32)>,
    },
}

impl GroupOp {
    pub fn group_id(&self) -> &str {
        match self {
            GroupOp::Join(args) => &args.group_id,
            GroupOp::Commit(args) => &args.group_id,
            GroupOp::Sync { group_id, .. }
            | GroupOp::Heartbeat { group_id, .. }
            | GroupOp::Leave { group_id, .. }
            | GroupOp::FetchOffsets { group_id, .. }
            | GroupOp::Describe { group_id }
            | GroupOp::Delete { group_id }
            | GroupOp::DeleteOffsets { group_id, .. } => group_id,
        }
    }
}

/// A committed offset as OffsetFetch answers it (and the client reads it).
#[derive(Clone, Debug, PartialEq)]
pub struct FetchedOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub error_code: i16,
}

pub enum GroupReply {
    Join(JoinGroupResponse),
    Sync(SyncGroupResponse),
    /// Heartbeat, DeleteGroups: one error code.
    Code(i16),
    /// LeaveGroup (per member), OffsetCommit and OffsetDelete (per partition,
    /// in request order), after a group-level error code.
    Codes(i16, Vec<i16>),
    Offsets(Vec<FetchedOffset>),
    Described(DescribedGroup),
}

/// What routing a group request can fail with (a Kafka error code).
pub type GroupResult = Result<GroupReply, i16>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    Loading,
    Loaded,
}

/// One shard's coordinator: the groups of the offsets partitions it owns.
pub struct Coordinator {
    /// Itself, for the tasks it starts.
    me: Weak<Coordinator>,
    groups: RefCell<HashMap<String, Group>>,
    partitions: RefCell<HashMap<i32, Load>>,
    /// Per offsets partition: held while a batch gets its offsets.
    append_locks: RefCell<HashMap<i32, Rc<glommio::sync::Semaphore>>>,
    /// Per offsets partition: appends waiting for the flusher, in log order.
    queues: RefCell<HashMap<i32, AppendQueue>>,
    /// Emptied batch vectors, for the next batches (at most `MAX_SPARE_BATCHES`).
    spare_batches: RefCell<Vec<Vec<commit::Queued>>>,
    /// Per offsets partition: its size after the last checkpoint (or load).
    checkpointed_bytes: RefCell<HashMap<i32, u64>>,
    /// Per offsets partition: appends whose records are not yet applied to memory.
    unapplied: RefCell<HashMap<i32, Rc<std::cell::Cell<u32>>>>,
    /// Offsets partitions with a checkpoint under way.
    checkpointing: RefCell<std::collections::HashSet<i32>>,
    /// New bytes in an offsets partition that start a checkpoint.
    checkpoint_bytes: u64,
    limits: GroupLimits,
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

impl Coordinator {
    pub fn new(config: &crate::config::Config) -> Rc<Coordinator> {
        Rc::new_cyclic(|me| Coordinator {
            me: me.clone(),
            groups: RefCell::new(HashMap::new()),
            partitions: RefCell::new(HashMap::new()),
            append_locks: RefCell::new(HashMap::new()),
            queues: RefCell::new(HashMap::new()),
            spare_batches: RefCell::new(Vec::new()),
            checkpointed_bytes: RefCell::new(HashMap::new()),
            checkpointing: RefCell::new(std::collections::HashSet::new()),
            unapplied: RefCell::new(HashMap::new()),
            checkpoint_bytes: config.offsets_checkpoint_bytes,
            limits: GroupLimits {
                initial_rebalance_delay: Duration::from_millis(config.group_initial_rebalance_delay_ms),
                min_session_timeout_ms: config.group_min_session_timeout_ms,
                max_session_timeout_ms: config.group_max_session_timeout_ms,
                max_size: config.group_max_size,
                max_member_metadata_bytes: config.group_max_member_metadata_bytes,
            },
        })
    }

    /// Whether a request for group `group_id` of offsets partition
    /// `partition` may be served here now; Err: a Kafka error code. As
    /// Kafka: NOT_COORDINATOR while this shard has not taken the partition up
    /// (also in the moment after the offsets topic is created, before the
    /// shard opened it), COORDINATOR_LOAD_IN_PROGRESS while its groups load;
    /// clients retry both.
    fn admit(&self, partition: i32, group_id: &str) -> Result<(), i16> {
        match self.partitions.borrow().get(&partition) {
            None => return Err(ResponseError::NotCoordinator.code()),
            Some(Load::Loading) => return Err(ResponseError::CoordinatorLoadInProgress.code()),
            Some(Load::Loaded) => {}
        }
        if group_id.len() > MAX_STORED_STRING_BYTES {
            return Err(ResponseError::InvalidGroupId.code()); // its records could not hold it
        }
        Ok(())
    }

    /// Runs `op` for a group of offsets partition `partition` (owned here).
    pub async fn run(&self, broker: &Rc<Broker>, partition: i32, op: GroupOp) -> GroupResult {
        self.admit(partition, op.group_id())?;
        let reply = match op {
            GroupOp::Join(args) => GroupReply::Join(self.join(broker, partition, args).await),
            GroupOp::Sync {
                group_id,
                generation,
                member_id,
                instance_id,
                protocol_type,
                protocol_name,
                assignments,
            } => {
                let protocol = (protocol_type.as_deref(), protocol_name.as_deref());
                let synced = self.with_group(&group_id, |g| {
                    g.sync(generation, &member_id, instance_id.as_deref(), protocol, assignments, storage::now_ms())
                });
                GroupReply::Sync(self.finish_sync(broker, partition, &group_id, synced).await)
            }
            GroupOp::Heartbeat { group_id, generation, member_id, instance_id } => {
                let code = self
                    .with_group(&group_id, |g| {
                        g.heartbeat(generation, &member_id, instance_id.as_deref(), Instant::now())
                    })
                    .unwrap_or(ResponseError::UnknownMemberId.code());
                GroupReply::Code(code)
            }
            GroupOp::Leave { group_id, members } => {
                let codes = self.leave(&group_id, &members);
                self.store_wanted(broker, partition).await;
                self.forget_if_unused(&group_id);
                GroupReply::Codes(0, codes)
            }
            GroupOp::Commit(args) => {
                let (reply, answer) = oneshot::channel();
                self.commit(broker, partition, args, reply);
                return answer.await.unwrap_or(Err(ResponseError::CoordinatorNotAvailable.code()));
            }
            GroupOp::FetchOffsets { group_id, partitions, require_stable } => {
                if !require_stable {
                    // A commit pipelined before this fetch is answered first.
                    self.settle_commits(&group_id, partitions.as_deref()).await;
                }
                GroupReply::Offsets(self.fetch_offsets(&group_id, partitions, require_stable))
            }
            GroupOp::Describe { group_id } => GroupReply::Described(self.describe(&group_id)),
            GroupOp::Delete { group_id } => GroupReply::Code(self.delete(broker, partition, &group_id).await),
            GroupOp::DeleteOffsets { group_id, partitions } => {
                self.delete_offsets(broker, partition, &group_id, partitions).await
            }
        };
        Ok(reply)
    }

    /// Waits (bounded) until no commit to `keys` of group `id` (all of them
    /// if None) is between its append and its fdatasync.
    async fn settle_commits(&self, id: &str, keys: Option<&[(String, i32)]>) {
        let deadline = Instant::now() + SETTLE_COMMITS_MAX;
        loop {
            let pending = self
                .with_group(id, |g| match keys {
                    None => !g.pending_commits.is_empty(),
                    Some(keys) => keys.iter().any(|k| g.pending_commits.contains_key(k)),
                })
                .unwrap_or(false);
            if !pending || Instant::now() >= deadline {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Runs `step` on group `id` if it exists.
    fn with_group<T>(&self, id: &str, step: impl FnOnce(&mut Group) -> T) -> Option<T> {
        self.groups.borrow_mut().get_mut(id).map(step)
    }

    /// Drops a group that holds nothing (no members, offsets or pending work).
    fn forget_if_unused(&self, id: &str) {
        let mut groups = self.groups.borrow_mut();
        let unused = groups.get(id).is_some_and(|g| {
            g.members.is_empty()
                && g.pending_members.is_empty()
                && g.offsets.is_empty()
                && g.pending_commits.is_empty()
                && g.state == GroupState::Empty
                && !g.store_wanted
                && g.generation == 0
        });
        if unused {
            groups.remove(id);
        }
    }

    async fn join(&self, broker: &Rc<Broker>, partition: i32, args: JoinArgs) -> JoinGroupResponse {
        let id = args.group_id.clone();
        if id.is_empty() {
            let mut r = JoinGroupResponse::default();
            r.error_code = ResponseError::InvalidGroupId.code();
            r.generation_id = -1;
            return r;
        }
        let joined = {
            let mut groups = self.groups.borrow_mut();
            let group = groups.entry(id.clone()).or_insert_with(|| Group::new(id.clone(), storage::now_ms()));
            group.join(args, &self.limits, Instant::now(), storage::now_ms())
        };
        self.store_wanted(broker, partition).await;
        self.forget_if_unused(&id);
        match joined {
            Joined::Now(r) => r,
            Joined::Wait(rx) => rx.await.unwrap_or_else(|_| {
                let mut r = JoinGroupResponse::default();
                r.error_code = ResponseError::CoordinatorNotAvailable.code();
                r.generation_id = -1;
                r
            }),
        }
    }

    async fn finish_sync(
        &self,
        broker: &Rc<Broker>,
        partition: i32,
        id: &str,
        synced: Option<Synced>,
    ) -> SyncGroupResponse {
        let waiting = match synced {
            None => return state::sync_error(ResponseError::UnknownMemberId),
            Some(Synced::Now(r)) => return r,
            Some(Synced::Wait(rx)) => rx,
            Some(Synced::Store(rx, value)) => {
                let generation = value.generation;
                let record = (records::group_key(id), Some(records::group_value(&value)));
                let (stored, applying) = self.append(broker, partition, vec![record]).await;
                // A group record over the size limit is the broker's problem here, as in Kafka.
                let stored = stored.map(|_| value).map_err(|e| match store_error(e) {
                    ResponseError::InvalidCommitOffsetSize => ResponseError::UnknownServerError,
                    other => other,
                });
                self.with_group(id, |g| g.finish_sync(generation, stored, storage::now_ms()));
                drop(applying);
                rx
            }
        };
        waiting.await.unwrap_or_else(|_| state::sync_error(ResponseError::RebalanceInProgress))
    }

    fn leave(&self, id: &str, members: &[(String, Option<String>)]) -> Vec<i16> {
        let now = Instant::now();
        members
            .iter()
            .map(|(member_id, instance_id)| {
                self.with_group(id, |g| {
                    g.leave(member_id, instance_id.as_deref(), &self.limits, now, storage::now_ms())
                })
                .unwrap_or(ResponseError::UnknownMemberId.code())
            })
            .collect()
    }

    fn fetch_offsets(&self, id: &str, wanted: Option<Vec<(String, i32)>>, require_stable: bool) -> Vec<FetchedOffset> {
        let groups = self.groups.borrow();
        let group = groups.get(id);
        let keys: Vec<(String, i32)> = match wanted {
            Some(keys) => keys,
            None => {
                let mut all: Vec<(String, i32)> =
                    group.map(|g| g.offsets.keys().cloned().collect()).unwrap_or_default();
                all.sort();
                all
            }
        };
        keys.into_iter()
            .map(|(topic, partition)| {
                let key = (topic, partition);
                let unstable = require_stable && group.is_some_and(|g| g.pending_commits.contains_key(&key));
                let committed = group.and_then(|g| g.offsets.get(&key));
                let (topic, partition) = key;
                match (unstable, committed) {
                    (true, _) => FetchedOffset {
                        topic,
                        partition,
                        offset: -1,
                        leader_epoch: -1,
                        metadata: String::new(),
                        error_code: ResponseError::UnstableOffsetCommit.code(),
                    },
                    (false, Some(c)) => FetchedOffset {
                        topic,
                        partition,
                        offset: c.value.offset,
                        leader_epoch: c.value.leader_epoch,
                        metadata: c.value.metadata.clone(),
                        error_code: 0,
                    },
                    (false, None) => FetchedOffset {
                        topic,
                        partition,
                        offset: -1,
                        leader_epoch: -1,
                        metadata: String::new(),
                        error_code: 0,
                    },
                }
            })
            .collect()
    }

    fn describe(&self, id: &str) -> DescribedGroup {
        let mut out = DescribedGroup::default();
        out.group_id = GroupId(str_bytes(id));
        out.authorized_operations = i32::MIN;
        let groups = self.groups.borrow();
        let Some(g) = groups.get(id) else {
            out.group_state = str_bytes(GroupState::Dead.name());
            return out;
        };
        out.group_state = str_bytes(g.state.name());
        out.protocol_type = str_bytes(g.protocol_type.as_deref().unwrap_or(""));
        let stable = g.state == GroupState::Stable;
        let protocol = g.protocol.clone().unwrap_or_default();
        if stable {
            out.protocol_data = str_bytes(&protocol);
        }
        let stored = g.stored(0);
        out.members = stored
            .members
            .into_iter()
            .map(|m| {
                let mut d = DescribedGroupMember::default();
                d.member_id = str_bytes(&m.member_id);
                d.group_instance_id = m.instance_id.as_deref().map(str_bytes);
                d.client_id = str_bytes(&m.client_id);
                d.client_host = str_bytes(&m.client_host);
                if stable {
                    d.member_metadata = m.subscription;
                    d.member_assignment = m.assignment;
                }
                d
            })
            .collect();
        out
    }

    /// Every committed offset of this shard's groups, for the lag metrics.
    pub fn committed_snapshot(&self) -> Vec<crate::metrics::CommittedSnapshot> {
        let groups = self.groups.borrow();
        let offsets = groups.values().flat_map(|g| g.offsets.iter().map(move |(tp, c)| (g, tp, c)));
        offsets
            .map(|(group, (topic, partition), committed)| crate::metrics::CommittedSnapshot {
                group: group.id.clone(),
                topic: topic.clone(),
                partition: *partition,
                offset: committed.value.offset,
            })
            .collect()
    }

    /// Every group on this shard, for ListGroups (`states`: filter, any case).
    /// Err(COORDINATOR_LOAD_IN_PROGRESS) while a partition's groups load, as Kafka.
    pub fn list(&self, states: &[String]) -> Result<Vec<ListedGroup>, i16> {
        if self.partitions.borrow().values().any(|l| *l == Load::Loading) {
            return Err(ResponseError::CoordinatorLoadInProgress.code());
        }
        let listed = self
            .groups
            .borrow()
            .values()
            .filter(|g| g.state != GroupState::Dead)
            .filter(|g| states.is_empty() || states.iter().any(|s| s.eq_ignore_ascii_case(g.state.name())))
            .map(|g| {
                let mut l = ListedGroup::default();
                l.group_id = GroupId(str_bytes(&g.id));
                l.protocol_type = str_bytes(g.protocol_type.as_deref().unwrap_or(""));
                l.group_state = str_bytes(g.state.name());
                l.group_type = str_bytes("classic");
                l
            })
            .collect();
        Ok(listed)
    }

    async fn delete(&self, broker: &Rc<Broker>, partition: i32, id: &str) -> i16 {
        self.settle_commits(id, None).await;
        let tombstones = {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get_mut(id).filter(|g| g.state != GroupState::Dead) else {
                return ResponseError::GroupIdNotFound.code();
            };
            if g.state != GroupState::Empty || !g.members.is_empty() {
                return ResponseError::NonEmptyGroup.code();
            }
            g.state = GroupState::Dead;
            g.store_wanted = false;
            let mut tombstones: Vec<(Bytes, Option<Bytes>)> =
                g.offsets.keys().map(|(t, p)| (records::offset_key(id, t, *p), None)).collect();
            tombstones.push((records::group_key(id), None));
            tombstones
        };
        let (stored, _applying) = self.append(broker, partition, tombstones).await;
        match stored {
            Ok(_) => {
                info!(group = %id, "group deleted");
                self.groups.borrow_mut().remove(id);
                0
            }
            Err(e) => {
                self.with_group(id, |g| g.state = GroupState::Empty);
                store_error(e).code()
            }
        }
    }

    async fn delete_offsets(
        &self,
        broker: &Rc<Broker>,
        partition: i32,
        id: &str,
        keys: Vec<(String, i32)>,
    ) -> GroupReply {
        let (codes, tombstones) = {
            let groups = self.groups.borrow();
            let Some(g) = groups.get(id).filter(|g| g.state != GroupState::Dead) else {
                return GroupReply::Codes(ResponseError::GroupIdNotFound.code(), Vec::new());
            };
            let subscribed = g.subscribed_topics();
            if !g.members.is_empty() && subscribed.is_none() {
                return GroupReply::Codes(ResponseError::NonEmptyGroup.code(), Vec::new());
            }
            let mut codes = Vec::with_capacity(keys.len());
            let mut tombstones = Vec::new();
            for (topic, p) in &keys {
                if subscribed.as_ref().is_some_and(|s| s.contains(topic)) {
                    codes.push(ResponseError::GroupSubscribedToTopic.code());
                } else {
                    codes.push(0);
                    if g.offsets.contains_key(&(topic.clone(), *p)) {
                        tombstones.push((topic.clone(), *p));
                    }
                }
            }
            (codes, tombstones)
        };
        if tombstones.is_empty() {
            return GroupReply::Codes(0, codes);
        }
        let batch = tombstones.iter().map(|(t, p)| (records::offset_key(id, t, *p), None)).collect();
        let (stored, _applying) = self.append(broker, partition, batch).await;
        match stored {
            Ok(base) => {
                self.with_group(id, |g| {
                    for (i, (t, p)) in tombstones.into_iter().enumerate() {
                        g.apply_offset(t, p, None, base + i as i64);
                    }
                });
                self.forget_if_unused(id);
                GroupReply::Codes(0, codes)
            }
            Err(e) => GroupReply::Codes(store_error(e).code(), codes),
        }
    }

    /// Counts an append of `partition` whose records are not yet applied.
    fn applying(&self, partition: i32) -> Applying {
        Applying(Some(self.count_unapplied(partition, 1)))
    }

    /// Counts `n` appends of `partition` whose records are not yet applied;
    /// each is to be counted off by an [`Applying`] holding the counter.
    fn count_unapplied(&self, partition: i32, n: usize) -> Rc<std::cell::Cell<u32>> {
        let counter = self.unapplied.borrow_mut().entry(partition).or_default().clone();
        counter.set(counter.get() + u32::try_from(n).expect("appends per batch fit in u32"));
        counter
    }

    /// Persists the groups of `partition` whose membership changed.
    async fn store_wanted(&self, broker: &Rc<Broker>, partition: i32) {
        let now_ms = storage::now_ms();
        let count = offsets_partition_count(broker);
        let wanted: Vec<(String, records::GroupValue)> = {
            let mut groups = self.groups.borrow_mut();
            groups
                .values_mut()
                .filter(|g| g.store_wanted && offsets_partition(&g.id, count) == partition)
                .map(|g| {
                    g.store_wanted = false;
                    (g.id.clone(), g.stored(now_ms))
                })
                .collect()
        };
        if wanted.is_empty() {
            return;
        }
        let batch = wanted.iter().map(|(id, v)| (records::group_key(id), Some(records::group_value(v)))).collect();
        let (stored, _applying) = self.append(broker, partition, batch).await;
        match stored {
            Ok(_) => {
                for (id, value) in wanted {
                    self.with_group(&id, |g| g.last_stored = Some(value));
                }
            }
            Err(e) => warn!("storing group metadata: {e:?}"),
        }
    }

    /// Starts a checkpoint of every offsets partition that grew by
    /// `offsets_checkpoint_bytes` since its last one.
    fn start_checkpoints(self: &Rc<Self>, broker: &Rc<Broker>) {
        let loaded: Vec<i32> =
            self.partitions.borrow().iter().filter(|(_, l)| **l == Load::Loaded).map(|(p, _)| *p).collect();
        for p in loaded {
            let Some(log) = offsets_partition_log(broker, p) else { continue };
            let size = log.log.borrow().size_bytes();
            let base = self.checkpointed_bytes.borrow().get(&p).copied().unwrap_or(0);
            if size.saturating_sub(base) < self.checkpoint_bytes || !self.checkpointing.borrow_mut().insert(p) {
                continue;
            }
            let (me, broker) = (self.clone(), broker.clone());
            glommio::spawn_local(async move {
                match me.checkpoint(&broker, p, &log).await {
                    Ok(start) => info!(partition = p, log_start = start, "checkpointed consumer groups"),
                    Err(e) => warn!(partition = p, "checkpointing consumer groups: {e:?}"),
                }
                let size = log.log.borrow().size_bytes();
                me.checkpointed_bytes.borrow_mut().insert(p, size);
                me.checkpointing.borrow_mut().remove(&p);
            })
            .detach();
        }
    }

    /// Bounds an offsets partition without a log cleaner: the coordinator
    /// holds its whole live state, so it writes that state again (every
    /// committed offset, every group's last stored membership) and moves the
    /// log start to it; older segments go. The append lock is held while
    /// commits already appended settle and the snapshot is appended, so the
    /// snapshot is exactly the log's state; the log start moves only once
    /// the snapshot is durable, so a crash at any point loses nothing.
    async fn checkpoint(&self, broker: &Rc<Broker>, partition: i32, log: &Rc<Partition>) -> Result<i64, StorageError> {
        let count = offsets_partition_count(broker);
        let lock = self.append_lock(partition);
        let permit = lock.acquire_permit(1).await;
        // Appends made before the lock was taken are applied to memory first.
        let deadline = Instant::now() + SETTLE_COMMITS_MAX;
        while self.unapplied.borrow().get(&partition).is_some_and(|n| n.get() > 0) {
            if Instant::now() >= deadline {
                return Err(StorageError::Io(std::io::Error::other("appended records were not applied in time")));
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        let snapshot = self.snapshot_records(partition, count);
        let now_ms = storage::now_ms();
        let mut first = None;
        let mut last = None;
        for chunk in chunk_by_bytes(snapshot, CHECKPOINT_BATCH_BYTES) {
            let info = log.append(records::batch(chunk, now_ms), now_ms).await?;
            first.get_or_insert(info.base_offset);
            if last
                .as_ref()
                .is_some_and(|l: &storage::log::AppendInfo| l.replicated_in_epoch != info.replicated_in_epoch)
            {
                return Err(StorageError::NotLeader); // leadership changed under the checkpoint
            }
            last = Some(info);
        }
        drop(permit);
        let start = match (first, last) {
            (Some(first), Some(last)) => {
                log.wait_committed(&last).await?;
                first
            }
            _ => log.log.borrow().end_offset(), // no group left: nothing to keep
        };
        log.delete_records(start).await
    }

    /// Every live record of `partition`'s groups: their last stored
    /// membership, then their committed offsets.
    fn snapshot_records(&self, partition: i32, count: i32) -> Vec<(Bytes, Option<Bytes>)> {
        let groups = self.groups.borrow();
        let mut out = Vec::new();
        for g in groups.values().filter(|g| offsets_partition(&g.id, count) == partition && g.state != GroupState::Dead)
        {
            if let Some(value) = &g.last_stored {
                out.push((records::group_key(&g.id), Some(records::group_value(value))));
            }
            for ((topic, p), c) in &g.offsets {
                out.push((records::offset_key(&g.id, topic, *p), Some(records::offset_value(&c.value))));
            }
        }
        out
    }

    /// Group timers, and stores what they changed; run every [`GROUP_TICK_MS`].
    pub async fn tick(self: &Rc<Self>, broker: &Rc<Broker>) {
        self.start_checkpoints(broker);
        let now = Instant::now();
        let now_ms = storage::now_ms();
        let mut touched = Vec::new();
        for g in self.groups.borrow_mut().values_mut() {
            g.tick(&self.limits, now, now_ms);
            if g.store_wanted {
                touched.push(g.id.clone());
            }
        }
        let count = offsets_partition_count(broker);
        let mut partitions: Vec<i32> = touched.iter().map(|id| offsets_partition(id, count)).collect();
        partitions.sort_unstable();
        partitions.dedup();
        for p in partitions {
            self.store_wanted(broker, p).await;
        }
    }

    /// Expires the offsets of groups empty for `retention_ms` (and, in a
    /// stable consumer group, of topics it no longer subscribes to).
    pub async fn expire_offsets(&self, broker: &Rc<Broker>, retention_ms: i64) {
        // Empty groups with nothing committed go at once, as Kafka's cleanup does.
        let bare: Vec<String> = self
            .groups
            .borrow()
            .values()
            .filter(|g| g.state == GroupState::Empty && g.offsets.is_empty() && g.pending_commits.is_empty())
            .filter(|g| g.pending_members.is_empty() && !g.store_wanted)
            .map(|g| g.id.clone())
            .collect();
        for id in bare {
            self.forget_empty_group(broker, &id).await;
        }
        let mut partitions: Vec<i32> =
            self.partitions.borrow().iter().filter(|(_, l)| **l == Load::Loaded).map(|(p, _)| *p).collect();
        partitions.sort_unstable();
        for p in partitions {
            self.expire_partition(broker, p, retention_ms).await;
        }
    }

    /// Expires the offsets of one offsets partition. The partition's append
    /// lock is held from choosing what expires to appending the tombstones,
    /// so no commit can land in between and be shadowed by a tombstone.
    async fn expire_partition(&self, broker: &Rc<Broker>, partition: i32, retention_ms: i64) {
        let Some(log) = offsets_partition_log(broker, partition) else { return };
        let lock = self.append_lock(partition);
        let Ok(permit) = lock.acquire_permit(1).await else { return };
        let expired = self.expired_offsets(partition, offsets_partition_count(broker), retention_ms);
        if expired.is_empty() {
            return;
        }
        let batch = expired.iter().map(|(g, t, p)| (records::offset_key(g, t, *p), None)).collect();
        let info = log.append(records::batch(batch, storage::now_ms()), storage::now_ms()).await;
        let applying = if info.is_ok() { self.applying(partition) } else { Applying(None) };
        drop(permit);
        let stored = match info {
            Ok(info) => log.wait_committed(&info).await.map(|_| info.base_offset),
            Err(e) => Err(e),
        };
        match stored {
            Ok(base) => {
                info!(offsets = expired.len(), partition, "expired committed offsets");
                let mut touched = Vec::new();
                for (i, (id, t, part)) in expired.into_iter().enumerate() {
                    self.with_group(&id, |g| g.apply_offset(t, part, None, base + i as i64));
                    touched.push(id);
                }
                drop(applying); // applied: a checkpoint may go on
                touched.dedup();
                for id in touched {
                    self.forget_empty_group(broker, &id).await;
                }
            }
            Err(e) => warn!("expiring offsets: {e:?}"),
        }
    }

    /// (group, topic, partition) of the offsets of `partition` due to expire,
    /// by Kafka's rules: a group with no protocol (a simple consumer) by each
    /// offset's commit time; an empty group by the time it became empty; a
    /// stable consumer group only for topics it no longer subscribes to.
    fn expired_offsets(&self, partition: i32, count: i32, retention_ms: i64) -> Vec<(String, String, i32)> {
        let now_ms = storage::now_ms();
        let old = |c: &state::Committed| now_ms - c.value.commit_timestamp_ms >= retention_ms;
        let mut out = Vec::new();
        for g in self.groups.borrow().values().filter(|g| offsets_partition(&g.id, count) == partition) {
            let expired: Vec<&(String, i32)> = match (g.state, g.protocol_type.as_ref(), g.subscribed_topics()) {
                (_, None, _) => g.offsets.iter().filter(|(_, c)| old(c)).map(|(k, _)| k).collect(),
                (GroupState::Empty, Some(_), _) if now_ms - g.state_timestamp_ms >= retention_ms => {
                    g.offsets.keys().collect()
                }
                (GroupState::Stable, Some(_), Some(subscribed)) => {
                    g.offsets.iter().filter(|((t, _), c)| !subscribed.contains(t) && old(c)).map(|(k, _)| k).collect()
                }
                _ => Vec::new(),
            };
            out.extend(
                expired
                    .into_iter()
                    .filter(|k| !g.pending_commits.contains_key(*k))
                    .map(|(t, p)| (g.id.clone(), t.clone(), *p)),
            );
        }
        out
    }

    /// The lock an append to offsets partition `partition` holds (only while
    /// the batch gets its offsets, not during the wait for durability).
    fn append_lock(&self, partition: i32) -> Rc<glommio::sync::Semaphore> {
        self.append_locks
            .borrow_mut()
            .entry(partition)
            .or_insert_with(|| Rc::new(glommio::sync::Semaphore::new(1)))
            .clone()
    }

    /// An empty group with no offsets left is deleted (tombstone), as Kafka does.
    async fn forget_empty_group(&self, broker: &Rc<Broker>, id: &str) {
        let empty = self
            .with_group(id, |g| g.state == GroupState::Empty && g.offsets.is_empty() && g.pending_commits.is_empty());
        if empty == Some(true) {
            let p = offsets_partition(id, offsets_partition_count(broker));
            let _ = self.delete(broker, p, id).await;
        }
    }

    /// An offsets partition opened here: load its groups, then serve them.
    pub fn start_loading(self: &Rc<Self>, broker: &Rc<Broker>, partition: i32, log: Rc<Partition>) {
        self.partitions.borrow_mut().insert(partition, Load::Loading);
        let (me, broker) = (self.clone(), broker.clone());
        glommio::spawn_local(async move {
            let started = Instant::now();
            match me.load(&broker, partition, &log).await {
                Ok(groups) => {
                    if groups > 0 {
                        info!(partition, groups, ms = started.elapsed().as_millis() as u64, "loaded consumer groups");
                    }
                    me.partitions.borrow_mut().insert(partition, Load::Loaded);
                }
                Err(e) => {
                    error!(partition, "cannot load consumer groups: {e:?}; the partition's groups stay unavailable")
                }
            }
        })
        .detach();
    }

    /// This shard no longer coordinates an offsets partition's groups (its
    /// topic was deleted, or another replica leads it now): forget them.
    pub fn unload(&self, partition: i32, partition_count: i32) {
        self.partitions.borrow_mut().remove(&partition);
        self.groups.borrow_mut().retain(|id, _| offsets_partition(id, partition_count) != partition);
    }

    async fn load(&self, broker: &Rc<Broker>, partition: i32, log: &Partition) -> Result<usize, StorageError> {
        let (mut offset, end) = {
            let l = log.log.borrow();
            // The new leader's log is the partition's: all of it, not only
            // what its high watermark has reached yet.
            (l.log_start_offset(), l.flushed_offset())
        };
        let count = offsets_partition_count(broker);
        let now = Instant::now();
        let mut loaded: HashMap<String, Group> = HashMap::new();
        while offset < end {
            let parts = log.read(offset, LOAD_READ_BYTES, true).await?;
            if parts.is_empty() {
                break;
            }
            let mut joined = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            parts.iter().for_each(|p| joined.extend_from_slice(p));
            let mut rest = joined.freeze();
            let mut next = offset;
            // Batch by batch: one that cannot be decoded is skipped (logged),
            // not a reason to leave the partition's groups unloaded.
            while let Some(len) = crate::storage::log::first_batch_bytes(&rest).filter(|&n| n <= rest.len()) {
                let batch = rest.split_to(len);
                let base = i64::from_be_bytes(batch[0..8].try_into().expect("8 bytes"));
                let last_delta = i32::from_be_bytes(batch[23..27].try_into().expect("4 bytes"));
                next = next.max(base + i64::from(last_delta) + 1);
                let set = match kafka_protocol::records::RecordBatchDecoder::decode(&mut batch.clone()) {
                    Ok(set) => set,
                    Err(e) => {
                        warn!(partition, offset = base, "skipping an undecodable __consumer_offsets batch: {e}");
                        continue;
                    }
                };
                for record in &set.records {
                    if record.control || record.offset < offset {
                        continue;
                    }
                    let Some(key) = &record.key else { continue };
                    match records::decode(key, record.value.as_ref()) {
                        Some(decoded) => apply_loaded(&mut loaded, decoded, record.offset, now),
                        None => {
                            warn!(partition, offset = record.offset, "skipping an unknown __consumer_offsets record")
                        }
                    }
                }
            }
            if next <= offset {
                break;
            }
            offset = next;
        }
        loaded.retain(|id, g| {
            offsets_partition(id, count) == partition
                && !(g.members.is_empty() && g.offsets.is_empty() && g.generation == 0)
        });
        let n = loaded.len();
        self.groups.borrow_mut().extend(loaded);
        Ok(n)
    }
}

/// An append whose records are being applied to memory; dropped once they are.
struct Applying(Option<Rc<std::cell::Cell<u32>>>);

impl Drop for Applying {
    fn drop(&mut self) {
        if let Some(counter) = &self.0 {
            counter.set(counter.get() - 1);
        }
    }
}

/// Splits records into runs of about `max_bytes` (a larger record alone).
fn chunk_by_bytes(records: Vec<(Bytes, Option<Bytes>)>, max_bytes: usize) -> Vec<Vec<(Bytes, Option<Bytes>)>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for record in records {
        let len = record.0.len() + record.1.as_ref().map_or(0, Bytes::len) + 32;
        if !current.is_empty() && bytes + len > max_bytes {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += len;
        current.push(record);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

fn apply_loaded(groups: &mut HashMap<String, Group>, record: GroupRecord, record_offset: i64, now: Instant) {
    match record {
        GroupRecord::Offset { group, topic, partition, value } => {
            let g = groups.entry(group.clone()).or_insert_with(|| Group::new(group, storage::now_ms()));
            g.apply_offset(topic, partition, value, record_offset);
        }
        GroupRecord::Group { group, value: Some(value) } => {
            let g = groups.entry(group.clone()).or_insert_with(|| Group::new(group, storage::now_ms()));
            g.restore(value, now);
        }
        GroupRecord::Group { group, value: None } => {
            // A deleted group: its offsets were tombstoned before it.
            groups.remove(&group);
        }
    }
}

/// How a failed append is reported to group clients (Kafka's mapping).
fn store_error(e: PartitionError) -> ResponseError {
    match e {
        PartitionError::UnknownTopicOrPartition => ResponseError::CoordinatorNotAvailable,
        PartitionError::NotAvailable | PartitionError::StorageError => ResponseError::NotCoordinator,
        PartitionError::MessageTooLarge => ResponseError::InvalidCommitOffsetSize,
        _ => ResponseError::UnknownServerError,
    }
}

fn offsets_partition_log(broker: &Broker, partition: i32) -> Option<Rc<Partition>> {
    let meta = broker.meta();
    let topic = meta.topic(OFFSETS_TOPIC)?;
    broker.local_partition(&topic.tp(partition))
}

/// Partitions of `__consumer_offsets` (the configured count until it exists).
pub fn offsets_partition_count(broker: &Broker) -> i32 {
    broker.meta().topic(OFFSETS_TOPIC).map_or(broker.config.offsets_topic_num_partitions, |t| t.partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_follows_kafkas_hash() {
        // Java: "my-group".hashCode() == -1_906_497_762 (abs % 50 == 12).
        assert_eq!(offsets_partition("my-group", 50), 12);
        assert_eq!(offsets_partition("", 50), 0);
        // Every id lands in range, including non-ASCII ones.
        for id in ["a", "groupé", "日本", "zzzzzzzzzzzzzzzzzzzzzzzzzz"] {
            assert!((0..50).contains(&offsets_partition(id, 50)));
        }
    }
}
