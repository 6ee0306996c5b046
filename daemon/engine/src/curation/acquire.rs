//! Acquisition strategies for active curation: given the current fitted model, the unpaired
//! images and texts and the decisions already taken, propose the next `b` (image, text) pairs
//! for a person (or an oracle) to confirm or reject.
//!
//! Why several strategies: the labelling budget is the scarce resource, and each proposal costs
//! one judgement whether it is accepted or not. `random` is the honest baseline (almost always
//! wrong on a large pool); `confidence`, `mnn` and `ot` use the model's cross-modal scores in
//! increasingly global ways; `diverse` is `ot` with a similarity cap so the budget is not spent
//! on near-duplicates of items already proposed or confirmed.
//!
//! Invariants (pure computation, no IO):
//! - a rejected (image, text) pair is never proposed again;
//! - an image or text that is part of a confirmed pair is never proposed again (one caption per
//!   image in this model of the task);
//! - within one batch, each image and each text appears at most once.
//!
//! Rejected pairs are kept in [`Decisions`] as negatives. The closed-form methods (CCA teacher,
//! Procrustes, CSA, ASIF) cannot use negatives and the student trainer (`train::fit_student`)
//! does not take them yet, so today they only steer acquisition (never re-proposed, and pushed
//! out of the OT plan).
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::sinkhorn::Sinkhorn;
use crate::{AlignError, Aligned, Matrix};

/// How proposals are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Uniformly random available image and text: what labelling without a model looks like.
    Random,
    /// Images whose best text beats their second-best text by the largest score margin.
    Confidence,
    /// Mutual nearest neighbours (image's best text whose best image is that image), by score;
    /// filled from the confidence ranking when fewer than `b` mutual pairs exist.
    Mnn,
    /// Largest mass of the entropic OT plan between available images and texts (uniform
    /// marginals): a global assignment, so a text that many images like is not proposed many
    /// times.
    Ot,
    /// `Ot` plus a similarity cap: skip a candidate whose image or text embedding is within
    /// `diversity_cap` cosine of one already proposed in the batch or already confirmed.
    Diverse,
    /// Mutual-nearest-neighbour pairs first, then the rest, each group by OT plan mass: the
    /// two signals agree on the pairs most likely to be right (the daemon's default ranking).
    MnnOt,
}

impl Strategy {
    pub const ALL: [Strategy; 6] = [
        Strategy::Random,
        Strategy::Confidence,
        Strategy::Mnn,
        Strategy::Ot,
        Strategy::Diverse,
        Strategy::MnnOt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Random => "random",
            Strategy::Confidence => "confidence",
            Strategy::Mnn => "mnn",
            Strategy::Ot => "ot",
            Strategy::Diverse => "diverse",
            Strategy::MnnOt => "mnn-ot",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = AlignError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        Self::ALL
            .iter()
            .copied()
            .find(|m| m.name() == t)
            .ok_or_else(|| {
                AlignError::InvalidConfig(format!(
                    "unknown acquisition strategy `{s}` (known: {})",
                    Self::ALL.map(|m| m.name()).join(", ")
                ))
            })
    }
}

/// Knobs of the strategies.
#[derive(Debug, Clone, PartialEq)]
pub struct AcquireConfig {
    /// Temperature of the OT plan, in score units (scores are cosines for every method).
    pub ot_eps: f64,
    pub ot_iters: usize,
    /// Cosine (in the model's shared space) above which two images, or two texts, count as
    /// near-duplicates for the `diverse` strategy.
    pub diversity_cap: f32,
}

impl Default for AcquireConfig {
    fn default() -> Self {
        Self {
            ot_eps: 0.05,
            ot_iters: 100,
            diversity_cap: 0.9,
        }
    }
}

/// Decisions taken so far, as indices into the candidate image and text matrices.
#[derive(Debug, Clone, Default)]
pub struct Decisions {
    pub confirmed: Vec<(usize, usize)>,
    pub rejected: HashSet<(usize, usize)>,
}

impl Decisions {
    pub fn confirm(&mut self, image: usize, text: usize) {
        self.confirmed.push((image, text));
    }

    pub fn reject(&mut self, image: usize, text: usize) {
        self.rejected.insert((image, text));
    }

    /// Rejected pairs as a list (negatives for a trainer that can use them).
    pub fn negatives(&self) -> Vec<(usize, usize)> {
        let mut v: Vec<_> = self.rejected.iter().copied().collect();
        v.sort_unstable();
        v
    }
}

/// One proposed pair with the model's score and the strategy's ranking key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proposal {
    pub image: usize,
    pub text: usize,
    /// Model score (dot product in the shared space).
    pub score: f32,
    /// What the strategy ranked by (margin, score, plan mass x rows, or a random draw).
    pub key: f64,
    /// The image's best available text is this text and the text's best available image is
    /// this image (rejected pairs excluded).
    pub mutual_nn: bool,
    /// The pair's OT plan mass x rows (1 = the image's whole mass on this text), for the
    /// strategies that solve the plan (`ot`, `diverse`, `mnn-ot`).
    pub ot_mass: Option<f64>,
}

/// Propose up to `b` pairs among `images` x `texts` (raw encoder features, the candidate pool).
/// Fewer than `b` come back only when the available items run out.
#[allow(clippy::too_many_arguments)]
pub fn propose(
    model: &dyn Aligned,
    images: &Matrix,
    texts: &Matrix,
    decisions: &Decisions,
    strategy: Strategy,
    b: usize,
    cfg: &AcquireConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Proposal>, AlignError> {
    check_decisions(images.rows, texts.rows, decisions)?;
    let ex = model.embed_x(images)?;
    let ey = model.embed_y(texts)?;
    propose_embedded(&ex, &ey, decisions, strategy, b, cfg, rng)
}

fn check_decisions(ni: usize, nt: usize, decisions: &Decisions) -> Result<(), AlignError> {
    for &(i, j) in decisions.confirmed.iter().chain(&decisions.rejected) {
        if i >= ni || j >= nt {
            return Err(AlignError::InvalidConfig(format!(
                "decision ({i}, {j}) is out of range ({ni} images, {nt} texts)"
            )));
        }
    }
    Ok(())
}

/// [`propose`] on a pool already mapped into the shared space (row i of `ex` is image i, row j
/// of `ey` text j): what the daemon calls, since it keeps every sample's aligned embedding in
/// its index. Scores are the dot products of these rows, so unit rows give cosines.
pub fn propose_embedded(
    ex_all: &Matrix,
    ey_all: &Matrix,
    decisions: &Decisions,
    strategy: Strategy,
    b: usize,
    cfg: &AcquireConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Proposal>, AlignError> {
    let images = ex_all;
    let texts = ey_all;
    check_decisions(images.rows, texts.rows, decisions)?;
    if strategy == Strategy::Diverse && !(cfg.diversity_cap > -1.0 && cfg.diversity_cap <= 1.0) {
        return Err(AlignError::InvalidConfig(format!(
            "diversity_cap must be in (-1, 1], got {}",
            cfg.diversity_cap
        )));
    }
    let mut img_used = vec![false; images.rows];
    let mut txt_used = vec![false; texts.rows];
    for &(i, j) in &decisions.confirmed {
        img_used[i] = true;
        txt_used[j] = true;
    }
    let avail_i: Vec<usize> = (0..images.rows).filter(|&i| !img_used[i]).collect();
    let avail_t: Vec<usize> = (0..texts.rows).filter(|&j| !txt_used[j]).collect();
    if b == 0 || avail_i.is_empty() || avail_t.is_empty() {
        return Ok(Vec::new());
    }
    let ex = images.select_rows(&avail_i);
    let ey = texts.select_rows(&avail_t);
    // Scores of available items: s[a * nt + c] for avail_i[a], avail_t[c].
    let s = ex.matmul_t(&ey);
    s.check_finite("model scores of the candidate pool")?;
    let (ni, nt) = (avail_i.len(), avail_t.len());
    let rejected = |a: usize, c: usize| decisions.rejected.contains(&(avail_i[a], avail_t[c]));

    let (best_t, best_i) = best_partners(&s, ni, nt, &rejected);
    let mutual = |a: usize, c: usize| best_t[a] == Some(c) && best_i[c] == Some(a);

    if strategy == Strategy::Random {
        let mut out = random(&avail_i, &avail_t, &s, decisions, b, rng);
        let ipos: std::collections::HashMap<usize, usize> =
            avail_i.iter().enumerate().map(|(a, &i)| (i, a)).collect();
        let tpos: std::collections::HashMap<usize, usize> =
            avail_t.iter().enumerate().map(|(c, &j)| (j, c)).collect();
        for p in &mut out {
            p.mutual_nn = mutual(ipos[&p.image], tpos[&p.text]);
        }
        return Ok(out);
    }
    let uses_plan = matches!(strategy, Strategy::Ot | Strategy::Diverse | Strategy::MnnOt);

    // Candidates (a, c, key), best first.
    let mut cands: Vec<(usize, usize, f64)> = match strategy {
        Strategy::Confidence => confidence(&s, ni, nt, &rejected),
        Strategy::Mnn => {
            let mut m = mnn(&s, ni, nt, &rejected);
            // Fill from the confidence ranking (the greedy selection skips repeats).
            let mut conf = confidence(&s, ni, nt, &rejected);
            conf.sort_by(|p, q| q.2.total_cmp(&p.2));
            m.extend(conf);
            m
        }
        Strategy::Ot | Strategy::Diverse => ot_mass(&ot_plan(&s, ni, nt, &rejected, cfg)?, ni, nt),
        Strategy::MnnOt => {
            let plan = ot_plan(&s, ni, nt, &rejected, cfg)?;
            let mut c = ot_mass(&plan, ni, nt);
            // Every mutual pair is a candidate, even when the plan spread its image's mass so
            // that it is not among the image's largest entries.
            c.extend((0..ni).filter_map(|a| {
                let t = best_t[a]?;
                mutual(a, t).then(|| (a, t, plan[a * nt + t] as f64 * ni as f64))
            }));
            c
        }
        Strategy::Random => unreachable!("handled above"),
    };
    match strategy {
        Strategy::Mnn => {}
        // Mutual pairs first; within each group, by plan mass.
        Strategy::MnnOt => cands.sort_by(|p, q| {
            mutual(q.0, q.1)
                .cmp(&mutual(p.0, p.1))
                .then(q.2.total_cmp(&p.2))
        }),
        _ => cands.sort_by(|p, q| q.2.total_cmp(&p.2)),
    }

    // Near-duplicate references for `diverse`: embeddings of confirmed items.
    let (conf_x, conf_y) = if strategy == Strategy::Diverse && !decisions.confirmed.is_empty() {
        let ci: Vec<usize> = decisions.confirmed.iter().map(|p| p.0).collect();
        let cj: Vec<usize> = decisions.confirmed.iter().map(|p| p.1).collect();
        (
            Some(unit_rows(&images.select_rows(&ci))),
            Some(unit_rows(&texts.select_rows(&cj))),
        )
    } else {
        (None, None)
    };
    let uex = unit_rows(&ex);
    let uey = unit_rows(&ey);

    // Fallback when the ranking runs out before `b` (several images share one best text): each
    // still-unused image (pool order) with its best still-unused text, after the ranked ones.
    let fallback = (0..ni).map(|a| (a, usize::MAX, f64::NEG_INFINITY));
    let mut out = Vec::with_capacity(b.min(ni.min(nt)));
    let mut ai_used = vec![false; ni];
    let mut at_used = vec![false; nt];
    let mut chosen: Vec<(usize, usize)> = Vec::new();
    for (a, c, key) in cands.into_iter().chain(fallback) {
        let (c, key) = if c == usize::MAX {
            if ai_used[a] {
                continue;
            }
            let row = &s.data[a * nt..(a + 1) * nt];
            match (0..nt)
                .filter(|&c| !at_used[c] && !rejected(a, c))
                .max_by(|&p, &q| row[p].total_cmp(&row[q]))
            {
                // A fallback's priority is its cosine - 2: finite (it goes on the wire), below
                // every ranked candidate's (margins and masses are >= 0), ordered by score.
                Some(c) => (c, row[c] as f64 - 2.0),
                None => continue,
            }
        } else {
            (c, key)
        };
        if out.len() == b {
            break;
        }
        if ai_used[a] || at_used[c] || rejected(a, c) {
            continue;
        }
        if strategy == Strategy::Diverse {
            let cap = cfg.diversity_cap;
            let dup_batch = chosen.iter().any(|&(pa, pc)| {
                dot(uex.row(a), uex.row(pa)) > cap || dot(uey.row(c), uey.row(pc)) > cap
            });
            let dup_conf = conf_x
                .as_ref()
                .is_some_and(|m| (0..m.rows).any(|r| dot(uex.row(a), m.row(r)) > cap))
                || conf_y
                    .as_ref()
                    .is_some_and(|m| (0..m.rows).any(|r| dot(uey.row(c), m.row(r)) > cap));
            if dup_batch || dup_conf {
                continue;
            }
        }
        ai_used[a] = true;
        at_used[c] = true;
        chosen.push((a, c));
        out.push(Proposal {
            image: avail_i[a],
            text: avail_t[c],
            score: s.data[a * nt + c],
            key,
            mutual_nn: mutual(a, c),
            ot_mass: (uses_plan && key.is_finite()).then_some(key),
        });
    }
    Ok(out)
}

/// Best non-rejected text of each image and best non-rejected image of each text.
fn best_partners(
    s: &Matrix,
    ni: usize,
    nt: usize,
    rejected: &dyn Fn(usize, usize) -> bool,
) -> (Vec<Option<usize>>, Vec<Option<usize>>) {
    let mut best_t = vec![None::<(usize, f32)>; ni];
    let mut best_i = vec![None::<(usize, f32)>; nt];
    for a in 0..ni {
        for c in 0..nt {
            if rejected(a, c) {
                continue;
            }
            let v = s.data[a * nt + c];
            if best_t[a].is_none_or(|(_, bv)| v > bv) {
                best_t[a] = Some((c, v));
            }
            if best_i[c].is_none_or(|(_, bv)| v > bv) {
                best_i[c] = Some((a, v));
            }
        }
    }
    (
        best_t.into_iter().map(|b| b.map(|p| p.0)).collect(),
        best_i.into_iter().map(|b| b.map(|p| p.0)).collect(),
    )
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn unit_rows(m: &Matrix) -> Matrix {
    m.l2_normalized()
}

/// Random available image with a random available text, never a rejected pair.
fn random(
    avail_i: &[usize],
    avail_t: &[usize],
    s: &Matrix,
    decisions: &Decisions,
    b: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Proposal> {
    let mut ia: Vec<usize> = (0..avail_i.len()).collect();
    ia.shuffle(rng);
    let mut tc: Vec<usize> = (0..avail_t.len()).collect();
    tc.shuffle(rng);
    let mut out = Vec::new();
    for a in ia {
        if out.len() == b || tc.is_empty() {
            break;
        }
        // A random remaining text that is not rejected with this image (bounded tries).
        for _ in 0..tc.len().min(64) {
            let k = rng.random_range(0..tc.len());
            let c = tc[k];
            if !decisions.rejected.contains(&(avail_i[a], avail_t[c])) {
                tc.swap_remove(k);
                out.push(Proposal {
                    image: avail_i[a],
                    text: avail_t[c],
                    score: s.data[a * avail_t.len() + c],
                    key: 0.0,
                    mutual_nn: false,
                    ot_mass: None,
                });
                break;
            }
        }
    }
    out
}

/// Best and second-best non-rejected text of each image; key = margin between them.
fn confidence(
    s: &Matrix,
    ni: usize,
    nt: usize,
    rejected: &dyn Fn(usize, usize) -> bool,
) -> Vec<(usize, usize, f64)> {
    let mut out = Vec::with_capacity(ni);
    for a in 0..ni {
        let row = &s.data[a * nt..(a + 1) * nt];
        let (mut b1, mut b2) = (None::<(usize, f32)>, f32::NEG_INFINITY);
        for (c, &v) in row.iter().enumerate() {
            if rejected(a, c) {
                continue;
            }
            match b1 {
                Some((_, bv)) if v <= bv => b2 = b2.max(v),
                Some((_, bv)) => {
                    b2 = bv;
                    b1 = Some((c, v));
                }
                None => b1 = Some((c, v)),
            }
        }
        if let Some((c, v)) = b1 {
            // A single candidate text: its margin over nothing is its score's distance to -1.
            let margin = if b2.is_finite() { v - b2 } else { v + 1.0 };
            out.push((a, c, margin as f64));
        }
    }
    out
}

/// Mutual nearest neighbours, sorted by score (best first).
fn mnn(
    s: &Matrix,
    ni: usize,
    nt: usize,
    rejected: &dyn Fn(usize, usize) -> bool,
) -> Vec<(usize, usize, f64)> {
    let (best_t, best_i) = best_partners(s, ni, nt, rejected);
    let mut out: Vec<(usize, usize, f64)> = (0..ni)
        .filter_map(|a| {
            let c = best_t[a]?;
            (best_i[c] == Some(a)).then(|| (a, c, s.data[a * nt + c] as f64))
        })
        .collect();
    out.sort_by(|p, q| q.2.total_cmp(&p.2));
    out
}

/// Entropic OT plan between available images and texts (row-major `ni x nt`); rejected pairs
/// get an affinity far below every score so the plan routes their mass elsewhere.
fn ot_plan(
    s: &Matrix,
    ni: usize,
    nt: usize,
    rejected: &dyn Fn(usize, usize) -> bool,
    cfg: &AcquireConfig,
) -> Result<Vec<f32>, AlignError> {
    let lo = s.data.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = s.data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let penalty = lo - 2.0 * (hi - lo).max(1.0);
    let mut k = s.data.clone();
    for a in 0..ni {
        for c in 0..nt {
            if rejected(a, c) {
                k[a * nt + c] = penalty;
            }
        }
    }
    let mut sk = Sinkhorn::new(ni, nt);
    sk.solve(&k, cfg.ot_eps, cfg.ot_iters.max(1))?;
    let mut plan = vec![0.0f32; ni * nt];
    sk.plan_into(&mut plan);
    Ok(plan)
}

/// Each image's few largest plan entries. Key = plan mass x rows (the fraction of the image's
/// mass sent to that text).
fn ot_mass(plan: &[f32], ni: usize, nt: usize) -> Vec<(usize, usize, f64)> {
    // Keep each image's top few texts only: the greedy selection never needs more, and it
    // keeps the sort small on large pools.
    let keep = 4.min(nt);
    let mut out = Vec::with_capacity(ni * keep);
    let mut idx: Vec<usize> = Vec::with_capacity(nt);
    for a in 0..ni {
        let row = &plan[a * nt..(a + 1) * nt];
        idx.clear();
        idx.extend(0..nt);
        idx.select_nth_unstable_by(keep - 1, |&p, &q| row[q].total_cmp(&row[p]));
        for &c in &idx[..keep] {
            out.push((a, c, row[c] as f64 * ni as f64));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    use crate::testing::Identity;

    fn gauss(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Matrix {
        let data = (0..rows * cols)
            .map(|_| StandardNormal.sample(rng))
            .collect();
        Matrix::from_vec(rows, cols, data).unwrap()
    }

    /// Every image's best text is the same one, so the confidence ranking runs out after one
    /// pick and the rest come from the fallback: every priority must stay finite (they are sent
    /// over JSON, where a non-finite number is `null`), the fallbacks' below the ranked one's.
    #[test]
    fn fallback_picks_have_finite_priorities_below_the_ranked_ones() {
        let images = Matrix::from_vec(4, 2, vec![1.0, 0.0, 0.9, 0.1, 0.8, 0.2, 0.7, 0.3]).unwrap();
        let texts = Matrix::from_vec(3, 2, vec![1.0, 0.05, -1.0, 0.0, 0.0, -1.0]).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for strategy in [
            Strategy::Confidence,
            Strategy::Mnn,
            Strategy::Ot,
            Strategy::MnnOt,
        ] {
            let p = propose_embedded(
                &images,
                &texts,
                &Decisions::default(),
                strategy,
                3,
                &AcquireConfig::default(),
                &mut rng,
            )
            .unwrap();
            assert_eq!(p.len(), 3, "{strategy}: {p:?}");
            assert!(p.iter().all(|q| q.key.is_finite()), "{strategy}: {p:?}");
            if matches!(strategy, Strategy::Confidence | Strategy::Mnn) {
                // One ranked pick (text 0), then fallbacks below it.
                assert!(
                    p[1].key < p[0].key && p[2].key < p[0].key,
                    "{strategy}: {p:?}"
                );
            }
        }
    }

    /// Planted: text j is image perm[j] plus noise. Returns (images, texts, truth[image] = text).
    fn planted(n: usize, d: usize, noise: f32, seed: u64) -> (Matrix, Matrix, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = gauss(n, d, &mut rng);
        let mut perm: Vec<usize> = (0..n).collect();
        perm.shuffle(&mut rng);
        let e = gauss(n, d, &mut rng);
        let mut y = Matrix::zeros(n, d);
        let mut truth = vec![0; n];
        for (j, &i) in perm.iter().enumerate() {
            truth[i] = j;
            for k in 0..d {
                y.row_mut(j)[k] = x.row(i)[k] + noise * e.row(j)[k];
            }
        }
        (x, y, truth)
    }

    fn precision(p: &[Proposal], truth: &[usize]) -> f64 {
        p.iter().filter(|q| truth[q.image] == q.text).count() as f64 / p.len().max(1) as f64
    }

    #[test]
    fn model_strategies_find_planted_pairs_random_is_at_chance() {
        let (x, y, truth) = planted(200, 32, 0.6, 1);
        let d = Decisions::default();
        let cfg = AcquireConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for st in [
            Strategy::Confidence,
            Strategy::Mnn,
            Strategy::Ot,
            Strategy::Diverse,
            Strategy::MnnOt,
        ] {
            let p = propose(&Identity, &x, &y, &d, st, 40, &cfg, &mut rng).unwrap();
            assert_eq!(p.len(), 40, "{st}");
            let prec = precision(&p, &truth);
            assert!(prec >= 0.9, "{st}: precision {prec}");
        }
        // Random: expected precision 1/200; 200 proposals would find ~1 correct.
        let p = propose(&Identity, &x, &y, &d, Strategy::Random, 200, &cfg, &mut rng).unwrap();
        assert_eq!(p.len(), 200);
        let hits = p.iter().filter(|q| truth[q.image] == q.text).count();
        assert!(hits <= 6, "random found {hits} correct of 200");
    }

    #[test]
    fn batch_uses_each_item_once_and_skips_confirmed_and_rejected() {
        let (x, y, truth) = planted(60, 16, 0.3, 2);
        let cfg = AcquireConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut d = Decisions::default();
        // Confirm 10 true pairs; reject the true pair of 10 other images.
        for i in 0..10 {
            d.confirm(i, truth[i]);
        }
        for i in 10..20 {
            d.reject(i, truth[i]);
        }
        for st in Strategy::ALL {
            let p = propose(&Identity, &x, &y, &d, st, 50, &cfg, &mut rng).unwrap();
            let imgs: HashSet<_> = p.iter().map(|q| q.image).collect();
            let txts: HashSet<_> = p.iter().map(|q| q.text).collect();
            assert_eq!(imgs.len(), p.len(), "{st}: image repeated");
            assert_eq!(txts.len(), p.len(), "{st}: text repeated");
            for q in &p {
                assert!(q.image >= 10, "{st}: confirmed image {} proposed", q.image);
                assert!(!(0..10).any(|i| truth[i] == q.text), "{st}: confirmed text");
                assert!(
                    !d.rejected.contains(&(q.image, q.text)),
                    "{st}: rejected pair"
                );
            }
            if st != Strategy::Diverse {
                // 50 images and 50 texts are available; the greedy matching can end with one
                // image whose only remaining text is the one it was rejected with.
                assert!(p.len() >= 49, "{st}: {} proposals of 50 available", p.len());
            }
        }
        // The OT plan sends the rejected images' mass elsewhere: it never re-proposes them
        // with their (rejected) true text, even though that is by far their best score.
        let p = propose(&Identity, &x, &y, &d, Strategy::Ot, 50, &cfg, &mut rng).unwrap();
        assert!(
            p.iter()
                .all(|q| !(10..20).contains(&q.image) || truth[q.image] != q.text)
        );
    }

    #[test]
    fn diversity_cap_avoids_near_duplicates() {
        // 30 distinct items plus one item copied 30 times with tiny noise (60 images, 60 texts).
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let d = 24;
        let base = gauss(31, d, &mut rng);
        let mut x = Matrix::zeros(60, d);
        for i in 0..60 {
            let src = if i < 30 { i } else { 30 };
            let e = gauss(1, d, &mut rng);
            for k in 0..d {
                x.row_mut(i)[k] = base.row(src)[k] + 0.01 * e.data[k];
            }
        }
        let y = x.clone();
        let cluster = |i: usize| i >= 30;
        let cfg = AcquireConfig::default();
        let none = Decisions::default();
        // Random ignores the model: about half its 30 proposals land in the duplicate cluster.
        let p = propose(
            &Identity,
            &x,
            &y,
            &none,
            Strategy::Random,
            30,
            &cfg,
            &mut rng,
        )
        .unwrap();
        let dup_random = p.iter().filter(|q| cluster(q.image)).count();
        assert!(
            dup_random >= 8,
            "random proposed only {dup_random} duplicates"
        );
        // Diverse spends at most one proposal on the cluster, and fills the rest with distinct
        // items.
        let p = propose(
            &Identity,
            &x,
            &y,
            &none,
            Strategy::Diverse,
            30,
            &cfg,
            &mut rng,
        )
        .unwrap();
        let dup = p.iter().filter(|q| cluster(q.image)).count();
        assert!(dup <= 1, "diverse proposed {dup} duplicates");
        assert!(p.len() >= 30, "diverse ran short: {}", p.len());
        // A confirmed cluster member blocks the whole cluster.
        let mut conf = Decisions::default();
        conf.confirm(30, 30);
        let p = propose(
            &Identity,
            &x,
            &y,
            &conf,
            Strategy::Diverse,
            40,
            &cfg,
            &mut rng,
        )
        .unwrap();
        assert!(p.iter().all(|q| !cluster(q.image)));
    }

    #[test]
    fn mnn_ot_ranks_mutual_pairs_first_by_plan_mass() {
        // Heavy noise: some true pairs are mutual nearest neighbours, some are not.
        let (x, y, _) = planted(80, 16, 1.2, 7);
        let cfg = AcquireConfig::default();
        let d = Decisions::default();
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let p = propose(&Identity, &x, &y, &d, Strategy::MnnOt, 80, &cfg, &mut rng).unwrap();
        let n_mutual = p.iter().take_while(|q| q.mutual_nn).count();
        assert!(
            n_mutual > 0 && n_mutual < p.len(),
            "{n_mutual} of {}",
            p.len()
        );
        // Mutual pairs form a prefix, and within it the plan mass never increases.
        assert!(p[n_mutual..].iter().all(|q| !q.mutual_nn));
        assert!(
            p[..n_mutual]
                .windows(2)
                .all(|w| w[0].ot_mass.unwrap() >= w[1].ot_mass.unwrap())
        );
        // The flag is independent of the strategy: the same pairs are mutual under `mnn`.
        let m = propose(&Identity, &x, &y, &d, Strategy::Mnn, 80, &cfg, &mut rng).unwrap();
        let mutual_mnn: HashSet<_> = m
            .iter()
            .filter(|q| q.mutual_nn)
            .map(|q| (q.image, q.text))
            .collect();
        let mutual_ot: HashSet<_> = p[..n_mutual].iter().map(|q| (q.image, q.text)).collect();
        assert_eq!(mutual_mnn, mutual_ot);
        // Shared-space entry point: identical answers on rows already mapped by the model.
        let (ex, ey) = (Identity.embed_x(&x).unwrap(), Identity.embed_y(&y).unwrap());
        let e = propose_embedded(&ex, &ey, &d, Strategy::MnnOt, 80, &cfg, &mut rng).unwrap();
        assert_eq!(e, p);
    }

    #[test]
    fn bad_input_is_typed() {
        let (x, y, _) = planted(10, 4, 0.1, 6);
        let mut d = Decisions::default();
        d.reject(10, 0);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let cfg = AcquireConfig::default();
        assert!(matches!(
            propose(&Identity, &x, &y, &d, Strategy::Ot, 3, &cfg, &mut rng),
            Err(AlignError::InvalidConfig(_))
        ));
        assert!("thompson".parse::<Strategy>().is_err());
        assert_eq!("MNN".parse::<Strategy>().unwrap(), Strategy::Mnn);
    }
}
