//! Who belongs to a group: the members, which of them vote, and where to reach them.
//!
//! A membership travels in configuration entries (`EntryKind::Config`), in LogStart
//! messages and in the shard's membership file, always in the encoding below
//! (documented as an offset table in docs/engine.md). Addresses ride along so that
//! every node, a joining one included, learns where the members are from the log.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::types::{Index, NodeId, Term};

/// The most members a group may have: a membership's encoding stays below 34 KiB.
pub const MEMBERS_MAX: usize = 64;
/// The longest address, in bytes.
pub const ADDRESS_BYTES_MAX: usize = 255;
/// The encoding version written now.
pub const MEMBERSHIP_VERSION: u8 = 1;
/// Member flag: the member votes (otherwise it is a learner).
const FLAG_VOTER: u8 = 1;

/// One member of a group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    pub id: NodeId,
    /// A voter counts in elections and commits; a learner only receives the log.
    pub voter: bool,
    /// Where peers reach this node (host:port).
    pub peer_address: String,
    /// Where clients reach this node (host:port).
    pub client_address: String,
}

/// The members of a group, sorted by id, each id once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Membership {
    members: Vec<Member>,
}

/// A membership and where it came from: the configuration entry at (`index`,
/// `term`), or the bootstrap configuration at (0, 0).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KnownConfig {
    pub index: Index,
    pub term: Term,
    /// Known committed when it was saved or sent. A committed configuration stays in
    /// force whatever happens to the log; an uncommitted one only while its entry is
    /// in the log.
    pub committed: bool,
    pub membership: Membership,
}

impl KnownConfig {
    /// The configuration a cluster starts with, before any entry.
    pub fn bootstrap(membership: Membership) -> KnownConfig {
        KnownConfig {
            index: 0,
            term: 0,
            committed: true,
            membership,
        }
    }
}

/// One single-member change, as Raft's single-server changes allow.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MembershipChange {
    /// Adds a learner, which receives the log but does not vote.
    AddLearner(Member),
    /// Makes a learner a voter.
    Promote(NodeId),
    /// Removes a member, voter or learner.
    Remove(NodeId),
}

/// Why a change was refused before anything was appended.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq, Hash)]
pub enum ChangeRefusal {
    #[error("another membership change is not committed yet")]
    ChangeInProgress,
    #[error("the leader has not committed an entry of its term yet")]
    LeaderNotReady,
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    #[error("node {0} is already a voter")]
    AlreadyVoter(NodeId),
    #[error("node {0} is the last voter")]
    LastVoter(NodeId),
    #[error("learner {0} has not caught up with the leader yet")]
    NotCaughtUp(NodeId),
    #[error("a group has at most {MEMBERS_MAX} members")]
    TooManyMembers,
    #[error("node id 0 is not a valid member id")]
    InvalidNodeId,
    #[error("an address is longer than {ADDRESS_BYTES_MAX} bytes")]
    AddressTooLong,
}

/// Why bytes are not a membership.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MembershipDecodeError {
    #[error("membership is {0} bytes, shorter than its header")]
    Short(usize),
    #[error("unknown membership encoding version {0}")]
    Version(u8),
    #[error("membership names {0} members, more than {MEMBERS_MAX}")]
    TooMany(usize),
    #[error("membership member {0} is cut short")]
    CutShort(usize),
    #[error("membership member {0} has unknown flags {1:#x} or reserved bytes set")]
    Flags(usize, u8),
    #[error("membership member ids are not ascending and non-zero at member {0}")]
    Order(usize),
    #[error("membership member {0} has an address that is not UTF-8")]
    Utf8(usize),
    #[error("membership has {0} bytes after its last member")]
    Trailing(usize),
    #[error("membership header has reserved bytes set")]
    Reserved,
}

/// The header of an encoded membership.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct MembershipHeader {
    version: u8,
    reserved: u8,
    count: U16,
    reserved2: U32,
}
const MEMBERSHIP_HEADER_BYTES: usize = 8;
const _: () = assert!(size_of::<MembershipHeader>() == MEMBERSHIP_HEADER_BYTES);

/// The fixed part of one encoded member; its two addresses follow it.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct MemberHeader {
    id: U32,
    flags: u8,
    peer_address_len: u8,
    client_address_len: u8,
    reserved: u8,
}
const MEMBER_HEADER_BYTES: usize = 8;
const _: () = assert!(size_of::<MemberHeader>() == MEMBER_HEADER_BYTES);

impl Membership {
    /// A membership of `members`, sorted by id. Panics on a duplicate id: callers
    /// build memberships from checked sources (configuration, decoded bytes).
    pub fn new(mut members: Vec<Member>) -> Membership {
        members.sort_by_key(|m| m.id);
        assert!(
            members.windows(2).all(|w| w[0].id < w[1].id),
            "duplicate member id in {members:?}"
        );
        Membership { members }
    }

    /// Voters `ids` without addresses (tests and the simulator).
    pub fn of_voters(ids: &[NodeId]) -> Membership {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        Membership::new(
            ids.into_iter()
                .map(|id| Member {
                    id,
                    voter: true,
                    peer_address: String::new(),
                    client_address: String::new(),
                })
                .collect(),
        )
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.get(id).is_some()
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.get(id).is_some_and(|m| m.voter)
    }

    /// The voters' ids, ascending.
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().filter(|m| m.voter).map(|m| m.id)
    }

    pub fn voter_count(&self) -> usize {
        self.voters().count()
    }

    /// Votes or acknowledgements needed from voters: a majority of them.
    pub fn quorum(&self) -> usize {
        self.voter_count() / 2 + 1
    }

    /// Every member's id, ascending.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().map(|m| m.id)
    }

    /// This membership with `change` made, or why it cannot be.
    pub fn changed(&self, change: &MembershipChange) -> Result<Membership, ChangeRefusal> {
        let mut members = self.members.clone();
        match change {
            MembershipChange::AddLearner(member) => {
                if member.id == 0 {
                    return Err(ChangeRefusal::InvalidNodeId);
                }
                if self.contains(member.id) {
                    return Err(ChangeRefusal::AlreadyMember(member.id));
                }
                if members.len() >= MEMBERS_MAX {
                    return Err(ChangeRefusal::TooManyMembers);
                }
                if member.peer_address.len() > ADDRESS_BYTES_MAX
                    || member.client_address.len() > ADDRESS_BYTES_MAX
                {
                    return Err(ChangeRefusal::AddressTooLong);
                }
                members.push(Member {
                    voter: false,
                    ..member.clone()
                });
            }
            MembershipChange::Promote(id) => {
                let member = members
                    .iter_mut()
                    .find(|m| m.id == *id)
                    .ok_or(ChangeRefusal::NotMember(*id))?;
                if member.voter {
                    return Err(ChangeRefusal::AlreadyVoter(*id));
                }
                member.voter = true;
            }
            MembershipChange::Remove(id) => {
                let at = members
                    .iter()
                    .position(|m| m.id == *id)
                    .ok_or(ChangeRefusal::NotMember(*id))?;
                if members[at].voter && self.voter_count() == 1 {
                    return Err(ChangeRefusal::LastVoter(*id));
                }
                members.remove(at);
            }
        }
        Ok(Membership::new(members))
    }

    /// The encoding (docs/engine.md, "Membership encoding").
    pub fn encode(&self) -> Bytes {
        assert!(
            self.members.len() <= MEMBERS_MAX,
            "membership of {} members",
            self.members.len()
        );
        let mut out = BytesMut::with_capacity(self.encoded_len());
        let header = MembershipHeader {
            version: MEMBERSHIP_VERSION,
            reserved: 0,
            count: U16::new(self.members.len() as u16),
            reserved2: U32::new(0),
        };
        out.put_slice(header.as_bytes());
        for m in &self.members {
            assert!(
                m.id != 0
                    && m.peer_address.len() <= ADDRESS_BYTES_MAX
                    && m.client_address.len() <= ADDRESS_BYTES_MAX,
                "unencodable member {m:?}"
            );
            let member = MemberHeader {
                id: U32::new(m.id),
                flags: if m.voter { FLAG_VOTER } else { 0 },
                peer_address_len: m.peer_address.len() as u8,
                client_address_len: m.client_address.len() as u8,
                reserved: 0,
            };
            out.put_slice(member.as_bytes());
            out.put_slice(m.peer_address.as_bytes());
            out.put_slice(m.client_address.as_bytes());
        }
        out.freeze()
    }

    /// Bytes of the encoding.
    pub fn encoded_len(&self) -> usize {
        MEMBERSHIP_HEADER_BYTES
            + self
                .members
                .iter()
                .map(|m| MEMBER_HEADER_BYTES + m.peer_address.len() + m.client_address.len())
                .sum::<usize>()
    }

    /// Decodes and checks an encoding; nothing in it is trusted.
    pub fn decode(bytes: &[u8]) -> Result<Membership, MembershipDecodeError> {
        let (header, mut rest) = MembershipHeader::read_from_prefix(bytes)
            .map_err(|_| MembershipDecodeError::Short(bytes.len()))?;
        if header.version != MEMBERSHIP_VERSION {
            return Err(MembershipDecodeError::Version(header.version));
        }
        if header.reserved != 0 || header.reserved2.get() != 0 {
            return Err(MembershipDecodeError::Reserved);
        }
        let count = header.count.get() as usize;
        if count > MEMBERS_MAX {
            return Err(MembershipDecodeError::TooMany(count));
        }
        let mut members: Vec<Member> = Vec::with_capacity(count);
        for i in 0..count {
            let (member, tail) = decode_member(i, rest)?;
            if member.id == 0 || members.last().is_some_and(|last| last.id >= member.id) {
                return Err(MembershipDecodeError::Order(i));
            }
            members.push(member);
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(MembershipDecodeError::Trailing(rest.len()));
        }
        Ok(Membership { members })
    }
}

/// Member `i` at the front of `bytes`, and what follows it.
fn decode_member(i: usize, bytes: &[u8]) -> Result<(Member, &[u8]), MembershipDecodeError> {
    let (header, rest) =
        MemberHeader::read_from_prefix(bytes).map_err(|_| MembershipDecodeError::CutShort(i))?;
    if header.flags & !FLAG_VOTER != 0 || header.reserved != 0 {
        return Err(MembershipDecodeError::Flags(i, header.flags));
    }
    let peer_len = header.peer_address_len as usize;
    let client_len = header.client_address_len as usize;
    if rest.len() < peer_len + client_len {
        return Err(MembershipDecodeError::CutShort(i));
    }
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| MembershipDecodeError::Utf8(i))
    };
    let member = Member {
        id: header.id.get(),
        voter: header.flags & FLAG_VOTER != 0,
        peer_address: text(&rest[..peer_len])?,
        client_address: text(&rest[peer_len..peer_len + client_len])?,
    };
    Ok((member, &rest[peer_len + client_len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: NodeId, voter: bool) -> Member {
        Member {
            id,
            voter,
            peer_address: format!("10.0.0.{id}:7000"),
            client_address: format!("10.0.0.{id}:9000"),
        }
    }

    #[test]
    fn encoding_round_trips_and_has_the_documented_layout() {
        let m = Membership::new(vec![member(2, false), member(1, true)]);
        let bytes = m.encode();
        assert_eq!(bytes.len(), m.encoded_len());
        assert_eq!(&bytes[..8], &[1, 0, 2, 0, 0, 0, 0, 0]);
        // Member 1: id, voter flag, two 13-byte addresses, reserved.
        assert_eq!(&bytes[8..16], &[1, 0, 0, 0, 1, 13, 13, 0]);
        assert_eq!(&bytes[16..29], b"10.0.0.1:7000");
        assert_eq!(Membership::decode(&bytes), Ok(m));
    }

    #[test]
    fn decode_refuses_every_malformed_shape() {
        let good = Membership::new(vec![member(1, true), member(2, true)]).encode();
        let mut cases: Vec<(Vec<u8>, MembershipDecodeError)> = vec![
            (good[..4].to_vec(), MembershipDecodeError::Short(4)),
            (good[..20].to_vec(), MembershipDecodeError::CutShort(0)),
            (
                [&good[..], &[0][..]].concat(),
                MembershipDecodeError::Trailing(1),
            ),
        ];
        let mut version = good.to_vec();
        version[0] = 9;
        cases.push((version, MembershipDecodeError::Version(9)));
        let mut reserved = good.to_vec();
        reserved[5] = 1;
        cases.push((reserved, MembershipDecodeError::Reserved));
        let mut too_many = good.to_vec();
        too_many[2] = 65;
        cases.push((too_many, MembershipDecodeError::TooMany(65)));
        let mut flags = good.to_vec();
        flags[12] = 3;
        cases.push((flags, MembershipDecodeError::Flags(0, 3)));
        let mut order = good.to_vec();
        order[8] = 2;
        cases.push((order, MembershipDecodeError::Order(1)));
        let mut utf8 = good.to_vec();
        utf8[16] = 0xFF;
        cases.push((utf8, MembershipDecodeError::Utf8(0)));
        for (bytes, error) in cases {
            assert_eq!(Membership::decode(&bytes), Err(error));
        }
    }

    #[test]
    fn changes_follow_the_rules() {
        let m = Membership::new(vec![member(1, true), member(2, true), member(3, false)]);
        let added = m.changed(&MembershipChange::AddLearner(member(4, true)));
        assert_eq!(added.as_ref().map(|a| a.is_voter(4)), Ok(false));
        assert_eq!(added.map(|a| a.quorum()), Ok(2));
        assert_eq!(
            m.changed(&MembershipChange::AddLearner(member(3, false))),
            Err(ChangeRefusal::AlreadyMember(3))
        );
        assert_eq!(
            m.changed(&MembershipChange::Promote(1)),
            Err(ChangeRefusal::AlreadyVoter(1))
        );
        assert_eq!(
            m.changed(&MembershipChange::Promote(3)).map(|p| p.quorum()),
            Ok(2)
        );
        assert_eq!(
            m.changed(&MembershipChange::Remove(9)),
            Err(ChangeRefusal::NotMember(9))
        );
        let single = Membership::of_voters(&[1]);
        assert_eq!(
            single.changed(&MembershipChange::Remove(1)),
            Err(ChangeRefusal::LastVoter(1))
        );
        assert_eq!(
            m.changed(&MembershipChange::AddLearner(member(0, false))),
            Err(ChangeRefusal::InvalidNodeId)
        );
    }
}
