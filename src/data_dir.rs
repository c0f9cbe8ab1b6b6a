//! Claiming a data directory and a listen address before a broker starts
//! (part of the `spate` binary, not the library): one broker per directory
//! (an exclusive `flock` on `.lock` holding the owner's pid), one process
//! per port (a plain bind, which fails while any socket listens there), and
//! `meta.properties` naming the node and cluster the directory belongs to.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

const LOCK_FILE: &str = ".lock";
const META_FILE: &str = "meta.properties";
const META_VERSION: &str = "1";

/// Holds the data directory's lock for as long as it lives (the kernel
/// releases it when the process ends, however it ends).
pub struct DirLock {
    _file: File,
}

/// Takes the exclusive lock on `<dir>/.lock` without waiting, and writes our
/// pid into it; fails naming the pid of the broker that holds it.
pub fn lock(dir: &Path) -> Result<DirLock> {
    let path = dir.join(LOCK_FILE);
    // Not truncated before the lock is ours: the holder's pid must stay readable.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock {
            return Err(err).with_context(|| format!("locking {}", path.display()));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        bail!(
            "data directory {} is in use by another spate broker (pid {}); one broker per data directory",
            dir.display(),
            holder.trim()
        );
    }
    // Written in place at a fixed width: on a full disk an existing lock
    // file's block is reused, and a broker must still start there.
    let pid = format!("{:<20}\n", std::process::id());
    let written = file.write_all_at(pid.as_bytes(), 0).and_then(|()| file.set_len(pid.len() as u64));
    if let Err(e) = written {
        tracing::warn!("cannot write our pid into {}: {e}", path.display());
    }
    Ok(DirLock { _file: file })
}

/// Fails if another process listens on `listen`. Our shards bind with
/// SO_REUSEPORT, so a second broker would otherwise share the port silently;
/// a bind without SO_REUSEPORT fails with EADDRINUSE while any socket,
/// SO_REUSEPORT or not, listens on the address.
pub fn check_port_free(listen: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + PORT_CHECK_WAIT;
    loop {
        let in_use = match probe_bind(listen) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => e,
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {listen}")),
        };
        // In use by a live listener, or only by what a broker killed a moment
        // ago left behind: connections in TIME_WAIT, or its listening socket
        // still being torn down. Only a listener that answers counts.
        if !answers(listen) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("listen address {listen} is already served by another process ({in_use}); one broker per port");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Binds a socket to `listen` without SO_REUSEPORT and without listening:
/// it fails with EADDRINUSE while another socket listens there. SO_REUSEADDR
/// lets connections left in TIME_WAIT pass, and never listening means no
/// client connection can land on the probe and be reset when it closes.
fn probe_bind(listen: &str) -> std::io::Result<()> {
    use std::net::{SocketAddr, ToSocketAddrs};
    let addr: SocketAddr = listen
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    // SAFETY: plain socket calls on a descriptor we create and close here,
    // with sockaddr structs that live across the calls that read them.
    unsafe {
        let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        let opt_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&one as *const libc::c_int).cast(), opt_len);
        let bound = match addr {
            SocketAddr::V4(v4) => {
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_port = v4.port().to_be();
                sa.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len)
            }
            SocketAddr::V6(v6) => {
                let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_port = v6.port().to_be();
                sa.sin6_addr.s6_addr = v6.ip().octets();
                let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
                libc::bind(fd, (&sa as *const libc::sockaddr_in6).cast(), len)
            }
        };
        let result = if bound == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
        libc::close(fd);
        result
    }
}

/// How long the port check waits for a dying broker's listener to go away.
const PORT_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether something accepts connections on `listen` (a wildcard address is
/// tried on loopback). Also how a broker started by us is seen to be up.
pub fn answers(listen: &str) -> bool {
    use std::net::ToSocketAddrs;
    let Ok(addrs) = listen.to_socket_addrs() else { return false };
    addrs.into_iter().any(|mut addr| {
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
        }
        // A socket connected to itself (Linux allows it when it picks the
        // port as its own source port) is not another broker.
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
            .is_ok_and(|s| s.local_addr().ok() != s.peer_addr().ok())
    })
}

/// Checks `meta.properties` against our node id, or writes it on first start.
pub fn check_meta(dir: &Path, node_id: i32) -> Result<()> {
    let path = dir.join(META_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => check_meta_text(&text, node_id).with_context(|| format!("checking {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_meta(dir, node_id),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn check_meta_text(text: &str, node_id: i32) -> Result<()> {
    let value = |key: &str| {
        text.lines().filter_map(|line| line.split_once('=')).find(|(k, _)| k.trim() == key).map(|(_, v)| v.trim())
    };
    match value("version") {
        Some(META_VERSION) => {}
        other => bail!("unsupported meta.properties version {other:?} (this spate reads version {META_VERSION})"),
    }
    if value("cluster.id").is_none_or(str::is_empty) {
        bail!("meta.properties has no cluster.id");
    }
    let stored = value("node.id").context("meta.properties has no node.id")?;
    if stored != node_id.to_string() {
        bail!("this data directory belongs to node {stored}, but node_id is {node_id}; refusing to start");
    }
    Ok(())
}

/// Writes meta.properties crash-safely: temporary file, fsync, rename, fsync
/// of the directory, so it is either absent or complete.
fn write_meta(dir: &Path, node_id: i32) -> Result<()> {
    let text = format!("version={META_VERSION}\nnode.id={node_id}\ncluster.id={}\n", random_uuid()?);
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(META_FILE))?;
    File::open(dir)?.sync_all().with_context(|| format!("syncing {}", dir.display()))?;
    tracing::info!(node_id, "wrote {}", dir.join(META_FILE).display());
    Ok(())
}

fn random_uuid() -> Result<uuid::Uuid> {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most bytes.len() bytes into our buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return Err(std::io::Error::last_os_error()).context("getrandom");
    }
    Ok(uuid::Builder::from_random_bytes(bytes).into_uuid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_checks_version_node_and_cluster() {
        let good = "version=1\nnode.id=3\ncluster.id=abc\n";
        assert!(check_meta_text(good, 3).is_ok());
        let err = check_meta_text(good, 4).unwrap_err().to_string();
        assert!(err.contains("belongs to node 3"), "{err}");
        assert!(check_meta_text("version=2\nnode.id=3\ncluster.id=abc\n", 3).is_err());
        assert!(check_meta_text("version=1\nnode.id=3\n", 3).is_err());
    }

    #[test]
    fn second_lock_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("spate-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let held = lock(&dir).unwrap();
        // flock conflicts between open file descriptions, even in one process.
        let err = lock(&dir).err().expect("a second lock fails").to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(held);
        assert!(lock(&dir).is_ok(), "released with its holder");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn meta_is_written_once_and_then_checked() {
        let dir = std::env::temp_dir().join(format!("spate-meta-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        check_meta(&dir, 7).unwrap();
        let first = std::fs::read_to_string(dir.join(META_FILE)).unwrap();
        check_meta(&dir, 7).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(META_FILE)).unwrap(), first, "the cluster id stays");
        assert!(check_meta(&dir, 8).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
