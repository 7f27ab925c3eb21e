//! Trims decided through the log: a client asks the leader to remove the records
//! before an index; the leader appends a trim entry like any record, answers once it
//! is committed, and every member removes the records before it once it learns that
//! the entry is committed, through the same purge path as retention (`on_purge`).
//!
//! A member applies a trim only once it is committed: above the commit index a newer
//! leader may still truncate the entry, and the records it names must then stay (no
//! client was told they are gone, and the other members keep them). Once committed,
//! every later leader holds the entry (leader completeness), so every member applies
//! it in the end and all agree on the log start it implies.
//!
//! Invariant: `pending_trims` holds (index, before) of every trim entry of the log
//! above the commit index, ascending, each with `before <= index`.
//! Invariant: `committed_trim_before <= commit_index` (a trim removes records before
//! its own index at most), and the log start has reached it as far as the purge
//! clamp allows: `start >= min(committed_trim_before, min(commit, flushed) + 1)`.
//! The clamp keeps the purge to records on this member's disk; the rest of the trim
//! is applied on the `Durable` that puts them there, never dropped.

use std::collections::VecDeque;

use super::Engine;
use super::config::PlantedBug;
use super::event::AppendError;
use super::log::Log;
use super::types::{ENTRY_OVERHEAD_BYTES, Entry, Index};

/// What a trim entry counts against the uncommitted bytes: its 8-byte payload.
const TRIM_ENTRY_BYTES: u64 = ENTRY_OVERHEAD_BYTES + 8;

/// (index, before) of the trim entries among `entries`.
pub(super) fn trims_in(entries: &[Entry]) -> Vec<(Index, Index)> {
    let trims = entries
        .iter()
        .filter_map(|e| Some((e.index, e.trim_before()?)));
    trims.collect()
}

/// The trims a member restarting with `log` must apply again once it learns they
/// are committed: those still in the log (`recovered` may name older ones, below a
/// start that moved past them). None is committed yet as far as it knows.
pub(super) fn pending_at_start(
    log: &Log,
    recovered: Vec<(Index, Index)>,
) -> VecDeque<(Index, Index)> {
    let pending: VecDeque<(Index, Index)> = recovered
        .into_iter()
        .filter(|&(index, _)| index >= log.start())
        .collect();
    for (k, &(index, before)) in pending.iter().enumerate() {
        let ordered = k == 0 || pending[k - 1].0 < index;
        assert!(
            ordered && before <= index && index <= log.last_index(),
            "recovered trims out of order, past the log end ({}) or trimming past themselves: {pending:?}",
            log.last_index()
        );
    }
    pending
}

impl Engine {
    pub(super) fn on_client_trim(&mut self, request_id: u64, before: Index) {
        if let Err(refusal) = self.admit_trim(before) {
            return self.reply_append(request_id, Err(refusal));
        }
        let index = self.log.last_index() + 1;
        self.propose(request_id, vec![Entry::trim(index, self.hard.term, before)]);
    }

    /// A trim may name any index up to the end of the log (the trim entry itself is
    /// appended right there): one at or below the log start removes nothing, but is
    /// committed and answered all the same.
    fn admit_trim(&self, before: Index) -> Result<(), AppendError> {
        self.admit_role()?;
        let last_index = self.log.last_index();
        if before > last_index + 1 {
            return Err(AppendError::TrimBeyondLog { before, last_index });
        }
        self.admit_bytes(TRIM_ENTRY_BYTES)
    }

    /// Notes trim entries just appended to the log (validation refused any whose
    /// payload is not an index at or below its own).
    pub(super) fn note_trims(&mut self, trims: Vec<(Index, Index)>) {
        for (index, before) in trims {
            self.pending_trims.push_back((index, before));
            if self.planted(PlantedBug::TrimBeforeCommit) {
                self.on_purge(before);
            }
        }
    }

    /// Forgets the trim entries the log lost from `from` on (truncated or reset).
    pub(super) fn forget_trims_from(&mut self, from: Index) {
        while self
            .pending_trims
            .back()
            .is_some_and(|&(index, _)| index >= from)
        {
            self.pending_trims.pop_back();
        }
    }

    /// The commit index advanced: the trims it now covers are decided; apply them.
    pub(super) fn commit_trims(&mut self) {
        while let Some(&(index, before)) = self.pending_trims.front() {
            if index > self.commit_index {
                break;
            }
            self.pending_trims.pop_front();
            self.committed_trim_before = self.committed_trim_before.max(before);
        }
        self.apply_committed_trims();
    }

    /// Removes the records before the committed trims' `before`, as far as what is
    /// committed and on this member's disk allows; called again on every `Durable`
    /// until the start has reached it.
    pub(super) fn apply_committed_trims(&mut self) {
        if self.committed_trim_before > self.log.start() {
            self.on_purge(self.committed_trim_before);
        }
    }

    /// The first index a read may return: the log start, or the `before` of a
    /// committed trim whose records are not yet removed here (they were not yet on
    /// this member's disk). The runtime answers OutOfRange below it.
    pub fn read_start(&self) -> Index {
        self.log.start().max(self.committed_trim_before)
    }

    /// Panics with context when an invariant of trims (see the module) is broken.
    pub(super) fn check_trims(&self) {
        let id = self.id;
        let (start, commit) = (self.log.start(), self.commit_index);
        let mut previous = commit;
        for &(index, before) in &self.pending_trims {
            assert!(
                index > previous && index <= self.log.last_index() && before <= index,
                "member {id}: pending trims out of order, committed or beyond the log: {:?} (commit {commit})",
                self.pending_trims
            );
            if let Some(entry) = self.log.get(index) {
                assert_eq!(
                    entry.trim_before(),
                    Some(before),
                    "member {id}: pending trim at {index} is not that log entry"
                );
            }
            previous = index;
        }
        assert!(
            self.committed_trim_before <= commit,
            "member {id}: a trim before {} committed beyond the commit index {commit}",
            self.committed_trim_before
        );
        let reachable = self
            .committed_trim_before
            .min(commit.min(self.flushed_index) + 1);
        assert!(
            start >= reachable,
            "member {id}: log start {start} short of the committed trim (before {}, reachable {reachable})",
            self.committed_trim_before
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    fn trim_event(request_id: u64, before: Index) -> Event {
        Event::ClientTrim { request_id, before }
    }

    fn answer(request_id: u64, result: Result<AppendOk, AppendError>) -> Command {
        Command::AppendResult { request_id, result }
    }

    fn trim_ok(index: Index) -> Result<AppendOk, AppendError> {
        Ok(AppendOk {
            first_index: index,
            last_index: index,
        })
    }

    /// Member 1 leading term 2 over a log of terms 1, 1, 1 and its no-op at 4,
    /// committed through 4 with member 2; member 3 is being probed.
    fn committed_leader() -> Engine {
        let mut e = leader(&[1, 1, 1]);
        e.step(msg(2, 1, 2, success(4)));
        assert_eq!(e.take_commands(), vec![Command::Commit { index: 4 }]);
        e
    }

    /// `committed_leader` after a trim before 3 committed at 5 with member 2.
    fn trimmed_leader() -> Engine {
        let mut e = committed_leader();
        e.step(trim_event(7, 3));
        e.step(Event::Durable { op: 3 });
        e.step(msg(2, 1, 2, success(5)));
        e.take_commands();
        assert_eq!(e.log().start(), 3);
        e
    }

    #[test]
    fn leader_answers_a_trim_once_committed_and_removes_the_records() {
        let mut e = committed_leader();
        e.step(trim_event(7, 3));
        let trim = Entry::trim(5, 2, 3);
        assert_eq!(
            e.take_commands(),
            vec![
                Command::AppendLog {
                    op: 3,
                    entries: vec![trim.clone()]
                },
                send(1, 2, 2, entries_msg(4, 2, vec![trim], 4), None),
            ]
        );
        e.step(Event::Durable { op: 3 });
        assert_eq!(
            e.take_commands(),
            vec![],
            "on disk here, but not on a majority"
        );
        assert_eq!((e.log().start(), e.read_start()), (1, 1));
        e.step(msg(2, 1, 2, success(5)));
        assert_eq!(
            e.take_commands(),
            vec![
                Command::Commit { index: 5 },
                answer(7, trim_ok(5)),
                Command::PurgeLog { op: 4, before: 3 },
            ]
        );
        assert_eq!((e.log().start(), e.read_start()), (3, 3));
    }

    #[test]
    fn appends_committed_with_a_trim_that_removes_them_are_still_acknowledged() {
        // Two appends and a trim of everything before itself, committed at once:
        // the first append's entry is below the new start's predecessor.
        let mut e = committed_leader();
        e.step(client_append(5, &["a"]));
        e.step(client_append(6, &["b"]));
        e.step(trim_event(7, 7));
        e.step(Event::Durable { op: 5 });
        e.take_commands();
        e.step(msg(2, 1, 2, success(7)));
        assert_eq!(
            e.take_commands(),
            vec![
                Command::Commit { index: 7 },
                answer(5, trim_ok(5)),
                answer(6, trim_ok(6)),
                answer(7, trim_ok(7)),
                Command::PurgeLog { op: 6, before: 7 },
            ]
        );
    }

    #[test]
    fn trims_are_refused_like_appends_and_beyond_the_log() {
        let mut f = follower(2, &[1, 2, 3], 2, &[1]);
        f.step(msg(1, 2, 2, heartbeat(0, 1)));
        f.take_commands();
        f.step(trim_event(1, 1));
        let not_leader = AppendError::NotLeader { leader: Some(1) };
        assert_eq!(f.take_commands(), vec![answer(1, Err(not_leader))]);

        let mut e = committed_leader();
        e.step(trim_event(2, 6));
        let beyond = AppendError::TrimBeyondLog {
            before: 6,
            last_index: 4,
        };
        assert_eq!(e.take_commands(), vec![answer(2, Err(beyond))]);
        e.config.pending_appends_max = 1;
        e.step(trim_event(3, 5));
        assert!(matches!(e.take_commands()[0], Command::AppendLog { .. }));
        e.step(trim_event(4, 5));
        assert_eq!(
            e.take_commands(),
            vec![answer(4, Err(AppendError::Overloaded))]
        );
        e.step(Event::TransferLeadership { to: 2 });
        e.take_commands();
        e.step(trim_event(5, 1));
        let transferring = AppendError::LeaderTransferring;
        assert_eq!(e.take_commands(), vec![answer(5, Err(transferring))]);
    }

    #[test]
    fn a_trim_at_or_below_the_log_start_commits_and_removes_nothing() {
        let mut e = committed_leader();
        e.step(trim_event(8, 1));
        e.step(Event::Durable { op: 3 });
        e.take_commands();
        e.step(msg(2, 1, 2, success(5)));
        assert_eq!(
            e.take_commands(),
            vec![Command::Commit { index: 5 }, answer(8, trim_ok(5))]
        );
        assert_eq!(e.log().start(), 1);
    }

    #[test]
    fn follower_applies_a_trim_once_committed_and_fully_once_on_disk() {
        let mut f = follower(2, &[1, 2, 3], 2, &[1, 1, 1]);
        let entries = vec![record(4, 2), Entry::trim(5, 2, 5)];
        f.step(msg(1, 2, 2, entries_msg(3, 1, entries.clone(), 0)));
        let out = f.take_commands();
        assert_eq!(out[0], Command::AppendLog { op: 1, entries });
        assert!(
            !out.iter().any(|c| matches!(c, Command::PurgeLog { .. })),
            "applied before it is committed: {out:?}"
        );
        // Committed before the entries are on disk: only what is on disk goes now…
        f.step(msg(1, 2, 2, heartbeat(5, 1)));
        assert_eq!(
            f.take_commands(),
            vec![
                Command::Commit { index: 5 },
                Command::PurgeLog { op: 2, before: 4 },
                send(2, 1, 2, heartbeat_response(1, 5), None),
            ]
        );
        assert_eq!((f.log().start(), f.read_start()), (4, 5));
        // …and the rest once they are, not lost to the clamp.
        f.step(Event::Durable { op: 1 });
        assert_eq!(
            f.take_commands(),
            vec![Command::PurgeLog { op: 3, before: 5 }]
        );
        assert_eq!(f.log().start(), 5);
    }

    #[test]
    fn a_truncated_trim_is_never_applied() {
        let mut f = follower(2, &[1, 2, 3], 2, &[1, 1, 1]);
        f.step(msg(
            1,
            2,
            2,
            entries_msg(3, 1, vec![Entry::trim(4, 2, 4)], 0),
        ));
        f.take_commands();
        // Leader 3 of term 3 replaces index 4 and commits it.
        f.step(msg(3, 2, 3, entries_msg(3, 1, vec![record(4, 3)], 4)));
        let out = f.take_commands();
        let new_term = HardState {
            term: 3,
            voted_for: None,
        };
        assert_eq!(
            out[..4],
            [
                Command::PersistHardState {
                    op: 2,
                    state: new_term
                },
                Command::TruncateLog { op: 3, from: 4 },
                Command::AppendLog {
                    op: 4,
                    entries: vec![record(4, 3)]
                },
                Command::Commit { index: 4 },
            ]
        );
        assert!(
            !out.iter().any(|c| matches!(c, Command::PurgeLog { .. })),
            "{out:?}"
        );
        assert_eq!((f.log().start(), f.read_start()), (1, 1));
    }

    #[test]
    fn a_restart_applies_its_trims_again_once_it_learns_they_are_committed() {
        // The WAL kept whole segments: the log restarts at 1 although the trim at 4
        // removed the records before 3 before the crash.
        let mut entries = log::tests::entries_with_terms(&[1, 1, 1]);
        entries.push(Entry::trim(4, 1, 3));
        let hard_state = HardState {
            term: 1,
            voted_for: None,
        };
        let recovered = Recovered::from_entries(hard_state, 1, 0, entries);
        assert_eq!(recovered.trims, vec![(4, 3)]);
        let mut f = Engine::new(
            2,
            &Membership::of_voters(&[1, 2, 3]),
            Config::default(),
            42,
            recovered,
        )
        .unwrap();
        assert_eq!(f.read_start(), 1, "not known to be committed yet");
        f.step(msg(1, 2, 1, heartbeat(3, 1)));
        let out = f.take_commands();
        assert_eq!(out[0], Command::Commit { index: 3 });
        assert_eq!(
            f.log().start(),
            1,
            "the commit index has not reached the trim"
        );
        f.step(msg(1, 2, 1, heartbeat(4, 2)));
        assert_eq!(
            f.take_commands(),
            vec![
                Command::Commit { index: 4 },
                Command::PurgeLog { op: 1, before: 3 },
                send(2, 1, 1, heartbeat_response(2, 4), None),
            ]
        );
    }

    #[test]
    fn malformed_trim_entries_are_refused() {
        let mut f = follower(2, &[1, 2, 3], 2, &[1]);
        let mut short = Entry::trim(2, 2, 1);
        short.payload = Bytes::from_static(b"1234567");
        let past_itself = Entry::trim(2, 2, 3);
        for bad in [short, past_itself] {
            f.step(msg(1, 2, 2, entries_msg(1, 1, vec![bad], 0)));
            let fault = PeerFault::MalformedTrim;
            assert_eq!(
                f.take_commands(),
                vec![Command::RefusePeer { from: 1, fault }]
            );
            assert_eq!(f.log().last_index(), 1);
        }
        f.step(msg(
            1,
            2,
            2,
            entries_msg(1, 1, vec![Entry::trim(2, 2, 2)], 0),
        ));
        assert_eq!(
            f.log().last_index(),
            2,
            "a trim of everything before itself is fine"
        );
        assert_eq!(PeerFault::MalformedTrim.label(), "malformed_trim");
    }

    #[test]
    fn follower_behind_a_start_moved_by_a_trim_resets_to_exactly_it() {
        // The trim's `before` (3) is no segment boundary: the engine's start is
        // exactly there whatever the WAL keeps, and LogStart names it.
        let mut e = trimmed_leader();
        // Member 3 restarted with an empty log: its answer to the election's probe.
        let mut f = reset_empty_follower_3(&mut e, 3, 5);
        e.step(msg(3, 1, 2, success(2)));
        let rest = vec![record(3, 1), noop(4, 2), Entry::trim(5, 2, 3)];
        let catch_up = entries_msg(2, 1, rest.clone(), 5);
        assert_eq!(
            e.take_commands(),
            vec![send(1, 3, 2, catch_up.clone(), None)]
        );
        f.step(Event::Durable { op: 1 });
        f.step(msg(1, 3, 2, catch_up));
        assert_eq!(
            f.take_commands(),
            vec![
                Command::AppendLog {
                    op: 2,
                    entries: rest
                },
                Command::Commit { index: 5 },
                send(3, 1, 2, success(5), durable(2)),
            ],
            "the trim commits here too, with nothing left to remove"
        );
        assert_eq!((f.log().start(), f.read_start()), (3, 3));
    }

    #[test]
    fn a_follower_behind_but_above_the_start_catches_up_and_trims_itself() {
        let mut e = trimmed_leader();
        // Member 3 holds 1..=2 of term 1: it needs 3, which the leader still has.
        e.step(msg(3, 1, 2, rejection(3, 0, 2)));
        let rest = vec![record(3, 1), noop(4, 2), Entry::trim(5, 2, 3)];
        let catch_up = entries_msg(2, 1, rest.clone(), 5);
        assert_eq!(
            e.take_commands(),
            vec![send(1, 3, 2, catch_up.clone(), None)]
        );
        let mut f = follower(3, &[1, 2, 3], 2, &[1, 1]);
        f.step(msg(1, 3, 2, catch_up));
        let out = f.take_commands();
        assert_eq!(
            out[..4],
            [
                Command::AppendLog {
                    op: 1,
                    entries: rest
                },
                Command::Commit { index: 5 },
                Command::PurgeLog { op: 2, before: 3 },
                send(3, 1, 2, success(5), durable(2)),
            ]
        );
    }
}
