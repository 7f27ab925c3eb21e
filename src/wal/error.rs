//! The WAL's operational failures.

use crate::engine::Index;
use std::io;

/// Everything that can go wrong with the WAL. After [`WalError::Io`] from a write or a
/// sync the WAL is failed for good: every later call returns [`WalError::Failed`].
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O error during {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("WAL refuses operations after an earlier failure: {0}")]
    Failed(String),
    /// Recovery found damaged data that is followed by valid data, so it cannot be a
    /// torn write. Nothing is dropped; the node must not start on this log as is.
    #[error(
        "WAL corruption in {file} at offset {offset} (entry index {index}): {reason}; \
         refusing to start. To recover, restart once with `ringlog serve \
         --truncate-corrupt-tail`: entries >= {index} are dropped, peers resend them, and \
         the node neither votes nor campaigns until it has caught up (docs/operations.md)"
    )]
    Corrupt {
        file: String,
        offset: u64,
        index: Index,
        reason: String,
    },
    /// The saved configurations cannot be read. Starting with a guessed membership
    /// could let two majorities decide, so the node refuses to start.
    #[error(
        "the shard's membership file {file} is unusable: {reason}; refusing to start \
         rather than guess the shard's membership. Restore the file from a backup of \
         this node, or remove this node's data and add it to the group again as a new \
         member"
    )]
    Membership { file: String, reason: String },
    #[error("WAL usage error: {0}")]
    Usage(String),
    #[error("record of {size_bytes} bytes exceeds record_size_bytes_max ({max_bytes})")]
    RecordTooLarge { size_bytes: usize, max_bytes: usize },
    #[error("WAL buffer full ({buffered_bytes} bytes waiting to be flushed); flush first")]
    BufferFull { buffered_bytes: usize },
    #[error("entries [{from}, {to}) are not in the log")]
    OutOfRange { from: Index, to: Index },
}

/// Shorthand for results of WAL operations.
pub type WalResult<T> = Result<T, WalError>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> WalError {
    let context = context.into();
    move |source| WalError::Io { context, source }
}
