//! `ringlog bench` as users run it: the built binary starts a local cluster of its
//! own (`--local`, free ports, a temporary directory), benchmarks it and stops it;
//! the tests parse its JSON report. They check that fields exist and hold sane
//! values, not how fast anything is.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One benchmark at a time: each starts three nodes on a small machine, and
/// `--local` picks its ports by probing, which two concurrent runs could race for.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// No run may take longer than this; past it, the bench and its nodes are killed.
const LIMIT: Duration = Duration::from_secs(60);

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Runs `ringlog ARGS` with a temporary directory of its own as TMPDIR (where
/// `--local` puts its cluster), killing it and every node it started (its process
/// group) if it runs past `LIMIT`. Checks that it left no process and no file behind.
fn ringlog(args: &[&str]) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args(args)
        .env("TMPDIR", tmp.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start ringlog");
    let group = child.id() as libc::pid_t;
    let stdout = read_all(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: signal 0 only asks whether the group still has a process.
    let leftovers = unsafe { libc::kill(-group, 0) } == 0;
    // SAFETY: kills only the process group this test created; a group that no
    // longer exists makes it fail harmlessly with ESRCH.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = child.wait();
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    let Some(status) = status else {
        panic!("ringlog {args:?} ran past {LIMIT:?}; stderr:\n{stderr}");
    };
    assert!(
        !leftovers,
        "ringlog {args:?} exited but left processes running; stderr:\n{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "ringlog {args:?} left {left:?} in its temporary directory"
    );
    Run {
        status,
        stdout,
        stderr,
    }
}

/// Runs a local benchmark with `--json` and returns its report.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut all = vec!["bench", "--local", "--json"];
    all.extend_from_slice(args);
    let run = ringlog(&all);
    assert!(
        run.status.success(),
        "ringlog {all:?} failed ({}); stderr:\n{}",
        run.status,
        run.stderr
    );
    // Not a terminal: progress comes as plain lines, never rewritten in place.
    assert!(!run.stderr.contains('\r'), "stderr:\n{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1, "stdout:\n{}", run.stdout);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

fn u64_field(report: &serde_json::Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer {field:?} in {report}"))
}

fn f64_field(report: &serde_json::Value, field: &str) -> f64 {
    report[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {field:?} in {report}"))
}

/// What every report must hold: records, no errors, consistent rates, and
/// latency percentiles in order.
fn check_report(report: &serde_json::Value, record_size: u64) {
    let records = u64_field(report, "records");
    let seconds = f64_field(report, "seconds");
    assert!(records > 0, "{report}");
    assert_eq!(u64_field(report, "errors"), 0, "{report}");
    assert!(seconds > 0.0 && seconds < LIMIT.as_secs_f64(), "{report}");
    let per_sec = f64_field(report, "records_per_sec");
    let expected = records as f64 / seconds;
    assert!((per_sec - expected).abs() <= expected * 1e-6, "{report}");
    let mb = f64_field(report, "mb_per_sec");
    let expected = per_sec * record_size as f64 / 1e6;
    assert!((mb - expected).abs() <= expected * 1e-6, "{report}");
    let latency = &report["latency_us"];
    let at = |p: &str| {
        latency[p]
            .as_u64()
            .unwrap_or_else(|| panic!("no latency_us.{p} in {report}"))
    };
    let percentiles = [at("p50"), at("p90"), at("p99"), at("p999"), at("max")];
    assert!(percentiles[0] > 0, "{report}");
    assert!(
        percentiles.is_sorted(),
        "percentiles out of order: {report}"
    );
    assert_eq!(u64_field(report, "record_size"), record_size, "{report}");
    assert_eq!(report["mode"], "closed", "{report}");
    assert!(report["rate"].is_null(), "{report}");
    assert_eq!(u64_field(report, "partitions"), 1, "{report}");
}

#[test]
fn a_timed_local_benchmark_reports_throughput_and_latency() {
    let report = bench_json(&["--duration", "2s", "--warmup", "500ms", "--clients", "4"]);
    check_report(&report, 256);
    assert_eq!(u64_field(&report, "clients"), 4, "{report}");
    assert_eq!(u64_field(&report, "inflight"), 1, "{report}");
    assert_eq!(u64_field(&report, "connections"), 1, "{report}");
    assert_eq!(u64_field(&report, "batch"), 1, "{report}");
    assert_eq!(f64_field(&report, "duration_s"), 2.0, "{report}");
    assert_eq!(f64_field(&report, "warmup_s"), 0.5, "{report}");
    assert!(report["count"].is_null(), "{report}");
    // The whole duration is measured, plus the answers still awaited at its end.
    assert!(f64_field(&report, "seconds") >= 2.0, "{report}");
    // --local knows its servers, so it charges their CPU time to the records.
    assert!(f64_field(&report, "server_cpu_seconds") > 0.0, "{report}");
    assert!(
        f64_field(&report, "server_cpu_us_per_record") > 0.0,
        "{report}"
    );
    // It also splits each node's CPU time by thread: its executor, then the rest.
    let nodes = report["server_cpu_threads"]
        .as_array()
        .unwrap_or_else(|| panic!("no server_cpu_threads in {report}"));
    assert_eq!(nodes.len(), 3, "{report}");
    for node in nodes {
        let threads = node["threads"].as_array().expect("threads");
        assert_eq!(threads[0]["thread"], "shard-0", "{report}");
        let shares: f64 = threads.iter().filter_map(|t| t["share"].as_f64()).sum();
        assert!((shares - 1.0).abs() < 1e-9, "{report}");
    }
    // And what the machine does with idle CPUs, which changes what latencies mean.
    let machine = &report["machine"];
    assert!(machine["cpus"].as_u64().is_some_and(|n| n >= 1), "{report}");
    assert_eq!(
        machine["guest_halt_poll_ns"].is_null(),
        !std::path::Path::new("/sys/module/haltpoll/parameters/guest_halt_poll_ns").exists(),
        "{report}"
    );
}

#[test]
fn a_counted_local_benchmark_measures_exactly_the_count() {
    // Also the fdatasync path of the WAL (write, then sync) rather than O_DSYNC writes.
    let args = [
        "--count",
        "2000",
        "--warmup",
        "500ms",
        "--clients",
        "4",
        "--fsync",
        "fdatasync",
    ];
    let report = bench_json(&args);
    check_report(&report, 256);
    assert_eq!(u64_field(&report, "count"), 2000, "{report}");
    assert!(report["duration_s"].is_null(), "{report}");
    // One record per append and no errors: exactly the count.
    assert_eq!(u64_field(&report, "records"), 2000, "{report}");
}

#[test]
fn a_counted_benchmark_with_batches_and_pipelining_rounds_up_to_a_whole_batch() {
    let args = [
        "--count",
        "2000",
        "--warmup",
        "500ms",
        "--clients",
        "4",
        "--inflight",
        "4",
        "--connections",
        "3",
        "--batch",
        "3",
        "--record-size",
        "100",
    ];
    let report = bench_json(&args);
    check_report(&report, 100);
    assert_eq!(u64_field(&report, "inflight"), 4, "{report}");
    assert_eq!(u64_field(&report, "connections"), 3, "{report}");
    assert_eq!(u64_field(&report, "batch"), 3, "{report}");
    // 667 appends of 3 records, however many are in flight when the count is reached.
    assert_eq!(u64_field(&report, "records"), 2001, "{report}");
}

#[test]
fn duration_and_count_together_are_refused() {
    let run = ringlog(&[
        "bench",
        "--addr",
        "127.0.0.1:1",
        "--duration",
        "1s",
        "--count",
        "10",
    ]);
    assert!(!run.status.success(), "{}", run.status);
    assert!(
        run.stderr
            .contains("the argument '--duration <DURATION>' cannot be used with '--count <N>'"),
        "stderr:\n{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "stdout:\n{}", run.stdout);
}

#[test]
fn peer_delay_puts_a_proxy_on_every_peer_link() {
    let args = [
        "--count",
        "300",
        "--warmup",
        "200ms",
        "--clients",
        "2",
        "--peer-delay",
        "2ms",
    ];
    let report = bench_json(&args);
    check_report(&report, 256);
    assert_eq!(u64_field(&report, "records"), 300, "{report}");
    // A commit needs the leader's message to reach a follower and the answer to
    // come back: at least two delayed trips, whatever the machine's speed.
    let p50 = u64_field(&report["latency_us"], "p50");
    assert!(p50 >= 4_000, "p50 {p50} µs with 2 ms each way: {report}");
}
