//! Leader transfer: stop taking appends, bring the target up to date, then tell it
//! to campaign at once (TimeoutNow). Abandoned after one election timeout.

use super::types::{Campaign, MessageBody, NodeId};
use super::{Engine, Role, Transfer};

impl Engine {
    pub(super) fn on_transfer_leadership(&mut self, to: NodeId) {
        if self.role != Role::Leader || to == self.id || self.peer_slot(to).is_none() {
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
        let k = self
            .peer_slot(transfer.target)
            .expect("transfer target is a peer");
        if transfer.timeout_now_sent || self.peers[k].1.match_index < self.log.last_index() {
            return;
        }
        self.transfer = Some(Transfer {
            timeout_now_sent: true,
            ..transfer
        });
        self.send(transfer.target, MessageBody::TimeoutNow);
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
        if self.role == Role::Follower && self.leader == Some(from) && !self.is_abstaining() {
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
