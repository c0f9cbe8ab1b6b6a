//! Data survives: a clean restart, a `kill -9` under an acks=all producer,
//! and a segment whose tail was torn mid-batch.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{temp_dir, TestBroker};
use kafka_protocol::records::Compression;

fn values(n: usize, tag: &str) -> Vec<(Option<Bytes>, Bytes)> {
    (0..n).map(|i| (Some(Bytes::from(format!("k{i}"))), Bytes::from(format!("{tag}-{i}")))).collect()
}

fn record_values(records: &[kafka_protocol::records::Record]) -> Vec<(i64, String)> {
    records.iter().map(|r| (r.offset, String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())).collect()
}

#[test]
fn clean_restart_keeps_topics_and_data() {
    let dir = temp_dir("restart");
    let broker = TestBroker::start(&dir, &[]);
    let mut client = broker.client();
    client.create_topic("orders", 3, &[("retention.ms".into(), "86400000".into())]).unwrap();
    let codecs = [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];
    for p in 0..3 {
        for (i, codec) in codecs.iter().enumerate() {
            client.produce("orders", p, &values(100, &format!("p{p}-b{i}")), 1, *codec).unwrap();
        }
    }
    let before: Vec<_> = (0..3).map(|p| record_values(&client.fetch_all("orders", p, 0).unwrap())).collect();
    assert_eq!(before[0].len(), 500);
    broker.stop();

    let broker = TestBroker::start(&dir, &[]);
    let mut client = broker.client();
    for (p, expected) in before.iter().enumerate() {
        let after = record_values(&client.fetch_all("orders", p as i32, 0).unwrap());
        assert_eq!(&after, expected, "partition {p} differs after restart");
        assert_eq!(client.list_offset("orders", p as i32, -1).unwrap(), 500);
    }
    // The topic exists with its partitions (an unknown partition would fail).
    assert!(client.fetch("orders", 3, 0, 0).is_err());
    assert_eq!(client.produce("orders", 0, &values(1, "after"), 1, Compression::None).unwrap(), 500);
    broker.stop();
}

/// (partition, base offset, values) of a batch the broker acknowledged.
type AckedBatch = (i32, i64, Vec<String>);

#[test]
fn kill9_loses_no_acknowledged_message() {
    let dir = temp_dir("kill9");
    let broker = TestBroker::start(&dir, &[]);
    broker.client().create_topic("durable", 2, &[]).unwrap();
    let acked: Arc<Mutex<Vec<AckedBatch>>> = Arc::default();
    let producers: Vec<_> = (0..2)
        .map(|p| {
            let (addr, acked) = (broker.addr.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut client = spate::client::Client::connect(&addr).unwrap();
                for i in 0.. {
                    let batch = values(50, &format!("p{p}-b{i}"));
                    match client.produce("durable", p, &batch, -1, Compression::Lz4) {
                        Ok(base) => {
                            let vals = batch.iter().map(|(_, v)| String::from_utf8(v.to_vec()).unwrap()).collect();
                            acked.lock().unwrap().push((p, base, vals));
                        }
                        Err(_) => return, // the broker is gone
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(3000));
    broker.kill9();
    for producer in producers {
        producer.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 10, "the producers got going before the kill");

    let broker = TestBroker::start(&dir, &[]);
    let mut client = broker.client();
    for p in 0..2 {
        let stored = record_values(&client.fetch_all("durable", p, 0).unwrap());
        let offsets: Vec<i64> = stored.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (0..stored.len() as i64).collect::<Vec<_>>(), "offsets are contiguous");
        let mut seen = std::collections::HashSet::new();
        assert!(stored.iter().all(|(_, v)| seen.insert(v.clone())), "no message stored twice");
        for (_, base, vals) in acked.iter().filter(|(ap, _, _)| *ap == p) {
            for (i, v) in vals.iter().enumerate() {
                let at = (*base as usize) + i;
                assert_eq!(
                    stored.get(at).map(|(_, s)| s),
                    Some(v),
                    "acknowledged record at offset {at} of partition {p}"
                );
            }
        }
    }
    broker.stop();
}

#[test]
fn torn_tail_is_truncated_and_whole_batches_kept() {
    let dir = temp_dir("torn");
    let broker = TestBroker::start(&dir, &[]);
    let mut client = broker.client();
    client.create_topic("torn", 1, &[]).unwrap();
    for i in 0..40 {
        client.produce("torn", 0, &values(10, &format!("b{i}")), 1, Compression::None).unwrap();
    }
    broker.stop();

    let segment = dir.join("data/torn-0/00000000000000000000.log");
    let len = std::fs::metadata(&segment).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
    file.set_len(len - 25).unwrap(); // cut into the last batch
    drop(file);

    let broker = TestBroker::start(&dir, &[]);
    let mut client = broker.client();
    let stored = record_values(&client.fetch_all("torn", 0, 0).unwrap());
    assert_eq!(stored.len(), 390, "every whole batch before the tear survives");
    assert_eq!(stored.last().unwrap().1, "b38-9");
    assert_eq!(client.list_offset("torn", 0, -1).unwrap(), 390);
    let base = client.produce("torn", 0, &values(10, "new"), 1, Compression::None).unwrap();
    assert_eq!(base, 390, "appends continue right after the recovered tail");
    let stored = record_values(&client.fetch_all("torn", 0, 380).unwrap());
    assert_eq!(stored.iter().map(|(_, v)| v.as_str()).filter(|v| v.starts_with("new")).count(), 10);
    assert!(broker.log().contains("truncating torn or corrupt log tail"), "recovery says what it did");
    broker.stop();
}

#[test]
fn segments_roll_and_reads_cross_them() {
    let dir = temp_dir("roll");
    let broker = TestBroker::start(&dir, &["segment_bytes=16384", "cache_bytes_per_shard=1048576"]);
    let mut client = broker.client();
    client.create_topic("rolling", 1, &[]).unwrap();
    for i in 0..200 {
        client.produce("rolling", 0, &values(20, &format!("r{i}")), 1, Compression::None).unwrap();
    }
    let segments = std::fs::read_dir(dir.join("data/rolling-0"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "log"))
        .count();
    assert!(segments > 3, "small segment_bytes rolls segments (got {segments})");
    let stored = record_values(&client.fetch_all("rolling", 0, 0).unwrap());
    assert_eq!(stored.len(), 4000);
    assert_eq!(stored[1234].1, format!("r{}-{}", 1234 / 20, 1234 % 20));
    broker.stop();
    let broker = TestBroker::start(&dir, &[]);
    let stored = record_values(&broker.client().fetch_all("rolling", 0, 1990).unwrap());
    assert_eq!(stored.len(), 2010, "reads from sealed segments after restart use their indexes");
    broker.stop();
}

#[test]
fn reads_beyond_the_cache_come_from_disk() {
    let dir = temp_dir("disk-read");
    let settings = ["write_buffer_bytes=65536", "cache_bytes_per_shard=65536", "index_interval_bytes=1024"];
    let broker = TestBroker::start(&dir, &settings);
    let mut client = broker.client();
    client.create_topic("cold", 1, &[]).unwrap();
    for i in 0..300 {
        let batch: Vec<_> = (0..20).map(|j| (None, Bytes::from(format!("c{i}-{j}-{}", "p".repeat(200))))).collect();
        client.produce("cold", 0, &batch, 1, Compression::None).unwrap();
    }
    // 300 batches of ~4 KiB is far past the 64 KiB cache: the start is on disk only.
    let stored = record_values(&client.fetch_all("cold", 0, 0).unwrap());
    assert_eq!(stored.len(), 6000);
    assert!(stored[4321].1.starts_with(&format!("c{}-{}-", 4321 / 20, 4321 % 20)));
    let mid = record_values(&client.fetch_all("cold", 0, 3333).unwrap());
    assert_eq!(mid.first().map(|r| r.0), Some(3333), "a read can start inside a batch on disk");
    let first_ts = client.fetch("cold", 0, 0, 0).unwrap().0[0].timestamp;
    assert_eq!(client.list_offset("cold", 0, first_ts).unwrap(), 0, "time lookup through the on-disk time index");
    assert!(!broker.log().contains("ERROR"), "no storage errors:\n{}", broker.log());
    broker.stop();
}

#[test]
fn corrupt_batch_length_in_a_sealed_segment_is_an_error_not_a_hang() {
    let dir = temp_dir("corrupt-length");
    let broker = TestBroker::start(&dir, &["segment_bytes=16384"]);
    let mut client = broker.client();
    client.create_topic("rot", 1, &[]).unwrap();
    for i in 0..100 {
        client.produce("rot", 0, &values(20, &format!("r{i}")), 1, Compression::None).unwrap();
    }
    broker.stop();
    // Bit rot in the first (sealed, indexed) segment: its first batch now
    // claims to be 2 GB long. Recovery trusts the index and does not scan it.
    let segment = dir.join("data/rot-0/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[8..12].copy_from_slice(&0x7fff_0000i32.to_be_bytes());
    std::fs::write(&segment, bytes).unwrap();

    let broker = TestBroker::start(&dir, &[]);
    let mut client = broker.client();
    let err = client.fetch("rot", 0, 0, 0).unwrap_err().to_string();
    assert!(err.contains("KafkaStorageError"), "a corrupt batch is reported: {err}");
    let later = client.fetch_all("rot", 0, 1990).unwrap();
    assert_eq!(later.len(), 10, "the rest of the log is still served");
    assert!(broker.log().contains("corrupt"), "the broker says what it found");
    broker.stop();
}
