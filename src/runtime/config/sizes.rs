//! What a record and a message must fit in, whatever section sets them: the client
//! and peer frames that carry them, and the WAL buffer of the follower that takes them.

use bytes::Bytes;

use super::wal::WAL_BUFFER_BYTES;
use super::{ConfigError, NodeConfig, invalid};
use crate::engine::{ENTRY_OVERHEAD_BYTES, Entry, EntryKind, Message, MessageBody};
use crate::runtime::reads::{READ_ANSWER_HEADER_BYTES, READ_RECORD_OVERHEAD_BYTES};
use crate::transport::client_msg::request_body_bytes;
use crate::transport::frame::FRAME_HEADER_BYTES;
use crate::transport::peer::PeerConfig;
use crate::transport::peer_msg::message_frame_bytes;
use crate::transport::{AppendRequest, ClientRequest};
use crate::wal::format::RECORD_HEADER_BYTES;

/// The WAL charges a record its payload plus two record headers (one for the record,
/// one for the end of a block it may skip), which is at most this many times the
/// record's `Entry::size_bytes` (its payload plus 24), the measure peers are held to.
pub(super) const WAL_COST_PER_ENTRY_SIZE: u64 =
    2 * RECORD_HEADER_BYTES as u64 / ENTRY_OVERHEAD_BYTES;
const _: () =
    assert!(WAL_COST_PER_ENTRY_SIZE * ENTRY_OVERHEAD_BYTES == 2 * RECORD_HEADER_BYTES as u64);
/// The most bytes of entries (summed `Entry::size_bytes`) one received AppendEntries
/// may carry: however small its entries, the WAL charges them at most half its
/// buffer, the margin the shard also keeps for a client's batch, so that one always
/// fits once earlier appends are flushed. A follower refuses more (2 MiB), and a
/// leader's settings must keep what it sends within it.
pub const RECEIVED_ENTRIES_BYTES_MAX: u64 = WAL_BUFFER_BYTES / 2 / WAL_COST_PER_ENTRY_SIZE;

/// The peer frame limit: not a setting, the same on every node.
pub(super) fn peer_frame_body_bytes_max() -> u64 {
    u64::from(PeerConfig::new(0, 0).frame_body_bytes_max)
}

/// Body bytes of an AppendEntries frame carrying `entries` empty entries, counted
/// by the transport itself.
pub(super) fn append_entries_body_bytes(entries: usize) -> u64 {
    let entry = |index| Entry {
        term: 1,
        index,
        kind: EntryKind::Record,
        payload: Bytes::new(),
    };
    let message = Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::AppendEntries {
            prev_log_index: 0,
            prev_log_term: 0,
            entries: (1..=entries as u64).map(entry).collect(),
            leader_commit: 0,
        },
    };
    (message_frame_bytes(&message) - FRAME_HEADER_BYTES) as u64
}

/// Body bytes of an Append request carrying one empty record.
fn append_request_overhead_bytes() -> u64 {
    let request = ClientRequest::Append(AppendRequest {
        partition: 0,
        records: vec![Bytes::new()],
    });
    request_body_bytes(&request) as u64
}

impl NodeConfig {
    /// A record of `wal.record_size_bytes_max` must travel whole everywhere a record
    /// goes: in an Append request, in a read answer (which then holds it alone), in
    /// an AppendEntries to followers, and into a follower's WAL buffer.
    pub(super) fn validate_record_size(&self) -> Result<(), ConfigError> {
        let record = self.wal.record_size_bytes_max;
        let client_frame = u64::from(self.clients.frame_body_bytes_max);
        let carriers = [
            (
                "an Append request",
                append_request_overhead_bytes(),
                format!("clients.frame_body_bytes_max ({client_frame})"),
                client_frame,
            ),
            (
                "a read answer",
                (READ_ANSWER_HEADER_BYTES + READ_RECORD_OVERHEAD_BYTES) as u64,
                format!("clients.frame_body_bytes_max ({client_frame})"),
                client_frame,
            ),
            (
                "an AppendEntries",
                append_entries_body_bytes(1),
                format!(
                    "the peer frame limit ({}, not a setting)",
                    peer_frame_body_bytes_max()
                ),
                peer_frame_body_bytes_max(),
            ),
            (
                "one AppendEntries a follower's WAL takes",
                ENTRY_OVERHEAD_BYTES,
                format!(
                    "{RECEIVED_ENTRIES_BYTES_MAX} bytes of entries, what a WAL buffer of {WAL_BUFFER_BYTES} bytes (not a setting) always takes"
                ),
                RECEIVED_ENTRIES_BYTES_MAX,
            ),
        ];
        for (carrier, overhead, limit_name, limit) in carriers {
            if record.saturating_add(overhead) > limit {
                let reason = format!(
                    "{record} is more than {}, the largest record {carrier} can carry within {limit_name}",
                    limit.saturating_sub(overhead)
                );
                return Err(invalid("wal.record_size_bytes_max", reason));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::config::WalSettings;
    use crate::runtime::config::test_support::*;

    #[test]
    fn the_record_limit_is_a_setting_wired_into_the_wal_and_the_engine() {
        let config = NodeConfig::from_toml(EXAMPLE, "examples/node.toml").unwrap();
        assert_eq!(config.wal.record_size_bytes_max, 1 << 20);
        let without = EXAMPLE.replacen(RECORD, "", 1);
        let omitted = NodeConfig::from_toml(&without, "test.toml").unwrap();
        assert_eq!(omitted.wal, WalSettings::default());
        let config = with(RECORD, "record_size_bytes_max = 2000000").unwrap();
        assert_eq!(config.wal_config().record_size_bytes_max, 2_000_000);
        let engine = config.shard_engine_config().unwrap();
        assert_eq!(engine.entry_payload_bytes_max, 2_000_000);
    }

    #[test]
    fn a_record_limit_that_something_cannot_carry_is_refused() {
        let zero = refusal(&[(RECORD, "record_size_bytes_max = 0")]);
        assert_eq!(zero.0, "wal.record_size_bytes_max");
        // With a 1 MiB client frame, an Append of one record has 12 bytes of framing
        // and a read answer 36.
        let small_frame = [
            (CLIENT_FRAME, "frame_body_bytes_max = 1048576"),
            (READ_BYTES, "bytes_max = 1048576"),
        ];
        let mut edits = small_frame.to_vec();
        edits.push((RECORD, "record_size_bytes_max = 1048565"));
        let (key, reason) = refusal(&edits);
        assert_eq!(key, "wal.record_size_bytes_max");
        assert!(reason.contains("an Append request"), "{reason}");
        assert!(reason.contains("1048564"), "{reason}");
        edits.pop();
        edits.push((RECORD, "record_size_bytes_max = 1048556"));
        let (key, reason) = refusal(&edits);
        assert_eq!(key, "wal.record_size_bytes_max");
        assert!(reason.contains("a read answer"), "{reason}");
        edits.pop();
        edits.push((RECORD, "record_size_bytes_max = 1048540"));
        let fits = NodeConfig::from_toml(&edited(&edits), "test.toml");
        assert!(fits.is_ok(), "{fits:?}");
        // A larger client frame lets the peer frame limit (8 MiB) and then the
        // follower's WAL buffer bind.
        let (key, reason) = refusal(&[
            (CLIENT_FRAME, "frame_body_bytes_max = 16777216"),
            (RECORD, "record_size_bytes_max = 9437184"),
        ]);
        assert_eq!(key, "wal.record_size_bytes_max");
        assert!(reason.contains("peer frame limit"), "{reason}");
        let (key, reason) = refusal(&[(RECORD, "record_size_bytes_max = 3145728")]);
        assert_eq!(key, "wal.record_size_bytes_max");
        assert!(reason.contains("WAL"), "{reason}");
    }
}
