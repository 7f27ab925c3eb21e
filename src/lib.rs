//! ringlog: a Raft-replicated log service for Linux.
//!
//! The crate is split the way the design asks (see `docs/engine.md`):
//! - [`allocator`]: how the binary's allocator treats freed memory.
//! - [`engine`]: the sans-IO Raft state machine: events in, commands out.
//! - [`runtime`]: node configuration, start-up checks, the dev cluster launcher.
//! - [`metrics`]: Prometheus metrics, the `/metrics` and `/health` endpoints.
//! - [`history`]: the chaos tests' checker of client histories against final logs.
//! - [`ports`]: free loopback ports for tests and local clusters, never one twice.
//! - [`proxy`]: a TCP fault proxy (delay, jitter, stall, partition) for tests and benchmarks.
//! - [`transport`]: frame codec, peer links and the client protocol's server side.
//! - [`client`]: the Rust client library used by the CLI and the benchmark.
//! - [`wal`]: the write-ahead log (segments, group commit, recovery, hard state).

pub mod allocator;
pub mod bench;
pub mod cli;
pub mod client;
pub mod engine;
pub mod history;
pub mod metrics;
pub mod ports;
pub mod proxy;
pub mod runtime;
pub mod tls;
pub mod transport;
pub mod wal;

#[cfg(test)]
mod sim;
