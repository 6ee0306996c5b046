//! The method registry: every method by name, one `fit` entry point with progress and
//! cancellation, and `restore` to rebuild a fitted method from its exported state (checkpoints).
use std::fmt;
use std::ops::ControlFlow;
use std::str::FromStr;

use crate::asif::Asif;
use crate::config::HeadInit;
use crate::csa::Csa;
use crate::procrustes::Procrustes;
use crate::teacher::CcaTeacher;
use crate::train::{StudentHeads, fit_student};
use crate::{AlignConfig, AlignData, AlignError, Aligned, MethodState, auto};

/// Every method the engine can fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Orthogonal Procrustes after centring.
    Procrustes,
    /// Procrustes after shrunk ZCA whitening.
    ProcrustesW,
    /// The ridge-CCA teacher alone (cosine in CCA space).
    Cca,
    /// Correlation-weighted CCA over the top-s components.
    Csa,
    /// Relative representations against the paired anchors.
    Asif,
    /// ASIF on features centred on the paired means.
    AsifC,
    /// Pairs-only SigLIP heads (random init, alpha = 0).
    Siglip,
    /// SigLIP heads initialised from the teacher, alpha = 0 (the reference's `siglip_tinit`).
    SiglipTinit,
    /// SOTAlign: teacher-initialised heads, SigLIP + alpha * KLOT on unpaired batches.
    Sotalign,
    /// Validation-chosen method and hyper-parameters (see [`crate::auto`]).
    Auto,
}

impl Method {
    pub const ALL: [Method; 10] = [
        Method::Procrustes,
        Method::ProcrustesW,
        Method::Cca,
        Method::Csa,
        Method::Asif,
        Method::AsifC,
        Method::Siglip,
        Method::SiglipTinit,
        Method::Sotalign,
        Method::Auto,
    ];

    /// Closed-form (deterministic, no training loop).
    pub fn is_closed_form(self) -> bool {
        !matches!(
            self,
            Method::Siglip | Method::SiglipTinit | Method::Sotalign | Method::Auto
        )
    }

    /// Whether fitting this method with `cfg` runs a training loop (what the step, head-size
    /// and batch caps of a daemon bound): the trained methods, and `auto` when its trained
    /// candidates are on.
    pub fn trains(self, cfg: &crate::AlignConfig) -> bool {
        match self {
            Method::Auto => cfg.auto.trained,
            m => !m.is_closed_form(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Procrustes => "procrustes",
            Method::ProcrustesW => "procrustes_w",
            Method::Cca => "cca",
            Method::Csa => "csa",
            Method::Asif => "asif",
            Method::AsifC => "asif_c",
            Method::Siglip => "siglip",
            Method::SiglipTinit => "siglip_tinit",
            Method::Sotalign => "sotalign",
            Method::Auto => "auto",
        }
    }

    /// Comma-separated list of every known name (for errors and `--help`).
    pub fn known() -> String {
        Self::ALL
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = AlignError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase().replace('-', "_");
        let alias = match t.as_str() {
            "teacher" | "ridge_cca" => "cca",
            other => other,
        };
        Self::ALL
            .iter()
            .copied()
            .find(|m| m.name() == alias)
            .ok_or_else(|| AlignError::UnknownMethod(s.to_string(), Self::known()))
    }
}

pub use crate::progress::{Phase, Progress};

/// Report progress; `Break` from the callback cancels the fit.
pub(crate) fn report(
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
    phase: Phase,
    stage: &str,
    step: usize,
    total: usize,
    loss: Option<f64>,
) -> Result<(), AlignError> {
    match progress(&Progress {
        phase,
        stage: stage.to_string(),
        step,
        total,
        loss,
    }) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(AlignError::Cancelled),
    }
}

/// Fit `method` on `data` with `cfg`. The callback sees progress and may cancel (`Break`), which
/// returns [`AlignError::Cancelled`].
pub fn fit(
    method: Method,
    data: &AlignData,
    cfg: &AlignConfig,
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<Box<dyn Aligned>, AlignError> {
    data.validate()?;
    if method == Method::Auto {
        return auto::fit_auto(data, cfg, progress).map(|a| Box::new(a) as Box<dyn Aligned>);
    }
    if matches!(
        method,
        Method::Siglip | Method::SiglipTinit | Method::Sotalign
    ) {
        return fit_trained(method, data, cfg, progress);
    }
    let stage = format!("fit {method}");
    report(progress, Phase::Fit, &stage, 0, 1, None)?;
    let m: Box<dyn Aligned> = match method {
        Method::Procrustes => {
            let mut c = cfg.procrustes.clone();
            c.whiten = false;
            Box::new(Procrustes::fit(data, &c)?)
        }
        Method::ProcrustesW => {
            let mut c = cfg.procrustes.clone();
            c.whiten = true;
            Box::new(Procrustes::fit(data, &c)?)
        }
        Method::Cca => Box::new(CcaTeacher::fit(data, &cfg.teacher)?),
        Method::Csa => Box::new(Csa::fit(data, cfg)?),
        Method::Asif => {
            let mut c = cfg.asif.clone();
            c.centre = false;
            Box::new(Asif::fit(data, &c)?)
        }
        Method::AsifC => {
            let mut c = cfg.asif.clone();
            c.centre = true;
            Box::new(Asif::fit(data, &c)?)
        }
        Method::Siglip | Method::SiglipTinit | Method::Sotalign | Method::Auto => {
            return Err(AlignError::InvalidConfig(format!(
                "{method} is not closed-form"
            )));
        }
    };
    report(progress, Phase::Fit, &stage, 1, 1, None)?;
    Ok(m)
}

/// The student-head methods (engine-train's `fit_student`), with the teacher they need.
fn fit_trained(
    method: Method,
    data: &AlignData,
    cfg: &AlignConfig,
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<Box<dyn Aligned>, AlignError> {
    let mut c = cfg.clone();
    match method {
        Method::Siglip => {
            c.klot.alpha = 0.0;
            c.heads.init = HeadInit::Random;
        }
        Method::SiglipTinit => {
            c.klot.alpha = 0.0;
            c.heads.init = HeadInit::Teacher;
        }
        _ => {
            if !(c.klot.alpha > 0.0) {
                return Err(AlignError::InvalidConfig(format!(
                    "sotalign needs klot.alpha > 0 (got {}); alpha = 0 is `siglip` / `siglip_tinit`",
                    c.klot.alpha
                )));
            }
        }
    }
    let needs_teacher = c.klot.alpha > 0.0 || c.heads.init == HeadInit::Teacher;
    let teacher = if needs_teacher {
        report(progress, Phase::Fit, "fit teacher", 0, 1, None)?;
        let t = CcaTeacher::fit(data, &c.teacher)?;
        report(progress, Phase::Fit, "fit teacher", 1, 1, None)?;
        Some(t)
    } else {
        None
    };
    let heads = fit_student(data, teacher.as_ref(), &c, progress)?;
    Ok(Box::new(heads))
}

/// Fit with no progress reporting.
pub fn fit_quiet(
    method: Method,
    data: &AlignData,
    cfg: &AlignConfig,
) -> Result<Box<dyn Aligned>, AlignError> {
    fit(method, data, cfg, &mut |_| ControlFlow::Continue(()))
}

/// Rebuild a fitted method from its exported state (the inverse of [`Aligned::export_state`]).
pub fn restore(state: &MethodState) -> Result<Box<dyn Aligned>, AlignError> {
    Ok(match state.method.as_str() {
        "procrustes" | "procrustes_w" => Box::new(Procrustes::from_state(state)?),
        "cca" => Box::new(CcaTeacher::from_state(state)?),
        "csa" => Box::new(Csa::from_state(state)?),
        "asif" | "asif_c" => Box::new(Asif::from_state(state)?),
        "siglip" | "siglip_tinit" | "sotalign" => Box::new(StudentHeads::from_state(state)?),
        "blend" => Box::new(crate::blend::Blend::from_state(state, &restore)?),
        other => {
            return Err(AlignError::UnknownMethod(
                other.to_string(),
                Method::known(),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Matrix;

    fn toy() -> AlignData {
        // 12 pairs in 4-d / 3-d with a noisy linear relation.
        let xs: Vec<f32> = (0..48)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let x = Matrix::from_vec(12, 4, xs).unwrap();
        let mut y = Matrix::zeros(12, 3);
        for r in 0..12 {
            let a = x.row(r);
            y.row_mut(r).copy_from_slice(&[
                a[0] + 0.5 * a[1],
                a[2] - a[3],
                a[1] + 0.1 * (r as f32).sin(),
            ]);
        }
        AlignData::from_pairs(x, y)
    }

    /// Serving embeds a whole store in row blocks on the rayon pool (`Matrix::par_map_rows`):
    /// that is only right because every closed-form method (and `auto`'s fusions) embeds row
    /// by row. Bit-equal to one call, for odd block sizes.
    #[test]
    fn closed_form_embeddings_are_row_wise() {
        use rand::SeedableRng;
        let p = crate::testing::small_platonic(4);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (xp, yp) = p.pairs(60, &mut rng);
        let (xu, _) = p.pairs(37, &mut rng);
        let (_, yu) = p.pairs(41, &mut rng);
        let mut data = AlignData::from_pairs(xp, yp);
        data.xu = xu;
        data.yu = yu;
        data.yu_groups = None;
        let cfg = AlignConfig::default();
        // `auto` serves a fusion of closed-form models first: included.
        for m in Method::ALL
            .into_iter()
            .filter(|m| m.is_closed_form() || *m == Method::Auto)
        {
            let model = fit_quiet(m, &data, &cfg).unwrap();
            for (x, side) in [(&data.xu, "x"), (&data.yu, "y")] {
                let f = |b: &Matrix| match side {
                    "x" => model.embed_x(b),
                    _ => model.embed_y(b),
                };
                let whole = f(x).unwrap();
                for chunk in [1, 7, 16] {
                    assert_eq!(
                        x.par_map_rows(chunk, &f).unwrap(),
                        whole,
                        "{m} {side} {chunk}"
                    );
                }
            }
        }
    }

    #[test]
    fn names_roundtrip_and_unknown_is_typed() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
        }
        assert_eq!(
            "Procrustes-W".parse::<Method>().unwrap(),
            Method::ProcrustesW
        );
        match "sinkhorn".parse::<Method>() {
            Err(AlignError::UnknownMethod(name, known)) => {
                assert_eq!(name, "sinkhorn");
                assert!(known.contains("procrustes_w") && known.contains("asif_c"));
            }
            other => panic!("expected UnknownMethod, got {other:?}"),
        }
    }

    #[test]
    fn every_method_restores_to_the_same_scores() {
        let data = toy();
        let cfg = AlignConfig::default();
        for m in Method::ALL.into_iter().filter(|&m| m.is_closed_form()) {
            let fitted = fit_quiet(m, &data, &cfg).unwrap();
            let back = restore(&fitted.export_state().unwrap()).unwrap();
            assert_eq!(back.name(), fitted.name());
            let a = fitted.score(&data.xp, &data.yp).unwrap();
            let b = back.score(&data.xp, &data.yp).unwrap();
            for (u, v) in a.data.iter().zip(&b.data) {
                assert!((u - v).abs() < 1e-4, "{m}: {u} vs {v}");
            }
        }
    }

    #[test]
    fn auto_picks_the_validated_best_and_restores_as_it() {
        let data = toy();
        let mut cfg = AlignConfig::default();
        // Plain argmax here; the tie rule has its own test in `auto`.
        cfg.auto.tie_se = 0.0;
        let mut seen = 0;
        let m = fit(Method::Auto, &data, &cfg, &mut |p| {
            seen += 1;
            assert!(p.step <= p.total);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert!(seen > 10, "progress reported per candidate");
        let st = m.export_state().unwrap();
        let auto = &st.meta["auto"];
        let scores = auto["scores"].as_array().unwrap();
        let best = scores
            .iter()
            .map(|s| s["score"].as_f64().unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        let chosen = scores
            .iter()
            .find(|s| s["label"] == auto["choice"])
            .unwrap();
        assert_eq!(chosen["score"].as_f64().unwrap(), best);
        // The checkpoint restores as the chosen method with the same scores.
        let back = restore(&st).unwrap();
        let a = m.score(&data.xp, &data.yp).unwrap();
        let b = back.score(&data.xp, &data.yp).unwrap();
        for (u, v) in a.data.iter().zip(&b.data) {
            assert!((u - v).abs() < 1e-4);
        }
    }

    #[test]
    fn break_cancels() {
        let data = toy();
        let r = fit(Method::Cca, &data, &AlignConfig::default(), &mut |_| {
            ControlFlow::Break(())
        });
        assert!(matches!(r, Err(AlignError::Cancelled)));
    }
}
