//! Sparse per-segment indexes: offset -> file position, and timestamp -> offset.
//! One entry per `index_interval_bytes` of log. Held in memory; written to
//! `<base>.index` / `<base>.timeindex` when a segment is sealed, and rebuilt by
//! scanning when a file is missing or does not fit its segment.

/// Offset index entry: offset relative to the segment base, and byte position.
const OFFSET_ENTRY_BYTES: usize = 8;
/// Time index entry: max timestamp so far, and relative offset reaching it.
const TIME_ENTRY_BYTES: usize = 12;

#[derive(Default, Debug, Clone)]
pub struct SegmentIndex {
    offsets: Vec<(u32, u32)>,
    times: Vec<(i64, u32)>,
}

impl SegmentIndex {
    /// Records a batch starting at `position` whose first offset is `relative_offset`
    /// and whose max timestamp brings the segment's running max to `max_timestamp`.
    pub fn add(&mut self, relative_offset: u32, position: u32, max_timestamp: i64) {
        if let Some(&(last_rel, _)) = self.offsets.last() {
            debug_assert!(relative_offset > last_rel, "index entries ascend");
        }
        self.offsets.push((relative_offset, position));
        if self.times.last().is_none_or(|&(ts, _)| max_timestamp > ts) {
            self.times.push((max_timestamp, relative_offset));
        }
    }

    /// Position of the last indexed batch starting at or before `relative_offset`.
    pub fn position_for(&self, relative_offset: u32) -> u32 {
        let i = self.offsets.partition_point(|&(rel, _)| rel <= relative_offset);
        if i == 0 {
            0
        } else {
            self.offsets[i - 1].1
        }
    }

    /// Relative offset from which to scan for the first batch whose max timestamp
    /// is at least `timestamp` (the last entry still below it).
    pub fn scan_start_for_time(&self, timestamp: i64) -> u32 {
        let i = self.times.partition_point(|&(ts, _)| ts < timestamp);
        if i == 0 {
            0
        } else {
            self.times[i - 1].1
        }
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Drops entries for batches at or past byte `position` (they were rolled back).
    pub fn truncate_from_position(&mut self, position: u32) {
        let keep = self.offsets.partition_point(|&(_, pos)| pos < position);
        self.offsets.truncate(keep);
        let last_relative = self.offsets.last().map(|&(rel, _)| rel);
        self.times.retain(|&(_, rel)| last_relative.is_some_and(|last| rel <= last));
    }

    pub fn last_relative(&self) -> Option<u32> {
        self.offsets.last().map(|&(rel, _)| rel)
    }

    pub fn last_position(&self) -> u32 {
        self.offsets.last().map_or(0, |&(_, pos)| pos)
    }

    pub fn max_timestamp(&self) -> Option<i64> {
        self.times.last().map(|&(ts, _)| ts)
    }

    pub fn encode_offsets(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.offsets.len() * OFFSET_ENTRY_BYTES);
        for &(rel, pos) in &self.offsets {
            out.extend_from_slice(&rel.to_be_bytes());
            out.extend_from_slice(&pos.to_be_bytes());
        }
        out
    }

    pub fn encode_times(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.times.len() * TIME_ENTRY_BYTES);
        for &(ts, rel) in &self.times {
            out.extend_from_slice(&ts.to_be_bytes());
            out.extend_from_slice(&rel.to_be_bytes());
        }
        out
    }

    /// Decodes index files; `None` if they are malformed or point past
    /// `segment_bytes` (then the caller rebuilds by scanning).
    pub fn decode(offsets: &[u8], times: &[u8], segment_bytes: u64) -> Option<SegmentIndex> {
        if !offsets.len().is_multiple_of(OFFSET_ENTRY_BYTES) || !times.len().is_multiple_of(TIME_ENTRY_BYTES) {
            return None;
        }
        let offsets: Vec<(u32, u32)> = offsets
            .chunks_exact(OFFSET_ENTRY_BYTES)
            .map(|c| (u32::from_be_bytes(c[..4].try_into().unwrap()), u32::from_be_bytes(c[4..].try_into().unwrap())))
            .collect();
        let times: Vec<(i64, u32)> = times
            .chunks_exact(TIME_ENTRY_BYTES)
            .map(|c| (i64::from_be_bytes(c[..8].try_into().unwrap()), u32::from_be_bytes(c[8..].try_into().unwrap())))
            .collect();
        let ascending = offsets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
        let within = offsets.last().is_none_or(|&(_, pos)| (pos as u64) < segment_bytes);
        (ascending && within).then_some(SegmentIndex { offsets, times })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_round_trip() {
        let mut index = SegmentIndex::default();
        index.add(0, 0, 100);
        index.add(10, 4096, 90);
        index.add(20, 8192, 300);
        assert_eq!(index.position_for(15), 4096);
        assert_eq!(index.position_for(20), 8192);
        assert_eq!(index.scan_start_for_time(200), 0);
        assert_eq!(index.scan_start_for_time(301), 20);
        let back = SegmentIndex::decode(&index.encode_offsets(), &index.encode_times(), 10_000).unwrap();
        assert_eq!(back.position_for(15), 4096);
        assert_eq!(back.max_timestamp(), Some(300));
        assert!(SegmentIndex::decode(&index.encode_offsets(), &index.encode_times(), 5_000).is_none());
        assert!(SegmentIndex::decode(&[1, 2, 3], &[], 10_000).is_none());
    }
}
