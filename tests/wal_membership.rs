//! The saved configurations (`Wal::save_membership`, the file `membership`): a save
//! comes back from a reopen, a damaged file refuses to open, and a crash at any
//! point never yields a half-written list, nor one out of order with the log (a
//! configuration entry without the save made before it, or the save that dropped
//! it without the truncation made before that).

mod wal_support;

use glommio::spawn_local;
use ringlog::engine::{Entry, EntryKind, KnownConfig, Membership};
use ringlog::wal::membership::{MEMBERSHIP_FILE_NAME, MEMBERSHIP_TMP_FILE_NAME};
use ringlog::wal::sim::{BlockFate, CrashChoice, DirOps, SimStorage};
use ringlog::wal::{DmaStorage, Storage, Wal, WalConfig, WalError};
use wal_support::*;

fn config(index: u64, term: u64, committed: bool, voters: &[u32]) -> KnownConfig {
    KnownConfig {
        index,
        term,
        committed,
        membership: Membership::of_voters(voters),
    }
}

/// The configuration entry at index 4 of term 1, adding voter 4.
fn config_entry() -> Entry {
    Entry {
        term: 1,
        index: 4,
        kind: EntryKind::Config,
        payload: Membership::of_voters(&[1, 2, 3, 4]).encode(),
    }
}

fn saved_before_append() -> Vec<KnownConfig> {
    vec![
        config(0, 0, true, &[1, 2, 3]),
        config(4, 1, false, &[1, 2, 3, 4]),
    ]
}

fn saved_after_truncate() -> Vec<KnownConfig> {
    vec![config(0, 0, true, &[1, 2, 3])]
}

/// A configuration for 4 KiB blocks.
fn real_config() -> WalConfig {
    WalConfig {
        segment_size_bytes: 1 << 20,
        record_size_bytes_max: 200 << 10,
        flush_bytes_max: 64 << 10,
        buffered_bytes_max: 1 << 20,
        ..WalConfig::default()
    }
}

#[test]
fn a_save_comes_back_from_a_reopen_on_real_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let (wal, rec) = Wal::open(DmaStorage::new(&dir).expect("dir"), real_config())
            .await
            .expect("open");
        assert!(rec.configs.is_empty(), "never saved: empty");
        wal.append(1, &[entry(1, 1, 10)]).expect("append");
        wal.save_membership(2, &saved_before_append())
            .expect("save");
        wal.append(3, &[entry(2, 1, 10)]).expect("append");
        assert_eq!(wal.flush().await.expect("flush").op, 3);
        drop(wal);
        let (wal, rec) = Wal::open(DmaStorage::new(&dir).expect("dir"), real_config())
            .await
            .expect("reopen");
        assert_eq!(rec.configs, saved_before_append());
        assert_eq!(rec.last_index, 2);
        wal.save_membership(1, &saved_after_truncate())
            .expect("save");
        wal.flush().await.expect("flush");
        drop(wal);
        let (_, rec) = Wal::open(DmaStorage::new(&dir).expect("dir"), real_config())
            .await
            .expect("reopen");
        assert_eq!(rec.configs, saved_after_truncate());
    });
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    assert!(names.iter().any(|n| n == MEMBERSHIP_FILE_NAME), "{names:?}");
    assert!(
        !names.iter().any(|n| n == MEMBERSHIP_TMP_FILE_NAME),
        "{names:?}"
    );
}

#[test]
fn a_damaged_file_refuses_to_open_and_a_leftover_temp_file_is_removed() {
    run(|| async {
        let disk = SimStorage::new(512);
        let (wal, _) = Wal::open(disk.clone(), small_config()).await.expect("open");
        wal.save_membership(1, &saved_before_append())
            .expect("save");
        wal.flush().await.expect("flush");
        drop(wal);
        let good = disk.file_contents(MEMBERSHIP_FILE_NAME).expect("saved");
        // An unfinished save: ignored and removed.
        drop(
            disk.open(MEMBERSHIP_TMP_FILE_NAME, true)
                .await
                .expect("create"),
        );
        disk.set_file_contents(MEMBERSHIP_TMP_FILE_NAME, good[..100].to_vec());
        let (wal, rec) = Wal::open(disk.clone(), small_config()).await.expect("open");
        drop(wal);
        assert_eq!(rec.configs, saved_before_append());
        assert!(!disk.names().iter().any(|n| n == MEMBERSHIP_TMP_FILE_NAME));
        for at in [0, 17, 30, good.len() - 1] {
            let mut damaged = good.clone();
            damaged[at] ^= 0x40;
            disk.set_file_contents(MEMBERSHIP_FILE_NAME, damaged);
            let Err(err) = Wal::open(disk.clone(), small_config()).await else {
                panic!("byte {at} damaged, yet the WAL opened");
            };
            assert!(matches!(err, WalError::Membership { .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains("membership file membership"), "{text}");
            assert!(text.contains("refusing to start"), "{text}");
        }
    });
}

/// The ops of the crash script, and the configurations each state allows.
const SAVE_A_OP: u64 = 2;
const SAVE_B_OP: u64 = 5;

/// Runs the script: entries 1..=3, save A, the configuration entry 4 (and 5),
/// truncation from 4, save B, new entries 4 and 5 of term 2, with flushes
/// overlapping the submissions and each other.
async fn script(disk: &SimStorage) {
    let (wal, _) = Wal::open(disk.clone(), small_config()).await.expect("open");
    let flush = |wal: &Wal<SimStorage>| {
        let (wal, disk) = (wal.clone(), disk.clone());
        spawn_local(async move {
            let durable = wal.flush().await.expect("flush");
            disk.note_durable(durable.op);
        })
    };
    wal.append(1, &[entry(1, 1, 100), entry(2, 1, 700), entry(3, 1, 30)])
        .expect("append");
    let mut flushes = vec![flush(&wal)];
    wal.save_membership(SAVE_A_OP, &saved_before_append())
        .expect("save");
    // The save and the entry in flushes of their own that overlap: the entry's
    // records must still wait for the save.
    flushes.push(flush(&wal));
    wal.append(3, &[config_entry(), entry(5, 1, 300)])
        .expect("append");
    flushes.push(flush(&wal));
    wal.truncate(4, 4).expect("truncate");
    wal.save_membership(SAVE_B_OP, &saved_after_truncate())
        .expect("save");
    wal.append(6, &[entry(4, 2, 50), entry(5, 2, 600)])
        .expect("append");
    flushes.push(flush(&wal));
    for task in flushes {
        task.await;
    }
}

/// Which unsynced blocks and directory operations survive: none, all, and for
/// each block a torn prefix ending at it and it alone.
fn choices(blocks: usize, dir_ops: usize) -> Vec<CrashChoice> {
    let mut fates = vec![vec![], vec![BlockFate::Written; blocks]];
    for k in 0..blocks {
        let mut prefix = vec![BlockFate::Written; k];
        prefix.push(BlockFate::Torn);
        fates.push(prefix);
        let mut single = vec![BlockFate::Lost; blocks];
        single[k] = BlockFate::Written;
        fates.push(single);
    }
    let mut out = Vec::new();
    for blocks in fates {
        let dir = [DirOps::None, DirOps::All].into_iter();
        for dir_ops in dir.chain((1..dir_ops).map(DirOps::Prefix)) {
            out.push(CrashChoice {
                dir_ops,
                blocks: blocks.clone(),
            });
        }
    }
    out
}

#[test]
fn a_crash_never_yields_a_half_written_or_reordered_membership() {
    let images = run(|| async {
        let disk = SimStorage::new(512);
        script(&disk).await;
        let mut images = 0;
        for cut in 0..=disk.event_count() {
            let durable_op = disk.durable_op_at(cut).unwrap_or(0);
            let (blocks, dir_ops) = (disk.unsynced_blocks_at(cut), disk.unsynced_dir_ops_at(cut));
            for choice in choices(blocks, dir_ops) {
                let what = format!("cut {cut} (durable op {durable_op}) {choice:?}");
                let image = disk.crash_image(cut, &choice);
                let (wal, rec) = Wal::open(image, small_config())
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let holds_config_entry = rec.last_index >= 4
                    && read_all(&wal).await.iter().any(|e| *e == config_entry());
                let configs = rec.configs;
                let (a, b) = (saved_before_append(), saved_after_truncate());
                assert!(
                    configs.is_empty() || configs == a || configs == b,
                    "{what}: recovered {configs:?}"
                );
                if durable_op >= SAVE_B_OP {
                    assert_eq!(configs, b, "{what}");
                } else if durable_op >= SAVE_A_OP {
                    assert!(configs == a || configs == b, "{what}: {configs:?}");
                }
                if holds_config_entry {
                    assert_eq!(configs, a, "{what}: the entry survived without its save");
                }
                images += 1;
            }
        }
        images
    });
    eprintln!("{images} crash images recovered");
    assert!(images > 100, "{images} crash images");
}
