//! ringlog: a Raft-replicated log service for Linux.
//!
//! The crate is split the way the design asks (see `docs/engine.md`):
//! - [`engine`]: the sans-IO Raft state machine: events in, commands out.
//! - [`runtime`]: node configuration, start-up checks, the dev cluster launcher.
//! - [`history`]: the chaos tests' checker of client histories against final logs.

pub mod engine;
pub mod history;
pub mod runtime;

#[cfg(test)]
mod sim;
