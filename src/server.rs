//! The network side of a shard: its own SO_REUSEPORT listener, and one task
//! pair per connection — a reader that frames and dispatches requests (many
//! in flight, up to `max_inflight_requests`) and a writer that sends the
//! responses back in request order.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use tracing::{debug, error, info, warn};

use crate::broker::{Broker, ShardMsg};
use crate::config::Config;
use crate::handlers::{self, FrameError};
use crate::protocol::Reply;

/// Socket read and write buffer sizes.
const SOCKET_BUFFER_BYTES: usize = 256 << 10;

/// The body every shard runs: join the broker, bind, serve until stopped,
/// then flush and sync every partition it owns.
pub async fn run_shard(mut shard: shards::Shard<ShardMsg>, config: Arc<Config>) {
    let broker = Rc::new(Broker::new(shard.id, shard.count, config.clone(), shard.mailbox.clone()));
    if let Err(e) = crate::storage::segment::probe_device(&config.data_dir, shard.id).await {
        error!("data directory {} is not usable: {e}", config.data_dir.display());
        std::process::exit(1);
    }
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
    let flusher = start_periodic_tasks(&broker);
    let acceptor = glommio::spawn_local(accept_loop(broker.clone(), listener));
    shard.stopped().await;
    info!(shard = shard.id, "stopping: flushing partitions");
    drop(acceptor.cancel());
    drop(flusher);
    broker.close_all().await;
}

fn start_periodic_tasks(broker: &Rc<Broker>) -> Vec<glommio::Task<()>> {
    let (flush_broker, retention_broker) = (broker.clone(), broker.clone());
    let flush_every = Duration::from_millis(broker.config.flush_interval_ms.max(1));
    let retention_every = Duration::from_millis(broker.config.retention_check_interval_ms.max(1));
    vec![
        shards::periodic(flush_every, move || {
            let broker = flush_broker.clone();
            async move {
                broker.flush_all().await;
                true
            }
        }),
        shards::periodic(retention_every, move || {
            let broker = retention_broker.clone();
            async move {
                broker.enforce_retention().await;
                true
            }
        }),
    ]
}

async fn accept_loop(broker: Rc<Broker>, listener: TcpListener) {
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
            warn!(
                limit = broker.config.max_connections_per_shard,
                "refusing connection: shard at its connection limit"
            );
            continue;
        }
        broker.connections.set(broker.connections.get() + 1);
        let broker = broker.clone();
        glommio::spawn_local(async move {
            serve_connection(&broker, stream).await;
            broker.connections.set(broker.connections.get() - 1);
        })
        .detach();
    }
}

type Pending = glommio::Task<Result<Reply, FrameError>>;

async fn serve_connection(broker: &Rc<Broker>, stream: TcpStream) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.split();
    let (pending_tx, pending_rx) = local_channel::new_bounded::<Pending>(broker.config.max_inflight_requests);
    let writer_task = glommio::spawn_local(write_responses(pending_rx, writer, peer.clone()));
    let mut reader = BufReader::with_capacity(SOCKET_BUFFER_BYTES, reader);
    let max_bytes = broker.config.socket_request_max_bytes;
    // Bytes of requests in flight on this connection; reading waits when spent.
    let budget_bytes = broker.config.max_inflight_request_bytes;
    let budget = Rc::new(Semaphore::new(budget_bytes as u64));
    loop {
        let mut len = [0u8; 4];
        if reader.read_exact(&mut len).await.is_err() {
            break; // closed by the client
        }
        let len = i32::from_be_bytes(len);
        if len < 0 || len as usize > max_bytes {
            warn!(%peer, len, max_bytes, "closing connection: frame length out of bounds (socket_request_max_bytes)");
            break;
        }
        // A frame larger than the whole budget takes all of it.
        let cost = (len as usize).min(budget_bytes) as u64;
        let Ok(permit) = budget.clone().acquire_static_permit(cost).await else { break };
        let mut frame = BytesMut::zeroed(len as usize);
        if reader.read_exact(&mut frame).await.is_err() {
            debug!(%peer, "connection closed mid-frame");
            break;
        }
        let request = match handlers::parse_request(frame.freeze()) {
            Ok(request) => request,
            Err(FrameError(reason)) => {
                warn!(%peer, "closing connection: {reason}");
                break;
            }
        };
        let handler_broker = broker.clone();
        let task = glommio::spawn_local(async move {
            let reply = handlers::handle(&handler_broker, request).await;
            drop(permit);
            reply
        });
        if pending_tx.send(task).await.is_err() {
            break; // the writer gave up on this connection
        }
    }
    drop(pending_tx);
    let _ = writer_task.await;
}

async fn write_responses<W: futures::io::AsyncWrite + Unpin>(
    pending: local_channel::LocalReceiver<Pending>,
    writer: W,
    peer: String,
) {
    let mut writer = BufWriter::with_capacity(SOCKET_BUFFER_BYTES, writer);
    while let Some(task) = pending.recv().await {
        match task.await {
            Ok(Reply::Send(parts)) => {
                for part in parts {
                    if writer.write_all(&part).await.is_err() {
                        return;
                    }
                }
                if writer.flush().await.is_err() {
                    return;
                }
            }
            Ok(Reply::Nothing) => {}
            Ok(Reply::Close(reason)) | Err(FrameError(reason)) => {
                warn!(%peer, "closing connection: {reason}");
                break;
            }
        }
    }
    let _ = writer.close().await;
}
