//! Orthogonal Procrustes baseline (PROTOCOL.md), optionally whitened.
//!
//! Each modality is L2-normalised and centred on the mean of *all* its data (pairs + unpaired
//! pool: centring needs no pairing). Whitened variant: ZCA with `(C + shrink tr(C)/d I)^-1/2`,
//! C the biased covariance of the same pool. Then `Q = U_r V_r^T` from the SVD of `Xp^T Yp`
//! (the transformed paired features), r = numerical rank (`s > 1e-6 s_max`); Q is dx x dy, a
//! partial isometry when the dimensions differ. Score = cos(x Q, y).
use faer::Mat;
use serde_json::json;

use crate::config::ProcrustesConfig;
use crate::linalg::{self, to_faer_normalized};
use crate::{AlignData, AlignError, Aligned, Matrix, MethodState};

/// Relative singular-value threshold for the rank of `Xp^T Yp`.
const RANK_TOL: f64 = 1e-6;

#[derive(Debug, Clone)]
pub struct Procrustes {
    whiten: bool,
    mean_x: Vec<f64>,
    mean_y: Vec<f64>,
    /// Whitening maps (identity when not whitened, stored as `None`).
    wx: Option<Mat<f64>>,
    wy: Option<Mat<f64>>,
    /// dx x dy orthogonal (partial isometry) map.
    q: Mat<f64>,
}

impl Procrustes {
    pub fn fit(data: &AlignData, cfg: &ProcrustesConfig) -> Result<Self, AlignError> {
        data.validate()?;
        if cfg.whiten && !(cfg.whiten_shrink.is_finite() && cfg.whiten_shrink > 0.0) {
            return Err(AlignError::InvalidConfig(format!(
                "procrustes whiten_shrink must be > 0, got {}",
                cfg.whiten_shrink
            )));
        }
        let xp = to_faer_normalized(&data.xp);
        let yp = to_faer_normalized(&data.yp);
        // The means stream over the pools; only whitening needs them materialised.
        let mean_x = linalg::normalized_col_means_stacked(&data.xp, &data.xu);
        let mean_y = linalg::normalized_col_means_stacked(&data.yp, &data.yu);
        let (wx, wy) = if cfg.whiten {
            let xu = to_faer_normalized(&data.xu);
            let yu = to_faer_normalized(&data.yu);
            (
                Some(zca(&xp, &xu, &mean_x, cfg.whiten_shrink, "image")?),
                Some(zca(&yp, &yu, &mean_y, cfg.whiten_shrink, "text")?),
            )
        } else {
            (None, None)
        };
        let fx = transform(xp, &mean_x, wx.as_ref());
        let fy = transform(yp, &mean_y, wy.as_ref());
        let m = fx.transpose() * &fy;
        let svd = linalg::thin_svd(m.as_ref(), "paired cross-product")?;
        let r = linalg::numerical_rank(&svd.s, RANK_TOL);
        if r == 0 {
            return Err(AlignError::NotEnoughData(
                "paired cross-product is zero".into(),
            ));
        }
        let q = svd.u.subcols(0, r) * svd.v.subcols(0, r).transpose();
        Ok(Self {
            whiten: cfg.whiten,
            mean_x,
            mean_y,
            wx,
            wy,
            q,
        })
    }

    pub fn from_state(state: &MethodState) -> Result<Self, AlignError> {
        let row = |m: &Matrix| m.data.iter().map(|&v| v as f64).collect::<Vec<_>>();
        let whiten = state
            .meta
            .get("whiten")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let mean_x = row(state.tensor("mean_x")?);
        let mean_y = row(state.tensor("mean_y")?);
        let q = linalg::to_faer(state.tensor("q")?);
        let (wx, wy) = if whiten {
            (
                Some(linalg::to_faer(state.tensor("wx")?)),
                Some(linalg::to_faer(state.tensor("wy")?)),
            )
        } else {
            (None, None)
        };
        if q.nrows() != mean_x.len() || q.ncols() != mean_y.len() {
            return Err(AlignError::InvalidConfig(
                "inconsistent procrustes checkpoint".into(),
            ));
        }
        Ok(Self {
            whiten,
            mean_x,
            mean_y,
            wx,
            wy,
            q,
        })
    }
}

/// ZCA whitening matrix of the pool (pairs + unpaired), shrunk towards the mean eigenvalue.
fn zca(
    p: &Mat<f64>,
    u: &Mat<f64>,
    mean: &[f64],
    shrink: f64,
    what: &str,
) -> Result<Mat<f64>, AlignError> {
    let (np, nu) = (p.nrows(), u.nrows());
    let z = Mat::from_fn(np + nu, p.ncols(), |i, j| {
        if i < np {
            p[(i, j)] - mean[j]
        } else {
            u[(i - np, j)] - mean[j]
        }
    });
    let d = z.ncols().max(1) as f64;
    let trace = z.as_ref().squared_norm_l2() / z.nrows().max(1) as f64;
    let ridge = shrink * trace / d;
    linalg::ridge_inv_sqrt(
        z.as_ref(),
        ridge,
        &format!("{what} pool covariance + shrinkage"),
    )
}

fn transform(mut z: Mat<f64>, mean: &[f64], w: Option<&Mat<f64>>) -> Mat<f64> {
    linalg::centre(&mut z, mean);
    match w {
        Some(w) => &z * w,
        None => z,
    }
}

impl Aligned for Procrustes {
    fn name(&self) -> &str {
        if self.whiten {
            "procrustes_w"
        } else {
            "procrustes"
        }
    }

    fn embed_x(&self, x: &Matrix) -> Result<Matrix, AlignError> {
        Ok(linalg::from_faer(self.embed_x_f64(x)?.as_ref()))
    }

    fn embed_y(&self, y: &Matrix) -> Result<Matrix, AlignError> {
        Ok(linalg::from_faer(self.embed_y_f64(y)?.as_ref()))
    }

    /// `normalize((normalize(x) - mx) Wx Q)`, in the text space.
    fn embed_x_f64(&self, x: &Matrix) -> Result<Mat<f64>, AlignError> {
        linalg::check_input(x, self.mean_x.len(), "image")?;
        let z = transform(to_faer_normalized(x), &self.mean_x, self.wx.as_ref());
        let mut e = &z * &self.q;
        linalg::normalize_rows(&mut e);
        Ok(e)
    }

    fn embed_y_f64(&self, y: &Matrix) -> Result<Mat<f64>, AlignError> {
        linalg::check_input(y, self.mean_y.len(), "text")?;
        let mut e = transform(to_faer_normalized(y), &self.mean_y, self.wy.as_ref());
        linalg::normalize_rows(&mut e);
        Ok(e)
    }

    fn export_state(&self) -> Result<MethodState, AlignError> {
        let mut tensors = vec![
            ("mean_x".to_string(), linalg::vec_to_row(&self.mean_x)),
            ("mean_y".to_string(), linalg::vec_to_row(&self.mean_y)),
            ("q".to_string(), linalg::from_faer(self.q.as_ref())),
        ];
        if let (Some(wx), Some(wy)) = (&self.wx, &self.wy) {
            tensors.push(("wx".into(), linalg::from_faer(wx.as_ref())));
            tensors.push(("wy".into(), linalg::from_faer(wy.as_ref())));
        }
        Ok(MethodState {
            method: self.name().to_string(),
            tensors,
            meta: json!({ "whiten": self.whiten }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    /// y = x R for a random rotation R: Procrustes recovers it and retrieval is perfect.
    #[test]
    fn recovers_a_rotation() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let d = 16;
        let g = Mat::<f64>::from_fn(d, d, |_, _| StandardNormal.sample(&mut rng));
        let r = g.qr().compute_thin_Q();
        let x = Mat::<f64>::from_fn(100, d, |_, _| StandardNormal.sample(&mut rng));
        let y = &x * &r;
        let (xm, ym) = (linalg::from_faer(x.as_ref()), linalg::from_faer(y.as_ref()));
        for whiten in [false, true] {
            let cfg = ProcrustesConfig {
                whiten,
                ..ProcrustesConfig::default()
            };
            let p = Procrustes::fit(&AlignData::from_pairs(xm.clone(), ym.clone()), &cfg).unwrap();
            let s = p.score_f64(&xm, &ym).unwrap();
            for i in 0..100 {
                let best = (0..100)
                    .max_by(|&a, &b| s[(i, a)].total_cmp(&s[(i, b)]))
                    .unwrap();
                assert_eq!(best, i, "whiten={whiten}");
            }
        }
    }
}
