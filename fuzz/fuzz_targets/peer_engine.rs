//! Arbitrary bytes, decoded as peer messages, driven into a follower and a leader:
//! no message may panic an engine or break one of its invariants.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringlog::transport::fuzzing::check_peer_engine(data);
});
