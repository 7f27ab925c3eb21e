//! Log replication, the leader's side: its AppendEntries pipeline and heartbeats
//! (the follower's side is in `follower.rs`).
//!
//! The leader emits its own log append and the AppendEntries for it in the same step
//! (replication runs in parallel with its flush). Per follower it keeps a bounded
//! window in flight and advances `next_index` optimistically; a rejection drops the
//! follower back to probing, one message at a time, guided by the conflict hint.

use super::event::Command;
use super::progress::ReplicationState;
use super::types::{AppendResponse, ConflictHint, Entry, Index, Message, MessageBody, NodeId};
use super::{Engine, Role};

impl Engine {
    pub(super) fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        self.election_elapsed_ticks += 1;
        if self.heartbeat_elapsed_ticks >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed_ticks = 0;
            self.restart_stalled_pipelines();
            self.broadcast_heartbeat();
        }
        if self.election_elapsed_ticks >= self.config.election_timeout_min_ticks {
            self.election_elapsed_ticks = 0;
            if !self.quorum_was_active() {
                return self.become_follower(self.hard.term, None);
            }
        }
        self.tick_transfer();
    }

    /// Check-quorum: whether a majority (this leader included) was heard from since
    /// the last check. Starts a new round either way.
    fn quorum_was_active(&mut self) -> bool {
        let membership = self.membership().clone();
        let mut active = usize::from(membership.is_voter(self.id));
        for (id, pr) in &mut self.peers {
            active += usize::from(pr.recent_active && membership.is_voter(*id));
            pr.recent_active = false;
        }
        active >= membership.quorum()
    }

    /// A pipelined follower that acknowledged nothing for two heartbeat rounds while
    /// messages were out has probably lost one: probe again from its match.
    fn restart_stalled_pipelines(&mut self) {
        for k in 0..self.peers.len() {
            let pr = &mut self.peers[k].1;
            if pr.state != ReplicationState::Pipeline || pr.inflight_msgs() == 0 {
                continue;
            }
            pr.stalled_rounds += 1;
            if pr.stalled_rounds >= 2 {
                let next = pr.match_index + 1;
                pr.become_probe(next);
                let peer = self.peers[k].0;
                while self.send_append(peer) {}
            }
        }
    }

    /// Sends a heartbeat round to every follower and returns its sequence number.
    pub(super) fn broadcast_heartbeat(&mut self) -> u64 {
        self.heartbeat_seq += 1;
        let seq = self.heartbeat_seq;
        for k in 0..self.peers.len() {
            let (peer, ref pr) = self.peers[k];
            // Only a commit index the follower is known to match is safe to pass on.
            let leader_commit = self.commit_index.min(pr.match_index);
            self.send(peer, MessageBody::Heartbeat { leader_commit, seq });
        }
        seq
    }

    pub(super) fn broadcast_append(&mut self) {
        for k in 0..self.peers.len() {
            let peer = self.peers[k].0;
            while self.send_append(peer) {}
        }
    }

    pub(super) fn peer_slot(&self, peer: NodeId) -> Option<usize> {
        self.peers.iter().position(|&(id, _)| id == peer)
    }

    /// Sends the next AppendEntries (or LogStart) to `peer` if its window allows;
    /// returns whether another may follow at once.
    pub(super) fn send_append(&mut self, peer: NodeId) -> bool {
        let Some(k) = self.peer_slot(peer) else {
            return false;
        };
        let (msgs_max, bytes_max) = (
            self.config.inflight_msgs_max,
            self.config.inflight_bytes_max,
        );
        let pr = &mut self.peers[k].1;
        if pr.is_paused(msgs_max, bytes_max) {
            return false;
        }
        let next = pr.next_index;
        let pipeline = pr.state == ReplicationState::Pipeline;
        if pipeline && next > self.log.last_index() {
            return false;
        }
        if next < self.log.start() {
            pr.become_probe(next);
            pr.probe_sent = true;
            let start_index = self.log.start();
            let body = MessageBody::LogStart {
                start_index,
                prev_term: self
                    .log
                    .term_at(start_index - 1)
                    .expect("log knows its predecessor"),
                // A restarted leader's commit index starts at its log start, below
                // the committed configuration it saved: that one's index is
                // committed too, and receivers check the configuration against it.
                leader_commit: self.commit_index.max(self.configs[0].index),
                config: self.configs[0].clone(),
            };
            self.send(peer, body);
            return false;
        }
        let prev_log_index = next - 1;
        let prev_log_term = self.log.term_at(prev_log_index).unwrap_or_else(|| {
            panic!(
                "leader {} lacks term at {prev_log_index} for peer {peer}",
                self.id
            )
        });
        if next < self.log.cache_start() {
            self.send_from_disk(k, next);
            return false;
        }
        let entries = self.log.slice(
            next,
            self.config.entries_per_msg_max,
            self.config.bytes_per_msg_max,
        );
        let bytes = entries.iter().map(Entry::size_bytes).sum();
        self.peers[k]
            .1
            .on_sent(prev_log_index + entries.len() as Index, bytes);
        let body = MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.commit_index,
        };
        self.send(peer, body);
        pipeline
    }

    /// A follower needs entries no longer in memory: probe it with entries the
    /// runtime reads from the WAL, one message at a time until it reaches the cache.
    fn send_from_disk(&mut self, k: usize, next: Index) {
        let (peer, pr) = &mut self.peers[k];
        pr.become_probe(next);
        pr.probe_sent = true;
        let to = *peer;
        let last_index =
            (self.log.cache_start() - 1).min(next + self.config.entries_per_msg_max as Index - 1);
        let body = MessageBody::AppendEntries {
            prev_log_index: next - 1,
            prev_log_term: self.log.term_at(next - 1).expect("checked by the caller"),
            entries: Vec::new(),
            leader_commit: self.commit_index,
        };
        let msg = Message {
            from: self.id,
            to,
            term: self.hard.term,
            body,
        };
        let bytes_max = self.config.bytes_per_msg_max;
        self.output.push(Command::SendLogRange {
            msg,
            last_index,
            bytes_max,
        });
    }

    pub(super) fn on_append_response(&mut self, from: NodeId, result: AppendResponse) {
        if self.role != Role::Leader {
            return;
        }
        let Some(k) = self.peer_slot(from) else {
            return;
        };
        let last_index = self.log.last_index();
        let pr = &mut self.peers[k].1;
        pr.recent_active = true;
        match result {
            AppendResponse::Success { match_index } => {
                assert!(
                    match_index <= last_index,
                    "follower {from} matched {match_index} beyond leader {}'s last index {last_index}",
                    self.id
                );
                if pr.on_success(match_index) {
                    self.maybe_commit();
                    self.maybe_send_timeout_now();
                }
            }
            AppendResponse::Reject {
                rejected_prev_index,
                hint,
            } => {
                let stale = match pr.state {
                    ReplicationState::Pipeline => rejected_prev_index <= pr.match_index,
                    ReplicationState::Probe => rejected_prev_index + 1 != pr.next_index,
                };
                if stale {
                    return;
                }
                // A current probe answered "my log ends at hint.index", below what
                // this follower once matched: it lost entries (recovery cut its log
                // at a corruption), so match from what it has now. Commit is not
                // affected: it never goes back.
                let lost_tail = pr.state == ReplicationState::Probe
                    && hint.conflict_term == 0
                    && hint.index < pr.match_index;
                if lost_tail {
                    pr.forget_match_above(hint.index);
                }
                let next = self.next_after_reject(rejected_prev_index, hint);
                self.peers[k].1.become_probe(next);
            }
        }
        while self.send_append(from) {}
    }

    /// Where to probe next after a rejection: skip the follower's whole conflicting
    /// term at once instead of one index per round trip.
    fn next_after_reject(&self, rejected: Index, hint: ConflictHint) -> Index {
        let next = if hint.conflict_term == 0 {
            hint.index + 1
        } else {
            let last_of_term = self.log.last_index_with_term_at_most(hint.conflict_term);
            if self.log.term_at(last_of_term) == Some(hint.conflict_term) {
                last_of_term + 1
            } else {
                hint.index
            }
        };
        next.clamp(1, rejected.max(1))
    }

    pub(super) fn on_heartbeat_response(&mut self, from: NodeId, seq: u64, last_log_index: Index) {
        if self.role != Role::Leader {
            return;
        }
        let Some(k) = self.peer_slot(from) else {
            return;
        };
        let pr = &mut self.peers[k].1;
        pr.recent_active = true;
        let newest_round = seq >= pr.heartbeat_acked_seq;
        pr.heartbeat_acked_seq = pr.heartbeat_acked_seq.max(seq);
        if newest_round && last_log_index < pr.match_index {
            // The follower's log now ends below what it once matched: it lost its
            // tail (recovery cut it at a corruption) after acknowledging it. A
            // pipeline with nothing in flight would otherwise wait forever for
            // entries it believes the follower has, so match from what it has now.
            // A response that overtook a later success only costs one probe.
            pr.forget_match_above(last_log_index);
            pr.become_probe(last_log_index + 1);
        }
        // An unanswered probe was probably lost: the follower is alive, so ask again.
        self.peers[k].1.probe_sent = false;
        while self.send_append(from) {}
        self.check_pending_reads();
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    fn records(from: Index, term: Term, payloads: &[&str]) -> Vec<Entry> {
        let entries = payloads.iter().enumerate().map(|(k, p)| Entry {
            term,
            index: from + k as Index,
            kind: EntryKind::Record,
            payload: Bytes::from(p.to_string()),
        });
        entries.collect()
    }

    #[test]
    fn first_success_commits_and_switches_to_optimistic_pipelining() {
        let mut e = leader(&[1]);
        e.step(msg(2, 1, 2, success(2)));
        assert_eq!(e.take_commands(), vec![Command::Commit { index: 2 }]);
        e.step(client_append(7, &["a", "b"]));
        let ab = records(3, 2, &["a", "b"]);
        assert_eq!(
            e.take_commands(),
            vec![
                Command::AppendLog {
                    op: 3,
                    entries: ab.clone()
                },
                send(1, 2, 2, entries_msg(2, 2, ab, 2), None),
            ],
            "member 3 is still being probed: nothing more goes to it"
        );
        e.step(client_append(8, &["c"]));
        let c = records(5, 2, &["c"]);
        assert_eq!(
            e.take_commands(),
            vec![
                Command::AppendLog {
                    op: 4,
                    entries: c.clone()
                },
                send(1, 2, 2, entries_msg(4, 2, c, 2), None),
            ],
            "sent before the first batch is acknowledged"
        );
    }

    #[test]
    fn window_limits_messages_in_flight() {
        let mut e = leader(&[1]);
        e.config.inflight_msgs_max = 2;
        e.step(msg(2, 1, 2, success(2)));
        for id in 0..3 {
            e.step(client_append(id, &["x"]));
        }
        let sent_to_2 = |out: &[Command]| {
            out.iter()
                .filter(|c| matches!(c, Command::Send { msg, .. } if msg.to == 2))
                .count()
        };
        assert_eq!(
            sent_to_2(&e.take_commands()),
            2,
            "third append waits for the window"
        );
        e.step(msg(2, 1, 2, success(3)));
        let out = e.take_commands();
        assert_eq!(
            sent_to_2(&out),
            1,
            "an acknowledgement frees one slot: {out:?}"
        );
    }

    #[test]
    fn follower_that_lost_its_tail_is_sent_it_again() {
        let mut e = leader(&[1, 1, 1]);
        e.step(msg(3, 1, 2, success(4)));
        e.take_commands();
        e.step(client_append(1, &["x"]));
        e.take_commands();
        // Follower 3 restarted with its log cut at 2: a pipelined append after 5
        // is rejected, so the leader probes after its match index (4)…
        e.step(msg(3, 1, 2, rejection(5, 0, 2)));
        let probe = e.take_commands();
        assert!(
            matches!(&probe[..], [Command::Send { msg, .. }] if matches!(msg.body, MessageBody::AppendEntries { prev_log_index: 4, .. })),
            "{probe:?}"
        );
        // …and that probe is rejected too, with the follower's real end.
        e.step(msg(3, 1, 2, rejection(4, 0, 2)));
        let mut appended = record(5, 2);
        appended.payload = Bytes::from_static(b"x");
        let entries = vec![record(3, 1), noop(4, 2), appended];
        assert_eq!(
            e.take_commands(),
            vec![send(1, 3, 2, entries_msg(2, 1, entries, 4), None)]
        );
        assert_eq!(e.replication_progress()[1].1.match_index, 2);
    }

    #[test]
    fn rejection_falls_back_to_probe_at_the_follower_end() {
        let mut e = leader(&[1, 1, 1]);
        e.step(msg(3, 1, 2, rejection(3, 0, 1)));
        let entries = vec![record(2, 1), record(3, 1), noop(4, 2)];
        assert_eq!(
            e.take_commands(),
            vec![send(1, 3, 2, entries_msg(1, 1, entries, 0), None)]
        );
        e.step(msg(3, 1, 2, rejection(3, 0, 1)));
        assert_eq!(e.take_commands(), vec![], "a stale rejection is ignored");
    }

    #[test]
    fn conflict_hint_skips_a_whole_term() {
        let mut e = leader_unflushed(3, &[1, 2, 2, 3]);
        e.step(Event::Durable { op: 2 });
        e.take_commands();
        // The follower has term 2 at index 4, starting at index 2; the leader's last
        // term-2 entry is 3, so it probes right after it.
        e.step(msg(2, 4, 4, rejection(4, 2, 2)));
        assert_eq!(
            e.take_commands(),
            vec![],
            "message to someone else is dropped"
        );
        e.step(msg(2, 1, 4, rejection(4, 2, 2)));
        let entries = vec![record(4, 3), noop(5, 4)];
        assert_eq!(
            e.take_commands(),
            vec![send(1, 2, 4, entries_msg(3, 2, entries, 0), None)]
        );
        // A term the leader never had: go to the follower's first index of it.
        let mut e = leader_unflushed(3, &[1, 1, 3]);
        e.step(Event::Durable { op: 2 });
        e.take_commands();
        e.step(msg(2, 1, 4, rejection(3, 2, 2)));
        let entries = vec![record(2, 1), record(3, 3), noop(4, 4)];
        assert_eq!(
            e.take_commands(),
            vec![send(1, 2, 4, entries_msg(1, 1, entries, 0), None)]
        );
    }

    #[test]
    fn heartbeats_pass_on_only_a_matched_commit_index() {
        let mut e = leader(&[1]);
        e.step(msg(2, 1, 2, success(2)));
        e.take_commands();
        tick_n(&mut e, 2);
        let out = e.take_commands();
        assert_eq!(
            out,
            vec![
                send(1, 2, 2, heartbeat(2, 1), None),
                send(1, 3, 2, heartbeat(0, 1), None),
            ]
        );
    }

    #[test]
    fn heartbeat_response_resends_an_unanswered_probe() {
        let mut e = leader(&[1]);
        let response = heartbeat_response(0, 1);
        e.step(msg(3, 1, 2, response));
        let probe = entries_msg(1, 1, vec![noop(2, 2)], 0);
        assert_eq!(e.take_commands(), vec![send(1, 3, 2, probe, None)]);
    }

    #[test]
    fn heartbeat_response_below_match_rewinds_an_idle_pipeline() {
        // Seed 24447: follower 2 acknowledged 5, then restarted with its log cut at
        // 3. With nothing in flight the pipeline sent nothing more, and heartbeats
        // alone never told the leader; now their responses do.
        let mut e = leader(&[1, 1, 1]);
        e.step(msg(2, 1, 2, success(4)));
        e.step(client_append(1, &["x"]));
        e.step(msg(2, 1, 2, success(5)));
        // Four heartbeat rounds, so that answers to rounds 1 to 4 are not forged.
        tick_n(&mut e, 8);
        e.take_commands();
        let answer = |seq, last_log_index| {
            msg(
                2,
                1,
                2,
                MessageBody::HeartbeatResponse {
                    seq,
                    last_log_index,
                },
            )
        };
        e.step(answer(3, 5));
        assert_eq!(e.take_commands(), vec![], "nothing lost, nothing to send");
        e.step(answer(4, 3));
        let mut appended = record(5, 2);
        appended.payload = Bytes::from_static(b"x");
        let resend = entries_msg(3, 1, vec![noop(4, 2), appended], 4);
        assert_eq!(e.take_commands(), vec![send(1, 2, 2, resend, None)]);
        let pr = &e.replication_progress()[0].1;
        assert_eq!(
            (pr.match_index, pr.state),
            (3, progress::ReplicationState::Probe)
        );
        // A response from an older round proves nothing about the log now.
        e.step(msg(2, 1, 2, success(5)));
        e.take_commands();
        e.step(answer(2, 1));
        assert_eq!(e.replication_progress()[0].1.match_index, 5);
    }

    #[test]
    fn follower_behind_log_start_is_told_to_reset() {
        let mut e = leader(&[1, 1, 1]);
        e.step(msg(2, 1, 2, success(4)));
        e.step(Event::PurgeLog { before: 4 });
        e.take_commands();
        let _f = reset_empty_follower_3(&mut e, 4, 4);
        e.step(msg(3, 1, 2, success(3)));
        let out = e.take_commands();
        assert_eq!(
            out,
            vec![send(1, 3, 2, entries_msg(3, 1, vec![noop(4, 2)], 4), None)]
        );
    }

    /// Simulator seed 17 of the membership run: member 4 restarted with its
    /// committed configuration saved at 95 and its log from 81, was elected, and
    /// sent a LogStart naming commit 80 with that configuration; receivers refused
    /// it as malformed (a configuration above the commit index).
    #[test]
    fn restarted_leader_names_a_commit_covering_its_committed_configuration() {
        let config = Entry {
            index: 4,
            term: 1,
            kind: EntryKind::Config,
            payload: Membership::of_voters(&[1, 2, 3]).encode(),
        };
        let entries = vec![record(3, 1), config, record(5, 1)];
        let hard_state = HardState {
            term: 1,
            voted_for: None,
        };
        let mut recovered = Recovered::from_entries(hard_state, 3, 1, entries);
        recovered.configs[0].committed = true;
        let members = Membership::of_voters(&[1, 2, 3]);
        let mut e = Engine::new(1, &members, Config::default(), 42, recovered).expect("valid");
        tick_until_role(&mut e, Role::PreCandidate);
        e.step(msg(2, 1, 2, MessageBody::PreVoteResponse { granted: true }));
        e.step(Event::Durable { op: 1 });
        e.step(msg(
            2,
            1,
            2,
            MessageBody::RequestVoteResponse { granted: true },
        ));
        assert_eq!((e.role(), e.commit_index()), (Role::Leader, 2));
        e.take_commands();
        e.step(msg(3, 1, 2, rejection(5, 0, 1)));
        let out = e.take_commands();
        let log_start = out.iter().find_map(|c| match c {
            Command::Send { msg, .. } => match &msg.body {
                MessageBody::LogStart {
                    leader_commit,
                    config,
                    ..
                } => Some((*leader_commit, config.index)),
                _ => None,
            },
            _ => None,
        });
        assert_eq!(log_start, Some((4, 4)), "{out:?}");
    }

    #[test]
    fn leader_without_a_quorum_for_an_election_timeout_steps_down() {
        let mut e = leader(&[1]);
        tick_n(&mut e, 19);
        assert_eq!(e.role(), Role::Leader, "peers count as heard at election");
        e.step(Event::Tick);
        assert_eq!((e.role(), e.leader()), (Role::Follower, None));
    }

    #[test]
    fn stalled_pipeline_probes_again_from_its_match() {
        let mut e = leader(&[1]);
        e.step(msg(2, 1, 2, success(2)));
        e.step(client_append(1, &["lost"]));
        e.take_commands();
        tick_n(&mut e, 2);
        e.take_commands();
        tick_n(&mut e, 2);
        let resend = entries_msg(2, 2, records(3, 2, &["lost"]), 2);
        let out = e.take_commands();
        assert_eq!(out[0], send(1, 2, 2, resend, None), "{out:?}");
    }
}
