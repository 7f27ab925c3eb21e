//! The lifecycle commands end to end through the `ringlog` binary: `ringlog trim`
//! and `ringlog read --from` against a real 3-node cluster, and `--set` overrides
//! refused before any node starts.

mod cluster_support;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use cluster_support::*;
use ringlog::client::ClientError;
use ringlog::transport::{AppendOk, ClientRequest, ClientResponse, ReadRequest, ServerError};

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

/// A 3-node cluster of one shard each, its client addresses, and where the records
/// `r0` to `r{count - 1}`, appended to partition 0 once it has a leader, went.
fn cluster_with_records(count: u32) -> (TestCluster, Vec<String>, AppendOk) {
    let cluster = TestCluster::start(3, 1);
    let addrs = cluster.client_addrs();
    let appended = on_executor({
        let addrs = addrs.clone();
        async move || {
            let client = client(addrs);
            await_leaders(&client, 1, Duration::from_secs(20)).await;
            let records = (0..count).map(|i| Bytes::from(format!("r{i}"))).collect();
            client.append(0, records).await.unwrap()
        }
    });
    (cluster, addrs, appended)
}

/// `ringlog trim` removes the records below its index on every replica: each node
/// answers a read below the new start with OutOfRange naming it, keeps every
/// record above it, and counts the trim.
#[test]
fn trim_removes_the_records_below_its_index_on_every_replica() {
    let (cluster, addrs, appended) = cluster_with_records(100);
    let last = appended.last_index;
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

/// `ringlog read --from` against a real cluster: `-N` prints the last N records,
/// `earliest` (the default) everything retained, also after a trim, `latest`
/// nothing without --follow and only new records with it, an index from there;
/// what is no position fails before any node is asked.
#[test]
fn read_from_earliest_latest_back_and_index() {
    let (_cluster, addrs, appended) = cluster_with_records(10);
    let first = appended.first_index;
    // A follower's address: the reads are redirected to the leader.
    let read = |from: &[&str]| {
        let mut args = vec!["read", "--addr", &addrs[1], "--partition", "0"];
        args.extend_from_slice(from);
        let out = ringlog(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{from:?}: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        (
            stdout.lines().map(str::to_string).collect::<Vec<_>>(),
            stderr,
        )
    };
    let records = |range: std::ops::Range<u64>| range.map(|i| format!("r{i}")).collect::<Vec<_>>();
    assert_eq!(read(&["--from", "-3"]).0, records(7..10));
    assert_eq!(read(&["--from=-3"]).0, records(7..10));
    assert_eq!(
        read(&["--from", "-100"]).0,
        records(0..10),
        "clamped to the start"
    );
    assert_eq!(read(&["--from", "earliest"]).0, records(0..10));
    assert_eq!(read(&[]).0, records(0..10), "earliest is the default");
    let (latest, said) = read(&["--from", "latest"]);
    assert!(latest.is_empty(), "{latest:?}");
    assert!(said.contains("nothing to read"), "{said}");
    assert_eq!(
        read(&["--from", &(first + 8).to_string()]).0,
        records(8..10)
    );
    on_executor({
        let addrs = addrs.clone();
        async move || client(addrs).trim(0, first + 5).await.unwrap()
    });
    assert_eq!(read(&["--from", "earliest"]).0, records(5..10));
    assert_eq!(
        read(&["--from", "-7"]).0,
        records(5..10),
        "clamped to the new start"
    );
    let below = ringlog(&[
        "read",
        "--addr",
        &addrs[0],
        "--partition",
        "0",
        "--from",
        "1",
    ]);
    assert!(!below.status.success(), "index 1 is trimmed away");
    for garbage in ["-0", "0", "-x", "last"] {
        let out = ringlog(&[
            "read",
            "--addr",
            "127.0.0.1:1",
            "--partition",
            "0",
            "--from",
            garbage,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{garbage}: {stderr}");
        assert!(stderr.contains("--from"), "{garbage}: {stderr}");
    }
    follow_latest_prints_only_new_records(&addrs);
}

/// `read --from latest --follow` skips what is already committed: the first line
/// it prints is a record appended after it started.
fn follow_latest_prints_only_new_records(addrs: &[String]) {
    use std::io::BufRead;
    let mut reader = Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args(["read", "--addr", &addrs[2], "--partition", "0"])
        .args(["--from", "latest", "--follow"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the ringlog binary runs");
    let stdout = reader.stdout.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let first = std::io::BufReader::new(stdout).lines().next();
        let _ = line_tx.send(first);
    });
    // The reader learns where the end is some time after it starts: appending
    // until it prints something shows it starts at the end, whenever it got there.
    let addrs = addrs.to_vec();
    let first_line = on_executor(async move || {
        let client = client(addrs);
        for k in 0..100 {
            client
                .append(0, vec![Bytes::from(format!("new{k}"))])
                .await
                .unwrap();
            glommio::timer::sleep(Duration::from_millis(100)).await;
            if let Ok(line) = line_rx.try_recv() {
                return line;
            }
        }
        None
    });
    reader.kill().unwrap();
    let _ = reader.wait();
    let first_line = first_line.expect("the follower printed a line").unwrap();
    assert!(first_line.starts_with("new"), "{first_line}");
}

/// `ringlog leader transfer` moves partition 0 to the node it names, then to the
/// most up-to-date follower, printing who leads; `status` counts the partitions each
/// node leads; a node that is not a member is refused, naming it.
#[test]
fn leader_transfer_moves_leadership_and_status_counts_leaders_per_node() {
    let (_cluster, addrs, _) = cluster_with_records(3);
    let leader_now = || {
        let addrs = addrs.clone();
        on_executor(async move || {
            let meta = await_leaders(&client(addrs), 1, Duration::from_secs(20)).await;
            meta.partitions[0].leader.expect("a leader")
        })
    };
    let before = leader_now();
    let to = before % 3 + 1;
    let transfer = |extra: &[&str]| {
        let mut args = vec![
            "leader",
            "transfer",
            "--addr",
            &addrs[0],
            "--partition",
            "0",
        ];
        args.extend_from_slice(extra);
        ringlog(&args)
    };
    let to_text = to.to_string();
    let out = transfer(&["--to", &to_text]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.starts_with(&format!("partition 0: node {to} leads in term ")),
        "{stdout}"
    );
    let status = ringlog(&["status", "--addr", &addrs[1]]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("(up), leads 1\n"), "{status}");
    assert_eq!(status.matches("leads 0\n").count(), 2, "{status}");

    let out = transfer(&[]);
    assert!(out.status.success(), "{out:?}");
    // A node may name the old leader for a heartbeat more.
    await_condition(
        "leadership moves on from the node it was given to",
        Duration::from_secs(20),
        || leader_now() != to,
    );

    let out = transfer(&["--to", "9"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node 9 is not a member"), "{stderr}");
}
