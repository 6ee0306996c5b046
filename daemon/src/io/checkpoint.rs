//! Checkpoints of fitted methods: a safetensors file of the method's named f32 tensors, with the
//! JSON description (method, its metadata, the full config, provenance) both embedded in the
//! safetensors header (so one file is self-contained) and written beside it as `<name>.json`
//! (for people and tools). Each file is written atomically (temp file, fsync, rename).
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::tensors::{read_safetensors, write_safetensors};
use super::{IoError, write_atomic};
use sotalign_engine::{AlignConfig, MethodState};

/// Key of the JSON description in the safetensors metadata.
const META_KEY: &str = "sotalign";
/// Bumped when the layout changes incompatibly.
pub const CHECKPOINT_VERSION: u64 = 1;

/// A loaded checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub state: MethodState,
    pub config: AlignConfig,
    /// Free-form provenance written with it (data sizes, command, ...).
    pub info: serde_json::Value,
}

/// The sidecar JSON path of a checkpoint (`x.safetensors` -> `x.json`).
pub fn sidecar_path(path: &Path) -> PathBuf {
    path.with_extension("json")
}

/// Write a checkpoint to `path` (a `.safetensors` file) and its JSON sidecar.
pub fn write_checkpoint(
    path: &Path,
    state: &MethodState,
    config: &AlignConfig,
    info: serde_json::Value,
) -> Result<(), IoError> {
    let desc = json!({
        "format": "sotalign-checkpoint",
        "version": CHECKPOINT_VERSION,
        "method": state.method,
        "meta": state.meta,
        "config": config,
        "info": info,
        "tensors": state.tensors.iter().map(|(n, m)| json!({"name": n, "shape": [m.rows, m.cols]})).collect::<Vec<_>>(),
    });
    let text =
        serde_json::to_string_pretty(&desc).map_err(|e| IoError::format(path, e.to_string()))?;
    let meta = HashMap::from([(META_KEY.to_string(), text.clone())]);
    write_safetensors(path, &state.tensors, Some(meta))?;
    write_atomic(&sidecar_path(path), text.as_bytes())
}

/// Read a checkpoint written by [`write_checkpoint`] (only the safetensors file is needed).
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint, IoError> {
    let f = read_safetensors(path)?;
    let text = f.metadata.get(META_KEY).ok_or_else(|| {
        IoError::format(path, "not a sotalign checkpoint (no `sotalign` metadata)")
    })?;
    let desc: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| IoError::format(path, format!("bad checkpoint JSON: {e}")))?;
    let version = desc.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if version != CHECKPOINT_VERSION {
        return Err(IoError::format(
            path,
            format!("checkpoint version {version}, expected {CHECKPOINT_VERSION}"),
        ));
    }
    let method = desc
        .get("method")
        .and_then(|v| v.as_str())
        .ok_or_else(|| IoError::format(path, "checkpoint names no method"))?
        .to_string();
    let config: AlignConfig =
        serde_json::from_value(desc.get("config").cloned().unwrap_or_default())
            .map_err(|e| IoError::format(path, format!("bad config in checkpoint: {e}")))?;
    Ok(Checkpoint {
        state: MethodState {
            method,
            tensors: f.tensors,
            meta: desc.get("meta").cloned().unwrap_or_default(),
        },
        config,
        info: desc.get("info").cloned().unwrap_or_default(),
    })
}
