//! Transport benchmark: codec throughput, one peer link on loopback, and raw loopback
//! TCP with the same message sizes for comparison.
//!
//! Run: `cargo bench --bench transport` (`-- --rounds N`, default 5; `-- --quick` for
//! one short round). Figures are medians over the rounds.
//! Each AppendEntries-like message carries 1 KiB records: 64 of them for the 64 KiB
//! case and 1024 for the 1 MiB case.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use ringlog::engine::{Entry, EntryKind, Message, MessageBody};
use ringlog::transport::frame::decode_frame;
use ringlog::transport::peer::{PeerAcceptor, PeerConfig, PeerHandler, PeerLink, SendError};
use ringlog::transport::peer_msg::{decode_message, encode_message, message_frame_bytes};

const RECORD_BYTES: usize = 1024;

fn append_entries(records: usize) -> Message {
    let payload = Bytes::from(vec![0xA5u8; RECORD_BYTES]);
    Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::AppendEntries {
            prev_log_index: 100,
            prev_log_term: 3,
            entries: (0..records)
                .map(|i| Entry {
                    term: 3,
                    index: 101 + i as u64,
                    kind: EntryKind::Record,
                    payload: payload.clone(),
                })
                .collect(),
            leader_commit: 100,
        },
    }
}

fn heartbeat() -> Message {
    Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::Heartbeat {
            leader_commit: 100,
            seq: 7,
        },
    }
}

struct Rate {
    per_sec: f64,
    gb_per_sec: f64,
}

fn rate(count: u64, bytes: u64, elapsed: Duration) -> Rate {
    let s = elapsed.as_secs_f64();
    Rate {
        per_sec: count as f64 / s,
        gb_per_sec: bytes as f64 / s / 1e9,
    }
}

/// Encodes `msg` into a reused buffer until `total_bytes` have been produced, then
/// decodes a buffer of the same frames (header check, crc, body decode with payload
/// slices).
fn codec(msg: &Message, total_bytes: usize) -> (Rate, Rate) {
    let frame_bytes = message_frame_bytes(msg);
    let count = (total_bytes / frame_bytes).max(1);
    let batch = (8 << 20) / frame_bytes + 1;
    let mut buf = BytesMut::with_capacity(batch * frame_bytes);
    let start = Instant::now();
    let mut done = 0;
    while done < count {
        buf.clear();
        for _ in 0..batch.min(count - done) {
            encode_message(&mut buf, msg);
        }
        done += batch.min(count - done);
        std::hint::black_box(&buf);
    }
    let encode = rate(count as u64, (count * frame_bytes) as u64, start.elapsed());

    let mut wire = BytesMut::with_capacity(batch * frame_bytes);
    for _ in 0..batch {
        encode_message(&mut wire, msg);
    }
    let wire = wire.freeze();
    let mut decoded = 0;
    let mut elapsed = Duration::ZERO;
    while decoded < count {
        // Copying the template stands in for the socket read; it is not timed.
        let mut b = BytesMut::from(&wire[..]);
        let start = Instant::now();
        while let Some(f) = decode_frame(&mut b, u32::MAX, None).expect("valid frames") {
            std::hint::black_box(decode_message(&f).expect("valid message"));
            decoded += 1;
        }
        elapsed += start.elapsed();
    }
    (
        encode,
        rate(decoded as u64, (decoded * frame_bytes) as u64, elapsed),
    )
}

/// Counts delivered messages for the link benchmark.
struct Count(Arc<AtomicU64>);

impl PeerHandler for Count {
    fn deliver(&self, _shard_id: u32, message: Message) {
        std::hint::black_box(&message);
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends `count` copies of `msg` over one peer link to an acceptor on another
/// executor (thread), timing from the first send to the last delivery.
fn link(msg: Message, count: u64) -> Rate {
    let delivered = Arc::new(AtomicU64::new(0));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let d = delivered.clone();
    let receiver = LocalExecutorBuilder::new(Placement::Unbound)
        .name("bench-recv")
        .spawn(move || async move {
            let config = Rc::new(PeerConfig::new(1, 2));
            let acceptor = PeerAcceptor::bind(
                "127.0.0.1:0".parse().unwrap(),
                config,
                Rc::new(Count(d.clone())),
            )
            .unwrap();
            addr_tx.send(acceptor.local_addr().unwrap()).unwrap();
            let task = glommio::spawn_local(acceptor.run());
            while d.load(Ordering::Relaxed) < count {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            drop(task);
        })
        .unwrap();
    let addr = addr_rx.recv().unwrap();
    let frame_bytes = message_frame_bytes(&msg) as u64;
    let d = delivered.clone();
    let sender = LocalExecutorBuilder::new(Placement::Unbound)
        .name("bench-send")
        .spawn(move || async move {
            let link = PeerLink::spawn(Rc::new(PeerConfig::new(1, 1)), 0, 2, addr);
            // Warm up: connect both lanes before timing.
            link.send(heartbeat()).unwrap();
            while !(link.is_connected(ringlog::transport::Lane::Bulk)
                && d.load(Ordering::Relaxed) == 1)
            {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            d.store(0, Ordering::Relaxed);
            let start = Instant::now();
            let mut sent = 0;
            while sent < count {
                match link.send(msg.clone()) {
                    Ok(()) => sent += 1,
                    // Back-pressure: the bulk queue is full; let the writer drain it.
                    Err(SendError::Full(_)) => {
                        glommio::timer::sleep(Duration::from_micros(50)).await
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            while d.load(Ordering::Relaxed) < count {
                glommio::timer::sleep(Duration::from_micros(100)).await;
            }
            start.elapsed()
        })
        .unwrap();
    let elapsed = sender.join().unwrap();
    receiver.join().unwrap();
    rate(count, count * frame_bytes, elapsed)
}

/// Raw loopback TCP between two glommio executors: writes of `chunk_bytes`, reads
/// into a buffer of the same size, nothing else.
fn raw_tcp(chunk_bytes: usize, count: u64) -> Rate {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let total = chunk_bytes as u64 * count;
    let receiver = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let mut s = listener.accept().await.unwrap();
            let mut buf = vec![0u8; chunk_bytes];
            let mut got = 0u64;
            while got < total {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got += n as u64;
            }
            s.write_all(b"k").await.unwrap();
        })
        .unwrap();
    let addr = addr_rx.recv().unwrap();
    let sender = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let buf = vec![0xA5u8; chunk_bytes];
            let start = Instant::now();
            for _ in 0..count {
                s.write_all(&buf).await.unwrap();
            }
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack).await.unwrap();
            start.elapsed()
        })
        .unwrap();
    let elapsed = sender.join().unwrap();
    receiver.join().unwrap();
    rate(count, total, elapsed)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map_or(if quick { 1 } else { 5 }, |r| {
            r.parse().expect("--rounds N")
        });
    let volume_bytes: usize = if quick { 256 << 20 } else { 1 << 30 };
    println!(
        "ringlog transport benchmark ({} MiB per case, median of {rounds} rounds)",
        volume_bytes >> 20
    );
    println!();
    println!(
        "codec (one thread)              encode frames/s   encode GB/s   decode frames/s   decode GB/s"
    );
    let cases = [
        ("heartbeat (56 B)", heartbeat()),
        ("AppendEntries 64 KiB", append_entries(64)),
        ("AppendEntries 1 MiB", append_entries(1024)),
    ];
    for (name, msg) in &cases {
        let total = if matches!(msg.body, MessageBody::Heartbeat { .. }) {
            volume_bytes / 8
        } else {
            volume_bytes
        };
        let runs: Vec<_> = (0..rounds).map(|_| codec(msg, total)).collect();
        let m = |f: fn(&(Rate, Rate)) -> f64| median(runs.iter().map(f).collect());
        println!(
            "{name:<30} {:>16.0} {:>13.2} {:>17.0} {:>13.2}",
            m(|r| r.0.per_sec),
            m(|r| r.0.gb_per_sec),
            m(|r| r.1.per_sec),
            m(|r| r.1.gb_per_sec)
        );
    }
    println!();
    println!(
        "loopback, two executors          link msgs/s     link GB/s    raw TCP GB/s    link/raw"
    );
    for (name, records) in [
        ("AppendEntries 64 KiB", 64usize),
        ("AppendEntries 1 MiB", 1024),
    ] {
        let msg = append_entries(records);
        let frame_bytes = message_frame_bytes(&msg);
        let count = (volume_bytes / frame_bytes).max(1) as u64;
        // Link and raw runs alternate so that both see the same background load.
        let (mut links, mut raws) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            links.push(link(msg.clone(), count));
            raws.push(raw_tcp(frame_bytes, count));
        }
        let link_gbs = median(links.iter().map(|r| r.gb_per_sec).collect());
        let raw_gbs = median(raws.iter().map(|r| r.gb_per_sec).collect());
        println!(
            "{name:<30} {:>13.0} {:>13.2} {:>15.2} {:>11.2}",
            median(links.iter().map(|r| r.per_sec).collect()),
            link_gbs,
            raw_gbs,
            link_gbs / raw_gbs
        );
    }
}
