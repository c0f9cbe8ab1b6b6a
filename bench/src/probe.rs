//! What the machine can do, measured in the same run as the benchmark so that
//! its figures read against it: the data directory's sequential O_DIRECT write
//! rate (as a broker writes its segments: 1 MiB aligned writes, a few in
//! flight, through io_uring), and the loopback TCP rate. A signal cuts a
//! probe short.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

/// Bytes per probe write: a broker's write buffer.
const WRITE_BYTES: usize = 1 << 20;
/// Writes in flight at once.
const WRITES_IN_FLIGHT: usize = 4;
/// Largest probe file; the probe ends there even if time is left.
const MAX_PROBE_FILE_BYTES: u64 = 8 << 30;

#[derive(Debug, Clone, Serialize)]
pub struct DiskProbe {
    pub dir: PathBuf,
    pub bytes: u64,
    pub seconds: f64,
    pub write_mib_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkProbe {
    pub bytes: u64,
    pub seconds: f64,
    pub loopback_mib_per_sec: f64,
}

/// Sequential O_DIRECT writes to a new file in `dir` for `seconds`; the
/// file is removed afterwards.
pub fn probe_disk(dir: &Path, seconds: f64) -> Result<DiskProbe> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!(".spate-bench-disk-probe-{}", std::process::id()));
    let file_path = path.clone();
    let limit = Duration::from_secs_f64(seconds);
    let measured = crate::on_thread(move || write_sequentially(file_path, limit));
    let _ = std::fs::remove_file(&path);
    let (bytes, elapsed) = measured.with_context(|| format!("probing {}", dir.display()))?;
    let seconds = elapsed.as_secs_f64().max(1e-9);
    Ok(DiskProbe {
        dir: dir.to_path_buf(),
        bytes,
        seconds,
        write_mib_per_sec: bytes as f64 / seconds / (1 << 20) as f64,
    })
}

async fn write_sequentially(path: PathBuf, limit: Duration) -> Result<(u64, Duration)> {
    // Readable too: glommio probes a device's iopoll support with a read of
    // the first file it opens there (a write-only file made that read fail
    // with EBADF, logged as an error, and left the poll ring off for the
    // device in this process).
    let file = glommio::io::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .dma_open(&path)
        .await
        .map_err(std::io::Error::from)?;
    let started = Instant::now();
    let mut position = 0u64;
    while started.elapsed() < limit && position < MAX_PROBE_FILE_BYTES && crate::signals::interrupted().is_none() {
        let writes = (0..WRITES_IN_FLIGHT).map(|i| {
            let mut buffer = file.alloc_dma_buffer(WRITE_BYTES);
            buffer.as_bytes_mut().fill(0x5a);
            file.write_at(buffer, position + (i * WRITE_BYTES) as u64)
        });
        for written in futures::future::join_all(writes).await {
            anyhow::ensure!(written.map_err(std::io::Error::from)? == WRITE_BYTES, "short write");
        }
        position += (WRITES_IN_FLIGHT * WRITE_BYTES) as u64;
    }
    let elapsed = started.elapsed();
    file.close().await.map_err(std::io::Error::from)?;
    Ok((position, elapsed))
}

/// One TCP stream over loopback, sender to receiver, for `seconds`.
pub fn probe_loopback(seconds: f64) -> Result<NetworkProbe> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let limit = Duration::from_secs_f64(seconds);
    let receiver = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buffer = vec![0u8; WRITE_BYTES];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buffer)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut stream = std::net::TcpStream::connect(addr)?;
    let buffer = vec![0x5au8; WRITE_BYTES];
    let started = Instant::now();
    while started.elapsed() < limit && crate::signals::interrupted().is_none() {
        stream.write_all(&buffer)?;
    }
    drop(stream);
    let bytes = receiver.join().map_err(|_| anyhow::anyhow!("loopback receiver panicked"))??;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    Ok(NetworkProbe { bytes, seconds, loopback_mib_per_sec: bytes as f64 / seconds / (1 << 20) as f64 })
}
