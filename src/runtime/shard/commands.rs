//! Carrying out the engine's commands: storage commands go to the WAL's buffer, one
//! flush covers a turn's appends (group commit), and the rest go to peers or clients.

use std::time::Instant;

use super::{Shard, ShardError};
use crate::engine::{self, Command, Index, NodeId, Role, Term};
use crate::metrics::AppendTally;
use crate::wal::error::{WalError, WalResult};
use crate::wal::log::Wal;
use crate::wal::storage::DmaStorage;

impl Shard {
    pub(super) async fn carry_out(
        &mut self,
        commands: &mut Vec<Command>,
    ) -> Result<(), ShardError> {
        // One clock reading ends the latency of the appends answered between two
        // storage commands (which may wait for room in the WAL's buffer): such
        // answers are encoded within microseconds of each other.
        let mut now = None;
        // The acknowledged appends of such a run, added to their counters when it
        // ends (dropped): before anything that may wait, so that the counters are
        // complete whenever another task (a scrape) runs.
        let mut tally = AppendTally::default();
        for command in commands.drain(..) {
            self.lifecycle.observe(&command);
            if let Some(storage) = self.carry_out_at_once(command, &mut now, &mut tally) {
                now = None;
                tally = AppendTally::default();
                self.carry_out_storage(storage).await?;
            }
        }
        Ok(())
    }

    /// Carries out a storage command, which may wait for room in the WAL's buffer.
    async fn carry_out_storage(&mut self, command: Command) -> Result<(), ShardError> {
        match command {
            Command::PersistHardState { op, state } => {
                self.storage(|wal| wal.persist_hard_state(op, state)).await
            }
            Command::AppendLog { op, entries } => {
                self.unflushed_entries += entries.len() as u64;
                self.unflushed_bytes += entries.iter().map(|e| e.payload.len() as u64).sum::<u64>();
                self.storage(|wal| wal.append(op, &entries)).await
            }
            Command::TruncateLog { op, from } => self.storage(|wal| wal.truncate(op, from)).await,
            Command::ResetLog {
                op,
                start,
                prev_term,
            } => self.storage(|wal| wal.reset(op, start, prev_term)).await,
            Command::PurgeLog { op, before } => self.purge(op, before).await,
            Command::SaveMembership { op, configs } => {
                self.storage(|wal| wal.save_membership(op, &configs))
                    .await?;
                // A commit or truncation may have dropped a configuration
                // whose members have no link to keep.
                self.follow_membership();
                Ok(())
            }
            other => panic!("shard {}: {other:?} is not a storage command", self.id),
        }
    }

    /// Carries out a command that never waits; a storage command comes back.
    /// `now` is the clock reading of the run of answers, `tally` its count.
    fn carry_out_at_once(
        &mut self,
        command: Command,
        now: &mut Option<Instant>,
        tally: &mut AppendTally,
    ) -> Option<Command> {
        match command {
            Command::MembershipChanged { membership } => {
                log::info!(
                    "shard {}: membership now {}",
                    self.id,
                    describe_membership(&membership)
                );
                self.follow_membership();
            }
            Command::Send { msg, when } => match when {
                Some(engine::Condition::Durable { op }) if op > self.durable_op => {
                    self.held.push((op, msg))
                }
                _ => self.send(msg),
            },
            Command::SendLogRange {
                msg,
                last_index,
                bytes_max,
            } => self.send_from_wal(msg, last_index, bytes_max),
            Command::Commit { index } => {
                self.commit = index;
                self.serve_waiting_reads();
            }
            Command::AppendResult { request_id, result } => {
                let now = *now.get_or_insert_with(Instant::now);
                self.answer_append(request_id, result, now, tally)
            }
            Command::ReadResult { request_id, result } => self.read_decided(request_id, result),
            Command::RefusePeer { from, fault } => {
                let (metrics, closer) = (&self.metrics, &self.link_closer);
                super::refusal::refuse_peer(self.id, from, fault, metrics, closer)
            }
            Command::RoleChanged { role, term, leader } => {
                self.role_changed(role, term, leader);
                // A leader outside the configurations known here (one whose
                // removal this member has not heard of) is still answered.
                if leader.is_some_and(|l| l != self.engine.id() && !self.links.contains_key(&l)) {
                    self.follow_membership();
                }
            }
            storage => return Some(storage),
        }
        None
    }

    /// The engine decided whether read `request_id` may be served.
    fn read_decided(&mut self, request_id: u64, result: Result<Index, engine::ReadError>) {
        if let Some((request, reply)) = self.barriers.remove(&request_id) {
            match result {
                Ok(_) => self.serve_or_wait(request, reply),
                Err(e) => reply.send(Err(self.read_error(e))),
            }
        }
    }

    /// Removes the log's segments before `before`, and tells retention what went.
    async fn purge(&mut self, op: u64, before: Index) -> Result<(), ShardError> {
        let stats_before = self.wal.stats();
        self.storage(|wal| wal.purge(op, before).map(drop)).await?;
        let stats = self.wal.stats();
        self.lifecycle.purged(
            stats.segments_purged - stats_before.segments_purged,
            stats.segment_bytes_purged - stats_before.segment_bytes_purged,
            self.wal.disk_bytes(),
        );
        Ok(())
    }

    fn role_changed(&mut self, role: Role, term: Term, leader: Option<NodeId>) {
        if (role, leader) != (self.role, self.leader) {
            let leader = leader.map_or("no leader".into(), |l| format!("leader node {l}"));
            log::info!("shard {}: {role:?} in term {term}, {leader}", self.id);
        }
        (self.role, self.term, self.leader) = (role, term, leader);
        self.metrics.role_changed(role, term, leader);
        self.publish();
    }

    /// Submits one storage command; when the WAL's buffer is full, flushes first
    /// (back-pressure) and submits again.
    async fn storage(
        &mut self,
        submit: impl Fn(&Wal<DmaStorage>) -> WalResult<()>,
    ) -> Result<(), ShardError> {
        loop {
            match submit(&self.wal) {
                Ok(()) => return Ok(()),
                // Nothing waits to be flushed, yet the buffer is full: this batch can
                // never fit (admission should have refused it). Stop, don't spin.
                Err(source @ WalError::BufferFull { .. }) if !self.wal.has_unflushed() => {
                    return Err(ShardError::Wal {
                        shard: self.id,
                        source,
                    });
                }
                Err(WalError::BufferFull { .. }) => {
                    self.record_batch();
                    let flushed = self.wal.flush().await;
                    self.flushes_in_flight += 1;
                    let _ = self.flushed_tx.send(flushed);
                }
                Err(source) => {
                    return Err(ShardError::Wal {
                        shard: self.id,
                        source,
                    });
                }
            }
        }
    }

    /// Group commit: one flush covers everything submitted so far; while the
    /// allowed number are in flight, later submissions wait for the next one.
    pub(super) fn start_flush_if_needed(&mut self) {
        if !self.wal.has_unflushed() || self.flushes_in_flight >= self.flushes_in_flight_max {
            return;
        }
        self.flushes_in_flight += 1;
        self.record_batch();
        let wal = self.wal.clone();
        let done = self.flushed_tx.clone();
        glommio::spawn_local(async move {
            let _ = done.send(wal.flush().await);
        })
        .detach();
    }

    /// The batch the flush about to start covers.
    fn record_batch(&mut self) {
        if self.unflushed_entries > 0 {
            self.metrics
                .batch_records
                .record(self.unflushed_entries as f64);
            self.metrics.batch_bytes.record(self.unflushed_bytes as f64);
        }
        (self.unflushed_entries, self.unflushed_bytes) = (0, 0);
    }
}

/// A membership in words for the log: "1, 2, 3 (learner)".
fn describe_membership(membership: &engine::Membership) -> String {
    let members: Vec<String> = membership
        .members()
        .iter()
        .map(|m| {
            let role = if m.voter { "" } else { " (learner)" };
            format!("{}{role}", m.id)
        })
        .collect();
    members.join(", ")
}
