//! Entropic optimal transport with uniform marginals on an affinity matrix (Sinkhorn).
//!
//! Given an affinity `K` (rows x cols, e.g. cosine similarities of a batch of images and a batch
//! of texts) and a temperature `eps`, the plan is `P = diag(u) exp(K / eps) diag(v)` with row sums
//! `1/rows` and column sums `1/cols`. SOTAlign computes two such plans per step (student and
//! teacher), so this is the hot loop of training and is written for speed:
//!
//! - **Scaling form with absorption** (stabilised Sinkhorn). The state is a pair of absorbed
//!   log-potentials `f, g` (f64) plus scalings `u, v` (f32) and a kernel
//!   `exp((K_ij + f_i + g_j) / eps)` (f32). An iteration is two matrix-vector products, no `exp`.
//!   When a scaling leaves `[SCALE_LO, SCALE_HI]`, it is absorbed into the potentials and the
//!   kernel is recomputed, so nothing over- or underflows even at `eps = 0.005` with cosine
//!   affinities (`K / eps` up to 200, far past f32's `exp` range).
//! - **One fused pass per iteration.** Row `i` of the kernel is read once: `s_i = K_i . v`,
//!   `u_i = a / s_i`, then `t += u_i K_i` while the row is still in L1. So an iteration streams the
//!   kernel once, not twice. Rayon splits the rows into chunks; each chunk owns a column
//!   accumulator, preallocated in the workspace: no allocation per iteration, O(rows x cols)
//!   memory in total.
//! - **Accuracy.** Products are f32; dot products accumulate 16 lanes in f32 over blocks of 256
//!   entries and the blocks in f64; column sums accumulate 64 rows in f32 and then flush to f64.
//!   Marginals are therefore exact to about 1e-6 relative even at 4096 x 4096.
//! - **Vectorisation.** The inner loops are plain chunked loops that LLVM vectorises; on x86-64
//!   they are compiled twice and the AVX2+FMA copy is chosen at run time, so a portable binary
//!   still uses 256-bit lanes. `exp` in the kernel rebuilds is a branch-free polynomial
//!   ([`exp_f32`]) so it vectorises too.
//!
//! **Update order** follows the reference protocol (`tests/fixtures/reference/PROTOCOL.md`):
//! `iters` iterations of (u then v), starting from `v = 1`, then a symmetric finish
//! `log u <- (log u + log u_next) / 2`. The first iteration is done exactly in the log domain
//! (that also builds the first stabilised kernel); the later ones in scaling form. A pure
//! log-domain f64 implementation with the same order, [`log_domain`], is kept for checking.
//!
//! Non-finite affinities are rejected up front with [`AlignError::NonFinite`]; a scaling that
//! still turns non-finite (a whole row of the kernel underflowing) falls back to an exact
//! log-domain iteration, and a failure there is reported as [`AlignError::Numerical`].
use rayon::prelude::*;

use crate::AlignError;

/// Scalings outside this range are absorbed into the log-potentials. With kernel entries at most
/// ~1 and `u_i v_j <= 1e20`, every entry that carries mass is a normal f32.
const SCALE_LO: f32 = 1e-10;
const SCALE_HI: f32 = 1e10;
/// Rows accumulated into the f32 column block before flushing into f64.
const ROW_BLOCK: usize = 64;
/// Entries per f32 partial dot product before adding into f64.
const DOT_BLOCK: usize = 256;

/// What one solve did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SinkhornStats {
    /// Iterations (u then v) performed, the first one in the log domain.
    pub iters: usize,
    /// Kernel rebuilds caused by scalings leaving the safe range.
    pub absorptions: usize,
    /// Extra exact log-domain iterations taken because a scaling turned non-finite.
    pub log_steps: usize,
    /// L1 marginal error of the returned plan: sum_i |r_i - 1/rows| + sum_j |c_j - 1/cols|.
    pub marginal_error: f64,
}

/// A reusable Sinkhorn workspace for one shape. All buffers are allocated in [`Sinkhorn::new`];
/// [`Sinkhorn::solve`] allocates nothing.
#[derive(Debug, Clone)]
pub struct Sinkhorn {
    rows: usize,
    cols: usize,
    eps: f64,
    /// Stabilised kernel exp((K + f + g) / eps), row-major.
    kernel: Vec<f32>,
    /// Absorbed log-potentials (same units as K).
    f: Vec<f64>,
    g: Vec<f64>,
    /// f32 copies of `f`, `g` for the exp loops.
    f32s: Vec<f32>,
    g32s: Vec<f32>,
    u: Vec<f32>,
    v: Vec<f32>,
    /// u before the finishing pass (restored if that pass fails).
    u_prev: Vec<f32>,
    /// Row sums `K_i . v` of the last pass (for the marginal error).
    row_dot: Vec<f64>,
    /// Per-chunk column accumulators (f64) and f32 blocks, `chunks x cols` each.
    col_acc: Vec<f64>,
    col_blk: Vec<f32>,
    /// Reduced column sums.
    col_sum: Vec<f64>,
    /// Full potentials F = f + eps ln u, G = g + eps ln v after a solve.
    pot_f: Vec<f64>,
    pot_g: Vec<f64>,
    rows_per_chunk: usize,
    stats: SinkhornStats,
    /// Checked before every iteration: a set flag ends the solve with `Cancelled`.
    cancel: crate::progress::Cancel,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// u = a / (K v)
    Update,
    /// u = sqrt(u * a / (K v)) (the symmetric finish, geometric mean = mean of logs)
    Finish,
    /// u unchanged; only the row and column sums are measured.
    Measure,
}

impl Sinkhorn {
    /// Workspace for `rows x cols` affinities.
    pub fn new(rows: usize, cols: usize) -> Self {
        let threads = rayon::current_num_threads().max(1);
        // Two chunks per thread balance the load; never more chunks than rows.
        let chunks = (2 * threads).min(rows.max(1));
        let rows_per_chunk = rows.max(1).div_ceil(chunks);
        let chunks = rows.max(1).div_ceil(rows_per_chunk);
        Self {
            rows,
            cols,
            eps: 1.0,
            kernel: vec![0.0; rows * cols],
            f: vec![0.0; rows],
            g: vec![0.0; cols],
            f32s: vec![0.0; rows],
            g32s: vec![0.0; cols],
            u: vec![1.0; rows],
            v: vec![1.0; cols],
            u_prev: vec![1.0; rows],
            row_dot: vec![0.0; rows],
            col_acc: vec![0.0; chunks * cols],
            col_blk: vec![0.0; chunks * cols],
            col_sum: vec![0.0; cols],
            pot_f: vec![0.0; rows],
            pot_g: vec![0.0; cols],
            rows_per_chunk,
            stats: SinkhornStats::default(),
            cancel: Default::default(),
        }
    }

    /// Stop later solves with [`AlignError::Cancelled`] between iterations once `cancel` is set.
    pub fn set_cancel(&mut self, cancel: crate::progress::Cancel) {
        self.cancel = cancel;
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Temperature of the last solve.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    pub fn stats(&self) -> SinkhornStats {
        self.stats
    }

    /// Solve for the plan of `k` (row-major `rows x cols`) at temperature `eps` with `iters`
    /// iterations (at least 1). The plan stays in the workspace: read it with
    /// [`Sinkhorn::plan_into`], [`Sinkhorn::plan_entry`] or [`Sinkhorn::potentials`].
    pub fn solve(
        &mut self,
        k: &[f32],
        eps: f64,
        iters: usize,
    ) -> Result<SinkhornStats, AlignError> {
        on_pool(|| self.solve_here(k, eps, iters))
    }

    fn solve_here(
        &mut self,
        k: &[f32],
        eps: f64,
        iters: usize,
    ) -> Result<SinkhornStats, AlignError> {
        if k.len() != self.rows * self.cols {
            return Err(AlignError::DimensionMismatch {
                what: format!(
                    "Sinkhorn affinity for a {}x{} workspace",
                    self.rows, self.cols
                ),
                expected: self.rows * self.cols,
                got: k.len(),
            });
        }
        check_problem(self.rows, self.cols, eps, iters)?;
        check_finite(k, self.cols)?;
        self.eps = eps;
        self.stats = SinkhornStats::default();

        // Iteration 1, exact in the log domain from g = 0 (v = 1).
        self.g.iter_mut().for_each(|x| *x = 0.0);
        self.log_step(k)?;
        self.stats.iters = 1;

        for _ in 1..iters {
            self.cancel.check()?;
            if !self.pass(Pass::Update) || !self.update_v() {
                // A row or column of the kernel underflowed: redo this iteration exactly.
                self.absorb_v();
                self.log_step(k)?;
                self.stats.log_steps += 1;
            } else if !self.scalings_in_range() {
                self.absorb(k);
            }
            self.stats.iters += 1;
        }

        // Symmetric finish: log u <- (log u + log u_next) / 2, then measure the marginals.
        self.u_prev.copy_from_slice(&self.u);
        if !self.pass(Pass::Finish) {
            self.u.copy_from_slice(&self.u_prev);
            self.finish_log_domain(k)?;
            if !self.pass(Pass::Measure) {
                return Err(AlignError::Numerical(
                    "Sinkhorn: non-finite row sum after the log-domain finish".into(),
                ));
            }
        }
        self.reduce_cols();
        let a = 1.0 / self.rows as f64;
        let b = 1.0 / self.cols as f64;
        let mut err = 0.0;
        for (&s, &u) in self.row_dot.iter().zip(&self.u) {
            err += (u as f64 * s - a).abs();
        }
        for (&t, &v) in self.col_sum.iter().zip(&self.v) {
            err += (v as f64 * t - b).abs();
        }
        if !err.is_finite() {
            return Err(AlignError::Numerical(
                "Sinkhorn: non-finite marginal (NaN/Inf in the plan)".into(),
            ));
        }
        self.stats.marginal_error = err;
        for i in 0..self.rows {
            self.pot_f[i] = self.f[i] + eps * (self.u[i] as f64).ln();
        }
        for j in 0..self.cols {
            self.pot_g[j] = self.g[j] + eps * (self.v[j] as f64).ln();
        }
        Ok(self.stats)
    }

    /// `P_ij` of the last solve.
    pub fn plan_entry(&self, i: usize, j: usize) -> f32 {
        self.kernel[i * self.cols + j] * self.u[i] * self.v[j]
    }

    /// Write the plan of the last solve into `out` (row-major, `rows x cols`).
    pub fn plan_into(&self, out: &mut [f32]) {
        let cols = self.cols;
        out.par_chunks_mut(cols.max(1))
            .zip(self.kernel.par_chunks(cols.max(1)))
            .zip(self.u.par_iter())
            .for_each(|((o, krow), &ui)| {
                for ((o, &kv), &vj) in o.iter_mut().zip(krow).zip(&self.v) {
                    *o = kv * ui * vj;
                }
            });
    }

    /// The plan's log-potentials `(F, G)`: `log P_ij = (K_ij + F_i + G_j) / eps`.
    pub fn potentials(&self) -> (&[f64], &[f64]) {
        (&self.pot_f, &self.pot_g)
    }

    /// Raw parts for fused consumers (KLOT): kernel, u, v.
    pub(crate) fn parts(&self) -> (&[f32], &[f32], &[f32]) {
        (&self.kernel, &self.u, &self.v)
    }

    /// One exact log-domain iteration (u then v) from the current absolute `g` (v must be 1):
    /// f_i = eps ln a - eps LSE_j((K_ij + g_j)/eps), then g_j likewise from f. Leaves the state
    /// absorbed: kernel = exp((K + f - m) / eps) with m_j the column maxima, u = 1,
    /// v_j = b / (column sum), so no further exp is needed.
    fn log_step(&mut self, k: &[f32]) -> Result<(), AlignError> {
        let (rows, cols, eps) = (self.rows, self.cols, self.eps);
        let inv_eps = (1.0 / eps) as f32;
        let ln_a = -(rows as f64).ln();
        for (d, s) in self.g32s.iter_mut().zip(&self.g) {
            *d = *s as f32;
        }
        // Row log-sum-exp (pass A): the kernel buffer is scratch here.
        let g32 = &self.g32s;
        self.f
            .par_iter_mut()
            .zip(k.par_chunks(cols))
            .zip(self.kernel.par_chunks_mut(cols))
            .for_each(|((fi, krow), scratch)| {
                let (m, s) = row_lse(krow, g32, inv_eps, scratch);
                *fi = eps * ln_a - m as f64 - eps * s.ln();
            });
        round_to_f32(&mut self.f, &mut self.f32s);
        // Column maxima of K_ij + f_i (pass B), per chunk into col_blk, then reduced.
        let rpc = self.rows_per_chunk;
        let f32s = &self.f32s;
        self.col_blk
            .par_chunks_mut(cols)
            .zip(k.par_chunks(rpc * cols))
            .zip(f32s.par_chunks(rpc))
            .for_each(|((mx, kch), fch)| col_max(kch, fch, mx));
        let (first, rest) = self.col_blk.split_at_mut(cols);
        for ch in rest.chunks(cols) {
            for (m, &x) in first.iter_mut().zip(ch) {
                *m = m.max(x);
            }
        }
        // Pass C: kernel = exp((K + f - m) / eps) and its column sums.
        for (d, &m) in self.g32s.iter_mut().zip(&self.col_blk[..cols]) {
            *d = -m;
        }
        self.rebuild_kernel(k);
        for (d, s) in self.g.iter_mut().zip(&self.g32s) {
            *d = *s as f64;
        }
        self.u.iter_mut().for_each(|x| *x = 1.0);
        self.v.iter_mut().for_each(|x| *x = 1.0);
        // Column sums of the new kernel with u = 1: one Measure pass gives them.
        if !self.pass(Pass::Measure) {
            return Err(AlignError::Numerical(
                "Sinkhorn: log-domain iteration produced a non-finite row sum".into(),
            ));
        }
        if !self.update_v() {
            return Err(AlignError::Numerical(
                "Sinkhorn: log-domain iteration produced a zero or non-finite column sum".into(),
            ));
        }
        Ok(())
    }

    /// kernel_ij = exp((K_ij + f32s_i + g32s_j) / eps).
    fn rebuild_kernel(&mut self, k: &[f32]) {
        let cols = self.cols;
        let inv_eps = (1.0 / self.eps) as f32;
        let g32 = &self.g32s;
        self.kernel
            .par_chunks_mut(cols)
            .zip(k.par_chunks(cols))
            .zip(self.f32s.par_iter())
            .for_each(|((out, krow), &fi)| exp_row(krow, fi, g32, inv_eps, out));
    }

    /// Move the scalings into the potentials and rebuild the kernel.
    fn absorb(&mut self, k: &[f32]) {
        let eps = self.eps;
        for (f, u) in self.f.iter_mut().zip(self.u.iter_mut()) {
            *f += eps * (*u as f64).ln();
            *u = 1.0;
        }
        for (g, v) in self.g.iter_mut().zip(self.v.iter_mut()) {
            *g += eps * (*v as f64).ln();
            *v = 1.0;
        }
        round_to_f32(&mut self.f, &mut self.f32s);
        round_to_f32(&mut self.g, &mut self.g32s);
        self.rebuild_kernel(k);
        self.stats.absorptions += 1;
    }

    /// Fold v into g (v = 1), ahead of an exact log-domain step.
    fn absorb_v(&mut self) {
        let eps = self.eps;
        for (g, v) in self.g.iter_mut().zip(self.v.iter_mut()) {
            *g += eps * (*v as f64).ln();
            *v = 1.0;
        }
    }

    /// The symmetric finish done in the log domain (fallback when the scaled one fails):
    /// F <- (F + f_next) / 2 with f_next from an exact row log-sum-exp.
    fn finish_log_domain(&mut self, k: &[f32]) -> Result<(), AlignError> {
        let (cols, eps) = (self.cols, self.eps);
        let inv_eps = (1.0 / eps) as f32;
        let ln_a = -(self.rows as f64).ln();
        self.absorb_v();
        for (d, s) in self.g32s.iter_mut().zip(&self.g) {
            *d = *s as f32;
        }
        let g32 = &self.g32s;
        let u = &self.u;
        self.f
            .par_iter_mut()
            .zip(u.par_iter())
            .zip(k.par_chunks(cols))
            .zip(self.kernel.par_chunks_mut(cols))
            .for_each(|(((fi, &ui), krow), scratch)| {
                let (m, s) = row_lse(krow, g32, inv_eps, scratch);
                let next = eps * ln_a - m as f64 - eps * s.ln();
                let cur = *fi + eps * (ui as f64).ln();
                *fi = 0.5 * (cur + next);
            });
        if self.f.iter().any(|x| !x.is_finite()) {
            return Err(AlignError::Numerical(
                "Sinkhorn: non-finite potential in the finish".into(),
            ));
        }
        self.u.iter_mut().for_each(|x| *x = 1.0);
        round_to_f32(&mut self.f, &mut self.f32s);
        round_to_f32(&mut self.g, &mut self.g32s);
        self.rebuild_kernel(k);
        self.stats.log_steps += 1;
        Ok(())
    }

    /// v_j = b / t_j from the reduced column sums; false (and v untouched) if any is unusable.
    fn update_v(&mut self) -> bool {
        self.reduce_cols();
        let b = 1.0 / self.cols as f64;
        if self.col_sum.iter().any(|&t| !(t > 0.0 && t.is_finite())) {
            return false;
        }
        let mut ok = true;
        for (v, &t) in self.v.iter_mut().zip(&self.col_sum) {
            let nv = (b / t) as f32;
            ok &= nv > 0.0 && nv.is_finite();
            *v = nv;
        }
        ok
    }

    fn scalings_in_range(&self) -> bool {
        let ok = |x: &f32| (SCALE_LO..=SCALE_HI).contains(x);
        self.u.iter().all(ok) && self.v.iter().all(ok)
    }

    /// Sum the per-chunk column accumulators into `col_sum`.
    fn reduce_cols(&mut self) {
        let cols = self.cols;
        self.col_sum.iter_mut().for_each(|x| *x = 0.0);
        for ch in self.col_acc.chunks(cols) {
            for (s, &x) in self.col_sum.iter_mut().zip(ch) {
                *s += x;
            }
        }
    }

    /// The fused pass: per row `s_i = K_i . v`, update `u_i` (per `mode`), accumulate
    /// `t += u_i K_i` per chunk. Returns false when some `u_i` is zero or non-finite.
    fn pass(&mut self, mode: Pass) -> bool {
        let cols = self.cols;
        let rpc = self.rows_per_chunk;
        let a = 1.0 / self.rows as f64;
        let v = &self.v;
        self.kernel
            .par_chunks(rpc * cols)
            .zip(self.u.par_chunks_mut(rpc))
            .zip(self.row_dot.par_chunks_mut(rpc))
            .zip(self.col_acc.par_chunks_mut(cols))
            .zip(self.col_blk.par_chunks_mut(cols))
            .map(|((((kch, uch), sch), acc), blk)| {
                fused_chunk(kch, cols, v, a, mode, uch, sch, acc, blk)
            })
            .reduce(|| true, |x, y| x && y)
    }
}

/// The checks every Sinkhorn solver makes before iterating (this engine and
/// [`crate::klot_device`]): a positive finite `eps`, at least one iteration, a non-empty matrix.
pub(crate) fn check_problem(
    rows: usize,
    cols: usize,
    eps: f64,
    iters: usize,
) -> Result<(), AlignError> {
    if !(eps.is_finite() && eps > 0.0) {
        return Err(AlignError::InvalidConfig(format!(
            "Sinkhorn eps must be > 0, got {eps}"
        )));
    }
    if iters == 0 {
        return Err(AlignError::InvalidConfig(
            "Sinkhorn needs at least 1 iteration".into(),
        ));
    }
    if rows == 0 || cols == 0 {
        return Err(AlignError::NotEnoughData(
            "Sinkhorn on an empty affinity matrix".into(),
        ));
    }
    Ok(())
}

/// Run `f` on a rayon worker thread (directly if already on one).
///
/// A solve makes a few parallel calls per iteration. Issued from a thread outside the pool, each
/// call injects a job into the global queue (whose linked blocks are allocated as it grows) and
/// parks the caller until a worker finishes it, a wake-up per call. Moving the whole loop onto
/// a worker once makes the inner calls cheap `join`s on that worker's own deque: no allocation
/// and no cross-thread wake-up per iteration (`daemon/tests/klot_alloc.rs` checks the former).
pub(crate) fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// Round the f64 potentials to f32 (the kernel is built from the f32 copies; keeping the f64
/// ones equal to them makes `log P = (K + F + G) / eps` consistent with the kernel).
fn round_to_f32(p: &mut [f64], p32: &mut [f32]) {
    for (d, s) in p32.iter_mut().zip(p.iter_mut()) {
        *d = *s as f32;
        *s = *d as f64;
    }
}

/// Reject NaN / Inf affinities, naming the first bad row.
fn check_finite(k: &[f32], cols: usize) -> Result<(), AlignError> {
    let bad = k
        .par_chunks(cols)
        .position_first(|row| row.iter().any(|x| !x.is_finite()));
    match bad {
        Some(row) => Err(AlignError::NonFinite {
            what: "Sinkhorn affinity matrix".into(),
            row,
        }),
        None => Ok(()),
    }
}

/// Fast `exp` for f32: range reduction by ln 2 and a degree-6 polynomial, branch-free so loops
/// over it vectorise. Relative error below 5e-7 on [-87, 88]; 0 below -87.3, clamped at 88.3.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer (ties to even) in
    // plain IEEE arithmetic, which vectorises on every x86 level, unlike `f32::round`.
    const ROUNDER: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.3);
    let kf = (xc * LOG2E + ROUNDER) - ROUNDER;
    let r = xc - kf * LN2_HI - kf * LN2_LO;
    // exp(r) on |r| <= ln2/2, Taylor to degree 6 (error < 2e-8 relative before rounding).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((kf as i32 + 127) as u32) << 23);
    let y = p * scale;
    if x < -87.3 { 0.0 } else { y }
}

// ---- inner kernels: generic bodies, compiled twice on x86-64 (baseline and AVX2+FMA) ----

macro_rules! multiversion {
    (fn $name:ident / $generic:ident / $avx:ident ($($arg:ident : $ty:ty),*) -> $ret:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $avx($($arg: $ty),*) -> $ret {
            $generic($($arg),*)
        }

        #[inline]
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features `$avx` was compiled for (checked above).
                    return unsafe { $avx($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

multiversion!(fn fused_chunk / fused_chunk_generic / fused_chunk_avx2 (
    kch: &[f32], cols: usize, v: &[f32], a: f64, mode: Pass, uch: &mut [f32], sch: &mut [f64],
    acc: &mut [f64], blk: &mut [f32]) -> bool);
multiversion!(fn row_lse / row_lse_generic / row_lse_avx2 (
    krow: &[f32], g: &[f32], inv_eps: f32, scratch: &mut [f32]) -> (f32, f64));
multiversion!(fn exp_row / exp_row_generic / exp_row_avx2 (
    krow: &[f32], fi: f32, g: &[f32], inv_eps: f32, out: &mut [f32]) -> ());
multiversion!(fn col_max / col_max_generic / col_max_avx2 (
    kch: &[f32], fch: &[f32], mx: &mut [f32]) -> ());

/// Dot product: 16 f32 lanes per block of [`DOT_BLOCK`], blocks summed in f64.
#[inline(always)]
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut total = 0.0f64;
    for (ba, bb) in a.chunks(DOT_BLOCK).zip(b.chunks(DOT_BLOCK)) {
        let (ha, ta) = ba.as_chunks::<16>();
        let (hb, tb) = bb.as_chunks::<16>();
        let mut acc = [0f32; 16];
        for (x, y) in ha.iter().zip(hb) {
            for l in 0..16 {
                acc[l] += x[l] * y[l];
            }
        }
        let mut tail = 0f32;
        for (x, y) in ta.iter().zip(tb) {
            tail += x * y;
        }
        let mut s = tail as f64;
        for x in acc {
            s += x as f64;
        }
        total += s;
    }
    total
}

#[inline(always)]
fn fused_chunk_generic(
    kch: &[f32],
    cols: usize,
    v: &[f32],
    a: f64,
    mode: Pass,
    uch: &mut [f32],
    sch: &mut [f64],
    acc: &mut [f64],
    blk: &mut [f32],
) -> bool {
    acc.iter_mut().for_each(|x| *x = 0.0);
    blk.iter_mut().for_each(|x| *x = 0.0);
    let mut ok = true;
    for (r, ((row, ui), si)) in kch
        .chunks_exact(cols)
        .zip(uch.iter_mut())
        .zip(sch.iter_mut())
        .enumerate()
    {
        let s = dot_f64(row, v);
        *si = s;
        let un = match mode {
            Pass::Update => (a / s) as f32,
            Pass::Finish => ((*ui as f64) * (a / s)).sqrt() as f32,
            Pass::Measure => *ui,
        };
        ok &= un > 0.0 && un.is_finite();
        *ui = un;
        for (b, &k) in blk.iter_mut().zip(row) {
            *b += un * k;
        }
        if (r + 1) % ROW_BLOCK == 0 {
            for (c, b) in acc.iter_mut().zip(blk.iter_mut()) {
                *c += *b as f64;
                *b = 0.0;
            }
        }
    }
    for (c, b) in acc.iter_mut().zip(blk.iter()) {
        *c += *b as f64;
    }
    ok
}

/// Max and sum of exp((K_ij + g_j - max) / eps) over a row. Returns (max of K + g, sum).
#[inline(always)]
fn row_lse_generic(krow: &[f32], g: &[f32], inv_eps: f32, scratch: &mut [f32]) -> (f32, f64) {
    let mut m = f32::NEG_INFINITY;
    for ((s, &k), &gj) in scratch.iter_mut().zip(krow).zip(g) {
        *s = k + gj;
        m = m.max(*s);
    }
    let mut total = 0.0f64;
    for blk in scratch.chunks_mut(DOT_BLOCK) {
        let mut acc = 0f32;
        for s in blk.iter_mut() {
            acc += exp_f32((*s - m) * inv_eps);
        }
        total += acc as f64;
    }
    (m, total)
}

#[inline(always)]
fn exp_row_generic(krow: &[f32], fi: f32, g: &[f32], inv_eps: f32, out: &mut [f32]) {
    for ((o, &k), &gj) in out.iter_mut().zip(krow).zip(g) {
        *o = exp_f32((k + fi + gj) * inv_eps);
    }
}

#[inline(always)]
fn col_max_generic(kch: &[f32], fch: &[f32], mx: &mut [f32]) {
    mx.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
    let cols = mx.len();
    for (row, &fi) in kch.chunks_exact(cols).zip(fch) {
        for (m, &k) in mx.iter_mut().zip(row) {
            *m = m.max(k + fi);
        }
    }
}

/// Log-potentials of an exact log-domain solve.
#[derive(Debug, Clone)]
pub struct LogPlan {
    pub rows: usize,
    pub cols: usize,
    pub eps: f64,
    /// `log P_ij = (K_ij + f_i + g_j) / eps`.
    pub f: Vec<f64>,
    pub g: Vec<f64>,
}

impl LogPlan {
    pub fn log_entry(&self, k: &[f32], i: usize, j: usize) -> f64 {
        (k[i * self.cols + j] as f64 + self.f[i] + self.g[j]) / self.eps
    }
}

/// Pure log-domain Sinkhorn in f64 (same update order and finish as [`Sinkhorn::solve`]).
/// O(iters x rows x cols) `exp` calls: the checking path, not the fast one.
pub fn log_domain(
    k: &[f32],
    rows: usize,
    cols: usize,
    eps: f64,
    iters: usize,
) -> Result<LogPlan, AlignError> {
    if k.len() != rows * cols {
        return Err(AlignError::DimensionMismatch {
            what: format!("Sinkhorn affinity {rows}x{cols}"),
            expected: rows * cols,
            got: k.len(),
        });
    }
    if !(eps.is_finite() && eps > 0.0) || iters == 0 || rows == 0 || cols == 0 {
        return Err(AlignError::InvalidConfig(
            "log-domain Sinkhorn: eps > 0, iters >= 1, non-empty".into(),
        ));
    }
    check_finite(k, cols)?;
    let ln_a = -(rows as f64).ln();
    let ln_b = -(cols as f64).ln();
    let mut f = vec![0.0f64; rows];
    let mut g = vec![0.0f64; cols];
    let row_update = |g: &[f64], out: &mut [f64]| {
        out.par_iter_mut().enumerate().for_each(|(i, fi)| {
            let row = &k[i * cols..(i + 1) * cols];
            let m = row
                .iter()
                .zip(g)
                .map(|(&x, &gj)| x as f64 + gj)
                .fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row
                .iter()
                .zip(g)
                .map(|(&x, &gj)| ((x as f64 + gj - m) / eps).exp())
                .sum();
            *fi = eps * ln_a - m - eps * s.ln();
        });
    };
    let col_update = |f: &[f64], out: &mut [f64]| {
        out.par_iter_mut().enumerate().for_each(|(j, gj)| {
            let m = (0..rows)
                .map(|i| k[i * cols + j] as f64 + f[i])
                .fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = (0..rows)
                .map(|i| ((k[i * cols + j] as f64 + f[i] - m) / eps).exp())
                .sum();
            *gj = eps * ln_b - m - eps * s.ln();
        });
    };
    for _ in 0..iters {
        row_update(&g, &mut f);
        col_update(&f, &mut g);
    }
    let mut next = vec![0.0f64; rows];
    row_update(&g, &mut next);
    for (fi, ni) in f.iter_mut().zip(&next) {
        *fi = 0.5 * (*fi + ni);
    }
    if f.iter().chain(&g).any(|x| !x.is_finite()) {
        return Err(AlignError::Numerical(
            "log-domain Sinkhorn produced a non-finite potential".into(),
        ));
    }
    Ok(LogPlan {
        rows,
        cols,
        eps,
        f,
        g,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Cosine affinities of two random unit-vector sets, the shape training produces.
    fn cosine_affinity(rows: usize, cols: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut unit = |n: usize| -> Vec<Vec<f32>> {
            (0..n)
                .map(|_| {
                    let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    v.into_iter().map(|x| x / norm).collect()
                })
                .collect()
        };
        let x = unit(rows);
        let y = unit(cols);
        let mut k = Vec::with_capacity(rows * cols);
        for xi in &x {
            for yj in &y {
                k.push(xi.iter().zip(yj).map(|(a, b)| a * b).sum());
            }
        }
        k
    }

    /// Marginals of the materialised plan, checked independently of the solver's own report.
    fn marginal_l1(s: &Sinkhorn) -> f64 {
        let (n, m) = (s.rows(), s.cols());
        let mut p = vec![0f32; n * m];
        s.plan_into(&mut p);
        let mut err = 0.0;
        for i in 0..n {
            let r: f64 = p[i * m..(i + 1) * m].iter().map(|&x| x as f64).sum();
            err += (r - 1.0 / n as f64).abs();
        }
        for j in 0..m {
            let c: f64 = (0..n).map(|i| p[i * m + j] as f64).sum();
            err += (c - 1.0 / m as f64).abs();
        }
        err
    }

    #[test]
    fn exp_f32_matches_std() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let e = exp_f32(x) as f64;
            let r = (x as f64).exp();
            worst = worst.max(((e - r) / r).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(-200.0), 0.0);
        assert!(exp_f32(200.0).is_finite());
    }

    #[test]
    fn marginals_converge_within_1e4() {
        // Small eps converges slowly (0.01 needs ~2000 iterations here, like the exact
        // log-domain iteration: the two agree to 1e-9 in marginal error at every count).
        for &(n, m, eps, iters) in &[
            (64usize, 64usize, 0.05f64, 500usize),
            (97, 130, 0.1, 500),
            (128, 128, 0.01, 3000),
        ] {
            let k = cosine_affinity(n, m, 16, 7);
            let mut s = Sinkhorn::new(n, m);
            let st = s.solve(&k, eps, iters).unwrap();
            let independent = marginal_l1(&s);
            assert!(
                st.marginal_error < 1e-4,
                "{n}x{m} eps {eps}: reported {}",
                st.marginal_error
            );
            assert!(
                independent < 1e-4,
                "{n}x{m} eps {eps}: measured {independent}"
            );
        }
    }

    #[test]
    fn finite_at_eps_0_005_with_cosine_affinities() {
        let (n, m) = (200, 180);
        let k = cosine_affinity(n, m, 8, 3);
        let mut s = Sinkhorn::new(n, m);
        let st = s.solve(&k, 0.005, 300).unwrap();
        // The scalings left the safe range and were absorbed: the stabilised path was exercised.
        assert!(st.absorptions > 0, "{st:?}");
        let mut p = vec![0f32; n * m];
        s.plan_into(&mut p);
        assert!(p.iter().all(|x| x.is_finite() && *x >= 0.0));
        let total: f64 = p.iter().map(|&x| x as f64).sum();
        assert!((total - 1.0).abs() < 1e-3, "total mass {total}");
        let (f, g) = s.potentials();
        assert!(f.iter().chain(g).all(|x| x.is_finite()));
        assert!(st.marginal_error.is_finite());
        // A naive exp(K / eps) would overflow f32 here (K / eps reaches ~200).
        assert!(k.iter().any(|&x| x / 0.005 > 88.7));
        // ... and the absorbed plan still equals the exact log-domain one.
        let lp = log_domain(&k, n, m, 0.005, 300).unwrap();
        let mut worst = 0f64;
        for i in 0..n {
            for j in 0..m {
                let d = lp.log_entry(&k, i, j).exp() - p[i * m + j] as f64;
                worst = worst.max(d.abs() * (n * m) as f64);
            }
        }
        assert!(worst < 5e-3, "worst scaled difference {worst}");
    }

    #[test]
    fn scaling_path_agrees_with_log_domain() {
        for &(n, m, eps, iters) in &[
            (48usize, 40usize, 0.05f64, 100usize),
            (64, 64, 0.01, 100),
            (30, 50, 0.005, 60),
        ] {
            let k = cosine_affinity(n, m, 12, 11);
            let mut s = Sinkhorn::new(n, m);
            s.solve(&k, eps, iters).unwrap();
            let lp = log_domain(&k, n, m, eps, iters).unwrap();
            let mut worst = 0f64;
            for i in 0..n {
                for j in 0..m {
                    let exact = lp.log_entry(&k, i, j).exp();
                    let fast = s.plan_entry(i, j) as f64;
                    // Entries that carry mass agree to f32 precision (relative to 1/(n m)).
                    worst = worst.max((exact - fast).abs() * (n * m) as f64);
                }
            }
            assert!(
                worst < 2e-3,
                "{n}x{m} eps {eps}: worst scaled difference {worst}"
            );
        }
    }

    #[test]
    fn nan_affinity_is_a_typed_error() {
        let mut k = cosine_affinity(8, 8, 4, 1);
        k[3 * 8 + 2] = f32::NAN;
        let mut s = Sinkhorn::new(8, 8);
        match s.solve(&k, 0.05, 10) {
            Err(AlignError::NonFinite { row, .. }) => assert_eq!(row, 3),
            other => panic!("expected NonFinite, got {other:?}"),
        }
        assert!(matches!(
            log_domain(&k, 8, 8, 0.05, 10),
            Err(AlignError::NonFinite { .. })
        ));
        assert!(matches!(
            s.solve(&k[..10], 0.05, 10),
            Err(AlignError::DimensionMismatch { .. })
        ));
        let k = cosine_affinity(8, 8, 4, 1);
        assert!(matches!(
            s.solve(&k, 0.0, 10),
            Err(AlignError::InvalidConfig(_))
        ));
    }

    #[test]
    fn workspace_is_reusable_across_eps() {
        let k = cosine_affinity(32, 32, 6, 5);
        let mut s = Sinkhorn::new(32, 32);
        let first = s.solve(&k, 0.01, 200).unwrap();
        s.solve(&k, 0.5, 50).unwrap();
        let again = s.solve(&k, 0.01, 200).unwrap();
        assert_eq!(first.marginal_error, again.marginal_error);
    }
}
