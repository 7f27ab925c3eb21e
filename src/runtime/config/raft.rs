//! `[raft]`: the consensus engine's timing and flow limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::sizes::{
    RECEIVED_ENTRIES_BYTES_MAX, append_entries_body_bytes, peer_frame_body_bytes_max,
};
use super::wal::WAL_BUFFER_BYTES;
use super::{ConfigError, NodeConfig, invalid};
use crate::engine::{self, ENTRY_OVERHEAD_BYTES};
use crate::runtime::shard::HandoverSettings;

/// The longest `shutdown_handover_ms` accepted.
const SHUTDOWN_HANDOVER_MS_MAX: u64 = 60_000;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// The length of one engine tick; the timeouts below are rounded to ticks.
    pub tick_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub inflight_msgs_max: usize,
    pub inflight_bytes_max: u64,
    pub entries_per_msg_max: usize,
    pub bytes_per_msg_max: u64,
    pub pending_appends_max: usize,
    pub uncommitted_bytes_max: u64,
    pub pending_reads_max: usize,
    pub log_cache_bytes_max: u64,
    /// Spread partition leaders evenly over the nodes (within one per node) by
    /// leader transfers, after start-up and after a node returns.
    pub leader_balance: bool,
    /// A leader promotes each learner to voter once it has caught up (see
    /// `ringlog members`); off, learners stay learners until `members promote`.
    pub auto_promote: bool,
    /// On SIGTERM or Ctrl-C, how long a leader may take to hand each partition it
    /// leads to a follower before it stops anyway; 0 stops at once.
    pub shutdown_handover_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> RaftSettings {
        let engine = engine::Config::default();
        RaftSettings {
            tick_ms: 10,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            heartbeat_interval_ms: 50,
            inflight_msgs_max: engine.inflight_msgs_max,
            inflight_bytes_max: engine.inflight_bytes_max,
            entries_per_msg_max: engine.entries_per_msg_max,
            bytes_per_msg_max: engine.bytes_per_msg_max,
            pending_appends_max: engine.pending_appends_max,
            uncommitted_bytes_max: engine.uncommitted_bytes_max,
            pending_reads_max: engine.pending_reads_max,
            log_cache_bytes_max: engine.log_cache_bytes_max,
            leader_balance: true,
            auto_promote: true,
            shutdown_handover_ms: 2_000,
        }
    }
}

impl RaftSettings {
    /// The rules between the timing settings, checked in milliseconds: the ticks
    /// they convert to keep the same order.
    fn validate_timing(&self) -> Result<(), ConfigError> {
        if self.tick_ms == 0 {
            return Err(invalid("raft.tick_ms", "must be at least 1"));
        }
        let (heartbeat, min, max) = (
            self.heartbeat_interval_ms,
            self.election_timeout_min_ms,
            self.election_timeout_max_ms,
        );
        if heartbeat < self.tick_ms {
            let reason = format!(
                "{heartbeat} is shorter than raft.tick_ms ({})",
                self.tick_ms
            );
            return Err(invalid("raft.heartbeat_interval_ms", reason));
        }
        if min <= heartbeat {
            let reason = format!(
                "{min} must be larger than raft.heartbeat_interval_ms ({heartbeat}), or followers campaign between heartbeats"
            );
            return Err(invalid("raft.election_timeout_min_ms", reason));
        }
        if self.shutdown_handover_ms > SHUTDOWN_HANDOVER_MS_MAX {
            let reason = format!(
                "{} is more than {SHUTDOWN_HANDOVER_MS_MAX} (a stop that waits longer looks hung to a supervisor)",
                self.shutdown_handover_ms
            );
            return Err(invalid("raft.shutdown_handover_ms", reason));
        }
        if max <= min {
            let reason = format!(
                "{max} must be larger than raft.election_timeout_min_ms ({min}), so timeouts can be randomized"
            );
            return Err(invalid("raft.election_timeout_max_ms", reason));
        }
        Ok(())
    }

    /// What the shards need for leader transfers. A requested or balancing
    /// hand-over may take two election timeouts: the engine gives up on a target
    /// after one, and may then try another.
    pub fn handover_settings(&self) -> HandoverSettings {
        HandoverSettings {
            leader_balance: self.leader_balance,
            auto_promote: self.auto_promote,
            shutdown: Duration::from_millis(self.shutdown_handover_ms),
            attempt: Duration::from_millis(2 * self.election_timeout_max_ms),
        }
    }

    /// `ms` of setting `key` in ticks; it must be a whole number of them.
    fn ticks(&self, key: &str, ms: u64) -> Result<u32, ConfigError> {
        if !ms.is_multiple_of(self.tick_ms) {
            return Err(invalid(
                key,
                format!("{ms} is not a multiple of raft.tick_ms ({})", self.tick_ms),
            ));
        }
        u32::try_from(ms / self.tick_ms).map_err(|_| invalid(key, "too large"))
    }
}

impl NodeConfig {
    /// The leader's AppendEntries must fit the peer frame limit and what followers
    /// accept, or they are refused at every retry and followers never catch up.
    pub(super) fn validate_messages(&self) -> Result<(), ConfigError> {
        let raft = &self.raft;
        let (bytes, entries) = (raft.bytes_per_msg_max, raft.entries_per_msg_max);
        let overhead = ENTRY_OVERHEAD_BYTES.saturating_mul(entries as u64);
        // Name the setting that makes most of the excess.
        let key = if overhead > bytes {
            "raft.entries_per_msg_max"
        } else {
            "raft.bytes_per_msg_max"
        };
        let what = format!(
            "raft.bytes_per_msg_max ({bytes}) plus {ENTRY_OVERHEAD_BYTES} bytes for each of raft.entries_per_msg_max ({entries}) entries"
        );
        let batch = self.sent_entries_bytes_max();
        let (header, peer_frame) = (append_entries_body_bytes(0), peer_frame_body_bytes_max());
        if batch.saturating_add(header) > peer_frame {
            let reason = format!(
                "{what} and a {header}-byte header is more than the peer frame limit ({peer_frame} bytes, not a setting)"
            );
            return Err(invalid(key, reason));
        }
        if batch > RECEIVED_ENTRIES_BYTES_MAX {
            let reason = format!(
                "{what} is more than {RECEIVED_ENTRIES_BYTES_MAX}, the entries one AppendEntries may carry so that a follower's WAL buffer ({WAL_BUFFER_BYTES} bytes, not a setting) always takes them"
            );
            return Err(invalid(key, reason));
        }
        if raft.inflight_bytes_max < bytes {
            let reason = format!(
                "{} is less than raft.bytes_per_msg_max ({bytes}): one AppendEntries would fill a follower's window, so none would be pipelined",
                raft.inflight_bytes_max
            );
            return Err(invalid("raft.inflight_bytes_max", reason));
        }
        Ok(())
    }

    /// The most bytes of entries (summed `Entry::size_bytes`) this node puts in one
    /// AppendEntries as leader: `raft.bytes_per_msg_max`, or a single record larger
    /// than that. Entries read back from the WAL's cache for a lagging follower are
    /// counted by payload alone, so each may add its 24-byte overhead beyond it.
    fn sent_entries_bytes_max(&self) -> u64 {
        let overhead = ENTRY_OVERHEAD_BYTES.saturating_mul(self.raft.entries_per_msg_max as u64);
        let batch = self.raft.bytes_per_msg_max.saturating_add(overhead);
        let record = self.wal.record_size_bytes_max + ENTRY_OVERHEAD_BYTES;
        batch.max(record)
    }

    /// One shard's engine settings: [`NodeConfig::engine_config`], with what the
    /// engine accepts from peers bounded by what the WAL takes. A record over the
    /// WAL's limit, or an AppendEntries larger than its buffer takes at once, would
    /// stop the shard; validation keeps what an honest leader sends within both.
    pub fn shard_engine_config(&self) -> Result<engine::Config, ConfigError> {
        let mut engine = self.engine_config()?;
        engine.entry_payload_bytes_max = self.wal.record_size_bytes_max;
        engine.received_entries_bytes_max = RECEIVED_ENTRIES_BYTES_MAX;
        Ok(engine)
    }

    /// The engine's settings, with times converted to ticks.
    pub fn engine_config(&self) -> Result<engine::Config, ConfigError> {
        let raft = &self.raft;
        raft.validate_timing()?;
        let ticks = |key: &str, ms: u64| raft.ticks(key, ms);
        let config = engine::Config {
            election_timeout_min_ticks: ticks(
                "raft.election_timeout_min_ms",
                raft.election_timeout_min_ms,
            )?,
            election_timeout_max_ticks: ticks(
                "raft.election_timeout_max_ms",
                raft.election_timeout_max_ms,
            )?,
            heartbeat_interval_ticks: ticks(
                "raft.heartbeat_interval_ms",
                raft.heartbeat_interval_ms,
            )?,
            inflight_msgs_max: raft.inflight_msgs_max,
            inflight_bytes_max: raft.inflight_bytes_max,
            entries_per_msg_max: raft.entries_per_msg_max,
            bytes_per_msg_max: raft.bytes_per_msg_max,
            pending_appends_max: raft.pending_appends_max,
            uncommitted_bytes_max: raft.uncommitted_bytes_max,
            pending_reads_max: raft.pending_reads_max,
            log_cache_bytes_max: raft.log_cache_bytes_max,
            // Limits on what peers send come from the WAL; `shard_context` sets them.
            ..engine::Config::default()
        };
        // The timing rules were checked above in milliseconds; what is left are limits
        // whose names the engine shares with this section.
        config
            .validate()
            .map_err(|e| invalid(&format!("raft.{}", e.key), e.reason))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::config::sizes::WAL_COST_PER_ENTRY_SIZE;
    use crate::runtime::config::test_support::*;

    #[test]
    fn appendentries_that_peers_would_refuse_are_refused_at_start() {
        // Over the 8 MiB peer frame limit: every AppendEntries this big is refused
        // by the link, and a follower behind never catches up.
        let (key, reason) = refusal(&[(MSG_BYTES, "bytes_per_msg_max = 9437184")]);
        assert_eq!(key, "raft.bytes_per_msg_max");
        assert!(reason.contains("peer frame limit"), "{reason}");
        // Within the frame, but more than a follower's WAL always takes at once:
        // followers would refuse it as a misbehaving leader's.
        let (key, reason) = refusal(&[(MSG_BYTES, "bytes_per_msg_max = 3145728")]);
        assert_eq!(key, "raft.bytes_per_msg_max");
        assert!(reason.contains("follower's WAL buffer"), "{reason}");
        // The same bound counts 24 bytes of overhead per entry.
        let (key, _) = refusal(&[("entries_per_msg_max = 4096", "entries_per_msg_max = 100000")]);
        assert_eq!(key, "raft.entries_per_msg_max");
        let most = RECEIVED_ENTRIES_BYTES_MAX - 4096 * ENTRY_OVERHEAD_BYTES;
        let config = with(MSG_BYTES, &format!("bytes_per_msg_max = {most}")).unwrap();
        let line = format!("bytes_per_msg_max = {}", most + 1);
        assert_eq!(
            key_of(with(MSG_BYTES, &line).unwrap_err()),
            "raft.bytes_per_msg_max"
        );
        // What such a leader sends, its followers (with the same settings) accept,
        // and their WAL takes in half its buffer however small the entries.
        let engine = config.shard_engine_config().unwrap();
        assert!(engine.received_entries_bytes_max >= config.sent_entries_bytes_max());
        let wal = config.wal_config();
        let worst_wal_cost = engine.received_entries_bytes_max * WAL_COST_PER_ENTRY_SIZE;
        assert!(worst_wal_cost <= wal.buffered_bytes_max as u64 / 2);
    }

    #[test]
    fn a_window_smaller_than_one_message_is_refused() {
        let line = "inflight_bytes_max = 33554432   # 32 MiB per follower";
        let (key, reason) = refusal(&[(line, "inflight_bytes_max = 524288")]);
        assert_eq!(key, "raft.inflight_bytes_max");
        assert!(reason.contains("raft.bytes_per_msg_max"), "{reason}");
        assert!(with(line, "inflight_bytes_max = 1048576").is_ok());
    }
}
