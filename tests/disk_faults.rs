//! Disk corruption on the real binary: a follower's segment is damaged while it is
//! down; it refuses to start, naming file and offset; the documented recovery
//! (`serve --truncate-corrupt-tail`) brings it back, it catches up from its peers,
//! stops abstaining from elections, and nothing acknowledged is lost.

mod cluster_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster_support::*;

/// The segment of `shard_dir` holding the most data (segment names end in `.wal`).
fn fullest_segment(shard_dir: &Path) -> PathBuf {
    let mut segments: Vec<(usize, PathBuf)> = std::fs::read_dir(shard_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .map(|p| (data_end(&std::fs::read(&p).unwrap()), p))
        .collect();
    segments.sort();
    segments.pop().expect("a segment with data").1
}

/// One past the last non-zero byte.
fn data_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// Flips a record byte in the middle of the written part of `segment`; returns its
/// offset.
fn corrupt_middle(segment: &Path) -> usize {
    let mut bytes = std::fs::read(segment).unwrap();
    let end = data_end(&bytes);
    let offset = (end / 2..end)
        .find(|&i| bytes[i].is_ascii_alphanumeric())
        .expect("record text in the second half");
    bytes[offset] ^= 0x5a;
    std::fs::write(segment, bytes).unwrap();
    offset
}

/// Runs `ringlog serve --config path`, which must exit by itself within `limit`
/// (it is killed, and the test fails, otherwise); returns its status and stderr.
fn serve_within(path: &Path, limit: Duration) -> (std::process::ExitStatus, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args(["serve", "--config"])
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve on a corrupt log was still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

fn leader_of_partition_0(cluster: &TestCluster) -> usize {
    let addrs = cluster.client_addrs();
    let leader = on_executor(async move || {
        let c = client(addrs);
        await_leaders(&c, 1, Duration::from_secs(20))
            .await
            .partitions[0]
            .leader
            .unwrap()
    });
    leader as usize - 1
}

#[test]
fn corrupt_follower_segment_is_refused_then_recovered_from_peers() {
    let mut cluster = TestCluster::start(3, 1);
    let addrs = cluster.client_addrs();
    let mut acked = on_executor({
        let addrs = addrs.clone();
        async move || append_many(addrs, "before", 1, 4, 4_000, 8).await
    });
    let follower = (leader_of_partition_0(&cluster) + 1) % 3;
    cluster.stop(follower);
    let shard_dir = cluster.configs[follower].data_dir.join("shard-0");
    let segment = fullest_segment(&shard_dir);
    let offset = corrupt_middle(&segment);

    let (status, stderr) = serve_within(cluster.config_path(follower), Duration::from_secs(20));
    assert!(!status.success(), "a corrupt log must not start");
    let name = segment.file_name().unwrap().to_string_lossy();
    assert!(
        stderr.contains("WAL corruption in") && stderr.contains(&*name),
        "the error names the file: {stderr}"
    );
    assert!(
        stderr.contains("--truncate-corrupt-tail"),
        "the error says how to recover: {stderr}"
    );
    let reported: usize = stderr
        .split("at offset ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no offset in: {stderr}"));
    assert!(
        reported <= offset && offset - reported < 1 << 20,
        "the damaged record starts at {reported}, the flipped byte is at {offset}"
    );

    // The other two keep serving meanwhile.
    acked.extend(on_executor({
        let addrs = addrs.clone();
        async move || append_many(addrs, "while-down", 1, 2, 1_000, 4).await
    }));
    cluster.spawn_with_args(follower, &["--truncate-corrupt-tail"]);
    // The marker that makes it abstain goes once it holds a newer committed entry.
    acked.extend(on_executor({
        let addrs = addrs.clone();
        async move || append_many(addrs, "after", 1, 2, 1_000, 4).await
    }));
    let marker = shard_dir.join("abstain-until-after-term");
    let deadline = Instant::now() + Duration::from_secs(30);
    while marker.exists() {
        if Instant::now() > deadline {
            let views = on_executor({
                let addrs = addrs.clone();
                async move || {
                    let c = client(addrs.clone());
                    let mut views = Vec::new();
                    for addr in &addrs {
                        let request = ringlog::transport::ClientRequest::Metadata;
                        views.push(format!("{addr}: {:?}", c.call(addr, &request).await));
                    }
                    views
                }
            });
            panic!(
                "node {} still abstains after 30 s: {}",
                follower + 1,
                views.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    on_executor(async move || check_everywhere(addrs, 1, &acked).await);
}
