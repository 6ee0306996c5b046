//! The model the daemon serves: a fitted alignment plus an index of every sample already
//! mapped into the shared space, and the queries built on them (search, suggestions,
//! evaluation).
//!
//! A [`Served`] pairs one fitted model with its own [`IndexSet`] (one index per modality), so a
//! query always embeds and searches in the same space. A new alignment builds a new `Served` and
//! its indexes in the background (the align job waits for the index workers) and swaps it in with
//! one pointer write ([`super::state::Shared::set_model`]); queries keep using the previous one
//! meanwhile. New samples under an unchanged model (ingest) are indexed by rebuilding the
//! current `Served`'s indexes, which [`IndexSet`] swaps in atomically per modality.
//!
//! Exact search serves collections below [`IndexConfig::exact_below`] items (measured
//! threshold, docs/BENCHMARKS.md "Index"), hnsw_rs above. Global suggestions run the engine's
//! acquisition strategies ([`sotalign_engine::acquire`]) on the indexed embeddings.
use std::collections::{HashMap, HashSet};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use sotalign_protocol::types::{
    AlignMethod, IndexKind, Modality, ModelStage, Recall, RetrievalMetrics, RunId, SampleId,
    Strategy,
};

use crate::index::{self, BackendKind, BuildPhase, Filter, IndexConfig, IndexError, IndexSet};
use crate::store::Embeddings;
use sotalign_engine::acquire::{self, AcquireConfig, Decisions};
use sotalign_engine::{AlignError, Aligned, Matrix, eval};

/// Rows per block when a whole store is embedded in parallel.
const EMBED_BLOCK_ROWS: usize = 4096;

/// Why a model could not be served or queried.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Align(#[from] AlignError),
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error("index rebuild of the {0:?} side was superseded or cancelled")]
    Superseded(Modality),
}

fn slot(m: Modality) -> index::Modality {
    match m {
        Modality::Image => index::Modality::Image,
        Modality::Text => index::Modality::Text,
    }
}

pub use super::view::IdSet;

/// What the daemon serves.
pub struct Served {
    pub run: RunId,
    pub method: AlignMethod,
    /// What the engine actually fitted, e.g. `cca (teacher only: ...)`.
    pub fitted: String,
    pub model: Box<dyn Aligned>,
    /// Shared-space dimension (0 until indexed).
    pub dim: usize,
    pub index: IndexSet,
    pub pairs: u64,
    pub trained_at_ms: u64,
    pub metrics: Option<RetrievalMetrics>,
    /// Which of its alignment's models this is (`None`: restored from an older checkpoint).
    pub stage: Option<ModelStage>,
}

impl Served {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        run: RunId,
        method: AlignMethod,
        fitted: String,
        model: Box<dyn Aligned>,
        pairs: u64,
        trained_at_ms: u64,
        metrics: Option<RetrievalMetrics>,
        config: IndexConfig,
    ) -> Self {
        Self {
            run,
            method,
            fitted,
            model,
            dim: 0,
            index: IndexSet::new(config),
            pairs,
            trained_at_ms,
            metrics,
            stage: None,
        }
    }

    /// Map every given sample through the model and build both indexes on their worker threads;
    /// blocks until both are swapped in. `progress(modality, done, total)` runs on this thread.
    /// On a `Served` already published, searches keep using the previous indexes until the swap.
    pub fn index_samples(
        &mut self,
        images: &Embeddings,
        texts: &Embeddings,
        progress: &mut dyn FnMut(Modality, usize, usize),
    ) -> Result<(), ServeError> {
        let (ex, ey) = self.embed_all(images, texts)?;
        self.dim = ex.cols.max(ey.cols);
        self.rebuild(images, texts, ex, ey, progress)
    }

    /// [`Self::index_samples`] on a published model: `&self`, dimension unchanged.
    pub fn reindex(
        &self,
        images: &Embeddings,
        texts: &Embeddings,
        progress: &mut dyn FnMut(Modality, usize, usize),
    ) -> Result<(), ServeError> {
        let (ex, ey) = self.embed_all(images, texts)?;
        self.rebuild(images, texts, ex, ey, progress)
    }

    fn embed_all(
        &self,
        images: &Embeddings,
        texts: &Embeddings,
    ) -> Result<(Matrix, Matrix), ServeError> {
        // Row blocks on the rayon pool, both sides at once: at 100k samples per side this was
        // the longest part of a re-align's first stage on one thread. Every served method
        // embeds row by row (engine test `closed_form_embeddings_are_row_wise`).
        let (ex, ey) = rayon::join(
            || {
                images
                    .matrix
                    .par_map_rows(EMBED_BLOCK_ROWS, &|b| self.model.embed_x(b))
            },
            || {
                texts
                    .matrix
                    .par_map_rows(EMBED_BLOCK_ROWS, &|b| self.model.embed_y(b))
            },
        );
        let (ex, ey) = (ex?, ey?);
        ex.check_finite("aligned image embeddings")?;
        ey.check_finite("aligned text embeddings")?;
        Ok((ex, ey))
    }

    fn rebuild(
        &self,
        images: &Embeddings,
        texts: &Embeddings,
        ex: Matrix,
        ey: Matrix,
        progress: &mut dyn FnMut(Modality, usize, usize),
    ) -> Result<(), ServeError> {
        // The workers report through a channel so the callback can borrow this thread's state.
        let (tx, rx) = std::sync::mpsc::channel::<(Modality, usize, usize)>();
        let mut handles = Vec::new();
        for (m, emb, mat) in [(Modality::Image, images, ex), (Modality::Text, texts, ey)] {
            let tx = tx.clone();
            let total = emb.ids.len();
            let h = self.index.rebuild_exact_first(
                slot(m),
                emb.ids.iter().map(|i| i.0).collect(),
                mat,
                move |ph| {
                    let (done, total) = match ph {
                        BuildPhase::Inserting { done, total } => (done, total),
                        BuildPhase::Built => (total, total),
                    };
                    let _ = tx.send((m, done, total));
                },
            );
            handles.push((m, h));
        }
        drop(tx);
        for (m, done, total) in rx {
            progress(m, done, total);
        }
        for (m, h) in handles {
            match h.wait()? {
                index::RebuildOutcome::Swapped { .. } => {}
                _ => return Err(ServeError::Superseded(m)),
            }
        }
        Ok(())
    }

    /// Exact search serves at once after a publish; a collection past the threshold then gets
    /// its graph built in the background and swapped in when done (detached: a newer rebuild
    /// or the model's replacement stops it). Called once no alignment needs the cores.
    pub fn upgrade_index_in_background(&self) {
        for m in [Modality::Image, Modality::Text] {
            drop(self.index.upgrade_to_graph(slot(m)));
        }
    }

    pub fn len(&self, m: Modality) -> usize {
        self.index.current(slot(m)).index.len()
    }

    /// Exact below the threshold, HNSW above; HNSW when either side uses it.
    pub fn index_kind(&self) -> IndexKind {
        let hnsw = [Modality::Image, Modality::Text]
            .iter()
            .any(|m| self.index.current(slot(*m)).index.backend_kind() == BackendKind::Hnsw);
        if hnsw {
            IndexKind::Hnsw
        } else {
            IndexKind::Exact
        }
    }

    /// The unit shared-space vector of an indexed sample.
    pub fn vector(&self, m: Modality, id: SampleId) -> Option<Vec<f32>> {
        self.index
            .current(slot(m))
            .index
            .vector(id.0)
            .map(<[f32]>::to_vec)
    }

    /// Ids indexed for `m`, in row order.
    pub fn ids(&self, m: Modality) -> Vec<SampleId> {
        self.index
            .current(slot(m))
            .index
            .ids()
            .iter()
            .map(|i| SampleId(*i))
            .collect()
    }

    /// The `k` best samples of modality `m` for shared-space `q`, best first, among those
    /// `keep` admits.
    pub fn search(
        &self,
        m: Modality,
        q: &[f32],
        k: usize,
        keep: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Vec<(SampleId, f32)>, IndexError> {
        let r = self.index.search(slot(m), q, k, &Filter::Predicate(keep))?;
        Ok(r.hits
            .into_iter()
            .map(|h| (SampleId(h.id), h.score))
            .collect())
    }

    /// Map a raw encoder-space vector of modality `m` into the shared space (unit norm).
    pub fn embed_raw(&self, m: Modality, v: &[f32]) -> Result<Vec<f32>, AlignError> {
        let x = Matrix::from_vec(1, v.len(), v.to_vec())?;
        let e = match m {
            Modality::Image => self.model.embed_x(&x)?,
            Modality::Text => self.model.embed_y(&x)?,
        };
        Ok(e.l2_normalized().data)
    }

    /// The best partner (of modality `m`, not hidden) of shared-space vector `q`.
    pub fn best_in(&self, m: Modality, q: &[f32], hidden: &IdSet) -> Option<SampleId> {
        self.search(m, q, 1, &|id| !hidden.contains(&id))
            .ok()?
            .first()
            .map(|h| h.0)
    }

    /// Shared-space rows of `ids` (all must be indexed).
    fn rows(&self, m: Modality, ids: &[SampleId]) -> Matrix {
        let cur = self.index.current(slot(m));
        let dim = cur.index.dim();
        let mut data = Vec::with_capacity(ids.len() * dim);
        for id in ids {
            match cur.index.vector(id.0) {
                Some(v) => data.extend_from_slice(v),
                None => data.extend(std::iter::repeat_n(0.0, dim)),
            }
        }
        Matrix {
            rows: ids.len(),
            cols: dim,
            data,
        }
    }

    /// Retrieval on held-out pairs by the engine's evaluation ([`sotalign_engine::eval::ranks`],
    /// the reference's pessimistic rule): the gallery is every held-out pair's other side; an
    /// item is correct when its caption group ([`sotalign_engine::groups`]) is the query's.
    /// `captions` maps text ids to captions (a text without one is its own group).
    pub fn evaluate(
        &self,
        pairs: &[(SampleId, SampleId)],
        captions: &HashMap<SampleId, String>,
    ) -> Option<RetrievalMetrics> {
        let (ci, ct) = (
            self.index.current(slot(Modality::Image)),
            self.index.current(slot(Modality::Text)),
        );
        let kept: Vec<(SampleId, SampleId)> = pairs
            .iter()
            .filter(|(i, t)| ci.index.contains(i.0) && ct.index.contains(t.0))
            .copied()
            .collect();
        if kept.is_empty() {
            return None;
        }
        let labels = sotalign_engine::groups::caption_groups(
            kept.iter()
                .map(|(_, t)| captions.get(t).map(String::as_str)),
        );
        let x = self.rows(
            Modality::Image,
            &kept.iter().map(|p| p.0).collect::<Vec<_>>(),
        );
        let y = self.rows(
            Modality::Text,
            &kept.iter().map(|p| p.1).collect::<Vec<_>>(),
        );
        let n = kept.len();
        let s = x.matmul_t(&y);
        let scores = faer::Mat::<f64>::from_fn(n, n, |a, b| s.data[a * n + b] as f64);
        let gallery: Vec<Option<u32>> = labels.iter().map(|&l| Some(l)).collect();
        let i2t = eval::ranks(scores.as_ref(), &labels, &gallery).ok()?;
        let t2i = eval::ranks(scores.as_ref().transpose(), &labels, &gallery).ok()?;
        let recall = |r: &[usize]| {
            let m = eval::dir_metrics(r);
            Recall {
                r1: m.r1,
                r5: m.r5,
                r10: m.r10,
            }
        };
        Some(RetrievalMetrics {
            image_to_text: recall(&i2t),
            text_to_image: recall(&t2i),
            pairs: n as u64,
        })
    }

    /// Add samples to a published model: map only `raw` (encoder-space rows of `ids`, none of
    /// them indexed yet) through the model and rebuild the modality's index from the vectors it
    /// already holds plus the new ones, without re-embedding anything. Blocks until swapped in.
    pub fn append(&self, m: Modality, ids: &[SampleId], raw: &Matrix) -> Result<(), ServeError> {
        if ids.is_empty() {
            return Ok(());
        }
        let e = match m {
            Modality::Image => self.model.embed_x(raw)?,
            Modality::Text => self.model.embed_y(raw)?,
        };
        e.check_finite("aligned embeddings of new samples")?;
        let cur = self.index.current(slot(m));
        let old = cur.index.ids();
        let dim = if old.is_empty() {
            e.cols
        } else {
            cur.index.dim()
        };
        if e.cols != dim {
            return Err(ServeError::Align(AlignError::DimensionMismatch {
                what: "new samples' aligned embeddings".into(),
                expected: dim,
                got: e.cols,
            }));
        }
        let mut all_ids: Vec<u64> = old.to_vec();
        let mut data = Vec::with_capacity((old.len() + ids.len()) * dim);
        for id in old {
            if let Some(v) = cur.index.vector(*id) {
                data.extend_from_slice(v);
            }
        }
        all_ids.extend(ids.iter().map(|i| i.0));
        data.extend_from_slice(&e.data);
        let mat = Matrix {
            rows: all_ids.len(),
            cols: dim,
            data,
        };
        match self
            .index
            .rebuild_in_background(slot(m), all_ids, mat, |_| {})
            .wait()?
        {
            index::RebuildOutcome::Swapped { .. } => Ok(()),
            _ => Err(ServeError::Superseded(m)),
        }
    }

    /// Is sample `id` of modality `m` indexed?
    pub fn contains(&self, m: Modality, id: SampleId) -> bool {
        self.index.current(slot(m)).index.contains(id.0)
    }

    /// Global pair suggestions between the indexed samples that are neither paired nor held
    /// out (`hidden`), never a rejected pair, by the engine's acquisition strategy. Confirmed
    /// pairs serve as near-duplicate references for `diverse`.
    pub fn suggest_pairs(
        &self,
        hidden: &IdSet,
        confirmed: &[(SampleId, SampleId)],
        rejected: &HashSet<(SampleId, SampleId)>,
        strategy: Strategy,
        limit: usize,
        seed: u64,
    ) -> Result<Vec<PairPick>, AlignError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut pools: Vec<Vec<SampleId>> = [Modality::Image, Modality::Text]
            .iter()
            .map(|m| {
                self.ids(*m)
                    .into_iter()
                    .filter(|id| !hidden.contains(&id.0))
                    .collect()
            })
            .collect();
        // Bound the dense score matrix (and the OT problem) to MAX_SIDE per modality: a
        // seeded random subset of larger pools.
        for side in pools.iter_mut() {
            if side.len() > MAX_SIDE {
                side.shuffle(&mut rng);
                side.truncate(MAX_SIDE);
                side.sort();
            }
        }
        let (txt_pool, img_pool) = (
            pools.pop().unwrap_or_default(),
            pools.pop().unwrap_or_default(),
        );
        if img_pool.is_empty() || txt_pool.is_empty() {
            return Ok(Vec::new());
        }
        // Confirmed pairs (most recent MAX_REFERENCES) appended after the pool: `propose`
        // never proposes them and `diverse` steers away from them.
        let (ci, ct) = (
            self.index.current(slot(Modality::Image)),
            self.index.current(slot(Modality::Text)),
        );
        let refs: Vec<(SampleId, SampleId)> = confirmed
            .iter()
            .rev()
            .filter(|(i, t)| ci.index.contains(i.0) && ct.index.contains(t.0))
            .take(MAX_REFERENCES)
            .copied()
            .collect();
        let mut imgs = img_pool;
        let mut txts = txt_pool;
        let mut decisions = Decisions::default();
        for (i, t) in &refs {
            decisions.confirm(imgs.len(), txts.len());
            imgs.push(*i);
            txts.push(*t);
        }
        let ipos: HashMap<SampleId, usize> =
            imgs.iter().enumerate().map(|(k, id)| (*id, k)).collect();
        let tpos: HashMap<SampleId, usize> =
            txts.iter().enumerate().map(|(k, id)| (*id, k)).collect();
        for (i, t) in rejected {
            if let (Some(a), Some(c)) = (ipos.get(i), tpos.get(t)) {
                decisions.reject(*a, *c);
            }
        }
        let ex = self.rows(Modality::Image, &imgs);
        let ey = self.rows(Modality::Text, &txts);
        let st = match strategy {
            Strategy::Random => acquire::Strategy::Random,
            Strategy::Confidence => acquire::Strategy::Confidence,
            Strategy::MutualNn => acquire::Strategy::Mnn,
            Strategy::OtMass => acquire::Strategy::Ot,
            Strategy::Diverse => acquire::Strategy::Diverse,
            Strategy::MnnOt => acquire::Strategy::MnnOt,
        };
        let picks = acquire::propose_embedded(
            &ex,
            &ey,
            &decisions,
            st,
            limit,
            &AcquireConfig::default(),
            &mut rng,
        )?;
        Ok(picks
            .into_iter()
            .map(|p| PairPick {
                image: imgs[p.image],
                text: txts[p.text],
                score: p.score as f64,
                priority: p.key,
                mutual_nn: p.mutual_nn,
                ot_mass: p.ot_mass,
            })
            .collect())
    }
}

/// Largest unpaired pool per modality scored densely by global suggestions.
pub const MAX_SIDE: usize = 4096;
/// Most recent confirmed pairs used as near-duplicate references by `diverse`.
const MAX_REFERENCES: usize = 2048;

/// One global suggestion.
#[derive(Debug, Clone, PartialEq)]
pub struct PairPick {
    pub image: SampleId,
    pub text: SampleId,
    pub score: f64,
    pub priority: f64,
    pub mutual_nn: bool,
    pub ot_mass: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    use sotalign_engine::testing::Identity;

    fn emb(ids: &[u64], rows: &[[f32; 2]]) -> Embeddings {
        Embeddings {
            ids: ids.iter().map(|i| SampleId(*i)).collect(),
            matrix: Matrix::from_vec(rows.len(), 2, rows.iter().flatten().copied().collect())
                .unwrap(),
        }
    }

    fn served(config: IndexConfig) -> Served {
        // Images 1..4 and texts 11..14 at matching angles; text 14 is a near-copy of text 13.
        let a = |deg: f32| [deg.to_radians().cos(), deg.to_radians().sin()];
        let images = emb(&[1, 2, 3, 4], &[a(0.0), a(40.0), a(80.0), a(85.0)]);
        let texts = emb(&[11, 12, 13, 14], &[a(2.0), a(38.0), a(83.0), a(84.0)]);
        let mut s = Served::new(
            RunId(1),
            AlignMethod::Cca,
            "identity".into(),
            Box::new(Identity),
            0,
            0,
            None,
            config,
        );
        let mut seen = Vec::new();
        s.index_samples(&images, &texts, &mut |m, d, t| seen.push((m, d, t)))
            .unwrap();
        // Each side reports its completion.
        assert!(seen.contains(&(Modality::Image, 4, 4)));
        assert!(seen.contains(&(Modality::Text, 4, 4)));
        s
    }

    #[test]
    fn evaluation_follows_the_pessimistic_rank_rule() {
        let s = served(IndexConfig::default());
        let pairs: Vec<(SampleId, SampleId)> =
            (1..=4).map(|i| (SampleId(i), SampleId(10 + i))).collect();
        let caps: HashMap<SampleId, String> =
            (11..=14).map(|t| (SampleId(t), format!("c{t}"))).collect();
        let m = s.evaluate(&pairs, &caps).unwrap();
        assert_eq!(m.pairs, 4);
        assert_eq!(m.image_to_text.r1, 1.0);
        // Text 13 (83 deg) is closer to image 4 (85) than to image 3 (80): one t2i miss at R@1.
        assert_eq!(m.text_to_image.r1, 0.75);
        assert_eq!(m.text_to_image.r5, 1.0);
        // Same caption for texts 13 and 14: both count as correct, so t2i is perfect.
        let mut same = caps.clone();
        same.insert(SampleId(14), "c13".into());
        assert_eq!(s.evaluate(&pairs, &same).unwrap().text_to_image.r1, 1.0);
    }

    #[test]
    fn suggestions_skip_hidden_confirmed_and_rejected() {
        let s = served(IndexConfig::default());
        let none = HashSet::new();
        let rejected: HashSet<_> = [(SampleId(1), SampleId(11))].into_iter().collect();
        // Image 2 and text 12 are a confirmed pair: hidden, and a `diverse` reference.
        let hidden: IdSet = [2, 12].into_iter().collect();
        let confirmed = [(SampleId(2), SampleId(12))];
        for st in [
            Strategy::Random,
            Strategy::Confidence,
            Strategy::MutualNn,
            Strategy::OtMass,
            Strategy::Diverse,
            Strategy::MnnOt,
        ] {
            let v = s
                .suggest_pairs(&hidden, &confirmed, &rejected, st, 10, 7)
                .unwrap();
            assert!(!v.is_empty(), "{st:?}");
            for p in &v {
                assert_ne!((p.image, p.text), (SampleId(1), SampleId(11)), "{st:?}");
                assert!(p.image != SampleId(2) && p.text != SampleId(12), "{st:?}");
            }
            let texts: HashSet<_> = v.iter().map(|p| p.text).collect();
            assert_eq!(texts.len(), v.len(), "{st:?} suggested a text twice");
        }
        // Default ranking: the mutual pairs first (1-11, 2-12, 4-14; image 3's best text 13
        // prefers image 4), every pair with its plan mass.
        let v = s
            .suggest_pairs(&IdSet::new(), &[], &none, Strategy::MnnOt, 10, 0)
            .unwrap();
        let mutual: HashSet<(u64, u64)> = v[..3]
            .iter()
            .filter(|p| p.mutual_nn)
            .map(|p| (p.image.0, p.text.0))
            .collect();
        assert_eq!(mutual, [(1, 11), (2, 12), (4, 14)].into_iter().collect());
        assert!(v[3..].iter().all(|p| !p.mutual_nn));
        assert!(
            v.iter()
                .all(|p| p.ot_mass.is_some_and(|m| m > 0.0 && m <= 1.0 + 1e-3))
        );
    }

    #[test]
    fn search_filters_and_orders_with_both_backends() {
        for exact_below in [usize::MAX, 0] {
            let s = served(IndexConfig {
                exact_below,
                ..IndexConfig::default()
            });
            // A published model serves exact search at once; past the threshold its graph is
            // built afterwards (in the daemon, in the background once no alignment runs).
            assert_eq!(s.index_kind(), IndexKind::Exact);
            let kind = if exact_below == 0 {
                for m in [Modality::Image, Modality::Text] {
                    if let Some(h) = s.index.upgrade_to_graph(slot(m)) {
                        h.wait().unwrap();
                    }
                }
                IndexKind::Hnsw
            } else {
                IndexKind::Exact
            };
            assert_eq!(s.index_kind(), kind);
            let q = s.vector(Modality::Image, SampleId(3)).unwrap();
            let hits = s.search(Modality::Text, &q, 2, &|id| id != 13).unwrap();
            assert_eq!(
                hits.iter().map(|h| h.0).collect::<Vec<_>>(),
                vec![SampleId(14), SampleId(12)]
            );
            let hidden: IdSet = [13].into_iter().collect();
            assert_eq!(s.best_in(Modality::Text, &q, &hidden), Some(SampleId(14)));
        }
    }
}
