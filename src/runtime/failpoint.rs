//! Faults a test can ask a real `ringlog` process to inject, through the
//! `RINGLOG_FAILPOINT` environment variable. They exist so that tests can prove what
//! the process does when a part of it fails in a way no outside fault can provoke
//! (a bug that panics one shard), without a special build.
//!
//! The variable is read once, when the node starts; an unset or empty variable
//! injects nothing, and a value that names no failpoint stops the start with an
//! error, so a mistyped failpoint never silently tests nothing.

use std::sync::OnceLock;

/// The environment variable that names the failpoint.
pub const FAILPOINT_VAR: &str = "RINGLOG_FAILPOINT";

/// One injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failpoint {
    /// `shard-panic-on-append=N`: shard N panics when a client append reaches it,
    /// standing in for any bug that panics inside a shard.
    ShardPanicOnAppend { shard: u32 },
}

static ACTIVE: OnceLock<Option<Failpoint>> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
#[error(
    "{FAILPOINT_VAR}={value:?} names no failpoint; the one known is `shard-panic-on-append=SHARD`"
)]
pub struct FailpointError {
    pub value: String,
}

/// Parses `value` (the variable's contents).
pub fn parse(value: &str) -> Result<Option<Failpoint>, FailpointError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let refuse = || FailpointError {
        value: value.to_string(),
    };
    match value.split_once('=') {
        Some(("shard-panic-on-append", shard)) => {
            let shard = shard.trim().parse().map_err(|_| refuse())?;
            Ok(Some(Failpoint::ShardPanicOnAppend { shard }))
        }
        _ => Err(refuse()),
    }
}

/// Reads the variable once per process; later calls keep the first answer.
pub fn init_from_env() -> Result<(), FailpointError> {
    let value = std::env::var(FAILPOINT_VAR).unwrap_or_default();
    let failpoint = parse(&value)?;
    if let Some(failpoint) = failpoint {
        log::warn!("{FAILPOINT_VAR} is set: this process will inject {failpoint:?}");
    }
    ACTIVE.get_or_init(|| failpoint);
    Ok(())
}

/// Called by a shard for every client append it takes in.
pub fn on_append(shard: u32) {
    if let Some(Some(Failpoint::ShardPanicOnAppend { shard: target })) = ACTIVE.get()
        && *target == shard
    {
        panic!("shard {shard}: panicking on a client append, as {FAILPOINT_VAR} asks");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_known_failpoint_and_nothing() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(
            parse("shard-panic-on-append=1").unwrap(),
            Some(Failpoint::ShardPanicOnAppend { shard: 1 })
        );
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        for bad in ["shard-panic-on-append", "shard-panic-on-append=x", "panic"] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.contains("names no failpoint"), "{bad}: {error}");
        }
    }
}
