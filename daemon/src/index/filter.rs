//! Which item ids a search may return.
//!
//! hnsw_rs cannot delete points, so removed or already-decided items are hidden at query time
//! instead: the filter is consulted inside the graph walk (`search_filter`) and in the exact scan.
use std::collections::HashSet;

/// Restricts the ids a search may return. Cheap to build per request: it only borrows.
#[derive(Clone, Copy, Default)]
pub enum Filter<'a> {
    /// Every item is admissible.
    #[default]
    All,
    /// Every item except these (tombstones: deleted, confirmed or rejected items).
    Exclude(&'a HashSet<u64>),
    /// Only these items (e.g. the unpaired pool of one state).
    Only(&'a HashSet<u64>),
    /// An arbitrary predicate; `true` admits the id.
    Predicate(&'a (dyn Fn(u64) -> bool + Sync)),
    /// Admitted by both (e.g. the index's tombstones and the caller's filter).
    Both(&'a Filter<'a>, &'a Filter<'a>),
}

impl std::fmt::Debug for Filter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Filter::All => write!(f, "All"),
            Filter::Exclude(s) => write!(f, "Exclude({} ids)", s.len()),
            Filter::Only(s) => write!(f, "Only({} ids)", s.len()),
            Filter::Predicate(_) => write!(f, "Predicate(..)"),
            Filter::Both(a, b) => write!(f, "Both({a:?}, {b:?})"),
        }
    }
}

impl Filter<'_> {
    #[inline]
    pub fn admits(&self, id: u64) -> bool {
        match self {
            Filter::All => true,
            Filter::Exclude(s) => !s.contains(&id),
            Filter::Only(s) => s.contains(&id),
            Filter::Predicate(p) => p(id),
            Filter::Both(a, b) => a.admits(id) && b.admits(id),
        }
    }

    /// Upper bound on the fraction of a collection of `n` items this filter hides, when it can
    /// be known without scanning (`None` for predicates). Used to route heavily filtered
    /// searches to the exact scan, where a graph walk would wander through hidden nodes.
    pub fn hidden_fraction_hint(&self, n: usize) -> Option<f64> {
        if n == 0 {
            return Some(0.0);
        }
        match self {
            Filter::All => Some(0.0),
            Filter::Exclude(s) => Some((s.len() as f64 / n as f64).min(1.0)),
            Filter::Only(s) => Some(1.0 - (s.len() as f64 / n as f64).min(1.0)),
            Filter::Predicate(_) => None,
            Filter::Both(a, b) => {
                Some((a.hidden_fraction_hint(n)? + b.hidden_fraction_hint(n)?).min(1.0))
            }
        }
    }
}
