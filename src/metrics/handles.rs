//! The handles each part of a node records into, registered once at start.
//!
//! [`RouterMetrics`] lives with the client and peer routers, one per shard (all
//! shards' handles are the same series), and counts requests; [`ShardMetrics`] lives on its shard and publishes
//! the shard's Raft, WAL and link state.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge};

use super::catalog::*;
use super::{LocalHistogram, NodeMetrics};
use crate::engine::{Engine, NodeId, PeerFault, Role};
use crate::tls::TlsContext;
use crate::transport::ServerError;
use crate::transport::peer::AcceptorStats;
use crate::transport::peer::LinkStats;
use crate::transport::server::ListenerStats;

/// Client operations, as the `op` label says them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Append = 0,
    Read = 1,
    Metadata = 2,
    Trim = 3,
    Transfer = 4,
    Members = 5,
    Membership = 6,
}

const OPS: [&str; 7] = [
    "append",
    "read",
    "metadata",
    "trim",
    "transfer",
    "members",
    "membership",
];
/// `ok`, then each error by its wire code (1..=8).
const RESULTS: [&str; 9] = [
    "ok",
    "not_leader",
    "out_of_range",
    "overloaded",
    "timeout",
    "invalid_request",
    "unavailable",
    "disk_low",
    "unauthorized",
];

fn result_slot(error: Option<&ServerError>) -> usize {
    error.map_or(0, |e| e.code() as usize)
}

/// Per-partition series recorded by the client router.
struct PartitionAppends {
    records: Counter,
    bytes: Counter,
    commit_latency: LocalHistogram,
    /// Client requests refused because the shard's client lane was full.
    inbox_refused: Counter,
    /// Peer messages dropped because the shard's peer lane was full.
    peer_dropped: Counter,
}

/// Acknowledged appends of one partition, counted together: a shard answering a
/// turn's appends adds to the three counters once when the tally is dropped, not
/// three times per answer (the counters' atomics were a measurable part of an
/// answer's cost, docs/performance.md).
#[derive(Default)]
pub struct AppendTally {
    metrics: Option<Rc<RouterMetrics>>,
    partition: u32,
    requests: u64,
    records: u64,
    bytes: u64,
}

impl Drop for AppendTally {
    fn drop(&mut self) {
        let Some(metrics) = self.metrics.take() else {
            return;
        };
        metrics.requests[Op::Append as usize][result_slot(None)].increment(self.requests);
        if let Some(p) = metrics.partitions.get(self.partition as usize) {
            p.records.increment(self.records);
            p.bytes.increment(self.bytes);
        }
    }
}

/// Node-wide client series plus per-partition appends and received peer bytes.
pub struct RouterMetrics {
    requests: Vec<[Counter; RESULTS.len()]>,
    request_seconds: Vec<LocalHistogram>,
    partitions: Vec<PartitionAppends>,
    /// `received[partition]`: (peer, bytes received counter), sorted by peer.
    received: Vec<Vec<(NodeId, Counter)>>,
    connections: Gauge,
    accepted: Counter,
    refused: Counter,
    failed: Counter,
    client_bytes: Counter,
    peer_connections: Gauge,
    handshakes_refused: Counter,
    /// [client port, peer port].
    tls_failed: [Counter; 2],
    unauthorized: Counter,
    /// [ok, error].
    tls_reloads: [Counter; 2],
    /// `served[partition]`: connections its shard began serving, [client, peer].
    served: Vec<[Counter; 2]>,
}

impl RouterMetrics {
    pub fn new(node: &NodeMetrics, partitions: u32, peers: &[NodeId]) -> RouterMetrics {
        let requests = OPS
            .iter()
            .map(|op| {
                RESULTS
                    .map(|result| node.counter(CLIENT_REQUESTS, &[("op", op), ("result", result)]))
            })
            .collect();
        let request_seconds = OPS
            .iter()
            .map(|op| node.histogram(CLIENT_REQUEST_SECONDS, &[("op", op)]))
            .collect();
        let appends = (0..partitions)
            .map(|p| {
                let partition = p.to_string();
                let labels = [("partition", partition.as_str())];
                PartitionAppends {
                    records: node.counter(APPEND_RECORDS, &labels),
                    bytes: node.counter(APPEND_BYTES, &labels),
                    commit_latency: node.histogram(COMMIT_LATENCY, &labels),
                    inbox_refused: node.counter(SHARD_INBOX_REFUSED, &labels),
                    peer_dropped: node.counter(PEER_MESSAGES_DROPPED, &labels),
                }
            })
            .collect();
        let received = (0..partitions)
            .map(|p| {
                let partition = p.to_string();
                peers
                    .iter()
                    .map(|&peer| {
                        let peer_label = peer.to_string();
                        let labels = [("partition", partition.as_str()), ("peer", &peer_label)];
                        (peer, node.counter(TRANSPORT_RECEIVED_BYTES, &labels))
                    })
                    .collect()
            })
            .collect();
        RouterMetrics {
            requests,
            request_seconds,
            partitions: appends,
            received,
            connections: node.gauge(CLIENT_CONNECTIONS, &[]),
            accepted: node.counter(CLIENT_CONNECTIONS_ACCEPTED, &[]),
            refused: node.counter(CLIENT_CONNECTIONS_REFUSED, &[]),
            failed: node.counter(CLIENT_CONNECTIONS_FAILED, &[]),
            client_bytes: node.counter(CLIENT_RECEIVED_BYTES, &[]),
            peer_connections: node.gauge(PEER_CONNECTIONS, &[]),
            handshakes_refused: node.counter(PEER_HANDSHAKES_REFUSED, &[]),
            tls_failed: ["client", "peer"]
                .map(|port| node.counter(TLS_HANDSHAKES_FAILED, &[("port", port)])),
            unauthorized: node.counter(CLIENT_REQUESTS_UNAUTHORIZED, &[]),
            tls_reloads: ["ok", "error"]
                .map(|result| node.counter(TLS_RELOADS, &[("result", result)])),
            served: (0..partitions)
                .map(|p| {
                    let partition = p.to_string();
                    ["client", "peer"].map(|kind| {
                        let labels = [("partition", partition.as_str()), ("kind", kind)];
                        node.counter(CONNECTIONS_SERVED, &labels)
                    })
                })
                .collect(),
        }
    }

    /// One answered request of `op`, `elapsed` after it arrived.
    pub fn request(&self, op: Op, error: Option<&ServerError>, elapsed: Duration) {
        self.requests[op as usize][result_slot(error)].increment(1);
        self.request_seconds[op as usize].record(elapsed.as_secs_f64());
    }

    /// One answered append of `size` (records, payload bytes) to `partition`: the
    /// request, and its records when it was acknowledged (`error` None).
    pub fn append_answered(
        &self,
        partition: u32,
        (records, bytes): (u64, u64),
        error: Option<&ServerError>,
        elapsed: Duration,
    ) {
        self.request(Op::Append, error, elapsed);
        if error.is_some() {
            return;
        }
        if let Some(p) = self.partitions.get(partition as usize) {
            p.records.increment(records);
            p.bytes.increment(bytes);
            p.commit_latency.record(elapsed.as_secs_f64());
        }
    }

    /// An acknowledged append of `partition`, `elapsed` after it arrived, whose
    /// counts go to `tally` (added to the counters when the tally is dropped):
    /// the latency is recorded now.
    pub fn append_acknowledged(
        self: &Rc<Self>,
        partition: u32,
        (records, bytes): (u64, u64),
        elapsed: Duration,
        tally: &mut AppendTally,
    ) {
        let seconds = elapsed.as_secs_f64();
        self.request_seconds[Op::Append as usize].record(seconds);
        let Some(p) = self.partitions.get(partition as usize) else {
            return;
        };
        p.commit_latency.record(seconds);
        if tally.metrics.is_none() || tally.partition != partition {
            // A tally covers one partition (a shard's); another one starts afresh.
            *tally = AppendTally {
                metrics: Some(self.clone()),
                partition,
                ..AppendTally::default()
            };
        }
        tally.requests += 1;
        tally.records += records;
        tally.bytes += bytes;
    }

    /// A client request for `partition` refused because its shard's inbox was full.
    pub fn inbox_refused(&self, partition: u32) {
        if let Some(p) = self.partitions.get(partition as usize) {
            p.inbox_refused.increment(1);
        }
    }

    /// A peer message for `partition` dropped because its shard's peer inbox was full.
    pub fn peer_dropped(&self, partition: u32) {
        if let Some(p) = self.partitions.get(partition as usize) {
            p.peer_dropped.increment(1);
        }
    }

    /// A peer message of `bytes` arrived for `partition` from `peer`.
    pub fn peer_received(&self, partition: u32, peer: NodeId, bytes: u64) {
        let Some(peers) = self.received.get(partition as usize) else {
            return;
        };
        if let Some((_, counter)) = peers.iter().find(|(p, _)| *p == peer) {
            counter.increment(bytes);
        }
    }

    /// Copies the client and peer services' own counters (one set per shard, each
    /// written by its shard) into their series, adding up the shards; called just
    /// before each render.
    pub fn collect(
        &self,
        clients: &[Arc<ListenerStats>],
        peers: &[Arc<AcceptorStats>],
        tls: Option<&TlsContext>,
    ) {
        if let Some(tls) = tls {
            use std::sync::atomic::Ordering::Relaxed;
            self.tls_reloads[0].absolute(tls.reloads_ok_total.load(Relaxed));
            self.tls_reloads[1].absolute(tls.reloads_failed_total.load(Relaxed));
        }
        let sum = |f: fn(&ListenerStats) -> u64| clients.iter().map(|s| f(s)).sum::<u64>();
        let open = sum(|s| s.connections.held());
        self.connections.set(open as f64);
        self.accepted
            .absolute(sum(|s| s.connections_accepted_total.get()));
        self.refused
            .absolute(sum(|s| s.connections_refused_total.get()));
        self.failed
            .absolute(sum(|s| s.connections_failed_total.get()));
        self.client_bytes
            .absolute(sum(|s| s.bytes_received_total.get()));
        self.unauthorized
            .absolute(sum(|s| s.requests_unauthorized_total.get()));
        self.tls_failed[0].absolute(sum(|s| s.connections.tls_handshakes_failed_total.get()));
        let sum = |f: fn(&AcceptorStats) -> u64| peers.iter().map(|s| f(s)).sum::<u64>();
        let open = sum(|s| s.connections.held());
        self.peer_connections.set(open as f64);
        self.handshakes_refused
            .absolute(sum(|s| s.handshakes_refused_total.get()));
        self.tls_failed[1].absolute(sum(|s| s.connections.tls_handshakes_failed_total.get()));
        for (shard, [client, peer]) in self.served.iter().enumerate() {
            if let (Some(c), Some(p)) = (clients.get(shard), peers.get(shard)) {
                client.absolute(c.connections.served_total.get());
                peer.absolute(p.connections.served_total.get());
            }
        }
    }
}

/// One peer's series on one shard.
struct PeerSeries {
    peer: NodeId,
    lag: Gauge,
    inflight_messages: Gauge,
    inflight_bytes: Gauge,
    sent_bytes: Counter,
    sent_messages: Counter,
    dropped_messages: Counter,
    /// Refused messages, one counter per fault in `PeerFault::ALL` order.
    refused: Vec<Counter>,
}

impl PeerSeries {
    fn new(node: &NodeMetrics, partition: u32, peer: NodeId) -> PeerSeries {
        let (partition, peer_label) = (partition.to_string(), peer.to_string());
        let pp = [
            ("partition", partition.as_str()),
            ("peer", peer_label.as_str()),
        ];
        PeerSeries {
            peer,
            lag: node.gauge(REPLICATION_LAG, &pp),
            inflight_messages: node.gauge(REPLICATION_INFLIGHT_MESSAGES, &pp),
            inflight_bytes: node.gauge(REPLICATION_INFLIGHT_BYTES, &pp),
            sent_bytes: node.counter(TRANSPORT_SENT_BYTES, &pp),
            sent_messages: node.counter(TRANSPORT_SENT_MESSAGES, &pp),
            dropped_messages: node.counter(TRANSPORT_DROPPED_MESSAGES, &pp),
            refused: PeerFault::ALL
                .iter()
                .map(|fault| {
                    let reason = [pp[0], pp[1], ("reason", fault.label())];
                    node.counter(PEER_MESSAGES_REFUSED, &reason)
                })
                .collect(),
        }
    }
}

/// The Raft term, role and leader this shard last published, to count changes.
#[derive(Clone, Copy, Default)]
struct Seen {
    campaign_term: Option<u64>,
    leadership: Option<(NodeId, u64)>,
}

/// Series of one shard (partition).
pub struct ShardMetrics {
    pub fsync_seconds: LocalHistogram,
    pub batch_records: LocalHistogram,
    pub batch_bytes: LocalHistogram,
    wal_written_bytes: Counter,
    wal_flushes: Counter,
    term: Gauge,
    roles: [Gauge; 4],
    has_leader: Gauge,
    commit_index: Gauge,
    last_index: Gauge,
    log_start_index: Gauge,
    voters: Gauge,
    learners: Gauge,
    membership_index: Gauge,
    elections: Counter,
    leader_changes: Counter,
    inbox_depth: Gauge,
    pending_appends: Gauge,
    peers: Vec<PeerSeries>,
    seen: Seen,
}

const ROLES: [(Role, &str); 4] = [
    (Role::Follower, "follower"),
    (Role::PreCandidate, "pre_candidate"),
    (Role::Candidate, "candidate"),
    (Role::Leader, "leader"),
];

impl ShardMetrics {
    pub fn new(node: &NodeMetrics, partition: u32, peers: &[NodeId]) -> ShardMetrics {
        let peers = peers
            .iter()
            .map(|&peer| PeerSeries::new(node, partition, peer))
            .collect();
        let partition = partition.to_string();
        let p = [("partition", partition.as_str())];
        ShardMetrics {
            fsync_seconds: node.histogram(WAL_FSYNC_SECONDS, &p),
            batch_records: node.histogram(WAL_BATCH_RECORDS, &p),
            batch_bytes: node.histogram(WAL_BATCH_BYTES, &p),
            wal_written_bytes: node.counter(WAL_WRITTEN_BYTES, &p),
            wal_flushes: node.counter(WAL_FLUSHES, &p),
            term: node.gauge(RAFT_TERM, &p),
            roles: ROLES.map(|(_, role)| {
                node.gauge(
                    RAFT_ROLE,
                    &[("partition", partition.as_str()), ("role", role)],
                )
            }),
            has_leader: node.gauge(RAFT_HAS_LEADER, &p),
            commit_index: node.gauge(RAFT_COMMIT_INDEX, &p),
            last_index: node.gauge(RAFT_LAST_INDEX, &p),
            log_start_index: node.gauge(RAFT_LOG_START_INDEX, &p),
            voters: node.gauge(RAFT_VOTERS, &p),
            learners: node.gauge(RAFT_LEARNERS, &p),
            membership_index: node.gauge(RAFT_MEMBERSHIP_INDEX, &p),
            elections: node.counter(RAFT_ELECTIONS, &p),
            leader_changes: node.counter(RAFT_LEADER_CHANGES, &p),
            inbox_depth: node.gauge(SHARD_INBOX_DEPTH, &p),
            pending_appends: node.gauge(SHARD_PENDING_APPENDS, &p),
            peers,
            seen: Seen::default(),
        }
    }

    /// Follows a membership change: series for peers that joined; the gauges of
    /// peers that left drop to zero (their counters stay, as counters do).
    pub fn follow_peers(&mut self, node: &NodeMetrics, partition: u32, peers: &[NodeId]) {
        for series in self.peers.iter().filter(|s| !peers.contains(&s.peer)) {
            for gauge in [
                &series.lag,
                &series.inflight_messages,
                &series.inflight_bytes,
            ] {
                gauge.set(0.0);
            }
        }
        self.peers.retain(|s| peers.contains(&s.peer));
        for &peer in peers {
            if !self.peers.iter().any(|s| s.peer == peer) {
                self.peers.push(PeerSeries::new(node, partition, peer));
            }
        }
    }

    /// Counts an election this member started and a leader it newly learned of.
    pub fn role_changed(&mut self, role: Role, term: u64, leader: Option<NodeId>) {
        if role == Role::Candidate && self.seen.campaign_term != Some(term) {
            self.seen.campaign_term = Some(term);
            self.elections.increment(1);
        }
        if let Some(leader) = leader
            && self.seen.leadership != Some((leader, term))
        {
            self.seen.leadership = Some((leader, term));
            self.leader_changes.increment(1);
        }
    }

    /// Counts a message from `peer` refused for `fault`.
    pub fn peer_refused(&self, peer: NodeId, fault: PeerFault) {
        let slot = PeerFault::ALL.iter().position(|f| *f == fault);
        let series = self.peers.iter().find(|s| s.peer == peer);
        if let (Some(series), Some(slot)) = (series, slot) {
            series.refused[slot].increment(1);
        }
    }

    /// Publishes the engine's state and the queues' depths (once per tick).
    pub fn publish(&self, engine: &Engine, inbox_depth: usize, pending_appends: usize) {
        let role = engine.role();
        for ((r, _), gauge) in ROLES.iter().zip(&self.roles) {
            gauge.set(if *r == role { 1.0 } else { 0.0 });
        }
        self.term.set(engine.term() as f64);
        self.has_leader
            .set(if engine.leader().is_some() { 1.0 } else { 0.0 });
        self.commit_index.set(engine.commit_index() as f64);
        let last = engine.log().last_index();
        self.last_index.set(last as f64);
        self.log_start_index.set(engine.read_start() as f64);
        let membership = engine.membership();
        let voters = membership.voter_count();
        self.voters.set(voters as f64);
        self.learners
            .set((membership.members().len() - voters) as f64);
        self.membership_index.set(engine.membership_index() as f64);
        self.inbox_depth.set(inbox_depth as f64);
        self.pending_appends.set(pending_appends as f64);
        let leading = role == Role::Leader;
        for series in &self.peers {
            let progress = engine
                .replication_progress()
                .iter()
                .find(|(peer, _)| *peer == series.peer)
                .map(|(_, p)| p)
                .filter(|_| leading);
            let (lag, msgs, bytes) = progress.map_or((0, 0, 0), |p| {
                (
                    last.saturating_sub(p.match_index),
                    p.inflight_msgs() as u64,
                    p.inflight_bytes(),
                )
            });
            series.lag.set(lag as f64);
            series.inflight_messages.set(msgs as f64);
            series.inflight_bytes.set(bytes as f64);
        }
    }

    /// Copies the WAL's and the peer links' own counters into their series.
    pub fn collect<'a>(
        &self,
        wal: crate::wal::log::WalStats,
        links: impl Iterator<Item = (NodeId, &'a LinkStats)>,
    ) {
        self.wal_written_bytes.absolute(wal.bytes_written);
        self.wal_flushes.absolute(wal.flushes);
        for (peer, stats) in links {
            if let Some(series) = self.peers.iter().find(|s| s.peer == peer) {
                series.sent_bytes.absolute(stats.bytes_sent_total.get());
                series
                    .sent_messages
                    .absolute(stats.messages_sent_total.get());
                series.dropped_messages.absolute(
                    stats.messages_refused_total.get() + stats.heartbeats_dropped_total.get(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_slots_follow_wire_codes() {
        assert_eq!(RESULTS[result_slot(None)], "ok");
        let cases = [
            (
                ServerError::NotLeader {
                    leader: None,
                    leader_addr: None,
                },
                "not_leader",
            ),
            (
                ServerError::OutOfRange {
                    log_start: 1,
                    log_end: 2,
                },
                "out_of_range",
            ),
            (ServerError::Overloaded, "overloaded"),
            (ServerError::Timeout, "timeout"),
            (
                ServerError::InvalidRequest {
                    reason: String::new(),
                },
                "invalid_request",
            ),
            (
                ServerError::Unavailable {
                    reason: String::new(),
                },
                "unavailable",
            ),
            (
                ServerError::DiskLow {
                    node: 1,
                    free_bytes: 0,
                    min_free_bytes: 1,
                },
                "disk_low",
            ),
            (
                ServerError::Unauthorized {
                    reason: String::new(),
                },
                "unauthorized",
            ),
        ];
        for (error, name) in cases {
            assert_eq!(RESULTS[result_slot(Some(&error))], name);
        }
    }
}
