//! Bodies of the membership frames: listing each partition's members
//! (MembersRequest/MembersResponse) and changing them by one member
//! (MembershipChangeRequest/MembershipChangeResponse). Layouts are in
//! `docs/wire-protocol.md`.
//!
//! Both requests name one partition or, with [`ALL_PARTITIONS`], every partition
//! of the answering node; both answers hold one outcome per partition asked, so a
//! node that leads some partitions and not others answers for each (the others
//! with NotLeader naming their leader, where the client asks again).

use bytes::{BufMut, BytesMut};

use super::client_error::{NO_NODE, ServerError, decode_error, put_error};
use super::frame::{BodyReader, FrameError};
use super::peer_msg::truncate_utf8;
use crate::engine::{Index, NodeId, Term};

/// The partition field's value that asks for every partition of the node.
pub const ALL_PARTITIONS: u32 = u32::MAX;
/// The longest address a change may carry, in bytes (one length byte).
pub const MEMBER_ADDRESS_BYTES_MAX: usize = 255;

/// Change code of a MembershipChangeRequest: add a learner.
const CHANGE_ADD_LEARNER: u8 = 1;
/// Change code: make a learner a voter.
const CHANGE_PROMOTE: u8 = 2;
/// Change code: remove a member.
const CHANGE_REMOVE: u8 = 3;

/// Member flag bits in a MembersResponse.
const MEMBER_FLAG_VOTER: u8 = 1;
const MEMBER_FLAG_LEADER: u8 = 2;
const MEMBER_FLAG_ACTIVE: u8 = 4;
const MEMBER_FLAGS_KNOWN: u8 = MEMBER_FLAG_VOTER | MEMBER_FLAG_LEADER | MEMBER_FLAG_ACTIVE;

/// Outcome byte of a per-partition answer.
const OUTCOME_OK: u8 = 0;
const OUTCOME_ERROR: u8 = 1;

/// Bytes of a per-partition error: the ErrorResponse layout without its text.
const ERROR_BYTES_MIN: usize = 24;

/// List the members of `partition` (or of every partition, [`ALL_PARTITIONS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembersRequest {
    pub partition: u32,
}

/// One member as the partition's leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub node_id: NodeId,
    pub voter: bool,
    /// The member is the leader that answered.
    pub leader: bool,
    /// The leader heard from the member since its last check-quorum round (the
    /// leader itself always is).
    pub active: bool,
    /// The last index the leader knows the member holds (its own last index for
    /// the leader).
    pub match_index: Index,
    pub peer_address: String,
    pub client_address: String,
}

/// The members of one partition, from its leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMembers {
    pub leader: NodeId,
    pub term: Term,
    /// The leader's last log index, from which each member's lag is counted.
    pub last_index: Index,
    pub commit_index: Index,
    pub members: Vec<MemberInfo>,
}

impl PartitionMembers {
    /// How many entries `member` is behind the leader's log.
    pub fn lag(&self, member: &MemberInfo) -> u64 {
        self.last_index.saturating_sub(member.match_index)
    }
}

/// One partition's answer: its outcome, or why it has none here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOutcome<T> {
    pub partition: u32,
    pub result: Result<T, ServerError>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembersOk {
    pub partitions: Vec<PartitionOutcome<PartitionMembers>>,
}

/// One single-member change, as the engine takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeOp {
    /// Add `node_id` as a learner, reachable at the addresses given.
    AddLearner {
        node_id: NodeId,
        peer_address: String,
        client_address: String,
    },
    Promote {
        node_id: NodeId,
    },
    Remove {
        node_id: NodeId,
    },
}

impl ChangeOp {
    pub fn node_id(&self) -> NodeId {
        match self {
            ChangeOp::AddLearner { node_id, .. }
            | ChangeOp::Promote { node_id }
            | ChangeOp::Remove { node_id } => *node_id,
        }
    }

    fn code(&self) -> u8 {
        match self {
            ChangeOp::AddLearner { .. } => CHANGE_ADD_LEARNER,
            ChangeOp::Promote { .. } => CHANGE_PROMOTE,
            ChangeOp::Remove { .. } => CHANGE_REMOVE,
        }
    }

    /// The peer and client addresses carried (empty for promote and remove).
    fn addresses(&self) -> (&str, &str) {
        match self {
            ChangeOp::AddLearner {
                peer_address,
                client_address,
                ..
            } => (peer_address, client_address),
            _ => ("", ""),
        }
    }
}

/// Change the members of `partition` (or of every partition, [`ALL_PARTITIONS`])
/// by one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipChangeRequest {
    pub partition: u32,
    pub change: ChangeOp,
}

/// Per partition, the index of the committed configuration entry, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipChangeOk {
    pub partitions: Vec<PartitionOutcome<Index>>,
}

pub(super) fn put_members_request(b: &mut BytesMut, request: &MembersRequest) {
    b.put_u32_le(request.partition);
    b.put_u32_le(0);
}

pub(super) fn decode_members_request(r: &mut BodyReader) -> Result<MembersRequest, FrameError> {
    let partition = r.u32()?;
    r.reserved(4)?;
    Ok(MembersRequest { partition })
}

/// Body bytes of a MembershipChangeRequest.
pub(super) fn change_request_bytes(request: &MembershipChangeRequest) -> usize {
    let (peer, client) = request.change.addresses();
    12 + peer.len().min(MEMBER_ADDRESS_BYTES_MAX) + client.len().min(MEMBER_ADDRESS_BYTES_MAX)
}

/// Addresses longer than [`MEMBER_ADDRESS_BYTES_MAX`] are cut (the client refuses
/// them before encoding).
pub(super) fn put_change_request(b: &mut BytesMut, request: &MembershipChangeRequest) {
    let (peer, client) = request.change.addresses();
    let peer = truncate_utf8(peer, MEMBER_ADDRESS_BYTES_MAX);
    let client = truncate_utf8(client, MEMBER_ADDRESS_BYTES_MAX);
    b.put_u32_le(request.partition);
    b.put_u32_le(request.change.node_id());
    b.put_u8(request.change.code());
    b.put_u8(peer.len() as u8);
    b.put_u8(client.len() as u8);
    b.put_u8(0);
    b.put_slice(peer.as_bytes());
    b.put_slice(client.as_bytes());
}

pub(super) fn decode_change_request(
    r: &mut BodyReader,
) -> Result<MembershipChangeRequest, FrameError> {
    let partition = r.u32()?;
    let node_id = r.u32()?;
    let code = r.u8()?;
    let peer_len = r.u8()? as usize;
    let client_len = r.u8()? as usize;
    r.reserved(1)?;
    let peer_address = r.string(peer_len)?;
    let client_address = r.string(client_len)?;
    let change = match code {
        CHANGE_ADD_LEARNER => ChangeOp::AddLearner {
            node_id,
            peer_address,
            client_address,
        },
        CHANGE_PROMOTE | CHANGE_REMOVE if peer_len + client_len != 0 => {
            return Err(r.malformed("only an added learner carries addresses"));
        }
        CHANGE_PROMOTE => ChangeOp::Promote { node_id },
        CHANGE_REMOVE => ChangeOp::Remove { node_id },
        _ => return Err(r.malformed("unknown membership change")),
    };
    Ok(MembershipChangeRequest { partition, change })
}

/// Puts one per-partition outcome: its header, then `put_ok` for a success or the
/// error's fields.
fn put_outcome<T>(
    b: &mut BytesMut,
    outcome: &PartitionOutcome<T>,
    put_ok: impl FnOnce(&mut BytesMut, &T),
) {
    b.put_u32_le(outcome.partition);
    match &outcome.result {
        Ok(ok) => {
            b.put_u8(OUTCOME_OK);
            b.put_slice(&[0; 3]);
            put_ok(b, ok);
        }
        Err(e) => {
            b.put_u8(OUTCOME_ERROR);
            b.put_slice(&[0; 3]);
            put_error(b, e);
        }
    }
}

/// Reads a count of outcomes, each at least `ok_bytes_min` or an error long, and
/// the outcomes, `ok` reading a success.
fn decode_outcomes<T>(
    r: &mut BodyReader,
    ok_bytes_min: usize,
    mut ok: impl FnMut(&mut BodyReader) -> Result<T, FrameError>,
) -> Result<Vec<PartitionOutcome<T>>, FrameError> {
    let count = r.u32()?;
    r.reserved(4)?;
    let count = r.check_count(count, 8 + ok_bytes_min.min(ERROR_BYTES_MIN))?;
    let mut outcomes = Vec::with_capacity(count);
    for _ in 0..count {
        let partition = r.u32()?;
        let code = r.u8()?;
        r.reserved(3)?;
        let result = match code {
            OUTCOME_OK => Ok(ok(r)?),
            OUTCOME_ERROR => Err(decode_error(r)?),
            _ => return Err(r.malformed("unknown partition outcome")),
        };
        outcomes.push(PartitionOutcome { partition, result });
    }
    Ok(outcomes)
}

fn put_count(b: &mut BytesMut, count: usize) {
    b.put_u32_le(u32::try_from(count).expect("partition count fits u32"));
    b.put_u32_le(0);
}

pub(super) fn put_members_response(b: &mut BytesMut, ok: &MembersOk) {
    put_count(b, ok.partitions.len());
    for outcome in &ok.partitions {
        put_outcome(b, outcome, |b, p| {
            b.put_u32_le(p.leader);
            b.put_u32_le(u32::try_from(p.members.len()).expect("member count fits u32"));
            b.put_u64_le(p.term);
            b.put_u64_le(p.last_index);
            b.put_u64_le(p.commit_index);
            for m in &p.members {
                put_member(b, m);
            }
        });
    }
}

fn put_member(b: &mut BytesMut, m: &MemberInfo) {
    let peer = truncate_utf8(&m.peer_address, MEMBER_ADDRESS_BYTES_MAX);
    let client = truncate_utf8(&m.client_address, MEMBER_ADDRESS_BYTES_MAX);
    let flag = |on: bool, bit: u8| if on { bit } else { 0 };
    let flags = flag(m.voter, MEMBER_FLAG_VOTER)
        | flag(m.leader, MEMBER_FLAG_LEADER)
        | flag(m.active, MEMBER_FLAG_ACTIVE);
    b.put_u32_le(m.node_id);
    b.put_u8(flags);
    b.put_u8(peer.len() as u8);
    b.put_u8(client.len() as u8);
    b.put_u8(0);
    b.put_u64_le(m.match_index);
    b.put_slice(peer.as_bytes());
    b.put_slice(client.as_bytes());
}

pub(super) fn decode_members_response(r: &mut BodyReader) -> Result<MembersOk, FrameError> {
    let partitions = decode_outcomes(r, 32, decode_partition_members)?;
    Ok(MembersOk { partitions })
}

fn decode_partition_members(r: &mut BodyReader) -> Result<PartitionMembers, FrameError> {
    let leader = r.u32()?;
    if leader == NO_NODE {
        return Err(r.malformed("a member listing names no leader"));
    }
    let count = r.u32()?;
    let (term, last_index, commit_index) = (r.u64()?, r.u64()?, r.u64()?);
    let count = r.check_count(count, 16)?;
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        let node_id = r.u32()?;
        let flags = r.u8()?;
        if flags & !MEMBER_FLAGS_KNOWN != 0 {
            return Err(r.malformed("unknown member flags"));
        }
        let peer_len = r.u8()? as usize;
        let client_len = r.u8()? as usize;
        r.reserved(1)?;
        let match_index = r.u64()?;
        members.push(MemberInfo {
            node_id,
            voter: flags & MEMBER_FLAG_VOTER != 0,
            leader: flags & MEMBER_FLAG_LEADER != 0,
            active: flags & MEMBER_FLAG_ACTIVE != 0,
            match_index,
            peer_address: r.string(peer_len)?,
            client_address: r.string(client_len)?,
        });
    }
    Ok(PartitionMembers {
        leader,
        term,
        last_index,
        commit_index,
        members,
    })
}

pub(super) fn put_change_response(b: &mut BytesMut, ok: &MembershipChangeOk) {
    put_count(b, ok.partitions.len());
    for outcome in &ok.partitions {
        put_outcome(b, outcome, |b, index| b.put_u64_le(*index));
    }
}

pub(super) fn decode_change_response(r: &mut BodyReader) -> Result<MembershipChangeOk, FrameError> {
    let partitions = decode_outcomes(r, 8, |r| r.u64())?;
    Ok(MembershipChangeOk { partitions })
}
