//! Approximate search with an HNSW graph (hnsw_rs).
//!
//! Distance choice: the vectors are unit-norm, where squared L2 distance is `2 - 2 cos`, so
//! ranking by `DistL2` is ranking by cosine. We use `DistL2` rather than `DistDot` because
//! `DistDot` asserts `dot <= 1.000002` on every evaluation: a query whose f32 rounding lands
//! just above that would panic inside the library, and the daemon must never panic on input.
//! A sum of squares cannot fail its own `>= 0` check, and both are the same SIMD (simdeez)
//! kernel. Scores returned to callers are re-computed as exact dot products from the store.
//!
//! hnsw_rs has no delete and no update: removed items are hidden with a filter at query time
//! and disappear at the next rebuild. Graph DataIds are store rows, not item ids.
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

use hnsw_rs::prelude::{DistL2, Hnsw};

use super::IndexError;
use super::exact::dot;
use super::filter::Filter;
use super::store::VectorStore;
use super::topk::TopK;

/// Graph construction and search parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HnswParams {
    /// Links per node per layer (hnsw_rs allows at most 256).
    pub max_connections: usize,
    /// Candidate list width while inserting: higher gives a better graph, slower builds.
    pub ef_construction: usize,
    /// Candidate list width while searching (raised to k when k is larger).
    pub ef_search: usize,
    /// Points inserted per parallel batch; cancellation and progress are checked between batches.
    pub insert_batch: usize,
}

impl Default for HnswParams {
    /// Measured with `sotalign bench-index` (docs/BENCHMARKS.md, "Index"): at 100k x 256-d
    /// clustered vectors these give recall@10 above 0.95 with room to spare.
    fn default() -> Self {
        Self {
            max_connections: 16,
            ef_construction: 100,
            ef_search: 64,
            insert_batch: 4096,
        }
    }
}

impl HnswParams {
    pub fn validate(&self) -> Result<(), IndexError> {
        if !(2..=256).contains(&self.max_connections) {
            return Err(IndexError::InvalidParameter(format!(
                "max_connections must be in 2..=256, got {}",
                self.max_connections
            )));
        }
        if self.ef_construction == 0 || self.ef_search == 0 || self.insert_batch == 0 {
            return Err(IndexError::InvalidParameter(
                "ef_construction, ef_search and insert_batch must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// hnsw_rs's own layer cap (`NB_LAYER_MAX`).
const MAX_LAYERS: usize = 16;

pub struct HnswGraph {
    graph: Hnsw<'static, f32, DistL2>,
    params: HnswParams,
}

impl std::fmt::Debug for HnswGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswGraph")
            .field("points", &self.graph.get_nb_point())
            .field("params", &self.params)
            .finish()
    }
}

impl HnswGraph {
    /// Insert every row of `store` (in parallel batches through rayon). `progress(done, total)`
    /// is called after each batch; setting `cancel` stops between batches with `Cancelled`.
    pub fn build(
        store: &VectorStore,
        params: HnswParams,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, IndexError> {
        params.validate()?;
        let n = store.len();
        let mut graph = Hnsw::<f32, DistL2>::new(
            params.max_connections,
            n.max(1),
            MAX_LAYERS,
            params.ef_construction,
            DistL2 {},
        );
        let mut done = 0;
        while done < n {
            if cancel.load(Ordering::Relaxed) {
                return Err(IndexError::Cancelled);
            }
            let end = (done + params.insert_batch).min(n);
            let batch: Vec<(&[f32], usize)> = (done..end).map(|r| (store.vector(r), r)).collect();
            catch_unwind(AssertUnwindSafe(|| graph.parallel_insert_slice(&batch))).map_err(
                |p| IndexError::Internal(format!("hnsw insert panicked: {}", panic_text(&p))),
            )?;
            done = end;
            progress(done, n);
        }
        graph.set_searching_mode(true);
        Ok(Self { graph, params })
    }

    pub fn params(&self) -> HnswParams {
        self.params
    }

    /// Approximate top-k rows for one unit-norm query, scored by exact dot product.
    ///
    /// Returns `Ok(None)` when the graph walk could not deliver a full answer (fewer than k
    /// admissible hits found, or the library panicked), so the caller can fall back to an exact
    /// scan rather than silently return fewer results.
    pub fn search(
        &self,
        store: &VectorStore,
        q: &[f32],
        k: usize,
        filter: &Filter,
        ef_search: usize,
    ) -> Option<Vec<(usize, f32)>> {
        // hnsw_rs needs ef >= 2 to keep a non-empty result heap under a filter that rejects the
        // entry point; widen the walk by the expected share of hidden nodes.
        let hidden = filter.hidden_fraction_hint(store.len()).unwrap_or(0.0);
        let ef = ((ef_search.max(k) as f64) / (1.0 - hidden).max(0.05)).ceil() as usize;
        let ef = ef.max(16);
        let admits_row = |row: &usize| filter.admits(store.id(*row));
        let found = catch_unwind(AssertUnwindSafe(|| match filter {
            Filter::All => self.graph.search(q, k, ef),
            _ => self.graph.search_filter(q, k, ef, Some(&admits_row)),
        }));
        let found = match found {
            Ok(f) => f,
            Err(p) => {
                tracing::error!(
                    "hnsw search panicked ({}); answering with exact search",
                    panic_text(&p)
                );
                return None;
            }
        };
        let mut top = TopK::new(k);
        for nb in found {
            let row = nb.d_id;
            if row < store.len() && filter.admits(store.id(row)) {
                top.push(dot(q, store.vector(row)), row);
            }
        }
        let hits = top.into_sorted();
        if hits.len() < k.min(store.len()) {
            return None;
        }
        Some(hits)
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
