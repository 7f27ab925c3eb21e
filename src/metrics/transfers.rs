//! The series of one shard's leadership hand-overs.

use metrics::Counter;

use super::NodeMetrics;
use super::catalog::LEADER_TRANSFERS;

/// Why a leader hands its leadership over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferReason {
    /// An operator asked (`ringlog leader transfer`).
    Request,
    /// The leader balancer moves a partition to a node that leads fewer.
    Balance,
    /// The node is stopping gracefully.
    Shutdown,
}

const REASONS: [(TransferReason, &str); 3] = [
    (TransferReason::Request, "request"),
    (TransferReason::Balance, "balance"),
    (TransferReason::Shutdown, "shutdown"),
];

/// `ringlog_leader_transfers_total` of one partition: [done, failed] per reason.
pub struct TransferMetrics {
    counters: [[Counter; 2]; 3],
}

impl TransferMetrics {
    pub fn new(node: &NodeMetrics, partition: u32) -> TransferMetrics {
        let partition = partition.to_string();
        let counter = |reason: &str, outcome| {
            let labels = [
                ("partition", partition.as_str()),
                ("reason", reason),
                ("outcome", outcome),
            ];
            node.counter(LEADER_TRANSFERS, &labels)
        };
        TransferMetrics {
            counters: REASONS.map(|(_, name)| [counter(name, "done"), counter(name, "failed")]),
        }
    }

    /// Counts a hand-over that ended: `done` if another member leads.
    pub fn ended(&self, reason: TransferReason, done: bool) {
        let k = REASONS
            .iter()
            .position(|(r, _)| *r == reason)
            .expect("every reason is listed");
        self.counters[k][usize::from(!done)].increment(1);
    }
}
