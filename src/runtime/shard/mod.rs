//! One shard: the member of the Raft group for partition `shard_id`, its WAL, its
//! links to the same shard on the other nodes, and the event loop that joins them.
//!
//! One turn of the loop: wait for something (an input, a finished flush, the next
//! tick), drain everything else that is ready without waiting, feed it all to the
//! engine as one batch, then carry out the engine's commands: storage commands go to
//! the WAL's buffer in order and one flush (write + fdatasync) covers the whole
//! turn's appends while earlier flushes may still run; messages go to the peer
//! links, which write many per syscall; answers go back to waiting clients.
//!
//! The shard's parts, by concern: `open` recovers the WAL and builds the engine,
//! `event_loop` waits, drains and feeds the engine, `inputs` admits client
//! requests (`members` those about the group's membership), `commands` carries out the engine's commands (storage and group
//! commit among them), `send` sends peer messages, `answers` and
//! `waiting_reads` answer clients, and `abstention` keeps the marker of a log
//! that lost entries.

mod abstention;
mod answers;
mod balance;
mod commands;
mod event_loop;
mod handover;
mod inputs;
mod members;
mod open;
mod peers;
mod send;
#[cfg(test)]
mod tests;
mod waiting_reads;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

// The loop's code names these relative to the shard's module.
use super::inbox::{LaneReceiver, Reply, ShardInput};
use super::lifecycle::{Lifecycle, LifecycleSettings};
use super::local_inbox::{AppendReply, LocalInbox};
use super::reads::{ReadLimits, Reads};
use super::request_map::RequestMap;
use super::{failpoint, refusal};
use crate::engine::{self, Engine, Index, Message, NodeId, Role, Term};
use crate::metrics::health::HealthBoard;
use crate::metrics::transfers::TransferMetrics;
use crate::metrics::{NodeMetrics, ShardMetrics};
use crate::transport::peer::{LinkCloser, PeerConfig, PeerLink};
use crate::transport::{ReadOk, ReadRequest, ServerError, TrimOk};
use crate::wal::config::WalConfig;
use crate::wal::error::{WalError, WalResult};
use crate::wal::log::{Durable, Wal};
use crate::wal::storage::DmaStorage;

pub use abstention::ABSTAIN_MARKER_FILE;
pub use handover::HandoverSettings;

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
    /// The membership a new cluster starts with (`[[nodes]]`).
    pub bootstrap: engine::Membership,
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
    /// Leader transfers: the balancer, and the hand-over before a graceful stop.
    pub handover: HandoverSettings,
}

struct Shard {
    id: u32,
    wal_limits: WalConfig,
    client_addrs: BTreeMap<NodeId, String>,
    engine: Engine,
    wal: Rc<Wal<DmaStorage>>,
    links: BTreeMap<NodeId, Rc<PeerLink>>,
    /// Where the members are, to open links as the membership changes.
    peer_book: peers::PeerBook,
    inbox: LaneReceiver<ShardInput>,
    peer_inbox: LaneReceiver<Message>,
    /// Appends from connections served on this shard's executor.
    local_inbox: Rc<LocalInbox>,
    /// Messages waiting for the storage op they depend on to be durable.
    held: Vec<(u64, Message)>,
    durable_op: u64,
    flushes_in_flight: usize,
    flushes_in_flight_max: usize,
    flushed_tx: flume::Sender<WalResult<Durable>>,
    flushed_rx: flume::Receiver<WalResult<Durable>>,
    /// The event and command buffers of a turn, kept empty between turns.
    turn_events: Vec<engine::Event>,
    turn_commands: Vec<engine::Command>,
    next_request: u64,
    appends: RequestMap<AppendReply>,
    /// Trims waiting for their entry to commit (answered like appends).
    trims: RequestMap<Reply<TrimOk>>,
    /// Membership changes waiting for their configuration entry to commit.
    changes: RequestMap<Reply<Index>>,
    /// Leader reads waiting for their read-index barrier.
    barriers: RequestMap<(ReadRequest, Reply<ReadOk>)>,
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
    handover: HandoverSettings,
    /// The hand-over of this shard's leadership under way, if any.
    hand_over: Option<handover::HandOver>,
    /// When the leader balancer next compares the counts.
    next_balance: Instant,
    transfer_metrics: TransferMetrics,
}

/// Runs shard `ctx.shard_id` until `ctx.stop` is set or its WAL fails.
/// `local_inbox` takes the appends of connections served on this executor.
pub async fn run_shard(ctx: ShardContext, local_inbox: Rc<LocalInbox>) -> Result<(), ShardError> {
    let mut shard = Shard::open(ctx.clone_parts(), local_inbox).await?;
    let stop = ctx.stop;
    log::info!(
        "shard {}: recovered log {}..={}, term {}",
        shard.id,
        shard.engine.log().start(),
        shard.engine.log().last_index(),
        shard.engine.term()
    );
    let mut result = Ok(());
    while result.is_ok() && !stop.load(Ordering::Relaxed) {
        result = shard.turn().await;
    }
    if result.is_ok() {
        result = shard.hand_over_before_stop().await;
    }
    if let Err(error) = result {
        // Fail-stop: nothing more is acknowledged, and appends in flight may
        // or may not commit elsewhere, so their clients hear Timeout, not a
        // refusal they would retry.
        shard.answer_all_waiting(ServerError::Unavailable {
            reason: format!("shard failed: {error}"),
        });
        return Err(error);
    }
    shard.shut_down().await
}

/// The parts of a context `Shard::open` consumes (the stop flag stays with the loop).
struct OpenParts {
    shard_id: u32,
    node_id: NodeId,
    bootstrap: engine::Membership,
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
    handover: HandoverSettings,
}

impl ShardContext {
    fn clone_parts(&self) -> OpenParts {
        OpenParts {
            shard_id: self.shard_id,
            node_id: self.node_id,
            bootstrap: self.bootstrap.clone(),
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
            handover: self.handover,
        }
    }
}

impl Shard {
    /// Publishes this shard's state to its metrics and the health board.
    fn publish(&self) {
        let pending = self.appends.len();
        let queued = self.inbox.len() + self.peer_inbox.len() + self.local_inbox.len();
        self.metrics.publish(&self.engine, queued, pending);
        let links = self.links.iter().map(|(node, link)| (*node, link.stats()));
        self.metrics.collect(self.wal.stats(), links);
        self.health
            .publish(self.id, self.role, self.term, self.leader, self.commit);
    }
}
