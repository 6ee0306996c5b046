//! The TCP token: an empty or blank one is refused at start (from `--token`, `--token-file` or
//! `$SOTALIGN_TOKEN`), a token from a file or the environment works, and 100 refused
//! connections make the daemon panic zero times (its stderr is read for panic messages).
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;
use sotalign_protocol::codes;

/// `serve --listen 127.0.0.1:0` with `args` and `env`; returns the daemon and its stderr so far
/// (kept filling by a thread).
fn serve(
    data: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Daemon, Arc<Mutex<String>>) {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(args)
        .env_remove("SOTALIGN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let addr = listening_addr(&mut err);
    let log = Arc::new(Mutex::new(String::new()));
    let l = log.clone();
    std::thread::spawn(move || {
        let mut s = String::new();
        while matches!(err.read_line(&mut s), Ok(n) if n > 0) {
            l.lock().unwrap().push_str(&s);
            s.clear();
        }
    });
    (
        Daemon {
            child,
            addr: Some(addr),
        },
        log,
    )
}

#[test]
fn empty_tokens_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank");
    std::fs::write(&blank, " \n").unwrap();
    let cases: [(&[&str], &[(&str, &str)]); 4] = [
        (&["--token", ""], &[]),
        (&["--token", "  "], &[]),
        (&["--token-file", blank.to_str().unwrap()], &[]),
        (&[], &[("SOTALIGN_TOKEN", " ")]),
    ];
    for (args, env) in cases {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .env_remove("SOTALIGN_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{args:?} {env:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("empty"), "{args:?} {env:?}: {err}");
    }
}

#[test]
fn tokens_from_a_file_or_the_environment_and_no_panic_over_100_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tok");
    std::fs::write(&file, "s3cret-from-file\n").unwrap();
    let (d, _log) = serve(
        &dir.path().join("a"),
        &["--token-file", file.to_str().unwrap()],
        &[],
    );
    let addr = d.addr.clone().unwrap();
    connect(&addr)
        .initialize("ok", Some("s3cret-from-file".into()))
        .unwrap();
    drop(d);

    let (d, log) = serve(
        &dir.path().join("b"),
        &[],
        &[("SOTALIGN_TOKEN", "s3cret-env")],
    );
    let addr = d.addr.clone().unwrap();
    connect(&addr)
        .initialize("ok", Some("s3cret-env".into()))
        .unwrap();
    for i in 0..100 {
        let mut c = connect(&addr);
        let e = c
            .initialize("intruder", Some(format!("wrong-{i}")))
            .unwrap_err();
        assert_eq!(e.code(), Some(codes::UNAUTHORIZED), "{e}");
    }
    // The daemon still serves, and logged no panic.
    connect(&addr)
        .initialize("ok", Some("s3cret-env".into()))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = log.lock().unwrap().clone();
    let panics = log.matches("panicked").count();
    assert_eq!(
        panics, 0,
        "{panics} panics over 100 refused connections:\n{log}"
    );
}
