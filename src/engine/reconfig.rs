//! Membership changes, one member at a time (Raft dissertation §4.1–4.2).
//!
//! A change is a configuration entry holding the group's whole new membership. Every
//! member uses the latest configuration in its log from the moment the entry is
//! appended, committed or not; a truncation that removes the entry brings the one
//! before back. Two consecutive configurations differ by one voter at most, so any
//! majority of one overlaps any majority of the other, which is what makes using an
//! uncommitted configuration safe, provided that:
//!
//! - a leader proposes a change only when no other is uncommitted in its log
//!   (otherwise two changes in flight could add up to two voters and disjoint
//!   majorities), and
//! - only once it has committed an entry of its own term (the dissertation's
//!   correction: a change decided by a previous leader may still be in flight).
//!
//! A leader that is removed keeps replicating, without counting itself, until the
//! change commits, then asks the best follower to campaign and steps down. A member
//! that is not a voter in force never campaigns. Learners receive the log and are
//! not counted in elections or commits.
//!
//! Configurations are saved apart from the log (`Command::SaveMembership`), because
//! retention and log resets remove the entries that carried them. The saved list is
//! always a superset of the configurations in the log: a new one is saved before the
//! entry is appended, a removed one after the entry is truncated. Recovery keeps
//! the saved committed configuration, and each uncommitted one only if the log still
//! holds its entry (`configs_at_start`).

use super::config::PlantedBug;
use super::event::{AppendError, Command};
use super::log::Log;
use super::membership::{
    ChangeRefusal, KnownConfig, Membership, MembershipChange, MembershipDecodeError,
};
use super::progress::Progress;
use super::types::{Entry, EntryKind, Index, MessageBody, NodeId, Term};
use super::{ENTRY_OVERHEAD_BYTES, Engine, Role};

/// The configuration a configuration entry carries; `Ok(None)` for other kinds.
pub(super) fn config_of(entry: &Entry) -> Result<Option<KnownConfig>, MembershipDecodeError> {
    if entry.kind != EntryKind::Config {
        return Ok(None);
    }
    Ok(Some(KnownConfig {
        index: entry.index,
        term: entry.term,
        committed: false,
        membership: Membership::decode(&entry.payload)?,
    }))
}

/// The configurations a member restarts with: the latest saved committed one (or
/// the bootstrap), then each saved uncommitted one whose entry the log still holds.
/// An uncommitted one whose entry is gone was truncated or reset away before the
/// crash, or never made it to disk.
pub(super) fn configs_at_start(
    log: &Log,
    bootstrap: &Membership,
    saved: Vec<KnownConfig>,
) -> Vec<KnownConfig> {
    let mut base = KnownConfig::bootstrap(bootstrap.clone());
    for config in saved.iter().filter(|c| c.committed) {
        if config.index >= base.index {
            base = config.clone();
        }
    }
    let base_index = base.index;
    let mut configs = vec![base];
    for config in saved {
        let held = config.index >= log.start() && log.term_at(config.index) == Some(config.term);
        if !config.committed && config.index > base_index && held {
            configs.push(config);
        }
    }
    configs
}

impl Engine {
    pub(super) fn on_change_membership(&mut self, request_id: u64, change: MembershipChange) {
        let membership = match self.admit_change(&change) {
            Ok(membership) => membership,
            Err(refusal) => return self.reply_append(request_id, Err(refusal)),
        };
        let entry = Entry {
            term: self.hard.term,
            index: self.log.last_index() + 1,
            kind: EntryKind::Config,
            payload: membership.encode(),
        };
        self.propose(request_id, vec![entry]);
    }

    fn admit_change(&self, change: &MembershipChange) -> Result<Membership, AppendError> {
        let refuse = |why| Err(AppendError::MembershipChange(why));
        self.admit_role()?;
        if self.commit_index < self.term_start_index {
            return refuse(ChangeRefusal::LeaderNotReady);
        }
        if self.configs.len() > 1 && !self.planted(PlantedBug::TwoChangesInFlight) {
            return refuse(ChangeRefusal::ChangeInProgress);
        }
        let membership = self
            .membership()
            .changed(change)
            .map_err(AppendError::MembershipChange)?;
        if let MembershipChange::Promote(id) = change
            && !self.caught_up(*id)
        {
            return refuse(ChangeRefusal::NotCaughtUp(*id));
        }
        if membership.encoded_len() as u64 > self.config.entry_payload_bytes_max {
            return refuse(ChangeRefusal::TooManyMembers);
        }
        self.admit_bytes(membership.encoded_len() as u64 + ENTRY_OVERHEAD_BYTES)?;
        Ok(membership)
    }

    /// Takes the configurations of `entries`, about to be appended, into force, and
    /// saves them before the append (see the module's comment). Validation refused
    /// any configuration entry whose payload does not decode.
    pub(super) fn note_configs(&mut self, entries: &[Entry]) {
        let committed_index = self.configs[0].index;
        let mut added = false;
        for entry in entries {
            let config = config_of(entry).unwrap_or_else(|e| {
                panic!("member {}: undecodable configuration entry: {e}", self.id)
            });
            // An entry at or below the committed configuration is older than it: a
            // member restarted from a leader's LogStart receives such entries again.
            if let Some(config) = config.filter(|c| c.index > committed_index) {
                self.configs.push(config);
                added = true;
            }
        }
        if added {
            self.save_configs();
            self.membership_changed();
        }
    }

    /// Drops the configurations whose entries a truncation from `from` removed.
    pub(super) fn forget_configs_from(&mut self, from: Index) {
        let before = self.configs.len();
        self.configs.retain(|c| c.committed || c.index < from);
        if self.configs.len() != before {
            self.save_configs();
            self.membership_changed();
        }
    }

    /// A leader's LogStart replaces this member's log from `start`: the old log's
    /// configurations go with it, and the newer of the two committed ones is in
    /// force. The saved list must cover whichever log a crash leaves on disk, so
    /// before the reset it holds the newer committed configuration and the old
    /// log's uncommitted ones (recovery drops those once their entries are gone),
    /// and only after the reset is it cut down to the committed one.
    pub(super) fn reset_log_with_config(
        &mut self,
        start: Index,
        prev_term: Term,
        leader_committed: KnownConfig,
    ) {
        let newer = if leader_committed.index > self.configs[0].index {
            KnownConfig {
                committed: true,
                ..leader_committed
            }
        } else {
            self.configs[0].clone()
        };
        let changed = newer.membership != *self.membership();
        let mut covering = vec![newer.clone()];
        let uncommitted = self.configs[1..].iter().filter(|c| c.index > newer.index);
        covering.extend(uncommitted.cloned());
        if covering != self.configs {
            self.configs = covering;
            self.save_configs();
        }
        self.reset_log(start, prev_term);
        if self.configs.len() > 1 {
            self.configs = vec![newer];
            self.save_configs();
        }
        if changed {
            self.membership_changed();
        }
    }

    /// The commit index advanced: the latest configuration it covers becomes the
    /// committed one, and a leader that it removes steps down.
    pub(super) fn commit_configs(&mut self) {
        let Some(k) = self
            .configs
            .iter()
            .rposition(|c| c.index <= self.commit_index && !c.committed)
        else {
            return;
        };
        self.configs.drain(..k);
        self.configs[0].committed = true;
        self.save_configs();
        if self.role == Role::Leader && !self.membership().is_voter(self.id) {
            self.step_down_removed();
        }
    }

    /// A leader whose removal committed hands over to the follower that has its
    /// whole log, if one has, and stops leading. Appends still waiting may yet
    /// commit under the next leader, which this member will not hear of.
    fn step_down_removed(&mut self) {
        let last_index = self.log.last_index();
        if let Some(k) = self.transfer_candidate().and_then(|c| self.peer_slot(c))
            && self.peers[k].1.match_index == last_index
        {
            let target = self.peers[k].0;
            self.send(target, MessageBody::TimeoutNow);
        }
        self.become_follower(self.hard.term, None);
    }

    /// A member that stops leading while its own latest configuration leaves it
    /// out answers its waiting appends as unknown now: once that removal commits,
    /// nobody replicates to it any more, so it would never learn their fate.
    pub(super) fn give_up_appends_if_removed(&mut self) {
        if self.membership().contains(self.id) {
            return;
        }
        for p in std::mem::take(&mut self.pending_appends) {
            self.finish_append(p, Err(AppendError::Unknown));
        }
    }

    fn save_configs(&mut self) {
        let op = self.next_op();
        let configs = self.configs.clone();
        self.output.push(Command::SaveMembership { op, configs });
    }

    /// Tells the runtime, and gives a leader a progress slot for each member it now
    /// replicates to (and none for removed ones).
    fn membership_changed(&mut self) {
        let membership = self.membership().clone();
        if self.role == Role::Leader {
            let next = self.log.last_index();
            self.peers.retain(|(id, _)| membership.contains(*id));
            for id in membership.ids().filter(|&id| id != self.id) {
                if self.peer_slot(id).is_none() {
                    self.peers.push((id, Progress::new(next)));
                }
            }
            self.peers.sort_unstable_by_key(|(id, _)| *id);
        }
        self.output.push(Command::MembershipChanged { membership });
    }

    /// Whether the leader heard from `id` in this check-quorum round, `id` holds
    /// this term's first entry and its log is within one message of the commit
    /// index: promoting a learner further behind would stall commits until it
    /// caught up (or, in a small group, for good if it never does).
    pub fn caught_up(&self, id: NodeId) -> bool {
        self.role == Role::Leader
            && self.peer_slot(id).is_some_and(|k| {
                let pr = &self.peers[k].1;
                let lag_max = self.config.entries_per_msg_max as Index;
                pr.recent_active
                    && pr.match_index >= self.term_start_index
                    && pr.match_index + lag_max >= self.commit_index
            })
    }

    /// Whether a configuration in this member's log is not committed yet (on a
    /// leader: a change is under way, and another would be refused).
    pub fn membership_change_pending(&self) -> bool {
        self.configs.len() > 1
    }

    /// Whether this member counts as a voter in the membership in force.
    pub(super) fn is_voter(&self) -> bool {
        self.membership().is_voter(self.id)
    }

    /// Whether this member may campaign: a voter in force, or a voter of the
    /// committed configuration that only an uncommitted one leaves out. The latter
    /// is a leader that removed itself and lost its leadership before the removal
    /// committed: its log may be the only one that holds everything, so without
    /// it the others might never elect anybody. It counts votes by the
    /// configuration that leaves it out (as any member uses its latest), and if
    /// it wins it commits its own removal and steps down.
    pub fn may_campaign(&self) -> bool {
        self.is_voter()
            || (self.membership_change_pending() && self.configs[0].membership.is_voter(self.id))
    }

    /// The members a leader replicates to: everybody in force but itself.
    pub(super) fn replication_targets(&self) -> Vec<NodeId> {
        self.membership().ids().filter(|&m| m != self.id).collect()
    }
}

#[cfg(test)]
mod tests;
