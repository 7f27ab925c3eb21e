//! Recycling: segments removed by retention become the next segments. Their
//! unwritten blocks hold stale records of the older segment, which recovery must
//! neither take for live entries nor report as a torn tail on every restart.

mod wal_support;

use ringlog::engine::{Entry, Index};
use ringlog::wal::format::decode_segment_header;
use ringlog::wal::sim::SimStorage;
use ringlog::wal::{RetentionPolicy, Wal, WalConfig};
use wal_support::*;

fn config() -> WalConfig {
    small_config()
}

/// Appends entries `from..from + n`, flushing every 4 and purging to keep at most
/// four segments' worth of log; returns the op number reached.
async fn append_with_retention(
    wal: &Wal<SimStorage>,
    entries: &mut Vec<Entry>,
    mut op: u64,
    n: u64,
) -> u64 {
    let policy = RetentionPolicy {
        max_bytes: Some(4 * config().segment_size_bytes),
        max_age_ms: None,
    };
    let from = entries.last().map_or(1, |e| e.index + 1);
    for i in from..from + n {
        let e = entry(i, 3, (i as usize * 53) % 900);
        op += 1;
        wal.append(op, std::slice::from_ref(&e)).expect("append");
        entries.push(e);
        if i % 4 == 0 {
            wal.flush().await.expect("flush");
            if let Some(before) = wal.retention_point(&policy, 0) {
                op += 1;
                wal.purge(op, before).expect("purge");
                wal.flush().await.expect("flush");
            }
        }
    }
    wal.flush().await.expect("flush");
    op
}

fn recycled_segments(disk: &SimStorage) -> usize {
    disk.names()
        .iter()
        .filter(|n| n.ends_with(".wal"))
        .filter(|n| {
            let data = disk.file_contents(n).expect("exists");
            decode_segment_header(&data, 512, data.len() as u64).is_some_and(|i| i.recycled)
        })
        .count()
}

#[test]
fn recycled_segments_recover_without_stale_entries_or_torn_tails() {
    run(|| async {
        let disk = SimStorage::new(512);
        let mut entries = Vec::new();
        let (wal, _) = Wal::open(disk.clone(), config()).await.expect("open");
        let mut op = append_with_retention(&wal, &mut entries, 0, 600).await;
        assert!(recycled_segments(&disk) >= 2, "no segment was recycled");
        // Restarts at many points of a recycled newest segment: each time the tail
        // after the last record is stale bytes, which are neither entries nor a tear.
        for round in 0..12 {
            drop(wal_after(&disk, &entries).await);
            let (wal, rec) = Wal::open(disk.clone(), config()).await.expect("reopen");
            assert!(rec.reports.is_empty(), "round {round}: {:?}", rec.reports);
            op = append_with_retention(&wal, &mut entries, op, 7 + round).await;
            drop(wal);
        }
        let wal = wal_after(&disk, &entries).await;
        assert!(wal.disk_bytes() <= 8 * config().segment_size_bytes);
    });
}

/// Opens the WAL and checks it holds exactly the retained tail of `entries`.
async fn wal_after(disk: &SimStorage, entries: &[Entry]) -> Wal<SimStorage> {
    let (wal, rec) = Wal::open(disk.clone(), config()).await.expect("open");
    assert!(rec.reports.is_empty(), "{:?}", rec.reports);
    assert_eq!(rec.last_index, entries.len() as Index);
    let start = (rec.log_start - 1) as usize;
    assert_eq!(read_all(&wal).await, entries[start..]);
    wal
}
