//! Data in and out with the real readers: a daemon holds pairs that came with the data plus
//! two annotators' decisions; `sotalign export` writes every format; Python's `datasets`
//! (imagefolder) and `webdataset` (tar shards), `csv` and `json` read them back, and every
//! pair (caption, decoded pixels, state, annotator) must come back. Then the exports go in
//! again (`sotalign ingest --csv / --parquet / --imagefolder / --manifest`, the parquet file
//! written by pandas) and their confirmed pairs must come out unchanged.
//!
//! The Python venv is created once under the target dir (`CARGO_TARGET_TMPDIR`) and reused;
//! the test skips cleanly, saying so, only when PyPI cannot be reached. The re-ingest half
//! encodes the images, so it needs the encoder weights (`sotalign fetch`; skipped loudly
//! without them, a failure under `SOTALIGN_REQUIRE_ASSETS=1`).
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{Value, json};
use sotalign::encoders::preprocess::{Rgb8, load_rgb};
use sotalign_protocol::methods;
use sotalign_protocol::types::*;

/// Six small pictures with captions that stress every writer (commas, quotes, newlines,
/// non-ASCII).
const CAPTIONS: [&str; 6] = [
    "A red square.",
    "A green, \"quoted\" square.",
    "Une île bleue — ünïcode.",
    "Two\nlines.",
    "A yellow one; with semicolons",
    "Plain grey.",
];

fn picture(i: usize) -> Rgb8 {
    let (w, h) = (3 + i, 2 + (i % 3));
    let mut data = Vec::with_capacity(w * h * 3);
    for p in 0..w * h {
        data.extend_from_slice(&[(40 * i) as u8, (p * 17) as u8, (255 - 30 * i) as u8]);
    }
    Rgb8 {
        width: w,
        height: h,
        data,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The venv's python with `datasets` and `webdataset`, or `None` (after a message) when PyPI
/// cannot be reached.
fn python_env() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("py-roundtrip");
    let py = root.join("bin/python");
    let ready = root.join(".ready");
    if ready.exists() {
        return Some(py);
    }
    let _ = std::fs::remove_dir_all(&root);
    let st = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&root)
        .status()
        .expect("python3 is needed for this test");
    assert!(st.success(), "python3 -m venv failed");
    let out = Command::new(&py)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "datasets",
            "webdataset",
            "pillow",
            "pandas",
            "pyarrow",
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let offline = [
            "Could not find a version",
            "No matching distribution",
            "Failed to establish a new connection",
            "Temporary failure in name resolution",
            "Network is unreachable",
            "ConnectionError",
            "timed out",
        ];
        if offline.iter().any(|s| err.contains(s)) {
            eprintln!(
                "SKIP data_roundtrip: PyPI is unreachable, cannot install datasets/webdataset:\n{err}"
            );
            return None;
        }
        panic!("pip install failed:\n{err}");
    }
    std::fs::write(&ready, b"").unwrap();
    Some(py)
}

const READER: &str = r#"
import csv, glob, io, json, sys
from PIL import Image

d = sys.argv[1]
def px(img):
    return img.convert("RGB").tobytes().hex()
def row(caption, img, state, annotator):
    return [caption, px(img), state, annotator if annotator else None]
def srt(rows):
    return sorted(rows, key=json.dumps)
out = {}

from datasets import load_dataset
ds = load_dataset("imagefolder", data_dir=f"{d}/hf", split="train")
out["imagefolder"] = srt(row(r["text"], r["image"], r["state"], r["annotator"]) for r in ds)

import webdataset as wds
shards = sorted(glob.glob(f"{d}/wds/*.tar"))
rows = []
for s in wds.WebDataset(shards, shardshuffle=False).decode("pil"):
    img = s["png"] if "png" in s else s["jpg"]
    rows.append(row(s["txt"], img, s["json"]["state"], s["json"]["annotator"]))
out["webdataset"] = srt(rows)
out["webdataset_shards"] = len(shards)

with open(f"{d}/pairs.csv", newline="", encoding="utf-8") as f:
    out["csv"] = srt(row(r["caption"], Image.open(r["image_path"]), r["state"], r["annotator"])
                     for r in csv.DictReader(f))

with open(f"{d}/pairs.jsonl", encoding="utf-8") as f:
    lines = [json.loads(l) for l in f if l.strip()]
assert lines[0] == {"sotalign_manifest": 1}, lines[0]
out["jsonl"] = srt(row(e["caption"], Image.open(e["imagePath"]), e["decision"]["state"],
                       e["decision"].get("annotator")) for e in lines[1:])

import pandas as pd
pd.read_csv(f"{d}/pairs.csv", keep_default_na=False).to_parquet(f"{d}/pairs.parquet")
json.dump(out, sys.stdout)
"#;

fn sotalign(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "sotalign {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|x| x.to_string());
    v
}

#[test]
fn every_export_format_round_trips_through_the_real_readers() {
    let Some(py) = python_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Pictures, embeddings (so the daemon needs no encoder), a version-1 manifest: pairs 0-1
    // come with the data, 2-5 are stored unpaired for the annotators.
    let n = CAPTIONS.len();
    let mut expected_px = Vec::new();
    for i in 0..n {
        let p = d.join(format!("pic-{i}.png"));
        std::fs::write(&p, sotalign::export::encode_png(&picture(i)).unwrap()).unwrap();
        expected_px.push(hex(&load_rgb(&p).unwrap().data));
    }
    let mut m = sotalign_engine::Matrix::zeros(n, 4);
    for i in 0..n {
        m.row_mut(i)[i % 4] = 1.0;
        m.row_mut(i)[(i + 1) % 4] = 0.5;
    }
    sotalign::io::npy::write_npy(&d.join("e.npy"), &m).unwrap();
    let mut lines = vec![
        json!({"sotalign_manifest": 1, "embeddings": {"image": "e.npy", "text": "e.npy"}})
            .to_string(),
    ];
    for (i, cap) in CAPTIONS.iter().enumerate() {
        lines.push(
            json!({"key": format!("k{i}"), "imagePath": format!("pic-{i}.png"), "imageRow": i,
                   "caption": cap, "textRow": i, "split": if i < 2 { "train" } else { "unpaired" }})
            .to_string(),
        );
    }
    std::fs::write(d.join("in.jsonl"), lines.join("\n") + "\n").unwrap();
    let daemon = spawn_tcp(&d.join("data"), &[]);
    let addr = daemon.addr.clone().unwrap();
    let mut c = connect(&addr);
    c.initialize("roundtrip", None).unwrap();
    ingest(&mut c, &d.join("in.jsonl"));
    let ids = |c: &mut TcpClient, m: Modality| -> Vec<SampleId> {
        let r = c
            .call::<methods::ListSamples>(ListSamplesParams {
                modality: m,
                state: None,
                filter: None,
                offset: 0,
                limit: 100,
            })
            .unwrap();
        let mut v: Vec<(String, SampleId)> = r.items.into_iter().map(|s| (s.key, s.id)).collect();
        v.sort();
        v.into_iter().map(|x| x.1).collect()
    };
    let (img, txt) = (ids(&mut c, Modality::Image), ids(&mut c, Modality::Text));
    let decide = |c: &mut TcpClient, confirm: bool, i: usize, t: usize, who: &str| {
        let p = DecideParams {
            image: img[i],
            text: txt[t],
            source: None,
            annotator: Some(who.into()),
            shown_revision: None,
        };
        if confirm {
            c.call::<methods::Confirm>(p).unwrap();
        } else {
            c.call::<methods::Reject>(p).unwrap();
        }
    };
    decide(&mut c, true, 2, 2, "alice");
    decide(&mut c, true, 3, 3, "bob");
    decide(&mut c, false, 4, 5, "alice");
    decide(&mut c, true, 5, 5, "alice");
    let st = c.call::<methods::Status>(Empty {}).unwrap();
    assert_eq!(
        st.annotators,
        vec![
            AnnotatorCount {
                annotator: "alice".into(),
                confirmed: 2,
                rejected: 1
            },
            AnnotatorCount {
                annotator: "bob".into(),
                confirmed: 1,
                rejected: 0
            },
        ]
    );
    let exp = |i: usize, t: usize, state: &str, who: Option<&str>| {
        json!([CAPTIONS[t], expected_px[i], state, who])
    };
    let expected = sorted(vec![
        exp(0, 0, "confirmed", None),
        exp(1, 1, "confirmed", None),
        exp(2, 2, "confirmed", Some("alice")),
        exp(3, 3, "confirmed", Some("bob")),
        exp(4, 5, "rejected", Some("alice")),
        exp(5, 5, "confirmed", Some("alice")),
    ]);

    let out = d.join("out");
    std::fs::create_dir(&out).unwrap();
    for (format, dest) in [
        ("jsonl", "pairs.jsonl"),
        ("csv", "pairs.csv"),
        ("imagefolder", "hf"),
        ("webdataset", "wds"),
    ] {
        let dest = out.join(dest);
        let said = sotalign(&[
            "export",
            "--connect",
            &addr,
            "--format",
            format,
            "--out",
            dest.to_str().unwrap(),
            "--include-rejected",
            "--shard-size",
            "4",
        ]);
        assert!(said.contains("exported 6 pairs"), "{said}");
    }
    let o = Command::new(&py)
        .arg("-c")
        .arg(READER)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python readers failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let read: Value = serde_json::from_slice(&o.stdout).unwrap();
    for f in ["imagefolder", "webdataset", "csv", "jsonl"] {
        let got = sorted(read[f].as_array().unwrap().clone());
        assert_eq!(got, expected, "{f} did not round-trip");
    }
    assert_eq!(read["webdataset_shards"], 2);
    drop(c);
    drop(daemon);

    // In again: each export (and pandas' parquet of the CSV) into a fresh data dir; its
    // confirmed pairs must be the original confirmed pairs.
    let Some(assets) = assets_or_skip("data_roundtrip (re-ingest half)") else {
        return;
    };
    let confirmed: Vec<Value> = expected
        .iter()
        .filter(|v| v[2] == "confirmed")
        .map(|v| json!([v[0], v[1]]))
        .collect();
    for (flag, src) in [
        ("--manifest", "pairs.jsonl"),
        ("--csv", "pairs.csv"),
        ("--parquet", "pairs.parquet"),
        ("--imagefolder", "hf"),
    ] {
        let data = d.join(format!("re-{}", &flag[2..]));
        let assets_dir = assets.root.to_str().unwrap();
        sotalign(&[
            "ingest",
            "--data-dir",
            data.to_str().unwrap(),
            "--assets-dir",
            assets_dir,
            flag,
            out.join(src).to_str().unwrap(),
        ]);
        let back = d.join(format!("back-{}.jsonl", &flag[2..]));
        sotalign(&[
            "export",
            "--data-dir",
            data.to_str().unwrap(),
            "--format",
            "jsonl",
            "--out",
            back.to_str().unwrap(),
        ]);
        let text = std::fs::read_to_string(&back).unwrap();
        let got: Vec<Value> = text
            .lines()
            .skip(1)
            .map(|l| {
                let e: Value = serde_json::from_str(l).unwrap();
                let px = hex(&load_rgb(Path::new(e["imagePath"].as_str().unwrap()))
                    .unwrap()
                    .data);
                json!([e["caption"], px])
            })
            .collect();
        assert_eq!(
            sorted(got),
            sorted(confirmed.clone()),
            "{flag} did not round-trip"
        );
    }
}

#[test]
fn a_bad_table_is_refused_whole_with_every_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("t.csv"),
        "image_path,caption,split\na.png,A.,\n,,\nb.png,B.,dev\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["ingest", "--data-dir"])
        .arg(d.join("data"))
        .arg("--csv")
        .arg(d.join("t.csv"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3: neither an image nor a caption"),
        "{err}"
    );
    assert!(err.contains("line 4: split must be"), "{err}");
    assert!(err.contains("nothing was stored"), "{err}");
    // The store is as it was: empty.
    let (_d, mut c, _w) = spawn_stdio(&d.join("data"), &[]);
    c.initialize("check", None).unwrap();
    let st = c.call::<methods::Status>(Empty {}).unwrap();
    assert_eq!((st.counts.images, st.counts.texts), (0, 0));
}
