//! A real full disk: the broker's data directory on a small loop-mounted
//! ext4 filesystem, filled by acks=all producers until writes fail with
//! ENOSPC. Producers get errors, nothing acknowledged is lost, the broker
//! starts on the full disk, DeleteTopics and DeleteRecords free space, and
//! appends resume by themselves. Needs root (mount); CI runs as root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use common::{temp_dir, TestBroker};
use kafka_protocol::records::Compression;
use spate::client::Client;

/// A loop-mounted ext4 filesystem, unmounted on drop.
struct LoopFs {
    mount: PathBuf,
}

impl LoopFs {
    fn new(dir: &Path, mib: u32) -> LoopFs {
        let image = dir.join("fs.img");
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount).unwrap();
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(mib as u64 * (1 << 20)).unwrap();
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        run("mount", &["-o", "loop", image.to_str().unwrap(), mount.to_str().unwrap()]);
        LoopFs { mount }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn value(tag: &str, i: usize) -> Bytes {
    let mut v = format!("{tag}-{i}-").into_bytes();
    v.resize(1000, b'x');
    Bytes::from(v)
}

type Acked = Vec<(i64, Vec<Bytes>)>;

/// Produces 50-record batches with acks=all to `topics` in turn until
/// `refusals` batches were refused; returns each topic's acknowledged
/// (base offset, values).
fn fill(client: &mut Client, topics: &[&str], refusals: usize) -> Vec<Acked> {
    let (mut acked, mut refused) = (vec![Acked::new(); topics.len()], 0);
    for b in 0.. {
        let t = b % topics.len();
        let batch: Vec<(Option<Bytes>, Bytes)> = (0..50).map(|i| (None, value(&format!("{t}-{b}"), i))).collect();
        match client.produce(topics[t], 0, &batch, -1, Compression::None) {
            Ok(base) => acked[t].push((base, batch.into_iter().map(|(_, v)| v).collect())),
            Err(e) => {
                assert!(e.to_string().contains("KafkaStorageError"), "a full disk is a storage error: {e}");
                refused += 1;
                if refused == refusals {
                    break;
                }
            }
        }
        assert!(b < 100_000, "the disk never filled");
    }
    acked
}

fn verify(client: &mut Client, topic: &str, acked: &Acked, from: i64) -> usize {
    let stored: std::collections::HashMap<i64, Bytes> =
        client.fetch_all(topic, 0, from).unwrap().into_iter().map(|r| (r.offset, r.value.unwrap())).collect();
    let mut checked = 0;
    for (base, values) in acked {
        for (i, v) in values.iter().enumerate() {
            let offset = base + i as i64;
            if offset >= from {
                assert_eq!(stored.get(&offset), Some(v), "acknowledged record at {topic}@{offset}");
                checked += 1;
            }
        }
    }
    checked
}

#[test]
fn full_disk_refuses_loses_nothing_and_recovers() {
    if !is_root() {
        eprintln!("skipping: mounting a loop filesystem needs root (CI runs as root)");
        return;
    }
    let dir = temp_dir("disk-full");
    let fs = LoopFs::new(&dir, 64);
    let data = fs.mount.join("spate");
    let config = ["segment_bytes=1048576", "retention_check_interval_ms=200"];
    let broker = TestBroker::start_in(&dir, &data, &config);
    let mut client = broker.client();
    client.create_topic("filler", 1, &[]).unwrap();
    client.create_topic("keep", 1, &[]).unwrap();
    let mut acked = fill(&mut client, &["filler", "keep"], 6);
    let (mut kept, filler) = (acked.pop().unwrap(), acked.pop().unwrap());
    assert!(!filler.is_empty() && !kept.is_empty());
    verify(&mut client, "keep", &kept, 0);
    verify(&mut client, "filler", &filler, 0);

    // Space freed by DeleteRecords: appends resume by themselves, no restart.
    client.delete_records("filler", 0, filler.last().unwrap().0).unwrap();
    kept.extend(fill_some(&mut client, "keep", 3));
    kept.extend(fill(&mut client, &["keep"], 2).pop().unwrap()); // full again
    verify(&mut client, "keep", &kept, 0);
    broker.kill9();

    // Starts on the full disk, and every acknowledged record is there.
    let broker = TestBroker::start_in(&dir, &data, &config);
    let mut client = broker.client();
    verify(&mut client, "keep", &kept, 0);
    let filler_start = client.list_offset("filler", 0, -2).unwrap();
    assert!(verify(&mut client, "filler", &filler, filler_start) > 0);

    // DeleteTopics and DeleteRecords work on the full disk and free space.
    let end = client.list_offset("keep", 0, -1).unwrap();
    let start = client.delete_records("keep", 0, end / 2).unwrap();
    assert_eq!(start, end / 2);
    client.delete_topics(&["filler"]).unwrap();
    let more = fill_some(&mut client, "keep", 20);
    verify(&mut client, "keep", &kept, start);
    verify(&mut client, "keep", &more, start);
    broker.stop();

    let broker = TestBroker::start_in(&dir, &data, &config);
    let mut client = broker.client();
    assert_eq!(client.list_offset("keep", 0, -2).unwrap(), start, "the log start survived");
    verify(&mut client, "keep", &kept, start);
    verify(&mut client, "keep", &more, start);
    broker.stop();
    drop(fs);
}

fn fill_some(client: &mut Client, topic: &str, batches: usize) -> Acked {
    (0..batches)
        .map(|b| {
            let batch: Vec<(Option<Bytes>, Bytes)> = (0..50).map(|i| (None, value(&format!("m-{b}"), i))).collect();
            let base = produce_soon(client, topic, &batch);
            (base, batch.into_iter().map(|(_, v)| v).collect())
        })
        .collect()
}

/// Produces `batch`, retrying storage errors for a few seconds: freed space
/// shows up once the deleted files are gone.
fn produce_soon(client: &mut Client, topic: &str, batch: &[(Option<Bytes>, Bytes)]) -> i64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match client.produce(topic, 0, batch, -1, Compression::None) {
            Ok(base) => return base,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("KafkaStorageError"), "{e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("appends did not resume after space was freed: {e}"),
        }
    }
}
