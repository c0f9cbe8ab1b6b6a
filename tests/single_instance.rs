//! A broker's life as a process: one broker per data directory and per
//! port (a second `spate serve` on either exits at once with a message
//! saying who holds it, and the first keeps serving), and a SIGTERM that
//! lets in-flight requests finish before it exits.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{admin_listen_free, free_port, temp_dir, TestBroker};
use kafka_protocol::records::Compression;

/// Runs a second `spate serve` to its exit, which must come quickly.
fn second_broker(listen: &str, data_dir: &Path, extra: &[&str]) -> Output {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .args(["--shards", "2", "--set", "pin_shards=false", "--set", &admin_listen_free()])
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
    let other_port = free_port();
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

/// A listener on loopback `port` bound with SO_REUSEPORT, as another
/// broker's shards would bind theirs.
fn reuseport_listener(port: u16) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket calls on a descriptor owned from its creation,
    // with a sockaddr that lives across the call reading it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let socket = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let opt_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, (&one as *const libc::c_int).cast(), opt_len);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = port.to_be();
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len) != 0 || libc::listen(fd, 8) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(socket)
    }
}

/// The admin endpoint and the controller listener are one socket each,
/// bound without SO_REUSEPORT: another process's SO_REUSEPORT listener
/// (a second broker's shards starting on that port) cannot join them and
/// take a share of their connections; its bind fails.
#[test]
fn admin_and_controller_ports_cannot_be_joined_by_another_listener() {
    // The probe can tell: two SO_REUSEPORT listeners do share a port.
    let port = free_port();
    let first = reuseport_listener(port).unwrap();
    reuseport_listener(port).expect("a second SO_REUSEPORT listener joins the first");
    drop(first);

    let (admin, controller) = (free_port(), free_port());
    let broker = TestBroker::start(
        &temp_dir("exclusive-ports"),
        &[&format!("admin_listen=127.0.0.1:{admin}"), &format!("controller_listen=127.0.0.1:{controller}")],
    );
    for (what, port) in [("admin", admin), ("controller", controller)] {
        let joined = reuseport_listener(port);
        let in_use = joined.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse);
        assert!(in_use, "a SO_REUSEPORT listener joined the {what} port {port}: {joined:?}");
    }
    still_serves(&broker, "after-join-attempts");
    broker.stop();
}

/// A broker stopped and started again at once, on the same ports, comes up
/// every time: its admin endpoint waits out the last process's listener,
/// which the kernel tears down a moment after that process has exited.
#[test]
fn a_broker_restarted_at_once_gets_its_admin_port_back() {
    use std::io::{Read, Write};
    let dir = temp_dir("restart-admin");
    let (port, admin) = (free_port(), free_port());
    let admin_listen = format!("admin_listen=127.0.0.1:{admin}");
    for round in 0..10 {
        let broker = TestBroker::start_on(&dir, port, &[&admin_listen]);
        let mut http = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
        http.write_all(b"GET /v1/health HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        http.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "round {round}: {answer}");
        broker.stop();
    }
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
    let port = free_port();
    let output = second_broker(&format!("127.0.0.1:{port}"), &dir.join("data"), &["node_id=5"]);
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
