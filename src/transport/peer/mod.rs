//! Peer links between the shards of one Raft group on different nodes.
//!
//! Each (local shard, remote node) pair has one outbound [`PeerLink`]. A link is two
//! TCP connections, its lanes: *control* for votes, heartbeats and all responses, and
//! *bulk* for AppendEntries and LogStart. Heartbeats therefore never wait behind
//! megabytes of catch-up data, neither in our queue nor in the kernel's socket
//! buffers. Connections are one-way: a node sends its messages on the links it
//! opened and receives its peers' messages on the connections they opened to its
//! [`PeerAcceptor`], so there is no race over who dials whom.
//!
//! Queue policy (per lane, bounded):
//! - control: at most `control_queue_messages_max` messages. When full, the oldest
//!   queued Heartbeat or HeartbeatResponse is dropped to make room (a newer one
//!   supersedes it); if there is none, `send` refuses with [`SendError::Full`].
//! - bulk: at most `bulk_queue_messages_max` messages and `bulk_queue_bytes_max`
//!   bytes (one message is always accepted into an empty queue). When full, `send`
//!   refuses with [`SendError::Full`] and hands the message back: the engine's
//!   replication window should keep this from happening, and Raft treats a refused
//!   message like a lost one.
//!
//! Queued messages survive a reconnect; messages already taken into a write that
//! failed are lost (Raft retransmits).

use std::io;
use std::net::SocketAddr;

use thiserror::Error;

use super::conn::ConnError;
use super::frame::FRAME_BODY_BYTES_MAX_DEFAULT;
use crate::engine::{Message, NodeId};

mod accept;
mod link;

pub use accept::*;
pub use link::*;

/// Settings shared by a node's peer links and its peer acceptor.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub cluster_id: u64,
    /// This node's id.
    pub node_id: NodeId,
    /// This node's number of shards, sent in the handshake; a peer with another
    /// count is refused (records would be placed in different shards). `new` sets 1;
    /// the runtime sets the node's resolved count.
    pub shard_count: u32,
    /// Largest peer frame body accepted (and sent: larger messages are refused by
    /// `send`). The runtime must cut AppendEntries batches below it.
    pub frame_body_bytes_max: u32,
    pub connect_timeout_ms: u64,
    /// The whole handshake (hello out, answer back) must finish within this.
    pub handshake_timeout_ms: u64,
    pub write_timeout_ms: u64,
    /// A frame must arrive whole within this long of its first byte.
    pub frame_timeout_ms: u64,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max_ms`, and
    /// each delay is drawn uniformly from [delay/2, delay] so that links that broke
    /// together do not reconnect in lock-step.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub control_queue_messages_max: usize,
    pub bulk_queue_messages_max: usize,
    pub bulk_queue_bytes_max: usize,
    /// Frames are gathered into one buffer of up to this many bytes per write (a
    /// single larger frame is written alone).
    pub write_batch_bytes_max: usize,
    /// Inbound peer connections beyond this many are closed on accept.
    pub connections_max: usize,
    /// Receive chunk of inbound peer connections (see `FrameReader::with_read_chunk`):
    /// large, because peer connections are few and carry bulk data.
    pub read_chunk_bytes: usize,
    /// Mutual TLS on every link, both ways; None links in plaintext.
    pub tls: Option<std::sync::Arc<crate::tls::TlsContext>>,
}

impl PeerConfig {
    pub fn new(cluster_id: u64, node_id: NodeId) -> PeerConfig {
        PeerConfig {
            cluster_id,
            node_id,
            shard_count: 1,
            frame_body_bytes_max: FRAME_BODY_BYTES_MAX_DEFAULT,
            connect_timeout_ms: 1_000,
            handshake_timeout_ms: 2_000,
            write_timeout_ms: 10_000,
            frame_timeout_ms: 10_000,
            backoff_initial_ms: 50,
            backoff_max_ms: 2_000,
            control_queue_messages_max: 1_024,
            bulk_queue_messages_max: 4_096,
            bulk_queue_bytes_max: 64 * 1024 * 1024,
            write_batch_bytes_max: 1024 * 1024,
            connections_max: 1_024,
            read_chunk_bytes: 256 * 1024,
            tls: None,
        }
    }
}

/// Why `send` did not queue a message; the message is handed back.
#[derive(Debug, Error)]
pub enum SendError {
    #[error("peer link queue full")]
    Full(Message),
    #[error("message of {frame_bytes} bytes exceeds the peer frame limit")]
    TooLarge {
        frame_bytes: usize,
        message: Message,
    },
    #[error("peer link closed")]
    Closed(Message),
}

/// Why one connection attempt of a link failed.
#[derive(Debug, Error)]
pub enum LinkError {
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("handshake with {addr} failed: {source}")]
    Handshake { addr: SocketAddr, source: ConnError },
    #[error("peer at {addr} refused the link: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    #[error("peer at {addr} is not who we expected: {reason}")]
    Mismatch { addr: SocketAddr, reason: String },
    #[error("TLS with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        source: crate::tls::HandshakeError,
    },
}
