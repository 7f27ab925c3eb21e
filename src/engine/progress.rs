//! What the leader knows about one follower's log, and its window of AppendEntries
//! in flight.
//!
//! Invariant: `match_index < next_index`.
//! Invariant: `match_index` is an index the follower proved it holds, but not a
//! promise that it still does: a follower whose log was cut at a corruption may end
//! below it. Each heartbeat response carries the follower's last index, and one from
//! the newest round that is below `match_index` lowers it and restarts probing there,
//! so a lost tail is resent within a heartbeat interval even when nothing is in flight.
//! Invariant: in `Probe`, the window is empty; in `Pipeline`, window entries are
//! increasing, above `match_index` and below `next_index`, at most `msgs_max` long,
//! and below `bytes_max` without its newest message.

use std::collections::VecDeque;

use super::types::Index;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// Where the follower's log matches is unknown: one message at a time.
    Probe,
    /// The follower matched: send ahead optimistically, bounded by the window.
    Pipeline,
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub match_index: Index,
    pub next_index: Index,
    pub state: ReplicationState,
    /// In `Probe`: a probe is out and unanswered, so do not send another.
    pub probe_sent: bool,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Highest heartbeat sequence number this follower has answered.
    pub heartbeat_acked_seq: u64,
    /// Heartbeat rounds in a row in which a pipelined follower acknowledged nothing
    /// while messages were in flight; two mean a message was probably lost.
    pub stalled_rounds: u32,
    window: Window,
}

impl Progress {
    pub fn new(last_index: Index) -> Progress {
        Progress {
            match_index: 0,
            next_index: last_index + 1,
            state: ReplicationState::Probe,
            probe_sent: false,
            recent_active: true,
            heartbeat_acked_seq: 0,
            stalled_rounds: 0,
            window: Window::default(),
        }
    }

    /// Whether another AppendEntries may go out now.
    pub fn is_paused(&self, msgs_max: usize, bytes_max: u64) -> bool {
        match self.state {
            ReplicationState::Probe => self.probe_sent,
            ReplicationState::Pipeline => self.window.is_full(msgs_max, bytes_max),
        }
    }

    /// Records an AppendEntries ending at `last_index` carrying `bytes` of entries.
    pub fn on_sent(&mut self, last_index: Index, bytes: u64) {
        match self.state {
            ReplicationState::Probe => self.probe_sent = true,
            ReplicationState::Pipeline => {
                self.next_index = last_index + 1;
                self.window.push(last_index, bytes);
            }
        }
    }

    /// A success for `match_index`; returns whether anything was learned.
    pub fn on_success(&mut self, match_index: Index) -> bool {
        self.window.free_through(match_index);
        if match_index <= self.match_index {
            return false;
        }
        self.match_index = match_index;
        self.next_index = self.next_index.max(match_index + 1);
        self.stalled_rounds = 0;
        if self.state == ReplicationState::Probe {
            self.state = ReplicationState::Pipeline;
            self.probe_sent = false;
        }
        true
    }

    /// The follower's log now ends at `last_index`, below its match index: it lost
    /// entries, which must be sent again.
    pub fn forget_match_above(&mut self, last_index: Index) {
        self.match_index = self.match_index.min(last_index);
    }

    /// Falls back to probing at `next_index`.
    pub fn become_probe(&mut self, next_index: Index) {
        self.state = ReplicationState::Probe;
        self.probe_sent = false;
        self.stalled_rounds = 0;
        self.next_index = next_index.max(self.match_index + 1);
        self.window = Window::default();
    }

    pub fn inflight_msgs(&self) -> usize {
        self.window.sent.len()
    }

    pub fn inflight_bytes(&self) -> u64 {
        self.window.bytes
    }

    /// Panics with context when an invariant does not hold.
    pub fn check(&self, msgs_max: usize, bytes_max: u64) {
        assert!(
            self.match_index < self.next_index,
            "match >= next: {self:?}"
        );
        if self.state == ReplicationState::Probe {
            assert!(self.window.sent.is_empty(), "probe with a window: {self:?}");
        }
        let mut previous = self.match_index;
        for &(last, _) in &self.window.sent {
            assert!(
                last > previous && last < self.next_index,
                "window out of order: {self:?}"
            );
            previous = last;
        }
        assert!(
            self.window.sent.len() <= msgs_max,
            "window too long: {self:?}"
        );
        // A message goes out while the window is below the byte limit, so only the
        // newest one may take it over.
        let before_newest = self.window.bytes - self.window.sent.back().map_or(0, |&(_, b)| b);
        assert!(
            self.window.sent.is_empty() || before_newest < bytes_max,
            "window too large: {self:?}"
        );
    }
}

/// The messages sent and not yet acknowledged, as (last index, bytes).
#[derive(Clone, Debug, Default)]
struct Window {
    sent: VecDeque<(Index, u64)>,
    bytes: u64,
}

impl Window {
    fn is_full(&self, msgs_max: usize, bytes_max: u64) -> bool {
        self.sent.len() >= msgs_max || self.bytes >= bytes_max
    }

    fn push(&mut self, last_index: Index, bytes: u64) {
        self.sent.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    fn free_through(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.sent.front() {
            if last > index {
                break;
            }
            self.sent.pop_front();
            self.bytes -= bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sends_one_at_a_time() {
        let mut pr = Progress::new(10);
        assert!(!pr.is_paused(4, 100));
        pr.on_sent(11, 10);
        assert!(pr.is_paused(4, 100));
        assert_eq!(pr.next_index, 11, "probing does not advance next");
    }

    #[test]
    fn success_switches_to_pipeline_and_window_bounds_sends() {
        let mut pr = Progress::new(10);
        pr.on_sent(10, 0);
        assert!(pr.on_success(10));
        assert_eq!(pr.state, ReplicationState::Pipeline);
        pr.on_sent(12, 40);
        pr.on_sent(14, 40);
        assert_eq!(pr.next_index, 15);
        assert!(!pr.is_paused(3, 100));
        pr.on_sent(15, 40);
        assert!(pr.is_paused(3, 1000), "count limit");
        assert!(pr.is_paused(10, 100), "byte limit");
        pr.on_success(14);
        assert_eq!((pr.inflight_msgs(), pr.inflight_bytes()), (1, 40));
        pr.check(3, 100);
        assert!(!pr.on_success(12), "stale success teaches nothing");
    }

    #[test]
    fn become_probe_clears_window_and_keeps_next_above_match() {
        let mut pr = Progress::new(0);
        pr.on_success(5);
        pr.on_sent(9, 10);
        pr.become_probe(3);
        assert_eq!((pr.next_index, pr.inflight_msgs()), (6, 0));
        pr.check(1, 1);
    }
}
