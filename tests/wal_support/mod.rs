//! Helpers shared by the WAL tests: an executor, entries, small configurations and a
//! model of the log that the WAL must match.
#![allow(dead_code)]

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use ringlog::engine::{Entry, EntryKind, HardState, Index, Term};
use ringlog::wal::{Preallocate, Storage, Wal, WalConfig};
use std::future::Future;

/// Runs `fut` on a fresh unpinned executor with little I/O memory (the machine's
/// locked-memory limit may be small).
pub fn run<T, F>(fut: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: Future<Output = T> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 << 10)
        .ring_depth(64)
        .spawn(fut)
        .expect("executor starts")
        .join()
        .expect("executor runs")
}

/// Payload of entry `index`: deterministic bytes of a length that varies with the
/// index, so that records straddle blocks in every way.
pub fn payload(index: Index, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (index as usize * 31 + i * 7) as u8)
            .collect::<Vec<_>>(),
    )
}

pub fn entry(index: Index, term: Term, len: usize) -> Entry {
    Entry {
        term,
        index,
        kind: if len == 0 {
            EntryKind::Noop
        } else {
            EntryKind::Record
        },
        payload: payload(index, len),
    }
}

/// A configuration with tiny segments for a simulated disk of 512-byte blocks.
pub fn small_config() -> WalConfig {
    WalConfig {
        segment_size_bytes: 16 << 10,
        record_size_bytes_max: 2 << 10,
        flush_bytes_max: 2 << 10,
        buffered_bytes_max: 64 << 10,
        flushes_in_flight_max: 2,
        cache_bytes_max: 1 << 10,
        preallocate: Preallocate::Fallocate,
        zero_fill_write_bytes_max: 256 << 10,
        fsync_disabled: false,
        truncate_corrupt_tail: false,
        open_segments_max: 4,
    }
}

/// The log a sequence of ops should produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelLog {
    pub start: Index,
    pub prev_term: Term,
    pub entries: Vec<Entry>,
    pub hard_state: HardState,
}

impl Default for ModelLog {
    fn default() -> Self {
        ModelLog {
            start: 1,
            prev_term: 0,
            entries: Vec::new(),
            hard_state: HardState::default(),
        }
    }
}

impl ModelLog {
    pub fn last_index(&self) -> Index {
        self.start + self.entries.len() as u64 - 1
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.prev_term, |e| e.term)
    }

    pub fn truncate(&mut self, from: Index) {
        self.entries.truncate((from - self.start) as usize);
    }

    pub fn reset(&mut self, start: Index, prev_term: Term) {
        self.start = start;
        self.prev_term = prev_term;
        self.entries.clear();
    }

    /// Purge keeps what the WAL kept: it only moves the start to `start`.
    pub fn purge_to(&mut self, start: Index) {
        if start > self.start {
            let drop = (start - self.start) as usize;
            self.prev_term = self.entries[drop - 1].term;
            self.entries.drain(..drop);
            self.start = start;
        }
    }
}

/// Reads the whole log of `wal` (from its start), one batch at a time.
pub async fn read_all<S: Storage>(wal: &Wal<S>) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut next = wal.log_start();
    let end = wal.last_index() + 1;
    while next < end {
        let batch = wal.read(next, end, 3000).await.expect("read");
        assert!(!batch.is_empty());
        next += batch.len() as u64;
        out.extend(batch);
    }
    out
}
