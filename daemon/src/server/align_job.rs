//! The alignment job: snapshot the store, fit, evaluate, checkpoint, swap the served model.
//!
//! Runs on a blocking thread; requests keep being served from the previous model meanwhile.
//! The job's cancel flag is checked through the engine's progress callback (a `Break` stops
//! the fit at its next step) and between stages; a cancelled or failed job leaves the previous
//! model serving and its run recorded as `cancelled`/`failed`.
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sotalign_protocol::types::{
    AlignMethod, AlignParams, AlignResult, JobKind, JobStage, JobState, SampleId,
};
use sotalign_protocol::{ErrorObject, codes};

use super::errors::{HResult, internal, not_ready};
use super::fit::{self, Fitted};
use super::jobs::{JobHandle, Outcome, Report};
use super::model::Served;
use super::state::Shared;
use sotalign_engine::{AlignConfig, AlignData, AlignError, Matrix};
use crate::store::{TrainingSnapshot, now_ms};

/// Percent of the whole job at which each stage starts (teacher, refine, evaluate, index).
const PCT_TEACHER: f64 = 0.0;
const PCT_REFINE: f64 = 10.0;
const PCT_INDEX: f64 = 88.0;
const PCT_EVAL: f64 = 95.0;
/// At most this many progress notifications per second during training.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// Recursively merge `over` into `base` (objects merge, everything else replaces).
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

/// The engine configuration a request asks for: preset, then overrides, then seed.
pub fn config_for(p: &AlignParams) -> HResult<AlignConfig> {
    let base = match p.preset.as_deref() {
        None | Some("default") => AlignConfig::default(),
        Some("reference") => AlignConfig::reference(),
        Some(other) => {
            return Err(ErrorObject::invalid_params(format!(
                "unknown preset {other:?} (known: default, reference)"
            )));
        }
    };
    let mut cfg = base;
    if let Some(over) = &p.config {
        if !over.is_object() {
            return Err(ErrorObject::invalid_params("`config` must be an object"));
        }
        let mut v = serde_json::to_value(&cfg).map_err(internal)?;
        merge(&mut v, over.clone());
        cfg = serde_json::from_value(v)
            .map_err(|e| ErrorObject::invalid_params(format!("invalid `config` override: {e}")))?;
    }
    if let Some(seed) = p.seed {
        cfg.seed = seed;
    }
    Ok(cfg)
}

pub async fn start(shared: Arc<Shared>, p: AlignParams) -> HResult<AlignResult> {
    let mut cfg = config_for(&p)?;
    // The heads train on the daemon's device (`serve --device`).
    cfg.device = shared.opts.device.clone();
    let title = format!(
        "align {}",
        serde_json::to_value(p.method)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    );
    let handle = shared
        .jobs
        .start(JobKind::Align, None, title)
        .map_err(|running| {
            ErrorObject::new(codes::JOB_CONFLICT, "an alignment job is already running")
                .with_data(json!({ "job": running }))
        })?;
    let method = p.method;
    let cfg_json = serde_json::to_value(&cfg).map_err(internal)?;
    let run = shared
        .store(move |s| s.create_run(method, &cfg_json, 0))
        .await?;
    shared.jobs.set_run(handle.id, run);
    let job = handle.id;
    let sh = shared.clone();
    tokio::task::spawn_blocking(move || {
        let outcome = run_job(&sh, &handle, run, method, &cfg);
        let (state, err) = match &outcome {
            Ok(_) => (JobState::Succeeded, None),
            Err(JobError::Cancelled) => (JobState::Cancelled, None),
            Err(JobError::Failed(e)) => (JobState::Failed, Some(e.message.clone())),
        };
        match outcome {
            Ok(done) => {
                // The run row was finished inside run_job, before the model was swapped in.
                handle.finish(Outcome {
                    metrics: done,
                    ..Outcome::succeeded()
                });
            }
            Err(e) => {
                if let Err(se) = sh
                    .store_blocking(|s| s.finish_run(run, state, None, None, None, err.as_deref()))
                {
                    tracing::error!("run {run}: cannot record its end: {}", se.message);
                }
                handle.finish(match e {
                    JobError::Cancelled => Outcome::cancelled(),
                    JobError::Failed(e) => Outcome::failed(e),
                });
            }
        }
    });
    Ok(AlignResult { job, run })
}

enum JobError {
    Cancelled,
    Failed(ErrorObject),
}

impl From<ErrorObject> for JobError {
    fn from(e: ErrorObject) -> Self {
        JobError::Failed(e)
    }
}

impl From<AlignError> for JobError {
    fn from(e: AlignError) -> Self {
        match e {
            AlignError::Cancelled => JobError::Cancelled,
            AlignError::NotEnoughData(m) => JobError::Failed(not_ready("not_enough_data", m)),
            AlignError::InvalidConfig(m) => JobError::Failed(ErrorObject::invalid_params(m)),
            other => JobError::Failed(internal(other)),
        }
    }
}

fn check_cancel(h: &JobHandle) -> Result<(), JobError> {
    if h.is_cancelled() {
        Err(JobError::Cancelled)
    } else {
        Ok(())
    }
}

/// Rows of `emb` for the given ids (all must be present).
fn rows_of(ids: &[SampleId], pos: &HashMap<SampleId, usize>, m: &Matrix) -> Matrix {
    let idx: Vec<usize> = ids.iter().filter_map(|id| pos.get(id).copied()).collect();
    m.select_rows(&idx)
}

/// The snapshot's confirmed pairs whose two sides are both embedded, in snapshot order: row i
/// of [`align_data`]'s paired matrices is pair i of this list.
pub fn embedded_pairs(snap: &TrainingSnapshot) -> Vec<(SampleId, SampleId)> {
    let ii: std::collections::HashSet<SampleId> = snap.images.ids.iter().copied().collect();
    let tt: std::collections::HashSet<SampleId> = snap.texts.ids.iter().copied().collect();
    snap.pairs
        .iter()
        .filter(|(i, t)| ii.contains(i) && tt.contains(t))
        .copied()
        .collect()
}

/// Training data from a snapshot: confirmed pairs (caption groups by equal caption text) plus
/// the unpaired pools.
pub fn align_data(snap: &TrainingSnapshot) -> AlignData {
    let ipos: HashMap<SampleId, usize> = snap
        .images
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i))
        .collect();
    let tpos: HashMap<SampleId, usize> = snap
        .texts
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i))
        .collect();
    let pairs = embedded_pairs(snap);
    let mut groups: HashMap<String, u32> = HashMap::new();
    let pair_groups = pairs
        .iter()
        .map(|(_, t)| {
            let key = snap.captions[tpos[t]]
                .clone()
                .unwrap_or_else(|| format!("#{t}"));
            let n = groups.len() as u32;
            *groups.entry(key).or_insert(n)
        })
        .collect();
    let pi: Vec<SampleId> = pairs.iter().map(|p| p.0).collect();
    let pt: Vec<SampleId> = pairs.iter().map(|p| p.1).collect();
    AlignData {
        xp: rows_of(&pi, &ipos, &snap.images.matrix),
        yp: rows_of(&pt, &tpos, &snap.texts.matrix),
        xu: rows_of(&snap.unpaired_images, &ipos, &snap.images.matrix),
        yu: rows_of(&snap.unpaired_texts, &tpos, &snap.texts.matrix),
        pair_groups,
        yu_groups: None,
    }
}

fn run_job(
    shared: &Arc<Shared>,
    h: &JobHandle,
    run: sotalign_protocol::types::RunId,
    method: AlignMethod,
    cfg: &AlignConfig,
) -> Result<Option<sotalign_protocol::types::RetrievalMetrics>, JobError> {
    let report = |stage, step, total, pct, loss: Option<f64>, msg: String| {
        h.progress(Report {
            stage,
            step,
            total,
            loss,
            percentage: pct,
            message: Some(msg),
        })
    };
    report(
        JobStage::Teacher,
        0,
        1,
        PCT_TEACHER,
        None,
        "reading the store".into(),
    );
    let version = shared.samples_version.load(Ordering::SeqCst);
    let snap = shared.store_blocking(|s| s.training_snapshot())?;
    let data = align_data(&snap);
    if data.n_pairs() < 2 {
        return Err(JobError::Failed(not_ready(
            "not_enough_pairs",
            format!(
                "{} confirmed pair(s) with embeddings; at least 2 are needed",
                data.n_pairs()
            ),
        )));
    }
    shared.store_blocking(|s| s.set_run_pairs(run, data.n_pairs() as u64))?;
    check_cancel(h)?;

    // Fit, forwarding engine progress (throttled) and the cancel flag.
    let mut last = Instant::now() - REPORT_EVERY;
    let mut progress = |stage: fit::Stage, p: &sotalign_engine::progress::Progress| {
        if h.is_cancelled() {
            return ControlFlow::Break(());
        }
        let done = p.step >= p.total;
        if done || last.elapsed() >= REPORT_EVERY {
            last = Instant::now();
            let frac = if p.total > 0 {
                p.step as f64 / p.total as f64
            } else {
                0.0
            };
            let (js, pct) = match stage {
                fit::Stage::Teacher => (
                    JobStage::Teacher,
                    PCT_TEACHER + frac * (PCT_REFINE - PCT_TEACHER),
                ),
                fit::Stage::Refine => (
                    JobStage::Refine,
                    PCT_REFINE + frac * (PCT_INDEX - PCT_REFINE),
                ),
            };
            let msg = match p.loss {
                Some(l) => format!("{} {}/{}, loss {l:.4}", p.stage, p.step, p.total),
                None => format!("{} {}/{}", p.stage, p.step, p.total),
            };
            report(js, p.step as u64, p.total as u64, pct, p.loss, msg);
        }
        ControlFlow::Continue(())
    };
    let fitted_model = fit::fit(method, &data, cfg, &mut progress)?;
    check_cancel(h)?;
    // Checkpoint first (atomic), so a served run can always be restored after a restart.
    let path = shared
        .opts
        .data_dir
        .join("checkpoints")
        .join(format!("run-{run}.safetensors"));
    fit::save(&path, &fitted_model, run.0).map_err(|e| {
        JobError::Failed(ErrorObject::new(
            codes::STORAGE_ERROR,
            format!("checkpoint: {e}"),
        ))
    })?;
    let ck = Some(path.display().to_string());
    let Fitted { model, fitted, .. } = fitted_model;

    // Map every sample into the new space and build its indexes (exact or HNSW by size) on
    // the index workers; the previous model and its indexes keep serving meanwhile.
    let n_items = (snap.images.ids.len() + snap.texts.ids.len()) as u64;
    report(
        JobStage::Index,
        0,
        n_items,
        PCT_INDEX,
        None,
        "embedding all samples".into(),
    );
    let rebuild = shared.begin_rebuild();
    let mut served = Served::new(
        run,
        method,
        fitted.clone(),
        model,
        data.n_pairs() as u64,
        now_ms(),
        None,
        shared.opts.index,
    );
    let mut done = [0usize; 2];
    let mut last_index = Instant::now() - REPORT_EVERY;
    let built = served.index_samples(&snap.images, &snap.texts, &mut |m, d, _total| {
        done[(m == sotalign_protocol::types::Modality::Text) as usize] = d;
        if last_index.elapsed() >= REPORT_EVERY {
            last_index = Instant::now();
            let step = (done[0] + done[1]) as u64;
            let frac = step as f64 / n_items.max(1) as f64;
            report(
                JobStage::Index,
                step,
                n_items,
                PCT_INDEX + frac * (PCT_EVAL - PCT_INDEX),
                None,
                format!("indexed {step}/{n_items}"),
            );
        }
    });
    drop(rebuild);
    built.map_err(|e| JobError::Failed(internal(format!("building the index: {e}"))))?;
    report(
        JobStage::Index,
        n_items,
        n_items,
        PCT_EVAL,
        None,
        format!("indexed ({:?})", served.index_kind()).to_lowercase(),
    );
    check_cancel(h)?;

    let captions: HashMap<SampleId, String> = snap
        .texts
        .ids
        .iter()
        .zip(&snap.captions)
        .filter_map(|(id, c)| Some((*id, c.clone()?)))
        .collect();
    let n_held = snap.held_out.len() as u64;
    report(
        JobStage::Evaluate,
        0,
        n_held,
        PCT_EVAL,
        None,
        "evaluating on held-out pairs".into(),
    );
    let metrics = served.evaluate(&snap.held_out, &captions);
    served.metrics = metrics;
    report(
        JobStage::Evaluate,
        n_held,
        n_held,
        99.0,
        None,
        "evaluated".into(),
    );
    check_cancel(h)?;

    // Record the run, then serve it.
    shared.store_blocking(|s| {
        s.finish_run(
            run,
            JobState::Succeeded,
            metrics.as_ref(),
            ck.as_deref(),
            Some(&fitted),
            None,
        )
    })?;
    shared.set_model(Arc::new(served));
    // Samples ingested after the snapshot: index them under the new model too.
    if shared.samples_version.load(Ordering::SeqCst) != version
        && let Err(e) = super::ingest_job::refresh_served(shared)
    {
        tracing::warn!(
            "run {run}: could not index samples ingested during the alignment: {}",
            e.message
        );
    }
    Ok(metrics)
}
