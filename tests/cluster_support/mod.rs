//! Real `ringlog serve` processes on loopback for the multi-process tests: free
//! ports, a temporary directory removed afterwards, kill -9 and restart, and a
//! client on a glommio executor of the test's own.

#![allow(dead_code)]

pub mod disk;
pub mod load;
pub mod members;
pub mod observe;
pub mod settings;
pub mod tls;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use ringlog::client::{Client, ClientConfig};
use ringlog::runtime::config::{Listen, Member, NodeConfig};
use ringlog::transport::{Metadata, ReadRequest};

/// A free port from the project's allocator (`ringlog::ports`): never one handed
/// to another test of this binary, and below the ephemeral range so that no
/// outgoing connection can take it while its node is down for a restart.
pub fn free_port() -> u16 {
    ringlog::ports::free_port().expect("a free loopback port")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub configs: Vec<NodeConfig>,
    paths: Vec<PathBuf>,
    children: Vec<Option<Child>>,
    envs: Vec<Vec<(String, String)>>,
    /// A program (and its arguments) node `k` is started through, which then runs
    /// `ringlog serve …`; empty: started directly.
    wrappers: Vec<Vec<String>>,
}

impl TestCluster {
    /// Starts `nodes` nodes with `shards` shards each.
    pub fn start(nodes: u32, shards: u32) -> TestCluster {
        TestCluster::start_routed(nodes, shards, |_, _, addr| addr)
    }

    /// Like `start`, but node `from` (0-based) reaches node `to`'s peer address
    /// `addr` at `route(from, to, addr)`, for example through a fault proxy.
    pub fn start_routed(
        nodes: u32,
        shards: u32,
        route: impl FnMut(usize, usize, SocketAddr) -> SocketAddr,
    ) -> TestCluster {
        let mut cluster = TestCluster::configure_routed(nodes, shards, route);
        cluster.spawn_all();
        cluster
    }

    /// The cluster's configuration, written out, with no node started yet.
    pub fn configure_routed(
        nodes: u32,
        shards: u32,
        mut route: impl FnMut(usize, usize, SocketAddr) -> SocketAddr,
    ) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<[u16; 3]> = (0..nodes)
            .map(|_| [free_port(), free_port(), free_port()])
            .collect();
        let members: Vec<Member> = (0..nodes)
            .map(|i| Member {
                node_id: i + 1,
                peer_address: loopback(ports[i as usize][1]).to_string(),
                client_address: loopback(ports[i as usize][0]).to_string(),
            })
            .collect();
        let configs: Vec<NodeConfig> = (0..nodes as usize)
            .map(|i| {
                let listen = Listen {
                    client: loopback(ports[i][0]),
                    peer: loopback(ports[i][1]),
                    metrics: loopback(ports[i][2]),
                };
                let routed: Vec<Member> = members
                    .iter()
                    .enumerate()
                    .map(|(to, m)| Member {
                        peer_address: if to == i {
                            m.peer_address.clone()
                        } else {
                            route(i, to, m.peer_address.parse().unwrap()).to_string()
                        },
                        ..m.clone()
                    })
                    .collect();
                let data_dir = dir.path().join(format!("node-{}", i + 1));
                settings::node_config(i as u32 + 1, &data_dir, shards, &listen, &routed)
            })
            .collect();
        let paths: Vec<PathBuf> = configs
            .iter()
            .map(|c| {
                let path = dir.path().join(format!("node-{}.toml", c.node_id));
                std::fs::write(&path, c.to_toml()).unwrap();
                path
            })
            .collect();
        TestCluster {
            dir,
            configs,
            paths,
            children: (0..nodes).map(|_| None).collect(),
            envs: (0..nodes).map(|_| Vec::new()).collect(),
            wrappers: (0..nodes).map(|_| Vec::new()).collect(),
        }
    }

    /// `founders` nodes that found the cluster and `spares` more (ids after theirs)
    /// that can join it later: the founders' `[[nodes]]` list the founders, each
    /// spare's lists itself alone (what it learns of the others, it learns from
    /// the cluster). Nothing is started.
    pub fn configure_with_spares(founders: u32, spares: u32, shards: u32) -> TestCluster {
        let mut cluster =
            TestCluster::configure_routed(founders + spares, shards, |_, _, addr| addr);
        for k in 0..cluster.configs.len() {
            let id = cluster.configs[k].node_id;
            let founder = id <= founders;
            cluster.configs[k].nodes.retain(|m| {
                if founder {
                    m.node_id <= founders
                } else {
                    m.node_id == id
                }
            });
            cluster.write_config(k);
        }
        cluster
    }

    /// Starts node `k` to join the running cluster through node `via`.
    pub fn spawn_joining(&mut self, k: usize, via: usize) {
        let addr = self.client_addr(via);
        self.spawn_with_args(k, &["--join", &addr]);
    }

    pub fn spawn_all(&mut self) {
        for k in 0..self.children.len() {
            self.spawn(k);
        }
    }

    /// An environment variable for node `k`'s process from its next start on.
    pub fn set_env(&mut self, k: usize, key: &str, value: &str) {
        self.envs[k].push((key.to_string(), value.to_string()));
    }

    /// Node `k` is started, from its next start on, as `wrapper… ringlog serve …`.
    pub fn set_wrapper(&mut self, k: usize, wrapper: Vec<String>) {
        self.wrappers[k] = wrapper;
    }

    pub fn spawn(&mut self, k: usize) {
        self.spawn_with_args(k, &[]);
    }

    /// Starts node `k` with extra `serve` arguments.
    pub fn spawn_with_args(&mut self, k: usize, args: &[&str]) {
        let binary = env!("CARGO_BIN_EXE_ringlog");
        let mut command = match self.wrappers[k].split_first() {
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&self.paths[k])
            .args(args)
            .envs(self.envs[k].iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start ringlog serve");
        self.children[k] = Some(child);
    }

    /// kill -9: no chance to flush or say goodbye.
    pub fn kill(&mut self, k: usize) {
        if let Some(mut child) = self.children[k].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and the exit status of a graceful shutdown.
    pub fn stop(&mut self, k: usize) -> std::process::ExitStatus {
        let mut child = self.children[k].take().expect("node running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }

    /// SIGSTOP: the process stays, silent, its sockets open.
    pub fn pause(&mut self, k: usize) {
        self.signal(k, libc::SIGSTOP);
    }

    /// SIGHUP: the node reloads its TLS certificates.
    pub fn sighup(&mut self, k: usize) {
        self.signal(k, libc::SIGHUP);
    }

    /// SIGCONT after `pause`.
    pub fn resume(&mut self, k: usize) {
        self.signal(k, libc::SIGCONT);
    }

    fn signal(&self, k: usize, signal: i32) {
        if let Some(child) = &self.children[k] {
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// The exit status of node `k` if its process ended without being told to.
    pub fn exited_by_itself(&mut self, k: usize) -> Option<std::process::ExitStatus> {
        self.children[k]
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The process id of node `k`, while it runs.
    pub fn pid(&self, k: usize) -> Option<u32> {
        self.children[k].as_ref().map(Child::id)
    }

    pub fn is_running(&self, k: usize) -> bool {
        self.children[k].is_some()
    }

    /// Writes node `k`'s config (after a test changed `configs[k]`) for its next start.
    pub fn write_config(&self, k: usize) {
        std::fs::write(&self.paths[k], self.configs[k].to_toml()).unwrap();
    }

    /// Election timeouts of 3–5 s (heartbeats every 50 ms) on every node, written to
    /// its config: for tests that assert no election happens while they load the
    /// machine, since a loaded CI machine can stall a process for a second or more.
    /// `nodes` nodes of `shards` shards with the leader balancer off and patient
    /// elections, started: only the test moves leaders, and no election happens
    /// on its own while a loaded machine stalls a process.
    pub fn start_steady(nodes: u32, shards: u32) -> TestCluster {
        let mut cluster = TestCluster::configure_routed(nodes, shards, |_, _, addr| addr);
        cluster.with_patient_elections();
        cluster.set_all(&[("raft.leader_balance", "false")]);
        cluster.spawn_all();
        cluster
    }

    pub fn with_patient_elections(&mut self) {
        for k in 0..self.configs.len() {
            let raft = &mut self.configs[k].raft;
            (raft.election_timeout_min_ms, raft.election_timeout_max_ms) = (3000, 5000);
            raft.heartbeat_interval_ms = 50;
            self.write_config(k);
        }
    }

    pub fn config_path(&self, k: usize) -> &std::path::Path {
        &self.paths[k]
    }

    pub fn client_addrs(&self) -> Vec<String> {
        self.configs
            .iter()
            .map(|c| c.listen.client.to_string())
            .collect()
    }

    pub fn client_addr(&self, k: usize) -> String {
        self.configs[k].listen.client.to_string()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for k in 0..self.children.len() {
            // A paused process must be resumed to die of SIGKILL promptly.
            self.resume(k);
            self.kill(k);
        }
    }
}

/// Runs `work` on a fresh glommio executor (the client is not `Send`).
pub fn on_executor<T: Send + 'static>(work: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    spawn_on_executor(work)
        .join()
        .expect("test executor thread")
}

/// Starts `work` on a fresh glommio executor in a thread of its own.
pub fn spawn_on_executor<T: Send + 'static>(
    work: impl AsyncFnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .expect("test executor")
            .run(async move { work().await })
    })
}

pub fn client(addrs: Vec<String>) -> Client {
    let mut config = ClientConfig::new(addrs);
    config.tls = tls::client_tls();
    config.retries_max = 50;
    config.retry_backoff_max_ms = 200;
    config.request_timeout_ms = 3_000;
    Client::new(config)
}

/// Polls metadata until every partition has a leader, or panics after `limit`.
pub async fn await_leaders(client: &Client, partitions: usize, limit: Duration) -> Metadata {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(meta) = client.metadata().await
            && meta.partitions.len() == partitions
            && meta.partitions.iter().all(|p| p.leader.is_some())
        {
            return meta;
        }
        assert!(
            Instant::now() < deadline,
            "no leader for every partition within {limit:?}"
        );
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

/// Every record of `partition` from one node, reading until its commit index
/// reaches `until` (or panicking after `limit`).
pub async fn read_all(
    client: &Client,
    addr: &str,
    partition: u32,
    until: u64,
    limit: Duration,
) -> Vec<(u64, Bytes)> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        let request = ReadRequest {
            partition,
            from_index: next,
            max_records: 10_000,
            max_bytes: 4 << 20,
            wait_timeout_ms: 200,
            any_replica: true,
        };
        let answer = client
            .call(addr, &ringlog::transport::ClientRequest::Read(request))
            .await;
        if let Ok(Ok(ringlog::transport::ClientResponse::Read(ok))) = answer {
            for record in &ok.records {
                out.push((record.index, record.payload.clone()));
            }
            next = ok.next_from(next);
            if ok.commit_index >= until && next > ok.commit_index {
                return out;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {addr} did not reach index {until} within {limit:?}"
        );
    }
}

/// Appends `count` unique records to `partitions` partitions from `clients`
/// concurrent clients in batches of `batch`; returns (partition, index, record)
/// of every acknowledged one.
pub async fn append_many(
    addrs: Vec<String>,
    prefix: &str,
    partitions: u32,
    clients: usize,
    count: usize,
    batch: usize,
) -> Vec<(u32, u64, Bytes)> {
    let client = Rc::new(client(addrs));
    let per_client = count / clients;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let client = client.clone();
            let prefix = prefix.to_string();
            glommio::spawn_local(async move {
                let mut acked = Vec::new();
                for start in (0..per_client).step_by(batch) {
                    let partition = ((c + start / batch) as u32) % partitions;
                    let records: Vec<Bytes> = (start..(start + batch).min(per_client))
                        .map(|i| Bytes::from(format!("{prefix}-c{c}-r{i}")))
                        .collect();
                    // A leader change under a loaded 2-core machine can make an
                    // outcome unknown; such records are simply not counted as acked.
                    let Ok(ok) = client.append(partition, records.clone()).await else {
                        continue;
                    };
                    assert_eq!(ok.last_index - ok.first_index + 1, records.len() as u64);
                    for (k, record) in records.into_iter().enumerate() {
                        acked.push((partition, ok.first_index + k as u64, record));
                    }
                }
                acked
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await);
    }
    all
}

/// Reads every partition from every node and checks: identical on all nodes, every
/// acknowledged record present exactly once at its acknowledged index.
pub async fn check_everywhere(addrs: Vec<String>, partitions: u32, acked: &[(u32, u64, Bytes)]) {
    let client = client(addrs.clone());
    for partition in 0..partitions {
        let expected: BTreeMap<u64, &Bytes> = acked
            .iter()
            .filter(|(p, _, _)| *p == partition)
            .map(|(_, i, r)| (*i, r))
            .collect();
        let until = expected.keys().next_back().copied().unwrap_or(0);
        let mut logs = Vec::new();
        for addr in &addrs {
            let log = read_all(&client, addr, partition, until, Duration::from_secs(30)).await;
            let unique: HashSet<&Bytes> = log.iter().map(|(_, r)| r).collect();
            assert_eq!(
                unique.len(),
                log.len(),
                "duplicate record on {addr} partition {partition}"
            );
            let at: BTreeMap<u64, &Bytes> = log.iter().map(|(i, r)| (*i, r)).collect();
            for (index, record) in &expected {
                assert_eq!(
                    at.get(index),
                    Some(record),
                    "{addr} partition {partition} index {index}; log starts {:?}, {} records",
                    &log[..log.len().min(3)],
                    log.len()
                );
            }
            logs.push(log);
        }
        let shortest = logs.iter().map(Vec::len).min().unwrap();
        for log in &logs {
            assert_eq!(
                log[..shortest],
                logs[0][..shortest],
                "nodes disagree on partition {partition}"
            );
        }
    }
}

pub const MIB: u64 = 1 << 20;

/// A field of /proc/PID/status, in bytes (the kernel reports kB).
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("process {pid} is gone: {e}"));
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// The resident memory of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS:")
}

/// A node's resident memory from a baseline taken before an attack, so that each
/// attack is held to a bound of its own.
pub struct MemoryWatch {
    pid: u32,
    before: u64,
    peak: u64,
}

impl MemoryWatch {
    pub fn start(pid: u32) -> MemoryWatch {
        let before = rss_bytes(pid);
        MemoryWatch {
            pid,
            before,
            peak: before,
        }
    }

    /// Samples the resident memory now; the highest sample counts.
    pub fn sample(&mut self) {
        self.peak = self.peak.max(rss_bytes(self.pid));
    }

    /// Growth from the baseline to the highest sample (this one included).
    pub fn growth(&mut self) -> u64 {
        self.sample();
        self.peak.saturating_sub(self.before)
    }

    /// Prints the growth (the figure issue 14 asks for) and asserts it is below
    /// `bound`.
    pub fn assert_below(&mut self, attack: &str, bound: u64) {
        let growth = self.growth();
        eprintln!(
            "{attack}: node RSS grew by {:.1} MiB (bound {} MiB)",
            growth as f64 / MIB as f64,
            bound / MIB
        );
        assert!(
            growth < bound,
            "{attack}: RSS grew by {growth} bytes, bound {bound}"
        );
    }
}

/// Re-checks `cond` every few milliseconds until it holds; panics after `limit`
/// (only a broken build should ever reach it).
pub fn await_condition(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let give_up = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < give_up, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The sum of every series of `name` whose labels contain `label` (for example
/// `reason="log_start_at_zero"`), from the metrics page at `addr`.
pub fn metric_sum(addr: SocketAddr, name: &str, label: &str) -> f64 {
    metric_values(addr, name, label).iter().sum()
}

/// The value of every series of `name` whose labels contain `label`, from the
/// metrics page at `addr`.
pub fn metric_values(addr: SocketAddr, name: &str, label: &str) -> Vec<f64> {
    let (_, page) = observe::http_get(addr, "/metrics");
    let prefix = format!("{name}{{");
    page.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect()
}

/// Node `k` survived an attack: its process has not exited, and an append and a
/// read of that record through the client library, starting from node `k`, succeed.
pub fn assert_alive_and_serving(cluster: &mut TestCluster, k: usize, after: &str) {
    assert!(
        cluster.is_running(k) && cluster.exited_by_itself(k).is_none(),
        "node {} died after {after}",
        k + 1
    );
    let addr = cluster.client_addr(k);
    let record = Bytes::from(format!("served after {after}"));
    let after = after.to_string();
    on_executor(async move || {
        let client = client(vec![addr]);
        let ok = client
            .append(0, vec![record.clone()])
            .await
            .unwrap_or_else(|e| panic!("no append served after {after}: {e}"));
        let read = ReadRequest {
            partition: 0,
            from_index: ok.first_index,
            max_records: 1,
            max_bytes: 1 << 20,
            wait_timeout_ms: 0,
            any_replica: false,
        };
        let answer = client
            .read(read)
            .await
            .unwrap_or_else(|e| panic!("no read served after {after}: {e}"));
        assert_eq!(answer.records.first().map(|r| &r.payload), Some(&record));
    });
}

/// Reads one whole frame of at most `body_bytes_max` body bytes from a raw
/// connection to a node, or `None` once the node closed it.
pub fn read_frame(
    stream: &mut impl std::io::Read,
    buf: &mut bytes::BytesMut,
    body_bytes_max: u32,
) -> Option<ringlog::transport::Frame> {
    use std::io::ErrorKind;
    loop {
        let decoded = ringlog::transport::frame::decode_frame(buf, body_bytes_max, None);
        if let Some(frame) = decoded.expect("a well-formed frame") {
            return Some(frame);
        }
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("reading from the node: {e}"),
        }
    }
}
