//! Connection placement: which executor serves an accepted connection.
//!
//! A node has one client port and one peer port, accepted on shard 0, but every
//! connection is served by the shard that owns what it carries: a peer link names
//! its shard in its handshake, and a client connection names a partition (= shard)
//! in every append, read, trim or transfer. The acceptor reads the first 24 to 44 bytes of
//! the connection (the first frame's header and the start of its body), picks the
//! owner from them and hands the socket, with those bytes, to the owner's executor
//! through a bounded queue. The owner checks and serves the connection from its
//! first frame on, handshake included, so every byte past those few is read,
//! checked and answered on the core that owns it. (Peeking with MSG_PEEK instead
//! would leave nothing to hand over, but a frame that arrives in parts can only be
//! waited for by peeking again and again; a read just waits.)
//!
//! With TLS (`[tls]`) the acceptor first completes the handshake, then reads those
//! bytes through the session, and hands the session over with the socket: a
//! handshake's few hundred microseconds of public-key work stay on shard 0, every
//! record after it is decrypted on the owner's core (`src/tls/stream.rs`).
//!
//! Connections whose first frame names no partition (a metadata request, garbage, a
//! silent client) stay where they were accepted and reach other shards through
//! their inboxes, as before. ScyllaDB publishes a port per shard instead; one port
//! keeps the configuration, the firewall rules and third-party clients unchanged,
//! and the client library gets placement for free by opening one connection per
//! partition it uses (see `docs/wire-protocol.md`, *Connection placement*).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;
use zerocopy::FromBytes;

use crate::tls::{Stream, TlsContext};

use super::conn::with_deadline;
use super::count::{ConnectionCounts, Count};

use super::frame::{FRAME_HEADER_BYTES, FrameHeader, FrameKind, check_header};

/// Bytes the acceptor reads at most: the frame header and the first 20 bytes of the body,
/// enough for a PeerHello's shard id (body offset 16) and a client request's
/// partition (body offset 0).
pub const PLACEMENT_BYTES: usize = FRAME_HEADER_BYTES + 20;

/// Connections queued for one executor before the acceptor serves further ones
/// itself: a shard too busy to take its connections must not make them wait
/// unboundedly, and a connection served on the accepting shard is still correct.
pub const HANDOFF_QUEUE_MAX: usize = 256;

/// The header `first` starts with, if it has arrived whole.
fn first_header(first: &[u8]) -> Option<FrameHeader> {
    FrameHeader::read_from_prefix(first)
        .ok()
        .map(|(header, _)| header)
}

/// The kind of the frame `first` starts with, if its header is one a receiver
/// takes (the frame reader's own check; the body's size limit is the server's
/// business, not placement's).
fn first_kind(first: &[u8]) -> Option<FrameKind> {
    check_header(&first_header(first)?, u32::MAX).ok()
}

/// The little-endian u32 at `offset` of the first frame's body, if it was read.
fn body_u32(first: &[u8], offset: usize) -> Option<u32> {
    let at = FRAME_HEADER_BYTES + offset;
    let bytes = first.get(at..at + 4)?;
    Some(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
}

/// The partition a client connection's first request names: appends, reads, trims
/// and transfers carry it first in their body. None for anything else.
pub fn client_partition(first: &[u8]) -> Option<u32> {
    match first_kind(first)? {
        FrameKind::AppendRequest
        | FrameKind::ReadRequest
        | FrameKind::TrimRequest
        | FrameKind::TransferRequest => body_u32(first, 0),
        _ => None,
    }
}

/// The shard a peer connection's handshake names (PeerHello, body offset 16).
pub fn peer_shard(first: &[u8]) -> Option<u32> {
    match first_kind(first)? {
        FrameKind::PeerHello => body_u32(first, 16),
        _ => None,
    }
}

/// How many of the first bytes placement needs, given the `first` ones read so far: the
/// header, then as much of the first body as [`PLACEMENT_BYTES`] covers (a short frame,
/// such as a metadata request, has no more to wait for).
fn bytes_wanted(first: &[u8]) -> usize {
    let Some(header) = first_header(first) else {
        return FRAME_HEADER_BYTES;
    };
    let body_len = header.body_len.get() as usize;
    FRAME_HEADER_BYTES + body_len.min(PLACEMENT_BYTES - FRAME_HEADER_BYTES)
}

/// The connection's first bytes, as many as placement needs ([`bytes_wanted`]).
/// Waits until `deadline` for them; fewer (or none) when the connection closes, fails
/// or stays silent, which its server then handles as it would have anyway.
pub async fn read_prefix(stream: &mut Stream, deadline: Instant) -> Vec<u8> {
    use futures_lite::io::AsyncReadExt;
    let deadline = Some(deadline);
    let mut buf = vec![0u8; PLACEMENT_BYTES];
    let mut len = 0;
    while len < bytes_wanted(&buf[..len]) {
        let want = bytes_wanted(&buf[..len]);
        match with_deadline(deadline, stream.read(&mut buf[len..want])).await {
            Some(Ok(n)) if n > 0 => len += n,
            _ => break,
        }
    }
    buf.truncate(len);
    buf
}

/// An accepted connection on its way to another executor: the socket without the
/// accepting executor's state, which is all a glommio stream is bound to, its TLS
/// session (a plain value), and the bytes already read off it.
pub struct Handoff {
    fd: OwnedFd,
    tls: Option<Box<rustls::Connection>>,
    received: Received,
}

impl Handoff {
    /// Takes `stream` off this executor. glommio streams cannot give up their
    /// descriptor, so this keeps a duplicate and closes the original: the socket
    /// lives on (its data, its peer) for as long as the duplicate is open. When
    /// the duplicate cannot be made (no descriptors left), the stream is kept and
    /// the bytes come back, to serve it where it is.
    pub fn detach(stream: &mut Option<Stream>, received: Received) -> Result<Handoff, Received> {
        let raw = stream.as_ref().expect("a stream to detach").as_raw_fd();
        // SAFETY: dup of a descriptor the stream owns and keeps open for the call.
        let fd = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            log::warn!("cannot hand a connection to another shard, serving it here: {e}");
            return Err(received);
        }
        let (tcp, tls) = stream.take().expect("a stream to detach").into_parts();
        drop(tcp);
        // SAFETY: `fd` was just returned by fcntl and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Handoff { fd, tls, received })
    }

    /// The connection as a stream of the current executor, and the bytes already
    /// read off it.
    pub fn attach(self) -> Accepted {
        use std::os::fd::IntoRawFd;
        // SAFETY: the descriptor is an open, connected TCP socket owned by `self`,
        // handed over whole (glommio's own `bind_to_executor` does the same).
        let tcp = unsafe { TcpStream::from_raw_fd(self.fd.into_raw_fd()) };
        (Stream::from_parts(tcp, self.tls), self.received)
    }
}

/// A connection to serve: its stream and the first bytes already read off it.
pub type Accepted = (Stream, Received);

/// What was read off a connection before it was handed over, and since when: the
/// first frame must arrive whole within its timeout of the accept, wherever it is
/// served, so the time spent placing counts.
#[derive(Debug)]
pub struct Received {
    pub bytes: Vec<u8>,
    pub since: Instant,
}

impl Received {
    /// Nothing read yet, as of now.
    pub fn none() -> Received {
        Received {
            bytes: Vec::new(),
            since: Instant::now(),
        }
    }
}

/// The executors' queues of handed-off connections, indexed by shard, as seen
/// from one executor (`local`).
#[derive(Clone)]
pub struct Doors {
    local: u32,
    queues: Vec<(flume::Sender<Handoff>, Arc<Count>)>,
}

/// The receiving end of one executor's queue, and the count of connections in it:
/// they are open, so `connections_max` counts them until their shard takes them.
pub struct DoorQueue {
    receiver: flume::Receiver<Handoff>,
    queued: Arc<Count>,
}

/// One queue per shard: the senders (clone them for each executor with
/// [`Doors::at`]) and each shard's receiving end.
pub fn doors(shards: u32) -> (Doors, Vec<DoorQueue>) {
    let (queues, receivers) = (0..shards)
        .map(|_| {
            let (sender, receiver) = flume::bounded(HANDOFF_QUEUE_MAX);
            let queued = Arc::new(Count::default());
            let door = DoorQueue {
                receiver,
                queued: queued.clone(),
            };
            ((sender, queued), door)
        })
        .unzip();
    (Doors { local: 0, queues }, receivers)
}

impl Doors {
    /// The same queues, seen from shard `local`'s executor.
    pub fn at(&self, local: u32) -> Doors {
        Doors {
            local,
            queues: self.queues.clone(),
        }
    }

    /// Connections handed off and not yet taken by their shard, in all queues.
    pub fn queued(&self) -> u64 {
        self.queues.iter().map(|(_, queued)| queued.get()).sum()
    }

    /// Serves a connection where `owner` says: hands it to that shard's executor and
    /// returns None, or gives it back to be served here when the owner is this
    /// executor, unknown (its own server refuses what must be refused), or cannot
    /// take it now.
    pub fn hand_to(&self, owner: Option<u32>, (stream, received): Accepted) -> Option<Accepted> {
        let Some(shard) = owner.filter(|s| *s != self.local) else {
            return Some((stream, received));
        };
        let Some((queue, queued)) = self.queues.get(shard as usize) else {
            return Some((stream, received));
        };
        if queue.is_full() {
            return Some((stream, received));
        }
        let mut stream = Some(stream);
        let handoff = match Handoff::detach(&mut stream, received) {
            Ok(h) => h,
            Err(received) => return Some((stream.expect("kept when detaching fails"), received)),
        };
        // Counted before it is queued, so that its shard never takes it uncounted.
        queued.add(1);
        match queue.try_send(handoff) {
            Ok(()) => None,
            // Full since the check (another acceptor) or the shard is stopping.
            Err(flume::TrySendError::Full(h) | flume::TrySendError::Disconnected(h)) => {
                queued.sub(1);
                Some(h.attach())
            }
        }
    }
}

/// Serves, with `serve`, the connections other executors hand to this one through
/// `queue`, counting them in `counts`, until every sender is gone.
pub async fn take_handed_in(queue: DoorQueue, counts: &ConnectionCounts, serve: impl Fn(Accepted)) {
    while let Ok(handoff) = queue.receiver.recv_async().await {
        queue.queued.sub(1);
        counts.handed_in_total.add(1);
        serve(handoff.attach());
    }
}

/// How an acceptor places its connections.
#[derive(Clone)]
pub struct Placing {
    pub doors: Doors,
    /// The owner a connection's first bytes name ([`client_partition`],
    /// [`peer_shard`]).
    pub owner_of: fn(&[u8]) -> Option<u32>,
    /// How long to wait for the first frame before serving the connection here.
    pub wait: Duration,
}

/// The connections a node holds, for its `connections_max`: those served or being
/// placed by each executor (`all`, one per executor), and those waiting in a
/// hand-off queue.
pub fn connections_held(all: &[Arc<ConnectionCounts>], placing: Option<&Placing>) -> u64 {
    let held: u64 = all.iter().map(|c| c.held()).sum();
    held + placing.map_or(0, |p| p.doors.queued())
}

/// How an acceptor opens TLS on its connections.
#[derive(Clone)]
pub struct AcceptTls {
    pub context: Arc<TlsContext>,
    /// How long a client may take over its handshake, from the accept.
    pub wait: Duration,
    pub port: TlsPort,
}

/// The port a TLS acceptor serves: what it tells a plaintext client differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPort {
    Client,
    Peer,
}

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

impl TlsPort {
    fn name(self) -> &'static str {
        match self {
            TlsPort::Client => "client",
            TlsPort::Peer => "peer",
        }
    }

    /// What a plaintext client of this port is told, in its own protocol, before
    /// the connection closes: a ringlog client or node then says why instead of
    /// reporting garbage.
    fn plaintext_refusal(self) -> bytes::BytesMut {
        let mut out = bytes::BytesMut::new();
        match self {
            TlsPort::Client => {
                let notice = super::client_msg::ClosingNotice {
                    cause: super::client_msg::CloseCause::TlsRequired,
                    reason: "this port requires TLS: connect with the cluster's CA (--ca) and a \
                             client certificate (--cert, --key); see docs/security.md"
                        .into(),
                };
                super::client_msg::encode_closing_notice(&mut out, &notice);
            }
            TlsPort::Peer => super::peer_msg::encode_refused(
                &mut out,
                "this node requires TLS on its peer port: set [tls] (docs/security.md)",
            ),
        }
        out
    }
}

/// Serves an accepted `stream` where it belongs: plain and without `placing`, here
/// at once; otherwise a task opens TLS (with `tls`), reads the start of the first
/// frame (with `placing`), hands the connection to its owner or, when it stays,
/// serves it here with `serve`, counting it in `counts` (this executor's) while it
/// is being placed.
pub fn place(
    stream: TcpStream,
    placing: Option<&Placing>,
    tls: Option<&AcceptTls>,
    counts: Arc<ConnectionCounts>,
    serve: impl FnOnce(Accepted) + 'static,
) {
    if placing.is_none() && tls.is_none() {
        serve((Stream::plain(stream), Received::none()));
        return;
    }
    let (placing, tls) = (placing.cloned(), tls.cloned());
    counts.placing.add(1);
    glommio::spawn_local(async move {
        let since = Instant::now();
        let stream = match tls {
            Some(tls) => accept_tls(stream, &tls, since, &counts).await,
            None => Some(Stream::plain(stream)),
        };
        let Some(mut stream) = stream else {
            counts.placing.sub(1);
            return;
        };
        let here = match placing {
            Some(placing) => {
                let bytes = read_prefix(&mut stream, since + placing.wait).await;
                let owner = (placing.owner_of)(&bytes);
                placing
                    .doors
                    .hand_to(owner, (stream, Received { bytes, since }))
            }
            None => Some((
                stream,
                Received {
                    bytes: Vec::new(),
                    since,
                },
            )),
        };
        counts.placing.sub(1);
        if let Some(stream) = here {
            serve(stream);
        }
    })
    .detach();
}

/// The TLS session of an accepted socket, or None (logged and counted) when the
/// handshake fails: a plaintext client, an unknown CA, an expired certificate.
async fn accept_tls(
    tcp: TcpStream,
    tls: &AcceptTls,
    since: Instant,
    counts: &ConnectionCounts,
) -> Option<Stream> {
    let from = tcp
        .peer_addr()
        .map_or_else(|_| "an unknown address".to_string(), |a| a.to_string());
    let deadline = since + tls.wait;
    let refuse = |reason: &dyn std::fmt::Display| {
        counts.tls_handshakes_failed_total.add(1);
        log::warn!(
            "{} port: refusing connection from {from}: {reason}",
            tls.port.name()
        );
    };
    let mut first = [0u8; 1];
    if let Some(Ok(1)) = with_deadline(Some(deadline), tcp.peek(&mut first)).await
        && first[0] != TLS_HANDSHAKE_RECORD
    {
        refuse(&"it speaks plaintext and this port requires TLS");
        let mut stream = Stream::plain(tcp);
        let refusal = tls.port.plaintext_refusal();
        let _ = super::conn::write_all_within(&mut stream, &refusal, PLAINTEXT_REFUSAL_WRITE).await;
        return None;
    }
    let config = tls.context.configs().server.clone();
    match Stream::accept_tls(tcp, config, deadline).await {
        Ok(stream) => Some(stream),
        Err(e) => {
            refuse(&e);
            None
        }
    }
}

/// How long a plaintext client's refusal may take to write: it is small, and a
/// client that does not read it is not waited for.
const PLAINTEXT_REFUSAL_WRITE: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::frame::encode_frame;
    use bytes::{BufMut, BytesMut};

    fn frame(kind: FrameKind, body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_frame(&mut out, kind, 7, |b| b.put_slice(body));
        out.to_vec()
    }

    #[test]
    fn a_client_request_names_its_partition_and_metadata_names_none() {
        let mut body = 3u32.to_le_bytes().to_vec();
        body.extend_from_slice(&[0u8; 24]);
        for kind in [
            FrameKind::AppendRequest,
            FrameKind::ReadRequest,
            FrameKind::TrimRequest,
            FrameKind::TransferRequest,
        ] {
            assert_eq!(
                client_partition(&frame(kind, &body)[..PLACEMENT_BYTES]),
                Some(3)
            );
        }
        // A transfer's whole body (8 bytes) is shorter than what placement may read.
        let transfer = [3u32.to_le_bytes(), u32::MAX.to_le_bytes()].concat();
        let transfer = frame(FrameKind::TransferRequest, &transfer);
        assert_eq!(bytes_wanted(&transfer), transfer.len());
        assert_eq!(client_partition(&transfer), Some(3));
        assert_eq!(
            client_partition(&frame(FrameKind::MetadataRequest, &[])),
            None
        );
        assert_eq!(client_partition(&frame(FrameKind::PeerHello, &body)), None);
        assert_eq!(client_partition(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
        // A header alone, its body not yet arrived, names nothing.
        let whole = frame(FrameKind::AppendRequest, &body);
        assert_eq!(client_partition(&whole[..FRAME_HEADER_BYTES]), None);
    }

    #[test]
    fn placement_waits_for_no_more_than_the_first_frame_holds() {
        assert_eq!(bytes_wanted(&[]), FRAME_HEADER_BYTES);
        let metadata = frame(FrameKind::MetadataRequest, &[]);
        assert_eq!(bytes_wanted(&metadata), FRAME_HEADER_BYTES);
        let small_append = frame(FrameKind::AppendRequest, &[0u8; 13]);
        assert_eq!(bytes_wanted(&small_append), small_append.len());
        let large_append = frame(FrameKind::AppendRequest, &[0u8; 4096]);
        assert_eq!(bytes_wanted(&large_append[..30]), PLACEMENT_BYTES);
    }

    #[test]
    fn a_peer_hello_names_its_shard() {
        let mut body = vec![0u8; 16];
        body.extend_from_slice(&5u32.to_le_bytes());
        body.extend_from_slice(&[1, 1, 0, 0]);
        assert_eq!(peer_shard(&frame(FrameKind::PeerHello, &body)), Some(5));
        assert_eq!(peer_shard(&frame(FrameKind::Heartbeat, &body)), None);
        let mut wrong_version = frame(FrameKind::PeerHello, &body);
        wrong_version[4] = 9;
        assert_eq!(peer_shard(&wrong_version), None);
    }
}
