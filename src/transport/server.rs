//! The client listener: accepts client connections, decodes requests, hands them to a
//! [`RequestHandler`] (the runtime in production, a fake in tests) and writes the
//! answers back, many per write. Each connection's memory is bounded: one receive
//! buffer of at most one frame plus a read chunk, at most `inflight_requests_max`
//! requests being handled, and their encoded answers.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::io::split;
use glommio::net::{TcpListener, TcpStream};

use super::client_msg::{
    ClientRequest, ClientResponse, ServerError, decode_request, encode_response,
};
use super::conn::{ConnError, FrameReader, Notify, write_all_within};
use super::frame::{FRAME_BODY_BYTES_MAX_DEFAULT, FRAME_HEADER_BYTES, FrameError};

/// Serves client requests. Implemented by the runtime; `handle` runs on the executor
/// that accepted the connection and may await (for a commit, or for new data when a
/// read asks to wait). Futures need not be `Send`: this is thread-per-core.
#[allow(async_fn_in_trait)]
pub trait RequestHandler: 'static {
    async fn handle(&self, request: ClientRequest) -> Result<ClientResponse, ServerError>;
}

/// Limits of the client listener.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest request body accepted; a header claiming more closes the connection
    /// before anything is allocated for the body.
    pub frame_body_bytes_max: u32,
    /// Requests of one connection being handled at once. When reached, the listener
    /// stops reading that connection (TCP back-pressure) until one completes.
    pub inflight_requests_max: usize,
    /// A connection with no request outstanding and no byte received for this long is
    /// closed.
    pub idle_timeout_ms: u64,
    /// A frame must arrive whole within this long of its first byte (slowloris guard).
    pub frame_timeout_ms: u64,
    /// Writing one batch of answers must finish within this long (a client that does
    /// not read its answers is disconnected).
    pub write_timeout_ms: u64,
    /// Connections beyond this many are closed as soon as they are accepted.
    pub connections_max: usize,
    /// Receive chunk per connection (see `FrameReader::with_read_chunk`): small,
    /// because client connections may be many; large appends bypass it anyway.
    pub read_chunk_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            frame_body_bytes_max: FRAME_BODY_BYTES_MAX_DEFAULT,
            inflight_requests_max: 128,
            idle_timeout_ms: 300_000,
            frame_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            connections_max: 10_000,
            read_chunk_bytes: 16 * 1024,
        }
    }
}

/// Counters of one listener, readable by the runtime (metrics) and by tests.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub connections_open: Cell<u64>,
    pub connections_accepted_total: Cell<u64>,
    pub connections_refused_total: Cell<u64>,
    /// Connections closed because the client broke the protocol or a timeout.
    pub connections_failed_total: Cell<u64>,
    pub requests_total: Cell<u64>,
    /// Requests answered with InvalidRequest because their body did not decode.
    pub requests_invalid_total: Cell<u64>,
    pub bytes_received_total: Cell<u64>,
}

fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get() + by);
}

/// A bound client listener. `run` accepts until the task is dropped.
pub struct ClientListener<H: RequestHandler> {
    listener: TcpListener,
    handler: Rc<H>,
    config: Rc<ServerConfig>,
    stats: Rc<ListenerStats>,
}

impl<H: RequestHandler> ClientListener<H> {
    /// Binds `addr` (port 0 picks a free port; see [`ClientListener::local_addr`]).
    pub fn bind(
        addr: SocketAddr,
        config: ServerConfig,
        handler: Rc<H>,
    ) -> io::Result<ClientListener<H>> {
        let listener = super::conn::listen_exclusive(addr)?;
        Ok(ClientListener {
            listener,
            handler,
            config: Rc::new(config),
            stats: Rc::new(ListenerStats::default()),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr().map_err(io::Error::from)
    }

    pub fn stats(&self) -> Rc<ListenerStats> {
        self.stats.clone()
    }

    /// Accepts connections forever, each served by its own task.
    pub async fn run(self) {
        loop {
            let stream = super::conn::accept_retrying(&self.listener, "client listener").await;
            if self.stats.connections_open.get() as usize >= self.config.connections_max {
                bump(&self.stats.connections_refused_total, 1);
                log::warn!(
                    "client listener: refusing connection from {:?}: {} connections open",
                    stream.peer_addr().ok(),
                    self.config.connections_max
                );
                drop(stream);
                continue;
            }
            bump(&self.stats.connections_accepted_total, 1);
            bump(&self.stats.connections_open, 1);
            let (handler, config, stats) = (
                self.handler.clone(),
                self.config.clone(),
                self.stats.clone(),
            );
            glommio::spawn_local(async move {
                serve_connection(stream, handler, config, stats.clone()).await;
                stats.connections_open.set(stats.connections_open.get() - 1);
            })
            .detach();
        }
    }
}

/// State shared by one connection's reader, writer and request tasks.
struct Shared {
    /// Encoded answers waiting for the writer.
    out: RefCell<BytesMut>,
    inflight: Cell<usize>,
    /// Set when the connection is ending; `abort` also drops unanswered requests.
    closing: Cell<bool>,
    abort: Cell<bool>,
    writer_wake: Notify,
    reader_wake: Notify,
}

async fn serve_connection<H: RequestHandler>(
    stream: TcpStream,
    handler: Rc<H>,
    config: Rc<ServerConfig>,
    stats: Rc<ListenerStats>,
) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown peer".to_string(), |a| a.to_string());
    let _ = stream.set_nodelay(true);
    let (read_half, mut write_half) = split(stream);
    let shared = Rc::new(Shared {
        out: RefCell::new(BytesMut::new()),
        inflight: Cell::new(0),
        closing: Cell::new(false),
        abort: Cell::new(false),
        writer_wake: Notify::default(),
        reader_wake: Notify::default(),
    });

    let writer_shared = shared.clone();
    let write_timeout = Duration::from_millis(config.write_timeout_ms);
    let writer_peer = peer.clone();
    let writer = glommio::spawn_local(async move {
        let s = writer_shared;
        loop {
            let batch = s.out.borrow_mut().split();
            if !batch.is_empty() {
                if let Err(e) = write_all_within(&mut write_half, &batch, write_timeout).await {
                    log::warn!("client {writer_peer}: closing connection: {e}");
                    s.abort.set(true);
                    s.closing.set(true);
                    s.reader_wake.notify();
                    return;
                }
                continue;
            }
            if s.abort.get() || (s.closing.get() && s.inflight.get() == 0) {
                use futures_lite::io::AsyncWriteExt;
                let _ = write_half.close().await;
                return;
            }
            s.writer_wake.notified().await;
        }
    });

    let mut reader = FrameReader::with_read_chunk(
        read_half,
        config.frame_body_bytes_max,
        config.read_chunk_bytes,
    );
    let idle_timeout = Duration::from_millis(config.idle_timeout_ms);
    let frame_timeout = Duration::from_millis(config.frame_timeout_ms);
    // Bytes already added to `stats.bytes_received_total`, which grows per frame so
    // that long-lived connections show up while they live.
    let mut counted_bytes = 0;
    let failure: Option<ConnError> = loop {
        if shared.closing.get() {
            break None;
        }
        if shared.inflight.get() >= config.inflight_requests_max {
            shared.reader_wake.notified().await;
            continue;
        }
        // Idle time only counts while nothing is outstanding: a client waiting for a
        // long-polling read is not idle.
        let idle = (shared.inflight.get() == 0).then_some(idle_timeout);
        let next = futures_lite::future::or(reader.next_frame(idle, frame_timeout), async {
            loop {
                if shared.closing.get() {
                    return Err(ConnError::Closed);
                }
                shared.reader_wake.notified().await;
            }
        })
        .await;
        bump(
            &stats.bytes_received_total,
            reader.bytes_read_total() - counted_bytes,
        );
        counted_bytes = reader.bytes_read_total();
        let frame = match next {
            Ok(Some(frame)) => frame,
            Ok(None) => break None,
            Err(ConnError::Closed) => break None,
            Err(e) => break Some(e),
        };
        if !frame.kind.is_client_request() {
            // Framing is intact but this is not something a client may send: answer
            // and close, since a peer frame here means a misrouted or confused sender.
            break Some(ConnError::Frame(FrameError::Unexpected {
                kind: frame.kind,
                context: "not a client request",
            }));
        }
        bump(&stats.requests_total, 1);
        let request_id = frame.request_id;
        let request = match decode_request(&frame) {
            Ok(r) => r,
            Err(e) => {
                // The frame's checksum held, so framing is intact: answer this request
                // with the reason and keep serving the connection.
                bump(&stats.requests_invalid_total, 1);
                log::info!("client {peer}: invalid request {request_id}: {e}");
                let answer = Err(ServerError::InvalidRequest {
                    reason: e.to_string(),
                });
                encode_response(&mut shared.out.borrow_mut(), request_id, &answer);
                shared.writer_wake.notify();
                continue;
            }
        };
        shared.inflight.set(shared.inflight.get() + 1);
        let (s, h) = (shared.clone(), handler.clone());
        let body_bytes_max = config.frame_body_bytes_max;
        glommio::spawn_local(async move {
            let answer = h.handle(request).await;
            if !s.abort.get() {
                let mut out = s.out.borrow_mut();
                let start = out.len();
                encode_response(&mut out, request_id, &answer);
                // An answer larger than the frame limit would be refused by a client
                // with the same limit and cost it its connection: replace it with an
                // error the client can act on.
                let body_bytes = out.len() - start - FRAME_HEADER_BYTES;
                if body_bytes > body_bytes_max as usize {
                    out.truncate(start);
                    let reason = format!(
                        "answer of {body_bytes} bytes exceeds the {body_bytes_max}-byte frame limit; ask for fewer bytes"
                    );
                    encode_response(&mut out, request_id, &Err(ServerError::InvalidRequest { reason }));
                }
            }
            s.inflight.set(s.inflight.get() - 1);
            s.writer_wake.notify();
            s.reader_wake.notify();
        })
        .detach();
    };
    bump(
        &stats.bytes_received_total,
        reader.bytes_read_total() - counted_bytes,
    );

    if let Some(e) = &failure {
        bump(&stats.connections_failed_total, 1);
        log::warn!("client {peer}: closing connection: {e}");
        // Tell the client why before closing, when the stream can still carry it.
        if !matches!(e, ConnError::Io(_) | ConnError::WriteTimeout { .. }) {
            let answer = Err(ServerError::InvalidRequest {
                reason: format!("protocol error, closing connection: {e}"),
            });
            encode_response(&mut shared.out.borrow_mut(), 0, &answer);
        }
        shared.abort.set(true);
    }
    shared.closing.set(true);
    shared.writer_wake.notify();
    drop(reader);
    writer.await;
}
