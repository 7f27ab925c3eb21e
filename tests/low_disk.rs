//! The low-disk watermark on a real process whose data directory is on a small
//! tmpfs made by the test: once free space falls below `wal.min_free_bytes`, appends
//! are refused with DiskLow naming the node, the free bytes and the setting,
//! `/health` and the metrics say so, reads go on and the process never meets
//! ENOSPC; a trim frees the space and appends work again. Needs root, or
//! unprivileged user namespaces, for the tmpfs.

mod cluster_support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use cluster_support::disk::{SmallFilesystem, free_bytes};
use cluster_support::load::{assert_retained_intact, payload};
use cluster_support::observe::{await_metric, http_get, read_retained};
use cluster_support::*;
use ringlog::client::Client;

const FS_BYTES: u64 = 96 * MIB;
const MIN_FREE_BYTES: u64 = 48 * MIB;
/// Written beside the node's data directory so that the WAL reaches the watermark
/// after a few segments.
const BALLAST_BYTES: u64 = 24 * MIB;
const WAIT: Duration = Duration::from_secs(60);

/// A client that gives up on a refusal soon: the test expects refusals.
fn impatient(addr: String) -> Client {
    let mut config = ringlog::client::ClientConfig::new(vec![addr]);
    config.retries_max = 2;
    config.retry_backoff_max_ms = 50;
    config.request_timeout_ms = 5_000;
    Client::new(config)
}

/// Appends batches of 64 records of 4 KiB until one is refused; returns what was
/// acknowledged and the refusal's message. Panics if the node stops answering or
/// nothing is refused after writing more than the whole filesystem.
async fn append_until_refused(c: &Client, tag: &str) -> (BTreeMap<u64, Bytes>, String) {
    let mut acked = BTreeMap::new();
    for round in 0..(FS_BYTES / (256 * 1024)) {
        let records: Vec<Bytes> = (0..64)
            .map(|k| payload(tag, round * 64 + k, 4096))
            .collect();
        match c.append(0, records.clone()).await {
            Ok(ok) => acked.extend((ok.first_index..=ok.last_index).zip(records)),
            Err(e) => return (acked, e.to_string()),
        }
    }
    panic!("no append refused after {FS_BYTES} bytes on a {FS_BYTES}-byte filesystem");
}

#[test]
fn a_node_low_on_disk_refuses_appends_keeps_serving_reads_and_recovers_after_a_trim() {
    // Declared first so that it is dropped (unmounted) after the cluster's
    // processes are killed, also when an assertion fails.
    let fs = SmallFilesystem::mount(FS_BYTES);
    let mut cluster = TestCluster::configure_routed(1, 1, |_, _, addr| addr);
    let data_dir = fs.dir.join("node-1");
    cluster.set_all(&[
        ("data_dir", data_dir.to_str().unwrap()),
        ("wal.segment_size_bytes", "4194304"),
        ("wal.min_free_bytes", &MIN_FREE_BYTES.to_string()),
    ]);
    fs.prepare_node(&mut cluster, 0);
    cluster.spawn_all();
    let small = fs.seen_from_test(cluster.pid(0));
    await_condition("the node's data directory", WAIT, || {
        data_dir_in(&small).exists()
    });
    std::fs::write(small.join("ballast"), vec![7u8; BALLAST_BYTES as usize]).unwrap();
    let addr = cluster.client_addr(0);
    let metrics = cluster.metrics_addr(0);

    let (acked, refusal) = on_executor({
        let addr = addr.clone();
        async move || {
            await_leaders(&client(vec![addr.clone()]), 1, WAIT).await;
            append_until_refused(&impatient(addr), "fill").await
        }
    });
    eprintln!(
        "refused after {} records, {} bytes free: {refusal}",
        acked.len(),
        free_bytes(&small)
    );
    assert!(
        cluster.exited_by_itself(0).is_none(),
        "the node exited while filling its disk (its error is above): {refusal}"
    );
    for part in [
        "node 1 has ".to_string(),
        "bytes free".to_string(),
        format!("min_free_bytes = {MIN_FREE_BYTES}"),
    ] {
        assert!(
            refusal.contains(&part),
            "the refusal lacks {part:?}: {refusal}"
        );
    }
    assert_low_disk_reported(&cluster, metrics);
    assert!(free_bytes(&small) > 0, "the filesystem is full");

    // Reads go on, and further appends are refused without the process dying.
    let last = *acked
        .keys()
        .next_back()
        .expect("appends before the watermark");
    let (still_refused, trim_index) = on_executor({
        let (addr, acked) = (addr.clone(), acked.clone());
        async move || {
            let c = impatient(addr.clone());
            let retained = read_retained(&c, &addr, 0, last, WAIT).await;
            assert_retained_intact("node 1", &retained, &acked);
            let refused = c.append(0, vec![Bytes::from("one more")]).await.is_err();
            (
                refused,
                c.trim(0, last).await.expect("a trim while low on disk"),
            )
        }
    });
    assert!(still_refused, "an append was accepted below the watermark");
    assert!(
        cluster.exited_by_itself(0).is_none(),
        "the node exited while low on disk"
    );

    // The trim removes every segment below `last`; the node sees the space back.
    await_metric(
        metrics,
        "ringlog_disk_low",
        "",
        "the low-disk state to end",
        WAIT,
        |v| v == 0.0,
    );
    let (status, body) = http_get(metrics, "/health");
    assert_eq!(status, 200, "/health after the trim: {body}");
    let after = on_executor(async move || {
        let c = impatient(addr);
        let ok = c
            .append(0, vec![Bytes::from("after the trim")])
            .await
            .unwrap_or_else(|e| panic!("an append after the trim: {e}"));
        ok.first_index
    });
    assert!(
        after > trim_index,
        "append at {after}, trim entry at {trim_index}"
    );
    eprintln!(
        "after the trim: {} bytes free, the next append at index {after}",
        free_bytes(&small)
    );
}

/// Where the node's data directory is, seen through `small`.
fn data_dir_in(small: &std::path::Path) -> std::path::PathBuf {
    small.join("node-1")
}

/// `/health` answers 503 naming the low disk, `ringlog_disk_low` is 1, the free
/// bytes metric is below the watermark and the refusal is counted.
fn assert_low_disk_reported(cluster: &TestCluster, metrics: std::net::SocketAddr) {
    let (status, body) = http_get(metrics, "/health");
    assert_eq!(status, 503, "/health while low on disk: {body}");
    assert!(
        body.contains("min_free_bytes"),
        "/health does not say why: {body}"
    );
    assert_eq!(observe::metric(metrics, "ringlog_disk_low", ""), Some(1.0));
    let free = observe::metric(metrics, "ringlog_disk_free_bytes", "").expect("free bytes");
    assert!(
        (free as u64) < MIN_FREE_BYTES,
        "ringlog_disk_free_bytes is {free}, not below {MIN_FREE_BYTES}"
    );
    let refused = metric_sum(
        metrics,
        "ringlog_appends_refused_total",
        "reason=\"disk_low\"",
    );
    assert!(refused >= 1.0, "no refusal counted for disk_low");
    assert!(cluster.is_running(0));
}
