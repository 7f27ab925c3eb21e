//! The lifecycle commands end to end through the `ringlog` binary: `ringlog trim`
//! against a real 3-node cluster, and `--set` overrides refused before any node
//! starts.

mod cluster_support;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use cluster_support::*;
use ringlog::client::ClientError;
use ringlog::transport::{ClientRequest, ClientResponse, ReadRequest, ServerError};

fn ringlog(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the ringlog binary runs")
}

fn read_from(from_index: u64) -> ClientRequest {
    ClientRequest::Read(ReadRequest {
        partition: 0,
        from_index,
        max_records: 1000,
        max_bytes: 1 << 20,
        wait_timeout_ms: 0,
        any_replica: true,
    })
}

/// `ringlog trim` removes the records below its index on every replica: each node
/// answers a read below the new start with OutOfRange naming it, keeps every
/// record above it, and counts the trim.
#[test]
#[ignore = "needs the engine's Event::ClientTrim (engine branch of issue 15); un-ignore at merge"]
fn trim_removes_the_records_below_its_index_on_every_replica() {
    let cluster = TestCluster::start(3, 1);
    let addrs = cluster.client_addrs();
    let last = on_executor({
        let addrs = addrs.clone();
        async move || {
            let client = client(addrs);
            await_leaders(&client, 1, Duration::from_secs(20)).await;
            let records = (0..100).map(|i| Bytes::from(format!("r{i}"))).collect();
            client.append(0, records).await.unwrap().last_index
        }
    });
    let out = ringlog(&[
        "trim",
        "--addr",
        &addrs[0],
        "--partition",
        "0",
        "--before",
        &(last - 49).to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = last - 49;
    assert!(
        stdout.contains(&format!("partition 0 now starts at index {start}")),
        "{stdout}"
    );
    on_executor({
        let addrs = addrs.clone();
        async move || {
            let client = client(addrs.clone());
            for addr in &addrs {
                // A follower applies the trim once it learns it is committed.
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                loop {
                    match client.call(addr, &read_from(1)).await {
                        Ok(Err(ServerError::OutOfRange { log_start, .. })) => {
                            assert_eq!(log_start, start, "{addr}");
                            break;
                        }
                        other => assert!(
                            std::time::Instant::now() < deadline,
                            "{addr} still serves index 1: {other:?}"
                        ),
                    }
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
                let Ok(Ok(ClientResponse::Read(kept))) = client.call(addr, &read_from(start)).await
                else {
                    panic!("{addr} cannot read from the new start");
                };
                let payloads: Vec<Bytes> = kept.records.iter().map(|r| r.payload.clone()).collect();
                let expected: Vec<Bytes> =
                    (50..100).map(|i| Bytes::from(format!("r{i}"))).collect();
                assert_eq!(
                    payloads, expected,
                    "{addr} keeps everything above the start"
                );
            }
        }
    });
    for config in &cluster.configs {
        let trims = metric_sum(
            config.listen.metrics,
            "ringlog_trims_total",
            "partition=\"0\"",
        );
        assert_eq!(trims, 1.0, "node {}", config.node_id);
    }
    // A trim beyond the log is refused with the server's reason and a failing exit.
    let out = ringlog(&[
        "trim",
        "--addr",
        &addrs[1],
        "--partition",
        "0",
        "--before",
        "1000000",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot trim before index 1000000"),
        "{stderr}"
    );
    on_executor(async move || {
        let client = client(addrs);
        let err = client.trim(0, 1_000_000).await.unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Server {
                    source: ServerError::InvalidRequest { .. },
                    ..
                }
            ),
            "{err}"
        );
    });
}

#[test]
fn dev_and_bench_refuse_a_bad_setting_naming_it_before_starting_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    for (args, named) in [
        (
            vec!["dev", "--dir", dir_arg, "--set", "wal.no_such_key=1"],
            "invalid setting `wal.no_such_key`",
        ),
        (
            vec!["dev", "--dir", dir_arg, "--set", "retention.max_bytes=lots"],
            "invalid setting `retention.max_bytes`",
        ),
        (
            vec!["dev", "--dir", dir_arg, "--set", "retention.max_bytes=1024"],
            "two segments of wal.segment_size_bytes",
        ),
        (
            vec!["bench", "--local", "--set", "retention.max_age_ms=0"],
            "invalid setting `retention.max_age_ms`",
        ),
        (
            vec!["dev", "--dir", dir_arg, "--set", "retention"],
            "KEY=VALUE",
        ),
    ] {
        let out = ringlog(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
    assert!(
        !dir.path().join("node-1").exists(),
        "nothing was written for a refused setting"
    );
}

#[test]
fn trim_help_describes_every_option() {
    let out = ringlog(&["trim", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for option in ["--addr", "--partition", "--before", "--timeout"] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(option))
            .unwrap_or_else(|| panic!("no {option} in {help}"));
        let described = line.trim_start()[option.len()..].trim_start();
        let text = described.split_once("  ").map_or("", |(_, t)| t.trim());
        assert!(!text.is_empty(), "{option} has no help: {line:?}");
    }
}
