//! Bad input gets the Kafka error a Kafka broker would send, or the
//! connection is closed; other clients and stored data are never affected.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{temp_dir, TestBroker};
use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::protocol::Decodable;
use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};
use spate::client::{new_record, Client};

fn raw(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// True if the broker closed the connection (EOF or reset) without answering.
fn closed_without_answer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

/// A v1-header request frame (api key, version, correlation id, client id "t").
fn frame(api_key: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    let len = 2 + 2 + 4 + 2 + 1 + body.len();
    f.extend_from_slice(&(len as i32).to_be_bytes());
    f.extend_from_slice(&api_key.to_be_bytes());
    f.extend_from_slice(&version.to_be_bytes());
    f.extend_from_slice(&7i32.to_be_bytes());
    f.extend_from_slice(&1i16.to_be_bytes());
    f.push(b't');
    f.extend_from_slice(body);
    f
}

fn batch(n: usize, value_bytes: usize) -> BytesMut {
    let records: Vec<_> = (0..n).map(|i| new_record(i as i64, 1, None, Bytes::from(vec![b'x'; value_bytes]))).collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions { version: 2, compression: Compression::None },
    )
    .unwrap();
    buf
}

/// A healthy client's view: produce one batch and read everything back.
fn healthy_round_trip(client: &mut Client, expected_before: usize) -> usize {
    client.produce_raw("good", 0, batch(5, 10).freeze(), 1).unwrap();
    let all = client.fetch_all("good", 0, 0).unwrap();
    assert_eq!(all.len(), expected_before + 5, "stored data is intact and complete");
    all.len()
}

fn setup(name: &str) -> (TestBroker, Client) {
    let broker = TestBroker::start(&temp_dir(name), &[]);
    let mut client = broker.client();
    client.create_topic("good", 1, &[]).unwrap();
    client.create_topic("small", 1, &[("max.message.bytes".into(), "1024".into())]).unwrap();
    (broker, client)
}

#[test]
fn garbage_and_oversize_frames_close_only_their_connection() {
    let (mut broker, mut client) = setup("garbage");
    let mut stored = healthy_round_trip(&mut client, 0);

    let mut http = raw(&broker.addr);
    http.write_all(b"GET / HTTP/1.1\r\nHost: spate\r\n\r\n").unwrap();
    assert!(closed_without_answer(&mut http), "an HTTP request is not a Kafka frame");
    stored = healthy_round_trip(&mut client, stored);

    let mut oversize = raw(&broker.addr);
    oversize.write_all(&(200i32 << 20).to_be_bytes()).unwrap();
    assert!(closed_without_answer(&mut oversize), "a frame over socket_request_max_bytes closes the connection");
    let mut negative = raw(&broker.addr);
    negative.write_all(&(-5i32).to_be_bytes()).unwrap();
    assert!(closed_without_answer(&mut negative));

    let mut unknown_key = raw(&broker.addr);
    unknown_key.write_all(&frame(9999, 0, b"")).unwrap();
    assert!(closed_without_answer(&mut unknown_key), "an unknown API key closes the connection");

    let mut cut = raw(&broker.addr);
    cut.write_all(&1000i32.to_be_bytes()).unwrap();
    cut.write_all(b"short").unwrap();
    drop(cut);

    let mut garbage_body = raw(&broker.addr);
    garbage_body.write_all(&frame(0, 9, &[0xff; 40])).unwrap();
    assert!(closed_without_answer(&mut garbage_body), "an undecodable Produce body closes the connection");

    healthy_round_trip(&mut client, stored);
    assert!(broker.is_running());
    assert!(broker.log().contains("closing connection"), "each close leaves a log line");
    broker.stop();
}

#[test]
fn bad_batches_get_kafka_error_codes() {
    let (broker, mut client) = setup("batches");
    let stored = healthy_round_trip(&mut client, 0);

    let mut bad_crc = batch(3, 20);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x55;
    let err = client.produce_raw("good", 0, bad_crc.freeze(), 1).unwrap_err().to_string();
    assert!(err.contains("CorruptMessage"), "bad CRC: {err}");

    let mut truncated = batch(3, 20);
    truncated.truncate(truncated.len() - 4);
    let err = client.produce_raw("good", 0, truncated.freeze(), 1).unwrap_err().to_string();
    assert!(err.contains("CorruptMessage"), "truncated batch: {err}");

    let mut old_magic = batch(3, 20);
    old_magic[16] = 1;
    let err = client.produce_raw("good", 0, old_magic.freeze(), 1).unwrap_err().to_string();
    assert!(err.contains("InvalidRecord"), "magic 1: {err}");

    let err = client.produce_raw("small", 0, batch(4, 1000).freeze(), 1).unwrap_err().to_string();
    assert!(err.contains("MessageTooLarge"), "over max.message.bytes: {err}");
    client.produce_raw("small", 0, batch(1, 100).freeze(), 1).expect("a batch within max.message.bytes is accepted");

    let err = client.produce_raw("no-such-topic", 0, batch(1, 1).freeze(), 1).unwrap_err().to_string();
    assert!(err.contains("UnknownTopicOrPartition"), "unknown topic: {err}");
    let err = client.produce_raw("good", 7, batch(1, 1).freeze(), 1).unwrap_err().to_string();
    assert!(err.contains("UnknownTopicOrPartition"), "unknown partition: {err}");
    let err = client.create_topic("bad name!", 1, &[]).unwrap_err().to_string();
    assert!(err.contains("InvalidTopicException"), "invalid topic name: {err}");
    let err = client.create_topic("good", 1, &[]).unwrap_err().to_string();
    assert!(err.contains("TopicAlreadyExists"), "duplicate topic: {err}");

    healthy_round_trip(&mut client, stored);
    broker.stop();
}

#[test]
fn unsupported_versions() {
    let (broker, mut client) = setup("versions");
    let mut stream = raw(&broker.addr);
    stream.write_all(&frame(18, 99, b"")).unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    let mut body = Bytes::from(body);
    assert_eq!(&body[..4], &7i32.to_be_bytes(), "v0 response header: the correlation id alone");
    let _ = body.split_to(4);
    let response = ApiVersionsResponse::decode(&mut body, 0).unwrap();
    assert_eq!(response.error_code, 35, "UNSUPPORTED_VERSION");
    let produce = response.api_keys.iter().find(|k| k.api_key == 0).expect("Produce advertised");
    assert_eq!((produce.min_version, produce.max_version), (3, 9));
    assert!(response.api_keys.iter().all(|k| k.api_key != 71 && k.api_key != 72), "telemetry is not advertised");

    let mut produce_v99 = raw(&broker.addr);
    produce_v99.write_all(&frame(0, 99, b"")).unwrap();
    assert!(closed_without_answer(&mut produce_v99), "an unsupported Produce version closes the connection");
    let mut fetch_v3 = raw(&broker.addr);
    fetch_v3.write_all(&frame(1, 3, b"")).unwrap();
    assert!(closed_without_answer(&mut fetch_v3));
    healthy_round_trip(&mut client, 0);
    broker.stop();
}

#[test]
fn random_frames_never_take_the_broker_down() {
    let (mut broker, mut client) = setup("fuzz");
    let stored = healthy_round_trip(&mut client, 0);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let api_key = (next() % 70) as i16;
        let version = (next() % 16) as i16;
        let body: Vec<u8> = (0..next() % 300).map(|_| next() as u8).collect();
        let mut stream = raw(&broker.addr);
        stream.write_all(&frame(api_key, version, &body)).unwrap();
        let mut sink = [0u8; 4096];
        let _ = stream.read(&mut sink); // an answer or a close; either is fine
    }
    assert!(broker.is_running(), "broker survived; log:\n{}", broker.log());
    healthy_round_trip(&mut client, stored);
    broker.stop();
}

/// A real one-record batch whose header claims `count` records (records are
/// not decompressed, so only the header's word counts), CRC fixed up.
fn claiming(count: i32) -> BytesMut {
    let mut b = batch(1, 10);
    b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    b[57..61].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

#[test]
fn huge_claimed_record_counts_roll_segments_instead_of_overflowing() {
    let (broker, mut client) = setup("huge-counts");
    for i in 0..3i64 {
        assert_eq!(client.produce_raw("good", 0, claiming(1 << 30).freeze(), 1).unwrap(), i << 30);
    }
    let mut two = claiming(i32::MAX);
    two.extend_from_slice(&claiming(i32::MAX));
    let err = client.produce_raw("good", 0, two.freeze(), 1).unwrap_err().to_string();
    assert!(err.contains("InvalidRecord"), "a payload past 2^31 offsets: {err}");
    let base = client.produce_raw("good", 0, batch(5, 10).freeze(), 1).unwrap();
    assert_eq!(base, 3 << 30);
    let segments = std::fs::read_dir(broker.dir.join("data/good-0"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "log"))
        .count();
    assert!(segments >= 2, "the segment rolled before its relative offsets overflowed");
    let dir = broker.dir.clone();
    broker.stop();
    let broker = TestBroker::start(&dir, &[]);
    let mut client = broker.client();
    assert_eq!(client.list_offset("good", 0, -1).unwrap(), (3 << 30) + 5);
    assert_eq!(
        client.fetch_all("good", 0, 3 << 30).unwrap().len(),
        5,
        "reads after the rolled segments work after restart"
    );
    broker.stop();
}
