//! Stage 1 of SOTAlign: the linear teacher, a ridge-regularised CCA fitted on the pairs only.
//!
//! Exactly as the method description and `tests/fixtures/reference/PROTOCOL.md`:
//! 1. L2-normalise every feature row; centre each modality on its *paired* means.
//! 2. Biased covariances `Cxx = Zx^T Zx / n + lambda I`, `Cyy = Zy^T Zy / n + lambda I`,
//!    `Cxy = Zx^T Zy / n` (with `lambda_relative`, the ridge is `lambda * tr(C) / d`, i.e.
//!    scaled to the features' own variance).
//! 3. `T = Cxx^-1/2 Cxy Cyy^-1/2 = U S V^T`; keep the k leading components with
//!    `S > rel_tol * S_1`, `k <= n - 1` (a centred set of n pairs spans at most n - 1
//!    directions) and `k <= max_components`.
//! 4. `Wx = Cxx^-1/2 U_k`, `Wy = Cyy^-1/2 V_k`; the canonical correlations are `rho = S_k`.
//!
//! The teacher affinity is `K*(x, y) = cosine((x - mx) Wx, (y - my) Wy)`: [`Aligned::embed_x`]
//! returns the L2-normalised canonical coordinates so that the dot product is that cosine.
//! All linear algebra is f64 (see [`crate::linalg`]).
use faer::Mat;
use serde_json::json;

use crate::config::TeacherConfig;
use crate::linalg::{self, to_faer_normalized};
use crate::{AlignData, AlignError, Aligned, Matrix, MethodState};

/// A fitted ridge-CCA teacher.
#[derive(Debug, Clone)]
pub struct CcaTeacher {
    /// Paired means of the L2-normalised image / text features.
    pub mean_x: Vec<f64>,
    pub mean_y: Vec<f64>,
    /// Projections (dx x k) and (dy x k).
    pub wx: Mat<f64>,
    pub wy: Mat<f64>,
    /// Canonical correlations of the kept components, non-increasing.
    pub rho: Vec<f64>,
    /// The ridge actually added to Cxx and Cyy (differs from `lambda` when relative).
    pub ridge_x: f64,
    pub ridge_y: f64,
}

impl CcaTeacher {
    /// Fit on the pairs of `data` (the unpaired pools are not used by the teacher).
    pub fn fit(data: &AlignData, cfg: &TeacherConfig) -> Result<CcaTeacher, AlignError> {
        data.validate()?;
        if !(cfg.lambda.is_finite() && cfg.lambda >= 0.0) {
            return Err(AlignError::InvalidConfig(format!(
                "teacher lambda must be finite and >= 0, got {}",
                cfg.lambda
            )));
        }
        if !(cfg.rel_tol.is_finite() && cfg.rel_tol >= 0.0) {
            return Err(AlignError::InvalidConfig(format!(
                "teacher rel_tol must be finite and >= 0, got {}",
                cfg.rel_tol
            )));
        }
        let n = data.n_pairs();
        let mut zx = to_faer_normalized(&data.xp);
        let mut zy = to_faer_normalized(&data.yp);
        let mean_x = linalg::col_means(zx.as_ref());
        let mean_y = linalg::col_means(zy.as_ref());
        linalg::centre(&mut zx, &mean_x);
        linalg::centre(&mut zy, &mean_y);

        let mut cxy = zx.transpose() * &zy;
        cxy *= faer::Scale(1.0 / n as f64);
        // tr(Z^T Z / n) without forming the d x d covariance.
        let tr = |z: &Mat<f64>| z.as_ref().squared_norm_l2() / n as f64;
        let ridge_x = ridge(cfg, tr(&zx), zx.ncols());
        let ridge_y = ridge(cfg, tr(&zy), zy.ncols());
        let ix = linalg::ridge_inv_sqrt(zx.as_ref(), ridge_x, "image covariance + ridge")?;
        let iy = linalg::ridge_inv_sqrt(zy.as_ref(), ridge_y, "text covariance + ridge")?;
        let t = &ix * &cxy * &iy;
        let svd = linalg::thin_svd(t.as_ref(), "whitened cross-covariance")?;

        let mut k = linalg::numerical_rank(&svd.s, cfg.rel_tol).min(n - 1);
        if let Some(cap) = cfg.max_components {
            k = k.min(cap);
        }
        if k == 0 {
            return Err(AlignError::NotEnoughData(
                "the pairs carry no cross-modal correlation (all canonical correlations are 0)"
                    .into(),
            ));
        }
        let wx = &ix * svd.u.subcols(0, k);
        let wy = &iy * svd.v.subcols(0, k);
        Ok(CcaTeacher {
            mean_x,
            mean_y,
            wx,
            wy,
            rho: svd.s[..k].to_vec(),
            ridge_x,
            ridge_y,
        })
    }

    /// Number of kept canonical components.
    pub fn k(&self) -> usize {
        self.rho.len()
    }

    /// The same teacher keeping only its first `cap` components (all when `None` or larger):
    /// what a fit with `max_components = cap` computes, since the cap only truncates the
    /// singular vectors of the same whitened cross-covariance. Lets a caller compare caps with
    /// one fit instead of one per cap.
    pub fn truncated(&self, cap: Option<usize>) -> CcaTeacher {
        let k = cap.map_or(self.k(), |c| c.max(1).min(self.k()));
        CcaTeacher {
            mean_x: self.mean_x.clone(),
            mean_y: self.mean_y.clone(),
            wx: self.wx.subcols(0, k).to_owned(),
            wy: self.wy.subcols(0, k).to_owned(),
            rho: self.rho[..k].to_vec(),
            ridge_x: self.ridge_x,
            ridge_y: self.ridge_y,
        }
    }

    pub fn dx(&self) -> usize {
        self.wx.nrows()
    }

    pub fn dy(&self) -> usize {
        self.wy.nrows()
    }

    /// Canonical coordinates of image features in f64: normalise rows, centre, project
    /// (NOT L2-normalised after).
    pub fn coords_x_f64(&self, x: &Matrix) -> Result<Mat<f64>, AlignError> {
        project(x, &self.mean_x, &self.wx, "image")
    }

    /// Canonical coordinates of text features in f64 (see [`Self::coords_x_f64`]).
    pub fn coords_y_f64(&self, y: &Matrix) -> Result<Mat<f64>, AlignError> {
        project(y, &self.mean_y, &self.wy, "text")
    }

    /// Canonical coordinates of raw image features (n x k): normalised rows, centred on the
    /// paired mean, projected by Wx; not L2-normalised afterwards.
    pub fn coords_x(&self, x: &Matrix) -> Result<Matrix, AlignError> {
        Ok(linalg::from_faer(self.coords_x_f64(x)?.as_ref()))
    }

    /// Canonical coordinates of raw text features (n x k), see [`Self::coords_x`].
    pub fn coords_y(&self, y: &Matrix) -> Result<Matrix, AlignError> {
        Ok(linalg::from_faer(self.coords_y_f64(y)?.as_ref()))
    }

    /// Rebuild from an exported state (see [`Aligned::export_state`]).
    pub fn from_state(state: &MethodState) -> Result<CcaTeacher, AlignError> {
        let mean_x = row_vec(state.tensor("mean_x")?);
        let mean_y = row_vec(state.tensor("mean_y")?);
        let wx = linalg::to_faer(state.tensor("wx")?);
        let wy = linalg::to_faer(state.tensor("wy")?);
        let rho = row_vec(state.tensor("rho")?);
        let k = rho.len();
        if wx.ncols() != k
            || wy.ncols() != k
            || wx.nrows() != mean_x.len()
            || wy.nrows() != mean_y.len()
        {
            return Err(AlignError::InvalidConfig(format!(
                "inconsistent CCA checkpoint: wx {}x{}, wy {}x{}, k {k}, dx {}, dy {}",
                wx.nrows(),
                wx.ncols(),
                wy.nrows(),
                wy.ncols(),
                mean_x.len(),
                mean_y.len()
            )));
        }
        let ridge_x = state
            .meta
            .get("ridge_x")
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NAN);
        let ridge_y = state
            .meta
            .get("ridge_y")
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NAN);
        Ok(CcaTeacher {
            mean_x,
            mean_y,
            wx,
            wy,
            rho,
            ridge_x,
            ridge_y,
        })
    }

    /// The exported state under a given method name (the teacher's state is reused by CSA).
    pub fn state_named(&self, method: &str) -> MethodState {
        MethodState {
            method: method.to_string(),
            tensors: vec![
                ("mean_x".into(), linalg::vec_to_row(&self.mean_x)),
                ("mean_y".into(), linalg::vec_to_row(&self.mean_y)),
                ("wx".into(), linalg::from_faer(self.wx.as_ref())),
                ("wy".into(), linalg::from_faer(self.wy.as_ref())),
                ("rho".into(), linalg::vec_to_row(&self.rho)),
            ],
            meta: json!({ "k": self.k(), "ridge_x": self.ridge_x, "ridge_y": self.ridge_y }),
        }
    }
}

/// The ridge for one covariance: absolute, or relative to its mean eigenvalue tr(C)/d.
fn ridge(cfg: &TeacherConfig, trace: f64, d: usize) -> f64 {
    if cfg.lambda_relative {
        cfg.lambda * trace / d.max(1) as f64
    } else {
        cfg.lambda
    }
}

fn row_vec(m: &Matrix) -> Vec<f64> {
    m.data.iter().map(|&v| v as f64).collect()
}

/// normalise rows -> subtract mean -> multiply by W.
fn project(x: &Matrix, mean: &[f64], w: &Mat<f64>, what: &str) -> Result<Mat<f64>, AlignError> {
    linalg::check_input(x, w.nrows(), what)?;
    let mut z = to_faer_normalized(x);
    linalg::centre(&mut z, mean);
    Ok(&z * w)
}

impl Aligned for CcaTeacher {
    fn name(&self) -> &str {
        "cca"
    }

    fn embed_x(&self, x: &Matrix) -> Result<Matrix, AlignError> {
        Ok(linalg::from_faer(self.embed_x_f64(x)?.as_ref()))
    }

    fn embed_y(&self, y: &Matrix) -> Result<Matrix, AlignError> {
        Ok(linalg::from_faer(self.embed_y_f64(y)?.as_ref()))
    }

    /// L2-normalised canonical coordinates: the dot product is the teacher affinity K*.
    fn embed_x_f64(&self, x: &Matrix) -> Result<Mat<f64>, AlignError> {
        let mut c = self.coords_x_f64(x)?;
        linalg::normalize_rows(&mut c);
        Ok(c)
    }

    fn embed_y_f64(&self, y: &Matrix) -> Result<Mat<f64>, AlignError> {
        let mut c = self.coords_y_f64(y)?;
        linalg::normalize_rows(&mut c);
        Ok(c)
    }

    fn export_state(&self) -> Result<MethodState, AlignError> {
        Ok(self.state_named("cca"))
    }
}

/// The student training loop reads the teacher through this trait (canonical coordinates for
/// the head init, normalised embeddings for K*).
impl crate::train::StudentTeacher for CcaTeacher {
    fn components(&self) -> usize {
        self.k()
    }
    fn coords_x(&self, x: &Matrix) -> Result<Matrix, AlignError> {
        CcaTeacher::coords_x(self, x)
    }
    fn coords_y(&self, y: &Matrix) -> Result<Matrix, AlignError> {
        CcaTeacher::coords_y(self, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    fn gauss(rng: &mut ChaCha8Rng, r: usize, c: usize) -> Mat<f64> {
        Mat::from_fn(r, c, |_, _| StandardNormal.sample(rng))
    }

    /// A (l x d) matrix with orthonormal rows, from a QR of a Gaussian matrix.
    fn orthonormal_rows(rng: &mut ChaCha8Rng, l: usize, d: usize) -> Mat<f64> {
        let g = gauss(rng, d, l);
        let q = g.qr().compute_thin_Q();
        q.transpose().to_owned()
    }

    fn to_matrix(m: &Mat<f64>) -> Matrix {
        linalg::from_faer(m.as_ref())
    }

    /// Pairs from a shared latent z (n x l): x = (z/|z|) A + noise, y = (z/|z|) B + noise with A,
    /// B orthonormal-row maps into different dimensions, so after row normalisation the two views
    /// are (up to noise) linear images of the same unit vector.
    fn planted(
        rng: &mut ChaCha8Rng,
        n: usize,
        a: &Mat<f64>,
        b: &Mat<f64>,
        noise: f64,
    ) -> (Matrix, Matrix) {
        let mut z = gauss(rng, n, a.nrows());
        linalg::normalize_rows(&mut z);
        let mut x = &z * a;
        let mut y = &z * b;
        for i in 0..n {
            for j in 0..x.ncols() {
                x[(i, j)] += noise * rng.sample::<f64, _>(StandardNormal);
            }
            for j in 0..y.ncols() {
                y[(i, j)] += noise * rng.sample::<f64, _>(StandardNormal);
            }
        }
        (to_matrix(&x), to_matrix(&y))
    }

    #[test]
    fn truncating_equals_fitting_with_the_cap() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (dx, dy, l) = (12, 9, 3);
        let a = orthonormal_rows(&mut rng, l, dx);
        let b = orthonormal_rows(&mut rng, l, dy);
        let (xp, yp) = planted(&mut rng, 60, &a, &b, 0.2);
        let data = AlignData::from_pairs(xp, yp);
        let full = CcaTeacher::fit(&data, &TeacherConfig::default()).unwrap();
        for cap in [1usize, 4, 100] {
            let capped = CcaTeacher::fit(
                &data,
                &TeacherConfig {
                    max_components: Some(cap),
                    ..TeacherConfig::default()
                },
            )
            .unwrap();
            let t = full.truncated(Some(cap));
            assert_eq!(t.k(), capped.k());
            assert_eq!(t.rho, capped.rho);
            let (ex, ey) = (
                t.embed_x_f64(&data.xp).unwrap(),
                capped.embed_x_f64(&data.xp).unwrap(),
            );
            let d = (0..ex.nrows())
                .flat_map(|i| (0..ex.ncols()).map(move |j| (i, j)))
                .fold(0f64, |m, (i, j)| m.max((ex[(i, j)] - ey[(i, j)]).abs()));
            assert!(d < 1e-12, "cap {cap}: max difference {d}");
        }
        assert_eq!(full.truncated(None).k(), full.k());
    }

    #[test]
    fn recovers_planted_linear_relation() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (l, dx, dy) = (16, 48, 32);
        let a = orthonormal_rows(&mut rng, l, dx);
        let b = orthonormal_rows(&mut rng, l, dy);
        let (xp, yp) = planted(&mut rng, 300, &a, &b, 0.01);
        let (xt, yt) = planted(&mut rng, 200, &a, &b, 0.01);
        let cfg = TeacherConfig {
            lambda: 1e-3,
            ..TeacherConfig::default()
        };
        let t = CcaTeacher::fit(&AlignData::from_pairs(xp, yp), &cfg).unwrap();
        // The l planted directions are strongly correlated, the remaining ones are noise.
        assert!(t.rho[l - 1] > 0.9, "rho = {:?}", &t.rho[..l]);
        let s = t.score_f64(&xt, &yt).unwrap();
        let mut hits = 0;
        for i in 0..200 {
            let best = (0..200)
                .max_by(|&p, &q| s[(i, p)].total_cmp(&s[(i, q)]))
                .unwrap();
            hits += usize::from(best == i);
        }
        let r1 = hits as f64 / 200.0;
        assert!(r1 > 0.99, "image->text R@1 = {r1}");
    }

    /// Invariants that follow from the construction Wx = Cxx^-1/2 U:
    /// - Wx^T (Czx + ridge I) Wx = U^T U = I, so the covariance of the paired canonical variates
    ///   A = Zx Wx is exactly `I - ridge Wx^T Wx` (identity minus the ridge effect);
    /// - A^T B / n = U^T T V = diag(rho): the variates of the two sides are pairwise correlated
    ///   with the canonical correlations and uncorrelated across different components;
    /// - rho is non-increasing and inside (0, 1] (a correlation, shrunk by the ridge).
    #[test]
    fn canonical_variates_are_whitened_up_to_ridge() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (n, dx, dy) = (60, 20, 12);
        let x = gauss(&mut rng, n, dx);
        let mix = gauss(&mut rng, dx, dy);
        let mut y = &x * &mix;
        y += gauss(&mut rng, n, dy) * faer::Scale(3.0);
        let data = AlignData::from_pairs(to_matrix(&x), to_matrix(&y));
        for lambda in [0.1, 1e-3] {
            let cfg = TeacherConfig {
                lambda,
                ..TeacherConfig::default()
            };
            let t = CcaTeacher::fit(&data, &cfg).unwrap();
            assert_eq!(
                t.k(),
                dy,
                "all text directions are correlated with the images"
            );
            let a = t.coords_x_f64(&data.xp).unwrap();
            let b = t.coords_y_f64(&data.yp).unwrap();
            let caa = linalg::covariance(a.as_ref());
            let cbb = linalg::covariance(b.as_ref());
            let mut cab = a.transpose() * &b;
            cab *= faer::Scale(1.0 / n as f64);
            let wtw_x = t.wx.transpose() * &t.wx;
            let wtw_y = t.wy.transpose() * &t.wy;
            for i in 0..t.k() {
                for j in 0..t.k() {
                    let id = if i == j { 1.0 } else { 0.0 };
                    assert!((caa[(i, j)] + lambda * wtw_x[(i, j)] - id).abs() < 1e-9);
                    assert!((cbb[(i, j)] + lambda * wtw_y[(i, j)] - id).abs() < 1e-9);
                    let want = if i == j { t.rho[i] } else { 0.0 };
                    assert!((cab[(i, j)] - want).abs() < 1e-9, "cab[{i},{j}]");
                }
            }
            assert!(t.rho.windows(2).all(|w| w[0] >= w[1]));
            assert!(t.rho.iter().all(|&r| r > 0.0 && r <= 1.0 + 1e-12));
        }
    }

    #[test]
    fn relative_ridge_scales_with_feature_variance() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let x = to_matrix(&gauss(&mut rng, 30, 10));
        let y = to_matrix(&gauss(&mut rng, 30, 6));
        let data = AlignData::from_pairs(x, y);
        let cfg = TeacherConfig {
            lambda: 0.5,
            lambda_relative: true,
            ..TeacherConfig::default()
        };
        let t = CcaTeacher::fit(&data, &cfg).unwrap();
        // Rows are unit vectors, so tr(Czx) = mean squared norm of centred rows = 1 - |mean|^2.
        let m2: f64 = t.mean_x.iter().map(|m| m * m).sum();
        assert!(
            (t.ridge_x - 0.5 * (1.0 - m2) / 10.0).abs() < 1e-12,
            "{}",
            t.ridge_x
        );
    }

    #[test]
    fn bad_input_gives_typed_errors() {
        let cfg = TeacherConfig::default();
        let x = Matrix::from_vec(3, 2, vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0]).unwrap();
        let y2 = Matrix::from_vec(2, 2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        let y3 = Matrix::from_vec(3, 2, vec![1.0, 0.0, 0.5, 1.0, 0.2, 1.0]).unwrap();
        // Row count mismatch.
        let mut d = AlignData::from_pairs(x.clone(), y3.clone());
        d.yp = y2;
        assert!(matches!(
            CcaTeacher::fit(&d, &cfg),
            Err(AlignError::DimensionMismatch { .. })
        ));
        // NaN row.
        let mut xn = x.clone();
        xn.row_mut(1)[0] = f32::NAN;
        let d = AlignData::from_pairs(xn, y3.clone());
        assert!(matches!(
            CcaTeacher::fit(&d, &cfg),
            Err(AlignError::NonFinite { row: 1, .. })
        ));
        // Zero and one pair.
        for n in [0usize, 1] {
            let d = AlignData::from_pairs(
                x.select_rows(&(0..n).collect::<Vec<_>>()),
                y3.select_rows(&(0..n).collect::<Vec<_>>()),
            );
            assert!(matches!(
                CcaTeacher::fit(&d, &cfg),
                Err(AlignError::NotEnoughData(_))
            ));
        }
        // Negative ridge.
        let bad = TeacherConfig {
            lambda: -1.0,
            ..TeacherConfig::default()
        };
        let d = AlignData::from_pairs(x.clone(), y3.clone());
        assert!(matches!(
            CcaTeacher::fit(&d, &bad),
            Err(AlignError::InvalidConfig(_))
        ));
        // Embedding with the wrong dimension or a NaN after a good fit.
        let t = CcaTeacher::fit(&d, &cfg).unwrap();
        let wrong = Matrix::zeros(2, 5);
        assert!(matches!(
            t.coords_x(&wrong),
            Err(AlignError::DimensionMismatch {
                expected: 2,
                got: 5,
                ..
            })
        ));
        let mut nan = Matrix::zeros(2, 2);
        nan.row_mut(0)[1] = f32::INFINITY;
        assert!(matches!(
            t.embed_y(&nan),
            Err(AlignError::NonFinite { row: 0, .. })
        ));
    }

    #[test]
    fn state_roundtrip_preserves_scores() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let x = to_matrix(&gauss(&mut rng, 40, 8));
        let y = to_matrix(&gauss(&mut rng, 40, 5));
        let t = CcaTeacher::fit(
            &AlignData::from_pairs(x.clone(), y.clone()),
            &TeacherConfig::default(),
        )
        .unwrap();
        let back = CcaTeacher::from_state(&t.export_state().unwrap()).unwrap();
        assert_eq!(back.k(), t.k());
        let s0 = t.score(&x, &y).unwrap();
        let s1 = back.score(&x, &y).unwrap();
        for (a, b) in s0.data.iter().zip(&s1.data) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
