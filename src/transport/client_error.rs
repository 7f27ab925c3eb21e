//! The error response of the client protocol: [`ServerError`], its stable wire
//! codes and its one fixed layout (`docs/wire-protocol.md`, *ErrorResponse*).

use bytes::{BufMut, BytesMut};
use thiserror::Error;

use super::frame::{BodyReader, FrameError, FrameKind, encode_frame};
use super::peer_msg::truncate_utf8;
use crate::engine::{Index, NodeId};

/// Marks "no node" in node-id fields.
pub const NO_NODE: u32 = u32::MAX;
pub(super) const TEXT_BYTES_MAX: usize = u16::MAX as usize;

/// A request the server could not carry out, as sent on the wire. Each variant has a
/// stable numeric code (see [`ServerError::code`]).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ServerError {
    /// This node does not lead the partition. `leader_addr` is the leader's client
    /// address when known; a client retries there.
    #[error("not the leader; {}", describe_leader(*leader, leader_addr.as_deref()))]
    NotLeader {
        leader: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// The position asked for is outside the retained log [log_start, log_end].
    #[error("index out of range: {}", describe_range(*log_start, *log_end))]
    OutOfRange { log_start: Index, log_end: Index },
    #[error("server overloaded, retry later")]
    Overloaded,
    #[error("request timed out on the server")]
    Timeout,
    #[error("invalid request: {reason}")]
    InvalidRequest { reason: String },
    #[error("unavailable: {reason}")]
    Unavailable { reason: String },
    /// The leader's data directory has less free space than its low-disk watermark
    /// (`[wal] min_free_bytes`): appends are refused, trims and reads still work.
    #[error(
        "node {node} has {free_bytes} bytes free, below [wal] min_free_bytes = {min_free_bytes}: appends are refused until space is freed"
    )]
    DiskLow {
        node: NodeId,
        free_bytes: u64,
        min_free_bytes: u64,
    },
    /// The client's principal lacks the role the request needs (`docs/security.md`).
    #[error("unauthorized: {reason}")]
    Unauthorized { reason: String },
}

/// The readable part of a partition's log in words: both ends are inclusive, and an
/// empty log (`log_end` below `log_start`) says where its first record will go.
fn describe_range(log_start: Index, log_end: Index) -> String {
    if log_end < log_start {
        format!("no committed records yet; the next will be at index {log_start}")
    } else {
        format!("the log holds indexes {log_start} to {log_end}")
    }
}

/// Who leads, in words, for `NotLeader` messages: Option debug output means nothing
/// to someone reading a CLI error.
fn describe_leader(leader: Option<NodeId>, leader_addr: Option<&str>) -> String {
    match (leader, leader_addr) {
        (Some(node), Some(addr)) => format!("the leader is node {node} at {addr}"),
        (Some(node), None) => format!("the leader is node {node}, address unknown"),
        (None, Some(addr)) => format!("the leader is at {addr}"),
        (None, None) => "no leader elected yet".to_string(),
    }
}

impl ServerError {
    /// The wire code of this error.
    pub fn code(&self) -> u16 {
        match self {
            ServerError::NotLeader { .. } => 1,
            ServerError::OutOfRange { .. } => 2,
            ServerError::Overloaded => 3,
            ServerError::Timeout => 4,
            ServerError::InvalidRequest { .. } => 5,
            ServerError::Unavailable { .. } => 6,
            ServerError::DiskLow { .. } => 7,
            ServerError::Unauthorized { .. } => 8,
        }
    }
}

/// The fields of the fixed layout: a node id, two u64 and a text; a code uses some
/// and leaves the others empty.
struct Fields<'a> {
    node: u32,
    a: u64,
    b: u64,
    text: &'a str,
}

impl ServerError {
    fn fields(&self) -> Fields<'_> {
        let empty = Fields {
            node: NO_NODE,
            a: 0,
            b: 0,
            text: "",
        };
        match self {
            ServerError::NotLeader {
                leader,
                leader_addr,
            } => Fields {
                node: leader.unwrap_or(NO_NODE),
                text: leader_addr.as_deref().unwrap_or(""),
                ..empty
            },
            ServerError::OutOfRange { log_start, log_end } => Fields {
                a: *log_start,
                b: *log_end,
                ..empty
            },
            ServerError::Overloaded | ServerError::Timeout => empty,
            ServerError::InvalidRequest { reason }
            | ServerError::Unavailable { reason }
            | ServerError::Unauthorized { reason } => Fields {
                text: reason,
                ..empty
            },
            ServerError::DiskLow {
                node,
                free_bytes,
                min_free_bytes,
            } => Fields {
                node: *node,
                a: *free_bytes,
                b: *min_free_bytes,
                text: "",
            },
        }
    }
}

pub(super) fn encode_error(dst: &mut BytesMut, request_id: u64, e: &ServerError) {
    encode_frame(dst, FrameKind::ErrorResponse, request_id, |b| {
        put_error(b, e)
    });
}

/// Puts an ErrorResponse body: also the layout of one partition's error in the
/// membership answers.
pub(super) fn put_error(b: &mut BytesMut, e: &ServerError) {
    let fields = e.fields();
    let text = truncate_utf8(fields.text, TEXT_BYTES_MAX);
    b.put_u16_le(e.code());
    b.put_u16_le(text.len() as u16);
    b.put_u32_le(fields.node);
    b.put_u64_le(fields.a);
    b.put_u64_le(fields.b);
    b.put_slice(text.as_bytes());
}

/// Decodes an ErrorResponse body (the reader's `finish` is left to the caller).
pub(super) fn decode_error(r: &mut BodyReader) -> Result<ServerError, FrameError> {
    let code = r.u16()?;
    let text_len = r.u16()? as usize;
    let node = r.u32()?;
    let (a, b) = (r.u64()?, r.u64()?);
    let text = r.string(text_len)?;
    let node_id = (node != NO_NODE).then_some(node);
    let error = match code {
        1 => ServerError::NotLeader {
            leader: node_id,
            leader_addr: (!text.is_empty()).then(|| text.clone()),
        },
        2 => ServerError::OutOfRange {
            log_start: a,
            log_end: b,
        },
        3 => ServerError::Overloaded,
        4 => ServerError::Timeout,
        5 => ServerError::InvalidRequest {
            reason: text.clone(),
        },
        6 => ServerError::Unavailable {
            reason: text.clone(),
        },
        7 => match node_id {
            Some(node) => ServerError::DiskLow {
                node,
                free_bytes: a,
                min_free_bytes: b,
            },
            None => return Err(r.malformed("DiskLow without a node id")),
        },
        8 => ServerError::Unauthorized {
            reason: text.clone(),
        },
        _ => return Err(r.malformed("unknown error code")),
    };
    // Fields a code does not use must be empty, so each error has one encoding:
    // re-encoding the decoded error must give back exactly what was read.
    let fields = error.fields();
    if (fields.node, fields.a, fields.b, fields.text) != (node, a, b, text.as_str()) {
        return Err(r.malformed("error response sets fields its code does not use"));
    }
    Ok(error)
}

#[cfg(test)]
mod display_tests {
    use super::*;

    #[test]
    fn not_leader_says_in_words_who_leads() {
        let none = ServerError::NotLeader {
            leader: None,
            leader_addr: None,
        };
        assert_eq!(none.to_string(), "not the leader; no leader elected yet");
        let known = ServerError::NotLeader {
            leader: Some(2),
            leader_addr: Some("127.0.0.1:5010".into()),
        };
        assert_eq!(
            known.to_string(),
            "not the leader; the leader is node 2 at 127.0.0.1:5010"
        );
    }

    #[test]
    fn out_of_range_says_in_words_what_the_log_holds() {
        let held = ServerError::OutOfRange {
            log_start: 5,
            log_end: 9,
        };
        assert_eq!(
            held.to_string(),
            "index out of range: the log holds indexes 5 to 9"
        );
        let empty = ServerError::OutOfRange {
            log_start: 1,
            log_end: 0,
        };
        assert_eq!(
            empty.to_string(),
            "index out of range: no committed records yet; the next will be at index 1"
        );
    }

    #[test]
    fn disk_low_names_the_node_the_free_bytes_and_the_setting() {
        let low = ServerError::DiskLow {
            node: 2,
            free_bytes: 201_326_592,
            min_free_bytes: 268_435_456,
        };
        assert_eq!(
            low.to_string(),
            "node 2 has 201326592 bytes free, below [wal] min_free_bytes = 268435456: appends are refused until space is freed"
        );
        assert_eq!(low.code(), 7);
    }
}
