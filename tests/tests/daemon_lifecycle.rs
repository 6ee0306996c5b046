//! The connection lifecycle as a client meets it, on the real binary: clean ends of a
//! connection never panic the daemon (a stdio client that stops reading, 100 refused tokens).
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use sotalign_protocol::framing::FrameReader;
use sotalign_protocol::{Message, codes};

fn frame(body: &serde_json::Value) -> Vec<u8> {
    let b = body.to_string();
    format!("Content-Length: {}\r\n\r\n{b}", b.len()).into_bytes()
}

fn initialize(id: i64, token: Option<&str>) -> Vec<u8> {
    let mut p = json!({"processId": null, "capabilities": {}, "clientInfo": {"name": "lifecycle-test"}});
    if let Some(t) = token {
        p["initializationOptions"] = json!({"token": t});
    }
    frame(&json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": p}))
}

/// A `--stdio` client that closes its read side (the daemon's stdout) and keeps writing: the
/// daemon notices the broken pipe, stops cleanly (exit status 0) and never panics.
#[test]
fn stdio_client_that_stops_reading_ends_the_daemon_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--stdio", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sotalign");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_text = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    stdin.write_all(&initialize(1, None)).unwrap();
    let mut reader = FrameReader::new(stdout);
    match reader.read_frame().unwrap().expect("an answer").unwrap() {
        Message::Response(r) => assert!(r.outcome.is_ok()),
        other => panic!("{other:?}"),
    }
    drop(reader); // close the read side
    // Keep asking until the daemon goes (its writes now fail with a broken pipe).
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let req = frame(&json!({"jsonrpc": "2.0", "id": 2, "method": "sotalign/status"}));
        let _ = stdin.write_all(&req).and_then(|_| stdin.flush());
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "daemon still running 20 s after its client stopped reading");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    let err = err_text.join().unwrap();
    assert!(!err.contains("panicked"), "daemon panicked:\n{err}");
    assert!(status.success(), "exit status {status:?}; stderr:\n{err}");
}

/// 100 connections with a wrong token: each is answered UNAUTHORIZED and closed; the daemon
/// logs no panic and still serves a client with the right token.
#[test]
fn refused_tokens_close_the_connection_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, log) = spawn_tcp_capturing(&dir.path().join("data"), &["--token", "s3cret"]);
    let addr = daemon.addr.clone().unwrap();
    for i in 0..100 {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&initialize(i, Some("wrong"))).unwrap();
        let mut r = FrameReader::new(s.try_clone().unwrap());
        match r.read_frame().unwrap().expect("an answer").unwrap() {
            Message::Response(resp) => {
                assert_eq!(resp.outcome.unwrap_err().code, codes::UNAUTHORIZED)
            }
            other => panic!("{other:?}"),
        }
        // Then the daemon closes the connection.
        assert!(r.read_frame().unwrap().is_none(), "connection {i} left open");
    }
    let mut c = connect(&addr);
    let init = c.initialize("lifecycle-test", Some("s3cret".into()));
    assert!(init.is_ok(), "{init:?}");
    drop(c);
    drop(daemon); // kills the daemon, which ends its stderr
    let text = log.join().unwrap();
    assert_eq!(text.matches("panicked").count(), 0, "panics in the daemon log:\n{text}");
}
