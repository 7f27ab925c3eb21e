//! Flush jobs: what one flush takes off the queue.

use super::*;

impl<F: StorageFile> Inner<F> {
    /// Takes the queued items up to op `target`, stopping before a second segment
    /// creation (which must wait for this job to be durable) and around a membership
    /// save (which has a job of its own, ordered with the ops around it), and seals
    /// the last
    /// buffer of records with padding to the block end.
    pub(super) fn take_job<S: Storage<File = F>>(
        &mut self,
        target: u64,
        shared: &Shared<S>,
    ) -> Job<F> {
        let done = Rc::new(Semaphore::new(0));
        let wait_on = std::mem::replace(&mut self.last_done, done.clone());
        let written = Rc::new(Semaphore::new(0));
        let wait_written = std::mem::replace(&mut self.last_written, written.clone());
        let (items, last_index, flush_seq) = self.take_items(target, shared.block_bytes);
        let durable = self.durable_after(last_index);
        self.taken = durable;
        let barrier_next = items.iter().any(|item| match item {
            Item::Purge(_) | Item::HardState(_) | Item::Membership(_) => true,
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

    /// Takes the items of a job (see [`Inner::take_job`]). Returns them, the log's
    /// last index after the last of them, and the flush number of the last buffer of
    /// records among them.
    fn take_items(
        &mut self,
        target: u64,
        block_bytes: usize,
    ) -> (Vec<Item<F>>, Index, Option<u64>) {
        let mut items = Vec::new();
        let mut last_index = self.taken.last_index;
        let mut flush_seq = None;
        while let Some(front) = self.queue.front() {
            let alone = matches!(front.item, Item::NewSegment { .. } | Item::Membership(_));
            if front.first_op > target || (alone && !items.is_empty()) {
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
                    self.seal_buffer(*pos, data.get_mut(), *segment_seq, *seq, block_bytes);
                    flush_seq = Some(*seq);
                }
                Item::NewSegment { .. } => {
                    self.buffered_bytes -= block_bytes;
                }
                Item::HardState(_) | Item::Purge(_) | Item::Membership(_) => {}
            }
            last_index = queued.last_index;
            let last = matches!(queued.item, Item::Purge(_) | Item::Membership(_));
            items.push(queued.item);
            if last {
                // Later ops' records go to the next flush, which writes only after the
                // removals (or the membership) are durable: a purge is never undone
                // behind later appends, and a configuration entry never survives
                // without the membership saved before it.
                break;
            }
        }
        (items, last_index, flush_seq)
    }

    /// Pads buffer `data` of segment `segment_seq`, leaving the queue, to its block
    /// end; it no longer counts as buffered.
    fn seal_buffer(
        &mut self,
        pos: u64,
        data: &mut F::Buf,
        segment_seq: u64,
        flush_seq: u64,
        block_bytes: usize,
    ) {
        let before = data.len();
        pad_to_block(
            data,
            pos,
            block_bytes,
            segment_seq,
            flush_seq,
            self.durable_flush_seq,
        );
        // Padding counts as buffered until the buffer leaves the queue.
        self.buffered_bytes += data.len() - before;
        self.buffered_bytes -= data.len();
        self.buffer_size_hint = next_buffer_size_hint(self.buffer_size_hint, data.len());
        let end = pos + data.len() as u64;
        if let Some(seg) = self
            .segments
            .iter_mut()
            .find(|s| s.info.segment_seq == segment_seq)
        {
            seg.end_pos = seg.end_pos.max(end);
        }
    }

    /// What a job whose last item leaves the log ending at `last_index` makes
    /// durable: every op before the first op of what stays queued (an op whose
    /// records straddle a segment change is not complete yet).
    fn durable_after(&self, last_index: Index) -> Durable {
        match self.queue.front() {
            Some(next) => Durable {
                op: next.first_op - 1,
                last_index,
            },
            None => Durable {
                op: self.submitted_op,
                last_index: self.last_index,
            },
        }
    }
}

/// Pads `data` (which starts at block-aligned `pos`) to a block boundary: a padding
/// record when it fits, zeros otherwise.
pub(super) fn pad_to_block(
    data: &mut impl RecordBuf,
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
        data.extend_zeroed(room);
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
