//! Parity of our encoders with an independent implementation, on the real fetched weights.
//!
//! Needs `sotalign fetch` (CI runs it first). When the assets are absent these tests print a
//! loud SKIPPED message and pass, unless `SOTALIGN_REQUIRE_ASSETS=1` (set by `.ci/run`), in
//! which case absence is a failure: in CI the real loading code must really run.
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde_json::Value;
use sotalign::assets::Assets;
use sotalign::encoders::{ImageEncoder, TextEncoder};
use sotalign::io::npy::NpyF32;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn top_k(logits: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    idx.truncate(k);
    idx
}

#[test]
fn minilm_matches_golden_token_ids_and_embeddings() {
    let Some(a) = Assets::for_test("minilm_golden", &["minilm"]) else {
        return;
    };
    let enc = TextEncoder::load(&a.minilm_dir(), &Device::Cpu).unwrap();
    assert_eq!(enc.dim(), 384);
    assert_eq!(enc.max_seq(), 256);
    let g: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("golden/minilm.json")).unwrap(),
    )
    .unwrap();
    let items = g["items"].as_array().unwrap();
    let texts: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
    // batch of 3 so padding and length-sorting are exercised
    let emb = enc.encode(&texts, 3, true).unwrap();
    for (k, it) in items.iter().enumerate() {
        let ids: Vec<u32> = it["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            enc.token_ids(texts[k]).unwrap(),
            ids,
            "token ids of {:?}",
            texts[k]
        );
        let c = cosine(emb.row(k), &f32s(&it["embedding"]));
        assert!(c > 0.9999, "{:?}: cosine {c}", texts[k]);
        let norm: f32 = emb.row(k).iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}

#[test]
fn minilm_truncates_at_max_seq_length() {
    let Some(a) = Assets::for_test("minilm_truncation", &["minilm"]) else {
        return;
    };
    let enc = TextEncoder::load(&a.minilm_dir(), &Device::Cpu).unwrap();
    let long = "word ".repeat(600);
    assert_eq!(enc.token_ids(&long).unwrap().len(), 256);
    let m = enc.encode(&[long.as_str(), "short"], 2, false).unwrap();
    assert!(m.data.iter().all(|v| v.is_finite()));
}

#[test]
fn efficientnet_lite0_matches_golden_top5_and_features() {
    let Some(a) = Assets::for_test("effnet_golden", &["effnet-lite0"]) else {
        return;
    };
    let enc = ImageEncoder::load_efficientnet(&a.effnet_pth(), &Device::Cpu).unwrap();
    assert_eq!(enc.dim(), 1280);
    let g: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("golden/effnet_lite0.json")).unwrap(),
    )
    .unwrap();
    for it in g["items"].as_array().unwrap() {
        let name = it["image"].as_str().unwrap();
        let input = enc
            .load_input(&fixtures().join("golden").join(name))
            .unwrap();
        // Our preprocessing reproduces PIL's first pixels (u8 level, so exactly representable).
        let first5 = f32s(&it["input_first5"]);
        for (x, y) in input.iter().zip(&first5) {
            assert!(
                (x - y).abs() <= 1.0 / 128.0 + 1e-4,
                "{name}: input {x} vs {y}"
            );
        }
        let feats = enc.encode_inputs(std::slice::from_ref(&input)).unwrap();
        let c = cosine(feats.row(0), &f32s(&it["feature"]));
        assert!(c > 0.99, "{name}: feature cosine {c}");
        let logits = enc.classify_inputs(std::slice::from_ref(&input)).unwrap();
        let want: Vec<usize> = it["top5_imagenet_classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(top_k(logits.row(0), 5), want, "{name}: top-5 classes");
        eprintln!("{name}: feature cosine {c:.6}");
    }
}

/// Largest |a - b| over the largest |b|.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let d = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
    d / scale.max(1e-12)
}

/// The channels-last CPU EfficientNet equals the candle model (its reference) on the real
/// weights, for the golden images and Tux Paint stamps (PNG and SVG), batched as in use.
#[test]
fn efficientnet_cpu_fast_path_matches_candle_model() {
    let Some(a) = Assets::for_test("effnet_fast_path", &["effnet-lite0", "tuxpaint"]) else {
        return;
    };
    let enc = ImageEncoder::load_efficientnet(&a.effnet_pth(), &Device::Cpu).unwrap();
    assert!(enc.uses_cpu_fast_path());
    let mut files: Vec<PathBuf> = ["chelsea.png", "coffee.png"]
        .iter()
        .map(|n| fixtures().join("golden").join(n))
        .collect();
    let stamps = sotalign::ingest::sources::tuxpaint(&a.tuxpaint_stamps()).unwrap();
    let all: Vec<PathBuf> = stamps.items.into_iter().filter_map(|i| i.image).collect();
    files.extend(all.iter().step_by(all.len() / 7).take(7).cloned());
    let inputs: Vec<Vec<f32>> = files.iter().map(|f| enc.load_input(f).unwrap()).collect();
    let fast = enc.encode_inputs(&inputs).unwrap();
    let reference = enc.encode_inputs_candle(&inputs).unwrap();
    for (k, f) in files.iter().enumerate() {
        let d = max_rel_diff(fast.row(k), reference.row(k));
        assert!(d < 1e-4, "{}: max relative difference {d}", f.display());
    }
    // A single image (parallel products instead of parallel images) gives the same row.
    let one = enc.encode_inputs(&inputs[..1]).unwrap();
    assert!(max_rel_diff(one.row(0), fast.row(0)) < 1e-5);
}

/// The CPU BERT (unpadded, faer products) equals candle-transformers' BERT on the real
/// MiniLM weights, raw (unnormalised) rows, for the golden texts and Tux Paint captions.
#[test]
fn minilm_cpu_fast_path_matches_candle_bert() {
    let Some(a) = Assets::for_test("minilm_fast_path", &["minilm", "tuxpaint"]) else {
        return;
    };
    let fast = TextEncoder::load(&a.minilm_dir(), &Device::Cpu).unwrap();
    assert!(fast.uses_cpu_fast_path());
    let reference = TextEncoder::load_backend(
        &a.minilm_dir(),
        &Device::Cpu,
        sotalign::encoders::TextBackend::Candle,
    )
    .unwrap();
    let g: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("golden/minilm.json")).unwrap(),
    )
    .unwrap();
    let mut texts: Vec<String> = g["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["text"].as_str().unwrap().to_string())
        .collect();
    let stamps = sotalign::ingest::sources::tuxpaint(&a.tuxpaint_stamps()).unwrap();
    let caps: Vec<String> = stamps.items.into_iter().filter_map(|i| i.text).collect();
    texts.extend(caps.iter().step_by(caps.len() / 40).take(40).cloned());
    texts.push("word ".repeat(400)); // truncated at max_seq_length
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    let got = fast.encode(&refs, 16, false).unwrap();
    let want = reference.encode(&refs, 16, false).unwrap();
    for (k, t) in refs.iter().enumerate() {
        let d = max_rel_diff(got.row(k), want.row(k));
        assert!(d < 1e-4, "{t:?}: max relative difference {d}");
    }
}

/// Rows of the reference Tux Paint embeddings: (file, caption, row).
fn reference_rows() -> Vec<(String, String, usize)> {
    let idx: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/tuxpaint_index.json")).unwrap(),
    )
    .unwrap();
    idx["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["file"].as_str().unwrap().to_string(),
                r["caption"].as_str().unwrap().to_string(),
                r["row"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

/// Encode the given reference rows with our encoders and compare row by row.
fn check_tuxpaint_rows(a: &Assets, rows: &[(String, String, usize)]) -> (f64, f64) {
    let img_ref = NpyF32::open(&fixtures().join("reference/tuxpaint_img.npy")).unwrap();
    let txt_ref = NpyF32::open(&fixtures().join("reference/tuxpaint_txt.npy")).unwrap();
    let ienc = ImageEncoder::load_efficientnet(&a.effnet_pth(), &Device::Cpu).unwrap();
    let tenc = TextEncoder::load(&a.minilm_dir(), &Device::Cpu).unwrap();
    // The adapter must produce exactly these items (file -> caption) for the reference rows.
    let ds = sotalign::ingest::sources::tuxpaint(&a.tuxpaint_stamps()).unwrap();
    let by_file: std::collections::HashMap<&str, &str> = ds
        .items
        .iter()
        .map(|i| (i.source.as_str(), i.text.as_deref().unwrap_or("")))
        .collect();
    let paths: Vec<PathBuf> = rows
        .iter()
        .map(|(f, _, _)| a.tuxpaint_stamps().join(f))
        .collect();
    let (im, rep) = ienc.encode_paths(&paths, 16).unwrap();
    assert!(rep.skipped.is_empty(), "{}", rep.summary(5));
    let caps: Vec<&str> = rows.iter().map(|(_, c, _)| c.as_str()).collect();
    let tm = tenc.encode(&caps, 32, false).unwrap();
    let (mut worst_i, mut worst_t) = (1.0f64, 1.0f64);
    let mut r_i = vec![0f32; 1280];
    let mut r_t = vec![0f32; 384];
    for (k, (file, cap, row)) in rows.iter().enumerate() {
        assert_eq!(
            by_file.get(file.as_str()).copied(),
            Some(cap.as_str()),
            "adapter caption of {file}"
        );
        img_ref.read_row(*row, &mut r_i);
        txt_ref.read_row(*row, &mut r_t);
        let ci = cosine(im.row(k), &r_i);
        let ct = cosine(tm.row(k), &r_t);
        // raw (un-normalised) text rows must match in scale too
        let (n_ours, n_ref): (f32, f32) = (
            tm.row(k).iter().map(|x| x * x).sum::<f32>().sqrt(),
            r_t.iter().map(|x| x * x).sum::<f32>().sqrt(),
        );
        assert!(
            (n_ours / n_ref - 1.0).abs() < 1e-3,
            "{file}: text norm {n_ours} vs {n_ref}"
        );
        assert!(ci > 0.99, "{file}: image cosine {ci}");
        assert!(ct > 0.9999, "{file} {cap:?}: text cosine {ct}");
        worst_i = worst_i.min(ci);
        worst_t = worst_t.min(ct);
    }
    (worst_i, worst_t)
}

#[test]
fn tuxpaint_sample_reproduces_reference_rows() {
    let Some(a) = Assets::for_test("tuxpaint_sample", &["minilm", "effnet-lite0", "tuxpaint"])
    else {
        return;
    };
    let all = reference_rows();
    // 25 rows spread over all categories.
    let sample: Vec<_> = all
        .iter()
        .step_by(all.len() / 25)
        .take(25)
        .cloned()
        .collect();
    let (wi, wt) = check_tuxpaint_rows(&a, &sample);
    eprintln!(
        "tuxpaint sample of {}: worst image cosine {wi:.6}, worst text cosine {wt:.7}",
        sample.len()
    );
}

/// All 785 rows: `cargo test -p sotalign --test encoder_parity -- --ignored --nocapture`.
#[test]
#[ignore]
fn tuxpaint_all_rows_reproduce_reference() {
    let Some(a) = Assets::for_test("tuxpaint_all", &["minilm", "effnet-lite0", "tuxpaint"]) else {
        return;
    };
    let all = reference_rows();
    let (wi, wt) = check_tuxpaint_rows(&a, &all);
    eprintln!(
        "tuxpaint all {} rows: worst image cosine {wi:.6}, worst text cosine {wt:.7}",
        all.len()
    );
}

#[test]
fn legacy_pth_has_expected_tensors() {
    let Some(a) = Assets::for_test("pth_reader", &["effnet-lite0"]) else {
        return;
    };
    let t = sotalign::encoders::pth::load_legacy(&a.effnet_pth(), &Device::Cpu).unwrap();
    // 296 entries (ASSETS.md); 4,694,073 elements in all, counted by Python's own unpickler.
    assert_eq!(t.len(), 296);
    let total: usize = t.values().map(|v| v.elem_count()).sum();
    assert_eq!(total, 4_694_073);
    assert_eq!(t["_conv_stem.weight"].dims(), &[32, 3, 3, 3]);
    assert_eq!(t["_fc.weight"].dims(), &[1000, 1280]);
    assert_eq!(t["_blocks.0._depthwise_conv.weight"].dims(), &[32, 1, 3, 3]);
}
