//! The validated, L2-normalised vectors of one collection and the map between item ids and rows.
//!
//! Both backends read the same store: the exact backend scans it, the HNSW backend uses it to
//! re-score its candidates with the true dot product (so both report identical scores) and to
//! fall back to an exact scan when a filter hides too much of the graph.
use std::collections::HashMap;

use super::IndexError;
use sotalign_engine::Matrix;

#[derive(Debug)]
pub struct VectorStore {
    /// Row-major, unit-norm rows.
    vectors: Matrix,
    ids: Vec<u64>,
    rows_by_id: HashMap<u64, usize>,
}

impl VectorStore {
    /// Validate (ids unique and matching the rows, every value finite, no zero row) and
    /// L2-normalise. Normalisation is done in f64 so that a unit row's self dot product stays
    /// within a few ulps of 1.
    pub fn new(ids: Vec<u64>, embeddings: &Matrix) -> Result<Self, IndexError> {
        if ids.len() != embeddings.rows {
            return Err(IndexError::IdCountMismatch {
                ids: ids.len(),
                rows: embeddings.rows,
            });
        }
        if embeddings.data.len() != embeddings.rows * embeddings.cols {
            return Err(IndexError::DimensionMismatch {
                what: "embedding matrix data length",
                expected: embeddings.rows * embeddings.cols,
                got: embeddings.data.len(),
            });
        }
        if embeddings.cols == 0 && embeddings.rows > 0 {
            return Err(IndexError::InvalidParameter(
                "embeddings have dimension 0".into(),
            ));
        }
        let mut rows_by_id = HashMap::with_capacity(ids.len());
        for (r, &id) in ids.iter().enumerate() {
            if rows_by_id.insert(id, r).is_some() {
                return Err(IndexError::DuplicateId(id));
            }
        }
        let mut vectors = embeddings.clone();
        for r in 0..vectors.rows {
            normalize_in_place(vectors.row_mut(r), "embedding row", r)?;
        }
        Ok(Self {
            vectors,
            ids,
            rows_by_id,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.vectors.cols
    }

    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    #[inline]
    pub fn id(&self, row: usize) -> u64 {
        self.ids[row]
    }

    pub fn row_of(&self, id: u64) -> Option<usize> {
        self.rows_by_id.get(&id).copied()
    }

    /// The unit-norm vector of row `row`.
    #[inline]
    pub fn vector(&self, row: usize) -> &[f32] {
        self.vectors.row(row)
    }

    pub fn vectors(&self) -> &Matrix {
        &self.vectors
    }

    /// Validate a query against this store's dimension and return it L2-normalised.
    pub fn prepare_query(&self, query: &[f32], row: usize) -> Result<Vec<f32>, IndexError> {
        if query.len() != self.dim() {
            return Err(IndexError::DimensionMismatch {
                what: "query",
                expected: self.dim(),
                got: query.len(),
            });
        }
        let mut q = query.to_vec();
        normalize_in_place(&mut q, "query", row)?;
        Ok(q)
    }
}

/// Scale `v` to unit norm; typed errors for NaN/Inf and for the zero vector.
pub fn normalize_in_place(v: &mut [f32], what: &'static str, row: usize) -> Result<(), IndexError> {
    let mut sq = 0.0f64;
    for (col, x) in v.iter().enumerate() {
        if !x.is_finite() {
            return Err(IndexError::NonFinite { what, row, col });
        }
        sq += (*x as f64) * (*x as f64);
    }
    // A norm this small would overflow on division and means the row carries no direction.
    if sq <= f64::MIN_POSITIVE {
        return Err(IndexError::ZeroNorm { what, row });
    }
    let inv = 1.0 / sq.sqrt();
    for x in v.iter_mut() {
        *x = ((*x as f64) * inv) as f32;
    }
    Ok(())
}
