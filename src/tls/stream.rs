//! A connection that is either plain TCP or TLS over TCP, as one async stream.
//!
//! The TLS state machine is rustls' own; this file only moves bytes between it and a
//! glommio socket. It is written here rather than taken from a glue crate because a
//! connection changes executors after its handshake (see `transport/placement.rs`):
//! the socket travels as a descriptor and the session as a plain value
//! ([`Stream::into_parts`], [`Stream::from_parts`]), which the glue crates' stream
//! types do not allow. All ciphertext read off the socket is handed to rustls at
//! once, so nothing is left behind in a buffer of ours when the connection moves.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::transport::conn::with_deadline;

/// Plaintext bytes rustls may hold encrypted and not yet written, per connection. A
/// writer that outpaces the socket waits instead of growing the buffer.
const TLS_UNWRITTEN_BYTES_MAX: usize = 256 * 1024;

/// A connected socket, with or without TLS.
pub struct Stream {
    tcp: TcpStream,
    tls: Option<Box<rustls::Connection>>,
    /// Whether close_notify was queued: a close polled again must not queue another.
    closing: bool,
}

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no TLS handshake within {0} ms")]
    Timeout(u64),
    #[error("the connection closed during the TLS handshake")]
    Closed,
    #[error("TLS handshake failed: {0}")]
    Tls(rustls::Error),
    #[error("TLS handshake failed: {0}")]
    Io(io::Error),
}

impl Stream {
    /// A plain TCP connection.
    pub fn plain(tcp: TcpStream) -> Stream {
        Stream {
            tcp,
            tls: None,
            closing: false,
        }
    }

    /// A stream rebuilt from [`Stream::into_parts`], on whichever executor owns `tcp`.
    pub fn from_parts(tcp: TcpStream, tls: Option<Box<rustls::Connection>>) -> Stream {
        Stream {
            tcp,
            tls,
            closing: false,
        }
    }

    /// The socket and the TLS session, to move the connection to another executor.
    pub fn into_parts(self) -> (TcpStream, Option<Box<rustls::Connection>>) {
        (self.tcp, self.tls)
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The certificate the other end presented, first of its chain; None without TLS
    /// or without a client certificate.
    pub fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.tls.as_ref()?.peer_certificates()?.first()
    }

    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp.peer_addr().map_err(io::Error::from)
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp.set_nodelay(on).map_err(io::Error::from)
    }

    /// Accepts a TLS session on an accepted socket, within `deadline`.
    pub async fn accept_tls(
        tcp: TcpStream,
        config: std::sync::Arc<rustls::ServerConfig>,
        deadline: Instant,
    ) -> Result<Stream, HandshakeError> {
        let mut session = rustls::ServerConnection::new(config).map_err(HandshakeError::Tls)?;
        session.set_buffer_limit(Some(TLS_UNWRITTEN_BYTES_MAX));
        Self::handshake(tcp, session.into(), deadline).await
    }

    /// Opens a TLS session on a connected socket to `name`, within `deadline`.
    pub async fn connect_tls(
        tcp: TcpStream,
        config: std::sync::Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        deadline: Instant,
    ) -> Result<Stream, HandshakeError> {
        let mut session =
            rustls::ClientConnection::new(config, name).map_err(HandshakeError::Tls)?;
        session.set_buffer_limit(Some(TLS_UNWRITTEN_BYTES_MAX));
        Self::handshake(tcp, session.into(), deadline).await
    }

    async fn handshake(
        tcp: TcpStream,
        session: rustls::Connection,
        deadline: Instant,
    ) -> Result<Stream, HandshakeError> {
        let mut stream = Stream {
            tcp,
            tls: Some(Box::new(session)),
            closing: false,
        };
        let timeout_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
        let done = futures_lite::future::poll_fn(|cx| stream.poll_handshake(cx));
        match with_deadline(Some(deadline), done).await {
            Some(Ok(())) => Ok(stream),
            Some(Err(e)) => Err(e),
            None => Err(HandshakeError::Timeout(timeout_ms)),
        }
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandshakeError>> {
        let Stream { tcp, tls, .. } = self;
        let session = tls.as_mut().expect("a handshake has a session");
        let mut io = SyncIo { tcp, cx };
        loop {
            match flush_session(session, &mut io) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(HandshakeError::Io(e))),
                Poll::Pending => return Poll::Pending,
            }
            if !session.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            match session.read_tls(&mut io) {
                Ok(0) => return Poll::Ready(Err(HandshakeError::Closed)),
                Ok(_) => {
                    if let Err(e) = session.process_new_packets() {
                        // Tell the other end why (rustls queued an alert), if the
                        // socket takes it now; the connection closes either way.
                        let _ = session.write_tls(&mut io);
                        return Poll::Ready(Err(HandshakeError::Tls(e)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(HandshakeError::Io(e))),
            }
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }
}

/// The socket as blocking-style I/O for rustls, within one poll: a socket that
/// is not ready reads or writes as `WouldBlock`, with the task's waker registered.
struct SyncIo<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for SyncIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_read(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SyncIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.tcp).poll_flush(self.cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// Writes everything the session has encrypted; Pending while the socket is full.
fn flush_session(session: &mut rustls::Connection, io: &mut SyncIo) -> Poll<io::Result<()>> {
    while session.wants_write() {
        match session.write_tls(io) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let Stream { tcp, tls, .. } = self.get_mut();
        let Some(session) = tls.as_mut() else {
            return Pin::new(tcp).poll_read(cx, buf);
        };
        let mut io = SyncIo { tcp, cx };
        loop {
            match session.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Closed without close_notify (a process that exited): an end like
                // a plaintext close. A truncation cannot pass unnoticed, because
                // frames carry their length and checksum and a cut one is an error.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(0)),
                Err(e) => return Poll::Ready(Err(e)),
            }
            match session.read_tls(&mut io) {
                // The socket's end: the session's reader now says whether the other
                // end closed cleanly (0) or cut the connection (UnexpectedEof).
                Ok(0) => {}
                Ok(_) => {
                    if let Err(e) = session.process_new_packets() {
                        // The connection ends here: the alert may take the writer's
                        // place on the socket (below), which no longer matters.
                        let _ = session.write_tls(&mut io);
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                    // Whatever the session owes the other end (a key update) is
                    // left for the next write or flush: writing here, with the
                    // reader's waker, would take the socket's one write waiter away
                    // from a writer parked on a full socket, which would then never
                    // wake. TLS 1.3 never waits for such an answer.
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Stream { tcp, tls, .. } = self.get_mut();
        let Some(session) = tls.as_mut() else {
            return Pin::new(tcp).poll_write(cx, buf);
        };
        let mut io = SyncIo { tcp, cx };
        loop {
            let taken = session.writer().write(buf)?;
            let flushed = flush_session(session, &mut io);
            if let Poll::Ready(Err(e)) = flushed {
                return Poll::Ready(Err(e));
            }
            if taken > 0 || buf.is_empty() {
                // What was taken and not yet written goes out on the next write or
                // flush; writers of this crate flush after every batch.
                return Poll::Ready(Ok(taken));
            }
            if flushed.is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Stream { tcp, tls, .. } = self.get_mut();
        if let Some(session) = tls.as_mut() {
            let mut io = SyncIo { tcp, cx };
            if let Err(e) = session.writer().flush() {
                return Poll::Ready(Err(e));
            }
            match flush_session(session, &mut io) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        Pin::new(tcp).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(session) = this.tls.as_mut().filter(|_| !this.closing) {
            session.send_close_notify();
            this.closing = true;
        }
        match Pin::new(&mut *this).poll_flush(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        Pin::new(&mut this.tcp).poll_close(cx)
    }
}
