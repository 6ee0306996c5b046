//! Bounded top-k selection with a heap, with a total, deterministic order.
//!
//! Scores are compared with `f32::total_cmp` and ties go to the lower row, so the exact backend
//! returns the same list whatever the thread count or block size.
use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Clone, Copy, Debug)]
struct Entry {
    score: f32,
    row: usize,
}

impl Entry {
    /// `Less` when `self` ranks before `other` (higher score, then lower row).
    fn rank_cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.row.cmp(&other.row))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.rank_cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// The heap is a max-heap on this order, so its top is the *worst* kept entry.
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank_cmp(other)
    }
}

/// Keeps the `k` best (score, row) pairs seen so far.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Entry>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// Offer a candidate; it is kept when fewer than k are held or it beats the worst one.
    #[inline]
    pub fn push(&mut self, score: f32, row: usize) {
        if self.k == 0 {
            return;
        }
        let e = Entry { score, row };
        if self.heap.len() < self.k {
            self.heap.push(e);
        } else if let Some(mut worst) = self.heap.peek_mut()
            && e.rank_cmp(&worst) == Ordering::Less
        {
            *worst = e;
        }
    }

    /// Smallest score that would still enter the list (`-inf` while it is not full).
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap.peek().map_or(f32::NEG_INFINITY, |e| e.score)
        }
    }

    pub fn merge(mut self, other: TopK) -> TopK {
        for e in other.heap {
            self.push(e.score, e.row);
        }
        self
    }

    /// (row, score), best first.
    pub fn into_sorted(self) -> Vec<(usize, f32)> {
        let mut v = self.heap.into_vec();
        v.sort_by(Entry::rank_cmp);
        v.into_iter().map(|e| (e.row, e.score)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_k_best_in_order_with_ties_to_lower_row() {
        let scores = [0.1f32, 0.9, 0.5, 0.9, -0.3, 0.7, 0.2];
        let mut t = TopK::new(3);
        for (r, s) in scores.iter().enumerate() {
            t.push(*s, r);
        }
        assert_eq!(t.into_sorted(), vec![(1, 0.9), (3, 0.9), (5, 0.7)]);
    }

    #[test]
    fn merge_equals_single_pass() {
        let scores: Vec<f32> = (0..100).map(|i| ((i * 37) % 101) as f32 / 101.0).collect();
        let mut all = TopK::new(7);
        let mut a = TopK::new(7);
        let mut b = TopK::new(7);
        for (r, s) in scores.iter().enumerate() {
            all.push(*s, r);
            if r % 2 == 0 {
                a.push(*s, r)
            } else {
                b.push(*s, r)
            }
        }
        assert_eq!(a.merge(b).into_sorted(), all.into_sorted());
    }
}
