//! The write-ahead log: segmented, direct-I/O, crc32 per record, group commit, and
//! the hard state in its own two-slot file. The on-disk format and the recovery
//! rules are in `docs/wal-format.md`.
//!
//! One [`Wal`] per shard, driven by the runtime: it submits the engine's storage
//! commands in op order (`append`, `truncate`, `reset`, `purge`,
//! `persist_hard_state`), calls [`Wal::flush`] once per turn, and tells the engine
//! the [`Durable`] op it returns. Op numbers must strictly increase from 1 within one
//! open WAL (0 means "nothing durable yet"). Submissions never block: when
//! `buffered_bytes_max` is reached an append fails with `BufferFull` and nothing is
//! applied; the runtime then awaits a flush and submits again.

pub mod config;
pub mod error;
pub mod format;
pub mod hardstate;
pub mod log;
pub mod recovery;
pub mod scan;
pub mod segment;
pub mod sim;
pub mod storage;

pub use config::{Preallocate, WalConfig};
pub use error::{WalError, WalResult};
pub use log::{Durable, Recovered, Wal, WalStats};
pub use recovery::RecoveryReport;
pub use storage::{DmaStorage, Storage, StorageFile};
