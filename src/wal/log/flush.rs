//! Flushing: queued items become writes and syncs. Flushes overlap (bounded by
//! `flushes_in_flight_max`) but complete strictly in order. Each flush passes three
//! points, each after the previous flush passed it: its writes are done (so its
//! fdatasync, issued next, covers every earlier write too), its sync is done, and it
//! is complete (hard state, removals). A flush that creates a segment or follows
//! removals waits for the previous one to complete before it writes anything.

use super::*;
use std::future::Future;

impl<S: Storage> Wal<S> {
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
            let (done, written) = (job.done.clone(), job.written.clone());
            let durable = job.durable;
            let flush_seq = job.flush_seq;
            let result = self.run_job(&job).await;
            shared
                .inner
                .borrow_mut()
                .recycle(job.items, shared.config.flush_bytes_max);
            match result {
                Ok(()) => {
                    let mut inner = shared.inner.borrow_mut();
                    inner.durable = durable;
                    inner.stats.flushes += 1;
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
                    written.close();
                    return Err(err);
                }
            }
        }
    }

    async fn run_job(&self, job: &Job<S::File>) -> WalResult<()> {
        let shared = &self.shared;
        let wait = |event: &Rc<Semaphore>| {
            let event = event.clone();
            async move {
                event
                    .acquire(1)
                    .await
                    .map_err(|_| WalError::Failed("an earlier flush failed".into()))
            }
        };
        let wait_previous = |job: &Job<S::File>| wait(&job.wait_on);
        let mut waited = false;
        if job.write_barrier {
            wait_previous(job).await?;
            waited = true;
        }
        // The hard state goes first, durably, before any record of this flush is
        // written: records after a term change must never survive a crash that loses
        // the change. (Records before it gain nothing from waiting, and lose nothing:
        // a newer term is always safe to have recorded.) The previous flush's hard
        // state must be written before this one's, hence the wait.
        let hard_state = job.items.iter().rev().find_map(|item| match item {
            Item::HardState(state) => Some(*state),
            _ => None,
        });
        if let Some(state) = hard_state {
            if !waited {
                wait_previous(job).await?;
                waited = true;
            }
            self.write_hard_state(&state).await?;
        }
        let mut to_sync: Vec<FileSlot<S::File>> = Vec::new();
        let mut writes_started = None;
        let mut deletions: Vec<String> = Vec::new();
        let mut summary = None;
        let mut purged: Vec<String> = Vec::new();
        for item in &job.items {
            match item {
                Item::NewSegment {
                    info,
                    name,
                    slot,
                    superseded,
                    summary_of_prev,
                } => {
                    // A new segment is written only once everything before it is
                    // durable, so an older segment never has an unsynced tail when a
                    // newer one has data: recovery relies on that.
                    if !waited {
                        wait_previous(job).await?;
                        waited = true;
                    }
                    let file = self.create_segment(info, name).await?;
                    let _ = slot.set(Rc::new(file));
                    deletions.extend(superseded.iter().cloned());
                    summary = summary_of_prev.as_deref();
                }
                Item::Bytes {
                    slot, pos, data, ..
                } => {
                    if slot.get().is_none() && !waited {
                        // The segment is created by an earlier flush still in flight.
                        wait_previous(job).await?;
                        waited = true;
                    }
                    let file = slot.get().ok_or_else(|| {
                        WalError::Failed("segment file missing for a write".into())
                    })?;
                    // The chunks of one buffer go to the device together.
                    writes_started.get_or_insert_with(std::time::Instant::now);
                    let chunk_bytes = shared.config.flush_bytes_max;
                    let writes: Vec<_> = data
                        .chunks(chunk_bytes)
                        .enumerate()
                        .map(|(i, chunk)| {
                            assert_eq!(chunk.len() % shared.block_bytes, 0);
                            file.write_at(pos + (i * chunk_bytes) as u64, chunk)
                        })
                        .collect();
                    let count = writes.len() as u64;
                    join_all(writes)
                        .await
                        .map_err(io_err("writing a segment"))?;
                    let mut inner = shared.inner.borrow_mut();
                    inner.stats.writes += count;
                    inner.stats.bytes_written += data.len() as u64;
                    if !to_sync.iter().any(|s| Rc::ptr_eq(s, slot)) {
                        to_sync.push(slot.clone());
                    }
                }
                Item::HardState(_) => {}
                Item::Purge(names) => purged.extend(names.iter().cloned()),
            }
        }
        // Every earlier flush's writes must be done before this sync is issued, so
        // that it covers them; then this flush's writes count as done for the next.
        if !waited {
            wait(&job.wait_written).await?;
        }
        job.written.signal(1);
        // With write-through storage the writes above were durable when they
        // completed; their time, from the first write to the last completion, is the
        // flush's sync time.
        if shared.storage.writes_durable() {
            if let (Some(started), Some(observe)) =
                (writes_started, shared.sync_observer.borrow().as_ref())
            {
                observe(started.elapsed());
            }
        } else if !shared.config.fsync_disabled {
            for slot in &to_sync {
                if let Some(file) = slot.get() {
                    let started = std::time::Instant::now();
                    file.sync()
                        .await
                        .map_err(io_err("fdatasync of a segment"))?;
                    shared.inner.borrow_mut().stats.syncs += 1;
                    if let Some(observe) = shared.sync_observer.borrow().as_ref() {
                        observe(started.elapsed());
                    }
                }
            }
        }
        // Durability is reported in order: wait for the previous flush to complete.
        if !waited {
            wait_previous(job).await?;
        }
        for name in deletions {
            // A segment's summary goes right after it (recovery removes a summary
            // whose segment is gone).
            if let Some((_, seq)) = parse_segment_file_name(&name) {
                self.forget_files(&[seq]);
            }
            self.remove_file(&name).await?;
            self.remove_file(&summary_file_name(&name)).await?;
        }
        for name in purged {
            if let Some((_, seq)) = parse_segment_file_name(&name) {
                self.forget_files(&[seq]);
            }
            self.recycle_or_remove(&name).await?;
            self.remove_file(&summary_file_name(&name)).await?;
        }
        if let Some((name, summary)) = summary {
            self.store_summary(name, summary).await?;
        }
        Ok(())
    }

    /// Removes purged segment `name`, or keeps it to become a later spare when no
    /// purged segment waits for that yet: renamed, which takes its name away as
    /// atomically as a removal, then the directory synced.
    async fn recycle_or_remove(&self, name: &str) -> WalResult<()> {
        let shared = &self.shared;
        if shared.inner.borrow().recycle_present {
            return self.remove_file(name).await;
        }
        shared
            .storage
            .rename(name, RECYCLE_FILE_NAME)
            .await
            .map_err(io_err(format!("renaming {name} for recycling")))?;
        shared.inner.borrow_mut().recycle_present = true;
        shared
            .storage
            .sync_dir()
            .await
            .map_err(io_err("syncing the WAL directory"))
    }

    /// Removes `name` (if it exists) and syncs the directory.
    async fn remove_file(&self, name: &str) -> WalResult<()> {
        let shared = &self.shared;
        match shared.storage.remove(name).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(format!("removing {name}"))(e)),
        }
        // One directory sync per removal keeps the removals in order on disk,
        // which recovery relies on (see docs/wal-format.md).
        shared
            .storage
            .sync_dir()
            .await
            .map_err(io_err("syncing the WAL directory"))
    }

    /// Writes the summary of sealed segment `name`, then lets go of its file handle:
    /// reads of it go through the cache of open files from now on.
    async fn store_summary(&self, name: &str, summary: &Summary) -> WalResult<()> {
        let shared = &self.shared;
        let bytes = write_summary(&*shared.storage, name, summary).await?;
        let mut inner = shared.inner.borrow_mut();
        let inner = &mut *inner;
        if let Some(k) = inner.segments.iter().position(|s| s.name == name) {
            inner.segments[k].summary_bytes = bytes;
            inner.slots[k] = Rc::new(OnceCell::new());
        }
        Ok(())
    }

    /// Writes `state` to the hard-state file and syncs it.
    async fn write_hard_state(&self, state: &HardState) -> WalResult<()> {
        let shared = &self.shared;
        let mut file = shared
            .hard_state_file
            .borrow_mut()
            .take()
            .ok_or_else(|| WalError::Failed("hard-state file in use".into()))?;
        let result = file.write(state).await;
        shared.inner.borrow_mut().stats.syncs += 1;
        *shared.hard_state_file.borrow_mut() = Some(file);
        result
    }

    /// Turns the prepared spare file into segment `name`: header written and synced
    /// first, then renamed and the directory synced, so a named segment always has a
    /// valid header.
    async fn create_segment(&self, info: &SegmentInfo, name: &str) -> WalResult<S::File> {
        let shared = &self.shared;
        let spare = shared.inner.borrow_mut().spare.take();
        let (file, recycled) = match spare {
            Some(task) => task.await.map_err(io_err("preparing a segment"))?,
            None => prepare_spare(
                shared.storage.clone(),
                info.segment_size_bytes,
                self.zero_fill_next(),
                false,
            )
            .await
            .map_err(io_err("preparing a segment"))?,
        };
        // Whether the file is recycled is known only now; the header says so, since
        // recovery reads the bytes this segment has not written differently then.
        let info = &SegmentInfo { recycled, ..*info };
        if let Some(seg) = shared
            .inner
            .borrow_mut()
            .segments
            .iter_mut()
            .find(|s| s.info.segment_seq == info.segment_seq)
        {
            seg.info.recycled = recycled;
        }
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
}

impl<F: StorageFile> Inner<F> {
    /// Keeps the record buffers of a finished flush for reuse, so that steady appends
    /// do not allocate (and fault in) a new buffer per flush.
    fn recycle(&mut self, items: Vec<Item<F>>, flush_bytes_max: usize) {
        for item in items {
            if let Item::Bytes { mut data, .. } = item
                && self.buffer_pool.len() < BUFFER_POOL_MAX
                && data.capacity() <= 2 * flush_bytes_max
            {
                data.clear();
                self.buffer_pool.push(data);
            }
        }
    }

    /// Takes the queued items up to op `target`, stopping before a second segment
    /// creation (which must wait for this job to be durable), and seals the last
    /// buffer of records with padding to the block end.
    fn take_job<S: Storage<File = F>>(&mut self, target: u64, shared: &Shared<S>) -> Job<F> {
        let done = Rc::new(Semaphore::new(0));
        let wait_on = std::mem::replace(&mut self.last_done, done.clone());
        let written = Rc::new(Semaphore::new(0));
        let wait_written = std::mem::replace(&mut self.last_written, written.clone());
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
        let barrier_next = items.iter().any(|item| match item {
            Item::Purge(_) | Item::HardState(_) => true,
            Item::NewSegment { superseded, .. } => !superseded.is_empty(),
            _ => false,
        });
        let write_barrier = std::mem::replace(&mut self.barrier_pending, barrier_next);
        Job {
            items,
            wait_on,
            done,
            wait_written,
            written,
            durable,
            flush_seq,
            write_barrier,
        }
    }
}

/// Pads `data` (which starts at block-aligned `pos`) to a block boundary: a padding
/// record when it fits, zeros otherwise.
pub(super) fn pad_to_block(
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

/// Creates the spare segment file and prepares all of it: a recycled segment when
/// `recycle` (renamed, its blocks already written), else zero-filled and synced, or
/// only allocated. Returns whether the file is recycled.
pub(super) async fn prepare_spare<S: Storage>(
    storage: Rc<S>,
    size: u64,
    zero_fill: bool,
    recycle: bool,
) -> io::Result<(S::File, bool)> {
    if recycle {
        match storage.rename(RECYCLE_FILE_NAME, SPARE_FILE_NAME).await {
            Ok(()) => {
                // A segment of another size grows to this one; a larger one keeps its
                // length (its header will say how much of it is the segment).
                let file = storage.open(SPARE_FILE_NAME, false).await?;
                file.allocate(size).await?;
                file.sync().await?;
                return Ok((file, true));
            }
            // A later purge replaced the file this spare was to take and the name was
            // taken already: prepare a fresh one.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    prepare_fresh(storage, size, zero_fill)
        .await
        .map(|f| (f, false))
}

async fn prepare_fresh<S: Storage>(
    storage: Rc<S>,
    size: u64,
    zero_fill: bool,
) -> io::Result<S::File> {
    if zero_fill {
        // Written through a plain handle and synced once: on write-through storage
        // every 1 MiB of zeros would otherwise carry a device cache flush, and the
        // log's own writes would queue behind them.
        let file = storage.open_for_preparation(SPARE_FILE_NAME, true).await?;
        let chunk = (ZERO_FILL_CHUNK_BYTES as u64).min(size) as usize;
        let zeros = vec![0u8; chunk];
        let mut pos = 0u64;
        while pos < size {
            let n = ((size - pos) as usize).min(chunk);
            file.write_at(pos, &zeros[..n]).await?;
            pos += n as u64;
        }
        file.sync().await?;
        drop(file);
        // The segment's own writes go through a handle opened the normal way.
        storage.open(SPARE_FILE_NAME, false).await
    } else {
        let file = storage.open(SPARE_FILE_NAME, true).await?;
        file.allocate(size).await?;
        file.sync().await?;
        Ok(file)
    }
}

/// Runs `futures` concurrently; the first error wins (the others still finish, since a
/// buffer must not be freed while the device may read it).
async fn join_all<F: Future<Output = io::Result<()>>>(futures: Vec<F>) -> io::Result<()> {
    crate::wal::join::join_all(futures)
        .await
        .into_iter()
        .collect()
}
