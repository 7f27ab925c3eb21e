//! What reaches a shard from outside its executor: peer messages, client requests
//! routed by partition, and status queries. Channels are bounded; a full inbox means
//! back-pressure (clients get Overloaded, peer messages are dropped, which Raft
//! tolerates).

use bytes::Bytes;

use super::oneshot;
use crate::engine::Message;
use crate::transport::{AppendOk, PartitionInfo, ReadOk, ReadRequest, ServerError};

/// Where a shard sends one answer.
pub type Reply<T> = oneshot::Sender<Result<T, ServerError>>;

/// Inputs a shard's event loop takes, from any executor.
pub enum ShardInput {
    Peer(Message),
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
}

/// Messages and requests queued per shard before senders feel back-pressure.
pub const INBOX_CAPACITY: usize = 16 * 1024;

/// A one-answer channel.
pub fn reply_channel<T>() -> (oneshot::Sender<T>, oneshot::Receiver<T>) {
    oneshot::channel()
}
