//! The leader-epoch cache of a partition (Kafka's `leader-epoch-checkpoint`):
//! for each leader epoch that wrote to the log, the offset its first batch
//! took. OffsetForLeaderEpoch answers from it, and a follower compares its
//! own against the leader's to find where their logs diverge (KIP-101/279).
//!
//! It is small (one entry per change of leader) and rewritten atomically
//! before the log holds a batch of a new epoch, so on disk it never lacks an
//! epoch the log has; entries past the log end are dropped when it opens.

use std::path::Path;

/// File name inside a partition directory, as Kafka names it.
pub const EPOCH_FILE: &str = "leader-epoch-checkpoint";
/// Entries kept; the oldest are dropped past it (they only serve truncation
/// checks of replicas that far behind, which restart from the leader's start).
pub const MAX_EPOCH_ENTRIES: usize = 4096;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpochCache {
    /// (epoch, start offset), both strictly increasing.
    entries: Vec<(i32, i64)>,
}

impl EpochCache {
    /// Reads the checkpoint; a missing or damaged file gives an empty cache.
    pub fn load(dir: &Path) -> EpochCache {
        let text = std::fs::read_to_string(dir.join(EPOCH_FILE)).unwrap_or_default();
        EpochCache::decode(&text).unwrap_or_default()
    }

    fn decode(text: &str) -> Option<EpochCache> {
        let mut lines = text.lines();
        if lines.next()?.trim() != "0" {
            return None;
        }
        let count: usize = lines.next()?.trim().parse().ok()?;
        let mut cache = EpochCache::default();
        for line in lines.take(count.min(MAX_EPOCH_ENTRIES)) {
            let mut fields = line.split_whitespace();
            let epoch = fields.next()?.parse().ok()?;
            let start = fields.next()?.parse().ok()?;
            cache.assign(epoch, start);
        }
        Some(cache)
    }

    /// Kafka's text format: version, count, then `epoch start` lines.
    pub fn encode(&self) -> String {
        let mut text = format!("0\n{}\n", self.entries.len());
        for (epoch, start) in &self.entries {
            text.push_str(&format!("{epoch} {start}\n"));
        }
        text
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.0)
    }

    /// Records that `epoch` starts at `start`; an epoch not newer than the
    /// latest is ignored (it is already there). Returns whether it changed.
    pub fn assign(&mut self, epoch: i32, start: i64) -> bool {
        if epoch < 0 || self.latest_epoch().is_some_and(|latest| epoch <= latest) {
            return false;
        }
        // An epoch that wrote nothing is superseded by the next one at the same offset.
        while self.entries.last().is_some_and(|e| e.1 >= start) {
            self.entries.pop();
        }
        self.entries.push((epoch, start));
        if self.entries.len() > MAX_EPOCH_ENTRIES {
            self.entries.remove(0);
        }
        true
    }

    /// The log was cut at `end`: epochs starting at or past it are gone.
    pub fn truncate_from(&mut self, end: i64) {
        while self.entries.last().is_some_and(|e| e.1 >= end) {
            self.entries.pop();
        }
    }

    /// OffsetForLeaderEpoch as Kafka answers it: for the latest epoch, the
    /// log end; for an older one, the largest known epoch not above it and
    /// the start of the epoch after; for one below every known epoch, that
    /// epoch and the first start; None for an epoch past the latest.
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> Option<(i32, i64)> {
        if epoch < 0 {
            return None;
        }
        if self.latest_epoch() == Some(epoch) {
            return Some((epoch, log_end));
        }
        let higher = self.entries.iter().position(|e| e.0 > epoch)?;
        let next_start = self.entries[higher].1;
        match higher.checked_sub(1) {
            Some(floor) => Some((self.entries[floor].0, next_start)),
            None => Some((epoch, next_start)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_kafka_does() {
        let mut cache = EpochCache::default();
        assert!(cache.assign(1, 0));
        assert!(cache.assign(3, 100));
        assert!(!cache.assign(2, 150), "older epochs are ignored");
        assert!(cache.assign(5, 200));
        assert_eq!(cache.end_offset_for(5, 250), Some((5, 250)));
        assert_eq!(cache.end_offset_for(3, 250), Some((3, 200)));
        assert_eq!(cache.end_offset_for(4, 250), Some((3, 200)), "floor epoch, next start");
        assert_eq!(cache.end_offset_for(0, 250), Some((0, 0)), "below every epoch");
        assert_eq!(cache.end_offset_for(6, 250), None);
        cache.truncate_from(150);
        assert_eq!(cache.latest_epoch(), Some(3));
        assert_eq!(EpochCache::decode(&cache.encode()), Some(cache.clone()));
        assert!(cache.assign(7, 100), "an epoch that wrote nothing is replaced");
        assert_eq!(cache.entries, [(1, 0), (7, 100)]);
    }
}
