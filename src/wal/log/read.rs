//! Reads by index range: recent entries from memory, older ones from disk with the
//! checksum of every record verified.

use super::*;

impl<S: Storage> Wal<S> {
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
}
