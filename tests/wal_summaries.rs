//! Segment summaries, the sparse index and the bounded cache of open segment files:
//! a log of many segments reads back whole through at most `open_segments_max` open
//! segment files; recovery trusts sealed segments through their summaries (trims and
//! retention times included) and falls back to a scan when one is damaged.

mod wal_support;

use ringlog::engine::{Entry, Index};
use ringlog::wal::format::decode_segment_header;
use ringlog::wal::sim::SimStorage;
use ringlog::wal::summary::decode_summary;
use ringlog::wal::{RetentionPolicy, Storage, Wal, WalConfig};
use wal_support::*;

/// Appends entries `1..=n` (every 7th a trim entry), flushing every 5; returns them.
async fn write_log(wal: &Wal<SimStorage>, n: u64) -> Vec<Entry> {
    let mut entries = Vec::new();
    for i in 1..=n {
        let e = if i % 7 == 0 {
            Entry::trim(i, 1 + i / 50, i / 2)
        } else {
            entry(i, 1 + i / 50, (i as usize * 37) % 700)
        };
        wal.append(i, std::slice::from_ref(&e)).expect("append");
        entries.push(e);
        if i % 5 == 0 {
            wal.flush().await.expect("flush");
        }
    }
    wal.flush().await.expect("flush");
    entries
}

fn segment_names(disk: &SimStorage) -> Vec<String> {
    disk.names()
        .into_iter()
        .filter(|n| n.ends_with(".wal"))
        .collect()
}

fn config() -> WalConfig {
    WalConfig {
        open_segments_max: 3,
        ..small_config()
    }
}

#[test]
fn many_segments_read_back_through_a_bounded_number_of_open_files() {
    run(|| async {
        let disk = SimStorage::new(512);
        let (wal, _) = Wal::open(disk.clone(), config()).await.expect("open");
        let entries = write_log(&wal, 1500).await;
        drop(wal);
        let segments = segment_names(&disk).len();
        assert!(segments >= 20, "only {segments} segments");
        let (wal, rec) = Wal::open(disk.clone(), config()).await.expect("reopen");
        assert_eq!(rec.last_index, 1500);
        // Forwards in one pass, then backwards in small reads: every segment is opened
        // again and again through the cache.
        assert_eq!(read_all(&wal).await, entries);
        let mut to = rec.last_index + 1;
        while to > 1 {
            let from = to.saturating_sub(3).max(1);
            let got = wal.read(from, to, usize::MAX).await.expect("read");
            assert_eq!(
                got[..],
                entries[(from - 1) as usize..(from - 1) as usize + got.len()]
            );
            to = from;
        }
        let (_, max_seen) = disk.open_segment_files();
        assert!(
            max_seen <= config().open_segments_max,
            "{max_seen} segment files open at once with {segments} segments"
        );
    });
}

#[test]
fn summaries_carry_trims_and_retention_times_across_restarts() {
    run(|| async {
        let disk = SimStorage::new(512);
        let (wal, _) = Wal::open(disk.clone(), config()).await.expect("open");
        wal.note_time_ms(1_000);
        let entries = write_log(&wal, 400).await;
        let summaries = disk.names().iter().filter(|n| n.ends_with(".sum")).count();
        assert_eq!(
            summaries,
            segment_names(&disk).len() - 1,
            "every sealed segment"
        );
        drop(wal);

        let (wal, rec) = Wal::open(disk.clone(), config()).await.expect("reopen");
        let trims: Vec<(Index, Index)> = entries
            .iter()
            .filter_map(|e| e.trim_before().map(|b| (e.index, b)))
            .collect();
        assert_eq!(rec.trims, trims);
        // The sealed segments were last written at 1,000 ms: after the restart they
        // are old at once (without durable times they would count from now).
        wal.note_time_ms(100_000);
        let policy = RetentionPolicy {
            max_bytes: None,
            max_age_ms: Some(50_000),
        };
        let newest_first = rec.last_index + 1 - {
            let names = segment_names(&disk);
            let newest = names.iter().max_by_key(|n| &n[21..31]).expect("a segment");
            rec.last_index + 1 - newest[..20].parse::<Index>().expect("index")
        };
        assert_eq!(wal.retention_point(&policy, 100_000), Some(newest_first));

        // A purge in the middle of a segment removes only the segments wholly below
        // it, their summaries with them; the trims left start at the new log start.
        let before = newest_first - 3;
        let start = wal.purge(401, before).expect("purge");
        assert!(start <= before);
        wal.flush().await.expect("flush");
        let files = disk.names();
        for name in files.iter().filter(|n| n.ends_with(".sum")) {
            assert!(
                files.contains(&name.replace(".sum", ".wal")),
                "{name} outlived its segment"
            );
        }
        drop(wal);
        let (wal, rec) = Wal::open(disk.clone(), config()).await.expect("reopen");
        assert_eq!(rec.log_start, start);
        let kept: Vec<_> = trims.iter().copied().filter(|(i, _)| *i >= start).collect();
        assert_eq!(rec.trims, kept);
        assert_eq!(read_all(&wal).await, entries[(start - 1) as usize..]);
        // disk_bytes counts the segments, their summaries and the spare.
        let on_disk: u64 = disk
            .names()
            .iter()
            .filter(|n| n.ends_with(".wal") || n.ends_with(".sum"))
            .map(|n| disk.file_contents(n).expect("exists").len() as u64)
            .sum();
        assert_eq!(wal.disk_bytes(), on_disk + config().segment_size_bytes);
    });
}

#[test]
fn a_damaged_summary_falls_back_to_a_scan_and_is_written_again() {
    run(|| async {
        let disk = SimStorage::new(512);
        let (wal, _) = Wal::open(disk.clone(), config()).await.expect("open");
        let entries = write_log(&wal, 300).await;
        drop(wal);
        let summary = disk
            .names()
            .into_iter()
            .find(|n| n.ends_with(".sum"))
            .expect("a summary");
        let segment = summary.replace(".sum", ".wal");
        let mut data = disk.file_contents(&summary).expect("exists");
        data[60] ^= 0x04;
        disk.set_file_contents(&summary, data);
        let header = disk.file_contents(&segment).expect("segment");
        let info = decode_segment_header(&header, 512, header.len() as u64).expect("header");
        assert!(
            decode_summary(&disk.file_contents(&summary).expect("exists"), &info, 512).is_none()
        );

        let (wal, rec) = Wal::open(disk.clone(), config()).await.expect("reopen");
        assert!(rec.reports.is_empty(), "{:?}", rec.reports);
        assert_eq!(read_all(&wal).await, entries);
        let rewritten = disk.file_contents(&summary).expect("written again");
        let restored = decode_summary(&rewritten, &info, 512).expect("valid again");
        assert_eq!(restored.info, info);
        // A summary that is gone altogether is the same case.
        drop(wal);
        disk.remove(&summary).await.expect("remove");
        let (wal, _) = Wal::open(disk.clone(), config()).await.expect("reopen");
        assert_eq!(read_all(&wal).await, entries);
        assert!(disk.file_contents(&summary).is_some());
    });
}

#[test]
fn reads_that_outgrow_their_first_guess_read_on() {
    run(|| async {
        // Tiny records first, then large ones: a read over the tiny ones needs far
        // more disk per payload byte than the segment's mean, so its first read
        // falls short and it must read on.
        let config = WalConfig {
            segment_size_bytes: 1 << 20,
            record_size_bytes_max: 64 << 10,
            flush_bytes_max: 64 << 10,
            buffered_bytes_max: 256 << 10,
            ..config()
        };
        let disk = SimStorage::new(512);
        let (wal, _) = Wal::open(disk.clone(), config.clone()).await.expect("open");
        let mut entries = Vec::new();
        for i in 1..=2020u64 {
            let e = entry(i, 1, if i <= 2000 { 16 } else { 30 << 10 });
            wal.append(i, std::slice::from_ref(&e)).expect("append");
            entries.push(e);
            if i % 50 == 0 || i > 2000 {
                wal.flush().await.expect("flush");
            }
        }
        wal.flush().await.expect("flush");
        drop(wal);
        let (wal, _) = Wal::open(disk, config).await.expect("reopen");
        for from in [1u64, 700, 1990] {
            let got = wal.read(from, 2021, 64 << 10).await.expect("read");
            let mut payload = 0;
            let want: Vec<Entry> = entries[(from - 1) as usize..]
                .iter()
                .take_while(|e| {
                    payload += e.payload.len();
                    payload <= 64 << 10
                })
                .cloned()
                .collect();
            assert_eq!(got, want, "read from {from}");
        }
    });
}
