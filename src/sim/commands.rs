//! Carrying out a member's commands as the runtime would: storage to the member's
//! disk, messages to the network (held until their condition holds), answers and
//! commits to the checker.

use bytes::Bytes;

use crate::engine::{Command, Condition, Index, Membership, Message, MessageBody, NodeId, Role};

use super::{Check, Node, Sim, liar};

impl Sim {
    /// The promise itself: an acknowledged entry is on disk on a majority of the
    /// voters of a membership member `k` knows (the one in force, or an earlier one
    /// not yet replaced everywhere), when it acknowledged it. (An entry a member has purged since counts:
    /// only committed entries on its disk are ever purged. So does a member
    /// abstaining after a corruption cut its log: the leader may have counted its
    /// acknowledgement from before the cut, and until it has the entries back it
    /// refuses to vote for any log without them, which is what keeps them safe.)
    pub(super) fn check_on_majority_disks(
        &self,
        k: usize,
        request_id: u64,
        payload: Option<Bytes>,
        last_index: u64,
    ) -> Check {
        let holds = |node: &Node| {
            node.disk.lost_tail_in_term.is_some()
                || match node.disk.durable_entry(last_index) {
                    Some(entry) => Some(&entry.payload) == payload.as_ref(),
                    None => node.disk.start() > last_index,
                }
        };
        let holders_among = |voters: &Membership| {
            let nodes = self.nodes.iter().enumerate();
            nodes
                .filter(|&(m, node)| voters.is_voter(m as NodeId + 1) && holds(node))
                .count()
        };
        // The leader that committed it counted a majority of the configuration in
        // force at it then: this member's latest, or an earlier one it still knows
        // (a deposed leader may learn of the commit after appending a change).
        let engine = self.nodes[k].engine.as_ref().expect("live member");
        let mut memberships = engine.memberships();
        if memberships.any(|voters| holders_among(voters) >= voters.quorum()) {
            return Ok(());
        }
        let voters = engine.membership();
        let count = holders_among(voters);
        Err(format!(
            "append {request_id} acknowledged with index {last_index} on only {count} disks of the voters {:?} in force",
            voters.voters().collect::<Vec<_>>()
        ))
    }

    /// Does what the runtime would: storage to the disk, messages to the network
    /// (held until their condition holds), answers to the checker.
    pub(super) fn carry_out(&mut self, k: usize, command: Command) -> Check {
        assert!(self.nodes[k].engine.is_some(), "live member");
        if self.nodes[k].disk.submit(&command) {
            return self.check_storage(k, command);
        }
        let id = k as NodeId + 1;
        match command {
            Command::Send { msg, when } if self.liar == Some(id) => self.send_lying(k, msg, when),
            Command::Send { msg, when } => self.send_when(k, msg, when),
            Command::SendLogRange {
                msg,
                last_index,
                bytes_max,
            } => self.send_log_range(k, msg, last_index, bytes_max),
            answer => return self.check_answer(k, answer),
        }
        Ok(())
    }

    /// Schedules the flush of the storage `command` just submitted to member `k`'s
    /// disk, and checks what it changes.
    fn check_storage(&mut self, k: usize, command: Command) -> Check {
        let id = k as NodeId + 1;
        let node = &mut self.nodes[k];
        let engine = node.engine.as_ref().expect("live member");
        if node.flush_at.is_none() {
            node.flush_at = Some(self.now + self.rng.range(0, 4));
        }
        match command {
            Command::AppendLog { entries, .. } => {
                self.checker.on_append_log(id, &entries, engine.log())
            }
            Command::PurgeLog { before, .. } => {
                node.batch_start = node.batch_start.max(before);
                self.check_purge(k, before)
            }
            Command::ResetLog { start, .. } => {
                node.batch_start = node.batch_start.max(start);
                self.log_resets += 1;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Sends `msg` from the misbehaving member: as it is, or a lie instead of it or
    /// besides it.
    fn send_lying(&mut self, k: usize, msg: Message, when: Option<Condition>) {
        let (msg, extra) = match liar::lie_about(msg, &mut self.rng) {
            liar::Lie::Honest(msg) | liar::Lie::Instead(msg) => (msg, None),
            liar::Lie::Besides(msg, bad) => (msg, Some(bad)),
        };
        self.send_when(k, msg, when);
        if let Some(bad) = extra {
            self.network.send(bad, self.now, &mut self.rng);
        }
    }

    /// Sends `msg` from member `k` now, or holds it until its disk is durable up to
    /// the op it waits for.
    fn send_when(&mut self, k: usize, msg: Message, when: Option<Condition>) {
        let node = &mut self.nodes[k];
        match when {
            Some(Condition::Durable { op }) if op > node.disk.durable_op => {
                node.held.push((op, msg))
            }
            _ => self.network.send(msg, self.now, &mut self.rng),
        }
    }

    /// Sends AppendEntries `msg` with the entries read back from member `k`'s disk.
    fn send_log_range(&mut self, k: usize, mut msg: Message, last_index: Index, bytes_max: u64) {
        if let MessageBody::AppendEntries {
            prev_log_index,
            entries,
            ..
        } = &mut msg.body
        {
            *entries = self.nodes[k]
                .disk
                .read_range(*prev_log_index + 1, last_index, bytes_max);
        }
        self.log_reads += 1;
        self.network.send(msg, self.now, &mut self.rng);
    }

    /// Checks a commit, an answer to a client, a refusal or a role change of member
    /// `k`.
    fn check_answer(&mut self, k: usize, command: Command) -> Check {
        let id = k as NodeId + 1;
        let node = &mut self.nodes[k];
        let engine = node.engine.as_ref().expect("live member");
        match command {
            Command::Commit { index } => {
                let (log, disk) = (engine.log(), &node.disk);
                let lookup = |i| log.get(i).cloned().or_else(|| disk.durable_entry(i));
                self.checker
                    .on_commit(id, index, node.batch_start, &lookup)?;
                self.check_read_start(k, index)?
            }
            Command::AppendResult { request_id, result } if self.operator.asked(request_id) => {
                self.on_change_result(k, request_id, result)?
            }
            Command::AppendResult { request_id, result } => {
                node.requests.retain(|&r| r != request_id);
                if let Ok(ok) = result {
                    let payload = self.checker.last_payload_of(request_id);
                    self.check_on_majority_disks(k, request_id, payload, ok.last_index)?;
                }
                self.checker.on_append_result(request_id, result)?
            }
            Command::ReadResult { request_id, result } => {
                node.requests.retain(|&r| r != request_id);
                if let Some(floor) = self.checker.on_read_result(request_id, result)? {
                    let index = result.expect("a served read has an index");
                    self.reads_to_serve.push((index, floor));
                }
            }
            Command::RefusePeer { from, fault } => {
                if self.liar != Some(from) {
                    return Err(format!(
                        "member {id} refused a message of honest member {from}: {fault}"
                    ));
                }
                self.refusals += 1;
            }
            Command::MembershipChanged { membership } => {
                // Checked once the batch is carried out: a leader's own change
                // comes before the append that carries it.
                self.memberships_to_check.push((id, membership.clone()));
                node.in_force = membership;
            }
            Command::RoleChanged { role, term, .. } => {
                let in_force = (engine.membership(), engine.membership_index());
                self.checker
                    .on_role(id, role, term, engine.log(), in_force)?;
                if role == Role::Leader && !self.healed && self.rng.chance(1, 4) {
                    node.crash_at = Some(self.now + self.rng.range(0, 4));
                }
            }
            storage => unreachable!("storage command not taken by the disk: {storage:?}"),
        }
        Ok(())
    }
}
