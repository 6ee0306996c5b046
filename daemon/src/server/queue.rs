//! `sotalign/nextToLabel`: what the annotator should label next, and why.
//!
//! Cold start (no model): TypiClust ([`sotalign_engine::select::typiclust`]) on the image
//! encoder's space picks the most typical open image of each least-covered cluster. With a
//! model, the hybrid rule ([`sotalign_engine::select::Hybrid`], the estimate kept in the
//! curation view and fed by decisions): caption typical images (in the aligned space) while the
//! estimated precision of the model's mutual proposals is low, judge those proposals once it is
//! high. Pools above [`MAX_POOL`] images are a seeded random subset (k-means cost).
use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use sotalign_engine::Matrix;
use sotalign_engine::select::{HybridConfig, Mode, TypiclustConfig, typiclust};
use sotalign_protocol::types::*;

use super::errors::{HResult, internal};
use super::model::Served;
use super::query::max_page;
use super::state::Shared;

/// Largest pool of open images clustered per request.
pub const MAX_POOL: usize = 4096;
/// Most items per answer.
pub const MAX_QUEUE: u32 = 200;

/// Typical images of uncovered clusters: `pool` rows are open images, `labeled` rows covered
/// ones (same space). Returns (pool row, cluster count) picks.
fn typical(pool: &Matrix, labeled: &Matrix, b: usize) -> HResult<Vec<usize>> {
    typiclust(pool, labeled, b, &TypiclustConfig::default())
        .map_err(|e| internal(format!("typiclust: {e}")))
}

/// The most typical `limit` of `open` in clusters the `covered` images leave uncovered, in the
/// space `get` reads vectors from; with the number of clusters used (covered + limit).
fn typical_uncovered(
    get: impl Fn(SampleId) -> Option<Vec<f32>>,
    open: &[SampleId],
    covered: &[SampleId],
    limit: usize,
) -> HResult<(Vec<SampleId>, usize)> {
    let (ids, pool) = rows_of(&get, open);
    let (_, lab) = rows_of(&get, covered);
    let lab = if lab.cols == pool.cols {
        lab
    } else {
        Matrix::zeros(0, pool.cols)
    };
    let k = lab.rows + limit;
    let picked = typical(&pool, &lab, limit)?;
    Ok((picked.into_iter().map(|r| ids[r]).collect(), k))
}

fn subset(ids: &mut Vec<SampleId>) {
    if ids.len() > MAX_POOL {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        ids.shuffle(&mut rng);
        ids.truncate(MAX_POOL);
        ids.sort_unstable();
    }
}

fn rows_of(
    get: impl Fn(SampleId) -> Option<Vec<f32>>,
    ids: &[SampleId],
) -> (Vec<SampleId>, Matrix) {
    let mut kept = Vec::new();
    let mut data = Vec::new();
    let mut cols = 0;
    for &id in ids {
        if let Some(v) = get(id) {
            cols = v.len();
            data.extend(v);
            kept.push(id);
        }
    }
    let m = Matrix {
        rows: kept.len(),
        cols,
        data,
    };
    (kept, m)
}

pub async fn next_to_label(
    shared: &Arc<Shared>,
    p: NextToLabelParams,
) -> HResult<NextToLabelResult> {
    let sh = shared.clone();
    tokio::task::spawn_blocking(move || build(&sh, p))
        .await
        .map_err(|e| internal(format!("queue task failed: {e}")))?
}

/// Why the hybrid rule has the annotator caption rather than judge: too few answers yet to
/// trust the model's proposals, or their estimated precision is under the threshold.
fn caption_reason(precision: f64, observations: usize) -> String {
    let cfg = HybridConfig::default();
    if observations < cfg.min_obs {
        format!(
            "only {observations} of the {} answers needed to estimate how often the model's proposals are right, so finding its caption teaches more than judging",
            cfg.min_obs
        )
    } else {
        format!(
            "the model's proposals were right about {:.0}% of the time, below {:.0}%, so finding its caption teaches more than judging",
            precision * 100.0,
            cfg.threshold * 100.0
        )
    }
}

fn build(shared: &Arc<Shared>, p: NextToLabelParams) -> HResult<NextToLabelResult> {
    let limit = p.limit.clamp(1, MAX_QUEUE.min(max_page())) as usize;
    let model = shared.model();
    let (mode, precision, observations, mut open, covered) = {
        let v = shared.view();
        let open: Vec<SampleId> = v
            .ids(Modality::Image)
            .into_iter()
            .filter(|id| v.is_open(id.0))
            .collect();
        let covered: Vec<SampleId> = v.confirmed().iter().map(|p| p.0).collect();
        let mode = match (&model, v.hybrid.mode()) {
            (None, _) => QueueMode::ColdStart,
            (Some(_), Mode::Caption) => QueueMode::Caption,
            (Some(_), Mode::Judge) => QueueMode::Judge,
        };
        (
            mode,
            v.hybrid.estimate(),
            v.hybrid.observations() as u32,
            open,
            covered,
        )
    };
    subset(&mut open);
    let mut picks: Vec<(SampleId, QueueReason, String, Option<(SampleId, f32)>)> = Vec::new();
    match (&model, mode) {
        (Some(m), QueueMode::Judge) => judge(shared, m, limit, precision, &mut picks),
        (Some(m), _) => {
            let (typ, k) =
                typical_uncovered(|id| m.vector(Modality::Image, id), &open, &covered, limit)?;
            let why = caption_reason(precision, observations as usize);
            for id in typ {
                picks.push((
                    id,
                    QueueReason::FindCaption,
                    format!(
                        "typical of a cluster of the aligned image space ({k} clusters) that few pairs cover; {why}"
                    ),
                    None,
                ));
            }
        }
        (None, _) => {
            // The image encoder's own space: raw stored vectors.
            let emb = shared.store_blocking(|s| s.embeddings(Modality::Image))?;
            let pos: std::collections::HashMap<SampleId, usize> =
                emb.ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
            let get = |id: SampleId| pos.get(&id).map(|&r| emb.matrix.row(r).to_vec());
            let (typ, k) = typical_uncovered(get, &open, &covered, limit)?;
            for id in typ {
                picks.push((
                    id,
                    QueueReason::UncoveredCluster,
                    format!(
                        "most typical image of a cluster of the image encoder's space ({k} clusters) that no pair covers; no model yet, so find its caption"
                    ),
                    None,
                ));
            }
        }
    }
    // One store read for every record shown.
    let ids: Vec<SampleId> = picks
        .iter()
        .flat_map(|p| std::iter::once(p.0).chain(p.3.map(|x| x.0)))
        .collect();
    let samples = shared.store_blocking(move |s| s.samples(&ids))?;
    let by_id: std::collections::HashMap<SampleId, Sample> =
        samples.into_iter().map(|s| (s.id, s)).collect();
    let v = shared.view();
    let items = picks
        .into_iter()
        .filter_map(|(id, reason, why, prop)| {
            Some(QueueItem {
                image: by_id.get(&id)?.clone(),
                reason,
                why,
                proposal: match prop {
                    Some((t, score)) => Some(Candidate {
                        sample: by_id.get(&t)?.clone(),
                        score: score as f64,
                        rank: 1,
                        mutual_nn: true,
                        duplicates: v.open_twins(t),
                    }),
                    None => None,
                },
            })
        })
        .collect();
    Ok(NextToLabelResult {
        mode,
        precision,
        observations,
        threshold: HybridConfig::default().threshold,
        run: model.map(|m| m.run),
        items,
    })
}

/// The model's best mutual proposals (the `mnn` strategy), one per image.
fn judge(
    shared: &Arc<Shared>,
    m: &Served,
    limit: usize,
    precision: f64,
    picks: &mut Vec<(SampleId, QueueReason, String, Option<(SampleId, f32)>)>,
) {
    let (hidden, confirmed, rejected) = {
        let v = shared.view();
        (
            v.hidden().clone(),
            v.confirmed().to_vec(),
            v.rejected_pairs(),
        )
    };
    let Ok(found) = m.suggest_pairs(&hidden, &confirmed, &rejected, Strategy::MutualNn, limit, 0)
    else {
        return;
    };
    for pk in found {
        picks.push((
            pk.image,
            QueueReason::JudgeProposal,
            format!(
                "the model proposes a caption ({}, score {:.2}); proposals judged so far were right {:.0}% of the time",
                if pk.mutual_nn { "mutual nearest neighbours" } else { "best remaining match" },
                pk.score,
                precision * 100.0
            ),
            Some((pk.text, pk.score as f32)),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With too few answers the reason says so instead of quoting the prior as a precision.
    #[test]
    fn caption_reason_does_not_quote_the_prior_as_a_measurement() {
        let few = caption_reason(0.5, 0);
        assert!(few.contains("only 0 of the 10 answers"), "{few}");
        assert!(!few.contains("right about"), "{few}");
        let many = caption_reason(0.25, 30);
        assert!(
            many.contains("right about 25% of the time, below 50%"),
            "{many}"
        );
    }
}
