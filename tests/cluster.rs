//! The service as users run it: real `ringlog` processes on loopback, real disks,
//! kill -9, restarts. Sized for CI on 2 cores.

mod cluster_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_support::*;

#[test]
fn three_nodes_two_shards_serve_concurrent_appends_identically() {
    let cluster = TestCluster::start(3, 2);
    let addrs = cluster.client_addrs();
    on_executor(async move || {
        let client = client(addrs.clone());
        await_leaders(&client, 2, Duration::from_secs(20)).await;
        let acked = append_many(addrs.clone(), "a", 2, 8, 100_000, 20).await;
        assert!(
            acked.len() >= 90_000,
            "only {} of 100,000 records acknowledged",
            acked.len()
        );
        check_everywhere(addrs, 2, &acked).await;
    });
}

#[test]
fn leader_killed_under_load_fails_over_and_rejoins_with_nothing_lost() {
    let mut cluster = TestCluster::start(3, 1);
    let addrs = cluster.client_addrs();
    let (leader, mut acked) = on_executor({
        let addrs = addrs.clone();
        async move || {
            let client = client(addrs.clone());
            let meta = await_leaders(&client, 1, Duration::from_secs(20)).await;
            let acked = append_many(addrs, "before", 1, 4, 400, 5).await;
            (meta.partitions[0].leader.unwrap(), acked)
        }
    });
    let killed = (leader - 1) as usize;
    cluster.kill(killed);
    let survivors: Vec<String> = (0..3)
        .filter(|&k| k != killed)
        .map(|k| cluster.client_addr(k))
        .collect();
    let (failover, after) = on_executor({
        let survivors = survivors.clone();
        async move || {
            let started = Instant::now();
            let client = client(survivors.clone());
            // Until a new leader is known, an attempt may hit the dead one; an
            // attempt whose outcome is unknown is not acknowledged, and each try
            // carries a fresh record so that none can be counted twice.
            let mut attempt = 0;
            while client
                .append(0, vec![Bytes::from(format!("probe-{attempt}"))])
                .await
                .is_err()
            {
                attempt += 1;
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "no leader 20 s after the kill"
                );
            }
            let failover = started.elapsed();
            (
                failover,
                append_many(survivors, "after", 1, 4, 400, 5).await,
            )
        }
    });
    println!("leader {leader} killed: appends succeeded again after {failover:?}");
    acked.extend(after);
    cluster.spawn(killed);
    on_executor({
        let acked = acked.clone();
        async move || check_everywhere(addrs, 1, &acked).await
    });
    // The whole cluster restarts with everything acknowledged still there.
    for k in 0..3 {
        assert!(
            cluster.stop(k).success(),
            "node {} did not shut down cleanly",
            k + 1
        );
    }
    for k in 0..3 {
        cluster.spawn(k);
    }
    let addrs = cluster.client_addrs();
    on_executor(async move || {
        await_leaders(&client(addrs.clone()), 1, Duration::from_secs(20)).await;
        check_everywhere(addrs, 1, &acked).await
    });
}

#[test]
fn follower_stopped_while_appends_continue_catches_up() {
    let mut cluster = TestCluster::start(3, 1);
    let addrs = cluster.client_addrs();
    let leader = on_executor({
        let addrs = addrs.clone();
        async move || {
            await_leaders(&client(addrs), 1, Duration::from_secs(20))
                .await
                .partitions[0]
                .leader
        }
    })
    .unwrap();
    let follower = (0..3).find(|&k| k as u32 + 1 != leader).unwrap();
    assert!(cluster.stop(follower).success());
    let live: Vec<String> = (0..3)
        .filter(|&k| k != follower)
        .map(|k| cluster.client_addr(k))
        .collect();
    let acked = on_executor(async move || append_many(live, "gap", 1, 4, 2_000, 20).await);
    cluster.spawn(follower);
    on_executor(async move || check_everywhere(addrs, 1, &acked).await);
}

#[test]
fn invalid_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let example = include_str!("../examples/node.toml");
    std::fs::write(&path, example.replacen("node_id = 1", "node_id = 9", 1)).unwrap();
    let stderr = serve_fails(&path);
    assert!(stderr.contains("invalid setting `node_id`"), "{stderr}");
    let stderr = serve_fails(std::path::Path::new("/nonexistent/ringlog.toml"));
    assert!(stderr.contains("cannot read config file"), "{stderr}");
}

/// A base port whose 3-node dev-cluster ports are all free, from the same
/// allocator as every other port of the tests.
fn free_base_port() -> u16 {
    ringlog::ports::free_port_run(ringlog::runtime::dev::ports_spanned(3))
        .expect("consecutive free ports for a dev cluster")
}

fn ringlog(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn dev_cluster_answers_the_cli_and_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let dev = std::process::Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args([
            "dev",
            "--shards",
            "1",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut dev = StopOnDrop(Some(dev));
    let addr = format!("127.0.0.1:{base}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = ringlog(&["status", "--addr", &addr]);
        let text = String::from_utf8_lossy(&status.stdout).to_string();
        let has_leader = text
            .lines()
            .any(|l| l.trim_start().starts_with('0') && !l.contains(" - "));
        if status.status.success() && has_leader {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dev cluster never got a leader: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let appended = ringlog(&["append", "--addr", &addr, "--partition", "0", "one", "two"]);
    assert!(
        appended.status.success(),
        "{}",
        String::from_utf8_lossy(&appended.stderr)
    );
    let indexes = String::from_utf8_lossy(&appended.stdout).to_string();
    assert_eq!(indexes.lines().count(), 2, "{indexes}");
    let read = ringlog(&[
        "read",
        "--addr",
        &addr,
        "--partition",
        "0",
        "--format",
        "json",
    ]);
    let lines = String::from_utf8_lossy(&read.stdout).to_string();
    assert!(
        lines.contains("\"record\":\"one\"") && lines.contains("\"record\":\"two\""),
        "{lines}"
    );
    let mut dev = dev.0.take().unwrap();
    unsafe { libc::kill(dev.id() as i32, libc::SIGINT) };
    let status = dev.wait().unwrap();
    assert!(status.success(), "dev exited with {status}");
    let left = std::process::Command::new("pgrep")
        .args(["-f", &dir.path().display().to_string()])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "nodes left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// Stops a dev cluster (gracefully, so it stops its nodes) if a test fails midway.
struct StopOnDrop(Option<std::process::Child>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

#[test]
fn data_dir_of_another_node_is_refused_at_start() {
    let cluster = TestCluster::start(1, 1);
    let mut config = cluster.configs[0].clone();
    // Node 2 of the same cluster pointed at node 1's data directory.
    config.node_id = 2;
    config.nodes.push(ringlog::runtime::config::Member {
        node_id: 2,
        peer_address: "127.0.0.1:1".into(),
        client_address: "127.0.0.1:1".into(),
    });
    config.listen.client = "127.0.0.1:0".parse().unwrap();
    config.listen.peer = "127.0.0.1:0".parse().unwrap();
    let path = cluster.dir.path().join("intruder.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    await_claimed(&config.data_dir);
    let stderr = serve_fails(&path);
    let identity = config.data_dir.join("identity");
    for words in [
        &format!("{} says this data directory", identity.display()),
        "belongs to node 1 of cluster 42",
        "configured as node 2 of cluster 42",
        "point data_dir elsewhere, or fix node_id",
    ] {
        assert!(stderr.contains(words), "{words:?} not in {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn data_dir_with_another_shard_count_is_refused_at_start() {
    let mut cluster = TestCluster::start(1, 1);
    let mut config = cluster.configs[0].clone();
    await_claimed(&config.data_dir);
    cluster.stop(0);
    // Records are placed by shard count: the same node with more shards would
    // look for them in the wrong shards.
    config.shards = 2;
    let path = cluster.dir.path().join("resharded.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let stderr = serve_fails(&path);
    for words in [
        "belongs to node 1 of cluster 42 with 1 shards",
        "configured as node 1 of cluster 42 with 2 shards",
        "fix shards",
    ] {
        assert!(stderr.contains(words), "{words:?} not in {stderr}");
    }
}

/// Waits until the node started on `data_dir` has written its identity file.
fn await_claimed(data_dir: &std::path::Path) {
    let identity = data_dir.join("identity");
    await_condition(
        "node 1 to claim its data directory",
        Duration::from_secs(10),
        || identity.exists(),
    );
}

/// Runs `ringlog serve --config path`, which must fail; returns what it said.
fn serve_fails(path: &std::path::Path) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args(["serve", "--config"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "serve with {} did not fail",
        path.display()
    );
    String::from_utf8_lossy(&output.stderr).to_string()
}

#[test]
fn oversized_records_and_batches_are_refused_and_the_node_keeps_serving() {
    let cluster = TestCluster::start(3, 1);
    let addrs = cluster.client_addrs();
    on_executor(async move || {
        let client = client(addrs.clone());
        await_leaders(&client, 1, Duration::from_secs(20)).await;
        let big = client
            .append(0, vec![Bytes::from(vec![1u8; 2 << 20])])
            .await;
        let text = format!("{:?}", big.unwrap_err());
        assert!(text.contains("exceeds the limit"), "{text}");
        let many = client
            .append(0, vec![Bytes::from_static(b"x"); 100_000])
            .await;
        let text = format!("{:?}", many.unwrap_err());
        assert!(text.contains("send smaller batches"), "{text}");
        let fine = client
            .append(0, vec![Bytes::from_static(b"still serving")])
            .await;
        assert!(fine.is_ok(), "{fine:?}");
    });
}

#[test]
fn reads_of_one_record_at_a_time_step_over_leader_no_ops() {
    let cluster = TestCluster::start(3, 1);
    let addrs = cluster.client_addrs();
    on_executor(async move || {
        let client = client(addrs.clone());
        await_leaders(&client, 1, Duration::from_secs(20)).await;
        let records: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("r{i}"))).collect();
        let ok = client.append(0, records.clone()).await.expect("append");
        let mut seen = Vec::new();
        let mut next = 1; // index 1 is the first leader's no-op
        while next <= ok.last_index {
            let request = ringlog::transport::ReadRequest {
                partition: 0,
                from_index: next,
                max_records: 1,
                max_bytes: 1 << 20,
                wait_timeout_ms: 0,
                any_replica: false,
            };
            let answer = client.read(request).await.expect("read");
            let record = answer.records.first().expect("a record after the no-op");
            assert_eq!(answer.records.len(), 1);
            seen.push(record.payload.clone());
            next = record.index + 1;
        }
        assert_eq!(seen, records);
    });
}

/// Right after `ringlog dev` starts, nothing listens yet and then no leader is
/// elected: the CLI keeps retrying until its deadline instead of giving up after a
/// fixed number of attempts.
#[test]
fn append_started_before_the_cluster_succeeds_once_it_is_up() {
    let mut cluster = TestCluster::configure_routed(3, 1, |_, _, addr| addr);
    let addr = cluster.client_addr(0);
    let append = std::process::Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args(["append", "--addr", &addr, "--partition", "0", "early"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The delay is the scenario, not synchronisation: the client must outlast
    // seconds of refused connections (the old 6 attempts lasted about 1 s).
    std::thread::sleep(Duration::from_secs(3));
    cluster.spawn_all();
    let out = append.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(index.parse::<u64>().is_ok_and(|i| i >= 1), "{index}");
}

#[test]
fn append_with_a_short_timeout_gives_up_in_words() {
    let addr = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let out = ringlog(&[
        "append",
        "--addr",
        &addr,
        "--partition",
        "0",
        "--timeout",
        "1s",
        "x",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    // Far below the 30 s default, with room for a loaded machine: the flag counts.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(stderr.contains("gave up on partition 0 after"), "{stderr}");
    assert!(stderr.contains("last error: cannot connect to"), "{stderr}");
    let garbage = ringlog(&[
        "append",
        "--addr",
        &addr,
        "--partition",
        "0",
        "--timeout",
        "soon",
        "x",
    ]);
    assert!(!garbage.status.success());
    assert!(
        String::from_utf8_lossy(&garbage.stderr).contains("not a duration"),
        "{}",
        String::from_utf8_lossy(&garbage.stderr)
    );
}
