//! fsync and write failures are fail-stop: the failing flush returns the error, every
//! later operation is refused, no op after the last good flush is ever reported
//! durable, and a restart recovers everything that was reported durable.

mod wal_support;

use glommio::spawn_local;
use ringlog::wal::sim::{CrashChoice, DirOps, SimStorage};
use ringlog::wal::{Wal, WalError};
use wal_support::*;

enum Fault {
    Write,
    Sync,
}

fn fail_stop(fault: Fault, after: u64) {
    run(move || async move {
        let disk = SimStorage::new(512);
        let (wal, _) = Wal::open(disk.clone(), small_config()).await.expect("open");
        // A first durable batch.
        let mut op = 0;
        for i in 1..=10 {
            op += 1;
            wal.append(op, &[entry(i, 1, 300)]).expect("append");
        }
        let good = wal.flush().await.expect("flush");
        assert_eq!(good.op, op);
        match fault {
            Fault::Write => disk.fail_write_after(after),
            Fault::Sync => disk.fail_sync_after(after),
        }
        // Two overlapping flushes; the fault hits the first or the second.
        for i in 11..=20 {
            op += 1;
            wal.append(op, &[entry(i, 1, 300)]).expect("append");
        }
        let first = spawn_local({
            let wal = wal.clone();
            async move { wal.flush().await }
        });
        for i in 21..=30 {
            op += 1;
            wal.append(op, &[entry(i, 1, 300)])
                .expect("append before the failure shows");
        }
        let second = spawn_local({
            let wal = wal.clone();
            async move { wal.flush().await }
        });
        let (r1, r2) = (first.await, second.await);
        assert!(
            r1.is_err() || r2.is_err(),
            "a flush must report the failure"
        );
        if let Err(e) = &r2 {
            assert!(
                matches!(e, WalError::Io { .. } | WalError::Failed(_)),
                "{e}"
            );
        }
        assert!(
            r2.is_err(),
            "nothing after a failed flush may be reported durable"
        );
        let reported = match r1 {
            Ok(d) => d.op,
            Err(_) => good.op,
        };
        assert_eq!(wal.durable().op, reported);
        assert!(wal.failure().is_some());
        // Every later operation is refused.
        assert!(matches!(
            wal.append(op + 1, &[entry(31, 1, 1)]),
            Err(WalError::Failed(_))
        ));
        assert!(matches!(wal.truncate(op + 1, 5), Err(WalError::Failed(_))));
        assert!(matches!(wal.flush().await, Err(WalError::Failed(_))));
        assert!(matches!(
            wal.read(1, 2, 100).await,
            Err(WalError::Failed(_))
        ));
        drop(wal);

        // A restart on what reached the disk has everything reported durable.
        let image = disk.crash_image(
            disk.event_count(),
            &CrashChoice {
                dir_ops: DirOps::None,
                blocks: Vec::new(),
            },
        );
        let (wal, rec) = Wal::open(image, small_config()).await.expect("reopen");
        let last_durable = if reported == good.op { 10 } else { 20 };
        assert!(rec.last_index >= last_durable);
        let entries = read_all(&wal).await;
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(*e, entry(i as u64 + 1, 1, 300));
        }
    });
}

#[test]
fn write_failure_in_first_flush_is_fail_stop() {
    fail_stop(Fault::Write, 0);
}

#[test]
fn write_failure_in_second_flush_is_fail_stop() {
    fail_stop(Fault::Write, 1);
}

#[test]
fn sync_failure_in_first_flush_is_fail_stop() {
    fail_stop(Fault::Sync, 0);
}

#[test]
fn sync_failure_in_second_flush_is_fail_stop() {
    fail_stop(Fault::Sync, 1);
}

#[test]
fn hard_state_sync_failure_is_fail_stop() {
    run(|| async {
        let disk = SimStorage::new(512);
        let (wal, _) = Wal::open(disk.clone(), small_config()).await.expect("open");
        disk.fail_sync_after(0);
        let hs = ringlog::engine::HardState {
            term: 2,
            voted_for: Some(1),
        };
        wal.persist_hard_state(1, hs).expect("queue");
        assert!(wal.flush().await.is_err());
        assert_eq!(wal.durable().op, 0);
        assert!(matches!(
            wal.persist_hard_state(2, hs),
            Err(WalError::Failed(_))
        ));
    });
}
