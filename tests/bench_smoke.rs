//! `spate bench` works: embedded and against an external broker, every mode,
//! JSON and SVG outputs. A smoke run that checks counts, not speed.

mod common;

use std::process::Command;

use common::{temp_dir, TestBroker};

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
