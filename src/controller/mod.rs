//! The controller quorum: the cluster's metadata as a Raft log (KRaft's
//! design), on TiKV's raft-rs driven from shard 0 of every voter.
//!
//! raft-rs is sans-I/O: this module gives it a clock (a tick every
//! `controller_tick_ms`), a disk (`store`: the log, fdatasync'ed before
//! raft-rs may act on it) and a network (`transport`). One task, the driver,
//! owns the `RawNode` and does all of that in Ready order. Committed entries
//! are metadata records (`records`); every voter applies them to its image
//! and installs the result on its shards before a change is answered.
//!
//! Changes themselves are made only by the active controller's admin queue
//! (`broker::admin`): it applies queued ops to a copy of the image, proposes
//! the difference as one entry and answers once that entry is applied. Other
//! nodes forward their ops to it. With no voters configured a node is a
//! one-voter quorum of itself and elects itself at once.

pub mod records;
pub mod store;
pub mod transport;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use kafka_protocol::error::ResponseError;
use raft::prelude::{Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, StateRole, Storage};
use serde::{Deserialize, Serialize};
use shards::NodeId;
use tracing::{error, info, warn};

use crate::broker::admin::{AdminError, AdminOp};
use crate::broker::metadata::{BrokerRegistration, ClusterMeta};
use crate::broker::Broker;
use store::{LogFiles, RaftStore};

/// Events queued for the driver, beyond which peers' messages are dropped.
const EVENT_QUEUE: usize = 4096;
/// Events the driver takes before handling a Ready.
const EVENTS_PER_ROUND: usize = 256;
/// Applied rounds waiting for their shard installs before the driver waits.
const MAX_PENDING_INSTALLS: usize = 256;
/// Longest a change waits to be committed and applied.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Raft's election timeout and heartbeat, in ticks.
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 2;
/// Entries of one append message (raft-rs's max_size_per_msg).
const MAX_RAFT_MESSAGE_BYTES: u64 = 1 << 20;

/// One voter of the quorum: `id@host:port`.
#[derive(Clone, Debug, PartialEq)]
pub struct Voter {
    pub id: NodeId,
    pub addr: String,
}

/// Parses `controller_quorum_voters` (`1@host:port,2@host:port`).
pub fn parse_voters(spec: &str) -> anyhow::Result<Vec<Voter>> {
    let mut voters = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('@').with_context(|| format!("voter {part:?} is not id@host:port"))?;
        let id: NodeId = id.parse().with_context(|| format!("voter {part:?}: bad node id"))?;
        if id < 0 || !addr.contains(':') {
            bail!("voter {part:?} is not id@host:port");
        }
        if voters.iter().any(|v: &Voter| v.id == id) {
            bail!("voter {id} is listed twice");
        }
        voters.push(Voter { id, addr: addr.to_string() });
    }
    Ok(voters)
}

/// raft-rs reserves id 0; Kafka node ids start at 0.
fn raft_id(node: NodeId) -> u64 {
    node as u64 + 1
}

fn node_of(raft_id: u64) -> NodeId {
    raft_id as NodeId - 1
}

fn not_controller(message: impl Into<String>) -> AdminError {
    AdminError { code: ResponseError::NotController.code(), message: message.into() }
}

/// Requests a node sends to the active controller.
#[derive(Debug, Serialize, Deserialize)]
pub enum ControllerRequest {
    Heartbeat(BrokerRegistration),
    Admin(AdminOp),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ControllerResponse {
    /// The broker is registered (and unfenced) in the image at `index`.
    Heartbeat { index: u64 },
    /// The answer, and the index after which the change is applied.
    Admin { result: Result<i64, AdminError>, index: u64 },
    /// This node does not lead the quorum; maybe it knows who does.
    NotController { leader: NodeId },
}

enum Event {
    Tick,
    Step(Message),
    Propose { data: Vec<u8>, done: oneshot::Sender<Result<u64, AdminError>> },
}

/// Applied entries awaiting their install: (last index, whether the image
/// changed, the (index, term) of each entry).
type PendingInstall = (u64, bool, Vec<(u64, u64)>);

/// A proposal waiting for its entry to be applied.
struct Waiter {
    term: u64,
    done: oneshot::Sender<Result<u64, AdminError>>,
}

pub struct Controller {
    node_id: NodeId,
    voters: Vec<Voter>,
    broker: Rc<Broker>,
    /// One sender, never cloned: each clone of a futures sender adds a slot
    /// of its own, which would unbound the queue.
    events: RefCell<mpsc::Sender<Event>>,
    peers: HashMap<NodeId, Rc<transport::PeerLink>>,
    files: LogFiles,
    /// The image as applied here (what every shard has installed).
    image: RefCell<ClusterMeta>,
    leader: Cell<NodeId>,
    is_leader: Cell<bool>,
    /// Raft's commit index as last seen, and what is applied of it.
    committed: Cell<u64>,
    applied: Cell<u64>,
    /// Whether the commit index is of the current term: only then does this
    /// node know everything the quorum committed before (a new leader's
    /// first entry commits all of its predecessors' entries).
    commit_in_term: Cell<bool>,
    waiters: RefCell<BTreeMap<u64, Waiter>>,
    /// Applied entries whose installation on the shards is pending, oldest
    /// first: (last index, whether the image changed, (index, term) of each).
    /// The driver never waits for installs (a slow one, a deleted topic's
    /// files, would starve Raft's ticks and cost the quorum its leader).
    installs: RefCell<VecDeque<PendingInstall>>,
    install_bell: RefCell<mpsc::Sender<()>>,
    /// Active controller only: when each broker was last heard from.
    heard: RefCell<HashMap<NodeId, Instant>>,
    /// Active controller only: brokers whose fencing is being committed.
    fencing: RefCell<HashSet<NodeId>>,
}

impl Controller {
    /// Opens (or starts) the metadata log, installs its image on every
    /// shard, and starts the driver, the listener and the broker heartbeat.
    pub async fn start(broker: &Rc<Broker>) -> anyhow::Result<Rc<Controller>> {
        let config = broker.config.clone();
        let node_id = config.node_id;
        let mut voters = parse_voters(&config.controller_quorum_voters)?;
        if voters.is_empty() {
            voters.push(Voter { id: node_id, addr: config.controller_listen.clone() });
        }
        let me = voters.iter().find(|v| v.id == node_id).cloned();
        let Some(me) = me else {
            bail!("node {node_id} is not among controller_quorum_voters; every node is a voter for now");
        };
        let files = LogFiles::new(&config.data_dir);
        if !files.exists() {
            bootstrap(broker, &files, &voters).await?;
        }
        let loaded = files.clone();
        let store = glommio::executor().spawn_blocking(move || loaded.load()).await?;
        let mut image = ClusterMeta::new(node_id, broker.shard_count, Vec::new());
        records::decode_image(&mut image, store.current_snapshot().get_data())?;
        // What this node knows committed is applied before anything opens,
        // so that start-up sees the same metadata it served before.
        let applied = store.hard_state().commit.min(store.last_index_now());
        let first = store.current_snapshot().get_metadata().index + 1;
        if applied >= first {
            let context = raft::GetEntriesContext::empty(false);
            for entry in Storage::entries(&store, first, applied + 1, None, context)? {
                apply_entry(&mut image, &entry);
            }
        }
        image.applied_index = applied;
        broker.remove_leftover_dirs(&image).await?;

        let raft_config = raft::Config {
            id: raft_id(node_id),
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied,
            max_size_per_msg: MAX_RAFT_MESSAGE_BYTES,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let logger = slog::Logger::root(SlogToTracing, slog::o!());
        let mut node = RawNode::new(&raft_config, store, &logger).context("starting raft")?;
        if voters.len() == 1 {
            node.campaign().context("electing the only voter")?;
        }
        let (events, inbox) = mpsc::channel(EVENT_QUEUE);
        let (install_bell, install_rung) = mpsc::channel(1);
        let peers = voters
            .iter()
            .filter(|v| v.id != node_id)
            .map(|v| (v.id, transport::PeerLink::start(v.id, v.addr.clone())))
            .collect();
        let controller = Rc::new(Controller {
            node_id,
            voters: voters.clone(),
            broker: broker.clone(),
            events: RefCell::new(events),
            peers,
            files,
            image: RefCell::new(image.clone()),
            leader: Cell::new(-1),
            is_leader: Cell::new(false),
            committed: Cell::new(applied),
            applied: Cell::new(applied),
            commit_in_term: Cell::new(false),
            waiters: RefCell::new(BTreeMap::new()),
            installs: RefCell::new(VecDeque::new()),
            install_bell: RefCell::new(install_bell),
            heard: RefCell::new(HashMap::new()),
            fencing: RefCell::new(HashSet::new()),
        });
        broker.install_everywhere(Arc::new(image)).await;
        if voters.len() > 1 || !config.controller_listen.is_empty() {
            let listener = crate::server::bind_exclusive(&me.addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen for controller traffic on {}: {e}", me.addr))?;
            glommio::spawn_local(transport::serve(listener, controller.clone())).detach();
        }
        glommio::spawn_local(controller.clone().drive(node, inbox)).detach();
        glommio::spawn_local(controller.clone().install_loop(install_rung)).detach();
        glommio::spawn_local(controller.clone().tick_loop()).detach();
        Ok(controller)
    }

    /// The image as applied here (possibly ahead of what the shards have installed).
    pub fn image(&self) -> ClusterMeta {
        self.image.borrow().clone()
    }

    pub fn is_leader(&self) -> bool {
        self.is_leader.get()
    }

    pub fn leader(&self) -> NodeId {
        self.leader.get()
    }

    pub fn applied_index(&self) -> u64 {
        self.applied.get()
    }

    pub fn voters(&self) -> &[Voter] {
        &self.voters
    }

    /// Whether this node has applied everything the quorum committed that it knows of.
    pub fn caught_up(&self) -> bool {
        self.leader.get() >= 0 && self.commit_in_term.get() && self.applied.get() >= self.committed.get()
    }

    /// Proposes `records` as one entry; answers its index once it is
    /// applied here (and installed on every shard).
    pub async fn propose(&self, records: &[records::MetadataRecord]) -> Result<u64, AdminError> {
        if !self.is_leader() {
            return Err(not_controller(format!("node {} is not the active controller", self.node_id)));
        }
        let (done, answer) = oneshot::channel();
        let event = Event::Propose { data: records::encode_records(records), done };
        if self.events.borrow_mut().try_send(event).is_err() {
            return Err(not_controller("the controller is overloaded"));
        }
        match glommio::timer::timeout(PROPOSAL_TIMEOUT, async {
            Ok(answer.await.unwrap_or_else(|_| Err(not_controller("the controller stopped"))))
        })
        .await
        {
            Ok(result) => result,
            Err(_) => Err(AdminError {
                code: ResponseError::RequestTimedOut.code(),
                message: "the change was not committed in time (no quorum?)".into(),
            }),
        }
    }

    /// Waits until this node has applied `index` (bounded).
    pub async fn wait_applied(&self, index: u64) -> bool {
        let deadline = Instant::now() + transport::REQUEST_TIMEOUT;
        while self.applied.get() < index {
            if Instant::now() >= deadline {
                return false;
            }
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// The active controller's endpoint, if known and not this node.
    pub fn leader_addr(&self) -> Option<&str> {
        let leader = self.leader.get();
        self.voters.iter().find(|v| v.id == leader && leader != self.node_id).map(|v| v.addr.as_str())
    }

    async fn tick_loop(self: Rc<Self>) {
        let tick = Duration::from_millis(self.broker.config.controller_tick_ms.max(1));
        loop {
            glommio::timer::sleep(tick).await;
            let _ = self.events.borrow_mut().try_send(Event::Tick);
            if self.is_leader() {
                self.fence_silent_brokers();
            }
        }
    }

    /// The driver: the only owner of the `RawNode`.
    async fn drive(self: Rc<Self>, mut node: RawNode<RaftStore>, mut inbox: mpsc::Receiver<Event>) {
        loop {
            let Some(event) = inbox.next().await else { return };
            self.handle(&mut node, event);
            for _ in 0..EVENTS_PER_ROUND {
                match inbox.try_recv() {
                    Ok(event) => self.handle(&mut node, event),
                    _ => break,
                }
            }
            if let Err(e) = self.process_ready(&mut node).await {
                // The log could not be written: acting on unpersisted state
                // could break Raft's promises, so the node stops, as Kafka's
                // controller does on a metadata log error.
                error!("metadata log: {e:#}; stopping");
                std::process::exit(1);
            }
        }
    }

    fn handle(&self, node: &mut RawNode<RaftStore>, event: Event) {
        match event {
            Event::Tick => {
                node.tick();
            }
            Event::Step(mut message) => {
                let last_index = node.raft.raft_log.last_index();
                if message.get_msg_type() == MessageType::MsgHeartbeat && message.commit > last_index {
                    // A leader that remembers more of this node's log than it
                    // has (its data directory was replaced): raft-rs would
                    // panic. Commit only what is here; the leader's next
                    // append finds the gap and sends the rest.
                    warn!(from = message.from, commit = message.commit, last_index, "heartbeat past this node's log");
                    message.commit = last_index;
                }
                if let Err(e) = node.step(message) {
                    tracing::debug!("raft step: {e}");
                }
            }
            Event::Propose { data, done } => {
                if node.raft.state != StateRole::Leader {
                    let _ = done.send(Err(not_controller("leadership moved")));
                    return;
                }
                let before = node.raft.raft_log.last_index();
                match node.propose(Vec::new(), data) {
                    Ok(()) if node.raft.raft_log.last_index() == before + 1 => {
                        let waiter = Waiter { term: node.raft.term, done };
                        self.waiters.borrow_mut().insert(before + 1, waiter);
                    }
                    Ok(()) => {
                        let _ = done.send(Err(not_controller("the proposal was dropped")));
                    }
                    Err(e) => {
                        let _ = done.send(Err(not_controller(format!("proposal refused: {e}"))));
                    }
                }
            }
        }
    }

    fn send(&self, messages: Vec<Message>) {
        for message in messages {
            match self.peers.get(&node_of(message.to)) {
                Some(link) => link.send(&message),
                None => warn!(to = message.to, "raft message to an unknown voter"),
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&LogFiles) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let files = self.files.clone();
        glommio::executor().spawn_blocking(move || work(&files)).await
    }

    /// Handles one Ready in raft-rs's order: send, install a snapshot, apply
    /// committed entries, persist entries and hard state, send what needed
    /// them persisted, advance.
    async fn process_ready(&self, node: &mut RawNode<RaftStore>) -> anyhow::Result<()> {
        if !node.has_ready() {
            return Ok(());
        }
        let mut ready = node.ready();
        if let Some(soft) = ready.ss() {
            let leader = if soft.leader_id == raft::INVALID_ID { -1 } else { node_of(soft.leader_id) };
            self.on_leader(leader, soft.raft_state == StateRole::Leader).await;
        }
        self.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            self.install_snapshot(node, ready.snapshot().clone()).await?;
        }
        if !ready.entries().is_empty() {
            let (cut_at, frames) = node.store().plan_append(ready.entries());
            self.blocking(move |files| files.append(cut_at, &frames)).await?;
            node.mut_store().append(ready.entries(), cut_at);
        }
        // The state (term, vote, commit) is durable before anything acts on
        // it: messages, and applying entries (a node restarts from what it
        // applied, so what it applied must be known committed).
        if let Some(hs) = ready.hs() {
            node.mut_store().set_hard_state(hs.clone());
            let hs = hs.clone();
            self.blocking(move |files| files.write_state(&hs)).await?;
        }
        self.apply_entries(ready.take_committed_entries()).await;
        self.send(ready.take_persisted_messages());
        let mut light = node.advance(ready);
        if let Some(commit) = light.commit_index() {
            node.mut_store().set_commit(commit);
            let hs = node.store().hard_state().clone();
            self.blocking(move |files| files.write_state(&hs)).await?;
        }
        self.send(light.take_messages());
        self.apply_entries(light.take_committed_entries()).await;
        node.advance_apply();
        let committed = node.raft.raft_log.committed;
        self.committed.set(committed);
        self.commit_in_term.set(node.raft.raft_log.term(committed).ok() == Some(node.raft.term));
        self.maybe_snapshot(node).await?;
        Ok(())
    }

    async fn on_leader(&self, leader: NodeId, is_leader: bool) {
        let was_leader = self.is_leader.replace(is_leader);
        if self.leader.replace(leader) != leader {
            info!(controller = leader, "controller leader changed");
        }
        if is_leader && !was_leader {
            // Every broker gets a full session before it can be fenced.
            let now = Instant::now();
            let mut heard = self.heard.borrow_mut();
            heard.clear();
            for node in self.image.borrow().brokers.keys() {
                heard.insert(*node, now);
            }
        }
        let applied = {
            let mut image = self.image.borrow_mut();
            image.controller = leader;
            image.applied_index
        };
        self.queue_install(applied, true, Vec::new()).await;
    }

    async fn install_snapshot(&self, node: &mut RawNode<RaftStore>, snapshot: Snapshot) -> anyhow::Result<()> {
        let index = snapshot.get_metadata().index;
        info!(index, "installing a metadata snapshot from the controller");
        let stored = snapshot.clone();
        self.blocking(move |files| files.write_snapshot(&stored)).await?;
        node.mut_store().install_snapshot(snapshot.clone());
        let frames = node.store().log_frames();
        self.blocking(move |files| files.rewrite_log(&frames)).await?;
        {
            let mut image = self.image.borrow_mut();
            records::decode_image(&mut image, snapshot.get_data())?;
            image.applied_index = index;
        }
        self.queue_install(index, true, Vec::new()).await;
        Ok(())
    }

    /// Applies committed entries to the image and queues its installation
    /// on every shard; the proposals among them are answered once installed.
    async fn apply_entries(&self, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| e.index) else { return };
        let mut changed = false;
        let mut terms = Vec::with_capacity(entries.len());
        {
            let mut image = self.image.borrow_mut();
            for entry in &entries {
                terms.push((entry.index, entry.term));
                changed |= apply_entry(&mut image, entry);
            }
            image.applied_index = last;
        }
        self.queue_install(last, changed, terms).await;
    }

    /// Queues the image as applied up to `last` for installation; waits only
    /// while [`MAX_PENDING_INSTALLS`] are queued already.
    async fn queue_install(&self, last: u64, changed: bool, terms: Vec<(u64, u64)>) {
        while self.installs.borrow().len() >= MAX_PENDING_INSTALLS {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        self.installs.borrow_mut().push_back((last, changed, terms));
        let _ = self.install_bell.borrow_mut().try_send(());
    }

    /// Installs queued images in order, the newest of a run of them at once
    /// (each is the whole image), then marks them applied and answers their
    /// proposals.
    async fn install_loop(self: Rc<Self>, mut bell: mpsc::Receiver<()>) {
        loop {
            let queued: Vec<_> = self.installs.borrow_mut().drain(..).collect();
            let Some(last) = queued.last().map(|q| q.0) else {
                if bell.next().await.is_none() {
                    return;
                }
                continue;
            };
            if queued.iter().any(|q| q.1) {
                let meta = Arc::new(self.image.borrow().clone());
                self.broker.install_everywhere(meta).await;
            }
            self.applied.set(self.applied.get().max(last));
            self.answer(queued.into_iter().flat_map(|q| q.2), last);
        }
    }

    /// Answers the proposals among the entries `terms` now installed.
    fn answer(&self, terms: impl Iterator<Item = (u64, u64)>, last: u64) {
        let mut waiters = self.waiters.borrow_mut();
        for (index, term) in terms {
            if let Some(waiter) = waiters.remove(&index) {
                let result = if waiter.term == term { Ok(index) } else { Err(not_controller("leadership moved")) };
                let _ = waiter.done.send(result);
            }
        }
        // Proposals below what is applied lost their entries to a new leader.
        while let Some(entry) = waiters.first_entry() {
            if *entry.key() > last {
                break;
            }
            let _ = entry.remove().done.send(Err(not_controller("leadership moved")));
        }
    }

    /// Takes a snapshot once enough entries follow the last one: the image
    /// at the applied index replaces the entries it covers, on disk too.
    async fn maybe_snapshot(&self, node: &mut RawNode<RaftStore>) -> anyhow::Result<()> {
        let every = self.broker.config.metadata_snapshot_interval_entries.max(1);
        let applied = self.image.borrow().applied_index.min(node.raft.raft_log.persisted);
        let store = node.store();
        let snapshot_index = store.current_snapshot().get_metadata().index;
        if store.entry_count() < every || applied <= snapshot_index {
            return Ok(());
        }
        let Some(term) = store.term_of(applied) else { return Ok(()) };
        if self.image.borrow().applied_index != applied {
            return Ok(()); // the image is past what is persisted: next round
        }
        let voters: Vec<u64> = self.voters.iter().map(|v| raft_id(v.id)).collect();
        let snapshot = store::new_snapshot(applied, term, voters, records::encode_image(&self.image.borrow()));
        let stored = snapshot.clone();
        self.blocking(move |files| files.write_snapshot(&stored)).await?;
        node.mut_store().install_snapshot(snapshot);
        let frames = node.store().log_frames();
        self.blocking(move |files| files.rewrite_log(&frames)).await?;
        info!(index = applied, "metadata snapshot taken; the log before it is truncated");
        Ok(())
    }

    /// Active controller: notes a broker's heartbeat and registers or
    /// unfences it if the image does not have it live at this endpoint.
    pub async fn on_heartbeat(&self, registration: BrokerRegistration) -> ControllerResponse {
        if !self.is_leader() {
            return ControllerResponse::NotController { leader: self.leader.get() };
        }
        self.heard.borrow_mut().insert(registration.node_id, Instant::now());
        let current = self.image.borrow().brokers.get(&registration.node_id).cloned();
        let live = BrokerRegistration { fenced: false, ..registration };
        if current.as_ref() != Some(&live) {
            let op = AdminOp::RegisterBroker { registration: live };
            if let Err(e) = self.broker.run_admin(op).await {
                warn!("registering a broker: {}", e.message);
                return ControllerResponse::NotController { leader: self.leader.get() };
            }
        }
        ControllerResponse::Heartbeat { index: self.applied.get() }
    }

    /// Active controller: fences every broker silent for longer than
    /// `broker_session_timeout_ms`. It never fences itself: an active
    /// controller is alive by definition.
    fn fence_silent_brokers(self: &Rc<Self>) {
        let timeout = Duration::from_millis(self.broker.config.broker_session_timeout_ms);
        let now = Instant::now();
        let silent: Vec<NodeId> = {
            let image = self.image.borrow();
            let heard = self.heard.borrow();
            image
                .live_brokers()
                .map(|b| b.node_id)
                .filter(|node| *node != self.node_id)
                .filter(|node| heard.get(node).is_none_or(|at| now.duration_since(*at) > timeout))
                .collect()
        };
        for node in silent {
            if !self.fencing.borrow_mut().insert(node) {
                continue;
            }
            warn!(node, "fencing a broker silent for longer than broker_session_timeout_ms");
            let controller = self.clone();
            glommio::spawn_local(async move {
                if let Err(e) = controller.broker.run_admin(AdminOp::FenceBroker { node }).await {
                    warn!(node, "fencing: {}", e.message);
                }
                controller.fencing.borrow_mut().remove(&node);
            })
            .detach();
        }
    }

    /// Every node (shard 0): heartbeats the active controller while running.
    pub async fn heartbeat_loop(self: Rc<Self>) {
        let config = self.broker.config.clone();
        let interval = Duration::from_millis(config.broker_heartbeat_interval_ms.max(1));
        let registration = BrokerRegistration {
            node_id: self.node_id,
            host: config.advertised_host(),
            port: config.advertised_port(),
            fenced: false,
        };
        // Quick retries until registered, so that a starting node serves soon.
        let retry = Duration::from_millis(20).min(interval);
        loop {
            self.heartbeat_once(&registration).await;
            glommio::timer::sleep(if self.registered() { interval } else { retry }).await;
        }
    }

    async fn heartbeat_once(&self, registration: &BrokerRegistration) {
        if self.is_leader() {
            self.on_heartbeat(registration.clone()).await;
            return;
        }
        let Some(addr) = self.leader_addr().map(str::to_string) else { return };
        let request = ControllerRequest::Heartbeat(registration.clone());
        if let Err(e) = transport::call::<_, ControllerResponse>(&addr, &request).await {
            tracing::debug!("heartbeat to the controller at {addr}: {e:#}");
        }
    }

    /// Whether the image has this node registered and unfenced.
    pub fn registered(&self) -> bool {
        self.image.borrow().brokers.get(&self.node_id).is_some_and(|b| !b.fenced)
    }

    /// Runs `op` on the active controller, wherever it is; answers once this
    /// node has applied the change too.
    pub async fn forward(&self, op: AdminOp) -> Result<i64, AdminError> {
        let Some(addr) = self.leader_addr().map(str::to_string) else {
            return Err(not_controller("no active controller is known"));
        };
        match transport::call::<_, ControllerResponse>(&addr, &ControllerRequest::Admin(op)).await {
            Ok(ControllerResponse::Admin { result, index }) => {
                if !self.wait_applied(index).await {
                    return Err(AdminError {
                        code: ResponseError::RequestTimedOut.code(),
                        message: "the change was committed but is not applied here yet".into(),
                    });
                }
                result
            }
            Ok(_) => Err(not_controller("the active controller moved")),
            Err(e) => Err(not_controller(format!("the active controller at {addr}: {e:#}"))),
        }
    }
}

impl transport::Inbound for Controller {
    fn raft_message(&self, message: Message) {
        // Only voters' messages to this node; a full queue drops the
        // message (Raft retries).
        let from_voter = self.voters.iter().any(|v| raft_id(v.id) == message.from && v.id != self.node_id);
        if !from_voter || message.to != raft_id(self.node_id) {
            warn!(from = message.from, to = message.to, "dropping a raft message not between voters");
            return;
        }
        let _ = self.events.borrow_mut().try_send(Event::Step(message));
    }

    fn request(self: Rc<Self>, payload: Vec<u8>) -> futures::future::LocalBoxFuture<'static, Vec<u8>> {
        Box::pin(async move {
            let response = match serde_json::from_slice::<ControllerRequest>(&payload) {
                Ok(ControllerRequest::Heartbeat(registration)) => self.on_heartbeat(registration).await,
                Ok(ControllerRequest::Admin(op)) if self.is_leader() => {
                    let result = self.broker.run_admin(op).await;
                    ControllerResponse::Admin { result, index: self.applied.get() }
                }
                Ok(ControllerRequest::Admin(_)) => ControllerResponse::NotController { leader: self.leader.get() },
                Err(e) => ControllerResponse::Admin {
                    result: Err(AdminError { code: ResponseError::InvalidRequest.code(), message: e.to_string() }),
                    index: 0,
                },
            };
            serde_json::to_vec(&response).expect("a controller response serialises")
        })
    }
}

/// Applies one committed entry's records; whether it had any.
fn apply_entry(image: &mut ClusterMeta, entry: &Entry) -> bool {
    if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
        return false; // a new leader's empty entry; voters are static
    }
    match records::decode_records(&entry.data) {
        Ok(list) => {
            for record in list {
                records::apply(image, record);
            }
            true
        }
        Err(e) => {
            error!(index = entry.index, "skipping an unreadable metadata entry: {e}");
            false
        }
    }
}

/// Starts the metadata log of a node that has none: from `topics.json` and
/// `producer-id-block` of a data directory from before the log (a single
/// node upgraded in place), or empty.
async fn bootstrap(broker: &Rc<Broker>, files: &LogFiles, voters: &[Voter]) -> anyhow::Result<()> {
    let config = broker.config.clone();
    let data_dir = config.data_dir.clone();
    let legacy = glommio::executor()
        .spawn_blocking(move || {
            let topics = std::fs::read(data_dir.join(crate::broker::admin::LEGACY_META_FILE)).ok();
            let ids = std::fs::read_to_string(data_dir.join(crate::broker::admin::LEGACY_PRODUCER_ID_FILE)).ok();
            (topics, ids)
        })
        .await;
    let mut image = match &legacy.0 {
        Some(bytes) => ClusterMeta::from_json(config.node_id, broker.shard_count, bytes)?.0,
        None => ClusterMeta::new(config.node_id, broker.shard_count, Vec::new()),
    };
    image.next_producer_id = legacy.1.and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    if voters.len() > 1 && !image.topics.is_empty() {
        bail!(
            "{} holds topics from before the controller quorum; a multi-node quorum starts from empty data directories",
            config.data_dir.display()
        );
    }
    if !image.topics.is_empty() {
        info!(topics = image.topics.len(), "starting the metadata log from topics.json");
    }
    let voter_ids = voters.iter().map(|v| raft_id(v.id)).collect();
    let snapshot = store::new_snapshot(0, 0, voter_ids, records::encode_image(&image));
    let files = files.clone();
    let data_dir = config.data_dir.clone();
    glommio::executor()
        .spawn_blocking(move || {
            files.create(&snapshot)?;
            // topics.json is now history: keep it, renamed, for the curious.
            let legacy = data_dir.join(crate::broker::admin::LEGACY_META_FILE);
            if legacy.exists() {
                crate::fsutil::rename_durable(&legacy, &data_dir.join("topics.json.migrated"))?;
            }
            Ok::<(), std::io::Error>(())
        })
        .await?;
    Ok(())
}

/// raft-rs logs through slog; this forwards its lines to tracing.
struct SlogToTracing;

impl slog::Drain for SlogToTracing {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, _values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => error!(target: "raft", "{}", record.msg()),
            slog::Level::Warning => warn!(target: "raft", "{}", record.msg()),
            _ => tracing::debug!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_parse_as_kafka_writes_them() {
        let voters = parse_voters("1@a:9093, 2@b:9093,3@10.0.0.3:9093").unwrap();
        assert_eq!(voters.len(), 3);
        assert_eq!(voters[2], Voter { id: 3, addr: "10.0.0.3:9093".into() });
        assert!(parse_voters("").unwrap().is_empty());
        for bad in ["1", "x@a:1", "1@a", "1@a:1,1@b:2", "-1@a:1"] {
            assert!(parse_voters(bad).is_err(), "{bad}");
        }
        assert_eq!(node_of(raft_id(0)), 0);
    }
}
