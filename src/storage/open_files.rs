//! The shard's open sealed segment files: a bounded set of handles, the least
//! recently used closed first. A sealed segment holds no descriptor of its
//! own; reads open its file through this set, so no number of segments can
//! exhaust the process's descriptors. Active segments keep their own handle
//! (one per partition) outside the bound. One set per shard thread, so no
//! lock: shards never share it.
//!
//! A handle a reader still holds stays open until that read ends; sealed
//! files the next fdatasync must cover, and seals in progress, hold theirs
//! until done. So the descriptors on sealed files are at most the bound plus
//! those in flight.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

use super::faults::{self, Op};

/// Default bound on open sealed segment files per shard.
pub const DEFAULT_MAX_OPEN_SEGMENT_FILES: usize = 1024;

/// Where a read finds a segment's bytes.
#[derive(Clone)]
pub enum SegmentFile {
    /// A segment that holds its own handle (the active one).
    Own(Rc<DmaFile>),
    /// A sealed segment's file, opened through the shard's set.
    Sealed(PathBuf),
}

impl SegmentFile {
    /// The open file: a sealed one is reopened if the set closed it.
    pub async fn open(&self) -> std::io::Result<Rc<DmaFile>> {
        match self {
            SegmentFile::Own(file) => Ok(file.clone()),
            SegmentFile::Sealed(path) => open(path).await,
        }
    }
}

struct OpenFiles {
    max_open: usize,
    /// path → (handle, last use).
    by_path: HashMap<PathBuf, (Rc<DmaFile>, u64)>,
    /// last use → path: the first entry is the next to close.
    by_use: BTreeMap<u64, PathBuf>,
    clock: u64,
    /// Bumped by every `forget`: an open that awaited across one may hold a
    /// file being deleted, and must not put it in the set.
    forgets: u64,
}

impl OpenFiles {
    fn touch(&mut self, path: &Path) -> Option<Rc<DmaFile>> {
        self.clock += 1;
        let (file, used) = self.by_path.get_mut(path)?;
        self.by_use.remove(used);
        *used = self.clock;
        self.by_use.insert(self.clock, path.to_path_buf());
        Some(file.clone())
    }

    fn insert(&mut self, path: PathBuf, file: Rc<DmaFile>) {
        self.remove(&path);
        self.clock += 1;
        self.by_use.insert(self.clock, path.clone());
        self.by_path.insert(path, (file, self.clock));
        self.evict();
    }

    fn remove(&mut self, path: &Path) {
        self.forgets += 1;
        if let Some((_, used)) = self.by_path.remove(path) {
            self.by_use.remove(&used);
        }
    }

    /// Closes the least recently used handles beyond the bound. Dropping the
    /// last handle closes the descriptor (glommio closes it asynchronously).
    fn evict(&mut self) {
        while self.by_path.len() > self.max_open {
            let (_, path) = self.by_use.pop_first().expect("by_use mirrors by_path");
            self.by_path.remove(&path);
        }
        debug_assert_eq!(self.by_path.len(), self.by_use.len());
    }
}

thread_local! {
    static OPEN_FILES: RefCell<OpenFiles> = RefCell::new(OpenFiles {
        max_open: DEFAULT_MAX_OPEN_SEGMENT_FILES,
        by_path: HashMap::new(),
        by_use: BTreeMap::new(),
        clock: 0,
        forgets: 0,
    });
}

/// Sets this shard's bound (`max_open_segment_files_per_shard`).
pub fn set_max_open(max_open: usize) {
    assert!(max_open > 0, "at least one sealed segment file must be openable");
    OPEN_FILES.with(|set| {
        let mut set = set.borrow_mut();
        set.max_open = max_open;
        set.evict();
    });
}

/// The open handle of the sealed segment file at `path`, opened if needed.
pub async fn open(path: &Path) -> std::io::Result<Rc<DmaFile>> {
    if let Some(file) = OPEN_FILES.with(|set| set.borrow_mut().touch(path)) {
        return Ok(file);
    }
    faults::fail(Op::Open, path)?;
    let forgets_before = OPEN_FILES.with(|set| set.borrow().forgets);
    let file = Rc::new(OpenOptions::new().read(true).dma_open(path).await?);
    OPEN_FILES.with(|set| {
        let mut set = set.borrow_mut();
        // A file forgotten while we opened it is being deleted: this read
        // may use it, but the set must not keep its space allocated. A
        // concurrent open of the same file may have got there first: either
        // handle reads the same bytes, and the set keeps one.
        if set.forgets == forgets_before {
            set.insert(path.to_path_buf(), file.clone());
        }
    });
    Ok(file)
}

/// Puts a just-sealed segment's handle in the set, so readers need not reopen it.
pub fn keep(path: PathBuf, file: Rc<DmaFile>) {
    OPEN_FILES.with(|set| set.borrow_mut().insert(path, file));
}

/// Drops the set's handle of a removed segment file, so its space is freed.
pub fn forget(path: &Path) {
    OPEN_FILES.with(|set| set.borrow_mut().remove(path));
}

/// Drops every handle of files in `dir` (a deleted partition's directory).
pub fn forget_dir(dir: &Path) {
    OPEN_FILES.with(|set| {
        let mut set = set.borrow_mut();
        set.forgets += 1;
        let doomed: Vec<PathBuf> = set.by_path.keys().filter(|path| path.starts_with(dir)).cloned().collect();
        for path in doomed {
            set.remove(&path);
        }
    });
}

/// Handles this shard's set holds now.
pub fn open_count() -> usize {
    OPEN_FILES.with(|set| set.borrow().by_path.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_file_is_closed_first() {
        let dir = std::env::temp_dir().join(format!("spate-open-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let paths: Vec<PathBuf> = (0..5).map(|i| dir.join(format!("{i}.log"))).collect();
        for path in &paths {
            std::fs::write(path, b"x").unwrap();
        }
        let executor = glommio::LocalExecutorBuilder::default().io_memory(1 << 20).make().unwrap();
        executor.run(async {
            set_max_open(3);
            for path in &paths[..3] {
                open(path).await.unwrap();
            }
            open(&paths[0]).await.unwrap(); // 0 is now the most recent
            open(&paths[3]).await.unwrap(); // closes 1
            assert_eq!(open_count(), 3);
            let open_paths: Vec<PathBuf> = OPEN_FILES.with(|s| s.borrow().by_use.values().cloned().collect());
            assert_eq!(open_paths, vec![paths[2].clone(), paths[0].clone(), paths[3].clone()]);
            forget(&paths[2]);
            assert_eq!(open_count(), 2);
            forget_dir(&dir);
            assert_eq!(open_count(), 0);
            open(&paths[4]).await.unwrap();
            set_max_open(1);
            assert_eq!(open_count(), 1);
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
