//! The model the daemon serves: a fitted alignment plus every sample already mapped into the
//! shared space, and the queries built on it (search, suggestions, evaluation).
//!
//! A [`Served`] is immutable; a new alignment (or an ingest that adds samples) builds a new one
//! in the background and swaps it in with one pointer write ([`super::state::Shared::set_model`]),
//! so queries never wait for a rebuild and never see half of one.
//!
//! Search is exact (one matrix-vector product over unit rows): at the collection sizes the
//! store holds today (thousands), a scan is below a millisecond.
use std::collections::{HashMap, HashSet};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sotalign_protocol::types::{
    AlignMethod, IndexKind, Modality, Recall, RetrievalMetrics, RunId, SampleId, Strategy,
};

use crate::align::{AlignError, Aligned, Matrix};
use crate::store::Embeddings;

/// One modality in the shared space.
pub struct Space {
    pub ids: Vec<SampleId>,
    pos: HashMap<SampleId, usize>,
    /// Unit rows, `ids[i]` is row i.
    pub emb: Matrix,
}

impl Space {
    fn new(ids: Vec<SampleId>, emb: Matrix) -> Self {
        let pos = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        Self {
            ids,
            pos,
            emb: emb.l2_normalized(),
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn row_of(&self, id: SampleId) -> Option<usize> {
        self.pos.get(&id).copied()
    }

    pub fn vector(&self, id: SampleId) -> Option<&[f32]> {
        self.row_of(id).map(|r| self.emb.row(r))
    }

    /// Cosine of `q` (unit) against every row.
    pub fn scores(&self, q: &[f32]) -> Vec<f32> {
        (0..self.emb.rows)
            .map(|r| dot(self.emb.row(r), q))
            .collect()
    }

    /// The `k` best rows for `q` among those `keep` admits, best first.
    pub fn top_k(
        &self,
        q: &[f32],
        k: usize,
        keep: impl Fn(SampleId) -> bool,
    ) -> Vec<(SampleId, f32)> {
        let mut scored: Vec<(SampleId, f32)> = self
            .scores(q)
            .into_iter()
            .enumerate()
            .map(|(r, s)| (self.ids[r], s))
            .filter(|(id, _)| keep(*id))
            .collect();
        let k = k.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        scored.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// What a served model is.
pub struct Served {
    pub run: RunId,
    pub method: AlignMethod,
    /// What the engine actually fitted, e.g. `cca (teacher only: ...)`.
    pub fitted: String,
    pub model: Box<dyn Aligned>,
    pub dim: usize,
    pub images: Space,
    pub texts: Space,
    /// Samples that must never be suggested (held out for evaluation).
    pub held_out: HashSet<SampleId>,
    pub pairs: u64,
    pub trained_at_ms: u64,
    pub metrics: Option<RetrievalMetrics>,
}

impl Served {
    /// Map every stored sample through `model`.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        run: RunId,
        method: AlignMethod,
        fitted: String,
        model: Box<dyn Aligned>,
        images: &Embeddings,
        texts: &Embeddings,
        held_out: HashSet<SampleId>,
        pairs: u64,
        trained_at_ms: u64,
        metrics: Option<RetrievalMetrics>,
    ) -> Result<Self, AlignError> {
        let ex = model.embed_x(&images.matrix)?;
        let ey = model.embed_y(&texts.matrix)?;
        let dim = ex.cols.max(ey.cols);
        Ok(Self {
            run,
            method,
            fitted,
            model,
            dim,
            images: Space::new(images.ids.clone(), ex),
            texts: Space::new(texts.ids.clone(), ey),
            held_out,
            pairs,
            trained_at_ms,
            metrics,
        })
    }

    pub fn space(&self, m: Modality) -> &Space {
        match m {
            Modality::Image => &self.images,
            Modality::Text => &self.texts,
        }
    }

    pub fn index_kind(&self) -> IndexKind {
        IndexKind::Exact
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

    /// The best partner (of modality `m`, not held out) of shared-space vector `q`.
    pub fn best_in(&self, m: Modality, q: &[f32]) -> Option<SampleId> {
        self.space(m)
            .top_k(q, 1, |id| !self.held_out.contains(&id))
            .first()
            .map(|h| h.0)
    }

    /// Retrieval on held-out pairs with the reference ranking rule (tests/fixtures/reference/
    /// PROTOCOL.md): the gallery is every held-out pair's other side; an item is correct when
    /// its caption equals the query's; rank = incorrect items scoring >= the best correct one.
    pub fn evaluate(
        &self,
        pairs: &[(SampleId, SampleId)],
        captions: &HashMap<SampleId, String>,
    ) -> Option<RetrievalMetrics> {
        let rows: Vec<(usize, usize)> = pairs
            .iter()
            .filter_map(|(i, t)| Some((self.images.row_of(*i)?, self.texts.row_of(*t)?)))
            .collect();
        if rows.is_empty() {
            return None;
        }
        let mut groups: HashMap<String, u32> = HashMap::new();
        let labels: Vec<u32> = pairs
            .iter()
            .filter(|(i, t)| self.images.row_of(*i).is_some() && self.texts.row_of(*t).is_some())
            .map(|(_, t)| {
                let key = captions.get(t).cloned().unwrap_or_else(|| format!("#{t}"));
                let n = groups.len() as u32;
                *groups.entry(key).or_insert(n)
            })
            .collect();
        let x = self
            .images
            .emb
            .select_rows(&rows.iter().map(|r| r.0).collect::<Vec<_>>());
        let y = self
            .texts
            .emb
            .select_rows(&rows.iter().map(|r| r.1).collect::<Vec<_>>());
        let s = x.matmul_t(&y);
        let n = rows.len();
        let rank = |score: &dyn Fn(usize, usize) -> f32, q: usize| -> usize {
            let best = (0..n)
                .filter(|&g| labels[g] == labels[q])
                .map(|g| score(q, g))
                .fold(f32::NEG_INFINITY, f32::max);
            (0..n)
                .filter(|&g| labels[g] != labels[q] && score(q, g) >= best)
                .count()
        };
        let i2t: Vec<usize> = (0..n).map(|q| rank(&|a, b| s.data[a * n + b], q)).collect();
        let t2i: Vec<usize> = (0..n).map(|q| rank(&|a, b| s.data[b * n + a], q)).collect();
        let recall = |r: &[usize]| {
            let at = |k: usize| r.iter().filter(|&&x| x < k).count() as f64 / r.len() as f64;
            Recall {
                r1: at(1),
                r5: at(5),
                r10: at(10),
            }
        };
        Some(RetrievalMetrics {
            image_to_text: recall(&i2t),
            text_to_image: recall(&t2i),
            pairs: n as u64,
        })
    }

    /// Global pair suggestions between unpaired images and texts (never a rejected pair).
    /// Returns (image, text, score, priority, mutual_nn, ot_mass), best first.
    pub fn suggest_pairs(
        &self,
        unpaired_images: &[SampleId],
        unpaired_texts: &[SampleId],
        rejected: &HashSet<(SampleId, SampleId)>,
        strategy: Strategy,
        limit: usize,
        seed: u64,
    ) -> Result<Vec<PairPick>, AlignError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut imgs: Vec<(SampleId, usize)> = unpaired_images
            .iter()
            .filter_map(|id| Some((*id, self.images.row_of(*id)?)))
            .collect();
        let mut txts: Vec<(SampleId, usize)> = unpaired_texts
            .iter()
            .filter_map(|id| Some((*id, self.texts.row_of(*id)?)))
            .collect();
        // Bound the dense score matrix (and the OT problem) to MAX_SIDE per modality: a
        // seeded random subset of larger pools.
        for side in [&mut imgs, &mut txts] {
            if side.len() > MAX_SIDE {
                side.shuffle(&mut rng);
                side.truncate(MAX_SIDE);
                side.sort();
            }
        }
        let (n, m) = (imgs.len(), txts.len());
        if n == 0 || m == 0 {
            return Ok(Vec::new());
        }
        let x = self
            .images
            .emb
            .select_rows(&imgs.iter().map(|p| p.1).collect::<Vec<_>>());
        let y = self
            .texts
            .emb
            .select_rows(&txts.iter().map(|p| p.1).collect::<Vec<_>>());
        let s = x.matmul_t(&y);
        let banned = |i: usize, j: usize| rejected.contains(&(imgs[i].0, txts[j].0));
        // Best and second-best text per image, best image per text (rejected pairs excluded).
        let mut row_best = vec![(usize::MAX, f32::NEG_INFINITY, f32::NEG_INFINITY); n];
        let mut col_best = vec![(usize::MAX, f32::NEG_INFINITY); m];
        for i in 0..n {
            for j in 0..m {
                if banned(i, j) {
                    continue;
                }
                let v = s.data[i * m + j];
                let rb = &mut row_best[i];
                if v > rb.1 {
                    rb.2 = rb.1;
                    rb.0 = j;
                    rb.1 = v;
                } else if v > rb.2 {
                    rb.2 = v;
                }
                if v > col_best[j].1 {
                    col_best[j] = (i, v);
                }
            }
        }
        let mutual = |i: usize, j: usize| row_best[i].0 == j && col_best[j].0 == i;
        let pick = |i: usize, j: usize, priority: f64, ot: Option<f64>| PairPick {
            image: imgs[i].0,
            text: txts[j].0,
            score: s.data[i * m + j] as f64,
            priority,
            mutual_nn: mutual(i, j),
            ot_mass: ot,
        };
        let margin = |i: usize| {
            let (_, b, sec) = row_best[i];
            if sec.is_finite() {
                (b - sec) as f64
            } else {
                b as f64
            }
        };
        let valid: Vec<usize> = (0..n).filter(|&i| row_best[i].0 != usize::MAX).collect();
        let mut out: Vec<PairPick> = match strategy {
            Strategy::Random => {
                let mut order = valid.clone();
                order.shuffle(&mut rng);
                order
                    .into_iter()
                    .map(|i| pick(i, row_best[i].0, rng.random::<f64>(), None))
                    .collect()
            }
            Strategy::Confidence | Strategy::Diverse => {
                let mut v: Vec<PairPick> = valid
                    .iter()
                    .map(|&i| pick(i, row_best[i].0, margin(i), None))
                    .collect();
                v.sort_by(|a, b| b.priority.total_cmp(&a.priority));
                v
            }
            Strategy::MutualNn => {
                let mut v: Vec<PairPick> = valid
                    .iter()
                    .filter(|&&i| mutual(i, row_best[i].0))
                    .map(|&i| pick(i, row_best[i].0, s.data[i * m + row_best[i].0] as f64, None))
                    .collect();
                v.sort_by(|a, b| b.priority.total_cmp(&a.priority));
                v
            }
            Strategy::OtMass => {
                // Entropic OT between the unpaired images and texts under the current model;
                // rejected pairs get a prohibitive cost.
                let mut k = s.data.clone();
                for i in 0..n {
                    for j in 0..m {
                        if banned(i, j) {
                            k[i * m + j] = -4.0;
                        }
                    }
                }
                let mut sk = crate::align::sinkhorn::Sinkhorn::new(n, m);
                sk.solve(&k, OT_EPS, OT_ITERS)?;
                let mut v: Vec<PairPick> = valid
                    .iter()
                    .map(|&i| {
                        let (j, mass) = (0..m)
                            .filter(|&j| !banned(i, j))
                            .map(|j| (j, sk.plan_entry(i, j)))
                            .fold((usize::MAX, f32::NEG_INFINITY), |a, b| {
                                if b.1 > a.1 { b } else { a }
                            });
                        // Scaled so that 1 = the image's whole row mass on this text.
                        let scaled = mass as f64 * n as f64;
                        pick(i, j, scaled, Some(scaled))
                    })
                    .collect();
                v.sort_by(|a, b| b.priority.total_cmp(&a.priority));
                v
            }
        };
        // One suggestion per text; `diverse` also skips near-duplicates of chosen ones.
        let mut used_texts = HashSet::new();
        let mut chosen: Vec<PairPick> = Vec::new();
        for p in out.drain(..) {
            if chosen.len() >= limit {
                break;
            }
            if !used_texts.insert(p.text) {
                continue;
            }
            if strategy == Strategy::Diverse {
                let close = chosen.iter().any(|c| {
                    let a = self
                        .images
                        .vector(c.image)
                        .zip(self.images.vector(p.image))
                        .map(|(a, b)| dot(a, b));
                    let b = self
                        .texts
                        .vector(c.text)
                        .zip(self.texts.vector(p.text))
                        .map(|(a, b)| dot(a, b));
                    a.is_some_and(|v| v > DIVERSE_MAX_COS) || b.is_some_and(|v| v > DIVERSE_MAX_COS)
                });
                if close {
                    continue;
                }
            }
            chosen.push(p);
        }
        Ok(chosen)
    }
}

/// Largest unpaired pool per modality scored densely by global suggestions.
pub const MAX_SIDE: usize = 4096;
/// Temperature and iterations of the suggestion OT plan (cosine affinities).
const OT_EPS: f64 = 0.05;
const OT_ITERS: usize = 100;
/// `diverse`: a candidate whose image or text has this cosine or more with an already chosen
/// one is skipped.
const DIVERSE_MAX_COS: f32 = 0.9;

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

    /// Identity "alignment" on 2-d features, for testing the query logic alone.
    struct Identity;
    impl Aligned for Identity {
        fn name(&self) -> &str {
            "identity"
        }
        fn embed_x(&self, x: &Matrix) -> Result<Matrix, AlignError> {
            Ok(x.clone())
        }
        fn embed_y(&self, y: &Matrix) -> Result<Matrix, AlignError> {
            Ok(y.clone())
        }
        fn export_state(&self) -> Result<crate::align::MethodState, AlignError> {
            Err(AlignError::InvalidConfig("test model".into()))
        }
    }

    fn emb(ids: &[u64], rows: &[[f32; 2]]) -> Embeddings {
        Embeddings {
            ids: ids.iter().map(|i| SampleId(*i)).collect(),
            matrix: Matrix::from_vec(rows.len(), 2, rows.iter().flatten().copied().collect())
                .unwrap(),
        }
    }

    fn served() -> Served {
        // Images 1..4 and texts 11..14 at matching angles; text 14 is a near-copy of text 13.
        let a = |deg: f32| [deg.to_radians().cos(), deg.to_radians().sin()];
        let images = emb(&[1, 2, 3, 4], &[a(0.0), a(40.0), a(80.0), a(85.0)]);
        let texts = emb(&[11, 12, 13, 14], &[a(2.0), a(38.0), a(83.0), a(84.0)]);
        Served::build(
            RunId(1),
            AlignMethod::Cca,
            "identity".into(),
            Box::new(Identity),
            &images,
            &texts,
            HashSet::new(),
            0,
            0,
            None,
        )
        .unwrap()
    }

    #[test]
    fn evaluation_follows_the_pessimistic_rank_rule() {
        let s = served();
        let pairs: Vec<(SampleId, SampleId)> =
            (1..=4).map(|i| (SampleId(i), SampleId(10 + i))).collect();
        // Distinct captions: image 3 (80 deg) is closer to text 13 (83) than 14 (84) -> all
        // i2t at rank 0 except image 4 (85 deg): text 14 (84) beats... it is its own match.
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
    fn suggestions_respect_rejections_and_rank_by_strategy() {
        let s = served();
        let imgs: Vec<SampleId> = (1..=4).map(SampleId).collect();
        let txts: Vec<SampleId> = (11..=14).map(SampleId).collect();
        let none = HashSet::new();
        let conf = s
            .suggest_pairs(&imgs, &txts, &none, Strategy::Confidence, 10, 0)
            .unwrap();
        // Image 1's best text 11 has the largest margin (next text is 36 degrees further).
        assert_eq!((conf[0].image, conf[0].text), (SampleId(1), SampleId(11)));
        assert!(conf.windows(2).all(|w| w[0].priority >= w[1].priority));
        let mnn = s
            .suggest_pairs(&imgs, &txts, &none, Strategy::MutualNn, 10, 0)
            .unwrap();
        assert!(mnn.iter().all(|p| p.mutual_nn));
        assert!(
            mnn.iter()
                .any(|p| (p.image, p.text) == (SampleId(2), SampleId(12)))
        );
        let rejected: HashSet<_> = [(SampleId(1), SampleId(11))].into_iter().collect();
        for st in [
            Strategy::Random,
            Strategy::Confidence,
            Strategy::MutualNn,
            Strategy::OtMass,
            Strategy::Diverse,
        ] {
            let v = s.suggest_pairs(&imgs, &txts, &rejected, st, 10, 7).unwrap();
            assert!(
                !v.iter()
                    .any(|p| (p.image, p.text) == (SampleId(1), SampleId(11))),
                "{st:?}"
            );
            let texts: HashSet<_> = v.iter().map(|p| p.text).collect();
            assert_eq!(texts.len(), v.len(), "{st:?} suggested a text twice");
        }
        let ot = s
            .suggest_pairs(&imgs, &txts, &none, Strategy::OtMass, 10, 0)
            .unwrap();
        assert!(
            ot.iter()
                .all(|p| p.ot_mass.is_some_and(|m| m > 0.0 && m <= 1.0 + 1e-3))
        );
        assert_eq!((ot[0].image, ot[0].text), (SampleId(1), SampleId(11)));
        // Diverse skips image 4 / text 14, near-copies of image 3 / text 13.
        let div = s
            .suggest_pairs(&imgs, &txts, &none, Strategy::Diverse, 10, 0)
            .unwrap();
        assert!(div.len() < conf.len());
    }

    #[test]
    fn top_k_filters_and_orders() {
        let s = served();
        let q = s.images.vector(SampleId(3)).unwrap().to_vec();
        let hits = s.texts.top_k(&q, 2, |id| id != SampleId(13));
        assert_eq!(
            hits.iter().map(|h| h.0).collect::<Vec<_>>(),
            vec![SampleId(14), SampleId(12)]
        );
    }
}
