//! Segment summaries: what a scan of a sealed segment would find, written once the
//! segment's records are durable, so that recovery trusts it instead of reading the
//! segment. A missing or invalid summary only means "scan the segment" (and write
//! the summary then). The layout is in `docs/wal-format.md` ("Segment summaries").

use super::error::{WalResult, io_err};
use super::format::SegmentInfo;
use super::segment::{IndexPoint, Segment};
use super::storage::{Storage, StorageFile};
use crate::engine::{Index, Term};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The first eight bytes of every summary file.
pub const SUMMARY_MAGIC: [u8; 8] = *b"RLWALSUM";
/// The summary format version.
pub const SUMMARY_VERSION: u16 = 1;
/// Summary flag: damage lies after the segment's entries, at `damage_offset`.
pub const SUMMARY_FLAG_DAMAGE: u16 = 1;

/// The fixed part at offset 0 of a summary file; the arrays follow it.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SummaryHeader {
    pub magic: [u8; 8],
    /// crc32 of bytes 12..`total_bytes`.
    pub crc: U32,
    pub version: U16,
    pub flags: U16,
    /// Bytes of header and arrays (the file is padded to a block multiple after).
    pub total_bytes: U32,
    pub segment_size_bytes: U32,
    pub segment_seq: U64,
    pub first_index: U64,
    pub prev_term: U64,
    pub last_index: U64,
    pub last_term: U64,
    pub end_pos: U64,
    pub flush_seq_max: U64,
    /// Wall-clock ms of the newest write, 0 when no time was noted.
    pub newest_write_ms: U64,
    pub damage_offset: U64,
    pub term_runs: U32,
    pub points: U32,
    pub trims: U32,
    pub reserved: U32,
}
pub const SUMMARY_HEADER_BYTES: usize = 112;
const _: () = assert!(size_of::<SummaryHeader>() == SUMMARY_HEADER_BYTES);

/// (first index, term) of one term run.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct TermRunRow {
    first_index: U64,
    term: U64,
}
const _: () = assert!(size_of::<TermRunRow>() == 16);

/// One sparse-index point.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct PointRow {
    delta: U32,
    offset: U32,
}
const _: () = assert!(size_of::<PointRow>() == 8);

/// (index, before) of one trim entry.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct TrimRow {
    index: U64,
    before: U64,
}
const _: () = assert!(size_of::<TrimRow>() == 16);

/// What a summary says about one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub info: SegmentInfo,
    pub last_index: Index,
    pub last_term: Term,
    pub end_pos: u64,
    pub flush_seq_max: u64,
    pub newest_write_ms: Option<u64>,
    pub damage_offset: Option<u64>,
    pub term_runs: Vec<(Index, Term)>,
    pub points: Vec<IndexPoint>,
    pub trims: Vec<(Index, Index)>,
}

impl Summary {
    /// The summary of `seg` as it is in memory.
    pub fn of<F>(seg: &Segment<F>) -> Summary {
        Summary {
            info: seg.info,
            last_index: seg.last_index(),
            last_term: seg.last_term(),
            end_pos: seg.end_pos,
            flush_seq_max: seg.flush_seq_max,
            newest_write_ms: seg.sealed_at_ms,
            damage_offset: seg.damage_offset,
            term_runs: seg.term_runs.clone(),
            points: seg.points.clone(),
            trims: seg.trims.clone(),
        }
    }

    /// Fills `seg` (fresh, from the segment's verified header) from this summary.
    pub fn restore<F>(self, seg: &mut Segment<F>) {
        seg.set_len(self.last_index + 1 - self.info.first_index);
        seg.term_runs = self.term_runs;
        seg.points = self.points;
        seg.trims = self.trims;
        seg.end_pos = self.end_pos;
        seg.flush_seq_max = self.flush_seq_max;
        seg.damage_offset = self.damage_offset;
        seg.sealed_at_ms = self.newest_write_ms;
        seg.sealed = true;
        seg.summarized = true;
    }

    /// Whether the fields fit together and with the segment's header `info`: a
    /// summary that passes its checksum but not this is treated as missing.
    fn consistent(&self, info: &SegmentInfo, block_bytes: usize) -> bool {
        let first = info.first_index;
        let count = (self.last_index + 1).saturating_sub(first);
        let last_ok = self.last_index + 1 >= first;
        let runs_ok = self
            .term_runs
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
            && self
                .term_runs
                .first()
                .is_none_or(|r| r.0 == first && r.1 >= info.prev_term)
            && self.term_runs.last().is_none_or(|r| r.0 <= self.last_index)
            && self.term_runs.last().map_or(info.prev_term, |r| r.1) == self.last_term
            && (count == 0) == self.term_runs.is_empty();
        let points_ok = self
            .points
            .windows(2)
            .all(|w| w[0].delta < w[1].delta && w[0].offset < w[1].offset)
            && self.points.first().is_none_or(|p| p.delta == 0)
            && self.points.iter().all(|p| {
                (p.delta as u64) < count
                    && (p.offset as u64) >= block_bytes as u64
                    && (p.offset as u64) < self.end_pos
            })
            && (count == 0) == self.points.is_empty();
        let trims_ok = self.trims.windows(2).all(|w| w[0].0 < w[1].0)
            && self
                .trims
                .iter()
                .all(|t| t.0 >= first && t.0 <= self.last_index);
        self.info == *info
            && last_ok
            && runs_ok
            && points_ok
            && trims_ok
            && self.end_pos >= block_bytes as u64
            && self.end_pos <= info.segment_size_bytes
            && self
                .damage_offset
                .is_none_or(|d| d < info.segment_size_bytes)
    }
}

/// Encodes `summary` into a buffer padded with zeros to a multiple of `block_bytes`.
pub fn encode_summary(summary: &Summary, block_bytes: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let header = SummaryHeader {
        magic: SUMMARY_MAGIC,
        crc: U32::new(0),
        version: U16::new(SUMMARY_VERSION),
        flags: U16::new(if summary.damage_offset.is_some() {
            SUMMARY_FLAG_DAMAGE
        } else {
            0
        }),
        total_bytes: U32::new(0),
        segment_size_bytes: U32::new(summary.info.segment_size_bytes as u32),
        segment_seq: U64::new(summary.info.segment_seq),
        first_index: U64::new(summary.info.first_index),
        prev_term: U64::new(summary.info.prev_term),
        last_index: U64::new(summary.last_index),
        last_term: U64::new(summary.last_term),
        end_pos: U64::new(summary.end_pos),
        flush_seq_max: U64::new(summary.flush_seq_max),
        newest_write_ms: U64::new(summary.newest_write_ms.unwrap_or(0)),
        damage_offset: U64::new(summary.damage_offset.unwrap_or(0)),
        term_runs: U32::new(summary.term_runs.len() as u32),
        points: U32::new(summary.points.len() as u32),
        trims: U32::new(summary.trims.len() as u32),
        reserved: U32::new(0),
    };
    out.extend_from_slice(header.as_bytes());
    for (first_index, term) in &summary.term_runs {
        let row = TermRunRow {
            first_index: U64::new(*first_index),
            term: U64::new(*term),
        };
        out.extend_from_slice(row.as_bytes());
    }
    for p in &summary.points {
        out.extend_from_slice(
            PointRow {
                delta: U32::new(p.delta),
                offset: U32::new(p.offset),
            }
            .as_bytes(),
        );
    }
    for (index, before) in &summary.trims {
        out.extend_from_slice(
            TrimRow {
                index: U64::new(*index),
                before: U64::new(*before),
            }
            .as_bytes(),
        );
    }
    let total = out.len();
    out[16..20].copy_from_slice(&(total as u32).to_le_bytes());
    let crc = crc32fast::hash(&out[12..total]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out.resize(total.next_multiple_of(block_bytes), 0);
    out
}

/// Decodes a summary file's bytes; `None` when anything fails (magic, version,
/// lengths, checksum, or consistency with the segment header `info`).
pub fn decode_summary(bytes: &[u8], info: &SegmentInfo, block_bytes: usize) -> Option<Summary> {
    let (header, _) = SummaryHeader::read_from_prefix(bytes).ok()?;
    let total = header.total_bytes.get() as usize;
    if header.magic != SUMMARY_MAGIC
        || header.version.get() != SUMMARY_VERSION
        || header.flags.get() & !SUMMARY_FLAG_DAMAGE != 0
        || header.reserved.get() != 0
        || total < SUMMARY_HEADER_BYTES
        || total > bytes.len()
        || crc32fast::hash(&bytes[12..total]) != header.crc.get()
    {
        return None;
    }
    let (runs, points, trims) = (
        header.term_runs.get() as usize,
        header.points.get() as usize,
        header.trims.get() as usize,
    );
    if SUMMARY_HEADER_BYTES + runs * 16 + points * 8 + trims * 16 != total {
        return None;
    }
    let body = &bytes[SUMMARY_HEADER_BYTES..total];
    let (run_rows, rest) = <[TermRunRow]>::ref_from_prefix_with_elems(body, runs).ok()?;
    let (point_rows, rest) = <[PointRow]>::ref_from_prefix_with_elems(rest, points).ok()?;
    let (trim_rows, _) = <[TrimRow]>::ref_from_prefix_with_elems(rest, trims).ok()?;
    let summary = Summary {
        info: SegmentInfo {
            segment_seq: header.segment_seq.get(),
            first_index: header.first_index.get(),
            prev_term: header.prev_term.get(),
            reset: info.reset,
            recycled: info.recycled,
            segment_size_bytes: header.segment_size_bytes.get() as u64,
        },
        last_index: header.last_index.get(),
        last_term: header.last_term.get(),
        end_pos: header.end_pos.get(),
        flush_seq_max: header.flush_seq_max.get(),
        newest_write_ms: Some(header.newest_write_ms.get()).filter(|t| *t != 0),
        damage_offset: (header.flags.get() & SUMMARY_FLAG_DAMAGE != 0)
            .then(|| header.damage_offset.get()),
        term_runs: run_rows
            .iter()
            .map(|r| (r.first_index.get(), r.term.get()))
            .collect(),
        points: point_rows
            .iter()
            .map(|p| IndexPoint {
                delta: p.delta.get(),
                offset: p.offset.get(),
            })
            .collect(),
        trims: trim_rows
            .iter()
            .map(|t| (t.index.get(), t.before.get()))
            .collect(),
    };
    summary.consistent(info, block_bytes).then_some(summary)
}

/// Writes the summary of segment `segment_name` durably: whole into a temporary
/// file, fdatasync, rename, directory fsync. A crash at any point leaves either no
/// summary (a temporary file recovery removes) or the whole one. Returns its size.
pub async fn write_summary<S: Storage>(
    storage: &S,
    segment_name: &str,
    summary: &Summary,
) -> WalResult<u64> {
    let block = storage.block_bytes();
    let bytes = encode_summary(summary, block);
    // The writer must never produce what the reader rejects.
    assert_eq!(
        decode_summary(&bytes, &summary.info, block).as_ref(),
        Some(summary)
    );
    let name = super::segment::summary_file_name(segment_name);
    let tmp = format!("{name}.tmp");
    let context = |what: &str| format!("{what} summary {name}");
    let file = storage
        .open(&tmp, true)
        .await
        .map_err(io_err(context("creating")))?;
    file.write_at(0, &bytes)
        .await
        .map_err(io_err(context("writing")))?;
    file.sync().await.map_err(io_err(context("syncing")))?;
    drop(file);
    storage
        .rename(&tmp, &name)
        .await
        .map_err(io_err(context("renaming")))?;
    storage
        .sync_dir()
        .await
        .map_err(io_err("syncing the WAL directory"))?;
    Ok(bytes.len() as u64)
}

/// Reads the bytes of summary `name` (verified later, against its segment's header)
/// and the file's size; `None` when the file is too large to be a summary.
pub async fn read_summary_bytes<S: Storage>(
    storage: &S,
    name: &str,
) -> WalResult<Option<(Vec<u8>, u64)>> {
    let context = || format!("reading summary {name}");
    let file = storage.open(name, false).await.map_err(io_err(context()))?;
    let size = file.size().await.map_err(io_err(context()))?;
    // A summary holds a point per 32 KiB of a segment below 4 GiB, so a larger file
    // is damaged: never allocate what a damaged length claims.
    if size > (4 << 20) {
        return Ok(None);
    }
    let bytes = file
        .read_at(0, size as usize)
        .await
        .map_err(io_err(context()))?;
    Ok(Some((bytes.to_vec(), size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Summary {
        Summary {
            info: SegmentInfo {
                segment_seq: 3,
                first_index: 100,
                prev_term: 2,
                reset: false,
                recycled: false,
                segment_size_bytes: 1 << 20,
            },
            last_index: 140,
            last_term: 4,
            end_pos: 70_000,
            flush_seq_max: 9,
            newest_write_ms: Some(1_700_000_000_000),
            damage_offset: None,
            term_runs: vec![(100, 2), (120, 4)],
            points: vec![
                IndexPoint {
                    delta: 0,
                    offset: 512,
                },
                IndexPoint {
                    delta: 30,
                    offset: 40_000,
                },
            ],
            trims: vec![(130, 90)],
        }
    }

    #[test]
    fn round_trips_and_every_bit_is_checked() {
        let s = sample();
        let bytes = encode_summary(&s, 512);
        assert_eq!(bytes.len() % 512, 0);
        assert_eq!(decode_summary(&bytes, &s.info, 512), Some(s.clone()));
        let total = SUMMARY_HEADER_BYTES + 2 * 16 + 2 * 8 + 16;
        for bit in 0..total * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_summary(&bad, &s.info, 512), None, "bit {bit}");
        }
    }

    #[test]
    fn a_summary_of_another_header_is_refused() {
        let s = sample();
        let bytes = encode_summary(&s, 512);
        let other = SegmentInfo {
            prev_term: 1,
            ..s.info
        };
        assert_eq!(decode_summary(&bytes, &other, 512), None);
    }
}
