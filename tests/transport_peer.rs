//! Peer link tests: delivery of every message kind, lanes (a stalled bulk connection
//! does not hold up heartbeats), reconnect with backoff, handshake refusal on both
//! sides, and the queue policy.

mod transport_support;

use ringlog::transport::PROTOCOL_VERSION;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use glommio::net::{TcpListener, TcpStream};
use ringlog::engine::{
    AppendResponse, Campaign, ConflictHint, Entry, EntryKind, KnownConfig, Membership, Message,
    MessageBody,
};
use ringlog::transport::conn::{FrameReader, write_all_within};
use ringlog::transport::frame::FrameKind;
use ringlog::transport::peer::{PeerAcceptor, PeerConfig, PeerHandler, PeerLink, SendError};
use ringlog::transport::peer_msg::{Hello, Lane, decode_hello, decode_message, encode_hello};
use transport_support::{run, wait_until};

#[derive(Default)]
struct Collect {
    got: RefCell<Vec<(u32, Message)>>,
}

impl PeerHandler for Collect {
    fn deliver(&self, shard_id: u32, message: Message) {
        self.got.borrow_mut().push((shard_id, message));
    }
}

fn start_acceptor(
    config: PeerConfig,
    addr: &str,
) -> (
    SocketAddr,
    Rc<Collect>,
    std::sync::Arc<ringlog::transport::peer::AcceptorStats>,
) {
    let collect = Rc::new(Collect::default());
    let acceptor =
        PeerAcceptor::bind(addr.parse().unwrap(), Rc::new(config), collect.clone()).unwrap();
    let local = acceptor.local_addr().unwrap();
    let stats = acceptor.stats();
    glommio::spawn_local(acceptor.run()).detach();
    (local, collect, stats)
}

fn msg(term: u64, body: MessageBody) -> Message {
    Message {
        from: 1,
        to: 2,
        term,
        body,
    }
}

fn append_entries(payload_bytes: usize, count: usize) -> MessageBody {
    MessageBody::AppendEntries {
        prev_log_index: 0,
        prev_log_term: 0,
        entries: (0..count)
            .map(|i| Entry {
                term: 1,
                index: i as u64 + 1,
                kind: EntryKind::Record,
                payload: Bytes::from(vec![i as u8; payload_bytes]),
            })
            .collect(),
        leader_commit: 0,
    }
}

fn every_kind() -> Vec<Message> {
    vec![
        msg(
            1,
            MessageBody::PreVote {
                last_log_index: 1,
                last_log_term: 1,
            },
        ),
        msg(1, MessageBody::PreVoteResponse { granted: true }),
        msg(
            2,
            MessageBody::RequestVote {
                last_log_index: 1,
                last_log_term: 1,
                campaign: Campaign::Election,
            },
        ),
        msg(2, MessageBody::RequestVoteResponse { granted: true }),
        msg(2, append_entries(100, 3)),
        msg(
            2,
            MessageBody::AppendEntriesResponse {
                result: AppendResponse::Success { match_index: 3 },
            },
        ),
        msg(
            2,
            MessageBody::AppendEntriesResponse {
                result: AppendResponse::Reject {
                    rejected_prev_index: 3,
                    hint: ConflictHint {
                        index: 1,
                        conflict_term: 1,
                    },
                },
            },
        ),
        msg(
            2,
            MessageBody::Heartbeat {
                leader_commit: 3,
                seq: 9,
            },
        ),
        msg(
            2,
            MessageBody::HeartbeatResponse {
                seq: 9,
                last_log_index: 3,
            },
        ),
        msg(
            2,
            MessageBody::LogStart {
                start_index: 10,
                prev_term: 1,
                leader_commit: 12,
                config: KnownConfig::bootstrap(Membership::of_voters(&[1, 2, 3])),
            },
        ),
        msg(3, MessageBody::TimeoutNow),
    ]
}

#[test]
fn every_message_kind_arrives_in_order_per_lane() {
    run(|| async {
        let (addr, collect, _) = start_acceptor(PeerConfig::new(7, 2), "127.0.0.1:0");
        let link = PeerLink::spawn(Rc::new(PeerConfig::new(7, 1)), 3, 2, addr);
        // Queued before the link is up, so they go out in few large writes.
        let heartbeats = 500;
        for seq in 0..heartbeats {
            link.send(msg(
                2,
                MessageBody::Heartbeat {
                    leader_commit: 0,
                    seq,
                },
            ))
            .unwrap();
        }
        let sent = every_kind();
        for m in &sent {
            link.send(m.clone()).unwrap();
        }
        let total = heartbeats as usize + sent.len();
        wait_until("all delivered", || collect.got.borrow().len() == total).await;
        let got = collect.got.borrow();
        assert!(got.iter().all(|(shard, _)| *shard == 3));
        for lane in [Lane::Control, Lane::Bulk] {
            let want: Vec<_> = sent.iter().filter(|m| Lane::of(&m.body) == lane).collect();
            let have: Vec<_> = got
                .iter()
                .map(|(_, m)| m)
                .filter(|m| Lane::of(&m.body) == lane)
                .skip_while(|m| {
                    lane == Lane::Control
                        && matches!(
                            m.body,
                            MessageBody::Heartbeat {
                                leader_commit: 0,
                                ..
                            }
                        )
                })
                .collect();
            assert_eq!(have, want, "{lane:?} lane order");
        }
        let stats = link.stats();
        assert_eq!(stats.messages_sent_total.get(), total as u64);
        assert!(
            stats.writes_total.get() < stats.messages_sent_total.get() / 10,
            "many messages per write"
        );
    });
}

/// A fake acceptor that completes handshakes but never reads from bulk connections,
/// so their kernel buffers fill and the link's bulk writes stall.
async fn stalling_acceptor(
    listener: TcpListener,
    control_got: Rc<RefCell<Vec<Message>>>,
    held: Rc<RefCell<Vec<TcpStream>>>,
) {
    loop {
        let mut stream = listener.accept().await.unwrap();
        let control_got = control_got.clone();
        let held = held.clone();
        glommio::spawn_local(async move {
            let mut reader = FrameReader::new(&mut stream, 16 << 20);
            let hello = decode_hello(
                &reader
                    .next_frame(None, std::time::Duration::from_secs(5))
                    .await
                    .unwrap()
                    .unwrap(),
            )
            .unwrap();
            let ack = Hello {
                node_id: hello.peer_node_id,
                peer_node_id: hello.node_id,
                ..hello
            };
            let mut b = BytesMut::new();
            encode_hello(&mut b, FrameKind::PeerHelloAck, &ack);
            write_all_within(reader.inner_mut(), &b, std::time::Duration::from_secs(5))
                .await
                .unwrap();
            if hello.lane == Lane::Bulk {
                drop(reader);
                held.borrow_mut().push(stream);
                return;
            }
            while let Ok(Some(f)) = reader
                .next_frame(None, std::time::Duration::from_secs(5))
                .await
            {
                control_got.borrow_mut().push(decode_message(&f).unwrap());
            }
        })
        .detach();
    }
}

#[test]
fn heartbeats_pass_a_stalled_bulk_lane() {
    run(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let control_got = Rc::new(RefCell::new(Vec::new()));
        let held = Rc::new(RefCell::new(Vec::new()));
        glommio::spawn_local(stalling_acceptor(
            listener,
            control_got.clone(),
            held.clone(),
        ))
        .detach();
        let config = PeerConfig {
            write_timeout_ms: 120_000,
            ..PeerConfig::new(7, 1)
        };
        let link = PeerLink::spawn(Rc::new(config), 0, 2, addr);
        // 48 MiB of AppendEntries: far more than loopback socket buffers hold.
        for _ in 0..48 {
            link.send(msg(2, append_entries(1 << 20, 1))).unwrap();
        }
        wait_until("bulk lane connected", || link.is_connected(Lane::Bulk)).await;
        wait_until("control lane connected", || {
            link.is_connected(Lane::Control)
        })
        .await;
        // Wait until the bulk writer has pushed what the kernel will take and is stuck.
        let mut last = u64::MAX;
        wait_until("bulk lane stalled", || {
            let now = link.stats().bytes_sent_total.get();
            let stalled = now == last && link.queued(Lane::Bulk).0 > 0;
            last = now;
            stalled
        })
        .await;
        link.send(msg(
            2,
            MessageBody::Heartbeat {
                leader_commit: 5,
                seq: 1,
            },
        ))
        .unwrap();
        wait_until("heartbeat delivered past the stalled bulk lane", || {
            !control_got.borrow().is_empty()
        })
        .await;
        assert!(link.queued(Lane::Bulk).0 > 0, "bulk is still stuck");
        assert_eq!(
            control_got.borrow()[0].body,
            MessageBody::Heartbeat {
                leader_commit: 5,
                seq: 1
            }
        );
    });
}

#[test]
fn link_reconnects_with_backoff_when_the_peer_appears() {
    run(|| async {
        // Find a free port, then leave it closed so the link's first connects fail.
        let port = ringlog::ports::free_port().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = PeerConfig {
            backoff_initial_ms: 5,
            backoff_max_ms: 40,
            ..PeerConfig::new(7, 1)
        };
        let link = PeerLink::spawn(Rc::new(config), 0, 2, addr);
        link.send(msg(2, MessageBody::TimeoutNow)).unwrap();
        wait_until("several failed connects", || {
            link.stats().connect_failures_total.get() >= 4
        })
        .await;
        let (_, collect, _) = start_acceptor(PeerConfig::new(7, 2), &addr.to_string());
        wait_until("queued message delivered after reconnect", || {
            collect.got.borrow().len() == 1
        })
        .await;
        assert!(link.is_connected(Lane::Control));
    });
}

/// A fake peer that closes every control connection after one message: the link must
/// keep reconnecting and delivering.
#[test]
fn link_recovers_from_dropped_connections() {
    run(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Rc::new(RefCell::new(Vec::new()));
        let connections = Rc::new(Cell::new(0u32));
        let (g, c) = (got.clone(), connections.clone());
        glommio::spawn_local(async move {
            loop {
                let mut stream = listener.accept().await.unwrap();
                c.set(c.get() + 1);
                let g = g.clone();
                glommio::spawn_local(async move {
                    let mut reader = FrameReader::new(&mut stream, 1 << 20);
                    let Ok(Some(f)) = reader
                        .next_frame(None, std::time::Duration::from_secs(5))
                        .await
                    else {
                        return;
                    };
                    let hello = decode_hello(&f).unwrap();
                    let mut b = BytesMut::new();
                    encode_hello(
                        &mut b,
                        FrameKind::PeerHelloAck,
                        &Hello {
                            node_id: hello.peer_node_id,
                            peer_node_id: hello.node_id,
                            ..hello
                        },
                    );
                    write_all_within(reader.inner_mut(), &b, std::time::Duration::from_secs(5))
                        .await
                        .unwrap();
                    if let Ok(Some(f)) = reader
                        .next_frame(None, std::time::Duration::from_secs(5))
                        .await
                    {
                        g.borrow_mut().push(decode_message(&f).unwrap());
                    }
                })
                .detach();
            }
        })
        .detach();
        let config = PeerConfig {
            backoff_initial_ms: 2,
            backoff_max_ms: 10,
            ..PeerConfig::new(7, 1)
        };
        let link = PeerLink::spawn(Rc::new(config), 0, 2, addr);
        // Keep offering heartbeats (some are lost with a dying connection, as on a
        // real network) until several were delivered over several connections.
        let mut seq = 0;
        wait_until("deliveries over 3 connections", || {
            seq += 1;
            let _ = link.send(msg(
                2,
                MessageBody::Heartbeat {
                    leader_commit: 0,
                    seq,
                },
            ));
            got.borrow().len() >= 3
        })
        .await;
        assert!(link.stats().connects_total.get() >= 3);
    });
}

/// A link from a node configured as `linking` to an acceptor configured as
/// `accepting` is refused at every handshake, on both sides, and its message
/// waits for a correct peer.
async fn assert_refused_on_both_sides(accepting: PeerConfig, linking: PeerConfig) {
    let (addr, collect, stats) = start_acceptor(accepting, "127.0.0.1:0");
    let config = PeerConfig {
        backoff_initial_ms: 2,
        backoff_max_ms: 10,
        ..linking
    };
    let link = PeerLink::spawn(Rc::new(config), 0, 2, addr);
    link.send(msg(2, MessageBody::TimeoutNow)).unwrap();
    wait_until("refusals seen by both sides", || {
        link.stats().connect_failures_total.get() >= 3 && stats.handshakes_refused_total.get() >= 3
    })
    .await;
    assert_eq!(link.stats().connects_total.get(), 0);
    assert!(collect.got.borrow().is_empty());
    assert_eq!(
        link.queued(Lane::Control).0,
        1,
        "the message waits for a correct peer"
    );
}

#[test]
fn wrong_cluster_is_refused_on_both_sides() {
    run(|| async {
        let linking = PeerConfig::new(0xFEED, 1);
        assert_refused_on_both_sides(PeerConfig::new(0xBEEF, 2), linking).await;
    });
}

/// Records are placed in shards by their count: a node running another number of
/// shards than its peer is refused at the handshake (and counted), and the link's
/// messages wait for a correct peer.
#[test]
fn a_peer_with_another_shard_count_is_refused() {
    run(|| async {
        let linking = PeerConfig {
            shard_count: 4,
            ..PeerConfig::new(7, 1)
        };
        assert_refused_on_both_sides(PeerConfig::new(7, 2), linking).await;
    });
}

#[test]
fn queue_policy_drops_old_heartbeats_and_pushes_back_bulk() {
    run(|| async {
        let port = ringlog::ports::free_port().unwrap();
        let config = PeerConfig {
            control_queue_messages_max: 4,
            bulk_queue_messages_max: 2,
            frame_body_bytes_max: 4096,
            backoff_initial_ms: 1_000,
            ..PeerConfig::new(7, 1)
        };
        let link = PeerLink::spawn(
            Rc::new(config),
            0,
            2,
            format!("127.0.0.1:{port}").parse().unwrap(),
        );
        for seq in 0..4 {
            link.send(msg(
                2,
                MessageBody::Heartbeat {
                    leader_commit: 0,
                    seq,
                },
            ))
            .unwrap();
        }
        // Full: a vote displaces the oldest heartbeat.
        link.send(msg(2, MessageBody::RequestVoteResponse { granted: true }))
            .unwrap();
        assert_eq!(link.stats().heartbeats_dropped_total.get(), 1);
        for _ in 0..3 {
            link.send(msg(2, MessageBody::RequestVoteResponse { granted: true }))
                .unwrap();
        }
        // No heartbeats left to drop: refused, message handed back.
        let back = link
            .send(msg(2, MessageBody::PreVoteResponse { granted: true }))
            .unwrap_err();
        assert!(
            matches!(back, SendError::Full(m) if m.body == MessageBody::PreVoteResponse { granted: true })
        );
        // Bulk: bounded by count, then refused.
        link.send(msg(2, append_entries(10, 1))).unwrap();
        link.send(msg(2, append_entries(10, 1))).unwrap();
        assert!(matches!(
            link.send(msg(2, append_entries(10, 1))),
            Err(SendError::Full(_))
        ));
        // Larger than the frame limit: refused outright.
        assert!(matches!(
            link.send(msg(2, append_entries(5000, 1))),
            Err(SendError::TooLarge { .. })
        ));
        assert_eq!(link.queued(Lane::Control).0, 4);
        assert_eq!(link.queued(Lane::Bulk).0, 2);
    });
}

/// A peer that reconnects (after a crash, say) replaces its old connection for the
/// same shard and lane, so half-open connections do not pile up.
#[test]
fn a_new_handshake_replaces_the_old_connection() {
    run(|| async {
        let (addr, _, stats) = start_acceptor(PeerConfig::new(7, 2), "127.0.0.1:0");
        let hello = Hello {
            cluster_id: 7,
            node_id: 1,
            peer_node_id: 2,
            shard_id: 0,
            lane: Lane::Control,
            protocol_version: PROTOCOL_VERSION,
            shard_count: 1,
        };
        let mut hello_bytes = BytesMut::new();
        encode_hello(&mut hello_bytes, FrameKind::PeerHello, &hello);
        let timeout = std::time::Duration::from_secs(5);
        let handshake = async || {
            let mut s = TcpStream::connect(addr).await.unwrap();
            write_all_within(&mut s, &hello_bytes, timeout)
                .await
                .unwrap();
            let mut reader = FrameReader::new(&mut s, 1 << 20);
            let ack = reader.next_frame(None, timeout).await.unwrap().unwrap();
            assert_eq!(ack.kind, FrameKind::PeerHelloAck);
            drop(reader);
            s
        };
        let mut old = handshake().await;
        let _new = handshake().await;
        // The acceptor closes the old connection: reading it ends.
        let mut reader = FrameReader::new(&mut old, 1 << 20);
        assert!(matches!(
            reader.next_frame(None, timeout).await,
            Ok(None) | Err(_)
        ));
        wait_until("one inbound connection left", || {
            stats.connections.open.get() == 1
        })
        .await;
    });
}
