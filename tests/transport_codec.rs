//! Codec tests: property round trips for every frame kind, canonical encodings,
//! streaming decode across arbitrary splits, zero-copy payloads, golden byte
//! vectors, and decoders fed arbitrary bytes (the fuzz checks, on stable).

use std::collections::HashSet;
use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use ringlog::engine::{
    AppendResponse, Campaign, ConflictHint, Entry, EntryKind, KnownConfig, Member, Membership,
    Message, MessageBody,
};
use ringlog::transport::client_msg::*;
use ringlog::transport::frame::{
    FRAME_HEADER_BYTES, Frame, FrameError, FrameKind, decode_frame, encode_frame,
};
use ringlog::transport::fuzzing::check_decoders;
use ringlog::transport::members_msg::*;
use ringlog::transport::peer_msg::*;

const BODY_MAX: u32 = 64 << 20;

fn one_frame(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = decode_frame(&mut buf, BODY_MAX, None)
        .unwrap()
        .expect("complete frame");
    assert!(buf.is_empty(), "exactly one frame");
    frame
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn arb_entry() -> impl Strategy<Value = Entry> {
    (
        any::<u64>(),
        any::<u64>(),
        prop_oneof![Just(EntryKind::Record), Just(EntryKind::Noop)],
        arb_bytes(300),
    )
        .prop_map(|(term, index, kind, payload)| Entry {
            term,
            index,
            kind,
            payload,
        })
}

fn arb_body() -> impl Strategy<Value = MessageBody> {
    let u = any::<u64>;
    prop_oneof![
        (u(), u()).prop_map(|(a, b)| MessageBody::PreVote {
            last_log_index: a,
            last_log_term: b
        }),
        any::<bool>().prop_map(|granted| MessageBody::PreVoteResponse { granted }),
        (
            u(),
            u(),
            prop_oneof![Just(Campaign::Election), Just(Campaign::Transfer)]
        )
            .prop_map(|(a, b, campaign)| {
                MessageBody::RequestVote {
                    last_log_index: a,
                    last_log_term: b,
                    campaign,
                }
            }),
        any::<bool>().prop_map(|granted| MessageBody::RequestVoteResponse { granted }),
        (u(), u(), proptest::collection::vec(arb_entry(), 0..8), u()).prop_map(
            |(a, b, entries, c)| {
                MessageBody::AppendEntries {
                    prev_log_index: a,
                    prev_log_term: b,
                    entries,
                    leader_commit: c,
                }
            }
        ),
        u().prop_map(|m| MessageBody::AppendEntriesResponse {
            result: AppendResponse::Success { match_index: m }
        }),
        (u(), u(), u()).prop_map(|(a, b, c)| MessageBody::AppendEntriesResponse {
            result: AppendResponse::Reject {
                rejected_prev_index: a,
                hint: ConflictHint {
                    index: b,
                    conflict_term: c
                }
            }
        }),
        (u(), u()).prop_map(|(a, b)| MessageBody::Heartbeat {
            leader_commit: a,
            seq: b
        }),
        (u(), u()).prop_map(|(a, b)| MessageBody::HeartbeatResponse {
            seq: a,
            last_log_index: b
        }),
        (u(), u(), u(), u(), 1u32..6).prop_map(|(a, b, c, d, n)| MessageBody::LogStart {
            start_index: a,
            prev_term: b,
            leader_commit: c,
            config: KnownConfig {
                index: d,
                term: b,
                committed: true,
                membership: Membership::of_voters(&(1..=n).collect::<Vec<_>>()),
            },
        }),
        Just(MessageBody::TimeoutNow),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    (any::<u32>(), any::<u32>(), any::<u64>(), arb_body()).prop_map(|(from, to, term, body)| {
        Message {
            from,
            to,
            term,
            body,
        }
    })
}

fn arb_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .:é漢-]{0,40}"
}

fn arb_request() -> impl Strategy<Value = ClientRequest> {
    prop_oneof![
        (
            any::<u32>(),
            proptest::collection::vec(arb_bytes(200), 0..10)
        )
            .prop_map(|(partition, records)| ClientRequest::Append(AppendRequest {
                partition,
                records
            })),
        (
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>()
        )
            .prop_map(|(p, f, r, b, w, any)| {
                ClientRequest::Read(ReadRequest {
                    partition: p,
                    from_index: f,
                    max_records: r,
                    max_bytes: b,
                    wait_timeout_ms: w,
                    any_replica: any,
                })
            }),
        Just(ClientRequest::Metadata),
        (any::<u32>(), any::<u64>())
            .prop_map(|(partition, before)| ClientRequest::Trim(TrimRequest { partition, before })),
        // NO_NODE (u32::MAX) is how None travels, so it is never a `to`.
        (any::<u32>(), proptest::option::of(0u32..NO_NODE))
            .prop_map(|(partition, to)| ClientRequest::Transfer(TransferRequest { partition, to })),
        any::<u32>().prop_map(|partition| ClientRequest::Members(MembersRequest { partition })),
        (any::<u32>(), arb_change()).prop_map(|(partition, change)| {
            ClientRequest::ChangeMembership(MembershipChangeRequest { partition, change })
        }),
    ]
}

fn arb_address() -> impl Strategy<Value = String> {
    "[a-z0-9.:é-]{0,60}"
}

fn arb_change() -> impl Strategy<Value = ChangeOp> {
    prop_oneof![
        (any::<u32>(), arb_address(), arb_address()).prop_map(
            |(node_id, peer_address, client_address)| ChangeOp::AddLearner {
                node_id,
                peer_address,
                client_address
            }
        ),
        any::<u32>().prop_map(|node_id| ChangeOp::Promote { node_id }),
        any::<u32>().prop_map(|node_id| ChangeOp::Remove { node_id }),
    ]
}

fn arb_member() -> impl Strategy<Value = MemberInfo> {
    (
        any::<u32>(),
        any::<(bool, bool, bool)>(),
        any::<u64>(),
        arb_address(),
        arb_address(),
    )
        .prop_map(
            |(node_id, (voter, leader, active), match_index, peer_address, client_address)| {
                MemberInfo {
                    node_id,
                    voter,
                    leader,
                    active,
                    match_index,
                    peer_address,
                    client_address,
                }
            },
        )
}

fn arb_outcome<T: std::fmt::Debug>(
    ok: impl Strategy<Value = T>,
) -> impl Strategy<Value = PartitionOutcome<T>> {
    (
        any::<u32>(),
        prop_oneof![ok.prop_map(Ok), arb_server_error().prop_map(Err)],
    )
        .prop_map(|(partition, result)| PartitionOutcome { partition, result })
}

fn arb_membership_response() -> impl Strategy<Value = Result<ClientResponse, ServerError>> {
    let listing = (
        0u32..NO_NODE,
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(arb_member(), 0..5),
    )
        .prop_map(
            |(leader, term, last_index, commit_index, members)| PartitionMembers {
                leader,
                term,
                last_index,
                commit_index,
                members,
            },
        );
    prop_oneof![
        proptest::collection::vec(arb_outcome(listing), 0..4)
            .prop_map(|partitions| Ok(ClientResponse::Members(MembersOk { partitions }))),
        proptest::collection::vec(arb_outcome(any::<u64>()), 0..4).prop_map(|partitions| Ok(
            ClientResponse::ChangeMembership(MembershipChangeOk { partitions })
        )),
    ]
}

fn arb_server_error() -> impl Strategy<Value = ServerError> {
    prop_oneof![
        (
            proptest::option::of(0u32..u32::MAX),
            proptest::option::of("[a-z0-9.:]{1,30}")
        )
            .prop_map(|(leader, leader_addr)| ServerError::NotLeader {
                leader,
                leader_addr
            }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(log_start, log_end)| ServerError::OutOfRange { log_start, log_end }),
        Just(ServerError::Overloaded),
        Just(ServerError::Timeout),
        arb_text().prop_map(|reason| ServerError::InvalidRequest { reason }),
        arb_text().prop_map(|reason| ServerError::Unavailable { reason }),
        (0u32..u32::MAX, any::<u64>(), any::<u64>()).prop_map(
            |(node, free_bytes, min_free_bytes)| ServerError::DiskLow {
                node,
                free_bytes,
                min_free_bytes
            }
        ),
        arb_text().prop_map(|reason| ServerError::Unauthorized { reason }),
    ]
}

fn arb_response() -> impl Strategy<Value = Result<ClientResponse, ServerError>> {
    let record =
        (any::<u64>(), arb_bytes(200)).prop_map(|(index, payload)| Record { index, payload });
    let partition = (
        any::<u32>(),
        proptest::option::of(0u32..u32::MAX),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(partition, leader, term, commit_index, last_index, log_start)| PartitionInfo {
                partition,
                leader,
                term,
                commit_index,
                last_index,
                log_start,
            },
        );
    let node = (any::<u32>(), "[a-z0-9.:]{0,30}").prop_map(|(node_id, client_addr)| NodeInfo {
        node_id,
        client_addr,
    });
    prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(first_index, last_index)| Ok(
            ClientResponse::Append(AppendOk {
                first_index,
                last_index
            })
        )),
        (
            proptest::collection::vec(record, 0..10),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(records, commit_index, log_start)| {
                Ok(ClientResponse::Read(ReadOk {
                    records,
                    commit_index,
                    log_start,
                }))
            }),
        (
            any::<u64>(),
            proptest::collection::vec(node, 0..5),
            proptest::collection::vec(partition, 0..5)
        )
            .prop_map(
                |(cluster_id, nodes, partitions)| Ok(ClientResponse::Metadata(Metadata {
                    cluster_id,
                    nodes,
                    partitions
                }))
            ),
        (any::<u64>(), any::<u64>()).prop_map(|(trim_index, log_start)| Ok(ClientResponse::Trim(
            TrimOk {
                trim_index,
                log_start
            }
        ))),
        (0u32..NO_NODE, any::<u64>())
            .prop_map(|(leader, term)| Ok(ClientResponse::Transfer(TransferOk { leader, term }))),
        arb_server_error().prop_map(Err),
        arb_membership_response(),
    ]
}

fn arb_hello() -> impl Strategy<Value = Hello> {
    (
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        prop_oneof![Just(Lane::Control), Just(Lane::Bulk)],
        any::<u8>(),
        any::<u32>(),
    )
        .prop_map(
            |(cluster_id, node_id, peer_node_id, shard_id, lane, protocol_version, shard_count)| {
                Hello {
                    cluster_id,
                    node_id,
                    peer_node_id,
                    shard_id,
                    lane,
                    protocol_version,
                    shard_count,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn peer_messages_round_trip(msg in arb_message()) {
        let mut buf = BytesMut::new();
        encode_message(&mut buf, &msg);
        prop_assert_eq!(buf.len(), message_frame_bytes(&msg));
        let frame = one_frame(&buf);
        prop_assert_eq!(frame.kind, message_kind(&msg.body));
        let back = decode_message(&frame).unwrap();
        prop_assert_eq!(&back, &msg);
        // Payloads are slices of the received frame, not copies.
        if let MessageBody::AppendEntries { entries, .. } = &back.body {
            let range = frame.body.as_ptr() as usize..frame.body.as_ptr() as usize + frame.body.len();
            for e in entries.iter().filter(|e| !e.payload.is_empty()) {
                prop_assert!(range.contains(&(e.payload.as_ptr() as usize)));
            }
        }
    }

    #[test]
    fn hello_and_refused_round_trip(hello in arb_hello(), ack in any::<bool>(), reason in arb_text()) {
        let kind = if ack { FrameKind::PeerHelloAck } else { FrameKind::PeerHello };
        let mut buf = BytesMut::new();
        encode_hello(&mut buf, kind, &hello);
        prop_assert_eq!(decode_hello(&one_frame(&buf)).unwrap(), hello);
        let mut buf = BytesMut::new();
        encode_refused(&mut buf, &reason);
        prop_assert_eq!(decode_refused(&one_frame(&buf)).unwrap(), reason);
    }

    #[test]
    fn client_requests_round_trip(req in arb_request(), id in any::<u64>()) {
        let mut buf = BytesMut::new();
        encode_request(&mut buf, id, &req);
        prop_assert_eq!(buf.len(), FRAME_HEADER_BYTES + request_body_bytes(&req));
        let frame = one_frame(&buf);
        prop_assert_eq!(frame.request_id, id);
        prop_assert_eq!(decode_request(&frame).unwrap(), req);
    }

    #[test]
    fn client_responses_round_trip(resp in arb_response(), id in any::<u64>()) {
        let mut buf = BytesMut::new();
        encode_response(&mut buf, id, &resp);
        let frame = one_frame(&buf);
        prop_assert_eq!(frame.request_id, id);
        prop_assert_eq!(decode_response(&frame).unwrap(), resp);
    }

    /// Many frames in one buffer, delivered in arbitrary pieces, decode in order.
    #[test]
    fn stream_decoding_survives_any_split(msgs in proptest::collection::vec(arb_message(), 1..6), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8)) {
        let mut wire = BytesMut::new();
        for m in &msgs {
            encode_message(&mut wire, m);
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len())).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0;
        for p in points {
            buf.extend_from_slice(&wire[at..p]);
            at = p;
            while let Some(f) = decode_frame(&mut buf, BODY_MAX, None).unwrap() {
                got.push(decode_message(&f).unwrap());
            }
        }
        prop_assert_eq!(got, msgs);
    }

    /// Arbitrary bytes never panic any decoder, and whatever decodes is canonical.
    #[test]
    fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_decoders(&data);
    }

    /// Valid frames with one bit flipped are refused with a typed error or decode to
    /// something canonical; never a panic.
    #[test]
    fn bit_flips_are_caught(msg in arb_message(), bit in any::<prop::sample::Index>()) {
        let mut buf = BytesMut::new();
        encode_message(&mut buf, &msg);
        let i = bit.index(buf.len() * 8);
        buf[i / 8] ^= 1 << (i % 8);
        check_decoders(&buf);
        let mut b = buf.clone();
        let r = decode_frame(&mut b, BODY_MAX, None);
        // A flip in the body or in the crc field must be caught by the checksum.
        if i / 8 >= 12 && i / 8 < 16 || i / 8 >= FRAME_HEADER_BYTES {
            prop_assert!(matches!(r, Err(FrameError::BadChecksum { .. })), "{:?}", r);
        }
    }
}

#[test]
fn header_errors_are_typed() {
    let mut good = BytesMut::new();
    encode_request(&mut good, 1, &ClientRequest::Metadata);
    type Check = fn(&FrameError) -> bool;
    let cases: [(usize, u8, Check); 4] = [
        (0, b'X', |e| matches!(e, FrameError::BadMagic { .. })),
        (4, 9, |e| {
            matches!(e, FrameError::UnsupportedVersion { found: 9 })
        }),
        (5, 0x7E, |e| {
            matches!(e, FrameError::UnknownKind { code: 0x7E })
        }),
        (6, 1, |e| matches!(e, FrameError::UnknownFlags { flags: 1 })),
    ];
    for (at, value, check) in cases {
        let mut b = good.clone();
        b[at] = value;
        let e = decode_frame(&mut b, BODY_MAX, None).unwrap_err();
        assert!(check(&e), "byte {at}: {e}");
    }
    let mut b = good.clone();
    b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        decode_frame(&mut b, BODY_MAX, None),
        Err(FrameError::TooLarge {
            body_bytes: u32::MAX,
            body_bytes_max: BODY_MAX
        })
    );
}

#[test]
fn malformed_bodies_are_typed() {
    // An AppendEntries claiming a million entries in a 40-byte body: refused before
    // allocating room for them.
    let mut buf = BytesMut::new();
    encode_frame(&mut buf, FrameKind::AppendEntries, 0, |b| {
        use bytes::BufMut;
        b.put_bytes(0, 16 + 24);
        b.put_u32_le(1_000_000);
        b.put_u32_le(0);
    });
    let e = decode_message(&one_frame(&buf)).unwrap_err();
    assert!(matches!(e, FrameError::Malformed { .. }), "{e}");
    // A request kind decoded as a peer message is Unexpected, not a panic.
    let mut buf = BytesMut::new();
    encode_request(&mut buf, 3, &ClientRequest::Metadata);
    assert!(matches!(
        decode_message(&one_frame(&buf)),
        Err(FrameError::Unexpected { .. })
    ));
}

/// One sample of every frame kind, with fixed values: their encodings must never change
/// by accident (a change is a protocol version bump).
fn golden_samples() -> Vec<(&'static str, BytesMut)> {
    let m = |body| Message {
        from: 1,
        to: 2,
        term: 3,
        body,
    };
    let entries = vec![
        Entry {
            term: 3,
            index: 10,
            kind: EntryKind::Record,
            payload: Bytes::from_static(b"hello"),
        },
        Entry {
            term: 3,
            index: 11,
            kind: EntryKind::Noop,
            payload: Bytes::new(),
        },
    ];
    let messages = [
        (
            "pre_vote",
            m(MessageBody::PreVote {
                last_log_index: 9,
                last_log_term: 2,
            }),
        ),
        (
            "pre_vote_response",
            m(MessageBody::PreVoteResponse { granted: true }),
        ),
        (
            "request_vote",
            m(MessageBody::RequestVote {
                last_log_index: 9,
                last_log_term: 2,
                campaign: Campaign::Transfer,
            }),
        ),
        (
            "request_vote_response",
            m(MessageBody::RequestVoteResponse { granted: false }),
        ),
        (
            "append_entries",
            m(MessageBody::AppendEntries {
                prev_log_index: 9,
                prev_log_term: 2,
                entries,
                leader_commit: 8,
            }),
        ),
        (
            "append_entries_response_success",
            m(MessageBody::AppendEntriesResponse {
                result: AppendResponse::Success { match_index: 11 },
            }),
        ),
        (
            "append_entries_response_reject",
            m(MessageBody::AppendEntriesResponse {
                result: AppendResponse::Reject {
                    rejected_prev_index: 9,
                    hint: ConflictHint {
                        index: 5,
                        conflict_term: 1,
                    },
                },
            }),
        ),
        (
            "heartbeat",
            m(MessageBody::Heartbeat {
                leader_commit: 8,
                seq: 77,
            }),
        ),
        (
            "heartbeat_response",
            m(MessageBody::HeartbeatResponse {
                seq: 77,
                last_log_index: 11,
            }),
        ),
        (
            "log_start",
            m(MessageBody::LogStart {
                start_index: 100,
                prev_term: 2,
                leader_commit: 120,
                config: KnownConfig {
                    index: 90,
                    term: 2,
                    committed: true,
                    membership: Membership::new(vec![Member {
                        id: 1,
                        voter: true,
                        peer_address: "h:1".into(),
                        client_address: "h:2".into(),
                    }]),
                },
            }),
        ),
        ("timeout_now", m(MessageBody::TimeoutNow)),
    ];
    let mut out = Vec::new();
    let hello = Hello {
        cluster_id: 0xC0FFEE,
        node_id: 1,
        peer_node_id: 2,
        shard_id: 4,
        lane: Lane::Bulk,
        protocol_version: 2,
        shard_count: 8,
    };
    let mut b = BytesMut::new();
    encode_hello(&mut b, FrameKind::PeerHello, &hello);
    out.push(("peer_hello", b));
    let mut b = BytesMut::new();
    encode_hello(
        &mut b,
        FrameKind::PeerHelloAck,
        &Hello {
            node_id: 2,
            peer_node_id: 1,
            ..hello
        },
    );
    out.push(("peer_hello_ack", b));
    let mut b = BytesMut::new();
    encode_refused(&mut b, "cluster id mismatch");
    out.push(("peer_refused", b));
    for (name, msg) in messages {
        let mut b = BytesMut::new();
        encode_message(&mut b, &msg);
        out.push((name, b));
    }
    let requests = [
        (
            "append_request",
            ClientRequest::Append(AppendRequest {
                partition: 5,
                records: vec![Bytes::from_static(b"a"), Bytes::from_static(b"bc")],
            }),
        ),
        (
            "read_request",
            ClientRequest::Read(ReadRequest {
                partition: 5,
                from_index: 10,
                max_records: 100,
                max_bytes: 65536,
                wait_timeout_ms: 500,
                any_replica: true,
            }),
        ),
        ("metadata_request", ClientRequest::Metadata),
    ];
    for (name, r) in requests {
        let mut b = BytesMut::new();
        encode_request(&mut b, 42, &r);
        out.push((name, b));
    }
    let responses = [
        (
            "append_response",
            Ok(ClientResponse::Append(AppendOk {
                first_index: 10,
                last_index: 11,
            })),
        ),
        (
            "read_response",
            Ok(ClientResponse::Read(ReadOk {
                records: vec![
                    Record {
                        index: 10,
                        payload: Bytes::from_static(b"a"),
                    },
                    Record {
                        index: 12,
                        payload: Bytes::from_static(b"bc"),
                    },
                ],
                commit_index: 12,
                log_start: 1,
            })),
        ),
        (
            "metadata_response",
            Ok(ClientResponse::Metadata(Metadata {
                cluster_id: 0xC0FFEE,
                nodes: vec![NodeInfo {
                    node_id: 0,
                    client_addr: "127.0.0.1:7400".into(),
                }],
                partitions: vec![PartitionInfo {
                    partition: 0,
                    leader: Some(0),
                    term: 3,
                    commit_index: 12,
                    last_index: 12,
                    log_start: 1,
                }],
            })),
        ),
        (
            "error_not_leader",
            Err(ServerError::NotLeader {
                leader: Some(1),
                leader_addr: Some("127.0.0.1:7410".into()),
            }),
        ),
        (
            "error_out_of_range",
            Err(ServerError::OutOfRange {
                log_start: 5,
                log_end: 9,
            }),
        ),
        ("error_overloaded", Err(ServerError::Overloaded)),
        ("error_timeout", Err(ServerError::Timeout)),
        (
            "error_invalid_request",
            Err(ServerError::InvalidRequest {
                reason: "bad".into(),
            }),
        ),
        (
            "error_unavailable",
            Err(ServerError::Unavailable {
                reason: "no quorum".into(),
            }),
        ),
    ];
    push_responses(&mut out, responses);
    let mut b = BytesMut::new();
    let notice = ClosingNotice {
        cause: CloseCause::ProtocolError,
        reason: "bad".into(),
    };
    encode_closing_notice(&mut b, &notice);
    out.push(("closing_notice", b));
    // Kinds added later go last, so that the lines of the earlier ones stay put.
    let mut b = BytesMut::new();
    let trim = TrimRequest {
        partition: 5,
        before: 100,
    };
    encode_request(&mut b, 42, &ClientRequest::Trim(trim));
    out.push(("trim_request", b));
    let later_responses = [
        (
            "trim_response",
            Ok(ClientResponse::Trim(TrimOk {
                trim_index: 120,
                log_start: 100,
            })),
        ),
        (
            "error_disk_low",
            Err(ServerError::DiskLow {
                node: 2,
                free_bytes: 201_326_592,
                min_free_bytes: 268_435_456,
            }),
        ),
    ];
    push_responses(&mut out, later_responses);
    let transfers = [
        (
            "transfer_request",
            TransferRequest {
                partition: 5,
                to: Some(3),
            },
        ),
        (
            "transfer_request_any",
            TransferRequest {
                partition: 5,
                to: None,
            },
        ),
    ];
    for (name, t) in transfers {
        let mut b = BytesMut::new();
        encode_request(&mut b, 42, &ClientRequest::Transfer(t));
        out.push((name, b));
    }
    let transfer_ok = TransferOk { leader: 3, term: 7 };
    push_responses(
        &mut out,
        [(
            "transfer_response",
            Ok(ClientResponse::Transfer(transfer_ok)),
        )],
    );
    push_membership_samples(&mut out);
    out
}

fn push_membership_samples(out: &mut Vec<(&'static str, BytesMut)>) {
    let requests = [
        (
            "members_request_all",
            ClientRequest::Members(MembersRequest {
                partition: ALL_PARTITIONS,
            }),
        ),
        (
            "membership_add_learner",
            ClientRequest::ChangeMembership(MembershipChangeRequest {
                partition: ALL_PARTITIONS,
                change: ChangeOp::AddLearner {
                    node_id: 4,
                    peer_address: "10.0.0.4:7401".into(),
                    client_address: "10.0.0.4:7400".into(),
                },
            }),
        ),
        (
            "membership_remove",
            ClientRequest::ChangeMembership(MembershipChangeRequest {
                partition: 1,
                change: ChangeOp::Remove { node_id: 3 },
            }),
        ),
    ];
    for (name, request) in requests {
        let mut b = BytesMut::new();
        encode_request(&mut b, 42, &request);
        out.push((name, b));
    }
    let listing = PartitionMembers {
        leader: 1,
        term: 3,
        last_index: 120,
        commit_index: 118,
        members: vec![
            member(1, true, true, 120, "10.0.0.1"),
            member(4, false, false, 100, "10.0.0.4"),
        ],
    };
    let not_leader = ServerError::NotLeader {
        leader: Some(2),
        leader_addr: Some("10.0.0.2:7400".into()),
    };
    let members = MembersOk {
        partitions: vec![
            PartitionOutcome {
                partition: 0,
                result: Ok(listing),
            },
            PartitionOutcome {
                partition: 1,
                result: Err(not_leader.clone()),
            },
        ],
    };
    let changed = MembershipChangeOk {
        partitions: vec![
            PartitionOutcome {
                partition: 0,
                result: Ok(121),
            },
            PartitionOutcome {
                partition: 1,
                result: Err(not_leader),
            },
        ],
    };
    push_responses(
        out,
        [
            ("members_response", Ok(ClientResponse::Members(members))),
            (
                "membership_change_response",
                Ok(ClientResponse::ChangeMembership(changed)),
            ),
        ],
    );
}

fn member(node_id: u32, voter: bool, leader: bool, match_index: u64, host: &str) -> MemberInfo {
    MemberInfo {
        node_id,
        voter,
        leader,
        active: true,
        match_index,
        peer_address: format!("{host}:7401"),
        client_address: format!("{host}:7400"),
    }
}

/// Encodes each named response as a golden sample.
fn push_responses(
    out: &mut Vec<(&'static str, BytesMut)>,
    responses: impl IntoIterator<Item = (&'static str, Result<ClientResponse, ServerError>)>,
) {
    for (name, r) in responses {
        let mut b = BytesMut::new();
        encode_response(&mut b, 42, &r);
        out.push((name, b));
    }
}

fn to_hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// Compares every sample with `tests/golden/frames.txt`. Set `RINGLOG_UPDATE_GOLDEN=1`
/// to rewrite the file after an intended protocol change.
#[test]
fn golden_vectors_are_stable() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/frames.txt");
    let samples = golden_samples();
    let kinds: HashSet<FrameKind> = samples.iter().map(|(_, b)| one_frame(b).kind).collect();
    assert_eq!(
        kinds.len(),
        FrameKind::ALL.len(),
        "a golden sample for every frame kind"
    );
    let rendered: String = samples
        .iter()
        .map(|(name, b)| format!("{name} {}\n", to_hex(b)))
        .collect();
    if std::env::var_os("RINGLOG_UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &rendered).unwrap();
    }
    let stored = std::fs::read_to_string(path).expect("tests/golden/frames.txt exists");
    for (want, got) in stored.lines().zip(rendered.lines()) {
        assert_eq!(
            got, want,
            "encoding changed; if intended, bump PROTOCOL_VERSION and regenerate"
        );
    }
    assert_eq!(stored.lines().count(), rendered.lines().count());
    // Every golden frame also decodes back and is canonical.
    for (_, b) in &samples {
        check_decoders(b);
    }
}

/// Inputs the fuzzers found or that once broke a decoder; they run on stable here.
#[test]
fn fuzz_regressions() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("tests/fuzz_regressions exists") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        check_decoders(&data);
        n += 1;
    }
    assert!(n > 0);
}

#[test]
fn unknown_read_flags_are_malformed() {
    let request = ClientRequest::Read(ReadRequest {
        partition: 0,
        from_index: 1,
        max_records: 10,
        max_bytes: 1024,
        wait_timeout_ms: 0,
        any_replica: true,
    });
    let mut buf = BytesMut::new();
    encode_request(&mut buf, 1, &request);
    let mut frame = one_frame(&buf);
    let mut body = frame.body.to_vec();
    body[24] |= 0b10;
    frame.body = Bytes::from(body);
    assert!(
        matches!(
            decode_request(&frame),
            Err(FrameError::Malformed {
                reason: "unknown ReadRequest flags",
                ..
            })
        ),
        "{:?}",
        decode_request(&frame)
    );
}

#[test]
fn a_trim_with_reserved_bytes_set_is_malformed() {
    let mut buf = BytesMut::new();
    let trim = TrimRequest {
        partition: 1,
        before: 9,
    };
    encode_request(&mut buf, 1, &ClientRequest::Trim(trim));
    let mut frame = one_frame(&buf);
    assert_eq!(decode_request(&frame), Ok(ClientRequest::Trim(trim)));
    let mut body = frame.body.to_vec();
    body[5] = 1;
    frame.body = Bytes::from(body);
    assert!(
        matches!(decode_request(&frame), Err(FrameError::Malformed { .. })),
        "{:?}",
        decode_request(&frame)
    );
}

/// `frame` with `bytes` written over its body at `offset` (the checksum is not
/// checked again: the body decoders are what is tested).
fn overwritten(frame: &Frame, offset: usize, bytes: &[u8]) -> Frame {
    let mut body = frame.body.to_vec();
    body[offset..offset + bytes.len()].copy_from_slice(bytes);
    Frame {
        body: Bytes::from(body),
        ..frame.clone()
    }
}

#[test]
fn disk_low_without_a_node_or_with_text_is_malformed() {
    let error = ServerError::DiskLow {
        node: 3,
        free_bytes: 10,
        min_free_bytes: 20,
    };
    let mut buf = BytesMut::new();
    encode_response(&mut buf, 1, &Err(error.clone()));
    let frame = one_frame(&buf);
    assert_eq!(decode_response(&frame), Ok(Err(error)));
    let edited = |offset: usize, bytes: &[u8]| overwritten(&frame, offset, bytes);
    let no_node = edited(4, &u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_response(&no_node),
        Err(FrameError::Malformed { .. })
    ));
    let mut with_text = frame.body.to_vec();
    with_text[2] = 1;
    with_text.push(b'x');
    let with_text = Frame {
        body: Bytes::from(with_text),
        ..frame.clone()
    };
    assert!(matches!(
        decode_response(&with_text),
        Err(FrameError::Malformed { .. })
    ));
}

#[test]
fn transfer_bodies_are_fixed_width_and_checked() {
    let request = ClientRequest::Transfer(TransferRequest {
        partition: 2,
        to: None,
    });
    let mut buf = BytesMut::new();
    encode_request(&mut buf, 1, &request);
    let frame = one_frame(&buf);
    assert_eq!(&frame.body[4..], &NO_NODE.to_le_bytes(), "None is NO_NODE");
    assert_eq!(decode_request(&frame), Ok(request));
    let cut = Frame {
        body: frame.body.slice(..6),
        ..frame.clone()
    };
    assert!(matches!(
        decode_request(&cut),
        Err(FrameError::BodyTooShort { .. })
    ));
    let mut longer = frame.body.to_vec();
    longer.push(0);
    let longer = Frame {
        body: Bytes::from(longer),
        ..frame
    };
    assert!(matches!(
        decode_request(&longer),
        Err(FrameError::TrailingBytes { .. })
    ));

    let ok = Ok(ClientResponse::Transfer(TransferOk { leader: 2, term: 9 }));
    let mut buf = BytesMut::new();
    encode_response(&mut buf, 1, &ok);
    let frame = one_frame(&buf);
    assert_eq!(decode_response(&frame), Ok(ok));
    let edited = |offset: usize, bytes: &[u8]| overwritten(&frame, offset, bytes);
    // A finished transfer always names its leader, and reserved bytes are zero.
    for bad in [edited(0, &NO_NODE.to_le_bytes()), edited(5, &[1])] {
        assert!(
            matches!(decode_response(&bad), Err(FrameError::Malformed { .. })),
            "{:?}",
            decode_response(&bad)
        );
    }
}
