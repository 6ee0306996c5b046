//! f64 linear-algebra helpers on top of faer 0.24, shared by the closed-form methods.
//!
//! Why f64: the closed-form methods (CCA teacher, CSA, Procrustes) invert covariance matrices
//! whose eigenvalues span several orders of magnitude; the independent reference does its linear
//! algebra in f64, and reproducing its retrieval counts exactly needs the same precision.
//! [`Matrix`] (f32) stays the interchange type; conversion happens here, at the edge.
use faer::{Mat, MatRef, Side};

use crate::{AlignError, Matrix};

/// Copy a [`Matrix`] into an f64 faer matrix.
pub fn to_faer(m: &Matrix) -> Mat<f64> {
    Mat::from_fn(m.rows, m.cols, |i, j| m.data[i * m.cols + j] as f64)
}

/// Copy a [`Matrix`] into f64 with every row scaled to unit L2 norm (zero rows stay zero).
///
/// Normalisation is done in f64 after widening, so it does not depend on f32 rounding.
pub fn to_faer_normalized(m: &Matrix) -> Mat<f64> {
    let mut out = to_faer(m);
    normalize_rows(&mut out);
    out
}

/// Round an f64 faer matrix to a [`Matrix`].
pub fn from_faer(m: MatRef<'_, f64>) -> Matrix {
    let (r, c) = (m.nrows(), m.ncols());
    let mut data = Vec::with_capacity(r * c);
    for i in 0..r {
        for j in 0..c {
            data.push(m[(i, j)] as f32);
        }
    }
    Matrix {
        rows: r,
        cols: c,
        data,
    }
}

/// Scale every row to unit L2 norm in place (zero rows stay zero).
///
/// Column by column (faer matrices are column-major), so every pass reads contiguous memory;
/// each row's sum of squares is still accumulated in column order, so the result is the same
/// bit for bit as the row-by-row loop.
pub fn normalize_rows(m: &mut Mat<f64>) {
    let mut s = vec![0.0f64; m.nrows()];
    for j in 0..m.ncols() {
        for (si, v) in s.iter_mut().zip(m.col_as_slice(j)) {
            *si += v * v;
        }
    }
    let inv: Vec<Option<f64>> = s
        .iter()
        .map(|&s| (s > 0.0).then(|| 1.0 / s.sqrt()))
        .collect();
    for j in 0..m.ncols() {
        for (v, k) in m.col_as_slice_mut(j).iter_mut().zip(&inv) {
            if let Some(k) = k {
                *v *= k;
            }
        }
    }
}

/// Column means of the rows of `a` then `b`, each row widened to f64 and scaled to unit L2 norm
/// first: `col_means_stacked(to_faer_normalized(a), to_faer_normalized(b))` bit for bit, without
/// materialising either normalised copy (the unpaired pools can be 100k rows).
pub fn normalized_col_means_stacked(a: &Matrix, b: &Matrix) -> Vec<f64> {
    let cols = a.cols;
    let mut sum = vec![0.0f64; cols];
    let mut row = vec![0.0f64; cols];
    let n = a.rows + b.rows;
    for r in (0..a.rows)
        .map(|i| a.row(i))
        .chain((0..b.rows).map(|i| b.row(i)))
    {
        let mut ss = 0.0f64;
        for (w, &v) in row.iter_mut().zip(r) {
            *w = v as f64;
            ss += *w * *w;
        }
        let inv = if ss > 0.0 { 1.0 / ss.sqrt() } else { 1.0 };
        for (acc, &w) in sum.iter_mut().zip(&row) {
            *acc += if ss > 0.0 { w * inv } else { w };
        }
    }
    if n > 0 {
        for v in &mut sum {
            *v /= n as f64;
        }
    }
    sum
}

/// Mean of each column (length `cols`). Empty input gives zeros.
pub fn col_means(m: MatRef<'_, f64>) -> Vec<f64> {
    let mut mean = vec![0.0; m.ncols()];
    if m.nrows() == 0 {
        return mean;
    }
    for j in 0..m.ncols() {
        let mut s = 0.0;
        for i in 0..m.nrows() {
            s += m[(i, j)];
        }
        mean[j] = s / m.nrows() as f64;
    }
    mean
}

/// Column means over the rows of two stacked matrices (same column count).
pub fn col_means_stacked(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Vec<f64> {
    let n = a.nrows() + b.nrows();
    let mut mean = vec![0.0; a.ncols()];
    if n == 0 {
        return mean;
    }
    for (j, mj) in mean.iter_mut().enumerate() {
        let mut s = 0.0;
        for i in 0..a.nrows() {
            s += a[(i, j)];
        }
        for i in 0..b.nrows() {
            s += b[(i, j)];
        }
        *mj = s / n as f64;
    }
    mean
}

/// Subtract `mean` from every row in place.
pub fn centre(m: &mut Mat<f64>, mean: &[f64]) {
    debug_assert_eq!(m.ncols(), mean.len());
    for j in 0..m.ncols() {
        let mu = mean[j];
        for i in 0..m.nrows() {
            m[(i, j)] -= mu;
        }
    }
}

/// Check that a feature matrix has `expected` columns and only finite entries.
pub fn check_input(m: &Matrix, expected_cols: usize, what: &str) -> Result<(), AlignError> {
    if m.cols != expected_cols {
        return Err(AlignError::DimensionMismatch {
            what: format!("{what} feature dimension"),
            expected: expected_cols,
            got: m.cols,
        });
    }
    m.check_finite(what)
}

/// Biased covariance `Z^T Z / n` of already-centred rows.
pub fn covariance(z: MatRef<'_, f64>) -> Mat<f64> {
    let n = z.nrows().max(1) as f64;
    let mut c = z.transpose() * z;
    c *= faer::Scale(1.0 / n);
    c
}

/// Trace of a square matrix.
pub fn trace(c: MatRef<'_, f64>) -> f64 {
    (0..c.nrows().min(c.ncols())).map(|i| c[(i, i)]).sum()
}

/// Add `ridge` to the diagonal in place.
pub fn add_ridge(c: &mut Mat<f64>, ridge: f64) {
    for i in 0..c.nrows().min(c.ncols()) {
        c[(i, i)] += ridge;
    }
}

/// `f(C)` for a symmetric matrix C: V diag(f(w)) V^T from the self-adjoint eigendecomposition.
///
/// Errors when the decomposition fails or `f` yields a non-finite value (e.g. an inverse root
/// of a non-positive eigenvalue): the caller is told which matrix was not positive definite.
pub fn sym_apply(
    c: MatRef<'_, f64>,
    what: &str,
    f: impl Fn(f64) -> f64,
) -> Result<Mat<f64>, AlignError> {
    let d = c.nrows();
    if c.ncols() != d {
        return Err(AlignError::DimensionMismatch {
            what: format!("{what}: square matrix columns"),
            expected: d,
            got: c.ncols(),
        });
    }
    let evd = c.self_adjoint_eigen(Side::Lower).map_err(|e| {
        AlignError::Numerical(format!("eigendecomposition of {what} failed: {e:?}"))
    })?;
    let v = evd.U();
    let w = evd.S().column_vector();
    let mut fw = Vec::with_capacity(d);
    for i in 0..d {
        let y = f(w[i]);
        if !y.is_finite() {
            return Err(AlignError::Numerical(format!(
                "{what} is not positive definite (eigenvalue {:e})",
                w[i]
            )));
        }
        fw.push(y);
    }
    // V diag(fw) V^T, built as (V diag(fw)) * V^T.
    let vs = Mat::from_fn(d, d, |i, j| v[(i, j)] * fw[j]);
    Ok(&vs * v.transpose())
}

/// Inverse square root of a symmetric positive-definite matrix.
pub fn sym_inv_sqrt(c: MatRef<'_, f64>, what: &str) -> Result<Mat<f64>, AlignError> {
    sym_apply(c, what, |w| if w > 0.0 { 1.0 / w.sqrt() } else { f64::NAN })
}

/// `(Z^T Z / n + ridge I)^-1/2` for centred rows Z (n x d), `ridge > 0`.
///
/// When n < d (few pairs, wide features: the usual case here) the covariance has rank < n and
/// the inverse root is computed from the thin SVD of Z, `Z = P S Q^T`:
/// `(Q diag(s^2/n) Q^T + ridge I)^-1/2 = ridge^-1/2 I + Q diag((s^2/n + ridge)^-1/2 - ridge^-1/2) Q^T`,
/// O(n^2 d + d^2 r) instead of the O(d^3) eigendecomposition (1280-d image features: ~10x
/// faster at n = 100). Otherwise the d x d covariance is eigendecomposed.
pub fn ridge_inv_sqrt(z: MatRef<'_, f64>, ridge: f64, what: &str) -> Result<Mat<f64>, AlignError> {
    let (n, d) = (z.nrows(), z.ncols());
    if !(ridge > 0.0 && ridge.is_finite()) {
        let mut c = covariance(z);
        add_ridge(&mut c, ridge);
        return sym_inv_sqrt(c.as_ref(), what);
    }
    if n >= d {
        let mut c = covariance(z);
        add_ridge(&mut c, ridge);
        return sym_inv_sqrt(c.as_ref(), what);
    }
    let svd = thin_svd(z, what)?;
    let base = 1.0 / ridge.sqrt();
    let nf = n.max(1) as f64;
    let r = svd.s.len();
    let qd = Mat::from_fn(d, r, |i, j| {
        svd.v[(i, j)] * (1.0 / (svd.s[j] * svd.s[j] / nf + ridge).sqrt() - base)
    });
    let mut out = &qd * svd.v.transpose();
    add_ridge(&mut out, base);
    Ok(out)
}

/// Thin SVD `A = U diag(S) V^T` with S non-increasing; U is rows x r, V is cols x r,
/// r = min(rows, cols).
pub struct ThinSvd {
    pub u: Mat<f64>,
    pub s: Vec<f64>,
    pub v: Mat<f64>,
}

/// Thin SVD of `a`; errors (never panics) when faer does not converge or `a` is not finite.
pub fn thin_svd(a: MatRef<'_, f64>, what: &str) -> Result<ThinSvd, AlignError> {
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            if !a[(i, j)].is_finite() {
                return Err(AlignError::Numerical(format!(
                    "{what} has non-finite entries"
                )));
            }
        }
    }
    let svd = a
        .thin_svd()
        .map_err(|e| AlignError::Numerical(format!("SVD of {what} failed: {e:?}")))?;
    let sv = svd.S().column_vector();
    let s: Vec<f64> = (0..sv.nrows()).map(|i| sv[i]).collect();
    if s.iter().any(|v| !v.is_finite()) {
        return Err(AlignError::Numerical(format!(
            "SVD of {what} returned non-finite singular values"
        )));
    }
    Ok(ThinSvd {
        u: svd.U().to_owned(),
        s,
        v: svd.V().to_owned(),
    })
}

/// Number of singular values above `rel_tol * s[0]` (s sorted non-increasing).
pub fn numerical_rank(s: &[f64], rel_tol: f64) -> usize {
    match s.first() {
        Some(&s0) if s0 > 0.0 => s.iter().take_while(|&&v| v > rel_tol * s0).count(),
        _ => 0,
    }
}

/// First `k` columns of `m`, owned.
pub fn first_cols(m: MatRef<'_, f64>, k: usize) -> Mat<f64> {
    m.subcols(0, k).to_owned()
}

/// Row-major f64 values of a matrix (for checkpoint export as f32 tensors).
pub fn vec_to_row(v: &[f64]) -> Matrix {
    Matrix {
        rows: 1,
        cols: v.len(),
        data: v.iter().map(|&x| x as f32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The column-order normalisation and the streamed pool means equal, bit for bit, the
    /// row-by-row normalisation and the means of the materialised copies (zero row included).
    #[test]
    fn streamed_normalisation_and_means_match_the_row_loop_bitwise() {
        let a = Matrix::from_vec(
            4,
            3,
            (0..12)
                .map(|i| ((i * 37 % 11) as f32 - 5.3) / 3.1)
                .collect(),
        )
        .unwrap();
        let mut b = Matrix::from_vec(
            3,
            3,
            (0..9).map(|i| ((i * 13 % 7) as f32) * 0.77 - 1.9).collect(),
        )
        .unwrap();
        b.data[3..6].fill(0.0);
        let rowwise = |m: &Matrix| {
            let mut out = to_faer(m);
            for i in 0..out.nrows() {
                let mut s = 0.0;
                for j in 0..out.ncols() {
                    s += out[(i, j)] * out[(i, j)];
                }
                if s > 0.0 {
                    let inv = 1.0 / s.sqrt();
                    for j in 0..out.ncols() {
                        out[(i, j)] *= inv;
                    }
                }
            }
            out
        };
        let (na, nb) = (to_faer_normalized(&a), to_faer_normalized(&b));
        for (m, r) in [(&na, rowwise(&a)), (&nb, rowwise(&b))] {
            for i in 0..m.nrows() {
                for j in 0..m.ncols() {
                    assert_eq!(m[(i, j)].to_bits(), r[(i, j)].to_bits());
                }
            }
        }
        let want = col_means_stacked(na.as_ref(), nb.as_ref());
        let got = normalized_col_means_stacked(&a, &b);
        assert_eq!(
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn inv_sqrt_squares_to_inverse() {
        // A fixed SPD matrix: B^T B + I.
        let b = Mat::from_fn(5, 4, |i, j| ((i * 7 + j * 3) % 5) as f64 - 2.0);
        let mut c = b.transpose() * &b;
        add_ridge(&mut c, 1.0);
        let r = sym_inv_sqrt(c.as_ref(), "c").unwrap();
        let prod = &r * &c * &r;
        for i in 0..4 {
            for j in 0..4 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (prod[(i, j)] - want).abs() < 1e-10,
                    "{i},{j}: {}",
                    prod[(i, j)]
                );
            }
        }
    }

    #[test]
    fn low_rank_inverse_root_equals_eigendecomposition() {
        // n = 4 < d = 7 takes the low-rank path; compare with the dense one.
        let z = Mat::from_fn(4, 7, |i, j| ((i * 5 + j * 3) % 7) as f64 / 7.0 - 0.4);
        let fast = ridge_inv_sqrt(z.as_ref(), 0.1, "z").unwrap();
        let mut c = covariance(z.as_ref());
        add_ridge(&mut c, 0.1);
        let dense = sym_inv_sqrt(c.as_ref(), "c").unwrap();
        for i in 0..7 {
            for j in 0..7 {
                assert!((fast[(i, j)] - dense[(i, j)]).abs() < 1e-12, "{i},{j}");
            }
        }
    }

    #[test]
    fn inv_sqrt_of_singular_is_typed_error() {
        let c = Mat::<f64>::zeros(3, 3);
        assert!(matches!(
            sym_inv_sqrt(c.as_ref(), "zero"),
            Err(AlignError::Numerical(_))
        ));
    }

    #[test]
    fn svd_reconstructs() {
        let a = Mat::from_fn(6, 3, |i, j| ((i + 1) as f64).powi(j as i32 + 1).sin());
        let svd = thin_svd(a.as_ref(), "a").unwrap();
        assert!(svd.s.windows(2).all(|w| w[0] >= w[1]));
        let us = Mat::from_fn(6, 3, |i, j| svd.u[(i, j)] * svd.s[j]);
        let back = &us * svd.v.transpose();
        for i in 0..6 {
            for j in 0..3 {
                assert!((back[(i, j)] - a[(i, j)]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn rank_counts_relative() {
        assert_eq!(numerical_rank(&[2.0, 1.0, 1e-7, 0.0], 1e-6), 2);
        assert_eq!(numerical_rank(&[0.0, 0.0], 1e-6), 0);
        assert_eq!(numerical_rank(&[], 1e-6), 0);
    }
}
