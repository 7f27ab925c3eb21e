//! The Rust client library, used by the CLI and the benchmark.
//!
//! A [`Client`] keeps one connection per node and partition (opened on first use,
//! dropped when it fails; a node serves each connection on the core of the partition
//! its first request names) and pipelines requests on it: each request carries an id, many can be
//! outstanding, and answers are matched by id in whatever order they come. It routes
//! partition requests to the partition's leader, following `NotLeader` redirects, and
//! retries with exponential backoff, within limits.
//!
//! Retry rules, chosen so that a retried append is never applied twice:
//! - `NotLeader`, `Overloaded` and `Unavailable` promise the request was not applied,
//!   so they are retried (a redirect at once; the others after a backoff).
//! - A failure to connect or to send is retried on the next node.
//! - A connection lost or a client-side timeout after an append was sent, or a
//!   server `Timeout` answer to an append, is [`ClientError::AppendAmbiguous`]: the
//!   records may or may not be in the log, and only the caller can decide what to do.
//!   Reads and metadata requests are idempotent and are retried.
//! - Leadership transfers are retried too, but a transfer to any other node is
//!   aimed so that it never moves leadership twice (see [`Client::transfer_leader`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::sync::Semaphore;
use thiserror::Error;

mod conn;
mod members;
mod retry;
mod transfer;

pub use members::PartitionResult;

use conn::{CallError, Conn};
use retry::{Next, Outcome};

use crate::engine::Index;
use crate::transport::client_msg::{
    AppendOk, AppendRequest, ClientRequest, ClientResponse, Metadata, ReadOk, ReadRequest,
    ServerError, TrimOk, TrimRequest, request_body_bytes,
};
use crate::transport::frame::FRAME_BODY_BYTES_MAX_DEFAULT;

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `host:port` client addresses to start from; any node will do.
    pub bootstrap_addrs: Vec<String>,
    pub connect_timeout_ms: u64,
    /// How long one attempt waits for its answer (a read's own wait is added).
    pub request_timeout_ms: u64,
    pub write_timeout_ms: u64,
    /// How long a request keeps retrying retryable failures (connection refused,
    /// no leader yet, ...) before giving up, like Kafka's `delivery.timeout.ms`. No
    /// attempt starts after it; an attempt already sent may still take up to
    /// `request_timeout_ms`, because cutting it short would make an append's outcome
    /// unknown.
    pub retry_deadline_ms: u64,
    /// Attempts after the first that a request may make on retryable failures; by
    /// default unlimited, so that `retry_deadline_ms` is the bound.
    pub retries_max: u32,
    /// NotLeader redirects one request may follow.
    pub redirects_max: u32,
    /// First retry delay; doubles per retry up to `retry_backoff_max_ms`, each drawn
    /// from [delay/2, delay].
    pub retry_backoff_initial_ms: u64,
    pub retry_backoff_max_ms: u64,
    pub frame_body_bytes_max: u32,
    /// Requests outstanding on one connection; further callers wait their turn.
    pub inflight_requests_max: usize,
    /// TLS to every node (`crate::tls::client_config`); None connects in plaintext.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl ClientConfig {
    pub fn new(bootstrap_addrs: Vec<String>) -> ClientConfig {
        ClientConfig {
            bootstrap_addrs,
            connect_timeout_ms: 1_000,
            request_timeout_ms: 5_000,
            write_timeout_ms: 5_000,
            retry_deadline_ms: 30_000,
            retries_max: u32::MAX,
            redirects_max: 5,
            retry_backoff_initial_ms: 20,
            retry_backoff_max_ms: 1_000,
            frame_body_bytes_max: FRAME_BODY_BYTES_MAX_DEFAULT,
            inflight_requests_max: 256,
            tls: None,
        }
    }
}

/// Why a client call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server answered with an error that retrying would not fix, or retries of
    /// a retryable one ran out.
    #[error("{addr} answered: {source}")]
    Server { addr: String, source: ServerError },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("cannot connect to {addr}: {reason}")]
    Tls { addr: String, reason: String },
    #[error("connection to {addr} lost: {reason}")]
    ConnectionLost { addr: String, reason: String },
    #[error("no answer from {addr} within {timeout_ms} ms")]
    Timeout { addr: String, timeout_ms: u64 },
    #[error(
        "append outcome unknown ({addr}: {reason}); the records may or may not have been appended"
    )]
    AppendAmbiguous { addr: String, reason: String },
    #[error("{addr} sent a response that does not fit the request: {reason}")]
    Protocol { addr: String, reason: String },
    #[error(
        "gave up{} after {} ({attempts} attempts); last error: {last}",
        partition.map_or(String::new(), |p| format!(" on partition {p}")),
        describe_ms(*elapsed_ms)
    )]
    RetriesExhausted {
        /// The partition the request was for, if it names one.
        partition: Option<u32>,
        attempts: u32,
        elapsed_ms: u64,
        last: Box<ClientError>,
    },
    #[error("no node address to try")]
    NoNodes,
    /// A membership change may or may not have committed: asked again, it would
    /// be refused if it had, so it is not retried.
    #[error("membership change outcome unknown ({addr}: {reason}); check with `ringlog members`")]
    ChangeAmbiguous { addr: String, reason: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Not sent: a server with the same frame limit would drop the connection.
    #[error(
        "request body of {body_bytes} bytes exceeds the {body_bytes_max}-byte frame limit; split it"
    )]
    RequestTooLarge {
        body_bytes: usize,
        body_bytes_max: u32,
    },
}

/// A connection's node address and the partition it is for.
type ConnKey = (String, Option<u32>);

/// Connections by node address, then by partition (None: metadata): two levels so
/// that a request finds its connection by `&str`, without building a key.
type Pool = HashMap<String, HashMap<Option<u32>, Rc<Conn>>>;

/// The partition `request` is for; None for metadata.
fn request_partition(request: &ClientRequest) -> Option<u32> {
    match request {
        ClientRequest::Append(r) => Some(r.partition),
        ClientRequest::Read(r) => Some(r.partition),
        ClientRequest::Trim(r) => Some(r.partition),
        ClientRequest::Transfer(r) => Some(r.partition),
        // Membership requests may name every partition: they share metadata's
        // connection, and the node routes them to each partition's shard.
        ClientRequest::Metadata
        | ClientRequest::Members(_)
        | ClientRequest::ChangeMembership(_) => None,
    }
}

/// A client of a ringlog cluster. Single-threaded: use one per glommio executor.
pub struct Client {
    config: ClientConfig,
    /// One connection per (node address, partition): a node serves each connection
    /// on the core of the partition its first request names, so a connection per
    /// partition keeps every request on its partition's core. Metadata has its own
    /// (partition None).
    pool: RefCell<Pool>,
    connect_gates: RefCell<HashMap<ConnKey, Rc<Semaphore>>>,
    leaders: RefCell<HashMap<u32, String>>,
    next_bootstrap: Cell<usize>,
    jitter: Cell<u64>,
}

impl Client {
    pub fn new(config: ClientConfig) -> Client {
        Client {
            config,
            pool: RefCell::new(HashMap::new()),
            connect_gates: RefCell::new(HashMap::new()),
            leaders: RefCell::new(HashMap::new()),
            next_bootstrap: Cell::new(0),
            jitter: Cell::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    /// Appends `records` to `partition`; returns the positions they got.
    pub async fn append(
        &self,
        partition: u32,
        records: Vec<Bytes>,
    ) -> Result<AppendOk, ClientError> {
        let request = ClientRequest::Append(AppendRequest { partition, records });
        match self.execute(&request).await? {
            (_, ClientResponse::Append(ok)) => Ok(ok),
            (addr, other) => Err(mismatch(addr, &other)),
        }
    }

    /// Reads committed records; see [`ReadRequest`].
    pub async fn read(&self, request: ReadRequest) -> Result<ReadOk, ClientError> {
        match self.execute(&ClientRequest::Read(request)).await? {
            (_, ClientResponse::Read(ok)) => Ok(ok),
            (addr, other) => Err(mismatch(addr, &other)),
        }
    }

    /// Removes the records of `partition` below `before` on every replica; returns
    /// the index of the trim's own entry in the log. A trim is safe to repeat, so it
    /// is retried like a read when its outcome is unknown.
    pub async fn trim(&self, partition: u32, before: Index) -> Result<Index, ClientError> {
        self.trim_ok(partition, before)
            .await
            .map(|ok| ok.trim_index)
    }

    /// [`Client::trim`], with the partition's new log start as the leader saw it.
    pub async fn trim_ok(&self, partition: u32, before: Index) -> Result<TrimOk, ClientError> {
        let request = ClientRequest::Trim(TrimRequest { partition, before });
        match self.execute(&request).await? {
            (_, ClientResponse::Trim(ok)) => Ok(ok),
            (addr, other) => Err(mismatch(addr, &other)),
        }
    }

    /// Asks any node for the cluster's nodes, partitions and leaders, and remembers
    /// the leaders it learns.
    pub async fn metadata(&self) -> Result<Metadata, ClientError> {
        let meta = match self.execute(&ClientRequest::Metadata).await? {
            (_, ClientResponse::Metadata(m)) => m,
            (addr, other) => return Err(mismatch(addr, &other)),
        };
        let mut leaders = self.leaders.borrow_mut();
        for p in &meta.partitions {
            if let Some(node) = p
                .leader
                .and_then(|l| meta.nodes.iter().find(|n| n.node_id == l))
            {
                leaders.insert(p.partition, node.client_addr.clone());
            }
        }
        Ok(meta)
    }

    /// One attempt at `addr`, no routing or retries: the building block for tools
    /// that want to talk to a specific node.
    pub async fn call(
        &self,
        addr: &str,
        request: &ClientRequest,
    ) -> Result<Result<ClientResponse, ServerError>, ClientError> {
        self.check_size(request)?;
        self.attempt(addr, request).await.map_err(|e| match e {
            CallError::Connect(source) => ClientError::Connect {
                addr: addr.to_string(),
                source,
            },
            CallError::Tls(reason) => ClientError::Tls {
                addr: addr.to_string(),
                reason,
            },
            CallError::NotSent(reason) | CallError::Lost(reason) => ClientError::ConnectionLost {
                addr: addr.to_string(),
                reason,
            },
            CallError::Timeout(timeout_ms) => ClientError::Timeout {
                addr: addr.to_string(),
                timeout_ms,
            },
        })
    }

    /// The live pooled connection to `addr` for `partition`, looked up without
    /// building a key (this runs for every request).
    fn pooled(&self, addr: &str, partition: Option<u32>) -> Option<Rc<Conn>> {
        let pool = self.pool.borrow();
        let conn = pool.get(addr)?.get(&partition)?;
        (!conn.is_broken()).then(|| conn.clone())
    }

    async fn connection(&self, addr: &str, partition: Option<u32>) -> Result<Rc<Conn>, CallError> {
        if let Some(c) = self.pooled(addr, partition) {
            return Ok(c);
        }
        // One connect per key at a time: callers arriving while it is under way
        // wait for it and then share the connection instead of opening their own.
        let gate = self
            .connect_gates
            .borrow_mut()
            .entry((addr.to_string(), partition))
            .or_insert_with(|| Rc::new(Semaphore::new(1)))
            .clone();
        let _permit = gate
            .acquire_permit(1)
            .await
            .map_err(|e| CallError::NotSent(e.to_string()))?;
        if let Some(c) = self.pooled(addr, partition) {
            return Ok(c);
        }
        let conn = Rc::new(Conn::open(addr, &self.config).await?);
        let mut pool = self.pool.borrow_mut();
        let by_partition = pool.entry(addr.to_string()).or_default();
        by_partition.insert(partition, conn.clone());
        Ok(conn)
    }

    /// Drops `conn`, which failed, from the pool, unless a newer one replaced it.
    fn forget_connection(&self, addr: &str, partition: Option<u32>, conn: &Rc<Conn>) {
        let mut pool = self.pool.borrow_mut();
        let Some(by_partition) = pool.get_mut(addr) else {
            return;
        };
        if by_partition
            .get(&partition)
            .is_some_and(|c| Rc::ptr_eq(c, conn))
        {
            by_partition.remove(&partition);
            // Its gate goes too, so that the gates of addresses a client stopped
            // using (old leaders, many partitions) do not pile up.
            let key = (addr.to_string(), partition);
            self.connect_gates.borrow_mut().remove(&key);
        }
    }

    async fn attempt(
        &self,
        addr: &str,
        request: &ClientRequest,
    ) -> Result<Result<ClientResponse, ServerError>, CallError> {
        let partition = request_partition(request);
        let conn = self.connection(addr, partition).await?;
        let wait_ms = match request {
            ClientRequest::Read(r) => u64::from(r.wait_timeout_ms),
            _ => 0,
        };
        let timeout = Duration::from_millis(self.config.request_timeout_ms + wait_ms);
        let result = conn.call(request, timeout).await;
        if matches!(result, Err(CallError::Lost(_) | CallError::NotSent(_))) {
            self.forget_connection(addr, partition, &conn);
        }
        result
    }

    fn next_bootstrap_addr(&self) -> Option<String> {
        let addrs = &self.config.bootstrap_addrs;
        if addrs.is_empty() {
            return None;
        }
        let i = self.next_bootstrap.get();
        self.next_bootstrap.set(i.wrapping_add(1));
        Some(addrs[i % addrs.len()].clone())
    }

    fn backoff_ms(&self, retry: u32) -> u64 {
        let base = self
            .config
            .retry_backoff_initial_ms
            .max(1)
            .saturating_mul(1u64 << retry.min(20))
            .min(self.config.retry_backoff_max_ms.max(1));
        let mut x = self.jitter.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter.set(x);
        base / 2 + x % (base / 2 + 1)
    }

    /// Routes, redirects and retries one request; returns the answering address too.
    async fn execute(
        &self,
        request: &ClientRequest,
    ) -> Result<(String, ClientResponse), ClientError> {
        self.check_size(request)?;
        let partition = request_partition(request);
        // A membership change, like an append, is not repeated once it may have
        // been acted on: asked again after committing, it would be refused.
        let is_append = matches!(
            request,
            ClientRequest::Append(_) | ClientRequest::ChangeMembership(_)
        );
        let mut addr = self.leader_or_bootstrap(partition)?;
        let mut budget = Budget::new(&self.config, partition);
        let mut redirects = 0u32;
        loop {
            let result = self.attempt(&addr, request).await;
            let (failure, next) = match retry::classify(&addr, is_append, result) {
                Outcome::Done(response) => return Ok((addr, response)),
                Outcome::Fail(error) => return Err(error),
                Outcome::Redirect { leader, .. } if redirects < self.config.redirects_max => {
                    redirects += 1;
                    if let Some(p) = partition {
                        self.leaders.borrow_mut().insert(p, leader.clone());
                    }
                    addr = leader;
                    continue;
                }
                Outcome::Redirect { failure, .. } => (
                    failure,
                    Next::NextNode {
                        forget_leader: true,
                    },
                ),
                Outcome::Retry { failure, next } => (failure, next),
            };
            if next
                == (Next::NextNode {
                    forget_leader: true,
                })
            {
                self.forget_leader(partition);
            }
            budget.back_off(self, failure).await?;
            addr = match next {
                Next::SameNode => addr,
                Next::NextNode { .. } => self.next_bootstrap_addr().ok_or(ClientError::NoNodes)?,
            };
        }
    }

    /// The partition's known leader, or else the next bootstrap address.
    fn leader_or_bootstrap(&self, partition: Option<u32>) -> Result<String, ClientError> {
        match partition.and_then(|p| self.leaders.borrow().get(&p).cloned()) {
            Some(a) => Ok(a),
            None => self.next_bootstrap_addr().ok_or(ClientError::NoNodes),
        }
    }

    fn check_size(&self, request: &ClientRequest) -> Result<(), ClientError> {
        let body_bytes = request_body_bytes(request);
        if body_bytes > self.config.frame_body_bytes_max as usize {
            return Err(ClientError::RequestTooLarge {
                body_bytes,
                body_bytes_max: self.config.frame_body_bytes_max,
            });
        }
        Ok(())
    }

    fn forget_leader(&self, partition: Option<u32>) {
        if let Some(p) = partition {
            self.leaders.borrow_mut().remove(&p);
        }
    }
}

/// What one request may still spend on retries: attempts and time.
struct Budget {
    partition: Option<u32>,
    started: Instant,
    deadline: Instant,
    retries: u32,
}

impl Budget {
    fn new(config: &ClientConfig, partition: Option<u32>) -> Budget {
        let started = Instant::now();
        Budget {
            partition,
            started,
            deadline: started + Duration::from_millis(config.retry_deadline_ms),
            retries: 0,
        }
    }

    /// Waits out the backoff before the next retry, or gives up with `failure` when
    /// the retries or the time run out first.
    async fn back_off(&mut self, client: &Client, failure: ClientError) -> Result<(), ClientError> {
        let backoff = Duration::from_millis(client.backoff_ms(self.retries));
        if self.retries >= client.config.retries_max || Instant::now() + backoff >= self.deadline {
            return Err(ClientError::RetriesExhausted {
                partition: self.partition,
                attempts: self.retries + 1,
                elapsed_ms: self.started.elapsed().as_millis() as u64,
                last: Box::new(failure),
            });
        }
        log::debug!("retrying after: {failure}");
        glommio::timer::sleep(backoff).await;
        self.retries += 1;
        Ok(())
    }
}

/// A duration for people: "800 ms", "1.5 s", "30 s".
fn describe_ms(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms.is_multiple_of(1_000) || ms >= 10_000 {
        format!("{} s", (ms + 500) / 1_000)
    } else {
        format!("{:.1} s", ms as f64 / 1_000.0)
    }
}

fn mismatch(addr: String, response: &ClientResponse) -> ClientError {
    let kind = match response {
        ClientResponse::Append(_) => "Append",
        ClientResponse::Read(_) => "Read",
        ClientResponse::Metadata(_) => "Metadata",
        ClientResponse::Trim(_) => "Trim",
        ClientResponse::Transfer(_) => "Transfer",
        ClientResponse::Members(_) => "Members",
        ClientResponse::ChangeMembership(_) => "MembershipChange",
    };
    ClientError::Protocol {
        addr,
        reason: format!("got a {kind} response"),
    }
}
