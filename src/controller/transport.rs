//! The controller's network: Raft messages between voters, and requests
//! from brokers to the active controller (heartbeats, forwarded changes),
//! over TCP on `controller_listen`.
//!
//! A frame is a u32 length (of what follows), a kind byte and the payload.
//! Raft messages are one-way, on one outgoing connection per peer fed by a
//! bounded queue (Raft tolerates lost messages: a full queue drops the
//! newest, and a broken connection drops what it held, then redials).
//! Requests each take a fresh connection and get one answer frame.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use protobuf::Message as _;
use raft::prelude::Message;
use serde::{de::DeserializeOwned, Serialize};
use shards::NodeId;
use tracing::{debug, warn};

use super::store::MAX_FRAME_BYTES;

pub const KIND_RAFT: u8 = 1;
pub const KIND_REQUEST: u8 = 2;
pub const KIND_RESPONSE: u8 = 3;
/// Raft messages queued per peer while its connection is down or slow.
const PEER_QUEUE_MESSAGES: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause before redialling a peer that refused or dropped a connection.
const REDIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Whole-request bound for a controller request (connect, send, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served at once on the controller listener.
const MAX_CONNECTIONS: usize = 256;

/// Reads one frame: (kind, payload). None at a clean end of stream.
pub async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match stream.read_exact(&mut header[..1]).await {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    stream.read_exact(&mut header[1..]).await?;
    let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("controller frame of {len} bytes")));
    }
    // The buffer grows as bytes arrive: a length alone allocates nothing.
    let mut payload = Vec::new();
    (&mut *stream).take(len as u64 - 1).read_to_end(&mut payload).await?;
    if payload.len() != len - 1 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some((header[4], payload)))
}

pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.extend_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// What the controller's listener hands its owner.
pub trait Inbound: 'static {
    fn raft_message(&self, message: Message);
    /// Answers one request (JSON in, JSON out).
    fn request(self: Rc<Self>, payload: Vec<u8>) -> futures::future::LocalBoxFuture<'static, Vec<u8>>;
}

/// Accepts connections on `listener` until dropped.
pub async fn serve<T: Inbound>(listener: TcpListener, owner: Rc<T>) {
    let open = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                warn!("controller listener: {e}");
                glommio::timer::sleep(REDIAL_BACKOFF).await;
                continue;
            }
        };
        if open.get() >= MAX_CONNECTIONS {
            continue; // dropped: closes it
        }
        open.set(open.get() + 1);
        let (owner, open) = (owner.clone(), open.clone());
        glommio::spawn_local(async move {
            if let Err(e) = serve_connection(stream, owner).await {
                debug!("controller connection: {e}");
            }
            open.set(open.get() - 1);
        })
        .detach();
    }
}

async fn serve_connection<T: Inbound>(mut stream: TcpStream, owner: Rc<T>) -> std::io::Result<()> {
    while let Some((kind, payload)) = read_frame(&mut stream).await? {
        match kind {
            KIND_RAFT => match Message::parse_from_bytes(&payload) {
                Ok(message) => owner.raft_message(message),
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
            },
            KIND_REQUEST => {
                let answer = owner.clone().request(payload).await;
                stream.write_all(&frame(KIND_RESPONSE, &answer)).await?;
                stream.flush().await?;
            }
            other => {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("frame kind {other}")));
            }
        }
    }
    Ok(())
}

/// Sends `request` to the controller endpoint `addr` and reads its answer.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(addr: &str, request: &Req) -> anyhow::Result<Resp> {
    let payload = serde_json::to_vec(request)?;
    let exchange = async {
        let mut stream = connect(addr).await.map_err(glommio::GlommioError::IoError)?;
        stream.write_all(&frame(KIND_REQUEST, &payload)).await.map_err(glommio::GlommioError::IoError)?;
        stream.flush().await.map_err(glommio::GlommioError::IoError)?;
        match read_frame(&mut stream).await.map_err(glommio::GlommioError::IoError)? {
            Some((KIND_RESPONSE, answer)) => Ok(answer),
            _ => Err(glommio::GlommioError::IoError(std::io::Error::other("no answer"))),
        }
    };
    let answer =
        glommio::timer::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
    Ok(serde_json::from_slice(&answer)?)
}

async fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let resolved: SocketAddr = resolve(addr)?;
    TcpStream::connect_timeout(resolved, CONNECT_TIMEOUT).await.map_err(std::io::Error::from)
}

/// `host:port` to a socket address (the first the resolver gives).
pub fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{addr} does not resolve")))
}

/// The outgoing Raft link to one peer.
pub struct PeerLink {
    pub node_id: NodeId,
    addr: String,
    queue: RefCell<VecDeque<Vec<u8>>>,
    wake: RefCell<Option<futures::channel::oneshot::Sender<()>>>,
}

impl PeerLink {
    /// Starts the link's sender task (it lives as long as the link).
    pub fn start(node_id: NodeId, addr: String) -> Rc<PeerLink> {
        let link = Rc::new(PeerLink { node_id, addr, queue: RefCell::new(VecDeque::new()), wake: RefCell::new(None) });
        let weak = Rc::downgrade(&link);
        glommio::spawn_local(async move {
            let mut stream: Option<TcpStream> = None;
            while let Some(link) = weak.upgrade() {
                let next = link.queue.borrow_mut().pop_front();
                let Some(bytes) = next else {
                    let (tx, rx) = futures::channel::oneshot::channel();
                    *link.wake.borrow_mut() = Some(tx);
                    drop(link);
                    let _ = rx.await;
                    continue;
                };
                if stream.is_none() {
                    match connect(&link.addr).await {
                        Ok(s) => stream = Some(s),
                        Err(e) => {
                            debug!(peer = link.node_id, addr = %link.addr, "controller peer unreachable: {e}");
                            link.queue.borrow_mut().clear();
                            drop(link);
                            glommio::timer::sleep(REDIAL_BACKOFF).await;
                            continue;
                        }
                    }
                }
                let s = stream.as_mut().expect("connected above");
                if let Err(e) = s.write_all(&bytes).await {
                    debug!(peer = link.node_id, "controller peer connection lost: {e}");
                    stream = None;
                }
            }
        })
        .detach();
        link
    }

    pub fn send(&self, message: &Message) {
        let mut queue = self.queue.borrow_mut();
        if queue.len() >= PEER_QUEUE_MESSAGES {
            return;
        }
        queue.push_back(frame(KIND_RAFT, &message.write_to_bytes().expect("a raft message encodes")));
        drop(queue);
        if let Some(wake) = self.wake.borrow_mut().take() {
            let _ = wake.send(());
        }
    }
}
