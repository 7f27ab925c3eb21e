//! Engine settings. Time is counted in ticks: the runtime decides how long a tick is
//! (for example 10 ms), so the engine never reads a clock.

use thiserror::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// A follower campaigns after a random number of ticks in
    /// `election_timeout_min_ticks..election_timeout_max_ticks` without a leader.
    pub election_timeout_min_ticks: u32,
    pub election_timeout_max_ticks: u32,
    /// The leader sends heartbeats this often.
    pub heartbeat_interval_ticks: u32,
    /// A pipelined follower may have at most this many AppendEntries unacknowledged…
    pub inflight_msgs_max: usize,
    /// …carrying at most this many bytes of entries in total.
    pub inflight_bytes_max: u64,
    /// One AppendEntries carries at most this many entries…
    pub entries_per_msg_max: usize,
    /// …and at most this many bytes (but always at least one entry).
    pub bytes_per_msg_max: u64,
    /// The leader refuses new client appends (Overloaded) while this many are waiting.
    pub pending_appends_max: usize,
    /// …or while this many bytes of its log are not yet committed.
    pub uncommitted_bytes_max: u64,
    /// The leader refuses new read barriers while this many are waiting.
    pub pending_reads_max: usize,
    /// Entries kept in memory once on disk; older ones are read back from the WAL
    /// when a follower needs them. Entries not yet on disk always stay.
    pub log_cache_bytes_max: u64,
    /// Largest entry payload accepted from a leader: the runtime passes the WAL's
    /// record limit, so that a peer cannot hand the WAL a record it refuses (which
    /// would stop the member).
    pub entry_payload_bytes_max: u64,
    /// Largest sum of `Entry::size_bytes` accepted in one AppendEntries: the runtime
    /// passes what its WAL buffer always takes at once. Honest leaders send at most
    /// `bytes_per_msg_max` (plus 24 bytes per entry when the runtime reads them back
    /// from the WAL's cache, which counts payloads), or one entry; the node's
    /// configuration keeps both within this.
    pub received_entries_bytes_max: u64,
}

/// Deliberate engine bugs, switchable in test builds only, to show that the
/// simulator's checkers catch them. Release builds cannot enable any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// A follower acknowledges entries before they are on disk.
    AckBeforeFlush,
    /// A member votes (and pre-votes) for a candidate whose log is behind its own.
    VoteForShorterLog,
    /// A leader commits an older term's entry by counting replicas.
    CommitPreviousTerm,
    /// A member whose log was cut at a corruption votes and campaigns at once.
    IgnoreLostTail,
    /// A member removes the records a trim names as soon as the trim entry is in
    /// its log, before it is committed.
    TrimBeforeCommit,
    /// A leader proposes a membership change while another is not committed yet.
    TwoChangesInFlight,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            election_timeout_min_ticks: 10,
            election_timeout_max_ticks: 20,
            heartbeat_interval_ticks: 2,
            inflight_msgs_max: 256,
            inflight_bytes_max: 32 << 20,
            entries_per_msg_max: 4096,
            bytes_per_msg_max: 1 << 20,
            pending_appends_max: 65_536,
            uncommitted_bytes_max: 256 << 20,
            pending_reads_max: 65_536,
            log_cache_bytes_max: 64 << 20,
            entry_payload_bytes_max: 1 << 20,
            received_entries_bytes_max: 2 << 20,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid engine setting `{key}`: {reason}")]
pub struct ConfigError {
    pub key: &'static str,
    pub reason: String,
}

impl Config {
    /// Refuses settings under which Raft cannot work (for example heartbeats slower
    /// than elections) or under which nothing can be sent.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key, reason: String| Err(ConfigError { key, reason });
        if self.heartbeat_interval_ticks == 0 {
            return fail("heartbeat_interval_ticks", "must be at least 1".into());
        }
        if self.election_timeout_min_ticks <= self.heartbeat_interval_ticks {
            return fail(
                "election_timeout_min_ticks",
                format!(
                    "must be larger than heartbeat_interval_ticks ({}), or followers campaign between heartbeats",
                    self.heartbeat_interval_ticks
                ),
            );
        }
        if self.election_timeout_max_ticks <= self.election_timeout_min_ticks {
            return fail(
                "election_timeout_max_ticks",
                format!(
                    "must be larger than election_timeout_min_ticks ({}), so timeouts can be randomized",
                    self.election_timeout_min_ticks
                ),
            );
        }
        let positive = [
            ("inflight_msgs_max", self.inflight_msgs_max as u64),
            ("inflight_bytes_max", self.inflight_bytes_max),
            ("entries_per_msg_max", self.entries_per_msg_max as u64),
            ("bytes_per_msg_max", self.bytes_per_msg_max),
            ("pending_appends_max", self.pending_appends_max as u64),
            ("uncommitted_bytes_max", self.uncommitted_bytes_max),
            ("pending_reads_max", self.pending_reads_max as u64),
            ("log_cache_bytes_max", self.log_cache_bytes_max),
            ("entry_payload_bytes_max", self.entry_payload_bytes_max),
            (
                "received_entries_bytes_max",
                self.received_entries_bytes_max,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return fail(key, "must be at least 1".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn refuses_heartbeat_slower_than_election() {
        let config = Config {
            heartbeat_interval_ticks: 10,
            ..Config::default()
        };
        assert_eq!(
            config.validate().unwrap_err().key,
            "election_timeout_min_ticks"
        );
    }

    #[test]
    fn refuses_zero_limits() {
        let config = Config {
            inflight_msgs_max: 0,
            ..Config::default()
        };
        assert_eq!(config.validate().unwrap_err().key, "inflight_msgs_max");
        let config = Config {
            election_timeout_max_ticks: 10,
            ..Config::default()
        };
        assert_eq!(
            config.validate().unwrap_err().key,
            "election_timeout_max_ticks"
        );
    }
}
