//! The image encoder front end: file -> pixels -> backbone -> feature rows, with per-item errors.
//!
//! Decoding and preprocessing run in parallel (rayon) per batch; the backbone then sees one
//! (b, 3, 224, 224) tensor. A file that cannot be read or decoded is skipped and named in the
//! [`Report`]; it never aborts the batch.
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::efficientnet::EfficientNetLite;
use super::hf_vision::{self, HfVisionModel};
use super::preprocess::{self, Normalize, Rgb8};
use super::{EncoderError, Report, Skipped};
use sotalign_engine::Matrix;
use sotalign_kernels::efficientnet::EfficientNetLite as EfficientNetLiteCpu;

/// Which backbone an [`ImageEncoder`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageModelKind {
    /// EfficientNet-Lite from a legacy `.pth` (default: Lite0, 1280-d).
    EfficientNetLite,
    /// CLIP vision tower from an HF-format directory.
    ClipVision,
    /// DINOv2 (ViT-S/B/L) from an HF-format directory.
    Dinov2,
}

enum Backbone {
    /// The candle model (any device), plus its channels-last twin when the device is the CPU.
    EfficientNet(EfficientNetLite, Option<EfficientNetLiteCpu>),
    Hf(HfVisionModel),
}

pub struct ImageEncoder {
    backbone: Backbone,
    device: Device,
    id: String,
    dim: usize,
}

impl ImageEncoder {
    /// Load EfficientNet-Lite weights from a legacy PyTorch `.pth` file.
    pub fn load_efficientnet(pth: &Path, device: &Device) -> Result<Self, EncoderError> {
        if !pth.is_file() {
            return Err(EncoderError::MissingFile(pth.to_path_buf()));
        }
        let tensors = super::pth::load_legacy(pth, device)?;
        let vb = VarBuilder::from_tensors(tensors, candle_core::DType::F32, device);
        let model = EfficientNetLite::load(vb)?;
        let fast = if device.is_cpu() {
            Some(super::efficientnet_cpu::from_model(&model)?)
        } else {
            None
        };
        let dim = model.feature_dim();
        let stem = pth
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = format!("image:{stem}:{}", super::file_digest(pth)?);
        Ok(Self {
            backbone: Backbone::EfficientNet(model, fast),
            device: device.clone(),
            id,
            dim,
        })
    }

    /// Load CLIP-vision or DINOv2 from an HF-format directory.
    pub fn load_hf(dir: &Path, device: &Device) -> Result<Self, EncoderError> {
        let m = hf_vision::load_dir(dir, device)?;
        let name = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = format!(
            "image:{}-{name}:{}",
            m.family,
            super::file_digest(&dir.join("model.safetensors"))?
        );
        Ok(Self {
            dim: m.dim,
            backbone: Backbone::Hf(m),
            device: device.clone(),
            id,
        })
    }

    /// Load any supported image model: a file is an EfficientNet-Lite legacy `.pth`, a directory
    /// an HF-format CLIP-vision or DINOv2 checkpoint.
    pub fn load(path: &Path, device: &Device) -> Result<Self, EncoderError> {
        if path.is_dir() {
            Self::load_hf(path, device)
        } else {
            Self::load_efficientnet(path, device)
        }
    }

    pub fn kind(&self) -> ImageModelKind {
        match &self.backbone {
            Backbone::EfficientNet(..) => ImageModelKind::EfficientNetLite,
            Backbone::Hf(m) if m.family == "clip" => ImageModelKind::ClipVision,
            Backbone::Hf(_) => ImageModelKind::Dinov2,
        }
    }

    /// Multiply-accumulates per image (EfficientNet only; None for other backbones).
    pub fn macs_per_image(&self) -> Option<u64> {
        match &self.backbone {
            Backbone::EfficientNet(m, _) => Some(m.macs(self.input_size())),
            Backbone::Hf(_) => None,
        }
    }

    /// Side of the square network input.
    pub fn input_size(&self) -> usize {
        match &self.backbone {
            Backbone::EfficientNet(..) => preprocess::CROP,
            Backbone::Hf(m) => m.preprocessing.crop,
        }
    }

    /// Cache key: model name plus a digest of its weights.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Network input (CHW f32) for one decoded image, with this backbone's preprocessing.
    pub fn preprocess(&self, img: &Rgb8) -> Vec<f32> {
        match &self.backbone {
            Backbone::EfficientNet(..) => preprocess::to_network_input(img),
            Backbone::Hf(m) => {
                let p = &m.preprocessing;
                preprocess::to_input(
                    img,
                    p.resize,
                    p.crop,
                    Normalize::MeanStd {
                        mean: p.mean,
                        std: p.std,
                    },
                )
            }
        }
    }

    fn batch_tensor(&self, inputs: &[Vec<f32>]) -> Result<Tensor, EncoderError> {
        let n = inputs.len();
        let s = self.input_size();
        let mut flat = Vec::with_capacity(n * 3 * s * s);
        for x in inputs {
            flat.extend_from_slice(x);
        }
        Ok(Tensor::from_vec(flat, (n, 3, s, s), &self.device)?)
    }

    /// Whether features come from the channels-last CPU implementation (EfficientNet on the
    /// CPU) rather than the candle model.
    pub fn uses_cpu_fast_path(&self) -> bool {
        matches!(&self.backbone, Backbone::EfficientNet(_, Some(_)))
    }

    /// Features for already-preprocessed inputs, one row per input.
    pub fn encode_inputs(&self, inputs: &[Vec<f32>]) -> Result<Matrix, EncoderError> {
        if let Backbone::EfficientNet(_, Some(fast)) = &self.backbone {
            let s = self.input_size();
            let mut flat = Vec::with_capacity(inputs.len() * 3 * s * s);
            for x in inputs {
                if x.len() != 3 * s * s {
                    return Err(EncoderError::Device(format!(
                        "image input of {} values, expected 3x{s}x{s}",
                        x.len()
                    )));
                }
                flat.extend_from_slice(x);
            }
            let data = fast.features(&flat, inputs.len(), s)?;
            return Matrix::from_vec(inputs.len(), self.dim, data)
                .map_err(|e| EncoderError::Device(e.to_string()));
        }
        self.encode_inputs_candle(inputs)
    }

    /// Features through the candle model whatever the device (the reference for the CPU fast
    /// path, and what `bench encoders` times it against).
    pub fn encode_inputs_candle(&self, inputs: &[Vec<f32>]) -> Result<Matrix, EncoderError> {
        if inputs.is_empty() {
            return Ok(Matrix::zeros(0, self.dim));
        }
        let x = self.batch_tensor(inputs)?;
        let f = match &self.backbone {
            Backbone::EfficientNet(m, _) => m.features(&x)?,
            Backbone::Hf(m) => m.features(&x)?,
        };
        let data = f.flatten_all()?.to_vec1::<f32>()?;
        Matrix::from_vec(inputs.len(), self.dim, data)
            .map_err(|e| EncoderError::Device(e.to_string()))
    }

    /// ImageNet logits (n, classes) for preprocessed inputs (EfficientNet only).
    pub fn classify_inputs(&self, inputs: &[Vec<f32>]) -> Result<Matrix, EncoderError> {
        let Backbone::EfficientNet(m, _) = &self.backbone else {
            return Err(EncoderError::Device(
                "ImageNet logits exist only for EfficientNet".into(),
            ));
        };
        let x = self.batch_tensor(inputs)?;
        let (_, logits) = m.forward(&x)?;
        let classes = logits.dim(1)?;
        let data = logits.flatten_all()?.to_vec1::<f32>()?;
        Matrix::from_vec(inputs.len(), classes, data)
            .map_err(|e| EncoderError::Device(e.to_string()))
    }

    /// Decode + preprocess one file.
    pub fn load_input(&self, path: &Path) -> Result<Vec<f32>, EncoderError> {
        let img = preprocess::load_rgb(path)?;
        Ok(self.preprocess(&img))
    }

    /// Encode image files in batches; unreadable or undecodable files are skipped and reported.
    pub fn encode_paths(
        &self,
        paths: &[PathBuf],
        batch: usize,
    ) -> Result<(Matrix, Report), EncoderError> {
        self.encode_paths_with_progress(paths, batch, &mut |_| {})
    }

    /// As [`Self::encode_paths`], calling `progress(n_done)` after each batch.
    pub fn encode_paths_with_progress(
        &self,
        paths: &[PathBuf],
        batch: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<(Matrix, Report), EncoderError> {
        let batch = batch.max(1);
        let mut report = Report {
            total: paths.len(),
            ..Default::default()
        };
        let mut data = Vec::with_capacity(paths.len() * self.dim);
        let mut done = 0;
        for (c, chunk) in paths.chunks(batch).enumerate() {
            let loaded: Vec<Result<Vec<f32>, EncoderError>> =
                chunk.par_iter().map(|p| self.load_input(p)).collect();
            let mut inputs = Vec::with_capacity(chunk.len());
            for (k, r) in loaded.into_iter().enumerate() {
                let index = c * batch + k;
                match r {
                    Ok(x) => {
                        inputs.push(x);
                        report.kept.push(index);
                    }
                    Err(e) => report.skipped.push(Skipped {
                        index,
                        item: chunk[k].display().to_string(),
                        reason: e.to_string(),
                    }),
                }
            }
            let m = self.encode_inputs(&inputs)?;
            data.extend_from_slice(&m.data);
            done += chunk.len();
            progress(done);
        }
        let rows = report.kept.len();
        let m = Matrix::from_vec(rows, self.dim, data)
            .map_err(|e| EncoderError::Device(e.to_string()))?;
        Ok((m, report))
    }
}
