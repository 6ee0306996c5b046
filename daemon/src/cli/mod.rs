//! Command-line front ends of the library modules (one file per command family); `main.rs`
//! only dispatches here. Uses `anyhow`: this is the edge.
pub mod align;
pub mod audit_sim;
pub mod bench;
pub mod bench_daemon;
pub mod bench_encoders;
pub mod bench_klot;
pub mod bench_realign;
pub mod bench_scaling;
pub mod data;
pub mod data_args;
pub mod demo;
pub mod encoders;
pub mod eval;
pub mod experiment;
pub mod index;
pub mod plot;
pub mod protocol_set;
pub mod simulate;

/// Mean and sample standard deviation (0 for fewer than two values) of repeated measurements
/// (seeds), as every report of the CLI prints them.
pub(crate) fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let s = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, s)
}
