//! A simulated disk for one member: what is durable, and the storage commands issued
//! but not yet flushed. A crash keeps the durable state plus some prefix of the
//! unflushed commands (a write that reached the platter without its fsync), which is
//! what a log with checksums and torn-tail truncation recovers to.
//!
//! Like the WAL, the disk removes only whole segments (`SEGMENT_ENTRIES` entries,
//! the first starting at index 1): a purge before an index in the middle of one
//! keeps that segment, and a restart finds the log from the segment's first entry
//! (the engine's start was exactly the purge's). The restarted member must then
//! apply its committed trims again once it learns they are committed.

/// Entries per simulated segment.
const SEGMENT_ENTRIES: Index = 8;

use crate::engine::{Command, Entry, HardState, Index, KnownConfig, Recovered, Term};

#[derive(Clone, Debug)]
pub struct Disk {
    hard: HardState,
    start: Index,
    prev_term: Term,
    entries: Vec<Entry>,
    /// Storage commands not yet durable, in order.
    unflushed: Vec<Command>,
    /// Every storage command through this number is durable.
    pub durable_op: u64,
    pub issued_op: u64,
    /// Set when a corruption cut this log: the runtime's abstention marker, which
    /// survives crashes until the member has caught up.
    pub lost_tail_in_term: Option<Term>,
    /// The configurations last saved (`Command::SaveMembership`), durable.
    configs: Vec<KnownConfig>,
}

impl Disk {
    pub fn new() -> Disk {
        Disk {
            hard: HardState::default(),
            start: 1,
            prev_term: 0,
            entries: Vec::new(),
            unflushed: Vec::new(),
            durable_op: 0,
            issued_op: 0,
            lost_tail_in_term: None,
            configs: Vec::new(),
        }
    }

    /// A corruption found at recovery, cut as `truncate_corrupt_tail` does: only
    /// the first `keep` durable entries survive (the hard state is a separate file
    /// and does).
    pub fn lose_tail(&mut self, keep: usize) {
        if keep >= self.entries.len() {
            return;
        }
        self.entries.truncate(keep);
        let term = self
            .lost_tail_in_term
            .map_or(self.hard.term, |t| t.max(self.hard.term));
        self.lost_tail_in_term = Some(term);
    }

    pub fn entries_len(&self) -> usize {
        self.entries.len()
    }

    /// Queues a storage command; returns false for commands that are not storage.
    pub fn submit(&mut self, command: &Command) -> bool {
        let op = match command {
            Command::PersistHardState { op, .. }
            | Command::AppendLog { op, .. }
            | Command::TruncateLog { op, .. }
            | Command::ResetLog { op, .. }
            | Command::PurgeLog { op, .. }
            | Command::SaveMembership { op, .. } => *op,
            _ => return false,
        };
        assert_eq!(
            op,
            self.issued_op + 1,
            "storage ops must be numbered densely"
        );
        self.issued_op = op;
        self.unflushed.push(command.clone());
        true
    }

    /// Makes every queued command durable (one group commit); returns the op reached.
    pub fn flush(&mut self) -> u64 {
        self.keep_prefix(self.unflushed.len());
        self.durable_op
    }

    /// A crash: the first `kept` unflushed commands survive, the rest are lost.
    /// The restarted member numbers its commands from 1 again.
    pub fn crash(&mut self, kept: usize) {
        self.keep_prefix(kept.min(self.unflushed.len()));
        self.unflushed.clear();
        self.durable_op = 0;
        self.issued_op = 0;
    }

    pub fn unflushed_len(&self) -> usize {
        self.unflushed.len()
    }

    fn keep_prefix(&mut self, count: usize) {
        let applied: Vec<Command> = self.unflushed.drain(..count).collect();
        for command in applied {
            self.apply(command);
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::PersistHardState { op, state } => {
                self.hard = state;
                self.durable_op = op;
            }
            Command::AppendLog { op, entries } => {
                for entry in entries {
                    let expected = self.start + self.entries.len() as Index;
                    assert_eq!(entry.index, expected, "disk append must be dense");
                    self.entries.push(entry);
                }
                self.durable_op = op;
            }
            Command::TruncateLog { op, from } => {
                self.entries
                    .truncate(from.saturating_sub(self.start) as usize);
                self.durable_op = op;
            }
            Command::ResetLog {
                op,
                start,
                prev_term,
            } => {
                self.entries.clear();
                self.start = start;
                self.prev_term = prev_term;
                self.durable_op = op;
            }
            Command::PurgeLog { op, before } => {
                let segment_start = before - (before - 1) % SEGMENT_ENTRIES;
                if segment_start > self.start {
                    let count = (segment_start - self.start) as usize;
                    self.prev_term = self.entries[count - 1].term;
                    self.entries.drain(..count);
                    self.start = segment_start;
                }
                self.durable_op = op;
            }
            Command::SaveMembership { op, configs } => {
                self.configs = configs;
                self.durable_op = op;
            }
            other => panic!("not a storage command: {other:?}"),
        }
    }

    /// What a restarting member finds: the whole log, but in memory only a tail of
    /// `tail_len` entries, as a runtime with a bounded cache would give it.
    pub fn recover(&self, tail_len: usize) -> Recovered {
        let mut recovered =
            Recovered::from_entries(self.hard, self.start, self.prev_term, self.entries.clone());
        let keep_from = recovered.tail.len().saturating_sub(tail_len);
        recovered.tail.drain(..keep_from);
        recovered.lost_tail_in_term = self.lost_tail_in_term;
        recovered.configs = self.configs.clone();
        recovered
    }

    /// The index of the committed configuration durably saved, if any was.
    pub fn saved_committed_index(&self) -> Option<Index> {
        self.configs.first().map(|c| c.index)
    }

    /// The first index the durable log holds (a segment's first: it may hold
    /// entries the engine has purged).
    pub fn start(&self) -> Index {
        self.start
    }

    /// A durable entry, as a WAL read returns it.
    pub fn durable_entry(&self, index: Index) -> Option<Entry> {
        let offset = index.checked_sub(self.start)?;
        self.entries.get(offset as usize).cloned()
    }

    /// Durable entries `first..=last`, at most `bytes_max` of them but at least one.
    pub fn read_range(&self, first: Index, last: Index, bytes_max: u64) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        for index in first..=last {
            let entry = self
                .durable_entry(index)
                .unwrap_or_else(|| panic!("entry {index} is not on disk"));
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::log::tests::entry;

    #[test]
    fn crash_keeps_durable_and_a_prefix_of_the_rest() {
        let mut disk = Disk::new();
        disk.submit(&Command::AppendLog {
            op: 1,
            entries: vec![entry(1, 1), entry(2, 1)],
        });
        assert_eq!(disk.flush(), 1);
        disk.submit(&Command::TruncateLog { op: 2, from: 2 });
        disk.submit(&Command::AppendLog {
            op: 3,
            entries: vec![entry(2, 2)],
        });
        disk.crash(1);
        let recovered = disk.recover(10);
        assert_eq!(recovered.tail, vec![entry(1, 1)]);
        assert_eq!(disk.read_range(1, 1, 0), vec![entry(1, 1)]);
        assert_eq!((disk.durable_op, disk.issued_op), (0, 0));
    }

    #[test]
    fn purges_remove_whole_segments_only() {
        let mut disk = Disk::new();
        let entries = (1..=20).map(|i| entry(i, 1)).collect();
        disk.submit(&Command::AppendLog { op: 1, entries });
        disk.submit(&Command::PurgeLog { op: 2, before: 8 });
        disk.flush();
        assert_eq!(disk.start(), 1, "index 8 is in the first segment");
        disk.submit(&Command::PurgeLog { op: 3, before: 12 });
        disk.flush();
        assert_eq!(disk.start(), 9);
        let recovered = disk.recover(0);
        assert_eq!((recovered.log_start, recovered.log_prev_term), (9, 1));
    }
}
