//! WAL throughput on the real disk, next to the raw device at equal write sizes.
//!
//! For 128-byte and 4 KiB records at several batch sizes (records per flush), the WAL
//! appends a batch and flushes it (one write per `flush_bytes_max` and one fdatasync),
//! with up to two flushes in flight (the next batch is appended while the previous
//! flush runs). The raw run writes the same number of bytes per round with one
//! O_DIRECT write + fdatasync through glommio, no WAL logic, into a file zero-filled
//! beforehand. `WAL/raw` is WAL flushes/s over raw rounds/s; `falloc/raw` the same
//! with fallocate-only WAL segments; `raw2` is the raw loop with two rounds in flight
//! (unordered syncs, which the WAL may not use), a stricter reference.
//! A second table compares segments zero-filled ahead with fallocate-only ones.
//!
//! Run: `cargo bench --bench wal` (directory: `WAL_BENCH_DIR`, default
//! `target/wal-bench`, on the disk to measure; seconds per case: `WAL_BENCH_SECONDS`).

use glommio::io::{DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement, spawn_local};
use ringlog::engine::{Entry, EntryKind};
use ringlog::wal::{DmaStorage, Preallocate, Wal, WalConfig};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Flushes the WAL run keeps in flight (the default `flushes_in_flight_max`).
const FLUSHES_IN_FLIGHT: usize = 2;
/// Repetitions of each case; the median is printed (the disk is shared and noisy).
const REPEATS: usize = 3;
/// Size of the raw comparison file (rounds wrap around inside it).
const RAW_FILE_BYTES: u64 = 256 << 20;
const BLOCK_BYTES: usize = 4096;

struct Run {
    rounds: u64,
    records: u64,
    payload_bytes: u64,
    bytes_per_round: u64,
    elapsed: Duration,
}

impl Run {
    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64()
    }
}

async fn run_wal(
    dir: &Path,
    mode: Preallocate,
    record_bytes: usize,
    batch: usize,
    secs: f64,
) -> Run {
    let _ = std::fs::remove_dir_all(dir);
    let config = WalConfig {
        preallocate: mode,
        ..WalConfig::default()
    };
    let storage = DmaStorage::new(dir).expect("bench dir");
    let (wal, _) = Wal::open(storage, config).await.expect("open");
    let payload = bytes::Bytes::from(vec![0x5au8; record_bytes]);
    let (mut index, mut op) = (1u64, 0u64);
    let append_batch = |index: &mut u64, op: &mut u64| {
        let entries: Vec<Entry> = (0..batch as u64)
            .map(|i| Entry {
                term: 1,
                index: *index + i,
                kind: EntryKind::Record,
                payload: payload.clone(),
            })
            .collect();
        *op += 1;
        wal.append(*op, &entries).expect("append");
        *index += batch as u64;
    };
    // Warm up: the first segment is created and the spare prepared.
    for _ in 0..3 {
        append_batch(&mut index, &mut op);
        wal.flush().await.expect("flush");
    }
    let before = wal.stats();
    let start = Instant::now();
    let mut rounds = 0;
    // Group commit as the runtime drives it: the next batch is appended while the
    // previous flush is in flight, with up to FLUSHES_IN_FLIGHT flushes at once.
    let mut in_flight = VecDeque::new();
    while start.elapsed().as_secs_f64() < secs {
        append_batch(&mut index, &mut op);
        let wal = wal.clone();
        in_flight.push_back(spawn_local(
            async move { wal.flush().await.expect("flush") },
        ));
        if in_flight.len() >= FLUSHES_IN_FLIGHT {
            in_flight.pop_front().expect("not empty").await;
        }
        rounds += 1;
    }
    while let Some(flush) = in_flight.pop_front() {
        flush.await;
    }
    let elapsed = start.elapsed();
    let stats = wal.stats();
    drop(wal);
    let _ = std::fs::remove_dir_all(dir);
    Run {
        rounds,
        records: rounds * batch as u64,
        payload_bytes: rounds * (batch * record_bytes) as u64,
        bytes_per_round: (stats.bytes_written - before.bytes_written) / rounds.max(1),
        elapsed,
    }
}

async fn raw_file(path: &Path, zero_fill: bool) -> DmaFile {
    let _ = std::fs::remove_file(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(path)
        .await
        .expect("raw file");
    if zero_fill {
        let chunk = 1 << 20;
        let mut pos = 0;
        while pos < RAW_FILE_BYTES {
            let mut buf = file.alloc_dma_buffer(chunk);
            buf.as_bytes_mut().fill(0);
            file.write_at(buf, pos).await.expect("zero fill");
            pos += chunk as u64;
        }
    } else {
        file.pre_allocate(RAW_FILE_BYTES, false)
            .await
            .expect("fallocate");
    }
    file.fdatasync().await.expect("sync");
    file
}

async fn run_raw(
    path: &Path,
    zero_fill: bool,
    bytes_per_round: u64,
    secs: f64,
    depth: usize,
) -> Run {
    let file = Rc::new(raw_file(path, zero_fill).await);
    let size = (bytes_per_round as usize).next_multiple_of(BLOCK_BYTES);
    let mut pos = 0u64;
    let start = Instant::now();
    let mut rounds = 0;
    // A round is one write then one fdatasync; up to `depth` rounds overlap (1: the
    // plain write + fdatasync loop; FLUSHES_IN_FLIGHT: the WAL run's pipelining,
    // without the WAL's ordering of syncs).
    let mut in_flight = VecDeque::new();
    while start.elapsed().as_secs_f64() < secs {
        if pos + size as u64 > RAW_FILE_BYTES {
            pos = 0;
        }
        let mut buf = file.alloc_dma_buffer(size);
        buf.as_bytes_mut().fill(0x5a);
        let (file2, at) = (file.clone(), pos);
        in_flight.push_back(spawn_local(async move {
            file2.write_at(buf, at).await.expect("write");
            file2.fdatasync().await.expect("sync");
        }));
        if in_flight.len() >= depth {
            in_flight.pop_front().expect("not empty").await;
        }
        pos += size as u64;
        rounds += 1;
    }
    while let Some(round) = in_flight.pop_front() {
        round.await;
    }
    let elapsed = start.elapsed();
    let _ = std::fs::remove_file(path);
    Run {
        rounds,
        records: 0,
        payload_bytes: 0,
        bytes_per_round: size as u64,
        elapsed,
    }
}

fn main() {
    let dir: PathBuf = std::env::var("WAL_BENCH_DIR")
        .unwrap_or_else(|_| "target/wal-bench".into())
        .into();
    let secs: f64 = std::env::var("WAL_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.5);
    std::fs::create_dir_all(&dir).expect("bench dir");
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(2 << 20)
        .spawn(move || async move {
            println!(
                "WAL (group commit) vs raw O_DIRECT write + fdatasync at equal write size, both with \
                 {FLUSHES_IN_FLIGHT} in flight; median of {REPEATS} runs of {secs} s; dir {}",
                dir.display()
            );
            println!(
                "{:>7} {:>6} {:>12} {:>9} {:>10} {:>11} {:>11} {:>9} {:>12} {:>11} {:>9}",
                "record", "batch", "records/s", "MB/s", "flushes/s", "write B", "raw rnd/s", "WAL/raw", "falloc/raw", "raw2 rnd/s", "WAL/raw2"
            );
            for (record, batches) in [(128usize, [1usize, 16, 256, 4096]), (4096, [1, 16, 64, 256])] {
                for batch in batches {
                    let mut pairs = Vec::new();
                    let mut fallocated = Vec::new();
                    let mut raw_deep = Vec::new();
                    for _ in 0..REPEATS {
                        let wal = run_wal(&dir.join("wal"), Preallocate::ZeroFill, record, batch, secs).await;
                        let raw = run_raw(&dir.join("raw"), true, wal.bytes_per_round, secs, 1).await;
                        let deep = run_raw(&dir.join("raw"), true, wal.bytes_per_round, secs, FLUSHES_IN_FLIGHT).await;
                        raw_deep.push(deep.per_sec(deep.rounds));
                        pairs.push((wal, raw));
                        let wal = run_wal(&dir.join("wal"), Preallocate::Fallocate, record, batch, secs).await;
                        fallocated.push(wal.per_sec(wal.rounds));
                    }
                    fallocated.sort_by(f64::total_cmp);
                    raw_deep.sort_by(f64::total_cmp);
                    pairs.sort_by(|a, b| a.0.per_sec(a.0.rounds).total_cmp(&b.0.per_sec(b.0.rounds)));
                    let (wal, _) = &pairs[REPEATS / 2];
                    let mut raws: Vec<f64> = pairs.iter().map(|(_, r)| r.per_sec(r.rounds)).collect();
                    raws.sort_by(f64::total_cmp);
                    let raw_rate = raws[REPEATS / 2];
                    println!(
                        "{:>7} {:>6} {:>12.0} {:>9.1} {:>10.0} {:>11} {:>11.0} {:>9.2} {:>12.2} {:>11.0} {:>9.2}",
                        record,
                        batch,
                        wal.per_sec(wal.records),
                        wal.per_sec(wal.payload_bytes) / 1e6,
                        wal.per_sec(wal.rounds),
                        wal.bytes_per_round,
                        raw_rate,
                        wal.per_sec(wal.rounds) / raw_rate,
                        fallocated[REPEATS / 2] / raw_rate,
                        raw_deep[REPEATS / 2],
                        wal.per_sec(wal.rounds) / raw_deep[REPEATS / 2],
                    );
                }
            }
            println!();
            println!("Segment preparation: zero-filled ahead vs fallocate-only (128-byte records, batch 1)");
            println!("{:>22} {:>10} {:>16}", "mode", "WAL fsync/s", "raw 4 KiB fsync/s");
            for (name, mode, zero) in [
                ("zero-filled ahead", Preallocate::ZeroFill, true),
                ("fallocate only", Preallocate::Fallocate, false),
            ] {
                let (mut wals, mut raws) = (Vec::new(), Vec::new());
                for _ in 0..REPEATS {
                    let wal = run_wal(&dir.join("wal"), mode, 128, 1, secs).await;
                    wals.push(wal.per_sec(wal.rounds));
                    let raw = run_raw(&dir.join("raw"), zero, 4096, secs, 1).await;
                    raws.push(raw.per_sec(raw.rounds));
                }
                wals.sort_by(f64::total_cmp);
                raws.sort_by(f64::total_cmp);
                println!("{:>22} {:>10.0} {:>16.0}", name, wals[REPEATS / 2], raws[REPEATS / 2]);
            }
        })
        .expect("executor")
        .join()
        .expect("bench");
}
