//! `sotalign bench encoders`: encoder throughput on the real weights and the Tux Paint stamps,
//! reported next to the machine's matmul compute bound and (with `--reference`) an independent
//! numpy implementation of the same two networks timed in the same run.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};

use super::encoders::ModelArgs;
use crate::encoders::TextEncoder;

#[derive(Debug, clap::Args)]
pub struct EncodersBench {
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Images to push through the network (a multiple of the batch is best).
    #[arg(long, default_value_t = 128)]
    pub images: usize,
    /// Captions to encode.
    #[arg(long, default_value_t = 1024)]
    pub texts: usize,
    /// Also run the numpy reference (scripts/bench_encoders_ref.py) in ./bench-venv (created
    /// with `python3 -m venv` + `pip install numpy` when absent).
    #[arg(long)]
    pub reference: bool,
    /// `zeros`: the text model's architecture and tokenizer from its directory with every
    /// weight zero (same time per text; for a machine the 90 MB weights cannot be taken to,
    /// as scripts/gpu-check.sh does). Only the timing means anything then.
    #[arg(long, value_enum, default_value_t = TextWeights::File)]
    pub text_weights: TextWeights,
    #[command(flatten)]
    pub models: ModelArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TextWeights {
    /// The directory's `model.safetensors`.
    File,
    /// All zero (timing only).
    Zeros,
}

/// f32 matmul GFLOP/s of faer (the gemm of the encoders' CPU fast paths), 1024^3, all threads.
fn faer_gflops() -> f64 {
    use faer::{Accum, Mat, Par};
    let n = 1024;
    let a = Mat::<f32>::from_fn(n, n, |i, j| ((i * 7 + j * 3) % 13) as f32 * 0.01);
    let b = Mat::<f32>::from_fn(n, n, |i, j| ((i * 5 + j) % 11) as f32 * 0.01);
    let mut c = Mat::<f32>::zeros(n, n);
    let mut run =
        || faer::linalg::matmul::matmul(c.as_mut(), Accum::Replace, &a, &b, 1.0, Par::rayon(0));
    run();
    let reps = 8;
    let t = Instant::now();
    for _ in 0..reps {
        run();
    }
    2.0 * (n * n * n) as f64 * reps as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// f32 matmul GFLOP/s of candle on this device: the compute bound for dense layers.
fn matmul_gflops(dev: &Device) -> Result<f64> {
    let n = 1024;
    let a = Tensor::randn(0f32, 1., (n, n), dev)?;
    let b = Tensor::randn(0f32, 1., (n, n), dev)?;
    a.matmul(&b)?.sum_all()?.to_scalar::<f32>()?;
    let reps = 8;
    let t = Instant::now();
    for _ in 0..reps {
        a.matmul(&b)?.sum_all()?.to_scalar::<f32>()?;
    }
    Ok(2.0 * (n * n * n) as f64 * reps as f64 / t.elapsed().as_secs_f64() / 1e9)
}

fn captions(models: &ModelArgs, n: usize) -> Vec<String> {
    let stamps = models.assets_dir().tuxpaint_stamps();
    let mut caps: Vec<String> = crate::ingest::sources::tuxpaint(&stamps)
        .map(|d| d.items.into_iter().filter_map(|i| i.text).collect())
        .unwrap_or_default();
    if caps.is_empty() {
        caps = [
            "a photo of a cat",
            "A man is eating food.",
            "An elephant.",
            "a cup of espresso coffee",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
    }
    caps.iter().cycle().take(n).cloned().collect()
}

fn image_files(models: &ModelArgs, n: usize) -> Vec<PathBuf> {
    let stamps = models.assets_dir().tuxpaint_stamps();
    let mut files: Vec<PathBuf> = crate::ingest::sources::tuxpaint(&stamps)
        .map(|d| d.items.into_iter().filter_map(|i| i.image).collect())
        .unwrap_or_default();
    if files.is_empty() {
        // The repository's golden images: where it was built, else from the current directory
        // (a binary carried to another machine, run from the checkout's root).
        let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/golden");
        let g = if built.is_dir() {
            built
        } else {
            PathBuf::from("tests/fixtures/golden")
        };
        files = vec![g.join("chelsea.png"), g.join("coffee.png")];
    }
    // Spread over the set (PNG and SVG).
    let step = (files.len() / n.max(1)).max(1);
    files
        .iter()
        .step_by(step)
        .cycle()
        .take(n)
        .cloned()
        .collect()
}

/// Non-embedding multiply-accumulates of one BERT layer stack for a sequence of `len` tokens.
fn bert_macs(d: usize, layers: usize, len: usize) -> u64 {
    let ffn = 4 * d;
    let per_token = 4 * d * d + 2 * d * ffn; // q,k,v,o + ffn in/out
    let attn = 2 * len * d; // scores + weighted sum, per token
    (layers * len * (per_token + attn)) as u64
}

pub fn encoders(a: EncodersBench) -> Result<()> {
    let dev = crate::encoders::parse_device(&a.models.device)?;
    let threads = rayon::current_num_threads();
    println!(
        "# sotalign bench encoders (batch {}, {} rayon threads, device {})",
        a.batch, threads, a.models.device
    );
    let candle_peak = matmul_gflops(&dev)?;
    println!("candle f32 matmul 1024^3: {candle_peak:.1} GFLOP/s");
    let peak = if dev.is_cpu() {
        let f = faer_gflops();
        println!("faer f32 matmul 1024^3: {f:.1} GFLOP/s (the CPU fast paths' gemm)");
        f
    } else {
        candle_peak
    };
    println!("compute bound below: {peak:.1} GFLOP/s");

    // ---- images
    let ienc = a.models.load_image()?;
    let files = image_files(&a.models, a.images);
    let t = Instant::now();
    let inputs: Vec<Vec<f32>> = {
        use rayon::prelude::*;
        files
            .par_iter()
            .map(|p| ienc.load_input(p))
            .collect::<Result<_, _>>()?
    };
    let prep_rate = inputs.len() as f64 / t.elapsed().as_secs_f64();
    ienc.encode_inputs(&inputs[..a.batch.min(inputs.len())])?; // warm-up
    let t = Instant::now();
    for chunk in inputs.chunks(a.batch) {
        ienc.encode_inputs(chunk)?;
    }
    let img_rate = inputs.len() as f64 / t.elapsed().as_secs_f64();
    let e2e = 1.0 / (1.0 / img_rate + 1.0 / prep_rate);
    let img_bound = ienc.macs_per_image().map(|m| peak * 1e9 / (2.0 * m as f64));
    println!(
        "images: forward {img_rate:.1}/s ({}), decode+preprocess {prep_rate:.1}/s, end to end {e2e:.1}/s (n={})",
        if ienc.uses_cpu_fast_path() {
            "channels-last CPU path"
        } else {
            "candle"
        },
        inputs.len()
    );
    if ienc.uses_cpu_fast_path() {
        ienc.encode_inputs_candle(&inputs[..a.batch.min(inputs.len())])?;
        let t = Instant::now();
        for chunk in inputs.chunks(a.batch) {
            ienc.encode_inputs_candle(chunk)?;
        }
        let r = inputs.len() as f64 / t.elapsed().as_secs_f64();
        println!(
            "  same images through the candle model: {r:.1}/s (fast path x{:.2})",
            img_rate / r
        );
    }
    if let (Some(b), Some(m)) = (img_bound, ienc.macs_per_image()) {
        println!(
            "  {:.3} GFLOP/image -> compute bound {b:.0}/s; forward at {:.0}% of it",
            2.0 * m as f64 / 1e9,
            100.0 * img_rate / b
        );
    }

    // ---- texts
    let tenc: TextEncoder = match a.text_weights {
        TextWeights::File => a.models.load_text()?,
        TextWeights::Zeros => {
            let dir = a.models.text_dir();
            println!("text model {}: zero weights (timing only)", dir.display());
            TextEncoder::load_zero_weights(&dir, &dev)
                .with_context(|| format!("loading text model {}", dir.display()))?
        }
    };
    let caps = captions(&a.models, a.texts);
    let refs: Vec<&str> = caps.iter().map(|s| s.as_str()).collect();
    let avg_tokens = refs
        .iter()
        .map(|c| tenc.token_ids(c).map(|t| t.len()))
        .sum::<Result<usize, _>>()? as f64
        / refs.len() as f64;
    tenc.encode(&refs[..a.batch.min(refs.len())], a.batch, false)?;
    let t = Instant::now();
    tenc.encode(&refs, a.batch, false)?;
    let txt_rate = refs.len() as f64 / t.elapsed().as_secs_f64();
    let candle_txt_rate = if tenc.uses_cpu_fast_path() {
        let backend = crate::encoders::TextBackend::Candle;
        let c = match a.text_weights {
            TextWeights::File => TextEncoder::load_backend(&a.models.text_dir(), &dev, backend)?,
            TextWeights::Zeros => {
                TextEncoder::load_zero_weights_backend(&a.models.text_dir(), &dev, backend)?
            }
        };
        c.encode(&refs[..a.batch.min(refs.len())], a.batch, false)?;
        let t = Instant::now();
        c.encode(&refs, a.batch, false)?;
        Some(refs.len() as f64 / t.elapsed().as_secs_f64())
    } else {
        None
    };
    let len = avg_tokens.round() as usize;
    let txt_bound = peak * 1e9 / (2.0 * bert_macs(tenc.dim(), 6, len.max(1)) as f64);
    println!(
        "texts: {txt_rate:.1}/s (n={}, mean {avg_tokens:.1} tokens); compute bound {txt_bound:.0}/s; at {:.0}% of it",
        refs.len(),
        100.0 * txt_rate / txt_bound
    );
    if let Some(r) = candle_txt_rate {
        println!(
            "  same texts through candle-transformers' BERT: {r:.1}/s (fast path x{:.2})",
            txt_rate / r
        );
    }

    if a.reference {
        let r = run_reference(&a, &ienc, len)?;
        let ri = r["images_per_s"].as_f64().unwrap_or(f64::NAN);
        let rt = r["texts_per_s"].as_f64().unwrap_or(f64::NAN);
        println!(
            "reference {}: images {ri:.1}/s, texts {rt:.1}/s ({} tokens); golden cosine text {} image {}",
            r["impl"], len, r["golden_text_cosine"], r["golden_image_cosine"]
        );
        println!(
            "ratio sotalign/reference: images x{:.2}, texts x{:.2}",
            img_rate / ri,
            txt_rate / rt
        );
    }
    Ok(())
}

fn run_reference(
    a: &EncodersBench,
    ienc: &crate::encoders::ImageEncoder,
    tokens: usize,
) -> Result<serde_json::Value> {
    let venv = PathBuf::from("bench-venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        eprintln!("bench: creating {} with numpy (pip)", venv.display());
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
            && std::process::Command::new(&py)
                .args(["-m", "pip", "install", "-q", "numpy"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        if !ok {
            bail!("could not create the numpy venv (needs python3 with venv and pip)");
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let golden = root.join("tests/fixtures/golden");
    // The reference verifies itself on our preprocessed cat (it has no image decoder of its own).
    let tmp = std::env::temp_dir().join(format!("sotalign-bench-{}.npy", std::process::id()));
    let x = ienc.load_input(&golden.join("chelsea.png"))?;
    let m = sotalign_engine::Matrix::from_vec(1, x.len(), x)
        .map_err(|e| anyhow::anyhow!(e.to_string()))?;
    crate::io::npy::write_npy(&tmp, &m)?;
    let out = std::process::Command::new(&py)
        .arg(root.join("scripts/bench_encoders_ref.py"))
        .arg("--assets")
        .arg(&a.models.assets_dir().root)
        .arg("--golden")
        .arg(&golden)
        .args([
            "--batch",
            &a.batch.to_string(),
            "--images",
            &a.images.min(64).to_string(),
        ])
        .args([
            "--texts",
            &a.texts.to_string(),
            "--text-tokens",
            &tokens.to_string(),
        ])
        .arg("--check-input")
        .arg(&tmp)
        .output()
        .context("running the numpy reference")?;
    let _ = std::fs::remove_file(&tmp);
    if !out.status.success() {
        bail!("reference failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim().lines().last().unwrap_or("")).context("reference output")
}
