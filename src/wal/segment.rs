//! One segment as the WAL keeps it in memory: where each entry's record starts, the
//! terms of its entries, and how far it is written.

use super::format::SegmentInfo;
use crate::engine::{Index, Term};
use std::rc::Rc;

/// Name of a segment file: its first index, then its sequence number, so that a
/// listing sorts by index and the sequence orders segments that start at the same
/// index (a truncation segment supersedes the older one).
pub fn segment_file_name(first_index: Index, segment_seq: u64) -> String {
    format!("{first_index:020}-{segment_seq:010}.wal")
}

/// Parses a segment file name into (first index, sequence number).
pub fn parse_segment_file_name(name: &str) -> Option<(Index, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (first, seq) = stem.split_once('-')?;
    if first.len() != 20 || seq.len() != 10 {
        return None;
    }
    Some((first.parse().ok()?, seq.parse().ok()?))
}

/// A live segment.
pub struct Segment<F> {
    pub name: String,
    pub info: SegmentInfo,
    /// `None` until the flush that creates the file on disk has run.
    pub file: Option<Rc<F>>,
    /// Byte offset of the record of entry `info.first_index + i`.
    pub offsets: Vec<u32>,
    /// (first index, term) of each run of equal terms, ascending.
    pub term_runs: Vec<(Index, Term)>,
    /// The byte after the last record written or buffered.
    pub end_pos: u64,
    /// Whether appends must go to a new segment (full, or recovered with a torn tail).
    pub sealed: bool,
    /// Wall-clock time (ms since the Unix epoch, as noted by [`super::Wal::note_time_ms`])
    /// of the newest write into this segment, once it is sealed; retention by age
    /// measures from it. `None` while open, or until a time is noted after recovery.
    pub sealed_at_ms: Option<u64>,
}

impl<F> Segment<F> {
    pub fn new(info: SegmentInfo, block_bytes: usize) -> Segment<F> {
        Segment {
            name: segment_file_name(info.first_index, info.segment_seq),
            info,
            file: None,
            offsets: Vec::new(),
            term_runs: Vec::new(),
            end_pos: block_bytes as u64,
            sealed: false,
            sealed_at_ms: None,
        }
    }

    pub fn len(&self) -> u64 {
        self.offsets.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
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
        self.offsets.push(offset as u32);
    }

    /// Drops entries `from` and later from the in-memory view.
    pub fn truncate(&mut self, from: Index) {
        let keep = from.saturating_sub(self.info.first_index).min(self.len());
        self.offsets.truncate(keep as usize);
        let last = self.last_index();
        self.term_runs.retain(|(start, _)| *start <= last);
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
    }

    #[test]
    fn terms_and_truncate() {
        let info = SegmentInfo {
            segment_seq: 1,
            first_index: 10,
            prev_term: 2,
            reset: false,
            segment_size_bytes: 16 << 10,
        };
        let mut seg: Segment<()> = Segment::new(info, 512);
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
}
