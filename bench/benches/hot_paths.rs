//! Criterion micro-benchmarks of each step on spate's produce and fetch hot
//! paths: request decode, batch validation (CRC32C), offset patching, index
//! lookup, segment append (copy into the aligned write buffer), and fetch
//! response assembly.

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};
use spate::handlers::fetch::{encode_response, Slot};
use spate::storage::batch;
use spate::storage::index::SegmentIndex;
use spate_bench::batch::{BatchBuilder, Codec};

/// A batch of `n` 100-byte records, as a producer sends it.
fn sample_batch(n: usize) -> Bytes {
    let mut builder = BatchBuilder::new(n * 120);
    for i in 0..n {
        builder.push(1_700_000_000_000 + i as i64, None, &[b'v'; 100]);
    }
    builder.finish(Codec::None).unwrap()
}

/// A Produce v9 request frame (without the length prefix) with 8 partitions.
fn produce_frame(batch: &Bytes) -> Bytes {
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::Produce as i16;
    header.request_api_version = 9;
    header.correlation_id = 1;
    header.client_id = Some(StrBytes::from_static_str("bench"));
    let mut topic = TopicProduceData::default();
    topic.name = TopicName(StrBytes::from_static_str("bench"));
    for p in 0..8 {
        let mut data = PartitionProduceData::default();
        data.index = p;
        data.records = Some(batch.clone());
        topic.partition_data.push(data);
    }
    let mut request = ProduceRequest::default();
    request.acks = 1;
    request.timeout_ms = 30_000;
    request.topic_data = vec![topic];
    let mut buf = BytesMut::new();
    header.encode(&mut buf, ApiKey::Produce.request_header_version(9)).unwrap();
    request.encode(&mut buf, 9).unwrap();
    buf.freeze()
}

fn produce_path(c: &mut Criterion) {
    let batch = sample_batch(1000); // ~110 KB, 1000 records
    let frame = produce_frame(&batch);
    let mut group = c.benchmark_group("produce");
    group.throughput(Throughput::Elements(8 * 1000));
    group.bench_function("decode Produce v9 (8 x 1000 records)", |b| {
        b.iter(|| {
            let request = spate::handlers::parse_request(frame.clone()).unwrap();
            let body: ProduceRequest = spate::handlers::decode_body(&request).unwrap();
            assert_eq!(body.topic_data[0].partition_data.len(), 8);
        })
    });
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function("validate batch (CRC32C, 110 KB)", |b| b.iter(|| batch::validate(&batch, 1 << 20).unwrap()));
    group.bench_function("patch offsets (16-byte prefix)", |b| b.iter(|| batch::patched_prefix(&batch, 123_456, 7)));
    group.finish();
}

fn index_lookup(c: &mut Criterion) {
    let mut index = SegmentIndex::default();
    for i in 0..250_000u32 {
        index.add(i * 40, i * 4096, 1_700_000_000_000 + i as i64);
    }
    let mut group = c.benchmark_group("index");
    let mut probe = 0u32;
    group.bench_function("offset lookup (250k entries, 1 GiB segment)", |b| {
        b.iter(|| {
            probe = probe.wrapping_add(7_919) % 10_000_000;
            index.position_for(probe)
        })
    });
    group.bench_function("time lookup (250k entries)", |b| {
        b.iter(|| {
            probe = probe.wrapping_add(7_919) % 250_000;
            index.scan_start_for_time(1_700_000_000_000 + probe as i64)
        })
    });
    group.finish();
}

fn segment_append(c: &mut Criterion) {
    // The copy into the aligned O_DIRECT write buffer, with the index upkeep;
    // the io_uring write itself is measured end to end by `spate bench`.
    let dir = std::env::temp_dir().join(format!("spate-criterion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let batch = sample_batch(150); // ~16 KB, a typical producer batch
    let executor = glommio::LocalExecutorBuilder::default().io_memory(1 << 20).make().unwrap();
    executor.run(async {
        let mut segment = spate::storage::segment::Segment::create(&dir, 0, 1 << 20, 0).await.unwrap();
        let mut next = 0i64;
        let mut group = c.benchmark_group("segment");
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_function("append 16 KB batch into the write buffer", |b| {
            b.iter(|| {
                let prefix = batch::patched_prefix(&batch, next, 0);
                segment.append(&[&prefix, &batch[16..]], next, next + 150, 1, 1, 4096);
                next += 150;
                if segment.pending_bytes() > 8 << 20 {
                    drop(segment.begin_flush()); // discard: keeps memory bounded
                }
            })
        });
        group.finish();
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn fetch_assembly(c: &mut Criterion) {
    let batch = sample_batch(1000);
    let mut group = c.benchmark_group("fetch");
    group.throughput(Throughput::Elements(8 * 8 * 1000));
    group.bench_function("encode Fetch v12 response (8 partitions x 8 batches, zero-copy)", |b| {
        b.iter_batched(
            || {
                (0..8)
                    .map(|p| Slot {
                        partition: p,
                        tp: None,
                        fetch_offset: 0,
                        max_bytes: 1 << 20,
                        error: 0,
                        high_watermark: 8000,
                        log_start_offset: 0,
                        parts: vec![batch.clone(); 8],
                    })
                    .collect::<Vec<_>>()
            },
            |slots| {
                let parts = encode_response(12, 1, 0, &[("bench".to_string(), 8)], &slots);
                let mut total = 0usize;
                for part in &parts {
                    total += part.len();
                }
                assert!(total > 8 * 8 * batch.len());
                parts
            },
            BatchSize::SmallInput,
        )
    });
    let mut scratch = BytesMut::new();
    group.bench_function("copying the same records into one buffer (for contrast)", |b| {
        b.iter(|| {
            scratch.clear();
            for _ in 0..64 {
                scratch.put_slice(&batch);
            }
            scratch.len()
        })
    });
    group.finish();
}

criterion_group!(benches, produce_path, index_lookup, segment_append, fetch_assembly);
criterion_main!(benches);
