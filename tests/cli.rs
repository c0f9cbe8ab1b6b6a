//! The rpk-style commands against a real broker, and `serve` configured by a
//! TOML file and environment variables.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

use bytes::Bytes;
use common::{temp_dir, TestBroker};
use kafka_protocol::records::Compression;

/// Runs `spate args` against `addr` with `stdin`; its whole output.
fn run(addr: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(args)
        .env("SPATE_BROKERS", addr)
        // A user error must not turn into a backtrace even when asked for one.
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Runs a command that must fail: exit code 1 and exactly one line on
/// stderr, `error: ...`, which is returned.
fn fails(addr: &str, args: &[&str]) -> String {
    let out = run(addr, args, "");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "spate {args:?} should fail with 1: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line, no backtrace or cause chain: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr.trim_end().to_string()
}

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
    let port = common::free_port();
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
/// nothing, although the broker auto-creates topics for producers; nor does
/// consuming from it.
#[test]
fn describing_a_missing_topic_creates_nothing() {
    let broker = TestBroker::start(&temp_dir("cli-describe-typo"), &["auto_create_topics=true"]);
    spate(&broker, &["topic", "create", "orders"], None);
    assert_eq!(
        fails(&broker.addr, &["topic", "describe", "ordres"]),
        "error: topic ordres does not exist; did you mean orders?"
    );
    assert_eq!(fails(&broker.addr, &["consume", "ordres"]), "error: topic ordres does not exist; did you mean orders?");
    assert_eq!(
        fails(&broker.addr, &["topic", "describe", "zzz"]),
        "error: topic zzz does not exist; `spate topic list` shows the topics there are"
    );
    assert_eq!(
        fails(&broker.addr, &["group", "reset-offsets", "g", "--topic", "ordres", "--to-earliest"]),
        "error: topic ordres does not exist; did you mean orders?"
    );
    let listed = spate(&broker, &["topic", "list"], None);
    assert!(listed.contains("orders") && !listed.contains("ordres") && !listed.contains("zzz"), "{listed}");
    assert!(!broker.dir.join("data/ordres-0").exists(), "nothing was created");
    broker.stop();
}

/// Partitions and offsets outside the topic are named with what there is.
#[test]
fn missing_partitions_and_offsets_are_told_in_words() {
    let broker = TestBroker::start(&temp_dir("cli-words"), &[]);
    spate(&broker, &["topic", "create", "orders", "-p", "8"], None);
    spate(&broker, &["topic", "create", "single", "-p", "1"], None);
    let lines: String = (0..42).map(|i| format!("line {i}\n")).collect();
    spate(&broker, &["produce", "orders", "-p", "0"], Some(&lines));
    let addr = broker.addr.as_str();
    let no_partition = "error: partition 8 does not exist: orders has partitions 0–7";
    assert_eq!(fails(addr, &["consume", "orders", "-p", "8"]), no_partition);
    assert_eq!(fails(addr, &["produce", "orders", "-p", "8"]), no_partition);
    assert_eq!(
        fails(addr, &["consume", "single", "-p", "1"]),
        "error: partition 1 does not exist: single has only partition 0"
    );
    assert_eq!(
        fails(addr, &["consume", "orders", "-o", "100"]),
        "error: offset 100 is out of range: orders/0 holds 0–41"
    );
    assert_eq!(
        fails(addr, &["consume", "orders", "-p", "3", "-o", "5"]),
        "error: offset 5 is out of range: orders/3 holds no records; the next one will be 0"
    );
    assert_eq!(
        fails(addr, &["consume", "orders", "-o", "soon"]),
        "error: --offset wants a number, \"beginning\" or \"end\", got \"soon\""
    );
    assert_eq!(
        fails(addr, &["consume", "orders", "-f", "%x"]),
        "error: unknown directive %x in -f: use %t %p %o %k %s %K %S %T %h or %%"
    );
    // The end itself is a valid start: nothing to print yet.
    assert_eq!(spate(&broker, &["consume", "orders", "-o", "42"], None), "");
    assert_eq!(spate(&broker, &["consume", "orders", "-o", "41"], None), "41\t\tline 41\n");
    broker.stop();
}

/// Something that is not a Kafka broker on the port: one sentence saying so.
#[test]
fn ports_that_do_not_speak_kafka() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let hint = "set the broker's address with --brokers or SPATE_BROKERS";
    assert_eq!(
        fails(&closed, &["topic", "list"]),
        format!("error: cannot connect to {closed} (connection refused): is a Kafka broker listening there? {hint}")
    );
    let ssh = fake_server(Some(b"SSH-2.0-OpenSSH_9.6\r\n"), None);
    assert_eq!(
        fails(&ssh, &["consume", "orders"]),
        format!("error: {ssh} does not speak the Kafka protocol (it answered \"SSH-2.0-OpenSSH_9.6\"): is it a Kafka port? {hint}")
    );
    let http = fake_server(None, Some(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"));
    assert_eq!(
        fails(&http, &["topic", "describe", "orders"]),
        format!("error: {http} does not speak the Kafka protocol (it answered \"HTTP/1.1 400 Bad Request\"): is it a Kafka port? {hint}")
    );
    let hang_up = fake_server(None, Some(b""));
    assert_eq!(
        fails(&hang_up, &["group", "list"]),
        format!("error: {hang_up} does not speak the Kafka protocol (it closed the connection without answering): is it a Kafka port? {hint}")
    );
}

/// A server on a loopback port that sends `greeting` on accepting, and
/// `reply` once it has read a request (an empty reply: it hangs up).
fn fake_server(greeting: Option<&'static [u8]>, reply: Option<&'static [u8]>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            if let Some(greeting) = greeting {
                let _ = conn.write_all(greeting);
            }
            let mut buf = [0u8; 1024];
            if let Some(reply) = reply {
                let _ = conn.read(&mut buf);
                if reply.is_empty() {
                    continue; // dropped: closed without a word
                }
                let _ = conn.write_all(reply);
            }
            // Hold the connection until the client goes.
            while conn.read(&mut buf).is_ok_and(|n| n > 0) {}
        }
    });
    addr
}

/// `spate consume | head -1`: the reader goes away; spate ends quietly.
#[test]
fn a_closed_pipe_ends_quietly() {
    let broker = TestBroker::start(&temp_dir("cli-pipe"), &[]);
    spate(&broker, &["topic", "create", "many", "-p", "1"], None);
    let lines: String = (0..20_000).map(|i| format!("record number {i:08}\n")).collect();
    spate(&broker, &["produce", "many"], Some(&lines));
    let script = format!("set -o pipefail; '{}' consume many | head -1", env!("CARGO_BIN_EXE_spate"));
    let out = Command::new("bash").args(["-c", &script]).env("SPATE_BROKERS", &broker.addr).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\t\trecord number 00000000\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "no Broken pipe noise");
    assert!(out.status.success(), "{:?}", out.status);

    // The same without a shell: read one line, close the pipe, wait.
    let mut child = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["consume", "many"])
        .env("SPATE_BROKERS", &broker.addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert_eq!(first, "0\t\trecord number 00000000\n");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    broker.stop();
}

/// Keys land where Java's default partitioner puts them:
/// toPositive(murmur2(key)) % partitions. The expected partitions come from
/// Kafka's own murmur2 test vectors (`UtilsTest.testMurmur2`): e.g. "21"
/// hashes to -973932308, toPositive 1173551340, % 8 = 4.
#[test]
fn produce_partitions_keys_as_the_java_client() {
    let broker = TestBroker::start(&temp_dir("cli-murmur"), &[]);
    spate(&broker, &["topic", "create", "keyed", "-p", "8"], None);
    let expected = [
        ("21", 4),
        ("foobar", 6),
        ("a-little-bit-long-string", 0),
        ("a-little-bit-longer-string", 3),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", 5),
        ("abc", 3),
    ];
    let input: String = expected.iter().map(|(k, _)| format!("{k}:value-of-{k}\n")).collect();
    spate(&broker, &["produce", "keyed", "-k", ":"], Some(&(input + "no key here\n")));
    let mut found = Vec::new();
    for p in 0..8 {
        let out = spate(&broker, &["consume", "keyed", "-p", &p.to_string(), "-f", "%p %k|%s\\n"], None);
        found.extend(out.lines().map(String::from));
    }
    for (key, partition) in expected {
        assert!(found.contains(&format!("{partition} {key}|value-of-{key}")), "{key} not on {partition}: {found:?}");
    }
    assert!(found.contains(&"0 |no key here".to_string()), "keyless records go to partition 0: {found:?}");
    assert_eq!(found.len(), 7);
    broker.stop();
}

/// Headers and timestamps set by `produce` come back through `consume -f`.
#[test]
fn headers_and_timestamps_round_trip() {
    let broker = TestBroker::start(&temp_dir("cli-headers"), &[]);
    spate(&broker, &["topic", "create", "hdr", "-p", "2"], None);
    let args = ["produce", "hdr", "-p", "1", "-k", ":", "-H", "b=two", "-H", "a=1", "--timestamp", "1700000000123"];
    spate(&broker, &args, Some("k:v\n:empty-key\n"));
    let out = spate(&broker, &["consume", "hdr", "-p", "1", "-f", "%t %p %o [%k] [%s] %K %S %T %h\\n"], None);
    assert_eq!(
        out,
        "hdr 1 0 [k] [v] 1 1 1700000000123 a=1,b=two\nhdr 1 1 [] [empty-key] 0 9 1700000000123 a=1,b=two\n"
    );
    // Keyless: %K is -1 (null), as kcat prints it.
    spate(&broker, &["produce", "hdr", "-p", "0"], Some("plain\n"));
    assert_eq!(spate(&broker, &["consume", "hdr", "-p", "0", "-f", "%K %S %h|\\t%s\\n"], None), "-1 5 |\tplain\n");
    broker.stop();
}

/// `consume --timestamp T` starts at the first record whose timestamp is
/// at least T, inside compressed batches of several records too.
#[test]
fn consume_from_a_timestamp_is_exact_inside_compressed_batches() {
    let broker = TestBroker::start(&temp_dir("cli-timestamp"), &[]);
    for (name, codec) in [
        ("none", Compression::None),
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ] {
        let topic = format!("ts-{name}");
        spate(&broker, &["topic", "create", &topic, "-p", "1"], None);
        let mut client = broker.client();
        // Three batches of five records, timestamps 1000, 1010, ... 1140.
        for b in 0..3i64 {
            let records: Vec<_> = (0..5i64)
                .map(|r| {
                    let n = b * 5 + r;
                    spate::client::new_record(r, 1000 + 10 * n, None, Bytes::from(format!("v{n}")))
                })
                .collect();
            client.produce_records(&topic, 0, &records, -1, codec).unwrap();
        }
        for (target, offset) in [(0, 0), (1000, 0), (1001, 1), (1030, 3), (1041, 5), (1075, 8), (1140, 14)] {
            let want = format!("{offset} {} v{offset}\n", 1000 + 10 * offset);
            let out = spate(
                &broker,
                &["consume", &topic, "--timestamp", &target.to_string(), "-n", "1", "-f", "%o %T %s\\n"],
                None,
            );
            assert_eq!(out, want, "{name}: first record at or after {target}");
            assert_eq!(client.list_offset(&topic, 0, target).unwrap(), offset, "{name}: ListOffsets of {target}");
        }
        let out = spate(&broker, &["consume", &topic, "--timestamp", "1141"], None);
        assert_eq!(out, "", "{name}: nothing at or after 1141");
    }
    broker.stop();
}

/// `spate --version` names the commit it was built from.
#[test]
fn version_shows_the_git_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_spate")).arg("--version").output().unwrap();
    let version = String::from_utf8(out.stdout).unwrap();
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("unknown".to_string(), |o| String::from_utf8(o.stdout).unwrap().trim().to_string());
    assert_eq!(version.trim(), format!("spate {} (commit {head})", env!("CARGO_PKG_VERSION")));
}
