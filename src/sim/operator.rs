//! The operator of the simulation: during the faults, at random times, it asks the
//! member that believes it leads for one membership change: add a spare as a
//! learner, promote a learner that has caught up, remove a member (the leader
//! itself now and then), or replace a voter (add, promote, remove, one after the
//! other). Now and then it asks for a second change right after the first, which a
//! correct leader refuses while the first is not committed.
//!
//! A removed member is kept running, stopped, or stopped and wiped once its removal
//! is seen committed, as decided when its removal was asked. Ids stay unique: a
//! removed member is added again only after a wipe, as a learner, and only once
//! every member that may restart has durably committed a configuration that no
//! longer names it. Earlier configurations still count its vote, and a wiped member
//! votes for anybody: a stale member holding one could be elected with its help.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::engine::{
    AppendError, AppendOk, ChangeRefusal, EntryKind, Event, Member, Membership, MembershipChange,
    NodeId,
};

use super::disk::Disk;
use super::{Check, Sim};

/// Ticks between a wipe and the member's return, so that no message of its
/// former life is still in flight (delays are at most 6 ticks).
const WIPE_QUARANTINE_TICKS: u64 = 20;

/// What becomes of a member once its removal is seen committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterRemoval {
    /// It keeps running, outside the group, perhaps never told.
    KeepRunning,
    Stop,
    /// Stopped and its disk wiped: it may be added again, as a new learner.
    Wipe,
}

/// What the operator's changes came to, summed over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    pub asked: u64,
    pub committed: u64,
    /// Refused because another change was not committed yet.
    pub refused_in_progress: u64,
    pub refused_other: u64,
    /// Outcome unknown: the leader lost its leadership or crashed.
    pub unknown: u64,
    /// Committed removals of the leader that was asked.
    pub leader_removals: u64,
    pub stopped: u64,
    pub wiped: u64,
    /// Wiped members added again.
    pub readded: u64,
}

impl std::ops::AddAssign for ChangeCounts {
    fn add_assign(&mut self, other: ChangeCounts) {
        self.asked += other.asked;
        self.committed += other.committed;
        self.refused_in_progress += other.refused_in_progress;
        self.refused_other += other.refused_other;
        self.unknown += other.unknown;
        self.leader_removals += other.leader_removals;
        self.stopped += other.stopped;
        self.wiped += other.wiped;
        self.readded += other.readded;
    }
}

#[derive(Default)]
pub struct Operator {
    /// Changes asked and not answered: request id -> (member asked, change).
    pending: BTreeMap<u64, (usize, MembershipChange)>,
    /// The rest of a replacement, asked one by one as each commits.
    plan: VecDeque<MembershipChange>,
    /// The replacement step waiting for its answer.
    plan_step: Option<u64>,
    /// Members whose removal was acknowledged or may still commit (its answer
    /// was lost): what was decided for them after removal stands.
    removals_unsettled: BTreeSet<NodeId>,
    pub counts: ChangeCounts,
}

impl Operator {
    /// Whether `request_id` is one of the operator's.
    pub fn asked(&self, request_id: u64) -> bool {
        self.pending.contains_key(&request_id)
    }

    /// Member `k` crashed or stopped: the changes asked of it have no answer.
    pub fn forget_requests_to(&mut self, k: usize) {
        let before = self.pending.len();
        let unsettled = &mut self.removals_unsettled;
        self.pending.retain(|_, (asked, change)| {
            let forgotten = *asked == k;
            if let (true, MembershipChange::Remove(id)) = (forgotten, change) {
                unsettled.insert(*id);
            }
            !forgotten
        });
        self.counts.unknown += (before - self.pending.len()) as u64;
        if self
            .plan_step
            .is_some_and(|r| !self.pending.contains_key(&r))
        {
            self.plan.clear();
            self.plan_step = None;
        }
    }
}

fn learner(id: NodeId) -> Member {
    Member {
        id,
        voter: false,
        // Empty addresses keep seven members within the simulated payload limit.
        peer_address: String::new(),
        client_address: String::new(),
    }
}

impl Sim {
    /// One tick of the operator: retire members whose removal committed, and now
    /// and then ask the leader for a change (or the next step of a replacement).
    pub(super) fn operate(&mut self) -> Check {
        self.retire_removed();
        if !self.rng.chance(1, 8) {
            return Ok(());
        }
        let Some(l) = self.leader_index() else {
            return Ok(());
        };
        if !self.operator.plan.is_empty() {
            return self.continue_plan(l);
        }
        let Some(change) = self.choose_change(l) else {
            return Ok(());
        };
        self.ask(l, change)?;
        // Back to back: a correct leader refuses the second while the first is
        // not committed.
        if self.rng.chance(1, 3)
            && self.nodes[l].engine.is_some()
            && let Some(second) = self.choose_change(l)
        {
            self.ask(l, second)?;
        }
        Ok(())
    }

    /// A change the membership at leader `l` allows, if the draw finds one.
    fn choose_change(&mut self, l: usize) -> Option<MembershipChange> {
        let leader = self.nodes[l].engine.as_ref()?;
        let membership = leader.membership().clone();
        let leader_id = leader.id();
        let voters = membership.voter_count();
        match self.rng.range(0, 100) {
            0..=29 => self.addable(&membership).map(MembershipChange::AddLearner),
            30..=54 => {
                let learners = self.caught_up_learners(l);
                self.pick(&learners).map(MembershipChange::Promote)
            }
            55..=79 => {
                // Three voters at least remain: with two, one whose disk lost its
                // tail abstains and the group is stuck until an operator steps in.
                let removable: Vec<NodeId> = membership
                    .members()
                    .iter()
                    .filter(|m| m.id != leader_id && (!m.voter || voters > 3))
                    .map(|m| m.id)
                    .collect();
                self.pick(&removable).map(MembershipChange::Remove)
            }
            80..=87 => (voters > 3).then_some(MembershipChange::Remove(leader_id)),
            _ => {
                let voter_ids: Vec<NodeId> = membership.voters().collect();
                let removed = self.pick(&voter_ids)?;
                let added = self.addable(&membership)?;
                self.operator.plan = VecDeque::from([
                    MembershipChange::Promote(added.id),
                    MembershipChange::Remove(removed),
                ]);
                Some(MembershipChange::AddLearner(added))
            }
        }
    }

    fn pick(&mut self, ids: &[NodeId]) -> Option<NodeId> {
        (!ids.is_empty()).then(|| ids[self.rng.range(0, ids.len() as u64) as usize])
    }

    /// A member that may be added: never removed, or wiped since and safe to
    /// reuse (see the module's comment).
    fn addable(&mut self, membership: &Membership) -> Option<Member> {
        let ids: Vec<NodeId> = (0..self.nodes.len())
            .filter(|&k| {
                let node = &self.nodes[k];
                let id = k as NodeId + 1;
                let fresh = node.after_removal.is_none() && !node.retired;
                let wiped = node
                    .wiped_at
                    .is_some_and(|at| self.now >= at + WIPE_QUARANTINE_TICKS);
                !membership.contains(id) && (fresh || (wiped && self.safe_to_reuse(k)))
            })
            .map(|k| k as NodeId + 1)
            .collect();
        self.pick(&ids).map(learner)
    }

    /// Whether every member that may run again has durably committed the latest
    /// configuration seen committed (which does not name wiped member `k`), or
    /// never knew any.
    fn safe_to_reuse(&self, k: usize) -> bool {
        let (latest, _) = self.checker.latest_committed_config();
        self.nodes.iter().enumerate().all(|(m, node)| {
            let knows_nobody = node.bootstrap == Membership::default();
            m == k
                || node.retired
                || match node.disk.saved_committed_index() {
                    Some(index) => index >= latest,
                    None => knows_nobody,
                }
        })
    }

    /// Learners of leader `l` whose log reaches its commit index.
    fn caught_up_learners(&self, l: usize) -> Vec<NodeId> {
        let leader = self.nodes[l].engine.as_ref().expect("live leader");
        let membership = leader.membership();
        let progress = leader.replication_progress();
        let caught_up = progress
            .iter()
            .filter(|(id, pr)| {
                membership.contains(*id)
                    && !membership.is_voter(*id)
                    && pr.match_index >= leader.commit_index()
            })
            .map(|(id, _)| *id);
        caught_up.collect()
    }

    /// Asks the next step of a replacement once the previous one committed; gives
    /// the replacement up when its step no longer fits the leader's membership.
    fn continue_plan(&mut self, l: usize) -> Check {
        if self.operator.plan_step.is_some() {
            return Ok(());
        }
        let Some(change) = self.operator.plan.front().cloned() else {
            return Ok(());
        };
        let membership = self.nodes[l].engine.as_ref().expect("live").membership();
        let ready = match &change {
            MembershipChange::Promote(id) => {
                if !membership.contains(*id) || membership.is_voter(*id) {
                    self.operator.plan.clear();
                    return Ok(());
                }
                self.caught_up_learners(l).contains(id)
            }
            MembershipChange::Remove(id) => membership.contains(*id),
            MembershipChange::AddLearner(_) => true,
        };
        if !ready {
            return Ok(());
        }
        self.operator.plan.pop_front();
        // Marked before asking: a refusal comes back within the step, and must
        // end the replacement (removing the voter after a refused promotion
        // would leave two voters).
        self.operator.plan_step = Some(self.next_request);
        self.ask(l, change)?;
        Ok(())
    }

    /// Asks member `l` for `change`; returns the request's id.
    fn ask(&mut self, l: usize, change: MembershipChange) -> Result<u64, String> {
        let request_id = self.next_request;
        self.next_request += 1;
        match &change {
            MembershipChange::AddLearner(member) => self.prepare_addition(member.id),
            MembershipChange::Remove(id) => {
                let node = &mut self.nodes[*id as usize - 1];
                if node.after_removal.is_none() {
                    node.after_removal = Some(match self.rng.range(0, 3) {
                        0 => AfterRemoval::KeepRunning,
                        1 => AfterRemoval::Stop,
                        _ => AfterRemoval::Wipe,
                    });
                }
            }
            MembershipChange::Promote(_) => {}
        }
        if self.tracing() {
            eprintln!("t={} operator asks member {}: {change:?}", self.now, l + 1);
        }
        self.operator.counts.asked += 1;
        self.operator
            .pending
            .insert(request_id, (l, change.clone()));
        let event = Event::ChangeMembership { request_id, change };
        self.step(l, event)?;
        Ok(request_id)
    }

    /// A wiped member about to be added again starts afresh, knowing nobody.
    fn prepare_addition(&mut self, id: NodeId) {
        let k = id as usize - 1;
        let node = &mut self.nodes[k];
        if node.wiped_at.take().is_none() {
            return;
        }
        node.after_removal = None;
        node.retired = false;
        self.operator.removals_unsettled.remove(&id);
        self.operator.counts.readded += 1;
        self.start_node(k);
    }

    /// The answer to a change the operator asked of member `k`.
    pub(super) fn on_change_result(
        &mut self,
        k: usize,
        request_id: u64,
        result: Result<AppendOk, AppendError>,
    ) -> Check {
        let (_, change) = self.operator.pending.remove(&request_id).expect("asked");
        let plan_step = self.operator.plan_step == Some(request_id);
        let counts = &mut self.operator.counts;
        match result {
            Ok(ok) => {
                counts.committed += 1;
                if change == MembershipChange::Remove(k as NodeId + 1) {
                    counts.leader_removals += 1;
                }
                let committed = self.checker.committed_entry(ok.first_index);
                let payload = match committed {
                    Some(entry)
                        if entry.kind == EntryKind::Config && ok.first_index == ok.last_index =>
                    {
                        Bytes::clone(&entry.payload)
                    }
                    _ => {
                        return Err(format!(
                            "change {change:?} acknowledged at {ok:?}, where the committed entry is {committed:?}"
                        ));
                    }
                };
                self.check_on_majority_disks(k, request_id, Some(payload), ok.last_index)?;
            }
            Err(AppendError::Unknown) => counts.unknown += 1,
            Err(AppendError::MembershipChange(ChangeRefusal::ChangeInProgress)) => {
                counts.refused_in_progress += 1
            }
            Err(_) => counts.refused_other += 1,
        }
        if let MembershipChange::Remove(id) = change {
            self.settle_removal(id, &result);
        }
        if plan_step {
            self.operator.plan_step = None;
            if result.is_err() {
                self.operator.plan.clear();
            }
        }
        Ok(())
    }

    /// A removal that was refused outright leaves its member as it was, unless
    /// another removal of it is pending or may still commit: otherwise a member
    /// added just before would be stopped for a removal that never happened.
    fn settle_removal(&mut self, id: NodeId, result: &Result<AppendOk, AppendError>) {
        let operator = &mut self.operator;
        if !matches!(result, Err(e) if *e != AppendError::Unknown) {
            operator.removals_unsettled.insert(id);
            return;
        }
        let pending = operator
            .pending
            .values()
            .any(|(_, change)| *change == MembershipChange::Remove(id));
        let node = &mut self.nodes[id as usize - 1];
        if !pending && !operator.removals_unsettled.contains(&id) && !node.retired {
            node.after_removal = None;
        }
    }

    /// Stops (and wipes, if so decided) the removed members whose removal the
    /// checker has seen committed.
    fn retire_removed(&mut self) {
        let (_, committed) = self.checker.latest_committed_config();
        let retiring: Vec<usize> = (0..self.nodes.len())
            .filter(|&k| {
                let node = &self.nodes[k];
                let stops = matches!(
                    node.after_removal,
                    Some(AfterRemoval::Stop | AfterRemoval::Wipe)
                );
                stops && !node.retired && !committed.contains(k as NodeId + 1)
            })
            .collect();
        for k in retiring {
            self.stop(k);
        }
    }

    fn stop(&mut self, k: usize) {
        self.operator.forget_requests_to(k);
        let wipe = self.nodes[k].after_removal == Some(AfterRemoval::Wipe);
        if self.tracing() {
            eprintln!(
                "t={} operator stops member {} (wipe: {wipe})",
                self.now,
                k + 1
            );
        }
        let node = &mut self.nodes[k];
        // A clean stop: everything written reaches the disk.
        let unflushed = node.disk.unflushed_len();
        node.disk.crash(unflushed);
        node.engine = None;
        node.held.clear();
        node.flush_at = None;
        node.crash_at = None;
        node.retired = true;
        let abandoned = std::mem::take(&mut node.requests);
        self.operator.counts.stopped += 1;
        if wipe {
            node.disk = Disk::new();
            node.bootstrap = Membership::default();
            node.wiped_at = Some(self.now);
            self.operator.counts.wiped += 1;
        }
        for request in abandoned {
            self.checker.abandon(request);
        }
    }
}
