//! Idempotent-producer state of one partition: for each producer id, its
//! epoch and the sequence ranges of its last few batches. A retried batch is
//! recognised and answered with its original offset instead of being stored
//! twice; a gap in sequences is refused.
//!
//! Rebuilt at start from the batches recovery scans (the active segment and
//! the tails of sealed ones); a producer unknown after a restart is accepted
//! at whatever sequence it resumes with.

use std::collections::{HashMap, VecDeque};

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
    }

    fn evict_oldest(&mut self) {
        if let Some((&pid, _)) = self.producers.iter().min_by_key(|(_, e)| e.last_seen) {
            self.producers.remove(&pid);
        }
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
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
        ProducerBatch { producer_id: 7, producer_epoch: epoch, first_sequence: first, last_sequence: last }
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
}
