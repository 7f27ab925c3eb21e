//! The leader balancer: leaders spread over the nodes, within one per node, after
//! start-up and after a node returns, by leader transfers.
//!
//! Every node sees every partition's leader (each of its shards is a member of one
//! partition's group and publishes the leader it knows on the health board), so
//! every node can compute the same counts and the same decision. Only one node acts:
//! the one leading the most partitions (the lowest id among equals), and only for
//! the lowest partition it leads; it hands that partition to the node leading the
//! fewest among the followers that are up to date and answering (the lowest id
//! among equals). Each such step narrows the spread by one, so the balancer stops
//! once no node leads two more than another. While any partition has no known
//! leader (an election is under way) nothing moves.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use super::Shard;
use super::handover::HandOver;
use crate::engine::{Event, MembershipChange, NodeId, Role};
use crate::metrics::transfers::TransferReason;

/// How often a leading shard compares the counts.
pub(super) const BALANCE_INTERVAL: Duration = Duration::from_secs(1);

impl Shard {
    /// At most every [`BALANCE_INTERVAL`], on a leader: starts a hand-over if this
    /// partition is the one to move.
    pub(super) fn maybe_balance(&mut self, now: Instant) {
        if !self.handover.leader_balance || self.role != Role::Leader || self.is_handing_over() {
            return;
        }
        if now < self.next_balance {
            return;
        }
        self.next_balance = now + BALANCE_INTERVAL;
        let me = self.engine.id();
        let leaders: Vec<Option<NodeId>> = self
            .health
            .report(me)
            .partitions
            .iter()
            .map(|p| p.leader)
            .collect();
        // Only voters lead; learners and removed nodes are not counted.
        let members: Vec<NodeId> = self.engine.membership().voters().collect();
        let ready = self.ready_followers();
        let Some(to) = pick_target(me, &members, &ready, &leaders, self.id) else {
            return;
        };
        log::info!(
            "shard {}: node {me} leads more partitions than node {to}: handing this one over",
            self.id
        );
        let deadline = now + self.handover.attempt;
        self.hand_over = Some(HandOver::new(TransferReason::Balance, Some(to), deadline));
        // Let the other nodes see the new leader before anyone decides again.
        self.next_balance = deadline + BALANCE_INTERVAL;
    }

    /// On a leader with `raft.auto_promote`, once per tick: a learner that has
    /// caught up is proposed as a voter, one change at a time. The answer needs no
    /// caller: the change shows in the membership, and a refusal (it fell behind
    /// again, another change came first) is retried at the next tick.
    pub(super) fn promotion_event(&mut self) -> Option<Event> {
        if !self.handover.auto_promote || self.role != Role::Leader || self.is_handing_over() {
            return None;
        }
        if self.engine.membership_change_pending() {
            return None;
        }
        let membership = self.engine.membership();
        let learner = membership
            .members()
            .iter()
            .find(|m| !m.voter && self.engine.caught_up(m.id))?
            .id;
        log::info!(
            "shard {}: learner {learner} has caught up; promoting it",
            self.id
        );
        // A fresh id, as every request gets: the answer must not reach a caller
        // waiting under another request's id.
        let request_id = self.next_request();
        Some(Event::ChangeMembership {
            request_id,
            change: MembershipChange::Promote(learner),
        })
    }

    /// Followers a transfer could go to now: answering in this check-quorum round
    /// and holding everything committed. A transfer to another would hold clients
    /// for an election timeout and then fail.
    fn ready_followers(&self) -> Vec<NodeId> {
        let commit = self.engine.commit_index();
        let membership = self.engine.membership();
        let progress = self.engine.replication_progress();
        let ready = progress.iter().filter(|(id, pr)| {
            membership.is_voter(*id) && pr.recent_active && pr.match_index >= commit
        });
        ready.map(|(id, _)| *id).collect()
    }
}

/// The node partition `partition` should move to, if `me` is the node to move one
/// and this is its partition to move (see the module documentation). `leaders[p]`
/// is partition p's leader as this node knows it; `ready` are the nodes that could
/// take it now.
pub(super) fn pick_target(
    me: NodeId,
    members: &[NodeId],
    ready: &[NodeId],
    leaders: &[Option<NodeId>],
    partition: u32,
) -> Option<NodeId> {
    if leaders.iter().any(Option::is_none) {
        return None;
    }
    let led = |n: NodeId| leaders.iter().filter(|l| **l == Some(n)).count();
    let (most, most_led) = members
        .iter()
        .map(|&n| (n, led(n)))
        .min_by_key(|&(n, count)| (Reverse(count), n))?;
    let (fewest, fewest_led) = ready
        .iter()
        .filter(|n| members.contains(n))
        .map(|&n| (n, led(n)))
        .min_by_key(|&(n, count)| (count, n))?;
    if most != me || most_led < fewest_led + 2 {
        return None;
    }
    let first_led = leaders.iter().position(|l| *l == Some(me))?;
    (first_led == partition as usize).then_some(fewest)
}

#[cfg(test)]
mod tests {
    use super::pick_target;

    const MEMBERS: &[u32] = &[1, 2, 3];

    #[test]
    fn the_node_leading_most_moves_its_lowest_partition_to_the_node_leading_fewest() {
        let leaders = [Some(1), Some(1), Some(1), Some(2)];
        assert_eq!(pick_target(1, MEMBERS, &[2, 3], &leaders, 0), Some(3));
        // Its other partitions wait for the next round.
        assert_eq!(pick_target(1, MEMBERS, &[2, 3], &leaders, 1), None);
        // Other nodes do not act.
        assert_eq!(pick_target(2, MEMBERS, &[1, 3], &leaders, 3), None);
    }

    #[test]
    fn a_spread_of_one_is_balanced() {
        assert_eq!(
            pick_target(1, MEMBERS, &[2, 3], &[Some(1), Some(2)], 0),
            None
        );
        let leaders = [Some(1), Some(1), Some(2), Some(3)];
        assert_eq!(pick_target(1, MEMBERS, &[2, 3], &leaders, 0), None);
    }

    #[test]
    fn two_partitions_on_one_node_of_three_move_one() {
        let leaders = [Some(2), Some(2)];
        assert_eq!(pick_target(2, MEMBERS, &[1, 3], &leaders, 0), Some(1));
    }

    #[test]
    fn only_a_ready_follower_is_chosen() {
        // Node 2 is down or behind: the partition goes to node 3, which leads as
        // few, rather than wait for node 2 forever.
        let leaders = [Some(1), Some(1), Some(1)];
        assert_eq!(pick_target(1, MEMBERS, &[3], &leaders, 0), Some(3));
        assert_eq!(pick_target(1, MEMBERS, &[], &leaders, 0), None);
    }

    #[test]
    fn nothing_moves_while_a_partition_has_no_known_leader() {
        let leaders = [Some(1), Some(1), None];
        assert_eq!(pick_target(1, MEMBERS, &[2, 3], &leaders, 0), None);
    }

    #[test]
    fn ties_go_to_the_lowest_node_id() {
        // Nodes 1 and 2 both lead two; node 1 acts, towards node 3.
        let leaders = [Some(2), Some(1), Some(2), Some(1), Some(4)];
        let members = [1, 2, 3, 4];
        assert_eq!(pick_target(1, &members, &[2, 3, 4], &leaders, 1), Some(3));
        assert_eq!(pick_target(2, &members, &[1, 3, 4], &leaders, 0), None);
    }
}
