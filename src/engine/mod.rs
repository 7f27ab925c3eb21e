//! The sans-IO Raft engine: pure, deterministic, no clock, no I/O, no async.
//!
//! [`Engine::step`] takes one [`Event`] and appends [`Command`]s to an output buffer
//! that the runtime drains with [`Engine::take_commands`] and carries out in order.
//! Each concern lives in its own file: `election`, `replication`, `commit`, `append`,
//! `read`, `transfer`, `trim`, `reconfig` (membership changes); messages from peers are checked first, in `validate`.
//! See `docs/engine.md`.

mod append;
mod commit;
pub mod config;
mod election;
pub mod event;
mod follower;
mod invariants;
pub mod log;
pub mod membership;
pub mod progress;
mod read;
mod reconfig;
mod recovered;
mod replication;
pub mod rng;
mod storage;
mod transfer;
mod trim;
pub mod types;
pub mod validate;

use std::collections::VecDeque;

pub use config::{Config, ConfigError};
pub use event::*;
use log::Log;
pub use membership::{
    ChangeRefusal, KnownConfig, Member, Membership, MembershipChange, MembershipDecodeError,
};
use progress::Progress;
pub use recovered::Recovered;
use rng::Rng;
pub use types::*;
pub use validate::PeerFault;

/// A client append whose entries are in the log and whose outcome is not yet known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingAppend {
    request_id: u64,
    first_index: Index,
    last_index: Index,
    term: Term,
    /// What its entries count against `uncommitted_bytes_max`.
    bytes: u64,
}

/// A read barrier waiting for a heartbeat round (`seq`) and for `index` to commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingRead {
    request_id: u64,
    seq: u64,
    index: Index,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Transfer {
    target: NodeId,
    elapsed_ticks: u32,
    timeout_now_sent: bool,
}

/// One member of one Raft group.
pub struct Engine {
    id: NodeId,
    /// The configurations that may still be in force, ascending by index: the latest
    /// known committed one first, then those of entries above it in the log. The
    /// last one is in force, committed or not (see `reconfig.rs`).
    /// Invariant: non-empty, the first committed, the others not, each later one
    /// the entry at its index in the log.
    configs: Vec<KnownConfig>,
    config: Config,
    rng: Rng,
    hard: HardState,
    log: Log,
    role: Role,
    /// Invariant: `Some(id)` exactly when this member is the leader… or a follower
    /// that has heard from the leader of the current term.
    leader: Option<NodeId>,
    /// Invariant: `log.start() - 1 <= commit_index <= log.last_index()`.
    commit_index: Index,
    /// The last index known to be on disk in the current log.
    /// Invariant: `flushed_index <= log.last_index()`.
    flushed_index: Index,
    /// Storage commands emitted so far, and how many are on disk.
    /// Invariant: `durable_op <= last_op`.
    last_op: u64,
    durable_op: u64,
    /// The storage command that wrote the current hard state.
    hard_state_op: u64,
    /// The storage command that last reset the log (0: none). Until it is on disk,
    /// the predecessor of the new log start is not on this member's disk, whatever
    /// `flushed_index` says of the reset log.
    log_reset_op: u64,
    /// Storage commands not yet on disk, each with the last index of the current log
    /// that will be on disk once it is (lowered when a later command truncates).
    unflushed: VecDeque<(u64, Index)>,
    election_elapsed_ticks: u32,
    election_timeout_ticks: u32,
    heartbeat_elapsed_ticks: u32,
    /// Pre-vote or vote answers of the current campaign.
    votes: Vec<(NodeId, bool)>,
    /// Leader only: one entry per other member, voter or learner, of the
    /// membership in force.
    peers: Vec<(NodeId, Progress)>,
    heartbeat_seq: u64,
    /// Leader only: the index of this term's first entry (its no-op).
    term_start_index: Index,
    /// Bytes of the client appends waiting for an answer (the pending appends).
    uncommitted_bytes: u64,
    /// Invariant: ordered by index, each above the commit index, bounded by config.
    pending_appends: VecDeque<PendingAppend>,
    /// Invariant: empty unless leader; ordered by `seq`.
    pending_reads: VecDeque<PendingRead>,
    /// (index, before) of every trim entry in the log above the commit index.
    /// Invariant: ascending, each in `commit_index + 1..=log.last_index()`, with
    /// `before <= index`. See `trim.rs`.
    pending_trims: VecDeque<(Index, Index)>,
    /// The largest `before` of the trims this member saw committed in this run
    /// (0: none). Invariant: `<= commit_index`, and the log start has reached it
    /// as far as what is committed and on disk allows.
    committed_trim_before: Index,
    transfer: Option<Transfer>,
    /// Client appends this turn that followers have not been sent yet.
    replicate_pending: bool,
    reported_role: Option<(Role, Term, Option<NodeId>)>,
    /// Some(t): the log lost acknowledged entries in term t (see `Recovered`). The
    /// member neither votes nor campaigns until its log, on disk and committed,
    /// holds everything it may have acknowledged. It knows that once it holds a
    /// committed entry of a later term: that entry comes from a leader elected
    /// without this member, which holds every entry committed before, by leader
    /// completeness, and log matching gives this member all of them too.
    ///
    /// Invariant: while abstaining, term > t. The member starts in term t + 1 (see
    /// `Engine::new`), so term t's leader steps down at its first answer and no entry
    /// of term t is committed with its help again. Nothing this member receives from
    /// term t's leader can bound what it acknowledged before the cut: an
    /// acknowledgement still in flight at the crash may raise that leader's commit
    /// after any message it sends (seed 43626 of the simulator found that the
    /// commit index of the first AppendEntries after the restart is no such bound).
    abstain_until_after_term: Option<Term>,
    output: Vec<Command>,
    /// Where this step's commands start in `output`: client appends of one step
    /// join its AppendLog (`open_turn_append_log`), never one of an earlier step, which
    /// the runtime may have seen already.
    step_output_start: usize,
    /// `Entry::size_bytes` of the entries in this step's last AppendLog.
    turn_append_bytes: u64,
    /// Test builds only: a deliberate bug the simulator must catch.
    #[cfg(test)]
    planted_bug: Option<config::PlantedBug>,
}

impl Engine {
    /// Member `id` of a group that started as `bootstrap`, starting from what its
    /// disk holds. A member that joins an existing group starts with an empty
    /// bootstrap and learns the membership from the leader. `seed` is the only
    /// source of randomness (election timeouts).
    pub fn new(
        id: NodeId,
        bootstrap: &Membership,
        config: Config,
        seed: u64,
        recovered: Recovered,
    ) -> Result<Engine, ConfigError> {
        config.validate()?;
        if id == 0 {
            return Err(ConfigError {
                key: "members",
                reason: "member id 0 is not valid".into(),
            });
        }
        let log = Log::restore(
            recovered.log_start,
            recovered.log_prev_term,
            recovered.term_runs,
            recovered.last_index,
            recovered.tail,
        );
        let pending_trims = trim::pending_at_start(&log, recovered.trims);
        let configs = reconfig::configs_at_start(&log, bootstrap, recovered.configs);
        // A lone voter has nobody to catch up from: what it lost is lost.
        let membership = &configs.last().expect("never empty").membership;
        let alone = membership.voter_count() == 1 && membership.is_voter(id);
        let mut engine = Engine {
            id,
            configs,
            config,
            rng: Rng::new(seed),
            hard: recovered.hard_state,
            commit_index: log.start() - 1,
            flushed_index: log.last_index(),
            log,
            role: Role::Follower,
            leader: None,
            last_op: 0,
            durable_op: 0,
            hard_state_op: 0,
            log_reset_op: 0,
            unflushed: VecDeque::new(),
            election_elapsed_ticks: 0,
            election_timeout_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            votes: Vec::new(),
            peers: Vec::new(),
            heartbeat_seq: 0,
            term_start_index: 0,
            uncommitted_bytes: 0,
            pending_appends: VecDeque::new(),
            pending_reads: VecDeque::new(),
            pending_trims,
            committed_trim_before: 0,
            transfer: None,
            replicate_pending: false,
            reported_role: None,
            abstain_until_after_term: recovered.lost_tail_in_term.filter(|_| !alone),
            output: Vec::new(),
            step_output_start: 0,
            turn_append_bytes: 0,
            #[cfg(test)]
            planted_bug: None,
        };
        engine.reset_election_timer();
        if let Some(lost_in) = engine.abstain_until_after_term
            && engine.hard.term <= lost_in
        {
            // A term in which this member never votes: term `lost_in`'s leader
            // steps down on hearing it, and the next leader is elected without
            // this member, so its first committed entry ends the abstention.
            engine.become_follower(lost_in + 1, None);
        }
        engine.reported_role = Some((Role::Follower, engine.hard.term, None));
        engine.check_invariants();
        Ok(engine)
    }

    /// Feeds one event; the resulting commands wait in the output buffer.
    pub fn step(&mut self, event: Event) {
        self.step_batch([event]);
    }

    /// Feeds every event of one runtime turn, then sends what they appended in one
    /// go: many client appends become one AppendEntries per follower.
    pub fn step_batch(&mut self, events: impl IntoIterator<Item = Event>) {
        self.step_output_start = self.output.len();
        for event in events {
            self.apply(event);
            self.report_changes();
            #[cfg(any(test, debug_assertions))]
            self.check_invariants();
        }
        if std::mem::take(&mut self.replicate_pending) && self.role == Role::Leader {
            self.broadcast_append();
        }
        #[cfg(any(test, debug_assertions))]
        self.check_invariants();
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Tick => self.on_tick(),
            Event::Message(msg) => self.on_message(msg),
            Event::Durable { op } => self.on_durable(op),
            Event::ClientAppend {
                request_id,
                records,
            } => self.on_client_append(request_id, records),
            Event::ReadIndex { request_id } => self.on_read_index(request_id),
            Event::TransferLeadership { to } => self.on_transfer_leadership(to),
            Event::ClientTrim { request_id, before } => self.on_client_trim(request_id, before),
            Event::ChangeMembership { request_id, change } => {
                self.on_change_membership(request_id, change)
            }
            Event::PurgeLog { before } => self.on_purge(before),
        }
    }

    /// The commands produced since the last call, in the order to carry them out.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.output)
    }

    /// Like [`Engine::take_commands`], but hands the engine `spare` (empty, its
    /// capacity kept) to collect the next step's commands in: a runtime that
    /// recycles the vector does not grow a fresh one, push by push, every turn.
    pub fn take_commands_reusing(&mut self, spare: Vec<Command>) -> Vec<Command> {
        debug_assert!(spare.is_empty(), "a recycled command buffer must be empty");
        std::mem::replace(&mut self.output, spare)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> Term {
        self.hard.term
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn commit_index(&self) -> Index {
        self.commit_index
    }
    pub fn log(&self) -> &Log {
        &self.log
    }
    pub fn hard_state(&self) -> HardState {
        self.hard
    }

    /// True while the member withholds votes and campaigns after losing part of its
    /// log to a corruption (until it has caught up: see `abstain_until_after_term`).
    pub fn is_abstaining(&self) -> bool {
        self.abstain_until_after_term.is_some() && !self.planted(config::PlantedBug::IgnoreLostTail)
    }

    /// The leader's view of each follower (stale or empty on other roles).
    pub fn replication_progress(&self) -> &[(NodeId, Progress)] {
        &self.peers
    }

    /// The leader's view of each follower, for diagnostics.
    pub fn describe_progress(&self) -> String {
        let parts: Vec<String> = self
            .peers
            .iter()
            .map(|(peer, pr)| format!("{peer}: {pr:?}"))
            .collect();
        parts.join(", ")
    }

    fn on_tick(&mut self) {
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    fn on_message(&mut self, msg: Message) {
        // Messages from outside the membership in force are taken: a member that
        // joins knows nobody yet, and a new leader may come from a configuration
        // this member has not received yet. Only a leader's peers are answered as
        // followers (`peer_slot`), and only voters' votes count.
        if msg.to != self.id || msg.from == self.id || msg.from == 0 {
            return;
        }
        if let Err(fault) = self.validate(&msg) {
            let from = msg.from;
            return self.output.push(Command::RefusePeer { from, fault });
        }
        if msg.term > self.hard.term {
            match &msg.body {
                // A pre-vote never changes anybody's term.
                MessageBody::PreVote { .. } | MessageBody::PreVoteResponse { granted: true } => {}
                // A leader is alive: an election timeout elsewhere must not depose it.
                MessageBody::RequestVote {
                    campaign: Campaign::Election,
                    ..
                } if self.in_leader_lease() => return,
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::LogStart { .. }
                | MessageBody::TimeoutNow => self.become_follower(msg.term, Some(msg.from)),
                _ => self.become_follower(msg.term, None),
            }
        } else if msg.term < self.hard.term {
            self.on_stale_message(msg);
            return;
        }
        let from = msg.from;
        match msg.body {
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            } => self.on_pre_vote(from, msg.term, last_log_index, last_log_term),
            MessageBody::PreVoteResponse { granted } => {
                self.on_pre_vote_response(from, msg.term, granted)
            }
            MessageBody::RequestVote {
                last_log_index,
                last_log_term,
                ..
            } => self.on_request_vote(from, last_log_index, last_log_term),
            MessageBody::RequestVoteResponse { granted } => self.on_vote_response(from, granted),
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                self.on_append_entries(from, prev_log_index, prev_log_term, entries, leader_commit)
            }
            MessageBody::AppendEntriesResponse { result } => self.on_append_response(from, result),
            MessageBody::Heartbeat { leader_commit, seq } => {
                self.on_heartbeat(from, leader_commit, seq)
            }
            MessageBody::HeartbeatResponse {
                seq,
                last_log_index,
            } => self.on_heartbeat_response(from, seq, last_log_index),
            MessageBody::LogStart {
                start_index,
                prev_term,
                leader_commit,
                config,
            } => self.on_log_start(from, start_index, prev_term, leader_commit, config),
            MessageBody::TimeoutNow => self.on_timeout_now(from),
        }
    }

    /// A message from an older term: tell a stale leader or pre-candidate the current
    /// term so that it steps down; drop everything else.
    fn on_stale_message(&mut self, msg: Message) {
        let body = match msg.body {
            MessageBody::AppendEntries { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::LogStart { .. } => MessageBody::HeartbeatResponse {
                seq: 0,
                last_log_index: self.log.last_index(),
            },
            MessageBody::PreVote { .. } => MessageBody::PreVoteResponse { granted: false },
            _ => return,
        };
        self.send(msg.from, body);
    }

    fn report_changes(&mut self) {
        let now = (self.role, self.hard.term, self.leader);
        if self.reported_role != Some(now) {
            self.reported_role = Some(now);
            self.output.push(Command::RoleChanged {
                role: now.0,
                term: now.1,
                leader: now.2,
            });
        }
    }

    // ---- shared helpers -------------------------------------------------------

    /// Test builds only: makes this member misbehave as `bug` says.
    #[cfg(test)]
    pub(crate) fn plant_bug(&mut self, bug: Option<config::PlantedBug>) {
        self.planted_bug = bug;
    }

    /// Whether the test switch turned `bug` on; always false outside tests.
    fn planted(&self, bug: config::PlantedBug) -> bool {
        #[cfg(test)]
        return self.planted_bug == Some(bug);
        #[cfg(not(test))]
        {
            let _ = bug;
            false
        }
    }

    /// The membership in force: the latest in the log, committed or not.
    pub fn membership(&self) -> &Membership {
        &self.configs.last().expect("never empty").membership
    }

    /// The index of the configuration entry in force (0: the bootstrap).
    pub fn membership_index(&self) -> Index {
        self.configs.last().expect("never empty").index
    }

    /// The memberships this member knows of: the committed one, then each one
    /// not committed yet, the last in force. Until a change commits, the members
    /// it removes still take part (a removed leader leads until then), so links
    /// follow all of them.
    pub fn memberships(&self) -> impl Iterator<Item = &Membership> {
        self.configs.iter().map(|c| &c.membership)
    }

    /// Votes or acknowledgements needed: a majority of the voters in force.
    fn quorum(&self) -> usize {
        self.membership().quorum()
    }

    /// The voters in force other than this member: whom a campaign asks.
    fn other_voters(&self) -> Vec<NodeId> {
        self.membership()
            .voters()
            .filter(|&m| m != self.id)
            .collect()
    }

    fn in_leader_lease(&self) -> bool {
        self.leader.is_some()
            && self.election_elapsed_ticks < self.config.election_timeout_min_ticks
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed_ticks = 0;
        self.election_timeout_ticks = self.rng.range(
            self.config.election_timeout_min_ticks as u64,
            self.config.election_timeout_max_ticks as u64,
        ) as u32;
    }

    /// Numbers the next storage command; call after changing the log.
    fn next_op(&mut self) -> u64 {
        self.last_op += 1;
        self.unflushed
            .push_back((self.last_op, self.log.last_index()));
        self.last_op
    }

    fn durable_condition(&self, op: u64) -> Option<Condition> {
        (op > self.durable_op).then_some(Condition::Durable { op })
    }

    /// Sends `body` in the current term, once the hard state behind it is on disk.
    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.hard.term, body, self.hard_state_op);
    }

    fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody, after_op: u64) {
        let when = self.durable_condition(after_op.max(self.hard_state_op));
        let msg = Message {
            from: self.id,
            to,
            term,
            body,
        };
        self.output.push(Command::Send { msg, when });
    }

    fn persist_hard_state(&mut self) {
        let op = self.next_op();
        self.hard_state_op = op;
        self.output.push(Command::PersistHardState {
            op,
            state: self.hard,
        });
    }

    /// Becomes a follower in `term` (persisting it if it is new) under `leader`.
    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(
            term >= self.hard.term,
            "term {term} would go backwards from {}",
            self.hard.term
        );
        if term > self.hard.term {
            self.hard = HardState {
                term,
                voted_for: None,
            };
            self.persist_hard_state();
        }
        if self.role != Role::Follower || self.leader != leader {
            self.reset_election_timer();
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.peers.clear();
        self.transfer = None;
        self.fail_pending_reads();
        self.give_up_appends_if_removed();
    }
}

/// Builders shared by the handler tests beside each concern.
#[cfg(test)]
pub(crate) mod tests;
