//! What `/health` reports: per partition, whether its shard's loop is turning and
//! whether a leader is known. Shards write their slot (atomics, once per tick);
//! the HTTP server on shard 0 reads every slot without asking the shards, so a
//! flooded inbox cannot make the health check itself time out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// The data directory's free space as the shards last measured it.
#[derive(Default)]
struct DiskSlot {
    /// Set once any shard has measured.
    measured: AtomicBool,
    free_bytes: AtomicU64,
    min_free_bytes: AtomicU64,
    low: AtomicBool,
}

/// One slot per partition of this node, and one for its disk.
pub struct HealthBoard {
    started: Instant,
    slots: Vec<Slot>,
    disk: DiskSlot,
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
    /// "ok" when every partition is alive and has a leader and the disk has room,
    /// else "degraded".
    pub status: &'static str,
    pub node: NodeId,
    pub partitions: Vec<PartitionHealth>,
    /// Free bytes on the data directory's filesystem (absent until first measured).
    pub disk_free_bytes: Option<u64>,
    /// Below `wal.min_free_bytes`: this node refuses appends.
    pub disk_low: bool,
    /// Why the node is not ok, in words, when it is the disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
            disk: DiskSlot::default(),
        })
    }

    /// A shard measured the data directory's free space.
    pub fn publish_disk(&self, free_bytes: u64, min_free_bytes: u64, low: bool) {
        let disk = &self.disk;
        disk.free_bytes.store(free_bytes, Ordering::Relaxed);
        disk.min_free_bytes.store(min_free_bytes, Ordering::Relaxed);
        disk.low.store(low, Ordering::Relaxed);
        disk.measured.store(true, Ordering::Release);
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
        let measured = self.disk.measured.load(Ordering::Acquire);
        let free_bytes = self.disk.free_bytes.load(Ordering::Relaxed);
        let low = measured && self.disk.low.load(Ordering::Relaxed);
        let reason = low.then(|| {
            let min_free_bytes = self.disk.min_free_bytes.load(Ordering::Relaxed);
            crate::transport::ServerError::DiskLow {
                node,
                free_bytes,
                min_free_bytes,
            }
            .to_string()
        });
        let ok = !low && partitions.iter().all(|p| p.alive && p.leader.is_some());
        Health {
            status: if ok { "ok" } else { "degraded" },
            node,
            partitions,
            disk_free_bytes: measured.then_some(free_bytes),
            disk_low: low,
            reason,
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

    #[test]
    fn a_low_disk_degrades_the_node_with_the_reason_in_words() {
        let board = HealthBoard::new(1);
        board.publish(0, Role::Leader, 3, Some(2), 10);
        assert_eq!(board.report(2).disk_free_bytes, None);
        board.publish_disk(1 << 30, 256 << 20, false);
        let report = board.report(2);
        assert!(report.ok());
        assert_eq!(
            (report.disk_free_bytes, report.disk_low, report.reason),
            (Some(1 << 30), false, None)
        );
        board.publish_disk(201_326_592, 268_435_456, true);
        let report = board.report(2);
        assert!(!report.ok());
        assert!(report.disk_low);
        assert_eq!(
            report.reason.as_deref(),
            Some(
                "node 2 has 201326592 bytes free, below [wal] min_free_bytes = 268435456: appends are refused until space is freed"
            )
        );
    }
}
