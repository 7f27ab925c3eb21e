//! What the `ringlog` commands do, kept out of `main.rs` so that it stays a parser.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use thiserror::Error;

use crate::bench::BenchConfig;
use crate::client::{Client, ClientConfig, ClientError};
use crate::engine::NodeId;
use crate::runtime::config::{ConfigError, FsyncPolicy, NodeConfig};
use crate::runtime::dev::{self, DevError};
use crate::runtime::node::{self, FirstStart, NodeError};
use crate::runtime::overrides::{self, Setting};
use crate::transport::{ClientRequest, ClientResponse, Metadata, PartitionInfo, TrimOk};

mod dev_cluster;
mod join;
mod members;
mod reader;

pub use dev_cluster::{DevOptions, dev};
pub use members::{change as members_change, format_change, format_members, members};
pub use reader::{ReadFormat, ReadFrom, format_record, parse_read_from, read};

#[derive(Debug, Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Dev(#[from] DevError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot pick ports for a local cluster: {0}")]
    Ports(#[from] crate::ports::PortError),
    #[error(
        "cannot start a client executor: {0} (glommio needs io_uring and enough locked memory; see `ulimit -l` in the README)"
    )]
    Executor(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("node {node} exited on its own ({status}); the dev cluster stopped the others")]
    NodeExited { node: u32, status: String },
    #[error("{0}")]
    Usage(String),
}

/// Flags of `ringlog serve` that override the config file.
#[derive(Clone, Debug, Default)]
pub struct ServeOverrides {
    pub node_id: Option<u32>,
    pub data_dir: Option<PathBuf>,
    pub shards: Option<u32>,
    pub pin: bool,
    pub fsync: Option<FsyncPolicy>,
    /// See `WalSettings::write_through`.
    pub write_through: Option<bool>,
    /// See `WalSettings::truncate_corrupt_tail`.
    pub truncate_corrupt_tail: bool,
    /// A node of a running cluster to join (`serve --join`).
    pub join: Option<String>,
}

/// A flag that turns true on SIGINT or SIGTERM.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>, CliError> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    Ok(stop)
}

pub fn serve(config_path: &Path, overrides: ServeOverrides) -> Result<(), CliError> {
    let mut config = NodeConfig::from_file(config_path)?;
    if let Some(node_id) = overrides.node_id {
        config.node_id = node_id;
    }
    if let Some(dir) = overrides.data_dir {
        config.data_dir = dir;
    }
    if let Some(shards) = overrides.shards {
        config.shards = shards;
    }
    config.pin |= overrides.pin;
    config.wal.truncate_corrupt_tail = overrides.truncate_corrupt_tail;
    if let Some(fsync) = overrides.fsync {
        config.wal.fsync = fsync;
    }
    if let Some(write_through) = overrides.write_through {
        config.wal.write_through = write_through;
    }
    config.validate()?;
    let stop = stop_on_signals()?;
    match overrides.join {
        Some(addr) => serve_joining(config, &addr, stop),
        None => {
            node::run(config, FirstStart::Found, stop)?;
            log::info!("stopped cleanly");
            Ok(())
        }
    }
}

/// `serve --join ADDR`: a new node (or one that joined before) asks the cluster
/// at `addr` to add it while it runs; `--join` on a founding member's data changes
/// nothing.
fn serve_joining(
    mut config: NodeConfig,
    addr: &str,
    stop: Arc<AtomicBool>,
) -> Result<(), CliError> {
    let fresh = match join::data_dir_identity(&config.data_dir) {
        join::DirIdentity::None => true,
        join::DirIdentity::Joined => false,
        join::DirIdentity::Founding => {
            log::info!(
                "--join ignored: {} holds the data of a founding member",
                config.data_dir.display()
            );
            node::run(config, FirstStart::Found, stop)?;
            return Ok(());
        }
    };
    let add = join::add_me(&config)?;
    if let Some(tls) = &config.tls {
        // The node asks as itself: its certificate names it, and a node of the
        // cluster has every role (docs/security.md).
        let identity = (tls.cert_file.as_path(), tls.key_file.as_path());
        use_client_tls(crate::tls::client_config(&tls.ca_file, Some(identity))?);
    }
    if let Err(e) = join::discover(&mut config, addr, fresh) {
        if fresh {
            return Err(e);
        }
        log::warn!("{e}");
    }
    let asking = join::spawn_join(addr.to_string(), add, stop.clone(), fresh);
    let ran = node::run(config, FirstStart::Join, stop.clone());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let joined = asking
        .join()
        .unwrap_or_else(|_| Err(CliError::Usage("the join thread panicked".into())));
    ran?;
    joined?;
    log::info!("stopped cleanly");
    Ok(())
}

/// Each config with the `--set` overrides applied (see [`overrides::apply`]).
pub fn with_settings(
    configs: Vec<NodeConfig>,
    settings: &[Setting],
) -> Result<Vec<NodeConfig>, CliError> {
    if settings.is_empty() {
        return Ok(configs);
    }
    configs
        .iter()
        .map(|config| overrides::apply(config, settings).map_err(CliError::from))
        .collect()
}

/// Parses one `--set KEY=VALUE` for clap.
pub fn parse_setting(text: &str) -> Result<Setting, String> {
    Setting::parse(text).map_err(|e| e.to_string())
}

/// The TLS of this process's client commands, set once from `--ca`, `--cert` and
/// `--key` (or by `bench --local --tls`); plaintext while unset.
static CLIENT_TLS: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();

/// Makes every client command of this process use `tls`; the first call wins.
pub fn use_client_tls(tls: Arc<rustls::ClientConfig>) {
    let _ = CLIENT_TLS.set(tls);
}

/// The client commands' TLS, if set.
pub fn client_tls() -> Option<Arc<rustls::ClientConfig>> {
    CLIENT_TLS.get().cloned()
}

/// Runs `work` with a client on a small glommio executor of its own.
fn with_client<T>(
    addr: &str,
    timeout: Duration,
    work: impl AsyncFnOnce(&Client) -> Result<T, CliError>,
) -> Result<T, CliError> {
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .map_err(|e| CliError::Executor(e.to_string()))?;
    let mut config = ClientConfig::new(vec![addr.to_string()]);
    config.retry_deadline_ms = timeout.as_millis().try_into().unwrap_or(u64::MAX);
    config.tls = client_tls();
    let client = Client::new(config);
    executor.run(async move { work(&client).await })
}

/// Appends each record (the arguments, or else each line of stdin) and prints its
/// index, one per line.
pub fn append(
    addr: &str,
    partition: u32,
    records: Vec<String>,
    timeout: Duration,
) -> Result<(), CliError> {
    let records: Vec<Bytes> = if records.is_empty() {
        let lines = std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()?;
        lines.into_iter().map(Bytes::from).collect()
    } else {
        records.into_iter().map(Bytes::from).collect()
    };
    if records.is_empty() {
        return Ok(());
    }
    with_client(addr, timeout, async |client| {
        let ok = client.append(partition, records).await?;
        let mut out = std::io::stdout().lock();
        for index in ok.first_index..=ok.last_index {
            writeln!(out, "{index}")?;
        }
        Ok(())
    })
}

/// Removes the records of `partition` below `before` on every replica, through
/// the leader (following redirects like `append`); prints where the trim landed.
pub fn trim(addr: &str, partition: u32, before: u64, timeout: Duration) -> Result<(), CliError> {
    with_client(addr, timeout, async |client| {
        let ok = client.trim_ok(partition, before).await?;
        println!("{}", format_trim(partition, ok));
        Ok(())
    })
}

/// What `trim` prints: the trim entry's index and the partition's new log start.
pub fn format_trim(partition: u32, ok: TrimOk) -> String {
    format!(
        "trim entry at index {}; partition {partition} now starts at index {}",
        ok.trim_index, ok.log_start
    )
}

/// Hands `partition`'s leadership to node `to` (or the most up-to-date follower)
/// and prints who leads it now.
pub fn leader_transfer(
    addr: &str,
    partition: u32,
    to: Option<NodeId>,
    timeout: Duration,
) -> Result<(), CliError> {
    with_client(addr, timeout, async |client| {
        let ok = client.transfer_leader(partition, to).await?;
        println!(
            "partition {partition}: node {} leads in term {}",
            ok.leader, ok.term
        );
        Ok(())
    })
}

pub fn status(addr: &str, timeout: Duration) -> Result<(), CliError> {
    with_client(addr, timeout, async |client| {
        let metadata = client.metadata().await?;
        // Each node reports its own view of each partition; asking all of them
        // gives every member's last index, hence how far each follower lags.
        let mut views = Vec::new();
        for node in &metadata.nodes {
            let answer = client
                .call(&node.client_addr, &ClientRequest::Metadata)
                .await;
            let view = match answer {
                Ok(Ok(ClientResponse::Metadata(m))) => Some(m.partitions),
                _ => None,
            };
            views.push((node.node_id, view));
        }
        print!("{}", format_status(&metadata, &views));
        Ok(())
    })
}

/// Each node's own partition reports, `None` for a node that did not answer.
pub type NodeViews = [(u32, Option<Vec<PartitionInfo>>)];

pub fn format_status(metadata: &Metadata, views: &NodeViews) -> String {
    let mut text = format!("cluster {}\n", metadata.cluster_id);
    for node in &metadata.nodes {
        let up = views
            .iter()
            .any(|(id, view)| *id == node.node_id && view.is_some());
        let state = if up { "up" } else { "not answering" };
        let led = metadata
            .partitions
            .iter()
            .filter(|p| p.leader == Some(node.node_id))
            .count();
        text += &format!(
            "  node {} at {} ({state}), leads {led}\n",
            node.node_id, node.client_addr
        );
    }
    text += "partition  leader  term  commit  last  start  followers (last index, lag)\n";
    for p in &metadata.partitions {
        let leader = p.leader.map_or("-".to_string(), |l| l.to_string());
        let leader_last = views
            .iter()
            .filter(|(id, _)| Some(*id) == p.leader)
            .find_map(|(_, view)| {
                view.as_ref()?
                    .iter()
                    .find(|q| q.partition == p.partition)
                    .map(|q| q.last_index)
            })
            .unwrap_or(p.last_index);
        let followers: Vec<String> = views
            .iter()
            .filter(|(id, _)| Some(*id) != p.leader)
            .map(|(id, view)| {
                match view
                    .as_ref()
                    .and_then(|v| v.iter().find(|q| q.partition == p.partition))
                {
                    Some(q) => format!(
                        "node {id}: {} ({})",
                        q.last_index,
                        leader_last.saturating_sub(q.last_index)
                    ),
                    None => format!("node {id}: ?"),
                }
            })
            .collect();
        text += &format!(
            "{:>9}  {:>6}  {:>4}  {:>6}  {:>4}  {:>5}  {}\n",
            p.partition,
            leader,
            p.term,
            p.commit_index,
            p.last_index,
            p.log_start,
            followers.join(", ")
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_each_followers_lag() {
        let partition = |last_index| PartitionInfo {
            partition: 0,
            leader: Some(1),
            term: 3,
            commit_index: 90,
            last_index,
            log_start: 1,
        };
        let metadata = Metadata {
            cluster_id: 7,
            nodes: (1..=3)
                .map(|id| crate::transport::NodeInfo {
                    node_id: id,
                    client_addr: format!("127.0.0.1:{}", 7390 + 10 * id),
                })
                .collect(),
            partitions: vec![partition(100)],
        };
        let views = vec![
            (1, Some(vec![partition(100)])),
            (2, Some(vec![partition(96)])),
            (3, None),
        ];
        let text = format_status(&metadata, &views);
        assert!(text.contains("node 2: 96 (4), node 3: ?"), "{text}");
        assert!(
            text.contains("node 3 at 127.0.0.1:7420 (not answering)"),
            "{text}"
        );
    }

    #[test]
    fn trim_prints_the_entry_and_the_new_log_start() {
        let ok = TrimOk {
            trim_index: 812,
            log_start: 500,
        };
        assert_eq!(
            format_trim(3, ok),
            "trim entry at index 812; partition 3 now starts at index 500"
        );
    }
}

/// Parses a duration like `10`, `10s`, `500ms` or `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 10s or 500ms"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit in {text:?}: use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is not a usable duration"))
}

/// `ringlog bench`: against running nodes, or (`local`) a local 3-node cluster it
/// starts in a temporary directory, benchmarks and stops.
pub fn bench(
    addr: Option<String>,
    local: Option<LocalBench>,
    config: BenchConfig,
    json: bool,
) -> Result<(), CliError> {
    let (cluster, addrs, dir) = match (addr, local) {
        (_, Some(local)) => {
            let (cluster, addrs, dir) = start_local(&local)?;
            (Some(cluster), addrs, Some(dir))
        }
        (Some(addr), None) => (None, vec![addr], None),
        (None, None) => {
            return Err(CliError::Usage(
                "bench needs --addr HOST:PORT or --local".into(),
            ));
        }
    };
    let config = BenchConfig {
        addrs: addrs.clone(),
        server_pids: cluster.as_ref().map_or(Vec::new(), |c| c.nodes.pids()),
        tls: client_tls().map(crate::bench::BenchTls),
        ..config
    };
    let report = with_client(&addrs[0], Duration::from_secs(30), async |client| {
        if cluster.is_some() {
            await_leaders(client).await?;
        }
        Ok(crate::bench::run(config).await?)
    });
    if let Some(mut cluster) = cluster {
        cluster.stop(Duration::from_secs(10));
    }
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    let report = report?;
    println!(
        "{}",
        if json {
            report.to_json()
        } else {
            report.to_text()
        }
    );
    Ok(())
}

/// How `bench --local` sets up its cluster.
#[derive(Clone, Debug)]
pub struct LocalBench {
    pub nodes: u32,
    pub shards: u32,
    pub fsync: FsyncPolicy,
    /// See `WalSettings::write_through`.
    pub write_through: bool,
    /// One-way delay added to every peer link by a fault proxy (`src/proxy.rs`),
    /// to see how much of the latency the pipelined replication hides.
    pub peer_delay: Option<Duration>,
    /// `--set KEY=VALUE` overrides, applied to every node's config.
    pub settings: Vec<Setting>,
    /// TLS on every port (as `dev --tls`); the benchmark's clients use it too.
    pub tls: bool,
}

/// A local cluster and what keeps it running: its proxies live as long as it does.
struct LocalCluster {
    nodes: dev::DevCluster,
    _proxies: Vec<crate::proxy::FaultProxy>,
}

impl LocalCluster {
    fn stop(&mut self, grace: Duration) {
        self.nodes.stop(grace);
    }
}

fn start_local(local: &LocalBench) -> Result<(LocalCluster, Vec<String>, PathBuf), CliError> {
    let dir = std::env::temp_dir().join(format!("ringlog-bench-{}", std::process::id()));
    // The same allocator as the tests', so that a benchmark started from a test
    // never shares a port with another node of that test.
    let base = crate::ports::free_port_run(dev::ports_spanned(local.nodes))?;
    let mut configs = dev::configs(local.nodes, base, &dir, local.shards)?;
    for config in &mut configs {
        config.wal.fsync = local.fsync;
        config.wal.write_through = local.write_through;
    }
    if local.tls {
        let pki = dev::enable_tls(&dir, &mut configs)?;
        let identity = (
            pki.client_cert_file.as_path(),
            pki.client_key_file.as_path(),
        );
        use_client_tls(crate::tls::client_config(&pki.ca_file, Some(identity))?);
    }
    // After the flags, so that a `--set` of the same key wins.
    let mut configs = with_settings(configs, &local.settings)?;
    let mut proxies = Vec::new();
    for config in &mut configs {
        let Some(delay) = local.peer_delay else {
            continue;
        };
        // This node reaches each other node through a proxy of its own, so every
        // directed link gets the delay once.
        for member in config
            .nodes
            .iter_mut()
            .filter(|m| m.node_id != config.node_id)
        {
            let target = member.peer_address.parse().map_err(|e| {
                CliError::Usage(format!("peer address {}: {e}", member.peer_address))
            })?;
            let proxy = crate::proxy::FaultProxy::start(target)?;
            proxy.set_delay(delay, Duration::ZERO);
            member.peer_address = proxy.local_addr().to_string();
            proxies.push(proxy);
        }
    }
    let paths = dev::write_configs(&dir, &configs)?;
    // The benchmark's own output is what matters; nodes report only problems.
    let nodes =
        dev::DevCluster::start_with_log_filter(&std::env::current_exe()?, &paths, Some("warn"))?;
    let addrs = configs
        .iter()
        .map(|c| c.listen.client.to_string())
        .collect();
    let cluster = LocalCluster {
        nodes,
        _proxies: proxies,
    };
    Ok((cluster, addrs, dir))
}

/// Waits (up to 30 s) until every partition has a leader.
async fn await_leaders(client: &Client) -> Result<(), CliError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(meta) = client.metadata().await
            && !meta.partitions.is_empty()
            && meta.partitions.iter().all(|p| p.leader.is_some())
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(CliError::Usage(
                "the local cluster elected no leader within 30 s".into(),
            ));
        }
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}
