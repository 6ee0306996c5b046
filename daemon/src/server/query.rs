//! Queries on the served model through the curation view: suggestions for a sample, search
//! (words and meaning), global pair suggestions, and decisions (which update the view).
//!
//! Each query reads the in-memory [`super::view::CurationView`] for what may be offered and
//! SQLite once, for the sample records it returns (a free-text search also reads the text
//! encoder's name once, to refuse vectors from another encoder). Lock order: store, then view;
//! a query never holds the view while it waits for the store.
use std::collections::HashMap;
use std::sync::Arc;

use sotalign_protocol::jsonrpc::{Message, Notification};
use sotalign_protocol::types::*;
use sotalign_protocol::{ErrorObject, names};

use super::errors::{HResult, internal, not_ready};
use super::model::Served;
use super::state::Shared;
use super::view::{CurationView, words};

/// Page sizes are capped so one answer stays well under the body cap.
/// Page size cap (`--max-page`): one answer stays well under the body cap.
pub fn max_page() -> u32 {
    crate::limits::current().max_page.max(1)
}

/// Candidates per query cap (`--max-k`).
pub fn max_k() -> u32 {
    crate::limits::current().max_k.max(1)
}
/// Words of a free-text query used for word matching (the rest still count for meaning).
pub const MAX_QUERY_WORDS: usize = 16;

/// The served model, or why there is none: still being restored after a start (`restoring`,
/// with progress), or never aligned (`no_model`).
pub fn require_model(shared: &Shared) -> HResult<Arc<Served>> {
    if let Some(m) = shared.model() {
        return Ok(m);
    }
    Err(match shared.restoring() {
        Some((run, f)) => not_ready(
            "restoring",
            format!(
                "the model of run {run} is being restored from its checkpoint ({:.0}% done); retry shortly",
                f * 100.0
            ),
        ),
        None => not_ready("no_model", "no aligned model yet: run sotalign/align first"),
    })
}

/// Run blocking query work off the async workers.
async fn blocking<T, F>(f: F) -> HResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> HResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| internal(format!("query task failed: {e}")))?
}

fn index_err(e: crate::index::IndexError) -> ErrorObject {
    use crate::index::IndexError as E;
    match e {
        E::DimensionMismatch { .. } | E::NonFinite { .. } | E::ZeroNorm { .. } => {
            ErrorObject::invalid_params(format!("bad query: {e}"))
        }
        other => internal(format!("search failed: {other}")),
    }
}

fn not_embedded(id: SampleId) -> ErrorObject {
    not_ready(
        "not_embedded",
        format!("sample {id} is not in the served model yet (re-run align)"),
    )
}

/// Is candidate `c` rejected with query sample `q` (of modality `qm`), through its caption
/// group included?
fn rejected_with(v: &CurationView, qm: Modality, q: SampleId, c: u64) -> bool {
    match qm {
        Modality::Image => v.is_rejected(q.0, c),
        Modality::Text => v.is_rejected(c, q.0),
    }
}

/// One ranked hit before its sample record is read.
struct Ranked {
    id: SampleId,
    score: f32,
    duplicates: u32,
    mutual: bool,
}

/// The `k` best open samples of `target` for `q` among those `keep` admits; texts with the
/// same caption are listed once (the best-scoring), with the number of open twins. `query`
/// (a sample) gets mutual-nearest-neighbour flags.
fn ranked(
    model: &Served,
    v: &CurationView,
    target: Modality,
    q: &[f32],
    k: usize,
    query: Option<SampleId>,
    keep: &(dyn Fn(u64) -> bool + Sync),
) -> HResult<Vec<Ranked>> {
    let mut want = if target == Modality::Text {
        k * 4 + 16
    } else {
        k
    };
    let mut out: Vec<Ranked> = Vec::new();
    for _ in 0..3 {
        let hits = model.search(target, q, want, keep).map_err(index_err)?;
        let exhausted = hits.len() < want;
        out.clear();
        let mut seen = std::collections::HashSet::new();
        for (id, score) in hits {
            if target == Modality::Text
                && let Some(g) = v.group(id)
                && !seen.insert(g)
            {
                continue;
            }
            out.push(Ranked {
                id,
                score,
                duplicates: if target == Modality::Text {
                    v.open_twins(id)
                } else {
                    0
                },
                mutual: false,
            });
            if out.len() == k {
                break;
            }
        }
        if out.len() == k || exhausted {
            break;
        }
        want *= 4;
    }
    if let Some(qid) = query {
        for r in &mut out {
            if let Some(vc) = model.vector(target, r.id) {
                r.mutual = model.best_in(target.other(), &vc, v.hidden()) == Some(qid);
            }
        }
    }
    Ok(out)
}

/// Read the records of `ranked` (and of `extra` first) in one store read.
fn with_samples(
    shared: &Shared,
    extra: Option<SampleId>,
    ranked: Vec<Ranked>,
) -> HResult<(Option<Sample>, Vec<Candidate>)> {
    let mut ids: Vec<SampleId> = extra.into_iter().collect();
    ids.extend(ranked.iter().map(|r| r.id));
    let samples = shared.store_blocking(move |s| s.samples(&ids))?;
    let mut by_id: HashMap<SampleId, Sample> = samples.into_iter().map(|s| (s.id, s)).collect();
    let first = extra.and_then(|q| by_id.get(&q).cloned());
    let mut out = Vec::with_capacity(ranked.len());
    for r in ranked {
        let Some(sample) = by_id.remove(&r.id) else {
            continue;
        };
        out.push(Candidate {
            sample,
            score: r.score as f64,
            rank: out.len() as u32 + 1,
            mutual_nn: r.mutual,
            duplicates: r.duplicates,
        });
    }
    Ok((first, out))
}

/// The modality of a sample: from the view, else from the store (which errors on unknown ids).
fn modality_of(shared: &Shared, id: SampleId) -> HResult<Modality> {
    if let Some(m) = shared.view().modality(id) {
        return Ok(m);
    }
    Ok(shared.store_blocking(|s| s.sample(id))?.modality)
}

pub async fn suggest_for_sample(
    shared: &Arc<Shared>,
    p: SuggestForSampleParams,
) -> HResult<SuggestForSampleResult> {
    let model = require_model(shared)?;
    let sh = shared.clone();
    blocking(move || {
        let id = p.sample;
        let qm = modality_of(&sh, id)?;
        let q = model.vector(qm, id).ok_or_else(|| not_embedded(id))?;
        let k = p.k.clamp(1, max_k()) as usize;
        let hits = {
            let v = sh.view();
            let keep =
                |c: u64| v.is_open(c) && (p.include_rejected || !rejected_with(&v, qm, id, c));
            ranked(&model, &v, qm.other(), &q, k, Some(id), &keep)?
        };
        let (sample, candidates) = with_samples(&sh, Some(id), hits)?;
        Ok(SuggestForSampleResult {
            sample: sample.ok_or_else(|| internal(format!("sample {id} vanished")))?,
            candidates,
            run: model.run,
        })
    })
    .await
}

/// A search answer: the ranked hits with their sample records, and what served them.
fn search_result(sh: &Shared, model: &Served, hits: Vec<Ranked>) -> HResult<SearchResult> {
    let (_, hits) = with_samples(sh, None, hits)?;
    Ok(SearchResult {
        hits,
        run: model.run,
        index: model.index_kind(),
    })
}

pub async fn search(shared: &Arc<Shared>, p: SearchParams) -> HResult<SearchResult> {
    let model = require_model(shared)?;
    let k = p.k.clamp(1, max_k()) as usize;
    match p.query {
        SearchQuery::Text(text) => search_text(shared, model, text, p.target, k).await,
        SearchQuery::Sample(id) => {
            let sh = shared.clone();
            blocking(move || {
                let qm = modality_of(&sh, id)?;
                let q = model.vector(qm, id).ok_or_else(|| not_embedded(id))?;
                let target = p.target.unwrap_or(qm.other());
                let hits = {
                    let v = sh.view();
                    let keep =
                        |c: u64| v.is_open(c) && (target == qm || !rejected_with(&v, qm, id, c));
                    ranked(&model, &v, target, &q, k, Some(id), &keep)?
                };
                search_result(&sh, &model, hits)
            })
            .await
        }
        SearchQuery::Vector { modality, values } => {
            let sh = shared.clone();
            blocking(move || {
                let dim = sh.view().dim(modality).ok_or_else(|| {
                    not_ready("no_samples", format!("no {modality:?} samples stored yet"))
                })?;
                values.validate(dim)?;
                let q = model.embed_raw(modality, &values.0).map_err(|e| {
                    ErrorObject::invalid_params(format!("cannot embed the vector: {e}"))
                })?;
                let target = p.target.unwrap_or(modality.other());
                let hits = {
                    let v = sh.view();
                    ranked(&model, &v, target, &q, k, None, &|c| v.is_open(c))?
                };
                search_result(&sh, &model, hits)
            })
            .await
        }
    }
}

/// Free text: samples whose words match come first, ranked by the model's score against the
/// query's embedding (store order without a text encoder), then the best matches by meaning.
async fn search_text(
    shared: &Arc<Shared>,
    model: Arc<Served>,
    text: String,
    target: Option<Modality>,
    k: usize,
) -> HResult<SearchResult> {
    let target = target.unwrap_or(Modality::Image);
    // A client controls the query's length: match on its first words only.
    let mut query_words = words(&text);
    query_words.truncate(MAX_QUERY_WORDS);
    let embedded = match super::encode::encode_text(shared, text).await {
        Ok(raw) => Some(
            model
                .embed_raw(Modality::Text, &raw)
                .map_err(|e| internal(format!("cannot embed the text: {e}")))?,
        ),
        Err(e) => {
            // Without the encoder, words alone can still answer.
            let any = !shared.view().word_matches(target, &query_words).is_empty();
            if !any {
                return Err(e);
            }
            None
        }
    };
    let sh = shared.clone();
    blocking(move || {
        let hits = {
            let v = sh.view();
            let matched = v.word_matches(target, &query_words);
            let score = |id: SampleId| -> f32 {
                match (&embedded, model.vector(target, id)) {
                    (Some(q), Some(x)) => q.iter().zip(&x).map(|(a, b)| a * b).sum(),
                    _ => f32::NEG_INFINITY,
                }
            };
            let mut words_first: Vec<Ranked> = matched
                .iter()
                .map(|&id| Ranked {
                    id,
                    score: score(id),
                    duplicates: 0,
                    mutual: false,
                })
                .collect();
            // Best score first; ties (no encoder) in store order.
            words_first.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
            let mut seen_groups = std::collections::HashSet::new();
            let mut out: Vec<Ranked> = Vec::new();
            for mut r in words_first {
                if target == Modality::Text {
                    if let Some(g) = v.group(r.id)
                        && !seen_groups.insert(g)
                    {
                        continue;
                    }
                    r.duplicates = v.open_twins(r.id);
                }
                if !r.score.is_finite() {
                    r.score = 0.0;
                }
                out.push(r);
                if out.len() == k {
                    break;
                }
            }
            if out.len() < k
                && let Some(q) = &embedded
            {
                let taken: std::collections::HashSet<u64> = out.iter().map(|r| r.id.0).collect();
                let keep = |c: u64| v.is_open(c) && !taken.contains(&c);
                for r in ranked(&model, &v, target, q, k, None, &keep)? {
                    if out.len() == k {
                        break;
                    }
                    if target == Modality::Text
                        && let Some(g) = v.group(r.id)
                        && !seen_groups.insert(g)
                    {
                        continue;
                    }
                    out.push(r);
                }
            }
            out
        };
        search_result(&sh, &model, hits)
    })
    .await
}

pub async fn suggest_pairs(
    shared: &Arc<Shared>,
    p: SuggestPairsParams,
) -> HResult<SuggestPairsResult> {
    let model = require_model(shared)?;
    let sh = shared.clone();
    blocking(move || {
        let (hidden, confirmed, rejected) = {
            let v = sh.view();
            (
                v.hidden().clone(),
                v.confirmed().to_vec(),
                v.rejected_pairs(),
            )
        };
        let limit = p.limit.clamp(1, max_page()) as usize;
        let picks = model
            .suggest_pairs(
                &hidden,
                &confirmed,
                &rejected,
                p.strategy,
                limit,
                p.seed.unwrap_or(0),
            )
            .map_err(|e| internal(format!("suggestions failed: {e}")))?;
        let ids: Vec<SampleId> = picks.iter().flat_map(|p| [p.image, p.text]).collect();
        let samples = sh.store_blocking(move |s| s.samples(&ids))?;
        let by_id: HashMap<SampleId, Sample> = samples.into_iter().map(|s| (s.id, s)).collect();
        let suggestions = picks
            .into_iter()
            .filter_map(|pk| {
                Some(PairSuggestion {
                    image: by_id.get(&pk.image)?.clone(),
                    text: by_id.get(&pk.text)?.clone(),
                    score: pk.score,
                    priority: pk.priority,
                    mutual_nn: pk.mutual_nn,
                    ot_mass: pk.ot_mass,
                })
            })
            .collect();
        Ok(SuggestPairsResult {
            strategy: p.strategy,
            run: model.run,
            suggestions,
        })
    })
    .await
}

/// The model's mutual-nearest-neighbour caption for `image` among open, unrejected texts.
pub fn mutual_proposal(model: &Served, v: &CurationView, image: SampleId) -> Option<SampleId> {
    let vi = model.vector(Modality::Image, image)?;
    let t = model
        .search(Modality::Text, &vi, 1, &|c| {
            v.is_open(c) && !v.is_rejected(image.0, c)
        })
        .ok()?
        .first()?
        .0;
    let vt = model.vector(Modality::Text, t)?;
    (model.best_in(Modality::Image, &vt, v.hidden()) == Some(image)).then_some(t)
}

/// Record a confirm or reject, update the curation view in the same critical section, and
/// feed the queue's precision estimate: a decision on an image the model had a mutual proposal
/// for says whether that proposal was right (a confirm of its caption group, or not).
/// Longest annotator name a decision may carry.
pub const MAX_ANNOTATOR_BYTES: usize = 200;

/// Broadcast a committed decision or undo to every initialized connection.
fn decisions_changed(shared: &Shared, p: DecisionsChangedParams) {
    match Notification::new(names::DECISIONS_CHANGED, &p) {
        Ok(n) => drop(shared.notify.send(Message::Notification(n))),
        Err(e) => tracing::error!("cannot encode decisionsChanged: {e}"),
    }
}

/// A confirm or reject: recorded with its annotator, refused as `STALE_DECISION` when the
/// pair changed since `shown_revision`, the curation view updated in the same critical
/// section, and broadcast (`sotalign/decisionsChanged`) once committed.
pub async fn decide(
    shared: &Arc<Shared>,
    kind: DecisionKind,
    p: DecideParams,
    source: String,
) -> HResult<DecisionResult> {
    let annotator = p
        .annotator
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty());
    if annotator
        .as_ref()
        .is_some_and(|a| a.len() > MAX_ANNOTATOR_BYTES)
    {
        return Err(ErrorObject::invalid_params(format!(
            "annotator name longer than {MAX_ANNOTATOR_BYTES} bytes"
        )));
    }
    let (image, text) = (p.image, p.text);
    let model = shared.model();
    let (r, revision) = shared
        .store_with_view(move |s, sh| {
            let proposal = model
                .as_ref()
                .and_then(|m| mutual_proposal(m, &sh.view(), image));
            let (r, revision) = s.decide_by(
                kind,
                image,
                text,
                &source,
                annotator.as_deref(),
                p.shown_revision,
            )?;
            let mut v = sh.view_mut();
            v.refresh_pairs(s, image, text)?;
            if r.changed
                && let Some(t) = proposal
            {
                let same = t == text || (v.group(t).is_some() && v.group(t) == v.group(text));
                match kind {
                    DecisionKind::Confirm => v.hybrid.observe(same),
                    DecisionKind::Reject if same => v.hybrid.observe(false),
                    DecisionKind::Reject => {}
                }
            }
            Ok((r, revision))
        })
        .await?;
    decisions_changed(
        shared,
        DecisionsChangedParams {
            revision,
            decision: r.decision.clone(),
            undone: false,
            counts: r.counts,
        },
    );
    Ok(r)
}

pub async fn undo(shared: &Arc<Shared>, p: UndoParams) -> HResult<UndoResult> {
    let (r, revision) = shared
        .store_with_view(move |s, sh| {
            let r = s.undo(p.decision)?;
            sh.view_mut()
                .refresh_pairs(s, r.undone.image, r.undone.text)?;
            Ok((r, s.revision()?))
        })
        .await?;
    decisions_changed(
        shared,
        DecisionsChangedParams {
            revision,
            decision: r.undone.clone(),
            undone: true,
            counts: r.counts,
        },
    );
    Ok(r)
}
