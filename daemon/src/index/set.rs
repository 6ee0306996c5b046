//! The daemon's handle on its indexes: one current index per modality, swapped atomically.
//!
//! Readers clone an `Arc` under a read lock held for a few instructions and then search without
//! any lock, so a search never waits for a rebuild and a rebuild never waits for searches.
//! A rebuild runs on its own worker thread (HNSW inserts go through rayon) and, when done,
//! swaps its index in under the write lock and bumps the modality's generation. A newer rebuild
//! request supersedes an older one: the older build is cancelled between insert batches, and
//! even if it finishes it is never swapped over a newer request's result.
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{BackendKind, Filter, Hit, IndexConfig, IndexError, VectorIndex};
use sotalign_engine::Matrix;

/// The two sides of the shared space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Modality {
    Image,
    Text,
}

impl Modality {
    fn slot(self) -> usize {
        match self {
            Modality::Image => 0,
            Modality::Text => 1,
        }
    }
}

/// The index currently serving a modality and its generation (0 = the initial empty index;
/// each swap adds one).
#[derive(Debug, Clone)]
pub struct Served {
    pub generation: u64,
    pub index: Arc<VectorIndex>,
}

/// Hits plus the generation of the index that produced them.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResult {
    pub generation: u64,
    pub hits: Vec<Hit>,
}

/// What a background rebuild is doing; reported through the rebuild's progress callback,
/// on the worker thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildPhase {
    /// HNSW inserts done so far.
    Inserting { done: usize, total: usize },
    /// The new index is complete and about to be swapped in.
    Built,
}

/// How a rebuild ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RebuildOutcome {
    Swapped {
        generation: u64,
        backend: BackendKind,
        items: usize,
        build_time: Duration,
    },
    /// A newer rebuild of the same modality was requested before this one finished.
    Superseded,
    /// [`RebuildHandle::cancel`] was called.
    Cancelled,
}

struct Slot {
    current: RwLock<Served>,
    /// Ids hidden from every search until a rebuild no longer contains them.
    tombstones: RwLock<Arc<HashSet<u64>>>,
    /// Sequence number of the newest rebuild request.
    latest_request: AtomicU64,
    /// Cancel flag of the newest rebuild, so a newer request can stop it early.
    active_cancel: Mutex<Option<Arc<AtomicBool>>>,
}

/// Lock helpers that survive poisoning: the guarded values (an `Arc` and a set) are replaced
/// whole, so a panic elsewhere cannot leave them half-updated.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// One current index per modality. Share it as `Arc<IndexSet>`.
pub struct IndexSet {
    slots: [Arc<Slot>; 2],
    config: IndexConfig,
}

impl IndexSet {
    pub fn new(config: IndexConfig) -> Self {
        let slot = || {
            Arc::new(Slot {
                current: RwLock::new(Served {
                    generation: 0,
                    index: Arc::new(VectorIndex::empty(0)),
                }),
                tombstones: RwLock::new(Arc::new(HashSet::new())),
                latest_request: AtomicU64::new(0),
                active_cancel: Mutex::new(None),
            })
        };
        Self {
            slots: [slot(), slot()],
            config,
        }
    }

    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// The index serving `m` right now. Holding the returned `Arc` keeps that index alive and
    /// unchanged even if a rebuild swaps a newer one in meanwhile.
    pub fn current(&self, m: Modality) -> Served {
        read(&self.slots[m.slot()].current).clone()
    }

    pub fn generation(&self, m: Modality) -> u64 {
        read(&self.slots[m.slot()].current).generation
    }

    /// Search the current index of `m`, hiding tombstoned ids as well as what `filter` rejects.
    pub fn search(
        &self,
        m: Modality,
        query: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<SearchResult, IndexError> {
        let served = self.current(m);
        let tomb = self.tombstones(m);
        let hits = if tomb.is_empty() {
            served.index.search(query, k, filter)?
        } else {
            let hide = Filter::Exclude(&tomb);
            served
                .index
                .search(query, k, &Filter::Both(&hide, filter))?
        };
        Ok(SearchResult {
            generation: served.generation,
            hits,
        })
    }

    /// Batched [`Self::search`]: one result list per query row, all from the same generation.
    pub fn search_batch(
        &self,
        m: Modality,
        queries: &Matrix,
        k: usize,
        filter: &Filter,
    ) -> Result<(u64, Vec<Vec<Hit>>), IndexError> {
        let served = self.current(m);
        let tomb = self.tombstones(m);
        let hits = if tomb.is_empty() {
            served.index.search_batch(queries, k, filter)?
        } else {
            let hide = Filter::Exclude(&tomb);
            served
                .index
                .search_batch(queries, k, &Filter::Both(&hide, filter))?
        };
        Ok((served.generation, hits))
    }

    /// Hide ids from every search of `m` (hnsw_rs cannot delete points).
    pub fn tombstone(&self, m: Modality, ids: impl IntoIterator<Item = u64>) {
        let mut t = write(&self.slots[m.slot()].tombstones);
        let mut next = (**t).clone();
        next.extend(ids);
        *t = Arc::new(next);
    }

    /// Make tombstoned ids searchable again.
    pub fn restore(&self, m: Modality, ids: impl IntoIterator<Item = u64>) {
        let mut t = write(&self.slots[m.slot()].tombstones);
        let mut next = (**t).clone();
        for id in ids {
            next.remove(&id);
        }
        *t = Arc::new(next);
    }

    pub fn tombstones(&self, m: Modality) -> Arc<HashSet<u64>> {
        read(&self.slots[m.slot()].tombstones).clone()
    }

    /// Build an index of `embeddings` (row i is item `ids[i]`) on the calling thread and swap it in.
    pub fn replace(
        &self,
        m: Modality,
        ids: Vec<u64>,
        embeddings: Matrix,
    ) -> Result<RebuildOutcome, IndexError> {
        self.rebuild_in_background(m, ids, embeddings, |_| {})
            .wait()
    }

    /// Build an index of `embeddings` on a worker thread and swap it in when done; searches keep
    /// using the current index meanwhile. Supersedes any rebuild of `m` still running.
    /// `progress` runs on the worker thread.
    pub fn rebuild_in_background(
        &self,
        m: Modality,
        ids: Vec<u64>,
        embeddings: Matrix,
        progress: impl FnMut(BuildPhase) + Send + 'static,
    ) -> RebuildHandle {
        self.rebuild_with(m, ids, embeddings, None, progress)
    }

    /// Fast first, graph later: swap in an exact index of `embeddings` now (no build cost,
    /// exact answers), on a worker thread like [`Self::rebuild_in_background`]; once its
    /// handle has been waited for, [`Self::upgrade_to_graph`] builds the HNSW graph a
    /// collection this large calls for. Below `exact_below` this is the ordinary rebuild.
    pub fn rebuild_exact_first(
        &self,
        m: Modality,
        ids: Vec<u64>,
        embeddings: Matrix,
        progress: impl FnMut(BuildPhase) + Send + 'static,
    ) -> RebuildHandle {
        self.rebuild_with(m, ids, embeddings, Some(BackendKind::Exact), progress)
    }

    /// Build the HNSW graph over what `m` serves now, when the collection is at least
    /// `exact_below` items and is not already a graph, and swap it in when done; searches
    /// use the current (exact) index meanwhile. A later rebuild of `m` supersedes it, and
    /// dropping the set cancels it. `None` when there is nothing to upgrade.
    pub fn upgrade_to_graph(&self, m: Modality) -> Option<RebuildHandle> {
        let cur = self.current(m);
        if cur.index.len() < self.config.exact_below
            || cur.index.backend_kind() == BackendKind::Hnsw
        {
            return None;
        }
        let ids = cur.index.ids().to_vec();
        let dim = cur.index.dim();
        let mut data = Vec::with_capacity(ids.len() * dim);
        for id in &ids {
            data.extend_from_slice(cur.index.vector(*id)?);
        }
        let mat = Matrix {
            rows: ids.len(),
            cols: dim,
            data,
        };
        Some(self.rebuild_with(m, ids, mat, Some(BackendKind::Hnsw), |_| {}))
    }

    fn rebuild_with(
        &self,
        m: Modality,
        ids: Vec<u64>,
        embeddings: Matrix,
        force: Option<BackendKind>,
        mut progress: impl FnMut(BuildPhase) + Send + 'static,
    ) -> RebuildHandle {
        let slot = Arc::clone(&self.slots[m.slot()]);
        let config = self.config;
        let cancel = Arc::new(AtomicBool::new(false));
        let request = {
            let mut active = slot.active_cancel.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(prev) = active.replace(Arc::clone(&cancel)) {
                prev.store(true, Ordering::Relaxed);
            }
            slot.latest_request.fetch_add(1, Ordering::SeqCst) + 1
        };
        let worker_cancel = Arc::clone(&cancel);
        let user_cancel = Arc::new(AtomicBool::new(false));
        let worker_user_cancel = Arc::clone(&user_cancel);
        let join = std::thread::Builder::new()
            .name(format!("index-rebuild-{m:?}").to_lowercase())
            .spawn(move || {
                let start = Instant::now();
                let kind = force.unwrap_or(if ids.len() < config.exact_below {
                    BackendKind::Exact
                } else {
                    BackendKind::Hnsw
                });
                let built = VectorIndex::build_with(
                    ids,
                    &embeddings,
                    kind,
                    &config,
                    &worker_cancel,
                    &mut |done, total| progress(BuildPhase::Inserting { done, total }),
                );
                let stopped = || {
                    if worker_user_cancel.load(Ordering::Relaxed) {
                        RebuildOutcome::Cancelled
                    } else {
                        RebuildOutcome::Superseded
                    }
                };
                let index = match built {
                    Ok(ix) => ix,
                    Err(IndexError::Cancelled) => return Ok(stopped()),
                    Err(e) => return Err(e),
                };
                if worker_cancel.load(Ordering::Relaxed) {
                    return Ok(stopped());
                }
                progress(BuildPhase::Built);
                let items = index.len();
                let backend = index.backend_kind();
                let index = Arc::new(index);
                let old = {
                    let mut cur = write(&slot.current);
                    // Checked under the write lock, so two finishing builds cannot both win.
                    if slot.latest_request.load(Ordering::SeqCst) != request
                        || worker_cancel.load(Ordering::Relaxed)
                    {
                        return Ok(stopped());
                    }
                    let generation = cur.generation + 1;
                    let old = std::mem::replace(
                        &mut *cur,
                        Served {
                            generation,
                            index: Arc::clone(&index),
                        },
                    );
                    drop(cur);
                    // Tombstones of ids the new collection no longer has are moot.
                    let mut t = write(&slot.tombstones);
                    if t.iter().any(|id| !index.contains(*id)) {
                        *t = Arc::new(t.iter().copied().filter(|id| index.contains(*id)).collect());
                    }
                    old
                };
                let generation = old.generation + 1;
                // Drop the old graph here rather than in whichever query happens to hold it last.
                drop(old);
                Ok(RebuildOutcome::Swapped {
                    generation,
                    backend,
                    items,
                    build_time: start.elapsed(),
                })
            });
        RebuildHandle {
            join: Some(join),
            cancel,
            user_cancel,
            request,
        }
    }
}

impl IndexSet {
    /// Stop every build still running (what is served stays); e.g. a graph upgrade that would
    /// compete with an alignment for the cores.
    pub fn cancel_pending(&self) {
        for slot in &self.slots {
            let active = slot.active_cancel.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = active.as_ref() {
                c.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for IndexSet {
    /// A set no longer in use (a model replaced by a newer one) stops its pending builds: a
    /// detached graph upgrade would otherwise keep a core busy for nothing.
    fn drop(&mut self) {
        self.cancel_pending();
    }
}

/// A running rebuild. Dropping it detaches the worker, which still swaps in its result.
pub struct RebuildHandle {
    join: Option<std::io::Result<JoinHandle<Result<RebuildOutcome, IndexError>>>>,
    cancel: Arc<AtomicBool>,
    user_cancel: Arc<AtomicBool>,
    request: u64,
}

impl RebuildHandle {
    /// Sequence number of this request within its modality (1, 2, ...).
    pub fn request(&self) -> u64 {
        self.request
    }

    /// Ask the worker to stop; it ends with [`RebuildOutcome::Cancelled`] unless it already swapped.
    pub fn cancel(&self) {
        self.user_cancel.store(true, Ordering::Relaxed);
        self.cancel.store(true, Ordering::Relaxed);
    }

    pub fn is_finished(&self) -> bool {
        match &self.join {
            Some(Ok(j)) => j.is_finished(),
            _ => true,
        }
    }

    /// Block until the worker ends.
    pub fn wait(mut self) -> Result<RebuildOutcome, IndexError> {
        match self.join.take() {
            Some(Ok(j)) => j.join().unwrap_or_else(|_| {
                Err(IndexError::Internal("index rebuild thread panicked".into()))
            }),
            Some(Err(e)) => Err(IndexError::Internal(format!(
                "could not start the rebuild thread: {e}"
            ))),
            None => Err(IndexError::Internal("rebuild already waited for".into())),
        }
    }
}
