//! Profiling aid: the WAL at large batches of small records, flushes pipelined.
use glommio::{LocalExecutorBuilder, Placement, spawn_local};
use ringlog::engine::{Entry, EntryKind};
use ringlog::wal::{DmaStorage, Wal, WalConfig};
use std::collections::VecDeque;
use std::time::Instant;
fn main() {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(2 << 20)
        .spawn(|| async {
            let dir = "/work/target-wal/cpu-probe";
            let _ = std::fs::remove_dir_all(dir);
            let (wal, _) = Wal::open(DmaStorage::new(dir).unwrap(), WalConfig::default())
                .await
                .unwrap();
            let payload = bytes::Bytes::from(vec![0x5au8; 128]);
            let mut index = 1;
            let mut q = VecDeque::new();
            let start = Instant::now();
            let mut append_s = 0.0;
            let rounds = 2000u64;
            for op in 1..=rounds {
                let t = Instant::now();
                let entries: Vec<Entry> = (0..4096u64)
                    .map(|i| Entry {
                        term: 1,
                        index: index + i,
                        kind: EntryKind::Record,
                        payload: payload.clone(),
                    })
                    .collect();
                wal.append(op, &entries).unwrap();
                append_s += t.elapsed().as_secs_f64();
                index += 4096;
                let w = wal.clone();
                q.push_back(spawn_local(async move { w.flush().await.unwrap() }));
                if q.len() >= 2 {
                    q.pop_front().unwrap().await;
                }
            }
            while let Some(t) = q.pop_front() {
                t.await;
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{:.0} flushes/s, append share {:.0}%",
                rounds as f64 / secs,
                append_s / secs * 100.0
            );
            let _ = std::fs::remove_dir_all(dir);
        })
        .unwrap()
        .join()
        .unwrap();
}
