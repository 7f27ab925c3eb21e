//! What `/health` reports: per partition, whether its shard's loop is turning and
//! whether a leader is known. Shards write their slot (atomics, once per tick);
//! the HTTP server on shard 0 reads every slot without asking the shards, so a
//! flooded inbox cannot make the health check itself time out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::engine::{NodeId, Role};

/// A shard whose loop has not turned for this long is reported stuck (a loop turns
/// at least once per Raft tick, every few milliseconds).
pub const STUCK_AFTER_MS: u64 = 2_000;

const NO_LEADER: u64 = u64::MAX;

#[derive(Default)]
struct Slot {
    /// Milliseconds since the board was made, at the shard's last publish; 0: never.
    turned_ms: AtomicU64,
    term: AtomicU64,
    role: AtomicU64,
    leader: AtomicU64,
    commit_index: AtomicU64,
}

/// One slot per partition of this node.
pub struct HealthBoard {
    started: Instant,
    slots: Vec<Slot>,
}

/// One partition as `/health` shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PartitionHealth {
    pub partition: u32,
    /// The shard's loop published within `STUCK_AFTER_MS`.
    pub alive: bool,
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub commit_index: u64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Health {
    /// "ok" when every partition is alive and has a leader, else "degraded".
    pub status: &'static str,
    pub node: NodeId,
    pub partitions: Vec<PartitionHealth>,
}

impl Health {
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }
}

fn role_code(role: Role) -> u64 {
    match role {
        Role::Follower => 0,
        Role::PreCandidate => 1,
        Role::Candidate => 2,
        Role::Leader => 3,
    }
}

fn role_name(code: u64) -> &'static str {
    ["follower", "pre_candidate", "candidate", "leader"]
        .get(code as usize)
        .copied()
        .unwrap_or("unknown")
}

impl HealthBoard {
    pub fn new(partitions: u32) -> Arc<HealthBoard> {
        Arc::new(HealthBoard {
            started: Instant::now(),
            slots: (0..partitions).map(|_| Slot::default()).collect(),
        })
    }

    /// Shard `partition` is alive and sees this state.
    pub fn publish(
        &self,
        partition: u32,
        role: Role,
        term: u64,
        leader: Option<NodeId>,
        commit_index: u64,
    ) {
        let slot = &self.slots[partition as usize];
        slot.term.store(term, Ordering::Relaxed);
        slot.role.store(role_code(role), Ordering::Relaxed);
        let leader = leader.map_or(NO_LEADER, u64::from);
        slot.leader.store(leader, Ordering::Relaxed);
        slot.commit_index.store(commit_index, Ordering::Relaxed);
        let now_ms = self.started.elapsed().as_millis() as u64 + 1;
        slot.turned_ms.store(now_ms, Ordering::Release);
    }

    pub fn report(&self, node: NodeId) -> Health {
        let now_ms = self.started.elapsed().as_millis() as u64 + 1;
        let partitions: Vec<PartitionHealth> = self
            .slots
            .iter()
            .enumerate()
            .map(|(partition, slot)| {
                let turned = slot.turned_ms.load(Ordering::Acquire);
                let leader = slot.leader.load(Ordering::Relaxed);
                PartitionHealth {
                    partition: partition as u32,
                    alive: turned != 0 && now_ms.saturating_sub(turned) <= STUCK_AFTER_MS,
                    role: role_name(slot.role.load(Ordering::Relaxed)),
                    term: slot.term.load(Ordering::Relaxed),
                    leader: NodeId::try_from(leader).ok(),
                    commit_index: slot.commit_index.load(Ordering::Relaxed),
                }
            })
            .collect();
        let ok = partitions.iter().all(|p| p.alive && p.leader.is_some());
        Health {
            status: if ok { "ok" } else { "degraded" },
            node,
            partitions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degraded_until_every_partition_is_alive_with_a_leader() {
        let board = HealthBoard::new(2);
        let report = board.report(7);
        assert!(!report.ok());
        assert!(report.partitions.iter().all(|p| !p.alive));
        board.publish(0, Role::Leader, 3, Some(7), 10);
        assert!(!board.report(7).ok(), "partition 1 never published");
        board.publish(1, Role::Candidate, 4, None, 9);
        let report = board.report(7);
        assert!(!report.ok(), "partition 1 has no leader");
        assert_eq!(report.partitions[1].role, "candidate");
        board.publish(1, Role::Follower, 4, Some(2), 9);
        let report = board.report(7);
        assert!(report.ok());
        assert_eq!(
            report.partitions[0],
            PartitionHealth {
                partition: 0,
                alive: true,
                role: "leader",
                term: 3,
                leader: Some(7),
                commit_index: 10,
            }
        );
    }
}
