//! The daemon's one entry into the engine: which engine routine fits which protocol method,
//! what it says about itself, and how its checkpoint is written and read back.
//!
//! The mapping is kept here, away from the job plumbing, because it follows what the engine
//! offers: when a method's engine routine is missing from this build the daemon fits the best
//! available one and says so in `fitted` (shown by `sotalign/status` and `sotalign/runs`),
//! never silently.
use std::collections::HashMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::json;
use sotalign_protocol::types::AlignMethod;

use crate::align::config::HeadInit;
use crate::align::progress::Progress;
use crate::align::train::{StudentHeads, StudentTeacher, fit_student};
use crate::align::{AlignConfig, AlignData, AlignError, Aligned};

/// Which part of an alignment a progress report belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Teacher,
    Refine,
}

/// A fitted model, what was really fitted, and its checkpoint bytes (safetensors).
pub struct Fitted {
    pub model: Box<dyn Aligned>,
    pub fitted: String,
    pub checkpoint: Option<Vec<u8>>,
}

/// Key of our JSON description in the safetensors metadata.
const META_KEY: &str = "sotalign";

pub fn fit(
    method: AlignMethod,
    data: &AlignData,
    cfg: &AlignConfig,
    progress: &mut dyn FnMut(Stage, &Progress) -> ControlFlow<()>,
) -> Result<Fitted, AlignError> {
    // This build's engine has the student heads but not the CCA teacher nor the closed-form
    // baselines: every method is served by pairs-only SigLIP heads (random init, alpha = 0),
    // the best model it can fit without a teacher, and `fitted` says so.
    let mut c = cfg.clone();
    c.klot.alpha = 0.0;
    c.heads.init = HeadInit::Random;
    let fitted = match method {
        AlignMethod::Siglip => "siglip".to_string(),
        other => format!(
            "siglip (pairs-only heads: the {} engine routine is not in this build)",
            serde_json::to_value(other).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
        ),
    };
    let heads = fit_student::<dyn StudentTeacher>(data, None, &c, &mut |p| progress(Stage::Refine, p))?;
    let checkpoint = heads_checkpoint(&heads, &c, &fitted)?;
    Ok(Fitted { model: Box::new(heads), fitted, checkpoint: Some(checkpoint) })
}

fn heads_checkpoint(h: &StudentHeads, cfg: &AlignConfig, fitted: &str) -> Result<Vec<u8>, AlignError> {
    let tensors = h.tensors()?;
    let desc = json!({
        "format": "sotalign-heads",
        "version": 1,
        "method": h.name(),
        "fitted": fitted,
        "ln_eps": cfg.heads.ln_eps,
        "config": cfg,
    });
    let meta = HashMap::from([(META_KEY.to_string(), desc.to_string())]);
    let mut named: Vec<(String, Tensor)> = tensors.into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    safetensors::serialize(named, Some(meta)).map_err(|e| AlignError::Numerical(format!("checkpoint encoding: {e}")))
}

/// Load a checkpoint written by [`fit`]: the model and its `fitted` description.
pub fn restore(path: &Path) -> Result<(Box<dyn Aligned>, String), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (_, st_meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let desc: serde_json::Value = st_meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| format!("{}: not a sotalign checkpoint", path.display()))?;
    if desc.get("format").and_then(|f| f.as_str()) != Some("sotalign-heads") {
        return Err(format!("{}: unsupported checkpoint format", path.display()));
    }
    let name = desc.get("method").and_then(|m| m.as_str()).unwrap_or("siglip").to_string();
    let fitted = desc.get("fitted").and_then(|m| m.as_str()).unwrap_or(&name).to_string();
    let ln_eps = desc.get("ln_eps").and_then(|v| v.as_f64()).unwrap_or(1e-5);
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| format!("{}: {e}", path.display()))?;
    let heads = StudentHeads::from_tensors(&name, tensors, ln_eps).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((Box::new(heads), fitted))
}

/// Write `bytes` to `path` atomically: temporary file in the same directory, fsync, rename,
/// fsync of the directory. A crash leaves the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
