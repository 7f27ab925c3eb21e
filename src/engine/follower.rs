//! Log replication, the follower's side: it accepts the leader of the current term,
//! appends what AppendEntries brings (truncating only a conflicting suffix), answers
//! heartbeats, resets its log when the leader's starts past it, and acknowledges
//! entries only once they are on disk.

use super::config::PlantedBug;
use super::membership::KnownConfig;
use super::types::{AppendResponse, ConflictHint, Entry, Index, MessageBody, NodeId, Term};
use super::{Engine, Role};

impl Engine {
    /// Accepts `from` as the leader of the current term.
    fn accept_leader(&mut self, from: NodeId) {
        assert!(
            self.role != Role::Leader,
            "two leaders in term {}: {} and {from}",
            self.hard.term,
            self.id
        );
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(self.hard.term, Some(from));
        }
        self.election_elapsed_ticks = 0;
    }

    pub(super) fn on_heartbeat(&mut self, from: NodeId, leader_commit: Index, seq: u64) {
        self.accept_leader(from);
        self.advance_commit(leader_commit.min(self.log.last_index()));
        let last_log_index = self.log.last_index();
        self.send(
            from,
            MessageBody::HeartbeatResponse {
                seq,
                last_log_index,
            },
        );
    }

    pub(super) fn on_append_entries(
        &mut self,
        from: NodeId,
        prev_log_index: Index,
        prev_log_term: Term,
        mut entries: Vec<Entry>,
        leader_commit: Index,
    ) {
        self.accept_leader(from);
        let (mut prev, mut prev_term) = (prev_log_index, prev_log_term);
        // Entries before our log start are committed here, hence match the leader's.
        if prev + 1 < self.log.start() {
            entries.retain(|e| e.index >= self.log.start());
            prev = self.log.start() - 1;
            prev_term = self.log.term_at(prev).expect("log knows its predecessor");
        }
        let result = match self.log.term_at(prev) {
            None => reject(prev, 0, self.log.last_index()),
            Some(term) if term != prev_term => {
                let first = self.log.first_index_with_term_at_least(term).min(prev);
                reject(prev, term, first)
            }
            Some(_) => {
                let match_index = prev + entries.len() as Index;
                self.append_new_entries(entries);
                self.advance_commit(leader_commit.min(match_index));
                AppendResponse::Success { match_index }
            }
        };
        // A success speaks for entries on disk: it waits for every write so far.
        let after_op = match result {
            AppendResponse::Success { .. } if !self.planted(PlantedBug::AckBeforeFlush) => {
                self.last_op
            }
            _ => 0,
        };
        let body = MessageBody::AppendEntriesResponse { result };
        self.send_with_term(from, self.hard.term, body, after_op);
    }

    /// Appends the entries the log does not have yet, truncating a conflicting suffix
    /// first. Entries already present are left alone, so a duplicated or reordered
    /// message never truncates anything.
    fn append_new_entries(&mut self, mut entries: Vec<Entry>) {
        let Some(k) = entries
            .iter()
            .position(|e| self.log.term_at(e.index) != Some(e.term))
        else {
            return;
        };
        let first_new = entries[k].index;
        if first_new <= self.log.last_index() {
            self.truncate_log(first_new);
        }
        self.append_to_log(entries.split_off(k));
    }

    pub(super) fn on_log_start(
        &mut self,
        from: NodeId,
        start_index: Index,
        prev_term: Term,
        _leader_commit: Index,
        config: KnownConfig,
    ) {
        self.accept_leader(from);
        let prev = start_index - 1;
        // Entries up to `prev` are committed on the leader; if ours match, keep them.
        let matches = prev <= self.commit_index || self.log.term_at(prev) == Some(prev_term);
        if !matches {
            self.reset_log_with_config(start_index, prev_term, config);
        }
        self.advance_commit(prev);
        let result = AppendResponse::Success { match_index: prev };
        let body = MessageBody::AppendEntriesResponse { result };
        self.send_with_term(from, self.hard.term, body, self.last_op);
    }
}

fn reject(rejected_prev_index: Index, conflict_term: Term, index: Index) -> AppendResponse {
    AppendResponse::Reject {
        rejected_prev_index,
        hint: ConflictHint {
            index,
            conflict_term,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    #[test]
    fn follower_appends_commits_and_acks_only_after_flush() {
        let mut e = follower(2, &[1, 2, 3], 2, &[1]);
        e.step(msg(1, 2, 2, append_entries(1, 1, &[(2, 2)], 1)));
        assert_eq!(
            e.take_commands(),
            vec![
                Command::AppendLog {
                    op: 1,
                    entries: vec![record(2, 2)]
                },
                Command::Commit { index: 1 },
                send(2, 1, 2, success(2), durable(1)),
                role_changed(Role::Follower, 2, Some(1)),
            ]
        );
    }

    #[test]
    fn follower_truncates_only_a_conflicting_suffix() {
        let mut e = follower(2, &[1, 2, 3], 2, &[1, 1, 1]);
        e.step(msg(1, 2, 2, append_entries(1, 1, &[(2, 1), (3, 2)], 0)));
        let out = e.take_commands();
        assert_eq!(
            out[..3],
            [
                Command::TruncateLog { op: 1, from: 3 },
                Command::AppendLog {
                    op: 2,
                    entries: vec![record(3, 2)]
                },
                send(2, 1, 2, success(3), durable(2)),
            ]
        );
        // A late duplicate of an older message truncates nothing.
        e.step(msg(1, 2, 2, append_entries(1, 1, &[(2, 1)], 0)));
        assert_eq!(
            e.take_commands(),
            vec![send(2, 1, 2, success(2), durable(2))]
        );
        assert_eq!(e.log().last_index(), 3);
    }

    #[test]
    fn follower_rejects_with_conflict_hints() {
        let mut e = follower(2, &[1, 2, 3], 3, &[1, 1, 2, 2]);
        e.step(msg(1, 2, 3, append_entries(6, 3, &[], 0)));
        let out = e.take_commands();
        assert_eq!(out[0], send(2, 1, 3, rejection(6, 0, 4), None));
        e.step(msg(1, 2, 3, append_entries(4, 3, &[], 0)));
        assert_eq!(
            e.take_commands(),
            vec![send(2, 1, 3, rejection(4, 2, 3), None)]
        );
    }

    #[test]
    fn stale_leader_is_told_the_current_term() {
        let mut e = follower(2, &[1, 2, 3], 5, &[1]);
        e.step(msg(1, 2, 3, append_entries(1, 1, &[(2, 3)], 0)));
        let reply = heartbeat_response(0, 1);
        assert_eq!(e.take_commands(), vec![send(2, 1, 5, reply.clone(), None)]);
        let mut old_leader = leader(&[1]);
        old_leader.step(msg(2, 1, 5, reply));
        assert_eq!((old_leader.role(), old_leader.term()), (Role::Follower, 5));
    }
}
