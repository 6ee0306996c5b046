//! The encoders' CPU hot loops, apart from everything that loads or serves them.
//!
//! - [`bert`]: BERT (all-MiniLM-L6-v2) forward to mean-pooled embeddings, unpadded.
//! - [`efficientnet`]: EfficientNet-Lite forward to pooled features, channels-last.
//! - [`resample`]: PIL-compatible alpha compositing and bicubic resizing, the image
//!   preprocessing the reference embeddings were made with.
//! - [`gemm`]: the one row-major matrix product they share (faer), and [`isa`]: run-time
//!   choice between AVX-512, AVX2+FMA and baseline builds of the elementwise loops.
//!
//! Why a crate of its own: the workspace's dev profile (the binaries README puts on PATH)
//! builds the big `sotalign` crate at opt-level 1 to keep its compile time down, and these
//! loops ran 2-4x slower there than in release. Dependencies and this crate build at
//! opt-level 3 in every profile (see the workspace Cargo.toml). Weights arrive as plain `Vec<f32>`
//! in PyTorch's layouts; loading them from checkpoints (candle, safetensors, .pth) is the
//! `sotalign` crate's job, and candle's models there stay the tested reference.
//!
//! Deliberately absent: any tensor library, any I/O, any device other than the CPU.
pub mod bert;
pub mod efficientnet;
pub mod gemm;
pub mod isa;
pub mod resample;

/// What a kernel refuses: shapes that do not fit the weights, ids outside the vocabulary.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{0}")]
    Shape(String),
    #[error("sequence of {len} tokens, the model has {max} positions")]
    TooLong { len: usize, max: usize },
    #[error("token id {id} outside the vocabulary ({vocab})")]
    Vocab { id: u32, vocab: usize },
}
