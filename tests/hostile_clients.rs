//! A real `ringlog serve` process against clients that try to make it hold memory:
//! headers claiming large bodies that never come, and a client that pipelines large
//! reads and never reads its answers. The node's resident memory (VmRSS of its
//! process) must stay within a bound set by its `[clients]` limits.

mod cluster_support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use cluster_support::{TestCluster, await_leaders, client, on_executor};
use ringlog::transport::client_msg::{ClientRequest, ReadRequest, encode_request};
use ringlog::transport::frame::{FrameKind, encode_frame};

const MIB: u64 = 1 << 20;

/// A one-node cluster with `limits` applied to its `[clients]` table, serving.
fn start_node(limits: impl FnOnce(&mut ringlog::runtime::config::ClientSettings)) -> TestCluster {
    let mut cluster = TestCluster::configure_routed(1, 1, |_, _, addr| addr);
    limits(&mut cluster.configs[0].clients);
    cluster.write_config(0);
    cluster.spawn_all();
    let addrs = cluster.client_addrs();
    on_executor(async move || {
        await_leaders(&client(addrs), 1, Duration::from_secs(30)).await;
    });
    cluster
}

/// A field of /proc/PID/status, in bytes (the kernel reports kB).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS:")
}

/// The node's side of each established TCP connection on `port`: (remote port,
/// bytes received but not yet read by the node), from /proc/net/tcp.
fn server_sockets(port: u16) -> Vec<(u16, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port_of = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let established = f[3] == "01";
            let rx_queue = u64::from_str_radix(f[4].split(':').nth(1).unwrap(), 16).unwrap();
            (established && port_of(f[1]) == port).then(|| (port_of(f[2]), rx_queue))
        })
        .collect()
}

/// Waits (bounded, for a broken build) until `cond` holds.
fn await_condition(what: &str, mut cond: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < give_up, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// 300 connections each send a header claiming an 8 MiB body, then one byte of it,
/// and stay open. The node must hold what arrived, not what was claimed: before the
/// fix each cost a zeroed 8 MiB buffer (2.4 GiB in all).
#[test]
fn headers_claiming_megabytes_cost_what_arrives() {
    const CONNECTIONS: usize = 300;
    let cluster = start_node(|c| c.frame_timeout_ms = 120_000);
    let pid = cluster.pid(0).unwrap();
    let port = cluster.configs[0].listen.client.port();
    let before = rss_bytes(pid);
    let mut claim = BytesMut::new();
    encode_frame(&mut claim, FrameKind::AppendRequest, 1, |b| {
        b.put_bytes(0, 8 << 20)
    });
    claim.truncate(ringlog::transport::FRAME_HEADER_BYTES + 1);
    let attackers: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| {
            let mut s = TcpStream::connect(cluster.configs[0].listen.client).unwrap();
            s.write_all(&claim).unwrap();
            s
        })
        .collect();
    // Every attacker's bytes have left the kernel's queue for the node's buffers.
    await_condition("the node read every claim", || {
        let sockets = server_sockets(port);
        sockets.len() >= CONNECTIONS && sockets.iter().all(|(_, queued)| *queued == 0)
    });
    // A round trip on another connection lets the node finish handling what it read.
    let addrs = cluster.client_addrs();
    on_executor(async move || {
        client(addrs).metadata().await.unwrap();
    });
    let growth = rss_bytes(pid).saturating_sub(before);
    eprintln!(
        "{CONNECTIONS} connections claiming 8 MiB each: node RSS grew by {:.1} MiB",
        growth as f64 / MIB as f64
    );
    // Per connection: a 16 KiB read chunk, the 25 bytes received, and the task and
    // socket bookkeeping, about 20 KiB; 32 MiB leaves room for allocator slack and
    // is still 75 times less than the claims.
    assert!(growth < 32 * MIB, "RSS grew by {growth} bytes");
    drop(attackers);
}

/// A client pipelines hundreds of 4 MiB reads and never reads its socket. The node
/// stops taking its requests once `unwritten_bytes_max` of answers wait, cuts it off
/// after `write_timeout_ms`, and its memory stays under the limits plus a margin.
#[test]
fn a_client_that_never_reads_is_cut_off_with_bounded_memory() {
    const READS: u64 = 400;
    let cluster = start_node(|c| {
        c.unwritten_bytes_max = 8 * MIB;
        c.inflight_bytes_max = 16 * MIB;
        c.write_timeout_ms = 3_000;
    });
    let pid = cluster.pid(0).unwrap();
    let port = cluster.configs[0].listen.client.port();
    let addrs = cluster.client_addrs();
    // 8 MiB of records for the reads to return.
    on_executor(async move || {
        let c = client(addrs);
        for k in 0..16u8 {
            let record = Bytes::from(vec![k; 512 * 1024]);
            c.append(0, vec![record]).await.unwrap();
        }
    });
    let before = rss_bytes(pid);
    let mut reads = BytesMut::new();
    for id in 1..=READS {
        let read = ReadRequest {
            partition: 0,
            from_index: 1,
            max_records: 1_000,
            max_bytes: 4 << 20,
            wait_timeout_ms: 0,
            any_replica: false,
        };
        encode_request(&mut reads, id, &ClientRequest::Read(read));
    }
    let attacker = TcpStream::connect(cluster.configs[0].listen.client).unwrap();
    let attacker_port = attacker.local_addr().unwrap().port();
    // The node stops reading once its limits are reached, so the kernel's buffers
    // may fill: write from a thread and let the cut-off end it.
    let writer = {
        let mut s = attacker.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = s.write_all(&reads);
        })
    };
    let mut peak = before;
    await_condition("the node cut the silent reader off", || {
        peak = peak.max(rss_bytes(pid));
        !server_sockets(port)
            .iter()
            .any(|(remote, _)| *remote == attacker_port)
    });
    let _ = attacker.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    let growth = peak.saturating_sub(before);
    eprintln!(
        "{READS} pipelined 4 MiB reads, never read: node RSS peaked {:.1} MiB above its start",
        growth as f64 / MIB as f64
    );
    // Unwritten answers (8 MiB, plus those of the requests in flight when it was
    // reached: 16 MiB) and one read's transient copies between the log and the
    // answer; the margin covers allocator slack. Without the limits the answers of
    // every read pile up (1.6 GiB).
    assert!(growth < 64 * MIB, "RSS grew by {growth} bytes");
}
