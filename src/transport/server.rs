//! The client listener and the client service. The listener accepts connections
//! and places each on the executor that owns the partition it uses
//! ([`super::placement`]); the service of that executor serves it
//! ([`super::client_conn`]): it decodes requests, hands them to a
//! [`RequestHandler`] (the runtime in production, a fake in tests) and writes the
//! answers back.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::net::TcpListener;

use super::answer::Answer;
use super::client_msg::{ClientRequest, ClientResponse, ServerError};
use super::count::{ConnectionCounts, Count};
use super::frame::FRAME_BODY_BYTES_MAX_DEFAULT;
use super::placement::{
    AcceptTls, Accepted, DoorQueue, Doors, Placing, TlsPort, client_partition, connections_held,
    place, take_handed_in,
};
use crate::tls::TlsContext;

/// Serves client requests. Implemented by the runtime; `handle` runs on the executor
/// that accepted the connection and may await (for a commit, or for new data when a
/// read asks to wait). Futures need not be `Send`: this is thread-per-core.
#[allow(async_fn_in_trait)]
pub trait RequestHandler: 'static {
    async fn handle(&self, request: ClientRequest) -> Result<ClientResponse, ServerError>;

    /// Takes `request` to answer through `answer` without a task of its own (the
    /// runtime takes appends to the shard of this executor, which answers them when
    /// it decides), or gives both back to be awaited through
    /// [`RequestHandler::handle`] in a task. A handler that takes an answer must
    /// time it ([`Answer::time_out`]) unless it answers at once.
    fn take(&self, request: ClientRequest, answer: Answer) -> Option<(ClientRequest, Answer)> {
        Some((request, answer))
    }
}

/// How long a request may wait for its answer beyond what the request itself asks
/// to wait (a read's `wait_timeout_ms`); past it the client hears Timeout, and the
/// outcome of an append is open.
pub const ANSWER_TIMEOUT_MS: u64 = 10_000;

/// Limits of the client listener.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest request body accepted; a header claiming more closes the connection
    /// before anything is allocated for the body.
    pub frame_body_bytes_max: u32,
    /// Requests of one connection being handled at once. When reached, the listener
    /// stops reading that connection (TCP back-pressure) until one completes.
    pub inflight_requests_max: usize,
    /// Bytes the requests of one connection may hold while being handled: each
    /// counts its body plus the largest answer it may get (a read its `max_bytes`,
    /// capped by the frame limit). A request that would pass this waits, unless it
    /// is the connection's only one.
    pub inflight_bytes_max: usize,
    /// Encoded answers of one connection not yet written. Past this the listener
    /// stops taking that connection's requests until the client reads; one that
    /// does not read within `write_timeout_ms` is cut off.
    pub unwritten_bytes_max: usize,
    /// Reads that may wait for new records (`wait_timeout_ms` > 0) in flight on one
    /// connection; more are answered Overloaded at once.
    pub waiting_reads_per_connection_max: usize,
    /// A connection with no request outstanding and no byte received for this long is
    /// closed.
    pub idle_timeout_ms: u64,
    /// A frame must arrive whole within this long of its first byte (slowloris guard).
    pub frame_timeout_ms: u64,
    /// Writing one batch of answers must finish within this long (a client that does
    /// not read its answers is disconnected).
    pub write_timeout_ms: u64,
    /// A request whose answer a handler took ([`RequestHandler::take`]) is answered
    /// Timeout by its connection if no answer comes within this long.
    pub answer_timeout_ms: u64,
    /// Connections beyond this many are closed as soon as they are accepted.
    pub connections_max: usize,
    /// Receive chunk per connection (see `FrameReader::with_read_chunk`): small,
    /// because client connections may be many; large appends bypass it anyway.
    pub read_chunk_bytes: usize,
    /// TLS on every connection, and the roles of client principals; None serves
    /// plaintext and lets every client do everything.
    pub tls: Option<Arc<TlsContext>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            frame_body_bytes_max: FRAME_BODY_BYTES_MAX_DEFAULT,
            inflight_requests_max: 128,
            inflight_bytes_max: 4 * FRAME_BODY_BYTES_MAX_DEFAULT as usize,
            unwritten_bytes_max: 2 * FRAME_BODY_BYTES_MAX_DEFAULT as usize,
            waiting_reads_per_connection_max: 16,
            idle_timeout_ms: 300_000,
            frame_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            answer_timeout_ms: ANSWER_TIMEOUT_MS,
            connections_max: 10_000,
            read_chunk_bytes: 16 * 1024,
            tls: None,
        }
    }
}

/// Counters of one executor's client service (and, on the accepting executor, of
/// its listener), readable from any thread by the metrics server and by tests.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections served, being placed, handed in.
    pub connections: Arc<ConnectionCounts>,
    pub connections_accepted_total: Count,
    pub connections_refused_total: Count,
    /// Connections closed because the client broke the protocol or a timeout.
    pub connections_failed_total: Count,
    pub requests_total: Count,
    /// Requests answered with InvalidRequest because their body did not decode.
    pub requests_invalid_total: Count,
    /// Requests refused because the client's principal lacks the role.
    pub requests_unauthorized_total: Count,
    pub bytes_received_total: Count,
}

/// Serves client connections on one executor, whichever executor accepted them.
pub struct ClientService<H: RequestHandler> {
    handler: Rc<H>,
    config: Rc<ServerConfig>,
    stats: Arc<ListenerStats>,
}

impl<H: RequestHandler> ClientService<H> {
    pub fn new(config: ServerConfig, handler: Rc<H>) -> Rc<ClientService<H>> {
        Self::with_stats(config, handler, Arc::default())
    }

    /// A service counting into `stats`, which the metrics server may already hold.
    pub fn with_stats(
        config: ServerConfig,
        handler: Rc<H>,
        stats: Arc<ListenerStats>,
    ) -> Rc<ClientService<H>> {
        Rc::new(ClientService {
            handler,
            config: Rc::new(config),
            stats,
        })
    }

    pub fn stats(&self) -> Arc<ListenerStats> {
        self.stats.clone()
    }

    /// Serves a connection (its stream and the bytes already read off it) in a
    /// task of its own until it closes.
    pub fn serve(self: &Rc<Self>, (stream, received): Accepted) {
        let (handler, config, stats) = (
            self.handler.clone(),
            self.config.clone(),
            self.stats.clone(),
        );
        let serving = stats.connections.serving();
        glommio::spawn_local(async move {
            super::client_conn::serve_connection(stream, &received, handler, config, stats).await;
            drop(serving);
        })
        .detach();
    }

    /// Serves the connections other executors hand to this one, until they all
    /// stop handing.
    pub async fn serve_handed_in(self: Rc<Self>, queue: DoorQueue) {
        let counts = self.stats.connections.clone();
        take_handed_in(queue, &counts, |stream| self.serve(stream)).await;
    }
}

/// A bound client listener. `run` accepts until the task is dropped.
pub struct ClientListener<H: RequestHandler> {
    listener: TcpListener,
    service: Rc<ClientService<H>>,
    /// Where connections go; None serves all of them here.
    placing: Option<Placing>,
    /// Every executor's connections, this one's included: `connections_max` counts
    /// the connections of the whole node.
    all_connections: Vec<Arc<ConnectionCounts>>,
}

impl<H: RequestHandler> ClientListener<H> {
    /// Binds `addr` (port 0 picks a free port; see [`ClientListener::local_addr`])
    /// and serves every connection on this executor.
    pub fn bind(
        addr: SocketAddr,
        config: ServerConfig,
        handler: Rc<H>,
    ) -> io::Result<ClientListener<H>> {
        Self::bind_service(addr, ClientService::new(config, handler))
    }

    /// Binds `addr` for `service`, which serves what is not placed elsewhere.
    pub fn bind_service(
        addr: SocketAddr,
        service: Rc<ClientService<H>>,
    ) -> io::Result<ClientListener<H>> {
        let listener = super::conn::listen_exclusive(addr)?;
        let all_connections = vec![service.stats.connections.clone()];
        Ok(ClientListener {
            listener,
            service,
            placing: None,
            all_connections,
        })
    }

    /// Places each connection on the executor that owns the partition of its first
    /// request; `all_connections` are those of every executor's service.
    pub fn placing(mut self, doors: Doors, all_connections: Vec<Arc<ConnectionCounts>>) -> Self {
        self.placing = Some(Placing {
            doors,
            owner_of: client_partition,
            wait: Duration::from_millis(self.service.config.frame_timeout_ms),
        });
        self.all_connections = all_connections;
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr().map_err(io::Error::from)
    }

    pub fn stats(&self) -> Arc<ListenerStats> {
        self.service.stats()
    }

    /// Accepts connections forever, each placed and then served by a task.
    pub async fn run(self) {
        let stats = self.service.stats();
        let config = &self.service.config;
        let tls = config.tls.as_ref().map(|context| AcceptTls {
            context: context.clone(),
            wait: Duration::from_millis(config.frame_timeout_ms),
            port: TlsPort::Client,
        });
        loop {
            let stream = super::conn::accept_retrying(&self.listener, "client listener").await;
            let held = connections_held(&self.all_connections, self.placing.as_ref());
            if held as usize >= self.service.config.connections_max {
                stats.connections_refused_total.add(1);
                log::warn!(
                    "client listener: refusing connection from {:?}: {} connections open",
                    stream.peer_addr().ok(),
                    self.service.config.connections_max
                );
                drop(stream);
                continue;
            }
            stats.connections_accepted_total.add(1);
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
