//! The cargo-fuzz properties (fuzz/src/harness.rs) on stable: the seed corpus plus proptest-made
//! inputs (random bytes, and valid frame streams with bytes flipped, cut or inserted), so CI
//! checks them without nightly. The real coverage-guided fuzzer: docs/FUZZING.md.
use proptest::prelude::*;

#[path = "../../fuzz/src/harness.rs"]
mod harness;

fn corpus(dir: &str) -> Vec<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seed files in {}", path.display());
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn seed_corpus_passes_the_fuzz_properties() {
    for seed in corpus("framing") {
        harness::check_framing(&seed);
    }
    for seed in corpus("message") {
        harness::check_message(&seed);
    }
}

/// A valid stream of frames to mutate.
fn stream() -> Vec<u8> {
    corpus("framing")[0][1..].to_vec()
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Cut(usize, usize),
    Insert(usize, Vec<u8>),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), 0usize..40).prop_map(|(i, n)| Edit::Cut(i, n)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 0..12))
            .prop_map(|(i, v)| Edit::Insert(i, v)),
        // Header-shaped insertions reach the resync and length paths more often.
        (
            any::<usize>(),
            prop::sample::select(vec![
                b"Content-Length: ".to_vec(),
                b"\r\n\r\n".to_vec(),
                b"content-length:99999999999999999999\r\n".to_vec(),
                b"Content-Length: -1\r\n\r\n".to_vec(),
                b"{\"jsonrpc\":\"2.0\"}".to_vec(),
            ])
        )
            .prop_map(|(i, v)| Edit::Insert(i, v)),
    ]
}

fn apply(mut data: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = data.len().max(1);
        match e {
            Edit::Flip(i, b) => {
                if !data.is_empty() {
                    data[i % n] ^= b | 1;
                }
            }
            Edit::Cut(i, len) => {
                let s = (i % n).min(data.len());
                let e = (s + len).min(data.len());
                data.drain(s..e);
            }
            Edit::Insert(i, v) => {
                let at = (i % n).min(data.len());
                data.splice(at..at, v.iter().copied());
            }
        }
    }
    data
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(ctl in any::<u8>(), data in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut input = vec![ctl];
        input.extend(&data);
        harness::check_framing(&input);
        harness::check_message(&data);
    }

    #[test]
    fn mutated_valid_streams(ctl in any::<u8>(), edits in prop::collection::vec(edit(), 1..6)) {
        let data = apply(stream(), &edits);
        let mut input = vec![ctl];
        input.extend(&data);
        harness::check_framing(&input);
    }

    #[test]
    fn mutated_valid_messages(pick in 0usize..6, edits in prop::collection::vec(edit(), 1..4)) {
        let seeds = corpus("message");
        harness::check_message(&apply(seeds[pick % seeds.len()].clone(), &edits));
    }
}
