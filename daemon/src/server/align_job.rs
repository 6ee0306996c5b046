//! The alignment job: snapshot the store, fit, evaluate, checkpoint, swap the served model.
//!
//! Runs on a blocking thread; requests keep being served from the previous model meanwhile.
//! The job's cancel flag is checked through the engine's progress callback (a `Break` stops
//! the fit at its next step) and between stages; a cancelled or failed job leaves the previous
//! model serving and its run recorded as `cancelled`/`failed`.
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sotalign_protocol::types::{
    AlignMethod, AlignParams, AlignResult, JobKind, JobStage, JobState, ModelStage, SampleId,
};
use sotalign_protocol::{ErrorObject, codes};

use super::errors::{HResult, internal, not_ready};
use super::fit::{self, Fitted};
use super::jobs::{JobHandle, Outcome, Report};
use super::model::Served;
use super::publish;
use super::state::Shared;
use crate::store::{TrainingSnapshot, now_ms};
use sotalign_engine::progress::Phase;
use sotalign_engine::{AlignConfig, AlignData, AlignError, Matrix};

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
        // A mistyped key would otherwise be ignored silently.
        super::caps::unknown_keys(&v, over)?;
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
    let trains = super::fit::engine_method(p.method).trains(&cfg);
    super::caps::check_align_config(&cfg, trains, crate::limits::current())?;
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
    // Checked inside training steps too (between Sinkhorn iterations), not only between them.
    cfg.cancel = sotalign_engine::progress::Cancel::new(handle.cancel_flag());
    // The served model's graph build (if still running) would take the cores from this job;
    // its exact index keeps answering. The job's last model gets its graph when the job ends.
    if let Some(m) = shared.model() {
        m.index.cancel_pending();
    }
    let sh = shared.clone();
    tokio::task::spawn_blocking(move || {
        let outcome = run_job(&sh, &handle, run, method, &cfg);
        if let Some(m) = sh.model() {
            m.upgrade_index_in_background();
        }
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
                // A run whose closed-form model was published stays recorded as that model.
                let published = sh.model().is_some_and(|m| m.run == run);
                if !published
                    && let Err(se) = sh.store_blocking(|s| {
                        s.finish_run(run, state, None, None, None, err.as_deref())
                    })
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

/// Training data from a snapshot: confirmed pairs (caption groups by equal caption text), the
/// unpaired pools, and the rejected pairs as negatives (the trained methods' `z = -1` cells).
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
    // Caption groups by the engine's one rule (equal captions = one group).
    let pair_groups = sotalign_engine::groups::caption_groups(
        pairs.iter().map(|(_, t)| snap.captions[tpos[t]].as_deref()),
    );
    let pi: Vec<SampleId> = pairs.iter().map(|p| p.0).collect();
    let pt: Vec<SampleId> = pairs.iter().map(|p| p.1).collect();
    // Rejected pairs whose two samples both have vectors (rows_of skips missing ids, so filter
    // first to keep the two sides aligned).
    let rejected: Vec<(SampleId, SampleId)> = snap
        .rejected
        .iter()
        .filter(|(i, t)| ipos.contains_key(i) && tpos.contains_key(t))
        .copied()
        .collect();
    let negatives = (!rejected.is_empty()).then(|| sotalign_engine::data::Negatives {
        x: rows_of(
            &rejected.iter().map(|p| p.0).collect::<Vec<_>>(),
            &ipos,
            &snap.images.matrix,
        ),
        y: rows_of(
            &rejected.iter().map(|p| p.1).collect::<Vec<_>>(),
            &tpos,
            &snap.texts.matrix,
        ),
    });
    AlignData {
        xp: rows_of(&pi, &ipos, &snap.images.matrix),
        yp: rows_of(&pt, &tpos, &snap.texts.matrix),
        xu: rows_of(&snap.unpaired_images, &ipos, &snap.images.matrix),
        yu: rows_of(&snap.unpaired_texts, &tpos, &snap.texts.matrix),
        pair_groups,
        yu_groups: None,
        negatives,
    }
}

/// Where the job stands, for progress: percent of the whole job at which each part starts.
struct Plan {
    two_stage: bool,
}

impl Plan {
    /// (start, end) percent of a part of the job.
    fn span(&self, part: Part) -> (f64, f64) {
        match (self.two_stage, part) {
            (false, Part::Fit) => (0.0, 85.0),
            (false, Part::Index) => (85.0, 95.0),
            (false, Part::Evaluate) => (95.0, 99.0),
            (true, Part::Fit) => (0.0, 20.0),
            (true, Part::Index) => (20.0, 27.0),
            (true, Part::Evaluate) => (27.0, 30.0),
            (true, Part::Validate) => (30.0, 35.0),
            (true, Part::ValidateHeads) => (35.0, 60.0),
            (true, Part::Train) => (60.0, 92.0),
            (true, Part::Index2) => (92.0, 98.0),
            (true, Part::Evaluate2) => (98.0, 99.0),
            (false, _) => (99.0, 99.0),
        }
    }
}

#[derive(Clone, Copy)]
enum Part {
    Fit,
    Index,
    Evaluate,
    Validate,
    ValidateHeads,
    Train,
    Index2,
    Evaluate2,
}

fn run_job(
    shared: &Arc<Shared>,
    h: &JobHandle,
    run: sotalign_protocol::types::RunId,
    method: AlignMethod,
    cfg: &AlignConfig,
) -> Result<Option<sotalign_protocol::types::RetrievalMetrics>, JobError> {
    // "Fast first, better later": a trained method first serves auto's closed-form choice.
    let plan = Plan {
        two_stage: matches!(method, AlignMethod::Sotalign | AlignMethod::Siglip),
    };
    let report = |part: Part,
                  model_stage: ModelStage,
                  stage: JobStage,
                  step: u64,
                  total: u64,
                  loss: Option<f64>,
                  msg: String| {
        let (a, b) = plan.span(part);
        let frac = if total > 0 {
            (step as f64 / total as f64).min(1.0)
        } else {
            0.0
        };
        h.set_model_stage(model_stage);
        h.progress(Report {
            stage,
            step,
            total,
            loss,
            percentage: a + frac * (b - a),
            message: Some(msg),
        })
    };
    let report = &report;
    report(
        Part::Fit,
        ModelStage::ClosedForm,
        JobStage::Teacher,
        0,
        1,
        None,
        "reading the store".into(),
    );
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

    // Engine progress (throttled) for one part of the plan, and the cancel flag.
    let forward = |part: Part, ms: ModelStage| {
        let mut last = Instant::now() - REPORT_EVERY;
        move |p: &sotalign_engine::progress::Progress| {
            if h.is_cancelled() {
                return ControlFlow::Break(());
            }
            if p.step >= p.total || last.elapsed() >= REPORT_EVERY {
                last = Instant::now();
                let msg = match p.loss {
                    Some(l) => format!(
                        "{} {}/{}, {} {l:.4}",
                        p.stage,
                        p.step,
                        p.total,
                        if p.phase == Phase::Train {
                            "loss"
                        } else {
                            "score"
                        }
                    ),
                    None => format!("{} {}/{}", p.stage, p.step, p.total),
                };
                let loss = (p.phase == Phase::Train).then_some(p.loss).flatten();
                report(
                    part,
                    ms,
                    fit::job_stage(p.phase),
                    p.step as u64,
                    p.total as u64,
                    loss,
                    msg,
                );
            }
            ControlFlow::Continue(())
        }
    };

    // Stage 1: the method itself, or auto's closed-form choice for a trained method.
    let first = if plan.two_stage {
        AlignMethod::Auto
    } else {
        method
    };
    let fitted = fit::fit(
        first,
        &data,
        cfg,
        &mut forward(Part::Fit, ModelStage::ClosedForm),
    )?;
    check_cancel(h)?;
    let metrics = serve(
        shared,
        h,
        &plan,
        run,
        method,
        fitted,
        &snap,
        &data,
        ModelStage::ClosedForm,
        report,
    )?;
    if !plan.two_stage {
        return Ok(metrics);
    }
    check_cancel(h)?;

    // Stage 2: train the heads while the closed-form model serves; swap them in only if they
    // validate better on the protocol's held-out block of the confirmed pairs.
    let ms = ModelStage::Trained;
    let verdict = match sotalign_engine::validation::Holdout::new(&data) {
        Err(e) => Err(format!("too few pairs to validate trained heads ({e})")),
        Ok(hold) => {
            report(
                Part::Validate,
                ms,
                JobStage::Validate,
                0,
                2,
                None,
                "validating: closed-form model without the validation pairs".into(),
            );
            let cf = fit::fit(AlignMethod::Auto, &hold.train, cfg, &mut |p| {
                if h.is_cancelled() {
                    ControlFlow::Break(())
                } else {
                    let _ = p;
                    ControlFlow::Continue(())
                }
            })?;
            let cf_score = hold.evaluate(cf.model.as_ref())?.mean_mrr();
            report(
                Part::ValidateHeads,
                ms,
                JobStage::Validate,
                0,
                1,
                Some(cf_score),
                format!(
                    "closed-form validation MRR {cf_score:.4}; training heads without the validation pairs"
                ),
            );
            let heads = fit::fit(
                method,
                &hold.train,
                cfg,
                &mut forward(Part::ValidateHeads, ms),
            )?;
            let heads_score = hold.evaluate(heads.model.as_ref())?.mean_mrr();
            report(
                Part::ValidateHeads,
                ms,
                JobStage::Validate,
                1,
                1,
                None,
                format!("validation MRR: heads {heads_score:.4}, closed-form {cf_score:.4}"),
            );
            if heads_score > cf_score {
                Ok((heads_score, cf_score))
            } else {
                Err(format!(
                    "the closed-form model stays: validation MRR heads {heads_score:.4} <= closed-form {cf_score:.4}"
                ))
            }
        }
    };
    check_cancel(h)?;
    match verdict {
        Err(why) => {
            report(Part::Evaluate2, ms, JobStage::Validate, 1, 1, None, why);
            Ok(metrics)
        }
        Ok((hs, cs)) => {
            let fitted = fit::fit(method, &data, cfg, &mut forward(Part::Train, ms))?;
            check_cancel(h)?;
            let m = serve(
                shared, h, &plan, run, method, fitted, &snap, &data, ms, report,
            )?;
            report(
                Part::Evaluate2,
                ms,
                JobStage::Evaluate,
                1,
                1,
                None,
                format!("the trained heads serve: validation MRR {hs:.4} > closed-form {cs:.4}"),
            );
            Ok(m)
        }
    }
}

/// Checkpoint a fitted model, publish it (index, evaluate, swap) and record it as the run's.
#[allow(clippy::too_many_arguments)]
fn serve(
    shared: &Arc<Shared>,
    h: &JobHandle,
    plan: &Plan,
    run: sotalign_protocol::types::RunId,
    method: AlignMethod,
    fitted_model: Fitted,
    snap: &TrainingSnapshot,
    data: &AlignData,
    ms: ModelStage,
    report: &dyn Fn(Part, ModelStage, JobStage, u64, u64, Option<f64>, String),
) -> Result<Option<sotalign_protocol::types::RetrievalMetrics>, JobError> {
    let (pi, pe) = if ms == ModelStage::ClosedForm || !plan.two_stage {
        (Part::Index, Part::Evaluate)
    } else {
        (Part::Index2, Part::Evaluate2)
    };
    // Checkpoint first (atomic), so a served run can always be restored after a restart.
    let name = match ms {
        ModelStage::ClosedForm => format!("run-{run}.safetensors"),
        ModelStage::Trained => format!("run-{run}-trained.safetensors"),
    };
    let path = shared.opts.data_dir.join("checkpoints").join(name);
    fit::save(&path, &fitted_model, run.0, ms).map_err(|e| {
        JobError::Failed(ErrorObject::new(
            codes::STORAGE_ERROR,
            format!("checkpoint: {e}"),
        ))
    })?;
    let ck = path.display().to_string();
    let Fitted { model, fitted, .. } = fitted_model;
    let n_items = (snap.images.ids.len() + snap.texts.ids.len()) as u64;
    report(
        pi,
        ms,
        JobStage::Index,
        0,
        n_items,
        None,
        "embedding all samples".into(),
    );
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
    served.stage = Some(ms);
    let mut done = [0usize; 2];
    let mut last_index = Instant::now() - REPORT_EVERY;
    // Refuse to publish after a cancel: the check runs before the swap.
    if h.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    let published = publish::publish(
        shared,
        served,
        snap,
        publish::When::Always,
        &mut |m, d, _| {
            done[(m == sotalign_protocol::types::Modality::Text) as usize] = d;
            if last_index.elapsed() >= REPORT_EVERY {
                last_index = Instant::now();
                let step = (done[0] + done[1]) as u64;
                report(
                    pi,
                    ms,
                    JobStage::Index,
                    step,
                    n_items,
                    None,
                    format!("indexed {step}/{n_items}"),
                );
            }
        },
    )
    .map_err(|e| JobError::Failed(internal(format!("publishing the model: {e}"))))?;
    let metrics = published.and_then(|m| m.metrics);
    report(
        pe,
        ms,
        JobStage::Evaluate,
        1,
        1,
        None,
        format!(
            "{} model serving",
            match ms {
                ModelStage::ClosedForm => "closed-form",
                ModelStage::Trained => "trained",
            }
        ),
    );
    shared.store_blocking(|s| {
        s.finish_run(
            run,
            JobState::Succeeded,
            metrics.as_ref(),
            Some(&ck),
            Some(&fitted),
            None,
        )
    })?;
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Embeddings;

    /// Rejected pairs become aligned negative rows; one naming a sample without a vector is
    /// dropped whole, so the two sides never shift against each other.
    #[test]
    fn rejected_pairs_become_negatives() {
        let id = SampleId;
        let img = Matrix::from_vec(3, 2, vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5]).unwrap();
        let txt = Matrix::from_vec(3, 2, vec![1.0, 1.0, 2.0, 0.0, 0.0, 3.0]).unwrap();
        let snap = TrainingSnapshot {
            pairs: vec![(id(1), id(11)), (id(2), id(12))],
            held_out: vec![],
            rejected: vec![(id(1), id(13)), (id(3), id(11)), (id(9), id(12))],
            images: Embeddings {
                ids: vec![id(1), id(2), id(3)],
                matrix: img,
            },
            texts: Embeddings {
                ids: vec![id(11), id(12), id(13)],
                matrix: txt,
            },
            captions: vec![Some("a".into()), Some("b".into()), Some("c".into())],
            unpaired_images: vec![id(3)],
            unpaired_texts: vec![id(13)],
        };
        let d = align_data(&snap);
        d.validate().unwrap();
        let n = d.negatives.expect("negatives");
        assert_eq!((n.x.rows, n.y.rows), (2, 2));
        assert_eq!(n.x.row(0), &[1.0, 0.0]);
        assert_eq!(n.y.row(0), &[0.0, 3.0]);
        assert_eq!(n.x.row(1), &[0.5, 0.5]);
        assert_eq!(n.y.row(1), &[1.0, 1.0]);
    }
}
