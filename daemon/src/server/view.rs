//! The curation view: what suggestions, search and the labelling queue need to know about the
//! store, kept in memory so a query reads SQLite at most once (for the sample records it
//! returns).
//!
//! It holds, per sample, its modality and the words it can be found by (captions; image keys
//! and file names), the caption group of every text (the engine's one grouping rule,
//! [`sotalign_engine::groups`]), the samples no query may offer (those of confirmed, seed and
//! held-out pairs), the rejected pairs, and the online precision estimate of the labelling
//! queue's hybrid rule.
//!
//! Invariants: it is loaded from the store at start and after every ingest, and updated where
//! decisions commit, inside the same store critical section as the commit
//! ([`CurationView::refresh_pairs`] re-reads the decided pair's two samples), so its order of
//! updates is the commit order and it never shows a decision that did not commit. A rejection
//! of (image, text) applies to the text's whole caption group for that image.
use std::collections::{HashMap, HashSet};

use sotalign_engine::groups::CaptionGroups;
use sotalign_engine::select::{Hybrid, HybridConfig};
use sotalign_protocol::types::{Modality, Pair, PairState, SampleId};

use crate::store::{Store, StoreError};

/// Ids as the index stores them.
pub type IdSet = HashSet<u64>;

struct Entry {
    modality: Modality,
    /// Lower-case words of the caption (texts) or of the key and file name (images).
    words: Vec<String>,
    /// Caption group (texts only).
    group: Option<u32>,
}

pub struct CurationView {
    samples: HashMap<u64, Entry>,
    groups: CaptionGroups,
    /// Text ids of each caption group.
    members: HashMap<u32, Vec<u64>>,
    /// Samples of confirmed (seed included) and held-out pairs.
    hidden: IdSet,
    /// Confirmed pairs, in store order (image, text).
    confirmed: Vec<(SampleId, SampleId)>,
    rejected: HashSet<(u64, u64)>,
    /// Caption groups rejected with each image.
    rejected_groups: HashMap<u64, HashSet<u32>>,
    /// Per sample, its current pairs of each state (for incremental refreshes).
    pair_state: HashMap<(u64, u64), PairState>,
    /// Encoder-space dimension of each modality's stored vectors.
    dims: [Option<usize>; 2],
    pub hybrid: Hybrid,
}

/// Split into lower-case alphanumeric words (file names: `cat_black.png` -> cat, black, png).
pub fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Does a document with `doc` words match every word of `query`? A query word matches a
/// document word it equals, or begins when it has at least 3 letters (`cat` finds `cats`).
pub fn matches_words(doc: &[String], query: &[String]) -> bool {
    !query.is_empty()
        && query.iter().all(|q| {
            doc.iter()
                .any(|d| d == q || (q.chars().count() >= 3 && d.starts_with(q.as_str())))
        })
}

impl CurationView {
    pub fn empty() -> Self {
        Self {
            samples: HashMap::new(),
            groups: CaptionGroups::new(),
            members: HashMap::new(),
            hidden: IdSet::new(),
            confirmed: Vec::new(),
            rejected: HashSet::new(),
            rejected_groups: HashMap::new(),
            pair_state: HashMap::new(),
            dims: [None, None],
            hybrid: Hybrid::new(HybridConfig::default())
                .unwrap_or_else(|_| unreachable!("the default hybrid config is valid")),
        }
    }

    /// Read every sample and pair from the store. The hybrid estimate of `keep` (the previous
    /// view) survives: it is about the annotator, not about the data.
    pub fn load(store: &Store, keep: Option<Hybrid>) -> Result<Self, StoreError> {
        let mut v = Self::empty();
        if let Some(h) = keep {
            v.hybrid = h;
        }
        v.dims = [store.dim(Modality::Image)?, store.dim(Modality::Text)?];
        for m in [Modality::Image, Modality::Text] {
            let (items, _) = store.list_samples(m, None, None, 0, u32::MAX)?;
            for s in items {
                v.add_sample(s.id, m, &s.key, s.path.as_deref(), s.text.as_deref());
            }
        }
        for st in [
            PairState::Confirmed,
            PairState::HeldOut,
            PairState::Rejected,
        ] {
            for (i, t) in store.pair_ids(st)? {
                v.pair_state.insert((i.0, t.0), st);
            }
        }
        v.rebuild_pair_sets();
        Ok(v)
    }

    /// Register one sample (ingest); a known id is left unchanged.
    pub fn add_sample(
        &mut self,
        id: SampleId,
        m: Modality,
        key: &str,
        path: Option<&str>,
        text: Option<&str>,
    ) {
        if self.samples.contains_key(&id.0) {
            return;
        }
        let (words, group) = match m {
            Modality::Text => {
                let g = self.groups.assign(text);
                self.members.entry(g).or_default().push(id.0);
                (words(text.unwrap_or_default()), Some(g))
            }
            Modality::Image => {
                let mut w = words(key);
                if let Some(p) = path {
                    let name = std::path::Path::new(p)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    w.extend(words(&name));
                }
                w.dedup();
                (w, None)
            }
        };
        self.samples.insert(
            id.0,
            Entry {
                modality: m,
                words,
                group,
            },
        );
    }

    fn rebuild_pair_sets(&mut self) {
        self.hidden.clear();
        self.confirmed.clear();
        self.rejected.clear();
        self.rejected_groups.clear();
        let mut pairs: Vec<_> = self.pair_state.iter().map(|(k, v)| (*k, *v)).collect();
        pairs.sort_unstable_by_key(|p| p.0);
        for ((i, t), st) in pairs {
            match st {
                PairState::Confirmed | PairState::HeldOut => {
                    self.hidden.insert(i);
                    self.hidden.insert(t);
                    if st == PairState::Confirmed {
                        self.confirmed.push((SampleId(i), SampleId(t)));
                    }
                }
                PairState::Rejected => {
                    self.rejected.insert((i, t));
                    if let Some(g) = self.group(SampleId(t)) {
                        self.rejected_groups.entry(i).or_default().insert(g);
                    }
                }
            }
        }
    }

    /// Bring the pairs of `a` and `b` (a decided or undone pair's two samples) up to date from
    /// the store: call it inside the store's critical section, right after the commit.
    pub fn refresh_pairs(
        &mut self,
        store: &Store,
        a: SampleId,
        b: SampleId,
    ) -> Result<(), StoreError> {
        let mut fresh: Vec<Pair> = store.pairs_of(a)?;
        fresh.extend(store.pairs_of(b)?);
        self.pair_state
            .retain(|(i, t), _| ![a.0, b.0].contains(i) && ![a.0, b.0].contains(t));
        for p in fresh {
            self.pair_state.insert((p.image.0, p.text.0), p.state);
        }
        self.rebuild_pair_sets();
        Ok(())
    }

    pub fn modality(&self, id: SampleId) -> Option<Modality> {
        self.samples.get(&id.0).map(|e| e.modality)
    }

    /// Encoder-space dimension of the stored vectors of `m` (`None`: none stored).
    pub fn dim(&self, m: Modality) -> Option<usize> {
        self.dims[(m == Modality::Text) as usize]
    }

    pub fn group(&self, text: SampleId) -> Option<u32> {
        self.samples.get(&text.0).and_then(|e| e.group)
    }

    /// Is `id` free to be offered (not part of a confirmed, seed or held-out pair)?
    pub fn is_open(&self, id: u64) -> bool {
        !self.hidden.contains(&id)
    }

    pub fn hidden(&self) -> &IdSet {
        &self.hidden
    }

    pub fn confirmed(&self) -> &[(SampleId, SampleId)] {
        &self.confirmed
    }

    /// Is (image, text) rejected, directly or through a twin caption of `text`?
    pub fn is_rejected(&self, image: u64, text: u64) -> bool {
        self.rejected.contains(&(image, text))
            || self
                .group(SampleId(text))
                .zip(self.rejected_groups.get(&image))
                .is_some_and(|(g, set)| set.contains(&g))
    }

    /// Every rejected (image, text), with each rejection extended to its caption group.
    pub fn rejected_pairs(&self) -> HashSet<(SampleId, SampleId)> {
        let mut out: HashSet<(SampleId, SampleId)> = self
            .rejected
            .iter()
            .map(|(i, t)| (SampleId(*i), SampleId(*t)))
            .collect();
        for (i, gs) in &self.rejected_groups {
            for g in gs {
                for t in self.members.get(g).into_iter().flatten() {
                    out.insert((SampleId(*i), SampleId(*t)));
                }
            }
        }
        out
    }

    /// Other open texts with the caption of `text`.
    pub fn open_twins(&self, text: SampleId) -> u32 {
        let Some(g) = self.group(text) else { return 0 };
        self.members
            .get(&g)
            .map(|m| {
                m.iter()
                    .filter(|&&t| t != text.0 && self.is_open(t))
                    .count() as u32
            })
            .unwrap_or(0)
    }

    /// Samples of modality `m` whose words match every word of `query` (see [`matches_words`]),
    /// open ones only, by id.
    pub fn word_matches(&self, m: Modality, query: &[String]) -> Vec<SampleId> {
        let mut out: Vec<SampleId> = self
            .samples
            .iter()
            .filter(|(id, e)| {
                e.modality == m && self.is_open(**id) && matches_words(&e.words, query)
            })
            .map(|(id, _)| SampleId(*id))
            .collect();
        out.sort_unstable();
        out
    }

    /// Sample ids of a modality, by id.
    pub fn ids(&self, m: Modality) -> Vec<SampleId> {
        let mut out: Vec<SampleId> = self
            .samples
            .iter()
            .filter(|(_, e)| e.modality == m)
            .map(|(id, _)| SampleId(*id))
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_match_whole_words_and_prefixes() {
        let doc = words("A Cat sleeps on cat_black.png");
        assert!(matches_words(&doc, &words("cat")));
        assert!(matches_words(&doc, &words("CAT slee")));
        assert!(matches_words(&doc, &words("black")));
        assert!(!matches_words(&doc, &words("dog")));
        assert!(!matches_words(&words("educate"), &words("cat")));
        // Short words match whole words only.
        assert!(!matches_words(&words("A cart."), &words("ca")));
        assert!(!matches_words(&doc, &[]));
    }

    #[test]
    fn twins_and_group_rejections() {
        let mut v = CurationView::empty();
        v.add_sample(
            SampleId(1),
            Modality::Image,
            "img",
            Some("/d/cat_black.png"),
            None,
        );
        for (id, c) in [(11, "A pineapple."), (12, "A pineapple. "), (13, "A pear.")] {
            v.add_sample(SampleId(id), Modality::Text, "t", None, Some(c));
        }
        assert_eq!(v.group(SampleId(11)), v.group(SampleId(12)));
        assert_eq!(v.open_twins(SampleId(11)), 1);
        assert_eq!(v.open_twins(SampleId(13)), 0);
        v.pair_state.insert((1, 12), PairState::Rejected);
        v.rebuild_pair_sets();
        assert!(v.is_rejected(1, 11) && v.is_rejected(1, 12) && !v.is_rejected(1, 13));
        assert!(v.rejected_pairs().contains(&(SampleId(1), SampleId(11))));
        assert_eq!(
            v.word_matches(Modality::Image, &words("black")),
            vec![SampleId(1)]
        );
        v.pair_state.insert((1, 13), PairState::Confirmed);
        v.rebuild_pair_sets();
        assert!(!v.is_open(1) && !v.is_open(13));
        assert_eq!(v.word_matches(Modality::Image, &words("black")), vec![]);
    }
}
