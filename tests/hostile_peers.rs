//! Hostile peers against running nodes: a fake member completes the peer
//! handshake and sends well-framed messages that break Raft's rules, one attack of
//! issue 14 each. The attacked node refuses them (never panics), counts each in
//! `ringlog_peer_messages_refused_total` under its reason, closes the link, accepts
//! the peer's next connection, keeps serving appends and reads, and its resident
//! memory stays bounded. And the mechanism beneath: a link closed from another
//! thread is closed, and its peer reconnects.

mod cluster_support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cluster_support::*;
use ringlog::engine::{
    AppendResponse, Entry, EntryKind, KnownConfig, Membership, Message, MessageBody,
};
use ringlog::transport::frame::{FrameKind, PROTOCOL_VERSION};
use ringlog::transport::peer::{PeerAcceptor, PeerConfig, PeerHandler, PeerLink, link_closer};
use ringlog::transport::peer_msg::{Hello, Lane, decode_hello, encode_hello, encode_message};

/// How long any awaited condition may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(20);
/// The member the fake peer claims to be: configured, but never started.
const FAKE_NODE: u32 = 3;
/// The largest record a member stores (`wal.record_size_bytes_max`, 1 MiB).
const RECORD_LIMIT: usize = 1 << 20;
/// What all the attacks together may add to the attacked node's resident memory:
/// each refused message is dropped with its link, so only the largest one (a
/// little over 1 MiB, read into a buffer of its own) and the records appended to
/// prove the node serves stay; 16 MiB leaves room for allocator slack.
const ATTACKS_RSS_BOUND: u64 = 16 * MIB;

/// Connects to `addr` as member `FAKE_NODE`'s bulk lane for shard 0 of node
/// `target` (a node id) and completes the handshake.
fn handshake(addr: SocketAddr, target: u32) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&addr, PATIENCE).expect("connect to the peer port");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let hello = Hello {
        cluster_id: 42,
        node_id: FAKE_NODE,
        peer_node_id: target,
        shard_id: 0,
        lane: Lane::Bulk,
        protocol_version: PROTOCOL_VERSION,
        shard_count: 1,
    };
    let mut out = BytesMut::new();
    encode_hello(&mut out, FrameKind::PeerHello, &hello);
    stream.write_all(&out).unwrap();
    let ack = read_frame(&mut stream, &mut BytesMut::new(), 1 << 20).expect("a handshake answer");
    assert_eq!(ack.kind, FrameKind::PeerHelloAck, "{ack:?}");
    assert_eq!(decode_hello(&ack).unwrap().node_id, target);
    stream
}

/// The node under attack: the partition's leader, since two of the attacks are
/// only wrong when a leader receives them.
struct Target {
    k: usize,
    peer: SocketAddr,
    metrics: SocketAddr,
}

impl Target {
    /// Sends `body` in `term` as the fake member, waits (within the read timeout)
    /// for the node to close the link (anything it sends meanwhile is skipped), and
    /// then for the refusal to be counted under `reason`.
    fn refuses(&self, term: u64, body: MessageBody, reason: &str) {
        let before = self.refused(reason);
        let mut stream = handshake(self.peer, self.k as u32 + 1);
        let msg = Message {
            from: FAKE_NODE,
            to: self.k as u32 + 1,
            term,
            body,
        };
        let mut out = BytesMut::new();
        encode_message(&mut out, &msg);
        stream.write_all(&out).unwrap();
        let mut buf = BytesMut::new();
        while read_frame(&mut stream, &mut buf, 1 << 20).is_some() {}
        await_condition(&format!("{reason} counted"), PATIENCE, || {
            self.refused(reason) > before
        });
    }

    fn refused(&self, reason: &str) -> f64 {
        let label = format!("reason=\"{reason}\"");
        metric_sum(self.metrics, "ringlog_peer_messages_refused_total", &label)
    }
}

/// The node id of partition 0's leader and its term, once every partition has one.
fn leader_and_term(addrs: Vec<String>) -> (u32, u64) {
    on_executor(async move || {
        let meta = await_leaders(&client(addrs), 1, PATIENCE).await;
        (meta.partitions[0].leader.unwrap(), meta.partitions[0].term)
    })
}

fn append_entries(prev_log_index: u64, prev_log_term: u64, entries: Vec<Entry>) -> MessageBody {
    MessageBody::AppendEntries {
        prev_log_index,
        prev_log_term,
        entries,
        leader_commit: 0,
    }
}

fn entry(term: u64, index: u64, payload: Bytes) -> Entry {
    Entry {
        term,
        index,
        kind: EntryKind::Record,
        payload,
    }
}

/// Every peer attack of issue 14, one after the other against one leader (they are
/// independent: each is refused before it changes anything), each followed by the
/// proof that the node is up and serving, and its memory bounded.
#[test]
fn hostile_peers_are_refused_counted_and_cut_off_while_the_node_serves() {
    let mut cluster = TestCluster::configure_routed(3, 1, |_, _, addr| addr);
    // No election may start between reading the leader's term and the attacks that
    // use it: with only two members up, a follower stalled for one timeout would
    // also make the leader step down at its next quorum check.
    cluster.with_patient_elections();
    cluster.spawn(0);
    cluster.spawn(1);
    let (leader, _) = leader_and_term(cluster.client_addrs()[..2].to_vec());
    let k = leader as usize - 1;
    let target = Target {
        k,
        peer: cluster.configs[k].listen.peer,
        metrics: cluster.configs[k].listen.metrics,
    };
    assert_alive_and_serving(&mut cluster, k, "the start");
    let mut memory = MemoryWatch::start(cluster.pid(k).unwrap());

    // Each attack: the message's term (`None`: the leader's own, read just before
    // sending, so that an election meanwhile cannot make the message stale), its
    // body, the reason it must be counted under, and what it is, in words.
    let attacks = [
        // A LogStart at index 0 once reached `start_index - 1` in the engine.
        (
            Some(1),
            MessageBody::LogStart {
                start_index: 0,
                prev_term: 0,
                leader_commit: 0,
                config: KnownConfig::bootstrap(Membership::of_voters(&[1, 2, 3])),
            },
            "log_start_at_zero",
            "a LogStart at 0",
        ),
        // Entries that skip an index, after an honest predecessor.
        (
            Some(1),
            append_entries(1, 1, vec![entry(1, 7, Bytes::from_static(b"forged"))]),
            "entries_not_consecutive",
            "entries with a gap",
        ),
        // An entry at index 1, committed with the leader's no-op, in a term it never
        // had; a later message term, so that no other rule (a second leader, a stale
        // message) applies first. Refused, it must not raise the node's term either.
        (
            Some(1000),
            append_entries(0, 0, vec![entry(999, 1, Bytes::from_static(b"rewritten"))]),
            "contradicts_committed",
            "an entry contradicting a committed one",
        ),
        // A success acknowledging entries far beyond the leader's last index.
        (
            None,
            MessageBody::AppendEntriesResponse {
                result: AppendResponse::Success {
                    match_index: 1 << 40,
                },
            },
            "match_beyond_log",
            "a match index beyond the leader's log",
        ),
        // Another member claiming to lead the leader's own term.
        (
            None,
            append_entries(0, 0, Vec::new()),
            "second_leader",
            "an AppendEntries in the leader's own term",
        ),
        // A payload one byte over the record limit once reached the WAL and stopped
        // the node.
        (
            Some(1),
            append_entries(
                0,
                0,
                vec![entry(1, 1, Bytes::from(vec![7u8; RECORD_LIMIT + 1]))],
            ),
            "entry_too_large",
            "an entry over the record limit",
        ),
    ];
    // Each attack comes on a new connection: the handshake succeeding again shows
    // that the node accepts the peer's next connection after closing its link.
    for (msg_term, body, reason, attack) in attacks {
        let msg_term = msg_term.unwrap_or_else(|| {
            let (now_leader, now_term) = leader_and_term(cluster.client_addrs()[..2].to_vec());
            assert_eq!(now_leader, leader, "leadership moved before {attack}");
            now_term
        });
        target.refuses(msg_term, body, reason);
        assert_alive_and_serving(&mut cluster, k, attack);
    }

    // The refused message of term 1000 left the term alone (an election on a loaded
    // machine may raise it by a few, not to 1000).
    let (_, now) = leader_and_term(cluster.client_addrs()[..2].to_vec());
    assert!(now < 1000, "a refused message raised the term to {now}");
    memory.assert_below("six hostile peer messages", ATTACKS_RSS_BOUND);
}

/// Counts delivered peer messages.
#[derive(Default)]
struct Count {
    delivered: std::cell::Cell<u64>,
}

impl PeerHandler for Count {
    fn deliver(&self, _shard_id: u32, _message: Message) {
        self.delivered.set(self.delivered.get() + 1);
    }
}

/// Re-checks `done` every few milliseconds until it holds, or panics after
/// `PATIENCE`, sending a heartbeat on `link` each time (an idle link only notices
/// a closed connection when it next writes).
async fn await_with_heartbeats(what: &str, link: &PeerLink, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        let heartbeat = MessageBody::Heartbeat {
            leader_commit: 0,
            seq: 1,
        };
        let _ = link.send(Message {
            from: 1,
            to: 2,
            term: 1,
            body: heartbeat,
        });
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// A `LinkCloser` used from another thread (as a shard's is) closes both lanes of
/// the peer's link at the acceptor, and the peer's `PeerLink` reconnects and
/// delivers again.
#[test]
fn a_closed_link_is_closed_from_another_thread_and_its_peer_reconnects() {
    on_executor(async || {
        // Port 0: the kernel picks a free port at the bind itself, so nothing can
        // take it between a check and the bind (this acceptor never restarts, so
        // it needs no port known in advance).
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let count = Rc::new(Count::default());
        let (closer, requests) = link_closer();
        let acceptor = PeerAcceptor::bind(any_port, Rc::new(PeerConfig::new(7, 2)), count.clone())
            .unwrap()
            .closing_on(requests);
        let addr = acceptor.local_addr().unwrap();
        let stats = acceptor.stats();
        glommio::spawn_local(acceptor.run()).detach();
        let link = PeerLink::spawn(Rc::new(PeerConfig::new(7, 1)), 0, 2, addr);
        await_with_heartbeats("first delivery", &link, || count.delivered.get() > 0).await;
        let both_lanes = || stats.connections.open.get() == 2;
        await_with_heartbeats("both lanes connected", &link, both_lanes).await;

        std::thread::spawn(move || closer.close(1, 0))
            .join()
            .unwrap();
        let closed = || stats.links_closed_for_refusal_total.get() == 2;
        await_with_heartbeats("both lanes closed", &link, closed).await;

        let before = count.delivered.get();
        let reconnected = || link.stats().connects_total.get() >= 3;
        await_with_heartbeats("reconnected", &link, reconnected).await;
        let delivering = || count.delivered.get() > before;
        await_with_heartbeats("delivering again", &link, delivering).await;
    });
}
