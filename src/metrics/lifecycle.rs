//! The series of a partition's log lifecycle on one shard: disk use, what
//! retention and trims removed, log resets, and the node's low-disk watermark.

use metrics::{Counter, Gauge};

use super::NodeMetrics;
use super::catalog::*;

/// Registered once per shard; the node-wide disk series are the same on every shard
/// (one filesystem holds the data directory), so whichever shard checked last sets them.
pub struct LifecycleMetrics {
    disk_bytes: Gauge,
    index_memory_bytes: Gauge,
    segments_removed: Counter,
    bytes_removed: Counter,
    log_resets: Counter,
    log_start_sent: Counter,
    trims: Counter,
    disk_free_bytes: Gauge,
    disk_low: Gauge,
    refused_disk_low: Counter,
}

impl LifecycleMetrics {
    pub fn new(node: &NodeMetrics, partition: u32) -> LifecycleMetrics {
        let partition = partition.to_string();
        let p = [("partition", partition.as_str())];
        LifecycleMetrics {
            disk_bytes: node.gauge(WAL_DISK_BYTES, &p),
            index_memory_bytes: node.gauge(WAL_INDEX_MEMORY_BYTES, &p),
            segments_removed: node.counter(RETENTION_SEGMENTS_REMOVED, &p),
            bytes_removed: node.counter(RETENTION_BYTES_REMOVED, &p),
            log_resets: node.counter(LOG_RESETS, &p),
            log_start_sent: node.counter(LOG_START_SENT, &p),
            trims: node.counter(TRIMS, &p),
            disk_free_bytes: node.gauge(DISK_FREE_BYTES, &[]),
            disk_low: node.gauge(DISK_LOW, &[]),
            refused_disk_low: node.counter(
                APPENDS_REFUSED,
                &[("partition", partition.as_str()), ("reason", "disk_low")],
            ),
        }
    }

    pub fn disk_bytes(&self, bytes: u64) {
        self.disk_bytes.set(bytes as f64);
    }

    pub fn index_memory_bytes(&self, bytes: usize) {
        self.index_memory_bytes.set(bytes as f64);
    }

    /// Segments the WAL removed from this member's log, and their bytes.
    pub fn removed(&self, segments: u64, bytes: u64) {
        self.segments_removed.increment(segments);
        self.bytes_removed.increment(bytes);
    }

    pub fn log_reset(&self) {
        self.log_resets.increment(1);
    }

    pub fn log_start_sent(&self) {
        self.log_start_sent.increment(1);
    }

    pub fn trims_applied(&self, count: u64) {
        self.trims.increment(count);
    }

    pub fn disk(&self, free_bytes: u64, low: bool) {
        self.disk_free_bytes.set(free_bytes as f64);
        self.disk_low.set(if low { 1.0 } else { 0.0 });
    }

    pub fn refused_disk_low(&self) {
        self.refused_disk_low.increment(1);
    }
}
