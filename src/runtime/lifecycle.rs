//! A shard's part in the log's lifecycle: retention (asking the engine to purge
//! once the WAL says its policy is exceeded), the low-disk watermark (refusing
//! appends while the data directory's filesystem is nearly full), and the metrics
//! of both, of trims and of log resets.
//!
//! Both checks run at most every [`CHECK_INTERVAL`]: a statvfs and a walk over the
//! WAL's segment list cost microseconds, and ten times a second reacts well within
//! the time a fast writer needs to fill `wal.min_free_bytes`.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::engine::{Command, EntryKind, Event, Index, MessageBody, NodeId};
use crate::metrics::NodeMetrics;
use crate::metrics::health::HealthBoard;
use crate::metrics::lifecycle::LifecycleMetrics;
use crate::transport::ServerError;
use crate::wal::log::{RetentionPolicy, Wal};
use crate::wal::storage::DmaStorage;

/// How often retention and the free space are checked.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// What a shard needs of `[retention]` and `[wal] min_free_bytes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifecycleSettings {
    pub retention: RetentionPolicy,
    /// Below this many free bytes appends are refused; 0 disables the check.
    pub min_free_bytes: u64,
}

pub(super) struct Lifecycle {
    node_id: NodeId,
    settings: LifecycleSettings,
    /// The shard's WAL directory, whose filesystem is measured.
    dir: PathBuf,
    next_check: Instant,
    /// Free bytes at the last successful measurement, and whether that is low.
    free_bytes: Option<u64>,
    low: bool,
    /// Indexes of trim entries in the log not yet known committed, ascending.
    pending_trims: VecDeque<Index>,
    metrics: LifecycleMetrics,
    health: Arc<HealthBoard>,
}

impl Lifecycle {
    pub(super) fn new(
        (node_id, shard): (NodeId, u32),
        settings: LifecycleSettings,
        dir: &Path,
        (metrics, health): (&NodeMetrics, Arc<HealthBoard>),
    ) -> Lifecycle {
        Lifecycle {
            node_id,
            settings,
            dir: dir.to_path_buf(),
            next_check: Instant::now(),
            free_bytes: None,
            low: false,
            pending_trims: VecDeque::new(),
            metrics: LifecycleMetrics::new(metrics, shard),
            health,
        }
    }

    /// Trim entries recovered from the WAL above the commit index: the engine applies
    /// them again once they are known committed, and they count then.
    pub(super) fn recovered_trims(&mut self, trims: &[(Index, Index)], commit: Index) {
        let above = trims
            .iter()
            .map(|&(index, _)| index)
            .filter(|&i| i > commit);
        self.pending_trims.extend(above);
    }

    /// At most every [`CHECK_INTERVAL`]: measures the disk and asks the WAL where
    /// retention would cut; returns the purge to step into the engine, if any (the
    /// engine clamps it to entries committed and on disk).
    pub(super) fn check(
        &mut self,
        now: Instant,
        wal: &Wal<DmaStorage>,
        log_start: Index,
    ) -> Option<Event> {
        if now < self.next_check {
            return None;
        }
        self.next_check = now + CHECK_INTERVAL;
        self.check_disk();
        self.metrics.disk_bytes(wal.disk_bytes());
        self.metrics.index_memory_bytes(wal.index_memory_bytes());
        let now_ms = wall_clock_ms();
        wal.note_time_ms(now_ms);
        let policy = self.settings.retention;
        if policy.max_bytes.is_none() && policy.max_age_ms.is_none() {
            return None;
        }
        let before = wal.retention_point(&policy, now_ms)?;
        (before > log_start).then_some(Event::PurgeLog { before })
    }

    /// Measures the free space (shown even when the watermark is off) and compares
    /// it with the watermark.
    fn check_disk(&mut self) {
        let min = self.settings.min_free_bytes;
        let free = match free_bytes(&self.dir) {
            Ok(free) => free,
            // Keep the last state: a failed statvfs says nothing about the space.
            Err(e) => {
                return log::warn!("cannot measure free space in {}: {e}", self.dir.display());
            }
        };
        let low = min > 0 && free < min;
        if low != self.low {
            if low {
                log::warn!("{}", self.disk_low_error(free));
            } else {
                log::info!("{free} bytes free again (wal.min_free_bytes = {min}): appends resume");
            }
        }
        (self.free_bytes, self.low) = (Some(free), low);
        self.metrics.disk(free, low);
        self.health.publish_disk(free, min, low);
    }

    fn disk_low_error(&self, free_bytes: u64) -> ServerError {
        ServerError::DiskLow {
            node: self.node_id,
            free_bytes,
            min_free_bytes: self.settings.min_free_bytes,
        }
    }

    /// The refusal for a client append while the disk is low (counted), else none.
    pub(super) fn append_refusal(&self) -> Option<ServerError> {
        let free = self.free_bytes.filter(|_| self.low)?;
        self.metrics.refused_disk_low();
        Some(self.disk_low_error(free))
    }

    /// A purge removed `segments` segments of `bytes` in all (the WAL's own count,
    /// which is exact whatever size each segment was written with, and which a
    /// recycled segment does not hide), leaving the WAL at `disk_bytes`.
    pub(super) fn purged(&self, segments: u64, bytes: u64, disk_bytes: u64) {
        if segments > 0 {
            self.metrics.removed(segments, bytes);
            self.metrics.disk_bytes(disk_bytes);
        }
    }

    /// Counts what a command says about the log's lifecycle: resets, LogStart
    /// messages, and trim entries appended, cut or committed.
    pub(super) fn observe(&mut self, command: &Command) {
        match command {
            Command::AppendLog { entries, .. } => {
                let trims = entries.iter().filter(|e| e.kind == EntryKind::Trim);
                self.pending_trims.extend(trims.map(|e| e.index));
            }
            Command::TruncateLog { from, .. } => self.pending_trims.retain(|&i| i < *from),
            Command::ResetLog { .. } => {
                self.pending_trims.clear();
                self.metrics.log_reset();
            }
            Command::Send { msg, .. } if matches!(msg.body, MessageBody::LogStart { .. }) => {
                self.metrics.log_start_sent()
            }
            Command::Commit { index } => {
                let committed = self.pending_trims.iter().take_while(|&&i| i <= *index);
                let count = committed.count();
                self.pending_trims.drain(..count);
                if count > 0 {
                    self.metrics.trims_applied(count as u64);
                }
            }
            _ => {}
        }
    }
}

/// Milliseconds since the Unix epoch, the clock retention by age uses (0 before it).
fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Bytes an unprivileged user may still write on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a valid NUL-terminated string and `stat` points to memory
    // for one statvfs, which the call fills in when it returns 0.
    let status = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if status != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let stat = unsafe { stat.assume_init() };
    // Both are u64 on 64-bit Linux but narrower on some targets.
    #[allow(clippy::unnecessary_cast)]
    let (blocks, block_bytes) = (stat.f_bavail as u64, stat.f_frsize as u64);
    Ok(blocks.saturating_mul(block_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Entry, Message};

    fn lifecycle(metrics: &Arc<NodeMetrics>) -> Lifecycle {
        let settings = LifecycleSettings::default();
        let health = HealthBoard::new(1);
        Lifecycle::new((1, 0), settings, Path::new("."), (metrics, health))
    }

    fn value(metrics: &NodeMetrics, name: &str) -> f64 {
        let page = metrics.render();
        let line = page
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .unwrap_or_else(|| panic!("no {name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn trims_count_once_committed_and_not_when_cut_or_reset() {
        let metrics = NodeMetrics::new(1);
        let mut lifecycle = lifecycle(&metrics);
        lifecycle.recovered_trims(&[(2, 1), (4, 3)], 3);
        let entries = vec![Entry::trim(6, 1, 5), Entry::trim(9, 1, 8)];
        lifecycle.observe(&Command::AppendLog { op: 1, entries });
        // The entry at 9 is cut by a new leader before it commits.
        lifecycle.observe(&Command::TruncateLog { op: 2, from: 8 });
        lifecycle.observe(&Command::Commit { index: 5 });
        assert_eq!(
            value(&metrics, "ringlog_trims_total"),
            1.0,
            "the recovered one at 4"
        );
        lifecycle.observe(&Command::Commit { index: 20 });
        assert_eq!(
            value(&metrics, "ringlog_trims_total"),
            2.0,
            "and the one at 6"
        );
        let entries = vec![Entry::trim(21, 2, 15)];
        lifecycle.observe(&Command::AppendLog { op: 3, entries });
        let reset = Command::ResetLog {
            op: 4,
            start: 30,
            prev_term: 2,
        };
        lifecycle.observe(&reset);
        lifecycle.observe(&Command::Commit { index: 40 });
        assert_eq!(
            value(&metrics, "ringlog_trims_total"),
            2.0,
            "gone with the reset"
        );
        assert_eq!(value(&metrics, "ringlog_log_resets_total"), 1.0);
    }

    #[test]
    fn log_start_messages_and_removed_segments_are_counted() {
        let metrics = NodeMetrics::new(1);
        let mut lifecycle = lifecycle(&metrics);
        let log_start = Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::LogStart {
                start_index: 10,
                prev_term: 2,
                leader_commit: 12,
                config: crate::engine::KnownConfig::bootstrap(
                    crate::engine::Membership::of_voters(&[1, 2, 3]),
                ),
            },
        };
        lifecycle.observe(&Command::Send {
            msg: log_start,
            when: None,
        });
        assert_eq!(value(&metrics, "ringlog_log_start_sent_total"), 1.0);
        lifecycle.purged(3, 3 << 20, 2 << 20);
        lifecycle.purged(0, 0, 2 << 20);
        assert_eq!(
            value(&metrics, "ringlog_retention_segments_removed_total"),
            3.0
        );
        assert_eq!(
            value(&metrics, "ringlog_retention_bytes_removed_total"),
            (3 << 20) as f64
        );
        assert_eq!(value(&metrics, "ringlog_wal_disk_bytes"), (2 << 20) as f64);
    }

    #[test]
    fn free_bytes_of_a_real_directory_and_an_error_for_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0, "a test machine's temporary directory has room");
        let missing = dir.path().join("not-there");
        assert_eq!(
            free_bytes(&missing).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }
}
