//! Frozen pretrained encoders (inference only) and the pieces they need.
//!
//! - [`text`]: BERT-family sentence embeddings (all-MiniLM-L6-v2 by default): the
//!   `sotalign-kernels` BERT on the CPU (weights loaded by [`bert_cpu`]), candle-transformers'
//!   BERT on other devices.
//! - [`image`]: the image encoder front end: decoding, preprocessing, batching, per-item errors;
//!   backbones are [`efficientnet`] (our own module, default; [`efficientnet_cpu`] builds its
//!   channels-last CPU twin in `sotalign-kernels`) and [`hf_vision`] (DINOv2 and CLIP-vision from HF-format
//!   directories, through candle-transformers).
//! - [`pth`]: reader for PyTorch's legacy `.pth` format, which the EfficientNet weights use.
//! - [`preprocess`]: decoding and pixel caps; the PIL-compatible composite / bicubic resize /
//!   crop arithmetic is `sotalign_kernels::resample`, re-exported there.
//! - [`device`]: `--device cpu|cuda[:N]`.
//!
//! Invariants: encoders never mutate their weights; every public entry point returns a typed
//! [`EncoderError`] for bad files instead of panicking; rows of every returned [`Matrix`] are in
//! input order, and a skipped item is always named in a [`Report`].
pub mod bert_cpu;
pub mod efficientnet;
pub mod efficientnet_cpu;
pub mod hf_vision;
pub mod image;
pub mod preprocess;
pub mod pth;
pub mod text;

use std::path::{Path, PathBuf};

/// Parse `--device` (the engine owns the one parser), as an encoder error.
pub fn parse_device(spec: &str) -> Result<candle_core::Device, EncoderError> {
    sotalign_engine::device::parse_device(spec).map_err(|e| EncoderError::Device(e.to_string()))
}
pub use image::{ImageEncoder, ImageModelKind};
pub use text::{TextBackend, TextEncoder};

pub use sotalign_engine::Matrix;

#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "model file missing: {0} (run `sotalign fetch`, or point --image-model/--text-model at a complete directory)"
    )]
    MissingFile(PathBuf),
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("legacy .pth: {0}")]
    Pth(#[from] pth::PthError),
    #[error("image: {0}")]
    Image(#[from] preprocess::ImageError),
    #[error("device: {0}")]
    Device(String),
    #[error("tensor backend: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("CPU kernel: {0}")]
    Kernel(#[from] sotalign_kernels::KernelError),
}

/// A tensor's values as a flat host vector (any device, any shape, row-major): how the CPU
/// kernels and the depthwise layer take candle-loaded weights.
pub(crate) fn host_f32(t: &candle_core::Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?
        .to_device(&candle_core::Device::Cpu)?
        .to_vec1::<f32>()
}

impl EncoderError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Short content digest of a file (first 16 hex chars of its sha256): part of model ids, so a
/// cache never mixes embeddings from different weights.
pub fn file_digest(path: &Path) -> Result<String, EncoderError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| EncoderError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| EncoderError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let d = h.finalize();
    Ok(d.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// One skipped input and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Skipped {
    /// Index in the caller's input list.
    pub index: usize,
    /// The item as the user knows it (path, or line number and text).
    pub item: String,
    pub reason: String,
}

/// What happened to each input of an encoding run: which rows were produced, which skipped.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Report {
    pub total: usize,
    /// Input indices of the produced rows, in row order.
    pub kept: Vec<usize>,
    pub skipped: Vec<Skipped>,
}

impl Report {
    /// "785 encoded, 3 skipped: a.png (cannot decode ...), ..." with at most `examples` reasons.
    pub fn summary(&self, examples: usize) -> String {
        let mut s = format!(
            "{} of {} encoded, {} skipped",
            self.kept.len(),
            self.total,
            self.skipped.len()
        );
        if !self.skipped.is_empty() {
            let ex: Vec<String> = self
                .skipped
                .iter()
                .take(examples)
                .map(|k| format!("{} ({})", k.item, k.reason))
                .collect();
            s.push_str(": ");
            s.push_str(&ex.join("; "));
            if self.skipped.len() > examples {
                s.push_str(&format!("; ... and {} more", self.skipped.len() - examples));
            }
        }
        s
    }
}
