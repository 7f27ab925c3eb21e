//! Linearizable reads by read index: the leader notes the index a read must see,
//! confirms it is still the leader with a heartbeat round a majority answers, then
//! tells the runtime to serve the read once that index is committed.

use super::event::{Command, ReadError};
use super::{Engine, PendingRead, Role};

impl Engine {
    pub(super) fn on_read_index(&mut self, request_id: u64) {
        if self.role != Role::Leader {
            let result = Err(ReadError::NotLeader {
                leader: self.leader,
            });
            return self.output.push(Command::ReadResult { request_id, result });
        }
        if self.pending_reads.len() >= self.config.pending_reads_max {
            let result = Err(ReadError::Overloaded);
            return self.output.push(Command::ReadResult { request_id, result });
        }
        // Until its no-op commits, a new leader's commit index may lag writes that
        // earlier leaders acknowledged; its no-op's index covers all of them.
        let index = self.commit_index.max(self.term_start_index);
        let seq = self.broadcast_heartbeat();
        self.pending_reads.push_back(PendingRead {
            request_id,
            seq,
            index,
        });
        self.check_pending_reads();
    }

    /// Answers the reads whose heartbeat round a majority acknowledged and whose
    /// index is committed, in order.
    pub(super) fn check_pending_reads(&mut self) {
        while let Some(&read) = self.pending_reads.front() {
            let membership = self.membership();
            let acks = usize::from(membership.is_voter(self.id))
                + self
                    .peers
                    .iter()
                    .filter(|(id, pr)| {
                        membership.is_voter(*id) && pr.heartbeat_acked_seq >= read.seq
                    })
                    .count();
            if acks < self.quorum() || self.commit_index < read.index {
                break;
            }
            self.pending_reads.pop_front();
            let result = Ok(read.index);
            self.output.push(Command::ReadResult {
                request_id: read.request_id,
                result,
            });
        }
    }

    pub(super) fn fail_pending_reads(&mut self) {
        let leader = self.leader;
        for read in std::mem::take(&mut self.pending_reads) {
            let result = Err(ReadError::NotLeader { leader });
            self.output.push(Command::ReadResult {
                request_id: read.request_id,
                result,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    fn read_ok(request_id: u64, index: Index) -> Command {
        Command::ReadResult {
            request_id,
            result: Ok(index),
        }
    }

    #[test]
    fn read_waits_for_a_heartbeat_round_acknowledged_by_a_majority() {
        let mut e = leader(&[1]);
        e.step(msg(2, 1, 2, success(2)));
        e.take_commands();
        e.step(Event::ReadIndex { request_id: 4 });
        assert_eq!(
            e.take_commands(),
            vec![
                send(1, 2, 2, heartbeat(2, 1), None),
                send(1, 3, 2, heartbeat(0, 1), None),
            ]
        );
        let earlier_round = heartbeat_response(0, 2);
        e.step(msg(3, 1, 2, earlier_round));
        let out = e.take_commands();
        let answered = out.iter().any(|c| matches!(c, Command::ReadResult { .. }));
        assert!(
            !answered,
            "a round from before the read proves nothing: {out:?}"
        );
        e.step(msg(3, 1, 2, heartbeat_response(1, 2)));
        let out = e.take_commands();
        assert_eq!(out.last(), Some(&read_ok(4, 2)), "{out:?}");
    }

    #[test]
    fn new_leader_reads_no_earlier_than_its_noop() {
        let mut e = leader(&[1, 1]);
        e.step(Event::ReadIndex { request_id: 1 });
        e.step(msg(2, 1, 2, heartbeat_response(1, 2)));
        let out = e.take_commands();
        assert!(
            !out.iter().any(|c| matches!(c, Command::ReadResult { .. })),
            "{out:?}"
        );
        e.step(msg(2, 1, 2, success(3)));
        let out = e.take_commands();
        assert_eq!(out.last(), Some(&read_ok(1, 3)), "{out:?}");
    }

    #[test]
    fn reads_fail_on_followers_and_when_leadership_is_lost() {
        let mut f = follower(2, &[1, 2, 3], 1, &[]);
        f.step(Event::ReadIndex { request_id: 1 });
        let not_leader = Err(ReadError::NotLeader { leader: None });
        assert_eq!(
            f.take_commands(),
            vec![Command::ReadResult {
                request_id: 1,
                result: not_leader
            }]
        );
        let mut e = leader(&[1]);
        e.step(Event::ReadIndex { request_id: 2 });
        e.take_commands();
        e.step(msg(3, 1, 3, heartbeat(0, 1)));
        let lost = Err(ReadError::NotLeader { leader: Some(3) });
        let out = e.take_commands();
        assert!(
            out.contains(&Command::ReadResult {
                request_id: 2,
                result: lost
            }),
            "{out:?}"
        );
    }
}
