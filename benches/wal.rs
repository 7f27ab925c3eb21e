//! WAL throughput on the real disk, next to the raw device at equal write sizes.
//!
//! For 128-byte and 4 KiB records at several batch sizes (records per flush), the WAL
//! appends a batch and flushes it, with up to two flushes in flight (the next batch
//! is appended while the previous flush runs), configured as the runtime does by
//! default: O_DSYNC segment writes (`write_through`) and `Preallocate::Auto`. The raw
//! run writes the same number of bytes per round with one O_DIRECT | O_DSYNC write
//! through glommio, no WAL logic, into a file zero-filled beforehand (the fastest
//! durable write the device offers). `WAL/raw` is WAL flushes/s over raw rounds/s;
//! `raw2` is the raw loop with two rounds in flight (unordered completions, which the
//! WAL may not report), a stricter reference. `fsync WAL/raw` compares the other
//! mechanism: the WAL writing then fdatasyncing, over raw write + fdatasync rounds.
//! A second table compares the ways of preparing segments.
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

    fn round_rate(&self) -> f64 {
        self.per_sec(self.rounds)
    }
}

/// How a run makes its writes durable.
#[derive(Clone, Copy)]
enum Sync {
    /// O_DSYNC writes.
    WriteThrough,
    /// Write, then fdatasync.
    Fdatasync,
}

async fn run_wal(
    dir: &Path,
    (sync, mode): (Sync, Preallocate),
    record_bytes: usize,
    batch: usize,
    secs: f64,
) -> Run {
    let _ = std::fs::remove_dir_all(dir);
    let config = WalConfig {
        preallocate: mode,
        ..WalConfig::default()
    };
    let storage = DmaStorage::new(dir)
        .expect("bench dir")
        .write_through(matches!(sync, Sync::WriteThrough));
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

async fn raw_file(path: &Path, zero_fill: bool, sync: Sync) -> DmaFile {
    let _ = std::fs::remove_file(path);
    let dsync = match sync {
        Sync::WriteThrough => libc::O_DSYNC,
        Sync::Fdatasync => 0,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .custom_flags(dsync)
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
    (sync, zero_fill): (Sync, bool),
    bytes_per_round: u64,
    secs: f64,
    depth: usize,
) -> Run {
    let file = Rc::new(raw_file(path, zero_fill, sync).await);
    let size = (bytes_per_round as usize).next_multiple_of(BLOCK_BYTES);
    let mut pos = 0u64;
    let start = Instant::now();
    let mut rounds = 0;
    // A round is one durable write (O_DSYNC, or a write then an fdatasync); up to
    // `depth` rounds overlap (1: the plain loop; FLUSHES_IN_FLIGHT: the WAL run's
    // pipelining, without the WAL's ordering of completions).
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
            if matches!(sync, Sync::Fdatasync) {
                file2.fdatasync().await.expect("sync");
            }
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
                "WAL (group commit, O_DSYNC writes, auto preallocation) vs raw O_DIRECT | O_DSYNC \
                 writes at equal write size, {FLUSHES_IN_FLIGHT} WAL flushes in flight; median of \
                 {REPEATS} runs of {secs} s; dir {}",
                dir.display()
            );
            println!(
                "{:>7} {:>6} {:>12} {:>9} {:>10} {:>11} {:>11} {:>9} {:>11} {:>9} {:>14}",
                "record", "batch", "records/s", "MB/s", "flushes/s", "write B", "raw rnd/s", "WAL/raw", "raw2 rnd/s", "WAL/raw2", "fsync WAL/raw"
            );
            let median = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[REPEATS / 2]
            };
            let default = (Sync::WriteThrough, Preallocate::Auto);
            for (record, batches) in [(128usize, [1usize, 16, 256, 4096]), (4096, [1, 16, 64, 256])] {
                for batch in batches {
                    let mut wals = Vec::new();
                    let (mut raws, mut raws_deep) = (Vec::new(), Vec::new());
                    let (mut fsync_wals, mut fsync_raws) = (Vec::new(), Vec::new());
                    for _ in 0..REPEATS {
                        let wal = run_wal(&dir.join("wal"), default, record, batch, secs).await;
                        let size = wal.bytes_per_round;
                        let raw_path = dir.join("raw");
                        let raw_at = |sync, depth| run_raw(&raw_path, (sync, true), size, secs, depth);
                        raws.push(raw_at(Sync::WriteThrough, 1).await.round_rate());
                        raws_deep.push(raw_at(Sync::WriteThrough, FLUSHES_IN_FLIGHT).await.round_rate());
                        fsync_raws.push(raw_at(Sync::Fdatasync, 1).await.round_rate());
                        let fsync_mode = (Sync::Fdatasync, Preallocate::Auto);
                        fsync_wals.push(run_wal(&dir.join("wal"), fsync_mode, record, batch, secs).await.round_rate());
                        wals.push(wal);
                    }
                    wals.sort_by(|a, b| a.round_rate().total_cmp(&b.round_rate()));
                    let wal = &wals[REPEATS / 2];
                    let (raw, raw_deep) = (median(raws), median(raws_deep));
                    println!(
                        "{:>7} {:>6} {:>12.0} {:>9.1} {:>10.0} {:>11} {:>11.0} {:>9.2} {:>11.0} {:>9.2} {:>14.2}",
                        record,
                        batch,
                        wal.per_sec(wal.records),
                        wal.per_sec(wal.payload_bytes) / 1e6,
                        wal.round_rate(),
                        wal.bytes_per_round,
                        raw,
                        wal.round_rate() / raw,
                        raw_deep,
                        wal.round_rate() / raw_deep,
                        median(fsync_wals) / median(fsync_raws),
                    );
                }
            }
            println!();
            println!("Segment preparation (O_DSYNC writes, 128-byte records, batch 1), next to raw 4 KiB O_DSYNC writes");
            println!("{:>22} {:>10} {:>16}", "mode", "WAL flushes/s", "raw writes/s");
            for (name, mode, zero) in [
                ("zero-filled ahead", Preallocate::ZeroFill, true),
                ("fallocate only", Preallocate::Fallocate, false),
                ("auto", Preallocate::Auto, true),
            ] {
                let (mut wals, mut raws) = (Vec::new(), Vec::new());
                for _ in 0..REPEATS {
                    let wal = run_wal(&dir.join("wal"), (Sync::WriteThrough, mode), 128, 1, secs).await;
                    wals.push(wal.round_rate());
                    let raw = run_raw(&dir.join("raw"), (Sync::WriteThrough, zero), 4096, secs, 1).await;
                    raws.push(raw.round_rate());
                }
                println!("{:>22} {:>10.0} {:>16.0}", name, median(wals), median(raws));
            }
        })
        .expect("executor")
        .join()
        .expect("bench");
}
