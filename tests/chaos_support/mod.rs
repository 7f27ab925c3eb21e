//! The chaos run: cluster behind proxies, workload, nemesis, convergence and the
//! final check. See `tests/chaos.rs`.

#![allow(dead_code)]

mod nemesis;
mod reconfig;
mod workload;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringlog::history::{self, FinalLogs, LogStarts, Report};
use ringlog::proxy::FaultProxy;
use ringlog::transport::{ClientRequest, ClientResponse};

use crate::cluster_support::observe::read_retained;
use crate::cluster_support::{TestCluster, client, metric_sum, on_executor};
pub use nemesis::{FaultCounts, Nemesis};
pub use workload::{OpTiming, TrimCounts, Trimming, Workload};

pub const NODES: usize = 3;
pub const PARTITIONS: u32 = 2;

/// Retention on every node: 1 MiB segments and a partition kept to 4 MiB of them,
/// so that a run of a few minutes exceeds it many times; records of the workload
/// are small, so the largest record is lowered to fit such a segment.
pub const RETENTION: [(&str, &str); 4] = [
    ("wal.segment_size_bytes", "1048576"),
    ("wal.flush_bytes_max", "262144"),
    ("wal.record_size_bytes_max", "65536"),
    ("retention.max_bytes", "4194304"),
];

/// A client trim of each partition every 3 s, keeping the last 1,000 entries: less
/// than retention keeps, so that trims, not only retention, move the log start.
pub const TRIMMING: Trimming = Trimming {
    every: Duration::from_secs(3),
    tail_entries: 1_000,
};

/// How long and how hard to shake the cluster.
#[derive(Clone, Debug)]
pub struct ChaosPlan {
    /// The nemesis stops once every kind reached this many faults…
    pub faults_min_each: usize,
    /// …or once this much time has passed, whichever is later (but never past
    /// `limit`).
    pub duration_min: Duration,
    pub limit: Duration,
    pub seed: u64,
}

impl ChaosPlan {
    /// About two and a half minutes: ten of each of the five fault kinds.
    pub fn ci() -> ChaosPlan {
        ChaosPlan {
            faults_min_each: 10,
            duration_min: Duration::ZERO,
            limit: Duration::from_secs(200),
            seed: seed(),
        }
    }

    pub fn timed(duration: Duration) -> ChaosPlan {
        ChaosPlan {
            faults_min_each: 10,
            duration_min: duration,
            limit: duration + Duration::from_secs(120),
            seed: seed(),
        }
    }
}

fn seed() -> u64 {
    match std::env::var("RINGLOG_CHAOS_SEED") {
        Ok(s) => s.parse().expect("RINGLOG_CHAOS_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// The directed peer links, each through its own proxy: `(from, to)` → proxy.
pub type Proxies = BTreeMap<(usize, usize), FaultProxy>;

pub struct Outcome {
    pub seed: u64,
    pub report: Report,
    pub faults: FaultCounts,
    pub appends: usize,
    pub appends_acked: usize,
    pub appends_unknown: usize,
    pub appends_refused: usize,
    pub reads: usize,
    pub trims: TrimCounts,
    /// Every node's log start per partition at the final read.
    pub log_starts: LogStarts,
    /// Summed over the nodes at the end, each counted since the node's last
    /// start: segments removed by retention, and followers' logs reset to the
    /// leader's log start.
    pub segments_removed: u64,
    pub log_resets: u64,
    /// Time from each leader kill to the first acknowledged append invoked after it.
    pub unavailable_after_kill: Vec<Duration>,
    pub nemesis_time: Duration,
}

impl Outcome {
    pub fn summary(&self) -> String {
        let mut gaps = self.unavailable_after_kill.clone();
        gaps.sort();
        let median = gaps.get(gaps.len() / 2).copied().unwrap_or_default();
        let worst = gaps.last().copied().unwrap_or_default();
        format!(
            "chaos (seed {}): {:.0} s of faults: {}; {} appends ({} acknowledged, {} unknown, {} refused), {} reads, {} trims ({} failed), {} segments removed by retention and {} log resets (counted since each node's last start), final log starts {:?}; {}; unavailability after a leader kill: median {} ms, worst {} ms over {} kills",
            self.seed,
            self.nemesis_time.as_secs_f64(),
            self.faults,
            self.appends,
            self.appends_acked,
            self.appends_unknown,
            self.appends_refused,
            self.reads,
            self.trims.acked,
            self.trims.failed,
            self.segments_removed,
            self.log_resets,
            self.log_starts,
            self.report.summary(),
            median.as_millis(),
            worst.as_millis(),
            gaps.len(),
        )
    }
}

pub fn run_chaos(plan: &ChaosPlan) -> Outcome {
    let proxies: Arc<Mutex<Proxies>> = Arc::default();
    let routes = proxies.clone();
    let mut cluster =
        TestCluster::configure_routed(NODES as u32, PARTITIONS, move |from, to, addr| {
            let proxy = FaultProxy::start(addr).expect("start a fault proxy");
            let local = proxy.local_addr();
            routes.lock().unwrap().insert((from, to), proxy);
            local
        });
    cluster.set_all(&RETENTION);
    if std::env::var_os("RINGLOG_CHAOS_TLS").is_some() {
        with_tls(&mut cluster);
    }
    cluster.spawn_all();
    let proxies = Arc::try_unwrap(proxies)
        .ok()
        .expect("routes done")
        .into_inner()
        .unwrap();
    let addrs = cluster.client_addrs();
    on_executor({
        let addrs = addrs.clone();
        async move || {
            let c = client(addrs);
            crate::cluster_support::await_leaders(&c, PARTITIONS as usize, Duration::from_secs(30))
                .await;
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let workload =
        Workload::start_trimming(addrs.clone(), PARTITIONS, stop.clone(), Some(TRIMMING));
    let mut nemesis = Nemesis::new(cluster, proxies, plan.seed);
    let started = Instant::now();
    nemesis.run(plan);
    let nemesis_time = started.elapsed();
    nemesis.heal_all();
    // Let the healed cluster take writes for a moment, so the end of the history is
    // not all faults.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let workload::Recorded {
        history,
        timings,
        trims,
    } = workload.join_all();
    let (cluster, _proxies, record) = nemesis.finish();

    let (finals, log_starts) = final_logs_retained(&cluster);
    let report = history::check_retained(&history, &finals, &log_starts);
    let summed = |name: &str| {
        (0..NODES)
            .map(|k| metric_sum(metrics_addr(&cluster, k), name, "partition=") as u64)
            .sum()
    };
    let count = |f: &dyn Fn(&history::AppendOutcome) -> bool| {
        history.appends.iter().filter(|a| f(&a.outcome)).count()
    };
    use history::AppendOutcome::*;
    Outcome {
        seed: plan.seed,
        appends: history.appends.len(),
        appends_acked: count(&|o| matches!(o, Acked { .. })),
        appends_unknown: count(&|o| matches!(o, Unknown)),
        appends_refused: count(&|o| matches!(o, Refused)),
        reads: history.reads.len(),
        trims,
        log_starts,
        segments_removed: summed("ringlog_retention_segments_removed_total"),
        log_resets: summed("ringlog_log_resets_total"),
        report,
        unavailable_after_kill: unavailability(&record.leader_kills, &timings),
        faults: record.counts,
        nemesis_time,
    }
}

/// TLS on every port of every node (peers through the fault proxies too), and
/// for every client and metric scrape of the test (`RINGLOG_CHAOS_TLS=1`).
fn with_tls(cluster: &mut TestCluster) {
    use crate::cluster_support::tls::{ALL_ROLES, Pki, use_tls_everywhere};
    let pki = Pki::new(cluster.dir.path(), "chaos");
    pki.enable(cluster, &[("ops", ALL_ROLES)]);
    let (cert, key) = pki.client("ops", ringlog::tls::certs::Validity::Current);
    let client = ringlog::tls::client_config(&pki.ca_file, Some((&cert, &key))).unwrap();
    use_tls_everywhere(client, pki.ca_file.clone());
}

/// Reads every partition from every node once all agree on commit and last index.
pub fn final_logs(cluster: &TestCluster) -> FinalLogs {
    final_logs_retained(cluster).0
}

/// `final_logs`, each read from the node's log start, with the start each node
/// named when asked for an index below it (1 where nothing was removed).
pub fn final_logs_retained(cluster: &TestCluster) -> (FinalLogs, LogStarts) {
    let addrs = cluster.client_addrs();
    on_executor(async move || {
        let c = client(addrs.clone());
        let commits = converge(&c, &addrs).await;
        let (mut finals, mut starts) = (FinalLogs::new(), LogStarts::new());
        for (k, addr) in addrs.iter().enumerate() {
            let node = k as u32 + 1;
            for partition in 0..PARTITIONS {
                let until = commits[partition as usize];
                let log = read_retained(&c, addr, partition, until, Duration::from_secs(60)).await;
                finals
                    .entry(node)
                    .or_default()
                    .insert(partition, log.records);
                starts.entry(node).or_default().insert(partition, log.start);
            }
        }
        (finals, starts)
    })
}

/// Waits until every node reports the same commit and last index for every
/// partition (with a leader), and returns the commit indexes.
async fn converge(c: &ringlog::client::Client, addrs: &[String]) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut views = Vec::new();
        for addr in addrs {
            if let Ok(Ok(ClientResponse::Metadata(meta))) =
                c.call(addr, &ClientRequest::Metadata).await
            {
                views.push(meta.partitions);
            }
        }
        let agreed = views.len() == addrs.len()
            && views.iter().all(|v| {
                v.len() == PARTITIONS as usize
                    && v.iter().zip(&views[0]).all(|(a, b)| {
                        a.leader.is_some()
                            && (a.leader, a.commit_index, a.last_index)
                                == (b.leader, b.commit_index, b.last_index)
                            && a.commit_index == a.last_index
                    })
            });
        if agreed {
            return views[0].iter().map(|p| p.commit_index).collect();
        }
        assert!(
            Instant::now() < deadline,
            "nodes did not converge within 60 s after healing: {views:#?}"
        );
        glommio::timer::sleep(Duration::from_millis(100)).await;
    }
}

/// For each leader kill `(when, partition)`, how long until an append to that
/// partition invoked after the kill was acknowledged.
pub fn unavailability(kills: &[(Instant, u32)], timings: &[OpTiming]) -> Vec<Duration> {
    kills
        .iter()
        .filter_map(|&(at, partition)| {
            timings
                .iter()
                .filter(|t| t.partition == partition && t.acked && t.invoked >= at)
                .map(|t| t.completed - at)
                .min()
        })
        .collect()
}

/// A node's metrics address, for `/health`.
pub fn metrics_addr(cluster: &TestCluster, k: usize) -> SocketAddr {
    cluster.configs[k].listen.metrics
}
