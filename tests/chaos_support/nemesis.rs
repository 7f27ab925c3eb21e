//! The nemesis: one fault at a time, in turn a leader kill, a pause, a network
//! partition, a graceful restart of a leader (SIGTERM: it hands its partitions
//! over first) and a membership change (a node removed, then added back), each held for a random while and then undone, with quiet gaps in
//! between. Leaders are found through each node's `/health`.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ringlog::engine::rng::Rng;

use super::{ChaosPlan, NODES, PARTITIONS, Proxies, metrics_addr};
use crate::cluster_support::TestCluster;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub leader_kills: usize,
    pub pauses: usize,
    pub partitions_symmetric: usize,
    pub partitions_one_way: usize,
    pub graceful_restarts: usize,
    /// A node removed from every group and added back (`reconfig.rs`).
    pub membership_changes: usize,
    /// Partitions on which a removal committed.
    pub removals_committed: usize,
}

impl FaultCounts {
    /// Faults by kind, as the plan counts them.
    pub fn counts(&self) -> [(&'static str, usize); 5] {
        [
            ("leader kill", self.leader_kills),
            ("pause", self.pauses),
            (
                "partition",
                self.partitions_symmetric + self.partitions_one_way,
            ),
            ("graceful restart", self.graceful_restarts),
            ("membership change", self.membership_changes),
        ]
    }

    fn min(&self) -> usize {
        self.counts().iter().map(|(_, n)| *n).min().unwrap_or(0)
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} leader kills (kill -9, restart), {} pauses (SIGSTOP/SIGCONT), {} symmetric and {} one-way partitions, {} graceful leader restarts (SIGTERM, restart), {} removals and additions of a node ({} partition removals committed)",
            self.leader_kills,
            self.pauses,
            self.partitions_symmetric,
            self.partitions_one_way,
            self.graceful_restarts,
            self.membership_changes,
            self.removals_committed
        )
    }
}

/// What the nemesis did, for the figures.
pub struct NemesisRecord {
    pub counts: FaultCounts,
    /// When each leader kill happened, per partition the killed node led.
    pub leader_kills: Vec<(Instant, u32)>,
}

pub struct Nemesis {
    pub(super) cluster: TestCluster,
    proxies: Proxies,
    pub(super) rng: Rng,
    pub(super) record: NemesisRecord,
}

impl Nemesis {
    pub fn new(cluster: TestCluster, proxies: Proxies, seed: u64) -> Nemesis {
        Nemesis {
            cluster,
            proxies,
            rng: Rng::new(seed),
            record: NemesisRecord {
                counts: FaultCounts::default(),
                leader_kills: Vec::new(),
            },
        }
    }

    /// Injects faults until the plan is satisfied.
    pub fn run(&mut self, plan: &ChaosPlan) {
        let started = Instant::now();
        for turn in 0.. {
            let elapsed = started.elapsed();
            let enough =
                self.record.counts.min() >= plan.faults_min_each && elapsed >= plan.duration_min;
            if enough || elapsed >= plan.limit {
                break;
            }
            match turn % 5 {
                0 => self.kill_leader(),
                1 => self.pause(),
                2 => self.partition(),
                3 => self.restart_leader_gracefully(),
                _ => self.reconfigure(),
            }
            self.assert_nodes_alive(started);
            self.sleep_between(300, 800);
        }
    }

    /// A node process that ended on its own (a panic, a refused restart) fails the
    /// run at once, saying which and when, rather than as a convergence timeout.
    fn assert_nodes_alive(&mut self, started: Instant) {
        for k in 0..NODES {
            if let Some(status) = self.cluster.exited_by_itself(k) {
                panic!(
                    "node {} exited by itself ({status}) {:.0} s into the faults, after {}; its stderr is above",
                    k + 1,
                    started.elapsed().as_secs_f64(),
                    self.record.counts
                );
            }
        }
    }

    pub(super) fn sleep_between(&mut self, low_ms: u64, high_ms: u64) {
        std::thread::sleep(Duration::from_millis(self.rng.range(low_ms, high_ms)));
    }

    /// kill -9 the node leading a random partition, then restart it.
    fn kill_leader(&mut self) {
        let partition = self.rng.range(0, PARTITIONS as u64) as u32;
        let Some(k) = self.await_leader(partition) else {
            return;
        };
        let mut led = self.partitions_led_by(k);
        if !led.contains(&partition) {
            led.push(partition);
        }
        let at = Instant::now();
        self.cluster.kill(k);
        self.record.counts.leader_kills += 1;
        self.record
            .leader_kills
            .extend(led.into_iter().map(|p| (at, p)));
        self.sleep_between(200, 1_500);
        self.cluster.spawn(k);
    }

    /// SIGTERM the node leading a random partition, which hands what it leads to
    /// followers before it stops, then start it again.
    fn restart_leader_gracefully(&mut self) {
        let partition = self.rng.range(0, PARTITIONS as u64) as u32;
        let Some(k) = self.await_leader(partition) else {
            return;
        };
        let status = self.cluster.stop(k);
        assert!(
            status.success(),
            "node {} stopped gracefully with {status}",
            k + 1
        );
        self.record.counts.graceful_restarts += 1;
        self.sleep_between(200, 1_500);
        self.cluster.spawn(k);
    }

    /// Half the time the node leading a random partition (any node if none
    /// leads it), otherwise any node.
    pub(super) fn leader_or_random_node(&mut self) -> usize {
        if self.rng.chance(1, 2) {
            let partition = self.rng.range(0, PARTITIONS as u64) as u32;
            self.await_leader(partition)
                .unwrap_or_else(|| self.random_node())
        } else {
            self.random_node()
        }
    }

    /// SIGSTOP a node (the leader of a partition half the time), then SIGCONT.
    fn pause(&mut self) {
        let k = self.leader_or_random_node();
        self.cluster.pause(k);
        self.record.counts.pauses += 1;
        self.sleep_between(300, 2_000);
        self.cluster.resume(k);
    }

    /// Cuts one node off: both directions, or only what it sends, or only what it
    /// receives; then heals.
    fn partition(&mut self) {
        let k = self.random_node();
        let (outbound, inbound) = match self.rng.range(0, 3) {
            0 => (true, true),
            1 => (true, false),
            _ => (false, true),
        };
        let cut: Vec<(usize, usize)> = self
            .proxies
            .keys()
            .copied()
            .filter(|&(from, to)| (outbound && from == k) || (inbound && to == k))
            .collect();
        for link in &cut {
            self.proxies[link].block();
        }
        if outbound && inbound {
            self.record.counts.partitions_symmetric += 1;
        } else {
            self.record.counts.partitions_one_way += 1;
        }
        self.sleep_between(500, 2_500);
        for link in &cut {
            self.proxies[link].heal();
        }
    }

    pub(super) fn random_node(&mut self) -> usize {
        self.rng.range(0, NODES as u64) as usize
    }

    /// Undoes everything: links healed, paused nodes resumed, killed ones restarted.
    pub fn heal_all(&mut self) {
        for proxy in self.proxies.values() {
            proxy.heal();
        }
        for k in 0..NODES {
            if self.cluster.is_running(k) {
                self.cluster.resume(k);
            } else {
                self.cluster.spawn(k);
            }
        }
        // A node whose adding back failed in its turn is added back now.
        for k in 0..NODES {
            assert!(
                self.add_back(k, Duration::from_secs(60)),
                "node {} could not be added back as a voter within 60 s after healing",
                k + 1
            );
        }
    }

    pub fn finish(self) -> (TestCluster, Proxies, NemesisRecord) {
        (self.cluster, self.proxies, self.record)
    }

    /// The node that says it leads `partition`, polling for up to 5 s.
    pub(super) fn await_leader(&self, partition: u32) -> Option<usize> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let leader = (0..NODES).find(|&k| {
                health(metrics_addr(&self.cluster, k))
                    .is_some_and(|h| h["partitions"][partition as usize]["role"] == "leader")
            });
            if leader.is_some() {
                return leader;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn partitions_led_by(&self, k: usize) -> Vec<u32> {
        let Some(h) = health(metrics_addr(&self.cluster, k)) else {
            return Vec::new();
        };
        (0..PARTITIONS)
            .filter(|&p| h["partitions"][p as usize]["role"] == "leader")
            .collect()
    }
}

/// A node's `/health` answer, or None when it does not answer within 500 ms.
pub fn health(addr: SocketAddr) -> Option<serde_json::Value> {
    let timeout = Duration::from_millis(500);
    if let Some(ca_file) = crate::cluster_support::tls::metrics_ca() {
        let answer =
            crate::cluster_support::tls::try_https_get(addr, "/health", ca_file, timeout).ok()?;
        return serde_json::from_str(answer.split_once("\r\n\r\n")?.1).ok();
    }
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: ringlog\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let body = answer.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}
