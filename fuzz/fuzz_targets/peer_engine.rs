//! Arbitrary bytes, decoded as peer messages, driven into a follower and a leader:
//! no message may panic an engine or break one of its invariants. Entries of every
//! kind decode whatever their payload, so trims reach the engines well-formed
//! (applied once committed) and malformed (refused as `malformed_trim`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringlog::transport::fuzzing::check_peer_engine(data);
});
