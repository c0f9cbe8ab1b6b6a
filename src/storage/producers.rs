//! Idempotent-producer state of one partition: for each producer id, its
//! epoch and the sequence ranges of its last few batches. A retried batch is
//! recognised and answered with its original offset instead of being stored
//! twice; a gap in sequences is refused.
//!
//! Persisted as a snapshot (`<offset>.snapshot`, like Kafka's) when a
//! segment rolls and at clean shutdown; at start, recovery loads the newest
//! snapshot and replays the batches stored after it, so a retry of any batch
//! still remembered is recognised after a restart.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

/// Batches remembered per producer: Kafka clients keep at most five in flight.
pub const BATCHES_PER_PRODUCER: usize = 5;
/// Producers remembered per partition; the least recently seen is dropped.
pub const MAX_PRODUCERS_PER_PARTITION: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub first_sequence: i32,
    pub last_sequence: i32,
    /// The batch's largest timestamp (DescribeProducers' last timestamp).
    pub max_timestamp: i64,
}

/// One producer as DescribeProducers shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveProducer {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub last_sequence: i32,
    /// -1 when unknown (a snapshot written before timestamps were kept).
    pub last_timestamp: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Store it.
    Append,
    /// Already stored at this base offset: answer with it, store nothing.
    Duplicate { base_offset: i64 },
    /// The producer skipped sequences (OUT_OF_ORDER_SEQUENCE_NUMBER).
    OutOfOrder,
    /// An older epoch of a producer that has moved on (INVALID_PRODUCER_EPOCH).
    Fenced,
}

#[derive(Debug, Default)]
struct Entry {
    epoch: i16,
    /// (first sequence, last sequence, base offset), oldest first.
    batches: VecDeque<(i32, i32, i64)>,
    last_seen: u64,
    /// The largest timestamp of the last batch recorded.
    last_timestamp: i64,
}

#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, Entry>,
    clock: u64,
}

impl ProducerStates {
    pub fn check(&self, batch: &ProducerBatch) -> SequenceCheck {
        let Some(entry) = self.producers.get(&batch.producer_id) else {
            return SequenceCheck::Append;
        };
        if batch.producer_epoch < entry.epoch {
            return SequenceCheck::Fenced;
        }
        if batch.producer_epoch > entry.epoch {
            return SequenceCheck::Append; // a new epoch starts its sequences afresh
        }
        if let Some(&(_, _, base_offset)) =
            entry.batches.iter().find(|(f, l, _)| *f == batch.first_sequence && *l == batch.last_sequence)
        {
            return SequenceCheck::Duplicate { base_offset };
        }
        match entry.batches.back() {
            Some(&(_, last, _)) if batch.first_sequence != next_sequence(last) => SequenceCheck::OutOfOrder,
            _ => SequenceCheck::Append,
        }
    }

    /// Records a stored batch (after `check` said Append, or during recovery).
    pub fn record(&mut self, batch: &ProducerBatch, base_offset: i64) {
        self.clock += 1;
        let clock = self.clock;
        if !self.producers.contains_key(&batch.producer_id) && self.producers.len() >= MAX_PRODUCERS_PER_PARTITION {
            self.evict_oldest();
        }
        let entry = self.producers.entry(batch.producer_id).or_default();
        if batch.producer_epoch != entry.epoch {
            entry.epoch = batch.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back((batch.first_sequence, batch.last_sequence, base_offset));
        if entry.batches.len() > BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
        entry.last_seen = clock;
        entry.last_timestamp = batch.max_timestamp;
    }

    /// Every remembered producer, by producer id.
    pub fn active(&self) -> Vec<ActiveProducer> {
        let mut out: Vec<ActiveProducer> = self
            .producers
            .iter()
            .filter_map(|(&producer_id, entry)| {
                let &(_, last_sequence, _) = entry.batches.back()?;
                Some(ActiveProducer {
                    producer_id,
                    producer_epoch: entry.epoch,
                    last_sequence,
                    last_timestamp: entry.last_timestamp,
                })
            })
            .collect();
        out.sort_unstable_by_key(|p| p.producer_id);
        out
    }

    fn evict_oldest(&mut self) {
        if let Some((&pid, _)) = self.producers.iter().min_by_key(|(_, e)| e.last_seen) {
            self.producers.remove(&pid);
        }
    }

    /// Forgets batches stored at or after `offset` (they were rolled back).
    pub fn truncate_from(&mut self, offset: i64) {
        self.producers.retain(|_, entry| {
            while entry.batches.back().is_some_and(|&(_, _, base)| base >= offset) {
                entry.batches.pop_back();
            }
            !entry.batches.is_empty()
        });
    }

    /// The snapshot file's contents: one line per producer,
    /// `pid epoch first:last:base ... t:timestamp`, in least-recently-seen
    /// order (the timestamp, of the last batch, may be absent: older files).
    pub fn encode(&self) -> Vec<u8> {
        let mut entries: Vec<(&i64, &Entry)> = self.producers.iter().collect();
        entries.sort_by_key(|(_, e)| e.last_seen);
        let mut out = String::with_capacity(entries.len() * 64);
        for (pid, entry) in entries {
            out.push_str(&format!("{pid} {}", entry.epoch));
            for (first, last, base) in &entry.batches {
                out.push_str(&format!(" {first}:{last}:{base}"));
            }
            out.push_str(&format!(" t:{}\n", entry.last_timestamp));
        }
        out.into_bytes()
    }

    /// Reads a snapshot written by `encode`; `None` if it is damaged.
    pub fn decode(bytes: &[u8]) -> Option<ProducerStates> {
        let mut states = ProducerStates::default();
        for line in std::str::from_utf8(bytes).ok()?.lines() {
            let mut fields = line.split(' ');
            let producer_id: i64 = fields.next()?.parse().ok()?;
            let producer_epoch: i16 = fields.next()?.parse().ok()?;
            for batch in fields {
                if let Some(timestamp) = batch.strip_prefix("t:") {
                    let entry = states.producers.get_mut(&producer_id)?;
                    entry.last_timestamp = timestamp.parse().ok()?;
                    continue;
                }
                let mut parts = batch.split(':');
                let first_sequence = parts.next()?.parse().ok()?;
                let last_sequence = parts.next()?.parse().ok()?;
                let base_offset = parts.next()?.parse().ok()?;
                let batch =
                    ProducerBatch { producer_id, producer_epoch, first_sequence, last_sequence, max_timestamp: -1 };
                states.record(&batch, base_offset);
            }
        }
        Some(states)
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

/// The snapshot of producer state as of `offset` (everything before it).
pub fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}.snapshot"))
}

/// The offsets of the producer snapshots in `dir`, oldest first.
pub fn list_snapshots(dir: &Path) -> std::io::Result<Vec<i64>> {
    let mut offsets = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(offset) = name.strip_suffix(".snapshot").and_then(|o| o.parse::<i64>().ok()) {
            offsets.push(offset);
        }
    }
    offsets.sort_unstable();
    Ok(offsets)
}

/// Sequences wrap from i32::MAX to 0.
fn next_sequence(last: i32) -> i32 {
    if last == i32::MAX {
        0
    } else {
        last + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(epoch: i16, first: i32, last: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id: 7,
            producer_epoch: epoch,
            first_sequence: first,
            last_sequence: last,
            max_timestamp: 1000 + last as i64,
        }
    }

    #[test]
    fn duplicates_gaps_and_epochs() {
        let mut states = ProducerStates::default();
        assert_eq!(states.check(&batch(0, 0, 9)), SequenceCheck::Append);
        states.record(&batch(0, 0, 9), 100);
        states.record(&batch(0, 10, 19), 110);
        assert_eq!(states.check(&batch(0, 0, 9)), SequenceCheck::Duplicate { base_offset: 100 });
        assert_eq!(states.check(&batch(0, 10, 19)), SequenceCheck::Duplicate { base_offset: 110 });
        assert_eq!(states.check(&batch(0, 25, 30)), SequenceCheck::OutOfOrder);
        assert_eq!(states.check(&batch(0, 20, 29)), SequenceCheck::Append);
        assert_eq!(states.check(&batch(1, 0, 3)), SequenceCheck::Append);
        states.record(&batch(1, 0, 3), 120);
        assert_eq!(states.check(&batch(0, 20, 29)), SequenceCheck::Fenced);
        for i in 0..10 {
            states.record(&batch(1, 4 + i, 4 + i), 124 + i as i64);
        }
        assert_eq!(
            states.check(&batch(1, 0, 3)),
            SequenceCheck::OutOfOrder,
            "only the last five batches are remembered"
        );
    }

    #[test]
    fn snapshot_round_trip_and_truncation() {
        let mut states = ProducerStates::default();
        states.record(&batch(0, 0, 9), 100);
        states.record(&batch(0, 10, 19), 110);
        let back = ProducerStates::decode(&states.encode()).unwrap();
        assert_eq!(back.check(&batch(0, 10, 19)), SequenceCheck::Duplicate { base_offset: 110 });
        let active = ActiveProducer { producer_id: 7, producer_epoch: 0, last_sequence: 19, last_timestamp: 1019 };
        assert_eq!(back.active(), vec![active]);
        let old_format = ProducerStates::decode(b"7 0 0:9:100\n").unwrap();
        assert_eq!(old_format.active()[0].last_timestamp, -1);
        assert_eq!(back.check(&batch(0, 20, 29)), SequenceCheck::Append);
        assert!(ProducerStates::decode(b"7 x 1:2:3").is_none());
        states.truncate_from(110);
        assert_eq!(states.check(&batch(0, 10, 19)), SequenceCheck::Append);
        states.truncate_from(0);
        assert!(states.is_empty());
    }
}
