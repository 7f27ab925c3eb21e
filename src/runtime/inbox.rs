//! What reaches a shard from outside its executor: peer messages, client requests
//! routed by partition, and status queries. They travel in two lanes, each bounded
//! in count and in bytes: peer messages in their own, which the shard drains first,
//! so that a flood of client requests can neither crowd Raft's heartbeats and votes
//! out of the queue nor delay them behind itself. A full client lane answers
//! Overloaded; a full peer lane drops the message, which Raft tolerates
//! (retransmission), and counts it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use super::oneshot;
use crate::engine::{Index, MembershipChange, Message, MessageBody, NodeId};
use crate::transport::{
    AppendOk, PartitionInfo, PartitionMembers, ReadOk, ReadRequest, ServerError, TransferOk, TrimOk,
};

/// The refusal for a request a stopping node did not take and cannot point
/// elsewhere: clients retry it (at another node once this one is gone).
pub fn shutting_down() -> ServerError {
    ServerError::Unavailable {
        reason: "node shutting down".into(),
    }
}

/// Where a shard sends one answer.
pub type Reply<T> = oneshot::Sender<Result<T, ServerError>>;

/// Client requests and status queries a shard's event loop takes, from any executor.
pub enum ShardInput {
    Append {
        records: Vec<Bytes>,
        reply: Reply<AppendOk>,
    },
    Read {
        request: ReadRequest,
        reply: Reply<ReadOk>,
    },
    Info {
        reply: oneshot::Sender<PartitionInfo>,
    },
    /// Remove the records before `before` on every member (through the log).
    Trim { before: Index, reply: Reply<TrimOk> },
    /// Hand leadership to `to` (the most up-to-date follower when None).
    Transfer {
        to: Option<NodeId>,
        reply: Reply<TransferOk>,
    },
    /// The members as this shard leads them (NotLeader elsewhere).
    Members { reply: Reply<PartitionMembers> },
    /// Change the members by one; answered with the configuration entry's index
    /// once it commits.
    ChangeMembership {
        change: MembershipChange,
        reply: Reply<Index>,
    },
}

impl ShardInput {
    /// What the input holds in memory beyond its fixed size: an append's payloads.
    pub fn payload_bytes(&self) -> usize {
        match self {
            ShardInput::Append { records, .. } => records.iter().map(Bytes::len).sum(),
            ShardInput::Read { .. }
            | ShardInput::Info { .. }
            | ShardInput::Trim { .. }
            | ShardInput::Transfer { .. }
            | ShardInput::Members { .. }
            | ShardInput::ChangeMembership { .. } => 0,
        }
    }
}

/// The payload bytes a peer message holds: those of an AppendEntries' entries.
pub fn message_payload_bytes(message: &Message) -> usize {
    match &message.body {
        MessageBody::AppendEntries { entries, .. } => entries.iter().map(|e| e.payload.len()).sum(),
        _ => 0,
    }
}

/// Client requests queued per shard before clients hear Overloaded.
pub const INBOX_CAPACITY: usize = 16 * 1024;
/// Append payload bytes queued per shard before clients hear Overloaded: the count
/// alone would let 16 Ki large appends hold gigabytes.
pub const INBOX_BYTES_MAX: usize = 32 << 20;
/// Peer messages queued per shard before they are dropped. Heartbeats, votes and
/// answers are small; AppendEntries are bounded by each leader's in-flight window,
/// so a healthy cluster stays far below both bounds.
pub const PEER_INBOX_CAPACITY: usize = 4 * 1024;
/// AppendEntries payload bytes queued per shard before peer messages are dropped.
pub const PEER_INBOX_BYTES_MAX: usize = 64 << 20;

/// The sending end of a lane; clones share the lane's bounds.
pub struct LaneSender<T> {
    tx: flume::Sender<(T, usize)>,
    queued_bytes: Arc<AtomicUsize>,
    bytes_max: usize,
}

impl<T> Clone for LaneSender<T> {
    fn clone(&self) -> Self {
        LaneSender {
            tx: self.tx.clone(),
            queued_bytes: self.queued_bytes.clone(),
            bytes_max: self.bytes_max,
        }
    }
}

/// The receiving end of a lane (the shard).
pub struct LaneReceiver<T> {
    rx: flume::Receiver<(T, usize)>,
    queued_bytes: Arc<AtomicUsize>,
}

impl<T> Clone for LaneReceiver<T> {
    fn clone(&self) -> Self {
        LaneReceiver {
            rx: self.rx.clone(),
            queued_bytes: self.queued_bytes.clone(),
        }
    }
}

/// Why a lane did not take an item; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum LaneError<T> {
    /// At its count or byte bound.
    Full(T),
    /// The shard is gone.
    Disconnected(T),
}

/// A queue into a shard holding at most `count_max` items and `bytes_max` bytes.
/// An item larger than `bytes_max` alone is taken when the lane is empty, so that
/// the byte bound never refuses an item for ever.
pub fn lane<T>(count_max: usize, bytes_max: usize) -> (LaneSender<T>, LaneReceiver<T>) {
    let (tx, rx) = flume::bounded(count_max);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let sender = LaneSender {
        tx,
        queued_bytes: queued_bytes.clone(),
        bytes_max,
    };
    (sender, LaneReceiver { rx, queued_bytes })
}

impl<T> LaneSender<T> {
    /// Queues `item`, which holds `bytes`, unless the lane is at a bound.
    pub fn try_send(&self, item: T, bytes: usize) -> Result<(), LaneError<T>> {
        let before = self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        if before > 0 && before + bytes > self.bytes_max {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(LaneError::Full(item));
        }
        self.tx.try_send((item, bytes)).map_err(|e| {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            match e {
                flume::TrySendError::Full((item, _)) => LaneError::Full(item),
                flume::TrySendError::Disconnected((item, _)) => LaneError::Disconnected(item),
            }
        })
    }
}

impl<T> LaneReceiver<T> {
    /// The next item, if one is queued.
    pub fn try_recv(&self) -> Option<T> {
        self.rx.try_recv().ok().map(|item| self.taken(item))
    }

    /// Waits for the next item; `None` once every sender is gone and the lane is empty.
    pub async fn recv_async(&self) -> Option<T> {
        self.rx.recv_async().await.ok().map(|item| self.taken(item))
    }

    fn taken(&self, (item, bytes): (T, usize)) -> T {
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        item
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }
}

/// A one-answer channel.
pub fn reply_channel<T>() -> (oneshot::Sender<T>, oneshot::Receiver<T>) {
    oneshot::channel()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_is_bounded_in_count() {
        let (tx, rx) = lane::<u32>(2, 1 << 20);
        assert_eq!(tx.try_send(1, 0), Ok(()));
        assert_eq!(tx.try_send(2, 0), Ok(()));
        assert_eq!(tx.try_send(3, 0), Err(LaneError::Full(3)));
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(tx.try_send(3, 0), Ok(()));
    }

    #[test]
    fn a_lane_is_bounded_in_bytes_but_takes_one_large_item_when_empty() {
        let (tx, rx) = lane::<u32>(100, 10);
        assert_eq!(tx.try_send(1, 25), Ok(()), "alone, a large item is taken");
        assert_eq!(tx.try_send(2, 1), Err(LaneError::Full(2)));
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(rx.queued_bytes(), 0);
        assert_eq!(tx.try_send(2, 6), Ok(()));
        assert_eq!(tx.try_send(3, 4), Ok(()));
        assert_eq!(tx.try_send(4, 1), Err(LaneError::Full(4)));
        assert_eq!(rx.queued_bytes(), 10);
        drop(rx);
        assert_eq!(tx.try_send(5, 0), Err(LaneError::Disconnected(5)));
    }
}
