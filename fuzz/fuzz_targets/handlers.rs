//! Decoded JSON-RPC messages fed to the daemon's real dispatcher and handlers, in process
//! (see src/handlers.rs for what an input becomes and the properties checked).
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../src/vocabulary.rs"]
mod vocabulary;

#[allow(dead_code)] // the seed writer and the method list serve the stable test
#[path = "../src/handlers.rs"]
mod handlers;

fn harness() -> &'static handlers::Harness {
    static H: OnceLock<handlers::Harness> = OnceLock::new();
    H.get_or_init(handlers::Harness::start)
}

fuzz_target!(|data: &[u8]| {
    harness().check(data);
});
