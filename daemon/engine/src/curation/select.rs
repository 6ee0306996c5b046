//! Selection strategies: which unpaired *images* a person should caption next, and the hybrid
//! policy that decides between captioning and judging model proposals.
//!
//! Why this exists beside [`crate::acquire`]: judging proposals (yes/no on a suggested pair)
//! only pays when the model's suggestions are often right, and a model fitted on a few dozen
//! pairs is right a few percent of the time (`docs/CURATION.md`). Captioning a chosen image
//! always yields one true pair; the question is then *which* images teach the model most. With
//! tiny budgets the active-learning literature (TypiClust, Hacohen et al. 2022) finds that
//! *typical* examples of uncovered regions beat uncertain ones, and we measured the same on Tux
//! Paint, so [`typiclust`] is the selection strategy implemented here.
//!
//! Invariants (pure computation, no IO):
//! - [`typiclust`] is deterministic for a given config seed and input;
//! - it returns distinct pool indices, at most `b`, fewer only when the pool runs out;
//! - [`Hybrid`] estimates precision only from answers the annotator gave (captions and
//!   judgements), never from held-out truth.
use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{AlignError, Matrix};

/// Knobs of [`typiclust`].
#[derive(Debug, Clone, PartialEq)]
pub struct TypiclustConfig {
    /// Lloyd iterations at most (stops earlier when no assignment changes).
    pub iters: usize,
    /// Neighbours used for typicality (mean cosine to the `knn` most similar cluster members).
    pub knn: usize,
    /// Seed of the k-means++ initialisation: same seed, same input, same answer.
    pub seed: u64,
    /// Number of clusters; `None` = labeled rows + `b` (TypiClust's choice: one new cluster per
    /// pick, so every pick can open an uncovered region).
    pub clusters: Option<usize>,
}

impl Default for TypiclustConfig {
    fn default() -> Self {
        Self {
            iters: 30,
            knn: 20,
            seed: 0,
            clusters: None,
        }
    }
}

/// Choose up to `b` rows of `pool` to caption, given the rows already `labeled` (same feature
/// space, e.g. image-encoder features or the current model's image embeddings).
///
/// Spherical k-means with `labeled.rows + b` clusters over pool and labeled rows together;
/// clusters that hold no labeled row are the uncovered regions. Each pick takes the cluster
/// with the fewest labeled-or-picked rows (ties: the one with more pool rows), and from it the
/// most *typical* pool row not yet picked: highest mean cosine to its nearest cluster members.
/// Typical rather than uncertain points, because with a few hundred labels a model learns
/// more from the dense middle of the data than from its fringes.
pub fn typiclust(
    pool: &Matrix,
    labeled: &Matrix,
    b: usize,
    cfg: &TypiclustConfig,
) -> Result<Vec<usize>, AlignError> {
    if labeled.rows > 0 && labeled.cols != pool.cols {
        return Err(AlignError::InvalidConfig(format!(
            "typiclust: pool has {} columns, labeled rows have {}",
            pool.cols, labeled.cols
        )));
    }
    pool.check_finite("typiclust pool features")?;
    labeled.check_finite("typiclust labeled features")?;
    let np = pool.rows;
    if b == 0 || np == 0 {
        return Ok(Vec::new());
    }
    // Unit rows: pool first, then labeled.
    let mut all = Matrix::zeros(np + labeled.rows, pool.cols);
    for i in 0..np {
        all.row_mut(i).copy_from_slice(pool.row(i));
    }
    for i in 0..labeled.rows {
        all.row_mut(np + i).copy_from_slice(labeled.row(i));
    }
    let f = all.l2_normalized();
    let k = cfg.clusters.unwrap_or(labeled.rows + b).clamp(1, f.rows);
    let assign = spherical_kmeans(&f, k, cfg)?;

    // Cluster membership and coverage.
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, &c) in assign.iter().enumerate() {
        members[c].push(i);
    }
    let mut covered = vec![0usize; k];
    for &c in &assign[np..] {
        covered[c] += 1;
    }
    let pool_size: Vec<usize> = members
        .iter()
        .map(|m| m.iter().filter(|&&i| i < np).count())
        .collect();
    // Typicality of each pool row within its cluster.
    let mut typical = vec![f64::NEG_INFINITY; np];
    for m in &members {
        if m.is_empty() {
            continue;
        }
        let sub = f.select_rows(m);
        let s = sub.matmul_t(&sub);
        let nn = cfg.knn.max(1).min(m.len().saturating_sub(1));
        let mut row: Vec<f32> = Vec::with_capacity(m.len());
        for (a, &i) in m.iter().enumerate() {
            if i >= np {
                continue;
            }
            if nn == 0 {
                typical[i] = 1.0;
                continue;
            }
            row.clear();
            row.extend(
                (0..m.len())
                    .filter(|&c| c != a)
                    .map(|c| s.data[a * m.len() + c]),
            );
            row.select_nth_unstable_by(nn - 1, |p, q| q.total_cmp(p));
            typical[i] = row[..nn].iter().map(|&v| v as f64).sum::<f64>() / nn as f64;
        }
    }
    let mut picked = vec![false; np];
    let mut out = Vec::with_capacity(b.min(np));
    while out.len() < b.min(np) {
        // The least-covered cluster that still has an unpicked pool row.
        let Some(c) = (0..k)
            .filter(|&c| members[c].iter().any(|&i| i < np && !picked[i]))
            .min_by(|&p, &q| {
                covered[p]
                    .cmp(&covered[q])
                    .then(pool_size[q].cmp(&pool_size[p]))
                    .then(p.cmp(&q))
            })
        else {
            break;
        };
        let best = members[c]
            .iter()
            .copied()
            .filter(|&i| i < np && !picked[i])
            .max_by(|&p, &q| typical[p].total_cmp(&typical[q]).then(q.cmp(&p)));
        let Some(i) = best else { break };
        picked[i] = true;
        covered[c] += 1;
        out.push(i);
    }
    Ok(out)
}

/// Spherical k-means (cosine) on unit rows with k-means++ seeding; returns each row's cluster.
fn spherical_kmeans(f: &Matrix, k: usize, cfg: &TypiclustConfig) -> Result<Vec<usize>, AlignError> {
    let n = f.rows;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    // k-means++ on the cosine distance 1 - <x, c>.
    let mut centres = Matrix::zeros(k, f.cols);
    let first = rng.random_range(0..n);
    centres.row_mut(0).copy_from_slice(f.row(first));
    let mut d2: Vec<f64> = (0..n).map(|i| dist(f.row(i), f.row(first))).collect();
    for c in 1..k {
        let total: f64 = d2.iter().sum();
        let pick = if total > 0.0 {
            let mut u = rng.random::<f64>() * total;
            let mut pick = n - 1;
            for (i, &w) in d2.iter().enumerate() {
                if u < w {
                    pick = i;
                    break;
                }
                u -= w;
            }
            pick
        } else {
            // Every row coincides with a centre: any row will do.
            c % n
        };
        centres.row_mut(c).copy_from_slice(f.row(pick));
        for (i, d) in d2.iter_mut().enumerate() {
            *d = d.min(dist(f.row(i), f.row(pick)));
        }
    }
    let mut assign = vec![usize::MAX; n];
    for _ in 0..cfg.iters.max(1) {
        let s = f.matmul_t(&centres);
        s.check_finite("k-means scores")?;
        let mut changed = false;
        for (i, a) in assign.iter_mut().enumerate() {
            let row = &s.data[i * k..(i + 1) * k];
            let best = (0..k)
                .max_by(|&p, &q| row[p].total_cmp(&row[q]).then(q.cmp(&p)))
                .unwrap_or(0);
            if *a != best {
                *a = best;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        // New centres: normalised means; an empty cluster keeps its centre.
        let mut sum = Matrix::zeros(k, f.cols);
        let mut count = vec![0usize; k];
        for (i, &a) in assign.iter().enumerate() {
            count[a] += 1;
            for (s, &x) in sum.row_mut(a).iter_mut().zip(f.row(i)) {
                *s += x;
            }
        }
        for c in 0..k {
            if count[c] > 0 {
                let norm = sum.row(c).iter().map(|v| v * v).sum::<f32>().sqrt();
                if norm > 0.0 {
                    for (dst, &v) in centres.row_mut(c).iter_mut().zip(sum.row(c)) {
                        *dst = v / norm;
                    }
                }
            }
        }
    }
    Ok(assign)
}

fn dist(a: &[f32], b: &[f32]) -> f64 {
    let d: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    (1.0 - d as f64).max(0.0)
}

/// What the annotator does this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Caption images chosen by a selection strategy (every label is one true pair).
    Caption,
    /// Judge the model's `mnn` proposals (a label is one yes/no).
    Judge,
}

/// Knobs of [`Hybrid`].
#[derive(Debug, Clone, PartialEq)]
pub struct HybridConfig {
    /// Switch to judging when the estimated precision of `mnn` proposals reaches this. When a
    /// yes/no costs as much as a caption (the simulation's accounting), judging only pays near
    /// 1.0; with a judgement `c` times as cheap as a caption the break-even is `c`.
    pub threshold: f64,
    /// Observations the estimate looks back over (the model changes every round).
    pub window: usize,
    /// Fewest observations before the policy may switch to judging.
    pub min_obs: usize,
}

impl Default for HybridConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            window: 40,
            min_obs: 10,
        }
    }
}

/// Caption until the model's proposals are estimated to be right often enough, then judge
/// them; go back to captioning when the judged precision drops.
///
/// The estimate is the smoothed hit rate (Beta(1, 1) prior) over the last `window`
/// observations. While captioning, an observation is a captioned image for which the model had
/// a mutual-nearest-neighbour proposal: the caption says whether that proposal was right, for
/// free. This is conservative: the judged batch takes the *highest-scoring* mutual pairs, which
/// are right more often than a typical one. While judging, every answer is an observation.
#[derive(Debug, Clone)]
pub struct Hybrid {
    cfg: HybridConfig,
    obs: VecDeque<bool>,
}

impl Hybrid {
    pub fn new(cfg: HybridConfig) -> Result<Self, AlignError> {
        if !(0.0..=1.0).contains(&cfg.threshold) || cfg.window == 0 {
            return Err(AlignError::InvalidConfig(format!(
                "hybrid: threshold must be in [0, 1] and window > 0 (got {}, {})",
                cfg.threshold, cfg.window
            )));
        }
        Ok(Self {
            cfg,
            obs: VecDeque::new(),
        })
    }

    /// Record whether a model proposal turned out right (from a caption or a judgement).
    pub fn observe(&mut self, correct: bool) {
        self.obs.push_back(correct);
        while self.obs.len() > self.cfg.window {
            self.obs.pop_front();
        }
    }

    /// Smoothed precision estimate, (hits + 1) / (n + 2).
    pub fn estimate(&self) -> f64 {
        let hits = self.obs.iter().filter(|&&h| h).count();
        (hits as f64 + 1.0) / (self.obs.len() as f64 + 2.0)
    }

    pub fn observations(&self) -> usize {
        self.obs.len()
    }

    pub fn mode(&self) -> Mode {
        if self.obs.len() >= self.cfg.min_obs && self.estimate() >= self.cfg.threshold {
            Mode::Judge
        } else {
            Mode::Caption
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, StandardNormal};

    /// `n_clusters` tight Gaussian blobs of unequal sizes around random unit centres; returns
    /// the rows, each row's blob, and the centres.
    fn blobs(sizes: &[usize], d: usize, spread: f32, seed: u64) -> (Matrix, Vec<usize>, Matrix) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut centres = Matrix::zeros(sizes.len(), d);
        for c in 0..sizes.len() {
            for v in centres.row_mut(c) {
                *v = StandardNormal.sample(&mut rng);
            }
        }
        let centres = centres.l2_normalized();
        let n: usize = sizes.iter().sum();
        let mut x = Matrix::zeros(n, d);
        let mut blob = Vec::with_capacity(n);
        let mut r = 0;
        for (c, &m) in sizes.iter().enumerate() {
            for _ in 0..m {
                for (k, v) in x.row_mut(r).iter_mut().enumerate() {
                    let e: f32 = StandardNormal.sample(&mut rng);
                    *v = centres.row(c)[k] + spread * e / (d as f32).sqrt();
                }
                blob.push(c);
                r += 1;
            }
        }
        (x, blob, centres)
    }

    #[test]
    fn typiclust_covers_uncovered_blobs_with_their_most_central_points() {
        // Six blobs; blob 0 is already labeled. Five picks must land in the five other blobs,
        // one each, and each pick must be among its blob's most central points (cosine to the
        // planted centre, which the algorithm never sees).
        let sizes = [40, 60, 30, 50, 20, 45];
        let (x, blob, centres) = blobs(&sizes, 32, 0.5, 11);
        let labeled_rows: Vec<usize> = (0..x.rows).filter(|&i| blob[i] == 0).take(1).collect();
        let pool_rows: Vec<usize> = (0..x.rows).filter(|i| !labeled_rows.contains(i)).collect();
        let pool = x.select_rows(&pool_rows);
        let labeled = x.select_rows(&labeled_rows);
        // k = 1 labeled + 5 picks = 6 clusters, one per well-separated blob.
        let picks = typiclust(&pool, &labeled, 5, &TypiclustConfig::default()).unwrap();
        assert_eq!(picks.len(), 5);
        let picked_blobs: std::collections::HashSet<usize> =
            picks.iter().map(|&p| blob[pool_rows[p]]).collect();
        assert_eq!(
            picked_blobs.len(),
            5,
            "picks {picks:?} blobs {picked_blobs:?}"
        );
        assert!(!picked_blobs.contains(&0), "picked the labeled blob");
        let xu = x.l2_normalized();
        for &p in &picks {
            let i = pool_rows[p];
            let b = blob[i];
            let cos = |r: usize| -> f32 {
                xu.row(r)
                    .iter()
                    .zip(centres.row(b))
                    .map(|(a, c)| a * c)
                    .sum()
            };
            let mine = cos(i);
            let rank = (0..x.rows)
                .filter(|&r| blob[r] == b && cos(r) > mine)
                .count();
            assert!(
                rank < sizes[b] / 5,
                "pick {i} of blob {b} ranks {rank} of {} by centrality",
                sizes[b]
            );
        }
        // A fixed cluster count below the number of picks: the least-covered rule spreads the
        // picks, so 12 picks over 6 clusters (one per blob) put exactly 2 in every blob.
        let six = TypiclustConfig {
            clusters: Some(6),
            ..TypiclustConfig::default()
        };
        let p12 = typiclust(&x, &none_labeled(&x), 12, &six).unwrap();
        let mut per_blob = vec![0; sizes.len()];
        for &p in &p12 {
            per_blob[blob[p]] += 1;
        }
        assert_eq!(per_blob, vec![2; sizes.len()], "picks {p12:?}");
        // Deterministic: same input and seed, same answer.
        let again = typiclust(&pool, &labeled, 5, &TypiclustConfig::default()).unwrap();
        assert_eq!(picks, again);
    }

    fn none_labeled(x: &Matrix) -> Matrix {
        Matrix::zeros(0, x.cols)
    }

    #[test]
    fn typiclust_returns_distinct_rows_and_handles_small_pools() {
        let (x, _, _) = blobs(&[10, 10], 8, 0.3, 3);
        let none = Matrix::zeros(0, 8);
        // More picks than rows: every row once.
        let mut p = typiclust(&x, &none, 50, &TypiclustConfig::default()).unwrap();
        p.sort_unstable();
        assert_eq!(p, (0..20).collect::<Vec<_>>());
        assert!(
            typiclust(&x, &none, 0, &TypiclustConfig::default())
                .unwrap()
                .is_empty()
        );
        // Bad input is typed.
        let wrong = Matrix::zeros(2, 7);
        assert!(matches!(
            typiclust(&x, &wrong, 3, &TypiclustConfig::default()),
            Err(AlignError::InvalidConfig(_))
        ));
        let mut nan = x.clone();
        nan.row_mut(3)[0] = f32::NAN;
        assert!(typiclust(&nan, &none, 3, &TypiclustConfig::default()).is_err());
    }

    #[test]
    fn hybrid_switches_on_observed_precision_and_back() {
        let mut h = Hybrid::new(HybridConfig {
            threshold: 0.5,
            window: 20,
            min_obs: 10,
        })
        .unwrap();
        assert_eq!(h.mode(), Mode::Caption);
        // Nine hits are not enough observations yet.
        for _ in 0..9 {
            h.observe(true);
        }
        assert_eq!(h.mode(), Mode::Caption);
        h.observe(false);
        // 9 of 10: (9 + 1) / 12.
        assert!((h.estimate() - 10.0 / 12.0).abs() < 1e-12);
        assert_eq!(h.mode(), Mode::Judge);
        // Judged answers go wrong: the window forgets the early hits and the policy returns to
        // captioning.
        for _ in 0..15 {
            h.observe(false);
        }
        assert_eq!(h.observations(), 20);
        assert!(h.estimate() < 0.5);
        assert_eq!(h.mode(), Mode::Caption);
        assert!(
            Hybrid::new(HybridConfig {
                threshold: 1.5,
                ..Default::default()
            })
            .is_err()
        );
    }
}
