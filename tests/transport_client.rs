//! Client library tests against live listeners with a fake handler: pipelining on one
//! connection, answers matched by request id out of order, NotLeader redirects,
//! bounded retries, long-polling reads, and errors that must not be retried.

mod transport_support;

use std::rc::Rc;

use bytes::Bytes;
use ringlog::client::{Client, ClientConfig, ClientError};
use ringlog::transport::client_msg::*;
use ringlog::transport::server::ServerConfig;
use transport_support::{FAKE_MIN_FREE_BYTES, FakeHandler, run, start_listener};

fn fast_retries(addrs: Vec<String>) -> ClientConfig {
    ClientConfig {
        retry_backoff_initial_ms: 1,
        retry_backoff_max_ms: 4,
        retries_max: 3,
        redirects_max: 3,
        ..ClientConfig::new(addrs)
    }
}

#[test]
fn many_pipelined_appends_share_one_connection() {
    run(|| async {
        let handler = Rc::new(FakeHandler::default());
        let (addr, stats) = start_listener(ServerConfig::default(), handler.clone());
        let client = Rc::new(Client::new(ClientConfig::new(vec![addr.to_string()])));
        let n = 500u64;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let c = client.clone();
                glommio::spawn_local(async move {
                    (
                        i,
                        c.append(0, vec![Bytes::from(format!("r{i}"))])
                            .await
                            .unwrap(),
                    )
                })
            })
            .collect();
        let mut indexes = Vec::new();
        for t in tasks {
            let (i, ok) = t.await;
            assert_eq!(ok.first_index, ok.last_index);
            // The record at the returned index is this caller's record.
            assert_eq!(
                handler.logs.borrow()[&0][ok.first_index as usize - 1],
                Bytes::from(format!("r{i}"))
            );
            indexes.push(ok.first_index);
        }
        indexes.sort_unstable();
        assert_eq!(indexes, (1..=n).collect::<Vec<_>>());
        assert_eq!(
            stats.connections_accepted_total.get(),
            1,
            "one pooled connection"
        );
    });
}

#[test]
fn answers_out_of_order_reach_their_callers() {
    run(|| async {
        let handler = Rc::new(FakeHandler::default());
        handler.allow_slow.set(true);
        let (addr, _) = start_listener(ServerConfig::default(), handler.clone());
        let client = Rc::new(Client::new(ClientConfig::new(vec![addr.to_string()])));
        let c = client.clone();
        let slow = glommio::spawn_local(async move {
            c.append(0, vec![Bytes::from_static(b"slow:50")])
                .await
                .unwrap()
        });
        // Only send the fast request once the slow one is inside the handler, so its
        // answer has to overtake the slow one's on the same connection.
        transport_support::wait_until("slow request in the handler", || {
            handler.requests.get() == 1
        })
        .await;
        let fast = client
            .append(0, vec![Bytes::from_static(b"fast")])
            .await
            .unwrap();
        // The fast request was answered while the slow one was still outstanding.
        assert_eq!(fast.first_index, 1);
        let slow = slow.await;
        assert_eq!(slow.first_index, 2);
        let read = client
            .read(ReadRequest {
                partition: 0,
                from_index: 1,
                max_records: 10,
                max_bytes: 1 << 20,
                wait_timeout_ms: 0,
                any_replica: false,
            })
            .await
            .unwrap();
        let payloads: Vec<_> = read.records.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(
            payloads,
            vec![Bytes::from_static(b"fast"), Bytes::from_static(b"slow:50")]
        );
    });
}

/// A leader (`leader`) and a node that sends clients to it for `partition`
/// (`follower`), with the client knowing only the follower.
fn leader_and_follower(partition: u32) -> (Rc<FakeHandler>, Rc<FakeHandler>, Client) {
    let leader = Rc::new(FakeHandler::default());
    let (leader_addr, _) = start_listener(ServerConfig::default(), leader.clone());
    let follower = Rc::new(FakeHandler::default());
    follower
        .not_leader
        .borrow_mut()
        .insert(partition, leader_addr.to_string());
    let (follower_addr, _) = start_listener(ServerConfig::default(), follower.clone());
    let client = Client::new(fast_retries(vec![follower_addr.to_string()]));
    (leader, follower, client)
}

#[test]
fn not_leader_redirect_is_followed_and_remembered() {
    run(|| async {
        let (leader, follower, client) = leader_and_follower(4);
        let ok = client
            .append(4, vec![Bytes::from_static(b"x")])
            .await
            .unwrap();
        assert_eq!(ok.first_index, 1);
        client
            .append(4, vec![Bytes::from_static(b"y")])
            .await
            .unwrap();
        assert_eq!(
            follower.requests.get(),
            1,
            "second append went straight to the leader"
        );
        assert_eq!(leader.logs.borrow()[&4].len(), 2);
    });
}

#[test]
fn a_trim_follows_redirects_to_the_leader_like_an_append() {
    run(|| async {
        let (leader, follower, client) = leader_and_follower(2);
        let records = vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")];
        client.append(2, records).await.unwrap();
        let ok = client.trim_ok(2, 2).await.unwrap();
        assert_eq!(
            ok,
            TrimOk {
                trim_index: 3,
                log_start: 2
            }
        );
        assert_eq!(client.trim(2, 3).await.unwrap(), 4);
        assert_eq!(leader.trimmed.borrow()[&2], 3);
        assert!(follower.trimmed.borrow().is_empty());
        assert_eq!(
            follower.requests.get(),
            1,
            "later requests went to the leader"
        );
    });
}

#[test]
fn a_transfer_to_any_node_follows_a_redirect_unchanged_when_nothing_was_done() {
    run(|| async {
        let (leader, follower, client) = leader_and_follower(0);
        let ok = client.transfer_leader(0, None).await.unwrap();
        assert_eq!(ok, TransferOk { leader: 2, term: 1 });
        assert_eq!(*follower.transfers.borrow(), [None]);
        assert_eq!(*leader.transfers.borrow(), [None], "the leader chose");
    });
}

/// An Unavailable answer may hide a hand-over that finished late: the node that
/// gave it is asked again, and the leader it then names is asked only to keep
/// its own leadership, never to hand it on once more.
#[test]
fn a_transfer_to_any_node_is_repeated_only_where_it_may_have_been_done() {
    run(|| async {
        let (leader, origin, client) = leader_and_follower(0);
        origin.unavailable.set(1);
        let ok = client.transfer_leader(0, None).await.unwrap();
        // The fake names node 1 as the leader in its redirects.
        assert_eq!(ok, TransferOk { leader: 1, term: 1 });
        assert_eq!(*origin.transfers.borrow(), [None, None]);
        assert_eq!(*leader.transfers.borrow(), [Some(1)]);
    });
}

#[test]
fn a_transfer_to_a_named_node_is_retried_and_redirected_like_a_read() {
    run(|| async {
        let (leader, follower, client) = leader_and_follower(0);
        follower.unavailable.set(1);
        let ok = client.transfer_leader(0, Some(3)).await.unwrap();
        assert_eq!(ok, TransferOk { leader: 3, term: 1 });
        assert_eq!(*follower.transfers.borrow(), [Some(3), Some(3)]);
        assert_eq!(*leader.transfers.borrow(), [Some(3)]);
    });
}

#[test]
fn disk_low_is_returned_at_once_naming_the_node_and_the_setting() {
    run(|| async {
        let handler = Rc::new(FakeHandler::default());
        let (addr, _) = start_listener(ServerConfig::default(), handler.clone());
        let client = Client::new(fast_retries(vec![addr.to_string()]));
        handler.disk_free_bytes.set(Some(1000));
        let err = client
            .append(0, vec![Bytes::from_static(b"x")])
            .await
            .unwrap_err();
        let ClientError::Server {
            source: source @ ServerError::DiskLow { .. },
            ..
        } = &err
        else {
            panic!("expected DiskLow, got {err}");
        };
        assert_eq!(
            source.to_string(),
            format!(
                "node 1 has 1000 bytes free, below [wal] min_free_bytes = {FAKE_MIN_FREE_BYTES}: appends are refused until space is freed"
            )
        );
        assert_eq!(handler.requests.get(), 1, "not retried");
        // Trims still go through: they are how space is freed.
        client.trim(0, 1).await.unwrap();
    });
}

#[test]
fn redirect_loops_are_bounded() {
    run(|| async {
        let a = Rc::new(FakeHandler::default());
        let b = Rc::new(FakeHandler::default());
        let (a_addr, _) = start_listener(ServerConfig::default(), a.clone());
        let (b_addr, _) = start_listener(ServerConfig::default(), b.clone());
        a.not_leader.borrow_mut().insert(0, b_addr.to_string());
        b.not_leader.borrow_mut().insert(0, a_addr.to_string());
        let client = Client::new(ClientConfig {
            retries_max: 0,
            ..fast_retries(vec![a_addr.to_string()])
        });
        let err = client
            .append(0, vec![Bytes::from_static(b"x")])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::RetriesExhausted { last, .. } if matches!(**last, ClientError::Server { source: ServerError::NotLeader { .. }, .. })),
            "{err}"
        );
        assert_eq!(
            a.requests.get() + b.requests.get(),
            4,
            "first try plus redirects_max redirects"
        );
    });
}

#[test]
fn overloaded_is_retried_within_limits() {
    run(|| async {
        let handler = Rc::new(FakeHandler::default());
        let (addr, _) = start_listener(ServerConfig::default(), handler.clone());
        let client = Client::new(fast_retries(vec![addr.to_string()]));
        handler.overloaded.set(2);
        client
            .append(0, vec![Bytes::from_static(b"x")])
            .await
            .unwrap();
        assert_eq!(handler.requests.get(), 3);
        handler.overloaded.set(1_000);
        let err = client
            .append(0, vec![Bytes::from_static(b"x")])
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::RetriesExhausted { attempts: 4, .. }),
            "{err}"
        );
        assert_eq!(handler.requests.get(), 3 + 4);
    });
}

#[test]
fn unreachable_nodes_fail_after_bounded_retries() {
    run(|| async {
        let port = ringlog::ports::free_port().unwrap();
        let client = Client::new(fast_retries(vec![format!("127.0.0.1:{port}")]));
        let err = client.metadata().await.unwrap_err();
        assert!(
            matches!(&err, ClientError::RetriesExhausted { attempts: 4, last, .. } if matches!(**last, ClientError::Connect { .. })),
            "{err}"
        );
    });
}

#[test]
fn errors_that_retrying_cannot_fix_are_returned_at_once() {
    run(|| async {
        let handler = Rc::new(FakeHandler::default());
        let (addr, _) = start_listener(ServerConfig::default(), handler.clone());
        let client = Client::new(fast_retries(vec![addr.to_string()]));
        let err = client
            .read(ReadRequest {
                partition: 0,
                from_index: 5,
                max_records: 1,
                max_bytes: 100,
                wait_timeout_ms: 0,
                any_replica: false,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Server {
                    source: ServerError::OutOfRange {
                        log_start: 1,
                        log_end: 0
                    },
                    ..
                }
            ),
            "{err}"
        );
        let err = client.append(0, vec![]).await.unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Server {
                    source: ServerError::InvalidRequest { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(handler.requests.get(), 2);
    });
}

#[test]
fn read_waits_for_new_records() {
    run(|| async {
        let handler = Rc::new(FakeHandler::default());
        let (addr, _) = start_listener(ServerConfig::default(), handler.clone());
        let client = Rc::new(Client::new(ClientConfig::new(vec![addr.to_string()])));
        let c = client.clone();
        let reader = glommio::spawn_local(async move {
            c.read(ReadRequest {
                partition: 2,
                from_index: 1,
                max_records: 10,
                max_bytes: 1 << 20,
                wait_timeout_ms: 20_000,
                any_replica: false,
            })
            .await
            .unwrap()
        });
        transport_support::wait_until("read is waiting", || handler.requests.get() == 1).await;
        client
            .append(2, vec![Bytes::from_static(b"late")])
            .await
            .unwrap();
        let read = reader.await;
        assert_eq!(
            read.records,
            vec![Record {
                index: 1,
                payload: Bytes::from_static(b"late")
            }]
        );
        assert_eq!(read.commit_index, 1);
        let meta = client.metadata().await.unwrap();
        assert_eq!(meta.cluster_id, 7);
    });
}

#[test]
fn oversize_answers_become_errors_instead_of_killing_the_connection() {
    run(|| async {
        let handler = Rc::new(FakeHandler::default());
        let config = ServerConfig {
            frame_body_bytes_max: 1024,
            ..ServerConfig::default()
        };
        let (addr, stats) = start_listener(config, handler.clone());
        let client = Client::new(fast_retries(vec![addr.to_string()]));
        for _ in 0..3 {
            client
                .append(0, vec![Bytes::from(vec![1u8; 600])])
                .await
                .unwrap();
        }
        let read = |max_records| ReadRequest {
            partition: 0,
            from_index: 1,
            max_records,
            max_bytes: 1 << 20,
            wait_timeout_ms: 0,
            any_replica: false,
        };
        let err = client.read(read(10)).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Server { source: ServerError::InvalidRequest { reason }, .. } if reason.contains("frame limit")),
            "{err}"
        );
        assert_eq!(client.read(read(1)).await.unwrap().records.len(), 1);
        assert_eq!(
            stats.connections_accepted_total.get(),
            1,
            "the connection survived"
        );
    });
}

#[test]
fn requests_over_the_frame_limit_are_not_sent() {
    run(|| async {
        let handler = Rc::new(FakeHandler::default());
        let (addr, _) = start_listener(ServerConfig::default(), handler.clone());
        let config = ClientConfig {
            frame_body_bytes_max: 1000,
            ..ClientConfig::new(vec![addr.to_string()])
        };
        let client = Client::new(config);
        let err = client
            .append(0, vec![Bytes::from(vec![0u8; 1000])])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::RequestTooLarge {
                    body_bytes: 1012,
                    body_bytes_max: 1000
                }
            ),
            "{err}"
        );
        assert_eq!(handler.requests.get(), 0);
        client
            .append(0, vec![Bytes::from(vec![0u8; 988])])
            .await
            .unwrap();
    });
}
