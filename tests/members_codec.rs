//! Codec tests of the membership frames (MembersRequest/Response,
//! MembershipChangeRequest/Response): fixed layouts, and hostile or malformed
//! bodies refused with a typed error, never a panic. Round trips and golden
//! vectors are in transport_codec.rs with every other kind.

use bytes::{Bytes, BytesMut};
use ringlog::transport::client_msg::*;
use ringlog::transport::frame::{Frame, FrameError, decode_frame};
use ringlog::transport::members_msg::*;

const BODY_MAX: u32 = 64 << 20;

fn one_frame(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = decode_frame(&mut buf, BODY_MAX, None).unwrap().unwrap();
    assert!(buf.is_empty());
    frame
}

fn overwritten(frame: &Frame, offset: usize, bytes: &[u8]) -> Frame {
    let mut body = frame.body.to_vec();
    body[offset..offset + bytes.len()].copy_from_slice(bytes);
    Frame {
        body: Bytes::from(body),
        ..frame.clone()
    }
}

/// Member `node_id`, reachable at `n<id>`; node 1 leads.
fn member(node_id: u32, voter: bool, match_index: u64) -> MemberInfo {
    let address = format!("n{node_id}:7400");
    MemberInfo {
        leader: node_id == 1,
        active: voter,
        client_address: address.clone(),
        peer_address: address,
        node_id,
        voter,
        match_index,
    }
}

/// Encodes `request` and decodes it back as one frame.
fn request_frame(request: &ClientRequest) -> Frame {
    let mut buf = BytesMut::new();
    encode_request(&mut buf, 1, request);
    let frame = one_frame(&buf);
    assert_eq!(decode_request(&frame).as_ref(), Ok(request));
    frame
}

fn assert_malformed(result: Result<impl std::fmt::Debug, FrameError>, what: &str) {
    assert!(
        matches!(
            result,
            Err(FrameError::Malformed { .. }
                | FrameError::BodyTooShort { .. }
                | FrameError::TrailingBytes { .. })
        ),
        "{what}: {result:?}"
    );
}

#[test]
fn membership_requests_are_checked() {
    let add = request_frame(&ClientRequest::ChangeMembership(MembershipChangeRequest {
        partition: ALL_PARTITIONS,
        change: ChangeOp::AddLearner {
            node_id: 4,
            peer_address: "h:1".into(),
            client_address: "h:22".into(),
        },
    }));
    assert_eq!(add.body.len(), 12 + 3 + 4, "fixed part, then the addresses");
    let remove = request_frame(&ClientRequest::ChangeMembership(MembershipChangeRequest {
        partition: 0,
        change: ChangeOp::Remove { node_id: 3 },
    }));
    let cases = [
        (overwritten(&add, 8, &[9]), "unknown change"),
        (overwritten(&add, 11, &[1]), "reserved byte"),
        (overwritten(&add, 9, &[200]), "address longer than the body"),
        (overwritten(&add, 12, &[0xff]), "address not UTF-8"),
        (
            overwritten(&remove, 9, &[1]),
            "remove with an address length",
        ),
        (
            Frame {
                body: remove.body.slice(..11),
                ..remove.clone()
            },
            "cut short",
        ),
    ];
    for (frame, what) in cases {
        assert_malformed(decode_request(&frame), what);
    }
    let mut longer = remove.body.to_vec();
    longer.push(0);
    let longer = Frame {
        body: Bytes::from(longer),
        ..remove
    };
    assert_malformed(decode_request(&longer), "trailing byte");
    let members = request_frame(&ClientRequest::Members(MembersRequest { partition: 2 }));
    assert_malformed(
        decode_request(&overwritten(&members, 4, &[1])),
        "reserved bytes",
    );
}

#[test]
fn membership_responses_are_checked() {
    let listing = PartitionMembers {
        leader: 1,
        term: 2,
        last_index: 10,
        commit_index: 9,
        members: vec![member(1, true, 10), member(2, false, 4)],
    };
    assert_eq!(listing.lag(&listing.members[1]), 6);
    let ok = Ok(ClientResponse::Members(MembersOk {
        partitions: vec![PartitionOutcome {
            partition: 0,
            result: Ok(listing),
        }],
    }));
    let mut buf = BytesMut::new();
    encode_response(&mut buf, 1, &ok);
    let frame = one_frame(&buf);
    assert_eq!(decode_response(&frame), Ok(ok));
    // Offsets: the count at 0, the outcome header at 8, the listing at 16, its
    // first member at 48 (flags at 52).
    let cases = [
        (
            overwritten(&frame, 0, &u32::MAX.to_le_bytes()),
            "hostile count",
        ),
        (overwritten(&frame, 4, &[1]), "reserved bytes"),
        (overwritten(&frame, 12, &[2]), "unknown outcome"),
        (overwritten(&frame, 13, &[1]), "outcome reserved"),
        (overwritten(&frame, 16, &NO_NODE.to_le_bytes()), "no leader"),
        (
            overwritten(&frame, 20, &u32::MAX.to_le_bytes()),
            "hostile member count",
        ),
        (overwritten(&frame, 52, &[8]), "unknown member flags"),
        (overwritten(&frame, 53, &[255]), "address past the end"),
    ];
    for (frame, what) in cases {
        assert_malformed(decode_response(&frame), what);
    }

    let changed = Ok(ClientResponse::ChangeMembership(MembershipChangeOk {
        partitions: vec![
            PartitionOutcome {
                partition: 0,
                result: Ok(7),
            },
            PartitionOutcome {
                partition: 1,
                result: Err(ServerError::InvalidRequest {
                    reason: "node 9 is not a member".into(),
                }),
            },
        ],
    }));
    let mut buf = BytesMut::new();
    encode_response(&mut buf, 1, &changed);
    let frame = one_frame(&buf);
    assert_eq!(frame.body.len(), 8 + 16 + 8 + 24 + 22);
    assert_eq!(decode_response(&frame), Ok(changed));
    // The second outcome's error: a code that does not exist, then a field its
    // code does not use.
    for (bad, what) in [
        (overwritten(&frame, 32, &[99]), "unknown error code"),
        (overwritten(&frame, 36, &[1]), "unused node field"),
        (overwritten(&frame, 0, &[3]), "count past the end"),
    ] {
        assert_malformed(decode_response(&bad), what);
    }
}
