//! One shard: the member of the Raft group for partition `shard_id`, its WAL, its
//! links to the same shard on the other nodes, and the event loop that joins them.
//!
//! One turn of the loop: wait for something (an input, a finished flush, the next
//! tick), drain everything else that is ready without waiting, feed it all to the
//! engine as one batch, then carry out the engine's commands: storage commands go to
//! the WAL's buffer in order and one flush (write + fdatasync) covers the whole
//! turn's appends while earlier flushes may still run; messages go to the peer
//! links, which write many per syscall; answers go back to waiting clients.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future;
use thiserror::Error;

use super::inbox::{LaneReceiver, Reply, ShardInput};
use super::lifecycle::{Lifecycle, LifecycleSettings};
use super::reads::{LogBounds, ReadLimits, Reads};
use crate::engine::{
    self, AppendError, Command, Engine, Event, Index, Message, MessageBody, NodeId, ReadError,
    Role, Term,
};
use crate::metrics::health::HealthBoard;
use crate::metrics::{NodeMetrics, ShardMetrics};
use crate::transport::peer::{LinkCloser, PeerConfig, PeerLink, SendError};
use crate::transport::{AppendOk, PartitionInfo, ReadOk, ReadRequest, ServerError, TrimOk};
use crate::wal::config::WalConfig;
use crate::wal::error::{WalError, WalResult};
use crate::wal::log::{Durable, Wal};
use crate::wal::recovery::RecoveryReport;
use crate::wal::storage::DmaStorage;

#[derive(Debug, Error)]
pub enum ShardError {
    #[error("shard {shard}: cannot open the WAL in {dir}: {source}")]
    Open {
        shard: u32,
        dir: String,
        source: WalError,
    },
    /// The recovered hard state is older than the log: the log holds entries of a
    /// term the member never recorded, so its vote in that term is unknown.
    #[error(
        "shard {shard}: the WAL in {dir} holds entries of term {log_term} but its hard state says term {hard_term}: the term change (and any vote in it) was lost in a crash by a ringlog older than this one. Starting could vote twice in one term; treat this shard's disk as lost (docs/operations.md, \"A failed or replaced disk\")"
    )]
    HardStateBehindLog {
        shard: u32,
        dir: String,
        log_term: Term,
        hard_term: Term,
    },
    /// A write or sync failed: the shard stops rather than acknowledge anything
    /// that might not be on disk (fail-stop).
    #[error("shard {shard}: WAL failure, stopping: {source}")]
    Wal { shard: u32, source: WalError },
}

/// Everything a shard needs to start.
pub struct ShardContext {
    pub shard_id: u32,
    pub node_id: NodeId,
    pub members: Vec<NodeId>,
    pub peer_addrs: BTreeMap<NodeId, SocketAddr>,
    pub client_addrs: BTreeMap<NodeId, String>,
    pub engine_config: engine::Config,
    pub wal_config: WalConfig,
    pub wal_dir: PathBuf,
    /// Segment files opened with O_DSYNC (see `DmaStorage::write_through`).
    pub write_through: bool,
    pub peer_config: PeerConfig,
    /// Closes the inbound link of a peer whose message the engine refused.
    pub link_closer: LinkCloser,
    pub tick: Duration,
    pub seed: u64,
    pub stop: Arc<AtomicBool>,
    /// Client requests and status queries.
    pub inbox: LaneReceiver<ShardInput>,
    /// Messages from the same shard on other nodes, drained before `inbox`.
    pub peer_inbox: LaneReceiver<Message>,
    /// The server's bounds on reads, the client frame limit among them.
    pub read_limits: ReadLimits,
    pub metrics: Arc<NodeMetrics>,
    pub health: Arc<HealthBoard>,
    /// Retention and the low-disk watermark.
    pub lifecycle: LifecycleSettings,
}

/// What one record costs in the WAL's buffer beyond its payload (its header, and
/// the end of a block it may skip), as the WAL counts it.
const WAL_RECORD_COST_BYTES: usize = 2 * crate::wal::format::RECORD_HEADER_BYTES;

/// Events fed to the engine in one turn at most; the rest wait for the next turn,
/// so that one turn's latency stays bounded under a flood.
const TURN_EVENTS_MAX: usize = 4096;

/// Why the loop woke up.
enum Wake {
    Peer(Message),
    Input(Option<ShardInput>),
    Flushed(WalResult<Durable>),
    Timer,
}

struct Shard {
    id: u32,
    wal_limits: WalConfig,
    client_addrs: BTreeMap<NodeId, String>,
    engine: Engine,
    wal: Rc<Wal<DmaStorage>>,
    links: BTreeMap<NodeId, Rc<PeerLink>>,
    inbox: LaneReceiver<ShardInput>,
    peer_inbox: LaneReceiver<Message>,
    /// Messages waiting for the storage op they depend on to be durable.
    held: Vec<(u64, Message)>,
    durable_op: u64,
    flushes_in_flight: usize,
    flushes_in_flight_max: usize,
    flushed_tx: flume::Sender<WalResult<Durable>>,
    flushed_rx: flume::Receiver<WalResult<Durable>>,
    next_request: u64,
    appends: HashMap<u64, Reply<AppendOk>>,
    /// Trims waiting for their entry to commit (answered like appends).
    trims: HashMap<u64, Reply<TrimOk>>,
    /// Leader reads waiting for their read-index barrier.
    barriers: HashMap<u64, (ReadRequest, Reply<ReadOk>)>,
    reads: Reads,
    commit: Index,
    role: Role,
    term: Term,
    leader: Option<NodeId>,
    tick: Duration,
    next_tick: Instant,
    metrics: ShardMetrics,
    link_closer: LinkCloser,
    health: Arc<HealthBoard>,
    /// Log entries and payload bytes submitted since the last flush started (the
    /// next flush's batch size).
    unflushed_entries: u64,
    unflushed_bytes: u64,
    /// The abstention marker, while the engine abstains (see [`abstention`]).
    abstain_marker: Option<PathBuf>,
    /// Retention, the low-disk watermark and their metrics.
    lifecycle: Lifecycle,
}

/// Runs shard `ctx.shard_id` until `ctx.stop` is set or its WAL fails.
pub async fn run_shard(ctx: ShardContext) -> Result<(), ShardError> {
    let mut shard = Shard::open(ctx.clone_parts()).await?;
    let stop = ctx.stop;
    log::info!(
        "shard {}: recovered log {}..={}, term {}",
        shard.id,
        shard.engine.log().start(),
        shard.engine.log().last_index(),
        shard.engine.term()
    );
    while !stop.load(Ordering::Relaxed) {
        if let Err(error) = shard.turn().await {
            // Fail-stop: nothing more is acknowledged, and appends in flight may
            // or may not commit elsewhere, so their clients hear Timeout, not a
            // refusal they would retry.
            shard.answer_all_waiting(ServerError::Unavailable {
                reason: format!("shard failed: {error}"),
            });
            return Err(error);
        }
    }
    shard.shut_down().await
}

/// The parts of a context `Shard::open` consumes (the stop flag stays with the loop).
struct OpenParts {
    shard_id: u32,
    node_id: NodeId,
    members: Vec<NodeId>,
    peer_addrs: BTreeMap<NodeId, SocketAddr>,
    client_addrs: BTreeMap<NodeId, String>,
    engine_config: engine::Config,
    wal_config: WalConfig,
    wal_dir: PathBuf,
    write_through: bool,
    peer_config: PeerConfig,
    link_closer: LinkCloser,
    tick: Duration,
    seed: u64,
    inbox: LaneReceiver<ShardInput>,
    peer_inbox: LaneReceiver<Message>,
    read_limits: ReadLimits,
    metrics: Arc<NodeMetrics>,
    health: Arc<HealthBoard>,
    lifecycle: LifecycleSettings,
}

impl ShardContext {
    fn clone_parts(&self) -> OpenParts {
        OpenParts {
            shard_id: self.shard_id,
            node_id: self.node_id,
            members: self.members.clone(),
            peer_addrs: self.peer_addrs.clone(),
            client_addrs: self.client_addrs.clone(),
            engine_config: self.engine_config.clone(),
            wal_config: self.wal_config.clone(),
            wal_dir: self.wal_dir.clone(),
            write_through: self.write_through,
            peer_config: self.peer_config.clone(),
            link_closer: self.link_closer.clone(),
            tick: self.tick,
            seed: self.seed,
            inbox: self.inbox.clone(),
            peer_inbox: self.peer_inbox.clone(),
            read_limits: self.read_limits,
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            lifecycle: self.lifecycle,
        }
    }
}

impl Shard {
    async fn open(parts: OpenParts) -> Result<Shard, ShardError> {
        let shard = parts.shard_id;
        let open_error = |source| ShardError::Open {
            shard,
            dir: parts.wal_dir.display().to_string(),
            source,
        };
        let storage = DmaStorage::new(&parts.wal_dir)
            .map_err(|e| {
                open_error(WalError::Io {
                    context: "creating the WAL directory".into(),
                    source: e,
                })
            })?
            .write_through(parts.write_through);
        let abstain_marker = parts.wal_dir.join(ABSTAIN_MARKER_FILE);
        let marker_error = |e| {
            open_error(WalError::Io {
                context: format!("recording the abstention in {ABSTAIN_MARKER_FILE}"),
                source: e,
            })
        };
        if parts.wal_config.truncate_corrupt_tail {
            mark_abstention_pending(&abstain_marker).map_err(marker_error)?;
        }
        let flushes_in_flight_max = parts.wal_config.flushes_in_flight_max;
        let wal_limits = parts.wal_config.clone();
        let (wal, recovered) = Wal::open(storage, parts.wal_config)
            .await
            .map_err(open_error)?;
        for report in &recovered.reports {
            log::warn!("shard {shard}: WAL recovery: {report:?}");
        }
        let peers: Vec<NodeId> = parts.peer_addrs.keys().copied().collect();
        let metrics = ShardMetrics::new(&parts.metrics, shard, &peers);
        let fsync_seconds = metrics.fsync_seconds.clone();
        wal.observe_syncs(move |took| fsync_seconds.record(took.as_secs_f64()));
        let truncated = recovered
            .reports
            .iter()
            .any(|r| matches!(r, RecoveryReport::TruncatedCorruption { .. }));
        let lost_tail_in_term = abstention(&abstain_marker, truncated, recovered.hard_state.term)
            .map_err(marker_error)?;
        if lost_tail_in_term.is_some() {
            log::warn!(
                "shard {shard}: the log lost entries to a corruption; this member will not vote or campaign until it has caught up"
            );
        }
        let runs = term_runs(&wal, recovered.log_start, recovered.last_index);
        let log_term = runs.last().map_or(recovered.start_prev_term, |&(_, t)| t);
        if log_term > recovered.hard_state.term {
            return Err(ShardError::HardStateBehindLog {
                shard,
                dir: parts.wal_dir.display().to_string(),
                log_term,
                hard_term: recovered.hard_state.term,
            });
        }
        let engine_recovered = engine::Recovered {
            hard_state: recovered.hard_state,
            log_start: recovered.log_start,
            log_prev_term: recovered.start_prev_term,
            term_runs: runs,
            last_index: recovered.last_index,
            tail: Vec::new(),
            lost_tail_in_term,
            trims: recovered.trims.clone(),
        };
        let engine = Engine::new(
            parts.node_id,
            &parts.members,
            parts.engine_config,
            parts.seed,
            engine_recovered,
        )
        .expect("the node config was validated before shards start");
        let peer_config = Rc::new(parts.peer_config);
        let links = parts
            .peer_addrs
            .iter()
            .map(|(&node, &addr)| {
                (
                    node,
                    Rc::new(PeerLink::spawn(peer_config.clone(), shard, node, addr)),
                )
            })
            .collect();
        let (flushed_tx, flushed_rx) = flume::unbounded();
        let mut lifecycle = Lifecycle::new(
            (parts.node_id, shard),
            parts.lifecycle,
            &parts.wal_dir,
            (&parts.metrics, parts.health.clone()),
        );
        lifecycle.recovered_trims(&recovered.trims, engine.commit_index());
        let wal = Rc::new(wal);
        Ok(Shard {
            id: shard,
            wal_limits,
            client_addrs: parts.client_addrs,
            commit: engine.commit_index(),
            term: engine.term(),
            role: Role::Follower,
            leader: None,
            engine,
            reads: Reads::new(parts.read_limits, wal.clone()),
            wal,
            links,
            inbox: parts.inbox,
            peer_inbox: parts.peer_inbox,
            held: Vec::new(),
            durable_op: 0,
            flushes_in_flight: 0,
            flushes_in_flight_max: flushes_in_flight_max.max(1),
            flushed_tx,
            flushed_rx,
            next_request: 1,
            appends: HashMap::new(),
            trims: HashMap::new(),
            barriers: HashMap::new(),
            tick: parts.tick,
            next_tick: Instant::now() + parts.tick,
            metrics,
            link_closer: parts.link_closer,
            health: parts.health,
            unflushed_entries: 0,
            unflushed_bytes: 0,
            abstain_marker: Some(abstain_marker),
            lifecycle,
        })
    }

    async fn turn(&mut self) -> Result<(), ShardError> {
        let wake = self.wait().await;
        let mut events = Vec::new();
        self.absorb(wake, &mut events)?;
        self.drain_inboxes(&mut events)?;
        while let Ok(flushed) = self.flushed_rx.try_recv() {
            self.absorb(Wake::Flushed(flushed), &mut events)?;
        }
        let now = Instant::now();
        if now >= self.next_tick {
            events.push(Event::Tick);
            self.next_tick = (self.next_tick + self.tick).max(now);
            self.publish();
        }
        let log_start = self.engine.log().start();
        if let Some(purge) = self.lifecycle.check(now, &self.wal, log_start) {
            events.push(purge);
        }
        if !events.is_empty() {
            self.engine.step_batch(events);
            let commands = self.engine.take_commands();
            self.carry_out(commands).await?;
        }
        self.start_flush_if_needed();
        self.expire_waiting_reads(now);
        self.end_abstention_if_caught_up();
        Ok(())
    }

    /// Takes what is ready in the inboxes, peer messages first: the turn's room
    /// goes to Raft's own traffic before client requests, and a client flood
    /// waits for later turns rather than delay heartbeats and votes.
    fn drain_inboxes(&mut self, events: &mut Vec<Event>) -> Result<(), ShardError> {
        while events.len() < TURN_EVENTS_MAX {
            let Some(msg) = self.peer_inbox.try_recv() else {
                break;
            };
            events.push(Event::Message(msg));
        }
        while events.len() < TURN_EVENTS_MAX {
            let Some(input) = self.inbox.try_recv() else {
                break;
            };
            self.absorb(Wake::Input(Some(input)), events)?;
        }
        Ok(())
    }

    /// Once the engine votes again, the marker that made it abstain goes.
    fn end_abstention_if_caught_up(&mut self) {
        if self.engine.is_abstaining() {
            return;
        }
        if let Some(marker) = self.abstain_marker.take()
            && marker.exists()
        {
            match std::fs::remove_file(&marker) {
                Ok(()) => log::info!(
                    "shard {}: caught up after the lost tail; votes and campaigns again",
                    self.id
                ),
                Err(e) => log::warn!("shard {}: cannot remove {}: {e}", self.id, marker.display()),
            }
        }
    }

    async fn wait(&self) -> Wake {
        let until_tick = self.next_tick.saturating_duration_since(Instant::now());
        // With every sender gone (the node is stopping) there is nothing to wait for:
        // stay pending rather than wake at once, round after round.
        let input = async {
            match self.inbox.recv_async().await {
                Some(input) => Wake::Input(Some(input)),
                None => future::pending().await,
            }
        };
        let peer = async {
            match self.peer_inbox.recv_async().await {
                Some(msg) => Wake::Peer(msg),
                None => future::pending().await,
            }
        };
        let flushed = async {
            match self.flushed_rx.recv_async().await {
                Ok(result) => Wake::Flushed(result),
                Err(_) => future::pending().await,
            }
        };
        let timer = async {
            glommio::timer::sleep(until_tick).await;
            Wake::Timer
        };
        // `or` polls its first future first: peer messages before client input.
        future::or(flushed, future::or(peer, future::or(input, timer))).await
    }

    fn absorb(&mut self, wake: Wake, events: &mut Vec<Event>) -> Result<(), ShardError> {
        match wake {
            Wake::Timer | Wake::Input(None) => {}
            Wake::Peer(msg) => events.push(Event::Message(msg)),
            Wake::Input(Some(ShardInput::Append { records, reply })) => {
                super::failpoint::on_append(self.id);
                if let Err(refusal) = self.check_batch(&records) {
                    reply.send(Err(refusal));
                    return Ok(());
                }
                // Only a leader refuses for its disk: elsewhere the engine answers
                // NotLeader, which sends the client to the node that decides.
                if self.role == Role::Leader
                    && let Some(refusal) = self.lifecycle.append_refusal()
                {
                    reply.send(Err(refusal));
                    return Ok(());
                }
                let request_id = self.next_request();
                self.appends.insert(request_id, reply);
                events.push(Event::ClientAppend {
                    request_id,
                    records,
                });
            }
            Wake::Input(Some(ShardInput::Read { request, reply })) => {
                if let Err(refusal) = self.reads.limits().check(&request) {
                    reply.send(Err(refusal));
                } else if self.role == Role::Leader {
                    let request_id = self.next_request();
                    self.barriers.insert(request_id, (request, reply));
                    events.push(Event::ReadIndex { request_id });
                } else if request.any_replica {
                    self.serve_or_wait(request, reply);
                } else {
                    reply.send(Err(self.leader_error(self.leader)));
                }
            }
            Wake::Input(Some(ShardInput::Info { reply })) => {
                reply.send(self.info());
            }
            Wake::Input(Some(ShardInput::Trim { before, reply })) => {
                let request_id = self.next_request();
                self.trims.insert(request_id, reply);
                events.push(Event::ClientTrim { request_id, before });
            }
            Wake::Flushed(Ok(durable)) => {
                self.flushes_in_flight = self.flushes_in_flight.saturating_sub(1);
                if durable.op > self.durable_op {
                    self.durable_op = durable.op;
                    self.release_held();
                    events.push(Event::Durable { op: durable.op });
                }
            }
            Wake::Flushed(Err(source)) => {
                return Err(ShardError::Wal {
                    shard: self.id,
                    source,
                });
            }
        }
        Ok(())
    }

    /// Refuses, before anything is appended, a batch the WAL could never take: a
    /// record over its size limit, or a batch larger than half its buffer (so that
    /// one batch always fits once earlier ones are flushed).
    fn check_batch(&self, records: &[Bytes]) -> Result<(), ServerError> {
        let config = &self.wal_limits;
        if let Some(big) = records
            .iter()
            .find(|r| r.len() > config.record_size_bytes_max)
        {
            return Err(ServerError::InvalidRequest {
                reason: format!(
                    "a record of {} bytes exceeds the limit of {} bytes",
                    big.len(),
                    config.record_size_bytes_max
                ),
            });
        }
        let cost: usize = records
            .iter()
            .map(|r| r.len() + WAL_RECORD_COST_BYTES)
            .sum();
        if cost > config.buffered_bytes_max / 2 {
            return Err(ServerError::InvalidRequest {
                reason: format!(
                    "a batch of {} records costs {cost} bytes in the log, more than {}; send smaller batches",
                    records.len(),
                    config.buffered_bytes_max / 2
                ),
            });
        }
        Ok(())
    }

    fn next_request(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    fn info(&self) -> PartitionInfo {
        PartitionInfo {
            partition: self.id,
            leader: self.leader,
            term: self.term,
            commit_index: self.commit,
            last_index: self.engine.log().last_index(),
            log_start: self.engine.read_start(),
        }
    }

    async fn carry_out(&mut self, commands: Vec<Command>) -> Result<(), ShardError> {
        for command in commands {
            self.lifecycle.observe(&command);
            match command {
                Command::PersistHardState { op, state } => {
                    self.storage(|wal| wal.persist_hard_state(op, state))
                        .await?
                }
                Command::AppendLog { op, entries } => {
                    self.unflushed_entries += entries.len() as u64;
                    self.unflushed_bytes +=
                        entries.iter().map(|e| e.payload.len() as u64).sum::<u64>();
                    self.storage(|wal| wal.append(op, &entries)).await?
                }
                Command::TruncateLog { op, from } => {
                    self.storage(|wal| wal.truncate(op, from)).await?
                }
                Command::ResetLog {
                    op,
                    start,
                    prev_term,
                } => self.storage(|wal| wal.reset(op, start, prev_term)).await?,
                Command::PurgeLog { op, before } => {
                    let stats_before = self.wal.stats();
                    self.storage(|wal| wal.purge(op, before).map(drop)).await?;
                    let stats = self.wal.stats();
                    self.lifecycle.purged(
                        stats.segments_purged - stats_before.segments_purged,
                        stats.segment_bytes_purged - stats_before.segment_bytes_purged,
                        self.wal.disk_bytes(),
                    );
                }
                Command::Send { msg, when } => match when {
                    Some(engine::Condition::Durable { op }) if op > self.durable_op => {
                        self.held.push((op, msg))
                    }
                    _ => self.send(msg),
                },
                Command::SendLogRange {
                    msg,
                    last_index,
                    bytes_max,
                } => self.send_from_wal(msg, last_index, bytes_max),
                Command::Commit { index } => {
                    self.commit = index;
                    self.serve_waiting_reads();
                }
                Command::AppendResult { request_id, result } => {
                    self.answer_append(request_id, result)
                }
                Command::ReadResult { request_id, result } => {
                    if let Some((request, reply)) = self.barriers.remove(&request_id) {
                        match result {
                            Ok(_) => self.serve_or_wait(request, reply),
                            Err(e) => {
                                reply.send(Err(self.read_error(e)));
                            }
                        }
                    }
                }
                Command::RefusePeer { from, fault } => {
                    let (metrics, closer) = (&self.metrics, &self.link_closer);
                    super::refusal::refuse_peer(self.id, from, fault, metrics, closer)
                }
                Command::RoleChanged { role, term, leader } => {
                    if (role, leader) != (self.role, self.leader) {
                        let leader =
                            leader.map_or("no leader".into(), |l| format!("leader node {l}"));
                        log::info!("shard {}: {role:?} in term {term}, {leader}", self.id);
                    }
                    (self.role, self.term, self.leader) = (role, term, leader);
                    self.metrics.role_changed(role, term, leader);
                    self.publish();
                }
            }
        }
        Ok(())
    }

    /// Submits one storage command; when the WAL's buffer is full, flushes first
    /// (back-pressure) and submits again.
    async fn storage(
        &mut self,
        submit: impl Fn(&Wal<DmaStorage>) -> WalResult<()>,
    ) -> Result<(), ShardError> {
        loop {
            match submit(&self.wal) {
                Ok(()) => return Ok(()),
                // Nothing waits to be flushed, yet the buffer is full: this batch can
                // never fit (admission should have refused it). Stop, don't spin.
                Err(source @ WalError::BufferFull { .. }) if !self.wal.has_unflushed() => {
                    return Err(ShardError::Wal {
                        shard: self.id,
                        source,
                    });
                }
                Err(WalError::BufferFull { .. }) => {
                    self.record_batch();
                    let flushed = self.wal.flush().await;
                    self.flushes_in_flight += 1;
                    let _ = self.flushed_tx.send(flushed);
                }
                Err(source) => {
                    return Err(ShardError::Wal {
                        shard: self.id,
                        source,
                    });
                }
            }
        }
    }

    /// Group commit: one flush covers everything submitted so far; while the
    /// allowed number are in flight, later submissions wait for the next one.
    fn start_flush_if_needed(&mut self) {
        if !self.wal.has_unflushed() || self.flushes_in_flight >= self.flushes_in_flight_max {
            return;
        }
        self.flushes_in_flight += 1;
        self.record_batch();
        let wal = self.wal.clone();
        let done = self.flushed_tx.clone();
        glommio::spawn_local(async move {
            let _ = done.send(wal.flush().await);
        })
        .detach();
    }

    /// The batch the flush about to start covers.
    fn record_batch(&mut self) {
        if self.unflushed_entries > 0 {
            self.metrics
                .batch_records
                .record(self.unflushed_entries as f64);
            self.metrics.batch_bytes.record(self.unflushed_bytes as f64);
        }
        (self.unflushed_entries, self.unflushed_bytes) = (0, 0);
    }

    /// Publishes this shard's state to its metrics and the health board.
    fn publish(&self) {
        let pending = self.appends.len();
        let queued = self.inbox.len() + self.peer_inbox.len();
        self.metrics.publish(&self.engine, queued, pending);
        let links = self.links.iter().map(|(node, link)| (*node, link.stats()));
        self.metrics.collect(self.wal.stats(), links);
        self.health
            .publish(self.id, self.role, self.term, self.leader, self.commit);
    }

    fn release_held(&mut self) {
        let durable = self.durable_op;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.held.drain(..).partition(|(op, _)| *op <= durable);
        self.held = waiting;
        for (_, msg) in ready {
            self.send(msg);
        }
    }

    fn send(&self, msg: Message) {
        let Some(link) = self.links.get(&msg.to) else {
            return;
        };
        match link.send(msg) {
            // A lost message is one Raft recovers from (retransmission, probing).
            Ok(()) | Err(SendError::Full(_)) | Err(SendError::Closed(_)) => {}
            Err(SendError::TooLarge { frame_bytes, .. }) => {
                log::error!(
                    "shard {}: dropped a {frame_bytes}-byte message over the peer frame limit",
                    self.id
                )
            }
        }
    }

    /// Fills an AppendEntries with entries read back from the WAL, then sends it.
    fn send_from_wal(&self, mut msg: Message, last_index: Index, bytes_max: u64) {
        let (wal, link, shard) = (self.wal.clone(), self.links.get(&msg.to).cloned(), self.id);
        glommio::spawn_local(async move {
            let Some(link) = link else { return };
            if let MessageBody::AppendEntries {
                prev_log_index,
                entries,
                ..
            } = &mut msg.body
            {
                match wal
                    .read(*prev_log_index + 1, last_index + 1, bytes_max as usize)
                    .await
                {
                    Ok(read) => *entries = read,
                    // Purged meanwhile: the leader's next probe finds the new log start.
                    Err(e) => return log::debug!("shard {shard}: catch-up read failed: {e}"),
                }
            }
            let _ = link.send(msg);
        })
        .detach();
    }

    /// Where the log stands for reads now.
    fn log_bounds(&self) -> LogBounds {
        LogBounds {
            // A committed trim hides its records at once, even while their removal
            // waits for this member's disk to catch up.
            log_start: self.engine.read_start(),
            commit: self.commit,
        }
    }

    /// Serves a read of committed records, or parks it until the commit index
    /// reaches it (see [`Reads::serve_or_wait`]).
    fn serve_or_wait(&mut self, request: ReadRequest, reply: Reply<ReadOk>) {
        let at = self.log_bounds();
        self.reads.serve_or_wait(at, request, reply);
    }

    fn serve_waiting_reads(&mut self) {
        let at = self.log_bounds();
        self.reads.committed(at);
    }

    /// Ends waits past their deadline, and forgets the reads (waiting, or waiting
    /// for their read-index barrier) whose asker is gone, so that a client that
    /// disconnects frees its slots at once.
    fn expire_waiting_reads(&mut self, now: Instant) {
        let at = self.log_bounds();
        self.reads.expire(at, now);
        self.barriers.retain(|_, (_, reply)| !reply.is_closed());
    }

    /// Answers the append or trim `request_id` (both are entries of the log). A
    /// trim's answer carries the log start after the engine applied it: commands
    /// are carried out after the whole step, so the engine's log is already there.
    fn answer_append(&mut self, request_id: u64, result: Result<engine::AppendOk, AppendError>) {
        if let Some(reply) = self.appends.remove(&request_id) {
            let answer = result
                .map(|ok| AppendOk {
                    first_index: ok.first_index,
                    last_index: ok.last_index,
                })
                .map_err(|e| self.append_error(e));
            reply.send(answer);
        } else if let Some(reply) = self.trims.remove(&request_id) {
            let answer = result
                .map(|ok| TrimOk {
                    trim_index: ok.last_index,
                    log_start: self.engine.read_start(),
                })
                .map_err(|e| self.append_error(e));
            reply.send(answer);
        }
    }

    fn leader_error(&self, leader: Option<NodeId>) -> ServerError {
        ServerError::NotLeader {
            leader,
            leader_addr: leader.and_then(|l| self.client_addrs.get(&l).cloned()),
        }
    }

    fn append_error(&self, error: AppendError) -> ServerError {
        match error {
            AppendError::NotLeader { leader } => self.leader_error(leader),
            AppendError::Overloaded => ServerError::Overloaded,
            AppendError::LeaderTransferring => ServerError::Unavailable {
                reason: "leadership is being transferred; retry shortly".into(),
            },
            AppendError::EmptyBatch => ServerError::InvalidRequest {
                reason: "an append needs at least one record".into(),
            },
            AppendError::TrimBeyondLog { .. } => ServerError::InvalidRequest {
                reason: error.to_string(),
            },
            // The records may be committed after all: the client must not take this
            // for a refusal and retry blindly (it does retry Unavailable), so it is
            // reported as a timeout, whose outcome clients treat as unknown.
            AppendError::Unknown => ServerError::Timeout,
        }
    }

    fn read_error(&self, error: ReadError) -> ServerError {
        match error {
            ReadError::NotLeader { leader } => self.leader_error(leader),
            ReadError::Overloaded => ServerError::Overloaded,
        }
    }

    /// Answers every client still waiting: appends with Timeout (their outcome is
    /// open: they may commit elsewhere, and Unavailable would invite a blind retry
    /// and a duplicate), reads with `refusal`.
    fn answer_all_waiting(&mut self, refusal: ServerError) {
        for (_, reply) in self.appends.drain() {
            reply.send(Err(ServerError::Timeout));
        }
        for (_, reply) in self.trims.drain() {
            reply.send(Err(ServerError::Timeout));
        }
        for (_, (_, reply)) in self.barriers.drain() {
            reply.send(Err(refusal.clone()));
        }
        self.reads.refuse_all(&refusal);
    }

    /// Stops: answers everything still waiting, then makes the WAL durable.
    async fn shut_down(mut self) -> Result<(), ShardError> {
        self.answer_all_waiting(ServerError::Unavailable {
            reason: "node shutting down".into(),
        });
        self.wal
            .flush()
            .await
            .map(drop)
            .map_err(|source| ShardError::Wal {
                shard: self.id,
                source,
            })
    }
}

/// The file in a shard's WAL directory that says the member abstains (holds the
/// term in which its log lost entries), so that a crash before it catches up does
/// not make it forget.
pub const ABSTAIN_MARKER_FILE: &str = "abstain-until-after-term";

/// What the marker holds before the WAL is opened with `truncate_corrupt_tail`: the
/// cut may happen during the open, before the term is known, so the marker goes
/// first and means "the term recovered at the next start".
const ABSTAIN_PENDING: &str = "pending";

/// Before a WAL open that may cut the log: makes sure a marker exists, durably.
fn mark_abstention_pending(marker: &Path) -> std::io::Result<()> {
    if marker.exists() {
        return Ok(());
    }
    write_durably(marker, ABSTAIN_PENDING)
}

/// The term after which the member may vote again, if it must abstain: from the
/// marker (a pending one, or a cut in this start's recovery, means the recovered
/// term), which is then rewritten to hold that term.
fn abstention(marker: &Path, truncated: bool, term: Term) -> std::io::Result<Option<Term>> {
    let text = match std::fs::read_to_string(marker) {
        Ok(text) => Some(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let recorded = match text.as_deref() {
        None => None,
        Some(ABSTAIN_PENDING) => Some(term),
        Some(number) => Some(number.parse::<Term>().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} does not hold a term: {e}", marker.display()),
            )
        })?),
    };
    let abstain = match (recorded, truncated) {
        (None, false) => return Ok(None),
        (None, true) => term,
        (Some(r), _) => r.max(if truncated { term } else { 0 }),
    };
    if text.as_deref() != Some(abstain.to_string().as_str()) {
        write_durably(marker, &abstain.to_string())?;
    }
    Ok(Some(abstain))
}

/// Replaces `path` with `text`: temporary file, fsync, rename, directory fsync.
fn write_durably(path: &Path, text: &str) -> std::io::Result<()> {
    let temporary = path.with_extension("new");
    let mut file = std::fs::File::create(&temporary)?;
    std::io::Write::write_all(&mut file, format!("{text}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    // A bare relative name has an empty parent: its directory is the current one.
    crate::wal::dir::sync_dir(crate::wal::dir::parent_dir(path))
}

/// The term runs of the recovered log, found by binary search for each term's end
/// (terms never decrease along a log), so recovery costs O(terms × log entries).
fn term_runs(wal: &Wal<DmaStorage>, start: Index, last: Index) -> Vec<(Index, Term)> {
    let mut runs = Vec::new();
    let mut first = start;
    while first <= last {
        let term = wal.term(first).expect("recovered entries have terms");
        runs.push((first, term));
        let (mut low, mut high) = (first, last);
        while low < high {
            let middle = low + (high - low).div_ceil(2);
            if wal.term(middle) == Some(term) {
                low = middle;
            } else {
                high = middle - 1;
            }
        }
        first = low + 1;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstention_marker_survives_restarts_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join(ABSTAIN_MARKER_FILE);
        assert_eq!(abstention(&marker, false, 7).unwrap(), None);
        assert!(!marker.exists());
        // A cut in this recovery: abstain until after the recovered term.
        assert_eq!(abstention(&marker, true, 7).unwrap(), Some(7));
        // Restarts before catching up keep abstaining, at the recorded term.
        assert_eq!(abstention(&marker, false, 9).unwrap(), Some(7));
        std::fs::remove_file(&marker).unwrap();
        // Pending (the cut may have happened in an open that then crashed): the
        // term recovered at this start.
        mark_abstention_pending(&marker).unwrap();
        assert_eq!(abstention(&marker, false, 11).unwrap(), Some(11));
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "11\n");
        std::fs::write(&marker, "garbage").unwrap();
        assert!(abstention(&marker, false, 11).is_err());
    }
}
