//! The shard's bound on write memory: bytes its partitions have appended but
//! not yet written (copied into write buffers, queued or in flight to the
//! disk). A sync or a slow device no longer stops appends at once: writes keep
//! being queued until this bound is reached, and only then do producers wait.
//!
//! One count per shard thread (every partition of a shard lives on it), kept
//! by each partition reporting its own unwritten bytes as they change.

use std::cell::Cell;

thread_local! {
    static USED_BYTES: Cell<u64> = const { Cell::new(0) };
    static LIMIT_BYTES: Cell<u64> = const { Cell::new(DEFAULT_WRITE_MEMORY_BYTES_PER_SHARD) };
}

/// `write_memory_bytes_per_shard`'s default.
pub const DEFAULT_WRITE_MEMORY_BYTES_PER_SHARD: u64 = 64 << 20;

/// Sets this shard's bound (at start, from the config).
pub fn set_limit(limit_bytes: u64) {
    assert!(limit_bytes > 0, "a write memory bound is positive");
    LIMIT_BYTES.with(|l| l.set(limit_bytes));
}

/// A partition's unwritten bytes went from `before` to `after`.
pub fn update(before: u64, after: u64) {
    USED_BYTES.with(|used| {
        let now = used.get() + after;
        assert!(now >= before, "a partition releases only write memory it holds");
        used.set(now - before);
    });
}

/// Whether appending `bytes` more would pass the shard's bound.
pub fn would_exceed(bytes: u64) -> bool {
    USED_BYTES.with(|used| used.get() + bytes > LIMIT_BYTES.with(Cell::get))
}

/// This shard's unwritten bytes, for the metrics and tests.
pub fn used_bytes() -> u64 {
    USED_BYTES.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_partitions_hold_against_the_bound() {
        set_limit(100);
        update(0, 60);
        update(0, 30);
        assert_eq!(used_bytes(), 90);
        assert!(!would_exceed(10));
        assert!(would_exceed(11));
        update(60, 0);
        assert_eq!(used_bytes(), 30);
        update(30, 0);
        assert_eq!(used_bytes(), 0);
    }
}
