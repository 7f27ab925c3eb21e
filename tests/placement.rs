//! Connection placement on real processes: every connection is served by the shard
//! it uses. Peer links are served by the shard their handshake names, client
//! connections by the partition of their first request (the client library opens
//! one per partition), a connection that starts with metadata or arrives in pieces
//! is still served, and requests for another partition on a placed connection are
//! still answered (through that partition's inbox).

mod cluster_support;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cluster_support::observe::{await_metric, metric};
use cluster_support::*;
use ringlog::transport::client_msg::{
    AppendRequest, ClientRequest, ClientResponse, decode_response, encode_request,
};

const SERVED: &str = "ringlog_connections_served_total";
const WAIT: Duration = Duration::from_secs(30);

/// Records acknowledged for `partition`, as counted by the node's request path.
fn appended(addr: SocketAddr, partition: u32) -> f64 {
    let label = format!("partition=\"{partition}\"");
    metric(addr, "ringlog_append_records_total", &label).unwrap_or(0.0)
}

fn served(addr: SocketAddr, partition: u32, kind: &str) -> f64 {
    let label = format!("partition=\"{partition}\",kind=\"{kind}\"");
    metric(addr, SERVED, &label).unwrap_or(0.0)
}

/// Sends `request` whole or (`pieces`) a few bytes at a time on a fresh raw
/// connection, and returns the node's answer.
fn raw_call(addr: &str, requests: &[ClientRequest], pieces: bool) -> Vec<ClientResponse> {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answers = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        let mut out = BytesMut::new();
        encode_request(&mut out, i as u64 + 1, request);
        if pieces {
            // The first frame arrives in parts: placement must wait for the part
            // that names the partition, not guess from the header.
            for chunk in out.chunks(7) {
                stream.write_all(chunk).unwrap();
                stream.flush().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            stream.write_all(&out).unwrap();
        }
        let mut buf = BytesMut::new();
        let frame = read_frame(&mut stream, &mut buf, 1 << 20).expect("an answer");
        let answer = decode_response(&frame).expect("decodes");
        answers.push(answer.unwrap_or_else(|e| panic!("request {i} refused: {e}")));
    }
    answers
}

fn append(partition: u32, text: &str) -> ClientRequest {
    ClientRequest::Append(AppendRequest {
        partition,
        records: vec![Bytes::from(text.to_string())],
    })
}

#[test]
fn every_connection_is_served_by_the_shard_it_uses() {
    let cluster = TestCluster::start(3, 2);
    let addrs = cluster.client_addrs();
    let meta = on_executor(async move || {
        let client = client(addrs);
        let meta = await_leaders(&client, 2, WAIT).await;
        for partition in 0..2 {
            client
                .append(partition, vec![Bytes::from_static(b"placed")])
                .await
                .expect("append");
        }
        meta
    });
    // Each other node's shard dials each of this node's shards over two lanes.
    for k in 0..3 {
        for partition in 0..2 {
            await_metric(
                cluster.metrics_addr(k),
                SERVED,
                &format!("partition=\"{partition}\",kind=\"peer\""),
                "both peers' links served by their shard",
                WAIT,
                |v| v >= 4.0,
            );
        }
    }
    // The leader of partition 1 served the client's partition-1 connection on
    // shard 1; shard 0 served only the metadata connection and partition 0's.
    let leader = meta.partitions[1].leader.expect("a leader") as usize - 1;
    let at = cluster.metrics_addr(leader);
    assert!(served(at, 1, "client") >= 1.0, "shard 1 served no client");
}

#[test]
fn placed_connections_are_served_however_they_start() {
    let cluster = TestCluster::start(1, 2);
    let addr = cluster.client_addr(0);
    let probe = addr.clone();
    on_executor(async move || {
        await_leaders(&client(vec![probe]), 2, WAIT).await;
    });
    let at = cluster.metrics_addr(0);
    let before = (served(at, 0, "client"), served(at, 1, "client"));
    let appended_before = (appended(at, 0), appended(at, 1));
    // Arriving seven bytes at a time, a partition-1 append is still placed on
    // shard 1 and answered.
    let answers = raw_call(&addr, &[append(1, "in pieces")], true);
    assert!(matches!(answers[0], ClientResponse::Append(_)));
    assert_eq!(served(at, 1, "client"), before.1 + 1.0);
    // A connection that starts with metadata stays on shard 0, and the appends to
    // either partition that follow on it are answered all the same.
    let requests = [ClientRequest::Metadata, append(1, "p1"), append(0, "p0")];
    let answers = raw_call(&addr, &requests, false);
    assert!(matches!(answers[0], ClientResponse::Metadata(_)));
    assert!(matches!(answers[1], ClientResponse::Append(_)));
    assert!(matches!(answers[2], ClientResponse::Append(_)));
    assert_eq!(served(at, 0, "client"), before.0 + 1.0);
    // A partition-0 connection placed on shard 0 still reaches partition 1.
    let answers = raw_call(&addr, &[append(0, "p0"), append(1, "p1 via 0")], false);
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, ClientResponse::Append(_)))
    );
    assert_eq!(served(at, 0, "client"), before.0 + 2.0);
    assert_eq!(served(at, 1, "client"), before.1 + 1.0);
    // Appends answered by their own shard's executor (without a task) and those
    // routed to another executor are counted alike: two for partition 0, both on
    // its own executor, and three for partition 1, one of them on its own.
    assert_eq!(appended(at, 0), appended_before.0 + 2.0);
    assert_eq!(appended(at, 1), appended_before.1 + 3.0);
}
