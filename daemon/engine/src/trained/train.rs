//! Stage 2 of SOTAlign: train the student heads.
//!
//! Each step (PROTOCOL.md): SigLIP on *all* pairs as one batch, plus `alpha` times KLOT on a
//! fresh unpaired batch of `B` images and `B` texts drawn independently:
//! `KLOT = KL(P* || P)`, `P = Sinkhorn(Ks / eps_s)` from the student's cosine matrix,
//! `P* = Sinkhorn(K* / eps_t)` from the teacher's (cosine in CCA space). The KLOT gradient enters
//! the candle graph as `alpha * sum(stopgrad((P - P*) / eps_s) * Ks)` (see [`crate::klot`] for
//! why that is the exact gradient); the loss we report uses the true KL value.
//!
//! `alpha = 0` with random init is the pairs-only SigLIP baseline; the teacher is needed when
//! `alpha > 0` or the heads are initialised from it. A fixed `cfg.seed` fixes the initial weights
//! and the batch draws, so a fit is deterministic.
use std::collections::HashMap;
use std::ops::ControlFlow;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::{HeadInit, KlotEngine};
use crate::heads::{self, Head, HeadInitValues, l2_normalize, standardize, to_matrix, to_tensor};
use crate::klot::Klot;
use crate::klot_device;
use crate::optim::Optimizer;
use crate::progress::Progress;
use crate::siglip::{label_matrix, siglip_loss, siglip_negatives_loss};
use crate::{AlignConfig, AlignData, AlignError, Aligned, Matrix, MethodState};

/// What the student needs from its teacher: canonical coordinates (for the head init) and the
/// normalised embeddings whose dot products are the teacher affinity K* ([`Aligned`]).
/// Implemented by the ridge-CCA teacher; a trait so the training loop does not care how the
/// teacher was fitted.
pub trait StudentTeacher: Aligned {
    /// Number of canonical components.
    fn components(&self) -> usize;
    /// Canonical coordinates (not normalised) of raw image features.
    fn coords_x(&self, x: &Matrix) -> Result<Matrix, AlignError>;
    /// Canonical coordinates (not normalised) of raw text features.
    fn coords_y(&self, y: &Matrix) -> Result<Matrix, AlignError>;
}

/// One training step's numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRecord {
    /// The SigLIP loss: the pair matrix plus the rejected pairs' `z = -1` cells, if any.
    pub siglip: f64,
    /// KL(P* || P) on the step's unpaired batch (None when alpha = 0).
    pub klot: Option<f64>,
    /// siglip + alpha * klot.
    pub total: f64,
    pub lr: f64,
}

/// Trained heads: the `siglip` / `sotalign` methods.
#[derive(Debug, Clone)]
pub struct StudentHeads {
    name: String,
    pub x: Head,
    pub y: Head,
    /// Learned log logit scale `t` and bias `b` of the SigLIP loss (not used for retrieval:
    /// scores are the cosine, a monotone function of the logits).
    pub log_scale: f64,
    pub logit_bias: f64,
    /// Per-step losses of the fit (empty for heads loaded from a checkpoint).
    pub log: Vec<StepRecord>,
    /// What the fit changed on its own (e.g. the unpaired batch capped to a small pool); empty
    /// when it ran exactly as configured.
    pub notes: Vec<String>,
}

impl StudentHeads {
    /// All parameters by name (`x.ln.weight`, `x.ln.bias`, `x.linear.weight`, `x.linear.bias`,
    /// the same under `y.`, plus `logit_scale` and `logit_bias`): what a checkpoint stores.
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>, AlignError> {
        let dev = Device::Cpu;
        let mut m = HashMap::new();
        for (p, h) in [("x", &self.x), ("y", &self.y)] {
            m.insert(format!("{p}.ln.weight"), h.ln_weight.clone());
            m.insert(format!("{p}.ln.bias"), h.ln_bias.clone());
            m.insert(format!("{p}.linear.weight"), h.weight.clone());
            m.insert(format!("{p}.linear.bias"), h.bias.clone());
        }
        m.insert(
            "logit_scale".into(),
            Tensor::new(&[self.log_scale as f32], &dev)?,
        );
        m.insert(
            "logit_bias".into(),
            Tensor::new(&[self.logit_bias as f32], &dev)?,
        );
        Ok(m)
    }

    /// Rebuild from [`StudentHeads::tensors`] output (e.g. a loaded checkpoint).
    pub fn from_tensors(
        name: &str,
        tensors: HashMap<String, Tensor>,
        ln_eps: f64,
    ) -> Result<Self, AlignError> {
        let shape = |k: &str| -> Result<Vec<usize>, AlignError> {
            tensors
                .get(k)
                .map(|t| t.dims().to_vec())
                .ok_or_else(|| AlignError::InvalidConfig(format!("checkpoint lacks tensor `{k}`")))
        };
        let wx = shape("x.linear.weight")?;
        let wy = shape("y.linear.weight")?;
        if wx.len() != 2 || wy.len() != 2 {
            return Err(AlignError::InvalidConfig("head weights must be 2-D".into()));
        }
        let scalar = |k: &str| -> Result<f64, AlignError> {
            let t = tensors.get(k).ok_or_else(|| {
                AlignError::InvalidConfig(format!("checkpoint lacks tensor `{k}`"))
            })?;
            Ok(t.flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .first()
                .copied()
                .unwrap_or(0.0) as f64)
        };
        let (log_scale, logit_bias) = (scalar("logit_scale")?, scalar("logit_bias")?);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let x = Head::load(vb.pp("x"), wx[1], wx[0], ln_eps)?;
        let y = Head::load(vb.pp("y"), wy[1], wy[0], ln_eps)?;
        Ok(Self {
            name: name.to_string(),
            x,
            y,
            log_scale,
            logit_bias,
            log: Vec::new(),
            notes: Vec::new(),
        })
    }

    fn embed(&self, head: &Head, m: &Matrix, what: &str) -> Result<Matrix, AlignError> {
        if m.cols != head.d_in() {
            return Err(AlignError::DimensionMismatch {
                what: format!("{what} feature dimension for the {} heads", self.name),
                expected: head.d_in(),
                got: m.cols,
            });
        }
        m.check_finite(what)?;
        // In row chunks: the forward pass makes several temporaries of the input's size, which
        // for a whole collection (the daemon embeds every sample) would multiply its memory.
        const CHUNK: usize = 8192;
        let mut out = Matrix::zeros(m.rows, head.d_out());
        for lo in (0..m.rows).step_by(CHUNK) {
            let idx: Vec<usize> = (lo..(lo + CHUNK).min(m.rows)).collect();
            let x = to_tensor(&m.select_rows(&idx).l2_normalized(), &Device::Cpu)?;
            let e = to_matrix(&l2_normalize(&head.forward(&x)?)?)?;
            out.data[lo * e.cols..(lo + e.rows) * e.cols].copy_from_slice(&e.data);
        }
        Ok(out)
    }
}

impl Aligned for StudentHeads {
    fn name(&self) -> &str {
        &self.name
    }

    fn embed_x(&self, x: &Matrix) -> Result<Matrix, AlignError> {
        self.embed(&self.x, x, "image")
    }

    fn embed_y(&self, y: &Matrix) -> Result<Matrix, AlignError> {
        self.embed(&self.y, y, "text")
    }

    /// Every parameter as an f32 tensor (1-D ones as 1 x d), named as in [`Self::tensors`].
    fn export_state(&self) -> Result<MethodState, AlignError> {
        let mut tensors: Vec<(String, Matrix)> = Vec::new();
        for (name, t) in self.tensors()? {
            let t = if t.rank() == 1 { t.unsqueeze(0)? } else { t };
            tensors.push((name, to_matrix(&t)?));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(MethodState {
            method: self.name.clone(),
            tensors,
            meta: serde_json::json!({
                "ln_eps": self.x.ln_eps,
                "dim": self.x.d_out(),
                "notes": self.notes,
            }),
        })
    }
}

impl StudentHeads {
    /// Rebuild from [`Aligned::export_state`] output (checkpoints).
    pub fn from_state(state: &MethodState) -> Result<Self, AlignError> {
        let ln_eps = state
            .meta
            .get("ln_eps")
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-5);
        let mut map = HashMap::new();
        for (name, m) in &state.tensors {
            let t = to_tensor(m, &Device::Cpu)?;
            // Vectors were stored as 1 x d.
            let t = if name.ends_with("linear.weight") {
                t
            } else {
                t.flatten_all()?
            };
            map.insert(name.clone(), t);
        }
        Self::from_tensors(&state.method, map, ln_eps)
    }
}

/// Train student heads. `alpha = cfg.klot.alpha`; the method is named `sotalign` when
/// `alpha > 0`, `siglip` otherwise.
///
/// Errors: the teacher is missing but needed; fewer unpaired samples than `klot.batch` on either
/// side; a NaN/Inf loss (with the step); [`AlignError::Cancelled`] when `progress` breaks.
pub fn fit_student<T: StudentTeacher + ?Sized>(
    data: &AlignData,
    teacher: Option<&T>,
    cfg: &AlignConfig,
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<StudentHeads, AlignError> {
    data.validate()?;
    let alpha = cfg.klot.alpha;
    let name = if alpha > 0.0 { "sotalign" } else { "siglip" };
    check_config(cfg)?;
    check_sizes(cfg, data.dx().max(data.dy()))?;
    let needs_teacher = alpha > 0.0 || cfg.heads.init == HeadInit::Teacher;
    let teacher = match (teacher, needs_teacher) {
        (Some(t), _) => Some(t),
        (None, false) => None,
        (None, true) => {
            return Err(AlignError::InvalidConfig(format!(
                "{name}: a fitted teacher is required (klot.alpha = {alpha}, heads.init = {:?}); \
                 fit the CCA teacher first or use alpha = 0 with heads.init = random",
                cfg.heads.init
            )));
        }
    };
    let (batch, notes) = if alpha > 0.0 {
        effective_batch(
            cfg.klot.batch,
            cfg.klot.cap_batch,
            data.xu.rows,
            data.yu.rows,
        )?
    } else {
        (cfg.klot.batch, Vec::new())
    };
    for n in &notes {
        tracing::warn!("{name}: {n}");
    }

    let dev = train_device(&cfg.device)?;
    let d_out = cfg.heads.dim;
    let eps = cfg.heads.ln_eps;
    let (dx, dy) = (data.dx(), data.dy());

    // Initial weights.
    let (init_x, init_y) = match (cfg.heads.init, teacher) {
        (HeadInit::Teacher, Some(t)) => {
            // Streamed over row chunks of pairs + pool: memory O(d^2), not O(N d).
            let init = |parts: [&Matrix; 2], x_side: bool| -> Result<_, AlignError> {
                let mut acc: Option<heads::TeacherInitAccum> = None;
                for part in parts {
                    for lo in (0..part.rows).step_by(INIT_CHUNK) {
                        let idx: Vec<usize> = (lo..(lo + INIT_CHUNK).min(part.rows)).collect();
                        let chunk = part.select_rows(&idx);
                        let c = if x_side {
                            t.coords_x(&chunk)?
                        } else {
                            t.coords_y(&chunk)?
                        };
                        acc.get_or_insert_with(|| {
                            heads::TeacherInitAccum::new(chunk.cols, c.cols.min(d_out), eps)
                        })
                        .add(&chunk, &c)?;
                    }
                }
                acc.ok_or_else(|| AlignError::NotEnoughData("teacher init: no rows".into()))?
                    .finish(d_out, &dev)
            };
            (
                init([&data.xp, &data.xu], true)?,
                init([&data.yp, &data.yu], false)?,
            )
        }
        _ => (
            heads::init_random(dx, d_out, cfg.seed.wrapping_mul(2).wrapping_add(1), &dev)?,
            heads::init_random(dy, d_out, cfg.seed.wrapping_mul(2).wrapping_add(2), &dev)?,
        ),
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let mut params: Vec<(Var, bool)> = Vec::new();
    let head_x = make_head(&varmap, &vb, "x", dx, d_out, eps, init_x, &mut params)?;
    let head_y = make_head(&varmap, &vb, "y", dy, d_out, eps, init_y, &mut params)?;
    let log_scale = Var::from_tensor(&Tensor::new(&[cfg.siglip.logit_scale_init as f32], &dev)?)?;
    let logit_bias = Var::from_tensor(&Tensor::new(&[cfg.siglip.bias_init as f32], &dev)?)?;
    params.push((log_scale.clone(), false));
    params.push((logit_bias.clone(), false));
    let mut opt = Optimizer::new(params, &cfg.optim)?;

    // Frozen inputs, standardised once.
    let xp = standardize(&to_tensor(&data.xp.l2_normalized(), &dev)?, eps)?;
    let yp = standardize(&to_tensor(&data.yp.l2_normalized(), &dev)?, eps)?;
    let z = label_matrix(&data.pair_groups, &dev)?;
    // Rejected pairs (label -1 cells), standardised like the pairs.
    let negatives = match &data.negatives {
        Some(n) if n.x.rows > 0 => Some((
            standardize(&to_tensor(&n.x.l2_normalized(), &dev)?, eps)?,
            standardize(&to_tensor(&n.y.l2_normalized(), &dev)?, eps)?,
        )),
        _ => None,
    };
    // The unpaired pools are read in place: each step gathers its B rows, normalises and
    // standardises them (row-wise, so identical to doing it once for all rows) and asks the
    // teacher for their embeddings. Nothing of size N is copied, so memory stays at the
    // features themselves however large the pool (`sotalign bench scaling`).
    let unpaired = if alpha > 0.0 {
        let t = teacher.ok_or_else(|| AlignError::InvalidConfig("teacher missing".into()))?;
        let cpu_engine = match cfg.klot.engine {
            KlotEngine::Cpu => true,
            KlotEngine::Device => false,
            KlotEngine::Auto => dev.is_cpu(),
        };
        Some(UnpairedPool {
            teacher: t,
            klot: cpu_engine.then(|| {
                let mut k = Klot::new(batch, batch);
                k.set_cancel(cfg.cancel.clone());
                k
            }),
        })
    } else {
        None
    };
    let mut pool = unpaired;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5EED_0F_50_7A11);
    let steps = cfg.optim.steps;
    // Grows with the steps actually run (never reserved from a configured count).
    let mut log = Vec::new();

    for step in 0..steps {
        cfg.cancel.check()?;
        let ex = l2_normalize(&head_x.forward_normalized(&xp)?)?;
        let ey = l2_normalize(&head_y.forward_normalized(&yp)?)?;
        let mut sig = siglip_loss(&ex, &ey, &z, log_scale.as_tensor(), logit_bias.as_tensor())?;
        if let Some((xn, yn)) = &negatives {
            let exn = l2_normalize(&head_x.forward_normalized(xn)?)?;
            let eyn = l2_normalize(&head_y.forward_normalized(yn)?)?;
            let neg = siglip_negatives_loss(
                &exn,
                &eyn,
                log_scale.as_tensor(),
                logit_bias.as_tensor(),
                data.xp.rows,
            )?;
            sig = (sig + neg)?;
        }
        let sig_value = sig.to_scalar::<f32>()? as f64;
        let (loss, kl) = match pool.as_mut() {
            Some(p) => {
                let ix = sample_rows(&mut rng, data.xu.rows, batch);
                let iy = sample_rows(&mut rng, data.yu.rows, batch);
                let bx = data.xu.select_rows(&ix);
                let by = data.yu.select_rows(&iy);
                let bxs = standardize(&to_tensor(&bx.l2_normalized(), &dev)?, eps)?;
                let bys = standardize(&to_tensor(&by.l2_normalized(), &dev)?, eps)?;
                let sx = l2_normalize(&head_x.forward_normalized(&bxs)?)?;
                let sy = l2_normalize(&head_y.forward_normalized(&bys)?)?;
                let ks = sx.matmul(&sy.t()?)?;
                let kt = to_tensor(&p.teacher.embed_x(&bx)?, &dev)?
                    .matmul(&to_tensor(&p.teacher.embed_y(&by)?, &dev)?.t()?)?;
                let at_step = |e: AlignError| match e {
                    AlignError::Cancelled => AlignError::Cancelled,
                    e => AlignError::Numerical(format!("KLOT at step {step}: {e}")),
                };
                let (kl, g) = match p.klot.as_mut() {
                    Some(klot) => {
                        let ks_v = ks.flatten_all()?.to_vec1::<f32>()?;
                        let kt_v = kt.flatten_all()?.to_vec1::<f32>()?;
                        let out = klot
                            .step(&ks_v, &kt_v, cfg.klot.eps_s, cfg.klot.eps_t, cfg.klot.iters)
                            .map_err(at_step)?;
                        (
                            out.kl,
                            Tensor::from_slice(klot.grad(), (batch, batch), &dev)?,
                        )
                    }
                    None => {
                        let out = klot_device::step_cancellable(
                            &ks,
                            &kt,
                            cfg.klot.eps_s,
                            cfg.klot.eps_t,
                            cfg.klot.iters,
                            &cfg.cancel,
                        )
                        .map_err(at_step)?;
                        (out.kl, out.grad)
                    }
                };
                let surrogate = (ks * g)?.sum_all()?;
                ((sig + (surrogate * alpha)?)?, Some(kl))
            }
            None => (sig, None),
        };
        let total = sig_value + alpha * kl.unwrap_or(0.0);
        if !total.is_finite() {
            return Err(AlignError::Numerical(format!(
                "{name}: loss is NaN/Inf at step {step} (siglip {sig_value}, klot {kl:?}); \
                 try a lower optim.lr or a larger klot.eps_s"
            )));
        }
        let lr = opt.schedule().lr(step);
        let grads = loss.backward()?;
        opt.step(&grads)?;
        log.push(StepRecord {
            siglip: sig_value,
            klot: kl,
            total,
            lr,
        });
        let report = Progress {
            phase: crate::progress::Phase::Train,
            stage: name.to_string(),
            step: step + 1,
            total: steps,
            loss: Some(total),
        };
        if progress(&report).is_break() {
            return Err(AlignError::Cancelled);
        }
    }

    let scalar = |v: &Var| -> Result<f64, AlignError> {
        Ok(v.as_tensor()
            .flatten_all()?
            .to_vec1::<f32>()?
            .first()
            .copied()
            .unwrap_or(0.0) as f64)
    };
    // The fitted heads always live on the CPU: checkpoints, embedding and serving read them
    // there, whatever device trained them.
    Ok(StudentHeads {
        name: name.to_string(),
        x: cpu_head(&head_x)?,
        y: cpu_head(&head_y)?,
        log_scale: scalar(&log_scale)?,
        logit_bias: scalar(&logit_bias)?,
        log,
        notes,
    })
}

struct UnpairedPool<'t, T: ?Sized> {
    /// K* of a batch = teacher.embed_x(rows) . teacher.embed_y(rows)^T.
    teacher: &'t T,
    /// The CPU engine's workspace; `None` runs the step on the device (`klot_device`).
    klot: Option<Klot>,
}

/// The unpaired batch actually used, and a note when it differs from `wanted`.
///
/// Sampling without replacement needs B <= pool on both sides. A pool of fewer than 2 samples
/// cannot carry a transport plan at all, so that is an error even when capping is allowed.
pub fn effective_batch(
    wanted: usize,
    cap: bool,
    images: usize,
    texts: usize,
) -> Result<(usize, Vec<String>), AlignError> {
    let pool = images.min(texts);
    if pool >= wanted {
        return Ok((wanted, Vec::new()));
    }
    let which = if images <= texts { "images" } else { "texts" };
    if !cap || pool < 2 {
        return Err(AlignError::NotEnoughData(format!(
            "{pool} unpaired {which} but klot.batch = {wanted}: lower klot.batch to at most \
             {pool}, add unpaired {which}, {}or set klot.alpha = 0 (pairs-only SigLIP)",
            if pool >= 2 {
                "set klot.cap_batch = true, "
            } else {
                ""
            }
        )));
    }
    Ok((
        pool,
        vec![format!(
            "unpaired batch capped at {pool} (klot.batch = {wanted}, only {images} unpaired \
             images and {texts} texts)"
        )],
    ))
}

/// The most f32 elements one tensor of a fit may hold (2^31, 8 GiB): a sanity bound the engine
/// checks itself so a huge `heads.dim` or `klot.batch` is an error before anything is
/// allocated, never an abort. Callers (the daemon) enforce their own, smaller caps first.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 31;

/// Refuse configurations whose tensors would not fit: `d_in x heads.dim` weights and, with a
/// KLOT term, `klot.batch^2` plans.
fn check_sizes(cfg: &AlignConfig, d_in: usize) -> Result<(), AlignError> {
    let too_big = |what: &str, n: Option<usize>| match n {
        Some(n) if n <= MAX_TENSOR_ELEMENTS => Ok(()),
        _ => Err(AlignError::InvalidConfig(format!(
            "{what} would need more than {MAX_TENSOR_ELEMENTS} elements in one tensor"
        ))),
    };
    too_big(
        &format!("heads.dim = {} (x {d_in} input features)", cfg.heads.dim),
        cfg.heads.dim.checked_mul(d_in.max(1)),
    )?;
    if cfg.klot.alpha > 0.0 {
        too_big(
            &format!("klot.batch = {} (a batch x batch plan)", cfg.klot.batch),
            cfg.klot.batch.checked_mul(cfg.klot.batch),
        )?;
    }
    Ok(())
}

fn check_config(cfg: &AlignConfig) -> Result<(), AlignError> {
    let bad = |m: String| Err(AlignError::InvalidConfig(m));
    if cfg.heads.dim == 0 {
        return bad("heads.dim must be >= 1".into());
    }
    if cfg.optim.steps == 0 {
        return bad("optim.steps must be >= 1".into());
    }
    let a = cfg.klot.alpha;
    if !(a.is_finite() && a >= 0.0) {
        return bad(format!("klot.alpha must be >= 0, got {a}"));
    }
    if a > 0.0 {
        if cfg.klot.batch < 2 {
            return bad("klot.batch must be >= 2".into());
        }
        for (n, e) in [("eps_s", cfg.klot.eps_s), ("eps_t", cfg.klot.eps_t)] {
            if !(e.is_finite() && e > 0.0) {
                return bad(format!("klot.{n} must be > 0, got {e}"));
            }
        }
        if cfg.klot.iters == 0 {
            return bad("klot.iters must be >= 1".into());
        }
    }
    Ok(())
}

/// Register one head's parameters in the VarMap with the given initial values, then load it
/// through the VarBuilder so its tensors are the trainable variables.
#[allow(clippy::too_many_arguments)]
fn make_head(
    varmap: &VarMap,
    vb: &VarBuilder,
    prefix: &str,
    d_in: usize,
    d_out: usize,
    eps: f64,
    init: HeadInitValues,
    params: &mut Vec<(Var, bool)>,
) -> Result<Head, AlignError> {
    let entries = [
        ("ln.weight", init.ln_weight, false),
        ("ln.bias", init.ln_bias, false),
        ("linear.weight", init.weight, true),
        ("linear.bias", init.bias, false),
    ];
    let mut vars = varmap
        .data()
        .lock()
        .map_err(|_| AlignError::Numerical("VarMap lock poisoned".into()))?;
    for (name, value, decay) in entries {
        let var = Var::from_tensor(&value)?;
        params.push((var.clone(), decay));
        vars.insert(format!("{prefix}.{name}"), var);
    }
    drop(vars);
    Ok(Head::load(vb.pp(prefix), d_in, d_out, eps)?)
}

/// Copy of a head whose tensors no longer track the training variables.
fn cpu_head(h: &Head) -> Result<Head, AlignError> {
    let cpu = |t: &Tensor| t.detach().to_device(&Device::Cpu);
    Ok(Head {
        ln_weight: cpu(&h.ln_weight)?,
        ln_bias: cpu(&h.ln_bias)?,
        weight: cpu(&h.weight)?,
        bias: cpu(&h.bias)?,
        ln_eps: h.ln_eps,
    })
}

/// The training device named by `AlignConfig::device` (empty = cpu).
fn train_device(spec: &str) -> Result<Device, AlignError> {
    if spec.is_empty() {
        return Ok(Device::Cpu);
    }
    crate::device::parse_device(spec)
        .map_err(|e| AlignError::InvalidConfig(format!("training device: {e}")))
}

/// Rows per chunk of the streamed teacher init.
const INIT_CHUNK: usize = 4096;

/// `k` distinct row indices out of `n`.
fn sample_rows(rng: &mut ChaCha8Rng, n: usize, k: usize) -> Vec<usize> {
    rand::seq::index::sample(rng, n, k).into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HeadInit, OptimKind};
    use crate::progress;
    use crate::synthetic::{Platonic, PlatonicSpec, mean_r1};
    use crate::teacher::CcaTeacher;

    /// A fixed linear teacher for exercising the loop's mechanics (the real one is the CCA
    /// teacher): coordinates are the inputs times a fixed matrix.
    struct LinearTeacher {
        ax: Matrix, // k x dx
        ay: Matrix, // k x dy
    }

    impl Aligned for LinearTeacher {
        fn name(&self) -> &str {
            "linear"
        }
        fn embed_x(&self, x: &Matrix) -> Result<Matrix, AlignError> {
            Ok(self.coords_x(x)?.l2_normalized())
        }
        fn embed_y(&self, y: &Matrix) -> Result<Matrix, AlignError> {
            Ok(self.coords_y(y)?.l2_normalized())
        }
        fn export_state(&self) -> Result<MethodState, AlignError> {
            Ok(MethodState {
                method: "linear".into(),
                tensors: vec![
                    ("ax".into(), self.ax.clone()),
                    ("ay".into(), self.ay.clone()),
                ],
                meta: serde_json::Value::Null,
            })
        }
    }

    impl StudentTeacher for LinearTeacher {
        fn components(&self) -> usize {
            self.ax.rows
        }
        fn coords_x(&self, x: &Matrix) -> Result<Matrix, AlignError> {
            Ok(x.l2_normalized().matmul_t(&self.ax))
        }
        fn coords_y(&self, y: &Matrix) -> Result<Matrix, AlignError> {
            Ok(y.l2_normalized().matmul_t(&self.ay))
        }
    }

    fn small_cfg(alpha: f64, init: HeadInit) -> AlignConfig {
        let mut c = AlignConfig::default();
        c.heads.dim = 32;
        c.heads.init = init;
        c.klot.alpha = alpha;
        c.klot.batch = 32;
        c.klot.iters = 30;
        c.optim.kind = OptimKind::Adam;
        c.optim.lr = 1e-2;
        c.optim.steps = 40;
        c.optim.warmup_frac = 0.0;
        c.optim.cosine = false;
        c
    }

    fn data() -> (AlignData, Matrix, Matrix) {
        crate::testing::small_platonic(3).split(60, 100, 80, 1)
    }

    fn teacher(d: &AlignData) -> LinearTeacher {
        let k = 8;
        let mut ax = Matrix::zeros(k, d.dx());
        let mut ay = Matrix::zeros(k, d.dy());
        for i in 0..k {
            ax.data[i * d.dx() + i] = 1.0;
            ay.data[i * d.dy() + i] = 1.0;
        }
        LinearTeacher { ax, ay }
    }

    #[test]
    fn training_device_is_validated() {
        let (d, _, _) = data();
        let mut cfg = small_cfg(0.0, HeadInit::Random);
        cfg.device = "tpu".into();
        let e = fit_student::<LinearTeacher>(&d, None, &cfg, &mut progress::ignore).unwrap_err();
        assert!(
            matches!(e, AlignError::InvalidConfig(ref m) if m.contains("cuda")),
            "{e}"
        );
        #[cfg(not(feature = "cuda"))]
        {
            cfg.device = "cuda:0".into();
            let e =
                fit_student::<LinearTeacher>(&d, None, &cfg, &mut progress::ignore).unwrap_err();
            assert!(e.to_string().contains("--features cuda"), "{e}");
        }
        // Explicit cpu trains, and the heads come back on the CPU.
        cfg.device = "cpu".into();
        let h = fit_student::<LinearTeacher>(&d, None, &cfg, &mut progress::ignore).unwrap();
        assert!(h.x.weight.device().is_cpu());
    }

    /// Rejected pairs enter the loss: the held-out mismatches a pairs-only student scores
    /// highest (what an annotator would be shown and reject), given as negatives, score lower
    /// after training with them; the logged loss includes their term; bad shapes are typed.
    #[test]
    fn rejected_pairs_are_pushed_apart() {
        let (d, xt, yt) = data();
        let cfg = small_cfg(0.0, HeadInit::Random);
        let plain = fit_student::<LinearTeacher>(&d, None, &cfg, &mut progress::ignore).unwrap();
        let s = plain.score(&xt, &yt).unwrap();
        // Each held-out image's best-scoring wrong text: hard negatives.
        let rows: Vec<usize> = (0..xt.rows).collect();
        let wrong: Vec<usize> = rows
            .iter()
            .map(|&i| {
                (0..yt.rows)
                    .filter(|&j| j != i)
                    .max_by(|&a, &b| s.data[i * s.cols + a].total_cmp(&s.data[i * s.cols + b]))
                    .unwrap()
            })
            .collect();
        let mut with = d.clone();
        with.negatives = Some(crate::data::Negatives {
            x: xt.select_rows(&rows),
            y: yt.select_rows(&wrong),
        });
        let mean_wrong = |h: &StudentHeads| -> f64 {
            let s = h.score(&xt, &yt).unwrap();
            rows.iter()
                .map(|&i| s.data[i * s.cols + wrong[i]] as f64)
                .sum::<f64>()
                / rows.len() as f64
        };
        let neg = fit_student::<LinearTeacher>(&with, None, &cfg, &mut progress::ignore).unwrap();
        assert!(
            mean_wrong(&neg) < mean_wrong(&plain) - 0.02,
            "mean cosine of the rejected pairs: with negatives {}, without {}",
            mean_wrong(&neg),
            mean_wrong(&plain)
        );
        // Same initial weights, extra cells: the first logged loss is larger.
        assert!(neg.log[0].siglip > plain.log[0].siglip);
        // Mismatched negative shapes are a typed error, not a panic.
        let mut bad = with.clone();
        if let Some(n) = bad.negatives.as_mut() {
            n.y = yt.select_rows(&rows[..10]);
        }
        let e = fit_student::<LinearTeacher>(&bad, None, &cfg, &mut progress::ignore).unwrap_err();
        assert!(matches!(e, AlignError::DimensionMismatch { .. }), "{e}");
    }

    #[test]
    fn pairs_only_siglip_learns_and_is_deterministic() {
        let (d, xt, yt) = data();
        let cfg = small_cfg(0.0, HeadInit::Random);
        let a = fit_student::<LinearTeacher>(&d, None, &cfg, &mut progress::ignore).unwrap();
        assert_eq!(a.name(), "siglip");
        assert_eq!(a.log.len(), 40);
        let first = a.log[0].siglip;
        let last = a.log[39].siglip;
        assert!(last < 0.5 * first, "siglip loss {first} -> {last}");
        // Held-out retrieval is far above chance (1/80).
        let r1 = mean_r1(&a.score(&xt, &yt).unwrap());
        assert!(r1 > 0.1, "held-out R@1 {r1}");
        let b = fit_student::<LinearTeacher>(&d, None, &cfg, &mut progress::ignore).unwrap();
        assert_eq!(
            a.x.weight.to_vec2::<f32>().unwrap(),
            b.x.weight.to_vec2::<f32>().unwrap()
        );
        let mut other = cfg.clone();
        other.seed = 1;
        let c = fit_student::<LinearTeacher>(&d, None, &other, &mut progress::ignore).unwrap();
        assert_ne!(
            a.x.weight.to_vec2::<f32>().unwrap(),
            c.x.weight.to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn klot_term_is_reported_and_checkpoint_round_trips() {
        let (d, xt, yt) = data();
        let t = teacher(&d);
        let cfg = small_cfg(1.0, HeadInit::Teacher);
        let s = fit_student(&d, Some(&t), &cfg, &mut progress::ignore).unwrap();
        assert_eq!(s.name(), "sotalign");
        assert!(
            s.log
                .iter()
                .all(|r| r.klot.is_some_and(|k| k.is_finite() && k >= -1e-6))
        );
        let back =
            StudentHeads::from_tensors("sotalign", s.tensors().unwrap(), cfg.heads.ln_eps).unwrap();
        let a = s.score(&xt, &yt).unwrap();
        let b = back.score(&xt, &yt).unwrap();
        assert_eq!(a, b);
    }

    /// The device KLOT engine (the GPU path, run here on candle's CPU device) trains the same
    /// heads as the CPU engine: the two solve the same plans by different algorithms, so the
    /// per-step KL values agree closely and the trained heads score the same held-out pairs.
    #[test]
    fn device_klot_engine_matches_the_cpu_engine() {
        let (d, xt, yt) = data();
        let t = teacher(&d);
        let mut cfg = small_cfg(1.0, HeadInit::Teacher);
        cfg.klot.engine = KlotEngine::Cpu;
        let a = fit_student(&d, Some(&t), &cfg, &mut progress::ignore).unwrap();
        cfg.klot.engine = KlotEngine::Device;
        let b = fit_student(&d, Some(&t), &cfg, &mut progress::ignore).unwrap();
        for (ra, rb) in a.log.iter().zip(&b.log) {
            let (ka, kb) = (ra.klot.unwrap(), rb.klot.unwrap());
            assert!(
                (ka - kb).abs() <= 1e-2 * ka.abs().max(1.0),
                "KL per step: cpu {ka} vs device {kb}"
            );
        }
        let (ra, rb) = (
            mean_r1(&a.score(&xt, &yt).unwrap()),
            mean_r1(&b.score(&xt, &yt).unwrap()),
        );
        assert!(
            (ra - rb).abs() <= 0.05,
            "held-out R@1 cpu {ra} vs device {rb}"
        );
    }

    #[test]
    fn bad_input_gets_typed_errors() {
        let (d, _, _) = data();
        let t = teacher(&d);
        // Teacher needed but missing.
        let cfg = small_cfg(1.0, HeadInit::Random);
        assert!(matches!(
            fit_student::<LinearTeacher>(&d, None, &cfg, &mut progress::ignore),
            Err(AlignError::InvalidConfig(_))
        ));
        // Fewer unpaired samples than the batch, capping turned off.
        let mut cfg = small_cfg(1.0, HeadInit::Teacher);
        cfg.klot.batch = 500;
        cfg.klot.cap_batch = false;
        match fit_student(&d, Some(&t), &cfg, &mut progress::ignore) {
            Err(AlignError::NotEnoughData(m)) => assert!(m.contains("klot.batch"), "{m}"),
            other => panic!("expected NotEnoughData, got {:?}", other.map(|_| ())),
        }
        // Dimension mismatch at embed time.
        let cfg = small_cfg(0.0, HeadInit::Random);
        let mut short = cfg.clone();
        short.optim.steps = 1;
        let s = fit_student::<LinearTeacher>(&d, None, &short, &mut progress::ignore).unwrap();
        assert!(matches!(
            s.embed_x(&Matrix::zeros(2, 5)),
            Err(AlignError::DimensionMismatch { .. })
        ));
        // A diverging learning rate is reported with its step.
        let mut hot = cfg.clone();
        hot.optim.lr = 1e30;
        hot.optim.kind = OptimKind::Lion;
        match fit_student::<LinearTeacher>(&d, None, &hot, &mut progress::ignore) {
            Err(AlignError::Numerical(m)) => assert!(m.contains("at step"), "{m}"),
            other => panic!("expected Numerical, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn small_pool_caps_the_batch_with_a_note() {
        // 100 unpaired images and texts: B = 500 becomes 100, recorded in the notes.
        let (d, _, _) = data();
        let t = teacher(&d);
        let mut cfg = small_cfg(1.0, HeadInit::Teacher);
        cfg.klot.batch = 500;
        cfg.optim.steps = 3;
        let s = fit_student(&d, Some(&t), &cfg, &mut progress::ignore).unwrap();
        assert_eq!(s.notes.len(), 1);
        assert!(s.notes[0].contains("capped at 100"), "{}", s.notes[0]);
        assert!(s.log.iter().all(|r| r.klot.is_some_and(f64::is_finite)));
        // No note when the pool is large enough; a pool of one sample is an error.
        assert_eq!(effective_batch(32, true, 100, 80).unwrap(), (32, vec![]));
        assert!(matches!(
            effective_batch(32, true, 1, 80),
            Err(AlignError::NotEnoughData(_))
        ));
    }

    #[test]
    fn progress_break_cancels() {
        let (d, _, _) = data();
        let cfg = small_cfg(0.0, HeadInit::Random);
        let mut seen = 0;
        let mut cb = |p: &Progress| {
            seen = p.step;
            if p.step == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        assert!(matches!(
            fit_student::<LinearTeacher>(&d, None, &cfg, &mut cb),
            Err(AlignError::Cancelled)
        ));
        assert_eq!(seen, 3);
    }

    /// The acceptance test: on platonic data with 50 pairs and 5,000 unpaired samples per
    /// side, SOTAlign (teacher init + KLOT) beats pairs-only SigLIP on held-out R@1.
    #[test]
    fn sotalign_beats_pairs_only_siglip_on_platonic_data() {
        let platonic = Platonic::new(PlatonicSpec::default()).unwrap();
        let (d, xt, yt) = platonic.split(50, 5000, 500, 11);
        // The reference preset (Adam lr 1e-3, D = 256, teacher init, alpha 1), shortened so the
        // test stays fast in debug builds: 100 steps with unpaired batches of 128.
        let mut cfg = AlignConfig::reference();
        cfg.optim.steps = 100;
        cfg.klot.batch = 128;
        let teacher = CcaTeacher::fit(&d, &cfg.teacher).unwrap();
        let sot = fit_student(&d, Some(&teacher), &cfg, &mut progress::ignore).unwrap();
        let mut sig_cfg = cfg.clone();
        sig_cfg.klot.alpha = 0.0;
        sig_cfg.heads.init = HeadInit::Random;
        let sig = fit_student(&d, None::<&CcaTeacher>, &sig_cfg, &mut progress::ignore).unwrap();
        let r_sot = mean_r1(&sot.score(&xt, &yt).unwrap());
        let r_sig = mean_r1(&sig.score(&xt, &yt).unwrap());
        let r_t = mean_r1(&teacher.score(&xt, &yt).unwrap());
        eprintln!("held-out R@1: sotalign {r_sot:.3}, siglip {r_sig:.3}, teacher {r_t:.3}");
        assert!(r_sot > r_sig, "sotalign {r_sot} vs siglip {r_sig}");
    }
}
