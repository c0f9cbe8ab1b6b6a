//! Crash-safe writes of small files: write a temporary file, fsync it, rename
//! it over the target, fsync the directory. After a crash the target holds
//! either its old contents or the new ones, never a torn or empty file.
//! Blocking: callers on a shard run these through `spawn_blocking`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    drop(file);
    rename_durable(tmp, path)
}

/// Renames `from` to `to` and fsyncs the directory holding them.
pub fn rename_durable(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    sync_dir(to.parent().unwrap_or(Path::new(".")))
}

/// fsyncs a directory, making renames, creations and removals in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
