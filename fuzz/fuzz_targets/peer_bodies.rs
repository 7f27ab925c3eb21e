//! The first byte picks a peer frame kind (handshake or Raft message); the rest is
//! its body, fed to the body decoder without a checksum in the way.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringlog::transport::frame::FrameKind;

fuzz_target!(|data: &[u8]| {
    let peer: Vec<FrameKind> = FrameKind::ALL.iter().copied().filter(|k| (*k as u8) < 0x40).collect();
    if let Some((pick, body)) = data.split_first() {
        ringlog::transport::fuzzing::check_body(peer[*pick as usize % peer.len()], body);
    }
});
