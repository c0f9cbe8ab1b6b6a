//! Hostile or broken clients cannot exhaust the broker: frame headers that
//! announce 50 MiB and then go silent (or close) hold almost no memory,
//! half-sent frames and idle connections are closed by their timeouts, the
//! shard's request budget stops reading instead of allocating, and a normal
//! client keeps producing and fetching throughout. Memory and descriptors are
//! measured on the broker process (/proc/<pid>/status and /proc/<pid>/fd).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{temp_dir, TestBroker};
use kafka_protocol::records::Compression;
use spate::client::Client;

const ANNOUNCED_BYTES: i32 = 50 << 20;
const MIB: u64 = 1 << 20;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// What the open descriptors are, for failure messages.
fn fd_targets(pid: u32) -> Vec<String> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok()).map(|t| t.display().to_string()).collect()
}

/// Waits until `done` holds, for at most `limit`; returns whether it did.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// A connection that announces a 50 MiB frame, sends `body_bytes` of it and
/// goes silent.
fn announce_and_stall(addr: &str, body_bytes: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(&ANNOUNCED_BYTES.to_be_bytes()).unwrap();
    stream.write_all(&vec![0u8; body_bytes]).unwrap();
    stream
}

/// A normal client's round trip: produce one batch, read everything back.
fn round_trip(client: &mut Client, topic: &str, expected_before: usize) -> usize {
    let records: Vec<_> = (0..10).map(|i| (None, Bytes::from(format!("record {i}")))).collect();
    client.produce(topic, 0, &records, -1, Compression::None).unwrap();
    let all = client.fetch_all(topic, 0, 0).unwrap();
    assert_eq!(all.len(), expected_before + records.len(), "every acknowledged record is readable");
    all.len()
}

/// True if the broker closes `stream` (EOF or reset) within `within`.
fn closed_by_broker(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

#[test]
fn silent_50_mib_headers_hold_almost_no_memory() {
    let broker = TestBroker::start(&temp_dir("hostile-rss"), &[]);
    let mut client = broker.client();
    client.create_topic("good", 1, &[]).unwrap();
    let mut stored = round_trip(&mut client, "good", 0);
    let rss_before = rss_bytes(broker.pid());

    let mut hostile: Vec<TcpStream> = (0..60).map(|i| announce_and_stall(&broker.addr, i % 3 * 100)).collect();
    // Some give up at once; the broker must not keep anything for them either.
    hostile.truncate(45);
    std::thread::sleep(Duration::from_millis(500));
    stored = round_trip(&mut client, "good", stored);

    let grown = rss_bytes(broker.pid()).saturating_sub(rss_before);
    let announced = 60 * ANNOUNCED_BYTES as u64;
    eprintln!("RSS grew by {} KiB for {} MiB announced", grown >> 10, announced / MIB);
    assert!(grown < 100 * MIB, "60 headers announcing {} MiB grew the broker by {} MiB", announced / MIB, grown / MIB);
    assert!(hostile.iter_mut().all(|s| !closed_by_broker(s, Duration::from_millis(10))), "still waiting for them");
    round_trip(&mut client, "good", stored);
    broker.stop();
}

#[test]
fn half_sent_frames_are_closed_after_the_read_timeout() {
    let broker = TestBroker::start(&temp_dir("hostile-timeout"), &["socket_request_read_timeout_ms=1000"]);
    let mut client = broker.client();
    client.create_topic("good", 1, &[]).unwrap();
    let stored = round_trip(&mut client, "good", 0);
    let fds_before = open_fds(broker.pid());

    let mut hostile: Vec<TcpStream> = (0..50).map(|i| announce_and_stall(&broker.addr, i % 2 * 1000)).collect();
    // Half a header is a half-sent frame too.
    hostile.extend((0..10).map(|_| {
        let mut stream = TcpStream::connect(&broker.addr).unwrap();
        stream.write_all(&[0, 0]).unwrap();
        stream
    }));
    assert!(eventually(Duration::from_secs(5), || open_fds(broker.pid()) >= fds_before + 60), "connections accepted");
    let started = Instant::now();
    for stream in &mut hostile {
        assert!(closed_by_broker(stream, Duration::from_secs(10)), "a half-sent frame is closed by the broker");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "closed after about socket_request_read_timeout_ms");
    assert!(
        eventually(Duration::from_secs(5), || open_fds(broker.pid()) <= fds_before),
        "descriptors back to {fds_before}, now {}",
        open_fds(broker.pid())
    );
    assert!(broker.log().contains("socket_request_read_timeout_ms"), "the broker says why");
    round_trip(&mut client, "good", stored);
    broker.stop();
}

#[test]
fn idle_connections_are_closed_and_busy_ones_kept() {
    let broker = TestBroker::start(&temp_dir("hostile-idle"), &["connections_max_idle_ms=1000"]);
    let mut busy = broker.client();
    busy.create_topic("good", 1, &[]).unwrap();
    let mut stored = round_trip(&mut busy, "good", 0);
    let fds_before = open_fds(broker.pid()); // with the busy connection and the partition's files
    let mut idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(&broker.addr).unwrap()).collect();
    // The idle ones are closed and their descriptors freed (`closed_by_broker`
    // answers at once for a closed stream).
    let settled = |idle: &mut Vec<TcpStream>| {
        idle.iter_mut().all(|s| closed_by_broker(s, Duration::from_millis(1))) && open_fds(broker.pid()) <= fds_before
    };
    // A client that talks more often than the idle bound is never cut off,
    // however long the broker takes to close the others: the busy client
    // keeps talking while we wait for them.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500)
        || (started.elapsed() < Duration::from_secs(10) && !settled(&mut idle))
    {
        stored = round_trip(&mut busy, "good", stored);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        settled(&mut idle),
        "idle connections closed and only the busy one left: {fds_before} descriptors expected, now {:?}",
        fd_targets(broker.pid())
    );
    assert!(broker.log().contains("connections_max_idle_ms"), "the broker says why");
    round_trip(&mut busy, "good", stored);
    broker.stop();
}

#[test]
fn request_budget_stops_reading_instead_of_allocating() {
    let budget = "queued_max_request_bytes=8388608"; // 8 MiB per shard
    let broker = TestBroker::start(&temp_dir("hostile-budget"), &[budget, "socket_request_read_timeout_ms=3000"]);
    let mut client = broker.client();
    client.create_topic("good", 1, &[]).unwrap();
    let stored = round_trip(&mut client, "good", 0);
    let rss_before = rss_bytes(broker.pid());

    // 40 senders each push 4 MiB of a 50 MiB frame: 160 MiB offered.
    let addr = broker.addr.clone();
    let senders: Vec<_> = (0..40)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(&addr).unwrap();
                stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
                let _ = stream.write_all(&ANNOUNCED_BYTES.to_be_bytes());
                let _ = stream.write_all(&vec![1u8; 4 << 20]);
                stream // kept open: silent from now on
            })
        })
        .collect();
    let streams: Vec<TcpStream> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    let grown = rss_bytes(broker.pid()).saturating_sub(rss_before);
    eprintln!("RSS grew by {} KiB for 160 MiB offered", grown >> 10);
    assert!(grown < 64 * MIB, "160 MiB offered against a 2 × 8 MiB budget grew the broker by {} MiB", grown / MIB);
    // Once the stalled frames time out, their budget returns and reading resumes.
    round_trip(&mut client, "good", stored);
    drop(streams);
    broker.stop();
}

/// An ApiVersions v0 request frame (v1 request header, client id "t").
fn api_versions_frame(correlation_id: i32) -> Vec<u8> {
    let mut frame = Vec::with_capacity(15);
    frame.extend_from_slice(&11i32.to_be_bytes());
    frame.extend_from_slice(&18i16.to_be_bytes());
    frame.extend_from_slice(&0i16.to_be_bytes());
    frame.extend_from_slice(&correlation_id.to_be_bytes());
    frame.extend_from_slice(&1i16.to_be_bytes());
    frame.push(b't');
    frame
}

/// The broker stops reading a client that never reads its answers, and when
/// that client resets the connection, its descriptor is closed promptly:
/// the reader, parked on the full request queue or on the unsent-response
/// budget, ends with the writer whose blocked write failed.
#[test]
fn a_client_that_never_reads_stops_being_read_and_leaks_nothing() {
    let broker = TestBroker::start(&temp_dir("hostile-no-read"), &["max_unsent_response_bytes=65536"]);
    let mut client = broker.client();
    client.create_topic("good", 1, &[]).unwrap();
    let stored = round_trip(&mut client, "good", 0);
    let fds_before = open_fds(broker.pid());

    // 2,000,000 pipelined requests (30 MB) whose answers are never read: far more
    // response bytes than the socket buffers hold.
    let requests: Vec<u8> = (0..2_000_000).flat_map(api_versions_frame).collect();
    let mut greedy = TcpStream::connect(&broker.addr).unwrap();
    greedy.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let sent = greedy.write_all(&requests);
    assert!(sent.is_err(), "the broker stopped reading a client that does not read its answers");
    round_trip(&mut client, "good", stored);
    // Closing with answers unread resets the connection: the broker must let
    // go of it even though its reader was waiting for the writer.
    drop(greedy);
    assert!(
        eventually(Duration::from_secs(5), || open_fds(broker.pid()) <= fds_before),
        "descriptors back to {fds_before}, now {:?}",
        fd_targets(broker.pid())
    );
    broker.stop();
}

/// Descriptors the broker holds on segment files of the partition directory
/// `dir_name` (also once renamed for deletion, or unlinked: "... (deleted)").
fn segment_fds(pid: u32, dir_name: &str) -> usize {
    let needle = format!("/{dir_name}");
    fd_targets(pid).iter().filter(|t| t.contains(&needle) && t.contains(".log")).count()
}

/// However many segments a partition has, the broker keeps at most
/// `max_open_segment_files_per_shard` sealed ones open (plus the active one),
/// while producing, reading every segment, after a restart, and none once the
/// topic is deleted.
#[test]
fn many_segments_hold_a_bounded_number_of_descriptors() {
    const MAX_OPEN: usize = 8;
    const BATCHES: usize = 400;
    let dir = temp_dir("hostile-segments");
    let settings = ["segment_bytes=16384", "max_open_segment_files_per_shard=8"];
    let broker = TestBroker::start(&dir, &settings);
    let mut client = broker.client();
    client.create_topic("many", 1, &[]).unwrap();
    // ~6 KiB batches: a new 16 KiB segment every two or three batches.
    let value = Bytes::from(vec![b'v'; 600]);
    for i in 0..BATCHES {
        let records: Vec<_> = (0..10).map(|j| (Some(Bytes::from(format!("{i}-{j}"))), value.clone())).collect();
        assert_eq!(client.produce("many", 0, &records, -1, Compression::None).unwrap(), (i * 10) as i64);
    }
    let segments = std::fs::read_dir(dir.join("data/many-0"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".log"))
        .count();
    assert!(segments > 100, "the test needs many segments, got {segments}");
    // Sealed files the next sync has not covered yet may be open beside the set.
    let bound = MAX_OPEN + 1 + 2;
    let check = |broker: &TestBroker, when: &str| {
        let open = segment_fds(broker.pid(), "many-0");
        assert!(open <= bound, "{when}: {open} segment files open for {segments} segments, bound {bound}");
    };
    check(&broker, "after producing");

    let read_all = |client: &mut Client| {
        let records = client.fetch_all("many", 0, 0).unwrap();
        assert_eq!(records.len(), BATCHES * 10, "every record is read back");
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record.offset, i as i64);
            assert_eq!(record.key.as_deref(), Some(format!("{}-{}", i / 10, i % 10).as_bytes()));
        }
    };
    read_all(&mut client);
    check(&broker, "after reading every segment");
    // Records deleted from the front: the removed segments' descriptors are
    // closed (an open descriptor would keep their space allocated).
    let start = client.delete_records("many", 0, (BATCHES * 10 / 2) as i64).unwrap();
    assert_eq!(start, (BATCHES * 10 / 2) as i64);
    assert!(
        eventually(Duration::from_secs(10), || !fd_targets(broker.pid()).iter().any(|t| t.ends_with("(deleted)"))),
        "no descriptor of a removed segment stays open: {:?}",
        fd_targets(broker.pid())
    );
    broker.stop();

    let broker = TestBroker::start(&dir, &settings);
    check(&broker, "after a restart");
    let mut client = broker.client();
    let records = client.fetch_all("many", 0, start).unwrap();
    assert_eq!(records.len(), BATCHES * 10 - start as usize, "the records after the log start are all there");
    check(&broker, "after reading every segment again");

    client.delete_topics(&["many"]).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || segment_fds(broker.pid(), "many-0") == 0),
        "a deleted topic's files are all closed (their space freed): {:?}",
        fd_targets(broker.pid())
    );
    broker.stop();
}

/// Reads one Produce v9 response frame from `stream`: (correlation id, response).
fn read_produce_response(stream: &mut TcpStream) -> (i32, kafka_protocol::messages::ProduceResponse) {
    use kafka_protocol::messages::{ApiKey, ProduceResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    let mut body = Bytes::from(body);
    let header = ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(9)).unwrap();
    (header.correlation_id, ProduceResponse::decode(&mut body, 9).unwrap())
}

/// Pipelined produce frames sent in pieces of every size (one byte, odd
/// sizes, more than the frame buffer's first step, across frame edges),
/// with pauses, are read whole and in order: each is answered in turn and
/// every byte is stored as sent.
#[test]
fn frames_arriving_in_odd_pieces_are_read_whole_and_in_order() {
    use kafka_protocol::messages::ApiKey;
    use kafka_protocol::records::{RecordBatchEncoder, RecordEncodeOptions};

    let dir = temp_dir("hostile-pieces");
    let broker = TestBroker::start(&dir, &[]);
    let mut client = broker.client();
    client.create_topic("pieces", 1, &[]).unwrap();
    // Values larger than the 16 KiB first step of the frame buffer.
    let values: Vec<Bytes> =
        (0..3u8).map(|i| Bytes::from((0..100_000u32).map(|b| (b % 251) as u8 ^ i).collect::<Vec<u8>>())).collect();
    let mut wire = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let record = spate::client::new_record(0, 1, None, value.clone());
        let mut batch = bytes::BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        RecordBatchEncoder::encode(&mut batch, [record].iter(), &options).unwrap();
        let request = spate::client::produce_request("pieces", 0, batch.freeze(), 1);
        wire.extend_from_slice(&spate::client::request_frame(ApiKey::Produce, 9, i as i32, &request).unwrap());
    }
    let mut stream = TcpStream::connect(&broker.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let pieces = [1usize, 3, 1, 7, 20_000, 1, 4093, 65_537, 2, 17_000];
    let mut sent = 0;
    for piece in pieces.iter().cycle() {
        let end = (sent + piece).min(wire.len());
        stream.write_all(&wire[sent..end]).unwrap();
        sent = end;
        if sent == wire.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for expected in 0..values.len() as i32 {
        let (correlation_id, response) = read_produce_response(&mut stream);
        assert_eq!(correlation_id, expected, "answered in the order sent");
        let partition = &response.responses[0].partition_responses[0];
        assert_eq!((partition.error_code, partition.base_offset), (0, expected as i64));
    }
    let stored = client.fetch_all("pieces", 0, 0).unwrap();
    let stored: Vec<Bytes> = stored.into_iter().map(|r| r.value.unwrap()).collect();
    assert_eq!(stored, values, "every byte stored as sent");

    // A client reset halfway through a frame's body (the part received
    // straight into the frame) stores nothing of it and disturbs nothing.
    let mut rude = TcpStream::connect(&broker.addr).unwrap();
    rude.write_all(&wire[..wire.len() / 3 / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    common::reset_connection(rude);
    let stored = client.fetch_all("pieces", 0, 0).unwrap();
    let stored: Vec<Bytes> = stored.into_iter().map(|r| r.value.unwrap()).collect();
    assert_eq!(stored, values, "every acknowledged record at its offset, nothing added");
    let next = client.produce("pieces", 0, &[(None, values[0].clone())], 1, Compression::None).unwrap();
    assert_eq!(next, values.len() as i64, "the partition takes the next record at the next offset");
    broker.stop();
}
