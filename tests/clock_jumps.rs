//! Wall-clock jumps on real processes: every node runs under libfaketime, whose
//! offset the test moves by days and years, forwards and backwards, while clients
//! write and read; one node is also restarted with its clock set years back. No
//! safety property may depend on the wall clock (timeouts use the monotonic clock,
//! which a wall-clock jump does not move), so the history must check clean.

mod chaos_support;
mod cluster_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chaos_support::{NODES, PARTITIONS, Workload, final_logs};
use cluster_support::{TestCluster, await_leaders, client, on_executor};
use ringlog::engine::rng::Rng;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// Offsets libfaketime understands ("+1d": one day ahead), from years back to
/// years ahead.
const OFFSETS: &[&str] = &[
    "+0", "+1d", "-1d", "+365d", "-3650d", "+2h", "-30d", "+7300d",
];

#[test]
fn wall_clock_jumps_lose_nothing() {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: run .ci/run or `apt-get install faketime`"
    );
    assert_faketime_moves_the_wall_clock();
    let mut cluster = TestCluster::configure_routed(NODES as u32, PARTITIONS, |_, _, a| a);
    let clock_files: Vec<_> = (0..NODES)
        .map(|k| cluster.dir.path().join(format!("clock-{k}.faketime")))
        .collect();
    for (k, file) in clock_files.iter().enumerate() {
        std::fs::write(file, "+0\n").unwrap();
        cluster.set_env(k, "LD_PRELOAD", LIBFAKETIME);
        cluster.set_env(k, "FAKETIME_TIMESTAMP_FILE", file.to_str().unwrap());
        // Re-read the file every second, so that the offset can jump mid-run.
        cluster.set_env(k, "FAKETIME_CACHE_DURATION", "1");
        // The monotonic clock never jumps on a real machine; the wall clock does.
        cluster.set_env(k, "FAKETIME_DONT_FAKE_MONOTONIC", "1");
    }
    cluster.spawn_all();
    let addrs = cluster.client_addrs();
    on_executor({
        let addrs = addrs.clone();
        async move || {
            await_leaders(&client(addrs), PARTITIONS as usize, Duration::from_secs(30)).await;
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let workload = Workload::start(addrs, PARTITIONS, stop.clone());
    let mut rng = Rng::new(0x5eed_c10c);
    let mut jumps = 0;
    for round in 0..16 {
        std::thread::sleep(Duration::from_millis(700));
        let k = rng.range(0, NODES as u64) as usize;
        let offset = OFFSETS[rng.range(0, OFFSETS.len() as u64) as usize];
        std::fs::write(&clock_files[k], format!("{offset}\n")).unwrap();
        jumps += 1;
        if round == 8 {
            // A restart whose clock reads ten years before the previous run's.
            std::fs::write(&clock_files[k], "-3650d\n").unwrap();
            cluster.kill(k);
            cluster.spawn(k);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (history, _) = workload.join();
    let finals = final_logs(&cluster);
    let report = ringlog::history::check(&history, &finals);
    println!(
        "clock jumps: {jumps} wall-clock jumps and one restart ten years back; {} appends, {} reads; {}",
        history.appends.len(),
        history.reads.len(),
        report.summary()
    );
    assert!(report.is_clean(), "{report:#?}");
    assert!(report.acked_records > 500, "{}", report.summary());
}

/// The variables the nodes get do move a process's wall clock here (a `date`
/// under the same preload reads a year ten years ahead), so the test is not
/// vacuous. ringlog reads the time through the same libc call (its log lines show
/// the faked date).
fn assert_faketime_moves_the_wall_clock() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "+3650d\n").unwrap();
    let output = std::process::Command::new("date")
        .arg("+%Y")
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME_TIMESTAMP_FILE", file.path())
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .unwrap();
    let faked: i32 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / (365 * 24 * 3600)
        + 1970;
    assert!(
        faked >= now as i32 + 9,
        "libfaketime did not move the clock: {faked}"
    );
}
