//! The commit index, and the answers it releases.
//!
//! The leader commits the highest index on disk on a majority (its own flushed index
//! counts, not its appended one), and only when that entry is from its own term:
//! counting replicas of an older term's entry is unsafe (Raft §5.4.2, figure 8).

use super::config::PlantedBug;
use super::event::{AppendError, AppendOk, Command};
use super::types::Index;
use super::{Engine, PendingAppend, Role};

impl Engine {
    pub(super) fn maybe_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        // Only voters count; a leader being removed does not count itself.
        let membership = self.membership();
        let mut matched: Vec<Index> = self
            .peers
            .iter()
            .filter(|(id, _)| membership.is_voter(*id))
            .map(|(_, pr)| pr.match_index)
            .collect();
        if membership.is_voter(self.id) {
            matched.push(self.flushed_index);
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&quorum_index) = matched.get(self.quorum() - 1) else {
            return;
        };
        if quorum_index <= self.commit_index {
            return;
        }
        if self.log.term_at(quorum_index) != Some(self.hard.term)
            && !self.planted(PlantedBug::CommitPreviousTerm)
        {
            return;
        }
        self.advance_commit(quorum_index);
    }

    /// Raises the commit index to `index` (never lowers it) and answers what waited.
    pub(super) fn advance_commit(&mut self, index: Index) {
        if index <= self.commit_index {
            return;
        }
        assert!(
            index <= self.log.last_index(),
            "member {} would commit {index} beyond its last index {}",
            self.id,
            self.log.last_index()
        );
        self.commit_index = index;
        self.output.push(Command::Commit { index });
        self.maybe_end_abstention();
        self.resolve_pending_appends();
        self.check_pending_reads();
        // After the answers, which read the terms of the entries they name (a trim
        // may remove them); still in this step, so the runtime, which acts on the
        // answers only after it, already finds the records gone.
        self.commit_trims();
        self.commit_configs();
    }

    /// Ends the abstention after a lost tail once this member holds, committed and
    /// on its own disk, an entry of a later term than the loss (see the field's
    /// comment). On disk matters: were it to crash before, it would restart without
    /// that entry.
    pub(super) fn maybe_end_abstention(&mut self) {
        let Some(lost_in) = self.abstain_until_after_term else {
            return;
        };
        // A reset log's start is held only once the reset is on disk: a crash before
        // would bring back the cut log, and with the abstention marker gone the
        // member would vote without the entries it lost.
        if self.durable_op < self.log_reset_op {
            return;
        }
        let held = self.commit_index.min(self.flushed_index);
        if self.log.term_at(held).unwrap_or(0) > lost_in {
            self.abstain_until_after_term = None;
        }
    }

    /// Answers appends whose last entry is now committed. The entry's term tells
    /// whether it is still the one this member appended; a different one means the
    /// batch was replaced, and nobody can tell here whether it survives elsewhere.
    fn resolve_pending_appends(&mut self) {
        while let Some(&p) = self.pending_appends.front() {
            if p.last_index > self.commit_index {
                break;
            }
            let p = self.pending_appends.pop_front().expect("checked above");
            let result = if self.log.term_at(p.last_index) == Some(p.term) {
                Ok(AppendOk {
                    first_index: p.first_index,
                    last_index: p.last_index,
                })
            } else {
                Err(AppendError::Unknown)
            };
            self.finish_append(p, result);
        }
    }

    /// Answers an admitted append and releases what it counted against the budget.
    pub(super) fn finish_append(
        &mut self,
        p: PendingAppend,
        result: Result<AppendOk, AppendError>,
    ) {
        self.uncommitted_bytes -= p.bytes;
        self.reply_append(p.request_id, result);
    }

    pub(super) fn reply_append(&mut self, request_id: u64, result: Result<AppendOk, AppendError>) {
        self.output
            .push(Command::AppendResult { request_id, result });
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    #[test]
    fn never_commits_an_older_term_by_counting_replicas() {
        let mut e = leader(&[1, 1]);
        e.step(msg(2, 1, 2, success(2)));
        let out = e.take_commands();
        assert!(
            !out.iter().any(|c| matches!(c, Command::Commit { .. })),
            "{out:?}"
        );
        e.step(msg(2, 1, 2, success(3)));
        assert_eq!(e.take_commands(), vec![Command::Commit { index: 3 }]);
    }

    #[test]
    fn leader_counts_itself_only_once_its_entries_are_on_disk() {
        let mut e = leader_unflushed(1, &[1]);
        e.step(msg(2, 1, 2, success(2)));
        assert_eq!(
            e.commit_index(),
            0,
            "a majority has it, but not on the leader's disk"
        );
        e.take_commands();
        e.step(Event::Durable { op: 2 });
        assert_eq!(e.take_commands(), vec![Command::Commit { index: 2 }]);
    }

    #[test]
    fn append_is_answered_when_committed() {
        let mut e = leader(&[1]);
        e.step(msg(2, 1, 2, success(2)));
        e.step(client_append(9, &["a", "b"]));
        e.step(Event::Durable { op: 3 });
        e.take_commands();
        e.step(msg(2, 1, 2, success(4)));
        let ok = AppendOk {
            first_index: 3,
            last_index: 4,
        };
        assert_eq!(
            e.take_commands(),
            vec![
                Command::Commit { index: 4 },
                Command::AppendResult {
                    request_id: 9,
                    result: Ok(ok)
                },
            ]
        );
    }

    #[test]
    fn deposed_leader_answers_from_what_it_learns() {
        // Appended, then deposed: the batch is replaced by the new leader's entries.
        let mut e = leader(&[1]);
        e.step(client_append(5, &["x"]));
        e.step(msg(3, 1, 3, append_entries(2, 2, &[(3, 3)], 0)));
        let out = e.take_commands();
        assert!(
            out.contains(&Command::AppendResult {
                request_id: 5,
                result: Err(AppendError::Unknown)
            }),
            "{out:?}"
        );
        // Appended, deposed, and then committed by the new leader: still a success.
        let mut e = leader(&[1]);
        e.step(client_append(6, &["y"]));
        e.step(msg(3, 1, 3, append_entries(3, 2, &[], 3)));
        let ok = AppendOk {
            first_index: 3,
            last_index: 3,
        };
        let out = e.take_commands();
        assert!(
            out.contains(&Command::AppendResult {
                request_id: 6,
                result: Ok(ok)
            }),
            "{out:?}"
        );
    }
}
