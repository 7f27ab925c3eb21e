//! The custom TCP transport: one framing for Raft peer traffic and the client
//! protocol. See `docs/wire-protocol.md` for every byte.
//!
//! - [`frame`]: the fixed header, frame kinds, streaming decode, typed errors.
//! - [`peer_msg`]: peer frame bodies (handshake, one kind per Raft message).
//! - [`client_msg`]: client request/response bodies.
//! - [`client_error`]: the error response and its codes.
//! - [`conn`]: reading frames under deadlines, bounded writes, small sync helpers.
//! - [`server`]: the client listener and service, and the [`server::RequestHandler`]
//!   trait; `client_conn` serves one client connection.
//! - [`answer`]: what a connection owes its client: encoded answers, the limits on
//!   requests in flight, and the deadlines of answers a handler took.
//! - [`peer`]: outbound peer links (two lanes, bounded queues, reconnect) and the
//!   inbound peer acceptor and service.
//! - [`placement`]: which executor serves an accepted connection, and the hand-off
//!   of its socket to that executor.
//! - [`count`]: counters one executor writes and the metrics server reads.
//!
//! # For the runtime
//!
//! - Everything here is single-threaded (`Rc`, no `Send`): create listeners, links
//!   and clients on the executor that uses them.
//! - Peer traffic: one [`peer::PeerLink`] per (local shard, remote node), made on the
//!   shard's executor; `send` never waits. [`peer::SendError::Full`] and `TooLarge`
//!   hand the message back: treat it as lost (Raft retransmits) or hold it. Keep
//!   AppendEntries batches under `PeerConfig::frame_body_bytes_max` (48 bytes plus 24
//!   per entry plus payloads).
//! - Inbound peer traffic: a [`peer::PeerAcceptor`] accepts on one executor and, given
//!   [`placement::Doors`], hands each connection to the executor of the shard its
//!   handshake names, whose [`peer::PeerService`] calls `PeerHandler::deliver(shard,
//!   message)` there. `PeerHandler::accept` can refuse unknown shards.
//! - Client traffic: a [`server::ClientListener`] places each connection by the
//!   partition of its first request; the [`server::ClientService`] of that executor
//!   calls `RequestHandler::handle`, which may await (commit, long-poll), unless
//!   `RequestHandler::take` takes the request and its [`answer::Answer`] to answer
//!   later without a task (the shard on the same executor does, for appends). Only
//!   NotLeader, Overloaded and Unavailable
//!   may be answered for requests that were not applied: the client library retries
//!   appends on exactly those. Cap read answers by `max_bytes` and below the frame
//!   limit (an answer over the limit is replaced with InvalidRequest).
//! - Received payloads (`Entry::payload`, append records) are slices of the frame
//!   they arrived in: keeping one alive keeps that frame's buffer alive. Copy records
//!   that are retained for long (a cache) rather than pinning receive buffers.

pub mod answer;
mod client_conn;
pub mod client_error;
pub mod client_msg;
pub mod conn;
pub mod count;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod members_msg;
pub mod peer;
pub mod peer_msg;
pub mod placement;
pub mod server;
pub mod signal;

pub use client_msg::*;
pub use frame::{FRAME_HEADER_BYTES, Frame, FrameError, FrameKind, PROTOCOL_VERSION};
pub use members_msg::*;
pub use peer_msg::{Hello, Lane};
