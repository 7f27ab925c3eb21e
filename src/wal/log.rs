//! The write-ahead log: ordered submission of the engine's storage commands, group
//! commit, reads, and fail-stop error handling.
//!
//! Submissions (`append`, `truncate`, `reset`, `purge`, `persist_hard_state`,
//! `save_membership`) only change memory: they encode records into block-aligned buffers and queue work
//! items in op order. `flush` turns the queue into writes and syncs: one write per
//! `flush_bytes_max` chunk and one fdatasync for everything queued, while later
//! submissions queue behind it for the next flush. Flushes overlap (a bounded number)
//! but complete strictly in order, so the durable op only moves forward through a
//! prefix of the submitted ops.

use super::buffer::RecordBuf;
use super::config::{Preallocate, WalConfig, zero_fill_chunk_bytes};
use super::error::{WalError, WalResult, io_err};
use super::format::{
    RECORD_HEADER_BYTES, RecordMeta, SEGMENT_HEADER_BYTES, SegmentInfo, encode_record,
    encode_segment_header, verify_record,
};
use super::hardstate::HardStateFile;
use super::recovery::{RECYCLE_FILE_NAME, Recovery, RecoveryReport, SPARE_FILE_NAME, recover};
use super::segment::{SPARSE_STRIDE_BYTES, Segment, parse_segment_file_name, summary_file_name};
use super::storage::{Storage, StorageFile};
use super::summary::{Summary, write_summary};
use crate::engine::{Entry, HardState, Index, Term};
use bytes::Bytes;
use glommio::sync::Semaphore;
use glommio::{Task, spawn_local};
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

mod files;
mod flush;
mod job;
mod open;
mod read;
mod submit;

use files::prepare_spare;
use job::pad_to_block;

/// What recovery found, returned by [`Wal::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    pub hard_state: HardState,
    /// The first index the log holds (or would hold, when empty).
    pub log_start: Index,
    /// The term of entry `log_start - 1` (0 when the log starts at 1).
    pub start_prev_term: Term,
    pub last_index: Index,
    pub last_term: Term,
    /// Torn tails truncated and damage ignored; the runtime should log each.
    pub reports: Vec<RecoveryReport>,
    /// (index, before) of each trim entry in the log, ascending by index: the engine
    /// applies each again once it knows it is committed.
    pub trims: Vec<(Index, Index)>,
    /// The configurations last saved with `save_membership`, ascending by index.
    pub configs: Vec<crate::engine::KnownConfig>,
}

/// When a log's oldest whole segments are removed (`[retention]` of a node's
/// configuration); `None` keeps everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Remove the oldest segments while the log's segment files hold more than this.
    pub max_bytes: Option<u64>,
    /// Remove a segment once its newest record is older than this.
    pub max_age_ms: Option<u64>,
}

/// How far the submitted ops are durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    /// Every op numbered up to this one is durable (0: none yet).
    pub op: u64,
    /// The log's last index as of that op.
    pub last_index: Index,
}

/// Counters for metrics and benchmarks, since open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Flush rounds completed (each one sync of the segment written, if any).
    pub flushes: u64,
    /// Segment writes issued (each at most `flush_bytes_max` bytes).
    pub writes: u64,
    /// Bytes written to segments, padding and headers included.
    pub bytes_written: u64,
    /// fdatasync calls on segments and the hard-state file.
    pub syncs: u64,
    /// Segments removed by purges (retention and trims), and their bytes (segment
    /// file and summary), counted when the purge is submitted.
    pub segments_purged: u64,
    pub segment_bytes_purged: u64,
}

/// A segment file handle that exists once the flush creating the file has run. Only
/// the newest segments keep theirs; sealed ones are opened on demand through the
/// bounded cache of open files.
type FileSlot<F> = Rc<OnceCell<Rc<F>>>;

enum Item<F: StorageFile> {
    /// Encoded records for one segment, starting at block-aligned `pos`. The flush
    /// that writes them takes `data` (a `Cell`, since it runs on a shared job).
    Bytes {
        slot: FileSlot<F>,
        segment_seq: u64,
        pos: u64,
        data: Cell<F::Buf>,
        flush_seq: u64,
    },
    /// Create a segment file; then delete the segments it supersedes (newest first),
    /// then write the summary of the segment before it, as it was when this one was
    /// queued (consistent with this segment's header).
    NewSegment {
        info: SegmentInfo,
        name: String,
        slot: FileSlot<F>,
        superseded: Vec<String>,
        summary_of_prev: Option<Box<(String, Summary)>>,
    },
    HardState(HardState),
    /// Delete these segments (oldest first).
    Purge(Vec<String>),
    /// Replace the membership file with this encoding. A job of its own: written
    /// once everything before it is durable, and durable before anything after it
    /// is written (see [`Wal::save_membership`]).
    Membership(Vec<u8>),
}

struct Queued<F: StorageFile> {
    item: Item<F>,
    /// The first and last op that added to this item.
    first_op: u64,
    last_op: u64,
    /// The log's last index after `last_op`.
    last_index: Index,
}

/// The background preparation of the next segment file (and whether it is recycled).
type Spare<F> = Task<io::Result<(F, bool)>>;

struct Inner<F: StorageFile> {
    failed: Option<String>,
    /// The newest wall-clock time noted by the runtime (ms since the Unix epoch).
    now_ms: u64,
    segments: VecDeque<Segment<F>>,
    /// File handles of live segments, parallel to `segments`.
    slots: VecDeque<FileSlot<F>>,
    log_start: Index,
    start_prev_term: Term,
    last_index: Index,
    last_term: Term,
    /// Recent entries `cache_first..=last_index`, each with the flush number of the
    /// buffer holding its record: an entry leaves the cache only once that flush is
    /// durable, so reads never go to disk for records not yet written.
    cache: VecDeque<(Entry, u64)>,
    cache_payload_bytes: usize,
    queue: VecDeque<Queued<F>>,
    buffered_bytes: usize,
    /// The flush number of the newest buffer of records; each buffer gets its own,
    /// so records written by different flushes never share one.
    open_flush_seq: u64,
    /// Every flush numbered up to this is synced.
    durable_flush_seq: u64,
    next_segment_seq: u64,
    submitted_op: u64,
    durable: Durable,
    /// What the most recently started flush will make durable.
    taken: Durable,
    /// Completion signal of the most recently started flush: the next flush waits on
    /// it before it reports anything durable (or, when it creates a segment or
    /// follows removals, before it writes).
    last_done: Rc<Semaphore>,
    /// Signalled once the most recently started flush's writes (and all earlier
    /// ones) are done: the next flush waits on it before it syncs.
    last_written: Rc<Semaphore>,
    spare: Option<Spare<F>>,
    /// A purged segment is kept as `recycle.tmp` for the next spare.
    recycle_present: bool,
    /// The newest flush taken removes files, writes the hard state or the membership
    /// file: the next one must not write before that is durable, or a crash could
    /// keep its records but not the removal (a purge undone while later appends
    /// survive), not the hard state (entries of a term the member has not recorded,
    /// or a lost vote) or not the membership (a configuration entry in the log that
    /// the saved list lacks).
    barrier_pending: bool,
    stats: WalStats,
    /// `stats` when the newest segment was created: the writes since went to it.
    stats_at_segment_start: WalStats,
    /// What a new buffer of records is sized for (see `next_buffer_size_hint`).
    buffer_size_hint: usize,
}

/// The most a new buffer of records starts with: a burst that made one large
/// must not make every later buffer as large. Larger ones grow as they fill.
const BUFFER_SIZE_HINT_MAX_BYTES: usize = 1024 * 1024;

/// The size to give the next buffer of records, after one that reached
/// `last_bytes` while `hint_bytes` was the hint: twice the last size, or three
/// quarters of the hint when that is more, at most `BUFFER_SIZE_HINT_MAX_BYTES`.
///
/// Growing a buffer copies it, and under a steady load buffers still vary: one
/// fills while the previous flush is in flight, for as long as that flush takes.
/// Sized from the last buffer alone (at most 256 KiB), buffers grew about once for
/// every two made in the pipelined benchmark, and the copies were 1.4 % of the
/// nodes' CPU; with this hint, once for every eight (docs/performance.md, "Ninth
/// look"). The slowly falling hint remembers the larger buffers, and still shrinks
/// within a few once a burst has passed.
fn next_buffer_size_hint(hint_bytes: usize, last_bytes: usize) -> usize {
    (2 * last_bytes)
        .max(hint_bytes - hint_bytes / 4)
        .min(BUFFER_SIZE_HINT_MAX_BYTES)
}

/// See [`Wal::observe_syncs`].
type SyncObserver = Box<dyn Fn(std::time::Duration)>;

struct Shared<S: Storage> {
    storage: Rc<S>,
    config: WalConfig,
    block_bytes: usize,
    inner: RefCell<Inner<S::File>>,
    in_flight: Semaphore,
    hard_state_file: RefCell<Option<HardStateFile<S::File>>>,
    /// Told the duration of each segment fdatasync (for metrics).
    sync_observer: RefCell<Option<SyncObserver>>,
    /// Sealed segments opened for reads, most recently used last, by segment_seq:
    /// at most `open_segments_max - 1`, the newest segment holding the last place.
    open_files: RefCell<VecDeque<(u64, Rc<S::File>)>>,
}

/// One shard's write-ahead log. Cloning gives another handle to the same log (so a
/// flush can run in its own task); it is not `Send`: it lives on one executor.
pub struct Wal<S: Storage> {
    shared: Rc<Shared<S>>,
}

impl<S: Storage> Clone for Wal<S> {
    fn clone(&self) -> Self {
        Wal {
            shared: self.shared.clone(),
        }
    }
}

struct Job<F: StorageFile> {
    items: Vec<Item<F>>,
    /// The previous flush's completion, and this one's.
    wait_on: Rc<Semaphore>,
    done: Rc<Semaphore>,
    /// The previous flush's "writes done", and this one's.
    wait_written: Rc<Semaphore>,
    written: Rc<Semaphore>,
    durable: Durable,
    flush_seq: Option<u64>,
    /// Wait for the previous flush before writing anything (it removes files or
    /// writes the hard state).
    write_barrier: bool,
}

impl<S: Storage> Wal<S> {
    fn start_spare(&self) {
        let storage = self.shared.storage.clone();
        // Spares get the configured size, which `start_segment` records in the header
        // of the segment each one becomes.
        let size = self.shared.config.segment_size_bytes;
        let zero_fill_chunk = self.zero_fill_chunk_next();
        let recycle = std::mem::take(&mut self.shared.inner.borrow_mut().recycle_present);
        let task = spawn_local(prepare_spare(storage, size, zero_fill_chunk, recycle));
        let mut inner = self.shared.inner.borrow_mut();
        inner.spare = Some(task);
        inner.stats_at_segment_start = inner.stats;
    }

    /// How to prepare the next segment (see [`Preallocate::Auto`]), by the mean size
    /// of the writes since the newest segment was created: zero-filled in writes of
    /// the returned size, or, with `None`, only allocated.
    fn zero_fill_chunk_next(&self) -> Option<usize> {
        let config = &self.shared.config;
        let inner = self.shared.inner.borrow();
        let (now, start) = (inner.stats, inner.stats_at_segment_start);
        let mean_write_bytes = (now.bytes_written - start.bytes_written)
            .checked_div(now.writes - start.writes)
            .unwrap_or(0);
        let zero_fill = match config.preallocate {
            Preallocate::ZeroFill => true,
            Preallocate::Fallocate => false,
            Preallocate::Auto => mean_write_bytes < config.zero_fill_write_bytes_max as u64,
        };
        zero_fill.then(|| zero_fill_chunk_bytes(mean_write_bytes))
    }

    pub fn log_start(&self) -> Index {
        self.shared.inner.borrow().log_start
    }

    /// Notes the wall-clock time (ms since the Unix epoch); the runtime calls it every
    /// tick. Sealed segments remember the time noted when they were sealed, and their
    /// summaries keep it across restarts; a segment sealed before any time was noted
    /// takes the first time noted after (so retention by age never removes it earlier
    /// than it should).
    pub fn note_time_ms(&self, now_ms: u64) {
        let mut inner = self.shared.inner.borrow_mut();
        inner.now_ms = now_ms;
        let newest = inner.segments.len().saturating_sub(1);
        for seg in inner.segments.iter_mut().take(newest) {
            seg.sealed_at_ms.get_or_insert(now_ms);
        }
    }

    /// Bytes of the disk this log uses: live segment files, their summaries, the
    /// spare segment being prepared and a purged segment kept for recycling (one
    /// configured segment each).
    pub fn disk_bytes(&self) -> u64 {
        let inner = self.shared.inner.borrow();
        let segments: u64 = inner
            .segments
            .iter()
            .map(|s| s.info.segment_size_bytes + s.summary_bytes)
            .sum();
        let size = self.shared.config.segment_size_bytes;
        let spare = if inner.spare.is_some() { size } else { 0 };
        let recycle = if inner.recycle_present { size } else { 0 };
        segments + spare + recycle
    }

    /// Bytes of memory the log's index takes (sparse index points, term runs, trim
    /// entries and per-segment bookkeeping; the read cache is not counted).
    pub fn index_memory_bytes(&self) -> usize {
        let inner = self.shared.inner.borrow();
        inner
            .segments
            .iter()
            .map(|s| s.index_memory_bytes())
            .sum::<usize>()
            + inner.segments.capacity() * size_of::<FileSlot<S::File>>()
    }

    /// The index before which `policy` removes the log at `now_ms`: the first index
    /// of the oldest segment it keeps, or `None` when it removes nothing. Only whole
    /// segments go, and never the newest one.
    pub fn retention_point(&self, policy: &RetentionPolicy, now_ms: u64) -> Option<Index> {
        let inner = self.shared.inner.borrow();
        let mut total: u64 = inner
            .segments
            .iter()
            .map(|s| s.info.segment_size_bytes)
            .sum();
        let mut point = None;
        for pair in inner.segments.iter().collect::<Vec<_>>().windows(2) {
            let (oldest, next) = (pair[0], pair[1]);
            let over_bytes = policy.max_bytes.is_some_and(|max| total > max);
            let over_age = policy.max_age_ms.is_some_and(|max| {
                oldest
                    .sealed_at_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) > max)
            });
            if !over_bytes && !over_age {
                break;
            }
            total -= oldest.info.segment_size_bytes;
            point = Some(next.info.first_index);
        }
        point
    }

    pub fn last_index(&self) -> Index {
        self.shared.inner.borrow().last_index
    }

    pub fn last_term(&self) -> Term {
        self.shared.inner.borrow().last_term
    }

    /// Term of `index`, for `log_start - 1 <= index <= last_index`.
    pub fn term(&self, index: Index) -> Option<Term> {
        self.shared.inner.borrow().term(index)
    }

    /// What the last completed flush made durable.
    pub fn durable(&self) -> Durable {
        self.shared.inner.borrow().durable
    }

    /// Bytes of submitted records not yet written (bounded by `buffered_bytes_max`).
    pub fn buffered_bytes(&self) -> usize {
        self.shared.inner.borrow().buffered_bytes
    }

    /// Whether submitted ops are waiting for a flush.
    pub fn has_unflushed(&self) -> bool {
        !self.shared.inner.borrow().queue.is_empty()
    }

    /// Calls `observer` with the duration of every segment fdatasync from now on (with
    /// write-through storage: of every flush's durable writes), so that the runtime
    /// can keep a latency histogram without the WAL knowing about metrics.
    pub fn observe_syncs(&self, observer: impl Fn(std::time::Duration) + 'static) {
        *self.shared.sync_observer.borrow_mut() = Some(Box::new(observer));
    }

    pub fn stats(&self) -> WalStats {
        self.shared.inner.borrow().stats
    }

    /// The error that failed the WAL, if it failed.
    pub fn failure(&self) -> Option<String> {
        self.shared.inner.borrow().failed.clone()
    }
}

impl<F: StorageFile> Inner<F> {
    fn check_failed(&self) -> WalResult<()> {
        match &self.failed {
            Some(reason) => Err(WalError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    fn check(&self, op: u64) -> WalResult<()> {
        self.check_failed()?;
        if op <= self.submitted_op {
            return Err(WalError::Usage(format!(
                "op {op} does not follow op {}",
                self.submitted_op
            )));
        }
        Ok(())
    }

    fn check_room(&self, bytes: usize, config: &WalConfig) -> WalResult<()> {
        if self.buffered_bytes + bytes > config.buffered_bytes_max {
            return Err(WalError::BufferFull {
                buffered_bytes: self.buffered_bytes,
            });
        }
        Ok(())
    }

    fn term(&self, index: Index) -> Option<Term> {
        if index + 1 == self.log_start {
            return Some(self.start_prev_term);
        }
        if index < self.log_start || index > self.last_index {
            return None;
        }
        self.segments
            .iter()
            .rev()
            .find(|s| s.contains(index))
            .and_then(|s| s.term_at(index))
    }

    fn trim_cache(&mut self, cache_bytes_max: usize) {
        while self.cache_payload_bytes > cache_bytes_max
            && self
                .cache
                .front()
                .is_some_and(|(_, seq)| *seq <= self.durable_flush_seq)
        {
            let (e, _) = self.cache.pop_front().expect("checked");
            self.cache_payload_bytes -= e.payload.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BUFFER_SIZE_HINT_MAX_BYTES, next_buffer_size_hint};

    #[test]
    fn the_buffer_hint_doubles_the_last_size_and_falls_slowly() {
        assert_eq!(next_buffer_size_hint(0, 100_000), 200_000);
        // A small buffer after a large one: the hint falls by a quarter.
        assert_eq!(next_buffer_size_hint(400_000, 10_000), 300_000);
        // A burst is remembered within the cap, never past it.
        assert_eq!(
            next_buffer_size_hint(0, 4 << 20),
            BUFFER_SIZE_HINT_MAX_BYTES
        );
        // Once the burst has passed, the hint comes down to twice the load.
        let mut hint = BUFFER_SIZE_HINT_MAX_BYTES;
        let mut buffers = 0;
        while hint > 8_192 {
            hint = next_buffer_size_hint(hint, 4_096);
            buffers += 1;
        }
        assert_eq!(hint, 8_192);
        assert!(buffers <= 20, "{buffers} buffers to shrink from the cap");
    }
}
