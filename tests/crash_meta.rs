//! Metadata under faults: a deleted topic never comes back after `kill -9`
//! (whenever the kill lands), the metadata survives `kill -9` during topic
//! churn, and a Metadata request auto-creating 2,000 topics is one metadata
//! commit that does not hold other admin requests.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{temp_dir, TestBroker};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, DeleteTopicsRequest, DeleteTopicsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::records::Compression;
use spate::client::{str_bytes, Client};

/// Records produced to each partition of a topic that is then deleted.
const RECORDS_PER_PARTITION: usize = 20;

fn values(n: usize, tag: &str) -> Vec<(Option<Bytes>, Bytes)> {
    (0..n).map(|i| (None, Bytes::from(format!("{tag}-{i}")))).collect()
}

/// DeleteTopics v4 of one topic; the error code.
fn delete_topic(client: &mut Client, name: &str) -> anyhow::Result<i16> {
    let mut req = DeleteTopicsRequest::default();
    req.topic_names = vec![TopicName(str_bytes(name))];
    req.timeout_ms = 60_000;
    let resp: DeleteTopicsResponse = client.call(ApiKey::DeleteTopics, 4, &req)?;
    Ok(resp.responses.first().map_or(-1, |r| r.error_code))
}

/// Metadata v12 naming `names` (all topics if `None`).
fn metadata(client: &mut Client, names: Option<&[String]>, auto_create: bool) -> MetadataResponse {
    let mut req = MetadataRequest::default();
    req.topics = names.map(|names| {
        names
            .iter()
            .map(|n| {
                let mut t = MetadataRequestTopic::default();
                t.name = Some(TopicName(str_bytes(n)));
                t
            })
            .collect()
    });
    req.allow_auto_topic_creation = auto_create;
    client.call(ApiKey::Metadata, 12, &req).unwrap()
}

/// The names of every topic the broker has.
fn topic_names(client: &mut Client) -> BTreeSet<String> {
    metadata(client, None, false).topics.into_iter().filter_map(|t| Some(t.name?.0.to_string())).collect()
}

/// How many deletions of `topic` the metadata log in `data_dir` holds (an
/// entry on disk is committed at the next start of a one-voter quorum).
fn deletions_logged(data_dir: &Path, topic: &str) -> usize {
    let log = std::fs::read(data_dir.join("__cluster_metadata").join("log")).unwrap_or_default();
    let needle = format!("{{\"RemoveTopic\":{{\"name\":\"{topic}\"");
    log.windows(needle.len()).filter(|w| *w == needle.as_bytes()).count()
}

/// Asserts every partition of `topic` is empty: high watermark 0, no records.
fn assert_empty(client: &mut Client, topic: &str, partitions: i32) {
    for p in 0..partitions {
        let (records, high_watermark) = client.fetch(topic, p, 0, 0).unwrap();
        assert!(records.is_empty(), "{topic}/{p} came back with {} old records", records.len());
        assert_eq!(high_watermark, 0, "{topic}/{p} came back with old offsets");
    }
}

/// Entries of the data directory left by a deletion.
fn deleted_dirs(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with("-delete"))
        .collect()
}

fn fill(client: &mut Client, topic: &str, partitions: i32) {
    for p in 0..partitions {
        client.produce(topic, p, &values(RECORDS_PER_PARTITION, "old"), 1, Compression::None).unwrap();
    }
}

/// After a restart: a topic whose deletion was not acknowledged may still
/// exist, whole; it is then deleted normally. Either way, a topic created
/// again under its name starts empty.
fn recreate_and_check(broker: &TestBroker, topic: &str, partitions: i32, delete_acked: bool) {
    let mut client = broker.client();
    if topic_names(&mut client).contains(topic) {
        assert!(!delete_acked, "{topic} was deleted (acknowledged) but is back after a restart");
        // Partition 1: fill's records only (0 may hold one more, from here).
        let records = client.fetch_all(topic, 1, 0).unwrap();
        assert_eq!(records.len(), RECORDS_PER_PARTITION, "a topic still listed keeps its data");
        assert_eq!(delete_topic(&mut client, topic).unwrap(), 0);
    }
    assert_eq!(client.create_topic(topic, partitions, &[]).unwrap(), partitions);
    assert_empty(&mut client, topic, partitions);
    assert_eq!(client.produce(topic, 0, &values(1, "new"), 1, Compression::None).unwrap(), 0);
}

#[test]
fn kill9_right_after_delete_never_resurrects() {
    let dir = temp_dir("meta-delete-acked");
    let broker = TestBroker::start(&dir, &[]);
    let mut client = broker.client();
    client.create_topic("t", 3, &[]).unwrap();
    fill(&mut client, "t", 3);
    assert_eq!(delete_topic(&mut client, "t").unwrap(), 0);
    broker.kill9();

    let broker = TestBroker::start(&dir, &[]);
    recreate_and_check(&broker, "t", 3, true);
    assert_eq!(deleted_dirs(&dir.join("data")), Vec::<String>::new());
    broker.stop();
}

/// Kills the broker while it deletes a 1,000-partition topic: right after
/// the metadata log records the deletion (before or while the partition directories
/// are renamed away) in the first rounds, at once after sending the request
/// in the last (maybe before anything was persisted).
#[test]
fn kill9_during_delete_of_many_partitions_never_resurrects() {
    const PARTITIONS: i32 = 1000;
    const ROUNDS: usize = 3;
    let dir = temp_dir("meta-delete-many");
    let data_dir = dir.join("data");
    let mut delete_committed = false;
    for round in 0..ROUNDS {
        let broker = TestBroker::start(&dir, &[]);
        recreate_and_check(&broker, "t", PARTITIONS, delete_committed);
        fill(&mut broker.client(), "t", PARTITIONS);
        let addr = broker.addr.clone();
        let logged_before = deletions_logged(&data_dir, "t");
        let deleter = std::thread::spawn(move || delete_topic(&mut Client::connect(&addr).unwrap(), "t"));
        let wait_for_persist = round + 1 < ROUNDS;
        if wait_for_persist {
            let deadline = Instant::now() + Duration::from_secs(60);
            while deletions_logged(&data_dir, "t") == logged_before {
                assert!(Instant::now() < deadline, "the deletion was never persisted");
                std::thread::yield_now();
            }
        }
        broker.kill9();
        // Killed mid-request, the deleter may or may not have had its answer.
        delete_committed = wait_for_persist || matches!(deleter.join().unwrap(), Ok(0));
    }
    let broker = TestBroker::start(&dir, &[]);
    recreate_and_check(&broker, "t", PARTITIONS, delete_committed);
    assert_eq!(deleted_dirs(&data_dir), Vec::<String>::new());
    broker.stop();
}

/// One Metadata request auto-creating 2,000 topics is one metadata commit,
/// and a CreateTopics sent meanwhile on another connection is not queued
/// behind 2,000 of them.
#[test]
fn metadata_auto_creating_2000_topics_is_one_commit() {
    const TOPICS: usize = 2000;
    let dir = temp_dir("meta-auto-create");
    let broker = TestBroker::start(&dir, &[]);
    let names: Vec<String> = (0..TOPICS).map(|i| format!("auto-{i}")).collect();
    let addr = broker.addr.clone();
    let started = Instant::now();
    let big = std::thread::spawn(move || {
        let response = metadata(&mut Client::connect(&addr).unwrap(), Some(&names), true);
        (response, started.elapsed())
    });
    let mut client = broker.client();
    client.create_topic("single", 1, &[]).unwrap();
    let single_elapsed = started.elapsed();
    let (response, big_elapsed) = big.join().unwrap();
    assert_eq!(response.topics.len(), TOPICS);
    for topic in &response.topics {
        assert_eq!(topic.error_code, 0, "{:?}", topic.name);
        assert_eq!(topic.partitions.len(), 1);
        assert!(!topic.topic_id.is_nil(), "Metadata v12 returns topic ids");
    }
    let log = broker.log();
    // Counted from when the broker serves: it registers itself before.
    let serving = log.split("listening").last().unwrap_or_default();
    let commits = serving.lines().filter(|l| l.contains("metadata committed")).count();
    // The 2,000 topics in one commit, the single one in it or its own.
    assert!((1..=2).contains(&commits), "{commits} metadata commits for two requests");
    let generous = Duration::from_secs(30);
    assert!(single_elapsed < generous && big_elapsed < generous, "single {single_elapsed:?}, 2,000 {big_elapsed:?}");
    assert_eq!(topic_names(&mut client).len(), TOPICS + 1);
    broker.stop();
}

/// Topic ids are stable: Metadata shows the same id before and after a
/// restart, and a new id for a topic created again.
#[test]
fn topic_ids_persist_and_change_on_recreate() {
    let dir = temp_dir("meta-ids");
    let broker = TestBroker::start(&dir, &[]);
    let mut client = broker.client();
    client.create_topic("ids", 1, &[]).unwrap();
    let id = |client: &mut Client| metadata(client, Some(&["ids".to_string()]), false).topics[0].topic_id;
    let first = id(&mut client);
    assert!(!first.is_nil());
    broker.kill9();
    let broker = TestBroker::start(&dir, &[]);
    let mut client = broker.client();
    assert_eq!(id(&mut client), first, "topic id changed across a restart");
    assert_eq!(delete_topic(&mut client, "ids").unwrap(), 0);
    client.create_topic("ids", 1, &[]).unwrap();
    let second = id(&mut client);
    assert!(!second.is_nil() && second != first, "a topic created again gets a new id");
    broker.stop();
}

/// `kill -9` while clients create and delete topics: the broker restarts
/// (the metadata log is never torn), every acknowledged creation of a
/// topic never deleted is there, and no acknowledged deletion is undone.
#[test]
fn topics_file_survives_kill9_during_churn() {
    const ROUNDS: usize = 3;
    let dir = temp_dir("meta-churn");
    for round in 0..ROUNDS {
        let broker = TestBroker::start(&dir, &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let kept: Arc<Mutex<Vec<String>>> = Arc::default();
        let deleted: Arc<Mutex<Vec<String>>> = Arc::default();
        let keeper = {
            let (addr, stop, kept) = (broker.addr.clone(), stop.clone(), kept.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(&addr).unwrap();
                for i in 0.. {
                    let name = format!("keep-{round}-{i}");
                    if stop.load(Ordering::Relaxed) || client.create_topic(&name, 2, &[]).is_err() {
                        return;
                    }
                    kept.lock().unwrap().push(name);
                }
            })
        };
        let churner = {
            let (addr, stop, deleted) = (broker.addr.clone(), stop.clone(), deleted.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(&addr).unwrap();
                for i in 0.. {
                    let name = format!("churn-{round}-{i}");
                    if stop.load(Ordering::Relaxed) || client.create_topic(&name, 4, &[]).is_err() {
                        return;
                    }
                    match delete_topic(&mut client, &name) {
                        Ok(0) => deleted.lock().unwrap().push(name),
                        _ => return,
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300 + 400 * round as u64));
        broker.kill9();
        stop.store(true, Ordering::Relaxed);
        keeper.join().unwrap();
        churner.join().unwrap();

        let broker = TestBroker::start(&dir, &[]);
        let names = topic_names(&mut broker.client());
        let kept = kept.lock().unwrap();
        assert!(!kept.is_empty(), "round {round}: no topic was created before the kill");
        for name in kept.iter() {
            assert!(names.contains(name), "round {round}: acknowledged topic {name} lost");
        }
        for name in deleted.lock().unwrap().iter() {
            assert!(!names.contains(name), "round {round}: deleted topic {name} came back");
        }
        broker.kill9();
    }
}

/// A data directory from before topic ids and with leftovers of deletions:
/// topics get ids that then stay, and only the leftovers are removed.
#[test]
fn start_gives_ids_and_removes_only_deletion_leftovers() {
    let dir = temp_dir("meta-upgrade");
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join("topics.json"), br#"{"topics":[{"name":"old","partitions":2}]}"#).unwrap();
    for leftover in ["gone-0", "old-2", "x-1.0123-delete"] {
        std::fs::create_dir(data_dir.join(leftover)).unwrap();
        std::fs::write(data_dir.join(leftover).join("00000000000000000000.log"), b"stale").unwrap();
    }
    std::fs::create_dir(data_dir.join("not-a-partition")).unwrap();
    std::fs::write(data_dir.join("file-7"), b"not a directory").unwrap();

    let broker = TestBroker::start(&dir, &[]);
    let mut client = broker.client();
    let id = |client: &mut Client| metadata(client, Some(&["old".to_string()]), false).topics[0].topic_id;
    let first = id(&mut client);
    assert!(!first.is_nil(), "a topic stored without an id gets one");
    for gone in ["gone-0", "old-2", "x-1.0123-delete"] {
        assert!(!data_dir.join(gone).exists(), "{gone} was left behind");
    }
    for kept in ["not-a-partition", "file-7", "old-0", "old-1"] {
        assert!(data_dir.join(kept).exists(), "{kept} was removed");
    }
    broker.kill9();
    let broker = TestBroker::start(&dir, &[]);
    assert_eq!(id(&mut broker.client()), first, "the id given on upgrade was not persisted");
    broker.stop();
}
