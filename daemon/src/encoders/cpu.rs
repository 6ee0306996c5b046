//! Shared pieces of the encoders' CPU fast paths ([`super::efficientnet_cpu`],
//! [`super::bert_cpu`]): one row-major f32 matrix product on faer's gemm, and runtime CPU-feature
//! dispatch for the hand-written elementwise kernels.
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
pub(crate) fn gemm_acc_bt(
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
pub(crate) fn fill_rows(dst: &mut [f32], bias: &[f32]) {
    for row in dst.chunks_exact_mut(bias.len()) {
        row.copy_from_slice(bias);
    }
}

/// Instruction sets the elementwise kernels are compiled for, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    Generic,
}

/// The best [`Isa`] this CPU runs (checked once; the answer never changes).
pub(crate) fn isa() -> Isa {
    use std::sync::OnceLock;
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2Fma;
            }
        }
        Isa::Generic
    })
}

/// Compile one `#[inline(always)]` kernel body three times (AVX-512, AVX2+FMA, baseline) and
/// call the best one for this CPU. The release build targets baseline x86-64 (SSE2), so without
/// this the autovectoriser would stay 4 lanes wide. `$fma` tells the body whether `mul_add` is a
/// single instruction (it is a slow library call without FMA hardware).
macro_rules! dispatch {
    (fn $name:ident($($arg:ident : $ty:ty),* $(,)?) => $body:ident) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) {
                    $body::<true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $body::<true>($($arg),*)
                }
                match $crate::encoders::cpu::isa() {
                    // SAFETY: isa() reported these features present on this CPU.
                    $crate::encoders::cpu::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::encoders::cpu::Isa::Avx2Fma => return unsafe { avx2($($arg),*) },
                    $crate::encoders::cpu::Isa::Generic => {}
                }
            }
            $body::<false>($($arg),*)
        }
    };
}
pub(crate) use dispatch;

/// `acc + a * b`, one fused instruction where the CPU has FMA, else a plain multiply-add.
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, acc: f32) -> f32 {
    if FMA { a.mul_add(b, acc) } else { acc + a * b }
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
