//! The outbound half of the peer transport: one [`PeerLink`] per (local shard,
//! remote node), two lanes, bounded queues, reconnect with jittered backoff.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;

use crate::tls::{Stream, peer_name};
use glommio::task::JoinHandle;

use super::super::conn::{ConnError, FrameReader, write_all_within};
use super::super::frame::{FRAME_HEADER_BYTES, FrameError, FrameKind, PROTOCOL_VERSION};
use super::super::peer_msg::{
    Hello, Lane, decode_hello, decode_refused, encode_hello, encode_message, message_frame_bytes,
};
use super::super::signal::Notify;
use super::{LinkError, PeerConfig, SendError};
use crate::engine::{Message, MessageBody, NodeId};

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

/// A connection to `target`: TCP, then TLS when the node has it, checking that the
/// other end's certificate names the node dialled.
async fn open(config: &PeerConfig, target: Target) -> Result<Stream, LinkError> {
    let addr = target.peer_addr;
    let tcp = TcpStream::connect_timeout(addr, Duration::from_millis(config.connect_timeout_ms))
        .await
        .map_err(|e| LinkError::Connect {
            addr,
            source: e.into(),
        })?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &config.tls else {
        return Ok(Stream::plain(tcp));
    };
    let name = peer_name(target.peer_node_id, config.cluster_id);
    let name = ServerName::try_from(name).expect("peer names are DNS names");
    let deadline = Instant::now() + Duration::from_millis(config.handshake_timeout_ms);
    Stream::connect_tls(tcp, tls.configs().peer_client.clone(), name, deadline)
        .await
        .map_err(|source| LinkError::Tls { addr, source })
}

async fn connect(config: &PeerConfig, lane: Lane, target: Target) -> Result<Stream, LinkError> {
    let addr = target.peer_addr;
    let mut stream = open(config, target).await?;
    let hello = Hello {
        cluster_id: config.cluster_id,
        node_id: config.node_id,
        peer_node_id: target.peer_node_id,
        shard_id: target.shard_id,
        lane,
        protocol_version: PROTOCOL_VERSION,
        shard_count: config.shard_count,
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
    } else if ack.shard_count != config.shard_count {
        Some(format!(
            "shard count {}, ours is {}",
            ack.shard_count, config.shard_count
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
    stream: &mut Stream,
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
