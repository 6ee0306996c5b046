//! Validation on the paired data only (PROTOCOL.md): the last `max(5, round(0.2 n))` pairs are
//! held out, the method is fitted on the rest (plus the unpaired pools), and the held-out pairs
//! are retrieved among distractors from the unpaired pool. Score = mean MRR of both directions.
//!
//! Labels in the galleries follow what is knowable without the test set: held-out pairs carry
//! their caption groups; an unpaired *text* is a caption, so it is correct when its caption equals
//! the query's (`AlignData::yu_groups`, or, when unknown, bit-identical text features); unpaired
//! *images* have unknown captions and are pure distractors. This reproduces the reference's
//! tuning scores (`tuxpaint_tuning.json`) exactly.
use std::collections::HashMap;

use crate::eval::{RetrievalReport, retrieval_with_distractors};
use crate::{AlignData, AlignError, Aligned, Matrix};

/// Number of held-out pairs for n pairs.
pub fn val_size(n: usize) -> usize {
    5usize.max((0.2 * n as f64).round() as usize)
}

/// `k` disjoint validation folds covering all `n` pairs: a seeded permutation cut into `k`
/// blocks whose sizes differ by at most one, each block sorted. `k` is capped at `n`.
pub fn kfold(n: usize, k: usize, seed: u64) -> Vec<Vec<usize>> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let k = k.clamp(1, n.max(1));
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0xF01D ^ seed));
    (0..k)
        .map(|f| {
            let (lo, hi) = (f * n / k, (f + 1) * n / k);
            let mut v = idx[lo..hi].to_vec();
            v.sort_unstable();
            v
        })
        .collect()
}

/// The `val_size(n)` pairs (sorted) that random split `seed` holds out.
pub fn random_indices(n: usize, seed: u64) -> Vec<usize> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0xA070 ^ seed));
    idx.truncate(val_size(n).min(n));
    idx.sort_unstable();
    idx
}

/// A seeded subset of `m` of the indices `from` (sorted): the smaller training set of a
/// learning curve. Deterministic for a given seed.
pub fn subsample(from: &[usize], m: usize, seed: u64) -> Vec<usize> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut v = from.to_vec();
    v.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0x5B5A ^ seed));
    v.truncate(m);
    v.sort_unstable();
    v
}

/// A train / validation division of one [`AlignData`].
#[derive(Debug, Clone)]
pub struct Holdout {
    /// First n - v pairs plus the full unpaired pools.
    pub train: AlignData,
    pub xq: Matrix,
    pub yq: Matrix,
    pub q_labels: Vec<u32>,
    /// Labels of the text distractors (caption groups of unpaired texts, when known).
    pub y_extra_labels: Vec<Option<u32>>,
    /// Image and text distractors when they are a subset of the unpaired pools
    /// ([`Holdout::cap_distractors`]); `None`: the whole pools of `train`.
    pub distractors: Option<(Matrix, Matrix)>,
}

impl Holdout {
    /// The protocol's split: the last `val_size(n)` pairs are held out.
    pub fn new(data: &AlignData) -> Result<Holdout, AlignError> {
        Self::fold(data, 0)
    }

    /// Fold `f`: the f-th block of `val_size(n)` pairs counted from the end is held out (fold 0
    /// is the protocol's split). Used to average validation over disjoint blocks.
    pub fn fold(data: &AlignData, f: usize) -> Result<Holdout, AlignError> {
        data.validate()?;
        let n = data.n_pairs();
        let v = val_size(n);
        if n < (f + 1) * v + 2 {
            return Err(AlignError::NotEnoughData(format!(
                "validation fold {f} holds out {v} of {n} pairs and needs at least 2 left to fit; give at least {} pairs",
                (f + 1) * v + 2
            )));
        }
        let (lo, hi) = (n - (f + 1) * v, n - f * v);
        let va: Vec<usize> = (lo..hi).collect();
        Self::with_validation(data, &va)
    }

    /// Random split `seed`: `val_size(n)` pairs drawn uniformly (a seeded shuffle) are held out.
    /// Repeated random splits let `auto` average validation noise without the constraint of
    /// disjoint blocks (which leave few folds at small n).
    pub fn random(data: &AlignData, seed: u64) -> Result<Holdout, AlignError> {
        data.validate()?;
        let n = data.n_pairs();
        let v = val_size(n);
        if n < v + 2 {
            return Err(AlignError::NotEnoughData(format!(
                "validation holds out {v} of {n} pairs and needs at least 2 left to fit; give at least {} pairs",
                v + 2
            )));
        }
        Self::with_validation(data, &random_indices(n, seed))
    }

    /// Hold out the pairs `va` (sorted, distinct, in range); fit on the others.
    pub fn with_validation(data: &AlignData, va: &[usize]) -> Result<Holdout, AlignError> {
        let n = data.n_pairs();
        let mut held = vec![false; n];
        for &i in va.iter().filter(|&&i| i < n) {
            held[i] = true;
        }
        let tr: Vec<usize> = (0..n).filter(|&i| !held[i]).collect();
        Self::with_split(data, &tr, va)
    }

    /// Hold out the pairs `va`, fit on the pairs `tr` only (disjoint from `va`; pairs in
    /// neither are left out entirely). Used for learning curves: the same validation pairs
    /// scored after fits on fewer training pairs.
    pub fn with_split(data: &AlignData, tr: &[usize], va: &[usize]) -> Result<Holdout, AlignError> {
        data.validate()?;
        let n = data.n_pairs();
        let mut used = vec![false; n];
        let mut clash = false;
        for &i in tr.iter().chain(va) {
            if i >= n || used[i] {
                clash = true;
                break;
            }
            used[i] = true;
        }
        if va.is_empty() || tr.len() < 2 || clash {
            return Err(AlignError::NotEnoughData(format!(
                "validation set of {} pairs, training set of {} out of {n} (need >= 1 held out, >= 2 to fit, disjoint and in range)",
                va.len(),
                tr.len()
            )));
        }
        let tr = tr.to_vec();
        let va = va.to_vec();
        let train = AlignData {
            xp: data.xp.select_rows(&tr),
            yp: data.yp.select_rows(&tr),
            xu: data.xu.clone(),
            yu: data.yu.clone(),
            pair_groups: tr.iter().map(|&i| data.pair_groups[i]).collect(),
            yu_groups: data.yu_groups.clone(),
            negatives: data.negatives.clone(),
        };
        let yq = data.yp.select_rows(&va);
        let q_labels: Vec<u32> = va.iter().map(|&i| data.pair_groups[i]).collect();
        let y_extra_labels = match &data.yu_groups {
            Some(g) => g.iter().map(|&x| Some(x)).collect(),
            None => {
                // Same caption <=> same encoder output: match unpaired texts to held-out texts
                // by their exact feature bits.
                let mut by_bits: HashMap<Vec<u32>, u32> = HashMap::new();
                for (r, &l) in q_labels.iter().enumerate() {
                    by_bits.insert(yq.row(r).iter().map(|v| v.to_bits()).collect(), l);
                }
                (0..data.yu.rows)
                    .map(|r| {
                        by_bits
                            .get(
                                &data
                                    .yu
                                    .row(r)
                                    .iter()
                                    .map(|v| v.to_bits())
                                    .collect::<Vec<_>>(),
                            )
                            .copied()
                    })
                    .collect()
            }
        };
        Ok(Holdout {
            train,
            xq: data.xp.select_rows(&va),
            yq,
            q_labels,
            y_extra_labels,
            distractors: None,
        })
    }

    /// Keep at most `max` distractors per modality (0 = no cap): a seeded subset of the
    /// unpaired pool stands in for a larger one. The fit data (`train`) is unchanged.
    pub fn cap_distractors(mut self, max: usize, seed: u64) -> Holdout {
        let (nx, ny) = (self.train.xu.rows, self.train.yu.rows);
        if max == 0 || (nx <= max && ny <= max) {
            return self;
        }
        let pick = |n: usize, salt: u64| -> Vec<usize> {
            if n <= max {
                return (0..n).collect();
            }
            let mut v = subsample(&(0..n).collect::<Vec<_>>(), max, seed ^ salt);
            v.sort_unstable();
            v
        };
        let (ix, iy) = (pick(nx, 0xD157_0001), pick(ny, 0xD157_0002));
        self.y_extra_labels = iy.iter().map(|&r| self.y_extra_labels[r]).collect();
        self.distractors = Some((
            self.train.xu.select_rows(&ix),
            self.train.yu.select_rows(&iy),
        ));
        self
    }

    /// Number of pairs the method is fitted on.
    pub fn n_train(&self) -> usize {
        self.train.n_pairs()
    }

    /// Retrieval of the held-out pairs among the unpaired distractors.
    pub fn evaluate(&self, model: &dyn Aligned) -> Result<RetrievalReport, AlignError> {
        let (dx, dy) = match &self.distractors {
            Some((dx, dy)) => (dx, dy),
            None => (&self.train.xu, &self.train.yu),
        };
        retrieval_with_distractors(
            model,
            &self.xq,
            &self.yq,
            &self.q_labels,
            dx,
            dy,
            &self.y_extra_labels,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n_pairs: usize, nx: usize, ny: usize) -> AlignData {
        let m = |rows: usize, seed: usize| {
            Matrix::from_vec(
                rows,
                3,
                (0..rows * 3)
                    .map(|i| ((i * 31 + seed * 7) % 13) as f32 + 1.0)
                    .collect(),
            )
            .unwrap()
        };
        AlignData {
            xp: m(n_pairs, 1),
            yp: m(n_pairs, 2),
            xu: m(nx, 3),
            yu: m(ny, 4),
            pair_groups: (0..n_pairs as u32).collect(),
            yu_groups: Some((0..ny as u32).map(|g| 1000 + g).collect()),
            negatives: None,
        }
    }

    /// The cap keeps `max` distractors per modality (a seeded, deterministic subset, labels
    /// kept with their rows), leaves the fit data alone, and changes nothing at or below it.
    #[test]
    fn distractor_cap_subsets_the_pools_only_above_it() {
        let d = data(10, 40, 25);
        let h = Holdout::with_validation(&d, &[0, 1]).unwrap();
        assert!(h.clone().cap_distractors(0, 1).distractors.is_none());
        assert!(h.clone().cap_distractors(40, 1).distractors.is_none());
        let c = h.clone().cap_distractors(30, 1);
        let (dx, dy) = c.distractors.as_ref().expect("40 > 30 images");
        assert_eq!((dx.rows, dy.rows), (30, 25));
        assert_eq!(c.train.xu.rows, 40, "the fit still sees the whole pool");
        assert_eq!(c.y_extra_labels, h.y_extra_labels, "texts were not capped");
        let c2 = h.clone().cap_distractors(10, 1);
        let (_, dy) = c2.distractors.as_ref().unwrap();
        assert_eq!(dy.rows, 10);
        // Each kept text row carries the label of the pool row it came from.
        for (r, l) in c2.y_extra_labels.iter().enumerate() {
            let src = (0..25)
                .find(|&s| h.train.yu.row(s) == dy.row(r) && h.y_extra_labels[s] == *l)
                .map(|_| ());
            assert!(src.is_some(), "row {r} lost its label");
        }
        let again = h.clone().cap_distractors(10, 1);
        assert_eq!(again.y_extra_labels, c2.y_extra_labels, "seeded");
    }
}
