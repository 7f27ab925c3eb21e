//! Bodies of peer frames: the link handshake and one frame kind per Raft
//! [`MessageBody`] variant. Layouts are in `docs/wire-protocol.md`.

use bytes::{BufMut, BytesMut};

use super::frame::{BodyReader, Frame, FrameError, FrameKind, encode_frame};
use crate::engine::{
    AppendResponse, Campaign, ConflictHint, Entry, EntryKind, Index, KnownConfig, Membership,
    Message, MessageBody, NodeId, Term,
};

/// Bytes of the prefix every peer message body starts with (from, to, term).
pub const PEER_PREFIX_BYTES: usize = 16;
/// Bytes of one entry's fixed part inside AppendEntries; equal to the engine's
/// `ENTRY_OVERHEAD_BYTES`, so window accounting matches the wire exactly.
pub const ENTRY_HEADER_BYTES: usize = 24;
const _: () = assert!(ENTRY_HEADER_BYTES as u64 == crate::engine::ENTRY_OVERHEAD_BYTES);

/// Which of a link's two connections this is. Control carries everything small and
/// urgent (votes, heartbeats, responses); bulk carries AppendEntries and LogStart, so
/// a long catch-up transfer never delays a heartbeat, even inside kernel buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Lane {
    Control = 1,
    Bulk = 2,
}

impl Lane {
    /// The lane a message travels on.
    pub fn of(body: &MessageBody) -> Lane {
        match body {
            MessageBody::AppendEntries { .. } | MessageBody::LogStart { .. } => Lane::Bulk,
            _ => Lane::Control,
        }
    }
}

/// The first frame on a peer connection, sent by the connecting side, and (with the
/// acceptor's own identity) the acceptor's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hello {
    /// Every node of one cluster is configured with the same id; a peer with another
    /// id belongs to another cluster (a misconfigured address) and is refused.
    pub cluster_id: u64,
    /// The sender's node id.
    pub node_id: NodeId,
    /// The node the sender believes it is talking to; catches address mix-ups.
    pub peer_node_id: NodeId,
    /// The shard (= partition) this connection carries messages for.
    pub shard_id: u32,
    pub lane: Lane,
    /// The protocol version the sender speaks (also in every header; repeated here so
    /// a refusal can name both versions).
    pub protocol_version: u8,
    /// The sender's number of shards. Records are placed in shards by their count,
    /// so every node of a cluster must run the same number; a peer that does not is
    /// refused.
    pub shard_count: u32,
}

/// Bytes of a [`Hello`] body.
pub const HELLO_BYTES: usize = 28;

pub fn encode_hello(dst: &mut BytesMut, kind: FrameKind, hello: &Hello) {
    debug_assert!(matches!(
        kind,
        FrameKind::PeerHello | FrameKind::PeerHelloAck
    ));
    encode_frame(dst, kind, 0, |b| {
        b.put_u64_le(hello.cluster_id);
        b.put_u32_le(hello.node_id);
        b.put_u32_le(hello.peer_node_id);
        b.put_u32_le(hello.shard_id);
        b.put_u8(hello.lane as u8);
        b.put_u8(hello.protocol_version);
        b.put_u16_le(0);
        b.put_u32_le(hello.shard_count);
    });
}

pub fn decode_hello(frame: &Frame) -> Result<Hello, FrameError> {
    if !matches!(frame.kind, FrameKind::PeerHello | FrameKind::PeerHelloAck) {
        return Err(FrameError::Unexpected {
            kind: frame.kind,
            context: "expected PeerHello or PeerHelloAck",
        });
    }
    let mut r = BodyReader::new(frame);
    let cluster_id = r.u64()?;
    let node_id = r.u32()?;
    let peer_node_id = r.u32()?;
    let shard_id = r.u32()?;
    let lane = match r.u8()? {
        1 => Lane::Control,
        2 => Lane::Bulk,
        _ => return Err(r.malformed("unknown lane")),
    };
    let protocol_version = r.u8()?;
    r.reserved(2)?;
    let shard_count = r.u32()?;
    r.finish()?;
    Ok(Hello {
        cluster_id,
        node_id,
        peer_node_id,
        shard_id,
        lane,
        protocol_version,
        shard_count,
    })
}

/// A refusal: the acceptor (or connector) says why it will not talk, then closes.
pub fn encode_refused(dst: &mut BytesMut, reason: &str) {
    let reason = truncate_utf8(reason, u16::MAX as usize);
    encode_frame(dst, FrameKind::PeerRefused, 0, |b| {
        b.put_u16_le(reason.len() as u16);
        b.put_slice(reason.as_bytes());
    });
}

pub fn decode_refused(frame: &Frame) -> Result<String, FrameError> {
    let mut r = BodyReader::new(frame);
    let len = r.u16()? as usize;
    let reason = r.string(len)?;
    r.finish()?;
    Ok(reason)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The frame kind that carries `body`.
pub fn message_kind(body: &MessageBody) -> FrameKind {
    match body {
        MessageBody::PreVote { .. } => FrameKind::PreVote,
        MessageBody::PreVoteResponse { .. } => FrameKind::PreVoteResponse,
        MessageBody::RequestVote { .. } => FrameKind::RequestVote,
        MessageBody::RequestVoteResponse { .. } => FrameKind::RequestVoteResponse,
        MessageBody::AppendEntries { .. } => FrameKind::AppendEntries,
        MessageBody::AppendEntriesResponse { .. } => FrameKind::AppendEntriesResponse,
        MessageBody::Heartbeat { .. } => FrameKind::Heartbeat,
        MessageBody::HeartbeatResponse { .. } => FrameKind::HeartbeatResponse,
        MessageBody::LogStart { .. } => FrameKind::LogStart,
        MessageBody::TimeoutNow => FrameKind::TimeoutNow,
    }
}

/// Bytes `msg` takes on the wire, header included; lets senders bound batches and
/// queues before encoding.
pub fn message_frame_bytes(msg: &Message) -> usize {
    let body = match &msg.body {
        MessageBody::PreVote { .. } => 16,
        MessageBody::PreVoteResponse { .. } | MessageBody::RequestVoteResponse { .. } => 8,
        MessageBody::RequestVote { .. } => 24,
        MessageBody::AppendEntries { entries, .. } => {
            32 + entries
                .iter()
                .map(|e| ENTRY_HEADER_BYTES + e.payload.len())
                .sum::<usize>()
        }
        MessageBody::AppendEntriesResponse { .. } => 32,
        MessageBody::Heartbeat { .. } | MessageBody::HeartbeatResponse { .. } => 16,
        MessageBody::LogStart { config, .. } => 44 + config.membership.encoded_len(),
        MessageBody::TimeoutNow => 0,
    };
    super::frame::FRAME_HEADER_BYTES + PEER_PREFIX_BYTES + body
}

/// Appends `msg` as one frame to `dst`. Payloads are copied once, into `dst`, which
/// is then written with other frames in one system call (glommio's TcpStream has no
/// vectored write, and the crc pass reads the payload anyway).
pub fn encode_message(dst: &mut BytesMut, msg: &Message) {
    dst.reserve(message_frame_bytes(msg));
    encode_frame(dst, message_kind(&msg.body), 0, |b| {
        b.put_u32_le(msg.from);
        b.put_u32_le(msg.to);
        b.put_u64_le(msg.term);
        encode_body(b, &msg.body);
    });
}

/// Writes what follows the prefix of a peer message body.
fn encode_body(b: &mut BytesMut, body: &MessageBody) {
    match body {
        MessageBody::PreVote {
            last_log_index,
            last_log_term,
        } => {
            b.put_u64_le(*last_log_index);
            b.put_u64_le(*last_log_term);
        }
        MessageBody::PreVoteResponse { granted } | MessageBody::RequestVoteResponse { granted } => {
            b.put_u8(u8::from(*granted));
            b.put_bytes(0, 7);
        }
        MessageBody::RequestVote {
            last_log_index,
            last_log_term,
            campaign,
        } => encode_request_vote(b, *last_log_index, *last_log_term, *campaign),
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => encode_append_entries(b, *prev_log_index, *prev_log_term, *leader_commit, entries),
        MessageBody::AppendEntriesResponse { result } => encode_append_response(b, result),
        MessageBody::Heartbeat { leader_commit, seq } => {
            b.put_u64_le(*leader_commit);
            b.put_u64_le(*seq);
        }
        MessageBody::HeartbeatResponse {
            seq,
            last_log_index,
        } => {
            b.put_u64_le(*seq);
            b.put_u64_le(*last_log_index);
        }
        MessageBody::LogStart {
            start_index,
            prev_term,
            leader_commit,
            config,
        } => {
            b.put_u64_le(*start_index);
            b.put_u64_le(*prev_term);
            b.put_u64_le(*leader_commit);
            b.put_u64_le(config.index);
            b.put_u64_le(config.term);
            let membership = config.membership.encode();
            b.put_u32_le(membership.len() as u32);
            b.put_slice(&membership);
        }
        MessageBody::TimeoutNow => {}
    }
}

/// LogStart: start index, previous term, leader commit, then the leader's committed
/// configuration (index, term, length-prefixed membership).
fn decode_log_start(r: &mut BodyReader) -> Result<MessageBody, FrameError> {
    let (start_index, prev_term, leader_commit) = (r.u64()?, r.u64()?, r.u64()?);
    let (index, term) = (r.u64()?, r.u64()?);
    let len = r.u32()? as usize;
    let bytes = r.bytes(len)?;
    let membership =
        Membership::decode(&bytes).map_err(|_| r.malformed("membership does not decode"))?;
    Ok(MessageBody::LogStart {
        start_index,
        prev_term,
        leader_commit,
        config: KnownConfig {
            index,
            term,
            committed: true,
            membership,
        },
    })
}

fn encode_request_vote(
    b: &mut BytesMut,
    last_log_index: Index,
    last_log_term: Term,
    campaign: Campaign,
) {
    b.put_u64_le(last_log_index);
    b.put_u64_le(last_log_term);
    b.put_u8(match campaign {
        Campaign::Election => 1,
        Campaign::Transfer => 2,
    });
    b.put_bytes(0, 7);
}

fn encode_append_entries(
    b: &mut BytesMut,
    prev_log_index: Index,
    prev_log_term: Term,
    leader_commit: Index,
    entries: &[Entry],
) {
    b.put_u64_le(prev_log_index);
    b.put_u64_le(prev_log_term);
    b.put_u64_le(leader_commit);
    b.put_u32_le(u32::try_from(entries.len()).expect("entry count fits u32"));
    b.put_u32_le(0);
    for e in entries {
        b.put_u64_le(e.term);
        b.put_u64_le(e.index);
        b.put_u8(e.kind as u8);
        b.put_bytes(0, 3);
        b.put_u32_le(u32::try_from(e.payload.len()).expect("payload fits u32"));
        b.put_slice(&e.payload);
    }
}

fn encode_append_response(b: &mut BytesMut, result: &AppendResponse) {
    let (tag, a, b2, c) = match result {
        AppendResponse::Success { match_index } => (1u8, *match_index, 0, 0),
        AppendResponse::Reject {
            rejected_prev_index,
            hint,
        } => (2u8, *rejected_prev_index, hint.index, hint.conflict_term),
    };
    b.put_u8(tag);
    b.put_bytes(0, 7);
    b.put_u64_le(a);
    b.put_u64_le(b2);
    b.put_u64_le(c);
}

/// Decodes a peer message frame. Entry payloads are slices of `frame.body`.
pub fn decode_message(frame: &Frame) -> Result<Message, FrameError> {
    if !frame.kind.is_peer_message() {
        return Err(FrameError::Unexpected {
            kind: frame.kind,
            context: "expected a Raft peer message",
        });
    }
    let mut r = BodyReader::new(frame);
    let from = r.u32()?;
    let to = r.u32()?;
    let term = r.u64()?;
    let body = decode_body(frame.kind, &mut r)?;
    r.finish()?;
    Ok(Message {
        from,
        to,
        term,
        body,
    })
}

/// Reads what follows the prefix of a peer message body of frame kind `kind`.
fn decode_body(kind: FrameKind, r: &mut BodyReader) -> Result<MessageBody, FrameError> {
    Ok(match kind {
        FrameKind::PreVote => MessageBody::PreVote {
            last_log_index: r.u64()?,
            last_log_term: r.u64()?,
        },
        FrameKind::PreVoteResponse | FrameKind::RequestVoteResponse => {
            let granted = r.bool()?;
            r.reserved(7)?;
            if kind == FrameKind::PreVoteResponse {
                MessageBody::PreVoteResponse { granted }
            } else {
                MessageBody::RequestVoteResponse { granted }
            }
        }
        FrameKind::RequestVote => decode_request_vote(r)?,
        FrameKind::AppendEntries => decode_append_entries(r)?,
        FrameKind::AppendEntriesResponse => decode_append_response(r)?,
        FrameKind::Heartbeat => MessageBody::Heartbeat {
            leader_commit: r.u64()?,
            seq: r.u64()?,
        },
        FrameKind::HeartbeatResponse => MessageBody::HeartbeatResponse {
            seq: r.u64()?,
            last_log_index: r.u64()?,
        },
        FrameKind::LogStart => decode_log_start(r)?,
        FrameKind::TimeoutNow => MessageBody::TimeoutNow,
        other => {
            return Err(FrameError::Unexpected {
                kind: other,
                context: "expected a Raft peer message",
            });
        }
    })
}

fn decode_request_vote(r: &mut BodyReader) -> Result<MessageBody, FrameError> {
    let last_log_index = r.u64()?;
    let last_log_term = r.u64()?;
    let campaign = match r.u8()? {
        1 => Campaign::Election,
        2 => Campaign::Transfer,
        _ => return Err(r.malformed("unknown campaign code")),
    };
    r.reserved(7)?;
    Ok(MessageBody::RequestVote {
        last_log_index,
        last_log_term,
        campaign,
    })
}

fn decode_append_entries(r: &mut BodyReader) -> Result<MessageBody, FrameError> {
    let prev_log_index = r.u64()?;
    let prev_log_term = r.u64()?;
    let leader_commit = r.u64()?;
    let count = r.u32()?;
    r.reserved(4)?;
    let count = r.check_count(count, ENTRY_HEADER_BYTES)?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        entries.push(decode_entry(r)?);
    }
    Ok(MessageBody::AppendEntries {
        prev_log_index,
        prev_log_term,
        entries,
        leader_commit,
    })
}

fn decode_entry(r: &mut BodyReader) -> Result<Entry, FrameError> {
    let term = r.u64()?;
    let index = r.u64()?;
    let kind = EntryKind::from_u8(r.u8()?).ok_or(r.malformed("unknown entry kind"))?;
    r.reserved(3)?;
    let len = r.u32()? as usize;
    let payload = r.bytes(len)?;
    Ok(Entry {
        term,
        index,
        kind,
        payload,
    })
}

fn decode_append_response(r: &mut BodyReader) -> Result<MessageBody, FrameError> {
    let tag = r.u8()?;
    r.reserved(7)?;
    let a = r.u64()?;
    let b = r.u64()?;
    let c = r.u64()?;
    let result = match tag {
        1 if b == 0 && c == 0 => AppendResponse::Success { match_index: a },
        1 => return Err(r.malformed("success response with reject fields set")),
        2 => AppendResponse::Reject {
            rejected_prev_index: a,
            hint: ConflictHint {
                index: b,
                conflict_term: c,
            },
        },
        _ => return Err(r.malformed("unknown append result tag")),
    };
    Ok(MessageBody::AppendEntriesResponse { result })
}
