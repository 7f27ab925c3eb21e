//! The engine's view of the log: entries from `start` on, plus the term of the entry
//! just before `start` (removed by retention, or reset by the leader).
//!
//! Invariant: entries are dense, `entries[k].index == start + k`.
//! Invariant: terms never decrease along the log, and `prev_term <= ` the first term.

use std::collections::VecDeque;

use super::types::{Entry, Index, Term};

#[derive(Clone, Debug, Default)]
pub struct Log {
    start: Index,
    prev_term: Term,
    entries: VecDeque<Entry>,
}

impl Log {
    /// A log that begins at `start` (1 for a new log) whose predecessor has `prev_term`.
    pub fn new(start: Index, prev_term: Term, entries: Vec<Entry>) -> Log {
        assert!(start >= 1, "log start must be at least 1, got {start}");
        let log = Log {
            start,
            prev_term,
            entries: entries.into(),
        };
        log.check();
        log
    }

    pub fn start(&self) -> Index {
        self.start
    }

    pub fn last_index(&self) -> Index {
        self.start + self.entries.len() as Index - 1
    }

    pub fn last_term(&self) -> Term {
        self.entries.back().map_or(self.prev_term, |e| e.term)
    }

    /// The term of the entry at `index`; `None` when the log does not know it (before
    /// `start - 1` or after the end).
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index + 1 == self.start {
            return Some(self.prev_term);
        }
        self.get(index).map(|e| e.term)
    }

    pub fn get(&self, index: Index) -> Option<&Entry> {
        let offset = index.checked_sub(self.start)?;
        self.entries.get(offset as usize)
    }

    /// Entries from `from` on, at most `count_max` of them and at most `bytes_max`
    /// bytes, but at least one when there is one.
    pub fn slice(&self, from: Index, count_max: usize, bytes_max: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let Some(offset) = from.checked_sub(self.start) else {
            panic!("slice from {from} below log start {}", self.start);
        };
        for entry in self.entries.iter().skip(offset as usize).take(count_max) {
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
        }
        out
    }

    /// Sum of entry sizes over `from..=to` (clamped to the log).
    pub fn bytes_between(&self, from: Index, to: Index) -> u64 {
        let from = from.max(self.start);
        (from..=to.min(self.last_index()))
            .filter_map(|i| self.get(i))
            .map(Entry::size_bytes)
            .sum()
    }

    pub fn append(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "append must be dense: last index {}",
            self.last_index()
        );
        assert!(
            entry.term >= self.last_term(),
            "terms must not decrease: appending term {} after {}",
            entry.term,
            self.last_term()
        );
        self.entries.push_back(entry);
    }

    /// Removes every entry at `from` and after.
    pub fn truncate_from(&mut self, from: Index) {
        assert!(
            from >= self.start,
            "truncate at {from} below start {}",
            self.start
        );
        self.entries.truncate((from - self.start) as usize);
    }

    /// Removes every entry before `before`; `before` may be at most `last_index + 1`.
    pub fn purge_before(&mut self, before: Index) {
        if before <= self.start {
            return;
        }
        assert!(before <= self.last_index() + 1, "purge past the end");
        self.prev_term = self
            .term_at(before - 1)
            .expect("purged entry is in the log");
        self.entries.drain(..(before - self.start) as usize);
        self.start = before;
    }

    /// Discards the whole log; it restarts empty at `start` after an entry of `prev_term`.
    pub fn reset(&mut self, start: Index, prev_term: Term) {
        *self = Log::new(start, prev_term, Vec::new());
    }

    /// The last index whose term is at most `term` (at least `start - 1`), found by
    /// binary search because terms never decrease along the log.
    pub fn last_index_with_term_at_most(&self, term: Term) -> Index {
        let count = self.entries.partition_point(|e| e.term <= term);
        self.start - 1 + count as Index
    }

    /// The first index in the log whose term is `term` or more (at least `start`).
    pub fn first_index_with_term_at_least(&self, term: Term) -> Index {
        self.start + self.entries.partition_point(|e| e.term < term) as Index
    }

    /// Panics with context when a structural invariant does not hold.
    pub fn check(&self) {
        let mut term = self.prev_term;
        for (k, entry) in self.entries.iter().enumerate() {
            assert_eq!(entry.index, self.start + k as Index, "log is not dense");
            assert!(entry.term >= term, "log terms decrease at {}", entry.index);
            term = entry.term;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::types::EntryKind;
    use bytes::Bytes;

    pub fn entry(index: Index, term: Term) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Record,
            payload: Bytes::from(format!("r{index}")),
        }
    }

    pub fn log_with_terms(terms: &[Term]) -> Log {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(k, &t)| entry(k as Index + 1, t));
        Log::new(1, 0, entries.collect())
    }

    #[test]
    fn empty_log_knows_its_predecessor() {
        let log = Log::new(5, 3, Vec::new());
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.last_term(), 3);
        assert_eq!(log.term_at(4), Some(3));
        assert_eq!(log.term_at(3), None);
        assert_eq!(log.term_at(5), None);
    }

    #[test]
    fn term_searches() {
        let log = log_with_terms(&[1, 1, 2, 2, 2, 4]);
        assert_eq!(log.last_index_with_term_at_most(2), 5);
        assert_eq!(log.last_index_with_term_at_most(3), 5);
        assert_eq!(log.last_index_with_term_at_most(0), 0);
        assert_eq!(log.first_index_with_term_at_least(2), 3);
        assert_eq!(log.first_index_with_term_at_least(4), 6);
        assert_eq!(log.first_index_with_term_at_least(5), 7);
    }

    #[test]
    fn truncate_purge_and_reset() {
        let mut log = log_with_terms(&[1, 1, 2, 2, 3]);
        log.truncate_from(4);
        assert_eq!(log.last_index(), 3);
        log.purge_before(3);
        assert_eq!(
            (log.start(), log.term_at(2), log.last_index()),
            (3, Some(1), 3)
        );
        log.purge_before(4);
        assert_eq!((log.start(), log.last_term(), log.last_index()), (4, 2, 3));
        log.reset(10, 5);
        assert_eq!((log.start(), log.last_index(), log.last_term()), (10, 9, 5));
        log.check();
    }

    #[test]
    fn slice_respects_count_and_bytes_but_returns_one() {
        let log = log_with_terms(&[1, 1, 1, 1]);
        assert_eq!(log.slice(2, 2, u64::MAX).len(), 2);
        assert_eq!(log.slice(1, 10, 1).len(), 1);
        let per = entry(1, 1).size_bytes();
        assert_eq!(log.slice(1, 10, 2 * per).len(), 2);
        assert!(log.slice(5, 10, u64::MAX).is_empty());
        assert_eq!(log.bytes_between(2, 9), 3 * per);
    }

    #[test]
    #[should_panic(expected = "append must be dense")]
    fn append_with_gap_panics() {
        let mut log = log_with_terms(&[1]);
        log.append(entry(3, 1));
    }
}
