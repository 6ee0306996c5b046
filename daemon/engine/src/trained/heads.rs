//! Student heads: `LayerNorm(d_in) -> Linear(d_in -> D)`, one per modality.
//!
//! A plain struct with `load(vb)` + `forward`, in the style of candle-transformers' model
//! files. The LayerNorm is written with tensor ops (mean / variance over the last dimension,
//! learnable scale and shift) rather than candle-nn's fused kernel because that kernel has no
//! backward pass, and training needs gradients through the scale and shift.
//!
//! Initial weights ([`init_random`], [`init_from_teacher`]) are produced as plain tensors from a
//! seeded ChaCha RNG, so a fit is deterministic for a given seed regardless of candle's RNG.
use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use faer::Mat;
use faer::linalg::solvers::Solve;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::{AlignError, Matrix};

/// One modality's head.
#[derive(Debug, Clone)]
pub struct Head {
    pub ln_weight: Tensor,
    pub ln_bias: Tensor,
    /// `D x d_in` (PyTorch / candle Linear layout).
    pub weight: Tensor,
    pub bias: Tensor,
    pub ln_eps: f64,
}

/// Initial values of one head's parameters.
#[derive(Debug, Clone)]
pub struct HeadInitValues {
    pub ln_weight: Tensor,
    pub ln_bias: Tensor,
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Head {
    /// Names under `vb`: `ln.weight`, `ln.bias`, `linear.weight`, `linear.bias`.
    pub fn load(
        vb: VarBuilder,
        d_in: usize,
        d_out: usize,
        ln_eps: f64,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            ln_weight: vb.get(d_in, "ln.weight")?,
            ln_bias: vb.get(d_in, "ln.bias")?,
            weight: vb.get((d_out, d_in), "linear.weight")?,
            bias: vb.get(d_out, "linear.bias")?,
            ln_eps,
        })
    }

    pub fn d_in(&self) -> usize {
        self.ln_weight.dims1().unwrap_or(0)
    }

    pub fn d_out(&self) -> usize {
        self.bias.dims1().unwrap_or(0)
    }

    /// LayerNorm then Linear on `x` (rows x d_in).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_normalized(&standardize(x, self.ln_eps)?)
    }

    /// The head on rows already standardised by [`standardize`] (training precomputes that:
    /// the inputs are frozen features, so only the affine part of LayerNorm changes).
    pub fn forward_normalized(&self, xhat: &Tensor) -> candle_core::Result<Tensor> {
        let h = xhat
            .broadcast_mul(&self.ln_weight)?
            .broadcast_add(&self.ln_bias)?;
        h.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

/// LayerNorm without the affine part: each row to zero mean and unit variance (biased, + eps).
pub fn standardize(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)? as f64;
    let mean = (x.sum_keepdim(D::Minus1)? / d)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / d)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)
}

/// Row-wise L2 normalisation (with a tiny floor so a zero row stays finite).
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let n = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    x.broadcast_div(&n)
}

pub fn to_tensor(m: &Matrix, dev: &Device) -> Result<Tensor, AlignError> {
    Ok(Tensor::from_slice(&m.data, (m.rows, m.cols), dev)?)
}

pub fn to_matrix(t: &Tensor) -> Result<Matrix, AlignError> {
    let (r, c) = t.dims2()?;
    let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Matrix::from_vec(r, c, data)
}

fn unit_ln(d_in: usize, dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    Ok((
        Tensor::ones(d_in, DType::F32, dev)?,
        Tensor::zeros(d_in, DType::F32, dev)?,
    ))
}

/// Random init: `W ~ N(0, 1/d_in)`, zero bias, LayerNorm scale 1 and shift 0 (PROTOCOL.md).
pub fn init_random(
    d_in: usize,
    d_out: usize,
    seed: u64,
    dev: &Device,
) -> Result<HeadInitValues, AlignError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, (1.0 / d_in as f32).sqrt())
        .map_err(|e| AlignError::InvalidConfig(format!("head init: {e}")))?;
    let w: Vec<f32> = (0..d_out * d_in).map(|_| normal.sample(&mut rng)).collect();
    let (ln_weight, ln_bias) = unit_ln(d_in, dev)?;
    Ok(HeadInitValues {
        ln_weight,
        ln_bias,
        weight: Tensor::from_vec(w, (d_out, d_in), dev)?,
        bias: Tensor::zeros(d_out, DType::F32, dev)?,
    })
}

/// Teacher init (PROTOCOL.md): a ridge least-squares fit, with intercept, of the standardised
/// inputs `LN(x)` (rows of `pool`, already L2-normalised) onto the first `min(k, D)` columns of
/// the teacher's canonical coordinates `coords` (same rows), then rescaled so the fitted weights
/// have RMS `1/sqrt(d_in)` (the scale of the random init, so the optimiser's step sizes mean
/// the same in both cases). The remaining `D - k` output rows start at zero: the student is free
/// to use them, the teacher says nothing about them. The ridge is `1e-3 * tr(G) / d_in` with `G`
/// the centred Gram matrix of `LN(x)`, a scale-free amount that only guards against rank
/// deficiency (the pool may have fewer rows than `d_in`).
///
/// Cosine scores are invariant to the common rescaling, so the initial student reproduces the
/// linear least-squares image of the teacher's space.
pub fn init_from_teacher(
    pool: &Matrix,
    coords: &Matrix,
    d_out: usize,
    ln_eps: f64,
    dev: &Device,
) -> Result<HeadInitValues, AlignError> {
    if coords.rows != pool.rows {
        return Err(AlignError::DimensionMismatch {
            what: "teacher coordinates rows (must equal the pool rows)".into(),
            expected: pool.rows,
            got: coords.rows,
        });
    }
    let mut acc = TeacherInitAccum::new(pool.cols, coords.cols.min(d_out), ln_eps);
    acc.add(pool, coords)?;
    acc.finish(d_out, dev)
}

/// The sufficient statistics of [`init_from_teacher`]'s least squares (row count, sums, `X^T X`,
/// `X^T Y` in f64), accumulated chunk by chunk. Why: the pool is every paired and unpaired row;
/// materialising it (stacked, normalised, standardised, centred in f64) cost about 40 KB per
/// 1280-d row, 12 GB at 300k images (`sotalign bench scaling`). Accumulating keeps the memory at
/// O(d_in^2) whatever the pool size. Centring uses `X^T X - n m m^T` in f64, exact enough for
/// standardised rows (entries O(1), means O(1/sqrt(d_in))).
pub struct TeacherInitAccum {
    n: usize,
    kk: usize,
    ln_eps: f64,
    sx: Vec<f64>,
    sy: Vec<f64>,
    xtx: Mat<f64>,
    xty: Mat<f64>,
}

impl TeacherInitAccum {
    /// `kk` = teacher coordinates used (`min(k, D)`).
    pub fn new(d_in: usize, kk: usize, ln_eps: f64) -> Self {
        Self {
            n: 0,
            kk,
            ln_eps,
            sx: vec![0.0; d_in],
            sy: vec![0.0; kk],
            xtx: Mat::zeros(d_in, d_in),
            xty: Mat::zeros(d_in, kk),
        }
    }

    /// Add rows: `x` raw features (L2-normalised then standardised here, as the head's input
    /// is), `coords` the teacher's canonical coordinates of the same rows.
    pub fn add(&mut self, x: &Matrix, coords: &Matrix) -> Result<(), AlignError> {
        let d_in = self.sx.len();
        if x.cols != d_in || coords.rows != x.rows || coords.cols < self.kk {
            return Err(AlignError::DimensionMismatch {
                what: "teacher init chunk (features x coordinates)".into(),
                expected: d_in,
                got: x.cols,
            });
        }
        let (rows, kk) = (x.rows, self.kk);
        let mut xhat = Mat::<f64>::zeros(rows, d_in);
        for r in 0..rows {
            let row = x.row(r);
            let norm = row
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt();
            let inv = if norm > 0.0 { 1.0 / norm } else { 1.0 };
            // The f32 rounding of the normalised row matches what the head sees at train time.
            let v: Vec<f64> = row
                .iter()
                .map(|&a| ((a as f64 * inv) as f32) as f64)
                .collect();
            let mean = v.iter().sum::<f64>() / d_in as f64;
            let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / d_in as f64;
            let sd = (var + self.ln_eps).sqrt();
            for (j, a) in v.iter().enumerate() {
                let z = ((a - mean) / sd) as f32 as f64;
                xhat[(r, j)] = z;
                self.sx[j] += z;
            }
        }
        let y = Mat::<f64>::from_fn(rows, kk, |i, j| coords.data[i * coords.cols + j] as f64);
        for i in 0..rows {
            for j in 0..kk {
                self.sy[j] += y[(i, j)];
            }
        }
        self.xtx += xhat.transpose() * &xhat;
        self.xty += xhat.transpose() * &y;
        self.n += rows;
        Ok(())
    }

    /// Solve the ridge least squares and build the head's initial values.
    pub fn finish(self, d_out: usize, dev: &Device) -> Result<HeadInitValues, AlignError> {
        let (n, kk, d_in) = (self.n, self.kk, self.sx.len());
        if n < 2 {
            return Err(AlignError::NotEnoughData(
                "teacher init needs at least 2 rows".into(),
            ));
        }
        let nf = n as f64;
        let mx: Vec<f64> = self.sx.iter().map(|s| s / nf).collect();
        let my: Vec<f64> = self.sy.iter().map(|s| s / nf).collect();
        let mut gram =
            Mat::<f64>::from_fn(d_in, d_in, |i, j| self.xtx[(i, j)] - nf * mx[i] * mx[j]);
        let rhs = Mat::<f64>::from_fn(d_in, kk, |i, j| self.xty[(i, j)] - nf * mx[i] * my[j]);
        let trace: f64 = (0..d_in).map(|i| gram[(i, i)]).sum();
        let ridge = 1e-3 * trace / d_in as f64 + 1e-12;
        for i in 0..d_in {
            gram[(i, i)] += ridge;
        }
        let llt = gram
            .llt(faer::Side::Lower)
            .map_err(|e| AlignError::Numerical(format!("teacher init: Cholesky failed: {e:?}")))?;
        let w = llt.solve(&rhs); // d_in x kk
        let mut ss = 0.0f64;
        for j in 0..kk {
            for i in 0..d_in {
                ss += w[(i, j)] * w[(i, j)];
            }
        }
        let rms = (ss / (d_in * kk).max(1) as f64).sqrt();
        if !(rms.is_finite() && rms > 0.0) {
            return Err(AlignError::Numerical(
                "teacher init: least-squares weights are zero or non-finite".into(),
            ));
        }
        let scale = (1.0 / (d_in as f64).sqrt()) / rms;
        let mut weight = vec![0f32; d_out * d_in];
        let mut bias = vec![0f32; d_out];
        for r in 0..kk {
            let mut b = my[r];
            for i in 0..d_in {
                weight[r * d_in + i] = (w[(i, r)] * scale) as f32;
                b -= mx[i] * w[(i, r)];
            }
            bias[r] = (b * scale) as f32;
        }
        let (ln_weight, ln_bias) = unit_ln(d_in, dev)?;
        Ok(HeadInitValues {
            ln_weight,
            ln_bias,
            weight: Tensor::from_vec(weight, (d_out, d_in), dev)?,
            bias: Tensor::from_vec(bias, d_out, dev)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn layer_norm_matches_direct_computation() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1.0f32, 2.0, 4.0, -1.0], [0.5, 0.5, 0.5, 2.0]], &dev).unwrap();
        let y = standardize(&x, 1e-5).unwrap().to_vec2::<f32>().unwrap();
        for (row, out) in [[1.0f64, 2.0, 4.0, -1.0], [0.5, 0.5, 0.5, 2.0]]
            .iter()
            .zip(&y)
        {
            let m = row.iter().sum::<f64>() / 4.0;
            let v = row.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / 4.0;
            for (a, o) in row.iter().zip(out) {
                assert!(((a - m) / (v + 1e-5).sqrt() - *o as f64).abs() < 1e-5);
            }
        }
    }

    /// When the teacher coordinates are an exact affine function of LN(x), the init reproduces
    /// them up to the common scale: cosine similarity of outputs and targets is ~1 per row.
    #[test]
    fn streamed_teacher_init_equals_one_shot() {
        // Chunked accumulation (what fit_student does over pairs + pool) must give the same
        // head as one pass over the stacked rows, up to f64 summation order.
        let dev = Device::Cpu;
        let (n, d_in, k, d_out) = (257, 12, 5, 7);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut draw = |r: usize, c: usize| {
            Matrix::from_vec(
                r,
                c,
                (0..r * c).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
            )
            .unwrap()
        };
        let x = draw(n, d_in);
        let y = draw(n, k);
        let one = init_from_teacher(&x, &y, d_out, 1e-5, &dev).unwrap();
        let mut acc = TeacherInitAccum::new(d_in, k, 1e-5);
        for (lo, hi) in [(0, 100), (100, 101), (101, n)] {
            let idx: Vec<usize> = (lo..hi).collect();
            acc.add(&x.select_rows(&idx), &y.select_rows(&idx)).unwrap();
        }
        let two = acc.finish(d_out, &dev).unwrap();
        let a = one.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = two.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let max = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-5, "weights differ by {max}");
        let a = one.bias.to_vec1::<f32>().unwrap();
        let b = two.bias.to_vec1::<f32>().unwrap();
        let max = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-5, "biases differ by {max}");
        // Rows of a wrong width are refused, not mixed in.
        let mut acc = TeacherInitAccum::new(d_in, k, 1e-5);
        assert!(acc.add(&draw(3, d_in + 1), &draw(3, k)).is_err());
    }

    #[test]
    fn teacher_init_recovers_an_affine_target() {
        let dev = Device::Cpu;
        let (n, d_in, k, d_out) = (300, 20, 6, 8);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let pool = Matrix::from_vec(
            n,
            d_in,
            (0..n * d_in)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect(),
        )
        .unwrap()
        .l2_normalized();
        let xhat =
            to_matrix(&standardize(&to_tensor(&pool, &dev).unwrap(), 1e-5).unwrap()).unwrap();
        let a: Vec<f32> = (0..d_in * k)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let mut coords = Matrix::zeros(n, k);
        for r in 0..n {
            for c in 0..k {
                coords.data[r * k + c] = 0.3
                    + (0..d_in)
                        .map(|i| xhat.data[r * d_in + i] * a[i * k + c])
                        .sum::<f32>();
            }
        }
        let init = init_from_teacher(&pool, &coords, d_out, 1e-5, &dev).unwrap();
        let w = init.weight.to_vec2::<f32>().unwrap();
        let rms = (w[..k]
            .iter()
            .flatten()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            / (k * d_in) as f64)
            .sqrt();
        assert!((rms - 1.0 / (d_in as f64).sqrt()).abs() < 1e-4, "rms {rms}");
        assert!(w[k..].iter().flatten().all(|v| *v == 0.0));
        let head = Head {
            ln_weight: init.ln_weight,
            ln_bias: init.ln_bias,
            weight: init.weight,
            bias: init.bias,
            ln_eps: 1e-5,
        };
        let out = to_matrix(&head.forward(&to_tensor(&pool, &dev).unwrap()).unwrap()).unwrap();
        for r in 0..n {
            let o = &out.row(r)[..k];
            let t = coords.row(r);
            let dot: f32 = o.iter().zip(t).map(|(a, b)| a * b).sum();
            let cos = dot
                / (o.iter().map(|a| a * a).sum::<f32>().sqrt()
                    * t.iter().map(|a| a * a).sum::<f32>().sqrt());
            assert!(cos > 0.999, "row {r}: cos {cos}");
        }
    }
}
