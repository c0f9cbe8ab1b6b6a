//! Log compaction against crashes and faults, with kcat as the client: many
//! values for few keys and tombstones, cleaned by the broker's cleaner while
//! it is killed (`kill -9` at random moments, and an abort at each step of the
//! swap that commits a clean), or while its cleaned files cannot be written.
//! After every restart, every record present is the one produced at its
//! offset and the latest record of every key is still there; once the
//! cleaner finishes, exactly the latest record of each key is left.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{temp_dir, TestBroker};

const KEYS: usize = 40;
const SEGMENT_BYTES: &str = "16384";

/// One produced record: key and value (None: a tombstone).
type Produced = Vec<(String, Option<String>)>;

/// Broker settings: a cleaner that looks often, at a chosen I/O rate.
fn cleaner_settings(io_bytes_per_second: u64) -> Vec<String> {
    vec![
        "log_cleaner_backoff_ms=100".to_string(),
        format!("log_cleaner_io_max_bytes_per_second={io_bytes_per_second}"),
        "log_cleaner_io_buffer_bytes=65536".to_string(),
    ]
}

fn start(dir: &std::path::Path, settings: &[String], env: &[(&str, &str)]) -> TestBroker {
    let extra: Vec<&str> = settings.iter().map(String::as_str).collect();
    TestBroker::start_with_env(dir, &extra, env)
}

/// A compacted topic with small segments that is cleaned as soon as it is
/// dirty at all; tombstones stay for an hour (so every key's latest record
/// must always be present).
fn create_topic(broker: &TestBroker, topic: &str) {
    let configs: Vec<(String, String)> = [
        ("cleanup.policy", "compact"),
        ("segment.bytes", SEGMENT_BYTES),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("delete.retention.ms", "3600000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    broker.client().create_topic(topic, 1, &configs).unwrap();
}

/// `count` records over `KEYS` keys, every 9th a tombstone, each value
/// padded to about 120 bytes; then `filler` records of unique keys.
fn records(count: usize, filler: usize) -> Produced {
    records_from(0, count, filler)
}

/// As [`records`], numbering values from `first` (so every value is new).
fn records_from(first: usize, count: usize, filler: usize) -> Produced {
    let mut out = Produced::new();
    for i in first..first + count {
        let key = format!("k{}", i % KEYS);
        let value = (i % 9 != 4).then(|| format!("{key}-v{i}-{}", "x".repeat(100)));
        out.push((key, value));
    }
    // Filler values are pseudo-random hex, so that even compressed they
    // take more than a segment: the records before them are all sealed.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..filler {
        let noise: String = (0..12)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                format!("{state:016x}")
            })
            .collect();
        out.push((format!("fill-{i}"), Some(format!("f{i}-{noise}"))));
    }
    out
}

/// Produces with kcat (acks=all, one partition, no retries that could
/// reorder): record i of `records` gets offset `first_offset + i`.
fn produce(broker: &TestBroker, topic: &str, records: &[(String, Option<String>)], codec: &str) {
    let mut kcat = Command::new("kcat")
        .args(["-P", "-b", &broker.addr, "-t", topic, "-p", "0", "-K", "\t", "-Z", "-z", codec])
        .args(["-X", "acks=all", "-X", "linger.ms=20", "-X", "batch.num.messages=40"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is installed by scripts/test.sh");
    {
        let stdin = kcat.stdin.as_mut().unwrap();
        for (key, value) in records {
            // -Z: an empty value is sent as NULL (a tombstone).
            writeln!(stdin, "{key}\t{}", value.as_deref().unwrap_or("")).unwrap();
        }
    }
    let out = kcat.wait_with_output().unwrap();
    assert!(out.status.success(), "kcat -P failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Every record of the partition: offset → (key, value).
fn read_all(broker: &TestBroker, topic: &str) -> BTreeMap<i64, (String, Option<String>)> {
    let out = Command::new("kcat")
        .args(["-C", "-b", &broker.addr, "-t", topic, "-p", "0", "-o", "beginning", "-e", "-q"])
        .args(["-f", "%o\t%k\t%S\t%s\n"])
        .output()
        .expect("kcat is installed by scripts/test.sh");
    assert!(out.status.success(), "kcat -C failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut got = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let fields: Vec<&str> = line.splitn(4, '\t').collect();
        assert_eq!(fields.len(), 4, "kcat line {line:?}");
        let offset: i64 = fields[0].parse().unwrap();
        let value = (fields[2] != "-1").then(|| fields[3].to_string());
        assert!(got.insert(offset, (fields[1].to_string(), value)).is_none(), "offset {offset} read twice");
    }
    got
}

/// The latest record of each key: offset → record.
fn latest(produced: &Produced) -> BTreeMap<i64, (String, Option<String>)> {
    let mut by_key = BTreeMap::new();
    for (offset, (key, value)) in produced.iter().enumerate() {
        by_key.insert(key.clone(), (offset as i64, value.clone()));
    }
    by_key.into_iter().map(|(key, (offset, value))| (offset, (key, value))).collect()
}

/// What must hold at any moment: nothing read that was not produced at
/// that offset, and the latest record of every key present.
fn check_nothing_lost(got: &BTreeMap<i64, (String, Option<String>)>, produced: &Produced, log: &str) {
    for (offset, record) in got {
        let want = produced.get(*offset as usize).unwrap_or_else(|| panic!("offset {offset} was never produced"));
        assert_eq!(record, want, "record at offset {offset}; log:\n{log}");
    }
    for (offset, record) in latest(produced) {
        assert_eq!(got.get(&offset), Some(&record), "latest record of {} lost; log:\n{log}", record.0);
    }
}

/// Waits until the cleaner has left exactly the latest record of each key
/// (the filler, all unique keys, fills the segments after them).
fn wait_fully_cleaned(broker: &TestBroker, topic: &str, produced: &Produced) {
    let want = latest(produced);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = read_all(broker, topic);
        check_nothing_lost(&got, produced, "");
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not cleaned: {} records, want {}; log:\n{}",
            got.len(),
            want.len(),
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kill9_at_random_moments_of_cleans_loses_nothing() {
    let dir = temp_dir("compaction-kill9");
    // A whole clean takes a few seconds at 1 MiB/s: the kills land in every
    // step of it (reading, writing, swapping).
    let paced = cleaner_settings(1 << 20);
    let mut broker = start(&dir, &paced, &[]);
    create_topic(&broker, "kv");
    let mut produced = Produced::new();
    let mut seed = 0x2545_f491_u64;
    for round in 0..8 {
        let chunk = records_from(produced.len(), 1500, 0);
        produce(&broker, "kv", &chunk, ["snappy", "gzip", "lz4", "zstd", "none"][round % 5]);
        produced.extend(chunk);
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(200 + (seed >> 33) % 2500));
        broker.kill9();
        broker = start(&dir, &paced, &[]);
        let got = read_all(&broker, "kv");
        check_nothing_lost(&got, &produced, &broker.log());
        eprintln!("round {round}: {} of {} records after restart", got.len(), produced.len());
    }
    // The log file holds every run's lines.
    assert!(broker.log().contains("log cleaned"), "no clean finished between the kills");
    let filler = records(0, 400);
    produce(&broker, "kv", &filler, "none");
    produced.extend(filler);
    broker.kill9();
    let broker = start(&dir, &cleaner_settings(1 << 30), &[]);
    wait_fully_cleaned(&broker, "kv", &produced);
    broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The process aborts at one step of the swap (a `kill -9` at exactly that
/// moment); the restarted broker rolls the clean back or forward.
fn abort_at(step: &str, name: &str) {
    let dir = temp_dir(name);
    let fast = cleaner_settings(1 << 30);
    let mut slow_start = fast.clone();
    slow_start[0] = "log_cleaner_backoff_ms=3000".to_string(); // produce first, then clean
    let fault = format!("op=rename,error=abort,path={step}");
    let mut broker = start(&dir, &slow_start, &[("SPATE_FAULTS", &fault)]);
    create_topic(&broker, "kv");
    let produced = records(3000, 400);
    produce(&broker, "kv", &produced, "zstd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.is_running() {
        assert!(Instant::now() < deadline, "the fault never fired; log:\n{}", broker.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(broker.log().contains("SPATE_FAULTS: aborting at Rename"), "{}", broker.log());
    drop(broker); // already exited and reaped
    let broker = start(&dir, &fast, &[]);
    check_nothing_lost(&read_all(&broker, "kv"), &produced, &broker.log());
    wait_fully_cleaned(&broker, "kv", &produced);
    let leftovers: Vec<String> = std::fs::read_dir(dir.join("data").join("kv-0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn abort_before_a_clean_commits_keeps_the_old_segments() {
    abort_at(".log.cleaned", "compaction-abort-commit");
}

#[test]
fn abort_after_a_clean_commits_finishes_the_swap_at_start() {
    abort_at(".swap", "compaction-abort-swap");
}

#[test]
fn cleaner_write_errors_leave_the_log_serving_and_whole() {
    let dir = temp_dir("compaction-enospc");
    let settings = cleaner_settings(1 << 30);
    for errno in ["ENOSPC", "EIO"] {
        let fault = format!("op=write,error={errno},path=.cleaned,times=0");
        let broker = start(&dir, &settings, &[("SPATE_FAULTS", &fault)]);
        let topic = format!("kv-{errno}");
        create_topic(&broker, &topic);
        let first = records(2000, 200);
        produce(&broker, &topic, &first, "lz4");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !broker.log().contains("log cleaner:") {
            assert!(Instant::now() < deadline, "no clean was tried; log:\n{}", broker.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        // Failed cleans take nothing away, and the partition still appends.
        let more = records(500, 0);
        produce(&broker, &topic, &more, "lz4");
        let all: Produced = first.iter().chain(more.iter()).cloned().collect();
        check_nothing_lost(&read_all(&broker, &topic), &all, &broker.log());
        broker.stop();
        // Without the fault, the same log is cleaned.
        let broker = start(&dir, &settings, &[]);
        let filler = records(0, 400);
        produce(&broker, &topic, &filler, "lz4");
        let all_with_filler: Produced = all.iter().chain(filler.iter()).cloned().collect();
        wait_fully_cleaned(&broker, &topic, &all_with_filler);
        broker.stop();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
