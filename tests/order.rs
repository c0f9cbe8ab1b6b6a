//! Order is a promise: produce requests pipelined on one connection take
//! effect and are answered in the order they were sent, also when one of
//! them waits for a segment roll or for the writer to catch up (batches of
//! 1 byte to ~1 MB, 4 MiB segments: a roll every few requests), and whether
//! its partition is on the connection's shard or another one.

mod common;

use bytes::{Bytes, BytesMut};
use common::{temp_dir, TestBroker};
use kafka_protocol::messages::{ApiKey, ProduceResponse};
use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};
use spate::client::{new_record, produce_request, Client};

const PARTITIONS: i32 = 2;
const REQUESTS_PER_ROUND: usize = 60;
const ROUNDS: usize = 6;
/// (records, value bytes) of request i's batch: `BATCH_SHAPES[i % len]`,
/// from 1 byte to ~1 MB.
const BATCH_SHAPES: [(usize, usize); 6] = [(1, 1), (3, 100), (10, 1_000), (30, 10_000), (1, 300_000), (100, 9_000)];

/// A batch whose records' keys say which request carried them.
fn batch(request: usize) -> Bytes {
    let now = spate::storage::now_ms();
    let (count, value_bytes) = BATCH_SHAPES[request % BATCH_SHAPES.len()];
    let key = Bytes::from(format!("request {request}"));
    let value = Bytes::from(vec![b'.'; value_bytes]);
    let records: Vec<_> = (0..count).map(|i| new_record(i as i64, now, Some(key.clone()), value.clone())).collect();
    let mut out = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut out, records.iter(), &options).unwrap();
    out.freeze()
}

/// The request number each stored record carries, in offset order.
fn stored_request_order(client: &mut Client, topic: &str, partition: i32) -> Vec<usize> {
    let records = client.fetch_all(topic, partition, 0).unwrap();
    let mut order: Vec<usize> = Vec::new();
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.offset, i as i64, "offsets are dense");
        let key = std::str::from_utf8(record.key.as_ref().unwrap()).unwrap();
        let request: usize = key.strip_prefix("request ").unwrap().parse().unwrap();
        if order.last() != Some(&request) {
            order.push(request);
        }
    }
    order
}

fn pipelined_produces_keep_their_order(acks: i16) {
    let dir = temp_dir(&format!("order-acks{acks}"));
    let broker = TestBroker::start(&dir, &["segment_bytes=4194304"]);
    let mut client = broker.client();
    client.create_topic("ordered", PARTITIONS, &[]).unwrap();
    let mut sent: Vec<Vec<usize>> = vec![Vec::new(); PARTITIONS as usize];
    let mut request = 0;
    for _round in 0..ROUNDS {
        let mut in_flight = Vec::new();
        for i in 0..REQUESTS_PER_ROUND + PARTITIONS as usize {
            let partition = (request % PARTITIONS as usize) as i32;
            // acks=0 requests get no answer: each round ends with an acks=1
            // request per partition, answered once all before it are written.
            let acks = if i < REQUESTS_PER_ROUND { acks } else { 1 };
            let produce = produce_request("ordered", partition, batch(request), acks);
            let correlation_id = client.send(ApiKey::Produce, 9, &produce).unwrap();
            if acks != 0 {
                in_flight.push((correlation_id, partition));
            }
            sent[partition as usize].push(request);
            request += 1;
        }
        let mut last_offset = vec![-1i64; PARTITIONS as usize];
        for (correlation_id, partition) in in_flight {
            let response: ProduceResponse = client.receive(ApiKey::Produce, 9, correlation_id).unwrap();
            let answer = &response.responses[0].partition_responses[0];
            assert_eq!(answer.error_code, 0);
            assert!(
                answer.base_offset > last_offset[partition as usize],
                "request {correlation_id} got offset {} after {} on partition {partition}",
                answer.base_offset,
                last_offset[partition as usize]
            );
            last_offset[partition as usize] = answer.base_offset;
        }
    }
    for partition in 0..PARTITIONS {
        let stored = stored_request_order(&mut client, "ordered", partition);
        assert_eq!(stored, sent[partition as usize], "partition {partition} holds the batches in the order sent");
    }
    broker.stop();
}

#[test]
fn pipelined_acks_0_produces_are_stored_in_the_order_sent() {
    pipelined_produces_keep_their_order(0);
}

#[test]
fn pipelined_acks_1_produces_are_stored_in_the_order_sent() {
    pipelined_produces_keep_their_order(1);
}

#[test]
fn pipelined_acks_all_produces_are_stored_in_the_order_sent() {
    pipelined_produces_keep_their_order(-1);
}
