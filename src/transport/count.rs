//! Counters of listeners and links that the metrics server, on shard 0, reads while
//! the shard that owns them writes them.

use std::sync::Arc;
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

/// The connections of one executor's client or peer service: what
/// `connections_max` counts across the node, and what the metrics show.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    /// Connections this executor serves now.
    pub open: Count,
    /// Connections accepted here whose first bytes are awaited to place them.
    pub placing: Count,
    /// Connections this executor began serving, handed in or accepted here.
    pub served_total: Count,
    /// Connections this executor took from the one that accepted them.
    pub handed_in_total: Count,
    /// Connections accepted here whose TLS handshake failed (and were closed).
    pub tls_handshakes_failed_total: Count,
}

impl ConnectionCounts {
    /// Connections this executor holds: served or being placed.
    pub fn held(&self) -> u64 {
        self.open.get() + self.placing.get()
    }

    /// Counts a connection this executor begins to serve, until the guard drops.
    pub fn serving(self: &Arc<Self>) -> Serving {
        self.served_total.add(1);
        self.open.add(1);
        Serving(self.clone())
    }
}

/// One connection being served; dropping it counts the connection closed.
pub struct Serving(Arc<ConnectionCounts>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.open.sub(1);
    }
}
