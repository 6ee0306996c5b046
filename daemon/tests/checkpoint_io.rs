//! End to end through the file formats: embeddings written as .npy and safetensors, a JSONL
//! manifest with a test split, a fitted method written as a checkpoint, read back and restored:
//! the restored method gives the same test metrics (up to the f32 storage of the state).
use std::ops::ControlFlow;
use std::path::PathBuf;

use sotalign::cli::data_args::DataArgs;
use sotalign::io::reference::Reference;
use sotalign::io::{read_checkpoint, write_checkpoint, write_npy, write_safetensors};
use sotalign_engine::eval::evaluate;
use sotalign_engine::methods::{self, Method};
use sotalign_engine::{AlignConfig, AlignError};

#[test]
fn files_to_checkpoint_and_back() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference");
    let r = Reference::load(&fixtures).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // First 160 rows: 60 train pairs, 40 test pairs, 30 unpaired images, 30 unpaired texts.
    let rows: Vec<usize> = (0..160).collect();
    write_npy(&dir.path().join("img.npy"), &r.img.select_rows(&rows)).unwrap();
    write_safetensors(
        &dir.path().join("txt.safetensors"),
        &[("emb".into(), r.txt.select_rows(&rows))],
        None,
    )
    .unwrap();
    let mut manifest = String::from("{\"sotalign_manifest\": 1}\n");
    for i in 0..100 {
        let split = if i < 60 { "train" } else { "test" };
        let cap = serde_json::to_string(&r.captions[i]).unwrap();
        manifest.push_str(&format!(
            "{{\"imageRow\": {i}, \"textRow\": {i}, \"caption\": {cap}, \"split\": \"{split}\"}}\n"
        ));
    }
    for i in 100..130 {
        manifest.push_str(&format!("{{\"imageRow\": {i}}}\n"));
    }
    for i in 130..160 {
        let cap = serde_json::to_string(&r.captions[i]).unwrap();
        manifest.push_str(&format!("{{\"textRow\": {i}, \"caption\": {cap}}}\n"));
    }
    std::fs::write(dir.path().join("m.jsonl"), manifest).unwrap();
    let args = DataArgs {
        images: Some(dir.path().join("img.npy").display().to_string()),
        texts: Some(format!(
            "{}:emb",
            dir.path().join("txt.safetensors").display()
        )),
        manifest: Some(dir.path().join("m.jsonl")),
        reference: None,
        seed: 0,
        n: 0,
    };
    let (data, test) = args.load().unwrap();
    let test = test.unwrap();
    assert_eq!(
        (data.n_pairs(), data.xu.rows, data.yu.rows, test.x.rows),
        (60, 30, 30, 40)
    );
    let cfg = AlignConfig::default();
    for m in [Method::Cca, Method::Csa, Method::ProcrustesW, Method::AsifC] {
        let fitted = methods::fit(m, &data, &cfg, &mut |_| ControlFlow::Continue(())).unwrap();
        let before = evaluate(fitted.as_ref(), &test.x, &test.y, &test.labels).unwrap();
        let path = dir.path().join(format!("ck/{m}.safetensors"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        write_checkpoint(
            &path,
            &fitted.export_state().unwrap(),
            &cfg,
            serde_json::json!({"test": true}),
        )
        .unwrap();
        assert!(path.with_extension("json").exists(), "JSON sidecar written");
        let ck = read_checkpoint(&path).unwrap();
        assert_eq!(ck.config, cfg);
        let back = methods::restore(&ck.state).unwrap();
        let after = evaluate(back.as_ref(), &test.x, &test.y, &test.labels).unwrap();
        // f32 storage moves scores by ~1e-7: R@k may only change through a near-tie.
        assert!((before.i2t.mrr - after.i2t.mrr).abs() < 1e-3, "{m}");
        assert!((before.t2i.mrr - after.t2i.mrr).abs() < 1e-3, "{m}");
    }
    // A file that is not a checkpoint and a wrong-dimension query are typed errors.
    assert!(read_checkpoint(&dir.path().join("txt.safetensors")).is_err());
    let fitted =
        methods::fit(Method::Cca, &data, &cfg, &mut |_| ControlFlow::Continue(())).unwrap();
    assert!(matches!(
        fitted.embed_x(&test.y),
        Err(AlignError::DimensionMismatch { .. })
    ));
}
