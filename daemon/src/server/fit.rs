//! The daemon's one entry into the engine: which engine routine fits which protocol method,
//! what it says about itself, and how its checkpoint is written and read back.
//!
//! `fitted` (shown by `sotalign/status` and `sotalign/runs`) is the engine's own name for what
//! it fitted, so a client always sees the routine that really produced the served model.
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde_json::json;
use sotalign_protocol::types::AlignMethod;

use sotalign_engine::methods::{self, Method};
use sotalign_engine::progress::Progress;
use sotalign_engine::{AlignConfig, AlignData, AlignError, Aligned};

/// Which part of an alignment a progress report belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Teacher,
    Refine,
}

/// A fitted model and what was really fitted.
pub struct Fitted {
    pub model: Box<dyn Aligned>,
    pub fitted: String,
    pub config: AlignConfig,
}

/// The engine routine of each protocol method (the engine's registry, `align::methods`).
pub fn engine_method(m: AlignMethod) -> Method {
    match m {
        AlignMethod::Sotalign => Method::Sotalign,
        AlignMethod::Cca => Method::Cca,
        AlignMethod::Procrustes => Method::Procrustes,
        AlignMethod::Csa => Method::Csa,
        AlignMethod::Asif => Method::Asif,
        AlignMethod::Siglip => Method::Siglip,
        AlignMethod::AsifC => Method::AsifC,
        AlignMethod::Auto => Method::Auto,
    }
}

pub fn fit(
    method: AlignMethod,
    data: &AlignData,
    cfg: &AlignConfig,
    progress: &mut dyn FnMut(Stage, &Progress) -> ControlFlow<()>,
) -> Result<Fitted, AlignError> {
    let m = engine_method(method);
    // The registry fits the teacher first for the teacher-based methods; its reports name
    // their stage (`fit cca`, `teacher`, ...), training reports name the heads.
    let model = methods::fit(m, data, cfg, &mut |p: &Progress| {
        let s = p.stage.to_ascii_lowercase();
        // `auto` is one long validation with its final refit as the last step: all of it
        // is refinement for the progress bar (its candidates' names contain `cca`).
        let stage = if m == Method::Auto {
            Stage::Refine
        } else if s.contains("cca") || s.contains("teacher") || s.contains("fit ") {
            Stage::Teacher
        } else {
            Stage::Refine
        };
        progress(stage, p)
    })?;
    Ok(Fitted {
        fitted: describe(model.as_ref())?,
        model,
        config: cfg.clone(),
    })
}

/// The engine's name for a fitted model; `auto` also says what it chose, e.g.
/// `auto: fusion(cca(ridge=0.1) + asif_c(p=8))`, since that is what is being served.
fn describe(model: &dyn Aligned) -> Result<String, AlignError> {
    if model.name() != "auto" {
        return Ok(model.name().to_string());
    }
    let state = model.export_state()?;
    Ok(match state.meta["auto"]["choice"].as_str() {
        Some(choice) => format!("auto: {choice}"),
        None => "auto".to_string(),
    })
}

/// Write the fitted model's checkpoint with the engine's writer (temp file, fsync, rename).
pub fn save(path: &Path, f: &Fitted, run: u64) -> Result<(), String> {
    let state = f.model.export_state().map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    crate::io::write_checkpoint(
        path,
        &state,
        &f.config,
        json!({ "run": run, "fitted": f.fitted }),
    )
    .map_err(|e| e.to_string())
}

/// Load a checkpoint written by [`save`]: the model and its `fitted` description.
pub fn restore(path: &Path) -> Result<(Box<dyn Aligned>, String), String> {
    let ck = crate::io::read_checkpoint(path).map_err(|e| e.to_string())?;
    let model = methods::restore(&ck.state).map_err(|e| format!("{}: {e}", path.display()))?;
    let fitted = ck
        .info
        .get("fitted")
        .and_then(|v| v.as_str())
        .unwrap_or(&ck.state.method)
        .to_string();
    Ok((model, fitted))
}

/// Write `bytes` to `path` atomically: temporary file in the same directory, fsync, rename,
/// fsync of the directory. A crash leaves the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `auto` through the daemon's path: fit, checkpoint, reload after a restart. The served
    /// model says what `auto` chose, and the reloaded one scores like the fitted one.
    #[test]
    fn auto_fits_saves_and_restores_through_the_daemon_path() {
        let p = sotalign_engine::testing::small_platonic(3);
        let (data, xt, yt) = p.split(40, 60, 30, 1);
        let mut stages = Vec::new();
        let f = fit(
            AlignMethod::Auto,
            &data,
            &AlignConfig::default(),
            &mut |s, _| {
                stages.push(s);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert!(f.fitted.starts_with("auto: fusion("), "{}", f.fitted);
        assert!(!stages.is_empty(), "auto reports progress");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run-1.safetensors");
        save(&path, &f, 1).unwrap();
        let (back, fitted) = restore(&path).unwrap();
        assert_eq!(fitted, f.fitted);
        let (a, b) = (
            f.model.score(&xt, &yt).unwrap(),
            back.score(&xt, &yt).unwrap(),
        );
        for (u, v) in a.data.iter().zip(&b.data) {
            assert!((u - v).abs() < 1e-3 * u.abs().max(1.0), "{u} vs {v}");
        }
        // Every protocol method maps onto an engine routine of the same name.
        for (m, name) in [(AlignMethod::Auto, "auto"), (AlignMethod::AsifC, "asif_c")] {
            assert_eq!(engine_method(m).name(), name);
            assert_eq!(serde_json::to_value(m).unwrap(), name);
        }
    }
}
