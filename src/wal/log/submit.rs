//! Submission of the engine's storage commands: they only change memory, encoding
//! records into block-aligned buffers and queueing work items in op order.

use super::*;
use crate::engine::KnownConfig;
use crate::wal::membership::encode_membership_file;

impl<S: Storage> Wal<S> {
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
        inner.trim_cache(config.cache_bytes_max);
        inner.submitted_op = op;
        Ok(())
    }

    /// Encodes entry `e` of op `op` into the newest buffer of records of the segment
    /// appends go to, starting a new segment or buffer when needed.
    fn encode_entry(&self, inner: &mut Inner<S::File>, op: u64, e: &Entry) {
        let block = self.shared.block_bytes as u64;
        let need = (RECORD_HEADER_BYTES + e.payload.len()) as u64;
        // A segment is filled to its own size: a recovered segment may be larger or
        // smaller than the configured size, which applies to new segments only.
        let fits = inner
            .segments
            .back()
            .is_some_and(|s| !s.sealed && s.end_pos + block + need <= s.info.segment_size_bytes);
        if !fits {
            let prev_term = inner.last_term;
            self.start_segment(inner, op, e.index, prev_term, false, Vec::new());
        }
        let seg_index = inner.segments.len() - 1;
        let segment_seq = inner.segments[seg_index].info.segment_seq;
        let reuse = matches!(
            inner.queue.back(),
            Some(Queued { item: Item::Bytes { segment_seq: s, .. }, .. }) if *s == segment_seq
        );
        if !reuse {
            inner.open_buffer(op, e.index, seg_index, block);
        }
        inner.push_record(op, e, seg_index, block);
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
            // Decided when the segment is created, by the file it gets.
            recycled: false,
            segment_size_bytes: self.shared.config.segment_size_bytes,
        };
        inner.next_segment_seq += 1;
        let now_ms = inner.now_ms;
        let mut summary_of_prev = None;
        if let Some(prev) = inner.segments.back_mut() {
            prev.sealed = true;
            if now_ms != 0 {
                prev.sealed_at_ms.get_or_insert(now_ms);
            }
            // Taken now, so that it agrees with this segment's header whatever is
            // submitted later; written once this segment and the removals before it
            // are durable, when every record of `prev` is too.
            if !prev.summarized {
                prev.summarized = true;
                summary_of_prev = Some(Box::new((prev.name.clone(), Summary::of(prev))));
            }
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
                summary_of_prev,
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
        let mut seqs = Vec::new();
        while inner.segments.len() > 1 && inner.segments[1].info.first_index <= before {
            let seg = inner.segments.pop_front().expect("checked");
            inner.stats.segments_purged += 1;
            inner.stats.segment_bytes_purged += seg.info.segment_size_bytes + seg.summary_bytes;
            seqs.push(seg.info.segment_seq);
            names.push(seg.name);
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
        let log_start = inner.log_start;
        drop(inner);
        self.forget_files(&seqs);
        Ok(log_start)
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

    /// Queues the replacement of the saved configurations with `configs` (the
    /// membership file, read back by [`Wal::open`] into `Recovered::configs`). The
    /// save is ordered with the other ops: it is written only once every earlier op
    /// is durable, and no later op is written before it is durable, so that a crash
    /// never keeps a configuration entry whose save it lost, nor a save that drops
    /// a configuration whose truncation it lost.
    pub fn save_membership(&self, op: u64, configs: &[KnownConfig]) -> WalResult<()> {
        let mut inner = self.shared.inner.borrow_mut();
        inner.check(op)?;
        let bytes = encode_membership_file(configs, self.shared.block_bytes);
        let last_index = inner.last_index;
        inner.queue.push_back(Queued {
            item: Item::Membership(bytes),
            first_op: op,
            last_op: op,
            last_index,
        });
        inner.submitted_op = op;
        Ok(())
    }
}

impl<F: StorageFile> Inner<F> {
    /// Queues a new buffer of records for segment `seg_index`, starting at its end.
    /// An earlier buffer of this segment may still be queued behind other items (hard
    /// state, purge): it is closed with padding so the new one starts on a block
    /// boundary.
    fn open_buffer(&mut self, op: u64, last_index: Index, seg_index: usize, block: u64) {
        let durable_seq = self.durable_flush_seq;
        let segment_seq = self.segments[seg_index].info.segment_seq;
        let earlier = self.queue.iter_mut().rev().find_map(|q| match &mut q.item {
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
            let data = data.get_mut();
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
            self.buffered_bytes += added;
            self.segments[seg_index].end_pos = end;
        }
        let end_pos = self.segments[seg_index].end_pos;
        assert_eq!(end_pos % block, 0, "a new write starts at a block boundary");
        // Every buffer gets its own flush number: no two flushes write records
        // with the same number, which recovery's torn-tail rule relies on.
        self.open_flush_seq += 1;
        let flush_seq = self.open_flush_seq;
        let slot = self.slots[seg_index].clone();
        self.queue.push_back(Queued {
            item: Item::Bytes {
                slot,
                segment_seq,
                pos: end_pos,
                data: Cell::new(F::new_buf(self.buffer_size_hint)),
                flush_seq,
            },
            first_op: op,
            last_op: op,
            last_index,
        });
    }

    /// Encodes entry `e` of op `op` at the end of the newest queued buffer (of
    /// segment `seg_index`), then indexes and caches it.
    fn push_record(&mut self, op: u64, e: &Entry, seg_index: usize, block: u64) {
        let durable_seq = self.durable_flush_seq;
        let segment_seq = self.segments[seg_index].info.segment_seq;
        let queued = self.queue.back_mut().expect("pushed above");
        queued.last_op = op;
        queued.last_index = e.index;
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
        let data = data.get_mut();
        let before = data.len();
        let abs = *pos + data.len() as u64;
        let room = (block - abs % block) as usize;
        if room < RECORD_HEADER_BYTES {
            data.extend_zeroed(room);
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
        self.buffered_bytes += added;
        let seg = &mut self.segments[seg_index];
        seg.push(e.term, record_pos);
        seg.end_pos = end;
        seg.flush_seq_max = seg.flush_seq_max.max(flush_seq);
        if let Some(before) = e.trim_before() {
            seg.trims.push((e.index, before));
        }
        self.last_index = e.index;
        self.last_term = e.term;
        self.cache_payload_bytes += e.payload.len();
        self.cache.push_back((e.clone(), flush_seq));
    }
}
