//! Typed errors of the alignment engine.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AlignError {
    #[error("dimension mismatch: {what}: expected {expected}, got {got}")]
    DimensionMismatch {
        what: String,
        expected: usize,
        got: usize,
    },
    #[error("non-finite value (NaN or Inf) in {what} at row {row}")]
    NonFinite { what: String, row: usize },
    #[error("not enough data: {0}")]
    NotEnoughData(String),
    #[error("unknown method `{0}` (known: {1})")]
    UnknownMethod(String, String),
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("numerical failure: {0}")]
    Numerical(String),
    #[error("cancelled")]
    Cancelled,
    #[error("tensor backend: {0}")]
    Candle(#[from] candle_core::Error),
}
