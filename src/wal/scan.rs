//! Scanning one segment's bytes: every record's checksum is verified, indexes must be
//! dense, and the first position that is not a valid record is classified (see
//! "Recovery rules" in `docs/wal-format.md`).

use super::format::{
    DecodeError, RECORD_HEADER_BYTES, RECORD_MAGIC, RecordHeader, RecordMeta, SegmentInfo,
    verify_record,
};
use crate::engine::{EntryKind, Index, Term};
use zerocopy::FromBytes;

/// The stop reason of a zero-filled end: where a log normally ends.
pub const END_OF_RECORDS: &str = "end of records";
/// The stop reason in a recycled segment at a block boundary that holds no header
/// of this segment: the stale bytes of the file's previous segment begin there.
pub const STALE_END: &str = "end of records (stale bytes of a recycled file follow)";

/// Whether a scan that stopped for `reason` found the segment's normal end.
pub fn is_clean_end(reason: &str) -> bool {
    reason == END_OF_RECORDS || reason == STALE_END
}

/// Whether `bytes` start with what this segment's writer would have put there: the
/// record magic and this segment's number. A torn or damaged write of this segment
/// keeps both (a sector is written whole, and the header is a sector's first 48
/// bytes); a stale record of the file's previous segment carries another number.
fn own_header(bytes: &[u8], segment_seq: u64) -> bool {
    RecordHeader::read_from_prefix(bytes)
        .is_ok_and(|(h, _)| h.magic == RECORD_MAGIC && h.segment_seq.get() == segment_seq as u32)
}

/// The result of scanning one segment.
#[derive(Debug, Default)]
pub struct Scan {
    /// (offset, term) of each valid entry, from the segment's first index on.
    pub entries: Vec<(u64, Term)>,
    /// (index, before) of each valid trim entry.
    pub trims: Vec<(Index, Index)>,
    /// The byte after the last valid record (or padding).
    pub end_pos: u64,
    /// Where scanning stopped, if before the end of the segment.
    pub stop: Option<Stop>,
    /// Highest flush number of any valid record, before or after the stop.
    pub flush_seq_max: u64,
    /// Highest durable-flush stamp of any valid record, before or after the stop.
    pub durable_seq_max: u64,
}

/// Where and why a scan stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stop {
    pub offset: u64,
    /// The index the next record would have had.
    pub index: Index,
    pub reason: &'static str,
}

/// How the bytes after a stop look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// Zeros from a block boundary to the end: the log simply ends here.
    Clean,
    /// Invalid bytes that cannot hold acknowledged data: a torn, unsynced write.
    Torn,
    /// A valid record that was already durable follows the damage: corruption.
    Corrupt { reason: String },
}

/// Scans `bytes` (a whole segment file, header block included).
pub fn scan_segment(
    bytes: &[u8],
    info: &SegmentInfo,
    block_bytes: usize,
    payload_max: usize,
) -> Scan {
    let mut scanner = Scanner {
        scan: Scan::default(),
        info,
        block_bytes,
        payload_max,
        next_index: info.first_index,
        last_term: info.prev_term,
    };
    let mut pos = block_bytes;
    while pos < bytes.len() {
        let room = block_bytes - pos % block_bytes;
        let step = if room < RECORD_HEADER_BYTES {
            skip_block_end(bytes, pos, room)
        } else {
            scanner.record_at(bytes, pos)
        };
        match step {
            Ok(end) => {
                pos = end;
                scanner.scan.end_pos = end as u64;
            }
            Err(reason) => {
                scanner.scan.stop = Some(Stop {
                    offset: pos as u64,
                    index: scanner.next_index,
                    reason,
                });
                break;
            }
        }
    }
    let mut scan = scanner.scan;
    if scan.end_pos == 0 {
        scan.end_pos = block_bytes as u64;
    }
    scan
}

/// Passes over the `room` bytes at `pos`, too few for a record header. The writer
/// never starts a record this close to a block end; it leaves zeros, which must
/// still be zeros. Returns where the next block starts, or why the scan stops.
fn skip_block_end(bytes: &[u8], pos: usize, room: usize) -> Result<usize, &'static str> {
    if bytes[pos..(pos + room).min(bytes.len())]
        .iter()
        .any(|b| *b != 0)
    {
        return Err("non-zero bytes in a block's unused end");
    }
    Ok(pos + room)
}

/// A scan in progress through one segment.
struct Scanner<'a> {
    scan: Scan,
    info: &'a SegmentInfo,
    block_bytes: usize,
    payload_max: usize,
    /// The index the next entry must have.
    next_index: Index,
    /// The term of the last entry (or of the segment's predecessor).
    last_term: Term,
}

impl Scanner<'_> {
    /// Verifies the record at `pos` and takes it in. Returns where the next record
    /// would start, or why the scan stops.
    fn record_at(&mut self, bytes: &[u8], pos: usize) -> Result<usize, &'static str> {
        let (info, block_bytes) = (self.info, self.block_bytes);
        match verify_record(&bytes[pos..], info.segment_seq, self.payload_max) {
            Ok(meta) => self.take_in(bytes, pos, &meta),
            Err(DecodeError::Zero) => Err(END_OF_RECORDS),
            Err(DecodeError::Short) => Err("record extends past the segment end"),
            Err(DecodeError::Invalid)
                if info.recycled
                    && pos.is_multiple_of(block_bytes)
                    && !own_header(&bytes[pos..], info.segment_seq) =>
            {
                Err(STALE_END)
            }
            Err(DecodeError::Invalid) => Err("record header or checksum invalid"),
        }
    }

    /// Takes in valid record `meta` at `pos`: padding must end a block, and entries
    /// must continue the segment's indexes with terms that never decrease.
    fn take_in(
        &mut self,
        bytes: &[u8],
        pos: usize,
        meta: &RecordMeta,
    ) -> Result<usize, &'static str> {
        let end = pos + RECORD_HEADER_BYTES + meta.payload_len;
        let scan = &mut self.scan;
        if meta.kind.is_none() {
            if !end.is_multiple_of(self.block_bytes) {
                return Err("padding does not end a block");
            }
        } else if meta.index != self.next_index {
            return Err("entry index out of sequence");
        } else if meta.term < self.last_term {
            return Err("entry term decreases");
        } else {
            if meta.kind == Some(EntryKind::Trim) && meta.payload_len == 8 {
                let body = pos + RECORD_HEADER_BYTES;
                let before = bytes[body..body + 8].try_into().expect("8 bytes");
                scan.trims.push((meta.index, Index::from_le_bytes(before)));
            }
            scan.entries.push((pos as u64, meta.term));
            self.next_index += 1;
            self.last_term = meta.term;
        }
        scan.flush_seq_max = scan.flush_seq_max.max(meta.flush_seq);
        scan.durable_seq_max = scan.durable_seq_max.max(meta.durable_seq);
        Ok(end)
    }
}

/// Classifies what follows `stop` in the newest segment. Valid records are looked for
/// at every block boundary after the stop, because every flush starts at one.
pub fn classify_tail(
    bytes: &[u8],
    scan: &mut Scan,
    info: &SegmentInfo,
    block_bytes: usize,
    payload_max: usize,
) -> Tail {
    let Some(stop) = scan.stop.clone() else {
        return Tail::Clean;
    };
    let start = stop.offset as usize;
    if start.is_multiple_of(block_bytes) && bytes[start..].iter().all(|b| *b == 0) {
        return Tail::Clean;
    }
    let mut later = Vec::new();
    let mut pos = start.next_multiple_of(block_bytes);
    if pos == start {
        pos += block_bytes;
    }
    while pos < bytes.len() {
        if let Ok(meta) = verify_record(&bytes[pos..], info.segment_seq, payload_max) {
            scan.durable_seq_max = scan.durable_seq_max.max(meta.durable_seq);
            scan.flush_seq_max = scan.flush_seq_max.max(meta.flush_seq);
            later.push((pos, meta));
        }
        pos += block_bytes;
    }
    // A record's `durable_seq` says that every flush up to that number had been
    // synced when the record was encoded. A valid record after the damage whose own
    // flush is at or below the highest such stamp was durable, and so was every byte
    // before it in this segment (positions only grow with flush numbers): the damage
    // is corruption, not a torn write. Otherwise everything after the damage belongs
    // to flushes that never completed, which is exactly a torn tail.
    // In a recycled segment, bytes after a block boundary that holds no header of this
    // segment, with no valid record of this segment anywhere after them, are the
    // previous segment's: nothing of this segment was written there (or what was is
    // gone without a trace that could ever pass as a record), so appends may go on.
    if info.recycled
        && start.is_multiple_of(block_bytes)
        && later.is_empty()
        && !own_header(&bytes[start..], info.segment_seq)
    {
        return Tail::Clean;
    }
    let durable = scan.durable_seq_max;
    if let Some((pos, meta)) = later.iter().find(|(_, m)| m.flush_seq <= durable) {
        return Tail::Corrupt {
            reason: format!(
                "{} (at index {}), and a durable record (index {}, flush {}) follows at offset {}",
                stop.reason, stop.index, meta.index, meta.flush_seq, pos
            ),
        };
    }
    Tail::Torn
}
