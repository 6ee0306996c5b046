//! The alignment engine (crate `sotalign-engine`): pure computation, no tokio, no SQLite, no
//! encoders; the daemon crate (`sotalign`) builds on it.
//!
//! Invariants:
//! - never does IO, never spawns threads of its own except through rayon / candle kernels;
//! - every fitted method maps each modality into one shared space where the score of an
//!   (image, text) pair is the dot product of the two mapped rows ([`Aligned`]); retrieval,
//!   evaluation, the daemon's index and suggestions all rely on this;
//! - inputs are validated at the boundary and bad input is a typed [`AlignError`], never a panic.

// Shared by every family: data, configuration, errors, linear algebra, evaluation.
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod groups;
pub mod linalg;
pub mod matrix;
pub mod methods;
pub mod progress;
pub mod synthetic;
pub mod validation;

/// The closed-form methods: the ridge-CCA teacher and the baselines fitted in one solve, plus
/// the score fusions and the validation-chosen `auto`.
pub mod closed_form {
    pub mod asif;
    pub mod auto;
    pub mod blend;
    pub mod csa;
    pub mod procrustes;
    pub mod teacher;
}

/// The trained half: Sinkhorn, KLOT, the student heads and their SigLIP + KLOT training.
pub mod trained {
    pub mod heads;
    pub mod klot;
    pub mod klot_device;
    pub mod optim;
    pub mod siglip;
    pub mod sinkhorn;
    pub mod train;
}

/// Curation: which pairs to propose, which images to caption next.
pub mod curation {
    pub mod acquire;
    pub mod audit;
    pub mod select;
}

// Short paths (`sotalign_engine::teacher`, ...) for the modules callers use most.
pub use closed_form::{asif, auto, blend, csa, procrustes, teacher};
pub use curation::{acquire, audit, select};
pub use trained::{heads, klot, klot_device, optim, siglip, sinkhorn, train};

pub use config::AlignConfig;
pub use data::AlignData;
pub use error::AlignError;
pub use matrix::Matrix;

use faer::Mat;

/// The learned state of a fitted method, as named f32 tensors plus JSON metadata: what a
/// checkpoint stores and what the method registry rebuilds a method from. 1-D vectors (means,
/// correlations) are stored as 1 x d tensors.
#[derive(Debug, Clone)]
pub struct MethodState {
    /// Registry name of the method (`cca`, `csa`, `asif`, ...).
    pub method: String,
    pub tensors: Vec<(String, Matrix)>,
    pub meta: serde_json::Value,
}

impl MethodState {
    /// The tensor called `name`, or a typed error naming what is missing.
    pub fn tensor(&self, name: &str) -> Result<&Matrix, AlignError> {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m)
            .ok_or_else(|| {
                AlignError::InvalidConfig(format!(
                    "checkpoint of `{}` has no tensor `{name}`",
                    self.method
                ))
            })
    }
}

/// A fitted alignment: maps images (x) and texts (y) into a shared space where
/// `score(x_i, y_j) = embed_x(x)_i . embed_y(y)_j`.
///
/// Inputs are *raw* encoder features (one row per item); implementations apply their own
/// normalisation and centring, exactly as during fitting.
pub trait Aligned: Send + Sync {
    /// Short method name as used on the command line and in result tables.
    fn name(&self) -> &str;
    /// Map image features (rows x dx) into the shared space.
    fn embed_x(&self, x: &Matrix) -> Result<Matrix, AlignError>;
    /// Map text features (rows x dy) into the shared space.
    fn embed_y(&self, y: &Matrix) -> Result<Matrix, AlignError>;
    /// Score matrix (images x texts). The default is the dot product of the embeddings.
    fn score(&self, x: &Matrix, y: &Matrix) -> Result<Matrix, AlignError> {
        let ex = self.embed_x(x)?;
        let ey = self.embed_y(y)?;
        Ok(ex.matmul_t(&ey))
    }
    /// f64 embeddings. The default widens the f32 ones; closed-form methods override it so that
    /// evaluation keeps f64 precision end to end (exact agreement with an f64 reference).
    fn embed_x_f64(&self, x: &Matrix) -> Result<Mat<f64>, AlignError> {
        Ok(linalg::to_faer(&self.embed_x(x)?))
    }
    fn embed_y_f64(&self, y: &Matrix) -> Result<Mat<f64>, AlignError> {
        Ok(linalg::to_faer(&self.embed_y(y)?))
    }
    /// f64 score matrix (images x texts): what evaluation ranks.
    fn score_f64(&self, x: &Matrix, y: &Matrix) -> Result<Mat<f64>, AlignError> {
        let ex = self.embed_x_f64(x)?;
        let ey = self.embed_y_f64(y)?;
        Ok(&ex * ey.transpose())
    }
    /// Export the fitted state (checkpointing); `crate::methods::restore` rebuilds it.
    fn export_state(&self) -> Result<MethodState, AlignError>;
}

/// Helpers for unit tests (this crate's, and the daemon's through the `testing` feature).
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::synthetic::{Platonic, PlatonicSpec};
    use super::{AlignError, Aligned, Matrix, MethodState};

    /// The small synthetic "platonic" problem the unit tests share (latent 6, 32 hidden units,
    /// 24-d images, 20-d texts, noise 0.1): big enough for every method to fit, fast in debug.
    pub fn small_platonic(seed: u64) -> Platonic {
        Platonic::new(PlatonicSpec {
            latent: 6,
            hidden: 32,
            dx: 24,
            dy: 20,
            noise: 0.1,
            seed,
        })
        .expect("a valid fixed spec")
    }

    /// The identity "alignment": both modalities are taken to live in one space already, each
    /// row is L2-normalised, so the score is the cosine of the raw features. For tests that
    /// plant the answer in the features and exercise what sits on top of a model (queries,
    /// suggestions, acquisition), not a method.
    pub struct Identity;

    impl Aligned for Identity {
        fn name(&self) -> &str {
            "identity"
        }
        fn embed_x(&self, x: &Matrix) -> Result<Matrix, AlignError> {
            Ok(x.l2_normalized())
        }
        fn embed_y(&self, y: &Matrix) -> Result<Matrix, AlignError> {
            Ok(y.l2_normalized())
        }
        fn export_state(&self) -> Result<MethodState, AlignError> {
            Err(AlignError::InvalidConfig("test model".into()))
        }
    }
}
