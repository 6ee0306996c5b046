//! Arbitrary bytes as one JSON-RPC message body (see src/harness.rs).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)] // each target uses one of the two checks
#[path = "../src/harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::check_message(data));
