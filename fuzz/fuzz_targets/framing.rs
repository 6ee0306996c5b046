//! Arbitrary bytes through the Content-Length framing codec (see src/harness.rs).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // each target uses one of the two checks
#[path = "../src/harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::check_framing(data));
