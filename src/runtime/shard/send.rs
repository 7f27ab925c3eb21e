//! Peer messages: sent at once, held until the storage op they depend on is
//! durable, or filled with entries read back from the WAL.

use super::Shard;
use crate::engine::{Index, Message, MessageBody};
use crate::transport::peer::SendError;

impl Shard {
    pub(super) fn release_held(&mut self) {
        let durable = self.durable_op;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.held.drain(..).partition(|(op, _)| *op <= durable);
        self.held = waiting;
        for (_, msg) in ready {
            self.send(msg);
        }
    }

    pub(super) fn send(&self, msg: Message) {
        let Some(link) = self.links.get(&msg.to) else {
            return;
        };
        match link.send(msg) {
            // A lost message is one Raft recovers from (retransmission, probing).
            Ok(()) | Err(SendError::Full(_)) | Err(SendError::Closed(_)) => {}
            Err(SendError::TooLarge { frame_bytes, .. }) => {
                log::error!(
                    "shard {}: dropped a {frame_bytes}-byte message over the peer frame limit",
                    self.id
                )
            }
        }
    }

    /// Fills an AppendEntries with entries read back from the WAL, then sends it.
    pub(super) fn send_from_wal(&self, mut msg: Message, last_index: Index, bytes_max: u64) {
        let (wal, link, shard) = (self.wal.clone(), self.links.get(&msg.to).cloned(), self.id);
        glommio::spawn_local(async move {
            let Some(link) = link else { return };
            if let MessageBody::AppendEntries {
                prev_log_index,
                entries,
                ..
            } = &mut msg.body
            {
                match wal
                    .read(*prev_log_index + 1, last_index + 1, bytes_max as usize)
                    .await
                {
                    Ok(read) => *entries = read,
                    // Purged meanwhile: the leader's next probe finds the new log start.
                    Err(e) => return log::debug!("shard {shard}: catch-up read failed: {e}"),
                }
            }
            let _ = link.send(msg);
        })
        .detach();
    }
}
