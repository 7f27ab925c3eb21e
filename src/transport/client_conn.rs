//! One client connection: decodes its requests, hands them to a [`RequestHandler`]
//! and writes the answers back, many per write. Its memory is bounded in bytes: one
//! receive buffer that grows with the frame's bytes as they arrive, requests being
//! handled (`inflight_requests_max`, `inflight_bytes_max`) and answers not yet
//! written (`unwritten_bytes_max`). When the connection ends, its requests still
//! being handled are dropped, so nothing waits on behalf of a client that is gone.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::io::split;

use super::answer::{Answer, Shared};
use super::client_msg::{
    ClientRequest, CloseCause, ClosingNotice, ServerError, decode_request, encode_closing_notice,
};
use super::conn::{ConnError, FrameReader, write_all_within};
use super::frame::{FRAME_HEADER_BYTES, Frame, FrameError};
use super::placement::Received;
use super::server::{ListenerStats, RequestHandler, ServerConfig};
use crate::tls::{Role, Roles, Stream};

/// A request admitted on a connection, with what it counts against its limits.
struct Admitted {
    request_id: u64,
    request: ClientRequest,
    cost_bytes: usize,
    waits: bool,
}

/// Deadlines a connection keeps per request it may have in flight. Answers taken by
/// a shard come in the order they were taken, so only a late answer keeps later,
/// answered ones in the list; past this the connection stops reading until the
/// late one is answered or times out.
const DEADLINES_PER_INFLIGHT: usize = 4;

/// Answer bytes reserved for a metadata request: enough for hundreds of nodes and
/// partitions, and small beside the frame limit.
const METADATA_ANSWER_BYTES_ESTIMATE: usize = 16 * 1024;
/// Answer bytes of an append, a trim or a transfer (two fixed fields) or an error,
/// header included.
const SMALL_ANSWER_BYTES: usize = 64;

/// Bytes `request` may hold while being handled: its frame (appended records are
/// slices of it) and the largest answer it may get. An answer beyond the frame limit
/// is replaced by an error, so that limit caps the answer's share.
fn inflight_cost_bytes(request: &ClientRequest, body_bytes: usize, body_bytes_max: u32) -> usize {
    let answer_bytes = match request {
        ClientRequest::Append(_) | ClientRequest::Trim(_) | ClientRequest::Transfer(_) => {
            SMALL_ANSWER_BYTES
        }
        // One outcome per partition, each with its members' addresses: bounded like
        // metadata.
        ClientRequest::Members(_) | ClientRequest::ChangeMembership(_) => {
            METADATA_ANSWER_BYTES_ESTIMATE
        }
        ClientRequest::Read(r) => (r.max_bytes as usize).saturating_add(SMALL_ANSWER_BYTES),
        ClientRequest::Metadata => METADATA_ANSWER_BYTES_ESTIMATE,
    };
    FRAME_HEADER_BYTES + body_bytes + answer_bytes.min(body_bytes_max as usize)
}

/// The role a principal needs for `request`; None for what any authenticated
/// client may ask (the cluster's metadata, which it needs to find leaders).
fn required_role(request: &ClientRequest) -> Option<Role> {
    match request {
        ClientRequest::Append(_) => Some(Role::Append),
        ClientRequest::Read(_) | ClientRequest::Members(_) => Some(Role::Read),
        ClientRequest::Trim(_)
        | ClientRequest::Transfer(_)
        | ClientRequest::ChangeMembership(_) => Some(Role::Admin),
        ClientRequest::Metadata => None,
    }
}

/// Who is on a connection: its principal and roles under TLS, or anyone with every
/// role on a plaintext port. A plaintext connection on a TLS port (which placement
/// never lets through) would get no role at all.
fn principal(stream: &Stream, config: &ServerConfig) -> (Option<String>, Roles) {
    match (&config.tls, stream.is_tls()) {
        (Some(tls), true) => tls.roles_of(stream.peer_certificate()),
        (Some(_), false) => (None, Roles::NONE),
        (None, _) => (None, Roles::ALL),
    }
}

pub(super) async fn serve_connection<H: RequestHandler>(
    stream: Stream,
    received: &Received,
    handler: Rc<H>,
    config: Rc<ServerConfig>,
    stats: Arc<ListenerStats>,
) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown peer".to_string(), |a| a.to_string());
    let _ = stream.set_nodelay(true);
    let (principal, roles) = principal(&stream, &config);
    let (read_half, write_half) = split(stream);
    let shared = Rc::new(Shared::new(
        Duration::from_millis(config.answer_timeout_ms),
        config.frame_body_bytes_max,
    ));
    let sweep = shared.clone();
    glommio::spawn_local(async move {
        futures_lite::future::or(sweep.sweep_deadlines(), sweep.requests.cancelled()).await
    })
    .detach();
    let write_timeout = Duration::from_millis(config.write_timeout_ms);
    let writer = glommio::spawn_local(write_answers(
        shared.clone(),
        write_half,
        write_timeout,
        peer.clone(),
    ));
    let reader = FrameReader::with_read_chunk(
        read_half,
        config.frame_body_bytes_max,
        config.read_chunk_bytes,
    )
    .with_received(&received.bytes, received.since);
    let connection = Connection {
        shared: shared.clone(),
        handler,
        config,
        stats: stats.clone(),
        peer: peer.clone(),
        principal,
        roles,
    };
    let failure = connection.read_requests(reader).await;
    // The client is gone or being cut off: nothing it asked for is worth finishing.
    shared.requests.cancel();
    if let Some(e) = &failure {
        stats.connections_failed_total.add(1);
        log::warn!("client {peer}: closing connection: {e}");
        if let Some(notice) = closing_notice(e) {
            encode_closing_notice(&mut shared.out.borrow_mut(), &notice);
        }
        shared.abort.set(true);
    }
    shared.closing.set(true);
    shared.writer_wake.notify();
    writer.await;
    shared.release();
}

/// What to tell a client before closing its connection because of `e`, when the
/// stream can still carry it.
fn closing_notice(e: &ConnError) -> Option<ClosingNotice> {
    let cause = match e {
        ConnError::Frame(_) => CloseCause::ProtocolError,
        ConnError::IdleTimeout { .. } | ConnError::FrameTimeout { .. } => CloseCause::Timeout,
        ConnError::Io(_) | ConnError::WriteTimeout { .. } | ConnError::Closed => return None,
    };
    Some(ClosingNotice {
        cause,
        reason: e.to_string(),
    })
}

/// Writes the connection's answers, many per write, until it closes.
async fn write_answers<W: futures_lite::io::AsyncWrite + Unpin>(
    s: Rc<Shared>,
    mut write_half: W,
    write_timeout: Duration,
    peer: String,
) {
    loop {
        let batch = s.out.borrow_mut().split();
        if !batch.is_empty() {
            s.writing_bytes.set(batch.len());
            let written = write_all_within(&mut write_half, &batch, write_timeout).await;
            s.writing_bytes.set(0);
            // Room for answers again: the reader may take requests.
            s.reader_wake.notify();
            if let Err(e) = written {
                log::warn!("client {peer}: closing connection: {e}");
                s.abort.set(true);
                s.closing.set(true);
                s.requests.cancel();
                return;
            }
            continue;
        }
        // Requests still being handled when the connection ends are not answered:
        // their tasks were cancelled, and answers taken by a shard are dropped.
        if s.abort.get() || s.closing.get() {
            use futures_lite::io::AsyncWriteExt;
            let _ = write_half.close().await;
            return;
        }
        s.writer_wake.notified().await;
    }
}

/// The reading side of one client connection.
struct Connection<H: RequestHandler> {
    shared: Rc<Shared>,
    handler: Rc<H>,
    config: Rc<ServerConfig>,
    stats: Arc<ListenerStats>,
    peer: String,
    /// The client certificate's principal, under TLS.
    principal: Option<String>,
    roles: Roles,
}

impl<H: RequestHandler> Connection<H> {
    /// Reads and admits requests until the connection ends; the error, if it ended
    /// because of one.
    async fn read_requests<R: futures_lite::io::AsyncRead + Unpin>(
        &self,
        mut reader: FrameReader<R>,
    ) -> Option<ConnError> {
        let (s, config) = (&self.shared, &self.config);
        let idle_timeout = Duration::from_millis(config.idle_timeout_ms);
        let frame_timeout = Duration::from_millis(config.frame_timeout_ms);
        // Bytes already added to `stats.bytes_received_total`, which grows per frame
        // so that long-lived connections show up while they live.
        let mut counted_bytes = 0;
        loop {
            // Back-pressure: while too much is in flight or unwritten, the client's
            // bytes stay in the kernel's buffers and TCP slows it down.
            let room = s
                .wait_for(|s| {
                    s.inflight.get() < config.inflight_requests_max
                        && s.unwritten_bytes() <= config.unwritten_bytes_max
                        && s.deadlines_kept()
                            < DEADLINES_PER_INFLIGHT * config.inflight_requests_max
                })
                .await;
            if !room {
                return None;
            }
            // Idle time only counts while nothing is outstanding: a client waiting
            // for a long-polling read is not idle.
            let idle = (s.inflight.get() == 0).then_some(idle_timeout);
            let next = futures_lite::future::or(reader.next_frame(idle, frame_timeout), async {
                s.wait_for(|_| false).await;
                Err(ConnError::Closed)
            })
            .await;
            let read_total = reader.bytes_read_total();
            self.stats
                .bytes_received_total
                .add(read_total - counted_bytes);
            counted_bytes = read_total;
            let frame = match next {
                Ok(Some(frame)) => frame,
                Ok(None) | Err(ConnError::Closed) => return None,
                Err(e) => return Some(e),
            };
            match self.admit(frame) {
                Ok(Some(admitted)) => {
                    if !self.start(admitted, reader.last_read_at()).await {
                        return None;
                    }
                }
                Ok(None) => {}
                Err(e) => return Some(e),
            }
        }
    }

    /// Checks one frame: a request to carry out, `None` when it was answered at once
    /// (refused), or an error that ends the connection.
    fn admit(&self, frame: Frame) -> Result<Option<Admitted>, ConnError> {
        let (s, config) = (&self.shared, &self.config);
        if !frame.kind.is_client_request() {
            // Framing is intact but this is not something a client may send: answer
            // and close, since a peer frame here means a misrouted or confused sender.
            return Err(ConnError::Frame(FrameError::Unexpected {
                kind: frame.kind,
                context: "not a client request",
            }));
        }
        self.stats.requests_total.add(1);
        let request_id = frame.request_id;
        let refuse = |reason: String| {
            // The frame's checksum held, so framing is intact: answer this request
            // with the reason and keep serving the connection.
            self.stats.requests_invalid_total.add(1);
            log::info!(
                "client {}: invalid request {request_id}: {reason}",
                self.peer
            );
            s.answer(request_id, &Err(ServerError::InvalidRequest { reason }));
            Ok(None)
        };
        if request_id == 0 {
            return refuse(
                "request_id 0 is reserved (answers are matched by id); use a non-zero id".into(),
            );
        }
        let request = match decode_request(&frame) {
            Ok(r) => r,
            Err(e) => return refuse(e.to_string()),
        };
        if let Some(role) = required_role(&request).filter(|r| !self.roles.contains(*r)) {
            self.stats.requests_unauthorized_total.add(1);
            let who = self
                .principal
                .as_deref()
                .unwrap_or("a certificate without a DNS name");
            let reason = format!("{who} does not have the {} role", role.name());
            log::info!(
                "client {}: refusing request {request_id}: {reason}",
                self.peer
            );
            s.answer(request_id, &Err(ServerError::Unauthorized { reason }));
            return Ok(None);
        }
        let waits = matches!(&request, ClientRequest::Read(r) if r.wait_timeout_ms > 0);
        if waits && s.waiting_reads.get() >= config.waiting_reads_per_connection_max {
            // Not applied, so the client may retry once one of its waits ends.
            log::debug!(
                "client {}: refusing read {request_id}: waiting_reads_per_connection_max ({}) reached",
                self.peer,
                config.waiting_reads_per_connection_max
            );
            s.answer(request_id, &Err(ServerError::Overloaded));
            return Ok(None);
        }
        let cost_bytes =
            inflight_cost_bytes(&request, frame.body.len(), config.frame_body_bytes_max);
        Ok(Some(Admitted {
            request_id,
            request,
            cost_bytes,
            waits,
        }))
    }

    /// Starts handling `admitted` once the connection's in-flight bytes leave room for
    /// it (a connection's only request always has room); `false` if the connection
    /// closed first.
    async fn start(&self, admitted: Admitted, received: Instant) -> bool {
        let (s, budget) = (&self.shared, self.config.inflight_bytes_max);
        let cost = admitted.cost_bytes;
        let room = s
            .wait_for(|s| s.inflight.get() == 0 || s.inflight_bytes.get() + cost <= budget)
            .await;
        if !room {
            return false;
        }
        let (id, waits) = (admitted.request_id, admitted.waits);
        let answer = Answer::new(s.clone(), id, cost, waits, received);
        // The handler may answer the request without a task of its own (an append
        // to this executor's shard); what it gives back is awaited in a task.
        let Some((request, answer)) = self.handler.take(admitted.request, answer) else {
            return true;
        };
        let (h, s) = (self.handler.clone(), s.clone());
        glommio::spawn_local(async move {
            let handled =
                futures_lite::future::or(async { Some(h.handle(request).await) }, async {
                    s.requests.cancelled().await;
                    None
                })
                .await;
            if let Some(handled) = handled {
                answer.send(&handled);
            }
        })
        .detach();
        true
    }
}
