//! State shared by every connection and job of one daemon (behind an `Arc`).
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use sotalign_protocol::{ErrorObject, Message};
use tokio::sync::{broadcast, watch};

use super::errors::{HResult, internal};
use super::jobs::Jobs;
use super::model::Served;
use super::view::CurationView;
use crate::store::{Store, StoreError};

/// Notifications buffered per connection before a slow one starts losing the oldest.
const NOTIFY_CAPACITY: usize = 4096;

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    /// `cpu` or `cuda:N`, as reported by status.
    pub device: String,
    /// Required in `initialize` on TCP connections when set.
    pub token: Option<String>,
    pub max_body: usize,
    /// Where the encoder weights live (`sotalign fetch`'s asset layout).
    pub assets_dir: PathBuf,
    /// Exact search below `exact_below` items per modality, HNSW above.
    pub index: crate::index::IndexConfig,
}

pub struct Shared {
    pub opts: Options,
    /// The store is synchronous; handlers reach it through [`Shared::store`] on a blocking
    /// thread, so a slow disk never stalls the async workers.
    store: Arc<Mutex<Store>>,
    pub jobs: Arc<Jobs>,
    /// Text and image encoders, loaded on first need and kept resident.
    pub encoders: super::encode::Encoders,
    pub notify: broadcast::Sender<Message>,
    model: RwLock<Option<Arc<Served>>>,
    /// What queries need to know about the store, in memory ([`super::view`]).
    view: RwLock<CurationView>,
    /// Index builds in progress (a new model's, a restore's, an ingest's re-index); status
    /// says `rebuilding` while any runs.
    rebuilds: AtomicUsize,
    /// Bumped whenever stored embeddings change (ingest): an alignment that snapshotted an
    /// older version re-indexes after its swap, so samples ingested meanwhile are searchable.
    pub samples_version: AtomicU64,
    shutdown: watch::Sender<bool>,
    next_conn: AtomicU64,
}

impl Shared {
    pub fn new(opts: Options, store: Store) -> Arc<Self> {
        let (notify, _) = broadcast::channel(NOTIFY_CAPACITY);
        let (shutdown, _) = watch::channel(false);
        Arc::new(Self {
            encoders: super::encode::Encoders::new(opts.assets_dir.clone(), opts.device.clone()),
            opts,
            store: Arc::new(Mutex::new(store)),
            jobs: Arc::new(Jobs::new(notify.clone())),
            notify,
            model: RwLock::new(None),
            view: RwLock::new(CurationView::empty()),
            rebuilds: AtomicUsize::new(0),
            samples_version: AtomicU64::new(0),
            shutdown,
            next_conn: AtomicU64::new(1),
        })
    }

    /// Run `f` on the store from a blocking thread.
    pub async fn store<T, F>(&self, f: F) -> HResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = store.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut g).map_err(ErrorObject::from)
        })
        .await
        .map_err(|e| internal(format!("store task failed: {e}")))?
    }

    /// Direct access for code already on a blocking thread (jobs).
    pub fn store_blocking<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> HResult<T> {
        let mut g = self.store.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g).map_err(ErrorObject::from)
    }

    pub fn model(&self) -> Option<Arc<Served>> {
        self.model.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swap in a new model atomically: queries that already hold the old `Arc` finish on it.
    pub fn set_model(&self, m: Arc<Served>) {
        *self.model.write().unwrap_or_else(|p| p.into_inner()) = Some(m);
    }

    /// Read the curation view (hold the guard briefly: decisions wait for it).
    pub fn view(&self) -> std::sync::RwLockReadGuard<'_, CurationView> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Update the curation view; call it inside the store's critical section (see
    /// [`Shared::store_with_view`]) so updates follow the commit order.
    pub fn view_mut(&self) -> std::sync::RwLockWriteGuard<'_, CurationView> {
        self.view.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Reload the curation view from the store (start, ingest). Keeps the precision estimate.
    pub fn reload_view(&self) -> HResult<()> {
        let g = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let keep = self.view().hybrid.clone();
        let v = CurationView::load(&g, Some(keep)).map_err(ErrorObject::from)?;
        *self.view_mut() = v;
        Ok(())
    }

    /// Run `f` on the store and the curation view together, on a blocking thread: a decision
    /// commits and updates the view in one critical section.
    pub async fn store_with_view<T, F>(self: &Arc<Self>, f: F) -> HResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store, &Shared) -> Result<T, StoreError> + Send + 'static,
    {
        let sh = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = sh.store.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut g, &sh).map_err(ErrorObject::from)
        })
        .await
        .map_err(|e| internal(format!("store task failed: {e}")))?
    }

    /// Mark an index build; status reports `rebuilding` until the guard drops.
    pub fn begin_rebuild(&self) -> RebuildGuard<'_> {
        self.rebuilds.fetch_add(1, Ordering::SeqCst);
        RebuildGuard(self)
    }

    pub fn is_rebuilding(&self) -> bool {
        self.rebuilds.load(Ordering::SeqCst) > 0
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::SeqCst)
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Stop accepting work: connections close, jobs are cancelled.
    pub fn trigger_shutdown(&self) {
        self.shutdown.send_replace(true);
        self.jobs.cancel_all();
    }
}

/// Ends an index build mark when dropped (also on error paths).
pub struct RebuildGuard<'a>(&'a Shared);

impl Drop for RebuildGuard<'_> {
    fn drop(&mut self) {
        self.0.rebuilds.fetch_sub(1, Ordering::SeqCst);
    }
}
