//! Scanning one segment's bytes: every record's checksum is verified, indexes must be
//! dense, and the first position that is not a valid record is classified (see
//! "Recovery rules" in `docs/wal-format.md`).

use super::format::{
    DecodeError, RECORD_HEADER_BYTES, RECORD_MAGIC, RecordHeader, SegmentInfo, verify_record,
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
    let mut scan = Scan::default();
    let mut pos = block_bytes;
    let mut next_index = info.first_index;
    let mut last_term = info.prev_term;
    let stop = |pos: usize, index: Index, reason: &'static str| Stop {
        offset: pos as u64,
        index,
        reason,
    };
    while pos < bytes.len() {
        let room = block_bytes - pos % block_bytes;
        if room < RECORD_HEADER_BYTES {
            // The writer never starts a record this close to a block end; it leaves
            // zeros, which must still be zeros.
            if bytes[pos..(pos + room).min(bytes.len())]
                .iter()
                .any(|b| *b != 0)
            {
                scan.stop = Some(stop(
                    pos,
                    next_index,
                    "non-zero bytes in a block's unused end",
                ));
                break;
            }
            pos += room;
            scan.end_pos = pos as u64;
            continue;
        }
        match verify_record(&bytes[pos..], info.segment_seq, payload_max) {
            Ok(meta) => {
                let end = pos + RECORD_HEADER_BYTES + meta.payload_len;
                if meta.kind.is_none() {
                    if !end.is_multiple_of(block_bytes) {
                        scan.stop = Some(stop(pos, next_index, "padding does not end a block"));
                        break;
                    }
                } else if meta.index != next_index {
                    scan.stop = Some(stop(pos, next_index, "entry index out of sequence"));
                    break;
                } else if meta.term < last_term {
                    scan.stop = Some(stop(pos, next_index, "entry term decreases"));
                    break;
                } else {
                    if meta.kind == Some(EntryKind::Trim) && meta.payload_len == 8 {
                        let body = pos + RECORD_HEADER_BYTES;
                        let before = bytes[body..body + 8].try_into().expect("8 bytes");
                        scan.trims.push((meta.index, Index::from_le_bytes(before)));
                    }
                    scan.entries.push((pos as u64, meta.term));
                    next_index += 1;
                    last_term = meta.term;
                }
                scan.flush_seq_max = scan.flush_seq_max.max(meta.flush_seq);
                scan.durable_seq_max = scan.durable_seq_max.max(meta.durable_seq);
                pos = end;
                scan.end_pos = end as u64;
            }
            Err(DecodeError::Zero) => {
                scan.stop = Some(stop(pos, next_index, END_OF_RECORDS));
                break;
            }
            Err(DecodeError::Short) => {
                scan.stop = Some(stop(pos, next_index, "record extends past the segment end"));
                break;
            }
            Err(DecodeError::Invalid)
                if info.recycled
                    && pos.is_multiple_of(block_bytes)
                    && !own_header(&bytes[pos..], info.segment_seq) =>
            {
                scan.stop = Some(stop(pos, next_index, STALE_END));
                break;
            }
            Err(DecodeError::Invalid) => {
                scan.stop = Some(stop(pos, next_index, "record header or checksum invalid"));
                break;
            }
        }
    }
    if scan.end_pos == 0 {
        scan.end_pos = block_bytes as u64;
    }
    scan
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
