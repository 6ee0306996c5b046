//! `auto`: choose the method and its hyper-parameters by validation on the paired data only.
//!
//! Candidates ([`crate::config::AutoGrid`]):
//! - `fusions` (default): three equal-weight score fusions of the method families
//!   ([`FUSIONS`], [`crate::blend`]): CCA teacher + centred ASIF, then with Procrustes, then
//!   with plain ASIF as well. Why fusions and not single methods: with 25-100 pairs (so
//!   25-100 validation queries in all), validation cannot rank ~45 single-method candidates
//!   whose true differences are a fraction of a point, and the pick pays a winner's-curse
//!   cost; each fusion is about as good as the best of its parts at n = 25 (within 0.07
//!   points) and better from n = 50 on, so the choice is among three good candidates
//!   (docs/RESULTS.md, both measured).
//! - `full`: Procrustes, the ridge-CCA teacher with the protocol's ridge, ASIF and centred ASIF
//!   at p = 8; whitened Procrustes, teachers with ridges scaled to the feature covariance
//!   (`lambda * tr(C)/d`, [`crate::config::AutoConfig::ridge_grid`]), the other ASIF powers,
//!   CSA at every s of the grid, CCA + ASIF blends, then the fusions. Listed simplest first.
//!
//! Scoring: the protocol's validation ([`crate::validation`]: held-out pairs retrieved among
//! the unpaired pool as distractors, mean MRR of both directions), on `splits` folds of the
//! pairs (k-fold by default: every pair is validated exactly once, the most validation queries
//! a small n has). Optional learning-curve correction (`curve_fraction`, off by default): each
//! fold also fits every candidate on that fraction of its training pairs and the two scores are
//! extrapolated linearly in log(pairs) to the n pairs of the final fit ([`extrapolate`]).
//! Choice: the first candidate in list order whose mean score is within `tie_se` standard
//! errors of the best, the standard error being that of its per-fold difference to the best
//! (paired, so fold-to-fold difficulty cancels). The winner is refitted on all pairs. Only the
//! paired training data (and the unpaired pools) are ever looked at.
use std::ops::ControlFlow;

use faer::Mat;
use serde::Serialize;
use serde_json::json;

use crate::asif::Asif;
use crate::blend::Blend;
use crate::config::{AsifConfig, AutoGrid, ProcrustesConfig, TeacherConfig, ValidationScheme};
use crate::csa::Csa;
use crate::methods::{Method, Phase, Progress, report};
use crate::procrustes::Procrustes;
use crate::teacher::CcaTeacher;
use crate::validation::{self, Holdout};
use crate::{AlignConfig, AlignData, AlignError, Aligned, Matrix, MethodState};

/// One candidate configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// Human-readable label, e.g. `csa(s=16, ridge=0.1*tr/d)`.
    pub label: String,
    pub method: &'static str,
    /// The full config the candidate is fitted with.
    #[serde(skip)]
    pub cfg: AlignConfig,
    #[serde(skip)]
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Procrustes {
        whiten: bool,
    },
    /// Teacher index into the teacher grid; `csa_s = None` is the CCA teacher itself.
    Teacher {
        t: usize,
        csa_s: Option<usize>,
    },
    Asif,
    /// CCA teacher `t` blended with ASIF (`asif` config in `cfg`) at teacher weight `w`.
    Blend {
        t: usize,
        w: f64,
    },
    /// Equal-weight fusion of the listed methods, each with the base config's settings.
    Fusion {
        parts: &'static [Part],
    },
    /// A trained method (`siglip`, `siglip_tinit`, `sotalign`) with the head init, alpha and
    /// eps of `cfg`.
    Trained {
        method: Method,
    },
}

/// A member of a fusion candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Procrustes,
    Cca,
    Asif,
    AsifC,
}

impl Part {
    fn label(self, cfg: &AlignConfig) -> String {
        match self {
            Part::Procrustes => "procrustes".into(),
            Part::Cca => format!("cca(ridge={})", cfg.teacher.lambda),
            Part::Asif => format!("asif(p={})", cfg.asif.p),
            Part::AsifC => format!("asif_c(p={})", cfg.asif.p),
        }
    }

    fn fit(self, data: &AlignData, cfg: &AlignConfig) -> Result<Box<dyn Aligned>, AlignError> {
        Ok(match self {
            Part::Procrustes => Box::new(Procrustes::fit(
                data,
                &ProcrustesConfig {
                    whiten: false,
                    ..cfg.procrustes.clone()
                },
            )?),
            Part::Cca => Box::new(CcaTeacher::fit(data, &cfg.teacher)?),
            Part::Asif | Part::AsifC => Box::new(Asif::fit(
                data,
                &AsifConfig {
                    centre: self == Part::AsifC,
                    ..cfg.asif.clone()
                },
            )?),
        })
    }
}

/// The fusion candidates, in the order the tie rule prefers them: the teacher with centred
/// ASIF (global linear map + local relative representation), then Procrustes added, then plain
/// ASIF added. Each member keeps the base config's hyper-parameters: the fusion averages out
/// what a per-member grid would have to pick on noise.
pub const FUSIONS: [&[Part]; 3] = [
    &[Part::Cca, Part::AsifC],
    &[Part::Procrustes, Part::Cca, Part::AsifC],
    &[Part::Procrustes, Part::Cca, Part::Asif, Part::AsifC],
];

fn fusion_cand(cfg: &AlignConfig, parts: &'static [Part]) -> Candidate {
    let names: Vec<String> = parts.iter().map(|p| p.label(cfg)).collect();
    Candidate {
        label: format!("fusion({})", names.join(" + ")),
        method: "blend",
        cfg: cfg.clone(),
        kind: Kind::Fusion { parts },
    }
}

/// The validation result of one candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub label: String,
    /// Mean over the folds of the mean MRR (both directions), extrapolated to all n pairs
    /// when the learning-curve correction is on: what the choice is made on.
    pub score: f64,
    /// Standard error of the difference to the best candidate's per-fold scores (0 for the
    /// best itself or with one fold).
    pub se_diff: f64,
    /// Mean over the folds of the mean MRR after the fold's own fit (no extrapolation).
    pub at_fold_size: f64,
}

/// A fitted `auto` model: the winning method refitted on all pairs, plus the evidence.
pub struct AutoModel {
    inner: Box<dyn Aligned>,
    pub choice: Candidate,
    /// What the same tie rule picks on the unextrapolated fold scores (evidence only).
    pub plain_choice: String,
    pub scores: Vec<Scored>,
    pub splits: usize,
    /// Training pairs of each fold's fit, and of its learning-curve subset fit.
    pub m_full: Vec<usize>,
    pub m_sub: Vec<usize>,
}

fn teacher_grid(cfg: &AlignConfig) -> Vec<(String, TeacherConfig)> {
    let mut out = vec![(
        format!("ridge={}", cfg.teacher.lambda),
        TeacherConfig {
            lambda_relative: false,
            ..cfg.teacher.clone()
        },
    )];
    for &l in &cfg.auto.ridge_grid {
        out.push((
            format!("ridge={l}*tr/d"),
            TeacherConfig {
                lambda: l,
                lambda_relative: true,
                ..cfg.teacher.clone()
            },
        ));
    }
    out
}

fn procrustes_cand(cfg: &AlignConfig, whiten: bool) -> Candidate {
    let mut c = cfg.clone();
    c.procrustes = ProcrustesConfig {
        whiten,
        ..cfg.procrustes.clone()
    };
    let name = if whiten { "procrustes_w" } else { "procrustes" };
    Candidate {
        label: name.into(),
        method: name,
        cfg: c,
        kind: Kind::Procrustes { whiten },
    }
}

fn asif_cand(cfg: &AlignConfig, centre: bool, p: f64) -> Candidate {
    let mut c = cfg.clone();
    c.asif = AsifConfig {
        p,
        centre,
        ..cfg.asif.clone()
    };
    let name = if centre { "asif_c" } else { "asif" };
    Candidate {
        label: format!("{name}(p={p})"),
        method: name,
        cfg: c,
        kind: Kind::Asif,
    }
}

fn teacher_cand(cfg: &AlignConfig, t: usize, tl: &str, tc: &TeacherConfig) -> Candidate {
    let mut c = cfg.clone();
    c.teacher = tc.clone();
    Candidate {
        label: format!("cca({tl})"),
        method: "cca",
        cfg: c,
        kind: Kind::Teacher { t, csa_s: None },
    }
}

/// Every candidate for a configuration (independent of the data), in the tie rule's order of
/// preference.
pub fn candidates(cfg: &AlignConfig) -> Vec<Candidate> {
    let fusions = FUSIONS.iter().map(|p| fusion_cand(cfg, p));
    let mut out = match cfg.auto.grid {
        AutoGrid::Fusions => fusions.collect(),
        AutoGrid::Full => {
            let mut out = full_grid(cfg);
            out.extend(fusions);
            out
        }
    };
    if cfg.auto.trained {
        out.extend(trained_cands(cfg));
    }
    out
}

/// The trained candidates: head init (random vs teacher, alpha = 0), then SOTAlign over the
/// alpha x eps grid. Listed after the closed forms: they are the costliest and, for the tie
/// rule, the most complex.
fn trained_cands(cfg: &AlignConfig) -> Vec<Candidate> {
    let mut out = Vec::new();
    for method in [Method::Siglip, Method::SiglipTinit] {
        let mut c = cfg.clone();
        c.klot.alpha = 0.0;
        out.push(Candidate {
            label: method.name().to_string(),
            method: method.name(),
            cfg: c,
            kind: Kind::Trained { method },
        });
    }
    let eps: Vec<f64> = if cfg.auto.eps_grid.is_empty() {
        vec![cfg.klot.eps_s]
    } else {
        cfg.auto.eps_grid.clone()
    };
    for &alpha in cfg.klot.alpha_grid.iter().filter(|a| **a > 0.0) {
        for &e in &eps {
            let mut c = cfg.clone();
            c.klot.alpha = alpha;
            c.klot.eps_s = e;
            c.heads.init = crate::config::HeadInit::Teacher;
            out.push(Candidate {
                label: format!("sotalign(alpha={alpha}, eps_s={e})"),
                method: "sotalign",
                cfg: c,
                kind: Kind::Trained {
                    method: Method::Sotalign,
                },
            });
        }
    }
    out
}

/// Every single method with its hyper-parameter grid and the CCA + ASIF blends, simplest first.
fn full_grid(cfg: &AlignConfig) -> Vec<Candidate> {
    let teachers = teacher_grid(cfg);
    let base_p = cfg.asif.p;
    let mut out = vec![
        procrustes_cand(cfg, false),
        teacher_cand(cfg, 0, &teachers[0].0, &teachers[0].1),
        asif_cand(cfg, false, base_p),
        asif_cand(cfg, true, base_p),
        procrustes_cand(cfg, true),
    ];
    for (t, (tl, tc)) in teachers.iter().enumerate().skip(1) {
        out.push(teacher_cand(cfg, t, tl, tc));
    }
    for centre in [false, true] {
        for &p in cfg.auto.asif_p_grid.iter().filter(|&&p| p != base_p) {
            out.push(asif_cand(cfg, centre, p));
        }
    }
    for &s in &cfg.csa.s_grid {
        let mut c = cfg.clone();
        c.teacher = teachers[0].1.clone();
        c.csa.s = Some(s);
        out.push(Candidate {
            label: format!("csa(s={s}, {})", teachers[0].0),
            method: "csa",
            cfg: c,
            kind: Kind::Teacher {
                t: 0,
                csa_s: Some(s),
            },
        });
    }
    for centre in [false, true] {
        for &w in &cfg.auto.blend_weights {
            let mut c = asif_cand(cfg, centre, base_p).cfg;
            c.teacher = teachers[0].1.clone();
            let name = if centre { "asif_c" } else { "asif" };
            out.push(Candidate {
                label: format!("blend(w={w}: cca({}), {name}(p={base_p}))", teachers[0].0),
                method: "blend",
                cfg: c,
                kind: Kind::Blend { t: 0, w },
            });
        }
    }
    out
}

/// Fit a candidate; `progress` only matters for the trained ones (a training run), whose
/// reports it receives so that a cancel reaches them.
fn fit_candidate_with(
    c: &Candidate,
    data: &AlignData,
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<Box<dyn Aligned>, AlignError> {
    match c.kind {
        Kind::Trained { method } => crate::methods::fit(method, data, &c.cfg, progress),
        _ => fit_candidate(c, data),
    }
}

fn fit_candidate(c: &Candidate, data: &AlignData) -> Result<Box<dyn Aligned>, AlignError> {
    Ok(match c.kind {
        Kind::Trained { method } => crate::methods::fit_quiet(method, data, &c.cfg)?,
        Kind::Procrustes { .. } => Box::new(Procrustes::fit(data, &c.cfg.procrustes)?),
        Kind::Teacher { csa_s: None, .. } => Box::new(CcaTeacher::fit(data, &c.cfg.teacher)?),
        Kind::Teacher { csa_s, .. } => Box::new(Csa::from_teacher(
            CcaTeacher::fit(data, &c.cfg.teacher)?,
            csa_s,
        )?),
        Kind::Asif => Box::new(Asif::fit(data, &c.cfg.asif)?),
        Kind::Blend { w, .. } => Box::new(Blend::pair(
            Box::new(CcaTeacher::fit(data, &c.cfg.teacher)?),
            Box::new(Asif::fit(data, &c.cfg.asif)?),
            w,
            data,
        )?),
        Kind::Fusion { parts } => {
            let fitted = parts
                .iter()
                .map(|p| p.fit(data, &c.cfg))
                .collect::<Result<Vec<_>, _>>()?;
            Box::new(Blend::new(fitted, &vec![1.0; parts.len()], data)?)
        }
    })
}

/// Every candidate's validation scores on every fold.
#[derive(Debug, Clone)]
pub struct Validation {
    /// `full[c][f]`: mean MRR of candidate `c` on fold `f` after a fit on the fold's training
    /// pairs (`-inf` when it could not be fitted there).
    pub full: Vec<Vec<f64>>,
    /// `sub[c][f]`: the same validation pairs after a fit on a subset of the training pairs
    /// (learning curve); empty when the correction is off.
    pub sub: Vec<Vec<f64>>,
    /// Per fold: training pairs of the full and of the subset fit.
    pub m_full: Vec<usize>,
    pub m_sub: Vec<usize>,
    /// Progress steps in all, the final refit included (see [`validate_candidates`]).
    pub steps: usize,
}

impl Validation {
    /// Per candidate and fold, the score extrapolated to `n` training pairs
    /// ([`extrapolate`]); the plain scores when there is no learning curve.
    pub fn extrapolated(&self, n: usize) -> Vec<Vec<f64>> {
        if self.sub.is_empty() {
            return self.full.clone();
        }
        self.full
            .iter()
            .zip(&self.sub)
            .map(|(f, s)| {
                (0..f.len())
                    .map(|k| extrapolate(f[k], self.m_full[k], s[k], self.m_sub[k], n))
                    .collect()
            })
            .collect()
    }
}

/// The score at `n` training pairs of a learning curve linear in log(pairs) through
/// (`m1`, `s1`) and (`m0`, `s0`), `m0 < m1`. Falls back to `s1` when the two sizes coincide.
/// The slope is not clamped: clamping it at 0 would bias every estimate upwards, and a method
/// that does get worse with more pairs (e.g. CSA at a fixed s) should be seen to.
pub fn extrapolate(s1: f64, m1: usize, s0: f64, m0: usize, n: usize) -> f64 {
    if !(s1.is_finite() && s0.is_finite()) {
        return if s1.is_finite() {
            s1
        } else {
            f64::NEG_INFINITY
        };
    }
    if m0 == 0 || m0 >= m1 || n <= m1 {
        return s1;
    }
    let t = (n as f64 / m1 as f64).ln() / (m1 as f64 / m0 as f64).ln();
    s1 + t * (s1 - s0)
}

/// The (training, validation) index sets of every fold of `cfg.auto` for `n` pairs.
fn folds(data: &AlignData, cfg: &AlignConfig) -> Result<Vec<(Vec<usize>, Vec<usize>)>, AlignError> {
    let n = data.n_pairs();
    let k = cfg.auto.splits.max(1);
    match cfg.auto.scheme {
        ValidationScheme::KFold => {
            // Two folds at least (one fold would validate on its own training data); the
            // training side must keep >= 2 pairs.
            let k = k.max(2).min(n / 2);
            if k < 2 || n < 4 {
                return Err(AlignError::NotEnoughData(format!(
                    "auto: k-fold validation needs at least 4 pairs, got {n}"
                )));
            }
            let parts = validation::kfold(n, k, 0);
            Ok(parts
                .iter()
                .map(|va| {
                    let mut held = vec![false; n];
                    va.iter().for_each(|&i| held[i] = true);
                    ((0..n).filter(|&i| !held[i]).collect(), va.clone())
                })
                .collect())
        }
        ValidationScheme::Random => {
            let v = validation::val_size(n);
            if n < v + 2 {
                return Err(AlignError::NotEnoughData(format!(
                    "validation holds out {v} of {n} pairs and needs at least 2 left to fit; give at least {} pairs",
                    v + 2
                )));
            }
            Ok((0..k)
                .map(|r| {
                    let va = validation::random_indices(n, r as u64);
                    let mut held = vec![false; n];
                    va.iter().for_each(|&i| held[i] = true);
                    ((0..n).filter(|&i| !held[i]).collect(), va)
                })
                .collect())
        }
    }
}

/// Validation scores of every candidate on every fold, in candidate order, at the fold's
/// training size and (learning curve on) at `curve_fraction` of it.
pub fn validate_candidates(
    data: &AlignData,
    cfg: &AlignConfig,
    cands: &[Candidate],
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<Validation, AlignError> {
    let folds = folds(data, cfg)?;
    let frac = cfg.auto.curve_fraction;
    let curve = frac > 0.0 && frac < 1.0;
    let teachers = teacher_grid(cfg);
    let passes = if curve { 2 } else { 1 };
    // One step per (pass, fold, candidate) fit, plus one for the final refit on all pairs that
    // `fit_auto` reports as the last step: a single counter, so progress never goes backwards.
    let total = passes * folds.len() * cands.len() + 1;
    let mut step = 0;
    let mut out = Validation {
        full: vec![Vec::with_capacity(folds.len()); cands.len()],
        sub: if curve {
            vec![Vec::with_capacity(folds.len()); cands.len()]
        } else {
            Vec::new()
        },
        m_full: Vec::new(),
        m_sub: Vec::new(),
        steps: total,
    };
    for (f, (tr, va)) in folds.iter().enumerate() {
        let cap = cfg.auto.max_distractors;
        let h = Holdout::with_split(data, tr, va)?.cap_distractors(cap, f as u64);
        out.m_full.push(h.n_train());
        let s = score_holdout(&h, cands, &teachers, progress, &mut step, total)?;
        for (c, v) in s.into_iter().enumerate() {
            out.full[c].push(v);
        }
        if curve {
            let m0 = ((frac * tr.len() as f64).round() as usize).max(2);
            if m0 < tr.len() {
                let hs = Holdout::with_split(data, &validation::subsample(tr, m0, f as u64), va)?
                    .cap_distractors(cap, f as u64);
                out.m_sub.push(hs.n_train());
                let s = score_holdout(&hs, cands, &teachers, progress, &mut step, total)?;
                for (c, v) in s.into_iter().enumerate() {
                    out.sub[c].push(v);
                }
            } else {
                // Too few pairs for a second point: the extrapolation falls back to the plain
                // score for this fold (m_sub = m_full).
                out.m_sub.push(h.n_train());
                for c in 0..cands.len() {
                    let v = out.full[c][f];
                    out.sub[c].push(v);
                }
                step += cands.len();
            }
        }
    }
    Ok(out)
}

/// Mean MRR of every candidate on one holdout (`-inf` for a candidate that cannot be fitted).
fn score_holdout(
    h: &Holdout,
    cands: &[Candidate],
    teachers: &[(String, TeacherConfig)],
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
    step: &mut usize,
    total: usize,
) -> Result<Vec<f64>, AlignError> {
    let mut scores = Vec::with_capacity(cands.len());
    // CCA does not depend on s: fit each teacher once per holdout, reuse it for every CSA s
    // and blend.
    let mut fitted: Vec<Option<CcaTeacher>> = vec![None; teachers.len()];
    for c in cands {
        // A candidate that cannot be fitted on this split (e.g. a degenerate CCA) is out of
        // the running: its score becomes -inf, the search goes on.
        let model: Result<Box<dyn Aligned>, AlignError> = match c.kind {
            Kind::Teacher { t, .. } | Kind::Blend { t, .. } if t < teachers.len() => {
                if fitted[t].is_none() {
                    fitted[t] = CcaTeacher::fit(&h.train, &teachers[t].1).ok();
                }
                match (fitted[t].clone(), c.kind) {
                    (None, _) => Err(AlignError::NotEnoughData(format!("{} failed", c.label))),
                    (Some(t), Kind::Teacher { csa_s: None, .. }) => Ok(Box::new(t)),
                    (Some(t), Kind::Blend { w, .. }) => Asif::fit(&h.train, &c.cfg.asif)
                        .and_then(|a| Blend::pair(Box::new(t), Box::new(a), w, &h.train))
                        .map(|m| Box::new(m) as Box<dyn Aligned>),
                    (Some(t), Kind::Teacher { csa_s, .. }) => {
                        Csa::from_teacher(t, csa_s).map(|m| Box::new(m) as Box<dyn Aligned>)
                    }
                    (Some(_), _) => fit_candidate(c, &h.train),
                }
            }
            Kind::Trained { .. } => {
                // A training run inside validation: its own reports re-announce the current
                // validation step, which keeps the counter monotone and lets a cancel through.
                let at = *step;
                fit_candidate_with(c, &h.train, &mut |_| match report(
                    progress,
                    Phase::Validate,
                    "validate",
                    at,
                    total,
                    None,
                ) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                })
            }
            _ => fit_candidate(c, &h.train),
        };
        let s = match model.and_then(|m| h.evaluate(m.as_ref())) {
            Ok(r) => r.mean_mrr(),
            Err(AlignError::Cancelled) => return Err(AlignError::Cancelled),
            Err(_) => f64::NEG_INFINITY,
        };
        scores.push(s);
        *step += 1;
        report(
            progress,
            Phase::Validate,
            "validate",
            *step,
            total,
            s.is_finite().then_some(s),
        )?;
    }
    Ok(scores)
}

/// The choice rule: index of the best mean, then the first candidate (simplest) whose mean is
/// within `tie_se` standard errors of the paired difference to the best. Returns the chosen
/// index and, per candidate, (mean, se of the difference to the best).
pub fn choose(scores: &[Vec<f64>], tie_se: f64) -> (usize, Vec<(f64, f64)>) {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let means: Vec<f64> = scores.iter().map(|v| mean(v)).collect();
    let mut best = 0;
    for (i, &m) in means.iter().enumerate() {
        if m > means[best] {
            best = i;
        }
    }
    let stats: Vec<(f64, f64)> = scores
        .iter()
        .zip(&means)
        .map(|(v, &m)| {
            let r = v.len();
            if r < 2 || !m.is_finite() || !means[best].is_finite() {
                return (m, 0.0);
            }
            let d: Vec<f64> = v.iter().zip(&scores[best]).map(|(a, b)| b - a).collect();
            let dm = mean(&d);
            let var = d.iter().map(|x| (x - dm) * (x - dm)).sum::<f64>() / (r - 1) as f64;
            (m, (var / r as f64).sqrt())
        })
        .collect();
    let chosen = (0..scores.len())
        .find(|&i| {
            let (m, se) = stats[i];
            m.is_finite() && m >= means[best] - tie_se * se
        })
        .unwrap_or(best);
    (chosen, stats)
}

/// Fit `auto`: validate every candidate, refit the best on all pairs.
pub fn fit_auto(
    data: &AlignData,
    cfg: &AlignConfig,
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<AutoModel, AlignError> {
    let cands = candidates(cfg);
    let val = validate_candidates(data, cfg, &cands, progress)?;
    let per_split = val.extrapolated(data.n_pairs());
    let splits = per_split.first().map_or(0, Vec::len);
    let (best, stats) = choose(&per_split, cfg.auto.tie_se);
    // What the same rule picks without the learning-curve correction (recorded as evidence).
    let (plain_best, plain_stats) = choose(&val.full, cfg.auto.tie_se);
    let scores: Vec<f64> = stats.iter().map(|s| s.0).collect();
    if !scores[best].is_finite() {
        return Err(AlignError::NotEnoughData(
            "auto: no candidate could be fitted on the validation split".into(),
        ));
    }
    let choice = cands[best].clone();
    let stage = format!("fit {}", choice.label);
    let steps = val.steps.max(1);
    report(
        progress,
        Phase::Fit,
        &stage,
        steps - 1,
        steps,
        Some(scores[best]),
    )?;
    let inner = fit_candidate_with(&choice, data, &mut |_| match report(
        progress,
        Phase::Fit,
        &stage,
        steps - 1,
        steps,
        Some(scores[best]),
    ) {
        Ok(()) => ControlFlow::Continue(()),
        Err(_) => ControlFlow::Break(()),
    })?;
    report(
        progress,
        Phase::Fit,
        &stage,
        steps,
        steps,
        Some(scores[best]),
    )?;
    let scores = cands
        .iter()
        .zip(stats)
        .zip(plain_stats)
        .map(|((c, (score, se_diff)), (at_fold_size, _))| Scored {
            label: c.label.clone(),
            score,
            se_diff,
            at_fold_size,
        })
        .collect();
    Ok(AutoModel {
        inner,
        choice,
        plain_choice: cands[plain_best].label.clone(),
        scores,
        splits,
        m_full: val.m_full,
        m_sub: val.m_sub,
    })
}

impl Aligned for AutoModel {
    fn name(&self) -> &str {
        "auto"
    }
    fn embed_x(&self, x: &Matrix) -> Result<Matrix, AlignError> {
        self.inner.embed_x(x)
    }
    fn embed_y(&self, y: &Matrix) -> Result<Matrix, AlignError> {
        self.inner.embed_y(y)
    }
    fn embed_x_f64(&self, x: &Matrix) -> Result<Mat<f64>, AlignError> {
        self.inner.embed_x_f64(x)
    }
    fn embed_y_f64(&self, y: &Matrix) -> Result<Mat<f64>, AlignError> {
        self.inner.embed_y_f64(y)
    }
    /// The chosen method's state (it restores as that method), with the choice recorded.
    fn export_state(&self) -> Result<MethodState, AlignError> {
        let mut st = self.inner.export_state()?;
        st.meta["auto"] = json!({
            "choice": self.choice.label,
            "plain_choice": self.plain_choice,
            "splits": self.splits,
            "m_full": self.m_full,
            "m_sub": self.m_sub,
            "scores": self.scores,
        });
        Ok(st)
    }
}

impl AutoModel {
    pub fn inner_method(&self) -> Result<Method, AlignError> {
        self.choice.method.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_prefers_the_simplest_within_the_tolerance() {
        // Candidate 2 has the best mean, candidate 0 trails it by a noisy, small margin,
        // candidate 1 trails it consistently by a lot.
        let scores = vec![
            vec![0.30, 0.20, 0.40, 0.25],
            vec![0.10, 0.10, 0.10, 0.10],
            vec![0.26, 0.30, 0.35, 0.30],
        ];
        let (argmax, stats) = choose(&scores, 0.0);
        assert_eq!(argmax, 2);
        assert_eq!(stats[2].1, 0.0);
        let (tol, _) = choose(&scores, 1.0);
        assert_eq!(tol, 0, "0 is within one SE of the best: {stats:?}");
        // A consistent large gap is never a tie.
        assert!(scores[1].iter().sum::<f64>() / 4.0 < stats[2].0 - 1.0 * stats[1].1);
        // One split: only exact ties count.
        let one = vec![vec![0.2], vec![0.3], vec![0.3]];
        assert_eq!(choose(&one, 1.0).0, 1);
    }

    #[test]
    fn extrapolation_is_exact_on_a_log_linear_curve() {
        // Planted learning curve s(m) = 0.1 + 0.05 ln m: two points recover it anywhere.
        let s = |m: usize| 0.1 + 0.05 * (m as f64).ln();
        for (m0, m1, n) in [(15, 20, 25), (30, 40, 50), (60, 80, 100), (240, 320, 400)] {
            let got = extrapolate(s(m1), m1, s(m0), m0, n);
            assert!(
                (got - s(n)).abs() < 1e-12,
                "{m0},{m1}->{n}: {got} vs {}",
                s(n)
            );
        }
        // A flat curve stays flat; a falling one keeps falling (no clamping).
        assert_eq!(extrapolate(0.3, 40, 0.3, 30, 50), 0.3);
        assert!(extrapolate(0.3, 40, 0.32, 30, 50) < 0.3);
        // Degenerate inputs fall back to the fold score.
        assert_eq!(extrapolate(0.3, 40, 0.1, 40, 50), 0.3);
        assert_eq!(extrapolate(0.3, 40, f64::NEG_INFINITY, 30, 50), 0.3);
        assert_eq!(
            extrapolate(f64::NEG_INFINITY, 40, 0.2, 30, 50),
            f64::NEG_INFINITY
        );
    }

    #[test]
    fn learning_curve_changes_the_choice_on_a_planted_case() {
        // Candidate 0 (simpler) is saturated: 0.30 at 30 and at 40 pairs. Candidate 1 scores
        // slightly less at 40 pairs (0.29) but is still climbing (0.22 at 30 pairs). At the fold
        // size the simple one wins; extrapolated to 50 pairs the climbing one does.
        let v = Validation {
            full: vec![vec![0.30, 0.31, 0.29], vec![0.29, 0.30, 0.28]],
            sub: vec![vec![0.30, 0.31, 0.29], vec![0.22, 0.23, 0.21]],
            m_full: vec![40; 3],
            m_sub: vec![30; 3],
            steps: 0,
        };
        assert_eq!(choose(&v.full, 0.0).0, 0);
        let ext = v.extrapolated(50);
        assert_eq!(choose(&ext, 0.0).0, 1);
        let want = 0.29 + (50f64 / 40.0).ln() / (40f64 / 30.0).ln() * 0.07;
        assert!((ext[1][0] - want).abs() < 1e-12);
        assert_eq!(ext[0], v.full[0]);
        // No learning curve: the plain scores are used.
        let plain = Validation {
            sub: Vec::new(),
            ..v.clone()
        };
        assert_eq!(plain.extrapolated(50), plain.full);
    }

    #[test]
    fn trained_candidates_choose_head_init_alpha_and_eps_and_cancel() {
        let mut cfg = AlignConfig::default();
        cfg.auto.trained = true;
        cfg.auto.splits = 2;
        cfg.auto.eps_grid = vec![0.05, 0.1];
        cfg.klot.alpha_grid = vec![0.0, 0.1];
        cfg.klot.batch = 16;
        cfg.optim.steps = 10;
        cfg.heads.dim = 16;
        let labels: Vec<String> = candidates(&cfg).into_iter().map(|c| c.label).collect();
        assert_eq!(labels.len(), FUSIONS.len() + 4);
        assert_eq!(
            labels[FUSIONS.len()..],
            [
                "siglip",
                "siglip_tinit",
                "sotalign(alpha=0.1, eps_s=0.05)",
                "sotalign(alpha=0.1, eps_s=0.1)"
            ]
        );
        let p = crate::testing::small_platonic(2);
        let (d, _, _) = p.split(30, 40, 10, 3);
        let m = fit_auto(&d, &cfg, &mut |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(m.scores.len(), labels.len());
        assert!(
            m.scores.iter().all(|s| s.score.is_finite()),
            "every candidate fitted and scored: {:?}",
            m.scores
        );
        // A cancel during a trained candidate's training run stops the whole search.
        let mut calls = 0;
        let r = fit_auto(&d, &cfg, &mut |p| {
            calls += 1;
            if p.stage == "validate" && calls > 40 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert!(matches!(r, Err(AlignError::Cancelled)), "{:?}", r.err());
    }

    #[test]
    fn kfold_validates_every_pair_once() {
        let data = {
            let x = Matrix::from_vec(
                23,
                3,
                (0..69).map(|i| ((i * 7 % 13) as f32) - 6.0).collect(),
            )
            .unwrap();
            AlignData::from_pairs(x.clone(), x)
        };
        let cfg = AlignConfig::default();
        let f = folds(&data, &cfg).unwrap();
        assert_eq!(f.len(), cfg.auto.splits);
        let mut seen = vec![0; 23];
        for (tr, va) in &f {
            assert_eq!(tr.len() + va.len(), 23);
            let k = cfg.auto.splits;
            assert!(va.len() == 23 / k || va.len() == 23 / k + 1, "{}", va.len());
            for &i in va {
                seen[i] += 1;
                assert!(!tr.contains(&i));
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
        // Too few pairs for two folds is a typed error, never a panic.
        let tiny = AlignData::from_pairs(
            data.xp.select_rows(&[0, 1, 2]),
            data.yp.select_rows(&[0, 1, 2]),
        );
        assert!(matches!(
            folds(&tiny, &cfg),
            Err(AlignError::NotEnoughData(_))
        ));
    }

    #[test]
    fn default_candidates_are_the_fusions_and_full_grid_starts_simple() {
        let c = candidates(&AlignConfig::default());
        let labels: Vec<&str> = c.iter().map(|x| x.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "fusion(cca(ridge=0.1) + asif_c(p=8))",
                "fusion(procrustes + cca(ridge=0.1) + asif_c(p=8))",
                "fusion(procrustes + cca(ridge=0.1) + asif(p=8) + asif_c(p=8))",
            ]
        );
        let mut cfg = AlignConfig::default();
        cfg.auto.grid = AutoGrid::Full;
        let c = candidates(&cfg);
        assert_eq!(c[0].method, "procrustes");
        assert_eq!(c[1].method, "cca");
        // Six CCA + ASIF blends and the three fusions, all restored as `blend`.
        assert_eq!(c.iter().filter(|x| x.method == "blend").count(), 9);
        let labels: std::collections::HashSet<_> = c.iter().map(|x| x.label.clone()).collect();
        assert_eq!(labels.len(), c.len(), "labels are unique");
    }

    #[test]
    fn auto_fits_a_fusion_that_scores_like_its_parts_and_restores() {
        let p = crate::testing::small_platonic(9);
        let (d, xt, yt) = p.split(40, 60, 30, 4);
        let cfg = AlignConfig::default();
        let mut seen = Vec::new();
        let m = fit_auto(&d, &cfg, &mut |p| {
            seen.push((p.step, p.total));
            ControlFlow::Continue(())
        })
        .unwrap();
        // One step counter for validation and the final refit: never backwards, ends complete.
        let total = seen[0].1;
        assert!(seen.iter().all(|&(_, t)| t == total), "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
        assert_eq!(seen.last(), Some(&(total, total)));
        assert_eq!(m.scores.len(), FUSIONS.len());
        assert!(m.scores.iter().all(|s| s.score.is_finite()));
        assert!(m.choice.label.starts_with("fusion("), "{}", m.choice.label);
        // The refitted winner is exactly the candidate fitted on all pairs.
        let direct = fit_candidate(&m.choice, &d).unwrap();
        let (a, b) = (m.score(&xt, &yt).unwrap(), direct.score(&xt, &yt).unwrap());
        assert_eq!(a.data, b.data);
        // The checkpoint restores as the fusion it is, with the choice recorded.
        let st = m.export_state().unwrap();
        assert_eq!(st.method, "blend");
        assert_eq!(st.meta["auto"]["choice"], m.choice.label.as_str());
        let back = crate::methods::restore(&st).unwrap();
        let c = back.score(&xt, &yt).unwrap();
        for (u, v) in a.data.iter().zip(&c.data) {
            assert!((u - v).abs() < 1e-3 * u.abs().max(1.0), "{u} vs {v}");
        }
    }
}
