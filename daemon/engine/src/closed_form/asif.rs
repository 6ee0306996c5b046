//! ASIF baseline: relative representations against the paired anchors (PROTOCOL.md).
//!
//! An image is represented by its cosine similarities to the n paired images, negatives set to
//! 0, only the top-k kept (k = min(k, n); values tied with the k-th are kept), raised to the
//! power p and L2-normalised; a text likewise against the paired texts. Because anchor i is the
//! same pair on both sides, the two representations live in one n-dimensional space and the
//! score is their dot product. No training at all: the anchors are the model.
//!
//! `centre` (the reference's `asif_c`): subtract the paired mean of each modality from both the
//! anchors and the queries and re-normalise before taking cosines. Centring removes the large
//! common component of these encoders' features (all cosines are otherwise high and similar).
use faer::Mat;
use serde_json::json;

use crate::config::AsifConfig;
use crate::linalg::{self, to_faer_normalized};
use crate::{AlignData, AlignError, Aligned, Matrix, MethodState};

#[derive(Debug, Clone)]
pub struct Asif {
    /// Normalised (and, when centred, centred + re-normalised) anchors, n x dx and n x dy.
    anchors_x: Mat<f64>,
    anchors_y: Mat<f64>,
    /// Paired means (used only when `centre`).
    mean_x: Vec<f64>,
    mean_y: Vec<f64>,
    k: usize,
    p: f64,
    centre: bool,
}

impl Asif {
    pub fn fit(data: &AlignData, cfg: &AsifConfig) -> Result<Self, AlignError> {
        data.validate()?;
        if cfg.k == 0 {
            return Err(AlignError::InvalidConfig("ASIF needs k >= 1".into()));
        }
        if !(cfg.p.is_finite() && cfg.p > 0.0) {
            return Err(AlignError::InvalidConfig(format!(
                "ASIF power p must be > 0, got {}",
                cfg.p
            )));
        }
        let mut ax = to_faer_normalized(&data.xp);
        let mut ay = to_faer_normalized(&data.yp);
        let (mean_x, mean_y) = if cfg.centre {
            (
                linalg::col_means(ax.as_ref()),
                linalg::col_means(ay.as_ref()),
            )
        } else {
            (vec![0.0; ax.ncols()], vec![0.0; ay.ncols()])
        };
        if cfg.centre {
            linalg::centre(&mut ax, &mean_x);
            linalg::centre(&mut ay, &mean_y);
            linalg::normalize_rows(&mut ax);
            linalg::normalize_rows(&mut ay);
        }
        let k = cfg.k.min(data.n_pairs());
        Ok(Self {
            anchors_x: ax,
            anchors_y: ay,
            mean_x,
            mean_y,
            k,
            p: cfg.p,
            centre: cfg.centre,
        })
    }

    pub fn from_state(state: &MethodState) -> Result<Self, AlignError> {
        let ax = linalg::to_faer(state.tensor("anchors_x")?);
        let ay = linalg::to_faer(state.tensor("anchors_y")?);
        let row = |m: &Matrix| m.data.iter().map(|&v| v as f64).collect::<Vec<_>>();
        let mean_x = row(state.tensor("mean_x")?);
        let mean_y = row(state.tensor("mean_y")?);
        let k = state.meta.get("k").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        let p = state
            .meta
            .get("p")
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NAN);
        let centre = state
            .meta
            .get("centre")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if ax.nrows() != ay.nrows()
            || k == 0
            || k > ax.nrows()
            || !p.is_finite()
            || mean_x.len() != ax.ncols()
            || mean_y.len() != ay.ncols()
        {
            return Err(AlignError::InvalidConfig(
                "inconsistent ASIF checkpoint".into(),
            ));
        }
        Ok(Self {
            anchors_x: ax,
            anchors_y: ay,
            mean_x,
            mean_y,
            k,
            p,
            centre,
        })
    }

    fn relative(
        &self,
        q: &Matrix,
        anchors: &Mat<f64>,
        mean: &[f64],
        what: &str,
    ) -> Result<Mat<f64>, AlignError> {
        linalg::check_input(q, anchors.ncols(), what)?;
        let mut z = to_faer_normalized(q);
        if self.centre {
            linalg::centre(&mut z, mean);
            linalg::normalize_rows(&mut z);
        }
        let mut r = &z * anchors.transpose();
        let n = r.ncols();
        let mut buf = vec![0.0f64; n];
        for i in 0..r.nrows() {
            for j in 0..n {
                buf[j] = r[(i, j)].max(0.0);
            }
            // Threshold = k-th largest value; everything below it is dropped.
            let thresh = if self.k < n {
                let mut sorted = buf.clone();
                let (_, kth, _) = sorted.select_nth_unstable_by(n - self.k, |a, b| a.total_cmp(b));
                *kth
            } else {
                f64::NEG_INFINITY
            };
            for j in 0..n {
                let v = buf[j];
                r[(i, j)] = if v >= thresh { v.powf(self.p) } else { 0.0 };
            }
        }
        linalg::normalize_rows(&mut r);
        Ok(r)
    }
}

impl Aligned for Asif {
    fn name(&self) -> &str {
        if self.centre { "asif_c" } else { "asif" }
    }

    fn embed_x(&self, x: &Matrix) -> Result<Matrix, AlignError> {
        Ok(linalg::from_faer(self.embed_x_f64(x)?.as_ref()))
    }

    fn embed_y(&self, y: &Matrix) -> Result<Matrix, AlignError> {
        Ok(linalg::from_faer(self.embed_y_f64(y)?.as_ref()))
    }

    fn embed_x_f64(&self, x: &Matrix) -> Result<Mat<f64>, AlignError> {
        self.relative(x, &self.anchors_x, &self.mean_x, "image")
    }

    fn embed_y_f64(&self, y: &Matrix) -> Result<Mat<f64>, AlignError> {
        self.relative(y, &self.anchors_y, &self.mean_y, "text")
    }

    fn export_state(&self) -> Result<MethodState, AlignError> {
        Ok(MethodState {
            method: self.name().to_string(),
            tensors: vec![
                (
                    "anchors_x".into(),
                    linalg::from_faer(self.anchors_x.as_ref()),
                ),
                (
                    "anchors_y".into(),
                    linalg::from_faer(self.anchors_y.as_ref()),
                ),
                ("mean_x".into(), linalg::vec_to_row(&self.mean_x)),
                ("mean_y".into(), linalg::vec_to_row(&self.mean_y)),
            ],
            meta: json!({ "k": self.k, "p": self.p, "centre": self.centre }),
        })
    }
}
