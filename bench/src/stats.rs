//! Measurements: HDR latency histograms (microseconds), a per-second
//! throughput series, the live progress line, and the final report.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Resolution of the throughput series.
pub const BUCKET: Duration = Duration::from_millis(100);

/// Latencies up to one hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// What one worker counted; merged across workers at the end.
pub struct WorkerStats {
    pub messages: u64,
    pub bytes: u64,
    pub latency_us: Histogram<u64>,
    /// Messages completed in each `BUCKET` since the run started.
    pub per_bucket: Vec<u64>,
    pub errors: u64,
    /// Group consumers: OffsetCommit round trips.
    pub commit_latency_us: Histogram<u64>,
}

impl WorkerStats {
    pub fn new() -> WorkerStats {
        WorkerStats {
            messages: 0,
            bytes: 0,
            latency_us: new_histogram(),
            per_bucket: Vec::new(),
            errors: 0,
            commit_latency_us: new_histogram(),
        }
    }

    pub fn count(&mut self, since_start: Duration, messages: u64, bytes: u64) {
        self.messages += messages;
        self.bytes += bytes;
        let bucket = (since_start.as_millis() / BUCKET.as_millis()) as usize;
        if self.per_bucket.len() <= bucket {
            self.per_bucket.resize(bucket + 1, 0);
        }
        self.per_bucket[bucket] += messages;
    }

    /// Records `n` messages that waited `latency_us` (saturating into range).
    pub fn latency(&mut self, latency_us: u64, n: u64) {
        let _ = self.latency_us.record_n(latency_us.clamp(1, 3_600_000_000), n);
    }

    pub fn merge(&mut self, other: &WorkerStats) {
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.errors += other.errors;
        let _ = self.latency_us.add(&other.latency_us);
        let _ = self.commit_latency_us.add(&other.commit_latency_us);
        if self.per_bucket.len() < other.per_bucket.len() {
            self.per_bucket.resize(other.per_bucket.len(), 0);
        }
        for (a, b) in self.per_bucket.iter_mut().zip(&other.per_bucket) {
            *a += b;
        }
    }
}

impl Default for WorkerStats {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Serialize, Debug, Clone)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    pub count: u64,
    /// (percentile, microseconds) points for the percentile curve.
    pub curve: Vec<(f64, u64)>,
}

impl Latency {
    pub fn from(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let curve = [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0]
            .iter()
            .map(|&p| (p, h.value_at_percentile(p)))
            .collect();
        Some(Latency {
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            p9999_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
            mean_us: h.mean(),
            count: h.len(),
            curve,
        })
    }
}

#[derive(Serialize, Debug, Clone)]
pub struct PhaseReport {
    pub phase: String,
    pub messages: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    pub errors: u64,
    pub latency: Option<Latency>,
    /// Group consumers: OffsetCommit latency.
    pub commit_latency: Option<Latency>,
    /// Messages per second in each 100 ms interval of the phase.
    pub rate_per_100ms: Vec<f64>,
}

impl PhaseReport {
    pub fn new(phase: &str, stats: &WorkerStats, elapsed: Duration) -> PhaseReport {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        PhaseReport {
            phase: phase.to_string(),
            messages: stats.messages,
            bytes: stats.bytes,
            seconds,
            msgs_per_sec: stats.messages as f64 / seconds,
            mb_per_sec: stats.bytes as f64 / seconds / 1e6,
            errors: stats.errors,
            latency: Latency::from(&stats.latency_us),
            commit_latency: Latency::from(&stats.commit_latency_us),
            rate_per_100ms: stats.per_bucket.iter().map(|&n| n as f64 / BUCKET.as_secs_f64()).collect(),
        }
    }

    pub fn print(&self) {
        println!(
            "{:<9} {:>12} msgs {:>8.2} s {:>12.0} msgs/s {:>9.1} MB/s  errors {}",
            self.phase, self.messages, self.seconds, self.msgs_per_sec, self.mb_per_sec, self.errors
        );
        if let Some(l) = &self.latency {
            println!(
                "{:<9} latency us: p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {} (mean {:.0})",
                "", l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.p9999_us, l.max_us, l.mean_us
            );
        }
        if let Some(l) = &self.commit_latency {
            println!(
                "{:<9} commit us: p50 {} p90 {} p99 {} p99.9 {} max {} ({} commits)",
                "", l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.count
            );
        }
    }
}

/// Prints "[  3s] 1,234,567 msgs/s ..." to stderr once a second while running.
pub struct Progress {
    started: Instant,
    last: Instant,
    last_messages: u64,
    enabled: bool,
}

impl Progress {
    pub fn new(enabled: bool) -> Progress {
        let now = Instant::now();
        Progress { started: now, last: now, last_messages: 0, enabled }
    }

    pub fn tick(&mut self, phase: &str, messages: u64, bytes_per_message: f64) {
        let now = Instant::now();
        if !self.enabled || now - self.last < Duration::from_secs(1) {
            return;
        }
        let rate = (messages - self.last_messages) as f64 / (now - self.last).as_secs_f64();
        eprint!(
            "\r[{:>4}s] {phase}: {:>12.0} msgs/s {:>8.1} MB/s  total {:>12}   ",
            self.started.elapsed().as_secs(),
            rate,
            rate * bytes_per_message / 1e6,
            messages
        );
        self.last = now;
        self.last_messages = messages;
    }

    pub fn done(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}
