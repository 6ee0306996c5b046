//! The one matrix product of the encoders' forward passes: row-major f32 on faer's gemm.
//!
//! Why not candle's matmul: on CPU candle multiplies through the `gemm` crate, whose AVX-512
//! kernels sit behind a feature candle does not enable, so it runs 8-wide AVX2 kernels. faer 0.24
//! picks AVX-512 kernels at run time on stable Rust; `sotalign bench encoders` prints both rates
//! side by side on the machine it runs on.
use faer::mat::{MatMut, MatRef};
use faer::{Accum, Par};

/// `dst (m x n) += a (m x k) * w^T`, every matrix row-major and dense; `w` is (n x k), i.e. a
/// layer's weight as PyTorch stores it (out features x in features). `dst` usually arrives
/// holding the bias (and, for residual layers, the skip input), so the epilogue costs nothing.
pub fn gemm_acc_bt(
    dst: &mut [f32],
    a: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
    par: Par,
) {
    debug_assert_eq!(dst.len(), m * n);
    debug_assert_eq!(a.len(), m * k);
    debug_assert_eq!(w.len(), n * k);
    if m == 0 || n == 0 {
        return;
    }
    let lhs = MatRef::from_row_major_slice(a, m, k);
    let rhs = MatRef::from_row_major_slice(w, n, k).transpose();
    let out = MatMut::from_row_major_slice_mut(dst, m, n);
    faer::linalg::matmul::matmul(out, Accum::Add, lhs, rhs, 1.0f32, par);
}

/// Fill a row-major (rows x bias.len()) buffer with `bias` in every row.
pub fn fill_rows(dst: &mut [f32], bias: &[f32]) {
    for row in dst.chunks_exact_mut(bias.len()) {
        row.copy_from_slice(bias);
    }
}

/// Add `bias` to every row of a row-major (rows x bias.len()) buffer.
pub fn add_rows(dst: &mut [f32], bias: &[f32]) {
    for row in dst.chunks_exact_mut(bias.len()) {
        for (d, b) in row.iter_mut().zip(bias) {
            *d += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_acc_bt_adds_product_to_bias() {
        // a (2x3), w (2x3): dst = bias + a w^T
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = [1.0, 0.0, -1.0, 0.5, 0.5, 0.5];
        let mut dst = vec![0.0; 4];
        fill_rows(&mut dst, &[10.0, 20.0]);
        gemm_acc_bt(&mut dst, &a, &w, (2, 3, 2), Par::Seq);
        assert_eq!(dst, vec![10.0 - 2.0, 20.0 + 3.0, 10.0 - 2.0, 20.0 + 7.5]);
    }
}
