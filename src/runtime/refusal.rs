//! What a shard does when its engine refuses a peer's message: log it, count it,
//! and have the peer acceptor close the link it came on. The engine has already
//! ignored the message; closing the link makes the peer start over with a fresh
//! connection (an honest peer that merely raced a restart loses nothing: Raft
//! retransmits), and a hostile one pays a reconnect per bad message.

use crate::engine::{NodeId, PeerFault};
use crate::metrics::ShardMetrics;
use crate::transport::peer::LinkCloser;

/// Handles one `Command::RefusePeer` of partition `partition`.
pub(super) fn refuse_peer(
    partition: u32,
    from: NodeId,
    fault: PeerFault,
    metrics: &ShardMetrics,
    closer: &LinkCloser,
) {
    log::warn!(
        "partition {partition}: refused a message from node {from}: {fault} ({}); closing its link",
        fault.label()
    );
    metrics.peer_refused(from, fault);
    closer.close(from, partition);
}
