//! Nearest-neighbour search over one modality's aligned embeddings.
//!
//! Invariants:
//! - library code only: no tokio, no IO. Background rebuilds run on a plain worker thread
//!   (plus rayon for parallel inserts), so the daemon can call in from any runtime;
//! - scores are cosine similarities: every stored vector and every query is L2-normalised
//!   at the boundary, and both backends report the exact dot product of the normalised vectors;
//! - bad input (wrong dimension, NaN/Inf, a zero vector, duplicate ids, k = 0) is a typed
//!   [`IndexError`], never a panic; a panic inside hnsw_rs is caught and answered by exact search;
//! - an index is immutable once built. Updates are whole rebuilds swapped in atomically by
//!   [`IndexSet`]; deletions are tombstones applied as a query-time [`Filter`].
//!
//! Backends: [`Backend::Exact`] (a blocked scan / matrix product, no build cost) below
//! [`IndexConfig::exact_below`] items, [`Backend::Hnsw`] (hnsw_rs) above. The threshold was
//! measured with `sotalign bench-index` (docs/BENCHMARKS.md, "Index").

pub mod bench;
pub mod error;
pub mod exact;
pub mod filter;
pub mod hnsw;
pub mod set;
pub mod store;
pub mod synth;
pub mod topk;

use std::sync::atomic::AtomicBool;

pub use error::IndexError;
pub use filter::Filter;
pub use hnsw::HnswParams;
pub use set::{BuildPhase, IndexSet, Modality, RebuildHandle, RebuildOutcome, Served};
pub use store::VectorStore;

use hnsw::HnswGraph;
use sotalign_engine::Matrix;

/// Collections with fewer items than this are served by exact search.
///
/// Measured (docs/BENCHMARKS.md, "Index"): below ~20k vectors of 256-d an exact single-query
/// scan stays under about a millisecond on 2 cores, so an HNSW graph (seconds to build, and
/// approximate) buys little; above it the graph's query-time advantage grows linearly.
pub const DEFAULT_EXACT_BELOW: usize = 20_000;

/// How indexes are built and searched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexConfig {
    /// Use exact search for collections with fewer items than this; HNSW from this size on.
    pub exact_below: usize,
    pub hnsw: HnswParams,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            exact_below: DEFAULT_EXACT_BELOW,
            hnsw: HnswParams::default(),
        }
    }
}

/// Which search structure serves an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Exact,
    Hnsw,
}

#[derive(Debug)]
pub enum Backend {
    Exact,
    Hnsw(HnswGraph),
}

/// One search result: an item id and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub id: u64,
    pub score: f32,
}

/// One modality's embeddings with a search structure over them. Immutable after build.
#[derive(Debug)]
pub struct VectorIndex {
    store: VectorStore,
    backend: Backend,
}

impl VectorIndex {
    /// An index with no items (what a modality has before its first alignment).
    pub fn empty(dim: usize) -> Self {
        let store = VectorStore::new(Vec::new(), &Matrix::zeros(0, dim))
            .unwrap_or_else(|_| unreachable!("an empty collection is always valid"));
        Self {
            store,
            backend: Backend::Exact,
        }
    }

    /// Build with the backend [`IndexConfig`] picks for this size.
    pub fn build(
        ids: Vec<u64>,
        embeddings: &Matrix,
        config: &IndexConfig,
    ) -> Result<Self, IndexError> {
        let kind = if ids.len() < config.exact_below {
            BackendKind::Exact
        } else {
            BackendKind::Hnsw
        };
        Self::build_with(
            ids,
            embeddings,
            kind,
            config,
            &AtomicBool::new(false),
            &mut |_, _| {},
        )
    }

    /// Build with an explicit backend; `progress(done, total)` reports HNSW inserts and
    /// `cancel` stops an HNSW build between insert batches.
    pub fn build_with(
        ids: Vec<u64>,
        embeddings: &Matrix,
        kind: BackendKind,
        config: &IndexConfig,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, IndexError> {
        let store = VectorStore::new(ids, embeddings)?;
        let backend = match kind {
            BackendKind::Exact => Backend::Exact,
            BackendKind::Hnsw => {
                Backend::Hnsw(HnswGraph::build(&store, config.hnsw, cancel, progress)?)
            }
        };
        Ok(Self { store, backend })
    }

    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.store.dim()
    }

    pub fn backend_kind(&self) -> BackendKind {
        match self.backend {
            Backend::Exact => BackendKind::Exact,
            Backend::Hnsw(_) => BackendKind::Hnsw,
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.store.row_of(id).is_some()
    }

    /// Item ids in row order.
    pub fn ids(&self) -> &[u64] {
        self.store.ids()
    }

    /// The stored (unit-norm) vector of an item.
    pub fn vector(&self, id: u64) -> Option<&[f32]> {
        self.store.row_of(id).map(|r| self.store.vector(r))
    }

    /// The `k` items most similar to `query` (cosine), best first, among those `filter` admits.
    pub fn search(&self, query: &[f32], k: usize, filter: &Filter) -> Result<Vec<Hit>, IndexError> {
        if k == 0 {
            return Err(IndexError::ZeroK);
        }
        self.search_with_ef(query, k, filter, self.default_ef())
    }

    /// [`Self::search`] with an explicit HNSW search width (ignored by exact search).
    pub fn search_with_ef(
        &self,
        query: &[f32],
        k: usize,
        filter: &Filter,
        ef: usize,
    ) -> Result<Vec<Hit>, IndexError> {
        if k == 0 {
            return Err(IndexError::ZeroK);
        }
        let q = self.prepare_query(query)?;
        if self.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.to_hits(self.search_rows(&q, k, filter, ef)))
    }

    fn default_ef(&self) -> usize {
        match &self.backend {
            Backend::Exact => 0,
            Backend::Hnsw(g) => g.params().ef_search,
        }
    }

    /// Validate and normalise one query. The initial empty index has dimension 0 and accepts
    /// any dimension (it has nothing to compare against), but still rejects NaN and zero.
    fn prepare_query(&self, query: &[f32]) -> Result<Vec<f32>, IndexError> {
        if self.is_empty() && self.dim() == 0 {
            let mut q = query.to_vec();
            store::normalize_in_place(&mut q, "query", 0)?;
            return Ok(q);
        }
        self.store.prepare_query(query, 0)
    }

    /// [`Self::search`] ignoring the backend: the exact answer (for recall checks and fallbacks).
    pub fn search_exact(
        &self,
        query: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>, IndexError> {
        if k == 0 {
            return Err(IndexError::ZeroK);
        }
        let q = self.prepare_query(query)?;
        Ok(self.to_hits(exact::search(&self.store, &q, k, filter)))
    }

    /// One result list per query row. Exact search uses a blocked matrix product; HNSW
    /// searches the queries in parallel.
    pub fn search_batch(
        &self,
        queries: &Matrix,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        use rayon::prelude::*;
        if k == 0 {
            return Err(IndexError::ZeroK);
        }
        let q = self.prepare_queries(queries)?;
        let rows = match &self.backend {
            Backend::Exact => exact::search_batch(&self.store, &q, k, filter),
            Backend::Hnsw(g) => {
                let ef = g.params().ef_search;
                (0..q.rows)
                    .into_par_iter()
                    .map(|i| self.search_rows(q.row(i), k, filter, ef))
                    .collect()
            }
        };
        Ok(rows.into_iter().map(|r| self.to_hits(r)).collect())
    }

    /// Exact answers for a batch, whatever the backend (blocked matrix product).
    pub fn search_batch_exact(
        &self,
        queries: &Matrix,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        if k == 0 {
            return Err(IndexError::ZeroK);
        }
        let q = self.prepare_queries(queries)?;
        let rows = exact::search_batch(&self.store, &q, k, filter);
        Ok(rows.into_iter().map(|r| self.to_hits(r)).collect())
    }

    fn prepare_queries(&self, queries: &Matrix) -> Result<Matrix, IndexError> {
        if queries.cols != self.dim() && !(self.is_empty() && self.dim() == 0) {
            return Err(IndexError::DimensionMismatch {
                what: "query batch",
                expected: self.dim(),
                got: queries.cols,
            });
        }
        if queries.data.len() != queries.rows * queries.cols {
            return Err(IndexError::DimensionMismatch {
                what: "query batch data length",
                expected: queries.rows * queries.cols,
                got: queries.data.len(),
            });
        }
        let mut q = queries.clone();
        for r in 0..q.rows {
            store::normalize_in_place(q.row_mut(r), "query", r)?;
        }
        Ok(q)
    }

    fn search_rows(&self, q: &[f32], k: usize, filter: &Filter, ef: usize) -> Vec<(usize, f32)> {
        match &self.backend {
            Backend::Exact => exact::search(&self.store, q, k, filter),
            Backend::Hnsw(g) => {
                // A filter hiding most of the collection starves the graph walk: scan instead.
                let heavy = filter
                    .hidden_fraction_hint(self.len())
                    .is_some_and(|h| h > 0.9);
                if !heavy && let Some(hits) = g.search(&self.store, q, k, filter, ef) {
                    return hits;
                }
                exact::search(&self.store, q, k, filter)
            }
        }
    }

    fn to_hits(&self, rows: Vec<(usize, f32)>) -> Vec<Hit> {
        rows.into_iter()
            .map(|(r, score)| Hit {
                id: self.store.id(r),
                score,
            })
            .collect()
    }
}
