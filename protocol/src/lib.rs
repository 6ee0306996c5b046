//! The wire contract between the sotalign daemon and its clients (TUI, editors, tests).
//!
//! Invariant: this crate never does IO of its own; it only defines messages and the
//! `Content-Length` framing codec, so any transport (stdio, TCP, a test pipe) can use it.

/// Version of the custom `sotalign/*` method set; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;
