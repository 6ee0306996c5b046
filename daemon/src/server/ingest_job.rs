//! The ingest job: validate the source before answering, then write it to the store (and, when
//! a model is served, map the new samples into it) in the background.
//!
//! Sources:
//! - `embedded`: samples with encoder-space vectors in the request (unpaired);
//! - `manifest`: the daemon's JSONL manifest (format below), whose embeddings come from `.npy`
//!   files it names; pairs in it become seed pairs (`train`) or held-out pairs (`test`);
//! - `folders`: a folder of images (recursive) and/or a caption file (one caption per line),
//!   stored unpaired and encoded in the background.
//!
//! Items given as raw image paths or captions (no `imageRow`/`textRow`) are stored at once,
//! unencoded, then encoded by the job with EfficientNet-Lite0 / all-MiniLM-L6-v2 (loaded on
//! first need, kept resident), reusing the on-disk embedding cache (`ingest::cache`, under
//! `$SOTALIGN_CACHE`), with `encode` progress. An item that cannot be decoded stays stored
//! unencoded and is named in the job's last progress message. Without the encoder weights the
//! request is refused with `NOT_READY` naming `sotalign fetch`, before anything is stored.
//!
//! Manifest format (one JSON object per line; blank lines and `#` lines are skipped):
//! ```text
//! {"embeddings": {"image": "img.npy", "text": "txt.npy"}, "encoders": {"image": "efficientnet-lite0", "text": "all-MiniLM-L6-v2"}}
//! {"key": "penguin", "image": "stamps/penguin.png", "imageRow": 17, "text": "A penguin.", "textRow": 17, "split": "train"}
//! {"key": "frog", "image": "stamps/frog.png", "imageRow": 3}
//! ```
//! The optional first line names the `.npy` files (2-D little-endian f32, paths relative to the
//! manifest) and the encoders that produced them. An item with an image and a text is a pair:
//! `split` `train` (default) makes it a confirmed seed pair, `test` a held-out evaluation pair,
//! `unpaired` stores both sides unpaired. `key` names the samples (default: the image file stem,
//! or `text-<line>`); re-ingesting a key that exists leaves the stored sample unchanged.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use sotalign_protocol::types::{
    EmbeddedSample, IngestResult, IngestSource, JobKind, JobStage, Modality, SampleId,
};
use sotalign_protocol::vector::Vector;
use sotalign_protocol::{ErrorObject, codes};

use super::encode;
use super::errors::{HResult, internal, invalid_input};
use super::jobs::{Outcome, Report};
use super::state::Shared;
use crate::store::{NewPair, NewSample};
use sotalign_engine::Matrix;

/// A validated batch, ready to insert.
pub struct Batch {
    pub samples: Vec<NewSample>,
    pub pairs: Vec<NewPair>,
    pub encoders: (Option<String>, Option<String>),
    /// Indices into `samples` stored without a vector, to encode in the background.
    pub pending: Vec<usize>,
}

impl Batch {
    fn needs(&self, m: Modality) -> bool {
        self.pending.iter().any(|&i| self.samples[i].modality == m)
    }
}

/// Check a vector against the modality's dimension (the stored one, else the first in the
/// batch) and for finiteness; errors name the item.
fn check_vector(v: &Vector, item: &str, dims: &mut [Option<usize>; 2], m: Modality) -> HResult<()> {
    let slot = if m == Modality::Image { 0 } else { 1 };
    let expected = *dims[slot].get_or_insert(v.0.len());
    v.validate(expected).map_err(|mut e| {
        e.message = format!("{item}: {}", e.message);
        e
    })
}

fn embedded_batch(items: Vec<EmbeddedSample>, mut dims: [Option<usize>; 2]) -> HResult<Batch> {
    if items.is_empty() {
        return Err(ErrorObject::invalid_params("`embedded` holds no samples"));
    }
    check_items(items.len())?;
    let mut samples = Vec::with_capacity(items.len());
    for (n, it) in items.into_iter().enumerate() {
        check_vector(
            &it.vector,
            &format!("sample {n} ({:?})", it.key),
            &mut dims,
            it.modality,
        )?;
        if it.key.is_empty() {
            return Err(ErrorObject::invalid_params(format!(
                "sample {n}: empty key"
            )));
        }
        samples.push(NewSample {
            modality: it.modality,
            key: it.key,
            path: it.path,
            text: it.text,
            vector: Some(it.vector.0),
        });
    }
    Ok(Batch {
        samples,
        pairs: Vec::new(),
        encoders: (None, None),
        pending: Vec::new(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    embeddings: Option<HeaderFiles>,
    encoders: Option<HeaderFiles>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderFiles {
    image: Option<String>,
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Line {
    key: Option<String>,
    image: Option<String>,
    image_row: Option<usize>,
    text: Option<String>,
    text_row: Option<usize>,
    split: Option<String>,
}

/// A 2-D little-endian float `.npy` named by a manifest: in scope, a regular file, at most
/// `--max-array-file-bytes`, header validated against the data (`io::npy`, overflow-checked).
fn read_embeddings_npy(path: &Path) -> HResult<Matrix> {
    let l = crate::limits::current();
    let bytes = crate::limits::read_file(path, l.max_array_file_bytes, "max-array-file-bytes")?;
    crate::io::npy::parse_npy(&bytes).map_err(|e| {
        invalid_input(
            format!("{}: not a supported .npy file: {e}", path.display()),
            Some(&path.display().to_string()),
        )
    })
}

/// The number of items of one ingest against `--max-ingest-items`.
fn check_items(n: usize) -> HResult<()> {
    let l = crate::limits::current();
    crate::limits::check(
        "items in one ingest",
        n as u64,
        l.max_ingest_items as u64,
        "max-ingest-items",
    )?;
    Ok(())
}

fn manifest_batch(path: &Path, mut dims: [Option<usize>; 2]) -> HResult<Batch> {
    let where_ = path.display().to_string();
    let l = crate::limits::current();
    let bytes = crate::limits::read_file(path, l.max_text_file_bytes, "max-text-file-bytes")?;
    let text = String::from_utf8(bytes).map_err(|e| {
        invalid_input(
            format!("cannot read manifest: not UTF-8 ({e})"),
            Some(&where_),
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let line_err = |n: usize, msg: String| {
        ErrorObject::new(codes::INVALID_INPUT, format!("{where_}:{n}: {msg}"))
            .with_data(json!({ "path": where_, "line": n }))
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .peekable();
    let mut mats: [Option<Matrix>; 2] = [None, None];
    let mut encoders = (None, None);
    if let Some((n, first)) = lines.peek().copied()
        && (first.contains("\"embeddings\"") || first.contains("\"encoders\""))
    {
        lines.next();
        let h: Header =
            serde_json::from_str(first).map_err(|e| line_err(n, format!("bad header: {e}")))?;
        if let Some(f) = h.embeddings {
            for (slot, file) in [(0, f.image), (1, f.text)] {
                if let Some(file) = file {
                    let p: PathBuf = base.join(&file);
                    mats[slot] = Some(read_embeddings_npy(&p)?);
                }
            }
        }
        if let Some(e) = h.encoders {
            encoders = (e.image, e.text);
        }
    }
    let mut samples = Vec::new();
    let mut pairs = Vec::new();
    let mut pending = Vec::new();
    for (n, raw) in lines {
        let l: Line =
            serde_json::from_str(raw).map_err(|e| line_err(n, format!("bad item: {e}")))?;
        let mut side =
            |slot: usize, m: Modality, row: Option<usize>| -> HResult<Option<Vec<f32>>> {
                let Some(r) = row else { return Ok(None) };
                let mat = mats[slot].as_ref().ok_or_else(|| {
                    line_err(
                        n,
                        format!("{m:?} row given but the header names no {m:?} embeddings file")
                            .to_lowercase(),
                    )
                })?;
                if r >= mat.rows {
                    return Err(line_err(
                        n,
                        format!("row {r} is out of range (the file has {} rows)", mat.rows),
                    ));
                }
                let v = Vector(mat.row(r).to_vec());
                check_vector(&v, &format!("{where_}:{n}"), &mut dims, m).map_err(|mut e| {
                    if let Some(serde_json::Value::Object(d)) = &mut e.data {
                        d.insert("line".into(), json!(n));
                    }
                    e
                })?;
                Ok(Some(v.0))
            };
        check_items(samples.len() + 2)?;
        let ivec = side(0, Modality::Image, l.image_row)?;
        let tvec = side(1, Modality::Text, l.text_row)?;
        let has_image = l.image.is_some() || ivec.is_some();
        let has_text = l.text.is_some() || tvec.is_some();
        if !has_image && !has_text {
            return Err(line_err(n, "an item needs an image or a text".into()));
        }
        let image_raw = has_image && ivec.is_none();
        let text_raw = has_text && tvec.is_none();
        if image_raw && l.image.is_none() {
            return Err(line_err(n, "an image needs a path or an imageRow".into()));
        }
        let key = l.key.clone().or_else(|| {
            l.image
                .as_deref()
                .and_then(|p| Path::new(p).file_stem())
                .map(|s| s.to_string_lossy().into_owned())
        });
        let img_idx = has_image.then(|| {
            if image_raw {
                pending.push(samples.len());
            }
            samples.push(NewSample {
                modality: Modality::Image,
                key: key.clone().unwrap_or_else(|| format!("image-{n}")),
                path: l.image.as_ref().map(|p| base.join(p).display().to_string()),
                text: None,
                vector: ivec,
            });
            samples.len() - 1
        });
        let txt_idx = has_text.then(|| {
            if text_raw {
                pending.push(samples.len());
            }
            samples.push(NewSample {
                modality: Modality::Text,
                key: key.clone().unwrap_or_else(|| format!("text-{n}")),
                path: None,
                text: l.text.clone(),
                vector: tvec,
            });
            samples.len() - 1
        });
        if let (Some(i), Some(t)) = (img_idx, txt_idx) {
            match l.split.as_deref().unwrap_or("train") {
                "train" => pairs.push(NewPair {
                    image: i,
                    text: t,
                    held_out: false,
                }),
                "test" => pairs.push(NewPair {
                    image: i,
                    text: t,
                    held_out: true,
                }),
                "unpaired" => {}
                other => {
                    return Err(line_err(
                        n,
                        format!("unknown split {other:?} (train, test, unpaired)"),
                    ));
                }
            }
        }
    }
    if samples.is_empty() {
        return Err(invalid_input(
            format!("{where_}: the manifest holds no items"),
            Some(&where_),
        ));
    }
    Ok(Batch {
        samples,
        pairs,
        encoders,
        pending,
    })
}

/// A folder of images and/or a caption file, unpaired, everything to encode.
fn folders_batch(images: Option<&str>, texts: Option<&str>) -> HResult<Batch> {
    use crate::ingest::sources;
    if images.is_none() && texts.is_none() {
        return Err(ErrorObject::invalid_params(
            "`folders` needs `images` (a folder) and/or `texts` (a caption file)",
        ));
    }
    let bad = |p: &str, e: crate::ingest::IngestError| invalid_input(e.to_string(), Some(p));
    let mut samples = Vec::new();
    if let Some(dir) = images {
        let root = Path::new(dir);
        // In scope (links resolved) before anything under it is listed.
        crate::limits::scope().resolve(root)?;
        let ds = sources::image_dir(root).map_err(|e| match e {
            crate::ingest::IngestError::Limit(l) => ErrorObject::from(l),
            e => bad(dir, e),
        })?;
        for it in ds.items {
            let Some(path) = it.image else { continue };
            // Key: the path under the folder, so equal stems in sub-folders stay distinct.
            let key = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .with_extension("")
                .to_string_lossy()
                .replace('\\', "/");
            samples.push(NewSample {
                modality: Modality::Image,
                key,
                path: Some(path.display().to_string()),
                text: None,
                vector: None,
            });
        }
    }
    if let Some(file) = texts {
        let p = Path::new(file);
        if p.is_dir() {
            return Err(invalid_input(
                format!(
                    "{file}: `texts` must be a caption file (one caption per line), not a folder"
                ),
                Some(file),
            ));
        }
        let ds = sources::text_file(p).map_err(|e| match e {
            crate::ingest::IngestError::Limit(l) => ErrorObject::from(l),
            e => bad(file, e),
        })?;
        for it in ds.items {
            let Some(text) = it.text else { continue };
            // Key: the caption's content hash, so re-ingesting the file adds nothing twice.
            let key = format!(
                "text-{}",
                &crate::ingest::content_hash("text", text.as_bytes())[..16]
            );
            samples.push(NewSample {
                modality: Modality::Text,
                key,
                path: None,
                text: Some(text),
                vector: None,
            });
        }
    }
    if samples.is_empty() {
        return Err(invalid_input(
            "the folders hold no images or captions",
            images.or(texts),
        ));
    }
    check_items(samples.len())?;
    let pending = (0..samples.len()).collect();
    Ok(Batch {
        samples,
        pairs: Vec::new(),
        encoders: (None, None),
        pending,
    })
}

pub async fn start(shared: Arc<Shared>, source: IngestSource) -> HResult<IngestResult> {
    let dims = shared
        .store(|s| Ok([s.dim(Modality::Image)?, s.dim(Modality::Text)?]))
        .await?;
    let mut batch = match source {
        IngestSource::Embedded(items) => embedded_batch(items, dims)?,
        IngestSource::Manifest(path) => {
            let p = PathBuf::from(path);
            tokio::task::spawn_blocking(move || manifest_batch(&p, dims))
                .await
                .map_err(|e| internal(format!("manifest task failed: {e}")))??
        }
        IngestSource::Folders { images, texts } => {
            tokio::task::spawn_blocking(move || folders_batch(images.as_deref(), texts.as_deref()))
                .await
                .map_err(|e| internal(format!("folder scan failed: {e}")))??
        }
    };
    // Raw items: the weights must be there and the stored vectors must come from the same
    // encoders, checked before anything is stored.
    let stored = shared
        .store(|s| Ok((s.meta("encoder.image")?, s.meta("encoder.text")?)))
        .await?;
    for (m, stored, header, ours) in [
        (
            Modality::Image,
            &stored.0,
            &mut batch.encoders.0,
            encode::IMAGE_ENCODER,
        ),
        (
            Modality::Text,
            &stored.1,
            &mut batch.encoders.1,
            encode::TEXT_ENCODER,
        ),
    ] {
        if !batch
            .pending
            .iter()
            .any(|&i| batch.samples[i].modality == m)
        {
            continue;
        }
        shared.encoders.require(m)?;
        encode::check_compatible(m, stored.as_deref())?;
        encode::check_compatible(m, header.as_deref())?;
        *header = Some(ours.to_string());
    }
    let accepted = batch.samples.len() as u64;
    let handle = shared
        .jobs
        .start(JobKind::Ingest, None, "ingest".into())
        .map_err(|running| {
            ErrorObject::new(codes::JOB_CONFLICT, "an ingest job is already running")
                .with_data(json!({ "job": running }))
        })?;
    let job = handle.id;
    let sh = shared.clone();
    tokio::task::spawn_blocking(move || {
        let total = batch.samples.len() as u64;
        handle.progress(Report {
            stage: JobStage::Scan,
            step: 0,
            total,
            loss: None,
            percentage: 0.0,
            message: Some(format!("storing {total} samples")),
        });
        let result = sh.store_blocking(|s| {
            let r = s.insert_samples(&batch.samples, &batch.pairs)?;
            if let Some(e) = &batch.encoders.0 {
                s.set_meta("encoder.image", e)?;
            }
            if let Some(e) = &batch.encoders.1 {
                s.set_meta("encoder.text", e)?;
            }
            Ok(r)
        });
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                handle.finish(Outcome {
                    ingested: Some(0),
                    ..Outcome::failed(e)
                });
                return;
            }
        };
        let raw = !batch.pending.is_empty();
        handle.progress(Report {
            stage: JobStage::Scan,
            step: total,
            total,
            loss: None,
            percentage: if raw { PCT_ENCODE } else { 80.0 },
            message: Some(format!(
                "{} new, {} already stored, {} pairs",
                r.inserted, r.duplicates, r.pairs
            )),
        });
        if raw {
            match encode_pending(&sh, &handle, &batch, &r.ids) {
                Ok(summary) => handle.progress(Report {
                    stage: JobStage::Encode,
                    step: summary.1,
                    total: summary.1,
                    loss: None,
                    percentage: PCT_ENCODE_END,
                    message: Some(summary.0),
                }),
                Err(e) => {
                    handle.finish(Outcome {
                        ingested: Some(r.inserted),
                        ..Outcome::failed(e)
                    });
                    return;
                }
            }
        }
        if r.inserted > 0 || raw {
            sh.samples_version
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        if (r.inserted > 0 || raw || !batch.pairs.is_empty())
            && let Err(e) = super::publish::publish_new_samples(&sh, Some(&r.ids))
        {
            tracing::warn!(
                "ingest: could not map the new samples into the served model: {}",
                e.message
            );
        }
        handle.finish(Outcome {
            ingested: Some(r.inserted),
            ..Outcome::succeeded()
        });
    });
    Ok(IngestResult { job, accepted })
}

/// Percent of an ingest job at which encoding starts and ends.
const PCT_ENCODE: f64 = 10.0;
const PCT_ENCODE_END: f64 = 90.0;

/// Encode the batch's raw samples that have no stored vector yet and store their vectors.
/// Returns a summary ("N of M encoded, K skipped: ...") and the number of items handled.
fn encode_pending(
    shared: &Arc<Shared>,
    handle: &super::jobs::JobHandle,
    batch: &Batch,
    ids: &[SampleId],
) -> HResult<(String, u64)> {
    use crate::ingest::{self, Dataset, EncodeOptions, Item, Progress};
    // Only samples still without a vector (a duplicate key may already be encoded).
    let todo: Vec<usize> = shared.store_blocking(|s| {
        let mut v = Vec::new();
        for &i in &batch.pending {
            if s.vector(ids[i])?.1.is_none() {
                v.push(i);
            }
        }
        Ok(v)
    })?;
    if todo.is_empty() {
        return Ok((
            "nothing to encode: every sample already has a vector".into(),
            0,
        ));
    }
    let n = todo.len() as u64;
    let report = |step: u64, msg: String| {
        handle.progress(Report {
            stage: JobStage::Encode,
            step,
            total: n,
            loss: None,
            percentage: PCT_ENCODE + (PCT_ENCODE_END - PCT_ENCODE) * step as f64 / n as f64,
            message: Some(msg),
        })
    };
    let mut ds = Dataset::new("ingest".into());
    for &i in &todo {
        let s = &batch.samples[i];
        ds.items.push(Item {
            image: (s.modality == Modality::Image)
                .then(|| s.path.as_ref().map(PathBuf::from))
                .flatten(),
            text: (s.modality == Modality::Text)
                .then(|| s.text.clone())
                .flatten(),
            label: None,
            split: None,
            source: s.path.clone().unwrap_or_else(|| s.key.clone()),
        });
    }
    report(0, "loading the encoders".into());
    let image = if batch.needs(Modality::Image) {
        Some(shared.encoders.image()?)
    } else {
        None
    };
    let text = if batch.needs(Modality::Text) {
        Some(shared.encoders.text()?)
    } else {
        None
    };
    let cache = ingest::cache::default_root();
    let opts = EncodeOptions {
        image: image.as_deref(),
        text: text.as_deref(),
        cache_root: Some(&cache),
        batch: encode::BATCH,
    };
    let n_img = todo
        .iter()
        .filter(|&&i| batch.samples[i].modality == Modality::Image)
        .count() as u64;
    let mut cached = 0u64;
    let mut last = std::time::Instant::now();
    let enc = ingest::encode_dataset(&ds, &opts, &mut |p| {
        let (stage, done) = match p {
            Progress::Start { stage, total } => {
                // Cache hits are done already.
                let hits = match stage {
                    ingest::Stage::Images => n_img - total as u64,
                    ingest::Stage::Texts => (n - n_img) - total as u64,
                };
                cached += hits;
                (stage, 0)
            }
            Progress::Advance { stage, done } => (stage, done as u64),
            Progress::Finish { .. } => return,
        };
        let base = match stage {
            ingest::Stage::Images => 0,
            ingest::Stage::Texts => n_img,
        };
        if last.elapsed() >= std::time::Duration::from_millis(100) || done == 0 {
            last = std::time::Instant::now();
            let step = (base + done + cached).min(n);
            report(step, format!("encoding {step}/{n} ({cached} cached)"));
        }
    })
    .map_err(|e| match e {
        ingest::IngestError::Encoder(e) => encode::encoder_error(e),
        other => internal(format!("encoding: {other}")),
    })?;
    // Kept items map back to samples through the dataset index.
    let mut rows: [Vec<(SampleId, Vec<f32>)>; 2] = [Vec::new(), Vec::new()];
    for (k, &item) in enc.report.kept.iter().enumerate() {
        let sample = todo[item];
        let id = ids[sample];
        match batch.samples[sample].modality {
            Modality::Image => {
                if let (Some(m), Some(r)) = (&enc.images, enc.image_rows[k]) {
                    rows[0].push((id, m.row(r).to_vec()));
                }
            }
            Modality::Text => {
                if let (Some(m), Some(r)) = (&enc.texts, enc.text_rows[k]) {
                    rows[1].push((id, m.row(r).to_vec()));
                }
            }
        }
    }
    shared.store_blocking(|s| {
        s.set_vectors(Modality::Image, &rows[0])?;
        s.set_vectors(Modality::Text, &rows[1])
    })?;
    let summary = format!(
        "{}; {} from the cache",
        enc.report.summary(3),
        enc.image_cache_hits + enc.text_cache_hits
    );
    Ok((summary, n))
}

#[allow(dead_code)]
fn _unused(_: HashMap<(), ()>) {}
