//! Every invariant of the engine, checked together after every step in tests and
//! debug builds (and by the simulator in every build).

use super::progress::ReplicationState;
use super::types::NodeId;
use super::{Engine, Role};

impl Engine {
    /// Panics with context when any invariant does not hold.
    pub fn check_invariants(&self) {
        let id = self.id;
        self.log.check();
        let (start, last) = (self.log.start(), self.log.last_index());
        assert!(
            start - 1 <= self.commit_index && self.commit_index <= last,
            "member {id}: commit {} outside [{}, {last}]",
            self.commit_index,
            start - 1
        );
        assert!(
            self.flushed_index <= last,
            "member {id}: flushed {} > last {last}",
            self.flushed_index
        );
        assert!(
            self.durable_op <= self.last_op,
            "member {id}: durable op beyond last op"
        );
        assert!(
            self.hard_state_op <= self.last_op,
            "member {id}: hard state op beyond last op"
        );
        assert!(
            self.unflushed
                .iter()
                .all(|&(op, mark)| op > self.durable_op && op <= self.last_op && mark <= last),
            "member {id}: unflushed marks out of range"
        );
        if let Some(lost_in) = self.abstain_until_after_term {
            assert!(
                self.hard.term > lost_in,
                "member {id}: abstaining after a loss in term {lost_in} while still in term {}",
                self.hard.term
            );
        }
        assert!(
            self.log.last_term() <= self.hard.term,
            "member {id}: log term beyond current term"
        );
        assert!(
            self.log.cache_start() <= self.flushed_index + 1,
            "member {id}: an entry not on disk was dropped from memory"
        );
        self.check_role_state();
        self.check_configs();
        self.check_pending();
        self.check_trims();
    }

    fn check_role_state(&self) {
        let id = self.id;
        match self.role {
            Role::Leader => {
                assert_eq!(
                    self.leader,
                    Some(id),
                    "member {id}: leader without itself as leader"
                );
                assert_eq!(
                    self.hard.voted_for,
                    Some(id),
                    "member {id}: leader did not vote for itself"
                );
                let targets = self.replication_targets();
                let peers: Vec<NodeId> = self.peers.iter().map(|(p, _)| *p).collect();
                assert_eq!(peers, targets, "member {id}: progress per member in force");
                for (peer, pr) in &self.peers {
                    pr.check(
                        self.config.inflight_msgs_max,
                        self.config.inflight_bytes_max,
                    );
                    assert!(
                        pr.match_index <= self.log.last_index(),
                        "member {id}: peer {peer} matched beyond log"
                    );
                    assert!(
                        pr.next_index <= self.log.last_index() + 1,
                        "member {id}: peer {peer} next beyond log"
                    );
                    if pr.state == ReplicationState::Probe {
                        assert_eq!(pr.inflight_msgs(), 0);
                    }
                }
                assert!(self.votes.is_empty(), "member {id}: leader keeps votes");
            }
            Role::Candidate | Role::PreCandidate => {
                assert!(
                    self.leader.is_none(),
                    "member {id}: candidate with a leader"
                );
                assert!(self.peers.is_empty() && self.transfer.is_none());
            }
            Role::Follower => {
                assert!(self.votes.is_empty() && self.peers.is_empty() && self.transfer.is_none());
                assert_ne!(
                    self.leader,
                    Some(id),
                    "member {id}: follower names itself leader"
                );
            }
        }
    }

    fn check_pending(&self) {
        let id = self.id;
        assert!(self.pending_appends.len() <= self.config.pending_appends_max);
        let pending_bytes: u64 = self.pending_appends.iter().map(|p| p.bytes).sum();
        assert_eq!(
            self.uncommitted_bytes, pending_bytes,
            "member {id}: budget out of step"
        );
        let mut previous = 0;
        for p in &self.pending_appends {
            assert!(
                p.first_index > previous
                    && p.first_index <= p.last_index
                    && p.last_index > self.commit_index
                    && p.last_index <= self.log.last_index(),
                "member {id}: pending append out of order, committed or beyond log: {p:?}"
            );
            previous = p.last_index;
        }
        if self.role != Role::Leader {
            assert!(
                self.pending_reads.is_empty(),
                "member {id}: reads pending on a non-leader"
            );
        }
        assert!(self.pending_reads.len() <= self.config.pending_reads_max);
        assert!(
            self.pending_reads
                .iter()
                .zip(self.pending_reads.iter().skip(1))
                .all(|(a, b)| a.seq < b.seq),
            "member {id}: pending reads out of order"
        );
    }

    /// The configurations: the first committed, the others uncommitted and each the
    /// entry at its index; a leader proposes one change at a time.
    fn check_configs(&self) {
        let id = self.id;
        let first = self.configs.first().expect("configs never empty");
        assert!(
            first.committed,
            "member {id}: first configuration not committed: {first:?}"
        );
        for pair in self.configs.windows(2) {
            assert!(
                pair[0].index < pair[1].index,
                "member {id}: configurations out of order"
            );
        }
        for config in &self.configs[1..] {
            assert!(
                !config.committed && config.index > self.commit_index,
                "member {id}: configuration {} committed but not first",
                config.index
            );
            assert_eq!(
                self.log.term_at(config.index),
                Some(config.term),
                "member {id}: configuration {} is not the log's entry there",
                config.index
            );
        }
        // A newly elected leader may hold several configurations it does not know
        // committed (each committed under an earlier leader before the next was
        // made); what it never does is make one while another is uncommitted.
        let own = self.configs.iter().filter(|c| c.term == self.hard.term);
        let own_uncommitted = own.filter(|c| !c.committed).count();
        if self.role == Role::Leader
            && own_uncommitted > 0
            && !self.planted(super::config::PlantedBug::TwoChangesInFlight)
        {
            let uncommitted = self.configs.len() - 1;
            assert!(
                uncommitted == 1,
                "member {id}: leader made a configuration with {uncommitted} uncommitted"
            );
        }
    }
}
