//! The network side of a shard: its own SO_REUSEPORT listener, and one task
//! pair per connection — a reader that frames and dispatches requests (many
//! in flight, up to `max_inflight_requests`) and a writer that sends the
//! responses back in request order.
//!
//! Memory a client can make the shard hold is bounded: a frame's buffer grows
//! only with bytes that have arrived, every request byte is charged to the
//! shard's `queued_max_request_bytes` until its response is written, unsent
//! responses stop a connection's reading, and silent or half-sent frames are
//! closed by `connections_max_idle_ms` and `socket_request_read_timeout_ms`.
//! On stop, connections take no new requests and finish the ones in flight.

mod balance;
mod wait;

use std::cell::Cell;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use futures::FutureExt;
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::{Semaphore, StaticPermit};
use kafka_protocol::messages::ApiKey;
use tracing::{debug, error, info, warn};

use crate::admin_http::Health;
use crate::broker::{Broker, ShardMsg};
use crate::config::Config;
use crate::handlers::{self, AppliedWait, FrameError};
use crate::metrics;
use crate::protocol::Reply;
pub use balance::ConnectionCounts;
use wait::{ByteBudget, Charge, StopSignal};

/// Socket read and write buffer sizes.
const SOCKET_BUFFER_BYTES: usize = 256 << 10;
/// Smallest growth of a frame buffer: small enough that a trickling client
/// holds little, large enough that a frame arriving fast needs few steps.
const MIN_FRAME_STEP_BYTES: usize = 16 << 10;
/// How often a stopping shard looks at its open connections.
const DRAIN_POLL_MS: u64 = 10;

/// What the shards share for a clean stop: how many have drained their
/// connections, so that none closes its partitions while another may still
/// forward requests to them.
#[derive(Default)]
pub struct ShutdownBarrier {
    drained_shards: AtomicUsize,
}

/// A shard's network state, shared by its connections.
struct Net {
    broker: Rc<Broker>,
    /// Every shard's connections, when `balance_connections` is on.
    balance: Option<Arc<ConnectionCounts>>,
    /// Request bytes held on this shard (`queued_max_request_bytes`).
    request_budget: Rc<ByteBudget>,
    stop: StopSignal,
}

/// The body every shard runs: join the broker, bind, serve until stopped,
/// drain the connections, then flush and sync every partition it owns.
pub async fn run_shard(
    mut shard: shards::Shard<ShardMsg>,
    config: Arc<Config>,
    barrier: Arc<ShutdownBarrier>,
    connection_counts: Arc<ConnectionCounts>,
    health: Arc<Health>,
) {
    let broker = Rc::new(Broker::new(shard.id, shard.count, config.clone(), shard.mailbox.clone()));
    // First, so that health answers while the shards recover their logs.
    let admin =
        if shard.id == crate::broker::admin::CONTROLLER_SHARD { start_admin(&broker, &health).await } else { None };
    if let Err(e) = crate::storage::segment::probe_device(&config.data_dir, shard.id).await {
        error!("data directory {} is not usable: {e}", config.data_dir.display());
        std::process::exit(1);
    }
    crate::storage::open_files::set_max_open(config.max_open_segment_files_per_shard);
    crate::storage::write_budget::set_limit(config.write_memory_bytes_per_shard);
    // Before the inbox: a shard that listens first may hand connections
    // over at once; they wait here until this shard serves clients.
    let (handed_over, handed_over_queue) = glommio::channels::local_channel::new_unbounded();
    broker.handed_over.replace(Some(handed_over));
    let inbox_broker = broker.clone();
    shard.serve_inbox(move |msg| inbox_broker.on_message(msg));
    if shard.id == crate::broker::admin::CONTROLLER_SHARD {
        if let Err(e) = broker.load_metadata().await {
            error!("cannot load metadata from {}: {e:#}", config.data_dir.display());
            std::process::exit(1);
        }
    }
    while !broker.is_ready() {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let listener = match TcpListener::bind(&config.listen) {
        Ok(listener) => listener,
        Err(e) => {
            error!(listen = %config.listen, "cannot listen: {e}");
            std::process::exit(1);
        }
    };
    info!(shard = shard.id, listen = %config.listen, "listening");
    health.shard_listening();
    let request_budget = ByteBudget::reported(config.queued_max_request_bytes);
    let balance = config.balance_connections.then_some(connection_counts);
    let net = Rc::new(Net { broker: broker.clone(), balance, request_budget, stop: StopSignal::default() });
    let flusher = start_periodic_tasks(&broker);
    let taker = glommio::spawn_local(take_handed_over(net.clone(), handed_over_queue));
    let acceptor = glommio::spawn_local(accept_loop(net.clone(), listener));
    shard.stopped().await;
    health.set_stopping();
    // Dropping the tasks cancels the accept loop, which closes the listener,
    // and closes connections other shards hand over from now on.
    drop(acceptor);
    broker.handed_over.replace(None);
    drop(taker);
    drain(&net, shard.count, &barrier).await;
    info!(shard = shard.id, "stopping: flushing partitions");
    drop(flusher);
    broker.close_all().await;
    drop(admin);
}

/// Binds a listener that only this socket may serve: without SO_REUSEPORT,
/// which glommio's `bind` sets for the shards' shared Kafka port. A single
/// listener (admin, controller) bound with it would let another process's
/// SO_REUSEPORT listener (a second broker's shards) join its port and take a
/// share of its connections; without it, that bind fails with EADDRINUSE.
///
/// A port still held waits up to `EXCLUSIVE_BIND_WAIT_MS`: a broker restarted
/// on it the moment the last one exited finds that one's listener still
/// there, until the kernel tears down what its io_uring held.
pub async fn bind_exclusive(addr: &str) -> std::io::Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_millis(EXCLUSIVE_BIND_WAIT_MS);
    loop {
        // std binds with SO_REUSEADDR only (connections in TIME_WAIT pass).
        match std::net::TcpListener::bind(addr) {
            // SAFETY: the descriptor is bound and listening, and glommio takes it over.
            Ok(listener) => return Ok(unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) }),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                glommio::timer::sleep(Duration::from_millis(EXCLUSIVE_BIND_RETRY_MS)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long `bind_exclusive` waits for a port held by a listener going away,
/// and how often it tries again meanwhile.
const EXCLUSIVE_BIND_WAIT_MS: u64 = 2_000;
const EXCLUSIVE_BIND_RETRY_MS: u64 = 20;

/// Starts the admin HTTP endpoint (unless `admin_listen` is ""); exits the
/// process if its address cannot be bound, as for the Kafka listener.
async fn start_admin(broker: &Rc<Broker>, health: &Arc<Health>) -> Option<glommio::Task<()>> {
    if broker.config.admin_listen.is_empty() {
        return None;
    }
    match crate::admin_http::start(broker.clone(), health.clone()).await {
        Ok(task) => Some(task),
        Err(e) => {
            error!(admin_listen = %broker.config.admin_listen, "cannot serve the admin endpoint: {e}; free the port or change admin_listen");
            std::process::exit(1);
        }
    }
}

/// Lets open connections finish their in-flight requests, then waits for the
/// other shards to do the same, within `shutdown_drain_timeout_ms` in all.
async fn drain(net: &Net, shard_count: usize, barrier: &ShutdownBarrier) {
    let deadline = Instant::now() + Duration::from_millis(net.broker.config.shutdown_drain_timeout_ms);
    info!(connections = net.broker.connections.get(), "stopping: draining connections");
    net.stop.raise();
    while net.broker.connections.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
    }
    if net.broker.connections.get() > 0 {
        warn!(
            connections = net.broker.connections.get(),
            "connections still busy after shutdown_drain_timeout_ms; closing partitions anyway"
        );
    }
    barrier.drained_shards.fetch_add(1, Ordering::AcqRel);
    while barrier.drained_shards.load(Ordering::Acquire) < shard_count && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
    }
}

/// Retention checks, and the fdatasync of acks=0/1 data by each topic's
/// flush.ms (`flush_interval_ms` unless the topic sets its own).
fn start_periodic_tasks(broker: &Rc<Broker>) -> Vec<glommio::Task<()>> {
    let retention_broker = broker.clone();
    let retention_every = Duration::from_millis(broker.config.retention_check_interval_ms.max(1));
    let mut tasks = vec![shards::periodic(retention_every, move || {
        let broker = retention_broker.clone();
        async move {
            broker.enforce_retention().await;
            true
        }
    })];
    let group_broker = broker.clone();
    tasks.push(shards::periodic(Duration::from_millis(crate::group::GROUP_TICK_MS), move || {
        let broker = group_broker.clone();
        async move {
            broker.groups.tick(&broker).await;
            true
        }
    }));
    let expiry_broker = broker.clone();
    let expiry_every = Duration::from_millis(broker.config.offsets_retention_check_interval_ms.max(1));
    tasks.push(shards::periodic(expiry_every, move || {
        let broker = expiry_broker.clone();
        async move {
            let retention_ms = broker.config.offsets_retention_minutes.saturating_mul(60_000);
            broker.groups.expire_offsets(&broker, retention_ms).await;
            true
        }
    }));
    // Kafka checks for lagging followers every half of the lag bound.
    let isr_broker = broker.clone();
    let isr_every = Duration::from_millis((broker.config.replica_lag_time_max_ms / 2).max(1));
    tasks.push(shards::periodic(isr_every, move || {
        let broker = isr_broker.clone();
        async move {
            crate::replication::shrink_lagging(&broker);
            true
        }
    }));
    if broker.config.log_cleaner_enable {
        tasks.push(start_cleaner(broker.clone()));
    }
    tasks.push(shards::periodic(Duration::from_millis(metrics::BUSY_SAMPLE_MS), || async {
        metrics::with(metrics::ShardMetrics::sample_busy);
        true
    }));
    // flush.ms of each partition (flush_interval_ms, or the topic's own).
    let flush_broker = broker.clone();
    tasks.push(shards::periodic(Duration::from_millis(broker.config.flush_check_interval_ms), move || {
        let broker = flush_broker.clone();
        async move {
            broker.flush_due().await;
            true
        }
    }));
    tasks
}

/// The shard's log cleaner, in a task queue of its own with a tenth of the
/// default queue's CPU shares: requests come first when both are busy.
fn start_cleaner(broker: Rc<Broker>) -> glommio::Task<()> {
    let queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(CLEANER_SHARES),
        glommio::Latency::NotImportant,
        "log-cleaner",
    );
    let every = Duration::from_millis(broker.config.log_cleaner_backoff_ms);
    let cleaner = async move {
        loop {
            glommio::timer::sleep(every).await;
            broker.clean_logs().await;
        }
    };
    glommio::spawn_local_into(cleaner, queue).expect("the cleaner's task queue was just created")
}

/// CPU shares of the cleaner's task queue (glommio's default queue has 1000).
const CLEANER_SHARES: usize = 100;

async fn accept_loop(net: Rc<Net>, listener: TcpListener) {
    let broker = &net.broker;
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                warn!("accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if broker.connections.get() >= broker.config.max_connections_per_shard {
            metrics::with(|m| metrics::bump(&m.connections_refused, 1));
            warn!(
                limit = broker.config.max_connections_per_shard,
                "refusing connection: shard at its connection limit"
            );
            continue;
        }
        metrics::with(|m| metrics::bump(&m.connections_accepted, 1));
        let here = broker.shard_id;
        match net.balance.as_ref().map(|counts| (counts, counts.choose(here, broker.shard_count))) {
            Some((counts, shard)) if shard != here => hand_over(&net, counts, stream, shard),
            _ => serve_here(&net, stream),
        }
    }
}

/// Serves a connection on this shard (counted in the shared counts already
/// when balancing) until it ends.
fn serve_here(net: &Rc<Net>, stream: TcpStream) {
    let broker = &net.broker;
    broker.connections.set(broker.connections.get() + 1);
    if let Ok(peer) = stream.peer_addr() {
        debug!(%peer, connections = broker.connections.get(), "connection accepted");
    }
    let net = net.clone();
    glommio::spawn_local(async move {
        serve_connection(&net, stream).await;
        let broker = &net.broker;
        broker.connections.set(broker.connections.get() - 1);
        if let Some(counts) = &net.balance {
            counts.release(broker.shard_id, broker.shard_count);
        }
    })
    .detach();
}

/// Sends an accepted connection to `shard`, which serves fewer, without
/// waiting: if its mailbox is full, this shard serves the connection itself
/// (the accept loop never waits for another shard).
fn hand_over(net: &Rc<Net>, counts: &ConnectionCounts, stream: TcpStream, shard: usize) {
    let broker = &net.broker;
    let socket = match balance::into_socket(stream) {
        Ok(socket) => socket,
        Err(e) => {
            warn!("cannot hand a connection over: {e}; closed");
            counts.release(shard, broker.shard_count);
            return;
        }
    };
    match broker.mailbox.try_send(shard, ShardMsg::Connection { socket }) {
        Ok(()) => metrics::with(|m| metrics::bump(&m.connections_handed_over, 1)),
        Err(returned) => {
            counts.release(shard, broker.shard_count);
            if let Some(ShardMsg::Connection { socket }) = returned {
                counts.add(broker.shard_id, broker.shard_count);
                serve_here(net, balance::from_socket(socket));
            } else {
                warn!(shard, "cannot hand a connection over: the shard is gone; closed");
            }
        }
    }
}

/// Serves the connections other shards hand over to this one.
async fn take_handed_over(net: Rc<Net>, queue: glommio::channels::local_channel::LocalReceiver<std::os::fd::OwnedFd>) {
    while let Some(socket) = queue.recv().await {
        serve_here(&net, balance::from_socket(socket));
    }
}

/// One connection's state shared by its reader, its writer and its requests.
struct Conn {
    peer: Rc<str>,
    /// The socket, to ask how many bytes have arrived (the stream lives as
    /// long as the connection's reader).
    fd: RawFd,
    /// Requests read and not yet answered.
    unanswered: Cell<usize>,
    /// A handler answered by closing the connection (a failed acks=0
    /// produce, a bad request): no later request may take effect.
    closing: Cell<bool>,
    /// When a request was last read or a response last written.
    last_active: Cell<Instant>,
    /// Answered but unsent response bytes (`max_unsent_response_bytes`).
    unsent: Rc<ByteBudget>,
    /// Raised when the writer ends: the reader must not wait for budgets
    /// or queue slots that only the writer gives back.
    writer_gone: StopSignal,
    /// Raised when the reader gives up on the connection (peer reset, bad or
    /// late frame, idle): the writer drops the responses still owed instead
    /// of waiting for them or for a client that may never read them.
    abandoned: StopSignal,
}

impl Conn {
    fn touch(&self) {
        self.last_active.set(Instant::now());
    }
}

/// Why a connection's reader stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed between frames, or the shard is stopping: the
    /// requests already read are still answered.
    Drain,
    /// The connection is given up: nothing more is sent on it.
    Abort,
}

/// A dispatched request: its handler, and the request bytes it holds in the
/// budgets until its response is written.
struct Pending {
    reply: Handler,
    held: (StaticPermit, Charge),
    timing: Timing,
    _in_flight: InFlight,
}

/// When a request was read and dispatched, for its latency metrics.
struct Timing {
    api: ApiKey,
    read_at: Instant,
    dispatched_at: Instant,
}

/// Counts a request in the shard's in-flight gauge while it lives.
struct InFlight;

impl InFlight {
    fn new() -> InFlight {
        metrics::with(|m| metrics::bump(&m.requests_in_flight, 1));
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::with(|m| m.requests_in_flight.set(m.requests_in_flight.get().saturating_sub(1)));
    }
}

async fn serve_connection(net: &Net, stream: TcpStream) {
    let config = &net.broker.config;
    let peer: Rc<str> = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into()).into();
    let _ = stream.set_nodelay(true);
    let conn = Rc::new(Conn {
        peer,
        fd: stream.as_raw_fd(),
        unanswered: Cell::new(0),
        closing: Cell::new(false),
        last_active: Cell::new(Instant::now()),
        unsent: ByteBudget::new(config.max_unsent_response_bytes),
        writer_gone: StopSignal::default(),
        abandoned: StopSignal::default(),
    });
    let (reader, writer) = stream.split();
    let (pending_tx, pending_rx) = local_channel::new_bounded::<Pending>(config.max_inflight_requests);
    let writer_task = glommio::spawn_local(write_responses(pending_rx, writer, conn.clone(), config.slow_request_ms));
    let mut reader = BufReader::with_capacity(SOCKET_BUFFER_BYTES, reader);
    // Bytes of requests in flight on this connection; reading waits when spent.
    let budget_bytes = config.max_inflight_request_bytes;
    let budget = Rc::new(Semaphore::new(budget_bytes as u64));
    let mut previous_applied = None;
    // Every wait below also ends when the writer does (write failed, or a
    // handler closed the connection): nothing read from then on is answered.
    let end = loop {
        if conn.writer_gone.is_raised() {
            break End::Abort;
        }
        // A client that does not read its responses gets no more served.
        if unless(conn.unsent.wait_available(), conn.writer_gone.raised()).await.is_none() {
            break End::Abort;
        }
        let (len, deadline) = match read_frame_len(net, &conn, &mut reader).await {
            Ok(header) => header,
            Err(end) => break end,
        };
        // A frame larger than the whole budget takes all of it.
        let cost = len.min(budget_bytes) as u64;
        let waited_since = Instant::now();
        let acquire = budget.acquire_static_permit(cost);
        let Some(Ok(permit)) = unless(acquire, conn.writer_gone.raised()).await else { break End::Abort };
        // Waiting for this connection's earlier requests is not the client's delay.
        let deadline = deadline + waited_since.elapsed();
        let Some((frame, charge)) = read_frame_body(net, &conn, &mut reader, len, deadline).await else {
            break End::Abort;
        };
        let read_at = Instant::now();
        // The previous request must have taken effect first: a connection's
        // requests take effect in the order they arrived. An OffsetCommit
        // behind an OffsetCommit waits for it itself (a commit never closes
        // the connection once dispatched), so that commits pipelined to a
        // coordinator on another shard need not each wait for a wake-up
        // from there (see `handlers::Applied`).
        let commit = is_offset_commit(&frame);
        let mut handed_over: Option<AppliedWait> = None;
        if let Some((previous, previous_commit)) = previous_applied.take() {
            if commit && previous_commit {
                handed_over = Some(previous);
            } else if unless(previous.applied(), conn.writer_gone.raised()).await.is_none() {
                break End::Abort;
            }
        }
        if conn.closing.get() {
            break End::Drain; // the writer answers what came before, then closes
        }
        let in_flight = InFlight::new();
        let dispatched_at = Instant::now();
        let Some((reply, applied, api)) = dispatch(net, &conn, frame, handed_over) else { break End::Abort };
        previous_applied = Some((applied, commit));
        let timing = Timing { api, read_at, dispatched_at };
        let pending = Pending { reply, held: (permit, charge), timing, _in_flight: in_flight };
        // glommio's `send` waiting on a full queue does not notice that the
        // receiver is gone (it waits for room forever), so watch the writer.
        let queued = unless(pending_tx.send(pending), conn.writer_gone.raised());
        if !matches!(queued.await, Some(Ok(()))) {
            break End::Abort; // the writer gave up on this connection
        }
    };
    if end == End::Abort {
        conn.abandoned.raise();
    }
    // Requests still queued are dropped with the queue once the writer is
    // done with it, which cancels their handlers (storage owns its work).
    drop(pending_tx);
    let _ = writer_task.await;
}

/// Whether a frame is an OffsetCommit request (by its API key).
fn is_offset_commit(frame: &[u8]) -> bool {
    frame.len() >= 2 && i16::from_be_bytes([frame[0], frame[1]]) == ApiKey::OffsetCommit as i16
}

/// Parses a frame and starts its handler; None if the frame is not a request.
/// Also returns what resolves once the request has taken effect. `previous`:
/// the previous request's signal, for the handler to wait on.
fn dispatch(
    net: &Net,
    conn: &Rc<Conn>,
    frame: Bytes,
    previous: Option<AppliedWait>,
) -> Option<(Handler, AppliedWait, ApiKey)> {
    let mut request = match handlers::parse_request(frame) {
        Ok(request) => request,
        Err(FrameError(reason)) => {
            crate::logging::client_error(&conn.peer, &format!("closing connection: {reason}"));
            return None;
        }
    };
    conn.unanswered.set(conn.unanswered.get() + 1);
    request.peer = Some(conn.peer.clone());
    let api = request.api_key;
    metrics::with(|m| m.request(api, request.version()));
    let broker = net.broker.clone();
    let (applied, applied_wait) = handlers::Applied::new();
    let handler = if request.api_key == ApiKey::OffsetCommit {
        // Its own, small task: the router's future has room for any
        // handler's state, and a task's future is allocated and moved whole.
        spawn_handler(conn.clone(), handlers::handle_offset_commit(broker, request, applied, previous))
    } else {
        spawn_handler(conn.clone(), async move { handlers::handle(&broker, request, applied, previous).await })
    };
    Some((handler, applied_wait, api))
}

/// Runs a request's handler in a task of its own and notes how it answers.
/// A combinator, not an `async` block: that would hold the handler's future
/// twice (captured, then awaited), and a task's future is allocated whole.
fn spawn_handler(conn: Rc<Conn>, handler: impl Future<Output = Result<Reply, FrameError>> + 'static) -> Handler {
    glommio::spawn_local(handler.map(move |reply| {
        // Set before this task yields, so before the reader, woken by the
        // dropped `applied`, can dispatch the next request.
        match &reply {
            Ok(Reply::Send(parts)) => conn.unsent.take(parts.iter().map(Bytes::len).sum()),
            Ok(Reply::Close(_)) | Err(_) => conn.closing.set(true),
            Ok(Reply::Nothing) => {}
        }
        (reply, Instant::now())
    }))
}

/// A request's handler task: its reply, and when it was ready.
type Handler = glommio::Task<(Result<Reply, FrameError>, Instant)>;

/// Resolves when either `a` or `b` does.
async fn either(a: impl Future<Output = ()>, b: impl Future<Output = ()>) {
    let _ = unless(a, b).await;
}

/// Runs `work` unless `stop` resolves first.
async fn unless<T>(work: impl Future<Output = T>, stop: impl Future<Output = ()>) -> Option<T> {
    let (mut work, mut stop) = (pin!(work), pin!(stop));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(value) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(value));
        }
        stop.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// How a wait for the client ended.
enum Woke<T> {
    Done(T),
    TimedOut,
    Stopping,
}

/// Runs `work` until it completes, `timeout` passes, or `stop` resolves.
/// `work` must keep its progress outside itself: it is dropped when it loses.
async fn race<T>(work: impl Future<Output = T>, timeout: Duration, stop: impl Future<Output = ()>) -> Woke<T> {
    let (mut work, mut stop) = (pin!(work), pin!(stop));
    let mut timer = pin!(glommio::timer::sleep(timeout));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(value) = work.as_mut().poll(cx) {
            return Poll::Ready(Woke::Done(value));
        }
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Woke::Stopping);
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Woke::TimedOut);
        }
        Poll::Pending
    })
    .await
}

type Reader = BufReader<futures::io::ReadHalf<TcpStream>>;

/// Waits for the next frame header; returns the frame's length and the
/// deadline for the rest of it (socket_request_read_timeout_ms from its first
/// byte). An error when the connection should close: `Drain` if the client
/// closed between frames or the shard is stopping, `Abort` otherwise (reset,
/// idle, half-sent header, bad length, writer gone).
async fn read_frame_len(net: &Net, conn: &Conn, reader: &mut Reader) -> Result<(usize, Instant), End> {
    let read_timeout = Duration::from_millis(net.broker.config.socket_request_read_timeout_ms);
    let mut header = [0u8; 4];
    let mut got = 0;
    let mut deadline = None; // set by the frame's first byte
    while got < header.len() {
        if net.stop.is_raised() {
            return Err(End::Drain); // take no new request; the writer finishes the others
        }
        let read = if reader.buffer().len() >= header.len() - got {
            Woke::Done(reader.read(&mut header[got..]).await) // no wait: already here
        } else {
            let wait = deadline.map_or_else(|| idle_left(net, conn), left);
            race(reader.read(&mut header[got..]), wait, either(net.stop.raised(), conn.writer_gone.raised())).await
        };
        match read {
            Woke::Done(Ok(0)) if got == 0 => return Err(End::Drain),
            Woke::Done(Ok(0)) | Woke::Done(Err(_)) => return Err(End::Abort),
            Woke::Stopping if conn.writer_gone.is_raised() => return Err(End::Abort),
            Woke::Stopping => return Err(End::Drain),
            Woke::Done(Ok(n)) => {
                got += n;
                deadline.get_or_insert_with(|| Instant::now() + read_timeout);
            }
            Woke::TimedOut if deadline.is_some() => return frame_timed_out(conn, got, header.len()).ok_or(End::Abort),
            Woke::TimedOut if is_idle(net, conn) => {
                info!(peer = %conn.peer, "closing idle connection (connections_max_idle_ms)");
                return Err(End::Abort);
            }
            Woke::TimedOut => {}
        }
    }
    let len = i32::from_be_bytes(header);
    let max_bytes = net.broker.config.socket_request_max_bytes;
    if len < 0 || len as usize > max_bytes {
        let message =
            format!("closing connection: frame length {len} out of bounds (socket_request_max_bytes {max_bytes})");
        crate::logging::client_error(&conn.peer, &message);
        return Err(End::Abort);
    }
    Ok((len as usize, deadline.unwrap_or_else(|| Instant::now() + read_timeout)))
}

fn idle_left(net: &Net, conn: &Conn) -> Duration {
    let idle = Duration::from_millis(net.broker.config.connections_max_idle_ms);
    idle.saturating_sub(conn.last_active.get().elapsed()).max(Duration::from_millis(1))
}

/// Idle: nothing read or written for connections_max_idle_ms and no request
/// being served (a long-polling Fetch is not idleness).
fn is_idle(net: &Net, conn: &Conn) -> bool {
    let idle = Duration::from_millis(net.broker.config.connections_max_idle_ms);
    conn.unanswered.get() == 0 && conn.last_active.get().elapsed() >= idle
}

/// Reads a frame body of `len` bytes into a buffer that grows only with the
/// bytes that have arrived (a header announcing 50 MiB costs nothing until
/// they come), charging the shard's request budget as it grows. None when
/// the connection should close (client gone, frame late, writer gone).
///
/// The buffer is never zeroed: bytes are copied in from the reader's buffer
/// or received straight into its spare capacity, so a produce's bytes are
/// written once, by the kernel (zeroing first cost 7-10% of a produce shard).
async fn read_frame_body(
    net: &Net,
    conn: &Conn,
    reader: &mut Reader,
    len: usize,
    deadline: Instant,
) -> Option<(Bytes, Charge)> {
    let mut charge = Charge::new(net.request_budget.clone());
    // Invariant: frame.len() bytes received, room bytes charged and reserved.
    let mut frame: Vec<u8> = Vec::new();
    let mut room = 0;
    while frame.len() < len {
        let filled = frame.len();
        if filled == room {
            // Asking the kernel costs a syscall: not when the rest is buffered here.
            let buffered = reader.buffer().len();
            let mut arrived = if buffered >= len - filled { buffered } else { buffered + queued_in_kernel(conn.fd) };
            if arrived == 0 {
                // Wait for bytes in the socket buffer before allocating for them.
                match race(reader.fill_buf(), left(deadline), conn.writer_gone.raised()).await {
                    Woke::Done(Ok([])) | Woke::Done(Err(_)) => return closed_mid_frame(conn),
                    Woke::Done(Ok(got)) => arrived = got.len(),
                    Woke::TimedOut => return frame_timed_out(conn, filled, len),
                    Woke::Stopping => return None,
                }
            }
            let target = next_frame_capacity(filled, len, arrived);
            // The wait for the budget counts against the frame's time too:
            // otherwise half-sent frames holding all of it would wedge the shard.
            match race(charge.grow(target - room), left(deadline), conn.writer_gone.raised()).await {
                Woke::Done(()) => {}
                Woke::TimedOut => return frame_timed_out(conn, filled, len),
                Woke::Stopping => return None,
            }
            frame.reserve_exact(target - filled);
            room = target;
        }
        let want = room - filled;
        let buffered = reader.buffer();
        if !buffered.is_empty() {
            let n = buffered.len().min(want);
            frame.extend_from_slice(&buffered[..n]);
            reader.consume_unpin(n);
            continue;
        }
        // Straight from the socket into the frame: through the reader's
        // buffer would copy every byte of a produce twice.
        match recv_now(conn.fd, &mut frame, want) {
            Some(Ok(0)) | Some(Err(_)) => return closed_mid_frame(conn),
            Some(Ok(_)) => {}
            // Nothing queued: wait until bytes arrive (into the reader's
            // buffer, copied from there on the next round).
            None => match race(reader.fill_buf(), left(deadline), conn.writer_gone.raised()).await {
                Woke::Done(Ok([])) | Woke::Done(Err(_)) => return closed_mid_frame(conn),
                Woke::Done(Ok(_)) => {}
                Woke::TimedOut => return frame_timed_out(conn, filled, len),
                Woke::Stopping => return None,
            },
        }
    }
    conn.touch();
    Some((Bytes::from(frame), charge))
}

/// Receives up to `want` bytes already queued on socket `fd` into `frame`'s
/// spare capacity, without waiting; None if nothing is queued (or the call
/// was interrupted). The socket is glommio's unbuffered stream, and the
/// caller has drained the reader's buffer, so no earlier byte is pending
/// anywhere but the kernel: order holds.
fn recv_now(fd: RawFd, frame: &mut Vec<u8>, want: usize) -> Option<std::io::Result<usize>> {
    let spare = &mut frame.spare_capacity_mut()[..want];
    // SAFETY: recv writes at most `want` bytes at `spare`, which is `want`
    // bytes of `frame`'s allocated, unused capacity.
    let got = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), want, libc::MSG_DONTWAIT) };
    if got < 0 {
        let error = std::io::Error::last_os_error();
        return match error.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => None,
            _ => Some(Err(error)),
        };
    }
    let got = got as usize;
    assert!(got <= want, "recv wrote past what it was given");
    // SAFETY: the kernel initialised the `got` bytes after the old length.
    unsafe { frame.set_len(frame.len() + got) };
    Some(Ok(got))
}

/// The frame buffer's next size: room for every byte that has arrived
/// (buffered here or queued in the kernel), and at least double, never past
/// the frame. A frame arriving fast is one allocation; one trickling in
/// holds at most twice what it sent.
fn next_frame_capacity(filled: usize, len: usize, arrived: usize) -> usize {
    let step = filled.max(arrived).max(MIN_FRAME_STEP_BYTES);
    filled.saturating_add(step).min(len)
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Bytes received on `fd` and not yet read (SIOCINQ); 0 if unknown.
fn queued_in_kernel(fd: RawFd) -> usize {
    let mut bytes: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int; fd is the open socket of this connection.
    let ok = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut bytes) } == 0;
    if ok {
        bytes.max(0) as usize
    } else {
        0
    }
}

fn closed_mid_frame<T>(conn: &Conn) -> Option<T> {
    debug!(peer = %conn.peer, "connection closed mid-frame");
    None
}

fn frame_timed_out<T>(conn: &Conn, filled: usize, len: usize) -> Option<T> {
    let message = format!(
        "closing connection: frame not received within socket_request_read_timeout_ms ({filled} of {len} bytes)"
    );
    crate::logging::client_error(&conn.peer, &message);
    None
}

async fn write_responses<W: futures::io::AsyncWrite + Unpin>(
    pending: local_channel::LocalReceiver<Pending>,
    writer: W,
    conn: Rc<Conn>,
    slow_request_ms: u64,
) {
    let mut writer = BufWriter::with_capacity(SOCKET_BUFFER_BYTES, writer);
    let flushed = send_in_order(&pending, &mut writer, &conn, slow_request_ms).await;
    // Wake a reader waiting to queue a request or for a budget only the
    // writer gives back.
    drop(pending);
    conn.writer_gone.raise();
    // Everything sent is flushed, so closing cannot wait on the client;
    // otherwise (write failed or abandoned) the socket is just dropped.
    if flushed {
        let _ = writer.close().await;
    }
}

/// Writes each response once its handler is done, in request order, until
/// the reader is done (true: all flushed), the connection fails or the
/// reader abandons it (false). Responses already done are written together:
/// the socket is flushed only before waiting for the next one.
async fn send_in_order<W: futures::io::AsyncWrite + Unpin>(
    pending: &local_channel::LocalReceiver<Pending>,
    writer: &mut W,
    conn: &Conn,
    slow_request_ms: u64,
) -> bool {
    let mut unflushed = false;
    loop {
        if conn.abandoned.is_raised() {
            return false;
        }
        let mut recv = pin!(pending.recv());
        let next = match futures::poll!(recv.as_mut()) {
            Poll::Ready(next) => next,
            Poll::Pending => {
                if unflushed && !flush(writer, conn, &mut unflushed).await {
                    return false;
                }
                let Some(next) = unless(recv, conn.abandoned.raised()).await else { return false };
                next
            }
        };
        let Some(Pending { reply, held, timing, _in_flight }) = next else {
            return !unflushed || flush(writer, conn, &mut unflushed).await;
        };
        // Dropping an abandoned handler cancels it.
        let mut reply = pin!(reply);
        let (reply, done_at) = match futures::poll!(reply.as_mut()) {
            Poll::Ready(reply) => reply,
            Poll::Pending => {
                if unflushed && !flush(writer, conn, &mut unflushed).await {
                    return false;
                }
                let Some(reply) = unless(reply, conn.abandoned.raised()).await else { return false };
                reply
            }
        };
        match reply {
            Ok(Reply::Send(parts)) => {
                let bytes = parts.iter().map(Bytes::len).sum();
                match unless(write_parts(writer, &parts), conn.abandoned.raised()).await {
                    Some(Ok(())) => unflushed = true,
                    Some(Err(e)) => {
                        debug!(peer = %conn.peer, "closing connection: {e}");
                        return false;
                    }
                    None => return false,
                }
                conn.unsent.give_back(bytes);
            }
            Ok(Reply::Nothing) => {}
            Ok(Reply::Close(reason)) | Err(FrameError(reason)) => {
                metrics::with(|m| m.error(timing.api, metrics::CONNECTION_CLOSED));
                crate::logging::client_error(&conn.peer, &format!("closing connection: {reason}"));
                return !unflushed || flush(writer, conn, &mut unflushed).await;
            }
        }
        observe_latency(conn, &timing, done_at, slow_request_ms);
        // Only now are the request's bytes released: a slow reader holds its
        // budgets and so stops its own reading.
        drop(held);
        conn.unanswered.set(conn.unanswered.get() - 1);
        conn.touch();
    }
}

/// Records where a request's time went, once its response is written, and
/// logs it if it took longer than `slow_request_ms`. APIs that wait by
/// design (a long-polling Fetch, a JoinGroup or SyncGroup waiting for the
/// rebalance) are not called slow for it.
fn observe_latency(conn: &Conn, timing: &Timing, done_at: Instant, slow_request_ms: u64) {
    let written_at = Instant::now();
    let queue = timing.dispatched_at.saturating_duration_since(timing.read_at);
    let storage = done_at.saturating_duration_since(timing.dispatched_at);
    let network = written_at.saturating_duration_since(done_at);
    metrics::with(|m| {
        m.latency(timing.api, metrics::Stage::Queue, queue);
        m.latency(timing.api, metrics::Stage::Storage, storage);
        m.latency(timing.api, metrics::Stage::Network, network);
    });
    let total = written_at.saturating_duration_since(timing.read_at);
    let waits_by_design = matches!(timing.api, ApiKey::Fetch | ApiKey::JoinGroup | ApiKey::SyncGroup);
    if total.as_millis() as u64 >= slow_request_ms && !waits_by_design {
        metrics::with(|m| metrics::bump(&m.slow_requests, 1));
        warn!(
            peer = %conn.peer,
            api = ?timing.api,
            total_ms = total.as_millis() as u64,
            queue_ms = queue.as_millis() as u64,
            storage_ms = storage.as_millis() as u64,
            network_ms = network.as_millis() as u64,
            "slow request (slow_request_ms)"
        );
    }
}

/// Flushes buffered responses; false if the connection failed or was abandoned.
async fn flush<W: futures::io::AsyncWrite + Unpin>(writer: &mut W, conn: &Conn, unflushed: &mut bool) -> bool {
    match unless(writer.flush(), conn.abandoned.raised()).await {
        Some(Ok(())) => {
            *unflushed = false;
            true
        }
        Some(Err(e)) => {
            debug!(peer = %conn.peer, "closing connection: {e}");
            false
        }
        None => false,
    }
}

/// Writes one response into the buffered writer (large parts go straight through).
async fn write_parts<W: futures::io::AsyncWrite + Unpin>(writer: &mut W, parts: &[Bytes]) -> std::io::Result<()> {
    for part in parts {
        writer.write_all(part).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::next_frame_capacity;

    #[test]
    fn frame_buffer_grows_with_arrived_bytes() {
        let mib = 1 << 20;
        assert_eq!(next_frame_capacity(0, 50 * mib, 4), 16 << 10, "a few bytes cost one small step");
        assert_eq!(next_frame_capacity(0, 100, 100), 100, "a frame already buffered is one allocation");
        assert_eq!(next_frame_capacity(256 << 10, 50 * mib, 0), 512 << 10);
        assert_eq!(next_frame_capacity(32 * mib, 50 * mib, 0), 50 * mib, "never past the frame");
    }
}
