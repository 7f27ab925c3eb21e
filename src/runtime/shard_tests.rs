//! A real shard (one-member group, WAL in a temporary directory) driven through its
//! inboxes, for the behaviours only a running shard shows: read answers cut to the
//! frame limit, and long polls whose asker went away.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};

use super::config::ReadSettings;
use super::inbox::{LaneError, LaneSender, Reply, ShardInput, lane, reply_channel};
use super::oneshot;
use super::reads::{READ_ANSWER_HEADER_BYTES, READ_RECORD_OVERHEAD_BYTES, ReadLimits};
use super::shard::{ShardContext, run_shard};
use crate::engine::{self, Index, Message};
use crate::metrics::NodeMetrics;
use crate::metrics::health::HealthBoard;
use crate::transport::peer::{PeerConfig, link_closer};
use crate::transport::{ReadOk, ReadRequest, ServerError};
use crate::wal::config::WalConfig;

/// The inbox of a running one-member shard.
struct TestShard {
    clients: LaneSender<ShardInput>,
    _peers: LaneSender<Message>,
}

/// Runs `test` against a fresh shard with `limits`, on an executor of its own, then
/// stops the shard and removes its directory.
fn with_shard(limits: ReadLimits, test: impl AsyncFnOnce(&TestShard)) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let wal_dir = dir.path().join("shard-0");
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(2 << 20)
        .make()
        .expect("test executor");
    executor.run(async move {
        let stop = Arc::new(AtomicBool::new(false));
        let (clients, inbox) = lane(1024, 64 << 20);
        let (peers, peer_inbox) = lane(1024, 64 << 20);
        let context = ShardContext {
            shard_id: 0,
            node_id: 1,
            members: vec![1],
            peer_addrs: BTreeMap::new(),
            client_addrs: BTreeMap::from([(1, "127.0.0.1:1".to_string())]),
            engine_config: engine::Config::default(),
            wal_config: WalConfig {
                segment_size_bytes: 4 << 20,
                ..WalConfig::default()
            },
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
            metrics: NodeMetrics::new(1),
            health: HealthBoard::new(1),
        };
        let shard = glommio::spawn_local(async move {
            let result = run_shard(context).await;
            if let Err(e) = &result {
                eprintln!("the test shard failed: {e}");
            }
            result
        });
        test(&TestShard {
            clients,
            _peers: peers,
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
        let answer = self.send(|reply| ShardInput::Append { records, reply });
        answer.await.expect("the shard answers").expect("append");
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
