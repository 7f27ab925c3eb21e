//! Elections: timeouts, pre-vote, votes, and becoming leader.
//!
//! Pre-vote keeps a member that was cut off from bumping everybody's term when it
//! returns: it first asks whether it could win, and only a majority "yes" makes it
//! campaign for real. Members that heard from a leader within the minimum election
//! timeout refuse both (the leader lease), except for a leader transfer.

use super::config::PlantedBug;
use super::progress::Progress;
use super::types::{Campaign, Entry, EntryKind, HardState, Index, MessageBody, NodeId, Term};
use super::{Engine, Role};

impl Engine {
    pub(super) fn tick_election(&mut self) {
        self.election_elapsed_ticks += 1;
        // A learner, or a member a committed configuration no longer names, never
        // campaigns: it could only disturb the voters.
        if self.is_abstaining() || !self.may_campaign() {
            return;
        }
        if self.election_elapsed_ticks >= self.election_timeout_ticks {
            self.start_pre_vote();
        }
    }

    fn start_pre_vote(&mut self) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes = vec![(self.id, true)];
        self.reset_election_timer();
        if self.won(&self.votes) {
            return self.start_election(Campaign::Election);
        }
        let body = MessageBody::PreVote {
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
        };
        for peer in self.other_voters() {
            self.send_with_term(peer, self.hard.term + 1, body.clone(), 0);
        }
    }

    /// Campaigns in the next term: persists the term and the vote for itself, and asks
    /// for votes once they are on disk.
    pub(super) fn start_election(&mut self, campaign: Campaign) {
        self.hard = HardState {
            term: self.hard.term + 1,
            voted_for: Some(self.id),
        };
        self.persist_hard_state();
        self.role = Role::Candidate;
        self.leader = None;
        self.votes = vec![(self.id, true)];
        self.transfer = None;
        self.peers.clear();
        self.fail_pending_reads();
        self.reset_election_timer();
        if self.won(&self.votes) {
            return self.become_leader();
        }
        let body = MessageBody::RequestVote {
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            campaign,
        };
        for peer in self.other_voters() {
            self.send(peer, body.clone());
        }
    }

    pub(super) fn on_pre_vote(
        &mut self,
        from: NodeId,
        term: Term,
        last_index: Index,
        last_term: Term,
    ) {
        if self.in_leader_lease() {
            return;
        }
        let granted = term > self.hard.term
            && self.log_is_behind(last_index, last_term)
            && !self.is_abstaining();
        let reply_term = if granted { term } else { self.hard.term };
        self.send_with_term(
            from,
            reply_term,
            MessageBody::PreVoteResponse { granted },
            0,
        );
    }

    pub(super) fn on_pre_vote_response(&mut self, from: NodeId, term: Term, granted: bool) {
        let expected_term = if granted {
            self.hard.term + 1
        } else {
            self.hard.term
        };
        if self.role != Role::PreCandidate || term != expected_term {
            return;
        }
        match self.record_vote(from, granted) {
            Some(true) => self.start_election(Campaign::Election),
            Some(false) => self.become_follower(self.hard.term, None),
            None => {}
        }
    }

    pub(super) fn on_request_vote(&mut self, from: NodeId, last_index: Index, last_term: Term) {
        let can_vote = match self.hard.voted_for {
            Some(voted) => voted == from,
            None => self.leader.is_none(),
        };
        let log_ok = self.log_is_behind(last_index, last_term)
            || self.planted(PlantedBug::VoteForShorterLog);
        let granted = can_vote && log_ok && !self.is_abstaining();
        if granted && self.hard.voted_for.is_none() {
            self.hard.voted_for = Some(from);
            self.persist_hard_state();
            self.reset_election_timer();
        }
        self.send(from, MessageBody::RequestVoteResponse { granted });
    }

    pub(super) fn on_vote_response(&mut self, from: NodeId, granted: bool) {
        if self.role != Role::Candidate {
            return;
        }
        match self.record_vote(from, granted) {
            Some(true) => self.become_leader(),
            Some(false) => self.become_follower(self.hard.term, None),
            None => {}
        }
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as up to date
    /// as this one (Raft §5.4.1).
    pub fn log_is_behind(&self, last_index: Index, last_term: Term) -> bool {
        let (my_index, my_term) = (self.log.last_index(), self.log.last_term());
        let up_to_date = last_term > my_term || (last_term == my_term && last_index >= my_index);
        up_to_date || self.planted(PlantedBug::VoteForShorterLog)
    }

    /// Records one answer; `Some(true)` once a quorum said yes, `Some(false)` once a
    /// quorum said no.
    fn record_vote(&mut self, from: NodeId, granted: bool) -> Option<bool> {
        if !self.votes.iter().any(|&(voter, _)| voter == from) {
            self.votes.push((from, granted));
        }
        if self.won(&self.votes) {
            Some(true)
        } else if self.counted(&self.votes, false) >= self.quorum() {
            Some(false)
        } else {
            None
        }
    }

    fn won(&self, votes: &[(NodeId, bool)]) -> bool {
        self.counted(votes, true) >= self.quorum()
    }

    /// Answers equal to `granted` from voters in force; anybody else's do not count.
    fn counted(&self, votes: &[(NodeId, bool)], granted: bool) -> usize {
        let membership = self.membership();
        votes
            .iter()
            .filter(|&&(voter, g)| g == granted && membership.is_voter(voter))
            .count()
    }

    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        self.heartbeat_elapsed_ticks = 0;
        self.election_elapsed_ticks = 0;
        let last = self.log.last_index();
        self.peers = self
            .replication_targets()
            .into_iter()
            .map(|peer| (peer, Progress::new(last)))
            .collect();
        // A leader may only count replicas of entries from its own term, so it
        // appends one at once to commit everything before it.
        let noop = Entry {
            term: self.hard.term,
            index: last + 1,
            kind: EntryKind::Noop,
            payload: bytes::Bytes::new(),
        };
        self.term_start_index = noop.index;
        self.append_to_log(vec![noop]);
        self.broadcast_append();
        self.maybe_commit();
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    /// Member 1 of [1, 2, 3] whose log (terms 1, 2) was cut at a corruption in term 2.
    fn abstaining_follower() -> Engine {
        let entries = log::tests::entries_with_terms(&[1, 2]);
        let hard_state = HardState {
            term: 2,
            voted_for: None,
        };
        let mut recovered = Recovered::from_entries(hard_state, 1, 0, entries);
        recovered.lost_tail_in_term = Some(2);
        Engine::new(
            1,
            &Membership::of_voters(&[1, 2, 3]),
            Config::default(),
            42,
            recovered,
        )
        .expect("valid engine")
    }

    /// Reports the log append among the pending commands as on disk.
    fn make_appends_durable(e: &mut Engine) {
        let op = e.take_commands().iter().find_map(|c| match c {
            Command::AppendLog { op, .. } => Some(*op),
            _ => None,
        });
        e.step(Event::Durable {
            op: op.expect("an append is pending"),
        });
    }

    #[test]
    fn a_log_reset_ends_the_abstention_only_once_it_is_on_disk() {
        let mut e = abstaining_follower();
        e.step(Event::Durable { op: 1 });
        e.take_commands();
        // A leader of term 4, elected without it, has removed everything up to 9:
        // the member's log restarts at 10 after an entry of term 4, committed.
        e.step(msg(
            2,
            1,
            4,
            MessageBody::LogStart {
                start_index: 10,
                prev_term: 4,
                leader_commit: 9,
                config: KnownConfig::bootstrap(Membership::of_voters(&[1, 2, 3])),
            },
        ));
        let reset_op = e.take_commands().iter().find_map(|c| match c {
            Command::ResetLog { op, .. } => Some(*op),
            _ => None,
        });
        let reset_op = reset_op.expect("the log is reset");
        // Were it to crash now, it would restart with its cut log and no record
        // of the loss: it must not vote yet.
        assert!(
            e.is_abstaining(),
            "abstention ended before the reset is on disk"
        );
        e.step(Event::Durable { op: reset_op });
        assert!(!e.is_abstaining());
    }

    #[test]
    fn member_that_lost_its_tail_abstains_until_it_holds_a_newer_committed_entry() {
        let mut e = abstaining_follower();
        assert!(e.is_abstaining());
        // It starts in a term of its own, in which it never votes.
        let fresh_term = HardState {
            term: 3,
            voted_for: None,
        };
        assert_eq!(
            e.take_commands(),
            vec![Command::PersistHardState {
                op: 1,
                state: fresh_term
            }]
        );
        e.step(Event::Durable { op: 1 });
        tick_n(&mut e, 100);
        assert_eq!(e.role(), Role::Follower, "no campaign while abstaining");
        assert_eq!(e.take_commands(), vec![]);
        // Candidates with longer logs get neither a pre-vote nor a vote.
        e.step(msg(2, 1, 4, pre_vote(5, 2)));
        assert_eq!(
            e.take_commands(),
            vec![send(
                1,
                2,
                3,
                MessageBody::PreVoteResponse { granted: false },
                None
            )]
        );
        e.step(msg(3, 1, 4, vote_request(5, 2)));
        let out = e.take_commands();
        assert!(
            out.contains(&send(
                1,
                3,
                4,
                MessageBody::RequestVoteResponse { granted: false },
                durable(2)
            )),
            "{out:?}"
        );
        assert_eq!(e.hard_state().voted_for, None);
        // A leader of term 4 (elected without it) commits an entry of term 4 here.
        e.step(msg(2, 1, 4, append_entries(2, 2, &[(3, 4)], 3)));
        assert_eq!(e.commit_index(), 3);
        assert!(e.is_abstaining(), "committed but not yet on this disk");
        make_appends_durable(&mut e);
        assert!(!e.is_abstaining());
        // With the leader gone quiet, it campaigns again.
        tick_until_role(&mut e, Role::PreCandidate);
    }

    #[test]
    fn the_lost_terms_leader_is_told_the_newer_term_and_cannot_end_the_abstention() {
        let mut e = abstaining_follower();
        e.take_commands();
        // Term 2's leader reports commit 4 after the restart. An acknowledgement this
        // member sent before the cut may still raise that leader's commit after this
        // message (seed 43626), so 4 bounds nothing: the member answers with its
        // newer term, which makes that leader step down, and takes no entries.
        e.step(msg(2, 1, 2, append_entries(2, 2, &[(3, 2), (4, 2)], 4)));
        assert_eq!(
            e.take_commands(),
            vec![send(1, 2, 3, heartbeat_response(0, 2), durable(1))]
        );
        assert_eq!((e.commit_index(), e.log().last_index()), (0, 2));
        assert!(e.is_abstaining());
    }

    #[test]
    fn follower_pre_votes_after_its_timeout_without_changing_term() {
        let mut e = follower(1, &[1, 2, 3], 1, &[1]);
        let ticks = tick_until_role(&mut e, Role::PreCandidate);
        assert!((10..20).contains(&ticks), "randomized timeout {ticks}");
        let out = e.take_commands();
        assert_eq!(e.term(), 1);
        assert_eq!(
            out,
            vec![
                send(1, 2, 2, pre_vote(1, 1), None),
                send(1, 3, 2, pre_vote(1, 1), None),
                role_changed(Role::PreCandidate, 1, None),
            ]
        );
    }

    #[test]
    fn pre_vote_majority_starts_election_with_vote_persisted_before_requests() {
        let mut e = follower(1, &[1, 2, 3], 1, &[1]);
        tick_until_role(&mut e, Role::PreCandidate);
        e.take_commands();
        e.step(msg(2, 1, 2, MessageBody::PreVoteResponse { granted: true }));
        let state = HardState {
            term: 2,
            voted_for: Some(1),
        };
        let request = MessageBody::RequestVote {
            last_log_index: 1,
            last_log_term: 1,
            campaign: Campaign::Election,
        };
        let after = Some(Condition::Durable { op: 1 });
        assert_eq!(
            e.take_commands(),
            vec![
                Command::PersistHardState { op: 1, state },
                send(1, 2, 2, request.clone(), after),
                send(1, 3, 2, request, after),
                role_changed(Role::Candidate, 2, None),
            ]
        );
    }

    #[test]
    fn pre_vote_refused_in_leader_lease_and_for_stale_logs() {
        let mut e = follower(2, &[1, 2, 3], 3, &[1, 3]);
        e.step(msg(1, 2, 3, heartbeat(0, 1)));
        e.take_commands();
        e.step(msg(3, 2, 4, pre_vote(2, 3)));
        assert_eq!(e.take_commands(), vec![], "in lease: no answer at all");
        tick_n(&mut e, 10);
        e.take_commands();
        e.step(msg(3, 2, 4, pre_vote(1, 3)));
        assert_eq!(
            e.take_commands(),
            vec![send(
                2,
                3,
                3,
                MessageBody::PreVoteResponse { granted: false },
                None
            )]
        );
        e.step(msg(3, 2, 4, pre_vote(2, 3)));
        assert_eq!(
            e.take_commands(),
            vec![send(
                2,
                3,
                4,
                MessageBody::PreVoteResponse { granted: true },
                None
            )]
        );
        assert_eq!(e.term(), 3, "pre-vote changed no term");
    }

    #[test]
    fn vote_granted_once_per_term_and_only_to_up_to_date_logs() {
        let mut e = follower(2, &[1, 2, 3], 1, &[1, 1]);
        e.step(msg(3, 2, 2, vote_request(1, 1)));
        let persisted_term = Command::PersistHardState {
            op: 1,
            state: HardState {
                term: 2,
                voted_for: None,
            },
        };
        assert_eq!(
            e.take_commands(),
            vec![
                persisted_term,
                send(
                    2,
                    3,
                    2,
                    MessageBody::RequestVoteResponse { granted: false },
                    durable(1)
                ),
                role_changed(Role::Follower, 2, None),
            ]
        );
        e.step(msg(1, 2, 2, vote_request(2, 1)));
        let voted = HardState {
            term: 2,
            voted_for: Some(1),
        };
        assert_eq!(
            e.take_commands(),
            vec![
                Command::PersistHardState {
                    op: 2,
                    state: voted
                },
                send(
                    2,
                    1,
                    2,
                    MessageBody::RequestVoteResponse { granted: true },
                    durable(2)
                ),
            ]
        );
        e.step(msg(3, 2, 2, vote_request(5, 1)));
        assert_eq!(
            e.take_commands(),
            vec![send(
                2,
                3,
                2,
                MessageBody::RequestVoteResponse { granted: false },
                durable(2)
            )]
        );
    }

    #[test]
    fn election_vote_ignored_in_lease_but_transfer_vote_is_not() {
        let mut e = follower(2, &[1, 2, 3], 3, &[1]);
        e.step(msg(1, 2, 3, heartbeat(0, 1)));
        e.take_commands();
        e.step(msg(3, 2, 4, vote_request(1, 1)));
        assert_eq!(e.take_commands(), vec![]);
        assert_eq!(e.term(), 3);
        let transfer = MessageBody::RequestVote {
            last_log_index: 1,
            last_log_term: 1,
            campaign: Campaign::Transfer,
        };
        e.step(msg(3, 2, 4, transfer));
        assert_eq!(e.term(), 4);
        assert_eq!(e.hard_state().voted_for, Some(3));
    }

    #[test]
    fn candidate_wins_and_appends_noop_replicated_at_once() {
        let mut e = candidate_in_term_2();
        e.step(msg(
            2,
            1,
            2,
            MessageBody::RequestVoteResponse { granted: true },
        ));
        let noop = Entry {
            term: 2,
            index: 2,
            kind: EntryKind::Noop,
            payload: Bytes::new(),
        };
        let append = MessageBody::AppendEntries {
            prev_log_index: 1,
            prev_log_term: 1,
            entries: vec![noop.clone()],
            leader_commit: 0,
        };
        assert_eq!(
            e.take_commands(),
            vec![
                Command::AppendLog {
                    op: 2,
                    entries: vec![noop]
                },
                send(1, 2, 2, append.clone(), None),
                send(1, 3, 2, append, None),
                role_changed(Role::Leader, 2, Some(1)),
            ]
        );
    }

    #[test]
    fn candidate_steps_down_on_majority_rejection_or_higher_term() {
        let mut e = candidate_in_term_2();
        e.step(msg(
            2,
            1,
            2,
            MessageBody::RequestVoteResponse { granted: false },
        ));
        assert_eq!(e.role(), Role::Candidate);
        e.step(msg(
            3,
            1,
            2,
            MessageBody::RequestVoteResponse { granted: false },
        ));
        assert_eq!((e.role(), e.term()), (Role::Follower, 2));
        let mut e = candidate_in_term_2();
        e.step(msg(3, 1, 5, heartbeat(0, 1)));
        assert_eq!(
            (e.role(), e.term(), e.leader()),
            (Role::Follower, 5, Some(3))
        );
    }

    #[test]
    fn single_member_elects_itself() {
        let mut e = follower(1, &[1], 0, &[]);
        tick_until_role(&mut e, Role::Leader);
        assert_eq!(e.term(), 1);
    }

    fn candidate_in_term_2() -> Engine {
        let mut e = follower(1, &[1, 2, 3], 1, &[1]);
        tick_until_role(&mut e, Role::PreCandidate);
        e.step(msg(2, 1, 2, MessageBody::PreVoteResponse { granted: true }));
        e.step(Event::Durable { op: 1 });
        e.take_commands();
        e
    }
}
