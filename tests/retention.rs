//! Retention and trims on real processes: a partition's WAL is kept within its
//! documented bound on every node, its log start moves on every node, reads below
//! the start are refused as out of range naming it, and everything above it reads
//! back intact; a follower that was down while the leader removed what it needed is
//! reset to the leader's log start, catches up and can lead.

mod cluster_support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_support::disk::dir_bytes;
use cluster_support::load::{Load, append_load, assert_retained_intact};
use cluster_support::observe::{
    await_metric, metric, named_log_start, out_of_range_message, read_retained,
};
use cluster_support::*;

const SEGMENT_BYTES: u64 = MIB;
const MAX_BYTES: u64 = 4 * MIB;
const LOG_START: &str = "ringlog_raft_log_start_index";
const PARTITION_0: &str = "partition=\"0\"";
const WAIT: Duration = Duration::from_secs(60);

/// Small segments (so that retention, which removes whole segments, has many to
/// remove), a largest record that fits them, and no low-disk refusal (this test is
/// about retention, not about the machine's free space).
const SMALL_SEGMENTS: [(&str, &str); 4] = [
    ("wal.segment_size_bytes", "1048576"),
    ("wal.flush_bytes_max", "262144"),
    ("wal.record_size_bytes_max", "65536"),
    ("wal.min_free_bytes", "0"),
];

/// The most a partition's WAL directory may hold on one node, as
/// docs/configuration.md states it: the whole segments `max_bytes` holds, one
/// segment opened since the last retention check, the spare segment prepared in
/// advance, a removed segment kept to be recycled, and "a few KiB" for the
/// hard-state file and the per-segment summaries, which this test takes as 64 KiB.
fn disk_bound(max_bytes: u64, segment_bytes: u64) -> u64 {
    (max_bytes / segment_bytes) * segment_bytes + 3 * segment_bytes + 64 * 1024
}

fn cluster_with(settings: &[(&str, &str)]) -> TestCluster {
    let mut cluster = TestCluster::configure_routed(3, 1, |_, _, addr| addr);
    let all: Vec<(&str, &str)> = SMALL_SEGMENTS.iter().chain(settings).copied().collect();
    cluster.set_all(&all);
    cluster.spawn_all();
    cluster
}

fn wal_dirs(cluster: &TestCluster) -> Vec<PathBuf> {
    (0..cluster.configs.len())
        .map(|k| cluster.wal_dir(k, 0))
        .collect()
}

/// 2,000-byte records, 64 to an append.
fn load(tag: &'static str, bytes_total: u64) -> Load<'static> {
    Load {
        tag,
        partition: 0,
        bytes_total,
        record_bytes: 2_000,
        batch: 64,
    }
}

/// Waits until every node's `ringlog_raft_log_start_index` of partition 0
/// satisfies `holds`.
fn await_log_start_everywhere(cluster: &TestCluster, what: &str, holds: impl Fn(u64) -> bool) {
    for k in 0..cluster.configs.len() {
        let what = format!("node {}'s log start {what}", k + 1);
        await_metric(
            cluster.metrics_addr(k),
            LOG_START,
            PARTITION_0,
            &what,
            WAIT,
            |s| holds(s as u64),
        );
    }
}

/// On every node: the log start metric is above 1, the log read back from the
/// node starts above 1, a read below its start is refused naming the start, and
/// every acknowledged record from the start on is intact. Returns each node's start.
fn assert_moved_and_intact(cluster: &TestCluster, acked: &BTreeMap<u64, Bytes>) -> Vec<u64> {
    await_log_start_everywhere(cluster, "above 1", |start| start > 1);
    let addrs = cluster.client_addrs();
    let acked = acked.clone();
    on_executor(async move || {
        let c = client(addrs.clone());
        let until = *acked.keys().next_back().expect("something acknowledged");
        let mut starts = Vec::new();
        for (k, addr) in addrs.iter().enumerate() {
            let node = format!("node {}", k + 1);
            let retained = read_retained(&c, addr, 0, until, WAIT).await;
            assert!(retained.start > 1, "{node} still starts its log at 1");
            // The start only moves up (retention may go on while the test reads).
            let message = out_of_range_message(&c, addr, 0, retained.start - 1).await;
            assert!(
                named_log_start(&message).is_some_and(|s| s >= retained.start),
                "{node}: the refusal does not name a log start of at least {}: {message}",
                retained.start
            );
            let checked = assert_retained_intact(&node, &retained, &acked);
            eprintln!(
                "{node}: log start {}, {checked} acknowledged records above it intact",
                retained.start
            );
            starts.push(retained.start);
        }
        starts
    })
}

/// One node at one moment of a load: its WAL directory's size as the test sums it,
/// and the bytes its WAL has written so far (`ringlog_wal_written_bytes_total`).
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    disk_bytes: u64,
    written_bytes: u64,
}

/// Appends `load`, sampling every node after each append; returns the
/// acknowledged records and each node's samples.
fn load_sampled(
    cluster: &TestCluster,
    load: Load<'static>,
) -> (BTreeMap<u64, Bytes>, Vec<Vec<Sample>>) {
    let dirs = wal_dirs(cluster);
    let metrics: Vec<_> = (0..dirs.len()).map(|k| cluster.metrics_addr(k)).collect();
    let addrs = cluster.client_addrs();
    // A leader needs only two of the three nodes: the third may still be opening
    // its WAL when the load starts, and a sample of a directory not yet made
    // would fail the test, not the node.
    await_condition("every node's WAL directory", WAIT, || {
        dirs.iter().all(|d| d.exists())
    });
    // The directory is made before the shard registers its metrics: a node seen
    // between the two would have no written-bytes series to sample yet.
    await_condition("every node's WAL metrics", WAIT, || {
        metrics
            .iter()
            .all(|&m| metric(m, "ringlog_wal_written_bytes_total", PARTITION_0).is_some())
    });
    on_executor(async move || {
        let c = client(addrs);
        await_leaders(&c, 1, WAIT).await;
        let mut samples = vec![Vec::new(); dirs.len()];
        let acked = append_load(&c, load, || {
            for (k, dir) in dirs.iter().enumerate() {
                let written = metric(metrics[k], "ringlog_wal_written_bytes_total", PARTITION_0);
                samples[k].push(Sample {
                    at: Instant::now(),
                    disk_bytes: dir_bytes(dir),
                    written_bytes: written.expect("the WAL's written bytes") as u64,
                });
            }
        })
        .await;
        (acked, samples)
    })
}

fn peak(samples: &[Sample]) -> u64 {
    samples.iter().map(|s| s.disk_bytes).max().unwrap_or(0)
}

/// The most the WAL wrote within any 100 ms, as far as the samples show.
fn written_per_check_max(samples: &[Sample]) -> u64 {
    let check = Duration::from_millis(100);
    let mut most = 0;
    for (i, early) in samples.iter().enumerate() {
        for late in samples[i..].iter().take_while(|s| s.at - early.at <= check) {
            most = most.max(late.written_bytes - early.written_bytes);
        }
    }
    most
}

#[test]
fn retention_by_bytes_moves_the_log_start_on_every_node_and_settles_within_the_bound() {
    let max_bytes = MAX_BYTES.to_string();
    let cluster = cluster_with(&[("retention.max_bytes", &max_bytes)]);
    let bound = disk_bound(MAX_BYTES, SEGMENT_BYTES);
    let (acked, samples) = load_sampled(&cluster, load("bytes", 4 * MAX_BYTES));
    let peaks: Vec<u64> = samples.iter().map(|s| peak(s)).collect();
    assert_moved_and_intact(&cluster, &acked);
    for (k, peak) in peaks.iter().enumerate() {
        let removed = metric_sum(
            cluster.metrics_addr(k),
            "ringlog_retention_segments_removed_total",
            PARTITION_0,
        );
        assert!(removed >= 1.0, "node {} counts no removed segment", k + 1);
        let dir = cluster.wal_dir(k, 0);
        await_condition(
            &format!("node {}'s WAL within {bound} bytes", k + 1),
            WAIT,
            || dir_bytes(&dir) <= bound,
        );
        let reported = metric(
            cluster.metrics_addr(k),
            "ringlog_wal_disk_bytes",
            PARTITION_0,
        );
        assert!(
            reported.is_some_and(|b| b as u64 <= bound),
            "node {}: ringlog_wal_disk_bytes is {reported:?}, bound {bound}",
            k + 1
        );
        eprintln!(
            "node {}: WAL {} bytes after the load (bound {bound}), {peak} at its peak during it",
            k + 1,
            dir_bytes(&dir)
        );
    }
}

/// The bound during the load, with the rate-dependent term of
/// docs/configuration.md: "a partition written faster than [a segment per tenth of a
/// second] can open one more segment per `segment_size_bytes` it writes in 100 ms
/// before the next check removes them". The test appends as fast as one client can,
/// so with 1 MiB segments that term counts.
#[test]
fn retention_by_bytes_keeps_every_nodes_wal_within_the_bound_while_appending() {
    let max_bytes = MAX_BYTES.to_string();
    let cluster = cluster_with(&[("retention.max_bytes", &max_bytes)]);
    let (_, samples) = load_sampled(&cluster, load("bytes", 4 * MAX_BYTES));
    for (k, node) in samples.iter().enumerate() {
        let written = written_per_check_max(node);
        let extra = written.div_ceil(SEGMENT_BYTES) * SEGMENT_BYTES;
        let bound = disk_bound(MAX_BYTES, SEGMENT_BYTES) + extra;
        let peak = peak(node);
        eprintln!(
            "node {}: WAL directory peaked at {peak} bytes; at most {written} bytes written in 100 ms, so the bound is {bound}",
            k + 1
        );
        assert!(
            peak <= bound,
            "node {}'s WAL directory held {peak} bytes, above the documented bound {bound}",
            k + 1
        );
    }
}

#[test]
fn retention_by_age_removes_old_segments_on_every_node() {
    let cluster = cluster_with(&[("retention.max_age_ms", "1500")]);
    let (acked, samples) = load_sampled(&cluster, load("old", 4 * MIB));
    let peaks: Vec<u64> = samples.iter().map(|s| peak(s)).collect();
    // Nothing more is appended: the segments sealed during the load age past
    // 1.5 s and go; the newest, being written, stays.
    let old_last = *acked.keys().next_back().unwrap();
    await_log_start_everywhere(&cluster, "past half the log", |start| start > old_last / 2);
    assert_moved_and_intact(&cluster, &acked);
    for (k, peak) in peaks.iter().enumerate() {
        let now = dir_bytes(&cluster.wal_dir(k, 0));
        eprintln!("node {}: WAL {now} bytes, {peak} at its peak", k + 1);
        assert!(
            now < *peak,
            "node {}: the WAL still holds {now} bytes, its peak was {peak}",
            k + 1
        );
    }
}

/// `ringlog trim` through the CLI.
fn trim_cli(addr: &str, before: u64) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args(["trim", "--addr", addr, "--partition", "0", "--before"])
        .arg(before.to_string())
        .output()
        .expect("run ringlog trim")
}

#[test]
fn trims_remove_records_below_on_every_node() {
    let cluster = cluster_with(&[]);
    let addrs = cluster.client_addrs();
    let acked = on_executor({
        let addrs = addrs.clone();
        async move || {
            let c = client(addrs);
            await_leaders(&c, 1, WAIT).await;
            append_load(&c, load("trim", 3 * MIB), || {}).await
        }
    });
    let last = *acked.keys().next_back().unwrap();

    let first = last / 2;
    let output = trim_cli(&addrs[0], first);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ringlog trim failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("ringlog trim --before {first}: {}", stdout.trim());
    assert_trimmed(&cluster, first, &acked);

    let second = last * 3 / 4;
    let trim_index = on_executor({
        let addrs = addrs.clone();
        async move || client(addrs).trim(0, second).await.expect("Client::trim")
    });
    assert!(
        trim_index > last,
        "the trim entry {trim_index} is not after {last}"
    );
    assert_trimmed(&cluster, second, &acked);
    for k in 0..3 {
        let trims = metric_sum(cluster.metrics_addr(k), "ringlog_trims_total", PARTITION_0);
        assert!(trims >= 2.0, "node {} counts {trims} trims", k + 1);
    }

    let beyond = trim_cli(&addrs[1], trim_index + 1_000);
    assert!(
        !beyond.status.success(),
        "a trim beyond the log's end succeeded: {}",
        String::from_utf8_lossy(&beyond.stdout)
    );
    eprintln!(
        "trim beyond the end: {}",
        String::from_utf8_lossy(&beyond.stderr).trim()
    );
}

/// After a trim below `before`: every node's log start is at least `before`, a
/// read below it is refused, and what is above it is intact.
fn assert_trimmed(cluster: &TestCluster, before: u64, acked: &BTreeMap<u64, Bytes>) {
    await_log_start_everywhere(cluster, &format!("at {before} or above"), |start| {
        start >= before
    });
    let starts = assert_moved_and_intact(cluster, acked);
    assert!(
        starts.iter().all(|&s| s >= before),
        "log starts {starts:?} below the trim point {before}"
    );
}

#[test]
fn a_follower_down_while_its_entries_were_removed_is_reset_and_can_lead() {
    let max_bytes = MAX_BYTES.to_string();
    let mut cluster = TestCluster::configure_routed(3, 1, |_, _, addr| addr);
    let mut settings = SMALL_SEGMENTS.to_vec();
    settings.push(("retention.max_bytes", &max_bytes));
    cluster.set_all(&settings);
    // Nodes 2 and 3 wait 3–5 s before an election: node 1 leads first, and once
    // node 3 comes back with fast elections it is the one to take over.
    cluster.set_node(1, &PATIENT);
    cluster.set_node(2, &PATIENT);
    cluster.spawn_all();
    let addrs = cluster.client_addrs();
    await_leader_is(&cluster, 0);
    cluster.kill(2);

    let acked = on_executor({
        let addrs = addrs.clone();
        async move || append_load(&client(addrs), load("while-down", 4 * MAX_BYTES), || {}).await
    });
    let leader_start = await_metric(
        cluster.metrics_addr(0),
        LOG_START,
        PARTITION_0,
        "the leader's log start to move",
        WAIT,
        |s| s > 1.0,
    );

    cluster.set_node(
        2,
        &[
            ("raft.election_timeout_min_ms", "150"),
            ("raft.election_timeout_max_ms", "300"),
        ],
    );
    cluster.spawn(2);
    let follower = cluster.metrics_addr(2);
    await_metric(
        follower,
        "ringlog_log_resets_total",
        PARTITION_0,
        "node 3's log reset",
        WAIT,
        |r| r >= 1.0,
    );
    await_metric(
        follower,
        LOG_START,
        PARTITION_0,
        "node 3's log start to move",
        WAIT,
        |s| s >= leader_start,
    );
    let sent = metric_sum(
        cluster.metrics_addr(0),
        "ringlog_log_start_sent_total",
        PARTITION_0,
    );
    assert!(sent >= 1.0, "the leader counts no log start sent");

    // Node 3 caught up; now it must lead, and commit with node 2.
    let caught_up = *acked.keys().next_back().unwrap();
    await_metric(
        follower,
        "ringlog_raft_commit_index",
        PARTITION_0,
        "node 3 to catch up",
        WAIT,
        |c| c as u64 >= caught_up,
    );
    make_lead(&mut cluster, 2);
    let more = on_executor({
        let addr = addrs[2].clone();
        async move || append_load(&client(vec![addr]), load("after", MIB), || {}).await
    });
    let mut all = acked;
    all.extend(more);
    let addr = addrs[2].clone();
    let checked = on_executor(async move || {
        let c = client(vec![addr.clone()]);
        let until = *all.keys().next_back().unwrap();
        let retained = read_retained(&c, &addr, 0, until, WAIT).await;
        assert!(retained.start > 1, "node 3 kept its whole log");
        assert_retained_intact("node 3", &retained, &all)
    });
    eprintln!(
        "node 3 leads after its reset; {checked} acknowledged records above its start intact"
    );
}

const PATIENT: [(&str, &str); 2] = [
    ("raft.election_timeout_min_ms", "3000"),
    ("raft.election_timeout_max_ms", "5000"),
];

/// Makes node `k` (the only node with short election timeouts) the leader: while
/// another node leads, that node is killed and restarted with long timeouts. Node
/// `k` usually wins the first election, since the other survivor refuses to vote
/// for 3 s after it last heard the old leader and then waits up to 2 s more before
/// its own campaign, while node `k` asks every 150–300 ms.
fn make_lead(cluster: &mut TestCluster, k: usize) {
    for _ in 0..8 {
        let leader = await_some_leader(cluster);
        if leader == k {
            return;
        }
        cluster.kill(leader);
        cluster.set_node(leader, &PATIENT);
        await_condition("a new leader", WAIT, || {
            (0..3).any(|j| j != leader && leads(cluster, j))
        });
        cluster.spawn(leader);
    }
    panic!("node {} never won an election", k + 1);
}

fn leads(cluster: &TestCluster, k: usize) -> bool {
    if !cluster.is_running(k) {
        return false;
    }
    // A node still starting does not answer yet, and leads nothing.
    observe::try_http_get(cluster.metrics_addr(k), "/health").is_ok_and(|(_, body)| {
        serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|h| h["partitions"][0]["role"] == "leader")
    })
}

fn await_some_leader(cluster: &TestCluster) -> usize {
    let mut found = None;
    await_condition("a leader", WAIT, || {
        found = (0..3).find(|&k| leads(cluster, k));
        found.is_some()
    });
    found.expect("found")
}

/// Waits until node `k` reports itself leader of partition 0 on `/health`.
fn await_leader_is(cluster: &TestCluster, k: usize) {
    await_condition(&format!("node {} to lead", k + 1), WAIT, || {
        leads(cluster, k)
    });
}
