//! Fetch long-polling and byte limits, retention by bytes and by time, and
//! LogAppendTime topics, as a Kafka user relies on them.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{temp_dir, TestBroker};
use kafka_protocol::messages::{ApiKey, BrokerId, TopicName};
use kafka_protocol::records::{Compression, RecordBatchDecoder, TimestampType};
use spate::client::{str_bytes, Client, FetchLimits};

/// A raw single-partition Fetch v11, returning (error, records bytes, high watermark).
fn fetch(
    client: &mut Client,
    topic: &str,
    offset: i64,
    max_wait_ms: i32,
    min_bytes: i32,
    partition_max_bytes: i32,
) -> (i16, Bytes, i64) {
    let limits = FetchLimits { max_wait_ms, min_bytes, max_bytes: 50 << 20, partition_max_bytes };
    client.fetch_raw(topic, 0, offset, limits, 11).unwrap()
}

fn values(n: usize, bytes: usize) -> Vec<(Option<Bytes>, Bytes)> {
    (0..n).map(|i| (None, Bytes::from(format!("{i:0>width$}", width = bytes)))).collect()
}

#[test]
fn fetch_long_polls_until_data_or_timeout() {
    let broker = TestBroker::start(&temp_dir("longpoll"), &[]);
    let mut client = broker.client();
    client.create_topic("poll", 1, &[]).unwrap();

    let started = Instant::now();
    let (error, records, _) = fetch(&mut client, "poll", 0, 600, 1, 1 << 20);
    assert_eq!((error, records.len()), (0, 0));
    assert!(started.elapsed() >= Duration::from_millis(500), "an empty fetch waits for max_wait_ms");

    let addr = broker.addr.clone();
    let producer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        Client::connect(&addr).unwrap().produce("poll", 0, &values(3, 10), 1, Compression::None).unwrap();
    });
    let started = Instant::now();
    let (error, records, high_watermark) = fetch(&mut client, "poll", 0, 20_000, 1, 1 << 20);
    producer.join().unwrap();
    assert_eq!((error, high_watermark), (0, 3));
    assert!(!records.is_empty(), "data that arrives during the wait is returned");
    assert!(started.elapsed() < Duration::from_secs(10), "the fetch returned when data arrived, not at max_wait_ms");

    let started = Instant::now();
    let (_, records, _) = fetch(&mut client, "poll", 0, 500, 1 << 20, 1 << 20);
    assert!(
        !records.is_empty() && started.elapsed() >= Duration::from_millis(400),
        "below min_bytes the fetch waits, then returns what there is"
    );
    broker.stop();
}

#[test]
fn fetch_returns_at_least_one_whole_batch_within_limits() {
    let broker = TestBroker::start(&temp_dir("limits"), &[]);
    let mut client = broker.client();
    client.create_topic("limits", 1, &[]).unwrap();
    for _ in 0..5 {
        client.produce("limits", 0, &values(10, 100), 1, Compression::None).unwrap();
    }
    let (_, records, _) = fetch(&mut client, "limits", 0, 0, 1, 10);
    let mut buf = records.clone();
    let first = RecordBatchDecoder::decode(&mut buf).unwrap();
    assert_eq!(first.records.len(), 10, "one whole batch although larger than partition_max_bytes");
    assert!(buf.is_empty(), "and no more than one");
    let (_, records, _) = fetch(&mut client, "limits", 25, 0, 1, 1 << 20);
    let mut buf = records.clone();
    let batch = RecordBatchDecoder::decode(&mut buf).unwrap();
    assert_eq!(batch.records[0].offset, 20, "a fetch inside a batch returns that whole batch");
    broker.stop();
}

fn earliest_after(client: &mut Client, topic: &str, deadline: Duration) -> i64 {
    let until = Instant::now() + deadline;
    loop {
        let earliest = client.list_offset(topic, 0, -2).unwrap();
        if earliest > 0 || Instant::now() > until {
            return earliest;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn retention_by_bytes_and_by_time_deletes_old_segments() {
    let broker = TestBroker::start(&temp_dir("retention"), &["retention_check_interval_ms=100"]);
    let mut client = broker.client();
    client
        .create_topic(
            "by-bytes",
            1,
            &[("segment.bytes".into(), "16384".into()), ("retention.bytes".into(), "40000".into())],
        )
        .unwrap();
    client
        .create_topic("by-time", 1, &[("segment.bytes".into(), "16384".into()), ("retention.ms".into(), "1000".into())])
        .unwrap();
    for _ in 0..60 {
        client.produce("by-bytes", 0, &values(10, 200), 1, Compression::None).unwrap();
        client.produce("by-time", 0, &values(10, 200), 1, Compression::None).unwrap();
    }
    let earliest = earliest_after(&mut client, "by-bytes", Duration::from_secs(10));
    assert!(earliest > 0, "old segments beyond retention.bytes are deleted");
    assert_eq!(client.list_offset("by-bytes", 0, -1).unwrap(), 600, "the newest data stays");
    let err = client.fetch("by-bytes", 0, 0, 0).unwrap_err().to_string();
    assert!(err.contains("OffsetOutOfRange"), "{err}");
    assert_eq!(client.fetch_all("by-bytes", 0, earliest).unwrap().len() as i64, 600 - earliest);

    let earliest = earliest_after(&mut client, "by-time", Duration::from_secs(10));
    assert!(earliest > 0, "segments older than retention.ms are deleted");
    broker.stop();
}

#[test]
fn log_append_time_topics_stamp_batches_without_decompressing() {
    let broker = TestBroker::start(&temp_dir("lat"), &[]);
    let mut client = broker.client();
    client.create_topic("stamped", 1, &[("message.timestamp.type".into(), "LogAppendTime".into())]).unwrap();
    let before = spate::storage::now_ms();
    client.produce("stamped", 0, &values(5, 10), 1, Compression::Gzip).unwrap();
    let records = client.fetch_all("stamped", 0, 0).unwrap();
    assert_eq!(records.len(), 5);
    for r in &records {
        assert_eq!(r.timestamp_type, TimestampType::LogAppend);
        assert!(r.timestamp >= before && r.timestamp <= spate::storage::now_ms(), "broker time, not the producer's");
    }
    broker.stop();
}

#[test]
fn offset_for_leader_epoch_and_epoch_fencing() {
    use kafka_protocol::messages::offset_for_leader_epoch_request::{OffsetForLeaderPartition, OffsetForLeaderTopic};
    use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

    let broker = TestBroker::start(&temp_dir("epochs"), &[]);
    let mut client = broker.client();
    client.create_topic("epochs", 1, &[]).unwrap();
    client.produce("epochs", 0, &values(7, 5), 1, Compression::None).unwrap();
    let ask = |client: &mut Client, current: i32, epoch: i32| {
        let mut p = OffsetForLeaderPartition::default();
        p.current_leader_epoch = current;
        p.leader_epoch = epoch;
        let mut t = OffsetForLeaderTopic::default();
        t.topic = TopicName(str_bytes("epochs"));
        t.partitions = vec![p];
        let mut req = OffsetForLeaderEpochRequest::default();
        req.replica_id = BrokerId(-1);
        req.topics = vec![t];
        let resp: OffsetForLeaderEpochResponse = client.call(ApiKey::OffsetForLeaderEpoch, 4, &req).unwrap();
        let p = &resp.topics[0].partitions[0];
        (p.error_code, p.leader_epoch, p.end_offset)
    };
    assert_eq!(ask(&mut client, 0, 0), (0, 0, 7), "epoch 0 ends at the log end");
    assert_eq!(ask(&mut client, -1, 5), (0, -1, -1), "an unknown later epoch is undefined");
    assert_eq!(ask(&mut client, 3, 0).0, 75, "a client ahead of the leader epoch: UNKNOWN_LEADER_EPOCH");
    broker.stop();
}

/// A log written to a file (or a pipe) is plain text: no ANSI colour codes.
#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    let broker = TestBroker::start(&temp_dir("plain-log"), &[]);
    broker.client().create_topic("logged", 1, &[]).unwrap();
    let log = broker.log();
    broker.stop();
    assert!(log.contains("listening"), "the broker logged its start:\n{log}");
    assert!(!log.contains('\u{1b}'), "no escape sequences in a log file:\n{log}");
}
