//! KLOT in candle tensor ops, so the step runs where the student's affinities already are
//! (a CUDA device when built with `--features cuda`).
//!
//! Same computation, same update order and same meaning as [`crate::klot::Klot`]: two
//! entropic plans with uniform marginals, `P = Sinkhorn(Ks / eps_s)` and
//! `P* = Sinkhorn(K* / eps_t)`, `iters` iterations of (row then column) potential updates from a
//! zero column potential, a symmetric finish of the row potential, then `KL(P* || P)` and the
//! gradient `(P - P*) / eps_s` (see `klot.rs` for why no backpropagation through Sinkhorn is
//! needed).
//!
//! Why a second implementation: the CPU engine (`sinkhorn.rs`) is a hand-fused scaling-form
//! solver with absorption, the fastest thing on a CPU (docs/BENCHMARKS.md), but it runs on host
//! memory. On a GPU, copying a B x B affinity to the host and the gradient back every step, and
//! solving on a few CPU cores, wastes the device; at the paper's B = 32768 the plan alone is
//! 4 GiB. Here every iteration is two log-sum-exps over the B x B matrix (an `exp` per entry,
//! which a GPU does at memory bandwidth), in the log domain so nothing overflows at
//! `eps = 0.005` with cosine affinities.
//!
//! Memory: the scaled affinity, one B x B temporary per log-sum-exp and the two log-plans at the
//! end, O(B^2). candle allocates a fresh tensor per op (no per-iteration reuse), so this path
//! does not have the CPU engine's zero-allocation property; on CUDA those are device
//! allocations of the same size every iteration.
use candle_core::{D, DType, Tensor};

use crate::AlignError;

/// The result of one device KLOT step.
#[derive(Debug, Clone)]
pub struct DeviceKlotValue {
    /// KL(P* || P), summed in f32 on the device.
    pub kl: f64,
    /// `(P - P*) / eps_s`, B x B, on the affinities' device.
    pub grad: Tensor,
}

/// Log of the entropic plan of `k` (rows x cols, f32) at temperature `eps`, uniform marginals.
pub fn log_plan(k: &Tensor, eps: f64, iters: usize) -> Result<Tensor, AlignError> {
    log_plan_cancellable(k, eps, iters, &Default::default())
}

/// [`log_plan`], stopping with `Cancelled` between iterations once `cancel` is set.
pub fn log_plan_cancellable(
    k: &Tensor,
    eps: f64,
    iters: usize,
    cancel: &crate::progress::Cancel,
) -> Result<Tensor, AlignError> {
    let (rows, cols) = k.dims2()?;
    crate::sinkhorn::check_problem(rows, cols, eps, iters)?;
    let k = k.to_dtype(DType::F32)?;
    // Row sums tell whether any entry is NaN/Inf (NaN and Inf propagate through a sum of
    // cosines, which are bounded), and which row: B floats cross to the host, not B^2.
    let sums: Vec<f32> = k.sum(1)?.to_vec1()?;
    if let Some(row) = sums.iter().position(|x| !x.is_finite()) {
        return Err(AlignError::NonFinite {
            what: "KLOT affinity (device)".into(),
            row,
        });
    }
    // Potentials in units of eps: log P_ij = ka_ij + phi_i + psi_j.
    let ka = (&k / eps)?;
    let log_a = -(rows as f64).ln();
    let log_b = -(cols as f64).ln();
    let row_pot = |psi: &Tensor| -> candle_core::Result<Tensor> {
        // phi_i = log a - LSE_j(ka_ij + psi_j)
        ka.broadcast_add(&psi.unsqueeze(0)?)?
            .log_sum_exp(D::Minus1)?
            .neg()?
            + log_a
    };
    let mut psi = Tensor::zeros(cols, DType::F32, k.device())?;
    let mut phi = Tensor::zeros(rows, DType::F32, k.device())?;
    for _ in 0..iters {
        cancel.check()?;
        phi = row_pot(&psi)?;
        // psi_j = log b - LSE_i(ka_ij + phi_i)
        psi = (ka
            .broadcast_add(&phi.unsqueeze(1)?)?
            .log_sum_exp(0)?
            .neg()?
            + log_b)?;
    }
    // Symmetric finish, as the CPU engine and the reference: phi <- (phi + phi_next) / 2.
    let phi = ((phi + row_pot(&psi)?)? * 0.5)?;
    Ok(ka
        .broadcast_add(&phi.unsqueeze(1)?)?
        .broadcast_add(&psi.unsqueeze(0)?)?)
}

/// One KLOT step on the affinities' device: both plans, `KL(P* || P)` and `(P - P*) / eps_s`.
pub fn step(
    ks: &Tensor,
    kt: &Tensor,
    eps_s: f64,
    eps_t: f64,
    iters: usize,
) -> Result<DeviceKlotValue, AlignError> {
    step_cancellable(ks, kt, eps_s, eps_t, iters, &Default::default())
}

/// [`step`], stopping with `Cancelled` between Sinkhorn iterations once `cancel` is set.
pub fn step_cancellable(
    ks: &Tensor,
    kt: &Tensor,
    eps_s: f64,
    eps_t: f64,
    iters: usize,
    cancel: &crate::progress::Cancel,
) -> Result<DeviceKlotValue, AlignError> {
    if ks.dims() != kt.dims() {
        return Err(AlignError::DimensionMismatch {
            what: "KLOT student vs teacher affinity".into(),
            expected: ks.elem_count(),
            got: kt.elem_count(),
        });
    }
    let ks = ks.detach();
    let kt = kt.detach();
    let lp = log_plan_cancellable(&ks, eps_s, iters, cancel)?;
    let lq = log_plan_cancellable(&kt, eps_t, iters, cancel)?;
    let q = lq.exp()?;
    let kl = (&q * (&lq - &lp)?)?.sum_all()?.to_scalar::<f32>()? as f64;
    if !kl.is_finite() {
        return Err(AlignError::Numerical(
            "KLOT: non-finite KL on the device (NaN/Inf in a plan)".into(),
        ));
    }
    let grad = ((lp.exp()? - q)? / eps_s)?;
    Ok(DeviceKlotValue { kl, grad })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::klot::Klot;
    use candle_core::Device;

    fn cosine(rows: usize, cols: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut unit = |n: usize| -> Vec<Vec<f32>> {
            (0..n)
                .map(|_| {
                    let v: Vec<f32> = (0..dim).map(|_| next()).collect();
                    let nrm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    v.iter().map(|x| x / nrm).collect()
                })
                .collect()
        };
        let (x, y) = (unit(rows), unit(cols));
        x.iter()
            .flat_map(|a| {
                y.iter()
                    .map(move |b| a.iter().zip(b).map(|(p, q)| p * q).sum())
            })
            .collect()
    }

    /// The device step and the CPU engine agree on the KL and the gradient (independent
    /// algorithms: log-sum-exp here, scaling with absorption there).
    #[test]
    fn agrees_with_the_cpu_engine() {
        let (r, c) = (96, 80);
        let ks = cosine(r, c, 12, 1);
        let kt = cosine(r, c, 12, 2);
        let mut cpu = Klot::new(r, c);
        let want = cpu.step(&ks, &kt, 0.05, 0.01, 100).unwrap();
        let dev = Device::Cpu;
        let got = step(
            &Tensor::from_slice(&ks, (r, c), &dev).unwrap(),
            &Tensor::from_slice(&kt, (r, c), &dev).unwrap(),
            0.05,
            0.01,
            100,
        )
        .unwrap();
        assert!(
            (got.kl - want.kl).abs() <= 1e-3 * want.kl.abs().max(1.0),
            "KL device {} vs cpu {}",
            got.kl,
            want.kl
        );
        let g: Vec<f32> = got.grad.flatten_all().unwrap().to_vec1().unwrap();
        let scale = cpu.grad().iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = g
            .iter()
            .zip(cpu.grad())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst <= 1e-3 * scale,
            "grad max diff {worst} (scale {scale})"
        );
    }

    /// L1 distance of the plan's row and column sums to the uniform marginals.
    fn marginal_error(p: &Tensor) -> f32 {
        let (r, c) = p.dims2().unwrap();
        let rows: Vec<f32> = p.sum(1).unwrap().to_vec1().unwrap();
        let cols: Vec<f32> = p.sum(0).unwrap().to_vec1().unwrap();
        assert!(rows.iter().chain(&cols).all(|x| x.is_finite()));
        rows.iter().map(|x| (x - 1.0 / r as f32).abs()).sum::<f32>()
            + cols.iter().map(|x| (x - 1.0 / c as f32).abs()).sum::<f32>()
    }

    /// Finite at eps = 0.005 with cosine affinities (K / eps up to 200: plain `exp` overflows
    /// f32), with a plan that is a distribution close to the marginals.
    #[test]
    fn finite_at_eps_0_005() {
        let (r, c) = (64, 64);
        let k = Tensor::from_slice(&cosine(r, c, 8, 3), (r, c), &Device::Cpu).unwrap();
        let lp = log_plan(&k, 0.005, 300).unwrap();
        let p = lp.exp().unwrap();
        let total = p.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((total - 1.0).abs() < 1e-3, "plan mass {total}");
        let err = marginal_error(&p);
        assert!(err < 1e-2, "marginal error {err} at eps 0.005");
    }

    /// After convergence both marginals hold within 1e-4.
    #[test]
    fn marginals_converge() {
        let (r, c) = (64, 48);
        let k = Tensor::from_slice(&cosine(r, c, 8, 7), (r, c), &Device::Cpu).unwrap();
        let p = log_plan(&k, 0.05, 500).unwrap().exp().unwrap();
        let err = marginal_error(&p);
        assert!(
            err < 1e-4,
            "marginal error {err} after 500 iterations at eps 0.05"
        );
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let dev = Device::Cpu;
        let mut v = cosine(4, 4, 3, 4);
        v[5] = f32::NAN;
        let k = Tensor::from_slice(&v, (4, 4), &dev).unwrap();
        assert!(matches!(
            log_plan(&k, 0.05, 10),
            Err(AlignError::NonFinite { row: 1, .. })
        ));
        let ok = Tensor::from_slice(&cosine(4, 4, 3, 5), (4, 4), &dev).unwrap();
        let other = Tensor::from_slice(&cosine(4, 3, 3, 6), (4, 3), &dev).unwrap();
        assert!(matches!(
            step(&ok, &other, 0.05, 0.01, 10),
            Err(AlignError::DimensionMismatch { .. })
        ));
        assert!(matches!(
            log_plan(&ok, 0.0, 10),
            Err(AlignError::InvalidConfig(_))
        ));
    }
}
