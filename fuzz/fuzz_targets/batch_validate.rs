//! Batch validation on arbitrary bytes. The first byte picks how the CRC is
//! treated: most inputs get a correct CRC32C patched in, so that the checks
//! after the CRC (record count, record lengths) are reached at all. Checks
//! that whatever `validate` accepts is self-consistent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spate::storage::batch::{self, BatchError, HEADER_BYTES, MIN_RECORD_BYTES};

/// Where the CRC is and what it covers (see src/storage/batch.rs).
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut bytes = rest.to_vec();
    if mode & 0x80 == 0 && bytes.len() >= HEADER_BYTES {
        let crc = crc32c::crc32c(&bytes[ATTRIBUTES_AT..]);
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }
    let max_batch_bytes = 1usize << ((mode & 0x0f) + 8); // 256 B to 8 MiB
    let peeked = batch::peek(&bytes);
    match batch::validate(&bytes, max_batch_bytes) {
        Ok(info) => check_accepted(&bytes, &info, max_batch_bytes),
        Err(BatchError::TooLarge { batch_bytes }) => assert!(batch_bytes > max_batch_bytes),
        Err(_) => {}
    }
    if let Ok(info) = peeked {
        assert!(info.total_bytes <= bytes.len() && info.total_bytes >= HEADER_BYTES);
    }
});

/// What an accepted batch must satisfy for the log to store it safely.
fn check_accepted(bytes: &[u8], info: &batch::BatchInfo, max_batch_bytes: usize) {
    assert!(info.total_bytes <= bytes.len() && info.total_bytes <= max_batch_bytes);
    assert!(info.record_count >= 1 && info.last_offset_delta == info.record_count - 1);
    let records = (info.total_bytes - HEADER_BYTES) / MIN_RECORD_BYTES;
    if info.codec == 0 {
        assert!(info.record_count as usize <= records, "uncompressed count beyond its bytes");
    } else {
        assert!(info.record_count as usize <= max_batch_bytes, "compressed count beyond its bound");
    }
    let mut patched = bytes[..info.total_bytes].to_vec();
    patched[..16].copy_from_slice(&batch::patched_prefix(bytes, 12345, 7));
    let again = batch::validate(&patched, max_batch_bytes).expect("the patched prefix is outside the CRC");
    assert_eq!((again.base_offset, again.leader_epoch, again.record_count), (12345, 7, info.record_count));
}
