//! Opening: recovery's result becomes a live log. Obsolete files go, the newest
//! segment is synced, sealed segments get their missing summaries, and the
//! bookkeeping starts from what the segments hold.

use super::*;
use crate::engine::KnownConfig;
use crate::wal::membership::{encode_membership_file, read_membership, write_membership};
use crate::wal::storage::remove_durably;

impl<S: Storage> Wal<S> {
    /// Records the configurations a log starts with (a new member's bootstrap)
    /// when `open` found none saved, so that later starts read them from here
    /// and no longer from the node's config. Only right after `open`: nothing may
    /// be submitted before it.
    pub async fn save_first_membership(&self, configs: &[KnownConfig]) -> WalResult<()> {
        {
            let inner = self.shared.inner.borrow();
            assert!(
                inner.submitted_op == 0 && inner.queue.is_empty(),
                "the first membership is saved before anything is submitted"
            );
        }
        let bytes = encode_membership_file(configs, self.shared.block_bytes);
        write_membership(&*self.shared.storage, &bytes).await
    }

    /// Recovers the log in `storage` and opens it for appends. Must run inside a
    /// glommio executor (it starts the background preparation of the next segment).
    pub async fn open(storage: S, config: WalConfig) -> WalResult<(Wal<S>, Recovered)> {
        let block_bytes = storage.block_bytes();
        config.validate(block_bytes).map_err(WalError::Usage)?;
        let mut rec = recover(&storage, &config).await?;
        remove_obsolete(&storage, &rec.obsolete).await?;
        let (hs_file, hard_state, damaged_slot) = HardStateFile::open(&storage).await?;
        let configs = read_membership(&storage).await?;
        let mut reports = std::mem::take(&mut rec.reports);
        if let Some(offset) = damaged_slot {
            reports.push(RecoveryReport::HardStateSlotDamaged { offset });
        }
        let (segments, slots) = ready_segments(&storage, std::mem::take(&mut rec.segments)).await?;
        let trims: Vec<(Index, Index)> = segments
            .iter()
            .flat_map(|s| s.trims.iter().copied())
            .collect();
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
            trims,
            configs,
        };
        let inner = Inner::recovered(&rec, segments, slots, (last_index, last_term));
        let wal = Wal {
            shared: Rc::new(Shared {
                storage: Rc::new(storage),
                in_flight: Semaphore::new(config.flushes_in_flight_max as u64),
                config,
                block_bytes,
                inner: RefCell::new(inner),
                hard_state_file: RefCell::new(Some(hs_file)),
                sync_observer: RefCell::new(None),
                open_files: RefCell::new(VecDeque::new()),
            }),
        };
        wal.start_spare();
        Ok((wal, recovered))
    }
}

impl<F: StorageFile> Inner<F> {
    /// The state of a log just recovered as `rec`, whose chained `segments` (and
    /// their file `slots`) end at index and term `last`.
    fn recovered(
        rec: &Recovery<F>,
        segments: VecDeque<Segment<F>>,
        slots: VecDeque<FileSlot<F>>,
        (last_index, last_term): (Index, Term),
    ) -> Inner<F> {
        Inner {
            failed: None,
            now_ms: 0,
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
            last_written: Rc::new(Semaphore::new(1)),
            spare: None,
            recycle_present: rec.recycle_present,
            barrier_pending: false,
            stats: WalStats::default(),
            stats_at_segment_start: WalStats::default(),
            buffer_size_hint: 0,
        }
    }
}

/// Removes the files recovery found obsolete, in its order, syncing the directory
/// after each.
async fn remove_obsolete<S: Storage>(storage: &S, obsolete: &[String]) -> WalResult<()> {
    for name in obsolete {
        remove_durably(storage, name).await?;
    }
    Ok(())
}

/// Makes the recovered `segments` ready for appends: gives each its file slot (the
/// newest one's file open), syncs the newest segment and writes missing summaries.
async fn ready_segments<S: Storage>(
    storage: &S,
    recovered: Vec<Segment<S::File>>,
) -> WalResult<(VecDeque<Segment<S::File>>, VecDeque<FileSlot<S::File>>)> {
    let mut slots = VecDeque::new();
    let mut segments = VecDeque::new();
    for mut seg in recovered {
        let slot = Rc::new(OnceCell::new());
        if let Some(file) = seg.file.take() {
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
    // Sealed segments that had to be scanned get their summary now, so the next
    // start trusts it. Superseded segments are gone by now, so each summary (of
    // the segment as chained, cut where a later segment continues the log)
    // agrees with every segment left on disk.
    let sealed = segments.len().saturating_sub(1);
    for seg in segments.iter_mut().take(sealed).filter(|s| !s.summarized) {
        seg.summary_bytes = write_summary(storage, &seg.name, &Summary::of(seg)).await?;
        seg.summarized = true;
    }
    Ok((segments, slots))
}
