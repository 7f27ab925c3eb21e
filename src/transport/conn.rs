//! Connection plumbing shared by the client listener, peer links and the client
//! library: reading whole frames under deadlines, writing under a deadline, and
//! accepting and listening. The single-threaded signals they wait on are in
//! [`super::signal`].

use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use thiserror::Error;

use super::frame::{FRAME_HEADER_BYTES, Frame, FrameError, decode_frame, truncation_error};

/// Why a connection stopped yielding frames.
#[derive(Debug, Error)]
pub enum ConnError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("idle for {idle_ms} ms with nothing outstanding")]
    IdleTimeout { idle_ms: u64 },
    #[error("frame not complete within {frame_ms} ms of its first byte (slow or stalled sender)")]
    FrameTimeout { frame_ms: u64 },
    #[error("write did not complete within {write_ms} ms (peer not reading)")]
    WriteTimeout { write_ms: u64 },
    #[error("connection closed locally")]
    Closed,
}

/// Runs `fut`, giving up at `deadline` (if any) with `None`.
pub async fn with_deadline<T>(
    deadline: Option<Instant>,
    fut: impl Future<Output = T>,
) -> Option<T> {
    match deadline {
        None => Some(fut.await),
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            futures_lite::future::or(async { Some(fut.await) }, async {
                glommio::timer::sleep(left).await;
                None
            })
            .await
        }
    }
}

/// The smallest growth step of a frame read in place (see `read_in_place`). Smaller
/// steps mean more, smaller reads per large frame: with 16 KiB steps a 4 MiB append
/// benchmark lost about a fifth of its throughput, with 256 KiB steps it was within
/// the noise of allocating the whole frame at once.
const IN_PLACE_STEP_MIN_BYTES: usize = 256 * 1024;

/// The default read chunk: see [`FrameReader::with_read_chunk`].
pub const READ_CHUNK_BYTES_DEFAULT: usize = 64 * 1024;

/// Reads frames off a byte stream. Bodies are sliced out of the receive buffer, so a
/// frame's record payloads share its allocation instead of being copied.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    /// Allocated on first use, so a connection that never sends costs nothing here.
    scratch: Vec<u8>,
    read_chunk_bytes: usize,
    body_bytes_max: u32,
    bytes_read_total: u64,
    /// When the first frame began to be awaited, if that was before this reader
    /// existed (see `with_received`).
    first_frame_since: Option<Instant>,
    /// When the last read returned bytes: when the frames it completed were
    /// received, read once per read rather than once per frame.
    last_read_at: Instant,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, body_bytes_max: u32) -> FrameReader<R> {
        FrameReader::with_read_chunk(inner, body_bytes_max, READ_CHUNK_BYTES_DEFAULT)
    }

    /// A reader whose reads take up to `read_chunk_bytes` at a time through a reused
    /// scratch buffer (one extra copy, no zeroing, several small frames per system
    /// call). When a frame still misses at least that many bytes and a chunk of it
    /// has arrived, the rest is read straight into the frame's own buffer instead
    /// (no extra copy), which grows with what arrives (see `read_in_place`).
    /// Larger chunks mean fewer system calls and more memory per connection.
    pub fn with_read_chunk(
        inner: R,
        body_bytes_max: u32,
        read_chunk_bytes: usize,
    ) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: BytesMut::new(),
            scratch: Vec::new(),
            read_chunk_bytes: read_chunk_bytes.max(FRAME_HEADER_BYTES),
            body_bytes_max,
            bytes_read_total: 0,
            first_frame_since: None,
            last_read_at: Instant::now(),
        }
    }

    /// The same reader, with `received` (bytes another executor read off the
    /// stream before handing it over) as the start of what it reads; the first
    /// frame's timeout counts from `since`, when those bytes began to be awaited.
    pub fn with_received(mut self, received: &[u8], since: Instant) -> FrameReader<R> {
        self.buf.extend_from_slice(received);
        self.bytes_read_total += received.len() as u64;
        self.first_frame_since = Some(since);
        self.last_read_at = Instant::now();
        self
    }

    /// The underlying stream, for writing answers on the same connection.
    pub fn inner_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// When the bytes of the frame last returned were received: the last read
    /// that returned bytes (taken with this reader when it was built from bytes
    /// read before).
    pub fn last_read_at(&self) -> Instant {
        self.last_read_at
    }

    /// Bytes received so far (for metrics).
    pub fn bytes_read_total(&self) -> u64 {
        self.bytes_read_total
    }

    /// The next frame, or `Ok(None)` when the peer closed cleanly between frames.
    ///
    /// `idle_timeout` bounds the wait for the first byte of the next frame (None:
    /// wait forever); `frame_timeout` bounds the time from a frame's first byte to its
    /// last, which is what stops a slowloris sender trickling a byte at a time.
    pub async fn next_frame(
        &mut self,
        idle_timeout: Option<Duration>,
        frame_timeout: Duration,
    ) -> Result<Option<Frame>, ConnError> {
        let since = self.first_frame_since.take();
        let begun_before = !self.buf.is_empty();
        // The clock is read only once a read must wait: on a busy connection most
        // frames are buffered already, and two readings per frame were a measurable
        // part of a small request's cost.
        let mut frame_deadline = None;
        let mut idle_deadline = None;
        loop {
            let mut want_bytes = 0usize;
            if let Some(frame) =
                decode_frame(&mut self.buf, self.body_bytes_max, Some(&mut want_bytes))?
            {
                return Ok(Some(frame));
            }
            if frame_deadline.is_none() && !self.buf.is_empty() {
                // A frame begun before this call is timed from the call (or from when
                // its first bytes began to be awaited, before a hand-over), one begun
                // by a read here from that read.
                let start = match since {
                    _ if !begun_before => self.last_read_at,
                    Some(at) => at,
                    None => Instant::now(),
                };
                frame_deadline = Some(start + frame_timeout);
            }
            let (deadline, timeout_error) = match frame_deadline {
                Some(at) => (
                    Some(at),
                    ConnError::FrameTimeout {
                        frame_ms: frame_timeout.as_millis() as u64,
                    },
                ),
                None => (
                    *idle_deadline.get_or_insert_with(|| idle_timeout.map(|t| Instant::now() + t)),
                    ConnError::IdleTimeout {
                        idle_ms: idle_timeout.map_or(0, |t| t.as_millis() as u64),
                    },
                ),
            };
            let missing = want_bytes
                .max(FRAME_HEADER_BYTES)
                .saturating_sub(self.buf.len());
            // A frame's first chunk goes through the scratch buffer, so a header
            // that claims megabytes and stops costs no more than what came.
            let in_place =
                missing >= self.read_chunk_bytes && self.buf.len() >= self.read_chunk_bytes;
            let n = if in_place {
                match self.read_in_place(missing, deadline).await {
                    Ok(n) => n,
                    Err(Some(e)) => return Err(e.into()),
                    Err(None) => return Err(timeout_error),
                }
            } else {
                if self.scratch.is_empty() {
                    self.scratch = vec![0u8; self.read_chunk_bytes];
                }
                let n = match with_deadline(deadline, self.inner.read(&mut self.scratch)).await {
                    Some(r) => r?,
                    None => return Err(timeout_error),
                };
                self.buf.extend_from_slice(&self.scratch[..n]);
                n
            };
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(truncation_error(&self.buf).into());
            }
            self.bytes_read_total += n as u64;
            self.last_read_at = Instant::now();
        }
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads up to `missing` bytes of the current frame straight into its buffer and
    /// returns how many came (0 at end of stream); `Err(None)` means `deadline` passed.
    ///
    /// The buffer grows with what has arrived, never by the header's claim alone: a
    /// header may claim megabytes and then send nothing, and many such connections
    /// must not cost megabytes each. Each step at most doubles the bytes held, or
    /// adds `IN_PLACE_STEP_MIN_BYTES` when that is more, so the memory held stays
    /// under twice what was received plus one step, while a large frame still takes
    /// few steps, each zeroed once and filled by as many reads as the socket needs.
    async fn read_in_place(
        &mut self,
        missing: usize,
        deadline: Option<Instant>,
    ) -> Result<usize, Option<io::Error>> {
        let start = self.buf.len();
        let end = start + missing;
        // The frame's first bytes (at most a chunk or two) move to an allocation of
        // their own: one shared with earlier frames would be copied at every growth
        // step, while an unshared one grows in place (realloc), which is what keeps
        // growing nearly as cheap as allocating the whole claim at once.
        let mut own = BytesMut::with_capacity(end.min(start + start.max(IN_PLACE_STEP_MIN_BYTES)));
        own.extend_from_slice(&self.buf);
        self.buf = own;
        let mut filled = start;
        while filled < end {
            if filled == self.buf.len() {
                let step = filled.max(IN_PLACE_STEP_MIN_BYTES);
                self.buf.resize(end.min(filled + step), 0);
            }
            let room = filled..self.buf.len();
            match with_deadline(deadline, self.inner.read(&mut self.buf[room])).await {
                Some(Ok(0)) => break,
                Some(Ok(n)) => filled += n,
                Some(Err(e)) => {
                    self.buf.truncate(filled);
                    return Err(Some(e));
                }
                None => {
                    self.buf.truncate(filled);
                    return Err(None);
                }
            }
        }
        self.buf.truncate(filled);
        Ok(filled - start)
    }
}

/// Writes all of `bytes`, failing if that takes longer than `write_timeout`: a peer
/// that stops reading must not pin our buffers forever.
pub async fn write_all_within<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    write_timeout: Duration,
) -> Result<(), ConnError> {
    // Flushed, because a TLS stream holds what it encrypted until the socket takes it.
    let written = async {
        w.write_all(bytes).await?;
        w.flush().await
    };
    match with_deadline(Some(Instant::now() + write_timeout), written).await {
        Some(r) => Ok(r?),
        None => Err(ConnError::WriteTimeout {
            write_ms: write_timeout.as_millis() as u64,
        }),
    }
}

/// The next connection on `listener`. Accept errors (such as running out of file
/// descriptors) are logged under `what` and retried after a short pause rather than
/// ending the listener.
pub async fn accept_retrying(
    listener: &glommio::net::TcpListener,
    what: &str,
) -> glommio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok(stream) => return stream,
            Err(e) => {
                log::warn!("{what}: accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
            }
        }
    }
}

/// Pause after a failed accept.
const ACCEPT_RETRY_MS: u64 = 10;

/// A listening socket that only this process may use: SO_REUSEADDR (so a restart
/// can bind over the closing connections of the previous run) but not SO_REUSEPORT,
/// which glommio's own `bind` sets and which would let a second process on the same
/// port silently take half of the connections.
pub fn listen_exclusive(addr: std::net::SocketAddr) -> io::Result<glommio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    // SAFETY: the descriptor is a bound, listening TCP socket this function owns and
    // hands over whole.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Connections the kernel may queue for accept on one listener.
const LISTEN_BACKLOG: i32 = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::frame::{FrameKind, encode_frame};
    use bytes::BufMut;
    use futures_lite::io::Cursor;

    fn on_executor<T: Send + 'static>(f: impl AsyncFnOnce() -> T + Send + 'static) -> T {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move { f().await })
            .unwrap()
            .join()
            .unwrap()
    }

    /// A header claiming a large body followed by a few bytes costs a few bytes,
    /// not the claim: the receive buffer grows with what arrives.
    #[test]
    fn a_large_claim_allocates_only_what_arrives() {
        on_executor(async || {
            // A few bytes of a 4 MiB claim: they stay in the small receive buffer.
            assert!(held_after(FRAME_HEADER_BYTES + 100).await < 64 * 1024);
            // Past the first chunk the rest is read in place, still growing with
            // what arrives: under twice what came plus one step.
            let received = 300 * 1024;
            let held = held_after(received).await;
            assert!(
                held < 2 * received + IN_PLACE_STEP_MIN_BYTES,
                "{held} bytes held"
            );
        });
    }

    /// Bytes a reader holds after the first `received` bytes of a frame claiming
    /// 4 MiB, then the end of the stream.
    async fn held_after(received: usize) -> usize {
        let mut wire = BytesMut::new();
        encode_frame(&mut wire, FrameKind::AppendRequest, 1, |b| {
            b.put_bytes(7, 4 << 20)
        });
        wire.truncate(received);
        let mut r = FrameReader::with_read_chunk(Cursor::new(wire.to_vec()), 8 << 20, 4096);
        let err = r
            .next_frame(None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConnError::Frame(FrameError::TruncatedBody { .. })),
            "{err}"
        );
        r.buf.capacity()
    }

    /// A stream whose next bytes never come.
    struct Silent;

    impl AsyncRead for Silent {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Pending
        }
    }

    /// Bytes read before a hand-over start the first frame's clock when they were
    /// first awaited, not when the new reader starts: placement does not extend
    /// the slowloris budget.
    #[test]
    fn the_first_frame_of_a_handed_over_stream_is_timed_from_the_accept() {
        let timed_out_at_once = on_executor(async || {
            let accepted = Instant::now() - Duration::from_millis(900);
            let mut reader = FrameReader::new(Silent, 1 << 20).with_received(b"RLOG", accepted);
            let started = Instant::now();
            let result = reader.next_frame(None, Duration::from_secs(1)).await;
            let waited = started.elapsed();
            matches!(result, Err(ConnError::FrameTimeout { .. }))
                && waited < Duration::from_millis(900)
        });
        assert!(timed_out_at_once);
    }

    /// Hands out its chunks one read at a time.
    struct Chunks(Vec<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let Some(chunk) = self.0.first_mut() else {
                return std::task::Poll::Ready(Ok(0));
            };
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                self.0.remove(0);
            }
            std::task::Poll::Ready(Ok(n))
        }
    }

    /// Frames completed by one read carry that read's time, a frame completed by a
    /// later read a later one.
    #[test]
    fn frames_are_received_when_the_read_that_completed_them_returned() {
        on_executor(async || {
            let mut wire = BytesMut::new();
            for id in 1..=3 {
                encode_frame(&mut wire, FrameKind::MetadataRequest, id, |_| {});
            }
            let third = wire.len() - FRAME_HEADER_BYTES;
            let chunks = vec![wire[..third].to_vec(), wire[third..].to_vec()];
            let mut r = FrameReader::new(Chunks(chunks), 1 << 20);
            let t = Duration::from_secs(5);
            let mut received = Vec::new();
            for id in 1..=3 {
                let frame = r.next_frame(None, t).await.unwrap().unwrap();
                assert_eq!(frame.request_id, id);
                received.push(r.last_read_at());
            }
            assert_eq!(received[0], received[1], "one read, one time");
            assert!(received[2] >= received[1]);
            assert!(r.next_frame(None, t).await.unwrap().is_none());
        });
    }

    /// A small frame, a large one (read in place) and a small one again, then a
    /// large frame cut short: all through 16 KiB read chunks.
    #[test]
    fn small_and_large_frames_and_truncation() {
        on_executor(async || {
            let mut wire = BytesMut::new();
            encode_frame(&mut wire, FrameKind::MetadataRequest, 1, |_| {});
            encode_frame(&mut wire, FrameKind::AppendRequest, 2, |b| {
                b.put_bytes(7, 300_000)
            });
            encode_frame(&mut wire, FrameKind::MetadataRequest, 3, |_| {});
            let whole = wire.len();
            encode_frame(&mut wire, FrameKind::AppendRequest, 4, |b| {
                b.put_bytes(9, 300_000)
            });
            wire.truncate(whole + 100_000);
            let mut r =
                FrameReader::with_read_chunk(Cursor::new(wire.to_vec()), 1 << 20, 16 * 1024);
            let t = Duration::from_secs(5);
            let ids_lens: Vec<_> = [
                r.next_frame(None, t).await.unwrap().unwrap(),
                r.next_frame(None, t).await.unwrap().unwrap(),
                r.next_frame(None, t).await.unwrap().unwrap(),
            ]
            .iter()
            .map(|f| (f.request_id, f.body.len()))
            .collect();
            assert_eq!(ids_lens, vec![(1, 0), (2, 300_000), (3, 0)]);
            let err = r.next_frame(None, t).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    ConnError::Frame(FrameError::TruncatedBody {
                        body_bytes: 300_000,
                        ..
                    })
                ),
                "{err}"
            );
            assert_eq!(r.bytes_read_total(), (whole + 100_000) as u64);
        });
    }
}
