//! Leader transfer: stop taking appends, bring the target up to date, let every
//! append already taken commit, then tell the target to campaign at once
//! (TimeoutNow). Abandoned after one election timeout.
//!
//! Waiting for the commit costs at most the round already under way, and it means
//! every client whose append was taken hears its outcome from this leader: an
//! append still uncommitted when leadership moves is answered Unknown, which its
//! client cannot tell from a loss.

use super::types::{Campaign, MessageBody, NodeId};
use super::{Engine, Role, Transfer};

impl Engine {
    pub(super) fn on_transfer_leadership(&mut self, to: NodeId) {
        let voter = self.membership().is_voter(to);
        if self.role != Role::Leader || to == self.id || self.peer_slot(to).is_none() || !voter {
            return;
        }
        self.transfer = Some(Transfer {
            target: to,
            elapsed_ticks: 0,
            timeout_now_sent: false,
        });
        self.maybe_send_timeout_now();
        while self.send_append(to) {}
    }

    pub(super) fn maybe_send_timeout_now(&mut self) {
        let Some(transfer) = self.transfer else {
            return;
        };
        // A membership change may have removed the target since.
        let Some(k) = self.peer_slot(transfer.target) else {
            self.transfer = None;
            return;
        };
        let last_index = self.log.last_index();
        if transfer.timeout_now_sent
            || self.peers[k].1.match_index < last_index
            || self.commit_index < last_index
        {
            return;
        }
        self.transfer = Some(Transfer {
            timeout_now_sent: true,
            ..transfer
        });
        self.send(transfer.target, MessageBody::TimeoutNow);
    }

    /// The member a transfer would best go to: the peer whose log matches furthest
    /// (the lowest id among equals) among those heard from in this check-quorum
    /// round, so that a member that is down or cut off is not chosen. None on a
    /// member that is not the leader or has no peer to hand over to.
    pub fn transfer_candidate(&self) -> Option<NodeId> {
        if self.role != Role::Leader {
            return None;
        }
        let membership = self.membership();
        let live = self
            .peers
            .iter()
            .filter(|(id, pr)| pr.recent_active && membership.is_voter(*id));
        live.max_by_key(|(id, pr)| (pr.match_index, std::cmp::Reverse(*id)))
            .map(|(id, _)| *id)
    }

    /// The member leadership is being handed to, while a transfer is under way.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.map(|t| t.target)
    }

    pub(super) fn tick_transfer(&mut self) {
        let Some(transfer) = &mut self.transfer else {
            return;
        };
        transfer.elapsed_ticks += 1;
        if transfer.elapsed_ticks >= self.config.election_timeout_min_ticks {
            self.transfer = None;
        }
    }

    pub(super) fn on_timeout_now(&mut self, from: NodeId) {
        if self.role == Role::Follower
            && self.leader == Some(from)
            && !self.is_abstaining()
            && self.is_voter()
        {
            self.start_election(Campaign::Transfer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    #[test]
    fn transfer_catches_the_target_up_then_sends_timeout_now() {
        let mut e = leader(&[1]);
        e.step(Event::TransferLeadership { to: 2 });
        e.take_commands();
        e.step(client_append(1, &["a"]));
        let refused = Command::AppendResult {
            request_id: 1,
            result: Err(AppendError::LeaderTransferring),
        };
        assert_eq!(e.take_commands(), vec![refused]);
        e.step(msg(2, 1, 2, success(2)));
        let out = e.take_commands();
        assert!(
            out.contains(&send(1, 2, 2, MessageBody::TimeoutNow, None)),
            "{out:?}"
        );
    }

    #[test]
    fn timeout_now_waits_until_every_taken_append_is_committed() {
        let mut e = leader(&[1]);
        e.step(client_append(1, &["a"]));
        e.take_commands();
        e.step(Event::TransferLeadership { to: 2 });
        // Node 2 holds entry 3, but the leader's own copy is not on disk, so entry
        // 3 is not committed yet: its client would hear Unknown if leadership
        // moved now.
        e.step(msg(2, 1, 2, success(3)));
        let out = e.take_commands();
        assert!(
            !out.iter().any(
                |c| matches!(c, Command::Send { msg, .. } if msg.body == MessageBody::TimeoutNow)
            ),
            "{out:?}"
        );
        e.step(Event::Durable { op: 3 });
        let out = e.take_commands();
        let answered = Command::AppendResult {
            request_id: 1,
            result: Ok(AppendOk {
                first_index: 3,
                last_index: 3,
            }),
        };
        let timeout_now = send(1, 2, 2, MessageBody::TimeoutNow, None);
        let position = |c: &Command| out.iter().position(|o| o == c);
        assert!(
            position(&answered) < position(&timeout_now) && position(&timeout_now).is_some(),
            "the append is answered, then leadership moves: {out:?}"
        );
    }

    #[test]
    fn the_candidate_is_the_answering_follower_that_matches_furthest() {
        let mut e = leader(&[1]);
        assert_eq!(e.transfer_candidate(), Some(2), "equals: the lowest id");
        e.step(msg(3, 1, 2, success(2)));
        assert_eq!(e.transfer_candidate(), Some(3));
        assert_eq!(e.transfer_target(), None);
        e.step(Event::TransferLeadership { to: 3 });
        assert_eq!(e.transfer_target(), Some(3));
        let f = follower(2, &[1, 2, 3], 2, &[1]);
        assert_eq!(f.transfer_candidate(), None, "only a leader hands over");
    }

    #[test]
    fn transfer_is_abandoned_after_an_election_timeout() {
        let mut e = leader(&[1]);
        e.step(Event::TransferLeadership { to: 2 });
        e.step(msg(2, 1, 2, heartbeat_response(0, 1)));
        e.step(msg(3, 1, 2, heartbeat_response(0, 1)));
        tick_n(&mut e, 10);
        e.take_commands();
        e.step(client_append(1, &["a"]));
        assert!(matches!(e.take_commands()[0], Command::AppendLog { .. }));
    }

    #[test]
    fn timeout_now_starts_an_election_that_bypasses_the_lease() {
        let mut f = follower(2, &[1, 2, 3], 2, &[1]);
        f.step(msg(1, 2, 2, heartbeat(0, 1)));
        f.take_commands();
        f.step(msg(1, 2, 2, MessageBody::TimeoutNow));
        let request = MessageBody::RequestVote {
            last_log_index: 1,
            last_log_term: 1,
            campaign: Campaign::Transfer,
        };
        let out = f.take_commands();
        assert!(out.contains(&send(2, 3, 3, request, durable(1))), "{out:?}");
        assert_eq!((f.role(), f.term()), (Role::Candidate, 3));
    }
}
