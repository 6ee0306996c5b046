//! Bigger vision backbones users bring as HF-format directories (`config.json` +
//! `model.safetensors`), run through candle-transformers:
//!
//! - CLIP vision (`model_type` `clip`, `clip_vision_model`): pooled output (post-layernorm
//!   CLS token), then `visual_projection` when the checkpoint has one.
//! - DINOv2 (`model_type` `dinov2`): final-norm CLS token. candle's module uses the original
//!   facebookresearch weight names and a fused qkv, so HF tensors are renamed (and q, k, v
//!   concatenated) at load time. Known differences from HF: candle interpolates position
//!   embeddings with nearest-neighbour (HF: bicubic) and uses LayerNorm eps 1e-5 (HF: 1e-6),
//!   so features are close to, not bit-equal with, the PyTorch model's.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, VarBuilder};
use candle_transformers::models::clip::text_model::Activation;
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};
use candle_transformers::models::dinov2::DinoVisionTransformer;
use serde_json::Value;

use super::EncoderError;

/// How a backbone wants its pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessing {
    /// Shorter side after resize.
    pub resize: usize,
    /// Square centre crop.
    pub crop: usize,
    /// Per-channel mean and std applied to x / 255.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

pub enum HfVision {
    Clip {
        model: ClipVisionTransformer,
        projection: Option<candle_nn::Linear>,
    },
    Dinov2 {
        model: DinoVisionTransformer,
    },
}

/// A loaded HF-format vision model.
pub struct HfVisionModel {
    pub model: HfVision,
    pub dim: usize,
    pub preprocessing: Preprocessing,
    /// `clip` or `dinov2`.
    pub family: &'static str,
}

fn format_err(path: &Path, what: impl Into<String>) -> EncoderError {
    EncoderError::Format {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

fn get_usize(cfg: &Value, key: &str, path: &Path) -> Result<usize, EncoderError> {
    cfg.get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| format_err(path, format!("config has no integer `{key}`")))
}

/// Load CLIP-vision or DINOv2 from an HF-format directory.
pub fn load_dir(dir: &Path, device: &Device) -> Result<HfVisionModel, EncoderError> {
    let cfg_path = dir.join("config.json");
    let weights = dir.join("model.safetensors");
    for p in [&cfg_path, &weights] {
        if !p.is_file() {
            return Err(EncoderError::MissingFile(p.clone()));
        }
    }
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path).map_err(|e| EncoderError::io(&cfg_path, e))?,
    )
    .map_err(|e| format_err(&cfg_path, e.to_string()))?;
    let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
    match model_type {
        "clip" | "clip_vision_model" => load_clip(&cfg, &cfg_path, &weights, device),
        "dinov2" => load_dinov2(&cfg, &cfg_path, &weights, device),
        other => Err(format_err(
            &cfg_path,
            format!(
                "unsupported model_type `{other}` (supported: clip, clip_vision_model, dinov2)"
            ),
        )),
    }
}

fn load_clip(
    cfg: &Value,
    cfg_path: &Path,
    weights: &Path,
    device: &Device,
) -> Result<HfVisionModel, EncoderError> {
    // Full CLIPModel configs nest the vision part; CLIPVisionModel configs are flat.
    let v = cfg.get("vision_config").unwrap_or(cfg);
    let act = v
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("quick_gelu");
    if act != "quick_gelu" {
        return Err(format_err(
            cfg_path,
            format!("hidden_act `{act}`: candle's CLIP supports quick_gelu only"),
        ));
    }
    let embed_dim = get_usize(v, "hidden_size", cfg_path)?;
    let c = ClipVisionConfig {
        embed_dim,
        activation: Activation::QuickGelu,
        intermediate_size: get_usize(v, "intermediate_size", cfg_path)?,
        num_hidden_layers: get_usize(v, "num_hidden_layers", cfg_path)?,
        num_attention_heads: get_usize(v, "num_attention_heads", cfg_path)?,
        projection_dim: cfg
            .get("projection_dim")
            .or(v.get("projection_dim"))
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize,
        num_channels: v.get("num_channels").and_then(Value::as_u64).unwrap_or(3) as usize,
        image_size: get_usize(v, "image_size", cfg_path)?,
        patch_size: get_usize(v, "patch_size", cfg_path)?,
    };
    // SAFETY: read-only memory map of a file we do not modify.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)? };
    if !vb.contains_tensor("vision_model.embeddings.class_embedding") {
        return Err(format_err(
            weights,
            "no `vision_model.embeddings.class_embedding`: not a CLIP vision checkpoint",
        ));
    }
    let model = ClipVisionTransformer::new(vb.pp("vision_model"), &c)?;
    let (projection, dim) = if vb.contains_tensor("visual_projection.weight") {
        let w = vb.get_unchecked("visual_projection.weight")?;
        let out = w.dim(0)?;
        (Some(candle_nn::Linear::new(w, None)), out)
    } else {
        (None, embed_dim)
    };
    Ok(HfVisionModel {
        model: HfVision::Clip { model, projection },
        dim,
        preprocessing: Preprocessing {
            resize: c.image_size,
            crop: c.image_size,
            mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
        },
        family: "clip",
    })
}

/// candle's DINOv2 image and patch sizes (fixed in candle-transformers).
const DINO_IMG: usize = 518;
const DINO_PATCH: usize = 14;
const DINO_CLASSES: usize = 1000;

fn load_dinov2(
    cfg: &Value,
    cfg_path: &Path,
    weights: &Path,
    device: &Device,
) -> Result<HfVisionModel, EncoderError> {
    let dim = get_usize(cfg, "hidden_size", cfg_path)?;
    let depth = get_usize(cfg, "num_hidden_layers", cfg_path)?;
    let heads = get_usize(cfg, "num_attention_heads", cfg_path)?;
    let patch = get_usize(cfg, "patch_size", cfg_path)?;
    let mlp_ratio = cfg.get("mlp_ratio").and_then(Value::as_f64).unwrap_or(4.0);
    if patch != DINO_PATCH
        || (mlp_ratio - 4.0).abs() > 1e-9
        || cfg.get("use_swiglu_ffn").and_then(Value::as_bool) == Some(true)
    {
        return Err(format_err(
            cfg_path,
            "candle's DINOv2 needs patch_size 14, mlp_ratio 4 and no SwiGLU (ViT-S/B/L)",
        ));
    }
    if dim > DINO_CLASSES {
        return Err(format_err(
            cfg_path,
            format!("hidden_size {dim} > {DINO_CLASSES} is not supported (ViT-g)"),
        ));
    }
    let st = candle_core::safetensors::load(weights, device)?;
    let get = |name: &str| -> Result<Tensor, EncoderError> {
        st.get(name)
            .cloned()
            .ok_or_else(|| format_err(weights, format!("missing tensor `{name}`")))
    };
    let mut m: HashMap<String, Tensor> = HashMap::new();
    m.insert("cls_token".into(), get("embeddings.cls_token")?);
    m.insert("pos_embed".into(), get("embeddings.position_embeddings")?);
    m.insert(
        "patch_embed.proj.weight".into(),
        get("embeddings.patch_embeddings.projection.weight")?,
    );
    m.insert(
        "patch_embed.proj.bias".into(),
        get("embeddings.patch_embeddings.projection.bias")?,
    );
    for i in 0..depth {
        let h = format!("encoder.layer.{i}");
        let b = format!("blocks.{i}");
        for (from, to) in [
            ("norm1", "norm1"),
            ("norm2", "norm2"),
            ("attention.output.dense", "attn.proj"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ] {
            for p in ["weight", "bias"] {
                m.insert(format!("{b}.{to}.{p}"), get(&format!("{h}.{from}.{p}"))?);
            }
        }
        for p in ["weight", "bias"] {
            let qkv: Vec<Tensor> = ["query", "key", "value"]
                .iter()
                .map(|n| get(&format!("{h}.attention.attention.{n}.{p}")))
                .collect::<Result<_, _>>()?;
            m.insert(format!("{b}.attn.qkv.{p}"), Tensor::cat(&qkv, 0)?);
        }
        m.insert(
            format!("{b}.ls1.gamma"),
            get(&format!("{h}.layer_scale1.lambda1"))?,
        );
        m.insert(
            format!("{b}.ls2.gamma"),
            get(&format!("{h}.layer_scale2.lambda1"))?,
        );
    }
    m.insert("norm.weight".into(), get("layernorm.weight")?);
    m.insert("norm.bias".into(), get("layernorm.bias")?);
    // candle's module exposes its output only through an ImageNet head over [CLS, mean patch];
    // an identity head on the CLS half makes its first `dim` outputs the normalised CLS token.
    let mut head = vec![0f32; DINO_CLASSES * 2 * dim];
    for r in 0..dim {
        head[r * 2 * dim + r] = 1.0;
    }
    m.insert(
        "head.weight".into(),
        Tensor::from_vec(head, (DINO_CLASSES, 2 * dim), device)?,
    );
    m.insert(
        "head.bias".into(),
        Tensor::zeros(DINO_CLASSES, DType::F32, device)?,
    );
    let pos = m["pos_embed"].dim(1)?;
    let want = (DINO_IMG / DINO_PATCH).pow(2) + 1;
    if pos != want {
        return Err(format_err(
            weights,
            format!(
                "position embeddings for {pos} tokens; candle's DINOv2 expects {want} (518 px)"
            ),
        ));
    }
    let vb = VarBuilder::from_tensors(m, DType::F32, device);
    let model = DinoVisionTransformer::new(vb, depth, dim, heads)?;
    Ok(HfVisionModel {
        model: HfVision::Dinov2 { model },
        dim,
        preprocessing: Preprocessing {
            resize: 256,
            crop: 224,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        },
        family: "dinov2",
    })
}

impl HfVisionModel {
    /// Features (n, dim) for a (n, 3, crop, crop) batch.
    pub fn features(&self, x: &Tensor) -> Result<Tensor, EncoderError> {
        Ok(match &self.model {
            HfVision::Clip { model, projection } => {
                let pooled = model.forward(x)?;
                match projection {
                    Some(p) => p.forward(&pooled)?,
                    None => pooled,
                }
            }
            HfVision::Dinov2 { model } => model.forward(x)?.narrow(1, 0, self.dim)?,
        })
    }
}
