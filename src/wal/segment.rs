//! One segment as the WAL keeps it in memory: a sparse index of where records start,
//! the terms of its entries, its trim entries, and how far it is written.
//!
//! The index is sparse so that memory does not grow with the retained log: one
//! (index, offset) point per `SPARSE_STRIDE_BYTES` of segment, the first entry always
//! being one. A read seeks to the nearest point at or below the entry it wants and
//! scans forward from there, verifying every record it passes.

use super::format::SegmentInfo;
use crate::engine::{Index, Term};
use std::rc::Rc;

/// Bytes of segment between two points of the sparse index: 32 KiB gives 256 KiB
/// of points per GiB of log (8 bytes each) and costs a read at most 32 KiB of
/// scanning before the entry it wants.
pub const SPARSE_STRIDE_BYTES: u64 = 32 << 10;

/// Name of a segment file: its first index, then its sequence number, so that a
/// listing sorts by index and the sequence orders segments that start at the same
/// index (a truncation segment supersedes the older one).
pub fn segment_file_name(first_index: Index, segment_seq: u64) -> String {
    format!("{first_index:020}-{segment_seq:010}.wal")
}

/// Name of the summary file of segment `segment_name`.
pub fn summary_file_name(segment_name: &str) -> String {
    let stem = segment_name.strip_suffix(".wal").unwrap_or(segment_name);
    format!("{stem}.sum")
}

/// Parses a segment file name into (first index, sequence number).
pub fn parse_segment_file_name(name: &str) -> Option<(Index, u64)> {
    parse_stem(name.strip_suffix(".wal")?)
}

/// Parses a summary file name into (first index, sequence number).
pub fn parse_summary_file_name(name: &str) -> Option<(Index, u64)> {
    parse_stem(name.strip_suffix(".sum")?)
}

fn parse_stem(stem: &str) -> Option<(Index, u64)> {
    let (first, seq) = stem.split_once('-')?;
    if first.len() != 20 || seq.len() != 10 {
        return None;
    }
    Some((first.parse().ok()?, seq.parse().ok()?))
}

/// One point of the sparse index: the record of entry `first_index + delta` starts
/// at byte `offset` of the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexPoint {
    pub delta: u32,
    pub offset: u32,
}

/// A live segment.
pub struct Segment<F> {
    pub name: String,
    pub info: SegmentInfo,
    /// The open file handle recovery used, for the newest segment only.
    pub file: Option<Rc<F>>,
    /// Entries in this segment.
    count: u64,
    /// The sparse index, ascending; the first entry is always a point.
    pub points: Vec<IndexPoint>,
    /// (first index, term) of each run of equal terms, ascending.
    pub term_runs: Vec<(Index, Term)>,
    /// (index, before) of each trim entry, ascending.
    pub trims: Vec<(Index, Index)>,
    /// The byte after the last record written or buffered.
    pub end_pos: u64,
    /// Highest flush number of any record in the segment.
    pub flush_seq_max: u64,
    /// Where recovery found damage after the segment's entries (a torn tail or
    /// corruption it was told to cut), so that later recoveries report it the same
    /// way whether they scan the segment or trust its summary.
    pub damage_offset: Option<u64>,
    /// Whether appends must go to a new segment (full, or recovered with a torn tail).
    pub sealed: bool,
    /// Wall-clock time (ms since the Unix epoch, as noted by [`super::Wal::note_time_ms`])
    /// of the newest write into this segment, once it is sealed; retention by age
    /// measures from it. `None` while open, or until a time is noted after recovery
    /// when neither the summary nor the seal knew one.
    pub sealed_at_ms: Option<u64>,
    /// Whether a summary of this segment is on disk or queued to be written.
    pub summarized: bool,
    /// Bytes of its summary file on disk (0 when none).
    pub summary_bytes: u64,
}

impl<F> Segment<F> {
    pub fn new(info: SegmentInfo, block_bytes: usize) -> Segment<F> {
        Segment {
            name: segment_file_name(info.first_index, info.segment_seq),
            info,
            file: None,
            count: 0,
            points: Vec::new(),
            term_runs: Vec::new(),
            trims: Vec::new(),
            end_pos: block_bytes as u64,
            flush_seq_max: 0,
            damage_offset: None,
            sealed: false,
            sealed_at_ms: None,
            summarized: false,
            summary_bytes: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Sets the entry count (from a verified summary).
    pub fn set_len(&mut self, count: u64) {
        self.count = count;
    }

    /// The last index in this segment, or `first_index - 1` when empty.
    pub fn last_index(&self) -> Index {
        self.info.first_index + self.len() - 1
    }

    pub fn contains(&self, index: Index) -> bool {
        index >= self.info.first_index && index <= self.last_index()
    }

    /// Term of `index`, which must be in this segment or be its predecessor.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index + 1 == self.info.first_index {
            return Some(self.info.prev_term);
        }
        if !self.contains(index) {
            return None;
        }
        let run = self.term_runs.partition_point(|(start, _)| *start <= index);
        Some(self.term_runs[run - 1].1)
    }

    pub fn last_term(&self) -> Term {
        self.term_runs.last().map_or(self.info.prev_term, |r| r.1)
    }

    /// Records that entry `last_index() + 1` with `term` starts at `offset`.
    pub fn push(&mut self, term: Term, offset: u64) {
        let index = self.last_index() + 1;
        if self.term_runs.last().is_none_or(|r| r.1 != term) {
            self.term_runs.push((index, term));
        }
        let due = self
            .points
            .last()
            .is_none_or(|p| offset >= p.offset as u64 + SPARSE_STRIDE_BYTES);
        if due {
            self.points.push(IndexPoint {
                delta: self.count as u32,
                offset: offset as u32,
            });
        }
        self.count += 1;
    }

    /// The nearest index point at or below `index` (in this segment): (its index,
    /// its offset).
    pub fn point_at_or_below(&self, index: Index) -> (Index, u64) {
        let delta = index - self.info.first_index;
        let k = self.points.partition_point(|p| p.delta as u64 <= delta);
        let p = self.points[k - 1];
        (self.info.first_index + p.delta as u64, p.offset as u64)
    }

    /// The offset of the first index point above `index`, if any: every record up to
    /// `index` ends at or before it.
    pub fn point_above(&self, index: Index) -> Option<u64> {
        let delta = index - self.info.first_index;
        let k = self.points.partition_point(|p| p.delta as u64 <= delta);
        self.points.get(k).map(|p| p.offset as u64)
    }

    /// Drops entries `from` and later from the in-memory view.
    pub fn truncate(&mut self, from: Index) {
        let keep = from.saturating_sub(self.info.first_index).min(self.len());
        self.count = keep;
        self.points.retain(|p| (p.delta as u64) < keep);
        let last = self.last_index();
        self.term_runs.retain(|(start, _)| *start <= last);
        self.trims.retain(|(index, _)| *index <= last);
    }

    /// Bytes of memory this segment's index takes (points, term runs and trims).
    pub fn index_memory_bytes(&self) -> usize {
        size_of::<Self>()
            + self.name.capacity()
            + self.points.capacity() * size_of::<IndexPoint>()
            + self.term_runs.capacity() * size_of::<(Index, Term)>()
            + self.trims.capacity() * size_of::<(Index, Index)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let name = segment_file_name(42, 7);
        assert_eq!(parse_segment_file_name(&name), Some((42, 7)));
        assert_eq!(parse_segment_file_name("hardstate"), None);
        let sum = summary_file_name(&name);
        assert_eq!(parse_summary_file_name(&sum), Some((42, 7)));
        assert_eq!(parse_segment_file_name(&sum), None);
    }

    fn info() -> SegmentInfo {
        SegmentInfo {
            segment_seq: 1,
            first_index: 10,
            prev_term: 2,
            reset: false,
            recycled: false,
            segment_size_bytes: 1 << 20,
        }
    }

    #[test]
    fn terms_and_truncate() {
        let mut seg: Segment<()> = Segment::new(info(), 512);
        for (i, term) in [2, 3, 3, 5].into_iter().enumerate() {
            seg.push(term, 512 + 100 * i as u64);
        }
        assert_eq!(seg.last_index(), 13);
        assert_eq!(seg.term_at(9), Some(2));
        assert_eq!(seg.term_at(12), Some(3));
        assert_eq!(seg.term_at(13), Some(5));
        seg.truncate(12);
        assert_eq!(seg.last_index(), 11);
        assert_eq!(seg.last_term(), 3);
        seg.truncate(10);
        assert!(seg.is_empty());
        assert_eq!(seg.last_term(), 2);
    }

    #[test]
    fn sparse_points_one_per_stride() {
        let mut seg: Segment<()> = Segment::new(info(), 512);
        // 1,000 records of 1 KiB: one point per 32 records.
        for i in 0..1000u64 {
            seg.push(2, 512 + 1024 * i);
        }
        assert_eq!(seg.points.len(), 32);
        assert_eq!(seg.point_at_or_below(10), (10, 512));
        assert_eq!(seg.point_at_or_below(41), (10, 512));
        assert_eq!(seg.point_at_or_below(42), (42, 512 + 32 * 1024));
        assert_eq!(seg.point_above(41), Some(512 + 32 * 1024));
        assert_eq!(seg.point_above(1009), None);
        seg.truncate(43);
        assert_eq!(seg.points.len(), 2);
        assert_eq!(seg.point_above(42), None);
    }
}
