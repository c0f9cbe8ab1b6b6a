//! The rpk-style commands against a real broker, and `serve` configured by a
//! TOML file and environment variables.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{temp_dir, TestBroker};

fn spate(broker: &TestBroker, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(args)
        .env("SPATE_BROKERS", &broker.addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "spate {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn topic_produce_consume_commands() {
    let broker = TestBroker::start(&temp_dir("cli"), &[]);
    assert!(spate(&broker, &["topic", "create", "events", "-p", "3", "-c", "retention.ms=60000"], None)
        .contains("3 partitions"));
    assert!(spate(&broker, &["topic", "list"], None).contains("events"));

    spate(&broker, &["produce", "events", "-p", "2", "-k", ":"], Some("a:one\nb:two\nc:three\n"));
    let out = spate(&broker, &["consume", "events", "-p", "2"], None);
    assert_eq!(out, "0\ta\tone\n1\tb\ttwo\n2\tc\tthree\n");
    assert_eq!(spate(&broker, &["consume", "events", "-p", "2", "-o", "1", "-n", "1"], None), "1\tb\ttwo\n");
    assert_eq!(spate(&broker, &["consume", "events", "-p", "2", "--timestamp", "0", "-n", "1"], None), "0\ta\tone\n");

    let described = spate(&broker, &["topic", "describe", "events"], None);
    assert!(described.contains("3 partitions"), "{described}");
    assert!(
        described.contains("retention.ms") && described.contains("60000") && described.contains("(topic)"),
        "{described}"
    );
    spate(
        &broker,
        &[
            "topic",
            "alter-config",
            "events",
            "--set",
            "retention.ms=120000",
            "--set",
            "message.timestamp.type=LogAppendTime",
        ],
        None,
    );
    let described = spate(&broker, &["topic", "describe", "events"], None);
    assert!(described.contains("120000") && described.contains("LogAppendTime"), "{described}");
    spate(&broker, &["topic", "alter-config", "events", "--delete", "retention.ms"], None);
    assert!(
        spate(&broker, &["topic", "describe", "events"], None).contains("604800000"),
        "deleted override reverts to the default"
    );

    spate(&broker, &["topic", "delete", "events"], None);
    assert!(!spate(&broker, &["topic", "list"], None).contains("events"));
    assert!(!broker.dir.join("data/events-2").exists(), "a deleted topic's files are removed");
    broker.stop();
}

#[test]
fn serve_reads_config_file_and_environment() {
    let dir = temp_dir("config");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let file = dir.join("spate.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\ndefault_partitions = 2\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["serve", "--config"])
        .arg(&file)
        .env("SPATE_AUTO_CREATE_TOPICS", "true")
        .env("SPATE_DEFAULT_PARTITIONS", "5")
        .env("SPATE_PIN_SHARDS", "false")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !spate::data_dir::answers(&addr) {
        assert!(std::time::Instant::now() < deadline, "broker did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut client = spate::client::Client::connect(&addr).unwrap();
    // A produce to an auto-created topic (created by Metadata) lands in the data_dir of the file.
    let mut req = kafka_protocol::messages::MetadataRequest::default();
    let mut topic = kafka_protocol::messages::metadata_request::MetadataRequestTopic::default();
    topic.name = Some(kafka_protocol::messages::TopicName(spate::client::str_bytes("auto")));
    req.topics = Some(vec![topic]);
    req.allow_auto_topic_creation = true;
    let resp: kafka_protocol::messages::MetadataResponse =
        client.call(kafka_protocol::messages::ApiKey::Metadata, 12, &req).unwrap();
    assert_eq!(resp.topics[0].partitions.len(), 5, "the environment overrides the file");
    assert!(dir.join("data/auto-4").exists());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success(), "SIGINT shuts down cleanly");
}

/// Describing a topic that does not exist (a typo) says so and creates
/// nothing, although the broker auto-creates topics for producers.
#[test]
fn describing_a_missing_topic_creates_nothing() {
    let broker = TestBroker::start(&temp_dir("cli-describe-typo"), &["auto_create_topics=true"]);
    spate(&broker, &["topic", "create", "orders"], None);
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["topic", "describe", "ordres"])
        .env("SPATE_BROKERS", &broker.addr)
        .output()
        .unwrap();
    assert!(!out.status.success(), "describing a missing topic fails");
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("ordres"), "the error names the topic: {error}");
    let listed = spate(&broker, &["topic", "list"], None);
    assert!(listed.contains("orders") && !listed.contains("ordres"), "nothing was created: {listed}");
    broker.stop();
}
