//! Score fusion of fitted methods: `score = sum_i w_i * s_i / sd_i`.
//!
//! Why: the closed-form methods make different errors (Procrustes is one rotation, the CCA
//! teacher a global linear map with up to n - 1 directions, ASIF a local relative
//! representation against the paired anchors), so a weighted sum of their scores can rank
//! better than any of its parts (on the reference splits the fusions `auto` offers are within
//! 0.07 points of their best part at n = 25 and above it from n = 50 on, docs/RESULTS.md).
//! Fusing is also a variance reducer: picking one method on a few dozen validation queries
//! pays for the noise of that pick, averaging does not. `sd_i` is the standard deviation
//! of method i's score matrix on the training pairs, so the weights act on comparable
//! quantities whatever each method's score range (cosines in [-1, 1], powered similarities).
//!
//! A fusion is still an [`Aligned`] dot-product model: the image embedding is the
//! concatenation `[w_1 / sd_1 * ex_1, ..., w_k / sd_k * ex_k]` and the text embedding
//! `[ey_1, ..., ey_k]`, so the daemon's index and every evaluation path work unchanged.
//! `auto` offers fusions as candidates ([`crate::auto`]).
use faer::Mat;
use serde_json::json;

use crate::{AlignData, AlignError, Aligned, Matrix, MethodState, linalg};

/// Fitted methods and their fusion weights.
pub struct Blend {
    parts: Vec<Box<dyn Aligned>>,
    /// Weights, normalised to sum to 1.
    pub weights: Vec<f64>,
    /// Multiplier applied to each part's image embedding: `w_i / sd_i`.
    scales: Vec<f64>,
}

impl Blend {
    /// Fuse `parts` fitted on `data` with `weights` (>= 0, not all 0; normalised to sum 1); the
    /// score spreads are measured on the pairs of `data`.
    pub fn new(
        parts: Vec<Box<dyn Aligned>>,
        weights: &[f64],
        data: &AlignData,
    ) -> Result<Self, AlignError> {
        if parts.is_empty() || parts.len() != weights.len() {
            return Err(AlignError::InvalidConfig(format!(
                "a blend needs one weight per part and at least one part ({} parts, {} weights)",
                parts.len(),
                weights.len()
            )));
        }
        let total: f64 = weights.iter().sum();
        if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) || !(total > 0.0) {
            return Err(AlignError::InvalidConfig(format!(
                "blend weights must be finite, >= 0 and not all 0, got {weights:?}"
            )));
        }
        let weights: Vec<f64> = weights.iter().map(|w| w / total).collect();
        let scales = parts
            .iter()
            .zip(&weights)
            .map(|(p, w)| Ok(w / score_sd(p.as_ref(), data)?))
            .collect::<Result<Vec<f64>, AlignError>>()?;
        Ok(Self {
            parts,
            weights,
            scales,
        })
    }

    /// Two-part shorthand: `a` at weight `w`, `b` at `1 - w`.
    pub fn pair(
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
        Self::new(vec![a, b], &[w, 1.0 - w], data)
    }

    /// The blended methods' names, in order.
    pub fn parts(&self) -> Vec<&str> {
        self.parts.iter().map(|p| p.name()).collect()
    }

    /// Rebuild from [`Aligned::export_state`] output: tensors prefixed `p{i}.`, the parts' own
    /// states in `meta.parts`. Two-part checkpoints of the earlier layout (prefixes `a.` / `b.`,
    /// `w`, `scale_a`, `scale_b`) load too. `restore` rebuilds each part (the method registry's).
    pub fn from_state(
        state: &MethodState,
        restore: &dyn Fn(&MethodState) -> Result<Box<dyn Aligned>, AlignError>,
    ) -> Result<Self, AlignError> {
        let meta = &state.meta;
        let bad = |what: &str| AlignError::InvalidConfig(format!("blend checkpoint: {what}"));
        let part = |prefix: &str, m: &serde_json::Value| -> Result<Box<dyn Aligned>, AlignError> {
            let method = m
                .get("method")
                .and_then(|v| v.as_str())
                .ok_or_else(|| bad(&format!("part `{prefix}` unnamed")))?;
            let prefix = format!("{prefix}.");
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
        let nums = |k: &str| -> Result<Vec<f64>, AlignError> {
            meta.get(k)
                .and_then(|v| v.as_array())
                .ok_or_else(|| bad(&format!("lacks `{k}`")))?
                .iter()
                .map(|v| {
                    v.as_f64()
                        .ok_or_else(|| bad(&format!("`{k}` is not numeric")))
                })
                .collect()
        };
        if let Some(list) = meta.get("parts").and_then(|v| v.as_array()) {
            let parts = list
                .iter()
                .enumerate()
                .map(|(i, m)| part(&format!("p{i}"), m))
                .collect::<Result<Vec<_>, _>>()?;
            let (weights, scales) = (nums("weights")?, nums("scales")?);
            if weights.len() != parts.len() || scales.len() != parts.len() {
                return Err(bad("weights / scales do not match the parts"));
            }
            return Ok(Self {
                parts,
                weights,
                scales,
            });
        }
        // The two-part layout written before fusions had more than two parts.
        let num = |k: &str| {
            meta.get(k)
                .and_then(|v| v.as_f64())
                .ok_or_else(|| bad(&format!("lacks `{k}`")))
        };
        let sub = |k: &str| meta.get(k).ok_or_else(|| bad(&format!("lacks part `{k}`")));
        let w = num("w")?;
        Ok(Self {
            parts: vec![part("a", sub("a")?)?, part("b", sub("b")?)?],
            weights: vec![w, 1.0 - w],
            scales: vec![num("scale_a")?, num("scale_b")?],
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

/// Side-by-side concatenation of `blocks`, block i multiplied by `scale[i]`.
fn hcat(blocks: &[Mat<f64>], scale: impl Fn(usize) -> f64) -> Mat<f64> {
    let rows = blocks.first().map_or(0, |b| b.nrows());
    let cols: usize = blocks.iter().map(|b| b.ncols()).sum();
    let mut out = Mat::<f64>::zeros(rows, cols);
    let mut at = 0;
    for (k, b) in blocks.iter().enumerate() {
        let s = scale(k);
        for j in 0..b.ncols() {
            for i in 0..rows {
                out[(i, at + j)] = s * b[(i, j)];
            }
        }
        at += b.ncols();
    }
    out
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
        let blocks = self
            .parts
            .iter()
            .map(|p| p.embed_x_f64(x))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(hcat(&blocks, |k| self.scales[k]))
    }

    fn embed_y_f64(&self, y: &Matrix) -> Result<Mat<f64>, AlignError> {
        let blocks = self
            .parts
            .iter()
            .map(|p| p.embed_y_f64(y))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(hcat(&blocks, |_| 1.0))
    }

    fn export_state(&self) -> Result<MethodState, AlignError> {
        let mut tensors = Vec::new();
        let mut parts = Vec::new();
        for (i, p) in self.parts.iter().enumerate() {
            let st = p.export_state()?;
            for (n, t) in st.tensors {
                tensors.push((format!("p{i}.{n}"), t));
            }
            parts.push(json!({ "method": st.method, "meta": st.meta }));
        }
        Ok(MethodState {
            method: "blend".into(),
            tensors,
            meta: json!({
                "weights": self.weights,
                "scales": self.scales,
                "parts": parts,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asif::Asif;
    use crate::config::{AsifConfig, ProcrustesConfig, TeacherConfig};
    use crate::procrustes::Procrustes;
    use crate::teacher::CcaTeacher;

    fn data() -> (AlignData, Matrix, Matrix) {
        let p = crate::testing::small_platonic(5);
        p.split(60, 50, 40, 2)
    }

    #[test]
    fn blend_scores_are_the_weighted_sum_and_restore() {
        let (d, xt, yt) = data();
        let fit_a = || CcaTeacher::fit(&d, &TeacherConfig::default()).unwrap();
        let fit_b = || Asif::fit(&d, &AsifConfig::default()).unwrap();
        let w = 0.3;
        let blend = Blend::pair(Box::new(fit_a()), Box::new(fit_b()), w, &d).unwrap();
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
        let back = Blend::from_state(&st, &crate::methods::restore).unwrap();
        assert_eq!(back.parts(), vec!["cca", "asif"]);
        let s2 = back.score(&xt, &yt).unwrap();
        let s1 = blend.score(&xt, &yt).unwrap();
        for (u, v) in s1.data.iter().zip(&s2.data) {
            assert!((u - v).abs() < 1e-3 * u.abs().max(1.0), "{u} vs {v}");
        }
        assert!(matches!(
            Blend::pair(Box::new(fit_a()), Box::new(fit_b()), 1.5, &d),
            Err(AlignError::InvalidConfig(_))
        ));
    }

    #[test]
    fn three_way_fusion_normalises_weights_and_restores() {
        let (d, xt, yt) = data();
        let parts = || -> Vec<Box<dyn Aligned>> {
            vec![
                Box::new(Procrustes::fit(&d, &ProcrustesConfig::default()).unwrap()),
                Box::new(CcaTeacher::fit(&d, &TeacherConfig::default()).unwrap()),
                Box::new(
                    Asif::fit(
                        &d,
                        &AsifConfig {
                            centre: true,
                            ..AsifConfig::default()
                        },
                    )
                    .unwrap(),
                ),
            ]
        };
        // Weights 1:1:2 are normalised to 1/4, 1/4, 1/2.
        let f = Blend::new(parts(), &[1.0, 1.0, 2.0], &d).unwrap();
        assert_eq!(f.weights, vec![0.25, 0.25, 0.5]);
        let mut want = Mat::<f64>::zeros(xt.rows, yt.rows);
        for (p, w) in parts().iter().zip(&f.weights) {
            let s = p.score_f64(&xt, &yt).unwrap();
            let sd = score_sd(p.as_ref(), &d).unwrap();
            for i in 0..s.nrows() {
                for j in 0..s.ncols() {
                    want[(i, j)] += w / sd * s[(i, j)];
                }
            }
        }
        let got = f.score_f64(&xt, &yt).unwrap();
        for i in 0..got.nrows() {
            for j in 0..got.ncols() {
                assert!((got[(i, j)] - want[(i, j)]).abs() < 1e-9);
            }
        }
        let back = Blend::from_state(&f.export_state().unwrap(), &crate::methods::restore).unwrap();
        assert_eq!(back.parts(), vec!["procrustes", "cca", "asif_c"]);
        let (s1, s2) = (f.score(&xt, &yt).unwrap(), back.score(&xt, &yt).unwrap());
        for (u, v) in s1.data.iter().zip(&s2.data) {
            assert!((u - v).abs() < 1e-3 * u.abs().max(1.0), "{u} vs {v}");
        }
        // Bad weights are typed errors.
        for w in [
            vec![1.0, 1.0],
            vec![0.0, 0.0, 0.0],
            vec![1.0, -1.0, 1.0],
            vec![f64::NAN, 1.0, 1.0],
        ] {
            assert!(matches!(
                Blend::new(parts(), &w, &d),
                Err(AlignError::InvalidConfig(_))
            ));
        }
    }

    #[test]
    fn two_part_checkpoints_of_the_earlier_layout_still_load() {
        let (d, xt, yt) = data();
        let b = Blend::pair(
            Box::new(CcaTeacher::fit(&d, &TeacherConfig::default()).unwrap()),
            Box::new(Asif::fit(&d, &AsifConfig::default()).unwrap()),
            0.75,
            &d,
        )
        .unwrap();
        // Rewrite the state into the old layout: prefixes a./b., w, scale_a, scale_b.
        let st = b.export_state().unwrap();
        let old = MethodState {
            method: "blend".into(),
            tensors: st
                .tensors
                .iter()
                .map(|(n, t)| {
                    (
                        n.replacen("p0.", "a.", 1).replacen("p1.", "b.", 1),
                        t.clone(),
                    )
                })
                .collect(),
            meta: json!({
                "w": 0.75,
                "scale_a": b.scales[0],
                "scale_b": b.scales[1],
                "a": st.meta["parts"][0],
                "b": st.meta["parts"][1],
            }),
        };
        let back = Blend::from_state(&old, &crate::methods::restore).unwrap();
        assert_eq!(back.weights, vec![0.75, 0.25]);
        // Restored parts carry f32 tensors: equal to f32 rounding, not bit for bit.
        let (s1, s2) = (b.score(&xt, &yt).unwrap(), back.score(&xt, &yt).unwrap());
        let worst = s1
            .data
            .iter()
            .zip(&s2.data)
            .map(|(u, v)| (u - v).abs() / u.abs().max(1.0))
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-3, "largest relative difference {worst}");
    }
}
