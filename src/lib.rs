//! ringlog: a Raft-replicated log service for Linux.
//!
//! The crate is split the way the design asks (see `docs/engine.md`):
//! - [`engine`]: the sans-IO Raft state machine: events in, commands out.
//! - [`transport`]: frame codec, peer links and the client protocol's server side.
//! - [`client`]: the Rust client library used by the CLI and the benchmark.
//! - `wal`, `runtime`: the parts that do disk I/O and drive the engine (added by later work).

pub mod client;
pub mod engine;
pub mod transport;

#[cfg(test)]
mod sim;
