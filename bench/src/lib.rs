//! `spate bench`: a load generator for any Kafka-compatible broker. It speaks
//! the protocol itself (glommio + the `kafka-protocol` crate, not librdkafka)
//! so that the client is not the bottleneck, and measures throughput and
//! latency (HDR histograms, corrected for coordinated omission).

pub mod batch;
pub mod conn;
pub mod group;
pub mod plot;
pub mod probe;
pub mod stats;
pub mod workers;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kafka_protocol::messages::{
    create_topics_request, list_offsets_request, ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse,
    ListOffsetsRequest, ListOffsetsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use batch::Codec;
use conn::Conn;
use stats::{PhaseReport, Progress, WorkerStats};
use workers::{ConsumerPlan, Keys, ProducerPlan, Shared};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct BenchArgs {
    /// produce, consume, e2e, all (produce; consume what was produced; e2e at
    /// half the produce rate), or commit (OffsetCommit requests per second).
    #[arg(default_value = "all")]
    pub mode: String,
    /// many-producers (64), keyed (10,000 keys), acks-all, many-partitions (1,000).
    #[arg(long)]
    pub preset: Option<String>,
    #[arg(long)]
    pub message_bytes: Option<usize>,
    /// Messages to send (per phase); default 5,000,000 unless --duration-secs.
    #[arg(long)]
    pub messages: Option<u64>,
    #[arg(long)]
    pub duration_secs: Option<f64>,
    #[arg(long)]
    pub topic: Option<String>,
    #[arg(long)]
    pub partitions: Option<i32>,
    #[arg(long)]
    pub producers: Option<usize>,
    #[arg(long)]
    pub consumers: Option<usize>,
    #[arg(long)]
    pub batch_bytes: Option<usize>,
    #[arg(long)]
    pub linger_ms: Option<u64>,
    /// none, gzip, snappy, lz4, zstd
    #[arg(long)]
    pub compression: Option<String>,
    /// 0, 1 or all
    #[arg(long)]
    pub acks: Option<String>,
    /// none, random, or a number of distinct keys
    #[arg(long)]
    pub keys: Option<String>,
    /// Open-loop target rate, messages per second over all producers.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Produce requests in flight per producer.
    #[arg(long)]
    pub max_inflight: Option<usize>,
    /// Write every figure and the workload as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Draw throughput over time and the latency percentile curves as SVG.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Measure this directory's sequential O_DIRECT write rate first and
    /// report produce against it (the embedded broker's data directory by default).
    #[arg(long)]
    pub probe_disk: Option<std::path::PathBuf>,
    /// Seconds each probe (disk, loopback) runs.
    #[arg(long, default_value_t = 3.0)]
    pub probe_secs: f64,
    /// Consume through this consumer group (subscribe, not assign): the
    /// consumers join it, share the partitions and commit periodically.
    #[arg(long)]
    pub group: Option<String>,
    /// Group consumers commit this often.
    #[arg(long, default_value_t = 1000)]
    pub commit_interval_ms: u64,
}

/// The workload after presets and defaults.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub mode: String,
    pub broker: String,
    pub message_bytes: usize,
    pub messages: Option<u64>,
    pub duration_secs: Option<f64>,
    pub topic: String,
    pub partitions: i32,
    pub producers: usize,
    pub consumers: usize,
    pub batch_bytes: usize,
    pub linger_ms: u64,
    pub compression: Codec,
    pub acks: i16,
    pub keys: Keys,
    pub rate: Option<f64>,
    pub max_inflight: usize,
    pub worker_cores: Vec<usize>,
    pub group: Option<String>,
    pub commit_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: Workload,
    pub machine: Machine,
    pub phases: Vec<PhaseReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    /// The data directory's sequential O_DIRECT write rate, measured before the phases.
    pub disk: Option<probe::DiskProbe>,
    /// One loopback TCP stream's rate (when the broker is on this machine).
    pub network: Option<probe::NetworkProbe>,
}

impl BenchArgs {
    pub fn resolve(&self, broker: &str) -> Result<Workload> {
        let mut preset = BenchArgs::default();
        match self.preset.as_deref() {
            None => {}
            Some("many-producers") => preset.producers = Some(64),
            Some("keyed") => preset.keys = Some("10000".into()),
            Some("acks-all") => preset.acks = Some("all".into()),
            Some("many-partitions") => preset.partitions = Some(1000),
            Some(other) => {
                bail!("unknown preset {other:?} (many-producers, keyed, acks-all, many-partitions)")
            }
        }
        let cores = worker_cores();
        let acks = match self.acks.as_deref().or(preset.acks.as_deref()).unwrap_or("1") {
            "all" | "-1" => -1,
            "1" => 1,
            "0" => 0,
            other => bail!("acks must be 0, 1 or all, not {other:?}"),
        };
        let keys = match self.keys.as_deref().or(preset.keys.as_deref()).unwrap_or("none") {
            "none" => Keys::None,
            "random" => Keys::Random,
            n => Keys::Cardinality(n.parse().context("--keys takes none, random or a number")?),
        };
        let duration_secs = self.duration_secs;
        let messages = self.messages.or(if duration_secs.is_none() { Some(5_000_000) } else { None });
        let workload = Workload {
            mode: self.mode.clone(),
            broker: broker.to_string(),
            message_bytes: self.message_bytes.unwrap_or(100),
            messages,
            duration_secs,
            topic: self.topic.clone().unwrap_or_else(|| "spate-bench".into()),
            partitions: self.partitions.or(preset.partitions).unwrap_or(8),
            producers: self.producers.or(preset.producers).unwrap_or(cores.len()),
            consumers: self.consumers.unwrap_or(cores.len()),
            batch_bytes: self.batch_bytes.unwrap_or(256 << 10),
            linger_ms: self.linger_ms.unwrap_or(5),
            compression: Codec::parse(self.compression.as_deref().unwrap_or("none"))?,
            acks,
            keys,
            rate: self.rate,
            max_inflight: self.max_inflight.unwrap_or(8),
            worker_cores: cores,
            group: self.group.clone(),
            commit_interval_ms: self.commit_interval_ms.max(1),
        };
        if workload.partitions < 1 || workload.producers < 1 || workload.consumers < 1 || workload.message_bytes < 1 {
            bail!("partitions, producers, consumers and message bytes must be at least 1");
        }
        if !["produce", "consume", "e2e", "all", "commit"].contains(&workload.mode.as_str()) {
            bail!("mode must be produce, consume, e2e, all or commit");
        }
        Ok(workload)
    }
}

fn worker_cores() -> Vec<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n).collect()
}

/// Runs the benchmark against `broker` and prints, writes and returns the report.
pub fn run(args: &BenchArgs, broker: &str) -> Result<Report> {
    let w = args.resolve(broker)?;
    let machine = probe_machine(args, broker)?;
    let setup = w.clone();
    on_thread(move || ensure_topic(setup))?;
    let mut phases = Vec::new();
    match w.mode.as_str() {
        "produce" => phases.push(produce_phase("produce", &w, w.rate, !args.quiet)?),
        "consume" => {
            let target = w.messages.unwrap_or(5_000_000);
            phases.push(produce_phase("fill", &w, None, !args.quiet)?);
            phases.push(consume_phase(&w, target, !args.quiet)?);
        }
        "e2e" => phases.push(e2e_phase(&w, w.rate, !args.quiet)?),
        "commit" => phases.push(commit_phase(&w, !args.quiet)?),
        _ => {
            let produced = produce_phase("produce", &w, w.rate, !args.quiet)?;
            let half_rate = w.rate.unwrap_or(produced.msgs_per_sec) / 2.0;
            let consumed = consume_phase(&w, produced.messages, !args.quiet)?;
            phases.push(produced);
            phases.push(consumed);
            let e2e = Workload { messages: None, duration_secs: Some(w.duration_secs.unwrap_or(5.0)), ..w.clone() };
            phases.push(e2e_phase(&e2e, Some(half_rate), !args.quiet)?);
        }
    }
    let report = Report { workload: w, machine, phases };
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "spate bench: {} x {} B, {} partitions, acks {}",
            report.workload.mode, report.workload.message_bytes, report.workload.partitions, report.workload.acks
        );
        std::fs::write(path, plot::svg(&title, &report.phases))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// Cores, kernel, and the probes: the disk when asked, loopback when the
/// broker is on this machine.
fn probe_machine(args: &BenchArgs, broker: &str) -> Result<Machine> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let disk = match &args.probe_disk {
        Some(dir) => {
            eprintln!("probing {} for {} s (sequential O_DIRECT writes)", dir.display(), args.probe_secs);
            Some(probe::probe_disk(dir, args.probe_secs)?)
        }
        None => None,
    };
    let local = broker.starts_with("127.") || broker.starts_with("localhost") || broker.starts_with("[::1]");
    let network = if local { Some(probe::probe_loopback(args.probe_secs.min(1.0))?) } else { None };
    Ok(Machine { cores: worker_cores().len(), kernel, disk, network })
}

fn print_report(report: &Report) {
    let w = &report.workload;
    println!(
        "\nspate bench — {} against {}: {} B messages, {} partitions, {} producers, {} consumers, acks {}, {:?}, batch {} B, linger {} ms{}",
        w.mode,
        w.broker,
        w.message_bytes,
        w.partitions,
        w.producers,
        w.consumers,
        w.acks,
        w.compression,
        w.batch_bytes,
        w.linger_ms,
        w.rate.map(|r| format!(", rate {r:.0}/s")).unwrap_or_default()
    );
    let machine = &report.machine;
    if let Some(disk) = &machine.disk {
        println!(
            "device    {:>9.0} MiB/s sequential O_DIRECT writes to {}",
            disk.write_mib_per_sec,
            disk.dir.display()
        );
    }
    if let Some(network) = &machine.network {
        println!("loopback  {:>9.0} MiB/s one TCP stream", network.loopback_mib_per_sec);
    }
    for phase in &report.phases {
        phase.print();
        let mib_per_sec = phase.bytes as f64 / phase.seconds / (1 << 20) as f64;
        if let (Some(disk), true) = (&machine.disk, ["produce", "fill"].contains(&phase.phase.as_str())) {
            let share = 100.0 * mib_per_sec / disk.write_mib_per_sec;
            println!(
                "{:<9} {mib_per_sec:.0} MiB/s = {share:.0}% of the device's {:.0} MiB/s",
                "", disk.write_mib_per_sec
            );
        }
        if let Some(network) = &machine.network {
            let share = 100.0 * mib_per_sec / network.loopback_mib_per_sec;
            println!("{:<9} {share:.0}% of one loopback stream", "");
        }
    }
}

/// Runs one future on a fresh executor thread and returns its output.
pub(crate) fn on_thread<T, F, Fut>(make: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>> + 'static,
{
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(64 << 10)
        .spawn(make)
        .map_err(|e| anyhow::anyhow!("starting executor: {e}"))?;
    handle.join().map_err(|e| anyhow::anyhow!("executor failed: {e:?}"))?
}

async fn ensure_topic(w: Workload) -> Result<()> {
    let conn = Conn::connect(&w.broker).await?;
    let mut topic = create_topics_request::CreatableTopic::default();
    topic.name = TopicName(StrBytes::from_string(w.topic.clone()));
    topic.num_partitions = w.partitions;
    topic.replication_factor = -1;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![topic];
    req.timeout_ms = 60_000;
    let resp: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, 5, &req).await?;
    let code = resp.topics.first().map_or(0, |t| t.error_code);
    if code != 0 && code != 36 {
        conn::check(code, "creating the bench topic")?;
    }
    Ok(())
}

/// Latest (-1) or earliest (-2) offsets of every partition.
async fn offsets(w: &Workload, which: i64) -> Result<Vec<(i32, i64)>> {
    let conn = Conn::connect(&w.broker).await?;
    let mut topic = list_offsets_request::ListOffsetsTopic::default();
    topic.name = TopicName(StrBytes::from_string(w.topic.clone()));
    topic.partitions = (0..w.partitions)
        .map(|p| {
            let mut part = list_offsets_request::ListOffsetsPartition::default();
            part.partition_index = p;
            part.timestamp = which;
            part.current_leader_epoch = -1;
            part
        })
        .collect();
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.topics = vec![topic];
    let resp: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, 7, &req).await?;
    let mut out = Vec::new();
    for t in resp.topics {
        for p in t.partitions {
            conn::check(p.error_code, "list offsets")?;
            out.push((p.partition_index, p.offset));
        }
    }
    Ok(out)
}

/// Worker tasks spread over pinned executor threads (at most one per core).
struct Group {
    handles: Vec<glommio::ExecutorJoinHandle<Result<WorkerStats>>>,
    running: Arc<AtomicUsize>,
}

impl Group {
    fn start<F, Fut>(tasks: usize, cores: &[usize], make: F) -> Result<Group>
    where
        F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Result<WorkerStats>> + 'static,
    {
        let threads = tasks.min(cores.len()).max(1);
        let running = Arc::new(AtomicUsize::new(threads));
        let mut handles = Vec::with_capacity(threads);
        for (t, &core) in cores.iter().enumerate().take(threads) {
            let (make, running) = (make.clone(), running.clone());
            let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(core))
                .name(&format!("bench-{t}"))
                .io_memory(256 << 10)
                .spawn(move || async move {
                    let mine = (t..tasks).step_by(threads).map(&make);
                    let results = futures::future::join_all(mine).await;
                    running.fetch_sub(1, Ordering::Release);
                    let mut total = WorkerStats::new();
                    for r in results {
                        total.merge(&r?);
                    }
                    Ok(total)
                })
                .map_err(|e| anyhow::anyhow!("starting a bench thread: {e}"))?;
            handles.push(handle);
        }
        Ok(Group { handles, running })
    }

    fn running(&self) -> bool {
        self.running.load(Ordering::Acquire) > 0
    }

    fn join(self) -> Result<WorkerStats> {
        let mut total = WorkerStats::new();
        for h in self.handles {
            total.merge(&h.join().map_err(|e| anyhow::anyhow!("bench thread failed: {e:?}"))??);
        }
        Ok(total)
    }
}

fn new_shared() -> Arc<Shared> {
    Arc::new(Shared {
        started: Instant::now(),
        done: AtomicU64::new(0),
        producers_finished: AtomicBool::new(false),
        produced: AtomicU64::new(0),
        first_data_us: AtomicU64::new(u64::MAX),
    })
}

fn producer_plans(w: &Workload, rate: Option<f64>, started: Instant) -> Vec<ProducerPlan> {
    let per_producer =
        |total: u64, i: usize| total / w.producers as u64 + u64::from((i as u64) < total % w.producers as u64);
    (0..w.producers)
        .map(|i| ProducerPlan {
            addr: w.broker.clone(),
            topic: w.topic.clone(),
            partitions: (0..w.partitions).collect(),
            message_bytes: w.message_bytes,
            messages: w.messages.map(|n| per_producer(n, i)),
            deadline: w.duration_secs.map(|s| started + Duration::from_secs_f64(s)),
            batch_bytes: w.batch_bytes,
            linger: Duration::from_millis(w.linger_ms),
            codec: w.compression,
            acks: w.acks,
            keys: w.keys,
            rate: rate.map(|r| r / w.producers as f64),
            max_inflight: w.max_inflight,
            seed: 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1),
        })
        .collect()
}

fn watch(group: &Group, shared: &Shared, phase: &str, message_bytes: usize, progress: bool) {
    let mut line = Progress::new(progress);
    while group.running() {
        std::thread::sleep(Duration::from_millis(100));
        line.tick(phase, shared.done.load(Ordering::Relaxed), message_bytes as f64);
    }
    line.done();
}

fn produce_phase(name: &str, w: &Workload, rate: Option<f64>, progress: bool) -> Result<PhaseReport> {
    let shared = new_shared();
    let plans = producer_plans(w, rate, shared.started);
    let s = shared.clone();
    let group =
        Group::start(plans.len(), &w.worker_cores, move |i| workers::run_producer(plans[i].clone(), s.clone()))?;
    watch(&group, &shared, name, w.message_bytes, progress);
    let stats = group.join()?;
    Ok(PhaseReport::new(name, &stats, shared.started.elapsed()))
}

/// `target`: stop once all consumers together have this many messages.
fn consumer_plans(
    w: &Workload,
    starts: &[(i32, i64)],
    target: Option<u64>,
    measure_latency: bool,
) -> Vec<ConsumerPlan> {
    (0..w.consumers.min(starts.len()))
        .map(|c| ConsumerPlan {
            addr: w.broker.clone(),
            topic: w.topic.clone(),
            partitions: starts.iter().skip(c).step_by(w.consumers).copied().collect(),
            stop_at_total: target,
            measure_latency,
            fetch_max_bytes: 64 << 20,
            partition_max_bytes: 8 << 20,
            message_bytes: w.message_bytes,
        })
        .collect()
}

fn consume_phase(w: &Workload, target: u64, progress: bool) -> Result<PhaseReport> {
    let wc = w.clone();
    let starts = on_thread(move || async move { offsets(&wc, -2).await })?;
    let shared = new_shared();
    shared.producers_finished.store(true, Ordering::Release);
    let s = shared.clone();
    let group = match &w.group {
        None => {
            let plans = consumer_plans(w, &starts, Some(target), false);
            Group::start(plans.len(), &w.worker_cores, move |i| workers::run_consumer(plans[i].clone(), s.clone()))?
        }
        Some(name) => {
            // Every member may be assigned any partition: each knows every start.
            let plan = ConsumerPlan {
                partitions: starts.clone(),
                ..consumer_plans(w, &starts, Some(target), false)[0].clone()
            };
            let group = group::GroupPlan {
                group: name.clone(),
                partitions: w.partitions,
                commit_interval: Duration::from_millis(w.commit_interval_ms),
                session_timeout_ms: 30_000,
                heartbeat_interval: Duration::from_secs(3),
            };
            Group::start(w.consumers, &w.worker_cores, move |_| {
                group::run_group_consumer(plan.clone(), group.clone(), s.clone())
            })?
        }
    };
    watch(&group, &shared, "consume", w.message_bytes, progress);
    let stats = group.join()?;
    let mut elapsed = shared.started.elapsed();
    if w.group.is_some() {
        // As kafka-consumer-perf-test: the rate is over fetching, the join apart.
        let joined =
            Duration::from_micros(shared.first_data_us.load(Ordering::Relaxed).min(elapsed.as_micros() as u64));
        println!("consume   joined group {} in {:.2} s", w.group.as_deref().unwrap_or(""), joined.as_secs_f64());
        elapsed -= joined;
    }
    Ok(PhaseReport::new("consume", &stats, elapsed))
}

/// OffsetCommit load: `consumers` connections, each with `max_inflight`
/// commits in flight, one group per connection.
fn commit_phase(w: &Workload, progress: bool) -> Result<PhaseReport> {
    let shared = new_shared();
    let plans: Vec<group::CommitPlan> = (0..w.consumers)
        .map(|i| group::CommitPlan {
            addr: w.broker.clone(),
            group: format!("{}-{i}", w.group.as_deref().unwrap_or("spate-bench-commit")),
            topic: w.topic.clone(),
            partitions: w.partitions,
            commits: w.messages.map(|n| n / w.consumers as u64),
            deadline: w.duration_secs.map(|d| shared.started + Duration::from_secs_f64(d)),
            max_inflight: w.max_inflight,
        })
        .collect();
    let s = shared.clone();
    let group = Group::start(plans.len(), &w.worker_cores, move |i| group::run_committer(plans[i].clone(), s.clone()))?;
    watch(&group, &shared, "commit", 0, progress);
    let stats = group.join()?;
    Ok(PhaseReport::new("commit", &stats, shared.started.elapsed()))
}

fn e2e_phase(w: &Workload, rate: Option<f64>, progress: bool) -> Result<PhaseReport> {
    let wc = w.clone();
    let starts = on_thread(move || async move { offsets(&wc, -1).await })?;
    let shared = new_shared();
    let consumers = consumer_plans(w, &starts, None, true);
    let cs = shared.clone();
    let consumer_group = Group::start(consumers.len(), &w.worker_cores, move |i| {
        workers::run_consumer(consumers[i].clone(), cs.clone())
    })?;
    let producers = producer_plans(w, rate, shared.started);
    let producer_shared = new_shared();
    let ps = producer_shared.clone();
    let producer_group = Group::start(producers.len(), &w.worker_cores, move |i| {
        workers::run_producer(producers[i].clone(), ps.clone())
    })?;
    watch(&producer_group, &shared, "e2e", w.message_bytes, progress);
    let produced = producer_group.join()?;
    shared.producers_finished.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer_group.running()
        && shared.done.load(Ordering::Relaxed) < produced.messages
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let consumed = consumer_group.join()?;
    if consumed.messages < produced.messages {
        eprintln!("e2e: consumers received {} of {} messages", consumed.messages, produced.messages);
    }
    Ok(PhaseReport::new("e2e", &consumed, shared.started.elapsed()))
}
