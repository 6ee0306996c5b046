//! Every bad-input class gets a JSON-RPC error and the daemon keeps serving (checked with a
//! follow-up `sotalign/status` on the same connection each time).
mod common;

use std::io::Write;

use common::*;
use serde_json::{Value, json};
use sotalign_protocol::{Message, codes};

use common::raw::Raw;

/// What these tests check on a raw connection.
impl<R: std::io::Read, W: Write> Raw<R, W> {
    /// Read until `sotalign/jobFinished` for `job` arrives.
    fn wait_finished(&mut self, job: &Value) {
        loop {
            if let Message::Notification(n) = self.r.read_frame().unwrap().expect("closed").unwrap()
                && n.method == "sotalign/jobFinished"
                && n.params.as_ref().map(|p| &p["job"]) == Some(job)
            {
                assert_eq!(n.params.unwrap()["state"], json!("succeeded"));
                return;
            }
        }
    }

    fn expect_error(&mut self, id: Option<i64>, code: i64) -> Value {
        let (rid, out) = self.response();
        assert_eq!(rid, id, "response id");
        match out {
            Err((c, data, _)) => {
                assert_eq!(c, code, "error code (data {data})");
                data
            }
            Ok(v) => panic!("expected error {code}, got result {v}"),
        }
    }

    /// The daemon still answers a normal request.
    fn still_serving(&mut self) {
        let id = self.call("sotalign/status", json!({}));
        let (rid, out) = self.response();
        assert_eq!(rid, Some(id));
        assert!(out.expect("status works").get("counts").is_some());
    }
}

#[test]
fn every_bad_input_class_is_answered_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture(dir.path(), 10, 5, 5);
    let (_d, stdout, stdin) = spawn_stdio_raw(&dir.path().join("data"), &["--max-body", "65536"]);
    let mut raw = Raw::new(stdout, stdin, 100);
    // Before initialize: -32002.
    let id = raw.call("sotalign/status", json!({}));
    raw.expect_error(Some(id), codes::SERVER_NOT_INITIALIZED);
    let id = raw.call(
        "initialize",
        json!({"processId": null, "capabilities": {}, "clientInfo": {"name": "errors-test"}}),
    );
    let (rid, out) = raw.response();
    assert_eq!(rid, Some(id));
    out.expect("initialize works");
    raw.frame(r#"{"jsonrpc":"2.0","method":"initialized","params":{}}"#);
    raw.call(
        "sotalign/ingest",
        json!({"source": {"manifest": fx.manifest.display().to_string()}}),
    );
    let (_, out) = raw.response();
    let job = out.unwrap()["job"].clone();
    raw.wait_finished(&job);
    raw.still_serving();

    // Malformed header: non-numeric Content-Length -> PARSE_ERROR, resync on the next frame.
    raw.bytes(b"Content-Length: abc\r\n\r\n{}");
    raw.expect_error(None, codes::PARSE_ERROR);
    raw.still_serving();
    // Header line without a colon.
    raw.bytes(b"garbage header\r\n\r\n");
    raw.expect_error(None, codes::PARSE_ERROR);
    raw.still_serving();
    // Invalid JSON body of a known length.
    raw.frame("{\"jsonrpc\": \"2.0\", \"id\": 5, \"method\": ");
    raw.expect_error(None, codes::PARSE_ERROR);
    raw.still_serving();
    // Valid JSON, not a JSON-RPC message (a batch).
    raw.frame("[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"sotalign/status\"}]");
    raw.expect_error(None, codes::INVALID_REQUEST);
    raw.still_serving();
    // Oversized body (cap 64 KiB here): skipped unread, BODY_TOO_LARGE with the numbers.
    let big = "x".repeat(100_000);
    raw.frame(&big);
    let data = raw.expect_error(None, codes::BODY_TOO_LARGE);
    assert_eq!(data, json!({"length": 100_000, "max": 65536}));
    raw.still_serving();
    // Unknown method.
    let id = raw.call("sotalign/noSuchThing", json!({}));
    raw.expect_error(Some(id), codes::METHOD_NOT_FOUND);
    raw.still_serving();
    // Wrong params (type error, missing field).
    let id = raw.call("sotalign/getSample", json!({"id": "seventeen"}));
    raw.expect_error(Some(id), codes::INVALID_PARAMS);
    let id = raw.call("sotalign/confirm", json!({"image": 1}));
    raw.expect_error(Some(id), codes::INVALID_PARAMS);
    raw.still_serving();
    // Unknown ids: sample, job, decision, run.
    let id = raw.call("sotalign/getSample", json!({"id": 987654}));
    assert_eq!(
        raw.expect_error(Some(id), codes::UNKNOWN_SAMPLE),
        json!({"sample": 987654})
    );
    let id = raw.call("sotalign/cancel", json!({"job": 4242}));
    raw.expect_error(Some(id), codes::UNKNOWN_JOB);
    let id = raw.call("sotalign/undo", json!({"decision": 4242}));
    raw.expect_error(Some(id), codes::UNKNOWN_DECISION);
    let id = raw.call("sotalign/confirm", json!({"image": 987654, "text": 1}));
    raw.expect_error(Some(id), codes::UNKNOWN_SAMPLE);
    raw.still_serving();
    // A NaN vector and a wrong dimension (the store holds 384-d texts, 1280-d images).
    let mut v: Vec<Value> = (0..384).map(|i| json!(i as f64 / 384.0)).collect();
    v[7] = json!("NaN");
    let id = raw.call(
        "sotalign/ingest",
        json!({"source": {"embedded": [{"modality": "text", "key": "bad", "vector": v}]}}),
    );
    assert_eq!(
        raw.expect_error(Some(id), codes::NON_FINITE_VECTOR)["index"],
        json!(7)
    );
    let id = raw.call("sotalign/ingest", json!({"source": {"embedded": [{"modality": "text", "key": "bad", "vector": [1.0, 2.0, 3.0]}]}}));
    assert_eq!(
        raw.expect_error(Some(id), codes::DIMENSION_MISMATCH),
        json!({"expected": 384, "actual": 3})
    );
    // Wrong modality in a decision; a missing manifest.
    let (img, txt) = first_ids(&mut raw);
    let id = raw.call("sotalign/confirm", json!({"image": txt, "text": img}));
    raw.expect_error(Some(id), codes::WRONG_MODALITY);
    let id = raw.call(
        "sotalign/ingest",
        json!({"source": {"manifest": "/nonexistent/manifest.jsonl"}}),
    );
    raw.expect_error(Some(id), codes::INVALID_INPUT);
    // Search with a NaN vector needs a model first: NOT_READY, still an error not a crash.
    let id = raw.call(
        "sotalign/search",
        json!({"query": {"vector": {"modality": "text", "values": [1.0, "NaN"]}}}),
    );
    raw.expect_error(Some(id), codes::NOT_READY);
    raw.still_serving();
    // Nothing bad was stored: the counts are the fixture's.
    let id = raw.call("sotalign/status", json!({}));
    let (_, out) = raw.response();
    let st = out.unwrap();
    assert_eq!(st["counts"]["texts"], json!(20));
    let _ = id;
}

fn first_ids<R: std::io::Read, W: Write>(raw: &mut Raw<R, W>) -> (u64, u64) {
    let mut get = |m: &str| {
        raw.call("sotalign/listSamples", json!({"modality": m, "limit": 1}));
        let (_, out) = raw.response();
        out.unwrap()["items"][0]["id"].as_u64().unwrap()
    };
    (get("image"), get("text"))
}
