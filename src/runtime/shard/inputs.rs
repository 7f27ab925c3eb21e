//! Client inputs the shard admits before the engine sees them.

use bytes::Bytes;

use super::Shard;
use crate::transport::{PartitionInfo, ServerError};

/// What one record costs in the WAL's buffer beyond its payload (its header, and
/// the end of a block it may skip), as the WAL counts it.
const WAL_RECORD_COST_BYTES: usize = 2 * crate::wal::format::RECORD_HEADER_BYTES;

impl Shard {
    /// Refuses, before anything is appended, a batch the WAL could never take: a
    /// record over its size limit, or a batch larger than half its buffer (so that
    /// one batch always fits once earlier ones are flushed).
    pub(super) fn check_batch(&self, records: &[Bytes]) -> Result<(), ServerError> {
        let config = &self.wal_limits;
        if let Some(big) = records
            .iter()
            .find(|r| r.len() > config.record_size_bytes_max)
        {
            return Err(ServerError::InvalidRequest {
                reason: format!(
                    "a record of {} bytes exceeds the limit of {} bytes",
                    big.len(),
                    config.record_size_bytes_max
                ),
            });
        }
        let cost: usize = records
            .iter()
            .map(|r| r.len() + WAL_RECORD_COST_BYTES)
            .sum();
        if cost > config.buffered_bytes_max / 2 {
            return Err(ServerError::InvalidRequest {
                reason: format!(
                    "a batch of {} records costs {cost} bytes in the log, more than {}; send smaller batches",
                    records.len(),
                    config.buffered_bytes_max / 2
                ),
            });
        }
        Ok(())
    }

    pub(super) fn next_request(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    pub(super) fn info(&self) -> PartitionInfo {
        PartitionInfo {
            partition: self.id,
            leader: self.leader,
            term: self.term,
            commit_index: self.commit,
            last_index: self.engine.log().last_index(),
            log_start: self.engine.read_start(),
        }
    }
}
