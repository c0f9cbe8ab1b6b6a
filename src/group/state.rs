//! One consumer group's state machine: Kafka's classic rebalance protocol
//! (Empty, PreparingRebalance, CompletingRebalance, Stable, Dead), its
//! members, and its committed offsets. Every step here is synchronous and
//! does no I/O; the coordinator persists what a step asks for and answers
//! the waiting requests.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupResponse, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;

use super::records::{GroupValue, OffsetValue, StoredMember};
use super::MAX_STORED_STRING_BYTES;

/// A member id is its client (or instance) id, cut to this, and a UUID.
const MEMBER_ID_PREFIX_MAX_BYTES: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// The group settings a step needs (from the broker config).
#[derive(Clone, Debug)]
pub struct GroupLimits {
    pub initial_rebalance_delay: Duration,
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    pub max_size: usize,
    pub max_member_metadata_bytes: usize,
}

/// A JoinGroup, as the coordinator needs it.
pub struct JoinArgs {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// From JoinGroup v4 a new member must rejoin with the id it is given.
    pub require_known_member_id: bool,
}

pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub join_waiter: Option<oneshot::Sender<JoinGroupResponse>>,
    pub sync_waiter: Option<oneshot::Sender<SyncGroupResponse>>,
    /// Sent SyncGroup in the current generation.
    pub synced: bool,
    pub heartbeat_deadline: Instant,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(name, _)| name == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }

    fn awaiting(&self) -> bool {
        self.join_waiter.is_some() || self.sync_waiter.is_some()
    }
}

/// A rebalance of a group that was empty waits for more members, one delay
/// at a time while they keep coming, up to the rebalance timeout (`cap`).
#[derive(Clone, Copy, Debug)]
pub struct InitialDelay {
    pub cap: Instant,
    pub step: Duration,
    /// A member joined during the current delay.
    pub added: bool,
}

/// A committed offset and the `__consumer_offsets` offset of its record
/// (a later record wins, whatever order their appends finish in).
#[derive(Clone, Debug)]
pub struct Committed {
    pub value: OffsetValue,
    pub record_offset: i64,
}

/// What a join step answers: now, or once the rebalance completes.
pub enum Joined {
    Now(JoinGroupResponse),
    Wait(oneshot::Receiver<JoinGroupResponse>),
}

/// What a sync step answers.
pub enum Synced {
    Now(SyncGroupResponse),
    Wait(oneshot::Receiver<SyncGroupResponse>),
    /// The leader's assignment: persist the group, then [`Group::finish_sync`].
    Store(oneshot::Receiver<SyncGroupResponse>, GroupValue),
}

pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub state_timestamp_ms: i64,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined: their deadline.
    pub pending_members: HashMap<String, Instant>,
    /// Static members: instance id → member id.
    pub statics: HashMap<String, String>,
    /// PreparingRebalance: when the join completes at the latest.
    pub join_deadline: Option<Instant>,
    /// The initial delay of a group that was empty.
    pub initial_delay: Option<InitialDelay>,
    /// CompletingRebalance: members that have not synced by then are removed.
    pub sync_deadline: Option<Instant>,
    pub offsets: HashMap<(String, i32), Committed>,
    /// Commits appended but not yet durable, per partition.
    pub pending_commits: HashMap<(String, i32), u32>,
    /// The group changed in a way that must be stored (became empty).
    pub store_wanted: bool,
    /// The membership as last stored: what a checkpoint of the offsets
    /// partition writes again (not the state of a rebalance under way).
    pub last_stored: Option<GroupValue>,
}

fn error(code: ResponseError) -> i16 {
    code.code()
}

fn join_error(code: ResponseError, member_id: &str) -> JoinGroupResponse {
    let mut r = JoinGroupResponse::default();
    r.error_code = error(code);
    r.generation_id = -1;
    r.member_id = StrBytes::from_string(member_id.to_string());
    r
}

pub fn sync_error(code: ResponseError) -> SyncGroupResponse {
    let mut r = SyncGroupResponse::default();
    r.error_code = error(code);
    r
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

impl Group {
    pub fn new(id: String, now_ms: i64) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            state_timestamp_ms: now_ms,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending_members: HashMap::new(),
            statics: HashMap::new(),
            join_deadline: None,
            initial_delay: None,
            sync_deadline: None,
            offsets: HashMap::new(),
            pending_commits: HashMap::new(),
            store_wanted: false,
            last_stored: None,
        }
    }

    fn transition(&mut self, state: GroupState, now_ms: i64) {
        self.state = state;
        self.state_timestamp_ms = now_ms;
    }

    /// Whether `protocols` can join: the same protocol type, and a protocol
    /// every member (this one included) supports.
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocols.is_empty() || protocol_type.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols
                .iter()
                .any(|(name, _)| self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == name)))
    }

    /// A static instance id taken by another member id.
    fn fenced(&self, instance_id: Option<&str>, member_id: &str) -> bool {
        instance_id.and_then(|i| self.statics.get(i)).is_some_and(|known| known != member_id)
    }

    pub fn join(&mut self, args: JoinArgs, limits: &GroupLimits, now: Instant, now_ms: i64) -> Joined {
        // Each protocol costs its bytes and an entry (an empty one is not free).
        let metadata_bytes: usize = args.protocols.iter().map(|(n, m)| n.len() + m.len() + 64).sum();
        let too_long = |s: &str| s.len() > MAX_STORED_STRING_BYTES;
        let refused = if self.state == GroupState::Dead {
            Some(ResponseError::CoordinatorNotAvailable)
        } else if args.session_timeout_ms < limits.min_session_timeout_ms
            || args.session_timeout_ms > limits.max_session_timeout_ms
        {
            Some(ResponseError::InvalidSessionTimeout)
        } else if args.instance_id.as_deref().is_some_and(too_long)
            || too_long(&args.protocol_type)
            || args.protocols.iter().any(|(name, _)| too_long(name))
        {
            Some(ResponseError::InvalidRequest)
        } else if metadata_bytes > limits.max_member_metadata_bytes {
            tracing::warn!(group = %self.id, metadata_bytes, "JoinGroup refused: member metadata over group_max_member_metadata_bytes");
            Some(ResponseError::InvalidRequest)
        } else if !self.supports(&args.protocol_type, &args.protocols) {
            Some(ResponseError::InconsistentGroupProtocol)
        } else {
            None
        };
        if let Some(code) = refused {
            return Joined::Now(join_error(code, &args.member_id));
        }
        if args.member_id.is_empty() {
            self.join_new_member(args, limits, now, now_ms)
        } else {
            self.join_known_member(args, limits, now, now_ms)
        }
    }

    fn join_new_member(&mut self, args: JoinArgs, limits: &GroupLimits, now: Instant, now_ms: i64) -> Joined {
        let rejoining_static = args.instance_id.as_ref().and_then(|i| self.statics.get(i)).cloned();
        if rejoining_static.is_none() && self.members.len() + self.pending_members.len() >= limits.max_size {
            return Joined::Now(join_error(ResponseError::GroupMaxSizeReached, ""));
        }
        let prefix = args.instance_id.as_deref().unwrap_or(&args.client_id);
        let prefix = &prefix[..prefix.floor_char_boundary(MEMBER_ID_PREFIX_MAX_BYTES)];
        let id = uuid::Uuid::from_bytes(crate::broker::metadata::random_topic_id());
        let member_id = format!("{prefix}-{id}");
        if let Some(old_id) = rejoining_static {
            return self.replace_static_member(old_id, member_id, args, limits, now, now_ms);
        }
        if args.instance_id.is_none() && args.require_known_member_id {
            let deadline = now + Duration::from_millis(args.session_timeout_ms as u64);
            self.pending_members.insert(member_id.clone(), deadline);
            return Joined::Now(join_error(ResponseError::MemberIdRequired, &member_id));
        }
        self.add_member_and_rebalance(member_id, args, limits, now, now_ms)
    }

    fn join_known_member(&mut self, args: JoinArgs, limits: &GroupLimits, now: Instant, now_ms: i64) -> Joined {
        let member_id = args.member_id.clone();
        if self.pending_members.remove(&member_id).is_some() {
            return self.add_member_and_rebalance(member_id, args, limits, now, now_ms);
        }
        if self.fenced(args.instance_id.as_deref(), &member_id) {
            return Joined::Now(join_error(ResponseError::FencedInstanceId, &member_id));
        }
        let Some(member) = self.members.get(&member_id) else {
            return Joined::Now(join_error(ResponseError::UnknownMemberId, &member_id));
        };
        let unchanged = member.protocols == args.protocols;
        let is_leader = self.leader.as_deref() == Some(member_id.as_str());
        match self.state {
            GroupState::CompletingRebalance if unchanged => Joined::Now(self.join_result(&member_id)),
            GroupState::Stable if unchanged && !is_leader => Joined::Now(self.join_result(&member_id)),
            GroupState::PreparingRebalance | GroupState::CompletingRebalance | GroupState::Stable => {
                let rx = self.update_member(&member_id, args, now);
                self.prepare_rebalance(limits, now, now_ms);
                self.try_complete_join(now, now_ms);
                Joined::Wait(rx)
            }
            GroupState::Empty | GroupState::Dead => Joined::Now(join_error(ResponseError::UnknownMemberId, &member_id)),
        }
    }

    /// A static member rejoined with a new member id: the old id is fenced.
    /// A stable group hands it its old assignment without a rebalance.
    fn replace_static_member(
        &mut self,
        old_id: String,
        new_id: String,
        args: JoinArgs,
        limits: &GroupLimits,
        now: Instant,
        now_ms: i64,
    ) -> Joined {
        let Some(mut member) = self.members.remove(&old_id) else {
            return Joined::Now(join_error(ResponseError::UnknownMemberId, ""));
        };
        if let Some(w) = member.join_waiter.take() {
            let _ = w.send(join_error(ResponseError::FencedInstanceId, &old_id));
        }
        if let Some(w) = member.sync_waiter.take() {
            let _ = w.send(sync_error(ResponseError::FencedInstanceId));
        }
        member.id = new_id.clone();
        member.client_id = args.client_id.clone();
        member.client_host = args.client_host.clone();
        member.session_timeout_ms = args.session_timeout_ms;
        member.rebalance_timeout_ms = args.rebalance_timeout_ms;
        member.heartbeat_deadline = now + Duration::from_millis(args.session_timeout_ms as u64);
        if let Some(instance) = &args.instance_id {
            self.statics.insert(instance.clone(), new_id.clone());
        }
        let old_leader = self.leader.clone();
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = Some(new_id.clone());
        }
        self.members.insert(new_id.clone(), member);
        if self.state == GroupState::Stable {
            // Kafka's rule: no rebalance while the group's protocol stays the
            // one it would select (a restarted client's metadata differs in
            // owned partitions and generation, not in what it supports).
            let old_protocols = std::mem::replace(
                &mut self.members.get_mut(&new_id).expect("just inserted").protocols,
                args.protocols.clone(),
            );
            if self.protocol.as_deref() == Some(self.select_protocol().as_str()) {
                // Stored before the answer (the coordinator persists
                // `store_wanted`), so the new id survives a restart.
                self.store_wanted = true;
                let mut result = self.join_result(&new_id);
                result.members.clear();
                // The old leader's id: before JoinGroup v9 a client told it
                // leads would run its assignor over an empty member list.
                result.leader = str_bytes(old_leader.as_deref().unwrap_or(""));
                return Joined::Now(result);
            }
            self.members.get_mut(&new_id).expect("just inserted").protocols = old_protocols;
        }
        let rx = self.update_member(&new_id, args, now);
        self.prepare_rebalance(limits, now, now_ms);
        self.try_complete_join(now, now_ms);
        Joined::Wait(rx)
    }

    fn add_member_and_rebalance(
        &mut self,
        member_id: String,
        args: JoinArgs,
        limits: &GroupLimits,
        now: Instant,
        now_ms: i64,
    ) -> Joined {
        if self.members.is_empty() {
            self.protocol_type = Some(args.protocol_type.clone());
        }
        if let Some(instance) = &args.instance_id {
            self.statics.insert(instance.clone(), member_id.clone());
        }
        let (tx, rx) = oneshot::channel();
        let member = Member {
            id: member_id.clone(),
            instance_id: args.instance_id,
            client_id: args.client_id,
            client_host: args.client_host,
            session_timeout_ms: args.session_timeout_ms,
            rebalance_timeout_ms: args.rebalance_timeout_ms,
            protocols: args.protocols,
            assignment: Bytes::new(),
            join_waiter: Some(tx),
            sync_waiter: None,
            synced: false,
            heartbeat_deadline: now + Duration::from_millis(args.session_timeout_ms as u64),
        };
        self.members.insert(member_id, member);
        if let Some(delay) = &mut self.initial_delay {
            delay.added = true;
        }
        self.prepare_rebalance(limits, now, now_ms);
        self.try_complete_join(now, now_ms);
        Joined::Wait(rx)
    }

    fn update_member(&mut self, member_id: &str, args: JoinArgs, now: Instant) -> oneshot::Receiver<JoinGroupResponse> {
        let member = self.members.get_mut(member_id).expect("updated member exists");
        let (tx, rx) = oneshot::channel();
        // A second JoinGroup replaces the first; the first is answered as superseded.
        if let Some(old) = member.join_waiter.replace(tx) {
            let _ = old.send(join_error(ResponseError::RebalanceInProgress, member_id));
        }
        member.protocols = args.protocols;
        member.session_timeout_ms = args.session_timeout_ms;
        member.rebalance_timeout_ms = args.rebalance_timeout_ms;
        member.client_id = args.client_id;
        member.client_host = args.client_host;
        member.heartbeat_deadline = now + Duration::from_millis(args.session_timeout_ms as u64);
        rx
    }

    fn max_rebalance_timeout(&self) -> Duration {
        let ms = self.members.values().map(|m| m.rebalance_timeout_ms.max(0)).max().unwrap_or(0);
        Duration::from_millis(ms as u64)
    }

    /// Starts a rebalance unless one is under way.
    fn prepare_rebalance(&mut self, limits: &GroupLimits, now: Instant, now_ms: i64) {
        match self.state {
            GroupState::PreparingRebalance | GroupState::Dead => return,
            GroupState::CompletingRebalance => {
                for member in self.members.values_mut() {
                    member.assignment = Bytes::new();
                    if let Some(w) = member.sync_waiter.take() {
                        let _ = w.send(sync_error(ResponseError::RebalanceInProgress));
                    }
                }
            }
            GroupState::Empty | GroupState::Stable => {}
        }
        let rebalance_timeout = self.max_rebalance_timeout();
        if self.state == GroupState::Empty && !limits.initial_rebalance_delay.is_zero() {
            // A starting fleet: wait for more members, as long as they keep coming.
            let delay = limits.initial_rebalance_delay.min(rebalance_timeout);
            self.join_deadline = Some(now + delay);
            self.initial_delay =
                Some(InitialDelay { cap: now + rebalance_timeout.max(delay), step: delay, added: false });
        } else {
            self.join_deadline = Some(now + rebalance_timeout);
            self.initial_delay = None;
        }
        self.sync_deadline = None;
        self.transition(GroupState::PreparingRebalance, now_ms);
    }

    /// Completes the join once every member has rejoined (never early in an
    /// initial delay), or at its deadline.
    pub fn try_complete_join(&mut self, now: Instant, now_ms: i64) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let due = self.join_deadline.is_some_and(|d| now >= d);
        if let Some(delay) = self.initial_delay {
            if !due {
                return;
            }
            if delay.added && now < delay.cap {
                self.join_deadline = Some(now + delay.step.min(delay.cap - now));
                self.initial_delay = Some(InitialDelay { added: false, ..delay });
                return;
            }
        } else {
            let all_joined = self.pending_members.is_empty() && self.members.values().all(|m| m.join_waiter.is_some());
            if !all_joined && !due {
                return;
            }
        }
        self.complete_join(now, now_ms);
    }

    fn complete_join(&mut self, now: Instant, now_ms: i64) {
        // Dynamic members that did not rejoin are gone; static ones keep
        // their place (their session timeout decides), as in Kafka.
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none() && m.instance_id.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        let joined: Vec<String> =
            self.members.values().filter(|m| m.join_waiter.is_some()).map(|m| m.id.clone()).collect();
        if joined.is_empty() && !self.members.is_empty() {
            // Only absent static members: wait for them to rejoin or expire.
            self.join_deadline = Some(now + self.max_rebalance_timeout());
            self.initial_delay = None;
            return;
        }
        self.join_deadline = None;
        self.initial_delay = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.protocol = None;
            self.leader = None;
            self.transition(GroupState::Empty, now_ms);
            self.store_wanted = true;
            return;
        }
        self.protocol = Some(self.select_protocol());
        if self.leader.as_ref().is_none_or(|l| !joined.contains(l)) {
            self.leader = joined.first().cloned();
        }
        self.transition(GroupState::CompletingRebalance, now_ms);
        self.sync_deadline = Some(now + self.max_rebalance_timeout());
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let result = self.join_result(&id);
            let member = self.members.get_mut(&id).expect("listed member exists");
            match member.join_waiter.take() {
                Some(w) => {
                    member.synced = false;
                    member.heartbeat_deadline = now + Duration::from_millis(member.session_timeout_ms as u64);
                    let _ = w.send(result);
                }
                // An absent static member is not expected to sync.
                None => member.synced = true,
            }
        }
    }

    /// The protocol every member supports that most members prefer.
    fn select_protocol(&self) -> String {
        let first = self.members.values().next().expect("a group with members");
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| self.members.values().all(|m| m.protocols.iter().any(|(p, _)| p == *n)))
            .collect();
        let mut votes: Vec<(usize, &String)> = candidates.iter().map(|c| (0, *c)).collect();
        for member in self.members.values() {
            let choice = member.protocols.iter().map(|(n, _)| n).find(|n| candidates.contains(n));
            if let Some(vote) = votes.iter_mut().find(|(_, c)| Some(*c) == choice) {
                vote.0 += 1;
            }
        }
        // Ties go to the earlier candidate in the first member's preference.
        let best = votes.iter().rev().max_by_key(|(n, _)| *n).map(|(_, c)| (*c).clone());
        best.unwrap_or_default()
    }

    /// The JoinGroup answer of the current generation for `member_id`; the
    /// leader also gets every member's metadata.
    fn join_result(&self, member_id: &str) -> JoinGroupResponse {
        let protocol = self.protocol.clone().unwrap_or_default();
        let mut r = JoinGroupResponse::default();
        r.generation_id = self.generation;
        r.protocol_type = self.protocol_type.as_deref().map(str_bytes);
        r.protocol_name = Some(str_bytes(&protocol));
        r.leader = str_bytes(self.leader.as_deref().unwrap_or(""));
        r.member_id = str_bytes(member_id);
        if self.leader.as_deref() == Some(member_id) {
            r.members = self
                .members
                .values()
                .map(|m| {
                    let mut out = JoinGroupResponseMember::default();
                    out.member_id = str_bytes(&m.id);
                    out.group_instance_id = m.instance_id.as_deref().map(str_bytes);
                    out.metadata = m.metadata_for(&protocol);
                    out
                })
                .collect();
        }
        r
    }

    /// Checks a member's (generation, id, instance id) for Sync, Heartbeat and commits.
    fn check_member(&self, generation: i32, member_id: &str, instance_id: Option<&str>) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if self.fenced(instance_id, member_id) {
            return Err(ResponseError::FencedInstanceId);
        }
        if !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    pub fn sync(
        &mut self,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        protocol: (Option<&str>, Option<&str>),
        assignments: Vec<(String, Bytes)>,
        now_ms: i64,
    ) -> Synced {
        if let Err(e) = self.check_member(generation, member_id, instance_id) {
            return Synced::Now(sync_error(e));
        }
        let (protocol_type, protocol_name) = protocol;
        if protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || protocol_name.is_some_and(|n| Some(n) != self.protocol.as_deref())
        {
            return Synced::Now(sync_error(ResponseError::InconsistentGroupProtocol));
        }
        match self.state {
            GroupState::PreparingRebalance => Synced::Now(sync_error(ResponseError::RebalanceInProgress)),
            GroupState::Stable => Synced::Now(self.sync_result(member_id)),
            GroupState::Empty | GroupState::Dead => Synced::Now(sync_error(ResponseError::UnknownMemberId)),
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                let member = self.members.get_mut(member_id).expect("checked member");
                member.synced = true;
                if let Some(old) = member.sync_waiter.replace(tx) {
                    let _ = old.send(sync_error(ResponseError::RebalanceInProgress));
                }
                if self.leader.as_deref() != Some(member_id) {
                    return Synced::Wait(rx);
                }
                let assigned: HashMap<String, Bytes> = assignments.into_iter().collect();
                let mut value = self.stored(now_ms);
                for m in &mut value.members {
                    m.assignment = assigned.get(&m.member_id).cloned().unwrap_or_default();
                }
                Synced::Store(rx, value)
            }
        }
    }

    /// The leader's assignment is stored (or failed to be): hand it out and
    /// become Stable, if the group is still in that generation.
    pub fn finish_sync(&mut self, generation: i32, stored: Result<GroupValue, ResponseError>, now_ms: i64) {
        if self.state != GroupState::CompletingRebalance || self.generation != generation {
            return;
        }
        match stored {
            Ok(value) => {
                self.last_stored = Some(value.clone());
                for m in value.members {
                    if let Some(member) = self.members.get_mut(&m.member_id) {
                        member.assignment = m.assignment;
                    }
                }
                self.sync_deadline = None;
                self.transition(GroupState::Stable, now_ms);
                let ids: Vec<String> = self.members.keys().cloned().collect();
                for id in ids {
                    let result = self.sync_result(&id);
                    if let Some(w) = self.members.get_mut(&id).and_then(|m| m.sync_waiter.take()) {
                        let _ = w.send(result);
                    }
                }
            }
            Err(code) => {
                for member in self.members.values_mut() {
                    member.assignment = Bytes::new();
                    if let Some(w) = member.sync_waiter.take() {
                        let _ = w.send(sync_error(code));
                    }
                }
                // Members rejoin on the error; a fresh rebalance collects them.
                self.state = GroupState::Stable;
                let limits = GroupLimits::for_retry();
                self.prepare_rebalance(&limits, Instant::now(), now_ms);
            }
        }
    }

    fn sync_result(&self, member_id: &str) -> SyncGroupResponse {
        let mut r = SyncGroupResponse::default();
        r.protocol_type = self.protocol_type.as_deref().map(str_bytes);
        r.protocol_name = self.protocol.as_deref().map(str_bytes);
        r.assignment = self.members.get(member_id).map(|m| m.assignment.clone()).unwrap_or_default();
        r
    }

    pub fn heartbeat(&mut self, generation: i32, member_id: &str, instance_id: Option<&str>, now: Instant) -> i16 {
        if self.state == GroupState::Empty && !self.members.contains_key(member_id) {
            return error(ResponseError::UnknownMemberId);
        }
        if let Err(e) = self.check_member(generation, member_id, instance_id) {
            return error(e);
        }
        let member = self.members.get_mut(member_id).expect("checked member");
        member.heartbeat_deadline = now + Duration::from_millis(member.session_timeout_ms as u64);
        match self.state {
            GroupState::PreparingRebalance => error(ResponseError::RebalanceInProgress),
            _ => 0,
        }
    }

    /// LeaveGroup for one member (by id, or by instance id when the id is empty).
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        limits: &GroupLimits,
        now: Instant,
        now_ms: i64,
    ) -> i16 {
        if self.state == GroupState::Dead {
            return error(ResponseError::CoordinatorNotAvailable);
        }
        if self.pending_members.remove(member_id).is_some() {
            self.try_complete_join(now, now_ms);
            return 0;
        }
        let id = match (member_id, instance_id) {
            ("", Some(instance)) => match self.statics.get(instance) {
                Some(id) => id.clone(),
                None => return error(ResponseError::UnknownMemberId),
            },
            (id, instance) if self.fenced(instance, id) => return error(ResponseError::FencedInstanceId),
            (id, _) => id.to_string(),
        };
        if !self.members.contains_key(&id) {
            return error(ResponseError::UnknownMemberId);
        }
        tracing::info!(group = %self.id, member = %id, "member left the group");
        self.remove_member_and_update(&id, limits, now, now_ms);
        0
    }

    fn remove_member(&mut self, member_id: &str) {
        if let Some(mut member) = self.members.remove(member_id) {
            if let Some(instance) = &member.instance_id {
                if self.statics.get(instance).map(String::as_str) == Some(member_id) {
                    self.statics.remove(instance);
                }
            }
            if let Some(w) = member.join_waiter.take() {
                let _ = w.send(join_error(ResponseError::UnknownMemberId, member_id));
            }
            if let Some(w) = member.sync_waiter.take() {
                let _ = w.send(sync_error(ResponseError::UnknownMemberId));
            }
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = self.members.keys().next().cloned();
        }
    }

    fn remove_member_and_update(&mut self, member_id: &str, limits: &GroupLimits, now: Instant, now_ms: i64) {
        self.remove_member(member_id);
        if matches!(self.state, GroupState::Stable | GroupState::CompletingRebalance) {
            self.prepare_rebalance(limits, now, now_ms);
        }
        // The last member gone: the group is Empty before the leave is answered.
        self.try_complete_join(now, now_ms);
    }

    /// Timers: expired sessions, joins and syncs that ran out of time,
    /// pending member ids never used.
    pub fn tick(&mut self, limits: &GroupLimits, now: Instant, now_ms: i64) {
        self.pending_members.retain(|_, deadline| now < *deadline);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting() && now >= m.heartbeat_deadline)
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %self.id, member = %id, "member's session expired; removing it");
            self.remove_member_and_update(&id, limits, now, now_ms);
        }
        if self.state == GroupState::CompletingRebalance && self.sync_deadline.is_some_and(|d| now >= d) {
            let unsynced: Vec<String> = self.members.values().filter(|m| !m.synced).map(|m| m.id.clone()).collect();
            for id in unsynced {
                tracing::info!(group = %self.id, member = %id, "member did not sync in time; removing it");
                self.remove_member(&id);
            }
            self.prepare_rebalance(limits, now, now_ms);
        }
        self.try_complete_join(now, now_ms);
    }

    /// Checks a commit's member and generation. An empty group takes commits
    /// outside any generation (simple consumers, admin tools); a member's
    /// commit also counts as its heartbeat.
    pub fn check_commit(
        &mut self,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if generation < 0 && self.state == GroupState::Empty {
            return Ok(());
        }
        self.check_member(generation, member_id, instance_id)?;
        if self.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        let member = self.members.get_mut(member_id).expect("checked member");
        member.heartbeat_deadline = now + Duration::from_millis(member.session_timeout_ms as u64);
        Ok(())
    }

    /// Applies a durable commit unless a later record already did.
    pub fn apply_offset(&mut self, topic: String, partition: i32, value: Option<OffsetValue>, record_offset: i64) {
        let key = (topic, partition);
        if self.offsets.get(&key).is_some_and(|c| c.record_offset > record_offset) {
            return;
        }
        match value {
            Some(value) => {
                self.offsets.insert(key, Committed { value, record_offset });
            }
            None => {
                self.offsets.remove(&key);
            }
        }
    }

    /// The group's membership as stored in `__consumer_offsets`.
    pub fn stored(&self, now_ms: i64) -> GroupValue {
        let protocol = self.protocol.clone().unwrap_or_default();
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            state_timestamp_ms: now_ms,
            members: self
                .members
                .values()
                .map(|m| StoredMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata_for(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Restores membership from a stored record (at load): Stable with its
    /// members, whose sessions start now, or Empty.
    pub fn restore(&mut self, value: GroupValue, now: Instant) {
        self.last_stored = Some(value.clone());
        self.generation = value.generation;
        self.protocol_type = (!value.protocol_type.is_empty()).then_some(value.protocol_type);
        self.protocol = value.protocol.clone();
        self.leader = value.leader;
        self.state_timestamp_ms = value.state_timestamp_ms;
        self.members.clear();
        self.statics.clear();
        let protocol = value.protocol.unwrap_or_default();
        for mut m in value.members {
            // Stored values are trusted no further than requests.
            m.session_timeout_ms = m.session_timeout_ms.clamp(0, i32::MAX);
            m.rebalance_timeout_ms = m.rebalance_timeout_ms.clamp(0, i32::MAX);
            if let Some(instance) = &m.instance_id {
                self.statics.insert(instance.clone(), m.member_id.clone());
            }
            let member = Member {
                id: m.member_id.clone(),
                instance_id: m.instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                session_timeout_ms: m.session_timeout_ms,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                protocols: vec![(protocol.clone(), m.subscription)],
                assignment: m.assignment,
                join_waiter: None,
                sync_waiter: None,
                synced: true,
                heartbeat_deadline: now + Duration::from_millis(m.session_timeout_ms as u64),
            };
            self.members.insert(m.member_id, member);
        }
        self.state = if self.members.is_empty() { GroupState::Empty } else { GroupState::Stable };
    }

    /// The topics the members subscribe to, for the "consumer" protocol.
    pub fn subscribed_topics(&self) -> Option<std::collections::HashSet<String>> {
        if self.protocol_type.as_deref() != Some("consumer") || self.members.is_empty() {
            return None;
        }
        let protocol = self.protocol.as_deref()?;
        let mut topics = std::collections::HashSet::new();
        for member in self.members.values() {
            topics.extend(consumer_subscription_topics(&member.metadata_for(protocol))?);
        }
        Some(topics)
    }
}

impl GroupLimits {
    /// Limits for a rebalance started after a failed store (no initial delay).
    fn for_retry() -> GroupLimits {
        GroupLimits {
            initial_rebalance_delay: Duration::ZERO,
            min_session_timeout_ms: 0,
            max_session_timeout_ms: i32::MAX,
            max_size: usize::MAX,
            max_member_metadata_bytes: usize::MAX,
        }
    }
}

/// The topics of a consumer protocol subscription (version, topics, ...).
fn consumer_subscription_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut b = metadata;
    let take = |b: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head.to_vec())
    };
    let _version = i16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
    let count = i32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
    let mut topics = Vec::new();
    for _ in 0..count.clamp(0, 100_000) {
        let len = i16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?);
        topics.push(String::from_utf8(take(&mut b, len.max(0) as usize)?).ok()?);
    }
    Some(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> GroupLimits {
        GroupLimits {
            initial_rebalance_delay: Duration::ZERO,
            min_session_timeout_ms: 1,
            max_session_timeout_ms: 100_000,
            max_size: 10,
            max_member_metadata_bytes: 1 << 20,
        }
    }

    fn args(member_id: &str) -> JoinArgs {
        JoinArgs {
            group_id: "g".into(),
            member_id: member_id.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            require_known_member_id: true,
        }
    }

    fn joined(j: Joined) -> JoinGroupResponse {
        match j {
            Joined::Now(r) => r,
            Joined::Wait(mut rx) => rx.try_recv().unwrap().expect("join completed"),
        }
    }

    #[test]
    fn two_step_join_then_sync_makes_the_group_stable() {
        let mut g = Group::new("g".into(), 0);
        let now = Instant::now();
        let first = joined(g.join(args(""), &limits(), now, 0));
        assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
        let id = first.member_id.to_string();
        let second = joined(g.join(args(&id), &limits(), now, 0));
        assert_eq!((second.error_code, second.generation_id), (0, 1));
        assert_eq!(second.leader.as_str(), id);
        assert_eq!(second.members.len(), 1);
        let stored = match g.sync(1, &id, None, (None, None), vec![(id.clone(), Bytes::from_static(b"a"))], 0) {
            Synced::Store(_, value) => value,
            _ => panic!("the leader's sync stores the group"),
        };
        g.finish_sync(1, Ok(stored), 0);
        assert_eq!(g.state, GroupState::Stable);
        assert_eq!(g.members[&id].assignment, Bytes::from_static(b"a"));
        assert_eq!(g.heartbeat(0, &id, None, now), ResponseError::IllegalGeneration.code());
        assert_eq!(g.heartbeat(1, "nobody", None, now), ResponseError::UnknownMemberId.code());
        assert_eq!(g.check_commit(0, &id, None, now), Err(ResponseError::IllegalGeneration));
        assert_eq!(g.check_commit(1, &id, None, now), Ok(()));
    }

    #[test]
    fn an_expired_session_removes_the_member_and_empties_the_group() {
        let mut g = Group::new("g".into(), 0);
        let now = Instant::now();
        let id = joined(g.join(args(""), &limits(), now, 0)).member_id.to_string();
        joined(g.join(args(&id), &limits(), now, 0));
        g.tick(&limits(), now + Duration::from_secs(11), 0);
        assert!(g.members.is_empty());
        assert_eq!(g.state, GroupState::Empty);
    }

    #[test]
    fn the_last_member_leaving_empties_the_group_before_the_answer() {
        let mut g = Group::new("g".into(), 0);
        let now = Instant::now();
        let id = joined(g.join(args(""), &limits(), now, 0)).member_id.to_string();
        joined(g.join(args(&id), &limits(), now, 0));
        stabilize(&mut g, &id, vec![(id.clone(), Bytes::new())]);
        assert_eq!(g.leave(&id, None, &limits(), now, 0), 0);
        assert_eq!((g.state, g.members.len()), (GroupState::Empty, 0));
        assert!(g.store_wanted, "the empty group is stored");
    }

    fn stabilize(g: &mut Group, leader: &str, assignments: Vec<(String, Bytes)>) {
        let generation = g.generation;
        match g.sync(generation, leader, None, (None, None), assignments, 0) {
            Synced::Store(_, value) => g.finish_sync(generation, Ok(value), 0),
            _ => panic!("the leader's sync stores the group"),
        }
        assert_eq!(g.state, GroupState::Stable);
    }

    #[test]
    fn a_restarted_static_member_gets_its_assignment_without_a_rebalance() {
        let mut g = Group::new("g".into(), 0);
        let now = Instant::now();
        let mut static_args = args("");
        static_args.instance_id = Some("worker-1".into());
        let first = joined(g.join(static_args, &limits(), now, 0));
        assert_eq!((first.error_code, first.generation_id), (0, 1), "static members join in one step");
        let old_id = first.member_id.to_string();
        stabilize(&mut g, &old_id, vec![(old_id.clone(), Bytes::from_static(b"p0"))]);

        let mut again = args("");
        again.instance_id = Some("worker-1".into());
        let rejoined = joined(g.join(again, &limits(), now, 0));
        assert_eq!((rejoined.error_code, rejoined.generation_id), (0, 1), "same generation: no rebalance");
        assert_eq!(g.state, GroupState::Stable);
        let new_id = rejoined.member_id.to_string();
        assert_ne!(new_id, old_id);
        assert_eq!(g.members[&new_id].assignment, Bytes::from_static(b"p0"));
        assert_eq!(
            g.heartbeat(1, &old_id, Some("worker-1"), now),
            ResponseError::FencedInstanceId.code(),
            "the old incarnation is fenced"
        );
        assert_eq!(g.heartbeat(1, &new_id, Some("worker-1"), now), 0);
    }

    #[test]
    fn members_joining_within_the_initial_delay_share_one_generation() {
        let mut limits = limits();
        limits.initial_rebalance_delay = Duration::from_millis(3000);
        let mut g = Group::new("g".into(), 0);
        let now = Instant::now();
        let a = joined(g.join(args(""), &limits, now, 0)).member_id.to_string();
        let b = joined(g.join(args(""), &limits, now, 0)).member_id.to_string();
        let (Joined::Wait(mut ra), Joined::Wait(mut rb)) =
            (g.join(args(&a), &limits, now, 0), g.join(args(&b), &limits, now + Duration::from_secs(1), 0))
        else {
            panic!("joins wait for the delay");
        };
        g.tick(&limits, now + Duration::from_millis(2900), 0);
        assert!(ra.try_recv().unwrap().is_none(), "still within the delay");
        // b joined during the first delay: one more delay, then one generation for both.
        g.tick(&limits, now + Duration::from_millis(3000), 0);
        assert!(ra.try_recv().unwrap().is_none(), "extended for the member that came");
        g.tick(&limits, now + Duration::from_millis(6000), 0);
        let (ja, jb) = (ra.try_recv().unwrap().unwrap(), rb.try_recv().unwrap().unwrap());
        assert_eq!((ja.generation_id, jb.generation_id), (1, 1));
        assert_eq!(ja.members.len() + jb.members.len(), 2);
    }

    #[test]
    fn subscription_topics_parse() {
        let mut m = vec![0u8, 1, 0, 0, 0, 2];
        for t in ["a", "bc"] {
            m.extend_from_slice(&(t.len() as i16).to_be_bytes());
            m.extend_from_slice(t.as_bytes());
        }
        assert_eq!(consumer_subscription_topics(&m), Some(vec!["a".into(), "bc".into()]));
        assert_eq!(consumer_subscription_topics(&[0, 1, 0, 0, 0, 9]), None);
    }
}
