//! The `spate` binary: `serve` runs the broker; the other commands are a
//! small rpk-style client for topics, producing and consuming.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use spate::cli::{self, ConsumeArgs, ProduceArgs, TopicCommand};
use spate::config::Config;
use spate::data_dir;
use tracing::{error, info};

/// The version and the git commit built (from `build.rs`).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SPATE_GIT_COMMIT"), ")");

#[derive(Parser, Debug)]
#[command(name = "spate", version = VERSION, about = "A Kafka-compatible message broker")]
struct Cli {
    /// Broker address (host:port) for the client commands [default: 127.0.0.1:9092].
    /// `bench` without it starts an embedded broker.
    #[arg(short, long, global = true, env = "SPATE_BROKERS")]
    brokers: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Manage topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Inspect the cluster.
    Cluster {
        #[command(subcommand)]
        command: spate::cli::ClusterCommand,
    },
    /// Move partitions' replicas and elect preferred leaders.
    Partition {
        #[command(subcommand)]
        command: spate::partition_cli::PartitionCommand,
    },
    /// Inspect and steer consumer groups.
    Group {
        #[command(subcommand)]
        command: spate::group_cli::GroupCommand,
    },
    /// Produce lines from stdin as records.
    Produce {
        #[command(flatten)]
        args: ProduceArgs,
    },
    /// Print records as OFFSET<TAB>KEY<TAB>VALUE lines (or as -f says).
    Consume {
        #[command(flatten)]
        args: ConsumeArgs,
    },
    /// Load generator: measure produce, consume and end-to-end throughput and latency.
    Bench(Box<spate_bench::BenchArgs>),
    /// The configuration reference.
    Config {
        /// Print every setting with its default and description, as a TOML file.
        #[arg(long)]
        print_defaults: bool,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// TOML config file.
    #[arg(short, long, env = "SPATE_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (config key `listen`).
    #[arg(long)]
    listen: Option<String>,
    /// Data directory (config key `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Shard count; 0 = one per core (config key `shards`).
    #[arg(long)]
    shards: Option<usize>,
    /// Any config key: --set key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

/// Errors are told as one line, `error: ...`, with exit code 1: no
/// backtrace or debug dump for a mistake in a command. A closed output pipe
/// (`| head`) ends a command quietly.
fn main() {
    if let Err(e) = run() {
        if cli::is_broken_pipe(&e) {
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // The bench's embedded broker should not talk over the results.
        let default_level = if matches!(cli.command, Command::Bench(_)) { "warn" } else { "info" };
        spate::logging::init(default_level, spate::logging::LogFormat::Text);
    }
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Topic { command } => cli::topic(&brokers_or_default(&cli.brokers), command),
        Command::Cluster { command } => cli::cluster(&brokers_or_default(&cli.brokers), command),
        Command::Partition { command } => spate::partition_cli::partition(&brokers_or_default(&cli.brokers), command),
        Command::Group { command } => spate::group_cli::group(&brokers_or_default(&cli.brokers), command),
        Command::Produce { args } => cli::produce(&brokers_or_default(&cli.brokers), args),
        Command::Consume { args } => cli::consume(&brokers_or_default(&cli.brokers), args),
        Command::Bench(args) => bench(*args, cli.brokers),
        Command::Config { print_defaults } => {
            anyhow::ensure!(print_defaults, "nothing to do: try `spate config --print-defaults`");
            print!("{}", spate::config::defaults_toml());
            Ok(())
        }
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let mut sets = args.sets.clone();
    if let Some(listen) = args.listen {
        sets.push(format!("listen={listen}"));
    }
    if let Some(dir) = args.data_dir {
        sets.push(format!("data_dir={}", dir.display()));
    }
    if let Some(shards) = args.shards {
        sets.push(format!("shards={shards}"));
    }
    let config = Arc::new(Config::load(args.config.as_ref(), &sets)?);
    spate::logging::init("info", config.log_format);
    abort_on_panic();
    spate::storage::faults::init_from_env().map_err(anyhow::Error::msg)?;
    // Before the shards start: a signal at any moment of start-up is seen.
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    let health = Arc::new(spate::admin_http::Health::default());
    let (runtime, _lock) = start_broker_with(config, health.clone())?;
    let stop = runtime.stop_flag();
    std::thread::spawn(move || {
        for (count, signal) in signals.forever().enumerate() {
            if count > 0 {
                tracing::warn!(signal, "second signal: exiting without finishing the drain");
                std::process::exit(1);
            }
            if !health.started() {
                // Nothing is served yet, and recovery is crash-safe: it
                // resumes at the next start.
                info!(signal, "stopping during start-up");
                std::process::exit(0);
            }
            info!(signal, "shutting down");
            stop.store(true, Ordering::Release);
        }
    });
    runtime.join()?;
    info!("stopped cleanly");
    Ok(())
}

/// A panic on any thread ends the whole process, after logging it with a
/// backtrace. A shard that died alone would leave the broker half alive:
/// its partitions unanswered, its connections hanging, its port still open.
/// A hook rather than `panic = "abort"`: the panic reaches the log through
/// tracing like every other line, and `cargo test` keeps unwinding.
fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let backtrace = std::backtrace::Backtrace::force_capture();
        error!(thread = thread.name().unwrap_or("?"), "panic, aborting the broker: {info}\n{backtrace}");
        std::process::abort();
    }));
}

fn brokers_or_default(brokers: &Option<String>) -> String {
    brokers.clone().unwrap_or_else(|| "127.0.0.1:9092".into())
}

/// Keeps large freed blocks (write buffers, request frames) in each thread's
/// malloc arena instead of returning them to the kernel: glibc serves blocks
/// over 128 KiB with fresh mmaps by default, and the kernel zeroing those pages
/// on first touch cost more than a quarter of the broker's CPU under load
/// (`perf/profile-bench.sh`, `clear_page_erms`).
fn keep_freed_memory_for_reuse() {
    const MMAP_THRESHOLD_BYTES: i32 = 64 << 20;
    const TRIM_THRESHOLD_BYTES: i32 = 1 << 30;
    // SAFETY: mallopt only tunes the allocator; called before the shards start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
    }
}

/// Starts the shards of a broker for `config`; returns once they are
/// launched, with the data directory's lock (hold it until they are joined).
fn start_broker(config: Arc<Config>) -> Result<(shards::ShardRuntime, data_dir::DirLock)> {
    start_broker_with(config, Arc::new(spate::admin_http::Health::default()))
}

/// As [`start_broker`], reporting the shards' progress to `health`.
fn start_broker_with(
    config: Arc<Config>,
    health: Arc<spate::admin_http::Health>,
) -> Result<(shards::ShardRuntime, data_dir::DirLock)> {
    keep_freed_memory_for_reuse();
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    // Before anything in the directory is opened: a second broker on it
    // would hand out the same offsets.
    let lock = data_dir::lock(&config.data_dir)?;
    data_dir::check_meta(&config.data_dir, config.node_id)?;
    spate::fsutil::keep_reserve(config.data_dir.join(".reserve"));
    data_dir::check_port_free(&config.listen)?;
    let open_files_limit = raise_open_file_limit();
    log_start(&config, open_files_limit);
    check_memlock(&config)?;
    let runtime_config = shards::RuntimeConfig {
        shard_count: config.shards,
        io_memory_bytes: config.io_memory_bytes,
        mailbox_capacity: config.mailbox_capacity,
        pin_to_cores: config.pin_shards,
        name: "spate-shard".into(),
        spin_before_park_us: config.spin_before_park_us,
    };
    let shard_config = config.clone();
    let barrier = Arc::new(spate::server::ShutdownBarrier::default());
    let connection_counts = Arc::new(spate::server::ConnectionCounts::default());
    let shard_health = health.clone();
    let runtime = shards::ShardRuntime::start(&runtime_config, move |shard| {
        shard_health.set_shard_count(shard.count);
        let (config, barrier, counts) = (shard_config.clone(), barrier.clone(), connection_counts.clone());
        spate::server::run_shard(shard, config, barrier, counts, shard_health.clone())
    })
    .context("starting shards")?;
    info!(shards = runtime.shard_count(), "shards started");
    check_open_file_bounds(&config, runtime.shard_count(), open_files_limit);
    Ok((runtime, lock))
}

/// One line with what an operator needs to know about this start: version,
/// commit, addresses, and every setting that differs from its default; a
/// warning when a wildcard listener advertises `localhost`.
fn log_start(config: &Config, open_files_limit: u64) {
    let advertised = format!("{}:{}", config.advertised_host(), config.advertised_port());
    info!(
        version = env!("CARGO_PKG_VERSION"),
        commit = spate::git_commit(),
        listen = %config.listen,
        advertised = %advertised,
        admin_listen = %config.admin_listen,
        data_dir = %config.data_dir.display(),
        node_id = config.node_id,
        open_files_limit,
        config = %config.non_default_settings(),
        "starting spate"
    );
    let host = config.listen.rsplit_once(':').map_or("", |(h, _)| h);
    let wildcard = matches!(host, "" | "0.0.0.0" | "[::]" | "::");
    if wildcard && config.advertised_host() == "localhost" {
        tracing::warn!(
            listen = %config.listen,
            advertised = %advertised,
            "clients on other machines will be told to connect to localhost, which is themselves; \
             set advertised_host (SPATE_ADVERTISED_HOST) to a name they can reach"
        );
    }
}

/// io_uring's registered buffers (`io_memory_bytes` per shard) count
/// against RLIMIT_MEMLOCK; glommio refuses to start below 512 KiB and
/// otherwise silently runs without registered buffers. Says which, with the fix.
fn check_memlock(config: &Config) -> Result<()> {
    const GLOMMIO_MIN_MEMLOCK_BYTES: u64 = 512 << 10;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid, owned struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return Ok(());
    }
    let fix = "raise it with `ulimit -l` (in the shell that starts spate), `LimitMEMLOCK=` in the systemd unit, \
               or `--ulimit memlock=` for a container";
    anyhow::ensure!(
        limit.rlim_cur >= GLOMMIO_MIN_MEMLOCK_BYTES,
        "the locked-memory limit (RLIMIT_MEMLOCK) is {} KiB; io_uring needs at least {} KiB: {fix}",
        limit.rlim_cur >> 10,
        GLOMMIO_MIN_MEMLOCK_BYTES >> 10
    );
    let shards =
        if config.shards == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { config.shards };
    let wanted = (config.io_memory_bytes as u64).saturating_mul(shards as u64);
    if wanted > limit.rlim_cur {
        tracing::warn!(
            memlock_limit_kib = limit.rlim_cur >> 10,
            wanted_kib = wanted >> 10,
            "io_memory_bytes x shards exceeds the locked-memory limit: some shards will run without registered \
             io_uring buffers (slower I/O); {fix}, or lower io_memory_bytes"
        );
    }
    Ok(())
}

/// Raises the soft limit on open descriptors to the hard one (as Kafka's and
/// Redpanda's deployment guides ask of operators) and returns it.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            // An unlimited hard limit cannot be the soft one: the kernel caps
            // descriptors at fs.nr_open.
            let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok());
            let target = limit.rlim_max.min(nr_open.unwrap_or(1 << 20));
            let raised = libc::rlimit { rlim_cur: target, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = target;
            }
        }
    }
    limit.rlim_cur
}

/// Sealed segment files are bounded per shard; connections and active
/// segments need descriptors beside them. Says so when the bound leaves
/// them less than half of the process's limit.
fn check_open_file_bounds(config: &Config, shards: usize, open_files_limit: u64) {
    let sealed = config.max_open_segment_files_per_shard.saturating_mul(shards) as u64;
    if sealed > open_files_limit / 2 {
        tracing::warn!(
            open_files_limit,
            sealed_segment_files = sealed,
            "max_open_segment_files_per_shard x shards takes more than half of the descriptor limit; \
             raise the limit (ulimit -n) or lower the bound"
        );
    }
}

/// `spate bench`: against `--brokers`, or an embedded broker on a temporary
/// data directory that is removed afterwards (after errors and signals too).
/// Exits 1 when the run had errors, 128 + signal when a signal stopped it.
fn bench(args: spate_bench::BenchArgs, brokers: Option<String>) -> Result<()> {
    // Before the embedded broker starts: from here a signal stops the run
    // gracefully, and the temporary directory is still removed.
    spate_bench::signals::install()?;
    let report = match brokers {
        Some(address) => spate_bench::run(&args, &spate_bench::Target { address, embedded_config: None })?,
        None => match bench_embedded(args) {
            Ok(report) => report,
            // A signal before the run began (the broker still starting).
            Err(e) => match spate_bench::signals::interrupted() {
                Some(signal) => {
                    eprintln!("stopped by {}: {e:#}", spate_bench::signals::name(signal));
                    std::process::exit(128 + signal)
                }
                None => return Err(e),
            },
        },
    };
    match report.outcome() {
        spate_bench::Outcome::Passed => Ok(()),
        spate_bench::Outcome::Failed(errors) => {
            anyhow::bail!("the run had {errors} errors; its figures cover only what succeeded")
        }
        spate_bench::Outcome::Interrupted(signal) => std::process::exit(128 + signal),
    }
}

fn bench_embedded(mut args: spate_bench::BenchArgs) -> Result<spate_bench::Report> {
    let dir = std::env::temp_dir().join(format!("spate-bench-{}", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    // No admin endpoint: a second bench, or a broker beside it, would want the same port.
    let sets = [format!("listen=127.0.0.1:{port}"), format!("data_dir={}", dir.display()), "admin_listen=".into()];
    let config = Arc::new(Config::load(None, &sets)?);
    // Tests make the embedded broker's storage fail through SPATE_FAULTS.
    spate::storage::faults::init_from_env().map_err(anyhow::Error::msg)?;
    let target = spate_bench::Target {
        address: format!("127.0.0.1:{port}"),
        embedded_config: Some(serde_json::to_value(&*config)?),
    };
    let (runtime, lock) = match start_broker(config) {
        Ok(started) => started,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut answering = data_dir::answers(&target.address);
    while !answering && std::time::Instant::now() < deadline && spate_bench::signals::interrupted().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(10));
        answering = data_dir::answers(&target.address);
    }
    let result = if answering {
        eprintln!("embedded spate broker at {}, data in {}", target.address, dir.display());
        args.probe_disk.get_or_insert_with(|| dir.clone());
        spate_bench::run(&args, &target)
    } else {
        Err(anyhow::anyhow!("the embedded broker did not start"))
    };
    runtime.stop();
    let joined = runtime.join();
    drop(lock);
    let _ = std::fs::remove_dir_all(&dir);
    joined?;
    result
}
