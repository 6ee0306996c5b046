//! `sotalign bench scaling`: how each stage's time and the process's peak memory grow with the
//! unpaired collection, on synthetic platonic data at the real encoders' widths.
//!
//! Each size runs in a fresh child process (this binary, `--child`), so the peak resident set
//! (`VmHWM`) it reports belongs to that size alone. Stages, with the cost model they test:
//! - generate: the synthetic collection, O(N (k h + h d)) (rayon over row chunks);
//! - teacher: ridge CCA on the fixed pairs, O(n d^2 + d^3): independent of N;
//! - heads init: the teacher-initialised heads' ridge fit over pairs + pool, streamed in row
//!   chunks: O(N (d k + d^2) + d^3) time, O(d^2) memory;
//! - steps: one SigLIP + KLOT step at batch B, O(n^2 D + B^2 (D + iters)): independent of N;
//! - embed: mapping the whole collection through a head (row chunks), O(N d D);
//! - index: HNSW build over the embedded images, about O(N log N) distance evaluations;
//!   above `--index-max` it is not built (the rate measured below it is reported instead);
//! - exact query: one brute-force top-10 over the collection, O(N D).
use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::plot::{PlotSpec, Scale, Series, line_plot};
use crate::index::{BackendKind, Filter, IndexConfig, VectorIndex};
use sotalign_engine::synthetic::{Platonic, PlatonicSpec};
use sotalign_engine::teacher::CcaTeacher;
use sotalign_engine::train::fit_student;
use sotalign_engine::{AlignConfig, AlignData, Aligned, Matrix};

#[derive(Debug, Args)]
pub struct ScalingArgs {
    /// Unpaired collection sizes per side, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,300000")]
    pub sizes: Vec<usize>,
    /// Paired examples (fixed across sizes).
    #[arg(long, default_value_t = 1000)]
    pub pairs: usize,
    /// Image and text feature widths (the default encoders: 1280 and 384).
    #[arg(long, default_value_t = 1280)]
    pub dx: usize,
    #[arg(long, default_value_t = 384)]
    pub dy: usize,
    /// Training steps timed per size.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Unpaired batch B of the KLOT term.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Largest collection that gets an HNSW build (slow on 2 cores).
    #[arg(long, default_value_t = 100_000)]
    pub index_max: usize,
    /// Markdown to write (table, command, plot link); the plot goes beside it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "docs/scaling.png")]
    pub plot: PathBuf,
    /// Internal: measure one size in this process and print one JSON line.
    #[arg(long, hide = true)]
    pub child: bool,
}

/// One size's measurements (seconds, bytes).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measured {
    n: usize,
    generate_s: f64,
    teacher_s: f64,
    heads_init_s: f64,
    step_s: f64,
    embed_s: f64,
    index_s: Option<f64>,
    exact_query_ms: f64,
    peak_rss_bytes: u64,
    data_bytes: u64,
}

pub fn run(a: ScalingArgs) -> Result<()> {
    if a.child {
        let [n] = a.sizes[..] else {
            bail!("--child measures exactly one size");
        };
        let m = measure(&a, n)?;
        println!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating the sotalign binary")?;
    let mut rows = Vec::new();
    for &n in &a.sizes {
        eprintln!("scaling: N = {n} ...");
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["bench", "scaling", "--child", "--sizes", &n.to_string()])
            .args(["--pairs", &a.pairs.to_string(), "--dx", &a.dx.to_string()])
            .args(["--dy", &a.dy.to_string(), "--steps", &a.steps.to_string()])
            .args(["--batch", &a.batch.to_string()])
            .args(["--index-max", &a.index_max.to_string()]);
        let out = cmd.output().context("running a scaling child")?;
        if !out.status.success() {
            bail!(
                "N = {n} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or("");
        let m: Measured = serde_json::from_str(line)
            .with_context(|| format!("child output for N = {n}: {line}"))?;
        eprintln!("  {m:?}");
        rows.push(m);
    }
    let md = render(&a, &rows)?;
    println!("{md}");
    if let Some(out) = &a.out {
        let old = std::fs::read_to_string(out).unwrap_or_default();
        let new = replace_section(&old, &md);
        crate::io::write_atomic(out, new.as_bytes())?;
        plot(&a, &rows)?;
        eprintln!("wrote {} and {}", out.display(), a.plot.display());
    }
    Ok(())
}

const BEGIN: &str = "<!-- bench-scaling:begin -->";
const END: &str = "<!-- bench-scaling:end -->";

fn replace_section(old: &str, md: &str) -> String {
    let block = format!("{BEGIN}\n{md}\n{END}");
    match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &old[..a], &old[b + END.len()..]),
        _ => format!("{}\n\n{block}\n", old.trim_end()),
    }
}

/// `n` rows of one view, generated in parallel chunks with per-chunk seeds (deterministic).
pub(crate) fn generate(p: &Platonic, n: usize, images: bool, seed: u64) -> Matrix {
    const CHUNK: usize = 8192;
    let d = if images { p.spec().dx } else { p.spec().dy };
    // Each chunk is generated straight into its slice: no second copy of the collection.
    let mut data = vec![0f32; n * d];
    data.par_chunks_mut(CHUNK * d)
        .enumerate()
        .for_each(|(c, out)| {
            let len = out.len() / d;
            let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003) + c as u64);
            let m = if images {
                p.images(len, &mut rng)
            } else {
                p.texts(len, &mut rng)
            };
            out.copy_from_slice(&m.data);
        });
    Matrix {
        rows: n,
        cols: d,
        data,
    }
}

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn measure(a: &ScalingArgs, n: usize) -> Result<Measured> {
    let spec = PlatonicSpec {
        dx: a.dx,
        dy: a.dy,
        ..PlatonicSpec::default()
    };
    let p = Platonic::new(spec)?;
    let t = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (xp, yp) = p.pairs(a.pairs, &mut rng);
    let xu = generate(&p, n, true, 2);
    let yu = generate(&p, n, false, 3);
    let generate_s = t.elapsed().as_secs_f64();
    let data = AlignData {
        pair_groups: (0..a.pairs as u32).collect(),
        yu_groups: None,
        negatives: None,
        xp,
        yp,
        xu,
        yu,
    };
    let data_bytes = 4 * (data.xu.data.len() + data.yu.data.len()) as u64;

    let mut cfg = AlignConfig::reference();
    cfg.optim.steps = a.steps;
    cfg.klot.batch = a.batch;
    let t = Instant::now();
    let teacher = CcaTeacher::fit(&data, &cfg.teacher)?;
    let teacher_s = t.elapsed().as_secs_f64();

    // Heads init = time from the call to the first step's report; steps = the rest.
    let t = Instant::now();
    let mut first_step: Option<Instant> = None;
    let heads = fit_student(&data, Some(&teacher), &cfg, &mut |pr| {
        if pr.step >= 1 && first_step.is_none() && pr.total == a.steps {
            first_step = Some(Instant::now());
        }
        ControlFlow::Continue(())
    })?;
    let end = Instant::now();
    let first = first_step.unwrap_or(end);
    let heads_init_s = (first - t).as_secs_f64();
    // The first report comes after step 1: attribute it to the steps.
    let step_s = (end - first).as_secs_f64() / (a.steps.saturating_sub(1)).max(1) as f64;
    let heads_init_s = (heads_init_s - step_s).max(0.0);

    let t = Instant::now();
    let ex = heads.embed_x(&data.xu)?;
    let embed_s = t.elapsed().as_secs_f64();

    let ids: Vec<u64> = (0..n as u64).collect();
    let icfg = IndexConfig::default();
    let index_s = if n <= a.index_max {
        let t = Instant::now();
        VectorIndex::build_with(
            ids.clone(),
            &ex,
            BackendKind::Hnsw,
            &icfg,
            &AtomicBool::new(false),
            &mut |_, _| {},
        )?;
        Some(t.elapsed().as_secs_f64())
    } else {
        None
    };
    let exact = VectorIndex::build_with(
        ids,
        &ex,
        BackendKind::Exact,
        &icfg,
        &AtomicBool::new(false),
        &mut |_, _| {},
    )?;
    let q = heads.embed_y(&data.yp.select_rows(&(0..20).collect::<Vec<_>>()))?;
    let t = Instant::now();
    for i in 0..q.rows {
        exact.search_exact(q.row(i), 10, &Filter::All)?;
    }
    let exact_query_ms = 1e3 * t.elapsed().as_secs_f64() / q.rows as f64;
    Ok(Measured {
        n,
        generate_s,
        teacher_s,
        heads_init_s,
        step_s,
        embed_s,
        index_s,
        exact_query_ms,
        peak_rss_bytes: peak_rss_bytes(),
        data_bytes,
    })
}

fn render(a: &ScalingArgs, rows: &[Measured]) -> Result<String> {
    let mut s = String::new();
    let cmd: Vec<String> = std::env::args().collect();
    writeln!(s, "Command: `{}`\n", cmd.join(" "))?;
    writeln!(
        s,
        "Synthetic platonic data at the default encoders' widths ({} -> image, {} -> text), {} pairs, N unpaired images and N unpaired texts; reference preset heads (D = 256), KLOT batch {}, {} timed steps; HNSW M = 16, ef_construction = 100. {} rayon threads. Each N in a fresh process.\n",
        a.dx,
        a.dy,
        a.pairs,
        a.batch,
        a.steps,
        rayon::current_num_threads()
    )?;
    writeln!(
        s,
        "| N per side | generate s | teacher s | heads init s | s / step | embed N s | HNSW build s (inserts/s) | exact top-10 ms/query | features MiB | peak RSS MiB |"
    )?;
    writeln!(s, "|---|---|---|---|---|---|---|---|---|---|")?;
    for m in rows {
        let idx = match m.index_s {
            Some(t) => format!("{t:.1} ({:.0})", m.n as f64 / t),
            None => format!("not built (> {})", a.index_max),
        };
        writeln!(
            s,
            "| {} | {:.1} | {:.2} | {:.2} | {:.3} | {:.2} | {} | {:.2} | {:.0} | {:.0} |",
            m.n,
            m.generate_s,
            m.teacher_s,
            m.heads_init_s,
            m.step_s,
            m.embed_s,
            idx,
            m.exact_query_ms,
            m.data_bytes as f64 / 1048576.0,
            m.peak_rss_bytes as f64 / 1048576.0
        )?;
    }
    writeln!(s, "\n![stage time vs N]({})", file_name(&a.plot))?;
    Ok(s)
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn plot(a: &ScalingArgs, rows: &[Measured]) -> Result<()> {
    let series_of = |name: &str, f: &dyn Fn(&Measured) -> Option<f64>| Series {
        name: name.to_string(),
        points: rows
            .iter()
            .filter_map(|m| f(m).map(|v| (m.n as f64, v.max(1e-4))))
            .collect(),
    };
    let series = vec![
        series_of("generate", &|m| Some(m.generate_s)),
        series_of("teacher", &|m| Some(m.teacher_s)),
        series_of("heads init", &|m| Some(m.heads_init_s)),
        series_of("1 step", &|m| Some(m.step_s)),
        series_of("embed N", &|m| Some(m.embed_s)),
        series_of("hnsw build", &|m| m.index_s),
        series_of("exact query", &|m| Some(m.exact_query_ms / 1e3)),
    ];
    line_plot(
        &a.plot,
        &PlotSpec {
            title: "STAGE TIME VS UNPAIRED N (2 CORES)",
            x_label: "N per side",
            y_label: "seconds",
            x_scale: Scale::Log10,
            y_scale: Scale::Log10,
        },
        &series,
    )
}
