//! Measurements: HDR latency histograms (microseconds) split at the warm-up,
//! a 100 ms throughput series, the live histogram behind the progress line
//! and the latency-over-time series, and the phase report.
//!
//! The warm-up is cut into at most [`WARMUP_SLICES`] slices, each with its
//! own histogram, so that a phase shorter than twice its warm-up can still
//! leave out only its first half (see [`Warmup::clipped`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Resolution of the throughput series (and of the warm-up).
pub const BUCKET: Duration = Duration::from_millis(100);
const BUCKET_MS: u64 = 100;
/// Histograms kept for the warm-up: its resolution when it must be clipped.
pub const WARMUP_SLICES: u64 = 20;
/// Largest latency recorded: one hour (longer ones saturate).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// How often a worker hands its recent latencies to the live histogram.
const LIVE_FLUSH: Duration = Duration::from_millis(100);

/// Latencies up to one hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// A histogram that grows with the largest value seen (the warm-up slices
/// and the live interval: most stay small).
fn small_histogram(digits: u8) -> Histogram<u64> {
    Histogram::new(digits).expect("valid histogram precision")
}

/// The start of a phase left out of its figures, in whole 100 ms buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Warmup {
    buckets: u64,
    slice_buckets: u64,
}

impl Warmup {
    /// `secs` rounded to the nearest 100 ms.
    pub fn new(secs: f64) -> Warmup {
        // Bounded: a warm-up longer than a year is a typo, not a plan.
        let buckets = (secs.clamp(0.0, 3.2e7) / BUCKET.as_secs_f64()).round() as u64;
        Warmup { buckets, slice_buckets: buckets.div_ceil(WARMUP_SLICES).max(1) }
    }

    pub fn none() -> Warmup {
        Warmup::new(0.0)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.buckets * BUCKET_MS)
    }

    fn slices(&self) -> usize {
        self.buckets.div_ceil(self.slice_buckets) as usize
    }

    /// The slice a completion `at` (since the phase started) falls in; None
    /// once the warm-up is over.
    fn slice_of(&self, at: Duration) -> Option<usize> {
        let bucket = at.as_millis() as u64 / BUCKET_MS;
        (bucket < self.buckets).then(|| (bucket / self.slice_buckets) as usize)
    }

    /// The warm-up actually left out of a phase that ran `elapsed`: the
    /// configured one, but at most half the phase (on a slice boundary), so
    /// that a short run still reports its second half.
    pub fn clipped(&self, elapsed: Duration) -> Duration {
        let half = elapsed.as_millis() as u64 / 2 / BUCKET_MS;
        let buckets = if half >= self.buckets { self.buckets } else { half / self.slice_buckets * self.slice_buckets };
        Duration::from_millis(buckets * BUCKET_MS)
    }
}

/// A latency histogram split at the warm-up: one per warm-up slice, one after.
pub struct TimedHistogram {
    warmup: Warmup,
    warm: Vec<Histogram<u64>>,
    after: Histogram<u64>,
}

impl TimedHistogram {
    pub fn new(warmup: Warmup) -> TimedHistogram {
        TimedHistogram {
            warmup,
            warm: (0..warmup.slices()).map(|_| small_histogram(3)).collect(),
            after: new_histogram(),
        }
    }

    /// Records `n` values completed `at` after the phase started.
    pub fn record(&mut self, at: Duration, value_us: u64, n: u64) {
        let value = value_us.clamp(1, MAX_LATENCY_US);
        let histogram = match self.warmup.slice_of(at) {
            Some(slice) => &mut self.warm[slice],
            None => &mut self.after,
        };
        let _ = histogram.record_n(value, n);
    }

    pub fn merge(&mut self, other: &TimedHistogram) {
        let _ = self.after.add(&other.after);
        for (mine, theirs) in self.warm.iter_mut().zip(&other.warm) {
            let _ = mine.add(theirs);
        }
    }

    /// Everything completed from `cut` on (`cut` from [`Warmup::clipped`]).
    pub fn measured(&self, cut: Duration) -> Histogram<u64> {
        let cut_buckets = cut.as_millis() as u64 / BUCKET_MS;
        let mut out = self.after.clone();
        for (i, slice) in self.warm.iter().enumerate() {
            if i as u64 * self.warmup.slice_buckets >= cut_buckets {
                let _ = out.add(slice);
            }
        }
        out
    }
}

/// Latencies of the last moments, summed over every worker of a phase; the
/// watcher empties it once a second for the progress line and the series.
pub struct LiveLatency(Mutex<Histogram<u64>>);

impl LiveLatency {
    pub fn new() -> LiveLatency {
        LiveLatency(Mutex::new(small_histogram(2)))
    }

    fn add(&self, h: &Histogram<u64>) {
        let _ = self.0.lock().unwrap_or_else(|e| e.into_inner()).add(h);
    }

    /// What arrived since the last call, as a point ending at `end`.
    pub fn take(&self, end: Duration) -> Option<LatencyPoint> {
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if h.is_empty() {
            return None;
        }
        let point = LatencyPoint {
            end_secs: end.as_secs_f64(),
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        };
        h.reset();
        Some(point)
    }
}

impl Default for LiveLatency {
    fn default() -> Self {
        Self::new()
    }
}

/// Latency over one interval of a phase (about a second; the last one shorter).
#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
pub struct LatencyPoint {
    /// End of the interval, seconds since the phase started.
    pub end_secs: f64,
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// What the workers of one thread counted; merged across threads at the end.
pub struct WorkerStats {
    /// Every message completed in the phase, warm-up included.
    pub messages: u64,
    pub bytes: u64,
    pub errors: u64,
    pub latency: TimedHistogram,
    /// Group consumers: OffsetCommit round trips.
    pub commit_latency: TimedHistogram,
    /// Messages and bytes completed in each `BUCKET` since the phase started.
    pub per_bucket: Vec<u64>,
    pub bytes_per_bucket: Vec<u64>,
    /// Latencies not yet handed to the phase's [`LiveLatency`].
    live: Histogram<u64>,
    live_flushed: Instant,
}

impl WorkerStats {
    pub fn new(warmup: Warmup) -> WorkerStats {
        WorkerStats {
            messages: 0,
            bytes: 0,
            errors: 0,
            latency: TimedHistogram::new(warmup),
            commit_latency: TimedHistogram::new(warmup),
            per_bucket: Vec::new(),
            bytes_per_bucket: Vec::new(),
            live: small_histogram(2),
            live_flushed: Instant::now(),
        }
    }

    pub fn count(&mut self, since_start: Duration, messages: u64, bytes: u64) {
        self.messages += messages;
        self.bytes += bytes;
        let bucket = (since_start.as_millis() / BUCKET.as_millis()) as usize;
        if self.per_bucket.len() <= bucket {
            self.per_bucket.resize(bucket + 1, 0);
            self.bytes_per_bucket.resize(bucket + 1, 0);
        }
        self.per_bucket[bucket] += messages;
        self.bytes_per_bucket[bucket] += bytes;
    }

    /// Records `n` messages completed `at` after the phase started that
    /// waited `latency_us` (saturating into range).
    pub fn latency(&mut self, at: Duration, latency_us: u64, n: u64) {
        self.latency.record(at, latency_us, n);
        let _ = self.live.record_n(latency_us.clamp(1, MAX_LATENCY_US), n);
    }

    /// Hands recent latencies to the live histogram, at most every 100 ms
    /// unless `now` is set (a worker's last call).
    pub fn flush_live(&mut self, live: &LiveLatency, now: bool) {
        if self.live.is_empty() || (!now && self.live_flushed.elapsed() < LIVE_FLUSH) {
            return;
        }
        live.add(&self.live);
        self.live.reset();
        self.live_flushed = Instant::now();
    }

    pub fn merge(&mut self, other: &WorkerStats) {
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
        self.commit_latency.merge(&other.commit_latency);
        add_series(&mut self.per_bucket, &other.per_bucket);
        add_series(&mut self.bytes_per_bucket, &other.bytes_per_bucket);
    }
}

fn add_series(into: &mut Vec<u64>, from: &[u64]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
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

/// How a phase's time splits: its length, the group join (consume through
/// a group) and the warm-up, both left out of the figures.
#[derive(Debug, Clone, Copy)]
pub struct PhaseTiming {
    pub elapsed: Duration,
    /// Group consumers: time until the first message arrived.
    pub joined: Duration,
    pub warmup: Warmup,
    /// Stopped early by SIGINT or SIGTERM.
    pub interrupted: bool,
    /// e2e: when the producers stopped. The consumers' drain after it is no
    /// stall: the intervals checked for stalls end here.
    pub load_ended: Option<Duration>,
}

#[derive(Serialize, Debug, Clone)]
pub struct PhaseReport {
    pub phase: String,
    /// Every message completed in the phase, warm-up included.
    pub messages: u64,
    pub bytes: u64,
    /// The whole phase.
    pub seconds: f64,
    /// Failed requests (or a failed worker); any makes the run fail.
    pub errors: u64,
    /// Stopped early by a signal: figures cover what ran.
    pub partial: bool,
    /// Left out of the figures: the warm-up (clipped to half the phase) or,
    /// consuming through a group, the join if it took longer.
    pub warmup_secs: f64,
    pub measured_messages: u64,
    pub measured_bytes: u64,
    pub measured_seconds: f64,
    /// Over the measured window.
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    /// Over the measured window.
    pub latency: Option<Latency>,
    /// Group consumers: OffsetCommit latency, over the measured window.
    pub commit_latency: Option<Latency>,
    /// Messages per second in each 100 ms interval of the whole phase.
    pub rate_per_100ms: Vec<f64>,
    /// The lowest of those rates over the measured window (its last,
    /// partial interval left out), and how many of them were zero: a stall.
    pub slowest_100ms_msgs_per_sec: f64,
    pub zero_100ms_intervals: usize,
    /// Latency per interval of about a second, over the whole phase.
    pub latency_over_time: Vec<LatencyPoint>,
}

impl PhaseReport {
    pub fn new(phase: &str, stats: &WorkerStats, timing: PhaseTiming, series: Vec<LatencyPoint>) -> PhaseReport {
        let warm = timing.warmup.clipped(timing.elapsed);
        // The join ends on a bucket boundary rounded down: messages of that
        // bucket arrived after it.
        let joined = Duration::from_millis(timing.joined.as_millis() as u64 / BUCKET_MS * BUCKET_MS);
        let cut = warm.max(joined);
        let from = (cut.as_millis() as u64 / BUCKET_MS) as usize;
        let measured_messages: u64 = stats.per_bucket.iter().skip(from).sum();
        let measured_bytes: u64 = stats.bytes_per_bucket.iter().skip(from).sum();
        let measured_seconds = timing.elapsed.saturating_sub(cut).as_secs_f64().max(1e-9);
        let load_ended = timing.load_ended.map_or(timing.elapsed, |end| end.min(timing.elapsed));
        let whole_buckets = (load_ended.as_millis() as u64 / BUCKET_MS) as usize;
        // Intervals past the last message counted are intervals at zero.
        let measured_buckets = (from..whole_buckets).map(|i| stats.per_bucket.get(i).copied().unwrap_or(0));
        let per_sec = |n: u64| n as f64 / BUCKET.as_secs_f64();
        PhaseReport {
            slowest_100ms_msgs_per_sec: measured_buckets.clone().min().map_or(0.0, per_sec),
            zero_100ms_intervals: measured_buckets.filter(|&n| n == 0).count(),
            phase: phase.to_string(),
            messages: stats.messages,
            bytes: stats.bytes,
            seconds: timing.elapsed.as_secs_f64(),
            errors: stats.errors,
            partial: timing.interrupted,
            warmup_secs: cut.as_secs_f64(),
            measured_messages,
            measured_bytes,
            measured_seconds,
            msgs_per_sec: measured_messages as f64 / measured_seconds,
            mb_per_sec: measured_bytes as f64 / measured_seconds / 1e6,
            latency: Latency::from(&stats.latency.measured(warm)),
            commit_latency: Latency::from(&stats.commit_latency.measured(warm)),
            rate_per_100ms: stats.per_bucket.iter().map(|&n| per_sec(n)).collect(),
            latency_over_time: series,
        }
    }

    pub fn print(&self) {
        println!(
            "{:<9} {:>12} msgs {:>8.2} s {:>12.0} msgs/s {:>9.1} MB/s  errors {}{}",
            self.phase,
            self.messages,
            self.seconds,
            self.msgs_per_sec,
            self.mb_per_sec,
            self.errors,
            if self.partial { "  PARTIAL (interrupted)" } else { "" }
        );
        println!(
            "{:<9} rates over {} msgs in the last {:.2} s (first {:.2} s left out as warm-up)",
            "", self.measured_messages, self.measured_seconds, self.warmup_secs
        );
        println!(
            "{:<9} slowest 100 ms: {:.0} msgs/s; {} of 100 ms at zero",
            "", self.slowest_100ms_msgs_per_sec, self.zero_100ms_intervals
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

/// The live line on stderr, once a second: rate, p50 and p99 of the last
/// interval, and the total.
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

    pub fn tick(&mut self, phase: &str, messages: u64, bytes_per_message: f64, latency: Option<&LatencyPoint>) {
        let now = Instant::now();
        let rate = (messages - self.last_messages.min(messages)) as f64 / (now - self.last).as_secs_f64().max(1e-9);
        self.last = now;
        self.last_messages = messages;
        if !self.enabled {
            return;
        }
        let latency = latency.map_or_else(
            || "p50 -        p99 -       ".to_string(),
            |l| format!("p50 {:<8} p99 {:<8}", human_us(l.p50_us), human_us(l.p99_us)),
        );
        eprint!(
            "\r[{:>4}s] {phase}: {:>12.0} msgs/s {:>8.1} MB/s  {latency} total {:>12}   ",
            self.started.elapsed().as_secs(),
            rate,
            rate * bytes_per_message / 1e6,
            messages
        );
    }

    pub fn done(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}

/// "850us", "12.3ms", "1.20s".
pub fn human_us(us: u64) -> String {
    match us {
        us if us >= 1_000_000 => format!("{:.2}s", us as f64 / 1e6),
        us if us >= 1_000 => format!("{:.1}ms", us as f64 / 1e3),
        us => format!("{us}us"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_warmup_is_clipped_to_half_a_short_phase() {
        let w = Warmup::new(2.0);
        assert_eq!(w.duration(), ms(2000));
        assert_eq!(w.clipped(ms(10_000)), ms(2000), "a long phase leaves out the whole warm-up");
        assert_eq!(w.clipped(ms(1000)), ms(500), "a 1 s phase leaves out its first half");
        assert_eq!(w.clipped(ms(150)), ms(0), "shorter than a bucket's two halves: nothing left out");
        assert_eq!(Warmup::none().clipped(ms(10_000)), ms(0));
        // A long warm-up has coarser slices; the cut falls on one.
        let long = Warmup::new(60.0);
        assert_eq!(long.clipped(ms(200_000)), ms(60_000));
        assert_eq!(long.clipped(ms(100_000)), ms(48_000), "half, 50 s, down to a 3 s slice");
        assert_eq!(long.clipped(ms(31_000)), ms(15_000));
        assert_eq!(Warmup::new(2.5).clipped(ms(100_000)), ms(2500), "the whole warm-up, not a slice short of it");
    }

    #[test]
    fn figures_leave_out_the_warmup() {
        let warmup = Warmup::new(1.0);
        let mut stats = WorkerStats::new(warmup);
        // 100 slow messages during the warm-up, 100 fast ones after.
        for i in 0..10u64 {
            stats.count(ms(i * 100), 10, 1000);
            stats.latency(ms(i * 100 + 50), 50_000, 10);
        }
        for i in 10..20u64 {
            stats.count(ms(i * 100), 10, 1000);
            stats.latency(ms(i * 100 + 50), 100, 10);
        }
        let timing = PhaseTiming { elapsed: ms(2000), joined: ms(0), warmup, interrupted: false, load_ended: None };
        let report = PhaseReport::new("produce", &stats, timing, Vec::new());
        assert_eq!((report.messages, report.measured_messages), (200, 100));
        assert_eq!(report.warmup_secs, 1.0);
        assert!((report.msgs_per_sec - 100.0).abs() < 1e-6, "{}", report.msgs_per_sec);
        let latency = report.latency.unwrap();
        assert_eq!((latency.count, latency.max_us), (100, 100), "no warm-up latency in the histogram");

        // The same data over a 1.2 s phase: only its first 0.6 s left out.
        let timing = PhaseTiming { elapsed: ms(1200), ..timing };
        let report = PhaseReport::new("produce", &stats, timing, Vec::new());
        assert_eq!(report.warmup_secs, 0.6);
        assert_eq!(report.measured_messages, 140);
        assert_eq!(report.latency.unwrap().count, 140);
    }

    #[test]
    fn stalls_are_counted_over_the_measured_window() {
        let mut stats = WorkerStats::new(Warmup::new(1.0));
        // Nothing during the warm-up's first half; a stall at 1.3-1.5 s; the
        // phase runs 450 ms past its last message.
        for i in (5..13).chain(15..20) {
            stats.count(ms(i * 100), 10 + i, 0);
        }
        let timing = PhaseTiming {
            elapsed: ms(2450),
            joined: ms(0),
            warmup: Warmup::new(1.0),
            interrupted: false,
            load_ended: None,
        };
        let report = PhaseReport::new("produce", &stats, timing, Vec::new());
        assert_eq!(report.zero_100ms_intervals, 2 + 4, "the stall and the four whole intervals at the end");
        assert_eq!(report.slowest_100ms_msgs_per_sec, 0.0);
        let steady = PhaseTiming { elapsed: ms(2000), ..timing };
        let report = PhaseReport::new("produce", &stats, steady, Vec::new());
        assert_eq!(report.zero_100ms_intervals, 2);
        let mut busy = WorkerStats::new(Warmup::new(1.0));
        for i in 0..20 {
            busy.count(ms(i * 100), 100 + i, 0);
        }
        let report = PhaseReport::new("produce", &busy, steady, Vec::new());
        assert_eq!((report.zero_100ms_intervals, report.slowest_100ms_msgs_per_sec), (0, 1100.0));
        // e2e: the producers stopped at 2.0 s; the consumers drained a few
        // messages until 2.45 s: no stall, and the drain's rate is no interval's.
        let mut e2e = WorkerStats::new(Warmup::new(1.0));
        for i in 0..20 {
            e2e.count(ms(i * 100), 100 + i, 0);
        }
        e2e.count(ms(2050), 3, 0);
        let drained = PhaseTiming { elapsed: ms(2450), load_ended: Some(ms(2000)), ..steady };
        let report = PhaseReport::new("e2e", &e2e, drained, Vec::new());
        assert_eq!((report.zero_100ms_intervals, report.slowest_100ms_msgs_per_sec), (0, 1100.0));
        assert_eq!(report.measured_messages, (10..20).map(|i| 100 + i).sum::<u64>() + 3, "the drain still counts");
    }

    #[test]
    fn live_latency_is_handed_over_and_emptied() {
        let live = LiveLatency::new();
        let mut stats = WorkerStats::new(Warmup::none());
        stats.latency(ms(1), 1000, 99);
        stats.latency(ms(1), 9000, 1);
        stats.flush_live(&live, true);
        let point = live.take(ms(1000)).unwrap();
        assert_eq!((point.count, point.end_secs), (100, 1.0));
        assert!(point.p50_us >= 990 && point.p50_us <= 1010 && point.p99_us <= 1010, "{point:?}");
        assert!(live.take(ms(2000)).is_none(), "taking empties it");
    }
}
