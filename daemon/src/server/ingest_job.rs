//! The ingest job: turn the source into a batch before answering (the one door,
//! `ingest::batch`: manifest, folders, imagefolder, CSV, parquet, inline embeddings), then
//! write it to the store in one transaction (and, when a model is served, map the new samples
//! into it) in the background.
//!
//! Items given as raw image paths or captions (no embedding rows) are stored at once,
//! unencoded, then encoded by the job with EfficientNet-Lite0 / all-MiniLM-L6-v2 (loaded on
//! first need, kept resident), reusing the on-disk embedding cache (`ingest::cache`, under
//! `$SOTALIGN_CACHE`), with `encode` progress. An item that cannot be decoded stays stored
//! unencoded and is named in the job's last progress message. Without the encoder weights the
//! request is refused with `NOT_READY` naming `sotalign fetch`, before anything is stored.
//! A source with any bad row is refused (`INVALID_INPUT`, every bad row listed with its line
//! in `data.rows`) before anything is stored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use sotalign_protocol::types::{IngestResult, IngestSource, JobKind, JobStage, Modality, SampleId};
use sotalign_protocol::{ErrorObject, codes};

use super::encode;
use super::errors::{HResult, internal};
use super::jobs::{Outcome, Report};
use super::state::Shared;
use crate::ingest::batch::{self, Batch};

/// Run one source's `source -> batch` function on a blocking thread.
async fn read_source(source: IngestSource, dims: [Option<usize>; 2]) -> HResult<Batch> {
    let r = tokio::task::spawn_blocking(move || match source {
        IngestSource::Embedded(items) => batch::from_embedded(items, dims),
        IngestSource::Manifest(p) => batch::from_manifest(Path::new(&p), dims),
        IngestSource::Folders { images, texts } => batch::from_folders(
            images.as_deref().map(Path::new),
            texts.as_deref().map(Path::new),
        ),
        IngestSource::Imagefolder(p) => batch::from_imagefolder(Path::new(&p)),
        IngestSource::Csv(p) => batch::from_csv(Path::new(&p)),
        IngestSource::Parquet(p) => batch::from_parquet(Path::new(&p)),
    })
    .await
    .map_err(|e| internal(format!("reading the source failed: {e}")))?;
    r.map_err(ErrorObject::from)
}

pub async fn start(shared: Arc<Shared>, source: IngestSource) -> HResult<IngestResult> {
    let dims = shared
        .store(|s| Ok([s.dim(Modality::Image)?, s.dim(Modality::Text)?]))
        .await?;
    let mut batch = read_source(source, dims).await?;
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
