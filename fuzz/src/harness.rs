//! The properties the fuzz targets check, shared with the stable corpus test
//! (`tests/tests/fuzz_harness.rs` includes this file), so CI exercises them without nightly.
//!
//! Framing: for any bytes, fed whole or in arbitrary chunks,
//! - the decoder never panics and never returns a fatal error (bad frames are items);
//! - every call either yields an item, consumes input or waits for more (no livelock);
//! - every successfully decoded message re-encodes to a frame that decodes to the same message;
//! - every frame error maps to a JSON-RPC error response that serialises.
//! Message parsing: any body either parses or gives a typed error whose response serialises,
//! and a parsed message survives a serialise/parse round trip.
use bytes::BytesMut;
use sotalign_protocol::{FrameCodec, Message};
use tokio_util::codec::Decoder;

/// Decode everything in `data`, delivered in chunks whose sizes come from `chunk_seed`.
pub fn check_framing(data: &[u8]) {
    let (ctl, data) = match data.split_first() {
        Some((c, rest)) => (*c, rest),
        None => return,
    };
    // Small caps make the oversized-body path reachable; 0 means the default 16 MiB.
    let max_body = match ctl & 0x3 {
        0 => sotalign_protocol::framing::DEFAULT_MAX_BODY,
        1 => 64,
        2 => 1024,
        _ => 4096,
    };
    let chunk = 1 + (ctl >> 2) as usize; // 1..=64 bytes per read
    let mut codec = FrameCodec::new(max_body);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        drain(&mut codec, &mut buf, &mut items, false);
    }
    drain(&mut codec, &mut buf, &mut items, true);
    for item in items {
        match item {
            Ok(msg) => roundtrip(&msg),
            Err(e) => {
                let resp = Message::Response(e.to_response());
                serde_json::to_vec(&resp.to_value()).expect("an error response serialises");
            }
        }
    }
}

fn drain(
    codec: &mut FrameCodec,
    buf: &mut BytesMut,
    items: &mut Vec<Result<Message, sotalign_protocol::FrameError>>,
    eof: bool,
) {
    // Each productive call consumes input or yields an item, so this bound is generous.
    let mut budget = 4 * buf.len() + 16;
    loop {
        let before = buf.len();
        let out = if eof {
            codec.decode_eof(buf)
        } else {
            codec.decode(buf)
        };
        let out = out.expect("the decoder reports bad frames as items, never as fatal errors");
        match out {
            Some(item) => items.push(item),
            None => {
                if eof || buf.len() == before {
                    return;
                }
            }
        }
        budget = budget.checked_sub(1).expect("decoder made no progress");
    }
}

/// A decoded message re-encodes to one frame that decodes back to itself.
fn roundtrip(msg: &Message) {
    let mut codec = FrameCodec::new(usize::MAX / 4);
    let mut out = BytesMut::new();
    codec
        .encode_message(msg, &mut out)
        .expect("a decoded message re-encodes");
    let again = codec
        .decode(&mut out)
        .expect("no fatal error")
        .expect("one whole frame");
    assert_eq!(
        again.as_ref().ok(),
        Some(msg),
        "frame round trip changed the message"
    );
    assert!(out.is_empty(), "re-encoded frame left {} bytes", out.len());
}

/// Parse one body as a message.
pub fn check_message(body: &[u8]) {
    match Message::from_slice(body) {
        Ok(msg) => {
            let text = serde_json::to_vec(&msg.to_value()).expect("a message serialises");
            let back = Message::from_slice(&text).expect("a serialised message parses");
            assert_eq!(back, msg, "serialise/parse round trip changed the message");
        }
        Err(e) => {
            serde_json::to_vec(&Message::Response(e.to_response()).to_value())
                .expect("an error response serialises");
        }
    }
}
