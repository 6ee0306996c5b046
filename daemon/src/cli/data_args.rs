//! Arguments shared by `align` and `eval`: where the embeddings, the manifest or the reference
//! splits are, and how the config is built.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use sotalign_engine::{AlignConfig, AlignData};
use crate::io::manifest::{EvalSet, Manifest};
use crate::io::read_embeddings;
use crate::io::reference::Reference;

/// Input data: either embeddings + manifest, or one cell of the reference splits.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Image embeddings: `.npy` (f32/f16, N x dx) or `.safetensors` (`file.safetensors:TENSOR`
    /// when it holds several tensors).
    #[arg(long, requires_all = ["texts", "manifest"], conflicts_with = "reference")]
    pub images: Option<String>,
    /// Text embeddings (same formats).
    #[arg(long)]
    pub texts: Option<String>,
    /// JSONL manifest: pairs `{"image": i, "text": j, "caption": .., "split": "train"|"test"}`,
    /// unpaired `{"image": i}` / `{"text": j, "caption": ..}`.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Directory of the reference fixtures (tests/fixtures/reference): use its exact splits.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Reference split: seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Reference split: number of pairs (25, 50, 100, 200, 400).
    #[arg(long, default_value_t = 100)]
    pub n: usize,
}

/// `path` or `path:tensor` (the suffix only for safetensors files).
fn split_tensor(spec: &str) -> (PathBuf, Option<String>) {
    if let Some((p, t)) = spec.rsplit_once(':')
        && p.ends_with(".safetensors")
    {
        return (PathBuf::from(p), Some(t.to_string()));
    }
    (PathBuf::from(spec), None)
}

impl DataArgs {
    /// The training data and the test set (if the inputs define one).
    pub fn load(&self) -> Result<(AlignData, Option<EvalSet>)> {
        if let Some(dir) = &self.reference {
            let r = Reference::load(dir)
                .with_context(|| format!("loading reference fixtures from {}", dir.display()))?;
            let run = r.run(self.seed, self.n)?;
            return Ok((r.align_data(run), Some(r.test_set())));
        }
        let (Some(images), Some(texts), Some(manifest)) =
            (&self.images, &self.texts, &self.manifest)
        else {
            bail!("give --images, --texts and --manifest, or --reference DIR");
        };
        let (ip, it) = split_tensor(images);
        let (tp, tt) = split_tensor(texts);
        let img = read_embeddings(&ip, it.as_deref())?;
        let txt = read_embeddings(&tp, tt.as_deref())?;
        let m = Manifest::read(manifest)?;
        let (data, test) = m
            .assemble(&img, &txt)
            .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.display()))?;
        Ok((data, test))
    }
}

/// How the hyper-parameters are set.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Preset: `default` (the method's defaults) or `reference` (the settings of the
    /// evaluation protocol in tests/fixtures/reference/PROTOCOL.md, not docs/PROTOCOL.md).
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// JSON file with an AlignConfig (missing fields keep the preset's values).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Teacher ridge lambda.
    #[arg(long)]
    pub lambda: Option<f64>,
    /// Make the ridge relative to the feature covariance (lambda * tr(C) / d).
    #[arg(long)]
    pub lambda_relative: bool,
    /// CSA: number of components.
    #[arg(long)]
    pub csa_s: Option<usize>,
    /// ASIF: top-k anchors.
    #[arg(long)]
    pub asif_k: Option<usize>,
    /// ASIF: power.
    #[arg(long)]
    pub asif_p: Option<f64>,
    /// Random seed of the trained methods.
    #[arg(long)]
    pub train_seed: Option<u64>,
}

impl ConfigArgs {
    pub fn build(&self) -> Result<AlignConfig> {
        let mut cfg = match &self.config {
            Some(p) => read_config(p, &self.preset)?,
            None => AlignConfig::preset(&self.preset).with_context(|| {
                format!(
                    "unknown preset `{}` (known: default, reference)",
                    self.preset
                )
            })?,
        };
        if let Some(l) = self.lambda {
            cfg.teacher.lambda = l;
        }
        if self.lambda_relative {
            cfg.teacher.lambda_relative = true;
        }
        if let Some(s) = self.csa_s {
            cfg.csa.s = Some(s);
        }
        if let Some(k) = self.asif_k {
            cfg.asif.k = k;
        }
        if let Some(p) = self.asif_p {
            cfg.asif.p = p;
        }
        if let Some(s) = self.train_seed {
            cfg.seed = s;
        }
        Ok(cfg)
    }
}

/// A config file overlaid on a preset: fields absent from the file keep the preset's values.
fn read_config(path: &Path, preset: &str) -> Result<AlignConfig> {
    let base = AlignConfig::preset(preset).with_context(|| format!("unknown preset `{preset}`"))?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let over: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let mut merged = serde_json::to_value(&base)?;
    merge(&mut merged, over);
    serde_json::from_value(merged)
        .with_context(|| format!("{}: not a valid config", path.display()))
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}
