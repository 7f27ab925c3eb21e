//! The runtime: what turns the engine's decisions into disk writes and network
//! sends. This module holds the node's configuration and its start-up checks; the
//! per-core event loop joins it with the WAL and the transport.

pub mod config;
pub mod dev;
pub mod preflight;
