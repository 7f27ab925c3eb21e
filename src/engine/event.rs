//! What goes into the engine (`Event`) and what comes out (`Command`).

use bytes::Bytes;
use thiserror::Error;

use super::membership::{ChangeRefusal, KnownConfig, Membership, MembershipChange};
use super::types::{Entry, HardState, Index, Message, NodeId, Term};
use super::validate::PeerFault;

/// Something that happened, fed to [`super::Engine::step`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// One unit of logical time passed.
    Tick,
    /// A message from another member of the group arrived.
    Message(Message),
    /// Every storage command numbered `op` or lower is on disk.
    Durable { op: u64 },
    /// A client asks to append `records`, in order, as one batch.
    ClientAppend {
        request_id: u64,
        records: Vec<Bytes>,
    },
    /// A client asks for a linearizable read: the engine answers with an index the
    /// read must wait for (the commit index once leadership is confirmed).
    ReadIndex { request_id: u64 },
    /// An operator asks the leader to hand leadership to `to`.
    TransferLeadership { to: NodeId },
    /// Retention asks to remove the log before `before` (clamped to committed entries).
    PurgeLog { before: Index },
    /// A client asks to remove the records before `before` on every member: the leader
    /// appends a trim entry, and each member removes them once it is committed. The
    /// answer is an [`AppendResult`](Command::AppendResult) naming the trim entry.
    ClientTrim { request_id: u64, before: Index },
    /// An operator asks the leader to change the group's membership by one member.
    /// The answer is an [`AppendResult`](Command::AppendResult) naming the
    /// configuration entry, sent once it is committed.
    ChangeMembership {
        request_id: u64,
        change: MembershipChange,
    },
}

/// When a command may be carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Only after every storage command numbered `op` or lower is on disk.
    Durable { op: u64 },
}

/// Something the runtime must do. Commands are carried out in the order emitted;
/// storage commands are numbered (`op`) in that order so that durability can be
/// reported as one number.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// Write term and vote.
    PersistHardState { op: u64, state: HardState },
    /// Append entries right after the current last entry.
    AppendLog { op: u64, entries: Vec<Entry> },
    /// Remove every entry at `from` and after.
    TruncateLog { op: u64, from: Index },
    /// Discard the whole log; it restarts empty at `start`, after an entry of `prev_term`.
    ResetLog {
        op: u64,
        start: Index,
        prev_term: Term,
    },
    /// Remove every entry before `before` (retention; already committed).
    PurgeLog { op: u64, before: Index },
    /// Replace the saved configurations with `configs` (ascending by index; the
    /// first is committed). Recovery hands them back in `Recovered::configs`.
    SaveMembership { op: u64, configs: Vec<KnownConfig> },
    /// Send `msg` to its `to`, once `when` holds (immediately when `None`).
    Send {
        msg: Message,
        when: Option<Condition>,
    },
    /// Send `msg`, an AppendEntries without entries, after filling in the entries
    /// from `prev_log_index + 1` through at most `last_index` read from the log on
    /// disk: as many as fit in `bytes_max`, but at least one. (The engine no longer
    /// holds them in memory; they are on disk and will not change.)
    SendLogRange {
        msg: Message,
        last_index: Index,
        bytes_max: u64,
    },
    /// The commit index advanced to `index`: entries up to it may be read.
    Commit { index: Index },
    /// The answer to a client append, sent when known.
    AppendResult {
        request_id: u64,
        result: Result<AppendOk, AppendError>,
    },
    /// The answer to a read barrier: serve the read once `index` is committed here.
    ReadResult {
        request_id: u64,
        result: Result<Index, ReadError>,
    },
    /// A message from `from` broke the protocol's rules and was refused, nothing
    /// else done with it: log it, count it and close the link it came on.
    RefusePeer { from: NodeId, fault: PeerFault },
    /// The membership in force changed (an entry appended, or one removed with the
    /// log): peers to reach, and for redirects and listings.
    MembershipChanged { membership: Membership },
    /// Role, term or known leader changed (for redirects and metrics).
    RoleChanged {
        role: Role,
        term: Term,
        leader: Option<NodeId>,
    },
}

/// Indexes given to an appended batch, `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AppendOk {
    pub first_index: Index,
    pub last_index: Index,
}

#[derive(Clone, Copy, Debug, Error, PartialEq, Eq, Hash)]
pub enum AppendError {
    /// Nothing was appended; `leader` is who the engine believes leads.
    #[error("not the leader; {}", leader.map_or("no leader known".to_string(), |l| format!("the leader is node {l}")))]
    NotLeader { leader: Option<NodeId> },
    /// Nothing was appended: too much is waiting to commit.
    #[error("overloaded: too many appends waiting to commit")]
    Overloaded,
    /// Nothing was appended: leadership is being handed over.
    #[error("leadership is being transferred")]
    LeaderTransferring,
    /// Nothing was appended: the batch had no records.
    #[error("empty batch")]
    EmptyBatch,
    /// Nothing was appended: a trim cannot remove records the log does not hold yet.
    #[error("cannot trim before index {before}: the log ends at index {last_index}")]
    TrimBeyondLog { before: Index, last_index: Index },
    /// Nothing was appended: the membership change cannot be made.
    #[error("membership change refused: {0}")]
    MembershipChange(ChangeRefusal),
    /// The batch was appended, then removed from this member's log by a newer
    /// leader or a log reset: it may or may not be committed elsewhere.
    #[error("leadership changed; the records may or may not have been committed")]
    Unknown,
}

#[derive(Clone, Copy, Debug, Error, PartialEq, Eq, Hash)]
pub enum ReadError {
    #[error("not the leader; {}", leader.map_or("no leader known".to_string(), |l| format!("the leader is node {l}")))]
    NotLeader { leader: Option<NodeId> },
    #[error("overloaded: too many reads waiting")]
    Overloaded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}
