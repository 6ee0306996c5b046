//! LSP base-protocol framing: `Content-Length: N\r\n\r\n` followed by N bytes of UTF-8 JSON.
//!
//! One state machine ([`FrameCodec`]) serves both the async world (it implements tokio-util's
//! `Decoder`/`Encoder`) and blocking clients ([`FrameReader`]/[`FrameWriter`] drive the same
//! decoder over `std::io`), so both see byte-for-byte identical behaviour.
//!
//! Errors in one frame never end the stream: the decoder yields `Err(FrameError)` as an *item*
//! (tokio-util's `FramedRead` stops for good after a decoder `Err`), the server answers it with
//! [`FrameError::to_response`], and decoding continues:
//! - length known (oversized body, invalid JSON, not a JSON-RPC message): exactly that frame's
//!   body is consumed (an oversized body is discarded as it streams in, never buffered) and the
//!   next frame decodes normally;
//! - a bad header block that does not start with `Content-Length` but contains one (garbage
//!   in front of a real header, e.g. `xyzContent-Length: 5\r\n\r\n{...}`): one error, then the
//!   decoder restarts at that `Content-Length`, so the frame behind the garbage survives;
//! - length unknown (malformed header block, missing `Content-Length`, header block longer than
//!   the cap without a blank line): the decoder discards input up to the next occurrence of the
//!   bytes `Content-Length` (ASCII case-insensitive, anywhere, not only at a line start, because
//!   frames follow each other without separators) and restarts there. Whatever followed the bad
//!   header is lost; if that lost text itself contains `Content-Length`, the decoder restarts
//!   there, fails again at most once per such occurrence, and recovers at the next real header.
use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::codes;
use crate::jsonrpc::{ErrorObject, Id, InvalidMessage, Message, Response};

/// Default cap on one frame's body: 16 MiB.
pub const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;
/// Default cap on one header block: real headers are well under 100 bytes.
pub const DEFAULT_MAX_HEADER: usize = 8 * 1024;
/// The body-to-memory cap by default: a frame may hold at most this many JSON values per KiB of
/// the body cap (one per 8 bytes; at least [`MIN_MAX_VALUES`]). A decoded value costs 32-100
/// bytes, so a body of short values (`[0,0,0,...]`) would otherwise take ~50x its size; real
/// messages (floats written with their digits, captions, paths) stay far below it. The daemon
/// sets it with `sotalign serve --max-json-values-per-kib` ([`FrameCodec::with_values_per_kib`]).
pub const DEFAULT_VALUES_PER_KIB: usize = 128;
/// The name of that cap in a `LIMIT_EXCEEDED` error's `data.cap` (the daemon's flag, without
/// `--`).
pub const JSON_VALUES_CAP: &str = "max-json-values-per-kib";
/// Values always allowed, whatever the body size.
pub const MIN_MAX_VALUES: usize = 65_536;

const CONTENT_LENGTH: &[u8] = b"content-length";

/// A problem with one frame; the stream itself is still usable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    #[error("malformed frame header: {0}")]
    MalformedHeader(String),
    #[error("frame header has no Content-Length")]
    MissingContentLength,
    #[error("frame header longer than {max} bytes without a blank line")]
    HeaderTooLong { max: usize },
    #[error("frame body of {length} bytes exceeds the {max}-byte cap; skipped")]
    BodyTooLarge { length: usize, max: usize },
    #[error("frame body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error(transparent)]
    InvalidMessage(InvalidMessage),
    #[error("stream ended inside a frame ({0})")]
    Truncated(String),
    /// More JSON values than the frame's bytes allow (see [`FrameCodec::max_values`]): the
    /// body was not decoded (decoding would take ~50x its size in memory).
    #[error(
        "frame body holds up to {count} JSON values, over the cap of {max} ({per_kib} per KiB of the body cap, --{JSON_VALUES_CAP}); split the request"
    )]
    TooManyValues {
        count: usize,
        max: usize,
        per_kib: usize,
        id: Option<Id>,
    },
}

impl FrameError {
    /// The JSON-RPC error object a server sends back for this frame.
    pub fn to_error(&self) -> ErrorObject {
        let msg = self.to_string();
        match self {
            FrameError::BodyTooLarge { length, max } => {
                ErrorObject::new(codes::BODY_TOO_LARGE, msg)
                    .with_data(serde_json::json!({ "length": length, "max": max }))
            }
            FrameError::InvalidMessage(_) => ErrorObject::new(codes::INVALID_REQUEST, msg),
            FrameError::TooManyValues { count, max, .. } => {
                ErrorObject::new(codes::LIMIT_EXCEEDED, msg).with_data(
                    serde_json::json!({ "cap": JSON_VALUES_CAP, "limit": max, "got": count }),
                )
            }
            _ => ErrorObject::new(codes::PARSE_ERROR, msg),
        }
    }

    /// The id to answer with: only an invalid message whose `id` could still be read has one.
    pub fn id(&self) -> Option<Id> {
        match self {
            FrameError::InvalidMessage(e) => e.id.clone(),
            FrameError::TooManyValues { id, .. } => id.clone(),
            _ => None,
        }
    }

    /// The complete error response for this frame.
    pub fn to_response(&self) -> Response {
        Response::error(self.id(), self.to_error())
    }
}

/// Fatal transport errors: after one of these the connection is unusable.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("transport I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("could not serialise message: {0}")]
    Serialize(#[from] serde_json::Error),
    /// Outgoing messages obey the same cap as incoming ones so the peer can read them; the
    /// sender should send an error response instead.
    #[error("outgoing body of {length} bytes exceeds the {max}-byte cap")]
    OutgoingTooLarge { length: usize, max: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a header block.
    Header,
    /// Header read; waiting for `len` body bytes.
    Body { len: usize },
    /// Discarding the body of an oversized frame.
    Skip { remaining: usize },
    /// Lost sync: discarding input until the next `Content-Length`.
    Resync,
}

/// The framing state machine; see the module docs for its error recovery.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_body: usize,
    max_header: usize,
    values_per_kib: usize,
    max_values: usize,
    state: State,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BODY)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn find_ignore_case(haystack: &[u8], needle_lower: &[u8]) -> Option<usize> {
    haystack
        .windows(needle_lower.len())
        .position(|w| w.eq_ignore_ascii_case(needle_lower))
}

/// A header block that cannot be accepted, and the body length when it is nevertheless known.
struct HeaderRefused {
    error: FrameError,
    /// Set when every line parsed and `Content-Length` is valid but the frame is refused (an
    /// unsupported charset): its body is skipped exactly, never decoded or executed.
    known_length: Option<usize>,
}

/// Parse a header block (without its terminating blank line) into the body length.
fn parse_header_block(block: &[u8]) -> Result<usize, HeaderRefused> {
    let malformed = |m: String| HeaderRefused {
        error: FrameError::MalformedHeader(m),
        known_length: None,
    };
    let text = std::str::from_utf8(block)
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or_else(|| malformed("header block is not ASCII".into()))?;
    let mut length: Option<usize> = None;
    let mut refused_charset: Option<String> = None;
    for line in text.split("\r\n") {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| malformed(format!("header line without ':': {line:?}")))?;
        let name = name.trim();
        let value = value.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(malformed(format!("bad header name in {line:?}")));
        }
        if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed(format!(
                    "Content-Length is not a number: {value:?}"
                )));
            }
            let n: usize = value
                .parse()
                .map_err(|_| malformed(format!("Content-Length out of range: {value}")))?;
            if length.is_some_and(|old| old != n) {
                return Err(malformed("conflicting Content-Length headers".into()));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("content-type") {
            let charset = value
                .split(';')
                .skip(1)
                .filter_map(|p| p.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
                .map(|(_, v)| v.trim().trim_matches('"').to_ascii_lowercase());
            if let Some(cs) = charset
                && cs != "utf-8"
                && cs != "utf8"
            {
                refused_charset = Some(cs);
            }
        }
        // Other headers are ignored, as LSP asks.
    }
    let length = length.ok_or(HeaderRefused {
        error: FrameError::MissingContentLength,
        known_length: None,
    })?;
    match refused_charset {
        Some(cs) => Err(HeaderRefused {
            error: FrameError::MalformedHeader(format!(
                "unsupported charset {cs:?} (only utf-8); the body was skipped unread"
            )),
            known_length: Some(length),
        }),
        None => Ok(length),
    }
}

/// Whether a header block's first line is a well-formed `Content-Length: <digits>` (then a
/// later error in the block belongs to this frame, and no later `Content-Length` in it starts
/// another one).
fn starts_with_valid_length(block: &[u8]) -> bool {
    let first = block.split(|&b| b == b'\n').next().unwrap_or(block);
    let Ok(line) = std::str::from_utf8(first) else {
        return false;
    };
    let Some((name, value)) = line.split_once(':') else {
        return false;
    };
    let value = value.trim();
    name.trim().eq_ignore_ascii_case("content-length")
        && !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
        && value.parse::<usize>().is_ok()
}

/// An upper bound on the JSON values in `body` (every value but the first follows a `,`, `:`,
/// `[` or `{` outside a string), counted in one pass without parsing, so a body whose values
/// would take far more memory than its bytes is refused before any is built.
pub fn json_value_bound(body: &[u8]) -> usize {
    let (mut n, mut in_str, mut esc) = (1usize, false, false);
    for &b in body {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
        } else {
            match b {
                b'"' => in_str = true,
                b',' | b':' | b'[' | b'{' => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// The JSON-value cap of a body cap of `max_body` bytes at `per_kib` values per KiB.
fn max_values(max_body: usize, per_kib: usize) -> usize {
    (max_body / 1024)
        .saturating_mul(per_kib)
        .max(MIN_MAX_VALUES)
}

/// The `id` of a request body that will not be decoded (too many values), read without
/// building any value, so the client's call is answered instead of timing out.
fn peek_id(body: &[u8]) -> Option<Id> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<Id>,
    }
    serde_json::from_slice::<IdOnly>(body).ok()?.id
}

impl FrameCodec {
    /// A codec with the given body cap (bytes) and the default header cap.
    pub fn new(max_body: usize) -> Self {
        Self {
            max_body,
            max_header: DEFAULT_MAX_HEADER,
            values_per_kib: DEFAULT_VALUES_PER_KIB,
            max_values: max_values(max_body, DEFAULT_VALUES_PER_KIB),
            state: State::Header,
        }
    }

    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Cap on the JSON values of one body: [`Self::with_values_per_kib`] per KiB of
    /// `max_body` (default [`DEFAULT_VALUES_PER_KIB`]), at least [`MIN_MAX_VALUES`].
    pub fn max_values(&self) -> usize {
        self.max_values
    }

    /// Allow `per_kib` JSON values per KiB of the body cap in incoming bodies.
    pub fn with_values_per_kib(mut self, per_kib: usize) -> Self {
        self.values_per_kib = per_kib;
        self.max_values = max_values(self.max_body, per_kib);
        self
    }

    /// Write one message as a frame. Refuses bodies over the cap (see
    /// [`CodecError::OutgoingTooLarge`]) without writing anything.
    pub fn encode_message(&self, msg: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        let body = serde_json::to_vec(&msg.to_value())?;
        if body.len() > self.max_body {
            return Err(CodecError::OutgoingTooLarge {
                length: body.len(),
                max: self.max_body,
            });
        }
        let header = format!("Content-Length: {}\r\n\r\n", body.len());
        dst.reserve(header.len() + body.len());
        dst.put_slice(header.as_bytes());
        dst.put_slice(&body);
        Ok(())
    }

    /// Decode at most one frame from `src`. `Ok(None)`: need more input.
    fn decode_one(&mut self, src: &mut BytesMut) -> Option<Result<Message, FrameError>> {
        loop {
            match self.state {
                State::Header => {
                    // Tolerate stray blank lines between frames (some clients send them).
                    let skip = src
                        .iter()
                        .take_while(|b| **b == b'\r' || **b == b'\n')
                        .count();
                    src.advance(skip);
                    let crlf = find(src, b"\r\n\r\n");
                    // A header ended by a bare LF LF: refuse it at once (instead of waiting
                    // for a CRLF blank line that never comes) and resync at the next header.
                    if let Some(lf) = find(src, b"\n\n")
                        && crlf.is_none_or(|c| lf < c)
                        && lf <= self.max_header
                    {
                        src.advance(lf + 2);
                        self.state = State::Resync;
                        return Some(Err(FrameError::MalformedHeader(
                            "header lines must end with CRLF (\\r\\n), not a bare LF".into(),
                        )));
                    }
                    let Some(end) = crlf else {
                        if src.len() > self.max_header {
                            // Step past this position so resync cannot find the same header.
                            src.advance(1);
                            self.state = State::Resync;
                            return Some(Err(FrameError::HeaderTooLong {
                                max: self.max_header,
                            }));
                        }
                        return None;
                    };
                    if end > self.max_header {
                        src.advance(1);
                        self.state = State::Resync;
                        return Some(Err(FrameError::HeaderTooLong {
                            max: self.max_header,
                        }));
                    }
                    let parsed = parse_header_block(&src[..end]);
                    if let Err(HeaderRefused {
                        error,
                        known_length: None,
                    }) = &parsed
                        && !starts_with_valid_length(&src[..end])
                        && let Some(p) = find_ignore_case(&src[1..end], CONTENT_LENGTH)
                    {
                        // A bad block with another `Content-Length` in it, not headed by a valid
                        // one: junk in front of a header, or a bad header line followed by a
                        // real header. Restart at that `Content-Length` so the frame it heads
                        // is not lost.
                        let error = error.clone();
                        src.advance(p + 1);
                        return Some(Err(error));
                    }
                    src.advance(end + 4);
                    match parsed {
                        Ok(len) if len > self.max_body => {
                            self.state = State::Skip { remaining: len };
                            return Some(Err(FrameError::BodyTooLarge {
                                length: len,
                                max: self.max_body,
                            }));
                        }
                        Ok(len) => self.state = State::Body { len },
                        Err(HeaderRefused {
                            error,
                            known_length: Some(len),
                        }) => {
                            // Refused but well-formed: skip its body exactly, never run it.
                            self.state = State::Skip { remaining: len };
                            return Some(Err(error));
                        }
                        Err(HeaderRefused { error, .. }) => {
                            self.state = State::Resync;
                            return Some(Err(error));
                        }
                    }
                }
                State::Body { len } => {
                    if src.len() < len {
                        src.reserve(len - src.len());
                        return None;
                    }
                    let body = src.split_to(len);
                    self.state = State::Header;
                    let count = json_value_bound(&body);
                    if count > self.max_values {
                        return Some(Err(FrameError::TooManyValues {
                            count,
                            max: self.max_values,
                            per_kib: self.values_per_kib,
                            id: peek_id(&body),
                        }));
                    }
                    return Some(Message::from_slice(&body));
                }
                State::Skip { remaining } => {
                    let n = remaining.min(src.len());
                    src.advance(n);
                    if n < remaining {
                        self.state = State::Skip {
                            remaining: remaining - n,
                        };
                        return None;
                    }
                    self.state = State::Header;
                }
                State::Resync => match find_ignore_case(src, CONTENT_LENGTH) {
                    Some(pos) => {
                        src.advance(pos);
                        self.state = State::Header;
                    }
                    None => {
                        // Keep a tail that could be the start of a split `Content-Length`.
                        let keep = CONTENT_LENGTH.len() - 1;
                        if src.len() > keep {
                            src.advance(src.len() - keep);
                        }
                        return None;
                    }
                },
            }
        }
    }

    /// End of input: report a frame cut short, discard everything, and reset.
    fn decode_at_eof(&mut self, src: &mut BytesMut) -> Option<Result<Message, FrameError>> {
        if let Some(item) = self.decode_one(src) {
            return Some(item);
        }
        let state = std::mem::replace(&mut self.state, State::Header);
        let leftover = src.len();
        src.clear();
        match state {
            State::Body { len } => Some(Err(FrameError::Truncated(format!(
                "body has {leftover} of {len} bytes"
            )))),
            State::Header if leftover > 0 => Some(Err(FrameError::Truncated(format!(
                "{leftover} bytes of an unfinished header"
            )))),
            _ => None,
        }
    }
}

impl Decoder for FrameCodec {
    /// One frame: a message, or the recoverable error of that frame.
    type Item = Result<Message, FrameError>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        Ok(self.decode_one(src))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        Ok(self.decode_at_eof(src))
    }
}

impl Encoder<Message> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_message(&item, dst)
    }
}

impl Encoder<&Message> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_message(item, dst)
    }
}

/// Blocking frame reader over any `std::io::Read` (a pipe, a `TcpStream`, a byte slice).
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    codec: FrameCodec,
    eof: bool,
}

impl<R: std::io::Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_codec(inner, FrameCodec::default())
    }

    pub fn with_codec(inner: R, codec: FrameCodec) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
            codec,
            eof: false,
        }
    }

    /// The next frame. `Ok(None)`: the peer closed the stream (after any leftover partial
    /// frame was reported as [`FrameError::Truncated`]). `Err`: the transport failed.
    pub fn read_frame(&mut self) -> std::io::Result<Option<Result<Message, FrameError>>> {
        let mut chunk = [0u8; 8 * 1024];
        loop {
            if self.eof {
                return Ok(self.codec.decode_at_eof(&mut self.buf));
            }
            if let Some(item) = self.codec.decode_one(&mut self.buf) {
                return Ok(Some(item));
            }
            let n = match self.inner.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                self.eof = true;
            } else {
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

/// Blocking frame writer over any `std::io::Write`; flushes after every message so a peer
/// waiting for an answer never waits on our buffer.
pub struct FrameWriter<W> {
    inner: W,
    codec: FrameCodec,
    buf: BytesMut,
}

impl<W: std::io::Write> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        Self::with_codec(inner, FrameCodec::default())
    }

    pub fn with_codec(inner: W, codec: FrameCodec) -> Self {
        Self {
            inner,
            codec,
            buf: BytesMut::new(),
        }
    }

    pub fn write_message(&mut self, msg: &Message) -> Result<(), CodecError> {
        self.buf.clear();
        self.codec.encode_message(msg, &mut self.buf)?;
        self.inner.write_all(&self.buf)?;
        self.inner.flush()?;
        Ok(())
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}
