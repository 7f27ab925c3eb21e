//! A hostile peer against a running node: a fake member completes the peer
//! handshake and sends well-framed messages that break Raft's rules. The node
//! refuses them (never panics), counts them in
//! `ringlog_peer_messages_refused_total`, closes the link, accepts the peer's next
//! connection, and keeps serving appends throughout. And the mechanism beneath: a
//! link closed from another thread is closed, and its peer reconnects.

mod cluster_support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cluster_support::*;
use ringlog::engine::{Entry, EntryKind, Message, MessageBody};
use ringlog::transport::frame::{Frame, FrameKind, PROTOCOL_VERSION, decode_frame};
use ringlog::transport::peer::{PeerAcceptor, PeerConfig, PeerHandler, PeerLink, link_closer};
use ringlog::transport::peer_msg::{Hello, Lane, decode_hello, encode_hello, encode_message};

/// How long any awaited condition may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(20);
/// The member the fake peer claims to be: configured, but never started.
const FAKE_NODE: u32 = 3;
/// The node under attack (node id 1).
const TARGET: usize = 0;

/// Reads one whole frame, or `None` once the node closed the connection.
fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame> {
    loop {
        if let Some(frame) = decode_frame(buf, 1 << 20, None).expect("a well-formed frame") {
            return Some(frame);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("reading from the node: {e}"),
        }
    }
}

/// Connects to `addr` as member `FAKE_NODE`'s bulk lane for shard 0 and completes
/// the handshake.
fn handshake(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&addr, PATIENCE).expect("connect to the peer port");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let hello = Hello {
        cluster_id: 42,
        node_id: FAKE_NODE,
        peer_node_id: TARGET as u32 + 1,
        shard_id: 0,
        lane: Lane::Bulk,
        protocol_version: PROTOCOL_VERSION,
    };
    let mut out = BytesMut::new();
    encode_hello(&mut out, FrameKind::PeerHello, &hello);
    stream.write_all(&out).unwrap();
    let ack = read_frame(&mut stream, &mut BytesMut::new()).expect("a handshake answer");
    assert_eq!(ack.kind, FrameKind::PeerHelloAck, "{ack:?}");
    assert_eq!(decode_hello(&ack).unwrap().node_id, TARGET as u32 + 1);
    stream
}

/// Sends `body` as the fake member and waits (within the read timeout) for the node
/// to close the link; anything it sends meanwhile is skipped.
fn send_and_expect_close(addr: SocketAddr, body: MessageBody) {
    let mut stream = handshake(addr);
    let msg = Message {
        from: FAKE_NODE,
        to: TARGET as u32 + 1,
        term: 1,
        body,
    };
    let mut out = BytesMut::new();
    encode_message(&mut out, &msg);
    stream.write_all(&out).unwrap();
    let mut buf = BytesMut::new();
    while read_frame(&mut stream, &mut buf).is_some() {}
}

/// The node's refusal counter for `reason`, summed over its series.
fn refused(metrics: SocketAddr, reason: &str) -> u64 {
    let mut stream = TcpStream::connect_timeout(&metrics, PATIENCE).expect("metrics port");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    let label = format!("reason=\"{reason}\"");
    page.lines()
        .filter(|l| l.starts_with("ringlog_peer_messages_refused_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn await_refused(metrics: SocketAddr, reason: &str, count: u64) {
    let deadline = Instant::now() + PATIENCE;
    while refused(metrics, reason) < count {
        assert!(
            Instant::now() < deadline,
            "{reason} not counted {count} times within {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn append_one(addrs: Vec<String>, record: &'static str) {
    on_executor(async move || {
        let client = client(addrs);
        await_leaders(&client, 1, PATIENCE).await;
        client
            .append(0, vec![Bytes::from_static(record.as_bytes())])
            .await
            .expect("the cluster keeps serving appends");
    });
}

#[test]
fn hostile_peer_is_refused_counted_and_cut_off_while_the_node_serves() {
    let mut cluster = TestCluster::configure_routed(3, 1, |_, _, addr| addr);
    cluster.spawn(0);
    cluster.spawn(1);
    let addrs: Vec<String> = cluster.client_addrs()[..2].to_vec();
    append_one(addrs.clone(), "before");
    let (peer, metrics) = (
        cluster.configs[TARGET].listen.peer,
        cluster.configs[TARGET].listen.metrics,
    );

    // A LogStart at index 0 once reached `start_index - 1` in the engine.
    let log_start = MessageBody::LogStart {
        start_index: 0,
        prev_term: 0,
        leader_commit: 0,
    };
    send_and_expect_close(peer, log_start);
    await_refused(metrics, "log_start_at_zero", 1);
    append_one(addrs.clone(), "between");

    // The peer reconnects (the handshake succeeds again), and an AppendEntries
    // whose entries skip an index is refused the same way.
    let gap = Entry {
        term: 1,
        index: 7,
        kind: EntryKind::Record,
        payload: Bytes::from_static(b"forged"),
    };
    let append = MessageBody::AppendEntries {
        prev_log_index: 1,
        prev_log_term: 1,
        entries: vec![gap],
        leader_commit: 0,
    };
    send_and_expect_close(peer, append);
    await_refused(metrics, "entries_not_consecutive", 1);
    append_one(addrs, "after");
    assert!(cluster.is_running(TARGET), "the attacked node is still up");
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
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let count = Rc::new(Count::default());
        let (closer, requests) = link_closer();
        let acceptor = PeerAcceptor::bind(addr, Rc::new(PeerConfig::new(7, 2)), count.clone())
            .unwrap()
            .closing_on(requests);
        let stats = acceptor.stats();
        glommio::spawn_local(acceptor.run()).detach();
        let link = PeerLink::spawn(Rc::new(PeerConfig::new(7, 1)), 0, 2, addr);
        await_with_heartbeats("first delivery", &link, || count.delivered.get() > 0).await;
        let both_lanes = || stats.connections_open.get() == 2;
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
