//! Arbitrary bytes as a socket stream: header checks, length limit, crc, and every
//! body decoder behind them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringlog::transport::fuzzing::check_stream(data);
});
