//! Handing leadership to another member: when an operator asks (`ringlog leader
//! transfer`), when the leader balancer moves a partition to a node that leads
//! fewer ([`super::balance`]), and before a graceful stop.
//!
//! While a hand-over runs the shard takes no client requests: they wait in their
//! inboxes, which are bounded, so connections feel back-pressure rather than the
//! shard buffering more. They are taken once it ends. If it succeeded another
//! member leads by then and the engine answers each append NotLeader naming it,
//! which sends the client straight there: a client sees one redirect, not an error
//! and a backoff. If it failed this shard still leads and takes them as usual. The
//! engine refuses appends during its transfer anyway (LeaderTransferring); holding
//! them instead is what spares the clients that refusal.

use std::time::{Duration, Instant};

use super::{Shard, ShardError};
use crate::engine::{Event, NodeId, Role};
use crate::metrics::transfers::TransferReason;
use crate::runtime::inbox::Reply;
use crate::transport::{ServerError, TransferOk};

/// How a shard hands its leadership over, from `[raft]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandoverSettings {
    /// Whether the leader balancer runs.
    pub leader_balance: bool,
    /// Whether a leader promotes learners that have caught up.
    pub auto_promote: bool,
    /// How long a graceful stop may spend handing leadership over.
    pub shutdown: Duration,
    /// How long a requested or balancing hand-over may take: long enough for the
    /// engine to give up on one target (an election timeout) and try another.
    pub attempt: Duration,
}

/// A hand-over under way.
pub(super) struct HandOver {
    reason: TransferReason,
    /// The member to hand to; None for the most up-to-date follower at each try.
    to: Option<NodeId>,
    deadline: Instant,
    /// Operators waiting for the outcome.
    replies: Vec<Reply<TransferOk>>,
}

impl HandOver {
    pub(super) fn new(reason: TransferReason, to: Option<NodeId>, deadline: Instant) -> HandOver {
        HandOver {
            reason,
            to,
            deadline,
            replies: Vec::new(),
        }
    }
}

impl Shard {
    pub(super) fn is_handing_over(&self) -> bool {
        self.hand_over.is_some()
    }

    /// An operator asks this shard to hand its leadership to `to` (or to the best
    /// follower): answered once another member leads, or when that fails.
    pub(super) fn request_transfer(&mut self, to: Option<NodeId>, reply: Reply<TransferOk>) {
        let me = self.engine.id();
        if self.role != Role::Leader {
            return reply.send(Err(self.leader_error(self.leader)));
        }
        if to == Some(me) {
            let term = self.term;
            return reply.send(Ok(TransferOk { leader: me, term }));
        }
        if let Some(refusal) = self.transfer_refusal(to) {
            return reply.send(Err(refusal));
        }
        match &mut self.hand_over {
            Some(h) if to.is_none() || h.to == to => h.replies.push(reply),
            Some(h) => reply.send(Err(ServerError::Unavailable {
                reason: format!("a hand-over to {} is under way", describe(h.to)),
            })),
            None => {
                let deadline = Instant::now() + self.handover.attempt;
                let mut h = HandOver::new(TransferReason::Request, to, deadline);
                h.replies.push(reply);
                self.hand_over = Some(h);
            }
        }
    }

    /// Why a transfer to `to` cannot even start.
    fn transfer_refusal(&self, to: Option<NodeId>) -> Option<ServerError> {
        let reason = match to {
            None if self.links.is_empty() => {
                "this cluster has no other member to hand leadership to".to_string()
            }
            Some(to) if !self.links.contains_key(&to) => {
                format!("node {to} is not a member of this cluster")
            }
            _ => return None,
        };
        Some(ServerError::InvalidRequest { reason })
    }

    /// The event that starts the engine's transfer, or starts it again after the
    /// engine gave up on a target, while a hand-over runs and this shard leads.
    /// None past the deadline: a transfer started then could still move
    /// leadership after the hand-over was reported failed.
    pub(super) fn hand_over_event(&self, now: Instant) -> Option<Event> {
        let h = self.hand_over.as_ref()?;
        let busy = self.engine.transfer_target().is_some();
        if self.role != Role::Leader || busy || now >= h.deadline {
            return None;
        }
        let to = h.to.or_else(|| self.engine.transfer_candidate())?;
        Some(Event::TransferLeadership { to })
    }

    /// After a turn: ends the hand-over once another member is known to lead, or
    /// at its deadline, and answers whoever waits for it.
    pub(super) fn check_hand_over(&mut self, now: Instant) {
        let Some(h) = &self.hand_over else {
            return;
        };
        let me = self.engine.id();
        let moved_to = self
            .leader
            .filter(|&l| l != me && self.role != Role::Leader);
        // Past the deadline, requests stay held until the engine gives up its
        // transfer too (within an election timeout): until then it would refuse
        // them with LeaderTransferring, and its TimeoutNow could still go out. (A
        // member that is not the leader has no transfer.)
        let engine_done = self.engine.transfer_target().is_none();
        if moved_to.is_none() && (now < h.deadline || !engine_done) {
            return;
        }
        let h = self.hand_over.take().expect("checked above");
        self.transfer_metrics.ended(h.reason, moved_to.is_some());
        let answer = match moved_to {
            Some(leader) => {
                log::info!(
                    "shard {}: handed leadership to node {leader} ({:?})",
                    self.id,
                    h.reason
                );
                Ok(TransferOk {
                    leader,
                    term: self.term,
                })
            }
            None => {
                let reason = format!(
                    "leadership did not move to {} in time: no such follower was up to date and answering",
                    describe(h.to)
                );
                log::warn!("shard {}: {reason} ({:?})", self.id, h.reason);
                Err(ServerError::Unavailable { reason })
            }
        };
        for reply in h.replies {
            reply.send(answer.clone());
        }
    }

    /// Before a graceful stop: hands the partition to a follower if this shard
    /// leads it, within the configured time, then takes the client requests that
    /// waited meanwhile, so that they hear where the new leader is.
    pub(super) async fn hand_over_before_stop(&mut self) -> Result<(), ShardError> {
        let shutdown = self.handover.shutdown;
        if shutdown.is_zero() || self.links.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + shutdown;
        loop {
            if self.hand_over.is_none() {
                if self.role != Role::Leader || Instant::now() >= deadline {
                    break;
                }
                self.hand_over = Some(HandOver::new(TransferReason::Shutdown, None, deadline));
            }
            self.turn().await?;
        }
        // After a hand-over the requests that waited hear where the new leader is.
        // If it failed they stay untaken, and the stop refuses them: stepped into a
        // leader about to stop, they would be appended and then left with an
        // unknown outcome.
        if self.role == Role::Leader {
            return Ok(());
        }
        self.turn_without_waiting().await
    }
}

fn describe(to: Option<NodeId>) -> String {
    to.map_or("the most up-to-date follower".into(), |n| {
        format!("node {n}")
    })
}
