//! The sans-IO Raft engine: pure, deterministic, no clock, no I/O, no async.

pub mod types;

pub use types::*;
