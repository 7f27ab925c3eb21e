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
//!
//! `WAL_BENCH_CASE=lifecycle cargo bench --bench wal` measures the cost of a long
//! log instead: `Wal::open` with 1 GiB and with 10 GiB of 256-byte records retained
//! (summaries trusted, and 1 GiB with the summaries removed, which scans it all), the
//! index memory per GiB retained, and reads as the leader makes them to catch a
//! follower up (1 MiB per call from the log's start). Sizes: `WAL_BENCH_GIB`
//! (default "1,10"); it needs that much free disk and deletes it afterwards.

use glommio::io::{DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement, spawn_local};
use ringlog::engine::{Entry, EntryKind};
use ringlog::wal::{DmaStorage, Preallocate, RetentionPolicy, Wal, WalConfig};
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

/// Retention for a WAL run: keep at most this many segments' bytes, purging after
/// every flush, so that purged segments are recycled as the next ones.
const RETAINED_SEGMENTS: u64 = 3;

async fn run_wal(
    dir: &Path,
    (sync, mode): (Sync, Preallocate),
    record_bytes: usize,
    batch: usize,
    secs: f64,
) -> Run {
    run_wal_retaining(dir, (sync, mode), record_bytes, batch, secs, false).await
}

/// A WAL run; with `retain`, the log is first filled with twice
/// `RETAINED_SEGMENTS` segments under retention, so every segment of the measured
/// part is a recycled one.
async fn run_wal_retaining(
    dir: &Path,
    (sync, mode): (Sync, Preallocate),
    record_bytes: usize,
    batch: usize,
    secs: f64,
    retain: bool,
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
    let policy = RetentionPolicy {
        max_bytes: Some(RETAINED_SEGMENTS * WalConfig::default().segment_size_bytes),
        max_age_ms: None,
    };
    let purge = |op: &mut u64| {
        if let Some(before) = wal.retention_point(&policy, 0) {
            *op += 1;
            wal.purge(*op, before).expect("purge");
        }
    };
    // Warm up: the first segment is created and the spare prepared; with retention,
    // segments are purged and recycled until the spares are recycled ones.
    let warm_up_bytes = if retain {
        2 * RETAINED_SEGMENTS * WalConfig::default().segment_size_bytes
    } else {
        0
    };
    let mut warm_up = 0;
    while warm_up < 3 || wal.stats().bytes_written < warm_up_bytes {
        append_batch(&mut index, &mut op);
        wal.flush().await.expect("flush");
        if retain {
            purge(&mut op);
        }
        warm_up += 1;
    }
    let before = wal.stats();
    let start = Instant::now();
    let mut rounds = 0;
    // Group commit as the runtime drives it: the next batch is appended while the
    // previous flush is in flight, with up to FLUSHES_IN_FLIGHT flushes at once.
    let mut in_flight = VecDeque::new();
    while start.elapsed().as_secs_f64() < secs {
        append_batch(&mut index, &mut op);
        if retain {
            purge(&mut op);
        }
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

/// Fills a WAL in `dir` with `gib` GiB of 256-byte records (fsync off: the fill is
/// setup, not measured) and returns the entry count.
async fn fill(dir: &Path, gib: u64) -> u64 {
    let config = WalConfig {
        fsync_disabled: true,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(DmaStorage::new(dir).expect("dir"), config)
        .await
        .expect("open");
    let payload = bytes::Bytes::from(vec![0x5au8; 256]);
    let per_flush = 3_000u64;
    let records = (gib << 30) / (256 + 48);
    let (mut index, mut op) = (1u64, 0u64);
    while index <= records {
        let entries: Vec<Entry> = (index..index + per_flush)
            .map(|i| Entry {
                term: 1,
                index: i,
                kind: EntryKind::Record,
                payload: payload.clone(),
            })
            .collect();
        op += 1;
        wal.append(op, &entries).expect("append");
        wal.flush().await.expect("flush");
        index += per_flush;
    }
    index - 1
}

async fn lifecycle(dir: &Path) {
    let sizes: Vec<u64> = std::env::var("WAL_BENCH_GIB")
        .unwrap_or_else(|_| "1,10".into())
        .split(',')
        .map(|s| s.trim().parse().expect("GiB"))
        .collect();
    println!(
        "{:>4} {:>10} {:>9} {:>13} {:>15} {:>16} {:>14}",
        "GiB", "entries", "segments", "open ms", "index KiB", "index KiB/GiB", "catch-up MB/s"
    );
    for gib in sizes {
        let wal_dir = dir.join(format!("lifecycle-{gib}"));
        let _ = std::fs::remove_dir_all(&wal_dir);
        let entries = fill(&wal_dir, gib).await;
        let mut opens = Vec::new();
        let mut memory = 0;
        let mut segments = 0;
        for _ in 0..REPEATS {
            let start = Instant::now();
            let (wal, rec) = Wal::open(
                DmaStorage::new(&wal_dir).expect("dir"),
                WalConfig::default(),
            )
            .await
            .expect("open");
            opens.push(start.elapsed().as_secs_f64() * 1e3);
            assert_eq!(rec.last_index, entries);
            memory = wal.index_memory_bytes();
            segments = wal.disk_bytes() / WalConfig::default().segment_size_bytes;
        }
        opens.sort_by(f64::total_cmp);
        // Catch-up reads over the first GiB, 1 MiB per call as send_from_wal asks.
        let (wal, rec) = Wal::open(
            DmaStorage::new(&wal_dir).expect("dir"),
            WalConfig::default(),
        )
        .await
        .expect("open");
        let (mut next, mut bytes) = (rec.log_start, 0u64);
        let end = rec.last_index.min((1 << 30) / (256 + 48)) + 1;
        let start = Instant::now();
        while next < end {
            let batch = wal.read(next, end, 1 << 20).await.expect("read");
            next += batch.len() as u64;
            bytes += batch.iter().map(|e| e.payload.len() as u64).sum::<u64>();
        }
        let read_rate = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
        drop(wal);
        println!(
            "{:>4} {:>10} {:>9} {:>13.1} {:>15.1} {:>16.1} {:>14.0}",
            gib,
            entries,
            segments,
            opens[REPEATS / 2],
            memory as f64 / 1024.0,
            memory as f64 / 1024.0 / gib as f64,
            read_rate
        );
        if gib == 1 {
            // The same log with every summary removed: each segment is scanned.
            for entry in std::fs::read_dir(&wal_dir).expect("list") {
                let path = entry.expect("entry").path();
                if path.extension().is_some_and(|x| x == "sum") {
                    std::fs::remove_file(path).expect("remove summary");
                }
            }
            let start = Instant::now();
            let (wal, _) = Wal::open(
                DmaStorage::new(&wal_dir).expect("dir"),
                WalConfig::default(),
            )
            .await
            .expect("open");
            println!(
                "{:>4} open without summaries (scanning every segment, then writing them): {:.1} ms",
                gib,
                start.elapsed().as_secs_f64() * 1e3
            );
            drop(wal);
        }
        std::fs::remove_dir_all(&wal_dir).expect("remove bench data");
    }
}

/// WAL over raw at large writes, with fresh segments and with recycled ones, side
/// by side: for each write size the three runs alternate, `REPEATS` times.
async fn recycling(dir: &Path, secs: f64) {
    println!(
        "4 KiB records, O_DSYNC writes, auto preallocation; WAL/raw: WAL flushes/s over raw \
         O_DIRECT|O_DSYNC writes/s of equal size into a zero-filled file; median of {REPEATS}"
    );
    println!(
        "{:>6} {:>10} {:>13} {:>12} {:>16} {:>14} {:>11}",
        "batch",
        "write B",
        "raw writes/s",
        "fresh WAL/raw",
        "fresh MB/s",
        "recycled WAL/raw",
        "recycled MB/s"
    );
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[REPEATS / 2]
    };
    let mode = (Sync::WriteThrough, Preallocate::Auto);
    for batch in [176usize, 216, 252] {
        let (mut raws, mut fresh, mut recycled) = (Vec::new(), Vec::new(), Vec::new());
        let (mut fresh_mb, mut recycled_mb) = (Vec::new(), Vec::new());
        let mut size = 0;
        for _ in 0..REPEATS {
            let run = run_wal_retaining(&dir.join("wal"), mode, 4096, batch, secs, false).await;
            size = run.bytes_per_round;
            let raw = run_raw(&dir.join("raw"), (Sync::WriteThrough, true), size, secs, 1).await;
            let again = run_wal_retaining(&dir.join("wal"), mode, 4096, batch, secs, true).await;
            raws.push(raw.round_rate());
            fresh.push(run.round_rate() / raw.round_rate());
            fresh_mb.push(run.per_sec(run.payload_bytes) / 1e6);
            recycled.push(again.round_rate() / raw.round_rate());
            recycled_mb.push(again.per_sec(again.payload_bytes) / 1e6);
        }
        println!(
            "{:>6} {:>10} {:>13.0} {:>12.2} {:>16.0} {:>14.2} {:>11.0}",
            batch,
            size,
            median(raws),
            median(fresh),
            median(fresh_mb),
            median(recycled),
            median(recycled_mb)
        );
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
            if std::env::var("WAL_BENCH_CASE").is_ok_and(|c| c == "lifecycle") {
                lifecycle(&dir).await;
                return;
            }
            if std::env::var("WAL_BENCH_CASE").is_ok_and(|c| c == "recycle") {
                recycling(&dir, secs).await;
                return;
            }
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
