//! Recovery at open: read every segment, verify every record, chain the segments in
//! creation order (a truncation or reset segment supersedes what it replaces), and
//! decide what the newest segment's tail is.

use super::config::WalConfig;
use super::error::{WalError, WalResult, io_err};
use super::format::{
    SEGMENT_HEADER_BYTES, SEGMENT_VERSION_UNSIZED, SegmentInfo, decode_segment_header,
    segment_header_version, segment_size_valid,
};
use super::join::join_all;
use super::scan::{Scan, Stop, Tail, classify_tail, is_clean_end, scan_segment};
use super::segment::{Segment, parse_segment_file_name, summary_file_name};
use super::storage::{Storage, StorageFile};
use super::summary::{decode_summary, read_summary_bytes};
use crate::engine::{Index, Term};
use chain::{Chain, Linked};
use std::collections::VecDeque;
use std::rc::Rc;

mod chain;

/// Name of the segment being prepared ahead of the writer.
pub const SPARE_FILE_NAME: &str = "spare.tmp";
/// Name of a purged segment kept to become the next spare (recycling).
pub const RECYCLE_FILE_NAME: &str = "recycle.tmp";

/// Something recovery found and handled, reported to the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryReport {
    /// Invalid bytes after the last valid record of the newest segment, with no durable
    /// record after them: an unsynced write torn by a crash. The log ends before them.
    TornTail {
        file: String,
        offset: u64,
        index: Index,
    },
    /// Damaged bytes after the live part of an older segment (beyond what a later
    /// segment superseded or after its last entry): they hold no live entry.
    IgnoredDamage { file: String, offset: u64 },
    /// `truncate_corrupt_tail` was set and the log was cut at a corruption.
    TruncatedCorruption {
        file: String,
        offset: u64,
        index: Index,
    },
    /// One hard-state slot was invalid (a write torn by a crash, or damage); the other
    /// slot's older state was used.
    HardStateSlotDamaged { offset: u64 },
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryReport::TornTail {
                file,
                offset,
                index,
            } => write!(
                f,
                "WAL torn tail truncated: {file} at offset {offset}; the log ends before index {index}"
            ),
            RecoveryReport::IgnoredDamage { file, offset } => write!(
                f,
                "WAL ignored damaged bytes after the live entries of {file} at offset {offset}"
            ),
            RecoveryReport::TruncatedCorruption {
                file,
                offset,
                index,
            } => write!(
                f,
                "WAL CORRUPTION truncated on request: {file} at offset {offset}; entries from {index} dropped"
            ),
            RecoveryReport::HardStateSlotDamaged { offset } => write!(
                f,
                "WAL hard-state slot at offset {offset} invalid; used the other slot"
            ),
        }
    }
}

/// What recovery hands to the WAL.
pub struct Recovery<F> {
    pub segments: Vec<Segment<F>>,
    /// Files to delete, newest first (superseded segments, a leftover spare).
    pub obsolete: Vec<String>,
    pub log_start: Index,
    pub start_prev_term: Term,
    pub flush_seq_max: u64,
    pub segment_seq_max: u64,
    pub reports: Vec<RecoveryReport>,
    /// A purged segment waits to be recycled.
    pub recycle_present: bool,
}

struct Found<F> {
    name: String,
    file: F,
}

/// Reads and checks the header of segment `found` (named for `first` and `seq`). The
/// outer error is an I/O failure; the inner one says why the header is corrupt.
async fn read_segment_header<F: StorageFile>(
    found: &Found<F>,
    first: Index,
    seq: u64,
    block: usize,
    config: &WalConfig,
) -> WalResult<Result<SegmentInfo, &'static str>> {
    let context = || format!("reading {}", found.name);
    let mut head = found
        .file
        .read_at(0, block)
        .await
        .map_err(io_err(context()))?
        .to_vec();
    head.resize(block, 0);
    // The header block holds nothing but the header: the rest must be zero, so that
    // every byte of it is checked.
    let header_rest_clean = head[SEGMENT_HEADER_BYTES..].iter().all(|b| *b == 0);
    let file_bytes = found.file.size().await.map_err(io_err(context()))?;
    // A version 1 header does not record its size, but its file was prepared to that
    // size before it was named: the file's length is a better guess than today's
    // setting, which may have been lowered since.
    let unsized_bytes = if segment_size_valid(file_bytes, block) {
        file_bytes
    } else {
        config.segment_size_bytes
    };
    let Some(info) =
        decode_segment_header(&head, block, unsized_bytes).filter(|_| header_rest_clean)
    else {
        // The header is synced before the file gets its name, so a named segment with
        // a bad header is damaged, never half-created.
        return Ok(Err("segment header invalid"));
    };
    if info.first_index != first || info.segment_seq != seq {
        return Ok(Err("segment header does not match the file name"));
    }
    // A header that records its size was written into a file prepared to that size
    // (and synced) before it was named; a file shorter than that is damaged. This
    // also bounds what recovery reads by what is on disk.
    let sized = segment_header_version(&head) != Some(SEGMENT_VERSION_UNSIZED);
    if sized && info.segment_size_bytes > file_bytes {
        return Ok(Err("segment header claims more bytes than the file holds"));
    }
    Ok(Ok(info))
}

/// Recovers the log in `storage`.
pub async fn recover<S: Storage>(storage: &S, config: &WalConfig) -> WalResult<Recovery<S::File>> {
    let block = storage.block_bytes();
    let names = storage
        .list()
        .await
        .map_err(io_err("listing the WAL directory"))?;
    let mut chain = Chain::new(names.iter().any(|n| n == RECYCLE_FILE_NAME));
    let found = segments_in_creation_order(&names);
    let count = found.len();
    // Headers and summaries are read ahead, a batch at a time and concurrently, so
    // that start-up time hardly grows with the number of sealed segments; the batch
    // stays within the bound on open segment files.
    let batch = config.open_segments_max.saturating_sub(1).max(1);
    let mut ahead = VecDeque::new();
    for (k, &(seq, first, ref name)) in found.iter().enumerate() {
        let newest = k + 1 == count;
        chain.rec.segment_seq_max = chain.rec.segment_seq_max.max(seq);
        if ahead.is_empty() {
            let upto = (k + batch).min(count);
            let reads = found[k..upto]
                .iter()
                .enumerate()
                .map(|(j, (_, _, n))| read_ahead(storage, n, k + j + 1 == count, &names, config));
            ahead.extend(join_all(reads.collect()).await);
        }
        let read = ahead.pop_front().expect("read ahead")?;
        debug_assert_eq!(&read.0.name, name);
        let (seg, stop) = load_segment(read, first, newest, config, block, &mut chain.rec).await?;
        let this_and_later = found[k..].iter().map(|(_, _, n)| n.clone());
        if chain.link(seg, stop, this_and_later, config)? == Linked::Cut {
            break;
        }
    }
    Ok(chain.finish(&names))
}

/// The segment files among `names` as (segment_seq, first index, name), in creation
/// order.
fn segments_in_creation_order(names: &[String]) -> Vec<(u64, Index, String)> {
    let mut found: Vec<(u64, Index, String)> = names
        .iter()
        .filter_map(|n| parse_segment_file_name(n).map(|(first, seq)| (seq, first, n.clone())))
        .collect();
    found.sort();
    found
}

/// Makes segment `first` from what was read ahead of it: restored from its summary
/// when it has a valid one, else scanned. Returns the segment and where its scan
/// stopped (or where its summary says damage begins).
async fn load_segment<F: StorageFile>(
    (f, header, summary): ReadAhead<F>,
    first: Index,
    newest: bool,
    config: &WalConfig,
    block: usize,
    rec: &mut Recovery<F>,
) -> WalResult<(Segment<F>, Option<Stop>)> {
    let info = header.map_err(|reason| WalError::Corrupt {
        file: f.name.clone(),
        offset: 0,
        index: first,
        reason: reason.to_string(),
    })?;
    // A summary of another header is no summary.
    let summary = summary.and_then(|(s, size)| decode_summary(&s, &info, block).map(|s| (s, size)));
    let (mut seg, stop) = match summary {
        Some((summary, summary_bytes)) => {
            let mut seg = Segment::new(info, block);
            summary.restore(&mut seg);
            seg.summary_bytes = summary_bytes;
            let stop = seg.damage_offset.map(|offset| Stop {
                offset,
                index: seg.last_index() + 1,
                reason: "damage recorded in the segment's summary",
            });
            (seg, stop)
        }
        None => scan_into_segment(&f, info, newest, config, block, rec).await?,
    };
    seg.name = f.name.clone();
    if newest {
        seg.file = Some(Rc::new(f.file));
    }
    rec.flush_seq_max = rec.flush_seq_max.max(seg.flush_seq_max);
    Ok((seg, stop))
}

/// What is read of a segment before it is chained: its open file, its header (or
/// why it is corrupt) and its summary's bytes and size, if it has one and is sealed.
type ReadAhead<F> = (
    Found<F>,
    Result<SegmentInfo, &'static str>,
    Option<(Vec<u8>, u64)>,
);

async fn read_ahead<S: Storage>(
    storage: &S,
    name: &str,
    newest: bool,
    names: &[String],
    config: &WalConfig,
) -> WalResult<ReadAhead<S::File>> {
    let (first, seq) = parse_segment_file_name(name).expect("a segment name");
    let f = Found {
        file: storage
            .open(name, false)
            .await
            .map_err(io_err(format!("opening {name}")))?,
        name: name.to_string(),
    };
    let header = read_segment_header(&f, first, seq, storage.block_bytes(), config).await?;
    // Sealed segments are trusted through their summary; the newest one is always
    // scanned, since its tail may be torn.
    let summary_name = summary_file_name(name);
    let summary = if !newest && header.is_ok() && names.contains(&summary_name) {
        read_summary_bytes(storage, &summary_name).await?
    } else {
        None
    };
    Ok((f, header, summary))
}

/// Reads segment `f` whole and scans it: every record verified, the newest
/// segment's tail classified. Returns the segment and where the scan stopped.
async fn scan_into_segment<F: StorageFile>(
    f: &Found<F>,
    info: SegmentInfo,
    newest: bool,
    config: &WalConfig,
    block: usize,
    rec: &mut Recovery<F>,
) -> WalResult<(Segment<F>, Option<Stop>)> {
    let payload_max = config.record_size_bytes_max;
    let size_bytes = info.segment_size_bytes as usize;
    let mut bytes = f
        .file
        .read_at(0, size_bytes)
        .await
        .map_err(io_err(format!("reading {}", f.name)))?
        .to_vec();
    // Blocks never written read as zeros (a first-version segment's file may be
    // shorter than the configured size it is read with).
    bytes.resize(size_bytes, 0);
    let mut scan = scan_segment(&bytes, &info, block, payload_max);
    // A configuration change applies to new segments only: a newest segment of
    // another size keeps its entries but takes no more, so appends go on in a
    // segment of the configured size.
    let mut sealed = !newest || info.segment_size_bytes != config.segment_size_bytes;
    if newest {
        let tail = classify_tail(&bytes, &mut scan, &info, block, payload_max);
        sealed |= handle_tail(tail, &scan, &f.name, config, rec)?;
    }
    let mut seg = Segment::new(info, block);
    seg.sealed = sealed;
    seg.end_pos = scan.end_pos;
    seg.flush_seq_max = scan.flush_seq_max;
    seg.trims = scan.trims;
    seg.damage_offset = scan
        .stop
        .as_ref()
        .filter(|s| !is_clean_end(s.reason))
        .map(|s| s.offset);
    for (offset, term) in &scan.entries {
        seg.push(*term, *offset);
    }
    Ok((seg, scan.stop))
}

/// Reports the `tail` of the newest segment `file`, whose scan is `scan`. Returns
/// whether the segment takes no more appends (its tail was cut), or the corruption
/// when the log may not be cut at it.
fn handle_tail<F>(
    tail: Tail,
    scan: &Scan,
    file: &str,
    config: &WalConfig,
    rec: &mut Recovery<F>,
) -> WalResult<bool> {
    match tail {
        Tail::Clean => Ok(false),
        Tail::Torn => {
            let stop = scan.stop.clone().expect("a torn tail has a stop");
            rec.reports.push(RecoveryReport::TornTail {
                file: file.to_string(),
                offset: stop.offset,
                index: stop.index,
            });
            Ok(true)
        }
        Tail::Corrupt { reason } => {
            let stop = scan.stop.clone().expect("corruption has a stop");
            if !config.truncate_corrupt_tail {
                return Err(WalError::Corrupt {
                    file: file.to_string(),
                    offset: stop.offset,
                    index: stop.index,
                    reason,
                });
            }
            rec.reports.push(RecoveryReport::TruncatedCorruption {
                file: file.to_string(),
                offset: stop.offset,
                index: stop.index,
            });
            Ok(true)
        }
    }
}
