//! Criterion benchmarks of the alignment engine's hot paths.
//!
//! - `klot_step/B`: one KLOT step on a B x B batch: student and teacher Sinkhorn plans (100
//!   iterations each, eps_s = 0.05, eps_t = 0.01), KL(P* || P) and the gradient (P - P*)/eps_s,
//!   on cosine affinities of random unit vectors (dim 64). The same computation as
//!   `scripts/bench_reference.py` (numpy and jax-jit); `scripts/bench-reference.sh` runs both
//!   and prints the ratio table of docs/BENCHMARKS.md.
//! - `klot_step_device/B`: the same step in candle tensor ops (`align::klot_device`) on
//!   `SOTALIGN_BENCH_DEVICE` (cpu by default, cuda for scripts/gpu-check.sh).
//! - `sinkhorn/B`: one 100-iteration plan at eps = 0.05 (half a KLOT step).
//! - `cca_fit/n`: the ridge-CCA teacher fitted on the first n rows of the real Tux Paint
//!   embeddings (1280-d images, 384-d texts, `tests/fixtures/reference`), lambda = 0.1: row
//!   normalisation, centring, both ridge inverse square roots, the whitened cross-covariance SVD
//!   and the projections. `scripts/bench_reference.py` times the same fit in numpy (f64, eigh
//!   of the d x d covariances) on the same rows.
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sotalign_engine::config::TeacherConfig;
use sotalign_engine::klot::Klot;
use sotalign_engine::klot_device;
use sotalign_engine::sinkhorn::Sinkhorn;
use sotalign_engine::teacher::CcaTeacher;
use sotalign_engine::{AlignData, Matrix};
use std::hint::black_box;
use std::time::Duration;

fn unit_rows(n: usize, d: usize, rng: &mut ChaCha8Rng) -> Matrix {
    let data = (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Matrix {
        rows: n,
        cols: d,
        data,
    }
    .l2_normalized()
}

fn affinity(b: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = unit_rows(b, 64, &mut rng);
    let y = unit_rows(b, 64, &mut rng);
    x.matmul_t(&y).data
}

/// KLOT batch sizes: `SOTALIGN_KLOT_B=4096,16384,32768` (scripts/gpu-check.sh) overrides
/// `default`.
fn batch_sizes(default: &[usize]) -> Vec<usize> {
    std::env::var("SOTALIGN_KLOT_B")
        .ok()
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn klot_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("klot_step");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let sizes = batch_sizes(&[256, 1024, 2048, 4096]);
    for &b in &sizes {
        let ks = affinity(b, 1);
        let kt = affinity(b, 2);
        let mut k = Klot::new(b, b);
        g.bench_with_input(BenchmarkId::from_parameter(b), &b, |bench, _| {
            bench.iter(|| {
                black_box(
                    k.step(&ks, &kt, 0.05, 0.01, 100)
                        .map(|v| v.kl)
                        .unwrap_or(f64::NAN),
                )
            })
        });
    }
    g.finish();
}

/// The candle-ops KLOT step (`align::klot_device`) on `SOTALIGN_BENCH_DEVICE` (default cpu;
/// `cuda` in a `--features cuda` build, as scripts/gpu-check.sh runs it). On the CPU it is the
/// unfused log-domain reference the fused engine is compared with; on a GPU it is the figure.
fn klot_step_device(c: &mut Criterion) {
    let spec = std::env::var("SOTALIGN_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let dev = match sotalign::encoders::parse_device(&spec) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("klot_step_device: {e}; skipped");
            return;
        }
    };
    let mut g = c.benchmark_group("klot_step_device");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let sizes = batch_sizes(&[256, 1024]);
    for &b in &sizes {
        let tensor = |seed| {
            candle_core::Tensor::from_vec(affinity(b, seed), (b, b), &dev)
                .expect("affinity tensor on the bench device")
        };
        let (ks, kt) = (tensor(1), tensor(2));
        g.bench_with_input(BenchmarkId::from_parameter(b), &b, |bench, _| {
            bench.iter(|| {
                // `kl` is read back to the host, which also waits for the device.
                black_box(
                    klot_device::step(&ks, &kt, 0.05, 0.01, 100)
                        .map(|v| v.kl)
                        .unwrap_or(f64::NAN),
                )
            })
        });
    }
    g.finish();
}

fn sinkhorn(c: &mut Criterion) {
    let mut g = c.benchmark_group("sinkhorn");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for &b in &[256usize, 1024, 2048] {
        let k = affinity(b, 3);
        let mut s = Sinkhorn::new(b, b);
        g.bench_with_input(BenchmarkId::from_parameter(b), &b, |bench, _| {
            bench.iter(|| {
                black_box(
                    s.solve(&k, 0.05, 100)
                        .map(|st| st.marginal_error)
                        .unwrap_or(f64::NAN),
                )
            })
        });
    }
    g.finish();
}

/// The Tux Paint fixtures, found from the crate directory (benches run in `daemon/`).
fn tuxpaint() -> Option<(Matrix, Matrix)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference");
    let x = sotalign::io::npy::read_npy(&dir.join("tuxpaint_img.npy")).ok()?;
    let y = sotalign::io::npy::read_npy(&dir.join("tuxpaint_txt.npy")).ok()?;
    Some((x, y))
}

fn first_rows(m: &Matrix, n: usize) -> Matrix {
    Matrix {
        rows: n,
        cols: m.cols,
        data: m.data[..n * m.cols].to_vec(),
    }
}

fn cca_fit(c: &mut Criterion) {
    let Some((x, y)) = tuxpaint() else {
        eprintln!("cca_fit: tests/fixtures/reference not found, skipped");
        return;
    };
    let mut g = c.benchmark_group("cca_fit");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let cfg = TeacherConfig::default();
    for &n in &[100usize, 400] {
        let data = AlignData::from_pairs(first_rows(&x, n), first_rows(&y, n));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, _| {
            bench.iter(|| {
                black_box(
                    CcaTeacher::fit(&data, &cfg)
                        .map(|t| t.rho[0])
                        .unwrap_or(f64::NAN),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, klot_step, klot_step_device, sinkhorn, cca_fit);
criterion_main!(benches);
