//! Optimisers for the student heads: Lion (default), Adam, AdamW, with a warm-up + cosine
//! learning-rate schedule. Written here rather than taken from candle-nn because candle-nn has
//! no Lion and the update rules should be visible next to the method they serve.
//!
//! Determinism: the updates are pure tensor arithmetic on the CPU, so a fixed seed (which fixes
//! the initial weights and the batch sampling) gives bit-identical training runs.
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::AlignError;
use crate::config::{OptimConfig, OptimKind};

/// Learning rate at each step: linear warm-up over `warmup_frac * steps` steps, then cosine
/// decay to 0 (or constant when `cosine` is false).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub base: f64,
    pub steps: usize,
    pub warmup: usize,
    pub cosine: bool,
}

impl LrSchedule {
    pub fn new(cfg: &OptimConfig) -> Self {
        let warmup = ((cfg.warmup_frac.clamp(0.0, 1.0)) * cfg.steps as f64).round() as usize;
        Self {
            base: cfg.lr,
            steps: cfg.steps,
            warmup,
            cosine: cfg.cosine,
        }
    }

    /// Learning rate of step `t` (0-based).
    pub fn lr(&self, t: usize) -> f64 {
        if t < self.warmup {
            return self.base * (t + 1) as f64 / self.warmup as f64;
        }
        if !self.cosine {
            return self.base;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((t - self.warmup) as f64 / span).min(1.0);
        0.5 * self.base * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

struct Slot {
    var: Var,
    decay: bool,
    m: Tensor,
    v: Option<Tensor>,
}

/// A first-order optimiser over a fixed list of variables.
pub struct Optimizer {
    kind: OptimKind,
    weight_decay: f64,
    schedule: LrSchedule,
    slots: Vec<Slot>,
    t: usize,
}

const LION_BETAS: (f64, f64) = (0.9, 0.99);
const ADAM_BETAS: (f64, f64) = (0.9, 0.999);
const ADAM_EPS: f64 = 1e-8;

impl Optimizer {
    /// `params`: each variable with whether weight decay applies to it (weights yes; biases,
    /// LayerNorm parameters and the SigLIP scale/bias no).
    pub fn new(params: Vec<(Var, bool)>, cfg: &OptimConfig) -> Result<Self, AlignError> {
        if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
            return Err(AlignError::InvalidConfig(format!(
                "optim.lr must be > 0, got {}",
                cfg.lr
            )));
        }
        if !(cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0) {
            return Err(AlignError::InvalidConfig(
                "optim.weight_decay must be >= 0".into(),
            ));
        }
        let mut slots = Vec::with_capacity(params.len());
        for (var, decay) in params {
            let m = var.as_tensor().zeros_like()?;
            let v = match cfg.kind {
                OptimKind::Lion => None,
                OptimKind::Adam | OptimKind::AdamW => Some(var.as_tensor().zeros_like()?),
            };
            slots.push(Slot { var, decay, m, v });
        }
        Ok(Self {
            kind: cfg.kind,
            weight_decay: cfg.weight_decay,
            schedule: LrSchedule::new(cfg),
            slots,
            t: 0,
        })
    }

    pub fn schedule(&self) -> LrSchedule {
        self.schedule
    }

    /// Apply one update from `grads`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<(), AlignError> {
        let lr = self.schedule.lr(self.t);
        self.t += 1;
        let wd = self.weight_decay;
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let p = s.var.as_tensor();
            let decay = if s.decay { wd } else { 0.0 };
            let new_p = match self.kind {
                OptimKind::Lion => {
                    // update = sign(b1 m + (1 - b1) g); p -= lr (update + wd p); m = b2 m + (1 - b2) g
                    let (b1, b2) = LION_BETAS;
                    let c = ((&s.m * b1)? + (g * (1.0 - b1))?)?;
                    let mut upd = c.sign()?;
                    if decay > 0.0 {
                        upd = (upd + (p * decay)?)?;
                    }
                    s.m = ((&s.m * b2)? + (g * (1.0 - b2))?)?;
                    (p - (upd * lr)?)?
                }
                OptimKind::Adam | OptimKind::AdamW => {
                    let (b1, b2) = ADAM_BETAS;
                    // Adam: L2 penalty folded into the gradient; AdamW: decoupled decay.
                    let g = if self.kind == OptimKind::Adam && decay > 0.0 {
                        (g + (p * decay)?)?
                    } else {
                        g.clone()
                    };
                    s.m = ((&s.m * b1)? + (&g * (1.0 - b1))?)?;
                    let v =
                        s.v.as_ref()
                            .ok_or_else(|| AlignError::Numerical("Adam state missing".into()))?;
                    let v = ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                    let t = self.t as i32;
                    let mhat = (&s.m / (1.0 - b1.powi(t)))?;
                    let vhat = (&v / (1.0 - b2.powi(t)))?;
                    s.v = Some(v);
                    let mut upd = (mhat / (vhat.sqrt()? + ADAM_EPS)?)?;
                    if self.kind == OptimKind::AdamW && decay > 0.0 {
                        upd = (upd + (p * decay)?)?;
                    }
                    (p - (upd * lr)?)?
                }
            };
            s.var.set(&new_p)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn cfg(kind: OptimKind, lr: f64, steps: usize) -> OptimConfig {
        OptimConfig {
            kind,
            lr,
            weight_decay: 0.0,
            steps,
            warmup_frac: 0.0,
            cosine: false,
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let s = LrSchedule::new(&OptimConfig {
            warmup_frac: 0.1,
            cosine: true,
            steps: 100,
            lr: 1.0,
            ..cfg(OptimKind::Lion, 1.0, 100)
        });
        assert_eq!(s.warmup, 10);
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(55) - 0.5).abs() < 1e-12);
        assert!(s.lr(99) < 0.001 && s.lr(99) > 0.0);
    }

    /// Each optimiser minimises a quadratic ||p - target||^2.
    #[test]
    fn optimisers_minimise_a_quadratic() {
        let dev = Device::Cpu;
        // Lion's sign steps oscillate around the optimum with amplitude ~lr: decay the lr.
        for (kind, lr, steps) in [
            (OptimKind::Lion, 0.02, 600),
            (OptimKind::Adam, 0.05, 400),
            (OptimKind::AdamW, 0.05, 400),
        ] {
            let target = Tensor::new(&[1.5f32, -2.0, 0.25], &dev).unwrap();
            let p = Var::from_tensor(&Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap())
                .unwrap();
            let c = OptimConfig {
                cosine: true,
                ..cfg(kind, lr, steps)
            };
            let mut opt = Optimizer::new(vec![(p.clone(), false)], &c).unwrap();
            for _ in 0..steps {
                let loss = (p.as_tensor() - &target)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let grads = loss.backward().unwrap();
                opt.step(&grads).unwrap();
            }
            let got = p.as_tensor().to_vec1::<f32>().unwrap();
            for (g, w) in got.iter().zip([1.5f32, -2.0, 0.25]) {
                assert!((g - w).abs() < 0.05, "{kind:?}: {got:?}");
            }
        }
    }

    /// Lion's first step moves every coordinate by exactly lr (sign update).
    #[test]
    fn lion_first_step_is_a_sign_step() {
        let dev = Device::Cpu;
        let p = Var::from_tensor(&Tensor::new(&[0.0f32, 0.0], &dev).unwrap()).unwrap();
        let mut opt =
            Optimizer::new(vec![(p.clone(), false)], &cfg(OptimKind::Lion, 0.1, 10)).unwrap();
        let loss = (p.as_tensor() * &Tensor::new(&[3.0f32, -0.001], &dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        let got = p.as_tensor().to_vec1::<f32>().unwrap();
        assert!(
            (got[0] + 0.1).abs() < 1e-7 && (got[1] - 0.1).abs() < 1e-7,
            "{got:?}"
        );
    }
}
