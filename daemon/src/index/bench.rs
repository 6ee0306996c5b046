//! Index benchmark: build rate, query latency and recall@k of HNSW against exact search,
//! measured in one run on the same data (`sotalign bench-index`, release build).
//!
//! Latencies are wall time per query as the daemon would serve it: a single exact query is
//! scanned by all rayon threads, a single HNSW query walks the graph on one thread. Batched
//! figures (all queries at once: exact through the blocked matrix product, HNSW in parallel
//! over queries) are amortised per query.
use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::synth::{Clustered, gaussian};
use super::{BackendKind, Filter, HnswParams, IndexConfig, IndexError, VectorIndex};
use sotalign_engine::Matrix;

/// Which synthetic data to index (see [`super::synth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// Anisotropic clusters around a shared mean direction, one cluster per 200 items.
    Clustered,
    /// iid Gaussian, the worst case for graph indexes.
    Gaussian,
}

impl DataKind {
    pub fn name(self) -> &'static str {
        match self {
            DataKind::Clustered => "clustered",
            DataKind::Gaussian => "gaussian",
        }
    }
}

/// `n` collection vectors and `q` held-out queries from the same distribution.
pub fn make_data(kind: DataKind, n: usize, q: usize, dim: usize, seed: u64) -> (Matrix, Matrix) {
    match kind {
        DataKind::Clustered => {
            let mix = Clustered::new(dim, (n / 200).max(8), seed);
            (
                mix.sample(n, seed ^ 0x5eed_0001),
                mix.sample(q, seed ^ 0x5eed_0002),
            )
        }
        DataKind::Gaussian => (
            gaussian(n, dim, seed ^ 0x5eed_0001),
            gaussian(q, dim, seed ^ 0x5eed_0002),
        ),
    }
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn summarize(mut ms: Vec<f64>) -> Latency {
    if ms.is_empty() {
        return Latency {
            mean_ms: f64::NAN,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
        };
    }
    ms.sort_by(f64::total_cmp);
    let pick = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    Latency {
        mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
    }
}

/// HNSW at one search width.
#[derive(Debug, Clone, PartialEq)]
pub struct EfReport {
    pub ef: usize,
    pub latency: Latency,
    pub recall: f64,
    /// Exact single-query mean latency / HNSW single-query mean latency.
    pub speedup: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SizeReport {
    pub n: usize,
    pub dim: usize,
    pub queries: usize,
    pub k: usize,
    pub data: DataKind,
    pub params: HnswParams,
    pub threads: usize,
    pub exact_single: Latency,
    pub exact_batch_ms_per_query: f64,
    /// None when the HNSW part was skipped (exact-only sizes).
    pub hnsw: Option<HnswReport>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HnswReport {
    pub build_secs: f64,
    pub inserts_per_sec: f64,
    pub per_ef: Vec<EfReport>,
    pub batch_ms_per_query: f64,
    pub batch_recall: f64,
}

/// Measure one collection size. `ef_values` are the HNSW search widths to sweep; with
/// `with_hnsw = false` only exact search is timed (cheap, for locating the threshold).
pub fn run_size(
    kind: DataKind,
    n: usize,
    dim: usize,
    queries: usize,
    k: usize,
    params: HnswParams,
    ef_values: &[usize],
    with_hnsw: bool,
    seed: u64,
    log: &mut dyn FnMut(&str),
) -> Result<SizeReport, IndexError> {
    let (data, qs) = make_data(kind, n, queries, dim, seed);
    let ids: Vec<u64> = (0..n as u64).collect();
    let config = IndexConfig {
        exact_below: usize::MAX,
        hnsw: params,
    };
    let never = AtomicBool::new(false);
    let exact = VectorIndex::build_with(
        ids.clone(),
        &data,
        BackendKind::Exact,
        &config,
        &never,
        &mut |_, _| {},
    )?;

    // Warm-up (page in the data, spin up rayon), then single exact queries.
    for i in 0..queries.min(5) {
        exact.search_exact(qs.row(i), k, &Filter::All)?;
    }
    let mut truth: Vec<HashSet<u64>> = Vec::with_capacity(queries);
    let mut ms = Vec::with_capacity(queries);
    for i in 0..queries {
        let t = Instant::now();
        let hits = exact.search_exact(qs.row(i), k, &Filter::All)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        truth.push(hits.iter().map(|h| h.id).collect());
    }
    let exact_single = summarize(ms);
    let t = Instant::now();
    let batch = exact.search_batch_exact(&qs, k, &Filter::All)?;
    let exact_batch_ms_per_query = t.elapsed().as_secs_f64() * 1e3 / queries.max(1) as f64;
    // The two exact paths must agree (different summation orders may swap exact ties only).
    let agree = recall(&truth, &batch);
    if agree < 0.999 {
        return Err(IndexError::Internal(format!(
            "exact scan and exact batch disagree: overlap {agree:.4}"
        )));
    }
    log(&format!(
        "n={n} {}: exact single {:.3} ms, exact batch {:.4} ms/query",
        kind.name(),
        exact_single.mean_ms,
        exact_batch_ms_per_query
    ));
    drop(exact);

    let hnsw = if with_hnsw {
        let t = Instant::now();
        let mut last_log = Instant::now();
        let index = VectorIndex::build_with(
            ids,
            &data,
            BackendKind::Hnsw,
            &config,
            &never,
            &mut |done, total| {
                if last_log.elapsed().as_secs_f64() > 10.0 {
                    log(&format!(
                        "  building: {done}/{total} inserted, {:.0} s",
                        t.elapsed().as_secs_f64()
                    ));
                    last_log = Instant::now();
                }
            },
        )?;
        let build_secs = t.elapsed().as_secs_f64();
        log(&format!(
            "  hnsw build {build_secs:.1} s ({:.0} inserts/s)",
            n as f64 / build_secs
        ));
        let mut per_ef = Vec::new();
        for &ef in ef_values {
            for i in 0..queries.min(5) {
                index.search_with_ef(qs.row(i), k, &Filter::All, ef)?;
            }
            let mut ms = Vec::with_capacity(queries);
            let mut found = Vec::with_capacity(queries);
            for i in 0..queries {
                let t = Instant::now();
                let hits = index.search_with_ef(qs.row(i), k, &Filter::All, ef)?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                found.push(hits);
            }
            let latency = summarize(ms);
            let r = recall(&truth, &found);
            log(&format!(
                "  ef={ef}: {:.3} ms/query, recall@{k} {r:.4}",
                latency.mean_ms
            ));
            per_ef.push(EfReport {
                ef,
                latency,
                recall: r,
                speedup: exact_single.mean_ms / latency.mean_ms,
            });
        }
        let t = Instant::now();
        let batch = index.search_batch(&qs, k, &Filter::All)?;
        let batch_ms_per_query = t.elapsed().as_secs_f64() * 1e3 / queries.max(1) as f64;
        let batch_recall = recall(&truth, &batch);
        Some(HnswReport {
            build_secs,
            inserts_per_sec: n as f64 / build_secs,
            per_ef,
            batch_ms_per_query,
            batch_recall,
        })
    } else {
        None
    };
    Ok(SizeReport {
        n,
        dim,
        queries,
        k,
        data: kind,
        params,
        threads: rayon::current_num_threads(),
        exact_single,
        exact_batch_ms_per_query,
        hnsw,
    })
}

/// Mean fraction of each true top-k set found.
pub fn recall(truth: &[HashSet<u64>], found: &[Vec<super::Hit>]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    let total: f64 = truth
        .iter()
        .zip(found)
        .map(|(t, f)| {
            if t.is_empty() {
                1.0
            } else {
                f.iter().filter(|h| t.contains(&h.id)).count() as f64 / t.len() as f64
            }
        })
        .sum();
    total / truth.len() as f64
}

/// Markdown tables of a run, as pasted into docs/BENCHMARKS.md.
pub fn markdown(reports: &[SizeReport]) -> String {
    let mut s = String::new();
    s.push_str("| data | n | exact single (ms, mean / p99) | exact batch (ms/query) | HNSW build (s) | inserts/s | ef | HNSW single (ms, mean / p99) | recall@k | speed-up vs exact single | HNSW batch (ms/query) |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in reports {
        let exact = format!(
            "{:.3} / {:.3}",
            r.exact_single.mean_ms, r.exact_single.p99_ms
        );
        match &r.hnsw {
            None => s.push_str(&format!(
                "| {} | {} | {exact} | {:.4} | - | - | - | - | - | - | - |\n",
                r.data.name(),
                r.n,
                r.exact_batch_ms_per_query
            )),
            Some(h) => {
                for (i, e) in h.per_ef.iter().enumerate() {
                    let (build, rate, batch) = if i == 0 {
                        (
                            format!("{:.1}", h.build_secs),
                            format!("{:.0}", h.inserts_per_sec),
                            format!("{:.4} (recall {:.4})", h.batch_ms_per_query, h.batch_recall),
                        )
                    } else {
                        (String::new(), String::new(), String::new())
                    };
                    s.push_str(&format!(
                        "| {} | {} | {} | {} | {build} | {rate} | {} | {:.3} / {:.3} | {:.4} | {:.1}x | {batch} |\n",
                        r.data.name(),
                        r.n,
                        if i == 0 { exact.clone() } else { String::new() },
                        if i == 0 { format!("{:.4}", r.exact_batch_ms_per_query) } else { String::new() },
                        e.ef,
                        e.latency.mean_ms,
                        e.latency.p99_ms,
                        e.recall,
                        e.speedup,
                    ));
                }
            }
        }
    }
    if let Some(r) = reports.first() {
        s.push_str(&format!(
            "\n{}-d, {} held-out queries, k = {}, M = {}, ef_construction = {}, batch ef = {}, {} rayon threads.\n",
            r.dim, r.queries, r.k, r.params.max_connections, r.params.ef_construction, r.params.ef_search, r.threads
        ));
    }
    s
}
