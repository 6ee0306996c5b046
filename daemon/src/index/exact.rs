//! Exact search: every stored vector is scored against the query.
//!
//! Single queries are a blocked scan (rayon over blocks of rows, a SIMD dot product, a local
//! top-k heap per block, then a merge). Batches of queries use a blocked matrix product
//! (faer gemm, one query block x one row block at a time, so the score buffer stays in cache)
//! feeding one heap per query. Exact search needs no build step, which is why small collections
//! and heavily filtered queries use it.
use rayon::prelude::*;

use super::filter::Filter;
use super::store::VectorStore;
use super::topk::TopK;
use sotalign_engine::Matrix;

/// Rows per parallel work item in a single-query scan (1 MiB of f32 at 256-d).
const SCAN_BLOCK: usize = 1024;
/// Queries and rows per tile of the batched matrix product.
const BATCH_QUERY_BLOCK: usize = 64;
const BATCH_ROW_BLOCK: usize = 1024;

/// Dot product, dispatched at run time to an AVX2+FMA build of the same loop when the CPU has it
/// (the default x86-64 target only guarantees SSE2).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

/// Sixteen independent accumulators so the compiler can keep them in vector registers (float
/// addition is not reassociated automatically).
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; L];
    let ca = a.chunks_exact(L);
    let cb = b.chunks_exact(L);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..L {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Top-k rows of `store` for one unit-norm query, admitted by `filter`.
pub fn search(store: &VectorStore, q: &[f32], k: usize, filter: &Filter) -> Vec<(usize, f32)> {
    let n = store.len();
    if n == 0 || k == 0 {
        return Vec::new();
    }
    // An allow-list much smaller than the collection: score only its members.
    if let Filter::Only(allowed) = filter
        && allowed.len() * 8 < n
    {
        let mut top = TopK::new(k);
        for id in allowed.iter() {
            if let Some(r) = store.row_of(*id) {
                top.push(dot(q, store.vector(r)), r);
            }
        }
        return top.into_sorted();
    }
    let scan = |start: usize, end: usize| {
        let mut top = TopK::new(k);
        for r in start..end {
            if matches!(filter, Filter::All) || filter.admits(store.id(r)) {
                top.push(dot(q, store.vector(r)), r);
            }
        }
        top
    };
    if n <= SCAN_BLOCK {
        return scan(0, n).into_sorted();
    }
    let blocks = n.div_ceil(SCAN_BLOCK);
    (0..blocks)
        .into_par_iter()
        .map(|b| scan(b * SCAN_BLOCK, ((b + 1) * SCAN_BLOCK).min(n)))
        .reduce(|| TopK::new(k), TopK::merge)
        .into_sorted()
}

/// Top-k rows for each row of `queries` (unit-norm rows of the store's dimension).
pub fn search_batch(
    store: &VectorStore,
    queries: &Matrix,
    k: usize,
    filter: &Filter,
) -> Vec<Vec<(usize, f32)>> {
    let n = store.len();
    let d = store.dim();
    if queries.rows < 4 || n == 0 || k == 0 {
        return (0..queries.rows)
            .map(|i| search(store, queries.row(i), k, filter))
            .collect();
    }
    let admitted: Option<Vec<bool>> = match filter {
        Filter::All => None,
        f => Some((0..n).map(|r| f.admits(store.id(r))).collect()),
    };
    let data = &store.vectors().data;
    let q_blocks: Vec<(usize, usize)> = (0..queries.rows)
        .step_by(BATCH_QUERY_BLOCK)
        .map(|s| (s, (s + BATCH_QUERY_BLOCK).min(queries.rows)))
        .collect();
    q_blocks
        .into_par_iter()
        .flat_map_iter(|(qs, qe)| {
            let qb = qe - qs;
            let lhs = faer::MatRef::from_row_major_slice(&queries.data[qs * d..qe * d], qb, d);
            let mut tops: Vec<TopK> = (0..qb).map(|_| TopK::new(k)).collect();
            let mut buf = vec![0.0f32; qb * BATCH_ROW_BLOCK];
            for rs in (0..n).step_by(BATCH_ROW_BLOCK) {
                let re = (rs + BATCH_ROW_BLOCK).min(n);
                let rb = re - rs;
                let rhs = faer::MatRef::from_row_major_slice(&data[rs * d..re * d], rb, d);
                let mut dst = faer::MatMut::from_row_major_slice_mut(&mut buf[..qb * rb], qb, rb);
                faer::linalg::matmul::matmul(
                    dst.as_mut(),
                    faer::Accum::Replace,
                    lhs,
                    rhs.transpose(),
                    1.0f32,
                    faer::Par::Seq,
                );
                for (qi, top) in tops.iter_mut().enumerate() {
                    let scores = &buf[qi * rb..(qi + 1) * rb];
                    let mut thr = top.threshold();
                    for (j, &s) in scores.iter().enumerate() {
                        if s < thr {
                            continue;
                        }
                        let r = rs + j;
                        if admitted.as_ref().is_some_and(|a| !a[r]) {
                            continue;
                        }
                        top.push(s, r);
                        thr = top.threshold();
                    }
                }
            }
            tops.into_iter().map(TopK::into_sorted)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_f64_reference_for_all_tail_lengths() {
        for n in [0usize, 1, 7, 15, 16, 17, 33, 256, 1283] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 104729) % 89) as f32 / 89.0 - 0.5)
                .collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let got = dot(&a, &b) as f64;
            assert!((got - want).abs() < 1e-4, "n={n}: {got} vs {want}");
        }
    }
}
