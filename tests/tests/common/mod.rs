//! Shared helpers of the daemon tests: start the real `sotalign` binary, build a fixture from
//! the reference Tux Paint embeddings, talk to it with the protocol crate's client.
#![allow(dead_code)]

pub mod raw;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sotalign_protocol::types::*;
use sotalign_protocol::{Client, ServerNotification, methods};

/// The `sotalign` binary under test: `$SOTALIGN_HOSTILE_BIN` when set (the hostile suite run
/// against another build, e.g. one from before a fix), else this workspace's.
pub fn bin() -> PathBuf {
    let p = match std::env::var_os(OTHER_BIN) {
        Some(p) => PathBuf::from(p),
        None => assert_cmd::cargo::cargo_bin("sotalign"),
    };
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p sotalign)",
        p.display()
    );
    p
}

/// Names another `sotalign` binary to test (see [`bin`]).
pub const OTHER_BIN: &str = "SOTALIGN_HOSTILE_BIN";

/// `serve` arguments for the binary under test. This workspace's binary gets them unchanged;
/// another one ([`OTHER_BIN`]) loses every `--flag [value]` its `serve --help` does not list,
/// so a suite can still start it and report the cases that needed the flag as failing.
/// Dropped flags are remembered ([`dropped_flags`]).
pub fn serve_args<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Vec<std::ffi::OsString> {
    let args: Vec<std::ffi::OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    if std::env::var_os(OTHER_BIN).is_none() {
        return args;
    }
    static HELP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let help = HELP.get_or_init(|| {
        let out = Command::new(bin()).args(["serve", "--help"]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    });
    let mut kept = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        let takes_value = args
            .get(i + 1)
            .is_some_and(|v| !v.to_string_lossy().starts_with("--"));
        let n = if a.starts_with("--") && takes_value {
            2
        } else {
            1
        };
        let known = !a.starts_with("--")
            || help
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .any(|w| w == a);
        if known {
            kept.extend(args[i..i + n].iter().cloned());
        } else {
            let mut d = DROPPED.lock().unwrap_or_else(|p| p.into_inner());
            if !d.contains(&a) {
                d.push(a);
            }
        }
        i += n;
    }
    kept
}

static DROPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The flags [`serve_args`] dropped so far (the binary under test lacks them).
pub fn dropped_flags() -> Vec<String> {
    DROPPED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/reference")
}

/// The fixture: rows of the reference Tux Paint embeddings, `train` seed pairs, `test` held-out
/// pairs and `unpaired` rows (both sides stored, not paired). Returns the manifest path.
pub struct Fixture {
    pub manifest: PathBuf,
    pub train: Vec<usize>,
    pub test: Vec<usize>,
    pub unpaired: Vec<usize>,
    pub captions: Vec<String>,
}

pub fn fixture(dir: &Path, n_train: usize, n_test: usize, n_unpaired: usize) -> Fixture {
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tuxpaint_index.json")).unwrap(),
    )
    .unwrap();
    let rows = index["rows"].as_array().unwrap();
    let captions: Vec<String> = rows
        .iter()
        .map(|r| r["caption"].as_str().unwrap().to_string())
        .collect();
    let splits: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tuxpaint_splits.json")).unwrap(),
    )
    .unwrap();
    // The reference's own test split; train/unpaired from its non-test rows.
    let test: Vec<usize> = splits["test"]
        .as_array()
        .unwrap()
        .iter()
        .take(n_test)
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let nontest: Vec<usize> = splits["nontest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let train = nontest[..n_train].to_vec();
    let unpaired = nontest[n_train..n_train + n_unpaired].to_vec();
    let mut lines = vec![
        json!({
            "sotalign_manifest": 1,
            "embeddings": {
                "image": fixtures().join("tuxpaint_img.npy").display().to_string(),
                "text": fixtures().join("tuxpaint_txt.npy").display().to_string(),
            },
            "encoders": {"image": "efficientnet-lite0", "text": "all-MiniLM-L6-v2"}
        })
        .to_string(),
    ];
    for (rows, split) in [(&train, "train"), (&test, "test"), (&unpaired, "unpaired")] {
        for &r in rows.iter() {
            lines.push(
                json!({
                    "key": format!("row-{r}"), "imagePath": rows_file(&index, r), "imageRow": r,
                    "caption": captions[r], "textRow": r, "split": split
                })
                .to_string(),
            );
        }
    }
    let manifest = dir.join("manifest.jsonl");
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();
    Fixture {
        manifest,
        train,
        test,
        unpaired,
        captions,
    }
}

fn rows_file(index: &Value, r: usize) -> String {
    index["rows"][r]["file"]
        .as_str()
        .unwrap_or("x.png")
        .to_string()
}

/// A writer shared between the typed client and raw-byte tests.
pub struct SharedWriter<W>(pub Arc<Mutex<W>>);

impl<W> Clone for SharedWriter<W> {
    fn clone(&self) -> Self {
        SharedWriter(self.0.clone())
    }
}

impl<W: Write> Write for SharedWriter<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap().flush()
    }
}

/// The directories a test daemon may ingest from: the folder around its data dir (where tests
/// write manifests) and the repository's fixtures (their embeddings).
/// `n` pairs of the engine's small synthetic platonic set (retrieval strong enough for a single
/// planted swap to be visible) as `img.npy` and `txt.npy` in `dir`, row k = pair k.
pub fn write_platonic_npy(dir: &Path, n: usize) {
    use rand::SeedableRng;
    let p = sotalign_engine::testing::small_platonic(5);
    let (x, y) = p.pairs(n, &mut rand_chacha::ChaCha8Rng::seed_from_u64(2));
    sotalign::io::npy::write_npy(&dir.join("img.npy"), &x).unwrap();
    sotalign::io::npy::write_npy(&dir.join("txt.npy"), &y).unwrap();
}

pub fn scope_args(data: &Path) -> Vec<std::ffi::OsString> {
    let mut a = Vec::new();
    if let Some(parent) = data.parent() {
        a.push("--allow-dir".into());
        a.push(parent.as_os_str().to_owned());
    }
    a.push("--allow-dir".into());
    a.push(fixtures().into_os_string());
    a
}

/// A daemon child process; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub addr: Option<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type StdioClient = Client<ChildStdout, SharedWriter<ChildStdin>>;

/// `sotalign serve --stdio`; returns the daemon, a typed client and a raw handle on its stdin.
pub fn spawn_stdio(data: &Path, extra: &[&str]) -> (Daemon, StdioClient, SharedWriter<ChildStdin>) {
    let (d, stdout, stdin) = spawn_stdio_raw(data, extra);
    let client = Client::new(stdout, stdin.clone());
    (d, client, stdin)
}

/// `sotalign serve --stdio` with its raw stdout and stdin.
pub fn spawn_stdio_raw(
    data: &Path,
    extra: &[&str],
) -> (Daemon, ChildStdout, SharedWriter<ChildStdin>) {
    let mut args: Vec<std::ffi::OsString> = vec!["--data-dir".into(), data.into()];
    args.extend(scope_args(data));
    args.extend(extra.iter().map(Into::into));
    let mut child = Command::new(bin())
        .args(["serve", "--stdio"])
        .args(serve_args(&args))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sotalign");
    let stdin = SharedWriter(Arc::new(Mutex::new(child.stdin.take().unwrap())));
    let stdout = child.stdout.take().unwrap();
    (Daemon { child, addr: None }, stdout, stdin)
}

/// `sotalign serve --listen 127.0.0.1:0`; returns once it printed its address.
pub fn spawn_tcp(data: &Path, extra: &[&str]) -> Daemon {
    spawn_tcp_capturing(data, extra).0
}

/// Read a `serve --listen` daemon's stderr up to its "listening on ADDR" line; the address.
/// Panics when the daemon exits first.
pub fn listening_addr(err: &mut BufReader<std::process::ChildStderr>) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("daemon exited before listening");
        }
        if let Some(a) = line.trim().strip_prefix("sotalign: listening on ") {
            return a.to_string();
        }
    }
}

/// `spawn_tcp`, plus the rest of the daemon's stderr, returned by the thread once the daemon
/// exits (for tests that read its log, e.g. to count panics).
pub fn spawn_tcp_capturing(
    data: &Path,
    extra: &[&str],
) -> (Daemon, std::thread::JoinHandle<String>) {
    let mut args: Vec<std::ffi::OsString> = vec!["--data-dir".into(), data.into()];
    args.extend(scope_args(data));
    args.extend(extra.iter().map(Into::into));
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(serve_args(&args))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sotalign");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let addr = listening_addr(&mut err);
    // Keep draining stderr so the daemon never blocks on a full pipe.
    let rest = std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = err.read_to_string(&mut sink);
        sink
    });
    let daemon = Daemon {
        child,
        addr: Some(addr),
    };
    (daemon, rest)
}

pub type TcpClient = Client<TcpStream, TcpStream>;

pub fn connect(addr: &str) -> TcpClient {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    Client::new(s.try_clone().unwrap(), s)
}

/// Ingest a manifest and wait for the job to finish; returns the samples added.
pub fn ingest<R: Read, W: Write>(c: &mut Client<R, W>, manifest: &Path) -> u64 {
    let r = c
        .call::<methods::Ingest>(IngestParams {
            source: IngestSource::Manifest(manifest.display().to_string()),
        })
        .unwrap();
    let f = wait_finished(c, r.job);
    assert_eq!(f.state, JobState::Succeeded, "{f:?}");
    f.ingested.unwrap()
}

/// Wait for a job's `jobFinished`; progress notifications stay queued.
pub fn wait_finished<R: Read, W: Write>(c: &mut Client<R, W>, job: JobId) -> JobFinishedParams {
    match c
        .wait_for(|n| matches!(n, ServerNotification::JobFinished(f) if f.job == job))
        .unwrap()
    {
        ServerNotification::JobFinished(f) => f,
        _ => unreachable!(),
    }
}

/// Every queued progress notification of a job, in arrival order.
pub fn progress_of<R: Read, W: Write>(c: &mut Client<R, W>, job: JobId) -> Vec<JobProgress> {
    c.take_notifications()
        .into_iter()
        .filter_map(|n| match n {
            Ok(ServerNotification::Progress(p)) if p.value.job == job => Some(p.value),
            _ => None,
        })
        .collect()
}

/// Align with a small step budget so debug-build tests stay fast.
pub fn align_params(steps: u64) -> AlignParams {
    AlignParams {
        method: AlignMethod::Siglip,
        preset: None,
        config: Some(
            json!({"optim": {"steps": steps, "kind": "adam", "lr": 0.001, "warmup_frac": 0.0, "cosine": false}, "heads": {"dim": 128}}),
        ),
        seed: Some(1),
    }
}

/// The fetched assets (both encoders and the Tux Paint stamps), or `None` after a loud message;
/// absence is a failure when `SOTALIGN_REQUIRE_ASSETS=1` (as in CI), so the real files are used.
pub fn assets_or_skip(test: &str) -> Option<sotalign::assets::Assets> {
    sotalign::assets::Assets::for_test(test, &["minilm", "effnet-lite0", "tuxpaint"])
}

/// Wait until the daemon serves a model (a restarted daemon restores it in the background).
pub fn wait_for_model<R: Read, W: Write>(c: &mut Client<R, W>) -> StatusResult {
    let t0 = Instant::now();
    loop {
        let st = c.call::<methods::Status>(Empty {}).unwrap();
        if st.model.is_some() && st.index.state == IndexState::Ready {
            return st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no model restored: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
