//! Typed errors of the nearest-neighbour index.
//!
//! Every way a caller can hand the index bad data (wrong dimension, NaN, a zero vector, duplicate
//! ids) has its own variant, so the daemon can turn it into a precise JSON-RPC error instead of
//! crashing or returning nonsense.
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum IndexError {
    /// A query or a row does not have the index's dimension.
    #[error("dimension mismatch in {what}: index has dimension {expected}, got {got}")]
    DimensionMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// NaN or +-Inf in a query (row = query number in a batch) or in the embeddings being indexed.
    #[error("non-finite value (NaN or Inf) in {what} {row} at component {col}")]
    NonFinite {
        what: &'static str,
        row: usize,
        col: usize,
    },
    /// A zero vector has no direction, so its cosine to anything is undefined.
    #[error("{what} {row} has zero norm: cosine similarity is undefined for it")]
    ZeroNorm { what: &'static str, row: usize },
    /// The id list and the embedding matrix disagree in length.
    #[error("{ids} ids given for {rows} embedding rows")]
    IdCountMismatch { ids: usize, rows: usize },
    /// The same item id appears twice in one collection.
    #[error("item id {0} appears more than once")]
    DuplicateId(u64),
    /// `k` must be at least 1.
    #[error("k must be at least 1")]
    ZeroK,
    /// An invalid parameter (e.g. an HNSW parameter out of range).
    #[error("invalid index parameter: {0}")]
    InvalidParameter(String),
    /// A background rebuild was superseded by a newer request or cancelled.
    #[error("index rebuild cancelled")]
    Cancelled,
    /// The HNSW library panicked; the index answered with exact search instead where it could.
    #[error("internal index failure: {0}")]
    Internal(String),
}
