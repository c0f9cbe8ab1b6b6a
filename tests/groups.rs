//! Consumer groups over the wire, with the raw protocol where a real client
//! would hide the detail: generation fencing, committed offsets (metadata,
//! leader epochs) across a clean restart and `kill -9` mid-commit, group
//! state after a restart, bad group input, and the `spate group` commands.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{temp_dir, TestBroker};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use spate::client::{str_bytes, Client};

/// Groups answer at once: no initial rebalance delay.
const FAST: &[&str] = &["group_initial_rebalance_delay_ms=0"];

fn join(client: &mut Client, group: &str, member_id: &str, metadata: Bytes) -> JoinGroupResponse {
    let mut protocol = join_group_request::JoinGroupRequestProtocol::default();
    protocol.name = str_bytes("range");
    protocol.metadata = metadata;
    let mut req = JoinGroupRequest::default();
    req.group_id = GroupId(str_bytes(group));
    req.session_timeout_ms = 10_000;
    req.rebalance_timeout_ms = 10_000;
    req.member_id = str_bytes(member_id);
    req.protocol_type = str_bytes("consumer");
    req.protocols = vec![protocol];
    client.call(ApiKey::JoinGroup, 5, &req).unwrap()
}

/// Joins as a new member (two steps from v4) and syncs as the only member;
/// returns (member id, generation).
fn join_alone(client: &mut Client, group: &str, assignment: &'static [u8]) -> (String, i32) {
    client.find_coordinator(group).unwrap();
    let first = join(client, group, "", Bytes::from_static(b"meta"));
    assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
    let joined = join(client, group, first.member_id.as_str(), Bytes::from_static(b"meta"));
    assert_eq!(joined.error_code, 0);
    assert_eq!(joined.leader, joined.member_id, "the only member leads");
    let member = joined.member_id.to_string();
    let synced = sync(client, group, joined.generation_id, &member, &[(member.as_str(), assignment)]);
    assert_eq!(synced.error_code, 0);
    assert_eq!(synced.assignment, Bytes::from_static(assignment));
    (member, joined.generation_id)
}

fn sync(
    client: &mut Client,
    group: &str,
    generation: i32,
    member: &str,
    assign: &[(&str, &'static [u8])],
) -> SyncGroupResponse {
    let mut req = SyncGroupRequest::default();
    req.group_id = GroupId(str_bytes(group));
    req.generation_id = generation;
    req.member_id = str_bytes(member);
    req.assignments = assign
        .iter()
        .map(|(m, a)| {
            let mut out = sync_group_request::SyncGroupRequestAssignment::default();
            out.member_id = str_bytes(m);
            out.assignment = Bytes::from_static(a);
            out
        })
        .collect();
    client.call(ApiKey::SyncGroup, 3, &req).unwrap()
}

fn heartbeat(client: &mut Client, group: &str, generation: i32, member: &str) -> i16 {
    let mut req = HeartbeatRequest::default();
    req.group_id = GroupId(str_bytes(group));
    req.generation_id = generation;
    req.member_id = str_bytes(member);
    let resp: HeartbeatResponse = client.call(ApiKey::Heartbeat, 3, &req).unwrap();
    resp.error_code
}

/// Commits one offset with a leader epoch and metadata; returns its error code.
fn commit(
    client: &mut Client,
    group: &str,
    generation: i32,
    member: &str,
    offset: i64,
    epoch: i32,
    metadata: &str,
) -> i16 {
    let req = commit_request(group, generation, member, offset, epoch, metadata);
    let resp: OffsetCommitResponse = client.call(ApiKey::OffsetCommit, 8, &req).unwrap();
    resp.topics[0].partitions[0].error_code
}

/// An OffsetCommit of one offset of t/0, with a leader epoch and metadata.
fn commit_request(
    group: &str,
    generation: i32,
    member: &str,
    offset: i64,
    epoch: i32,
    metadata: &str,
) -> OffsetCommitRequest {
    let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
    p.partition_index = 0;
    p.committed_offset = offset;
    p.committed_leader_epoch = epoch;
    p.committed_metadata = Some(str_bytes(metadata));
    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
    t.name = TopicName(str_bytes("t"));
    t.partitions = vec![p];
    let mut req = OffsetCommitRequest::default();
    req.group_id = GroupId(str_bytes(group));
    req.generation_id_or_member_epoch = generation;
    req.member_id = str_bytes(member);
    req.topics = vec![t];
    req
}

/// The committed offset of t/0 for `group`, waiting out a coordinator that is loading.
fn committed(client: &mut Client, group: &str) -> spate::client::CommittedOffset {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.fetch_offsets(group, Some(&[("t", vec![0])])) {
            Ok(mut offsets) => return offsets.remove(0),
            Err(e) if Instant::now() < deadline && e.to_string().contains("CoordinatorLoadInProgress") => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e:#}"),
        }
    }
}

#[test]
fn stale_generations_and_unknown_members_are_fenced() {
    let broker = TestBroker::start(&temp_dir("groups-fencing"), FAST);
    let mut client = broker.client();
    client.create_topic("t", 1, &[]).unwrap();
    let (member, generation) = join_alone(&mut client, "fence", b"a1");
    assert_eq!(heartbeat(&mut client, "fence", generation, &member), 0);
    assert_eq!(commit(&mut client, "fence", generation, &member, 5, -1, ""), 0);

    let illegal = ResponseError::IllegalGeneration.code();
    let unknown = ResponseError::UnknownMemberId.code();
    assert_eq!(commit(&mut client, "fence", generation - 1, &member, 6, -1, ""), illegal);
    assert_eq!(commit(&mut client, "fence", generation, "someone-else", 6, -1, ""), unknown);
    assert_eq!(commit(&mut client, "fence", -1, "", 6, -1, ""), unknown, "a group with members takes no simple commit");
    assert_eq!(heartbeat(&mut client, "fence", generation + 1, &member), illegal);
    assert_eq!(heartbeat(&mut client, "fence", generation, "someone-else"), unknown);
    assert_eq!(sync(&mut client, "fence", generation, "someone-else", &[]).error_code, unknown);
    assert_eq!(committed(&mut client, "fence").offset, 5, "refused commits changed nothing");

    // A second member starts a rebalance: the first learns it from its heartbeat.
    let mut other = broker.client();
    let first = join(&mut other, "fence", "", Bytes::from_static(b"meta"));
    let second_id = first.member_id.to_string();
    let joiner = std::thread::spawn(move || join(&mut other, "fence", &second_id, Bytes::from_static(b"meta")));
    let deadline = Instant::now() + Duration::from_secs(10);
    while heartbeat(&mut client, "fence", generation, &member) != ResponseError::RebalanceInProgress.code() {
        assert!(Instant::now() < deadline, "no rebalance started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rejoined = join(&mut client, "fence", &member, Bytes::from_static(b"meta"));
    let joined = joiner.join().unwrap();
    assert_eq!((rejoined.error_code, joined.error_code), (0, 0));
    assert_eq!(rejoined.generation_id, generation + 1);
    assert_eq!(joined.generation_id, generation + 1);
    assert_eq!(rejoined.members.len() + joined.members.len(), 2, "only the leader gets the member list");
    assert_eq!(commit(&mut client, "fence", generation, &member, 7, -1, ""), illegal, "the old generation is gone");
}

#[test]
fn committed_offsets_and_group_state_survive_restarts() {
    let dir = temp_dir("groups-restart");
    let broker = TestBroker::start(&dir, FAST);
    let mut client = broker.client();
    client.create_topic("t", 1, &[]).unwrap();
    client.find_coordinator("simple").unwrap();
    assert_eq!(commit(&mut client, "simple", -1, "", 42, 3, "checkpoint ☃"), 0);
    let (member, generation) = join_alone(&mut client, "members", b"assigned-t0");
    assert_eq!(commit(&mut client, "members", generation, &member, 17, 1, ""), 0);
    drop(client);
    broker.stop();

    let broker = TestBroker::start(&dir, FAST);
    let mut client = broker.client();
    let simple = committed(&mut client, "simple");
    assert_eq!((simple.offset, simple.leader_epoch, simple.metadata.as_str()), (42, 3, "checkpoint ☃"));
    let described = client.describe_group("members").unwrap();
    assert_eq!(described.group_state.as_str(), "Stable");
    assert_eq!(described.members.len(), 1);
    assert_eq!(described.members[0].member_assignment, Bytes::from_static(b"assigned-t0"));
    assert_eq!(heartbeat(&mut client, "members", generation, &member), 0, "the member goes on without a rebalance");
    assert_eq!(committed(&mut client, "members").offset, 17);
    drop(client);

    // kill -9 in a stream of commits: every acknowledged commit is kept.
    let acked = Arc::new(AtomicI64::new(-1));
    let stop = Arc::new(AtomicBool::new(false));
    let committer = {
        let (acked, stop, addr) = (acked.clone(), stop.clone(), broker.addr.clone());
        std::thread::spawn(move || {
            let mut client = Client::connect(&addr).unwrap();
            for offset in 100.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                match client.commit_offsets("simple", -1, "", &[("t", 0, offset, "")]) {
                    Ok(codes) if codes == [0] => acked.store(offset, Ordering::SeqCst),
                    _ => return,
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked.load(Ordering::SeqCst) < 300 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    broker.kill9();
    stop.store(true, Ordering::Relaxed);
    committer.join().unwrap();
    let last_acked = acked.load(Ordering::SeqCst);
    assert!(last_acked >= 100, "commits were acknowledged before the kill");

    let broker = TestBroker::start(&dir, FAST);
    let mut client = broker.client();
    let after = committed(&mut client, "simple").offset;
    assert!(
        after == last_acked || after == last_acked + 1,
        "committed {after} after kill -9; last acknowledged {last_acked} (one more may have been in flight)"
    );
}

#[test]
fn bad_group_input_gets_kafkas_error_codes() {
    let broker = TestBroker::start(&temp_dir("groups-bad"), FAST);
    let mut client = broker.client();
    client.create_topic("t", 1, &[]).unwrap();
    client.find_coordinator("g").unwrap();

    // A 10 KB group id is an ordinary group id.
    let long_id = "g".repeat(10 * 1024);
    assert_eq!(commit(&mut client, &long_id, -1, "", 9, -1, "m"), 0);
    assert_eq!(committed(&mut client, &long_id).offset, 9);

    // Unknown groups.
    assert_eq!(heartbeat(&mut client, "nobody", 1, "m"), ResponseError::UnknownMemberId.code());
    assert_eq!(committed(&mut client, "nobody").offset, -1);
    let mut describe = DescribeGroupsRequest::default();
    describe.groups = vec![GroupId(str_bytes("nobody"))];
    let resp: DescribeGroupsResponse = client.call(ApiKey::DescribeGroups, 5, &describe).unwrap();
    assert_eq!((resp.groups[0].error_code, resp.groups[0].group_state.as_str()), (0, "Dead"));
    let err = client.delete_group("nobody").unwrap_err().to_string();
    assert!(err.contains("GroupIdNotFound"), "{err}");
    assert_eq!(commit(&mut client, "nobody", 3, "m", 1, -1, ""), ResponseError::IllegalGeneration.code());

    // Commits to unknown partitions and oversized metadata.
    let codes = client.commit_offsets("g", -1, "", &[("missing", 0, 1, ""), ("t", 7, 1, "")]).unwrap();
    assert_eq!(codes, vec![ResponseError::UnknownTopicOrPartition.code(); 2]);
    let codes = client.commit_offsets("g", -1, "", &[("t", 0, 1, &"x".repeat(5000))]).unwrap();
    assert_eq!(codes, vec![ResponseError::OffsetMetadataTooLarge.code()]);

    // Session timeouts out of bounds; huge member metadata.
    let mut req = JoinGroupRequest::default();
    req.group_id = GroupId(str_bytes("g2"));
    req.session_timeout_ms = 1;
    req.rebalance_timeout_ms = 1000;
    req.protocol_type = str_bytes("consumer");
    let mut protocol = join_group_request::JoinGroupRequestProtocol::default();
    protocol.name = str_bytes("range");
    req.protocols = vec![protocol];
    let resp: JoinGroupResponse = client.call(ApiKey::JoinGroup, 5, &req).unwrap();
    assert_eq!(resp.error_code, ResponseError::InvalidSessionTimeout.code());
    let huge = join(&mut client, "g2", "", Bytes::from(vec![7u8; 2 << 20]));
    assert_eq!(huge.error_code, ResponseError::InvalidRequest.code());
    let no_protocols = {
        req.session_timeout_ms = 10_000;
        req.protocols.clear();
        let resp: JoinGroupResponse = client.call(ApiKey::JoinGroup, 5, &req).unwrap();
        resp.error_code
    };
    assert_eq!(no_protocols, ResponseError::InconsistentGroupProtocol.code());

    // A truncated JoinGroup closes its connection; everyone else goes on.
    let mut frame = Vec::new();
    frame.extend_from_slice(&(ApiKey::JoinGroup as i16).to_be_bytes());
    frame.extend_from_slice(&5i16.to_be_bytes());
    frame.extend_from_slice(&1i32.to_be_bytes());
    frame.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    frame.extend_from_slice(&[0, 200, b'g']); // group id claims 200 bytes, has 1
    let mut bad = std::net::TcpStream::connect(&broker.addr).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    bad.write_all(&(frame.len() as i32).to_be_bytes()).unwrap();
    bad.write_all(&frame).unwrap();
    let mut answer = [0u8; 1];
    assert!(matches!(bad.read(&mut answer), Ok(0) | Err(_)), "a malformed JoinGroup closes its connection");
    assert_eq!(committed(&mut client, &long_id).offset, 9, "other clients and stored offsets are unaffected");

    // FindCoordinator v4 batches keys; transactions have no coordinator yet.
    let mut find = FindCoordinatorRequest::default();
    find.coordinator_keys = vec![str_bytes("a"), str_bytes("b")];
    let resp: FindCoordinatorResponse = client.call(ApiKey::FindCoordinator, 4, &find).unwrap();
    assert_eq!(resp.coordinators.len(), 2);
    assert!(resp.coordinators.iter().all(|c| c.error_code == 0 && c.port == broker.port() as i32));
    find.key_type = 1;
    let resp: FindCoordinatorResponse = client.call(ApiKey::FindCoordinator, 4, &find).unwrap();
    assert!(resp.coordinators.iter().all(|c| c.error_code == ResponseError::CoordinatorNotAvailable.code()));

    // __consumer_offsets is the broker's: clients may not write, trim,
    // repartition, reconfigure or delete it.
    let err = client.produce(
        "__consumer_offsets",
        0,
        &[(None, Bytes::from_static(b"x"))],
        -1,
        kafka_protocol::records::Compression::None,
    );
    assert!(err.unwrap_err().to_string().contains("InvalidTopicException"));
    let err = client.delete_records("__consumer_offsets", 0, 0).unwrap_err().to_string();
    assert!(err.contains("InvalidTopicException"), "{err}");
    let err = client.delete_topics(&["__consumer_offsets"]).unwrap_err().to_string();
    assert!(err.contains("InvalidTopicException"), "{err}");
    assert_eq!(committed(&mut client, &long_id).offset, 9, "the groups are all still there");
    assert!(broker.log().lines().all(|l| !l.contains("panicked")));
}

fn spate(broker: &TestBroker, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_spate")).args(args).env("SPATE_BROKERS", &broker.addr).output().unwrap();
    assert!(out.status.success(), "spate {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn spate_fails(broker: &TestBroker, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_spate")).args(args).env("SPATE_BROKERS", &broker.addr).output().unwrap();
    assert!(!out.status.success(), "spate {args:?} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

/// The LAG column of `partition` in `spate group describe` output.
fn lag(described: &str, topic: &str, partition: i32) -> i64 {
    let line = described
        .lines()
        .find(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() == 5 && cols[0] == topic && cols[1] == partition.to_string()
        })
        .unwrap_or_else(|| panic!("no row for {topic}/{partition} in:\n{described}"));
    line.split_whitespace().last().unwrap().parse().unwrap()
}

#[test]
fn group_commands_show_lag_and_move_offsets() {
    let broker = TestBroker::start(&temp_dir("groups-cli"), FAST);
    let mut client = broker.client();
    client.create_topic("orders", 2, &[]).unwrap();
    for p in 0..2 {
        let records: Vec<(Option<Bytes>, Bytes)> = (0..100).map(|i| (None, Bytes::from(format!("p{p}-{i}")))).collect();
        client.produce("orders", p, &records, -1, kafka_protocol::records::Compression::None).unwrap();
    }
    client.find_coordinator("billing").unwrap();
    let codes = client.commit_offsets("billing", -1, "", &[("orders", 0, 30, ""), ("orders", 1, 40, "")]).unwrap();
    assert_eq!(codes, vec![0, 0]);

    let listed = spate(&broker, &["group", "list"]);
    assert!(listed.lines().any(|l| l.starts_with("billing") && l.trim_end().ends_with("Empty")), "{listed}");
    let described = spate(&broker, &["group", "describe", "billing"]);
    assert_eq!((lag(&described, "orders", 0), lag(&described, "orders", 1)), (70, 60), "{described}");

    let dry = spate(&broker, &["group", "reset-offsets", "billing", "--topic", "orders", "--to-earliest", "--dry-run"]);
    assert!(dry.contains("dry run"), "{dry}");
    assert_eq!(
        client.fetch_offsets("billing", None).unwrap().iter().map(|o| o.offset).collect::<Vec<_>>(),
        vec![30, 40]
    );

    spate(&broker, &["group", "reset-offsets", "billing", "--topic", "orders", "--to-offset", "10"]);
    let described = spate(&broker, &["group", "describe", "billing"]);
    assert_eq!((lag(&described, "orders", 0), lag(&described, "orders", 1)), (90, 90), "{described}");
    spate(&broker, &["group", "reset-offsets", "billing", "--topic", "orders", "--shift-by", "-5"]);
    spate(&broker, &["group", "reset-offsets", "billing", "--topic", "orders", "--shift-by", "20"]);
    let mut offsets: Vec<i64> = client.fetch_offsets("billing", None).unwrap().iter().map(|o| o.offset).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, vec![25, 25]);
    spate(
        &broker,
        &["group", "reset-offsets", "billing", "--topic", "orders", "--to-datetime", "2999-01-01T00:00:00Z"],
    );
    let described = spate(&broker, &["group", "describe", "billing"]);
    assert_eq!((lag(&described, "orders", 0), lag(&described, "orders", 1)), (0, 0), "{described}");

    // The group's next consumer starts where the reset put it.
    spate(&broker, &["group", "reset-offsets", "billing", "--topic", "orders", "--to-offset", "95"]);
    let kcat = Command::new("kcat")
        .args(["-b", &broker.addr, "-G", "billing", "orders", "-e", "-f", "%p:%o\n", "-q"])
        .args(["-X", "topic.auto.offset.reset=earliest"])
        .output()
        .expect("kcat is installed by scripts/test.sh");
    let mut seen: Vec<String> = String::from_utf8_lossy(&kcat.stdout).lines().map(str::to_string).collect();
    seen.sort();
    let expected: Vec<String> = (0..2).flat_map(|p| (95..100).map(move |o| format!("{p}:{o}"))).collect();
    assert_eq!(seen, expected, "kcat stderr: {}", String::from_utf8_lossy(&kcat.stderr));

    // A group with members refuses a reset; deleting offsets, then the group.
    let (member, _) = join_alone(&mut client, "busy", b"");
    let refused = spate_fails(&broker, &["group", "reset-offsets", "busy", "--topic", "orders", "--to-latest"]);
    assert!(refused.contains("stop them"), "{refused}");
    let refused = spate_fails(&broker, &["group", "delete", "busy"]);
    assert!(refused.contains("NonEmptyGroup"), "{refused}");
    let _ = member;
    spate(&broker, &["group", "delete-offsets", "billing", "--topic", "orders"]);
    assert!(client.fetch_offsets("billing", None).unwrap().is_empty());
    spate(&broker, &["group", "delete", "billing"]);
    assert!(!spate(&broker, &["group", "list"]).contains("billing"));
}

/// Commits offsets 1.. one at a time; returns (last acknowledged, error codes seen).
fn commit_stream(client: &mut Client, group: &str, n: i64) -> (i64, Vec<i16>) {
    let mut acked = -1;
    let mut errors = Vec::new();
    for offset in 1..=n {
        match client.commit_offsets(group, -1, "", &[("t", 0, offset, "")]).unwrap()[..] {
            [0] => acked = offset,
            [code] => errors.push(code),
            ref other => panic!("one partition, one code: {other:?}"),
        }
    }
    (acked, errors)
}

#[test]
fn commits_under_injected_io_errors_keep_what_was_acknowledged() {
    // Full disk for a while on the offsets partitions: those commits fail
    // with an error, later ones succeed, and the last acknowledged one stands.
    let dir = temp_dir("groups-enospc");
    let faults = [("SPATE_FAULTS", "op=write,error=ENOSPC,after=20,times=30,path=__consumer_offsets")];
    let broker = TestBroker::start_with_env(&dir, FAST, &faults);
    let mut client = broker.client();
    client.create_topic("t", 1, &[]).unwrap();
    client.find_coordinator("full").unwrap();
    let (acked, errors) = commit_stream(&mut client, "full", 200);
    assert!(!errors.is_empty(), "the injected ENOSPC failed some commits");
    assert!(errors.iter().all(|&c| c == ResponseError::NotCoordinator.code()), "{errors:?}");
    assert_eq!(acked, 200, "commits succeed again once the disk has room");
    assert_eq!(committed(&mut client, "full").offset, 200);
    drop(client);
    broker.kill9();
    let broker = TestBroker::start(&dir, FAST);
    assert_eq!(committed(&mut broker.client(), "full").offset, 200);

    // A device error takes the offsets partition offline: commits fail from
    // then on, and after a restart the last acknowledged commit is there.
    let dir = temp_dir("groups-eio");
    let faults = [("SPATE_FAULTS", "op=write,error=EIO,after=30,times=1,path=__consumer_offsets")];
    let broker = TestBroker::start_with_env(&dir, FAST, &faults);
    let mut client = broker.client();
    client.create_topic("t", 1, &[]).unwrap();
    client.find_coordinator("eio").unwrap();
    let (acked, errors) = commit_stream(&mut client, "eio", 100);
    assert!(acked >= 1 && !errors.is_empty(), "acked {acked}, errors {errors:?}");
    assert!(broker.log().lines().all(|l| !l.contains("panicked")));
    drop(client);
    broker.kill9();
    let broker = TestBroker::start(&dir, FAST);
    assert_eq!(committed(&mut broker.client(), "eio").offset, acked, "the last acknowledged commit survives");
}

/// A consumer-protocol subscription (v0) to `topic`.
fn subscription(topic: &str) -> Bytes {
    let mut b = vec![0u8, 0, 0, 0, 0, 1];
    b.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    b.extend_from_slice(topic.as_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    Bytes::from(b)
}

#[test]
fn group_size_state_filters_batched_fetches_and_offset_expiry() {
    let extra = ["group_initial_rebalance_delay_ms=0", "group_max_size=2", "offsets_retention_minutes=0"];
    let extra = [&extra[..], &["offsets_retention_check_interval_ms=300"]].concat();
    let broker = TestBroker::start(&temp_dir("groups-limits"), &extra);
    let mut client = broker.client();
    client.create_topic("t", 1, &[]).unwrap();
    client.find_coordinator("full").unwrap();

    // group_max_size: a third member is refused.
    let mut members = Vec::new();
    for _ in 0..3 {
        let mut c = broker.client();
        let first = join(&mut c, "full", "", subscription("t"));
        members.push((c, first));
    }
    let codes: Vec<i16> = members.iter().map(|(_, r)| r.error_code).collect();
    assert_eq!(codes.iter().filter(|&&c| c == ResponseError::MemberIdRequired.code()).count(), 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == ResponseError::GroupMaxSizeReached.code()).count(), 1, "{codes:?}");

    // A stable one-member group subscribed to t: its offsets on t cannot be
    // deleted and do not expire; an empty group's do.
    let (member, generation) = join_alone_with(&mut client, "busy", subscription("t"));
    assert_eq!(commit(&mut client, "busy", generation, &member, 3, -1, ""), 0);
    let err = client.delete_offsets("busy", "t", &[0]).unwrap_err().to_string();
    assert!(err.contains("GroupSubscribedToTopic"), "{err}");
    assert_eq!(commit(&mut client, "idle", -1, "", 4, -1, ""), 0);

    // ListGroups filters by state (any case); OffsetFetch v8 answers several groups.
    let mut list = ListGroupsRequest::default();
    list.states_filter = vec![str_bytes("stable")];
    let resp: ListGroupsResponse = client.call(ApiKey::ListGroups, 4, &list).unwrap();
    let stable: Vec<&str> = resp.groups.iter().map(|g| g.group_id.0.as_str()).collect();
    assert_eq!(stable, vec!["busy"]);
    let mut fetch = OffsetFetchRequest::default();
    fetch.require_stable = true;
    fetch.groups = ["busy", "idle", "nobody"]
        .iter()
        .map(|g| {
            let mut out = offset_fetch_request::OffsetFetchRequestGroup::default();
            out.group_id = GroupId(str_bytes(g));
            out.topics = None;
            out
        })
        .collect();
    let resp: OffsetFetchResponse = client.call(ApiKey::OffsetFetch, 8, &fetch).unwrap();
    let found: Vec<(String, Vec<i64>)> = resp
        .groups
        .iter()
        .map(|g| {
            (
                g.group_id.0.to_string(),
                g.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.committed_offset)).collect(),
            )
        })
        .collect();
    assert_eq!(found, vec![("busy".into(), vec![3]), ("idle".into(), vec![4]), ("nobody".into(), vec![])]);

    // offsets_retention_minutes=0: the empty group's offsets expire at the
    // next check, and the group with them; the stable group keeps its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.list_groups().unwrap().iter().any(|(g, _, _)| g == "idle") {
        assert!(Instant::now() < deadline, "the idle group's offsets never expired");
        assert_eq!(heartbeat(&mut client, "busy", generation, &member), 0);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(committed(&mut client, "idle").offset, -1);
    assert_eq!(committed(&mut client, "busy").offset, 3, "a subscribed topic's offsets do not expire");
    assert!(broker.log().contains("expired committed offsets"));
}

/// As [`join_alone`], with the member's protocol metadata.
fn join_alone_with(client: &mut Client, group: &str, metadata: Bytes) -> (String, i32) {
    client.find_coordinator(group).unwrap();
    let first = join(client, group, "", metadata.clone());
    let joined = join(client, group, first.member_id.as_str(), metadata);
    assert_eq!(joined.error_code, 0);
    let member = joined.member_id.to_string();
    assert_eq!(sync(client, group, joined.generation_id, &member, &[(member.as_str(), b"")]).error_code, 0);
    (member, joined.generation_id)
}

#[test]
fn every_advertised_group_api_version_answers() {
    let broker = TestBroker::start(&temp_dir("groups-versions"), FAST);
    let mut client = broker.client();
    client.create_topic("t", 1, &[]).unwrap();
    for v in 0..=4 {
        let mut find = FindCoordinatorRequest::default();
        if v >= 4 {
            find.coordinator_keys = vec![str_bytes("v")];
        } else {
            find.key = str_bytes("v");
        }
        let resp: FindCoordinatorResponse = client.call(ApiKey::FindCoordinator, v, &find).unwrap();
        let code = if v >= 4 { resp.coordinators[0].error_code } else { resp.error_code };
        assert!(code == 0 || code == ResponseError::CoordinatorNotAvailable.code(), "FindCoordinator v{v}: {code}");
    }
    client.find_coordinator("v").unwrap();
    for v in 0..=7i16 {
        let group = format!("versions-{v}");
        let mut protocol = join_group_request::JoinGroupRequestProtocol::default();
        protocol.name = str_bytes("range");
        protocol.metadata = subscription("t");
        let mut req = JoinGroupRequest::default();
        req.group_id = GroupId(str_bytes(&group));
        req.session_timeout_ms = 10_000;
        req.rebalance_timeout_ms = if v >= 1 { 10_000 } else { -1 };
        req.protocol_type = str_bytes("consumer");
        req.protocols = vec![protocol];
        if v >= 5 {
            req.group_instance_id = None;
        }
        let mut joined: JoinGroupResponse = client.call(ApiKey::JoinGroup, v, &req).unwrap();
        if joined.error_code == ResponseError::MemberIdRequired.code() {
            assert!(v >= 4, "JoinGroup v{v} needs no member id round");
            req.member_id = joined.member_id.clone();
            joined = client.call(ApiKey::JoinGroup, v, &req).unwrap();
        }
        assert_eq!((joined.error_code, joined.generation_id), (0, 1), "JoinGroup v{v}");
        let member = joined.member_id.clone();

        let sync_v = v.min(5);
        let mut sync = SyncGroupRequest::default();
        sync.group_id = GroupId(str_bytes(&group));
        sync.generation_id = 1;
        sync.member_id = member.clone();
        if sync_v >= 5 {
            sync.protocol_type = Some(str_bytes("consumer"));
            sync.protocol_name = Some(str_bytes("range"));
        }
        let mut a = sync_group_request::SyncGroupRequestAssignment::default();
        a.member_id = member.clone();
        a.assignment = Bytes::from_static(b"x");
        sync.assignments = vec![a];
        let synced: SyncGroupResponse = client.call(ApiKey::SyncGroup, sync_v, &sync).unwrap();
        assert_eq!((synced.error_code, &synced.assignment[..]), (0, &b"x"[..]), "SyncGroup v{sync_v}");

        let hb_v = v.min(4);
        let mut hb = HeartbeatRequest::default();
        hb.group_id = GroupId(str_bytes(&group));
        hb.generation_id = 1;
        hb.member_id = member.clone();
        let resp: HeartbeatResponse = client.call(ApiKey::Heartbeat, hb_v, &hb).unwrap();
        assert_eq!(resp.error_code, 0, "Heartbeat v{hb_v}");

        let commit_v = (v + 2).min(8);
        let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
        p.partition_index = 0;
        p.committed_offset = 10 + v as i64;
        p.committed_leader_epoch = if commit_v >= 6 { 2 } else { -1 };
        p.committed_metadata = Some(str_bytes("meta"));
        let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
        t.name = TopicName(str_bytes("t"));
        t.partitions = vec![p];
        let mut commit = OffsetCommitRequest::default();
        commit.group_id = GroupId(str_bytes(&group));
        commit.generation_id_or_member_epoch = 1;
        commit.member_id = member.clone();
        commit.retention_time_ms = -1;
        commit.topics = vec![t];
        let resp: OffsetCommitResponse = client.call(ApiKey::OffsetCommit, commit_v, &commit).unwrap();
        assert_eq!(resp.topics[0].partitions[0].error_code, 0, "OffsetCommit v{commit_v}");

        let fetch_v = (v + 1).min(7);
        let mut ft = offset_fetch_request::OffsetFetchRequestTopic::default();
        ft.name = TopicName(str_bytes("t"));
        ft.partition_indexes = vec![0];
        let mut fetch = OffsetFetchRequest::default();
        fetch.group_id = GroupId(str_bytes(&group));
        fetch.topics = Some(vec![ft]);
        let resp: OffsetFetchResponse = client.call(ApiKey::OffsetFetch, fetch_v, &fetch).unwrap();
        let got = &resp.topics[0].partitions[0];
        assert_eq!(
            (got.committed_offset, got.metadata.as_deref()),
            (10 + v as i64, Some("meta")),
            "OffsetFetch v{fetch_v}"
        );
        if fetch_v >= 5 && commit_v >= 6 {
            assert_eq!(got.committed_leader_epoch, 2, "leader epochs round-trip");
        }

        let describe_v = v.min(5);
        let mut describe = DescribeGroupsRequest::default();
        describe.groups = vec![GroupId(str_bytes(&group))];
        describe.include_authorized_operations = describe_v >= 3;
        let resp: DescribeGroupsResponse = client.call(ApiKey::DescribeGroups, describe_v, &describe).unwrap();
        let g = &resp.groups[0];
        assert_eq!(
            (g.error_code, g.group_state.as_str(), g.members.len()),
            (0, "Stable", 1),
            "DescribeGroups v{describe_v}"
        );
        assert_eq!(&g.members[0].member_assignment[..], b"x");

        let leave_v = v.min(4);
        let mut leave = LeaveGroupRequest::default();
        leave.group_id = GroupId(str_bytes(&group));
        if leave_v >= 3 {
            let mut m = leave_group_request::MemberIdentity::default();
            m.member_id = member.clone();
            leave.members = vec![m];
        } else {
            leave.member_id = member.clone();
        }
        let resp: LeaveGroupResponse = client.call(ApiKey::LeaveGroup, leave_v, &leave).unwrap();
        assert_eq!(resp.error_code, 0, "LeaveGroup v{leave_v}");
        if leave_v >= 3 {
            assert_eq!(resp.members[0].error_code, 0);
        }

        let list_v = v.min(4);
        let resp: ListGroupsResponse = client.call(ApiKey::ListGroups, list_v, &ListGroupsRequest::default()).unwrap();
        let listed = resp.groups.iter().find(|g| g.group_id.0.as_str() == group).expect("listed");
        if list_v >= 4 {
            assert_eq!(listed.group_state.as_str(), "Empty", "ListGroups v{list_v}");
        }

        let delete_v = v.min(2);
        let mut delete = DeleteGroupsRequest::default();
        delete.groups_names = vec![GroupId(str_bytes(&group))];
        let resp: DeleteGroupsResponse = client.call(ApiKey::DeleteGroups, delete_v, &delete).unwrap();
        assert_eq!(resp.results[0].error_code, 0, "DeleteGroups v{delete_v}");
    }
}

/// Segment files of `__consumer_offsets-0` under `broker`'s data directory.
fn offsets_segments(broker: &TestBroker) -> usize {
    let dir = broker.dir.join("data").join("__consumer_offsets-0");
    std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "log"))
        .count()
}

#[test]
fn checkpoints_bound_the_offsets_topic_and_lose_nothing() {
    // One offsets partition, 64 KiB segments, a checkpoint every 64 KiB.
    let extra = [
        "group_initial_rebalance_delay_ms=0",
        "offsets_topic_num_partitions=1",
        "offsets_topic_segment_bytes=65536",
        "offsets_checkpoint_bytes=65536",
    ];
    let dir = temp_dir("groups-checkpoint");
    let broker = TestBroker::start(&dir, &extra);
    let mut client = broker.client();
    client.create_topic("t", 4, &[]).unwrap();
    client.find_coordinator("g0").unwrap();
    let (member, generation) = join_alone(&mut client, "member-group", b"assigned");
    let groups: Vec<String> = (0..20).map(|g| format!("g{g}")).collect();
    let mut last = std::collections::HashMap::new();
    for round in 0..400i64 {
        for (i, g) in groups.iter().enumerate() {
            let p = (i % 4) as i32;
            let codes = client.commit_offsets(g, -1, "", &[("t", p, round * 10 + i as i64, "m")]).unwrap();
            assert_eq!(codes, vec![0]);
            last.insert(g.clone(), (p, round * 10 + i as i64));
        }
        if round % 50 == 0 {
            assert_eq!(heartbeat(&mut client, "member-group", generation, &member), 0);
        }
    }
    // 8,000 commits of ~100 bytes: many checkpoints, old segments deleted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.list_offset("__consumer_offsets", 0, -2).unwrap() == 0 || offsets_segments(&broker) > 8 {
        assert!(
            Instant::now() < deadline,
            "no checkpoint moved the log start ({} segments)",
            offsets_segments(&broker)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(broker.log().contains("checkpointed consumer groups"));
    let check = |client: &mut Client| {
        for (g, (p, offset)) in &last {
            let got = client.fetch_offsets(g, Some(&[("t", vec![*p])])).unwrap();
            assert_eq!((got[0].offset, got[0].metadata.as_str()), (*offset, "m"), "group {g}");
        }
    };
    check(&mut client);
    drop(client);

    // After kill -9 the log holds a checkpoint and what came after it.
    broker.kill9();
    let broker = TestBroker::start(&dir, &extra);
    let mut client = broker.client();
    let _ = committed(&mut client, "g0"); // waits out the load
    check(&mut client);
    let described = client.describe_group("member-group").unwrap();
    assert_eq!(described.group_state.as_str(), "Stable", "the membership survives checkpoints");
    assert_eq!(&described.members[0].member_assignment[..], b"assigned");
    drop(client);

    // kill -9 while commits stream and checkpoints run (one every ~700
    // commits): every group keeps its last acknowledged commit.
    let acked = Arc::new(std::sync::Mutex::new(last.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let committer = {
        let (acked, stop, addr, groups) = (acked.clone(), stop.clone(), broker.addr.clone(), groups.clone());
        std::thread::spawn(move || {
            let mut client = Client::connect(&addr).unwrap();
            for round in 1_000i64.. {
                for (i, g) in groups.iter().enumerate() {
                    let p = (i % 4) as i32;
                    let offset = round * 10 + i as i64;
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match client.commit_offsets(g, -1, "", &[("t", p, offset, "m")]) {
                        Ok(codes) if codes == [0] => {
                            acked.lock().unwrap().insert(g.clone(), (p, offset));
                        }
                        _ => return,
                    }
                }
            }
        })
    };
    let started = Instant::now();
    while broker.log().matches("checkpointed consumer groups").count() < 14
        && started.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    broker.kill9();
    stop.store(true, Ordering::Relaxed);
    committer.join().unwrap();
    let broker = TestBroker::start(&dir, &extra);
    let mut client = broker.client();
    let _ = committed(&mut client, "g0");
    for (g, (p, offset)) in acked.lock().unwrap().iter() {
        let got = client.fetch_offsets(g, Some(&[("t", vec![*p])])).unwrap()[0].offset;
        // The one commit in flight at the kill may have landed too.
        assert!(got == *offset || got == offset + 10, "group {g}: committed {got}, last acknowledged {offset}");
    }
}

#[test]
fn commits_cut_off_by_a_disconnect_land_whole_or_not_at_all() {
    let dir = temp_dir("groups-disconnect");
    let broker = TestBroker::start(&dir, FAST);
    let mut client = broker.client();
    client.create_topic("t", 1, &[]).unwrap();
    client.find_coordinator("rude").unwrap();
    // 200 pipelined commits, then the connection closes without reading a
    // single answer: the broker cancels what it had not yet started.
    let mut rude = broker.client();
    for offset in 1..=200 {
        rude.send(ApiKey::OffsetCommit, 8, &commit_request("rude", -1, "", offset, -1, "")).unwrap();
    }
    drop(rude);
    // Whatever took effect did so in order; wait until it has settled.
    let mut seen = committed(&mut client, "rude").offset;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = committed(&mut client, "rude").offset;
        if now == seen {
            break;
        }
        assert!(now > seen, "commits took effect out of order: {seen} then {now}");
        assert!(Instant::now() < deadline, "commits kept changing");
        seen = now;
    }
    assert!(seen == -1 || (1..=200).contains(&seen), "{seen}");
    // What memory answers is what the log holds.
    drop(client);
    broker.kill9();
    let broker = TestBroker::start(&dir, FAST);
    assert_eq!(committed(&mut broker.client(), "rude").offset, seen);
}

/// An OffsetFetch pipelined right behind an OffsetCommit on the same
/// connection sees that commit, as against Kafka (which serves a
/// connection's requests one at a time): the commit took effect first.
#[test]
fn an_offset_fetch_pipelined_behind_a_commit_sees_it() {
    let broker = TestBroker::start(&temp_dir("groups-pipelined-fetch"), &[]);
    let mut client = broker.client();
    client.create_topic("t", 1, &[]).unwrap();
    // Groups coordinated by both shards: the commit's coordinator is local for some, remote for others.
    for group in ["pipe-a", "pipe-b", "pipe-c", "pipe-d"] {
        client.find_coordinator(group).unwrap(); // creates __consumer_offsets
        committed(&mut client, group); // the coordinator is loaded
        for offset in 1..=100 {
            let commit = commit_request(group, -1, "", offset, -1, "");
            let mut fetch = OffsetFetchRequest::default();
            fetch.group_id = GroupId(str_bytes(group));
            let mut topic = offset_fetch_request::OffsetFetchRequestTopic::default();
            topic.name = TopicName(str_bytes("t"));
            topic.partition_indexes = vec![0];
            fetch.topics = Some(vec![topic]);
            let commit_id = client.send(ApiKey::OffsetCommit, 8, &commit).unwrap();
            let fetch_id = client.send(ApiKey::OffsetFetch, 7, &fetch).unwrap();
            let committed: OffsetCommitResponse = client.receive(ApiKey::OffsetCommit, 8, commit_id).unwrap();
            assert_eq!(committed.topics[0].partitions[0].error_code, 0);
            let fetched: OffsetFetchResponse = client.receive(ApiKey::OffsetFetch, 7, fetch_id).unwrap();
            let seen = fetched.topics[0].partitions[0].committed_offset;
            assert_eq!(seen, offset, "{group}: the fetch behind the commit of {offset} saw {seen}");
        }
    }
}

#[test]
fn groups_asked_for_as_the_offsets_topic_is_created_get_retriable_answers_and_commit() {
    // The first FindCoordinator creates `__consumer_offsets`. Each shard
    // sees the new topic before it has opened its partitions, so a second
    // client's FindCoordinator can be answered and its commit reach a
    // partition's shard before that shard took it up. As Kafka, the answer
    // is then NOT_COORDINATOR (partition not taken up yet) or
    // COORDINATOR_LOAD_IN_PROGRESS (groups loading), which clients retry;
    // anything else, or no success on retry, fails.
    const CLIENTS: usize = 16;
    let retriable = [ResponseError::NotCoordinator.code(), ResponseError::CoordinatorLoadInProgress.code()];
    let mut retried_commits = 0;
    for round in 0..3 {
        let dir = temp_dir(&format!("groups-fresh-{round}"));
        let broker = TestBroker::start(&dir, &["shards=2"]);
        broker.client().create_topic("t", 1, &[]).unwrap();
        let clients: Vec<Client> = (0..CLIENTS).map(|_| broker.client()).collect();
        let workers: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, mut client)| {
                std::thread::spawn(move || {
                    let group = format!("fresh-{i}");
                    // Staggered over the ~10 ms the shards take to open the partitions.
                    std::thread::sleep(Duration::from_millis(i as u64));
                    client.find_coordinator(&group).unwrap();
                    let deadline = Instant::now() + Duration::from_secs(20);
                    let mut retried = false;
                    loop {
                        let codes = client.commit_offsets(&group, -1, "", &[("t", 0, 1, "")]).unwrap();
                        assert_eq!(codes.len(), 1, "one partition, one code");
                        if retriable.contains(&codes[0]) && Instant::now() < deadline {
                            retried = true;
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        assert_eq!(codes[0], 0, "{group}: {:?}", ResponseError::try_from_code(codes[0]));
                        assert_eq!(committed(&mut client, &group).offset, 1);
                        return retried;
                    }
                })
            })
            .collect();
        retried_commits += workers.into_iter().map(|w| usize::from(w.join().unwrap())).sum::<usize>();
        broker.stop();
    }
    eprintln!("{retried_commits} of {} commits landed in the window and were retried", 3 * CLIENTS);
}
