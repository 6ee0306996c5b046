//! docs/examples/client.py (the protocol's third-party client example) really works against
//! the daemon. Skipped, with a message, where python3 is not installed.
mod common;

use std::process::Command;

#[test]
fn python_example_client_initializes_and_reads_status() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 not found: skipping the Python client example test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(common::repo_root().join("docs/examples/client.py"))
        .arg(common::bin())
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client.py failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("server: sotalign"), "{stdout}");
    assert!(
        stdout.contains("protocol 1 counts {\"confirmedPairs\": 0"),
        "{stdout}"
    );
}
