//! The nemesis of the simulation: crashes and restarts, partitions, message loss,
//! duplication and delay, leader transfers and retention purges, all drawn from the
//! seed.

use crate::engine::{Event, NodeId, Role};

use super::{Check, Sim};

impl Sim {
    pub(super) fn leader_index(&self) -> Option<usize> {
        let leaders = self.nodes.iter().enumerate().filter_map(|(k, node)| {
            let engine = node.engine.as_ref()?;
            (engine.role() == Role::Leader).then_some((engine.term(), k))
        });
        leaders.max().map(|(_, k)| k)
    }

    fn live_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&k| self.nodes[k].engine.is_some())
            .collect()
    }

    fn random_live(&mut self) -> Option<usize> {
        let live = self.live_nodes();
        (!live.is_empty()).then(|| live[self.rng.range(0, live.len() as u64) as usize])
    }

    pub(super) fn inject_faults(&mut self) -> Check {
        if self.now == 0 {
            self.network.drop_percent = self.rng.range(0, 15);
            self.network.duplicate_percent = self.rng.range(0, 10);
            self.network.delay_ticks_max = self.rng.range(1, 6);
        }
        for k in 0..self.nodes.len() {
            let node = &self.nodes[k];
            if node.engine.is_none() && node.down_until <= self.now && !node.retired {
                self.start_node(k);
            }
            if self.nodes[k].crash_at.is_some_and(|at| at <= self.now)
                && self.nodes[k].engine.is_some()
            {
                self.crash(k);
            }
        }
        match self.rng.range(0, 1000) {
            0..=14 => {
                if let Some(k) = self.random_live() {
                    self.crash(k);
                }
            }
            15..=24 => {
                if let Some(k) = self.leader_index() {
                    self.crash(k);
                }
            }
            25..=44 => self.partition(),
            45..=69 => self.network.heal_partitions(),
            70..=74 => self.transfer_leadership()?,
            // Retention, on one member at a time, every 30 ticks or so.
            75..=109 => {
                if let Some(k) = self.random_live() {
                    self.retention_purge(k)?;
                }
            }
            110..=114 => self.corrupt_disk(),
            _ => {}
        }
        if self.config.membership_changes {
            self.operate()?;
        }
        Ok(())
    }

    pub(super) fn crash(&mut self, k: usize) {
        self.operator.forget_requests_to(k);
        let node = &mut self.nodes[k];
        let kept = self.rng.range(0, node.disk.unflushed_len() as u64 + 1) as usize;
        node.disk.crash(kept);
        node.engine = None;
        node.held.clear();
        node.flush_at = None;
        node.down_until = self.now + self.rng.range(5, 60);
        node.crash_at = None;
        for request in std::mem::take(&mut node.requests) {
            self.checker.abandon(request);
        }
        self.crashes += 1;
    }

    /// A crash whose recovery finds a corruption and cuts the log before it, on one
    /// member at a time (damage on two disks at once can lose records; that is the
    /// operator's rule, not the engine's).
    fn corrupt_disk(&mut self) {
        if self
            .nodes
            .iter()
            .any(|n| n.disk.lost_tail_in_term.is_some())
        {
            return;
        }
        let Some(k) = self.random_live() else {
            return;
        };
        self.crash(k);
        let keep = self
            .rng
            .range(0, self.nodes[k].disk.entries_len() as u64 + 1) as usize;
        self.nodes[k].disk.lose_tail(keep);
        let lost_in = self.nodes[k].disk.lost_tail_in_term;
        if self.tracing() {
            eprintln!(
                "t={} member {} restarts with its log cut to {keep} entries, lost in term {lost_in:?}",
                self.now,
                k + 1,
            );
        }
        if lost_in.is_some() {
            self.lost_tails += 1;
        }
    }

    fn partition(&mut self) {
        self.network.heal_partitions();
        let n = self.config.total_nodes();
        let side: Vec<NodeId> = match self.rng.range(0, 3) {
            // Cut the leader off (symmetric or one-way, below).
            0 => match self.leader_index() {
                Some(k) => vec![k as NodeId + 1],
                None => return,
            },
            _ => (1..=n).filter(|_| self.rng.chance(1, 2)).collect(),
        };
        let one_way = self.rng.chance(1, 3);
        self.network.partition(&side, one_way);
    }

    fn transfer_leadership(&mut self) -> Check {
        match self.leader_index() {
            Some(k) => {
                let to = self.rng.range(1, self.config.total_nodes() as u64 + 1) as NodeId;
                self.step(k, Event::TransferLeadership { to })
            }
            None => Ok(()),
        }
    }

    /// Ends every fault (and the operator's changes): all members up but those the
    /// operator stopped, no partitions, no loss, and links that
    /// deliver in order after one tick, as TCP does.
    pub(super) fn heal(&mut self) {
        self.healed = true;
        self.heal_acked_base = self.checker.acked_records;
        for k in 0..self.nodes.len() {
            if self.nodes[k].engine.is_none() && !self.nodes[k].retired {
                self.start_node(k);
            }
        }
        self.network.heal_partitions();
        self.network.drop_percent = 0;
        self.network.duplicate_percent = 0;
        self.network.delay_ticks_max = 1;
        self.network.reorder = false;
    }
}
