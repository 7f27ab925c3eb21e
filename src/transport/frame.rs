//! The frame: a fixed 24-byte little-endian header followed by a body whose length and
//! crc32 the header carries. Every peer message and every client request or response
//! travels as one frame. See `docs/wire-protocol.md` for the byte layouts.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The first four bytes of every frame: `b"RLOG"`. A stream that does not start with
/// them is not speaking this protocol (or has lost its framing) and is closed.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"RLOG");
/// The protocol version this build speaks. A frame with another version is refused:
/// versions change only when a layout changes, and guessing would corrupt data.
pub const PROTOCOL_VERSION: u8 = 2;
/// Size of [`FrameHeader`] on the wire.
pub const FRAME_HEADER_BYTES: usize = 24;
/// The default largest body a receiver accepts. Large enough for a 4 MiB replication
/// batch plus its per-entry overhead; receivers may configure their own.
pub const FRAME_BODY_BYTES_MAX_DEFAULT: u32 = 8 * 1024 * 1024;

/// The fixed frame header. All fields are little-endian and unaligned, so the struct
/// can be read straight out of any byte buffer without copying or alignment checks.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct FrameHeader {
    pub magic: U32,
    pub version: u8,
    pub kind: u8,
    /// Reserved; must be zero in version 1 so that a later version can give bits a
    /// meaning without old receivers misreading them.
    pub flags: U16,
    pub body_len: U32,
    pub body_crc32: U32,
    /// Chosen by the requester and echoed in the response, so that many requests can
    /// be in flight on one connection. Zero for messages that expect no response.
    pub request_id: U64,
}

const _: () = assert!(size_of::<FrameHeader>() == FRAME_HEADER_BYTES);
const _: () = assert!(align_of::<FrameHeader>() == 1);

/// What a frame's body holds. Codes are grouped: 0x0_ connection set-up, 0x1_ Raft
/// peer messages (one per `MessageBody` variant), 0x4_ client protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    PeerHello = 0x01,
    PeerHelloAck = 0x02,
    PeerRefused = 0x03,
    PreVote = 0x10,
    PreVoteResponse = 0x11,
    RequestVote = 0x12,
    RequestVoteResponse = 0x13,
    AppendEntries = 0x14,
    AppendEntriesResponse = 0x15,
    Heartbeat = 0x16,
    HeartbeatResponse = 0x17,
    LogStart = 0x18,
    TimeoutNow = 0x19,
    AppendRequest = 0x40,
    AppendResponse = 0x41,
    ReadRequest = 0x42,
    ReadResponse = 0x43,
    MetadataRequest = 0x44,
    MetadataResponse = 0x45,
    TrimRequest = 0x46,
    TrimResponse = 0x47,
    TransferRequest = 0x48,
    TransferResponse = 0x49,
    MembersRequest = 0x4A,
    MembersResponse = 0x4B,
    MembershipChangeRequest = 0x4C,
    MembershipChangeResponse = 0x4D,
    ClosingNotice = 0x4E,
    ErrorResponse = 0x4F,
}

impl FrameKind {
    /// Every kind, in code order (used by tests and documentation checks).
    pub const ALL: [FrameKind; 29] = [
        FrameKind::PeerHello,
        FrameKind::PeerHelloAck,
        FrameKind::PeerRefused,
        FrameKind::PreVote,
        FrameKind::PreVoteResponse,
        FrameKind::RequestVote,
        FrameKind::RequestVoteResponse,
        FrameKind::AppendEntries,
        FrameKind::AppendEntriesResponse,
        FrameKind::Heartbeat,
        FrameKind::HeartbeatResponse,
        FrameKind::LogStart,
        FrameKind::TimeoutNow,
        FrameKind::AppendRequest,
        FrameKind::AppendResponse,
        FrameKind::ReadRequest,
        FrameKind::ReadResponse,
        FrameKind::MetadataRequest,
        FrameKind::MetadataResponse,
        FrameKind::TrimRequest,
        FrameKind::TrimResponse,
        FrameKind::TransferRequest,
        FrameKind::TransferResponse,
        FrameKind::MembersRequest,
        FrameKind::MembersResponse,
        FrameKind::MembershipChangeRequest,
        FrameKind::MembershipChangeResponse,
        FrameKind::ClosingNotice,
        FrameKind::ErrorResponse,
    ];

    /// The kind with wire code `code`, if there is one.
    pub fn from_u8(code: u8) -> Option<FrameKind> {
        FrameKind::ALL.iter().copied().find(|k| *k as u8 == code)
    }

    /// Whether this kind carries a Raft peer message (as opposed to set-up or client traffic).
    pub fn is_peer_message(self) -> bool {
        (0x10..0x20).contains(&(self as u8))
    }

    /// Whether this kind is a client request (something a client listener answers).
    pub fn is_client_request(self) -> bool {
        matches!(
            self,
            FrameKind::AppendRequest
                | FrameKind::ReadRequest
                | FrameKind::MetadataRequest
                | FrameKind::TrimRequest
                | FrameKind::TransferRequest
                | FrameKind::MembersRequest
                | FrameKind::MembershipChangeRequest
        )
    }
}

/// Everything that can be wrong with bytes received from the network. Decoding never
/// panics: each defect is one of these, and the connection that sent it is closed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error(
        "bad magic 0x{found:08x} (expected 0x{FRAME_MAGIC:08x}, \"RLOG\"): not a ringlog peer or framing lost"
    )]
    BadMagic { found: u32 },
    #[error("unsupported protocol version {found} (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("unknown frame kind 0x{code:02x}")]
    UnknownKind { code: u8 },
    #[error("reserved flag bits set: 0x{flags:04x}")]
    UnknownFlags { flags: u16 },
    #[error("frame body of {body_bytes} bytes exceeds the configured maximum of {body_bytes_max}")]
    TooLarge {
        body_bytes: u32,
        body_bytes_max: u32,
    },
    #[error("body checksum mismatch: header says 0x{expected:08x}, body has 0x{computed:08x}")]
    BadChecksum { expected: u32, computed: u32 },
    #[error("connection ended inside a frame header ({have_bytes} of {FRAME_HEADER_BYTES} bytes)")]
    TruncatedHeader { have_bytes: usize },
    #[error("connection ended inside a frame body ({have_bytes} of {body_bytes} bytes)")]
    TruncatedBody { have_bytes: usize, body_bytes: u32 },
    #[error(
        "{kind:?} body too short: needs {need_bytes} more bytes at offset {offset}, has {have_bytes}"
    )]
    BodyTooShort {
        kind: FrameKind,
        offset: usize,
        need_bytes: usize,
        have_bytes: usize,
    },
    #[error("{kind:?} body has {extra_bytes} unexpected trailing bytes")]
    TrailingBytes { kind: FrameKind, extra_bytes: usize },
    #[error("malformed {kind:?} body: {reason}")]
    Malformed {
        kind: FrameKind,
        reason: &'static str,
    },
    #[error("unexpected frame {kind:?} here: {context}")]
    Unexpected {
        kind: FrameKind,
        context: &'static str,
    },
}

/// One received frame. `body` is a slice of the receive buffer: decoding its fields
/// (including record payloads) slices it further instead of copying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub request_id: u64,
    pub body: Bytes,
}

/// Validates a header's fixed fields. Called as soon as the 24 header bytes are
/// present, so that a bad or oversize frame is refused before its body is buffered.
pub fn check_header(header: &FrameHeader, body_bytes_max: u32) -> Result<FrameKind, FrameError> {
    if header.magic.get() != FRAME_MAGIC {
        return Err(FrameError::BadMagic {
            found: header.magic.get(),
        });
    }
    if header.version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion {
            found: header.version,
        });
    }
    let kind =
        FrameKind::from_u8(header.kind).ok_or(FrameError::UnknownKind { code: header.kind })?;
    if header.flags.get() != 0 {
        return Err(FrameError::UnknownFlags {
            flags: header.flags.get(),
        });
    }
    if header.body_len.get() > body_bytes_max {
        return Err(FrameError::TooLarge {
            body_bytes: header.body_len.get(),
            body_bytes_max,
        });
    }
    Ok(kind)
}

/// Takes one complete frame off the front of `buf`, if `buf` holds one.
///
/// Returns `Ok(None)` when more bytes are needed; `hint_bytes` (if given) is set to how
/// many bytes the whole frame needs, so the caller can reserve exactly that much. The
/// header is validated (magic, version, kind, flags, length limit) before the body has
/// arrived, so a hostile length never causes an allocation.
pub fn decode_frame(
    buf: &mut BytesMut,
    body_bytes_max: u32,
    hint_bytes: Option<&mut usize>,
) -> Result<Option<Frame>, FrameError> {
    let Ok((header, _)) = FrameHeader::read_from_prefix(&buf[..]) else {
        if let Some(h) = hint_bytes {
            *h = FRAME_HEADER_BYTES;
        }
        return Ok(None);
    };
    let kind = check_header(&header, body_bytes_max)?;
    let frame_bytes = FRAME_HEADER_BYTES + header.body_len.get() as usize;
    if buf.len() < frame_bytes {
        if let Some(h) = hint_bytes {
            *h = frame_bytes;
        }
        return Ok(None);
    }
    let computed = crc32fast::hash(&buf[FRAME_HEADER_BYTES..frame_bytes]);
    if computed != header.body_crc32.get() {
        return Err(FrameError::BadChecksum {
            expected: header.body_crc32.get(),
            computed,
        });
    }
    let mut whole = buf.split_to(frame_bytes);
    whole.advance(FRAME_HEADER_BYTES);
    Ok(Some(Frame {
        kind,
        request_id: header.request_id.get(),
        body: whole.freeze(),
    }))
}

/// The error to report when a stream ends with `leftover` undecoded bytes buffered.
pub fn truncation_error(leftover: &[u8]) -> FrameError {
    match FrameHeader::read_from_prefix(leftover) {
        Err(_) => FrameError::TruncatedHeader {
            have_bytes: leftover.len(),
        },
        Ok((header, rest)) => FrameError::TruncatedBody {
            have_bytes: rest.len(),
            body_bytes: header.body_len.get(),
        },
    }
}

/// Appends one frame to `dst`: a header, then whatever `write_body` puts after it.
/// The header's length and crc32 are filled in afterwards, so bodies are written once,
/// straight into the output buffer (many frames can share one buffer and one write).
pub fn encode_frame(
    dst: &mut BytesMut,
    kind: FrameKind,
    request_id: u64,
    write_body: impl FnOnce(&mut BytesMut),
) {
    let header_at = dst.len();
    dst.put_bytes(0, FRAME_HEADER_BYTES);
    write_body(dst);
    let body = &dst[header_at + FRAME_HEADER_BYTES..];
    let body_len =
        u32::try_from(body.len()).expect("frame body over 4 GiB: senders must bound batches");
    let header = FrameHeader {
        magic: U32::new(FRAME_MAGIC),
        version: PROTOCOL_VERSION,
        kind: kind as u8,
        flags: U16::new(0),
        body_len: U32::new(body_len),
        body_crc32: U32::new(crc32fast::hash(body)),
        request_id: U64::new(request_id),
    };
    dst[header_at..header_at + FRAME_HEADER_BYTES].copy_from_slice(header.as_bytes());
}

/// A bounds-checked little-endian cursor over a frame body. Every read that would run
/// past the end is a [`FrameError::BodyTooShort`], never a panic.
pub struct BodyReader {
    kind: FrameKind,
    body: Bytes,
    offset: usize,
}

impl BodyReader {
    pub fn new(frame: &Frame) -> BodyReader {
        BodyReader {
            kind: frame.kind,
            body: frame.body.clone(),
            offset: 0,
        }
    }

    pub fn kind(&self) -> FrameKind {
        self.kind
    }

    pub fn remaining_bytes(&self) -> usize {
        self.body.len() - self.offset
    }

    fn need(&self, n: usize) -> Result<(), FrameError> {
        if self.remaining_bytes() < n {
            return Err(FrameError::BodyTooShort {
                kind: self.kind,
                offset: self.offset,
                need_bytes: n,
                have_bytes: self.remaining_bytes(),
            });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        self.need(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.body[self.offset..self.offset + N]);
        self.offset += N;
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads `n` reserved bytes, which must be zero: this keeps every valid frame's
    /// encoding unique (decode then encode gives the same bytes).
    pub fn reserved(&mut self, n: usize) -> Result<(), FrameError> {
        self.need(n)?;
        let all_zero = self.body[self.offset..self.offset + n]
            .iter()
            .all(|b| *b == 0);
        self.offset += n;
        if !all_zero {
            return Err(self.malformed("reserved bytes are not zero"));
        }
        Ok(())
    }

    /// A 0/1 byte.
    pub fn bool(&mut self) -> Result<bool, FrameError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.malformed("boolean byte is neither 0 nor 1")),
        }
    }

    /// The next `n` bytes as a slice of the body (no copy).
    pub fn bytes(&mut self, n: usize) -> Result<Bytes, FrameError> {
        self.need(n)?;
        let out = self.body.slice(self.offset..self.offset + n);
        self.offset += n;
        Ok(out)
    }

    /// The next `n` bytes as UTF-8 text.
    pub fn string(&mut self, n: usize) -> Result<String, FrameError> {
        let raw = self.bytes(n)?;
        String::from_utf8(raw.to_vec()).map_err(|_| self.malformed("text is not UTF-8"))
    }

    /// Checks that a count of items, each at least `item_bytes_min` long, can fit in
    /// what is left, so that a hostile count never drives a large allocation.
    pub fn check_count(&self, count: u32, item_bytes_min: usize) -> Result<usize, FrameError> {
        let count = count as usize;
        if count.saturating_mul(item_bytes_min) > self.remaining_bytes() {
            return Err(self.malformed("item count exceeds what the body can hold"));
        }
        Ok(count)
    }

    pub fn malformed(&self, reason: &'static str) -> FrameError {
        FrameError::Malformed {
            kind: self.kind,
            reason,
        }
    }

    /// Ends decoding: any bytes left over are an error.
    pub fn finish(self) -> Result<(), FrameError> {
        if self.remaining_bytes() != 0 {
            return Err(FrameError::TrailingBytes {
                kind: self.kind,
                extra_bytes: self.remaining_bytes(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_checked_before_the_body_arrives() {
        let mut buf = BytesMut::new();
        encode_frame(&mut buf, FrameKind::MetadataRequest, 7, |b| {
            b.put_bytes(1, 100)
        });
        // Claim 4 GiB - 1: refused with only the header present.
        buf[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        buf.truncate(FRAME_HEADER_BYTES);
        let err = decode_frame(&mut buf, 1024, None).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut whole = BytesMut::new();
        encode_frame(&mut whole, FrameKind::TimeoutNow, 0, |b| b.put_u64_le(5));
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            let mut hint = 0;
            assert_eq!(decode_frame(&mut part, 1024, Some(&mut hint)), Ok(None));
            assert!(hint > cut);
        }
    }
}
