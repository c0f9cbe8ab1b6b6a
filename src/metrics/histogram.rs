//! A latency histogram with fixed buckets, for one thread: `Cell`s, no
//! allocation after creation, and an owned snapshot to merge across shards.

use std::cell::Cell;
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (Prometheus' `le`), from 10 µs
/// (an fdatasync of nothing, a cached fetch) to 10 s (a stalled device).
pub const BUCKET_BOUNDS_SECONDS: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
const BUCKETS: usize = BUCKET_BOUNDS_SECONDS.len() + 1; // the last one is +Inf

#[derive(Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative).
    buckets: [Cell<u64>; BUCKETS],
    sum_nanos: Cell<u64>,
    count: Cell<u64>,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BUCKET_BOUNDS_SECONDS.iter().position(|bound| seconds <= *bound).unwrap_or(BUCKETS - 1);
        let cell = &self.buckets[bucket];
        cell.set(cell.get().wrapping_add(1));
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.set(self.sum_nanos.get().wrapping_add(nanos));
        self.count.set(self.count.get().wrapping_add(1));
    }

    pub fn count(&self) -> u64 {
        self.count.get()
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = [0; BUCKETS];
        for (out, cell) in buckets.iter_mut().zip(&self.buckets) {
            *out = cell.get();
        }
        HistogramSnapshot { buckets, sum_seconds: self.sum_nanos.get() as f64 / 1e9, count: self.count.get() }
    }
}

/// A histogram's values at a scrape; snapshots of several shards add up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    buckets: [u64; BUCKETS],
    pub sum_seconds: f64,
    pub count: u64,
}

impl HistogramSnapshot {
    pub fn add(&mut self, other: &HistogramSnapshot) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.sum_seconds += other.sum_seconds;
        self.count += other.count;
    }

    /// (upper bound, observations in that bucket alone) for each bucket,
    /// +Inf last: the encoder sums them into Prometheus' cumulative `le` counts.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        BUCKET_BOUNDS_SECONDS.iter().copied().chain([f64::INFINITY]).zip(self.buckets).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_each_observation_once_and_add_up() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut s = h.snapshot();
        assert_eq!(s.count, 3);
        let buckets = s.buckets();
        assert_eq!(buckets[0], (0.00001, 1));
        assert_eq!(buckets.iter().find(|(b, _)| *b == 0.005).unwrap().1, 1);
        assert_eq!(*buckets.last().unwrap(), (f64::INFINITY, 1));
        assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), 3);
        s.add(&h.snapshot());
        assert_eq!(s.count, 6);
        assert!((s.sum_seconds - 2.0 * 60.003005).abs() < 1e-6);
    }
}
