//! One request frame (without its 4-byte length) as the broker decodes it:
//! the header with `parse_request`, then the body as the API's request type
//! (as each handler's `decode_body` does), then, for Produce, every batch
//! through `batch::validate` as the log does.
//! Any panic, abort or runaway allocation is a finding.

#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestKind};
use libfuzzer_sys::fuzz_target;
use spate::handlers::parse_request;
use spate::storage::batch;

/// The default max.message.bytes, as the produce path checks batches.
const MAX_BATCH_BYTES: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = parse_request(Bytes::copy_from_slice(data)) else { return };
    if request.api_key == ApiKey::ApiVersions {
        return; // its body is never decoded: the answer is the version table
    }
    let mut body = request.body.clone();
    let Ok(decoded) = RequestKind::decode(request.api_key, &mut body, request.version()) else { return };
    if let RequestKind::Produce(produce) = decoded {
        for topic in &produce.topic_data {
            for partition in &topic.partition_data {
                if let Some(records) = &partition.records {
                    validate_all(records);
                }
            }
        }
    }
});

/// Walks a produce payload batch by batch, as `PartitionLog::validate` does.
fn validate_all(records: &[u8]) {
    let mut at = 0;
    while at < records.len() {
        match batch::validate(&records[at..], MAX_BATCH_BYTES) {
            Ok(info) => at += info.total_bytes,
            Err(_) => return,
        }
    }
}
