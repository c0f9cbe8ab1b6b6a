//! What the broker counts, per shard. Each shard is one thread, so its
//! counters and histograms are plain `Cell`s in a thread-local: the hot path
//! bumps them without a lock, an atomic or a message. When `/metrics` is
//! scraped, every shard answers an actor message with a [`ShardSnapshot`]
//! (owned, `Send`), and [`encode`] sums the snapshots into Prometheus text.

mod encode;
mod histogram;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use kafka_protocol::messages::ApiKey;

pub use encode::{encode, render_partition, Scrape, CONNECTION_CLOSED};
pub use histogram::{Histogram, HistogramSnapshot};

/// API keys below this are counted (Kafka's keys are below 100).
const API_SLOTS: usize = 100;
/// Versions below this are counted per version (higher ones share the last slot).
const VERSION_SLOTS: usize = 20;

/// Where a request's time went: waiting behind the connection's earlier
/// requests, in its handler (storage, other shards), writing its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Queue = 0,
    Storage = 1,
    Network = 2,
}

pub const STAGES: [Stage; 3] = [Stage::Queue, Stage::Storage, Stage::Network];

impl Stage {
    pub fn label(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Storage => "storage",
            Stage::Network => "network",
        }
    }
}

/// One shard's counters. Reached through [`with`]; never shared across threads.
pub struct ShardMetrics {
    /// Requests by (API key, version).
    requests: Box<[Cell<u64>]>,
    /// Requests answered with an error, by (API key, Kafka error code;
    /// -1 for a request that closed its connection).
    errors: RefCell<HashMap<(i16, i16), u64>>,
    /// Latency by (API key, stage).
    latency: Box<[Histogram]>,
    pub write_latency: Histogram,
    pub fdatasync_latency: Histogram,
    pub cache_hits: Cell<u64>,
    pub cache_misses: Cell<u64>,
    pub cross_shard_messages: Cell<u64>,
    pub connections_accepted: Cell<u64>,
    pub connections_refused: Cell<u64>,
    pub connections_handed_over: Cell<u64>,
    pub slow_requests: Cell<u64>,
    /// Requests read and not yet answered, over all connections.
    pub requests_in_flight: Cell<u64>,
    /// Request bytes held until answered (`queued_max_request_bytes`).
    pub request_buffer_bytes: Cell<u64>,
    busy: RefCell<Busy>,
}

/// The executor's run time, sampled every [`BUSY_SAMPLE_MS`]: glommio hands
/// out its statistics by taking them, so one sampler owns them.
struct Busy {
    total: Duration,
    tasks_executed: u64,
    last_sample: Instant,
    last_ratio: f64,
}

/// How often each shard samples how busy its executor was.
pub const BUSY_SAMPLE_MS: u64 = 1000;

thread_local! {
    static SHARD: ShardMetrics = ShardMetrics::new();
}

/// Runs `f` with this thread's (shard's) metrics.
pub fn with<R>(f: impl FnOnce(&ShardMetrics) -> R) -> R {
    SHARD.with(f)
}

fn slot(api: i16, version: i16) -> Option<usize> {
    let api = usize::try_from(api).ok().filter(|a| *a < API_SLOTS)?;
    let version = usize::try_from(version).ok()?.min(VERSION_SLOTS - 1);
    Some(api * VERSION_SLOTS + version)
}

fn latency_slot(api: i16, stage: Stage) -> Option<usize> {
    let api = usize::try_from(api).ok().filter(|a| *a < API_SLOTS)?;
    Some(api * STAGES.len() + stage as usize)
}

impl ShardMetrics {
    fn new() -> ShardMetrics {
        ShardMetrics {
            requests: (0..API_SLOTS * VERSION_SLOTS).map(|_| Cell::new(0)).collect(),
            errors: RefCell::new(HashMap::new()),
            latency: (0..API_SLOTS * STAGES.len()).map(|_| Histogram::default()).collect(),
            write_latency: Histogram::default(),
            fdatasync_latency: Histogram::default(),
            cache_hits: Cell::new(0),
            cache_misses: Cell::new(0),
            cross_shard_messages: Cell::new(0),
            connections_accepted: Cell::new(0),
            connections_refused: Cell::new(0),
            connections_handed_over: Cell::new(0),
            slow_requests: Cell::new(0),
            requests_in_flight: Cell::new(0),
            request_buffer_bytes: Cell::new(0),
            busy: RefCell::new(Busy {
                total: Duration::ZERO,
                tasks_executed: 0,
                last_sample: Instant::now(),
                last_ratio: 0.0,
            }),
        }
    }

    pub fn request(&self, api: ApiKey, version: i16) {
        if let Some(slot) = slot(api as i16, version) {
            bump(&self.requests[slot], 1);
        }
    }

    pub fn error(&self, api: ApiKey, code: i16) {
        *self.errors.borrow_mut().entry((api as i16, code)).or_insert(0) += 1;
    }

    pub fn latency(&self, api: ApiKey, stage: Stage, took: Duration) {
        if let Some(slot) = latency_slot(api as i16, stage) {
            self.latency[slot].observe(took);
        }
    }

    /// Adds what the executor did since the last sample (call from one task only).
    pub fn sample_busy(&self) {
        let stats = glommio::executor().executor_stats();
        let mut busy = self.busy.borrow_mut();
        let elapsed = busy.last_sample.elapsed();
        busy.total += stats.total_runtime();
        busy.tasks_executed += stats.tasks_executed();
        busy.last_ratio = if elapsed.is_zero() {
            0.0
        } else {
            (stats.total_runtime().as_secs_f64() / elapsed.as_secs_f64()).min(1.0)
        };
        busy.last_sample = Instant::now();
    }

    /// This shard's counters, for a scrape. Partitions and groups are added by the caller.
    pub fn snapshot(&self, shard: usize) -> ShardSnapshot {
        let requests = nonzero_slots(&self.requests)
            .map(|(slot, n)| ((slot / VERSION_SLOTS) as i16, (slot % VERSION_SLOTS) as i16, n))
            .collect();
        let errors = self.errors.borrow().iter().map(|(&(api, code), &n)| (api, code, n)).collect();
        let latency = self
            .latency
            .iter()
            .enumerate()
            .filter(|(_, h)| h.count() > 0)
            .map(|(slot, h)| ((slot / STAGES.len()) as i16, STAGES[slot % STAGES.len()], h.snapshot()))
            .collect();
        let busy = self.busy.borrow();
        ShardSnapshot {
            shard,
            requests,
            errors,
            latency,
            write_latency: self.write_latency.snapshot(),
            fdatasync_latency: self.fdatasync_latency.snapshot(),
            cache_hits: self.cache_hits.get(),
            cache_misses: self.cache_misses.get(),
            cross_shard_messages: self.cross_shard_messages.get(),
            connections_accepted: self.connections_accepted.get(),
            connections_refused: self.connections_refused.get(),
            connections_handed_over: self.connections_handed_over.get(),
            slow_requests: self.slow_requests.get(),
            requests_in_flight: self.requests_in_flight.get(),
            request_buffer_bytes: self.request_buffer_bytes.get(),
            busy_seconds: busy.total.as_secs_f64(),
            busy_ratio: busy.last_ratio,
            tasks_executed: busy.tasks_executed,
            ..ShardSnapshot::default()
        }
    }
}

fn nonzero_slots(cells: &[Cell<u64>]) -> impl Iterator<Item = (usize, u64)> + '_ {
    cells.iter().map(Cell::get).enumerate().filter(|(_, n)| *n > 0)
}

/// Adds `n` to a counter (wrapping: a counter never panics the broker).
pub fn bump(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().wrapping_add(n));
}

/// A partition's figures at a scrape.
#[derive(Clone, Debug, Default)]
pub struct PartitionSnapshot {
    /// Shared by the topic's partitions on a shard (one allocation a topic).
    pub topic: std::sync::Arc<str>,
    pub partition: i32,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub size_bytes: u64,
    pub segments: u64,
    pub bytes_in: u64,
    pub records_in: u64,
    pub bytes_out: u64,
    pub records_out: u64,
}

/// A group's committed offset of one partition at a scrape.
#[derive(Clone, Debug)]
pub struct CommittedSnapshot {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Everything one shard reports to a scrape; owned, so it can cross shards.
#[derive(Clone, Debug, Default)]
pub struct ShardSnapshot {
    pub shard: usize,
    pub requests: Vec<(i16, i16, u64)>,
    pub errors: Vec<(i16, i16, u64)>,
    pub latency: Vec<(i16, Stage, HistogramSnapshot)>,
    pub write_latency: HistogramSnapshot,
    pub fdatasync_latency: HistogramSnapshot,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_bytes: u64,
    pub cross_shard_messages: u64,
    pub connections: u64,
    pub fetch_sessions: u64,
    pub fetch_session_partitions: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub connections_handed_over: u64,
    pub slow_requests: u64,
    pub requests_in_flight: u64,
    pub request_buffer_bytes: u64,
    pub busy_seconds: f64,
    pub busy_ratio: f64,
    pub tasks_executed: u64,
    pub partitions: Vec<PartitionSnapshot>,
    /// The per-partition families' lines, rendered on the owning shard.
    pub partition_lines: [String; 4],
    pub committed: Vec<CommittedSnapshot>,
}

/// Per-partition traffic counters, kept by the partition on its shard.
#[derive(Default)]
pub struct PartitionCounters {
    pub bytes_in: Cell<u64>,
    pub records_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    pub records_out: Cell<u64>,
}

impl PartitionCounters {
    /// Counts what a read sends: its bytes, and the records of the whole
    /// batches in it (from their headers; nothing is decompressed).
    pub fn count_out(&self, parts: &[bytes::Bytes]) {
        bump(&self.bytes_out, parts.iter().map(|p| p.len() as u64).sum());
        bump(&self.records_out, records_in_batches(parts));
    }
}

/// Records in the whole batches of `parts` read one after another (a batch
/// may span parts: the tail cache keeps a patched prefix apart from the
/// body). A batch cut short at the end is not counted.
pub fn records_in_batches(parts: &[bytes::Bytes]) -> u64 {
    const LENGTH_END: usize = 12;
    const RECORDS_COUNT_END: usize = 61;
    let mut records = 0u64;
    let mut header = [0u8; RECORDS_COUNT_END];
    let mut header_filled = 0;
    // Bytes of the current batch still to skip past its header, and
    // whether the batch is whole so far (its records are counted once it is).
    let mut skip = 0usize;
    let mut pending_records = 0u64;
    for part in parts {
        let mut data: &[u8] = part;
        while !data.is_empty() {
            if skip > 0 {
                let n = skip.min(data.len());
                skip -= n;
                data = &data[n..];
                if skip == 0 {
                    records += std::mem::take(&mut pending_records);
                }
                continue;
            }
            let n = (RECORDS_COUNT_END - header_filled).min(data.len());
            header[header_filled..header_filled + n].copy_from_slice(&data[..n]);
            header_filled += n;
            data = &data[n..];
            if header_filled < RECORDS_COUNT_END {
                continue;
            }
            header_filled = 0;
            let length = i32::from_be_bytes([header[8], header[9], header[10], header[11]]);
            let Some(total) = usize::try_from(length).ok().map(|l| l + LENGTH_END).filter(|t| *t >= RECORDS_COUNT_END)
            else {
                return records; // not a batch header: stop counting
            };
            let count = u32::from_be_bytes([header[57], header[58], header[59], header[60]]);
            skip = total - RECORDS_COUNT_END;
            if skip == 0 {
                records += u64::from(count);
            } else {
                pending_records = u64::from(count);
            }
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_bound_keys_and_versions() {
        assert_eq!(slot(0, 0), Some(0));
        assert_eq!(slot(1, 25), Some(VERSION_SLOTS + VERSION_SLOTS - 1), "high versions share the last slot");
        assert_eq!(slot(-1, 0), None);
        assert_eq!(slot(API_SLOTS as i16, 0), None);
    }

    #[test]
    fn counts_records_of_whole_batches_only() {
        let mut batch = vec![0u8; 70];
        batch[8..12].copy_from_slice(&58i32.to_be_bytes()); // 70 - 12
        batch[57..61].copy_from_slice(&3u32.to_be_bytes());
        let mut two = batch.clone();
        two.extend_from_slice(&batch);
        let two = bytes::Bytes::from(two);
        assert_eq!(records_in_batches(std::slice::from_ref(&two)), 6);
        assert_eq!(records_in_batches(&[two.slice(..100)]), 3, "a cut batch is not counted");
        let split = [two.slice(..16), two.slice(16..70), two.slice(70..75), two.slice(75..)];
        assert_eq!(records_in_batches(&split), 6, "batches spanning parts");
        assert_eq!(records_in_batches(&[]), 0);
    }
}
