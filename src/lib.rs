//! ringlog: a Raft-replicated log service for Linux.
//!
//! The crate is split the way the design asks (see `docs/engine.md`):
//! - [`engine`]: the sans-IO Raft state machine: events in, commands out.
//! - [`wal`]: the write-ahead log (segments, group commit, recovery, hard state).
//! - `transport`, `runtime`: the parts that do I/O (added by later work).

pub mod engine;
pub mod wal;
