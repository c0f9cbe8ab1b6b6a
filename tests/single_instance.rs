//! A broker's life as a process: one broker per data directory and per
//! port (a second `spate serve` on either exits at once with a message
//! saying who holds it, and the first keeps serving), and a SIGTERM that
//! lets in-flight requests finish before it exits.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{temp_dir, TestBroker};
use kafka_protocol::records::Compression;

/// Runs a second `spate serve` to its exit, which must come quickly.
fn second_broker(listen: &str, data_dir: &Path, extra: &[&str]) -> Output {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .args(["--shards", "2", "--set", "pin_shards=false", "--set", "admin_listen=127.0.0.1:0"])
        .args(extra.iter().flat_map(|set| ["--set", set]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spate");
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("the second broker kept running; log:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The first broker still answers: produce a batch and read it back.
fn still_serves(broker: &TestBroker, topic: &str) {
    let mut client = broker.client();
    client.create_topic(topic, 1, &[]).unwrap();
    let records = [(None, Bytes::from_static(b"still here"))];
    let offset = client.produce(topic, 0, &records, -1, Compression::None).unwrap();
    let read = client.fetch_all(topic, 0, offset).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].value.as_deref(), Some(&b"still here"[..]));
}

#[test]
fn second_broker_on_the_same_data_dir_exits_naming_the_holder() {
    let dir = temp_dir("same-dir");
    let mut first = TestBroker::start(&dir, &[]);
    let other_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let output = second_broker(&format!("127.0.0.1:{other_port}"), &dir.join("data"), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the second broker must fail; stderr:\n{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.pid())), "the message names the holder's pid:\n{stderr}");
    assert!(first.is_running());
    still_serves(&first, "after-dir-clash");
    first.stop();
}

#[test]
fn second_broker_on_the_same_port_exits_with_a_clear_message() {
    let mut first = TestBroker::start(&temp_dir("same-port-1"), &[]);
    let other_dir = temp_dir("same-port-2");
    let output = second_broker(&first.addr, &other_dir.join("data"), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the second broker must fail; stderr:\n{stderr}");
    assert!(stderr.contains("already served by another process"), "a clear message:\n{stderr}");
    assert!(first.is_running());
    still_serves(&first, "after-port-clash");
    first.stop();
}

#[test]
fn meta_properties_pins_the_node_id() {
    let dir = temp_dir("meta");
    let first = TestBroker::start(&dir, &[]);
    let meta = std::fs::read_to_string(dir.join("data/meta.properties")).unwrap();
    assert!(meta.contains("version=1") && meta.contains("node.id=0") && meta.contains("cluster.id="), "{meta}");
    first.stop();
    let restarted = TestBroker::start(&dir, &[]);
    let again = std::fs::read_to_string(dir.join("data/meta.properties")).unwrap();
    assert_eq!(meta, again, "a restart keeps the cluster id");
    restarted.stop();
    let free_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let output = second_broker(&format!("127.0.0.1:{free_port}"), &dir.join("data"), &["node_id=5"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("belongs to node 0"), "{stderr}");
}

#[test]
fn sigterm_answers_requests_in_flight() {
    let broker = TestBroker::start(&temp_dir("drain"), &[]);
    let mut client = broker.client();
    client.create_topic("quiet", 1, &[]).unwrap();
    // A long-polling fetch on an empty partition is in flight when the stop comes.
    let poller = std::thread::spawn(move || {
        let started = Instant::now();
        let answer = client.fetch("quiet", 0, 0, 3000);
        (answer.map(|(records, _)| records.len()), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    broker.stop(); // SIGTERM; asserts a clean exit
    let (answer, waited) = poller.join().unwrap();
    assert_eq!(answer.expect("the in-flight fetch is answered, not cut off"), 0);
    assert!(waited >= Duration::from_millis(2500), "answered after its wait, not early: {waited:?}");
}
