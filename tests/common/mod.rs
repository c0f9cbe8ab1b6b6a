//! Starts the real `spate` binary on a free loopback port with its own data
//! directory, for the integration tests. No part of the broker is mocked.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use spate::client::Client;

pub struct TestBroker {
    child: Option<Child>,
    pub addr: String,
    pub dir: PathBuf,
}

/// A fresh, empty directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spate-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Shards of every test broker: more than one, so cross-shard paths are tested.
const SHARDS: usize = 2;

/// A loopback port free now, picked outside the kernel's ephemeral range and
/// never twice in one test process. A port picked by binding port 0 could be
/// handed by the kernel to another broker's port-0 listener (its admin
/// endpoint, an embedded bench) before this broker binds it; outside the
/// range no port-0 bind can take it, and the counter keeps parallel tests apart.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (first, count) = ports_outside_ephemeral_range();
    // Test binaries run one after another, each from its own starting point.
    let start = std::process::id().wrapping_mul(7_919) % count;
    for _ in 0..count {
        let port = (first + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % count) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {first}..{}", first + count);
}

/// Up to 12,000 ports just below the ephemeral range, or just above it when
/// there is more room there: (first port, how many).
fn ports_outside_ephemeral_range() -> (u32, u32) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = range.split_whitespace().filter_map(|n| n.parse::<u32>().ok());
    let (low, high) = (bounds.next().unwrap_or(32_768), bounds.next().unwrap_or(60_999));
    let below = low.saturating_sub(1_024);
    let above = 65_535u32.saturating_sub(high);
    if below >= above {
        let count = below.clamp(1, 12_000);
        (low - count, count)
    } else {
        (high + 1, above.min(12_000))
    }
}

/// The `--set` that gives a broker's admin endpoint its own free port.
pub fn admin_listen_free() -> String {
    format!("admin_listen=127.0.0.1:{}", free_port())
}

impl TestBroker {
    pub fn start(dir: &Path, extra: &[&str]) -> TestBroker {
        Self::start_on(dir, free_port(), extra)
    }

    pub fn start_on(dir: &Path, port: u16, extra: &[&str]) -> TestBroker {
        Self::start_full(dir, port, extra, &[])
    }

    /// Starts with its data directory at `data` (the log stays in `dir`).
    pub fn start_in(dir: &Path, data: &Path, extra: &[&str]) -> TestBroker {
        Self::start_full(dir, free_port(), extra, &[("SPATE_TEST_DATA_DIR", data.to_str().unwrap())])
    }

    /// Starts with extra environment variables (e.g. `SPATE_FAULTS`).
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> TestBroker {
        Self::start_full(dir, free_port(), extra, env)
    }

    fn start_full(dir: &Path, port: u16, extra: &[&str], env: &[(&str, &str)]) -> TestBroker {
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("broker.log")).unwrap();
        let log_start = log.metadata().unwrap().len() as usize;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spate"));
        let data = env.iter().find(|(k, _)| *k == "SPATE_TEST_DATA_DIR").map_or(dir.join("data"), |(_, v)| v.into());
        cmd.args(["serve", "--listen", &addr, "--data-dir"]).arg(data);
        cmd.args(["--shards", &SHARDS.to_string(), "--set", "pin_shards=false", "--set", &admin_listen_free()]);
        for arg in extra {
            cmd.args(["--set", arg]);
        }
        cmd.envs(env.iter().copied());
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().expect("spawn spate");
        let mut broker = TestBroker { child: Some(child), addr, dir: dir.to_path_buf() };
        broker.wait_ready(log_start);
        broker
    }

    /// Waits until this run (its log from `log_start` on) has every shard listening.
    fn wait_ready(&mut self, log_start: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            assert!(self.is_running(), "broker at {} exited at start; log:\n{}", self.addr, self.log());
            // Every shard binds its own listener; until all have, descriptor
            // counts and connection placement are not yet those of a running broker.
            let log = self.log();
            let this_run = log.get(log_start..).unwrap_or_default();
            let shards_listening = this_run.lines().filter(|line| line.contains("listening")).count();
            if shards_listening >= SHARDS && spate::data_dir::answers(&self.addr) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("broker at {} did not start; log:\n{}", self.addr, self.log());
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit_once(':').unwrap().1.parse().unwrap()
    }

    /// The broker process's id (for /proc measurements).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker running").id()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.addr).unwrap_or_else(|e| panic!("{e:#}; broker log:\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(status.success(), "broker exited with {status}; log:\n{}", self.log());
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        // The kernel tears the dead process's io_uring listeners down a few
        // ms after it is reaped: until then a restart on this port would look
        // ready to `wait_ready` while the new broker is not listening yet.
        let deadline = Instant::now() + Duration::from_secs(5);
        while spate::data_dir::answers(&self.addr) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Closes `stream` rudely: RST, no FIN (SO_LINGER 0), as a crashed client or
/// a reset network path would.
pub fn reset_connection(stream: std::net::TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setting SO_LINGER on a socket we own, with a valid struct.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
    drop(stream);
}
