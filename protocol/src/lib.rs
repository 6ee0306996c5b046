//! The wire contract between the sotalign daemon and its clients (TUI, editors, tests):
//! JSON-RPC 2.0 messages in LSP `Content-Length` frames. `docs/PROTOCOL.md` is the
//! human-readable version of this crate, and a test checks that its examples parse here.
//!
//! Invariant: this crate never does IO of its own: it opens no file, socket or process. The
//! codec works on byte buffers; [`framing::FrameReader`]/[`framing::FrameWriter`] and
//! [`client::Client`] only drive `Read`/`Write` values their caller opened.
//!
//! Map:
//! - [`jsonrpc`]: the envelope ([`Message`], [`Request`], [`Response`], [`ErrorObject`], [`Id`]).
//! - [`codes`]: every error code with the meaning of its `data`.
//! - [`framing`]: the `Content-Length` codec and its error recovery.
//! - [`methods`]: method names and the [`Method`] trait tying each to its types.
//! - [`types`]: params, results and notification payloads.
//! - [`vector`]: embeddings on the wire, NaN and Infinity included.
//! - [`client`]: a blocking typed client.

pub mod client;
pub mod codes;
pub mod framing;
pub mod jsonrpc;
pub mod methods;
pub mod types;
pub mod vector;

pub use client::{Client, RpcError};
pub use framing::{CodecError, FrameCodec, FrameError, FrameReader, FrameWriter};
pub use jsonrpc::{ErrorObject, Id, Message, Notification, Request, Response};
pub use methods::{Method, NotificationMethod, ServerNotification, names};

/// Version of the custom `sotalign/*` method set; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;
