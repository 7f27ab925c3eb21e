//! The write-ahead log: ordered submission of the engine's storage commands, group
//! commit, reads, and fail-stop error handling.
//!
//! Submissions (`append`, `truncate`, `reset`, `purge`, `persist_hard_state`) only
//! change memory: they encode records into block-aligned buffers and queue work
//! items in op order. `flush` turns the queue into writes and syncs: one write per
//! `flush_bytes_max` chunk and one fdatasync for everything queued, while later
//! submissions queue behind it for the next flush. Flushes overlap (a bounded number)
//! but complete strictly in order, so the durable op only moves forward through a
//! prefix of the submitted ops.

use super::config::{Preallocate, WalConfig, ZERO_FILL_CHUNK_BYTES};
use super::error::{WalError, WalResult, io_err};
use super::format::{
    RECORD_HEADER_BYTES, RecordMeta, SEGMENT_HEADER_BYTES, SegmentInfo, encode_record,
    encode_segment_header, verify_record,
};
use super::hardstate::HardStateFile;
use super::recovery::{RecoveryReport, SPARE_FILE_NAME, recover};
use super::segment::Segment;
use super::storage::{Storage, StorageFile};
use crate::engine::{Entry, HardState, Index, Term};
use bytes::Bytes;
use glommio::sync::Semaphore;
use glommio::{Task, spawn_local};
use std::cell::{OnceCell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

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
}

/// How far the submitted ops are durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    /// Every op numbered up to this one is durable (0: none yet).
    pub op: u64,
    /// The log's last index as of that op.
    pub last_index: Index,
}

/// A segment file handle that exists once the flush creating the file has run.
type FileSlot<F> = Rc<OnceCell<F>>;

enum Item<F> {
    /// Encoded records for one segment, starting at block-aligned `pos`.
    Bytes {
        slot: FileSlot<F>,
        segment_seq: u64,
        pos: u64,
        data: Vec<u8>,
        flush_seq: u64,
    },
    /// Create a segment file; then delete the segments it supersedes (newest first).
    NewSegment {
        info: SegmentInfo,
        name: String,
        slot: FileSlot<F>,
        superseded: Vec<String>,
    },
    HardState(HardState),
    /// Delete these segments (oldest first).
    Purge(Vec<String>),
}

struct Queued<F> {
    item: Item<F>,
    /// The first and last op that added to this item.
    first_op: u64,
    last_op: u64,
    /// The log's last index after `last_op`.
    last_index: Index,
}

/// The background preparation of the next segment file.
type Spare<F> = Task<io::Result<F>>;

struct Inner<F> {
    failed: Option<String>,
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
    /// it before it syncs (or, when it creates a segment, before it writes).
    last_done: Rc<Semaphore>,
    spare: Option<Spare<F>>,
    /// The newest flush taken removes files: the next one must not write before the
    /// removals are durable, or a crash could keep its records but not the removal
    /// (a purge undone while later appends survive).
    removal_pending: bool,
}

struct Shared<S: Storage> {
    storage: Rc<S>,
    config: WalConfig,
    block_bytes: usize,
    inner: RefCell<Inner<S::File>>,
    in_flight: Semaphore,
    hard_state_file: RefCell<Option<HardStateFile<S::File>>>,
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

struct Job<F> {
    items: Vec<Item<F>>,
    wait_on: Rc<Semaphore>,
    done: Rc<Semaphore>,
    durable: Durable,
    flush_seq: Option<u64>,
    /// Wait for the previous flush before writing anything (it removes files).
    write_barrier: bool,
}

impl<S: Storage> Wal<S> {
    /// Recovers the log in `storage` and opens it for appends. Must run inside a
    /// glommio executor (it starts the background preparation of the next segment).
    pub async fn open(storage: S, config: WalConfig) -> WalResult<(Wal<S>, Recovered)> {
        let block_bytes = storage.block_bytes();
        config.validate(block_bytes).map_err(WalError::Usage)?;
        let rec = recover(&storage, &config).await?;
        for name in &rec.obsolete {
            storage
                .remove(name)
                .await
                .map_err(io_err(format!("removing {name}")))?;
            storage
                .sync_dir()
                .await
                .map_err(io_err("syncing the WAL directory"))?;
        }
        let (hs_file, hard_state, damaged_slot) = HardStateFile::open(&storage).await?;
        let mut reports = rec.reports;
        if let Some(offset) = damaged_slot {
            reports.push(RecoveryReport::HardStateSlotDamaged { offset });
        }
        let mut slots = VecDeque::new();
        let mut segments = VecDeque::new();
        for mut seg in rec.segments {
            let slot = Rc::new(OnceCell::new());
            if let Some(file) = seg.file.take() {
                let file = Rc::try_unwrap(file).map_err(|_| {
                    WalError::Usage("segment file handle shared during recovery".into())
                })?;
                let _ = slot.set(file);
            }
            slots.push_back(slot);
            segments.push_back(seg);
        }
        // Records accepted from the newest segment may not have been synced before the
        // crash; make them durable before anything is stamped as durable after them.
        if let Some(file) = slots.back().and_then(|s| s.get()) {
            file.sync()
                .await
                .map_err(io_err("syncing the newest segment"))?;
        }
        let (last_index, last_term) = match segments.back() {
            Some(seg) => (seg.last_index(), seg.last_term()),
            None => (rec.log_start - 1, rec.start_prev_term),
        };
        let recovered = Recovered {
            hard_state,
            log_start: rec.log_start,
            start_prev_term: rec.start_prev_term,
            last_index,
            last_term,
            reports,
        };
        let inner = Inner {
            failed: None,
            segments,
            slots,
            log_start: rec.log_start,
            start_prev_term: rec.start_prev_term,
            last_index,
            last_term,
            cache: VecDeque::new(),
            cache_payload_bytes: 0,
            queue: VecDeque::new(),
            buffered_bytes: 0,
            open_flush_seq: rec.flush_seq_max,
            durable_flush_seq: rec.flush_seq_max,
            next_segment_seq: rec.segment_seq_max + 1,
            submitted_op: 0,
            durable: Durable { op: 0, last_index },
            taken: Durable { op: 0, last_index },
            last_done: Rc::new(Semaphore::new(1)),
            spare: None,
            removal_pending: false,
        };
        let wal = Wal {
            shared: Rc::new(Shared {
                storage: Rc::new(storage),
                in_flight: Semaphore::new(config.flushes_in_flight_max as u64),
                config,
                block_bytes,
                inner: RefCell::new(inner),
                hard_state_file: RefCell::new(Some(hs_file)),
            }),
        };
        wal.start_spare();
        Ok((wal, recovered))
    }

    fn start_spare(&self) {
        let storage = self.shared.storage.clone();
        let size = self.shared.config.segment_size_bytes;
        let mode = self.shared.config.preallocate;
        let task = spawn_local(prepare_spare(storage, size, mode));
        self.shared.inner.borrow_mut().spare = Some(task);
    }

    // ---- submission -------------------------------------------------------------

    /// Queues `entries`, which must continue the log (first index = last index + 1,
    /// dense, terms not decreasing). Nothing is durable until a flush reports it.
    /// Fails without effect on `BufferFull` (flush first) or `RecordTooLarge`.
    pub fn append(&self, op: u64, entries: &[Entry]) -> WalResult<()> {
        let mut inner = self.shared.inner.borrow_mut();
        inner.check(op)?;
        let config = &self.shared.config;
        let block = self.shared.block_bytes;
        let mut term = inner.last_term;
        let mut bytes = 0usize;
        for (expect, e) in (inner.last_index + 1..).zip(entries) {
            if e.index != expect || e.term < term {
                return Err(WalError::Usage(format!(
                    "append of index {} term {} does not follow index {} term {}",
                    e.index,
                    e.term,
                    expect - 1,
                    term
                )));
            }
            if e.payload.len() > config.record_size_bytes_max {
                return Err(WalError::RecordTooLarge {
                    size_bytes: e.payload.len(),
                    max_bytes: config.record_size_bytes_max,
                });
            }
            term = e.term;
            // Each record may also cost the skipped end of a block.
            bytes += RECORD_HEADER_BYTES * 2 + e.payload.len();
        }
        // Segment changes may add a block of padding and a header block.
        bytes += 2 * block;
        if inner.buffered_bytes + bytes > config.buffered_bytes_max {
            return Err(WalError::BufferFull {
                buffered_bytes: inner.buffered_bytes,
            });
        }
        for e in entries {
            self.encode_entry(&mut inner, op, e);
        }
        inner.submitted_op = op;
        Ok(())
    }

    fn encode_entry(&self, inner: &mut Inner<S::File>, op: u64, e: &Entry) {
        let block = self.shared.block_bytes as u64;
        let need = (RECORD_HEADER_BYTES + e.payload.len()) as u64;
        let segment_size = self.shared.config.segment_size_bytes;
        let fits = inner
            .segments
            .back()
            .is_some_and(|s| !s.sealed && s.end_pos + block + need <= segment_size);
        if !fits {
            let prev_term = inner.last_term;
            self.start_segment(inner, op, e.index, prev_term, false, Vec::new());
        }
        let durable_seq = inner.durable_flush_seq;
        let last_index = e.index;
        let seg_index = inner.segments.len() - 1;
        let segment_seq = inner.segments[seg_index].info.segment_seq;
        let slot = inner.slots[seg_index].clone();
        let reuse = matches!(
            inner.queue.back(),
            Some(Queued { item: Item::Bytes { segment_seq: s, .. }, .. }) if *s == segment_seq
        );
        if !reuse {
            // An earlier buffer of this segment may still be queued behind other items
            // (hard state, purge): close it with padding so the new one starts on a
            // block boundary.
            let earlier = inner
                .queue
                .iter_mut()
                .rev()
                .find_map(|q| match &mut q.item {
                    Item::Bytes {
                        segment_seq: s,
                        pos,
                        data,
                        flush_seq,
                        ..
                    } if *s == segment_seq => Some((pos, data, flush_seq)),
                    _ => None,
                });
            if let Some((pos, data, flush_seq)) = earlier {
                let before = data.len();
                pad_to_block(
                    data,
                    *pos,
                    block as usize,
                    segment_seq,
                    *flush_seq,
                    durable_seq,
                );
                let (added, end) = (data.len() - before, *pos + data.len() as u64);
                inner.buffered_bytes += added;
                inner.segments[seg_index].end_pos = end;
            }
            let end_pos = inner.segments[seg_index].end_pos;
            assert_eq!(end_pos % block, 0, "a new write starts at a block boundary");
            // Every buffer gets its own flush number: no two flushes write records
            // with the same number, which recovery's torn-tail rule relies on.
            inner.open_flush_seq += 1;
            let flush_seq = inner.open_flush_seq;
            inner.queue.push_back(Queued {
                item: Item::Bytes {
                    slot,
                    segment_seq,
                    pos: end_pos,
                    data: Vec::new(),
                    flush_seq,
                },
                first_op: op,
                last_op: op,
                last_index,
            });
        }
        let queued = inner.queue.back_mut().expect("pushed above");
        queued.last_op = op;
        queued.last_index = last_index;
        let Item::Bytes {
            pos,
            data,
            flush_seq,
            ..
        } = &mut queued.item
        else {
            unreachable!("checked above")
        };
        let flush_seq = *flush_seq;
        let before = data.len();
        let abs = *pos + data.len() as u64;
        let room = (block - abs % block) as usize;
        if room < RECORD_HEADER_BYTES {
            data.resize(data.len() + room, 0);
        }
        let record_pos = *pos + data.len() as u64;
        let meta = RecordMeta {
            index: e.index,
            term: e.term,
            kind: Some(e.kind),
            payload_len: e.payload.len(),
            flush_seq,
            durable_seq,
        };
        encode_record(data, &meta, segment_seq, &e.payload);
        let end = *pos + data.len() as u64;
        let added = data.len() - before;
        inner.buffered_bytes += added;
        let seg = &mut inner.segments[seg_index];
        seg.push(e.term, record_pos);
        seg.end_pos = end;
        inner.last_index = e.index;
        inner.last_term = e.term;
        inner.cache_payload_bytes += e.payload.len();
        inner.cache.push_back((e.clone(), flush_seq));
        inner.trim_cache(self.shared.config.cache_bytes_max);
    }

    /// Queues the creation of a new segment starting at `first_index` and makes it
    /// the segment appends go to.
    fn start_segment(
        &self,
        inner: &mut Inner<S::File>,
        op: u64,
        first_index: Index,
        prev_term: Term,
        reset: bool,
        superseded: Vec<String>,
    ) {
        let info = SegmentInfo {
            segment_seq: inner.next_segment_seq,
            first_index,
            prev_term,
            reset,
        };
        inner.next_segment_seq += 1;
        if let Some(prev) = inner.segments.back_mut() {
            prev.sealed = true;
        }
        let seg: Segment<S::File> = Segment::new(info, self.shared.block_bytes);
        let slot = Rc::new(OnceCell::new());
        inner.buffered_bytes += self.shared.block_bytes;
        let last_index = first_index - 1;
        inner.queue.push_back(Queued {
            item: Item::NewSegment {
                info,
                name: seg.name.clone(),
                slot: slot.clone(),
                superseded,
            },
            first_op: op,
            last_op: op,
            last_index,
        });
        inner.segments.push_back(seg);
        inner.slots.push_back(slot);
    }

    /// Drops entries `from` and later (a follower's conflicting suffix). Ordered with
    /// the other ops: a crash leaves the log as before or after it.
    pub fn truncate(&self, op: u64, from: Index) -> WalResult<()> {
        let mut inner = self.shared.inner.borrow_mut();
        inner.check(op)?;
        if from < inner.log_start || from > inner.last_index + 1 {
            return Err(WalError::Usage(format!(
                "truncate from {from} outside [{}, {}]",
                inner.log_start,
                inner.last_index + 1
            )));
        }
        inner.check_room(self.shared.block_bytes * 2, &self.shared.config)?;
        if from <= inner.last_index {
            let prev_term = inner
                .term(from - 1)
                .expect("from - 1 is in the log or its start");
            let mut superseded = Vec::new();
            // Newest first: recovery needs superseded segments removed in that order.
            while inner
                .segments
                .back()
                .is_some_and(|s| s.info.first_index >= from)
            {
                superseded.push(inner.segments.pop_back().expect("checked").name);
                inner.slots.pop_back();
            }
            if let Some(seg) = inner.segments.back_mut() {
                seg.truncate(from);
            }
            self.start_segment(&mut inner, op, from, prev_term, false, superseded);
            inner.last_index = from - 1;
            inner.last_term = prev_term;
            while inner.cache.back().is_some_and(|(e, _)| e.index >= from) {
                let (e, _) = inner.cache.pop_back().expect("checked");
                inner.cache_payload_bytes -= e.payload.len();
            }
        }
        inner.submitted_op = op;
        Ok(())
    }

    /// Discards the whole log; it restarts empty at `start`, whose predecessor has
    /// `prev_term` (a follower behind the leader's retention).
    pub fn reset(&self, op: u64, start: Index, prev_term: Term) -> WalResult<()> {
        let mut inner = self.shared.inner.borrow_mut();
        inner.check(op)?;
        if start == 0 {
            return Err(WalError::Usage("reset to index 0".into()));
        }
        inner.check_room(self.shared.block_bytes * 2, &self.shared.config)?;
        let mut superseded: Vec<String> = inner.segments.drain(..).map(|s| s.name).collect();
        superseded.reverse();
        inner.slots.clear();
        self.start_segment(&mut inner, op, start, prev_term, true, superseded);
        inner.log_start = start;
        inner.start_prev_term = prev_term;
        inner.last_index = start - 1;
        inner.last_term = prev_term;
        inner.cache.clear();
        inner.cache_payload_bytes = 0;
        inner.submitted_op = op;
        Ok(())
    }

    /// Drops whole segments whose entries are all below `before` (retention). The
    /// newest segment is never dropped. Returns the new log start.
    pub fn purge(&self, op: u64, before: Index) -> WalResult<Index> {
        let mut inner = self.shared.inner.borrow_mut();
        inner.check(op)?;
        let mut names = Vec::new();
        while inner.segments.len() > 1 && inner.segments[1].info.first_index <= before {
            names.push(inner.segments.pop_front().expect("checked").name);
            inner.slots.pop_front();
        }
        if !names.is_empty() {
            let first = &inner.segments[0].info;
            let (start, prev_term) = (first.first_index, first.prev_term);
            inner.log_start = start;
            inner.start_prev_term = prev_term;
            while inner.cache.front().is_some_and(|(e, _)| e.index < start) {
                let (e, _) = inner.cache.pop_front().expect("checked");
                inner.cache_payload_bytes -= e.payload.len();
            }
            let last_index = inner.last_index;
            inner.queue.push_back(Queued {
                item: Item::Purge(names),
                first_op: op,
                last_op: op,
                last_index,
            });
        }
        inner.submitted_op = op;
        Ok(inner.log_start)
    }

    /// Queues a durable write of the hard state (term and vote).
    pub fn persist_hard_state(&self, op: u64, state: HardState) -> WalResult<()> {
        let mut inner = self.shared.inner.borrow_mut();
        inner.check(op)?;
        let last_index = inner.last_index;
        inner.queue.push_back(Queued {
            item: Item::HardState(state),
            first_op: op,
            last_op: op,
            last_index,
        });
        inner.submitted_op = op;
        Ok(())
    }

    // ---- flushing ---------------------------------------------------------------

    /// Makes every op submitted before this call durable: one write per
    /// `flush_bytes_max` of queued records and one fdatasync (plus a segment switch
    /// when the queue crosses one). Ops submitted while it runs go to a later flush.
    /// At most `flushes_in_flight_max` flushes run at once; further calls wait.
    /// On any write or sync error the WAL fails for good and every later call errs.
    pub async fn flush(&self) -> WalResult<Durable> {
        let shared = &self.shared;
        let _permit = shared
            .in_flight
            .acquire_permit(1)
            .await
            .map_err(|e| WalError::Failed(format!("flush slot: {e}")))?;
        let target = {
            let inner = shared.inner.borrow();
            inner.check_failed()?;
            inner.submitted_op
        };
        loop {
            let job = shared.inner.borrow_mut().take_job(target, shared);
            let done = job.done.clone();
            let durable = job.durable;
            let flush_seq = job.flush_seq;
            match self.run_job(job).await {
                Ok(()) => {
                    let mut inner = shared.inner.borrow_mut();
                    inner.durable = durable;
                    if let Some(seq) = flush_seq {
                        inner.durable_flush_seq = inner.durable_flush_seq.max(seq);
                    }
                    inner.trim_cache(shared.config.cache_bytes_max);
                    done.signal(1);
                    let more = inner.queue.front().is_some_and(|q| q.first_op <= target);
                    if !more {
                        return Ok(inner.durable);
                    }
                }
                Err(err) => {
                    let mut inner = shared.inner.borrow_mut();
                    if inner.failed.is_none() {
                        inner.failed = Some(err.to_string());
                    }
                    done.close();
                    return Err(err);
                }
            }
        }
    }

    async fn run_job(&self, job: Job<S::File>) -> WalResult<()> {
        let shared = &self.shared;
        let wait_previous = |job: &Job<S::File>| {
            let wait_on = job.wait_on.clone();
            async move {
                wait_on
                    .acquire(1)
                    .await
                    .map_err(|_| WalError::Failed("an earlier flush failed".into()))
            }
        };
        let mut waited = false;
        if job.write_barrier {
            wait_previous(&job).await?;
            waited = true;
        }
        let mut to_sync: Vec<FileSlot<S::File>> = Vec::new();
        let mut hard_state = None;
        let mut deletions: Vec<String> = Vec::new();
        for item in &job.items {
            match item {
                Item::NewSegment {
                    info,
                    name,
                    slot,
                    superseded,
                } => {
                    // A new segment is written only once everything before it is
                    // durable, so an older segment never has an unsynced tail when a
                    // newer one has data: recovery relies on that.
                    if !waited {
                        wait_previous(&job).await?;
                        waited = true;
                    }
                    let file = self.create_segment(info, name).await?;
                    let _ = slot.set(file);
                    deletions.extend(superseded.iter().cloned());
                }
                Item::Bytes {
                    slot, pos, data, ..
                } => {
                    if slot.get().is_none() && !waited {
                        // The segment is created by an earlier flush still in flight.
                        wait_previous(&job).await?;
                        waited = true;
                    }
                    let file = slot.get().ok_or_else(|| {
                        WalError::Failed("segment file missing for a write".into())
                    })?;
                    let chunk_bytes = shared.config.flush_bytes_max;
                    for (i, chunk) in data.chunks(chunk_bytes).enumerate() {
                        assert_eq!(chunk.len() % shared.block_bytes, 0);
                        file.write_at(pos + (i * chunk_bytes) as u64, chunk)
                            .await
                            .map_err(io_err("writing a segment"))?;
                    }
                    if !to_sync.iter().any(|s| Rc::ptr_eq(s, slot)) {
                        to_sync.push(slot.clone());
                    }
                }
                Item::HardState(state) => hard_state = Some(*state),
                Item::Purge(names) => deletions.extend(names.iter().cloned()),
            }
        }
        if !waited {
            wait_previous(&job).await?;
        }
        if !shared.config.fsync_disabled {
            for slot in &to_sync {
                if let Some(file) = slot.get() {
                    file.sync()
                        .await
                        .map_err(io_err("fdatasync of a segment"))?;
                }
            }
        }
        if let Some(state) = hard_state {
            let mut file = shared
                .hard_state_file
                .borrow_mut()
                .take()
                .ok_or_else(|| WalError::Failed("hard-state file in use".into()))?;
            let result = file.write(&state).await;
            *shared.hard_state_file.borrow_mut() = Some(file);
            result?;
        }
        for name in deletions {
            match shared.storage.remove(&name).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("removing {name}"))(e)),
            }
            // One directory sync per removal keeps the removals in order on disk,
            // which recovery relies on (see docs/wal-format.md).
            shared
                .storage
                .sync_dir()
                .await
                .map_err(io_err("syncing the WAL directory"))?;
        }
        Ok(())
    }

    /// Turns the prepared spare file into segment `name`: header written and synced
    /// first, then renamed and the directory synced, so a named segment always has a
    /// valid header.
    async fn create_segment(&self, info: &SegmentInfo, name: &str) -> WalResult<S::File> {
        let shared = &self.shared;
        let spare = shared.inner.borrow_mut().spare.take();
        let file = match spare {
            Some(task) => task.await.map_err(io_err("preparing a segment"))?,
            None => prepare_spare(
                shared.storage.clone(),
                shared.config.segment_size_bytes,
                shared.config.preallocate,
            )
            .await
            .map_err(io_err("preparing a segment"))?,
        };
        let mut block = vec![0u8; shared.block_bytes];
        encode_segment_header(&mut block, info, shared.block_bytes);
        assert!(SEGMENT_HEADER_BYTES <= shared.block_bytes);
        file.write_at(0, &block)
            .await
            .map_err(io_err("writing a segment header"))?;
        file.sync()
            .await
            .map_err(io_err("syncing a segment header"))?;
        shared
            .storage
            .rename(SPARE_FILE_NAME, name)
            .await
            .map_err(io_err(format!("renaming the spare segment to {name}")))?;
        shared
            .storage
            .sync_dir()
            .await
            .map_err(io_err("syncing the WAL directory"))?;
        self.start_spare();
        Ok(file)
    }

    // ---- reading ----------------------------------------------------------------

    /// Entries in `[from, to)`, stopping once `bytes_max` payload bytes are collected
    /// (at least one entry). Recent entries come from memory; older ones are read
    /// from disk and their checksums verified.
    pub async fn read(&self, from: Index, to: Index, bytes_max: usize) -> WalResult<Vec<Entry>> {
        let shared = &self.shared;
        let (slot, name, segment_seq, offsets, start, len) = {
            let inner = shared.inner.borrow();
            inner.check_failed()?;
            if from < inner.log_start || to > inner.last_index + 1 || from >= to {
                return Err(WalError::OutOfRange { from, to });
            }
            let cache_first = inner.last_index + 1 - inner.cache.len() as u64;
            if from >= cache_first {
                let mut out = Vec::new();
                let mut bytes = 0;
                let range = (from - cache_first) as usize..(to - cache_first) as usize;
                for (e, _) in inner.cache.range(range) {
                    if !out.is_empty() && bytes + e.payload.len() > bytes_max {
                        break;
                    }
                    bytes += e.payload.len();
                    out.push(e.clone());
                }
                return Ok(out);
            }
            let k = inner
                .segments
                .iter()
                .position(|s| s.contains(from))
                .ok_or(WalError::OutOfRange { from, to })?;
            let seg = &inner.segments[k];
            let first = seg.info.first_index;
            let hi = to.min(seg.last_index() + 1).min(cache_first.max(from + 1));
            let start = seg.offsets[(from - first) as usize] as u64;
            // Grow the span entry by entry until it holds `bytes_max` (at least one).
            let mut n = 1u64;
            while from + n < hi {
                let next = seg.offsets[(from + n - first) as usize] as u64;
                if next - start > bytes_max as u64 {
                    break;
                }
                n += 1;
            }
            let end = if from + n <= seg.last_index() {
                seg.offsets[(from + n - first) as usize] as u64
            } else {
                seg.end_pos
            };
            let lo = (from - first) as usize;
            (
                inner.slots[k].clone(),
                seg.name.clone(),
                seg.info.segment_seq,
                seg.offsets[lo..lo + n as usize].to_vec(),
                start,
                (end - start) as usize,
            )
        };
        let file = slot
            .get()
            .ok_or_else(|| WalError::Failed(format!("{name} not created yet")))?;
        let buf = file
            .read_at(start, len)
            .await
            .map_err(io_err(format!("reading {name}")))?;
        let mut out = Vec::with_capacity(offsets.len());
        for (i, offset) in offsets.iter().enumerate() {
            let index = from + i as u64;
            let pos = (*offset as u64 - start) as usize;
            let corrupt = |reason: &str| WalError::Corrupt {
                file: name.clone(),
                offset: *offset as u64,
                index,
                reason: reason.to_string(),
            };
            let meta = verify_record(
                buf.get(pos..).unwrap_or(&[]),
                segment_seq,
                shared.config.record_size_bytes_max,
            )
            .map_err(|e| corrupt(&format!("record fails verification on read ({e:?})")))?;
            let Some(kind) = meta.kind else {
                return Err(corrupt("padding where an entry should be"));
            };
            if meta.index != index {
                return Err(corrupt("record has the wrong index"));
            }
            let body = pos + RECORD_HEADER_BYTES;
            out.push(Entry {
                term: meta.term,
                index,
                kind,
                payload: Bytes::copy_from_slice(&buf[body..body + meta.payload_len]),
            });
        }
        Ok(out)
    }

    // ---- state --------------------------------------------------------------------

    pub fn log_start(&self) -> Index {
        self.shared.inner.borrow().log_start
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

    /// Takes the queued items up to op `target`, stopping before a second segment
    /// creation (which must wait for this job to be durable), and seals the last
    /// buffer of records with padding to the block end.
    fn take_job<S: Storage<File = F>>(&mut self, target: u64, shared: &Shared<S>) -> Job<F> {
        let done = Rc::new(Semaphore::new(0));
        let wait_on = std::mem::replace(&mut self.last_done, done.clone());
        let mut items = Vec::new();
        let mut last_index = self.taken.last_index;
        let mut flush_seq = None;
        while let Some(front) = self.queue.front() {
            if front.first_op > target
                || (matches!(front.item, Item::NewSegment { .. }) && !items.is_empty())
            {
                break;
            }
            let mut queued = self.queue.pop_front().expect("checked");
            match &mut queued.item {
                Item::Bytes {
                    pos,
                    data,
                    segment_seq,
                    flush_seq: seq,
                    ..
                } => {
                    let before = data.len();
                    pad_to_block(
                        data,
                        *pos,
                        shared.block_bytes,
                        *segment_seq,
                        *seq,
                        self.durable_flush_seq,
                    );
                    // Padding counts as buffered until the buffer leaves the queue.
                    self.buffered_bytes += data.len() - before;
                    self.buffered_bytes -= data.len();
                    let end = *pos + data.len() as u64;
                    if let Some(seg) = self
                        .segments
                        .iter_mut()
                        .find(|s| s.info.segment_seq == *segment_seq)
                    {
                        seg.end_pos = seg.end_pos.max(end);
                    }
                    flush_seq = Some(*seq);
                }
                Item::NewSegment { .. } => {
                    self.buffered_bytes -= shared.block_bytes;
                }
                Item::HardState(_) | Item::Purge(_) => {}
            }
            last_index = queued.last_index;
            let purge = matches!(queued.item, Item::Purge(_));
            items.push(queued.item);
            if purge {
                // Later ops' records go to the next flush, which writes only after the
                // removals are durable: a purge is never undone behind later appends.
                break;
            }
        }
        // The job completes every op before the first op of what stays queued (an op
        // whose records straddle a segment change is not complete yet).
        let durable = match self.queue.front() {
            Some(next) => Durable {
                op: next.first_op - 1,
                last_index,
            },
            None => Durable {
                op: self.submitted_op,
                last_index: self.last_index,
            },
        };
        self.taken = durable;
        let removes = items.iter().any(|item| match item {
            Item::Purge(_) => true,
            Item::NewSegment { superseded, .. } => !superseded.is_empty(),
            _ => false,
        });
        let write_barrier = std::mem::replace(&mut self.removal_pending, removes);
        Job {
            items,
            wait_on,
            done,
            durable,
            flush_seq,
            write_barrier,
        }
    }
}

/// Pads `data` (which starts at block-aligned `pos`) to a block boundary: a padding
/// record when it fits, zeros otherwise.
fn pad_to_block(
    data: &mut Vec<u8>,
    pos: u64,
    block: usize,
    segment_seq: u64,
    flush_seq: u64,
    durable_seq: u64,
) {
    assert_eq!(pos % block as u64, 0);
    let used = data.len() % block;
    if used == 0 {
        return;
    }
    let room = block - used;
    if room < RECORD_HEADER_BYTES {
        data.resize(data.len() + room, 0);
        return;
    }
    let payload = vec![0u8; room - RECORD_HEADER_BYTES];
    let meta = RecordMeta {
        index: 0,
        term: 0,
        kind: None,
        payload_len: payload.len(),
        flush_seq,
        durable_seq,
    };
    encode_record(data, &meta, segment_seq, &payload);
    assert_eq!(data.len() % block, 0);
}

/// Creates the spare segment file and prepares all of it: zero-filled and synced, or
/// only allocated, as configured.
async fn prepare_spare<S: Storage>(
    storage: Rc<S>,
    size: u64,
    mode: Preallocate,
) -> io::Result<S::File> {
    let file = storage.open(SPARE_FILE_NAME, true).await?;
    match mode {
        Preallocate::ZeroFill => {
            let chunk = (ZERO_FILL_CHUNK_BYTES as u64).min(size) as usize;
            let zeros = vec![0u8; chunk];
            let mut pos = 0u64;
            while pos < size {
                let n = ((size - pos) as usize).min(chunk);
                file.write_at(pos, &zeros[..n]).await?;
                pos += n as u64;
            }
        }
        Preallocate::Fallocate => file.allocate(size).await?,
    }
    file.sync().await?;
    Ok(file)
}
