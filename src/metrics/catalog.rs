//! Every metric a node exports: name, kind, unit and help text, in one table, so
//! that descriptions, the docs and the dashboard test all read the same list.

use metrics::Unit;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Clone, Copy, Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    /// The labels each series has (beyond the node-wide `node`).
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn def(
    name: &'static str,
    kind: Kind,
    unit: Option<Unit>,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind,
        unit,
        labels,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

const P: &[&str] = &["partition"];
const PP: &[&str] = &["partition", "peer"];
const PPR: &[&str] = &["partition", "peer", "reason"];
const NONE: &[&str] = &[];
const PK: &[&str] = &["partition", "kind"];
const PRO: &[&str] = &["partition", "reason", "outcome"];

pub const BUILD_INFO: &str = "ringlog_build_info";
pub const CLIENT_CONNECTIONS: &str = "ringlog_client_connections";
pub const CLIENT_CONNECTIONS_ACCEPTED: &str = "ringlog_client_connections_accepted_total";
pub const CLIENT_CONNECTIONS_REFUSED: &str = "ringlog_client_connections_refused_total";
pub const CLIENT_CONNECTIONS_FAILED: &str = "ringlog_client_connections_failed_total";
pub const CLIENT_RECEIVED_BYTES: &str = "ringlog_client_received_bytes_total";
pub const CLIENT_REQUESTS: &str = "ringlog_client_requests_total";
pub const CLIENT_REQUEST_SECONDS: &str = "ringlog_client_request_duration_seconds";
pub const PEER_CONNECTIONS: &str = "ringlog_peer_connections";
pub const CONNECTIONS_SERVED: &str = "ringlog_connections_served_total";
pub const PEER_HANDSHAKES_REFUSED: &str = "ringlog_peer_handshakes_refused_total";
pub const PEER_MESSAGES_REFUSED: &str = "ringlog_peer_messages_refused_total";
pub const TLS_HANDSHAKES_FAILED: &str = "ringlog_tls_handshakes_failed_total";
pub const TLS_RELOADS: &str = "ringlog_tls_reloads_total";
pub const CLIENT_REQUESTS_UNAUTHORIZED: &str = "ringlog_client_requests_unauthorized_total";
pub const APPEND_RECORDS: &str = "ringlog_append_records_total";
pub const APPEND_BYTES: &str = "ringlog_append_bytes_total";
pub const COMMIT_LATENCY: &str = "ringlog_commit_latency_seconds";
pub const WAL_FSYNC_SECONDS: &str = "ringlog_wal_fsync_duration_seconds";
pub const WAL_BATCH_RECORDS: &str = "ringlog_wal_batch_records";
pub const WAL_BATCH_BYTES: &str = "ringlog_wal_batch_bytes";
pub const WAL_WRITTEN_BYTES: &str = "ringlog_wal_written_bytes_total";
pub const WAL_FLUSHES: &str = "ringlog_wal_flushes_total";
pub const RAFT_TERM: &str = "ringlog_raft_term";
pub const RAFT_ROLE: &str = "ringlog_raft_role";
pub const RAFT_HAS_LEADER: &str = "ringlog_raft_has_leader";
pub const RAFT_COMMIT_INDEX: &str = "ringlog_raft_commit_index";
pub const RAFT_LAST_INDEX: &str = "ringlog_raft_last_index";
pub const RAFT_LOG_START_INDEX: &str = "ringlog_raft_log_start_index";
pub const RAFT_VOTERS: &str = "ringlog_raft_voters";
pub const RAFT_LEARNERS: &str = "ringlog_raft_learners";
pub const RAFT_MEMBERSHIP_INDEX: &str = "ringlog_raft_membership_index";
pub const RAFT_ELECTIONS: &str = "ringlog_raft_elections_total";
pub const RAFT_LEADER_CHANGES: &str = "ringlog_raft_leader_changes_total";
pub const LEADER_TRANSFERS: &str = "ringlog_leader_transfers_total";
pub const REPLICATION_LAG: &str = "ringlog_replication_lag_records";
pub const REPLICATION_INFLIGHT_MESSAGES: &str = "ringlog_replication_inflight_messages";
pub const REPLICATION_INFLIGHT_BYTES: &str = "ringlog_replication_inflight_bytes";
pub const TRANSPORT_SENT_BYTES: &str = "ringlog_transport_sent_bytes_total";
pub const TRANSPORT_RECEIVED_BYTES: &str = "ringlog_transport_received_bytes_total";
pub const TRANSPORT_SENT_MESSAGES: &str = "ringlog_transport_sent_messages_total";
pub const TRANSPORT_DROPPED_MESSAGES: &str = "ringlog_transport_dropped_messages_total";
pub const SHARD_INBOX_DEPTH: &str = "ringlog_shard_inbox_depth";
pub const SHARD_PENDING_APPENDS: &str = "ringlog_shard_pending_appends";
pub const SHARD_INBOX_REFUSED: &str = "ringlog_shard_inbox_refused_total";
pub const PEER_MESSAGES_DROPPED: &str = "ringlog_peer_messages_dropped_total";
pub const WAL_DISK_BYTES: &str = "ringlog_wal_disk_bytes";
pub const WAL_INDEX_MEMORY_BYTES: &str = "ringlog_wal_index_memory_bytes";
pub const RETENTION_SEGMENTS_REMOVED: &str = "ringlog_retention_segments_removed_total";
pub const RETENTION_BYTES_REMOVED: &str = "ringlog_retention_bytes_removed_total";
pub const LOG_RESETS: &str = "ringlog_log_resets_total";
pub const LOG_START_SENT: &str = "ringlog_log_start_sent_total";
pub const TRIMS: &str = "ringlog_trims_total";
pub const DISK_FREE_BYTES: &str = "ringlog_disk_free_bytes";
pub const DISK_LOW: &str = "ringlog_disk_low";
pub const APPENDS_REFUSED: &str = "ringlog_appends_refused_total";

/// The whole set. Histograms get buckets by unit (see `mod.rs`).
pub const METRICS: &[MetricDef] = &[
    def(
        BUILD_INFO,
        Gauge,
        None,
        &["version"],
        "Always 1; the version label says which ringlog build runs.",
    ),
    def(
        CLIENT_CONNECTIONS,
        Gauge,
        Some(Unit::Count),
        NONE,
        "Client connections open now.",
    ),
    def(
        CLIENT_CONNECTIONS_ACCEPTED,
        Counter,
        Some(Unit::Count),
        NONE,
        "Client connections accepted.",
    ),
    def(
        CLIENT_CONNECTIONS_REFUSED,
        Counter,
        Some(Unit::Count),
        NONE,
        "Client connections refused because the connection limit was reached.",
    ),
    def(
        CLIENT_CONNECTIONS_FAILED,
        Counter,
        Some(Unit::Count),
        NONE,
        "Client connections closed because the client broke the protocol or timed out.",
    ),
    def(
        CLIENT_RECEIVED_BYTES,
        Counter,
        Some(Unit::Bytes),
        NONE,
        "Bytes received from clients.",
    ),
    def(
        CLIENT_REQUESTS,
        Counter,
        Some(Unit::Count),
        &["op", "result"],
        "Client requests answered, by operation (append, read, metadata, trim, transfer, members: a listing, membership: a change) and result (ok or the error code).",
    ),
    def(
        CLIENT_REQUEST_SECONDS,
        Histogram,
        Some(Unit::Seconds),
        &["op"],
        "Time from a request's arrival to its answer, by operation, whatever the result.",
    ),
    def(
        PEER_CONNECTIONS,
        Gauge,
        Some(Unit::Count),
        NONE,
        "Inbound peer connections open now (two lanes per peer and shard).",
    ),
    def(
        CONNECTIONS_SERVED,
        Counter,
        Some(Unit::Count),
        PK,
        "Connections the shard of this partition began serving; kind: client or peer.",
    ),
    def(
        PEER_HANDSHAKES_REFUSED,
        Counter,
        Some(Unit::Count),
        NONE,
        "Inbound peer connections refused at the handshake (wrong cluster, node or shard, or a certificate that does not name the node the peer claims to be).",
    ),
    def(
        TLS_HANDSHAKES_FAILED,
        Counter,
        Some(Unit::Count),
        &["port"],
        "Connections closed because their TLS handshake failed (plaintext on a TLS port, a certificate of another CA, expired or missing, a handshake past its timeout). `port`: `client` or `peer`.",
    ),
    def(
        TLS_RELOADS,
        Counter,
        Some(Unit::Count),
        &["result"],
        "Reloads of the TLS certificates, key and CA bundle on SIGHUP. `result`: `ok`, or `error` when a file could not be read or used (the previous ones stay in use; the log says why).",
    ),
    def(
        CLIENT_REQUESTS_UNAUTHORIZED,
        Counter,
        Some(Unit::Count),
        NONE,
        "Client requests answered Unauthorized because the client's principal lacks the role they need.",
    ),
    def(
        APPEND_RECORDS,
        Counter,
        Some(Unit::Count),
        P,
        "Records acknowledged to clients (committed on a majority) by this node as leader.",
    ),
    def(
        APPEND_BYTES,
        Counter,
        Some(Unit::Bytes),
        P,
        "Payload bytes of the records counted by ringlog_append_records_total.",
    ),
    def(
        COMMIT_LATENCY,
        Histogram,
        Some(Unit::Seconds),
        P,
        "Time from an append's arrival at the leader to its acknowledgement (on disk on a majority).",
    ),
    def(
        WAL_FSYNC_SECONDS,
        Histogram,
        Some(Unit::Seconds),
        P,
        "Duration of one fdatasync of a WAL segment (write-through: of one flush's durable writes).",
    ),
    def(
        WAL_BATCH_RECORDS,
        Histogram,
        Some(Unit::Count),
        P,
        "Log entries covered by one WAL flush (group commit batch size).",
    ),
    def(
        WAL_BATCH_BYTES,
        Histogram,
        Some(Unit::Bytes),
        P,
        "Payload bytes covered by one WAL flush.",
    ),
    def(
        WAL_WRITTEN_BYTES,
        Counter,
        Some(Unit::Bytes),
        P,
        "Bytes written to WAL segments, headers and padding included.",
    ),
    def(
        WAL_FLUSHES,
        Counter,
        Some(Unit::Count),
        P,
        "WAL flushes completed (group commits: a write round and its syncs, including flushes that only persist the term and vote).",
    ),
    def(
        RAFT_TERM,
        Gauge,
        Some(Unit::Count),
        P,
        "Current Raft term of this node's member of the partition.",
    ),
    def(
        RAFT_ROLE,
        Gauge,
        Some(Unit::Count),
        &["partition", "role"],
        "1 for the role this member has now (follower, pre_candidate, candidate, leader), 0 for the others.",
    ),
    def(
        RAFT_HAS_LEADER,
        Gauge,
        Some(Unit::Count),
        P,
        "1 when this member knows a leader for the current term, else 0.",
    ),
    def(
        RAFT_COMMIT_INDEX,
        Gauge,
        Some(Unit::Count),
        P,
        "Highest log index known committed.",
    ),
    def(
        RAFT_LAST_INDEX,
        Gauge,
        Some(Unit::Count),
        P,
        "Last index in this member's log.",
    ),
    def(
        RAFT_LOG_START_INDEX,
        Gauge,
        Some(Unit::Count),
        P,
        "First index still kept in this member's log (retention).",
    ),
    def(
        RAFT_VOTERS,
        Gauge,
        Some(Unit::Count),
        P,
        "Voters in the membership in force at this member.",
    ),
    def(
        RAFT_LEARNERS,
        Gauge,
        Some(Unit::Count),
        P,
        "Learners (members receiving the log without a vote) in the membership in force at this member.",
    ),
    def(
        RAFT_MEMBERSHIP_INDEX,
        Gauge,
        Some(Unit::Count),
        P,
        "Log index of the configuration entry in force at this member (0: the bootstrap membership).",
    ),
    def(
        RAFT_ELECTIONS,
        Counter,
        Some(Unit::Count),
        P,
        "Elections this member started as a candidate.",
    ),
    def(
        RAFT_LEADER_CHANGES,
        Counter,
        Some(Unit::Count),
        P,
        "Times this member saw the partition's leader change.",
    ),
    def(
        LEADER_TRANSFERS,
        Counter,
        Some(Unit::Count),
        PRO,
        "Leadership hand-overs this member started as leader, by reason (request: `ringlog leader transfer`; balance: the leader balancer; shutdown: a graceful stop) and outcome (done: another member leads; failed: none did within the hand-over's time).",
    ),
    def(
        REPLICATION_LAG,
        Gauge,
        Some(Unit::Count),
        PP,
        "On the leader: entries the peer has yet to acknowledge (leader last index minus peer match index); 0 elsewhere.",
    ),
    def(
        REPLICATION_INFLIGHT_MESSAGES,
        Gauge,
        Some(Unit::Count),
        PP,
        "On the leader: AppendEntries messages sent to the peer and not yet acknowledged.",
    ),
    def(
        REPLICATION_INFLIGHT_BYTES,
        Gauge,
        Some(Unit::Bytes),
        PP,
        "On the leader: entry bytes sent to the peer and not yet acknowledged.",
    ),
    def(
        TRANSPORT_SENT_BYTES,
        Counter,
        Some(Unit::Bytes),
        PP,
        "Bytes written to the peer's links by this shard, frame headers included.",
    ),
    def(
        TRANSPORT_RECEIVED_BYTES,
        Counter,
        Some(Unit::Bytes),
        PP,
        "Bytes of messages received from the peer for this partition, frame headers included.",
    ),
    def(
        TRANSPORT_SENT_MESSAGES,
        Counter,
        Some(Unit::Count),
        PP,
        "Raft messages written to the peer's links by this shard.",
    ),
    def(
        TRANSPORT_DROPPED_MESSAGES,
        Counter,
        Some(Unit::Count),
        PP,
        "Raft messages to the peer dropped because its link queue was full or the message too large (Raft retransmits).",
    ),
    def(
        PEER_MESSAGES_REFUSED,
        Counter,
        Some(Unit::Count),
        PPR,
        "Raft messages from the peer refused because they broke the protocol's rules (the link they came on was closed), by reason.",
    ),
    def(
        SHARD_INBOX_DEPTH,
        Gauge,
        Some(Unit::Count),
        P,
        "Inputs (client requests, peer messages) queued for the shard.",
    ),
    def(
        SHARD_PENDING_APPENDS,
        Gauge,
        Some(Unit::Count),
        P,
        "Append requests the shard holds until they commit or fail.",
    ),
    def(
        SHARD_INBOX_REFUSED,
        Counter,
        Some(Unit::Count),
        P,
        "Client requests answered Overloaded because the shard's client inbox was full (in requests or in append bytes).",
    ),
    def(
        PEER_MESSAGES_DROPPED,
        Counter,
        Some(Unit::Count),
        P,
        "Raft messages from peers dropped on arrival because the shard's peer inbox was full (Raft retransmits).",
    ),
    def(
        WAL_DISK_BYTES,
        Gauge,
        Some(Unit::Bytes),
        P,
        "Bytes of the partition's WAL files on this node: segment files at their full allocated size, their summaries, the spare segment and a segment waiting to be recycled.",
    ),
    def(
        WAL_INDEX_MEMORY_BYTES,
        Gauge,
        Some(Unit::Bytes),
        P,
        "Memory the partition's WAL index takes on this node (sparse index points, term runs, trims, per-segment bookkeeping; not the read cache).",
    ),
    def(
        RETENTION_SEGMENTS_REMOVED,
        Counter,
        Some(Unit::Count),
        P,
        "WAL segments removed from this member's log, by retention or by a trim.",
    ),
    def(
        RETENTION_BYTES_REMOVED,
        Counter,
        Some(Unit::Bytes),
        P,
        "Bytes of the WAL segments counted by ringlog_retention_segments_removed_total.",
    ),
    def(
        LOG_RESETS,
        Counter,
        Some(Unit::Count),
        P,
        "Times this member's log was reset to the leader's log start, because the next entry it needed was removed on the leader.",
    ),
    def(
        LOG_START_SENT,
        Counter,
        Some(Unit::Count),
        P,
        "On the leader: LogStart messages sent to followers whose next entry this log no longer holds.",
    ),
    def(
        TRIMS,
        Counter,
        Some(Unit::Count),
        P,
        "Trim entries committed in this member's log (each removes the records below its index on every member).",
    ),
    def(
        DISK_FREE_BYTES,
        Gauge,
        Some(Unit::Bytes),
        NONE,
        "Free bytes (available to the node's user) on the filesystem of the data directory, checked about ten times a second.",
    ),
    def(
        DISK_LOW,
        Gauge,
        Some(Unit::Count),
        NONE,
        "1 while the data directory's free bytes are below wal.min_free_bytes (appends are refused), else 0.",
    ),
    def(
        APPENDS_REFUSED,
        Counter,
        Some(Unit::Count),
        &["partition", "reason"],
        "Client appends this node refused as leader before they reached the log, by reason (disk_low).",
    ),
];

/// The definition of `name`; panics on a name not in the table (a programming error).
pub fn find(name: &str) -> &'static MetricDef {
    METRICS
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("metric {name} is not in the catalog"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        for (i, d) in METRICS.iter().enumerate() {
            assert!(d.name.starts_with("ringlog_"), "{}", d.name);
            assert!(
                METRICS[..i].iter().all(|o| o.name != d.name),
                "{} twice",
                d.name
            );
            let counter_suffix = d.name.ends_with("_total");
            assert_eq!(counter_suffix, d.kind == Kind::Counter, "{}", d.name);
            match d.unit {
                Some(Unit::Seconds) => assert!(d.name.contains("_seconds"), "{}", d.name),
                Some(Unit::Bytes) => assert!(d.name.contains("_bytes"), "{}", d.name),
                _ => {}
            }
            assert!(d.help.ends_with('.'), "{}: help is a sentence", d.name);
        }
    }
}
