//! Round trips through the WAL: append, flush, read, reopen, truncate, reset, purge
//! and hard state, on the simulated disk and on real files through glommio.

mod wal_support;

use ringlog::engine::HardState;
use ringlog::wal::recovery::SPARE_FILE_NAME;
use ringlog::wal::sim::{SimEvent, SimStorage};
use ringlog::wal::{DmaStorage, Preallocate, Storage, Wal, WalConfig};
use wal_support::*;

/// Drives one scripted workload against `storage`, reopening it several times, and
/// checks every read against the model.
async fn workload<S: Storage, F: Fn() -> S>(make: F, config: WalConfig, sizes: &[usize]) {
    let mut model = ModelLog::default();
    let mut op = 0u64;
    let (wal, rec) = Wal::open(make(), config.clone()).await.expect("open");
    assert_eq!(rec.last_index, 0);
    assert!(rec.reports.is_empty());
    let mut term = 1;
    for (i, len) in sizes.iter().enumerate() {
        let e = entry(model.last_index() + 1, term, *len);
        op += 1;
        wal.append(op, std::slice::from_ref(&e)).expect("append");
        model.entries.push(e);
        if i % 7 == 6 {
            let durable = wal.flush().await.expect("flush");
            assert_eq!(durable.op, op);
            assert_eq!(durable.last_index, model.last_index());
        }
    }
    op += 1;
    let hs = HardState {
        term: 3,
        voted_for: Some(2),
    };
    wal.persist_hard_state(op, hs).expect("hard state");
    model.hard_state = hs;
    wal.flush().await.expect("flush");
    assert_eq!(read_all(&wal).await, model.entries);
    drop(wal);

    // Reopen: everything is there, and reads now come from disk.
    let (wal, rec) = Wal::open(make(), config.clone()).await.expect("reopen");
    assert_eq!(rec.hard_state, hs);
    assert_eq!(rec.last_index, model.last_index());
    assert_eq!(rec.last_term, model.last_term());
    assert!(rec.reports.is_empty(), "{:?}", rec.reports);
    assert_eq!(read_all(&wal).await, model.entries);

    // Truncate a suffix, append in a new term, reopen.
    let from = model.last_index() - model.entries.len() as u64 / 3;
    let mut op = 1;
    wal.truncate(op, from).expect("truncate");
    model.truncate(from);
    term = 4;
    for len in sizes.iter().take(20) {
        op += 1;
        let e = entry(model.last_index() + 1, term, *len);
        wal.append(op, std::slice::from_ref(&e)).expect("append");
        model.entries.push(e);
    }
    wal.flush().await.expect("flush");
    assert_eq!(read_all(&wal).await, model.entries);
    drop(wal);
    let (wal, rec) = Wal::open(make(), config.clone()).await.expect("reopen");
    assert_eq!(rec.last_index, model.last_index());
    assert_eq!(read_all(&wal).await, model.entries);

    // Purge a prefix: whole segments go, the start moves to a segment boundary.
    let before = model.start + model.entries.len() as u64 / 2;
    let start = wal.purge(1, before).expect("purge");
    assert!(start <= before);
    model.purge_to(start);
    wal.flush().await.expect("flush");
    drop(wal);
    let (wal, rec) = Wal::open(make(), config.clone()).await.expect("reopen");
    assert_eq!(rec.log_start, model.start);
    assert_eq!(rec.start_prev_term, model.prev_term);
    assert_eq!(read_all(&wal).await, model.entries);

    // Reset: the log restarts empty far ahead.
    wal.reset(1, 1000, 9).expect("reset");
    model.reset(1000, 9);
    for i in 0..5 {
        let e = entry(1000 + i, 9, 10);
        wal.append(2 + i, std::slice::from_ref(&e)).expect("append");
        model.entries.push(e);
    }
    wal.flush().await.expect("flush");
    drop(wal);
    let (wal, rec) = Wal::open(make(), config).await.expect("reopen");
    assert_eq!((rec.log_start, rec.start_prev_term), (1000, 9));
    assert_eq!(rec.hard_state, hs);
    assert_eq!(read_all(&wal).await, model.entries);
}

fn mixed_sizes(n: usize, max: usize) -> Vec<usize> {
    (0..n).map(|i| (i * 397 + i * i * 13) % (max + 1)).collect()
}

#[test]
fn simulated_disk_round_trip() {
    run(|| async {
        let disk = SimStorage::new(512);
        workload(|| disk.clone(), small_config(), &mixed_sizes(300, 2000)).await;
        let disk = SimStorage::new(512);
        workload(|| disk.clone(), small_config(), &[0; 200]).await;
    });
}

#[test]
fn real_files_round_trip_tiny_and_large_records() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = WalConfig {
            segment_size_bytes: 1 << 20,
            record_size_bytes_max: 200 << 10,
            flush_bytes_max: 64 << 10,
            buffered_bytes_max: 1 << 20,
            cache_bytes_max: 16 << 10,
            ..WalConfig::default()
        };
        let path = dir.path().join("tiny");
        workload(
            || DmaStorage::new(&path).expect("dir"),
            config.clone(),
            &vec![1; 400],
        )
        .await;
        let path = dir.path().join("large");
        let sizes: Vec<usize> = (0..60)
            .map(|i| [0, 5, 4096, 150_000, 70_001][i % 5])
            .collect();
        workload(
            || DmaStorage::new(&path).expect("dir"),
            config.clone(),
            &sizes,
        )
        .await;
        // The same with O_DSYNC files, where the WAL does not sync the segments.
        let path = dir.path().join("write-through");
        let storage = || DmaStorage::new(&path).expect("dir").write_through(true);
        workload(storage, config, &sizes).await;
    });
}

/// For every spare segment the recording shows, in order: whether it was zero-filled
/// (written before it was renamed into a segment) rather than only allocated.
fn spares_zero_filled(disk: &SimStorage) -> Vec<bool> {
    let spares = spares_zero_writes(disk);
    spares.iter().map(|writes| !writes.is_empty()).collect()
}

/// For every spare segment the recording shows, in order: the sizes of the writes
/// of zeros that prepared it (none when it was only allocated). A record's write is
/// never all zeros: its header carries a checksum.
fn spares_zero_writes(disk: &SimStorage) -> Vec<Vec<usize>> {
    let mut spares: Vec<(usize, Vec<usize>)> = Vec::new();
    for event in disk.events() {
        match event {
            SimEvent::Create { name, ino } if name == SPARE_FILE_NAME => {
                spares.push((ino, Vec::new()))
            }
            SimEvent::Write { ino, data, .. } if data.iter().all(|b| *b == 0) => {
                if let Some(spare) = spares.iter_mut().find(|(i, _)| *i == ino) {
                    spare.1.push(data.len());
                }
            }
            _ => {}
        }
    }
    spares.into_iter().map(|(_, writes)| writes).collect()
}

/// Appends `count` flushes of `per_flush` entries of `len` bytes each.
async fn fill(wal: &Wal<SimStorage>, count: u64, per_flush: u64, len: usize) {
    let mut op = 0;
    for _ in 0..count {
        let first = wal.last_index() + 1;
        let entries: Vec<_> = (0..per_flush).map(|i| entry(first + i, 1, len)).collect();
        op += 1;
        wal.append(op, &entries).expect("append");
        wal.flush().await.expect("flush");
    }
}

#[test]
fn auto_preallocation_zero_fills_after_small_writes_and_not_after_large_ones() {
    run(|| async {
        let config = WalConfig {
            preallocate: Preallocate::Auto,
            zero_fill_write_bytes_max: 1536,
            ..small_config()
        };
        // One small record per flush: single-block writes, so every spare is zeroed.
        let disk = SimStorage::new(512);
        let (wal, _) = Wal::open(disk.clone(), config.clone()).await.expect("open");
        fill(&wal, 120, 1, 100).await;
        let zeroed = spares_zero_filled(&disk);
        assert!(zeroed.len() >= 3, "too few segments: {zeroed:?}");
        assert!(zeroed.iter().all(|z| *z), "{zeroed:?}");
        // Four large records per flush: 2 KiB writes (flush_bytes_max). The first
        // spare is prepared before anything is written, so it is zeroed; the ones
        // after a segment of large writes are only allocated.
        let disk = SimStorage::new(512);
        let (wal, _) = Wal::open(disk.clone(), config).await.expect("open");
        fill(&wal, 30, 4, 1000).await;
        let zeroed = spares_zero_filled(&disk);
        assert!(zeroed.len() >= 3, "too few segments: {zeroed:?}");
        assert!(zeroed[0], "{zeroed:?}");
        assert!(zeroed[2..].iter().all(|z| !*z), "{zeroed:?}");
    });
}

#[test]
fn zero_filling_writes_grow_with_the_logs_writes() {
    const SEGMENT_BYTES: u64 = 1 << 20;
    let config = WalConfig {
        segment_size_bytes: SEGMENT_BYTES,
        record_size_bytes_max: 128 << 10,
        flush_bytes_max: 1 << 20,
        buffered_bytes_max: 4 << 20,
        preallocate: Preallocate::Auto,
        ..small_config()
    };
    // (record bytes, one per flush; flushes; the zero-filling write expected after
    // a segment of such writes: four of them rounded up to a power of two, at least
    // 128 KiB and at most 512 KiB).
    let cases = [
        (8_000, 500, 128 << 10),
        (40_000, 100, 256 << 10),
        (100_000, 40, 512 << 10),
    ];
    for (len, flushes, chunk_bytes) in cases {
        let config = config.clone();
        let spares = run(move || async move {
            let disk = SimStorage::new(512);
            let (wal, _) = Wal::open(disk.clone(), config).await.expect("open");
            fill(&wal, flushes, 1, len).await;
            spares_zero_writes(&disk)
        });
        assert!(spares.len() >= 4, "{len}-byte records: too few segments");
        // The first two spares are prepared before anything is written (the first
        // segment's, and the next one as soon as it exists): the least size.
        let least = vec![128 << 10; SEGMENT_BYTES as usize / (128 << 10)];
        assert_eq!(spares[..2], [least.clone(), least], "{len}-byte records");
        // The ones after: by the writes of the segment just filled. The last may
        // have been still in preparation when the run ended.
        let whole = vec![chunk_bytes; SEGMENT_BYTES as usize / chunk_bytes];
        for (i, writes) in spares[2..spares.len() - 1].iter().enumerate() {
            assert_eq!(*writes, whole, "{len}-byte records: spare {}", i + 2);
        }
    }
}
