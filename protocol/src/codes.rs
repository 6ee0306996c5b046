//! JSON-RPC error codes: the standard ones, the LSP ones a generic client expects, and
//! sotalign's own.
//!
//! sotalign's own codes are positive (1000-1999) so they can never collide with the ranges
//! JSON-RPC (-32768..-32000) and LSP (-32899..-32800) reserve. Every error the daemon sends
//! carries one of these codes; `data` (when present) is a JSON object with machine-readable
//! details named in each constant's documentation.

/// The body was not valid JSON, or the frame around it was malformed (bad or missing
/// `Content-Length`, header block too long). `id` is null because nothing could be read.
pub const PARSE_ERROR: i64 = -32700;
/// Valid JSON, but not a JSON-RPC 2.0 request/notification/response object (wrong `jsonrpc`,
/// missing `method`, a batch array: LSP framing carries one message per frame).
pub const INVALID_REQUEST: i64 = -32600;
/// No such method. Notifications with unknown methods are ignored instead (JSON-RPC rule).
pub const METHOD_NOT_FOUND: i64 = -32601;
/// `params` did not match the method's parameter type; `message` says which field and why.
pub const INVALID_PARAMS: i64 = -32602;
/// A bug or an unexpected failure inside the daemon; nothing the client did wrong.
pub const INTERNAL_ERROR: i64 = -32603;
/// LSP: a request other than `initialize` arrived before `initialize` succeeded.
pub const SERVER_NOT_INITIALIZED: i64 = -32002;
/// LSP: the request was cancelled (`$/cancelRequest`) before it completed.
pub const REQUEST_CANCELLED: i64 = -32800;

/// A sample id that the store does not hold. `data: {"sample": id}`.
pub const UNKNOWN_SAMPLE: i64 = 1001;
/// A pair (image, text) that has no decision or known pairing when one is required.
/// `data: {"image": id, "text": id}`.
pub const UNKNOWN_PAIR: i64 = 1002;
/// A job id the daemon never issued. `data: {"job": id}`.
pub const UNKNOWN_JOB: i64 = 1003;
/// A decision id the store does not hold. `data: {"decision": id}`.
pub const UNKNOWN_DECISION: i64 = 1004;
/// An alignment run id the store does not hold. `data: {"run": id}`.
pub const UNKNOWN_RUN: i64 = 1005;
/// A vector whose length differs from the encoder/model dimension.
/// `data: {"expected": n, "actual": m}`.
pub const DIMENSION_MISMATCH: i64 = 1010;
/// A vector containing NaN or +-Infinity (sent as `null`, `"NaN"`, `"Infinity"`, `"-Infinity"`
/// or a number outside the f32 range). `data: {"index": i}` of the first bad component.
pub const NON_FINITE_VECTOR: i64 = 1011;
/// Two samples of the same modality, or a text where an image was expected (and vice versa).
/// `data: {"sample": id, "expected": "image"|"text"}`.
pub const WRONG_MODALITY: i64 = 1012;
/// A job of the same kind is already running (one alignment at a time; one ingest at a time).
/// `data: {"job": running_job_id}`.
pub const JOB_CONFLICT: i64 = 1020;
/// The request needs something that does not exist yet: no aligned model (run `sotalign/align`
/// first), samples not yet encoded, or no held-out pairs to evaluate on. `data: {"reason": ...}`.
pub const NOT_READY: i64 = 1021;
/// The decision contradicts the store's state: deciding on a held-out pair, undoing a decision
/// that was already undone. Nothing was written. `data: {"reason": ...}`.
pub const DECISION_CONFLICT: i64 = 1022;
/// The pair changed since the client showed it (a decision or undo touching either sample
/// committed after `shownRevision`). Nothing was written; fetch the next item.
/// `data: {"revision": current}`.
pub const STALE_DECISION: i64 = 1023;
/// Input the daemon could read but not accept: a manifest line that does not parse, a corrupt
/// image, a missing folder. `data: {"path": ..., "line": n}` where known.
pub const INVALID_INPUT: i64 = 1030;
/// A frame's `Content-Length` exceeded the daemon's body cap; its body was skipped unread.
/// `data: {"length": n, "max": cap}`.
pub const BODY_TOO_LARGE: i64 = 1031;
/// A request asked for more than one of the daemon's caps allows (training steps, dimensions,
/// file sizes, JSON values in one frame, ...). `data.cap` names the cap (its `sotalign serve`
/// flag without the dashes), `data.limit` its value, `data.got` what was asked for.
pub const LIMIT_EXCEEDED: i64 = 1032;
/// A path a request named lies outside the directories the daemon may read (`--allow-dir`).
pub const PATH_NOT_ALLOWED: i64 = 1041;
/// `initialize` carried a missing or wrong auth token; the server closes the connection
/// after sending this error.
pub const UNAUTHORIZED: i64 = 1040;
/// The durable store failed (disk full, I/O error). The operation was NOT recorded.
pub const STORAGE_ERROR: i64 = 1050;

/// Every code above with its constant name, for documentation and exhaustive tests.
pub const ALL: &[(i64, &str)] = &[
    (PARSE_ERROR, "PARSE_ERROR"),
    (INVALID_REQUEST, "INVALID_REQUEST"),
    (METHOD_NOT_FOUND, "METHOD_NOT_FOUND"),
    (INVALID_PARAMS, "INVALID_PARAMS"),
    (INTERNAL_ERROR, "INTERNAL_ERROR"),
    (SERVER_NOT_INITIALIZED, "SERVER_NOT_INITIALIZED"),
    (REQUEST_CANCELLED, "REQUEST_CANCELLED"),
    (UNKNOWN_SAMPLE, "UNKNOWN_SAMPLE"),
    (UNKNOWN_PAIR, "UNKNOWN_PAIR"),
    (UNKNOWN_JOB, "UNKNOWN_JOB"),
    (UNKNOWN_DECISION, "UNKNOWN_DECISION"),
    (UNKNOWN_RUN, "UNKNOWN_RUN"),
    (DIMENSION_MISMATCH, "DIMENSION_MISMATCH"),
    (NON_FINITE_VECTOR, "NON_FINITE_VECTOR"),
    (WRONG_MODALITY, "WRONG_MODALITY"),
    (JOB_CONFLICT, "JOB_CONFLICT"),
    (NOT_READY, "NOT_READY"),
    (DECISION_CONFLICT, "DECISION_CONFLICT"),
    (STALE_DECISION, "STALE_DECISION"),
    (INVALID_INPUT, "INVALID_INPUT"),
    (BODY_TOO_LARGE, "BODY_TOO_LARGE"),
    (LIMIT_EXCEEDED, "LIMIT_EXCEEDED"),
    (PATH_NOT_ALLOWED, "PATH_NOT_ALLOWED"),
    (UNAUTHORIZED, "UNAUTHORIZED"),
    (STORAGE_ERROR, "STORAGE_ERROR"),
];

/// The constant name of a code, if it is one of ours (for logs and the TUI's error banner).
pub fn name(code: i64) -> Option<&'static str> {
    ALL.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_outside_reserved_ranges_when_ours() {
        let mut seen = std::collections::HashSet::new();
        for (code, name) in ALL {
            assert!(seen.insert(*code), "duplicate code {code} ({name})");
            if *code > 0 {
                assert!(
                    (1000..2000).contains(code),
                    "{name} outside sotalign's range"
                );
            }
        }
        assert_eq!(name(UNKNOWN_JOB), Some("UNKNOWN_JOB"));
        assert_eq!(name(42), None);
    }
}
