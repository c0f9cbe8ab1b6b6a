//! `spate bench`: a load generator for any Kafka-compatible broker. It speaks
//! the protocol itself (glommio + the `kafka-protocol` crate, not librdkafka)
//! so that the client is not the bottleneck, and measures throughput and
//! latency (HDR histograms, corrected for coordinated omission).
//!
//! A run: flags → [`Workload`]; its own topic (unique unless `--topic`),
//! and where each of its partitions is led; the header line; the machine probes; the phases (each with a warm-up left
//! out of its figures); the topic deleted; the summary, JSON and SVG. Any
//! error fails the run (the caller exits non-zero); SIGINT or SIGTERM stops
//! it with partial results.
//!
//! Against a cluster (`--brokers a,b,c`), admin requests go to the first
//! address that answers, and every producer and consumer connection talks
//! to one partition leader about the partitions it leads, as Kafka clients
//! do; against one broker everything goes to it, as it always did.

pub mod admin;
pub mod batch;
pub mod conn;
pub mod group;
pub mod meta;
pub mod plot;
pub mod probe;
pub mod signals;
pub mod stats;
pub mod workers;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use batch::Codec;
use meta::Machine;
use stats::{LatencyPoint, PhaseReport, PhaseTiming, Progress, Warmup, WorkerStats};
use workers::{ConsumerPlan, Keys, ProducerPlan, Shared, ThreadStats};

/// The default linger of e2e phases (see `BenchArgs::linger_ms`).
const E2E_LINGER_MS: u64 = 1;

/// Every flag shows its default; presets override the defaults, flags given
/// explicitly override presets.
#[derive(clap::Args, Debug, Clone, Default, Serialize)]
pub struct BenchArgs {
    /// What to measure: produce; consume (fill the topic, then read back
    /// what this run wrote); e2e (produce and consume at once: latency from
    /// send to receipt); all (produce, produce again with acks=all unless
    /// --acks all was asked, consume what the first produced, then e2e-max:
    /// produce and consume at once as fast as they go, the rate e2e
    /// sustains, then e2e at half that rate, or at half --rate if given);
    /// commit (OffsetCommit requests per second).
    #[arg(default_value = "all")]
    pub mode: String,
    /// A preset workload: many-producers (64 producers), keyed (10,000
    /// keys), acks-all, many-partitions (1,000 partitions). [default: none]
    #[arg(long)]
    pub preset: Option<String>,
    /// Payload bytes per message. [default: 100]
    #[arg(long)]
    pub message_bytes: Option<usize>,
    /// Messages per phase. [default: 5000000, or no limit with --duration-secs]
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds per phase; with --messages, whichever ends first. [default:
    /// no limit; the e2e phase of `all` runs 5 s]
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Use this topic (created if missing, kept afterwards; data already in
    /// it is never counted). [default: a new topic spate-bench-<ms>-<pid>,
    /// deleted at the end]
    #[arg(long)]
    pub topic: Option<String>,
    /// Partitions of the topic the run creates. [default: 8; an existing
    /// --topic keeps its own count]
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Replication factor of the topic the run creates; -1 leaves it to the
    /// broker (its default.replication.factor). [default: -1; an existing
    /// --topic keeps its own]
    #[arg(long, allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Producer connections. [default: one per core]
    #[arg(long)]
    pub producers: Option<usize>,
    /// Consumer connections (group members with --group). [default: one per core]
    #[arg(long)]
    pub consumers: Option<usize>,
    /// Most record bytes per batch; clipped so that a batch never exceeds
    /// the topic's max.message.bytes. [default: 262144]
    #[arg(long)]
    pub batch_bytes: Option<usize>,
    /// Longest a batch waits to fill before it is sent. [default: 5; 1 in
    /// e2e and the e2e phase of all, where the wait would be most of the
    /// latency measured (as the OpenMessaging Benchmark's Kafka latency
    /// workloads)]
    #[arg(long)]
    pub linger_ms: Option<u64>,
    /// none, gzip, snappy, lz4 or zstd. [default: none]
    #[arg(long)]
    pub compression: Option<String>,
    /// How long a request may go unanswered before the run fails (as a Kafka
    /// client's request.timeout.ms; longer, for JoinGroup's 60 s rebalance).
    #[arg(long, default_value_t = 90_000)]
    pub request_timeout_ms: u64,
    /// 0, 1 or all (or -1): 0 expects no answer; 1 is answered once the
    /// leader wrote the batch; all once it is also fsynced (and on every
    /// in-sync replica). [default: 1; all with --preset acks-all]
    #[arg(long, allow_negative_numbers = true)]
    pub acks: Option<String>,
    /// none, random, or a number of distinct keys; keyed messages go to the
    /// partition of their key. [default: none]
    #[arg(long)]
    pub keys: Option<String>,
    /// Open-loop target rate, messages per second over all producers;
    /// latency counts from each message's intended send time. [default: none:
    /// closed loop, as fast as the broker answers]
    #[arg(long)]
    pub rate: Option<f64>,
    /// Produce requests in flight per producer. [default: 8]
    #[arg(long)]
    pub max_inflight: Option<usize>,
    /// Seconds at the start of each phase left out of its rates and latency
    /// figures; at most half of the phase (so short runs still measure their
    /// second half), rounded to 0.1 s.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Write the report as JSON: build, date, machine, broker config, every
    /// flag, and each phase's figures and series. [default: none]
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Draw an SVG with one panel per phase: throughput and latency over
    /// time, and the latency percentiles. [default: none]
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Measure this directory's sequential O_DIRECT write rate first and
    /// report produce against it. [default: the embedded broker's data
    /// directory; none against --brokers]
    #[arg(long)]
    pub probe_disk: Option<std::path::PathBuf>,
    /// Seconds each probe (disk, loopback) runs; loopback at most 1 s.
    #[arg(long, default_value_t = 3.0)]
    pub probe_secs: f64,
    /// Consume through this consumer group (subscribe, not assign): the
    /// consumers join it, share the partitions and commit periodically.
    /// [default: none]
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
    /// Effective: the requested size clipped to fit `max_message_bytes`.
    pub batch_bytes: usize,
    /// The topic's max.message.bytes (else the broker's message.max.bytes).
    pub max_message_bytes: usize,
    pub linger_ms: u64,
    /// The linger of e2e phases.
    pub e2e_linger_ms: u64,
    pub compression: Codec,
    pub acks: i16,
    pub keys: Keys,
    pub rate: Option<f64>,
    pub max_inflight: usize,
    pub warmup_secs: f64,
    pub worker_cores: Vec<usize>,
    pub group: Option<String>,
    pub commit_interval_ms: u64,
}

/// Where the broker is; an embedded broker also gives the config it runs.
pub struct Target {
    /// host:port, or a comma-separated list of a cluster's brokers.
    pub address: String,
    pub embedded_config: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokerInfo {
    pub address: String,
    pub embedded: bool,
    /// The embedded broker's Config, or an external broker's DescribeConfigs
    /// (best effort: `{"error": ...}` when it does not answer).
    pub config: serde_json::Value,
    /// The run created its topic (and deletes it at the end unless it was
    /// named with --topic).
    pub topic_created: bool,
    pub topic_deleted: bool,
    /// Against a cluster (several addresses given, or several brokers in
    /// Metadata): its brokers and where the topic's partitions are led.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterInfo {
    /// The addresses given with --brokers.
    pub addresses: Vec<String>,
    /// The one the admin requests went to: the first that answered.
    pub admin: String,
    /// Node id to host:port, as Metadata lists the brokers.
    pub nodes: BTreeMap<i32, String>,
    /// The topic's replication factor (the fewest replicas of any partition).
    pub replication_factor: usize,
    /// The leader's node id of each partition (indexed by partition).
    pub leaders: Vec<i32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub spate: meta::Build,
    /// When the run started, RFC 3339 UTC.
    pub date: String,
    /// Stopped by a signal: the phases cover what ran.
    pub partial: bool,
    pub interrupted_by: Option<&'static str>,
    /// Over every phase; any makes the run fail.
    pub errors: u64,
    /// Every flag as given (defaults filled in by clap).
    pub flags: BenchArgs,
    pub workload: Workload,
    pub broker: BrokerInfo,
    pub machine: Machine,
    pub phases: Vec<PhaseReport>,
}

/// How a run ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// This many errors: exit 1.
    Failed(u64),
    /// Stopped by this signal: exit 128 + signal.
    Interrupted(i32),
}

impl Report {
    pub fn outcome(&self) -> Outcome {
        match signals::interrupted() {
            Some(signal) if self.partial => Outcome::Interrupted(signal),
            _ if self.errors > 0 => Outcome::Failed(self.errors),
            _ => Outcome::Passed,
        }
    }
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
            topic: self.topic.clone().unwrap_or_else(admin::unique_topic_name),
            partitions: self.partitions.or(preset.partitions).unwrap_or(8),
            producers: self.producers.or(preset.producers).unwrap_or(cores.len()),
            consumers: self.consumers.unwrap_or(cores.len()),
            batch_bytes: self.batch_bytes.unwrap_or(256 << 10),
            max_message_bytes: admin::DEFAULT_MAX_MESSAGE_BYTES,
            linger_ms: self.linger_ms.unwrap_or(if self.mode == "e2e" { E2E_LINGER_MS } else { 5 }),
            e2e_linger_ms: self.linger_ms.unwrap_or(E2E_LINGER_MS),
            compression: Codec::parse(self.compression.as_deref().unwrap_or("none"))?,
            acks,
            keys,
            rate: self.rate,
            max_inflight: self.max_inflight.unwrap_or(8).max(1),
            warmup_secs: Warmup::new(self.warmup_secs).duration().as_secs_f64(),
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
        if !self.warmup_secs.is_finite() || self.warmup_secs < 0.0 {
            bail!("--warmup-secs must be 0 or more");
        }
        self.replication_factor()?;
        Ok(workload)
    }

    /// --replicas as CreateTopics takes it.
    fn replication_factor(&self) -> Result<i16> {
        match self.replicas {
            None | Some(-1) => Ok(-1),
            Some(n) if n >= 1 => i16::try_from(n).context("--replicas is too large"),
            Some(n) => bail!("--replicas must be -1 (the broker's default) or at least 1, not {n}"),
        }
    }
}

fn worker_cores() -> Vec<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n).collect()
}

/// Runs the benchmark against `target` and prints, writes and returns the
/// report. Errors in the phases are in the report ([`Report::outcome`]);
/// `Err` is for a run that could not start (or write its outputs).
pub fn run(args: &BenchArgs, target: &Target) -> Result<Report> {
    signals::install()?;
    conn::set_request_timeout_ms(args.request_timeout_ms);
    let date = meta::now_rfc3339();
    let addresses: Vec<String> =
        target.address.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect();
    let admin = match addresses.as_slice() {
        [] => bail!("no broker address given"),
        [one] => one.clone(),
        several => {
            let several = several.to_vec();
            on_thread(move || async move { admin::first_answering(&several).await })?
        }
    };
    let mut w = args.resolve(&admin)?;
    let topic = prepare_topic(&mut w, args)?;
    let layout = match find_leaders(&w) {
        Ok(layout) => layout,
        Err(e) => {
            if topic.created && args.topic.is_none() {
                delete_topic(&w);
            }
            return Err(e);
        }
    };
    let cluster = (addresses.len() > 1 || layout.nodes.len() > 1).then(|| ClusterInfo {
        addresses,
        admin: admin.clone(),
        nodes: layout.nodes.clone(),
        replication_factor: layout.replication_factor,
        leaders: layout.leaders.clone(),
    });
    fit_connections(&mut w, &layout);
    let config = match &target.embedded_config {
        Some(config) => config.clone(),
        None => {
            let addr = w.broker.clone();
            on_thread(move || async move { Ok(admin::broker_config(&addr).await) })?
        }
    };
    let mut broker = BrokerInfo {
        address: w.broker.clone(),
        embedded: target.embedded_config.is_some(),
        config,
        topic_created: topic.created,
        topic_deleted: false,
        cluster,
    };
    print_header(&w, &broker, args, &date);
    let measured = measure(args, &w, &layout);
    // Only a topic of its own: one named with --topic is kept, even if created.
    if topic.created && args.topic.is_none() {
        broker.topic_deleted = delete_topic(&w);
    }
    let (machine, phases) = measured?;
    let errors = phases.iter().map(|p| p.errors).sum();
    let interrupted_by = signals::interrupted().map(signals::name);
    let report = Report {
        spate: meta::build(),
        date,
        partial: interrupted_by.is_some(),
        interrupted_by,
        errors,
        flags: args.clone(),
        workload: w,
        broker,
        machine,
        phases,
    };
    print_report(&report);
    write_outputs(args, &report)?;
    Ok(report)
}

/// Creates (or finds) the topic and fits the workload to it.
fn prepare_topic(w: &mut Workload, args: &BenchArgs) -> Result<admin::Topic> {
    let (addr, name, partitions, must_create) = (w.broker.clone(), w.topic.clone(), w.partitions, args.topic.is_none());
    let replicas = args.replication_factor()?;
    let topic =
        on_thread(move || async move { admin::prepare_topic(&addr, &name, partitions, replicas, must_create).await })?;
    if !topic.created && args.partitions.is_some_and(|p| p != topic.partitions) {
        eprintln!("topic {} exists with {} partitions: --partitions ignored", topic.name, topic.partitions);
    }
    if !topic.created && args.replicas.is_some() {
        eprintln!("topic {} exists: --replicas ignored", topic.name);
    }
    w.partitions = topic.partitions;
    w.max_message_bytes = topic.max_message_bytes;
    w.batch_bytes = w.batch_bytes.min(batch::record_budget(topic.max_message_bytes, w.compression));
    Ok(topic)
}

/// Each partition's leader, once every partition has one that answers.
fn find_leaders(w: &Workload) -> Result<admin::Layout> {
    let (addr, topic, partitions) = (w.broker.clone(), w.topic.clone(), w.partitions);
    on_thread(move || async move { admin::layout(&addr, &topic, partitions).await })
}

/// At least one producer and one consumer connection per leader: the
/// counts are raised to the number of leaders if they are fewer (against
/// one broker, nothing changes). Group members fetch from every leader, and
/// the commit phase talks to coordinators only.
fn fit_connections(w: &mut Workload, layout: &admin::Layout) {
    if w.mode == "commit" {
        return;
    }
    let produced = producer_groups(w, layout).iter().map(|(_, _, n)| n).sum();
    if produced > w.producers {
        eprintln!("{produced} producers, not {}: at least one for each partition leader", w.producers);
        w.producers = produced;
    }
    let leaders = layout.by_leader().len();
    if leaders > w.consumers && w.group.is_none() && w.mode != "produce" {
        eprintln!("{leaders} consumers, not {}: at least one for each partition leader", w.consumers);
        w.consumers = leaders;
    }
}

/// Deletes the run's topic; false (and a line saying why) if that failed.
fn delete_topic(w: &Workload) -> bool {
    let (addr, name) = (w.broker.clone(), w.topic.clone());
    match on_thread(move || async move { admin::delete_topic(&addr, &name).await }) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("could not delete topic {}: {e:#}", w.topic);
            false
        }
    }
}

/// The probes, then the phases.
fn measure(args: &BenchArgs, w: &Workload, layout: &admin::Layout) -> Result<(Machine, Vec<PhaseReport>)> {
    let machine = probe_machine(args, &w.broker)?;
    // Consume phases read from here: data already in the topic is not this run's.
    let starts = latest_offsets(w, layout)?;
    let run = Phases { w, layout, warmup: Warmup::new(args.warmup_secs), progress: !args.quiet, starts };
    Ok((machine, run.all()?))
}

/// Every partition's latest offset, each asked of its leader.
fn latest_offsets(w: &Workload, layout: &admin::Layout) -> Result<Vec<(i32, i64)>> {
    let (layout, topic) = (layout.clone(), w.topic.clone());
    on_thread(move || async move { admin::offsets(&layout, &topic, -1).await })
}

fn print_header(w: &Workload, broker: &BrokerInfo, args: &BenchArgs, date: &str) {
    let build = meta::build();
    let batch_requested = args.batch_bytes.unwrap_or(256 << 10);
    let topic = match (broker.topic_created, args.topic.is_none()) {
        (true, true) => "created by this run, deleted at its end",
        (true, false) => "created by this run, kept",
        (false, _) => "existing, kept",
    };
    let acks = match w.acks {
        -1 => "all",
        0 => "0",
        _ => "1",
    };
    println!(
        "spate bench {} ({}) {date}: {} against {}{}, acks {acks}, {} B messages, {}",
        build.version,
        build.commit,
        w.mode,
        broker.cluster.as_ref().map_or_else(|| w.broker.clone(), |c| c.addresses.join(",")),
        if broker.embedded { " (embedded broker)" } else { "" },
        w.message_bytes,
        match (w.messages, w.duration_secs) {
            (Some(n), Some(s)) => format!("{n} messages or {s} s per phase"),
            (Some(n), None) => format!("{n} messages per phase"),
            (None, Some(s)) => format!("{s} s per phase"),
            (None, None) => "no limit".into(),
        },
    );
    println!(
        "  topic {} ({}), {} partitions, max.message.bytes {}; {} producers, {} consumers, compression {}, batch {} B{}, linger {} ms, {} in flight{}, warm-up {} s",
        w.topic,
        topic,
        w.partitions,
        w.max_message_bytes,
        w.producers,
        w.consumers,
        w.compression.name(),
        w.batch_bytes,
        if w.batch_bytes < batch_requested { format!(" (clipped from {batch_requested} to fit)") } else { String::new() },
        w.linger_ms,
        w.max_inflight,
        w.rate.map(|r| format!(", rate {r:.0}/s")).unwrap_or_default(),
        w.warmup_secs
    );
    if let Some(cluster) = &broker.cluster {
        let nodes: Vec<String> = cluster.nodes.iter().map(|(id, addr)| format!("{id} {addr}")).collect();
        let mut led: BTreeMap<i32, usize> = BTreeMap::new();
        cluster.leaders.iter().for_each(|node| *led.entry(*node).or_default() += 1);
        let led: Vec<String> = led.iter().map(|(node, n)| format!("node {node} {n}")).collect();
        println!(
            "  cluster of {} brokers ({}), admin requests to {}; replication factor {}; partitions led: {}",
            cluster.nodes.len(),
            nodes.join(", "),
            cluster.admin,
            cluster.replication_factor,
            led.join(", ")
        );
    }
}

/// Cores, kernel, and the probes: the disk when asked, loopback when the
/// broker is on this machine.
fn probe_machine(args: &BenchArgs, broker: &str) -> Result<Machine> {
    let disk = match &args.probe_disk {
        Some(dir) if signals::interrupted().is_none() => {
            eprintln!("probing {} for {} s (sequential O_DIRECT writes)", dir.display(), args.probe_secs);
            Some(probe::probe_disk(dir, args.probe_secs)?)
        }
        _ => None,
    };
    let local = broker.starts_with("127.") || broker.starts_with("localhost") || broker.starts_with("[::1]");
    let network = if local && signals::interrupted().is_none() {
        Some(probe::probe_loopback(args.probe_secs.min(1.0))?)
    } else {
        None
    };
    Ok(Machine { cores: worker_cores().len(), kernel: meta::kernel(), disk, network })
}

fn print_report(report: &Report) {
    let status = match (report.interrupted_by, report.errors) {
        (Some(signal), _) => format!(" — PARTIAL: interrupted by {signal}"),
        (None, 0) => String::new(),
        (None, n) => format!(" — FAILED: {n} errors"),
    };
    println!("\nspate bench results{status}");
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
        let mib_per_sec = phase.mb_per_sec * 1e6 / (1 << 20) as f64;
        if let (Some(disk), true) = (&machine.disk, ["produce", "fill", ACKS_ALL_PHASE].contains(&phase.phase.as_str()))
        {
            let share = 100.0 * mib_per_sec / disk.write_mib_per_sec;
            println!(
                "{:<9} {mib_per_sec:.0} MiB/s = {share:.1}% of the device's {:.0} MiB/s",
                "", disk.write_mib_per_sec
            );
        }
        if let Some(network) = &machine.network {
            let share = 100.0 * mib_per_sec / network.loopback_mib_per_sec;
            println!("{:<9} {share:.0}% of one loopback stream", "");
        }
    }
    println!("errors    {}", report.errors);
    if report.errors > 0 {
        println!("FAILED: {} errors; the figures above cover only what succeeded", report.errors);
    }
}

fn write_outputs(args: &BenchArgs, report: &Report) -> Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let w = &report.workload;
        let cluster = report
            .broker
            .cluster
            .as_ref()
            .map(|c| format!(", {} brokers, replication factor {}", c.nodes.len(), c.replication_factor));
        let title = format!(
            "spate bench {}: {} x {} B, {} partitions{}, acks {}{}",
            report.spate.version,
            w.mode,
            w.message_bytes,
            w.partitions,
            cluster.unwrap_or_default(),
            w.acks,
            if report.partial { " (partial)" } else { "" }
        );
        std::fs::write(path, plot::svg(&title, &report.phases))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
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

/// Worker tasks spread over pinned executor threads (at most one per core);
/// the tasks of a thread share its stats.
struct Workers {
    handles: Vec<glommio::ExecutorJoinHandle<WorkerStats>>,
    running: Arc<AtomicUsize>,
}

impl Workers {
    /// A task that fails counts one error and stops the phase (`what` names it).
    fn start<F, Fut>(
        what: &'static str,
        tasks: usize,
        cores: &[usize],
        shared: &Arc<Shared>,
        make: F,
    ) -> Result<Workers>
    where
        F: Fn(usize, ThreadStats) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Result<()>> + 'static,
    {
        let threads = tasks.min(cores.len()).max(1);
        let running = Arc::new(AtomicUsize::new(threads));
        let mut handles = Vec::with_capacity(threads);
        for (t, &core) in cores.iter().enumerate().take(threads) {
            let (make, running, shared) = (make.clone(), running.clone(), shared.clone());
            let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(core))
                .name(&format!("bench-{t}"))
                .io_memory(256 << 10)
                .spawn(move || async move {
                    let stats: ThreadStats = Rc::new(RefCell::new(WorkerStats::new(shared.warmup)));
                    let mine = (t..tasks).step_by(threads).map(|i| make(i, stats.clone()));
                    for result in futures::future::join_all(mine).await {
                        if let Err(e) = result {
                            stats.borrow_mut().errors += 1;
                            shared.fail(what, &e);
                        }
                    }
                    stats.borrow_mut().flush_live(&shared.live, true);
                    running.fetch_sub(1, Ordering::Release);
                    let total = std::mem::replace(&mut *stats.borrow_mut(), WorkerStats::new(Warmup::none()));
                    total
                })
                .map_err(|e| anyhow::anyhow!("starting a bench thread: {e}"))?;
            handles.push(handle);
        }
        Ok(Workers { handles, running })
    }

    fn running(&self) -> bool {
        self.running.load(Ordering::Acquire) > 0
    }

    /// Every thread's stats merged; a thread that died counts one error.
    fn join(self, warmup: Warmup) -> WorkerStats {
        let mut total = WorkerStats::new(warmup);
        for h in self.handles {
            match h.join() {
                Ok(stats) => total.merge(&stats),
                Err(e) => {
                    eprintln!("a bench thread failed: {e:?}");
                    total.errors += 1;
                }
            }
        }
        total
    }
}

/// Samples a running phase once a second: the progress line and the
/// latency-over-time series.
struct Watch<'a> {
    shared: &'a Shared,
    phase: &'a str,
    message_bytes: f64,
    progress: Progress,
    series: Vec<LatencyPoint>,
    last_sample: Instant,
}

/// How often the watcher looks whether the workers are done.
const WATCH_POLL: Duration = Duration::from_millis(20);
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

impl<'a> Watch<'a> {
    fn new(shared: &'a Shared, phase: &'a str, message_bytes: usize, progress: bool) -> Watch<'a> {
        Watch {
            shared,
            phase,
            message_bytes: message_bytes as f64,
            progress: Progress::new(progress),
            series: Vec::new(),
            last_sample: Instant::now(),
        }
    }

    fn wait_while(&mut self, running: impl Fn() -> bool) {
        while running() {
            std::thread::sleep(WATCH_POLL);
            if self.last_sample.elapsed() >= SAMPLE_EVERY {
                self.last_sample = Instant::now();
                let point = self.shared.live.take(self.shared.started.elapsed());
                self.series.extend(point);
                let done = self.shared.done.load(Ordering::Relaxed);
                self.progress.tick(self.phase, done, self.message_bytes, point.as_ref());
            }
        }
    }

    /// The series, with the last (shorter) interval.
    fn finish(mut self) -> Vec<LatencyPoint> {
        self.series.extend(self.shared.live.take(self.shared.started.elapsed()));
        self.progress.done();
        self.series
    }
}

/// The phases of one run.
struct Phases<'a> {
    w: &'a Workload,
    layout: &'a admin::Layout,
    warmup: Warmup,
    progress: bool,
    /// Offsets at the start of the run: consume phases read from here.
    starts: Vec<(i32, i64)>,
}

/// A phase that failed or was interrupted ends the run.
fn go_on(phases: &[PhaseReport]) -> bool {
    signals::interrupted().is_none() && phases.iter().all(|p| p.errors == 0)
}

/// The phase of `all` that produces again with acks=all.
const ACKS_ALL_PHASE: &str = "acks-all";
/// `all`'s closed-loop e2e phase: the rate e2e sustains, halved for the e2e phase.
const E2E_MAX_PHASE: &str = "e2e-max";

impl Phases<'_> {
    fn all(&self) -> Result<Vec<PhaseReport>> {
        let w = self.w;
        let mut phases = Vec::new();
        if !go_on(&phases) {
            return Ok(phases);
        }
        match w.mode.as_str() {
            "produce" => phases.push(self.produce("produce", w, w.rate)?),
            "e2e" => phases.push(self.e2e("e2e", w, w.rate)?),
            "commit" => phases.push(self.commit()?),
            "consume" => {
                phases.push(self.produce("fill", w, None)?);
                if go_on(&phases) {
                    phases.push(self.consume(phases[0].messages)?);
                }
            }
            _ => {
                phases.push(self.produce("produce", w, w.rate)?);
                let (produced, rate) = (phases[0].messages, phases[0].msgs_per_sec);
                if go_on(&phases) && w.acks != -1 {
                    phases.push(self.produce(ACKS_ALL_PHASE, &Workload { acks: -1, ..w.clone() }, w.rate)?);
                }
                if go_on(&phases) {
                    phases.push(self.consume(produced)?);
                }
                let e2e = Workload {
                    messages: None,
                    duration_secs: Some(w.duration_secs.unwrap_or(5.0)),
                    linger_ms: w.e2e_linger_ms,
                    ..w.clone()
                };
                // The e2e phase runs at half the rate e2e itself sustains
                // (producers and consumers at once, as the OpenMessaging
                // Benchmark finds its maximum): with consumers on the same
                // cores, half the produce phase's rate can be past it.
                let mut e2e_rate = w.rate.map(|r| r / 2.0);
                if go_on(&phases) && e2e_rate.is_none() {
                    let max = self.e2e(E2E_MAX_PHASE, &e2e, None)?;
                    e2e_rate = Some(if max.msgs_per_sec > 0.0 { max.msgs_per_sec } else { rate } / 2.0);
                    phases.push(max);
                }
                if go_on(&phases) {
                    phases.push(self.e2e("e2e", &e2e, e2e_rate)?);
                }
            }
        }
        Ok(phases)
    }

    fn timing(&self, shared: &Shared, joined: Duration) -> PhaseTiming {
        PhaseTiming {
            elapsed: shared.started.elapsed(),
            joined,
            warmup: self.warmup,
            interrupted: signals::interrupted().is_some(),
            load_ended: None,
        }
    }

    fn produce(&self, name: &str, w: &Workload, rate: Option<f64>) -> Result<PhaseReport> {
        let shared = Arc::new(Shared::new(self.warmup));
        let plans = producer_plans(w, self.layout, rate, shared.started);
        let s = shared.clone();
        let workers = Workers::start("produce", plans.len(), &w.worker_cores, &shared, move |i, stats| {
            workers::run_producer(plans[i].clone(), s.clone(), stats)
        })?;
        let mut watch = Watch::new(&shared, name, w.message_bytes, self.progress);
        watch.wait_while(|| workers.running());
        let stats = workers.join(self.warmup);
        let timing = self.timing(&shared, Duration::ZERO);
        Ok(PhaseReport::new(name, &stats, timing, watch.finish()))
    }

    /// Reads what this run wrote: from the offsets at its start until
    /// `target` messages arrived.
    fn consume(&self, target: u64) -> Result<PhaseReport> {
        let w = self.w;
        let shared = Arc::new(Shared::new(self.warmup));
        shared.producers_finished.store(true, Ordering::Release);
        let s = shared.clone();
        let workers = match &w.group {
            None => {
                let plans = consumer_plans(w, self.layout, &self.starts, Some(target), false);
                Workers::start("consume", plans.len(), &w.worker_cores, &shared, move |i, stats| {
                    workers::run_consumer(plans[i].clone(), s.clone(), stats)
                })?
            }
            Some(name) => {
                // Every member may be assigned any partition: each knows every start.
                let plan = ConsumerPlan {
                    addr: w.broker.clone(),
                    partitions: self.starts.clone(),
                    ..consumer_plans(w, self.layout, &self.starts, Some(target), false)[0].clone()
                };
                let group = group::GroupPlan {
                    group: name.clone(),
                    partitions: w.partitions,
                    commit_interval: Duration::from_millis(w.commit_interval_ms),
                    session_timeout_ms: 30_000,
                    heartbeat_interval: Duration::from_secs(3),
                };
                Workers::start("consume", w.consumers, &w.worker_cores, &shared, move |_, stats| {
                    group::run_group_consumer(plan.clone(), group.clone(), s.clone(), stats)
                })?
            }
        };
        let mut watch = Watch::new(&shared, "consume", w.message_bytes, self.progress);
        watch.wait_while(|| workers.running());
        let stats = workers.join(self.warmup);
        let mut joined = Duration::ZERO;
        if let Some(group) = &w.group {
            // As kafka-consumer-perf-test: the rate is over fetching, the join apart.
            let first = shared.first_data_us.load(Ordering::Relaxed);
            joined = Duration::from_micros(first.min(shared.started.elapsed().as_micros() as u64));
            println!("consume   joined group {group} in {:.2} s", joined.as_secs_f64());
        }
        let timing = self.timing(&shared, joined);
        Ok(PhaseReport::new("consume", &stats, timing, watch.finish()))
    }

    /// OffsetCommit load: `consumers` connections, each with `max_inflight`
    /// commits in flight, one group per connection.
    fn commit(&self) -> Result<PhaseReport> {
        let w = self.w;
        let shared = Arc::new(Shared::new(self.warmup));
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
        let workers = Workers::start("commit", plans.len(), &w.worker_cores, &shared, move |i, stats| {
            group::run_committer(plans[i].clone(), s.clone(), stats)
        })?;
        let mut watch = Watch::new(&shared, "commit", 0, self.progress);
        watch.wait_while(|| workers.running());
        let stats = workers.join(self.warmup);
        let timing = self.timing(&shared, Duration::ZERO);
        Ok(PhaseReport::new("commit", &stats, timing, watch.finish()))
    }

    /// Producers and consumers at once; latency from the send time stamped
    /// in each message to its receipt.
    fn e2e(&self, name: &str, w: &Workload, rate: Option<f64>) -> Result<PhaseReport> {
        let starts = latest_offsets(w, self.layout)?;
        let shared = Arc::new(Shared::new(self.warmup));
        let consumers = consumer_plans(w, self.layout, &starts, None, true);
        let cs = shared.clone();
        let consumer_workers =
            Workers::start("consume", consumers.len(), &w.worker_cores, &shared, move |i, stats| {
                workers::run_consumer(consumers[i].clone(), cs.clone(), stats)
            })?;
        let producers = producer_plans(w, self.layout, rate, shared.started);
        let producer_shared = Arc::new(Shared::new(self.warmup));
        let ps = producer_shared.clone();
        let producer_workers =
            Workers::start("produce", producers.len(), &w.worker_cores, &producer_shared, move |i, stats| {
                workers::run_producer(producers[i].clone(), ps.clone(), stats)
            })?;
        let mut watch = Watch::new(&shared, name, w.message_bytes, self.progress);
        watch.wait_while(|| producer_workers.running());
        let produced = producer_workers.join(self.warmup);
        let load_ended = shared.started.elapsed();
        shared.producers_finished.store(true, Ordering::Release);
        // Consumers drain what was acknowledged, for at most 30 s.
        let deadline = Instant::now() + Duration::from_secs(30);
        watch.wait_while(|| {
            consumer_workers.running()
                && shared.done.load(Ordering::Relaxed) < produced.messages
                && Instant::now() < deadline
                && signals::interrupted().is_none()
        });
        shared.stop.store(true, Ordering::Relaxed); // consumers still waiting for more give up
        let mut consumed = consumer_workers.join(self.warmup);
        consumed.errors += produced.errors;
        if consumed.messages < produced.messages && consumed.errors == 0 && signals::interrupted().is_none() {
            eprintln!(
                "e2e: consumers received {} of the {} messages acknowledged",
                consumed.messages, produced.messages
            );
            consumed.errors += 1;
        }
        let timing = PhaseTiming { load_ended: Some(load_ended), ..self.timing(&shared, Duration::ZERO) };
        Ok(PhaseReport::new(name, &consumed, timing, watch.finish()))
    }
}

/// Splits `n` connections over groups in proportion to `weights` (largest
/// remainder): at least one to each group of nonzero weight (`n` is raised
/// to their number), none to the others; with `capped`, at most a group's
/// weight to it (`n` is lowered to the weights' sum).
fn spread(n: usize, weights: &[usize], capped: bool) -> Vec<usize> {
    let total: usize = weights.iter().sum();
    let active = weights.iter().filter(|&&w| w > 0).count();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let mut n = n.max(active);
    if capped {
        n = n.min(total);
    }
    let mut out: Vec<usize> = weights
        .iter()
        .map(|&w| match w {
            0 => 0,
            w if capped => (n * w / total).clamp(1, w),
            w => (n * w / total).max(1),
        })
        .collect();
    // How far each group is below its exact share, in units of 1/total.
    let below = |out: &[usize], i: usize| (n * weights[i]) as i128 - (out[i] * total) as i128;
    while out.iter().sum::<usize>() > n {
        let i = (0..out.len()).filter(|&i| out[i] > 1).min_by_key(|&i| below(&out, i)).expect("n >= groups");
        out[i] -= 1;
    }
    while out.iter().sum::<usize>() < n {
        let i = (0..out.len())
            .filter(|&i| weights[i] > 0 && (!capped || out[i] < weights[i]))
            .max_by_key(|&i| (below(&out, i), std::cmp::Reverse(i)))
            .expect("n <= the weights' sum");
        out[i] += 1;
    }
    out
}

/// The producers of each leader: its address, the partitions it leads, and
/// how many producer connections write to them (in proportion to the
/// partitions that get messages: with keys from a set smaller than the
/// partition count, only the first ones do).
fn producer_groups(w: &Workload, layout: &admin::Layout) -> Vec<(String, Vec<i32>, usize)> {
    let groups = layout.by_leader();
    let weights: Vec<usize> = groups
        .iter()
        .map(|(_, _, partitions)| match w.keys {
            Keys::Cardinality(n) => {
                workers::keys_of(n.max(1), partitions, w.partitions).min(partitions.len() as u64) as usize
            }
            _ => partitions.len(),
        })
        .collect();
    let counts = spread(w.producers, &weights, false);
    groups.into_iter().zip(counts).map(|((_, addr, partitions), n)| (addr, partitions, n)).collect()
}

/// One plan per producer connection, each to one leader and the partitions
/// it leads (against one broker: every producer to it, every partition).
fn producer_plans(w: &Workload, layout: &admin::Layout, rate: Option<f64>, started: Instant) -> Vec<ProducerPlan> {
    let per_producer =
        |total: u64, i: usize| total / w.producers as u64 + u64::from((i as u64) < total % w.producers as u64);
    let targets = producer_groups(w, layout)
        .into_iter()
        .flat_map(|(addr, partitions, n)| std::iter::repeat_n((addr, partitions), n));
    targets
        .enumerate()
        .map(|(i, (addr, partitions))| ProducerPlan {
            addr,
            topic: w.topic.clone(),
            partitions,
            topic_partitions: w.partitions,
            message_bytes: w.message_bytes,
            messages: w.messages.map(|n| per_producer(n, i)),
            deadline: w.duration_secs.map(|s| started + Duration::from_secs_f64(s)),
            batch_bytes: w.batch_bytes,
            max_message_bytes: w.max_message_bytes,
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

/// One plan per consumer connection, each to one leader and a share of the
/// partitions it leads (connections in proportion to the partitions led,
/// at most one per partition). `target`: stop once all consumers together
/// have this many messages.
fn consumer_plans(
    w: &Workload,
    layout: &admin::Layout,
    starts: &[(i32, i64)],
    target: Option<u64>,
    measure_latency: bool,
) -> Vec<ConsumerPlan> {
    let leaders = Arc::new(layout.leader_addrs());
    let groups = layout.by_leader();
    let weights: Vec<usize> = groups.iter().map(|(_, _, partitions)| partitions.len()).collect();
    let counts = spread(w.consumers, &weights, true);
    let mut plans = Vec::new();
    for ((_, addr, partitions), n) in groups.iter().zip(counts) {
        let led: Vec<(i32, i64)> = starts.iter().filter(|(p, _)| partitions.contains(p)).copied().collect();
        plans.extend((0..n).map(|c| ConsumerPlan {
            addr: addr.clone(),
            topic: w.topic.clone(),
            partitions: led.iter().skip(c).step_by(n).copied().collect(),
            leaders: leaders.clone(),
            stop_at_total: target,
            measure_latency,
            fetch_max_bytes: 64 << 20,
            partition_max_bytes: 8 << 20,
            message_bytes: w.message_bytes,
        }));
    }
    plans
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn every_flag_has_help_and_shows_its_default() {
        let command = Cli::command();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if ["help", "quiet"].contains(&id) {
                continue; // switches: off unless given
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.len() > 10, "--{id} has no help text");
            let shown = !arg.get_default_values().is_empty() || help.contains("[default:");
            assert!(shown, "--{id} does not show its default: {help}");
        }
    }

    #[test]
    fn documented_defaults_are_the_defaults() {
        let args = Cli::parse_from(["bench"]).bench;
        let w = args.resolve("127.0.0.1:9092").unwrap();
        assert_eq!((w.mode.as_str(), w.acks, w.message_bytes, w.partitions), ("all", 1, 100, 8));
        assert_eq!((w.batch_bytes, w.linger_ms, w.max_inflight, w.messages), (262_144, 5, 8, Some(5_000_000)));
        assert_eq!((w.compression, w.keys, w.warmup_secs), (Codec::None, Keys::None, 2.0));
        assert!(w.topic.starts_with("spate-bench-"), "a unique topic: {}", w.topic);
        let acks_all = Cli::parse_from(["bench", "--preset", "acks-all"]).bench.resolve("x:1").unwrap();
        assert_eq!(acks_all.acks, -1);
    }

    #[test]
    fn acks_and_replicas_take_minus_one() {
        let args = Cli::parse_from(["bench", "--acks", "-1", "--replicas", "-1"]).bench;
        assert_eq!((args.resolve("x:1").unwrap().acks, args.replication_factor().unwrap()), (-1, -1));
        let args = Cli::parse_from(["bench", "--acks", "all", "--replicas", "3"]).bench;
        assert_eq!((args.resolve("x:1").unwrap().acks, args.replication_factor().unwrap()), (-1, 3));
        assert!(Cli::parse_from(["bench", "--replicas", "0"]).bench.resolve("x:1").is_err());
        let flags = serde_json::to_value(Cli::parse_from(["bench"]).bench).unwrap();
        assert!(flags.get("replicas").is_none(), "a run without --replicas reports the flags it always did");
    }

    #[test]
    fn connections_spread_over_leaders_in_proportion() {
        assert_eq!(spread(4, &[8], false), vec![4]);
        assert_eq!(spread(64, &[2], false), vec![64]);
        assert_eq!(spread(4, &[8], true), vec![4]);
        assert_eq!(spread(12, &[8], true), vec![8]);
        assert_eq!(spread(2, &[3, 3, 2], false), vec![1, 1, 1]);
        assert_eq!(spread(8, &[3, 3, 2], false), vec![3, 3, 2]);
        assert_eq!(spread(4, &[3, 3, 2], false), vec![2, 1, 1]);
        assert_eq!(spread(10, &[6, 1, 1], false), vec![8, 1, 1]);
        assert_eq!(spread(10, &[2, 1, 0], true), vec![2, 1, 0]);
        assert_eq!(spread(5, &[0, 4, 0], false), vec![0, 5, 0]);
    }

    fn layout(leaders: &[i32]) -> admin::Layout {
        let nodes = [1, 2, 3].map(|n| (n, format!("127.0.0.1:{}", 9091 + n))).into_iter().collect();
        admin::Layout { nodes, leaders: leaders.to_vec(), replication_factor: 3 }
    }

    #[test]
    fn each_producer_and_consumer_talks_to_one_leader() {
        let mut w = Cli::parse_from(["bench", "--producers", "2", "--consumers", "4"]).bench.resolve("x:1").unwrap();
        let layout = layout(&[1, 2, 3, 1, 2, 3, 1, 2]);
        fit_connections(&mut w, &layout);
        assert_eq!((w.producers, w.consumers), (3, 4), "at least one producer per leader");
        let plans = producer_plans(&w, &layout, None, Instant::now());
        let routes: Vec<(&str, &[i32])> = plans.iter().map(|p| (p.addr.as_str(), p.partitions.as_slice())).collect();
        assert_eq!(
            routes,
            [("127.0.0.1:9092", &[0, 3, 6][..]), ("127.0.0.1:9093", &[1, 4, 7]), ("127.0.0.1:9094", &[2, 5])]
        );
        assert_eq!(plans.iter().map(|p| p.messages.unwrap()).sum::<u64>(), 5_000_000);
        let starts: Vec<(i32, i64)> = (0..8).map(|p| (p, 10 * p as i64)).collect();
        let consumers = consumer_plans(&w, &layout, &starts, None, false);
        let mut read: Vec<i32> = Vec::new();
        for c in &consumers {
            assert!(c.partitions.iter().all(|(p, _)| layout.leader_addr(*p) == c.addr));
            read.extend(c.partitions.iter().map(|(p, _)| *p));
        }
        read.sort_unstable();
        assert_eq!((consumers.len(), read), (4, (0..8).collect::<Vec<_>>()));
    }
}
