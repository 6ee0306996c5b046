//! `sotalign-tui`: the terminal client for curating image-text pairs with the sotalign daemon.
//!
//! Laid out like gitui/yazi: state, events and rendering are kept apart.
//! - [`state`]: the application state and its reducer (events in, state changes and calls
//!   out). No IO, no clock, no terminal: unit-tested directly.
//! - [`keys`]: the one key-binding table; the help bar and the `?` screen render from it.
//! - [`rpc`]: the calls the UI makes and their typed replies, via the protocol crate.
//! - [`net`]: the tokio task owning the daemon connection (TCP or a spawned stdio daemon),
//!   with request timeouts and reconnect-with-backoff.
//! - [`images`]: off-thread image decoding (SVG included) and the terminal-picture cache.
//! - [`ui`]: widgets, pure functions of the state (and the picture cache).
//!
//! The binary (`main.rs`) owns the terminal: raw mode, the alternate screen, a panic hook that
//! restores it, and the event loop joining key events, network events and a clock tick.
// Lets the test helpers shared with the integration tests (`tests/common/`) name this crate
// the same way from inside it.
#[cfg(test)]
extern crate self as sotalign_tui;

pub mod images;
pub mod keys;
pub mod net;
pub mod rpc;
pub mod state;
pub mod ui;
