//! `sotalign bench-index`: the index benchmark (see `sotalign::index::bench`).
use clap::Args;

use crate::index::HnswParams;
use crate::index::bench::{self, DataKind};

#[derive(Debug, Args)]
pub struct BenchIndexArgs {
    /// Collection sizes with HNSW built and measured.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pub sizes: Vec<usize>,
    /// Extra sizes where only exact search is timed (to locate the exact/HNSW threshold).
    #[arg(long, value_delimiter = ',')]
    pub exact_sizes: Vec<usize>,
    #[arg(long, default_value_t = 256)]
    pub dim: usize,
    /// Held-out queries per size.
    #[arg(long, default_value_t = 500)]
    pub queries: usize,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// `clustered` (resembles real embeddings) or `gaussian` (worst case).
    #[arg(long, default_value = "clustered", value_delimiter = ',')]
    pub data: Vec<String>,
    /// HNSW search widths to sweep.
    #[arg(long, value_delimiter = ',', default_value = "32,64,128")]
    pub ef: Vec<usize>,
    #[arg(long, default_value_t = HnswParams::default().max_connections)]
    pub m: usize,
    #[arg(long, default_value_t = HnswParams::default().ef_construction)]
    pub ef_construction: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

pub fn bench_index(a: BenchIndexArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "note: built with debug assertions. Representative numbers need this crate optimised: \
             `cargo run --release -p sotalign -- bench-index`, or, reusing the dev builds of the \
             dependencies, `cargo run -p sotalign --config 'profile.dev.package.sotalign.opt-level=3' -- bench-index`"
        );
    }
    let params = HnswParams {
        max_connections: a.m,
        ef_construction: a.ef_construction,
        ..HnswParams::default()
    };
    params.validate()?;
    let mut reports = Vec::new();
    let mut log = |s: &str| eprintln!("{s}");
    for kind in &a.data {
        let kind = match kind.as_str() {
            "clustered" => DataKind::Clustered,
            "gaussian" => DataKind::Gaussian,
            other => anyhow::bail!("unknown --data `{other}` (clustered, gaussian)"),
        };
        for &n in a.exact_sizes.iter().filter(|n| **n > 0) {
            reports.push(bench::run_size(
                kind, n, a.dim, a.queries, a.k, params, &a.ef, false, a.seed, &mut log,
            )?);
        }
        for &n in &a.sizes {
            reports.push(bench::run_size(
                kind, n, a.dim, a.queries, a.k, params, &a.ef, true, a.seed, &mut log,
            )?);
        }
    }
    println!("{}", bench::markdown(&reports));
    Ok(())
}
