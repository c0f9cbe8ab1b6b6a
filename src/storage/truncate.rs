//! Cutting a closed partition's files back to an offset: what a follower
//! does when its tail diverges from its leader's (KIP-101). Segments wholly
//! past the offset are removed, the one holding it is cut at the first batch
//! at or past it, and the small files that describe the removed part (its
//! index entries, producer snapshots, leader epochs) go with it. Recovery,
//! run when the partition opens again, rebuilds the rest and checks the CRCs.
//!
//! Blocking: run it on glommio's blocking pool, with the partition closed.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::epochs::{EpochCache, EPOCH_FILE};
use super::log::LOG_START_FILE;
use super::producers::{list_snapshots, snapshot_path};
use super::segment::{index_path, log_path, time_index_path};

/// Bytes of a batch's offset and length fields.
const BATCH_PREFIX_BYTES: usize = 12;

/// Cuts the log in `dir` so that it ends at `offset` (a batch boundary).
pub fn truncate_dir(dir: &Path, offset: i64) -> std::io::Result<()> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(base) = name.strip_suffix(".log").and_then(|b| b.parse::<i64>().ok()) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    for &base in bases.iter().rev() {
        // Whole segments past the offset go; an empty log keeps one at `offset`.
        if base > offset || (base == offset && base != bases[0]) {
            remove_if_present(&log_path(dir, base))?;
            remove_if_present(&index_path(dir, base))?;
            remove_if_present(&time_index_path(dir, base))?;
            continue;
        }
        cut_segment(&log_path(dir, base), offset)?;
        // Its index may point past the cut: recovery rebuilds it.
        remove_if_present(&index_path(dir, base))?;
        remove_if_present(&time_index_path(dir, base))?;
        break;
    }
    if bases.first().is_some_and(|&first| first >= offset) {
        // Nothing of the old log is left below the offset: it starts there.
        crate::fsutil::write_atomic(&dir.join(LOG_START_FILE), offset.to_string().as_bytes())?;
    }
    for snapshot in list_snapshots(dir)?.into_iter().filter(|&o| o > offset) {
        remove_if_present(&snapshot_path(dir, snapshot))?;
    }
    let mut epochs = EpochCache::load(dir);
    epochs.truncate_from(offset);
    crate::fsutil::write_atomic(&dir.join(EPOCH_FILE), epochs.encode().as_bytes())?;
    crate::fsutil::sync_dir(dir)
}

/// Cuts one segment file at its first batch whose base offset is at least
/// `offset` (or at a damaged length: nothing valid follows it).
fn cut_segment(path: &Path, offset: i64) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let size = file.metadata()?.len();
    let mut position = 0u64;
    let mut prefix = [0u8; BATCH_PREFIX_BYTES];
    while position + BATCH_PREFIX_BYTES as u64 <= size {
        file.seek(SeekFrom::Start(position))?;
        file.read_exact(&mut prefix)?;
        let base_offset = i64::from_be_bytes(prefix[..8].try_into().expect("8 bytes"));
        let length = i32::from_be_bytes(prefix[8..].try_into().expect("4 bytes"));
        if base_offset >= offset || length <= 0 {
            break;
        }
        position += BATCH_PREFIX_BYTES as u64 + length as u64;
    }
    if position < size {
        file.set_len(position.min(size))?;
        file.sync_all()?;
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes every segment of the log in `dir` and starts it afresh at
/// `offset`: a follower so far behind that its leader's log starts past its end.
pub fn restart_at(dir: &Path, offset: i64) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let segment_file = [".log", ".index", ".timeindex", ".snapshot"].iter().any(|ext| name.ends_with(ext));
        if segment_file {
            remove_if_present(&path)?;
        }
    }
    crate::fsutil::write_atomic(&dir.join(LOG_START_FILE), offset.to_string().as_bytes())?;
    crate::fsutil::write_atomic(&dir.join(EPOCH_FILE), EpochCache::default().encode().as_bytes())?;
    crate::fsutil::sync_dir(dir)
}
