//! Opening a partition directory at start: find the segments, trust sealed
//! segments' index files when they fit (scanning only past their last entry),
//! rebuild them otherwise, and scan the active segment batch by batch; every
//! scan checks CRCs and truncates a torn, corrupt or zero-filled tail.
//! Producer state comes from the newest snapshot plus the batches after it.

use std::path::Path;

use tracing::{info, warn};

use super::batch;
use super::epochs::EpochCache;
use super::index::SegmentIndex;
use super::log::{LogConfig, PartitionLog, LOG_START_FILE};
use super::producers::{list_snapshots, snapshot_path, ProducerBatch, ProducerStates};
use super::segment::{index_path, read_at, time_index_path, Segment};

/// Bytes read per step while scanning.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// Producer batches found while scanning: (batch, its base offset).
type Found = Vec<(ProducerBatch, i64)>;

/// Opens (or creates) the log in `dir`.
pub async fn open_log(dir: &Path, config: LogConfig, leader_epoch: i32) -> std::io::Result<PartitionLog> {
    let opened = open_segments(dir, config, leader_epoch).await;
    if opened.is_err() {
        // Sealed segments opened so far went to the shard's set; no partition
        // will forget them when it stops, so forget them here.
        super::open_files::forget_dir(dir);
    }
    opened
}

async fn open_segments(dir: &Path, config: LogConfig, leader_epoch: i32) -> std::io::Result<PartitionLog> {
    let dir_owned = dir.to_path_buf();
    let (bases, log_start, snapshots, cleaned_to) = glommio::executor()
        .spawn_blocking(move || -> std::io::Result<(Vec<i64>, i64, Vec<i64>, i64)> {
            std::fs::create_dir_all(&dir_owned)?;
            super::cleaner::recover(&dir_owned)?;
            let mut bases = Vec::new();
            for entry in std::fs::read_dir(&dir_owned)? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if let Some(base) = name.strip_suffix(".log").and_then(|b| b.parse::<i64>().ok()) {
                    bases.push(base);
                }
            }
            bases.sort_unstable();
            let start = std::fs::read_to_string(dir_owned.join(LOG_START_FILE))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            Ok((bases, start, list_snapshots(&dir_owned)?, super::cleaner::read_checkpoint(&dir_owned)))
        })
        .await?;
    let mut segments = Vec::with_capacity(bases.len() + 1);
    let mut found = Found::new();
    let last = bases.len().saturating_sub(1);
    for (i, &base) in bases.iter().enumerate() {
        let mut segment = Segment::open(dir, base).await?;
        if i == last {
            recover_active(&mut segment, &config, &mut found).await?;
            segment.resume_appending(config.write_buffer_bytes, config.preallocate_step_bytes).await?;
        } else {
            recover_sealed(&mut segment, &config, &mut found).await?;
            // Sealed: its handle goes to the shard's bounded set of open files.
            segment.release_file();
        }
        segments.push(segment);
    }
    if segments.is_empty() {
        segments.push(Segment::create(dir, log_start, config.write_buffer_bytes, config.preallocate_step_bytes).await?);
    }
    let producers = recover_producers(dir, &segments, &snapshots, found, &config).await?;
    let mut log = PartitionLog::new(dir, config, leader_epoch, segments, log_start, producers);
    log.cleaned_to = cleaned_to;
    let epoch_dir = dir.to_path_buf();
    let mut epochs = glommio::executor().spawn_blocking(move || EpochCache::load(&epoch_dir)).await;
    epochs.truncate_from(log.end_offset());
    if epochs.latest_epoch().is_none() && log.end_offset() > log.log_start_offset() {
        // A log from before epochs were kept: one node led it, in epoch 0.
        epochs.assign(0, log.log_start_offset());
    }
    log.epochs = epochs;
    Ok(log)
}

/// Producer state: the newest snapshot within the recovered log, plus every
/// producer batch stored after it. Sealed segments after the snapshot (a
/// crash before the roll's snapshot was written) are scanned whole; with no
/// snapshot at all (logs from before snapshots), the scanned tails serve.
async fn recover_producers(
    dir: &Path,
    segments: &[Segment],
    snapshots: &[i64],
    found: Found,
    config: &LogConfig,
) -> std::io::Result<ProducerStates> {
    let end = segments.last().map_or(0, |s| s.next_offset);
    let mut loaded = None;
    for &offset in snapshots.iter().rev().filter(|&&o| o <= end) {
        let path = snapshot_path(dir, offset);
        let bytes = glommio::executor().spawn_blocking(move || std::fs::read(path)).await;
        if let Some(states) = bytes.ok().and_then(|b| ProducerStates::decode(&b)) {
            loaded = Some((offset, states));
            break;
        }
        warn!(dir = %dir.display(), offset, "ignoring a damaged producer snapshot");
    }
    let Some((from, mut producers)) = loaded else {
        let mut producers = ProducerStates::default();
        for (batch, base) in &found {
            producers.record(batch, *base);
        }
        return Ok(producers);
    };
    let active_base = segments.last().map_or(0, |s| s.base_offset);
    let mut replay = Found::new();
    for segment in segments.iter().filter(|s| s.next_offset > from && s.base_offset < active_base) {
        scan_producers(segment, config, &mut replay).await?;
    }
    replay.extend(found.into_iter().filter(|(_, base)| *base >= active_base));
    for (batch, base) in replay.iter().filter(|(_, base)| *base >= from) {
        producers.record(batch, *base);
    }
    Ok(producers)
}

/// Every producer batch of a (recovered) sealed segment.
async fn scan_producers(segment: &Segment, config: &LogConfig, found: &mut Found) -> std::io::Result<()> {
    let file = segment.file().open().await?;
    let mut position = 0;
    while position < segment.size_bytes {
        let want = SCAN_CHUNK_BYTES.max(config.max_message_bytes).min((segment.size_bytes - position) as usize);
        let chunk = read_at(&file, position, want).await?;
        let mut at = 0;
        while let Ok(info) = batch::peek(&chunk[at..]) {
            if let Some(producer) = info.producer_batch() {
                found.push((producer, info.base_offset));
            }
            at += info.total_bytes;
        }
        if at == 0 {
            break;
        }
        position += at as u64;
    }
    Ok(())
}

async fn recover_sealed(segment: &mut Segment, config: &LogConfig, found: &mut Found) -> std::io::Result<()> {
    let (index_file, time_file) =
        (index_path(&segment.dir, segment.base_offset), time_index_path(&segment.dir, segment.base_offset));
    let files = glommio::executor()
        .spawn_blocking(move || Some((std::fs::read(index_file).ok()?, std::fs::read(time_file).ok()?)))
        .await;
    let loaded = files.and_then(|(offsets, times)| SegmentIndex::decode(&offsets, &times, segment.size_bytes));
    let from = match loaded {
        Some(index) if !index.is_empty() => {
            let from = index.last_position() as u64;
            segment.set_index(index);
            from
        }
        _ => {
            info!(dir = %segment.dir.display(), base = segment.base_offset, "rebuilding segment index");
            0
        }
    };
    let file_bytes = segment.size_bytes;
    let end = scan(segment, from, config, found).await?;
    if end < file_bytes {
        // A crash between the last write and sealing leaves zero padding (or
        // a torn batch) past the last whole batch.
        warn!(dir = %segment.dir.display(), base = segment.base_offset, valid_bytes = end, file_bytes, "sealed segment has a bad tail; truncating");
        segment.own_file().truncate(end).await?;
    }
    segment.flushed_bytes = end;
    if from == 0 || end < file_bytes {
        // Rewriting the index is an optimisation for the next start; a full
        // disk must not stop this one.
        if let Err(e) = segment.seal_job().run().await {
            warn!(dir = %segment.dir.display(), base = segment.base_offset, "cannot rewrite segment index: {e}");
        }
    }
    Ok(())
}

async fn recover_active(segment: &mut Segment, config: &LogConfig, found: &mut Found) -> std::io::Result<()> {
    let file_bytes = segment.size_bytes;
    let end = scan(segment, 0, config, found).await?;
    if end < file_bytes {
        // After a crash this is often just the zero padding of the last block.
        warn!(dir = %segment.dir.display(), base = segment.base_offset, valid_bytes = end, file_bytes, "truncating torn or corrupt log tail");
    }
    segment.flushed_bytes = end;
    Ok(())
}

/// Walks batches from `from`, registering each with the segment; stops at the
/// first incomplete or corrupt (CRC) batch. Returns the end of the last good
/// batch, which is also the segment's new logical size.
async fn scan(segment: &mut Segment, from: u64, config: &LogConfig, found: &mut Found) -> std::io::Result<u64> {
    let file = segment.own_file();
    let file_bytes = segment.size_bytes;
    let mut position = from;
    segment.size_bytes = from;
    // A sealed segment's batches were validated on append; the cap only guards
    // against garbage lengths in a damaged file.
    let max_batch_bytes = config.max_message_bytes.max(SCAN_CHUNK_BYTES) * 16;
    while position < file_bytes {
        let want = SCAN_CHUNK_BYTES.min((file_bytes - position) as usize);
        let mut chunk = read_at(&file, position, want).await?;
        let Some(first_len) = super::log::first_batch_bytes(&chunk) else {
            break;
        };
        if first_len > chunk.len() {
            if first_len > max_batch_bytes || position + first_len as u64 > file_bytes {
                break;
            }
            chunk = read_at(&file, position, first_len).await?;
        }
        let mut at = 0;
        while at < chunk.len() {
            let Ok(info) = batch::check_stored(&chunk[at..], max_batch_bytes) else { break };
            let next = info.base_offset + info.last_offset_delta as i64 + 1;
            segment.track(
                position + at as u64,
                info.base_offset,
                next,
                info.max_timestamp,
                info.total_bytes as u64,
                config.index_interval_bytes,
            );
            if let Some(producer) = info.producer_batch() {
                found.push((producer, info.base_offset));
            }
            at += info.total_bytes;
        }
        if at == 0 {
            break;
        }
        position += at as u64;
    }
    segment.size_bytes = position;
    Ok(position)
}
