//! Flushing: queued items become writes and syncs. Flushes overlap (bounded by
//! `flushes_in_flight_max`) but complete strictly in order. Each flush passes three
//! points, each after the previous flush passed it: its writes are done (so its
//! fdatasync, issued next, covers every earlier write too), its sync is done, and it
//! is complete (hard state, removals). A flush that creates a segment or follows
//! removals waits for the previous one to complete before it writes anything.

use super::*;
use crate::wal::membership::write_membership;
use std::future::Future;
use std::time::Instant;

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

    /// Carries out `job` in its turn: the hard state first, then the new segment and
    /// the records, their sync, and once the previous flush is complete the removals
    /// and the summary of the segment sealed.
    async fn run_job(&self, job: &Job<S::File>) -> WalResult<()> {
        let mut turn = Turn { job, waited: false };
        if job.write_barrier {
            turn.wait_previous().await?;
        }
        self.write_hard_state_first(&mut turn).await?;
        let written = self.write_items(&mut turn).await?;
        // Every earlier flush's writes must be done before this sync is issued, so
        // that it covers them; then this flush's writes count as done for the next.
        if !turn.waited {
            acquire(&job.wait_written).await?;
        }
        job.written.signal(1);
        self.sync_written(&written.to_sync, written.writes_started)
            .await?;
        // Durability is reported in order: wait for the previous flush to complete.
        turn.wait_previous().await?;
        self.remove_segments(written.superseded, written.purged)
            .await?;
        if let Some((name, summary)) = written.summary {
            self.store_summary(name, summary).await?;
        }
        Ok(())
    }

    /// Writes the job's newest hard state, durably, before any record of this flush:
    /// records after a term change must never survive a crash that loses the change.
    /// (Records before it gain nothing from waiting, and lose nothing: a newer term
    /// is always safe to have recorded.) The previous flush's hard state must be
    /// written before this one's, hence the wait.
    async fn write_hard_state_first(&self, turn: &mut Turn<'_, S::File>) -> WalResult<()> {
        let hard_state = turn.job.items.iter().rev().find_map(|item| match item {
            Item::HardState(state) => Some(*state),
            _ => None,
        });
        if let Some(state) = hard_state {
            turn.wait_previous().await?;
            self.write_hard_state(&state).await?;
        }
        Ok(())
    }

    /// Creates the job's new segment, if any, and writes its buffers of records;
    /// returns what is left to do once they are synced.
    async fn write_items<'a>(
        &self,
        turn: &mut Turn<'a, S::File>,
    ) -> WalResult<Written<'a, S::File>> {
        let job = turn.job;
        let mut written = Written {
            to_sync: Vec::new(),
            writes_started: None,
            superseded: Vec::new(),
            summary: None,
            purged: Vec::new(),
        };
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
                    turn.wait_previous().await?;
                    let file = self.create_segment(info, name).await?;
                    let _ = slot.set(Rc::new(file));
                    written.superseded.extend(superseded.iter().cloned());
                    written.summary = summary_of_prev.as_deref();
                }
                Item::Bytes {
                    slot, pos, data, ..
                } => {
                    if slot.get().is_none() {
                        // The segment is created by an earlier flush still in flight.
                        turn.wait_previous().await?;
                    }
                    written.writes_started.get_or_insert_with(Instant::now);
                    self.write_buffer(slot, *pos, data.take()).await?;
                    if !written.to_sync.iter().any(|s| Rc::ptr_eq(s, slot)) {
                        written.to_sync.push(slot.clone());
                    }
                }
                Item::HardState(_) => {}
                Item::Purge(names) => written.purged.extend(names.iter().cloned()),
                Item::Membership(bytes) => {
                    // Everything before the save is durable first (a truncation that
                    // dropped a configuration entry); take_items keeps later items
                    // out of this job, and the next one waits for it to complete.
                    turn.wait_previous().await?;
                    write_membership(&*self.shared.storage, bytes).await?;
                    self.shared.inner.borrow_mut().stats.syncs += 1;
                }
            }
        }
        Ok(written)
    }

    /// Writes one buffer of records at `pos` of its segment, as it is when it holds
    /// at most `flush_bytes_max`, else one write per such chunk (copied); the
    /// chunks of one buffer go to the device together.
    async fn write_buffer(
        &self,
        slot: &FileSlot<S::File>,
        pos: u64,
        data: <S::File as StorageFile>::Buf,
    ) -> WalResult<()> {
        let shared = &self.shared;
        let file = slot
            .get()
            .ok_or_else(|| WalError::Failed("segment file missing for a write".into()))?;
        let chunk_bytes = shared.config.flush_bytes_max;
        let len = data.len();
        assert_eq!(len % shared.block_bytes, 0, "a write of whole blocks");
        let count = len.div_ceil(chunk_bytes) as u64;
        let written = if len <= chunk_bytes {
            file.write_buf(pos, data).await
        } else {
            let writes = data
                .as_slice()
                .chunks(chunk_bytes)
                .enumerate()
                .map(|(i, chunk)| file.write_at(pos + (i * chunk_bytes) as u64, chunk));
            join_all(writes.collect()).await
        };
        written.map_err(io_err("writing a segment"))?;
        let mut inner = shared.inner.borrow_mut();
        inner.stats.writes += count;
        inner.stats.bytes_written += len as u64;
        Ok(())
    }

    /// Makes the job's writes durable: one fdatasync per segment written (none when
    /// fsync is disabled). With write-through storage the writes were durable when
    /// they completed; their time, from the first write to the last completion, is
    /// the flush's sync time.
    async fn sync_written(
        &self,
        to_sync: &[FileSlot<S::File>],
        writes_started: Option<Instant>,
    ) -> WalResult<()> {
        let shared = &self.shared;
        if shared.storage.writes_durable() {
            if let (Some(started), Some(observe)) =
                (writes_started, shared.sync_observer.borrow().as_ref())
            {
                observe(started.elapsed());
            }
        } else if !shared.config.fsync_disabled {
            for slot in to_sync {
                if let Some(file) = slot.get() {
                    let started = Instant::now();
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
        Ok(())
    }

    /// Removes the segments a new segment superseded, then the purged ones (one of
    /// them possibly kept for recycling). A segment's summary goes right after it
    /// (recovery removes a summary whose segment is gone).
    async fn remove_segments(&self, superseded: Vec<String>, purged: Vec<String>) -> WalResult<()> {
        let forget = |name: &str| {
            if let Some((_, seq)) = parse_segment_file_name(name) {
                self.forget_files(&[seq]);
            }
        };
        for name in superseded {
            forget(&name);
            self.remove_file(&name).await?;
            self.remove_file(&summary_file_name(&name)).await?;
        }
        for name in purged {
            forget(&name);
            self.recycle_or_remove(&name).await?;
            self.remove_file(&summary_file_name(&name)).await?;
        }
        Ok(())
    }
}

/// A job's place in the order of flushes: whether it has waited for the previous
/// flush to complete yet.
struct Turn<'a, F: StorageFile> {
    job: &'a Job<F>,
    waited: bool,
}

impl<F: StorageFile> Turn<'_, F> {
    /// Waits for the previous flush to complete, unless this job did already.
    async fn wait_previous(&mut self) -> WalResult<()> {
        if !self.waited {
            acquire(&self.job.wait_on).await?;
            self.waited = true;
        }
        Ok(())
    }
}

/// Waits for `event`, the signal of an earlier flush; it is closed if that failed.
async fn acquire(event: &Semaphore) -> WalResult<()> {
    event
        .acquire(1)
        .await
        .map_err(|_| WalError::Failed("an earlier flush failed".into()))
}

/// What a job's writes leave for after its sync.
struct Written<'a, F> {
    /// The segments written to.
    to_sync: Vec<FileSlot<F>>,
    /// When the first write started.
    writes_started: Option<Instant>,
    /// Segments a new segment superseded, newest first.
    superseded: Vec<String>,
    /// The summary of the segment before a new one.
    summary: Option<&'a (String, Summary)>,
    /// Purged segments, oldest first.
    purged: Vec<String>,
}

/// Runs `futures` concurrently; the first error wins (the others still finish, since a
/// buffer must not be freed while the device may read it).
async fn join_all<F: Future<Output = io::Result<()>>>(futures: Vec<F>) -> io::Result<()> {
    crate::wal::join::join_all(futures)
        .await
        .into_iter()
        .collect()
}
