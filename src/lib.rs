//! ringlog: a Raft-replicated log service for Linux.
//!
//! The crate is split the way the design asks (see `docs/engine.md`):
//! - [`engine`]: the sans-IO Raft state machine: events in, commands out.
//! - [`transport`]: frame codec, peer links and the client protocol's server side.
//! - [`client`]: the Rust client library used by the CLI and the benchmark.
//! - [`runtime`]: node configuration, start-up checks, the dev cluster launcher.
//! - [`history`]: the chaos tests' checker of client histories against final logs.
//! - [`proxy`]: a TCP fault proxy (delay, jitter, stall, partition) for tests and benchmarks.

pub mod client;
pub mod engine;
pub mod history;
pub mod proxy;
pub mod runtime;
pub mod transport;

#[cfg(test)]
mod sim;
