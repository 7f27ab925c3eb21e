//! Replays every input of `tests/fuzz_regressions/` through the `peer_engine` fuzz
//! target's checks on stable: decoded peer messages driven into Raft engines must
//! never panic them or break an invariant.

use bytes::BytesMut;
use ringlog::engine::{Entry, EntryKind, KnownConfig, Membership, Message, MessageBody};
use ringlog::transport::frame::{FRAME_HEADER_BYTES, FrameKind};
use ringlog::transport::fuzzing::check_peer_engine;
use ringlog::transport::peer_msg::encode_message;

#[test]
fn fuzz_regressions_replay_through_the_engine() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_regressions");
    let mut replayed = 0;
    for entry in std::fs::read_dir(dir).expect("tests/fuzz_regressions exists") {
        let path = entry.expect("directory entry").path();
        let data = std::fs::read(&path).expect("read a regression input");
        let outcome = std::panic::catch_unwind(|| check_peer_engine(&data));
        assert!(outcome.is_ok(), "{} panicked an engine", path.display());
        replayed += 1;
    }
    assert!(replayed > 0, "no regression inputs in {dir}");
}

/// One fuzz operation delivering `body` to the follower (target 0), with sender,
/// receiver and term rewritten (the raw term 1 becomes the follower's term).
fn to_follower(body: MessageBody) -> Vec<u8> {
    let msg = Message {
        from: 0,
        to: 0,
        term: 1,
        body,
    };
    let mut frame = BytesMut::new();
    encode_message(&mut frame, &msg);
    // The header is magic (4 bytes), version, then kind.
    let kind = FrameKind::from_u8(frame[5]).expect("an encoded kind");
    let peer_kinds = FrameKind::ALL.iter().filter(|k| k.is_peer_message());
    let position = peer_kinds.take_while(|k| **k != kind).count() as u8;
    let body = &frame[FRAME_HEADER_BYTES..];
    let mut op = vec![position * 8 + 2, 0, body.len() as u8];
    op.extend_from_slice(body);
    op
}

/// A LogStart at index 0 and AppendEntries with a gap reach the follower through
/// the fuzz target's decoding: both are refused, and the engines keep their
/// invariants.
#[test]
fn hand_written_bad_messages_are_refused() {
    let mut data = to_follower(MessageBody::LogStart {
        start_index: 0,
        prev_term: 0,
        leader_commit: 0,
        config: KnownConfig::bootstrap(Membership::of_voters(&[1, 2, 3])),
    });
    let gap = Entry {
        term: 3,
        index: 9,
        kind: EntryKind::Noop,
        payload: bytes::Bytes::new(),
    };
    data.extend(to_follower(MessageBody::AppendEntries {
        prev_log_index: 5,
        prev_log_term: 3,
        entries: vec![gap],
        leader_commit: 0,
    }));
    assert_eq!(check_peer_engine(&data), 2);
}

/// AppendEntries after the follower's last entry (index 5, term 3) carrying `entries`.
fn entries_after_5(entries: Vec<Entry>, leader_commit: u64) -> Vec<u8> {
    to_follower(MessageBody::AppendEntries {
        prev_log_index: 5,
        prev_log_term: 3,
        entries,
        leader_commit,
    })
}

/// Trim entries reach the follower through the fuzz target's decoding: a
/// well-formed one is appended and, once committed, applied; one whose payload is
/// not 8 bytes and one that trims past itself are refused (`malformed_trim`).
#[test]
fn trims_well_formed_and_malformed_reach_the_engine() {
    let mut data = entries_after_5(vec![Entry::trim(6, 3, 4)], 6);
    let mut short = Entry::trim(7, 3, 7);
    short.payload = bytes::Bytes::from_static(b"\x07\0\0\0\0\0\0");
    data.extend(entries_after_5(vec![Entry::trim(6, 3, 4), short], 6));
    data.extend(entries_after_5(
        vec![Entry::trim(6, 3, 4), Entry::trim(7, 3, 8)],
        6,
    ));
    // Report the follower's storage durable: the trim's purge finishes.
    data.push(1);
    assert_eq!(check_peer_engine(&data), 2);
}
