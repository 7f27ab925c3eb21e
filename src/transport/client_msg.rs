//! Bodies of client protocol frames: requests, responses and the error response.
//! Layouts are in `docs/wire-protocol.md`.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

pub use super::client_error::{NO_NODE, ServerError};
use super::client_error::{TEXT_BYTES_MAX, decode_error, encode_error};
use super::frame::{BodyReader, Frame, FrameError, FrameKind, encode_frame};
use super::members_msg::{
    MembersOk, MembersRequest, MembershipChangeOk, MembershipChangeRequest, change_request_bytes,
    decode_change_request, decode_change_response, decode_members_request, decode_members_response,
    put_change_request, put_change_response, put_members_request, put_members_response,
};
use super::peer_msg::truncate_utf8;
use crate::engine::{Index, NodeId, Term};

/// Append `records` to `partition`, in order, as consecutive positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendRequest {
    pub partition: u32,
    pub records: Vec<Bytes>,
}

/// Where an acknowledged append landed. Positions between `first_index` and
/// `last_index` are this request's records, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOk {
    pub first_index: Index,
    pub last_index: Index,
}

/// Read committed records of `partition` starting at `from_index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    pub partition: u32,
    pub from_index: Index,
    /// At most this many records (the server may return fewer).
    pub max_records: u32,
    /// At most about this many payload bytes; at least one record is returned when
    /// one is available even if it alone is larger.
    pub max_bytes: u32,
    /// When nothing is committed at `from_index` yet, wait up to this long for it;
    /// 0 answers at once (possibly with no records).
    pub wait_timeout_ms: u32,
    /// Let any replica answer from its own committed log (it may lag the leader by
    /// a heartbeat or more, so a reader switching nodes can see the commit index
    /// fall). Off: only the leader answers, linearizably; others say NotLeader.
    pub any_replica: bool,
}

/// Bit 0 of a ReadRequest's flags: see [`ReadRequest::any_replica`].
pub const READ_FLAG_ANY_REPLICA: u32 = 1;

/// One record read back, with its position. Positions may have gaps (leader no-ops).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub index: Index,
    pub payload: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOk {
    pub records: Vec<Record>,
    pub commit_index: Index,
    /// The first position still retained in the partition.
    pub log_start: Index,
}

impl ReadOk {
    /// Where a reader that asked from `from` continues: past the last record
    /// returned or, when none came back, past the commit index (everything up to it
    /// was leader no-ops, which reads skip, or nothing is new).
    pub fn next_from(&self, from: Index) -> Index {
        self.records
            .last()
            .map_or(from.max(self.commit_index + 1), |r| r.index + 1)
    }
}

/// Remove the records of `partition` below `before`, on every replica: the trim is
/// an entry of the log, so all replicas agree on the new log start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrimRequest {
    pub partition: u32,
    pub before: Index,
}

/// A committed trim: the index of its entry in the log, and the partition's log
/// start on the answering leader once the trim is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrimOk {
    pub trim_index: Index,
    pub log_start: Index,
}

/// Ask the leader of `partition` to hand its leadership to `to`, or, when `to` is
/// None, to the follower whose log is most up to date. On the wire None is
/// [`NO_NODE`], as in every node-id field, so `to` is never `Some(NO_NODE)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferRequest {
    pub partition: u32,
    pub to: Option<NodeId>,
}

/// A finished transfer: `leader` leads the partition in `term`, as the old leader
/// learnt it (or the leader itself, asked to hand over to itself). `leader` is
/// never [`NO_NODE`]: the answer comes only once a leader is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferOk {
    pub leader: NodeId,
    pub term: Term,
}

/// One node of the cluster as clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: NodeId,
    /// `host:port` of the node's client listener.
    pub client_addr: String,
}

/// One partition as the answering node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    /// The leader the answering node knows of, if any.
    pub leader: Option<NodeId>,
    pub term: Term,
    pub commit_index: Index,
    pub last_index: Index,
    pub log_start: Index,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub cluster_id: u64,
    pub nodes: Vec<NodeInfo>,
    pub partitions: Vec<PartitionInfo>,
}

/// What a client can ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientRequest {
    Append(AppendRequest),
    Read(ReadRequest),
    Metadata,
    Trim(TrimRequest),
    Transfer(TransferRequest),
    Members(MembersRequest),
    ChangeMembership(MembershipChangeRequest),
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientResponse {
    Append(AppendOk),
    Read(ReadOk),
    Metadata(Metadata),
    Trim(TrimOk),
    Transfer(TransferOk),
    Members(MembersOk),
    ChangeMembership(MembershipChangeOk),
}

/// Bytes of `request`'s body on the wire, so a client can check it against the
/// server's frame limit before sending.
pub fn request_body_bytes(request: &ClientRequest) -> usize {
    match request {
        ClientRequest::Append(a) => 8 + a.records.iter().map(|r| 4 + r.len()).sum::<usize>(),
        ClientRequest::Read(_) => 28,
        ClientRequest::Metadata => 0,
        ClientRequest::Trim(_) => 16,
        ClientRequest::Transfer(_) => 8,
        ClientRequest::Members(_) => 8,
        ClientRequest::ChangeMembership(c) => change_request_bytes(c),
    }
}

pub fn encode_request(dst: &mut BytesMut, request_id: u64, request: &ClientRequest) {
    match request {
        ClientRequest::Append(a) => {
            dst.reserve(32 + a.records.iter().map(|r| 4 + r.len()).sum::<usize>());
            encode_frame(dst, FrameKind::AppendRequest, request_id, |b| {
                b.put_u32_le(a.partition);
                b.put_u32_le(u32::try_from(a.records.len()).expect("record count fits u32"));
                for r in &a.records {
                    b.put_u32_le(u32::try_from(r.len()).expect("record fits u32"));
                    b.put_slice(r);
                }
            })
        }
        ClientRequest::Read(r) => encode_frame(dst, FrameKind::ReadRequest, request_id, |b| {
            b.put_u32_le(r.partition);
            b.put_u32_le(r.max_records);
            b.put_u64_le(r.from_index);
            b.put_u32_le(r.max_bytes);
            b.put_u32_le(r.wait_timeout_ms);
            b.put_u32_le(if r.any_replica {
                READ_FLAG_ANY_REPLICA
            } else {
                0
            });
        }),
        ClientRequest::Metadata => {
            encode_frame(dst, FrameKind::MetadataRequest, request_id, |_| {})
        }
        ClientRequest::Trim(t) => encode_frame(dst, FrameKind::TrimRequest, request_id, |b| {
            b.put_u32_le(t.partition);
            b.put_u32_le(0);
            b.put_u64_le(t.before);
        }),
        ClientRequest::Transfer(t) => {
            encode_frame(dst, FrameKind::TransferRequest, request_id, |b| {
                b.put_u32_le(t.partition);
                b.put_u32_le(t.to.unwrap_or(NO_NODE));
            })
        }
        ClientRequest::Members(m) => {
            encode_frame(dst, FrameKind::MembersRequest, request_id, |b| {
                put_members_request(b, m)
            })
        }
        ClientRequest::ChangeMembership(c) => {
            encode_frame(dst, FrameKind::MembershipChangeRequest, request_id, |b| {
                put_change_request(b, c)
            })
        }
    }
}

pub fn decode_request(frame: &Frame) -> Result<ClientRequest, FrameError> {
    let mut r = BodyReader::new(frame);
    let request = match frame.kind {
        FrameKind::AppendRequest => {
            let partition = r.u32()?;
            let count = r.u32()?;
            let count = r.check_count(count, 4)?;
            let mut records = Vec::with_capacity(count);
            for _ in 0..count {
                let len = r.u32()? as usize;
                records.push(r.bytes(len)?);
            }
            ClientRequest::Append(AppendRequest { partition, records })
        }
        FrameKind::ReadRequest => {
            let partition = r.u32()?;
            let max_records = r.u32()?;
            let from_index = r.u64()?;
            let max_bytes = r.u32()?;
            let wait_timeout_ms = r.u32()?;
            let flags = r.u32()?;
            if flags & !READ_FLAG_ANY_REPLICA != 0 {
                return Err(FrameError::Malformed {
                    kind: frame.kind,
                    reason: "unknown ReadRequest flags",
                });
            }
            ClientRequest::Read(ReadRequest {
                partition,
                from_index,
                max_records,
                max_bytes,
                wait_timeout_ms,
                any_replica: flags & READ_FLAG_ANY_REPLICA != 0,
            })
        }
        FrameKind::MetadataRequest => ClientRequest::Metadata,
        FrameKind::TrimRequest => {
            let partition = r.u32()?;
            r.reserved(4)?;
            let before = r.u64()?;
            ClientRequest::Trim(TrimRequest { partition, before })
        }
        FrameKind::TransferRequest => {
            let partition = r.u32()?;
            let to = r.u32()?;
            ClientRequest::Transfer(TransferRequest {
                partition,
                to: (to != NO_NODE).then_some(to),
            })
        }
        FrameKind::MembersRequest => ClientRequest::Members(decode_members_request(&mut r)?),
        FrameKind::MembershipChangeRequest => {
            ClientRequest::ChangeMembership(decode_change_request(&mut r)?)
        }
        other => {
            return Err(FrameError::Unexpected {
                kind: other,
                context: "expected a client request",
            });
        }
    };
    r.finish()?;
    Ok(request)
}

/// Appends the answer to request `request_id`, success or error.
pub fn encode_response(
    dst: &mut BytesMut,
    request_id: u64,
    response: &Result<ClientResponse, ServerError>,
) {
    match response {
        Ok(ClientResponse::Append(a)) => {
            encode_frame(dst, FrameKind::AppendResponse, request_id, |b| {
                b.put_u64_le(a.first_index);
                b.put_u64_le(a.last_index);
            })
        }
        Ok(ClientResponse::Read(read)) => {
            dst.reserve(
                48 + read
                    .records
                    .iter()
                    .map(|r| 12 + r.payload.len())
                    .sum::<usize>(),
            );
            encode_frame(dst, FrameKind::ReadResponse, request_id, |b| {
                b.put_u64_le(read.commit_index);
                b.put_u64_le(read.log_start);
                b.put_u32_le(u32::try_from(read.records.len()).expect("record count fits u32"));
                b.put_u32_le(0);
                for r in &read.records {
                    b.put_u64_le(r.index);
                    b.put_u32_le(u32::try_from(r.payload.len()).expect("record fits u32"));
                    b.put_slice(&r.payload);
                }
            })
        }
        Ok(ClientResponse::Metadata(m)) => {
            encode_frame(dst, FrameKind::MetadataResponse, request_id, |b| {
                b.put_u64_le(m.cluster_id);
                b.put_u32_le(u32::try_from(m.nodes.len()).expect("node count fits u32"));
                b.put_u32_le(u32::try_from(m.partitions.len()).expect("partition count fits u32"));
                for n in &m.nodes {
                    let addr = truncate_utf8(&n.client_addr, TEXT_BYTES_MAX);
                    b.put_u32_le(n.node_id);
                    b.put_u16_le(addr.len() as u16);
                    b.put_slice(addr.as_bytes());
                }
                for p in &m.partitions {
                    b.put_u32_le(p.partition);
                    b.put_u32_le(p.leader.unwrap_or(NO_NODE));
                    b.put_u64_le(p.term);
                    b.put_u64_le(p.commit_index);
                    b.put_u64_le(p.last_index);
                    b.put_u64_le(p.log_start);
                }
            })
        }
        Ok(ClientResponse::Trim(t)) => {
            encode_frame(dst, FrameKind::TrimResponse, request_id, |b| {
                b.put_u64_le(t.trim_index);
                b.put_u64_le(t.log_start);
            })
        }
        Ok(ClientResponse::Transfer(t)) => {
            encode_frame(dst, FrameKind::TransferResponse, request_id, |b| {
                b.put_u32_le(t.leader);
                b.put_u32_le(0);
                b.put_u64_le(t.term);
            })
        }
        Ok(ClientResponse::Members(m)) => {
            encode_frame(dst, FrameKind::MembersResponse, request_id, |b| {
                put_members_response(b, m)
            })
        }
        Ok(ClientResponse::ChangeMembership(c)) => {
            encode_frame(dst, FrameKind::MembershipChangeResponse, request_id, |b| {
                put_change_response(b, c)
            })
        }
        Err(e) => encode_error(dst, request_id, e),
    }
}

/// Decodes any client response frame: `Ok(Err(_))` is a well-formed error response.
pub fn decode_response(frame: &Frame) -> Result<Result<ClientResponse, ServerError>, FrameError> {
    let mut r = BodyReader::new(frame);
    let response = match frame.kind {
        FrameKind::AppendResponse => Ok(ClientResponse::Append(AppendOk {
            first_index: r.u64()?,
            last_index: r.u64()?,
        })),
        FrameKind::ReadResponse => {
            let commit_index = r.u64()?;
            let log_start = r.u64()?;
            let count = r.u32()?;
            r.reserved(4)?;
            let count = r.check_count(count, 12)?;
            let mut records = Vec::with_capacity(count);
            for _ in 0..count {
                let index = r.u64()?;
                let len = r.u32()? as usize;
                records.push(Record {
                    index,
                    payload: r.bytes(len)?,
                });
            }
            Ok(ClientResponse::Read(ReadOk {
                records,
                commit_index,
                log_start,
            }))
        }
        FrameKind::MetadataResponse => Ok(ClientResponse::Metadata(decode_metadata(&mut r)?)),
        FrameKind::ErrorResponse => Err(decode_error(&mut r)?),
        FrameKind::TrimResponse => Ok(ClientResponse::Trim(TrimOk {
            trim_index: r.u64()?,
            log_start: r.u64()?,
        })),
        FrameKind::TransferResponse => {
            let leader = r.u32()?;
            r.reserved(4)?;
            if leader == NO_NODE {
                return Err(r.malformed("a finished transfer names no leader"));
            }
            Ok(ClientResponse::Transfer(TransferOk {
                leader,
                term: r.u64()?,
            }))
        }
        FrameKind::MembersResponse => Ok(ClientResponse::Members(decode_members_response(&mut r)?)),
        FrameKind::MembershipChangeResponse => Ok(ClientResponse::ChangeMembership(
            decode_change_response(&mut r)?,
        )),
        other => {
            return Err(FrameError::Unexpected {
                kind: other,
                context: "expected a client response",
            });
        }
    };
    r.finish()?;
    Ok(response)
}

/// A MetadataResponse body, up to its end.
fn decode_metadata(r: &mut BodyReader) -> Result<Metadata, FrameError> {
    let cluster_id = r.u64()?;
    let node_count = r.u32()?;
    let partition_count = r.u32()?;
    let node_count = r.check_count(node_count, 6)?;
    let mut nodes = Vec::with_capacity(node_count);
    for _ in 0..node_count {
        let node_id = r.u32()?;
        let len = r.u16()? as usize;
        nodes.push(NodeInfo {
            node_id,
            client_addr: r.string(len)?,
        });
    }
    let partition_count = r.check_count(partition_count, 40)?;
    let mut partitions = Vec::with_capacity(partition_count);
    for _ in 0..partition_count {
        let partition = r.u32()?;
        let leader = r.u32()?;
        partitions.push(PartitionInfo {
            partition,
            leader: (leader != NO_NODE).then_some(leader),
            term: r.u64()?,
            commit_index: r.u64()?,
            last_index: r.u64()?,
            log_start: r.u64()?,
        });
    }
    Ok(Metadata {
        cluster_id,
        nodes,
        partitions,
    })
}

/// Why a node is closing a client connection: the first byte of a ClosingNotice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCause {
    /// The client broke the framing or sent something not valid on this connection.
    ProtocolError,
    /// The client was idle too long, or too slow to send a whole frame.
    Timeout,
    /// The port requires TLS and the client spoke plaintext; nothing it sent was read.
    TlsRequired,
}

impl CloseCause {
    fn code(self) -> u8 {
        match self {
            CloseCause::ProtocolError => 1,
            CloseCause::Timeout => 2,
            CloseCause::TlsRequired => 3,
        }
    }

    fn from_code(code: u8) -> Option<CloseCause> {
        match code {
            1 => Some(CloseCause::ProtocolError),
            2 => Some(CloseCause::Timeout),
            3 => Some(CloseCause::TlsRequired),
            _ => None,
        }
    }
}

impl std::fmt::Display for CloseCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloseCause::ProtocolError => "protocol error",
            CloseCause::Timeout => "timeout",
            CloseCause::TlsRequired => "TLS required",
        })
    }
}

/// The last frame a node sends on a client connection it is about to close. It is a
/// kind of its own, never an answer, so that no request id has to be set aside and a
/// client cannot mistake it for the answer to one of its requests.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("server closed the connection ({cause}): {reason}")]
pub struct ClosingNotice {
    pub cause: CloseCause,
    pub reason: String,
}

pub fn encode_closing_notice(dst: &mut BytesMut, notice: &ClosingNotice) {
    let text = truncate_utf8(&notice.reason, TEXT_BYTES_MAX);
    encode_frame(dst, FrameKind::ClosingNotice, 0, |b| {
        b.put_u8(notice.cause.code());
        b.put_u8(0);
        b.put_u16_le(text.len() as u16);
        b.put_slice(text.as_bytes());
    });
}

pub fn decode_closing_notice(frame: &Frame) -> Result<ClosingNotice, FrameError> {
    let mut r = BodyReader::new(frame);
    if frame.kind != FrameKind::ClosingNotice {
        return Err(FrameError::Unexpected {
            kind: frame.kind,
            context: "expected a closing notice",
        });
    }
    if frame.request_id != 0 {
        return Err(r.malformed("closing notice with a request id"));
    }
    let cause = CloseCause::from_code(r.u8()?).ok_or_else(|| r.malformed("unknown close cause"))?;
    r.reserved(1)?;
    let text_len = r.u16()? as usize;
    let reason = r.string(text_len)?;
    r.finish()?;
    Ok(ClosingNotice { cause, reason })
}
