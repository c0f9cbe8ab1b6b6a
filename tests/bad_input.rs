//! Bad input gets the Kafka error a Kafka broker would send, or the
//! connection is closed; other clients and stored data are never affected.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{temp_dir, TestBroker};
use kafka_protocol::messages::{
    fetch_request, ApiKey, ApiVersionsResponse, BrokerId, FetchRequest, FetchResponse, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Compression, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions};
use spate::client::{new_record, Client};
use spate::handlers::fetch::FETCH_MAX_BYTES;

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
    encoded_batch(n, value_bytes, Compression::None)
}

fn encoded_batch(n: usize, value_bytes: usize, compression: Compression) -> BytesMut {
    let records: Vec<_> = (0..n).map(|i| new_record(i as i64, 1, None, Bytes::from(vec![b'x'; value_bytes]))).collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, records.iter(), &RecordEncodeOptions { version: 2, compression }).unwrap();
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
    assert_eq!((produce.min_version, produce.max_version), (3, 10));
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

/// `b` with its header claiming `count` records (lastOffsetDelta to match)
/// and its CRC fixed up: only the record bytes tell the lie.
fn claiming(mut b: BytesMut, count: i32) -> BytesMut {
    b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    b[57..61].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// The `.log` segment files of a partition directory.
fn segment_files(broker: &TestBroker, partition_dir: &str) -> usize {
    std::fs::read_dir(broker.dir.join("data").join(partition_dir))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "log"))
        .count()
}

#[test]
fn false_record_counts_are_corrupt_and_store_nothing() {
    let (broker, mut client) = setup("false-counts");
    let stored = healthy_round_trip(&mut client, 0);
    let end = client.list_offset("good", 0, -1).unwrap();
    let lies = [
        ("one record claiming two", claiming(batch(1, 10), 2)),
        ("three records claiming one", claiming(batch(3, 10), 1)),
        ("one record claiming 2^31 - 1", claiming(batch(1, 10), i32::MAX)),
        ("gzip batch claiming 2^31 - 1", claiming(encoded_batch(1, 10, Compression::Gzip), i32::MAX)),
    ];
    for (what, lie) in lies {
        let err = client.produce_raw("good", 0, lie.freeze(), 1).unwrap_err().to_string();
        assert!(err.contains("CorruptMessage") && err.contains("error code 2"), "{what}: {err}");
        assert_eq!(client.list_offset("good", 0, -1).unwrap(), end, "{what}: the log end did not move");
    }
    // The flood that used to roll a segment per batch.
    for _ in 0..200 {
        assert!(client.produce_raw("good", 0, claiming(batch(1, 10), i32::MAX).freeze(), 1).is_err());
    }
    assert_eq!(client.list_offset("good", 0, -1).unwrap(), end);
    assert_eq!(segment_files(&broker, "good-0"), 1, "refused batches roll no segment");

    let mut other = broker.client();
    let stored = healthy_round_trip(&mut other, stored);
    healthy_round_trip(&mut client, stored);
    broker.stop();
}

#[test]
fn huge_compressed_counts_roll_segments_instead_of_overflowing() {
    let (broker, mut client) = setup("huge-counts");
    // Compressed counts are bounded by max.message.bytes (records are never
    // decompressed): a topic allowing 2 GiB batches may claim 2^30 records.
    client.create_topic("big", 1, &[("max.message.bytes".into(), i32::MAX.to_string())]).unwrap();
    let gzip_claiming = |count| claiming(encoded_batch(1, 10, Compression::Gzip), count);
    for i in 0..3i64 {
        assert_eq!(client.produce_raw("big", 0, gzip_claiming(1 << 30).freeze(), 1).unwrap(), i << 30);
    }
    let mut two = gzip_claiming(i32::MAX);
    two.extend_from_slice(&gzip_claiming(i32::MAX));
    let err = client.produce_raw("big", 0, two.freeze(), 1).unwrap_err().to_string();
    assert!(err.contains("InvalidRecord"), "a payload past 2^31 offsets: {err}");
    let base = client.produce_raw("big", 0, batch(5, 10).freeze(), 1).unwrap();
    assert_eq!(base, 3 << 30);
    assert!(segment_files(&broker, "big-0") >= 2, "the segment rolled before its relative offsets overflowed");
    let dir = broker.dir.clone();
    broker.stop();
    let broker = TestBroker::start(&dir, &[]);
    let mut client = broker.client();
    assert_eq!(client.list_offset("big", 0, -1).unwrap(), (3 << 30) + 5);
    assert_eq!(
        client.fetch_all("big", 0, 3 << 30).unwrap().len(),
        5,
        "reads after the rolled segments work after restart"
    );
    broker.stop();
}

/// A Fetch v12 naming partition 0 of `topic` `times` times.
fn repeated_fetch(topic: &str, times: usize, max_bytes: i32, partition_max_bytes: i32) -> FetchRequest {
    let mut p = fetch_request::FetchPartition::default();
    p.partition = 0;
    p.fetch_offset = 0;
    p.partition_max_bytes = partition_max_bytes;
    p.current_leader_epoch = -1;
    p.log_start_offset = -1;
    let mut t = fetch_request::FetchTopic::default();
    t.topic = TopicName(StrBytes::from_string(topic.to_string()));
    t.partitions = vec![p; times];
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = 0;
    req.min_bytes = 1;
    req.max_bytes = max_bytes;
    req.session_epoch = -1;
    req.topics = vec![t];
    req
}

/// Sends a Fetch v12 on its own connection; reads the response only if its
/// frame is at most `limit_bytes` (a runaway response fails the test rather
/// than the test process). Returns (frame bytes, response).
fn bounded_fetch(addr: &str, request: &FetchRequest, limit_bytes: usize) -> (usize, FetchResponse) {
    let version = 12;
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::Fetch as i16;
    header.request_api_version = version;
    header.correlation_id = 42;
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header.encode(&mut buf, ApiKey::Fetch.request_header_version(version)).unwrap();
    request.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    let mut stream = raw(addr);
    stream.write_all(&buf).unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let frame_bytes = i32::from_be_bytes(len);
    assert!(frame_bytes > 0, "a negative or empty response length: {frame_bytes}");
    let frame_bytes = frame_bytes as usize;
    assert!(frame_bytes <= limit_bytes, "response of {frame_bytes} bytes, limit {limit_bytes}");
    let mut body = vec![0u8; frame_bytes];
    stream.read_exact(&mut body).unwrap();
    let mut body = Bytes::from(body);
    let header = ResponseHeader::decode(&mut body, ApiKey::Fetch.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, 42);
    let response = FetchResponse::decode(&mut body, version).unwrap();
    assert!(!body.has_remaining(), "the response parses to its last byte");
    (frame_bytes, response)
}

/// The record bytes of each partition answered, in order.
fn answered(response: &FetchResponse) -> Vec<(i32, i16, Bytes)> {
    let partitions = response.responses.iter().flat_map(|t| t.partitions.iter());
    partitions.map(|p| (p.partition_index, p.error_code, p.records.clone().unwrap_or_default())).collect()
}

fn batches_in(mut records: Bytes) -> usize {
    let mut n = 0;
    while records.len() >= 61 {
        RecordBatchDecoder::decode(&mut records).unwrap();
        n += 1;
    }
    n
}

#[test]
fn fetch_naming_a_partition_many_times_answers_it_once() {
    let (broker, mut client) = setup("fetch-repeats");
    for _ in 0..8 {
        client.produce_raw("good", 0, batch(100, 600).freeze(), 1).unwrap(); // ~63 KB each
    }
    // max_bytes 0: Kafka's "one batch" (KIP-74), once per response.
    let (frame_bytes, response) = bounded_fetch(&broker.addr, &repeated_fetch("good", 8, 0, i32::MAX), 4 << 20);
    let parts = answered(&response);
    assert_eq!(parts.len(), 1, "one partition named 8 times is answered once");
    assert_eq!(parts[0].1, 0);
    assert_eq!(batches_in(parts[0].2.clone()), 1, "max_bytes 0 gets exactly one batch");
    assert!(frame_bytes < 100_000, "{frame_bytes} bytes for one ~63 KB batch");

    // A real budget: all eight batches, once.
    let (_, response) = bounded_fetch(&broker.addr, &repeated_fetch("good", 8, 1 << 20, 1 << 20), 4 << 20);
    let parts = answered(&response);
    assert_eq!(parts.len(), 1);
    assert_eq!(batches_in(parts[0].2.clone()), 8, "each stored batch once");

    // Two topics interleaved keep their order; an unknown one is answered once too.
    let mut mixed = repeated_fetch("good", 2, 1 << 20, 1 << 20);
    let mut unknown = mixed.topics[0].clone();
    unknown.topic = TopicName(StrBytes::from_static_str("no-such-topic"));
    mixed.topics.push(unknown.clone());
    mixed.topics.push(mixed.topics[0].clone());
    mixed.topics.push(unknown);
    let (_, response) = bounded_fetch(&broker.addr, &mixed, 4 << 20);
    let names: Vec<_> = response.responses.iter().map(|t| t.topic.0.to_string()).collect();
    assert_eq!(names, ["good", "no-such-topic"], "each topic-partition once, at its first mention");
    assert_eq!(answered(&response)[1].1, 3, "UNKNOWN_TOPIC_OR_PARTITION");

    healthy_round_trip(&mut client, 8 * 100);
    broker.stop();
}

#[test]
fn fetch_max_bytes_is_capped_by_the_broker() {
    let (broker, mut client) = setup("fetch-cap");
    let batch_bytes = batch(1000, 1000).len();
    let batches = FETCH_MAX_BYTES / batch_bytes + 4;
    for _ in 0..batches {
        client.produce_raw("good", 0, batch(1000, 1000).freeze(), 1).unwrap(); // ~1 MB each
    }
    let request = repeated_fetch("good", 8, i32::MAX, i32::MAX);
    let (frame_bytes, response) = bounded_fetch(&broker.addr, &request, FETCH_MAX_BYTES + (1 << 20));
    let parts = answered(&response);
    assert_eq!(parts.len(), 1);
    let record_bytes = parts[0].2.len();
    assert!(record_bytes <= FETCH_MAX_BYTES, "{record_bytes} record bytes, cap {FETCH_MAX_BYTES}");
    assert!(record_bytes > FETCH_MAX_BYTES - 2 * batch_bytes, "the cap, not less: {record_bytes}");
    assert!(frame_bytes < record_bytes + 1024);
    healthy_round_trip(&mut client, batches * 1000);
    broker.stop();
}
