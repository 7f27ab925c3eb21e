//! A real shard (one-member group, WAL in a temporary directory) driven through its
//! inboxes, for the behaviours only a running shard shows: read answers cut to the
//! frame limit, and long polls whose asker went away.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};

use super::{HandoverSettings, ShardContext, run_shard};
use crate::engine::{self, Index, Message};
use crate::metrics::NodeMetrics;
use crate::metrics::health::HealthBoard;
use crate::runtime::config::ReadSettings;
use crate::runtime::inbox::{LaneError, LaneSender, Reply, ShardInput, lane, reply_channel};
use crate::runtime::lifecycle::LifecycleSettings;
use crate::runtime::oneshot;
use crate::runtime::reads::{READ_ANSWER_HEADER_BYTES, READ_RECORD_OVERHEAD_BYTES, ReadLimits};
use crate::transport::peer::{PeerConfig, link_closer};
use crate::transport::{AppendOk, PartitionInfo, ReadOk, ReadRequest, ServerError};
use crate::wal::config::WalConfig;
use crate::wal::log::RetentionPolicy;

/// The inbox of a running one-member shard, and its node's metrics.
struct TestShard {
    clients: LaneSender<ShardInput>,
    _peers: LaneSender<Message>,
    metrics: Arc<NodeMetrics>,
    wal_dir: PathBuf,
}

/// How a test shard is set up beyond its read limits.
struct Setup {
    wal_config: WalConfig,
    lifecycle: LifecycleSettings,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            wal_config: WalConfig {
                segment_size_bytes: 4 << 20,
                ..WalConfig::default()
            },
            lifecycle: LifecycleSettings::default(),
        }
    }
}

/// Runs `test` against a fresh shard with `limits`, on an executor of its own, then
/// stops the shard and removes its directory.
fn with_shard(limits: ReadLimits, test: impl AsyncFnOnce(&TestShard)) {
    with_shard_set_up(limits, Setup::default(), test)
}

/// [`with_shard`] with a WAL and lifecycle settings of the test's own.
fn with_shard_set_up(limits: ReadLimits, setup: Setup, test: impl AsyncFnOnce(&TestShard)) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let wal_dir = dir.path().join("shard-0");
    let test_wal_dir = wal_dir.clone();
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(2 << 20)
        .make()
        .expect("test executor");
    executor.run(async move {
        let stop = Arc::new(AtomicBool::new(false));
        let (clients, inbox) = lane(1024, 64 << 20);
        let (peers, peer_inbox) = lane(1024, 64 << 20);
        let metrics = NodeMetrics::new(1);
        let context = ShardContext {
            shard_id: 0,
            node_id: 1,
            bootstrap: crate::engine::Membership::of_voters(&[1]),
            peer_addrs: BTreeMap::new(),
            client_addrs: BTreeMap::from([(1, "127.0.0.1:1".to_string())]),
            engine_config: engine::Config::default(),
            wal_config: setup.wal_config,
            wal_dir,
            write_through: false,
            peer_config: PeerConfig::new(1, 1),
            link_closer: link_closer().0,
            tick: Duration::from_millis(10),
            seed: 1,
            stop: stop.clone(),
            inbox,
            peer_inbox,
            read_limits: limits,
            metrics: metrics.clone(),
            health: HealthBoard::new(1),
            lifecycle: setup.lifecycle,
            handover: HandoverSettings {
                leader_balance: true,
                auto_promote: true,
                shutdown: Duration::from_secs(2),
                attempt: Duration::from_secs(1),
            },
        };
        let shard = glommio::spawn_local(async move {
            let result = run_shard(context, crate::runtime::local_inbox::LocalInbox::new()).await;
            if let Err(e) = &result {
                eprintln!("the test shard failed: {e}");
            }
            result
        });
        test(&TestShard {
            clients,
            _peers: peers,
            metrics,
            wal_dir: test_wal_dir,
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        shard.await.expect("the shard stops cleanly");
    });
    drop(dir);
}

impl TestShard {
    /// Sends the input `make` builds around a reply, and returns its receiver.
    fn send<T>(&self, make: impl FnOnce(Reply<T>) -> ShardInput) -> AnswerOf<T> {
        self.submit(make)
    }

    /// Like `send`, for any answer type.
    fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> ShardInput,
    ) -> oneshot::Receiver<T> {
        let (reply, answer) = reply_channel();
        let input = make(reply);
        let bytes = input.payload_bytes();
        match self.clients.try_send(input, bytes) {
            Ok(()) => {}
            Err(LaneError::Full(_)) => panic!("the test shard's inbox is full"),
            Err(LaneError::Disconnected(_)) => panic!("the test shard is gone"),
        }
        answer
    }

    async fn read(&self, request: ReadRequest) -> Result<ReadOk, ServerError> {
        let answer = self.send(|reply| ShardInput::Read { request, reply });
        answer.await.expect("the shard answers")
    }

    async fn append(&self, records: Vec<Bytes>) {
        self.try_append(records).await.expect("append");
    }

    async fn try_append(&self, records: Vec<Bytes>) -> Result<AppendOk, ServerError> {
        let answer = self.send(|reply| ShardInput::Append { records, reply });
        answer.await.expect("the shard answers")
    }

    async fn info(&self) -> PartitionInfo {
        let answer = self.submit(|reply| ShardInput::Info { reply });
        answer.await.expect("the shard answers")
    }

    /// The value of the first series of `name` on the node's metrics page.
    fn metric(&self, name: &str) -> f64 {
        let page = self.metrics.render();
        let line = page
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .unwrap_or_else(|| panic!("no series of {name}"));
        let value = line.rsplit(' ').next().expect("a value");
        value.parse().unwrap_or_else(|_| panic!("{line}"))
    }

    /// Segment files in the shard's WAL directory (the spare and a segment kept for
    /// recycling are not segments yet, or any more).
    fn segment_files(&self) -> usize {
        let entries = std::fs::read_dir(&self.wal_dir).expect("the WAL directory");
        let names = entries.map(|e| e.expect("a directory entry").file_name());
        names
            .filter(|n| n.to_string_lossy().ends_with(".wal"))
            .count()
    }

    /// Waits (up to a generous deadline) until the shard leads its one-member group.
    async fn await_leadership(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.submit(|reply| ShardInput::Info { reply });
            if answer.await.expect("the shard answers").leader == Some(1) {
                return;
            }
            assert!(Instant::now() < deadline, "no leader within 30 s");
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }
}

type AnswerOf<T> = oneshot::Receiver<Result<T, ServerError>>;

fn read_from(from_index: Index, wait_timeout_ms: u32) -> ReadRequest {
    ReadRequest {
        partition: 0,
        from_index,
        max_records: u32::MAX,
        max_bytes: u32::MAX,
        wait_timeout_ms,
        any_replica: true,
    }
}

fn limits(frame_body_bytes_max: u32, waiting_max: u32) -> ReadLimits {
    let settings = ReadSettings {
        waiting_max,
        ..ReadSettings::default()
    };
    ReadLimits::new(&settings, frame_body_bytes_max)
}

#[test]
fn a_read_answer_is_cut_to_fit_the_frame_limit() {
    let fitting = 5;
    let frame = READ_ANSWER_HEADER_BYTES + fitting * (READ_RECORD_OVERHEAD_BYTES + 10);
    with_shard(limits(frame as u32, 16), async |shard| {
        shard.await_leadership().await;
        shard
            .append(vec![Bytes::from_static(b"0123456789"); 20])
            .await;
        let answer = shard.read(read_from(1, 0)).await.expect("read");
        assert_eq!(answer.records.len(), fitting, "cut to the frame");
        let mut capped = read_from(1, 0);
        capped.max_bytes = 25;
        let answer = shard.read(capped).await.expect("read");
        assert_eq!(answer.records.len(), 2, "max_bytes is a cap");
        capped.max_bytes = 5;
        let answer = shard.read(capped).await.expect("read");
        assert_eq!(answer.records.len(), 1, "the first record comes anyway");
    });
}

#[test]
fn a_long_poll_whose_asker_left_frees_its_slot() {
    with_shard(limits(1 << 20, 1), async |shard| {
        let far = 1_000_000;
        let first = shard.send(|reply| ShardInput::Read {
            request: read_from(far, 60_000),
            reply,
        });
        // The one slot is taken while its asker waits.
        let refused = shard.read(read_from(far, 60_000)).await;
        assert_eq!(refused, Err(ServerError::Overloaded));
        // The asker goes away (its connection closed): the slot is free at once.
        drop(first);
        let answer = shard.read(read_from(far, 1)).await;
        assert!(answer.expect("waited, then answered").records.is_empty());
    });
}

#[test]
fn a_read_asking_to_wait_too_long_is_refused() {
    with_shard(limits(1 << 20, 16), async |shard| {
        let wait_ms_max = ReadSettings::default().wait_ms_max;
        let answer = shard.read(read_from(1, wait_ms_max + 1)).await;
        match answer {
            Err(ServerError::InvalidRequest { reason }) => {
                assert!(reason.contains("reads.wait_ms_max"), "{reason}")
            }
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    });
}

/// A WAL of 1 MiB segments that retention keeps within 2 MiB.
fn small_retained_wal() -> Setup {
    Setup {
        wal_config: WalConfig {
            segment_size_bytes: 1 << 20,
            record_size_bytes_max: 64 << 10,
            flush_bytes_max: 256 << 10,
            ..WalConfig::default()
        },
        lifecycle: LifecycleSettings {
            retention: RetentionPolicy {
                max_bytes: Some(2 << 20),
                max_age_ms: None,
            },
            min_free_bytes: 0,
        },
    }
}

#[test]
fn retention_moves_the_log_start_and_reads_below_it_are_out_of_range() {
    with_shard_set_up(limits(8 << 20, 16), small_retained_wal(), async |shard| {
        shard.await_leadership().await;
        // 6 MiB of records: six segments' worth, three times the limit.
        let record = Bytes::from(vec![7u8; 32 << 10]);
        for _ in 0..48 {
            shard.append(vec![record.clone(); 4]).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let info = loop {
            // The gauge is sampled about every 100 ms and after each purge, so a low
            // value may predate the last appends while retention still has segments
            // to remove (and would move the start again). Only two segments on disk
            // say it is done: the WAL removes a file after it dropped the segment,
            // which the engine did first; so the start asked for after that count is
            // final (an answer taken before it may predate the last purge).
            let segments = shard.segment_files();
            let info = shard.info().await;
            // The gauges are published on ticks, after the purge that moved the start.
            let published = shard.metric("ringlog_raft_log_start_index") as u64;
            let disk_bytes = shard.metric("ringlog_wal_disk_bytes");
            // Settled: the 2 MiB retained, the spare, a segment kept for recycling
            // and the summaries.
            let settled = (4 << 20) + (64 << 10);
            if info.log_start > 1
                && published == info.log_start
                && disk_bytes <= settled as f64
                && segments <= 2
            {
                break info;
            }
            assert!(
                Instant::now() < deadline,
                "retention never caught up: {segments} segments, {disk_bytes} bytes: {info:?}"
            );
            glommio::timer::sleep(Duration::from_millis(10)).await;
        };
        assert!(shard.metric("ringlog_retention_segments_removed_total") >= 3.0);
        assert!(shard.metric("ringlog_retention_bytes_removed_total") >= (3 << 20) as f64);
        assert!(shard.metric("ringlog_disk_free_bytes") > 0.0);
        assert_eq!(shard.metric("ringlog_disk_low"), 0.0, "the check is off");
        match shard.read(read_from(1, 0)).await {
            Err(ServerError::OutOfRange { log_start, .. }) => {
                assert_eq!(log_start, info.log_start)
            }
            other => panic!("expected OutOfRange, got {other:?}"),
        }
        let kept = shard
            .read(read_from(info.log_start, 0))
            .await
            .expect("read");
        assert_eq!(kept.records[0].index, info.log_start);
        assert!(kept.records.iter().all(|r| r.payload == record));
    });
}

#[test]
fn a_leader_below_the_disk_watermark_refuses_appends_and_still_serves_reads() {
    let setup = Setup {
        lifecycle: LifecycleSettings {
            retention: RetentionPolicy::default(),
            // No filesystem has this much free: the disk is always low.
            min_free_bytes: u64::MAX,
        },
        ..Setup::default()
    };
    with_shard_set_up(limits(1 << 20, 16), setup, async |shard| {
        shard.await_leadership().await;
        match shard.try_append(vec![Bytes::from_static(b"x")]).await {
            Err(ServerError::DiskLow {
                node: 1,
                free_bytes,
                min_free_bytes: u64::MAX,
            }) => assert!(free_bytes < u64::MAX),
            other => panic!("expected DiskLow, got {other:?}"),
        }
        assert_eq!(shard.metric("ringlog_disk_low"), 1.0);
        assert_eq!(shard.metric("ringlog_appends_refused_total"), 1.0);
        let answer = shard.read(read_from(1, 0)).await.expect("reads go on");
        assert!(answer.records.is_empty());
    });
}

/// A long poll parked above the commit index, released by the commit that also
/// applies a trim past the records it waited for, is refused as out of range: the
/// WAL (which removes whole segments) still holds those records, and an old check,
/// made only when the read arrived, served them below an acknowledged trim.
#[test]
fn a_parked_read_released_by_a_trim_past_it_is_out_of_range() {
    with_shard(limits(1 << 20, 16), async |shard| {
        shard.await_leadership().await;
        shard.append(vec![Bytes::from_static(b"old"); 4]).await;
        let next = shard.info().await.last_index + 1;
        let parked = shard.send(|reply| ShardInput::Read {
            request: read_from(next, 30_000),
            reply,
        });
        // Both inputs are queued before the shard runs again, so they share a turn
        // and a flush: the commit index reaches the trim entry in one step.
        let appended = shard.send(|reply| ShardInput::Append {
            records: vec![Bytes::from_static(b"new"); 10],
            reply,
        });
        let trimmed = shard.send(|reply| ShardInput::Trim {
            before: next + 10,
            reply,
        });
        appended.await.expect("answered").expect("appended");
        let trim = trimmed.await.expect("answered").expect("trimmed");
        assert_eq!(trim.log_start, next + 10);
        match parked.await.expect("answered") {
            Err(ServerError::OutOfRange { log_start, .. }) => assert_eq!(log_start, next + 10),
            other => panic!("a read below an acknowledged trim must be refused: {other:?}"),
        }
    });
}
