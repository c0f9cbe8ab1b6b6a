//! `spate bench` works: embedded and against an external broker, every mode,
//! JSON and SVG outputs. A smoke run that checks counts, not speed. And it
//! tells the truth: batches within max.message.bytes, errors fail the run,
//! signals give partial results and leave no data, its own topic, no
//! pre-existing data counted.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{temp_dir, TestBroker};
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};

fn bench(args: &[&str]) -> serde_json::Value {
    let dir = temp_dir(&format!("bench-{}", args.join("-").replace(['/', ' '], "_")));
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(out.status.success(), "spate bench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("msgs/s"), "prints a results table:\n{text}");
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

fn phase<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == name)
        .unwrap_or_else(|| panic!("no {name} phase"))
}

#[test]
fn embedded_all_modes_with_plot() {
    let dir = temp_dir("bench-plot");
    let svg = dir.join("plot.svg");
    let report = bench(&["--messages", "200000", "--duration-secs", "1", "--plot", svg.to_str().unwrap()]);
    assert_eq!(phase(&report, "produce")["messages"], 200_000);
    assert_eq!(phase(&report, "produce")["errors"], 0);
    assert!(phase(&report, "consume")["messages"].as_u64().unwrap() >= 200_000);
    let acks_all = phase(&report, "acks-all");
    assert_eq!((acks_all["messages"].as_u64(), acks_all["errors"].as_u64()), (Some(200_000), Some(0)));
    assert!(report["machine"]["disk"]["write_mib_per_sec"].as_f64().unwrap() > 0.0, "the data directory is probed");
    assert!(phase(&report, "produce")["zero_100ms_intervals"].as_u64().is_some());
    let e2e_max = phase(&report, "e2e-max");
    assert!(e2e_max["msgs_per_sec"].as_f64().unwrap() > 0.0, "e2e's own sustainable rate is measured");
    let e2e = phase(&report, "e2e");
    assert!(e2e["messages"].as_u64().unwrap() > 0 && e2e["latency"]["p99_us"].as_u64().is_some());
    assert!(phase(&report, "produce")["latency"]["p50_us"].as_u64().unwrap() > 0);
    assert_eq!(report["workload"]["partitions"], 8);
    let drawing = std::fs::read_to_string(&svg).unwrap();
    assert!(drawing.starts_with("<svg") && drawing.contains("polyline"));
}

#[test]
fn against_an_external_broker_with_keys_compression_and_acks_all() {
    // A 1 MiB in-flight budget per connection makes pipelined 256 KiB requests wait for it.
    let broker = TestBroker::start(&temp_dir("bench-external"), &["max_inflight_request_bytes=1048576"]);
    let report = bench(&[
        "produce",
        "--brokers",
        &broker.addr,
        "--messages",
        "50000",
        "--compression",
        "zstd",
        "--acks",
        "all",
        "--keys",
        "100",
        "--partitions",
        "4",
        "--topic",
        "keyed",
    ]);
    assert_eq!(phase(&report, "produce")["messages"], 50_000);
    assert_eq!(report["workload"]["acks"], -1);
    let mut client = broker.client();
    let stored: usize = (0..4).map(|p| client.fetch_all("keyed", p, 0).unwrap().len()).sum();
    assert_eq!(stored, 50_000, "every message the bench counted is in the broker");
    let report = bench(&[
        "consume",
        "--brokers",
        &broker.addr,
        "--messages",
        "20000",
        "--topic",
        "consumed",
        "--rate",
        "100000",
    ]);
    assert!(phase(&report, "consume")["messages"].as_u64().unwrap() >= 20_000);
    broker.stop();
}

#[test]
fn presets_and_bad_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_spate")).args(["bench", "--preset", "nope"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown preset"));
    let report = bench(&["produce", "--preset", "many-producers", "--messages", "64000", "--partitions", "2"]);
    assert_eq!(report["workload"]["producers"], 64);
    assert_eq!(phase(&report, "produce")["messages"], 64_000);
}

#[test]
fn group_consume_and_commit_phases() {
    let broker = TestBroker::start(&temp_dir("bench-group"), &["group_initial_rebalance_delay_ms=200"]);
    let report = bench(&[
        "consume",
        "--brokers",
        &broker.addr,
        "--messages",
        "100000",
        "--group",
        "bench-members",
        "--consumers",
        "3",
        "--commit-interval-ms",
        "50",
    ]);
    let consume = phase(&report, "consume");
    assert!(consume["messages"].as_u64().unwrap() >= 100_000);
    assert!(consume["commit_latency"]["count"].as_u64().unwrap() >= 3, "every member commits at least at the end");
    // The group's committed offsets cover what was consumed.
    let mut client = broker.client();
    client.find_coordinator("bench-members").unwrap();
    let committed: i64 = client.fetch_offsets("bench-members", None).unwrap().iter().map(|o| o.offset).sum();
    assert!(committed >= 100_000, "committed {committed}");
    assert_eq!(client.describe_group("bench-members").unwrap().group_state.as_str(), "Empty", "members left");

    let report = bench(&["commit", "--brokers", &broker.addr, "--messages", "20000", "--consumers", "2"]);
    let commit = phase(&report, "commit");
    assert_eq!((commit["messages"].as_u64(), commit["errors"].as_u64()), (Some(20_000), Some(0)));
    assert!(commit["latency"]["p99_us"].as_u64().unwrap() > 0);
}

/// Runs `spate bench ARGS --json FILE --quiet` with `env`, whatever its exit:
/// its output and the report, if one was written.
fn bench_output(args: &[&str], env: &[(&str, &str)]) -> (Output, Option<serde_json::Value>) {
    let dir = temp_dir(&format!("bench-out-{}", args.join("-").replace(['/', ' ', ':'], "_")));
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--quiet")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let report = std::fs::read(&json).ok().map(|b| serde_json::from_slice(&b).unwrap());
    (out, report)
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The topics the broker has.
fn topics(broker: &TestBroker) -> Vec<String> {
    let mut req = MetadataRequest::default();
    req.topics = None;
    req.allow_auto_topic_creation = false;
    let resp: MetadataResponse = broker.client().call(ApiKey::Metadata, 4, &req).unwrap();
    resp.topics.iter().filter_map(|t| t.name.as_ref().map(|n| n.to_string())).collect()
}

/// Messages stored in `topic`: the sum of its partitions' end offsets.
fn stored(broker: &TestBroker, topic: &str, partitions: i32) -> i64 {
    let mut client = broker.client();
    (0..partitions).map(|p| client.list_offset(topic, p, -1).unwrap()).sum()
}

#[test]
fn one_two_and_four_partitions_within_a_1_mib_max_message_bytes() {
    let broker = TestBroker::start(&temp_dir("bench-1mib"), &[]);
    let limit = [("max.message.bytes".to_string(), "1048576".to_string())];
    for partitions in [1, 2, 4] {
        let topic = format!("mib-{partitions}");
        broker.client().create_topic(&topic, partitions, &limit).unwrap();
        let p = partitions.to_string();
        // The case (one partition, batches kept growing while no
        // request slot was free), and batches asked larger than the limit.
        for extra in [&["--compression", "lz4"][..], &["--batch-bytes", "4194304"][..]] {
            let before = stored(&broker, &topic, partitions);
            let mut args = vec![
                "produce",
                "--brokers",
                &broker.addr,
                "--topic",
                &topic,
                "--partitions",
                &p,
                "--messages",
                "300000",
            ];
            args.extend_from_slice(extra);
            args.extend_from_slice(&["--probe-secs", "0.1"]);
            let report = bench(&args);
            assert_eq!(report["errors"], 0, "{args:?}");
            assert_eq!(phase(&report, "produce")["errors"], 0, "{args:?}");
            assert_eq!(phase(&report, "produce")["messages"], 300_000, "{args:?}");
            assert_eq!(report["workload"]["max_message_bytes"], 1_048_576);
            assert!(report["workload"]["batch_bytes"].as_u64().unwrap() < 1_048_576, "{args:?}");
            assert_eq!(stored(&broker, &topic, partitions) - before, 300_000, "{args:?}: all stored");
        }
    }
    // Embedded, with the broker's default limit: the command.
    let report = bench(&["produce", "--partitions", "1", "--messages", "300000", "--probe-secs", "0.1"]);
    assert_eq!((report["errors"].as_u64(), phase(&report, "produce")["messages"].as_u64()), (Some(0), Some(300_000)));
    broker.stop();
}

#[test]
fn a_produce_error_fails_the_run() {
    // Every message is larger than the topic allows.
    let broker = TestBroker::start(&temp_dir("bench-too-large"), &[]);
    broker.client().create_topic("tiny", 1, &[("max.message.bytes".into(), "200".into())]).unwrap();
    let args = ["produce", "--brokers", &broker.addr, "--topic", "tiny", "--message-bytes", "1000"];
    let (out, report) = bench_output(&[&args[..], &["--messages", "1000", "--probe-secs", "0.1"]].concat(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAILED") && stdout.contains("errors"), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MessageTooLarge"), "{}", text(&out));
    let report = report.expect("a report even for a failed run");
    assert!(report["errors"].as_u64().unwrap() > 0);
    assert!(phase(&report, "produce")["errors"].as_u64().unwrap() > 0);
    broker.stop();

    // The embedded broker's writes fail (fault injection): storage errors.
    let faults = [("SPATE_FAULTS", "op=write,error=EIO,after=3,times=0")];
    let (out, report) =
        bench_output(&["produce", "--partitions", "1", "--messages", "2000000", "--probe-secs", "0.1"], &faults);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(report.unwrap()["errors"].as_u64().unwrap() > 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("produce failed"), "{}", text(&out));
}

/// Starts `spate bench ARGS` with its temporary directory in `tmp`, waits
/// until `started` says the run began and then `after`, sends `signal` and
/// returns its output.
fn interrupt(args: &[&str], tmp: &Path, started: impl Fn() -> bool, signal: i32, after: Duration) -> Output {
    let act = |pid: u32| {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid as i32, signal) };
    };
    run_and_act(args, tmp, started, after, act)
}

/// Starts `spate bench ARGS`, waits until `started` and then `after`, calls
/// `act` with the run's pid and returns its output once it ends (killed,
/// failing the test, if it has not ended within 60 s).
fn run_and_act(
    args: &[&str],
    tmp: &Path,
    started: impl Fn() -> bool,
    after: Duration,
    act: impl FnOnce(u32),
) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_spate"))
        .arg("bench")
        .args(args)
        .env("TMPDIR", tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started() {
        assert!(Instant::now() < deadline, "the run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(after);
    let pid = child.id();
    act(pid);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || done_tx.send(child.wait_with_output().unwrap()));
    done_rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
        // SAFETY: as above; the run did not stop, so end it.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        panic!("spate bench did not stop within 60 s")
    })
}

#[test]
fn a_broker_that_stops_answering_fails_the_run_within_the_request_timeout() {
    let dir = temp_dir("bench-silent-broker");
    let broker = TestBroker::start(&dir, &[]);
    let args = ["produce", "--brokers", &broker.addr, "--duration-secs", "120", "--probe-secs", "0.1"];
    let own_topic = || topics(&broker).iter().any(|t| t.starts_with("spate-bench-"));
    let started = Instant::now();
    // The broker process is stopped mid-run: connections stay open, nothing answers.
    // SAFETY: signalling our own child process.
    let stop_broker = |_| unsafe {
        libc::kill(broker.pid() as i32, libc::SIGSTOP);
    };
    let timeout = ["--request-timeout-ms", "2000"];
    let out = run_and_act(&[&args[..], &timeout].concat(), &dir, own_topic, Duration::from_secs(1), stop_broker);
    // SAFETY: as above.
    unsafe { libc::kill(broker.pid() as i32, libc::SIGCONT) };
    assert!(started.elapsed() < Duration::from_secs(60), "ended long before the 120 s it was asked to run");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("within request_timeout_ms (2000)"), "{}", text(&out));
    broker.stop();
}

fn wait_for_report(json: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(json).unwrap_or_else(|e| panic!("no report at {}: {e}", json.display())))
        .unwrap()
}

#[test]
fn sigint_prints_partial_results_and_removes_the_temporary_data() {
    let dir = temp_dir("bench-sigint");
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let json = dir.join("report.json");
    let args = ["produce", "--duration-secs", "120", "--probe-secs", "0.2", "--warmup-secs", "0.5", "--json"];
    let started = Instant::now();
    let embedded_data = || {
        std::fs::read_dir(&tmp).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("spate-bench-"))
    };
    let out = interrupt(
        &[&args[..], &[json.to_str().unwrap()]].concat(),
        &tmp,
        embedded_data,
        libc::SIGINT,
        Duration::from_secs(2),
    );
    assert!(started.elapsed() < Duration::from_secs(60), "stopped long before the 120 s it was asked to run");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("PARTIAL: interrupted by SIGINT") && stdout.contains("msgs/s"), "{}", text(&out));
    let report = wait_for_report(&json);
    assert_eq!((report["partial"].as_bool(), report["interrupted_by"].as_str()), (Some(true), Some("SIGINT")));
    let produce = phase(&report, "produce");
    assert!(produce["partial"].as_bool().unwrap() && produce["messages"].as_u64().unwrap() > 0, "{produce}");
    assert_eq!(produce["errors"], 0);
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "temporary data left behind: {left:?}");
}

#[test]
fn sigterm_against_an_external_broker_deletes_the_run_topic() {
    let dir = temp_dir("bench-sigterm");
    let broker = TestBroker::start(&dir, &[]);
    let json = dir.join("report.json");
    let args = ["e2e", "--brokers", &broker.addr, "--duration-secs", "120", "--rate", "200000", "--probe-secs", "0.1"];
    let own_topic = || topics(&broker).iter().any(|t| t.starts_with("spate-bench-"));
    let out = interrupt(
        &[&args[..], &["--json", json.to_str().unwrap()]].concat(),
        &dir,
        own_topic,
        libc::SIGTERM,
        Duration::from_secs(2),
    );
    assert_eq!(out.status.code(), Some(143), "{}", text(&out));
    let report = wait_for_report(&json);
    assert_eq!(report["interrupted_by"], "SIGTERM");
    assert!(phase(&report, "e2e")["messages"].as_u64().unwrap() > 0);
    assert_eq!(
        (report["broker"]["topic_created"].as_bool(), report["broker"]["topic_deleted"].as_bool()),
        (Some(true), Some(true))
    );
    assert!(topics(&broker).iter().all(|t| !t.starts_with("spate-bench-")), "{:?}", topics(&broker));
    broker.stop();
}

#[test]
fn data_already_in_the_topic_is_never_counted_and_a_unique_topic_is_deleted() {
    let broker = TestBroker::start(&temp_dir("bench-existing"), &[]);
    let mut client = broker.client();
    client.create_topic("existing", 2, &[]).unwrap();
    let old: Vec<(Option<bytes::Bytes>, bytes::Bytes)> =
        (0..1000).map(|i| (None, bytes::Bytes::from(format!("old-{i}")))).collect();
    for _ in 0..10 {
        for p in 0..2 {
            client.produce("existing", p, &old, 1, kafka_protocol::records::Compression::None).unwrap();
        }
    }
    let report = bench(&[
        "consume",
        "--brokers",
        &broker.addr,
        "--topic",
        "existing",
        "--messages",
        "5000",
        "--probe-secs",
        "0.1",
    ]);
    assert_eq!(phase(&report, "fill")["messages"], 5000);
    assert_eq!(phase(&report, "consume")["messages"], 5000, "only what this run wrote");
    assert_eq!(report["broker"]["topic_created"], false);
    assert_eq!(report["workload"]["partitions"], 2, "an existing topic keeps its partitions");
    assert_eq!(stored(&broker, "existing", 2), 25_000, "the topic is kept");

    // Without --topic: a topic of its own, deleted at the end.
    let report = bench(&[
        "all",
        "--brokers",
        &broker.addr,
        "--messages",
        "20000",
        "--duration-secs",
        "1",
        "--probe-secs",
        "0.1",
    ]);
    let topic = report["workload"]["topic"].as_str().unwrap().to_string();
    assert!(topic.starts_with("spate-bench-"), "{topic}");
    assert!(
        report["broker"]["topic_created"].as_bool().unwrap() && report["broker"]["topic_deleted"].as_bool().unwrap()
    );
    assert_eq!(topics(&broker), vec!["existing".to_string()]);
    // What the report records besides the figures.
    assert_eq!(report["spate"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(report["spate"]["commit"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(report["date"].as_str().unwrap().ends_with('Z'));
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1 && report["machine"]["kernel"].as_str().is_some());
    assert!(report["broker"]["config"]["message.max.bytes"].is_string(), "{}", report["broker"]["config"]);
    assert_eq!(report["flags"]["messages"], 20000);
    assert_eq!(report["flags"]["warmup_secs"], 2.0);
    broker.stop();
}

#[test]
fn the_header_shows_acks_and_the_embedded_config_is_recorded() {
    let (out, report) =
        bench_output(&["produce", "--messages", "20000", "--probe-secs", "0.1", "--warmup-secs", "0"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let header = stdout.lines().next().unwrap();
    assert!(header.starts_with("spate bench ") && header.contains("acks 1"), "{header}");
    let report = report.unwrap();
    assert!(report["broker"]["embedded"].as_bool().unwrap());
    assert!(report["broker"]["config"]["data_dir"].as_str().unwrap().contains("spate-bench-"));
    assert_eq!(phase(&report, "produce")["warmup_secs"], 0.0);
}
