//! The producer and consumer workers. Each runs as a task on a pinned
//! glommio executor thread with its own connection; the tasks of a thread
//! share one [`WorkerStats`]. Every worker stops early when the phase fails
//! or the run is interrupted ([`Shared::stopping`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use glommio::sync::Semaphore;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    fetch_request, ApiKey, BrokerId, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use crate::batch::{for_each_batch, for_each_record, BatchBuilder, Codec, MAX_RECORD_OVERHEAD};
use crate::conn::{check, Conn};
use crate::stats::{LiveLatency, Warmup, WorkerStats};

/// The stats the worker tasks of one thread share.
pub type ThreadStats = Rc<RefCell<WorkerStats>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Keys {
    None,
    Random,
    /// Keys drawn from this many distinct values.
    Cardinality(u64),
}

/// Shared by all workers of a phase.
pub struct Shared {
    pub started: Instant,
    pub warmup: Warmup,
    /// Set at a phase's first error, or to end it: every worker stops.
    pub stop: AtomicBool,
    /// Recent latencies, for the progress line and the latency series.
    pub live: LiveLatency,
    /// Completed messages, for the progress line.
    pub done: AtomicU64,
    /// Set when producers have finished (consumers of e2e runs then drain).
    pub producers_finished: AtomicBool,
    /// Messages the producers got acknowledged (or sent, with acks=0).
    pub produced: AtomicU64,
    /// Microseconds from `started` to the first fetched message (u64::MAX:
    /// none yet); a group's consume rate is measured from there, after the join.
    pub first_data_us: AtomicU64,
}

impl Shared {
    pub fn new(warmup: Warmup) -> Shared {
        Shared {
            started: Instant::now(),
            warmup,
            stop: AtomicBool::new(false),
            live: LiveLatency::new(),
            done: AtomicU64::new(0),
            producers_finished: AtomicBool::new(false),
            produced: AtomicU64::new(0),
            first_data_us: AtomicU64::new(u64::MAX),
        }
    }

    /// The phase failed or a signal asked the run to stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || crate::signals::interrupted().is_some()
    }

    /// Records a failure; the phase's first one is printed.
    pub fn fail(&self, what: &str, error: &anyhow::Error) {
        if !self.stop.swap(true, Ordering::Relaxed) {
            eprintln!("\n{what} failed: {error:#}");
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProducerPlan {
    /// The leader of `partitions`.
    pub addr: String,
    pub topic: String,
    /// The partitions this producer writes to, ascending: all of the topic's
    /// against one broker, those its leader leads against a cluster.
    pub partitions: Vec<i32>,
    /// The topic's partition count: a key's partition is key % this.
    pub topic_partitions: i32,
    pub message_bytes: usize,
    /// This producer's share of the message count, if counted.
    pub messages: Option<u64>,
    pub deadline: Option<Instant>,
    pub batch_bytes: usize,
    /// The topic's `max.message.bytes`: no batch is built larger.
    pub max_message_bytes: usize,
    pub linger: Duration,
    pub codec: Codec,
    pub acks: i16,
    pub keys: Keys,
    /// Open-loop rate for this producer (messages per second).
    pub rate: Option<f64>,
    pub max_inflight: usize,
    pub seed: u64,
}

/// A batch being built for one partition, and when its messages were due.
struct Pending {
    builder: BatchBuilder,
    first_due: Option<Instant>,
    last_due: Instant,
}

/// A sent batch, for latency accounting.
struct Sent {
    first_due: Instant,
    last_due: Instant,
    messages: u64,
    bytes: u64,
    /// Uncompressed record bytes the batch held while open.
    wire_bytes: usize,
}

/// Largest produce request the generator builds (Kafka's max.request.size is
/// 1 MiB by default; brokers accept up to socket.request.max.bytes).
const MAX_REQUEST_BYTES: usize = 16 << 20;

pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// One producer: generates messages into per-partition batches (sticky
/// partitioner, or by key) and sends them with up to `max_inflight` Produce
/// requests in flight. A batch is full when the next record would take it
/// past `batch_bytes` or the topic's `max.message.bytes`; when the next
/// message's batch is full and no request slot is free, it waits for a slot.
pub async fn run_producer(plan: ProducerPlan, shared: Arc<Shared>, stats: ThreadStats) -> Result<()> {
    let conn = Rc::new(Conn::connect(&plan.addr).await?);
    let inflight = Rc::new(Semaphore::new(plan.max_inflight as u64));
    let cap = plan.batch_bytes.min(crate::batch::record_budget(plan.max_message_bytes, plan.codec));
    let mut pending: Vec<Pending> = plan
        .partitions
        .iter()
        .map(|_| Pending {
            builder: BatchBuilder::new(cap + plan.message_bytes + MAX_RECORD_OVERHEAD),
            first_due: None,
            last_due: shared.started,
        })
        .collect();
    let mut rng = plan.seed | 1;
    let mut value = vec![0u8; plan.message_bytes];
    for b in value.iter_mut() {
        *b = xorshift(&mut rng) as u8;
    }
    let key_bytes = match plan.keys {
        Keys::None => 0,
        Keys::Random => 8,
        Keys::Cardinality(n) => format!("key-{n}").len(),
    };
    let full = |p: &Pending| !p.builder.fits(key_bytes, plan.message_bytes, cap);
    let mut generated: u64 = 0;
    // Record bytes sitting in open batches, bounded by the buffer cap.
    let mut buffered: usize = 0;
    let buffer_cap = plan.max_inflight.max(2) * cap;
    let mut sticky = (plan.seed as usize) % pending.len();
    let start = Instant::now();
    // Open loop: message k is due k * this many nanoseconds after `start`.
    let due_step_ns = plan.rate.map(|rate| 1e9 / rate);
    while !shared.stopping() {
        // The clocks are read once per step, not per message: on this kind of
        // VM a read costs 40-60 ns, a quarter of the generator's CPU when it
        // was taken per message. Each message is still stamped with its due time.
        let now = Instant::now();
        let now_wall_us = now_us();
        let elapsed_ns = (now - start).as_nanos() as u64;
        let out_of_time = plan.deadline.is_some_and(|d| now >= d);
        let out_of_messages = plan.messages.is_some_and(|n| generated >= n);
        let finishing = out_of_time || out_of_messages;
        // Open loop: the messages due by now; closed loop: as many as fit.
        let due_total = match due_step_ns {
            // Message k is due at k / rate: messages 0..=floor(elapsed * rate) are due.
            Some(step) => (elapsed_ns as f64 / step) as u64 + 1,
            None => u64::MAX,
        };
        // Generate until a batch fills (then try to send it), the next
        // message's batch is full (`blocked`), or nothing is due.
        let (mut filled, mut blocked) = (false, false);
        while !finishing && !filled && generated < due_total && plan.messages.is_none_or(|n| generated < n) {
            let due_ns = due_step_ns.map_or(elapsed_ns, |step| due_after_ns(step, generated).min(elapsed_ns));
            let due = start + Duration::from_nanos(due_ns);
            let (slot, key) = choose_partition(&plan, &mut rng, &mut sticky, &pending, full);
            let p = &mut pending[slot];
            if full(p) {
                blocked = true;
                break;
            }
            let sent_at_us = now_wall_us - ((elapsed_ns - due_ns) / 1000) as i64;
            if value.len() >= 8 {
                value[..8].copy_from_slice(&sent_at_us.to_be_bytes());
            }
            let before = p.builder.bytes();
            p.builder.push(sent_at_us / 1000, key.as_deref(), &value);
            p.first_due.get_or_insert(due);
            p.last_due = due;
            buffered += p.builder.bytes() - before;
            generated += 1;
            filled = full(p);
        }
        let ready: Vec<usize> = (0..pending.len())
            .filter(|&i| {
                let p = &pending[i];
                !p.builder.is_empty() && (finishing || full(p) || p.first_due.is_some_and(|d| now - d >= plan.linger))
            })
            .collect();
        if ready.is_empty() {
            if finishing {
                break;
            }
            let until_full = (plan.keys == Keys::None).then(|| {
                let room = cap.saturating_sub(pending[sticky].builder.bytes());
                (room / (plan.message_bytes + MAX_RECORD_OVERHEAD)) as u64 + 1
            });
            glommio::timer::sleep(next_wake(&plan, due_step_ns, start, generated, &pending, until_full)).await;
            continue;
        }
        // Send when a slot is free; while none is, keep filling other
        // partitions' batches up to the buffer cap, then wait for a slot.
        let permit = match inflight.clone().try_acquire_static_permit(1) {
            Ok(permit) => permit,
            Err(_) if !finishing && !blocked && buffered < buffer_cap => {
                if plan.rate.is_some() || plan.keys != Keys::None {
                    glommio::timer::sleep(GENERATE_STEP).await;
                }
                continue;
            }
            Err(_) => inflight.clone().acquire_static_permit(1).await.map_err(|e| anyhow::anyhow!("{e}"))?,
        };
        if shared.stopping() {
            break; // what is buffered is dropped: the phase is over
        }
        let (request, sent) = build_request(&plan, &mut pending, &ready)?;
        buffered -= sent.iter().map(|b| b.wire_bytes).sum::<usize>();
        let (conn, stats, shared) = (conn.clone(), stats.clone(), shared.clone());
        let acks = plan.acks;
        glommio::spawn_local(async move {
            let result = conn.send(ApiKey::Produce, 9, &request, acks != 0).await;
            let done = Instant::now();
            account_produce(result, &sent, done, &stats, &shared);
            drop(permit);
        })
        .detach();
    }
    let _all = inflight.acquire_permit(plan.max_inflight as u64).await;
    Ok(())
}

/// Counts a Produce response: its batches' latencies and messages, or an error.
fn account_produce(result: Result<Option<Bytes>>, sent: &[Sent], done: Instant, stats: &ThreadStats, shared: &Shared) {
    let ok = match result {
        Ok(Some(mut body)) => ProduceResponse::decode(&mut body, 9).and_then(|r| {
            r.responses.iter().flat_map(|t| &t.partition_responses).try_for_each(|p| check(p.error_code, "produce"))
        }),
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    let mut stats = stats.borrow_mut();
    if let Err(e) = ok {
        stats.errors += 1;
        shared.fail("produce", &e);
        return;
    }
    let at = done - shared.started;
    for batch in sent {
        record_batch_latency(&mut stats, at, done, batch);
        stats.count(at, batch.messages, batch.bytes);
        shared.done.fetch_add(batch.messages, Ordering::Relaxed);
        shared.produced.fetch_add(batch.messages, Ordering::Relaxed);
    }
    stats.flush_live(&shared.live, false);
}

/// The partition slot the next message goes to (and its key). Without
/// keys, sticky: one batch until it is full, then the next that is not.
/// With keys, a key whose partition (key % the topic's partitions) is one of
/// this producer's, drawn uniformly among those.
fn choose_partition(
    plan: &ProducerPlan,
    rng: &mut u64,
    sticky: &mut usize,
    pending: &[Pending],
    full: impl Fn(&Pending) -> bool,
) -> (usize, Option<Vec<u8>>) {
    match plan.keys {
        Keys::None => {
            if full(&pending[*sticky]) {
                *sticky = (0..pending.len())
                    .map(|i| (*sticky + 1 + i) % pending.len())
                    .find(|&i| !full(&pending[i]))
                    .unwrap_or(*sticky);
            }
            (*sticky, None)
        }
        Keys::Random => {
            let (slot, key) = random_key(xorshift(rng), &plan.partitions, plan.topic_partitions);
            (slot, Some(key.to_be_bytes().to_vec()))
        }
        Keys::Cardinality(n) => {
            let (slot, k) = counted_key(xorshift(rng), n, &plan.partitions, plan.topic_partitions);
            (slot, Some(format!("key-{k}").into_bytes()))
        }
    }
}

/// A random key (from `x`) of one of `mine` (ascending partitions of a
/// topic of `total`), and its slot in `mine`; `x` itself when `mine` is the
/// whole topic.
fn random_key(x: u64, mine: &[i32], total: i32) -> (usize, u64) {
    let total = total as u64;
    if mine.len() as u64 == total {
        return ((x % total) as usize, x);
    }
    let slot = (x % mine.len() as u64) as usize;
    let base = x >> 1;
    (slot, base - base % total + mine[slot] as u64)
}

/// How many of the keys 0..`n` fall in `mine` (ascending partitions of a
/// topic of `total`; key k in partition k % total).
pub fn keys_of(n: u64, mine: &[i32], total: i32) -> u64 {
    let total = total as u64;
    let (rows, rest) = (n / total, n % total);
    rows * mine.len() as u64 + mine.iter().filter(|&&p| (p as u64) < rest).count() as u64
}

/// One of the keys 0..`n` that fall in `mine`, drawn uniformly from `x`, and
/// its slot in `mine`; `x % n` when `mine` is the whole topic (as the keys
/// of a single broker's run were always drawn).
fn counted_key(x: u64, n: u64, mine: &[i32], total: i32) -> (usize, u64) {
    let n = n.max(1);
    let (width, total) = (mine.len() as u64, total as u64);
    let Some(j) = x.checked_rem(keys_of(n, mine, total as i32)) else {
        // No key of the topic lands here (plans give such producers no work).
        let k = x % n;
        return ((k % width) as usize, k);
    };
    let rows = n / total;
    if j < rows * width {
        let slot = (j % width) as usize;
        (slot, (j / width) * total + mine[slot] as u64)
    } else {
        // The last, partial row: the first partitions of `mine` (ascending).
        let slot = (j - rows * width) as usize;
        (slot, rows * total + mine[slot] as u64)
    }
}

/// Open loop: when message `k` is due, in nanoseconds after the start, at
/// `step_ns` nanoseconds per message.
fn due_after_ns(step_ns: f64, k: u64) -> u64 {
    (k as f64 * step_ns) as u64
}

/// Open loop: the shortest sleep between generation steps (each message is
/// still stamped with its own due time). A wake-up per due message cost the
/// generator half a core of timer syscalls at 200 k msgs/s, taken from the
/// broker it measures.
const GENERATE_STEP: Duration = Duration::from_micros(100);

/// How long to sleep when nothing is ready. Open loop: messages are only
/// generated when a batch must go, since none is sent before: when the
/// oldest open batch reaches its linger, when the batch being filled would
/// be full (`until_full` more messages, if known), or when the batch the next
/// message opens would reach its linger; at least [`GENERATE_STEP`] apart.
/// Each wake-up of the generator's thread is CPU the broker it shares the
/// cores with does not get (every 100 us, they cost a tenth of a core).
/// Closed loop: until the oldest open batch reaches its linger. At most 1 ms.
fn next_wake(
    plan: &ProducerPlan,
    due_step_ns: Option<f64>,
    start: Instant,
    generated: u64,
    pending: &[Pending],
    until_full: Option<u64>,
) -> Duration {
    let now = Instant::now();
    let mut wake = now + Duration::from_millis(1);
    if let Some(step) = due_step_ns {
        let due = |k: u64| start + Duration::from_nanos(due_after_ns(step, k));
        let mut at = due(generated) + plan.linger;
        if let Some(n) = until_full {
            at = at.min(due(generated + n));
        }
        wake = wake.min(at.max(now + GENERATE_STEP));
    }
    for p in pending {
        if let Some(first) = p.first_due {
            wake = wake.min(first + plan.linger);
        }
    }
    wake.saturating_duration_since(now).max(Duration::from_micros(20))
}

fn build_request(plan: &ProducerPlan, pending: &mut [Pending], ready: &[usize]) -> Result<(ProduceRequest, Vec<Sent>)> {
    let mut topic = TopicProduceData::default();
    topic.name = TopicName(StrBytes::from_string(plan.topic.clone()));
    let mut sent = Vec::with_capacity(ready.len());
    let mut request_bytes = 0;
    for &i in ready {
        let p = &mut pending[i];
        if request_bytes > 0 && request_bytes + p.builder.bytes() > MAX_REQUEST_BYTES {
            break; // the rest go in the next request
        }
        request_bytes += p.builder.bytes();
        let wire_bytes = p.builder.bytes();
        let messages = p.builder.len() as u64;
        let bytes = (messages as usize * plan.message_bytes) as u64;
        let batch = p.builder.finish(plan.codec)?;
        sent.push(Sent {
            wire_bytes,
            first_due: p.first_due.take().unwrap_or_else(Instant::now),
            last_due: p.last_due,
            messages,
            bytes,
        });
        let mut data = PartitionProduceData::default();
        data.index = plan.partitions[i];
        data.records = Some(batch);
        topic.partition_data.push(data);
    }
    let mut request = ProduceRequest::default();
    request.acks = plan.acks;
    request.timeout_ms = 30_000;
    request.topic_data = vec![topic];
    Ok((request, sent))
}

/// Latency from each message's due time (not its send time, so a stalled
/// broker cannot hide behind a stalled generator), sampled at eight points
/// across the batch.
fn record_batch_latency(stats: &mut WorkerStats, at: Duration, done: Instant, batch: &Sent) {
    const POINTS: u64 = 8;
    let points = POINTS.min(batch.messages).max(1);
    let span = batch.last_due.saturating_duration_since(batch.first_due);
    for i in 0..points {
        let due = batch.first_due + span.mul_f64((i as f64 + 0.5) / points as f64);
        let n = batch.messages / points + u64::from(i < batch.messages % points);
        stats.latency(at, done.saturating_duration_since(due).as_micros() as u64, n);
    }
}

#[derive(Clone, Debug)]
pub struct ConsumerPlan {
    /// The broker the run's admin requests go to (group members find their
    /// coordinator through it).
    pub addr: String,
    pub topic: String,
    /// (partition, first offset to read).
    pub partitions: Vec<(i32, i64)>,
    /// The address of each partition's leader (indexed by partition): each
    /// partition is fetched from there.
    pub leaders: Arc<Vec<String>>,
    /// Stop once all consumers together received this many messages.
    pub stop_at_total: Option<u64>,
    /// e2e: measure latency from the send time stamped in each value.
    pub measure_latency: bool,
    pub fetch_max_bytes: i32,
    pub partition_max_bytes: i32,
    /// Payload size, for MB/s (the same workload produced the data).
    pub message_bytes: usize,
}

/// A consumer's connections: one to each leader it fetches from.
pub struct Fetcher {
    conns: Vec<(String, Conn)>,
}

impl Fetcher {
    /// Connects to each of `addresses` (once each).
    pub async fn connect<'a>(addresses: impl IntoIterator<Item = &'a str>) -> Result<Fetcher> {
        let mut conns: Vec<(String, Conn)> = Vec::new();
        for addr in addresses {
            if !conns.iter().any(|(a, _)| a == addr) {
                conns.push((addr.to_string(), Conn::connect(addr).await?));
            }
        }
        Ok(Fetcher { conns })
    }

    /// Connects to the leaders of `partitions`.
    pub async fn for_partitions(plan: &ConsumerPlan, partitions: &[(i32, i64)]) -> Result<Fetcher> {
        Fetcher::connect(partitions.iter().map(|(p, _)| plan.leaders[*p as usize].as_str())).await
    }

    /// The connection to the leader of `partition`.
    fn index_of(&self, plan: &ConsumerPlan, partition: i32) -> Result<usize> {
        let addr = &plan.leaders[partition as usize];
        self.conns
            .iter()
            .position(|(a, _)| a == addr)
            .ok_or_else(|| anyhow::anyhow!("no connection to {addr}, the leader of partition {partition}"))
    }
}

pub async fn run_consumer(plan: ConsumerPlan, shared: Arc<Shared>, stats: ThreadStats) -> Result<()> {
    let fetcher = Fetcher::for_partitions(&plan, &plan.partitions).await?;
    let mut offsets = plan.partitions.clone();
    let mut idle_after_producers = 0;
    while !shared.stopping() {
        if plan.stop_at_total.is_some_and(|n| shared.done.load(Ordering::Relaxed) >= n) {
            break;
        }
        let got = fetch_round(&fetcher, &plan, &mut offsets, &stats, &shared).await?;
        if got > 0 {
            idle_after_producers = 0;
        } else if shared.producers_finished.load(Ordering::Acquire) {
            idle_after_producers += 1;
            if idle_after_producers >= 5 {
                break; // drained
            }
        }
    }
    Ok(())
}

/// One Fetch of every partition in `offsets` (partition, next offset), from
/// its leader (one request per leader, all in flight at once, each response
/// taken as it arrives), advanced past what arrived; returns the messages
/// received.
pub async fn fetch_round(
    fetcher: &Fetcher,
    plan: &ConsumerPlan,
    offsets: &mut [(i32, i64)],
    stats: &ThreadStats,
    shared: &Shared,
) -> Result<u64> {
    if offsets.is_empty() {
        glommio::timer::sleep(Duration::from_millis(100)).await;
        return Ok(0);
    }
    let mut by_leader: Vec<Vec<(i32, i64)>> = fetcher.conns.iter().map(|_| Vec::new()).collect();
    for &(partition, offset) in offsets.iter() {
        by_leader[fetcher.index_of(plan, partition)?].push((partition, offset));
    }
    let mut in_flight: FuturesUnordered<_> = by_leader
        .iter()
        .zip(&fetcher.conns)
        .filter(|(wanted, _)| !wanted.is_empty())
        .map(|(wanted, (_, conn))| {
            let request = fetch_request(plan, wanted);
            async move { conn.call::<_, FetchResponse>(ApiKey::Fetch, 12, &request).await }
        })
        .collect();
    let mut got = 0;
    while let Some(response) = in_flight.next().await {
        got += absorb(plan, &response?, offsets, stats, shared)?;
    }
    Ok(got)
}

/// Takes in one Fetch response: counts its messages (and their latency),
/// advances `offsets`; returns the messages received.
fn absorb(
    plan: &ConsumerPlan,
    response: &FetchResponse,
    offsets: &mut [(i32, i64)],
    stats: &ThreadStats,
    shared: &Shared,
) -> Result<u64> {
    let received_us = now_us();
    let since_start = shared.started.elapsed();
    let mut stats = stats.borrow_mut();
    let mut got = 0u64;
    for topic in &response.responses {
        for part in &topic.partitions {
            if part.error_code != 0 {
                check(part.error_code, &format!("fetch of partition {}", part.partition_index))?;
            }
            let Some(slot) = offsets.iter_mut().find(|(p, _)| *p == part.partition_index) else {
                continue;
            };
            let data: Bytes = part.records.clone().unwrap_or_default();
            for_each_batch(&data, |batch, records| {
                let next = batch.base_offset + batch.last_offset_delta as i64 + 1;
                if next <= slot.1 {
                    return; // before the fetch offset
                }
                slot.1 = next;
                got += batch.records as u64;
                if plan.measure_latency {
                    consume_latency(&mut stats, since_start, batch, records, received_us);
                }
            });
        }
    }
    if got > 0 {
        shared.first_data_us.fetch_min(since_start.as_micros() as u64, Ordering::Relaxed);
        stats.count(since_start, got, got * plan.message_bytes as u64);
        stats.flush_live(&shared.live, false);
        shared.done.fetch_add(got, Ordering::Relaxed);
    }
    Ok(got)
}

fn consume_latency(
    stats: &mut WorkerStats,
    at: Duration,
    batch: &crate::batch::BatchSummary,
    records: &[u8],
    received_us: i64,
) {
    if batch.compressed {
        let latency_us = (received_us - batch.max_timestamp * 1000).max(0) as u64;
        stats.latency(at, latency_us, batch.records as u64);
        return;
    }
    for_each_record(records, |ts_delta, value| {
        let sent_us = if value.len() >= 8 {
            i64::from_be_bytes(value[..8].try_into().unwrap())
        } else {
            (batch.first_timestamp + ts_delta) * 1000
        };
        stats.latency(at, (received_us - sent_us).max(0) as u64, 1);
    });
}

fn fetch_request(plan: &ConsumerPlan, offsets: &[(i32, i64)]) -> FetchRequest {
    let mut topic = fetch_request::FetchTopic::default();
    topic.topic = TopicName(StrBytes::from_string(plan.topic.clone()));
    topic.partitions = offsets
        .iter()
        .map(|&(partition, offset)| {
            let mut p = fetch_request::FetchPartition::default();
            p.partition = partition;
            p.fetch_offset = offset;
            p.partition_max_bytes = plan.partition_max_bytes;
            p.current_leader_epoch = -1;
            p.log_start_offset = -1;
            p
        })
        .collect();
    let mut request = FetchRequest::default();
    request.replica_id = BrokerId(-1);
    request.max_wait_ms = 100;
    request.min_bytes = 1;
    request.max_bytes = plan.fetch_max_bytes;
    request.session_epoch = -1;
    request.topics = vec![topic];
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_the_whole_topic_are_drawn_as_before() {
        let all: Vec<i32> = (0..8).collect();
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..10_000 {
            let r = xorshift(&mut x);
            assert_eq!(random_key(r, &all, 8), ((r % 8) as usize, r));
            for n in [1, 3, 8, 100, 10_000] {
                let k = r % n;
                assert_eq!(counted_key(r, n, &all, 8), ((k % 8) as usize, k));
            }
        }
    }

    #[test]
    fn keys_of_a_subset_land_in_it_and_cover_it() {
        let mine = [1, 4, 6];
        for n in [2, 5, 7, 8, 9, 100] {
            let expected: Vec<u64> = (0..n).filter(|k| mine.contains(&((k % 8) as i32))).collect();
            assert_eq!(keys_of(n, &mine, 8), expected.len() as u64, "n {n}");
            let mut seen = std::collections::BTreeSet::new();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for _ in 0..5_000 {
                let (slot, k) = counted_key(xorshift(&mut x), n, &mine, 8);
                assert!(k < n && (k % 8) as i32 == mine[slot], "n {n}: key {k} in slot {slot}");
                seen.insert(k);
            }
            assert_eq!(seen.into_iter().collect::<Vec<_>>(), expected, "n {n}: every key drawn");
        }
        let mut x = 7u64;
        for _ in 0..5_000 {
            let (slot, k) = random_key(xorshift(&mut x), &mine, 8);
            assert_eq!((k % 8) as i32, mine[slot]);
        }
    }
}
