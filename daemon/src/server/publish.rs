//! The serving core: the one way a model becomes the served one, and the one way new samples
//! join it.
//!
//! - [`publish`]: a fitted model + a store snapshot -> every sample mapped into its space and
//!   indexed, the held-out pairs evaluated, then one pointer write. Used by the alignment job
//!   (each of its stages), by restore at start, and nowhere else.
//! - [`publish_new_samples`]: samples added under an unchanged model (ingest, or ingested while
//!   an alignment ran): only the new rows are embedded; each index is rebuilt from the vectors
//!   it already holds plus the new ones. The curation view is reloaded with them.
//!
//! Invariants: queries keep using the previous model and indexes until the swap; status says
//! `rebuilding` while an index is being built; a failed publish leaves the previous model
//! serving.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sotalign_engine::Matrix;
use sotalign_protocol::types::{Modality, SampleId};

use super::errors::{HResult, internal};
use super::model::{ServeError, Served};
use super::state::Shared;
use crate::store::TrainingSnapshot;

/// Whether a publish may replace a model that is already serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Always,
    /// Restore at start: an alignment that finished meanwhile wins.
    IfNoneServing,
}

/// Captions of the snapshot's texts, by id (evaluation labels).
pub fn captions(snap: &TrainingSnapshot) -> HashMap<SampleId, String> {
    snap.texts
        .ids
        .iter()
        .zip(&snap.captions)
        .filter_map(|(id, c)| Some((*id, c.clone()?)))
        .collect()
}

/// Index every sample of `snap` under `served`, evaluate it on the snapshot's held-out pairs,
/// and serve it. `progress(modality, done, total)` reports index builds. Returns the served
/// model, or `None` when `when` kept the current one.
pub fn publish(
    shared: &Arc<Shared>,
    mut served: Served,
    snap: &TrainingSnapshot,
    when: When,
    progress: &mut dyn FnMut(Modality, usize, usize),
) -> Result<Option<Arc<Served>>, ServeError> {
    let version = shared.samples_version.load(Ordering::SeqCst);
    {
        let _rebuild = shared.begin_rebuild();
        served.index_samples(&snap.images, &snap.texts, progress)?;
    }
    served.metrics = served.evaluate(&snap.held_out, &captions(snap));
    let served = Arc::new(served);
    if when == When::IfNoneServing && shared.model().is_some() {
        return Ok(None);
    }
    shared.set_model(served.clone());
    if when == When::IfNoneServing {
        // A restore is not part of an alignment: its graph may be built now.
        served.upgrade_index_in_background();
    }
    // Samples ingested after the snapshot was read: index them under this model too.
    if shared.samples_version.load(Ordering::SeqCst) != version
        && let Err(e) = publish_new_samples(shared, None)
    {
        tracing::warn!(
            "run {}: could not index samples ingested meanwhile: {}",
            served.run,
            e.message
        );
    }
    Ok(Some(served))
}

/// Add samples to the served model without re-embedding the others: `new` (e.g. an ingest's
/// inserted ids), or with `None` every stored sample the served indexes lack. Reloads the
/// curation view (new captions, seed and held-out pairs) in any case.
pub fn publish_new_samples(shared: &Arc<Shared>, new: Option<&[SampleId]>) -> HResult<()> {
    shared.reload_view()?;
    let Some(cur) = shared.model() else {
        return Ok(());
    };
    let rows: [(Vec<SampleId>, Matrix); 2] = shared.store_blocking(|s| {
        let mut out = [
            (Vec::new(), Vec::<f32>::new(), 0usize),
            (Vec::new(), Vec::<f32>::new(), 0usize),
        ];
        match new {
            Some(ids) => {
                for &id in ids {
                    let (m, v) = s.vector(id)?;
                    let Some(v) = v else { continue };
                    if cur.contains(m, id) {
                        continue;
                    }
                    let o = &mut out[(m == Modality::Text) as usize];
                    o.2 = v.len();
                    o.0.push(id);
                    o.1.extend(v);
                }
            }
            None => {
                for m in [Modality::Image, Modality::Text] {
                    let e = s.embeddings(m)?;
                    let o = &mut out[(m == Modality::Text) as usize];
                    o.2 = e.matrix.cols;
                    for (r, id) in e.ids.iter().enumerate() {
                        if !cur.contains(m, *id) {
                            o.0.push(*id);
                            o.1.extend_from_slice(e.matrix.row(r));
                        }
                    }
                }
            }
        }
        Ok(out.map(|(ids, data, cols)| {
            let matrix = Matrix {
                rows: ids.len(),
                cols,
                data,
            };
            (ids, matrix)
        }))
    })?;
    let _rebuild = shared.begin_rebuild();
    for (m, (ids, raw)) in [Modality::Image, Modality::Text].into_iter().zip(&rows) {
        cur.append(m, ids, raw).map_err(internal)?;
    }
    Ok(())
}
