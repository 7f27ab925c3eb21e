//! `[reads]` and `[clients]`: what a read and a client connection may ask of a node.

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};
use crate::transport::frame::FRAME_BODY_BYTES_MAX_DEFAULT;
use crate::transport::server::ServerConfig;

/// Limits the server puts on reads, whatever a request asks.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ReadSettings {
    /// Longest wait (long poll) a read may ask for; a read asking for more is
    /// refused with InvalidRequest naming this setting.
    pub wait_ms_max: u32,
    /// Most payload bytes in one answer (a request's `max_bytes` is capped by it).
    pub bytes_max: u32,
    /// Most records in one answer (a request's `max_records` is capped by it).
    pub records_max: u32,
    /// Reads that may wait for new records at once, per shard; more are Overloaded.
    pub waiting_max: u32,
}

/// Default `reads.bytes_max`: the client frame limit less room for the answer's
/// header and the per-record overhead of `reads.records_max` records, so a full
/// answer fits in one frame.
pub const READ_BYTES_MAX_DEFAULT: u32 = FRAME_BODY_BYTES_MAX_DEFAULT - (128 << 10);

impl Default for ReadSettings {
    fn default() -> ReadSettings {
        ReadSettings {
            wait_ms_max: 60_000,
            bytes_max: READ_BYTES_MAX_DEFAULT,
            records_max: 10_000,
            waiting_max: 4096,
        }
    }
}

/// Limits of the client listener, per connection unless said otherwise: what one
/// client may make the node hold, however it behaves (`docs/configuration.md`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSettings {
    pub frame_body_bytes_max: u32,
    pub inflight_requests_max: u32,
    pub inflight_bytes_max: u64,
    pub unwritten_bytes_max: u64,
    pub waiting_reads_per_connection_max: u32,
    pub idle_timeout_ms: u64,
    pub frame_timeout_ms: u64,
    pub write_timeout_ms: u64,
    /// Open client connections of the whole node.
    pub connections_max: u32,
}

impl Default for ClientSettings {
    fn default() -> ClientSettings {
        let server = ServerConfig::default();
        ClientSettings {
            frame_body_bytes_max: server.frame_body_bytes_max,
            inflight_requests_max: server.inflight_requests_max as u32,
            inflight_bytes_max: server.inflight_bytes_max as u64,
            unwritten_bytes_max: server.unwritten_bytes_max as u64,
            waiting_reads_per_connection_max: server.waiting_reads_per_connection_max as u32,
            idle_timeout_ms: server.idle_timeout_ms,
            frame_timeout_ms: server.frame_timeout_ms,
            write_timeout_ms: server.write_timeout_ms,
            connections_max: server.connections_max as u32,
        }
    }
}

impl ReadSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("reads.wait_ms_max", self.wait_ms_max),
            ("reads.bytes_max", self.bytes_max),
            ("reads.records_max", self.records_max),
            ("reads.waiting_max", self.waiting_max),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// The smallest client frame limit: room for any fixed-size request and for the
/// metadata of a large cluster.
pub const CLIENT_FRAME_BODY_BYTES_MIN: u32 = 64 * 1024;

impl ClientSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let frame = self.frame_body_bytes_max;
        if frame < CLIENT_FRAME_BODY_BYTES_MIN {
            let reason = format!("{frame} is less than {CLIENT_FRAME_BODY_BYTES_MIN}");
            return Err(invalid("clients.frame_body_bytes_max", reason));
        }
        // A byte budget below one frame would still pass one request at a time (a
        // connection's only request is always let through), which defeats pipelining
        // without a word: say so instead.
        for (key, bytes) in [
            ("clients.inflight_bytes_max", self.inflight_bytes_max),
            ("clients.unwritten_bytes_max", self.unwritten_bytes_max),
        ] {
            if bytes < u64::from(frame) {
                let reason = format!(
                    "{bytes} is less than clients.frame_body_bytes_max ({frame}), the size of one request or answer"
                );
                return Err(invalid(key, reason));
            }
        }
        let at_least_one = [
            (
                "clients.inflight_requests_max",
                u64::from(self.inflight_requests_max),
            ),
            (
                "clients.waiting_reads_per_connection_max",
                u64::from(self.waiting_reads_per_connection_max),
            ),
            ("clients.idle_timeout_ms", self.idle_timeout_ms),
            ("clients.frame_timeout_ms", self.frame_timeout_ms),
            ("clients.write_timeout_ms", self.write_timeout_ms),
            ("clients.connections_max", u64::from(self.connections_max)),
        ];
        match at_least_one.iter().find(|(_, value)| *value == 0) {
            Some((key, _)) => Err(invalid(key, "must be at least 1")),
            None => Ok(()),
        }
    }

    /// The listener's limits.
    pub fn server_config(&self) -> ServerConfig {
        let bytes = |b: u64| usize::try_from(b).unwrap_or(usize::MAX);
        ServerConfig {
            frame_body_bytes_max: self.frame_body_bytes_max,
            inflight_requests_max: self.inflight_requests_max as usize,
            inflight_bytes_max: bytes(self.inflight_bytes_max),
            unwritten_bytes_max: bytes(self.unwritten_bytes_max),
            waiting_reads_per_connection_max: self.waiting_reads_per_connection_max as usize,
            idle_timeout_ms: self.idle_timeout_ms,
            frame_timeout_ms: self.frame_timeout_ms,
            write_timeout_ms: self.write_timeout_ms,
            connections_max: self.connections_max as usize,
            ..ServerConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::config::NodeConfig;
    use crate::runtime::config::test_support::*;

    #[test]
    fn read_limits_default_and_are_validated() {
        let config = NodeConfig::from_toml(EXAMPLE, "examples/node.toml").unwrap();
        assert_eq!(config.reads, ReadSettings::default());
        let without = without_section(EXAMPLE, "[reads]");
        let omitted = NodeConfig::from_toml(&without, "test.toml").unwrap();
        assert_eq!(omitted.reads, ReadSettings::default());
        let wait = with("wait_ms_max = 60000", "wait_ms_max = 5000").unwrap();
        assert_eq!(wait.reads.wait_ms_max, 5000);
        for (line, key) in [
            ("wait_ms_max = 60000", "reads.wait_ms_max"),
            ("records_max = 10000", "reads.records_max"),
            ("waiting_max = 4096", "reads.waiting_max"),
            ("bytes_max = 8257536", "reads.bytes_max"),
        ] {
            let zero = format!("{} = 0", line.split(' ').next().unwrap());
            assert_eq!(key_of(with(line, &zero).unwrap_err()), key);
        }
        let too_big = with("bytes_max = 8257536", "bytes_max = 4000000000").unwrap_err();
        assert_eq!(key_of(too_big), "reads.bytes_max");
        // The bound is the configured frame limit, not the default one.
        let smaller_frame = with(
            "frame_body_bytes_max = 8388608",
            "frame_body_bytes_max = 1048576",
        )
        .unwrap_err();
        assert_eq!(key_of(smaller_frame), "reads.bytes_max");
    }

    #[test]
    fn client_limits_are_read_and_checked() {
        let config = with(
            "unwritten_bytes_max = 16777216",
            "unwritten_bytes_max = 33554432",
        )
        .unwrap();
        let server = config.clients.server_config();
        assert_eq!(server.unwritten_bytes_max, 32 << 20);
        let defaults = ServerConfig::default();
        assert_eq!(server.inflight_bytes_max, defaults.inflight_bytes_max);
        assert_eq!(
            server.waiting_reads_per_connection_max,
            defaults.waiting_reads_per_connection_max
        );
        let refused = |from: &str, to: &str| key_of(with(from, to).unwrap_err());
        assert_eq!(
            refused("write_timeout_ms = 10000", "write_timeout_ms = 0"),
            "clients.write_timeout_ms"
        );
        assert_eq!(
            refused(
                "frame_body_bytes_max = 8388608",
                "frame_body_bytes_max = 1000"
            ),
            "clients.frame_body_bytes_max"
        );
        assert_eq!(
            refused(
                "inflight_bytes_max = 33554432           # 32 MiB of requests",
                "inflight_bytes_max = 1048576 # 1 MiB of requests"
            ),
            "clients.inflight_bytes_max"
        );
        assert_eq!(
            refused(
                "waiting_reads_per_connection_max = 16",
                "waiting_reads_per_connection_max = 0"
            ),
            "clients.waiting_reads_per_connection_max"
        );
        assert!(matches!(
            with("connections_max = 10000", "conections_max = 10000"),
            Err(ConfigError::Syntax { .. })
        ));
    }
}
