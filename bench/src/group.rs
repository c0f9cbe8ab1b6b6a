//! Consumer groups for the load generator: `consume --group G` members that
//! join through the classic protocol (FindCoordinator, two-step JoinGroup,
//! a range assignment by the leader, SyncGroup), heartbeat, resume from the
//! group's committed offsets and commit periodically (timing each commit);
//! and the `commit` phase, which measures the OffsetCommit rate a broker sustains.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::conn::{check, Conn};
use crate::workers::{fetch_round, ConsumerPlan, Fetcher, Shared, ThreadStats};

/// How a member takes part in its group.
#[derive(Clone, Debug)]
pub struct GroupPlan {
    pub group: String,
    pub partitions: i32,
    pub commit_interval: Duration,
    pub session_timeout_ms: i32,
    pub heartbeat_interval: Duration,
}

struct Membership {
    member_id: String,
    generation: i32,
    partitions: Vec<i32>,
}

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

/// Connects to `group`'s coordinator (asking `addr` where it is).
pub async fn coordinator(addr: &str, group: &str) -> Result<Conn> {
    let conn = Conn::connect(addr).await?;
    let mut req = FindCoordinatorRequest::default();
    req.key = s(group);
    for _ in 0..200 {
        let resp: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, 3, &req).await?;
        if resp.error_code == 0 {
            return Conn::connect(&format!("{}:{}", resp.host.as_str(), resp.port)).await;
        }
        if resp.error_code != ResponseError::CoordinatorNotAvailable.code() {
            check(resp.error_code, "find coordinator")?;
        }
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    bail!("group {group} has no coordinator")
}

/// The consumer protocol's subscription (v0) to one topic.
fn subscription(topic: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(1);
    b.put_i16(topic.len() as i16);
    b.put_slice(topic.as_bytes());
    b.put_i32(-1); // no user data
    b.freeze()
}

/// The consumer protocol's assignment (v0) of `partitions` of one topic.
fn assignment(topic: &str, partitions: &[i32]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(1);
    b.put_i16(topic.len() as i16);
    b.put_slice(topic.as_bytes());
    b.put_i32(partitions.len() as i32);
    partitions.iter().for_each(|p| b.put_i32(*p));
    b.put_i32(-1);
    b.freeze()
}

fn assigned_partitions(mut b: Bytes) -> Vec<i32> {
    let mut out = Vec::new();
    if b.remaining() < 6 {
        return out;
    }
    b.advance(2);
    for _ in 0..b.get_i32().clamp(0, 1000) {
        if b.remaining() < 2 {
            break;
        }
        let len = b.get_i16().max(0) as usize;
        if b.remaining() < len + 4 {
            break;
        }
        b.advance(len);
        for _ in 0..b.get_i32().clamp(0, 1_000_000) {
            if b.remaining() < 4 {
                break;
            }
            out.push(b.get_i32());
        }
    }
    out
}

/// Kafka's range assignor over one topic: members in id order, each a
/// contiguous range, the first ones one partition more.
fn range_assign(members: &[String], partitions: i32) -> Vec<(String, Vec<i32>)> {
    let mut sorted = members.to_vec();
    sorted.sort();
    let n = sorted.len() as i32;
    let (per, extra) = (partitions / n, partitions % n);
    let mut next = 0;
    sorted
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let count = per + i32::from((i as i32) < extra);
            let range = (next..next + count).collect();
            next += count;
            (m, range)
        })
        .collect()
}

/// How often a JoinGroup is retried while the coordinator is not ready
/// (still loading) or has moved (found again), and how long apart.
const COORDINATOR_RETRIES: u32 = 100;
const COORDINATOR_RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// Whether `code` says the coordinator is still loading the group: Kafka
/// clients wait and ask it again.
fn coordinator_loading(code: i16) -> bool {
    code == ResponseError::CoordinatorLoadInProgress.code()
}

/// Whether `code` says the connection is not to the group's coordinator
/// (it moved, or has not taken the group up yet): Kafka clients find the
/// coordinator again, then retry.
fn coordinator_moved(code: i16) -> bool {
    code == ResponseError::NotCoordinator.code() || code == ResponseError::CoordinatorNotAvailable.code()
}

/// What a join ends in.
enum Joined {
    Member(Membership),
    /// The coordinator was not this one: find it again and rejoin.
    CoordinatorMoved,
}

async fn join(coord: &Conn, plan: &ConsumerPlan, group: &GroupPlan, member_id: &mut String) -> Result<Joined> {
    let mut loading = 0;
    loop {
        let mut protocol = join_group_request::JoinGroupRequestProtocol::default();
        protocol.name = s("range");
        protocol.metadata = subscription(&plan.topic);
        let mut req = JoinGroupRequest::default();
        req.group_id = GroupId(s(&group.group));
        req.session_timeout_ms = group.session_timeout_ms;
        req.rebalance_timeout_ms = 60_000;
        req.member_id = s(member_id);
        req.protocol_type = s("consumer");
        req.protocols = vec![protocol];
        let joined: JoinGroupResponse = coord.call(ApiKey::JoinGroup, 5, &req).await?;
        if joined.error_code == ResponseError::MemberIdRequired.code() {
            *member_id = joined.member_id.to_string();
            continue;
        }
        if joined.error_code == ResponseError::UnknownMemberId.code() {
            member_id.clear();
            continue;
        }
        if coordinator_loading(joined.error_code) && loading < COORDINATOR_RETRIES {
            loading += 1;
            glommio::timer::sleep(COORDINATOR_RETRY_BACKOFF).await;
            continue;
        }
        if coordinator_moved(joined.error_code) {
            return Ok(Joined::CoordinatorMoved);
        }
        check(joined.error_code, "join group")?;
        *member_id = joined.member_id.to_string();
        let mut sync = SyncGroupRequest::default();
        sync.group_id = GroupId(s(&group.group));
        sync.generation_id = joined.generation_id;
        sync.member_id = s(member_id);
        if joined.leader == joined.member_id {
            let members: Vec<String> = joined.members.iter().map(|m| m.member_id.to_string()).collect();
            sync.assignments = range_assign(&members, group.partitions)
                .into_iter()
                .map(|(m, parts)| {
                    let mut a = sync_group_request::SyncGroupRequestAssignment::default();
                    a.member_id = s(&m);
                    a.assignment = assignment(&plan.topic, &parts);
                    a
                })
                .collect();
        }
        let synced: SyncGroupResponse = coord.call(ApiKey::SyncGroup, 3, &sync).await?;
        if synced.error_code == ResponseError::RebalanceInProgress.code() {
            continue;
        }
        check(synced.error_code, "sync group")?;
        let partitions = assigned_partitions(synced.assignment);
        return Ok(Joined::Member(Membership {
            member_id: member_id.clone(),
            generation: joined.generation_id,
            partitions,
        }));
    }
}

/// Where each assigned partition resumes: the committed offset, else the
/// start; never before the start (the offsets at the start of the run), so
/// a group that committed in an earlier run does not count old data.
async fn resume_offsets(coord: &Conn, plan: &ConsumerPlan, group: &str, partitions: &[i32]) -> Result<Vec<(i32, i64)>> {
    let mut topic = offset_fetch_request::OffsetFetchRequestTopic::default();
    topic.name = TopicName(s(&plan.topic));
    topic.partition_indexes = partitions.to_vec();
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(s(group));
    req.topics = Some(vec![topic]);
    let resp: OffsetFetchResponse = coord.call(ApiKey::OffsetFetch, 7, &req).await?;
    check(resp.error_code, "offset fetch")?;
    let committed = |p: i32| {
        resp.topics
            .iter()
            .flat_map(|t| &t.partitions)
            .find(|c| c.partition_index == p)
            .map_or(-1, |c| c.committed_offset)
    };
    let start = |p: i32| plan.partitions.iter().find(|(q, _)| *q == p).map_or(0, |(_, o)| *o);
    Ok(partitions.iter().map(|&p| (p, committed(p).max(start(p)))).collect())
}

fn commit_request(group: &str, topic: &str, m: &Membership, offsets: &[(i32, i64)]) -> OffsetCommitRequest {
    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
    t.name = TopicName(s(topic));
    t.partitions = offsets
        .iter()
        .map(|&(p, o)| {
            let mut out = offset_commit_request::OffsetCommitRequestPartition::default();
            out.partition_index = p;
            out.committed_offset = o;
            out.committed_leader_epoch = -1;
            out
        })
        .collect();
    let mut req = OffsetCommitRequest::default();
    req.group_id = GroupId(s(group));
    req.generation_id_or_member_epoch = m.generation;
    req.member_id = s(&m.member_id);
    req.topics = vec![t];
    req
}

/// What a commit ends in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Committed {
    Done,
    /// The group rebalanced or fenced this member: rejoin.
    GroupMovedOn,
    /// The connection is not to the coordinator: find it again, rejoin.
    CoordinatorMoved,
}

/// Commits `offsets`, timing the round trip of a commit that lands.
async fn commit(
    coord: &Conn,
    plan: &ConsumerPlan,
    group: &str,
    m: &Membership,
    offsets: &[(i32, i64)],
    stats: &ThreadStats,
    shared: &Shared,
) -> Result<Committed> {
    if offsets.is_empty() {
        return Ok(Committed::Done);
    }
    let started = Instant::now();
    let resp: OffsetCommitResponse =
        coord.call(ApiKey::OffsetCommit, 7, &commit_request(group, &plan.topic, m, offsets)).await?;
    let took = started.elapsed().as_micros() as u64;
    for code in resp.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.error_code)) {
        if code == ResponseError::RebalanceInProgress.code()
            || code == ResponseError::IllegalGeneration.code()
            || code == ResponseError::UnknownMemberId.code()
        {
            return Ok(Committed::GroupMovedOn);
        }
        if coordinator_moved(code) {
            return Ok(Committed::CoordinatorMoved);
        }
        check(code, "offset commit")?;
    }
    stats.borrow_mut().commit_latency.record(shared.started.elapsed(), took, 1);
    Ok(Committed::Done)
}

/// Finds `group`'s coordinator again after a pause, as a Kafka client does
/// once told the one it had is not (or no longer) it. `moves` counts the
/// moves seen in a row: past COORDINATOR_RETRIES the run fails.
async fn find_coordinator_again(addr: &str, group: &str, moves: &mut u32) -> Result<Rc<Conn>> {
    if *moves >= COORDINATOR_RETRIES {
        bail!("group {group}: the coordinator kept moving");
    }
    *moves += 1;
    glommio::timer::sleep(COORDINATOR_RETRY_BACKOFF).await;
    Ok(Rc::new(coordinator(addr, group).await?))
}

/// A group member: consumes its assignment, commits every
/// `commit_interval`, rejoins when the group rebalances, leaves at the end.
pub async fn run_group_consumer(
    plan: ConsumerPlan,
    group: GroupPlan,
    shared: Arc<Shared>,
    stats: ThreadStats,
) -> Result<()> {
    let mut coord = Rc::new(coordinator(&plan.addr, &group.group).await?);
    // Any partition may be assigned: a connection to every leader.
    let data = Fetcher::connect(plan.leaders.iter().map(String::as_str)).await?;
    let mut member_id = String::new();
    let mut idle_after_producers = 0;
    // Times in a row the coordinator was found to have moved, at a join or
    // a commit; reset by a commit that lands.
    let mut coordinator_moves = 0;
    'membership: loop {
        let m = match join(&coord, &plan, &group, &mut member_id).await? {
            Joined::Member(m) => m,
            Joined::CoordinatorMoved => {
                coord = find_coordinator_again(&plan.addr, &group.group, &mut coordinator_moves).await?;
                continue 'membership;
            }
        };
        let mut offsets = resume_offsets(&coord, &plan, &group.group, &m.partitions).await?;
        let rebalancing = Rc::new(Cell::new(false));
        let heartbeats = glommio::spawn_local(heartbeat(
            coord.clone(),
            group.clone(),
            m.member_id.clone(),
            m.generation,
            rebalancing.clone(),
        ));
        let mut last_commit = Instant::now();
        loop {
            // Stopping (an error elsewhere, a signal): commit what was read and leave.
            let finished = plan.stop_at_total.is_some_and(|n| shared.done.load(Ordering::Relaxed) >= n)
                || idle_after_producers >= 5
                || shared.stopping();
            if finished || rebalancing.get() || last_commit.elapsed() >= group.commit_interval {
                let committed = commit(&coord, &plan, &group.group, &m, &offsets, &stats, &shared).await?;
                last_commit = Instant::now();
                if finished {
                    drop(heartbeats);
                    leave(&coord, &group.group, &m.member_id).await?;
                    break 'membership;
                }
                if committed == Committed::Done {
                    coordinator_moves = 0;
                }
                if committed != Committed::Done || rebalancing.get() {
                    drop(heartbeats);
                    if committed == Committed::CoordinatorMoved {
                        coord = find_coordinator_again(&plan.addr, &group.group, &mut coordinator_moves).await?;
                    }
                    continue 'membership;
                }
            }
            let got = fetch_round(&data, &plan, &mut offsets, &stats, &shared).await?;
            if got > 0 {
                idle_after_producers = 0;
            } else if shared.producers_finished.load(Ordering::Acquire) {
                idle_after_producers += 1;
            }
        }
    }
    Ok(())
}

async fn heartbeat(coord: Rc<Conn>, group: GroupPlan, member_id: String, generation: i32, rebalancing: Rc<Cell<bool>>) {
    let mut req = HeartbeatRequest::default();
    req.group_id = GroupId(s(&group.group));
    req.generation_id = generation;
    req.member_id = s(&member_id);
    loop {
        glommio::timer::sleep(group.heartbeat_interval).await;
        match coord.call::<_, HeartbeatResponse>(ApiKey::Heartbeat, 3, &req).await {
            Ok(r) if r.error_code == 0 => {}
            _ => {
                rebalancing.set(true);
                return;
            }
        }
    }
}

async fn leave(coord: &Conn, group: &str, member_id: &str) -> Result<()> {
    let mut req = LeaveGroupRequest::default();
    req.group_id = GroupId(s(group));
    req.member_id = s(member_id);
    let resp: LeaveGroupResponse = coord.call(ApiKey::LeaveGroup, 1, &req).await?;
    if resp.error_code != ResponseError::UnknownMemberId.code() {
        check(resp.error_code, "leave group")?;
    }
    Ok(())
}

/// What one `commit` worker does.
#[derive(Clone, Debug)]
pub struct CommitPlan {
    pub addr: String,
    pub group: String,
    pub topic: String,
    pub partitions: i32,
    pub commits: Option<u64>,
    pub deadline: Option<Instant>,
    pub max_inflight: usize,
}

/// The coordinator connection the committer's lanes share, found again
/// once for all of them when it answers "not the coordinator".
struct SharedCoordinator {
    conn: RefCell<Rc<Conn>>,
    /// A lane is finding the coordinator: the others wait for it.
    finding: Cell<bool>,
    /// Times in a row it was found to have moved; reset by a commit that lands.
    moves: Cell<u32>,
}

impl SharedCoordinator {
    /// `answered_by` said it is not the coordinator: unless another lane
    /// has already replaced it (or is replacing it), find the coordinator
    /// again. Ok when the commit should be sent again.
    async fn moved(&self, answered_by: &Rc<Conn>, plan: &CommitPlan) -> Result<()> {
        if !Rc::ptr_eq(&self.conn.borrow(), answered_by) {
            return Ok(());
        }
        if self.finding.get() {
            glommio::timer::sleep(COORDINATOR_RETRY_BACKOFF).await;
            return Ok(());
        }
        let mut moves = self.moves.get();
        self.finding.set(true);
        let found = find_coordinator_again(&plan.addr, &plan.group, &mut moves).await;
        self.finding.set(false);
        self.moves.set(moves);
        *self.conn.borrow_mut() = found?;
        Ok(())
    }
}

/// Sends simple-consumer OffsetCommits (one partition each, offsets rising),
/// `max_inflight` at a time, and times each. A commit answered "not the
/// coordinator" is sent again to the coordinator found anew.
pub async fn run_committer(plan: CommitPlan, shared: Arc<Shared>, stats: ThreadStats) -> Result<()> {
    let coord = Rc::new(SharedCoordinator {
        conn: RefCell::new(Rc::new(coordinator(&plan.addr, &plan.group).await?)),
        finding: Cell::new(false),
        moves: Cell::new(0),
    });
    let next = Rc::new(Cell::new(0u64));
    let failure: Rc<RefCell<Option<anyhow::Error>>> = Rc::default();
    let lanes = (0..plan.max_inflight.max(1)).map(|_| {
        let (coord, stats, next, plan, shared, failure) =
            (coord.clone(), stats.clone(), next.clone(), plan.clone(), shared.clone(), failure.clone());
        async move {
            let member = Membership { member_id: String::new(), generation: -1, partitions: Vec::new() };
            loop {
                let i = next.get();
                if plan.commits.is_some_and(|n| i >= n)
                    || plan.deadline.is_some_and(|d| Instant::now() >= d)
                    || failure.borrow().is_some()
                    || shared.stopping()
                {
                    return;
                }
                next.set(i + 1);
                let partition = (i % plan.partitions as u64) as i32;
                let req = commit_request(&plan.group, &plan.topic, &member, &[(partition, i as i64)]);
                match commit_once_landed(&coord, &plan, &req).await {
                    Ok(took) => {
                        coord.moves.set(0);
                        let mut stats = stats.borrow_mut();
                        let at = shared.started.elapsed();
                        stats.latency(at, took.as_micros() as u64, 1);
                        stats.count(at, 1, 0);
                        stats.flush_live(&shared.live, false);
                        shared.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failure.borrow_mut().get_or_insert(e);
                    }
                }
            }
        }
    });
    futures::future::join_all(lanes).await;
    if let Some(e) = failure.borrow_mut().take() {
        return Err(e);
    }
    Ok(())
}

/// Sends `req` until the coordinator takes it (finding the coordinator
/// again while it answers that it is not); the round trip that landed.
/// Bounded: every resend follows a find (counted in `moves`) or waits for one.
async fn commit_once_landed(
    coord: &SharedCoordinator,
    plan: &CommitPlan,
    req: &OffsetCommitRequest,
) -> Result<Duration> {
    loop {
        let started = Instant::now();
        let conn = coord.conn.borrow().clone();
        let resp: OffsetCommitResponse = conn.call(ApiKey::OffsetCommit, 7, req).await?;
        let code = resp.topics.first().and_then(|t| t.partitions.first()).map_or(0, |p| p.error_code);
        if !coordinator_moved(code) {
            check(code, "offset commit")?;
            return Ok(started.elapsed());
        }
        coord.moved(&conn, plan).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_assignment_covers_every_partition_once() {
        let members: Vec<String> = ["c", "a", "b"].iter().map(|m| m.to_string()).collect();
        let assigned = range_assign(&members, 8);
        assert_eq!(assigned[0], ("a".to_string(), vec![0, 1, 2]));
        assert_eq!(assigned[1], ("b".to_string(), vec![3, 4, 5]));
        assert_eq!(assigned[2], ("c".to_string(), vec![6, 7]));
        assert_eq!(assigned_partitions(assignment("t", &[3, 4, 5])), vec![3, 4, 5]);
    }
}
