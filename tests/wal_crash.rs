//! Crash consistency: a scripted workload runs on the simulated disk, which records
//! every write, sync and directory operation. For every cut point of that recording
//! and many choices of which unsynced blocks survived (none, all, every prefix with a
//! torn last block, every single block, random subsets), the crash image is
//! recovered and must equal the state after some prefix of the submitted ops, at
//! least through the last op reported durable before the cut. The recovered WAL must
//! then accept an append that survives another reopen.

mod wal_support;

use glommio::spawn_local;
use ringlog::engine::{Entry, HardState, Index};
use ringlog::wal::sim::{BlockFate, CrashChoice, DirOps, SimStorage, yield_now};
use ringlog::wal::{Preallocate, Wal, WalConfig, WalError};
use std::collections::VecDeque;
use wal_support::*;

/// A tiny deterministic generator (the script must be the same on every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

/// A state the log may be in after a crash, and the last op it completes. An append
/// of several entries passes through a state per entry: each entry is atomic, an op
/// of several may survive as a prefix of its entries (Raft accepts any prefix).
type States = Vec<(u64, ModelLog)>;

/// Runs the script; returns every state the log passed through, in order.
async fn script(disk: &SimStorage, config: &WalConfig, seed: u64, steps: usize) -> States {
    let (wal, _) = Wal::open(disk.clone(), config.clone()).await.expect("open");
    let mut rng = Lcg(seed);
    let mut model = ModelLog::default();
    let mut states: States = vec![(0, model.clone())];
    let mut op = 0u64;
    let mut term = 1;
    let mut flushes = VecDeque::new();
    let mut reset_done = false;
    for _ in 0..steps {
        match rng.next(20) {
            0..=8 => {
                let n = 1 + rng.next(3);
                let entries: Vec<_> = (0..n)
                    .map(|i| {
                        let len = [0, 10, 100, 700, 1500][rng.next(5) as usize];
                        entry(model.last_index() + 1 + i, term, len)
                    })
                    .collect();
                op += 1;
                if let Err(WalError::BufferFull { .. }) = wal.append(op, &entries) {
                    // Backpressure: flush, then the append must fit.
                    let durable = wal.flush().await.expect("flush");
                    disk.note_durable(durable.op);
                    wal.append(op, &entries).expect("append after flush");
                }
                for e in entries {
                    model.entries.push(e);
                    states.push((op - 1, model.clone()));
                }
            }
            9..=11 => {
                // A flush in its own task, overlapping with what follows.
                let wal = wal.clone();
                let disk = disk.clone();
                flushes.push_back(spawn_local(async move {
                    let durable = wal.flush().await.expect("flush");
                    disk.note_durable(durable.op);
                }));
                yield_now().await;
            }
            12 | 13 => {
                if let Some(task) = flushes.pop_front() {
                    task.await;
                }
            }
            14 if model.last_index() >= model.start => {
                let back = rng.next(4).min(model.last_index() - model.start);
                let from = model.last_index() - back;
                op += 1;
                wal.truncate(op, from).expect("truncate");
                model.truncate(from);
                term += 1;
            }
            15 => {
                op += 1;
                let hs = HardState {
                    term: term + rng.next(2),
                    voted_for: Some(rng.next(3) as u32),
                };
                wal.persist_hard_state(op, hs).expect("hard state");
                model.hard_state = hs;
            }
            16 if model.last_index() > model.start + 10 => {
                op += 1;
                let start = wal.purge(op, model.last_index() - 10).expect("purge");
                model.purge_to(start);
            }
            17 if !reset_done && op > 40 => {
                reset_done = true;
                op += 1;
                let start = model.last_index() + 50;
                term += 1;
                wal.reset(op, start, term).expect("reset");
                model.reset(start, term);
            }
            _ => {
                yield_now().await;
            }
        }
        if states
            .last()
            .is_some_and(|(label, s)| *label < op || *s != model)
        {
            states.push((op, model.clone()));
        }
    }
    while let Some(task) = flushes.pop_front() {
        task.await;
    }
    let durable = wal.flush().await.expect("final flush");
    disk.note_durable(durable.op);
    states
}

fn choices(unsynced: usize, dir_ops: usize, rng: &mut Lcg) -> Vec<CrashChoice> {
    let mut fates: Vec<Vec<BlockFate>> = vec![vec![], vec![BlockFate::Written; unsynced]];
    for k in 0..unsynced {
        let mut prefix = vec![BlockFate::Written; k];
        prefix.push(BlockFate::Torn);
        fates.push(prefix);
        let mut single = vec![BlockFate::Lost; unsynced];
        single[k] = BlockFate::Written;
        fates.push(single);
    }
    for _ in 0..3 {
        fates.push(
            (0..unsynced)
                .map(|_| {
                    [BlockFate::Lost, BlockFate::Written, BlockFate::Torn][rng.next(3) as usize]
                })
                .collect(),
        );
    }
    let mut out = Vec::new();
    // Every prefix of the unsynced directory operations, with all or none of the
    // unsynced blocks.
    for n in 1..dir_ops {
        for blocks in [vec![], vec![BlockFate::Written; unsynced]] {
            out.push(CrashChoice {
                dir_ops: DirOps::Prefix(n),
                blocks,
            });
        }
    }
    for blocks in fates {
        for dir_ops in [DirOps::None, DirOps::All] {
            out.push(CrashChoice {
                dir_ops,
                blocks: blocks.clone(),
            });
        }
    }
    out
}

/// Recovers `image` and checks it against the op states; returns the matched op.
async fn check_image(
    image: SimStorage,
    config: &WalConfig,
    states: &States,
    durable_op: u64,
    what: &str,
) {
    let (wal, rec) = Wal::open(image.clone(), config.clone())
        .await
        .unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
    let entries = read_all(&wal).await;
    // A purge of several segments removes them one by one, oldest first, so a crash
    // may leave it partly done: the log then starts at an older segment boundary, and
    // the extra entries in front must be ones that really were appended.
    let appended = |e: &Entry| {
        states.iter().any(|(_, s)| {
            s.start <= e.index && s.entries.get((e.index - s.start) as usize) == Some(e)
        })
    };
    let matches = |s: &ModelLog| {
        if s.start == rec.log_start {
            return s.prev_term == rec.start_prev_term && s.entries == entries;
        }
        let extra = s.start.saturating_sub(rec.log_start) as usize;
        s.start > rec.log_start
            && entries.len() >= extra
            && entries[extra..] == s.entries[..]
            && entries[..extra].iter().all(appended)
    };
    let allowed = || states.iter().filter(|(label, _)| *label >= durable_op);
    if !allowed().any(|(_, s)| matches(s)) {
        let got: Vec<_> = entries
            .iter()
            .map(|e| (e.index, e.term, e.payload.len()))
            .collect();
        eprintln!("{what}: recovered {got:?}");
        if std::env::var("WAL_CRASH_DEBUG").is_ok() {
            for (label, s) in states.iter() {
                eprintln!(
                    "  op {label}: start {} last {} last term {}",
                    s.start,
                    s.last_index(),
                    s.last_term()
                );
            }
        }
        for (label, s) in allowed().filter(|(_, s)| s.entries.len().abs_diff(entries.len()) <= 1) {
            let want: Vec<_> = s
                .entries
                .iter()
                .map(|e| (e.index, e.term, e.payload.len()))
                .collect();
            eprintln!(
                "  state after op {label}: start {} prev {} {want:?}",
                s.start, s.prev_term
            );
        }
    }
    assert!(
        allowed().any(|(_, s)| matches(s)),
        "{what}: recovered log (start {}, prev term {}, {} entries, last {}) matches no op state at or after durable op {durable_op}",
        rec.log_start,
        rec.start_prev_term,
        entries.len(),
        rec.last_index
    );
    let hs_ok = allowed().any(|(_, s)| s.hard_state == rec.hard_state);
    assert!(
        hs_ok,
        "{what}: hard state {:?} matches no state after op {durable_op}",
        rec.hard_state
    );
    // The hard state is never older than the log: entries written after a term
    // change must not survive a crash that loses the term change (a member would
    // restart with entries of a term it has not recorded, or without its vote).
    let log_op = allowed()
        .filter(|(_, s)| matches(s))
        .map(|(label, _)| *label)
        .min()
        .expect("matched above");
    let hs_op = allowed()
        .filter(|(_, s)| s.hard_state == rec.hard_state)
        .map(|(label, _)| *label)
        .max()
        .expect("matched above");
    assert!(
        hs_op >= log_op,
        "{what}: hard state {:?} (as of op {hs_op}) is older than the log (as of op {log_op})",
        rec.hard_state
    );

    // The recovered WAL must take new appends that survive a reopen.
    let next: Index = rec.last_index + 1;
    let e = entry(next, rec.last_term.max(1) + 100, 33);
    wal.append(1, std::slice::from_ref(&e))
        .expect("append after recovery");
    wal.flush().await.expect("flush after recovery");
    drop(wal);
    let (wal, rec2) = Wal::open(image, config.clone())
        .await
        .unwrap_or_else(|err| panic!("{what}: second recovery failed: {err}"));
    assert_eq!(rec2.last_index, next, "{what}");
    let mut expected = entries;
    expected.push(e);
    assert_eq!(read_all(&wal).await, expected, "{what}");
}

/// How the simulated disk makes writes durable.
#[derive(Clone, Copy)]
enum Disk {
    /// Writes are durable after a later fdatasync of their file.
    SyncAfterWrites,
    /// Every write is durable when it completes (O_DSYNC); the WAL does not sync.
    WriteThrough,
}

fn crash_config(preallocate: Preallocate) -> WalConfig {
    WalConfig {
        segment_size_bytes: 8 << 10,
        record_size_bytes_max: 1500,
        flush_bytes_max: 1 << 10,
        preallocate,
        ..small_config()
    }
}

fn enumerate_cuts(disk: Disk, preallocate: Preallocate, seed: u64, steps: usize) -> (usize, usize) {
    run(move || async move {
        let config = crash_config(preallocate);
        let disk = match disk {
            Disk::SyncAfterWrites => SimStorage::new(512),
            Disk::WriteThrough => SimStorage::new_write_through(512),
        };
        let states = script(&disk, &config, seed, steps).await;
        if std::env::var("WAL_CRASH_DEBUG").is_ok() {
            for (i, e) in disk.events().iter().enumerate() {
                let short = match e {
                    ringlog::wal::sim::SimEvent::Write { ino, pos, data, .. } => {
                        format!("write ino {ino} pos {pos} len {}", data.len())
                    }
                    other => format!("{other:?}"),
                };
                eprintln!("event {i}: {short}");
            }
        }
        let events = disk.event_count();
        // Segment summaries are written while the workload runs (create, write, sync,
        // rename, directory sync), so the cuts below fall at every point of them too;
        // each image is then opened twice, the second time trusting the summaries
        // the first open wrote for the segments it scanned.
        let summaries = disk
            .events()
            .iter()
            .filter(|e| matches!(e, ringlog::wal::sim::SimEvent::Rename { to, .. } if to.ends_with(".sum")))
            .count();
        assert!(
            summaries >= 2,
            "seed {seed}: the workload wrote {summaries} summaries"
        );
        let mut rng = Lcg(seed ^ 0xfeed);
        let mut images = 0;
        for cut in 0..=events {
            let durable_op = disk.durable_op_at(cut).unwrap_or(0);
            let (blocks, dir_ops) = (disk.unsynced_blocks_at(cut), disk.unsynced_dir_ops_at(cut));
            for (i, choice) in choices(blocks, dir_ops, &mut rng).into_iter().enumerate() {
                let what = format!("seed {seed} cut {cut}/{events} choice {i} {choice:?}");
                check_image(
                    disk.crash_image(cut, &choice),
                    &config,
                    &states,
                    durable_op,
                    &what,
                )
                .await;
                images += 1;
            }
        }
        (events, images)
    })
}

#[test]
fn every_cut_point_recovers_a_prefix_fallocated_segments() {
    // More seeds for a deeper run: WAL_CRASH_SEEDS=100 cargo test --release --test wal_crash
    let seeds: u64 = std::env::var("WAL_CRASH_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    for seed in 1..=seeds {
        let (events, images) =
            enumerate_cuts(Disk::SyncAfterWrites, Preallocate::Fallocate, seed, 300);
        assert!(events > 200, "workload too small: {events} events");
        eprintln!("seed {seed}: {events} cut points, {images} crash images recovered");
    }
}

#[test]
fn every_cut_point_recovers_a_prefix_zero_filled_segments() {
    for seed in [7, 8] {
        let (events, images) =
            enumerate_cuts(Disk::SyncAfterWrites, Preallocate::ZeroFill, seed, 150);
        eprintln!("zero-fill seed {seed}: {events} cut points, {images} crash images recovered");
    }
}

#[test]
fn every_cut_point_recovers_a_prefix_write_through() {
    for seed in [3, 4, 5] {
        let (events, images) = enumerate_cuts(Disk::WriteThrough, Preallocate::ZeroFill, seed, 200);
        assert!(events > 150, "workload too small: {events} events");
        eprintln!(
            "write-through seed {seed}: {events} cut points, {images} crash images recovered"
        );
    }
}
