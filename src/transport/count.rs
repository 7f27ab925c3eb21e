//! Counters of listeners and links that the metrics server, on shard 0, reads while
//! the shard that owns them writes them.

use std::sync::atomic::{AtomicU64, Ordering};

/// A counter written by one executor and read by any thread. Each shard has its
/// own, so no cache line is shared between cores on the hot path; the metrics
/// server adds them up when it renders.
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn add(&self, by: u64) {
        self.0.fetch_add(by, Ordering::Relaxed);
    }

    /// Takes `by` away; counts of open things go down as they close.
    pub fn sub(&self, by: u64) {
        self.0.fetch_sub(by, Ordering::Relaxed);
    }
}
