//! The vocabulary shared by the engine, the runtime, the WAL and the transport:
//! identifiers, log entries, durable state and the messages Raft members exchange.

use bytes::Bytes;

use super::membership::KnownConfig;

/// A member of a Raft group. In a cluster, member ids are node ids: shard `p` of node
/// `n` is member `n` of the group for partition `p`.
pub type NodeId = u32;
/// A Raft term. Terms start at 1; term 0 means "before any election".
pub type Term = u64;
/// A position in the log. Indexes start at 1; index 0 is the empty prefix.
pub type Index = u64;

/// What a log entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// One client record; its index is the record's position (offset) in the partition.
    Record = 1,
    /// An empty entry a new leader appends to commit its term. Reads skip it.
    Noop = 2,
    /// A trim decided through the log: once committed, every member removes the
    /// records before the index its payload holds (8 bytes, little-endian; see
    /// [`Entry::trim_before`]). Reads skip it.
    Trim = 3,
    /// A membership change: the payload is the group's whole new membership
    /// ([`super::Membership::encode`]). Each member uses the latest one in its log,
    /// committed or not (single-server changes, Raft dissertation §4.1). Reads skip it.
    Config = 4,
}

impl EntryKind {
    /// The kind with wire/disk code `code`, if there is one.
    pub fn from_u8(code: u8) -> Option<EntryKind> {
        match code {
            1 => Some(EntryKind::Record),
            2 => Some(EntryKind::Noop),
            3 => Some(EntryKind::Trim),
            4 => Some(EntryKind::Config),
            _ => None,
        }
    }
}

/// One log entry. `payload` is reference-counted so that the engine, the WAL and the
/// transport share one copy of a record's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub term: Term,
    pub index: Index,
    pub kind: EntryKind,
    pub payload: Bytes,
}

impl Entry {
    /// Bytes this entry costs on the wire and in memory windows: payload plus a fixed
    /// per-entry overhead, so that windows of empty entries are still bounded.
    pub fn size_bytes(&self) -> u64 {
        ENTRY_OVERHEAD_BYTES + self.payload.len() as u64
    }

    /// A trim entry: once committed, records before `before` are removed.
    pub fn trim(index: Index, term: Term, before: Index) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Trim,
            payload: Bytes::copy_from_slice(&before.to_le_bytes()),
        }
    }

    /// The index a trim entry removes records before; `None` for other kinds and for
    /// a trim whose payload is not exactly 8 bytes (refused where it arrives).
    pub fn trim_before(&self) -> Option<Index> {
        if self.kind != EntryKind::Trim {
            return None;
        }
        let bytes: [u8; 8] = self.payload.as_ref().try_into().ok()?;
        Some(Index::from_le_bytes(bytes))
    }
}

/// The per-entry overhead counted by [`Entry::size_bytes`] (term, index, kind, length).
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

/// The state Raft requires on disk before a member answers anything that depends on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
}

/// A message between two members of one group. `term` is the sender's current term,
/// except for pre-votes, which carry the term the sender would campaign in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
}

/// Why a vote request is being made; leader transfer bypasses the leader lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Campaign {
    /// An election timeout fired.
    Election,
    /// The leader asked this member to take over (TimeoutNow).
    Transfer,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MessageBody {
    /// "Would you vote for me in `term`?" Changes nobody's term.
    PreVote {
        last_log_index: Index,
        last_log_term: Term,
    },
    PreVoteResponse {
        granted: bool,
    },
    RequestVote {
        last_log_index: Index,
        last_log_term: Term,
        campaign: Campaign,
    },
    RequestVoteResponse {
        granted: bool,
    },
    /// Replicate `entries` after (`prev_log_index`, `prev_log_term`).
    AppendEntries {
        prev_log_index: Index,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: Index,
    },
    AppendEntriesResponse {
        result: AppendResponse,
    },
    /// Leader liveness and commit propagation; `seq` confirms leadership for reads.
    /// Heartbeats travel apart from bulk AppendEntries so they are never queued behind it.
    Heartbeat {
        leader_commit: Index,
        seq: u64,
    },
    HeartbeatResponse {
        seq: u64,
        /// The follower's last log index, so the leader can resume a stalled probe.
        last_log_index: Index,
    },
    /// The leader's log starts after the follower's end (retention removed the
    /// prefix the follower needs): the follower discards its log and restarts it at
    /// `start_index`, whose predecessor has `prev_term`.
    LogStart {
        start_index: Index,
        prev_term: Term,
        leader_commit: Index,
        /// The leader's latest committed membership, which the follower's reset log
        /// may no longer hold the entry of.
        config: KnownConfig,
    },
    /// Leader transfer: campaign now, skipping pre-vote and the leader lease.
    TimeoutNow,
}

/// A follower's answer to AppendEntries or LogStart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AppendResponse {
    /// The follower's log matches the leader's through `match_index`, on disk.
    Success { match_index: Index },
    /// The follower has no entry matching (`rejected_prev_index`, its term).
    /// `hint` lets the leader skip a whole term per round trip.
    Reject {
        rejected_prev_index: Index,
        hint: ConflictHint,
    },
}

/// Where the leader should try next after a rejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConflictHint {
    /// The follower's last log index (its log is shorter than `prev_log_index`), or
    /// the first index of `conflict_term` in the follower's log.
    pub index: Index,
    /// The term of the follower's conflicting entry at `rejected_prev_index`,
    /// or 0 when its log is simply too short.
    pub conflict_term: Term,
}
