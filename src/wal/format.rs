//! The on-disk layout: fixed-width little-endian headers (see `docs/wal-format.md` for
//! the offset tables). Every header is checked with crc32 on decode and asserted
//! well-formed before it is encoded, so a bug in the writer cannot put a record on
//! disk that the reader would reject.

use super::buffer::RecordBuf;
use crate::engine::{EntryKind, HardState, Index, NodeId, Term};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The first eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RLWALSEG";
/// The first eight bytes of both hard-state slots.
pub const HARD_STATE_MAGIC: [u8; 8] = *b"RLHSTATE";
/// The segment header version written now: the header records the segment's size.
pub const SEGMENT_VERSION: u16 = 2;
/// The first segment header version, which does not record the segment's size: such
/// a segment is taken to be as large as the configured `segment_size_bytes`.
pub const SEGMENT_VERSION_UNSIZED: u16 = 1;
/// The format version written in hard-state slots. Segment headers have their own
/// version, so that a change to them leaves existing hard-state files readable.
pub const HARD_STATE_VERSION: u32 = 1;
/// A constant byte in every record header; a zero-filled region never looks like a
/// header, which makes a clean end of log cheap to recognise.
pub const RECORD_MAGIC: u8 = 0xA7;
/// Record kind code for padding that fills a block after the last record of a flush.
pub const KIND_PAD: u8 = 0xFE;
/// Segment header flag: this segment discards every older segment (ResetLog).
pub const SEGMENT_FLAG_RESET: u16 = 1;
/// Segment header flag: the file is a recycled segment, so blocks this segment has
/// not written hold stale records of an older segment (see docs/wal-format.md).
pub const SEGMENT_FLAG_RECYCLED: u16 = 2;
/// Hard-state flag: `voted_for` holds a vote.
pub const HARD_STATE_FLAG_VOTED: u32 = 1;

/// The header in front of every record payload (and of padding).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RecordHeader {
    /// crc32 of bytes 4..48 of this header followed by the payload.
    pub crc: U32,
    pub payload_len: U32,
    pub index: U64,
    pub term: U64,
    /// The number of the flush that wrote this record.
    pub flush_seq: U64,
    /// The highest flush number known durable when this record was encoded.
    pub durable_seq: U64,
    /// Low 32 bits of the segment's sequence number, so a block copied into the
    /// wrong segment fails its checksum context check.
    pub segment_seq: U32,
    pub kind: u8,
    pub magic: u8,
    pub reserved: U16,
}
pub const RECORD_HEADER_BYTES: usize = 48;
const _: () = assert!(size_of::<RecordHeader>() == RECORD_HEADER_BYTES);

/// The header at offset 0 of every segment file; the rest of its block is zero.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SegmentHeader {
    pub magic: [u8; 8],
    /// At the offset of the first version's 32-bit version, whose low half it is.
    pub version: U16,
    pub flags: U16,
    /// The size of this segment file, header block included: recovery reads this
    /// much, whatever the configuration says now.
    pub segment_size_bytes: U32,
    pub segment_seq: U64,
    pub first_index: U64,
    pub prev_term: U64,
    pub block_bytes: U32,
    /// crc32 of bytes 0..44.
    pub crc: U32,
}
pub const SEGMENT_HEADER_BYTES: usize = 48;
const _: () = assert!(size_of::<SegmentHeader>() == SEGMENT_HEADER_BYTES);

/// The first version's segment header, kept to read segments written before the
/// header recorded the segment's size.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct SegmentHeaderUnsized {
    magic: [u8; 8],
    version: U32,
    flags: U32,
    segment_seq: U64,
    first_index: U64,
    prev_term: U64,
    block_bytes: U32,
    crc: U32,
}
const _: () = assert!(size_of::<SegmentHeaderUnsized>() == SEGMENT_HEADER_BYTES);

/// One of the two slots of the hard-state file.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct HardStateSlot {
    pub magic: [u8; 8],
    pub version: U32,
    pub flags: U32,
    /// Write counter: the slot with the higher valid `seq` is current.
    pub seq: U64,
    pub term: U64,
    pub voted_for: U32,
    /// crc32 of bytes 0..36.
    pub crc: U32,
}
pub const HARD_STATE_SLOT_BYTES: usize = 40;
const _: () = assert!(size_of::<HardStateSlot>() == HARD_STATE_SLOT_BYTES);

/// What a record header says, once its checksum has been verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    pub index: Index,
    pub term: Term,
    /// `None` for padding.
    pub kind: Option<EntryKind>,
    pub payload_len: usize,
    pub flush_seq: u64,
    pub durable_seq: u64,
}

/// Appends one record (header + payload) to `out`.
pub fn encode_record(
    out: &mut impl RecordBuf,
    meta: &RecordMeta,
    segment_seq: u64,
    payload: &[u8],
) {
    // The writer must never produce what the reader rejects: check the same limits.
    assert_eq!(meta.payload_len, payload.len());
    assert!(u32::try_from(payload.len()).is_ok());
    assert!(meta.kind.is_some() || payload.iter().all(|b| *b == 0));
    let mut header = RecordHeader {
        crc: U32::new(0),
        payload_len: U32::new(payload.len() as u32),
        index: U64::new(meta.index),
        term: U64::new(meta.term),
        flush_seq: U64::new(meta.flush_seq),
        durable_seq: U64::new(meta.durable_seq),
        segment_seq: U32::new(segment_seq as u32),
        kind: meta.kind.map_or(KIND_PAD, |k| k as u8),
        magic: RECORD_MAGIC,
        reserved: U16::new(0),
    };
    // One checksum pass over the bytes as they lie in the buffer (header after the crc
    // field, then payload): short records make per-call overhead count.
    let start = out.len();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out.as_slice()[start + 4..]);
    header.crc = U32::new(crc);
    out.as_mut_slice()[start..start + 4].copy_from_slice(header.crc.as_bytes());
}

/// Why bytes at some position are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The header is all zero: nothing was ever written here.
    Zero,
    /// The header is not plausible or the checksum does not match.
    Invalid,
    /// The header is plausible but its payload extends past the available bytes.
    Short,
}

/// Parses only the header at the start of `bytes`, checking what it can without the
/// payload (magic, kind, segment, length bound). The checksum is checked by
/// [`verify_record`].
pub fn decode_header(
    bytes: &[u8],
    segment_seq: u64,
    payload_max: usize,
) -> Result<(RecordHeader, RecordMeta), DecodeError> {
    let Ok((header, _)) = RecordHeader::read_from_prefix(bytes) else {
        return Err(DecodeError::Short);
    };
    if header.as_bytes().iter().all(|b| *b == 0) {
        return Err(DecodeError::Zero);
    }
    let kind = match header.kind {
        KIND_PAD => None,
        code => Some(EntryKind::from_u8(code).ok_or(DecodeError::Invalid)?),
    };
    let payload_len = header.payload_len.get() as usize;
    if header.magic != RECORD_MAGIC
        || header.reserved.get() != 0
        || header.segment_seq.get() != segment_seq as u32
        || payload_len > payload_max
    {
        return Err(DecodeError::Invalid);
    }
    let meta = RecordMeta {
        index: header.index.get(),
        term: header.term.get(),
        kind,
        payload_len,
        flush_seq: header.flush_seq.get(),
        durable_seq: header.durable_seq.get(),
    };
    Ok((header, meta))
}

/// Decodes and verifies the record at the start of `bytes`: header checks plus the
/// checksum over header and payload. Padding must also be all zero inside.
pub fn verify_record(
    bytes: &[u8],
    segment_seq: u64,
    payload_max: usize,
) -> Result<RecordMeta, DecodeError> {
    let (header, meta) = decode_header(bytes, segment_seq, payload_max)?;
    let end = RECORD_HEADER_BYTES + meta.payload_len;
    if bytes.len() < end {
        return Err(DecodeError::Short);
    }
    let payload = &bytes[RECORD_HEADER_BYTES..end];
    if crc32fast::hash(&bytes[4..end]) != header.crc.get() {
        return Err(DecodeError::Invalid);
    }
    if meta.kind.is_none() && payload.iter().any(|b| *b != 0) {
        return Err(DecodeError::Invalid);
    }
    Ok(meta)
}

/// The fields of a segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub segment_seq: u64,
    pub first_index: Index,
    pub prev_term: Term,
    pub reset: bool,
    /// The file was a purged segment before: unwritten blocks hold stale records.
    pub recycled: bool,
    /// The size of the segment file, header block included.
    pub segment_size_bytes: u64,
}

/// Whether a segment of `segment_size_bytes` is possible with `block_bytes` blocks:
/// a block multiple, the header block and at least one block of records, and small
/// enough for the header's 32-bit field.
pub fn segment_size_valid(segment_size_bytes: u64, block_bytes: usize) -> bool {
    let block = block_bytes as u64;
    block > 0
        && segment_size_bytes.is_multiple_of(block)
        && segment_size_bytes >= 2 * block
        && segment_size_bytes <= u32::MAX as u64
}

/// Writes a segment header into the front of `block` (which must be zero).
pub fn encode_segment_header(block: &mut [u8], info: &SegmentInfo, block_bytes: usize) {
    assert!(block.len() >= SEGMENT_HEADER_BYTES);
    assert!(info.first_index >= 1);
    assert!(u32::try_from(block_bytes).is_ok());
    assert!(segment_size_valid(info.segment_size_bytes, block_bytes));
    let mut header = SegmentHeader {
        magic: SEGMENT_MAGIC,
        version: U16::new(SEGMENT_VERSION),
        flags: U16::new(
            if info.reset { SEGMENT_FLAG_RESET } else { 0 }
                | if info.recycled {
                    SEGMENT_FLAG_RECYCLED
                } else {
                    0
                },
        ),
        segment_size_bytes: U32::new(info.segment_size_bytes as u32),
        segment_seq: U64::new(info.segment_seq),
        first_index: U64::new(info.first_index),
        prev_term: U64::new(info.prev_term),
        block_bytes: U32::new(block_bytes as u32),
        crc: U32::new(0),
    };
    header.crc = U32::new(crc32fast::hash(&header.as_bytes()[..44]));
    block[..SEGMENT_HEADER_BYTES].copy_from_slice(header.as_bytes());
}

/// Parses a segment header; `None` when it is absent, damaged, or claims a block
/// size other than `block_bytes` or an impossible segment size. A first-version
/// header does not record its size: it gets `unsized_segment_bytes`.
pub fn decode_segment_header(
    bytes: &[u8],
    block_bytes: usize,
    unsized_segment_bytes: u64,
) -> Option<SegmentInfo> {
    let (header, _) = SegmentHeader::read_from_prefix(bytes).ok()?;
    if header.magic != SEGMENT_MAGIC
        || crc32fast::hash(&header.as_bytes()[..44]) != header.crc.get()
        || header.block_bytes.get() as usize != block_bytes
    {
        return None;
    }
    let info = match segment_header_version(bytes)? {
        SEGMENT_VERSION => SegmentInfo {
            segment_seq: header.segment_seq.get(),
            first_index: header.first_index.get(),
            prev_term: header.prev_term.get(),
            reset: header.flags.get() & SEGMENT_FLAG_RESET != 0,
            recycled: header.flags.get() & SEGMENT_FLAG_RECYCLED != 0,
            segment_size_bytes: header.segment_size_bytes.get() as u64,
        },
        SEGMENT_VERSION_UNSIZED => decode_unsized(bytes, unsized_segment_bytes)?,
        _ => return None,
    };
    (info.first_index != 0 && segment_size_valid(info.segment_size_bytes, block_bytes))
        .then_some(info)
}

/// The version of the segment header at the start of `bytes`: both versions keep
/// it (or its low half) in bytes 8..10. Only meaningful for a header that decodes.
pub fn segment_header_version(bytes: &[u8]) -> Option<u16> {
    let (header, _) = SegmentHeader::read_from_prefix(bytes).ok()?;
    Some(header.version.get())
}

/// Parses a first-version segment header (magic, checksum and block size are
/// already checked).
fn decode_unsized(bytes: &[u8], segment_size_bytes: u64) -> Option<SegmentInfo> {
    let (header, _) = SegmentHeaderUnsized::read_from_prefix(bytes).ok()?;
    // Its version is 32 bits wide: the upper half must be zero too.
    if header.version.get() != SEGMENT_VERSION_UNSIZED as u32 {
        return None;
    }
    Some(SegmentInfo {
        segment_seq: header.segment_seq.get(),
        first_index: header.first_index.get(),
        prev_term: header.prev_term.get(),
        reset: header.flags.get() & u32::from(SEGMENT_FLAG_RESET) != 0,
        recycled: false,
        segment_size_bytes,
    })
}

/// Writes hard-state slot number `seq` into the front of `block` (which must be zero).
pub fn encode_hard_state(block: &mut [u8], seq: u64, state: &HardState) {
    assert!(block.len() >= HARD_STATE_SLOT_BYTES);
    let mut slot = HardStateSlot {
        magic: HARD_STATE_MAGIC,
        version: U32::new(HARD_STATE_VERSION),
        flags: U32::new(if state.voted_for.is_some() {
            HARD_STATE_FLAG_VOTED
        } else {
            0
        }),
        seq: U64::new(seq),
        term: U64::new(state.term),
        voted_for: U32::new(state.voted_for.unwrap_or(0)),
        crc: U32::new(0),
    };
    slot.crc = U32::new(crc32fast::hash(&slot.as_bytes()[..36]));
    block[..HARD_STATE_SLOT_BYTES].copy_from_slice(slot.as_bytes());
}

/// Parses a hard-state slot: its write counter and state, `None` if damaged or empty.
pub fn decode_hard_state(bytes: &[u8]) -> Option<(u64, HardState)> {
    let (slot, _) = HardStateSlot::read_from_prefix(bytes).ok()?;
    if slot.magic != HARD_STATE_MAGIC
        || slot.version.get() != HARD_STATE_VERSION
        || crc32fast::hash(&slot.as_bytes()[..36]) != slot.crc.get()
    {
        return None;
    }
    let voted_for: Option<NodeId> =
        (slot.flags.get() & HARD_STATE_FLAG_VOTED != 0).then(|| slot.voted_for.get());
    Some((
        slot.seq.get(),
        HardState {
            term: slot.term.get(),
            voted_for,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_flip_detection() {
        let meta = RecordMeta {
            index: 7,
            term: 3,
            kind: Some(EntryKind::Record),
            payload_len: 5,
            flush_seq: 9,
            durable_seq: 8,
        };
        let mut out = Vec::new();
        encode_record(&mut out, &meta, 2, b"hello");
        assert_eq!(verify_record(&out, 2, 1 << 20), Ok(meta));
        assert_eq!(verify_record(&out, 3, 1 << 20), Err(DecodeError::Invalid));
        for bit in 0..out.len() * 8 {
            let mut copy = out.clone();
            copy[bit / 8] ^= 1 << (bit % 8);
            assert!(verify_record(&copy, 2, 1 << 20).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn headers_round_trip() {
        let info = SegmentInfo {
            segment_seq: 4,
            first_index: 100,
            prev_term: 2,
            reset: true,
            recycled: true,
            segment_size_bytes: 64 << 10,
        };
        let mut block = vec![0u8; 512];
        encode_segment_header(&mut block, &info, 512);
        assert_eq!(decode_segment_header(&block, 512, 1 << 20), Some(info));
        assert_eq!(decode_segment_header(&block, 4096, 1 << 20), None);
        let state = HardState {
            term: 5,
            voted_for: Some(0),
        };
        let mut block = vec![0u8; 512];
        encode_hard_state(&mut block, 11, &state);
        assert_eq!(decode_hard_state(&block), Some((11, state)));
    }

    /// A header with `segment_size_bytes` set to `size` and a valid checksum.
    fn sized_header(size: u32) -> Vec<u8> {
        let mut header = SegmentHeader {
            magic: SEGMENT_MAGIC,
            version: U16::new(SEGMENT_VERSION),
            flags: U16::new(0),
            segment_size_bytes: U32::new(size),
            segment_seq: U64::new(1),
            first_index: U64::new(1),
            prev_term: U64::new(0),
            block_bytes: U32::new(512),
            crc: U32::new(0),
        };
        header.crc = U32::new(crc32fast::hash(&header.as_bytes()[..44]));
        header.as_bytes().to_vec()
    }

    #[test]
    fn impossible_segment_sizes_make_the_header_invalid() {
        assert!(decode_segment_header(&sized_header(16 << 10), 512, 0).is_some());
        for size in [0, 512, 1000, 16 << 10 | 1, u32::MAX] {
            assert_eq!(
                decode_segment_header(&sized_header(size), 512, 0),
                None,
                "{size}"
            );
        }
    }

    #[test]
    fn first_version_headers_get_the_size_they_are_given() {
        let mut header = SegmentHeaderUnsized {
            magic: SEGMENT_MAGIC,
            version: U32::new(SEGMENT_VERSION_UNSIZED as u32),
            flags: U32::new(u32::from(SEGMENT_FLAG_RESET)),
            segment_seq: U64::new(3),
            first_index: U64::new(50),
            prev_term: U64::new(2),
            block_bytes: U32::new(512),
            crc: U32::new(0),
        };
        header.crc = U32::new(crc32fast::hash(&header.as_bytes()[..44]));
        let info = decode_segment_header(header.as_bytes(), 512, 8 << 10);
        assert_eq!(
            info,
            Some(SegmentInfo {
                segment_seq: 3,
                first_index: 50,
                prev_term: 2,
                reset: true,
                recycled: false,
                segment_size_bytes: 8 << 10,
            })
        );
    }
}
