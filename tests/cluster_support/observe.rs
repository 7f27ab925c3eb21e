//! Watching nodes from the outside: HTTP answers, metrics awaited until they meet a
//! condition, and reads of a log whose start moves.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringlog::client::Client;
use ringlog::transport::{ClientRequest, ClientResponse, ReadRequest, ServerError};

/// `GET path` on a node's metrics port: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// `http_get`, or the error when the node does not answer (not started yet, or
/// gone).
pub fn try_http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let answer = match super::tls::metrics_ca() {
        Some(ca_file) => super::tls::try_https_get(addr, path, ca_file, Duration::from_secs(20))?,
        None => {
            let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(20))?;
            stream.set_read_timeout(Some(Duration::from_secs(20)))?;
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            answer
        }
    };
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {answer:?}")))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// The single series of `name` whose labels contain `label` (`""` for a metric
/// without labels), or None while the node does not export it or does not answer.
pub fn metric(addr: SocketAddr, name: &str, label: &str) -> Option<f64> {
    let (_, page) = try_http_get(addr, "/metrics").ok()?;
    let labelled = format!("{name}{{");
    let bare = format!("{name} ");
    let values: Vec<f64> = page
        .lines()
        .filter(|l| (l.starts_with(&labelled) && l.contains(label)) || l.starts_with(&bare))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(
        values.len() <= 1,
        "{name} with {label:?} names {} series on {addr}",
        values.len()
    );
    values.first().copied()
}

/// Polls a metric until `holds` accepts it; returns the value. Panics after
/// `limit` with `what` and the last value seen.
pub fn await_metric(
    addr: SocketAddr,
    name: &str,
    label: &str,
    what: &str,
    limit: Duration,
    holds: impl Fn(f64) -> bool,
) -> f64 {
    let give_up = Instant::now() + limit;
    loop {
        let value = metric(addr, name, label);
        if let Some(v) = value
            && holds(v)
        {
            return v;
        }
        assert!(
            Instant::now() < give_up,
            "gave up waiting for {what}: {name}{{{label}}} on {addr} is {value:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One node's retained log of a partition, as read from it.
#[derive(Debug)]
pub struct Retained {
    /// The log start the node named when the sweep had to skip to it (1 when it
    /// never had to): every index below it was removed when it was asked for.
    pub start: u64,
    pub records: Vec<(u64, Bytes)>,
}

/// Reads `partition` from node `addr` (its own state, `any_replica`) from index 1
/// until its commit index reaches `until`, jumping to the log start whenever the
/// node answers OutOfRange: what the node holds, and where it said its log starts.
pub async fn read_retained(
    client: &Client,
    addr: &str,
    partition: u32,
    until: u64,
    limit: Duration,
) -> Retained {
    let deadline = Instant::now() + limit;
    let mut retained = Retained {
        start: 1,
        records: Vec::new(),
    };
    let mut next = 1;
    loop {
        match read_once(client, addr, partition, next).await {
            Ok(ok) => {
                retained
                    .records
                    .extend(ok.records.iter().map(|r| (r.index, r.payload.clone())));
                next = ok.next_from(next);
                if ok.commit_index >= until && next > ok.commit_index {
                    return retained;
                }
            }
            Err(Some(log_start)) => {
                assert!(
                    log_start > next,
                    "{addr} refused index {next} as out of range, yet names log start {log_start}"
                );
                (retained.start, next) = (log_start, log_start);
            }
            Err(None) => glommio::timer::sleep(Duration::from_millis(20)).await,
        }
        assert!(
            Instant::now() < deadline,
            "node {addr} did not reach index {until} within {limit:?}"
        );
    }
}

/// One read from `from` on node `addr`: the answer, or `Err(Some(log_start))` for
/// OutOfRange, or `Err(None)` for anything a retry may fix.
async fn read_once(
    client: &Client,
    addr: &str,
    partition: u32,
    from: u64,
) -> Result<ringlog::transport::ReadOk, Option<u64>> {
    let request = ReadRequest {
        partition,
        from_index: from,
        max_records: 10_000,
        max_bytes: 4 << 20,
        wait_timeout_ms: 200,
        any_replica: true,
    };
    match client.call(addr, &ClientRequest::Read(request)).await {
        Ok(Ok(ClientResponse::Read(ok))) => Ok(ok),
        Ok(Err(ServerError::OutOfRange { log_start, .. })) if from < log_start => {
            Err(Some(log_start))
        }
        _ => Err(None),
    }
}

/// The log start an OutOfRange message names ("the log holds indexes S to E").
pub fn named_log_start(message: &str) -> Option<u64> {
    let after = message.split("the log holds indexes ").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

/// Reads index `index` of `partition` on node `addr` expecting OutOfRange, and
/// returns the error's message (which names the log start).
pub async fn out_of_range_message(
    client: &Client,
    addr: &str,
    partition: u32,
    index: u64,
) -> String {
    let request = ReadRequest {
        partition,
        from_index: index,
        max_records: 1,
        max_bytes: 1 << 20,
        wait_timeout_ms: 0,
        any_replica: true,
    };
    match client.call(addr, &ClientRequest::Read(request)).await {
        Ok(Err(error @ ServerError::OutOfRange { .. })) => error.to_string(),
        other => panic!(
            "{addr}: a read of index {index} of partition {partition} was not refused as out of range: {other:?}"
        ),
    }
}
