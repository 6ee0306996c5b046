//! Pair audit: which of the known pairs look wrong (a caption that belongs to another image, an
//! alt-text that describes nothing), and what the model would pair each one with instead.
//!
//! Cross-fitted so that a pair never vouches for itself: the pairs are split into `folds`
//! folds, and each fold's pairs are scored by a model fitted on the other folds only. A pair's
//! score is then compared with the alternatives the same model sees: every other candidate
//! caption for its image (row) and every other candidate image for its caption (column).
//!
//! Suspicion of pair i (larger = more suspicious), with `S` the fold model's score matrix over
//! all candidate images x all candidate texts, hub-corrected as in CSLS (Lample et al. 2018:
//! `S'(x, t) = 2 S(x, t) - r(x) - r(t)`, r = mean of the `hub_k` best scores of an item), is
//! the mean of the two margins `max_t S'(x_i, t) - S'(x_i, y_i)` and
//! `max_x S'(x, y_i) - S'(x_i, y_i)`, the maxima over competitors only (a caption in the same
//! caption group as `y_i`, or the image of a pair whose caption is in that group, is an equally
//! valid partner, not a competitor). The hub correction matters because some captions ("a
//! star") score well against everything and some images against nothing.
//!
//! Trimming (`rounds > 1`): a wrong pair in the training folds pulls the model towards itself,
//! so after the first round the `trim` share of pairs with the highest suspicion is left out of
//! the training folds of the next round (a pair is still never in the model that scores it).
//!
//! Invariants: pure computation (no IO); every fitted model is a closed-form or trained
//! `methods::fit`, so any method can be the scorer; the cost is `folds x rounds` fits plus one
//! (images x texts) score matrix per fit, and the result keeps two pairs x pairs f32 matrices
//! (margins and scores, for swaps), so callers bound the pairs and the candidate pools.
use std::collections::HashSet;
use std::ops::ControlFlow;

use faer::Mat;
use rand::SeedableRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;

use crate::csa::Csa;
use crate::linalg::{self, to_faer};
use crate::methods::{Method, Progress, fit};
use crate::teacher::CcaTeacher;
use crate::{AlignConfig, AlignData, AlignError, Aligned, Matrix};

/// Settings of an audit.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    /// Number of folds (clamped to the number of pairs); each fold is scored by a model fitted
    /// on the others.
    pub folds: usize,
    /// Scoring rounds; round r > 1 leaves the previous round's most suspicious pairs out of the
    /// training folds.
    pub rounds: usize,
    /// Share of pairs (0..1) left out of training after each round.
    pub trim: f64,
    /// Neighbours averaged for the hub correction (0 = no correction: raw score margins).
    pub hub_k: usize,
    /// Seed of the fold assignment.
    pub seed: u64,
    /// Component caps tried for the CCA-family scorers (`cca`, `csa`; `None` = every kept
    /// component). The cap whose cross-fitted models rank the pairs' own partners best is
    /// used ([`select_components`]); empty = the method's configured cap. Other methods
    /// ignore it.
    pub component_grid: Vec<Option<usize>>,
}

/// The default component caps: from a handful of directions to all of them.
pub const COMPONENT_GRID: [Option<usize>; 5] = [Some(16), Some(32), Some(64), Some(128), None];

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            folds: 5,
            rounds: 2,
            trim: 0.1,
            hub_k: 10,
            seed: 0,
            component_grid: COMPONENT_GRID.to_vec(),
        }
    }
}

impl AuditConfig {
    pub fn validate(&self) -> Result<(), AlignError> {
        if self.folds < 2 {
            return Err(AlignError::InvalidConfig(format!(
                "audit.folds must be >= 2 (got {})",
                self.folds
            )));
        }
        if self.rounds < 1 || self.rounds > 10 {
            return Err(AlignError::InvalidConfig(format!(
                "audit.rounds must be in 1..=10 (got {})",
                self.rounds
            )));
        }
        if !(0.0..0.5).contains(&self.trim) {
            return Err(AlignError::InvalidConfig(format!(
                "audit.trim must be in [0, 0.5) (got {})",
                self.trim
            )));
        }
        if self.component_grid.contains(&Some(0)) {
            return Err(AlignError::InvalidConfig(
                "audit.component_grid: a component cap must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// A candidate partner: one of the pairs' items or one of the unpaired pool's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partner {
    /// The image / caption of pair `i` (row i of `xp` / `yp`).
    Pair(usize),
    /// Row `i` of the unpaired pool (`xu` / `yu`).
    Unpaired(usize),
}

/// The audit of one pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PairAudit {
    /// Row of the pair in `AlignData::xp` / `yp`.
    pub pair: usize,
    /// Larger = more suspicious: the hub-corrected score margin; > 0 means some alternative
    /// beats the pair's own partner on average over both directions.
    pub suspicion: f64,
    /// The pair with the best swap gain ([`Audit::swap_gain`]) and that gain.
    pub swap: Option<(usize, f64)>,
    /// The pair's own score under the model that did not see it (raw dot product).
    pub score: f64,
    /// The best competing caption for the pair's image, and its raw score.
    pub alt_text: Option<(Partner, f64)>,
    /// The best competing image for the pair's caption, and its raw score.
    pub alt_image: Option<(Partner, f64)>,
}

/// The result of an audit: one entry per pair, plus what flagging and re-pairing need.
#[derive(Debug, Clone)]
pub struct Audit {
    /// One entry per pair, in pair order.
    pub pairs: Vec<PairAudit>,
    /// Suspicion of one decoy per pair (a pair's image with a random other pair's caption,
    /// scored like a pair by the same fold model): what a wrong pair's suspicion looks like on
    /// this data. Sorted ascending.
    decoys: Vec<f64>,
    /// `margins[i * n + j]`: hub-corrected score of pair j's caption minus that of pair i's own
    /// caption, for pair i's image, under the model that did not see pair i.
    margins: Vec<f32>,
    /// `scores[i * n + j]`: raw score of pair j's caption for pair i's image, same model.
    scores: Vec<f32>,
    /// Caption group of each pair.
    groups: Vec<u64>,
    /// The component cap the scorer ran with, when the audit chose one
    /// ([`AuditConfig::component_grid`]); `None` inside means every kept component.
    pub components: Option<Option<usize>>,
}

/// Quantile of the decoys' suspicions at which pairs are flagged ([`Audit::flag_threshold`]).
pub const FLAG_DECOY_QUANTILE: f64 = 0.2;

impl Audit {
    /// Gain of swapping the captions of pairs i and j: `m_i(y_j) + m_j(y_i)`, each term under
    /// the model that did not see the pair whose image it scores. > 0: the swapped pairing
    /// scores better than the one on record for both images at once. None for i == j, equal
    /// caption groups or an index out of range.
    pub fn swap_gain(&self, i: usize, j: usize) -> Option<f64> {
        let n = self.pairs.len();
        if i == j || i >= n || j >= n || self.groups[i] == self.groups[j] {
            return None;
        }
        Some(f64::from(self.margins[i * n + j] + self.margins[j * n + i]))
    }

    /// Raw score of pair j's caption for pair i's image under the model that did not see
    /// pair i.
    pub fn pair_text_score(&self, i: usize, j: usize) -> Option<f64> {
        let n = self.pairs.len();
        (i < n && j < n).then(|| f64::from(self.scores[i * n + j]))
    }

    /// The suspicion at and above which a pair is flagged (an editor warning, the head of an
    /// audit queue): the [`FLAG_DECOY_QUANTILE`] quantile of the decoys, i.e. a pair is flagged
    /// when it looks more wrong than the least suspicious fifth of random mis-pairings scored
    /// the same way on the same data (real wrong pairs score below random ones: a wrong pair
    /// in the training folds pulls the model towards itself, so the cut is set low), and never
    /// at or below 0 (no alternative beats its own partner).
    /// Calibrated per audit because the scale of the margins depends on the method, the
    /// encoders and the number of pairs: a weak model, under which most clean pairs are beaten
    /// by some competitor, must not flag everything. What it costs in precision and recall is
    /// measured by `sotalign audit-sim` (docs/CURATION.md). None for an empty audit.
    pub fn flag_threshold(&self) -> Option<f64> {
        if self.decoys.is_empty() {
            return None;
        }
        let k = ((self.decoys.len() - 1) as f64 * FLAG_DECOY_QUANTILE).round() as usize;
        Some(self.decoys[k].max(f64::MIN_POSITIVE))
    }

    /// Which pairs are flagged ([`Self::flag_threshold`]), in pair order.
    pub fn flagged(&self) -> Vec<bool> {
        let t = self.flag_threshold();
        self.pairs
            .iter()
            .map(|p| t.is_some_and(|t| p.suspicion >= t))
            .collect()
    }

    /// The caption to suggest for pair i's image. A wrong caption usually belongs to another
    /// wrong pair, so: the flagged pair whose swap gains most (when the gain is > 0), else the
    /// best swap with any pair (gain > 0), else the best competing caption. A swap uses two
    /// images' evidence where the best competitor uses one.
    pub fn suggested_text(&self, i: usize, flagged: &[bool]) -> Option<Partner> {
        let best = |among: &dyn Fn(usize) -> bool| {
            (0..self.pairs.len())
                .filter(|&j| among(j))
                .filter_map(|j| Some((j, self.swap_gain(i, j)?)))
                .filter(|&(_, g)| g > 0.0)
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(j, _)| Partner::Pair(j))
        };
        best(&|j| flagged.get(j).copied().unwrap_or(false))
            .or_else(|| best(&|_| true))
            .or_else(|| self.pairs.get(i)?.alt_text.map(|t| t.0))
    }
}

/// Audit every pair of `data` with `method` as the scorer. Candidates are the pairs' items plus
/// the unpaired pools. The callback sees one step per fit and may cancel (`Break` ->
/// [`AlignError::Cancelled`]).
pub fn audit(
    method: Method,
    data: &AlignData,
    cfg: &AlignConfig,
    acfg: &AuditConfig,
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<Audit, AlignError> {
    acfg.validate()?;
    data.validate()?;
    let n = data.n_pairs();
    if n < 4 {
        return Err(AlignError::NotEnoughData(format!(
            "{n} pairs: an audit needs at least 4 (each fold's model is fitted on the others)"
        )));
    }
    let k = acfg.folds.min(n);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(acfg.seed));
    let mut fold_of = vec![0usize; n];
    for (pos, &i) in order.iter().enumerate() {
        fold_of[i] = pos % k;
    }
    let images = stack(&data.xp, &data.xu);
    let texts = stack(&data.yp, &data.yu);
    let groups = Groups::new(data);
    let grid: &[Option<usize>] = match method {
        Method::Cca | Method::Csa if acfg.component_grid.len() > 1 => &acfg.component_grid,
        _ => &[],
    };
    // Selection fits each fold once (all caps from one fit); round 1 reuses the chosen cap's.
    let total = k * acfg.rounds + if grid.is_empty() { 0 } else { k };
    let mut step = 0;
    let folds = Folds {
        fold_of: &fold_of,
        k,
    };
    let components = if grid.is_empty() {
        None
    } else {
        let mut tick = |stage: &str| {
            step += 1;
            progress(&Progress {
                phase: crate::progress::Phase::Fit,
                stage: stage.to_string(),
                step,
                total,
                loss: None,
            })
            .is_break()
        };
        Some(select_components(
            method, data, cfg, &folds, grid, &images, &texts, &groups, &mut tick,
        )?)
    };
    let (components, mut reuse) = match components {
        Some((cap, teachers)) => (
            Some(cap),
            teachers.into_iter().map(Some).collect::<Vec<_>>(),
        ),
        None => (None, Vec::new()),
    };
    let chosen;
    let cfg = match components {
        Some(cap) => {
            let mut c = cfg.clone();
            c.teacher.max_components = cap;
            chosen = c;
            &chosen
        }
        None => cfg,
    };
    let mut result: Vec<Option<PairAudit>> = vec![None; n];
    let mut trimmed: HashSet<usize> = HashSet::new();
    // margins[i * n + j]: caption of pair j against pair i's own caption, for pair i's image,
    // under the model that did not see pair i (f32: n x n values).
    let mut margins = vec![0f32; n * n];
    let mut pair_scores = vec![0f32; n * n];
    let mut decoys = Vec::with_capacity(n);
    let mut decoy_rng = ChaCha8Rng::seed_from_u64(acfg.seed ^ 0xdec0);
    for round in 0..acfg.rounds {
        let last = round + 1 == acfg.rounds;
        for f in 0..k {
            let train: Vec<usize> = (0..n)
                .filter(|&i| fold_of[i] != f && !trimmed.contains(&i))
                .collect();
            // Round 1 trains on every pair outside the fold, as the selection did.
            let reused = if round == 0 {
                reuse.get_mut(f).and_then(Option::take)
            } else {
                None
            };
            let model = match reused {
                Some(teacher) => capped(method, &teacher, components.flatten(), cfg)?,
                None => {
                    let sub = subset(data, &train);
                    let mut quiet = |_: &Progress| ControlFlow::Continue(());
                    fit(method, &sub, cfg, &mut quiet)?
                }
            };
            step += 1;
            if progress(&Progress {
                phase: crate::progress::Phase::Fit,
                stage: format!("audit round {}", round + 1),
                step,
                total,
                loss: None,
            })
            .is_break()
            {
                return Err(AlignError::Cancelled);
            }
            let ex = model.embed_x_f64(&images)?;
            let ey = model.embed_y_f64(&texts)?;
            let s = &ex * ey.transpose();
            let adj = hub_corrected(&s, acfg.hub_k);
            for i in (0..n).filter(|&i| fold_of[i] == f) {
                result[i] = Some(score_pair(i, n, &s, &adj, &groups));
                let own = adj[(i, i)];
                for j in 0..n {
                    margins[i * n + j] = (adj[(i, j)] - own) as f32;
                    pair_scores[i * n + j] = s[(i, j)] as f32;
                }
                if last {
                    // A decoy: this image with a random other pair's caption (another group).
                    let others: Vec<usize> = (0..n)
                        .filter(|&j| groups.pair[j] != groups.pair[i])
                        .collect();
                    if let Some(&j) = others.choose(&mut decoy_rng) {
                        decoys.push(margins_of(i, j, Some(j), &adj, &groups).0);
                    }
                }
            }
        }
        if round + 1 < acfg.rounds {
            let mut by: Vec<(usize, f64)> = result
                .iter()
                .flatten()
                .map(|a| (a.pair, a.suspicion))
                .collect();
            by.sort_by(|a, b| b.1.total_cmp(&a.1));
            let m = ((acfg.trim * n as f64).round() as usize).min(n.saturating_sub(k * 2));
            trimmed = by.iter().take(m).map(|p| p.0).collect();
        }
    }
    result
        .into_iter()
        .map(|a| a.ok_or_else(|| AlignError::Numerical("a pair was not scored".into())))
        .collect::<Result<Vec<_>, _>>()
        .map(|pairs| {
            let mut a = Audit {
                pairs,
                decoys,
                margins,
                scores: pair_scores,
                groups: groups.pair.clone(),
                components,
            };
            a.decoys.sort_by(f64::total_cmp);
            for i in 0..n {
                a.pairs[i].swap = (0..n)
                    .filter_map(|j| Some((j, a.swap_gain(i, j)?)))
                    .max_by(|x, y| x.1.total_cmp(&y.1));
            }
            a
        })
}

/// The fold assignment of an audit.
struct Folds<'a> {
    fold_of: &'a [usize],
    k: usize,
}

/// Choose the component cap of a CCA-family scorer: for each cap in `grid`, every fold's pairs
/// are scored by the model fitted on the other folds, and the cap under which the pairs' own
/// partners rank highest is kept: the mean over pairs and both directions of the share of
/// competitors scoring below the own partner (caption among the candidate texts for the image,
/// image among the candidate images for the caption; competitors as in the margins), the first
/// in grid order on a tie. (The mean reciprocal rank, tried first, favours many directions:
/// it rewards the few pairs ranked first, where the audit needs the whole ranking.) The pairs are taken as recorded, wrong ones
/// included: the choice needs no label, and a share of wrong pairs lowers every cap's score
/// alike. Why: with all kept components (up to n - 1) the weak, noisy directions drown the
/// strong ones and the audit ranks clean pairs of rare content as suspicious; how many
/// directions carry signal depends on the encoders and the number of pairs, so it is
/// measured per audit rather than fixed. `tick` reports one step per cap and fold, and
/// cancels on true.
#[allow(clippy::too_many_arguments)]
fn select_components(
    method: Method,
    data: &AlignData,
    cfg: &AlignConfig,
    folds: &Folds,
    grid: &[Option<usize>],
    images: &Matrix,
    texts: &Matrix,
    groups: &Groups,
    tick: &mut dyn FnMut(&str) -> bool,
) -> Result<(Option<usize>, Vec<CcaTeacher>), AlignError> {
    let n = data.n_pairs();
    let mut total_share = vec![0.0; grid.len()];
    let mut teachers = Vec::with_capacity(folds.k);
    for f in 0..folds.k {
        let train: Vec<usize> = (0..n).filter(|&i| folds.fold_of[i] != f).collect();
        let teacher = fit_uncapped(data, &train, cfg)?;
        if tick("audit: choosing components") {
            return Err(AlignError::Cancelled);
        }
        for (c, &cap) in grid.iter().enumerate() {
            let model = capped(method, &teacher, cap, cfg)?;
            let s = &model.embed_x_f64(images)? * model.embed_y_f64(texts)?.transpose();
            for i in (0..n).filter(|&i| folds.fold_of[i] == f) {
                let own = s[(i, i)];
                let group = groups.text[i];
                let share_below = |it: &mut dyn Iterator<Item = f64>| {
                    let (mut below, mut all) = (0usize, 0usize);
                    for v in it {
                        all += 1;
                        below += usize::from(v < own);
                    }
                    if all == 0 {
                        1.0
                    } else {
                        below as f64 / all as f64
                    }
                };
                let t = share_below(&mut groups.text_competitors(group).map(|t| s[(i, t)]));
                let x = share_below(
                    &mut groups
                        .image_competitors(i, group, None, s.nrows())
                        .map(|x| s[(x, i)]),
                );
                total_share[c] += 0.5 * (t + x);
            }
        }
        teachers.push(teacher);
    }
    // The first cap with the highest mean share (earlier caps win ties).
    let mut best = 0;
    for c in 1..grid.len() {
        if total_share[c] > total_share[best] {
            best = c;
        }
    }
    Ok((grid[best], teachers))
}

/// The uncapped CCA of the pairs `train`: every cap's fold model is a prefix of its directions
/// ([`CcaTeacher::truncated`], what a fit with that cap computes), so a fold is fitted once for
/// the whole grid, and only this one model per fold is kept.
fn fit_uncapped(
    data: &AlignData,
    train: &[usize],
    cfg: &AlignConfig,
) -> Result<CcaTeacher, AlignError> {
    let mut uncapped = cfg.teacher.clone();
    uncapped.max_components = None;
    CcaTeacher::fit(&subset(data, train), &uncapped)
}

/// The `cca` or `csa` model keeping the first `cap` directions of `teacher`.
fn capped(
    method: Method,
    teacher: &CcaTeacher,
    cap: Option<usize>,
    cfg: &AlignConfig,
) -> Result<Box<dyn Aligned>, AlignError> {
    let t = teacher.truncated(cap);
    match method {
        Method::Cca => Ok(Box::new(t)),
        Method::Csa => Ok(Box::new(Csa::from_teacher(t, cfg.csa.s)?)),
        other => Err(AlignError::InvalidConfig(format!(
            "audit: component caps apply to cca and csa, not {}",
            other.name()
        ))),
    }
}

/// Pairs sorted most suspicious first (ties by pair index, so the order is deterministic).
pub fn most_suspicious(mut audits: Vec<PairAudit>) -> Vec<PairAudit> {
    audits.sort_by(|a, b| {
        b.suspicion
            .total_cmp(&a.suspicion)
            .then(a.pair.cmp(&b.pair))
    });
    audits
}

/// The no-alignment baseline: a ridge linear map from image to text features fitted on all
/// pairs (wrong ones included, nothing cross-fitted), suspicion = minus the cosine between a
/// pair's mapped image and its caption (both centred on the pairs' means). Ridge = 0.1 x the
/// mean eigenvalue of the images' Gram matrix, solved in the dual (n x n).
pub fn linear_baseline(data: &AlignData) -> Result<Vec<f64>, AlignError> {
    data.validate()?;
    let n = data.n_pairs();
    let mut x = to_faer(&data.xp);
    let mut y = to_faer(&data.yp);
    let mx = linalg::col_means(x.as_ref());
    let my = linalg::col_means(y.as_ref());
    linalg::centre(&mut x, &mx);
    linalg::centre(&mut y, &my);
    let gram = &x * x.transpose();
    let lambda = (0.1 * linalg::trace(gram.as_ref()) / n as f64).max(1e-12);
    let inv = linalg::sym_apply(gram.as_ref(), "linear baseline Gram matrix", |w| {
        1.0 / (w.max(0.0) + lambda)
    })?;
    let pred = &gram * (&inv * &y);
    Ok((0..n)
        .map(|i| {
            let (mut dot, mut a, mut b) = (0.0, 0.0, 0.0);
            for j in 0..y.ncols() {
                dot += pred[(i, j)] * y[(i, j)];
                a += pred[(i, j)] * pred[(i, j)];
                b += y[(i, j)] * y[(i, j)];
            }
            let den = (a * b).sqrt();
            if den > 0.0 { -dot / den } else { 0.0 }
        })
        .collect())
}

/// Area under the ROC curve of `scores` for separating `positive` items (larger score = more
/// likely positive), ties counted half (the Mann-Whitney statistic). None when either class is
/// empty.
pub fn auroc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len().min(positive.len())).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut pos) = (0.0, 0usize);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their mean.
        let mid = (i + j + 2) as f64 / 2.0;
        for &t in &idx[i..=j] {
            if positive[t] {
                rank_sum += mid;
                pos += 1;
            }
        }
        i = j + 1;
    }
    let neg = idx.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let u = rank_sum - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos * neg) as f64)
}

/// Share of positives among the `k` highest scores (k = number of positives by default in
/// callers: precision at the number of corrupted pairs). Ties broken by index.
pub fn precision_at(scores: &[f64], positive: &[bool], k: usize) -> Option<f64> {
    if k == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len().min(positive.len())).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let hits = idx.iter().take(k).filter(|&&i| positive[i]).count();
    Some(hits as f64 / k.min(idx.len()).max(1) as f64)
}

/// Caption groups of every candidate text and of every candidate image's known caption.
struct Groups {
    /// Group of each candidate text (pairs first, then unpaired); unpaired texts without a known
    /// group get a fresh one each.
    text: Vec<u64>,
    /// Group of each pair's caption (the images of pairs); unpaired images have none.
    pair: Vec<u64>,
}

impl Groups {
    fn new(d: &AlignData) -> Self {
        let pair: Vec<u64> = d.pair_groups.iter().map(|&g| g as u64).collect();
        let mut text = pair.clone();
        match &d.yu_groups {
            Some(g) => text.extend(g.iter().map(|&g| g as u64)),
            None => text.extend((0..d.yu.rows as u64).map(|u| (1u64 << 40) + u)),
        }
        Self { text, pair }
    }

    /// The candidate texts that compete with a caption of `group`: those of other groups (an
    /// equal caption is an equally valid partner, not a competitor).
    fn text_competitors(&self, group: u64) -> impl Iterator<Item = usize> + '_ {
        (0..self.text.len()).filter(move |&t| self.text[t] != group)
    }

    /// The candidate images (pairs first, then unpaired; `images` in all) that compete with
    /// image `img` for a caption of `group`: every other image except those paired with a
    /// caption of that group, but `keep` always competes (a decoy's caption's true image, which
    /// a real wrong pair would face).
    fn image_competitors(
        &self,
        img: usize,
        group: u64,
        keep: Option<usize>,
        images: usize,
    ) -> impl Iterator<Item = usize> + '_ {
        let n = self.pair.len();
        (0..images)
            .filter(move |&x| x != img && (x >= n || self.pair[x] != group || Some(x) == keep))
    }
}

/// The two-way margin of image `img` with caption `text` (caption group `group`): competitors
/// are the texts of other groups and the images not paired with that group (but `keep`, an
/// image that must compete although its pair has that group: a decoy's caption's true image,
/// which a real wrong pair would face as a competitor). Returns (margin, best text, best image).
fn margins_of(
    img: usize,
    text: usize,
    keep: Option<usize>,
    adj: &Mat<f64>,
    g: &Groups,
) -> (f64, Option<(usize, f64)>, Option<(usize, f64)>) {
    let group = g.text[text];
    let own = adj[(img, text)];
    let best = |it: &mut dyn Iterator<Item = (usize, f64)>| {
        it.fold(None, |b: Option<(usize, f64)>, (k, v)| {
            if b.is_none_or(|(_, bv)| v > bv) {
                Some((k, v))
            } else {
                b
            }
        })
    };
    let best_t = best(&mut g.text_competitors(group).map(|t| (t, adj[(img, t)])));
    let best_x = best(
        &mut g
            .image_competitors(img, group, keep, adj.nrows())
            .map(|x| (x, adj[(x, text)])),
    );
    let margins: Vec<f64> = [best_t, best_x]
        .into_iter()
        .flatten()
        .map(|(_, v)| v - own)
        .collect();
    let margin = if margins.is_empty() {
        0.0
    } else {
        margins.iter().sum::<f64>() / margins.len() as f64
    };
    (margin, best_t, best_x)
}

fn score_pair(i: usize, n: usize, s: &Mat<f64>, adj: &Mat<f64>, g: &Groups) -> PairAudit {
    let (suspicion, best_t, best_x) = margins_of(i, i, None, adj, g);
    let partner = |j: usize| {
        if j < n {
            Partner::Pair(j)
        } else {
            Partner::Unpaired(j - n)
        }
    };
    PairAudit {
        pair: i,
        suspicion,
        swap: None,
        score: s[(i, i)],
        alt_text: best_t.map(|(t, _)| (partner(t), s[(i, t)])),
        alt_image: best_x.map(|(x, _)| (partner(x), s[(x, i)])),
    }
}

/// CSLS hub correction: `2 S - r_row - r_col`, r = mean of an item's `k` best scores
/// (k clamped to the other side's size); k = 0 returns `S` unchanged.
fn hub_corrected(s: &Mat<f64>, k: usize) -> Mat<f64> {
    if k == 0 {
        return s.clone();
    }
    let (r, c) = (s.nrows(), s.ncols());
    let top_mean = |vals: &mut Vec<f64>| {
        let kk = k.min(vals.len()).max(1);
        vals.sort_by(|a, b| b.total_cmp(a));
        vals.iter().take(kk).sum::<f64>() / kk as f64
    };
    let mut buf = Vec::with_capacity(r.max(c));
    let rr: Vec<f64> = (0..r)
        .map(|i| {
            buf.clear();
            buf.extend((0..c).map(|j| s[(i, j)]));
            top_mean(&mut buf)
        })
        .collect();
    let rc: Vec<f64> = (0..c)
        .map(|j| {
            buf.clear();
            buf.extend((0..r).map(|i| s[(i, j)]));
            top_mean(&mut buf)
        })
        .collect();
    Mat::from_fn(r, c, |i, j| 2.0 * s[(i, j)] - rr[i] - rc[j])
}

/// Rows of `a` then rows of `b` (b may be empty).
fn stack(a: &Matrix, b: &Matrix) -> Matrix {
    let mut data = a.data.clone();
    if b.rows > 0 {
        data.extend_from_slice(&b.data);
    }
    Matrix {
        rows: a.rows + b.rows,
        cols: a.cols,
        data,
    }
}

/// The training data of one fold: the chosen pairs, the unpaired pools unchanged.
fn subset(d: &AlignData, rows: &[usize]) -> AlignData {
    AlignData {
        xp: d.xp.select_rows(rows),
        yp: d.yp.select_rows(rows),
        xu: d.xu.clone(),
        yu: d.yu.clone(),
        pair_groups: rows.iter().map(|&i| d.pair_groups[i]).collect(),
        yu_groups: d.yu_groups.clone(),
        // Rejected pairs are not pairs of any fold: every fold keeps them.
        negatives: d.negatives.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::ignore;
    use crate::testing::small_platonic;

    /// 60 platonic pairs with the captions of pairs (2k, 2k+1) swapped for k < 3.
    fn planted() -> (AlignData, Vec<bool>) {
        let p = small_platonic(3);
        let (x, y) = p.pairs(60, &mut ChaCha8Rng::seed_from_u64(11));
        let mut rows: Vec<usize> = (0..60).collect();
        let mut wrong = vec![false; 60];
        for k in [0usize, 10, 20] {
            rows.swap(k, k + 1);
            wrong[k] = true;
            wrong[k + 1] = true;
        }
        let yp = y.select_rows(&rows);
        (AlignData::from_pairs(x, yp), wrong)
    }

    #[test]
    fn planted_swaps_rank_first_with_their_partner_as_alternative() {
        let (data, wrong) = planted();
        let cfg = AlignConfig::default();
        for m in [Method::Cca, Method::Procrustes] {
            let full = audit(m, &data, &cfg, &AuditConfig::default(), &mut ignore).unwrap();
            let a = &full.pairs;
            let s: Vec<f64> = a.iter().map(|p| p.suspicion).collect();
            assert_eq!(precision_at(&s, &wrong, 6), Some(1.0), "{m}: {s:?}");
            // Image 0 carries caption 1: its best alternative is pair 1's caption (its own).
            assert_eq!(a[0].alt_text.map(|t| t.0), Some(Partner::Pair(1)), "{m}");
            assert_eq!(a[1].alt_image.map(|t| t.0), Some(Partner::Pair(0)), "{m}");
            // The swap that undoes a planted one gains; the flags are the six planted pairs
            // (the decoys calibrate the cut), and the fix of each is its swap partner.
            assert!(full.swap_gain(0, 1).unwrap() > 0.0, "{m}");
            assert_eq!(full.swap_gain(0, 0), None);
            let flags = full.flagged();
            assert_eq!(flags, wrong, "{m}: {s:?} cut {:?}", full.flag_threshold());
            for k in [0usize, 10, 20] {
                assert_eq!(full.suggested_text(k, &flags), Some(Partner::Pair(k + 1)));
                assert_eq!(full.suggested_text(k + 1, &flags), Some(Partner::Pair(k)));
            }
            assert_eq!(
                most_suspicious(a.clone())[0].suspicion,
                s.iter().cloned().fold(f64::MIN, f64::max)
            );
        }
    }

    #[test]
    fn a_pair_never_vouches_for_itself() {
        // Pair 0 is planted wrong and unique; scoring it with a model that saw it would make it
        // look fine. With one fold per pair group the audit still flags it.
        let (data, wrong) = planted();
        let one = AuditConfig {
            rounds: 1,
            ..AuditConfig::default()
        };
        let a = audit(
            Method::Cca,
            &data,
            &AlignConfig::default(),
            &one,
            &mut ignore,
        )
        .unwrap()
        .pairs;
        let s: Vec<f64> = a.iter().map(|p| p.suspicion).collect();
        assert!(auroc(&s, &wrong).unwrap() > 0.95);
        // The in-sample score of the same pair is what the cross-fitting avoids: a model fitted
        // on all pairs scores wrong pairs better than a model that never saw them.
        let full = crate::methods::fit_quiet(Method::Cca, &data, &AlignConfig::default()).unwrap();
        let sf = full.score_f64(&data.xp, &data.yp).unwrap();
        let wrong_ids: Vec<usize> = (0..60).filter(|&i| wrong[i]).collect();
        let mean = |f: &dyn Fn(usize) -> f64| wrong_ids.iter().map(|&i| f(i)).sum::<f64>() / 6.0;
        let (inside, crossed) = (mean(&|i| sf[(i, i)]), mean(&|i| a[i].score));
        assert!(
            inside > crossed,
            "wrong pairs: in-sample {inside} vs cross-fitted {crossed}"
        );
    }

    /// 120 pairs whose cross-modal signal lives in 4 directions, buried among 60 / 40 noise
    /// dimensions per side; 12 pairs swapped.
    fn low_rank_signal() -> (AlignData, Vec<bool>) {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let n = 120;
        let (dx, dy, l) = (64, 44, 4);
        let mut x = Matrix::zeros(n, dx);
        let mut y = Matrix::zeros(n, dy);
        for i in 0..n {
            for c in 0..l {
                let z: f32 = rng.random_range(-1.0..1.0);
                x.row_mut(i)[c] = 3.0 * z;
                y.row_mut(i)[l - 1 - c] = 3.0 * z;
            }
            for v in &mut x.row_mut(i)[l..] {
                *v = rng.random_range(-1.0..1.0);
            }
            for v in &mut y.row_mut(i)[l..] {
                *v = rng.random_range(-1.0..1.0);
            }
        }
        let mut rows: Vec<usize> = (0..n).collect();
        let mut wrong = vec![false; n];
        for k in (0..12).map(|k| k * 10) {
            rows.swap(k, k + 1);
            wrong[k] = true;
            wrong[k + 1] = true;
        }
        (AlignData::from_pairs(x, y.select_rows(&rows)), wrong)
    }

    #[test]
    fn the_component_cap_is_chosen_from_the_pairs_and_beats_every_component() {
        let (data, wrong) = low_rank_signal();
        let cfg = AlignConfig::default();
        let chosen = audit(
            Method::Cca,
            &data,
            &cfg,
            &AuditConfig::default(),
            &mut ignore,
        )
        .unwrap();
        // Every kept component (up to 43 here) lets the 40 noise directions drown the 4 that
        // carry the signal; the smallest cap in the grid is the one the pairs point at.
        assert_eq!(chosen.components, Some(Some(16)));
        let configured = AuditConfig {
            component_grid: Vec::new(),
            ..AuditConfig::default()
        };
        let all = audit(Method::Cca, &data, &cfg, &configured, &mut ignore).unwrap();
        assert_eq!(all.components, None);
        let auc = |a: &Audit| {
            let s: Vec<f64> = a.pairs.iter().map(|p| p.suspicion).collect();
            auroc(&s, &wrong).unwrap()
        };
        assert!(
            auc(&chosen) > auc(&all) + 0.02,
            "chosen {} vs all {}",
            auc(&chosen),
            auc(&all)
        );
        // Methods without components ignore the grid.
        let p = audit(
            Method::Procrustes,
            &data,
            &cfg,
            &AuditConfig::default(),
            &mut ignore,
        );
        assert_eq!(p.unwrap().components, None);
    }

    #[test]
    fn same_caption_group_is_not_a_competitor() {
        let (mut data, _) = planted();
        // Pairs 30 and 31 share a caption group: each other's image/caption is no alternative.
        data.pair_groups[31] = data.pair_groups[30];
        let a = audit(
            Method::Cca,
            &data,
            &AlignConfig::default(),
            &AuditConfig::default(),
            &mut ignore,
        )
        .unwrap()
        .pairs;
        assert_ne!(a[30].alt_text.map(|t| t.0), Some(Partner::Pair(31)));
        assert_ne!(a[30].alt_image.map(|t| t.0), Some(Partner::Pair(31)));
    }

    #[test]
    fn cancel_and_bad_config_are_typed() {
        let (data, _) = planted();
        let r = audit(
            Method::Cca,
            &data,
            &AlignConfig::default(),
            &AuditConfig::default(),
            &mut |_| ControlFlow::Break(()),
        );
        assert!(matches!(r, Err(AlignError::Cancelled)));
        // One fold, and a component cap of 0.
        let bad = [
            AuditConfig {
                folds: 1,
                ..AuditConfig::default()
            },
            AuditConfig {
                component_grid: vec![Some(0), None],
                ..AuditConfig::default()
            },
        ];
        for bad in &bad {
            assert!(matches!(
                audit(
                    Method::Cca,
                    &data,
                    &AlignConfig::default(),
                    bad,
                    &mut ignore
                ),
                Err(AlignError::InvalidConfig(_))
            ));
        }
        let tiny = AlignData::from_pairs(
            data.xp.select_rows(&[0, 1, 2]),
            data.yp.select_rows(&[0, 1, 2]),
        );
        assert!(matches!(
            audit(
                Method::Cca,
                &tiny,
                &AlignConfig::default(),
                &AuditConfig::default(),
                &mut ignore
            ),
            Err(AlignError::NotEnoughData(_))
        ));
    }

    #[test]
    fn baseline_and_metrics() {
        let (data, wrong) = planted();
        let b = linear_baseline(&data).unwrap();
        assert_eq!(b.len(), 60);
        assert!(auroc(&b, &wrong).unwrap() > 0.5);
        assert_eq!(auroc(&[1.0, 2.0, 3.0], &[false, false, true]), Some(1.0));
        assert_eq!(auroc(&[1.0, 1.0], &[false, true]), Some(0.5));
        assert_eq!(auroc(&[1.0], &[true]), None);
        assert_eq!(
            precision_at(&[3.0, 2.0, 1.0], &[true, false, true], 2),
            Some(0.5)
        );
    }
}
