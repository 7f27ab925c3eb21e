//! The engine's view of the log. It knows the term of every entry from `start - 1`
//! to the end (as runs of equal terms, a few bytes per term however long the log),
//! but holds the entries themselves only for a recent suffix, the cache. Older
//! entries live in the WAL alone; the leader asks the runtime to read them when a
//! follower needs them (`Command::SendLogRange`). That keeps the engine's memory
//! bounded by `log_cache_bytes_max` plus what is not yet committed, however much
//! the WAL retains.
//!
//! Invariant: `runs` is non-empty when the log is, its first run starts at `start`,
//! run starts increase and run terms increase (terms never decrease along a log),
//! and `prev_term <=` the first term.
//! Invariant: the cache holds exactly the entries `cache_start..=last_index`, dense.

use std::collections::VecDeque;

use super::types::{Entry, Index, Term};

#[derive(Clone, Debug, Default)]
pub struct Log {
    start: Index,
    prev_term: Term,
    last_index: Index,
    /// (first index, term) of each run of entries with one term.
    runs: VecDeque<(Index, Term)>,
    cache: VecDeque<Entry>,
    cache_bytes: u64,
}

impl Log {
    /// A log recovered from disk: the term runs of the whole log and, in memory,
    /// only its `tail` (possibly empty), which must end at `last_index`.
    pub fn restore(
        start: Index,
        prev_term: Term,
        runs: Vec<(Index, Term)>,
        last_index: Index,
        tail: Vec<Entry>,
    ) -> Log {
        let mut log = Log::new(start, prev_term, Vec::new());
        log.runs = runs.into();
        log.last_index = last_index;
        if let Some(first) = tail.first() {
            assert_eq!(
                first.index + tail.len() as Index - 1,
                last_index,
                "recovered tail does not end the log"
            );
        }
        for entry in tail {
            assert_eq!(
                log.term_at(entry.index),
                Some(entry.term),
                "recovered tail disagrees with its terms"
            );
            log.cache_bytes += entry.size_bytes();
            log.cache.push_back(entry);
        }
        log.check();
        log
    }

    /// A log that begins at `start` (1 for a new log) whose predecessor has `prev_term`.
    pub fn new(start: Index, prev_term: Term, entries: Vec<Entry>) -> Log {
        assert!(start >= 1, "log start must be at least 1, got {start}");
        let mut log = Log {
            start,
            prev_term,
            last_index: start - 1,
            ..Log::default()
        };
        for entry in entries {
            log.append(entry);
        }
        log
    }

    pub fn start(&self) -> Index {
        self.start
    }

    pub fn last_index(&self) -> Index {
        self.last_index
    }

    pub fn last_term(&self) -> Term {
        self.runs.back().map_or(self.prev_term, |&(_, term)| term)
    }

    /// The first index whose entry is in memory (`last_index + 1` when none is).
    pub fn cache_start(&self) -> Index {
        self.last_index + 1 - self.cache.len() as Index
    }

    pub fn cache_bytes(&self) -> u64 {
        self.cache_bytes
    }

    /// The term of the entry at `index`; `None` when the log does not know it (before
    /// `start - 1` or after the end).
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index + 1 == self.start {
            return Some(self.prev_term);
        }
        if index < self.start || index > self.last_index {
            return None;
        }
        let run = self.runs.partition_point(|&(first, _)| first <= index) - 1;
        Some(self.runs[run].1)
    }

    /// The entry at `index` if it is in memory.
    pub fn get(&self, index: Index) -> Option<&Entry> {
        let offset = index.checked_sub(self.cache_start())?;
        self.cache.get(offset as usize)
    }

    /// Cached entries from `from` on, at most `count_max` of them and at most
    /// `bytes_max` bytes, but at least one when there is one.
    pub fn slice(&self, from: Index, count_max: usize, bytes_max: u64) -> Vec<Entry> {
        let Some(offset) = from.checked_sub(self.cache_start()) else {
            panic!(
                "slice from {from} below the cache, which starts at {}",
                self.cache_start()
            );
        };
        let from_cache = || self.cache.iter().skip(offset as usize).take(count_max);
        // Counted first, so the vector is allocated once at its final size: a
        // pipelined leader slices for every follower on every turn.
        let mut bytes = 0;
        let count = from_cache()
            .enumerate()
            .take_while(|(k, entry)| {
                bytes += entry.size_bytes();
                *k == 0 || bytes <= bytes_max
            })
            .count();
        from_cache().take(count).cloned().collect()
    }

    /// Sum of entry sizes over the cached part of `from..=to`.
    pub fn bytes_between(&self, from: Index, to: Index) -> u64 {
        let from = from.max(self.cache_start());
        (from..=to.min(self.last_index))
            .filter_map(|i| self.get(i))
            .map(Entry::size_bytes)
            .sum()
    }

    pub fn append(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index + 1,
            "append must be dense: last index {}",
            self.last_index
        );
        assert!(
            entry.term >= self.last_term(),
            "terms must not decrease: appending term {} after {}",
            entry.term,
            self.last_term()
        );
        if self.runs.back().is_none_or(|&(_, term)| term != entry.term) {
            self.runs.push_back((entry.index, entry.term));
        }
        self.last_index = entry.index;
        self.cache_bytes += entry.size_bytes();
        self.cache.push_back(entry);
    }

    /// Removes every entry at `from` and after.
    pub fn truncate_from(&mut self, from: Index) {
        assert!(
            from >= self.start,
            "truncate at {from} below start {}",
            self.start
        );
        while self.runs.back().is_some_and(|&(first, _)| first >= from) {
            self.runs.pop_back();
        }
        while self.cache.back().is_some_and(|e| e.index >= from) {
            let entry = self.cache.pop_back().expect("checked above");
            self.cache_bytes -= entry.size_bytes();
        }
        self.last_index = self.last_index.min(from - 1);
    }

    /// Removes every entry before `before`; `before` may be at most `last_index + 1`.
    pub fn purge_before(&mut self, before: Index) {
        if before <= self.start {
            return;
        }
        assert!(before <= self.last_index + 1, "purge past the end");
        self.prev_term = self
            .term_at(before - 1)
            .expect("purged entry is in the log");
        self.start = before;
        // The run holding `before` now starts there; runs wholly before it go.
        while self.runs.len() > 1 && self.runs[1].0 <= before {
            self.runs.pop_front();
        }
        match self.runs.front_mut() {
            Some(run) if before <= self.last_index => run.0 = before,
            _ => self.runs.clear(),
        }
        self.evict_through(before - 1);
    }

    /// Discards the whole log; it restarts empty at `start` after an entry of `prev_term`.
    pub fn reset(&mut self, start: Index, prev_term: Term) {
        *self = Log::new(start, prev_term, Vec::new());
    }

    /// Drops cached entries up to `index` (they stay in the log and the WAL).
    pub fn evict_through(&mut self, index: Index) {
        self.evict_to_fit(index, 0);
    }

    /// Drops the oldest cached entries, none past `index`, until the cache holds at
    /// most `bytes_max` bytes.
    pub fn evict_to_fit(&mut self, index: Index, bytes_max: u64) {
        while self.cache_bytes > bytes_max && self.cache.front().is_some_and(|e| e.index <= index) {
            let entry = self.cache.pop_front().expect("checked above");
            self.cache_bytes -= entry.size_bytes();
        }
    }

    /// The term runs from `start` on, as `Recovered` takes them.
    pub fn runs(&self) -> Vec<(Index, Term)> {
        self.runs.iter().copied().collect()
    }

    /// The last index whose term is at most `term` (at least `start - 1`).
    pub fn last_index_with_term_at_most(&self, term: Term) -> Index {
        let runs = self.runs.partition_point(|&(_, t)| t <= term);
        match self.runs.get(runs) {
            _ if runs == 0 => self.start - 1,
            Some(&(next_first, _)) => next_first - 1,
            None => self.last_index,
        }
    }

    /// The first index in the log whose term is `term` or more (at least `start`).
    pub fn first_index_with_term_at_least(&self, term: Term) -> Index {
        let runs = self.runs.partition_point(|&(_, t)| t < term);
        self.runs
            .get(runs)
            .map_or(self.last_index + 1, |&(first, _)| first)
    }

    /// Panics with context when a structural invariant does not hold.
    pub fn check(&self) {
        if let Some(&(first, term)) = self.runs.front() {
            assert_eq!(
                first, self.start,
                "first run does not start at the log start"
            );
            assert!(term >= self.prev_term, "first term below the predecessor's");
        } else {
            assert_eq!(self.last_index + 1, self.start, "entries without runs");
        }
        let ordered = self
            .runs
            .iter()
            .zip(self.runs.iter().skip(1))
            .all(|(a, b)| a.0 < b.0 && a.1 < b.1);
        assert!(ordered, "runs out of order: {:?}", self.runs);
        assert!(
            self.runs.back().is_none_or(|r| r.0 <= self.last_index),
            "run past the end"
        );
        assert!(
            self.cache_start() >= self.start,
            "cache below the log start"
        );
        if let (Some(first), Some(last)) = (self.cache.front(), self.cache.back()) {
            assert_eq!(
                (first.index, last.index),
                (self.cache_start(), self.last_index),
                "cache not dense"
            );
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

    pub fn entries_with_terms(terms: &[Term]) -> Vec<Entry> {
        terms
            .iter()
            .enumerate()
            .map(|(k, &t)| entry(k as Index + 1, t))
            .collect()
    }

    pub fn log_with_terms(terms: &[Term]) -> Log {
        Log::new(1, 0, entries_with_terms(terms))
    }

    #[test]
    fn empty_log_knows_its_predecessor() {
        let log = Log::new(5, 3, Vec::new());
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.last_term(), 3);
        assert_eq!(log.term_at(4), Some(3));
        assert_eq!(log.term_at(3), None);
        assert_eq!(log.term_at(5), None);
        log.check();
    }

    #[test]
    fn term_searches() {
        let log = log_with_terms(&[1, 1, 2, 2, 2, 4]);
        assert_eq!(log.last_index_with_term_at_most(2), 5);
        assert_eq!(log.last_index_with_term_at_most(3), 5);
        assert_eq!(log.last_index_with_term_at_most(4), 6);
        assert_eq!(log.last_index_with_term_at_most(0), 0);
        assert_eq!(log.first_index_with_term_at_least(2), 3);
        assert_eq!(log.first_index_with_term_at_least(4), 6);
        assert_eq!(log.first_index_with_term_at_least(5), 7);
        assert_eq!(
            (log.term_at(1), log.term_at(3), log.term_at(6)),
            (Some(1), Some(2), Some(4))
        );
    }

    #[test]
    fn truncate_purge_and_reset() {
        let mut log = log_with_terms(&[1, 1, 2, 2, 3]);
        log.truncate_from(4);
        assert_eq!((log.last_index(), log.last_term()), (3, 2));
        log.purge_before(3);
        assert_eq!(
            (log.start(), log.term_at(2), log.last_index()),
            (3, Some(1), 3)
        );
        log.check();
        log.purge_before(4);
        assert_eq!((log.start(), log.last_term(), log.last_index()), (4, 2, 3));
        log.check();
        log.append(entry(4, 5));
        assert_eq!(log.term_at(4), Some(5));
        log.reset(10, 5);
        assert_eq!((log.start(), log.last_index(), log.last_term()), (10, 9, 5));
        log.check();
    }

    #[test]
    fn purge_inside_a_run_keeps_its_term() {
        let mut log = log_with_terms(&[1, 2, 2, 2, 3]);
        log.purge_before(3);
        assert_eq!(
            (log.term_at(2), log.term_at(3), log.term_at(5)),
            (Some(2), Some(2), Some(3))
        );
        assert_eq!(log.first_index_with_term_at_least(2), 3);
        log.check();
    }

    #[test]
    fn evicted_entries_keep_their_terms_but_not_their_bytes() {
        let mut log = log_with_terms(&[1, 1, 2, 3]);
        let before = log.cache_bytes();
        log.evict_through(2);
        assert_eq!(log.cache_start(), 3);
        assert!(log.get(2).is_none() && log.get(3).is_some());
        assert_eq!(log.term_at(1), Some(1));
        assert_eq!(log.cache_bytes(), before - 2 * entry(1, 1).size_bytes());
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
    fn restore_from_runs_and_a_tail_and_truncate_below_the_cache() {
        let full = log_with_terms(&[1, 1, 2, 2, 3]);
        let tail = vec![entry(4, 2), entry(5, 3)];
        let mut log = Log::restore(1, 0, full.runs(), 5, tail);
        assert_eq!(
            (log.cache_start(), log.term_at(2), log.term_at(4)),
            (4, Some(1), Some(2))
        );
        log.evict_to_fit(5, entry(5, 3).size_bytes());
        assert_eq!(log.cache_start(), 5, "evicts only until it fits");
        log.truncate_from(2);
        assert_eq!(
            (log.last_index(), log.last_term(), log.cache_start()),
            (1, 1, 2)
        );
        log.check();
    }

    #[test]
    #[should_panic(expected = "append must be dense")]
    fn append_with_gap_panics() {
        let mut log = log_with_terms(&[1]);
        log.append(entry(3, 1));
    }
}
