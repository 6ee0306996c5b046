//! `sotalign bench realign`: time from a re-align request (the TUI's `r`) to new suggestions,
//! measured on a real daemon over JSON-RPC, as a client sees it.
//!
//! Per data set: a fresh `sotalign serve` (this binary) ingests it through a manifest, serves a
//! first model (`cca`, so the measured call is a *re*-align, as in the TUI), then the clock
//! starts at `sotalign/align` and stops at the first `sotalign/suggestForSample` answered by the
//! new run (stage 1, the closed-form model); it keeps running until `jobFinished` (stage 2: the
//! trained heads, swapped in only if they validate better). The full job is the reference timed
//! in the same run: before two stages, it was the time to the first new suggestions.
//!
//! Data: `--demo DIR` (the `daemon-manifest.jsonl` that `sotalign demo` wrote there: Tux Paint)
//! and/or synthetic platonic data at the real encoders' widths (1280 / 384) with `--unpaired`
//! items per side.
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sotalign_engine::synthetic::{Platonic, PlatonicSpec};
use sotalign_protocol::methods;
use sotalign_protocol::types::*;
use sotalign_protocol::{Client, ServerNotification};

#[derive(Args)]
pub struct RealignArgs {
    /// A `sotalign demo --dir` directory: its daemon manifest (Tux Paint) is one data set.
    #[arg(long, value_name = "DIR")]
    pub demo: Option<PathBuf>,
    /// The reference Tux Paint rows (`tests/fixtures/reference`: the demo's stamps and
    /// encoders, 785 captioned rows): `--pairs` seed pairs from its non-test rows, its test
    /// split held out, the other non-test rows unpaired.
    #[arg(long, value_name = "DIR")]
    pub reference: Option<PathBuf>,
    /// Synthetic data sets: unpaired items per side, comma-separated (e.g. 10000,100000).
    #[arg(long, value_delimiter = ',')]
    pub unpaired: Vec<usize>,
    #[command(flatten)]
    pub shape: SyntheticShape,
    /// Method of the measured re-align (the TUI's `r` sends the default, sotalign).
    #[arg(long, default_value = "sotalign")]
    pub method: String,
    /// Stop at the first new suggestions (stage 1); the trained stage is not waited for.
    #[arg(long)]
    pub first_stage_only: bool,
    /// Where data and daemon stores go (default: a temporary directory, removed after).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

/// One measurement.
struct Row {
    data: String,
    images: u64,
    texts: u64,
    pairs: u64,
    first: f64,
    first_fitted: String,
    /// The whole job (`None` with `--first-stage-only`).
    total: Option<f64>,
    final_stage: Option<ModelStage>,
    final_fitted: String,
    /// Stage 1, in order: each job stage the daemon reported and the seconds spent in it
    /// (from its first report to the next stage's, the last one up to the new suggestions).
    stage1: Vec<(JobStage, f64)>,
}

pub fn run(a: RealignArgs) -> Result<()> {
    let method: AlignMethod = serde_json::from_value(serde_json::Value::String(a.method.clone()))
        .with_context(|| format!("unknown method {:?}", a.method))?;
    let work = a.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("sotalign-bench-realign-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work)?;
    let result = measure_all(&a, &work, method);
    if a.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    print_rows(&result?);
    Ok(())
}

fn measure_all(a: &RealignArgs, work: &Path, method: AlignMethod) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    if let Some(demo) = &a.demo {
        let manifest = demo.join("daemon-manifest.jsonl");
        if !manifest.is_file() {
            bail!(
                "{} not found: run `sotalign demo --dir {}` first",
                manifest.display(),
                demo.display()
            );
        }
        rows.push(measure(
            "Tux Paint (demo)",
            &manifest,
            &work.join("demo-store"),
            method,
            a.first_stage_only,
        )?);
    }
    if let Some(dir) = &a.reference {
        let manifest = reference_manifest(dir, a.shape.pairs, &work.join("reference"))?;
        rows.push(measure(
            &format!("Tux Paint reference rows, {} pairs", a.shape.pairs),
            &manifest,
            &work.join("reference").join("store"),
            method,
            a.first_stage_only,
        )?);
    }
    for &n in &a.unpaired {
        let dir = work.join(format!("synthetic-{n}"));
        eprintln!("generating synthetic data: {n} unpaired per side");
        let manifest = synthetic_manifest(a, n, &dir)?;
        rows.push(measure(
            &format!("synthetic, {n} unpaired/side"),
            &manifest,
            &dir.join("store"),
            method,
            a.first_stage_only,
        )?);
    }
    if rows.is_empty() {
        bail!("nothing to measure: give --demo DIR, --reference DIR and/or --unpaired N,...");
    }
    Ok(rows)
}

fn print_rows(rows: &[Row]) {
    println!(
        "| data | images | texts | pairs | first new suggestions (s) | served first | whole job (s) | ratio | served at the end |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {:.1} | {} | {} | {} | {} ({}) |",
            r.data,
            r.images,
            r.texts,
            r.pairs,
            r.first,
            r.first_fitted,
            r.total.map_or("-".into(), |t| format!("{t:.1}")),
            r.total
                .map_or("-".into(), |t| format!("{:.2}", r.first / t.max(1e-9))),
            r.final_fitted,
            match r.final_stage {
                Some(ModelStage::Trained) => "trained",
                Some(ModelStage::ClosedForm) => "closed_form",
                None => "-",
            }
        );
    }
    println!();
    println!("Stage 1 by job stage (seconds from the stage's first report to the next stage's):");
    for r in rows {
        let parts: Vec<String> = r
            .stage1
            .iter()
            .map(|(st, s)| format!("{} {s:.1}", stage_name(*st)))
            .collect();
        println!("- {}: {}", r.data, parts.join(", "));
    }
}

fn stage_name(s: JobStage) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{s:?}"))
}

/// A daemon manifest over the reference fixtures (their `.npy` files in place).
fn reference_manifest(dir: &Path, pairs: usize, out: &Path) -> Result<PathBuf> {
    let r = crate::io::reference::Reference::load(dir)?;
    if pairs >= r.nontest.len() {
        bail!(
            "--pairs {pairs}: the reference has {} non-test rows",
            r.nontest.len()
        );
    }
    std::fs::create_dir_all(out)?;
    // The embeddings beside the manifest: the bench's daemon may read only below its folder.
    for f in ["tuxpaint_img.npy", "tuxpaint_txt.npy"] {
        std::fs::copy(dir.join(f), out.join(f))?;
    }
    let mut text = serde_json::json!({"sotalign_manifest": 1, "embeddings": {
        "image": "tuxpaint_img.npy", "text": "tuxpaint_txt.npy"}})
    .to_string();
    text.push('\n');
    let lines = r
        .nontest
        .iter()
        .enumerate()
        .map(|(k, &row)| (row, if k < pairs { "train" } else { "unpaired" }))
        .chain(r.test.iter().map(|&row| (row, "test")));
    for (row, split) in lines {
        text.push_str(
            &serde_json::json!({"key": format!("row-{row}"), "imageRow": row,
                "caption": r.captions[row], "textRow": row, "split": split})
            .to_string(),
        );
        text.push('\n');
    }
    let m = out.join("manifest.jsonl");
    std::fs::write(&m, text)?;
    Ok(m)
}

/// The shape of the synthetic data sets (`bench realign`, `bench daemon`).
#[derive(Args)]
pub struct SyntheticShape {
    /// Confirmed pairs of the synthetic sets (also the reference rows' seed pairs).
    #[arg(long, default_value_t = 200)]
    pub pairs: usize,
    /// Held-out pairs of the synthetic sets.
    #[arg(long, default_value_t = 200)]
    pub test: usize,
    /// Feature widths of the synthetic sets (the real encoders': EfficientNet-Lite0, MiniLM).
    #[arg(long, default_value_t = 1280)]
    pub dx: usize,
    #[arg(long, default_value_t = 384)]
    pub dy: usize,
}

fn synthetic_manifest(a: &RealignArgs, n: usize, dir: &Path) -> Result<PathBuf> {
    write_synthetic(&a.shape, n, dir)
}

/// Synthetic platonic data written as `.npy` + a daemon manifest in `dir`: `pairs` seed pairs,
/// `test` held-out pairs, `n` unpaired images and texts (independent latents). Returns the
/// manifest's path.
pub(super) fn write_synthetic(a: &SyntheticShape, n: usize, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let p = Platonic::new(PlatonicSpec {
        dx: a.dx,
        dy: a.dy,
        ..PlatonicSpec::default()
    })?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (xp, yp) = p.pairs(a.pairs + a.test, &mut rng);
    let xu = super::bench_scaling::generate(&p, n, true, 2);
    let yu = super::bench_scaling::generate(&p, n, false, 3);
    let stack = |a: &sotalign_engine::Matrix, b: &sotalign_engine::Matrix| {
        let mut data = a.data.clone();
        data.extend_from_slice(&b.data);
        sotalign_engine::Matrix {
            rows: a.rows + b.rows,
            cols: a.cols,
            data,
        }
    };
    crate::io::write_npy(&dir.join("img.npy"), &stack(&xp, &xu))?;
    crate::io::write_npy(&dir.join("txt.npy"), &stack(&yp, &yu))?;
    let mut out = String::from(
        "{\"sotalign_manifest\": 1, \"embeddings\": {\"image\": \"img.npy\", \"text\": \"txt.npy\"}}\n",
    );
    let np = a.pairs + a.test;
    for i in 0..np {
        let split = if i < a.pairs { "train" } else { "test" };
        out.push_str(&format!(
            "{{\"key\": \"p{i}\", \"imageRow\": {i}, \"caption\": \"synthetic caption {i}\", \"textRow\": {i}, \"split\": \"{split}\"}}\n"
        ));
    }
    for j in 0..n {
        let r = np + j;
        out.push_str(&format!(
            "{{\"key\": \"u{j}\", \"imageRow\": {r}, \"caption\": \"synthetic caption {r}\", \"textRow\": {r}, \"split\": \"unpaired\"}}\n"
        ));
    }
    let m = dir.join("manifest.jsonl");
    std::fs::write(&m, out)?;
    Ok(m)
}

fn measure(
    name: &str,
    manifest: &Path,
    store: &Path,
    method: AlignMethod,
    first_only: bool,
) -> Result<Row> {
    let _ = std::fs::remove_dir_all(store);
    let allow = manifest.parent().unwrap_or(manifest);
    let mut daemon = super::demo::Daemon::spawn("127.0.0.1:0", store, allow, "cpu")?;
    let stream = TcpStream::connect(&daemon.addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(3600)))?;
    let mut c = Client::new(stream.try_clone()?, stream);
    c.initialize("sotalign-bench", None)?;
    eprintln!("{name}: ingesting");
    let ing = c.call::<methods::Ingest>(IngestParams {
        source: IngestSource::Manifest(manifest.display().to_string()),
    })?;
    wait_finished(&mut c, ing.job)?;
    eprintln!("{name}: first model (cca)");
    let first = c.call::<methods::Align>(AlignParams {
        method: AlignMethod::Cca,
        ..AlignParams::default()
    })?;
    wait_finished(&mut c, first.job)?;
    let (items, _) = {
        let r = c.call::<methods::ListSamples>(ListSamplesParams {
            modality: Modality::Image,
            state: Some(SampleState::Unpaired),
            filter: None,
            offset: 0,
            limit: 1,
        })?;
        (r.items, r.total)
    };
    let Some(probe) = items.first().map(|s| s.id) else {
        bail!("{name}: no unpaired image to ask suggestions for");
    };
    eprintln!("{name}: re-align ({method:?}), the measured part");
    let t0 = Instant::now();
    let job = c.call::<methods::Align>(AlignParams {
        method,
        ..AlignParams::default()
    })?;
    // Stage 1 is published before any report of stage 2 (or the end of a one-stage job).
    // Every stage-1 report on the way marks when its job stage began.
    let mut began: Vec<(JobStage, f64)> = Vec::new();
    let one_stage_done = wait_first_stage(&mut c, job.job, &mut |stage| {
        if began.last().map(|b| b.0) != Some(stage) {
            began.push((stage, t0.elapsed().as_secs_f64()));
        }
    })?;
    let s = c.call::<methods::SuggestForSample>(SuggestForSampleParams {
        sample: probe,
        k: 10,
        include_rejected: false,
    })?;
    let first_s = t0.elapsed().as_secs_f64();
    let stage1 = began
        .iter()
        .enumerate()
        .map(|(i, &(st, at))| {
            let end = began.get(i + 1).map_or(first_s, |b| b.1);
            (st, end - at)
        })
        .collect();
    if s.run != job.run {
        bail!(
            "{name}: suggestions came from run {}, not the new run {}",
            s.run,
            job.run
        );
    }
    eprintln!("{name}: new suggestions after {first_s:.1} s; waiting for the trained stage");
    let status = c.call::<methods::Status>(Empty {})?;
    let first_fitted = status
        .model
        .as_ref()
        .and_then(|m| m.fitted.clone())
        .unwrap_or_default();
    let total = if first_only && !one_stage_done {
        None
    } else {
        if !one_stage_done {
            wait_finished(&mut c, job.job)?;
        }
        Some(t0.elapsed().as_secs_f64())
    };
    let end = c.call::<methods::Status>(Empty {})?;
    let _ = c.shutdown();
    daemon.stop();
    let m = end.model.as_ref();
    Ok(Row {
        data: name.into(),
        images: end.counts.images,
        texts: end.counts.texts,
        pairs: end.counts.confirmed_pairs,
        first: first_s,
        first_fitted,
        total,
        final_stage: m.and_then(|m| m.stage),
        final_fitted: m.and_then(|m| m.fitted.clone()).unwrap_or_default(),
        stage1,
    })
}

/// Wait until `job` published its first (closed-form) stage: true when the job ended there
/// (one-stage), false when its trained stage began; a failed job is an error. `stage1` hears
/// the job stage of every first-stage report on the way.
pub(super) fn wait_first_stage<R: std::io::Read, W: std::io::Write>(
    c: &mut Client<R, W>,
    job: JobId,
    stage1: &mut dyn FnMut(JobStage),
) -> Result<bool> {
    let n = c.wait_for(|n| match n {
        ServerNotification::Progress(p) => {
            let v = &p.value;
            if v.job == job && v.model_stage != Some(ModelStage::Trained) {
                stage1(v.stage);
            }
            v.job == job && v.model_stage == Some(ModelStage::Trained)
        }
        ServerNotification::JobFinished(f) => f.job == job,
        _ => false,
    })?;
    match n {
        ServerNotification::JobFinished(f) if f.state != JobState::Succeeded => bail!(
            "job {job} ended {:?}: {}",
            f.state,
            f.error.map(|e| e.message).unwrap_or_default()
        ),
        ServerNotification::JobFinished(_) => Ok(true),
        _ => Ok(false),
    }
}

pub(super) fn wait_finished<R: std::io::Read, W: std::io::Write>(
    c: &mut Client<R, W>,
    job: JobId,
) -> Result<()> {
    let n = c.wait_for(|n| matches!(n, ServerNotification::JobFinished(f) if f.job == job))?;
    if let ServerNotification::JobFinished(f) = n
        && f.state != JobState::Succeeded
    {
        bail!(
            "job {job} ended {:?}: {}",
            f.state,
            f.error.map(|e| e.message).unwrap_or_default()
        );
    }
    Ok(())
}
