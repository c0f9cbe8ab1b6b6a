//! Crash-safe replacement and renaming of small files and directories.
//!
//! A rename is atomic, but neither it nor the file's contents are durable
//! until the file and its directory are synced: after `kill -9` or a power
//! cut, an unsynced file can be empty and an unsynced rename undone. These
//! helpers do the syncs in the order that leaves either the old or the new
//! state on disk, never a mix.
//!
//! They block: call them from a blocking thread (`glommio::executor().spawn_blocking`),
//! never on a shard's executor.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` atomically and durably: the bytes go to
/// `<path>.tmp`, which is synced, renamed over `path`, and the directory
/// synced. A crash at any point leaves the old contents or the new, whole.
///
/// On a full disk it gives up the data directory's reserve file (see
/// [`keep_reserve`]) and tries once more: deleting topics or records, which
/// frees space, must be able to persist its metadata first.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    with_reserve(path, || write_atomic_once(path, bytes))
}

/// Runs `write` (a metadata write to `path`); on a full disk gives up the
/// reserve file and runs it once more.
pub fn with_reserve<T>(path: &Path, mut write: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    match write() {
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && release_reserve() => {
            tracing::warn!("disk full writing {}: released the reserve file and retrying", path.display());
            write()
        }
        other => other,
    }
}

/// Bytes kept allocated in the data directory for metadata writes on a full disk.
pub const RESERVE_BYTES: u64 = 4 << 20;

static RESERVE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Names the reserve file (`<data_dir>/.reserve`) and creates it if space allows.
pub fn keep_reserve(path: PathBuf) {
    let _ = RESERVE.set(path);
    if let Err(e) = ensure_reserve() {
        tracing::warn!("cannot allocate the {RESERVE_BYTES}-byte reserve file: {e}");
    }
}

/// Re-creates the reserve file after it was released, once space allows.
pub fn ensure_reserve() -> io::Result<()> {
    let Some(path) = RESERVE.get() else { return Ok(()) };
    if path.exists() {
        return Ok(());
    }
    let tmp = tmp_path(path);
    let file = File::create(&tmp)?;
    // SAFETY: fallocate on a descriptor we own; no pointers are passed.
    let allocated = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, 0, RESERVE_BYTES as i64) };
    if allocated != 0 {
        let e = io::Error::last_os_error();
        drop(file);
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    file.sync_all()?;
    drop(file);
    rename_durable(&tmp, path)
}

fn release_reserve() -> bool {
    RESERVE.get().is_some_and(|path| std::fs::remove_file(path).is_ok())
}

fn write_atomic_once(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    rename_durable(&tmp, path)
}

/// Syncs directory `path`, making the creations, renames and removals of
/// its entries durable.
/// (total, available to us) bytes of the filesystem holding `path`.
pub fn disk_space(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs fills the zeroed struct; c_path is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let block = stat.f_frsize as u64;
    Ok((stat.f_blocks as u64 * block, stat.f_bavail as u64 * block))
}

pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Renames `from` to `to` (a file or a directory) and syncs the parent
/// directory of each, so that the rename survives a crash once this returns.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    let to_parent = parent(to);
    sync_dir(to_parent)?;
    let from_parent = parent(from);
    if from_parent != to_parent {
        sync_dir(from_parent)?;
    }
    Ok(())
}

/// `<path>.tmp`, beside `path` (the same filesystem, so the rename is atomic).
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().expect("a file path").to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The directory holding `path`; `.` for a bare file name.
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("spate-fsutil-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn write_atomic_replaces_whole_file_and_leaves_no_tmp() {
        let dir = scratch("write");
        let path = dir.join("topics.json");
        write_atomic(&path, b"first, longer contents").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!dir.join("topics.json.tmp").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rename_durable_moves_directories() {
        let dir = scratch("rename");
        std::fs::create_dir(dir.join("t-0")).unwrap();
        std::fs::write(dir.join("t-0").join("a.log"), b"x").unwrap();
        rename_durable(&dir.join("t-0"), &dir.join("t-0.ab-delete")).unwrap();
        assert!(!dir.join("t-0").exists());
        assert_eq!(std::fs::read(dir.join("t-0.ab-delete").join("a.log")).unwrap(), b"x");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
