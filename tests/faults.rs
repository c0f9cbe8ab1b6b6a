//! Nothing acknowledged is lost, whatever clients and the disk do: clients
//! that reset connections with produces in flight, concurrent producers on
//! tiny segments (rolls every few batches) under `kill -9`, injected write,
//! fallocate, fdatasync and open failures (`SPATE_FAULTS`), and DeleteRecords
//! under `kill -9`. Every check reads each acknowledged record at its offset,
//! before and after a restart.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::{temp_dir, TestBroker};
use kafka_protocol::messages::{produce_request, ApiKey, ProduceRequest, RequestHeader, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::Compression;
use spate::client::{str_bytes, Client};

/// (partition, base offset, values) of a batch the broker acknowledged.
type Acked = Arc<Mutex<Vec<(i32, i64, Vec<String>)>>>;

fn values(n: usize, tag: &str) -> Vec<(Option<Bytes>, Bytes)> {
    (0..n).map(|i| (None, Bytes::from(format!("{tag}-{i}")))).collect()
}

/// What one producer thread sends: batches of `records` records to
/// `topic`/`partition` with `acks`, values tagged with `tag`.
struct Load {
    topic: &'static str,
    partition: i32,
    records: usize,
    acks: i16,
    tag: String,
}

/// Produces `load` until `stop` is set or the broker goes away, recording
/// every acknowledged batch; returns how many were refused (storage errors).
fn producer(addr: String, load: Load, stop: Arc<AtomicBool>, acked: Acked) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut refused = 0;
        let Ok(mut client) = Client::connect(&addr) else { return refused };
        for i in 0.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let batch = values(load.records, &format!("{}-b{i}", load.tag));
            match client.produce(load.topic, load.partition, &batch, load.acks, Compression::None) {
                Ok(base) => {
                    let vals = batch.iter().map(|(_, v)| String::from_utf8(v.to_vec()).unwrap()).collect();
                    acked.lock().unwrap().push((load.partition, base, vals));
                }
                Err(e) if e.to_string().contains("error code") => refused += 1,
                Err(_) => {
                    // Connection gone (the broker was killed): reconnect or end.
                    match Client::connect(&addr) {
                        Ok(c) => client = c,
                        Err(_) => break,
                    }
                }
            }
        }
        refused
    })
}

/// Every acknowledged record is at its offset, exactly once.
fn verify(addr: &str, topic: &str, acked: &Acked) -> usize {
    let acked = acked.lock().unwrap();
    let mut client = Client::connect(addr).unwrap();
    let partitions: Vec<i32> = {
        let mut p: Vec<i32> = acked.iter().map(|a| a.0).collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    let mut checked = 0;
    for p in partitions {
        let stored: std::collections::HashMap<i64, String> = client
            .fetch_all(topic, p, 0)
            .unwrap()
            .into_iter()
            .map(|r| (r.offset, String::from_utf8(r.value.unwrap().to_vec()).unwrap()))
            .collect();
        for (_, base, vals) in acked.iter().filter(|a| a.0 == p) {
            for (i, v) in vals.iter().enumerate() {
                let offset = base + i as i64;
                assert_eq!(stored.get(&offset), Some(v), "acknowledged record {v} missing at {topic}/{p}@{offset}");
                checked += 1;
            }
        }
        let mut copies: std::collections::HashMap<&String, usize> = std::collections::HashMap::new();
        for v in stored.values() {
            *copies.entry(v).or_default() += 1;
        }
        for (_, _, vals) in acked.iter().filter(|a| a.0 == p) {
            for v in vals {
                assert_eq!(copies.get(v), Some(&1), "acknowledged record {v} stored once in {topic}/{p}");
            }
        }
    }
    checked
}

/// One Produce v9 frame (acks=all) with a batch of `n` records.
fn produce_frame(topic: &str, correlation_id: i32, n: usize) -> Vec<u8> {
    let now = spate::storage::now_ms();
    let records: Vec<_> = (0..n)
        .map(|i| spate::client::new_record(i as i64, now, None, Bytes::from(format!("rude-{correlation_id}-{i}"))))
        .collect();
    let mut batch = BytesMut::new();
    let options = kafka_protocol::records::RecordEncodeOptions { version: 2, compression: Compression::None };
    kafka_protocol::records::RecordBatchEncoder::encode(&mut batch, records.iter(), &options).unwrap();
    let mut pd = produce_request::PartitionProduceData::default();
    pd.index = 0;
    pd.records = Some(batch.freeze());
    let mut td = produce_request::TopicProduceData::default();
    td.name = TopicName(str_bytes(topic));
    td.partition_data = vec![pd];
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = 30_000;
    req.topic_data = vec![td];
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::Produce as i16;
    header.request_api_version = 9;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_static_str("rude"));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header.encode(&mut buf, ApiKey::Produce.request_header_version(9)).unwrap();
    req.encode(&mut buf, 9).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.to_vec()
}

/// Sends pipelined produces, then resets the connection (RST, no FIN) at once.
fn rude_client(addr: &str, topic: &str, requests: usize) {
    let Ok(mut stream) = TcpStream::connect(addr) else { return };
    for c in 0..requests {
        if stream.write_all(&produce_frame(topic, c as i32, 20)).is_err() {
            break;
        }
    }
    common::reset_connection(stream);
}

#[test]
fn rude_disconnects_never_lose_another_producers_records() {
    let dir = temp_dir("rude");
    let broker = TestBroker::start(&dir, &["segment_bytes=262144"]);
    broker.client().create_topic("shared", 1, &[]).unwrap();
    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Acked::default());
    let load = Load { topic: "shared", partition: 0, records: 10, acks: -1, tag: "good".into() };
    let good = producer(broker.addr.clone(), load, stop.clone(), acked.clone());
    // 300 clients, as the report had, each resetting its connection
    // with 8 pipelined produces in flight.
    let rude: Vec<_> = (0..4)
        .map(|_| {
            let addr = broker.addr.clone();
            std::thread::spawn(move || {
                for _ in 0..75 {
                    rude_client(&addr, "shared", 8);
                    std::thread::sleep(Duration::from_millis(20));
                }
                75
            })
        })
        .collect();
    let resets: usize = rude.into_iter().map(|r| r.join().unwrap()).sum();
    assert_eq!(resets, 300);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(good.join().unwrap(), 0, "the good producer was never refused");
    let good_batches = acked.lock().unwrap().len();
    assert!(good_batches > 10, "the good producer made progress ({good_batches} batches)");
    let checked = verify(&broker.addr, "shared", &acked);
    broker.kill9();
    let broker = TestBroker::start(&dir, &["segment_bytes=262144"]);
    assert_eq!(verify(&broker.addr, "shared", &acked), checked);
    broker.stop();
}

#[test]
fn tiny_segments_under_concurrent_producers_survive_kill9() {
    let dir = temp_dir("tiny-segments");
    let broker = TestBroker::start(&dir, &["segment_bytes=16384"]);
    broker.client().create_topic("tiny", 2, &[]).unwrap();
    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Acked::default());
    let producers: Vec<_> = (0..6)
        .map(|i| {
            let load = Load {
                topic: "tiny",
                partition: i % 2,
                records: 25,
                acks: if i % 3 == 0 { 1 } else { -1 },
                tag: format!("p{i}"),
            };
            producer(broker.addr.clone(), load, stop.clone(), acked.clone())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(2500));
    broker.kill9();
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join().unwrap();
    }
    let segments = std::fs::read_dir(dir.join("data/tiny-0"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "log"))
        .count();
    assert!(segments > 5, "segments rolled ({segments})");
    let broker = TestBroker::start(&dir, &["segment_bytes=16384"]);
    let checked = verify(&broker.addr, "tiny", &acked);
    assert!(checked > 500, "checked {checked} records");
    broker.stop();
}

/// Produces through a broker whose storage fails as `faults` says, then
/// checks every acknowledged record, before and after a restart without faults.
fn survive_injected_faults(name: &str, faults: &str, expect_refusals: bool) {
    let dir = temp_dir(name);
    let broker = TestBroker::start_with_env(&dir, &["segment_bytes=65536"], &[("SPATE_FAULTS", faults)]);
    broker.client().create_topic("faulty", 2, &[]).unwrap();
    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Acked::default());
    let producers: Vec<_> = (0..4)
        .map(|i| {
            let load = Load {
                topic: "faulty",
                partition: i % 2,
                records: 20,
                acks: if i == 3 { 1 } else { -1 },
                tag: format!("p{i}"),
            };
            producer(broker.addr.clone(), load, stop.clone(), acked.clone())
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let refused: usize = producers.into_iter().map(|p| p.join().unwrap()).sum();
    if expect_refusals {
        assert!(refused > 0, "the injected faults reached producers as errors; log:\n{}", broker.log());
    }
    let checked = verify(&broker.addr, "faulty", &acked);
    assert!(checked > 0);
    broker.kill9();
    let broker = TestBroker::start(&dir, &["segment_bytes=65536"]);
    assert_eq!(verify(&broker.addr, "faulty", &acked), checked);
    // Appends work again.
    broker.client().produce("faulty", 0, &values(3, "after"), -1, Compression::None).unwrap();
    broker.stop();
}

#[test]
fn enospc_on_writes_refuses_batches_and_loses_nothing() {
    survive_injected_faults(
        "enospc-write",
        "op=write,error=ENOSPC,after=40,times=25;op=write,error=short,after=200,times=5",
        true,
    );
}

#[test]
fn failed_fallocate_fdatasync_and_emfile_lose_nothing() {
    survive_injected_faults(
        "fsync-open",
        "op=fallocate,error=ENOSPC,after=2,times=3;op=fdatasync,error=ENOSPC,after=30,times=5;op=open,error=EMFILE,after=4,times=6",
        true,
    );
}

#[test]
fn eio_takes_the_partition_offline_and_a_restart_recovers() {
    survive_injected_faults(
        "eio",
        "op=write,error=EIO,after=100,times=1;op=fdatasync,error=EIO,after=150,times=1",
        true,
    );
}

/// DeleteRecords then `kill -9`, a few times, with a second DeleteRecords in
/// flight at the kill: the log start never moves back after a restart.
#[test]
fn delete_records_survives_kill9() {
    let dir = temp_dir("delete-records-kill9");
    let mut broker = TestBroker::start(&dir, &["segment_bytes=16384"]);
    broker.client().create_topic("trim", 1, &[]).unwrap();
    let mut start = 0;
    for round in 0..8 {
        let mut client = broker.client();
        for i in 0..20 {
            client.produce("trim", 0, &values(20, &format!("r{round}-{i}")), -1, Compression::None).unwrap();
        }
        let end = client.list_offset("trim", 0, -1).unwrap();
        start = client.delete_records("trim", 0, end - 10).unwrap();
        assert_eq!(start, end - 10);
        // One more DeleteRecords, killed at a different moment each round:
        // before it arrives, while its log-start-offset file is written, or
        // after its answer.
        let addr = broker.addr.clone();
        let in_flight = std::thread::spawn(move || Client::connect(&addr)?.delete_records("trim", 0, end - 5));
        std::thread::sleep(Duration::from_micros(round as u64 * 700));
        broker.kill9();
        let acknowledged = in_flight.join().unwrap().ok();
        broker = TestBroker::start(&dir, &["segment_bytes=16384"]);
        let mut client = broker.client();
        let recovered = client.list_offset("trim", 0, -2).unwrap();
        if acknowledged.is_some() {
            start = end - 5;
        }
        assert!(
            recovered == start || recovered == end - 5,
            "log start is the last acknowledged one ({start}) or the one in flight ({}), not {recovered} (round {round})",
            end - 5
        );
        start = recovered;
        let records = client.fetch_all("trim", 0, start).unwrap();
        assert_eq!(records.first().map(|r| r.offset), Some(start), "records from the log start are readable");
        assert_eq!(records.len() as i64, end - start, "every record after the log start is kept");
    }
    assert!(start > 0);
    broker.stop();
}

/// `flush_interval_ms` decides whether acks=1 data is fdatasync'd in the
/// background: with every fdatasync failing (EIO), a broker that syncs every
/// 200 ms takes the partition offline under acks=1 produces, one with 0
/// (never, Kafka's default) keeps taking them until an acks=all produce asks
/// for a sync.
#[test]
fn flush_interval_zero_never_syncs_in_the_background() {
    let produce_for = |client: &mut Client, tag: &str| -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            client.produce("f", 0, &values(10, tag), 1, Compression::None)?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    let every_sync_fails = [("SPATE_FAULTS", "op=fdatasync,error=EIO")];

    let dir = temp_dir("flush-interval-200");
    let broker = TestBroker::start_with_env(&dir, &["flush_interval_ms=200"], &every_sync_fails);
    let mut client = broker.client();
    client.create_topic("f", 1, &[]).unwrap();
    assert!(produce_for(&mut client, "synced").is_err(), "the background sync failed and took the partition offline");
    drop(broker);

    let dir = temp_dir("flush-interval-0");
    let broker = TestBroker::start_with_env(&dir, &["flush_interval_ms=0"], &every_sync_fails);
    let mut client = broker.client();
    client.create_topic("f", 1, &[]).unwrap();
    produce_for(&mut client, "unsynced").expect("no background sync: acks=1 produces all succeed");
    assert!(client.produce("f", 0, &values(1, "all"), -1, Compression::None).is_err(), "acks=all still syncs");
}
