//! `auto`: choose the method and its hyper-parameters by validation on the paired data only.
//!
//! Candidates, listed simplest first (the order breaks near-ties): Procrustes, the ridge-CCA
//! teacher with the protocol's ridge, ASIF and centred ASIF at p = 8; then whitened Procrustes,
//! teachers with ridges scaled to the feature covariance (`lambda * tr(C)/d`,
//! [`super::config::AutoConfig::ridge_grid`]), the other ASIF powers, CSA at every s of the grid
//! (on the protocol's teacher), and score blends of the teacher with ASIF / centred ASIF
//! ([`super::blend`]).
//!
//! Scoring: the protocol's validation ([`super::validation`]: `max(5, round(0.2 n))` pairs held
//! out, unpaired pool as distractors, mean MRR of both directions) on `splits` random held-out
//! sets of the pairs, averaged. Choice: the first candidate (simplest) whose mean is within
//! `tie_se` standard errors of the best, the standard error being that of its per-split
//! difference to the best (paired, so split-to-split difficulty cancels). The winner is refitted
//! on all pairs.
use std::ops::ControlFlow;

use faer::Mat;
use serde::Serialize;
use serde_json::json;

use super::asif::Asif;
use super::blend::Blend;
use super::config::{AsifConfig, ProcrustesConfig, TeacherConfig};
use super::csa::Csa;
use super::methods::{Method, Progress, report};
use super::procrustes::Procrustes;
use super::teacher::CcaTeacher;
use super::validation::Holdout;
use super::{AlignConfig, AlignData, AlignError, Aligned, Matrix, MethodState};

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
}

/// The validation result of one candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub label: String,
    /// Mean over the splits of the mean MRR (both directions).
    pub score: f64,
    /// Standard error of the difference to the best candidate's per-split scores (0 for the
    /// best itself or with one split).
    pub se_diff: f64,
}

/// A fitted `auto` model: the winning method refitted on all pairs, plus the evidence.
pub struct AutoModel {
    inner: Box<dyn Aligned>,
    pub choice: Candidate,
    pub scores: Vec<Scored>,
    pub splits: usize,
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

/// Every candidate for a configuration (independent of the data), simplest first.
pub fn candidates(cfg: &AlignConfig) -> Vec<Candidate> {
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

fn fit_candidate(c: &Candidate, data: &AlignData) -> Result<Box<dyn Aligned>, AlignError> {
    Ok(match c.kind {
        Kind::Procrustes { .. } => Box::new(Procrustes::fit(data, &c.cfg.procrustes)?),
        Kind::Teacher { csa_s: None, .. } => Box::new(CcaTeacher::fit(data, &c.cfg.teacher)?),
        Kind::Teacher { csa_s, .. } => Box::new(Csa::from_teacher(
            CcaTeacher::fit(data, &c.cfg.teacher)?,
            csa_s,
        )?),
        Kind::Asif => Box::new(Asif::fit(data, &c.cfg.asif)?),
        Kind::Blend { w, .. } => Box::new(Blend::new(
            Box::new(CcaTeacher::fit(data, &c.cfg.teacher)?),
            Box::new(Asif::fit(data, &c.cfg.asif)?),
            w,
            data,
        )?),
    })
}

/// Validation scores of every candidate: `scores[c][r]` = mean MRR of candidate `c` on split
/// `r` (`-inf` when it could not be fitted there), in candidate order.
pub fn validate_candidates(
    data: &AlignData,
    cfg: &AlignConfig,
    cands: &[Candidate],
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<Vec<Vec<f64>>, AlignError> {
    let splits = cfg.auto.splits.max(1);
    let teachers = teacher_grid(cfg);
    let mut scores = vec![Vec::with_capacity(splits); cands.len()];
    let total = splits * cands.len();
    let mut step = 0;
    for split in 0..splits {
        let h = Holdout::random(data, split as u64)?;
        // CCA does not depend on s: fit each teacher once per split, reuse it for every CSA s
        // and blend.
        let mut fitted: Vec<Option<CcaTeacher>> = vec![None; teachers.len()];
        for (i, c) in cands.iter().enumerate() {
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
                            .and_then(|a| Blend::new(Box::new(t), Box::new(a), w, &h.train))
                            .map(|m| Box::new(m) as Box<dyn Aligned>),
                        (Some(t), Kind::Teacher { csa_s, .. }) => {
                            Csa::from_teacher(t, csa_s).map(|m| Box::new(m) as Box<dyn Aligned>)
                        }
                        (Some(_), _) => fit_candidate(c, &h.train),
                    }
                }
                _ => fit_candidate(c, &h.train),
            };
            let s = match model.and_then(|m| h.evaluate(m.as_ref())) {
                Ok(r) => r.mean_mrr(),
                Err(AlignError::Cancelled) => return Err(AlignError::Cancelled),
                Err(_) => f64::NEG_INFINITY,
            };
            scores[i].push(s);
            step += 1;
            report(
                progress,
                "validate",
                step,
                total,
                s.is_finite().then_some(s),
            )?;
        }
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
    let per_split = validate_candidates(data, cfg, &cands, progress)?;
    let splits = per_split.first().map_or(0, Vec::len);
    let (best, stats) = choose(&per_split, cfg.auto.tie_se);
    let scores: Vec<f64> = stats.iter().map(|s| s.0).collect();
    if !scores[best].is_finite() {
        return Err(AlignError::NotEnoughData(
            "auto: no candidate could be fitted on the validation split".into(),
        ));
    }
    let choice = cands[best].clone();
    report(
        progress,
        &format!("fit {}", choice.label),
        0,
        1,
        Some(scores[best]),
    )?;
    let inner = fit_candidate(&choice, data)?;
    report(
        progress,
        &format!("fit {}", choice.label),
        1,
        1,
        Some(scores[best]),
    )?;
    let scores = cands
        .iter()
        .zip(stats)
        .map(|(c, (score, se_diff))| Scored {
            label: c.label.clone(),
            score,
            se_diff,
        })
        .collect();
    Ok(AutoModel {
        inner,
        choice,
        scores,
        splits,
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
        st.meta["auto"] =
            json!({ "choice": self.choice.label, "splits": self.splits, "scores": self.scores });
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
    fn candidates_start_simple_and_include_blends() {
        let c = candidates(&AlignConfig::default());
        assert_eq!(c[0].method, "procrustes");
        assert_eq!(c[1].method, "cca");
        assert!(c.iter().filter(|x| x.method == "blend").count() == 6);
        let labels: std::collections::HashSet<_> = c.iter().map(|x| x.label.clone()).collect();
        assert_eq!(labels.len(), c.len(), "labels are unique");
    }
}
