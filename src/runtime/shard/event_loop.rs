//! The shard's event loop: wait for something, drain what else is ready, and feed
//! it all to the engine as one batch (see the module documentation of [`super`]).

use std::time::Instant;

use bytes::Bytes;
use futures_lite::future;

use super::{Shard, ShardError};
use crate::engine::{Event, Message, Role};
use crate::runtime::inbox::ShardInput;
use crate::runtime::local_inbox::{AppendReply, LocalAppend};
use crate::wal::error::WalResult;
use crate::wal::log::Durable;

/// Events fed to the engine in one turn at most; the rest wait for the next turn,
/// so that one turn's latency stays bounded under a flood.
const TURN_EVENTS_MAX: usize = 4096;

/// Why the loop woke up.
enum Wake {
    Peer(Message),
    Input(Option<ShardInput>),
    Local(LocalAppend),
    Flushed(WalResult<Durable>),
    Timer,
}

impl Shard {
    pub(super) async fn turn(&mut self) -> Result<(), ShardError> {
        let wake = self.wait().await;
        self.step_turn(wake).await
    }

    /// A turn that does not wait: it takes only what is ready already.
    pub(super) async fn turn_without_waiting(&mut self) -> Result<(), ShardError> {
        self.step_turn(Wake::Timer).await
    }

    async fn step_turn(&mut self, wake: Wake) -> Result<(), ShardError> {
        // The turn's buffers are the last turn's, emptied: grown once to what a busy
        // turn needs, rather than from nothing, push by push, every turn.
        let mut events = std::mem::take(&mut self.turn_events);
        self.absorb(wake, &mut events)?;
        self.drain_inboxes(&mut events)?;
        while let Ok(flushed) = self.flushed_rx.try_recv() {
            self.absorb(Wake::Flushed(flushed), &mut events)?;
        }
        let now = Instant::now();
        if now >= self.next_tick {
            events.push(Event::Tick);
            self.next_tick = (self.next_tick + self.tick).max(now);
            self.publish();
            self.maybe_balance(now);
            events.extend(self.promotion_event());
        }
        let log_start = self.engine.log().start();
        if let Some(purge) = self.lifecycle.check(now, &self.wal, log_start) {
            events.push(purge);
        }
        events.extend(self.hand_over_event(now));
        if !events.is_empty() {
            self.engine.step_batch(events.drain(..));
            let spare = std::mem::take(&mut self.turn_commands);
            let mut commands = self.engine.take_commands_reusing(spare);
            // Carrying out drains the vector, so it comes back empty; after an
            // error the shard stops and the buffer is not needed again.
            self.carry_out(&mut commands).await?;
            self.turn_commands = commands;
        }
        self.turn_events = events;
        self.start_flush_if_needed();
        self.check_hand_over(now);
        self.expire_waiting_reads(now);
        self.end_abstention_if_caught_up();
        Ok(())
    }

    /// Takes what is ready in the inboxes, peer messages first: the turn's room
    /// goes to Raft's own traffic before client requests, and a client flood
    /// waits for later turns rather than delay heartbeats and votes. The two client
    /// inboxes share what is left: the lane (other executors' requests) gets half
    /// of it first, so that neither can starve the other, then each what the
    /// other left. During a hand-over client requests wait (see `handover`).
    fn drain_inboxes(&mut self, events: &mut Vec<Event>) -> Result<(), ShardError> {
        while events.len() < TURN_EVENTS_MAX {
            let Some(msg) = self.peer_inbox.try_recv() else {
                break;
            };
            events.push(Event::Message(msg));
        }
        if self.is_handing_over() {
            return Ok(());
        }
        let half = events.len() + (TURN_EVENTS_MAX - events.len()) / 2;
        self.drain_lane(events, half)?;
        self.drain_local(events, TURN_EVENTS_MAX)?;
        self.drain_lane(events, TURN_EVENTS_MAX)
    }

    /// Takes client requests from other executors until `events` holds `up_to`.
    fn drain_lane(&mut self, events: &mut Vec<Event>, up_to: usize) -> Result<(), ShardError> {
        while events.len() < up_to {
            let Some(input) = self.inbox.try_recv() else {
                break;
            };
            self.absorb(Wake::Input(Some(input)), events)?;
        }
        Ok(())
    }

    /// Takes appends from this executor's connections until `events` holds `up_to`.
    fn drain_local(&mut self, events: &mut Vec<Event>, up_to: usize) -> Result<(), ShardError> {
        while events.len() < up_to {
            let Some(append) = self.local_inbox.try_recv() else {
                break;
            };
            self.absorb(Wake::Local(append), events)?;
        }
        Ok(())
    }

    async fn wait(&self) -> Wake {
        let until_tick = self.next_tick.saturating_duration_since(Instant::now());
        let take_clients = !self.is_handing_over();
        // With every sender gone (the node is stopping) there is nothing to wait for:
        // stay pending rather than wake at once, round after round.
        let input = async {
            if !take_clients {
                return future::pending().await;
            }
            match self.inbox.recv_async().await {
                Some(input) => Wake::Input(Some(input)),
                None => future::pending().await,
            }
        };
        let peer = async {
            match self.peer_inbox.recv_async().await {
                Some(msg) => Wake::Peer(msg),
                None => future::pending().await,
            }
        };
        let flushed = async {
            match self.flushed_rx.recv_async().await {
                Ok(result) => Wake::Flushed(result),
                Err(_) => future::pending().await,
            }
        };
        let local = async {
            if !take_clients {
                return future::pending().await;
            }
            self.local_inbox.ready().await;
            match self.local_inbox.try_recv() {
                Some(append) => Wake::Local(append),
                None => Wake::Input(None),
            }
        };
        let timer = async {
            glommio::timer::sleep(until_tick).await;
            Wake::Timer
        };
        // `or` polls its first future first: peer messages before client input.
        let clients = future::or(input, future::or(local, timer));
        future::or(flushed, future::or(peer, clients)).await
    }

    fn absorb(&mut self, wake: Wake, events: &mut Vec<Event>) -> Result<(), ShardError> {
        match wake {
            Wake::Timer | Wake::Input(None) => {}
            Wake::Peer(msg) => events.push(Event::Message(msg)),
            Wake::Input(Some(ShardInput::Append { records, reply })) => {
                self.admit_append(records, AppendReply::Routed(reply), events);
            }
            Wake::Local(LocalAppend { records, answer }) => {
                self.admit_append(records, AppendReply::Local(answer), events);
            }
            Wake::Input(Some(ShardInput::Read { request, reply })) => {
                if let Err(refusal) = self.reads.limits().check(&request) {
                    reply.send(Err(refusal));
                } else if self.role == Role::Leader {
                    let request_id = self.next_request();
                    self.barriers.insert(request_id, (request, reply));
                    events.push(Event::ReadIndex { request_id });
                } else if request.any_replica {
                    self.serve_or_wait(request, reply);
                } else {
                    reply.send(Err(self.leader_error(self.leader)));
                }
            }
            Wake::Input(Some(ShardInput::Info { reply })) => {
                reply.send(self.info());
            }
            Wake::Input(Some(ShardInput::Transfer { to, reply })) => {
                self.request_transfer(to, reply);
            }
            Wake::Input(Some(ShardInput::Members { reply })) => {
                reply.send(self.members());
            }
            Wake::Input(Some(ShardInput::ChangeMembership { change, reply })) => {
                self.request_change(change, reply, events);
            }
            Wake::Input(Some(ShardInput::Trim { before, reply })) => {
                let request_id = self.next_request();
                self.trims.insert(request_id, reply);
                events.push(Event::ClientTrim { request_id, before });
            }
            Wake::Flushed(Ok(durable)) => {
                self.flushes_in_flight = self.flushes_in_flight.saturating_sub(1);
                if durable.op > self.durable_op {
                    self.durable_op = durable.op;
                    self.release_held();
                    events.push(Event::Durable { op: durable.op });
                }
            }
            Wake::Flushed(Err(source)) => {
                return Err(ShardError::Wal {
                    shard: self.id,
                    source,
                });
            }
        }
        Ok(())
    }

    /// Hands an append to the engine, or refuses it first: a batch the WAL could
    /// never take, or, on a leader, a disk below its watermark.
    fn admit_append(&mut self, records: Vec<Bytes>, reply: AppendReply, events: &mut Vec<Event>) {
        super::failpoint::on_append(self.id);
        if let Err(refusal) = self.check_batch(&records) {
            reply.send(Err(refusal));
            return;
        }
        // Only a leader refuses for its disk: elsewhere the engine answers
        // NotLeader, which sends the client to the node that decides.
        if self.role == Role::Leader
            && let Some(refusal) = self.lifecycle.append_refusal()
        {
            reply.send(Err(refusal));
            return;
        }
        let request_id = self.next_request();
        self.appends.insert(request_id, reply);
        events.push(Event::ClientAppend {
            request_id,
            records,
        });
    }
}
