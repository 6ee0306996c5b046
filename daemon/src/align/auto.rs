//! `auto`: choose the method and its hyper-parameters by validation on the paired data only.
//!
//! Candidates: Procrustes (plain, whitened); the ridge-CCA teacher with the protocol's absolute
//! ridge and with ridges scaled to the feature covariance (`lambda * tr(C)/d`, see
//! [`super::config::AutoConfig::ridge_grid`]); CSA at every s of the grid on each of those
//! teachers; ASIF (plain and centred) for each power p. Each candidate is scored with the
//! protocol's validation ([`super::validation`]: held-out block of `max(5, round(0.2 n))` pairs,
//! unpaired pool as distractors, mean MRR of both directions), averaged over `folds` disjoint
//! held-out blocks (fold 0 is exactly the protocol's last block). The winner is refitted on all
//! pairs. Ties go to the earlier candidate (simpler methods are listed first).
use std::ops::ControlFlow;

use faer::Mat;
use serde::Serialize;
use serde_json::json;

use super::asif::Asif;
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
}

/// The validation result of one candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub label: String,
    /// Mean over folds of the mean MRR (both directions).
    pub score: f64,
}

/// A fitted `auto` model: the winning method refitted on all pairs, plus the evidence.
pub struct AutoModel {
    inner: Box<dyn Aligned>,
    pub choice: Candidate,
    pub scores: Vec<Scored>,
    pub folds: usize,
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

/// Every candidate for a configuration (independent of the data).
pub fn candidates(cfg: &AlignConfig) -> Vec<Candidate> {
    let mut out = Vec::new();
    for whiten in [false, true] {
        let mut c = cfg.clone();
        c.procrustes = ProcrustesConfig {
            whiten,
            ..cfg.procrustes.clone()
        };
        out.push(Candidate {
            label: if whiten {
                "procrustes_w".into()
            } else {
                "procrustes".into()
            },
            method: if whiten { "procrustes_w" } else { "procrustes" },
            cfg: c,
            kind: Kind::Procrustes { whiten },
        });
    }
    for (t, (tl, tc)) in teacher_grid(cfg).into_iter().enumerate() {
        let mut c = cfg.clone();
        c.teacher = tc;
        out.push(Candidate {
            label: format!("cca({tl})"),
            method: "cca",
            cfg: c.clone(),
            kind: Kind::Teacher { t, csa_s: None },
        });
        for &s in &cfg.csa.s_grid {
            let mut cs = c.clone();
            cs.csa.s = Some(s);
            out.push(Candidate {
                label: format!("csa(s={s}, {tl})"),
                method: "csa",
                cfg: cs,
                kind: Kind::Teacher { t, csa_s: Some(s) },
            });
        }
    }
    for centre in [false, true] {
        for &p in &cfg.auto.asif_p_grid {
            let mut c = cfg.clone();
            c.asif = AsifConfig {
                p,
                centre,
                ..cfg.asif.clone()
            };
            let name = if centre { "asif_c" } else { "asif" };
            out.push(Candidate {
                label: format!("{name}(p={p})"),
                method: name,
                cfg: c,
                kind: Kind::Asif,
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
    })
}

/// Validation scores of every candidate (mean over folds), in candidate order.
pub fn validate_candidates(
    data: &AlignData,
    cfg: &AlignConfig,
    cands: &[Candidate],
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<(Vec<f64>, usize), AlignError> {
    let folds = effective_folds(data.n_pairs(), cfg.auto.folds);
    let teachers = teacher_grid(cfg);
    let mut sums = vec![0.0; cands.len()];
    let total = folds * cands.len();
    let mut step = 0;
    for fold in 0..folds {
        let h = Holdout::fold(data, fold)?;
        // CCA does not depend on s: fit each teacher once per fold, reuse it for every CSA s.
        let mut fitted: Vec<Option<CcaTeacher>> = vec![None; teachers.len()];
        for (i, c) in cands.iter().enumerate() {
            // A candidate that cannot be fitted on this fold (e.g. a degenerate CCA) is out of
            // the running: its score becomes -inf, the search goes on.
            let model: Result<Box<dyn Aligned>, AlignError> = match c.kind {
                Kind::Teacher { t, csa_s } => {
                    if fitted[t].is_none() {
                        fitted[t] = CcaTeacher::fit(&h.train, &teachers[t].1).ok();
                    }
                    match (fitted[t].clone(), csa_s) {
                        (None, _) => Err(AlignError::NotEnoughData(format!("{} failed", c.label))),
                        (Some(t), None) => Ok(Box::new(t)),
                        (Some(t), s) => {
                            Csa::from_teacher(t, s).map(|m| Box::new(m) as Box<dyn Aligned>)
                        }
                    }
                }
                _ => fit_candidate(c, &h.train),
            };
            let s = match model.and_then(|m| h.evaluate(m.as_ref())) {
                Ok(r) => r.mean_mrr(),
                Err(AlignError::Cancelled) => return Err(AlignError::Cancelled),
                Err(_) => f64::NEG_INFINITY,
            };
            sums[i] += s;
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
    Ok((sums.into_iter().map(|s| s / folds as f64).collect(), folds))
}

/// How many disjoint held-out blocks fit in n pairs (at least 1, at most `wanted`), leaving at
/// least 2 pairs to fit on.
pub fn effective_folds(n: usize, wanted: usize) -> usize {
    let v = super::validation::val_size(n);
    let max = n.saturating_sub(2) / v.max(1);
    wanted.clamp(1, max.max(1))
}

/// Fit `auto`: validate every candidate, refit the best on all pairs.
pub fn fit_auto(
    data: &AlignData,
    cfg: &AlignConfig,
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<AutoModel, AlignError> {
    let cands = candidates(cfg);
    let (scores, folds) = validate_candidates(data, cfg, &cands, progress)?;
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
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
        .zip(scores)
        .map(|(c, s)| Scored {
            label: c.label.clone(),
            score: s,
        })
        .collect();
    Ok(AutoModel {
        inner,
        choice,
        scores,
        folds,
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
            json!({ "choice": self.choice.label, "folds": self.folds, "scores": self.scores });
        Ok(st)
    }
}

impl AutoModel {
    pub fn inner_method(&self) -> Result<Method, AlignError> {
        self.choice.method.parse()
    }
}
