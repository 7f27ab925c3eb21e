//! `[wal]`: a shard's write-ahead log.

use serde::{Deserialize, Serialize};

use super::{ConfigError, FsyncPolicy, NodeConfig, invalid};
use crate::runtime::retention::MIN_FREE_BYTES_DEFAULT;
use crate::wal::config::{
    BUFFERED_BYTES_MAX_DEFAULT, RECORD_SIZE_BYTES_MAX_DEFAULT, WalConfig,
    segment_size_bytes_min_for,
};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WalSettings {
    pub segment_size_bytes: u64,
    /// Largest payload of one record: a client append carrying a larger one is
    /// refused, and a peer sending one is treated as misbehaving.
    pub record_size_bytes_max: u64,
    pub fsync: FsyncPolicy,
    /// One flush writes at most this many bytes.
    pub flush_bytes_max: u64,
    /// At most this many flushes in flight at once.
    pub flushes_inflight_max: u32,
    /// With `fsync = "always"`: open segments with O_DSYNC so that each write is
    /// durable when it completes, instead of following the writes with fdatasync.
    pub write_through: bool,
    /// Start even though a segment is corrupt, cutting the log before the damage
    /// (`ringlog serve --truncate-corrupt-tail`). Never read from a config file: a
    /// node must not cut its log silently on every restart.
    #[serde(skip)]
    pub truncate_corrupt_tail: bool,
    /// Below this many free bytes on the data directory's filesystem the node
    /// refuses appends (`DiskLow`); 0 disables the check.
    pub min_free_bytes: u64,
    /// At most this many segment files of one partition open at once (the one being
    /// written included); older segments are opened on demand for reads.
    pub open_segments_max: u32,
}

impl Default for WalSettings {
    fn default() -> WalSettings {
        WalSettings {
            segment_size_bytes: 64 << 20,
            record_size_bytes_max: RECORD_SIZE_BYTES_MAX_DEFAULT as u64,
            fsync: FsyncPolicy::Always,
            flush_bytes_max: 4 << 20,
            flushes_inflight_max: 2,
            write_through: true,
            truncate_corrupt_tail: false,
            min_free_bytes: MIN_FREE_BYTES_DEFAULT,
            open_segments_max: crate::wal::OPEN_SEGMENTS_MAX_DEFAULT as u32,
        }
    }
}

/// Segments are written in whole 4 KiB blocks and must hold a few large batches.
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 1 << 20;
/// The largest segment: a segment's header records its size in 32 bits.
pub const SEGMENT_SIZE_BYTES_MAX: u64 = u32::MAX as u64 / BLOCK_BYTES * BLOCK_BYTES;
pub(super) const BLOCK_BYTES: u64 = crate::wal::storage::DMA_BLOCK_BYTES as u64;
/// Bytes of appends a shard's WAL buffers before a flush. Not a setting: the checks
/// of the settings compare them with it.
pub const WAL_BUFFER_BYTES: u64 = BUFFERED_BYTES_MAX_DEFAULT as u64;

impl NodeConfig {
    /// The `[wal]` rules the WAL itself applies when a shard opens its log.
    pub(super) fn validate_wal(&self) -> Result<(), ConfigError> {
        let wal = &self.wal;
        let segment = wal.segment_size_bytes;
        if !(SEGMENT_SIZE_BYTES_MIN..=SEGMENT_SIZE_BYTES_MAX).contains(&segment)
            || !segment.is_multiple_of(BLOCK_BYTES)
        {
            return Err(invalid(
                "wal.segment_size_bytes",
                format!(
                    "{segment} must be a multiple of {BLOCK_BYTES} from {SEGMENT_SIZE_BYTES_MIN} to {SEGMENT_SIZE_BYTES_MAX}"
                ),
            ));
        }
        let record = wal.record_size_bytes_max;
        if record == 0 {
            return Err(invalid("wal.record_size_bytes_max", "must be at least 1"));
        }
        let needed = segment_size_bytes_min_for(record, BLOCK_BYTES);
        if segment < needed {
            let reason = format!(
                "{segment} cannot hold the largest record: wal.record_size_bytes_max ({record}) with the WAL's header block, record header and block padding needs {needed}"
            );
            return Err(invalid("wal.segment_size_bytes", reason));
        }
        let flush = wal.flush_bytes_max;
        if flush < 2 * BLOCK_BYTES || !flush.is_multiple_of(BLOCK_BYTES) {
            let reason = format!(
                "{flush} must be a multiple of {BLOCK_BYTES} and at least {}",
                2 * BLOCK_BYTES
            );
            return Err(invalid("wal.flush_bytes_max", reason));
        }
        if flush > segment {
            let reason = format!("{flush} is more than wal.segment_size_bytes ({segment})");
            return Err(invalid("wal.flush_bytes_max", reason));
        }
        if flush > WAL_BUFFER_BYTES {
            let reason = format!(
                "{flush} is more than the WAL's buffer ({WAL_BUFFER_BYTES} bytes, not a setting), which one flush writes from"
            );
            return Err(invalid("wal.flush_bytes_max", reason));
        }
        if wal.flushes_inflight_max == 0 {
            return Err(invalid("wal.flushes_inflight_max", "must be at least 1"));
        }
        if wal.open_segments_max < 2 {
            let reason = "must be at least 2: the segment being written and one to read";
            return Err(invalid("wal.open_segments_max", reason));
        }
        Ok(())
    }

    /// One shard's WAL settings.
    pub fn wal_config(&self) -> WalConfig {
        let wal = &self.wal;
        WalConfig {
            segment_size_bytes: wal.segment_size_bytes,
            record_size_bytes_max: wal.record_size_bytes_max as usize,
            flush_bytes_max: wal.flush_bytes_max as usize,
            buffered_bytes_max: WAL_BUFFER_BYTES as usize,
            flushes_in_flight_max: wal.flushes_inflight_max as usize,
            fsync_disabled: wal.fsync == FsyncPolicy::Never,
            truncate_corrupt_tail: wal.truncate_corrupt_tail,
            open_segments_max: wal.open_segments_max as usize,
            ..WalConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::config::test_support::*;

    #[test]
    fn a_segment_too_small_or_too_large_for_the_wal_is_refused() {
        let small_flush = (FLUSH, "flush_bytes_max = 1048576");
        // 1 MiB is the general minimum, but a 1 MiB record with its headers and
        // block padding needs more.
        let (key, reason) = refusal(&[small_flush, (SEGMENT, "segment_size_bytes = 1048576")]);
        assert_eq!(key, "wal.segment_size_bytes");
        assert!(reason.contains("wal.record_size_bytes_max"), "{reason}");
        let needed = segment_size_bytes_min_for(1 << 20, BLOCK_BYTES).next_multiple_of(BLOCK_BYTES);
        let line = format!("segment_size_bytes = {needed}");
        let text = edited(&[small_flush, (SEGMENT, &line)]);
        let config = NodeConfig::from_toml(&text, "test.toml").unwrap();
        assert_eq!(config.wal_config().validate(BLOCK_BYTES as usize), Ok(()));
        let line = format!("segment_size_bytes = {}", needed - BLOCK_BYTES);
        let (key, _) = refusal(&[small_flush, (SEGMENT, &line)]);
        assert_eq!(key, "wal.segment_size_bytes");
        // Smaller records allow the smallest segment.
        let text = edited(&[
            small_flush,
            (SEGMENT, "segment_size_bytes = 1048576"),
            (RECORD, "record_size_bytes_max = 65536"),
        ]);
        let config = NodeConfig::from_toml(&text, "test.toml").unwrap();
        assert_eq!(config.wal_config().validate(BLOCK_BYTES as usize), Ok(()));
        // A segment's header records its size in 32 bits.
        let (key, _) = refusal(&[(SEGMENT, "segment_size_bytes = 8589934592")]);
        assert_eq!(key, "wal.segment_size_bytes");
    }

    #[test]
    fn a_flush_size_the_wal_cannot_use_is_refused() {
        for line in [
            "flush_bytes_max = 5000",
            "flush_bytes_max = 4096",
            "flush_bytes_max = 33554432",
        ] {
            let (key, reason) = refusal(&[(FLUSH, line)]);
            assert_eq!(key, "wal.flush_bytes_max", "{line}: {reason}");
        }
        let (_, reason) = refusal(&[(FLUSH, "flush_bytes_max = 33554432")]);
        assert!(reason.contains("buffer"), "{reason}");
        let most = format!("flush_bytes_max = {WAL_BUFFER_BYTES}");
        let config = with(FLUSH, &most).unwrap();
        assert_eq!(config.wal_config().validate(BLOCK_BYTES as usize), Ok(()));
    }
}
