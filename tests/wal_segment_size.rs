//! Segments keep the size they were created with: changing `segment_size_bytes`
//! affects new segments only, and recovery reads each segment to the size its header
//! records.

mod wal_support;

use ringlog::engine::Entry;
use ringlog::wal::sim::SimStorage;
use ringlog::wal::{DmaStorage, Preallocate, Storage, Wal, WalConfig, WalError};
use std::path::Path;
use wal_support::*;

const ENTRY_BYTES: usize = 8 << 10;

fn config(segment_size_bytes: u64) -> WalConfig {
    WalConfig {
        segment_size_bytes,
        record_size_bytes_max: 64 << 10,
        flush_bytes_max: 256 << 10,
        buffered_bytes_max: 1 << 20,
        cache_bytes_max: 64 << 10,
        preallocate: Preallocate::Fallocate,
        ..WalConfig::default()
    }
}

/// Appends `count` entries of `ENTRY_BYTES` after the log's end, flushing every ten.
async fn append<S: Storage>(wal: &Wal<S>, count: u64) -> Vec<Entry> {
    let first = wal.last_index() + 1;
    let entries: Vec<Entry> = (first..first + count)
        .map(|i| entry(i, 1, ENTRY_BYTES))
        .collect();
    for (op, batch) in (1u64..).zip(entries.chunks(10)) {
        wal.append(op, batch).expect("append");
        wal.flush().await.expect("flush");
    }
    entries
}

/// Sizes of the segment files in `dir`, in name order (which is log order).
fn segment_sizes_bytes(dir: &Path) -> Vec<u64> {
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    segments
        .iter()
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .collect()
}

/// Opens the WAL in `dir` with segments of `segment_size_bytes` and checks that it
/// holds exactly `expected`, with nothing reported.
async fn reopen_and_check(dir: &Path, segment_size_bytes: u64, expected: &[Entry]) {
    let storage = DmaStorage::new(dir).expect("dir");
    let (wal, rec) = Wal::open(storage, config(segment_size_bytes))
        .await
        .expect("open");
    assert!(rec.reports.is_empty(), "{:?}", rec.reports);
    assert_eq!(rec.last_index, expected.len() as u64);
    assert!(read_all(&wal).await == expected, "entries differ");
}

#[test]
fn lowering_the_segment_size_keeps_every_entry_of_larger_segments() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let big = 64 << 20;
        let small = 1 << 20;
        // About 3 MiB of entries: most of them lie past 1 MiB into the one segment.
        let (wal, _) = Wal::open(DmaStorage::new(&path).expect("dir"), config(big))
            .await
            .expect("open");
        let mut expected = append(&wal, 400).await;
        drop(wal);
        assert_eq!(segment_sizes_bytes(&path), vec![big]);

        reopen_and_check(&path, small, &expected).await;
        let (wal, _) = Wal::open(DmaStorage::new(&path).expect("dir"), config(small))
            .await
            .expect("open");
        expected.extend(append(&wal, 300).await);
        assert!(read_all(&wal).await == expected, "entries differ");
        drop(wal);
        // The large segment was not appended to; the new ones have the new size.
        let sizes = segment_sizes_bytes(&path);
        assert!(sizes.len() >= 3, "{sizes:?}");
        assert_eq!(sizes[0], big);
        assert!(sizes[1..].iter().all(|s| *s == small), "{sizes:?}");

        reopen_and_check(&path, small, &expected).await;
        // Raising the size again reads the small segments to their own size too.
        reopen_and_check(&path, big, &expected).await;
    });
}

/// Rewrites the size field of the segment header of `name` (bytes 12..16) with a
/// valid checksum, so that only the size is wrong.
fn claim_size(disk: &SimStorage, name: &str, size_bytes: u32) {
    let mut data = disk.file_contents(name).expect("exists");
    data[12..16].copy_from_slice(&size_bytes.to_le_bytes());
    let crc = crc32fast::hash(&data[..44]);
    data[44..48].copy_from_slice(&crc.to_le_bytes());
    disk.set_file_contents(name, data);
}

#[test]
fn a_header_claiming_an_impossible_size_is_corruption() {
    run(|| async {
        let config = small_config();
        let disk = SimStorage::new(512);
        let (wal, _) = Wal::open(disk.clone(), config.clone()).await.expect("open");
        for op in 1..=20 {
            let e = entry(op, 1, 300);
            wal.append(op, std::slice::from_ref(&e)).expect("append");
            wal.flush().await.expect("flush");
        }
        drop(wal);
        let first = disk
            .names()
            .into_iter()
            .find(|n| n.ends_with(".wal"))
            .expect("a segment");
        let original = disk.file_contents(&first).expect("exists");
        // Larger than the file (but otherwise possible), not a block multiple, and
        // smaller than a header block plus one block of records.
        for size_bytes in [u32::MAX - 511, 1 << 20, 16_000, 512, 0] {
            claim_size(&disk, &first, size_bytes);
            match Wal::open(disk.clone(), config.clone()).await {
                Err(WalError::Corrupt { file, offset, .. }) => {
                    assert_eq!((file.as_str(), offset), (first.as_str(), 0));
                }
                Err(e) => panic!("size {size_bytes}: unexpected error {e}"),
                Ok(_) => panic!("size {size_bytes}: a header claiming it was accepted"),
            }
            disk.set_file_contents(&first, original.clone());
        }
        Wal::open(disk, config).await.expect("open when repaired");
    });
}

/// Rewrites the header of the segment file at `path` as the first version wrote it
/// (a 32-bit version 1, 32-bit flags, no size), with a valid checksum.
fn make_first_version(path: &Path) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open segment");
    let mut header = [0u8; 48];
    file.read_exact_at(&mut header, 0).expect("read header");
    let flags = u16::from_le_bytes([header[10], header[11]]) as u32;
    header[8..12].copy_from_slice(&1u32.to_le_bytes());
    header[12..16].copy_from_slice(&flags.to_le_bytes());
    let crc = crc32fast::hash(&header[..44]);
    header[44..48].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&header, 0).expect("write header");
    file.sync_all().expect("sync");
}

/// Segments written before the header recorded its size are read to their file's
/// length, so lowering the setting does not cut them either.
#[test]
fn first_version_segments_are_read_to_their_files_length() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let (wal, _) = Wal::open(DmaStorage::new(&path).expect("dir"), config(64 << 20))
            .await
            .expect("open");
        let expected = append(&wal, 400).await;
        drop(wal);
        let segment = std::fs::read_dir(&path)
            .expect("list")
            .map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|x| x == "wal"))
            .expect("a segment");
        make_first_version(&segment);
        reopen_and_check(&path, 1 << 20, &expected).await;
    });
}
