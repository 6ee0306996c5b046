//! The daemon's encoders, against the real binary: raw Tux Paint stamps and captions ingested
//! through a manifest are encoded in the background (with `encode` progress and the embedding
//! cache), free-text search encodes the query with MiniLM and searches the aligned image index,
//! and without the weights both answer `NOT_READY` naming `sotalign fetch`.
//!
//! The real-asset test needs `sotalign fetch` (CI runs it). When the assets are absent it prints
//! a loud SKIPPED message and passes, unless `SOTALIGN_REQUIRE_ASSETS=1` (set by `.ci/run`).
mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{Value, json};
use sotalign::io::npy::read_npy;
use sotalign_protocol::types::*;
use sotalign_protocol::vector::Vector;
use sotalign_protocol::{Client, codes, methods};

/// Stamps ingested raw, each an image and its caption: the first `N_PAIRS` as seed pairs, the
/// rest stored unpaired (what suggestions and search offer).
const N: usize = 26;
const N_PAIRS: usize = 20;

/// Reference rows (index.json row numbers) of the stamps used: distinct captions, mixed groups.
fn pick_rows(index: &Value, n: usize) -> Vec<usize> {
    let rows = index["rows"].as_array().unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    // Spread over the collection (every 97th row), skipping repeated captions.
    let mut r = 5;
    while out.len() < n {
        let cap = rows[r % rows.len()]["caption"]
            .as_str()
            .unwrap()
            .to_string();
        if seen.insert(cap) {
            out.push(r % rows.len());
        }
        r += 97;
    }
    out
}

#[test]
fn raw_stamps_are_encoded_in_the_background_and_text_search_uses_minilm() {
    let Some(assets) = common::assets_or_skip("daemon raw ingest + text search") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tuxpaint_index.json")).unwrap(),
    )
    .unwrap();
    let rows = pick_rows(&index, N);
    let stamps = assets.tuxpaint_stamps();
    // Raw manifest: image paths and captions, no embeddings.
    let mut lines = vec![json!({"sotalign_manifest": 1}).to_string()];
    for (k, &r) in rows.iter().enumerate() {
        let file = index["rows"][r]["file"].as_str().unwrap();
        let caption = index["rows"][r]["caption"].as_str().unwrap();
        let split = if k < N_PAIRS { "train" } else { "unpaired" };
        lines.push(
            json!({"key": format!("row-{r}"), "imagePath": stamps.join(file).display().to_string(), "caption": caption, "split": split})
                .to_string(),
        );
    }
    let unpaired_rows = &rows[N_PAIRS..];
    let manifest = dir.path().join("raw.jsonl");
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();
    // A private embedding cache, so the run really encodes.
    let cache = dir.path().join("cache");
    let mut child = std::process::Command::new(bin())
        .args(["serve", "--stdio", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(scope_args(&dir.path().join("data")))
        .env("SOTALIGN_CACHE", &cache)
        .env("SOTALIGN_ASSETS", &assets.root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sotalign");
    let stdin = SharedWriter(Arc::new(Mutex::new(child.stdin.take().unwrap())));
    let stdout = child.stdout.take().unwrap();
    let _d = Daemon { child, addr: None };
    let mut c = Client::new(stdout, stdin);
    c.initialize("encoder-test", None).unwrap();

    let r = c
        .call::<methods::Ingest>(IngestParams {
            source: IngestSource::Manifest(manifest.display().to_string()),
        })
        .unwrap();
    let f = wait_finished(&mut c, r.job);
    assert_eq!(f.state, JobState::Succeeded, "{f:?}");
    assert_eq!(f.ingested, Some(2 * N as u64));
    let p = progress_of(&mut c, r.job);
    let enc: Vec<&JobProgress> = p.iter().filter(|v| v.stage == JobStage::Encode).collect();
    assert!(!enc.is_empty(), "no encode progress: {p:?}");
    assert_eq!(enc.last().unwrap().step, 2 * N as u64);
    let expect = format!("{0} of {0} encoded, 0 skipped", 2 * N);
    assert!(
        p.iter()
            .filter_map(|v| v.message.as_deref())
            .any(|m| m.contains(&expect)),
        "no `{expect}` in {p:?}"
    );
    let st = c.call::<methods::Status>(Empty {}).unwrap();
    assert_eq!(st.counts.confirmed_pairs, N_PAIRS as u64);
    assert_eq!(st.counts.unpaired_images, (N - N_PAIRS) as u64);
    assert_eq!(st.image_encoder.as_ref().map(|e| e.dim), Some(1280));
    assert_eq!(st.text_encoder.as_ref().map(|e| e.dim), Some(384));
    assert_eq!(
        st.text_encoder.as_ref().map(|e| e.name.as_str()),
        Some("all-MiniLM-L6-v2")
    );
    // The cache now holds every row.
    let shards = walk_count(&cache, "npy");
    assert!(shards >= 2, "{shards} cache shards");

    // Align (CCA teacher on the seed pairs), then compare with the independent
    // implementation's embeddings of the same stamps: searching with the reference's vector of
    // unpaired stamp k finds the daemon's encoding of stamp k, almost identical.
    let a = c
        .call::<methods::Align>(AlignParams {
            method: AlignMethod::Cca,
            preset: None,
            config: None,
            seed: Some(1),
        })
        .unwrap();
    assert_eq!(wait_finished(&mut c, a.job).state, JobState::Succeeded);
    let ref_img = read_npy(&fixtures().join("tuxpaint_img.npy")).unwrap();
    let ref_txt = read_npy(&fixtures().join("tuxpaint_txt.npy")).unwrap();
    let keys =
        |h: &[Candidate]| -> Vec<String> { h.iter().map(|c| c.sample.key.clone()).collect() };
    for &r in unpaired_rows {
        for (m, mat) in [(Modality::Image, &ref_img), (Modality::Text, &ref_txt)] {
            let hits = c
                .call::<methods::Search>(SearchParams {
                    query: SearchQuery::Vector {
                        modality: m,
                        values: Vector(mat.row(r).to_vec()),
                    },
                    target: Some(m),
                    k: 3,
                })
                .unwrap()
                .hits;
            assert_eq!(
                hits[0].sample.key,
                format!("row-{r}"),
                "{m:?}: {:?}",
                keys(&hits)
            );
            assert!(hits[0].score > 0.98, "{m:?} row {r}: {}", hits[0].score);
        }
        // Free text: the caption, encoded by the daemon, lands on its own text sample (same
        // encoder, same input: cosine ~1 in the aligned space)...
        let caption = index["rows"][r]["caption"].as_str().unwrap().to_string();
        let t = c
            .call::<methods::Search>(SearchParams {
                query: SearchQuery::Text(caption.clone()),
                target: Some(Modality::Text),
                k: 1,
            })
            .unwrap();
        assert_eq!(t.hits[0].sample.key, format!("row-{r}"));
        assert!(t.hits[0].score > 0.999, "{}", t.hits[0].score);
    }
    // ... and by default it searches the aligned image index.
    let first = unpaired_rows[0];
    let caption = index["rows"][first]["caption"]
        .as_str()
        .unwrap()
        .to_string();
    let s = c
        .call::<methods::Search>(SearchParams {
            query: SearchQuery::Text(caption),
            target: None,
            k: 10,
        })
        .unwrap();
    assert_eq!(s.run, a.run);
    // Only the unpaired images are offered.
    assert_eq!(s.hits.len(), N - N_PAIRS);
    assert!(s.hits.iter().all(|h| h.sample.modality == Modality::Image));
    // The search scores match the independent implementation's MiniLM vector of that caption,
    // searched as a raw vector.
    let v = c
        .call::<methods::Search>(SearchParams {
            query: SearchQuery::Vector {
                modality: Modality::Text,
                values: Vector(ref_txt.row(first).to_vec()),
            },
            target: None,
            k: 10,
        })
        .unwrap();
    assert_eq!(keys(&s.hits), keys(&v.hits));
    for (a, b) in s.hits.iter().zip(&v.hits) {
        assert!(
            (a.score - b.score).abs() < 1e-3,
            "{} vs {}",
            a.score,
            b.score
        );
    }

    // Re-ingesting the same manifest stores and encodes nothing new.
    let r2 = c
        .call::<methods::Ingest>(IngestParams {
            source: IngestSource::Manifest(manifest.display().to_string()),
        })
        .unwrap();
    let f2 = wait_finished(&mut c, r2.job);
    assert_eq!((f2.state, f2.ingested), (JobState::Succeeded, Some(0)));

    // Folders: three more stamps plus a corrupt PNG, and a caption file. The corrupt file is
    // stored, named in the job's report, and stays unencoded; everything else is searchable.
    let folder = dir.path().join("more");
    std::fs::create_dir_all(&folder).unwrap();
    let extra = pick_rows(&index, N + 3);
    let extra = &extra[N..];
    let mut captions = String::new();
    for &r in extra {
        let file = index["rows"][r]["file"].as_str().unwrap();
        std::fs::copy(stamps.join(file), folder.join(format!("row-{r}.png"))).unwrap();
        captions.push_str(index["rows"][r]["caption"].as_str().unwrap());
        captions.push('\n');
    }
    std::fs::write(folder.join("broken.png"), b"\x89PNG but not really").unwrap();
    let caption_file = dir.path().join("captions.txt");
    std::fs::write(&caption_file, captions).unwrap();
    let r3 = c
        .call::<methods::Ingest>(IngestParams {
            source: IngestSource::Folders {
                images: Some(folder.display().to_string()),
                texts: Some(caption_file.display().to_string()),
            },
        })
        .unwrap();
    let f3 = wait_finished(&mut c, r3.job);
    assert_eq!((f3.state, f3.ingested), (JobState::Succeeded, Some(7)));
    let p3 = progress_of(&mut c, r3.job);
    assert!(
        p3.iter()
            .filter_map(|v| v.message.as_deref())
            .any(|m| m.contains("6 of 7 encoded, 1 skipped") && m.contains("broken.png")),
        "{p3:?}"
    );
    let st = c.call::<methods::Status>(Empty {}).unwrap();
    assert_eq!(st.counts.pending_encoding, 1);
    assert_eq!(st.counts.images, (N + 4) as u64);
    // The new stamps are in the served model's index (same model, re-indexed).
    assert_eq!(st.index.images, (N + 3) as u64);
    let hits = c
        .call::<methods::Search>(SearchParams {
            query: SearchQuery::Vector {
                modality: Modality::Image,
                values: Vector(ref_img.row(extra[0]).to_vec()),
            },
            target: Some(Modality::Image),
            k: 1,
        })
        .unwrap()
        .hits;
    assert_eq!(hits[0].sample.key, format!("row-{}", extra[0]));
    assert!(hits[0].score > 0.98, "{}", hits[0].score);
}

fn walk_count(dir: &Path, ext: &str) -> usize {
    let mut n = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == ext) {
                n += 1;
            }
        }
    }
    n
}

/// Without the weights: a clear NOT_READY naming `sotalign fetch`, and nothing stored.
#[test]
fn without_assets_text_search_and_raw_ingest_say_run_sotalign_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-assets");
    std::fs::create_dir_all(&empty).unwrap();
    let fx = fixture(dir.path(), 20, 10, 10);
    let (_d, mut c, _) = spawn_stdio(
        &dir.path().join("data"),
        &["--assets-dir", empty.to_str().unwrap()],
    );
    c.initialize("no-assets", None).unwrap();
    ingest(&mut c, &fx.manifest);
    let a = c.call::<methods::Align>(align_params(5)).unwrap();
    assert_eq!(wait_finished(&mut c, a.job).state, JobState::Succeeded);
    let e = c
        .call::<methods::Search>(SearchParams {
            query: SearchQuery::Text("a penguin".into()),
            target: None,
            k: 3,
        })
        .unwrap_err();
    assert_eq!(e.code(), Some(codes::NOT_READY));
    let msg = e.to_string();
    assert!(msg.contains("sotalign fetch"), "{msg}");
    // Raw items: refused before anything is stored.
    let before = c.call::<methods::Status>(Empty {}).unwrap().counts;
    let raw = dir.path().join("raw.jsonl");
    std::fs::write(
        &raw,
        json!({"sotalign_manifest": 1}).to_string()
            + "\n"
            + &json!({"key": "x", "imagePath": "x.png", "caption": "An x."}).to_string()
            + "\n",
    )
    .unwrap();
    let e = c
        .call::<methods::Ingest>(IngestParams {
            source: IngestSource::Manifest(raw.display().to_string()),
        })
        .unwrap_err();
    assert_eq!(e.code(), Some(codes::NOT_READY));
    assert!(e.to_string().contains("sotalign fetch"), "{e}");
    let folder = dir.path().join("images");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("a.png"), b"not decoded: refused before").unwrap();
    let e = c
        .call::<methods::Ingest>(IngestParams {
            source: IngestSource::Folders {
                images: Some(folder.display().to_string()),
                texts: None,
            },
        })
        .unwrap_err();
    assert_eq!(e.code(), Some(codes::NOT_READY), "{e}");
    assert_eq!(c.call::<methods::Status>(Empty {}).unwrap().counts, before);
    // No encoder was needed for the rest: the daemon still serves.
    assert!(
        c.call::<methods::Search>(SearchParams {
            query: SearchQuery::Sample(SampleId(1)),
            target: None,
            k: 3
        })
        .is_ok()
    );
}
