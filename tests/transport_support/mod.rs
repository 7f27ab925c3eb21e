//! Shared helpers for the transport tests: an executor runner, a fake request
//! handler with an in-memory log, and a bounded condition wait.

#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use ringlog::transport::client_msg::*;
use ringlog::transport::server::{ClientListener, RequestHandler, ServerConfig};

/// Runs `make()` on a fresh unpinned glommio executor and returns its result.
pub fn run<F, Fut, T>(make: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(make)
        .expect("executor starts (is `ulimit -l` large enough?)")
        .join()
        .expect("executor finished")
}

/// Awaits `cond`, re-checking each millisecond. The deadline only keeps a broken
/// build from hanging CI; passing tests never come near it.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < give_up, "gave up waiting for: {what}");
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// An in-memory stand-in for the runtime: appends go to a per-partition vector.
#[derive(Default)]
pub struct FakeHandler {
    pub logs: RefCell<HashMap<u32, Vec<Bytes>>>,
    /// Partitions this node does not lead, with the leader's address.
    pub not_leader: RefCell<HashMap<u32, String>>,
    /// While positive, answer Overloaded and count down.
    pub overloaded: Cell<u32>,
    /// While positive, answer Unavailable and count down (after `overloaded`).
    pub unavailable: Cell<u32>,
    /// The `to` of every transfer asked of this node, in order, answered or not.
    pub transfers: RefCell<Vec<Option<u32>>>,
    pub requests: Cell<u64>,
    /// Requests whose first record starts with "slow:N" wait N ms before answering,
    /// so tests can make answers come back out of order.
    pub allow_slow: Cell<bool>,
    /// Reads waiting for records right now (dropped ones leave the count).
    pub reads_waiting: Cell<u64>,
    /// When set, reads that would wait beyond this many get Overloaded, as a shard
    /// with a bounded set of waiting reads answers.
    pub reads_waiting_max: Cell<Option<u64>>,
    /// Each partition's log start after the trims it got (absent: never trimmed).
    pub trimmed: RefCell<HashMap<u32, u64>>,
    /// When set, appends are refused with DiskLow naming this many free bytes.
    pub disk_free_bytes: Cell<Option<u64>>,
}

/// The watermark the fake names in its DiskLow refusals.
pub const FAKE_MIN_FREE_BYTES: u64 = 1 << 28;

/// Counts one waiting read for as long as it lives.
struct WaitingRead<'a>(&'a Cell<u64>);

impl Drop for WaitingRead<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl RequestHandler for FakeHandler {
    async fn handle(&self, request: ClientRequest) -> Result<ClientResponse, ServerError> {
        self.requests.set(self.requests.get() + 1);
        if let ClientRequest::Transfer(t) = &request {
            self.transfers.borrow_mut().push(t.to);
        }
        if self.overloaded.get() > 0 {
            self.overloaded.set(self.overloaded.get() - 1);
            return Err(ServerError::Overloaded);
        }
        if self.unavailable.get() > 0 {
            self.unavailable.set(self.unavailable.get() - 1);
            return Err(ServerError::Unavailable {
                reason: "the fake says so".into(),
            });
        }
        match request {
            ClientRequest::Append(a) => {
                if let Some(addr) = self.not_leader.borrow().get(&a.partition) {
                    return Err(ServerError::NotLeader {
                        leader: Some(1),
                        leader_addr: Some(addr.clone()),
                    });
                }
                if a.records.is_empty() {
                    return Err(ServerError::InvalidRequest {
                        reason: "no records".into(),
                    });
                }
                if let Some(free_bytes) = self.disk_free_bytes.get() {
                    return Err(ServerError::DiskLow {
                        node: 1,
                        free_bytes,
                        min_free_bytes: FAKE_MIN_FREE_BYTES,
                    });
                }
                if self.allow_slow.get()
                    && let Some(ms) = a.records[0].strip_prefix(b"slow:")
                {
                    let ms: u64 = std::str::from_utf8(ms).unwrap().parse().unwrap();
                    glommio::timer::sleep(Duration::from_millis(ms)).await;
                }
                let mut logs = self.logs.borrow_mut();
                let log = logs.entry(a.partition).or_default();
                let first_index = log.len() as u64 + 1;
                log.extend(a.records);
                Ok(ClientResponse::Append(AppendOk {
                    first_index,
                    last_index: log.len() as u64,
                }))
            }
            ClientRequest::Read(r) => {
                if let Some(addr) = self.not_leader.borrow().get(&r.partition) {
                    return Err(ServerError::NotLeader {
                        leader: Some(1),
                        leader_addr: Some(addr.clone()),
                    });
                }
                let give_up = Instant::now() + Duration::from_millis(u64::from(r.wait_timeout_ms));
                let mut waiting = None;
                loop {
                    let len = self.logs.borrow().get(&r.partition).map_or(0, Vec::len) as u64;
                    if r.from_index == 0 || r.from_index > len + 1 {
                        return Err(ServerError::OutOfRange {
                            log_start: 1,
                            log_end: len,
                        });
                    }
                    if r.from_index <= len || Instant::now() >= give_up {
                        let logs = self.logs.borrow();
                        let records = logs
                            .get(&r.partition)
                            .map(|log| {
                                log.iter()
                                    .enumerate()
                                    .skip(r.from_index as usize - 1)
                                    .take(r.max_records as usize)
                                    .map(|(i, p)| Record {
                                        index: i as u64 + 1,
                                        payload: p.clone(),
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        return Ok(ClientResponse::Read(ReadOk {
                            records,
                            commit_index: len,
                            log_start: 1,
                        }));
                    }
                    if waiting.is_none() {
                        let count = self.reads_waiting.get();
                        if self.reads_waiting_max.get().is_some_and(|max| count >= max) {
                            return Err(ServerError::Overloaded);
                        }
                        self.reads_waiting.set(count + 1);
                        waiting = Some(WaitingRead(&self.reads_waiting));
                    }
                    // The fake polls; the real runtime wakes readers on commit.
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
            }
            ClientRequest::Trim(t) => {
                if let Some(addr) = self.not_leader.borrow().get(&t.partition) {
                    return Err(ServerError::NotLeader {
                        leader: Some(1),
                        leader_addr: Some(addr.clone()),
                    });
                }
                // The trim takes a position of its own, as in the real log.
                let mut logs = self.logs.borrow_mut();
                let log = logs.entry(t.partition).or_default();
                log.push(Bytes::new());
                let mut trimmed = self.trimmed.borrow_mut();
                let start = trimmed.entry(t.partition).or_insert(1);
                *start = (*start).max(t.before);
                Ok(ClientResponse::Trim(TrimOk {
                    trim_index: log.len() as u64,
                    log_start: *start,
                }))
            }
            ClientRequest::Transfer(t) => {
                if let Some(addr) = self.not_leader.borrow().get(&t.partition) {
                    return Err(ServerError::NotLeader {
                        leader: Some(1),
                        leader_addr: Some(addr.clone()),
                    });
                }
                // This node leads: it hands over to `to`, or to node 2.
                Ok(ClientResponse::Transfer(TransferOk {
                    leader: t.to.unwrap_or(2),
                    term: 1,
                }))
            }
            ClientRequest::Members(_) | ClientRequest::ChangeMembership(_) => {
                Err(ServerError::InvalidRequest {
                    reason: "the fake has no members".into(),
                })
            }
            ClientRequest::Metadata => Ok(ClientResponse::Metadata(Metadata {
                cluster_id: 7,
                nodes: vec![NodeInfo {
                    node_id: 0,
                    client_addr: "127.0.0.1:1".into(),
                }],
                partitions: vec![],
            })),
        }
    }
}

/// Binds a client listener on a free loopback port and runs it in the background.
pub fn start_listener(
    config: ServerConfig,
    handler: Rc<FakeHandler>,
) -> (
    SocketAddr,
    std::sync::Arc<ringlog::transport::server::ListenerStats>,
) {
    let listener = ClientListener::bind("127.0.0.1:0".parse().unwrap(), config, handler).unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = listener.stats();
    glommio::spawn_local(listener.run()).detach();
    (addr, stats)
}
