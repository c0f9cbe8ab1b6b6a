//! Starting and stopping as an operator would: more shards than cores,
//! SIGTERM at every stage of start-up, a locked-memory limit too low for
//! io_uring, the start-up line, JSON logs, and the configuration reference.

mod common;

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{admin_listen_free, free_port, temp_dir};

/// A broker process, killed if a failed test leaves it running.
struct Proc(Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `spate serve` on a free port with `extra` settings; its stderr goes to `log`.
fn serve(dir: &Path, log: &Path, extra: &[&str]) -> (Proc, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spate"));
    cmd.args(["serve", "--listen", &addr, "--data-dir"]).arg(dir.join("data"));
    cmd.args(["--set", &admin_listen_free()]);
    for arg in extra {
        cmd.args(["--set", arg]);
    }
    let stderr = std::fs::File::create(log).unwrap();
    (Proc(cmd.stdout(Stdio::null()).stderr(stderr).spawn().unwrap()), addr)
}

fn sigterm(child: &Child) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

/// Waits for the child to exit within `limit`; None if it did not (it is killed).
fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn listening_lines(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.contains("listening")).count()
}

#[test]
fn more_shards_than_cores_start_or_fail_clearly_ten_times() {
    let dir = temp_dir("shards16");
    for round in 0..10 {
        let log = dir.join(format!("broker-{round}.log"));
        let (mut child, addr) = serve(&dir, &log, &["shards=16", "pin_shards=true"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut started = false;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                let text = std::fs::read_to_string(&log).unwrap();
                assert!(
                    !status.success() && text.contains("ERROR"),
                    "round {round}: exited {status} without a clear error:\n{text}"
                );
                break;
            }
            if listening_lines(&log) == 16 && spate::data_dir::answers(&addr) {
                started = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            started || child.try_wait().unwrap().is_some(),
            "round {round}: neither listening nor exited in 5 s:\n{text}"
        );
        if started {
            let mut client = spate::client::Client::connect(&addr).unwrap();
            client.create_topic(&format!("t{round}"), 16, &[]).unwrap();
            sigterm(&child);
            let status = exit_within(&mut child, Duration::from_secs(15));
            assert!(status.is_some_and(|s| s.success()), "round {round}: SIGTERM not honoured: {status:?}\n{text}");
        }
    }
}

#[test]
fn sigterm_during_start_up_stops_the_broker() {
    let dir = temp_dir("sigterm-start");
    // A broker with many partitions takes a while to open them again.
    let log = dir.join("first.log");
    let small = ["shards=2", "pin_shards=false", "write_buffer_bytes=4096", "preallocate_step_bytes=0"];
    let (mut child, addr) = serve(&dir, &log, &small);
    let deadline = Instant::now() + Duration::from_secs(30);
    while listening_lines(&log) < 2 || !spate::data_dir::answers(&addr) {
        assert!(Instant::now() < deadline, "did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    spate::client::Client::connect(&addr).unwrap().create_topic("many", 2000, &[]).unwrap();
    sigterm(&child);
    assert!(exit_within(&mut child, Duration::from_secs(60)).is_some_and(|s| s.success()));

    for delay_ms in [0u64, 20, 100, 300, 1000] {
        let log = dir.join(format!("restart-{delay_ms}.log"));
        let (mut child, _) = serve(&dir, &log, &small);
        std::thread::sleep(Duration::from_millis(delay_ms));
        sigterm(&child);
        let status = exit_within(&mut child, Duration::from_secs(10));
        let text = std::fs::read_to_string(&log).unwrap();
        // Before its handler is installed the signal's default action ends
        // the process; after, it exits cleanly. Either way it stops at once.
        let stopped = status.is_some_and(|s| s.success() || s.signal() == Some(libc::SIGTERM));
        assert!(stopped, "SIGTERM {delay_ms} ms into start-up: {status:?}\n{text}");
    }
    // Nothing was harmed: the next start has every partition.
    let log = dir.join("last.log");
    let (mut child, addr) = serve(&dir, &log, &small);
    let deadline = Instant::now() + Duration::from_secs(60);
    while listening_lines(&log) < 2 || !spate::data_dir::answers(&addr) {
        assert!(Instant::now() < deadline, "did not start again");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut client = spate::client::Client::connect(&addr).unwrap();
    let meta = spate::cli::metadata(&mut client, Some(vec!["many"])).unwrap();
    assert_eq!(meta.topics[0].partitions.len(), 2000);
    sigterm(&child);
    assert!(exit_within(&mut child, Duration::from_secs(60)).is_some_and(|s| s.success()));
}

#[test]
fn a_low_memlock_limit_is_reported_with_the_fix() {
    let dir = temp_dir("memlock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spate"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir"]).arg(dir.join("data"));
    cmd.args(["--set", &admin_listen_free()]);
    // SAFETY: only setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 64 << 10, rlim_max: 64 << 10 };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("RLIMIT_MEMLOCK") && stderr.contains("ulimit -l") && stderr.contains("LimitMEMLOCK"),
        "{stderr}"
    );
    assert!(!stderr.contains("MemLockLimit("), "not glommio's raw error: {stderr}");
}

#[test]
fn start_up_line_json_logs_and_no_colour_in_files() {
    let dir = temp_dir("startline");
    let log = dir.join("broker.log");
    let (mut child, addr) =
        serve(&dir, &log, &["shards=2", "pin_shards=false", "log_format=json", "default_partitions=3"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while listening_lines(&log) < 2 || !spate::data_dir::answers(&addr) {
        assert!(Instant::now() < deadline, "did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    sigterm(&child);
    assert!(exit_within(&mut child, Duration::from_secs(30)).is_some_and(|s| s.success()));
    let mut text = String::new();
    std::fs::File::open(&log).unwrap().read_to_string(&mut text).unwrap();
    assert!(!text.contains('\u{1b}'), "no ANSI escapes in a file");
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let start = lines.iter().find(|l| l["fields"]["message"] == "starting spate").expect("a start-up line");
    let fields = &start["fields"];
    assert_eq!(fields["version"], env!("CARGO_PKG_VERSION"));
    assert!(fields["commit"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(fields["listen"], addr.as_str());
    assert_eq!(fields["advertised"], addr.as_str());
    let config = fields["config"].as_str().unwrap();
    assert!(config.contains("default_partitions=3") && config.contains("shards=2"), "{config}");
    assert!(!config.contains("segment_bytes"), "defaults are not listed: {config}");
    assert!(lines.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string()));
}

#[test]
fn a_wildcard_listener_advertising_localhost_is_warned_about() {
    let dir = temp_dir("advertise");
    let log = dir.join("broker.log");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spate"));
    let mut child = child
        .args(["serve", "--listen", &format!("0.0.0.0:{port}"), "--data-dir"])
        .arg(dir.join("data"))
        .args(["--shards", "1", "--set", "pin_shards=false", "--set", &admin_listen_free()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(Proc)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while listening_lines(&log) < 1 {
        assert!(Instant::now() < deadline, "did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    sigterm(&child);
    assert!(exit_within(&mut child, Duration::from_secs(30)).is_some_and(|s| s.success()));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("WARN") && text.contains("advertised_host"), "{text}");
}

#[test]
fn print_defaults_is_a_loadable_commented_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_spate")).args(["config", "--print-defaults"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("listen = \"0.0.0.0:9092\"") && text.contains("admin_listen = \"0.0.0.0:9644\""));
    assert!(text.contains("# Requests slower than this"), "descriptions come from the code");
    let dir = temp_dir("print-defaults");
    let file = dir.join("spate.toml");
    std::fs::write(&file, &text).unwrap();
    let loaded = spate::config::Config::load(Some(&file), &[]).unwrap();
    assert_eq!(loaded.slow_request_ms, 1000);
}
