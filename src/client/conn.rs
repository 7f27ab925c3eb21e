//! One pipelined connection to a node: requests go out tagged with ids, a reader
//! task matches the answers to their callers in whatever order they come.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::io::split;
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use glommio::task::JoinHandle;

use super::ClientConfig;
use crate::tls::{HandshakeError, Stream, server_name_of};
use crate::transport::client_msg::{
    ClientRequest, ClientResponse, CloseCause, ServerError, decode_closing_notice, decode_response,
    encode_request,
};
use crate::transport::conn::{ConnError, FrameReader, with_deadline, write_all_within};
use crate::transport::frame::FrameKind;
use crate::transport::signal::{Notify, OneShot};

/// A pipelined connection to one node.
pub(super) struct Conn {
    shared: Rc<ConnShared>,
    tasks: [JoinHandle<()>; 2],
}

type Answer = Result<Result<ClientResponse, ServerError>, NoAnswer>;

/// Why a request got no answer.
#[derive(Clone)]
enum NoAnswer {
    /// The connection broke: the node may have acted on the request.
    Lost(String),
    /// The node said it read nothing of this connection (it wants TLS).
    Refused(String),
}

struct ConnShared {
    pending: RefCell<HashMap<u64, Rc<OneShot<Answer>>>>,
    out: RefCell<BytesMut>,
    writer_wake: Notify,
    broken: RefCell<Option<String>>,
    slots: Semaphore,
    next_request_id: Cell<u64>,
}

impl ConnShared {
    /// Marks the connection dead and fails every outstanding request with `reason`.
    fn break_with(&self, reason: String) {
        self.end_with(NoAnswer::Lost(reason));
    }

    /// Marks the connection dead and fails every outstanding request with `why`.
    fn end_with(&self, why: NoAnswer) {
        let (NoAnswer::Lost(reason) | NoAnswer::Refused(reason)) = &why;
        if self.broken.borrow().is_none() {
            *self.broken.borrow_mut() = Some(reason.clone());
        }
        let pending: Vec<_> = self.pending.borrow_mut().drain().collect();
        for (_, slot) in pending {
            slot.fill(Err(why.clone()));
        }
        self.writer_wake.notify();
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.cancel();
        }
    }
}

/// How one attempt on one connection failed.
pub(super) enum CallError {
    Connect(io::Error),
    /// The TLS handshake failed: the same certificates would fail again.
    Tls(String),
    /// Broken before this request was written: safe to retry anything.
    NotSent(String),
    /// Broken or timed out after the request may have been written.
    Lost(String),
    Timeout(u64),
}

impl Conn {
    /// Whether the connection failed (it is then replaced on next use).
    pub(super) fn is_broken(&self) -> bool {
        self.shared.broken.borrow().is_some()
    }

    /// A TCP connection to `addr`, with TLS when `config` has it.
    async fn connect(addr: &str, config: &ClientConfig) -> Result<Stream, CallError> {
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms.max(1));
        let tcp = TcpStream::connect_timeout(addr, connect_timeout)
            .await
            .map_err(|e| CallError::Connect(e.into()))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &config.tls else {
            return Ok(Stream::plain(tcp));
        };
        let name = server_name_of(addr).map_err(CallError::Tls)?;
        let deadline = Instant::now() + connect_timeout;
        Stream::connect_tls(tcp, tls.clone(), name, deadline)
            .await
            .map_err(|e| match &e {
                // The node refused this client's certificate: every node would.
                HandshakeError::Tls(tls) if crate::tls::refuses_our_certificate(tls) => {
                    CallError::Tls(e.to_string())
                }
                // Slow, cut off, or this node's certificate (expired, another
                // CA, not naming the host dialled, or no TLS at all): another
                // node may do. Nothing was sent, so trying elsewhere is safe.
                _ => CallError::Connect(io::Error::other(e.to_string())),
            })
    }

    pub(super) async fn open(addr: &str, config: &ClientConfig) -> Result<Conn, CallError> {
        let stream = Self::connect(addr, config).await?;
        let (read_half, mut write_half) = split(stream);
        let shared = Rc::new(ConnShared {
            pending: RefCell::new(HashMap::new()),
            out: RefCell::new(BytesMut::new()),
            writer_wake: Notify::default(),
            broken: RefCell::new(None),
            slots: Semaphore::new(config.inflight_requests_max.max(1) as u64),
            next_request_id: Cell::new(1),
        });
        let s = shared.clone();
        let write_timeout = Duration::from_millis(config.write_timeout_ms);
        let writer = glommio::spawn_local(async move {
            loop {
                if s.broken.borrow().is_some() {
                    return;
                }
                let batch = s.out.borrow_mut().split();
                if batch.is_empty() {
                    s.writer_wake.notified().await;
                    continue;
                }
                if let Err(e) = write_all_within(&mut write_half, &batch, write_timeout).await {
                    s.break_with(format!("write failed: {e}"));
                    return;
                }
            }
        })
        .detach();
        let s = shared.clone();
        let frame_timeout = Duration::from_millis(config.request_timeout_ms);
        let mut reader = FrameReader::new(read_half, config.frame_body_bytes_max);
        let reader_task = glommio::spawn_local(async move {
            loop {
                let frame = match reader.next_frame(None, frame_timeout).await {
                    Ok(Some(f)) => f,
                    Ok(None) => return s.break_with("server closed the connection".into()),
                    Err(ConnError::Io(e)) if crate::tls::certificate_refused(&e) => {
                        let reason = format!("the node refused this client's certificate: {e}");
                        return s.end_with(NoAnswer::Refused(reason));
                    }
                    Err(e) => return s.break_with(format!("read failed: {e}")),
                };
                if frame.kind == FrameKind::ClosingNotice {
                    // The server says why it is closing: the best reason we will get.
                    return s.end_with(match decode_closing_notice(&frame) {
                        Ok(notice) if notice.cause == CloseCause::TlsRequired => {
                            NoAnswer::Refused(notice.to_string())
                        }
                        Ok(notice) => NoAnswer::Lost(notice.to_string()),
                        Err(e) => NoAnswer::Lost(format!("bad closing notice: {e}")),
                    });
                }
                let answer = match decode_response(&frame) {
                    Ok(a) => a,
                    Err(e) => return s.break_with(format!("bad response frame: {e}")),
                };
                let slot = s.pending.borrow_mut().remove(&frame.request_id);
                if let Some(slot) = slot {
                    slot.fill(Ok(answer));
                }
                // An answer to a request that already timed out is dropped.
            }
        })
        .detach();
        Ok(Conn {
            shared,
            tasks: [writer, reader_task],
        })
    }

    pub(super) async fn call(
        &self,
        request: &ClientRequest,
        timeout: Duration,
    ) -> Result<Result<ClientResponse, ServerError>, CallError> {
        let s = &self.shared;
        let _permit = s
            .slots
            .acquire_permit(1)
            .await
            .map_err(|e| CallError::NotSent(e.to_string()))?;
        if let Some(reason) = s.broken.borrow().clone() {
            return Err(CallError::NotSent(reason));
        }
        let id = s.next_request_id.get();
        s.next_request_id.set(id + 1);
        let slot = OneShot::new();
        s.pending.borrow_mut().insert(id, slot.clone());
        encode_request(&mut s.out.borrow_mut(), id, request);
        s.writer_wake.notify();
        match with_deadline(Some(Instant::now() + timeout), slot.wait()).await {
            Some(Ok(answer)) => Ok(answer),
            Some(Err(NoAnswer::Lost(reason))) => Err(CallError::Lost(reason)),
            Some(Err(NoAnswer::Refused(reason))) => Err(CallError::Tls(reason)),
            None => {
                s.pending.borrow_mut().remove(&id);
                Err(CallError::Timeout(timeout.as_millis() as u64))
            }
        }
    }
}
