//! Export decided pairs to the formats training code reads: a sotalign manifest (JSONL), CSV, a
//! Hugging Face `imagefolder` directory and WebDataset tar shards. Pure file writing from
//! [`ExportRow`]s (the store query is the caller's); everything is written under a temporary
//! name next to `dest` and renamed into place at the end, so a failed export leaves nothing
//! half-written at `dest`.
//!
//! Every row carries who decided and when: `state` (`confirmed` / `rejected`), `annotator`
//! (absent for pairs that came with the data or clients that named none), `source` (the
//! client, or `manifest`) and `decided_at_ms` (Unix milliseconds).
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use sotalign_protocol::types::ExportFormat;

use crate::encoders::preprocess;
use crate::io::manifest::{self, DecisionInfo, Entry, Header, Split};
use crate::store::ExportRow;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: {msg}", path.display())]
    Dest { path: PathBuf, msg: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pair {key:?}: image {path}: {msg}")]
    Image {
        key: String,
        path: String,
        msg: String,
    },
    #[error("{0}")]
    Write(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub pairs: u64,
    pub files: u64,
}

/// Pairs per WebDataset shard when the caller names none.
pub const DEFAULT_SHARD: usize = 1000;

/// Write `rows` as `format` at `dest` (a file for jsonl/csv, a directory otherwise, which
/// must not exist or be empty).
pub fn export(
    rows: &[ExportRow],
    format: ExportFormat,
    dest: &Path,
    shard_size: usize,
) -> Result<Summary, ExportError> {
    let is_dir = matches!(format, ExportFormat::Imagefolder | ExportFormat::Webdataset);
    check_dest(dest, is_dir)?;
    let name = dest
        .file_name()
        .ok_or_else(|| ExportError::Dest {
            path: dest.to_path_buf(),
            msg: "needs a file or folder name".into(),
        })?
        .to_string_lossy()
        .into_owned();
    // Unique per export, so two clients exporting at once never share a temporary.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dest.with_file_name(format!(".{name}.partial-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_file(&tmp);
    let r = match format {
        ExportFormat::Jsonl => jsonl(rows, &tmp),
        ExportFormat::Csv => csv_table(rows, &tmp),
        ExportFormat::Imagefolder => imagefolder(rows, &tmp),
        ExportFormat::Webdataset => webdataset(rows, &tmp, shard_size.max(1)),
    };
    let files = match r {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if is_dir && dest.is_dir() {
        // Empty (checked above): replace it.
        std::fs::remove_dir(dest).map_err(io(dest))?;
    }
    std::fs::rename(&tmp, dest).map_err(io(dest))?;
    Ok(Summary {
        pairs: rows.len() as u64,
        files,
    })
}

fn check_dest(dest: &Path, is_dir: bool) -> Result<(), ExportError> {
    let bad = |msg: &str| ExportError::Dest {
        path: dest.to_path_buf(),
        msg: msg.into(),
    };
    if is_dir {
        if dest.is_file() {
            return Err(bad("exists and is a file (give a new or empty folder)"));
        }
        if dest.is_dir() && std::fs::read_dir(dest).map_err(io(dest))?.next().is_some() {
            return Err(bad("folder is not empty (give a new or empty folder)"));
        }
    } else if dest.is_dir() {
        return Err(bad("is a folder (give a file name)"));
    }
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() && !p.is_dir() => {
            Err(bad("its parent folder does not exist"))
        }
        _ => Ok(()),
    }
}

fn split_of(r: &ExportRow) -> Split {
    if r.state == "confirmed" {
        Split::Train
    } else {
        Split::Unpaired
    }
}

fn split_name(r: &ExportRow) -> &'static str {
    match split_of(r) {
        Split::Train => "train",
        _ => "unpaired",
    }
}

fn meta_json(r: &ExportRow) -> serde_json::Value {
    json!({
        "key": r.image_key,
        "split": split_name(r),
        "text_key": r.text_key,
        "state": r.state,
        "annotator": r.annotator,
        "source": r.source,
        "decided_at_ms": r.at_ms,
    })
}

/// A sotalign manifest: confirmed pairs as `train` pairs, rejected ones as `unpaired` (both
/// sides, so re-ingesting never turns a rejection into a pair), each with its `decision`.
fn jsonl(rows: &[ExportRow], tmp: &Path) -> Result<u64, ExportError> {
    let entries: Vec<Entry> = rows
        .iter()
        .map(|r| Entry {
            key: Some(r.image_key.clone()),
            image_path: r.image_path.clone(),
            caption: r.caption.clone(),
            split: Some(split_of(r)),
            decision: Some(DecisionInfo {
                state: r.state.clone(),
                annotator: r.annotator.clone(),
                source: r.source.clone(),
                at_ms: r.at_ms,
            }),
            ..Default::default()
        })
        .collect();
    manifest::write(tmp, &Header::v1(), &entries).map_err(|e| ExportError::Write(e.to_string()))?;
    Ok(1)
}

/// CSV columns; `split` (`train` for confirmed, `unpaired` for rejected) makes the table
/// re-ingestable as is (`sotalign ingest --csv`).
pub const CSV_COLUMNS: [&str; 9] = [
    "key",
    "image_path",
    "caption",
    "split",
    "state",
    "annotator",
    "source",
    "decided_at_ms",
    "text_key",
];

fn csv_table(rows: &[ExportRow], tmp: &Path) -> Result<u64, ExportError> {
    let file = std::fs::File::create(tmp).map_err(io(tmp))?;
    let mut w = csv::Writer::from_writer(std::io::BufWriter::new(file));
    let err = |e: csv::Error| ExportError::Write(format!("{}: {e}", tmp.display()));
    w.write_record(CSV_COLUMNS).map_err(err)?;
    for r in rows {
        let at = r.at_ms.to_string();
        w.write_record([
            r.image_key.as_str(),
            r.image_path.as_deref().unwrap_or(""),
            r.caption.as_deref().unwrap_or(""),
            split_name(r),
            r.state.as_str(),
            r.annotator.as_deref().unwrap_or(""),
            r.source.as_str(),
            at.as_str(),
            r.text_key.as_str(),
        ])
        .map_err(err)?;
    }
    let inner = w
        .into_inner()
        .map_err(|e| ExportError::Write(e.to_string()))?;
    let file = inner
        .into_inner()
        .map_err(|e| ExportError::Write(e.to_string()))?;
    file.sync_all().map_err(io(tmp))?;
    Ok(1)
}

/// An image ready to write: its bytes and extension (`png` or `jpg`). PNG and JPEG files are
/// copied as they are; anything else (WebP, GIF, SVG) is decoded and written as PNG.
fn image_bytes(r: &ExportRow) -> Result<(Vec<u8>, &'static str), ExportError> {
    let bad = |msg: String| ExportError::Image {
        key: r.image_key.clone(),
        path: r.image_path.clone().unwrap_or_default(),
        msg,
    };
    let Some(p) = &r.image_path else {
        return Err(bad(
            "the sample has no image file (ingested as a vector only)".into(),
        ));
    };
    let bytes = std::fs::read(p).map_err(|e| bad(e.to_string()))?;
    match image::guess_format(&bytes) {
        Ok(image::ImageFormat::Png) => return Ok((bytes, "png")),
        Ok(image::ImageFormat::Jpeg) => return Ok((bytes, "jpg")),
        _ => {}
    }
    let rgb = preprocess::decode_rgb(Path::new(p), &bytes).map_err(|e| bad(e.to_string()))?;
    Ok((encode_png(&rgb).map_err(bad)?, "png"))
}

/// PNG bytes of an RGB image.
pub fn encode_png(rgb: &preprocess::Rgb8) -> Result<Vec<u8>, String> {
    let img = image::RgbImage::from_raw(rgb.width as u32, rgb.height as u32, rgb.data.clone())
        .ok_or("image buffer has the wrong size")?;
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// `imagefolder`: `NNNNNN.png|jpg` per pair next to `metadata.jsonl` (`file_name`, `text` and
/// the decision columns), as `datasets.load_dataset("imagefolder", data_dir=...)` reads it.
fn imagefolder(rows: &[ExportRow], tmp: &Path) -> Result<u64, ExportError> {
    std::fs::create_dir_all(tmp).map_err(io(tmp))?;
    let mut meta = String::new();
    for (i, r) in rows.iter().enumerate() {
        let (bytes, ext) = image_bytes(r)?;
        let file_name = format!("{i:06}.{ext}");
        let p = tmp.join(&file_name);
        std::fs::write(&p, bytes).map_err(io(&p))?;
        let mut m = meta_json(r);
        m["file_name"] = json!(file_name);
        m["text"] = json!(r.caption);
        meta.push_str(&m.to_string());
        meta.push('\n');
    }
    let p = tmp.join("metadata.jsonl");
    std::fs::write(&p, meta).map_err(io(&p))?;
    Ok(rows.len() as u64 + 1)
}

/// WebDataset: `shard-NNNNNN.tar`, each pair as `KEY.png|jpg` + `KEY.txt` (the caption) +
/// `KEY.json` (key, decision). KEY is the pair's zero-padded index (a WebDataset key may not
/// contain dots, which sample keys may).
fn webdataset(rows: &[ExportRow], tmp: &Path, shard: usize) -> Result<u64, ExportError> {
    std::fs::create_dir_all(tmp).map_err(io(tmp))?;
    let mut files = 0;
    for (s, chunk) in rows.chunks(shard).enumerate() {
        let p = tmp.join(format!("shard-{s:06}.tar"));
        let f = std::fs::File::create(&p).map_err(io(&p))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(f));
        let mut add = |name: String, data: &[u8]| -> Result<(), ExportError> {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_cksum();
            tar.append_data(&mut h, name, data).map_err(io(&p))
        };
        for (j, r) in chunk.iter().enumerate() {
            let key = format!("{:09}", s * shard + j);
            let (bytes, ext) = image_bytes(r)?;
            add(format!("{key}.{ext}"), &bytes)?;
            add(
                format!("{key}.txt"),
                r.caption.as_deref().unwrap_or("").as_bytes(),
            )?;
            add(format!("{key}.json"), meta_json(r).to_string().as_bytes())?;
        }
        let mut w = tar.into_inner().map_err(io(&p))?;
        w.flush().map_err(io(&p))?;
        files += 1;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(dir: &Path) -> Vec<ExportRow> {
        let png = encode_png(&preprocess::Rgb8 {
            width: 2,
            height: 1,
            data: vec![255, 0, 0, 0, 0, 255],
        })
        .unwrap();
        std::fs::write(dir.join("a.png"), &png).unwrap();
        std::fs::write(dir.join("b.svg"), "<svg xmlns='http://www.w3.org/2000/svg' width='4' height='4'><rect width='4' height='4' fill='red'/></svg>").unwrap();
        vec![
            ExportRow {
                state: "confirmed".into(),
                image_key: "a.b/c".into(),
                image_path: Some(dir.join("a.png").display().to_string()),
                text_key: "a".into(),
                caption: Some("A \"red\", thing.\nTwo lines.".into()),
                source: "tui".into(),
                annotator: Some("ann".into()),
                at_ms: 7,
            },
            ExportRow {
                state: "rejected".into(),
                image_key: "b".into(),
                image_path: Some(dir.join("b.svg").display().to_string()),
                text_key: "t".into(),
                caption: Some("No.".into()),
                source: "manifest".into(),
                annotator: None,
                at_ms: 9,
            },
        ]
    }

    #[test]
    fn each_format_writes_and_refuses_a_busy_dest() {
        let d = tempfile::tempdir().unwrap();
        let rows = rows(d.path());
        let s = export(&rows, ExportFormat::Jsonl, &d.path().join("o.jsonl"), 1).unwrap();
        assert_eq!(s, Summary { pairs: 2, files: 1 });
        let f = manifest::ManifestFile::read(&d.path().join("o.jsonl")).unwrap();
        assert_eq!(f.entries.len(), 2);
        assert_eq!(f.entries[0].1.caption, rows[0].caption);
        assert_eq!(f.entries[1].1.split, Some(Split::Unpaired));
        export(&rows, ExportFormat::Csv, &d.path().join("o.csv"), 1).unwrap();
        let mut rd = csv::Reader::from_path(d.path().join("o.csv")).unwrap();
        let recs: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
        assert_eq!(&recs[0][2], rows[0].caption.as_deref().unwrap());
        assert_eq!(&recs[1][3], "unpaired");
        assert_eq!(&recs[1][4], "rejected");
        let s = export(&rows, ExportFormat::Webdataset, &d.path().join("wds"), 1).unwrap();
        assert_eq!(s.files, 2);
        let mut ar =
            tar::Archive::new(std::fs::File::open(d.path().join("wds/shard-000001.tar")).unwrap());
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["000000001.png", "000000001.txt", "000000001.json"]);
        std::fs::create_dir(d.path().join("hf")).unwrap();
        export(&rows, ExportFormat::Imagefolder, &d.path().join("hf"), 1).unwrap();
        assert!(d.path().join("hf/000001.png").is_file());
        // A non-empty folder, a file where a folder is wanted: refused, nothing touched.
        let e = export(&rows, ExportFormat::Imagefolder, &d.path().join("hf"), 1).unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
        let e = export(&rows, ExportFormat::Webdataset, &d.path().join("o.csv"), 1).unwrap_err();
        assert!(e.to_string().contains("is a file"), "{e}");
        // A missing image fails the export and leaves no partial output.
        let mut bad = rows.clone();
        bad[1].image_path = Some(d.path().join("gone.png").display().to_string());
        let e = export(&bad, ExportFormat::Webdataset, &d.path().join("w2"), 1).unwrap_err();
        assert!(matches!(e, ExportError::Image { .. }), "{e}");
        assert!(!d.path().join("w2").exists());
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
