//! The write-ahead log: segmented, direct-I/O, crc32 per record, group commit, and
//! the hard state in its own two-slot file. The on-disk format and the recovery
//! rules are in `docs/wal-format.md`.
//!
//! One [`Wal`] per shard, driven by the runtime: it submits the engine's storage
//! commands in op order (`append`, `truncate`, `reset`, `purge`,
//! `persist_hard_state`, `save_membership`), calls [`Wal::flush`] once per turn,
//! and tells the engine the [`Durable`] op it returns. Op numbers must strictly increase from 1 within one
//! open WAL (0 means "nothing durable yet"). Submissions never block: when
//! `buffered_bytes_max` is reached an append fails with `BufferFull` and nothing is
//! applied; the runtime then awaits a flush and submits again.
//!
//! ```text
//! let (wal, recovered) = Wal::open(DmaStorage::new(dir)?, WalConfig::default()).await?;
//! for report in &recovered.reports { log::warn!("{report}") }   // torn tail etc.
//! // each turn, in command order:
//! wal.append(op, &entries)?;            // AppendLog
//! wal.truncate(op, from)?;              // TruncateLog
//! wal.reset(op, start, prev_term)?;     // ResetLog
//! wal.purge(op, before)?;               // PurgeLog (whole segments; returns the new start)
//! wal.persist_hard_state(op, state)?;   // PersistHardState
//! wal.save_membership(op, &configs)?;   // SaveMembership (the file `membership`)
//! // then, without blocking the turn (at most flushes_in_flight_max at once):
//! let w = wal.clone();
//! spawn_local(async move { let durable = w.flush().await?; /* tell the engine durable.op */ });
//! ```

pub mod buffer;
pub mod config;
pub mod dir;
pub mod error;
pub mod format;
pub mod hardstate;
pub mod join;
pub mod log;
pub mod membership;
pub mod recovery;
pub mod scan;
pub mod segment;
pub mod sim;
pub mod storage;
pub mod summary;

pub use config::{OPEN_SEGMENTS_MAX_DEFAULT, Preallocate, WalConfig};
pub use error::{WalError, WalResult};
pub use log::{Durable, Recovered, RetentionPolicy, Wal, WalStats};
pub use recovery::RecoveryReport;
pub use storage::{DmaStorage, Storage, StorageFile};
