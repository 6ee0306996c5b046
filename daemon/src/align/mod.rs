//! The alignment engine.
//!
//! Invariants:
//! - never does IO, never spawns threads of its own except through rayon / candle kernels;
//! - every fitted method maps each modality into one shared space where the score of an
//!   (image, text) pair is the dot product of the two mapped rows ([`Aligned`]); retrieval,
//!   evaluation, the daemon's index and suggestions all rely on this;
//! - inputs are validated at the boundary and bad input is a typed [`AlignError`], never a panic.

pub mod config;
pub mod data;
pub mod error;
pub mod heads;
pub mod klot;
pub mod matrix;
pub mod optim;
pub mod progress;
pub mod siglip;
pub mod sinkhorn;
pub mod synthetic;
pub mod train;

pub use config::AlignConfig;
pub use data::AlignData;
pub use error::AlignError;
pub use matrix::Matrix;

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
}
