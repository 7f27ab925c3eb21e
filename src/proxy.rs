//! A TCP fault proxy for tests and benchmarks. Debian here has no netem, so delays,
//! stalls and partitions come from this: put one proxy on each directed link (node A
//! dials the proxy instead of node B's peer address) and steer it while the cluster
//! runs. Because a ringlog peer link carries one direction of Raft traffic (A's
//! messages to B travel on connections A opened), cutting one proxy is a one-way
//! partition, and cutting both directions a symmetric one.
//!
//! Bytes are never reordered or altered within a connection: delay and jitter move
//! the time a chunk is forwarded, never its order, as a real network under TCP would.
//! Blocking closes live connections and refuses new ones; stalling holds bytes back
//! (the peer sees a silent, open connection) until released. Every queue is bounded.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::engine::rng::Rng;

/// Chunks of at most this many bytes are read and forwarded at a time…
const CHUNK_BYTES_MAX: usize = 64 << 10;
/// …and at most this many wait per direction of one connection (4 MiB), after which
/// reading stops and TCP pushes back on the sender.
const QUEUED_CHUNKS_MAX: usize = 64;
const CONNECT_TIMEOUT_MS: u64 = 1000;

/// A chunk of bytes and when it may be forwarded.
type Timed = (Instant, Vec<u8>);

/// The faults a proxy applies now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkFaults {
    /// Every chunk waits this long…
    pub delay: Duration,
    /// …plus a random extra up to this much (order is kept).
    pub jitter: Duration,
    /// Live connections are cut and new ones closed at once.
    pub blocked: bool,
    /// Bytes are held, connections stay open.
    pub stalled: bool,
}

struct Shared {
    target: SocketAddr,
    faults: Mutex<LinkFaults>,
    unstalled: Condvar,
    stopping: AtomicBool,
    /// Both sockets of every live connection, by number, to cut them when blocking.
    live: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    next_connection: AtomicU64,
    seeds: AtomicU64,
    forwarded_bytes: AtomicU64,
}

/// One proxy: listens on `local_addr`, forwards to its target. Dropping it stops it.
pub struct FaultProxy {
    local: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy on a free loopback port in front of `target`.
    pub fn start(target: SocketAddr) -> io::Result<FaultProxy> {
        FaultProxy::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), target)
    }

    pub fn start_on(listen: SocketAddr, target: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen)?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            faults: Mutex::new(LinkFaults::default()),
            unstalled: Condvar::new(),
            stopping: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
            seeds: AtomicU64::new(local.port() as u64),
            forwarded_bytes: AtomicU64::new(0),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name(format!("proxy-{}", local.port()))
            .spawn(move || accept_loop(listener, accepting))?;
        Ok(FaultProxy {
            local,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn faults(&self) -> LinkFaults {
        *self.shared.faults.lock().expect("proxy lock")
    }

    pub fn forwarded_bytes(&self) -> u64 {
        self.shared.forwarded_bytes.load(Ordering::Relaxed)
    }

    pub fn set_faults(&self, faults: LinkFaults) {
        *self.shared.faults.lock().expect("proxy lock") = faults;
        self.shared.unstalled.notify_all();
        if faults.blocked {
            self.shared.cut_all();
        }
    }

    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        self.set_faults(LinkFaults {
            delay,
            jitter,
            ..self.faults()
        });
    }

    /// Partition this direction: cut live connections, refuse new ones.
    pub fn block(&self) {
        self.set_faults(LinkFaults {
            blocked: true,
            ..self.faults()
        });
    }

    /// Hold bytes back (true) or let them go (false).
    pub fn stall(&self, stalled: bool) {
        self.set_faults(LinkFaults {
            stalled,
            ..self.faults()
        });
    }

    /// No faults at all.
    pub fn heal(&self) {
        self.set_faults(LinkFaults::default());
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.unstalled.notify_all();
        self.shared.cut_all();
        // Wake the acceptor blocked in accept().
        let _ = TcpStream::connect_timeout(&self.local, Duration::from_millis(CONNECT_TIMEOUT_MS));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Shared {
    fn cut_all(&self) {
        for (_, (a, b)) in self.live.lock().expect("proxy lock").drain() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Ends connection `id` in both directions (ringlog's connections never
    /// half-close), releasing its sockets.
    fn close(&self, id: u64) {
        if let Some((a, b)) = self.live.lock().expect("proxy lock").remove(&id) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for incoming in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = incoming else { continue };
        if shared.faults.lock().expect("proxy lock").blocked {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
        let Ok(server) = TcpStream::connect_timeout(&shared.target, timeout) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        if let Err(e) = connect_pumps(client, server, &shared) {
            eprintln!("fault proxy: cannot forward a connection: {e}");
        }
    }
}

fn connect_pumps(client: TcpStream, server: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    shared
        .live
        .lock()
        .expect("proxy lock")
        .insert(id, (client.try_clone()?, server.try_clone()?));
    pump(id, client.try_clone()?, server.try_clone()?, shared)?;
    pump(id, server, client, shared)
}

/// Forwards `from` to `to` on two threads: a reader that stamps each chunk with its
/// release time, and a writer that waits for it (and for any stall to end).
fn pump(id: u64, mut from: TcpStream, mut to: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    let (chunks, queued) = sync_channel::<Timed>(QUEUED_CHUNKS_MAX);
    let reading = Arc::clone(shared);
    let mut rng = Rng::new(shared.seeds.fetch_add(1, Ordering::Relaxed));
    thread::Builder::new()
        .name("proxy-read".into())
        .spawn(move || {
            let mut release_at = Instant::now();
            let mut buffer = vec![0u8; CHUNK_BYTES_MAX];
            while let Ok(read) = from.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                let faults = *reading.faults.lock().expect("proxy lock");
                let jitter_us = rng.range(0, faults.jitter.as_micros() as u64 + 1);
                let wanted = Instant::now() + faults.delay + Duration::from_micros(jitter_us);
                // Never earlier than the chunk before: delay moves bytes, never reorders them.
                release_at = release_at.max(wanted);
                if chunks.send((release_at, buffer[..read].to_vec())).is_err() {
                    break;
                }
            }
        })?;
    let writing = Arc::clone(shared);
    thread::Builder::new()
        .name("proxy-write".into())
        .spawn(move || {
            for (release_at, chunk) in queued {
                let now = Instant::now();
                if release_at > now {
                    thread::sleep(release_at - now);
                }
                if !wait_while_stalled(&writing) || to.write_all(&chunk).is_err() {
                    break;
                }
                writing
                    .forwarded_bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            writing.close(id);
        })?;
    Ok(())
}

/// Blocks while the link is stalled; false when the proxy is stopping or blocked.
fn wait_while_stalled(shared: &Shared) -> bool {
    let mut faults = shared.faults.lock().expect("proxy lock");
    while faults.stalled && !shared.stopping.load(Ordering::SeqCst) {
        faults = shared.unstalled.wait(faults).expect("proxy lock");
    }
    !faults.blocked && !shared.stopping.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port, serving each connection on its own thread.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let mut writer = stream;
                    let _ = io::copy(&mut reader, &mut writer);
                });
            }
        });
        address
    }

    fn round_trip(stream: &mut TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
        stream.write_all(payload)?;
        let mut back = vec![0u8; payload.len()];
        stream.read_exact(&mut back)?;
        Ok(back)
    }

    #[test]
    fn forwards_bytes_in_order_with_delay_and_jitter() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        proxy.set_delay(Duration::from_millis(20), Duration::from_millis(10));
        let mut stream = TcpStream::connect(proxy.local_addr()).unwrap();
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let started = Instant::now();
        assert_eq!(round_trip(&mut stream, &payload).unwrap(), payload);
        // Each direction waits at least the delay: a lower bound, not a timing test.
        assert!(started.elapsed() >= Duration::from_millis(40));
        // The counter moves just after each write, so wait for it to catch up.
        let counted = Instant::now() + Duration::from_secs(5);
        while proxy.forwarded_bytes() < 2 * payload.len() as u64 {
            assert!(
                Instant::now() < counted,
                "forwarded {} bytes",
                proxy.forwarded_bytes()
            );
            thread::yield_now();
        }
    }

    #[test]
    fn blocking_cuts_live_connections_and_refuses_new_ones_until_healed() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        let mut stream = TcpStream::connect(proxy.local_addr()).unwrap();
        assert_eq!(round_trip(&mut stream, b"ping").unwrap(), b"ping");
        proxy.block();
        assert!(
            round_trip(&mut stream, b"ping").is_err(),
            "live connection cut"
        );
        let mut refused = TcpStream::connect(proxy.local_addr()).unwrap();
        assert!(
            round_trip(&mut refused, b"ping").is_err(),
            "new connection refused"
        );
        proxy.heal();
        let mut healed = TcpStream::connect(proxy.local_addr()).unwrap();
        assert_eq!(round_trip(&mut healed, b"pong").unwrap(), b"pong");
    }

    #[test]
    fn stalling_holds_bytes_until_released() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        let mut stream = TcpStream::connect(proxy.local_addr()).unwrap();
        proxy.stall(true);
        stream.write_all(b"held").unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut back = [0u8; 4];
        assert!(
            stream.read_exact(&mut back).is_err(),
            "nothing passes while stalled"
        );
        proxy.stall(false);
        stream.set_read_timeout(None).unwrap();
        stream.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"held");
    }
}
