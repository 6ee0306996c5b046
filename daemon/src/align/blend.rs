//! Score fusion of two fitted methods: `score = w * s_a / sd_a + (1 - w) * s_b / sd_b`.
//!
//! Why: the closed-form methods make different errors (the CCA teacher is a global linear map,
//! ASIF a local relative representation against the paired anchors), so a weighted sum of their
//! scores can rank better than either. `sd_a`, `sd_b` are the standard deviations of each
//! method's score matrix on the training pairs, so `w` weighs comparable quantities whatever
//! the methods' score ranges (cosines in [-1, 1] for CCA, powered similarities for ASIF).
//!
//! A blend is still an [`Aligned`] dot-product model: the image embedding is the concatenation
//! `[w / sd_a * ex_a, (1 - w) / sd_b * ex_b]` and the text embedding `[ey_a, ey_b]`, so the
//! daemon's index and every evaluation path work unchanged. `auto` offers blends as candidates.
use faer::Mat;
use serde_json::json;

use super::{AlignData, AlignError, Aligned, Matrix, MethodState, linalg};

/// Two fitted methods and their fusion weights.
pub struct Blend {
    a: Box<dyn Aligned>,
    b: Box<dyn Aligned>,
    /// Weight of `a` in [0, 1]; `b` gets `1 - w`.
    pub w: f64,
    /// Multipliers applied to each method's image embedding: `w / sd_a`, `(1 - w) / sd_b`.
    scale_a: f64,
    scale_b: f64,
}

impl Blend {
    /// Blend two methods fitted on `data`; the score spreads are measured on its pairs.
    pub fn new(
        a: Box<dyn Aligned>,
        b: Box<dyn Aligned>,
        w: f64,
        data: &AlignData,
    ) -> Result<Self, AlignError> {
        if !(w.is_finite() && (0.0..=1.0).contains(&w)) {
            return Err(AlignError::InvalidConfig(format!(
                "blend weight must be in [0, 1], got {w}"
            )));
        }
        let sd_a = score_sd(a.as_ref(), data)?;
        let sd_b = score_sd(b.as_ref(), data)?;
        Ok(Self {
            a,
            b,
            w,
            scale_a: w / sd_a,
            scale_b: (1.0 - w) / sd_b,
        })
    }

    /// The two blended methods' names.
    pub fn parts(&self) -> (&str, &str) {
        (self.a.name(), self.b.name())
    }

    /// Rebuild from [`Aligned::export_state`] output: tensors prefixed `a.` / `b.`, the parts'
    /// own states in `meta`. `restore` rebuilds each part (it is the method registry's).
    pub fn from_state(
        state: &MethodState,
        restore: &dyn Fn(&MethodState) -> Result<Box<dyn Aligned>, AlignError>,
    ) -> Result<Self, AlignError> {
        let meta = &state.meta;
        let num = |k: &str| {
            meta.get(k)
                .and_then(|v| v.as_f64())
                .ok_or_else(|| AlignError::InvalidConfig(format!("blend checkpoint lacks `{k}`")))
        };
        let part = |p: &str| -> Result<Box<dyn Aligned>, AlignError> {
            let m = meta.get(p).ok_or_else(|| {
                AlignError::InvalidConfig(format!("blend checkpoint lacks part `{p}`"))
            })?;
            let method = m
                .get("method")
                .and_then(|v| v.as_str())
                .ok_or_else(|| AlignError::InvalidConfig(format!("blend part `{p}` unnamed")))?;
            let prefix = format!("{p}.");
            let sub = MethodState {
                method: method.to_string(),
                tensors: state
                    .tensors
                    .iter()
                    .filter_map(|(n, t)| {
                        n.strip_prefix(&prefix).map(|s| (s.to_string(), t.clone()))
                    })
                    .collect(),
                meta: m.get("meta").cloned().unwrap_or(serde_json::Value::Null),
            };
            restore(&sub)
        };
        Ok(Self {
            a: part("a")?,
            b: part("b")?,
            w: num("w")?,
            scale_a: num("scale_a")?,
            scale_b: num("scale_b")?,
        })
    }
}

/// Standard deviation of the score matrix of `m` on the pairs of `data` (all n x n entries).
fn score_sd(m: &dyn Aligned, data: &AlignData) -> Result<f64, AlignError> {
    let s = m.score_f64(&data.xp, &data.yp)?;
    let (r, c) = (s.nrows(), s.ncols());
    let cnt = (r * c) as f64;
    let mut sum = 0.0;
    let mut sq = 0.0;
    for i in 0..r {
        for j in 0..c {
            let v = s[(i, j)];
            sum += v;
            sq += v * v;
        }
    }
    let mean = sum / cnt;
    let sd = (sq / cnt - mean * mean).max(0.0).sqrt();
    if !(sd.is_finite() && sd > 0.0) {
        return Err(AlignError::Numerical(format!(
            "blend: the scores of `{}` on the pairs have no spread (sd = {sd})",
            m.name()
        )));
    }
    Ok(sd)
}

fn hcat(a: Mat<f64>, sa: f64, b: Mat<f64>, sb: f64) -> Mat<f64> {
    let (ca, cb) = (a.ncols(), b.ncols());
    Mat::from_fn(a.nrows(), ca + cb, |i, j| {
        if j < ca {
            sa * a[(i, j)]
        } else {
            sb * b[(i, j - ca)]
        }
    })
}

impl Aligned for Blend {
    fn name(&self) -> &str {
        "blend"
    }

    fn embed_x(&self, x: &Matrix) -> Result<Matrix, AlignError> {
        Ok(linalg::from_faer(self.embed_x_f64(x)?.as_ref()))
    }

    fn embed_y(&self, y: &Matrix) -> Result<Matrix, AlignError> {
        Ok(linalg::from_faer(self.embed_y_f64(y)?.as_ref()))
    }

    fn embed_x_f64(&self, x: &Matrix) -> Result<Mat<f64>, AlignError> {
        Ok(hcat(
            self.a.embed_x_f64(x)?,
            self.scale_a,
            self.b.embed_x_f64(x)?,
            self.scale_b,
        ))
    }

    fn embed_y_f64(&self, y: &Matrix) -> Result<Mat<f64>, AlignError> {
        Ok(hcat(
            self.a.embed_y_f64(y)?,
            1.0,
            self.b.embed_y_f64(y)?,
            1.0,
        ))
    }

    fn export_state(&self) -> Result<MethodState, AlignError> {
        let sa = self.a.export_state()?;
        let sb = self.b.export_state()?;
        let mut tensors = Vec::new();
        for (p, st) in [("a", &sa), ("b", &sb)] {
            for (n, t) in &st.tensors {
                tensors.push((format!("{p}.{n}"), t.clone()));
            }
        }
        Ok(MethodState {
            method: "blend".into(),
            tensors,
            meta: json!({
                "w": self.w,
                "scale_a": self.scale_a,
                "scale_b": self.scale_b,
                "a": { "method": sa.method, "meta": sa.meta },
                "b": { "method": sb.method, "meta": sb.meta },
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::asif::Asif;
    use crate::align::config::{AsifConfig, TeacherConfig};
    use crate::align::synthetic::{Platonic, PlatonicSpec};
    use crate::align::teacher::CcaTeacher;

    #[test]
    fn blend_scores_are_the_weighted_sum_and_restore() {
        let p = Platonic::new(PlatonicSpec {
            latent: 6,
            hidden: 32,
            dx: 24,
            dy: 20,
            noise: 0.1,
            seed: 5,
        })
        .unwrap();
        let (d, xt, yt) = p.split(60, 50, 40, 2);
        let fit_a = || CcaTeacher::fit(&d, &TeacherConfig::default()).unwrap();
        let fit_b = || Asif::fit(&d, &AsifConfig::default()).unwrap();
        let w = 0.3;
        let blend = Blend::new(Box::new(fit_a()), Box::new(fit_b()), w, &d).unwrap();
        let sa = fit_a().score_f64(&xt, &yt).unwrap();
        let sb = fit_b().score_f64(&xt, &yt).unwrap();
        let sd_a = score_sd(&fit_a(), &d).unwrap();
        let sd_b = score_sd(&fit_b(), &d).unwrap();
        let s = blend.score_f64(&xt, &yt).unwrap();
        for i in 0..s.nrows() {
            for j in 0..s.ncols() {
                let want = w * sa[(i, j)] / sd_a + (1.0 - w) * sb[(i, j)] / sd_b;
                assert!((s[(i, j)] - want).abs() < 1e-9, "{} vs {want}", s[(i, j)]);
            }
        }
        let st = blend.export_state().unwrap();
        let back = Blend::from_state(&st, &crate::align::methods::restore).unwrap();
        assert_eq!(back.parts(), ("cca", "asif"));
        let s2 = back.score(&xt, &yt).unwrap();
        let s1 = blend.score(&xt, &yt).unwrap();
        for (u, v) in s1.data.iter().zip(&s2.data) {
            assert!((u - v).abs() < 1e-3 * u.abs().max(1.0), "{u} vs {v}");
        }
        assert!(matches!(
            Blend::new(Box::new(fit_a()), Box::new(fit_b()), 1.5, &d),
            Err(AlignError::InvalidConfig(_))
        ));
    }
}
