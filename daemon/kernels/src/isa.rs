//! Run-time CPU-feature dispatch for the hand-written elementwise loops.
/// Instruction sets the elementwise kernels are compiled for, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    Generic,
}

/// The best [`Isa`] this CPU runs (checked once; the answer never changes).
pub fn isa() -> Isa {
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
                match $crate::isa::isa() {
                    // SAFETY: isa() reported these features present on this CPU.
                    $crate::isa::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::isa::Isa::Avx2Fma => return unsafe { avx2($($arg),*) },
                    $crate::isa::Isa::Generic => {}
                }
            }
            $body::<false>($($arg),*)
        }
    };
}
pub(crate) use dispatch;

/// `acc + a * b`, one fused instruction where the CPU has FMA, else a plain multiply-add.
#[inline(always)]
pub fn madd<const FMA: bool>(a: f32, b: f32, acc: f32) -> f32 {
    if FMA { a.mul_add(b, acc) } else { acc + a * b }
}
