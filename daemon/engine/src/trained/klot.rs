//! KLOT: the KL divergence between the teacher's and the student's entropic OT plans.
//!
//! `KLOT(Ks, K*) = KL(P* || P)` with `P = Sinkhorn(Ks / eps_s)` (student affinities on an
//! unpaired batch) and `P* = Sinkhorn(K* / eps_t)` (teacher affinities on the same batch),
//! uniform marginals. This is SOTAlign's signal from unpaired data: the student's batch-level
//! matching should look like the teacher's.
//!
//! ## Gradient, and why no backpropagation through Sinkhorn is needed
//! Write `log P_ij = (Ks_ij + F_i + G_j) / eps_s` with `(F, G)` the optimal dual potentials.
//! Then `KL = sum P* log P* - (1/eps_s) (<P*, Ks> + <a, F> + <b, G>)` (P* has marginals a, b).
//! The potentials solve the dual problem `min_{F,G} -<a,F> - <b,G> + eps_s sum exp((Ks+F+G)/eps_s)`,
//! whose optimal value `V(Ks)` equals `-<a,F> - <b,G> + eps_s`. By the envelope theorem the
//! derivative of an optimal value w.r.t. a parameter is the partial derivative of the objective
//! at the optimum: the potentials' own variation drops out because the objective is stationary
//! in them. So `dV/dKs = P` and `d(<a,F> + <b,G>)/dKs = -P`, which gives
//! `dKL/dKs = (P - P*) / eps_s`. The teacher plan does not depend on `Ks` at all.
//! In the training graph this becomes the surrogate `sum(stopgrad(P - P*) * Ks) / eps_s`, whose
//! gradient is exactly that; the reported loss value is the true KL from [`Klot::step`].
use rayon::prelude::*;

use crate::AlignError;
use crate::sinkhorn::{Sinkhorn, SinkhornStats};

/// What one KLOT evaluation produced (the gradient stays in the workspace).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KlotValue {
    /// KL(P* || P), accumulated in f64.
    pub kl: f64,
    pub student: SinkhornStats,
    pub teacher: SinkhornStats,
}

/// A reusable KLOT workspace for `rows x cols` batches: two Sinkhorn workspaces and the
/// gradient buffer, all allocated once.
#[derive(Debug, Clone)]
pub struct Klot {
    student: Sinkhorn,
    teacher: Sinkhorn,
    /// (P - P*) / eps_s, row-major.
    grad: Vec<f32>,
    /// Per-row terms (f64): P* log(P*/P) summed over the row.
    row_kl: Vec<f64>,
    /// Column part of log P* - log P, in f32 for the fused loop.
    col_term: Vec<f32>,
}

impl Klot {
    pub fn new(rows: usize, cols: usize) -> Self {
        Self {
            student: Sinkhorn::new(rows, cols),
            teacher: Sinkhorn::new(rows, cols),
            grad: vec![0.0; rows * cols],
            row_kl: vec![0.0; rows],
            col_term: vec![0.0; cols],
        }
    }

    pub fn rows(&self) -> usize {
        self.student.rows()
    }

    /// Stop later steps between Sinkhorn iterations once `cancel` is set.
    pub fn set_cancel(&mut self, cancel: crate::progress::Cancel) {
        self.student.set_cancel(cancel.clone());
        self.teacher.set_cancel(cancel);
    }

    pub fn cols(&self) -> usize {
        self.student.cols()
    }

    /// One KLOT step: both plans (`iters` Sinkhorn iterations each), the KL value and the
    /// gradient w.r.t. `ks`, `(P - P*) / eps_s`, left in [`Klot::grad`].
    pub fn step(
        &mut self,
        ks: &[f32],
        kt: &[f32],
        eps_s: f64,
        eps_t: f64,
        iters: usize,
    ) -> Result<KlotValue, AlignError> {
        crate::sinkhorn::on_pool(|| self.step_here(ks, kt, eps_s, eps_t, iters))
    }

    fn step_here(
        &mut self,
        ks: &[f32],
        kt: &[f32],
        eps_s: f64,
        eps_t: f64,
        iters: usize,
    ) -> Result<KlotValue, AlignError> {
        let student = self.student.solve(ks, eps_s, iters)?;
        let teacher = self.teacher.solve(kt, eps_t, iters)?;
        let kl = self.fuse(ks, kt)?;
        Ok(KlotValue {
            kl,
            student,
            teacher,
        })
    }

    /// Teacher plan only, for callers that reuse one teacher plan (it depends only on the batch).
    pub fn teacher_plan(&self) -> &Sinkhorn {
        &self.teacher
    }

    pub fn student_plan(&self) -> &Sinkhorn {
        &self.student
    }

    /// The gradient of the last step, `(P - P*) / eps_s`, row-major.
    pub fn grad(&self) -> &[f32] {
        &self.grad
    }

    /// One pass over both plans: gradient and KL together.
    fn fuse(&mut self, ks: &[f32], kt: &[f32]) -> Result<f64, AlignError> {
        let cols = self.cols();
        let eps_s = self.student.eps();
        let eps_t = self.teacher.eps();
        let (is, it) = (1.0 / eps_s, 1.0 / eps_t);
        let (fs, gs) = self.student.potentials();
        let (ft, gt) = self.teacher.potentials();
        // log P*_ij - log P_ij = Kt_ij/eps_t - Ks_ij/eps_s + c_i + d_j
        for ((d, &gtj), &gsj) in self.col_term.iter_mut().zip(gt).zip(gs) {
            *d = (gtj * it - gsj * is) as f32;
        }
        let (kern_s, us, vs) = self.student.parts();
        let (kern_t, ut, vt) = self.teacher.parts();
        let col_term = &self.col_term;
        let (is32, it32) = (is as f32, it as f32);
        self.grad
            .par_chunks_mut(cols)
            .zip(self.row_kl.par_iter_mut())
            .enumerate()
            .for_each(|(i, (grow, rkl))| {
                let r = i * cols..(i + 1) * cols;
                let c_i = (ft[i] * it - fs[i] * is) as f32;
                *rkl = klot_row(
                    &kern_s[r.clone()],
                    &kern_t[r.clone()],
                    &ks[r.clone()],
                    &kt[r],
                    us[i],
                    ut[i],
                    vs,
                    vt,
                    col_term,
                    c_i,
                    is32,
                    it32,
                    grow,
                );
            });
        let kl: f64 = self.row_kl.iter().sum();
        if !kl.is_finite() {
            return Err(AlignError::Numerical(
                "KLOT value is NaN or infinite".into(),
            ));
        }
        Ok(kl)
    }
}

/// One row of the fused KLOT pass. Returns the row's KL contribution (f64 over f32 blocks).
#[allow(clippy::too_many_arguments)]
#[inline]
fn klot_row(
    kern_s: &[f32],
    kern_t: &[f32],
    ks: &[f32],
    kt: &[f32],
    us: f32,
    ut: f32,
    vs: &[f32],
    vt: &[f32],
    col_term: &[f32],
    c_i: f32,
    inv_eps_s: f32,
    inv_eps_t: f32,
    grow: &mut [f32],
) -> f64 {
    let mut total = 0.0f64;
    let mut block = 0f32;
    for j in 0..grow.len() {
        let p = kern_s[j] * us * vs[j];
        let q = kern_t[j] * ut * vt[j];
        grow[j] = (p - q) * inv_eps_s;
        let log_ratio = kt[j] * inv_eps_t - ks[j] * inv_eps_s + c_i + col_term[j];
        block += q * log_ratio;
        if j % 256 == 255 {
            total += block as f64;
            block = 0.0;
        }
    }
    total + block as f64
}

/// Exact KL(P* || P) from two log-domain solves, in f64: the checking path.
pub fn kl_log_domain(
    ks: &[f32],
    kt: &[f32],
    rows: usize,
    cols: usize,
    eps_s: f64,
    eps_t: f64,
    iters: usize,
) -> Result<f64, AlignError> {
    use super::sinkhorn::log_domain;
    let p = log_domain(ks, rows, cols, eps_s, iters)?;
    let q = log_domain(kt, rows, cols, eps_t, iters)?;
    let mut kl = 0.0;
    for i in 0..rows {
        for j in 0..cols {
            let lq = q.log_entry(kt, i, j);
            let lp = p.log_entry(ks, i, j);
            kl += lq.exp() * (lq - lp);
        }
    }
    Ok(kl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinkhorn::log_domain;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_affinity(n: usize, m: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * m).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// d KL / d Ks_kl by central differences of the exact (f64, converged) KL, against the
    /// closed form (P - P*) / eps_s from the envelope theorem.
    #[test]
    fn gradient_matches_finite_differences_f64() {
        let (n, m) = (6, 5);
        let (eps_s, eps_t, iters) = (0.5, 0.3, 3000);
        let ks = random_affinity(n, m, 1);
        let kt = random_affinity(n, m, 2);
        let p = log_domain(&ks, n, m, eps_s, iters).unwrap();
        let q = log_domain(&kt, n, m, eps_t, iters).unwrap();
        let h = 1e-3f32;
        let mut worst = 0f64;
        for &(i, j) in &[(0usize, 0usize), (1, 3), (2, 4), (5, 1), (3, 2)] {
            let analytic = (p.log_entry(&ks, i, j).exp() - q.log_entry(&kt, i, j).exp()) / eps_s;
            let mut plus = ks.clone();
            plus[i * m + j] += h;
            let mut minus = ks.clone();
            minus[i * m + j] -= h;
            // The perturbation is exactly representable relative to the f64 evaluation.
            let dh = (plus[i * m + j] as f64) - (minus[i * m + j] as f64);
            let fd = (kl_log_domain(&plus, &kt, n, m, eps_s, eps_t, iters).unwrap()
                - kl_log_domain(&minus, &kt, n, m, eps_s, eps_t, iters).unwrap())
                / dh;
            let rel = (fd - analytic).abs() / analytic.abs().max(1e-12);
            worst = worst.max(rel);
        }
        assert!(worst < 1e-3, "worst relative error {worst}");
    }

    /// The fast f32 step: its KL matches the exact one and its gradient matches (P - P*)/eps_s
    /// of the exact plans, at training temperatures.
    #[test]
    fn fast_step_matches_exact_path() {
        let (n, m) = (64, 64);
        let ks = random_affinity(n, m, 3);
        let kt = random_affinity(n, m, 4);
        let (eps_s, eps_t, iters) = (0.05, 0.01, 100);
        let mut k = Klot::new(n, m);
        let out = k.step(&ks, &kt, eps_s, eps_t, iters).unwrap();
        let exact = kl_log_domain(&ks, &kt, n, m, eps_s, eps_t, iters).unwrap();
        assert!(
            (out.kl - exact).abs() / exact < 1e-3,
            "fast {} exact {}",
            out.kl,
            exact
        );
        let p = log_domain(&ks, n, m, eps_s, iters).unwrap();
        let q = log_domain(&kt, n, m, eps_t, iters).unwrap();
        let scale = eps_s * (n * m) as f64; // gradient entries are O(1 / (n m eps_s))
        let mut worst = 0f64;
        for i in 0..n {
            for j in 0..m {
                let g = (p.log_entry(&ks, i, j).exp() - q.log_entry(&kt, i, j).exp()) / eps_s;
                worst = worst.max((k.grad()[i * m + j] as f64 - g).abs() * scale);
            }
        }
        assert!(worst < 1e-2, "worst scaled gradient difference {worst}");
    }

    /// KL(P || P) = 0: same affinity and temperature for both plans.
    #[test]
    fn kl_of_identical_plans_is_zero() {
        let ks = random_affinity(32, 40, 9);
        let mut k = Klot::new(32, 40);
        let out = k.step(&ks, &ks, 0.05, 0.05, 100).unwrap();
        assert!(out.kl.abs() < 1e-5, "{}", out.kl);
        assert!(k.grad().iter().all(|g| g.abs() < 1e-3));
    }

    /// A set cancel flag stops a step between Sinkhorn iterations, whatever `iters` says.
    #[test]
    fn cancel_stops_a_step_between_iterations() {
        let (n, m) = (64, 64);
        let ks = random_affinity(n, m, 5);
        let kt = random_affinity(n, m, 6);
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut k = Klot::new(n, m);
        k.set_cancel(crate::progress::Cancel::new(flag.clone()));
        let f2 = flag.clone();
        let setter = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            f2.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        // usize::MAX iterations: only the flag can end this step.
        let r = k.step(&ks, &kt, 0.05, 0.01, usize::MAX);
        setter.join().unwrap();
        assert!(matches!(r, Err(crate::AlignError::Cancelled)), "{r:?}");
        // Cleared again, the same workspace solves normally.
        flag.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(k.step(&ks, &kt, 0.05, 0.01, 10).is_ok());
    }

    /// Cancel latency of one KLOT step at B = 4096 (docs/FUZZING.md, "Cancel latency"): the
    /// time from setting the flag to the step returning. A measurement, not a timed test:
    /// `cargo test --release -p sotalign-engine cancel_latency -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn cancel_latency_at_b4096() {
        let b: usize = std::env::var("SOTALIGN_CANCEL_B")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4096);
        let ks = random_affinity(b, b, 7);
        let kt = random_affinity(b, b, 8);
        let mut k = Klot::new(b, b);
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        k.set_cancel(crate::progress::Cancel::new(flag.clone()));
        let mut worst = 0f64;
        for trial in 0..5 {
            flag.store(false, std::sync::atomic::Ordering::SeqCst);
            let f2 = flag.clone();
            let setter = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(300 + 100 * trial));
                f2.store(true, std::sync::atomic::Ordering::SeqCst);
                std::time::Instant::now()
            });
            let r = k.step(&ks, &kt, 0.05, 0.01, usize::MAX);
            let done = std::time::Instant::now();
            let set_at = setter.join().unwrap();
            assert!(matches!(r, Err(crate::AlignError::Cancelled)));
            let ms = done.duration_since(set_at).as_secs_f64() * 1e3;
            worst = worst.max(ms);
            println!("B = {b}: trial {trial}: cancelled {ms:.1} ms after the flag was set");
        }
        println!("B = {b}: worst cancel latency {worst:.1} ms over 5 trials");
    }
}
