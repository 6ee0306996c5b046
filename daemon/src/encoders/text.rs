//! Sentence embeddings from a BERT-family model in an HF-format directory
//! (`config.json`, `model.safetensors`, `tokenizer.json`, optionally
//! `sentence_bert_config.json`), e.g. all-MiniLM-L6-v2.
//!
//! Embedding = mean of the last hidden states over the real (unpadded) tokens, [CLS] and [SEP]
//! included, as sentence-transformers computes it; optionally L2-normalised. Texts are sorted by
//! token length before batching so padding stays small, and the rows are returned in input order.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use rayon::prelude::*;
use tokenizers::{Tokenizer, TruncationParams};

use super::EncoderError;
use sotalign_engine::Matrix;
use sotalign_kernels::bert::Bert;

/// Default truncation when the directory has no `sentence_bert_config.json`.
const DEFAULT_MAX_SEQ: usize = 256;

/// Which implementation runs the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextBackend {
    /// The kernel BERT ([`Bert`]) on the CPU, candle-transformers' BERT on any other device.
    Auto,
    /// candle-transformers' BERT whatever the device (the reference; `bench encoders` times it).
    Candle,
}

enum Model {
    Candle(BertModel),
    Cpu(Bert),
}

pub struct TextEncoder {
    model: Model,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
    max_seq: usize,
    id: String,
}

/// `dir/name`, which must be a file.
fn need(dir: &Path, name: &str) -> Result<PathBuf, EncoderError> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(EncoderError::MissingFile(p))
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, EncoderError> {
    let s = std::fs::read_to_string(path).map_err(|e| EncoderError::io(path, e))?;
    serde_json::from_str(&s).map_err(|e| EncoderError::Format {
        path: path.to_path_buf(),
        what: e.to_string(),
    })
}

impl TextEncoder {
    /// Load from an HF-format directory. The model id (cache key) includes a hash of the weights.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EncoderError> {
        Self::load_backend(dir, device, TextBackend::Auto)
    }

    /// As [`Self::load`], choosing the implementation.
    pub fn load_backend(
        dir: &Path,
        device: &Device,
        backend: TextBackend,
    ) -> Result<Self, EncoderError> {
        let weights = need(dir, "model.safetensors")?;
        // SAFETY: the file is memory-mapped read-only; it must not be modified while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device)? };
        let id = format!("text:{}:{}", dir_name(dir), super::file_digest(&weights)?);
        Self::load_with(dir, vb, id, device, backend)
    }

    /// The directory's architecture and tokenizer with every weight zero: the same work per
    /// text as the real model (a dense network's time does not depend on its weights' values),
    /// for timing where the weights cannot be taken (`bench encoders --text-weights zeros` on a
    /// machine without the 90 MB file). Its embeddings mean nothing.
    pub fn load_zero_weights(dir: &Path, device: &Device) -> Result<Self, EncoderError> {
        Self::load_zero_weights_backend(dir, device, TextBackend::Auto)
    }

    /// As [`Self::load_zero_weights`], choosing the implementation.
    pub fn load_zero_weights_backend(
        dir: &Path,
        device: &Device,
        backend: TextBackend,
    ) -> Result<Self, EncoderError> {
        let vb = VarBuilder::zeros(DType::F32, device);
        let id = format!("text:{}:zeros", dir_name(dir));
        Self::load_with(dir, vb, id, device, backend)
    }

    fn load_with(
        dir: &Path,
        vb: VarBuilder,
        id: String,
        device: &Device,
        backend: TextBackend,
    ) -> Result<Self, EncoderError> {
        let config_path = need(dir, "config.json")?;
        let tok_path = need(dir, "tokenizer.json")?;
        let config: Config =
            serde_json::from_value(read_json(&config_path)?).map_err(|e| EncoderError::Format {
                path: config_path.clone(),
                what: e.to_string(),
            })?;
        let max_seq = match read_json(&dir.join("sentence_bert_config.json")) {
            Ok(v) => v
                .get("max_seq_length")
                .and_then(|m| m.as_u64())
                .map(|m| m as usize)
                .unwrap_or(DEFAULT_MAX_SEQ),
            Err(_) => DEFAULT_MAX_SEQ,
        }
        .min(config.max_position_embeddings);
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| EncoderError::Format {
            path: tok_path.clone(),
            what: e.to_string(),
        })?;
        // tokenizer.json of sentence-transformers models often pins padding/truncation to 128;
        // the model's real limit is max_seq_length, and we pad per batch ourselves.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq,
                ..Default::default()
            }))
            .map_err(|e| EncoderError::Format {
                path: tok_path.clone(),
                what: e.to_string(),
            })?;
        tokenizer.with_padding(None);
        let model = if device.is_cpu() && backend == TextBackend::Auto {
            Model::Cpu(super::bert_cpu::load(vb, &config)?)
        } else {
            Model::Candle(BertModel::load(vb, &config)?)
        };
        Ok(Self {
            model,
            tokenizer,
            device: device.clone(),
            dim: config.hidden_size,
            max_seq,
            id,
        })
    }

    /// Cache key of this model: name plus a digest of its weights.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn max_seq(&self) -> usize {
        self.max_seq
    }

    /// Token ids as the model sees them (with [CLS]/[SEP], truncated).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, EncoderError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Embed texts in batches of `batch`; rows in input order. `normalize` L2-normalises rows.
    pub fn encode(
        &self,
        texts: &[&str],
        batch: usize,
        normalize: bool,
    ) -> Result<Matrix, EncoderError> {
        self.encode_with_progress(texts, batch, normalize, &mut |_| {})
    }

    /// As [`Self::encode`], calling `progress(n_done)` after every batch.
    pub fn encode_with_progress(
        &self,
        texts: &[&str],
        batch: usize,
        normalize: bool,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Matrix, EncoderError> {
        let batch = batch.max(1);
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.token_ids(t))
            .collect::<Result<_, _>>()?;
        // Sort by length so each batch pads to a similar length.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out = Matrix::zeros(texts.len(), self.dim);
        let mut done = 0;
        let chunks: Vec<&[usize]> = order.chunks(batch).collect();
        let threads = rayon::current_num_threads();
        if let (Model::Cpu(m), true) = (&self.model, threads > 1 && chunks.len() > 1) {
            // Batches are independent: run several at once, each whole on one worker with
            // single-threaded products, handed out dynamically (a worker that loses its core
            // to another process holds back one batch, not every layer of every batch).
            for wave in chunks.chunks(4 * threads) {
                let rows: Vec<Result<Vec<f32>, sotalign_kernels::KernelError>> = wave
                    .par_iter()
                    .map(|chunk| {
                        let seqs: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
                        m.forward_one_worker(&seqs)
                    })
                    .collect();
                for (chunk, r) in wave.iter().zip(rows) {
                    let r = r?;
                    for (k, &i) in chunk.iter().enumerate() {
                        out.row_mut(i)
                            .copy_from_slice(&r[k * self.dim..(k + 1) * self.dim]);
                    }
                    done += chunk.len();
                }
                progress(done);
            }
            return Ok(if normalize { out.l2_normalized() } else { out });
        }
        for chunk in chunks {
            let rows = self.forward_batch(chunk.iter().map(|&i| ids[i].as_slice()).collect())?;
            for (k, &i) in chunk.iter().enumerate() {
                out.row_mut(i)
                    .copy_from_slice(&rows[k * self.dim..(k + 1) * self.dim]);
            }
            done += chunk.len();
            progress(done);
        }
        Ok(if normalize { out.l2_normalized() } else { out })
    }

    /// Whether the CPU implementation ([`Bert`]) runs the network.
    pub fn uses_cpu_fast_path(&self) -> bool {
        matches!(self.model, Model::Cpu(_))
    }

    /// Mean-pooled hidden states for one batch, flattened (b * dim).
    fn forward_batch(&self, seqs: Vec<&[u32]>) -> Result<Vec<f32>, EncoderError> {
        let model = match &self.model {
            Model::Cpu(m) => return Ok(m.forward(&seqs)?),
            Model::Candle(m) => m,
        };
        let b = seqs.len();
        let len = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; b * len];
        let mut mask = vec![0f32; b * len];
        for (r, s) in seqs.iter().enumerate() {
            ids[r * len..r * len + s.len()].copy_from_slice(s);
            mask[r * len..r * len + s.len()]
                .iter_mut()
                .for_each(|m| *m = 1.0);
        }
        let ids = Tensor::from_vec(ids, (b, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, len), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = model.forward(&ids, &types, Some(&mask))?; // (b, len, dim)
        let summed = hidden.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?; // (b, dim)
        let counts = mask.sum_keepdim(1)?.clamp(1f32, f32::MAX)?; // (b, 1)
        let pooled = summed.broadcast_div(&counts)?;
        Ok(pooled.flatten_all()?.to_vec1::<f32>()?)
    }
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}
