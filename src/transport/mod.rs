//! The custom TCP transport: one framing for Raft peer traffic and the client
//! protocol. See `docs/wire-protocol.md` for every byte.
//!
//! - [`frame`]: the fixed header, frame kinds, streaming decode, typed errors.
//! - [`peer_msg`]: peer frame bodies (handshake, one kind per Raft message).
//! - [`client_msg`]: client request/response bodies and error codes.
//! - [`conn`]: reading frames under deadlines, bounded writes, small sync helpers.
//! - [`server`]: the client listener and the [`server::RequestHandler`] trait.
//! - [`peer`]: outbound peer links (two lanes, bounded queues, reconnect) and the
//!   inbound peer acceptor.

pub mod client_msg;
pub mod conn;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod peer;
pub mod peer_msg;
pub mod server;

pub use client_msg::*;
pub use frame::{FRAME_HEADER_BYTES, Frame, FrameError, FrameKind, PROTOCOL_VERSION};
pub use peer_msg::{Hello, Lane};
