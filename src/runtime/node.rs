//! A node: one process running S shards, each on its own glommio executor thread
//! (unpinned unless `pin`). Shard 0 also accepts the client and peer connections
//! and serves metrics; each connection is served by the shard it uses
//! ([`super::doors`]).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use glommio::Placement;
use thiserror::Error;

use super::config::{FsyncPolicy, NodeConfig};
use super::doors::{Listen, NodeDoors, ShardDoors};
use super::executor::shard_executor;
use super::identity::Identity;
use super::inbox::{
    INBOX_BYTES_MAX, INBOX_CAPACITY, LaneReceiver, LaneSender, PEER_INBOX_BYTES_MAX,
    PEER_INBOX_CAPACITY, ShardInput, lane,
};
use super::lifecycle::LifecycleSettings;
use super::local_inbox::LocalInbox;
use super::preflight::{self, PreflightError};
use super::reads::ReadLimits;
use super::shard::{ShardContext, ShardError, run_shard};
use crate::engine::{Message, NodeId};
use crate::metrics::NodeMetrics;
use crate::metrics::health::HealthBoard;
use crate::tls::TlsContext;
use crate::transport::peer::{LinkCloser, PeerConfig, link_closer};
use crate::transport::placement;
use crate::transport::server::ServerConfig;

/// Memory each executor registers with io_uring for its I/O buffers.
const IO_MEMORY_BYTES: usize = 2 << 20;
/// What one executor locks in total (buffers plus rings), for the memlock check.
const LOCKED_BYTES_PER_SHARD: u64 = 4 << 20;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("cannot resolve the address {address:?} of node {node}: {reason}")]
    Resolve {
        node: NodeId,
        address: String,
        reason: String,
    },
    #[error(
        "cannot start the executor of shard {shard}: {reason} (glommio needs io_uring and enough locked memory; see `ulimit -l` in the README)"
    )]
    Executor { shard: u32, reason: String },
    #[error("cannot listen on {what} address {address}: {reason}")]
    Listen {
        what: &'static str,
        address: SocketAddr,
        reason: String,
    },
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Failpoint(#[from] super::failpoint::FailpointError),
    #[error("cannot set up TLS from [tls]: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot watch for SIGHUP, which reloads the TLS certificates: {0}")]
    Sighup(std::io::Error),
}

/// How a node whose data directory is new becomes a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstStart {
    /// It founds a new cluster with the members its config's `[[nodes]]` lists.
    Found,
    /// It joins a running cluster (`serve --join`): its groups start with no
    /// members, and a leader that adds it sends it their membership.
    Join,
}

/// Runs the node until `stop` is set (then shuts down gracefully) or a shard fails.
/// `first` matters only on the first start: the data directory remembers it.
pub fn run(config: NodeConfig, first: FirstStart, stop: Arc<AtomicBool>) -> Result<(), NodeError> {
    let shards = shard_count(&config);
    let (_lock, identity) = check_before_start(&config, shards, first)?;
    let (tls, _reloading) = load_tls(&config)?;
    let bootstrap = if identity.joined {
        crate::engine::Membership::default()
    } else {
        config.bootstrap_membership()
    };
    let peer_addrs = resolve_peers(&config)?;
    let observe = Observe {
        metrics: NodeMetrics::new(config.node_id),
        health: HealthBoard::new(shards),
    };
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards).map(|_| inboxes()).unzip();
    let (client_doors, client_queues) = placement::doors(shards);
    let (peer_doors, peer_queues) = placement::doors(shards);
    let node_doors = NodeDoors {
        cluster_id: config.cluster_id,
        node_id: config.node_id,
        members: config
            .nodes
            .iter()
            .map(|m| (m.node_id, m.client_address.clone()))
            .collect(),
        client_lanes: senders.iter().map(|s| s.clients.clone()).collect(),
        peer_lanes: senders.iter().map(|s| s.peers.clone()).collect(),
        client_doors,
        peer_doors,
        client_stats: (0..shards).map(|_| Arc::default()).collect(),
        peer_stats: (0..shards).map(|_| Arc::default()).collect(),
        client_limits: ServerConfig {
            tls: tls.clone(),
            ..config.clients.server_config()
        },
        tls: tls.clone(),
        observe: observe.clone(),
    };
    let queues = receivers
        .into_iter()
        .zip(client_queues.into_iter().zip(peer_queues));
    let threads: Vec<_> = queues
        .enumerate()
        .map(|(shard, (inbox, (client_queue, peer_queue)))| {
            let shard = shard as u32;
            let (closer, close_requests) = link_closer();
            let parts = (inbox, stop.clone(), closer);
            let mut context = shard_context(&config, shard, &peer_addrs, parts, &observe);
            context.bootstrap = bootstrap.clone();
            context.peer_config.tls = tls.clone();
            let mut node = node_doors.clone();
            node.client_doors = node.client_doors.at(shard);
            node.peer_doors = node.peer_doors.at(shard);
            let doors = ShardDoors {
                shard,
                node,
                client_queue,
                peer_queue,
                close_requests,
                listen: (shard == 0).then_some(Listen {
                    client: config.listen.client,
                    peer: config.listen.peer,
                    metrics: config.listen.metrics,
                }),
            };
            spawn_shard(&config, context, doors)
        })
        .collect();
    drop((senders, node_doors));
    join_shards(threads, &stop)
}

/// The node's TLS context, if configured, and the thread that reloads it on SIGHUP
/// (kept while the node runs).
fn load_tls(
    config: &NodeConfig,
) -> Result<(Option<Arc<TlsContext>>, Option<super::reload::Reloading>), NodeError> {
    let Some(settings) = &config.tls else {
        return Ok((None, None));
    };
    let tls = Arc::new(TlsContext::load(
        settings,
        config.node_id,
        config.cluster_id,
    )?);
    let reloading = super::reload::reload_on_sighup(&tls)?;
    Ok((Some(tls), Some(reloading)))
}

/// Everything that can be checked before a shard starts, in words rather than
/// panics; the data directory's lock, held while the node runs.
fn check_before_start(
    config: &NodeConfig,
    shards: u32,
    first: FirstStart,
) -> Result<(std::fs::File, Identity), NodeError> {
    super::failpoint::init_from_env()?;
    preflight::check_io_uring()?;
    preflight::check_memlock(shards as u64 * LOCKED_BYTES_PER_SHARD)?;
    let identity = Identity {
        cluster_id: config.cluster_id,
        node_id: config.node_id,
        shards,
        joined: first == FirstStart::Join,
    };
    let identity = preflight::check_data_dir(&config.data_dir, &identity)?;
    let lock = preflight::lock_data_dir(&config.data_dir)?;
    preflight::check_address_free("client", config.listen.client)?;
    preflight::check_address_free("peer", config.listen.peer)?;
    preflight::check_address_free("metrics", config.listen.metrics)?;
    if config.wal.fsync == FsyncPolicy::Never {
        log::warn!(
            "fsync = \"never\": acknowledged records are NOT durable; use this for benchmarks only"
        );
    }
    Ok((lock, identity))
}

/// Starts the thread of one shard's executor.
fn spawn_shard(
    config: &NodeConfig,
    context: ShardContext,
    doors: ShardDoors,
) -> std::thread::JoinHandle<Result<(), NodeError>> {
    let shard = context.shard_id;
    let placement = if config.pin {
        Placement::Fixed(shard as usize)
    } else {
        Placement::Unbound
    };
    std::thread::Builder::new()
        .name(format!("shard-{shard}"))
        .spawn(move || run_executor(shard, placement, context, doors))
        .expect("spawning a shard thread")
}

/// Waits for every shard; the first failure, after telling the others to stop.
fn join_shards(
    threads: Vec<std::thread::JoinHandle<Result<(), NodeError>>>,
    stop: &AtomicBool,
) -> Result<(), NodeError> {
    let mut first_error = None;
    for (shard, thread) in threads.into_iter().enumerate() {
        let result = thread.join().unwrap_or_else(|_| {
            Err(NodeError::Executor {
                shard: shard as u32,
                reason: "its thread panicked".into(),
            })
        });
        if let Err(e) = result {
            // One failed shard stops the node: the others are told to stop too.
            stop.store(true, Ordering::Relaxed);
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The sending ends of one shard's two inboxes: client requests, peer messages.
#[derive(Clone)]
struct InboxSenders {
    clients: LaneSender<ShardInput>,
    peers: LaneSender<Message>,
}

/// The receiving ends, which the shard drains.
struct InboxReceivers {
    clients: LaneReceiver<ShardInput>,
    peers: LaneReceiver<Message>,
}

fn inboxes() -> (InboxSenders, InboxReceivers) {
    let (clients, client_rx) = lane(INBOX_CAPACITY, INBOX_BYTES_MAX);
    let (peers, peer_rx) = lane(PEER_INBOX_CAPACITY, PEER_INBOX_BYTES_MAX);
    let receivers = InboxReceivers {
        clients: client_rx,
        peers: peer_rx,
    };
    (InboxSenders { clients, peers }, receivers)
}

fn shard_count(config: &NodeConfig) -> u32 {
    match config.shards {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        n => n,
    }
}

fn resolve_peers(config: &NodeConfig) -> Result<BTreeMap<NodeId, SocketAddr>, NodeError> {
    let others = config.nodes.iter().filter(|m| m.node_id != config.node_id);
    others
        .map(|member| {
            let fail = |reason: String| NodeError::Resolve {
                node: member.node_id,
                address: member.peer_address.clone(),
                reason,
            };
            let mut found = member
                .peer_address
                .to_socket_addrs()
                .map_err(|e| fail(e.to_string()))?;
            let address = found.next().ok_or_else(|| fail("no address".into()))?;
            Ok((member.node_id, address))
        })
        .collect()
}

fn shard_context(
    config: &NodeConfig,
    shard: u32,
    peer_addrs: &BTreeMap<NodeId, SocketAddr>,
    (inbox, stop, link_closer): (InboxReceivers, Arc<AtomicBool>, LinkCloser),
    observe: &Observe,
) -> ShardContext {
    let wal_config = config.wal_config();
    let engine_config = config.shard_engine_config().expect("validated config");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ ((config.node_id as u64) << 40)
        ^ shard as u64;
    ShardContext {
        shard_id: shard,
        node_id: config.node_id,
        bootstrap: config.bootstrap_membership(),
        peer_addrs: peer_addrs.clone(),
        client_addrs: config
            .nodes
            .iter()
            .map(|m| (m.node_id, m.client_address.clone()))
            .collect(),
        engine_config,
        wal_config,
        wal_dir: config.data_dir.join(format!("shard-{shard}")),
        write_through: config.wal.write_through && config.wal.fsync == FsyncPolicy::Always,
        peer_config: PeerConfig {
            shard_count: shard_count(config),
            ..PeerConfig::new(config.cluster_id, config.node_id)
        },
        link_closer,
        tick: Duration::from_millis(config.raft.tick_ms),
        seed,
        stop,
        inbox: inbox.clients,
        peer_inbox: inbox.peers,
        // The client listener's frame limit, which answers must fit.
        read_limits: ReadLimits::new(&config.reads, config.clients.frame_body_bytes_max),
        metrics: observe.metrics.clone(),
        health: observe.health.clone(),
        lifecycle: LifecycleSettings {
            retention: config.retention.policy(),
            min_free_bytes: config.wal.min_free_bytes,
        },
        handover: config.raft.handover_settings(),
    }
}

/// The node's metrics registry and health board, shared by all shards.
#[derive(Clone)]
pub struct Observe {
    pub metrics: Arc<NodeMetrics>,
    pub health: Arc<HealthBoard>,
}

fn run_executor(
    shard: u32,
    placement: Placement,
    context: ShardContext,
    doors: ShardDoors,
) -> Result<(), NodeError> {
    let executor = shard_executor(shard, placement, IO_MEMORY_BYTES)
        .make()
        .map_err(|e| NodeError::Executor {
            shard,
            reason: e.to_string(),
        })?;
    let stop = context.stop.clone();
    let _stop_on_panic = StopOnPanic(stop.clone());
    executor.run(async move {
        // The shard's own connections hand it appends through this queue, on this
        // executor, without crossing threads.
        let local_inbox = LocalInbox::new();
        if let Err(e) = doors.open(local_inbox.clone()) {
            stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
        let result = run_shard(context, local_inbox)
            .await
            .map_err(NodeError::from);
        // Any shard failing stops the node: a node serving some partitions but not
        // others would look alive while part of it is dead.
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        result
    })
}

/// Makes any panic, on any thread, end the whole process with SIGABRT once the panic
/// message is printed. A panic is a bug whose consequences are unknown; unwinding
/// one shard's thread would leave a node that answers for some partitions but not
/// others and that no supervisor restarts. The `ringlog` binary calls this first.
/// (A hook rather than `panic = "abort"` in Cargo.toml: that profile setting would
/// make `cargo test` build every dependency twice, once for the binary and once for
/// the unwinding test harnesses, for the same effect.)
pub fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("ringlog: a thread panicked; aborting the whole process (fail-stop)");
        std::process::abort();
    }));
}

/// Sets the node's stop flag when a shard thread unwinds: the `ringlog` binary
/// aborts instead ([`abort_on_panic`]), but a library user or an in-process test
/// that unwinds would otherwise keep the other shards serving beside a dead one,
/// and `run` would wait for them forever.
struct StopOnPanic(Arc<AtomicBool>);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}
