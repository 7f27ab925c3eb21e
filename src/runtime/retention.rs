//! The log's lifecycle settings: `[retention]` (when a partition's oldest segments
//! are removed) and `[wal] min_free_bytes` (the low-disk watermark), with their
//! validation. Kept apart from `config/`, which holds every other table.

use serde::{Deserialize, Serialize};

use super::config::{ConfigError, invalid};
use crate::wal::log::RetentionPolicy;

/// Default `wal.min_free_bytes`: 256 MiB, room for a few segments' worth of appends
/// in flight on every shard when the watermark is crossed.
pub const MIN_FREE_BYTES_DEFAULT: u64 = 256 << 20;

/// `[retention]`: both limits optional; absent keeps everything.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Bytes of segment files per partition above which the oldest whole segments go.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// A segment goes once its newest record is older than this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
}

impl RetentionSettings {
    /// Retention removes whole segments and never the newest, so a limit below two
    /// segments could never be met by removing one: it is refused, naming the key.
    pub fn validate(&self, segment_size_bytes: u64) -> Result<(), ConfigError> {
        if let Some(max) = self.max_bytes {
            let least = segment_size_bytes.saturating_mul(2);
            if max < least {
                let reason = format!(
                    "{max} is less than {least}, two segments of wal.segment_size_bytes ({segment_size_bytes}): retention removes whole segments and never the newest one"
                );
                return Err(invalid("retention.max_bytes", reason));
            }
        }
        if self.max_age_ms == Some(0) {
            return Err(invalid(
                "retention.max_age_ms",
                "must be at least 1 (leave it out to keep records whatever their age)",
            ));
        }
        Ok(())
    }

    /// The policy each shard hands its WAL.
    pub fn policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            max_bytes: self.max_bytes,
            max_age_ms: self.max_age_ms,
        }
    }

    /// Whether any limit is set (else the shard never asks the WAL).
    pub fn enabled(&self) -> bool {
        self.max_bytes.is_some() || self.max_age_ms.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::NodeConfig;
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/node.toml");

    fn parsed(extra: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::from_toml(&format!("{EXAMPLE}\n{extra}"), "test.toml")
    }

    fn refused_key(extra: &str) -> String {
        match parsed(extra).unwrap_err() {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("expected an invalid setting, got {other}"),
        }
    }

    #[test]
    fn retention_is_off_unless_configured() {
        let config = parsed("").unwrap();
        assert!(!config.retention.enabled());
        assert_eq!(config.wal.min_free_bytes, MIN_FREE_BYTES_DEFAULT);
    }

    #[test]
    fn retention_limits_are_read_into_the_wal_policy() {
        let config = parsed("[retention]\nmax_bytes = 268435456\nmax_age_ms = 3600000").unwrap();
        assert!(config.retention.enabled());
        assert_eq!(
            config.retention.policy(),
            RetentionPolicy {
                max_bytes: Some(268_435_456),
                max_age_ms: Some(3_600_000),
            }
        );
        let reparsed = NodeConfig::from_toml(&config.to_toml(), "round trip").unwrap();
        assert_eq!(reparsed, config);
    }

    #[test]
    fn a_byte_limit_under_two_segments_or_a_zero_age_is_refused() {
        // The example's segments are 64 MiB: 128 MiB is the least.
        assert_eq!(
            refused_key("[retention]\nmax_bytes = 134217727"),
            "retention.max_bytes"
        );
        assert_eq!(
            refused_key("[retention]\nmax_bytes = 0"),
            "retention.max_bytes"
        );
        assert!(parsed("[retention]\nmax_bytes = 134217728").is_ok());
        assert_eq!(
            refused_key("[retention]\nmax_age_ms = 0"),
            "retention.max_age_ms"
        );
        let error = parsed("[retention]\nmax_bytes = 1000").unwrap_err();
        assert!(error.to_string().contains("whole segments"), "{error}");
    }

    #[test]
    fn garbage_and_unknown_keys_are_refused_naming_them() {
        for (extra, named) in [
            ("[retention]\nmax_bytes = \"lots\"", "max_bytes"),
            ("[retention]\nmax_age_ms = -5", "max_age_ms"),
            ("[retention]\nmax_records = 5", "max_records"),
        ] {
            let error = parsed(extra).unwrap_err().to_string();
            assert!(error.contains(named), "{extra}: {error}");
        }
    }
}
