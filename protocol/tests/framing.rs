//! The `Content-Length` codec: round trips, partial input, and recovery from every bad-frame
//! class. Frames are built by hand here (not with the encoder) so the decoder is checked
//! against the LSP format itself.
use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{Value, json};
use sotalign_protocol::codes;
use sotalign_protocol::framing::{FrameCodec, FrameError, FrameReader, FrameWriter};
use sotalign_protocol::{Message, Notification, Request};
use tokio_util::codec::{Decoder, Encoder};

fn frame(body: &str) -> String {
    format!("Content-Length: {}\r\n\r\n{}", body.len(), body)
}

fn req(id: i64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "sotalign/status"}).to_string()
}

/// Decode everything in `input`, fed in chunks of `chunk` bytes, then signal end of input.
fn decode_all(
    codec: &mut FrameCodec,
    input: &[u8],
    chunk: usize,
) -> Vec<Result<Message, FrameError>> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            out.push(item);
        }
    }
    while let Some(item) = codec.decode_eof(&mut buf).unwrap() {
        out.push(item);
    }
    out
}

fn request_id(item: &Result<Message, FrameError>) -> i64 {
    match item {
        Ok(Message::Request(Request {
            id: sotalign_protocol::Id::Number(n),
            ..
        })) => *n,
        other => panic!("expected a request, got {other:?}"),
    }
}

#[test]
fn encoder_writes_the_lsp_format_and_decoder_reads_it_back() {
    let msg = Message::Notification(Notification::new("exit", &()).unwrap());
    let mut buf = BytesMut::new();
    FrameCodec::default().encode(msg.clone(), &mut buf).unwrap();
    assert_eq!(
        &buf[..],
        frame(r#"{"jsonrpc":"2.0","method":"exit"}"#).as_bytes()
    );
    let items = decode_all(&mut FrameCodec::default(), &buf, 1 << 20);
    assert_eq!(items, vec![Ok(msg)]);
}

#[test]
fn two_frames_in_one_buffer_and_byte_by_byte() {
    let input = format!("{}{}", frame(&req(1)), frame(&req(2)));
    for chunk in [1, 2, 7, 1 << 20] {
        let items = decode_all(&mut FrameCodec::default(), input.as_bytes(), chunk);
        assert_eq!(
            items.iter().map(request_id).collect::<Vec<_>>(),
            vec![1, 2],
            "chunk {chunk}"
        );
    }
}

#[test]
fn multibyte_utf8_body_length_counts_bytes() {
    let body = json!({"jsonrpc":"2.0","id":1,"method":"sotalign/search","params":{"query":{"text":"pingüino 🐧"}}})
        .to_string();
    let items = decode_all(&mut FrameCodec::default(), frame(&body).as_bytes(), 3);
    assert_eq!(request_id(&items[0]), 1);
    assert_eq!(items.len(), 1);
}

#[test]
fn headers_are_case_insensitive_and_extra_headers_ignored() {
    let body = req(5);
    let input = format!(
        "content-length: {}\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\nX-Other: 1\r\n\r\n{body}",
        body.len()
    );
    let items = decode_all(&mut FrameCodec::default(), input.as_bytes(), 4);
    assert_eq!(items.iter().map(request_id).collect::<Vec<_>>(), vec![5]);
}

#[test]
fn invalid_json_is_a_parse_error_and_the_next_frame_survives() {
    let input = format!("{}{}", frame("{not json"), frame(&req(2)));
    let items = decode_all(&mut FrameCodec::default(), input.as_bytes(), 5);
    assert_eq!(items.len(), 2);
    let err = items[0].as_ref().unwrap_err();
    assert!(matches!(err, FrameError::InvalidJson(_)));
    let resp = err.to_response();
    assert_eq!(resp.id, None);
    assert_eq!(resp.outcome.unwrap_err().code, codes::PARSE_ERROR);
    assert_eq!(request_id(&items[1]), 2);
}

#[test]
fn invalid_message_keeps_its_id_for_the_error_response() {
    let bad = json!({"jsonrpc": "1.0", "id": 9, "method": "x"}).to_string();
    let input = format!("{}{}", frame(&bad), frame(&req(3)));
    let items = decode_all(&mut FrameCodec::default(), input.as_bytes(), 1 << 10);
    let resp = items[0].as_ref().unwrap_err().to_response();
    assert_eq!(resp.id, Some(9.into()));
    assert_eq!(resp.outcome.unwrap_err().code, codes::INVALID_REQUEST);
    assert_eq!(request_id(&items[1]), 3);
}

#[test]
fn oversized_body_is_skipped_without_buffering_and_reported_once() {
    let mut codec = FrameCodec::new(64);
    let big = format!("[{}]", "1,".repeat(500) + "1");
    let input = format!("{}{}", frame(&big), frame(&req(4)));
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for piece in input.as_bytes().chunks(16) {
        buf.extend_from_slice(piece);
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            items.push(item);
        }
        // The skipped body never accumulates: only a partial header or the small frame.
        assert!(buf.len() <= 64 + 32, "buffered {} bytes", buf.len());
    }
    assert_eq!(items.len(), 2);
    let err = items[0].as_ref().unwrap_err();
    assert_eq!(
        err,
        &FrameError::BodyTooLarge {
            length: big.len(),
            max: 64
        }
    );
    let e = err.to_error();
    assert_eq!(e.code, codes::BODY_TOO_LARGE);
    assert_eq!(e.data, Some(json!({"length": big.len(), "max": 64})));
    assert_eq!(request_id(&items[1]), 4);
}

#[test]
fn default_cap_is_16_mib() {
    assert_eq!(FrameCodec::default().max_body(), 16 * 1024 * 1024);
    let input = format!("Content-Length: {}\r\n\r\n", 16 * 1024 * 1024 + 1);
    let items = decode_all(&mut FrameCodec::default(), input.as_bytes(), 1 << 10);
    assert!(matches!(items[0], Err(FrameError::BodyTooLarge { .. })));
}

#[test]
fn outgoing_messages_obey_the_cap() {
    let msg =
        Message::Notification(Notification::new("x", &json!({"s": "y".repeat(100)})).unwrap());
    let mut buf = BytesMut::new();
    let err = FrameCodec::new(50).encode(msg, &mut buf).unwrap_err();
    assert!(matches!(
        err,
        sotalign_protocol::CodecError::OutgoingTooLarge { max: 50, .. }
    ));
    assert!(buf.is_empty());
}

#[test]
fn missing_content_length_resyncs_on_the_next_header() {
    // The bad frame's body ({"a":1}) has unknown length: it is discarded up to the next header.
    let input = format!(
        "Content-Type: application/json\r\n\r\n{{\"a\":1}}{}",
        frame(&req(6))
    );
    let items = decode_all(&mut FrameCodec::default(), input.as_bytes(), 3);
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0], Err(FrameError::MissingContentLength));
    assert_eq!(
        items[0].as_ref().unwrap_err().to_error().code,
        codes::PARSE_ERROR
    );
    assert_eq!(request_id(&items[1]), 6);
}

#[test]
fn malformed_headers_are_rejected_and_the_stream_recovers() {
    let cases = [
        "Content-Length: abc\r\n\r\n",
        "Content-Length: -5\r\n\r\n",
        "Content-Length: 99999999999999999999999999\r\n\r\n",
        "Content-Length 12\r\n\r\n",
        "Content-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "Content-Length: 2\r\nX-Caf\u{e9}: 1\r\n\r\n",
    ];
    for bad in cases {
        let input = format!("{bad}{}", frame(&req(7)));
        let items = decode_all(&mut FrameCodec::default(), input.as_bytes(), 2);
        assert!(
            matches!(items[0], Err(FrameError::MalformedHeader(_))),
            "{bad:?} gave {items:?}"
        );
        let last = items.last().unwrap();
        assert_eq!(request_id(last), 7, "{bad:?}: {items:?}");
        assert!(
            items[1..items.len() - 1].iter().all(Result::is_err),
            "{bad:?}: {items:?}"
        );
    }
}

/// Issue 14: a frame with a refused charset is answered with an error and its body skipped
/// exactly: it is never decoded (so never executed), and the next frame is read normally.
#[test]
fn refused_charset_skips_its_body_exactly_and_never_decodes_it() {
    for ct_first in [true, false] {
        let body = req(70);
        let ct = "Content-Type: application/vscode-jsonrpc; charset=latin1";
        let cl = format!("Content-Length: {}", body.len());
        let header = if ct_first {
            format!("{ct}\r\n{cl}")
        } else {
            format!("{cl}\r\n{ct}")
        };
        let input = format!("{header}\r\n\r\n{body}{}", frame(&req(71)));
        for chunk in [1, 7, 4096] {
            let items = decode_all(&mut FrameCodec::default(), input.as_bytes(), chunk);
            assert_eq!(items.len(), 2, "{items:?}");
            assert!(
                matches!(items[0], Err(FrameError::MalformedHeader(_))),
                "{items:?}"
            );
            assert_eq!(request_id(&items[1]), 71, "{items:?}");
        }
    }
}

/// Issue 14: a bad `Content-Length` line followed by a good one in the same block costs one
/// error, not the frame the good one heads.
#[test]
fn bad_length_line_then_a_good_header_keeps_the_frame() {
    let body = req(72);
    let input = format!(
        "Content-Length: abc\r\nContent-Length: {}\r\n\r\n{body}{}",
        body.len(),
        frame(&req(73))
    );
    for chunk in [1, 5, 4096] {
        let items = decode_all(&mut FrameCodec::default(), input.as_bytes(), chunk);
        assert_eq!(items.len(), 3, "{items:?}");
        assert!(items[0].is_err());
        assert_eq!(request_id(&items[1]), 72);
        assert_eq!(request_id(&items[2]), 73);
    }
}

/// Issue 14: an LF-only header is refused at once, not after 8 KiB of silence.
#[test]
fn lf_only_header_is_refused_at_once() {
    let body = req(74);
    let input = format!("Content-Length: {}\n\n{body}", body.len());
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::from(input.as_bytes());
    let item = codec.decode(&mut buf).unwrap();
    assert!(
        matches!(item, Some(Err(FrameError::MalformedHeader(_)))),
        "{item:?}"
    );
    let mut buf2 = BytesMut::from(format!("{input}{}", frame(&req(75))).as_bytes());
    let mut codec = FrameCodec::default();
    let mut ids = Vec::new();
    while let Some(item) = codec.decode(&mut buf2).unwrap() {
        if let Ok(m) = &item {
            ids.push(request_id(&Ok(m.clone())));
        }
    }
    assert_eq!(ids, vec![75]);
}

/// Issue 14: a body whose values would take far more memory than its bytes is refused
/// unparsed, keeping the request id so the call is answered.
#[test]
fn too_many_json_values_are_refused_with_the_request_id() {
    let zeros = vec!["0"; 200_000].join(",");
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":76,"method":"sotalign/status","params":{{"pad":[{zeros}]}}}}"#
    );
    let mut codec = FrameCodec::new(1 << 20);
    assert_eq!(codec.max_values(), 131_072);
    let items = decode_all(
        &mut codec,
        format!("{}{}", frame(&body), frame(&req(77))).as_bytes(),
        4096,
    );
    assert_eq!(
        items.len(),
        2,
        "{:?}",
        items.iter().map(|i| i.is_ok()).collect::<Vec<_>>()
    );
    let e = items[0].as_ref().unwrap_err();
    assert!(matches!(e, FrameError::TooManyValues { .. }), "{e:?}");
    assert_eq!(e.to_error().code, codes::LIMIT_EXCEEDED);
    assert_eq!(e.id(), Some(sotalign_protocol::Id::Number(76)));
    assert_eq!(request_id(&items[1]), 77);
    // Real numbers (floats with their digits) stay well under the cap.
    let floats = vec!["-0.0123456"; 50_000].join(",");
    let ok = format!(r#"{{"jsonrpc":"2.0","id":78,"method":"x","params":{{"v":[{floats}]}}}}"#);
    let items = decode_all(&mut FrameCodec::new(1 << 20), frame(&ok).as_bytes(), 4096);
    assert_eq!(request_id(&items[0]), 78);
}

#[test]
fn garbage_before_a_header_costs_one_error_not_the_frame() {
    let input = format!("hello there{}", frame(&req(8)));
    let items = decode_all(&mut FrameCodec::default(), input.as_bytes(), 4);
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(matches!(items[0], Err(FrameError::MalformedHeader(_))));
    assert_eq!(request_id(&items[1]), 8);
}

#[test]
fn junk_lines_before_a_valid_header_cost_one_error() {
    let input = format!("junk line\r\n{}", frame(&req(10)));
    let items = decode_all(&mut FrameCodec::default(), input.as_bytes(), 4);
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(matches!(items[0], Err(FrameError::MalformedHeader(_))));
    assert_eq!(request_id(&items[1]), 10);
}

#[test]
fn endless_header_is_cut_off_and_the_stream_recovers() {
    let input = format!("Content-Length: 5{}{}", "x".repeat(20_000), frame(&req(9)));
    let items = decode_all(&mut FrameCodec::default(), input.as_bytes(), 1000);
    assert!(
        matches!(items[0], Err(FrameError::HeaderTooLong { .. })),
        "{items:?}"
    );
    assert_eq!(request_id(items.last().unwrap()), 9);
}

#[test]
fn truncated_stream_is_reported_at_eof() {
    let full = frame(&req(1));
    let items = decode_all(
        &mut FrameCodec::default(),
        &full.as_bytes()[..full.len() - 3],
        8,
    );
    assert!(
        matches!(items[..], [Err(FrameError::Truncated(_))]),
        "{items:?}"
    );
    let items = decode_all(&mut FrameCodec::default(), b"Content-Len", 8);
    assert!(
        matches!(items[..], [Err(FrameError::Truncated(_))]),
        "{items:?}"
    );
    assert!(decode_all(&mut FrameCodec::default(), b"", 8).is_empty());
}

#[test]
fn sync_reader_and_writer_agree_and_survive_bad_frames() {
    let mut wire = Vec::new();
    {
        let mut w = FrameWriter::new(&mut wire);
        w.write_message(&Message::Request(
            Request::new(1, "sotalign/status", &()).unwrap(),
        ))
        .unwrap();
    }
    wire.extend_from_slice(frame("[1,").as_bytes());
    wire.extend_from_slice(frame(&req(2)).as_bytes());
    // A reader that hands out 3 bytes per read, like a slow pipe.
    struct Trickle<'a>(&'a [u8]);
    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(3).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let mut r = FrameReader::new(Trickle(&wire));
    assert_eq!(request_id(&r.read_frame().unwrap().unwrap()), 1);
    assert!(matches!(
        r.read_frame().unwrap(),
        Some(Err(FrameError::InvalidJson(_)))
    ));
    assert_eq!(request_id(&r.read_frame().unwrap().unwrap()), 2);
    assert!(r.read_frame().unwrap().is_none());
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        // Short decimals: serde_json (without `float_roundtrip`) may parse 17-digit floats
        // one ulp off, which is a property of the JSON parser, not of the framing.
        (-1_000_000i64..1_000_000).prop_map(|n| Value::from(n as f64 / 1000.0)),
        ".*".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z_]{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any params body survives encode -> split at an arbitrary point -> decode.
    #[test]
    fn arbitrary_bodies_round_trip(params in arb_json(), id in any::<i64>(), split in 0usize..4096) {
        let params = match params { v @ (Value::Object(_) | Value::Array(_)) => v, v => json!([v]) };
        let msg = Message::Request(Request { id: id.into(), method: "m".into(), params: Some(params) });
        let mut wire = BytesMut::new();
        FrameCodec::default().encode(&msg, &mut wire).unwrap();
        let wire = wire.freeze();
        let cut = split.min(wire.len());
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&wire[..cut]);
        let first = codec.decode(&mut buf).unwrap();
        buf.extend_from_slice(&wire[cut..]);
        let item = match first { Some(item) => item, None => codec.decode(&mut buf).unwrap().unwrap() };
        prop_assert_eq!(item, Ok(msg));
        prop_assert!(buf.is_empty());
    }

    /// Arbitrary bytes never panic the decoder, and a valid frame after them is still read
    /// (possibly after some errors), as long as the junk holds no `Content-Length` of its own.
    #[test]
    fn junk_then_valid_frame_recovers(junk in prop::collection::vec(any::<u8>(), 0..300)) {
        let lower = junk.to_ascii_lowercase();
        prop_assume!(!lower.windows(14).any(|w| w == b"content-length"));
        let mut input = junk.clone();
        input.extend_from_slice(frame(&req(42)).as_bytes());
        let items = decode_all(&mut FrameCodec::default(), &input, 17);
        let last = items.last().expect("at least the valid frame");
        prop_assert_eq!(request_id(last), 42);
    }
}
