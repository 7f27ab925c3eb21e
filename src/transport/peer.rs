//! Peer links between the shards of one Raft group on different nodes.
//!
//! Each (local shard, remote node) pair has one outbound [`PeerLink`]. A link is two
//! TCP connections, its lanes: *control* for votes, heartbeats and all responses, and
//! *bulk* for AppendEntries and LogStart. Heartbeats therefore never wait behind
//! megabytes of catch-up data, neither in our queue nor in the kernel's socket
//! buffers. Connections are one-way: a node sends its messages on the links it
//! opened and receives its peers' messages on the connections they opened to its
//! [`PeerAcceptor`], so there is no race over who dials whom.
//!
//! Queue policy (per lane, bounded):
//! - control: at most `control_queue_messages_max` messages. When full, the oldest
//!   queued Heartbeat or HeartbeatResponse is dropped to make room (a newer one
//!   supersedes it); if there is none, `send` refuses with [`SendError::Full`].
//! - bulk: at most `bulk_queue_messages_max` messages and `bulk_queue_bytes_max`
//!   bytes (one message is always accepted into an empty queue). When full, `send`
//!   refuses with [`SendError::Full`] and hands the message back: the engine's
//!   replication window should keep this from happening, and Raft treats a refused
//!   message like a lost one.
//!
//! Queued messages survive a reconnect; messages already taken into a write that
//! failed are lost (Raft retransmits).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use glommio::net::{TcpListener, TcpStream};
use glommio::task::JoinHandle;
use thiserror::Error;

use super::conn::{ConnError, FrameReader, Notify, write_all_within};
use super::frame::{
    FRAME_BODY_BYTES_MAX_DEFAULT, FRAME_HEADER_BYTES, FrameError, FrameKind, PROTOCOL_VERSION,
};
use super::peer_msg::{
    Hello, Lane, decode_hello, decode_message, decode_refused, encode_hello, encode_message,
    encode_refused, message_frame_bytes,
};
use crate::engine::{Message, MessageBody, NodeId};

/// Settings shared by a node's peer links and its peer acceptor.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub cluster_id: u64,
    /// This node's id.
    pub node_id: NodeId,
    /// Largest peer frame body accepted (and sent: larger messages are refused by
    /// `send`). The runtime must cut AppendEntries batches below it.
    pub frame_body_bytes_max: u32,
    pub connect_timeout_ms: u64,
    /// The whole handshake (hello out, answer back) must finish within this.
    pub handshake_timeout_ms: u64,
    pub write_timeout_ms: u64,
    /// A frame must arrive whole within this long of its first byte.
    pub frame_timeout_ms: u64,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max_ms`, and
    /// each delay is drawn uniformly from [delay/2, delay] so that links that broke
    /// together do not reconnect in lock-step.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub control_queue_messages_max: usize,
    pub bulk_queue_messages_max: usize,
    pub bulk_queue_bytes_max: usize,
    /// Frames are gathered into one buffer of up to this many bytes per write (a
    /// single larger frame is written alone).
    pub write_batch_bytes_max: usize,
    /// Inbound peer connections beyond this many are closed on accept.
    pub connections_max: usize,
    /// Receive chunk of inbound peer connections (see `FrameReader::with_read_chunk`):
    /// large, because peer connections are few and carry bulk data.
    pub read_chunk_bytes: usize,
}

impl PeerConfig {
    pub fn new(cluster_id: u64, node_id: NodeId) -> PeerConfig {
        PeerConfig {
            cluster_id,
            node_id,
            frame_body_bytes_max: FRAME_BODY_BYTES_MAX_DEFAULT,
            connect_timeout_ms: 1_000,
            handshake_timeout_ms: 2_000,
            write_timeout_ms: 10_000,
            frame_timeout_ms: 10_000,
            backoff_initial_ms: 50,
            backoff_max_ms: 2_000,
            control_queue_messages_max: 1_024,
            bulk_queue_messages_max: 4_096,
            bulk_queue_bytes_max: 64 * 1024 * 1024,
            write_batch_bytes_max: 1024 * 1024,
            connections_max: 1_024,
            read_chunk_bytes: 256 * 1024,
        }
    }
}

/// Why `send` did not queue a message; the message is handed back.
#[derive(Debug, Error)]
pub enum SendError {
    #[error("peer link queue full")]
    Full(Message),
    #[error("message of {frame_bytes} bytes exceeds the peer frame limit")]
    TooLarge {
        frame_bytes: usize,
        message: Message,
    },
    #[error("peer link closed")]
    Closed(Message),
}

/// Why one connection attempt of a link failed.
#[derive(Debug, Error)]
pub enum LinkError {
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("handshake with {addr} failed: {source}")]
    Handshake { addr: SocketAddr, source: ConnError },
    #[error("peer at {addr} refused the link: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    #[error("peer at {addr} is not who we expected: {reason}")]
    Mismatch { addr: SocketAddr, reason: String },
}

/// Counters of one link (both lanes), for metrics and tests.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub messages_sent_total: Cell<u64>,
    pub bytes_sent_total: Cell<u64>,
    pub writes_total: Cell<u64>,
    /// Heartbeats dropped to make room in a full control queue.
    pub heartbeats_dropped_total: Cell<u64>,
    /// Messages `send` refused (full, too large or closed).
    pub messages_refused_total: Cell<u64>,
    pub connects_total: Cell<u64>,
    pub connect_failures_total: Cell<u64>,
}

fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get() + by);
}

struct LaneState {
    lane: Lane,
    queue: RefCell<VecDeque<Message>>,
    queued_bytes: Cell<usize>,
    connected: Cell<bool>,
    wake: Notify,
}

/// The outbound link from one local shard to one remote node. Dropping it stops its
/// tasks and closes its connections.
pub struct PeerLink {
    config: Rc<PeerConfig>,
    lanes: [Rc<LaneState>; 2],
    stats: Rc<LinkStats>,
    closed: Rc<Cell<bool>>,
    tasks: Vec<JoinHandle<()>>,
}

impl PeerLink {
    /// Starts a link on the current glommio executor; it connects in the background
    /// and keeps reconnecting until dropped.
    pub fn spawn(
        config: Rc<PeerConfig>,
        shard_id: u32,
        peer_node_id: NodeId,
        peer_addr: SocketAddr,
    ) -> PeerLink {
        let stats = Rc::new(LinkStats::default());
        let closed = Rc::new(Cell::new(false));
        let lanes = [Lane::Control, Lane::Bulk].map(|lane| {
            Rc::new(LaneState {
                lane,
                queue: RefCell::new(VecDeque::new()),
                queued_bytes: Cell::new(0),
                connected: Cell::new(false),
                wake: Notify::default(),
            })
        });
        let tasks = lanes
            .iter()
            .map(|lane| {
                let target = Target {
                    shard_id,
                    peer_node_id,
                    peer_addr,
                };
                glommio::spawn_local(run_lane(
                    config.clone(),
                    lane.clone(),
                    stats.clone(),
                    target,
                ))
                .detach()
            })
            .collect();
        PeerLink {
            config,
            lanes,
            stats,
            closed,
            tasks,
        }
    }

    fn lane(&self, lane: Lane) -> &LaneState {
        match lane {
            Lane::Control => &self.lanes[0],
            Lane::Bulk => &self.lanes[1],
        }
    }

    /// Queues `msg` on its lane without waiting. See the module docs for the policy
    /// when a queue is full.
    pub fn send(&self, msg: Message) -> Result<(), SendError> {
        let frame_bytes = message_frame_bytes(&msg);
        let refuse = |e: SendError| {
            bump(&self.stats.messages_refused_total, 1);
            Err(e)
        };
        if self.closed.get() {
            return refuse(SendError::Closed(msg));
        }
        if frame_bytes - FRAME_HEADER_BYTES > self.config.frame_body_bytes_max as usize {
            return refuse(SendError::TooLarge {
                frame_bytes,
                message: msg,
            });
        }
        let st = self.lane(Lane::of(&msg.body));
        let mut q = st.queue.borrow_mut();
        match st.lane {
            Lane::Control => {
                if q.len() >= self.config.control_queue_messages_max {
                    let is_heartbeat = |m: &Message| {
                        matches!(
                            m.body,
                            MessageBody::Heartbeat { .. } | MessageBody::HeartbeatResponse { .. }
                        )
                    };
                    match q.iter().position(is_heartbeat) {
                        Some(pos) => {
                            let old = q.remove(pos).expect("position is in range");
                            st.queued_bytes
                                .set(st.queued_bytes.get() - message_frame_bytes(&old));
                            bump(&self.stats.heartbeats_dropped_total, 1);
                        }
                        None => return refuse(SendError::Full(msg)),
                    }
                }
            }
            Lane::Bulk => {
                let over_bytes =
                    st.queued_bytes.get() + frame_bytes > self.config.bulk_queue_bytes_max;
                if q.len() >= self.config.bulk_queue_messages_max || (over_bytes && !q.is_empty()) {
                    return refuse(SendError::Full(msg));
                }
            }
        }
        st.queued_bytes.set(st.queued_bytes.get() + frame_bytes);
        q.push_back(msg);
        drop(q);
        st.wake.notify();
        Ok(())
    }

    /// Whether `lane`'s connection is currently established.
    pub fn is_connected(&self, lane: Lane) -> bool {
        self.lane(lane).connected.get()
    }

    /// Messages and bytes waiting on `lane`.
    pub fn queued(&self, lane: Lane) -> (usize, usize) {
        let st = self.lane(lane);
        (st.queue.borrow().len(), st.queued_bytes.get())
    }

    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        self.closed.set(true);
        for t in self.tasks.drain(..) {
            // Cancelling drops each lane's connection, which closes it.
            t.cancel();
        }
    }
}

#[derive(Clone, Copy)]
struct Target {
    shard_id: u32,
    peer_node_id: NodeId,
    peer_addr: SocketAddr,
}

/// A small xorshift generator for backoff jitter: seeded per lane from the clock and
/// identities, so it needs no dependency and differs between links.
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

async fn run_lane(config: Rc<PeerConfig>, st: Rc<LaneState>, stats: Rc<LinkStats>, target: Target) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut jitter = Jitter(
        nanos
            ^ (u64::from(target.peer_node_id) << 32)
            ^ (u64::from(target.shard_id) << 8)
            ^ st.lane as u64
            | 1,
    );
    let mut backoff_ms = config.backoff_initial_ms.max(1);
    loop {
        match connect(&config, st.lane, target).await {
            Ok(mut stream) => {
                bump(&stats.connects_total, 1);
                backoff_ms = config.backoff_initial_ms.max(1);
                st.connected.set(true);
                let result = pump(&config, &st, &stats, &mut stream).await;
                st.connected.set(false);
                if let Err(e) = result {
                    log::warn!(
                        "peer link shard {} -> node {} ({}) {:?} lane: connection lost: {e}",
                        target.shard_id,
                        target.peer_node_id,
                        target.peer_addr,
                        st.lane
                    );
                }
            }
            Err(e) => {
                bump(&stats.connect_failures_total, 1);
                // A refusal is a configuration problem an operator must see; an
                // unreachable peer is routine while it restarts.
                match &e {
                    LinkError::Refused { .. } | LinkError::Mismatch { .. } => log::error!(
                        "peer link shard {} -> node {}: {e}",
                        target.shard_id,
                        target.peer_node_id
                    ),
                    _ => log::debug!(
                        "peer link shard {} -> node {}: {e}",
                        target.shard_id,
                        target.peer_node_id
                    ),
                }
            }
        }
        let delay_ms = backoff_ms / 2 + jitter.next() % (backoff_ms / 2 + 1);
        glommio::timer::sleep(Duration::from_millis(delay_ms)).await;
        backoff_ms = (backoff_ms * 2).min(config.backoff_max_ms.max(1));
    }
}

async fn connect(config: &PeerConfig, lane: Lane, target: Target) -> Result<TcpStream, LinkError> {
    let addr = target.peer_addr;
    let mut stream =
        TcpStream::connect_timeout(addr, Duration::from_millis(config.connect_timeout_ms))
            .await
            .map_err(|e| LinkError::Connect {
                addr,
                source: e.into(),
            })?;
    let _ = stream.set_nodelay(true);
    let hello = Hello {
        cluster_id: config.cluster_id,
        node_id: config.node_id,
        peer_node_id: target.peer_node_id,
        shard_id: target.shard_id,
        lane,
        protocol_version: PROTOCOL_VERSION,
    };
    let mut buf = BytesMut::new();
    encode_hello(&mut buf, FrameKind::PeerHello, &hello);
    let handshake_timeout = Duration::from_millis(config.handshake_timeout_ms);
    let handshake_err = |source| LinkError::Handshake { addr, source };
    write_all_within(&mut stream, &buf, handshake_timeout)
        .await
        .map_err(handshake_err)?;
    let mut reader = FrameReader::new(&mut stream, config.frame_body_bytes_max);
    let frame = reader
        .next_frame(Some(handshake_timeout), handshake_timeout)
        .await
        .map_err(handshake_err)?
        .ok_or_else(|| handshake_err(ConnError::Io(io::ErrorKind::UnexpectedEof.into())))?;
    let ack = match frame.kind {
        FrameKind::PeerHelloAck => decode_hello(&frame).map_err(|e| handshake_err(e.into()))?,
        FrameKind::PeerRefused => {
            let reason = decode_refused(&frame).map_err(|e| handshake_err(e.into()))?;
            return Err(LinkError::Refused { addr, reason });
        }
        other => {
            return Err(handshake_err(ConnError::Frame(FrameError::Unexpected {
                kind: other,
                context: "expected PeerHelloAck or PeerRefused",
            })));
        }
    };
    drop(reader);
    let mismatch = if ack.cluster_id != config.cluster_id {
        Some(format!(
            "cluster id {:#x}, ours is {:#x}",
            ack.cluster_id, config.cluster_id
        ))
    } else if ack.node_id != target.peer_node_id {
        Some(format!(
            "node id {}, expected {}",
            ack.node_id, target.peer_node_id
        ))
    } else if ack.shard_id != target.shard_id
        || ack.lane != lane
        || ack.peer_node_id != config.node_id
    {
        Some(format!("acknowledged {ack:?}, we sent {hello:?}"))
    } else {
        None
    };
    match mismatch {
        Some(reason) => Err(LinkError::Mismatch { addr, reason }),
        None => Ok(stream),
    }
}

/// Writes queued messages until the connection fails, many frames per write.
async fn pump(
    config: &PeerConfig,
    st: &LaneState,
    stats: &LinkStats,
    stream: &mut TcpStream,
) -> Result<(), ConnError> {
    let write_timeout = Duration::from_millis(config.write_timeout_ms);
    let mut buf = BytesMut::with_capacity(config.write_batch_bytes_max);
    loop {
        let mut messages = 0u64;
        {
            let mut q = st.queue.borrow_mut();
            while let Some(m) = q.front() {
                let size = message_frame_bytes(m);
                if !buf.is_empty() && buf.len() + size > config.write_batch_bytes_max {
                    break;
                }
                let m = q.pop_front().expect("front exists");
                st.queued_bytes.set(st.queued_bytes.get() - size);
                encode_message(&mut buf, &m);
                messages += 1;
            }
        }
        if buf.is_empty() {
            st.wake.notified().await;
            continue;
        }
        write_all_within(stream, &buf, write_timeout).await?;
        bump(&stats.messages_sent_total, messages);
        bump(&stats.bytes_sent_total, buf.len() as u64);
        bump(&stats.writes_total, 1);
        buf.clear();
    }
}

/// Receives peer messages. Implemented by the runtime; called on the executor that
/// accepted the connection.
pub trait PeerHandler: 'static {
    /// Whether to take a connection that introduced itself with `hello`. Cluster id,
    /// target node id and protocol version are already checked; this is for checks
    /// only the runtime can make (for example that `hello.shard_id` exists here).
    /// `Err(reason)` refuses; the reason is sent to the peer and logged on both sides.
    fn accept(&self, hello: &Hello) -> Result<(), String> {
        let _ = hello;
        Ok(())
    }

    /// One message for `shard_id` arrived on an accepted connection.
    fn deliver(&self, shard_id: u32, message: Message);

    /// `bytes` (one frame, header included) arrived from node `from` for
    /// `shard_id`, on a link whose handshake `accept` took. For metrics; by default
    /// nothing.
    fn received_bytes(&self, shard_id: u32, from: NodeId, bytes: u64) {
        let _ = (shard_id, from, bytes);
    }
}

/// Close requests waiting for the acceptor; more are dropped (the link closes at
/// the first, and its peer reconnects).
const CLOSE_REQUESTS_MAX: usize = 1024;

/// Asks a node's peer acceptor, from any thread, to close the inbound connections
/// (both lanes) of one peer's link to one shard: the shard that refused a message
/// from that peer runs on its own thread, while the acceptor runs on shard 0's.
#[derive(Clone, Debug)]
pub struct LinkCloser {
    requests: flume::Sender<(NodeId, u32)>,
}

impl LinkCloser {
    /// Closes the connections from `peer` to `shard_id` that are open when the
    /// acceptor takes the request; the peer reconnects as after any lost connection.
    pub fn close(&self, peer: NodeId, shard_id: u32) {
        let _ = self.requests.try_send((peer, shard_id));
    }
}

/// The acceptor's end of a [`LinkCloser`].
pub struct CloseRequests(flume::Receiver<(NodeId, u32)>);

/// A closer for the shards and its requests for [`PeerAcceptor::closing_on`].
pub fn link_closer() -> (LinkCloser, CloseRequests) {
    let (requests, receiver) = flume::bounded(CLOSE_REQUESTS_MAX);
    (LinkCloser { requests }, CloseRequests(receiver))
}

/// Counters of a peer acceptor.
#[derive(Debug, Default)]
pub struct AcceptorStats {
    pub connections_open: Cell<u64>,
    pub handshakes_refused_total: Cell<u64>,
    pub connections_failed_total: Cell<u64>,
    pub messages_received_total: Cell<u64>,
    pub bytes_received_total: Cell<u64>,
    /// Connections closed because their shard refused a message on them.
    pub links_closed_for_refusal_total: Cell<u64>,
}

/// Accepts peer connections, checks their handshake, and delivers their messages.
pub struct PeerAcceptor<H: PeerHandler> {
    listener: TcpListener,
    handler: Rc<H>,
    config: Rc<PeerConfig>,
    stats: Rc<AcceptorStats>,
    active: Rc<ActiveLinks>,
    close_requests: Option<CloseRequests>,
}

type LinkKey = (NodeId, u32, Lane);

/// The established inbound connection of each (node, shard, lane). A peer that
/// reconnects has given up on its old connection (it crashed, or the network dropped
/// it without telling us), so a new handshake closes the old one: half-open
/// connections cannot pile up until `connections_max` refuses real peers.
#[derive(Default)]
struct ActiveLinks {
    /// (peer node, shard, lane) -> (connection id, its "close now" signal).
    by_key: RefCell<HashMap<LinkKey, (u64, Rc<CloseSignal>)>>,
    next_id: Cell<u64>,
}

/// Tells a connection's task to close it: it was replaced by a newer connection,
/// or (`refused`) its shard refused a message that came on it.
#[derive(Default)]
struct CloseSignal {
    wake: Notify,
    refused: Cell<bool>,
}

impl ActiveLinks {
    /// Closes both lanes of `peer`'s link to `shard_id`, for a refused message.
    fn close_refused(&self, peer: NodeId, shard_id: u32) {
        for lane in [Lane::Control, Lane::Bulk] {
            if let Some((_, signal)) = self.by_key.borrow().get(&(peer, shard_id, lane)) {
                signal.refused.set(true);
                signal.wake.notify();
            }
        }
    }
}

impl<H: PeerHandler> PeerAcceptor<H> {
    pub fn bind(
        addr: SocketAddr,
        config: Rc<PeerConfig>,
        handler: Rc<H>,
    ) -> io::Result<PeerAcceptor<H>> {
        Ok(PeerAcceptor {
            listener: super::conn::listen_exclusive(addr)?,
            handler,
            config,
            stats: Rc::new(AcceptorStats::default()),
            active: Rc::new(ActiveLinks::default()),
            close_requests: None,
        })
    }

    /// Closes links on the requests of `requests`' [`LinkCloser`].
    pub fn closing_on(mut self, requests: CloseRequests) -> PeerAcceptor<H> {
        self.close_requests = Some(requests);
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr().map_err(io::Error::from)
    }

    pub fn stats(&self) -> Rc<AcceptorStats> {
        self.stats.clone()
    }

    /// Accepts connections forever, each served by its own task.
    pub async fn run(mut self) {
        if let Some(CloseRequests(requests)) = self.close_requests.take() {
            let active = self.active.clone();
            glommio::spawn_local(async move {
                while let Ok((peer, shard_id)) = requests.recv_async().await {
                    active.close_refused(peer, shard_id);
                }
            })
            .detach();
        }
        loop {
            let stream = super::conn::accept_retrying(&self.listener, "peer acceptor").await;
            if self.stats.connections_open.get() as usize >= self.config.connections_max {
                log::warn!(
                    "peer acceptor: refusing connection: {} open",
                    self.config.connections_max
                );
                continue;
            }
            bump(&self.stats.connections_open, 1);
            let (handler, config, stats, active) = (
                self.handler.clone(),
                self.config.clone(),
                self.stats.clone(),
                self.active.clone(),
            );
            glommio::spawn_local(async move {
                serve_peer(stream, &*handler, &config, &stats, &active).await;
                stats.connections_open.set(stats.connections_open.get() - 1);
            })
            .detach();
        }
    }
}

async fn serve_peer<H: PeerHandler>(
    mut stream: TcpStream,
    handler: &H,
    config: &PeerConfig,
    stats: &AcceptorStats,
    active: &ActiveLinks,
) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown peer".to_string(), |a| a.to_string());
    let handshake_timeout = Duration::from_millis(config.handshake_timeout_ms);
    let frame_timeout = Duration::from_millis(config.frame_timeout_ms);
    let write_timeout = Duration::from_millis(config.write_timeout_ms);
    let mut reader = FrameReader::with_read_chunk(
        &mut stream,
        config.frame_body_bytes_max,
        config.read_chunk_bytes,
    );

    let started = Instant::now();
    let first = reader
        .next_frame(Some(handshake_timeout), handshake_timeout)
        .await;
    let refusal: Result<Hello, String> = match first {
        Ok(Some(frame)) if frame.kind == FrameKind::PeerHello => match decode_hello(&frame) {
            Ok(h) if h.protocol_version != PROTOCOL_VERSION => Err(format!(
                "protocol version {} is not supported; this node speaks {PROTOCOL_VERSION}",
                h.protocol_version
            )),
            Ok(h) if h.cluster_id != config.cluster_id => Err(format!(
                "cluster id mismatch: you are in cluster {:#x}, this node is in cluster {:#x}",
                h.cluster_id, config.cluster_id
            )),
            Ok(h) if h.peer_node_id != config.node_id => Err(format!(
                "node id mismatch: you dialled node {}, this is node {}",
                h.peer_node_id, config.node_id
            )),
            Ok(h) => handler.accept(&h).map(|()| h),
            Err(e) => Err(format!("bad handshake: {e}")),
        },
        Ok(Some(frame)) => Err(format!("expected PeerHello first, got {:?}", frame.kind)),
        Ok(None) => {
            log::debug!("peer {peer}: closed before handshake");
            return;
        }
        Err(ConnError::Frame(FrameError::UnsupportedVersion { found })) => Err(format!(
            "protocol version {found} is not supported; this node speaks {PROTOCOL_VERSION}"
        )),
        Err(e) => Err(format!("bad handshake: {e}")),
    };
    let hello = match refusal {
        Ok(h) => h,
        Err(reason) => {
            bump(&stats.handshakes_refused_total, 1);
            log::warn!("peer {peer}: refusing link: {reason}");
            let mut buf = BytesMut::new();
            encode_refused(&mut buf, &reason);
            let left = handshake_timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(1));
            let _ = write_all_within(reader.inner_mut(), &buf, left).await;
            return;
        }
    };
    let ack = Hello {
        cluster_id: config.cluster_id,
        node_id: config.node_id,
        peer_node_id: hello.node_id,
        shard_id: hello.shard_id,
        lane: hello.lane,
        protocol_version: PROTOCOL_VERSION,
    };
    let mut buf = BytesMut::new();
    encode_hello(&mut buf, FrameKind::PeerHelloAck, &ack);
    if let Err(e) = write_all_within(reader.inner_mut(), &buf, write_timeout).await {
        log::warn!("peer {peer}: handshake answer failed: {e}");
        return;
    }
    log::info!(
        "peer {peer}: link from node {} shard {} {:?} lane established",
        hello.node_id,
        hello.shard_id,
        hello.lane
    );

    let key = (hello.node_id, hello.shard_id, hello.lane);
    let id = active.next_id.get();
    active.next_id.set(id + 1);
    let signal = Rc::new(CloseSignal::default());
    if let Some((_, old)) = active.by_key.borrow_mut().insert(key, (id, signal.clone())) {
        old.wake.notify();
    }
    let failure = loop {
        let next = futures_lite::future::or(reader.next_frame(None, frame_timeout), async {
            signal.wake.notified().await;
            Err(ConnError::Closed)
        })
        .await;
        let frame = match next {
            Ok(Some(f)) => f,
            Ok(None) => break None,
            Err(ConnError::Closed) if signal.refused.get() => {
                bump(&stats.links_closed_for_refusal_total, 1);
                log::warn!(
                    "peer {peer} (node {} shard {} {:?} lane): closing link: the shard refused a message on it",
                    hello.node_id,
                    hello.shard_id,
                    hello.lane
                );
                break None;
            }
            Err(ConnError::Closed) => {
                log::info!(
                    "peer {peer} (node {} shard {} {:?} lane): replaced by a newer connection",
                    hello.node_id,
                    hello.shard_id,
                    hello.lane
                );
                break None;
            }
            Err(e) => break Some(e),
        };
        let message = match decode_message(&frame) {
            Ok(m) => m,
            Err(e) => break Some(e.into()),
        };
        if message.from != hello.node_id || message.to != config.node_id {
            break Some(ConnError::Frame(FrameError::Malformed {
                kind: frame.kind,
                reason: "message from/to does not match the link's handshake",
            }));
        }
        bump(&stats.messages_received_total, 1);
        let frame_bytes = (FRAME_HEADER_BYTES + frame.body.len()) as u64;
        handler.received_bytes(hello.shard_id, hello.node_id, frame_bytes);
        handler.deliver(hello.shard_id, message);
    };
    {
        let mut by_key = active.by_key.borrow_mut();
        if by_key.get(&key).is_some_and(|(owner, _)| *owner == id) {
            by_key.remove(&key);
        }
    }
    bump(&stats.bytes_received_total, reader.bytes_read_total());
    if let Some(e) = failure {
        bump(&stats.connections_failed_total, 1);
        log::warn!(
            "peer {peer} (node {} shard {}): closing link: {e}",
            hello.node_id,
            hello.shard_id
        );
    }
}
