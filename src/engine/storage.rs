//! Changes to the log and what is known to be on disk.
//!
//! Every storage command is numbered (`op`) in emission order, and the runtime
//! reports durability as "everything through op k". The engine remembers, for each
//! op not yet durable, the last index of the current log it will make durable, and
//! lowers those marks when a later op truncates: entries that are gone from the
//! log can never count as flushed.

use super::event::{AppendError, Command};
use super::types::{Entry, Index, Term};
use super::{Engine, Role};

impl Engine {
    pub(super) fn append_to_log(&mut self, entries: Vec<Entry>) {
        // Saved before the entries are appended, so the saved list always holds
        // every configuration the log does.
        self.note_configs(&entries);
        for entry in &entries {
            self.log.append(entry.clone());
        }
        let trims = super::trim::trims_in(&entries);
        let op = self.next_op();
        // Client appends later in the step may join this AppendLog (`open_turn_append_log`).
        self.turn_append_bytes = entries.iter().map(Entry::size_bytes).sum();
        self.output.push(Command::AppendLog { op, entries });
        self.evict_cache();
        self.note_trims(trims);
    }

    /// Makes the last command an AppendLog of this step for `bytes` more (in
    /// `Entry::size_bytes`) to join: the last one when it is an AppendLog of this
    /// step (and so of the newest op, not carried out yet) with room, else a new
    /// empty one. The room is what a follower accepts in one message
    /// (`received_entries_bytes_max`), which the node's configuration keeps within
    /// half the WAL's buffer: an AppendLog that could never fit there would stop
    /// the shard. Push the entries through `last_append_log`, then call
    /// `extend_last_op_to`.
    pub(super) fn open_turn_append_log(&mut self, bytes: u64) {
        let joinable = self.output.len() > self.step_output_start
            && matches!(self.output.last(), Some(Command::AppendLog { op, .. }) if *op == self.last_op)
            && self.turn_append_bytes + bytes <= self.config.received_entries_bytes_max;
        if !joinable {
            let op = self.next_op();
            self.output.push(Command::AppendLog {
                op,
                entries: Vec::new(),
            });
            self.turn_append_bytes = 0;
        }
        self.turn_append_bytes += bytes;
    }

    /// The newest op, an AppendLog that grew, now covers the log through `last`.
    pub(super) fn extend_last_op_to(&mut self, last: Index) {
        let mark = self
            .unflushed
            .back_mut()
            .expect("the newest op is not durable yet");
        debug_assert_eq!(mark.0, self.last_op);
        mark.1 = last;
    }

    /// Keeps the in-memory log within its budget, dropping only entries on disk,
    /// which the leader can have read back from the WAL.
    pub(super) fn evict_cache(&mut self) {
        self.log
            .evict_to_fit(self.flushed_index, self.config.log_cache_bytes_max);
    }

    /// Removes a conflicting suffix (follower only). Appends waiting on removed
    /// entries get `Unknown`: a newer leader replaced them here, but they may live on
    /// elsewhere.
    pub(super) fn truncate_log(&mut self, from: Index) {
        assert!(
            from > self.commit_index,
            "member {} told to truncate committed entries: from {from}, commit {}",
            self.id,
            self.commit_index
        );
        self.log.truncate_from(from);
        self.forget_trims_from(from);
        self.lower_flush_marks(from - 1);
        let op = self.next_op();
        self.output.push(Command::TruncateLog { op, from });
        self.forget_configs_from(from);
        while self
            .pending_appends
            .back()
            .is_some_and(|p| p.last_index >= from)
        {
            let p = self.pending_appends.pop_back().expect("checked above");
            self.finish_append(p, Err(AppendError::Unknown));
        }
    }

    /// Discards the whole log because the leader's starts after it (follower only).
    pub(super) fn reset_log(&mut self, start: Index, prev_term: Term) {
        self.log.reset(start, prev_term);
        self.forget_trims_from(start);
        self.lower_flush_marks(start - 1);
        self.flushed_index = start - 1;
        let op = self.next_op();
        self.log_reset_op = op;
        self.output.push(Command::ResetLog {
            op,
            start,
            prev_term,
        });
        for p in std::mem::take(&mut self.pending_appends) {
            self.finish_append(p, Err(AppendError::Unknown));
        }
    }

    fn lower_flush_marks(&mut self, last: Index) {
        for (_, mark) in &mut self.unflushed {
            *mark = (*mark).min(last);
        }
        self.flushed_index = self.flushed_index.min(last);
    }

    pub(super) fn on_durable(&mut self, op: u64) {
        assert!(
            op <= self.last_op,
            "durable op {op} was never issued (last {})",
            self.last_op
        );
        if op <= self.durable_op {
            return;
        }
        self.durable_op = op;
        while let Some(&(pending, mark)) = self.unflushed.front() {
            if pending > op {
                break;
            }
            self.unflushed.pop_front();
            self.flushed_index = self.flushed_index.max(mark);
        }
        self.maybe_end_abstention();
        // A committed trim held back because its records were not on disk yet.
        self.apply_committed_trims();
        self.evict_cache();
        if self.role == Role::Leader {
            self.maybe_commit();
            self.maybe_send_timeout_now();
        }
    }

    /// Retention, and committed trims (`trim.rs`): drops the log before `before`,
    /// never past what is committed and on this member's disk.
    pub(super) fn on_purge(&mut self, before: Index) {
        let before = before.min(self.commit_index.min(self.flushed_index) + 1);
        if before <= self.log.start() {
            return;
        }
        self.log.purge_before(before);
        let op = self.next_op();
        self.output.push(Command::PurgeLog { op, before });
    }
}

/// The entries of the AppendLog that `open_turn_append_log` left last in `output`.
pub(super) fn last_append_log(output: &mut [Command]) -> &mut Vec<Entry> {
    match output.last_mut() {
        Some(Command::AppendLog { entries, .. }) => entries,
        other => panic!("the last command is not the turn's AppendLog: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    #[test]
    fn truncation_lowers_flush_marks_of_pending_writes() {
        let mut e = follower(2, &[1, 2, 3], 2, &[1, 1]);
        e.step(msg(1, 2, 2, append_entries(2, 1, &[(3, 1), (4, 1)], 0)));
        e.take_commands();
        // A new leader replaces index 3 before the first write is on disk.
        e.step(msg(3, 2, 3, append_entries(2, 1, &[(3, 3)], 0)));
        let out = e.take_commands();
        assert!(
            out.contains(&Command::TruncateLog { op: 3, from: 3 }),
            "{out:?}"
        );
        e.step(Event::Durable { op: 2 });
        assert_eq!(
            e.flushed_index, 2,
            "the durable write's index 3 and 4 are gone"
        );
        e.step(Event::Durable { op: 4 });
        assert_eq!(e.flushed_index, 3);
    }

    #[test]
    fn purge_is_clamped_to_commit() {
        let mut e = follower(2, &[1, 2, 3], 1, &[1, 1, 1]);
        e.step(msg(1, 2, 1, heartbeat(2, 1)));
        e.take_commands();
        e.step(Event::PurgeLog { before: 10 });
        assert_eq!(
            e.take_commands(),
            vec![Command::PurgeLog { op: 1, before: 3 }]
        );
        assert_eq!((e.log().start(), e.log().term_at(2)), (3, Some(1)));
    }
}
