//! Reads by index range: recent entries from memory, older ones from disk with the
//! checksum of every record verified. On disk, a read seeks to the nearest point of
//! the segment's sparse index at or below the first entry it wants and scans forward
//! from there; sealed segments are opened through a bounded cache of open files.

use super::*;
use crate::wal::format::{DecodeError, decode_header};

/// Bytes read at once when the span a read needs is not known in advance.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// Where a read goes on disk, decided under the borrow of the WAL's state.
struct Plan<F> {
    slot: FileSlot<F>,
    name: String,
    segment_seq: u64,
    /// The index point the scan starts from.
    point_index: Index,
    point_offset: u64,
    /// The byte after the last record of the segment.
    end_pos: u64,
    /// A first guess at the span to read: up to the next index point after the
    /// range, capped by what `bytes_max` can need.
    guess_end: u64,
    /// Entries `[from, hi)` may come from this segment.
    hi: Index,
}

impl<S: Storage> Wal<S> {
    /// Entries in `[from, to)`, stopping once `bytes_max` payload bytes are collected
    /// (at least one entry). Recent entries come from memory; older ones are read
    /// from disk and their checksums verified.
    pub async fn read(&self, from: Index, to: Index, bytes_max: usize) -> WalResult<Vec<Entry>> {
        let plan = {
            let inner = self.shared.inner.borrow();
            inner.check_failed()?;
            if from < inner.log_start || to > inner.last_index + 1 || from >= to {
                return Err(WalError::OutOfRange { from, to });
            }
            let cache_first = inner.last_index + 1 - inner.cache.len() as u64;
            if from >= cache_first {
                return Ok(inner.read_cache(from, to, cache_first, bytes_max));
            }
            let k = inner
                .segments
                .iter()
                .position(|s| s.contains(from))
                .ok_or(WalError::OutOfRange { from, to })?;
            let seg = &inner.segments[k];
            let hi = to.min(seg.last_index() + 1).min(cache_first.max(from + 1));
            let (point_index, point_offset) = seg.point_at_or_below(from);
            // `bytes_max` counts payload; on disk each entry also has its header (and
            // its share of padding): scale by the segment's mean, so that one read
            // usually covers the whole answer.
            let disk_per_entry = (seg.end_pos - self.shared.block_bytes as u64) / seg.len().max(1);
            let payload_per_entry = disk_per_entry
                .saturating_sub(RECORD_HEADER_BYTES as u64)
                .max(1);
            // An answer holds at least one entry, however small `bytes_max`: with large
            // records a guess below one mean entry would read twice and copy the
            // first read into a second buffer (seen as 1.2× the RSS under a flood of
            // one-record reads).
            let want = (bytes_max as u128 * disk_per_entry as u128 / payload_per_entry as u128)
                .min(u64::MAX as u128) as u64;
            let want = want.max(disk_per_entry);
            let slack = want
                .saturating_add(SPARSE_STRIDE_BYTES)
                .max(READ_CHUNK_BYTES as u64);
            let cap = point_offset.saturating_add(slack).min(seg.end_pos);
            let guess_end = seg.point_above(hi - 1).map_or(cap, |p| p.min(cap));
            Plan {
                slot: inner.slots[k].clone(),
                name: seg.name.clone(),
                segment_seq: seg.info.segment_seq,
                point_index,
                point_offset,
                end_pos: seg.end_pos,
                guess_end,
                hi,
            }
        };
        let file = self.segment_file(&plan).await?;
        let mut reader = SpanReader {
            file: &*file,
            plan: &plan,
            base: plan.point_offset,
            first: None,
            buf: Vec::new(),
        };
        reader
            .read_entries(
                from,
                bytes_max,
                self.shared.config.record_size_bytes_max,
                self.shared.block_bytes,
            )
            .await
    }

    /// The open file of the segment `plan` reads: its slot's handle while it is one of
    /// the newest, else from the cache of open files, opened on a miss (evicting the
    /// least recently used beyond `open_segments_max - 1`).
    async fn segment_file(&self, plan: &Plan<S::File>) -> WalResult<Rc<S::File>> {
        if let Some(file) = plan.slot.get() {
            return Ok(file.clone());
        }
        let shared = &self.shared;
        {
            let mut cache = shared.open_files.borrow_mut();
            if let Some(i) = cache.iter().position(|(seq, _)| *seq == plan.segment_seq) {
                let hit = cache.remove(i).expect("found");
                let file = hit.1.clone();
                cache.push_back(hit);
                return Ok(file);
            }
        }
        // The newest segment keeps its own handle: the cache gets the other places.
        // Room is made before the open, so the bound holds while it runs too.
        let room = shared.config.open_segments_max.saturating_sub(1).max(1);
        {
            let mut cache = shared.open_files.borrow_mut();
            while cache.len() >= room {
                cache.pop_front();
            }
        }
        let file = Rc::new(
            shared
                .storage
                .open(&plan.name, false)
                .await
                .map_err(io_err(format!("opening {}", plan.name)))?,
        );
        let mut cache = shared.open_files.borrow_mut();
        cache.retain(|(seq, _)| *seq != plan.segment_seq);
        while cache.len() >= room {
            cache.pop_front();
        }
        cache.push_back((plan.segment_seq, file.clone()));
        Ok(file)
    }

    /// Closes cached handles of segments that are no longer live.
    pub(super) fn forget_files(&self, segment_seqs: &[u64]) {
        self.shared
            .open_files
            .borrow_mut()
            .retain(|(seq, _)| !segment_seqs.contains(seq));
    }
}

impl<F: StorageFile> Inner<F> {
    fn read_cache(
        &self,
        from: Index,
        to: Index,
        cache_first: Index,
        bytes_max: usize,
    ) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let range = (from - cache_first) as usize..(to - cache_first) as usize;
        for (e, _) in self.cache.range(range) {
            if !out.is_empty() && bytes + e.payload.len() > bytes_max {
                break;
            }
            bytes += e.payload.len();
            out.push(e.clone());
        }
        out
    }
}

/// Reads records forward from an index point, growing its buffer as needed.
struct SpanReader<'a, F: StorageFile> {
    file: &'a F,
    plan: &'a Plan<F>,
    /// The segment offset of `buf[0]`.
    base: u64,
    /// The first read, used as it is (no copy) while it holds everything needed.
    first: Option<F::Read>,
    /// The bytes read, once a second read had to extend the first.
    buf: Vec<u8>,
}

impl<F: StorageFile> SpanReader<'_, F> {
    fn corrupt(&self, offset: u64, index: Index, reason: &str) -> WalError {
        WalError::Corrupt {
            file: self.plan.name.clone(),
            offset,
            index,
            reason: reason.to_string(),
        }
    }

    fn read_failure(&self, offset: u64, index: Index, e: DecodeError) -> WalError {
        self.corrupt(
            offset,
            index,
            &format!("record fails verification on read ({e:?})"),
        )
    }

    /// The bytes read so far, from `base` on.
    fn bytes(&self) -> &[u8] {
        match &self.first {
            Some(first) if self.buf.is_empty() => first,
            _ => &self.buf,
        }
    }

    /// Makes sure the buffer holds the segment's bytes up to `end`.
    async fn fill_to(&mut self, end: u64, index: Index) -> WalResult<()> {
        let have = self.base + self.bytes().len() as u64;
        if end <= have {
            return Ok(());
        }
        if end > self.plan.end_pos {
            return Err(self.corrupt(have, index, "record extends past the segment's written end"));
        }
        // Later reads grow with what was read, so a bad first guess costs few reads.
        let more = READ_CHUNK_BYTES.max(self.bytes().len() / 2) as u64;
        let want = if self.first.is_none() {
            self.plan.guess_end
        } else {
            have + more
        };
        let upto = want.max(end).min(self.plan.end_pos);
        let bytes = self
            .file
            .read_at(have, (upto - have) as usize)
            .await
            .map_err(io_err(format!("reading {}", self.plan.name)))?;
        if (bytes.len() as u64) < end - have {
            return Err(self.corrupt(have, index, "segment shorter than its index says"));
        }
        match &self.first {
            None => self.first = Some(bytes),
            Some(first) => {
                if self.buf.is_empty() {
                    self.buf.extend_from_slice(first);
                }
                self.buf.extend_from_slice(&bytes);
            }
        }
        Ok(())
    }

    /// Scans from the index point to `from`, then collects entries up to the plan's
    /// `hi` or `bytes_max` payload bytes (at least one), verifying every record.
    async fn read_entries(
        &mut self,
        from: Index,
        bytes_max: usize,
        payload_max: usize,
        block: usize,
    ) -> WalResult<Vec<Entry>> {
        let plan = self.plan;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut pos = plan.point_offset;
        let mut index = plan.point_index;
        while index < plan.hi {
            let room = block as u64 - pos % block as u64;
            if room < RECORD_HEADER_BYTES as u64 {
                // The writer leaves a block's last bytes zero when no header fits.
                self.fill_to(pos + room, index).await?;
                let at = (pos - self.base) as usize;
                if self.bytes()[at..at + room as usize].iter().any(|b| *b != 0) {
                    return Err(self.corrupt(pos, index, "non-zero bytes in a block's unused end"));
                }
                pos += room;
                continue;
            }
            self.fill_to(pos + RECORD_HEADER_BYTES as u64, index)
                .await?;
            let at = (pos - self.base) as usize;
            let verify = |buf: &[u8]| verify_record(&buf[at..], plan.segment_seq, payload_max);
            // Usually the record is in the buffer already: one verification. When it
            // is not, its header says how far to read.
            let meta = match verify(self.bytes()) {
                Err(DecodeError::Short) => {
                    let len = decode_header(&self.bytes()[at..], plan.segment_seq, payload_max)
                        .map(|(_, m)| m.payload_len)
                        .map_err(|e| self.read_failure(pos, index, e))?;
                    self.fill_to(pos + (RECORD_HEADER_BYTES + len) as u64, index)
                        .await?;
                    verify(self.bytes())
                }
                other => other,
            }
            .map_err(|e| self.read_failure(pos, index, e))?;
            let at = (pos - self.base) as usize;
            let end = pos + (RECORD_HEADER_BYTES + meta.payload_len) as u64;
            let Some(kind) = meta.kind else {
                pos = end;
                continue;
            };
            if meta.index != index {
                return Err(self.corrupt(pos, index, "record has the wrong index"));
            }
            if index >= from {
                if !out.is_empty() && bytes + meta.payload_len > bytes_max {
                    break;
                }
                bytes += meta.payload_len;
                let body = at + RECORD_HEADER_BYTES;
                out.push(Entry {
                    term: meta.term,
                    index,
                    kind,
                    payload: Bytes::copy_from_slice(&self.bytes()[body..body + meta.payload_len]),
                });
            }
            index += 1;
            pos = end;
        }
        Ok(out)
    }
}
