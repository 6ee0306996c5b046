//! The request-handler fuzz target's harness, shared with the stable regression test
//! (`daemon/tests/fuzz_handlers.rs` includes this file), so CI runs the same checks without
//! nightly. Includers declare `mod vocabulary` (src/vocabulary.rs) at their crate root.
//!
//! One in-process daemon ([`sotalign::server::in_process::InProcess`]) over a temporary data
//! dir, with small synthetic embeddings ingested, paired and aligned first, so that suggest,
//! search, evaluate, audit and the queue have a model to work on. Caps are installed low
//! (training steps, batch, grid, page sizes, file sizes, walks; see [`caps`]) so that no input
//! can make the daemon spend seconds; what is over a cap is refused by the daemon's own checks.
//!
//! Each input is decoded ([`Input`]) into a few JSON-RPC messages on a new connection: requests
//! with methods drawn from the real method table plus the lifecycle, ids of every kind, params
//! built from the protocol's field names and hostile values (huge and negative numbers,
//! fractions, wrong types, nesting, long strings, vectors of the wrong length, paths in and
//! out of the read scope, links, devices), raw JSON params, and notifications
//! (`$/cancelRequest` of an earlier request, `exit`, the manifest language server's
//! documents). Properties, checked for every input:
//! - no panic anywhere in the daemon (libFuzzer aborts on one; the stable test counts them);
//! - every request gets exactly one response, with its own id, within [`INPUT_DEADLINE`];
//! - each response is a result or an error whose code is one of the documented codes
//!   (`sotalign_protocol::codes::ALL`);
//! - afterwards (the connection closed, jobs it started cancelled and finished) a fresh
//!   connection's `sotalign/status` answers.
//!
//! The daemon's state (store, model, jobs) persists from one input to the next, as it does for
//! a real daemon: an input may depend on what earlier ones stored.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sotalign::limits::{Limits, Scope};
use sotalign::server::dispatch::{Connection, Outcome};
use sotalign::server::in_process::InProcess;
use sotalign_protocol::{Id, Message, Notification, Request, Response, codes, names};

use crate::vocabulary::{KEYS, WORDS};
use tower_service::Service;

/// Longest one input may take (its requests, then the jobs it started winding down): past it,
/// the input counts as a hang.
pub const INPUT_DEADLINE: Duration = Duration::from_secs(20);
/// Messages decoded from one input at most.
const MAX_MESSAGES: usize = 8;
/// The synthetic data set: embedding sizes and rows per split.
const IMAGE_DIM: usize = 8;
const TEXT_DIM: usize = 6;
const TRAIN: usize = 12;
const TEST: usize = 6;
const UNPAIRED: usize = 12;
/// Frame body cap announced by the in-process daemon.
const MAX_BODY: usize = 1 << 20;
/// In raw JSON params, this text stands for the data set's directory (seeds cannot know it).
pub const DIR_MARK: &str = "$DIR";
/// A 1x1 PNG: the picture of every image sample.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0x64, 0x60, 0xf8, 0x5f,
    0x0f, 0x00, 0x02, 0x87, 0x01, 0x80, 0xeb, 0x47, 0xba, 0x92, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// Numbers at the edges.
const NUMBERS: &[f64] = &[
    -1.0,
    -0.5,
    0.5,
    1.5,
    1e308,
    -1e308,
    1e-300,
    4294967295.0,
    4294967296.0,
    9007199254740993.0,
    2.0,
    1000.0,
];

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// The caps of the fuzzed daemon: small, so that no request can start expensive work.
pub fn caps() -> Limits {
    Limits {
        max_steps: 20,
        max_head_dim: 128,
        max_batch: 16,
        max_sinkhorn_iters: 20,
        max_grid: 8,
        max_k: 10,
        max_page: 20,
        max_text_file_bytes: 1 << 20,
        max_array_file_bytes: 1 << 20,
        max_image_file_bytes: 1 << 20,
        max_image_pixels: 1 << 16,
        max_walk_depth: 4,
        max_walk_entries: 200,
        max_ingest_items: 200,
        ..Limits::default()
    }
}

/// An alignment config within [`caps`] (the engine's defaults train longer and wider than they
/// allow, so an align without one is refused).
pub fn small_config() -> Value {
    json!({
        "optim": {"steps": 10}, "heads": {"dim": 8}, "klot": {"iters": 10, "batch": 8},
        "auto": {"splits": 3}
    })
}

/// The daemon under test and what inputs may name.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    daemon: InProcess,
    dir: PathBuf,
    methods: Vec<&'static str>,
    paths: Vec<String>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Harness {
    /// Start the daemon (once per process: caps and scope are process-wide), ingest, pair and
    /// align the synthetic data set. Panics when that set-up fails: nothing could be fuzzed.
    pub fn start() -> Harness {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
        // A RAM disk when there is one: the store commits with fsync.
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("sotalign-fuzz-handlers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temporary data dir");
        let paths = write_data_set(&dir);
        sotalign::limits::install(caps(), Scope::only(std::slice::from_ref(&dir)));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let daemon = rt.block_on(async { InProcess::open(&dir.join("data"), MAX_BODY) });
        let daemon = daemon.expect("in-process daemon");
        let mut methods = daemon.methods();
        methods.extend([names::INITIALIZE, names::SHUTDOWN, "sotalign/nope", ""]);
        let h = Harness {
            rt,
            daemon,
            dir,
            methods,
            paths,
        };
        h.set_up();
        h
    }

    /// The methods inputs draw from: the daemon's table, the lifecycle and unknown names.
    pub fn methods(&self) -> &[&'static str] {
        &self.methods
    }

    /// Ingest the manifest (train pairs become seed pairs, test pairs held out), align with a
    /// closed-form method, and wait for both jobs.
    fn set_up(&self) {
        let manifest = self.dir.join("manifest.jsonl");
        self.rt.block_on(async {
            let mut c = self.daemon.connect();
            let init = ask(&mut c, names::INITIALIZE, json!({"capabilities": {}})).await;
            init.outcome.expect("initialize");
            let r = ask(
                &mut c,
                names::INGEST,
                json!({"source": {"manifest": manifest}}),
            )
            .await;
            r.outcome.expect("ingest of the synthetic manifest starts");
            self.settle().await;
            let r = ask(
                &mut c,
                names::ALIGN,
                json!({"method": "procrustes", "seed": 1, "config": small_config()}),
            )
            .await;
            r.outcome.expect("align starts");
            self.settle().await;
            let st = ask(&mut c, names::STATUS, json!({})).await;
            let st = st.outcome.expect("status");
            assert!(
                !st["model"].is_null(),
                "the set-up alignment serves no model: {st}"
            );
            c.close();
        });
    }

    /// Wait until no job runs (each is bounded by the caps), up to the input deadline.
    async fn settle(&self) {
        let t0 = Instant::now();
        while !self.daemon.shared().jobs.active().is_empty() {
            assert!(
                t0.elapsed() < INPUT_DEADLINE,
                "a job still runs after {INPUT_DEADLINE:?}: {:?}",
                self.daemon.shared().jobs.active()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Decode `data` into messages, send them on a new connection and check the properties;
    /// returns each request's method and whether it got a result (rather than an error).
    pub fn check(&self, data: &[u8]) -> Vec<(String, bool)> {
        let panics = PANICS.load(Ordering::SeqCst);
        let dir = self.dir.display().to_string();
        let msgs = Input::new(data, &self.methods, &self.paths, &dir).messages();
        let t0 = Instant::now();
        let done = self
            .rt
            .block_on(async { tokio::time::timeout(INPUT_DEADLINE, self.exchange(msgs)).await });
        let Ok(answered) = done else {
            panic!("hang: the input took over {INPUT_DEADLINE:?}");
        };
        assert_eq!(
            PANICS.load(Ordering::SeqCst),
            panics,
            "the daemon panicked on this input ({:?})",
            t0.elapsed()
        );
        answered
    }

    /// An input that decodes to these requests, each with its params as raw JSON (at most
    /// [`MAX_MESSAGES`], params under 256 bytes, methods from the table): how seed inputs are
    /// written.
    pub fn encode(&self, requests: &[(&str, Value)]) -> Vec<u8> {
        assert!((1..=MAX_MESSAGES).contains(&requests.len()));
        let mut out = vec![(requests.len() - 1) as u8];
        for (k, (method, params)) in requests.iter().enumerate() {
            let index = self.methods.iter().position(|m| m == method);
            let index = index.unwrap_or_else(|| panic!("{method} is not in the table"));
            let json = params.to_string();
            assert!(json.len() < 256, "params of {method} too long for a seed");
            out.extend([2, index as u8, json.len() as u8]);
            out.extend(json.bytes());
            // Id::Number(k), see `Input::id`.
            out.extend([4, k as u8]);
        }
        out
    }

    async fn exchange(&self, msgs: Vec<Message>) -> Vec<(String, bool)> {
        let mut c = self.daemon.connect();
        let init = ask(&mut c, names::INITIALIZE, json!({"capabilities": {}})).await;
        assert!(init.outcome.is_ok(), "initialize: {init:?}");
        let mut answers = Vec::new();
        for msg in msgs {
            match msg {
                Message::Request(r) => {
                    let (id, method) = (r.id.clone(), r.method.clone());
                    // The handler starts here, as in the transport; answers are awaited below.
                    let fut = c.call(Message::Request(r));
                    answers.push((id, method, tokio::spawn(fut)));
                }
                other => {
                    let Ok(outcome) = c.call(other).await;
                    match outcome {
                        Outcome::None => {}
                        Outcome::Exit => {
                            // The transport stops reading and closes: requests still running
                            // are aborted, and still answered (REQUEST_CANCELLED).
                            c.close();
                            break;
                        }
                        o => panic!("a notification was answered: {o:?}"),
                    }
                }
            }
        }
        let mut answered = Vec::with_capacity(answers.len());
        for (id, method, task) in answers {
            let outcome = match task.await {
                Ok(Ok(o)) => o,
                Err(e) => panic!("request {id}: the dispatch task failed: {e}"),
            };
            let resp = match outcome {
                Outcome::Respond(r) => r,
                o => panic!("request {id}: expected one response, got {o:?}"),
            };
            check_response(&id, &resp);
            answered.push((method, resp.outcome.is_ok()));
        }
        c.close();
        // Jobs this input started stop (each within one step or iteration), then the daemon
        // still serves a new client.
        self.daemon.shared().jobs.cancel_all();
        self.settle().await;
        let mut c = self.daemon.connect();
        ask(&mut c, names::INITIALIZE, json!({"capabilities": {}}))
            .await
            .outcome
            .expect("initialize after the input");
        let st = ask(&mut c, names::STATUS, json!({})).await;
        assert!(st.outcome.is_ok(), "status after the input: {st:?}");
        c.close();
        answered
    }
}

/// One request's answer: its own id, a result or a documented error code.
fn check_response(id: &Id, resp: &Response) {
    assert_eq!(
        resp.id.as_ref(),
        Some(id),
        "answered with another id: {resp:?}"
    );
    if let Err(e) = &resp.outcome {
        assert!(
            codes::name(e.code).is_some(),
            "request {id}: undocumented error code {}: {}",
            e.code,
            e.message
        );
        // Serialisable as the transport would send it.
        serde_json::to_vec(&Message::Response(resp.clone())).expect("the answer serialises");
    }
}

/// Send one request and wait for its answer.
async fn ask(c: &mut Connection, method: &str, params: Value) -> Response {
    let id = Id::String(format!("harness-{method}"));
    let Ok(outcome) = c
        .call(Message::Request(Request {
            id: id.clone(),
            method: method.into(),
            params: Some(params),
        }))
        .await;
    match outcome {
        Outcome::Respond(r) => {
            check_response(&id, &r);
            r
        }
        o => panic!("{method}: expected a response, got {o:?}"),
    }
}

/// A small seeded generator (xorshift), so the data set is the same in every run.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// Write the synthetic data set and the files inputs may name; returns those paths.
fn write_data_set(dir: &Path) -> Vec<String> {
    let n = TRAIN + TEST + UNPAIRED;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let images: Vec<f32> = (0..n * IMAGE_DIM).map(|_| rng.unit()).collect();
    // Texts are a noisy linear map of the images, so an alignment finds structure.
    let texts: Vec<f32> = (0..n * TEXT_DIM)
        .map(|k| {
            let (i, j) = (k / TEXT_DIM, k % TEXT_DIM);
            let row = &images[i * IMAGE_DIM..(i + 1) * IMAGE_DIM];
            row[j] + 0.5 * row[(j + 2) % IMAGE_DIM] + 0.1 * rng.unit()
        })
        .collect();
    let write = |name: &str, rows: usize, cols: usize, data: Vec<f32>| {
        let m = sotalign_engine::Matrix::from_vec(rows, cols, data).expect("matrix shape");
        sotalign::io::npy::write_npy(&dir.join(name), &m).expect("write .npy");
    };
    write("img.npy", n, IMAGE_DIM, images);
    write("txt.npy", n, TEXT_DIM, texts);
    let mut lines = vec![
        json!({
            "sotalign_manifest": 1,
            "embeddings": {"image": dir.join("img.npy"), "text": dir.join("txt.npy")},
        })
        .to_string(),
    ];
    for i in 0..n {
        let split = match i {
            i if i < TRAIN => "train",
            i if i < TRAIN + TEST => "test",
            _ => "unpaired",
        };
        // Some captions repeat, so caption groups have twins.
        lines.push(
            json!({
                "key": format!("row-{i}"), "imagePath": dir.join("one.png"), "imageRow": i,
                "caption": format!("a drawing of thing {}", i % 20), "textRow": i, "split": split
            })
            .to_string(),
        );
    }
    let manifest = lines.join("\n") + "\n";
    std::fs::write(dir.join("manifest.jsonl"), &manifest).expect("manifest");
    // The same manifest with one bad row and one row naming a missing embedding row.
    std::fs::write(
        dir.join("bad.jsonl"),
        manifest + "{\"key\": 5}\n{\"key\": \"far\", \"imageRow\": 4000000000}\n",
    )
    .expect("bad manifest");
    std::fs::write(dir.join("captions.txt"), "a cat\n\na dog\na cat\n").expect("captions");
    std::fs::write(
        dir.join("table.csv"),
        "image,caption,split\nstamp-1.png,a cat,train\n,a lone caption,\n",
    )
    .expect("csv");
    std::fs::write(dir.join("not.png"), b"\x89PNG\r\n\x1a\nnot really").expect("png");
    std::fs::write(dir.join("one.png"), PNG).expect("png");
    std::fs::create_dir_all(dir.join("pictures/sub")).expect("folder");
    std::fs::write(
        dir.join("pictures/sub/a.svg"),
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="1" height="400000"/>"#,
    )
    .expect("svg");
    #[cfg(unix)]
    {
        let _ = std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd-link"));
        let _ = std::os::unix::fs::symlink(".", dir.join("pictures/self"));
    }
    let mut paths: Vec<String> = [
        "manifest.jsonl",
        "bad.jsonl",
        "captions.txt",
        "table.csv",
        "not.png",
        "one.png",
        "pictures",
        "passwd-link",
        "img.npy",
        "data",
        "data/sotalign.db",
        "export-out",
        "",
    ]
    .iter()
    .map(|p| dir.join(p).display().to_string())
    .collect();
    paths.extend(
        [
            "/etc/passwd",
            "/dev/zero",
            "/",
            "/proc/self/mem",
            "relative.jsonl",
            "../../../../etc/passwd",
            "manifest.jsonl\u{0}",
        ]
        .map(String::from),
    );
    paths.push(format!("{}/../../../../etc/passwd", dir.display()));
    paths.push(format!("file://{}", dir.join("manifest.jsonl").display()));
    paths
}

/// The fuzz input read as choices; reads past its end give zeros, so every input decodes.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
    methods: &'a [&'static str],
    paths: &'a [String],
    dir: &'a str,
    ids: Vec<Id>,
}

impl<'a> Input<'a> {
    pub fn new(
        data: &'a [u8],
        methods: &'a [&'static str],
        paths: &'a [String],
        dir: &'a str,
    ) -> Self {
        Self {
            data,
            pos: 0,
            methods,
            paths,
            dir,
            ids: Vec::new(),
        }
    }

    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn below(&mut self, n: usize) -> usize {
        if n <= 256 {
            self.byte() as usize % n
        } else {
            (self.byte() as usize | (self.byte() as usize) << 8) % n
        }
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }

    fn path(&mut self) -> String {
        self.paths[self.below(self.paths.len())].clone()
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |acc, _| acc << 8 | self.byte() as u64)
    }

    fn exhausted(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The messages of this input (at least one).
    pub fn messages(mut self) -> Vec<Message> {
        let n = 1 + self.below(MAX_MESSAGES);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            if i > 0 && self.exhausted() {
                break;
            }
            out.push(self.message());
        }
        out
    }

    fn message(&mut self) -> Message {
        match self.byte() % 16 {
            0 => {
                // Cancel an earlier request of this input (or an id never sent).
                let id = if self.ids.is_empty() || self.byte() % 4 == 0 {
                    self.id()
                } else {
                    let k = self.below(self.ids.len());
                    self.ids[k].clone()
                };
                Message::Notification(Notification {
                    method: names::CANCEL_REQUEST.into(),
                    params: Some(json!({ "id": id })),
                })
            }
            1 => {
                let method = self.pick(&[
                    "textDocument/didOpen",
                    "textDocument/didChange",
                    "textDocument/didClose",
                    names::INITIALIZED,
                    names::EXIT,
                    "$/setTrace",
                    "sotalign/nope",
                ]);
                let params = self.document_params();
                Message::Notification(Notification {
                    method: method.into(),
                    params,
                })
            }
            2 => {
                // Raw JSON params: whatever the next bytes parse as.
                let method = self.pick(self.methods);
                let len = self.below(256);
                let start = self.pos.min(self.data.len());
                let end = (start + len).min(self.data.len());
                self.pos = start + len;
                let text =
                    String::from_utf8_lossy(&self.data[start..end]).replace(DIR_MARK, self.dir);
                let params = serde_json::from_str(&text).unwrap_or(Value::String(text));
                self.request(method, Some(params))
            }
            _ => {
                let method = self.pick(self.methods);
                let params = match self.byte() % 8 {
                    0 => None,
                    _ => Some(self.object(0)),
                };
                self.request(method, params)
            }
        }
    }

    fn request(&mut self, method: &str, params: Option<Value>) -> Message {
        let id = self.id();
        self.ids.push(id.clone());
        Message::Request(Request {
            id,
            method: method.into(),
            params,
        })
    }

    fn id(&mut self) -> Id {
        match self.byte() % 6 {
            0 => Id::Number(self.u64() as i64),
            1 => Id::Number(i64::MIN),
            2 => Id::String(self.pick(WORDS).into()),
            3 => Id::Number(self.ids.len() as i64),
            _ => Id::Number(self.byte() as i64),
        }
    }

    /// Params of the manifest language server: a document whose text is a manifest line or junk.
    fn document_params(&mut self) -> Option<Value> {
        if self.byte() % 4 == 0 {
            return Some(self.object(0));
        }
        let uri = format!("file://{}", self.path());
        let text = match self.byte() % 4 {
            0 => format!(
                "{{\"sotalign_manifest\": 1, \"embeddings\": {{\"image\": {:?}, \"text\": {:?}}}}}\n{{\"key\": \"a\", \"imageRow\": {}, \"textRow\": 1, \"caption\": \"x\"}}\n",
                self.path(),
                self.path(),
                self.u64()
            ),
            1 => self.string(),
            _ => String::from_utf8_lossy(&self.data[self.pos.min(self.data.len())..]).into(),
        };
        let version = [json!(1), json!(-1), json!(i64::MAX), json!(null)][self.below(4)].clone();
        Some(json!({
            "textDocument": {"uri": uri, "languageId": "jsonl", "version": version, "text": text},
            "contentChanges": [{"text": text}],
            "position": {"line": self.byte(), "character": self.u64() % 70_000},
            "range": {"start": {"line": 0, "character": 0}, "end": {"line": self.byte(), "character": 4294967295u64}},
            "context": {"diagnostics": []},
        }))
    }

    fn string(&mut self) -> String {
        match self.byte() % 4 {
            0 => "x".repeat(self.below(5000)),
            1 => self.path(),
            _ => self.pick(WORDS).to_string(),
        }
    }

    fn object(&mut self, depth: u32) -> Value {
        let mut m = serde_json::Map::new();
        for _ in 0..self.below(6) {
            let k = self.pick(KEYS);
            let v = self.value(depth + 1);
            m.insert(k.into(), v);
        }
        Value::Object(m)
    }

    fn value(&mut self, depth: u32) -> Value {
        match self.byte() % 16 {
            0 => Value::Null,
            1 => json!(self.byte() % 2 == 0),
            2 => json!(self.byte() as i64 - 8),
            3 => json!(self.pick(&[u64::MAX, 1 << 63, u32::MAX as u64, 1 << 32, 0])),
            4 => json!(self.pick(&[i64::MIN, -1, i64::MAX])),
            5 => json!(self.pick(NUMBERS)),
            6 => json!(self.u64()),
            7 | 8 => json!(self.string()),
            9 => json!(self.path()),
            10 => {
                // A vector: of an encoder's length, off by one, empty or long.
                let len = self.pick(&[IMAGE_DIM, TEXT_DIM, IMAGE_DIM + 1, 0, 1, 3000]);
                let x = self.pick(NUMBERS);
                json!(vec![x; len])
            }
            11 | 12 if depth < 5 => {
                let n = self.below(5);
                Value::Array((0..n).map(|_| self.value(depth + 1)).collect())
            }
            _ if depth < 5 => self.object(depth),
            _ => json!(0),
        }
    }
}
