//! A shard's fetcher for one leader node: one connection to the leader's
//! Kafka listener carrying every partition this shard follows there. Each
//! round first truncates partitions that (re)started following (asking the
//! leader with OffsetForLeaderEpoch where their logs part, KIP-279), then
//! fetches the rest from their log ends and appends what comes back as it
//! is. The next fetch leaves only once those appends are written, so the
//! offset a follower fetches from is what it has on disk: the leader may
//! count it towards the high watermark.
//!
//! Fetches go through one incremental fetch session (KIP-227) per fetcher:
//! a request names only the partitions whose fetch offset, log start or
//! leader epoch moved, and the leader answers only those with news.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{OffsetForLeaderPartition, OffsetForLeaderTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tracing::{debug, info, warn};

use super::conn::LeaderConn;
use crate::broker::fetch_sessions::{next_epoch, INITIAL_EPOCH};
use crate::broker::{Broker, TopicPartition};
use crate::storage::now_ms;
use shards::NodeId;

const FETCH_VERSION: i16 = 12;
const EPOCH_VERSION: i16 = 3;
const LIST_OFFSETS_VERSION: i16 = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A leader answers within its fetch wait; past this much more, the connection is dropped.
const RESPONSE_GRACE: Duration = Duration::from_secs(30);
/// How long an idle fetcher (no partitions) sleeps between looks.
const IDLE_MS: u64 = 100;
/// Truncation rounds per partition before the fetcher gives up for a backoff
/// (each round drops at least one epoch, so real logs need few).
const MAX_TRUNCATION_ROUNDS: usize = 64;

/// The fetcher's session with the leader (KIP-227).
#[derive(Default)]
struct Session {
    /// 0: none (the next fetch is a full one, asking for a session).
    id: i32,
    /// The next request's epoch: 0 for a full fetch.
    epoch: i32,
    /// What the session holds of each partition, as last sent.
    sent: HashMap<TopicPartition, Sent>,
}

impl Session {
    /// After a lost connection or a refused session: the next fetch is full
    /// (and closes the old session, if it reaches the same leader shard).
    fn restart(&mut self) {
        self.epoch = INITIAL_EPOCH;
        self.sent.clear();
    }
}

/// One partition's fields in a fetch request, as the session holds them.
#[derive(Clone, Debug, PartialEq)]
struct Sent {
    topic: String,
    partition: i32,
    fetch_offset: i64,
    log_start_offset: i64,
    leader_epoch: i32,
}

#[derive(Clone, Debug)]
struct Followed {
    topic: String,
    partition: i32,
    leader_epoch: i32,
    /// Must find the divergence point with the leader before fetching.
    truncate: bool,
}

pub struct Fetcher {
    leader: NodeId,
    partitions: RefCell<HashMap<TopicPartition, Followed>>,
    stopped: Cell<bool>,
}

impl Fetcher {
    pub fn start(broker: &Rc<Broker>, leader: NodeId) -> Rc<Fetcher> {
        let fetcher = Rc::new(Fetcher { leader, partitions: RefCell::default(), stopped: Cell::new(false) });
        let (task_fetcher, broker) = (fetcher.clone(), broker.clone());
        glommio::spawn_local(async move { task_fetcher.run(broker).await }).detach();
        fetcher
    }

    pub fn add(&self, tp: TopicPartition, topic: String, partition: i32, leader_epoch: i32) {
        self.partitions.borrow_mut().insert(tp, Followed { topic, partition, leader_epoch, truncate: true });
    }

    pub fn remove(&self, tp: &TopicPartition) {
        self.partitions.borrow_mut().remove(tp);
    }

    pub fn stop(&self) {
        self.stopped.set(true);
    }

    async fn run(self: Rc<Self>, broker: Rc<Broker>) {
        let backoff = Duration::from_millis(broker.config.replica_fetch_backoff_ms);
        let mut conn: Option<LeaderConn> = None;
        let mut session = Session::default();
        while !self.stopped.get() {
            if self.partitions.borrow().is_empty() {
                conn = None;
                session.restart();
                glommio::timer::sleep(Duration::from_millis(IDLE_MS)).await;
                continue;
            }
            if conn.is_none() {
                match self.connect(&broker).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        debug!(leader = self.leader, "cannot reach leader: {e}");
                        glommio::timer::sleep(backoff).await;
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            let round = async {
                let truncated_all = self.truncate(&broker, c).await?;
                let fetched_cleanly = self.fetch(&broker, c, &mut session).await?;
                Ok::<bool, std::io::Error>(truncated_all && fetched_cleanly)
            };
            match round.await {
                Ok(true) => {}
                Ok(false) => glommio::timer::sleep(backoff).await,
                Err(e) => {
                    debug!(leader = self.leader, "replica fetch failed: {e}");
                    conn = None;
                    session.restart();
                    glommio::timer::sleep(backoff).await;
                }
            }
        }
    }

    async fn connect(&self, broker: &Broker) -> std::io::Result<LeaderConn> {
        let meta = broker.meta();
        let Some(leader) = meta.brokers.get(&self.leader) else {
            return Err(std::io::Error::other("leader not registered"));
        };
        let address = format!("{}:{}", leader.host, leader.port);
        LeaderConn::connect(&address, broker.config.node_id, CONNECT_TIMEOUT).await
    }

    fn snapshot(&self, truncating: bool) -> Vec<(TopicPartition, Followed)> {
        let partitions = self.partitions.borrow();
        let mut list: Vec<_> =
            partitions.iter().filter(|(_, f)| f.truncate == truncating).map(|(tp, f)| (*tp, f.clone())).collect();
        list.sort_by(|a, b| (&a.1.topic, a.1.partition).cmp(&(&b.1.topic, b.1.partition)));
        list
    }

    /// Truncation rounds for the partitions that need one; Ok(false) if
    /// some must try again after a backoff.
    async fn truncate(&self, broker: &Rc<Broker>, conn: &mut LeaderConn) -> std::io::Result<bool> {
        let mut clean = true;
        for _ in 0..MAX_TRUNCATION_ROUNDS {
            let pending = self.snapshot(true);
            if pending.is_empty() {
                return Ok(clean);
            }
            let mut asked = Vec::new();
            for (tp, followed) in pending {
                let Some(partition) = broker.local_partition(&tp) else { continue };
                let (latest, end) = {
                    let log = partition.log.borrow();
                    (log.epochs.latest_epoch(), log.end_offset())
                };
                match latest {
                    // An empty log, or one with no epochs: nothing can diverge.
                    None => self.truncated(&tp, followed.leader_epoch),
                    Some(epoch) => asked.push((tp, followed, epoch, end)),
                }
            }
            if asked.is_empty() {
                continue;
            }
            let mut request = OffsetForLeaderEpochRequest::default();
            request.replica_id = BrokerId(broker.config.node_id);
            for (_, followed, epoch, _) in &asked {
                let mut p = OffsetForLeaderPartition::default();
                p.partition = followed.partition;
                p.current_leader_epoch = followed.leader_epoch;
                p.leader_epoch = *epoch;
                let mut t = OffsetForLeaderTopic::default();
                t.topic = TopicName(StrBytes::from_string(followed.topic.clone()));
                t.partitions.push(p);
                request.topics.push(t);
            }
            let response: OffsetForLeaderEpochResponse =
                conn.call(ApiKey::OffsetForLeaderEpoch, EPOCH_VERSION, &request, RESPONSE_GRACE).await?;
            let results: HashMap<(String, i32), (i16, i32, i64)> = response
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| ((t.topic.0.to_string(), p.partition), (p.error_code, p.leader_epoch, p.end_offset)))
                })
                .collect();
            for (tp, followed, _, end) in asked {
                let Some(&(error, leader_epoch, leader_end)) =
                    results.get(&(followed.topic.clone(), followed.partition))
                else {
                    clean = false;
                    continue;
                };
                if error != 0 {
                    debug!(topic = %followed.topic, partition = followed.partition, error, "OffsetForLeaderEpoch refused");
                    clean = false;
                    continue;
                }
                self.truncate_one(broker, tp, &followed, leader_epoch, leader_end, end).await?;
            }
            if !clean {
                return Ok(false);
            }
        }
        Ok(false)
    }

    /// Kafka's rule (KIP-279): where the leader's answer for our latest epoch
    /// and our own end of that epoch agree, cut there; if we lack the epoch
    /// the leader answered, cut at our end of the epoch below it and ask again.
    async fn truncate_one(
        &self,
        broker: &Rc<Broker>,
        tp: TopicPartition,
        followed: &Followed,
        leader_epoch: i32,
        leader_end: i64,
        end: i64,
    ) -> std::io::Result<()> {
        let Some(partition) = broker.local_partition(&tp) else { return Ok(()) };
        let (target, done) = if leader_end < 0 {
            // The leader knows no epoch this old or new: keep the log (the
            // fetch's range check catches a log longer than the leader's).
            (end, true)
        } else {
            let ours = partition.log.borrow().epochs.end_offset_for(leader_epoch, end);
            match ours {
                Some((epoch, our_end)) if epoch == leader_epoch => (leader_end.min(our_end), true),
                Some((_, our_end)) => (leader_end.min(our_end), false),
                None => (leader_end.min(end), true),
            }
        };
        if target < end {
            info!(topic = %followed.topic, partition = followed.partition, from = end, to = target, leader_epoch,
                "truncating a divergent tail");
            broker.truncate_partition(tp, target, false).await?;
        }
        if done {
            self.truncated(&tp, followed.leader_epoch);
        }
        Ok(())
    }

    fn truncated(&self, tp: &TopicPartition, leader_epoch: i32) {
        if let Some(followed) = self.partitions.borrow_mut().get_mut(tp) {
            if followed.leader_epoch == leader_epoch {
                followed.truncate = false;
            }
        }
    }

    /// One fetch of every partition ready for it (naming only those the
    /// session does not hold as they are now); appends what came back and
    /// waits until it is written. Ok(false): some partition failed.
    async fn fetch(&self, broker: &Rc<Broker>, conn: &mut LeaderConn, session: &mut Session) -> std::io::Result<bool> {
        let current = self.current(broker);
        if current.is_empty() {
            return Ok(true);
        }
        let request = fetch_request(&broker.config, session, &current);
        let wait = Duration::from_millis(broker.config.replica_fetch_wait_max_ms) + RESPONSE_GRACE;
        let response: FetchResponse = conn.call(ApiKey::Fetch, FETCH_VERSION, &request, wait).await?;
        if !session_continues(session, &response, current)? {
            return Ok(true); // the next fetch is a full one
        }
        // What this fetch asked for is now what the session holds.
        let fetching: HashMap<(&str, i32), (TopicPartition, &Sent)> =
            session.sent.iter().map(|(tp, sent)| ((sent.topic.as_str(), sent.partition), (*tp, sent))).collect();
        let mut work = Vec::new();
        for topic in response.responses {
            for p in topic.partitions {
                if let Some(&(tp, sent)) = fetching.get(&(topic.topic.0.as_str(), p.partition_index)) {
                    work.push(self.take(broker, tp, sent.leader_epoch, sent.fetch_offset, p));
                }
            }
        }
        let results = futures::future::join_all(work).await;
        let mut clean = true;
        for result in results {
            match result {
                Taken::Ok => {}
                Taken::Retry => clean = false,
                Taken::Reset(tp, epoch) => {
                    clean = false;
                    self.reset(broker, conn, tp, epoch).await?;
                }
            }
        }
        Ok(clean)
    }

    /// Every partition ready to fetch, with its fields as a request names them.
    fn current(&self, broker: &Broker) -> HashMap<TopicPartition, Sent> {
        let mut current = HashMap::new();
        for (tp, followed) in self.snapshot(false) {
            let Some(partition) = broker.local_partition(&tp) else { continue };
            let log = partition.log.borrow();
            let sent = Sent {
                topic: followed.topic,
                partition: followed.partition,
                fetch_offset: log.end_offset(),
                log_start_offset: log.log_start_offset(),
                leader_epoch: followed.leader_epoch,
            };
            current.insert(tp, sent);
        }
        current
    }

    /// Appends one partition's fetched batches and waits until they are written.
    async fn take(
        &self,
        broker: &Rc<Broker>,
        tp: TopicPartition,
        leader_epoch: i32,
        fetched_from: i64,
        p: kafka_protocol::messages::fetch_response::PartitionData,
    ) -> Taken {
        let Some(partition) = broker.local_partition(&tp) else { return Taken::Ok };
        if p.error_code == ResponseError::OffsetOutOfRange.code() {
            return Taken::Reset(tp, leader_epoch);
        }
        if p.error_code != 0 {
            debug!(partition = p.partition_index, error = p.error_code, "replica fetch: partition refused");
            return Taken::Retry;
        }
        let records = whole_batches(p.records.unwrap_or_default());
        if !records.is_empty() {
            if partition.log.borrow().end_offset() != fetched_from {
                return Taken::Retry; // truncated or reopened meanwhile: fetch again from the new end
            }
            match partition.append_replica(records, now_ms()).await {
                Ok(info) => {
                    if let Err(e) = partition.wait_for(info.last_offset, false).await {
                        warn!(dir = %partition.log.borrow().dir.display(), "replica write failed: {e:?}");
                        return Taken::Retry;
                    }
                }
                Err(_) if partition.is_stopping() => return Taken::Retry, // deleted or being truncated
                Err(e) if partition.is_offline() => {
                    // Its device failed: it fetches no more until restart (Kafka's offline log directory).
                    warn!(dir = %partition.log.borrow().dir.display(), "replica offline, fetching stops: {e:?}");
                    self.remove(&tp);
                    return Taken::Retry;
                }
                Err(e) => {
                    warn!(dir = %partition.log.borrow().dir.display(), "leader's batches refused: {e:?}; checking divergence");
                    self.mark_truncate(&tp);
                    return Taken::Retry;
                }
            }
        }
        partition.follow_high_watermark(p.high_watermark);
        let (start, end) = {
            let log = partition.log.borrow();
            (log.log_start_offset(), log.end_offset())
        };
        if p.log_start_offset > start && start < end {
            // The leader deleted records (retention, DeleteRecords, a
            // coordinator's checkpoint): so does its follower.
            if let Err(e) = partition.delete_records(p.log_start_offset.min(end)).await {
                debug!(dir = %partition.log.borrow().dir.display(), "following the leader's log start: {e:?}");
            }
        }
        Taken::Ok
    }

    fn mark_truncate(&self, tp: &TopicPartition) {
        if let Some(followed) = self.partitions.borrow_mut().get_mut(tp) {
            followed.truncate = true;
        }
    }

    /// The fetch offset is out of the leader's range: behind its log start,
    /// the log restarts there; otherwise it is ahead, and divergence is checked.
    async fn reset(
        &self,
        broker: &Rc<Broker>,
        conn: &mut LeaderConn,
        tp: TopicPartition,
        leader_epoch: i32,
    ) -> std::io::Result<()> {
        let Some(followed) = self.partitions.borrow().get(&tp).cloned() else { return Ok(()) };
        let mut request = ListOffsetsRequest::default();
        request.replica_id = BrokerId(broker.config.node_id);
        let mut p = ListOffsetsPartition::default();
        p.partition_index = followed.partition;
        p.current_leader_epoch = leader_epoch;
        p.timestamp = -2; // earliest
        let mut t = ListOffsetsTopic::default();
        t.name = TopicName(StrBytes::from_string(followed.topic.clone()));
        t.partitions.push(p);
        request.topics.push(t);
        let response: ListOffsetsResponse =
            conn.call(ApiKey::ListOffsets, LIST_OFFSETS_VERSION, &request, RESPONSE_GRACE).await?;
        let earliest = response.topics.iter().flat_map(|t| &t.partitions).find(|p| p.error_code == 0).map(|p| p.offset);
        let Some(earliest) = earliest else { return Ok(()) };
        let end = broker.local_partition(&tp).map_or(0, |p| p.log.borrow().end_offset());
        if end < earliest {
            info!(topic = %followed.topic, partition = followed.partition, end, earliest,
                "behind the leader's log start: restarting the log there");
            broker.truncate_partition(tp, earliest, true).await?;
        } else {
            self.mark_truncate(&tp);
        }
        Ok(())
    }
}

enum Taken {
    Ok,
    Retry,
    Reset(TopicPartition, i32),
}

/// The whole batches at the front of `records`: a fetch response may end
/// with a partial batch (KIP-74), which is fetched again next time.
fn whole_batches(records: Bytes) -> Bytes {
    let mut at = 0;
    while let Some(len) = crate::storage::log::first_batch_bytes(&records[at..]) {
        if at + len > records.len() {
            break;
        }
        at += len;
    }
    records.slice(..at)
}

/// The next fetch: a full one (epoch 0) naming every partition, or an
/// incremental one naming the partitions that changed and forgetting those
/// no longer fetched.
fn fetch_request(
    config: &crate::config::Config,
    session: &Session,
    current: &HashMap<TopicPartition, Sent>,
) -> FetchRequest {
    let mut request = FetchRequest::default();
    request.replica_id = BrokerId(config.node_id);
    request.max_wait_ms = config.replica_fetch_wait_max_ms as i32;
    request.min_bytes = 1;
    request.max_bytes = config.replica_fetch_response_max_bytes as i32;
    request.session_id = session.id;
    request.session_epoch = session.epoch;
    let full = session.epoch == INITIAL_EPOCH;
    let mut named: Vec<&Sent> =
        current.iter().filter(|(tp, sent)| full || session.sent.get(tp) != Some(sent)).map(|(_, s)| s).collect();
    named.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    for sent in named {
        let mut p = FetchPartition::default();
        p.partition = sent.partition;
        p.current_leader_epoch = sent.leader_epoch;
        p.fetch_offset = sent.fetch_offset;
        p.last_fetched_epoch = -1;
        p.log_start_offset = sent.log_start_offset;
        p.partition_max_bytes = config.replica_fetch_max_bytes as i32;
        match request.topics.last_mut().filter(|t| t.topic.0.as_str() == sent.topic) {
            Some(t) => t.partitions.push(p),
            None => {
                let mut t = FetchTopic::default();
                t.topic = TopicName(StrBytes::from_string(sent.topic.clone()));
                t.partitions.push(p);
                request.topics.push(t);
            }
        }
    }
    if !full {
        let mut gone: Vec<&Sent> =
            session.sent.iter().filter(|(tp, _)| !current.contains_key(tp)).map(|(_, s)| s).collect();
        gone.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        for sent in gone {
            match request.forgotten_topics_data.last_mut().filter(|t| t.topic.0.as_str() == sent.topic) {
                Some(t) => t.partitions.push(sent.partition),
                None => {
                    let mut t = ForgottenTopic::default();
                    t.topic = TopicName(StrBytes::from_string(sent.topic.clone()));
                    t.partitions.push(sent.partition);
                    request.forgotten_topics_data.push(t);
                }
            }
        }
    }
    request
}

/// Moves the session on after a response: Ok(true) if the response is to be
/// used, with `current` (what the request held) as the session's partitions.
/// A refused session (unknown id, wrong epoch) restarts it; any other
/// top-level error fails the connection.
fn session_continues(
    session: &mut Session,
    response: &FetchResponse,
    current: HashMap<TopicPartition, Sent>,
) -> std::io::Result<bool> {
    let refused = [ResponseError::FetchSessionIdNotFound.code(), ResponseError::InvalidFetchSessionEpoch.code()];
    if refused.contains(&response.error_code) {
        debug!(session = session.id, error = response.error_code, "fetch session refused: starting a new one");
        if response.error_code == ResponseError::FetchSessionIdNotFound.code() {
            session.id = 0;
        }
        session.restart();
        return Ok(false);
    }
    if response.error_code != 0 {
        return Err(std::io::Error::other(format!("fetch refused: error {}", response.error_code)));
    }
    session.epoch = match (session.epoch, response.session_id) {
        (_, 0) => INITIAL_EPOCH, // no session (the leader's cache is full), or it was closed
        (INITIAL_EPOCH, _) => next_epoch(INITIAL_EPOCH),
        (epoch, _) => next_epoch(epoch),
    };
    session.id = response.session_id;
    session.sent = current;
    Ok(true)
}
