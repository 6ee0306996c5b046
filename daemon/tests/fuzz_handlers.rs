//! The request-handler fuzz properties (fuzz/src/handlers.rs) on stable: the seed corpus
//! (fuzz/corpus/handlers/seed-*) and a few hundred seeded random inputs through the same
//! harness, so CI checks them without nightly. A regression net, not coverage-guided fuzzing:
//! the real fuzzer and its runs are in docs/FUZZING.md.
//!
//! `SOTALIGN_WRITE_HANDLER_SEEDS=1 cargo test -p sotalign --test fuzz_handlers` rewrites the
//! seed files from [`seed_requests`] first.
use std::collections::BTreeMap;
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

#[path = "../../fuzz/src/handlers.rs"]
mod handlers;
#[path = "../../fuzz/src/vocabulary.rs"]
mod vocabulary;

/// Random inputs after the seeds.
const RANDOM_INPUTS: usize = 300;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/handlers")
}

/// One realistic call per method, and a few sequences, as the seeds of the fuzzer: inputs
/// that reach past params parsing into every handler. Sample ids follow the harness's data
/// set: row `i` is image `2i + 1` and text `2i + 2`; rows 18 and up are unpaired.
fn seed_requests() -> Vec<Vec<(&'static str, Value)>> {
    let doc = json!({"textDocument": {"uri": "file:///m.jsonl"}, "position": {"line": 1, "character": 3}});
    let mut seeds: Vec<Vec<(&'static str, Value)>> = [
        ("sotalign/status", json!({})),
        ("sotalign/listSamples", json!({"modality": "image", "limit": 5})),
        ("sotalign/listSamples", json!({"modality": "text", "state": "unpaired", "filter": "thing"})),
        ("sotalign/getSample", json!({"id": 1})),
        ("sotalign/suggestForSample", json!({"sample": 1, "k": 5})),
        ("sotalign/suggestPairs", json!({"limit": 5, "strategy": "mnn_ot"})),
        ("sotalign/confirm", json!({"image": 41, "text": 44})),
        ("sotalign/reject", json!({"image": 43, "text": 46})),
        ("sotalign/undo", json!({"decision": 1})),
        ("sotalign/listPairs", json!({"limit": 5})),
        ("sotalign/search", json!({"query": {"sample": 1}, "k": 5})),
        ("sotalign/search", json!({"query": {"text": "thing"}, "k": 3})),
        ("sotalign/align", json!({"method": "cca", "seed": 2, "config": handlers::small_config()})),
        ("sotalign/align", json!({"method": "sotalign", "config": {"optim": {"steps": 5}, "heads": {"dim": 8}, "klot": {"iters": 5, "batch": 8}}})),
        ("sotalign/cancel", json!({"job": 1})),
        ("sotalign/jobs", json!({"includeFinished": true})),
        ("sotalign/evaluate", json!({})),
        ("sotalign/runs", json!({"limit": 3})),
        ("sotalign/ingest", json!({"source": {"embedded": [{"modality": "image", "key": "e1", "vector": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]}]}})),
        ("sotalign/ingest", json!({"source": {"manifest": "$DIR/bad.jsonl"}})),
        ("sotalign/ingest", json!({"source": {"folders": {"images": "$DIR/pictures", "texts": "$DIR/captions.txt"}}})),
        ("sotalign/ingest", json!({"source": {"csv": "$DIR/table.csv"}})),
        ("sotalign/nextToLabel", json!({"limit": 3})),
        ("sotalign/export", json!({"format": "jsonl", "dest": "$DIR/export-out"})),
        ("sotalign/getImage", json!({"path": "$DIR/one.png", "maxWidth": 8, "maxHeight": 8})),
        ("sotalign/getImage", json!({"sample": 1, "maxWidth": 8, "maxHeight": 8})),
        ("sotalign/audit", json!({})),
        ("textDocument/hover", doc.clone()),
        ("textDocument/codeAction", doc),
    ]
    .into_iter()
    .map(|r| vec![r])
    .collect();
    seeds.push(vec![
        ("sotalign/confirm", json!({"image": 45, "text": 48})),
        ("sotalign/undo", json!({"decision": 2})),
        ("sotalign/listPairs", json!({"state": "confirmed"})),
    ]);
    seeds.push(vec![
        (
            "sotalign/align",
            json!({"method": "auto", "config": handlers::small_config()}),
        ),
        ("sotalign/jobs", json!({})),
        ("sotalign/status", json!({})),
    ]);
    seeds
}

fn seed_files() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seed files in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, b)
        })
        .collect()
}

/// Count each request per method: (answered, with a result).
fn tally(seen: &mut BTreeMap<String, (usize, usize)>, answered: Vec<(String, bool)>) {
    for (m, ok) in answered {
        let e = seen.entry(m).or_default();
        e.0 += 1;
        e.1 += ok as usize;
    }
}

#[test]
fn request_handlers_keep_the_fuzz_properties() {
    let h = handlers::Harness::start();
    if std::env::var_os("SOTALIGN_WRITE_HANDLER_SEEDS").is_some() {
        std::fs::create_dir_all(corpus_dir()).expect("corpus dir");
        for (i, reqs) in seed_requests().iter().enumerate() {
            let name = reqs[0].0.rsplit('/').next().unwrap_or("x");
            let path = corpus_dir().join(format!("seed-{i:02}-{name}"));
            std::fs::write(&path, h.encode(reqs)).expect("write seed");
        }
    }
    // Per method: requests answered, and how many with a result.
    let mut seen: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let seeds = seed_files();
    for (path, data) in &seeds {
        let answered = h.check(data);
        assert!(!answered.is_empty(), "{} sends no request", path.display());
        tally(&mut seen, answered);
    }
    // Every seed reached its handler: each method of the table got at least one result.
    let table: Vec<&str> = h
        .methods()
        .iter()
        .copied()
        .filter(|m| m.starts_with("sotalign/") && *m != "sotalign/nope")
        .collect();
    for m in &table {
        let (_, ok) = seen.get(*m).copied().unwrap_or_default();
        assert!(ok > 0, "no seed got a result from {m}: {seen:?}");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(14);
    for _ in 0..RANDOM_INPUTS {
        let len = rng.random_range(0..400);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        tally(&mut seen, h.check(&data));
    }
    eprintln!(
        "[fuzz_handlers] {} seeds, {RANDOM_INPUTS} random inputs; per method (answered, results): {seen:?}",
        seeds.len()
    );
}
