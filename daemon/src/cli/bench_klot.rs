//! `sotalign bench klot`: one KLOT step (two 100-iteration log-domain Sinkhorn plans, the KL and
//! its gradient) timed by the binary itself, on a chosen device, so a GPU machine without a Rust
//! toolchain (no criterion there) can measure it: scripts/gpu-check.sh runs it next to the jax
//! reference (`scripts/bench_reference.py`, same affinities' recipe, same eps and iterations).
//!
//! Engines: `fused`, the CPU engine training uses on the host (`klot::Klot`); `candle`, the
//! tensor-op step training uses on a device (`klot_device::step`, its KL read back to the host,
//! which also waits for the device). `auto` picks the one training picks for the device.
//!
//! One line per size: `klot_step device=D engine=E B=N best_s=.. median_s=.. reps=R kl=..`.
use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sotalign_engine::Matrix;
use sotalign_engine::klot::Klot;
use sotalign_engine::klot_device;

/// The reference recipe (`scripts/bench_reference.py`, `daemon/benches/align.rs`).
const EPS_S: f64 = 0.05;
const EPS_T: f64 = 0.01;
const ITERS: usize = 100;
const DIM: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KlotEngineArg {
    /// `fused` on the CPU, `candle` on a GPU (what training uses).
    Auto,
    /// The fused CPU engine (host memory only).
    Fused,
    /// candle tensor ops on the device.
    Candle,
}

#[derive(Args)]
pub struct KlotBench {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Batch sizes B (the step works on B x B affinities), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    pub sizes: Vec<usize>,
    /// Timed steps per size (after one untimed warm-up step).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    #[arg(long, value_enum, default_value_t = KlotEngineArg::Auto)]
    pub engine: KlotEngineArg,
    /// Sinkhorn iterations per plan.
    #[arg(long, default_value_t = ITERS)]
    pub sinkhorn_iters: usize,
}

pub fn run(a: KlotBench) -> Result<()> {
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    if a.sizes.is_empty() || a.sizes.contains(&0) {
        bail!("--sizes: give positive batch sizes");
    }
    let device = crate::encoders::parse_device(&a.device)
        .map_err(|e| anyhow::anyhow!("--device {}: {e}", a.device))?;
    let engine = match (a.engine, device.is_cpu()) {
        (KlotEngineArg::Auto, true) => KlotEngineArg::Fused,
        (KlotEngineArg::Auto, false) => KlotEngineArg::Candle,
        (KlotEngineArg::Fused, false) => {
            bail!("--engine fused runs on the host only: use --device cpu or --engine candle")
        }
        (e, _) => e,
    };
    let name = device_name(&device);
    for &b in &a.sizes {
        let (best, median, kl) = match engine {
            KlotEngineArg::Candle => time_candle(&device, b, a.iters, a.sinkhorn_iters)?,
            _ => time_fused(b, a.iters, a.sinkhorn_iters)?,
        };
        println!(
            "klot_step device={name} engine={} B={b} best_s={best:.4} median_s={median:.4} reps={} kl={kl:.6}",
            match engine {
                KlotEngineArg::Candle => "candle",
                _ => "fused",
            },
            a.iters
        );
    }
    Ok(())
}

pub fn device_name(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Cosine affinities of `b` random unit vectors (dim 64, drawn on the host from `seed`, so
/// every device gets the same matrix) against `b` others, multiplied on `dev` (at B = 32768 the
/// host would spend seconds on the product and the copy).
fn affinity(dev: &Device, b: usize, seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut unit = || -> Result<Tensor> {
        let data: Vec<f32> = (0..b * DIM)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let m = Matrix {
            rows: b,
            cols: DIM,
            data,
        }
        .l2_normalized();
        Ok(Tensor::from_vec(m.data, (b, DIM), dev)?)
    };
    let x = unit()?;
    let y = unit()?;
    Ok(x.matmul(&y.t()?)?)
}

fn summary(mut t: Vec<f64>, kl: f64) -> (f64, f64, f64) {
    t.sort_by(f64::total_cmp);
    (t[0], t[t.len() / 2], kl)
}

fn time_candle(dev: &Device, b: usize, reps: usize, iters: usize) -> Result<(f64, f64, f64)> {
    let ks = affinity(dev, b, 1)?;
    let kt = affinity(dev, b, 2)?;
    let mut kl = klot_device::step(&ks, &kt, EPS_S, EPS_T, iters)?.kl;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        kl = klot_device::step(&ks, &kt, EPS_S, EPS_T, iters)?.kl;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(summary(times, kl))
}

fn time_fused(b: usize, reps: usize, iters: usize) -> Result<(f64, f64, f64)> {
    let host = |seed| -> Result<Vec<f32>> {
        Ok(affinity(&Device::Cpu, b, seed)?.flatten_all()?.to_vec1()?)
    };
    let (ks, kt) = (host(1)?, host(2)?);
    let mut k = Klot::new(b, b);
    let mut kl = k.step(&ks, &kt, EPS_S, EPS_T, iters)?.kl;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        kl = k.step(&ks, &kt, EPS_S, EPS_T, iters)?.kl;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(summary(times, kl))
}
