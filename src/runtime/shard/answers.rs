//! Answers to clients: appends, trims and membership changes once the engine
//! decides, the errors clients see, and the answers of everything still waiting
//! when the shard stops.

use std::time::Instant;

use super::{Shard, ShardError};
use crate::engine::{self, AppendError, ChangeRefusal, NodeId, ReadError};
use crate::metrics::AppendTally;
use crate::runtime::inbox::{ShardInput, shutting_down};
use crate::transport::{AppendOk, ServerError, TrimOk};

impl Shard {
    /// Answers the append, trim or membership change `request_id` (all are entries
    /// of the log). A
    /// trim's answer carries the log start after the engine applied it: commands
    /// are carried out after the whole step, so the engine's log is already there.
    /// `now` is the turn's clock reading, the end of a local append's latency;
    /// `tally` counts the turn's acknowledged local appends.
    pub(super) fn answer_append(
        &mut self,
        request_id: u64,
        result: Result<engine::AppendOk, AppendError>,
        now: Instant,
        tally: &mut AppendTally,
    ) {
        if let Some(reply) = self.appends.remove(&request_id) {
            let answer = result
                .map(|ok| AppendOk {
                    first_index: ok.first_index,
                    last_index: ok.last_index,
                })
                .map_err(|e| self.append_error(e));
            reply.send_at(answer, now, tally);
        } else if let Some(reply) = self.trims.remove(&request_id) {
            let answer = result
                .map(|ok| TrimOk {
                    trim_index: ok.last_index,
                    log_start: self.engine.read_start(),
                })
                .map_err(|e| self.append_error(e));
            reply.send(answer);
        } else if let Some(reply) = self.changes.remove(&request_id) {
            let answer = result
                .map(|ok| ok.last_index)
                .map_err(|e| self.append_error(e));
            reply.send(answer);
        }
    }

    pub(super) fn leader_error(&self, leader: Option<NodeId>) -> ServerError {
        ServerError::NotLeader {
            leader,
            leader_addr: leader.and_then(|l| self.client_addrs.get(&l).cloned()),
        }
    }

    fn append_error(&self, error: AppendError) -> ServerError {
        match error {
            AppendError::NotLeader { leader } => self.leader_error(leader),
            AppendError::Overloaded => ServerError::Overloaded,
            AppendError::LeaderTransferring => ServerError::Unavailable {
                reason: "leadership is being transferred; retry shortly".into(),
            },
            AppendError::EmptyBatch => ServerError::InvalidRequest {
                reason: "an append needs at least one record".into(),
            },
            AppendError::TrimBeyondLog { .. } => ServerError::InvalidRequest {
                reason: error.to_string(),
            },
            // Both pass: the change before commits, the leader's first entry commits.
            AppendError::MembershipChange(
                ChangeRefusal::ChangeInProgress | ChangeRefusal::LeaderNotReady,
            ) => ServerError::Unavailable {
                reason: error.to_string(),
            },
            AppendError::MembershipChange(_) => ServerError::InvalidRequest {
                reason: error.to_string(),
            },
            // The records may be committed after all: the client must not take this
            // for a refusal and retry blindly (it does retry Unavailable), so it is
            // reported as a timeout, whose outcome clients treat as unknown.
            AppendError::Unknown => ServerError::Timeout,
        }
    }

    pub(super) fn read_error(&self, error: ReadError) -> ServerError {
        match error {
            ReadError::NotLeader { leader } => self.leader_error(leader),
            ReadError::Overloaded => ServerError::Overloaded,
        }
    }

    /// Answers every client still waiting: appends with Timeout (their outcome is
    /// open: they may commit elsewhere, and Unavailable would invite a blind retry
    /// and a duplicate), reads and the appends not yet given to the engine with
    /// `refusal`.
    pub(super) fn answer_all_waiting(&mut self, refusal: ServerError) {
        // Appends still queued never reached the engine: they are refused, and no
        // more are taken.
        self.local_inbox.close(&refusal);
        for (_, reply) in self.appends.drain() {
            reply.send(Err(ServerError::Timeout));
        }
        for (_, reply) in self.trims.drain() {
            reply.send(Err(ServerError::Timeout));
        }
        for (_, reply) in self.changes.drain() {
            reply.send(Err(ServerError::Timeout));
        }
        for (_, (_, reply)) in self.barriers.drain() {
            reply.send(Err(refusal.clone()));
        }
        self.reads.refuse_all(&refusal);
        // Requests from other executors still in the lane never reached the engine
        // either: refused the same way rather than left for their callers to time
        // out.
        while let Some(input) = self.inbox.try_recv() {
            match input {
                ShardInput::Append { reply, .. } => reply.send(Err(refusal.clone())),
                ShardInput::Read { reply, .. } => reply.send(Err(refusal.clone())),
                ShardInput::Trim { reply, .. } => reply.send(Err(refusal.clone())),
                ShardInput::Transfer { reply, .. } => reply.send(Err(refusal.clone())),
                ShardInput::Members { reply } => reply.send(Err(refusal.clone())),
                ShardInput::ChangeMembership { reply, .. } => reply.send(Err(refusal.clone())),
                ShardInput::Info { reply } => reply.send(self.info()),
            }
        }
    }

    /// Stops: answers everything still waiting, then makes the WAL durable. Once
    /// another member is known to lead (after a hand-over, or all along on a
    /// follower), what was not taken yet hears NotLeader naming it, which a client
    /// follows at once, rather than Unavailable, which it retries here after a
    /// backoff only to find the node gone.
    pub(super) async fn shut_down(mut self) -> Result<(), ShardError> {
        let me = self.engine.id();
        let refusal = match self.leader.filter(|&l| l != me) {
            Some(leader) => self.leader_error(Some(leader)),
            None => shutting_down(),
        };
        self.answer_all_waiting(refusal);
        self.wal
            .flush()
            .await
            .map(drop)
            .map_err(|source| ShardError::Wal {
                shard: self.id,
                source,
            })
    }
}
