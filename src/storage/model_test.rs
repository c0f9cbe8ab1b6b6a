//! Model-based property test of a partition: random sequences of concurrent
//! produces (some dropped mid-way, as a closed connection drops them), small
//! segments that roll every few batches, injected write/fallocate/fdatasync/
//! open failures (with several writes in flight), crashes (all in-memory
//! state dropped) and clean restarts, checked against a model: every acknowledged batch is readable at its
//! offset, byte for byte, before and after every recovery, and no offset is
//! handed out twice.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};
use proptest::prelude::*;

use super::faults::{self, Fault, Op, Rule};
use super::{open_log, Durability, LogConfig, Partition};

#[derive(Debug, Clone)]
enum Step {
    /// Concurrent produces; the first `dropped` of them are cancelled after one poll.
    Produce {
        sizes: Vec<(u8, u16)>,
        acks: u8,
        dropped: usize,
    },
    Fail {
        op: Op,
        fault: Fault,
        times: u64,
    },
    Crash,
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    let produce = (proptest::collection::vec((1u8..20, 1u16..3000), 1..8), 0u8..3, 0usize..3)
        .prop_map(|(sizes, acks, dropped)| Step::Produce { sizes, acks, dropped });
    let fault = prop_oneof![
        Just((Op::Write, Fault::Errno(libc::ENOSPC))),
        Just((Op::Write, Fault::Errno(libc::EIO))),
        Just((Op::Write, Fault::Short)),
        Just((Op::Fallocate, Fault::Errno(libc::ENOSPC))),
        Just((Op::Fdatasync, Fault::Errno(libc::ENOSPC))),
        Just((Op::Fdatasync, Fault::Errno(libc::EIO))),
        Just((Op::Open, Fault::Errno(libc::EMFILE))),
    ];
    prop_oneof![
        6 => produce,
        2 => (fault, 1u64..3).prop_map(|((op, fault), times)| Step::Fail { op, fault, times }),
        1 => Just(Step::Crash),
        1 => Just(Step::Restart),
    ]
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 << 10,
        write_buffer_bytes: 8 << 10,
        // Batches of up to 60 KB fill several buffers: jobs overlap, and a
        // failure lands with writes after it still in flight.
        max_writes_in_flight: 4,
        cache_bytes: 32 << 10,
        preallocate_step_bytes: 16 << 10,
        index_interval_bytes: 1024,
        ..LogConfig::default()
    }
}

/// An uncompressed batch of `count` records of `value_bytes`, tagged with `id`.
fn batch(id: u32, count: u8, value_bytes: u16) -> Bytes {
    let records: Vec<_> = (0..count as i64)
        .map(|i| {
            let mut value = vec![(id % 251) as u8; value_bytes as usize];
            let tag = 4.min(value.len());
            value[..tag].copy_from_slice(&id.to_be_bytes()[..tag]);
            crate::client::new_record(i, 1_000 + id as i64, None, Bytes::from(value))
        })
        .collect();
    let mut out = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut out, records.iter(), &options).expect("encodes");
    out.freeze()
}

/// Acknowledged batches by base offset: the bytes the producer sent.
type Model = BTreeMap<i64, Bytes>;

async fn check(partition: &Partition, model: &Model) {
    let end = partition.log.borrow().high_watermark();
    for (&base, sent) in model {
        let read = partition.read(base, 1, false).await.expect("acknowledged offsets are readable");
        let stored: Vec<u8> = read.iter().flat_map(|p| p.iter().copied()).collect();
        assert!(stored.len() >= sent.len(), "batch at {base} is whole ({} of {} bytes)", stored.len(), sent.len());
        assert_eq!(i64::from_be_bytes(stored[..8].try_into().unwrap()), base, "batch at its offset");
        assert_eq!(&stored[8..12], &sent[8..12], "same length at {base}");
        assert_eq!(&stored[16..sent.len()], &sent[16..], "same bytes at {base}");
        let records = i32::from_be_bytes(sent[57..61].try_into().unwrap()) as i64;
        assert!(base + records <= end, "acknowledged batch at {base} is below the high watermark {end}");
    }
}

async fn produce_step(partition: &Rc<Partition>, model: &mut Model, next_id: &mut u32, step: &Step) {
    let Step::Produce { sizes, acks, dropped } = step else { unreachable!() };
    let durability = [Durability::Buffered, Durability::Written, Durability::Synced][*acks as usize];
    let mut tasks = Vec::new();
    for &(count, value_bytes) in sizes {
        *next_id += 1;
        let records = batch(*next_id, count, value_bytes);
        let p = partition.clone();
        let sent = records.clone();
        let task = glommio::spawn_local(async move { (p.produce(records, durability, 0).await, sent) });
        tasks.push(task);
    }
    glommio::yield_if_needed().await;
    glommio::executor().yield_now().await;
    let kept = tasks.split_off((*dropped).min(tasks.len()));
    drop(tasks); // cancelled, as a closed connection's request tasks are
    for task in kept {
        let (result, sent) = task.await;
        if let (Ok(info), false) = (result, durability == Durability::Buffered) {
            assert!(model.insert(info.base_offset, sent).is_none(), "offset {} handed out twice", info.base_offset);
        }
    }
}

async fn reopen(dir: &Path) -> Rc<Partition> {
    Partition::start(open_log(dir, config(), 0).await.expect("recovery opens the log"))
}

fn run_case(steps: Vec<Step>, case: usize) {
    let dir = std::env::temp_dir().join(format!("spate-model-{}-{case}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let executor = glommio::LocalExecutorBuilder::default().io_memory(1 << 20).make().unwrap();
    executor.run(async {
        let case = run_steps(&dir, &steps);
        let limit = std::time::Duration::from_secs(20);
        let bounded = glommio::timer::timeout(limit, async {
            case.await;
            Ok(())
        });
        if bounded.await.is_err() {
            panic!("case hung for {limit:?}: {steps:?}");
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

async fn run_steps(dir: &Path, steps: &[Step]) {
    {
        std::fs::create_dir_all(dir).unwrap();
        super::segment::probe_device(dir, 0).await.unwrap();
        let tag = dir.to_string_lossy().into_owned();
        let mut partition = reopen(dir).await;
        let mut model = Model::new();
        let mut next_id = 0;
        for step in steps {
            // MODEL_TRACE=1 (with --nocapture) shows the step a failing case stopped at.
            if std::env::var("MODEL_TRACE").is_ok() {
                eprintln!("step {step:?}");
            }
            match step {
                Step::Produce { .. } => produce_step(&partition, &mut model, &mut next_id, step).await,
                Step::Fail { op, fault, times } => {
                    let mut rule = Rule::new(*op, *fault, 0, *times);
                    rule.path = Some(tag.clone());
                    faults::set_rules(vec![rule]);
                }
                Step::Crash => {
                    faults::set_rules(Vec::new());
                    partition.discard();
                    partition.stopped().await;
                    drop(partition);
                    partition = reopen(dir).await;
                }
                Step::Restart => {
                    faults::set_rules(Vec::new());
                    let _ = partition.close().await;
                    drop(partition);
                    partition = reopen(dir).await;
                }
            }
            check(&partition, &model).await;
        }
        faults::set_rules(Vec::new());
        partition.discard();
        partition.stopped().await;
        drop(partition);
        let partition = reopen(dir).await;
        check(&partition, &model).await;
        partition.close().await.unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn acknowledged_batches_survive_faults_and_crashes(steps in proptest::collection::vec(step(), 1..40)) {
        static CASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        run_case(steps, CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    }
}
