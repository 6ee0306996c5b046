//! Ingest: turn user data (a manifest, a folder of images, a caption file, the Tux Paint
//! stamps) into embedding matrices, through a content-addressed cache.
//!
//! This is a plain synchronous library API (no tokio): the daemon calls [`encode_dataset`] from
//! a background job and forwards the progress callback; the CLI draws progress bars from it.
//! Invariant: every input item ends up either as a row or in the [`Report`]'s skipped list.
pub mod batch;
pub mod cache;
pub mod openclipart;
pub mod sources;

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::encoders::{EncoderError, ImageEncoder, Report, Skipped, TextEncoder};
pub use cache::{ModelCache, content_hash};
use sotalign_engine::Matrix;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },
    #[error("not found: {0}")]
    NotFound(PathBuf),
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    /// Reading or writing a cache shard or an output matrix.
    #[error(transparent)]
    File(#[from] crate::io::IoError),
    /// A cap of [`crate::limits`] (file size, walk depth/entries) or the read scope.
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
}

impl IngestError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One input item: an image, a caption, or both (a pair).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub image: Option<PathBuf>,
    pub text: Option<String>,
    pub label: Option<String>,
    pub split: Option<String>,
    /// Where it came from, as the user knows it (relative path, `file:line`).
    pub source: String,
}

/// Items read from one source, plus the inputs the source itself could not use.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub name: String,
    pub items: Vec<Item>,
    pub skipped: Vec<Skipped>,
}

impl Dataset {
    pub fn new(name: String) -> Self {
        Self {
            name,
            ..Default::default()
        }
    }
}

/// Progress events of [`encode_dataset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Starting a stage with `total` items to encode (cache misses only).
    Start {
        stage: Stage,
        total: usize,
    },
    /// `done` of the stage's items encoded so far.
    Advance {
        stage: Stage,
        done: usize,
    },
    Finish {
        stage: Stage,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Images,
    Texts,
}

/// Output of [`encode_dataset`]: kept items and their rows.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Items that produced every row they asked for, in input order.
    pub items: Vec<Item>,
    /// Rows of `images` for items with an image (`None` for text-only items).
    pub image_rows: Vec<Option<usize>>,
    pub text_rows: Vec<Option<usize>>,
    pub images: Option<Matrix>,
    pub texts: Option<Matrix>,
    /// Source-level skips and encoding failures, with reasons.
    pub report: Report,
    pub image_cache_hits: usize,
    pub text_cache_hits: usize,
    pub images_encoded: usize,
    pub texts_encoded: usize,
}

/// Options of [`encode_dataset`].
pub struct EncodeOptions<'a> {
    pub image: Option<&'a ImageEncoder>,
    pub text: Option<&'a TextEncoder>,
    /// Cache root; `None` disables caching.
    pub cache_root: Option<&'a Path>,
    pub batch: usize,
}

/// Encode a dataset's images and captions (raw, un-normalised features), reusing cached rows.
pub fn encode_dataset(
    ds: &Dataset,
    opts: &EncodeOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Encoded, IngestError> {
    let n = ds.items.len();
    let mut failed: Vec<Option<String>> = vec![None; n];
    // ---- images
    let mut img_rows: Vec<Option<Vec<f32>>> = vec![None; n];
    let (mut image_cache_hits, mut images_encoded) = (0, 0);
    if let Some(enc) = opts.image {
        let want: Vec<usize> = (0..n).filter(|&i| ds.items[i].image.is_some()).collect();
        let hashes: Vec<Result<String, String>> = want
            .par_iter()
            .map(|&i| {
                let p = ds.items[i]
                    .image
                    .as_ref()
                    .map(PathBuf::as_path)
                    .unwrap_or(Path::new(""));
                std::fs::read(p)
                    .map(|b| content_hash("image", &b))
                    .map_err(|e| format!("cannot read: {e}"))
            })
            .collect();
        let mut cache = match opts.cache_root {
            Some(r) => Some(ModelCache::open(r, enc.id(), enc.dim())?),
            None => None,
        };
        let mut miss: Vec<(usize, String)> = Vec::new();
        for (&i, h) in want.iter().zip(hashes) {
            match h {
                Err(reason) => failed[i] = Some(reason),
                Ok(h) => {
                    let mut row = vec![0f32; enc.dim()];
                    if cache.as_ref().is_some_and(|c| c.read(&h, &mut row)) {
                        img_rows[i] = Some(row);
                        image_cache_hits += 1;
                    } else {
                        miss.push((i, h));
                    }
                }
            }
        }
        progress(Progress::Start {
            stage: Stage::Images,
            total: miss.len(),
        });
        let paths: Vec<PathBuf> = miss
            .iter()
            .map(|(i, _)| ds.items[*i].image.clone().unwrap_or_default())
            .collect();
        let (m, rep) = enc.encode_paths_with_progress(&paths, opts.batch, &mut |done| {
            progress(Progress::Advance {
                stage: Stage::Images,
                done,
            })
        })?;
        for s in &rep.skipped {
            failed[miss[s.index].0] = Some(s.reason.clone());
        }
        let new_hashes: Vec<String> = rep.kept.iter().map(|&k| miss[k].1.clone()).collect();
        for (r, &k) in rep.kept.iter().enumerate() {
            img_rows[miss[k].0] = Some(m.row(r).to_vec());
        }
        images_encoded = rep.kept.len();
        if let Some(c) = cache.as_mut() {
            c.insert(&new_hashes, &m)?;
        }
        progress(Progress::Finish {
            stage: Stage::Images,
        });
    }
    // ---- texts
    let mut txt_rows: Vec<Option<Vec<f32>>> = vec![None; n];
    let (mut text_cache_hits, mut texts_encoded) = (0, 0);
    if let Some(enc) = opts.text {
        let mut cache = match opts.cache_root {
            Some(r) => Some(ModelCache::open(r, enc.id(), enc.dim())?),
            None => None,
        };
        let mut miss: Vec<(usize, String)> = Vec::new();
        for i in 0..n {
            let Some(t) = &ds.items[i].text else { continue };
            let h = content_hash("text", t.as_bytes());
            let mut row = vec![0f32; enc.dim()];
            if cache.as_ref().is_some_and(|c| c.read(&h, &mut row)) {
                txt_rows[i] = Some(row);
                text_cache_hits += 1;
            } else {
                miss.push((i, h));
            }
        }
        progress(Progress::Start {
            stage: Stage::Texts,
            total: miss.len(),
        });
        // Identical captions are encoded once.
        let mut uniq: Vec<(String, &str)> = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for (i, h) in &miss {
            if !seen.contains_key(h) {
                seen.insert(h.clone(), uniq.len());
                uniq.push((h.clone(), ds.items[*i].text.as_deref().unwrap_or("")));
            }
        }
        let texts: Vec<&str> = uniq.iter().map(|(_, t)| *t).collect();
        let m = enc.encode_with_progress(&texts, opts.batch, false, &mut |done| {
            progress(Progress::Advance {
                stage: Stage::Texts,
                done,
            })
        })?;
        for (i, h) in &miss {
            txt_rows[*i] = Some(m.row(seen[h]).to_vec());
        }
        texts_encoded = uniq.len();
        if let Some(c) = cache.as_mut() {
            let hs: Vec<String> = uniq.iter().map(|(h, _)| h.clone()).collect();
            c.insert(&hs, &m)?;
        }
        progress(Progress::Finish {
            stage: Stage::Texts,
        });
    }
    // ---- assemble
    let mut report = Report {
        total: n + ds.skipped.len(),
        ..Default::default()
    };
    report.skipped.extend(ds.skipped.iter().cloned());
    let mut out = Encoded {
        items: Vec::new(),
        image_rows: Vec::new(),
        text_rows: Vec::new(),
        images: opts.image.map(|e| Matrix::zeros(0, e.dim())),
        texts: opts.text.map(|e| Matrix::zeros(0, e.dim())),
        report: Report::default(),
        image_cache_hits,
        text_cache_hits,
        images_encoded,
        texts_encoded,
    };
    for (i, item) in ds.items.iter().enumerate() {
        if let Some(reason) = failed[i].take() {
            report.skipped.push(Skipped {
                index: i,
                item: item.source.clone(),
                reason,
            });
            continue;
        }
        report.kept.push(i);
        out.image_rows
            .push(push_row(&mut out.images, img_rows[i].take()));
        out.text_rows
            .push(push_row(&mut out.texts, txt_rows[i].take()));
        out.items.push(item.clone());
    }
    out.report = report;
    Ok(out)
}

fn push_row(m: &mut Option<Matrix>, row: Option<Vec<f32>>) -> Option<usize> {
    match (m.as_mut(), row) {
        (Some(m), Some(r)) => {
            m.data.extend_from_slice(&r);
            m.rows += 1;
            Some(m.rows - 1)
        }
        _ => None,
    }
}

/// One line of `items.jsonl` written next to the matrices.
#[derive(Debug, Serialize)]
struct ItemRecord<'a> {
    #[serde(flatten)]
    item: &'a Item,
    image_row: Option<usize>,
    text_row: Option<usize>,
}

/// Write `images.npy`, `texts.npy`, `items.jsonl` and `report.json` into `dir`.
pub fn write_output(dir: &Path, enc: &Encoded) -> Result<(), IngestError> {
    std::fs::create_dir_all(dir).map_err(|e| IngestError::io(dir, e))?;
    if let Some(m) = &enc.images {
        crate::io::npy::write_npy(&dir.join("images.npy"), m)?;
    }
    if let Some(m) = &enc.texts {
        crate::io::npy::write_npy(&dir.join("texts.npy"), m)?;
    }
    let mut lines = String::new();
    for (k, item) in enc.items.iter().enumerate() {
        let rec = ItemRecord {
            item,
            image_row: enc.image_rows[k],
            text_row: enc.text_rows[k],
        };
        lines.push_str(
            &serde_json::to_string(&rec).map_err(|e| IngestError::Format {
                path: dir.to_path_buf(),
                what: e.to_string(),
            })?,
        );
        lines.push('\n');
    }
    let p = dir.join("items.jsonl");
    std::fs::write(&p, lines).map_err(|e| IngestError::io(&p, e))?;
    let p = dir.join("report.json");
    let json = serde_json::to_string_pretty(&enc.report).map_err(|e| IngestError::Format {
        path: p.clone(),
        what: e.to_string(),
    })?;
    std::fs::write(&p, json).map_err(|e| IngestError::io(&p, e))?;
    Ok(())
}
