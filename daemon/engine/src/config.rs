//! Every hyper-parameter of every method, in one serialisable struct.
//!
//! Defaults follow the SOTAlign method description (ridge 0.1, D = 512, eps_s = 0.05,
//! eps_t = 0.01, 100 Sinkhorn iterations, Lion lr 1e-4, wd 1e-5, cosine schedule, 10% warm-up).
//! [`AlignConfig::reference`] reproduces the settings of the independent reference run
//! (`tests/fixtures/reference/PROTOCOL.md`): D = 256, Adam lr 1e-3, 300 steps, teacher init,
//! unpaired batch 256.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlignConfig {
    pub seed: u64,
    pub teacher: TeacherConfig,
    pub procrustes: ProcrustesConfig,
    pub csa: CsaConfig,
    pub asif: AsifConfig,
    pub heads: HeadsConfig,
    pub siglip: SiglipConfig,
    pub klot: KlotConfig,
    pub optim: OptimConfig,
    pub auto: AutoConfig,
    /// Where the student heads train: `cpu` (default) or `cuda[:N]` on a build with the `cuda`
    /// feature. Set by the caller (`sotalign serve --device`); a property of the machine, not
    /// of the method, so it is neither serialised nor read from config overrides. Empty = cpu.
    #[serde(skip, default = "cpu_device")]
    pub device: String,
    /// Set by the caller to stop a fit from outside, checked between training steps and
    /// between Sinkhorn iterations. Never serialised.
    #[serde(skip)]
    pub cancel: crate::progress::Cancel,
}

fn cpu_device() -> String {
    "cpu".into()
}

/// Search space and validation of the `auto` method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoConfig {
    /// Number of validation sets averaged: folds of the k-fold scheme, or random held-out sets
    /// of the protocol's `max(5, round(0.2 n))` pairs (seed = split index) with
    /// `scheme = random`. `folds` is an alias. Several sets average out the noise of a 5-80
    /// pair validation set. Default 10 folds: each fold's fit sees 90% of the pairs, closer to
    /// the final fit on all n than 5 folds' 80% (the fold size biases the choice towards
    /// methods that saturate early), and every pair is still validated exactly once.
    #[serde(alias = "folds")]
    pub splits: usize,
    /// Tie tolerance in standard errors: the simplest candidate whose mean validation score is
    /// within `tie_se` standard errors (of its paired difference to the best, over the splits)
    /// of the best wins. 0 = plain argmax. Guards against picking a complex candidate on noise.
    pub tie_se: f64,
    /// Relative ridges tried for the teacher (`lambda * tr(C)/d`), besides the absolute one.
    pub ridge_grid: Vec<f64>,
    /// ASIF powers tried (plain and centred).
    pub asif_p_grid: Vec<f64>,
    /// Weights of the CCA teacher in CCA + ASIF score blends ([`crate::blend`]); empty = none.
    pub blend_weights: Vec<f64>,
    /// How the validation sets are drawn: `kfold` (`splits` disjoint folds, every pair
    /// validated exactly once: the most validation queries a small n can give) or `random`
    /// (`splits` independent draws of the protocol's `max(5, round(0.2 n))` pairs).
    pub scheme: ValidationScheme,
    /// Learning-curve correction: each candidate is also fitted on this fraction of each fold's
    /// training pairs (same validation pairs), and its score is extrapolated, linearly in
    /// log(pairs), from the fold's training size to the n pairs of the final fit. Why: the
    /// validation fits see 80% of the pairs, the final fit all of them, and methods differ in
    /// how much they gain from more pairs (CCA keeps up to n - 1 components, Procrustes one
    /// rotation), so unextrapolated validation favours the methods that saturate early.
    /// 0 (or >= 1) = off: score at the fold's training size only. Off by default: the fusion
    /// rule of docs/RESULTS.md was measured without it (10 folds instead), and it doubles the
    /// cost.
    pub curve_fraction: f64,
    /// Which candidates are validated: `fusions` (default: three equal-weight score fusions
    /// of the method families, [`crate::blend`]) or `full` (every single method with its
    /// hyper-parameter grid, CCA + ASIF blends and the fusions: about 45 candidates).
    pub grid: AutoGrid,
    /// Also validate the trained methods (off by default: each is a training run per fold):
    /// pairs-only SigLIP heads (random init), teacher-initialised heads with alpha = 0, and
    /// SOTAlign at every positive alpha of `klot.alpha_grid` times every `eps_grid` value.
    /// This is how `auto` chooses head init, alpha and eps. On the reference splits SOTAlign
    /// sits at its teacher's level (docs/RESULTS.md), so the default leaves them out.
    pub trained: bool,
    /// Student temperatures `klot.eps_s` tried for the SOTAlign candidates; empty = only the
    /// configured one.
    pub eps_grid: Vec<f64>,
    /// Distractors per modality in each validation fold: above this many unpaired items, a
    /// seeded subset of this size (per fold) stands in for the whole pool; 0 = the whole pool.
    /// Why: every candidate of every fold embeds its distractors, so with the whole pool the
    /// validation grows linearly with it (most of a re-align's first stage at 10k unpaired per
    /// side, docs/BENCHMARKS.md). The protocol's pools (at most 549 per side) are below it.
    pub max_distractors: usize,
}

/// The candidate set of `auto`.
///
/// Why `fusions` is the default: on the reference splits the full grid loses 0.2-1.3 points
/// of R@1 to the best single method at n <= 100, because 25-100 validation queries in all
/// cannot rank ~45 candidates whose true differences are a fraction of a point (winner's curse),
/// while fusions of the families are within 0.07 points of the best of their parts at n = 25
/// and above it from n = 50 on, leaving only three, all good, candidates to rank
/// (docs/RESULTS.md has both measurements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoGrid {
    Fusions,
    Full,
}

/// How `auto` draws its validation sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationScheme {
    KFold,
    Random,
}

impl Default for AutoConfig {
    fn default() -> Self {
        Self {
            splits: 10,
            tie_se: 0.5,
            ridge_grid: vec![0.03, 0.1, 0.3, 1.0],
            asif_p_grid: vec![4.0, 8.0, 16.0],
            blend_weights: vec![0.25, 0.5, 0.75],
            scheme: ValidationScheme::KFold,
            curve_fraction: 0.0,
            grid: AutoGrid::Fusions,
            trained: false,
            eps_grid: Vec::new(),
            max_distractors: 2000,
        }
    }
}

/// Ridge CCA teacher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TeacherConfig {
    /// Ridge added to each covariance: C + lambda I.
    pub lambda: f64,
    /// When true, `lambda` is relative: the ridge is lambda * tr(C) / d (scaled to the features).
    pub lambda_relative: bool,
    /// Keep components whose canonical correlation exceeds `rel_tol` times the largest.
    pub rel_tol: f64,
    /// Optional cap on the number of components (always at most n - 1).
    pub max_components: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcrustesConfig {
    /// ZCA-whiten each modality with (C + shrink tr(C)/d I)^-1/2 before the orthogonal fit.
    pub whiten: bool,
    pub whiten_shrink: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CsaConfig {
    /// Number of CCA components used; `None` = all kept components.
    pub s: Option<usize>,
    /// Candidates tried when `s` is chosen on validation.
    pub s_grid: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AsifConfig {
    /// Keep the top-k anchor similarities (k = min(k, n)).
    pub k: usize,
    /// Exponent applied to the kept similarities.
    pub p: f64,
    /// Centre anchors and queries on the paired means (and re-normalise) before the cosines
    /// (the reference's `asif_c`).
    pub centre: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadInit {
    /// W ~ N(0, 1/d_in), zero bias.
    Random,
    /// Least-squares fit of LN(x) onto the teacher's canonical coordinates, rescaled.
    Teacher,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeadsConfig {
    /// Output dimension D of each head.
    pub dim: usize,
    pub init: HeadInit,
    pub ln_eps: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SiglipConfig {
    /// Initial log of the logit scale (log 20).
    pub logit_scale_init: f64,
    pub bias_init: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KlotConfig {
    /// Weight of the KLOT term; 0 gives pairs-only SigLIP heads.
    pub alpha: f64,
    /// Student Sinkhorn temperature.
    pub eps_s: f64,
    /// Teacher Sinkhorn temperature.
    pub eps_t: f64,
    /// Sinkhorn iterations per plan.
    pub iters: usize,
    /// Unpaired batch size B (B images and B texts per step).
    pub batch: usize,
    /// When a pool holds fewer than `batch` unpaired samples: `true` (default) lowers B to the
    /// smaller pool and records a note (small budgets of a fixed dataset leave small pools, e.g.
    /// 149 per side at n = 400 on Tux Paint), `false` makes it a `NotEnoughData` error.
    pub cap_batch: bool,
    /// Candidates tried when alpha is chosen on validation.
    pub alpha_grid: Vec<f64>,
    /// Which KLOT implementation a training step uses.
    pub engine: KlotEngine,
}

/// Where the KLOT step runs during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlotEngine {
    /// The CPU engine when training on the CPU (fastest there), the device engine otherwise.
    #[default]
    Auto,
    /// Always the fused CPU engine (`klot.rs`): affinities copied to the host and back.
    Cpu,
    /// Always candle tensor ops on the training device (`klot_device.rs`).
    Device,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimKind {
    Lion,
    Adam,
    AdamW,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimConfig {
    pub kind: OptimKind,
    pub lr: f64,
    pub weight_decay: f64,
    pub steps: usize,
    /// Fraction of steps with linear warm-up before the cosine decay (0 = constant lr).
    pub warmup_frac: f64,
    /// Cosine decay to zero after warm-up; false keeps the lr constant.
    pub cosine: bool,
}

impl Default for AlignConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            teacher: TeacherConfig::default(),
            procrustes: ProcrustesConfig::default(),
            csa: CsaConfig::default(),
            asif: AsifConfig::default(),
            heads: HeadsConfig::default(),
            siglip: SiglipConfig::default(),
            klot: KlotConfig::default(),
            optim: OptimConfig::default(),
            auto: AutoConfig::default(),
            device: cpu_device(),
            cancel: Default::default(),
        }
    }
}

impl Default for TeacherConfig {
    fn default() -> Self {
        Self {
            lambda: 0.1,
            lambda_relative: false,
            rel_tol: 1e-6,
            max_components: None,
        }
    }
}

impl Default for ProcrustesConfig {
    fn default() -> Self {
        Self {
            whiten: false,
            whiten_shrink: 0.1,
        }
    }
}

impl Default for CsaConfig {
    fn default() -> Self {
        Self {
            s: None,
            s_grid: vec![8, 16, 32, 64, 128],
        }
    }
}

impl Default for AsifConfig {
    fn default() -> Self {
        Self {
            k: 800,
            p: 8.0,
            centre: false,
        }
    }
}

impl Default for HeadsConfig {
    fn default() -> Self {
        Self {
            dim: 512,
            init: HeadInit::Teacher,
            ln_eps: 1e-5,
        }
    }
}

impl Default for SiglipConfig {
    fn default() -> Self {
        Self {
            logit_scale_init: 20f64.ln(),
            bias_init: -10.0,
        }
    }
}

impl Default for KlotConfig {
    fn default() -> Self {
        Self {
            alpha: 1.0,
            eps_s: 0.05,
            eps_t: 0.01,
            iters: 100,
            batch: 256,
            cap_batch: true,
            alpha_grid: vec![0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0],
            engine: KlotEngine::Auto,
        }
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            kind: OptimKind::Lion,
            lr: 1e-4,
            weight_decay: 1e-5,
            steps: 1000,
            warmup_frac: 0.1,
            cosine: true,
        }
    }
}

impl AlignConfig {
    /// The settings of the independent reference run (PROTOCOL.md).
    pub fn reference() -> Self {
        let mut c = Self::default();
        c.heads.dim = 256;
        c.heads.init = HeadInit::Teacher;
        c.optim = OptimConfig {
            kind: OptimKind::Adam,
            lr: 1e-3,
            weight_decay: 0.0,
            steps: 300,
            warmup_frac: 0.0,
            cosine: false,
        };
        c.klot.batch = 256;
        c
    }

    /// A named preset: `default` or `reference`.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "default" => Some(Self::default()),
            "reference" => Some(Self::reference()),
            _ => None,
        }
    }
}
