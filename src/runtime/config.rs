//! A node's configuration: read from TOML, overridden by flags, validated as a whole.
//! Every key is documented in `docs/configuration.md`; `examples/node.toml` shows one.
//! Errors name the key and the reason, so an operator never has to guess.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use bytes::Bytes;

use super::reads::{READ_ANSWER_HEADER_BYTES, READ_RECORD_OVERHEAD_BYTES};
use super::retention::{MIN_FREE_BYTES_DEFAULT, RetentionSettings};
use super::router::nodes_in_words;
use crate::engine::{self, ENTRY_OVERHEAD_BYTES, Entry, EntryKind, Message, MessageBody, NodeId};
use crate::transport::client_msg::request_body_bytes;
use crate::transport::frame::{FRAME_BODY_BYTES_MAX_DEFAULT, FRAME_HEADER_BYTES};
use crate::transport::peer::PeerConfig;
use crate::transport::peer_msg::message_frame_bytes;
use crate::transport::server::ServerConfig;
use crate::transport::{AppendRequest, ClientRequest};
use crate::wal::config::{
    BUFFERED_BYTES_MAX_DEFAULT, RECORD_SIZE_BYTES_MAX_DEFAULT, WalConfig,
    segment_size_bytes_min_for,
};
use crate::wal::format::RECORD_HEADER_BYTES;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("config file {path} is not valid: {reason}")]
    Syntax { path: String, reason: String },
    #[error("invalid setting `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

pub(super) fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Whether an acknowledged record must be on disk.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fdatasync before acknowledging: the durability promise holds.
    #[default]
    Always,
    /// Never sync: for benchmarks only; a crash can lose acknowledged records.
    Never,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub cluster_id: u64,
    pub data_dir: PathBuf,
    /// Shards (partitions) per node; 0 means one per available core.
    #[serde(default)]
    pub shards: u32,
    /// Pin each shard's executor to its own core.
    #[serde(default)]
    pub pin: bool,
    pub listen: Listen,
    /// Every member of the cluster, this node included.
    pub nodes: Vec<Member>,
    #[serde(default)]
    pub wal: WalSettings,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(default)]
    pub reads: ReadSettings,
    #[serde(default)]
    pub clients: ClientSettings,
    /// When a partition's oldest segments are removed (`retention.rs`).
    #[serde(default)]
    pub retention: RetentionSettings,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub metrics: SocketAddr,
}

/// How other nodes and clients reach a member.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub node_id: NodeId,
    pub peer_address: String,
    pub client_address: String,
}

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
        }
    }
}

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
    fn validate(&self) -> Result<(), ConfigError> {
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
    fn validate(&self) -> Result<(), ConfigError> {
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

/// The most shards a node may run: more would exceed any machine's cores and make
/// per-partition memory (windows, buffers) add up past reason.
pub const SHARDS_MAX: u32 = 256;
/// Segments are written in whole 4 KiB blocks and must hold a few large batches.
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 1 << 20;
/// The largest segment: a segment's header records its size in 32 bits.
pub const SEGMENT_SIZE_BYTES_MAX: u64 = u32::MAX as u64 / BLOCK_BYTES * BLOCK_BYTES;
const BLOCK_BYTES: u64 = crate::wal::storage::DMA_BLOCK_BYTES as u64;
/// Bytes of appends a shard's WAL buffers before a flush. Not a setting: the checks
/// below compare settings with it.
pub const WAL_BUFFER_BYTES: u64 = BUFFERED_BYTES_MAX_DEFAULT as u64;
/// The WAL charges a record its payload plus two record headers (one for the record,
/// one for the end of a block it may skip), which is at most this many times the
/// record's `Entry::size_bytes` (its payload plus 24), the measure peers are held to.
const WAL_COST_PER_ENTRY_SIZE: u64 = 2 * RECORD_HEADER_BYTES as u64 / ENTRY_OVERHEAD_BYTES;
const _: () =
    assert!(WAL_COST_PER_ENTRY_SIZE * ENTRY_OVERHEAD_BYTES == 2 * RECORD_HEADER_BYTES as u64);
/// The most bytes of entries (summed `Entry::size_bytes`) one received AppendEntries
/// may carry: however small its entries, the WAL charges them at most half its
/// buffer, the margin the shard also keeps for a client's batch, so that one always
/// fits once earlier appends are flushed. A follower refuses more (2 MiB), and a
/// leader's settings must keep what it sends within it.
pub const RECEIVED_ENTRIES_BYTES_MAX: u64 = WAL_BUFFER_BYTES / 2 / WAL_COST_PER_ENTRY_SIZE;

/// The peer frame limit: not a setting, the same on every node.
fn peer_frame_body_bytes_max() -> u64 {
    u64::from(PeerConfig::new(0, 0).frame_body_bytes_max)
}

/// Body bytes of an AppendEntries frame carrying `entries` empty entries, counted
/// by the transport itself.
fn append_entries_body_bytes(entries: usize) -> u64 {
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
    pub fn from_file(path: &std::path::Path) -> Result<NodeConfig, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        NodeConfig::from_toml(&text, &shown)
    }

    /// Parses and validates; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_string(),
            reason: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_members()?;
        if self.shards > SHARDS_MAX {
            return Err(invalid(
                "shards",
                format!("{} is more than {SHARDS_MAX}", self.shards),
            ));
        }
        self.validate_wal()?;
        self.retention.validate(self.wal.segment_size_bytes)?;
        self.reads.validate()?;
        self.clients.validate()?;
        let frame = self.clients.frame_body_bytes_max;
        if self.reads.bytes_max > frame {
            let reason = format!(
                "{} is more than clients.frame_body_bytes_max ({frame} bytes), the largest answer a client takes; lower it with the frame limit",
                self.reads.bytes_max
            );
            return Err(invalid("reads.bytes_max", reason));
        }
        self.validate_record_size()?;
        self.engine_config()?;
        self.validate_messages()?;
        // Every rule of the WAL is checked above under the name of its setting; this
        // is a net for a rule added to the WAL and not here, so that it still stops
        // the node now rather than when a shard opens its log.
        self.wal_config()
            .validate(BLOCK_BYTES as usize)
            .map_err(|reason| invalid("wal", reason))
    }

    /// The `[wal]` rules the WAL itself applies when a shard opens its log.
    fn validate_wal(&self) -> Result<(), ConfigError> {
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

    /// A record of `wal.record_size_bytes_max` must travel whole everywhere a record
    /// goes: in an Append request, in a read answer (which then holds it alone), in
    /// an AppendEntries to followers, and into a follower's WAL buffer.
    fn validate_record_size(&self) -> Result<(), ConfigError> {
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

    /// The leader's AppendEntries must fit the peer frame limit and what followers
    /// accept, or they are refused at every retry and followers never catch up.
    fn validate_messages(&self) -> Result<(), ConfigError> {
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

    fn validate_members(&self) -> Result<(), ConfigError> {
        let ids: Vec<NodeId> = self.nodes.iter().map(|m| m.node_id).collect();
        if !ids.contains(&self.node_id) {
            let reason = format!(
                "{} is not among the members in [[nodes]] ({})",
                self.node_id,
                nodes_in_words(&ids)
            );
            return Err(invalid("node_id", reason));
        }
        for (k, id) in ids.iter().enumerate() {
            if ids[..k].contains(id) {
                return Err(invalid("nodes", format!("node id {id} appears twice")));
            }
        }
        for member in &self.nodes {
            for (key, address) in [
                ("peer_address", &member.peer_address),
                ("client_address", &member.client_address),
            ] {
                if !address.contains(':')
                    || address
                        .rsplit(':')
                        .next()
                        .is_none_or(|p| p.parse::<u16>().is_err())
                {
                    let reason = format!("{address:?} of node {} is not HOST:PORT", member.node_id);
                    return Err(invalid(&format!("nodes.{key}"), reason));
                }
            }
        }
        Ok(())
    }

    /// The engine's settings, with times converted to ticks.
    pub fn engine_config(&self) -> Result<engine::Config, ConfigError> {
        let raft = &self.raft;
        if raft.tick_ms == 0 {
            return Err(invalid("raft.tick_ms", "must be at least 1"));
        }
        let ticks = |key: &str, ms: u64| -> Result<u32, ConfigError> {
            if !ms.is_multiple_of(raft.tick_ms) {
                return Err(invalid(
                    key,
                    format!("{ms} is not a multiple of raft.tick_ms ({})", raft.tick_ms),
                ));
            }
            u32::try_from(ms / raft.tick_ms).map_err(|_| invalid(key, "too large"))
        };
        let (heartbeat, min, max) = (
            raft.heartbeat_interval_ms,
            raft.election_timeout_min_ms,
            raft.election_timeout_max_ms,
        );
        if heartbeat < raft.tick_ms {
            let reason = format!(
                "{heartbeat} is shorter than raft.tick_ms ({})",
                raft.tick_ms
            );
            return Err(invalid("raft.heartbeat_interval_ms", reason));
        }
        if min <= heartbeat {
            let reason = format!(
                "{min} must be larger than raft.heartbeat_interval_ms ({heartbeat}), or followers campaign between heartbeats"
            );
            return Err(invalid("raft.election_timeout_min_ms", reason));
        }
        if max <= min {
            let reason = format!(
                "{max} must be larger than raft.election_timeout_min_ms ({min}), so timeouts can be randomized"
            );
            return Err(invalid("raft.election_timeout_max_ms", reason));
        }
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

    /// The config as TOML that [`NodeConfig::from_toml`] reads back unchanged.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a node config always serializes")
    }

    /// Member ids of the cluster, for the engine.
    pub fn member_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|m| m.node_id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/node.toml");

    fn key_of(error: ConfigError) -> String {
        match error {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("expected an invalid setting, got {other}"),
        }
    }

    fn with(line_from: &str, line_to: &str) -> Result<NodeConfig, ConfigError> {
        assert!(EXAMPLE.contains(line_from), "example lacks {line_from:?}");
        NodeConfig::from_toml(&EXAMPLE.replacen(line_from, line_to, 1), "test.toml")
    }

    #[test]
    fn example_file_is_valid_and_converts_to_ticks() {
        let config =
            NodeConfig::from_toml(EXAMPLE, "examples/node.toml").expect("example is valid");
        assert_eq!(config.member_ids(), vec![1, 2, 3]);
        let engine = config.engine_config().unwrap();
        assert_eq!(engine.heartbeat_interval_ticks, 5);
        assert_eq!(engine.election_timeout_min_ticks, 30);
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            key_of(with("node_id = 1", "node_id = 9").unwrap_err()),
            "node_id"
        );
        assert_eq!(
            key_of(with("heartbeat_interval_ms = 50", "heartbeat_interval_ms = 300").unwrap_err()),
            "raft.election_timeout_min_ms"
        );
        assert_eq!(
            key_of(with("heartbeat_interval_ms = 50", "heartbeat_interval_ms = 55").unwrap_err()),
            "raft.heartbeat_interval_ms"
        );
        assert_eq!(
            key_of(with("segment_size_bytes = 67108864", "segment_size_bytes = 1000").unwrap_err()),
            "wal.segment_size_bytes"
        );
        assert_eq!(
            key_of(with("shards = 2", "shards = 1000").unwrap_err()),
            "shards"
        );
        assert_eq!(
            key_of(
                with(
                    "client_address = \"127.0.0.1:7400\"",
                    "client_address = \"nowhere\""
                )
                .unwrap_err()
            ),
            "nodes.client_address"
        );
    }

    #[test]
    fn read_limits_default_and_are_validated() {
        let config = NodeConfig::from_toml(EXAMPLE, "examples/node.toml").unwrap();
        assert_eq!(config.reads, ReadSettings::default());
        let without = EXAMPLE.split("[reads]").next().unwrap();
        let omitted = NodeConfig::from_toml(without, "test.toml").unwrap();
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

    /// The example with `edits`, each replacing a line.
    fn edited(edits: &[(&str, &str)]) -> String {
        let mut text = EXAMPLE.to_string();
        for (from, to) in edits {
            assert!(text.contains(from), "example lacks {from:?}");
            text = text.replacen(from, to, 1);
        }
        text
    }

    /// The key a config with `edits` is refused for, and the reason.
    fn refusal(edits: &[(&str, &str)]) -> (String, String) {
        match NodeConfig::from_toml(&edited(edits), "test.toml") {
            Err(ConfigError::Invalid { key, reason }) => (key, reason),
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    const RECORD: &str = "record_size_bytes_max = 1048576";
    const SEGMENT: &str = "segment_size_bytes = 67108864";
    const FLUSH: &str = "flush_bytes_max = 4194304";
    const CLIENT_FRAME: &str = "frame_body_bytes_max = 8388608";
    const READ_BYTES: &str = "bytes_max = 8257536";
    const MSG_BYTES: &str = "bytes_per_msg_max = 1048576";

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

    #[test]
    fn the_node_id_error_lists_members_in_words() {
        let (key, reason) = refusal(&[("node_id = 1", "node_id = 9")]);
        assert_eq!(key, "node_id");
        assert!(reason.ends_with("(nodes 1, 2 and 3)"), "{reason}");
    }

    #[test]
    fn syntax_errors_and_unknown_keys_are_refused() {
        assert!(matches!(
            with("shards = 2", "shards = \"two\""),
            Err(ConfigError::Syntax { .. })
        ));
        assert!(matches!(
            with("shards = 2", "shards = 2\nshardz = 3"),
            Err(ConfigError::Syntax { .. })
        ));
        assert!(matches!(
            with("fsync = \"always\"", "fsync = \"sometimes\""),
            Err(ConfigError::Syntax { .. })
        ));
        assert!(matches!(
            with("waiting_max = 4096", "waiting_max = 4096\nwait_max = 5"),
            Err(ConfigError::Syntax { .. })
        ));
        let missing = NodeConfig::from_toml("node_id = 1", "x.toml").unwrap_err();
        assert!(missing.to_string().contains("missing field"), "{missing}");
    }
}
