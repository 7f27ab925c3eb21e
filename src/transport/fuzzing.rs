//! Decoder checks shared by the fuzz targets (`fuzz/`, nightly) and the regression
//! tests (stable): feed arbitrary bytes to every decoder, and require that anything
//! that decodes re-encodes to exactly the same bytes. A panic here is a bug.

use bytes::{Bytes, BytesMut};

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
