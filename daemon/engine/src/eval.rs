//! Retrieval and zero-shot evaluation, exactly as `tests/fixtures/reference/PROTOCOL.md`.
//!
//! Ranking rule (the reference's, and deliberately pessimistic): for a query, the *best-scoring*
//! correct gallery item counts; its rank is the number of incorrect gallery items that score
//! `>=` it, so ties count against the method. A gallery item is correct when its label (caption
//! group) equals the query's. R@k = mean(rank < k); MRR = mean(1 / (rank + 1)).
//! Scores are f64 ([`Aligned::score_f64`]) so closed-form methods reproduce an f64 reference
//! count for count.
use std::collections::BTreeMap;

use faer::{Mat, MatRef};
use serde::{Deserialize, Serialize};

use crate::{AlignError, Aligned, Matrix};

/// Metrics of one retrieval direction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DirMetrics {
    pub r1: f64,
    pub r5: f64,
    pub r10: f64,
    pub mrr: f64,
    pub n_queries: usize,
}

/// Both directions plus FOSCTTM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalReport {
    /// Image queries over the text gallery.
    pub i2t: DirMetrics,
    /// Text queries over the image gallery.
    pub t2i: DirMetrics,
    /// Fraction of samples closer than the true match, mean of both directions (lower is better,
    /// 0.5 is chance); `None` when the evaluation set is not one-to-one.
    pub foscttm: Option<f64>,
}

impl RetrievalReport {
    /// The metrics under the reference's JSON keys (`i2t_R@1`, `t2i_MRR`, ...), as fractions.
    pub fn reference_keys(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for (dir, d) in [("i2t", &self.i2t), ("t2i", &self.t2i)] {
            m.insert(format!("{dir}_R@1"), d.r1);
            m.insert(format!("{dir}_R@5"), d.r5);
            m.insert(format!("{dir}_R@10"), d.r10);
            m.insert(format!("{dir}_MRR"), d.mrr);
        }
        if let Some(f) = self.foscttm {
            m.insert("FOSCTTM".into(), f);
        }
        m
    }

    /// Mean MRR of the two directions: the validation score of the protocol.
    pub fn mean_mrr(&self) -> f64 {
        0.5 * (self.i2t.mrr + self.t2i.mrr)
    }
}

/// Rank of each query (row of `scores`) in its gallery (columns).
///
/// `gallery_labels[j] = None` marks a pure distractor (never correct). Errors when a score is
/// not finite, when shapes disagree, or when a query has no correct item in the gallery.
pub fn ranks(
    scores: MatRef<'_, f64>,
    query_labels: &[u32],
    gallery_labels: &[Option<u32>],
) -> Result<Vec<usize>, AlignError> {
    if scores.nrows() != query_labels.len() {
        return Err(AlignError::DimensionMismatch {
            what: "score rows vs query labels".into(),
            expected: query_labels.len(),
            got: scores.nrows(),
        });
    }
    if scores.ncols() != gallery_labels.len() {
        return Err(AlignError::DimensionMismatch {
            what: "score columns vs gallery labels".into(),
            expected: gallery_labels.len(),
            got: scores.ncols(),
        });
    }
    let mut out = Vec::with_capacity(query_labels.len());
    for (i, &q) in query_labels.iter().enumerate() {
        let mut best = f64::NEG_INFINITY;
        let mut found = false;
        for (j, g) in gallery_labels.iter().enumerate() {
            let s = scores[(i, j)];
            if !s.is_finite() {
                return Err(AlignError::NonFinite {
                    what: "score matrix".into(),
                    row: i,
                });
            }
            if *g == Some(q) {
                found = true;
                best = best.max(s);
            }
        }
        if !found {
            return Err(AlignError::NotEnoughData(format!(
                "query {i} (label {q}) has no correct item in the gallery"
            )));
        }
        let rank = gallery_labels
            .iter()
            .enumerate()
            .filter(|(j, g)| **g != Some(q) && scores[(i, *j)] >= best)
            .count();
        out.push(rank);
    }
    Ok(out)
}

/// Position (1-based) of the caption group `target` in a list read from the top, where
/// identical captions count once: a group appears where its best-scoring member does.
/// `1 + (number of other groups whose best member scores >= the target's best)`, so ties count
/// against, as in [`ranks`]. This is the annotator's effort in `sotalign simulate`: captions read
/// before (and including) the right one. `None` when no item carries `target`; a non-finite
/// score is an error.
pub fn distinct_rank(
    scores: &[f64],
    labels: &[u32],
    target: u32,
) -> Result<Option<usize>, AlignError> {
    if scores.len() != labels.len() {
        return Err(AlignError::DimensionMismatch {
            what: "scores vs labels".into(),
            expected: labels.len(),
            got: scores.len(),
        });
    }
    let mut best: std::collections::HashMap<u32, f64> = std::collections::HashMap::new();
    for (j, (&s, &g)) in scores.iter().zip(labels).enumerate() {
        if !s.is_finite() {
            return Err(AlignError::NonFinite {
                what: "score list".into(),
                row: j,
            });
        }
        let e = best.entry(g).or_insert(f64::NEG_INFINITY);
        *e = e.max(s);
    }
    let Some(&t) = best.get(&target) else {
        return Ok(None);
    };
    Ok(Some(
        1 + best
            .iter()
            .filter(|(g, s)| **g != target && **s >= t)
            .count(),
    ))
}

/// R@1/5/10 and MRR from ranks.
pub fn dir_metrics(ranks: &[usize]) -> DirMetrics {
    let n = ranks.len().max(1) as f64;
    let frac = |k: usize| ranks.iter().filter(|&&r| r < k).count() as f64 / n;
    DirMetrics {
        r1: frac(1),
        r5: frac(5),
        r10: frac(10),
        mrr: ranks.iter().map(|&r| 1.0 / (r as f64 + 1.0)).sum::<f64>() / n,
        n_queries: ranks.len(),
    }
}

/// FOSCTTM of a square score matrix whose diagonal holds the true matches: for each item, the
/// fraction of the other items that score strictly higher than its true match, averaged over
/// both directions.
pub fn foscttm(scores: MatRef<'_, f64>) -> Result<f64, AlignError> {
    let n = scores.nrows();
    if scores.ncols() != n {
        return Err(AlignError::DimensionMismatch {
            what: "FOSCTTM needs a square score matrix; columns".into(),
            expected: n,
            got: scores.ncols(),
        });
    }
    if n < 2 {
        return Err(AlignError::NotEnoughData(
            "FOSCTTM needs at least 2 items".into(),
        ));
    }
    let mut total = 0.0;
    for i in 0..n {
        let d = scores[(i, i)];
        let row = (0..n).filter(|&j| j != i && scores[(i, j)] > d).count();
        let col = (0..n).filter(|&j| j != i && scores[(j, i)] > d).count();
        total += (row + col) as f64 / (n - 1) as f64;
    }
    Ok(total / (2 * n) as f64)
}

/// Retrieval on a paired evaluation set: image i and text i are a pair, `labels[i]` its caption
/// group; both galleries are the whole set (the protocol's test evaluation).
pub fn retrieval_from_scores(
    scores: MatRef<'_, f64>,
    labels: &[u32],
) -> Result<RetrievalReport, AlignError> {
    let gallery: Vec<Option<u32>> = labels.iter().map(|&l| Some(l)).collect();
    let i2t = ranks(scores, labels, &gallery)?;
    let t2i = ranks(scores.transpose(), labels, &gallery)?;
    Ok(RetrievalReport {
        i2t: dir_metrics(&i2t),
        t2i: dir_metrics(&t2i),
        foscttm: Some(foscttm(scores)?),
    })
}

/// Evaluate a fitted method on paired test features (row i of `x` pairs with row i of `y`).
pub fn evaluate(
    model: &dyn Aligned,
    x: &Matrix,
    y: &Matrix,
    labels: &[u32],
) -> Result<RetrievalReport, AlignError> {
    if x.rows != y.rows || x.rows != labels.len() {
        return Err(AlignError::DimensionMismatch {
            what: "evaluation set: images, texts and labels must have equal length".into(),
            expected: x.rows,
            got: if y.rows != x.rows {
                y.rows
            } else {
                labels.len()
            },
        });
    }
    let s = model.score_f64(x, y)?;
    retrieval_from_scores(s.as_ref(), labels)
}

/// Retrieval with distractors: queries are the pairs of (`xq`, `yq`, `q_labels`); the text
/// gallery is the query texts plus `y_extra` (labels known or `None`), the image gallery is the
/// query images plus `x_extra` (never correct). This is the protocol's validation scheme.
pub fn retrieval_with_distractors(
    model: &dyn Aligned,
    xq: &Matrix,
    yq: &Matrix,
    q_labels: &[u32],
    x_extra: &Matrix,
    y_extra: &Matrix,
    y_extra_labels: &[Option<u32>],
) -> Result<RetrievalReport, AlignError> {
    let ex = model.embed_x_f64(xq)?;
    let ey = model.embed_y_f64(yq)?;
    let exu = model.embed_x_f64(x_extra)?;
    let eyu = model.embed_y_f64(y_extra)?;
    let text_gallery = vstack(&ey, &eyu);
    let image_gallery = vstack(&ex, &exu);
    let mut tl: Vec<Option<u32>> = q_labels.iter().map(|&l| Some(l)).collect();
    tl.extend_from_slice(y_extra_labels);
    let mut il: Vec<Option<u32>> = q_labels.iter().map(|&l| Some(l)).collect();
    il.extend(std::iter::repeat_n(None, x_extra.rows));
    let s_i2t = &ex * text_gallery.transpose();
    let s_t2i = &ey * image_gallery.transpose();
    let i2t = ranks(s_i2t.as_ref(), q_labels, &tl)?;
    let t2i = ranks(s_t2i.as_ref(), q_labels, &il)?;
    Ok(RetrievalReport {
        i2t: dir_metrics(&i2t),
        t2i: dir_metrics(&t2i),
        foscttm: None,
    })
}

fn vstack(a: &Mat<f64>, b: &Mat<f64>) -> Mat<f64> {
    let (na, nb) = (a.nrows(), b.nrows());
    let c = a.ncols().max(b.ncols());
    Mat::from_fn(
        na + nb,
        c,
        |i, j| if i < na { a[(i, j)] } else { b[(i - na, j)] },
    )
}

/// Zero-shot classification accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ZeroShot {
    pub top1: f64,
    pub top5: f64,
    pub n: usize,
    pub n_classes: usize,
}

/// Zero-shot classification by prompt: `prompts` holds one text-feature row per class (e.g. the
/// encoding of "a photo of a {label}"); each image is assigned the class whose prompt scores
/// highest. Ties count against the method, as in retrieval.
pub fn zero_shot(
    model: &dyn Aligned,
    images: &Matrix,
    labels: &[usize],
    prompts: &Matrix,
) -> Result<ZeroShot, AlignError> {
    if images.rows != labels.len() {
        return Err(AlignError::DimensionMismatch {
            what: "zero-shot labels".into(),
            expected: images.rows,
            got: labels.len(),
        });
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= prompts.rows) {
        return Err(AlignError::InvalidConfig(format!(
            "zero-shot label {bad} has no prompt ({} prompts)",
            prompts.rows
        )));
    }
    let s = model.score_f64(images, prompts)?;
    let q: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    let g: Vec<Option<u32>> = (0..prompts.rows as u32).map(Some).collect();
    let r = ranks(s.as_ref(), &q, &g)?;
    let m = dir_metrics(&r);
    Ok(ZeroShot {
        top1: m.r1,
        top5: m.r5,
        n: labels.len(),
        n_classes: prompts.rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mat(r: usize, c: usize, v: &[f64]) -> Mat<f64> {
        Mat::from_fn(r, c, |i, j| v[i * c + j])
    }

    #[test]
    fn distinct_rank_counts_identical_captions_once() {
        // Groups: 5 (0.9, 0.8), 7 (0.7, 0.2), 3 (0.7): target 7's best is 0.7; group 5 is above
        // and group 3 ties (counts against): rank 3. Group 5 read once despite two members.
        let s = [0.9, 0.7, 0.8, 0.2, 0.7];
        let g = [5, 7, 5, 7, 3];
        assert_eq!(distinct_rank(&s, &g, 7).unwrap(), Some(3));
        assert_eq!(distinct_rank(&s, &g, 5).unwrap(), Some(1));
        assert_eq!(distinct_rank(&s, &g, 9).unwrap(), None);
        assert!(distinct_rank(&[f64::NAN], &[1], 1).is_err());
        assert!(distinct_rank(&[0.0], &[1, 2], 1).is_err());
    }

    #[test]
    fn ties_count_against_and_best_correct_counts() {
        // Query 0: correct items are columns 0 and 2 (label 7); best correct scores 0.5;
        // incorrect column 1 ties at 0.5 and column 3 is higher: rank 2.
        let s = mat(1, 4, &[0.1, 0.5, 0.5, 0.9]);
        let r = ranks(s.as_ref(), &[7], &[Some(7), Some(1), Some(7), Some(2)]).unwrap();
        assert_eq!(r, vec![2]);
        // Distractors with None are never correct.
        let r = ranks(s.as_ref(), &[7], &[Some(7), None, None, None]).unwrap();
        assert_eq!(r, vec![3]);
    }

    #[test]
    fn metrics_from_ranks() {
        let m = dir_metrics(&[0, 1, 4, 9, 20]);
        assert_eq!(m.r1, 0.2);
        assert_eq!(m.r5, 0.6);
        assert_eq!(m.r10, 0.8);
        let mrr = (1.0 + 0.5 + 0.2 + 0.1 + 1.0 / 21.0) / 5.0;
        assert!((m.mrr - mrr).abs() < 1e-15);
    }

    #[test]
    fn foscttm_perfect_and_reversed() {
        let id = mat(3, 3, &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(foscttm(id.as_ref()).unwrap(), 0.0);
        let anti = mat(3, 3, &[0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]);
        assert_eq!(foscttm(anti.as_ref()).unwrap(), 1.0);
    }

    #[test]
    fn errors_are_typed() {
        let s = mat(1, 2, &[f64::NAN, 0.0]);
        assert!(matches!(
            ranks(s.as_ref(), &[0], &[Some(0), Some(1)]),
            Err(AlignError::NonFinite { .. })
        ));
        let s = mat(1, 2, &[0.0, 0.0]);
        assert!(matches!(
            ranks(s.as_ref(), &[5], &[Some(0), Some(1)]),
            Err(AlignError::NotEnoughData(_))
        ));
        assert!(matches!(
            ranks(s.as_ref(), &[5, 6], &[Some(0), Some(1)]),
            Err(AlignError::DimensionMismatch { .. })
        ));
    }
}
