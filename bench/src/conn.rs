//! One Kafka connection for the load generator: requests are written as they
//! come (pipelined) and responses, which Kafka returns in request order, are
//! matched to their senders by a reader task.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use futures::channel::oneshot;
use futures::future::{select, Either};
use futures::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

type Waiter = oneshot::Sender<Result<Bytes>>;

/// How long a request may go unanswered (`--request-timeout-ms`, one value
/// for the whole run): by default longer than any request the bench sends
/// may rightly wait (a JoinGroup up to its 60 s rebalance timeout, a Fetch
/// its max wait, a Produce the broker's write and sync), as a Kafka client's
/// `request.timeout.ms` (JoinGroup: rebalance timeout + 5 s).
static REQUEST_TIMEOUT_MS: AtomicU64 = AtomicU64::new(90_000);

pub fn set_request_timeout_ms(ms: u64) {
    REQUEST_TIMEOUT_MS.store(ms.max(1), Ordering::Relaxed);
}

pub struct Conn {
    writer: RefCell<Option<WriteHalf<TcpStream>>>,
    write_lock: Semaphore,
    pending: Rc<RefCell<VecDeque<Waiter>>>,
    next_correlation_id: Cell<i32>,
    _reader: glommio::Task<()>,
}

impl Conn {
    pub async fn connect(addr: &str) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await.map_err(|e| anyhow!("connecting to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| anyhow!("set_nodelay: {e}"))?;
        let (reader, writer) = stream.split();
        let pending: Rc<RefCell<VecDeque<Waiter>>> = Rc::default();
        let reader = glommio::spawn_local(read_responses(reader, pending.clone()));
        Ok(Conn {
            writer: RefCell::new(Some(writer)),
            write_lock: Semaphore::new(1),
            pending,
            next_correlation_id: Cell::new(1),
            _reader: reader,
        })
    }

    /// Sends a request; the returned future resolves to the response body
    /// (header removed), or to None when `expect_response` is false (acks=0).
    /// Fails after `REQUEST_TIMEOUT_MS` without an answer, so a broker that
    /// stops answering ends the run with an error instead of hanging it.
    pub async fn send<R: Encodable>(
        &self,
        api_key: ApiKey,
        version: i16,
        body: &R,
        expect_response: bool,
    ) -> Result<Option<Bytes>> {
        let timeout_ms = REQUEST_TIMEOUT_MS.load(Ordering::Relaxed);
        let exchange = pin!(self.exchange(api_key, version, body, expect_response));
        match select(exchange, pin!(glommio::timer::sleep(Duration::from_millis(timeout_ms)))).await {
            Either::Left((answer, _)) => answer,
            // The writer, if it was mid-write, went with the exchange: later
            // requests on this connection fail too.
            Either::Right(_) => bail!("no answer to {api_key:?} within request_timeout_ms ({timeout_ms})"),
        }
    }

    async fn exchange<R: Encodable>(
        &self,
        api_key: ApiKey,
        version: i16,
        body: &R,
        expect_response: bool,
    ) -> Result<Option<Bytes>> {
        let frame = encode_request(api_key, version, self.next_correlation_id(), body)?;
        let answer;
        {
            let _permit = self.write_lock.acquire_permit(1).await.map_err(|e| anyhow!("{e}"))?;
            // Registered under the write lock, so waiters queue in write order.
            answer = expect_response.then(|| {
                let (tx, rx) = oneshot::channel();
                self.pending.borrow_mut().push_back(tx);
                rx
            });
            let mut writer = self.writer.borrow_mut().take().context("connection closed")?;
            let written = writer.write_all(&frame).await;
            *self.writer.borrow_mut() = Some(writer);
            written.context("writing request")?;
        }
        let Some(answer) = answer else {
            return Ok(None);
        };
        let mut body = answer.await.map_err(|_| anyhow!("connection closed before the response"))??;
        ResponseHeader::decode(&mut body, api_key.response_header_version(version))?;
        Ok(Some(body))
    }

    /// Sends and decodes.
    pub async fn call<Req: Encodable, Resp: Decodable>(
        &self,
        api_key: ApiKey,
        version: i16,
        body: &Req,
    ) -> Result<Resp> {
        let mut bytes = self.send(api_key, version, body, true).await?.expect("a response was expected");
        Resp::decode(&mut bytes, version)
    }

    fn next_correlation_id(&self) -> i32 {
        let id = self.next_correlation_id.get();
        self.next_correlation_id.set(id.wrapping_add(1));
        id
    }
}

fn encode_request<R: Encodable>(api_key: ApiKey, version: i16, correlation_id: i32, body: &R) -> Result<Bytes> {
    let mut header = RequestHeader::default();
    header.request_api_key = api_key as i16;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_static_str("spate-bench"));
    let mut buf = BytesMut::with_capacity(body.compute_size(version).unwrap_or(1024) + 64);
    buf.put_i32(0);
    header.encode(&mut buf, api_key.request_header_version(version))?;
    body.encode(&mut buf, version)?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

async fn read_responses(reader: ReadHalf<TcpStream>, pending: Rc<RefCell<VecDeque<Waiter>>>) {
    let mut reader = BufReader::with_capacity(256 << 10, reader);
    let failure = loop {
        let mut len = [0u8; 4];
        if let Err(e) = reader.read_exact(&mut len).await {
            break anyhow!("connection closed: {e}");
        }
        let len = i32::from_be_bytes(len);
        if len < 4 {
            break anyhow!("bad response length {len}");
        }
        let mut body = BytesMut::zeroed(len as usize);
        if let Err(e) = reader.read_exact(&mut body).await {
            break anyhow!("connection closed mid-response: {e}");
        }
        let Some(waiter) = pending.borrow_mut().pop_front() else {
            break anyhow!("a response nobody asked for");
        };
        let _ = waiter.send(Ok(body.freeze()));
    };
    for waiter in pending.borrow_mut().drain(..) {
        let _ = waiter.send(Err(anyhow!("{failure}")));
    }
}

/// Fails with the Kafka error name when `code` is not 0.
pub fn check(code: i16, what: &str) -> Result<()> {
    use kafka_protocol::error::ParseResponseErrorCode;
    match code.err() {
        None => Ok(()),
        Some(e) => bail!("{what}: {e:?}"),
    }
}
