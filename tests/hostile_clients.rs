//! A real `ringlog serve` process against hostile clients (issue 14). Memory
//! attacks: headers claiming large bodies that never come, and a client that
//! pipelines large reads and never reads its answers; the node's resident memory
//! (VmRSS of its process) must stay within a bound set by its `[clients]` limits.
//! Protocol abuse: request id 0, a broken frame, a wait above `reads.wait_ms_max`,
//! a flood of long polls, and reads whose answers must keep to `max_bytes`, the
//! server's caps and the frame limit. After each attack the node must be up, serve
//! an append and a read, and have grown by less than the attack's stated bound.

mod cluster_support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use cluster_support::*;
use ringlog::runtime::config::{ClientSettings, ReadSettings, WalSettings};
use ringlog::transport::client_msg::{
    ClientRequest, ClientResponse, ReadOk, ReadRequest, ServerError, decode_closing_notice,
    decode_response, encode_request,
};
use ringlog::transport::frame::{FrameKind, encode_frame};
use ringlog::transport::{CloseCause, Frame};

/// How long any awaited condition may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// A one-node cluster with `limits` applied to its `[clients]` and `[reads]`
/// tables, serving.
fn start_node(
    limits: impl FnOnce(&mut ClientSettings, &mut ReadSettings, &mut WalSettings),
) -> TestCluster {
    let mut cluster = TestCluster::configure_routed(1, 1, |_, _, addr| addr);
    let config = &mut cluster.configs[0];
    limits(&mut config.clients, &mut config.reads, &mut config.wal);
    cluster.write_config(0);
    cluster.spawn_all();
    let addrs = cluster.client_addrs();
    on_executor(async move || {
        await_leaders(&client(addrs), 1, Duration::from_secs(30)).await;
    });
    cluster
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

/// The memory attacks share one node, one after the other, each against a
/// baseline of its own.
#[test]
fn memory_attacks_cost_what_the_limits_allow() {
    let mut cluster = start_node(|c, _, _| {
        c.frame_timeout_ms = 120_000;
        c.unwritten_bytes_max = 8 * MIB;
        c.inflight_bytes_max = 16 * MIB;
        c.write_timeout_ms = 3_000;
    });
    headers_claiming_megabytes_cost_what_arrives(&mut cluster);
    assert_alive_and_serving(&mut cluster, 0, "300 headers claiming 8 MiB");
    a_client_that_never_reads_is_cut_off_with_bounded_memory(&cluster);
    assert_alive_and_serving(&mut cluster, 0, "a client that never reads");
}

/// 300 connections each send a header claiming an 8 MiB body, then one byte of it,
/// and stay open. The node must hold what arrived, not what was claimed: before the
/// fix each cost a zeroed 8 MiB buffer (2.4 GiB in all).
fn headers_claiming_megabytes_cost_what_arrives(cluster: &mut TestCluster) {
    const CONNECTIONS: usize = 300;
    let port = cluster.configs[0].listen.client.port();
    let mut memory = MemoryWatch::start(cluster.pid(0).unwrap());
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
    await_condition("the node read every claim", PATIENCE, || {
        let sockets = server_sockets(port);
        sockets.len() >= CONNECTIONS && sockets.iter().all(|(_, queued)| *queued == 0)
    });
    // The node is up and serving with all 300 still open, and a round trip on
    // another connection lets it finish handling what it read.
    assert_alive_and_serving(cluster, 0, "300 headers claiming 8 MiB (still open)");
    // Per connection: a 16 KiB read chunk, the 25 bytes received, and the task and
    // socket bookkeeping, about 20 KiB; 32 MiB leaves room for allocator slack and
    // is still 75 times less than the claims.
    memory.assert_below("300 connections claiming 8 MiB each", 32 * MIB);
    drop(attackers);
}

/// A client pipelines hundreds of 4 MiB reads and never reads its socket. The node
/// stops taking its requests once `unwritten_bytes_max` of answers wait, cuts it off
/// after `write_timeout_ms`, and its memory stays under the limits plus a margin.
fn a_client_that_never_reads_is_cut_off_with_bounded_memory(cluster: &TestCluster) {
    const READS: u64 = 400;
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
    let mut memory = MemoryWatch::start(cluster.pid(0).unwrap());
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
    await_condition("the node cut the silent reader off", PATIENCE, || {
        memory.sample();
        !server_sockets(port)
            .iter()
            .any(|(remote, _)| *remote == attacker_port)
    });
    let _ = attacker.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    // Unwritten answers (8 MiB, plus those of the requests in flight when it was
    // reached: 16 MiB) and one read's transient copies between the log and the
    // answer; the margin covers allocator slack. Without the limits the answers of
    // every read pile up (1.6 GiB).
    memory.assert_below(
        &format!("{READS} pipelined 4 MiB reads, never read"),
        64 * MIB,
    );
}

/// The protocol node's client frame limit: small, so that an answer reaches it
/// with few records.
const FRAME_LIMIT: u32 = 256 << 10;
/// The protocol node's record limit: within one answer frame.
const RECORD_LIMIT: u64 = 64 << 10;
/// `reads.bytes_max` and `reads.records_max` of the protocol node: below what the
/// attacks ask, and each below what the other allows for the records it is tested
/// with (one-byte records meet the count, 4 KiB records the bytes, 16-byte records
/// the frame limit first).
const SERVER_BYTES_MAX: u32 = 192 << 10;
const SERVER_RECORDS_MAX: u32 = 12_000;
/// `reads.wait_ms_max` of the protocol node.
const WAIT_MAX_MS: u32 = 30_000;
/// Reads one connection may have waiting, and the shard's.
const WAITING_PER_CONNECTION: u32 = 16;
const WAITING_PER_SHARD: u32 = 64;
/// What the protocol attacks together may add to the node's memory: an answer is
/// at most one 256 KiB frame, a connection holds at most 16 waiting reads, and
/// every refused request is dropped; 8 MiB covers allocator slack (1.3 MiB was
/// measured).
const PROTOCOL_RSS_BOUND: u64 = 8 * MIB;

/// A raw client connection, for what the client library never sends.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect_timeout(&addr, PATIENCE).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    fn send(&mut self, request_id: u64, request: &ClientRequest) {
        let mut out = BytesMut::new();
        encode_request(&mut out, request_id, request);
        self.stream.write_all(&out).unwrap();
    }

    fn frame(&mut self) -> Option<Frame> {
        read_frame(&mut self.stream, &mut self.buf, 1 << 20)
    }

    /// The next answer: its request id and what it says.
    fn answer(&mut self) -> (u64, Result<ClientResponse, ServerError>) {
        let frame = self.frame().expect("an answer, not a closed connection");
        let answer = decode_response(&frame).expect("an answer frame");
        (frame.request_id, answer)
    }

    /// The connection still carries requests: a metadata request is answered.
    fn assert_usable(&mut self, request_id: u64) {
        self.send(request_id, &ClientRequest::Metadata);
        let (id, answer) = self.answer();
        assert_eq!(id, request_id);
        assert!(
            matches!(answer, Ok(ClientResponse::Metadata(_))),
            "{answer:?}"
        );
    }
}

fn read_request(from_index: u64, max_records: u32, max_bytes: u32, wait_ms: u32) -> ReadRequest {
    ReadRequest {
        partition: 0,
        from_index,
        max_records,
        max_bytes,
        wait_timeout_ms: wait_ms,
        any_replica: false,
    }
}

/// Where each run of records of one size starts in the protocol node's log.
struct Runs {
    one_byte: u64,
    sixteen_bytes: u64,
    four_kib: u64,
}

/// Appends 13,000 one-byte records, 10,000 of 16 bytes and 60 of 4 KiB, in that
/// order, and returns where each run starts.
fn load_runs(addrs: Vec<String>) -> Runs {
    on_executor(async move || {
        let c = client(addrs);
        let mut starts = Vec::new();
        for (count, size, batch) in [(13_000, 1, 1_000), (10_000, 16, 1_000), (60, 4096, 10)] {
            let mut start = None;
            for _ in 0..count / batch {
                let records = (0..batch).map(|_| Bytes::from(vec![b'r'; size])).collect();
                let ok = c.append(0, records).await.expect("append");
                start.get_or_insert(ok.first_index);
            }
            starts.push(start.unwrap());
        }
        Runs {
            one_byte: starts[0],
            sixteen_bytes: starts[1],
            four_kib: starts[2],
        }
    })
}

fn read(addrs: Vec<String>, request: ReadRequest) -> ReadOk {
    on_executor(async move || client(addrs).read(request).await.expect("a read answer"))
}

fn payload_bytes(answer: &ReadOk) -> usize {
    answer.records.iter().map(|r| r.payload.len()).sum()
}

/// The protocol attacks share one node; each checks its own answer, then that the
/// node is up and serving within the memory bound.
#[test]
fn protocol_abuse_gets_clear_answers_and_the_node_serves_on() {
    let mut cluster = start_node(|c, r, wal| {
        c.frame_body_bytes_max = FRAME_LIMIT;
        // A record must fit in one answer frame, or the node refuses its config.
        wal.record_size_bytes_max = RECORD_LIMIT;
        c.waiting_reads_per_connection_max = WAITING_PER_CONNECTION;
        r.wait_ms_max = WAIT_MAX_MS;
        r.bytes_max = SERVER_BYTES_MAX;
        r.records_max = SERVER_RECORDS_MAX;
        r.waiting_max = WAITING_PER_SHARD;
    });
    let runs = load_runs(cluster.client_addrs());
    let addr = cluster.configs[0].listen.client;
    let mut memory = MemoryWatch::start(cluster.pid(0).unwrap());
    let mut survived = |cluster: &mut TestCluster, attack: &str| {
        assert_alive_and_serving(cluster, 0, attack);
        memory.assert_below(attack, PROTOCOL_RSS_BOUND);
    };

    request_id_zero_is_refused_and_the_connection_stays(addr);
    survived(&mut cluster, "request id 0");
    a_protocol_error_gets_a_closing_notice_before_the_close(addr);
    survived(&mut cluster, "a broken frame");
    a_wait_above_the_maximum_is_refused(addr);
    survived(&mut cluster, "a wait above reads.wait_ms_max");
    long_polls_of_one_connection_leave_room_for_another(&cluster);
    survived(&mut cluster, "a flood of long polls");
    reads_keep_to_max_bytes_the_server_caps_and_the_frame_limit(&cluster, &runs);
    survived(&mut cluster, "reads asking for too much");
}

/// The reserved request id gets InvalidRequest under id 0, and the connection
/// carries the next request.
fn request_id_zero_is_refused_and_the_connection_stays(addr: SocketAddr) {
    let mut raw = Raw::connect(addr);
    raw.send(0, &ClientRequest::Metadata);
    let (id, answer) = raw.answer();
    assert_eq!(id, 0);
    assert!(
        matches!(answer, Err(ServerError::InvalidRequest { .. })),
        "{answer:?}"
    );
    raw.assert_usable(7);
}

/// Bytes that are no frame (a scanner's HTTP request) get a ClosingNotice naming a
/// protocol error, and then the close.
fn a_protocol_error_gets_a_closing_notice_before_the_close(addr: SocketAddr) {
    let mut raw = Raw::connect(addr);
    raw.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: ringlog\r\n\r\n")
        .unwrap();
    let frame = raw.frame().expect("a closing notice before the close");
    assert_eq!(frame.kind, FrameKind::ClosingNotice);
    let notice = decode_closing_notice(&frame).expect("a valid closing notice");
    assert_eq!(notice.cause, CloseCause::ProtocolError, "{notice:?}");
    assert!(raw.frame().is_none(), "nothing follows a closing notice");
}

/// A long poll above `reads.wait_ms_max` is refused naming the setting, and the
/// connection carries the next request.
fn a_wait_above_the_maximum_is_refused(addr: SocketAddr) {
    let mut raw = Raw::connect(addr);
    raw.send(
        1,
        &ClientRequest::Read(read_request(1, 1, 1, WAIT_MAX_MS + 1)),
    );
    let (id, answer) = raw.answer();
    assert_eq!(id, 1);
    match answer {
        Err(ServerError::InvalidRequest { reason }) => {
            assert!(reason.contains("reads.wait_ms_max"), "{reason}")
        }
        other => panic!("a wait above the maximum was not refused: {other:?}"),
    }
    raw.assert_usable(2);
}

/// One connection sends 200 long polls past the commit index: all but its own
/// allowance are answered Overloaded at once, so another connection's long poll
/// still finds a place among the shard's and is answered by the next append.
fn long_polls_of_one_connection_leave_room_for_another(cluster: &TestCluster) {
    const POLLS: u64 = 200;
    let addr = cluster.configs[0].listen.client;
    let addrs = cluster.client_addrs();
    let meta = on_executor(async move || client(addrs).metadata().await.unwrap());
    let next = meta.partitions[0].commit_index + 1;
    let poll = ClientRequest::Read(read_request(next, 10, 1 << 16, WAIT_MAX_MS));
    let mut flood = Raw::connect(addr);
    for id in 1..=POLLS {
        flood.send(id, &poll);
    }
    for _ in 0..POLLS - u64::from(WAITING_PER_CONNECTION) {
        let (id, answer) = flood.answer();
        assert!(
            matches!(answer, Err(ServerError::Overloaded)),
            "long poll {id}: {answer:?}"
        );
    }
    let mut other = Raw::connect(addr);
    other.send(1, &poll);
    let addrs = cluster.client_addrs();
    on_executor(async move || {
        let record = Bytes::from_static(b"wakes the long polls");
        client(addrs).append(0, vec![record]).await.unwrap();
    });
    let (id, answer) = other.answer();
    assert_eq!(id, 1);
    match answer {
        Ok(ClientResponse::Read(ok)) => assert!(!ok.records.is_empty(), "{ok:?}"),
        other => panic!("the other connection's long poll was not served: {other:?}"),
    }
}

/// `max_bytes` is a cap that only a lone first record passes; the server lowers
/// `max_bytes` and `max_records` to its own caps; an answer that would pass the
/// frame limit comes back shorter, never refused.
fn reads_keep_to_max_bytes_the_server_caps_and_the_frame_limit(cluster: &TestCluster, runs: &Runs) {
    let addrs = || cluster.client_addrs();
    let capped = read(addrs(), read_request(runs.four_kib, 1_000, 10_000, 0));
    assert_eq!(
        capped.records.len(),
        2,
        "two 4 KiB records fit in 10,000 bytes"
    );
    let lone = read(addrs(), read_request(runs.four_kib, 1_000, 100, 0));
    assert_eq!(
        lone.records.len(),
        1,
        "the first record comes even when larger"
    );
    assert_eq!(payload_bytes(&lone), 4096);

    let bytes = read(addrs(), read_request(runs.four_kib, u32::MAX, u32::MAX, 0));
    assert_eq!(
        payload_bytes(&bytes),
        SERVER_BYTES_MAX as usize,
        "reads.bytes_max caps max_bytes (48 records of 4 KiB)"
    );
    let count = read(addrs(), read_request(runs.one_byte, u32::MAX, u32::MAX, 0));
    assert_eq!(count.records.len(), SERVER_RECORDS_MAX as usize);

    // 16-byte records cost 28 bytes each in the answer: the frame holds 9,361 of
    // them, fewer than either cap allows.
    let framed = read(
        addrs(),
        read_request(runs.sixteen_bytes, u32::MAX, u32::MAX, 0),
    );
    let body = 24
        + framed
            .records
            .iter()
            .map(|r| 12 + r.payload.len())
            .sum::<usize>();
    assert!(body <= FRAME_LIMIT as usize, "{body}-byte answer");
    assert!(
        body + 28 > FRAME_LIMIT as usize,
        "cut short of the frame limit: {body}"
    );
    assert!(framed.records.len() < SERVER_RECORDS_MAX as usize);
    assert!(payload_bytes(&framed) < SERVER_BYTES_MAX as usize);
}
