//! The inbound half of the peer transport. The node's peer port is accepted on
//! shard 0; each connection is placed on the shard its handshake names
//! ([`crate::transport::placement`]) and served there by that shard's
//! [`PeerService`]: the handshake is checked, then every message is decoded,
//! checksummed and delivered on the core that owns the Raft group it is for.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::net::TcpListener;

use super::super::conn::{ConnError, FrameReader, write_all_within};
use super::super::count::{ConnectionCounts, Count};
use super::super::frame::{FRAME_HEADER_BYTES, FrameError, FrameKind, PROTOCOL_VERSION};
use super::super::peer_msg::{
    Hello, Lane, decode_hello, decode_message, encode_hello, encode_refused,
};
use super::super::placement::{
    AcceptTls, Accepted, DoorQueue, Doors, Placing, Received, TlsPort, connections_held,
    peer_shard, place, take_handed_in,
};
use super::super::signal::Notify;
use super::PeerConfig;
use crate::engine::{Message, NodeId};
use crate::tls::{Stream, check_peer};

/// Receives peer messages. Implemented by the runtime; called on the executor that
/// serves the connection, which is the one that owns `shard_id` when the node
/// places connections.
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

/// Close requests waiting for the service; more are dropped (the link closes at
/// the first, and its peer reconnects).
const CLOSE_REQUESTS_MAX: usize = 1024;

/// Asks a peer service to close the inbound connections (both lanes) of one peer's
/// link to one shard, because that shard refused a message from that peer. The
/// shard's event loop holds the closer; the connections belong to the service.
#[derive(Clone, Debug)]
pub struct LinkCloser {
    requests: flume::Sender<(NodeId, u32)>,
}

impl LinkCloser {
    /// Closes the connections from `peer` to `shard_id` that are open when the
    /// service takes the request; the peer reconnects as after any lost connection.
    pub fn close(&self, peer: NodeId, shard_id: u32) {
        let _ = self.requests.try_send((peer, shard_id));
    }
}

/// The service's end of a [`LinkCloser`].
pub struct CloseRequests(flume::Receiver<(NodeId, u32)>);

/// A closer for a shard and its requests for [`PeerService::closing_on`].
pub fn link_closer() -> (LinkCloser, CloseRequests) {
    let (requests, receiver) = flume::bounded(CLOSE_REQUESTS_MAX);
    (LinkCloser { requests }, CloseRequests(receiver))
}

/// Counters of one executor's peer service (and, on the accepting executor, of the
/// acceptor), readable from any thread.
#[derive(Debug, Default)]
pub struct AcceptorStats {
    /// Connections served, being placed, handed in.
    pub connections: Arc<ConnectionCounts>,
    pub handshakes_refused_total: Count,
    pub connections_failed_total: Count,
    pub messages_received_total: Count,
    pub bytes_received_total: Count,
    /// Connections closed because their shard refused a message on them.
    pub links_closed_for_refusal_total: Count,
}

type LinkKey = (NodeId, u32, Lane);

/// The established inbound connection of each (node, shard, lane). A peer that
/// reconnects has given up on its old connection (it crashed, or the network dropped
/// it without telling us), so a new handshake closes the old one: half-open
/// connections cannot pile up until `connections_max` refuses real peers. A key's
/// connections are always placed on the same executor, so each keeps its own map.
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

    /// Makes a new connection the one of `key`, closing the one it replaces.
    fn register(&self, key: LinkKey) -> (u64, Rc<CloseSignal>) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let signal = Rc::new(CloseSignal::default());
        if let Some((_, old)) = self.by_key.borrow_mut().insert(key, (id, signal.clone())) {
            old.wake.notify();
        }
        (id, signal)
    }

    /// Forgets connection `id` of `key`, unless a newer one has replaced it.
    fn unregister(&self, key: LinkKey, id: u64) {
        let mut by_key = self.by_key.borrow_mut();
        if by_key.get(&key).is_some_and(|(owner, _)| *owner == id) {
            by_key.remove(&key);
        }
    }
}

/// Serves inbound peer connections on one executor, whichever accepted them.
pub struct PeerService<H: PeerHandler> {
    handler: Rc<H>,
    config: Rc<PeerConfig>,
    stats: Arc<AcceptorStats>,
    active: Rc<ActiveLinks>,
}

impl<H: PeerHandler> PeerService<H> {
    pub fn new(config: Rc<PeerConfig>, handler: Rc<H>) -> Rc<PeerService<H>> {
        Self::with_stats(config, handler, Arc::default())
    }

    /// A service counting into `stats`, which the metrics server may already hold.
    pub fn with_stats(
        config: Rc<PeerConfig>,
        handler: Rc<H>,
        stats: Arc<AcceptorStats>,
    ) -> Rc<PeerService<H>> {
        Rc::new(PeerService {
            handler,
            config,
            stats,
            active: Rc::new(ActiveLinks::default()),
        })
    }

    pub fn stats(&self) -> Arc<AcceptorStats> {
        self.stats.clone()
    }

    /// Closes links on the requests of `requests`' [`LinkCloser`], from a task of
    /// its own.
    pub fn closing_on(&self, CloseRequests(requests): CloseRequests) {
        let active = self.active.clone();
        glommio::spawn_local(async move {
            while let Ok((peer, shard_id)) = requests.recv_async().await {
                active.close_refused(peer, shard_id);
            }
        })
        .detach();
    }

    /// Serves a connection (its stream and the bytes already read off it) in a
    /// task of its own until it closes.
    pub fn serve(self: &Rc<Self>, (stream, received): Accepted) {
        let (service, serving) = (self.clone(), self.stats.connections.serving());
        glommio::spawn_local(async move {
            serve_peer(stream, &received, &service).await;
            drop(serving);
        })
        .detach();
    }

    /// Serves the connections other executors hand to this one.
    pub async fn serve_handed_in(self: Rc<Self>, queue: DoorQueue) {
        let counts = self.stats.connections.clone();
        take_handed_in(queue, &counts, |stream| self.serve(stream)).await;
    }
}

/// Accepts peer connections and places each on the executor of the shard its
/// handshake names (or, without doors, serves them all here).
pub struct PeerAcceptor<H: PeerHandler> {
    listener: TcpListener,
    service: Rc<PeerService<H>>,
    placing: Option<Placing>,
    /// Every executor's connections: `connections_max` counts the whole node's.
    all_connections: Vec<Arc<ConnectionCounts>>,
}

impl<H: PeerHandler> PeerAcceptor<H> {
    pub fn bind(
        addr: SocketAddr,
        config: Rc<PeerConfig>,
        handler: Rc<H>,
    ) -> io::Result<PeerAcceptor<H>> {
        Self::bind_service(addr, PeerService::new(config, handler))
    }

    /// Binds `addr` for `service`, which serves what is not placed elsewhere.
    pub fn bind_service(addr: SocketAddr, service: Rc<PeerService<H>>) -> io::Result<Self> {
        Ok(PeerAcceptor {
            listener: super::super::conn::listen_exclusive(addr)?,
            all_connections: vec![service.stats.connections.clone()],
            service,
            placing: None,
        })
    }

    /// Places each connection on the executor of the shard its handshake names;
    /// `all_connections` are those of every executor's service.
    pub fn placing(mut self, doors: Doors, all_connections: Vec<Arc<ConnectionCounts>>) -> Self {
        self.placing = Some(Placing {
            doors,
            owner_of: peer_shard,
            wait: Duration::from_millis(self.service.config.handshake_timeout_ms),
        });
        self.all_connections = all_connections;
        self
    }

    /// Closes links on the requests of `requests`' [`LinkCloser`].
    pub fn closing_on(self, requests: CloseRequests) -> PeerAcceptor<H> {
        self.service.closing_on(requests);
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr().map_err(io::Error::from)
    }

    pub fn stats(&self) -> Arc<AcceptorStats> {
        self.service.stats()
    }

    /// Accepts connections forever, each placed and then served by a task.
    pub async fn run(self) {
        let stats = self.service.stats();
        let config = &self.service.config;
        let tls = config.tls.as_ref().map(|context| AcceptTls {
            context: context.clone(),
            wait: Duration::from_millis(config.handshake_timeout_ms),
            port: TlsPort::Peer,
        });
        loop {
            let stream = super::super::conn::accept_retrying(&self.listener, "peer acceptor").await;
            let max = self.service.config.connections_max;
            if connections_held(&self.all_connections, self.placing.as_ref()) as usize >= max {
                log::warn!("peer acceptor: refusing connection: {max} open");
                continue;
            }
            let (service, counts) = (self.service.clone(), stats.connections.clone());
            place(
                stream,
                self.placing.as_ref(),
                tls.as_ref(),
                counts,
                move |s| service.serve(s),
            );
        }
    }
}

/// Checks the first frame of a connection: the peer's hello, or why it is refused.
/// `Ok(None)`: the connection closed before saying anything.
fn check_hello(
    first: Result<Option<super::super::Frame>, ConnError>,
    config: &PeerConfig,
    handler: &impl PeerHandler,
) -> Result<Option<Hello>, String> {
    let frame = match first {
        Ok(Some(frame)) if frame.kind == FrameKind::PeerHello => frame,
        Ok(Some(frame)) => return Err(format!("expected PeerHello first, got {:?}", frame.kind)),
        Ok(None) => return Ok(None),
        Err(ConnError::Frame(FrameError::UnsupportedVersion { found })) => {
            return Err(format!(
                "protocol version {found} is not supported; this node speaks {PROTOCOL_VERSION}"
            ));
        }
        Err(e) => return Err(format!("bad handshake: {e}")),
    };
    match decode_hello(&frame) {
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
        Ok(h) if h.shard_count != config.shard_count => Err(format!(
            "shard count mismatch: you run {} shards, this node runs {}; every node of a \
             cluster must run the same number of shards",
            h.shard_count, config.shard_count
        )),
        Ok(h) => handler.accept(&h).map(|()| Some(h)),
        Err(e) => Err(format!("bad handshake: {e}")),
    }
}

/// Reads and answers the handshake; the peer's hello once the link is established.
async fn handshake<H: PeerHandler>(
    reader: &mut FrameReader<&mut Stream>,
    service: &PeerService<H>,
    peer: &str,
) -> Option<Hello> {
    let config = &service.config;
    let handshake_timeout = Duration::from_millis(config.handshake_timeout_ms);
    let started = Instant::now();
    let first = reader
        .next_frame(Some(handshake_timeout), handshake_timeout)
        .await;
    let mut buf = BytesMut::new();
    let checked = check_hello(first, config, &*service.handler).and_then(|hello| {
        match (hello, &config.tls) {
            // The certificate must name the node the hello claims to be.
            (Some(h), Some(_)) => {
                let cert = reader.inner_mut().peer_certificate();
                check_peer(cert, h.node_id, config.cluster_id).map(|()| Some(h))
            }
            (hello, _) => Ok(hello),
        }
    });
    let hello = match checked {
        Ok(Some(hello)) => hello,
        Ok(None) => {
            log::debug!("peer {peer}: closed before handshake");
            return None;
        }
        Err(reason) => {
            service.stats.handshakes_refused_total.add(1);
            log::warn!("peer {peer}: refusing link: {reason}");
            encode_refused(&mut buf, &reason);
            let left = handshake_timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(1));
            let _ = write_all_within(reader.inner_mut(), &buf, left).await;
            return None;
        }
    };
    let ack = Hello {
        cluster_id: config.cluster_id,
        node_id: config.node_id,
        peer_node_id: hello.node_id,
        protocol_version: PROTOCOL_VERSION,
        shard_count: config.shard_count,
        ..hello
    };
    encode_hello(&mut buf, FrameKind::PeerHelloAck, &ack);
    let write_timeout = Duration::from_millis(config.write_timeout_ms);
    if let Err(e) = write_all_within(reader.inner_mut(), &buf, write_timeout).await {
        log::warn!("peer {peer}: handshake answer failed: {e}");
        return None;
    }
    log::info!(
        "peer {peer}: link from node {} shard {} {:?} lane established",
        hello.node_id,
        hello.shard_id,
        hello.lane
    );
    Some(hello)
}

async fn serve_peer<H: PeerHandler>(
    mut stream: Stream,
    received: &Received,
    service: &PeerService<H>,
) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown peer".to_string(), |a| a.to_string());
    let config = &service.config;
    let mut reader = FrameReader::with_read_chunk(
        &mut stream,
        config.frame_body_bytes_max,
        config.read_chunk_bytes,
    )
    .with_received(&received.bytes, received.since);
    let Some(hello) = handshake(&mut reader, service, &peer).await else {
        return;
    };
    let key = (hello.node_id, hello.shard_id, hello.lane);
    let (id, signal) = service.active.register(key);
    let failure = receive(&mut reader, service, &hello, &signal, &peer).await;
    service.active.unregister(key, id);
    let stats = &service.stats;
    stats.bytes_received_total.add(reader.bytes_read_total());
    if let Some(e) = failure {
        stats.connections_failed_total.add(1);
        log::warn!(
            "peer {peer} (node {} shard {}): closing link: {e}",
            hello.node_id,
            hello.shard_id
        );
    }
}

/// Delivers the messages of an established link until it ends; the error, if it
/// ended because of one.
async fn receive<H: PeerHandler>(
    reader: &mut FrameReader<&mut Stream>,
    service: &PeerService<H>,
    hello: &Hello,
    signal: &CloseSignal,
    peer: &str,
) -> Option<ConnError> {
    let (config, stats) = (&service.config, &service.stats);
    let frame_timeout = Duration::from_millis(config.frame_timeout_ms);
    let link = format!(
        "peer {peer} (node {} shard {} {:?} lane)",
        hello.node_id, hello.shard_id, hello.lane
    );
    loop {
        let next = futures_lite::future::or(reader.next_frame(None, frame_timeout), async {
            signal.wake.notified().await;
            Err(ConnError::Closed)
        })
        .await;
        let frame = match next {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(ConnError::Closed) if signal.refused.get() => {
                stats.links_closed_for_refusal_total.add(1);
                log::warn!("{link}: closing link: the shard refused a message on it");
                return None;
            }
            Err(ConnError::Closed) => {
                log::info!("{link}: replaced by a newer connection");
                return None;
            }
            Err(e) => return Some(e),
        };
        let message = match decode_message(&frame) {
            Ok(m) => m,
            Err(e) => return Some(e.into()),
        };
        if message.from != hello.node_id || message.to != config.node_id {
            return Some(ConnError::Frame(FrameError::Malformed {
                kind: frame.kind,
                reason: "message from/to does not match the link's handshake",
            }));
        }
        stats.messages_received_total.add(1);
        let frame_bytes = (FRAME_HEADER_BYTES + frame.body.len()) as u64;
        let handler = &service.handler;
        handler.received_bytes(hello.shard_id, hello.node_id, frame_bytes);
        handler.deliver(hello.shard_id, message);
    }
}
