//! A rolling restart under load: each node in turn is stopped with SIGTERM and
//! started again while clients append to every partition. A stopping node first
//! hands each partition it leads to a follower (`raft.shutdown_handover_ms`), so the
//! clients see a redirect where they used to wait out an election timeout, and every
//! acknowledged record survives, once and in place, on every node.
//!
//! The test runs with election timeouts of 3–5 s: a restart that had to wait for an
//! election would leave a gap of at least 3 s between acknowledgements, whatever
//! the machine's load, while a hand-over takes a few round trips. With
//! `RINGLOG_ROLLING_FIGURES=1` it instead runs the default timeouts (300–600 ms)
//! twice, without and with the hand-over, and prints the gaps of both for the
//! record (docs/operations.md).

mod cluster_support;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_support::observe::{metric, try_http_get};
use cluster_support::*;

const PARTITIONS: u32 = 2;
const CLIENTS_PER_PARTITION: usize = 4;

/// One acknowledged record and when its acknowledgement arrived.
type Acked = (u32, u64, Bytes, Instant);

#[test]
fn a_rolling_restart_under_load_hands_leadership_over_and_loses_nothing() {
    if std::env::var("RINGLOG_ROLLING_FIGURES").is_ok() {
        return print_figures();
    }
    let mut cluster = TestCluster::configure_routed(3, PARTITIONS, |_, _, addr| addr);
    cluster.with_patient_elections();
    cluster.spawn_all();
    let election_timeout_min = Duration::from_millis(3000);
    let restarts = rolling_restart(&mut cluster);
    for (k, gap) in restarts.iter().enumerate() {
        println!(
            "restart of node {}: longest gap between acknowledgements {gap:?}",
            k + 1
        );
        assert!(
            *gap < election_timeout_min,
            "restarting node {} stopped the appends for {gap:?}: an election timeout, not a hand-over",
            k + 1
        );
    }
}

/// Without and with the hand-over, at the default election timeouts: the longest
/// gap between acknowledgements in each restart.
fn print_figures() {
    for handover_ms in [0, 2000] {
        let mut cluster = TestCluster::configure_routed(3, PARTITIONS, |_, _, addr| addr);
        for k in 0..3 {
            let raft = &mut cluster.configs[k].raft;
            (raft.election_timeout_min_ms, raft.election_timeout_max_ms) = (300, 600);
            raft.heartbeat_interval_ms = 50;
            raft.shutdown_handover_ms = handover_ms;
            cluster.write_config(k);
        }
        cluster.spawn_all();
        let gaps = rolling_restart(&mut cluster);
        let mut ms: Vec<f64> = gaps.iter().map(|g| g.as_secs_f64() * 1e3).collect();
        println!("shutdown_handover_ms = {handover_ms}: gaps per restart (ms) {ms:.1?}");
        ms.sort_by(f64::total_cmp);
        println!(
            "  p50 {:.1} ms, max {:.1} ms",
            ms[ms.len() / 2],
            ms[ms.len() - 1]
        );
    }
}

/// Restarts every node in turn under load, then checks every acknowledged record on
/// every node; returns, per restart, the longest time any partition went without an
/// acknowledgement between the stop and the node serving again.
fn rolling_restart(cluster: &mut TestCluster) -> Vec<Duration> {
    let addrs = cluster.client_addrs();
    let leaders_addrs = addrs.clone();
    on_executor(async move || {
        await_leaders(
            &client(leaders_addrs),
            PARTITIONS as usize,
            Duration::from_secs(30),
        )
        .await
    });
    let running = Arc::new(AtomicBool::new(true));
    let load = spawn_on_executor({
        let (addrs, running) = (addrs.clone(), running.clone());
        async move || append_until_stopped(addrs, running).await
    });
    let mut windows = Vec::new();
    for k in 0..cluster.configs.len() {
        // Let the load run a moment on the whole cluster before each stop.
        std::thread::sleep(Duration::from_millis(300));
        let stopped_at = Instant::now();
        let status = cluster.stop(k);
        assert!(status.success(), "node {} stopped with {status}", k + 1);
        cluster.spawn(k);
        let metrics = cluster.configs[k].listen.metrics;
        await_condition(
            "the restarted node is healthy",
            Duration::from_secs(60),
            || healthy(metrics),
        );
        windows.push((stopped_at, Instant::now()));
        // As docs/operations.md says: the next node stops only once this one has
        // caught up, or the partition would wait for it to commit.
        await_caught_up(cluster, k);
    }
    running.store(false, Ordering::Relaxed);
    let acked = load.join().expect("the load's thread");
    let gaps = windows
        .iter()
        .map(|&(from, to)| longest_gap(&acked, from, to))
        .collect();
    let records: Vec<(u32, u64, Bytes)> = acked.into_iter().map(|(p, i, r, _)| (p, i, r)).collect();
    on_executor(async move || check_everywhere(addrs, PARTITIONS, &records).await);
    gaps
}

/// Appends single records from several clients per partition until `running` is
/// cleared; every acknowledged one with the time its acknowledgement arrived.
async fn append_until_stopped(addrs: Vec<String>, running: Arc<AtomicBool>) -> Vec<Acked> {
    let client = Rc::new(client(addrs));
    let acked = Rc::new(RefCell::new(Vec::new()));
    let tasks: Vec<_> = (0..PARTITIONS as usize * CLIENTS_PER_PARTITION)
        .map(|c| {
            let (client, acked, running) = (client.clone(), acked.clone(), running.clone());
            glommio::spawn_local(async move {
                let partition = (c % PARTITIONS as usize) as u32;
                let mut seq = 0u64;
                while running.load(Ordering::Relaxed) {
                    let record = Bytes::from(format!("rolling-c{c}-r{seq}"));
                    seq += 1;
                    // An outcome the client cannot know (its connection closed with
                    // the append in flight) is not counted as acknowledged.
                    if let Ok(ok) = client.append(partition, vec![record.clone()]).await {
                        let at = Instant::now();
                        acked
                            .borrow_mut()
                            .push((partition, ok.first_index, record, at));
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    Rc::try_unwrap(acked).expect("tasks done").into_inner()
}

/// The longest stretch of `[from, to]` in which some partition had no append
/// acknowledged.
fn longest_gap(acked: &[Acked], from: Instant, to: Instant) -> Duration {
    (0..PARTITIONS)
        .map(|partition| {
            let mut times: Vec<Instant> = acked
                .iter()
                .filter(|(p, _, _, at)| *p == partition && *at >= from && *at <= to)
                .map(|(_, _, _, at)| *at)
                .collect();
            times.sort();
            let edges = std::iter::once(from)
                .chain(times)
                .chain(std::iter::once(to));
            let edges: Vec<Instant> = edges.collect();
            edges
                .windows(2)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or_default()
        })
        .max()
        .unwrap_or_default()
}

/// Waits until node `k` has committed, in every partition, what the other nodes had
/// committed when it started waiting.
fn await_caught_up(cluster: &TestCluster, k: usize) {
    let others = (0..cluster.configs.len()).filter(|&j| j != k);
    let metrics: Vec<SocketAddr> = others.map(|j| cluster.configs[j].listen.metrics).collect();
    let mine = cluster.configs[k].listen.metrics;
    for partition in 0..PARTITIONS {
        let label = format!("partition=\"{partition}\"");
        let commit = |addr| metric(addr, "ringlog_raft_commit_index", &label).unwrap_or(0.0);
        let target = metrics.iter().map(|&a| commit(a)).fold(0.0, f64::max);
        await_condition(
            "the restarted node catches up",
            Duration::from_secs(60),
            || commit(mine) >= target,
        );
    }
}

/// The node answers `/health` with 200: every partition alive with a leader.
fn healthy(metrics: SocketAddr) -> bool {
    matches!(try_http_get(metrics, "/health"), Ok((200, _)))
}
