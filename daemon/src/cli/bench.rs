//! `sotalign bench synthetic`: SOTAlign against its CCA teacher and pairs-only SigLIP on
//! synthetic "platonic" data, as a function of the unpaired pool size.
use std::ops::ControlFlow;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sotalign_engine::config::HeadInit;
use sotalign_engine::synthetic::{Platonic, PlatonicSpec, mean_r1};
use sotalign_engine::teacher::CcaTeacher;
use sotalign_engine::train::fit_student;
use sotalign_engine::{AlignConfig, AlignData, Aligned, Matrix};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Synthetic scaling benchmark (shared latent, two different non-linear views).
    Synthetic(SyntheticArgs),
    /// Encoder throughput (images/s, texts/s) vs the matmul bound and a numpy reference.
    Encoders(super::bench_encoders::EncodersBench),
    /// Time and memory of every stage against the unpaired collection size (docs/SCALING.md).
    Scaling(super::bench_scaling::ScalingArgs),
    /// Time from a re-align request to new suggestions, on a real daemon over JSON-RPC.
    Realign(super::bench_realign::RealignArgs),
    /// One KLOT step timed on a device (cpu, cuda), no criterion needed (scripts/gpu-check.sh).
    Klot(super::bench_klot::KlotBench),
    /// The daemon end to end on a device: ingest, one align, suggestion latency p50/p99.
    Daemon(super::bench_daemon::DaemonBench),
}

#[derive(Args)]
pub struct SyntheticArgs {
    /// Number of pairs.
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// Unpaired pool sizes (per side), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,30000,100000")]
    pub unpaired: Vec<usize>,
    /// Held-out test pairs.
    #[arg(long, default_value_t = 1000)]
    pub test: usize,
    /// Seeds (data draw and training), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub seeds: Vec<u64>,
    /// Training steps of the heads.
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    /// KLOT weight.
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f64,
    /// Feature noise of the views.
    #[arg(long, default_value_t = 0.3)]
    pub noise: f32,
    /// Unpaired batch B per KLOT step.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Markdown file whose "Synthetic scaling" section is replaced (or appended).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Synthetic(a) => synthetic(a),
        BenchCmd::Encoders(a) => super::bench_encoders::encoders(a),
        BenchCmd::Scaling(a) => super::bench_scaling::run(a),
        BenchCmd::Realign(a) => super::bench_realign::run(a),
        BenchCmd::Klot(a) => super::bench_klot::run(a),
        BenchCmd::Daemon(a) => super::bench_daemon::run(a),
    }
}

struct Row {
    unpaired: usize,
    teacher: Vec<f64>,
    siglip: Vec<f64>,
    sotalign: Vec<f64>,
    secs: f64,
}

fn r1(m: &dyn Aligned, x: &Matrix, y: &Matrix) -> Result<f64> {
    Ok(mean_r1(&m.score(x, y)?))
}

fn synthetic(a: SyntheticArgs) -> Result<()> {
    let spec = PlatonicSpec {
        noise: a.noise,
        ..PlatonicSpec::default()
    };
    let platonic = Platonic::new(spec.clone())?;
    // The reference preset (Adam lr 1e-3, D = 256, teacher init) with the requested length.
    let mut base = AlignConfig::reference();
    base.optim.steps = a.steps;
    base.klot.alpha = a.alpha;
    base.klot.batch = a.batch;
    let total = a.unpaired.len() * a.seeds.len();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} {msg} [{elapsed}]",
    )?);
    let mut rows = Vec::new();
    let mut siglip_cache: Vec<(u64, f64)> = Vec::new();
    for &m in &a.unpaired {
        let t0 = Instant::now();
        let mut row = Row {
            unpaired: m,
            teacher: vec![],
            siglip: vec![],
            sotalign: vec![],
            secs: 0.0,
        };
        for &seed in &a.seeds {
            bar.set_message(format!("unpaired {m}, seed {seed}"));
            let (data, xt, yt) = platonic.split(a.pairs, m, a.test, 1000 + seed);
            let mut cfg = base.clone();
            cfg.seed = seed;
            cfg.klot.batch = cfg.klot.batch.min(m);
            let teacher = CcaTeacher::fit(&data, &cfg.teacher)?;
            row.teacher.push(r1(&teacher, &xt, &yt)?);
            let mut quiet = |_: &_| ControlFlow::Continue(());
            // Pairs and test set do not depend on the pool size: fit the baseline once per seed.
            let sig_r1 = match siglip_cache.iter().find(|(s, _)| *s == seed) {
                Some((_, v)) => *v,
                None => {
                    let mut sig_cfg = cfg.clone();
                    sig_cfg.klot.alpha = 0.0;
                    sig_cfg.heads.init = HeadInit::Random;
                    let sig = fit_student(&pairs_only(&data), Some(&teacher), &sig_cfg, &mut quiet)
                        .context("pairs-only SigLIP")?;
                    let v = r1(&sig, &xt, &yt)?;
                    siglip_cache.push((seed, v));
                    v
                }
            };
            row.siglip.push(sig_r1);
            let sot = fit_student(&data, Some(&teacher), &cfg, &mut quiet).context("SOTAlign")?;
            row.sotalign.push(r1(&sot, &xt, &yt)?);
            bar.inc(1);
        }
        row.secs = t0.elapsed().as_secs_f64();
        rows.push(row);
    }
    bar.finish_and_clear();
    let table = render(&a, &spec, &rows);
    println!("{table}");
    if let Some(path) = &a.out {
        update_markdown(path, &format!("## Synthetic scaling\n\n{table}"))?;
        println!("updated {}", path.display());
    }
    Ok(())
}

fn pairs_only(d: &AlignData) -> AlignData {
    let mut p = AlignData::from_pairs(d.xp.clone(), d.yp.clone());
    p.pair_groups = d.pair_groups.clone();
    p
}

const BEGIN: &str = "<!-- sotalign bench synthetic: begin -->";
const END: &str = "<!-- sotalign bench synthetic: end -->";

/// Replace the marked section of `path` (or append it), keeping everything else.
fn update_markdown(path: &std::path::Path, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{section}\n{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &old[..a], &old[b + END.len()..]),
        _ if old.is_empty() => format!("# Results\n\n{block}\n"),
        _ => format!("{}\n\n{block}\n", old.trim_end()),
    };
    crate::io::write_atomic(path, new.as_bytes())?;
    Ok(())
}

fn render(a: &SyntheticArgs, spec: &PlatonicSpec, rows: &[Row]) -> String {
    let pct = |v: &[f64]| {
        let (m, s) = super::mean_std(v);
        format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * s)
    };
    let mut out = String::new();
    let cmd: Vec<String> = std::env::args().collect();
    out.push_str(&format!("Command: `{}`\n\n", cmd.join(" ")));
    out.push_str(&format!(
        "Platonic data: latent {}, views {} -> {} (tanh) / {} (softplus), noise {}; {} pairs, {} held-out test pairs; seeds {:?}; {} steps, alpha {}, unpaired batch {}; reference preset otherwise (Adam lr 1e-3, D = 256, teacher init; SigLIP: random init, alpha 0).\nMean R@1 (i2t and t2i averaged), percent, mean ± std over seeds.\n\n",
        spec.latent, spec.hidden, spec.dx, spec.dy, spec.noise, a.pairs, a.test, a.seeds, a.steps, a.alpha, a.batch
    ));
    out.push_str("| unpaired per side | CCA teacher | SigLIP (pairs only) | SOTAlign | SOTAlign - teacher | SOTAlign - SigLIP | time |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for r in rows {
        let (t, _) = super::mean_std(&r.teacher);
        let (s, _) = super::mean_std(&r.siglip);
        let (o, _) = super::mean_std(&r.sotalign);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:+.1} | {:+.1} | {:.0} s |\n",
            r.unpaired,
            pct(&r.teacher),
            pct(&r.siglip),
            pct(&r.sotalign),
            100.0 * (o - t),
            100.0 * (o - s),
            r.secs
        ));
    }
    out
}
