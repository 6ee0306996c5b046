//! Request parameters checked against the daemon's caps ([`crate::limits`]) where they enter:
//! an alignment's `config` (unknown keys, training sizes) and page sizes.
use serde_json::{Value, json};
use sotalign_engine::AlignConfig;
use sotalign_protocol::ErrorObject;

use super::errors::HResult;
use crate::limits::{self, Limits};

/// Keys accepted besides the serialised names (serde aliases of the engine's config).
const ALIASES: &[(&str, &str)] = &[("auto", "folds")];

/// Every key of `over` that the configuration `base` (serialised) does not have is an
/// `INVALID_PARAMS` error naming the key's path and listing the valid keys at that level.
pub fn unknown_keys(base: &Value, over: &Value) -> HResult<()> {
    fn walk(base: &Value, over: &Value, path: &str) -> HResult<()> {
        let (Value::Object(b), Value::Object(o)) = (base, over) else {
            return Ok(());
        };
        for (k, v) in o {
            let here = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match b.get(k) {
                Some(bv) => walk(bv, v, &here)?,
                None if ALIASES.iter().any(|(p, a)| *p == path && *a == k) => {}
                None => {
                    let mut valid: Vec<&str> = b.keys().map(String::as_str).collect();
                    valid.sort_unstable();
                    return Err(ErrorObject::invalid_params(format!(
                        "unknown `config` key `{here}` (valid{}: {})",
                        if path.is_empty() {
                            String::new()
                        } else {
                            format!(" under `{path}`")
                        },
                        valid.join(", ")
                    ))
                    .with_data(json!({ "key": here, "valid": valid })));
                }
            }
        }
        Ok(())
    }
    walk(base, over, "")
}

/// The sizes of `cfg` against the caps. The training sizes (steps, head size, KLOT batch and
/// iterations) are checked only when the fit trains (`trains`): a closed-form align never
/// reads them, so a daemon started with a small `--max-steps` still serves `cca` with the
/// default config.
pub fn check_align_config(
    cfg: &AlignConfig,
    trains: bool,
    l: &Limits,
) -> Result<(), limits::LimitError> {
    let c = |what: &str, got: usize, limit: usize, flag: &'static str| {
        limits::check(what, got as u64, limit as u64, flag)
    };
    if trains {
        c(
            "config.optim.steps",
            cfg.optim.steps,
            l.max_steps,
            "max-steps",
        )?;
        c(
            "config.heads.dim",
            cfg.heads.dim,
            l.max_head_dim,
            "max-head-dim",
        )?;
        c(
            "config.klot.batch",
            cfg.klot.batch,
            l.max_batch,
            "max-batch",
        )?;
        c(
            "config.klot.iters",
            cfg.klot.iters,
            l.max_sinkhorn_iters,
            "max-sinkhorn-iters",
        )?;
    }
    c(
        "config.auto.splits",
        cfg.auto.splits,
        l.max_grid,
        "max-grid",
    )?;
    if let Some(m) = cfg.teacher.max_components {
        c(
            "config.teacher.max_components",
            m,
            l.max_head_dim,
            "max-head-dim",
        )?;
    }
    if let Some(s) = cfg.csa.s {
        c("config.csa.s", s, l.max_head_dim, "max-head-dim")?;
    }
    for (what, len) in [
        (
            "length of config.auto.ridge_grid",
            cfg.auto.ridge_grid.len(),
        ),
        (
            "length of config.auto.asif_p_grid",
            cfg.auto.asif_p_grid.len(),
        ),
        (
            "length of config.auto.blend_weights",
            cfg.auto.blend_weights.len(),
        ),
        ("length of config.auto.eps_grid", cfg.auto.eps_grid.len()),
        (
            "length of config.klot.alpha_grid",
            cfg.klot.alpha_grid.len(),
        ),
        ("length of config.csa.s_grid", cfg.csa.s_grid.len()),
    ] {
        c(what, len, l.max_grid, "max-grid")?;
    }
    for &s in &cfg.csa.s_grid {
        c(
            "an entry of config.csa.s_grid",
            s,
            l.max_head_dim,
            "max-head-dim",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named_with_the_valid_ones() {
        let base = serde_json::to_value(AlignConfig::default()).unwrap();
        assert!(unknown_keys(&base, &json!({"optim": {"steps": 3}})).is_ok());
        assert!(unknown_keys(&base, &json!({"auto": {"folds": 3}})).is_ok());
        let e = unknown_keys(&base, &json!({"optim": {"stepz": 3}})).unwrap_err();
        assert_eq!(e.code, sotalign_protocol::codes::INVALID_PARAMS);
        assert!(e.message.contains("optim.stepz"), "{}", e.message);
        assert!(e.message.contains("steps"), "{}", e.message);
        let e = unknown_keys(&base, &json!({"optimm": {}})).unwrap_err();
        assert!(e.message.contains("optimm"), "{}", e.message);
    }

    #[test]
    fn training_sizes_are_capped() {
        let l = Limits::default();
        assert!(check_align_config(&AlignConfig::default(), true, &l).is_ok());
        assert!(check_align_config(&AlignConfig::reference(), true, &l).is_ok());
        let mut c = AlignConfig::default();
        c.optim.steps = 1_000_000_000;
        assert_eq!(
            check_align_config(&c, true, &l).unwrap_err().cap(),
            Some("max-steps")
        );
        let mut c = AlignConfig::default();
        c.heads.dim = 10_000_000_000;
        assert_eq!(
            check_align_config(&c, true, &l).unwrap_err().cap(),
            Some("max-head-dim")
        );
        let mut c = AlignConfig::default();
        c.klot.iters = 1_000_000_000_000;
        assert_eq!(
            check_align_config(&c, true, &l).unwrap_err().cap(),
            Some("max-sinkhorn-iters")
        );
        // A fit that does not train never reads the training sizes: a daemon with a small
        // step cap still serves closed-form methods with the default config.
        let small = Limits {
            max_steps: 10,
            ..Limits::default()
        };
        assert!(check_align_config(&AlignConfig::default(), false, &small).is_ok());
        assert_eq!(
            check_align_config(&AlignConfig::default(), true, &small)
                .unwrap_err()
                .cap(),
            Some("max-steps")
        );
    }
}
