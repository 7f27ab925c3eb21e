//! Decoder checks shared by the fuzz targets (`fuzz/`, nightly) and the regression
//! tests (stable): feed arbitrary bytes to every decoder, and require that anything
//! that decodes re-encodes to exactly the same bytes; and drive decoded peer
//! messages into Raft engines ([`check_peer_engine`]). A panic here is a bug.

use bytes::{Bytes, BytesMut};

use crate::engine::{
    Command, Config, Engine, Entry, EntryKind, Event, HardState, Index, Membership, Message,
    MessageBody, NodeId, Recovered, Role, Term,
};

use super::client_msg::{
    decode_closing_notice, decode_request, decode_response, encode_closing_notice, encode_request,
    encode_response,
};
use super::frame::{Frame, FrameKind, decode_frame};
use super::peer_msg::{
    decode_hello, decode_message, decode_refused, encode_hello, encode_message, encode_refused,
};

/// Runs `data` through the stream decoder (as a byte stream of frames) and through
/// every body decoder (as the body of each frame kind).
pub fn check_decoders(data: &[u8]) {
    check_stream(data);
    for kind in FrameKind::ALL {
        check_body(kind, data);
    }
}

/// Treats `data` as bytes off a socket: decodes frames until an error or the end.
pub fn check_stream(data: &[u8]) {
    let mut stream = BytesMut::from(data);
    while let Ok(Some(frame)) = decode_frame(&mut stream, 1 << 20, None) {
        check_frame(&frame);
    }
}

/// Treats `data` as the body of a frame of `kind` (skipping the checksum, so the
/// fuzzer reaches the body decoders directly).
pub fn check_body(kind: FrameKind, data: &[u8]) {
    check_frame(&Frame {
        kind,
        request_id: 7,
        body: Bytes::copy_from_slice(data),
    });
}

/// Decodes `frame`'s body by its kind; if it decodes, re-encoding must reproduce it.
pub fn check_frame(frame: &Frame) {
    let mut out = BytesMut::new();
    let decoded = match frame.kind {
        FrameKind::PeerHello | FrameKind::PeerHelloAck => decode_hello(frame)
            .map(|h| encode_hello(&mut out, frame.kind, &h))
            .is_ok(),
        FrameKind::PeerRefused => decode_refused(frame)
            .map(|r| encode_refused(&mut out, &r))
            .is_ok(),
        k if k.is_peer_message() => decode_message(frame)
            .map(|m| encode_message(&mut out, &m))
            .is_ok(),
        FrameKind::ClosingNotice => decode_closing_notice(frame)
            .map(|n| encode_closing_notice(&mut out, &n))
            .is_ok(),
        k if k.is_client_request() => decode_request(frame)
            .map(|r| encode_request(&mut out, frame.request_id, &r))
            .is_ok(),
        _ => decode_response(frame)
            .map(|r| encode_response(&mut out, frame.request_id, &r))
            .is_ok(),
    };
    if !decoded {
        return;
    }
    let again = decode_frame(&mut out, u32::MAX, None)
        .expect("re-encoded frame decodes")
        .expect("re-encoded frame is complete");
    assert_eq!(again.kind, frame.kind, "kind changed on re-encode");
    // Hello, Refused and peer messages carry no request id on the wire.
    if frame.kind.is_client_request() || matches!(frame.kind as u8, 0x40..=0x4F) {
        assert_eq!(
            again.request_id, frame.request_id,
            "request id changed on re-encode"
        );
    }
    assert_eq!(
        again.body, frame.body,
        "{:?} body is not canonical",
        frame.kind
    );
}

/// Drives arbitrary bytes, decoded as peer messages, into two engines of a
/// three-member group (a follower and a leader, built from a small log), checking
/// every invariant after each step. Nothing a peer sends may panic an engine: a
/// message is either acted on or refused. Returns how many messages were refused.
///
/// The input is a sequence of operations. An operation byte `op` ticks both engines
/// (`op % 8 == 0`), reports their storage durable (`op % 8 == 1`), or picks a peer
/// frame kind (`op / 8`) whose body follows: a target byte, a body length byte, and
/// that many bytes. The target byte picks the engine (bit 0) and whether the
/// message's sender, receiver and term are rewritten to plausible values (bit 1
/// clear), so that most messages reach the handlers rather than the term checks.
pub fn check_peer_engine(data: &[u8]) -> u64 {
    let mut group = [Driven::follower(), Driven::leader()];
    let kinds: Vec<FrameKind> = FrameKind::ALL
        .iter()
        .copied()
        .filter(|k| k.is_peer_message())
        .collect();
    let mut input = data.iter().copied();
    let mut refused = 0;
    while let Some(op) = input.next() {
        match op % 8 {
            0 => group.iter_mut().for_each(|d| {
                d.step(Event::Tick);
            }),
            1 => group.iter_mut().for_each(Driven::make_durable),
            _ => {
                let (Some(target), Some(len)) = (input.next(), input.next()) else {
                    break;
                };
                let body: Vec<u8> = input.by_ref().take(len as usize).collect();
                let kind = kinds[(op / 8) as usize % kinds.len()];
                let driven = &mut group[usize::from(target & 1)];
                if let Some(msg) = driven.plausible(kind, &body, target & 2 == 0) {
                    refused += driven.step(Event::Message(msg));
                }
            }
        }
    }
    refused
}

/// One engine under the fuzzer, with the last storage op it issued.
struct Driven {
    engine: Engine,
    last_op: u64,
}

impl Driven {
    /// Member `id` of [1, 2, 3] recovered with a log of terms 1, 1, 2, 2, 3.
    fn recovered(id: NodeId) -> Driven {
        let entries = [1, 1, 2, 2, 3]
            .iter()
            .zip(1..)
            .map(|(&term, index)| Entry {
                term,
                index,
                kind: EntryKind::Record,
                payload: Bytes::from_static(b"r"),
            })
            .collect();
        let hard_state = HardState {
            term: 3,
            voted_for: None,
        };
        let recovered = Recovered::from_entries(hard_state, 1, 0, entries);
        let engine = Engine::new(
            id,
            &Membership::of_voters(&[1, 2, 3]),
            Config::default(),
            7,
            recovered,
        )
        .expect("valid fuzzed engine");
        Driven { engine, last_op: 0 }
    }

    /// Member 2, following leader 1 of term 3 and with index 3 committed.
    fn follower() -> Driven {
        let mut d = Driven::recovered(2);
        d.step(message(1, 2, 3, heartbeat_commit(3)));
        d
    }

    /// Member 1, elected leader of term 4 with its no-op on disk.
    fn leader() -> Driven {
        let mut d = Driven::recovered(1);
        while d.engine.role() != Role::PreCandidate {
            d.step(Event::Tick);
        }
        let granted = MessageBody::PreVoteResponse { granted: true };
        d.step(message(2, 1, 4, granted));
        d.make_durable();
        d.step(message(
            2,
            1,
            4,
            MessageBody::RequestVoteResponse { granted: true },
        ));
        d.make_durable();
        assert_eq!(
            d.engine.role(),
            Role::Leader,
            "the fuzzed leader is elected"
        );
        d
    }

    /// Decodes `body` as a frame of `kind`; with `rewrite`, makes it come from
    /// another member, to this one, in a term near this member's.
    fn plausible(&self, kind: FrameKind, body: &[u8], rewrite: bool) -> Option<Message> {
        let frame = Frame {
            kind,
            request_id: 0,
            body: Bytes::copy_from_slice(body),
        };
        let mut msg = decode_message(&frame).ok()?;
        if rewrite {
            let id = self.engine.id();
            msg.from = [1, 2, 3]
                .into_iter()
                .filter(|&m| m != id)
                .nth(msg.from as usize % 2)?;
            msg.to = id;
            msg.term = (self.engine.term() + msg.term % 3).saturating_sub(1);
        }
        Some(msg)
    }

    /// Steps the engine, checks its invariants, and returns how many messages it
    /// refused.
    fn step(&mut self, event: Event) -> u64 {
        self.engine.step(event);
        self.engine.check_invariants();
        let mut refused = 0;
        for command in self.engine.take_commands() {
            match command {
                Command::PersistHardState { op, .. }
                | Command::AppendLog { op, .. }
                | Command::TruncateLog { op, .. }
                | Command::ResetLog { op, .. }
                | Command::PurgeLog { op, .. }
                | Command::SaveMembership { op, .. } => self.last_op = op,
                Command::RefusePeer { .. } => refused += 1,
                _ => {}
            }
        }
        refused
    }

    fn make_durable(&mut self) {
        let op = self.last_op;
        self.step(Event::Durable { op });
    }
}

fn message(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Event {
    Event::Message(Message {
        from,
        to,
        term,
        body,
    })
}

fn heartbeat_commit(leader_commit: Index) -> MessageBody {
    MessageBody::Heartbeat {
        leader_commit,
        seq: 1,
    }
}
