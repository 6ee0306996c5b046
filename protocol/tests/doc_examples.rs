//! Every JSON example in docs/PROTOCOL.md parses into the crate's types, says nothing the types
//! would drop (no misspelt or unknown field), survives a typed serde round trip, and every
//! method, notification and error code is documented with an example.
//!
//! Examples are fenced blocks whose info string is `json <kind> <method>`, kind one of
//! `request`, `response`, `error`, `notification`.
use std::collections::BTreeSet;
use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sotalign_protocol::methods::{
    self, ALL_METHODS, ALL_NOTIFICATIONS, Method, NotificationMethod,
};
use sotalign_protocol::{Message, codes};

const DOC: &str = include_str!("../../docs/PROTOCOL.md");

struct Example {
    kind: String,
    method: String,
    json: String,
    line: usize,
}

fn examples() -> Vec<Example> {
    let mut out = Vec::new();
    let mut lines = DOC.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let Some(info) = line.strip_prefix("```json ") else {
            continue;
        };
        let mut words = info.split_whitespace();
        let (Some(kind), Some(method)) = (words.next(), words.next()) else {
            panic!("line {}: example without kind and method", i + 1)
        };
        let mut json = String::new();
        for (_, l) in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            json.push_str(l);
            json.push('\n');
        }
        out.push(Example {
            kind: kind.into(),
            method: method.into(),
            json,
            line: i + 1,
        });
    }
    out
}

/// `original` must be contained in `typed` (the value re-serialised from the Rust type): every
/// field the doc writes is one the type knows, with the same value. Numbers compare as f64.
fn assert_subset(original: &Value, typed: &Value, path: &str) {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let Some(w) = b.get(k) else {
                    panic!("{path}.{k}: not a field of the type (typo?)")
                };
                assert_subset(v, w, &format!("{path}.{k}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: array length");
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                assert_subset(v, w, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(a), Value::Number(b)) => assert_eq!(a.as_f64(), b.as_f64(), "{path}"),
        (a, b) => assert_eq!(a, b, "{path}"),
    }
}

/// Parse into `T`, re-serialise, check nothing was lost, and check a second parse is equal.
fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &Value, what: &str) {
    let typed: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_subset(value, &back, what);
    let again: T = serde_json::from_value(back).unwrap();
    assert_eq!(again, typed, "{what}: serde round trip");
}

/// Params/result of a method: absent params are checked as the server reads them.
fn check_method<M: Method>(ex: &Example, msg: &Message)
where
    M::Params: PartialEq + Debug,
    M::Result: PartialEq + Debug,
{
    let what = format!("line {} ({} {})", ex.line, ex.kind, ex.method);
    match msg {
        Message::Request(r) => {
            let p: M::Params = r
                .parse_params()
                .unwrap_or_else(|e| panic!("{what}: {}", e.message));
            if let Some(v) = &r.params {
                assert_subset(v, &serde_json::to_value(&p).unwrap(), &what);
                check::<M::Params>(v, &what);
            }
        }
        Message::Response(r) => match &r.outcome {
            Ok(v) => check::<M::Result>(v, &what),
            Err(e) => assert!(
                codes::name(e.code).is_some(),
                "{what}: undocumented code {}",
                e.code
            ),
        },
        Message::Notification(_) => panic!("{what}: a method example that is a notification"),
    }
}

fn check_notification<N: NotificationMethod>(ex: &Example, msg: &Message)
where
    N::Params: PartialEq + Debug,
{
    let what = format!("line {} (notification {})", ex.line, ex.method);
    let Message::Notification(n) = msg else {
        panic!("{what}: not a notification")
    };
    let p: N::Params = n
        .parse_params()
        .unwrap_or_else(|e| panic!("{what}: {}", e.message));
    if let Some(v) = &n.params {
        assert_subset(v, &serde_json::to_value(&p).unwrap(), &what);
        check::<N::Params>(v, &what);
    }
}

macro_rules! dispatch {
    ($ex:expr, $msg:expr; methods: $($m:ident),*; notifications: $($n:ident),*) => {
        match $ex.method.as_str() {
            $(<methods::$m as Method>::NAME => check_method::<methods::$m>($ex, $msg),)*
            $(<methods::$n as NotificationMethod>::NAME => check_notification::<methods::$n>($ex, $msg),)*
            other => panic!("line {}: unknown method {other}", $ex.line),
        }
    };
}

#[test]
fn every_doc_example_parses_into_the_types() {
    let all = examples();
    assert!(all.len() > 40, "found only {} examples", all.len());
    for ex in &all {
        let value: Value =
            serde_json::from_str(&ex.json).unwrap_or_else(|e| panic!("line {}: {e}", ex.line));
        let msg =
            Message::from_value(value.clone()).unwrap_or_else(|e| panic!("line {}: {e}", ex.line));
        assert_eq!(
            msg.to_value(),
            value,
            "line {}: envelope round trip",
            ex.line
        );
        match (ex.kind.as_str(), &msg) {
            ("request", Message::Request(r)) => assert_eq!(r.method, ex.method, "line {}", ex.line),
            ("notification", Message::Notification(n)) => {
                assert_eq!(n.method, ex.method, "line {}", ex.line)
            }
            ("response", Message::Response(r)) => assert!(r.outcome.is_ok(), "line {}", ex.line),
            ("error", Message::Response(r)) => assert!(r.outcome.is_err(), "line {}", ex.line),
            (k, m) => panic!("line {}: kind {k} but message {m:?}", ex.line),
        }
        dispatch!(ex, &msg;
            methods: Initialize, Shutdown, Status, ListSamples, GetSample, SuggestForSample,
                SuggestPairs, Confirm, Reject, Undo, ListPairs, Search, Align, Cancel, Jobs,
                Evaluate, Runs, Ingest, NextToLabel, Export, GetImage, Audit;
            notifications: Initialized, Exit, Progress, JobFinished, DecisionsChanged);
    }
}

#[test]
fn every_method_notification_and_code_is_documented() {
    let all = examples();
    let have = |kind: &str, m: &str| all.iter().any(|e| e.kind == kind && e.method == m);
    for m in ALL_METHODS {
        assert!(have("request", m), "no request example for {m}");
        assert!(have("response", m), "no response example for {m}");
    }
    for n in ALL_NOTIFICATIONS {
        assert!(have("notification", n), "no example for notification {n}");
    }
    for (code, name) in codes::ALL {
        assert!(
            DOC.contains(&format!("| {code} | `{name}` |")),
            "error code {name} not in the table"
        );
    }
    // The method list the initialize example announces is the crate's list.
    let init = all
        .iter()
        .find(|e| e.kind == "response" && e.method == "initialize")
        .unwrap();
    let v: Value = serde_json::from_str(&init.json).unwrap();
    let listed: BTreeSet<&str> = v["result"]["capabilities"]["experimental"]["sotalign"]["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(listed, ALL_METHODS.iter().copied().collect::<BTreeSet<_>>());
}

#[test]
fn the_framing_example_has_the_right_length() {
    let start = DOC.find("Content-Length: ").unwrap();
    let rest = &DOC[start..];
    let n: usize = rest["Content-Length: ".len()..]
        .split('\\')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let body = rest.lines().nth(2).unwrap();
    assert_eq!(body.len(), n, "{body}");
}
