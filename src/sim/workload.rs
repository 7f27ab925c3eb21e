//! Simulated clients, and the end-of-run checks: liveness after healing, and every
//! member's log against the committed log.

use bytes::Bytes;

use crate::engine::{Event, NodeId, Role};

use super::{Check, Sim};

impl Sim {
    /// During faults: appends of one to three unique records, mostly to the leader
    /// (as a client following redirects would), sometimes to anyone; some reads and
    /// some trims.
    pub(super) fn client_workload(&mut self) -> Check {
        if self.rng.chance(1, 2) {
            let k = self.client_target();
            let count = self.rng.range(1, 4);
            self.submit_append(k, count)?;
        }
        if self.rng.chance(1, 10) {
            let k = self.client_target();
            self.submit_read(k)?;
        }
        if self.rng.chance(1, 25) {
            let k = self.client_target();
            self.submit_trim(k)?;
        }
        Ok(())
    }

    /// Mostly some member that believes it leads, even a deposed one cut off in a
    /// minority (a client with stale metadata), so logs diverge; sometimes anyone.
    fn client_target(&mut self) -> usize {
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|&k| {
                self.nodes[k]
                    .engine
                    .as_ref()
                    .is_some_and(|e| e.role() == Role::Leader)
            })
            .collect();
        if !leaders.is_empty() && self.rng.chance(4, 5) {
            return leaders[self.rng.range(0, leaders.len() as u64) as usize];
        }
        self.rng.range(0, self.nodes.len() as u64) as usize
    }

    fn submit_append(&mut self, k: usize, count: u64) -> Check {
        if self.nodes[k].engine.is_none() {
            return Ok(());
        }
        let request_id = self.next_request;
        self.next_request += 1;
        let records: Vec<Bytes> = (0..count)
            .map(|i| Bytes::from(format!("req{request_id}-{i}")))
            .collect();
        self.checker.invoke_append(request_id, records.clone());
        self.nodes[k].requests.push(request_id);
        self.step(
            k,
            Event::ClientAppend {
                request_id,
                records,
            },
        )
    }

    fn submit_read(&mut self, k: usize) -> Check {
        if self.nodes[k].engine.is_none() {
            return Ok(());
        }
        let request_id = self.next_request;
        self.next_request += 1;
        self.checker.invoke_read(request_id);
        self.nodes[k].requests.push(request_id);
        self.step(k, Event::ReadIndex { request_id })
    }

    /// After healing: keeps appending to the leader until its log reaches past every
    /// member's (so stale suffixes get replaced); returns whether an append made
    /// after healing was acknowledged.
    pub(super) fn drive_heal_workload(&mut self) -> Result<bool, String> {
        if let Some(k) = self.leader_index() {
            let leader_last = self.nodes[k]
                .engine
                .as_ref()
                .expect("live")
                .log()
                .last_index();
            let longest = self.longest_follower_log(k);
            let acked = self.checker.acked_records > self.heal_acked_base;
            if !acked || leader_last < longest {
                self.submit_append(k, 1)?;
            }
        }
        Ok(self.checker.acked_records > self.heal_acked_base)
    }

    /// The longest log of the leader's members: only they must end up equal.
    fn longest_follower_log(&self, leader: usize) -> u64 {
        let followers = self.nodes.iter().enumerate().filter(|&(k, _)| k != leader);
        let members = followers.filter(|&(k, _)| self.is_member_of_leader(leader, k));
        let engines = members.filter_map(|(_, n)| n.engine.as_ref());
        engines.map(|e| e.log().last_index()).max().unwrap_or(0)
    }

    /// Whether member `k` belongs to the membership in force at `leader`.
    pub(super) fn is_member_of_leader(&self, leader: usize, k: usize) -> bool {
        let engine = self.nodes[leader].engine.as_ref().expect("live leader");
        engine.membership().contains(k as NodeId + 1)
    }

    /// Every member up, one leader, all logs equal and fully committed, and every
    /// request a live member holds answered. Members are those of the leader's
    /// membership: removed ones and spares never added may lag for ever, and a
    /// removed member that was never told may hold appends it took as leader for
    /// ever too, since nobody replicates to it again (a real client times out).
    pub(super) fn converged(&self) -> bool {
        let Some(k) = self.leader_index() else {
            return false;
        };
        let leader = self.nodes[k].engine.as_ref().expect("live");
        let mut members = self
            .nodes
            .iter()
            .enumerate()
            .filter(|&(m, _)| self.is_member_of_leader(k, m));
        let all_caught_up = members.all(|(_, node)| {
            node.engine.as_ref().is_some_and(|e| {
                e.commit_index() == leader.log().last_index()
                    && e.log().last_index() == leader.log().last_index()
            })
        });
        let held_outside: usize = (self.nodes.iter().enumerate())
            .filter(|&(m, node)| node.engine.is_some() && !self.is_member_of_leader(k, m))
            .map(|(_, node)| node.requests.len())
            .sum();
        all_caught_up && self.checker.outstanding() == held_outside
    }

    /// Entries between the shortest commit index and the longest log.
    pub(super) fn catch_up_entries(&self) -> u64 {
        let engines = || self.nodes.iter().filter_map(|n| n.engine.as_ref());
        let longest = engines().map(|e| e.log().last_index()).max().unwrap_or(0);
        let lowest_commit = engines().map(|e| e.commit_index()).min().unwrap_or(0);
        longest - lowest_commit
    }

    pub(super) fn liveness_report(&self, deadline: u64) -> String {
        let mut text = format!(
            "liveness: not converged by tick {deadline}; {} requests outstanding;",
            self.checker.outstanding()
        );
        for (k, node) in self.nodes.iter().enumerate() {
            if let Some(e) = &node.engine {
                text += &format!(
                    " member {}: {:?} term {} commit {} last {} members {:?} voters {:?};",
                    k + 1,
                    e.role(),
                    e.term(),
                    e.commit_index(),
                    e.log().last_index(),
                    e.membership().ids().collect::<Vec<_>>(),
                    e.membership().voters().collect::<Vec<_>>()
                );
                if !node.requests.is_empty() {
                    text += &format!(" holds requests {:?};", node.requests);
                }
                if e.role() == crate::engine::Role::Leader {
                    text += &format!(" progress {};", e.describe_progress());
                }
            }
        }
        text
    }

    /// Every live member's log agrees with the committed log (removed members that
    /// kept running included, as far as they know it committed).
    pub(super) fn final_checks(&self) -> Check {
        for node in &self.nodes {
            let Some(e) = node.engine.as_ref() else {
                continue;
            };
            let lookup = |i| {
                e.log()
                    .get(i)
                    .cloned()
                    .or_else(|| node.disk.durable_entry(i))
            };
            self.checker
                .check_final(e.id(), e.log().start(), e.commit_index(), &lookup)?;
        }
        Ok(())
    }
}
