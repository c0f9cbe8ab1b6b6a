//! The operator's HTTP endpoint (`admin_listen`, default `0.0.0.0:9644`,
//! Redpanda's admin port): `GET /metrics` (Prometheus text), `GET /v1/health`
//! (the process is up), `GET /v1/ready` (every shard started and listening,
//! recovery done, metadata loaded), `GET /v1/status` (JSON) and
//! `PUT /v1/log-level` (the log filter, at run time).
//!
//! It runs on shard 0 in a task queue of its own, from before recovery on,
//! so that health answers while the log is still being recovered. One
//! request per connection (`Connection: close`); requests are bounded in
//! size, time and number, as every other input.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::metrics;

/// Bytes of an admin request's head and body together.
const MAX_REQUEST_BYTES: usize = 16 << 10;
/// A request must arrive whole within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A response must be written (read by the client) within this.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// CPU shares of the endpoint's task queue (the default queue has 1000).
const ADMIN_SHARES: usize = 100;

/// What the process knows of its own state, shared by the shards (written
/// at start-up and shutdown only, never on a request's path).
pub struct Health {
    started: Instant,
    shard_count: AtomicUsize,
    listening: AtomicUsize,
    stopping: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            shard_count: AtomicUsize::new(usize::MAX),
            listening: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        }
    }
}

impl Health {
    pub fn set_shard_count(&self, shards: usize) {
        self.shard_count.store(shards, Ordering::Release);
    }

    /// A shard has recovered its partitions and listens for clients.
    pub fn shard_listening(&self) {
        self.listening.fetch_add(1, Ordering::AcqRel);
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.started() && !self.stopping.load(Ordering::Acquire)
    }

    /// Every shard listens: start-up is over (whether stopping or not).
    pub fn started(&self) -> bool {
        self.listening.load(Ordering::Acquire) >= self.shard_count.load(Ordering::Acquire)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Binds `admin_listen` and serves it on this shard until the task is dropped.
/// Err: the address cannot be bound (the caller says so and exits).
pub async fn start(broker: Rc<Broker>, health: Arc<Health>) -> std::io::Result<glommio::Task<()>> {
    let listener = crate::server::bind_exclusive(&broker.config.admin_listen).await?;
    let addr = listener.local_addr().map_or_else(|_| broker.config.admin_listen.clone(), |a| a.to_string());
    info!(admin = %addr, "admin endpoint up: /metrics /v1/health /v1/ready /v1/status /v1/log-level");
    let queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(ADMIN_SHARES),
        glommio::Latency::NotImportant,
        "admin-http",
    );
    let serve = accept_loop(listener, broker, health);
    Ok(glommio::spawn_local_into(serve, queue).expect("the admin task queue was just created"))
}

async fn accept_loop(listener: TcpListener, broker: Rc<Broker>, health: Arc<Health>) {
    let slots = Rc::new(glommio::sync::Semaphore::new(MAX_CONNECTIONS as u64));
    loop {
        let Ok(permit) = slots.acquire_static_permit(1).await else { return };
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                warn!("admin endpoint: accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (broker, health) = (broker.clone(), health.clone());
        glommio::spawn_local(async move {
            let _permit = permit;
            if let Err(e) = serve(stream, &broker, &health).await {
                debug!("admin endpoint: {e}");
            }
        })
        .detach();
    }
}

/// A parsed request: method, path (without the query), query, body.
struct HttpRequest {
    method: String,
    path: String,
    query: String,
    body: Vec<u8>,
}

/// An answer: status, content type, body.
struct HttpResponse {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl HttpResponse {
    fn text(status: u16, body: impl Into<String>) -> HttpResponse {
        HttpResponse { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }

    fn json(status: u16, value: serde_json::Value) -> HttpResponse {
        HttpResponse { status, content_type: "application/json", body: format!("{value}\n") }
    }
}

async fn serve(mut stream: TcpStream, broker: &Rc<Broker>, health: &Health) -> std::io::Result<()> {
    let response = match glommio::timer::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await {
        Ok(request) => route(request, broker, health).await,
        Err(glommio::GlommioError::TimedOut(_)) => return Err(std::io::Error::other("request not received in time")),
        Err(reason) => HttpResponse::text(400, format!("{reason}\n")),
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason_phrase(response.status),
        response.content_type,
        response.body.len()
    );
    // A client that does not read its answer must not hold a connection slot forever.
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(response.body.as_bytes()).await?;
        stream.flush().await?;
        stream.close().await
    };
    glommio::timer::timeout(RESPONSE_TIMEOUT, async { write.await.map_err(glommio::GlommioError::IoError) })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Reads one request (head and `Content-Length` body), within [`MAX_REQUEST_BYTES`].
/// Err: why it is not a request we serve (answered with 400).
async fn read_request(stream: &mut TcpStream) -> Result<HttpRequest, glommio::GlommioError<()>> {
    let mut buf = vec![0u8; MAX_REQUEST_BYTES];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(bad("connection closed before a whole request"));
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut headers);
        let head_len = match parsed.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if filled < buf.len() => continue,
            Ok(httparse::Status::Partial) => return Err(bad("request head too large")),
            Err(e) => return Err(bad(&format!("malformed request: {e}"))),
        };
        let body_len = content_length(parsed.headers).ok_or_else(|| bad("bad Content-Length"))?;
        // Checked: a Content-Length near usize::MAX must not wrap past the bound.
        let Some(total_len) = head_len.checked_add(body_len).filter(|&total| total <= buf.len()) else {
            return Err(bad("request too large"));
        };
        let target = parsed.path.unwrap_or("/");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let (method, path, query) = (parsed.method.unwrap_or("").to_string(), path.to_string(), query.to_string());
        while filled < total_len {
            let n = stream.read(&mut buf[filled..total_len]).await?;
            if n == 0 {
                return Err(bad("connection closed before the whole body"));
            }
            filled += n;
        }
        let body = buf[head_len..total_len].to_vec();
        return Ok(HttpRequest { method, path, query, body });
    }
}

fn bad(reason: &str) -> glommio::GlommioError<()> {
    glommio::GlommioError::IoError(std::io::Error::new(std::io::ErrorKind::InvalidData, reason.to_string()))
}

fn content_length(headers: &[httparse::Header]) -> Option<usize> {
    match headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length")) {
        None => Some(0),
        Some(h) => std::str::from_utf8(h.value).ok()?.trim().parse().ok(),
    }
}

async fn route(request: HttpRequest, broker: &Rc<Broker>, health: &Health) -> HttpResponse {
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/metrics") => metrics_page(broker, health).await,
        ("GET", "/v1/health") => HttpResponse::json(200, serde_json::json!({ "status": "up" })),
        ("GET", "/v1/ready") if health.is_ready() => HttpResponse::json(200, serde_json::json!({ "ready": true })),
        ("GET", "/v1/ready") => HttpResponse::json(503, serde_json::json!({ "ready": false })),
        ("GET", "/v1/status") => status(broker, health).await,
        ("PUT", "/v1/log-level") => log_level(&request),
        ("GET", "/v1/log-level") => {
            HttpResponse::json(200, serde_json::json!({ "filter": crate::logging::current_filter() }))
        }
        (_, "/metrics" | "/v1/health" | "/v1/ready" | "/v1/status" | "/v1/log-level") => {
            HttpResponse::text(405, "method not allowed\n")
        }
        _ => HttpResponse::text(404, "not found: try /metrics, /v1/health, /v1/ready, /v1/status, /v1/log-level\n"),
    }
}

async fn metrics_page(broker: &Rc<Broker>, health: &Health) -> HttpResponse {
    let started = Instant::now();
    let mut scrape = broker.scrape().await;
    let gathered = started.elapsed();
    scrape.uptime_seconds = health.uptime().as_secs_f64();
    scrape.version = env!("CARGO_PKG_VERSION");
    scrape.commit = crate::git_commit();
    let body = metrics::encode(scrape);
    debug!(
        gather_us = gathered.as_micros() as u64,
        total_us = started.elapsed().as_micros() as u64,
        bytes = body.len(),
        "metrics scraped"
    );
    HttpResponse { status: 200, content_type: prometheus_client::encoding::prometheus_text::CONTENT_TYPE, body }
}

async fn status(broker: &Rc<Broker>, health: &Health) -> HttpResponse {
    let scrape = broker.scrape().await;
    let partitions: Vec<_> = scrape.shards.iter().flat_map(|s| &s.partitions).collect();
    let data_bytes: u64 = partitions.iter().map(|p| p.size_bytes).sum();
    let data_dir = &broker.config.data_dir;
    let (disk_total_bytes, disk_free_bytes) = crate::fsutil::disk_space(data_dir).unwrap_or((0, 0));
    HttpResponse::json(
        200,
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "commit": crate::git_commit(),
            "node_id": broker.config.node_id,
            "uptime_seconds": health.uptime().as_secs(),
            "ready": health.is_ready(),
            "shards": broker.shard_count,
            "topics": broker.meta().topics.len(),
            "partitions": partitions.len(),
            "connections": scrape.shards.iter().map(|s| s.connections).sum::<u64>(),
            "listen": broker.config.listen,
            "advertised": format!("{}:{}", broker.config.advertised_host(), broker.config.advertised_port()),
            "data_dir": data_dir.display().to_string(),
            "data_dir_used_bytes": data_bytes,
            "disk_total_bytes": disk_total_bytes,
            "disk_free_bytes": disk_free_bytes,
        }),
    )
}

/// `PUT /v1/log-level` with the filter as the body (`debug`,
/// `info,spate::storage=debug`) or as `?filter=...`.
fn log_level(request: &HttpRequest) -> HttpResponse {
    let from_query = request.query.split('&').find_map(|pair| pair.strip_prefix("filter=")).map(percent_decode);
    let directives = from_query.unwrap_or_else(|| String::from_utf8_lossy(&request.body).into_owned());
    if directives.trim().is_empty() {
        return HttpResponse::text(
            400,
            "give the log filter as the body, e.g. `debug` or `info,spate::storage=debug`\n",
        );
    }
    match crate::logging::set_filter(&directives) {
        Ok(filter) => {
            info!(filter = %filter, "log filter changed");
            HttpResponse::json(200, serde_json::json!({ "filter": filter }))
        }
        Err(reason) => HttpResponse::text(400, format!("{reason}\n")),
    }
}

/// Decodes `%XX` escapes and `+` in a query value.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_query_values() {
        assert_eq!(percent_decode("info%2Cspate%3Ddebug"), "info,spate=debug");
        assert_eq!(percent_decode("a+b%2"), "a b%2");
    }
}
