//! The daemon's one entry into the engine: which engine routine fits which protocol method,
//! what it says about itself, and how its checkpoint is written and read back.
//!
//! `fitted` (shown by `sotalign/status` and `sotalign/runs`) is the engine's own name for what
//! it fitted, so a client always sees the routine that really produced the served model.
use std::ops::ControlFlow;
use std::path::Path;

use serde_json::json;
use sotalign_protocol::types::{AlignMethod, JobStage, ModelStage};

use sotalign_engine::methods::{self, Method};
use sotalign_engine::progress::{Phase, Progress};
use sotalign_engine::{AlignConfig, AlignData, AlignError, Aligned};

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

/// The protocol's stage of an engine progress report.
pub fn job_stage(p: Phase) -> JobStage {
    match p {
        Phase::Fit => JobStage::Teacher,
        Phase::Validate => JobStage::Validate,
        Phase::Train => JobStage::Refine,
    }
}

pub fn fit(
    method: AlignMethod,
    data: &AlignData,
    cfg: &AlignConfig,
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<Fitted, AlignError> {
    let model = methods::fit(engine_method(method), data, cfg, progress)?;
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
pub fn save(path: &Path, f: &Fitted, run: u64, stage: ModelStage) -> Result<(), String> {
    let state = f.model.export_state().map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    crate::io::write_checkpoint(
        path,
        &state,
        &f.config,
        json!({ "run": run, "fitted": f.fitted, "stage": stage }),
    )
    .map_err(|e| e.to_string())
}

/// Load a checkpoint written by [`save`]: the model, its `fitted` description and its stage
/// (`None` in checkpoints written before stages existed).
pub fn restore(path: &Path) -> Result<(Box<dyn Aligned>, String, Option<ModelStage>), String> {
    let ck = crate::io::read_checkpoint(path).map_err(|e| e.to_string())?;
    let model = methods::restore(&ck.state).map_err(|e| format!("{}: {e}", path.display()))?;
    let fitted = ck
        .info
        .get("fitted")
        .and_then(|v| v.as_str())
        .unwrap_or(&ck.state.method)
        .to_string();
    let stage = ck
        .info
        .get("stage")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    Ok((model, fitted, stage))
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
            &mut |p| {
                stages.push(job_stage(p.phase));
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert!(f.fitted.starts_with("auto: fusion("), "{}", f.fitted);
        assert!(!stages.is_empty(), "auto reports progress");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run-1.safetensors");
        save(&path, &f, 1, ModelStage::ClosedForm).unwrap();
        let (back, fitted, stage) = restore(&path).unwrap();
        assert_eq!(fitted, f.fitted);
        assert_eq!(stage, Some(ModelStage::ClosedForm));
        // auto validates, then fits its choice: both stages are reported, typed.
        assert!(stages.contains(&JobStage::Validate) && stages.contains(&JobStage::Teacher));
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
