//! The first byte picks a client frame kind (request, response or error); the rest
//! is its body, fed to the body decoder without a checksum in the way.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringlog::transport::frame::FrameKind;

fuzz_target!(|data: &[u8]| {
    let client: Vec<FrameKind> = FrameKind::ALL.iter().copied().filter(|k| (*k as u8) >= 0x40).collect();
    if let Some((pick, body)) = data.split_first() {
        ringlog::transport::fuzzing::check_body(client[*pick as usize % client.len()], body);
    }
});
