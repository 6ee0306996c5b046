//! CSA baseline: correlation-weighted similarity over the top-s CCA components (PROTOCOL.md).
//!
//! Same ridge CCA as the teacher; the canonical coordinates are truncated to the first `s`
//! components, *then* L2-normalised, and the score is `sum_{i<s} rho_i a_i b_i`. (Normalising
//! before truncation is a different method: it does not reproduce the reference at s < k.)
//! To keep the dot-product contract of [`Aligned`] symmetric, both sides are scaled by
//! `sqrt(rho_i)`: `(a sqrt(rho)) . (b sqrt(rho)) = sum rho_i a_i b_i`.
use faer::Mat;
use serde_json::json;

use crate::config::AlignConfig;
use crate::linalg;
use crate::teacher::CcaTeacher;
use crate::{AlignData, AlignError, Aligned, Matrix, MethodState};

#[derive(Debug, Clone)]
pub struct Csa {
    teacher: CcaTeacher,
    /// Components used (<= teacher.k()).
    s: usize,
}

impl Csa {
    /// Fit the CCA and keep `cfg.csa.s` components (all kept ones when `None` or larger).
    pub fn fit(data: &AlignData, cfg: &AlignConfig) -> Result<Self, AlignError> {
        let teacher = CcaTeacher::fit(data, &cfg.teacher)?;
        Self::from_teacher(teacher, cfg.csa.s)
    }

    /// CSA on an already fitted teacher (the CCA does not depend on s: tuning s refits nothing).
    pub fn from_teacher(teacher: CcaTeacher, s: Option<usize>) -> Result<Self, AlignError> {
        if s == Some(0) {
            return Err(AlignError::InvalidConfig("CSA needs s >= 1".into()));
        }
        let s = s.unwrap_or(usize::MAX).min(teacher.k());
        Ok(Self { teacher, s })
    }

    /// Number of components in use.
    pub fn s(&self) -> usize {
        self.s
    }

    pub fn from_state(state: &MethodState) -> Result<Self, AlignError> {
        let teacher = CcaTeacher::from_state(state)?;
        let s = state
            .meta
            .get("s")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize);
        Self::from_teacher(teacher, s)
    }

    fn weigh(&self, mut c: Mat<f64>) -> Mat<f64> {
        let s = self.s;
        let mut t = c.subcols_mut(0, s).to_owned();
        linalg::normalize_rows(&mut t);
        for j in 0..s {
            let w = self.teacher.rho[j].sqrt();
            for i in 0..t.nrows() {
                t[(i, j)] *= w;
            }
        }
        c = t;
        c
    }
}

impl Aligned for Csa {
    fn name(&self) -> &str {
        "csa"
    }

    fn embed_x(&self, x: &Matrix) -> Result<Matrix, AlignError> {
        Ok(linalg::from_faer(self.embed_x_f64(x)?.as_ref()))
    }

    fn embed_y(&self, y: &Matrix) -> Result<Matrix, AlignError> {
        Ok(linalg::from_faer(self.embed_y_f64(y)?.as_ref()))
    }

    fn embed_x_f64(&self, x: &Matrix) -> Result<Mat<f64>, AlignError> {
        Ok(self.weigh(self.teacher.coords_x_f64(x)?))
    }

    fn embed_y_f64(&self, y: &Matrix) -> Result<Mat<f64>, AlignError> {
        Ok(self.weigh(self.teacher.coords_y_f64(y)?))
    }

    fn export_state(&self) -> Result<MethodState, AlignError> {
        let mut st = self.teacher.state_named("csa");
        st.meta["s"] = json!(self.s);
        Ok(st)
    }
}
