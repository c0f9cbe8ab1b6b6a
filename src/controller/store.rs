//! The controller's Raft log, in memory for raft-rs (`Storage`) and on disk
//! in `<data_dir>/__cluster_metadata/`, as KRaft keeps its metadata log.
//!
//! Three files: `snapshot` (the newest metadata image and the Raft index and
//! term it covers, replaced atomically), `state` (term, vote, commit;
//! replaced atomically) and `log` (every entry after the snapshot, appended
//! as CRC-checked frames and fdatasync'ed before raft-rs may act on them).
//! A torn last frame is cut at start; a snapshot rewrites the log without
//! the entries it covers, so the log's size stays bounded.
//!
//! The in-memory half is synchronous and owned by the `RawNode`; the disk
//! half is blocking file work run on glommio's blocking pool by the
//! controller's driver task, which nothing cancels.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::fsutil;

/// The metadata log's directory under the data directory (Kafka's name).
pub const DIR_NAME: &str = "__cluster_metadata";
const SNAPSHOT_FILE: &str = "snapshot";
const STATE_FILE: &str = "state";
const LOG_FILE: &str = "log";
/// Bytes before a frame's payload: length (u32) and CRC32C (u32).
const FRAME_HEADER_BYTES: usize = 8;
/// Largest frame accepted when reading the log back: a metadata entry is a
/// batch of records, bounded by the controller's commit size.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// The log as raft-rs sees it: the snapshot, the entries after it, the hard state.
#[derive(Default)]
pub struct RaftStore {
    snapshot: Snapshot,
    entries: Vec<Entry>,
    /// File offset just past each entry's frame in `log`, parallel to `entries`.
    entry_ends: Vec<u64>,
    hard_state: HardState,
}

impl RaftStore {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn current_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn last_index_now(&self) -> u64 {
        self.entries.last().map_or(self.snapshot_index(), |e| e.index)
    }

    /// Entries after the snapshot.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Where appending `ents` writes in `log`: the byte offset to cut the file
    /// to first (the entries they replace go), and the frames to append.
    fn plan_append_frames(&self, ents: &[Entry]) -> Vec<u8> {
        let mut frames = Vec::new();
        for entry in ents {
            push_frame(&mut frames, &entry.write_to_bytes().expect("an entry encodes"));
        }
        frames
    }

    pub fn plan_append(&self, ents: &[Entry]) -> (u64, Vec<u8>) {
        let first = ents[0].index;
        assert!(first > self.snapshot_index(), "raft never overwrites what a snapshot covers");
        assert!(first <= self.last_index_now() + 1, "raft appends without gaps");
        let kept = (first - self.snapshot_index() - 1) as usize;
        let cut_at = if kept == 0 { 0 } else { self.entry_ends[kept - 1] };
        (cut_at, self.plan_append_frames(ents))
    }

    /// The in-memory half of an append that `plan_append` planned and that
    /// is now on disk.
    pub fn append(&mut self, ents: &[Entry], cut_at: u64) {
        let kept = (ents[0].index - self.snapshot_index() - 1) as usize;
        self.entries.truncate(kept);
        self.entry_ends.truncate(kept);
        let mut end = cut_at;
        for entry in ents {
            end += (FRAME_HEADER_BYTES + entry.compute_size() as usize) as u64;
            self.entries.push(entry.clone());
            self.entry_ends.push(end);
        }
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    /// Installs `snapshot` (persisted by the caller): entries it covers go,
    /// and the rest are re-framed from offset 0 (the caller rewrites `log`
    /// with [`RaftStore::log_frames`]).
    pub fn install_snapshot(&mut self, snapshot: Snapshot) {
        let index = snapshot.get_metadata().index;
        let term = snapshot.get_metadata().term;
        let keep_tail = self.entries.iter().any(|e| e.index == index && e.term == term);
        let rest: Vec<Entry> =
            if keep_tail { self.entries.iter().filter(|e| e.index > index).cloned().collect() } else { Vec::new() };
        self.snapshot = snapshot;
        self.entries.clear();
        self.entry_ends.clear();
        if self.hard_state.commit < index {
            self.hard_state.commit = index;
        }
        if self.hard_state.term < term {
            self.hard_state.term = term;
        }
        if !rest.is_empty() {
            self.append(&rest, 0);
        }
    }

    /// Every entry's frame, from offset 0: the `log` file after a snapshot.
    pub fn log_frames(&self) -> Vec<u8> {
        self.plan_append_frames(&self.entries)
    }

    /// The term of the entry at `index`, if this store knows it.
    pub fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index() {
            return Some(self.snapshot.get_metadata().term);
        }
        let first = self.snapshot_index() + 1;
        if index < first {
            return None;
        }
        self.entries.get((index - first) as usize).map(|e| e.term)
    }
}

impl Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.snapshot.get_metadata().get_conf_state().clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.snapshot_index() + 1;
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(high <= self.last_index_now() + 1, "entries asked past the last index");
        let mut out: Vec<Entry> = self.entries[(low - first) as usize..(high - first) as usize].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.snapshot_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx).ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_now())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The newest snapshot taken; raft-rs sends it and the peer catches up
        // from the entries after it.
        Ok(self.snapshot.clone())
    }
}

fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    out.extend_from_slice(payload);
}

/// The metadata log's files. Its methods block: run them on the blocking pool.
#[derive(Clone, Debug)]
pub struct LogFiles {
    dir: PathBuf,
}

impl LogFiles {
    pub fn new(data_dir: &Path) -> LogFiles {
        LogFiles { dir: data_dir.join(DIR_NAME) }
    }

    pub fn exists(&self) -> bool {
        self.dir.join(SNAPSHOT_FILE).exists()
    }

    /// Starts a log whose first snapshot is `snapshot` (index 0: the
    /// bootstrap image and the voters).
    pub fn create(&self, snapshot: &Snapshot) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        fsutil::sync_dir(self.dir.parent().expect("the metadata directory has a parent"))?;
        fsutil::write_atomic(&self.dir.join(LOG_FILE), b"")?;
        fsutil::write_atomic(&self.dir.join(STATE_FILE), &HardState::default().write_to_bytes().expect("encodes"))?;
        self.write_snapshot(snapshot)
    }

    /// Reads the log back. A torn or corrupt tail (a crash mid-append) is
    /// cut off: raft-rs never acted on an entry before its fdatasync ended.
    pub fn load(&self) -> std::io::Result<RaftStore> {
        let snapshot_bytes = read_framed(&self.dir.join(SNAPSHOT_FILE))?;
        let snapshot = Snapshot::parse_from_bytes(&snapshot_bytes).map_err(invalid)?;
        let state_bytes = std::fs::read(self.dir.join(STATE_FILE))?;
        let hard_state = HardState::parse_from_bytes(&state_bytes).map_err(invalid)?;
        let mut store = RaftStore { snapshot, hard_state, ..RaftStore::default() };
        let log_path = self.dir.join(LOG_FILE);
        let mut bytes = Vec::new();
        File::open(&log_path)?.read_to_end(&mut bytes)?;
        let (entries, good_len) = parse_frames(&bytes);
        if good_len < bytes.len() {
            tracing::warn!(cut_bytes = bytes.len() - good_len, "metadata log: cutting a torn tail");
            OpenOptions::new().write(true).open(&log_path)?.set_len(good_len as u64)?;
        }
        // Entries a newer snapshot covers (a crash between writing it and
        // rewriting the log) are dropped; the rest must follow it.
        let mut end = 0u64;
        let mut covered = false;
        for (entry, frame_len) in entries {
            end += frame_len as u64;
            if entry.index <= store.snapshot_index() {
                covered = true;
                continue;
            }
            if entry.index != store.last_index_now() + 1 {
                return Err(invalid(format!("metadata log: entry {} after {}", entry.index, store.last_index_now())));
            }
            store.entries.push(entry);
            store.entry_ends.push(end);
        }
        if covered {
            // Covered entries lead the file: rewrite it without them, so
            // that the offsets kept match the file.
            let kept = std::mem::take(&mut store.entries);
            store.entry_ends.clear();
            fsutil::write_atomic(&log_path, &store.plan_append_frames(&kept))?;
            store.append(&kept, 0);
        }
        if store.hard_state.commit < store.snapshot_index() {
            store.hard_state.commit = store.snapshot_index();
        }
        Ok(store)
    }

    /// Cuts `log` to `cut_at` bytes, appends `frames`, and fdatasyncs.
    /// On a full disk the data directory's reserve is given up, as for
    /// every metadata write: deletions that free space must get through.
    pub fn append(&self, cut_at: u64, frames: &[u8]) -> std::io::Result<()> {
        let path = self.dir.join(LOG_FILE);
        fsutil::with_reserve(&path, || {
            let mut file = OpenOptions::new().write(true).open(&path)?;
            if file.metadata()?.len() != cut_at {
                file.set_len(cut_at)?;
            }
            use std::io::Seek;
            file.seek(std::io::SeekFrom::Start(cut_at))?;
            file.write_all(frames)?;
            file.sync_data()
        })
    }

    pub fn write_state(&self, hs: &HardState) -> std::io::Result<()> {
        fsutil::write_atomic(&self.dir.join(STATE_FILE), &hs.write_to_bytes().expect("encodes"))
    }

    pub fn write_snapshot(&self, snapshot: &Snapshot) -> std::io::Result<()> {
        let mut framed = Vec::new();
        push_frame(&mut framed, &snapshot.write_to_bytes().expect("a snapshot encodes"));
        fsutil::write_atomic(&self.dir.join(SNAPSHOT_FILE), &framed)
    }

    /// Replaces `log` with `frames` (after a snapshot).
    pub fn rewrite_log(&self, frames: &[u8]) -> std::io::Result<()> {
        fsutil::write_atomic(&self.dir.join(LOG_FILE), frames)
    }
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

/// A whole file written as one frame.
fn read_framed(path: &Path) -> std::io::Result<Vec<u8>> {
    let bytes = std::fs::read(path)?;
    let (frames, good) = split_frames(&bytes);
    match frames.first() {
        Some(&(start, len)) if good == bytes.len() => Ok(bytes[start..start + len].to_vec()),
        _ => Err(invalid(format!("{} is corrupt", path.display()))),
    }
}

/// (payload start, payload length) of each whole, CRC-valid frame from the
/// start of `bytes`, and the length they cover.
fn split_frames(bytes: &[u8]) -> (Vec<(usize, usize)>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= FRAME_HEADER_BYTES {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let start = at + FRAME_HEADER_BYTES;
        if len > MAX_FRAME_BYTES || bytes.len() - start < len || crc32c::crc32c(&bytes[start..start + len]) != crc {
            break;
        }
        frames.push((start, len));
        at = start + len;
    }
    (frames, at)
}

/// Decoded entries with their frame lengths, and the bytes they cover.
fn parse_frames(bytes: &[u8]) -> (Vec<(Entry, usize)>, usize) {
    let (frames, _) = split_frames(bytes);
    let mut entries = Vec::with_capacity(frames.len());
    let mut good = 0;
    for (start, len) in frames {
        match Entry::parse_from_bytes(&bytes[start..start + len]) {
            Ok(entry) => entries.push((entry, FRAME_HEADER_BYTES + len)),
            Err(_) => break,
        }
        good = start + len;
    }
    (entries, good)
}

/// A snapshot of `data` at (`index`, `term`) for the voters `voters`.
pub fn new_snapshot(index: u64, term: u64, voters: Vec<u64>, data: Vec<u8>) -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.set_data(data.into());
    let meta = snapshot.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.set_conf_state(ConfState::from((voters, Vec::new())));
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        let mut e = Entry { index, term, ..Default::default() };
        e.set_data(data.to_vec().into());
        e
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("spate-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn append(files: &LogFiles, store: &mut RaftStore, ents: &[Entry]) {
        let (cut_at, frames) = store.plan_append(ents);
        files.append(cut_at, &frames).unwrap();
        store.append(ents, cut_at);
    }

    #[test]
    fn appends_overwrites_and_snapshots_survive_a_reload() {
        let dir = temp_dir("reload");
        let files = LogFiles::new(&dir);
        files.create(&new_snapshot(0, 0, vec![1], b"image0".to_vec())).unwrap();
        let mut store = files.load().unwrap();
        append(&files, &mut store, &[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")]);
        // A new leader overwrites 3 onwards.
        append(&files, &mut store, &[entry(3, 2, b"C"), entry(4, 2, b"D")]);
        let reloaded = files.load().unwrap();
        let terms: Vec<(u64, u64)> = reloaded.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(terms, vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
        assert_eq!(reloaded.entry_ends, store.entry_ends);

        // A snapshot at 2 drops 1..=2 from memory and from the file.
        let snap = new_snapshot(2, 1, vec![1], b"image2".to_vec());
        files.write_snapshot(&snap).unwrap();
        store.install_snapshot(snap);
        files.rewrite_log(&store.log_frames()).unwrap();
        append(&files, &mut store, &[entry(5, 2, b"E")]);
        let reloaded = files.load().unwrap();
        assert_eq!(reloaded.snapshot_index(), 2);
        assert_eq!(reloaded.first_index().unwrap(), 3);
        assert_eq!(reloaded.last_index().unwrap(), 5);
        assert_eq!(reloaded.term(2).unwrap(), 1);
        assert_eq!(reloaded.entries(3, 6, None, GetEntriesContext::empty(false)).unwrap().len(), 3);
        assert!(reloaded.entries(2, 3, None, GetEntriesContext::empty(false)).is_err());
    }

    #[test]
    fn a_torn_tail_is_cut() {
        let dir = temp_dir("torn");
        let files = LogFiles::new(&dir);
        files.create(&new_snapshot(0, 0, vec![1], Vec::new())).unwrap();
        let mut store = files.load().unwrap();
        append(&files, &mut store, &[entry(1, 1, b"kept")]);
        let log = dir.join(DIR_NAME).join(LOG_FILE);
        let mut file = OpenOptions::new().append(true).open(&log).unwrap();
        file.write_all(&[0, 0, 0, 50, 1, 2, 3]).unwrap();
        let reloaded = files.load().unwrap();
        assert_eq!(reloaded.last_index_now(), 1);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), reloaded.entry_ends[0]);
    }
}
