//! Bit flips: a log is written, then one bit at a time is flipped at many positions of
//! its files (segments and hard state) and the WAL reopened. Every flip must be
//! detected: recovery refuses to start (`Corrupt`), or reports what it cut or skipped
//! (torn tail, ignored damage, damaged hard-state slot). Whatever it returns is a
//! prefix of the original log with identical bytes, never a changed record.
//!
//! Sealed segments with a valid summary are not read at open: a flip in one of their
//! records is found by the read that reaches it instead, and a flip after their last
//! live record (padding, a superseded tail) goes unnoticed until a scan, as it holds
//! nothing the log needs. The runs with summaries removed check the scan as before;
//! a flip in a summary must fall back to a scan that recovers the whole log.

mod wal_support;

use ringlog::engine::{Entry, HardState};
use ringlog::wal::format::{decode_segment_header, verify_record};
use ringlog::wal::scan::scan_segment;
use ringlog::wal::sim::SimStorage;
use ringlog::wal::{DmaStorage, Preallocate, Storage, Wal, WalConfig, WalError};
use std::path::Path;
use wal_support::*;

/// Writes a log of `n` entries with flushes every few entries, a truncation and a
/// hard-state write; returns the entries and the hard state.
async fn build_log<S: Storage>(storage: S, config: &WalConfig, n: u64) -> (Vec<Entry>, HardState) {
    let (wal, _) = Wal::open(storage, config.clone()).await.expect("open");
    let mut entries = Vec::new();
    let mut op = 0;
    let mut bump = 0;
    for i in 1..=n {
        let len = [0, 10, 100, 333, 1200][(i % 5) as usize];
        let e = entry(i, 1 + i / 40 + bump, len);
        op += 1;
        wal.append(op, std::slice::from_ref(&e)).expect("append");
        entries.push(e);
        if i % 3 == 0 {
            wal.flush().await.expect("flush");
        }
        if i == n / 2 {
            // A truncation leaves a superseded tail in an older segment.
            op += 1;
            wal.truncate(op, i - 2).expect("truncate");
            entries.truncate((i - 3) as usize);
            bump = 1;
            for j in i - 2..=i {
                let e = entry(j, 1 + i / 40 + bump, 50);
                op += 1;
                wal.append(op, std::slice::from_ref(&e)).expect("append");
                entries.push(e);
            }
        }
    }
    let hs = HardState {
        term: 7,
        voted_for: Some(1),
    };
    op += 1;
    wal.persist_hard_state(op, hs).expect("hard state");
    wal.flush().await.expect("flush");
    (entries, hs)
}

enum Outcome {
    Refused,
    Reported,
    Silent,
}

/// Reopens `storage` and classifies the result, checking that nothing read differs
/// from the original.
async fn reopen<S: Storage>(
    storage: S,
    config: &WalConfig,
    original: &[Entry],
    hs: HardState,
    what: &str,
) -> Outcome {
    let (wal, rec) = match Wal::open(storage, config.clone()).await {
        Err(WalError::Corrupt { .. }) => return Outcome::Refused,
        Err(e) => panic!("{what}: unexpected error {e}"),
        Ok(opened) => opened,
    };
    let mut next = rec.log_start;
    let end = rec.last_index + 1;
    while next < end {
        match wal.read(next, end, 1 << 20).await {
            Ok(batch) => {
                for e in &batch {
                    let want = &original[(e.index - 1) as usize];
                    assert_eq!(e, want, "{what}: entry {} changed", e.index);
                }
                next += batch.len() as u64;
            }
            // Read-time verification caught it.
            Err(WalError::Corrupt { .. }) => return Outcome::Refused,
            Err(e) => panic!("{what}: unexpected read error {e}"),
        }
    }
    assert!(rec.last_index <= original.len() as u64, "{what}");
    if !rec.reports.is_empty() {
        return Outcome::Reported;
    }
    assert_eq!(rec.hard_state, hs, "{what}: hard state changed silently");
    assert_eq!(
        rec.last_index,
        original.len() as u64,
        "{what}: entries lost silently"
    );
    Outcome::Silent
}

/// The bytes of `data` that were ever written: up to the last non-zero byte, rounded
/// up to the block (padding and skipped block ends included).
fn used_len(data: &[u8], block: usize) -> usize {
    data.iter()
        .rposition(|b| *b != 0)
        .map_or(0, |p| (p + 1).next_multiple_of(block))
}

fn config() -> WalConfig {
    WalConfig {
        segment_size_bytes: 12 << 10,
        record_size_bytes_max: 2 << 10,
        ..small_config()
    }
}

/// Where the live records of each sealed segment end (by name): a flip at or after
/// that offset holds no live entry. The newest segment is always scanned, so it has
/// no entry here.
fn live_ends(
    files: &[(String, Vec<u8>)],
    block: usize,
    payload_max: usize,
) -> Vec<(String, usize)> {
    let mut segments: Vec<(u64, &String, &Vec<u8>)> = files
        .iter()
        .filter(|(n, _)| n.ends_with(".wal"))
        .map(|(n, d)| (n[21..31].parse().expect("seq"), n, d))
        .collect();
    segments.sort();
    let mut ends = Vec::new();
    for pair in segments.windows(2) {
        let ((_, name, data), (_, _, next)) = (pair[0], pair[1]);
        let info = decode_segment_header(data, block, data.len() as u64).expect("header");
        let next_first = decode_segment_header(next, block, next.len() as u64)
            .expect("header")
            .first_index;
        let scan = scan_segment(data, &info, block, payload_max);
        let live = (next_first - info.first_index) as usize;
        let end = match live.checked_sub(1).map(|k| scan.entries[k].0 as usize) {
            Some(at) => {
                let meta =
                    verify_record(&data[at..], info.segment_seq, payload_max).expect("record");
                at + 48 + meta.payload_len
            }
            None => block,
        };
        ends.push((name.clone(), end));
    }
    ends
}

#[test]
fn bit_flips_in_simulated_files_are_all_detected() {
    flip_simulated_files(false);
}

#[test]
fn bit_flips_in_simulated_files_with_summaries_are_all_detected_or_harmless() {
    flip_simulated_files(true);
}

fn flip_simulated_files(keep_summaries: bool) {
    run(move || async move {
        let config = config();
        let disk = SimStorage::new(512);
        let (original, hs) = build_log(disk.clone(), &config, 120).await;
        let summaries: Vec<String> = disk
            .names()
            .into_iter()
            .filter(|n| n.ends_with(".sum"))
            .collect();
        assert!(summaries.len() >= 3, "expected summaries: {summaries:?}");
        let files: Vec<(String, usize)> = disk
            .names()
            .into_iter()
            .filter(|n| {
                n.ends_with(".wal") || n == "hardstate" || (keep_summaries && n.ends_with(".sum"))
            })
            .map(|n| {
                let len = used_len(&disk.file_contents(&n).expect("exists"), 512);
                (n, len)
            })
            .collect();
        let contents: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|(n, _)| (n.clone(), disk.file_contents(n).expect("exists")))
            .collect();
        let ends = live_ends(&contents, 512, config.record_size_bytes_max);
        assert!(files.len() >= 4, "expected several segments: {files:?}");
        let total_bits: usize = files.iter().map(|(_, len)| len * 8).sum();
        let flips_wanted = 12_000;
        let stride = (total_bits / flips_wanted).max(1);
        let (mut refused, mut reported, mut harmless, mut flips) = (0, 0, 0, 0);
        let mut bit = 0;
        while bit < total_bits {
            // Find the file and byte of global bit `bit`.
            let (mut rest, mut k) = (bit, 0);
            while rest >= files[k].1 * 8 {
                rest -= files[k].1 * 8;
                k += 1;
            }
            let name = &files[k].0;
            let image = disk.crash_image(disk.event_count(), &everything());
            if !keep_summaries {
                for summary in &summaries {
                    image.remove(summary).await.expect("remove summary");
                }
            }
            let mut data = image.file_contents(name).expect("exists");
            data[rest / 8] ^= 1 << (rest % 8);
            image.set_file_contents(name, data);
            let what = format!("flip of bit {} in {name}", rest);
            let outcome = reopen(image, &config, &original, hs, &what).await;
            let after_live =
                keep_summaries && ends.iter().any(|(n, end)| n == name && rest / 8 >= *end);
            match outcome {
                Outcome::Refused if name.ends_with(".sum") => {
                    panic!("{what}: a damaged summary must fall back to a scan")
                }
                Outcome::Refused => refused += 1,
                Outcome::Reported if name.ends_with(".sum") => {
                    panic!("{what}: a damaged summary must fall back to a clean scan")
                }
                Outcome::Reported => reported += 1,
                Outcome::Silent if name.ends_with(".sum") || after_live => harmless += 1,
                Outcome::Silent => panic!("{what}: not detected"),
            }
            flips += 1;
            bit += stride;
        }
        assert!(flips >= 10_000, "only {flips} flips");
        eprintln!(
            "{flips} bit flips over {total_bits} bits: {refused} refused, {reported} reported, \
             {harmless} in summaries or after the live records of a summarized segment"
        );
    });
}

fn everything() -> ringlog::wal::sim::CrashChoice {
    ringlog::wal::sim::CrashChoice {
        dir_ops: ringlog::wal::sim::DirOps::All,
        blocks: vec![ringlog::wal::sim::BlockFate::Written; 1 << 16],
    }
}

fn flip_file_bit(path: &Path, bit: usize) {
    let mut data = std::fs::read(path).expect("read");
    data[bit / 8] ^= 1 << (bit % 8);
    std::fs::write(path, data).expect("write");
}

fn remove_summaries(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|x| x == "sum") {
            std::fs::remove_file(path).expect("remove summary");
        }
    }
}

#[test]
fn bit_flips_in_real_segment_files_are_detected() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = WalConfig {
            segment_size_bytes: 64 << 10,
            record_size_bytes_max: 4 << 10,
            flush_bytes_max: 16 << 10,
            buffered_bytes_max: 256 << 10,
            preallocate: Preallocate::Fallocate,
            ..WalConfig::default()
        };
        let path = dir.path().join("wal");
        let (original, hs) = build_log(DmaStorage::new(&path).expect("dir"), &config, 150).await;
        let mut segments: Vec<_> = std::fs::read_dir(&path)
            .expect("list")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        segments.sort();
        assert!(segments.len() >= 2);
        let mut flips = 0;
        for seg in &segments {
            let used = used_len(&std::fs::read(seg).expect("read"), 4096);
            let step = (used * 8 / 150).max(1);
            for bit in (0..used * 8).step_by(step) {
                flip_file_bit(seg, bit);
                let what = format!("flip of bit {bit} in {}", seg.display());
                // Without summaries every segment is scanned (the simulated runs
                // cover summaries); recovery writes them again each time.
                remove_summaries(&path);
                let storage = DmaStorage::new(&path).expect("dir");
                if let Outcome::Silent = reopen(storage, &config, &original, hs, &what).await {
                    panic!("{what}: not detected");
                }
                flip_file_bit(seg, bit);
                flips += 1;
            }
        }
        eprintln!("{flips} bit flips in real segment files, all detected");
    });
}

#[test]
fn corruption_refuses_to_start_and_the_truncate_option_cuts_there() {
    run(|| async {
        let config = config();
        let disk = SimStorage::new(512);
        let (original, _) = build_log(disk.clone(), &config, 120).await;
        let first = disk
            .names()
            .into_iter()
            .find(|n| n.ends_with(".wal"))
            .expect("a segment");
        let mut data = disk.file_contents(&first).expect("exists");
        data[512 + 700] ^= 0x10;
        disk.set_file_contents(&first, data);
        // Trusted through its summary, the segment is not read at open: the read
        // that reaches the damaged record finds it.
        {
            let (wal, rec) = Wal::open(disk.clone(), config.clone()).await.expect("open");
            assert_eq!(rec.last_index, original.len() as u64);
            match wal
                .read(rec.log_start, rec.last_index + 1, usize::MAX)
                .await
            {
                Err(WalError::Corrupt { file, .. }) => assert_eq!(file, first),
                other => panic!("a damaged record must fail its read: {other:?}"),
            }
        }
        // Without the summary the segment is scanned at open, which refuses to start.
        let summary = first.replace(".wal", ".sum");
        disk.remove(&summary).await.expect("remove summary");

        let index = match Wal::open(disk.clone(), config.clone()).await {
            Err(WalError::Corrupt {
                file,
                offset,
                index,
                ..
            }) => {
                assert_eq!(file, first);
                assert!((512..=512 + 700).contains(&offset), "offset {offset}");
                index
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a damaged record before valid ones must stop the start"),
        };
        // The error tells how to proceed; with the option, the log ends before the
        // damage, and the member can append (what it re-fetches from peers) again.
        let lenient = WalConfig {
            truncate_corrupt_tail: true,
            ..config.clone()
        };
        let (wal, rec) = Wal::open(disk.clone(), lenient)
            .await
            .expect("open with the option");
        assert_eq!(rec.last_index, index - 1);
        assert!(matches!(
            rec.reports.as_slice(),
            [ringlog::wal::RecoveryReport::TruncatedCorruption { .. }]
        ));
        assert_eq!(read_all(&wal).await, original[..(index - 1) as usize]);
        let e = original[(index - 1) as usize].clone();
        wal.append(1, std::slice::from_ref(&e)).expect("append");
        wal.flush().await.expect("flush");
        drop(wal);
        let (wal, rec) = Wal::open(disk, config)
            .await
            .expect("normal open afterwards");
        assert_eq!(rec.last_index, index);
        assert_eq!(read_all(&wal).await, original[..index as usize]);
    });
}
